"""Microbenchmarks: fused causal attention (flash) forward and backward vs the unfused CuPy composition.

softmax(q kᵀ/√D, causal) v; a case's shape is (B·H, D, T) (T last, the size ``--sizes`` picks): B·H = 32
heads of T = 1024 and 4096, D = 64 and 128, in bfloat16 and float16. FLOPs count the causal half: forward 2
products of B·H·T²·D/2 multiply-adds each, backward 5 (the scores recomputed, dv, dp, dq, dk). The baseline
materializes the (T, T) scores: matmul, scale, mask, softmax, matmul (and the matching five products for the
backward).
Each case allocates its arrays in ``setup()``.

Example::

    conch bench attention --dtype bf16 --sizes 1024,2048

CPU section (run as a script; needs PyTorch): causal float32 attention on the CPU, conch against PyTorch's
``scaled_dot_product_attention`` in the same run, at the GPT benchmark's shape (16, 4, 64, 32) (batch, heads,
tokens, head dim) and at (8, 12, 256, 64), at 1 and 2 threads: "kernel" times kernels.attention's forward and
forward+backward on arrays (PyTorch: forward under no_grad, forward+backward through autograd), "op" times
``F.scaled_dot_product_attention`` with autograd on q, k, v split from one (B, T, 3·H·D) projection as in
conch.models.GPT (the gradient flows back to the projection). Medians of interleaved rounds (order flipped
every round, bench_cpu_models.interleaved); ratios conch / PyTorch (below 1: conch is faster)::

    python benchmarks/bench_attention.py --cpu [--rounds 15] [--steps 10] [--threads 1,2] [--json FILE]
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


# --------------------------------------------------------------------------------------------------------------
# CPU: conch against PyTorch (run as a script)
# --------------------------------------------------------------------------------------------------------------

CPU_SHAPES = ((16, 4, 64, 32), (8, 12, 256, 64))


def _cpu_fns(shape):
    """{case: {"conch": fn, "torch": fn}} for one (B, H, T, D) shape, causal, float32."""
    import numpy as np
    import torch

    import conch
    import conch.nn.functional as F
    from conch.kernels import attention as at

    b, h, t, d = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((b, t, 3 * h * d)).astype(np.float32)
    g = rng.standard_normal((b, h, t, d)).astype(np.float32)
    q, k, v = (a.reshape(b, t, h, d).transpose(0, 2, 1, 3) for a in np.split(x, 3, axis=2))  # GPT's views
    qt, kt, vt = (torch.tensor(np.ascontiguousarray(a), requires_grad=True) for a in (q, k, v))
    gt = torch.tensor(g)
    xc, xt, gc = conch.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True), conch.tensor(g)
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def kernel_fb():
        out, res = at.attention_forward(q, k, v, causal=True)
        at.attention_backward(res, g)

    def torch_f():
        with torch.no_grad():
            sdpa(qt, kt, vt, is_causal=True)

    def torch_fb():
        sdpa(qt, kt, vt, is_causal=True).backward(gt)

    def heads(xx):
        parts = xx.split(h * d, dim=2)
        return [a.reshape(b, t, h, d).transpose(1, 2) for a in parts]

    def op_conch():
        F.scaled_dot_product_attention(*heads(xc), is_causal=True).backward(gc)
        xc.grad = None

    def op_torch():
        sdpa(*heads(xt), is_causal=True).backward(gt)
        xt.grad = None

    return {
        "kernel forward": {"conch": lambda: at.attention_forward(q, k, v, causal=True), "torch": torch_f},
        "kernel forward+backward": {"conch": kernel_fb, "torch": torch_fb},
        "op forward+backward": {"conch": op_conch, "torch": op_torch},
    }


def cpu_main(argv=None):
    """The CPU section (see the module docstring); returns its rows."""
    import argparse
    import json

    from bench_cpu_models import _fmt, _ratio_row, _set_threads, interleaved

    ap = argparse.ArgumentParser(description="conch vs PyTorch causal attention on the CPU")
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows = []
    for shape in CPU_SHAPES:
        steps = max(1, args.steps // (16 if shape[2] > 64 else 1))  # the large shape takes ~20-60 ms per call
        for case, fns in _cpu_fns(shape).items():
            for n in (int(x) for x in args.threads.split(",")):
                res = interleaved(fns, args.rounds, steps, setup=lambda _n, n=n: _set_threads(n))
                rows.append(_ratio_row(f"{case} {shape}", n, res))
                print(_fmt(rows[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    cpu_main()
