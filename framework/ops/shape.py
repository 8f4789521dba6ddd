"""Shape ops and views: reshape, expand, permute, cat/split, copies and device moves, roll, diagonals, padding.

A view op's forward returns a view of its input's array (no copy); ``tensor.py`` records the view relation.
"""

from __future__ import annotations

import numpy as np

from .._backend import device_of, to_device, xp_of
from ..autograd.function import Op
from ..autograd.grad_mode import _enabled
from .indexing import GetItem


class Reshape(Op):
    @staticmethod
    def forward(ctx, a, shape):
        ctx.shape = a.shape
        return a.reshape(shape)

    @staticmethod
    def backward(ctx, g):
        if not _enabled[0]:  # not recorded: the array reshaped, no view bookkeeping
            return g._wrap_const(g._data.reshape(ctx.shape))
        return g.reshape(ctx.shape)


class Expand(Op):
    @staticmethod
    def forward(ctx, a, shape):
        out = xp_of(a).broadcast_to(a, shape)
        if isinstance(a, np.ndarray) and a.flags.writeable:
            # PyTorch's expand is a writable view (``x.expand(2, 3)[0] = v`` writes x); NumPy's broadcast_to is
            # read-only. Writes into elements that share memory are refused by Tensor (_check_overlap).
            out = np.lib.stride_tricks.as_strided(a, out.shape, out.strides)
        return out

    @staticmethod
    def backward(ctx, g):
        return g  # the engine sums the broadcast axes away


class Permute(Op):
    @staticmethod
    def forward(ctx, a, perm):
        ctx.perm = perm
        return a.transpose(perm)

    @staticmethod
    def backward(ctx, g):
        perm = ctx.perm
        inv = tuple(sorted(range(len(perm)), key=perm.__getitem__))  # the inverse: argsort, no NumPy call
        if not _enabled[0]:  # not recorded: the array transposed back
            return g._wrap_const(g._data.transpose(inv))
        return g.permute(*inv)


class Flip(Op):
    """A copy of ``a`` reversed along ``dims`` (PyTorch's flip copies); d/da = flip(g)."""

    @staticmethod
    def forward(ctx, a, dims):
        ctx.dims = dims
        return xp_of(a).flip(a, axis=dims).copy() if dims else a.copy()

    @staticmethod
    def backward(ctx, g):
        return Flip.apply(g, dims=ctx.dims)


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


class ToDevice(Op):
    @staticmethod
    def forward(ctx, a, dev):
        ctx.src = device_of(a)
        return to_device(a, dev)

    @staticmethod
    def backward(ctx, g):
        return g.to(device=ctx.src)


class Alias(Op):
    """y = x sharing memory; dy/dx = 1."""

    @staticmethod
    def forward(ctx, a):
        return a

    @staticmethod
    def backward(ctx, g):
        return g


class Roll(Op):
    @staticmethod
    def forward(ctx, a, shifts, dims):
        ctx.shifts, ctx.dims = shifts, dims
        return xp_of(a).roll(a, shifts, axis=dims)

    @staticmethod
    def backward(ctx, g):
        neg = tuple(-s for s in ctx.shifts) if isinstance(ctx.shifts, tuple) else -ctx.shifts
        return Roll.apply(g, shifts=neg, dims=ctx.dims)


def _diag_view(a, offset, d1, d2):
    """A strided view of ``a``'s diagonal ``offset`` in the (d1, d2) planes, as the last dim (NumPy's layout)."""
    xp = xp_of(a)
    m = xp.moveaxis(a, (d1, d2), (-2, -1))
    r0, c0 = max(-offset, 0), max(offset, 0)
    n = max(0, min(m.shape[-2] - r0, m.shape[-1] - c0))
    sub = m[..., r0 : r0 + n, c0 : c0 + n]
    step = sub.strides[-2] + sub.strides[-1]
    return xp.lib.stride_tricks.as_strided(sub, shape=sub.shape[:-2] + (n,), strides=sub.strides[:-2] + (step,))


