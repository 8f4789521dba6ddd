"""The ops behind conch.nn.functional: softmax and log-softmax along a dim, im2col/col2im for convolutions,
max pooling.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from .._backend import xp_of
from ..autograd.function import Op
from ..autograd.grad_mode import is_grad_enabled
from ..kernels import _jit
from ..kernels._threads import blas_product
from .indexing import ScatterFlat
from .pooling import conv_kernels
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


_COMPILED = (np.dtype(np.float32), np.dtype(np.float64))
_HALF = ("float16", "bfloat16")  # by name: bfloat16's dtype would import ml_dtypes (dtype.name costs ~2 us: asked last)


def _compiled(a, nd):
    """True when a takes the compiled kernels (kernels/_numba/conv.py): a float32/float64 NumPy array, 1-3
    spatial dims, Numba on."""
    return type(a) is np.ndarray and a.dtype in _COMPILED and nd <= 3 and _jit.enabled()


def im2col(x, geom, value=0.0):
    """The array behind :class:`Im2col`: (N, C, *S) -> (N, C·∏k, ∏O), one copy out of a strided window view
    (compiled: written row by row, no padded copy)."""
    k, st, dl, pads, out = geom
    nd = len(k)
    if _compiled(x, nd):
        return conv_kernels().im2col(x, k, st, dl, pads[0::2], out, value)
    xp = xp_of(x)
    if any(pads):
        widths = ((0, 0), (0, 0)) + tuple((pads[2 * i], pads[2 * i + 1]) for i in range(nd))
        x = xp.pad(x, widths, mode="constant", constant_values=value)
    n, c = x.shape[:2]
    sp = x.strides[2:]
    shape = (n, c) + tuple(k) + tuple(out)
    strides = x.strides[:2] + tuple(sp[i] * dl[i] for i in range(nd)) + tuple(sp[i] * st[i] for i in range(nd))
    win = _as_strided(xp, x, shape, strides)
    return win.reshape(n, c * math.prod(k), math.prod(out))


def col2im(g, geom, in_shape, scratch=False):
    """The array behind :class:`Col2im`: (N, C·∏k, ∏O) patches summed back onto (N, C, *S), one strided slice
    add per kernel offset (∏k adds, no scatter), then the padding cropped off (compiled: each (n, c) plane summed
    in the cache, the same order of adds; ``scratch=True``: g is a temporary it may overwrite, see
    kernels/_numba/conv.py)."""
    k, st, dl, pads, out_sz = geom
    nd = len(k)
    if _compiled(g, nd):
        return conv_kernels().col2im(g, k, st, dl, pads[0::2], out_sz, in_shape, scratch)
    xp = xp_of(g)
    n, c = in_shape[:2]
    sizes = in_shape[2:]
    out = xp.zeros((n, c) + tuple(sizes[i] + pads[2 * i] + pads[2 * i + 1] for i in range(nd)), dtype=g.dtype)
    gk = g.reshape((n, c) + tuple(k) + tuple(out_sz))
    for pos in itertools.product(*(range(kk) for kk in k)):
        sl = tuple(slice(pos[i] * dl[i], pos[i] * dl[i] + st[i] * (out_sz[i] - 1) + 1, st[i]) for i in range(nd))
        out[(slice(None), slice(None)) + sl] += gk[(slice(None), slice(None)) + pos]
    if not any(pads):
        return out
    crop = tuple(slice(pads[2 * i], pads[2 * i] + sizes[i]) for i in range(nd))
    return out[(slice(None), slice(None)) + crop]


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
        return im2col(x, geom, value)

    @staticmethod
    def backward(ctx, g):
        return Col2im.apply(g, geom=ctx.geom, in_shape=ctx.in_shape)


class Col2im(Op):
    """Adjoint of im2col: sum every patch entry back onto the pixel it was read from (any number of spatial dims)."""

    @staticmethod
    def forward(ctx, g, geom, in_shape):
        ctx.geom = geom
        return col2im(g, geom, in_shape)

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


def _product(a, b):
    """``a @ b`` (batched) for the convolution: NumPy float32/float64 through BLAS with the thread count its size
    warrants (small products stay on one thread); NumPy float16/bfloat16 in float32 with a float32 result (NumPy
    has no fast half-precision product; the caller rounds once at the end); CuPy as it is."""
    if type(a) is not np.ndarray:
        return xp_of(a).matmul(a, b)
    if a.dtype.itemsize < 4:
        a, b = a.astype(np.float32), b.astype(np.float32)
    macs = max(a.size * b.shape[-1], b.size * a.shape[-2])  # M·K·N times the batch
    return blas_product(macs, np.matmul, a, b)


class ConvNd(Op):
    """N-d cross-correlation (conv1d/2d/3d) as im2col and one batched product each way, on raw arrays.

    x (N, C, *S), w (C_out, C/G, *k), optional b (C_out,), ``geom`` as :class:`Im2col`, ``groups`` G ->
    y (N, C_out, *O) with, per group g, Y[n, g] = W[g] (C_out/G, C/G·∏k) @ cols[n, g] (C/G·∏k, ∏O) and
    y += b. Backward: dcols = W[g]ᵀ @ dY[n, g], summed back onto dx by col2im (∏k strided slice adds);
    dW = Σ_n (cols[n] @ dY[n]ᵀ)ᵀ (the stacked products, summed over the batch); db = Σ_{n, *O} dY.
    The products keep im2col's (N, K, ∏O) layout: copying it into one (K, N·∏O) matrix costs more than the
    batched products lose (measured at the CNN's shapes). Small planes on the compiled kernels (∏O at most
    kernels/_numba/conv.py's SMALL_OUTPUT, groups == 1: the 8x8 CNN's 4x4 layer) are the exception: im2col
    writes (K, ∏O·N) directly (batch last: runs of N contiguous elements) and each way is one product (N
    products of 16 columns each cost more in BLAS calls than they compute), with dY transposed to
    (C_out, ∏O·N), y back to NC* with the bias added on the way, and db summed along dY's rows. A recorded backward
    (create_graph) is written with Tensor ops instead, so second derivatives work.

    Example: ``ConvNd.apply(x, w, geom=((3, 3), (1, 1), (1, 1), (1, 1, 1, 1), (28, 28)), groups=1)``.
    """

    saves = (0, 1)

    @staticmethod
    def forward(ctx, x, w, b=None, *, geom, groups):
        ctx.geom, ctx.groups, ctx.in_shape = geom, groups, x.shape
        dtype = x.dtype
        if type(x) is np.ndarray and x.dtype not in _COMPILED and x.dtype.name in _HALF and _jit.enabled():
            x = x.astype(np.float32)  # half precision: the products run in float32 anyway (an exact conversion)
        n, cout, npos = x.shape[0], w.shape[0], math.prod(geom[4])
        needs = getattr(ctx, "needs_input_grad", ())  # set only when the op is recorded
        ctx.by_batch = groups == 1 and _compiled(x, len(geom[0])) and npos <= conv_kernels().SMALL_OUTPUT
        if ctx.by_batch:
            k, st, dl, pads, out = geom
            conv = conv_kernels()
            cols = conv.im2col(x, k, st, dl, pads[0::2], out, batch_last=True)  # (C·∏k, ∏O·N)
            yt = _product(w.reshape(cout, -1), cols)  # (C_out, ∏O·N)
            bias = None if b is None else b.astype(yt.dtype, copy=False)
            y = conv.transpose(yt.reshape(cout * npos, n), bias, npos)  # back to NC*, the bias added on the way
            ctx.cols = cols if len(needs) > 1 and needs[1] else None
            return y.astype(dtype, copy=False).reshape((n, cout) + tuple(geom[4]))
        cols = im2col(x, geom)  # (N, C·∏k, ∏O)
        kc = cols.shape[1]
        if groups == 1:
            y = _product(w.reshape(cout, kc), cols)
        else:
            y = _product(w.reshape(groups, cout // groups, kc // groups), cols.reshape(n, groups, kc // groups, npos))
        y = y.reshape(n, cout * npos)
        if b is not None:  # one bias row of C_out·∏O: NumPy's loop runs along it (a (C_out, 1) broadcast: ~1.5-2x)
            y += xp_of(y).repeat(b.astype(y.dtype, copy=False), npos)
        y = y.reshape(n, cout, npos).astype(dtype, copy=False)
        ctx.cols = cols if len(needs) > 1 and needs[1] else None  # for dW; not kept when w needs no grad
        return y.reshape((n, cout) + tuple(geom[4]))

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        needs = ctx.needs_input_grad
        geom, groups = ctx.geom, ctx.groups
        n, cout, nd = g.shape[0], g.shape[1], len(geom[0])
        kg, npos = w.shape[1] * math.prod(geom[0]), math.prod(geom[4])
        if is_grad_enabled():  # create_graph: the same formulas as differentiable Tensor ops
            db = g.sum(dim=(0,) + tuple(range(2, 2 + nd))) if len(needs) > 2 and needs[2] else None
            gm = g.reshape(n, groups, cout // groups, npos)
            wm = w.reshape(groups, cout // groups, kg)
            dx = dw = None
            if needs[0]:
                dcols = (wm.transpose(-1, -2) @ gm).reshape(n, groups * kg, npos)
                dx = Col2im.apply(dcols, geom=geom, in_shape=ctx.in_shape)
            if needs[1]:
                cols = Im2col.apply(x, geom=geom).reshape(n, groups, kg, npos)
                dw = (gm @ cols.transpose(-1, -2)).sum(0).reshape(w.shape)
            return (dx, dw) if len(needs) == 2 else (dx, dw, db)
        wd = w._data
        if ctx.by_batch:
            return _small_backward(ctx, g, wd, needs)
        xp = xp_of(g._data)
        gm = g._data.reshape(n, groups, cout // groups, npos)
        dx = dw = None
        db = _bias_grad(g, n, cout, npos) if len(needs) > 2 and needs[2] else None
        if needs[0]:
            wt = wd.reshape(groups, cout // groups, kg).transpose(0, 2, 1)
            dcols = _product(wt[0] if groups == 1 else wt, gm[:, 0] if groups == 1 else gm)
            dx = g._wrap_const(
                col2im(dcols.reshape(n, groups * kg, npos), geom, ctx.in_shape, scratch=True).astype(
                    wd.dtype, copy=False
                )
            )
        if needs[1]:
            cols = ctx.cols.reshape(n, groups, kg, npos)
            # (cols @ dYᵀ) summed over the batch, then transposed: the faster operand order for BLAS here
            dwt = _product(cols, gm.transpose(0, 1, 3, 2)).sum(0)  # (G, K/G, C_out/G)
            dw = g._wrap_const(
                xp.ascontiguousarray(dwt.transpose(0, 2, 1)).reshape(wd.shape).astype(wd.dtype, copy=False)
            )
        return (dx, dw) if len(needs) == 2 else (dx, dw, db)


def _bias_grad(g, n, cout, npos):
    """db = Σ_{n, *O} dY for a plain backward: summed over the batch first (one pass down N rows of C_out·∏O),
    then along each channel's ∏O (contiguous rows), which NumPy does ~3x faster than one reduction over the
    (0, 2) axes of (N, C_out, ∏O)."""
    gd = g._data.reshape(n, cout * npos)
    if gd.dtype.itemsize < 4:  # half precision: summed in float32, rounded once
        gd = gd.astype(np.float32)
    if type(gd) is np.ndarray:  # without ndarray.sum's Python layer
        db = np.add.reduce(np.add.reduce(gd, axis=0).reshape(cout, npos), axis=1)
    else:
        db = gd.sum(axis=0).reshape(cout, npos).sum(axis=1)
    return g._wrap_const(db.astype(g._data.dtype, copy=False))


def _small_backward(ctx, g, wd, needs):
    """ConvNd's plain backward for its one-product layout (ctx.by_batch): dY as (C_out, ∏O·N), then
    dcols = Wᵀ dY (C·∏k, ∏O·N) summed back by the compiled col2im, dW = dY colsᵀ (one product) and
    db = Σ dY along its rows."""
    n, cout, npos = g.shape[0], g.shape[1], math.prod(ctx.geom[4])
    gd = g._data
    if gd.dtype.itemsize < 4:  # half precision: the products run in float32
        gd = gd.astype(np.float32)
    conv = conv_kernels()
    gt = conv.transpose(gd.reshape(n, cout * npos)).reshape(cout, npos * n)
    dx = dw = db = None
    if needs[0]:
        k, st, dl, pads, out = ctx.geom
        dcols = _product(wd.reshape(cout, -1).T, gt)  # (C·∏k, ∏O·N)
        dx = conv.col2im(dcols, k, st, dl, pads[0::2], out, ctx.in_shape, True, batch_last=True)
        dx = g._wrap_const(dx.astype(wd.dtype, copy=False))
    if needs[1]:
        # (cols dYᵀ)ᵀ: BLAS runs this operand order ~1.5x faster than dY colsᵀ at the 8x8 CNN's shapes
        dwt = _product(ctx.cols, gt.T)  # (C·∏k, C_out)
        dw = g._wrap_const(np.ascontiguousarray(dwt.T).reshape(wd.shape).astype(wd.dtype, copy=False))
    if len(needs) > 2 and needs[2]:
        db = g._wrap_const(np.add.reduce(gt, axis=1).astype(g._data.dtype, copy=False))
    return (dx, dw) if len(needs) == 2 else (dx, dw, db)
