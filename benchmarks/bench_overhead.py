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
    python benchmarks/bench_overhead.py --mode ops       # per op and the 10-op chain, against PyTorch only

Per op (``--mode ops``, part of the default ``--mode all`` when torch imports): each of ``add``, ``mul``,
``add_scalar``, ``relu``, ``tanh``, ``sum``, ``sum_dim``, ``mean``, ``matmul``, ``reshape``, ``transpose`` on
(16, 16) float32, and a 10-op chain (add, mul, relu, matmul, add 1.0, tanh, reshape, mul, sum(dim), sum), each
in three passes: ``forward`` (graph recorded: the input requires grad), ``no_grad`` and ``fwd+bwd`` (the op then
``backward`` with a fixed upstream gradient, the leaf's ``.grad`` reset to None first, as ``zero_grad`` does).
Every (case, pass) times ``--calls`` calls in a loop on both clocks, CPU (``time.process_time``: every thread of
the process) and wall (``time.perf_counter``); conch and PyTorch alternate, the first of the two switching each
round, for ``--op-rounds`` rounds, and each keeps the median. One thread (``--threads``): PyTorch's intra-op
pool and the BLAS pools (threadpoolctl where it imports, else the ``*_NUM_THREADS`` variables set before NumPy
loads). A row's ``ratio`` is PyTorch time / conch time (above 1: conch faster); the issue's target, conch
within 1.2x of PyTorch, is ``ratio >= 0.833`` (the row's ``within_1_2x``).

Before and after (``--mode ops --before COMMIT [--ab-runs 4]``): ``git archive COMMIT framework kernels``
unpacked as a ``conch`` package in a temporary directory; this script then runs itself (``--mode ops --json``)
``--ab-runs`` times with that package first on ``PYTHONPATH`` ("before") and as many times with the ``conch``
this Python imports ("after"), alternating and taking turns at going first, and prints one table: per case and
pass, the median over the runs of conch's CPU-clock µs per call and, in brackets, conch time / PyTorch time
measured in the same run (docs/benchmarks.md's before/after tables)::

    python benchmarks/bench_overhead.py --mode ops --before c65d2d0 --ab-runs 4 --op-rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def _threads_from_argv(argv):
    """The ``--threads`` value, read before NumPy loads so that the BLAS pools start at that size."""
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return "1"


if __name__ == "__main__":  # only as a script: an importer (the tests) keeps its own thread settings
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, _threads_from_argv(sys.argv[1:]))

import numpy as np  # noqa: E402

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


# ---------------------------------------------------------------- per op, against PyTorch


def _op_cases(lib):
    """``name -> fn(x, other) -> tensor`` for one library (conch or torch): the same calls, spelled alike."""
    return {
        "add": lambda x, o: x + o["y"],
        "mul": lambda x, o: x * o["y"],
        "add_scalar": lambda x, o: x + 1.0,
        "relu": lambda x, o: x.relu(),
        "tanh": lambda x, o: x.tanh(),
        "sum": lambda x, o: x.sum(),
        "sum_dim": lambda x, o: x.sum(dim=1),
        "mean": lambda x, o: x.mean(),
        "matmul": lambda x, o: x @ o["w"],
        "reshape": lambda x, o: x.reshape(8, 32),
        "transpose": lambda x, o: x.transpose(0, 1),
        "chain10": _chain10,
    }


def _chain10(x, o):
    """Ten ops of a small model's kind: add, mul, relu, matmul, add a number, tanh, reshape, mul, sum(dim), sum."""
    h = ((x + o["y"]) * o["d"]).relu() @ o["w"]
    h = (h + 1.0).tanh().reshape(8, 32)
    return (h * o["h"]).sum(dim=1).sum()


OP_CASES = tuple(_op_cases(None))
OP_PASSES = ("forward", "no_grad", "fwd+bwd")


def _op_timer(lib, name, pss, calls):
    """A function that runs ``calls`` calls of case ``name`` in pass ``pss`` and returns (cpu s, wall s) per call."""
    rng = np.random.default_rng(0)
    arrs = {k: rng.standard_normal(s).astype(np.float32) for k, s in
            (("x", SHAPE), ("y", SHAPE), ("d", SHAPE), ("w", SHAPE), ("h", (8, 32)))}  # fmt: skip
    x = lib.tensor(arrs.pop("x"), requires_grad=True)
    other = {k: lib.tensor(v) for k, v in arrs.items()}
    fn = _op_cases(lib)[name]
    out = fn(x, other)
    g = lib.tensor(np.ones(tuple(out.shape), np.float32))
    no_grad = lib.no_grad

    if pss == "forward":

        def body():
            for _ in range(calls):
                fn(x, other)

    elif pss == "no_grad":

        def body():
            with no_grad():
                for _ in range(calls):
                    fn(x, other)

    else:

        def body():
            for _ in range(calls):
                x.grad = None
                fn(x, other).backward(g)

    def run():
        body()  # warm: caches, allocator, branch history
        c0, w0 = time.process_time(), time.perf_counter()
        body()
        return (time.process_time() - c0) / calls, (time.perf_counter() - w0) / calls

    return run


def _set_threads(torch, n):
    """``n`` intra-op threads for PyTorch and for the BLAS pools NumPy loaded (threadpoolctl, when present);
    returns a function that restores the previous settings (an importer, the tests, keeps its own)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        import threadpoolctl
    except ImportError:
        limits = None
    else:
        limits = threadpoolctl.threadpool_limits(n)

    def restore():
        torch.set_num_threads(prev)
        if limits is not None:
            limits.restore_original_limits()

    return restore


def bench_ops(calls, rounds, threads, cases=OP_CASES):
    """``{(case, pass): {"conch": [(cpu, wall)...], "torch": [...]}}``: interleaved rounds, conch and PyTorch
    taking turns at going first (so a burst of load from elsewhere hits both sides alike)."""
    import torch

    import conch

    restore = _set_threads(torch, threads)
    try:
        timers = {(c, p): {"conch": _op_timer(conch, c, p, calls), "torch": _op_timer(torch, c, p, calls)}
                  for c in cases for p in OP_PASSES}  # fmt: skip
        res = {k: {"conch": [], "torch": []} for k in timers}
        for r in range(rounds):
            order = ("conch", "torch") if r % 2 == 0 else ("torch", "conch")
            for k, t in timers.items():
                for who in order:
                    res[k][who].append(t[who]())
    finally:
        restore()
    return res


def op_rows(res, calls, rounds, threads):
    """One ``harness.ratio_row`` per (case, pass, clock): medians of the rounds, in microseconds per call."""
    import torch

    rows = []
    for (case, pss), r in res.items():
        for ci, clock in ((0, "cpu"), (1, "wall")):
            a = statistics.median(x[ci] for x in r["conch"]) * 1e6
            b = statistics.median(x[ci] for x in r["torch"]) * 1e6
            rows.append(harness.ratio_row(
                f"{case} {pss} {clock}", "us/call", a, b, False, baseline_name=f"torch {torch.__version__}",
                device="cpu", ok=bool(np.isfinite(a) and np.isfinite(b)), op=case, pass_=pss, clock=clock,
                calls=calls, rounds=rounds, threads=threads, shape=list(SHAPE),
                within_1_2x=bool(a <= 1.2 * b)))  # fmt: skip
    return rows


def format_ops(rows):
    """The per-op table: one line per case, conch/PyTorch time (x, target <= 1.2) per pass and clock."""
    cols = [(p, c) for p in OP_PASSES for c in ("cpu", "wall")]
    by = {(r["op"], r["pass_"], r["clock"]): r for r in rows}
    head = "| op | " + " | ".join(f"{p} {c} us (x torch)" for p, c in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for case in dict.fromkeys(r["op"] for r in rows):
        cells = []
        for p, c in cols:
            r = by.get((case, p, c))
            cells.append("" if r is None else f"{r['conch']:.2f} ({r['conch'] / r['baseline']:.2f}x)")
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
    p.add_argument("--mode", choices=("all", "chain", "ops"), default="all",
                   help="chain: the long chain; ops: per op and the 10-op chain against PyTorch; all: both "
                        "(ops only when torch imports)")  # fmt: skip
    p.add_argument("--calls", type=int, default=300, help="calls per timing in --mode ops (default 300)")
    p.add_argument("--op-rounds", type=int, default=7, help="interleaved rounds in --mode ops; medians (default 7)")
    p.add_argument("--threads", type=int, default=1, help="intra-op and BLAS threads (default 1)")
    p.add_argument("--before", metavar="COMMIT", help="--mode ops: before/after table against COMMIT's conch")
    p.add_argument("--ab-runs", type=int, default=4, help="runs of each side with --before (default 4)")
    args = p.parse_args(argv)
    if args.before:
        if args.mode != "ops":
            p.error("--before compares per-op timings: use it with --mode ops")
        extra = ["--calls", str(args.calls), "--op-rounds", str(args.op_rounds), "--threads", str(args.threads)]
        print(before_after(args.before, args.ab_runs, extra))
        return 0
    env = harness.Env.detect(force_cpu=True)  # per-op overhead is host work: never touch a GPU here
    rows, payload_params = [], {}
    if args.mode in ("all", "chain"):
        chain_rows, payload_params = _chain_main(args, env)
        rows += chain_rows
    if args.mode in ("all", "ops"):
        try:
            import torch  # noqa: F401
        except ImportError:
            if args.mode == "ops":
                raise
            print("per-op section skipped: torch does not import (it is the baseline)")
        else:
            res = bench_ops(args.calls, args.op_rounds, args.threads)
            orows = op_rows(res, args.calls, args.op_rounds, args.threads)
            print(
                f"\nper op on {SHAPE} float32, {args.threads} thread(s), median of {args.op_rounds} interleaved "
                f"rounds of {args.calls} calls; conch us/call (conch time / PyTorch time; target <= 1.2x)"
            )
            print(f"{env.device}, Python {env.info['python']}, {env.info['date']}, commit {env.info['commit']}")
            print(format_ops(orows))
            rows += orows
            payload_params.update(calls=args.calls, op_rounds=args.op_rounds, threads=args.threads)
    if args.json:
        harness.write_json(args.json, harness.make_payload("overhead", "e2e", rows, env, params=payload_params))
    return 0


def before_after(commit, runs, extra):
    """The before/after table (see the module docstring): ``runs`` alternating runs of ``--mode ops`` with
    COMMIT's conch and with the installed one, ``extra`` passed on to each; medians of the runs per cell."""
    import io
    import json
    import subprocess
    import tarfile
    import tempfile

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory(prefix="conch-before-") as tmp:
        archive = subprocess.run(["git", "-C", repo, "archive", commit, "framework", "kernels"], check=True,
                                 capture_output=True).stdout  # fmt: skip
        src = os.path.join(tmp, "src")
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(src, filter="data")
        pkg = os.path.join(tmp, "pkg")
        os.makedirs(pkg)
        os.rename(os.path.join(src, "framework"), os.path.join(pkg, "conch"))  # package-dir: conch = framework
        os.rename(os.path.join(src, "kernels"), os.path.join(pkg, "conch", "kernels"))
        results = {"before": [], "after": []}
        for i in range(runs):
            for side in ("before", "after") if i % 2 == 0 else ("after", "before"):
                out = os.path.join(tmp, f"{side}{i}.json")
                env = dict(os.environ)
                if side == "before":
                    env["PYTHONPATH"] = os.pathsep.join(filter(None, (pkg, env.get("PYTHONPATH"))))
                subprocess.run([sys.executable, os.path.abspath(__file__), "--mode", "ops", "--json", out, *extra],
                               env=env, cwd=tmp, check=True, capture_output=True)  # fmt: skip
                with open(out) as f:
                    results[side].append([r for r in json.load(f)["results"] if r["clock"] == "cpu"])
    head = "| op | " + " | ".join(f"{p}, {side}" for p in OP_PASSES for side in ("before", "after")) + " |"
    lines = [f"before: {commit}, after: the installed conch; median of {runs} alternating runs each, CPU clock, "
             "conch us/call (conch time / PyTorch time)", head, "|" + "---|" * (2 * len(OP_PASSES) + 1)]  # fmt: skip
    for case in dict.fromkeys(r["op"] for r in results["after"][0]):
        cells = []
        for pss in OP_PASSES:
            for side in ("before", "after"):
                rs = [r for run in results[side] for r in run if r["op"] == case and r["pass_"] == pss]
                us = statistics.median(r["conch"] for r in rs)
                cells.append(f"{us:.2f} ({statistics.median(r['conch'] / r['baseline'] for r in rs):.2f}x)")
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _chain_main(args, env):
    """The long chain against PyTorch (or NumPy): its rows and parameters, its table printed."""
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
    return rows, dict(params, baseline=base_name)


if __name__ == "__main__":
    sys.exit(main())
