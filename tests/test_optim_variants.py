"""RAdam, NAdam and Adamax: their update rules in float64 by hand, arguments, resume, and PyTorch's values."""

import math

import numpy as np
import pytest

import conch
from conch import optim


def _param(w):
    return conch.tensor(np.array(w, dtype=np.float64), requires_grad=True)


def _run(opt_cls, w0, grads, **kw):
    p = _param(w0)
    opt = opt_cls([p], **kw)
    for g in grads:
        p.grad = conch.tensor(np.array(g, dtype=np.float64))
        opt.step()
    return p.detach().numpy(), opt


def _ref(kind, w0, grads, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, momentum_decay=4e-3):
    """The papers' updates in float64, written out step by step."""
    b1, b2 = betas
    p = np.array(w0, dtype=np.float64)
    m, v, u, mu_prod = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p), 1.0
    for t, g in enumerate(grads, start=1):
        g = np.array(g, dtype=np.float64) + weight_decay * p
        m = b1 * m + (1 - b1) * g
        if kind == "adamax":
            u = np.maximum(b2 * u, np.abs(g) + eps)
            p = p - lr / (1 - b1**t) * m / u
            continue
        v = b2 * v + (1 - b2) * g * g
        if kind == "radam":
            rho_inf = 2 / (1 - b2) - 1
            rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
            mhat = m / (1 - b1**t)
            if rho > 5:
                r = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
                p = p - lr * mhat * r * math.sqrt(1 - b2**t) / (np.sqrt(v) + eps)
            else:
                p = p - lr * mhat  # the variance is not yet trustworthy: momentum SGD
        else:  # nadam
            mu = b1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))
            mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * momentum_decay))
            mu_prod = float(np.float32(mu_prod) * np.float32(mu))  # a float32 scalar times float32(mu), as torch
            d = np.sqrt(v / (1 - b2**t)) + eps
            p = p - lr * (1 - mu) / (1 - mu_prod) * g / d - lr * mu_next / (1 - mu_prod * mu_next) * m / d
    return p


GRADS = [np.random.default_rng(i).standard_normal((3, 2)) for i in range(9)]
W0 = np.random.default_rng(99).standard_normal((3, 2))


@pytest.mark.parametrize("kind,cls", [("radam", optim.RAdam), ("nadam", optim.NAdam), ("adamax", optim.Adamax)])
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_updates_follow_the_papers(kind, cls, wd):
    got, _ = _run(cls, W0, GRADS, lr=0.01, weight_decay=wd)
    np.testing.assert_allclose(got, _ref(kind, W0, GRADS, 0.01, weight_decay=wd), rtol=1e-12, atol=1e-14)


def test_radam_switches_from_sgd_to_adaptive_after_rho_5():
    # with beta2 = 0.999 the rectification starts at step 6 (rho_6 > 5 >= rho_5)
    b2 = 0.999
    rho_inf = 2 / (1 - b2) - 1
    rhos = [rho_inf - 2 * t * b2**t / (1 - b2**t) for t in range(1, 8)]
    assert [r > 5 for r in rhos] == [False] * 5 + [True] * 2
    got5, _ = _run(optim.RAdam, W0, GRADS[:5], lr=0.01)
    np.testing.assert_allclose(got5, _ref("radam", W0, GRADS[:5], 0.01), rtol=1e-12)


def test_maximize_and_decoupled_weight_decay():
    up, _ = _run(optim.Adamax, W0, GRADS[:3], lr=0.01, maximize=True)
    np.testing.assert_allclose(up, _ref("adamax", W0, [-g for g in GRADS[:3]], 0.01), rtol=1e-12)
    dec, _ = _run(optim.RAdam, W0, GRADS[:1], lr=0.01, weight_decay=0.5, decoupled_weight_decay=True)
    np.testing.assert_allclose(dec, _ref("radam", W0 * (1 - 0.01 * 0.5), GRADS[:1], 0.01), rtol=1e-12)


def test_state_dict_resume_and_arguments(tmp_path):
    full, _ = _run(optim.NAdam, W0, GRADS, lr=0.02)
    p = _param(W0)
    opt = optim.NAdam([p], lr=0.02)
    for g in GRADS[:4]:
        p.grad = conch.tensor(g)
        opt.step()
    conch.save({"p": p.detach(), "opt": opt.state_dict()}, tmp_path / "ck.safetensors")
    ck = conch.load(tmp_path / "ck.safetensors")
    p2 = _param(ck["p"].numpy())
    opt2 = optim.NAdam([p2], lr=0.02)
    opt2.load_state_dict(ck["opt"])
    assert sorted(opt2.state[p2]) == ["exp_avg", "exp_avg_sq", "mu_product", "step"]
    for g in GRADS[4:]:
        p2.grad = conch.tensor(g)
        opt2.step()
    # loading casts mu_product to the parameter's float64 (as torch's load_state_dict does): agreement to
    # rounding, not bit for bit
    np.testing.assert_allclose(p2.detach().numpy(), full, rtol=1e-9)
    with pytest.raises(ValueError, match="beta"):
        optim.RAdam([_param(W0)], betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="momentum_decay"):
        optim.NAdam([_param(W0)], momentum_decay=-1)
    with pytest.raises(ValueError, match="learning rate"):
        optim.Adamax([_param(W0)], lr=-1)


@pytest.mark.parametrize("name", ["RAdam", "NAdam", "Adamax"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_values_match_torch(name, dtype):
    torch = pytest.importorskip("torch")
    kw = {"lr": 0.05, "weight_decay": 0.05}
    w0 = W0.astype(dtype)
    pc, pt = conch.tensor(w0.copy(), requires_grad=True), torch.tensor(w0.copy(), requires_grad=True)
    oc, ot = getattr(optim, name)([pc], **kw), getattr(torch.optim, name)([pt], **kw)
    for g in GRADS:
        pc.grad, pt.grad = conch.tensor(g.astype(dtype)), torch.tensor(g.astype(dtype))
        oc.step()
        ot.step()
    tol = 1e-14 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(pc.detach().numpy(), pt.detach().numpy(), rtol=tol, atol=tol)
