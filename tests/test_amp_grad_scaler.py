"""GradScaler: inf/NaN injection at every gradient position, exact scale schedule, skipped steps, state machine."""

import numpy as np
import pytest

import conch
from conch.amp import GradScaler
from conch.amp.grad_scaler import _unscale_and_check

SHAPES = [(3, 4), (5,), (2, 1, 3)]


class MomentumSGD:
    """A minimal stateful optimizer (momentum buffers) with the interface GradScaler relies on."""

    def __init__(self, params, lr=0.1, momentum=0.9):
        self.param_groups = [{"params": list(params), "lr": lr, "momentum": momentum}]
        self.state = {}
        self.steps = 0

    def step(self):
        self.steps += 1
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                buf = self.state.get(id(p))
                buf = p.grad._data.copy() if buf is None else buf * g["momentum"] + p.grad._data
                self.state[id(p)] = buf
                p._data -= g["lr"] * buf

    def zero_grad(self):
        for g in self.param_groups:
            for p in g["params"]:
                p.grad = None


def _params(device, dtype=conch.float32):
    return [conch.randn(*s, dtype=dtype, device=device, requires_grad=True) for s in SHAPES]


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)  # CuPy arrays copy to the host with .get()


def _snapshot(params, opt):
    return [p.cpu()._data.tobytes() for p in params], {k: _host(v).tobytes() for k, v in opt.state.items()}


def _loss(params, coefs):
    # L = Σ_k Σ c_k · p_k, so dL/dp_k = c_k exactly
    total = None
    for p, c in zip(params, coefs):
        term = (p * c).sum()
        total = term if total is None else total + term
    return total


def _coefs(device):
    rng = np.random.default_rng(7)
    return [conch.tensor(rng.standard_normal(s).astype(np.float32), device=device) for s in SHAPES]


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("pos", range(len(SHAPES)))
def test_inf_nan_injection_schedule(pos, bad, device):
    params, coefs = _params(device), _coefs(device)
    opt = MomentumSGD(params)
    init, growth, backoff, interval = 2.0**10, 2.0, 0.5, 3
    scaler = GradScaler(init_scale=init, growth_factor=growth, backoff_factor=backoff, growth_interval=interval)
    bad_steps = {1, 5, 6, 11}
    n_steps, skipped, grown, run = 14, 0, 0, 0
    for step in range(n_steps):
        opt.zero_grad()
        scaler.scale(_loss(params, coefs)).backward()
        # gradients arrive multiplied by the scale (a power of two: exact)
        for p, c in zip(params, coefs):
            np.testing.assert_array_equal(p.grad.cpu().numpy(), c.cpu().numpy() * scaler.get_scale())
        if step in bad_steps:
            g = params[pos].grad._data
            g.reshape(-1)[(step * 5) % g.size] = bad  # a different element each time
        before = _snapshot(params, opt)
        stepped = scaler.step(opt)
        after = _snapshot(params, opt)
        if step in bad_steps:
            assert stepped is False
            assert before == after, "a skipped step changed parameters or optimizer state"
            skipped += 1
            run = 0
        else:
            assert stepped is True
            assert before[0] != after[0]
            # the optimizer saw the true gradients (unscaled exactly)
            for p, c in zip(params, coefs):
                np.testing.assert_array_equal(p.grad.cpu().numpy(), c.cpu().numpy())
            run += 1
            if run == interval:
                grown, run = grown + 1, 0
        scaler.update()
    assert opt.steps == n_steps - len(bad_steps)
    assert scaler.get_scale() == init * growth**grown * backoff**skipped
    assert (grown, skipped) == (2, 4)
    assert scaler._get_growth_tracker() == run


def test_default_schedule_matches_pytorch_defaults(device):
    s = GradScaler()
    assert (s.get_scale(), s.get_growth_factor(), s.get_backoff_factor(), s.get_growth_interval()) == (
        65536.0, 2.0, 0.5, 2000)  # fmt: skip
    assert s.is_enabled()


def test_growth_stays_finite_in_float32():
    params = _params("cpu")
    opt = MomentumSGD(params)
    s = GradScaler(init_scale=2.0**127, growth_interval=1)
    for _ in range(2):
        _loss(params, [1e-30] * 3).backward()  # keep the scaled gradients finite
        assert s.step(opt)
        s.update()
        opt.zero_grad()
    assert s.get_scale() == 2.0**127  # 2^128 is inf in float32: PyTorch keeps the old scale


