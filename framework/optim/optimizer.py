"""Optimizer base class: parameter groups, per-parameter state and state dicts in PyTorch's layout.

A subclass writes only two methods, in the style of MLX's ``init_single``/``apply_single``:

* ``_init_state(p, state, group)`` fills the (empty) state dict of parameter ``p`` on its first step;
* ``_update(p, g, state, group)`` applies one update to the arrays ``p`` (parameter, modified in place)
  and ``g`` (its gradient, read only) using the state tensors in ``state``.

The base class loops over groups and parameters under ``no_grad``, bumps each updated parameter's version
counter (so a graph that saved the old value refuses to backward), and packs and unpacks state dicts with
integer parameter ids exactly as ``torch.optim.Optimizer`` does, so a fresh optimizer that loads a saved
state continues bit for bit.

Two numerical modes, chosen process-wide with :func:`set_bitwise_torch`:

* default (fast): float32/float64 parameters update with plain in-place NumPy ufuncs (``out=``) over
  cache-sized pieces of each parameter, in as few passes as the update allows (``_fast_chunked`` and the
  ``_*_fast`` kernels of each optimizer). The formulas and, where it costs nothing, the operation order are
  PyTorch's; results agree with ``torch.optim`` to a few ulps per step.
* bitwise (``set_bitwise_torch(True)``): the helpers below reproduce PyTorch's CPU pointwise kernels rounding
  for rounding (``_fma``, ``_lerp_``, ...; fused multiply-adds emulated through float64), so each update reads
  like the torch.optim source it mirrors and matches it bit for bit (about 5x slower per operation).
  Parameters of other dtypes (float16, bfloat16) always take this path: it computes in float32 as torch does.

Either mode is deterministic, so a fresh optimizer that loads a state dict continues bit for bit.

Where Numba is on (``conch.kernels._jit.enabled()``), float32/float64 NumPy parameters update with one compiled
kernel call each (``kernels/_numba/optim.py``, through ``_fast_update`` and ``_compiled_exact``), large ones split
over the CPU thread pool: in the fast mode the same formulas in one pass (a few ulps from the NumPy fast path, as
a*b + c may fuse), in the bitwise mode the NumPy reference path's bits exactly. Non-contiguous parameters,
float16/bfloat16 and a replaced ``_sqrt`` keep the NumPy paths.

Example::

    opt = conch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for x, y in loader:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    conch.save(opt.state_dict(), "opt.safetensors")
"""

from __future__ import annotations

import copy
import warnings
from collections import defaultdict
from itertools import chain

import numpy as np

from .._backend import on_gpu, xp_of
from ..autograd.grad_mode import enable_grad, no_grad
from ..creation import from_dlpack
from ..kernels import _jit, _threads
from ..tensor import Tensor

__all__ = ["Optimizer", "required", "set_bitwise_torch", "is_bitwise_torch"]


class _RequiredParameter:
    """Marks a hyperparameter that every parameter group must give (``SGD``'s ``lr`` in older PyTorch)."""

    def __repr__(self):
        return "<required parameter>"


required = _RequiredParameter()

_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)

_BITWISE = [False]  # set_bitwise_torch's flag (a list so the hot path reads it without a global statement)


def set_bitwise_torch(enabled):
    """Make every conch optimizer reproduce ``torch.optim``'s CPU updates bit for bit (``True``), or use the
    fast float32 path (``False``, the default).

    The bitwise mode emulates PyTorch's fused multiply-adds through float64 temporaries: about 5x slower per
    operation, for runs that must match a PyTorch run exactly (PyTorch's CPU ``sqrt``, a SIMD approximation
    within 1 ulp, is the one operation it does not reproduce). The fast mode applies the same formulas with
    plain float32 operations and agrees with PyTorch to a few ulps per step. The flag is read at every
    ``step()``, so it may be switched between steps. Example::

        conch.optim.set_bitwise_torch(True)
        try:
            opt.step()
        finally:
            conch.optim.set_bitwise_torch(False)
    """
    if not isinstance(enabled, (bool, np.bool_)):
        raise TypeError(f"set_bitwise_torch expects a bool, but got {type(enabled).__name__}")
    _BITWISE[0] = bool(enabled)


