"""erf for NumPy and CuPy arrays: the one array-level erf of conch (``conch.erf`` and the kernels' reference paths).

Per dtype, in the array's own dtype out:

- NumPy float32/float64 with Numba on (:mod:`conch.kernels._jit`): one compiled pass (kernels/_numba/act.py,
  operation ``ERF``): the rational approximation below in float32, libm's ``erf`` in float64 (within 1 ulp).
  The entries below are the NumPy path, kept for ``CONCH_NUMBA=0`` and machines without Numba.
- float64 on NumPy: SciPy's ``erf`` (Cephes: within about 2 ulps of the exact value). SciPy comes with
  scikit-learn, a conch dependency; without it, ``math.erf`` element by element (as accurate, ~5x slower).
- float32 on NumPy: Eigen's/XLA's rational approximation below, evaluated in float32 (|error| < 5e-7: at most
  7 float32 ulps near ±1, 3 below 1), about 2x faster than SciPy's float32 loop, which widens every element to
  float64 and back. The CPU gelu reference path spends most of its time here.
- CuPy: CUDA's ``erf``/``erff`` (within 2 ulps) through an elementwise kernel built from the array's
  namespace, so this module needs no ``cupyx`` import.
- float16/bfloat16: computed in float32 and rounded once.

The Triton kernels keep their in-kernel ``tl.erf`` (libdevice's ``erff``).
"""

from __future__ import annotations

import math

import numpy as np

from . import _jit
from ._launch import xp_of

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)

# Eigen's/XLA's float32 erf: erf(x) = x·P(x²)/Q(x²) on x clamped to [-4, 4] (erf(±4) rounds to ±1 in float32).
# Horner coefficients, highest power first.
_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
          -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)  # fmt: skip
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
          -1.42647390514189e-02)  # fmt: skip

_CUPY_ERF: dict = {}  # cupy namespace -> its compiled ElementwiseKernel (one per namespace: real or simulated)


def _erf_f32(z):
    """erf of a float32 NumPy array from the rational approximation: ~25 in-place passes, one fresh array."""
    x = np.clip(z, -4.0, 4.0)
    x2 = x * x
    p = x2 * _ERF_P[0]
    for c in _ERF_P[1:-1]:
        p += c
        p *= x2
    p += _ERF_P[-1]
    q = x2 * _ERF_Q[0]
    for c in _ERF_Q[1:-1]:
        q += c
        q *= x2
    q += _ERF_Q[-1]
    p *= x
    p /= q
    return p


def _erf_f64(z):
    try:
        from scipy.special import erf  # imported on first use: SciPy costs ~100 ms to import
    except ImportError:  # pragma: no cover - scipy comes with scikit-learn
        return np.frompyfunc(math.erf, 1, 1)(z).astype(_F64)
    return erf(z)


def erf(z):
    """erf(z) elementwise for a NumPy or CuPy float array, in z's dtype (a fresh array; z is not modified)."""
    dt = np.dtype(z.dtype)
    zc = z.astype(np.float32) if dt.itemsize < 4 else z  # float16/bfloat16: float32 math, one rounding at the end
    xp = xp_of(z)
    if xp is np and _jit.enabled() and zc.dtype in (_F32, _F64):
        k = _jit.family("act")
        y = k.run(k.ERF, (zc,), cost=2)
    elif xp is np:
        y = _erf_f32(zc) if zc.dtype == _F32 else _erf_f64(zc.astype(_F64, copy=False))
    else:
        kern = _CUPY_ERF.get(xp)
        if kern is None:
            kern = _CUPY_ERF[xp] = xp.ElementwiseKernel("T x", "T y", "y = erf(x)", "conch_erf")
        y = kern(zc)
    return y.astype(dt, copy=False)
