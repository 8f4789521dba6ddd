"""Reductions and scans: sum, mean, var, p-norms, max/min, prod, cumulative sums and products.

Half-precision inputs accumulate in float32 (as PyTorch); ``dim`` is None (all dims), an int or a sorted tuple.
"""

from __future__ import annotations

import numpy as np

from .._backend import xp_of
from ..autograd.function import Op
from ..autograd.grad_mode import _enabled
from .shape import Cat


def _acc_dtype(dtype):
    # accumulate half precision in float32, as PyTorch does
    return np.float32 if dtype.itemsize < 4 and dtype.kind == "f" or dtype.name == "bfloat16" else None


_SUM_ACC: dict = {}  # dtype -> the dtype a sum accumulates in (None: its own), decided once per dtype


def _sum_acc(dtype):
    acc = _SUM_ACC.get(dtype, False)
    if acc is False:
        acc = _acc_dtype(dtype)
        acc = _SUM_ACC[dtype] = np.dtype(np.int64) if dtype.kind in "biu" else None if acc is None else np.dtype(acc)
    return acc


_add_reduce = np.add.reduce


def _sum(a, dim, keepdim, acc):
    # NumPy arrays: the ufunc's reduce directly, without ndarray.sum's Python layer (numpy/_core/_methods.py)
    if type(a) is np.ndarray:
        return _add_reduce(a, dim, acc, None, keepdim)
    return a.sum(axis=dim, keepdims=keepdim, dtype=acc)


def sum_array(a, dim, keepdim):
    """Σ of array ``a`` over ``dim`` (None: all; an int or a sorted tuple): integers and bools to int64, half
    precision accumulated in float32 and rounded once, as PyTorch. Sum's forward, and Tensor.sum's when nothing
    is recorded."""
    acc = _sum_acc(a.dtype)
    if acc is None or acc.kind == "i":  # integers and bools sum to int64, as PyTorch
        return _sum(a, dim, keepdim, acc)
    return _sum(a, dim, keepdim, acc).astype(a.dtype)


def mean_array(a, dim, keepdim, n):
    """The mean of float array ``a`` over ``dim``, ``n`` elements each: NumPy's mean (the sum over the count in
    the accumulation dtype, the same rounding) without its Python layer; an empty mean is NaN (no warning)."""
    acc = _sum_acc(a.dtype)
    s = _sum(a, dim, keepdim, acc)
    out = s / n if n else s * float("nan")
    return out.astype(a.dtype, copy=False) if acc is not None else out


class Sum(Op):
    @staticmethod
    def forward(ctx, a, dim, keepdim):
        ctx.dim, ctx.keepdim, ctx.shape = dim, keepdim, a.shape
        return sum_array(a, dim, keepdim)

    @staticmethod
    def backward(ctx, g):
        if not _enabled[0]:  # not recorded: the gradient spread over the input's shape, one array pass
            return g._wrap_const(_spread(ctx, g._data, None))
        if not ctx.keepdim and ctx.dim is not None:
            g = g.reshape(_keep_shape(ctx.shape, ctx.dim))
        return g.expand(*ctx.shape)


def _spread(ctx, gd, n):
    """A reduction's upstream gradient ``gd`` (divided by ``n`` unless None) written over the input's shape: a
    new contiguous array (no stride-0 view for a ``.grad`` to inherit), as cheap as a view on small tensors."""
    if not ctx.keepdim and ctx.dim is not None:
        gd = gd.reshape(_keep_shape(ctx.shape, ctx.dim))
    xp = xp_of(gd)
    out = xp.empty(ctx.shape, gd.dtype)
    if n is None:
        out[...] = gd
    else:
        xp.divide(gd, n, out=out)  # the same rounding as g / n, then broadcast
    return out


class Mean(Op):
    @staticmethod
    def forward(ctx, a, dim, keepdim):
        ctx.dim, ctx.keepdim, ctx.shape = dim, keepdim, a.shape
        ctx.n = n = count(a.shape, dim)
        return mean_array(a, dim, keepdim, n)

    @staticmethod
    def backward(ctx, g):
        if not _enabled[0]:
            return g._wrap_const(_spread(ctx, g._data, ctx.n))
        if not ctx.keepdim and ctx.dim is not None:
            g = g.reshape(_keep_shape(ctx.shape, ctx.dim))
        return (g / ctx.n).expand(*ctx.shape)


