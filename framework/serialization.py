"""``conch.save`` / ``conch.load``: nested state dicts as safetensors files, written atomically, never pickled.

File layout (the safetensors format: an 8-byte little-endian header length, a JSON header, raw bytes)::

    tensors      one entry per tensor leaf, named by its path with "." between keys
                 ({"model": {"fc.weight": t}} -> "model.fc.weight"); a flat model state dict keeps its own
                 names, so PyTorch, JAX or the safetensors library read the file like any other checkpoint
    __metadata__ "format": "pt" and "conch": the JSON skeleton of the object (dicts with their key types,
                 lists, tuples, ints, floats, strings, bools, None) with each tensor replaced by its name;
                 "conch.checksum" (the algorithm, "crc32"), "conch.tensor_checksums" (JSON: tensor name ->
                 CRC-32 of its dtype, shape and bytes) and "conch.metadata_checksum" (CRC-32 of the other
                 metadata entries)

Loading runs no code: the header is parsed and validated by the safetensors library itself (offsets
contiguous, in order and in bounds, dtypes known, shapes of non-negative integers whose byte size matches,
metadata a string map), then conch rejects duplicate keys, checks every checksum the file carries (unless
``verify=False``) and copies bytes. Files written by other programs (no "conch" entry) load as a flat
``{name: tensor}`` dict; files without checksums (other programs, earlier conch versions) load with
nothing to verify. bfloat16 is stored as safetensors ``BF16``; CUDA tensors are copied to the host to be
written. Every malformed, truncated or corrupt file raises :class:`SerializationError` naming the file and
the problem (and the tensor, where one is at fault).

Writes are atomic: the bytes go to a temporary file in the destination folder, are flushed and fsynced,
and the file is renamed over the destination (then the folder is fsynced), so a reader or a crash sees the
old file or the new one, never a mix. The temporary file's name carries the host and pid of its writer
(``.NAME.conch-tmp.HOST.PID.RANDOM.tmp``), so the next save to the folder can recognise and remove the
ones a killed writer left behind.

Example::

    conch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 1000}, "ckpt.safetensors")
    ckpt = conch.load("ckpt.safetensors")
    model.load_state_dict(ckpt["model"])
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import tempfile
import time
import zlib
from collections.abc import Mapping

import numpy as np
from safetensors import SafetensorError, safe_open

from . import _dtype as D
from ._backend import device as _device
from ._backend import is_cupy_array, to_device
from .tensor import Tensor

__all__ = ["save", "load", "SerializationError"]

_MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit

_TO_ST = {
    D.float64: "F64", D.float32: "F32", D.float16: "F16",
    D.int64: "I64", D.int32: "I32", D.int16: "I16", D.int8: "I8", D.uint8: "U8", D.bool_: "BOOL",
    np.dtype(np.uint16): "U16", np.dtype(np.uint32): "U32", np.dtype(np.uint64): "U64",
}  # fmt: skip


class _FromST(dict):
    """safetensors name -> dtype; "BF16" imports ml_dtypes at its first lookup (conch._dtype loads it lazily)."""

    def __contains__(self, key):
        return key == "BF16" or dict.__contains__(self, key)

    def __getitem__(self, key):
        if key == "BF16":
            return D.bfloat16
        return dict.__getitem__(self, key)


_FROM_ST = _FromST({v: k for k, v in _TO_ST.items()})
D.on_bfloat16(lambda bf: _TO_ST.__setitem__(bf, "BF16"))  # an array can be bfloat16 only once it is loaded

# Checksums. CRC-32 because it is the cheapest check hashlib/zlib offer (4.6 GB/s on one core of the test
# machine: 22 ms per 100 MB, against 61 ms for sha256 and 123 ms for blake2b) and it is built for this job:
# it catches every 1-bit flip and every burst up to 32 bits, and other corruption with probability 1 - 2**-32.
# It is no defence against deliberate tampering, which needs a signature over the file, not a checksum in it.
_CK_ALGO = "conch.checksum"
_CK_TENSORS = "conch.tensor_checksums"
_CK_META = "conch.metadata_checksum"

# Temporary files of saves in progress: ".NAME.conch-tmp.HOST.PID.RANDOM.tmp" (HOST without dots, so the name
# parses from the right whatever NAME holds). Nothing else in a folder matches, so nothing else is removed.
_TMP_RE = re.compile(r"^\..+\.conch-tmp\.([A-Za-z0-9-]+)\.(\d+)\.[a-z0-9_]+\.tmp$")
_TMP_DEAD_AFTER = 60.0  # seconds untouched before a dead writer's file goes (a pid namespace may hide the writer)
_TMP_STALE_AFTER = 24 * 3600.0  # any host's, any pid's: no save takes a day (covers reused pids, other hosts)
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "host"  # a shared folder serves many hosts


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


# ------------------------------------------------------------------------------------------------ checksums


def _tensor_crc(st_dtype, shape, data=b""):
    """CRC-32 of a tensor's dtype, shape and bytes: a flip in the header's dtype or shape is caught too."""
    return zlib.crc32(data, zlib.crc32(json.dumps([st_dtype, list(shape)]).encode()))


def _meta_crc(meta):
    """CRC-32 of every metadata entry but the metadata checksum itself, in a canonical order."""
    rest = {k: v for k, v in meta.items() if k != _CK_META}
    return zlib.crc32(json.dumps(rest, sort_keys=True, separators=(",", ":")).encode())


def _hex(crc):
    return f"{crc:08x}"


# ------------------------------------------------------------------------------------------------ save


def _host(arr):
    if not isinstance(arr, np.ndarray):
        arr = to_device(arr, _device("cpu"))
    return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr).reshape(arr.shape)  # keeps 0-d 0-d


def _bytes(arr):
    """A C-contiguous host array's bytes, without a copy."""
    return memoryview(arr.reshape(-1).view(np.uint8))


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
    crcs = {name: _hex(_tensor_crc(header[name]["dtype"], a.shape, _bytes(a))) for name, a in zip(header, arrays)}
    meta = {
        "format": "pt",
        "conch": json.dumps(skeleton, separators=(",", ":")),
        _CK_ALGO: "crc32",
        _CK_TENSORS: json.dumps(crcs, separators=(",", ":")),
    }
    meta[_CK_META] = _hex(_meta_crc(meta))
    header["__metadata__"] = meta
    hbytes = json.dumps(header, separators=(",", ":")).encode()
    hbytes += b" " * (-len(hbytes) % 8)  # align the data section to 8 bytes, as the safetensors writer does
    folder = os.path.dirname(os.path.abspath(path))
    _remove_stale_temps(folder)  # before writing: a full disk may be full of them
    # the name cut to 100 characters keeps the temporary one within the usual 255-byte limit on names
    prefix = f".{os.path.basename(path)[:100]}.conch-tmp.{_HOST}.{os.getpid()}."
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(hbytes)))
            f.write(hbytes)
            for arr in arrays:
                if arr.nbytes:
                    f.write(_bytes(arr))
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file 0600; give it the mode open() would (0666 less the umask), so a checkpoint is
        # as readable to the user's group as any other file they write
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)


