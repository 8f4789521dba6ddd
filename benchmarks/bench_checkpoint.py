"""Gradient checkpointing: activation memory, peak memory and step time with and without it.

Cases:

* ``mlp`` (CPU, and the GPU when one is usable): a deep MLP, ``--layers`` Linear+ReLU layers of width
  ``--width`` on a ``--batch`` x width float32 input, loss ``y.pow(2).mean()``; plain against
  ``checkpoint_sequential(model, s, x)`` for each ``s`` in ``--segments``.
* ``gpt`` (GPU only): conch.models.GPT with ``--gpt-layers`` blocks, ``checkpointing`` off and on (each block
  checkpointed), one AdamW step per iteration.

Memory is measured in a separate, untimed step: on the CPU with ``tracemalloc`` (NumPy's allocations),
on the GPU with CuPy's pool (an allocator hook that records the peak of ``used_bytes()``). ``kept`` is what
the graph holds after the forward (the activations saved for backward), ``peak`` the maximum during the
whole forward + backward, both above what was allocated before the step (weights, existing gradients).
Rows (``harness.ratio_row``, JSON schema conch-bench/1) compare each checkpointed mode against ``conch plain``
on three metrics, ``kept MiB``, ``peak MiB`` and ``ms/step``; every ratio is plain / checkpointed, so above 1
means checkpointing did better: memory ratios above 1 are the saving, and the time ratio is below 1 by the
recompute's cost (0.75 is one extra forward for a 1:2 fwd:bwd).

Usage::

    python benchmarks/bench_checkpoint.py [--device cpu|cuda|all] [--layers 16] [--width 512] [--batch 256]
        [--segments 2,4,8] [--seconds 1] [--json FILE]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import tracemalloc

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import harness  # noqa: E402


def _memory(step_fwd, device):
    """(kept bytes after forward, peak bytes during forward + backward), above the level before the step."""
    gc.collect()
    if device == "cpu":
        tracemalloc.start()
        try:
            y = step_fwd()
            kept = tracemalloc.get_traced_memory()[0]
            y.backward()
            del y
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return kept, peak
    cp = harness.get_cupy()
    pool = cp.get_default_memory_pool()
    with harness.CupyPeakMemory() as pm:
        base = pm.peak
        y = step_fwd()
        cp.cuda.Device().synchronize()
        kept = pool.used_bytes() - base
        y.backward()
        del y
    return kept, pm.peak - base


def _mlp_cases(args, device):
    import conch
    from conch import nn
    from conch.checkpoint import checkpoint_sequential

    conch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(args.width, args.width, activation="relu") for _ in range(args.layers)])
    model.to(device)
    x = conch.randn(args.batch, args.width, device=device)
    params = list(model.parameters())

    def fwd(segments):
        if segments is None:
            return lambda: model(x).pow(2).mean()
        return lambda: checkpoint_sequential(model, segments, x).pow(2).mean()

    modes = [("plain", None)] + [(f"checkpoint s={s}", s) for s in args.segments if s <= args.layers]
    return f"mlp {args.layers}x{args.width} b{args.batch}", modes, fwd, params, None


def _gpt_cases(args, device):
    import conch
    from conch.models.gpt import GPT, GPTConfig

    conch.manual_seed(0)
    cfg = dict(n_layer=args.gpt_layers, n_head=args.gpt_heads, n_embd=args.gpt_embd, block_size=args.gpt_ctx,
               vocab_size=256)  # fmt: skip
    models = {}

    def fwd(ckpt):
        m = models.get(ckpt)
        if m is None:
            conch.manual_seed(0)
            m = models[ckpt] = GPT(GPTConfig(**cfg, checkpointing=ckpt)).to(device)
            m.train()
        idx = conch.randint(0, 256, (args.gpt_batch, args.gpt_ctx), device=device)

        def run():
            _, loss = m(idx, idx)
            return loss

        return run

    name = f"gpt {args.gpt_layers}L d{args.gpt_embd} T{args.gpt_ctx} b{args.gpt_batch}"
    return name, [("plain", False), ("checkpoint each block", True)], fwd, None, models


def _run(case_name, modes, fwd, params, models, device, seconds):
    rows = []
    for mode, arg in modes:
        run = fwd(arg)
        ps = params if params is not None else list(models[arg].parameters())

        def step(run=run, ps=ps):
            for p in ps:
                p.grad = None
            run().backward()

        step()  # warm-up, allocates what the step keeps
        for p in ps:
            p.grad = None
        kept, peak = _memory(run, device)
        timing = harness.time_steps(step, lambda: harness.conch_sync(device), seconds=seconds, min_steps=3)
        rows.append({"mode": mode, "kept": kept / 2**20, "peak": peak / 2**20, "ms": timing["ms_per_step"]})
    return _ratio_rows(case_name, device, rows)


def _ratio_rows(case_name, device, measured):
    """``harness.ratio_row`` rows: every mode after the first (plain) against it, on kept, peak and time."""
    plain, out = measured[0], []
    for m in measured[1:]:
        for metric, key in (("kept MiB", "kept"), ("peak MiB", "peak"), ("ms/step", "ms")):
            a, b = m[key], plain[key]
            ok = a == a and b == b and a >= 0 and b >= 0  # NaN-free and non-negative
            out.append(harness.ratio_row(f"{case_name} {m['mode']}", metric, a, b, False, baseline_name="conch plain",
                                         device=device, ok=bool(ok)))  # fmt: skip
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--segments", default="2,4,8", help="comma-separated segment counts for checkpoint_sequential")
    p.add_argument("--gpt-layers", type=int, default=12)
    p.add_argument("--gpt-embd", type=int, default=768)
    p.add_argument("--gpt-heads", type=int, default=12)
    p.add_argument("--gpt-ctx", type=int, default=1024)
    p.add_argument("--gpt-batch", type=int, default=8)
    p.add_argument("--no-gpt", action="store_true", help="skip the GPT case on the GPU")
    p.add_argument("--seconds", type=float, default=1.0, help="timed seconds per mode")
    p.add_argument("--json", default=None, help="write results (schema conch-bench/1)")
    args = p.parse_args(argv)
    args.segments = [int(s) for s in args.segments.split(",") if s]

    import conch

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not conch.cuda.is_available():
        if args.device == "cuda":
            print("no usable GPU (conch.cuda.is_available() is False): nothing to measure on cuda")
            return 0
        devices.remove("cuda")
    env = harness.Env.detect(force_cpu="cuda" not in devices)
    t0 = time.perf_counter()
    rows = []

    def save():
        if args.json:  # after each case: a run stopped by an outer timeout keeps what it measured
            harness.write_json(args.json, harness.make_payload("checkpoint", "e2e", rows, env))

    for dev in devices:
        rows += _run(*_mlp_cases(args, dev), dev, args.seconds)
        save()
        if dev == "cuda" and not args.no_gpt:
            rows += _run(*_gpt_cases(args, dev), dev, args.seconds)
            save()
    print(f"# gradient checkpointing ({env.device}; memory: {'tracemalloc' if 'cuda' not in devices else 'pool'})")
    print(harness.format_table(rows, harness.E2E_COLUMNS))
    print(f"# {time.perf_counter() - t0:.1f} s. ratio: plain / checkpointed (memory: the saving; time: below 1 by "
          "the recompute's cost)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
