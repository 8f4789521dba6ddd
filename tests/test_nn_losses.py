"""conch.nn losses (modules and functions) against float64 NumPy references, with gradchecks and bad inputs."""

import numpy as np
import pytest

import conch
import conch.nn as nn
import conch.nn.functional as F
from conch.autograd import gradcheck


def t64(a, grad=True):
    return conch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def npv(t):
    return t.detach().cpu().numpy()


def log_softmax(x, axis):
    m = x.max(axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis, keepdims=True))


def ref_ce(x, t, w=None, ignore=-100, eps=0.0, reduction="mean"):
    """Class-index cross-entropy with class dim 1, as PyTorch defines it."""
    c = x.shape[1]
    lp = np.moveaxis(log_softmax(x, 1), 1, -1).reshape(-1, c)
    tt = t.reshape(-1)
    w = np.ones(c) if w is None else w
    valid = tt != ignore
    safe = np.where(valid, tt, 0)
    nll = -lp[np.arange(len(tt)), safe] * w[safe] * valid
    smooth = -(lp * w).sum(1) * valid
    if reduction == "none":
        return ((1 - eps) * nll + eps / c * smooth).reshape(t.shape)
    if reduction == "sum":
        return (1 - eps) * nll.sum() + eps / c * smooth.sum()
    denom = (w[safe] * valid).sum()
    return (1 - eps) * nll.sum() / denom + eps / c * smooth.sum() / denom


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps", [0.0, 0.15])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_class_indices(reduction, eps, weighted):
    x = np.random.standard_normal((6, 5))
    t = np.array([0, 4, 2, -100, 1, 4])
    w = np.random.random(5) + 0.5 if weighted else None
    loss = nn.CrossEntropyLoss(weight=None if w is None else t64(w, False), label_smoothing=eps, reduction=reduction)
    out = loss(t64(x), conch.tensor(t))
    np.testing.assert_allclose(npv(out), ref_ce(x, t, w, eps=eps, reduction=reduction), rtol=1e-10)
    gradcheck(lambda x: loss(x, conch.tensor(t)), (t64(x),))


def test_cross_entropy_class_dim_1_and_ignore_index():
    x = np.random.standard_normal((2, 4, 3, 5))
    t = np.random.randint(0, 4, (2, 3, 5))
    t[0, 1, 2] = 7
    out = F.cross_entropy(t64(x), conch.tensor(t), ignore_index=7, reduction="none")
    assert out.shape == (2, 3, 5) and npv(out)[0, 1, 2] == 0
    np.testing.assert_allclose(npv(out), ref_ce(x, t, ignore=7, reduction="none"), rtol=1e-10)
    np.testing.assert_allclose(
        npv(F.cross_entropy(t64(x), conch.tensor(t), ignore_index=7)), ref_ce(x, t, ignore=7), rtol=1e-10
    )
    gradcheck(lambda x: F.cross_entropy(x, conch.tensor(t[:1]), ignore_index=7, label_smoothing=0.1), (t64(x[:1]),))
    one = F.cross_entropy(t64(x[0, :, 0, 0]), conch.tensor(2))  # unbatched (C,) input, 0-d target
    np.testing.assert_allclose(npv(one), -log_softmax(x[0, :, 0, 0], 0)[2], rtol=1e-12)


def test_cross_entropy_probability_targets():
    x = np.random.standard_normal((3, 4, 2))
    p = np.random.random((3, 4, 2))
    p /= p.sum(1, keepdims=True)
    w = np.random.random(4) + 0.5
    eps = 0.2
    q = p * (1 - eps) + eps / 4
    ref = -(log_softmax(x, 1) * q * w[None, :, None]).sum(1)
    out = F.cross_entropy(t64(x), t64(p, False), weight=t64(w, False), label_smoothing=eps, reduction="none")
    np.testing.assert_allclose(npv(out), ref, rtol=1e-10)
    np.testing.assert_allclose(
        npv(F.cross_entropy(t64(x), t64(p, False))), -(log_softmax(x, 1) * p).sum(1).mean(), rtol=1e-10
    )
    gradcheck(lambda x, p: F.cross_entropy(x, p), (t64(x), t64(p)))


def test_cross_entropy_bad_inputs():
    x = conch.randn(4, 3)
    with pytest.raises(IndexError, match="out of bounds"):
        F.cross_entropy(x, conch.tensor([0, 1, 3, 0]))
    with pytest.raises(ValueError, match=r"expected target of shape \(4,\).*got \(5,\)"):
        F.cross_entropy(x, conch.tensor([0, 1, 2, 0, 1]))
    with pytest.raises(ValueError, match="not a valid value for reduction"):
        F.cross_entropy(x, conch.tensor([0, 1, 2, 0]), reduction="avg")
    with pytest.raises(ValueError, match="probability targets must have the input's shape"):
        F.cross_entropy(x, conch.randn(4, 2))


