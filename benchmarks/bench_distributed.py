"""Distributed: all-reduce bus bandwidth over message sizes and DDP step times at 1 and N ranks, overlap on and off.

All-reduce: for each message size, the median time of ``--repeats`` float32 all-reduces (SUM) between barriers;
algbw = bytes / time and, as nccl-tests reports it, busbw = algbw * 2(n-1)/n (the bytes each rank's link
carries in a ring all-reduce, comparable across rank counts; 0 at one rank, where algbw is shown instead). The
MPI backend on the CPU, NCCL on CUDA tensors.

DDP: one training step (zero_grad, forward, cross-entropy, backward, AdamW step) of the MLP of
bench_e2e_mlp.py (global batch 256, 64 on CUDA) and the GPT of bench_e2e_gpt.py (its config's batch: small, 8
sequences, on the CPU; large, 16, on CUDA), every rank on a local batch of global / N (``--batch`` sets both):

* ``plain`` in the 1-rank job: the model without DDP on that local batch, the baseline (one process doing
  half the work when N = 2);
* ``ddp`` at 1 rank: DDP's own overhead (no communication partner; the GPU target is below 5%);
* ``ddp`` at N ranks with the overlap on (buckets all-reduced during backward) and off (all after backward);
* ``plain`` at N ranks: the same local step without DDP, each rank on its own (no communication): against it,
  DDP's own cost at N ranks; against the 1-rank ``plain``, what N processes sharing the cores and memory cost.

Rows (ratio > 1: better than the baseline measured in the same run): N-rank DDP against the 1-rank plain step,
whose ratio is the scaling efficiency (throughput of N ranks / N x one rank; the issue's target is a step at
most 1.3x the baseline, efficiency >= 0.77); overlap on against off. Each rank count runs as its own
``python -m conch.distributed.run`` job (each rank imports conch), ``--rounds`` times alternately; inside a job
the variants are timed interleaved, ``--inner`` times each, and the medians reported. On a shared or loaded
machine the numbers are indicative only.

Usage::

    python benchmarks/bench_distributed.py [--device cpu|cuda] [--nproc 2] [--models mlp,gpt] [--json FILE]
    python benchmarks/bench_distributed.py --device cuda --quick      # device_check.sh's short stage
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import harness  # noqa: E402

CPU_SIZES = [4 << 10, 64 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20]
GPU_SIZES = [64 << 10, 1 << 20, 16 << 20, 64 << 20, 256 << 20]
MODELS = ("mlp", "gpt")


# ------------------------------------------------------------------------------------------------ one rank
def _sync_fn(device):
    if device != "cuda":
        return lambda: None
    from conch.kernels import _cupy

    cp = _cupy.get_cupy()
    return lambda: cp.cuda.Device().synchronize()


def _agreed_count(n):
    """Rank 0's step count on every rank: a rank that ran one step more would wait in a collective forever."""
    import conch
    import conch.distributed as dist

    t = conch.tensor([int(n)])
    dist.broadcast(t, src=0)
    return int(t.item())


def _allreduce_rows(device, sizes, repeats, sync):
    import conch
    import conch.distributed as dist

    w = dist.get_world_size()
    out = []
    for nbytes in sizes:
        t = conch.ones(nbytes // 4, dtype=conch.float32, device=device)
        for _ in range(2):
            dist.all_reduce(t)
        times = []
        for _ in range(repeats):
            dist.barrier()
            sync()
            t0 = time.perf_counter()
            dist.all_reduce(t)
            sync()
            times.append(time.perf_counter() - t0)
        dt = statistics.median(times)
        alg = nbytes / dt / 1e9
        out.append({"bytes": nbytes, "seconds": dt, "algbw": alg, "busbw": alg * 2 * (w - 1) / w})
    return out


def _model_and_step(name, device, local_batch, ddp, overlap):
    """``step()`` for one training step of model ``name`` (optionally wrapped in DDP) on a local batch."""
    import numpy as np

    import conch
    import conch.nn.functional as F

    conch.manual_seed(0)
    rng = np.random.default_rng(conch.distributed.get_rank())
    if name == "mlp":
        import bench_e2e_mlp

        model = bench_e2e_mlp.build_conch(device)
        xn, yn = bench_e2e_mlp.make_data(local_batch, seed=conch.distributed.get_rank())
        x, y = conch.tensor(xn, device=device), conch.tensor(yn, device=device)

        def loss_of(m):
            return F.cross_entropy(m(x), y)
    else:
        import bench_e2e_gpt

        cfg = dict(bench_e2e_gpt.CONFIGS["large" if device == "cuda" else "small"], batch=local_batch)
        model, _ = bench_e2e_gpt.build_conch_gpt(cfg, device)
        data = rng.integers(0, cfg["vocab"], (local_batch, cfg["block"] + 1))
        x = conch.tensor(np.ascontiguousarray(data[:, :-1]), device=device)
        y = conch.tensor(np.ascontiguousarray(data[:, 1:]), device=device)

        def loss_of(m):
            return m(x, y)

    if ddp:
        from conch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model)
        model.overlap = overlap
    opt = conch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        loss_of(model).backward()
        opt.step()

    return step


