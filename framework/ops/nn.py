"""The ops behind conch.nn.functional: softmax and log-softmax along a dim, im2col/col2im for convolutions,
max pooling.
"""

from __future__ import annotations

import itertools
import math

from .._backend import xp_of
from ..autograd.function import Op
from .indexing import ScatterFlat
from .reductions import _acc_dtype


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


def _as_strided(xp, a, shape, strides):
    return xp.lib.stride_tricks.as_strided(a, shape=shape, strides=strides)


class Im2col(Op):
    """(N, C, *S) -> patches (N, C·∏k, ∏O), read through one strided view of the padded input, for any number
    of spatial dims (conv1d..conv3d, unfold, pooling).

    ``geom = (k, s, d, pads, out)``: per spatial dim the kernel size, stride, dilation and output size, and
    ``pads`` the (before, after) widths of each dim in order (for 2-D: top, bottom, left, right). Entry
    (n, (c, i, j), (oh, ow)) holds x_pad[n, c, oh·sh + i·dh, ow·sw + j·dw] (in 2-D; likewise in 3-D). The long
    output-position axis is innermost, so the copy out of the strided view runs over long rows, and ``W @ cols``
    lands directly in NC* order. The adjoint is col2im (a scatter-add of the patches back into the image).
    ``value`` fills the padding (-inf for max pooling).
    """

    @staticmethod
    def forward(ctx, x, geom, value=0.0):
        ctx.geom, ctx.in_shape = geom, x.shape
        xp = xp_of(x)
        k, st, dl, pads, out = geom
        nd = len(k)
        if any(pads):
            widths = ((0, 0), (0, 0)) + tuple((pads[2 * i], pads[2 * i + 1]) for i in range(nd))
            x = xp.pad(x, widths, mode="constant", constant_values=value)
        n, c = x.shape[:2]
        sp = x.strides[2:]
        shape = (n, c) + tuple(k) + tuple(out)
        strides = x.strides[:2] + tuple(sp[i] * dl[i] for i in range(nd)) + tuple(sp[i] * st[i] for i in range(nd))
        win = _as_strided(xp, x, shape, strides)
        return win.reshape(n, c * math.prod(k), math.prod(out))

    @staticmethod
    def backward(ctx, g):
        return Col2im.apply(g, geom=ctx.geom, in_shape=ctx.in_shape)


class Col2im(Op):
    """Adjoint of im2col: sum every patch entry back onto the pixel it was read from (any number of spatial dims)."""

    @staticmethod
    def forward(ctx, g, geom, in_shape):
        ctx.geom = geom
        xp = xp_of(g)
        k, st, dl, pads, out_sz = geom
        nd = len(k)
        n, c = in_shape[:2]
        sizes = in_shape[2:]
        out = xp.zeros((n, c) + tuple(sizes[i] + pads[2 * i] + pads[2 * i + 1] for i in range(nd)), dtype=g.dtype)
        gk = g.reshape((n, c) + tuple(k) + tuple(out_sz))
        for pos in itertools.product(*(range(kk) for kk in k)):
            sl = tuple(slice(pos[i] * dl[i], pos[i] * dl[i] + st[i] * (out_sz[i] - 1) + 1, st[i]) for i in range(nd))
            out[(slice(None), slice(None)) + sl] += gk[(slice(None), slice(None)) + pos]
        crop = tuple(slice(pads[2 * i], pads[2 * i] + sizes[i]) for i in range(nd))
        return out[(slice(None), slice(None)) + crop]

    @staticmethod
    def backward(ctx, g):
        return Im2col.apply(g, geom=ctx.geom)


class MaxPool2d(Op):
    """Max over each window of the (-inf padded) input; the gradient goes to the first maximum of each window."""

    @staticmethod
    def forward(ctx, x, res):
        out, _, ctx.flat, ctx.pad_shape, ctx.crop = res
        return out

    @staticmethod
    def backward(ctx, g):
        n, c, hp, wp = ctx.pad_shape
        pt, pl, h, w = ctx.crop
        gpad = ScatterFlat.apply(g.reshape(-1), idx=ctx.flat, size=n * c * hp * wp).reshape(n, c, hp, wp)
        return gpad[:, :, pt : pt + h, pl : pl + w]
