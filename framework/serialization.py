"""``conch.save`` / ``conch.load``: nested state dicts as safetensors files, written atomically, never pickled.

File layout (the safetensors format: an 8-byte little-endian header length, a JSON header, raw bytes)::

    tensors      one entry per tensor leaf, named by its path with "." between keys
                 ({"model": {"fc.weight": t}} -> "model.fc.weight"); a flat model state dict keeps its own
                 names, so PyTorch, JAX or the safetensors library read the file like any other checkpoint
    __metadata__ "format": "pt" and "conch": the JSON skeleton of the object (dicts with their key types,
                 lists, tuples, ints, floats, strings, bools, None) with each tensor replaced by its name

Loading runs no code: it parses JSON and copies bytes. Files written by other programs (no "conch" entry)
load as a flat ``{name: tensor}`` dict. bfloat16 is stored as safetensors ``BF16``; CUDA tensors are copied
to the host to be written.

Writes are atomic: the bytes go to a temporary file in the destination folder, are flushed and fsynced,
and the file is renamed over the destination (then the folder is fsynced), so a reader or a crash sees the
old file or the new one, never a mix. A truncated or corrupt file raises :class:`SerializationError`
naming the file and what is wrong.

Example::

    conch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 1000}, "ckpt.safetensors")
    ckpt = conch.load("ckpt.safetensors")
    model.load_state_dict(ckpt["model"])
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Mapping

import numpy as np

from . import _dtype as D
from ._backend import device as _device
from ._backend import is_cupy_array, to_device
from .tensor import Tensor

__all__ = ["save", "load", "SerializationError"]

_MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit

_TO_ST = {
    D.float64: "F64", D.float32: "F32", D.float16: "F16", D.bfloat16: "BF16",
    D.int64: "I64", D.int32: "I32", D.int16: "I16", D.int8: "I8", D.uint8: "U8", D.bool_: "BOOL",
    np.dtype(np.uint16): "U16", np.dtype(np.uint32): "U32", np.dtype(np.uint64): "U64",
}  # fmt: skip
_FROM_ST = {v: k for k, v in _TO_ST.items()}


class SerializationError(RuntimeError):
    """A file that :func:`conch.load` cannot read: truncated, corrupt, or not a safetensors file."""


# ------------------------------------------------------------------------------------------------ structure


def _flatten(obj, path, tensors, names):
    """The JSON skeleton of ``obj``; tensor leaves are collected into ``tensors`` as ``name -> array``."""
    if isinstance(obj, (Tensor, np.ndarray)) or is_cupy_array(obj):  # cupy: a raw GPU array
        name = ".".join(path) if path else "tensor"
        if name in names:
            raise ValueError(
                f"conch.save: two tensors would be stored under the same name {name!r} (a key containing '.' "
                "collides with a nested key); rename one of them"
            )
        names.add(name)
        arr = obj._data if isinstance(obj, Tensor) else obj
        if arr.dtype not in _TO_ST:
            raise TypeError(f"conch.save: tensor {name!r} has dtype {arr.dtype}, which safetensors cannot store")
        tensors[name] = arr
        return {"T": name} if isinstance(obj, Tensor) else {"A": name}
    if isinstance(obj, Mapping):
        items = []
        for k, v in obj.items():
            if isinstance(k, bool) or not isinstance(k, (str, int)):
                raise TypeError(
                    f"conch.save: dict keys must be str or int, got {type(k).__name__} at {'.'.join(path) or 'root'}"
                )
            items.append([k, _flatten(v, [*path, str(k)], tensors, names)])
        return {"D": items}
    if isinstance(obj, (list, tuple)):
        enc = [_flatten(v, [*path, str(i)], tensors, names) for i, v in enumerate(obj)]
        return {"L": enc} if isinstance(obj, list) else {"U": enc}
    if obj is None or isinstance(obj, (bool, str)):
        return {"V": obj}
    if isinstance(obj, (int, np.integer)):
        return {"V": int(obj)}
    if isinstance(obj, (float, np.floating)):
        return {"V": float(obj)}
    raise TypeError(
        f"conch.save: cannot store a {type(obj).__name__} at {'.'.join(path) or 'root'}: only tensors, NumPy "
        "arrays, dicts, lists, tuples, str, int, float, bool and None (no pickling)"
    )


def _unflatten(node, tensors, where, move=lambda a: a):
    """Rebuild the saved structure; ``move`` puts tensors' arrays on the load device (plain arrays stay NumPy)."""
    if not isinstance(node, dict) or len(node) != 1:
        raise SerializationError(f"{where}: malformed structure entry {str(node)[:80]!r}")
    (kind, val), = node.items()  # fmt: skip
    if kind == "T":
        return Tensor._make(move(tensors[val]))
    if kind == "A":
        return tensors[val]
    if kind == "D":
        return {k: _unflatten(v, tensors, where, move) for k, v in val}
    if kind == "L":
        return [_unflatten(v, tensors, where, move) for v in val]
    if kind == "U":
        return tuple(_unflatten(v, tensors, where, move) for v in val)
    if kind == "V":
        return val
    raise SerializationError(f"{where}: unknown structure entry kind {kind!r}")


