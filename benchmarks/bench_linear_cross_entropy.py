"""Fused linear cross-entropy against linear + cross_entropy: peak memory and time of forward + backward.

Run as a script it measures the issue's case by default (8 x 1024 tokens, 768 dims, 32k vocabulary, float32,
mean reduction) with conch tensors, ``F.linear_cross_entropy(x, w, t)`` against
``F.cross_entropy(F.linear(x, w), t)``, in the same run:

* peak memory of one forward + backward above the level before it, in a separate untimed step: on the CPU
  with ``tracemalloc`` (NumPy's allocations), on the GPU with CuPy's pool (``harness.CupyPeakMemory``);
* time per step: the median of ``--rounds`` interleaved measurements (fused, unfused, fused, ...), one
  step each after a warm-up, so machine drift hits both alike.

Rows (``harness.ratio_row``, schema conch-bench/1): "peak MiB" and "ms/step", ratio = unfused / fused (above
1: the fused op is better). Targets (issue 16): CPU peak ratio >= 5 with time ratio >= 1/1.2; GPU time
ratio >= 1/1.1 at peak ratio >= 5.

It is also the ``linear_cross_entropy`` family of ``conch bench``: ``cases()`` (GPU) and ``cpu_cases()`` time the
kernel pair (conch.kernels.linear_cross_entropy forward + backward) against the unfused array composition.

Example::

    python benchmarks/bench_linear_cross_entropy.py --device cpu --json out/lce.json
    python benchmarks/bench_linear_cross_entropy.py --tokens 2048 --vocab 8192 --rounds 5
    conch bench linear_cross_entropy --sizes 32000
"""

from __future__ import annotations

import argparse
import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import harness  # noqa: E402
from bench_checkpoint import _memory  # noqa: E402  (peak of one forward + backward: tracemalloc or CuPy's pool)

# ----------------------------------------------------------------------------------------------------------------
# conch bench family: the kernel pair against the unfused array composition
# ----------------------------------------------------------------------------------------------------------------


def _unfused(xp, x, w, t, ignore_index=-100):
    """Loss and (dx, dw) of mean cross-entropy of x wᵀ, the plain way: the (N, V) logits and their gradient."""
    f32 = xp.float32
    z = (x @ w.T).astype(f32)
    m = z.max(axis=1, keepdims=True)
    p = xp.exp(z - m)
    s = p.sum(axis=1, keepdims=True)
    valid = t != ignore_index
    rows = xp.arange(t.shape[0])
    safe = xp.where(valid, t, 0)
    n_valid = valid.sum()
    loss = xp.where(valid, (m[:, 0] + xp.log(s[:, 0])) - z[rows, safe], 0.0).sum() / n_valid
    p /= s
    p[rows, safe] -= 1.0
    p *= (valid / n_valid)[:, None]
    dz = p.astype(x.dtype)
    return loss, dz @ w, dz.T @ x


def _case(xp, dtype, n, d, v, seed):
    from conch.kernels import linear_cross_entropy as lce

    isz = harness.storage_dtype(dtype).itemsize

    def setup():
        rng = xp.random.default_rng(seed)
        x = harness.randn(xp, rng, (n, d), dtype)
        w = harness.randn(xp, rng, (v, d), dtype, scale=d**-0.5)
        t = rng.integers(0, v, n).astype(xp.int64)
        t[::17] = -100
        one = xp.asarray(1.0, dtype=xp.float32)

        def run():
            loss, res = lce.linear_cross_entropy_forward(x, w, t)
            return (loss,) + lce.linear_cross_entropy_backward(res, one)[:2]

        def check():
            got, want = run(), _unfused(xp, x, w, t)
            return max(harness.rel_err(a, b) for a, b in zip(got, want))

        return {"run": run, "baseline": lambda: _unfused(xp, x, w, t), "check": check}

    return dict(name="linear_cross_entropy_fwd_bwd", shape=(n, d, v), dtype=dtype, flops=3 * 2 * n * d * v,
                bytes=2 * (n * d + v * d) * isz + n * 8,  # read x, w, targets; write dx, dw
                baseline_name="unfused: x @ wᵀ, cross-entropy, dlogits @ w, dlogitsᵀ @ x", setup=setup,
                tol=3e-2 if dtype != "float32" else 1e-3)  # fmt: skip


