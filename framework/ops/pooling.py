"""Pooling over strided views, no im2col: non-overlapping tiles (max and avg) and any max-pooling geometry.

For windows that tile the input (kernel == stride, no padding or dilation) ``max_pool2d``/``avg_pool2d`` are a
maximum or a sum over the kh·kw strided views ``x[..., ki::kh, kj::kw]`` (each (N, C, OH, OW)), and the gradient
writes those views of dx. Other max-pooling geometries (overlap, padding, dilation, ceil_mode) use the same idea
on the -inf padded input, view (ki, kj) starting at (ki·dh, kj·dw) with the stride's step::

    out = max_tiles(x, (2, 2), (oh, ow))                 # None when x holds a NaN (im2col path then)
    y = MaxPoolTiles.apply(xt, out=out, geom=(2, 2))     # conch.nn.functional.max_pool2d does this
    out = max_windows(x, (k, stride, dilation, (top, bottom, left, right)), (oh, ow))

The im2col path (``ops.nn.MaxPool2d``, ``ops.nn.Im2col``) handles NaN inputs, CuPy arrays, bfloat16 and avg
pooling with overlapping windows.
"""

from __future__ import annotations

import numpy as np

from ..autograd.function import Op
from ..autograd.grad_mode import is_grad_enabled
from .indexing import ScatterFlat


def _max_of(views):
    best = views[0].copy()  # ascontiguousarray would alias x when a view happens to be contiguous
    for v in views[1:]:
        np.maximum(best, v, out=best)
    return best


def _has_nan(x):
    return x.dtype.kind == "f" and bool(np.isnan(x.max()))


def max_tiles(x, k, out_hw):
    """Max over non-overlapping kh×kw tiles of a NumPy (N, C, H, W) array (a maximum over the kh·kw strided
    views), or None when x holds a NaN (NaN's argmax rule is left to the im2col path)."""
    return None if _has_nan(x) else _max_of(_tile_views(x, k, out_hw))


# ----------------------------------------------------------------------------------------------------------------
# Any window geometry (overlapping, padded, dilated): the same strided views of the (-inf padded) input
# ----------------------------------------------------------------------------------------------------------------


def _padded(x, pads):
    """x padded with its dtype's lowest value: pads = (top, bottom, left, right); x itself when all are 0."""
    if not any(pads):
        return x
    lo = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    return np.pad(x, ((0, 0), (0, 0), pads[:2], pads[2:]), mode="constant", constant_values=lo)


def _window_views(a, geom, out_hw):
    """The kh·kw strided views (..., OH, OW) of ``a``: view (ki, kj) holds element (ki, kj) of every window."""
    (kh, kw), (sh, sw), (dh, dw), _ = geom
    oh, ow = out_hw
    return [a[..., i * dh : i * dh + (oh - 1) * sh + 1 : sh, j * dw : j * dw + (ow - 1) * sw + 1 : sw]
            for i in range(kh) for j in range(kw)]  # fmt: skip


def max_windows(x, geom, out_hw):
    """Max pooling of a NumPy (N, C, H, W) array for ``geom = (k, stride, dilation, pads)`` (pads: top, bottom,
    left, right, with -inf padding) as a maximum over kh·kw strided views; None when x holds a NaN."""
    return None if _has_nan(x) else _max_of(_window_views(_padded(x, geom[3]), geom, out_hw))


def _window_first_max(x, best, geom):
    """(row, col) in the padded input of each window's first maximum, int64 arrays of best's shape."""
    (kh, kw), (sh, sw), (dh, dw), _ = geom
    oh, ow = best.shape[-2:]
    pos = np.zeros(best.shape, dtype=np.int64)
    for t, hit in _first_hits(_window_views(_padded(x, geom[3]), geom, (oh, ow)), best):
        np.copyto(pos, t, where=hit)
    rows = np.arange(oh, dtype=np.int64).reshape(oh, 1) * sh + pos // kw * dh
    return rows, np.arange(ow, dtype=np.int64) * sw + pos % kw * dw


def window_indices(x, best, geom):
    """PyTorch's max_pool2d indices (flat into H·W) of each window's first maximum."""
    rows, cols = _window_first_max(x, best, geom)
    pads = geom[3]
    return (rows - pads[0]) * x.shape[-1] + (cols - pads[2])


class _SavedMax(Op):
    """A max pooling whose output was computed before ``apply`` (``out``); x and the output are saved, and the
    backward finds each window's first maximum again from them (no index array is kept)."""

    saves = (0, "out")

    @staticmethod
    def forward(ctx, x, out, geom):
        ctx.geom = geom
        return out


class MaxPoolWindows(_SavedMax):
    """Max pooling over any window geometry (forward from :func:`max_windows`, no im2col; ``geom`` as there);
    the gradient goes to each window's first maximum. A plain backward adds ``dy * hit`` into the kh·kw strided
    views of a padded dx (in window order); a recorded one (create_graph) scatters dy to the first maxima with
    ScatterFlat, as the im2col path's MaxPool2d."""

    @staticmethod
    def backward(ctx, g):
        x, best = (t._data for t in ctx.saved_tensors)
        geom = ctx.geom
        top, bottom, left, right = geom[3]
        n, c, h, w = x.shape
        hp, wp = h + top + bottom, w + left + right
        if not is_grad_enabled():
            gd = g._data
            gpad = np.zeros((n, c, hp, wp), dtype=gd.dtype)
            views = _window_views(gpad, geom, best.shape[-2:])
            for t, hit in _first_hits(_window_views(_padded(x, geom[3]), geom, best.shape[-2:]), best):
                views[t] += gd * hit
            return g._wrap_const(gpad[:, :, top : top + h, left : left + w])
        rows, cols = _window_first_max(x, best, geom)
        flat = rows * wp + cols + np.arange(n * c, dtype=np.int64).reshape(n, c, 1, 1) * (hp * wp)
        gpad = ScatterFlat.apply(g.reshape(-1), idx=flat.ravel(), size=n * c * hp * wp).reshape(n, c, hp, wp)
        return gpad[:, :, top : top + h, left : left + w]


