"""Making tensors: from data, filled, ranges, random numbers, and the generators behind them."""

from __future__ import annotations

import contextlib
import numbers
import sys

import numpy as np

from conch.kernels import _cupy
from conch.kernels._cupy import is_cupy_array

from . import _dtype as D
from ._backend import CPU, asarray_on, device, device_of, namespace, require_cupy
from .tensor import Tensor, _shape_arg, _to_array

# ---------------------------------------------------------------- random state

_state = {"np": np.random.default_rng(0), "seed": 0, "philox": [0, 0], "cupy": [0, 0]}

# The live GPU generators: device index -> ((seed, epoch), cupy Generator). Building a CuPy Philox generator
# initialises its cuRAND states (a kernel and an allocation), so one is built per device and seed and then
# advanced by every draw, not rebuilt per draw. ``_gpu_epoch`` is bumped whenever the GPU state is set or
# captured (manual_seed, set_rng_state, get_rng_state): the next draw then builds a generator keyed on the
# state's (seed, counter) again, so restoring a captured state replays the same numbers.
_gpu_gens: dict = {}
_gpu_epoch = [0]


def manual_seed(seed: int):
    """Seed every generator: NumPy's (CPU tensors), the GPU counter generator, and dropout's counter."""
    seed = int(seed)
    _state["np"] = np.random.default_rng(seed)
    _state["seed"] = seed
    _state["philox"] = [seed & 0x7FFFFFFF, 0]
    _state["cupy"] = [seed, 0]
    _gpu_epoch[0] += 1
    if "cupy" in sys.modules:  # also CuPy's own global generator, for code that calls cupy.random directly
        cp = _cupy.get_cupy()
        if cp is not None:
            cp.random.seed(seed)
    return seed


seed = manual_seed


def cuda_manual_seed(seed: int) -> None:
    """``conch.cuda.manual_seed``: seed the GPU generators (random tensors on a GPU, and the dropout counter, which
    CPU dropout shares). Without a GPU it does nothing, as PyTorch's, so scripts can call it unconditionally."""
    if not _cupy.is_available():
        return
    seed = int(seed)
    _state["philox"] = [seed & 0x7FFFFFFF, 0]
    _state["cupy"] = [seed, 0]
    _gpu_epoch[0] += 1


def initial_seed() -> int:
    return _state["seed"]


def get_rng_state():
    """The whole RNG state as a plain dict (JSON-able): NumPy's generator, the GPU and dropout counters.

    GPU random numbers come from a Philox generator keyed on ``(seed, counter)``, so the GPU state is
    two integers and a state saved on a GPU machine restores on a CPU-only one. ``counter`` counts GPU draws;
    one generator serves the draws that follow a capture (or a seed), so capturing the state makes the next
    GPU draw start a generator at the current ``(seed, counter)``: the numbers a restore replays.
    """
    _gpu_epoch[0] += 1
    return {
        "np": _state["np"].bit_generator.state,
        "philox": list(_state["philox"]),
        "seed": _state["seed"],
        "cupy": list(_state["cupy"]),
    }


def set_rng_state(st):
    bg = np.random.PCG64()
    bg.state = st["np"]
    _state["np"] = np.random.Generator(bg)
    _state["philox"] = list(st["philox"])
    _state["seed"] = st.get("seed", 0)
    _state["cupy"] = list(st.get("cupy", [_state["seed"], 0]))
    _gpu_epoch[0] += 1


def philox_seed_offset(n: int):
    """Reserve ``n`` counter values for a counter-based kernel (dropout); returns ``(seed, offset)``."""
    s, off = _state["philox"]
    _state["philox"][1] = off + int(n)
    return s, off


def _generator(dev):
    """The generator for one draw on ``dev``; for a GPU, call it (and draw) inside ``_on(dev)``."""
    if dev.type == "cpu":
        return _state["np"]
    st = _state["cupy"]
    st[1] += 1
    tag = (st[0], _gpu_epoch[0])
    hit = _gpu_gens.get(dev.index)
    if hit is not None and hit[0] == tag:
        return hit[1]  # advanced by every draw since it was built: no cuRAND re-initialisation
    cp = require_cupy()
    gen = cp.random.Generator(cp.random.Philox4x3210(seed=st[0] * 1000003 + st[1]))
    _gpu_gens[dev.index] = (tag, gen)
    return gen


def _on(dev):
    """A context that makes ``dev`` the current GPU (nothing on the CPU): CuPy allocates there."""
    return contextlib.nullcontext() if dev.type == "cpu" else require_cupy().cuda.Device(dev.index)


