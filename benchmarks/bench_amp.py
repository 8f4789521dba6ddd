"""Mixed precision on the GPU: training step time in float32, bf16 autocast and fp16 autocast + GradScaler.

The model is an MLP (``--layers`` Linear layers of width ``--width`` with fused ReLU, batch ``--batch``,
cross-entropy over 10 classes) trained with AdamW; with ``--gpt`` also conch.models.GPT. Modes:

    fp32          plain float32
    bf16          with conch.amp.autocast(dtype=conch.bfloat16)        (no scaler: bf16 has fp32's range)
    fp16          with conch.amp.autocast(dtype=conch.float16), no scaler (the scaler's cost is fp16+scaler - fp16)
    fp16+scaler   fp16 with GradScaler: scale(loss).backward(); step(opt); update()

Rows (``harness.ratio_row``, metric ms/step, JSON schema conch-bench/1): each mixed-precision mode against
``conch fp32`` (ratio = fp32 time / mode time, the speedup: above 1 means the mode is faster), and
``scaler cost``: fp16+scaler against ``conch fp16 (no scaler)`` (ratio = fp16 time / fp16+scaler time, so
0.99 is a 1% cost; ``scaler_pct`` gives it as a percentage of the step, target under 1%). ``ok`` says the
final loss is finite. On a machine without a usable GPU it says so and exits 0: NumPy has no fast
float16/bfloat16 matmul, so CPU numbers would measure nothing useful.

Usage::

    python benchmarks/bench_amp.py [--layers 8] [--width 4096] [--batch 4096] [--gpt] [--seconds 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import math
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import harness  # noqa: E402

MODES = ("fp32", "bf16", "fp16", "fp16+scaler")


def _mlp(args):
    import conch
    from conch import nn

    layers = [nn.Linear(args.width, args.width, activation="relu") for _ in range(args.layers - 1)]
    model = nn.Sequential(*layers, nn.Linear(args.width, 10)).to(args.device)
    x = conch.randn(args.batch, args.width, device=args.device)
    y = conch.randint(0, 10, (args.batch,), device=args.device)
    return model, lambda m: conch.nn.functional.cross_entropy(m(x), y)


def _gpt(args):
    import conch
    from conch.models.gpt import GPT, GPTConfig

    cfg = GPTConfig(n_layer=args.gpt_layers, n_head=12, n_embd=768, block_size=args.gpt_ctx, vocab_size=256)
    model = GPT(cfg).to(args.device)
    idx = conch.randint(0, 256, (args.gpt_batch, args.gpt_ctx), device=args.device)
    return model, lambda m: m(idx, idx)[1]


def _measure(build, mode, args):
    import conch

    conch.manual_seed(0)
    model, loss_fn = build(args)
    opt = conch.optim.AdamW(model.parameters(), lr=1e-4)
    dt = {"fp32": None, "bf16": conch.bfloat16, "fp16": conch.float16, "fp16+scaler": conch.float16}[mode]
    scaler = conch.amp.GradScaler(enabled=mode == "fp16+scaler")
    stats = {"skipped": 0, "loss": None}

    def step():
        opt.zero_grad()
        with conch.amp.autocast(dtype=dt or conch.float16, enabled=dt is not None):
            loss = loss_fn(model)
        scaler.scale(loss).backward()
        stats["skipped"] += not scaler.step(opt)
        scaler.update()
        stats["loss_t"] = loss

    t = harness.time_steps(step, lambda: harness.conch_sync(args.device), seconds=args.seconds, min_steps=5)
    stats["loss"] = float(stats.pop("loss_t").item())
    return {"mode": mode, "ms_per_step": t["ms_per_step"], "loss": stats["loss"], "skipped": stats["skipped"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--gpt", action="store_true", help="also time conch.models.GPT (12 layers, d768)")
    p.add_argument("--gpt-layers", type=int, default=12)
    p.add_argument("--gpt-ctx", type=int, default=1024)
    p.add_argument("--gpt-batch", type=int, default=8)
    p.add_argument("--seconds", type=float, default=2.0, help="timed seconds per mode")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="auto: the GPU, or a message and exit 0 without one; cpu: run anyway (checks the script, "
                        "its timings mean nothing)")  # fmt: skip
    p.add_argument("--json", default=None, help="write results (schema conch-bench/1), after each model")
    args = p.parse_args(argv)

    import conch

    if args.device == "auto":
        args.device = "cuda" if conch.cuda.is_available() else None
    elif args.device == "cuda" and not conch.cuda.is_available():
        args.device = None
    if args.device is None:
        msg = (
            "bench_amp: no usable GPU (conch.cuda.is_available() is False). Mixed precision pays off on GPU "
            "tensor cores; NumPy has no fast float16/bfloat16 matmul, so there is nothing to measure here."
        )
        print(msg)
        if args.json:
            harness.write_json(args.json, harness.make_payload("amp", "e2e", [], None, skipped=msg))
        return 0
    env = harness.Env.detect(force_cpu=args.device == "cpu")
    params = {k: v for k, v in vars(args).items() if k != "json"}
    cases = [(f"mlp {args.layers}x{args.width} b{args.batch}", _mlp)]
    if args.gpt:
        cases.append((f"gpt {args.gpt_layers}L d768 T{args.gpt_ctx} b{args.gpt_batch}", _gpt))
    rows = []
    for name, build in cases:
        res = {}
        for m in MODES:
            res[m] = _measure(build, m, args)
            print(f"{name} {m}: {res[m]['ms_per_step']:.3f} ms/step, loss {res[m]['loss']:.4f}", flush=True)
        fp32 = res["fp32"]["ms_per_step"]
        for m in MODES[1:]:
            r = res[m]
            rows.append(harness.ratio_row(f"{name} {m}", "ms/step", r["ms_per_step"], fp32, False,
                                          baseline_name="conch fp32", device=env.device, loss=r["loss"],
                                          skipped=r["skipped"], ok=math.isfinite(r["loss"])))  # fmt: skip
        with_s, without = res["fp16+scaler"], res["fp16"]
        rows.append(harness.ratio_row(
            f"{name} scaler cost", "ms/step", with_s["ms_per_step"], without["ms_per_step"], False,
            baseline_name="conch fp16 (no scaler)", device=env.device, loss=with_s["loss"],
            scaler_pct=100.0 * (with_s["ms_per_step"] - without["ms_per_step"]) / with_s["ms_per_step"],
            ok=math.isfinite(with_s["loss"])))  # fmt: skip
        if args.json:  # after each model: a run stopped by an outer timeout keeps what it measured
            harness.write_json(args.json, harness.make_payload("amp", "e2e", rows, env, params=params))
    print(f"# mixed precision training steps ({env.device}); ratio: baseline time / mode time")
    print(harness.format_table(rows, harness.E2E_COLUMNS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
