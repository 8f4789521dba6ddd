"""Elementwise activation kernels: Triton path (interpreter on CPU) against the reference path and float64 NumPy."""

import ml_dtypes
import numpy as np
import pytest
from act_ref64 import ALPHA, SLOPE, df64, f64
from devices import dev, host
from tolerances import TOL, assert_close

from conch.kernels._launch import LAUNCHES
from conch.kernels.activations import activation_backward, activation_forward

BF16 = np.dtype(ml_dtypes.bfloat16)
NAMES = ["relu", "leaky_relu", "elu", "gelu", "gelu_tanh", "silu", "tanh", "sigmoid"]


# ---- independent float64 references: closed forms, derivatives by complex step where f is analytic ----------


def _attrs():
    return {"negative_slope": SLOPE, "alpha": ALPHA}


def _reference(monkeypatch, fn, *args, **kw):
    with monkeypatch.context() as m:
        m.setenv("CONCH_KERNELS", "reference")
        return fn(*args, **kw)


def _data(rng, shape, dtype, scale=3.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


# ---- Triton path ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float16, BF16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("name", NAMES)
def test_forward_backward(interpret, monkeypatch, rng, name, dtype):
    x = _data(rng, (7, 123), dtype)
    dy = _data(rng, (7, 123), dtype, 1.0)
    x0 = x.copy()
    before = LAUNCHES["_act_fwd_kernel"] + LAUNCHES["_act_bwd_kernel"]
    y, res = activation_forward(dev(x), name, **_attrs())
    dx = activation_backward(res, dev(dy))
    assert LAUNCHES["_act_fwd_kernel"] + LAUNCHES["_act_bwd_kernel"] == before + 2
    y, dx = host(y), host(dx)
    assert y.dtype == dtype and dx.dtype == dtype and y.shape == x.shape and dx.shape == x.shape
    np.testing.assert_array_equal(x, x0)  # input untouched

    x64 = x.astype(np.float64)
    assert_close(y, f64(name, x64), dtype)
    if name in ("relu", "tanh", "sigmoid") and dtype != np.float32:
        # these take f' from the saved y, rounded to the storage dtype: check the formula in y itself
        y64 = y.astype(np.float64)
        g = {"relu": (y64 > 0).astype(np.float64), "tanh": 1 - y64**2, "sigmoid": y64 * (1 - y64)}[name]
        assert_close(dx, dy.astype(np.float64) * g, dtype)
    else:
        assert_close(dx, dy.astype(np.float64) * df64(name, x64), dtype, scale=2.0 if dtype != np.float32 else 1.0)

    # reference path: forward on x, backward on the same residuals (the interpreter rounds fp32 -> bf16 toward
    # zero, the GPU and NumPy to nearest: a y one bf16 ulp apart would move tanh' = 1 - y^2 near |y| = 1)
    yr, _ = _reference(monkeypatch, activation_forward, dev(x), name, **_attrs())
    dxr = _reference(monkeypatch, activation_backward, res, dev(dy))
    yr, dxr = host(yr), host(dxr)
    assert_close(y, yr, dtype)
    assert_close(dx, dxr, dtype)


@pytest.mark.parametrize("n", [1, 7, 123, 1020, 1023, 1025, 1151])
def test_odd_sizes_and_block_tails(interpret, rng, n):
    x = _data(rng, (n,), np.float32)
    dy = _data(rng, (n,), np.float32, 1.0)
    y, res = activation_forward(dev(x), "gelu")
    dx = activation_backward(res, dev(dy))
    assert_close(host(y), f64("gelu", x.astype(np.float64)), np.float32)
    assert_close(host(dx), dy * df64("gelu", x.astype(np.float64)), np.float32)


@pytest.mark.parametrize("name", ["silu", "sigmoid"])
def test_non_contiguous(interpret, rng, name):
    big = _data(rng, (9, 40), np.float32)
    x = big[:, ::3].T  # (14, 9), neither C nor F contiguous
    dy = _data(rng, (9, 28), np.float32, 1.0)[:, ::2].T
    assert not x.flags.c_contiguous and not dy.flags.c_contiguous
    y, res = activation_forward(dev(x), name, **_attrs())
    dx = activation_backward(res, dev(dy))
    x64 = x.astype(np.float64)
    assert_close(host(y), f64(name, x64), np.float32)
    assert_close(host(dx), dy * df64(name, x64), np.float32)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_extreme_values_are_finite(interpret):
    x = np.array([-1e4, -88.0, -30.0, -1e-6, 0.0, 1e-6, 30.0, 88.0, 1e4], np.float32)
    for name in NAMES:
        y, res = activation_forward(dev(x), name, **_attrs())
        dx = activation_backward(res, dev(np.ones_like(x)))
        assert np.isfinite(host(y)).all() and np.isfinite(host(dx)).all(), name
        assert_close(host(y), f64(name, x.astype(np.float64)), np.float32)


def test_residuals_hold_output_or_input(interpret, rng):
    x = _data(rng, (5, 3), np.float32)
    for name in ["relu", "tanh", "sigmoid"]:
        y, res = activation_forward(dev(x), name)
        assert res.saved is y
    for name in ["gelu", "silu", "elu", "leaky_relu", "gelu_tanh"]:
        y, res = activation_forward(dev(x), name)
        np.testing.assert_array_equal(host(res.saved), x)


@pytest.mark.parametrize("name", [None, "none"])
def test_identity(interpret, rng, name):
    x = _data(rng, (4, 5), np.float16)
    dy = _data(rng, (4, 5), np.float16)
    y, res = activation_forward(dev(x), name)
    dx = activation_backward(res, dev(dy))
    np.testing.assert_array_equal(host(y), x)
    np.testing.assert_array_equal(host(dx), dy)
    assert host(y) is not x


# ---- reference path ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_reference_float64_against_closed_form_and_finite_differences(reference, rng, name):
    x = rng.standard_normal(200) * 3
    x = x[np.abs(x) > 1e-3]  # away from the kinks of relu/leaky_relu/elu
    dy = rng.standard_normal(x.shape)
    y, res = activation_forward(x, name, **_attrs())
    dx = activation_backward(res, dy)
    assert y.dtype == np.float64 and dx.dtype == np.float64
    np.testing.assert_allclose(y, f64(name, x), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, dy * df64(name, x), rtol=1e-9, atol=1e-12)
    h = 1e-6  # central differences, elementwise (the Jacobian is diagonal)
    fd = (activation_forward(x + h, name, **_attrs())[0] - activation_forward(x - h, name, **_attrs())[0]) / (2 * h)
    np.testing.assert_allclose(dx, dy * fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, BF16], ids=["fp32", "fp16", "bf16"])
