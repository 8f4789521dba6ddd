"""Microbenchmarks: fused LayerNorm / RMSNorm forward and backward vs the unfused CuPy composition.

LayerNorm and RMSNorm over the last dim of (rows, D): large 8192 rows x D 1024 and 8192, small 512 x 256
and 1024; float32 and bfloat16 (float16 with ``dtype="fp16"``; ``sizes``: D values). Each case allocates its
arrays in ``setup()``.

Example::

    conch bench norms --dtype fp16 --sizes 768,4096
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import harness  # noqa: E402


def _case(xp, norms, op, dtype, rows, d, seed):
    """``op``: layer_norm_fwd, layer_norm_bwd, rms_norm_fwd or rms_norm_bwd."""
    nbytes = rows * d * harness.storage_dtype(dtype).itemsize
    f32 = xp.float32
    ln = op.startswith("layer")
    fwd = op.endswith("fwd")

    def setup():
        rng = xp.random.default_rng(seed)
        x = harness.randn(xp, rng, (rows, d), dtype)
        w = harness.randn(xp, rng, (d,), dtype, scale=0.1, shift=1.0)
        b = harness.randn(xp, rng, (d,), dtype)

        def ln_fwd():  # unfused: upcast, mean, var, normalise, affine, downcast
            xf = x.astype(f32)
            mu = xf.mean(-1, keepdims=True)
            xc = xf - mu
            rstd = 1.0 / xp.sqrt((xc * xc).mean(-1, keepdims=True) + 1e-5)
            return (xc * rstd * w.astype(f32) + b.astype(f32)).astype(x.dtype)

        def rms_fwd():
            xf = x.astype(f32)
            rstd = 1.0 / xp.sqrt((xf * xf).mean(-1, keepdims=True) + 1e-6)
            return (xf * rstd * w.astype(f32)).astype(x.dtype)

        if fwd:
            if ln:
                return {"run": lambda: norms.layer_norm_forward(x, w, b), "baseline": ln_fwd,
                        "check": lambda: harness.rel_err(norms.layer_norm_forward(x, w, b)[0], ln_fwd())}  # fmt: skip
            return {"run": lambda: norms.rms_norm_forward(x, w), "baseline": rms_fwd,
                    "check": lambda: harness.rel_err(norms.rms_norm_forward(x, w)[0], rms_fwd())}  # fmt: skip
        dy = harness.randn(xp, rng, (rows, d), dtype)

        def ln_bwd():
            xf, dyf = x.astype(f32), dy.astype(f32)
            mu = xf.mean(-1, keepdims=True)
            rstd = 1.0 / xp.sqrt(((xf - mu) ** 2).mean(-1, keepdims=True) + 1e-5)
            xhat = (xf - mu) * rstd
            wdy = dyf * w.astype(f32)
            dx = rstd * (wdy - wdy.mean(-1, keepdims=True) - xhat * (wdy * xhat).mean(-1, keepdims=True))
            return dx.astype(x.dtype), (dyf * xhat).sum(0).astype(w.dtype), dyf.sum(0).astype(w.dtype)

        def rms_bwd():
            xf, dyf = x.astype(f32), dy.astype(f32)
            rstd = 1.0 / xp.sqrt((xf * xf).mean(-1, keepdims=True) + 1e-6)
            xhat = xf * rstd
            wdy = dyf * w.astype(f32)
            dx = rstd * (wdy - xhat * (wdy * xhat).mean(-1, keepdims=True))
            return dx.astype(x.dtype), (dyf * xhat).sum(0).astype(w.dtype)

        if ln:
            _, res = norms.layer_norm_forward(x, w, b)
            run, base = (lambda: norms.layer_norm_backward(res, dy)), ln_bwd
        else:
            _, res = norms.rms_norm_forward(x, w)
            run, base = (lambda: norms.rms_norm_backward(res, dy)), rms_bwd

        def check():
            # every gradient the baseline gives (dx, dw[, db]) must match; a missing one is an error
            got, want = run(), base()
            if len(got) < len(want):
                raise ValueError(f"{op} returned {len(got)} gradients, expected at least {len(want)}")
            return max(harness.rel_err(g, e) for g, e in zip(got, want))

        return {"run": run, "baseline": base, "check": check}

    name = ("cupy layer_norm" if ln else "cupy rms_norm") + (
        " (mean, var, normalise, affine)" if fwd and ln else "" if fwd else " backward"
    )
    return dict(name=op, shape=(rows, d), dtype=dtype, flops=0,
                bytes=(2 if fwd else 3) * nbytes,  # fwd: read x, write y; bwd: read x, dy, write dx
                baseline_name=name, setup=setup)  # fmt: skip


def cases(size="large", sizes=None, dtype=None, xp=None):
    """LayerNorm and RMSNorm forward and backward; arrays are allocated by each case's ``setup()``."""
    from conch.kernels import norms

    xp = harness.family_xp(xp)
    rows = 8192 if size == "large" else 512
    dims = harness.pick_sizes(sizes, (1024, 8192) if size == "large" else (256, 1024))
    out = []
    seed = 400
    for dt in harness.wanted_dtypes(dtype, ("float32", "bfloat16")):
        for d in dims:
            for op in ("layer_norm_fwd", "layer_norm_bwd", "rms_norm_fwd", "rms_norm_bwd"):
                seed += 1
                out.append(_case(xp, norms, op, dt, rows, d, seed))
    return out
