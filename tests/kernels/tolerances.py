"""The one table of per-dtype tolerances for kernel tests (Triton path against reference path)."""

import ml_dtypes
import numpy as np

#: (atol, rtol) by storage dtype. fp32 is tight (fp32 accumulation in both paths, only summation
#: order differs); fp16 has a 10-bit mantissa, bf16 a 7-bit one, so one rounding of the output
#: alone costs ~1e-3 and ~8e-3 relative.
TOL = {
    np.dtype(np.float64): (1e-10, 1e-10),
    np.dtype(np.float32): (1e-5, 1e-5),
    np.dtype(np.float16): (2e-3, 2e-3),
    np.dtype(ml_dtypes.bfloat16): (2e-2, 2e-2),
}

#: Matmuls sum K products; error grows with sqrt(K), so their table is looser.
MATMUL_TOL = {
    np.dtype(np.float32): (1e-4, 1e-4),
    np.dtype(np.float16): (1e-2, 1e-2),
    np.dtype(ml_dtypes.bfloat16): (5e-2, 5e-2),
}


def assert_close(actual, expected, dtype, table=TOL, scale=1.0):
    """Compare in float64 with the tolerance of ``dtype`` (times ``scale``); names the worst element."""
    atol, rtol = table[np.dtype(dtype)]
    a = np.asarray(actual).astype(np.float64)
    e = np.asarray(expected).astype(np.float64)
    assert a.shape == e.shape, f"shape {a.shape} != expected {e.shape}"
    assert np.isfinite(a).all() == np.isfinite(e).all() or np.array_equal(np.isfinite(a), np.isfinite(e))
    np.testing.assert_allclose(a, e, atol=atol * scale, rtol=rtol * scale)
