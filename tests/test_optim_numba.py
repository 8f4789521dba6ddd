"""The compiled optimizer updates (kernels/_numba/optim.py): each kernel against float64 closed forms, the
optimizers on the compiled path against the NumPy fast path and torch.optim, thread-count invariance, no
per-step allocation, and the cases that keep the NumPy path (non-contiguous parameters, float16, bitwise)."""

import tracemalloc

import numpy as np
import pytest
from test_optim import CASES, IDS, _host, _problem, _run_conch
from test_optim_variants import _ref as variant_ref

import conch
import conch.optim.optimizer as opt_mod
from conch import optim
from conch.kernels import _jit, _threads

F32, F64 = np.float32, np.float64
SIZES = [1, 7, 16, 1023, 4096]  # odd and power-of-two lengths (the vectorised loop's remainder and body)

pytestmark = pytest.mark.skipif(not _jit._probe(), reason="Numba is not importable or CONCH_NUMBA=0: no kernels")


@pytest.fixture
def k():
    return _jit.family("optim")


def _arrays(rng, n, dtype, count, positive=()):
    out = []
    for i in range(count):
        a = rng.standard_normal(n)
        out.append((np.abs(a) if i in positive else a).astype(dtype))
    return out


def _ulps(a, b, scale=0.0):
    """Largest distance between a and b in units of the last place of b's dtype at the parameter's scale (b's
    largest magnitude, or ``scale`` if larger: an element near 0 carries the rounding errors of the terms that
    cancelled into it)."""
    a, b = np.asarray(a, F64), np.asarray(b)
    return float(np.max(np.abs(a - b.astype(F64)), initial=0.0) / np.spacing(max(np.abs(b).max(), b.dtype.type(scale))))


# ------------------------------------------------------------------------------------------ kernels, float64 maths
# Each reference takes the coefficients the kernel was given (as float64) and applies the update rule in its
# textbook form, in float64: the kernel must land within a few roundings of it.

