"""Every built-in differentiable op: forward on arrays and backward on Tensors, side by side.

Backward formulas use Tensor operations, so with ``create_graph=True`` they are recorded too
and give higher derivatives. Broadcasting is undone by the engine, not here: a backward may
return a gradient of the broadcast shape and the engine sums it down to the input's shape.
"""

from __future__ import annotations

import numpy as np

from ._backend import xp_of
from .autograd import function as _fn
from .autograd.function import Op
from .autograd.grad_mode import _enabled


def _arr(a):
    """Wrap a backward's array result. A backward that is not being recorded (grad mode off, the
    usual case) may compute on arrays directly: the same maths as its Tensor formula, minus one
    Op dispatch per intermediate, which is most of the per-op cost on small tensors."""
    return _fn.Tensor._make(a)


# ---------------------------------------------------------------- arithmetic


class Add(Op):
    @staticmethod
    def forward(ctx, a, b):
        return a + b

    @staticmethod
    def backward(ctx, g):
        return g, g


class Sub(Op):
    @staticmethod
    def forward(ctx, a, b):
        return a - b

    @staticmethod
    def backward(ctx, g):
        return g, -g


class Mul(Op):
    saves = (0, 1)

    @staticmethod
    def forward(ctx, a, b):
        return a * b

    @staticmethod
    def backward(ctx, g):
        n = ctx.needs_input_grad
        if not _enabled[0]:  # backward not recorded: plain array maths (see _arr)
            gd = g._data
            return (_arr(gd * ctx.saved_tensor(1)._data) if n[0] else None), (
                _arr(gd * ctx.saved_tensor(0)._data) if n[1] else None
            )
        return (g * ctx.saved_tensor(1) if n[0] else None), (g * ctx.saved_tensor(0) if n[1] else None)


class Div(Op):
    saves = (0, 1)

    @staticmethod
    def forward(ctx, a, b):
        return a / b

    @staticmethod
    def backward(ctx, g):
        # d(a/b)/da = 1/b ; d(a/b)/db = -a/b²
        a, b = ctx.saved_tensors
        n = ctx.needs_input_grad
        return (g / b if n[0] else None), (-g * a / (b * b) if n[1] else None)


class AddScalar(Op):
    """a + s for a Python number s (no 0-d tensor is made for s)."""

    @staticmethod
    def forward(ctx, a, s):
        return a + s

    @staticmethod
    def backward(ctx, g):
        return g


class MulScalar(Op):
    """a · s for a Python number s: d/da = s."""

    @staticmethod
    def forward(ctx, a, s):
        ctx.s = s
        return a * s

    @staticmethod
    def backward(ctx, g):
        if not _enabled[0]:
            return _arr(g._data * ctx.s)
        return g * ctx.s


class DivScalar(Op):
    """a / s for a Python number s: d/da = 1/s."""

    @staticmethod
    def forward(ctx, a, s):
        ctx.s = s
        return a / s

    @staticmethod
    def backward(ctx, g):
        return g / ctx.s


class RSubScalar(Op):
    """s - a for a Python number s: d/da = -1."""

    @staticmethod
    def forward(ctx, a, s):
        return s - a

    @staticmethod
    def backward(ctx, g):
        return -g


class Neg(Op):
    @staticmethod
    def forward(ctx, a):
        return -a

    @staticmethod
    def backward(ctx, g):
        return -g


class PowScalar(Op):
    """a ** p for a Python number p: d/da = p a^(p-1)."""

    saves = (0,)

    @staticmethod
    def forward(ctx, a, p):
        ctx.p = p
        # NumPy's float pow is ~50x slower than a multiply: the common small powers are spelled out
        if p == 2:
            return a * a
        if p == 3:
            return a * a * a
        if p == 0.5:
            return xp_of(a).sqrt(a)
        return (a**p).astype(a.dtype, copy=False)  # NumPy widens bfloat16 ** float to float32

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        p = ctx.p
        if p == 0:
            return g * 0
        if p == 1:
            return g
        if p == 2:
            return g * a * 2
        return g * p * a ** (p - 1)


