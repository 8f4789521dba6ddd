"""softmax / log_softmax kernels: Triton (interpreter or GPU) vs reference path vs float64 NumPy."""

import ml_dtypes
import numpy as np
import pytest
from devices import dev, host
from tolerances import assert_close

from conch.kernels import softmax as sm
from conch.kernels._launch import LAUNCHES

BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = [np.float32, np.float16, BF16]


def on_reference(monkeypatch, fn, *args, **kwargs):
    with monkeypatch.context() as m:
        m.setenv("CONCH_KERNELS", "reference")
        return fn(*args, **kwargs)


# ---- independent float64 NumPy references -------------------------------------------------------


def np_softmax(x, log):
    x = np.asarray(x).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = x - x.max(-1, keepdims=True)
        lse = np.log(np.exp(z).sum(-1, keepdims=True))
        return z - lse if log else np.exp(z - lse)


def np_softmax_grad(x, dy, log):
    """dx_j = sum_i dy_i dy_i/dx_j through the explicit Jacobian."""
    p = np_softmax(x, False)
    eye = np.eye(p.shape[-1])
    if log:
        jac = eye - p[..., None, :]  # d log p_i / d x_j = delta_ij - p_j
    else:
        jac = p[..., :, None] * (eye - p[..., None, :])  # d p_i / d x_j = p_i (delta_ij - p_j)
    return np.einsum("...i,...ij->...j", np.asarray(dy).astype(np.float64), jac)


