"""Indexing, gathers and scatters: getitem and its scatter-add adjoint, where, masked_fill, in-place slice writes,
take-along-dim, scatter, embedding lookups.
"""

from __future__ import annotations

import numpy as np

from conch.kernels import _jit
from conch.kernels._cupy import scatter_add

from .._backend import xp_of
from ..autograd.function import Op


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
        elif not (isinstance(idx, np.ndarray) and idx.dtype.kind in "iu" and g.ndim):
            np.add.at(out, idx, g)
        elif _jit.enabled() and _jit.family("index").add_rows(out, idx, g):
            pass  # compiled (kernels/_numba/index.py); it declines (False) what it does not handle
        elif 0 < idx.size <= _SEGMENT_SUM_MAX:
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
    scatter_add(out, idx, g)


def _is_basic(idx):
    items = idx if isinstance(idx, tuple) else (idx,)
    return all(isinstance(i, (int, slice, type(None), type(Ellipsis))) for i in items)


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


def _along(idx, dim):
    """The full advanced index that addresses ``a[..., idx[...], ...]`` along ``dim`` (take_along_axis's)."""
    xp = xp_of(idx)
    nd = idx.ndim
    return tuple(idx if d == dim else xp.arange(idx.shape[d]).reshape((-1,) + (1,) * (nd - d - 1)) for d in range(nd))


def _gather(a, idx, dim):
    """a[i][idx[i][j][k]][k] along ``dim``: GetItem with the full index, so its gradient is IndexAdd's
    scatter-add (repeated indices accumulate) and higher derivatives come for free."""
    return GetItem.apply(a, idx=_along(idx, dim))


def _scatter_add_into(src, idx, dim, shape):
    """zeros(shape) with ``src`` added at the positions _gather reads."""
    return IndexAdd.apply(src, shape=shape, idx=_along(idx, dim))


class Scatter(Op):
    """out = a with ``src`` written at ``idx`` along ``dim``; d/da = g off the written positions, d/dsrc = g there."""

    @staticmethod
    def forward(ctx, a, src, idx, dim):
        ctx.idx, ctx.dim = idx, dim
        index = _along(idx, dim)
        out = a.copy()
        out[index] = src
        ctx.written = xp_of(a).zeros(a.shape, dtype=bool)
        ctx.written[index] = True
        return out

    @staticmethod
    def backward(ctx, g):
        n = ctx.needs_input_grad
        ga = g.masked_fill(ctx.written, 0) if n[0] else None
        return ga, (_gather(g, ctx.idx, ctx.dim) if n[1] else None)


class Embedding(Op):
    """out[...] = weight[idx[...]]; the gradient is scatter-added into the rows, except row ``padding_idx``."""

    @staticmethod
    def forward(ctx, w, idx, padding_idx):
        ctx.idx, ctx.pad, ctx.shape = idx, padding_idx, w.shape
        return w[idx]

    @staticmethod
    def backward(ctx, g):
        if ctx.pad is not None:
            g = g.masked_fill((ctx.idx == ctx.pad)[..., None], 0)
        return IndexAdd.apply(g, shape=ctx.shape, idx=ctx.idx)


class ScatterFlat(Op):
    """out = zeros(size); out[idx] += g (repeated indices accumulate); the adjoint of a gather ``x[idx]``."""

    @staticmethod
    def forward(ctx, g, idx, size):
        ctx.idx = idx
        xp = xp_of(g)
        return xp.bincount(idx, weights=g.astype(np.float64, copy=False), minlength=size).astype(g.dtype)

    @staticmethod
    def backward(ctx, g):
        return g[g._wrap_const(ctx.idx)]


#: The value a position starts from when ``include_self=False``: the reduction's identity.
_IDENTITY = {"sum": 0, "mean": 0, "prod": 1}


def _flat_positions(idx, dim, shape):
    """The flat position in an array of ``shape`` that every element of ``idx`` (scattered along ``dim``) targets."""
    xp = xp_of(idx)
    full = tuple(xp.broadcast_to(i, idx.shape) for i in _along(idx, dim))
    return xp.ravel_multi_index(full, shape).reshape(-1)


def _reduce_at(out, pos, vals, reduce):
    """out[pos[k]] = reduce(out[pos[k]], vals[k]) for every k, repeated positions combining (a flat ``out``).

    NumPy has the unbuffered ``ufunc.at``; a GPU sum is one atomic scatter-add; the other GPU reductions go in
    rounds, the r-th occurrence of every position in round r, so no round writes one position twice (as many
    rounds as the most repeated position has occurrences; reading that count is one host sync).
    """
    ufunc = {"sum": np.add, "mean": np.add, "prod": np.multiply, "amax": np.maximum, "amin": np.minimum}[reduce]
    xp = xp_of(out)
    if xp is np:
        ufunc.at(out, pos, vals)
        return
    if ufunc is np.add:
        scatter_add(out, pos, vals)
        return
    order = xp.argsort(pos)
    sp, sv = pos[order], vals[order]
    rank = xp.arange(sp.shape[0]) - xp.searchsorted(sp, sp, side="left")
    for r in range(int(rank.max()) + 1 if sp.shape[0] else 0):
        m = rank == r
        p = sp[m]
        out[p] = getattr(xp, ufunc.__name__)(out[p], sv[m])


