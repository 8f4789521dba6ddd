"""cross-entropy kernels: Triton (interpreter or GPU) vs reference path vs float64 NumPy, PyTorch semantics."""

import ml_dtypes
import numpy as np
import pytest
from devices import dev, host
from tolerances import assert_close

from conch.kernels import _deferred
from conch.kernels import cross_entropy as ce
from conch.kernels._launch import LAUNCHES

BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = [np.float32, np.float16, BF16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]
REDUCTIONS = ["mean", "sum", "none"]


def on_reference(monkeypatch, fn, *args, **kwargs):
    with monkeypatch.context() as m:
        m.setenv("CONCH_KERNELS", "reference")
        return fn(*args, **kwargs)


# ---- independent float64 NumPy reference (PyTorch's definition) ---------------------------------


def np_ce(x, t, dloss, ignore_index=-100, label_smoothing=0.0, reduction="mean"):
    """(loss, dlogits) in float64: loss_i = -sum_j q_ij log p_ij with q = (1 - eps) onehot + eps / V."""
    eps = label_smoothing
    x = np.asarray(x).astype(np.float64).reshape(-1, np.shape(x)[-1])
    t = np.asarray(t).reshape(-1)
    n, v = x.shape
    with np.errstate(invalid="ignore", divide="ignore"):
        z = x - x.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        valid = t != ignore_index
        q = np.zeros((n, v))
        q[np.arange(n)[valid], t[valid]] = 1.0 - eps
        q += eps / v
        per = np.where(valid, -(q * np.where(q > 0, logp, 0.0)).sum(1), 0.0)
        n_valid = valid.sum()
        d = np.asarray(dloss, np.float64)
        if reduction == "none":
            loss, scale = per, d.reshape(-1)
        elif reduction == "sum":
            loss, scale = per.sum(), np.full(n, float(d))
        else:
            loss, scale = per.sum() / n_valid, np.full(n, float(d) / n_valid)
        grad = (np.exp(logp) - q) * scale[:, None]
    grad[~valid] = 0.0
    return loss, grad


def make(rng, n, v, dtype, scale=2.0, n_ignored=1, tdtype=np.int64):
    x = (rng.standard_normal((n, v)) * scale).astype(dtype)
    t = rng.integers(0, v, n).astype(tdtype)
    t[rng.permutation(n)[: min(n_ignored, n - 1) if n > 1 else 0]] = -100
    return x, t


def upstream(rng, reduction, n):
    if reduction == "none":
        return rng.standard_normal(n).astype(np.float32)
    return np.float32(rng.standard_normal() + 2.0)


def run(x, t, dl, **kw):
    loss, res = ce.cross_entropy_forward(dev(x), dev(t), **kw)
    g = ce.cross_entropy_backward(res, dev(dl) if isinstance(dl, np.ndarray) else dl)
    return host(loss), host(g), res


def check_all(monkeypatch, x, t, dl, dtype, gscale=1.0, **kw):
    """Triton vs reference vs float64 NumPy for loss and dlogits; inputs unchanged; launches counted."""
    x_copy, t_copy = x.copy(), t.copy()
    before = LAUNCHES["_ce_fwd_kernel"] + LAUNCHES["_ce_bwd_kernel"]
    loss, g, _ = run(x, t, dl, **kw)
    assert LAUNCHES["_ce_fwd_kernel"] + LAUNCHES["_ce_bwd_kernel"] == before + 2
    loss_r, g_r, _ = on_reference(monkeypatch, run, x, t, dl, **kw)
    loss_np, g_np = np_ce(x, t, dl, **kw)
    assert loss.dtype == np.float32 and g.dtype == np.dtype(dtype) and g.shape == x.shape
    assert loss.shape == (() if kw.get("reduction", "mean") != "none" else t.shape)
    assert_close(loss, loss_r, np.float32)
    assert_close(loss, loss_np, np.float32)
    assert_close(g, g_r, dtype)
    assert_close(g, g_np, dtype, scale=gscale)
    np.testing.assert_array_equal(x, x_copy)
    np.testing.assert_array_equal(t, t_copy)
    return loss, g