class Diagonal(Op):
    """A view of a diagonal; the gradient is g placed on that diagonal of zeros (DiagonalAdjoint)."""

    @staticmethod
    def forward(ctx, a, offset, d1, d2):
        ctx.args, ctx.shape = (offset, d1, d2), a.shape
        return _diag_view(a, offset, d1, d2)

    @staticmethod
    def backward(ctx, g):
        return DiagonalAdjoint.apply(g, shape=ctx.shape, args=ctx.args)


class DiagonalAdjoint(Op):
    @staticmethod
    def forward(ctx, g, shape, args):
        ctx.args = args
        out = xp_of(g).zeros(shape, dtype=g.dtype)
        _diag_view(out, *args)[...] = g
        return out

    @staticmethod
    def backward(ctx, g):
        offset, d1, d2 = ctx.args
        return Diagonal.apply(g, offset=offset, d1=d1, d2=d2)


def _diag_index(xp, n, offset):
    return xp.arange(n) + max(-offset, 0), xp.arange(n) + max(offset, 0)


class DiagEmbed(Op):
    """A 1-D v of length n onto diagonal ``offset`` of an (n+|offset|)² zero matrix; the gradient reads it back."""

    @staticmethod
    def forward(ctx, v, offset):
        xp = xp_of(v)
        n = v.shape[0]
        m = n + abs(offset)
        ctx.rc = _diag_index(xp, n, offset)
        out = xp.zeros((m, m), dtype=v.dtype)
        out[ctx.rc] = v
        return out

    @staticmethod
    def backward(ctx, g):
        return GetItem.apply(g, idx=ctx.rc)


class Pad(Op):
    """Constant padding; ``widths`` is NumPy's ((before, after), ...) per dim. The gradient is the slice back."""

    @staticmethod
    def forward(ctx, a, widths, value):
        ctx.sl = tuple(slice(b, b + n) for (b, _), n in zip(widths, a.shape))
        return xp_of(a).pad(a, widths, mode="constant", constant_values=value)

    @staticmethod
    def backward(ctx, g):
        return g[ctx.sl]


class PadTake(Op):
    """Padding along one axis by gathering: out[..., j, ...] = a[..., idx[j], ...], where idx maps every output
    position to its source (reflect, replicate, circular; negative widths crop). The backward is the adjoint: every
    output position's gradient is added back onto its source (PadScatter)."""

    @staticmethod
    def forward(ctx, a, idx, axis):
        ctx.idx, ctx.axis, ctx.n = idx, axis, a.shape[axis]
        return xp_of(a).take(a, xp_of(a).asarray(idx), axis=axis)

    @staticmethod
    def backward(ctx, g):
        return PadScatter.apply(g, idx=ctx.idx, axis=ctx.axis, n=ctx.n)


class PadScatter(Op):
    """The adjoint of PadTake: zeros of size n along ``axis`` with each g position added at its source ``idx[j]``.

    The longest run where idx steps by one (the input's own part, cropped or not) is one slice add; the padded
    positions, few, are one slice add each.
    """

    @staticmethod
    def forward(ctx, g, idx, axis, n):
        ctx.idx, ctx.axis = idx, axis
        xp = xp_of(g)
        lead = (slice(None),) * axis
        out = xp.zeros(g.shape[:axis] + (n,) + g.shape[axis + 1 :], dtype=g.dtype)
        j0, m = _identity_run(idx)
        s0 = int(idx[j0]) if m else 0
        out[lead + (slice(s0, s0 + m),)] += g[lead + (slice(j0, j0 + m),)]
        for j in (*range(j0), *range(j0 + m, len(idx))):
            out[lead + (int(idx[j]),)] += g[lead + (j,)]
        return out

    @staticmethod
    def backward(ctx, g):
        return PadTake.apply(g, idx=ctx.idx, axis=ctx.axis)


def _identity_run(idx):
    """(start, length) of the longest run of ``idx`` (a NumPy int vector) that steps by +1."""
    if not len(idx):
        return 0, 0
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    starts = np.concatenate(([0], breaks))
    lengths = np.diff(np.concatenate((starts, [len(idx)])))
    k = int(np.argmax(lengths))
    return int(starts[k]), int(lengths[k])
