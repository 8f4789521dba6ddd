"""Reading ``torch.save`` files (PyTorch's zip format) into conch tensors, without PyTorch and without running code.

A ``torch.save`` file (PyTorch >= 1.6) is a zip archive with one top folder (``ARCHIVE/``) holding ``data.pkl``
(the pickled object), ``data/0``, ``data/1``, ... (each storage's raw bytes), ``byteorder`` (``little`` or
``big``; absent in files from before PyTorch 2.1, which are little-endian) and ``version``. In the pickle a tensor
is a call ``torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[,
metadata])`` whose ``storage`` is a persistent id ``("storage", torch.FloatStorage, key, location, numel)``
naming the record ``data/<key>``; dtypes PyTorch added later (``uint16`` ...) use ``_rebuild_tensor_v3`` with a
``torch.UntypedStorage`` of bytes and the dtype as an extra argument; a ``Parameter`` wraps a tensor in
``torch._utils._rebuild_parameter(tensor, requires_grad, backward_hooks)``.

The unpickler admits what ``torch.load(weights_only=True)`` admits and nothing else: its ``find_class`` (the only
way a pickle reaches a Python object by name) resolves the rebuild functions, storage types, dtypes,
``torch.Size``, ``torch.device``, ``collections.OrderedDict``/``Counter``, ``set``, ``bytearray``, ``complex``
and ``_codecs.encode`` (bytes, in protocol 2) to conch's own stand-ins, and refuses every other global before
it can be called, with an error naming it. Each storage is read once into one buffer, and every tensor on it is
a strided view of that buffer (bounds checked), so tensors that shared memory in PyTorch share it in conch.
"""

from __future__ import annotations

import codecs
import collections
import io
import pickle
import zipfile

import numpy as np

from . import _dtype as D
from ._backend import device as _device
from ._backend import namespace, to_device
from .serialization import SerializationError
from .tensor import Size, Tensor

__all__ = ["UnsafePickleError", "is_torch_zip", "is_legacy_torch_file", "load"]

# The first bytes of the pre-1.6 format (``_use_new_zipfile_serialization=False``): pickle protocol 2, then
# PyTorch's magic number 0x1950a86a20f9469cfc6c as a LONG1.
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_CHUNK = 16 << 20  # storages are copied in pieces, so reading one costs no second full-size buffer


class UnsafePickleError(SerializationError, pickle.UnpicklingError):
    """A ``torch.save`` file whose pickle names a global that loading weights has no use for (it could run code)."""


# dtype name (as PyTorch writes ``torch.<name>``) -> conch dtype
_DTYPES = {
    "float64": D.float64, "float32": D.float32, "float16": D.float16, "bfloat16": D.bfloat16,
    "int64": D.int64, "int32": D.int32, "int16": D.int16, "int8": D.int8, "uint8": D.uint8, "bool": D.bool_,
    "uint16": np.dtype(np.uint16), "uint32": np.dtype(np.uint32), "uint64": np.dtype(np.uint64),
}  # fmt: skip
_STORAGE_NAMES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool",
}  # fmt: skip
_UNSUPPORTED_DTYPES = ("complex", "float8", "qint", "quint", "ComplexFloat", "ComplexDouble", "QInt", "QUInt")


class _StorageType:
    """Stands in for ``torch.FloatStorage`` & co. in the pickle: only its dtype matters (``None``: bytes)."""

    def __init__(self, name, dtype):
        self.name, self.dtype = name, dtype

    def __repr__(self):
        return f"torch.{self.name}"


class _Storage:
    """One storage record: its bytes as a flat host array, moved to the load device on first use."""

    def __init__(self, key, raw, dtype, location, dev):
        self.key, self.raw, self.dtype, self.location, self.dev = key, raw, dtype, location, dev
        self.version = [0]  # tensors on one storage share memory, so they share the in-place version counter
        self._flat = {}

    def flat(self, dtype):
        """The storage as a flat array of ``dtype`` on the load device (one device copy per storage)."""
        arr = self._flat.get(dtype)
        if arr is None:
            if self.raw.nbytes % dtype.itemsize:
                raise SerializationError(f"storage {self.key!r} holds {self.raw.nbytes} bytes, not whole {dtype}s")
            host = self.raw.view(dtype)
            arr = host if self.dev is None or self.dev.type == "cpu" else to_device(host, self.dev)
            self._flat[dtype] = arr
        return arr


_TENSOR_TYPE = object()  # torch.Tensor / torch.nn.Parameter in ``_rebuild_from_type_v2``: a marker, never called
_PARAMETER_TYPE = object()


def _ints(value, what):
    if not isinstance(value, (tuple, list)) or not all(type(v) is int and v >= 0 for v in value):
        raise SerializationError(f"tensor {what} must be a tuple of non-negative ints, got {value!r}")
    return tuple(value)