TOL = {F32: dict(rtol=2e-6, atol=2e-7), F64: dict(rtol=1e-14, atol=1e-15)}


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("flags", [0, 1, 2, 3])  # maximize, amsgrad
@pytest.mark.parametrize("wd_style", ["adamw", "adam"])
def test_adam_kernel_against_float64(k, dtype, n, flags, wd_style):
    rng = np.random.default_rng(n + flags)
    p, g, m, v, vmax = _arrays(rng, n, dtype, 5, positive=(3, 4))
    lr, b1, b2, eps, wd, t = 1e-2, 0.9, 0.999, 1e-8, 0.1, 3
    bc1, bc2 = 1 - b1**t, (1 - b2**t) ** 0.5
    decay, l2 = (1 - lr * wd, 0.0) if wd_style == "adamw" else (1.0, wd)
    c = np.array([decay, l2, 1 - b1, -b1, b2, 1 - b2, eps * bc2, -lr * bc2 / bc1], dtype)
    C = c.astype(F64)
    P, G, M, V, VM = (a.astype(F64) for a in (p, g, m, v, vmax))
    P = P * C[0]
    G = (-G if flags & 1 else G) + C[1] * P
    M = (1 - C[2]) * M + C[2] * G
    V = C[4] * V + C[5] * G * G
    VM = np.maximum(VM, V)
    P = P + C[7] * M / (np.sqrt(VM if flags & 2 else V) + C[6])
    vmax0 = vmax.copy()
    k.adam(p, g, m, v, vmax, c, flags)
    for got, want, name in ((m, M, "m"), (v, V, "v"), (p, P, "p")):
        np.testing.assert_allclose(got, want, **TOL[dtype], err_msg=name)
    if flags & 2:
        np.testing.assert_array_equal(vmax, np.maximum(vmax0, v))  # exact: the max of the new v


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("flags", [0, 1, 2, 3, 6, 10, 11])  # neg, momentum, first step, nesterov
@pytest.mark.parametrize("omd,wd", [(1.0, 0.0), (0.7, 0.05)])
def test_sgd_kernel_against_float64(k, dtype, n, flags, omd, wd):
    rng = np.random.default_rng(n + flags)
    p, g, buf = _arrays(rng, n, dtype, 3)
    lr, mom = 0.05, 0.9
    c = np.array([-lr, mom, omd, wd], dtype)
    C = c.astype(F64)
    P, G, B = (a.astype(F64) for a in (p, g, buf))
    G = (-G if flags & 1 else G) + C[3] * P
    if flags & 2:
        B = G if flags & 4 else C[1] * B + C[2] * G
        G = G + C[1] * B if flags & 8 else B
    P = P + C[0] * G
    k.sgd(p, g, buf, c, flags)
    np.testing.assert_allclose(p, P, **TOL[dtype])
    if flags & 2:
        np.testing.assert_allclose(buf, B, **TOL[dtype])


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("flags", [0, 1, 2, 4, 7])  # neg, momentum, centered
@pytest.mark.parametrize("alpha", [0.99, 0.3])  # lerp's two formulas (weight 1 - alpha below and above 0.5)
def test_rmsprop_kernel_against_float64(k, dtype, n, flags, alpha):
    rng = np.random.default_rng(n + flags)
    p, g, sq, ga, buf = _arrays(rng, n, dtype, 5, positive=(2,))
    sq += 0.5  # sq - ga**2 well above 0 (it cancels near 0: a few roundings become a large relative error)
    ga *= 0.1
    lr, eps, wd, mom = 1e-2, 1e-8, 0.01, 0.9
    oma = dtype(1) - dtype(alpha)
    c = np.array([-lr, alpha, oma, oma - 1, eps, wd, mom], dtype)
    C = c.astype(F64)
    P, G, S, A, B = (a.astype(F64) for a in (p, g, sq, ga, buf))
    G = (-G if flags & 1 else G) + C[5] * P
    S = C[1] * S + C[2] * G * G
    A = (1 - C[2]) * A + C[2] * G
    avg = np.sqrt(S - A * A if flags & 4 else S) + C[4]
    B = C[6] * B + G / avg
    P = P + C[0] * (B if flags & 2 else G / avg)
    k.rmsprop(p, g, sq, ga, buf, c, flags)
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == F32 and flags & 4 else TOL[dtype]  # sq - ga**2 cancels
    np.testing.assert_allclose(sq, S, **TOL[dtype])
    np.testing.assert_allclose(p, P, **tol)
    if flags & 4:
        np.testing.assert_allclose(ga, A, **TOL[dtype])
    if flags & 2:
        np.testing.assert_allclose(buf, B, **tol)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("flags,wd", [(0, 0.0), (1, 0.1)])
def test_adagrad_kernel_against_float64(k, dtype, n, flags, wd):
    rng = np.random.default_rng(n + flags)
    p, g, s = _arrays(rng, n, dtype, 3, positive=(2,))
    c = np.array([-0.1 / 1.02, 1e-10, wd], dtype)
    C = c.astype(F64)
    P, G, S = (a.astype(F64) for a in (p, g, s))
    G = (-G if flags & 1 else G) + C[2] * P
    S = S + G * G
    P = P + C[0] * G / (np.sqrt(S) + C[1])
    k.adagrad(p, g, s, c, flags)
    np.testing.assert_allclose(s, S, **TOL[dtype])
    np.testing.assert_allclose(p, P, **TOL[dtype])


