"""The fake ``cupy.ndarray`` over a NumPy array, and the generic forwarding of ``cupy.*`` functions to NumPy."""

from __future__ import annotations

import numbers
import operator

import numpy as np

from . import _cuda
from ._state import CURRENT, record

_IMPLICIT = (
    "Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a NumPy array explicitly."
)
_SCALARS = (bool, int, float, complex, np.generic)


def _root(a: np.ndarray) -> np.ndarray:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _make(a: np.ndarray, base=None, dev=None):
    """A fake array around ``a``: a view of ``base`` (a fake owner) or a new allocation on the current device."""
    self = object.__new__(ndarray)
    self._a = a
    if base is not None:
        self._base, self._root, self._mem, self._dev = base, base._root, None, base._dev
    else:
        root = _root(a)
        self._base, self._root = None, root
        self._dev = CURRENT["device"] if dev is None else dev
        self._mem = _cuda.allocate(root.nbytes)
    return self


def _wrap(r, ins):
    """Wrap a NumPy result: an input itself, a view of an input's memory, or a new device array."""
    if isinstance(r, np.ndarray):
        for f in ins:
            if r is f._a:
                return f
        root = _root(r)
        for f in ins:
            if root is f._root:
                return _make(r, f._base if f._base is not None else f)
        return _make(r)
    if isinstance(r, np.generic):
        return _make(np.asarray(r))
    if isinstance(r, tuple):
        return tuple(_wrap(x, ins) for x in r)
    if isinstance(r, list):
        return [_wrap(x, ins) for x in r]
    return r


def _unwrap(x, ins, host_ok=False, depth=0):
    """``x`` with fake arrays replaced by their NumPy arrays (collected in ``ins``); NumPy arrays refused."""
    if isinstance(x, ndarray):
        ins.append(x)
        return x._a
    if isinstance(x, np.ndarray) and not host_ok:
        raise TypeError(f"Unsupported type {type(x)}")
    if isinstance(x, (list, tuple)) and depth < 4:
        return type(x)(_unwrap(v, ins, host_ok, depth + 1) for v in x)
    return x


def _check_devices(ins):
    # no peer access in the simulation: every operand must live on the current device
    cur = CURRENT["device"]
    for f in ins:
        if f._dev != cur:
            raise ValueError(
                f"The device where the array resides ({f._dev}) is different from the current device ({cur}). "
                "Peer access is unavailable between these devices."
            )


def _call(fn, args, kwargs, strict=False, host_ok=False, owner=None):
    ins: list = [] if owner is None else [owner]
    if strict:  # ufuncs take arrays and scalars only, as CuPy's kernels do
        for x in args:
            if not isinstance(x, (ndarray, *_SCALARS)) and x is not None:
                raise TypeError(f"Unsupported type {type(x)}")
    a = _unwrap(args, ins, host_ok)
    k = {key: _unwrap(v, ins, host_ok) for key, v in kwargs.items()} if kwargs else {}
    _check_devices(ins)
    return _wrap(fn(*a, **k), ins), ins


class Ufunc:
    """A NumPy ufunc that takes fake arrays and scalars (NumPy arrays raise TypeError, as in CuPy)."""

    def __init__(self, uf):
        self._uf = uf
        self.__name__ = uf.__name__

    def __call__(self, *args, **kwargs):
        return _call(self._uf, args, kwargs, strict=True)[0]

    def _method(self, name, args, kwargs):
        return _call(getattr(self._uf, name), args, kwargs, strict=name != "at")[0]

    def reduce(self, *args, **kwargs):
        return self._method("reduce", args, kwargs)

    def accumulate(self, *args, **kwargs):
        return self._method("accumulate", args, kwargs)

    def outer(self, *args, **kwargs):
        return self._method("outer", args, kwargs)

    def at(self, *args, **kwargs):
        return self._method("at", args, kwargs)

    def __getattr__(self, name):
        return getattr(self._uf, name)

    def __repr__(self):
        return f"<ufunc '{self.__name__}' (simulated cupy)>"


# functions whose output size depends on the data: CuPy copies a count to the host (syncs per call)
_SYNCS = {"nonzero": 1, "argwhere": 1, "flatnonzero": 1, "unique": 1, "compress": 1, "extract": 1, "bincount": 2,
          "trim_zeros": 1, "unique_values": 1, "unique_counts": 1, "unique_inverse": 1, "unique_all": 1}  # fmt: skip