def test_state_dict_round_trip(device):
    params, coefs = _params(device), _coefs(device)
    opt = MomentumSGD(params)
    a = GradScaler(init_scale=256.0, growth_interval=4)
    for step in range(6):
        opt.zero_grad()
        a.scale(_loss(params, coefs)).backward()
        if step == 2:
            params[0].grad._data[0, 0] = np.nan
        a.step(opt)
        a.update()
    sd = a.state_dict()
    assert sd == {"scale": 128.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 4,
                  "_growth_tracker": 3}  # fmt: skip
    b = GradScaler()
    b.load_state_dict(sd)
    assert b.state_dict() == sd
    for s in (a, b):  # one more clean step grows both
        opt.zero_grad()
        s.scale(_loss(params, coefs)).backward()
        s.step(opt)
        s.update()
    assert a.get_scale() == b.get_scale() == 256.0
    with pytest.raises(RuntimeError, match="empty"):
        GradScaler().load_state_dict({})
    with pytest.raises(KeyError, match="growth_interval"):
        GradScaler().load_state_dict({"scale": 1.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                      "_growth_tracker": 0})  # fmt: skip


def _scaled_backward(scaler, params, coefs):
    scaler.scale(_loss(params, coefs)).backward()


def test_misuse_errors(device):
    params, coefs = _params(device), _coefs(device)
    opt = MomentumSGD(params)
    s = GradScaler()
    with pytest.raises(RuntimeError, match="No inf checks were recorded"):
        s.update()
    _scaled_backward(s, params, coefs)
    s.unscale_(opt)
    with pytest.raises(RuntimeError, match=r"unscale_\(\) has already been called on this optimizer since the last"):
        s.unscale_(opt)
    assert s.step(opt)
    with pytest.raises(RuntimeError, match=r"step\(\) has already been called since the last update\(\)"):
        s.step(opt)
    with pytest.raises(RuntimeError, match=r"unscale_\(\) is being called after step\(\)"):
        s.unscale_(opt)
    s.update()
    opt.zero_grad()
    _scaled_backward(s, params, coefs)
    assert s.step(opt)  # READY again after update
    s.update()
    with pytest.raises(RuntimeError, match="Closure"):
        s.step(opt, closure=lambda: None)


def test_unscale_then_step_unscales_once(device):
    params, coefs = _params(device), _coefs(device)
    opt = MomentumSGD(params)
    s = GradScaler(init_scale=64.0)
    _scaled_backward(s, params, coefs)
    s.unscale_(opt)
    for p, c in zip(params, coefs):
        np.testing.assert_array_equal(p.grad.cpu().numpy(), c.cpu().numpy())
    for p in params:  # e.g. clipping between unscale_ and step
        p.grad._data *= 0.5
    assert s.step(opt)
    for p, c in zip(params, coefs):
        np.testing.assert_array_equal(p.grad.cpu().numpy(), c.cpu().numpy() * 0.5)
    s.update()
    assert s.get_scale() == 64.0


def test_two_optimizers_are_skipped_independently(device):
    params, coefs = _params(device), _coefs(device)
    o1, o2 = MomentumSGD(params[:1]), MomentumSGD(params[1:])
    s = GradScaler(init_scale=8.0)
    _scaled_backward(s, params, coefs)
    params[2].grad._data.reshape(-1)[0] = np.inf
    assert s.step(o1) is True
    assert s.step(o2) is False
    s.update()
    assert (o1.steps, o2.steps) == (1, 0)
    assert s.get_scale() == 4.0  # any inf backs off the shared scale


def test_disabled_is_a_pass_through(device):
    params, coefs = _params(device), _coefs(device)
    opt = MomentumSGD(params)
    s = GradScaler(enabled=False)
    loss = _loss(params, coefs)
    assert s.scale(loss) is loss
    loss.backward()
    params[0].grad._data[0, 0] = np.inf  # not checked when disabled
    s.unscale_(opt)
    assert s.step(opt) is True and opt.steps == 1
    s.update()
    s.update()
    assert s.get_scale() == 1.0 and s.state_dict() == {} and not s.is_enabled()
    s.load_state_dict({"scale": 3.0})
    assert s.get_scale() == 1.0


