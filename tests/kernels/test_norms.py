"""LayerNorm / RMSNorm kernels: Triton (interpreter or GPU) against the reference path and float64 NumPy."""

import ml_dtypes
import numpy as np
import pytest
from devices import ON_GPU, dev, host
from tolerances import TOL, assert_close

from conch.kernels import norms
from conch.kernels._launch import LAUNCHES

BF16 = np.dtype(ml_dtypes.bfloat16)
ON_CUDA = ON_GPU


def ln64(x, w, b, eps):
    """Independent float64 LayerNorm forward and the closed-form gradients of sum(y * dy)."""
    x = x.astype(np.float64).reshape(-1, x.shape[-1])
    mu = x.mean(1, keepdims=True)
    rstd = 1.0 / np.sqrt(((x - mu) ** 2).mean(1, keepdims=True) + eps)
    xhat = (x - mu) * rstd
    w64 = np.ones(x.shape[1]) if w is None else w.astype(np.float64)
    b64 = np.zeros(x.shape[1]) if b is None else b.astype(np.float64)
    return xhat * w64 + b64, xhat, rstd, w64


def rms64(x, w, eps):
    x = x.astype(np.float64).reshape(-1, x.shape[-1])
    rstd = 1.0 / np.sqrt((x**2).mean(1, keepdims=True) + eps)
    w64 = np.ones(x.shape[1]) if w is None else w.astype(np.float64)
    return x * rstd * w64, x * rstd, rstd, w64


def ln_grads64(x, w, dy, eps):
    _, xhat, rstd, w64 = ln64(x, w, None, eps)
    g = dy.astype(np.float64).reshape(xhat.shape)
    wdy = g * w64
    D = xhat.shape[1]
    # written out from d/dx of xhat = (x - mu) / sigma, not from the kernel's formula
    dx = rstd / D * (D * wdy - wdy.sum(1, keepdims=True) - xhat * (wdy * xhat).sum(1, keepdims=True))
    return dx, (g * xhat).sum(0), g.sum(0)


def rms_grads64(x, w, dy, eps):
    _, xhat, rstd, w64 = rms64(x, w, eps)
    g = dy.astype(np.float64).reshape(xhat.shape)
    wdy = g * w64
    D = xhat.shape[1]
    dx = rstd * wdy - xhat * rstd * (wdy * xhat).sum(1, keepdims=True) / D
    return dx, (g * xhat).sum(0)


def make(rng, shape, dtype, affine=True, bias=True):
    D = shape[-1]
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    w = (rng.standard_normal(D) * 0.5 + 1).astype(dtype) if affine else None
    b = rng.standard_normal(D).astype(dtype) if bias else None
    dy = rng.standard_normal(shape).astype(dtype)
    return x, w, b, dy


DS = [1, 7, 33, 123, 128, 129]


@pytest.mark.parametrize("D", DS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16, BF16], ids=["fp32", "fp16", "bf16"])
def test_layer_norm_triton_vs_reference_and_float64(D, dtype, rng, interpret, monkeypatch):
    rows = 37 if D <= 33 else 6  # 37 rows: several row blocks per backward program, and a tail block
    x, w, b, dy = make(rng, (rows, D), dtype)
    xs, dys = x.copy(), dy.copy()
    n0 = LAUNCHES["_norm_fwd_kernel"], LAUNCHES["_norm_bwd_kernel"]
    y, res = norms.layer_norm_forward(dev(x), dev(w), dev(b), eps=1e-5)
    dx, dw, db = norms.layer_norm_backward(res, dev(dy))
    assert (LAUNCHES["_norm_fwd_kernel"], LAUNCHES["_norm_bwd_kernel"]) == (n0[0] + 1, n0[1] + 1)
    assert np.array_equal(x, xs) and np.array_equal(dy, dys), "inputs were mutated"
    assert y.dtype == dtype and dx.dtype == dtype and dw.dtype == dtype and db.dtype == dtype
    assert res.mean.dtype == np.float32 and res.rstd.dtype == np.float32 and res.mean.shape == (rows,)

    y64, _, rstd64, _ = ln64(x, w, b, 1e-5)
    dx64, dw64, db64 = ln_grads64(x, w, dy, 1e-5)
    assert_close(host(y), y64, dtype)
    assert_close(host(res.rstd), rstd64[:, 0], np.float32, scale=10)
    assert_close(host(dx), dx64, dtype, scale=4)
    assert_close(host(dw), dw64, dtype, scale=4)
    assert_close(host(db), db64, dtype, scale=4)

    monkeypatch.setenv("CONCH_KERNELS", "reference")
    yr, resr = norms.layer_norm_forward(dev(x), dev(w), dev(b), eps=1e-5)
    dxr, dwr, dbr = norms.layer_norm_backward(resr, dev(dy))
    for a, r in ((y, yr), (dx, dxr), (dw, dwr), (db, dbr)):
        assert_close(host(a), host(r).astype(np.float64), dtype, scale=2)


