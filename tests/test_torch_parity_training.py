"""PyTorch parity of training utilities: GradScaler, lr schedulers, nn.utils clipping/flattening, nn.init statistics.

conch and torch (CPU) run side by side on identical inputs; values are compared step by step. Random
initialisers are compared through their statistics (bounds, standard deviations) against both PyTorch and
the closed forms, never through the random values themselves.
"""

import math
import warnings

import numpy as np
import pytest

import conch
import conch.nn.init as cinit
import conch.nn.utils as cutils
import conch.optim.lr_scheduler as csched

torch = pytest.importorskip("torch", reason="PyTorch parity tests need torch (pip install torch==2.13.0)")
tsched = torch.optim.lr_scheduler

SHAPES = [(3, 4), (5,), (2, 1, 3)]


def _np(t):
    """A conch or torch tensor as a float64-safe NumPy array on the host."""
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().numpy()
    return t.detach().cpu().numpy()


def _pair_params(device, shapes=SHAPES, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    arrs = [rng.standard_normal(s).astype(dtype) for s in shapes]
    cdt = {np.float32: conch.float32, np.float64: conch.float64, np.float16: conch.float16}[dtype]
    cp = [conch.nn.Parameter(conch.tensor(a, dtype=cdt, device=device)) for a in arrs]
    tp = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in arrs]
    return cp, tp


# ============================================================================ GradScaler
# "ok": finite gradients; "inf"/"nan": one element of one gradient is inf/NaN (position varies with the step)
PATTERN = ["ok", "ok", "ok", "inf", "ok", "ok", "nan", "ok", "ok", "ok", "ok", "ok", "ok", "inf", "nan", "ok", "ok"]


def _coefs(step, kind):
    rng = np.random.default_rng(100 + step)
    cs = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    if kind != "ok":
        k = step % len(cs)
        cs[k].reshape(-1)[step % cs[k].size] = np.inf if kind == "inf" else np.nan
    return cs


def _backward(scaler, params, coefs, lib, device=None):
    # L = Σ_k Σ c_k ⊙ p_k, so the scaled gradient of p_k is S · c_k (inf/NaN where c_k has one)
    if lib is torch:
        loss = sum((p * torch.from_numpy(c)).sum() for p, c in zip(params, coefs))
    else:
        loss = None
        for p, c in zip(params, coefs):
            term = (p * conch.tensor(c, device=device)).sum()
            loss = term if loss is None else loss + term
    scaler.scale(loss).backward()


def _assert_params_equal(cp, tp, rtol=1e-6):
    for a, b in zip(cp, tp):
        np.testing.assert_allclose(_np(a), _np(b), rtol=rtol, atol=1e-7)


def _assert_scaler_state(cs, ts):
    csd, tsd = cs.state_dict(), ts.state_dict()
    assert set(csd) == set(tsd) == {"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"}
    for k in tsd:
        assert csd[k] == tsd[k], (k, csd[k], tsd[k])
        assert type(csd[k]) is type(tsd[k]), (k, type(csd[k]), type(tsd[k]))
    assert cs.get_scale() == ts.get_scale()


def _make_scalers(device, **kw):
    cp, tp = _pair_params(device)
    copt = conch.optim.SGD(cp, lr=0.1, momentum=0.9)
    topt = torch.optim.SGD(tp, lr=0.1, momentum=0.9)
    cs = conch.amp.GradScaler(**kw)
    ts = torch.amp.GradScaler("cpu", **kw)
    return cp, tp, copt, topt, cs, ts


def test_grad_scaler_schedule_matches_torch(device):
    cp, tp, copt, topt, cs, ts = _make_scalers(device, init_scale=2.0**10, growth_interval=3)
    _assert_scaler_state(cs, ts)
    scales = []
    for step, kind in enumerate(PATTERN):
        copt.zero_grad()
        topt.zero_grad()
        coefs = _coefs(step, kind)
        _backward(cs, cp, coefs, conch, device)
        _backward(ts, tp, coefs, torch)
        before = [_np(p).copy() for p in tp]
        stepped = cs.step(copt)
        ts.step(topt)
        torch_stepped = any(not np.array_equal(b, _np(p)) for b, p in zip(before, tp))
        assert stepped is (kind == "ok") and torch_stepped is (kind == "ok"), (step, kind, stepped, torch_stepped)
        cs.update()
        ts.update()
        _assert_scaler_state(cs, ts)
        _assert_params_equal(cp, tp)
        scales.append(cs.get_scale())
    # the closed form: 3 clean steps grow by 2, a non-finite step halves and resets the run
    expect, s, run = [], 2.0**10, 0
    for kind in PATTERN:
        if kind == "ok":
            run += 1
            if run == 3:
                s, run = s * 2, 0
        else:
            s, run = s / 2, 0
        expect.append(s)
    assert scales == expect