def is_bitwise_torch():
    """Whether optimizers currently reproduce ``torch.optim`` bit for bit (see :func:`set_bitwise_torch`)."""
    return _BITWISE[0]


# ------------------------------------------------------------------------------------------------------------
# Array helpers: PyTorch's CPU kernels, rounding included.
#
# torch's vectorised CPU kernels compute add-with-alpha, lerp and addcmul with a fused multiply-add
# (vec::fmadd: one rounding), while mul, div, sqrt, addcdiv are separately rounded float32 operations. NumPy
# has no fma, so _fma forms the exact float32 x float32 product in float64 (48 significant bits fit in 53),
# adds in float64 and rounds to float32: the same result as a true fma except in the rare case where the
# float64 sum lands exactly on a float32 rounding tie. Python scalars are rounded to float32 first, as torch
# converts a Scalar to the tensor's (op-math) type. Every helper writes into ``out``, which may alias an input.
# ------------------------------------------------------------------------------------------------------------


def _opmath(dtype):
    """The dtype torch computes in for a tensor of ``dtype``: float64 for float64, float32 otherwise."""
    return _F64 if dtype == _F64 else _F32


class _Workspace:
    """Scratch arrays reused across steps (one per slot, dtype and device), grown to the largest parameter.

    Allocating a fresh multi-megabyte temporary per operation costs page faults on every step; reusing
    these buffers keeps the reference path's cost at its arithmetic.
    """

    def __init__(self):
        self._bufs = {}
        self._views = {}

    def get(self, slot, like, dtype):
        xp = xp_of(like)
        dev = None if xp is np else like.device.id
        key = (slot, np.dtype(dtype).str, dev)
        buf = self._bufs.get(key)
        if buf is None or buf.size < like.size:
            buf = xp.empty(max(like.size, 1), dtype=dtype)
            self._bufs[key] = buf
        return buf[: like.size].reshape(like.shape)

    def flat(self, slot, n, dtype):
        """A 1-d NumPy scratch array of ``n`` elements (the fast path's per-piece temporaries)."""
        key = (slot, dtype.str, None)
        buf = self._bufs.get(key)
        if buf is None or buf.size < n:
            buf = self._bufs[key] = np.empty(n, dtype=dtype)
        return buf if buf.size == n else buf[:n]

    def temps(self, shape, dtype, k, size):
        """``k`` NumPy scratch arrays of ``shape``: views of ``k`` shared buffers of ``size >= prod(shape)``
        elements, cached per shape so that a small parameter's update pays one dict lookup for them."""
        key = (shape, dtype, k)
        views = self._views.get(key)
        if views is None:
            n = int(np.prod(shape, dtype=np.int64))
            views = self._views[key] = tuple(self.flat(f"fast{i}", size, dtype)[:n].reshape(shape) for i in range(k))
        return views

    def clear(self):
        self._bufs.clear()
        self._views.clear()


def _round_into(out, w):
    """Store float64 ``w`` into ``out``; low-precision outputs round through float32 as torch's opmath does."""
    xp = xp_of(out)
    if out.dtype == _F32 or out.dtype == _F64:
        xp.copyto(out, w, casting="unsafe")
    else:
        xp.copyto(out, w.astype(_F32), casting="unsafe")


def _fma(a, b, c, out, ws):
    """``out = a * b + c`` with one rounding (torch's ``c.add(a, alpha=b)``, ``lerp``, ``addcmul``)."""
    xp = xp_of(out)
    w = ws.get("fma", out, _F64)
    xp.multiply(a, b, out=w, dtype=_F64)
    xp.add(w, c, out=w, dtype=_F64)
    _round_into(out, w)
    return out


def _lerp_(start, end, weight, ws):
    """``start.lerp_(end, weight)`` for a Python-float weight, in place on ``start``.

    torch: ``start + w * (end - start)`` when ``|w| < 0.5``, else ``end - (1 - w) * (end - start)``, each
    as one fma with the weight (and ``w - 1``) rounded to the op-math type.
    """
    xp = xp_of(start)
    opm = _opmath(start.dtype)
    w = opm.type(weight)
    small = abs(w) < 0.5
    coeff = w if small else w - opm.type(1)
    d = ws.get("lerp", start, opm)
    xp.subtract(end, start, out=d, dtype=opm)
    return _fma(coeff, d, start if small else end, start, ws)


