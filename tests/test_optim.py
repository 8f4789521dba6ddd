"""conch.optim optimizers: against float64 NumPy references, hand-computed steps, and torch.optim (to a few ulps
in the default fast mode, bit for bit under ``set_bitwise_torch(True)``)."""

import numpy as np
import pytest

import conch
import conch.optim.optimizer as opt_mod
from conch import optim

F32, F64 = np.float32, np.float64
SHAPES = [(7, 5), (13,), (3, 4, 2)]
FAST_CHUNK = opt_mod._FAST_CHUNK_BYTES // 4  # float32 elements per piece of the fast path
MODES = ["fast", "bitwise"]


@pytest.fixture
def bitwise():
    """Run a test with the optimizers in torch-bitwise mode, restoring the default afterwards."""
    optim.set_bitwise_torch(True)
    yield
    optim.set_bitwise_torch(False)


@pytest.fixture(params=MODES)
def mode(request):
    """Run a test in both numerical modes (the value is the mode's name)."""
    optim.set_bitwise_torch(request.param == "bitwise")
    yield request.param
    optim.set_bitwise_torch(False)


# ------------------------------------------------------------------------------------------ float64 references
# Written from the published update rules (the torch.optim documentation's pseudo-code), in float64.


def ref_sgd(p, grads, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False):
    p, buf, out = p.astype(F64), None, []
    for g in grads:
        g = g.astype(F64) * (-1 if maximize else 1)
        g = g + weight_decay * p
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g
        out.append(p)
    return out


def ref_adam(p, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False,
             decoupled=False):  # fmt: skip
    p = p.astype(F64)
    m, v, vmax, out = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p), []
    b1, b2 = betas
    for t, g in enumerate(grads, 1):
        g = g.astype(F64) * (-1 if maximize else 1)
        if decoupled:
            p = p * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        vmax = np.maximum(vmax, v)
        vv = vmax if amsgrad else v
        p = p - lr / (1 - b1**t) * m / (np.sqrt(vv) / np.sqrt(1 - b2**t) + eps)
        out.append(p)
    return out


def ref_rmsprop(p, grads, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                maximize=False):  # fmt: skip
    p = p.astype(F64)
    sq, ga, buf, out = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p), []
    for g in grads:
        g = g.astype(F64) * (-1 if maximize else 1)
        g = g + weight_decay * p
        sq = alpha * sq + (1 - alpha) * g * g
        if centered:
            ga = alpha * ga + (1 - alpha) * g
            avg = np.sqrt(sq - ga * ga) + eps
        else:
            avg = np.sqrt(sq) + eps
        if momentum > 0:
            buf = momentum * buf + g / avg
            p = p - lr * buf
        else:
            p = p - lr * g / avg
        out.append(p)
    return out


def ref_adagrad(p, grads, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10,
                maximize=False):  # fmt: skip
    p = p.astype(F64)
    s, out = np.full_like(p, initial_accumulator_value), []
    for t, g in enumerate(grads, 1):
        g = g.astype(F64) * (-1 if maximize else 1)
        g = g + weight_decay * p
        clr = lr / (1 + (t - 1) * lr_decay)
        s = s + g * g
        p = p - clr * g / (np.sqrt(s) + eps)
        out.append(p)
    return out


def _adamw_ref(p, grads, **kw):
    return ref_adam(p, grads, decoupled=True, **kw)


CASES = [
    (optim.SGD, ref_sgd, dict(lr=0.1)),
    (optim.SGD, ref_sgd, dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
    (optim.SGD, ref_sgd, dict(lr=0.1, momentum=0.9, dampening=0.3, maximize=True)),
    (optim.SGD, ref_sgd, dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.1)),
    (optim.Adam, ref_adam, dict(lr=0.01)),
    (optim.Adam, ref_adam, dict(lr=0.01, weight_decay=0.1, amsgrad=True, betas=(0.6, 0.9))),
    (optim.Adam, ref_adam, dict(lr=0.01, maximize=True, betas=(0.3, 0.99), eps=1e-3)),
    (optim.AdamW, _adamw_ref, dict(lr=0.01, weight_decay=1e-2)),
    (optim.AdamW, _adamw_ref, dict(lr=0.01, weight_decay=0.3, amsgrad=True)),
    (optim.RMSprop, ref_rmsprop, dict(lr=0.01)),
    (optim.RMSprop, ref_rmsprop, dict(lr=0.01, momentum=0.9, centered=True, weight_decay=0.1)),
    (optim.RMSprop, ref_rmsprop, dict(lr=0.01, alpha=0.3, centered=True, maximize=True)),
    (optim.Adagrad, ref_adagrad, dict(lr=0.1)),
    (optim.Adagrad, ref_adagrad, dict(lr=0.1, lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.5)),
]
IDS = [f"{c.__name__}-{i}" for i, (c, _, _) in enumerate(CASES)]