def test_grad_scaler_unscale_clip_step_recipe(device):
    cp, tp, copt, topt, cs, ts = _make_scalers(device, init_scale=2.0**12, growth_interval=2)
    for step, kind in enumerate(["ok", "ok", "inf", "ok", "nan", "ok", "ok", "ok"]):
        copt.zero_grad()
        topt.zero_grad()
        coefs = _coefs(step, kind)
        _backward(cs, cp, coefs, conch, device)
        _backward(ts, tp, coefs, torch)
        cs.unscale_(copt)
        ts.unscale_(topt)
        for a, b, c in zip(cp, tp, coefs):  # S is a power of two: unscaling is exact, the true gradient is c
            np.testing.assert_array_equal(_np(a.grad), _np(b.grad))
            np.testing.assert_array_equal(_np(a.grad), c)
        cn = cutils.clip_grad_norm_(cp, 0.5)
        tn = torch.nn.utils.clip_grad_norm_(tp, 0.5)
        np.testing.assert_allclose(_np(cn), _np(tn), rtol=1e-6)
        for a, b in zip(cp, tp):
            np.testing.assert_allclose(_np(a.grad), _np(b.grad), rtol=1e-6, atol=1e-7, equal_nan=True)
        assert cs.step(copt) is (kind == "ok")
        ts.step(topt)
        cs.update()
        ts.update()
        _assert_scaler_state(cs, ts)
        _assert_params_equal(cp, tp)


def test_grad_scaler_update_new_scale_and_state_dict_round_trip(device):
    cp, tp, copt, topt, cs, ts = _make_scalers(device, init_scale=2.0**8, growth_interval=3, growth_factor=4.0,
                                               backoff_factor=0.25)  # fmt: skip
    kinds = ["ok", "ok", "inf", "ok", "ok", "ok", "ok", "nan", "ok", "ok", "ok"]
    for step, kind in enumerate(kinds):
        copt.zero_grad()
        topt.zero_grad()
        coefs = _coefs(step, kind)
        _backward(cs, cp, coefs, conch, device)
        _backward(ts, tp, coefs, torch)
        cs.step(copt)
        ts.step(topt)
        if step == 4:  # an explicit scale (float32-rounded) leaves the growth tracker alone
            cs.update(new_scale=3.3)
            ts.update(new_scale=3.3)
        elif step == 6:
            cs.update(new_scale=conch.tensor(1024.0))
            ts.update(new_scale=torch.tensor(1024.0))
        else:
            cs.update()
            ts.update()
        _assert_scaler_state(cs, ts)
        _assert_params_equal(cp, tp)
        if step == 5:  # resume both from their state dicts and go on with the copies
            cs2 = conch.amp.GradScaler()
            ts2 = torch.amp.GradScaler("cpu")
            cs2.load_state_dict(cs.state_dict())
            ts2.load_state_dict(ts.state_dict())
            cs, ts = cs2, ts2
            _assert_scaler_state(cs, ts)
    assert cs.get_scale() == ts.get_scale()


def test_grad_scaler_unrounded_init_scale_like_torch(device):
    # torch reports init_scale as given until scale() creates its float32 scale tensor
    cp, tp, copt, topt, cs, ts = _make_scalers(device, init_scale=1000.1, growth_interval=2)
    _assert_scaler_state(cs, ts)
    assert cs.get_scale() == 1000.1
    cs2, ts2 = conch.amp.GradScaler(), torch.amp.GradScaler("cpu")
    cs2.load_state_dict(cs.state_dict())
    ts2.load_state_dict(ts.state_dict())
    _assert_scaler_state(cs2, ts2)
    for step, kind in enumerate(["ok", "ok", "nan", "ok"]):
        copt.zero_grad()
        topt.zero_grad()
        coefs = _coefs(step, kind)
        _backward(cs, cp, coefs, conch, device)
        _backward(ts, tp, coefs, torch)
        assert cs.get_scale() == ts.get_scale() == float(np.float32(1000.1)) * [1, 1, 2, 1][step]
        cs.step(copt)
        ts.step(topt)
        cs.update()
        ts.update()
        _assert_scaler_state(cs, ts)
        _assert_params_equal(cp, tp, rtol=1e-5)


def test_grad_scaler_growth_saturates_at_float32_max():
    # growing past float32's range keeps the old scale (PyTorch: "if isfinite(new_scale)")
    cp, tp, copt, topt, cs, ts = _make_scalers("cpu", init_scale=2.0**126, growth_interval=1, growth_factor=4.0)
    for step in range(3):
        copt.zero_grad()
        topt.zero_grad()
        coefs = [c * np.float32(2.0**-126) for c in _coefs(step, "ok")]
        _backward(cs, cp, coefs, conch)
        _backward(ts, tp, coefs, torch)
        cs.step(copt)
        ts.step(topt)
        cs.update()
        ts.update()
        _assert_scaler_state(cs, ts)
    assert cs.get_scale() == 2.0**126


