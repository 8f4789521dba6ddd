"""Microbenchmarks: fused causal attention (flash) forward and backward vs the unfused CuPy composition.

softmax(q kᵀ/√D, causal) v; a case's shape is (B·H, D, T) (T last, the size ``--sizes`` picks): B·H = 32
heads of T = 1024 and 4096, D = 64 and 128, in bfloat16 and float16. FLOPs count the causal half: forward 2
products of B·H·T²·D/2 multiply-adds each, backward 5 (the scores recomputed, dv, dp, dq, dk). The baseline
materializes the (T, T) scores: matmul, scale, mask, softmax, matmul (and the matching five products for the
backward).
Each case allocates its arrays in ``setup()``.

Example::

    conch bench attention --dtype bf16 --sizes 1024,2048
"""

from __future__ import annotations

import math
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import harness  # noqa: E402


def _case(xp, at, op, dtype, bh, t, d, seed):
    """``op``: attention_fwd or attention_bwd, causal."""
    scale = 1.0 / math.sqrt(d)
    fwd = op.endswith("fwd")

    def setup():
        rng = xp.random.default_rng(seed)
        q, k, v = (harness.randn(xp, rng, (bh, t, d), dtype) for _ in range(3))
        keep = xp.tril(xp.ones((t, t), dtype=bool))
        f32 = xp.float32

        def probs():
            s = xp.matmul(q, k.swapaxes(-1, -2)).astype(f32) * scale
            s = xp.where(keep, s, -xp.inf)
            s = xp.exp(s - s.max(-1, keepdims=True))
            return s / s.sum(-1, keepdims=True)

        def base_fwd():
            return xp.matmul(probs().astype(q.dtype), v)

        def run_fwd():
            return at.attention_forward(q, k, v, causal=True)

        if fwd:
            return {"run": run_fwd, "baseline": base_fwd, "check": lambda: harness.rel_err(run_fwd()[0], base_fwd())}
        g = harness.randn(xp, rng, (bh, t, d), dtype)
        out, res = at.attention_forward(q, k, v, causal=True)

        def base_bwd():
            p = probs()
            gf = g.astype(f32)
            dv = xp.matmul(p.swapaxes(-1, -2).astype(q.dtype), g)
            ds = xp.matmul(g, v.swapaxes(-1, -2)).astype(f32)
            ds -= (gf * out.astype(f32)).sum(-1, keepdims=True)
            ds = (ds * p * scale).astype(q.dtype)
            return xp.matmul(ds, k), xp.matmul(ds.swapaxes(-1, -2), q), dv

        def check():
            return max(harness.rel_err(a, b) for a, b in zip(at.attention_backward(res, g), base_bwd()))

        return {"run": lambda: at.attention_backward(res, g), "baseline": base_bwd, "check": check}

    mults = 2 if fwd else 5
    return dict(name=op, shape=(bh, d, t), dtype=dtype, flops=mults * 2 * bh * t * t * d // 2,
                bytes=(4 if fwd else 8) * bh * t * d * harness.storage_dtype(dtype).itemsize,
                baseline_name="cupy matmul, mask, softmax, matmul" + ("" if fwd else " backward"),
                setup=setup)  # fmt: skip


def cases(size="large", sizes=None, dtype=None, xp=None):
    """Causal attention forward and backward; arrays are allocated by each case's ``setup()``."""
    from conch.kernels import attention as at

    xp = harness.family_xp(xp)
    bh = 32 if size == "large" else 2
    lengths = harness.pick_sizes(sizes, (1024, 4096) if size == "large" else (64, 128))
    out = []
    seed = 700
    for dt in harness.wanted_dtypes(dtype, ("bfloat16", "float16")):
        for t in lengths:
            for d in (64, 128) if size == "large" else (32,):
                for op in ("attention_fwd", "attention_bwd"):
                    seed += 1
                    out.append(_case(xp, at, op, dt, bh, t, d, seed))
    return out
