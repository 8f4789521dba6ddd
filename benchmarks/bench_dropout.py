"""Microbenchmarks: fused counter-based dropout forward/backward vs CuPy (uniform draw, compare, multiply).

Dropout p=0.1 on a flat array of 2**26 elements (large) or 2**20 (small), float32 and float16 (``sizes``:
element counts; ``dtype``: one dtype). conch regenerates its Philox mask from (seed, offset) and stores
none; the baseline draws a stored uniform array with CuPy's generator, compares and multiplies. The check
rebuilds the exact mask with conch's reference Philox (``dropout_mask``), so a single flipped element fails.
Each case allocates its arrays in ``setup()``.

Example::

    conch bench dropout --sizes 16777216

As a script, the CPU reference path against plain NumPy (issue 16: the mask within 2x of ``rng.random`` and a
compare, then the multiply) and PyTorch's CPU dropout when it imports, as medians of interleaved rounds::

    python benchmarks/bench_dropout.py --cpu [--n 1048576] [--rounds 15] [--threads 1]

Without a GPU, ``--sass`` compiles the kernel for sm_90 (Triton's compiler and ptxas run on the CPU) beside the
previous one (``tl.rand``: a Philox-4x32-10 per element) and prints their static SASS instruction counts per
thread (straight-line code, eight elements per thread in both)::

    python benchmarks/bench_dropout.py --sass
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time

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


def compare_cases(n, p=P):
    """name -> {impl: fn} for the CPU comparison: conch draws a fresh seed per call, so its mask cache never serves
    a timed forward (the backward does read it, as in training)."""
    import numpy as np

    from conch.kernels import dropout as dk

    rng = np.random.default_rng(0)
    x = rng.standard_normal(n).astype(np.float32)
    dy = rng.standard_normal(n).astype(np.float32)
    xh = x.astype(np.float16)
    seeds = itertools.count(1)
    inv = np.float32(1 / (1 - p))

    def np_fwd_bwd():
        keep = rng.random(n) >= p
        return x * keep * inv, dy * keep * inv

    cases = {
        "mask": {"conch": lambda: dk.dropout_mask(n, p, next(seeds)), "numpy f64": lambda: rng.random(n) >= p,
                 "numpy f32": lambda: rng.random(n, dtype=np.float32) >= p},
        "forward f32": {"conch": lambda: dk.dropout_forward(x, p, seed=next(seeds)),
                        "numpy f64": lambda: x * (rng.random(n) >= p) * inv},
        "forward f16": {"conch": lambda: dk.dropout_forward(xh, p, seed=next(seeds)),
                        "numpy f64": lambda: (xh * (rng.random(n) >= p) * inv).astype(np.float16)},
        "forward+backward f32": {
            "conch": lambda: dk.dropout_backward(dk.dropout_forward(x, p, seed=next(seeds))[1], dy),
            "numpy f64": np_fwd_bwd},
    }  # fmt: skip
    torch = harness.get_torch()
    if torch is not None:
        xt, xr, dyt = torch.from_numpy(x), torch.tensor(x, requires_grad=True), torch.from_numpy(dy)
        cases["forward f32"]["torch"] = lambda: torch.nn.functional.dropout(xt, p)
        cases["forward+backward f32"]["torch"] = lambda: torch.nn.functional.dropout(xr, p).backward(dyt)
    return cases


def cpu_main(argv=None):
    """Medians of interleaved rounds (each round times every implementation once, in an order that flips every
    round); ratios are conch's time over each baseline's, so below 1 means conch is faster."""
    ap = argparse.ArgumentParser(description=cpu_main.__doc__)
    ap.add_argument("--cpu", action="store_true", help="the CPU comparison (the default)")
    ap.add_argument("--sass", action="store_true", help="static sm_90 instruction counts, old and new kernel")
    ap.add_argument("--n", type=int, default=1 << 20)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.sass:
        return sass_counts()
    import conch

    conch.set_num_threads(args.threads)
    torch = harness.get_torch()
    if torch is not None:
        torch.set_num_threads(args.threads)
    print(f"dropout p={P}, n={args.n}, {args.threads} thread(s), {args.rounds} interleaved rounds; "
          f"{harness.cpu_model()}, commit {harness.git_commit()}")  # fmt: skip
    print(f"{'case':<22} {'impl':<10} {'ms':>8} {'conch/impl':>10}")
    for name, impls in compare_cases(args.n).items():
        times = {k: [] for k in impls}
        for fn in impls.values():  # warm-up: first-call costs (allocations, imports) out of the timings
            fn()
        for r in range(args.rounds):
            for k in list(impls)[:: 1 if r % 2 == 0 else -1]:
                t0 = time.perf_counter()
                impls[k]()
                times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        for k, ms in med.items():
            ratio = "" if k == "conch" else f"{med['conch'] / ms:.2f}"
            print(f"{name:<22} {k:<10} {ms:>8.3f} {ratio:>10}")
    return 0


def sass_counts():
    """Static SASS instruction counts (all, and IMAD: the multiplies) per thread of the dropout kernel and of the
    previous tl.rand kernel, compiled for sm_90 with BLOCK = 1024 and 4 warps (eight elements per thread)."""
    os.environ.pop("TRITON_INTERPRET", None)
    import re

    import numpy as np
    import triton
    import triton.language as tl
    from triton.language import rand as tl_rand

    from conch.kernels import dropout as dk
    from conch.kernels.sim.compile import Ptr, _sim_driver

    @triton.jit
    def _tl_rand_dropout_kernel(X, Y, N, p, scale, seed, offset, BLOCK: tl.constexpr):
        idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        ok = idx < N
        x = tl.load(X + idx, mask=ok, other=0.0).to(tl.float32)
        keep = tl_rand(seed, offset + idx) >= p
        tl.store(Y + idx, tl.where(keep, x * scale, 0.0).to(Y.dtype.element_ty), mask=ok)

    ptr, n = Ptr(np.float32), 1 << 24
    line = re.compile(r"[0-9a-f-]{2}:[0-9a-f-]:[0-9a-f-]:[A-Z-]:[0-9]+\s")
    for name, fn in (("tl.rand, Philox-4x32 per element", _tl_rand_dropout_kernel),
                     ("Philox-4x64 per 8 elements", dk._dropout_kernel)):  # fmt: skip
        with _sim_driver(90):
            k = fn.warmup(ptr, ptr, n, 0.1, 1 / 0.9, 1234, 12345, grid=(n // 1024,), BLOCK=1024, num_warps=4)
        ins = [ln for ln in k.asm["sass"].splitlines() if line.match(ln.strip())]
        print(f"{name:<36} SASS {len(ins):4d}  IMAD {sum('IMAD' in ln for ln in ins):4d}  per thread (8 elements)")
    return 0


if __name__ == "__main__":
    sys.exit(cpu_main())