def test_nll_loss():
    lp = log_softmax(np.random.standard_normal((5, 3)), 1)
    t = np.array([2, 0, 1, 1, -100])
    w = np.array([0.2, 1.0, 3.0])
    valid = t != -100
    safe = np.where(valid, t, 0)
    picked = -lp[np.arange(5), safe] * w[safe] * valid
    out = nn.NLLLoss(weight=t64(w, False))(t64(lp), conch.tensor(t))
    np.testing.assert_allclose(npv(out), picked.sum() / (w[safe] * valid).sum(), rtol=1e-12)
    np.testing.assert_allclose(
        npv(F.nll_loss(t64(lp), conch.tensor(t), reduction="none")), -lp[np.arange(5), safe] * valid, rtol=1e-12
    )
    gradcheck(lambda x: F.nll_loss(x, conch.tensor(t), weight=t64(w, False)), (t64(lp),))
    with pytest.raises(TypeError, match="integer"):
        F.nll_loss(t64(lp), conch.tensor([0.0, 1.0, 2.0, 0.0, 1.0]))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_regression_losses(reduction):
    a, b = np.random.standard_normal((4, 5)), np.random.standard_normal((4, 5))
    d = a - b
    red = {"mean": np.mean, "sum": np.sum, "none": lambda v: v}[reduction]
    cases = [
        (nn.MSELoss(reduction=reduction), d**2),
        (nn.L1Loss(reduction=reduction), np.abs(d)),
        (nn.HuberLoss(reduction=reduction, delta=0.8), np.where(np.abs(d) < 0.8, 0.5 * d**2, 0.8 * (np.abs(d) - 0.4))),
        (nn.SmoothL1Loss(reduction=reduction, beta=0.6), np.where(np.abs(d) < 0.6, 0.5 * d**2 / 0.6, np.abs(d) - 0.3)),
    ]
    for mod, ref in cases:
        np.testing.assert_allclose(npv(mod(t64(a), t64(b))), red(ref), rtol=1e-12, err_msg=type(mod).__name__)
        gradcheck(mod, (t64(a), t64(b)))


def test_bce_with_logits_stable_and_pos_weight():
    x = np.array([[-800.0, -3.0, 0.0], [0.5, 4.0, 900.0]])
    y = np.array([[0.0, 1.0, 0.3], [1.0, 0.0, 1.0]])
    pw = np.array([2.0, 0.5, 1.5])
    w = np.array([[1.0, 2.0, 0.5]])

    def softplus(z):
        return np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))

    ref = w * ((1 - y) * x + (1 + (pw - 1) * y) * softplus(-x))
    out = nn.BCEWithLogitsLoss(weight=t64(w, False), pos_weight=t64(pw, False), reduction="none")(t64(x), t64(y))
    assert np.isfinite(npv(out)).all()
    np.testing.assert_allclose(npv(out), ref, rtol=1e-12)
    xs = np.random.standard_normal((3, 4))
    xs[0, 0] = 0.0  # zero logits (zero-initialised heads) must get the exact gradient σ(0) - y
    ys = np.random.random((3, 4))
    gradcheck(
        lambda x: F.binary_cross_entropy_with_logits(x, t64(ys, False), pos_weight=t64(np.full(4, 1.7), False)),
        (t64(xs),),
    )
    x0 = t64(np.zeros((1, 1)))
    F.binary_cross_entropy_with_logits(x0, t64([[1.0]], False)).backward()
    np.testing.assert_allclose(npv(x0.grad), [[-0.5]])
    with pytest.raises(ValueError, match="must be the same as input size"):
        F.binary_cross_entropy_with_logits(t64(xs), t64(ys[:2]))


def test_bce_and_kl_div():
    p = np.random.random((3, 4)) * 0.9 + 0.05
    y = np.random.random((3, 4))
    np.testing.assert_allclose(
        npv(nn.BCELoss()(t64(p), t64(y, False))), -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean(), rtol=1e-12
    )
    gradcheck(lambda p: F.binary_cross_entropy(p, t64(y, False)), (t64(p),))
    lp = log_softmax(np.random.standard_normal((3, 4)), 1)
    tgt = np.exp(log_softmax(np.random.standard_normal((3, 4)), 1))
    np.testing.assert_allclose(
        npv(nn.KLDivLoss(reduction="batchmean")(t64(lp), t64(tgt, False))),
        (tgt * (np.log(tgt) - lp)).sum() / 3,
        rtol=1e-12,
    )
