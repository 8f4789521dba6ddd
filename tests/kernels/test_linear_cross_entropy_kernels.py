"""Fused linear cross-entropy kernel: Triton (interpreter or GPU) vs reference path vs a float64 NumPy composition."""

import ml_dtypes
import numpy as np
import pytest
from devices import ON_GPU, dev, host
from test_cross_entropy import np_ce
from tolerances import MATMUL_TOL, TOL, assert_close

from conch.kernels import _deferred
from conch.kernels import cross_entropy as ce
from conch.kernels import linear_cross_entropy as lce
from conch.kernels._launch import LAUNCHES

BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = [np.float32, np.float16, BF16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]
REDUCTIONS = ["mean", "sum", "none"]


def np_lce(x, w, b, t, dloss, ignore_index=-100, label_smoothing=0.0, reduction="mean"):
    """(loss, dx, dw, db) in float64 from the unfused composition: z = x wᵀ + b, then the float64 cross-entropy
    of test_cross_entropy (dlogits), then dx = dz w, dw = dzᵀ x, db = Σ_rows dz."""
    x = np.asarray(x, np.float64).reshape(-1, w.shape[1])
    w = np.asarray(w, np.float64)
    z = x @ w.T + (0.0 if b is None else np.asarray(b, np.float64))
    loss, dz = np_ce(z, t, dloss, ignore_index, label_smoothing, reduction)
    return loss, dz @ w, dz.T @ x, dz.sum(0)


def make(rng, n, d, v, dtype, bias=True, n_ignored=2):
    x = rng.standard_normal((n, d)).astype(dtype)
    w = (rng.standard_normal((v, d)) / np.sqrt(d) * 2).astype(dtype)
    b = rng.standard_normal(v).astype(dtype) if bias else None
    t = rng.integers(0, v, n)
    t[rng.permutation(n)[:n_ignored]] = -100
    return x, w, b, t


def run(x, w, b, t, dloss, **kw):
    loss, res = lce.linear_cross_entropy_forward(dev(x), dev(w), dev(t), dev(b), **kw)
    ddt = np.float64 if np.dtype(x.dtype) == np.float64 else np.float32
    dx, dw, db = lce.linear_cross_entropy_backward(res, dev(np.asarray(dloss, ddt)))
    return host(loss), host(dx), host(dw), host(db)


# ---- reference path against the float64 composition -----------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_reference_matches_float64_composition(reference, rng, reduction, bias, eps):
    n, d, v = 29, 11, 37
    x, w, b, t = make(rng, n, d, v, np.float64, bias)
    dloss = rng.standard_normal(n) if reduction == "none" else 0.7
    got = run(x, w, b, t, dloss, reduction=reduction, label_smoothing=eps, chunk_size=6)
    want = np_lce(x, w, b, t, dloss, label_smoothing=eps, reduction=reduction)
    for g, e in zip(got, want):
        if e is not None and g is not None:
            np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-12)
    assert (got[3] is None) == (not bias)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_reference_low_precision_against_float64(reference, rng, dtype, reduction):
    x, w, b, t = make(rng, 33, 16, 50, dtype)
    dloss = rng.standard_normal(33) if reduction == "none" else 1.3
    got = run(x, w, b, t, dloss, reduction=reduction, ignore_index=-100, label_smoothing=0.1, chunk_size=8)
    want = np_lce(x, w, b, t, dloss, label_smoothing=0.1, reduction=reduction)
    assert got[0].dtype == np.float32 and got[1].dtype == np.dtype(dtype) and got[2].dtype == np.dtype(dtype)
    for g, e in zip(got, want):
        assert_close(g, e, dtype, MATMUL_TOL, scale=max(1.0, np.abs(e).max()))


def test_chunking_does_not_change_the_result(reference, rng):
    x, w, b, t = make(rng, 40, 8, 21, np.float64)
    one = run(x, w, b, t, 1.0, chunk_size=40)
    for c in (1, 7, 13, 64):
        for a, e in zip(run(x, w, b, t, 1.0, chunk_size=c), one):
            np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-14)