def _sqrt(a, out, dtype):
    """``out = sqrt(a)``, correctly rounded. (PyTorch's CPU sqrt is a SIMD approximation within 1 ulp that
    differs from the exact one in about 0.5% of float32 elements: the one place where the reference path is
    not bit-identical. Tests swap this function for torch's to check everything else bit for bit.)"""
    return xp_of(out).sqrt(a, out=out, dtype=dtype)


_EXACT_SQRT = _sqrt  # the correctly rounded one, which the compiled bitwise kernels compute too


def _addcmul_(t, a, b, value, out, ws):
    """``out = t.addcmul(a, b, value=value)``: ``t + (value * a) * b`` with the last two steps fused."""
    xp = xp_of(out)
    opm = _opmath(out.dtype)
    if value == 1:
        return _fma(a, b, t, out, ws)
    va = ws.get("addcmul", a, opm)
    xp.multiply(a, opm.type(value), out=va, dtype=opm)
    return _fma(va, b, t, out, ws)


def _addcdiv_(t, a, b, value, ws):
    """``t.addcdiv_(a, b, value=value)`` in place: ``t + (value * a) / b``, each step rounded."""
    xp = xp_of(t)
    opm = _opmath(t.dtype)
    q = ws.get("addcdiv", t, opm)
    if value == 1:
        xp.divide(a, b, out=q, dtype=opm)
    else:
        xp.multiply(a, opm.type(value), out=q, dtype=opm)
        xp.divide(q, b, out=q, dtype=opm)
    xp.add(t, q, out=t, dtype=opm)
    return t


def _grad_for_update(p, g, maximize, weight_decay, ws):
    """The gradient an update uses: ``-g`` when maximising, plus ``weight_decay * p`` (L2), never ``g`` itself.

    Mirrors torch's ``grad = -grad if maximize`` and ``grad = grad.add(param, alpha=weight_decay)``; the
    result lives in a workspace buffer so the user's ``.grad`` is left untouched.
    """
    if maximize:
        xp = xp_of(g)
        neg = ws.get("neg", g, g.dtype)
        xp.negative(g, out=neg)
        g = neg
    if weight_decay != 0:
        out = ws.get("wdgrad", g, g.dtype)
        _fma(p, _opmath(p.dtype).type(weight_decay), g, out, ws)
        g = out
    return g


_CHUNK = 16384  # elements per piece of a large update: its temporaries then stay in the L2 cache


def _chunked(fn, arrays, ws, *args, **kwargs):
    """Run the elementwise update ``fn(*arrays, ws, *args, **kwargs)`` over cache-sized pieces of the arrays.

    ``arrays[0]`` is the parameter, ``arrays[1]`` its gradient (only read), the rest state (``None`` allowed).
    An elementwise update gives the same bits piece by piece; on NumPy the pieces are about 1.5x faster
    than whole-array passes, whose float64 temporaries spill to main memory. CuPy arrays, small arrays and
    non-contiguous parameters or state run in one call.
    """
    p = arrays[0]
    n = p.size
    if (
        n <= 2 * _CHUNK
        or not isinstance(p, np.ndarray)
        or any(a is not None and not a.flags.c_contiguous for i, a in enumerate(arrays) if i != 1)
    ):
        return fn(*arrays, ws, *args, **kwargs)
    flat = [None if a is None else (np.ascontiguousarray(a) if i == 1 else a).reshape(-1) for i, a in enumerate(arrays)]
    for s in range(0, n, _CHUNK):
        fn(*[None if a is None else a[s : s + _CHUNK] for a in flat], ws, *args, **kwargs)


# ------------------------------------------------------------------------------------------------------------
# The fast path: plain in-place ufuncs in the parameter's dtype.
# ------------------------------------------------------------------------------------------------------------

_FAST_CHUNK_BYTES = 256 * 1024  # per array and piece: parameter, gradient, state and 3 temporaries fit in L2


def _fast(p):
    """Whether array ``p`` updates on the fast path: float32/float64 and the bitwise mode off."""
    return not _BITWISE[0] and (p.dtype == _F32 or p.dtype == _F64)


