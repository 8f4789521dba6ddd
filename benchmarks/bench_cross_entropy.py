"""Microbenchmarks: fused cross-entropy forward (online logsumexp) and backward vs the unfused CuPy composition.

Cross-entropy on logits (N, V), mean reduction, every 17th row ignored (target -100): large N 4096 and
V 8192 and 32768 (vocabulary-like), small 256 x 1024 and 4096; float32 and float16 (``sizes``: V values;
``dtype``: one dtype). Each case allocates its arrays in ``setup()``.

Example::

    conch bench cross_entropy --sizes 50304 --dtype bf16
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import harness  # noqa: E402


def _case(xp, ce, dtype, n, v, backward, seed):
    nbytes = n * v * harness.storage_dtype(dtype).itemsize
    f32 = xp.float32

    def setup():
        rng = xp.random.default_rng(seed)
        x = harness.randn(xp, rng, (n, v), dtype, scale=3.0)
        t = rng.integers(0, v, n).astype(xp.int64)
        t[::17] = -100
        rows = xp.arange(n)
        valid = t != -100
        safe_t = xp.where(valid, t, 0)

        def base_fwd():
            xf = x.astype(f32)  # unfused: upcast, max, exp, sum, log, gather, mask, mean
            m = xf.max(axis=1)
            lse = m + xp.log(xp.exp(xf - m[:, None]).sum(axis=1))
            return xp.where(valid, lse - xf[rows, safe_t], 0.0).sum() / valid.sum()

        if not backward:
            return {"run": lambda: ce.cross_entropy_forward(x, t), "baseline": base_fwd,
                    "check": lambda: harness.rel_err(ce.cross_entropy_forward(x, t)[0], base_fwd())}  # fmt: skip
        _, res = ce.cross_entropy_forward(x, t)
        one = xp.asarray(1.0, dtype=f32)

        def base_bwd():
            xf = x.astype(f32)
            p = xp.exp(xf - xf.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            p[rows, safe_t] -= 1.0
            p *= (valid / valid.sum())[:, None]
            return p.astype(x.dtype)

        return {"run": lambda: ce.cross_entropy_backward(res, one), "baseline": base_bwd,
                "check": lambda: harness.rel_err(ce.cross_entropy_backward(res, one), base_bwd())}  # fmt: skip

    if backward:
        return dict(name="cross_entropy_bwd", shape=(n, v), dtype=dtype, flops=0,
                    bytes=2 * nbytes + n * 16,  # read logits, write dlogits, per-row target/max/log-sum
                    baseline_name="cupy cross-entropy backward (softmax - onehot) * scale", setup=setup)  # fmt: skip
    return dict(name="cross_entropy_fwd", shape=(n, v), dtype=dtype, flops=0,
                bytes=nbytes + n * 8 + n * 12,  # read logits and targets, write loss/max/log-sum per row
                baseline_name="cupy cross-entropy (max, exp, sum, log, gather, mean)", setup=setup)  # fmt: skip


def cases(size="large", sizes=None, dtype=None, xp=None):
    """Cross-entropy forward and backward; arrays are allocated by each case's ``setup()``."""
    from conch.kernels import cross_entropy as ce

    xp = harness.family_xp(xp)
    n = 4096 if size == "large" else 256
    all_v = harness.pick_sizes(sizes, (8192, 32768) if size == "large" else (1024, 4096))
    out = []
    seed = 300
    for dt in harness.wanted_dtypes(dtype, ("float32", "float16")):
        for v in all_v:
            for backward in (False, True):
                seed += 1
                out.append(_case(xp, ce, dt, n, v, backward, seed))
    return out
