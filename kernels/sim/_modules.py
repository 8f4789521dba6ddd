"""The fake modules (``cupy``, ``cupy.cuda``, ``cupy.random``, ``cupyx``...) and the kernels CuPy would compile."""

from __future__ import annotations

import importlib.machinery
import types

import numpy as np

from . import _core, _cuda
from ._core import Func, Ufunc, _make, ndarray

MODULES: dict = {}
_SENTINEL = object()


def _forwarding(name: str, source, extra: dict | None = None, missing=frozenset()):
    """A module ``name`` whose attributes come from ``source`` (NumPy or SciPy), made to take fake arrays."""
    m = types.ModuleType(name, f"Simulated {name} (NumPy-backed; see conch.kernels.sim)")
    m.__dict__.update(extra or {})

    def __getattr__(attr):
        if attr.startswith("__") or attr in missing:
            raise AttributeError(f"module {name!r} has no attribute {attr!r}")
        obj = getattr(source, attr, _SENTINEL)
        if obj is _SENTINEL:
            raise AttributeError(f"module {name!r} has no attribute {attr!r}")
        if isinstance(obj, np.ufunc):
            obj = Ufunc(obj)
        elif isinstance(obj, types.ModuleType):
            obj = _forwarding(f"{name}.{attr}", obj)
        elif callable(obj) and not isinstance(obj, type):
            obj = Func(obj, attr)
        setattr(m, attr, obj)
        return obj

    m.__getattr__ = __getattr__
    return m


# ---------------------------------------------------------------- ElementwiseKernel emulations


def _erf(x):
    from scipy.special import erf

    return erf(x)


def _k_erf(x, y=None):
    r = _erf(x._a.astype(np.float32) if x.dtype.itemsize < 4 else x._a).astype(x.dtype)
    return _out(r, y)


def _k_unscale_and_check(inv, g, found):
    v = g._a * g.dtype.type(inv)
    g._a[...] = v
    if not np.isfinite(v).all():
        found._a.reshape(-1)[0] = 1.0


def _gelu(v):
    return 0.5 * v * (1.0 + _erf(v * np.float32(0.7071067811865476)))


def _k_bias_gelu(z, bias, y=None):
    v = z._a.astype(np.float32) + bias._a.astype(np.float32)
    return _out(_gelu(v).astype(np.result_type(z.dtype, bias.dtype)), y)


def _k_dz_gelu(dout, z, dz=None):
    v = z._a.astype(np.float32)
    phi = np.exp(-0.5 * v * v) * np.float32(0.3989422804014327)
    g = 0.5 * (1.0 + _erf(v * np.float32(0.7071067811865476))) + v * phi
    return _out((dout._a.astype(np.float32) * g).astype(np.result_type(dout.dtype, z.dtype)), dz)


def _out(r, out):
    if out is None:
        return _make(np.ascontiguousarray(r))
    out._a[...] = r
    return out


_KERNELS = {"conch_erf": _k_erf, "conch_unscale_and_check": _k_unscale_and_check,
            "bench_bias_gelu": _k_bias_gelu, "bench_dz_gelu": _k_dz_gelu}  # fmt: skip


class ElementwiseKernel:
    """CuPy's user kernel, emulated by name: the simulator cannot compile CUDA C, so each kernel conch defines
    has a NumPy twin in ``_KERNELS`` with the same in-place semantics; an unknown name raises on the call
    (CuPy also compiles on the first call)."""

    def __init__(self, in_params, out_params, operation, name="kernel", **kwargs):
        self.in_params, self.out_params, self.operation, self.name = in_params, out_params, operation, name

    def __call__(self, *args, **kwargs):
        fn = _KERNELS.get(self.name)
        if fn is None:
            raise NotImplementedError(
                f"ElementwiseKernel {self.name!r}: the simulated GPU cannot compile CUDA C, and conch.kernels.sim "
                "has no NumPy emulation of this kernel (add one to kernels/sim/_modules.py::_KERNELS)"
            )
        for a in args:
            if isinstance(a, np.ndarray):
                raise TypeError(f"Unsupported type {type(a)}")
        _core._check_devices([a for a in args if isinstance(a, ndarray)])
        return fn(*args, **kwargs)


# ---------------------------------------------------------------- random


class _Gen:
    """A CuPy-style generator: NumPy's, with its results placed on the current device."""

    def __init__(self, gen):
        self._g = gen

    def __getattr__(self, name):
        meth = getattr(self._g, name)
        return lambda *args, **kwargs: _core._call(meth, args, kwargs)[0]


class Philox4x3210:
    """The counter-based bit generator CuPy offers, backed by NumPy's Philox."""

    def __init__(self, seed=None, counter=0):
        self._bg = np.random.Philox(seed)
        if counter:
            self._bg.advance(int(counter))


class XORWOW(Philox4x3210):
    pass


def Generator(bit_generator):  # noqa: N802 (CuPy's class name)
    return _Gen(np.random.Generator(bit_generator._bg))


def default_rng(seed=None):
    return Generator(Philox4x3210(seed))


_GLOBAL = [np.random.RandomState(0)]


