"""conch.nn.init (distributions, bounds, in place, RNG) and conch.nn.utils (clipping, vector round trips)."""

import math

import numpy as np
import pytest

import conch
import conch.nn as nn
from conch.nn import init
from conch.nn.utils import clip_grad_norm_, clip_grad_value_, parameters_to_vector, vector_to_parameters


def npv(t):
    return t.detach().cpu().numpy()


def test_calculate_gain_and_fans():
    assert init.calculate_gain("relu") == pytest.approx(math.sqrt(2))
    assert init.calculate_gain("tanh") == pytest.approx(5 / 3)
    assert init.calculate_gain("leaky_relu", 0.2) == pytest.approx(math.sqrt(2 / 1.04))
    assert init.calculate_gain("conv2d") == 1
    with pytest.raises(ValueError, match="Unsupported nonlinearity"):
        init.calculate_gain("wiggle")
    assert init._calculate_fan_in_and_fan_out(conch.empty(8, 3, 5, 5)) == (75, 200)
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        init.xavier_uniform_(conch.empty(5))


def test_uniform_initialisers_bounds_and_in_place():
    w = nn.Parameter(conch.empty(200, 100))
    ref = w
    out = init.xavier_uniform_(w, gain=2.0)
    assert out is ref and w.requires_grad and w.grad_fn is None
    a = 2.0 * math.sqrt(6 / 300)
    v = npv(w)
    assert np.abs(v).max() <= a and np.abs(v).max() > 0.95 * a and abs(v.mean()) < 0.02 * a
    init.kaiming_uniform_(w, a=0, mode="fan_out", nonlinearity="relu")
    b = math.sqrt(2) * math.sqrt(3 / 200)
    assert np.abs(npv(w)).max() <= b and np.abs(npv(w)).max() > 0.95 * b
    init.uniform_(w, -0.1, 0.3)
    assert npv(w).min() >= -0.1 and npv(w).max() <= 0.3


def test_normal_initialisers_std():
    w = conch.empty(300, 200)
    init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu")
    assert abs(npv(w).std() - math.sqrt(2 / 200)) < 0.03 * math.sqrt(2 / 200)
    init.xavier_normal_(w)
    assert abs(npv(w).std() - math.sqrt(2 / 500)) < 0.03 * math.sqrt(2 / 500)
    init.normal_(w, 3.0, 0.5)
    assert abs(npv(w).mean() - 3.0) < 0.01 and abs(npv(w).std() - 0.5) < 0.01
    init.trunc_normal_(w, mean=0.0, std=1.0, a=-0.5, b=1.5)
    v = npv(w)
    assert v.min() >= -0.5 and v.max() <= 1.5
    from scipy.stats import truncnorm

    assert abs(v.mean() - truncnorm.mean(-0.5, 1.5)) < 0.01 and abs(v.std() - truncnorm.std(-0.5, 1.5)) < 0.01


def test_constant_initialisers_and_rng_reproducible():
    w = conch.empty(3, 4, dtype=conch.float64)
    assert np.all(npv(init.zeros_(w)) == 0) and np.all(npv(init.ones_(w)) == 1)
    assert np.all(npv(init.constant_(w, 2.5)) == 2.5)
    np.testing.assert_array_equal(npv(init.eye_(w)), np.eye(3, 4))
    q = init.orthogonal_(conch.empty(4, 6))
    np.testing.assert_allclose(npv(q) @ npv(q).T, np.eye(4), atol=1e-5)
    conch.manual_seed(7)
    a = npv(nn.Linear(4, 3).weight).copy()
    conch.manual_seed(7)
    b = npv(nn.Linear(4, 3).weight)
    np.testing.assert_array_equal(a, b)


def _params_with_grads(grads):
    ps = []
    for g in grads:
        p = nn.Parameter(conch.zeros(*np.shape(g), dtype=conch.float64))
        p.grad = conch.tensor(np.array(g, dtype=np.float64))
        ps.append(p)
    return ps


def test_clip_grad_norm():
    g1, g2 = np.random.standard_normal((3, 4)), np.random.standard_normal(5)
    total = math.sqrt((g1**2).sum() + (g2**2).sum())
    ps = _params_with_grads([g1, g2])
    out = clip_grad_norm_(ps, 0.5)
    assert out.item() == pytest.approx(total)
    coef = 0.5 / (total + 1e-6)
    np.testing.assert_allclose(npv(ps[0].grad), g1 * coef, rtol=1e-12)
    np.testing.assert_allclose(npv(ps[1].grad), g2 * coef, rtol=1e-12)
    ps = _params_with_grads([g1, g2])
    assert clip_grad_norm_(ps, 1e6).item() == pytest.approx(total)
    np.testing.assert_array_equal(npv(ps[0].grad), g1)  # below max_norm: untouched
    ps = _params_with_grads([g1, g2])
    inf_norm = clip_grad_norm_(ps, 0.1, norm_type=float("inf"))
    assert inf_norm.item() == pytest.approx(max(np.abs(g1).max(), np.abs(g2).max()))
    ps = _params_with_grads([g1, g2])
    assert clip_grad_norm_(ps[0], 10.0, norm_type=1).item() == pytest.approx(np.abs(g1).sum())
    bad = _params_with_grads([[1.0, np.inf]])
    with pytest.raises(RuntimeError, match="non-finite"):
        clip_grad_norm_(bad, 1.0, error_if_nonfinite=True)
    assert not math.isfinite(clip_grad_norm_(_params_with_grads([[1.0, np.nan]]), 1.0).item())


def test_clip_grad_value_and_vectors():
    g = np.array([[-3.0, 0.2], [0.9, 5.0]])
    ps = _params_with_grads([g])
    clip_grad_value_(ps, 1.0)
    np.testing.assert_array_equal(npv(ps[0].grad), np.clip(g, -1, 1))
    m = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    vec = parameters_to_vector(m.parameters())
    assert vec.shape == (3 * 2 + 2 + 2 + 1,)
    np.testing.assert_array_equal(npv(vec)[:6], npv(m[0].weight).ravel())
    new = conch.arange(11, dtype=conch.float32)
    w = m[0].weight
    vector_to_parameters(new, m.parameters())
    assert m[0].weight is w
    np.testing.assert_array_equal(npv(m[0].weight), np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(npv(m[1].bias), [10.0])
    with pytest.raises(ValueError, match="11 elements"):
        vector_to_parameters(conch.zeros(4), m.parameters())
