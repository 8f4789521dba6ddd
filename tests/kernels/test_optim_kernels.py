"""Fused multi-tensor Adam/AdamW/SGD kernels: closed forms, Triton (interpreter or GPU) against reference, PyTorch."""

import ml_dtypes
import numpy as np
import pytest
from devices import ON_GPU, dev, host
from tolerances import assert_close

from conch.kernels import optim as ok
from conch.kernels._launch import LAUNCHES

BF16 = np.dtype(ml_dtypes.bfloat16)
ON_CUDA = ON_GPU
SHAPES = [(1,), (7,), (33,), (123,), (5, 13), (127,), (129,)]  # 127/129: one below/above the 128 block


def make_adam(rng, shapes, pdtype=np.float32, sdtype=np.float32, steps=3):
    params = [rng.standard_normal(s).astype(pdtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(pdtype) for s in shapes] for _ in range(steps)]
    return params, grads


def adam64(params, grads_seq, lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad, maximize=False):
    """Textbook Adam/AdamW in float64 (Kingma & Ba; Loshchilov & Hutter), one array at a time."""
    out = []
    for i, p in enumerate(params):
        p = p.astype(np.float64)
        m = np.zeros_like(p)
        v = np.zeros_like(p)
        vmax = np.zeros_like(p)
        for t, grads in enumerate(grads_seq, start=1):
            g = grads[i].astype(np.float64) * (-1 if maximize else 1)
            if decoupled:
                p = p * (1 - lr * weight_decay)
            else:
                g = g + weight_decay * p
            m = beta1 * m + (1 - beta1) * g
            v = beta2 * v + (1 - beta2) * g * g
            vmax = np.maximum(vmax, v)
            vhat = (vmax if amsgrad else v) / (1 - beta2**t)
            p = p - lr * (m / (1 - beta1**t)) / (np.sqrt(vhat) + eps)
        out.append(p)
    return out


def run_adam(params, grads_seq, sdtype=np.float32, **kw):
    ps = [dev(p.copy()) for p in params]
    ms = [dev(np.zeros(p.shape, sdtype)) for p in params]
    vs = [dev(np.zeros(p.shape, sdtype)) for p in params]
    vm = [dev(np.zeros(p.shape, sdtype)) for p in params]
    for t, grads in enumerate(grads_seq, start=1):
        gs = [dev(g) for g in grads]
        ok.adam_step(ps, gs, ms, vs, vm if kw.get("amsgrad") else None, step=t, **kw)
    return [host(p) for p in ps], [host(m) for m in ms], [host(v) for v in vs]


ADAM_CASES = [
    dict(weight_decay=0.0, decoupled=False, amsgrad=False),
    dict(weight_decay=0.1, decoupled=False, amsgrad=False),
    dict(weight_decay=0.1, decoupled=True, amsgrad=False),
    dict(weight_decay=0.01, decoupled=True, amsgrad=True),
    dict(weight_decay=0.01, decoupled=False, amsgrad=True, maximize=True),
]


def test_adam_first_step_closed_form(reference):
    # step 1 from zero state: m = (1-b1) g, v = (1-b2) g^2, so p1 = p0 - lr * g / (|g| + eps)
    p = np.array([1.0, -2.0, 3.0], np.float32)
    g = np.array([0.5, -4.0, 1e-3], np.float32)
    m, v = np.zeros(3, np.float32), np.zeros(3, np.float32)
    pp = [p.copy()]
    ok.adam_step(pp, [g], [m], [v], lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=1)
    np.testing.assert_allclose(pp[0], p - 0.1 * g / (np.abs(g) + 1e-8), rtol=1e-6)
    np.testing.assert_allclose(m, 0.1 * g, rtol=1e-6)
    np.testing.assert_allclose(v, 0.001 * g * g, rtol=1e-6)