class Var(Op):
    """Variance with ``correction`` (1 = unbiased): d/dx = 2 (x - mean) / (n - correction)."""

    saves = (0,)

    @staticmethod
    def forward(ctx, a, dim, correction, keepdim):
        ctx.dim, ctx.keepdim, ctx.shape, ctx.correction = dim, keepdim, a.shape, correction
        ctx.n = count(a.shape, dim)
        acc = _acc_dtype(a.dtype)
        x = a.astype(acc) if acc is not None else a
        return x.var(axis=dim, ddof=correction, keepdims=keepdim).astype(a.dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        if not ctx.keepdim and ctx.dim is not None:
            g = g.reshape(_keep_shape(ctx.shape, ctx.dim))
        dims = ctx.dim if ctx.dim is not None else tuple(range(a.ndim))
        centred = a - a.mean(dim=dims, keepdim=True)
        dof = ctx.n - ctx.correction
        # no degrees of freedom: the divisor is 0, as in the forward (NaN for one element, as PyTorch)
        return g * centred * (2.0 / dof if dof > 0 else float("inf"))


class StdFromVar(Op):
    """std = sqrt(var). d/dvar = 1 / (2·std), and 0 where std is 0 (every element equal): PyTorch's
    std_backward masks that point, where sqrt's own gradient gives 0·∞ = NaN through the variance."""

    saves = ("out",)

    @staticmethod
    def forward(ctx, v):
        return xp_of(v).sqrt(v)

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        zero = out == 0
        return (g / (out * 2).masked_fill(zero, 1)).masked_fill(zero, 0)


class PNorm(Op):
    """‖x‖_p over ``dim`` (None: all) for finite p != 1; half precision accumulates in float32.

    d/dx = sign(x)·|x|^(p-1) / ‖x‖^(p-1) (x / ‖x‖ for p = 2), and 0 where the norm is 0: PyTorch's
    subgradient, where sqrt(Σx²) composed of ops would give 0·∞ = NaN.
    """

    saves = (0, "out")

    @staticmethod
    def forward(ctx, a, p, dim, keepdim):
        ctx.p, ctx.dim, ctx.keepdim = p, dim, keepdim
        xp = xp_of(a)
        acc = _acc_dtype(a.dtype)
        x = a if acc is None else a.astype(acc)
        if p == 2:
            out = xp.sqrt((x * x).sum(axis=dim, keepdims=keepdim))
        else:
            out = (xp.abs(x) ** p).sum(axis=dim, keepdims=keepdim) ** (1.0 / p)
        return out.astype(a.dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        x, out = ctx.saved_tensors
        if not ctx.keepdim:
            shape = _keep_shape(x.shape, ctx.dim) if ctx.dim is not None else (1,) * x.ndim
            g, out = g.reshape(shape), out.reshape(shape)
        safe = out.masked_fill(out._data == 0, 1)  # where the norm is 0, x is 0 too: the gradient is 0
        if ctx.p == 2:
            return g * x / safe
        return g * x.sign() * x.abs() ** (ctx.p - 1) / safe ** (ctx.p - 1)


class AMax(Op):
    """Max over ``dim``; the gradient is shared evenly between tied maxima (as PyTorch's amax)."""

    saves = (0, "out")

    @staticmethod
    def forward(ctx, a, dim, keepdim, largest=True):
        ctx.dim, ctx.keepdim, ctx.shape = dim, keepdim, a.shape
        return a.max(axis=dim, keepdims=keepdim) if largest else a.min(axis=dim, keepdims=keepdim)

    @staticmethod
    def backward(ctx, g):
        a, out = ctx.saved_tensors
        if not ctx.keepdim and ctx.dim is not None:
            shape = _keep_shape(ctx.shape, ctx.dim)
            g, out = g.reshape(shape), out.reshape(shape)
        hit = a._data == out._data
        xp = xp_of(hit)
        count = hit.sum(axis=ctx.dim, keepdims=True)
        w = (hit / xp.maximum(count, 1)).astype(a.dtype)
        return g * a._wrap_const(w)


def _keep_shape(shape, dim):
    dims = (dim,) if isinstance(dim, int) else dim
    return tuple(1 if i in dims else s for i, s in enumerate(shape))


def count(shape, dim):
    """How many elements a reduction over ``dim`` (None: all) of an array of ``shape`` combines."""
    n = 1
    for d in range(len(shape)) if dim is None else (dim,) if isinstance(dim, int) else dim:
        n *= shape[d]
    return n


class Prod(Op):
    """Π over ``dim`` (all dims for None). d/dx_i = Π_{j≠i} x_j, computed without dividing by a zero."""

    saves = (0,)

    @staticmethod
    def forward(ctx, a, dim, keepdim):
        ctx.dim, ctx.keepdim = dim, keepdim
        return a.prod(axis=dim, keepdims=keepdim)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        dim = ctx.dim
        if not ctx.keepdim:
            g = g.reshape(_keep_shape(x.shape, dim) if dim is not None else (1,) * x.ndim)
        nz = x._data != 0
        xp = xp_of(nz)
        zeros = (~nz).sum(axis=dim, keepdims=True)
        safe = x.masked_fill(~nz, 1)  # a differentiable x with its zeros replaced by ones
        p_safe = Prod.apply(safe, dim=dim, keepdim=True)
        if not zeros.any():
            return g * p_safe / safe
        # one zero in a slice: only that element gets Π(others); two or more: every gradient is zero
        others = (p_safe / safe).masked_fill(~xp.broadcast_to(zeros == 0, x.shape), 0)
        at_zero = p_safe.masked_fill(~((zeros == 1) & ~nz), 0)
        return g * (others.masked_fill(~nz, 0) + at_zero)


class Cumprod(Op):
    """Running product along ``dim``. d out_j / d x_i = Π_{k≤j, k≠i} x_k for j ≥ i."""

    saves = (0, "out")

    @staticmethod
    def forward(ctx, a, dim):
        ctx.dim = dim
        return a.cumprod(axis=dim)

    @staticmethod
    def backward(ctx, g):
        x, out = ctx.saved_tensors
        d = ctx.dim
        if bool((x._data != 0).all()):  # Σ_{j≥i} g_j out_j / x_i: a reversed cumulative sum, divided by x
            return (g * out).flip(d).cumsum(d).flip(d) / x
        # zeros: per position i, the running product with x_i replaced by 1, summed from i on (n passes)
        n = x.shape[d]
        xp = xp_of(x._data)
        pos = xp.arange(n).reshape((n,) + (1,) * (x.ndim - d - 1))
        cols = []
        for i in range(n):
            ones_at_i = Cumprod.apply(x.masked_fill(pos == i, 1), dim=d)
            cols.append((g * ones_at_i).masked_fill(pos < i, 0).sum(d, keepdim=True))
        return Cat.apply(*cols, dim=d)


class Cumsum(Op):
    @staticmethod
    def forward(ctx, a, dim):
        ctx.dim = dim
        return a.cumsum(axis=dim)

    @staticmethod
    def backward(ctx, g):
        # d/dx_j Σ_{i>=j} g_i: a reversed cumulative sum
        return g.flip(ctx.dim).cumsum(ctx.dim).flip(ctx.dim)


def _scan(a, axis, ufunc, steps=False):
    """Inclusive scan of the associative ufunc ``ufunc`` ("maximum", "logaddexp", ...) along ``axis``: NumPy's
    ``accumulate``; elsewhere (CuPy), or with ``steps``, a Hillis-Steele scan: log2(n) whole-array ufunc steps."""
    xp = xp_of(a)
    fn = getattr(xp, ufunc)
    if xp is np and not steps:
        return fn.accumulate(a, axis=axis)
    out, n, s = a.copy(), a.shape[axis], 1
    while s < n:  # after the step with shift s, out[i] folds a[i - 2s + 1 .. i]
        hi, lo = [slice(None)] * a.ndim, [slice(None)] * a.ndim
        hi[axis], lo[axis] = slice(s, None), slice(0, n - s)
        out[tuple(hi)] = fn(out[tuple(hi)], out[tuple(lo)])  # the right side is a new array: old values are read
        s *= 2
    return out


def _cum_extreme_index(a, dim, largest):
    """cummax/cummin's indices along ``dim``: for each i the last j <= i holding the running extreme (ties take the
    later index and a NaN stays the extreme once seen, as PyTorch's ``x >= best || isnan(x)`` update)."""
    xp = xp_of(a)
    best = _scan(a, dim, "maximum" if largest else "minimum")  # NaN propagates through maximum/minimum
    hit = a == best
    if a.dtype.kind == "f" or a.dtype.name == "bfloat16":
        hit |= xp.isnan(a)
    shape = [1] * a.ndim
    shape[dim] = a.shape[dim]
    pos = xp.where(hit, xp.arange(a.shape[dim], dtype=np.int64).reshape(shape), 0)
    return _scan(pos, dim, "maximum")


class LogCumSumExp(Op):
    """out_i = log Σ_{j<=i} exp(x_j) along ``dim`` (a scan of logaddexp: no overflow, no underflow to -inf).

    d out_i / d x_j = exp(x_j - out_i) for j <= i, so dx_j = Σ_{i>=j} g_i exp(x_j - out_i), computed in log space
    for the positive and negative parts of g separately (PyTorch's formula), with logcumsumexp itself, so
    higher derivatives come free.
    """

    saves = (0, "out")

    @staticmethod
    def forward(ctx, a, dim):
        ctx.dim = dim
        acc = _acc_dtype(a.dtype)
        x = a if acc is None else a.astype(acc)
        return _scan(x, dim, "logaddexp").astype(a.dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        a, out = ctx.saved_tensors
        d = ctx.dim
        lowest = float(np.finfo(np.float32 if g.dtype.itemsize < 4 else g.dtype).min)
        gd = g._data
        log_abs = g.abs().masked_fill(gd == 0, 1).log()
        pos, neg = log_abs.masked_fill(~(gd > 0), lowest), log_abs.masked_fill(~(gd < 0), lowest)

        def rev(x):  # Σ_{i>=j} in log space: a logcumsumexp from the end
            return LogCumSumExp.apply(x.flip(d), dim=d).flip(d)

        with np.errstate(over="ignore"):  # lowest + a may round to -inf: exp gives the 0 it stands for
            return (rev(pos - out) + a).exp() - (rev(neg - out) + a).exp()