def _tensor(storage, offset, size, stride, requires_grad, dtype=None):
    """A conch tensor viewing ``storage`` as PyTorch's ``as_strided(size, stride, offset)``, bounds checked."""
    if not isinstance(storage, _Storage):
        raise SerializationError(f"a tensor's storage must be a storage record, got {type(storage).__name__}")
    dtype = storage.dtype if dtype is None else dtype
    if dtype is None:
        raise SerializationError(f"storage {storage.key!r} holds bytes and the tensor names no dtype")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    if type(offset) is not int or offset < 0 or len(size) != len(stride):
        raise SerializationError(f"malformed tensor: offset {offset!r}, size {size}, stride {stride}")
    flat = storage.flat(dtype)
    n = flat.shape[0]
    # the last element a view reaches must lie in the storage (an empty view reaches none)
    if 0 not in size and offset + sum((s - 1) * st for s, st in zip(size, stride)) >= n:
        raise SerializationError(
            f"tensor of size {list(size)}, stride {list(stride)} and offset {offset} reaches past the end of "
            f"storage {storage.key!r} ({n} elements)"
        )
    xp = namespace(_device("cpu") if storage.dev is None else storage.dev)
    base = flat[min(offset, n) :]
    arr = xp.lib.stride_tricks.as_strided(base, shape=size, strides=tuple(st * dtype.itemsize for st in stride))
    t = Tensor._make(arr, False, None, storage.version)
    if requires_grad:
        t.requires_grad_(True)
    return t


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _tensor(storage, storage_offset, size, stride, False)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    return _tensor(storage, storage_offset, size, stride, bool(requires_grad))


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    if not isinstance(dtype, np.dtype):
        raise SerializationError(f"_rebuild_tensor_v3: expected a dtype, got {dtype!r}")
    return _tensor(storage, storage_offset, size, stride, bool(requires_grad), dtype)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    from .nn.parameter import Parameter  # here: conch.nn imports much of conch, which imports this module

    if not isinstance(data, Tensor):
        raise SerializationError(f"_rebuild_parameter: expected a tensor, got {type(data).__name__}")
    return Parameter(data, bool(requires_grad))


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    if state:  # Python attributes set on a Parameter: conch would have to set arbitrary attributes to honour them
        raise SerializationError(f"a Parameter with Python attributes {sorted(map(str, state))} is not supported")
    return _rebuild_parameter(data, requires_grad, backward_hooks)


def _rebuild_from_type_v2(func, new_type, args, state):
    """A tensor whose class or ``__dict__`` PyTorch had to record: plain tensors and Parameters without state."""
    if func not in (_rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter, _rebuild_tensor):
        raise SerializationError(f"_rebuild_from_type_v2: unexpected rebuild function {func!r}")
    if new_type not in (_TENSOR_TYPE, _PARAMETER_TYPE):
        raise SerializationError("_rebuild_from_type_v2: only torch.Tensor and torch.nn.Parameter are supported")
    if state:
        raise SerializationError(f"a tensor with Python attributes {sorted(map(str, state))} is not supported")
    if not isinstance(args, tuple):
        raise SerializationError("_rebuild_from_type_v2: malformed arguments")
    return func(*args)


def _encode(text, encoding="utf-8", errors="strict"):
    """``_codecs.encode`` as protocol-2 pickles use it for ``bytes``: a str to latin-1; nothing else."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1" or errors != "strict":
        raise SerializationError(f"_codecs.encode is only accepted for bytes (latin1), got encoding {encoding!r}")
    return text.encode("latin1")


def _torch_device(kind, index=None):
    return _device(kind, index)


def _allowed():
    """``(module, name) -> object`` for every global a weights-only pickle may name."""
    rc = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("collections", "Counter"): collections.Counter,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "bytearray"): bytearray,
        ("builtins", "complex"): complex,
        ("_codecs", "encode"): _encode,
        ("torch", "Size"): Size,
        ("torch", "device"): _torch_device,
        ("torch", "Tensor"): _TENSOR_TYPE,
        ("torch._tensor", "Tensor"): _TENSOR_TYPE,
        ("torch.nn.parameter", "Parameter"): _PARAMETER_TYPE,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
        ("torch", "UntypedStorage"): _StorageType("UntypedStorage", None),
        ("torch.storage", "UntypedStorage"): _StorageType("UntypedStorage", None),
    }
    for name, dt in _DTYPES.items():
        rc["torch", name] = dt
    for name, dt in _STORAGE_NAMES.items():
        rc["torch", name] = _StorageType(name, _DTYPES[dt])
    return rc


_ALLOWED = _allowed()


class _Unpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only :data:`_ALLOWED` globals and reads storages from the archive."""

    def __init__(self, data, storages):
        super().__init__(io.BytesIO(data), encoding="utf-8")
        self._storages = storages

    def find_class(self, module, name):
        # protocol 2 writes Python 2 names (``__builtin__``); the C unpickler maps them only in its own find_class
        module = {"__builtin__": "builtins", "torch.tensor": "torch._tensor"}.get(module, module)
        obj = _ALLOWED.get((module, name))
        if obj is not None:
            return obj
        if module == "torch" and (name.endswith("Storage") or name.startswith(_UNSUPPORTED_DTYPES)):
            raise UnsafePickleError(f"torch.{name}: conch has no such dtype (complex, float8 and quantized "
                                    "tensors are not supported)")  # fmt: skip
        raise UnsafePickleError(
            f"refused global {module}.{name}: a torch.save file may only contain tensors, Parameters, dicts "
            "(OrderedDict), lists, tuples and plain values (what torch.load(weights_only=True) accepts); anything "
            "else could run code while loading, so it is not loaded"
        )

    def persistent_load(self, pid):
        return self._storages(pid)