# ------------------------------------------------------------------------------------------------ save


def _host(arr):
    if not isinstance(arr, np.ndarray):
        arr = to_device(arr, _device("cpu"))
    return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr).reshape(arr.shape)  # keeps 0-d 0-d


def save(obj, path):
    """Write ``obj`` (a tensor, or dicts/lists/tuples of tensors and plain values) to ``path`` as safetensors.

    Atomic: on any failure, or if the process dies mid-write, ``path`` keeps its previous content.
    """
    path = os.fspath(path)
    tensors = {}
    skeleton = _flatten(obj, [], tensors, set())
    header = {}
    offset = 0
    arrays = []
    for name, arr in tensors.items():
        arr = _host(arr)
        header[name] = {
            "dtype": _TO_ST[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + arr.nbytes],
        }
        offset += arr.nbytes
        arrays.append(arr)
    header["__metadata__"] = {"format": "pt", "conch": json.dumps(skeleton, separators=(",", ":"))}
    hbytes = json.dumps(header, separators=(",", ":")).encode()
    hbytes += b" " * (-len(hbytes) % 8)  # align the data section to 8 bytes, as the safetensors writer does
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(hbytes)))
            f.write(hbytes)
            for arr in arrays:
                if arr.nbytes:
                    f.write(memoryview(arr.reshape(-1).view(np.uint8)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)


def _fsync_dir(folder):
    """Make the rename durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


# ------------------------------------------------------------------------------------------------ load


def load(path, device=None):
    """Read a file written by :func:`save` (or any safetensors file) back into its structure.

    ``device``: ``None``/``"cpu"`` keeps tensors on the host, ``"cuda"`` moves them to the GPU. Raises
    :class:`SerializationError` (naming the file) for truncated, corrupt or non-safetensors files.
    """
    path = os.fspath(path)
    dev = None if device is None else _device(device)
    try:
        size = os.path.getsize(path)
        f = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        raise FileNotFoundError(f"conch.load: no such file: {path!r}") from None
    with f:
        head = f.read(8)
        if len(head) < 8:
            raise SerializationError(f"{path}: file is truncated or not a safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise SerializationError(
                f"{path}: corrupt or truncated safetensors file (header length {n} but the file has {size} bytes)"
            )
        raw = f.read(n)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SerializationError(f"{path}: corrupt safetensors header ({e})") from None
        if not isinstance(header, dict):
            raise SerializationError(f"{path}: corrupt safetensors header (not a JSON object)")
        meta = header.pop("__metadata__", None) or {}
        data_start = 8 + n
        data_len = size - data_start
        entries = []
        for name, info in header.items():
            try:
                dtype = _FROM_ST[info["dtype"]]
                shape = tuple(int(s) for s in info["shape"])
                begin, end = (int(o) for o in info["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise SerializationError(f"{path}: corrupt header entry for tensor {name!r}: {info!r}") from None
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if end - begin != nbytes or begin < 0:
                raise SerializationError(
                    f"{path}: tensor {name!r} of shape {list(shape)} and dtype {info['dtype']} needs {nbytes} bytes "
                    f"but its offsets {begin}..{end} span {end - begin}"
                )
            if end > data_len:
                raise SerializationError(
                    f"{path}: file is truncated: tensor {name!r} ends at byte {data_start + end} but the file has "
                    f"{size} bytes"
                )
            entries.append((begin, name, dtype, shape, nbytes))
        entries.sort()
        tensors = {}
        for begin, name, dtype, shape, nbytes in entries:
            arr = np.empty(shape, dtype=dtype)
            if nbytes:
                f.seek(data_start + begin)
                got = f.readinto(memoryview(arr.reshape(-1).view(np.uint8)))
                if got != nbytes:
                    raise SerializationError(f"{path}: file is truncated inside tensor {name!r}")
            tensors[name] = arr

    def move(a):
        return a if dev is None or dev.type == "cpu" else to_device(a, dev)

    skeleton = meta.get("conch") if isinstance(meta, dict) else None
    if skeleton is None:
        return {name: Tensor._make(move(a)) for name, a in tensors.items()}
    try:
        skel = json.loads(skeleton)
        return _unflatten(skel, tensors, path, move)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise SerializationError(f"{path}: corrupt conch structure metadata ({type(e).__name__}: {e})") from None