def _start_value(reduce, dtype):
    """The identity of ``reduce`` in ``dtype``: where a position starts when ``include_self=False``."""
    if reduce in _IDENTITY:
        return _IDENTITY[reduce]
    if dtype.kind in "iu":
        return np.iinfo(dtype).min if reduce == "amax" else np.iinfo(dtype).max
    if dtype.kind == "b":
        return reduce == "amin"
    return -np.inf if reduce == "amax" else np.inf  # float16/32/64 and bfloat16


class ScatterReduce(Op):
    """out = self with ``src[i][j]`` reduced into ``[i][index[i][j]]`` (dim=1) by sum, prod, mean, amax or amin.

    ``include_self=False`` starts every targeted position from the reduction's identity instead of self's value;
    untargeted positions keep self's. Mean divides by the number of values reduced (self counting once when
    included); integer means round down. Gradients are PyTorch's: sum/mean route g (mean divided by the count),
    prod divides the product by each factor (a single zero factor gets the product of the others), amax/amin
    share g evenly among the values equal to the result.
    """

    saves = (0, 1, "out")

    @staticmethod
    def forward(ctx, a, src, idx, dim, reduce, include_self):
        ctx.idx, ctx.dim, ctx.reduce, ctx.include_self = idx, dim, reduce, include_self
        xp = xp_of(a)
        pos = _flat_positions(idx, dim, a.shape)
        vals = src.reshape(-1)
        out = a.reshape(-1).copy()
        touched = xp.zeros(out.shape, dtype=bool)
        touched[pos] = True
        ctx.touched = touched.reshape(a.shape)
        if not include_self:
            out[touched] = _start_value(reduce, a.dtype)
        _reduce_at(out, pos, vals, reduce)
        if reduce == "mean":
            count = xp.zeros(out.shape, dtype=np.int64)
            _reduce_at(count, pos, xp.ones(pos.shape, dtype=np.int64), "sum")
            count = xp.maximum(count + int(include_self) * touched, 1)
            ctx.count = count.reshape(a.shape)
            out = out // count if a.dtype.kind in "iu" else (out / count).astype(a.dtype)
        return out.reshape(a.shape)

    @staticmethod
    def backward(ctx, g):
        a, src, out = ctx.saved_tensors
        idx, dim, reduce = ctx.idx, ctx.dim, ctx.reduce
        attrs = dict(idx=idx, dim=dim, reduce=reduce, include_self=ctx.include_self)
        if reduce == "sum":
            ga, gs = g, _gather(g, idx, dim)
        elif reduce == "mean":
            ga = g / g._wrap_const(ctx.count.astype(g.dtype))
            gs = _gather(ga, idx, dim)
        elif reduce == "prod":
            # out / x is the product of the other factors unless x is 0: compute those products with the zeros
            # replaced by 1, and for a src that is its position's only zero, the product with it replaced by 1
            self_zero = a == 0
            masked_self = a.masked_fill(self_zero, 1)
            ga = g * ScatterReduce.apply(masked_self, src, **attrs) / masked_self
            src_zero = src == 0
            zeros_at = IndexAdd.apply(src_zero.to(dtype=g.dtype), shape=a.shape, idx=_along(idx, dim))
            single = src_zero & (_gather(zeros_at, idx, dim) == 1)
            with_one = ScatterReduce.apply(a, src.masked_fill(single, 1), **attrs)
            gs = Where.apply(
                _gather(g * with_one, idx, dim), _gather(g * out, idx, dim) / src.masked_fill(src_zero, 1),
                cond=single._data,
            )  # fmt: skip
        else:  # amax / amin: g shared evenly among self (when equal) and the srcs equal to the result
            self_is = (a == out).to(dtype=g.dtype)
            src_is = (src == _gather(out, idx, dim)).to(dtype=g.dtype)
            share = g / (self_is + IndexAdd.apply(src_is, shape=a.shape, idx=_along(idx, dim)))
            ga, gs = self_is * share, src_is * _gather(share, idx, dim)
        if not ctx.include_self:
            ga = ga.masked_fill(ctx.touched, 0)
        n = ctx.needs_input_grad
        return (ga if n[0] else None), (gs if n[1] else None)