@pytest.mark.parametrize("D", DS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16, BF16], ids=["fp32", "fp16", "bf16"])
def test_rms_norm_triton_vs_reference_and_float64(D, dtype, rng, interpret, monkeypatch):
    rows = 37 if D <= 33 else 5
    x, w, _, dy = make(rng, (rows, D), dtype, bias=False)
    n0 = LAUNCHES["_norm_fwd_kernel"], LAUNCHES["_norm_bwd_kernel"]
    y, res = norms.rms_norm_forward(dev(x), dev(w), eps=1e-6)
    dx, dw = norms.rms_norm_backward(res, dev(dy))
    assert (LAUNCHES["_norm_fwd_kernel"], LAUNCHES["_norm_bwd_kernel"]) == (n0[0] + 1, n0[1] + 1)
    assert res.mean is None and res.rstd.dtype == np.float32
    y64, _, _, _ = rms64(x, w, 1e-6)
    dx64, dw64 = rms_grads64(x, w, dy, 1e-6)
    assert_close(host(y), y64, dtype)
    assert_close(host(dx), dx64, dtype, scale=4)
    assert_close(host(dw), dw64, dtype, scale=4)
    monkeypatch.setenv("CONCH_KERNELS", "reference")
    yr, resr = norms.rms_norm_forward(dev(x), dev(w), eps=1e-6)
    dxr, dwr = norms.rms_norm_backward(resr, dev(dy))
    for a, r in ((y, yr), (dx, dxr), (dw, dwr)):
        assert_close(host(a), host(r).astype(np.float64), dtype, scale=2)


@pytest.mark.parametrize("affine,bias", [(False, False), (True, False), (False, True)])
def test_layer_norm_optional_weight_bias(affine, bias, rng, interpret):
    x, w, b, dy = make(rng, (2, 3, 33), np.float32, affine, bias)  # (..., D): batch dims flattened to rows
    y, res = norms.layer_norm_forward(dev(x), dev(w), dev(b))
    dx, dw, db = norms.layer_norm_backward(res, dev(dy))
    assert y.shape == x.shape and dx.shape == x.shape
    assert (dw is None) == (not affine) and (db is None) == (not bias) and res.has_bias == bias
    dx64, dw64, db64 = ln_grads64(x, w, dy, 1e-5)
    assert_close(host(y), ln64(x, w, b, 1e-5)[0].reshape(x.shape), np.float32)
    assert_close(host(dx), dx64.reshape(x.shape), np.float32, scale=4)
    if affine:
        assert_close(host(dw), dw64, np.float32, scale=4)
    if bias:
        assert_close(host(db), db64, np.float32, scale=4)


def test_rms_norm_without_weight_and_batch_dims(rng, interpret):
    x, _, _, dy = make(rng, (3, 4, 7), np.float32, affine=False, bias=False)
    y, res = norms.rms_norm_forward(dev(x))
    dx, dw = norms.rms_norm_backward(res, dev(dy))
    assert dw is None and y.shape == x.shape and dx.shape == x.shape
    assert_close(host(y), rms64(x, None, 1e-6)[0].reshape(x.shape), np.float32)
    assert_close(host(dx), rms_grads64(x, None, dy, 1e-6)[0].reshape(x.shape), np.float32, scale=4)


@pytest.mark.parametrize("rows", [1, 3, 4, 5, 8, 9])  # BLOCK_M is 4 for D=33 under the interpreter: tails
def test_row_block_tails(rows, rng, interpret):
    x, w, b, dy = make(rng, (rows, 33), np.float32)
    y, res = norms.layer_norm_forward(dev(x), dev(w), dev(b))
    dx, dw, db = norms.layer_norm_backward(res, dev(dy))
    dx64, dw64, db64 = ln_grads64(x, w, dy, 1e-5)
    assert_close(host(y), ln64(x, w, b, 1e-5)[0], np.float32)
    assert_close(host(dw), dw64, np.float32, scale=4)
    assert_close(host(db), db64, np.float32, scale=4)


def test_mixed_dtypes_bf16_input_fp32_params(rng, interpret):
    x, _, _, dy = make(rng, (9, 33), BF16, affine=False, bias=False)
    w = rng.standard_normal(33).astype(np.float32)
    b = rng.standard_normal(33).astype(np.float32)
    y, res = norms.layer_norm_forward(dev(x), dev(w), dev(b))
    dx, dw, db = norms.layer_norm_backward(res, dev(dy))
    assert y.dtype == BF16 and dx.dtype == BF16 and dw.dtype == np.float32 and db.dtype == np.float32
    dx64, dw64, db64 = ln_grads64(x, w, dy, 1e-5)
    assert_close(host(y), ln64(x, w, b, 1e-5)[0], BF16)
    assert_close(host(dw), dw64, np.float32, scale=10)