@pytest.mark.parametrize("case", ADAM_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_adam_reference_and_triton_vs_float64(case, rng, interpret, monkeypatch):
    params, grads = make_adam(rng, SHAPES)
    hyper = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, **case)
    expected = adam64(params, grads, **hyper)
    n0 = LAUNCHES["_adam_kernel"]
    grads_copy = [[g.copy() for g in gs] for gs in grads]
    pt, mt, vt = run_adam(params, grads, **hyper)
    assert LAUNCHES["_adam_kernel"] == n0 + 3, "one launch per step for all tensors of one dtype"
    for ga, gb in zip(grads, grads_copy, strict=True):
        assert all(np.array_equal(a, b) for a, b in zip(ga, gb, strict=True)), "grads mutated"
    monkeypatch.setenv("CONCH_KERNELS", "reference")
    pr, mr, vr = run_adam(params, grads, **hyper)
    for a, r, e in zip(pt, pr, expected, strict=True):
        assert_close(a, e, np.float32, scale=2)
        assert_close(r, e, np.float32, scale=2)
        assert_close(a, r, np.float32)
    for a, r in zip(mt + vt, mr + vr, strict=True):
        assert_close(a, r, np.float32)


@pytest.mark.parametrize("pdtype", [np.float16, BF16], ids=["fp16", "bf16"])
def test_adam_low_precision_params_fp32_state(pdtype, rng, interpret, monkeypatch):
    params, grads = make_adam(rng, SHAPES[:4], pdtype=pdtype, steps=2)
    hyper = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, decoupled=True)
    expected = adam64(params, grads, amsgrad=False, **hyper)
    pt, mt, _ = run_adam(params, grads, **hyper)
    assert pt[0].dtype == pdtype and mt[0].dtype == np.float32
    monkeypatch.setenv("CONCH_KERNELS", "reference")
    pr, mr, _ = run_adam(params, grads, **hyper)
    for a, r, e in zip(pt, pr, expected, strict=True):
        assert_close(a, e, pdtype)
        assert_close(r, e, pdtype)
    for a, r in zip(mt, mr, strict=True):
        assert_close(a, r, np.float32)


def test_mixed_dtypes_launch_once_per_dtype_group(rng, interpret):
    shapes = [(7,), (33,), (5,), (129,)]
    dtypes = [np.float32, np.float16, np.float32, np.float16]
    params = [rng.standard_normal(s).astype(d) for s, d in zip(shapes, dtypes, strict=True)]
    grads = [rng.standard_normal(s).astype(d) for s, d in zip(shapes, dtypes, strict=True)]
    ms = [np.zeros(s, np.float32) for s in shapes]
    vs = [np.zeros(s, np.float32) for s in shapes]
    ps = [dev(p.copy()) for p in params]
    n0 = LAUNCHES["_adam_kernel"]
    ok.adam_step(ps, [dev(g) for g in grads], [dev(m) for m in ms], [dev(v) for v in vs],
                 lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.0, step=1)  # fmt: skip
    assert LAUNCHES["_adam_kernel"] == n0 + 2
    for p0, p1, g in zip(params, ps, grads, strict=True):
        e = p0.astype(np.float64) - 0.1 * g / (np.abs(g.astype(np.float64)) + 1e-8)
        assert_close(host(p1), e, p0.dtype)


def sgd64(params, grads_seq, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False):
    out = []
    for i, p in enumerate(params):
        p = p.astype(np.float64)
        buf = None
        for grads in grads_seq:
            d = grads[i].astype(np.float64) * (-1 if maximize else 1) + weight_decay * p
            if momentum:
                buf = d.copy() if buf is None else momentum * buf + (1 - dampening) * d
                d = d + momentum * buf if nesterov else buf
            p = p - lr * d
        out.append(p)
    return out


def run_sgd(params, grads_seq, **kw):
    ps = [dev(p.copy()) for p in params]
    bufs = [dev(np.full(p.shape, 123.0, np.float32)) for p in params]  # garbage: first_step must ignore it
    for t, grads in enumerate(grads_seq):
        ok.sgd_step(ps, [dev(g) for g in grads], bufs if kw.get("momentum") else None, first_step=t == 0, **kw)
    return [host(p) for p in ps], [host(b) for b in bufs]


