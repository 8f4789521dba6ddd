"""The convolution op (ops.ConvNd: im2col + batched products each way) and relu's bitwise backward, against
float64 NumPy references, finite differences and, where it imports, PyTorch."""

import itertools
import os

import numpy as np
import pytest

import conch
import conch.nn.functional as F
from conch.autograd import gradcheck, gradgradcheck

DEVICE = os.environ.get("CONCH_TEST_DEVICE", "cpu")  # as conftest's device fixture


def _np(t):
    return t.detach().cpu().numpy()


def _ref_conv(x, w, b, stride, pad, dil, groups):
    """Direct float64 cross-correlation, one output position at a time (no im2col): (N, C, *S) -> (N, Co, *O)."""
    nd = x.ndim - 2
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0)) + tuple((p, p) for p in pad))
    n, c = x.shape[:2]
    co, cg, *ks = w.shape
    out = [(x.shape[2 + i] - dil[i] * (ks[i] - 1) - 1) // stride[i] + 1 for i in range(nd)]
    y = np.zeros((n, co, *out))
    per = co // groups
    for o in itertools.product(*(range(v) for v in out)):
        for j in range(co):
            gi = j // per
            win = x[
                (slice(None), slice(gi * cg, (gi + 1) * cg))
                + tuple(slice(o[i] * stride[i], o[i] * stride[i] + dil[i] * (ks[i] - 1) + 1, dil[i]) for i in range(nd))
            ]
            y[(slice(None), j) + o] = (win * w[j].astype(np.float64)).reshape(n, -1).sum(1)
    if b is not None:
        y += b.reshape((1, co) + (1,) * nd)
    return y


# (input shape, weight shape, stride, padding, dilation, groups): odd sizes, 1-D/2-D/3-D, groups, dilation
CASES = [
    ((2, 3, 7), (4, 3, 3), (2,), (1,), (1,), 1),
    ((3, 2, 5, 7), (5, 2, 3, 2), (1, 2), (1, 0), (1, 1), 1),
    ((2, 4, 6, 5), (6, 2, 3, 3), (2, 1), (1, 2), (2, 1), 2),
    ((1, 3, 9, 4), (3, 1, 1, 3), (3, 1), (0, 1), (1, 1), 3),
    ((2, 2, 4, 5, 3), (3, 2, 2, 3, 1), (1, 2, 1), (1, 0, 1), (1, 1, 2), 1),
]
_FN = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}


def _args(case, rng, dtype=np.float64):
    xs, ws, s, p, d, g = case
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype)
    return x, w, b, s, p, d, g


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv_forward_matches_direct_float64(case, bias):
    x, w, b, s, p, d, g = _args(case, np.random.default_rng(1), np.float32)
    b = b if bias else None
    tb = None if b is None else conch.tensor(b, device=DEVICE)
    y = _FN[x.ndim](conch.tensor(x, device=DEVICE), conch.tensor(w, device=DEVICE), tb, s, p, d, g)
    ref = _ref_conv(x, w, b, s, p, d, g)
    np.testing.assert_allclose(_np(y), ref, rtol=1e-5, atol=1e-5)
    assert y.dtype == conch.float32


@pytest.mark.parametrize("case", CASES)
def test_conv_gradcheck_float64(case):
    x, w, b, s, p, d, g = _args(case, np.random.default_rng(2))
    fn = _FN[x.ndim]
    args = [conch.tensor(a, requires_grad=True, device=DEVICE) for a in (x, w, b)]
    assert gradcheck(lambda xx, ww, bb: fn(xx, ww, bb, s, p, d, g), args)