def test_adam_kernel_nan_and_inf(k):
    # NaN and inf flow as through NumPy's ufuncs: a NaN gradient poisons its element only, the AMSGrad maximum
    # keeps a NaN from either side (np.maximum), and a zero L2 term does not turn an infinite parameter into NaN
    p = np.array([1.0, 2.0, np.inf, 4.0, 5.0], F32)
    g = np.array([np.nan, 0.5, 0.5, np.inf, 0.5], F32)
    m, v = np.zeros(5, F32), np.zeros(5, F32)
    vmax = np.array([0, 0, 0, 0, np.nan], F32)
    c = np.array([1, 0, 0.1, -0.9, 0.999, 0.001, 1e-8, -1e-3], F32)
    k.adam(p, g, m, v, vmax, c, 2)
    assert np.isnan(p[[0, 3, 4]]).all() and np.isfinite(p[1]) and p[2] == np.inf  # p[3]: m / sqrt(v) = inf / inf
    assert np.isnan(m[0]) and m[3] == np.inf and v[3] == np.inf
    np.testing.assert_array_equal(vmax, [np.nan, v[1], v[2], np.inf, np.nan])


# ------------------------------------------------------------------------------------------ the optimizers


def _both_paths(cls, kw, init, grads):
    out = {}
    for flag in (True, False):
        prev = _jit.set_enabled(flag)
        try:
            out[flag] = _run_conch(cls, kw, init, grads)
        finally:
            _jit.set_enabled(prev)
    return out[True], out[False]


# Compiled against NumPy fast path after 5 steps, in ulps of each element: both round every operation of the
# same formulas in the same order except where the compiled loop fuses a * b + c into one FMA (half an ulp per
# operation), which a step's division by sqrt(v) + eps can carry to a few ulps of a small parameter; centered
# RMSprop's sqrt(sq - ga**2) cancels and amplifies it (as FAST_TOL of test_optim says).
ULPS = {"RMSprop-10": 16, "RMSprop-11": 16}


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("cls,ref,kw", CASES, ids=IDS)
def test_compiled_matches_numpy_fast_path_and_float64(cls, ref, kw, dtype):
    rng = np.random.default_rng(3)
    shapes = [(7, 5), (16,), (1,), (64, 64), (1023,)]
    init = [a.astype(dtype) for a in _problem(rng, shapes)[0]]
    grads = [[g.astype(dtype) for g in gs] for gs in _problem(rng, shapes)[1]]
    (hist_c, opt_c, _), (hist_n, opt_n, _) = _both_paths(cls, kw, init, grads)
    case = IDS[CASES.index((cls, ref, kw))]
    for i, a in enumerate(init):
        expect = ref(a, [g[i] for g in grads], **kw)
        for s in range(len(grads)):
            np.testing.assert_allclose(hist_c[s][i], expect[s], rtol=2e-5, atol=2e-6, err_msg=f"param {i} step {s}")
        worst = _ulps(hist_c[-1][i], hist_n[-1][i], np.abs(a).max())
        assert worst <= ULPS.get(case, 4), f"param {i}: {worst} ulps from the NumPy path"
    for pc, pn in zip(opt_c.param_groups[0]["params"], opt_n.param_groups[0]["params"]):
        for key, st in opt_c.state[pc].items():
            b = _host(opt_n.state[pn][key])
            np.testing.assert_allclose(_host(st), b, rtol=1e-5, atol=1e-6 * np.abs(b).max(), err_msg=key)


class _Spy:
    """Stands in for the kernels module and counts the calls of each kernel."""

    def __init__(self, mod):
        self.mod, self.calls = mod, []

    def __getattr__(self, name):
        fn = getattr(self.mod, name)

        def call(*args):
            self.calls.append(name)
            return fn(*args)

        return call


@pytest.mark.parametrize("cls,kw,name", [(optim.AdamW, {}, "adam"), (optim.Adam, {"amsgrad": True}, "adam"),
                                          (optim.SGD, {"lr": 0.1, "momentum": 0.9}, "sgd"),
                                          (optim.RMSprop, {}, "rmsprop"), (optim.Adagrad, {}, "adagrad")])  # fmt: skip
def test_one_compiled_call_per_parameter(cls, kw, name, monkeypatch, cpu_path):
    spy = _Spy(_jit.family("optim"))
    monkeypatch.setattr(opt_mod, "_KERNELS", [spy])
    init, grads = _problem(np.random.default_rng(4), shapes=[(3, 4), (5,), (2, 2, 2)], steps=3)
    _run_conch(cls, kw, init, grads)
    assert spy.calls == ([name] * 9 if cpu_path == "numba" else [])