def _problem(rng, shapes=SHAPES, steps=5):
    init = [rng.standard_normal(s).astype(F32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(F32) for s in shapes] for _ in range(steps)]
    return init, grads


def _host(t):
    return t.detach().cpu().numpy()


def _run_conch(cls, kw, init, grads, device="cpu"):
    ps = [conch.tensor(a, device=device, requires_grad=True) for a in init]
    o = cls(ps, **kw)
    hist = []
    for gs in grads:
        for p, g in zip(ps, gs):
            p.grad = conch.tensor(g, device=device)
        o.step()
        hist.append([_host(p).copy() for p in ps])
    return hist, o, ps


@pytest.mark.parametrize("cls,ref,kw", CASES, ids=IDS)
def test_matches_float64_reference(cls, ref, kw, device, mode):
    rng = np.random.default_rng(0)
    # the long parameter runs the fast path in pieces (the last one partial)
    init, grads = _problem(rng, shapes=[*SHAPES, (FAST_CHUNK + 77,)] if mode == "fast" else SHAPES)
    hist, _, _ = _run_conch(cls, kw, init, grads, device)
    for i, a in enumerate(init):
        expect = ref(a, [g[i] for g in grads], **kw)
        for k in range(len(grads)):
            np.testing.assert_allclose(hist[k][i], expect[k], rtol=2e-5, atol=2e-6, err_msg=f"param {i} step {k}")


def test_adam_first_step_is_signed_lr(device):
    # step 1: m = (1-b1) g, v = (1-b2) g^2, so p -= lr * g / (|g| + eps): a move of lr against sign(g)
    g = np.array([3.0, -0.5, 1e-3, -200.0], F32)
    p = conch.zeros(4, device=device, requires_grad=True)
    p.grad = conch.tensor(g, device=device)
    optim.Adam([p], lr=0.25, eps=1e-8).step()
    np.testing.assert_allclose(_host(p), -0.25 * g / (np.abs(g) + 1e-8), rtol=1e-6)


def test_sgd_exact_small_numbers(device):
    # lr, grads and weights chosen exactly representable: every step is exact in float32
    p = conch.tensor([1.0, -2.0], device=device, requires_grad=True)
    o = optim.SGD([p], lr=0.5, momentum=0.5)
    for g, expect in [([1.0, 1.0], [0.5, -2.5]), ([1.0, -1.0], [-0.25, -2.25]), ([0.0, 0.0], [-0.625, -2.125])]:
        p.grad = conch.tensor(g, device=device)
        o.step()
        assert _host(p).tolist() == expect  # buf: [1,1] -> [1.5,-0.5] -> [0.75,-0.25]


def test_adagrad_hand_computed(device):
    p = conch.tensor([1.0], device=device, requires_grad=True)
    o = optim.Adagrad([p], lr=1.0, eps=0.0, initial_accumulator_value=0.0)
    p.grad = conch.tensor([3.0], device=device)
    o.step()  # s = 9, p = 1 - 3/3 = 0
    p.grad = conch.tensor([4.0], device=device)
    o.step()  # s = 25, p = 0 - 4/5
    np.testing.assert_allclose(_host(p), [-0.8], rtol=1e-7)


# ------------------------------------------------------------------------------------------ torch, bit for bit


def _torch_sqrt(torch):
    def sqrt(a, out, dtype):
        out[...] = torch.from_numpy(np.ascontiguousarray(a, dtype=dtype)).sqrt().numpy()
        return out

    return sqrt


