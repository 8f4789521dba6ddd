"""The compiled CPU row kernels (kernels/_numba/rows.py) against conch's NumPy path and PyTorch, in the same run.

Cases (each forward+backward through conch's autograd, the same shapes in PyTorch):

- ``layer_norm``: (16, 64, 128) float32 with weight and bias (the GPT's);
- ``softmax`` / ``log_softmax``: (16, 4, 64, 64) float32 along the last axis;
- ``attention``: causal scaled-dot-product attention on q, k, v of (16, 4, 64, 32) float32 (the GPT's heads);
- ``cross_entropy``: (1024, 256) float32 logits, mean reduction;
- ``gpt``: the GPT training step of benchmarks/bench_cpu_models.py (4 layers, 128 wide, 16 x 64 tokens).

Three contenders alternate round by round (the order flips every round): ``numba`` (the compiled kernels),
``numpy`` (the same conch with ``_jit.set_enabled(False)``: the reference path, the "before") and ``torch``.
Reported: medians of wall clock and CPU clock per call, and the ratios numba/numpy and numba/torch (below 1:
the compiled path is faster). Numbers from a machine shared with other jobs are indicative only.

Usage::

    python benchmarks/bench_cpu_rows.py [--rounds 7] [--steps 10] [--threads 1,2] [--match gpt] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cpu_models import _conch_gpt, _step_fn, _torch_gpt, interleaved  # noqa: E402


def _pair(shape, conch_fn, torch_fn, seed=0):
    """(conch step, torch step): forward + backward of fn on one float32 input of ``shape``."""
    import torch

    import conch

    x0 = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    xc, xt = conch.tensor(x0, requires_grad=True), torch.tensor(x0, requires_grad=True)

    def c():
        xc.grad = None
        conch_fn(xc).sum().backward()

    def t():
        xt.grad = None
        torch_fn(xt).sum().backward()

    return c, t


def _cases():
    import torch
    import torch.nn.functional as TF

    import conch
    import conch.nn.functional as F

    d = 128
    ln_c, ln_t = conch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
    cases = {
        "layer_norm (16,64,128)": _pair((16, 64, d), ln_c, ln_t),
        "softmax (16,4,64,64)": _pair((16, 4, 64, 64), lambda x: F.softmax(x, dim=-1), lambda x: x.softmax(-1)),
        "log_softmax (16,4,64,64)": _pair(
            (16, 4, 64, 64), lambda x: F.log_softmax(x, dim=-1), lambda x: x.log_softmax(-1)
        ),
    }
    rng = np.random.default_rng(1)
    qkv = [rng.standard_normal((16, 4, 64, 32)).astype(np.float32) for _ in range(3)]
    qc = [conch.tensor(a, requires_grad=True) for a in qkv]
    qt = [torch.tensor(a, requires_grad=True) for a in qkv]

    def attn_c():
        F.scaled_dot_product_attention(*qc, is_causal=True).sum().backward()

    def attn_t():
        TF.scaled_dot_product_attention(*qt, is_causal=True).sum().backward()

    cases["attention causal (16,4,64,32)"] = (attn_c, attn_t)
    logits = rng.standard_normal((1024, 256)).astype(np.float32)
    tgt = rng.integers(0, 256, 1024)
    lc, lt = conch.tensor(logits, requires_grad=True), torch.tensor(logits, requires_grad=True)
    tc, tt = conch.tensor(tgt), torch.tensor(tgt)
    cases["cross_entropy (1024,256)"] = (
        lambda: F.cross_entropy(lc, tc).backward(),
        lambda: TF.cross_entropy(lt, tt).backward(),
    )
    cases["gpt step 4x128, 16x64 tokens"] = (_step_fn("conch", *_conch_gpt()), _step_fn("torch", *_torch_gpt()))
    return cases


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--match", default="")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import torch

    import conch
    from conch.kernels import _jit

    if not _jit.enabled():
        sys.exit("bench_cpu_rows: the compiled kernels are off (no Numba, or CONCH_NUMBA=0): nothing to compare")
    out = {"machine": f"{os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f} at start",
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": []}  # fmt: skip
    for name, (c, t) in _cases().items():
        if args.match not in name:
            continue
        fns = {"numba": c, "numpy": c, "torch": t}
        for n in (int(s) for s in args.threads.split(",")):

            def setup(who, n=n):
                conch.set_num_threads(n)
                torch.set_num_threads(n)
                _jit.set_enabled(who != "numpy")

            res = interleaved(fns, args.rounds, args.steps, setup=setup)
            _jit.set_enabled(True)
            (nw, nc), (pw, pc), (tw, tc) = res["numba"], res["numpy"], res["torch"]
            row = dict(case=name, threads=n, numba_ms=nw * 1e3, numpy_ms=pw * 1e3, torch_ms=tw * 1e3,
                       wall_vs_numpy=nw / pw, wall_vs_torch=nw / tw,
                       cpu_vs_numpy=nc / pc, cpu_vs_torch=nc / tc)  # fmt: skip
            out["rows"].append(row)
            print(f"{name:<32} t={n}  numba {nw * 1e3:7.2f} ms  numpy {pw * 1e3:7.2f} ms  torch {tw * 1e3:7.2f} ms"
                  f"  numba/numpy x{nw / pw:.2f} (cpu x{nc / pc:.2f})  numba/torch x{nw / tw:.2f}"
                  f" (cpu x{nc / tc:.2f})", flush=True)  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