def test_non_contiguous_parameter_keeps_the_numpy_path_and_grad_is_copied(monkeypatch):
    # a transposed parameter (state shaped like it, not C-contiguous for the flat kernel) takes the NumPy fast
    # path, bit for bit; a transposed gradient is copied once and takes the compiled kernel
    spy = _Spy(_jit.family("optim"))
    monkeypatch.setattr(opt_mod, "_KERNELS", [spy])
    rng = np.random.default_rng(5)
    a, ga = rng.standard_normal((6, 9)).astype(F32), rng.standard_normal((9, 6)).astype(F32)
    res = {}
    for flag in (True, False):
        prev = _jit.set_enabled(flag)
        try:
            pt = conch.tensor(np.ascontiguousarray(a.T)).T.detach().requires_grad_()
            pc = conch.tensor(a, requires_grad=True)
            o = optim.AdamW([pt, pc], lr=0.01)
            for _ in range(3):
                pt.grad, pc.grad = conch.tensor(ga.T.copy()), conch.tensor(ga).T
                assert not pt._data.flags.c_contiguous and not pc.grad._data.flags.c_contiguous
                o.step()
            res[flag] = (_host(pt).copy(), _host(pc).copy())
        finally:
            _jit.set_enabled(prev)
    assert spy.calls == ["adam"] * 3  # the contiguous parameter only, once per step
    np.testing.assert_array_equal(res[True][0], res[False][0])
    assert _ulps(res[True][1], res[False][1]) <= 64


@pytest.mark.parametrize("cls,kw", [(optim.AdamW, {"lr": 0.01}), (optim.SGD, {"lr": 0.1, "momentum": 0.9}),
                                    (optim.RMSprop, {"centered": True}), (optim.Adagrad, {})])  # fmt: skip
def test_same_bits_for_any_thread_count(cls, kw, monkeypatch):
    # a parameter split over the pool (threshold lowered so a small one is split) updates to the same bits
    monkeypatch.setattr(_threads, "MIN_PARALLEL", 64)
    monkeypatch.setitem(_threads._load, "adapt", False)
    init, grads = _problem(np.random.default_rng(6), shapes=[(1001, 7), (33,)], steps=3)
    prev_threads = conch.get_num_threads()
    res = []
    try:
        for t in (1, 2, 3):
            conch.set_num_threads(t)
            before = _threads.SPLITS[0]
            res.append(_run_conch(cls, kw, init, grads)[0][-1])
            assert (_threads.SPLITS[0] > before) == (t > 1)
    finally:
        conch.set_num_threads(prev_threads)
    for r in res[1:]:
        for a, b in zip(r, res[0]):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cls,kw", [(optim.AdamW, {"amsgrad": True}), (optim.SGD, {"lr": 0.1, "momentum": 0.9})])
def test_steps_allocate_nothing_per_parameter(cls, kw):
    # after the first step (state created), a step allocates no array the size of a parameter: the compiled
    # kernels write in place and need no scratch (the NumPy fast path's scratch is also reused, not reallocated)
    n = 1 << 16
    ps = [conch.zeros(n, requires_grad=True) for _ in range(3)]
    for p in ps:
        p.grad = conch.ones(n)
    o = cls(ps, **kw)
    o.step()
    o.step()
    tracemalloc.start()
    try:
        for _ in range(3):
            o.step()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < n * 4 // 8, f"a step allocated up to {peak} bytes"


