"""Microbenchmarks: fused counter-based dropout forward/backward vs CuPy (uniform draw, compare, multiply).

Dropout p=0.1 on a flat array of 2**26 elements (large) or 2**20 (small), float32 and float16 (``sizes``:
element counts; ``dtype``: one dtype). conch regenerates its Philox mask from (seed, offset) and stores
none; the baseline draws a stored uniform array with CuPy's generator, compares and multiplies. The check
rebuilds the exact mask with conch's reference Philox (``dropout_mask``), so a single flipped element fails.
Each case allocates its arrays in ``setup()``.

Example::

    conch bench dropout --sizes 16777216
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import harness  # noqa: E402

P = 0.1
SEED = 1


def _case(xp, dk, dtype, n, backward, seed):
    nbytes = n * harness.storage_dtype(dtype).itemsize
    f32 = xp.float32

    def setup():
        rng = xp.random.default_rng(seed)
        x = harness.randn(xp, rng, (n,), dtype)

        def base(v):  # unfused: a stored mask from CuPy's generator, then a multiply
            keep = rng.random(v.shape, dtype=f32) >= P
            return (v * keep * xp.asarray(1 / (1 - P), v.dtype)).astype(v.dtype)

        def expected(v):  # the exact mask conch must draw: Philox(seed, offset + i) >= p
            keep = dk.dropout_mask(v.shape, P, SEED, 0, xp)
            return xp.where(keep, v.astype(f32) * f32(1 / (1 - P)), 0).astype(v.dtype)

        if not backward:
            return {"run": lambda: dk.dropout_forward(x, P, seed=SEED, offset=0), "baseline": lambda: base(x),
                    "check": lambda: harness.rel_err(dk.dropout_forward(x, P, seed=SEED, offset=0)[0],
                                                     expected(x))}  # fmt: skip
        dy = harness.randn(xp, rng, (n,), dtype)
        _, res = dk.dropout_forward(x, P, seed=SEED, offset=0)
        return {"run": lambda: dk.dropout_backward(res, dy), "baseline": lambda: base(dy),
                "check": lambda: harness.rel_err(dk.dropout_backward(res, dy), expected(dy))}  # fmt: skip

    what = "dy" if backward else "x"
    # read x (dy), write y (dx): the mask is regenerated, never stored
    return dict(name="dropout_bwd" if backward else "dropout_fwd", shape=(n,), dtype=dtype, flops=0,
                bytes=2 * nbytes, baseline_name=f"cupy rand >= p, {what} * mask / (1-p)", setup=setup)  # fmt: skip


def cases(size="large", sizes=None, dtype=None, xp=None):
    """Dropout forward and backward; arrays are allocated by each case's ``setup()``."""
    from conch.kernels import dropout as dk

    xp = harness.family_xp(xp)
    ns = harness.pick_sizes(sizes, (1 << 26,) if size == "large" else (1 << 20,))
    out = []
    seed = 500
    for dt in harness.wanted_dtypes(dtype, ("float32", "float16")):
        for n in ns:
            for backward in (False, True):
                seed += 1
                out.append(_case(xp, dk, dt, n, backward, seed))
    return out