def _torch_cls(torch, cls):
    return getattr(torch.optim, cls.__name__)


def _compare_torch(torch, cls, kw, init, grads):
    hist, o, _ = _run_conch(cls, kw, init, grads)
    tps = [torch.tensor(a, requires_grad=True) for a in init]
    to = _torch_cls(torch, cls)(tps, **kw)
    worst = 0
    for k, gs in enumerate(grads):
        for p, g in zip(tps, gs):
            p.grad = torch.tensor(g)
        to.step()
        for a, b in zip(hist[k], tps):
            b = b.detach().numpy()
            ulp = np.abs(a.view(np.int32).astype(np.int64) - b.view(np.int32).astype(np.int64)).max()
            worst = max(worst, int(ulp))
    return worst, o, to


@pytest.mark.parametrize("cls,kw", [(c, kw) for c, _, kw in CASES], ids=IDS)
def test_bitwise_vs_torch(cls, kw, device, monkeypatch, bitwise):
    if device != "cpu":
        pytest.skip("torch comparison runs on the CPU reference path")
    torch = pytest.importorskip("torch")
    # torch's CPU sqrt is a SIMD approximation (within 1 ulp); with it substituted every other operation must
    # round exactly as torch's kernels do, including pieces of a large parameter (chunked update)
    monkeypatch.setattr(opt_mod, "_sqrt", _torch_sqrt(torch))
    rng = np.random.default_rng(1)
    init, grads = _problem(rng, shapes=[*SHAPES, (2 * opt_mod._CHUNK + 77,)], steps=4)
    worst, o, to = _compare_torch(torch, cls, kw, init, grads)
    assert worst == 0
    # the state (buffers, step) matches too
    for p_c, p_t in zip(o.param_groups[0]["params"], to.param_groups[0]["params"]):
        sc, st = o.state[p_c], to.state[p_t]
        assert set(sc) == set(st)
        for key in sc:
            np.testing.assert_array_equal(_host(sc[key]), st[key].numpy(), err_msg=key)


@pytest.mark.parametrize("cls,kw", [(c, kw) for c, _, kw in CASES[4:]], ids=IDS[4:])
def test_close_to_torch_with_exact_sqrt(cls, kw, device, bitwise):
    if device != "cpu":
        pytest.skip("torch comparison runs on the CPU reference path")
    torch = pytest.importorskip("torch")
    init, grads = _problem(np.random.default_rng(2), steps=1)
    worst, _, _ = _compare_torch(torch, cls, kw, init, grads)
    assert worst <= 2  # one step: only the sqrt may differ, by 1 ulp, and the division by it


# RMSprop centered computes sqrt(v - g_avg^2), which cancels: torch's fused multiply-adds round once where the
# fast path rounds twice, so its few-ulp differences are amplified in those elements
FAST_TOL = {"RMSprop-10": 3e-6, "RMSprop-11": 3e-6}


@pytest.mark.parametrize("cls,kw,case", [(c, kw, i) for (c, _, kw), i in zip(CASES, IDS)], ids=IDS)
def test_fast_mode_close_to_torch(cls, kw, case, device):
    if device != "cpu":
        pytest.skip("torch comparison runs on the CPU path")
    torch = pytest.importorskip("torch")
    init, grads = _problem(np.random.default_rng(8), shapes=[*SHAPES, (FAST_CHUNK + 77,)], steps=5)
    hist, o, _ = _run_conch(cls, kw, init, grads)
    tps = [torch.tensor(a, requires_grad=True) for a in init]
    to = _torch_cls(torch, cls)(tps, **kw)
    tol = FAST_TOL.get(case, 1e-6)
    for k, gs in enumerate(grads):
        for p, g in zip(tps, gs):
            p.grad = torch.tensor(g)
        to.step()
        for i, (a, b) in enumerate(zip(hist[k], tps)):
            b = b.detach().numpy()  # a few ulps of the parameter's scale
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=tol * np.abs(b).max(), err_msg=f"param {i} step {k}")
    for p_c, p_t in zip(o.param_groups[0]["params"], to.param_groups[0]["params"]):
        sc, st = o.state[p_c], to.state[p_t]
        assert set(sc) == set(st)
        for key in sc:
            b = st[key].numpy()
            np.testing.assert_allclose(_host(sc[key]), b, rtol=1e-5, atol=1e-5 * np.abs(b).max(), err_msg=key)


