"""conch.optim.lr_scheduler: hand-computed schedules, torch's values exactly, state dicts and resume."""

import math
import warnings

import numpy as np
import pytest

import conch
from conch import optim
from conch.optim import lr_scheduler as S


def _opt(lr=0.1, cls=optim.SGD, groups=1, **kw):
    ps = [conch.zeros(2, requires_grad=True) for _ in range(groups)]
    o = cls([{"params": [p]} for p in ps], lr=lr, **kw)
    o._opt_called = True  # as after a first optimizer.step(): no ordering warning in these tests
    return o


def _lrs(sched, n):
    out = [sched.get_last_lr()[0]]
    for _ in range(n):
        sched.step()
        out.append(sched.get_last_lr()[0])
    return out


def test_step_lr_hand_computed():
    got = _lrs(S.StepLR(_opt(1.0), step_size=3, gamma=0.5), 9)
    assert got == pytest.approx([1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125])


def test_multistep_lr_hand_computed():
    got = _lrs(S.MultiStepLR(_opt(1.0), milestones=[2, 5, 5], gamma=0.1), 6)
    assert got == pytest.approx([1, 1, 0.1, 0.1, 0.1, 0.001, 0.001])  # a repeated milestone applies twice


def test_exponential_lr_hand_computed():
    got = _lrs(S.ExponentialLR(_opt(2.0), gamma=0.5), 4)
    assert got == pytest.approx([2, 1, 0.5, 0.25, 0.125])


@pytest.mark.parametrize("eta_min", [0.0, 0.01])
def test_cosine_annealing_closed_form(eta_min):
    T = 10
    got = _lrs(S.CosineAnnealingLR(_opt(0.1), T_max=T, eta_min=eta_min), 2 * T + 3)
    expect = [eta_min + (0.1 - eta_min) * (1 + math.cos(math.pi * t / T)) / 2 for t in range(2 * T + 4)]
    np.testing.assert_allclose(got, expect, rtol=1e-9, atol=1e-12)


def test_linear_lr_hand_computed():
    got = _lrs(S.LinearLR(_opt(1.0), start_factor=0.25, end_factor=1.0, total_iters=3), 5)
    assert got == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_lambda_lr_per_group():
    o = _opt(1.0, groups=2)
    got = []
    s = S.LambdaLR(o, [lambda e: 0.5**e, lambda e: e + 1])
    for _ in range(4):
        got.append(s.get_last_lr())
        s.step()
    assert got == [[1.0, 1.0], [0.5, 2.0], [0.25, 3.0], [0.125, 4.0]]


def test_one_cycle_closed_form_and_momentum():
    o = _opt(0.1, momentum=0.9)
    total, pct, max_lr = 20, 0.25, 1.0
    s = S.OneCycleLR(o, max_lr=max_lr, total_steps=total, pct_start=pct)
    init, final = max_lr / 25.0, max_lr / 25.0 / 1e4
    up = pct * total - 1  # steps 0..up rise, then anneal to the end

    def cos(a, b, f):
        return b + (a - b) / 2 * (1 + math.cos(math.pi * f))

    for t in range(total):
        if t <= up:
            lr, mom = cos(init, max_lr, t / up), cos(0.95, 0.85, t / up)
        else:
            lr, mom = cos(max_lr, final, (t - up) / (total - 1 - up)), cos(0.85, 0.95, (t - up) / (total - 1 - up))
        assert s.get_last_lr()[0] == pytest.approx(lr, rel=1e-12), t
        assert o.param_groups[0]["momentum"] == pytest.approx(mom, rel=1e-12), t
        s.step() if t < total - 1 else None
    with pytest.raises(ValueError, match="Tried to step"):
        s.step()
        s.step()


def test_one_cycle_cycles_adam_beta1():
    o = _opt(0.1, cls=optim.Adam)
    S.OneCycleLR(o, max_lr=0.5, total_steps=10)
    assert o.param_groups[0]["betas"] == (0.95, 0.999)


def test_sequential_warmup_then_cosine():
    o = _opt(1.0)
    warm = S.LinearLR(o, start_factor=0.1, total_iters=4)
    cos = S.CosineAnnealingLR(o, T_max=6)
    s = S.SequentialLR(o, [warm, cos], milestones=[4])
    got = _lrs(s, 10)
    expect = [0.1 + 0.9 * t / 4 for t in range(4)] + [(1 + math.cos(math.pi * t / 6)) / 2 for t in range(7)]
    np.testing.assert_allclose(got, expect, rtol=1e-9, atol=1e-12)


def test_step_before_optimizer_warns():
    o = _opt()
    o._opt_called = False
    s = S.StepLR(o, step_size=1)
    with pytest.warns(UserWarning, match="before `optimizer.step\\(\\)`"):
        s.step()