def test_grad_scaler_state_machine_errors_like_torch(device):
    cp, tp, copt, topt, cs, ts = _make_scalers(device, init_scale=4.0)
    coefs = _coefs(0, "ok")
    _backward(cs, cp, coefs, conch, device)
    _backward(ts, tp, coefs, torch)
    cs.unscale_(copt)
    ts.unscale_(topt)
    for s, o in ((cs, copt), (ts, topt)):
        with pytest.raises(RuntimeError, match="unscale_\\(\\) has already been called"):
            s.unscale_(o)
        s.step(o)
        with pytest.raises(RuntimeError, match="step\\(\\) has already been called"):
            s.step(o)
        with pytest.raises(RuntimeError, match="after step"):
            s.unscale_(o)
        with pytest.raises(RuntimeError, match="Closure"):
            s.step(o, closure=lambda: 0.0)
        s.update()
    _assert_scaler_state(cs, ts)


@pytest.mark.parametrize("shape", [(), (3,)])
def test_grad_scaler_scale_output_dtype_like_torch(shape, device):
    # S is a 0-d float32 tensor: a 0-d float16 loss is promoted to float32, a float16 tensor with dims is not
    cs, ts = conch.amp.GradScaler(init_scale=2.0**14), torch.amp.GradScaler("cpu", init_scale=2.0**14)
    x = np.full(shape, 3.0, dtype=np.float16)
    c = cs.scale(conch.tensor(x, dtype=conch.float16, device=device))
    t = ts.scale(torch.from_numpy(x))
    assert str(c.dtype).split(".")[-1] == str(t.dtype).split(".")[-1]
    np.testing.assert_array_equal(_np(c), _np(t))  # 3 * 2^14 = 49152 fits float16
    cl = cs.scale([conch.tensor(x, dtype=conch.float16, device=device)] * 2)
    tl = ts.scale([torch.from_numpy(x)] * 2)
    assert type(cl) is type(tl) and len(cl) == len(tl) == 2


def test_grad_scaler_disabled_like_torch(device):
    cp, tp, copt, topt, _, _ = _make_scalers(device)
    cs, ts = conch.amp.GradScaler(enabled=False), torch.amp.GradScaler("cpu", enabled=False)
    assert cs.state_dict() == ts.state_dict() == {}
    assert cs.get_scale() == ts.get_scale() == 1.0
    coefs = _coefs(1, "ok")
    _backward(cs, cp, coefs, conch, device)
    _backward(ts, tp, coefs, torch)
    cs.step(copt)
    ts.step(topt)
    cs.update()
    ts.update()
    _assert_params_equal(cp, tp)


# ============================================================================ lr schedulers
def _lam(e):
    return 0.9**e


def _mul(e):
    return 0.95 if e % 2 else 0.99


SCHEDULERS = {
    "StepLR": lambda m, o: m.StepLR(o, step_size=4, gamma=0.5),
    "MultiStepLR": lambda m, o: m.MultiStepLR(o, milestones=[3, 7, 7, 20], gamma=0.3),
    "ExponentialLR": lambda m, o: m.ExponentialLR(o, gamma=0.9),
    "CosineAnnealingLR": lambda m, o: m.CosineAnnealingLR(o, T_max=10),
    "CosineAnnealingLR_eta_min": lambda m, o: m.CosineAnnealingLR(o, T_max=12, eta_min=1e-3),
    "LinearLR": lambda m, o: m.LinearLR(o, start_factor=0.1, end_factor=0.9, total_iters=8),
    "OneCycleLR_cos": lambda m, o: m.OneCycleLR(o, max_lr=[0.5, 0.2], total_steps=30),
    "OneCycleLR_linear": lambda m, o: m.OneCycleLR(o, max_lr=0.4, total_steps=31, anneal_strategy="linear",
                                                    pct_start=0.25, div_factor=10.0, final_div_factor=100.0),
    "OneCycleLR_three_phase": lambda m, o: m.OneCycleLR(o, max_lr=0.3, epochs=3, steps_per_epoch=10,
                                                         three_phase=True, base_momentum=0.8, max_momentum=0.9),
    "LambdaLR": lambda m, o: m.LambdaLR(o, lr_lambda=_lam),
    "LambdaLR_per_group": lambda m, o: m.LambdaLR(o, lr_lambda=[_lam, lambda e: 1.0 / (1 + e)]),
    "SequentialLR": lambda m, o: m.SequentialLR(
        o, [m.LinearLR(o, start_factor=0.01, total_iters=5), m.CosineAnnealingLR(o, T_max=25, eta_min=1e-4)],
        milestones=[5]),
    "SequentialLR_three": lambda m, o: m.SequentialLR(
        o, [m.ConstantLR(o, factor=0.5, total_iters=4), m.ExponentialLR(o, gamma=0.8),
            m.StepLR(o, step_size=3, gamma=0.5)], milestones=[6, 15]),
    "SequentialLR_nested_chained": lambda m, o: m.SequentialLR(
        o, [m.ChainedScheduler([m.ConstantLR(o, factor=0.5, total_iters=3), m.ExponentialLR(o, gamma=0.9)],
                               optimizer=o), m.CosineAnnealingLR(o, T_max=10)], milestones=[8]),
    "ConstantLR": lambda m, o: m.ConstantLR(o, factor=0.25, total_iters=6),
    "PolynomialLR": lambda m, o: m.PolynomialLR(o, total_iters=12, power=2.0),
    "MultiplicativeLR": lambda m, o: m.MultiplicativeLR(o, lr_lambda=_mul),
    "ChainedScheduler": lambda m, o: m.ChainedScheduler(
        [m.ConstantLR(o, factor=0.1, total_iters=5), m.ExponentialLR(o, gamma=0.9)], optimizer=o),
}  # fmt: skip


