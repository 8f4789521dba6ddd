"""Matmul with fused bias + activation: Triton path (interpreter on CPU) against float64 NumPy and the reference."""

import math

import ml_dtypes
import numpy as np
import pytest
from act_ref64 import ALPHA, SLOPE, df64, f64
from devices import dev, host
from tolerances import MATMUL_TOL, assert_close

from conch.kernels import matmul as mm
from conch.kernels._cupy import is_cupy_array
from conch.kernels._launch import LAUNCHES
from conch.kernels.matmul import matmul_backward, matmul_forward

BF16 = np.dtype(ml_dtypes.bfloat16)
NAMES = [None, "relu", "leaky_relu", "elu", "gelu", "gelu_tanh", "silu", "tanh", "sigmoid"]


# ---- independent float64 reference ---------------------------------------------------------------------------


def _sum_to(x, shape):
    while x.ndim > len(shape):
        x = x.sum(axis=0)
    for i, s in enumerate(shape):
        if s == 1 and x.shape[i] != 1:
            x = x.sum(axis=i, keepdims=True)
    return x


def np_matmul64(a, b, bias, act, dout):
    """out, da, db, dbias in float64 by the textbook formulas, for 1-D and broadcast operands."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    z = np.matmul(a64, b64) + (0 if bias is None else bias.astype(np.float64))
    out = f64(act, z)
    dz = dout.astype(np.float64) * df64(act, z)
    a2 = a64[None] if a.ndim == 1 else a64
    b2 = b64[:, None] if b.ndim == 1 else b64
    batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    dz2 = dz.reshape(batch + (a2.shape[-2], b2.shape[-1]))
    da = _sum_to(dz2 @ np.swapaxes(b2, -1, -2), a2.shape).reshape(a.shape)
    db = _sum_to(np.swapaxes(a2, -1, -2) @ dz2, b2.shape).reshape(b.shape)
    dbias = None if bias is None else dz2.reshape(-1, dz2.shape[-1]).sum(0).reshape(bias.shape)
    return out, da, db, dbias


def _rand(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def _problem(rng, ashape, bshape, dtype, bias=True):
    k = ashape[-1]
    a = _rand(rng, ashape, dtype, 1 / math.sqrt(k))  # keeps z ~ N(0, 1): every activation in its curved range
    b = _rand(rng, bshape, dtype)
    n = 1 if len(bshape) == 1 else bshape[-1]
    bi = _rand(rng, (n,), dtype, 0.5) if bias and len(bshape) > 1 else None
    return a, b, bi


def run_both(a, b, bias, act, dout, **kw):
    """Forward + backward on the test device, results on the host."""
    out, res = matmul_forward(dev(a), dev(b), dev(bias), act, negative_slope=SLOPE, alpha=ALPHA, **kw)
    grads = matmul_backward(res, dev(dout))
    return host(out), [host(g) for g in grads]


def check(a, b, bias, act, dout, dtype, scale=1.0, **kw):
    out, (da, db, dbias) = run_both(a, b, bias, act, dout, **kw)
    eo, eda, edb, edbias = np_matmul64(a, b, bias, act, dout)
    assert out.dtype == dtype and da.dtype == dtype and db.dtype == dtype
    assert_close(out, eo, dtype, MATMUL_TOL, scale)
    assert_close(da, eda, dtype, MATMUL_TOL, scale)
    assert_close(db, edb, dtype, MATMUL_TOL, scale)
    if bias is None:
        assert dbias is None
    else:
        assert dbias.dtype == dtype
        assert_close(dbias, edbias, dtype, MATMUL_TOL, scale * max(1.0, math.sqrt(eo.size / edbias.size) / 4))
    return out, da, db, dbias


def _reference(monkeypatch, fn, *args, **kw):
    with monkeypatch.context() as m:
        m.setenv("CONCH_KERNELS", "reference")
        return fn(*args, **kw)


# ---- Triton path: shapes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "m,n,k",
    [(1, 1, 1), (7, 33, 65), (64, 64, 64), (65, 7, 33), (33, 65, 1), (31, 30, 29), (1, 64, 7), (64, 1, 65)],
)
def test_shapes_fp32(interpret, monkeypatch, rng, m, n, k):
    act = "gelu" if (m + n) % 2 else None
    a, b, bias = _problem(rng, (m, k), (k, n), np.float32, bias=(m != 1))
    dout = _rand(rng, (m, n), np.float32)
    a0, b0 = a.copy(), b.copy()
    before = LAUNCHES["_matmul_kernel"]
    out, da, db, _ = check(a, b, bias, act, dout, np.float32)
    launched = LAUNCHES["_matmul_kernel"] - before  # forward, dA, dB all ran on the Triton path
    assert launched == 3 or (is_cupy_array(dev(a)) and launched > 3)  # on a GPU, autotuning launches more
    np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(b, b0)
    # against the reference path too
    ro, rres = _reference(monkeypatch, matmul_forward, a, b, bias, act)
    rda, rdb, _ = _reference(monkeypatch, matmul_backward, rres, dout)
    assert_close(out, ro, np.float32, MATMUL_TOL)
    assert_close(da, rda, np.float32, MATMUL_TOL)
    assert_close(db, rdb, np.float32, MATMUL_TOL)


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("act", NAMES)
def test_every_activation_fused(interpret, rng, act, with_bias):
    a, b, bias = _problem(rng, (33, 31), (31, 29), np.float32, bias=with_bias)
    dout = _rand(rng, (33, 29), np.float32)
    check(a, b, bias, act, dout, np.float32)


@pytest.mark.parametrize("policy", ["fused", "unfused"])
@pytest.mark.parametrize("act", NAMES[1:])
def test_act_grad_fused_in_loads_or_elementwise(interpret, monkeypatch, rng, act, policy):
    # both backward strategies for every activation: act' in the dOut tile loads, or one elementwise dZ pass
    monkeypatch.setattr(mm, "FUSE_IN_LOADS", frozenset(NAMES[1:]) if policy == "fused" else frozenset())
    before = LAUNCHES["_act_bwd_kernel"]
    a, b, bias = _problem(rng, (37, 35), (35, 33), np.float32)
    check(a, b, bias, act, _rand(rng, (37, 33), np.float32), np.float32)
    assert LAUNCHES["_act_bwd_kernel"] == before + (policy == "unfused")


@pytest.mark.parametrize("act", [None, "relu", "gelu", "sigmoid", "silu"])
@pytest.mark.parametrize("dtype", [np.float16, BF16], ids=["fp16", "bf16"])
def test_low_precision(interpret, monkeypatch, rng, dtype, act):
    a, b, bias = _problem(rng, (33, 40), (40, 31), dtype)
    dout = _rand(rng, (33, 31), dtype)
    out, da, db, dbias = check(a, b, bias, act, dout, dtype)
    ro, rres = _reference(monkeypatch, matmul_forward, a, b, bias, act, negative_slope=SLOPE, alpha=ALPHA)
    assert_close(out, ro, dtype, MATMUL_TOL)


@pytest.mark.parametrize(
    "ashape,bshape",
    [
        ((2, 3, 7, 5), (5, 9)),  # b broadcast: folded into one (42, 5) @ (5, 9)
        ((7, 5), (2, 5, 9)),  # a broadcast: dA sums over the batch inside the kernel
        ((2, 1, 7, 5), (3, 5, 9)),  # both broadcast along different dims
        ((2, 3, 7, 5), (2, 3, 5, 9)),  # full batch
        ((4, 7, 5), (1, 5, 9)),  # size-1 batch dim on b
        ((1, 33, 35), (3, 35, 2)),
    ],
)
def test_batched_and_broadcast(interpret, rng, ashape, bshape):
    a, b, bias = _problem(rng, ashape, bshape, np.float32)
    out_shape = np.broadcast_shapes(ashape[:-2], bshape[:-2]) + (ashape[-2], bshape[-1])
    dout = _rand(rng, out_shape, np.float32)
    out, *_ = check(a, b, bias, "silu", dout, np.float32)
    assert out.shape == out_shape


@pytest.mark.parametrize(
    "ashape,bshape",
    [((5,), (5, 9)), ((7, 5), (5,)), ((5,), (5,)), ((2, 3, 7, 5), (5,)), ((5,), (2, 5, 9)), ((33,), (33, 1))],
)
def test_one_dimensional(interpret, rng, ashape, bshape):
    a, b, bias = _problem(rng, ashape, bshape, np.float32)
    expected_shape = np.matmul(np.zeros(ashape), np.zeros(bshape)).shape
    dout = _rand(rng, expected_shape, np.float32)
    out, da, db, _ = check(a, b, bias, "tanh", dout, np.float32)
    assert out.shape == expected_shape and da.shape == a.shape and db.shape == b.shape


def test_one_dimensional_b_with_scalar_bias(interpret, rng):
    a = _rand(rng, (7, 5), np.float32)
    b = _rand(rng, (5,), np.float32)
    bias = np.array([0.25], np.float32)
    dout = _rand(rng, (7,), np.float32)
    out, (da, db, dbias) = run_both(a, b, bias, "relu", dout)
    eo, eda, edb, edbias = np_matmul64(a, b, bias, "relu", dout)
    assert_close(out, eo, np.float32, MATMUL_TOL)
    assert_close(dbias, edbias, np.float32, MATMUL_TOL)


def test_transposed_and_strided_inputs(interpret, rng):
    # a and b as transposed views (column-major), dout and a batched a with per-matrix transposes and steps
    a = _rand(rng, (35, 33), np.float32).T  # (33, 35), F-ordered
    b = _rand(rng, (31, 35), np.float32).T[:, ::1]  # (35, 31)
    bias = _rand(rng, (31,), np.float32)
    dout = _rand(rng, (31, 66), np.float32).T[::2]  # (33, 31), strided
    assert not a.flags.c_contiguous and not b.flags.c_contiguous and not dout.flags.c_contiguous
    check(a, b, bias, "gelu_tanh", dout, np.float32)

    ab = np.swapaxes(_rand(rng, (2, 3, 5, 7), np.float32), -1, -2)  # (2, 3, 7, 5): batch dims cannot fold
    bb = _rand(rng, (9, 10), np.float32)[:5, ::1][:, :9]  # (5, 9) row-strided slice
    d2 = _rand(rng, (2, 3, 7, 9), np.float32)
    check(ab, bb, _rand(rng, (9,), np.float32), "elu", d2, np.float32)


@pytest.mark.parametrize("ashape", [(7, 40), (2, 3, 7, 40)], ids=["2d", "batched"])
def test_needs_input_grad(interpret, rng, ashape):
    # K = 40 > one 32 block: dbias must be counted once across the tile rows/columns of the dA and dB kernels
    a, b, bias = _problem(rng, ashape, (40, 9), np.float32)
    if a.ndim > 2:
        a = np.swapaxes(np.ascontiguousarray(np.swapaxes(a, -1, -2)), -1, -2)  # not foldable: dB sums batches
    dout = _rand(rng, ashape[:-1] + (9,), np.float32)
    _, eda, edb, edbias = np_matmul64(a, b, bias, "gelu", dout)
    out, res = matmul_forward(dev(a), dev(b), dev(bias), "gelu")
    da, db, dbias = matmul_backward(res, dev(dout), needs_input_grad=(False, True, False))
    assert da is None and dbias is None
    assert_close(host(db), edb, np.float32, MATMUL_TOL)
    da, db, dbias = matmul_backward(res, dev(dout), needs_input_grad=(True, False, True))
    assert db is None
    assert_close(host(da), eda, np.float32, MATMUL_TOL)
    assert_close(host(dbias), edbias, np.float32, MATMUL_TOL)
    da, db, dbias = matmul_backward(res, dev(dout), needs_input_grad=(False, True, True))
    assert da is None
    assert_close(host(db), edb, np.float32, MATMUL_TOL)
    assert_close(host(dbias), edbias, np.float32, MATMUL_TOL)
    da, db, dbias = matmul_backward(res, dev(dout), needs_input_grad=(False, False, True))
    assert da is None and db is None
    assert_close(host(dbias), edbias, np.float32, MATMUL_TOL)


def test_residuals(interpret, rng):
    a, b, bias = _problem(rng, (7, 5), (5, 9), np.float16)
    out, res = matmul_forward(dev(a), dev(b), dev(bias), None)
    assert res.r is None  # identity: nothing extra saved
    out, res = matmul_forward(dev(a), dev(b), dev(bias), "sigmoid")
    assert res.r is out  # sigmoid' from the output
    out, res = matmul_forward(dev(a), dev(b), dev(bias), "gelu")
    z = host(res.r)  # gelu' needs the pre-activation, saved in the output dtype
    assert z.dtype == np.float16 and z.shape == (7, 9)
    ez = a.astype(np.float64) @ b.astype(np.float64) + bias.astype(np.float64)
    assert_close(z, ez, np.float16, MATMUL_TOL)


def test_allow_tf32_false(interpret, rng):
    a, b, bias = _problem(rng, (9, 17), (17, 5), np.float32)
    check(a, b, bias, "relu", _rand(rng, (9, 5), np.float32), np.float32, allow_tf32=False)


def test_empty_dims(interpret, rng):
    a = np.zeros((0, 5), np.float32)
    b = _rand(rng, (5, 3), np.float32)
    bias = np.ones(3, np.float32)
    out, (da, db, dbias) = run_both(a, b, bias, "relu", np.zeros((0, 3), np.float32))
    assert out.shape == (0, 3) and da.shape == (0, 5)
    np.testing.assert_array_equal(db, 0)
    np.testing.assert_array_equal(dbias, 0)
    # K = 0: out = act(bias)
    out, _ = matmul_forward(dev(np.zeros((2, 0), np.float32)), dev(np.zeros((0, 3), np.float32)), dev(bias), "relu")
    np.testing.assert_array_equal(host(out), np.ones((2, 3)))


# ---- reference path ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("act", NAMES)
def test_reference_float64_finite_differences(reference, rng, act):
    a = rng.standard_normal((2, 3, 4))
    b = rng.standard_normal((4, 5))
    bias = rng.standard_normal(5)
    g = rng.standard_normal((2, 3, 5))
    out, res = matmul_forward(a, b, bias, act, negative_slope=SLOPE, alpha=ALPHA)
    da, db, dbias = matmul_backward(res, g)
    eo, eda, edb, edbias = np_matmul64(a, b, bias, act, g)
    for got, want in ((out, eo), (da, eda), (db, edb), (dbias, edbias)):
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)

    def loss(a_, b_, c_):
        return float((matmul_forward(a_, b_, c_, act, negative_slope=SLOPE, alpha=ALPHA)[0] * g).sum())

    h = 1e-6
    for x, grad in ((a, da), (b, db), (bias, dbias)):
        fd = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            keep = x[i]
            x[i] = keep + h
            up = loss(a, b, bias)
            x[i] = keep - h
            down = loss(a, b, bias)
            x[i] = keep
            fd[i] = (up - down) / (2 * h)
        np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("ashape,bshape", [((2, 1, 3, 4), (3, 4, 2)), ((4,), (2, 4, 3)), ((3, 4), (4,))])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16, BF16], ids=["fp64", "fp32", "fp16", "bf16"])
def test_reference_against_numpy(reference, rng, dtype, ashape, bshape):
    a, b, bias = _problem(rng, ashape, bshape, dtype)
    out_shape = np.matmul(np.zeros(ashape), np.zeros(bshape)).shape
    dout = _rand(rng, out_shape, dtype)
    if np.dtype(dtype) == np.float64:
        out, res = matmul_forward(a, b, bias, "gelu")
        grads = matmul_backward(res, dout)
        for got, want in zip((out, *grads), np_matmul64(a, b, bias, "gelu", dout), strict=True):
            if want is not None:
                np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    else:
        check(a, b, bias, "gelu", dout, dtype)


def test_float64_on_triton_path_falls_back(interpret, rng):
    a, b, bias = _problem(rng, (7, 5), (5, 3), np.float64)
    before = LAUNCHES["_matmul_kernel"]
    out, _ = matmul_forward(a, b, bias, "silu")
    assert LAUNCHES["_matmul_kernel"] == before
    np.testing.assert_allclose(out, np_matmul64(a, b, bias, "silu", np.zeros((7, 3)))[0], rtol=1e-12)


# ---- errors --------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(interpret):
    f32 = np.float32
    with pytest.raises(ValueError, match=r"a\(3, 4\) has K=4, b\(5, 6\) has K=5"):
        matmul_forward(np.zeros((3, 4), f32), np.zeros((5, 6), f32))
    with pytest.raises(TypeError, match="a.dtype=float32 and b.dtype=float16"):
        matmul_forward(np.zeros((3, 4), f32), np.zeros((4, 6), np.float16))
    with pytest.raises(TypeError, match="int64"):
        matmul_forward(np.zeros((3, 4), np.int64), np.zeros((4, 6), np.int64))
    with pytest.raises(ValueError, match=r"bias must have shape \(6,\).*got \(5,\)"):
        matmul_forward(np.zeros((3, 4), f32), np.zeros((4, 6), f32), np.zeros(5, f32))
    with pytest.raises(TypeError, match="bias.dtype=float16"):
        matmul_forward(np.zeros((3, 4), f32), np.zeros((4, 6), f32), np.zeros(6, np.float16))
    with pytest.raises(ValueError, match=r"unknown activation 'swish'.*'gelu_tanh'"):
        matmul_forward(np.zeros((3, 4), f32), np.zeros((4, 6), f32), activation="swish")
    with pytest.raises(ValueError, match="do not broadcast"):
        matmul_forward(np.zeros((2, 3, 4), f32), np.zeros((3, 4, 6), f32))
    with pytest.raises(ValueError, match="at least 1 dimension"):
        matmul_forward(np.zeros((), f32), np.zeros((4, 6), f32))
    _, res = matmul_forward(np.zeros((3, 4), f32), np.zeros((4, 6), f32))
    with pytest.raises(ValueError, match=r"dout has shape \(6, 3\), expected the output's shape \(3, 6\)"):
        matmul_backward(res, np.zeros((6, 3), f32))
