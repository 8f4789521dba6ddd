"""Import time of ``conch``: median of fresh interpreters, the modules it loads, the slowest of them.

Each run starts a new Python (``-c``) that times ``import conch`` with ``time.perf_counter`` (NumPy already
imported first, so the figure is conch's own cost, and a second line times NumPy alone), lists the modules
the import added, and reports whether CuPy, Triton or ml_dtypes came with it (none should: ml_dtypes loads at the
first bfloat16 use, Triton at the first Triton launch, CuPy with the first GPU array). One more run with
``-X importtime`` gives the slowest modules. Runs of conch and of the baseline (``import torch`` when it is
installed, else ``import numpy``) alternate, ``--runs`` each, and each keeps the median.

The issue's target: ``import conch`` under 0.5 s on an idle machine (the ``total`` row: NumPy plus conch).

A second part times the first CPU training step of a small ``conch.models`` GPT (forward through embeddings,
LayerNorm, fused linear + GELU, causal attention, the fused linear cross-entropy; backward; a fused AdamW step)
in a fresh interpreter after ``import conch``: its seconds, the resident memory it adds (``/proc/self/statm``)
and the modules it loads. The reference path needs no Triton, so none should be heavy. Its baseline is the same
step with ``import triton`` inside the timed region, which is what that step cost while the kernel modules
imported Triton at module level (before the ``kernels/_triton/`` split).
Ratios as in every benchmark: baseline time / conch time (above 1: conch imports faster than the baseline).

Usage::

    python benchmarks/bench_import.py                 # table on stdout
    python benchmarks/bench_import.py --json out.json
    python benchmarks/bench_import.py --runs 15 --top 15
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import harness  # noqa: E402

HEAVY = ("cupy", "cupyx", "triton", "ml_dtypes", "torch")

_PROBE = """
import sys, time, json
t0 = time.perf_counter()
import numpy
t1 = time.perf_counter()
before = set(sys.modules)
import {mod}
t2 = time.perf_counter()
new = sorted(set(sys.modules) - before)
print(json.dumps({{"numpy_s": t1 - t0, "import_s": t2 - t1, "total_s": t2 - t0, "modules": new}}))
"""


_STEP_PROBE = """
import sys, time, json, resource
import numpy
import conch
from conch.models import GPT, GPTConfig

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()

