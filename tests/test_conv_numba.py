"""The compiled convolution and pooling kernels (kernels/_numba/conv.py) on both CPU paths, against float64 loops.

Each kernel is checked against an independent float64 reference written as explicit window loops (``ref_*``
below), on odd and power-of-two sizes, non-contiguous inputs, padding, strides, dilation, ceil_mode, 1-3
spatial dims, NaN and -inf where pooling defines them, float32/float64 (and float16/bfloat16 through float32),
and the compiled path against the NumPy reference path; gradients by gradcheck in float64 and against the
reference's adjoint; PyTorch parity in separate tests.
"""

import itertools
import math

import numpy as np
import pytest

import conch
import conch.nn.functional as F
from conch.autograd import gradcheck, gradgradcheck
from conch.kernels import _jit, _threads
from conch.ops import nn as onn

RNG = np.random.default_rng


def _need_numba():
    if not _jit._probe():
        pytest.skip("Numba is not importable here or CONCH_NUMBA=0: this compares the compiled path with NumPy's")


def _out_size(size, k, s, p_before, p_after, d):
    return (size + p_before + p_after - d * (k - 1) - 1) // s + 1


def ref_im2col(x, k, s, d, pads, value=0.0):
    """(N, C, *S) float64 -> (N, C·∏k, ∏O) by explicit loops over windows and offsets (pads: before, after)."""
    nd = len(k)
    n, c, *size = x.shape
    o = [_out_size(size[i], k[i], s[i], pads[2 * i], pads[2 * i + 1], d[i]) for i in range(nd)]
    cols = np.full((n, c, math.prod(k), math.prod(o)), value, dtype=np.float64)
    for r, off in enumerate(itertools.product(*map(range, k))):
        for t, win in enumerate(itertools.product(*map(range, o))):
            pos = [win[i] * s[i] + off[i] * d[i] - pads[2 * i] for i in range(nd)]
            if all(0 <= pos[i] < size[i] for i in range(nd)):
                cols[:, :, r, t] = x[(slice(None), slice(None)) + tuple(pos)]
    return cols.reshape(n, c * math.prod(k), math.prod(o)), tuple(o)


def ref_col2im(cols, k, s, d, pads, in_shape):
    """The adjoint of ref_im2col: every entry added onto the input position it was read from (float64)."""
    nd = len(k)
    n, c, *size = in_shape
    o = [_out_size(size[i], k[i], s[i], pads[2 * i], pads[2 * i + 1], d[i]) for i in range(nd)]
    g = cols.astype(np.float64).reshape(n, c, math.prod(k), math.prod(o))
    out = np.zeros(in_shape)
    for r, off in enumerate(itertools.product(*map(range, k))):
        for t, win in enumerate(itertools.product(*map(range, o))):
            pos = [win[i] * s[i] + off[i] * d[i] - pads[2 * i] for i in range(nd)]
            if all(0 <= pos[i] < size[i] for i in range(nd)):
                out[(slice(None), slice(None)) + tuple(pos)] += g[:, :, r, t]
    return out


