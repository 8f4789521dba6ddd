"""Per-op Python overhead on the CPU: a chain of small ops, forward and backward, against PyTorch (or NumPy).

The chain is ``n`` ops alternating ``x + c``, ``x * d`` and ``tanh(x)`` on (16, 16) float32
tensors, so the arithmetic itself is negligible and the time is the framework's dispatch and
graph bookkeeping. Forward is timed with the graph recorded (the leaf requires grad); backward
is one ``.backward()`` through the whole chain. Time per op = median over ``--repeats`` runs
of (time of the pass) / n; conch and the baseline alternate for ``--rounds`` rounds and each
keeps its best round (robust to other processes on a shared machine).

The baseline is PyTorch CPU when ``torch`` imports (same chain, same shapes), else raw NumPy
with a hand-written backward (no autograd at all: the floor for any Python framework).

The JSON (``--json``, schema conch-bench/1 through ``harness.make_payload``) has one
``harness.ratio_row`` per pass with metric ``us/op``: ``ratio`` = baseline time / conch time, so
above 1 means conch has less overhead, as everywhere else in the benchmarks.

Usage::

    python benchmarks/bench_overhead.py                  # table on stdout
    python benchmarks/bench_overhead.py --json out.json  # also write the numbers
    python benchmarks/bench_overhead.py --chain add-mul  # the core alone (no activation kernel adapter)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import harness  # noqa: E402

SHAPE = (16, 16)


def _median_time(fn, repeats, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


CHAINS = {"add-mul-tanh": 3, "add-mul": 2}
_KINDS = [3]  # ops in the repeating pattern: 3 = add, mul, tanh; 2 = add, mul (no activation kernel)


def _chain(x, c, d, n, tanh):
    period = _KINDS[0]
    for i in range(n):
        k = i % period
        if k == 0:
            x = x + c
        elif k == 1:
            x = x * d
        else:
            x = tanh(x)
    return x


def bench_conch(n, repeats):
    import conch

    rng = np.random.default_rng(0)
    x0 = conch.tensor(rng.standard_normal(SHAPE).astype(np.float32), requires_grad=True)
    c = conch.tensor(rng.standard_normal(SHAPE).astype(np.float32))
    d = conch.tensor((rng.random(SHAPE) * 0.5 + 0.5).astype(np.float32))

    def fwd():
        return _chain(x0, c, d, n, conch.Tensor.tanh)

    def fwd_nograd():
        with conch.no_grad():
            return _chain(x0, c, d, n, conch.Tensor.tanh)

    state = {}

    def prep():
        state["y"] = fwd().sum()

    def bwd():
        state["y"].backward()

    return {
        "forward": _median_time(fwd, repeats) / n,
        "forward_no_grad": _median_time(fwd_nograd, repeats) / n,
        "backward": _time_backward(prep, bwd, repeats) / n,
    }


def _time_backward(prep, bwd, repeats):
    prep()
    bwd()
    times = []
    for _ in range(repeats):
        prep()
        t0 = time.perf_counter()
        bwd()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_torch(n, repeats):
    import torch

    rng = np.random.default_rng(0)
    x0 = torch.tensor(rng.standard_normal(SHAPE).astype(np.float32), requires_grad=True)
    c = torch.tensor(rng.standard_normal(SHAPE).astype(np.float32))
    d = torch.tensor((rng.random(SHAPE) * 0.5 + 0.5).astype(np.float32))

    def fwd():
        return _chain(x0, c, d, n, torch.tanh)

    def fwd_nograd():
        with torch.no_grad():
            return _chain(x0, c, d, n, torch.tanh)

    state = {}

    def prep():
        state["y"] = fwd().sum()

    def bwd():
        state["y"].backward()

    return {
        "forward": _median_time(fwd, repeats) / n,
        "forward_no_grad": _median_time(fwd_nograd, repeats) / n,
        "backward": _time_backward(prep, bwd, repeats) / n,
    }


def bench_numpy(n, repeats):
    """Raw NumPy: the forward chain, and its backward written by hand (what autograd would compute)."""
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal(SHAPE).astype(np.float32)
    c = rng.standard_normal(SHAPE).astype(np.float32)
    d = (rng.random(SHAPE) * 0.5 + 0.5).astype(np.float32)

    def fwd():
        return _chain(x0, c, d, n, np.tanh)

    def fwd_keep():
        outs, x = [], x0
        for i in range(n):
            k = i % _KINDS[0]
            x = x + c if k == 0 else x * d if k == 1 else np.tanh(x)
            outs.append(x)
        return outs

    state = {}

    def prep():
        state["outs"] = fwd_keep()

    def bwd():
        outs, g = state["outs"], np.ones(SHAPE, np.float32)
        for i in range(n - 1, -1, -1):
            k = i % _KINDS[0]
            if k == 1:
                g = g * d
            elif k == 2:
                g = g * (1 - outs[i] * outs[i])
        return g

    t = _median_time(fwd, repeats) / n
    return {"forward": t, "forward_no_grad": t, "backward": _time_backward(prep, bwd, repeats) / n}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ops", type=int, default=1000, help="length of the op chain (default 1000)")
    p.add_argument("--repeats", type=int, default=15, help="timed repeats; the median is reported (default 15)")
    p.add_argument(
        "--chain",
        choices=sorted(CHAINS),
        default="add-mul-tanh",
        help="op pattern: add-mul-tanh (default) or add-mul (the core alone, no activation kernel)",
    )
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best is kept (default 3)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    p.add_argument("--baseline", choices=("auto", "torch", "numpy"), default="auto")
    args = p.parse_args(argv)

    _KINDS[0] = CHAINS[args.chain]
    base = args.baseline
    if base in ("auto", "torch"):
        try:
            import torch

            base, base_version, base_fn = "torch", torch.__version__, bench_torch
        except ImportError:
            if base == "torch":
                raise
            base = "numpy"
    if base == "numpy":
        base_version, base_fn = np.__version__, bench_numpy
    # conch and the baseline alternate for --rounds rounds and each keeps its best round's medians, so a
    # burst of load from another process on a shared machine hits both sides alike and is mostly filtered out
    res = {"conch": {}, base: {}}
    for _ in range(args.rounds):
        for name, fn in (("conch", bench_conch), (base, base_fn)):
            r = fn(args.ops, args.repeats)
            for k, v in r.items():
                res[name][k] = min(v, res[name].get(k, float("inf")))

    env = harness.Env.detect(force_cpu=True)  # per-op overhead is host work: never touch a GPU here
    base_name = f"{base} {base_version}" + (" (hand-written backward)" if base == "numpy" else "")
    params = {"ops": args.ops, "chain": args.chain, "shape": list(SHAPE), "repeats": args.repeats,
              "rounds": args.rounds}  # fmt: skip
    case = f"{args.chain} x{args.ops} 16x16 f32"
    rows = []
    for k in ("forward", "forward_no_grad", "backward", "forward+backward"):
        if k == "forward+backward":
            a = (res["conch"]["forward"] + res["conch"]["backward"]) * 1e6
            b = (res[base]["forward"] + res[base]["backward"]) * 1e6
        else:
            a, b = res["conch"][k] * 1e6, res[base][k] * 1e6
        rows.append(harness.ratio_row(f"{case} {k}", "us/op", a, b, False, baseline_name=base_name, device="cpu",
                                      ok=bool(np.isfinite(a) and np.isfinite(b)), **params))  # fmt: skip
    print(
        f"per-op overhead: chain of {args.ops} {args.chain} ops on {SHAPE} float32, "
        f"best of {args.rounds} rounds of median of {args.repeats}"
    )
    print(f"{env.device}, Python {env.info['python']}, {env.info['date']}, commit {env.info['commit']}")
    print(harness.format_table(rows, harness.E2E_COLUMNS))
    if args.json:
        harness.write_json(args.json, harness.make_payload("overhead", "e2e", rows, env,
                                                           params=dict(params, baseline=base_name)))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