before, r0 = set(sys.modules), rss()
t0 = time.perf_counter()
{pre}
conch.manual_seed(0)
model = GPT(GPTConfig(vocab_size=256, block_size=32, n_layer=2, n_head=2, n_embd=64))
opt = conch.optim.AdamW(model.parameters(), fused=True)
idx = conch.randint(0, 256, (4, 32))
_, loss = model(idx, idx, return_logits=False)
loss.backward()
opt.step()
t1 = time.perf_counter()
print(json.dumps({{"step_s": t1 - t0, "rss_mib": (rss() - r0) / 2**20, "modules": sorted(set(sys.modules) - before)}}))
"""


def _env():
    # the CPU reference path, as a user's first import: no simulator, no interpreter, no forced kernel mode
    drop = ("CONCH_SIMULATE_GPU", "CONCH_TEST_DEVICE", "TRITON_INTERPRET", "CONCH_KERNELS")
    return {k: v for k, v in os.environ.items() if k not in drop}


def one_import(mod="conch"):
    """Time ``import mod`` in a fresh interpreter: seconds for NumPy, for mod after NumPy, both; modules added."""
    r = subprocess.run([sys.executable, "-c", _PROBE.format(mod=mod)], capture_output=True, text=True, env=_env(),
                       check=True, timeout=300)  # fmt: skip
    return json.loads(r.stdout.strip().splitlines()[-1])


def first_step(pre=""):
    """A fresh interpreter's first GPT training step on the CPU after ``import conch`` (``pre``: code run first,
    inside the timed region): {"step_s", "rss_mib" (resident memory added), "modules" (loaded by the step)}."""
    r = subprocess.run([sys.executable, "-c", _STEP_PROBE.format(pre=pre)], capture_output=True, text=True,
                       env=_env(), check=True, timeout=300)  # fmt: skip
    return json.loads(r.stdout.strip().splitlines()[-1])


def slowest(mod="conch", top=10):
    """The ``top`` modules with the largest self time under ``-X importtime``: [(module, self ms, cumulative ms)]."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import numpy, {mod}"], capture_output=True,
                       text=True, env=_env(), check=True, timeout=300)  # fmt: skip
    rows = []
    for line in r.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cum_us, name = (p.strip() for p in line[len("import time:") :].split("|"))
        rows.append((name, int(self_us) / 1e3, int(cum_us) / 1e3))
    return sorted(rows, key=lambda r: -r[1])[:top]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=9, help="fresh interpreters per side; medians (default 9)")
    p.add_argument("--top", type=int, default=10, help="slowest modules to list (default 10)")
    p.add_argument("--baseline", choices=("auto", "torch", "numpy"), default="auto")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    args = p.parse_args(argv)

    base = args.baseline
    if base == "auto":
        try:
            import importlib.util

            base = "torch" if importlib.util.find_spec("torch") is not None else "numpy"
        except (ImportError, ValueError):
            base = "numpy"
    conch_runs, base_runs = [], []
    for _ in range(max(1, args.runs)):  # alternate, so a burst of load from elsewhere hits both sides alike
        conch_runs.append(one_import("conch"))
        base_runs.append(one_import(base) if base != "numpy" else one_import("numpy.linalg"))
    med = {k: statistics.median(r[k] for r in conch_runs) for k in ("numpy_s", "import_s", "total_s")}
    bmed = {k: statistics.median(r[k] for r in base_runs) for k in ("import_s", "total_s")}
    mods = conch_runs[-1]["modules"]
    heavy = sorted({m.split(".")[0] for m in mods} & set(HEAVY))
    env = harness.Env.detect(force_cpu=True)
    bname = base if base == "numpy" else f"import {base}"
    rows = [
        harness.ratio_row("import conch (after numpy)", "s", med["import_s"], bmed["import_s"], False,
                          baseline_name=bname, device="cpu", ok=not heavy, runs=args.runs),
        harness.ratio_row("numpy + conch (target < 0.5 s)", "s", med["total_s"], bmed["total_s"], False,
                          baseline_name=bname, device="cpu", ok=med["total_s"] < 0.5, runs=args.runs),
    ]  # fmt: skip
    step_runs, eager_runs = [], []
    for _ in range(max(1, args.runs)):  # alternating again: the step as it is, and with Triton imported in it
        step_runs.append(first_step())
        eager_runs.append(first_step("import triton"))
    smed = {k: statistics.median(r[k] for r in step_runs) for k in ("step_s", "rss_mib")}
    emed = {k: statistics.median(r[k] for r in eager_runs) for k in ("step_s", "rss_mib")}
    step_heavy = sorted({m.split(".")[0] for m in step_runs[-1]["modules"]} & set(HEAVY))
    ename = "same step + import triton"
    rows += [
        harness.ratio_row("first CPU GPT step after import conch", "s", smed["step_s"], emed["step_s"], False,
                          baseline_name=ename, device="cpu", ok=not step_heavy, runs=args.runs),
        harness.ratio_row("first CPU GPT step after import conch", "RSS MiB added", smed["rss_mib"],
                          emed["rss_mib"], False, baseline_name=ename, device="cpu", ok=not step_heavy,
                          runs=args.runs),
    ]  # fmt: skip
    top = slowest("conch", args.top)
    print(f"import conch: median of {args.runs} fresh interpreters, alternating with {bname}")
    print(f"{env.device}, Python {env.info['python']}, {env.info['date']}, commit {env.info['commit']}")
    print(harness.format_table(rows, harness.E2E_COLUMNS))
    print(f"\nnumpy itself: {med['numpy_s'] * 1e3:.0f} ms; modules conch adds: {len(mods)}; "
          f"heavy ones among them: {heavy or 'none'}")  # fmt: skip
    compiled = sorted({m.split(".")[0] for m in step_runs[-1]["modules"]} & {"numba", "llvmlite"})
    print(f"first CPU GPT step: modules it loads: {len(step_runs[-1]['modules'])}; heavy ones among them: "
          f"{step_heavy or 'none'}; the compiled CPU kernels' (kernels/_jit.py, counted in the step's time and RSS "
          f"above, CONCH_NUMBA=0 to leave out): {compiled or 'none'}")  # fmt: skip
    print(f"slowest {len(top)} modules (self ms, cumulative ms) under -X importtime:")
    for name, self_ms, cum_ms in top:
        print(f"  {self_ms:8.1f} {cum_ms:8.1f}  {name}")
    if args.json:
        harness.write_json(args.json, harness.make_payload("import", "e2e", rows, env, params={
            "runs": args.runs, "baseline": bname, "modules_added": len(mods), "heavy_modules": heavy,
            "step_modules_added": len(step_runs[-1]["modules"]), "step_heavy_modules": step_heavy,
            "slowest": [list(t) for t in top]}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