# (input shape, kernel, stride, dilation, pads (before, after per dim)): "same" runs, odd and power-of-two
# sizes, strides, dilation, asymmetric padding, 1-D and 3-D
GEOMS = [
    ((2, 3, 8, 8), (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),
    ((3, 2, 7, 9), (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),
    ((2, 3, 9, 11), (3, 2), (2, 3), (2, 1), (1, 1, 0, 1)),
    ((1, 2, 6, 5), (2, 2), (1, 1), (1, 1), (0, 1, 0, 1)),  # padding="same" with an even kernel
    ((2, 2, 5, 5), (5, 5), (1, 1), (1, 1), (2, 2, 2, 2)),  # windows wider than half the input
    ((2, 1, 4, 16), (1, 3), (1, 1), (1, 2), (0, 0, 2, 2)),
    ((2, 3, 17), (3,), (2,), (1,), (1, 1)),
    ((1, 2, 4, 5, 6), (2, 3, 2), (1, 2, 1), (1, 1, 2), (1, 1, 0, 0, 1, 1)),
]


def _geom(shape, k, s, d, pads):
    size = shape[2:]
    o = tuple(_out_size(size[i], k[i], s[i], pads[2 * i], pads[2 * i + 1], d[i]) for i in range(len(k)))
    return (k, s, d, pads, o)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,k,s,d,pads", GEOMS)
def test_im2col_col2im_match_loops(shape, k, s, d, pads, dtype, cpu_path):
    rng = RNG(0)
    x = rng.standard_normal((shape[0], shape[1] * 2) + shape[2:]).astype(dtype)[:, ::2]  # not contiguous
    geom = _geom(shape, k, s, d, pads)
    want, o = ref_im2col(x.astype(np.float64), k, s, d, pads)
    assert o == geom[4]
    cols = onn.im2col(x, geom)
    assert cols.dtype == dtype and cols.shape == want.shape
    np.testing.assert_array_equal(cols, want.astype(dtype))  # a copy: exact
    assert np.isneginf(onn.im2col(x, geom, value=-np.inf)[np.isneginf(ref_im2col(x, k, s, d, pads, -np.inf)[0])]).all()
    g = rng.standard_normal(cols.shape).astype(dtype)
    ref = ref_col2im(g, k, s, d, pads, x.shape)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    for scratch in (False, True):
        gi = g.copy()
        got = onn.col2im(gi, geom, x.shape, scratch=scratch)
        assert got.dtype == dtype and got.shape == x.shape
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)
        if not scratch:
            np.testing.assert_array_equal(gi, g)  # the caller's array is left alone


@pytest.mark.parametrize("shape,k,s,d,pads", GEOMS)
def test_compiled_im2col_col2im_equal_numpy_path(shape, k, s, d, pads):
    """The compiled kernels give the NumPy path's bits: the same copies, the same order of adds."""
    _need_numba()
    rng = RNG(1)
    x = rng.standard_normal(shape).astype(np.float32)
    geom = _geom(shape, k, s, d, pads)
    g = rng.standard_normal((shape[0], shape[1] * math.prod(k), math.prod(geom[4]))).astype(np.float32)
    prev = _jit.set_enabled(True)
    try:
        c1, d1 = onn.im2col(x, geom), onn.col2im(g.copy(), geom, shape, scratch=True)
        _jit.set_enabled(False)
        c0, d0 = onn.im2col(x, geom), onn.col2im(g, geom, shape)
    finally:
        _jit.set_enabled(prev)
    np.testing.assert_array_equal(c1, c0)
    np.testing.assert_array_equal(d1, d0)


# small planes (at most SMALL_OUTPUT output positions), as the 8x8 CNN's second layer and odd ones
SMALL_GEOMS = [
    ((64, 16, 4, 4), (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),
    ((3, 5, 7, 7), (3, 3), (2, 2), (1, 1), (1, 1, 1, 1)),
    ((5, 2, 17), (3,), (2,), (1,), (1, 1)),
    ((2, 3, 2, 3, 4), (2, 2, 3), (1, 1, 1), (1, 1, 1), (0, 1, 0, 1, 1, 1)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,k,s,d,pads", SMALL_GEOMS)
def test_batch_last_im2col_col2im_match_loops(shape, k, s, d, pads, dtype):
    """The one-product layout (C·∏k, ∏O·N) of the compiled kernels: the loops' patches with the batch moved
    last (a copy: exact), -inf padding, and col2im its adjoint (the float64 loops to rounding, and the
    (N, C·∏k, ∏O) col2im of the same entries bit for bit: the same order of adds)."""
    _need_numba()
    conv = _jit.family("conv")
    rng = RNG(14)
    x = rng.standard_normal((shape[0], shape[1] * 2) + shape[2:]).astype(dtype)[:, ::2]  # not contiguous
    k_, s_, d_, pads_, o = _geom(shape, k, s, d, pads)
    n, c = shape[:2]
    want, _ = ref_im2col(x.astype(np.float64), k, s, d, pads)  # (N, C·∏k, ∏O)
    to_last = lambda a: a.transpose(1, 2, 0).reshape(a.shape[1], -1)  # noqa: E731  (N, K, P) -> (K, P·N)
    cols = conv.im2col(x, k, s, d, pads[0::2], o, batch_last=True)
    assert cols.dtype == dtype and cols.shape == (c * math.prod(k), math.prod(o) * n)
    np.testing.assert_array_equal(cols, to_last(want).astype(dtype))
    low = conv.im2col(x, k, s, d, pads[0::2], o, value=-np.inf, batch_last=True)
    np.testing.assert_array_equal(low, to_last(ref_im2col(x, k, s, d, pads, -np.inf)[0]).astype(dtype))
    g = rng.standard_normal(want.shape).astype(dtype)
    got = conv.col2im(to_last(g), k, s, d, pads[0::2], o, x.shape, batch_last=True)
    assert got.dtype == dtype and got.shape == x.shape
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(got, ref_col2im(g, k, s, d, pads, x.shape), rtol=tol, atol=tol)
    np.testing.assert_array_equal(got, conv.col2im(g, k, s, d, pads[0::2], o, x.shape))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(512, 64), (64, 256), (37, 13), (8, 8), (9, 17), (1, 5), (5, 1), (0, 3)])
def test_transpose_matches_numpy(shape, dtype):
    """The tiled transpose (whole 8 x 8 tiles and ragged edges), with and without the per-row-group bias, on
    non-contiguous inputs; without a bias nothing is added (-0.0 stays -0.0)."""
    _need_numba()
    conv = _jit.family("conv")
    rng = RNG(15)
    a = rng.standard_normal((shape[0], shape[1] * 2)).astype(dtype)[:, ::2]
    a[:, :1] = -0.0
    got = conv.transpose(a)
    assert got.dtype == dtype and got.flags.c_contiguous
    np.testing.assert_array_equal(got, a.T)
    assert np.signbit(got[0]).all()
    group = 4 if shape[0] % 4 == 0 else 1
    b = rng.standard_normal(shape[0] // group).astype(dtype)
    want = a.astype(np.float64) + np.repeat(b, group)[:, None]
    np.testing.assert_array_equal(conv.transpose(a, b, group), want.astype(dtype).T)  # one rounding of a + b


def ref_conv(x, w, b, s, pads, d, groups):
    """Cross-correlation in float64 from ref_im2col: per group W[g] @ cols[g] + b."""
    nd = x.ndim - 2
    cols, o = ref_im2col(x.astype(np.float64), w.shape[2:], s, d, pads)
    n, cout = x.shape[0], w.shape[0]
    cols = cols.reshape(n, groups, -1, math.prod(o))
    wm = w.astype(np.float64).reshape(groups, cout // groups, -1)
    y = np.einsum("gok,ngkp->ngop", wm, cols).reshape((n, cout) + o)
    return y + (0 if b is None else b.astype(np.float64).reshape((cout,) + (1,) * nd))


CONVS = [  # (x shape, w shape, stride, padding, dilation, groups)
    ((4, 1, 28, 28), (16, 1, 3, 3), 1, 1, 1, 1),
    ((3, 16, 7, 7), (32, 16, 3, 3), 1, 1, 1, 1),
    ((2, 4, 9, 8), (6, 2, 3, 2), (2, 1), (1, 0), (1, 2), 2),
    ((2, 3, 16, 16), (4, 3, 5, 5), 2, 2, 1, 1),
    ((2, 3, 5, 6, 7), (4, 3, 2, 3, 2), (1, 2, 1), 1, (1, 1, 2), 1),
    # small planes (at most SMALL_OUTPUT positions): the one-product layout, as the 8x8 CNN's second layer
    ((3, 16, 4, 4), (32, 16, 3, 3), 1, 1, 1, 1),
    ((2, 3, 7, 7), (4, 3, 3, 3), 2, 1, 1, 1),
    ((2, 3, 17), (4, 3, 3), 2, 1, 1, 1),
    ((2, 4, 3, 5), (6, 2, 2, 2), 1, 0, 1, 2),  # small but grouped: the batched products
]


def _conv(x, w, b, s, p, d, groups):
    return {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[x.ndim](x, w, b, s, p, d, groups)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("xs,ws,s,p,d,groups", CONVS)
def test_conv_forward_backward_match_float64(xs, ws, s, p, d, groups, dtype, cpu_path):
    rng = RNG(2)
    nd = len(xs) - 2
    xa, wa = rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)
    ba = rng.standard_normal(ws[0]).astype(dtype)
    x, w, b = (conch.tensor(a, requires_grad=True) for a in (xa, wa, ba))
    st, dl, pp = ((v,) * nd if isinstance(v, int) else v for v in (s, d, p))
    pads = tuple(q for v in pp for q in (v, v))
    want = ref_conv(xa, wa, ba, st, pads, dl, groups)
    y = _conv(x, w, b, s, p, d, groups)
    tol = 2e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y.detach().numpy(), want, rtol=tol, atol=tol * 10)
    g = rng.standard_normal(want.shape)
    (y * conch.tensor(g.astype(dtype))).sum().backward()
    # the adjoints in float64: dx = col2im(Wᵀ g), dW = g colsᵀ, db = Σ g
    n, cout = xs[0], ws[0]
    gm = g.reshape(n, groups, cout // groups, -1)
    wm = wa.astype(np.float64).reshape(groups, cout // groups, -1)
    dcols = np.einsum("gok,ngop->ngkp", wm, gm).reshape(n, -1, gm.shape[-1])
    cols, _ = ref_im2col(xa.astype(np.float64), ws[2:], st, dl, pads)
    dw = np.einsum("ngop,ngkp->gok", gm, cols.reshape(n, groups, -1, gm.shape[-1])).reshape(ws)
    np.testing.assert_allclose(x.grad.numpy(), ref_col2im(dcols, ws[2:], st, dl, pads, xs), rtol=tol, atol=tol * 10)
    np.testing.assert_allclose(w.grad.numpy(), dw, rtol=tol, atol=tol * 100)
    np.testing.assert_allclose(b.grad.numpy(), g.sum(axis=(0,) + tuple(range(2, 2 + nd))), rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_conv_half_precision_rounds_once(dtype, cpu_path):
    rng = RNG(3)
    xa, wa = rng.standard_normal((2, 3, 9, 8)), rng.standard_normal((4, 3, 3, 3))
    dt = getattr(conch, dtype)
    x, w = conch.tensor(xa, dtype=dt), conch.tensor(wa, dtype=dt)
    y = F.conv2d(x, w, padding=1)
    assert y.dtype == dt
    # the float32 computation of the rounded operands, rounded once
    xr, wr = x.float().numpy().astype(np.float64), w.float().numpy().astype(np.float64)
    want = conch.tensor(ref_conv(xr, wr, None, (1, 1), (1, 1, 1, 1), (1, 1), 1).astype(np.float32)).to(dt)
    np.testing.assert_allclose(y.float().numpy(), want.float().numpy(), rtol=1e-2, atol=1e-2)


def test_conv_gradcheck_and_second_derivatives(cpu_path):
    rng = RNG(4)
    x = conch.tensor(rng.standard_normal((1, 2, 5, 6)), requires_grad=True)
    w = conch.tensor(rng.standard_normal((3, 2, 3, 3)), requires_grad=True)
    assert gradcheck(lambda a, b: F.conv2d(a, b, padding=1), (x, w))
    assert gradgradcheck(lambda a, b: F.conv2d(a, b, stride=2, padding=1) ** 2, (x, w))


def test_conv_paths_agree():
    """The compiled path's training-step results agree with the NumPy path's to float32 rounding."""
    _need_numba()
    rng = RNG(5)
    xa, wa = rng.standard_normal((8, 16, 14, 14)).astype(np.float32), rng.standard_normal((32, 16, 3, 3))
    wa = wa.astype(np.float32)
    res = {}
    for path in (True, False):
        prev = _jit.set_enabled(path)
        try:
            x, w = conch.tensor(xa, requires_grad=True), conch.tensor(wa, requires_grad=True)
            y = F.max_pool2d(F.conv2d(x, w, padding=1), 2)
            y.sum().backward()
            res[path] = (y.detach().numpy(), x.grad.numpy(), w.grad.numpy())
        finally:
            _jit.set_enabled(prev)
    for a, b in zip(res[True], res[False], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------- pooling


def _pool_geom(size, k, s, p, d, ceil_mode):
    out = []
    for i in range(len(k)):
        num = size[i] + 2 * p[i] - d[i] * (k[i] - 1) - 1
        o = (-(-num // s[i]) if ceil_mode else num // s[i]) + 1
        if ceil_mode and (o - 1) * s[i] >= size[i] + p[i]:
            o -= 1
        out.append(o)
    return tuple(out)


def ref_max_pool(x, k, s, p, d, ceil_mode):
    """Max pooling in float64 by explicit windows: values and the flat index of each window's first maximum
    (a NaN counts as larger than any number, the first NaN wins; padding is not a candidate)."""
    nd = len(k)
    lead, size = x.shape[:-nd], x.shape[-nd:]
    o = _pool_geom(size, k, s, p, d, ceil_mode)
    xf = x.reshape((-1,) + size).astype(np.float64)
    out = np.empty((xf.shape[0],) + o)
    idx = np.empty(out.shape, dtype=np.int64)
    for q in range(xf.shape[0]):
        for win in itertools.product(*map(range, o)):
            best, at = None, None
            for off in itertools.product(*map(range, k)):
                pos = tuple(win[i] * s[i] + off[i] * d[i] - p[i] for i in range(nd))
                if not all(0 <= pos[i] < size[i] for i in range(nd)):
                    continue
                v = xf[(q,) + pos]
                if best is None or v > best or (np.isnan(v) and not np.isnan(best)):
                    best, at = v, int(np.ravel_multi_index(pos, size))
            out[(q,) + win], idx[(q,) + win] = best, at
    return out.reshape(lead + o), idx.reshape(lead + o)


def ref_avg_pool(x, k, s, p, ceil_mode, include_pad, divisor):
    """Average pooling in float64 by explicit windows with PyTorch's divisors."""
    nd = len(k)
    lead, size = x.shape[:-nd], x.shape[-nd:]
    o = _pool_geom(size, k, s, p, (1,) * nd, ceil_mode)
    xf = x.reshape((-1,) + size).astype(np.float64)
    out = np.empty((xf.shape[0],) + o)
    for win in itertools.product(*map(range, o)):
        sl, full = [], 1
        for i in range(nd):
            start = win[i] * s[i] - p[i]
            end = min(start + k[i], size[i] + p[i])
            full *= end - start
            sl.append(slice(max(start, 0), min(end, size[i])))
        block = xf[(slice(None),) + tuple(sl)]
        div = divisor or (full if include_pad else block[0].size)
        out[(slice(None),) + win] = block.reshape(xf.shape[0], -1).sum(1) / div
    return out.reshape(lead + o)


POOLS = [  # (shape, kernel, stride, padding, dilation, ceil_mode)
    ((2, 3, 8, 8), (2, 2), (2, 2), (0, 0), (1, 1), False),  # the CNN's 2x2 tiles
    ((2, 3, 9, 7), (2, 2), (2, 2), (0, 0), (1, 1), False),  # odd sizes: a border in no window
    ((2, 3, 9, 7), (2, 2), (2, 2), (0, 0), (1, 1), True),  # ceil_mode: partial windows
    ((2, 2, 16, 13), (3, 3), (2, 2), (1, 1), (1, 1), False),
    ((1, 2, 11, 10), (3, 2), (1, 2), (1, 0), (2, 1), True),
    ((2, 2, 15), (4,), (3,), (2,), (1,), True),
    ((1, 2, 5, 6, 7), (2, 3, 2), (2, 1, 2), (1, 1, 0), (1, 1, 2), False),
    ((3, 2, 5, 5), (2, 2), (2, 2), (0, 0), (1, 1), False),  # narrow rows (2 windows), odd sizes
    ((64, 4, 4, 4), (2, 2), (2, 2), (0, 0), (1, 1), False),  # the 8x8 CNN's second pooling, fewer channels
]


def _max_pool(x, k, s, p, d, ceil_mode, return_indices=False):
    fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[len(k)]
    if len(k) == 1:
        k, s, p, d = k[0], s[0], p[0], d[0]
    return fn(x, k, s, p, d, ceil_mode, return_indices)


def _avg_pool(x, k, s, p, ceil_mode, include_pad, divisor):
    if len(k) == 1:
        return F.avg_pool1d(x, k[0], s[0], p[0], ceil_mode, include_pad)
    fn = F.avg_pool2d if len(k) == 2 else F.avg_pool3d
    return fn(x, k, s, p, ceil_mode, include_pad, divisor)


def _scatter_ref(g, idx, shape):
    nd = len(shape) - 2
    planes = int(np.prod(shape[:2]))
    want = np.zeros((planes, int(np.prod(shape[2:]))))
    rows = np.repeat(np.arange(planes), int(np.prod(idx.shape[2:])))
    np.add.at(want, (rows, idx.reshape(planes, -1).ravel()), g.reshape(planes, -1).ravel())
    assert nd >= 1
    return want.reshape(shape)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("indices", [False, True])
@pytest.mark.parametrize("shape,k,s,p,d,ceil_mode", POOLS)
def test_max_pool_matches_windows(shape, k, s, p, d, ceil_mode, indices, dtype, cpu_path):
    rng = RNG(6)
    x = rng.integers(-3, 4, (shape[0], shape[1] * 2) + shape[2:]).astype(dtype)[:, 1::2]  # ties, not contiguous
    x[(0, 0) + (1,) * len(k)] = np.nan  # a NaN window
    x[(0, 1) + (2,) * len(k)] = -np.inf
    xt = conch.tensor(x, requires_grad=True)
    res = _max_pool(xt, k, s, p, d, ceil_mode, indices)
    y, idx = res if indices else (res, None)
    want, first = ref_max_pool(x, k, s, p, d, ceil_mode)
    np.testing.assert_array_equal(y.detach().numpy(), want.astype(dtype))
    if indices:
        np.testing.assert_array_equal(idx.numpy(), first)
    g = rng.standard_normal(want.shape)
    (y * conch.tensor(g.astype(dtype))).sum().backward()
    tol = 1e-6 if dtype == np.float32 else 1e-14  # overlapping windows add in the input's dtype
    np.testing.assert_allclose(xt.grad.numpy(), _scatter_ref(g.astype(dtype), first, x.shape), rtol=tol, atol=tol)


@pytest.mark.parametrize("shape,k,s,p,d,ceil_mode", POOLS[3:])
def test_all_minus_inf_windows_take_the_first_input_element(shape, k, s, p, d, ceil_mode):
    """A window of -inf (padding included) returns its first element inside the input, as PyTorch (the NumPy
    path's im2col argmax may name a padding position there: a case only the compiled path gets right)."""
    _need_numba()
    prev = _jit.set_enabled(True)
    try:
        x = np.full(shape, -np.inf)
        y, idx = _max_pool(conch.tensor(x), k, s, p, d, ceil_mode, True)
    finally:
        _jit.set_enabled(prev)
    want, first = ref_max_pool(x, k, s, p, d, ceil_mode)
    np.testing.assert_array_equal(y.numpy(), want)
    np.testing.assert_array_equal(idx.numpy(), first)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_max_pool_half_precision(dtype, cpu_path):
    rng = RNG(7)
    x = conch.tensor(rng.integers(-4, 5, (2, 3, 9, 8)).astype(np.float32), dtype=getattr(conch, dtype))
    x.requires_grad_(True)
    y = F.max_pool2d(x, 2)
    want, first = ref_max_pool(x.detach().float().numpy(), (2, 2), (2, 2), (0, 0), (1, 1), False)
    assert y.dtype == x.dtype
    np.testing.assert_array_equal(y.detach().float().numpy(), want)
    y.float().sum().backward()
    np.testing.assert_array_equal(x.grad.float().numpy(), _scatter_ref(np.ones(want.shape), first, x.shape))


@pytest.mark.parametrize("shape,k,s,p,d,ceil_mode", POOLS[:5])
def test_max_pool_gradcheck_and_second_derivatives(shape, k, s, p, d, ceil_mode, cpu_path):
    x = conch.tensor(RNG(8).standard_normal((1, 2) + shape[2:]), requires_grad=True)
    fn = lambda t: _max_pool(t, k, s, p, d, ceil_mode)  # noqa: E731
    assert gradcheck(fn, (x,))
    assert gradgradcheck(lambda t: fn(t) ** 2, (x,))


# avg_pool1d has no divisor_override (as PyTorch): the 1-D geometry goes without one
AVG = [
    pool + div for pool in POOLS for div in [(True, None), (False, None), (True, 3)] if len(pool[1]) > 1 or not div[1]
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,k,s,p,d,ceil_mode,include_pad,divisor", AVG)
def test_avg_pool_matches_windows(shape, k, s, p, d, ceil_mode, include_pad, divisor, dtype, cpu_path):
    rng = RNG(9)
    x = rng.standard_normal((shape[0], shape[1] * 2) + shape[2:]).astype(dtype)[:, ::2]
    xt = conch.tensor(x, requires_grad=True)
    y = _avg_pool(xt, k, s, p, ceil_mode, include_pad, divisor)
    want = ref_avg_pool(x, k, s, p, ceil_mode, include_pad, divisor)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(y.detach().numpy(), want, rtol=tol, atol=tol)
    # the adjoint: <avg(x), g> = <x, dx> for every x, so dx = the gradient of Σ avg(x)·g by finite-free linearity
    g = rng.standard_normal(want.shape)
    (y * conch.tensor(g.astype(dtype))).sum().backward()
    basis = np.eye(x.size).reshape((x.size,) + x.shape)
    jac = np.stack(
        [ref_avg_pool(e, k, s, p, ceil_mode, include_pad, divisor).ravel() for e in basis[:: max(1, x.size // 64)]]
    )
    np.testing.assert_allclose(
        xt.grad.numpy().reshape(-1)[:: max(1, x.size // 64)], jac @ g.ravel(), rtol=tol, atol=tol
    )


def test_avg_pool_gradcheck_and_second_derivatives(cpu_path):
    x = conch.tensor(RNG(10).standard_normal((1, 2, 7, 6)), requires_grad=True)
    fn = lambda t: F.avg_pool2d(t, 3, 2, 1, True, False)  # noqa: E731
    assert gradcheck(fn, (x,))
    assert gradgradcheck(lambda t: fn(t) ** 2, (x,))


def test_max_pool_paths_agree_bitwise():
    """Max pooling is exact on both paths; the compiled and NumPy paths give the same bits."""
    _need_numba()
    x = RNG(11).standard_normal((4, 8, 28, 28)).astype(np.float32)
    outs = []
    for on in (True, False):
        prev = _jit.set_enabled(on)
        try:
            xt = conch.tensor(x, requires_grad=True)
            y, i = F.max_pool2d(xt, 3, 2, 1, return_indices=True)
            y.sum().backward()
            outs.append((y.detach().numpy(), i.numpy(), xt.grad.numpy()))
        finally:
            _jit.set_enabled(prev)
    for a, b in zip(*outs, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("side", [8, 4])  # the runs kernel and the small planes' one-product layout
def test_empty_batch(side, cpu_path):
    x = conch.tensor(np.zeros((0, 3, side, side)), requires_grad=True)
    w = conch.tensor(RNG(16).standard_normal((4, 3, 3, 3)), requires_grad=True)
    y = F.conv2d(x, w, padding=1)
    z = F.max_pool2d(y, 2).sum() + F.max_pool2d(y, 3, 2, 1).sum() + F.avg_pool2d(y, 3, 2, 1).sum()
    z.backward()
    assert y.shape == (0, 4, side, side) and x.grad.shape == x.shape
    np.testing.assert_array_equal(w.grad.numpy(), np.zeros(w.shape))


# ---------------------------------------------------------------- threads


@pytest.fixture
def two_threads(monkeypatch):
    before = conch.get_num_threads()
    monkeypatch.setattr(_threads, "MIN_PARALLEL", 64)
    monkeypatch.setenv("CONCH_ADAPT_THREADS", "0")
    monkeypatch.setitem(_threads._load, "adapt", False)
    yield
    conch.set_num_threads(before)


def test_results_do_not_depend_on_threads(two_threads, cpu_path):
    """Every kernel splits between planes: the same bits on 1 and 2 threads, and the 2-thread run really split."""
    rng = RNG(12)
    xa = rng.standard_normal((4, 6, 14, 14)).astype(np.float32)
    wa = rng.standard_normal((5, 6, 3, 3)).astype(np.float32)
    res = []
    for n in (1, 2):
        conch.set_num_threads(n)
        before = _threads.SPLITS[0]
        x, w = conch.tensor(xa, requires_grad=True), conch.tensor(wa, requires_grad=True)
        h = F.conv2d(x, w, padding=1)
        y = F.max_pool2d(h, 2) + F.avg_pool2d(h, 3, 2, 1)[..., :7, :7] + F.max_pool2d(h, 3, 2, 1)[..., :7, :7]
        y = F.conv2d(y[..., :4, :4], w[:, :5], padding=1)  # a small plane: the one-product layout
        (y.sum() + F.max_pool2d(y, 2).sum()).backward()  # and 2x2 pooling's narrow-row backward
        res.append((y.detach().numpy(), x.grad.numpy(), w.grad.numpy()))
        if n == 2 and cpu_path == "numba":
            assert _threads.SPLITS[0] > before, "nothing was split on 2 threads"
    for a, b in zip(*res, strict=True):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- the device under test, and PyTorch


def test_device_matches_cpu_path(device):
    """On the device under test (the simulated GPU in CI, whose arrays keep their own path) the results agree
    with the CPU's compiled path."""
    rng = RNG(13)
    xa, wa = rng.standard_normal((2, 3, 10, 10)).astype(np.float32), rng.standard_normal((4, 3, 3, 3))
    wa = wa.astype(np.float32)
    out = []
    for dev in ("cpu", device):
        x, w = conch.tensor(xa, device=dev), conch.tensor(wa, device=dev)
        h = F.conv2d(x, w, padding=1)
        out.append([t.cpu().numpy() for t in (h, F.max_pool2d(h, 2), F.avg_pool2d(h, 3, 2, 1))])
    for a, b in zip(*out, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape,k,s,p,d,ceil_mode", POOLS[:5])
def test_pooling_matches_torch(shape, k, s, p, d, ceil_mode, cpu_path):
    torch = pytest.importorskip("torch")
    rng = RNG(14)
    x = rng.integers(-4, 5, shape).astype(np.float32) + rng.standard_normal(shape).astype(np.float32) * 0.25
    xc, xt = conch.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    yc, ic = F.max_pool2d(xc, k, s, p, d, ceil_mode, return_indices=True)
    yt, it = torch.nn.functional.max_pool2d(xt, k, s, p, d, ceil_mode, return_indices=True)
    np.testing.assert_array_equal(yc.detach().numpy(), yt.detach().numpy())
    np.testing.assert_array_equal(ic.numpy(), it.numpy())
    ac = F.avg_pool2d(xc, k, s, p, ceil_mode, False)
    at = torch.nn.functional.avg_pool2d(xt, k, s, p, ceil_mode, False)
    np.testing.assert_allclose(ac.detach().numpy(), at.detach().numpy(), rtol=1e-6, atol=1e-6)
    g1, g2 = rng.standard_normal(tuple(yt.shape)).astype(np.float32), rng.standard_normal(tuple(at.shape))
    ((yc * conch.tensor(g1)).sum() + (ac * conch.tensor(g2.astype(np.float32))).sum()).backward()
    ((yt * torch.tensor(g1)).sum() + (at * torch.tensor(g2.astype(np.float32))).sum()).backward()
    np.testing.assert_allclose(xc.grad.numpy(), xt.grad.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("xs,ws,s,p,d,groups", CONVS)
def test_conv_matches_torch(xs, ws, s, p, d, groups, cpu_path):
    torch = pytest.importorskip("torch")
    rng = RNG(15)
    xa, wa = rng.standard_normal(xs).astype(np.float32), rng.standard_normal(ws).astype(np.float32)
    xc, wc = conch.tensor(xa, requires_grad=True), conch.tensor(wa, requires_grad=True)
    xt, wt = torch.tensor(xa, requires_grad=True), torch.tensor(wa, requires_grad=True)
    tf = {3: torch.nn.functional.conv1d, 4: torch.nn.functional.conv2d, 5: torch.nn.functional.conv3d}[len(xs)]
    yc, yt = _conv(xc, wc, None, s, p, d, groups), tf(xt, wt, None, s, p, d, groups)
    np.testing.assert_allclose(yc.detach().numpy(), yt.detach().numpy(), rtol=1e-4, atol=1e-4)
    g = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    (yc * conch.tensor(g)).sum().backward()
    (yt * torch.tensor(g)).sum().backward()
    np.testing.assert_allclose(xc.grad.numpy(), xt.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(wc.grad.numpy(), wt.grad.numpy(), rtol=1e-4, atol=1e-3)


# ---------------------------------------------------------------- the Conv2d/Conv3d modules' cached plans


@pytest.mark.parametrize(
    "mod,xs",
    [
        (lambda: conch.nn.Conv2d(16, 32, 3, padding=1), (5, 16, 4, 4)),
        (
            lambda: conch.nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding="valid", dilation=(1, 2), groups=2),
            (2, 4, 9, 8),
        ),
        (lambda: conch.nn.Conv2d(3, 4, 3, padding="same", bias=False), (2, 3, 7, 6)),
        (lambda: conch.nn.Conv3d(2, 3, 2, padding=1), (1, 2, 3, 4, 5)),
    ],
)
def test_conv_module_plan_equals_functional(mod, xs, cpu_path):
    """From the second call on a shape, a Conv2d/Conv3d goes straight to ops.ConvNd with the geometry it kept:
    the same bits as F.conv2d/conv3d, forward and gradients, for a new shape and dtype too (a plan per key)."""
    m = mod()
    f = F.conv2d if len(xs) == 4 else F.conv3d
    for shape, dtype in ((xs, np.float32), (xs, np.float32), ((3,) + xs[1:], np.float32), (xs, np.float64)):
        if dtype == np.float64:
            m = m.double()
        xa = RNG(16).standard_normal(shape).astype(dtype)
        outs = []
        for use_module in (True, False):
            x = conch.tensor(xa, requires_grad=True)
            m.zero_grad()
            if use_module:
                y = m(x)
            else:
                y = f(x, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups)
            (y * y).sum().backward()
            grads = [p.grad.numpy().copy() for p in m.parameters()]
            outs.append([y.detach().numpy(), x.grad.numpy()] + grads)
        for a, b in zip(*outs, strict=True):
            np.testing.assert_array_equal(a, b)
    assert len(m._plans) == 3  # (xs, float32), (3, ...) float32, (xs, float64)


def test_conv_module_plan_keeps_the_checks():
    """A plan is made only after F's checks passed, and a call that does not match one goes through them."""
    m = conch.nn.Conv2d(3, 4, 3)
    m(conch.randn(2, 3, 8, 8))
    with pytest.raises(RuntimeError, match="channels"):
        m(conch.randn(2, 5, 8, 8))
    with pytest.raises(RuntimeError, match="too small"):
        m(conch.randn(2, 3, 2, 2))
    with pytest.raises(RuntimeError, match="scalar type"):
        m(conch.randn(2, 3, 8, 8, dtype=conch.float64))
    assert len(m._plans) == 1


def test_conv_module_plan_steps_aside_under_autocast(cpu_path):
    """Under autocast a planned Conv2d goes through F again, which casts: the output has autocast's dtype."""
    m = conch.nn.Conv2d(3, 4, 3, padding=1)
    x = conch.randn(2, 3, 5, 5)
    m(x)
    m(x)  # planned
    with conch.autocast("cpu", dtype=conch.bfloat16):
        y = m(x)
        want = F.conv2d(x, m.weight, m.bias, padding=1)
    assert y.dtype == want.dtype == conch.bfloat16
    np.testing.assert_array_equal(y.detach().float().numpy(), want.detach().float().numpy())
    assert m(x).dtype == conch.float32  # and the plan again after it