class Pow(Op):
    """a ** b for tensors: d/da = b a^(b-1), d/db = a^b log a."""

    saves = (0, 1, "out")

    @staticmethod
    def forward(ctx, a, b):
        return a**b

    @staticmethod
    def backward(ctx, g):
        a, b, out = ctx.saved_tensors
        n = ctx.needs_input_grad
        ga = gb = None
        if n[0]:
            # b == 0: a^0 is constant 1, so the gradient is 0 even at a == 0 (where b·a^(b-1) is 0·inf)
            # (the exponent is 0 there too, so that no 0·inf appears in a second derivative either)
            b0 = b._data == 0
            ga = (g * b * a ** (b - 1).masked_fill(b0, 0)).masked_fill(b0, 0)
        if n[1]:
            # log a is nan for a < 0 and -inf at 0; at a == 0 the derivative a^b log a is 0 for b >= 0
            # (PyTorch's convention) and stays inf·(-inf) = -inf for b < 0
            zero = (a._data == 0) & (b._data >= 0)
            # (log of 1, not of 0, at those entries: no 0/0 in a second derivative)
            ab = a if a.shape == zero.shape else a.expand(*zero.shape)
            gb = (g * out * ab.masked_fill(zero, 1).log()).masked_fill(zero, 0)
        return ga, gb


class RPowScalar(Op):
    """s ** a for a Python number s: d/da = s^a log s."""

    saves = ("out",)

    @staticmethod
    def forward(ctx, a, s):
        # log 0 = -inf; PyTorch's convention: 0^a has derivative 0 where a >= 0 (only a < 0 gives -inf)
        ctx.logs = float(np.log(s)) if s > 0 else float("-inf") if s == 0 else float("nan")
        ctx.zero = a >= 0 if s == 0 else None
        return xp_of(a).asarray(s, dtype=a.dtype) ** a

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        if ctx.zero is not None:
            return (g * out * ctx.logs).masked_fill(ctx.zero, 0)
        return g * out * ctx.logs


# ---------------------------------------------------------------- unary maths


class Exp(Op):
    saves = ("out",)

    @staticmethod
    def forward(ctx, a):
        return xp_of(a).exp(a)

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        if not _enabled[0]:
            return _arr(g._data * out._data)
        return g * out