def _draw(dev, generator, fn):
    """``fn(g)`` with ``g`` the given generator or the device's own, its result placed on ``dev``."""
    with _on(dev):
        arr = fn(generator or _generator(dev))
    if isinstance(arr, np.generic):
        arr = np.asarray(arr)
    if device_of(arr) != dev:  # a user's NumPy generator for a GPU tensor (or a CuPy one for the CPU)
        arr = asarray_on(arr, arr.dtype, dev)
    return arr


# ---------------------------------------------------------------- helpers


def _device(d):
    return CPU if d is None else device(d)


def _finish(arr, requires_grad):
    t = Tensor._make(arr)
    if requires_grad:
        t.requires_grad_(True)
    return t


def _float_dtype(dtype):
    d = D.get_default_dtype() if dtype is None else D.as_dtype(dtype)
    return d


# ---------------------------------------------------------------- factories


def tensor(data, dtype=None, device=None, requires_grad=False):
    """A new tensor holding a copy of ``data`` (nested lists, scalars, NumPy/CuPy arrays, Tensors)."""
    arr = _to_array(data, dtype, device)
    if (isinstance(data, np.ndarray) or is_cupy_array(data)) and arr is data:
        arr = arr.copy()
    if isinstance(data, Tensor) and arr is data._data:
        arr = arr.copy()
    return _finish(arr, requires_grad)


def as_tensor(data, dtype=None, device=None):
    if isinstance(data, Tensor) and dtype is None and device is None:
        return data
    return _finish(_to_array(data, dtype, device), False)


def from_numpy(a: np.ndarray) -> Tensor:
    """A CPU tensor sharing memory with NumPy array ``a``."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"expected np.ndarray (got {type(a).__name__})")
    D.note_dtype(a.dtype)  # a bfloat16 array: conch's dtype tables list bfloat16 from now on (lazy ml_dtypes)
    return Tensor._make(a)


def from_dlpack(x) -> Tensor:
    """Zero-copy import of any DLPack producer (CuPy, PyTorch, JAX, NumPy)."""
    if isinstance(x, Tensor):
        return x
    dev_type, _ = x.__dlpack_device__()
    if int(dev_type) == 1:  # kDLCPU
        return Tensor._make(np.from_dlpack(x))
    cp = require_cupy()
    return Tensor._make(cp.from_dlpack(x))


def _filled(shape, value, dtype, dev, requires_grad):
    dev = _device(dev)
    xp = namespace(dev)
    shape = tuple(int(s) for s in shape)
    if dev.type == "cpu":
        arr = xp.full(shape, value, dtype=dtype)
    else:
        with xp.cuda.Device(dev.index):
            arr = xp.full(shape, value, dtype=dtype)
    return _finish(arr, requires_grad)


def _shape(shape, what="zeros"):
    """A factory's ``*size`` as a tuple of ints: TypeError for a non-integer, RuntimeError for a negative size."""
    shape = _shape_arg(shape, what, "size")
    for s in shape:
        if s < 0:
            raise RuntimeError(f"Trying to create tensor with negative dimension {s}: {list(shape)}")
    return shape


def zeros(*shape, dtype=None, device=None, requires_grad=False):
    return _filled(_shape(shape), 0, _float_dtype(dtype), device, requires_grad)


def ones(*shape, dtype=None, device=None, requires_grad=False):
    return _filled(_shape(shape, "ones"), 1, _float_dtype(dtype), device, requires_grad)


def empty(*shape, dtype=None, device=None, requires_grad=False):
    return zeros(*shape, dtype=dtype, device=device, requires_grad=requires_grad)


def full(shape, value, dtype=None, device=None, requires_grad=False):
    if isinstance(shape, int):
        shape = (shape,)
    if dtype is None:
        dtype = D.bool_ if isinstance(value, bool) else D.int64 if isinstance(value, int) else D.get_default_dtype()
    return _filled(_shape((shape,), "full"), value, D.as_dtype(dtype), device, requires_grad)


def zeros_like(t, dtype=None, device=None, requires_grad=False):
    return _filled(t.shape, 0, D.as_dtype(dtype or t.dtype), device or t.device, requires_grad)


def ones_like(t, dtype=None, device=None, requires_grad=False):
    return _filled(t.shape, 1, D.as_dtype(dtype or t.dtype), device or t.device, requires_grad)


def empty_like(t, dtype=None, device=None, requires_grad=False):
    return zeros_like(t, dtype, device, requires_grad)