def test_float16_and_a_replaced_sqrt_keep_the_numpy_path(monkeypatch):
    # float16 parameters compute in float32 on the NumPy reference path; in the bitwise mode, a replaced _sqrt
    # (test_optim puts torch's approximate one there) must be honoured, which only the NumPy path does
    spy = _Spy(_jit.family("optim"))
    monkeypatch.setattr(opt_mod, "_KERNELS", [spy])
    init, grads = _problem(np.random.default_rng(7), shapes=[(9,)], steps=2)
    _run_conch(optim.AdamW, {}, [a.astype(np.float16) for a in init], [[g.astype(np.float16)] for (g,) in grads])
    assert spy.calls == []
    optim.set_bitwise_torch(True)
    try:
        _run_conch(optim.AdamW, {}, init, grads)
        assert spy.calls == ["adam_exact"] * 2  # the control: the spy does see compiled calls
        monkeypatch.setattr(opt_mod, "_sqrt", lambda a, out, dtype: np.sqrt(a, out=out, dtype=dtype))
        _run_conch(optim.AdamW, {}, init, grads)
    finally:
        optim.set_bitwise_torch(False)
    assert spy.calls == ["adam_exact"] * 2


# ------------------------------------------------------------------------------------------ bitwise mode


def _assert_same_runs(hist_c, opt_c, hist_n, opt_n):
    """Every parameter after every step and every final state array of two runs have the same bits."""
    for s, (hc, hn) in enumerate(zip(hist_c, hist_n)):
        for i, (a, b) in enumerate(zip(hc, hn)):
            assert _same_bits(a, b), f"param {i} step {s}"
    for pc, pn in zip(opt_c.param_groups[0]["params"], opt_n.param_groups[0]["params"]):
        for key, st in opt_c.state[pc].items():
            assert _same_bits(_host(st), _host(opt_n.state[pn][key])), key