def test_bad_arguments():
    with pytest.raises(TypeError):
        S.StepLR(object(), step_size=1)
    with pytest.raises(ValueError):
        S.LinearLR(_opt(), start_factor=0.0)
    with pytest.raises(ValueError):
        S.OneCycleLR(_opt(), max_lr=1.0)
    with pytest.raises(ValueError):
        S.SequentialLR(_opt(), [], milestones=[])
    with pytest.raises(KeyError):
        S.StepLR(_opt(), step_size=2, last_epoch=3)  # resuming needs initial_lr in the groups
    with pytest.raises(ValueError):
        S.LambdaLR(_opt(groups=2), [lambda e: 1.0])


def _make_all(o, which):
    return {
        "step": lambda: S.StepLR(o, step_size=3, gamma=0.7),
        "multistep": lambda: S.MultiStepLR(o, milestones=[2, 5, 5, 9], gamma=0.3),
        "exp": lambda: S.ExponentialLR(o, gamma=0.93),
        "cos": lambda: S.CosineAnnealingLR(o, T_max=7, eta_min=0.001),
        "linear": lambda: S.LinearLR(o, start_factor=0.2, end_factor=0.9, total_iters=6),
        "onecycle": lambda: S.OneCycleLR(o, max_lr=0.3, total_steps=30, pct_start=0.3),
        "onecycle3": lambda: S.OneCycleLR(o, max_lr=0.3, total_steps=30, three_phase=True, anneal_strategy="linear"),
        "lambda": lambda: S.LambdaLR(o, lambda e: 1 / (1 + e)),
        "warm": lambda: S.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2, eta_min=0.001),
    }[which]()


NAMES = ["step", "multistep", "exp", "cos", "linear", "onecycle", "onecycle3", "lambda", "warm"]


@pytest.mark.parametrize("which", NAMES)
def test_exactly_torch(which):
    torch = pytest.importorskip("torch")
    import torch.optim.lr_scheduler as TS

    o = _opt(0.05, momentum=0.9)
    tp = torch.zeros(2, requires_grad=True)
    to = torch.optim.SGD([tp], lr=0.05, momentum=0.9)
    s = _make_all(o, which)
    ts = {
        "step": lambda: TS.StepLR(to, step_size=3, gamma=0.7),
        "multistep": lambda: TS.MultiStepLR(to, milestones=[2, 5, 5, 9], gamma=0.3),
        "exp": lambda: TS.ExponentialLR(to, gamma=0.93),
        "cos": lambda: TS.CosineAnnealingLR(to, T_max=7, eta_min=0.001),
        "linear": lambda: TS.LinearLR(to, start_factor=0.2, end_factor=0.9, total_iters=6),
        "onecycle": lambda: TS.OneCycleLR(to, max_lr=0.3, total_steps=30, pct_start=0.3),
        "onecycle3": lambda: TS.OneCycleLR(to, max_lr=0.3, total_steps=30, three_phase=True, anneal_strategy="linear"),
        "lambda": lambda: TS.LambdaLR(to, lambda e: 1 / (1 + e)),
        "warm": lambda: TS.CosineAnnealingWarmRestarts(to, T_0=3, T_mult=2, eta_min=0.001),
    }[which]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(29):
            assert s.get_last_lr() == ts.get_last_lr()  # exact: the same recursive float arithmetic
            assert o.param_groups[0]["momentum"] == to.param_groups[0]["momentum"]
            to.step()
            s.step()
            ts.step()


def test_sequential_exactly_torch():
    torch = pytest.importorskip("torch")
    import torch.optim.lr_scheduler as TS

    o = _opt(0.05)
    to = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.05)
    s = S.SequentialLR(o, [S.LinearLR(o, 0.1, total_iters=5), S.CosineAnnealingLR(o, T_max=10)], milestones=[5])
    ts = TS.SequentialLR(to, [TS.LinearLR(to, 0.1, total_iters=5), TS.CosineAnnealingLR(to, T_max=10)], [5])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(20):
            assert s.get_last_lr() == ts.get_last_lr()
            to.step()
            s.step()
            ts.step()


@pytest.mark.parametrize("which", NAMES + ["sequential"])
def test_state_dict_resume_through_a_file(which, tmp_path):
    def build(o):
        if which == "sequential":
            return S.SequentialLR(o, [S.LinearLR(o, 0.1, total_iters=3), S.CosineAnnealingLR(o, T_max=8)], [3])
        return _make_all(o, which)

    o1 = _opt(0.05, momentum=0.9)
    s1 = build(o1)
    for _ in range(5):
        s1.step()
    conch.save({"opt": o1.state_dict(), "sched": s1.state_dict()}, tmp_path / "s.safetensors")
    ck = conch.load(tmp_path / "s.safetensors")
    o2 = _opt(0.05, momentum=0.9)
    s2 = build(o2)
    o2.load_state_dict(ck["opt"])
    s2.load_state_dict(ck["sched"])
    for _ in range(12):
        s1.step()
        s2.step()
        assert s1.get_last_lr() == s2.get_last_lr()
        assert o1.param_groups[0]["lr"] == o2.param_groups[0]["lr"]
        assert o1.param_groups[0]["momentum"] == o2.param_groups[0]["momentum"]