def full_like(t, value, dtype=None, device=None, requires_grad=False):
    return _filled(t.shape, value, D.as_dtype(dtype or t.dtype), device or t.device, requires_grad)


def arange(start, end=None, step=1, dtype=None, device=None, requires_grad=False):
    if end is None:
        start, end = 0, start
    if dtype is None:
        ints = all(isinstance(v, numbers.Integral) for v in (start, end, step))
        dtype = D.int64 if ints else D.get_default_dtype()
    if step == 0:
        raise ValueError("arange: step must be nonzero")
    dev = _device(device)
    arr = np.arange(start, end, step, dtype=np.float64 if D.as_dtype(dtype) in D.FLOATING else None)
    return _finish(asarray_on(arr, D.as_dtype(dtype), dev), requires_grad)


def _steps(steps, what):
    """``steps`` as PyTorch takes it: an integer (not a bool, not a float), at least 0."""
    if isinstance(steps, Tensor) and steps.ndim == 0 and steps.dtype.kind in "iu":
        steps = int(steps.item())
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
        raise TypeError(f"{what}(): argument 'steps' must be int, not {type(steps).__name__}")
    if steps < 0:
        raise RuntimeError(f"{what}(): number of steps must be non-negative, got {steps}")
    return int(steps)


def linspace(start, end, steps, dtype=None, device=None, requires_grad=False):
    """``steps`` evenly spaced values from ``start`` to ``end`` inclusive: start + k·(end-start)/(steps-1)."""
    arr = np.linspace(start, end, _steps(steps, "linspace"))
    return _finish(asarray_on(arr, _float_dtype(dtype), _device(device)), requires_grad)


def logspace(start, end, steps, base=10.0, dtype=None, device=None, requires_grad=False):
    """``base ** linspace(start, end, steps)``: ``logspace(0, 2, 3)`` is [1, 10, 100]."""
    arr = np.power(float(base), np.linspace(start, end, _steps(steps, "logspace")))
    return _finish(asarray_on(arr, _float_dtype(dtype), _device(device)), requires_grad)


def eye(n, m=None, dtype=None, device=None, requires_grad=False):
    return _finish(asarray_on(np.eye(n, m), _float_dtype(dtype), _device(device)), requires_grad)


def rand(*shape, dtype=None, device=None, requires_grad=False, generator=None):
    dev = _device(device)
    dt = _float_dtype(dtype)
    draw_dt = np.float32 if dt != D.float64 else np.float64
    arr = _draw(dev, generator, lambda g: g.random(_shape(shape, "rand"), dtype=draw_dt).astype(dt, copy=False))
    return _finish(arr, requires_grad)


def randn(*shape, dtype=None, device=None, requires_grad=False, generator=None):
    dev = _device(device)
    dt = _float_dtype(dtype)
    draw_dt = np.float32 if dt != D.float64 else np.float64
    arr = _draw(
        dev, generator, lambda g: g.standard_normal(_shape(shape, "randn"), dtype=draw_dt).astype(dt, copy=False)
    )
    return _finish(arr, requires_grad)


def randint(low, high=None, size=None, dtype=None, device=None, generator=None):
    if size is None and isinstance(high, (tuple, list)):  # randint(high, size), as torch.randint
        low, high, size = 0, low, high
    if high is None:
        low, high = 0, low
    if size is None:
        raise TypeError("randint() missing required argument 'size' (a tuple)")
    dev = _device(device)
    size = tuple(size) if not isinstance(size, int) else (size,)
    dt = D.as_dtype(dtype or D.int64)
    arr = _draw(dev, generator, lambda g: g.integers(low, high, size=size).astype(dt, copy=False))
    return _finish(arr, False)


def randperm(n, dtype=None, device=None, generator=None):
    g = generator or _state["np"]
    arr = g.permutation(int(n)).astype(D.as_dtype(dtype or D.int64))
    return _finish(asarray_on(arr, arr.dtype, _device(device)), False)


def rand_like(t, dtype=None, device=None, requires_grad=False):
    return rand(*t.shape, dtype=dtype or t.dtype, device=device or t.device, requires_grad=requires_grad)


def randn_like(t, dtype=None, device=None, requires_grad=False):
    return randn(*t.shape, dtype=dtype or t.dtype, device=device or t.device, requires_grad=requires_grad)


def randint_like(t, low, high=None, dtype=None, device=None):
    return randint(low, high, t.shape, dtype=dtype or t.dtype, device=device or t.device)


def normal(mean, std, size, dtype=None, device=None, generator=None):
    return randn(*size, dtype=dtype, device=device, generator=generator) * std + mean