def _fast_chunked(fn, arrays, ws, n_temps, coeffs):
    """Run the fast kernel ``fn(xp, *arrays, *temps, coeffs)`` over cache-sized pieces of the arrays.

    ``arrays[0]`` is the parameter, ``arrays[1]`` its gradient (only read, any layout), the rest state
    (``None`` allowed); ``temps`` are ``n_temps`` scratch arrays in the parameter's dtype. ``coeffs`` holds the
    kernel's scalars: floats as the parameter's scalar type (see ``_coeffs``). Each piece runs
    every pass of the update while its data sits in the L2 cache, instead of streaming whole arrays through
    memory once per pass. Elementwise kernels give the same bits whatever the pieces, so a resumed run
    stays bitwise identical. CuPy arrays and non-contiguous parameters or state run in one call.
    """
    p = arrays[0]
    dt = p.dtype
    n = p.size
    if not isinstance(p, np.ndarray):
        return fn(xp_of(p), *arrays, *[ws.get(f"whole{i}", p, dt) for i in range(n_temps)], coeffs)
    chunk = _FAST_CHUNK_BYTES // dt.itemsize
    if n <= chunk:
        return fn(np, *arrays, *ws.temps(p.shape, dt, n_temps, chunk), coeffs)
    if not all(a is None or a.flags.c_contiguous for i, a in enumerate(arrays) if i != 1):
        return fn(np, *arrays, *[ws.get(f"whole{i}", p, dt) for i in range(n_temps)], coeffs)
    g = arrays[1]
    flat = [a if a is None else a.reshape(-1) for a in arrays]
    flat[1] = (g if g.flags.c_contiguous else np.ascontiguousarray(g)).reshape(-1)
    temps = [ws.flat(f"fast{i}", chunk, dt) for i in range(n_temps)]
    for s in range(0, n, chunk):
        e = s + chunk
        if e > n:
            e = n
            temps = [t[: e - s] for t in temps]
        fn(np, *[a if a is None else a[s:e] for a in flat], *temps, coeffs)


# ------------------------------------------------------------------------------------------------------------
# The compiled fast path: one Numba kernel call per parameter (kernels/_numba/optim.py), same formulas.
# ------------------------------------------------------------------------------------------------------------

#: Element-passes one element of a compiled update stands for when weighed against the pool's threshold
#: (_threads.MIN_PARALLEL = 2**21): parameters from 2**18 elements up are split. An AdamW update takes ~0.6 ns per
#: float32 element in cache; on 2 cores splitting cost more than it saved up to ~2**17 elements (loaded machine,
#: 1.2x faster at 2**18; the sweep is in docs/benchmarks.md, issue 16).
_COMPILED_PASSES = 8


def _compiled(p, arrays):
    """The compiled kernels (``conch.kernels._numba.optim``) when the fast-mode update of NumPy array ``p``
    can take them (Numba on, float32/float64, C-contiguous state, gradient of ``p``'s dtype), else ``None``."""
    if not _jit.enabled() or type(p) is not np.ndarray or arrays[1].dtype != p.dtype:
        return None
    for a in arrays[2:]:
        if a is not None and not a.flags.c_contiguous:
            return None
    if not p.flags.c_contiguous:
        return None
    k = _KERNELS[0]
    if k is None:
        k = _KERNELS[0] = _jit.family("optim")
    return k


def _compiled_exact(p, arrays):
    """The compiled kernels for the bitwise-mode update of NumPy array ``p`` (``*_exact``: the rounding of the
    NumPy reference path, bit for bit), or ``None``: float16/bfloat16 and the cases :func:`_compiled` refuses keep
    that path, and so does any run where ``_sqrt`` was replaced (tests put torch's approximate sqrt there)."""
    if _sqrt is not _EXACT_SQRT:
        return None
    return _compiled_float(p, arrays)


def _compiled_float(p, arrays):
    """:func:`_compiled` for float32/float64 parameters only (others compute in float32 on the NumPy path)."""
    if not (p.dtype == _F32 or p.dtype == _F64):
        return None
    return _compiled(p, arrays)


_KERNELS = [None]  # conch.kernels._numba.optim once imported (family() costs an import lookup per call)


