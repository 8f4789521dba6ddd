"""Indexing, gathers and scatters: getitem and its scatter-add adjoint, where, masked_fill, in-place slice writes,
take-along-dim, scatter, embedding lookups.
"""

from __future__ import annotations

import numpy as np

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