def test_non_contiguous_input(rng, interpret):
    base = rng.standard_normal((33, 6)).astype(np.float32)
    x = base.T  # (6, 33), not C-contiguous
    w = rng.standard_normal(33).astype(np.float32)
    dy = rng.standard_normal((6, 33)).astype(np.float32)
    y, res = norms.layer_norm_forward(dev(x), dev(w))
    dx, dw, _ = norms.layer_norm_backward(res, dev(dy))
    assert_close(host(y), ln64(np.ascontiguousarray(x), w, None, 1e-5)[0], np.float32)
    assert_close(host(dx), ln_grads64(np.ascontiguousarray(x), w, dy, 1e-5)[0], np.float32, scale=4)


def _fd(f, a, eps=1e-6):
    g = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        old = a[i]
        a[i] = old + eps
        fp = f()
        a[i] = old - eps
        fm = f()
        a[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_gradients_by_finite_differences_float64(kind, rng, reference):
    x, w, b, dy = make(rng, (3, 5), np.float64)
    if kind == "layer":

        def loss():
            return float((norms.layer_norm_forward(x, w, b)[0] * dy).sum())

        _, res = norms.layer_norm_forward(x, w, b)
        dx, dw, db = norms.layer_norm_backward(res, dy)
        np.testing.assert_allclose(db, _fd(loss, b), rtol=1e-6, atol=1e-8)
    else:

        def loss():
            return float((norms.rms_norm_forward(x, w)[0] * dy).sum())

        _, res = norms.rms_norm_forward(x, w)
        dx, dw = norms.rms_norm_backward(res, dy)
    assert dx.dtype == np.float64 and res.rstd.dtype == np.float64
    np.testing.assert_allclose(dx, _fd(loss, x), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dw, _fd(loss, w), rtol=1e-6, atol=1e-8)


def test_reference_path_matches_float64(rng, reference):
    x, w, b, dy = make(rng, (7, 123), np.float32)
    y, res = norms.layer_norm_forward(x, w, b)
    dx, dw, db = norms.layer_norm_backward(res, dy)
    assert_close(y, ln64(x, w, b, 1e-5)[0], np.float32)
    for a, e in zip((dx, dw, db), ln_grads64(x, w, dy, 1e-5), strict=True):
        assert_close(a, e, np.float32, scale=4)


def test_bad_inputs_raise_clear_errors():
    x = np.zeros((4, 8), np.float32)
    with pytest.raises(ValueError, match=r"weight must have shape \(8,\).*\(4, 8\).*\(7,\)"):
        norms.layer_norm_forward(x, np.ones(7, np.float32))
    with pytest.raises(ValueError, match=r"bias must have shape \(8,\)"):
        norms.layer_norm_forward(x, None, np.ones((1, 8), np.float32))
    with pytest.raises(ValueError, match="weight must have shape"):
        norms.rms_norm_forward(x, np.ones(9, np.float32))
    with pytest.raises(TypeError, match="int32"):
        norms.layer_norm_forward(x.astype(np.int32))
    with pytest.raises(ValueError, match="non-empty last dimension"):
        norms.rms_norm_forward(np.zeros((4, 0), np.float32))
    _, res = norms.layer_norm_forward(x)
    with pytest.raises(ValueError, match="dy of shape"):
        norms.layer_norm_backward(res, np.zeros((4, 9), np.float32))


def test_tolerance_table_is_tight_enough_to_fail(rng, reference):
    # a wrong eps (1e-1 instead of 1e-5) must be caught by the fp32 tolerance
    x, w, b, _ = make(rng, (4, 7), np.float32)
    y, _ = norms.layer_norm_forward(x * 0.01, w, b, eps=1e-1)
    with pytest.raises(AssertionError):
        assert_close(y, ln64(x * 0.01, w, b, 1e-5)[0], np.float32)
    assert TOL[np.dtype(np.float32)][0] <= 1e-5


def test_layer_norm_row_whose_spread_overflows_is_nan_on_both_paths(triton_path):
    # float32 [3e38, -3e38, 1]: max - min overflows; PyTorch's Welford moments give NaN, and so must the kernel
    # (its two-pass variance alone would give inf, rstd = 0 and finite zeros). The other row stays exact.
    x = np.array([[3e38, -3e38, 1.0], [1.0, 2.0, 3.0]], np.float32)
    y, _ = norms.layer_norm_forward(dev(x), None, None)
    y = host(y)
    assert np.isnan(y[0]).all()
    ref = (x[1] - x[1].mean()) / np.sqrt(x[1].var() + 1e-5)
    np.testing.assert_allclose(y[1], ref, rtol=1e-5, atol=1e-6)
