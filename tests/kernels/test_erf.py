"""conch.kernels._erf.erf, the one array-level erf, against math.erf in float64."""

import math
import sys

import ml_dtypes
import numpy as np
import pytest
from devices import dev, host

import conch
from conch.kernels import _act, _erf

_exact = np.vectorize(math.erf, otypes=[np.float64])


def _points():
    """Both signs of a dense grid over [-6, 6] (erf's whole non-constant range in float64), tiny values, and
    the specials."""
    grid = np.linspace(0.0, 6.0, 60001)
    tiny = np.logspace(-300, -1, 300)
    x = np.concatenate([grid, tiny, [1e-310, 10.0, 30.0]])
    return np.concatenate([x, -x])


def test_float64_is_within_a_few_ulps_of_math_erf():
    x = _points()
    got, want = host(_erf.erf(dev(x))), _exact(x)
    assert got.dtype == np.float64
    # SciPy's (Cephes) and CUDA's erf are each within about 2 ulps of the exact value, as is math.erf: they
    # differ by up to 3 ulps from one another (SciPy against math.erf: 3, at x = 0.8593)
    ulps = np.abs(got - want) / np.spacing(np.abs(want))
    assert ulps.max() <= 4, f"max {ulps.max()} ulps at x={x[ulps.argmax()]}"


def test_float32_error_bound():
    x = _points()
    x32 = x.astype(np.float32)
    got, want = host(_erf.erf(dev(x32))), _exact(x32.astype(np.float64))
    assert got.dtype == np.float32
    err = np.abs(got.astype(np.float64) - want)
    assert err.max() < 5e-7  # the documented bound of the rational approximation (CUDA's erff: 2 ulps)
    # relative below 1 too (down to the smallest normal float32; subnormal results lose digits in x·P/Q)
    normal = (np.abs(x32) < 1) & (np.abs(x32) > 1e-37)
    ulps = err[normal] / np.spacing(np.abs(want[normal]).astype(np.float32))
    assert ulps.max() <= 4, f"max {ulps.max()} float32 ulps below 1"


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_half_dtypes_round_the_float32_result_once(dtype):
    x = np.linspace(-4, 4, 1001).astype(dtype)
    got = host(_erf.erf(dev(x)))
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, host(_erf.erf(dev(x.astype(np.float32)))).astype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_specials_and_input_untouched(dtype):
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 6.5, -6.5], dtype=dtype)  # erf(6.5) rounds to 1 in float64
    before = x.copy()
    got = host(_erf.erf(dev(x)))
    np.testing.assert_array_equal(got[:4], [0.0, -0.0, 1.0, -1.0])
    assert np.isnan(got[4]) and got[5] == 1.0 and got[6] == -1.0
    assert np.signbit(got[1])
    np.testing.assert_array_equal(x, before)


def test_math_erf_fallback_without_scipy(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy.special", None)  # the import then raises ImportError
    x = np.linspace(-3, 3, 101)
    np.testing.assert_array_equal(_erf.erf(x), _exact(x))


def test_framework_op_and_kernels_share_it():
    assert _act._erf is _erf.erf
    x = np.linspace(-3, 3, 101).astype(np.float32)
    np.testing.assert_array_equal(conch.erf(conch.tensor(x)).numpy(), _erf.erf(x))