def _optimizers(kind, device):
    cp, tp = _pair_params(device, shapes=[(2, 3), (4,)])
    if kind == "sgd":
        groups_c = [{"params": [cp[0]], "lr": 0.1}, {"params": [cp[1]], "lr": 0.02}]
        groups_t = [{"params": [tp[0]], "lr": 0.1}, {"params": [tp[1]], "lr": 0.02}]
        return conch.optim.SGD(groups_c, lr=0.1, momentum=0.9), torch.optim.SGD(groups_t, lr=0.1, momentum=0.9)
    groups_c = [{"params": [cp[0]], "lr": 1e-3}, {"params": [cp[1]], "lr": 3e-3}]
    groups_t = [{"params": [tp[0]], "lr": 1e-3}, {"params": [tp[1]], "lr": 3e-3}]
    return conch.optim.AdamW(groups_c, lr=1e-3), torch.optim.AdamW(groups_t, lr=1e-3)


def _assert_groups(copt, topt, csch, tsch, where):
    np.testing.assert_allclose(csch.get_last_lr(), tsch.get_last_lr(), rtol=1e-12, atol=0, err_msg=where)
    for cg, tg in zip(copt.param_groups, topt.param_groups):
        for key in ("lr", "initial_lr", "max_lr", "min_lr", "momentum", "max_momentum", "base_momentum"):
            assert (key in cg) == (key in tg), (where, key)
            if key in tg:
                np.testing.assert_allclose(cg[key], tg[key], rtol=1e-12, atol=0, err_msg=f"{where} {key}")
        if "betas" in tg:
            np.testing.assert_allclose(cg["betas"], tg["betas"], rtol=1e-12, atol=0, err_msg=f"{where} betas")