def test_leading_shape_and_int32_targets(reference, rng):
    x, w, b, t = make(rng, 12, 5, 9, np.float64)
    dloss = rng.standard_normal((3, 4))
    loss, dx, dw, db = run(x.reshape(3, 4, 5), w, b, t.reshape(3, 4).astype(np.int32), dloss, reduction="none")
    want = np_lce(x, w, b, t, dloss, reduction="none")
    assert loss.shape == (3, 4) and dx.shape == (3, 4, 5)
    np.testing.assert_allclose(loss.reshape(-1), want[0], rtol=1e-12)
    np.testing.assert_allclose(dx.reshape(12, 5), want[1], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(dw, want[2], rtol=1e-10, atol=1e-14)


def test_all_ignored_mean_is_nan_with_zero_gradients(reference, rng):
    x, w, b, t = make(rng, 6, 4, 5, np.float32)
    t[:] = -100
    loss, dx, dw, db = run(x, w, b, t, 1.0)
    assert np.isnan(loss)
    assert not dx.any() and not dw.any() and not db.any()
    loss, *_ = run(x, w, b, t, 1.0, reduction="sum")
    assert loss == 0.0


def test_forward_without_gradients_then_backward_recomputes(reference, rng):
    x, w, b, t = make(rng, 10, 4, 7, np.float64)
    loss, res = lce.linear_cross_entropy_forward(x, w, t, b, needs_input_grad=(False, False, False))
    assert res.grads is None  # no wasted work when nothing requires grad
    dx, dw, db = lce.linear_cross_entropy_backward(res, np.float64(2.0), (True, True, True))
    want = np_lce(x, w, b, t, 2.0)
    for g, e in zip((loss, dx, dw, db), want):
        np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-14)
    _, res = lce.linear_cross_entropy_forward(x, w, t, b, needs_input_grad=(True, False, False))
    assert res.grads[1] is None and res.grads[2] is None and res.grads[0] is not None


def test_chunk_rows_follows_the_budget():
    # the case: the chunk's float32 logits about 4 times the size of x (8192 * 768 * 4 bytes)
    rows = lce.chunk_rows(8192, 768, 32000)
    assert rows * 32000 * 4 <= 4 * 8192 * 768 * 4 < (rows + 1) * 32000 * 4 and rows < 8192 / 10
    assert lce.chunk_rows(10, 4, 7) == 10  # small problems: one chunk
    assert lce.chunk_rows(1000, 4, 10**9) == 1
    assert lce.chunk_rows(1000, 4, 100, budget=4000) == 10