def _random_module():
    def seed(s=None):
        # CuPy takes any seed below 2**64; NumPy's legacy generator only 32 bits: fold (a simulation needs the
        # same seed to give the same numbers, not CuPy's numbers)
        _GLOBAL[0] = np.random.RandomState(None if s is None else int(s) % 2**32)

    def legacy(attr):
        return lambda *args, **kwargs: _core._call(getattr(_GLOBAL[0], attr), args, kwargs)[0]

    m = types.ModuleType("cupy.random", "Simulated cupy.random")
    m.seed, m.Generator, m.Philox4x3210, m.XORWOW, m.default_rng = seed, Generator, Philox4x3210, XORWOW, default_rng
    m.get_random_state = lambda: _Gen(_GLOBAL[0])
    m.RandomState = lambda seed=None: _Gen(np.random.RandomState(seed))
    for attr in ("rand", "randn", "randint", "random", "random_sample", "uniform", "normal", "standard_normal",
                 "permutation", "shuffle", "choice", "exponential", "binomial", "poisson", "bernoulli"):  # fmt: skip
        if hasattr(np.random.RandomState, attr):
            setattr(m, attr, legacy(attr))
    return m


# ---------------------------------------------------------------- cupyx


_SCATTER_ADD_DTYPES = ("int32", "float16", "float32", "float64", "uint32", "uint64")


def scatter_add(a, slices, value):
    """``a[slices] += value`` with repeated indices accumulating (atomicAdd types only, as CuPy)."""
    if not isinstance(a, ndarray):
        raise TypeError(f"Unsupported type {type(a)}")
    if a.dtype.name not in _SCATTER_ADD_DTYPES:
        raise TypeError("scatter_add only supports int32, float16, float32, float64, uint32, uint64, as data type")
    ins = [a]
    idx = _core._index(slices, ins)
    v = _core._unwrap(value, ins)
    _core._check_devices(ins)
    np.add.at(a._a, idx, v)


def _linalg_core():
    m = types.ModuleType("cupy._core._routines_linalg")
    m.COMPUTE_TYPE_TBD, m.COMPUTE_TYPE_DEFAULT, m.COMPUTE_TYPE_PEDANTIC = 0, 1, 2
    for i, t in enumerate(("FP16", "FP32", "FP64", "BF16", "TF32")):
        setattr(m, f"COMPUTE_TYPE_{t}", 3 + i)
    types_ = {}
    m.get_compute_type = lambda dtype: types_.get(np.dtype(dtype), m.COMPUTE_TYPE_DEFAULT)
    m.set_compute_type = lambda dtype, ct: types_.__setitem__(np.dtype(dtype), ct)
    return m


def build() -> dict:
    """Every fake module by its import name."""
    import scipy.special

    from . import _nccl

    cuda = _cuda.module()
    nccl = types.ModuleType("cupy.cuda.nccl", "Simulated cupy.cuda.nccl (over mpi4py; see kernels/sim/_nccl.py)")
    nccl.__dict__.update({k: v for k, v in vars(_nccl).items() if not k.startswith("__")})
    cuda.nccl = nccl
    random = _random_module()
    rl = _linalg_core()
    core = types.ModuleType("cupy._core")
    core._routines_linalg, core.ndarray, core.ElementwiseKernel = rl, ndarray, ElementwiseKernel
    cupy = _forwarding("cupy", np, {
        "ndarray": ndarray, "__version__": "14.2.0 (simulated)", "cuda": cuda, "random": random, "_core": core,
        "ElementwiseKernel": ElementwiseKernel, "asnumpy": _core.asnumpy, "get_array_module": _core.get_array_module,
        "from_dlpack": _core.from_dlpack, "asarray": _core._to_device("asarray"), "array": _core._to_device("array"),
        "asanyarray": _core._to_device("asanyarray"), "get_default_memory_pool": lambda: _cuda._POOL,
        "get_default_pinned_memory_pool": _cuda.get_default_pinned_memory_pool, "is_available": lambda: True,
        "dtype": np.dtype, "newaxis": None, "__simulated__": True,
    }, missing=_core._MISSING)  # fmt: skip
    special = _forwarding("cupyx.scipy.special", scipy.special)
    scipy_ = types.ModuleType("cupyx.scipy")
    scipy_.special = special
    cupyx = types.ModuleType("cupyx", "Simulated cupyx")
    cupyx.scatter_add, cupyx.scipy = scatter_add, scipy_
    # pinned host buffers are NumPy arrays in CuPy too (page-locked memory behind them)
    cupyx.empty_pinned = lambda shape, dtype=np.float64, order="C": np.empty(shape, dtype, order)
    cupyx.zeros_pinned = lambda shape, dtype=np.float64, order="C": np.zeros(shape, dtype, order)
    cupyx.empty_like_pinned = lambda a, dtype=None: np.empty_like(a, dtype)
    cupyx.zeros_like_pinned = lambda a, dtype=None: np.zeros_like(a, dtype)
    cupyx.__version__ = cupy.__version__
    mods = {"cupy": cupy, "cupy.cuda": cuda, "cupy.cuda.runtime": cuda.runtime, "cupy.random": random,
            "cupy._core": core, "cupy._core._routines_linalg": rl, "cupyx": cupyx, "cupyx.scipy": scipy_,
            "cupyx.scipy.special": special, "cupy.cuda.nccl": nccl}  # fmt: skip
    for name, v in mods.items():
        if isinstance(v, types.ModuleType):
            v.__path__ = []  # a package, so ``import cupy.cuda`` finds the submodule in sys.modules
            # importlib.util.find_spec("cupy") reads it (conch.backends.cuda.is_built does)
            v.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    MODULES.clear()
    MODULES.update(mods)
    return mods