SGD_CASES = [
    dict(),
    dict(weight_decay=0.05),
    dict(momentum=0.9),
    dict(momentum=0.9, dampening=0.3, weight_decay=0.01),
    dict(momentum=0.8, nesterov=True, weight_decay=0.01, maximize=True),
]


@pytest.mark.parametrize("case", SGD_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "plain")
def test_sgd_reference_and_triton_vs_float64(case, rng, interpret, monkeypatch):
    params, grads = make_adam(rng, SHAPES)
    expected = sgd64(params, grads, lr=0.1, **case)
    n0 = LAUNCHES["_sgd_kernel"]
    pt, bt = run_sgd(params, grads, lr=0.1, **case)
    assert LAUNCHES["_sgd_kernel"] == n0 + 3
    monkeypatch.setenv("CONCH_KERNELS", "reference")
    pr, br = run_sgd(params, grads, lr=0.1, **case)
    for a, r, e in zip(pt, pr, expected, strict=True):
        assert_close(a, e, np.float32, scale=2)
        assert_close(r, e, np.float32, scale=2)
        assert_close(a, r, np.float32)
    if case.get("momentum"):
        for a, r in zip(bt, br, strict=True):
            assert_close(a, r, np.float32)


def test_sgd_closed_form_momentum_two_steps(reference):
    p = [np.array([1.0, 2.0], np.float32)]
    b = [np.zeros(2, np.float32)]
    g = np.array([0.5, -1.0], np.float32)
    ok.sgd_step(p, [g], b, lr=0.1, momentum=0.9, first_step=True)
    ok.sgd_step(p, [g], b, lr=0.1, momentum=0.9)
    # buf1 = g, buf2 = 0.9 g + g = 1.9 g, p2 = p0 - 0.1 (g + 1.9 g)
    np.testing.assert_allclose(b[0], 1.9 * g, rtol=1e-6)
    np.testing.assert_allclose(p[0], np.array([1.0, 2.0]) - 0.29 * g, rtol=1e-6)


def test_plan_is_cached_per_buffer_set(rng, interpret):
    ps = [rng.standard_normal(s).astype(np.float32) for s in [(7,), (300,)]]
    gs = [np.ones_like(p) for p in ps]
    ok.sgd_step(ps, gs, lr=0.1)
    plan = ok.get_plan([ps, gs], ok._BLOCK_INTERP)
    ok.sgd_step(ps, gs, lr=0.1)
    assert ok.get_plan([ps, gs], ok._BLOCK_INTERP) is plan
    assert plan.num_tensors == 2 and plan.num_programs == 1 + 3  # 300 elements: 3 chunks of 128
    np.testing.assert_array_equal(host(plan.work)[:, 0], [0, 1, 1, 1])
    other = [p.copy() for p in ps]
    assert ok.get_plan([other, gs], ok._BLOCK_INTERP) is not plan


def test_bad_inputs_raise_clear_errors():
    p = [np.zeros(4, np.float32)]
    g = [np.zeros(5, np.float32)]
    with pytest.raises(ValueError, match=r"grads\[0\] has shape \(5,\) but params\[0\] has shape \(4,\)"):
        ok.sgd_step(p, g, lr=0.1)
    with pytest.raises(ValueError, match="grads has 2 arrays but params has 1"):
        ok.sgd_step(p, [np.zeros(4, np.float32)] * 2, lr=0.1)
    with pytest.raises(ValueError, match="C-contiguous"):
        ok.sgd_step([np.zeros((4, 4), np.float32).T], [np.zeros((4, 4), np.float32)], lr=0.1)
    with pytest.raises(ValueError, match="needs momentum_buffers"):
        ok.sgd_step(p, [np.zeros(4, np.float32)], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="Nesterov"):
        ok.sgd_step(p, [np.zeros(4, np.float32)], p, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)
    with pytest.raises(TypeError, match="int32"):
        ok.sgd_step([np.zeros(4, np.int32)], [np.zeros(4, np.int32)], lr=0.1)
    z = [np.zeros(4, np.float32)]
    hyper = dict(lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)
    with pytest.raises(ValueError, match="step must be an integer >= 1"):
        ok.adam_step(p, z, z, z, step=0, **hyper)
    with pytest.raises(ValueError, match="amsgrad=True needs max_exp_avg_sqs"):
        ok.adam_step(p, z, z, z, step=1, amsgrad=True, **hyper)
    with pytest.raises(ValueError, match=r"beta2 must be in \[0, 1\)"):
        ok.adam_step(p, z, z, z, step=1, **dict(hyper, beta2=1.0))