# functions that return a 0-d array in CuPy where NumPy returns a Python scalar
_TO_ARRAY = {"allclose", "array_equal", "array_equiv", "count_nonzero"}
# NumPy names CuPy does not have (code that uses them would fail on a real GPU)
_MISSING = {"errstate", "seterr", "geterr", "frompyfunc", "nditer", "memmap", "set_printoptions",
            "get_printoptions", "printoptions", "ma", "char", "rec", "ctypeslib", "matrix", "asmatrix",
            "ndenumerate", "object_"}  # fmt: skip


class Func:
    """A NumPy function over fake arrays: unwraps arguments, refuses host arrays, wraps results."""

    def __init__(self, fn, name):
        self._fn = fn
        self.__name__ = name
        self.__doc__ = getattr(fn, "__doc__", None)

    def __call__(self, *args, **kwargs):
        name = self.__name__
        if name == "where" and len(args) == 1 and not kwargs:
            record("sync", "where(cond)")
        elif name == "repeat" and isinstance(args[1] if len(args) > 1 else kwargs.get("repeats"), ndarray):
            raise ValueError("cupy.ndarray cannot be specified as `repeats` argument.")
        elif name in _SYNCS:
            record("sync", name, _SYNCS[name])
        r, ins = _call(self._fn, args, kwargs)
        if name in _TO_ARRAY and isinstance(r, (bool, int, float)):
            return _make(np.asarray(r))
        return r

    def __repr__(self):
        return f"<function cupy.{self.__name__} (simulated)>"


def _to_device(fn_name):
    def fn(obj, *args, **kwargs):
        ins: list = []
        a = _unwrap(obj, ins, host_ok=True)
        if not ins or isinstance(a, np.ndarray) and not any(a is f._a for f in ins):
            record("h2d", fn_name)
        args = _unwrap(args, ins)
        kwargs = {k: _unwrap(v, ins) for k, v in kwargs.items()}
        if isinstance(a, np.ndarray) and a.dtype == object or isinstance(a, str):
            raise ValueError(f"Unsupported dtype {np.asarray(a).dtype}")
        if any(a is f._a for f in ins):
            return _wrap(getattr(np, fn_name)(a, *args, **kwargs), ins)
        # a host-to-device copy: new device memory, C-ordered unless the source is Fortran-ordered (order "K")
        r = np.array(a, *args, **kwargs)
        if not r.flags.c_contiguous and not r.flags.f_contiguous or r.base is not None:
            r = np.ascontiguousarray(r)
        return _make(r)

    fn.__name__ = fn_name
    return fn


def asnumpy(a, stream=None, order="C", out=None, blocking=True):
    """The host copy of ``a`` (one sync); NumPy arrays and Python data pass through ``numpy.asarray``."""
    if isinstance(a, ndarray):
        return a.get(stream, order, out)
    return np.asarray(a, order=order)


def get_array_module(*args):
    from . import _modules

    return _modules.MODULES["cupy"] if any(isinstance(a, ndarray) for a in args) else np


def from_dlpack(x, *, device=None, copy=None):
    if isinstance(x, ndarray):
        return _make(x._a.view(), x._base if x._base is not None else x)
    raise TypeError(f"the simulated GPU cannot import a DLPack capsule from {type(x).__name__}")


# ---------------------------------------------------------------- ndarray


class _Flags:
    __slots__ = ("c_contiguous", "f_contiguous", "owndata", "writeable")

    def __init__(self, a):
        self.c_contiguous = a._a.flags.c_contiguous
        self.f_contiguous = a._a.flags.f_contiguous
        self.owndata = a._base is None
        self.writeable = True

    def __getitem__(self, key):
        key = {"C": "C_CONTIGUOUS", "F": "F_CONTIGUOUS"}.get(key.upper(), key.upper())
        return getattr(self, key.lower())

    def __repr__(self):
        return f"  C_CONTIGUOUS : {self.c_contiguous}\n  F_CONTIGUOUS : {self.f_contiguous}\n  OWNDATA : {self.owndata}"


class _Data:
    """``a.data``: the device address of the first element (``ptr``) and its device."""

    __slots__ = ("ptr", "device_id", "mem")

    def __init__(self, a):
        self.ptr = a._a.__array_interface__["data"][0]
        self.device_id = a._dev
        self.mem = a._mem if a._base is None else a._base._mem

    @property
    def device(self):
        return _cuda.Device(self.device_id)


