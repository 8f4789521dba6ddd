"""Every Tensor op in API.md: forward vs float64 NumPy, gradients by gradcheck, second derivatives by gradgradcheck."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes

import conch
from conch.autograd import gradcheck, gradgradcheck

HYP = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
BROADCAST = mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, min_side=1, max_side=4)


def rnd(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def mk(a, device, grad=True, dtype=conch.float64):
    return conch.tensor(np.asarray(a, dtype=np.float64), dtype=dtype, device=device, requires_grad=grad)


def npy(t):
    return t.detach().cpu().numpy()


def away_from_zero(a, gap=0.2):
    """Shift values away from 0 (kinks of abs/relu, poles of 1/x) so finite differences are valid."""
    return a + np.where(a >= 0, gap, -gap)


def positive(a):
    return np.abs(a) + 0.5


def assert_close(t, ref, rtol=1e-6, atol=1e-8):
    np.testing.assert_allclose(npy(t).astype(np.float64), ref, rtol=rtol, atol=atol)


# ---------------------------------------------------------------- unary ops

UNARY = {
    # name: (conch fn, float64 NumPy reference, domain map)
    "exp": (lambda t: t.exp(), np.exp, lambda a: a),
    "log": (lambda t: t.log(), np.log, positive),
    "sqrt": (lambda t: t.sqrt(), np.sqrt, positive),
    "rsqrt": (lambda t: t.rsqrt(), lambda a: 1 / np.sqrt(a), positive),
    "abs": (lambda t: t.abs(), np.abs, away_from_zero),
    "sin": (lambda t: t.sin(), np.sin, lambda a: a),
    "cos": (lambda t: t.cos(), np.cos, lambda a: a),
    "tanh": (lambda t: t.tanh(), np.tanh, lambda a: a),
    "sigmoid": (lambda t: t.sigmoid(), lambda a: 1 / (1 + np.exp(-a)), lambda a: a),
    "relu": (lambda t: t.relu(), lambda a: np.maximum(a, 0), away_from_zero),
    "neg": (lambda t: -t, np.negative, lambda a: a),
    "square": (lambda t: t.square(), np.square, lambda a: a),
    "pow3": (lambda t: t**3, lambda a: a**3, lambda a: a),
    "pow_half": (lambda t: t**0.5, np.sqrt, positive),
    "pow_neg": (lambda t: t**-1.5, lambda a: a**-1.5, positive),
    "pow0": (lambda t: t**0, np.ones_like, lambda a: a),
    "pow1": (lambda t: t**1, lambda a: a, lambda a: a),
    "rpow": (lambda t: 2.5**t, lambda a: 2.5**a, lambda a: a),
    "clamp": (lambda t: t.clamp(-0.5, 0.7), lambda a: np.clip(a, -0.5, 0.7), lambda a: a + 0.013),
    "clamp_min": (lambda t: t.clamp(min=0.1), lambda a: np.maximum(a, 0.1), lambda a: a + 0.013),
    "clamp_max": (lambda t: t.clamp(max=0.1), lambda a: np.minimum(a, 0.1), lambda a: a + 0.013),
}


@pytest.mark.parametrize("name", sorted(UNARY))
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 41)])
def test_unary_forward_and_grad(name, shape, device):
    fn, ref, dom = UNARY[name]
    a = dom(rnd(*shape))
    x = mk(a, device)
    assert_close(fn(x), ref(a))
    assert gradcheck(fn, (x,))


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_second_derivative(name, device):
    fn, _, dom = UNARY[name]
    assert gradgradcheck(fn, (mk(dom(rnd(2, 3)), device),))


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_non_contiguous_and_float32(name, device):
    fn, ref, dom = UNARY[name]
    a = dom(rnd(5, 4))
    x = mk(a, device)
    # transposed and strided views as inputs, and their gradients
    assert_close(fn(x.T), ref(a.T))
    assert_close(fn(x[:, ::2]), ref(a[:, ::2]))
    assert gradcheck(lambda t: fn(t.T[1:, ::2]), (x,))
    x32 = mk(a, device, dtype=conch.float32)
    y = fn(x32)
    assert y.dtype == conch.float32
    assert_close(y, ref(a), rtol=2e-6, atol=1e-6)


def test_unary_on_integers_gives_float(device):
    x = conch.tensor([1, 4, 9], device=device)
    for name in ("exp", "log", "sqrt", "rsqrt", "sin", "cos", "tanh", "sigmoid"):
        y = getattr(x, name)()
        assert y.dtype == conch.float32, name
        assert_close(y, UNARY[name][1](np.array([1.0, 4.0, 9.0])), rtol=1e-6)
    assert x.abs().dtype == conch.int64 and (-x).relu().dtype == conch.int64
    assert (-x).relu().tolist() == [0, 0, 0] and (-x).abs().tolist() == [1, 4, 9]


def test_activations_at_extremes(device):
    x = conch.tensor([-1e4, -50.0, 0.0, 50.0, 1e4], device=device)
    s = npy(x.sigmoid())
    assert np.all(np.isfinite(s))
    np.testing.assert_allclose(s, [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(npy(x.tanh()), [-1, -1, 0, 1, 1])
    np.testing.assert_array_equal(npy(x.relu()), [0, 0, 0, 50, 1e4])
    g = mk([-1e4, 0.0, 1e4], device)
    g.sigmoid().sum().backward()
    np.testing.assert_allclose(npy(g.grad), [0.0, 0.25, 0.0], atol=1e-12)


def test_sigmoid_relative_precision_for_negative_inputs(device):
    a = np.array([-20.0, -50.0, -80.0])
    for dt, rtol in ((conch.float32, 1e-5), (conch.float64, 1e-12)):
        s = npy(conch.tensor(a, dtype=dt, device=device).sigmoid()).astype(np.float64)
        np.testing.assert_allclose(s, 1 / (1 + np.exp(-a)), rtol=rtol)


def test_relu_and_clamp_gradient_at_boundaries(device):
    # PyTorch 2.14 conventions: relu'(0) = 0; clamp passes the gradient only where min < x < max
    x = mk([-1.0, 0.0, 2.0], device)
    x.relu().sum().backward()
    np.testing.assert_array_equal(npy(x.grad), [0, 0, 1])
    y = mk([-1.0, 0.0, 0.5, 1.0, 2.0], device)
    y.clamp(0.0, 1.0).sum().backward()
    np.testing.assert_array_equal(npy(y.grad), [0, 0, 1, 0, 0])


def test_clamp_with_tensor_bounds(device):
    a, lo, hi = rnd(3, 4), rnd(4, seed=1) - 0.5, rnd(3, 1, seed=2) + 0.5
    x = mk(a, device)
    assert_close(x.clamp(mk(lo, device, False), mk(hi, device, False)), np.minimum(np.maximum(a, lo), hi))


# ---------------------------------------------------------------- binary arithmetic

BINARY = {
    "add": (lambda a, b: a + b, np.add, lambda b: b),
    "sub": (lambda a, b: a - b, np.subtract, lambda b: b),
    "mul": (lambda a, b: a * b, np.multiply, lambda b: b),
    "div": (lambda a, b: a / b, np.divide, away_from_zero),
    "pow": (lambda a, b: a**b, np.power, lambda b: b),
    "maximum": (conch.maximum, np.maximum, lambda b: b),
    "minimum": (conch.minimum, np.minimum, lambda b: b),
}


@pytest.mark.parametrize("name", sorted(BINARY))
@HYP
@given(shapes=BROADCAST, seed=st.integers(0, 2**16))
def test_binary_broadcasting(name, shapes, seed, device):
    fn, ref, dom = BINARY[name]
    sa, sb = shapes.input_shapes
    a, b = rnd(*sa, seed=seed), dom(rnd(*sb, seed=seed + 1))
    if name == "pow":
        a = positive(a)
    if name in ("maximum", "minimum"):
        b = b + 0.05  # keep ties away from the finite-difference stencil
    x, y = mk(a, device), mk(b, device)
    out = fn(x, y)
    assert out.shape == np.broadcast_shapes(sa, sb)
    assert_close(out, ref(a, b))
    assert gradcheck(fn, (x, y))


@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_second_derivative(name, device):
    fn, _, dom = BINARY[name]
    a, b = rnd(3, 1, 4), dom(rnd(2, 1, seed=1))
    if name == "pow":
        a = positive(a)
    assert gradgradcheck(fn, (mk(a, device), mk(b + 0.05, device)))


@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_non_contiguous(name, device):
    fn, ref, dom = BINARY[name]
    a, b = rnd(4, 6), dom(rnd(6, 4, seed=1)) + 0.05
    if name == "pow":
        a = positive(a)
    x, y = mk(a, device), mk(b, device)
    assert_close(fn(x[:, ::2], y.T[:, ::2]), ref(a[:, ::2], b.T[:, ::2]))
    assert gradcheck(lambda s, t: fn(s[1:, ::2], t.T[1:, 1::2]), (x, y))


@pytest.mark.parametrize("odd", [1, 7, 123])
def test_binary_odd_shapes(odd, device):
    a, b = rnd(odd, 3), rnd(3, seed=1)
    x, y = mk(a, device), mk(b, device)
    assert_close(x * y + x / (y.abs() + 1) - y, a * b + a / (np.abs(b) + 1) - b)
    assert gradcheck(lambda s, t: s * t + s / (t.abs() + 1) - t, (x, y))


SCALAR_CASES = [
    (lambda t: t + 2.5, lambda a: a + 2.5),
    (lambda t: 2.5 + t, lambda a: 2.5 + a),
    (lambda t: t - 2, lambda a: a - 2),
    (lambda t: 2 - t, lambda a: 2 - a),
    (lambda t: t * 3, lambda a: a * 3),
    (lambda t: 3 * t, lambda a: 3 * a),
    (lambda t: t / 4, lambda a: a / 4),
    (lambda t: 4 / t, lambda a: 4 / a),
    (lambda t: t**2, lambda a: a**2),
    (lambda t: 2**t, lambda a: 2.0**a),
]


@pytest.mark.parametrize("k", range(len(SCALAR_CASES)))
def test_python_scalars_on_either_side(k, device):
    fn, ref = SCALAR_CASES[k]
    a = away_from_zero(rnd(3, 2))
    x = mk(a, device)
    assert_close(fn(x), ref(a))
    assert gradcheck(fn, (x,))
    assert gradgradcheck(fn, (x,))


def test_numpy_arrays_on_either_side(device):
    a, n = rnd(3, 1), rnd(4, seed=1)
    x = mk(a, device)
    for out, ref in [
        (x + n, a + n), (n + x, n + a), (x - n, a - n), (n - x, n - a),
        (x * n, a * n), (n * x, n * a), (x / (n + 5), a / (n + 5)), (n / (x + 5), n / (a + 5)),
    ]:  # fmt: skip
        assert isinstance(out, conch.Tensor)
        assert out.shape == (3, 4)
        assert_close(out, ref)
    (n * x).sum().backward()
    assert_close(x.grad, np.full((3, 1), n.sum()))


def test_comparisons(device):
    a, b = np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])
    x, y = mk(a, device, False), mk(b, device, False)
    for op, ref in [
        (x == y, a == b), (x != y, a != b), (x < y, a < b), (x <= y, a <= b), (x > y, a > b), (x >= y, a >= b),
        (x > 1.5, a > 1.5), (2 < x, 2 < a),
    ]:  # fmt: skip
        assert op.dtype == conch.bool and not op.requires_grad
        np.testing.assert_array_equal(npy(op), ref)


# ---------------------------------------------------------------- reductions

DIMS = [None, 0, -1, 1, (0, 2), (-1, 0), (0, 1, 2)]


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("name", ["sum", "mean", "var", "std", "var_biased", "amax", "amin"])
def test_reductions(name, dim, keepdim, device):
    a = rnd(3, 4, 5)
    ndim = None if dim is None else tuple(d % 3 for d in (dim if isinstance(dim, tuple) else (dim,)))
    refs = {
        "sum": lambda: a.sum(axis=ndim, keepdims=keepdim),
        "mean": lambda: a.mean(axis=ndim, keepdims=keepdim),
        "var": lambda: a.var(axis=ndim, ddof=1, keepdims=keepdim),
        "std": lambda: a.std(axis=ndim, ddof=1, keepdims=keepdim),
        "var_biased": lambda: a.var(axis=ndim, ddof=0, keepdims=keepdim),
        "amax": lambda: a.max(axis=ndim, keepdims=keepdim),
        "amin": lambda: a.min(axis=ndim, keepdims=keepdim),
    }

    def fn(t):
        if name == "var_biased":
            return t.var(dim, unbiased=False, keepdim=keepdim)
        return getattr(t, name)(dim=dim, keepdim=keepdim)

    x = mk(a, device)
    out = fn(x)
    ref = np.asarray(refs[name]())
    assert out.shape == ref.shape
    assert_close(out, ref)
    if dim in (None, -1, (0, 2)):  # gradients for a representative subset (all dim kinds)
        assert gradcheck(fn, (x,))
        assert gradgradcheck(lambda t: fn(t[:2, :2, :3]), (x,))


def test_reductions_non_contiguous(device):
    a = rnd(4, 6)
    x = mk(a, device)
    assert_close(x.T.sum(0), a.T.sum(0))
    assert_close(x[:, ::2].mean(-1), a[:, ::2].mean(-1))
    assert_close(x.T.var(1), a.T.var(1, ddof=1))
    assert gradcheck(lambda t: t.T[::2].std(0), (x,))


def test_sum_of_ints_and_bools(device):
    x = conch.tensor([[1, 2], [3, 4]], dtype=conch.int32, device=device)
    assert x.sum().dtype == conch.int64 and x.sum().item() == 10
    b = conch.tensor([True, True, False], device=device)
    assert b.sum().dtype == conch.int64 and b.sum().item() == 2


def test_half_precision_reductions_accumulate_in_float32(device):
    x = conch.ones(4096, dtype=conch.float16, device=device)
    assert x.sum().dtype == conch.float16
    assert x.sum().item() == 4096.0  # float16 accumulation would stop at 2048
    assert abs(conch.full((3000,), 0.1, dtype=conch.bfloat16, device=device).mean().item() - 0.1) < 1e-3


def test_amax_amin_ties_share_gradient(device):
    x = mk([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]], device)
    x.amax(1).sum().backward()
    np.testing.assert_allclose(npy(x.grad), [[0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]])
    y = mk([[1.0, 1.0, 3.0]], device)
    y.amin().backward()
    np.testing.assert_allclose(npy(y.grad), [[0.5, 0.5, 0]])


def test_max_min_whole_and_with_dim(device):
    a = rnd(3, 5)
    x = mk(a, device)
    assert_close(x.max(), a.max())
    assert_close(x.min(), a.min())
    v, i = x.max(1)
    assert_close(v, a.max(1))
    np.testing.assert_array_equal(npy(i), a.argmax(1))
    assert i.dtype == conch.int64
    r = x.min(dim=-2, keepdim=True)
    assert_close(r.values, a.min(0, keepdims=True))
    np.testing.assert_array_equal(npy(r.indices), a.argmin(0)[None])
    assert gradcheck(lambda t: t.max(1).values, (x,))
    assert gradcheck(lambda t: t.min(0)[0], (x,))
    assert gradgradcheck(lambda t: t.max() * t.min(), (x,))


def test_argmax_argmin(device):
    a = np.array([[1.0, 5.0, 5.0, 0.0], [7.0, 7.0, -1.0, -1.0]])
    x = mk(a, device, False)
    assert x.argmax().item() == a.argmax() and x.argmin().item() == a.argmin()
    np.testing.assert_array_equal(npy(x.argmax(1)), [1, 0])  # first of the ties, as NumPy and PyTorch
    np.testing.assert_array_equal(npy(x.argmin(-1)), [3, 2])
    np.testing.assert_array_equal(npy(x.argmax(0, keepdim=True)), [[1, 1, 0, 0]])
    assert conch.argmax(x, 1).dtype == conch.int64


def test_var_std_single_element_and_bias(device):
    a = rnd(2, 6)
    x = mk(a, device)
    assert_close(x.std(1, unbiased=False), a.std(1))
    assert_close(conch.var(x, 1), a.var(1, ddof=1))
    assert_close(conch.std(x), a.std(ddof=1))


# ---------------------------------------------------------------- softmax


def np_softmax(a, dim):
    e = np.exp(a - a.max(axis=dim, keepdims=True))
    return e / e.sum(axis=dim, keepdims=True)


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_softmax_log_softmax(dim, device):
    a = rnd(3, 7)
    x = mk(a, device)
    assert_close(x.softmax(dim), np_softmax(a, dim))
    assert_close(x.log_softmax(dim), np.log(np_softmax(a, dim)))
    assert_close(conch.softmax(x, dim), np_softmax(a, dim))
    assert_close(conch.log_softmax(x, dim), np.log(np_softmax(a, dim)))
    assert gradcheck(lambda t: t.softmax(dim), (x,))
    assert gradcheck(lambda t: t.log_softmax(dim), (x,))
    assert gradgradcheck(lambda t: t.softmax(dim), (x,))
    assert gradgradcheck(lambda t: t.log_softmax(dim), (x,))


@pytest.mark.parametrize("dtype", [conch.float32, conch.float64, conch.float16, conch.bfloat16])
def test_softmax_stable_with_large_inputs(dtype, device):
    a = np.array([[1e4, 0.0, -1e4], [1e4, 1e4, 1e4 - 1], [-1e4, -1e4, -1e4]])
    x = conch.tensor(a, dtype=dtype, device=device)
    sm, lsm = npy(x.softmax(1).float()), npy(x.log_softmax(1).float())
    assert np.all(np.isfinite(sm)) and np.all(np.isfinite(lsm))
    ref = np_softmax(npy(x.double()), 1)
    np.testing.assert_allclose(sm, ref, atol=2e-2 if dtype in (conch.float16, conch.bfloat16) else 1e-6)
    np.testing.assert_allclose(sm.sum(1), 1.0, rtol=1e-2)
    if dtype in (conch.float32, conch.float64):
        np.testing.assert_allclose(lsm[0], [0.0, -1e4, -2e4], rtol=1e-6)
    g = conch.tensor(a, dtype=conch.float64, device=device, requires_grad=True)
    g.log_softmax(1).sum().backward()
    assert np.all(np.isfinite(npy(g.grad)))


def test_softmax_non_contiguous(device):
    a = rnd(5, 4)
    x = mk(a, device)
    assert_close(x.T.softmax(-1), np_softmax(a.T, -1))
    assert gradcheck(lambda t: t.T[:, ::2].log_softmax(0), (x,))


# ---------------------------------------------------------------- shape ops

SHAPE_OPS = {
    "reshape": (lambda t: t.reshape(6, -1), lambda a: a.reshape(6, -1)),
    "reshape_tuple": (lambda t: t.reshape((-1, 4)), lambda a: a.reshape(-1, 4)),
    "view": (lambda t: t.view(2, 12), lambda a: a.reshape(2, 12)),
    "view_neg": (lambda t: t.view(-1), lambda a: a.reshape(-1)),
    "flatten": (lambda t: t.flatten(), lambda a: a.reshape(-1)),
    "flatten_1": (lambda t: t.flatten(1), lambda a: a.reshape(2, -1)),
    "flatten_0_1": (lambda t: t.flatten(0, 1), lambda a: a.reshape(6, 4)),
    "transpose": (lambda t: t.transpose(0, 2), lambda a: a.transpose(2, 1, 0)),
    "transpose_neg": (lambda t: t.transpose(-1, -2), lambda a: a.swapaxes(-1, -2)),
    "permute": (lambda t: t.permute(1, 2, 0), lambda a: a.transpose(1, 2, 0)),
    "permute_tuple": (lambda t: t.permute((2, 0, 1)), lambda a: a.transpose(2, 0, 1)),
    "mT": (lambda t: t.mT, lambda a: a.swapaxes(-1, -2)),
    "T": (lambda t: t[0].T, lambda a: a[0].T),
    "unsqueeze": (lambda t: t.unsqueeze(1), lambda a: a[:, None]),
    "unsqueeze_neg": (lambda t: t.unsqueeze(-1), lambda a: a[..., None]),
    "squeeze": (lambda t: t[:, :1].squeeze(), lambda a: a[:, 0]),
    "squeeze_dim": (lambda t: t[:, :1, :1].squeeze(1), lambda a: a[:, 0, :1]),
    "squeeze_noop": (lambda t: t.squeeze(0), lambda a: a),
    "expand": (lambda t: t[:, :1].expand(2, 3, 4), lambda a: np.broadcast_to(a[:, :1], (2, 3, 4))),
    "expand_new_dims": (lambda t: t[0, 0].expand(5, 4), lambda a: np.broadcast_to(a[0, 0], (5, 4))),
    "expand_neg": (lambda t: t[:, :, :1].expand(-1, -1, 3), lambda a: np.broadcast_to(a[:, :, :1], (2, 3, 3))),
    "contiguous": (lambda t: t.mT.contiguous(), lambda a: a.swapaxes(-1, -2)),
    "clone": (lambda t: t.clone(), lambda a: a),
}


@pytest.mark.parametrize("name", sorted(SHAPE_OPS))
def test_shape_ops(name, device):
    fn, ref = SHAPE_OPS[name]
    a = rnd(2, 3, 4)
    x = mk(a, device)
    out = fn(x)
    r = ref(a)
    assert out.shape == r.shape
    assert_close(out, r)
    assert gradcheck(fn, (x,))
    assert gradgradcheck(lambda t: fn(t) * fn(t), (x,))


def test_shape_function_forms(device):
    a = rnd(2, 3, 4)
    x = mk(a, device)
    assert_close(conch.reshape(x, (4, 6)), a.reshape(4, 6))
    assert_close(conch.flatten(x, 1), a.reshape(2, 12))
    assert_close(conch.transpose(x, 0, 1), a.swapaxes(0, 1))
    assert_close(conch.permute(x, (2, 1, 0)), a.transpose(2, 1, 0))
    assert_close(conch.unsqueeze(x, 0), a[None])
    assert_close(conch.squeeze(conch.unsqueeze(x, 0), 0), a)
    assert_close(conch.expand(x[:1], 3, 3, 4), np.broadcast_to(a[:1], (3, 3, 4)))


VIEWS = {
    "view": lambda t: t.view(6, 4),
    "reshape": lambda t: t.reshape(-1),
    "flatten": lambda t: t.flatten(),
    "transpose": lambda t: t.transpose(0, 1),
    "permute": lambda t: t.permute(2, 0, 1),
    "mT": lambda t: t.mT,
    "unsqueeze": lambda t: t.unsqueeze(0),
    "squeeze": lambda t: t.unsqueeze(0).squeeze(0),
    "expand": lambda t: t.unsqueeze(0).expand(3, 2, 3, 4),
    "slice": lambda t: t[1:, ::2],
    "int": lambda t: t[0],
    "none_ellipsis": lambda t: t[None, ..., 1],
    "detach": lambda t: t.detach(),
}


@pytest.mark.parametrize("name", sorted(VIEWS))
def test_views_share_memory(name):
    # NumPy gives views for all of these, so conch does too (CPU: compare buffers directly)
    base = conch.zeros(2, 3, 4)
    v = VIEWS[name](base)
    assert np.shares_memory(v.numpy(), base.numpy())
    if name != "expand":
        v.numpy()[(0,) * v.ndim] = 7.0
        assert (base == 7.0).any().item()


def test_copies_where_numpy_copies():
    base = conch.zeros(3, 4)
    assert not np.shares_memory(base.T.reshape(-1).numpy(), base.numpy())  # non-contiguous reshape copies
    assert not np.shares_memory(base[conch.tensor([0, 1])].numpy(), base.numpy())  # advanced indexing copies
    assert not np.shares_memory(base.clone().numpy(), base.numpy())
    assert not np.shares_memory(base.T.contiguous().numpy(), base.numpy())
    assert base.contiguous() is base


def test_view_of_non_contiguous_raises_and_reshape_works(device):
    x = conch.zeros(3, 4, device=device).T
    with pytest.raises(RuntimeError, match=r"view size is not compatible.*Use \.reshape\(\.\.\.\) instead"):
        x.view(12)
    assert x.reshape(12).shape == (12,)


# ---------------------------------------------------------------- indexing

INDEXES = {
    "int": lambda x: 1,
    "neg_int": lambda x: -1,
    "slice": lambda x: slice(1, None),
    "step_slice": lambda x: (slice(None), slice(None, None, 2)),
    "neg_step": lambda x: (slice(None, None, -1), 1),
    "none": lambda x: (None, 0),
    "ellipsis": lambda x: (Ellipsis, 1),
    "mixed_basic": lambda x: (1, None, Ellipsis, slice(0, 3)),
    "int_tensor": lambda x: conch.tensor([2, 0, 2], device=x.device),
    "int_tensor_2d": lambda x: conch.tensor([[0, 1], [1, 1]], device=x.device),
    "int32_tensor": lambda x: conch.tensor([1, 0], dtype=conch.int32, device=x.device),
    "two_int_tensors": lambda x: (conch.tensor([0, 2, 2], device=x.device), conch.tensor([1, 1, 3], device=x.device)),
    "tensor_and_slice": lambda x: (slice(None), conch.tensor([3, 0, 3], device=x.device)),
    "bool_tensor": lambda x: conch.tensor([True, False, True], device=x.device),
    "bool_mask_full": lambda x: x.detach() > 0,
    "list": lambda x: [0, 0, 1],
}


def _np_index(idx):
    items = idx if isinstance(idx, tuple) else (idx,)
    out = tuple(npy(i) if isinstance(i, conch.Tensor) else i for i in items)
    return out if isinstance(idx, tuple) else out[0]


@pytest.mark.parametrize("name", sorted(INDEXES))
def test_getitem(name, device):
    a = rnd(3, 4, 5)[:, :, 1]  # (3, 4), sliced out of a bigger array
    x = mk(a, device)
    idx = INDEXES[name](x)
    out = x[idx]
    ref = a[_np_index(idx)]
    assert out.shape == ref.shape
    assert_close(out, ref)
    assert gradcheck(lambda t: t[idx], (x,))
    assert gradgradcheck(lambda t: t[idx] * t[idx], (x,))


def test_getitem_gradient_scatters_and_accumulates(device):
    x = mk(np.zeros(5), device)
    idx = conch.tensor([0, 0, 3, 3, 3, 1], device=device)
    (x[idx] * conch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], dtype=conch.float64, device=device)).sum().backward()
    np.testing.assert_array_equal(npy(x.grad), [3, 6, 0, 12, 0])
    y = mk(np.zeros((2, 3)), device)
    y[:, conch.tensor([1, 1], device=device)].sum().backward()
    np.testing.assert_array_equal(npy(y.grad), [[0, 2, 0], [0, 2, 0]])


def test_getitem_non_contiguous_source(device):
    a = rnd(4, 5)
    x = mk(a, device)
    assert_close(x.T[conch.tensor([4, 0])], a.T[[4, 0]])
    assert gradcheck(lambda t: t.T[::2][conch.tensor([1, 1, 0])], (x,))


SETITEMS = {
    "int": (1, 5.0),
    "slice": ((slice(None), slice(1, 3)), 2.0),
    "ellipsis": ((Ellipsis, 0), -1.0),
    "int_tensor": (conch.tensor([0, 2]), 3.0),
    "bool_tensor": (conch.tensor([True, False, True]), 4.0),
    "tensor_value": ((slice(None), 1), conch.tensor([7.0, 8.0, 9.0])),
    "broadcast_value": ((slice(0, 2),), conch.tensor([1.0, 2.0, 3.0, 4.0])),
    "numpy_value": (0, np.arange(4.0)),
}


@pytest.mark.parametrize("name", sorted(SETITEMS))
def test_setitem_no_grad(name, device):
    idx, val = SETITEMS[name]
    a = rnd(3, 4)
    x = conch.tensor(a, device=device)
    idx_d = (
        tuple(i.to(device) if isinstance(i, conch.Tensor) else i for i in idx)
        if isinstance(idx, tuple)
        else (idx.to(device) if isinstance(idx, conch.Tensor) else idx)
    )
    v0 = x._version[0]
    x[idx_d] = val.to(device) if isinstance(val, conch.Tensor) else val
    a[_np_index(idx)] = npy(val) if isinstance(val, conch.Tensor) else val
    assert_close(x, a, rtol=1e-6)
    assert x._version[0] > v0


def test_setitem_with_boolean_mask_from_comparison(device):
    x = conch.tensor([[1.0, -2.0], [-3.0, 4.0]], device=device)
    x[x < 0] = 0.0
    np.testing.assert_array_equal(npy(x), [[1, 0], [0, 4]])
    with conch.no_grad():
        w = conch.zeros(3, requires_grad=True, device=device)
        w[1] = 2.0
    np.testing.assert_array_equal(npy(w), [0, 2, 0])


# ---------------------------------------------------------------- joining, splitting, selecting


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_cat(dim, device):
    shapes = {0: [(1, 3), (4, 3), (2, 3)], 1: [(2, 1), (2, 4), (2, 2)], -1: [(2, 1), (2, 4), (2, 2)]}[dim]
    arrs = [rnd(*s, seed=i) for i, s in enumerate(shapes)]
    ts = [mk(a, device) for a in arrs]
    assert_close(conch.cat(ts, dim), np.concatenate(arrs, dim))
    assert gradcheck(lambda *t: conch.cat(list(t), dim), ts)
    assert gradgradcheck(lambda *t: conch.cat(list(t), dim) ** 2, ts)


def test_cat_promotes_and_non_contiguous(device):
    a, b = rnd(3, 2), rnd(2, 3, seed=1)
    out = conch.cat([mk(a, device, dtype=conch.float32), mk(b, device).T], 1)
    assert out.dtype == conch.float64
    assert_close(out, np.concatenate([a, b.T], 1), rtol=1e-6)
    i = conch.cat([conch.tensor([1, 2], device=device), conch.tensor([3], dtype=conch.int32, device=device)])
    assert i.dtype == conch.int64 and i.tolist() == [1, 2, 3]


@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_stack(dim, device):
    arrs = [rnd(2, 3, seed=i) for i in range(3)]
    ts = [mk(a, device) for a in arrs]
    assert_close(conch.stack(ts, dim), np.stack(arrs, dim))
    assert gradcheck(lambda *t: conch.stack(list(t), dim), ts)
    assert gradgradcheck(lambda *t: conch.stack(list(t), dim) ** 2, ts[:2])


@pytest.mark.parametrize("arg,dim", [(2, 0), (3, 1), ([1, 4, 2], 1), ((2, 5), -1), (7, 1)])
def test_split(arg, dim, device):
    a = rnd(5, 7)
    x = mk(a, device)
    parts = conch.split(x, arg, dim)
    n = a.shape[dim]
    if isinstance(arg, int):
        bounds = list(range(arg, n, arg))
    else:
        bounds = np.cumsum(arg)[:-1].tolist()
    refs = np.split(a, bounds, axis=dim)
    assert len(parts) == len(refs)
    for p, r in zip(parts, refs):
        assert_close(p, r)
    assert tuple(p.shape for p in x.split(arg, dim)) == tuple(r.shape for r in refs)
    assert gradcheck(lambda t: conch.split(t, arg, dim), (x,))
    assert gradgradcheck(lambda t: tuple(p * p for p in conch.split(t, arg, dim)), (x,))


def test_split_only_some_parts_used(device):
    x = mk(rnd(6, 2), device)
    a, _, c = x.split(2)
    (a.sum() + 2 * c.sum()).backward()
    np.testing.assert_array_equal(npy(x.grad), [[1, 1]] * 2 + [[0, 0]] * 2 + [[2, 2]] * 2)


def test_chunk_unbind(device):
    a = rnd(5, 3)
    x = mk(a, device)
    for p, r in zip(x.chunk(3), np.array_split(a, [2, 4])):
        assert_close(p, r)
    for p, r in zip(x.unbind(1), a.T):
        assert_close(p, r)
    assert gradcheck(lambda t: t.unbind(0), (x,))


def test_where(device):
    a, b, c = rnd(3, 4), rnd(4, seed=1), rnd(3, 1, seed=2) > 0
    x, y = mk(a, device), mk(b, device)
    cond = conch.tensor(c, device=device)
    assert_close(conch.where(cond, x, y), np.where(c, a, b))
    assert_close(x.where(cond, y), np.where(c, a, b))
    assert_close(conch.where(cond, x, 0.5), np.where(c, a, 0.5))
    assert_close(conch.where(cond, 2.0, y), np.where(c, 2.0, b))
    assert gradcheck(lambda s, t: conch.where(cond, s, t), (x, y))
    assert gradgradcheck(lambda s, t: conch.where(cond, s * s, t * s), (x, y))
    assert conch.where(cond, x.float(), 0.5).dtype == conch.float32


def test_maximum_minimum_ties_split_gradient(device):
    x, y = mk([1.0, 2.0, 3.0], device), mk([1.0, 5.0, 0.0], device)
    conch.maximum(x, y).sum().backward()
    np.testing.assert_array_equal(npy(x.grad), [0.5, 0, 1])
    np.testing.assert_array_equal(npy(y.grad), [0.5, 1, 0])
    x.grad = y.grad = None
    conch.minimum(x, y).sum().backward()
    np.testing.assert_array_equal(npy(x.grad), [0.5, 1, 0])
    assert_close(conch.maximum(x, 2.5), [2.5, 2.5, 3.0])
    assert x.maximum(y).shape == (3,)


def test_masked_fill(device):
    a, m = rnd(3, 4), rnd(4, seed=1) > 0
    x = mk(a, device)
    mask = conch.tensor(m, device=device)
    assert_close(x.masked_fill(mask, -1.5), np.where(m, -1.5, a))
    assert_close(conch.masked_fill(x, mask, float("-inf")), np.where(m, -np.inf, a))
    assert gradcheck(lambda t: t.masked_fill(mask, 2.0), (x,))
    assert gradgradcheck(lambda t: (t * t).masked_fill(mask, 0.0), (x,))
    x.masked_fill(mask, 3.0).sum().backward()
    np.testing.assert_array_equal(npy(x.grad), np.broadcast_to(~m, (3, 4)).astype(float))


# ---------------------------------------------------------------- matmul

MATMUL_SHAPES = [
    ((5,), (5,)),  # dot
    ((5,), (5, 3)),  # vector @ matrix
    ((4, 5), (5,)),  # matrix @ vector
    ((4, 5), (5, 3)),
    ((2, 4, 5), (5, 3)),
    ((4, 5), (2, 5, 3)),
    ((2, 4, 5), (2, 5, 3)),  # batched
    ((2, 1, 4, 5), (3, 5, 2)),  # broadcast batch dims
    ((5,), (2, 5, 3)),
    ((2, 3, 4, 5), (5,)),
    ((1, 7), (7, 1)),
]


@pytest.mark.parametrize("sa,sb", MATMUL_SHAPES)
def test_matmul_forms(sa, sb, device):
    a, b = rnd(*sa), rnd(*sb, seed=1)
    x, y = mk(a, device), mk(b, device)
    ref = np.matmul(a, b)
    for out in (x @ y, conch.matmul(x, y), x.matmul(y)):
        assert out.shape == ref.shape
        assert_close(out, ref, rtol=1e-10)
    assert gradcheck(lambda s, t: s @ t, (x, y))


@pytest.mark.parametrize("sa,sb", [((5,), (5,)), ((5,), (5, 3)), ((4, 5), (5,)), ((2, 1, 3, 2), (3, 2, 2))])
def test_matmul_second_derivative(sa, sb, device):
    assert gradgradcheck(lambda s, t: s @ t, (mk(rnd(*sa), device), mk(rnd(*sb, seed=1), device)))


def test_matmul_non_contiguous_odd_shapes_and_dtypes(device):
    a, b = rnd(7, 123), rnd(7, 1, seed=1)
    x, y = mk(a, device), mk(b, device)
    assert_close(x.T @ y, a.T @ b, rtol=1e-10)
    assert_close(x[::2].T @ y[::2], a[::2].T @ b[::2], rtol=1e-10)
    assert gradcheck(lambda s, t: s[:3, ::10].T @ t[:3], (x, y))
    m = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    for dt in (conch.float16, conch.bfloat16, conch.float32):
        t = conch.tensor(m, dtype=dt, device=device)
        out = t @ t.T
        assert out.dtype == dt
        np.testing.assert_allclose(npy(out.float()), m @ m.T, rtol=5e-2, atol=5e-2)
    # mixed float dtypes do not promote: PyTorch raises (issue #13), and so does conch
    with pytest.raises(RuntimeError, match="expected m1 and m2 to have the same dtype, but got: float != double"):
        conch.tensor(m, device=device) @ conch.tensor(m.T, dtype=conch.float64, device=device)
    i = conch.tensor([[1, 2]], device=device) @ conch.tensor([[3], [4]], device=device)
    assert i.dtype == conch.int64 and i.item() == 11
    np_left = m @ conch.tensor(m.T, device=device)
    assert isinstance(np_left, conch.Tensor) and np_left.shape == (3, 3)


# ---------------------------------------------------------------- in-place


def test_inplace_without_graph_is_true_inplace(device):
    x = conch.ones(2, 3, device=device)
    buf, v0 = x._data, x._version[0]
    x += 1
    x -= conch.tensor([0.5, 0.5, 0.5], device=device)
    x *= 4
    x /= 2
    assert x._data is buf and x._version[0] == v0 + 4
    np.testing.assert_array_equal(npy(x), np.full((2, 3), 3.0))
    x.add_(1).sub_(conch.ones(3, device=device), alpha=2).mul_(3).div_(2)
    np.testing.assert_array_equal(npy(x), np.full((2, 3), 3.0))
    assert x._version[0] == v0 + 8


def test_inplace_on_views_writes_through(device):
    x = conch.zeros(3, 4, device=device)
    row, col = x[1], x[:, 2]
    row += 1
    col *= 0
    col += 5
    ref = np.zeros((3, 4))
    ref[1] += 1
    ref[:, 2] = 5
    np.testing.assert_array_equal(npy(x), ref)
    assert row._version is x._version  # views share the version counter of their base


def test_inplace_in_graph_gives_correct_gradients(device):
    a = rnd(2, 3)
    x = mk(a, device)

    def f(t):
        y = t * 2
        y += t  # 3t
        y *= t  # 3t²
        y -= 1
        y /= 2  # (3t² - 1)/2
        return y

    assert_close(f(x), (3 * a**2 - 1) / 2)
    assert gradcheck(f, (x,))
    assert gradgradcheck(f, (x,))


def test_inplace_dtype_rules(device):
    i = conch.tensor([1, 2], device=device)
    with pytest.raises(RuntimeError, match="can't be cast"):
        i += 0.5
    f = conch.tensor([1.0, 2.0], device=device)
    f += conch.tensor([1, 1], device=device)  # int into float is fine
    np.testing.assert_array_equal(npy(f), [2, 3])
    h = conch.tensor([1.0], dtype=conch.float16, device=device)
    h += conch.tensor([1.0], dtype=conch.float64, device=device)  # same kind: cast down, as PyTorch
    assert h.dtype == conch.float16 and h.item() == 2.0
    with pytest.raises(RuntimeError, match=r"output with shape \[3\] doesn't match the broadcast shape \[2, 3\]"):
        z = conch.zeros(3, device=device)
        z += conch.ones(2, 3, device=device)


def test_set_helpers(device):
    x = conch.ones(3, device=device)
    v0 = x._version[0]
    x.zero_()
    x.fill_(2.0)
    x.copy_(conch.tensor([1.0, 2.0, 3.0], device=device))
    x.clamp_(max=2.5)
    x.masked_fill_(conch.tensor([True, False, False], device=device), -1.0)
    np.testing.assert_array_equal(npy(x), [-1, 2, 2.5])
    assert x._version[0] == v0 + 5


# ---------------------------------------------------------------- conversions and attributes


def test_attributes_and_conversions(device):
    a = rnd(2, 3)
    x = conch.tensor(a, dtype=conch.float32, device=device, requires_grad=True)
    assert x.shape == (2, 3) and x.ndim == 2 and x.dim() == 2 and x.numel() == 6
    assert x.size() == (2, 3) and x.size(-1) == 3 and x.size(0) == 2
    assert x.dtype == conch.float32 and x.device == device and x.is_leaf and x.grad_fn is None
    y = x * 2
    assert not y.is_leaf and y.grad_fn is not None and y.requires_grad
    assert x.detach().tolist() == npy(x).tolist()
    assert conch.tensor(2.5).item() == 2.5 and isinstance(conch.tensor(3).item(), int)
    assert x.float() is x
    for conv, dt in [(x.double, conch.float64), (x.half, conch.float16), (x.bfloat16, conch.bfloat16)]:
        z = conv()
        assert z.dtype == dt and z.requires_grad
    d = x.double()
    d.sum().backward()
    assert x.grad.dtype == conch.float32  # the gradient comes back in the leaf's dtype
    np.testing.assert_array_equal(npy(x.grad), np.ones((2, 3)))
    assert x.to(dtype=conch.float64).dtype == conch.float64 and x.to("cpu").device == "cpu"
    assert x.cpu().device == "cpu"
    with pytest.raises(RuntimeError, match="requires grad"):
        x.numpy()
    with pytest.raises(RuntimeError, match="6 elements cannot be converted"):
        x.item()
    assert float(conch.tensor([1.5])) == 1.5 and int(conch.tensor(4)) == 4
    assert len(x) == 2 and [r.shape for r in x] == [(3,), (3,)]


def test_dlpack_roundtrip_numpy():
    x = conch.arange(6.0).reshape(2, 3)
    a = np.from_dlpack(x)
    assert np.shares_memory(a, x.numpy())
    y = conch.from_dlpack(a)
    assert np.shares_memory(y.numpy(), a) and y.shape == (2, 3)
    np.testing.assert_array_equal(y.numpy(), np.arange(6.0).reshape(2, 3))


def test_module_level_functions_match_methods(device):
    a = positive(rnd(3, 4))
    x = mk(a, device, False)
    for name in ("exp", "log", "sqrt", "rsqrt", "abs", "sin", "cos", "tanh", "sigmoid", "relu"):
        assert_close(getattr(conch, name)(x), npy(getattr(x, name)()))
    assert_close(conch.sum(x, 1), a.sum(1))
    assert_close(conch.mean(x, (0, 1)), a.mean())
    assert_close(conch.amax(x, -1), a.max(-1))
    assert_close(conch.amin(x, 0, True), a.min(0, keepdims=True))
    assert_close(conch.max(x), a.max())
    assert_close(conch.min(x), a.min())
    assert conch.argmin(x).item() == a.argmin()
    assert_close(conch.pow(x, 2), a**2)
    assert_close(conch.clamp(x, 0.8, 1.2), np.clip(a, 0.8, 1.2))


# ---------------------------------------------------------------- log1p / expm1 as ops


def test_log1p_expm1_match_numpy_where_naive_formulas_round_to_zero():
    x = np.array([1e-10, -1e-12, 0.0, 0.5, -0.5, 3.0])
    for dt in (np.float32, np.float64):
        t = conch.tensor(x.astype(dt))
        np.testing.assert_allclose(t.log1p().numpy(), np.log1p(x.astype(dt)), rtol=1e-6)
        np.testing.assert_allclose(t.expm1().numpy(), np.expm1(x.astype(dt)), rtol=1e-6)
    assert conch.tensor(1e-10, dtype=conch.float64).log1p().item() == pytest.approx(1e-10, rel=1e-9)
    assert conch.log1p(conch.tensor([1e-10])).item() > 0  # (x + 1).log() gave 0.0


def test_log1p_expm1_gradcheck_float64():
    x = conch.tensor(np.random.default_rng(0).uniform(-0.9, 2.0, (3, 4)), requires_grad=True)
    assert conch.autograd.gradcheck(lambda t: t.log1p(), (x,))
    assert conch.autograd.gradcheck(lambda t: t.expm1(), (x,))
    assert conch.autograd.gradgradcheck(lambda t: t.log1p() * t.expm1(), (x,))


@pytest.mark.parametrize("op", ["prod", "reciprocal", "log1p", "expm1"])
def test_fp32_policy_ops_return_float32_under_float16_autocast(op):
    x = conch.rand(3, 4) + 0.5
    with conch.amp.autocast(dtype=conch.float16):
        assert getattr(x.half(), op)().dtype == conch.float32