def rand(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def run_both(monkeypatch, x, dy, log):
    """(y, dx) on the current path and on the reference path, as host arrays."""
    y, res = sm.softmax_forward(x, log=log)
    dx = sm.softmax_backward(res, dy, log=log)
    y_r, res_r = on_reference(monkeypatch, sm.softmax_forward, x, log=log)
    dx_r = on_reference(monkeypatch, sm.softmax_backward, res_r, dy, log=log)
    return host(y), host(dx), host(y_r), host(dx_r)


# ---- tests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("shape", [(1, 1), (7, 33), (3, 123), (2, 3, 7), (33,)])
def test_forward_backward(triton_path, monkeypatch, rng, shape, dtype, log):
    x_h = rand(rng, shape, dtype, 2.0)
    dy_h = rand(rng, shape, dtype)
    x, dy = dev(x_h), dev(dy_h)
    x_copy, dy_copy = x_h.copy(), dy_h.copy()
    before = LAUNCHES["_softmax_fwd_row_kernel"] + LAUNCHES["_softmax_bwd_row_kernel"]
    y, dx, y_r, dx_r = run_both(monkeypatch, x, dy, log)
    assert LAUNCHES["_softmax_fwd_row_kernel"] + LAUNCHES["_softmax_bwd_row_kernel"] == before + 2
    assert y.dtype == np.dtype(dtype) and y.shape == shape and dx.dtype == np.dtype(dtype) and dx.shape == shape
    assert_close(y, y_r, dtype)
    assert_close(y, np_softmax(x_h, log), dtype)
    assert_close(dx, dx_r, dtype)
    # the gradient starts from the stored (rounded) y, so low precision costs a little more
    assert_close(dx, np_softmax_grad(x_h, dy_h, log), dtype, scale=1 if dtype == np.float32 else 2)
    np.testing.assert_array_equal(host(x), x_copy)
    np.testing.assert_array_equal(host(dy), dy_copy)


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("cols", [1, 4, 5, 7, 8, 9, 12, 13, 14, 15, 29, 123])
def test_looped_variant_forced(triton_path, monkeypatch, rng, cols, dtype, log):
    """The online (looped) kernels with a tiny chunk: tails 1..4 below 8 and 16, several chunks."""
    monkeypatch.setattr(sm, "FORCE_LOOP_BLOCK", 8)
    x_h, dy_h = rand(rng, (5, cols), dtype, 3.0), rand(rng, (5, cols), dtype)
    before = LAUNCHES["_softmax_fwd_loop_kernel"] + LAUNCHES["_softmax_bwd_loop_kernel"]
    y, dx, y_r, dx_r = run_both(monkeypatch, dev(x_h), dev(dy_h), log)
    assert LAUNCHES["_softmax_fwd_loop_kernel"] + LAUNCHES["_softmax_bwd_loop_kernel"] == before + 2
    assert_close(y, y_r, dtype)
    assert_close(y, np_softmax(x_h, log), dtype)
    assert_close(dx, dx_r, dtype)
    assert_close(dx, np_softmax_grad(x_h, dy_h, log), dtype, scale=1 if dtype == np.float32 else 2)


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("cols", [60, 61, 62, 63, 64, 65])
def test_row_block_tails(triton_path, monkeypatch, rng, cols, log):
    """One-row kernel: BLOCK = 64 with 1..4 padding lanes, and the next power of two."""
    x_h, dy_h = rand(rng, (3, cols), np.float32), rand(rng, (3, cols), np.float32)
    y, dx, _, _ = run_both(monkeypatch, dev(x_h), dev(dy_h), log)
    assert_close(y, np_softmax(x_h, log), np.float32)
    assert_close(dx, np_softmax_grad(x_h, dy_h, log), np.float32)


def test_long_row_takes_looped_kernel(triton_path, monkeypatch, rng):
    """Rows longer than MAX_FUSED_BYTES go to the looped kernels without forcing."""
    assert sm._config(16384, 4)[0] is False and sm._config(16385, 4)[0] is True
    assert sm._config(32768, 2)[0] is False and sm._config(32769, 2)[0] is True
    monkeypatch.setattr(sm, "LOOP_BLOCK", 1024)
    x_h = rand(rng, (2, 16385 + 3), np.float32, 4.0)
    dy_h = rand(rng, x_h.shape, np.float32)
    before = LAUNCHES["_softmax_fwd_loop_kernel"]
    y, res = sm.softmax_forward(dev(x_h))
    dx = sm.softmax_backward(res, dev(dy_h))
    assert LAUNCHES["_softmax_fwd_loop_kernel"] == before + 1
    assert_close(host(y), np_softmax(x_h, False), np.float32)
    p = np_softmax(x_h, False)
    assert_close(host(dx), p * (dy_h - (dy_h * p).sum(-1, keepdims=True)), np.float32)


@pytest.mark.parametrize("force", [None, 8])
@pytest.mark.parametrize("log", [False, True])
def test_large_logits(triton_path, monkeypatch, rng, log, force):
    monkeypatch.setattr(sm, "FORCE_LOOP_BLOCK", force)
    x_h = rand(rng, (4, 37), np.float32, 1e4)
    x_h[1] = 1e4 + rng.standard_normal(37).astype(np.float32)  # huge, close together
    dy_h = rand(rng, x_h.shape, np.float32)
    y, dx, y_r, dx_r = run_both(monkeypatch, dev(x_h), dev(dy_h), log)
    assert np.isfinite(y).all() and np.isfinite(dx).all()
    assert_close(y, np_softmax(x_h, log), np.float32)
    assert_close(y, y_r, np.float32)
    assert_close(dx, np_softmax_grad(x_h, dy_h, log), np.float32)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("force", [None, 8])
@pytest.mark.parametrize("log", [False, True])
def test_minus_inf_entries_and_masked_rows(triton_path, monkeypatch, rng, log, force):
    """-inf entries get probability 0 (log: -inf); a row of all -inf is NaN, as in PyTorch."""
    monkeypatch.setattr(sm, "FORCE_LOOP_BLOCK", force)
    x_h = rand(rng, (3, 21), np.float32)
    x_h[0, :17] = -np.inf  # first chunks of the looped kernel see only -inf
    x_h[1, ::2] = -np.inf
    x_h[2] = -np.inf
    y, res = sm.softmax_forward(dev(x_h), log=log)
    y = host(y)
    y_r = host(on_reference(monkeypatch, sm.softmax_forward, dev(x_h), log=log)[0])
    assert np.isnan(y[2]).all() and np.isnan(y_r[2]).all()
    assert not np.isnan(y[:2]).any()
    expected = np_softmax(x_h[:2], log)
    np.testing.assert_array_equal(np.isneginf(y[:2]), np.isneginf(expected))
    fin = np.isfinite(expected)
    assert_close(y[:2][fin], expected[fin], np.float32)
    assert_close(y[:2], y_r[:2], np.float32)
    if not log:  # the gradient of softmax is finite where x = -inf (y = 0 there)
        dy_h = rand(rng, x_h.shape, np.float32)
        dx = host(sm.softmax_backward(res, dev(dy_h), log=log))
        assert_close(dx[:2], np_softmax_grad(x_h[:2], dy_h[:2], log), np.float32)


def test_noncontiguous_last_dim(triton_path, monkeypatch, rng):
    base = rand(rng, (9, 5), np.float32)
    x_h = base.T  # (5, 9), last dim strided
    dy_h = rand(rng, (9, 5), np.float32).T
    y, dx, _, _ = run_both(monkeypatch, dev(x_h), dev(dy_h), False)
    assert_close(y, np_softmax(x_h, False), np.float32)
    assert_close(dx, np_softmax_grad(x_h, dy_h, False), np.float32)


def test_empty(triton_path):
    y, res = sm.softmax_forward(dev(np.zeros((0, 5), np.float32)))
    assert y.shape == (0, 5)
    assert sm.softmax_backward(res, dev(np.zeros((0, 5), np.float32))).shape == (0, 5)


@pytest.mark.parametrize("log", [False, True])
def test_reference_gradcheck_float64(reference, rng, log):
    """Central differences in float64 on the reference path agree with softmax_backward."""
    x = rng.standard_normal((3, 7))
    dy = rng.standard_normal((3, 7))
    y, res = sm.softmax_forward(x, log=log)
    assert y.dtype == np.float64
    dx = sm.softmax_backward(res, dy, log=log)
    h, num = 1e-6, np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp_, xm = x.copy(), x.copy()
        xp_[idx] += h
        xm[idx] -= h
        num[idx] = ((sm.softmax_forward(xp_, log=log)[0] - sm.softmax_forward(xm, log=log)[0]) * dy).sum() / (2 * h)
    np.testing.assert_allclose(dx, num, atol=1e-8, rtol=1e-6)
    np.testing.assert_allclose(dx, np_softmax_grad(x, dy, log), atol=1e-12, rtol=1e-10)
    np.testing.assert_allclose(y, np_softmax(x, log), atol=1e-12, rtol=1e-12)


def test_bad_inputs(triton_path):
    with pytest.raises(TypeError, match="int32"):
        sm.softmax_forward(dev(np.zeros((2, 3), np.int32)))
    with pytest.raises(ValueError, match="at least 1 dim"):
        sm.softmax_forward(dev(np.zeros((), np.float32)))
    with pytest.raises(TypeError, match="NumPy or CuPy"):
        sm.softmax_forward([1.0, 2.0])
    y, res = sm.softmax_forward(dev(np.zeros((2, 3), np.float32)))
    with pytest.raises(ValueError, match=r"\(2, 4\).*\(2, 3\)"):
        sm.softmax_backward(res, dev(np.zeros((2, 4), np.float32)))