def cases(size="large", sizes=None, dtype=None, xp=None):
    """GPU cases: forward + backward at N tokens x D dims x V classes (``sizes``: V values; N <= 16 V, D <= V)."""
    xp = harness.family_xp(xp)
    n, d = (8192, 768) if size == "large" else (1024, 256)
    out = []
    for i, dt in enumerate(harness.wanted_dtypes(dtype, ("float32", "float16"))):
        for j, v in enumerate(harness.pick_sizes(sizes, (32000,) if size == "large" else (8192,))):
            # a small vocabulary (--sizes 64 on the simulated device) gets as small a problem around it
            out.append(_case(xp, dt, min(n, 16 * v), min(d, v), v, 700 + 10 * i + j))
    return out


def cpu_cases(size="small", sizes=None, dtype="float32"):
    """CPU cases for ``conch bench`` without a GPU: the reference path at a small size."""
    import numpy as np

    return [_case(np, dtype or "float32", 512, 64, v, 790) for v in harness.pick_sizes(sizes, (4096,))]


# ----------------------------------------------------------------------------------------------------------------
# The script: conch tensors, fused against unfused, memory and time
# ----------------------------------------------------------------------------------------------------------------


def measure(device, tokens, dim, vocab, dtype="float32", rounds=3, chunk_size=None):
    """Rows comparing the fused loss with the unfused one on ``device`` (forward + backward of the mean loss)."""
    import numpy as np

    import conch
    import conch.nn.functional as F

    conch.manual_seed(0)
    dt = getattr(conch, dtype)
    x = (conch.randn(tokens, dim, device=device) * 1.0).to(dtype=dt).requires_grad_()
    w = (conch.randn(vocab, dim, device=device) * dim**-0.5).to(dtype=dt).requires_grad_()
    t = conch.randint(0, vocab, (tokens,), device=device)

    def fused():
        return F.linear_cross_entropy(x, w, t, chunk_size=chunk_size)

    def unfused():
        return F.cross_entropy(F.linear(x, w), t)

    def step(fn):
        x.grad = w.grad = None
        loss = fn()
        loss.backward()
        return loss

    out = {}
    for name, fn in (("fused", fused), ("unfused", unfused)):
        loss = step(fn)  # warm-up; also the values compared below
        out[name] = (loss.item(), x.grad.float().cpu().numpy(), w.grad.float().cpu().numpy())
        x.grad = w.grad = None
        out[name] += (_memory(fn, device)[1],)
    pairs = zip(out["fused"][1:3], out["unfused"][1:3])
    err = max(float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)) for a, b in pairs)
    ok = abs(out["fused"][0] - out["unfused"][0]) <= 1e-3 * abs(out["unfused"][0]) and err < 1e-2

    def timed(fn):
        def go():
            harness.conch_sync(device)
            t0 = time.perf_counter()
            step(fn)
            harness.conch_sync(device)
            return {"ms": 1e3 * (time.perf_counter() - t0)}

        return go

    tf, tu = harness.interleaved(timed(fused), timed(unfused), rounds=rounds)
    case = f"linear_cross_entropy {tokens}x{dim}x{vocab} {dtype}"
    common = dict(baseline_name="conch unfused", device=device, ok=bool(ok), grad_rel_err=err)
    return [
        harness.ratio_row(case, "peak MiB", out["fused"][3] / 2**20, out["unfused"][3] / 2**20, False, **common),
        harness.ratio_row(
            case, "ms/step", harness.median_of(tf, "ms"), harness.median_of(tu, "ms"), False, rounds=rounds, **common
        ),  # fmt: skip
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    p.add_argument("--tokens", type=int, default=8 * 1024, help="rows N (batch x sequence)")
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median)")
    p.add_argument("--chunk-size", type=int, default=None, help="rows per chunk (default: from the budget)")
    p.add_argument("--json", default=None, help="write results (schema conch-bench/1)")
    args = p.parse_args(argv)

    import conch

    wanted = {"all": ("cpu", "cuda")}.get(args.device, (args.device,))
    devices = [d for d in wanted if d == "cpu" or conch.cuda.is_available()]
    if not devices:
        print("no usable GPU (conch.cuda.is_available() is False): nothing to measure on cuda")
        return 0
    env, t0, rows = harness.Env.detect(force_cpu=devices == ["cpu"]), time.perf_counter(), []
    for dev in devices:
        rows += measure(dev, args.tokens, args.dim, args.vocab, args.dtype, args.rounds, args.chunk_size)
        if args.json:  # after each device: a run stopped by an outer timeout keeps what it measured
            harness.write_json(args.json, harness.make_payload("linear_cross_entropy", "e2e", rows, env))
    print(f"# fused linear cross-entropy vs linear + cross_entropy ({env.device}; forward + backward, mean loss)")
    print(harness.format_table(rows, harness.E2E_COLUMNS))
    print(f"# {time.perf_counter() - t0:.1f} s. ratio: unfused / fused (above 1: fused better); time: median of "
          f"{args.rounds} interleaved rounds")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