# methods forwarded to NumPy's (results wrapped: views stay views, reductions give 0-d arrays)
_METHODS = {"all", "any", "argmax", "argmin", "argpartition", "argsort", "astype", "choose", "clip", "conj",
            "conjugate", "copy", "cumprod", "cumsum", "diagonal", "dot", "fill", "flatten", "max", "mean", "min",
            "partition", "prod", "ptp", "put", "ravel", "reshape", "round", "sort", "squeeze", "std", "sum",
            "swapaxes", "take", "trace", "transpose", "var", "view", "repeat"}  # fmt: skip


def _bool_index(key) -> bool:
    keys = key if isinstance(key, tuple) else (key,)
    return any((isinstance(k, (np.ndarray, ndarray)) and k.dtype == np.bool_) or
               (isinstance(k, list) and k and isinstance(k[0], (bool, np.bool_))) for k in keys)  # fmt: skip


def _index(key, ins):
    """An index with fake arrays unwrapped; NumPy arrays and lists are copied to the device (H2D), as CuPy does."""
    keys = key if isinstance(key, tuple) else (key,)
    out = []
    for k in keys:
        if isinstance(k, ndarray):
            ins.append(k)
            k = k._a
        elif isinstance(k, (np.ndarray, list)):
            record("h2d", "index array")
        out.append(k)
    if _bool_index(key):
        record("sync", "boolean mask indexing")
    return tuple(out) if isinstance(key, tuple) else out[0]


