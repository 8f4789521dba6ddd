"""Microbenchmarks: fused softmax / log_softmax forward and backward vs the unfused CuPy composition.

Softmax and log-softmax over the last dim of (rows, cols): large 4096 rows x 4096 and 32768 columns, small
256 x 1024 and 4096; float32 and float16 (``sizes``: column counts; ``dtype``: one dtype). Each case
allocates its arrays in ``setup()``.

Example::

    conch bench softmax --sizes 8192,16384
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import harness  # noqa: E402


def _case(xp, sm, dtype, rows, cols, log, backward, seed):
    nbytes = rows * cols * harness.storage_dtype(dtype).itemsize
    name = "log_softmax" if log else "softmax"
    f32 = xp.float32

    def setup():
        rng = xp.random.default_rng(seed)
        x = harness.randn(xp, rng, (rows, cols), dtype, scale=3.0)

        def base_fwd():
            xf = x.astype(f32)  # unfused: upcast, max, subtract, exp, sum, divide, downcast
            z = xf - xf.max(axis=-1, keepdims=True)
            if log:
                return (z - xp.log(xp.exp(z).sum(axis=-1, keepdims=True))).astype(x.dtype)
            e = xp.exp(z)
            return (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype)

        if not backward:
            return {"run": lambda: sm.softmax_forward(x, log=log), "baseline": base_fwd,
                    "check": lambda: harness.rel_err(sm.softmax_forward(x, log=log)[0], base_fwd())}  # fmt: skip
        dy = harness.randn(xp, rng, (rows, cols), dtype)
        y, res = sm.softmax_forward(x, log=log)

        def base_bwd():
            yf, dyf = y.astype(f32), dy.astype(f32)
            if log:
                return (dyf - xp.exp(yf) * dyf.sum(axis=-1, keepdims=True)).astype(y.dtype)
            return (yf * (dyf - (dyf * yf).sum(axis=-1, keepdims=True))).astype(y.dtype)

        return {"run": lambda: sm.softmax_backward(res, dy, log=log), "baseline": base_bwd,
                "check": lambda: harness.rel_err(sm.softmax_backward(res, dy, log=log), base_bwd())}  # fmt: skip

    if backward:
        return dict(name=f"{name}_bwd", shape=(rows, cols), dtype=dtype, flops=0, bytes=3 * nbytes,  # y, dy -> dx
                    baseline_name=f"cupy {name} backward", setup=setup)  # fmt: skip
    return dict(name=f"{name}_fwd", shape=(rows, cols), dtype=dtype, flops=0, bytes=2 * nbytes,  # x -> y
                baseline_name=f"cupy {name} (max, exp, sum, div)", setup=setup)  # fmt: skip


def cases(size="large", sizes=None, dtype=None, xp=None):
    """Softmax and log-softmax forward and backward; arrays are allocated by each case's ``setup()``."""
    from conch.kernels import softmax as sm

    xp = harness.family_xp(xp)
    rows = 4096 if size == "large" else 256
    all_cols = harness.pick_sizes(sizes, (4096, 32768) if size == "large" else (1024, 4096))
    out = []
    seed = 200
    for dt in harness.wanted_dtypes(dtype, ("float32", "float16")):
        for cols in all_cols:
            for log in (False, True):
                for backward in (False, True):
                    seed += 1
                    out.append(_case(xp, sm, dt, rows, cols, log, backward, seed))
    return out
