"""The ops behind conch.nn.functional: softmax and log-softmax along a dim, im2col/col2im for convolutions,
max pooling.
"""

from __future__ import annotations

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
    """(N, C, H, W) -> patches (N, C·kh·kw, OH·OW), read through one strided view of the padded input.

    Entry (n, (c, i, j), (oh, ow)) holds x_pad[n, c, oh·sh + i·dh, ow·sw + j·dw]. The long output-pixel
    axis is innermost, so the copy out of the strided view runs over long rows, and ``W @ cols`` lands
    directly in NCHW order. The adjoint is col2im (a scatter-add of the patches back into the image).
    """

    @staticmethod
    def forward(ctx, x, geom, value=0.0):
        ctx.geom, ctx.in_shape = geom, x.shape
        xp = xp_of(x)
        (kh, kw), (sh, sw), (dh, dw), (pt, pb, pl, pr), (oh, ow) = geom
        if pt or pb or pl or pr:
            x = xp.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), mode="constant", constant_values=value)
        n, c = x.shape[:2]
        s_n, s_c, s_h, s_w = x.strides
        win = _as_strided(xp, x, (n, c, kh, kw, oh, ow), (s_n, s_c, s_h * dh, s_w * dw, s_h * sh, s_w * sw))
        return win.reshape(n, c * kh * kw, oh * ow)

    @staticmethod
    def backward(ctx, g):
        return Col2im.apply(g, geom=ctx.geom, in_shape=ctx.in_shape)


class Col2im(Op):
    """Adjoint of im2col: sum every patch entry back onto the pixel it was read from."""

    @staticmethod
    def forward(ctx, g, geom, in_shape):
        ctx.geom = geom
        xp = xp_of(g)
        (kh, kw), (sh, sw), (dh, dw), (pt, pb, pl, pr), (oh, ow) = geom
        n, c, h, w = in_shape
        out = xp.zeros((n, c, h + pt + pb, w + pl + pr), dtype=g.dtype)
        g6 = g.reshape(n, c, kh, kw, oh, ow)
        for i in range(kh):
            for j in range(kw):
                rows = slice(i * dh, i * dh + sh * (oh - 1) + 1, sh)
                cols = slice(j * dw, j * dw + sw * (ow - 1) + 1, sw)
                out[:, :, rows, cols] += g6[:, :, i, j]
        return out[:, :, pt : pt + h, pl : pl + w]

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