class ndarray:
    """A simulated ``cupy.ndarray``: a NumPy array on a pretend device, with CuPy's strictness about the host."""

    __slots__ = ("_a", "_root", "_base", "_mem", "_dev", "__weakref__")
    __array_priority__ = 100

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        a = np.empty(shape, dtype=dtype, order=order)
        self._a, self._root, self._base, self._dev = a, a, None, CURRENT["device"]
        self._mem = _cuda.allocate(a.nbytes)

    # ---- properties
    shape = property(lambda s: s._a.shape)
    dtype = property(lambda s: s._a.dtype)
    strides = property(lambda s: s._a.strides)
    ndim = property(lambda s: s._a.ndim)
    size = property(lambda s: s._a.size)
    nbytes = property(lambda s: s._a.nbytes)
    itemsize = property(lambda s: s._a.itemsize)
    base = property(lambda s: s._base)
    flags = property(lambda s: _Flags(s))
    data = property(lambda s: _Data(s))
    device = property(lambda s: _cuda.Device(s._dev))
    T = property(lambda s: s._view(s._a.T))
    mT = property(lambda s: s._view(np.swapaxes(s._a, -1, -2)))
    real = property(lambda s: s._view(s._a.real) if s._a.dtype.kind == "c" else s)
    imag = property(lambda s: s._view(s._a.imag))

    @shape.setter
    def shape(self, value):
        self._a.shape = value

    def _view(self, r):
        return _make(r, self._base if self._base is not None else self)

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.data.ptr, False), "version": 3,
                "strides": None if self._a.flags.c_contiguous else self.strides}  # fmt: skip

    def __getattr__(self, name):
        if name in _METHODS:
            meth = getattr(self._a, name)

            def call(*args, **kwargs):
                if name == "repeat" and isinstance(args[0] if args else kwargs.get("repeats"), ndarray):
                    raise ValueError("cupy.ndarray cannot be specified as `repeats` argument.")
                return _call(meth, args, kwargs, owner=self)[0] if args or kwargs else _wrap(meth(), [self])

            return call
        raise AttributeError(f"'cupy.ndarray' object has no attribute {name!r}")

    # ---- host conversions: allowed, but each one waits for the device
    def __array__(self, *args, **kwargs):
        raise TypeError(_IMPLICIT)

    def get(self, stream=None, order="C", out=None, blocking=True):
        record("sync", "get")
        if out is not None:
            out[...] = self._a
            return out
        return np.array(self._a, order=order)

    def set(self, arr, stream=None):
        record("h2d", "set")
        self._a[...] = arr

    def item(self, *args):
        record("sync", "item")
        return self._a.item(*args)

    def tolist(self):
        record("sync", "tolist")
        return self._a.tolist()

    def tobytes(self, order="C"):
        record("sync", "tobytes")
        return self._a.tobytes(order)

    def __float__(self):
        record("sync", "float")
        return float(self._a)

    def __int__(self):
        record("sync", "int")
        return int(self._a)

    def __complex__(self):
        record("sync", "complex")
        return complex(self._a)

    def __bool__(self):
        record("sync", "bool")
        return bool(self._a)

    def __index__(self):
        record("sync", "index")
        return operator.index(self._a)

    def __repr__(self):
        record("sync", "repr")
        return repr(self._a)

    def __str__(self):
        record("sync", "str")
        return str(self._a)

    def __format__(self, spec):
        record("sync", "format")
        return format(self._a.item() if self._a.ndim == 0 else str(self._a), spec)

    def nonzero(self):
        record("sync", "nonzero")
        return _wrap(self._a.nonzero(), [self])

    def __reduce__(self):
        return (_from_host, (self.get(),))

    def __dlpack_device__(self):
        return (2, self._dev)  # kDLCUDA

    def __dlpack__(self, *args, **kwargs):
        raise BufferError("the simulated GPU cannot export DLPack capsules")

    # ---- Python protocols
    __hash__ = None

    def __len__(self):
        if self._a.ndim == 0:
            raise TypeError("len() of unsized object")
        return len(self._a)

    def __iter__(self):
        if self._a.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(len(self._a)))

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

    def __getitem__(self, key):
        ins = [self]
        k = _index(key, ins)
        _check_devices(ins[1:])
        r = self._a[k]
        if isinstance(r, np.generic):  # CuPy gives a 0-d view where NumPy gives a scalar
            r = self._a[(k if isinstance(k, tuple) else (k,)) + (Ellipsis,)]
        return _wrap(r, [self])

    def __setitem__(self, key, value):
        ins = [self]
        k = _index(key, ins)
        if isinstance(value, ndarray):
            ins.append(value)
            value = value._a
        elif isinstance(value, (np.ndarray, list, tuple)):
            record("h2d", "setitem value")
        _check_devices(ins)
        self._a[k] = value

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        uf = Ufunc(ufunc)
        return uf(*inputs, **kwargs) if method == "__call__" else getattr(uf, method)(*inputs, **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        from . import _modules

        mod = _modules.MODULES["cupy"]
        for part in func.__module__.split(".")[1:]:
            if part.startswith("_"):
                continue
            mod = getattr(mod, part)
        return getattr(mod, func.__name__)(*args, **kwargs)


def _from_host(a):
    record("h2d", "unpickle")
    return _make(np.array(a))


def _binop(uf, reflected=False, inplace=False):
    u = Ufunc(uf)

    def op(self, other):
        if not isinstance(other, (ndarray, np.ndarray, *_SCALARS)) and getattr(other, "__array_priority__", 0) > 100:
            return NotImplemented  # e.g. conch's Tensor, which handles the reflected operator
        if inplace:
            return u(self, other, out=self)
        return u(other, self) if reflected else u(self, other)

    return op


for _name, _uf in [("add", np.add), ("sub", np.subtract), ("mul", np.multiply), ("truediv", np.true_divide),
                   ("floordiv", np.floor_divide), ("mod", np.remainder), ("pow", np.power), ("matmul", np.matmul),
                   ("and", np.bitwise_and), ("or", np.bitwise_or), ("xor", np.bitwise_xor),
                   ("lshift", np.left_shift), ("rshift", np.right_shift)]:  # fmt: skip
    setattr(ndarray, f"__{_name}__", _binop(_uf))
    setattr(ndarray, f"__r{_name}__", _binop(_uf, reflected=True))
    setattr(ndarray, f"__i{_name}__", _binop(_uf, inplace=True))
for _name, _uf in [("eq", np.equal), ("ne", np.not_equal), ("lt", np.less), ("le", np.less_equal),
                   ("gt", np.greater), ("ge", np.greater_equal), ("divmod", np.divmod)]:  # fmt: skip
    setattr(ndarray, f"__{_name}__", _binop(_uf))
ndarray.__rdivmod__ = _binop(np.divmod, reflected=True)
for _name, _uf in [("neg", np.negative), ("pos", np.positive), ("abs", np.absolute), ("invert", np.invert)]:
    setattr(ndarray, f"__{_name}__", (lambda u: lambda self: u(self))(Ufunc(_uf)))
ndarray.__module__ = "cupy"
ndarray.__qualname__ = "ndarray"


def is_scalar_like(x) -> bool:
    return isinstance(x, (numbers.Number, np.generic))