def _first_hits(views, best):
    """Per window view t, where view t holds its window's *first* maximum (row-major window order, np.argmax's
    tie rule as the im2col path): yields (t, bool mask of best's shape)."""
    taken = None
    for t, v in enumerate(views):
        hit = v == best
        if taken is None:
            taken = hit
        else:
            hit &= ~taken
            taken |= hit
        yield t, hit


def tile_indices(x, best, k):
    """PyTorch's max_pool2d indices (flat into H·W) of each tile's first maximum."""
    (kh, kw), (oh, ow), w = k, best.shape[-2:], x.shape[-1]
    pos = np.zeros(best.shape, dtype=np.int64)
    for t, hit in _first_hits(_tile_views(x, k, (oh, ow)), best):
        np.copyto(pos, t, where=hit)
    rows = np.arange(oh, dtype=np.int64).reshape(oh, 1) * kh + pos // kw
    return rows * w + (np.arange(ow, dtype=np.int64) * kw + pos % kw)


def _tile_views(a, k, out_hw):
    """The kh·kw strided views ``a[..., ki::kh, kj::kw]`` (each (..., OH, OW)) of the tiled part of ``a``."""
    (kh, kw), (oh, ow) = k, out_hw
    at = a[..., : oh * kh, : ow * kw]
    return [at[..., t // kw :: kh, t % kw :: kw] for t in range(kh * kw)]


def _untile(gx, k, hw):
    """(N, C, OH, OW, kh, kw) Tensor -> (N, C, H, W): tiles back in place, zeros over the uncovered border."""
    n, c, oh, ow, kh, kw = gx.shape
    gx = gx.permute(0, 1, 2, 4, 3, 5).reshape(n, c, oh * kh, ow * kw)
    h, w = hw
    if (oh * kh, ow * kw) == (h, w):
        return gx
    # the tiled corner's flat positions in (N, C, H, W): a scatter is the adjoint of cropping to the tiles
    idx = np.arange(n * c * h * w).reshape(n, c, h, w)[:, :, : oh * kh, : ow * kw].ravel()
    return ScatterFlat.apply(gx.reshape(-1), idx=idx, size=n * c * h * w).reshape(n, c, h, w)


class MaxPoolTiles(_SavedMax):
    """Max over non-overlapping tiles (forward from :func:`max_tiles`; ``geom`` is the kernel size (kh, kw));
    the gradient goes to each tile's first maximum. Recorded backwards (create_graph) use Tensor ops, so second
    derivatives work; plain ones write the kh·kw strided views of dx directly (each element once)."""

    @staticmethod
    def backward(ctx, g):
        x, best = (t._data for t in ctx.saved_tensors)
        n, c, oh, ow = g.shape
        (kh, kw), hw = ctx.geom, x.shape[-2:]
        if not is_grad_enabled():
            gd = g._data
            gx = np.zeros((n, c) + tuple(hw), dtype=gd.dtype)
            views = _tile_views(gx, ctx.geom, (oh, ow))
            for t, hit in _first_hits(_tile_views(x, ctx.geom, (oh, ow)), best):
                np.multiply(gd, hit, out=views[t])
            return g._wrap_const(gx)
        hot = np.stack([hit for _, hit in _first_hits(_tile_views(x, ctx.geom, (oh, ow)), best)], axis=-1)
        gx = g.unsqueeze(-1) * g._wrap_const(hot.astype(g._data.dtype))
        return _untile(gx.reshape(n, c, oh, ow, kh, kw), ctx.geom, hw)


class AvgPoolTiles(Op):
    """Mean over non-overlapping kh×kw tiles of a NumPy (N, C, H, W) array, divided by ``div`` (prod(k) or
    divisor_override): the sum of the kh·kw strided views; the gradient spreads dy / div over each tile."""

    @staticmethod
    def forward(ctx, x, k, out_hw, div):
        ctx.k, ctx.hw, ctx.div = k, x.shape[-2:], div
        views = _tile_views(x, k, out_hw)
        total = views[0].astype(np.float32 if x.dtype == np.float16 else x.dtype)  # a fresh accumulator
        for v in views[1:]:
            total += v
        total /= div
        return total.astype(x.dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        n, c, oh, ow = g.shape
        (kh, kw), div = ctx.k, ctx.div
        if not is_grad_enabled():
            gd = g._data / g._data.dtype.type(div)
            gx = np.zeros((n, c) + tuple(ctx.hw), dtype=gd.dtype)
            for view in _tile_views(gx, ctx.k, (oh, ow)):
                view[...] = gd
            return g._wrap_const(gx)
        gx = (g / float(div)).reshape(n, c, oh, 1, ow, 1).expand(n, c, oh, kh, ow, kw)
        return _untile(gx.permute(0, 1, 2, 4, 3, 5), ctx.k, ctx.hw)