# ---- Triton path (interpreter on the CPU) against the reference path --------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(37, 24, 45), (32, 16, 64)], ids=["odd", "pow2"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_triton_matches_reference(triton_path, monkeypatch, rng, dtype, shape, reduction):
    n, d, v = shape
    x, w, b, t = make(rng, n, d, v, dtype, bias=shape[0] % 2 == 1)
    dloss = rng.standard_normal(n) if reduction == "none" else 0.5
    kw = dict(reduction=reduction, label_smoothing=0.1, chunk_size=16)
    before = (LAUNCHES["_matmul_kernel"], LAUNCHES["_ce_fwd_kernel"], LAUNCHES["_ce_bwd_kernel"])
    got = run(x, w, b, t, dloss, **kw)
    after = (LAUNCHES["_matmul_kernel"], LAUNCHES["_ce_fwd_kernel"], LAUNCHES["_ce_bwd_kernel"])
    chunks = -(-n // 16)
    assert after[1] - before[1] >= chunks and after[2] - before[2] == chunks and after[0] - before[0] >= 3 * chunks
    with monkeypatch.context() as m:
        m.delenv("TRITON_INTERPRET", raising=False)
        m.setenv("CONCH_KERNELS", "reference")
        want = run(x, w, b, t, dloss, **kw)
    assert_close(got[0], want[0], dtype, TOL, scale=max(1.0, np.abs(want[0]).max()))
    for g, e in zip(got[1:], want[1:]):
        if e is None:
            assert g is None
            continue
        assert g.dtype == e.dtype
        assert_close(g, e, dtype, MATMUL_TOL, scale=max(1.0, np.abs(e.astype(np.float64)).max()))


def test_cross_entropy_backward_in_place(triton_path, rng):
    """The additive hook the fused op uses: the cross-entropy backward writing into its own logits."""
    x = rng.standard_normal((9, 13)).astype(np.float32)
    t = rng.integers(0, 13, 9)
    _, res = ce.cross_entropy_forward(dev(x), dev(t))
    fresh = host(ce.cross_entropy_backward(res, dev(np.float32(1.0))))
    logits = dev(x.copy())
    _, res = ce.cross_entropy_forward(logits, dev(t))
    got = ce.cross_entropy_backward(res, dev(np.float32(1.0)), out=logits)
    assert got is logits or got.base is logits
    np.testing.assert_array_equal(host(logits), fresh)
    with pytest.raises(ValueError, match="C-contiguous"):
        ce.cross_entropy_backward(res, dev(np.float32(1.0)), out=dev(np.zeros((9, 13), np.float64)))


# ---- errors ---------------------------------------------------------------------------------------------------


def test_errors_name_shapes_and_dtypes(reference, rng):
    x, w, b, t = make(rng, 4, 3, 5, np.float32)
    with pytest.raises(ValueError, match=r"x shape \(4, 2\).*weight shape \(5, 3\)"):
        lce.linear_cross_entropy_forward(x[:, :2], w, t)
    with pytest.raises(ValueError, match=r"target shape \(3,\)"):
        lce.linear_cross_entropy_forward(x, w, t[:3])
    with pytest.raises(TypeError, match="float32"):
        lce.linear_cross_entropy_forward(x, w, t.astype(np.float32))
    with pytest.raises(TypeError, match="float16"):
        lce.linear_cross_entropy_forward(x, w.astype(np.float16), t)
    with pytest.raises(ValueError, match="reduction"):
        lce.linear_cross_entropy_forward(x, w, t, reduction="avg")
    with pytest.raises(ValueError, match=r"bias must have shape \(5,\)"):
        lce.linear_cross_entropy_forward(x, w, t, b[:4])
    _, res = lce.linear_cross_entropy_forward(x, w, t, reduction="none")
    with pytest.raises(ValueError, match=r"dloss shaped like the loss \(4,\)"):
        lce.linear_cross_entropy_backward(res, np.ones(3, np.float32))


def test_out_of_range_target_raises(reference, rng):
    x, w, b, t = make(rng, 4, 3, 5, np.float32)
    t[1] = 5
    _deferred.clear()
    if ON_GPU:  # deferred: raised at the next sync
        lce.linear_cross_entropy_forward(dev(x), dev(w), dev(t))
        with pytest.raises(ValueError, match="target value 5 is out of range for V=5"):
            _deferred.raise_pending()
    else:
        with pytest.raises(ValueError, match="target value 5 is out of range for V=5"):
            lce.linear_cross_entropy_forward(x, w, t)


@pytest.mark.parametrize("few_rows", [0, 10**9], ids=["plain-dx", "transposed-dx"])
def test_cpu_backward_layouts_and_blocks(reference, monkeypatch, rng, few_rows):
    # both layouts of dx and dW's vocabulary blocks (7 rows here) give the float64 composition's gradients
    monkeypatch.setattr(lce, "FEW_ROWS", few_rows)
    monkeypatch.setattr(lce, "V_BLOCK", 7)
    x, w, b, t = make(rng, 23, 6, 17, np.float64)
    got = run(x, w, b, t, 1.0, chunk_size=5)
    for g, e in zip(got, np_lce(x, w, b, t, 1.0)):
        np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-14)
