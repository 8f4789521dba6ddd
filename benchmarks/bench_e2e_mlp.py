"""End-to-end: MLP 784-1024-1024-10 training steps per second with AdamW, conch against PyTorch in the same run.

The same model (Linear-ReLU-Linear-ReLU-Linear; conch fuses each ReLU into its Linear through
``activation="relu"`` unless ``--unfused``), the same random batch (256 x 784 float32, integer labels),
the same initial weights (copied from conch into torch) and the same optimizer (AdamW, lr 1e-3,
weight decay 1e-2). One step is ``zero_grad(); cross_entropy(model(x), y).backward(); opt.step()``.
Before timing, both run a few steps from the same weights and their losses must agree (the check column).
Steps/s are the median of ``--rounds`` interleaved runs (conch, torch, conch, torch, ...).

Usage::

    python benchmarks/bench_e2e_mlp.py [--device cpu|cuda|all] [--seconds 2] [--rounds 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import harness  # noqa: E402

SIZES = (784, 1024, 1024, 10)


def build_conch(device, fused=True, sizes=SIZES):
    """The conch MLP on ``device``: Linear layers with ReLU between them (fused into Linear when ``fused``)."""
    from conch import nn

    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = i == len(sizes) - 2
        if fused:
            layers.append(nn.Linear(a, b, activation=None if last else "relu"))
        else:
            layers.append(nn.Linear(a, b))
            if not last:
                layers.append(nn.ReLU())
    return nn.Sequential(*layers).to(device)


def build_torch(device, sizes=SIZES):
    """The same MLP in PyTorch (ReLU modules between the Linear layers)."""
    import torch

    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers).to(device)


def make_data(batch, sizes=SIZES, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], batch).astype(np.int64)
    return x, y


def compare(device, batch=256, seconds=2.0, rounds=3, fused=True, check_steps=3, log=print) -> list:
    """Rows (see :func:`harness.ratio_row`) for one device: steps/s, ms/step, and the loss check."""
    import numpy as np
    import torch

    import conch
    import conch.nn.functional as F

    conch.manual_seed(0)
    torch.manual_seed(0)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # conch's fp32 matmuls may use TF32 on the GPU too
    cm = build_conch(device, fused)
    tm = build_torch(device)
    harness.copy_params_to_torch(cm, tm, by_name=False)
    x_np, y_np = make_data(batch)
    cx, cy = conch.tensor(x_np, device=device), conch.tensor(y_np, device=device)
    tx, ty = torch.from_numpy(x_np).to(device), torch.from_numpy(y_np).to(device)
    copt = conch.optim.AdamW(cm.parameters(), lr=1e-3, weight_decay=1e-2)
    topt = torch.optim.AdamW(tm.parameters(), lr=1e-3, weight_decay=1e-2)

    def conch_step():
        copt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(cm(cx), cy)
        loss.backward()
        copt.step()
        return loss

    def torch_step():
        topt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(tm(tx), ty)
        loss.backward()
        topt.step()
        return loss

    closs = [float(conch_step().item()) for _ in range(check_steps)]
    tloss = [float(torch_step().item()) for _ in range(check_steps)]
    diff = float(np.max(np.abs(np.subtract(closs, tloss)) / np.maximum(np.abs(tloss), 1e-12)))
    tol = 1e-2 if device.startswith("cuda") else 1e-4
    ok = bool(np.isfinite(diff) and diff <= tol)
    log(f"[{device}] losses over {check_steps} steps: conch {closs}, torch {tloss} (max rel diff {diff:.2e})")

    def csync():
        harness.conch_sync(device)

    def tsync():
        harness.torch_sync(torch, device)

    cres, tres = harness.interleaved(
        lambda: harness.time_steps(conch_step, csync, seconds),
        lambda: harness.time_steps(torch_step, tsync, seconds),
        rounds,
    )
    c_sps, t_sps = harness.median_of(cres, "steps_per_s"), harness.median_of(tres, "steps_per_s")
    name = "mlp " + "-".join(map(str, SIZES)) + f" b{batch} adamw" + ("" if fused else " unfused")
    extra = dict(device=device, dtype="float32", baseline_name=f"torch {torch.__version__}",
                 batch=batch, loss_rel_diff=diff, ok=ok,
                 check="ok" if ok else "LOSS MISMATCH", torch_threads=torch.get_num_threads(),
                 rounds=rounds, steps_per_round=cres[0]["steps"])  # fmt: skip
    return [
        harness.ratio_row(name, "steps/s", c_sps, t_sps, True, **extra),
        harness.ratio_row(name, "ms/step", 1e3 / c_sps, 1e3 / t_sps, False, **extra),
    ]


def devices(choice):
    """CPU always (unless --device cuda); CUDA when both conch and torch see a GPU."""
    import torch

    import conch

    gpu = conch.cuda.is_available() and torch.cuda.is_available()
    if choice == "cpu":
        return ["cpu"]
    if choice == "cuda":
        if not gpu:
            raise SystemExit("bench_e2e_mlp: --device cuda but conch or torch sees no GPU")
        return ["cuda"]
    return ["cpu"] + (["cuda"] if gpu else [])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seconds", type=float, default=2.0, help="timed seconds per implementation and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--unfused", action="store_true", help="separate ReLU modules in conch too")
    p.add_argument("--json", default=None, help="write results (schema conch-bench/1), updated after each device")
    args = p.parse_args(argv)
    try:
        import torch  # noqa: F401
    except ImportError:
        print("bench_e2e_mlp: PyTorch is not installed; this benchmark compares against it", file=sys.stderr)
        return 2
    env = harness.Env.detect()
    rows, failed = [], []
    for dev in devices(args.device):
        try:
            rows += compare(dev, args.batch, args.seconds, args.rounds, fused=not args.unfused)
        except Exception as e:  # one device failing must not lose the other's numbers
            failed.append(f"{dev}: {type(e).__name__}: {e}")
            rows.append({"case": "mlp", "device": dev, "metric": "steps/s", "ok": False, "check": "ERROR",
                         "error": f"{type(e).__name__}: {e}"[:300]})  # fmt: skip
        if args.json:
            harness.write_json(args.json, harness.make_payload("e2e_mlp", "e2e", rows, env))
    print(harness.format_table(rows, harness.E2E_COLUMNS))
    for f in failed:
        print(f"FAILED: {f}", file=sys.stderr)
    bad = [r for r in rows if not r.get("ok")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