def _run_compiled(kernel, arrays, c, flags):
    """``kernel(*flat arrays, c, flags)`` over 1-D views of ``arrays`` (parameter, gradient, state; a missing
    state array is replaced by the parameter, which the kernel then never reads), split over the thread pool
    for large parameters: each element's update is the same whatever the split, so are the bits."""
    p = arrays[0]
    n = p.size
    g = arrays[1]
    if not g.flags.c_contiguous:
        g = np.ascontiguousarray(g)
    pf = p.reshape(-1)
    flat = [pf, g.reshape(-1)]
    for a in arrays[2:]:
        flat.append(pf if a is None else a.reshape(-1))
    if n * _COMPILED_PASSES < _threads.MIN_PARALLEL:
        kernel(*flat, c, flags)
        return

    def body(a, b):
        kernel(*[x[a:b] for x in flat], c, flags)

    _threads.parallel_for(n, body, work=n * _COMPILED_PASSES)


def _fast_update(name, fast_fn, arrays, ws, n_temps, coeffs):
    """One fast-mode update of ``arrays`` (parameter, gradient, state): the compiled kernel ``name`` of
    kernels/_numba/optim.py where :func:`_compiled` allows, else the NumPy kernel ``fast_fn`` through
    :func:`_fast_chunked`. ``coeffs``: ``fast_fn``'s scalars, then the compiled kernel's ``(c, flags)`` pair."""
    k = _compiled(arrays[0], arrays)
    if k is not None:
        c, flags = coeffs[-1]
        _run_compiled(getattr(k, name), arrays, c, flags)
    else:
        _fast_chunked(fast_fn, arrays, ws, n_temps, coeffs[:-1])


def _compiled_coeffs(p, *values):
    """``values`` as a 1-D array of ``p``'s dtype (each rounded once, as ``_coeffs`` rounds the NumPy path's)."""
    return np.array([p.dtype.type(v) for v in values], dtype=p.dtype)


def _coeffs(p, *values):
    """``values`` with every float as ``p``'s scalar type (bools kept): a float64 scalar (say an ``lr`` given
    as ``np.float64``) would otherwise promote a float32 ufunc to float64, 7x slower and differently rounded."""
    t = p.dtype.type
    return tuple(v if isinstance(v, (bool, np.bool_)) else t(v) for v in values)


def _l2_grad_fast(xp, p, g, neg, weight_decay, out):
    """``out = (-g if neg else g) + weight_decay * p`` (torch: ``grad.add(param, alpha=weight_decay)``)."""
    xp.multiply(p, weight_decay, out=out)
    (xp.subtract if neg else xp.add)(out, g, out=out)
    return out


def _lerp_fast(xp, start, end, weight, neg, t):
    """``start.lerp_(-end if neg else end, weight)`` in place with torch's two formulas; ``t`` is scratch.

    ``|w| < 0.5``: ``start + w * (end - start)``, else ``end - (1 - w) * (end - start)`` (each product and sum
    rounded separately here). ``neg`` folds a negated ``end`` (``maximize``) into the coefficients: exact,
    as negation is.
    """
    w = start.dtype.type(weight)
    small = abs(w) < 0.5
    if not neg:
        xp.subtract(end, start, out=t)
        if small:
            xp.multiply(t, w, out=t)
            xp.add(start, t, out=start)
        else:
            xp.multiply(t, w - 1, out=t)
            xp.add(end, t, out=start)
    else:  # t = end + start = -((-end) - start)
        xp.add(end, start, out=t)
        if small:
            xp.multiply(t, -w, out=t)
            xp.add(start, t, out=start)
        else:
            xp.multiply(t, 1 - w, out=t)
            xp.subtract(t, end, out=start)
    return start


def _scalar_state(value=0.0):
    """A 0-d float32 CPU tensor, as torch keeps ``state["step"]``."""
    return Tensor._make(np.array(value, dtype=np.float32))


_FUSED = []
_FUSED_ERROR = [None]  # why the import failed, for fused=True's error


def _fused_kernels():
    """``conch.kernels.optim`` (multi-tensor Adam/SGD kernels), or ``None`` when it cannot be imported."""
    if not _FUSED:
        try:
            from conch.kernels import optim as k
        except ImportError as e:
            k, _FUSED_ERROR[0] = None, f"{type(e).__name__}: {e}"
        _FUSED.append(k)
    return _FUSED[0]


_FUSABLE = ("float16", "bfloat16", "float32", "float64")