def is_torch_zip(head):
    """Whether a file starting with ``head`` is a zip archive (as ``torch.save`` writes, and safetensors never)."""
    return head[:4] == b"PK\x03\x04"


def is_legacy_torch_file(head):
    return head[: len(_LEGACY_MAGIC)] == _LEGACY_MAGIC


def _read_record(zf, name, nbytes, path):
    """The record ``name`` (``nbytes`` long) into a fresh writable buffer; zipfile checks its CRC-32 at the end."""
    info = zf.getinfo(name)
    if info.file_size != nbytes:
        raise SerializationError(
            f"{path}: storage record {name!r} holds {info.file_size} bytes, but its tensor metadata needs {nbytes}"
        )
    buf = np.empty(nbytes, dtype=np.uint8)
    mv = memoryview(buf)
    pos = 0
    with zf.open(info) as f:
        while pos < nbytes:
            chunk = f.read(min(_CHUNK, nbytes - pos))
            if not chunk:
                raise SerializationError(f"{path}: storage record {name!r} is truncated")
            mv[pos : pos + len(chunk)] = chunk
            pos += len(chunk)
        f.read(1)  # reaching the end of the record is what makes zipfile compare the CRC-32
    return buf


def load(path, device=None, locations=None):
    """Read the ``torch.save`` zip file ``path`` into conch tensors and plain Python values.

    ``device``: where tensors go (``None``: the host). ``locations``: ``map_location`` as a dict, from the
    location a storage was saved on (``"cpu"``, ``"cuda:0"``) to a device; a location it does not name loads
    onto the host. Raises :class:`SerializationError` for a corrupt archive and :class:`UnsafePickleError` for a
    pickle that names anything but tensors, storages and plain containers.
    """
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise SerializationError(f"{path}: not a readable torch.save zip archive ({e})") from None
    with zf:
        names = zf.namelist()
        pkls = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if any(n.endswith("/constants.pkl") for n in names):
            raise SerializationError(
                f"{path}: a TorchScript archive (torch.jit.save): conch reads torch.save files only"
            )
        if len(pkls) != 1:
            raise SerializationError(f"{path}: not a torch.save archive (expected one ARCHIVE/data.pkl, found "
                                     f"{len(pkls)})")  # fmt: skip
        prefix = pkls[0][: -len("data.pkl")]
        order = "little"
        if prefix + "byteorder" in names:
            order = zf.read(prefix + "byteorder").decode("ascii", "replace")
            if order not in ("little", "big"):
                raise SerializationError(f"{path}: unknown byte order {order!r}")
        cache = {}

        def storage(pid):
            if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
                raise SerializationError(f"{path}: unexpected persistent id {str(pid)[:80]!r}")
            _, stype, key, location, numel = pid
            key = key.decode("ascii") if isinstance(key, bytes) else key
            location = location.decode("ascii") if isinstance(location, bytes) else location
            if not isinstance(stype, _StorageType) or not isinstance(key, str) or not isinstance(location, str):
                raise SerializationError(f"{path}: malformed storage reference {str(pid)[:120]!r}")
            if type(numel) is not int or numel < 0:
                raise SerializationError(f"{path}: storage {key!r} has a bad element count {numel!r}")
            got = cache.get(key)
            if got is not None:
                if got.dtype != stype.dtype:  # torch.save refuses to write this, so the file is corrupt
                    raise SerializationError(f"{path}: storage {key!r} is referenced with two dtypes")
                return got
            record = f"{prefix}data/{key}"
            if record not in names:
                raise SerializationError(f"{path}: storage record {record!r} is missing")
            itemsize = 1 if stype.dtype is None else stype.dtype.itemsize
            raw = _read_record(zf, record, numel * itemsize, path)
            if order == "big" and itemsize > 1:  # PyTorch swaps on load too; bytes (UntypedStorage) stay as they are
                raw.view(f"u{itemsize}").byteswap(inplace=True)
            if locations is not None:
                target = locations.get(location)
                dev = None if target is None else _device(str(target))
            else:
                dev = device
            got = cache[key] = _Storage(key, raw, stype.dtype, location, dev)
            return got

        try:
            data = zf.read(pkls[0])
            return _Unpickler(data, storage).load()
        except SerializationError as e:
            if str(e).startswith(str(path)):
                raise
            raise type(e)(f"{path}: {e}") from None
        except zipfile.BadZipFile as e:  # a record's CRC-32 does not match: the bytes are corrupt
            raise SerializationError(f"{path}: corrupt archive: {e}") from None
        except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError, KeyError,
                RecursionError, MemoryError, OverflowError, RuntimeError) as e:  # fmt: skip
            raise SerializationError(f"{path}: malformed data.pkl ({type(e).__name__}: {e})") from None
