"""The compiled CPU activations (kernels/_numba/act.py) and the NumPy reference path, against float64 closed forms.

Most tests run once per CPU path (the ``cpu_path`` fixture: "numba", "numpy"); the tests of the compiled path
alone (its kernel is really called, its chunking, its agreement with the NumPy path) skip without Numba.
"""

import math

import ml_dtypes
import numpy as np
import pytest
from act_ref64 import ALPHA, SLOPE, df64, f64
from tolerances import TOL, assert_close

from conch.kernels import _act, _erf, _jit, _threads
from conch.kernels.activations import activation_backward, activation_forward
from conch.kernels.matmul import matmul_backward, matmul_forward

NAMES = ["relu", "leaky_relu", "elu", "gelu", "gelu_tanh", "silu", "tanh", "sigmoid"]
BF16 = np.dtype(ml_dtypes.bfloat16)

#: (atol, rtol) of either CPU path against the float64 value of the same input: float32 within a few ulps of
#: O(1) values (the rational erf is good to 5e-7, Cephes' exp and tanh to ~2 ulps), float64 within ~10 ulps.
EXACT_TOL = {np.dtype(np.float32): (2e-6, 4e-6), np.dtype(np.float64): (1e-13, 1e-13)}
#: gelu_tanh's f' where tanh saturates (z < -3): ½(1 + t) and the second term cancel to ~1e-6 of ulp(1) noise
#: times ~10, in float32 on both paths (PyTorch's too); a wider atol there.
TANH_CANCEL_TOL = {np.dtype(np.float32): (2e-5, 4e-6), np.dtype(np.float64): (1e-13, 1e-13)}

#: (atol, rtol) of the compiled path against the NumPy path: both approximate the same function in float32
#: (different exp/tanh; FMA contraction), so a few ulps; float64: libm against NumPy's/SciPy's, ~2 ulps each.
PATHS_TOL = {np.dtype(np.float32): (1e-6, 2e-6), np.dtype(np.float64): (1e-14, 1e-14)}

_exact_erf = np.vectorize(math.erf, otypes=[np.float64])


def _param(name):
    return SLOPE if name == "leaky_relu" else ALPHA


def _close(actual, expected, table, what=""):
    atol, rtol = table[np.dtype(actual.dtype)]
    np.testing.assert_allclose(actual.astype(np.float64), expected, atol=atol, rtol=rtol, err_msg=what)


def _x(n, dtype, seed=0):
    """n values over the activations' interesting range (|x| up to ~12: tails, saturation), not in order."""
    return (np.random.default_rng(seed).standard_normal(n) * 4).astype(dtype)


@pytest.fixture
def numba_only():
    if not _jit._probe():
        pytest.skip("Numba is not importable here or CONCH_NUMBA=0: the compiled kernels do not run")
    prev = _jit.set_enabled(True)
    yield _jit.family("act")
    _jit.set_enabled(prev)


# ---- both CPU paths against float64 ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("n", [1, 7, 64, 1023, 4096 + 5])
@pytest.mark.parametrize("name", NAMES)
def test_forward_grad_backward_against_float64(cpu_path, name, n, dtype):
    x = _x(n, dtype)
    d = _x(n, dtype, seed=1) / 4
    x0 = x.copy()
    p = _param(name)
    x64, d64 = x.astype(np.float64), d.astype(np.float64)
    y = _act.act_ref(x, name, p)
    g = _act.act_grad_ref(x, name, p)
    assert y.dtype == dtype and g.dtype == dtype and y.shape == x.shape
    _close(y, f64(name, x64), EXACT_TOL, "f")
    tol = TANH_CANCEL_TOL if name == "gelu_tanh" else EXACT_TOL
    _close(g, df64(name, x64), tol, "f'")
    s = y if name in _act.FROM_OUTPUT else x  # relu/tanh/sigmoid: f' from the output y, as the forward saves it
    _close(_act.act_backward_ref(s, d, name, p), d64 * df64(name, x64), tol, "dy f'")
    np.testing.assert_array_equal(x, x0)  # inputs untouched


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name", NAMES)
def test_non_contiguous_and_shapes(cpu_path, name, dtype):
    base = _x(2 * 33 * 17, dtype).reshape(66, 17)
    d = _x(33 * 17, dtype, seed=1).reshape(17, 33).T  # transposed: F-ordered
    x = base[::2]  # every other row: strided
    p = _param(name)
    xc, dc = np.ascontiguousarray(x), np.ascontiguousarray(d)
    np.testing.assert_array_equal(_act.act_ref(x, name, p), _act.act_ref(xc, name, p))
    np.testing.assert_array_equal(_act.act_grad_ref(x, name, p), _act.act_grad_ref(xc, name, p))
    s = _act.act_ref(x, name, p) if name in _act.FROM_OUTPUT else x
    got = _act.act_backward_ref(s[...], d, name, p)
    assert got.shape == x.shape
    np.testing.assert_array_equal(got, _act.act_backward_ref(np.ascontiguousarray(s), dc, name, p))
    tol = TANH_CANCEL_TOL if name == "gelu_tanh" else EXACT_TOL
    _close(got, d.astype(np.float64) * df64(name, x.astype(np.float64)), tol)
    # 0-d and empty arrays keep their shapes
    assert _act.act_ref(x[0, 0].reshape(()), name, p).shape == ()
    assert _act.act_grad_ref(x[:0], name, p).shape == (0, 17)
    assert _act.act_backward_ref(x[:0], d[:0], name, p).shape == (0, 17)


