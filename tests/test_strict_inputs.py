"""Issue #13 items 4-5: values at degenerate points and kinks, and inputs PyTorch refuses, each against a
closed-form or NumPy reference."""

import numpy as np
import pytest

import conch
import conch.nn.functional as F


def npy(t):
    return t.detach().cpu().numpy()


def grads(fn, *values, device="cpu"):
    xs = [conch.tensor(v, requires_grad=True, device=device) for v in values]
    fn(*xs).sum().backward()
    return [npy(x.grad) for x in xs]


# ---------------------------------------------------------------- gradients at degenerate points


def test_std_gradient_is_zero_at_zero_variance(device):
    # d std/dx = (x - mean) / ((n - 1) std): 0/0 at a constant input, where PyTorch's std_backward gives 0
    (g,) = grads(lambda x: x.std(), [1.0, 1.0, 1.0], device=device)
    np.testing.assert_array_equal(g, np.zeros(3))
    (g,) = grads(lambda x: x.std(dim=0), [[1.0, 2.0], [1.0, 3.0]], device=device)
    np.testing.assert_allclose(g, [[0.0, -np.sqrt(0.5)], [0.0, np.sqrt(0.5)]], rtol=1e-6)
    (g,) = grads(lambda x: x.var(), [1.0, 1.0, 1.0], device=device)  # var was already 0 there
    np.testing.assert_array_equal(g, np.zeros(3))


def test_std_second_derivative_finite_at_zero_variance(device):
    x = conch.tensor([2.0, 2.0, 2.0], requires_grad=True, device=device)
    (g,) = conch.autograd.grad(x.std(), x, create_graph=True)
    (gg,) = conch.autograd.grad(g.sum(), x)
    assert np.isfinite(npy(gg)).all()


@pytest.mark.parametrize("kind", ["cross_entropy_weight", "nll_loss_weight", "cross_entropy_create_graph"])
def test_mean_loss_with_every_target_ignored(kind, device):
    # loss = Σ 0 / Σ 0 = NaN, as PyTorch; its gradient is 0 (nll_loss_backward writes nothing for ignored rows)
    x = conch.tensor(np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32), requires_grad=True,
                     device=device)  # fmt: skip
    y = conch.tensor([-100, -100, -100], device=device)
    w = conch.tensor([1.0, 2.0, 3.0, 4.0], device=device)
    if kind == "cross_entropy_weight":
        loss = F.cross_entropy(x, y, weight=w)
        loss.backward()
        g = x.grad
    elif kind == "nll_loss_weight":
        loss = F.nll_loss(x, y, weight=w)
        loss.backward()
        g = x.grad
    else:
        loss = F.cross_entropy(x, y)
        (g,) = conch.autograd.grad(loss, x, create_graph=True)
    assert np.isnan(npy(loss))
    np.testing.assert_array_equal(npy(g), np.zeros((3, 4)))


def test_cross_entropy_label_smoothing_every_target_ignored(device):
    x = conch.tensor(np.ones((2, 3), np.float32), requires_grad=True, device=device)
    loss = F.cross_entropy(x, conch.tensor([-100, -100], device=device), weight=conch.ones(3, device=device),
                           label_smoothing=0.1)  # fmt: skip
    loss.backward()
    assert np.isnan(npy(loss))
    np.testing.assert_array_equal(npy(x.grad), np.zeros((2, 3)))


def test_mean_loss_partly_ignored_unchanged(device):
    # the guard only acts when every target is ignored: -Σ w_t x_t / Σ w_t otherwise
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    w = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    loss = F.nll_loss(conch.tensor(x, device=device), conch.tensor([1, -100, 3], device=device),
                      weight=conch.tensor(w, device=device))  # fmt: skip
    np.testing.assert_allclose(npy(loss), -(2 * x[0, 1] + 4 * x[2, 3]) / 6, rtol=1e-6)


def test_atan2_gradient_zero_at_origin(device):
    # d/da atan2(a, b) = b / (a² + b²), d/db = -a / (a² + b²): 0/0 at (0, 0), where PyTorch gives 0
    ga, gb = grads(lambda a, b: conch.atan2(a, b), [0.0, 1.0], [0.0, 2.0], device=device)
    np.testing.assert_allclose(ga, [0.0, 2.0 / 5.0], rtol=1e-6)
    np.testing.assert_allclose(gb, [0.0, -1.0 / 5.0], rtol=1e-6)


# ---------------------------------------------------------------- values at kinks


def test_clamp_gradient_inclusive_at_bounds(device):
    # PyTorch's clamp_backward passes the gradient where min <= x <= max
    (g,) = grads(lambda x: x.clamp(0.0, 1.0), [-1.0, 0.0, 0.5, 1.0, 2.0], device=device)
    np.testing.assert_array_equal(g, [0, 1, 1, 1, 0])


def test_hardtanh_relu6_gradient_zero_at_bounds(device):
    # PyTorch's hardtanh_backward (relu6 is hardtanh(0, 6)) passes the gradient only where min < x < max
    (g,) = grads(lambda x: F.hardtanh(x), [-2.0, -1.0, 0.5, 1.0, 2.0], device=device)
    np.testing.assert_array_equal(g, [0, 0, 1, 0, 0])
    (g,) = grads(lambda x: F.relu6(x), [-1.0, 0.0, 3.0, 6.0, 7.0], device=device)
    np.testing.assert_array_equal(g, [0, 0, 1, 0, 0])
    (g,) = grads(lambda x: conch.nn.Hardtanh(-2.0, 2.0)(x), [-2.0, 0.0, 2.0], device=device)
    np.testing.assert_array_equal(g, [0, 1, 0])
    out = F.relu6(conch.tensor([-1.0, 0.0, 3.0, 6.0, 7.0], device=device))
    np.testing.assert_array_equal(npy(out), [0, 0, 3, 6, 6])


def test_hardsigmoid_hardswish_gradients_at_kinks(device):
    # hardsigmoid_backward: 1/6 for -3 < x < 3 only; hardswish_backward: x/3 + 1/2 for -3 <= x <= 3
    (g,) = grads(lambda x: F.hardsigmoid(x), [-3.0, 0.0, 3.0], device=device)
    np.testing.assert_allclose(g, [0, 1 / 6, 0], rtol=1e-6)
    (g,) = grads(lambda x: F.hardswish(x), [-3.0, 0.0, 3.0], device=device)
    np.testing.assert_allclose(g, [-0.5, 0.5, 1.5], rtol=1e-6)


def test_prelu_gradient_at_zero(device):
    # out = x if x > 0 else w·x: at 0 the input gradient is w (not 1 + w) and the weight's is x = 0
    gx, gw = grads(lambda x, w: F.prelu(x, w), [0.0, -1.0, 2.0], [0.25], device=device)
    np.testing.assert_allclose(gx, [0.25, 0.25, 1.0])
    np.testing.assert_allclose(gw, [-1.0])
    out = F.prelu(conch.tensor([0.0, -1.0, 2.0], device=device), conch.tensor([0.25], device=device))
    np.testing.assert_allclose(npy(out), [0.0, -0.25, 2.0])


def test_sign_of_nan_is_nan(device):
    out = conch.tensor([float("nan"), 2.0, -3.0, 0.0], device=device).sign()
    np.testing.assert_array_equal(npy(out), np.sign(np.array([np.nan, 2.0, -3.0, 0.0])))
