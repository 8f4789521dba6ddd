"""The compiled CPU row kernels (kernels/_numba/rows.py) and the NumPy paths they replace, against float64 references.

Each reference test runs once per CPU path (the ``cpu_path`` fixture: "numba", "numpy") through the public kernel
functions on the reference path, against closed forms computed in float64 NumPy; odd and power-of-two row
lengths, non-contiguous inputs, NaN/inf rows, float32/float64 and the half types (computed in float32, rounded
once). Separate tests hold the compiled path to the NumPy path at a stated tolerance, check that results do not
depend on the thread count, and compare with PyTorch where it imports.
"""

import ml_dtypes
import numpy as np
import pytest
from tolerances import assert_close

import conch
from conch.kernels import _jit, _threads, attention, cross_entropy, norms, softmax

BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = [np.float32, np.float64, np.float16, BF16]
LENGTHS = [1, 7, 64, 129]


def _f64(a):
    return np.asarray(a).astype(np.float64)


def _both_paths(fn):
    """fn() with the compiled kernels on, then off (skips where Numba is not importable: nothing to compare)."""
    if not _jit._probe():
        pytest.skip("Numba is not importable here or CONCH_NUMBA=0: there is no compiled path to compare")
    prev = _jit.set_enabled(True)
    try:
        a = fn()
        _jit.set_enabled(False)
        b = fn()
    finally:
        _jit.set_enabled(prev)
    return a, b


# ---------------------------------------------------------------------------------------------------- softmax


def _softmax64(x):
    m = x.max(axis=-1, keepdims=True)
    e = np.exp(x - m)
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("log", [False, True])
def test_softmax_forward_backward_match_float64(dtype, n, log, rng, cpu_path, reference):
    x = (rng.standard_normal((3, 5, n)) * 4).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    y, res = softmax.softmax_forward(x, log=log)
    dx = softmax.softmax_backward(res, dy, log=log)
    assert y.dtype == dx.dtype == x.dtype and y.shape == x.shape
    p = _softmax64(_f64(x))
    assert_close(y, np.log(p) if log else p, dtype, scale=4 if log else 1)
    # the backward from the path's own y, in float64: isolates the backward's error from the forward's
    y64, g = _f64(y), _f64(dy)
    want = g - np.exp(y64) * g.sum(-1, keepdims=True) if log else y64 * (g - (g * y64).sum(-1, keepdims=True))
    assert_close(dx, want, dtype, scale=4)


@pytest.mark.parametrize("log", [False, True])
def test_softmax_non_contiguous_input(log, rng, cpu_path, reference):
    base = rng.standard_normal((65, 9)).astype(np.float32) * 3
    x = base.T  # (9, 65), rows strided
    y, res = softmax.softmax_forward(x, log=log)
    p = _softmax64(_f64(x))
    assert_close(y, np.log(p) if log else p, np.float32, scale=4 if log else 1)
    dy = rng.standard_normal((130, 9)).astype(np.float32)[::2].T  # both dims strided
    dx = softmax.softmax_backward(res, dy, log=log)
    y64, g = _f64(y), _f64(dy)
    want = g - np.exp(y64) * g.sum(-1, keepdims=True) if log else y64 * (g - (g * y64).sum(-1, keepdims=True))
    assert_close(dx, want, np.float32, scale=4)


def test_softmax_nan_and_inf_rows(cpu_path, reference):
    inf, nan = np.inf, np.nan
    x = np.array(
        [
            [1.0, nan, 2.0, 3.0],
            [-inf, -inf, -inf, -inf],
            [0.0, -inf, 1.0, -inf],
            [inf, 1.0, 2.0, 3.0],
            [-1e30, 0.0, 1.0, 2.0],
        ],  # fmt: skip
        np.float32,
    )
    y, _ = softmax.softmax_forward(x)
    assert np.isnan(y[0]).all() and np.isnan(y[1]).all() and np.isnan(y[3]).all()  # as PyTorch
    assert_close(y[2], _softmax64(np.array([0.0, -inf, 1.0, -inf])), np.float32)
    assert y[2, 1] == 0.0 and y[2, 3] == 0.0 and y[4, 0] == 0.0
    ylog, _ = softmax.softmax_forward(x, log=True)
    assert np.isnan(ylog[0]).all() and ylog[2, 1] == -inf


def test_softmax_large_logits_do_not_overflow(cpu_path, reference):
    x = np.array([[80.0, 88.0, 89.0, 100.0], [-200.0, -150.0, -149.0, -100.0]], np.float32)
    y, _ = softmax.softmax_forward(x)
    assert_close(y, _softmax64(_f64(x)), np.float32)