class Log(Op):
    saves = (0,)

    @staticmethod
    def forward(ctx, a):
        return xp_of(a).log(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return g / a


class Sqrt(Op):
    saves = ("out",)

    @staticmethod
    def forward(ctx, a):
        return xp_of(a).sqrt(a)

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return g / (out * 2)


class Rsqrt(Op):
    saves = ("out",)

    @staticmethod
    def forward(ctx, a):
        xp = xp_of(a)
        return (1 / xp.sqrt(a)).astype(a.dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        # d/da a^(-1/2) = -1/2 a^(-3/2) = -1/2 out³
        (out,) = ctx.saved_tensors
        return g * out * out * out * -0.5


class Abs(Op):
    saves = (0,)

    @staticmethod
    def forward(ctx, a):
        return abs(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return g * a.sign()


class Sin(Op):
    saves = (0,)

    @staticmethod
    def forward(ctx, a):
        return xp_of(a).sin(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return g * a.cos()


class Cos(Op):
    saves = (0,)

    @staticmethod
    def forward(ctx, a):
        return xp_of(a).cos(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return -g * a.sin()


class Tanh(Op):
    saves = ("out",)

    @staticmethod
    def forward(ctx, a):
        return xp_of(a).tanh(a)

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        if not _enabled[0]:  # d tanh = 1 - tanh²
            y = out._data
            return _arr(g._data * (1 - y * y))
        return g * (1 - out * out)


class Sigmoid(Op):
    saves = ("out",)

    @staticmethod
    def forward(ctx, a):
        xp = xp_of(a)
        # split by sign so exp never overflows: σ(x) = 1/(1+e^-x) = e^x/(1+e^x)
        e = xp.exp(-abs(a))
        return xp.where(a >= 0, 1 / (1 + e), e / (1 + e)).astype(a.dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        if not _enabled[0]:  # dσ = σ(1 - σ)
            y = out._data
            return _arr(g._data * y * (1 - y))
        return g * out * (1 - out)


class Relu(Op):
    @staticmethod
    def forward(ctx, a):
        ctx.mask = a > 0
        # maximum, not a * mask: keeps NaN (as PyTorch) and gives +0.0, never -0.0, for negative inputs
        return xp_of(a).maximum(a, a.dtype.type(0))

    @staticmethod
    def backward(ctx, g):
        return g.masked_fill(~ctx.mask, 0)


class Clamp(Op):
    @staticmethod
    def forward(ctx, a, lo, hi):
        xp = xp_of(a)
        out = a
        if lo is not None:
            out = xp.maximum(out, xp.asarray(lo, dtype=a.dtype))
        if hi is not None:
            out = xp.minimum(out, xp.asarray(hi, dtype=a.dtype))
        # gradient passes where the input is inside [lo, hi] (inclusive, as in PyTorch); none when lo > hi
        ctx.mask = out == a
        if lo is not None and hi is not None and lo > hi:
            ctx.mask = xp.zeros(a.shape, dtype=bool)
        return out

    @staticmethod
    def backward(ctx, g):
        return g.masked_fill(~ctx.mask, 0)


class ClampTensor(Op):
    """clamp with tensor bounds: out = min(max(a, lo), hi), broadcasting; ``has`` is "lo", "hi" or "lohi".

    Gradients as PyTorch: a where lo <= a <= hi (ties go to a), lo where a < lo (and lo < hi),
    hi where a > hi (or hi < lo, when hi wins everywhere).
    """

    @staticmethod
    def forward(ctx, a, *bounds, has):
        xp = xp_of(a)
        lo = bounds[0] if has[0:2] == "lo" else None
        hi = bounds[-1] if has.endswith("hi") else None
        out, ctx.masks = a, []
        if lo is not None:
            out = xp.maximum(out, lo)
        if hi is not None:
            out = xp.minimum(out, hi)
        if lo is not None and hi is not None:
            ctx.masks = [(a >= lo) & (a <= hi), (a < lo) & (lo < hi), (a > hi) | (hi < lo)]
        elif lo is not None:
            ctx.masks = [a >= lo, a < lo]
        else:
            ctx.masks = [a <= hi, a > hi]
        return out

    @staticmethod
    def backward(ctx, g):
        return tuple(g.masked_fill(~m, 0) if need else None for m, need in zip(ctx.masks, ctx.needs_input_grad))


class Cast(Op):
    @staticmethod
    def forward(ctx, a, dtype):
        return a.astype(dtype)

    @staticmethod
    def backward(ctx, g):
        return g  # the engine casts back to the input dtype


class Clone(Op):
    @staticmethod
    def forward(ctx, a):
        return a.copy()

    @staticmethod
    def backward(ctx, g):
        return g


class Contiguous(Op):
    @staticmethod
    def forward(ctx, a):
        return xp_of(a).ascontiguousarray(a)

    @staticmethod
    def backward(ctx, g):
        return g


# ---------------------------------------------------------------- reductions


def _acc_dtype(dtype):
    # accumulate half precision in float32, as PyTorch does
    return np.float32 if dtype.itemsize < 4 and dtype.kind == "f" or dtype.name == "bfloat16" else None


class Sum(Op):
    @staticmethod
    def forward(ctx, a, dim, keepdim):
        ctx.dim, ctx.keepdim, ctx.shape = dim, keepdim, a.shape
        if a.dtype.kind in "biu":
            return a.sum(axis=dim, keepdims=keepdim, dtype=np.int64)
        acc = _acc_dtype(a.dtype)
        if acc is not None:
            return a.sum(axis=dim, keepdims=keepdim, dtype=acc).astype(a.dtype)
        return a.sum(axis=dim, keepdims=keepdim)

    @staticmethod
    def backward(ctx, g):
        if not ctx.keepdim and ctx.dim is not None:
            g = g.reshape(_keep_shape(ctx.shape, ctx.dim))
        return g.expand(*ctx.shape)


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


class Mean(Op):
    @staticmethod
    def forward(ctx, a, dim, keepdim):
        ctx.dim, ctx.keepdim, ctx.shape = dim, keepdim, a.shape
        ctx.n = _count(a.shape, dim)
        acc = _acc_dtype(a.dtype)
        if acc is not None:
            return a.mean(axis=dim, keepdims=keepdim, dtype=acc).astype(a.dtype)
        return a.mean(axis=dim, keepdims=keepdim)

    @staticmethod
    def backward(ctx, g):
        if not ctx.keepdim and ctx.dim is not None:
            g = g.reshape(_keep_shape(ctx.shape, ctx.dim))
        return (g / ctx.n).expand(*ctx.shape)


class Var(Op):
    """Variance with ``correction`` (1 = unbiased): d/dx = 2 (x - mean) / (n - correction)."""

    saves = (0,)

    @staticmethod
    def forward(ctx, a, dim, correction, keepdim):
        ctx.dim, ctx.keepdim, ctx.shape, ctx.correction = dim, keepdim, a.shape, correction
        ctx.n = _count(a.shape, dim)
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


class TakeAlongDim(Op):
    """``a`` at one index per slice along ``dim`` (``idx`` has size 1 there): max(dim)/min(dim)'s values.

    The gradient goes to the selected element only: dx = onehot(idx) · dy.
    """

    @staticmethod
    def forward(ctx, a, idx, dim, keepdim):
        ctx.idx, ctx.dim, ctx.keepdim, ctx.shape = idx, dim, keepdim, a.shape
        out = xp_of(a).take_along_axis(a, idx, axis=dim)
        return out if keepdim else out.squeeze(dim)

    @staticmethod
    def backward(ctx, g):
        if not ctx.keepdim:
            g = g.unsqueeze(ctx.dim)
        xp = xp_of(ctx.idx)
        n = ctx.shape[ctx.dim]
        pos = xp.arange(n).reshape((n,) + (1,) * (len(ctx.shape) - ctx.dim - 1))
        return g * g._wrap_const((pos == ctx.idx).astype(g.dtype))


def _keep_shape(shape, dim):
    dims = (dim,) if isinstance(dim, int) else dim
    return tuple(1 if i in dims else s for i, s in enumerate(shape))


def _count(shape, dim):
    if dim is None:
        return int(np.prod(shape, dtype=np.int64))
    dims = (dim,) if isinstance(dim, int) else dim
    return int(np.prod([shape[d] for d in dims], dtype=np.int64))


# ---------------------------------------------------------------- shape


class Reshape(Op):
    @staticmethod
    def forward(ctx, a, shape):
        ctx.shape = a.shape
        return a.reshape(shape)

    @staticmethod
    def backward(ctx, g):
        return g.reshape(ctx.shape)


class Expand(Op):
    @staticmethod
    def forward(ctx, a, shape):
        return xp_of(a).broadcast_to(a, shape)

    @staticmethod
    def backward(ctx, g):
        return g  # the engine sums the broadcast axes away


class Permute(Op):
    @staticmethod
    def forward(ctx, a, perm):
        ctx.inv = tuple(np.argsort(perm))
        return a.transpose(perm)

    @staticmethod
    def backward(ctx, g):
        return g.permute(*ctx.inv)


class GetItem(Op):
    @staticmethod
    def forward(ctx, a, idx):
        ctx.idx, ctx.shape = idx, a.shape
        out = a[idx]
        return out

    @staticmethod
    def backward(ctx, g):
        return IndexAdd.apply(g, shape=ctx.shape, idx=ctx.idx)


class IndexAdd(Op):
    """Scatter-add ``g`` into zeros of ``shape`` at ``idx`` (repeated indices accumulate)."""

    @staticmethod
    def forward(ctx, g, shape, idx):
        ctx.idx = idx
        xp = xp_of(g)
        out = xp.zeros(shape, dtype=g.dtype)
        if _is_basic(idx):
            out[idx] = g  # basic indexing never repeats an element
        elif xp is not np:
            _cupy_add_at(out, idx, g)
        elif isinstance(idx, np.ndarray) and idx.dtype.kind in "iu" and 0 < idx.size <= _SEGMENT_SUM_MAX and g.ndim:
            _segment_sum_rows(out, idx, g)
        else:
            np.add.at(out, idx, g)
        return out

    @staticmethod
    def backward(ctx, g):
        return GetItem.apply(g, idx=ctx.idx)


#: Up to this many index entries the rows are summed by sort + reduceat; np.add.at (about 1 µs per
#: index, unbuffered) is left for the larger cases, where the gather of sorted rows stops paying off.
_SEGMENT_SUM_MAX = 4096


def _segment_sum_rows(out, idx, g):
    """out[idx] += g for an integer array idx on out's first axis, repeated indices accumulating.

    The embedding-gradient case: a stable sort groups equal indices (keeping their order), np.add.reduceat
    sums each group's rows in one call and one fancy assignment writes the sums: ~5x faster than np.add.at.
    """
    n = out.shape[0]
    flat = idx.reshape(-1)
    flat = np.where(flat < 0, flat + n, flat) if idx.dtype.kind == "i" else flat  # -1 and n-1 are one row
    rows = g.reshape((flat.size,) + out.shape[1:])
    order = np.argsort(flat, kind="stable")
    sorted_idx = flat[order]
    starts = np.flatnonzero(np.concatenate(([True], sorted_idx[1:] != sorted_idx[:-1])))
    out[sorted_idx[starts]] += np.add.reduceat(rows[order], starts, axis=0)


def _cupy_add_at(out, idx, g):
    from conch.kernels._cupy import scatter_add

    scatter_add(out, idx, g)


def _is_basic(idx):
    items = idx if isinstance(idx, tuple) else (idx,)
    return all(isinstance(i, (int, slice, type(None), type(Ellipsis))) for i in items)


class Cat(Op):
    @staticmethod
    def forward(ctx, *arrays, dim):
        ctx.dim = dim
        ctx.sizes = [a.shape[dim] for a in arrays]
        return xp_of(arrays[0]).concatenate(arrays, axis=dim)

    @staticmethod
    def backward(ctx, g):
        return tuple(g.split(ctx.sizes, dim=ctx.dim))


class Split(Op):
    @staticmethod
    def forward(ctx, a, sizes, dim):
        ctx.dim = dim
        idx = np.cumsum(sizes)[:-1].tolist()
        return tuple(xp_of(a).split(a, idx, axis=dim))

    @staticmethod
    def backward(ctx, *grads):
        return Cat.apply(*grads, dim=ctx.dim)


class Where(Op):
    @staticmethod
    def forward(ctx, a, b, cond):
        ctx.cond = cond
        return xp_of(a).where(cond, a, b)

    @staticmethod
    def backward(ctx, g):
        n = ctx.needs_input_grad
        return (g.masked_fill(~ctx.cond, 0) if n[0] else None), (g.masked_fill(ctx.cond, 0) if n[1] else None)


class MaskedFill(Op):
    @staticmethod
    def forward(ctx, a, mask, value):
        ctx.mask = mask
        xp = xp_of(a)
        v = xp.asarray(value, dtype=a.dtype)
        m_ok = getattr(mask, "dtype", None) == np.bool_ and mask.ndim <= a.ndim
        if m_ok and mask.shape == a.shape[a.ndim - mask.ndim :]:
            # copy + masked copyto: ~40% faster than where's per-element select (attention's causal mask)
            out = a.copy()
            xp.copyto(out, v, where=mask)
            return out
        return xp.where(mask, v, a)

    @staticmethod
    def backward(ctx, g):
        return g.masked_fill(ctx.mask, 0)


class CopySlices(Op):
    """The history of a base after an in-place write into part of it (a view, or ``base[idx] = value``).

    out = base with the elements ``sel`` (flat positions in ``base``, shape of ``value``) replaced by ``value``.
    The caller has already written ``value`` into ``base``'s memory, so forward hands that array back.
    Backward: d/dbase = g with the written elements zeroed (``mask``); d/dvalue = g at ``sel``.
    ``mask=None`` means the whole base was overwritten (its gradient is zero) and ``sel=None`` that value
    already has base's shape.
    """

    @staticmethod
    def forward(ctx, base, value, mask, sel):
        ctx.mask, ctx.sel = mask, sel
        return base

    @staticmethod
    def backward(ctx, g):
        n = ctx.needs_input_grad
        gb = gv = None
        if n[0]:
            gb = g * 0 if ctx.mask is None else MaskedFill.apply(g, mask=ctx.mask, value=0)
        if n[1]:
            gv = g if ctx.sel is None else GetItem.apply(g.reshape(-1), idx=ctx.sel)
        return gb, gv


class Maximum(Op):
    """Elementwise max (min with ``largest=False``); NaN propagates.

    Gradient as PyTorch: the larger side gets dy, ties give each side dy/2, and where either is NaN (no
    order) both sides get dy: da = dy · [a not below b] · (1/2 at ties), db likewise.
    """

    saves = (0, 1)

    @staticmethod
    def forward(ctx, a, b, largest=True):
        ctx.largest = largest
        xp = xp_of(a)
        return xp.maximum(a, b) if largest else xp.minimum(a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        ad, bd = a._data, b._data
        below, above = (ad < bd, ad > bd) if ctx.largest else (ad > bd, ad < bd)
        half = 0.5 * (ad == bd)
        n = ctx.needs_input_grad
        wa = g._wrap_const((1 - below - half).astype(g.dtype)) if n[0] else None
        wb = g._wrap_const((1 - above - half).astype(g.dtype)) if n[1] else None
        return (g * wa if n[0] else None), (g * wb if n[1] else None)


# ---------------------------------------------------------------- matmul and softmax


class MatMul(Op):
    """NumPy matmul semantics: 1-D operands are promoted and the added dim removed afterwards."""

    saves = (0, 1)

    @staticmethod
    def forward(ctx, a, b):
        return (a @ b).astype(a.dtype, copy=False)  # NumPy's bfloat16 matmul returns float32

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        n = ctx.needs_input_grad
        a2 = a.unsqueeze(0) if a.ndim == 1 else a
        b2 = b.unsqueeze(-1) if b.ndim == 1 else b
        if a.ndim == 1:
            g = g.unsqueeze(-2 if b.ndim > 1 else 0)
        if b.ndim == 1:
            g = g.unsqueeze(-1)
        ga = gb = None
        if n[0]:
            ga = g @ b2.mT
            if a.ndim == 1:
                ga = ga.reshape(-1, a.shape[0]).sum(0)
        if n[1]:
            gb = a2.mT @ g
            if b.ndim == 1:
                gb = gb.reshape(-1, b.shape[0]).sum(0)
        return ga, gb


class Softmax(Op):
    """y = exp(x - max) / Σ exp(x - max);  dx = y (dy - Σ dy·y)."""

    saves = ("out",)

    @staticmethod
    def forward(ctx, a, dim):
        ctx.dim = dim
        xp = xp_of(a)
        acc = _acc_dtype(a.dtype)
        x = a.astype(acc) if acc is not None else a
        e = xp.exp(x - x.max(axis=dim, keepdims=True))
        return (e / e.sum(axis=dim, keepdims=True)).astype(a.dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return y * (g - (g * y).sum(dim=ctx.dim, keepdim=True))


class LogSoftmax(Op):
    """y = x - max - log Σ exp(x - max);  dx = dy - softmax(x) Σ dy."""

    saves = ("out",)

    @staticmethod
    def forward(ctx, a, dim):
        ctx.dim = dim
        xp = xp_of(a)
        acc = _acc_dtype(a.dtype)
        x = a.astype(acc) if acc is not None else a
        s = x - x.max(axis=dim, keepdims=True)
        return (s - xp.log(xp.exp(s).sum(axis=dim, keepdims=True))).astype(a.dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g - y.exp() * g.sum(dim=ctx.dim, keepdim=True)