def _plain(v):
    """A scheduler state-dict value made comparable across the two libraries."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items() if k != "lr_lambdas"}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _step_both(copt, topt, csch, tsch):
    copt.step()
    topt.step()
    csch.step()
    tsch.step()


# every scheduler with SGD (momentum cycled by OneCycleLR); AdamW (beta1 cycled) where it changes something
SCHED_CASES = [(n, "sgd") for n in sorted(SCHEDULERS)] + [
    (n, "adamw") for n in sorted(SCHEDULERS) if n.startswith(("OneCycle", "Sequential", "Chained"))
]


@pytest.mark.parametrize("name,opt_kind", SCHED_CASES)
def test_lr_scheduler_matches_torch(name, opt_kind, device):
    factory = SCHEDULERS[name]
    copt, topt = _optimizers(opt_kind, device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        csch, tsch = factory(csched, copt), factory(tsched, topt)
    _assert_groups(copt, topt, csch, tsch, "construction")
    n_steps = 29 if name.startswith("OneCycle") else 30
    for i in range(n_steps):
        _step_both(copt, topt, csch, tsch)
        _assert_groups(copt, topt, csch, tsch, f"step {i + 1}")
        if i == 13:
            csd, tsd = csch.state_dict(), tsch.state_dict()
            assert set(csd) == set(tsd), (sorted(csd), sorted(tsd))
            assert _plain(csd) == _plain(tsd) or _close(_plain(csd), _plain(tsd))
            # resume: a fresh optimizer + scheduler, the optimizer's state loaded first, then the scheduler's
            copt2, _ = _optimizers(opt_kind, device)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                csch2 = factory(csched, copt2)
            copt2.load_state_dict(copt.state_dict())
            csch2.load_state_dict(csd)
            copt, csch = copt2, csch2
            _assert_groups(copt, topt, csch, tsch, "after load_state_dict")


def _close(a, b):
    if isinstance(a, dict):
        return set(a) == set(b) and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12)
    return a == b


def test_lr_scheduler_step_with_epoch_closed_form(device):
    # the deprecated step(epoch) uses the closed forms
    for name in ("StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR_eta_min", "LinearLR", "ConstantLR",
                 "PolynomialLR"):  # fmt: skip
        copt, topt = _optimizers("sgd", device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            csch, tsch = SCHEDULERS[name](csched, copt), SCHEDULERS[name](tsched, topt)
            for epoch in (3, 9, 4, 14):
                csch.step(epoch)
                tsch.step(epoch)
                np.testing.assert_allclose(csch.get_last_lr(), tsch.get_last_lr(), rtol=1e-12, err_msg=name)


# ============================================================================ nn.utils
def _grad_pair(arrs, device, dtype=np.float32):
    cdt = {np.float32: conch.float32, np.float64: conch.float64, np.float16: conch.float16}
    cp, tp = [], []
    for a in arrs:
        a = np.asarray(a, dtype=dtype)
        c = conch.nn.Parameter(conch.zeros(*a.shape, dtype=cdt[dtype], device=device))
        c.grad = conch.tensor(a, dtype=cdt[dtype], device=device)
        t = torch.nn.Parameter(torch.zeros(a.shape, dtype=getattr(torch, np.dtype(dtype).name)))
        t.grad = torch.from_numpy(a.copy())
        cp.append(c)
        tp.append(t)
    return cp, tp


def _rand_grads(seed=3, scale=1.0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) * scale for s in [(7, 5), (11,), (3, 2, 4), (1,)]]


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf, 3.0, 0.5])
@pytest.mark.parametrize("max_norm", [0.3, 1e3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_grad_norm_matches_torch(norm_type, max_norm, dtype, device):
    cp, tp = _grad_pair(_rand_grads(), device, dtype)
    cn = cutils.clip_grad_norm_(cp, max_norm, norm_type=norm_type)
    tn = torch.nn.utils.clip_grad_norm_(tp, max_norm, norm_type=norm_type)
    assert str(cn.dtype).split(".")[-1] == str(tn.dtype).split(".")[-1]
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(_np(cn), _np(tn), rtol=rtol)
    # the closed form in float64
    flat = np.concatenate([g.ravel() for g in _rand_grads()])
    ref = np.abs(flat).max() if norm_type == math.inf else (np.abs(flat) ** norm_type).sum() ** (1 / norm_type)
    np.testing.assert_allclose(_np(cn), ref, rtol=1e-5 if dtype == np.float32 else 1e-12)
    for a, b in zip(cp, tp):
        np.testing.assert_allclose(_np(a.grad), _np(b.grad), rtol=rtol, atol=0)
    if max_norm < ref:  # clipped: the new joint norm is max_norm (up to the 1e-6 guard)
        got = cutils.get_total_norm([p.grad for p in cp], norm_type)
        np.testing.assert_allclose(_np(got), max_norm, rtol=1e-5)


@pytest.mark.parametrize("norm_type", [0.0, -math.inf])
def test_clip_grad_norm_degenerate_orders_like_torch(norm_type, device):
    # order 0 counts non-zeros (per tensor, then the non-zero per-tensor counts); -inf takes minima
    grads = _rand_grads()
    grads[0][2, :] = 0.0
    cp, tp = _grad_pair(grads, device)
    cn = cutils.clip_grad_norm_(cp, 100.0, norm_type=norm_type)
    tn = torch.nn.utils.clip_grad_norm_(tp, 100.0, norm_type=norm_type)
    np.testing.assert_allclose(_np(cn), _np(tn), rtol=1e-6)
    for a, b in zip(cp, tp):
        np.testing.assert_allclose(_np(a.grad), _np(b.grad), rtol=1e-6)


def test_clip_grad_norm_float16_and_mixed_dtypes(device):
    cp, tp = _grad_pair([[3.0, 4.0], [0.5, -0.25, 1.5]], device, np.float16)
    cn, tn = cutils.clip_grad_norm_(cp, 1.0), torch.nn.utils.clip_grad_norm_(tp, 1.0)
    assert cn.dtype == conch.float16 and tn.dtype == torch.float16
    np.testing.assert_array_equal(_np(cn), _np(tn))
    for a, b in zip(cp, tp):
        np.testing.assert_array_equal(_np(a.grad), _np(b.grad))
    # float32 with float64 gradients: the total norm is float64, as torch.stack's promotion
    c32, t32 = _grad_pair([[3.0, 4.0]], device, np.float32)
    c64, t64 = _grad_pair([[1.0, -2.0, 2.0]], device, np.float64)
    cn, tn = cutils.clip_grad_norm_(c32 + c64, 1.0), torch.nn.utils.clip_grad_norm_(t32 + t64, 1.0)
    assert cn.dtype == conch.float64 and tn.dtype == torch.float64
    np.testing.assert_allclose(_np(cn), _np(tn), rtol=1e-12)
    for a, b in zip(c32 + c64, t32 + t64):
        np.testing.assert_allclose(_np(a.grad), _np(b.grad), rtol=1e-6)
        assert _np(a.grad).dtype == _np(b.grad).dtype


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_clip_grad_norm_nonfinite(bad, norm_type, device):
    grads = _rand_grads()
    grads[2][1, 0, 3] = bad
    cp, tp = _grad_pair(grads, device)
    with pytest.raises(RuntimeError, match="non-finite"):
        cutils.clip_grad_norm_(cp, 1.0, norm_type=norm_type, error_if_nonfinite=True)
    with pytest.raises(RuntimeError, match="non-finite"):
        torch.nn.utils.clip_grad_norm_(tp, 1.0, norm_type=norm_type, error_if_nonfinite=True)
    for a, b in zip(cp, tp):  # the raise happens before any gradient is touched
        np.testing.assert_array_equal(_np(a.grad), _np(b.grad))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NumPy "invalid value" warning either
        cn = cutils.clip_grad_norm_(cp, 1.0, norm_type=norm_type)
    tn = torch.nn.utils.clip_grad_norm_(tp, 1.0, norm_type=norm_type)
    np.testing.assert_array_equal(_np(cn), _np(tn))
    for a, b in zip(cp, tp):  # NaN total: every gradient NaN; inf total: finite entries zeroed, inf -> NaN
        np.testing.assert_array_equal(_np(a.grad), _np(b.grad))
    if np.isnan(bad):
        assert all(np.isnan(_np(p.grad)).all() for p in cp)


def test_clip_grad_norm_edge_cases(device):
    # no gradients: tensor(0.); a single tensor instead of a list; parameters without grads ignored
    p = conch.nn.Parameter(conch.ones(3, device=device))
    assert float(cutils.clip_grad_norm_([p], 1.0)) == float(torch.nn.utils.clip_grad_norm_([], 1.0)) == 0.0
    cp, tp = _grad_pair([[6.0, 8.0]], device)
    cn, tn = cutils.clip_grad_norm_(cp[0], 5.0), torch.nn.utils.clip_grad_norm_(tp[0], 5.0)
    np.testing.assert_allclose(_np(cn), _np(tn))
    np.testing.assert_allclose(_np(cp[0].grad), _np(tp[0].grad), rtol=1e-6)
    np.testing.assert_allclose(_np(cp[0].grad), [3.0, 4.0], rtol=1e-5)
    # clip_grads_with_norm_ with a given total (the split recipe of torch 2.6+)
    cp, tp = _grad_pair(_rand_grads(), device)
    ct = cutils.get_total_norm([q.grad for q in cp])
    tt = torch.nn.utils.get_total_norm([q.grad for q in tp])
    np.testing.assert_allclose(_np(ct), _np(tt), rtol=1e-6)
    cutils.clip_grads_with_norm_(cp, 0.7, ct)
    torch.nn.utils.clip_grads_with_norm_(tp, 0.7, tt)
    for a, b in zip(cp, tp):
        np.testing.assert_allclose(_np(a.grad), _np(b.grad), rtol=1e-6)


@pytest.mark.parametrize("clip", [0.5, 2.0])
def test_clip_grad_value_matches_torch(clip, device):
    grads = _rand_grads(scale=2.0)
    grads[0][0, 0], grads[0][1, 1], grads[1][3] = np.inf, -np.inf, np.nan
    cp, tp = _grad_pair(grads, device)
    cutils.clip_grad_value_(cp, clip)
    torch.nn.utils.clip_grad_value_(tp, clip)
    for a, b, g in zip(cp, tp, grads):
        np.testing.assert_array_equal(_np(a.grad), _np(b.grad))
        np.testing.assert_array_equal(_np(a.grad), np.clip(g.astype(np.float32), -clip, clip))


def test_parameters_to_vector_round_trip(device):
    cp, tp = _pair_params(device, shapes=[(3, 4), (5,), (2, 1, 3), (1,)])
    cv, tv = cutils.parameters_to_vector(cp), torch.nn.utils.parameters_to_vector(tp)
    assert tuple(cv.shape) == tuple(tv.shape) == (24,)
    np.testing.assert_array_equal(_np(cv), _np(tv))
    new = np.arange(24, dtype=np.float32) * 0.5 - 3
    cutils.vector_to_parameters(conch.tensor(new, device=device), cp)
    torch.nn.utils.vector_to_parameters(torch.from_numpy(new), tp)
    for a, b in zip(cp, tp):
        assert tuple(a.shape) == tuple(b.shape)
        np.testing.assert_array_equal(_np(a), _np(b))
    # differentiable: d(Σ w ⊙ vec)/dp = w reshaped per parameter, as in torch
    w = np.random.default_rng(0).standard_normal(24).astype(np.float32)
    (cutils.parameters_to_vector(cp) * conch.tensor(w, device=device)).sum().backward()
    (torch.nn.utils.parameters_to_vector(tp) * torch.from_numpy(w)).sum().backward()
    for a, b in zip(cp, tp):
        np.testing.assert_array_equal(_np(a.grad), _np(b.grad))
    with pytest.raises(TypeError):
        cutils.vector_to_parameters(new, cp)
    with pytest.raises(TypeError):
        torch.nn.utils.vector_to_parameters(new, tp)


# ============================================================================ nn.init
NONLINEARITIES = ["linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                  "conv_transpose3d", "sigmoid", "tanh", "relu", "leaky_relu", "selu"]  # fmt: skip


@pytest.mark.parametrize("nl", NONLINEARITIES)
def test_calculate_gain_matches_torch(nl):
    c, t = cinit.calculate_gain(nl), torch.nn.init.calculate_gain(nl)
    assert c == t and type(c) is type(t)


@pytest.mark.parametrize("param", [None, 0, 0.2, 3, 1e-3])
def test_calculate_gain_leaky_relu_param(param):
    assert cinit.calculate_gain("leaky_relu", param) == torch.nn.init.calculate_gain("leaky_relu", param)


@pytest.mark.parametrize("args", [("gelu", None), ("leaky_relu", True), ("leaky_relu", "0.1"), ("Relu", None)])
def test_calculate_gain_rejects_like_torch(args):
    with pytest.raises(ValueError):
        torch.nn.init.calculate_gain(*args)
    with pytest.raises(ValueError):
        cinit.calculate_gain(*args)


FAN_SHAPES = [(512, 512), (64, 32, 3, 3), (8, 4, 5), (3, 7), (2, 3, 1, 4, 5), (0, 4)]


@pytest.mark.parametrize("shape", FAN_SHAPES)
def test_fans_match_torch(shape):
    c = cinit._calculate_fan_in_and_fan_out(conch.empty(*shape))
    t = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
    assert tuple(c) == tuple(t)
    for mode in ("fan_in", "fan_out", "FAN_IN"):
        assert cinit._calculate_correct_fan(conch.empty(*shape), mode) == torch.nn.init._calculate_correct_fan(
            torch.empty(shape), mode
        )


def test_fans_reject_like_torch():
    with pytest.raises(ValueError):
        torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(16))
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        cinit._calculate_fan_in_and_fan_out(conch.empty(16))
    for lib, mk in ((torch.nn.init, lambda: torch.empty(3, 4)), (cinit, lambda: conch.empty(3, 4))):
        with pytest.raises(ValueError, match="fan_avg"):
            lib._calculate_correct_fan(mk(), "fan_avg")


def _trunc_mean(mean, std, a, b):
    """The mean of N(mean, std²) truncated to [a, b] (closed form)."""
    al, be = (a - mean) / std, (b - mean) / std
    phi = lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    Z = 0.5 * (math.erf(be / math.sqrt(2)) - math.erf(al / math.sqrt(2)))  # noqa: N806
    return mean + std * (phi(al) - phi(be)) / Z


def _trunc_std(mean, std, a, b):
    """The standard deviation of N(mean, std²) truncated to [a, b] (closed form)."""
    al, be = (a - mean) / std, (b - mean) / std
    phi = lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    Z = 0.5 * (math.erf(be / math.sqrt(2)) - math.erf(al / math.sqrt(2)))  # noqa: N806
    var = 1 + (al * phi(al) - be * phi(be)) / Z - ((phi(al) - phi(be)) / Z) ** 2
    return std * math.sqrt(var)


# (name, kwargs, shape, kind, expected std, expected bound or None): the expectation is the closed form
_G = math.sqrt(2.0)
INITS = [
    ("kaiming_uniform_", {}, (512, 512), _G * math.sqrt(3 / 512)),
    ("kaiming_uniform_", {"a": math.sqrt(5)}, (64, 32, 3, 3), math.sqrt(1 / 3) * math.sqrt(3 / 288)),
    ("kaiming_uniform_", {"mode": "fan_out", "nonlinearity": "relu"}, (64, 32, 3, 3), _G * math.sqrt(3 / 576)),
    ("kaiming_uniform_", {"a": 0.2, "nonlinearity": "leaky_relu"}, (256, 128),
     math.sqrt(2 / 1.04) * math.sqrt(3 / 128)),
    ("kaiming_normal_", {}, (512, 512), _G / math.sqrt(512)),
    ("kaiming_normal_", {"mode": "fan_out", "nonlinearity": "tanh"}, (64, 32, 3, 3), (5 / 3) / math.sqrt(576)),
    ("xavier_uniform_", {}, (512, 512), math.sqrt(6 / 1024)),
    ("xavier_uniform_", {"gain": 2.5}, (64, 32, 3, 3), 2.5 * math.sqrt(6 / (288 + 576))),
    ("xavier_normal_", {}, (512, 512), math.sqrt(2 / 1024)),
    ("xavier_normal_", {"gain": 0.5}, (64, 32, 3, 3), 0.5 * math.sqrt(2 / (288 + 576))),
    ("trunc_normal_", {}, (512, 512), None),
    ("trunc_normal_", {"mean": 0.5, "std": 0.2, "a": 0.1, "b": 0.8}, (64, 32, 3, 3), None),
    ("trunc_normal_", {"std": 0.02}, (64, 32, 3, 3), None),
]  # fmt: skip


@pytest.mark.parametrize("name,kwargs,shape,param", INITS, ids=[f"{n}-{i}" for i, (n, *_) in enumerate(INITS)])
def test_init_statistics_match_torch(name, kwargs, shape, param, device):
    c = getattr(cinit, name)(conch.empty(*shape, device=device), **kwargs)
    torch.manual_seed(0)
    t = getattr(torch.nn.init, name)(torch.empty(shape), **kwargs)
    cx, tx = _np(c).astype(np.float64), _np(t).astype(np.float64)
    if name.endswith("uniform_"):
        bound, std = param, param / math.sqrt(3)
        assert np.abs(cx).max() <= bound * (1 + 1e-6) and np.abs(tx).max() <= bound * (1 + 1e-6)
        assert np.abs(cx).max() >= 0.99 * bound  # the whole interval is used, not a narrower one
        np.testing.assert_allclose(cx.mean(), 0.0, atol=0.02 * bound)
    elif name.endswith("normal_") and name != "trunc_normal_":
        std = param
        np.testing.assert_allclose(cx.mean(), 0.0, atol=0.02 * std)
    else:
        mean, sd = kwargs.get("mean", 0.0), kwargs.get("std", 1.0)
        a, b = kwargs.get("a", -2.0), kwargs.get("b", 2.0)
        std = _trunc_std(mean, sd, a, b)
        assert a <= cx.min() and cx.max() <= b and a <= tx.min() and tx.max() <= b
        if max(b - mean, mean - a) < 3 * sd:  # bounds within reach: both tails are cut there
            assert cx.min() < a + 0.05 * (b - a) and cx.max() > b - 0.05 * (b - a)
        ref_mean = _trunc_mean(mean, sd, a, b)
        for x in (cx, tx):  # 5 standard errors of the sample mean
            np.testing.assert_allclose(x.mean(), ref_mean, atol=5 * std / math.sqrt(x.size))
    np.testing.assert_allclose(cx.std(), std, rtol=0.02)
    np.testing.assert_allclose(tx.std(), std, rtol=0.02)  # the closed form is PyTorch's, too
    np.testing.assert_allclose(cx.std(), tx.std(), rtol=0.03)


def test_kaiming_zero_element_warns_like_torch():
    with pytest.warns(UserWarning, match="zero-element"):
        torch.nn.init.kaiming_uniform_(torch.empty(0, 4))
    with pytest.warns(UserWarning, match="zero-element"):
        cinit.kaiming_uniform_(conch.empty(0, 4))
    with pytest.warns(UserWarning, match="zero-element"):
        cinit.kaiming_normal_(conch.empty(4, 0))


# ============================================================================ nn.Linear default init
@pytest.mark.parametrize("fan_in,fan_out", [(512, 256), (75, 300)])
def test_linear_default_init_statistics(fan_in, fan_out, device):
    c = conch.nn.Linear(fan_in, fan_out, device=device)
    torch.manual_seed(0)
    t = torch.nn.Linear(fan_in, fan_out)
    bound = 1 / math.sqrt(fan_in)
    for cw, tw, tol in ((c.weight, t.weight, 0.03), (c.bias, t.bias, 0.15)):
        assert tuple(cw.shape) == tuple(tw.shape)
        cx, tx = _np(cw).astype(np.float64), _np(tw).astype(np.float64)
        assert np.abs(cx).max() <= bound * (1 + 1e-6) and np.abs(tx).max() <= bound * (1 + 1e-6)
        assert np.abs(cx).max() >= 0.95 * bound
        np.testing.assert_allclose(cx.std(), bound / math.sqrt(3), rtol=tol)
        np.testing.assert_allclose(cx.std(), tx.std(), rtol=2 * tol)
    assert c.weight.dtype == conch.float32 and c.weight.requires_grad and c.bias.requires_grad


def test_linear_zero_in_features_like_torch():
    with pytest.warns(UserWarning, match="zero-element"):
        t = torch.nn.Linear(0, 4)
    with pytest.warns(UserWarning, match="zero-element"):
        c = conch.nn.Linear(0, 4)
    np.testing.assert_array_equal(_np(c.bias), _np(t.bias))  # bound 0: zeros
    assert tuple(c.weight.shape) == tuple(t.weight.shape) == (4, 0)