def test_float16_parameters_are_refused(device):
    p = conch.randn(3, dtype=conch.float16, device=device, requires_grad=True)
    opt = MomentumSGD([p])
    s = GradScaler(init_scale=1024.0)  # 2^16 itself overflows float16's range
    s.scale((p * 1).sum()).backward()
    with pytest.raises(ValueError, match=r"float32 \(master weights: model.float\(\)\).*autocast"):
        s.step(opt)
    # bfloat16 parameters are allowed (no refusal), as in PyTorch
    q = conch.randn(3, dtype=conch.bfloat16, device=device, requires_grad=True)
    s2 = GradScaler()
    s2.scale(q.float().sum()).backward()
    assert s2.step(MomentumSGD([q]))


def test_scale_nested_outputs_and_promotion(device):
    s = GradScaler(init_scale=4.0)
    a = conch.ones(2, device=device)
    b = conch.ones((), dtype=conch.float16, device=device)
    c = conch.ones(3, dtype=conch.float16, device=device)
    out = s.scale([a, (b, c)])
    assert isinstance(out, list) and isinstance(out[1], tuple)
    assert out[0].tolist() == [4.0, 4.0]
    assert out[1][0].dtype == conch.float32  # 0-d float16 * 0-d float32 scale -> float32 (no overflow)
    assert out[1][1].dtype == conch.float16
    with pytest.raises(ValueError, match="Tensor"):
        s.scale(3.0)


def test_update_with_new_scale():
    s = GradScaler()
    s.update(new_scale=128.0)
    assert s.get_scale() == 128.0
    s.update(conch.tensor([32.0]))
    assert s.get_scale() == 32.0
    with pytest.raises(ValueError, match="1-element"):
        s.update(conch.tensor([1.0, 2.0]))
    with pytest.raises(TypeError):
        s.update("big")


@pytest.mark.parametrize(
    "kwargs, err",
    [({"growth_factor": 1.0}, ValueError), ({"backoff_factor": 1.5}, ValueError), ({"init_scale": -1.0}, ValueError),
     ({"growth_interval": 0}, ValueError), ({"growth_interval": 2.5}, TypeError), ({"init_scale": float("nan")},
     TypeError)],
)  # fmt: skip
def test_bad_constructor_arguments(kwargs, err):
    with pytest.raises(err):
        GradScaler(**kwargs)


def test_torch_style_device_first_argument():
    assert GradScaler("cuda").get_scale() == 65536.0  # torch.amp.GradScaler("cuda")
    assert GradScaler(device="cpu", init_scale=8.0).get_scale() == 8.0


def test_unscale_and_check_is_one_pass_without_host_sync(device):
    xp = np if device == "cpu" else __import__("cupy")
    g1 = xp.asarray(np.full((3, 3), 8.0, np.float32))
    g2 = xp.asarray(np.array([2.0, -4.0], np.float32))
    found = _unscale_and_check([g1, g2], 0.25)
    assert type(found) is type(g1) and found.shape == () and found.dtype == np.float32  # a device array
    assert float(found) == 0.0
    assert (g1 == 2.0).all() and g2.tolist() == [0.5, -1.0]
    for bad in (np.inf, np.nan):
        g2[1] = bad
        assert float(_unscale_and_check([g1, g2], 1.0)) == 1.0
    with pytest.raises(ValueError):
        _unscale_and_check([], 1.0)


def test_works_with_conch_optim_if_present(device):
    optim = pytest.importorskip("conch.optim", reason="conch.optim not importable yet")
    if not hasattr(optim, "Adam"):
        pytest.skip("conch.optim.Adam not there yet")
    params, coefs = _params(device), _coefs(device)
    opt = optim.Adam(params, lr=1e-2)
    s = GradScaler(init_scale=16.0, growth_interval=2)
    for step in range(4):
        opt.zero_grad()
        s.scale(_loss(params, coefs)).backward()
        if step == 1:
            params[1].grad._data[0] = np.nan
        before = [p.cpu()._data.tobytes() for p in params]
        sd_before = repr(opt.state_dict())
        stepped = s.step(opt)
        if step == 1:
            assert not stepped
            assert before == [p.cpu()._data.tobytes() for p in params]
            assert repr(opt.state_dict()) == sd_before
        else:
            assert stepped
        s.update()
    assert s.get_scale() == 16.0 * 0.5 * 2.0