def _torch():
    try:
        import torch
    except ImportError:
        pytest.skip("torch is not installed (pip install torch to compare against torch.optim)")
    return torch


def _against_torch(torch, make_opt, ours, steps=4):
    rng = np.random.default_rng(1)
    shapes = [(1,), (7,), (33,), (1000,), (20, 13)]
    ps = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    gseq = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(steps)]
    tp = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in ps]
    opt = make_opt(tp)
    mine = [p.copy() for p in ps]
    state = [[np.zeros_like(p) for p in ps] for _ in range(3)]
    for t in range(steps):
        for x, g in zip(tp, gseq[t], strict=True):
            x.grad = torch.from_numpy(g.copy())
        opt.step()
        ours(mine, gseq[t], state, t + 1)
    return mine, [x.detach().numpy() for x in tp]


SGD_TORCH = [dict(), dict(momentum=0.9), dict(momentum=0.9, dampening=0.2, weight_decay=0.01),
             dict(momentum=0.9, nesterov=True, weight_decay=0.01, maximize=True)]  # fmt: skip


@pytest.mark.parametrize("case", SGD_TORCH, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "plain")
def test_sgd_reference_matches_torch_bitwise(case, reference):
    torch = _torch()

    def ours(ps, gs, st, t):
        ok.sgd_step(ps, gs, st[0] if case.get("momentum") else None, lr=0.1, first_step=t == 1, **case)

    mine, theirs = _against_torch(torch, lambda tp: torch.optim.SGD(tp, lr=0.1, **case), ours)
    for a, b in zip(mine, theirs, strict=True):
        np.testing.assert_array_equal(a, b)


ADAM_TORCH = [
    dict(),
    dict(weight_decay=0.1),
    dict(weight_decay=0.1, amsgrad=True, maximize=True),
    dict(betas=(0.3, 0.99)),
]


@pytest.mark.parametrize("decoupled", [False, True], ids=["Adam", "AdamW"])
@pytest.mark.parametrize("case", ADAM_TORCH, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "plain")
def test_adam_reference_matches_torch(case, decoupled, reference, monkeypatch):
    torch = _torch()
    b1, b2 = case.get("betas", (0.9, 0.999))
    wd = case.get("weight_decay", 0.01 if decoupled else 0.0)
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam

    def ours(ps, gs, st, t):
        flags = dict(decoupled=decoupled, amsgrad=case.get("amsgrad", False), maximize=case.get("maximize", False))
        ok.adam_step(ps, gs, *st, lr=1e-2, beta1=b1, beta2=b2, eps=1e-8, weight_decay=wd, step=t, **flags)

    def make(tp):
        return cls(tp, lr=1e-2, **dict(case, weight_decay=wd))

    mine, theirs = _against_torch(torch, make, ours)
    for a, b in zip(mine, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)  # torch's CPU sqrt (MKL) is within 1 ulp
    # with torch's own sqrt in the reference, every other operation agrees bit for bit
    monkeypatch.setattr(ok, "_sqrt", lambda xp, a: torch.from_numpy(np.ascontiguousarray(a)).sqrt().numpy())
    mine, theirs = _against_torch(torch, make, ours)
    for a, b in zip(mine, theirs, strict=True):
        np.testing.assert_array_equal(a, b)