# Limits at ±inf (float64 closed forms); NaN gives NaN everywhere. gelu(-inf) = -inf · 0 is NaN, as in PyTorch.
_AT_INF = {
    "relu": (np.inf, 0.0), "leaky_relu": (np.inf, -np.inf), "elu": (np.inf, -ALPHA), "gelu": (np.inf, np.nan),
    "gelu_tanh": (np.inf, np.nan), "silu": (np.inf, np.nan), "tanh": (1.0, -1.0), "sigmoid": (1.0, 0.0),
}  # fmt: skip
_GRAD_AT_INF = {
    "relu": (1.0, 0.0), "leaky_relu": (1.0, SLOPE), "elu": (1.0, 0.0), "tanh": (0.0, 0.0), "sigmoid": (0.0, 0.0),
}  # fmt: skip


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # NumPy's inf * 0 on the NumPy path
def test_nan_and_inf(cpu_path, name, dtype):
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], dtype)
    p = _param(name)
    y = _act.act_ref(x, name, p)
    assert np.isnan(y[0])
    np.testing.assert_array_equal(y[1:3], np.array(_AT_INF[name], dtype))
    assert (y[3:] == (0.5 if name == "sigmoid" else 0)).all()
    if name == "relu":  # maximum(z, 0): +0.0 for -0.0, as np.maximum and PyTorch
        assert not np.signbit(y[4])
    g = _act.act_grad_ref(x, name, p)
    if name not in ("relu", "leaky_relu"):  # those two compare z > 0: NaN takes the "off" branch, as NumPy's
        assert np.isnan(g[0])
    if name in _GRAD_AT_INF:
        np.testing.assert_array_equal(g[1:3], np.array(_GRAD_AT_INF[name], dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["fp32", "fp64"])
def test_relu_backward_selects(cpu_path, dtype):
    # an inf or NaN upstream gradient where the unit is off gives +0 (PyTorch's threshold_backward), not NaN
    s = np.array([-1.0, 0.0, np.nan, -np.inf, 2.0, 3.0, 1e-30, -0.0], dtype)
    d = np.array([np.inf, np.nan, np.inf, np.nan, np.inf, np.nan, -2.0, -np.inf], dtype)
    want = np.array([0, 0, 0, 0, np.inf, np.nan, -2.0, 0], dtype)
    for got in (_act.relu_select(s, d), _act.act_backward_ref(s, d, "relu")):
        np.testing.assert_array_equal(got, want)
        assert not np.signbit(got[[0, 1, 2, 3, 7]]).any()


def test_large_and_tiny_arguments(cpu_path):
    """exp's whole range: subnormal results (e^z below 2^-126), underflow to 0, overflow inside tanh."""
    z = np.concatenate([-np.logspace(-8, np.log10(110), 4001), np.logspace(-8, np.log10(100), 2001)])
    z32 = z.astype(np.float32)
    z64 = z32.astype(np.float64)
    # elu' = alpha e^z for z <= 0: e^z to ~2 ulps, subnormals to 1 ulp of the smallest normal's spacing
    g = _act.act_grad_ref(z32, "elu", 1.0).astype(np.float64)
    neg = z64 <= 0
    want = np.exp(z64[neg])
    np.testing.assert_allclose(g[neg], want, rtol=3e-7, atol=2 * 2.0**-149)
    sig = _act.act_ref(z32, "sigmoid").astype(np.float64)
    np.testing.assert_allclose(sig, 1 / (1 + np.exp(-z64)), rtol=4e-7, atol=2 * 2.0**-149)
    t = _act.act_ref(z32, "tanh").astype(np.float64)
    np.testing.assert_allclose(t, np.tanh(z64), rtol=4e-7, atol=1e-45)
    e = _act.act_ref(z32, "elu", 1.0).astype(np.float64)  # e^z - 1: exact near 0, where it would cancel
    np.testing.assert_allclose(e[neg], np.expm1(z64[neg]), rtol=4e-7)


# ---- half precision through the public pair: float32 math, one rounding --------------------------------------


@pytest.mark.parametrize("dtype", [np.float16, BF16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("name", NAMES)
def test_half_precision_pair(cpu_path, name, dtype):
    x = _x(1031, np.float32).astype(dtype)
    dy = (_x(1031, np.float32, seed=1) / 4).astype(dtype)
    p = {"negative_slope": SLOPE, "alpha": ALPHA}
    y, res = activation_forward(x, name, **p)
    dx = activation_backward(res, dy)
    assert y.dtype == dtype and dx.dtype == dtype
    x64 = x.astype(np.float64)
    assert_close(y, f64(name, x64), dtype)
    if name in _act.FROM_OUTPUT:  # f' from the rounded output
        y64 = y.astype(np.float64)
        gy = {"relu": (y64 > 0).astype(np.float64), "tanh": 1 - y64**2, "sigmoid": y64 * (1 - y64)}[name]
        assert_close(dx, dy.astype(np.float64) * gy, dtype)
    else:
        assert_close(dx, dy.astype(np.float64) * df64(name, x64), dtype, scale=2.0)


# ---- erf ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 31, 1024, 60001])
def test_erf_against_math_erf(cpu_path, n):
    x = np.concatenate([np.linspace(-6, 6, n), [np.inf, -np.inf, 0.0]])
    got32 = _erf.erf(x.astype(np.float32)[::-1])[::-1]  # a negative stride
    want = _exact_erf(x.astype(np.float32).astype(np.float64))
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32.astype(np.float64), want, atol=6e-7, rtol=0)
    got64 = _erf.erf(x)
    ulps = np.abs(got64 - _exact_erf(x)) / np.spacing(np.abs(_exact_erf(x)))
    assert ulps.max() <= 4, f"max {ulps.max()} ulps at x={x[ulps.argmax()]}"
    assert np.isnan(_erf.erf(np.array([np.nan], np.float32))[0]) and np.isnan(_erf.erf(np.array([np.nan]))[0])


# ---- matmul's epilogue: bias + activation in one pass over the product -----------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name", [None, "relu", "gelu", "tanh", "silu", "leaky_relu"])
@pytest.mark.parametrize("shapes", [((13, 7), (7, 5), (5,)), ((3, 4, 7), (7, 6), (6,)), ((13, 7), (7,), ()),
                                    ((2, 5, 7), (2, 7, 3), None)], ids=["2d", "fold", "vec", "batched"])  # fmt: skip
def test_matmul_epilogue(cpu_path, name, dtype, shapes):
    rng = np.random.default_rng(3)
    sa, sb, sbias = shapes
    a, b = rng.standard_normal(sa).astype(dtype), rng.standard_normal(sb).astype(dtype)
    bias = None if sbias is None else rng.standard_normal(sbias).astype(dtype)
    out, res = matmul_forward(a, b, bias, name, negative_slope=SLOPE, alpha=ALPHA)
    z64 = np.matmul(a.astype(np.float64), b.astype(np.float64)) + (0 if bias is None else bias.astype(np.float64))
    tol = {np.dtype(np.float32): (1e-5, 1e-5), np.dtype(np.float64): (1e-12, 1e-12)}
    assert out.dtype == dtype and out.shape == z64.shape
    _close(out, f64(name, z64), tol)
    if name is not None and name not in _act.FROM_OUTPUT:
        # the compiled epilogue keeps act'(Z) for the activations whose derivative costs an exp/erf/tanh
        assert res.r_is_grad == (cpu_path == "numba" and name in ("gelu", "silu"))
        want_r = df64(name, z64) if res.r_is_grad else z64
        _close(res.r.reshape(z64.shape), want_r, tol, "the saved pre-activation (or its act') holds the bias")
    dout = rng.standard_normal(out.shape).astype(dtype)
    da, db, dbias = matmul_backward(res, dout)
    dz = dout.astype(np.float64) * df64(name, z64)
    bt = b.astype(np.float64)
    if b.ndim == 1:
        _close(da, np.outer(dz, bt), tol)
    else:
        want_da = np.matmul(dz, np.swapaxes(bt, -1, -2))
        _close(da, want_da.sum(axis=0) if a.ndim < want_da.ndim else want_da, tol)
    a64 = a.astype(np.float64)
    if b.ndim == 1:
        want_db = a64.T @ dz
    else:
        want_db = np.matmul(np.swapaxes(a64, -1, -2), dz)
        want_db = want_db if b.ndim == 3 else want_db.reshape(-1, *b.shape).sum(axis=0)
    _close(db, want_db, tol)
    if bias is not None:
        _close(dbias, dz.reshape(-1, bias.size).sum(axis=0).reshape(bias.shape), tol)


# ---- the compiled path alone ------------------------------------------------------------------------------------


def test_compiled_kernel_is_called(numba_only, monkeypatch):
    """Every entry point reaches the compiled kernel (counted), so the NumPy path cannot stand in silently."""
    calls = []
    real = numba_only.kernel
    monkeypatch.setattr(numba_only, "kernel", lambda *a: (calls.append(a[0]), real(*a))[1])
    x, d = _x(100, np.float32), _x(100, np.float32, seed=1)
    _act.act_ref(x, "gelu")
    _act.act_grad_ref(x, "silu")
    _act.act_backward_ref(x, d, "gelu")
    _act.act_backward_ref(np.tanh(x), d, "tanh")
    _act.relu_select(x, d)
    _erf.erf(x)
    matmul_forward(x.reshape(10, 10), x.reshape(10, 10), x[:10], "gelu")  # keeps act'(Z): BIAS_DERIV
    matmul_forward(x.reshape(10, 10), x.reshape(10, 10), x[:10], "leaky_relu")  # keeps Z: BIAS_FORWARD
    matmul_forward(x.reshape(10, 10), x.reshape(10, 10), x[:10], "relu")  # keeps the output: BIAS_INPLACE
    k = numba_only
    assert calls == [k.FORWARD, k.GRAD, k.BACKWARD, k.BACKWARD_OUT, k.BACKWARD, k.ERF, k.BIAS_DERIV, k.BIAS_FORWARD,
                     k.BIAS_INPLACE]  # fmt: skip


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name", NAMES)
def test_compiled_against_numpy_path(numba_only, name, dtype):
    x = np.concatenate([_x(4097, dtype), np.linspace(-20, 20, 1001, dtype=dtype)])
    d = _x(x.size, dtype, seed=1) / 4
    p = _param(name)
    s = np.tanh(x) if name == "tanh" else 1 / (1 + np.exp(-x)) if name == "sigmoid" else x  # z, or y = f(z)
    fns = {
        "f": lambda: _act.act_ref(x, name, p),
        "f'": lambda: _act.act_grad_ref(x, name, p),
        "dy f'": lambda: _act.act_backward_ref(s, d, name, p),
    }
    for what, fn in fns.items():
        got = fn()
        _jit.set_enabled(False)
        try:
            want = fn()
        finally:
            _jit.set_enabled(True)
        tol = TANH_CANCEL_TOL if name == "gelu_tanh" and what != "f" else PATHS_TOL
        _close(got, want.astype(np.float64), tol, what)
    if name in ("relu", "leaky_relu"):  # compares and selects: the same bits
        np.testing.assert_array_equal(fns["dy f'"](), want)


@pytest.mark.parametrize("name", ["gelu", "silu", "elu", "relu"])
def test_same_bits_for_any_chunking_and_threads(numba_only, monkeypatch, name):
    """Vector body and scalar tail compute the same bits, so splitting a call anywhere changes nothing."""
    k = numba_only
    x = _x((1 << 16) + 3, np.float32)
    d = _x(x.size, np.float32, seed=1)
    whole = k.run(k.BACKWARD, (x, d), _act.ACT_CODES[name], ALPHA, cost=1)
    parts = np.concatenate([k.run(k.BACKWARD, (x[a:b], d[a:b]), _act.ACT_CODES[name], ALPHA, cost=1)
                            for a, b in ((0, 5), (5, 4101), (4101, x.size))])  # fmt: skip
    np.testing.assert_array_equal(whole, parts)
    monkeypatch.setattr(_threads, "MIN_PARALLEL", 1)
    prev = _threads.get_num_threads()
    monkeypatch.setenv("CONCH_ADAPT_THREADS", "0")
    monkeypatch.setitem(_threads._load, "adapt", None)
    try:
        _threads.set_num_threads(2)
        before = _threads.SPLITS[0]
        y2 = _act.act_ref(x, name, ALPHA)
        b2 = _act.act_backward_ref(x, d, name, ALPHA)
        assert _threads.SPLITS[0] > before  # (relu's forward is NumPy's maximum: not split)
        _threads.set_num_threads(1)
        np.testing.assert_array_equal(y2, _act.act_ref(x, name, ALPHA))
        np.testing.assert_array_equal(b2, _act.act_backward_ref(x, d, name, ALPHA))
    finally:
        _threads.set_num_threads(prev)


# ---- against PyTorch -------------------------------------------------------------------------------------------


_TORCH = {
    "relu": "relu", "leaky_relu": "leaky_relu", "elu": "elu", "gelu": "gelu", "silu": "silu", "tanh": "tanh",
    "sigmoid": "sigmoid",
}  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # NumPy's inf * 0 on the NumPy path
def test_against_torch(cpu_path, name):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = np.concatenate([_x(1000, np.float32), np.array([np.nan, np.inf, -np.inf, 0.0], np.float32)])
    d = _x(x.size, np.float32, seed=1)
    xt = torch.tensor(x, requires_grad=True)
    fn = {
        "leaky_relu": lambda v: F.leaky_relu(v, SLOPE), "elu": lambda v: F.elu(v, ALPHA),
        "gelu_tanh": lambda v: F.gelu(v, approximate="tanh"), "gelu": F.gelu, "silu": F.silu,
        "relu": F.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
    }[name]  # fmt: skip
    yt = fn(xt)
    yt.backward(torch.tensor(d))
    y, res = activation_forward(x, name, negative_slope=SLOPE, alpha=ALPHA)
    dx = activation_backward(res, d)
    atol, rtol = TOL[np.dtype(np.float32)]
    # at ±inf PyTorch differs by op (its vectorized gelu gives NaN at +inf, where conch gives inf = lim gelu):
    # compare the finite inputs, and NaN at NaN
    finite = np.isfinite(x)
    np.testing.assert_allclose(y[finite], yt.detach().numpy()[finite], atol=atol, rtol=rtol)
    assert np.isnan(y[np.isnan(x)]).all() and np.isnan(yt.detach().numpy()[np.isnan(x)]).all()
    if name == "gelu_tanh":  # float32 cancellation where tanh saturates, in both (see TANH_CANCEL_TOL)
        atol = TANH_CANCEL_TOL[np.dtype(np.float32)][0]
    np.testing.assert_allclose(dx[finite], xt.grad.numpy()[finite], atol=atol, rtol=rtol)


def test_one_signature_per_dtype(numba_only):
    """Read-only, strided and 0-d inputs reuse the two compiled signatures (a new one costs seconds)."""
    k = numba_only
    x = _x(300, np.float32)
    ro = np.broadcast_to(x, x.shape)  # read-only, contiguous
    assert not ro.flags.writeable
    for arr in (ro, x[::3], x[:1].reshape(()), x.astype(np.float64), np.broadcast_to(x.astype(np.float64), x.shape)):
        np.testing.assert_array_equal(_act.act_ref(arr, "gelu"), _act.act_ref(np.array(arr), "gelu"))
        _act.act_backward_ref(arr, arr, "silu")
    matmul_forward(x.reshape(30, 10), np.broadcast_to(x[:10].reshape(10, 1), (10, 4)), np.zeros(4, np.float32), "gelu")
    for fn in k.DISPATCHERS:
        assert len(fn.signatures) <= 2, (fn, fn.signatures)