# ---- tests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_reductions_smoothing_dtypes(triton_path, monkeypatch, rng, dtype, reduction, eps):
    x, t = make(rng, 7, 33, dtype, n_ignored=2)
    dl = upstream(rng, reduction, 7)
    check_all(monkeypatch, x, t, dl, dtype, label_smoothing=eps, reduction=reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("n,v", [(1, 1), (1, 7), (33, 1), (7, 123), (123, 7), (33, 33)])
def test_odd_shapes(triton_path, monkeypatch, rng, n, v, reduction):
    x, t = make(rng, n, v, np.float32)
    check_all(monkeypatch, x, t, upstream(rng, reduction, n), np.float32, label_smoothing=0.1, reduction=reduction)


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("v", [1, 4, 5, 6, 7, 8, 9, 12, 13, 14, 15, 16, 17, 123])
def test_small_blocks_forced(triton_path, monkeypatch, rng, v, eps):
    """V-chunks of 8 and 16 (forward loops, backward grid): tails 1..4 below a block, several chunks."""
    monkeypatch.setattr(ce, "FORCE_BLOCK", 8 if v <= 9 or v == 123 else 16)
    x, t = make(rng, 5, v, np.float32, scale=3.0)
    t[0] = v - 1  # target in the last (partial) chunk
    check_all(monkeypatch, x, t, upstream(rng, "none", 5), np.float32, label_smoothing=eps, reduction="none")


@pytest.mark.parametrize("v", [60, 61, 62, 63, 64])
def test_default_block_tails(triton_path, monkeypatch, rng, v):
    x, t = make(rng, 3, v, np.float16)
    t[0] = v - 1
    check_all(monkeypatch, x, t, upstream(rng, "mean", 3), np.float16, reduction="mean")


def test_block_choice():
    assert ce._block(33)[0] == 64 and ce._block(4096)[0] == 4096 and ce._block(128 * 1024)[0] == ce.MAX_BLOCK


@pytest.mark.parametrize("force", [None, 8])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_large_logits(triton_path, monkeypatch, rng, eps, force):
    monkeypatch.setattr(ce, "FORCE_BLOCK", force)
    x, t = make(rng, 6, 37, np.float32, scale=1e4, n_ignored=0)
    x[1] = 1e4 + rng.standard_normal(37).astype(np.float32)  # huge and close together
    x[2] = -1e4 + rng.standard_normal(37).astype(np.float32)
    t[3] = int(np.argmax(x[3]))  # loss ~ 0 next to huge logits: needs lse kept as max + log-sum
    loss, g = check_all(monkeypatch, x, t, upstream(rng, "none", 6), np.float32, label_smoothing=eps, reduction="none")
    assert np.isfinite(loss).all() and np.isfinite(g).all()


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("force", [None, 8])
def test_minus_inf_logits(triton_path, monkeypatch, rng, force):
    """-inf logits (masked classes) get zero probability and zero gradient; the loss stays finite."""
    monkeypatch.setattr(ce, "FORCE_BLOCK", force)
    x, t = make(rng, 4, 21, np.float32, n_ignored=0)
    x[0, :17] = -np.inf  # the first chunks see only -inf
    x[1, ::2] = -np.inf
    t[0], t[1] = 18, 1
    loss, g = check_all(monkeypatch, x, t, upstream(rng, "none", 4), np.float32, reduction="none")
    assert np.isfinite(loss).all()
    assert (g[np.isneginf(x)] == 0).all()


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_rows_ignored(triton_path, monkeypatch, rng, reduction):
    x, t = make(rng, 5, 9, np.float32)
    t[:] = -100
    dl = upstream(rng, reduction, 5)
    loss, g, _ = run(x, t, dl, reduction=reduction, label_smoothing=0.1)
    loss_r, g_r, _ = on_reference(monkeypatch, run, x, t, dl, reduction=reduction, label_smoothing=0.1)
    if reduction == "mean":  # 0 / 0, as PyTorch
        assert np.isnan(loss) and np.isnan(loss_r)
    else:
        assert (loss == 0).all() and (loss_r == 0).all()
    assert (g == 0).all() and (g_r == 0).all()


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_custom_ignore_index_in_range(triton_path, monkeypatch, rng, reduction):
    """ignore_index may be a real class (e.g. padding id 0): those rows are skipped."""
    x, t = make(rng, 9, 11, np.float32, n_ignored=0, tdtype=np.int32)
    t[::3] = 0
    check_all(monkeypatch, x, t, upstream(rng, reduction, 9), np.float32, ignore_index=0, reduction=reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_leading_dims(triton_path, monkeypatch, rng, reduction):
    x, t = make(rng, 6, 13, np.float32)
    x3, t3 = x.reshape(2, 3, 13), t.reshape(2, 3)
    dl = upstream(rng, reduction, 6)
    dl3 = dl.reshape(2, 3) if reduction == "none" else dl
    loss3, g3, _ = run(x3, t3, dl3, reduction=reduction)
    loss, g, _ = run(x, t, dl, reduction=reduction)
    assert g3.shape == (2, 3, 13) and loss3.shape == ((2, 3) if reduction == "none" else ())
    np.testing.assert_array_equal(loss3.reshape(-1), loss.reshape(-1))
    np.testing.assert_array_equal(g3.reshape(6, 13), g)


def test_residuals_keep_callers_logits_without_copy(triton_path, rng):
    x, t = make(rng, 4, 10, np.float16)
    x, t = dev(x), dev(t)
    _, res = ce.cross_entropy_forward(x, t)
    assert res.logits.shape == (4, 10) and res.row_max.shape == (4,) and res.log_sum.shape == (4,)
    assert res.row_max.dtype == np.float32 and res.log_sum.dtype == np.float32
    if isinstance(x, np.ndarray):
        assert np.shares_memory(res.logits, x)
    else:
        assert res.logits.data.ptr == x.data.ptr
    lse64 = np.log(np.exp(host(x).astype(np.float64)).sum(1))
    assert_close(host(res.lse), lse64, np.float32)


def test_noncontiguous_logits(triton_path, monkeypatch, rng):
    x, t = make(rng, 9, 6, np.float32)
    xt = np.ascontiguousarray(x.T).T  # same values, column-major
    check_all(monkeypatch, xt, t, upstream(rng, "sum", 9), np.float32, reduction="sum")


def test_empty_batch(triton_path):
    x, t = dev(np.zeros((0, 5), np.float32)), dev(np.zeros((0,), np.int64))
    assert np.isnan(host(ce.cross_entropy_forward(x, t)[0]))
    loss, res = ce.cross_entropy_forward(x, t, reduction="sum")
    assert float(host(loss)) == 0.0
    assert ce.cross_entropy_backward(res, np.float32(1)).shape == (0, 5)


@pytest.mark.parametrize("eps", [0.0, 0.3])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_reference_gradcheck_float64(reference, rng, reduction, eps):
    """Central differences of sum(dloss * loss) in float64 on the reference path."""
    x = rng.standard_normal((4, 5))
    t = np.array([1, -100, 4, 0])
    dl = rng.standard_normal(4) if reduction == "none" else np.float64(1.7)
    kw = dict(label_smoothing=eps, reduction=reduction)
    loss, res = ce.cross_entropy_forward(x, t, **kw)
    assert loss.dtype == np.float64
    g = ce.cross_entropy_backward(res, dl)

    def f(xx):
        return float((ce.cross_entropy_forward(xx, t, **kw)[0] * dl).sum())

    h, num = 1e-6, np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp_, xm = x.copy(), x.copy()
        xp_[idx] += h
        xm[idx] -= h
        num[idx] = (f(xp_) - f(xm)) / (2 * h)
    np.testing.assert_allclose(g, num, atol=1e-8, rtol=1e-6)
    loss_np, g_np = np_ce(x, t, dl, **kw)
    np.testing.assert_allclose(loss, loss_np, atol=1e-12, rtol=1e-12)
    np.testing.assert_allclose(g, g_np, atol=1e-12, rtol=1e-12)


def test_bad_inputs(triton_path):
    x = dev(np.zeros((3, 5), np.float32))
    t = dev(np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"logits shape \(3, 5\).*target shape \(2,\)"):
        ce.cross_entropy_forward(x, dev(np.array([0, 1])))
    with pytest.raises(TypeError, match="float32"):
        ce.cross_entropy_forward(x, dev(np.array([0.0, 1.0, 2.0], np.float32)))
    # on a GPU a bad target raises at the next host sync (kernels._deferred), as a CUDA device-side assert
    with pytest.raises(ValueError, match=r"target value 5 .*V=5"):
        ce.cross_entropy_forward(x, dev(np.array([0, 5, 1])))
        _deferred.raise_pending()
    with pytest.raises(ValueError, match=r"target value -1 .*V=5"):
        ce.cross_entropy_forward(x, dev(np.array([0, -1, 1])))
        _deferred.raise_pending()
    with pytest.raises(ValueError, match="reduction.*'avg'"):
        ce.cross_entropy_forward(x, t, reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        ce.cross_entropy_forward(x, t, label_smoothing=1.5)
    with pytest.raises(TypeError, match="int32"):
        ce.cross_entropy_forward(dev(np.zeros((3, 5), np.int32)), t)
    with pytest.raises(ValueError, match="at least one class"):
        ce.cross_entropy_forward(dev(np.zeros((3, 0), np.float32)), t)
    _, res = ce.cross_entropy_forward(x, t, reduction="none")
    with pytest.raises(ValueError, match=r"dloss shaped like the loss \(3,\)"):
        ce.cross_entropy_backward(res, dev(np.ones(4, np.float32)))
    _, res = ce.cross_entropy_forward(x, t, reduction="mean")
    with pytest.raises(ValueError, match="one element"):
        ce.cross_entropy_backward(res, dev(np.ones(3, np.float32)))