def test_reference_low_precision(reference, rng, dtype):
    x = _data(rng, (33,), dtype)
    y, res = activation_forward(x, "gelu_tanh")
    assert y.dtype == dtype
    assert_close(y, f64("gelu_tanh", x.astype(np.float64)), dtype)


# ---- errors --------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(interpret):
    x = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match=r"unknown activation 'swish'.*'relu'.*'gelu_tanh'"):
        activation_forward(x, "swish")
    with pytest.raises(TypeError, match="int32"):
        activation_forward(np.zeros(4, np.int32), "relu")
    _, res = activation_forward(x, "relu")
    with pytest.raises(ValueError, match=r"dy has shape \(5,\), expected the input's shape \(4,\)"):
        activation_backward(res, np.zeros(5, np.float32))


def test_table_has_the_dtypes():
    assert set(TOL) >= {np.dtype(np.float32), np.dtype(np.float16), BF16}


# ---- relu's backward selects: an inf or NaN upstream gradient where the unit is off gives 0 (PyTorch) -------


def _bad_upstream(shape):
    dy = np.ones(shape, np.float32)
    dy.ravel()[0::3] = np.nan
    dy.ravel()[1::3] = np.inf
    return dy


@pytest.fixture(params=["triton", "reference"])
def either_path(request, monkeypatch):
    """The Triton kernels (interpreted) or the reference path, for this test."""
    if request.param == "triton":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("CONCH_KERNELS", "auto" if request.param == "triton" else "reference")


def test_relu_backward_drops_nonfinite_upstream_where_off(either_path, rng):
    x = _data(rng, (5, 37), np.float32)
    dy = _bad_upstream(x.shape)
    _, res = activation_forward(x, "relu")
    dx = host(activation_backward(res, dy))
    want = np.where(x > 0, dy, np.float32(0))  # PyTorch's threshold_backward
    np.testing.assert_array_equal(dx, want)


def test_linear_relu_backward_drops_nonfinite_upstream_where_off(either_path, rng):
    from conch.kernels.matmul import matmul_backward, matmul_forward

    a, b, bias = _data(rng, (9, 16), np.float32), _data(rng, (16, 8), np.float32), _data(rng, (8,), np.float32)
    out, res = matmul_forward(a, b, bias, "relu", allow_tf32=False)
    z = a.astype(np.float64) @ b + bias
    dout = _bad_upstream(z.shape)
    dout[z > 0] = 1.0  # non-finite values only where the unit is off: every gradient must stay finite
    da, db, dbias = (host(g) for g in matmul_backward(res, dout))
    dz = np.where(z > 0, dout, 0.0)
    np.testing.assert_allclose(da, dz @ b.T.astype(np.float64), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(db, a.T.astype(np.float64) @ dz, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dbias, dz.sum(0), rtol=1e-4, atol=1e-4)