@pytest.mark.parametrize("log", [False, True])
def test_softmax_compiled_matches_numpy_path(log, rng, reference):
    x = (rng.standard_normal((33, 127)) * 5).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)

    def run():
        y, res = softmax.softmax_forward(x, log=log)
        return y, softmax.softmax_backward(res, dy, log=log)

    (y1, d1), (y2, d2) = _both_paths(run)
    # the same float32 functions, summed in another order and with a polynomial exp (<= 2 ulp): a few ulp apart
    np.testing.assert_allclose(y1, y2, rtol=2e-6, atol=2e-6 if log else 1e-7)
    np.testing.assert_allclose(d1, d2, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------- norms


def _layer_norm64(x, w, b, eps, rms):
    mean = np.zeros(x.shape[:-1] + (1,)) if rms else x.mean(-1, keepdims=True)
    var = (x * x).mean(-1, keepdims=True) if rms else ((x - mean) ** 2).mean(-1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean) * rstd
    return xhat * w + b, xhat, rstd


def _norm_grads64(xhat, rstd, w, dy, rms):
    wdy = dy * w
    dx = wdy - xhat * (wdy * xhat).mean(-1, keepdims=True)
    if not rms:
        dx -= wdy.mean(-1, keepdims=True)
    lead = tuple(range(dy.ndim - 1))
    return dx * rstd, (dy * xhat).sum(lead), dy.sum(lead)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", LENGTHS)
@pytest.mark.parametrize("rms", [False, True])
def test_norm_forward_backward_match_float64(dtype, d, rms, rng, cpu_path, reference):
    rows = 130  # three of rows.ROW_BLOCK's blocks, the last one short
    x = (rng.standard_normal((2, rows // 2, d)) * 2 + 0.5).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    w = (1 + 0.5 * rng.standard_normal(d)).astype(dtype)
    b = rng.standard_normal(d).astype(dtype)
    eps = 1e-5
    if rms:
        y, res = norms.rms_norm_forward(x, w, eps=eps)
        dx, dw = norms.rms_norm_backward(res, dy)
        db = None
    else:
        y, res = norms.layer_norm_forward(x, w, b, eps=eps)
        dx, dw, db = norms.layer_norm_backward(res, dy)
    x64, w64, dy64 = _f64(x), _f64(w), _f64(dy)
    y64, xhat, rstd = _layer_norm64(x64, w64, 0.0 if rms else _f64(b), eps, rms)
    assert y.dtype == dx.dtype == x.dtype and dw.dtype == w.dtype
    # d = 1: LayerNorm's xhat is 0 (x - mean = 0 exactly), RMSNorm's is +-1/sqrt(1 + eps/x^2)
    assert_close(y, y64, dtype, scale=4)
    assert_close(res.rstd, rstd.reshape(-1), np.float32 if dtype != np.float64 else dtype, scale=4)
    dx64, dw64, db64 = _norm_grads64(xhat, rstd, w64, dy64, rms)
    assert_close(dx, dx64, dtype, scale=8)
    # dw sums 130 rows: its error grows with the row count (and with the rounding of the half types)
    assert_close(dw, dw64, dtype, scale=30)
    if db is not None:
        assert_close(db, db64, dtype, scale=30)


@pytest.mark.parametrize("affine", [False, True])
def test_layer_norm_without_weight_bias_and_non_contiguous(affine, rng, cpu_path, reference):
    base = (rng.standard_normal((40, 33)) * 3).astype(np.float32)
    x = base[::2].T  # (33, 20), strided both ways
    w = rng.standard_normal(20).astype(np.float32) if affine else None
    b = rng.standard_normal(20).astype(np.float32) if affine else None
    y, res = norms.layer_norm_forward(x, w, b)
    dy = rng.standard_normal((20, 33)).astype(np.float32).T
    dx, dw, db = norms.layer_norm_backward(res, dy)
    w64 = np.ones(20) if w is None else _f64(w)
    y64, xhat, rstd = _layer_norm64(_f64(x), w64, 0.0 if b is None else _f64(b), 1e-5, False)
    assert_close(y, y64, np.float32, scale=4)
    dx64, dw64, db64 = _norm_grads64(xhat, rstd, w64, _f64(dy), False)
    assert_close(dx, dx64, np.float32, scale=8)
    assert (dw is None and db is None) if not affine else True
    if affine:
        assert_close(dw, dw64, np.float32, scale=10)
        assert_close(db, db64, np.float32, scale=10)


def test_layer_norm_nan_inf_and_overflowing_rows(cpu_path, reference):
    x = np.array([[1.0, np.nan, 2.0], [1.0, np.inf, 2.0], [3e38, -3e38, 1.0], [1.0, 2.0, 4.0]], np.float32)
    with np.errstate(invalid="ignore"):  # the NumPy path computes inf - inf on the way to the same NaN
        y, res = norms.layer_norm_forward(x)
        yr, _ = norms.rms_norm_forward(x[:2])
    assert np.isnan(y[:3]).all() and np.isnan(res.rstd[:3]).all()  # a spread that overflows: NaN, as PyTorch
    assert_close(y[3], _layer_norm64(_f64(x[3]), 1.0, 0.0, 1e-5, False)[0], np.float32)
    assert np.isnan(yr[0]).all() and np.isnan(yr[1, 1])


def test_norms_compiled_match_numpy_path(rng, reference):
    x = (rng.standard_normal((200, 96)) * 2 + 1).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    w, b = rng.standard_normal(96).astype(np.float32), rng.standard_normal(96).astype(np.float32)

    def run():
        y, res = norms.layer_norm_forward(x, w, b)
        yr, rres = norms.rms_norm_forward(x, w)
        return (y, res.mean, res.rstd, *norms.layer_norm_backward(res, dy), yr, *norms.rms_norm_backward(rres, dy))

    for a, c in zip(*_both_paths(run)):
        # row sums in another order; dw/db sum 200 rows (blocked here, row by row in NumPy)
        np.testing.assert_allclose(a, c, rtol=2e-5, atol=2e-5)


# ---------------------------------------------------------------------------------------------------- cross-entropy


def _ce64(x, t, ignore_index, eps, scale):
    """Per-row losses and dlogits of sum_i scale_i * loss_i, in float64."""
    n, v = x.shape
    lse = np.log(np.exp(x - x.max(1, keepdims=True)).sum(1)) + x.max(1)
    logp = x - lse[:, None]
    ok = t != ignore_index
    ts = np.where(ok, t, 0)
    loss = (1 - eps) * -logp[np.arange(n), ts] + eps / v * -logp.sum(1)
    grad = np.exp(logp) - eps / v
    grad[np.arange(n), ts] -= 1 - eps
    grad *= scale.reshape(-1, 1)
    return np.where(ok, loss, 0.0), np.where(ok[:, None], grad, 0.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("v", LENGTHS)
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_cross_entropy_matches_float64(dtype, v, eps, rng, cpu_path, reference):
    x = (rng.standard_normal((3, 11, v)) * 3).astype(dtype)
    t = rng.integers(0, v, (3, 11))
    t[0, :3] = -100
    loss, res = cross_entropy.cross_entropy_forward(x, t, label_smoothing=eps, reduction="none")
    dl = rng.standard_normal((3, 11)).astype(np.float32)
    dx = cross_entropy.cross_entropy_backward(res, dl)
    want_loss, want_dx = _ce64(_f64(x).reshape(-1, v), t.reshape(-1), -100, eps, _f64(dl).reshape(-1))
    assert dx.dtype == x.dtype and dx.shape == x.shape
    assert_close(loss.reshape(-1), want_loss, dtype if dtype == np.float64 else np.float32, scale=10)
    assert_close(dx.reshape(-1, v), want_dx, dtype, scale=4)
    mean, mres = cross_entropy.cross_entropy_forward(x, t, label_smoothing=eps)
    assert_close(mean, want_loss.sum() / (t != -100).sum(), dtype if dtype == np.float64 else np.float32, scale=10)
    dmean = cross_entropy.cross_entropy_backward(mres, np.float32(2.0))
    _, want_dmean = _ce64(_f64(x).reshape(-1, v), t.reshape(-1), -100, eps, np.full(33, 2.0 / (t != -100).sum()))
    assert_close(dmean.reshape(-1, v), want_dmean, dtype, scale=4)


def test_cross_entropy_in_place_non_contiguous_nan_and_all_ignored(rng, cpu_path, reference):
    x = (rng.standard_normal((65, 9)) * 3).astype(np.float32).T  # (9, 65) strided
    t = rng.integers(0, 65, 9)
    loss, res = cross_entropy.cross_entropy_forward(x, t, reduction="sum")
    want_loss, want_dx = _ce64(_f64(x), t, -100, 0.0, np.ones(9))
    assert_close(loss, want_loss.sum(), np.float32, scale=10)
    buf = np.ascontiguousarray(x)
    _, res2 = cross_entropy.cross_entropy_forward(buf, t, reduction="sum")
    out = cross_entropy.cross_entropy_backward(res2, np.float32(1.0), out=buf)  # the logits become their gradient
    assert np.shares_memory(out, buf)
    assert_close(buf, want_dx, np.float32, scale=4)
    xn = np.array([[1.0, np.nan, 2.0], [1.0, 2.0, 3.0]], np.float32)
    ln, _ = cross_entropy.cross_entropy_forward(xn, np.array([0, 1]), reduction="none")
    assert np.isnan(ln[0]) and np.isfinite(ln[1])
    lm, rm = cross_entropy.cross_entropy_forward(xn[1:], np.array([-100]))
    assert np.isnan(lm)  # every target ignored: 0 / 0, as PyTorch
    assert (cross_entropy.cross_entropy_backward(rm, np.float32(1.0)) == 0).all()


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_cross_entropy_compiled_matches_numpy_path(eps, rng, reference):
    x = (rng.standard_normal((70, 300)) * 4).astype(np.float32)
    t = rng.integers(0, 300, 70)
    t[5] = -100

    def run():
        loss, res = cross_entropy.cross_entropy_forward(x, t, label_smoothing=eps, reduction="none")
        return loss, res.row_max, res.log_sum, cross_entropy.cross_entropy_backward(res, np.ones(70, np.float32))

    for a, c in zip(*_both_paths(run)):
        np.testing.assert_allclose(a, c, rtol=5e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------------- threads


@pytest.fixture
def split_rows(monkeypatch, reference):
    """Pool every pass (threshold 64 element-passes) and cut the norms' partial sums into blocks of 4 rows."""
    if not _jit._probe():
        pytest.skip("Numba is not importable here or CONCH_NUMBA=0: the compiled kernels are not there to split")
    rows = _jit.family("rows")
    monkeypatch.setitem(_threads._load, "adapt", False)
    monkeypatch.setattr(_threads, "MIN_PARALLEL", 64)
    monkeypatch.setattr(rows, "ROW_BLOCK", 4)
    prev, before = _jit.set_enabled(True), conch.get_num_threads()
    yield
    _jit.set_enabled(prev)
    conch.set_num_threads(before)


def test_compiled_kernels_same_bits_on_any_thread_count(rng, split_rows):
    x = (rng.standard_normal((3, 37, 65)) * 3).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    w, b = rng.standard_normal(65).astype(np.float32), rng.standard_normal(65).astype(np.float32)
    q, k, vv = (rng.standard_normal((2, 3, 37, 8)).astype(np.float32) for _ in range(3))
    t = rng.integers(0, 65, 111)

    def run():
        y, res = norms.layer_norm_forward(x, w, b)
        out = [y, res.mean, res.rstd, *norms.layer_norm_backward(res, dy)]
        y, res = norms.rms_norm_forward(x, w)
        out += [y, *norms.rms_norm_backward(res, dy)]
        y, res = softmax.softmax_forward(x, log=True)
        out += [y, softmax.softmax_backward(res, dy, log=True)]
        o, res = attention.attention_forward(q, k, vv, causal=True)
        out += [o, *attention.attention_backward(res, q)]
        loss, res = cross_entropy.cross_entropy_forward(x.reshape(-1, 65), t, label_smoothing=0.1)
        return out + [loss, cross_entropy.cross_entropy_backward(res, np.float32(1.0))]

    results = []
    for n in (1, 2, 3):
        conch.set_num_threads(n)
        before = _threads.SPLITS[0]
        results.append(run())
        assert n == 1 or _threads.SPLITS[0] >= before + 8, f"the row kernels were not split on {n} threads"
    for other in results[1:]:
        for a, c in zip(results[0], other):
            assert a.dtype == c.dtype and a.tobytes() == c.tobytes()


# ---------------------------------------------------------------------------------------------------- PyTorch


@pytest.mark.parametrize("log", [False, True])
def test_softmax_and_layer_norm_match_torch(log, rng, cpu_path, reference):
    torch = pytest.importorskip("torch")
    x = (rng.standard_normal((6, 50)) * 3).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    w, b = rng.standard_normal(50).astype(np.float32), rng.standard_normal(50).astype(np.float32)
    y, res = softmax.softmax_forward(x, log=log)
    dx = softmax.softmax_backward(res, dy, log=log)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.log_softmax(xt, -1) if log else torch.softmax(xt, -1)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-5, atol=1e-6)
    y, res = norms.layer_norm_forward(x, w, b)
    dx, dw, db = norms.layer_norm_backward(res, dy)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    torch.nn.functional.layer_norm(xt, (50,), wt, bt).backward(torch.tensor(dy))
    for got, exp in ((dx, xt.grad), (dw, wt.grad), (db, bt.grad)):
        np.testing.assert_allclose(got, exp.numpy(), rtol=1e-4, atol=1e-5)


def test_cross_entropy_matches_torch(rng, cpu_path, reference):
    # (attention against PyTorch: tests/kernels/test_attention_cpu.py)
    torch = pytest.importorskip("torch")
    x = (rng.standard_normal((40, 33)) * 3).astype(np.float32)
    t = rng.integers(0, 33, 40)
    t[:4] = -100
    loss, cres = cross_entropy.cross_entropy_forward(x, t, label_smoothing=0.1)
    dx = cross_entropy.cross_entropy_backward(cres, np.float32(1.0))
    xt = torch.tensor(x, requires_grad=True)
    lt = torch.nn.functional.cross_entropy(xt, torch.tensor(t), label_smoothing=0.1)
    lt.backward()
    np.testing.assert_allclose(loss, lt.item(), rtol=1e-5)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------------- exp


def test_exp32_within_two_ulp_and_its_edges():
    """_exp32 (act.py's, which the row kernels use), the vectorizable float32 exp, against float64 exp (rounded)."""
    pytest.importorskip("numba", reason="the compiled exp exists only where Numba is installed")
    if not _jit._probe():
        pytest.skip("CONCH_NUMBA=0: the compiled kernels are off")
    from conch.kernels._numba import act, njit

    @njit(cache=False)  # Numba's cache would not see a change in act.py (it keys on this file only)
    def exp_all(x, out):
        for i in range(x.size):
            out[i] = act._exp32(x[i])

    x = np.concatenate([np.linspace(-87.3, 88.7, 400_001, dtype=np.float32), np.float32([0.0, -0.0, 1e-30, -1e-30])])
    out = np.empty_like(x)
    exp_all(x, out)
    want = np.exp(x.astype(np.float64))
    ulp = np.spacing(want.astype(np.float32)).astype(np.float64)
    assert (np.abs(out - want) <= 2 * ulp).all(), np.max(np.abs(out - want) / ulp)
    edges = np.float32([-np.inf, -1000.0, -110.0, 88.8, 1000.0, np.inf, np.nan])
    out = np.empty_like(edges)
    exp_all(edges, out)
    assert (out[:3] == 0).all() and (out[3:6] == np.inf).all() and np.isnan(out[6])
    sub = np.float32([-87.5, -95.0, -103.0])  # subnormal results, rounded once
    out = np.empty_like(sub)
    exp_all(sub, out)
    np.testing.assert_allclose(out, np.exp(sub.astype(np.float64)), rtol=0, atol=float(np.spacing(np.float32(0))))


def test_compiled_results_do_not_depend_on_the_rows_addresses(rng, reference):
    """The vectorized row sums (reassociated) must give the same bits for a row wherever it lies in memory: the
    same rows, once 64-byte aligned and once 4 bytes off, through every compiled kernel."""
    if not _jit._probe():
        pytest.skip("Numba is not importable here or CONCH_NUMBA=0: there is no compiled path to check")
    x0 = (rng.standard_normal((9, 37)) * 3).astype(np.float32)
    t = rng.integers(0, 37, 9)
    w = rng.standard_normal(37).astype(np.float32)

    def placed(a, shift):
        buf = np.empty(a.size + 16, np.float32)
        start = (-buf.ctypes.data // 4) % 16 + shift  # 64-byte aligned, then `shift` floats further
        out = buf[start : start + a.size].reshape(a.shape)
        out[...] = a
        return out

    def run(shift):
        x = placed(x0, shift)
        y, res = softmax.softmax_forward(x)
        yl, resl = norms.layer_norm_forward(x, w)
        loss, cres = cross_entropy.cross_entropy_forward(x, t, label_smoothing=0.1, reduction="none")
        return [y, softmax.softmax_backward(res, x), yl, *norms.layer_norm_backward(resl, x), loss,
                cross_entropy.cross_entropy_backward(cres, np.ones(9, np.float32))]  # fmt: skip

    prev = _jit.set_enabled(True)
    try:
        aligned, shifted = run(0), run(1)
    finally:
        _jit.set_enabled(prev)
    assert aligned[5] is None and shifted[5] is None  # no bias
    for a, b in zip(aligned[:5] + aligned[6:], shifted[:5] + shifted[6:]):
        assert a.tobytes() == b.tobytes()