def _check_fusable(name, params):
    """Raise when ``fused=True`` cannot be honoured for ``params`` (those with a gradient), naming the reason.

    The multi-tensor kernel updates flat buffers in place in one launch on one device: every parameter and
    gradient must be a float array (float16/bfloat16/float32/float64), C-contiguous, all on one device
    (NumPy arrays take the kernels' interpreter or NumPy path, CuPy arrays one GPU).
    """
    devices = {}
    for i, p in enumerate(params):
        g = p.grad
        for what, t in (("parameter", p), ("gradient", g)):
            if t.dtype.name not in _FUSABLE:
                raise TypeError(
                    f"{name}(fused=True): the fused kernel takes float16/bfloat16/float32/float64 tensors, but the "
                    f"{what} of parameter {i} (shape {tuple(p.shape)}) has dtype {t.dtype}; pass fused=False"
                )
            devices.setdefault(str(t.device), (what, i))
        if not p._data.flags.c_contiguous:
            st = tuple(s // p._data.itemsize for s in p._data.strides)
            raise ValueError(
                f"{name}(fused=True): parameter {i} (shape {tuple(p.shape)}, strides {st}) is not contiguous, and "
                "the fused kernel updates flat buffers in place; pass fused=False or make it contiguous"
            )
    if len(devices) > 1:
        where = ", ".join(f"{w} {i} on {d}" for d, (w, i) in devices.items())
        raise RuntimeError(
            f"{name}(fused=True): one fused launch runs on one device, but the tensors are on {len(devices)} "
            f"devices ({where}); put every parameter and gradient of a group on one device or pass fused=False"
        )


# ------------------------------------------------------------------------------------------------------------


class Optimizer:
    """Base class of every optimizer (PyTorch's ``torch.optim.Optimizer`` interface).

    ``params`` is an iterable of tensors, of ``(name, tensor)`` pairs, or of dicts (parameter groups) each
    with a ``"params"`` entry and optional per-group hyperparameters; ``defaults`` fills in the rest.

    Attributes: ``param_groups`` (list of dicts), ``state`` (parameter -> dict of state tensors),
    ``defaults``.
    """

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        self.state = defaultdict(dict)
        self.param_groups = []
        self._ws = _Workspace()
        self._coef_cache = {}  # fast-path scalars per (group, step count, dtype, ...), rebuilt for every group update
        self._opt_called = False
        if isinstance(params, Tensor):
            raise TypeError(
                "params argument given to the optimizer should be an iterable of Tensors or dicts, but got a Tensor"
            )
        if isinstance(params, dict):
            raise TypeError(
                "params argument given to the optimizer should be an iterable of Tensors or dicts, but got a dict "
                "(use [dict] for one parameter group, or model.parameters())"
            )
        if isinstance(params, (set, frozenset)):
            raise TypeError(
                "optimizer parameters need to be organized in ordered collections, but the ordering of tensors "
                "in sets will change between runs. Please use a list instead."
            )
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for g in groups:
            self.add_param_group(dict(g))

    # -------------------------------------------------------------------------------- groups
    def add_param_group(self, param_group):
        """Add a group of parameters (a dict with ``"params"``; missing hyperparameters come from defaults)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError("param_group must have a 'params' entry")
        params = param_group["params"]
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, set):
            raise TypeError(
                "optimizer parameters need to be organized in ordered collections, but the ordering of tensors "
                "in sets will change between runs. Please use a list instead."
            )
        else:
            params = list(params)
        names, tensors = [], []
        for p in params:
            if isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str):
                names.append(p[0])
                p = p[1]
            tensors.append(p)
        if names:
            if len(names) != len(tensors):
                raise ValueError("all optimizer params should be with/without names. Some param names are missing")
            param_group["param_names"] = names
        for p in tensors:
            if not isinstance(p, Tensor):
                raise TypeError(f"optimizer can only optimize Tensors, but one of the params is {type(p).__name__}")
            if p.grad_fn is not None:
                raise ValueError("can't optimize a non-leaf Tensor")
        param_group["params"] = tensors
        for name, default in self.defaults.items():
            if default is required and name not in param_group:
                raise ValueError(f"parameter group didn't specify a value of required optimization parameter {name}")
            param_group.setdefault(name, default)
        ids = [id(p) for p in tensors]
        if len(ids) != len(set(ids)):
            warnings.warn(
                "optimizer contains a parameter group with duplicate parameters; in future, this will cause an "
                "error; see github.com/pytorch/pytorch/issues/40967 for more information",
                stacklevel=3,
            )
        seen = set()
        for g in self.param_groups:
            seen.update(id(p) for p in g["params"])
            if ("param_names" in g) != ("param_names" in param_group):
                raise ValueError("all optimizer param groups should be with/without names")
        if not seen.isdisjoint(ids):
            raise ValueError("some parameters appear in more than one parameter group")
        self._check_group(param_group)
        self.param_groups.append(param_group)

    def _check_group(self, group):
        """Validate a group's hyperparameters (subclasses raise ValueError naming the bad value)."""

    # -------------------------------------------------------------------------------- stepping
    def zero_grad(self, set_to_none=True):
        """Reset every parameter's gradient: to ``None`` (default, frees memory) or to zeros in place."""
        if set_to_none:
            for group in self.param_groups:
                for p in group["params"]:
                    p.grad = None
            return
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.grad_fn is not None:
                    p.grad = p.grad.detach()
                else:
                    p.grad.requires_grad = False
                p.grad._data.fill(0)

    def step(self, closure=None):
        """Update every parameter that has a gradient; ``closure`` (re-evaluates and returns the loss) is optional.

        Returns the closure's loss, or ``None``.
        """
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        with no_grad():
            for group in self.param_groups:
                self._step_group(group)
        self._opt_called = True
        return loss

    def _step_group(self, group):
        """One update of every parameter of ``group`` that has a gradient (the per-parameter path)."""
        self._coef_cache = {}  # the hyperparameters may have changed since the last step (a scheduler)
        for p in group["params"]:
            g = p.grad
            if g is None:
                continue
            if g._data.shape != p._data.shape:
                raise RuntimeError(f"gradient of shape {g.shape} does not match its parameter of shape {p.shape}")
            state = self.state.get(p)
            if not state:
                state = {}
                self._init_state(p, state, group)
            self._update(p._data, g._data, state, group)
            if state:  # optimizers without state (plain SGD) keep none, as in PyTorch's state_dict
                self.state[p] = state
            p._version[0] += 1

    @staticmethod
    def _all_cupy_with_grad(group):
        """Whether every parameter of ``group`` that has a gradient lives on a GPU (the default ``fused`` test)."""
        return all(on_gpu(p._data) for p in group["params"] if p.grad is not None)

    def _fused_plan(self, group):
        """``(kernels, params)`` when ``group`` takes the multi-tensor GPU kernel, else ``None`` (per-parameter path).

        ``fused=None`` means: fused when every parameter with a gradient is a CuPy array. Non-contiguous
        parameters fall back too, since the kernel walks flat buffers.
        """
        fused = group.get("fused")
        if fused is None:
            k = _fused_kernels() if self._all_cupy_with_grad(group) else None
            if k is None:  # NumPy parameters, or no kernels: skip the parameter scan
                return None
            params = self._params_with_grad(group)
            if not all(p._data.flags.c_contiguous for p in params):
                return None
            return k, params
        if not fused:
            return None
        # fused=True is honoured or refused, never quietly replaced by the per-parameter path (PyTorch raises too)
        name = type(self).__name__
        k = _fused_kernels()
        if k is None:
            raise RuntimeError(
                f"{name}(fused=True): the multi-tensor kernels (conch.kernels.optim) could not be imported "
                f"({_FUSED_ERROR[0]}); pass fused=False or fused=None to use the per-parameter path"
            )
        params = self._params_with_grad(group)
        _check_fusable(name, params)
        return k, params

    def _params_with_grad(self, group):
        out = []
        for p in group["params"]:
            if p.grad is not None:
                if p.grad.shape != p.shape:
                    raise RuntimeError(
                        f"gradient of shape {p.grad.shape} does not match its parameter of shape {p.shape}"
                    )
                out.append(p)
        return out

    def _init_state(self, p, state, group):
        """Fill ``state`` for parameter ``p`` before its first update (subclasses)."""

    def _update(self, p, g, state, group):
        """Apply one update to array ``p`` in place from gradient array ``g`` (subclasses)."""
        raise NotImplementedError

    # -------------------------------------------------------------------------------- state dicts
    def state_dict(self):
        """``{"state": {id: {...}}, "param_groups": [{..., "params": [ids]}]}`` with integer ids in group order.

        As in PyTorch, the state tensors are the optimizer's own (not copies): save or clone them before
        stepping again if a snapshot is needed.
        """
        mapping = {}
        start = 0
        groups = []
        for g in self.param_groups:
            packed = {k: v for k, v in g.items() if k != "params"}
            for i, p in enumerate(g["params"], start):
                mapping.setdefault(id(p), i)
            packed["params"] = [mapping[id(p)] for p in g["params"]]
            start += len(packed["params"])
            groups.append(packed)
        state = {}
        for k, v in self.state.items():
            state[mapping[id(k)] if isinstance(k, Tensor) else k] = v
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Load a state dict made by :meth:`state_dict` (this or a same-shaped optimizer; ids may be str).

        State tensors are copied onto each parameter's device (and dtype, except ``step``), so the loaded
        optimizer never shares arrays with ``state_dict``.
        """
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError("optimizer state_dict must be a dict with 'state' and 'param_groups' entries")
        groups = self.param_groups
        saved_groups = copy.deepcopy(state_dict["param_groups"])
        if len(groups) != len(saved_groups):
            raise ValueError(
                f"loaded state dict has a different number of parameter groups ({len(saved_groups)}) than the "
                f"optimizer ({len(groups)})"
            )
        for i, (g, sg) in enumerate(zip(groups, saved_groups)):
            if len(g["params"]) != len(sg["params"]):
                raise ValueError(
                    f"loaded state dict contains a parameter group (index {i}, {len(sg['params'])} parameters) "
                    f"that doesn't match the size of optimizer's group ({len(g['params'])} parameters)"
                )
        id_map = {}
        for saved_id, p in zip(
            chain.from_iterable(g["params"] for g in saved_groups), chain.from_iterable(g["params"] for g in groups)
        ):
            id_map[_norm_id(saved_id)] = p
        state = defaultdict(dict)
        for k, v in state_dict["state"].items():
            p = id_map.get(_norm_id(k))
            if p is None:
                state[k] = copy.deepcopy(v)
                continue
            if not isinstance(v, dict):
                raise ValueError(f"state of parameter {k} must be a dict, got {type(v).__name__}")
            state[p] = {key: _cast_state(p, key, val) for key, val in v.items()}
        new_groups = []
        for g, sg in zip(groups, saved_groups):
            sg["params"] = g["params"]
            if "param_names" in g and "param_names" not in sg:
                sg["param_names"] = g["param_names"]
            if isinstance(sg.get("betas"), list):
                sg["betas"] = tuple(sg["betas"])
            new_groups.append(sg)
        self.state = state
        self.param_groups = new_groups

    def __repr__(self):
        lines = [self.__class__.__name__ + " ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(g):
                if k != "params":
                    lines.append(f"    {k}: {g[k]}")
        lines.append(")")
        return "\n".join(lines)


def _norm_id(k):
    if isinstance(k, str) and k.lstrip("-").isdigit():
        return int(k)
    return k


def _cast_state(p, key, value):
    """A copy of a loaded state value placed like torch does: tensors on p's device, float ones in p's dtype."""
    if not isinstance(value, Tensor) and (isinstance(value, np.ndarray) or hasattr(value, "__dlpack__")):
        value = from_dlpack(value.detach() if hasattr(value, "detach") else value)  # NumPy, PyTorch, CuPy...
    if isinstance(value, Tensor):
        if key == "step":
            return Tensor._make(np.array(value.cpu()._data, dtype=np.float32, copy=True))
        arr = value._data
        dev = p.device
        out = value.to(device=dev, dtype=p.dtype if p.is_floating_point() and value.is_floating_point() else None)
        if out._data is arr:
            out = Tensor._make(arr.copy())
        return Tensor._make(out._data)
    if key == "step" and isinstance(value, (int, float)):
        return _scalar_state(float(value))
    if isinstance(value, dict):
        return {k: _cast_state(p, k, v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cast_state(p, None, v) for v in value)
    return copy.deepcopy(value)