def _same_bits(a, b):
    """The same dtype, shape and bits (signed zeros told apart), NaN equal to NaN whatever its sign: which of two
    NaN operands x86 passes on depends on the operand order a vectorised loop picks, and nothing reads it."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    a, b = np.where(np.isnan(a), np.nan, a), np.where(np.isnan(b), np.nan, b)
    return a.tobytes() == b.tobytes()


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # the NumPy path's ufuncs on NaN and inf
@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("cls,ref,kw", CASES, ids=IDS)
def test_bitwise_compiled_is_the_numpy_bitwise_path_bit_for_bit(cls, ref, kw, dtype, monkeypatch):
    # odd and power-of-two sizes, a transposed gradient, NaN and inf in the gradients: every parameter and state
    # array after each step has the NumPy reference path's bits
    spy = _Spy(_jit.family("optim"))
    monkeypatch.setattr(opt_mod, "_KERNELS", [spy])
    rng = np.random.default_rng(9)
    shapes = [(7, 5), (16,), (1,), (64, 64), (1023,)]
    init, grads = _problem(rng, shapes, steps=4)
    init = [a.astype(dtype) for a in init]
    grads = [[g.astype(dtype) for g in gs] for gs in grads]
    grads[1][4][[3, 100, 500]] = [np.nan, np.inf, -np.inf]
    grads[2][3] = np.asfortranarray(grads[2][3])
    optim.set_bitwise_torch(True)
    try:
        (hist_c, opt_c, _), (hist_n, opt_n, _) = _both_paths(cls, kw, init, grads)
    finally:
        optim.set_bitwise_torch(False)
    assert len(spy.calls) == 4 * len(shapes) and spy.calls[0].endswith("_exact")
    _assert_same_runs(hist_c, opt_c, hist_n, opt_n)


def test_bitwise_compiled_same_bits_for_any_thread_count(monkeypatch):
    monkeypatch.setattr(_threads, "MIN_PARALLEL", 64)
    monkeypatch.setitem(_threads._load, "adapt", False)
    init, grads = _problem(np.random.default_rng(10), shapes=[(1001, 7)], steps=3)
    prev_threads = conch.get_num_threads()
    optim.set_bitwise_torch(True)
    res = []
    try:
        for t in (1, 2, 3):
            conch.set_num_threads(t)
            res.append(_run_conch(optim.AdamW, {"amsgrad": True}, init, grads)[0][-1][0])
    finally:
        conch.set_num_threads(prev_threads)
        optim.set_bitwise_torch(False)
    assert _same_bits(res[0], res[1]) and _same_bits(res[0], res[2])


# ------------------------------------------------------------------------------------------ RAdam, NAdam, Adamax

VARIANTS = [(optim.RAdam, "radam", {}), (optim.RAdam, "radam", {"weight_decay": 0.1}),
            (optim.NAdam, "nadam", {}), (optim.NAdam, "nadam", {"weight_decay": 0.1}),
            (optim.Adamax, "adamax", {}), (optim.Adamax, "adamax", {"weight_decay": 0.1})]  # fmt: skip
VARIANT_IDS = [f"{n}-{i}" for i, (_, n, _) in enumerate(VARIANTS)]


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("cls,kind,kw", VARIANTS, ids=VARIANT_IDS)
def test_variants_against_float64(cls, kind, kw, dtype, cpu_path):
    # 8 steps: RAdam's rectified phase starts at step 6 with the default betas
    rng = np.random.default_rng(13)
    shapes = [(16,), (1023,), (7, 5)]
    init, grads = _problem(rng, shapes, steps=8)
    hist, _, _ = _run_conch(cls, {"lr": 0.01, **kw}, [a.astype(dtype) for a in init],
                            [[g.astype(dtype) for g in gs] for gs in grads])  # fmt: skip
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == F32 else dict(rtol=1e-12, atol=1e-14)
    for i, a in enumerate(init):
        want = variant_ref(kind, a, [gs[i] for gs in grads], 0.01, weight_decay=kw.get("weight_decay", 0.0))
        np.testing.assert_allclose(hist[-1][i], want, **tol, err_msg=f"param {i}")


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # the NumPy path's ufuncs on NaN and inf
@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("cls,kw", [(c, kw) for c in (optim.RAdam, optim.NAdam, optim.Adamax)
                                    for kw in ({}, {"weight_decay": 0.1, "maximize": True},
                                               {"weight_decay": 0.1, "decoupled_weight_decay": True})
                                    if c is not optim.Adamax or "decoupled_weight_decay" not in kw])  # fmt: skip
def test_variants_compiled_is_the_numpy_path_bit_for_bit(cls, kw, dtype, monkeypatch):
    # the variants have one NumPy path for both modes; the compiled kernels repeat its operations in p's dtype
    # (Adamax has no decoupled weight decay, as torch.optim.Adamax)
    spy = _Spy(_jit.family("optim"))
    monkeypatch.setattr(opt_mod, "_KERNELS", [spy])
    rng = np.random.default_rng(14)
    shapes = [(16,), (1023,), (1,)]
    init, grads = _problem(rng, shapes, steps=8)
    init = [a.astype(dtype) for a in init]
    grads = [[g.astype(dtype) for g in gs] for gs in grads]
    grads[6][1][[5, 50]] = [np.nan, np.inf]
    grads[2][1] = grads[2][1][::-1]  # a negative-stride gradient
    (hist_c, opt_c, _), (hist_n, opt_n, _) = _both_paths(cls, kw, init, grads)
    assert len(spy.calls) == 8 * len(shapes)
    _assert_same_runs(hist_c, opt_c, hist_n, opt_n)


# ------------------------------------------------------------------------------------------ torch


def _run_bitwise(cls, kw, init, grads):
    optim.set_bitwise_torch(True)
    try:
        return _run_conch(cls, kw, init, grads)
    finally:
        optim.set_bitwise_torch(False)


def _torch_run(torch, cls, kw, init, grads, tps=None, to=None):
    """torch.optim's twin of ``cls`` on ``init`` (or continuing ``tps``/``to``), stepped once per entry of grads."""
    if to is None:
        tps = [torch.tensor(a, requires_grad=True) for a in init]
        to = getattr(torch.optim, cls.__name__)(tps, **kw)
    for gs in grads:
        for p, g in zip(tps, gs):
            p.grad = torch.tensor(g)
        to.step()
    return tps, to


