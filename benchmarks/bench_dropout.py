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
    ap.add_argument("--cpu", action="store_true", help="the CPU comparison (the only mode as a script)")
    ap.add_argument("--n", type=int, default=1 << 20)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(cpu_main())