def test_closed_form_with_explicit_epoch():
    s = S.StepLR(_opt(1.0), step_size=2, gamma=0.5)
    with pytest.warns(UserWarning, match="epoch parameter"):
        s.step(5)
    assert s.get_last_lr() == [0.25]


def test_warm_restarts_closed_form():
    # restarts after 3, then 3 + 6 = 9, then 9 + 12 = 21 steps: T_cur and T_i from those boundaries
    got = _lrs(S.CosineAnnealingWarmRestarts(_opt(1.0), T_0=3, T_mult=2), 24)
    starts, lengths = [0, 3, 9, 21], [3, 6, 12, 24]
    want = []
    for t in range(25):
        k = max(i for i, b in enumerate(starts) if b <= t)
        want.append(0.5 * (1 + math.cos(math.pi * (t - starts[k]) / lengths[k])))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    s = S.CosineAnnealingWarmRestarts(_opt(1.0), T_0=4)
    s.step(5.5)  # fractional epochs: T_cur = 1.5 of T_i = 4
    assert s.get_last_lr()[0] == pytest.approx(0.5 * (1 + math.cos(math.pi * 1.5 / 4)))


def _plateau_lrs(sched, metrics):
    out = []
    for m in metrics:
        sched.step(m)
        out.append(sched.get_last_lr()[0])
    return out


def test_reduce_on_plateau_hand_computed():
    metrics = [1.0, 0.9, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8]
    # patience 2: the third step without improvement reduces (steps 5 and 9 here)
    got = _plateau_lrs(S.ReduceLROnPlateau(_opt(0.1), factor=0.5, patience=2), metrics)
    np.testing.assert_allclose(got, [0.1] * 4 + [0.05] * 4 + [0.025] * 3)
    # cooldown 2: after a reduction two steps pass uncounted; min_lr floors the lr
    got = _plateau_lrs(S.ReduceLROnPlateau(_opt(0.1), factor=0.5, patience=0, cooldown=2, min_lr=0.03), metrics)
    np.testing.assert_allclose(got, [0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.03, 0.03, 0.03, 0.03, 0.03])
    # mode max with an absolute threshold: +0.05 is not enough to count as better
    got = _plateau_lrs(S.ReduceLROnPlateau(_opt(1.0), mode="max", threshold_mode="abs", threshold=0.1, patience=1),
                       [1.0, 1.05, 1.3, 1.35, 1.4])  # fmt: skip
    np.testing.assert_allclose(got, [1.0, 1.0, 1.0, 1.0, 0.1])


def test_new_scheduler_arguments_are_checked():
    with pytest.raises(ValueError, match="Factor should be < 1.0"):
        S.ReduceLROnPlateau(_opt(), factor=1.5)
    with pytest.raises(ValueError, match="mode"):
        S.ReduceLROnPlateau(_opt(), mode="lowest")
    with pytest.raises(ValueError, match="min_lr must have the same length"):
        S.ReduceLROnPlateau(_opt(groups=2), min_lr=[0.1])
    with pytest.raises(ValueError, match="T_0"):
        S.CosineAnnealingWarmRestarts(_opt(), T_0=0)
    with pytest.raises(ValueError, match="T_mult"):
        S.CosineAnnealingWarmRestarts(_opt(), T_0=2, T_mult=0)


def test_reduce_on_plateau_exactly_torch_and_resume(tmp_path):
    parts = [np.linspace(1, 0.5, 5), np.full(8, 0.5), np.linspace(0.5, 0.4, 3), np.full(9, 0.41)]
    metrics = list(np.concatenate(parts))
    s1 = S.ReduceLROnPlateau(_opt(0.1), patience=1, cooldown=2, factor=0.5, min_lr=0.002)
    first = _plateau_lrs(s1, metrics[:6])
    conch.save({"sched": s1.state_dict()}, tmp_path / "p.safetensors")
    s2 = S.ReduceLROnPlateau(_opt(0.1), patience=1, cooldown=2, factor=0.5, min_lr=0.002)
    s2.load_state_dict(conch.load(tmp_path / "p.safetensors")["sched"])
    s2.optimizer.param_groups[0]["lr"] = s1.optimizer.param_groups[0]["lr"]
    assert _plateau_lrs(s1, metrics[6:]) == _plateau_lrs(s2, metrics[6:])
    torch = pytest.importorskip("torch")
    tp = torch.zeros(2, requires_grad=True)
    ts = torch.optim.lr_scheduler.ReduceLROnPlateau(torch.optim.SGD([tp], lr=0.1), patience=1, cooldown=2,
                                                    factor=0.5, min_lr=0.002)  # fmt: skip
    s3 = S.ReduceLROnPlateau(_opt(0.1), patience=1, cooldown=2, factor=0.5, min_lr=0.002)
    for m in metrics:
        ts.step(m)
        s3.step(m)
        assert s3.get_last_lr() == ts.get_last_lr()
    assert first == _plateau_lrs(S.ReduceLROnPlateau(_opt(0.1), patience=1, cooldown=2, factor=0.5, min_lr=0.002),
                                 metrics[:6])  # fmt: skip