def _time(step, sync, seconds):
    """ms per step over about ``seconds`` (a step count every rank agrees on)."""
    for _ in range(2):
        step()
    sync()
    t0 = time.perf_counter()
    step()
    sync()
    n = _agreed_count(max(3, min(1000, seconds / max(time.perf_counter() - t0, 1e-6))))
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    sync()
    return 1e3 * (time.perf_counter() - t0) / n


def worker(args):
    """One job: every rank runs this; rank 0 writes the results to ``args.worker``."""
    import conch.distributed as dist

    dist.init_process_group()
    w = dist.get_world_size()
    sync = _sync_fn(args.device)
    res = {"world": w, "allreduce": [], "steps": {}}
    if w > 1 or args.device == "cuda":  # one CPU rank has nothing to measure: MPI returns at once
        res["allreduce"] = _allreduce_rows(args.device, args.sizes, args.repeats, sync)
    for name in args.models:
        variants = {"plain": (False, True), "ddp": (True, True)}
        if w > 1:  # plain at N ranks: the same local step without DDP (what the ranks' sharing the cores costs)
            variants = {"plain": (False, True), "ddp_on": (True, True), "ddp_off": (True, False)}
        steps = {k: _model_and_step(name, args.device, args.local_batch[name], *v) for k, v in variants.items()}
        times = {k: [] for k in steps}
        for _ in range(args.inner):  # interleaved, so load drift hits every variant alike
            for k, step in steps.items():
                times[k].append(_time(step, sync, args.seconds))
        res["steps"][name] = {k: statistics.median(v) for k, v in times.items()}
    if dist.get_rank() == 0:
        with open(args.worker, "w") as f:
            json.dump(res, f)
    dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------ the driver
def _job(n, args, extra):
    from conch.distributed import run

    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        cmd = run.command(n, os.path.abspath(__file__), ["--worker", path, *extra])
        # every job, the 1-rank baseline included, gives each process the threads a rank of the N-rank job has:
        # the comparison is then DDP's cost (communication, bookkeeping), not one process using all the cores
        env = run.environment(args.nproc)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
        if r.returncode != 0:
            raise RuntimeError(f"{n}-rank job failed (exit {r.returncode}): {r.stderr[-1500:]}")
        with open(path) as f:
            return json.load(f)
    finally:
        os.remove(path)