def test_fast_mode_is_not_bitwise_torch(device):
    # the control for the bitwise tests: the fast path rounds differently from torch's fused multiply-adds
    init, grads = _problem(np.random.default_rng(9), shapes=[(4000,)], steps=2)
    fast, _, _ = _run_conch(optim.AdamW, {"lr": 0.01}, init, grads, device)
    optim.set_bitwise_torch(True)
    try:
        exact, _, _ = _run_conch(optim.AdamW, {"lr": 0.01}, init, grads, device)
    finally:
        optim.set_bitwise_torch(False)
    if device == "cpu":  # on a GPU both modes run the fused kernel (hardware FMAs): the switch is a CPU one
        assert not np.array_equal(fast[-1][0], exact[-1][0])
    np.testing.assert_allclose(fast[-1][0], exact[-1][0], rtol=1e-6, atol=1e-6)


def test_set_bitwise_torch_switch():
    assert optim.is_bitwise_torch() is False  # the default
    optim.set_bitwise_torch(True)
    try:
        assert optim.is_bitwise_torch() is True
    finally:
        optim.set_bitwise_torch(False)
    assert optim.is_bitwise_torch() is False
    with pytest.raises(TypeError, match="bool"):
        optim.set_bitwise_torch("yes")


@pytest.mark.parametrize("cls,ref,kw", CASES, ids=IDS)
def test_fast_mode_allocates_no_float64(cls, ref, kw, monkeypatch, cpu_path):
    # float32 parameters update in float32: no float64 temporary (the bitwise mode's fma emulation) is requested
    # (the compiled kernels request no workspace at all: tests/test_optim_numba.py checks they allocate nothing)
    dtypes = []
    get, flat = opt_mod._Workspace.get, opt_mod._Workspace.flat

    def spy_get(self, slot, like, dt):
        dtypes.append(np.dtype(dt))
        return get(self, slot, like, dt)

    def spy_flat(self, slot, n, dt):
        dtypes.append(np.dtype(dt))
        return flat(self, slot, n, dt)

    monkeypatch.setattr(opt_mod._Workspace, "get", spy_get)
    monkeypatch.setattr(opt_mod._Workspace, "flat", spy_flat)
    init, grads = _problem(np.random.default_rng(10), shapes=[(5, 3), (FAST_CHUNK + 5,)], steps=2)
    _run_conch(cls, kw, init, grads)
    assert set(dtypes) == ({np.dtype(F32)} if cpu_path == "numpy" else set())
    dtypes.clear()
    optim.set_bitwise_torch(True)
    try:
        _run_conch(cls, kw, init, grads)
    finally:
        optim.set_bitwise_torch(False)
    # the bitwise mode does use float64 (the check above can fail); its compiled kernels emulate the fma in
    # registers, with no workspace
    assert (np.dtype(F64) in dtypes) == (cpu_path == "numpy")