@pytest.mark.parametrize("case", CASES[:3])
def test_conv_backward_matches_float64_reference(case):
    """dx, dW, db for a random upstream gradient against the reference's own vector-Jacobian products (the
    adjoint identity <dY, conv(x)> summed over x, W, b), computed by finite-free linearity: dW[j] from the
    reference with a one-hot weight, dx from the reference against one-hot inputs."""
    rng = np.random.default_rng(3)
    x, w, b, s, p, d, g = _args(case, rng)
    fn = _FN[x.ndim]
    y_ref = _ref_conv(x, w, b, s, p, d, g)
    dy = rng.standard_normal(y_ref.shape)
    tx, tw, tb = (conch.tensor(a, requires_grad=True, device=DEVICE) for a in (x, w, b))
    fn(tx, tw, tb, s, p, d, g).backward(conch.tensor(dy, device=DEVICE))
    # the conv is linear in x (w fixed) and in w (x fixed): each gradient entry is <dy, conv(one-hot)>
    dw = np.zeros_like(w)
    for idx in np.ndindex(w.shape):
        e = np.zeros_like(w)
        e[idx] = 1.0
        dw[idx] = (dy * _ref_conv(x, e, None, s, p, d, g)).sum()
    dx = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = 1.0
        dx[idx] = (dy * _ref_conv(e, w, None, s, p, d, g)).sum()
    np.testing.assert_allclose(_np(tw.grad), dw, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(_np(tx.grad), dx, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(_np(tb.grad), dy.sum(axis=(0,) + tuple(range(2, dy.ndim))), rtol=1e-10)


def test_conv_second_derivatives():
    """create_graph backward goes through Tensor ops: gradgradcheck in float64."""
    rng = np.random.default_rng(4)
    x, w, b, s, p, d, g = _args(CASES[2], rng)
    args = [conch.tensor(a, requires_grad=True, device=DEVICE) for a in (x, w, b)]
    assert gradgradcheck(lambda xx, ww, bb: F.conv2d(xx, ww, bb, s, p, d, g), args)


def test_conv_only_weight_needs_grad():
    """The CNN's first layer: an input that needs no gradient gets none, the weight's is still right."""
    rng = np.random.default_rng(5)
    x, w, b, s, p, d, g = _args(CASES[1], rng)
    tx, tw = conch.tensor(x, device=DEVICE), conch.tensor(w, requires_grad=True, device=DEVICE)
    F.conv2d(tx, tw, None, s, p, d, g).sum().backward()
    assert tx.grad is None
    ones = np.ones_like(_ref_conv(x, w, None, s, p, d, g))
    dw = np.array([(ones * _ref_conv(x, np.eye(w.size)[i].reshape(w.shape), None, s, p, d, g)).sum()
                   for i in range(w.size)]).reshape(w.shape)  # fmt: skip
    np.testing.assert_allclose(_np(tw.grad), dw, rtol=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_backward_bits_match_where(dtype):
    """relu's backward is where(y > 0, g, 0) bit for bit: NaN in g dropped where y <= 0, -0.0 kept where y > 0."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((5, 7, 3)).astype(dtype)
    x[0, 0, 0] = 0.0
    g = rng.standard_normal(x.shape).astype(dtype)
    g[x <= 0] = np.nan  # must not leak through
    g[1, 1, 1], x[1, 1, 1] = -0.0, 1.0
    t = conch.tensor(x, requires_grad=True, device=DEVICE)
    conch.relu(t).backward(conch.tensor(g, device=DEVICE))
    expect = np.where(x > 0, g, dtype(0))
    assert np.array_equal(_np(t.grad).view(np.uint8), expect.view(np.uint8))


def test_linear_relu_backward_drops_nan_upstream_where_off():
    """Linear + ReLU (fused into one matmul epilogue where the backend has one) gives finite gradients when the
    upstream gradient is NaN or inf only where the unit is off, as PyTorch's threshold_backward."""
    rng = np.random.default_rng(7)
    x, w, b = rng.standard_normal((6, 5)), rng.standard_normal((4, 5)), rng.standard_normal(4)
    model = conch.nn.Sequential(conch.nn.Linear(5, 4), conch.nn.ReLU()).to(DEVICE)
    with conch.no_grad():
        model[0].weight.copy_(conch.tensor(w.astype(np.float32), device=DEVICE))
        model[0].bias.copy_(conch.tensor(b.astype(np.float32), device=DEVICE))
    z = x @ w.T + b
    g = np.ones(z.shape)
    g[z <= 0] = np.nan
    g[(z <= 0) & (np.arange(z.size).reshape(z.shape) % 2 == 0)] = np.inf
    t = conch.tensor(x.astype(np.float32), requires_grad=True, device=DEVICE)
    model(t).backward(conch.tensor(g.astype(np.float32), device=DEVICE))
    dz = np.where(z > 0, g, 0.0)
    np.testing.assert_allclose(_np(t.grad), dz @ w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_np(model[0].weight.grad), dz.T @ x, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_np(model[0].bias.grad), dz.sum(0), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------------- PyTorch


@pytest.mark.parametrize("case", CASES)
def test_conv_forward_backward_match_torch(case):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    x, w, b, s, p, d, g = _args(case, rng, np.float32)
    fn, tfn = _FN[x.ndim], getattr(torch.nn.functional, _FN[x.ndim].__name__)
    cx, cw, cb = (conch.tensor(a, requires_grad=True, device=DEVICE) for a in (x, w, b))
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    y, ty = fn(cx, cw, cb, s, p, d, g), tfn(tx, tw, tb, s, p, d, g)
    dy = rng.standard_normal(ty.shape).astype(np.float32)
    y.backward(conch.tensor(dy, device=DEVICE))
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(_np(y), ty.detach().numpy(), rtol=1e-4, atol=1e-5)
    for c, t in ((cx, tx), (cw, tw), (cb, tb)):
        np.testing.assert_allclose(_np(c.grad), t.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_conv_half_precision_keeps_dtype(dtype):
    """Half inputs: float32 products, one rounding; output and gradients in the input's dtype."""
    rng = np.random.default_rng(8)
    x, w, b, s, p, d, g = _args(CASES[1], rng, np.float32)
    dt = getattr(conch, dtype)
    cx, cw, cb = (conch.tensor(a, device=DEVICE).to(dt).requires_grad_() for a in (x, w, b))
    y = F.conv2d(cx, cw, cb, s, p, d, g)
    assert y.dtype == dt
    xr, wr, br = (_np(t.float()) for t in (cx, cw, cb))  # the rounded inputs, so only the output rounding differs
    np.testing.assert_allclose(_np(y.float()), _ref_conv(xr, wr, br, s, p, d, g), rtol=2e-2, atol=2e-2)
    y.float().sum().backward()
    assert cx.grad.dtype == dt and cw.grad.dtype == dt and cb.grad.dtype == dt