def rows_from(results, nproc, device, batches):
    """The result rows from the jobs' JSON (``results[n]``: one dict per round for n ranks)."""
    rows = []
    backend = "nccl" if device == "cuda" else "mpi"
    top = max(results)
    for i, nbytes in enumerate(r["bytes"] for r in results[top][0]["allreduce"]):
        vals = [r["allreduce"][i] for r in results[top]]
        busbw = statistics.median(v["busbw"] for v in vals)
        algbw = statistics.median(v["algbw"] for v in vals)
        metric, value = ("busbw GB/s", busbw) if top > 1 else ("algbw GB/s", algbw)
        size = f"{nbytes >> 20} MiB" if nbytes >= 1 << 20 else f"{nbytes >> 10} KiB"
        rows.append(harness.ratio_row(f"all_reduce {backend} {top} ranks {size}", metric, value, None,
                                      baseline_name="-", device=device, ok=True,
                                      time_ms=1e3 * statistics.median(v["seconds"] for v in vals)))  # fmt: skip
    for name in results[1][0]["steps"]:
        one = [r["steps"][name] for r in results[1]]
        plain = statistics.median(s["plain"] for s in one)
        ddp1 = statistics.median(s["ddp"] for s in one)
        local = batches[name] // nproc
        rows.append(harness.ratio_row(f"ddp {name} 1 rank, batch {local}", "ms/step", ddp1, plain, False,
                                      baseline_name="no DDP", device=device, ok=True,
                                      overhead=ddp1 / plain - 1))  # fmt: skip
        if nproc > 1 and nproc in results:
            many = [r["steps"][name] for r in results[nproc]]
            on = statistics.median(s["ddp_on"] for s in many)
            off = statistics.median(s["ddp_off"] for s in many)
            rows.append(harness.ratio_row(
                f"ddp {name} {nproc} ranks x batch {local}, overlap on", "ms/step", on, plain, False,
                baseline_name=f"1 process, batch {local}", device=device, ok=True, step_vs_one=on / plain,
                target="<= 1.3x" if name == "mlp" else None, target_met=(on / plain <= 1.3) if name == "mlp" else None,
            ))  # fmt: skip
            rows.append(harness.ratio_row(f"ddp {name} {nproc} ranks x batch {local}, overlap off", "ms/step", off,
                                          plain, False, baseline_name=f"1 process, batch {local}", device=device,
                                          ok=True, step_vs_one=off / plain))  # fmt: skip
            rows.append(harness.ratio_row(f"ddp {name} {nproc} ranks: overlap on vs off", "ms/step", on, off, False,
                                          baseline_name="overlap off", device=device, ok=True))  # fmt: skip
            alone = statistics.median(s["plain"] for s in many)
            rows.append(harness.ratio_row(f"ddp {name} {nproc} ranks: DDP vs no DDP at {nproc} ranks", "ms/step", on,
                                          alone, False, baseline_name=f"{nproc} ranks without DDP", device=device,
                                          ok=True, overhead=on / alone - 1))  # fmt: skip
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--nproc", type=int, default=2, help="ranks of the multi-rank job (on CUDA: at most the GPUs)")
    p.add_argument("--models", default="mlp,gpt", help="comma-separated: mlp, gpt")
    p.add_argument("--batch", type=int, default=None, help="global batch of every model (default: per model)")
    p.add_argument("--sizes", default=None, help="all-reduce sizes in bytes, comma-separated")
    p.add_argument("--repeats", type=int, default=10, help="all-reduces timed per size")
    p.add_argument("--seconds", type=float, default=0.5, help="timed seconds per variant and inner round")
    p.add_argument("--inner", type=int, default=3, help="interleaved timings per variant inside a job")
    p.add_argument("--rounds", type=int, default=2, help="1-rank and N-rank jobs, alternately")
    p.add_argument("--timeout", type=float, default=300, help="seconds before a job counts as hung")
    p.add_argument("--quick", action="store_true", help="one round, MLP only, three sizes: a short smoke stage")
    p.add_argument("--json", default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--local-batch", default=None, help=argparse.SUPPRESS)  # "mlp:128,gpt:4"
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    if args.quick:
        args.models, args.rounds, args.inner, args.seconds, args.repeats = ["mlp"], 1, 2, 0.2, 5
    sizes = args.sizes or ",".join(map(str, GPU_SIZES if args.device == "cuda" else CPU_SIZES))
    args.sizes = [int(s) for s in sizes.split(",")][: 3 if args.quick else None]
    if args.worker:
        args.local_batch = {m: int(b) for m, b in (kv.split(":") for kv in args.local_batch.split(","))}
        worker(args)
        return 0

    import conch

    if args.device == "cuda":
        if not conch.cuda.is_available() or not conch.distributed.is_nccl_available():
            print("bench_distributed: --device cuda needs a GPU and CuPy with NCCL; skipped", file=sys.stderr)
            return 0
        if getattr(conch.kernels._cupy.get_cupy(), "__simulated__", False):  # NCCL over MPI, kernels interpreted
            print("bench_distributed: the simulated GPU times nothing real (its NCCL paths are tested by "
                  "tests/test_distributed_nccl_sim.py); skipped", file=sys.stderr)  # fmt: skip
            return 0
        args.nproc = max(1, min(args.nproc, conch.cuda.device_count()))  # NCCL: one rank per GPU
    if not conch.distributed.is_available():
        print("bench_distributed: mpi4py is missing (pip install 'conch[distributed]'); skipped", file=sys.stderr)
        return 0
    import bench_e2e_gpt

    gpu = args.device == "cuda"
    batches = {"mlp": 64 if gpu else 256, "gpt": bench_e2e_gpt.CONFIGS["large" if gpu else "small"]["batch"]}
    batches = {m: max(args.nproc, (args.batch or b) - (args.batch or b) % args.nproc) for m, b in batches.items()}
    extra = ["--device", args.device, "--models", ",".join(args.models), "--sizes", ",".join(map(str, args.sizes)),
             "--repeats", str(args.repeats), "--seconds", str(args.seconds), "--inner", str(args.inner),
             "--local-batch", ",".join(f"{m}:{b // args.nproc}" for m, b in batches.items())]  # fmt: skip
    counts = sorted({1, args.nproc})
    results = {n: [] for n in counts}
    env = harness.Env.detect()
    rows = []
    try:
        for _ in range(args.rounds):
            for n in counts:
                results[n].append(_job(n, args, extra))
        rows = rows_from(results, args.nproc, args.device, batches)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        rows.append({"case": "distributed", "device": args.device, "ok": False, "check": "ERROR",
                     "error": str(e)[:300]})  # fmt: skip
        print(f"FAILED: {e}", file=sys.stderr)
    if args.json:
        harness.write_json(args.json, harness.make_payload("distributed", "e2e", rows, env, nproc=args.nproc,
                                                           batches=batches))  # fmt: skip
    print(harness.format_table(rows, harness.E2E_COLUMNS))
    for r in rows:
        if r.get("target"):
            print(f"target {r['case']}: {r['step_vs_one']:.2f}x the 1-process step ({r['target']}: "
                  f"{'met' if r['target_met'] else 'NOT met'})")  # fmt: skip
    return 1 if any(not r.get("ok") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