@pytest.mark.parametrize("cls,ref,kw", [CASES[1], CASES[5], CASES[10], CASES[13]], ids=[IDS[i] for i in (1, 5, 10, 13)])
def test_fast_mode_non_contiguous_grad_and_param(cls, ref, kw, device):
    # a transposed gradient (pieces need a contiguous copy) and a transposed parameter (one whole-array pass),
    # both longer than a piece
    rng = np.random.default_rng(11)
    shapes = [(3, FAST_CHUNK), (FAST_CHUNK // 4 + 1, 5)]
    init = [rng.standard_normal(s).astype(F32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(F32) for s in shapes] for _ in range(3)]
    ps = [conch.tensor(init[0], device=device, requires_grad=True),
          conch.tensor(np.ascontiguousarray(init[1].T), device=device).T.detach().requires_grad_()]  # fmt: skip
    assert not ps[1]._data.flags.c_contiguous and ps[1].numel() > FAST_CHUNK
    o = cls(ps, **kw)
    for gs in grads:
        ps[0].grad = conch.tensor(np.ascontiguousarray(gs[0].T), device=device).T
        ps[1].grad = conch.tensor(gs[1], device=device)
        assert not ps[0].grad._data.flags.c_contiguous
        o.step()
    for i, p in enumerate(ps):
        expect = ref(init[i], [g[i] for g in grads], **kw)[-1]
        np.testing.assert_allclose(_host(p), expect, rtol=2e-5, atol=2e-6, err_msg=f"param {i}")


def test_state_dict_layout_matches_torch(device):
    torch = pytest.importorskip("torch")
    init, grads = _problem(np.random.default_rng(3), steps=2)
    _, o, _ = _run_conch(optim.Adam, dict(lr=0.01, amsgrad=True), init, grads, device)
    tps = [torch.tensor(a, requires_grad=True) for a in init]
    to = torch.optim.Adam(tps, lr=0.01, amsgrad=True)
    for gs in grads:
        for p, g in zip(tps, gs):
            p.grad = torch.tensor(g)
        to.step()
    sd, tsd = o.state_dict(), to.state_dict()
    assert sorted(sd["state"]) == sorted(tsd["state"]) == [0, 1, 2]
    assert sd["param_groups"][0]["params"] == tsd["param_groups"][0]["params"]
    for k in ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize"):
        assert sd["param_groups"][0][k] == tsd["param_groups"][0][k]
    for i in range(3):
        assert set(sd["state"][i]) == set(tsd["state"][i])
        assert float(sd["state"][i]["step"].item()) == float(tsd["state"][i]["step"]) == 2.0


def test_loads_a_torch_optimizer_state_dict(monkeypatch, bitwise):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(opt_mod, "_sqrt", _torch_sqrt(torch))
    init, grads = _problem(np.random.default_rng(7), steps=5)
    tps = [torch.tensor(a, requires_grad=True) for a in init]
    to = torch.optim.AdamW(tps, lr=0.01, amsgrad=True)
    for k, gs in enumerate(grads):
        if k == 2:  # hand torch's state over to conch after two steps
            ps = [conch.tensor(p.detach().numpy().copy(), requires_grad=True) for p in tps]
            o = optim.AdamW(ps, lr=0.01, amsgrad=True)
            o.load_state_dict(to.state_dict())
        for p, g in zip(tps, gs):
            p.grad = torch.tensor(g)
        to.step()
        if k >= 2:
            for p, g in zip(ps, gs):
                p.grad = conch.tensor(g)
            o.step()
    for a, b in zip(ps, tps):
        np.testing.assert_array_equal(_host(a), b.detach().numpy())


# ------------------------------------------------------------------------------------------ the interface


def _params(device, n=2):
    return [conch.randn(3, 2, device=device, requires_grad=True) for _ in range(n)]


def test_param_groups_and_defaults(device):
    a, b = _params(device)
    o = optim.SGD([{"params": [a]}, {"params": b, "lr": 0.5, "momentum": 0.9}], lr=0.1)
    assert [g["lr"] for g in o.param_groups] == [0.1, 0.5]
    assert o.param_groups[0]["momentum"] == 0.0 and o.param_groups[1]["momentum"] == 0.9
    a0, b0 = _host(a).copy(), _host(b).copy()
    a.grad = conch.ones(3, 2, device=device)
    b.grad = conch.ones(3, 2, device=device)
    o.step()
    np.testing.assert_allclose(_host(a), a0 - 0.1, rtol=1e-6)
    np.testing.assert_allclose(_host(b), b0 - 0.5, rtol=1e-6)
    c = conch.randn(2, device=device, requires_grad=True)
    o.add_param_group({"params": [c], "lr": 1.0})
    assert o.param_groups[2]["momentum"] == 0.0 and len(o.param_groups) == 3


def test_plain_sgd_keeps_no_state(device):
    a, b = _params(device)
    o = optim.SGD([a, b], lr=0.1)
    a.grad = conch.ones(3, 2, device=device)
    o.step()
    assert o.state_dict()["state"] == {}  # as torch.optim.SGD without momentum
    o2 = optim.SGD([a, b], lr=0.1, momentum=0.9)
    o2.step()
    assert list(o2.state_dict()["state"]) == [0]


def test_named_parameters_accepted(device):
    a, b = _params(device)
    o = optim.Adam([("w", a), ("b", b)], lr=0.1)
    assert o.param_groups[0]["param_names"] == ["w", "b"]


@pytest.mark.parametrize(
    "make,err",
    [
        (lambda ps: optim.SGD([], lr=0.1), ValueError),
        (lambda ps: optim.SGD(ps[0], lr=0.1), TypeError),
        (lambda ps: optim.SGD(set(ps), lr=0.1), TypeError),
        (lambda ps: optim.SGD([ps[0] * 2], lr=0.1), ValueError),
        (lambda ps: optim.SGD([{"params": [ps[0]]}, {"params": [ps[0]]}], lr=0.1), ValueError),
        (lambda ps: optim.SGD(ps, lr=-1.0), ValueError),
        (lambda ps: optim.SGD(ps, lr=0.1, nesterov=True), ValueError),
        (lambda ps: optim.Adam(ps, betas=(1.0, 0.9)), ValueError),
        (lambda ps: optim.Adam(ps, eps=-1.0), ValueError),
        (lambda ps: optim.AdamW(ps, weight_decay=-0.1), ValueError),
        (lambda ps: optim.RMSprop(ps, alpha=-0.5), ValueError),
        (lambda ps: optim.Adagrad(ps, lr_decay=-1.0), ValueError),
        (lambda ps: optim.SGD([1.0, 2.0], lr=0.1), TypeError),
    ],
)
def test_bad_arguments_raise(make, err, device):
    with pytest.raises(err):
        make(_params(device))


def test_zero_grad(device):
    a, b = _params(device)
    o = optim.SGD([a, b], lr=0.1)
    a.grad = conch.ones(3, 2, device=device)
    b.grad = conch.ones(3, 2, device=device)
    o.zero_grad(set_to_none=False)
    assert _host(a.grad).tolist() == [[0.0, 0.0]] * 3
    o.zero_grad()
    assert a.grad is None and b.grad is None


def test_params_without_grad_are_skipped(device):
    a, b = _params(device)
    o = optim.Adam([a, b], lr=0.1)
    b0 = _host(b).copy()
    a.grad = conch.ones(3, 2, device=device)
    o.step()
    np.testing.assert_array_equal(_host(b), b0)
    assert b not in o.state and float(o.state[a]["step"].item()) == 1.0


def test_closure_and_real_backward(device):
    w = conch.tensor([2.0, -1.0], device=device, requires_grad=True)
    o = optim.SGD([w], lr=0.25)

    def closure():
        o.zero_grad()
        loss = (w * w).sum()
        loss.backward()
        return loss

    loss = o.step(closure)
    assert float(loss.item()) == 5.0
    np.testing.assert_allclose(_host(w), [1.0, -0.5])  # w -= 0.25 * 2w


def test_step_bumps_version_so_stale_graph_refuses_backward(device):
    w = conch.randn(3, device=device, requires_grad=True)
    o = optim.SGD([w], lr=0.1)
    loss = (w * w).sum()
    w.grad = conch.ones(3, device=device)
    o.step()  # modifies w in place after (w * w) saved it
    with pytest.raises(RuntimeError, match="modified by an inplace"):
        loss.backward()


def test_grad_shape_mismatch_raises(device):
    w = conch.randn(3, device=device, requires_grad=True)
    w.grad = conch.ones(4, device=device)
    with pytest.raises(RuntimeError, match="shape"):
        optim.Adam([w]).step()


RESUME_CASES = [
    (optim.Adam, {"lr": 0.01, "amsgrad": True}),
    (optim.SGD, {"lr": 0.1, "momentum": 0.9}),
    (optim.RMSprop, {"centered": True, "momentum": 0.5}),
    (optim.Adagrad, {}),
]


@pytest.mark.parametrize("cls,kw", RESUME_CASES)
def test_state_dict_resume_is_bitwise(cls, kw, device, tmp_path, mode):
    init, grads = _problem(np.random.default_rng(4), steps=6)
    full, _, _ = _run_conch(cls, kw, init, grads, device)
    # first half, save through a file, then a fresh optimizer on fresh parameters continues
    _, o1, ps1 = _run_conch(cls, kw, init, grads[:3], device)
    conch.save({"opt": o1.state_dict(), "params": [p.detach() for p in ps1]}, tmp_path / "o.safetensors")
    ck = conch.load(tmp_path / "o.safetensors", device=None if device == "cpu" else device)
    ps2 = [conch.tensor(t, device=device, requires_grad=True) for t in ck["params"]]
    o2 = cls(ps2, **kw)
    o2.load_state_dict(ck["opt"])
    for gs in grads[3:]:
        for p, g in zip(ps2, gs):
            p.grad = conch.tensor(g, device=device)
        o2.step()
        # the first optimizer keeps stepping too: the loaded one must not share its arrays
        for p, g in zip(ps1, gs):
            p.grad = conch.tensor(g, device=device)
        o1.step()
    for a, b, c in zip(ps2, full[-1], ps1):
        np.testing.assert_array_equal(_host(a), b)
        np.testing.assert_array_equal(_host(c), b)


def test_load_state_dict_mismatch_raises(device):
    a, b = _params(device)
    o1 = optim.SGD([a, b], lr=0.1)
    o2 = optim.SGD([a], lr=0.1)
    with pytest.raises(ValueError, match="doesn't match"):
        o2.load_state_dict(o1.state_dict())
    with pytest.raises(ValueError, match="number of parameter groups"):
        optim.SGD([{"params": [a]}, {"params": [b]}], lr=0.1).load_state_dict(o1.state_dict())


def test_load_state_dict_restores_hyperparameters(device):
    a, b = _params(device)
    o1 = optim.Adam([a, b], lr=0.5, betas=(0.8, 0.9))
    o2 = optim.Adam([a, b], lr=0.1)
    o2.load_state_dict(o1.state_dict())
    assert o2.param_groups[0]["lr"] == 0.5 and o2.param_groups[0]["betas"] == (0.8, 0.9)
    assert o2.param_groups[0]["params"][0] is a


@pytest.mark.parametrize("cls,kw", [(optim.Adam, {"lr": 0.01, "weight_decay": 0.1}), (optim.AdamW, {"amsgrad": True}),
                                    (optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1}),
                                    (optim.SGD, {"lr": 0.1})])  # fmt: skip
def test_fused_path_matches_reference(cls, kw, device, monkeypatch, bitwise):
    k = pytest.importorskip("conch.kernels.optim")
    if device == "cpu":
        monkeypatch.setenv("CONCH_KERNELS", "reference")  # the kernels' own NumPy path (no interpreter)
    calls = []
    name = "adam_step" if cls is not optim.SGD else "sgd_step"
    orig = getattr(k, name)
    monkeypatch.setattr(k, name, lambda *a, **kw2: (calls.append(len(a[0])), orig(*a, **kw2))[1])
    init, grads = _problem(np.random.default_rng(5), steps=3)
    ref, _, _ = _run_conch(cls, {**kw, "fused": False}, init, grads, device)
    fused, _, _ = _run_conch(cls, {**kw, "fused": True}, init, grads, device)
    assert calls and all(n == len(SHAPES) for n in calls)  # one call over every parameter of the group
    for a, b in zip(ref[-1], fused[-1]):
        if device == "cpu":
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_other_dtypes(dtype, device):
    init, grads = _problem(np.random.default_rng(6), shapes=[(9,)], steps=3)
    dt = conch._dtype.as_dtype(dtype)
    p = conch.tensor(init[0], dtype=dt, device=device, requires_grad=True)
    o = optim.AdamW([p], lr=0.01)
    for gs in grads:
        p.grad = conch.tensor(gs[0], dtype=dt, device=device)
        o.step()
    assert p.dtype == dt and o.state[p]["exp_avg"].dtype == dt
    expect = _adamw_ref(init[0], [g[0] for g in grads], lr=0.01, weight_decay=1e-2)[-1]
    tol = {"float64": 1e-12, "float16": 2e-3, "bfloat16": 1.6e-2}[dtype]
    np.testing.assert_allclose(_host(p).astype(F64), expect, rtol=tol, atol=tol)


def test_repr_lists_groups():
    o = optim.SGD([conch.zeros(2, requires_grad=True)], lr=0.1)
    assert "Parameter Group 0" in repr(o) and "lr: 0.1" in repr(o)