@pytest.mark.parametrize("cls,kw", [(optim.AdamW, {"lr": 0.01, "weight_decay": 0.1}),
                                    (optim.Adam, {"lr": 0.01, "amsgrad": True, "maximize": True}),
                                    (optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
                                    (optim.RMSprop, {"momentum": 0.5}),
                                    (optim.Adagrad, {"lr_decay": 0.01})])  # fmt: skip
def test_compiled_path_close_to_torch(cls, kw, cpu_path):
    torch = pytest.importorskip("torch")
    init, grads = _problem(np.random.default_rng(8), shapes=[(31, 17), (4096,)], steps=5)
    hist, _, _ = _run_conch(cls, kw, init, grads)
    tps, to = _torch_run(torch, cls, kw, init, [])
    for s, gs in enumerate(grads):
        _torch_run(torch, cls, kw, init, [gs], tps, to)
        for i, (a, b) in enumerate(zip(hist[s], tps)):
            b = b.detach().numpy()  # a few ulps of the parameter's scale, as the NumPy fast path
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * np.abs(b).max(), err_msg=f"param {i} step {s}")


@pytest.mark.parametrize("cls,kw", [(c, kw) for c, _, kw in CASES[:4]], ids=IDS[:4])
def test_bitwise_compiled_sgd_is_torch_bit_for_bit(cls, kw, cpu_path):
    # SGD takes no sqrt: the compiled bitwise kernel must give torch.optim's bits, step after step
    torch = pytest.importorskip("torch")
    init, grads = _problem(np.random.default_rng(11), shapes=[(31, 17), (4096,), (1,)], steps=4)
    hist, _, _ = _run_bitwise(cls, kw, init, grads)
    tps, to = _torch_run(torch, cls, kw, init, [])
    for s, gs in enumerate(grads):
        _torch_run(torch, cls, kw, init, [gs], tps, to)
        for i, (a, b) in enumerate(zip(hist[s], tps)):
            assert _same_bits(a, b.detach().numpy()), f"param {i} step {s}"


SQRT_OF = {"Adam": "exp_avg_sq", "AdamW": "exp_avg_sq", "RMSprop": "square_avg", "Adagrad": "sum"}


@pytest.mark.parametrize("cls,kw", [(c, kw) for c, _, kw in CASES[4:] if not kw.get("centered")],
                         ids=[i for (_, _, kw), i in zip(CASES, IDS) if not kw.get("centered")][4:])  # fmt: skip
def test_bitwise_compiled_is_torch_but_for_its_sqrt(cls, kw, cpu_path):
    # one step from a fresh state: the state is torch's bit for bit, and the parameter too except where torch's
    # SIMD sqrt (within 1 ulp) differs from the correctly rounded one of the state it takes the root of
    torch = pytest.importorskip("torch")
    init, grads = _problem(np.random.default_rng(12), shapes=[(31, 17), (4096,)], steps=1)
    hist, o, ps = _run_bitwise(cls, kw, init, grads)
    tps, to = _torch_run(torch, cls, kw, init, grads)
    key = "max_exp_avg_sq" if kw.get("amsgrad") else SQRT_OF[cls.__name__]
    differ = 0
    for i, (p, tp) in enumerate(zip(ps, tps)):
        for name, st in o.state[p].items():
            assert _same_bits(_host(st), to.state[tp][name].numpy()), f"param {i} {name}"
        root_of = to.state[tp][key]
        sqrt_differs = (root_of.sqrt().numpy() != np.sqrt(root_of.numpy())).reshape(-1)
        a, b = hist[0][i].reshape(-1), tp.detach().numpy().reshape(-1)
        assert _same_bits(a[~sqrt_differs], b[~sqrt_differs]), f"param {i}"
        differ += int(sqrt_differs.sum())
    assert differ < 0.05 * sum(a.size for a in init)  # the exception stays an exception
