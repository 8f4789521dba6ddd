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

With Numba (kernels/_jit.py) every max/avg pooling geometry of a NumPy float array, 1-3 spatial dims, takes the
compiled kernels instead (kernels/_numba/conv.py): :class:`MaxPoolCompiled` (the forward also gives each
window's first-maximum index, kept for the backward and for ``return_indices``) and :class:`AvgPoolCompiled`.
"""

from __future__ import annotations

import numpy as np

from ..autograd.function import Op
from ..autograd.grad_mode import is_grad_enabled
from ..kernels import _jit
from .indexing import ScatterFlat

_F32 = np.dtype(np.float32)
_COMPILED = frozenset((_F32, np.dtype(np.float64)))
_HALF = ("float16", "bfloat16")  # computed in float32, rounded once at the end


_MOD = [None]


def conv_kernels():
    """kernels/_numba/conv.py, looked up once (``_jit.family`` goes through importlib, ~20 us a call: a tenth of
    a small pooling's time)."""
    mod = _MOD[0]
    if mod is None:
        mod = _MOD[0] = _jit.family("conv")
    return mod


def compiled(a) -> bool:
    """True when pooling over ``a`` takes the compiled kernels: a NumPy float array (half precision through
    float32) and Numba on."""
    return type(a) is np.ndarray and (a.dtype in _COMPILED or a.dtype.name in _HALF) and _jit.enabled()


def _run(kernel, a, *args):
    """kernel(a, *args) on a float32/float64 array (half precision: a and the arrays of its dtype among args
    converted to float32, and the first result back, exactly for max pooling)."""
    if a.dtype in _COMPILED:
        return kernel(a, *args)
    args = [v.astype(np.float32) if isinstance(v, np.ndarray) and v.dtype == a.dtype else v for v in args]
    res = kernel(a.astype(np.float32), *args)
    if isinstance(res, tuple):
        return (res[0].astype(a.dtype),) + res[1:]
    return res.astype(a.dtype)


def max_pool_compiled(x, k, s, d, p, out, indices=True):
    """Max pooling of a Tensor x (N, C, *S) (1-3 spatial dims, ``p`` the leading padding per dim, ``out`` the
    output sizes) on the compiled kernels: (y, idx) with idx the int64 flat index into ∏S of each window's first
    maximum (a NaN counts as the largest; PyTorch's indices), or None when not ``indices`` and the windows are
    2x2 tiles (the CNN's pooling: a forward without indices, the backward finds the maxima again)."""
    conv = conv_kernels()
    arr = x._data
    tiles = tuple(k) == (2, 2) == tuple(s) and not any(p) and tuple(d) == (1, 1)
    if tiles and not indices and tuple(out) == tuple(n // 2 for n in arr.shape[-2:]):  # no ceil_mode window
        return MaxPool2x2Compiled.apply(x, out=_run(conv.max_pool2x2, arr)), None
    best, idx = _run(conv.max_pool, arr, k, s, d, p, out)
    return MaxPoolCompiled.apply(x, out=best, idx=idx), idx


class MaxPool2x2Compiled(Op):
    """2x2 / stride 2 max pooling from the compiled kernel (``out``); x and the output are saved, and the
    backward finds each window's first maximum again (one compiled pass writing every element of dx). A
    recorded backward (create_graph) scatters dy with ScatterFlat to the indices of the general kernel."""

    saves = (0, "out")

    @staticmethod
    def forward(ctx, x, out):
        return out

    @staticmethod
    def backward(ctx, g):
        x, best = (t._data for t in ctx.saved_tensors)
        if not is_grad_enabled():
            return g._wrap_const(_run(conv_kernels().max_pool2x2_backward, x, best, g._data))
        idx = _run(conv_kernels().max_pool, x, (2, 2), (2, 2), (1, 1), (0, 0), best.shape[-2:])[1]
        return _scatter_to(g, idx, x.shape[2:])


class MaxPoolCompiled(Op):
    """A max pooling whose output and first-maximum indices came from the compiled kernel (``out``, ``idx``);
    the gradient goes to those elements: a plain backward adds dy there in one compiled pass, a recorded one
    (create_graph) scatters with ScatterFlat, so second derivatives work."""

    @staticmethod
    def forward(ctx, x, out, idx):
        ctx.idx, ctx.size = idx, x.shape[2:]
        return out

    @staticmethod
    def backward(ctx, g):
        idx, size = ctx.idx, ctx.size
        if not is_grad_enabled():
            return g._wrap_const(_run(conv_kernels().max_pool_backward, g._data, idx, size))
        return _scatter_to(g, idx, size)


def _scatter_to(g, idx, size):
    """dx (N, C, *size) Tensor: dy added at the flat plane positions idx (N, C, *O), recorded (create_graph)."""
    lead, plane = idx.shape[:2], int(np.prod(size))
    planes = int(np.prod(lead))
    flat = (idx.reshape(planes, -1) + np.arange(planes, dtype=np.int64).reshape(-1, 1) * plane).ravel()
    return ScatterFlat.apply(g.reshape(-1), idx=flat, size=planes * plane).reshape(lead + tuple(size))


class AvgPoolCompiled(Op):
    """Average pooling on the compiled kernel: x (N, C, *S) -> (N, C, *O) (``shape``: the output sizes) for
    kernel ``k``, stride ``s``, leading padding ``p`` and PyTorch's divisors (``include_pad``:
    count_include_pad; ``div``: divisor_override or 0); with ``adjoint=True`` its transpose, dy (N, C, *O) ->
    dx (N, C, *S) (``shape``: S), dy / divisor spread over each window. The pooling is linear: the backward of
    one direction is the other, so second derivatives work."""

    @staticmethod
    def forward(ctx, a, k, s, p, shape, include_pad, div, adjoint=False):
        ctx.args, ctx.other, ctx.adjoint = (k, s, p), a.shape[2:], adjoint
        ctx.divisor = (include_pad, div)
        fn = conv_kernels().avg_pool_backward if adjoint else conv_kernels().avg_pool
        return _run(fn, a, k, s, p, shape, include_pad, div)

    @staticmethod
    def backward(ctx, g):
        k, s, p = ctx.args
        return AvgPoolCompiled.apply(g, k=k, s=s, p=p, shape=ctx.other, include_pad=ctx.divisor[0],
                                     div=ctx.divisor[1], adjoint=not ctx.adjoint)  # fmt: skip


def _max_of(views):
    best = views[0].copy()  # ascontiguousarray would alias x when a view happens to be contiguous
    for v in views[1:]:
        np.maximum(best, v, out=best)
    return best


def _has_nan(x):
    return x.dtype.kind == "f" and x.size > 0 and bool(np.isnan(x.max()))  # an empty batch has no max


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