def _pid_alive(pid):
    """Whether ``pid`` runs on this host; ``True`` when unsure, so that only age can make its file stale."""
    if os.name != "posix" or pid <= 0:
        return True  # Windows has no signal-0 probe (os.kill(pid, 0) would send CTRL_C_EVENT)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # PermissionError: alive, another user's
        return True
    return True


def _remove_stale_temps(folder):
    """Remove the temporary files that killed saves left in ``folder``: conch's own names only, and only those
    whose writer is dead (same host, pid gone, untouched for a minute) or that are a day old. Never raises."""
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for e in entries:
        m = _TMP_RE.match(e.name)
        if m is None:
            continue
        try:
            if not e.is_file(follow_symlinks=False):
                continue
            age = now - e.stat(follow_symlinks=False).st_mtime
            host, pid = m.group(1), int(m.group(2))
            dead = host == _HOST and age > _TMP_DEAD_AFTER and not _pid_alive(pid)
            if dead or age > _TMP_STALE_AFTER:
                os.unlink(e.path)
        except OSError:  # gone already (another saver cleaned it), or not ours to remove
            continue


def _umask() -> int:
    """The process's umask: from /proc on Linux, where reading it does not briefly change it for other threads."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0)  # elsewhere reading means setting: set it straight back
    os.umask(mask)
    return mask


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


def _unique_keys(pairs):
    """``object_pairs_hook`` that rejects duplicate keys (the safetensors library keeps the last one silently)."""
    d = {}
    for k, v in pairs:
        if k in d:
            raise SerializationError(f"duplicate key {k!r} in the header")
        d[k] = v
    return d


def _culprit(raw):
    """The first tensor entry in ``raw`` that is visibly wrong, described in words, or ``None``: used only to name
    the tensor in an error the safetensors library reports without a name (it has rejected the file already)."""
    try:
        header = json.loads(raw.decode("utf-8"))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            st_dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            if st_dtype not in _FROM_ST:
                return f"tensor {name!r} has dtype {st_dtype!r}, which conch does not know"
            if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
                return f"tensor {name!r} has shape {shape!r}, which is not a list of non-negative integers"
            nbytes = int(np.prod([float(s) for s in shape])) * _FROM_ST[st_dtype].itemsize
            if nbytes != end - begin:
                return (
                    f"tensor {name!r} of dtype {st_dtype} and shape {shape} needs {nbytes} bytes but its offsets "
                    f"{begin}..{end} span {end - begin}"
                )
    except Exception:  # noqa: BLE001  (a best-effort description of a file already known to be bad)
        return None
    return None


def _rust_header(path, raw):
    """Names (in data order), ``(dtype, shape)`` and metadata, as the safetensors library parses and validates
    the header of ``path``: JSON types, known dtypes, non-negative integer shapes without overflow, offsets
    contiguous from 0 and each as long as its shape and dtype need, data ending exactly at the end of the file,
    metadata a map of strings."""
    try:
        with safe_open(path, framework="numpy") as f:
            names = f.offset_keys()
            infos = {}
            for name in names:
                sl = f.get_slice(name)
                infos[name] = (sl.get_dtype(), tuple(sl.get_shape()))
            meta = f.metadata()
    except SafetensorError as e:
        msg = str(e).removeprefix("Error while deserializing header: ")
        if "incomplete metadata" in msg:
            msg = "the data section does not end where the header says (the file is truncated or extended)"
        elif "invalid offset" in msg:
            msg += " (tensor data must be contiguous, in order, without overlaps or gaps)"
        elif "tensor `" not in msg and (culprit := _culprit(raw)) is not None:
            msg += f": {culprit}"
        raise SerializationError(f"{path}: invalid safetensors header: {msg}") from None
    return names, infos, meta if meta is not None else {}


def _check_header(path, raw, names, infos, meta):
    """Reject duplicate keys, and return each tensor's ``(begin, end)`` after checking that conch's reading of
    the header bytes it holds agrees with the library's (it would not if the file changed in between)."""
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except SerializationError as e:
        raise SerializationError(f"{path}: invalid safetensors header: {e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise SerializationError(f"{path}: invalid safetensors header ({type(e).__name__}: {e})") from None
    spans = {}
    offset = 0
    for name in names:
        st_dtype, shape = infos[name]
        if st_dtype not in _FROM_ST:
            raise SerializationError(f"{path}: tensor {name!r} has dtype {st_dtype}, which conch cannot load")
        end = offset + int(np.prod(shape, dtype=np.int64)) * _FROM_ST[st_dtype].itemsize
        spans[name] = (offset, end)
        offset = end
    try:
        mine = {
            k: (v["dtype"], tuple(v["shape"]), tuple(v["data_offsets"]))
            for k, v in header.items()
            if k != "__metadata__"
        }
        my_meta = header.get("__metadata__") or {}
    except (AttributeError, KeyError, TypeError):  # only if the bytes are not the ones the library validated
        mine = my_meta = None
    theirs = {k: (*infos[k], spans[k]) for k in names}
    if mine != theirs or my_meta != meta:
        raise SerializationError(f"{path}: the header changed while it was being read; load again")
    return spans, offset


def _verify_metadata(path, meta):
    """Check the metadata checksum; return the tensor checksums (``None``: the file has none)."""
    if _CK_ALGO not in meta and _CK_META not in meta and _CK_TENSORS not in meta:
        return None  # written before conch stored checksums, or by another program: nothing to verify
    algo = meta.get(_CK_ALGO)
    if algo != "crc32":
        raise SerializationError(
            f"{path}: metadata is corrupt or from a newer conch: checksum algorithm {algo!r} (expected 'crc32'); "
            "conch.load(..., verify=False) skips the checks"
        )
    if meta.get(_CK_META) != _hex(_meta_crc(meta)):
        raise SerializationError(
            f"{path}: metadata checksum mismatch: the file's metadata (structure, plain values or checksums) is "
            f"corrupt (stored {meta.get(_CK_META)!r}, computed {_hex(_meta_crc(meta))!r})"
        )
    try:
        crcs = json.loads(meta[_CK_TENSORS])
    except (KeyError, json.JSONDecodeError) as e:  # only reachable if the writer itself was broken
        raise SerializationError(f"{path}: tensor checksums missing or unreadable ({e})") from None
    if not isinstance(crcs, dict):
        raise SerializationError(f"{path}: tensor checksums are not a JSON object")
    return crcs


def map_location_device(map_location):
    """The load device for PyTorch's ``map_location``: ``None``, a device string or ``conch.device``, or a dict.

    A safetensors file keeps its tensors on the host, so a dict (``{"cuda:1": "cuda:0"}``, saved location to new
    location) maps ``"cpu"``: tensors go to ``map_location["cpu"]`` when it is there and stay on the host otherwise,
    as PyTorch moves only the locations a dict names. A callable cannot be honoured without PyTorch's storages
    and is refused.
    """
    if map_location is None:
        return None
    if isinstance(map_location, dict):
        target = map_location.get("cpu")
        return None if target is None else _device(target)
    if callable(map_location):
        raise TypeError("conch.load: map_location as a function is not supported (conch files hold arrays, not "
                        "PyTorch storages); pass a device such as 'cpu' or 'cuda:0', or a dict")  # fmt: skip
    try:
        return _device(map_location)
    except (TypeError, ValueError) as e:
        raise TypeError(f"conch.load: map_location must be None, a device or a dict, got {map_location!r} ({e})") from e


def load(path, device=None, verify=True, locations=None):
    """Read a file written by :func:`save` (or any safetensors file, or a ``torch.save`` file) into its structure.

    ``device``: ``None``/``"cpu"`` keeps tensors on the host, ``"cuda"`` moves them to the GPU. ``verify``:
    check the CRC-32 of every tensor and of the metadata against those stored in the file (files without
    checksums load unchecked); ``False`` skips this (it costs about as much as one more copy of the data).
    Raises :class:`SerializationError` (naming the file, and the tensor or the metadata at fault) for
    truncated, malformed, corrupt or non-safetensors files.

    A zip archive is read as a ``torch.save`` file by :mod:`conch.torch_format` (no code from the file runs;
    the zip's own CRC-32 of each record is always checked); ``locations`` (``map_location`` as a dict) then maps
    each storage's saved location to a device, in place of ``device``.
    """
    path = os.fspath(path)
    dev = None if device is None else _device(device)
    try:
        f = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        raise FileNotFoundError(f"conch.load: no such file: {path!r}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(16)
        from . import torch_format  # here: it imports this module

        if torch_format.is_torch_zip(head):
            f.close()
            return torch_format.load(path, device=dev, locations=locations)
        if torch_format.is_legacy_torch_file(head):
            raise SerializationError(
                f"{path}: a torch.save file in the format before PyTorch 1.6 (or saved with "
                "_use_new_zipfile_serialization=False), which conch does not read; save it again with a current "
                "torch.save, or as safetensors"
            )
        head = head[:8]
        f.seek(8)
        if len(head) < 8:
            raise SerializationError(f"{path}: file is truncated or not a safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise SerializationError(
                f"{path}: corrupt or truncated safetensors file (header length {n} but the file has {size} bytes)"
            )
        raw = f.read(n)
        names, infos, meta = _rust_header(path, raw)
        spans, data_len = _check_header(path, raw, names, infos, meta)
        data_start = 8 + n
        if data_start + data_len != size:
            raise SerializationError(f"{path}: the file changed while it was being read; load again")
        crcs = _verify_metadata(path, meta) if verify else None
        if crcs is not None and set(crcs) != set(names):
            extra, missing = sorted(set(names) - set(crcs)), sorted(set(crcs) - set(names))
            raise SerializationError(
                f"{path}: tensor names do not match the checksummed ones (a name is corrupt): "
                f"unexpected {extra}, missing {missing}"
            )
        tensors = {}
        for name in names:  # in data order: one forward pass over the file
            st_dtype, shape = infos[name]
            begin, end = spans[name]
            arr = np.empty(shape, dtype=_FROM_ST[st_dtype])
            if end > begin:
                f.seek(data_start + begin)
                if f.readinto(_bytes(arr)) != end - begin:
                    raise SerializationError(f"{path}: file is truncated inside tensor {name!r}")
            if crcs is not None and crcs[name] != (got := _hex(_tensor_crc(st_dtype, shape, _bytes(arr)))):
                raise SerializationError(
                    f"{path}: checksum mismatch in tensor {name!r} (dtype {st_dtype}, shape {list(shape)}): its "
                    f"bytes are corrupt (stored {crcs[name]!r}, computed {got!r})"
                )
            tensors[name] = arr

    def move(a):
        return a if dev is None or dev.type == "cpu" else to_device(a, dev)

    skeleton = meta.get("conch")
    if skeleton is None:
        return {name: Tensor._make(move(a)) for name, a in tensors.items()}
    try:
        skel = json.loads(skeleton)
        return _unflatten(skel, tensors, path, move)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, RecursionError) as e:
        raise SerializationError(f"{path}: corrupt conch structure metadata ({type(e).__name__}: {e})") from None
