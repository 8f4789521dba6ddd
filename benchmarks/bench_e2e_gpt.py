"""End-to-end: GPT training tokens per second and peak memory, conch against PyTorch eager in the same run.

The same decoder-only transformer in both frameworks (token + position embeddings, pre-LayerNorm blocks
of causal self-attention and a GELU MLP, final LayerNorm, untied LM head, cross-entropy on next tokens),
the same random token batch, the same initial weights (copied from conch into torch by parameter name)
and AdamW (lr 3e-4, weight decay 0.1). Attention is ``scaled_dot_product_attention(is_causal=True)``
in both when conch has it, else the explicit softmax(QKᵀ/√d + mask)V in both.

Tokens/s = batch x block / step time, median of ``--rounds`` interleaved runs. Peak memory (GPU): the
most bytes in use during one training step after warm-up: CuPy's memory pool for conch (see
``harness.CupyPeakMemory``), ``torch.cuda.max_memory_allocated`` for torch; both include weights,
gradients, optimizer state and activations. On the CPU the model is small and memory is not measured.

Usage::

    python benchmarks/bench_e2e_gpt.py [--device cpu|cuda|all] [--size small|large] [--json FILE]
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

CONFIGS = {
    # vocab, block (sequence length), width, layers, heads, batch
    "small": dict(vocab=512, block=64, d=128, layers=2, heads=4, batch=8),
    "large": dict(vocab=8192, block=512, d=512, layers=6, heads=8, batch=16),
}


def build_conch_gpt(cfg, device):
    """A GPT in conch.nn (defined here until conch.models ships one)."""
    import numpy as np

    import conch
    import conch.nn.functional as F
    from conch import nn

    sdpa = getattr(F, "scaled_dot_product_attention", None)

    class Attention(nn.Module):
        def __init__(self, d, heads, block):
            super().__init__()
            self.heads = heads
            self.qkv = nn.Linear(d, 3 * d)
            self.proj = nn.Linear(d, d)
            mask = np.triu(np.ones((block, block), dtype=bool), k=1)  # True above the diagonal: future tokens
            self.register_buffer("mask", conch.tensor(mask))

        def forward(self, x):
            B, T, C = x.shape
            H = self.heads
            qkv = self.qkv(x).reshape(B, T, 3, H, C // H).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            if sdpa is not None:
                y = sdpa(q, k, v, is_causal=True)
            else:
                att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(C // H))
                att = att.masked_fill(self.mask[:T, :T], float("-inf")).softmax(-1)
                y = att @ v
            return self.proj(y.transpose(1, 2).reshape(B, T, C))

    class Block(nn.Module):
        def __init__(self, d, heads, block):
            super().__init__()
            self.ln1 = nn.LayerNorm(d)
            self.attn = Attention(d, heads, block)
            self.ln2 = nn.LayerNorm(d)
            self.fc = nn.Linear(d, 4 * d, activation="gelu")  # fused bias + exact GELU
            self.out = nn.Linear(4 * d, d)

        def forward(self, x):
            x = x + self.attn(self.ln1(x))
            return x + self.out(self.fc(self.ln2(x)))

    class GPT(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.wte = nn.Embedding(c["vocab"], c["d"])
            self.wpe = nn.Embedding(c["block"], c["d"])
            self.blocks = nn.ModuleList([Block(c["d"], c["heads"], c["block"]) for _ in range(c["layers"])])
            self.ln_f = nn.LayerNorm(c["d"])
            self.head = nn.Linear(c["d"], c["vocab"], bias=False)

        def forward(self, idx, targets):
            B, T = idx.shape
            x = self.wte(idx) + self.wpe(conch.arange(T, device=idx.device))
            for blk in self.blocks:
                x = blk(x)
            logits = self.head(self.ln_f(x))
            return F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(B * T))

    return GPT(cfg).to(device), sdpa is not None


def build_torch_gpt(cfg, device, use_sdpa):
    """The same GPT in torch.nn, with the same parameter names."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Attention(nn.Module):
        def __init__(self, d, heads, block):
            super().__init__()
            self.heads = heads
            self.qkv = nn.Linear(d, 3 * d)
            self.proj = nn.Linear(d, d)
            self.register_buffer("mask", torch.ones(block, block, dtype=torch.bool).triu(1), persistent=False)

        def forward(self, x):
            B, T, C = x.shape
            H = self.heads
            q, k, v = self.qkv(x).reshape(B, T, 3, H, C // H).permute(2, 0, 3, 1, 4).unbind(0)
            if use_sdpa:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(C // H))
                y = att.masked_fill(self.mask[:T, :T], float("-inf")).softmax(-1) @ v
            return self.proj(y.transpose(1, 2).reshape(B, T, C))

    class Block(nn.Module):
        def __init__(self, d, heads, block):
            super().__init__()
            self.ln1 = nn.LayerNorm(d)
            self.attn = Attention(d, heads, block)
            self.ln2 = nn.LayerNorm(d)
            self.fc = nn.Linear(d, 4 * d)
            self.out = nn.Linear(4 * d, d)

        def forward(self, x):
            x = x + self.attn(self.ln1(x))
            return x + self.out(F.gelu(self.fc(self.ln2(x))))

    class GPT(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.wte = nn.Embedding(c["vocab"], c["d"])
            self.wpe = nn.Embedding(c["block"], c["d"])
            self.blocks = nn.ModuleList([Block(c["d"], c["heads"], c["block"]) for _ in range(c["layers"])])
            self.ln_f = nn.LayerNorm(c["d"])
            self.head = nn.Linear(c["d"], c["vocab"], bias=False)

        def forward(self, idx, targets):
            B, T = idx.shape
            x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
            for blk in self.blocks:
                x = blk(x)
            logits = self.head(self.ln_f(x))
            return F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(B * T))

    return GPT(cfg).to(device)


def n_params(cfg) -> int:
    d, v, t, L = cfg["d"], cfg["vocab"], cfg["block"], cfg["layers"]
    per_block = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)
    return v * d + t * d + L * per_block + 2 * d + d * v


def compare(device, size, seconds=2.0, rounds=3, check_steps=2, log=print) -> list:
    """Rows for one device: tokens/s, ms/step, peak memory (GPU), with the loss check."""
    import numpy as np
    import torch

    import conch

    cfg = CONFIGS[size]
    conch.manual_seed(0)
    torch.manual_seed(0)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # conch's fp32 matmuls may use TF32 on the GPU too
    cm, use_sdpa = build_conch_gpt(cfg, device)
    tm = build_torch_gpt(cfg, device, use_sdpa)
    harness.copy_params_to_torch(cm, tm, by_name=True)
    rng = np.random.default_rng(0)
    data = rng.integers(0, cfg["vocab"], (cfg["batch"], cfg["block"] + 1)).astype(np.int64)
    x_np, y_np = np.ascontiguousarray(data[:, :-1]), np.ascontiguousarray(data[:, 1:])
    cx, cy = conch.tensor(x_np, device=device), conch.tensor(y_np, device=device)
    tx, ty = torch.from_numpy(x_np).to(device), torch.from_numpy(y_np).to(device)
    copt = conch.optim.AdamW(cm.parameters(), lr=3e-4, weight_decay=0.1)
    topt = torch.optim.AdamW(tm.parameters(), lr=3e-4, weight_decay=0.1)

    def conch_step():
        copt.zero_grad(set_to_none=True)
        loss = cm(cx, cy)
        loss.backward()
        copt.step()
        return loss

    def torch_step():
        topt.zero_grad(set_to_none=True)
        loss = tm(tx, ty)
        loss.backward()
        topt.step()
        return loss

    closs = [float(conch_step().item()) for _ in range(check_steps)]
    tloss = [float(torch_step().item()) for _ in range(check_steps)]
    diff = float(np.max(np.abs(np.subtract(closs, tloss)) / np.maximum(np.abs(tloss), 1e-12)))
    tol = 1e-2 if device.startswith("cuda") else 1e-3
    ok = bool(np.isfinite(diff) and diff <= tol)
    log(f"[{device}] losses over {check_steps} steps: conch {closs}, torch {tloss} (max rel diff {diff:.2e})")

    cres, tres = harness.interleaved(
        lambda: harness.time_steps(conch_step, lambda: harness.conch_sync(device), seconds, min_steps=3),
        lambda: harness.time_steps(torch_step, lambda: harness.torch_sync(torch, device), seconds, min_steps=3),
        rounds,
    )
    tokens = cfg["batch"] * cfg["block"]
    c_tps = tokens * harness.median_of(cres, "steps_per_s")
    t_tps = tokens * harness.median_of(tres, "steps_per_s")
    name = f"gpt {size} L{cfg['layers']} d{cfg['d']} T{cfg['block']} b{cfg['batch']} V{cfg['vocab']}"
    extra = dict(device=device, dtype="float32", baseline_name=f"torch {torch.__version__}",
                 params=n_params(cfg), tokens_per_step=tokens, sdpa=use_sdpa,
                 loss_rel_diff=diff, ok=ok, check="ok" if ok else "LOSS MISMATCH", rounds=rounds)  # fmt: skip
    rows = [
        harness.ratio_row(name, "tokens/s", c_tps, t_tps, True, **extra),
        harness.ratio_row(name, "ms/step", 1e3 * tokens / c_tps, 1e3 * tokens / t_tps, False, **extra),
    ]
    if device.startswith("cuda"):
        with harness.CupyPeakMemory() as pm:
            conch_step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        torch_step()
        torch.cuda.synchronize()
        t_peak = torch.cuda.max_memory_allocated()
        rows.append(harness.ratio_row(name, "peak MiB", pm.peak / 2**20, t_peak / 2**20, False, **extra))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    p.add_argument("--size", choices=tuple(CONFIGS), default=None,
                   help="model size: default small on the CPU, large on the GPU")  # fmt: skip
    p.add_argument("--seconds", type=float, default=2.0, help="timed seconds per implementation and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", default=None, help="write results (schema conch-bench/1), updated after each device")
    args = p.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("bench_e2e_gpt: PyTorch is not installed; this benchmark compares against it", file=sys.stderr)
        return 2
    import conch

    gpu = conch.cuda.is_available() and torch.cuda.is_available()
    if args.device == "cuda" and not gpu:
        print("bench_e2e_gpt: --device cuda but conch or torch sees no GPU", file=sys.stderr)
        return 2
    devs = {"cpu": ["cpu"], "cuda": ["cuda"], "all": ["cpu"] + (["cuda"] if gpu else [])}[args.device]
    env = harness.Env.detect()
    rows = []
    for dev in devs:
        size = args.size or ("large" if dev == "cuda" else "small")
        try:
            rows += compare(dev, size, args.seconds, args.rounds)
        except Exception as e:  # one device failing must not lose the other's numbers
            rows.append({"case": f"gpt {size}", "device": dev, "metric": "tokens/s", "ok": False, "check": "ERROR",
                         "error": f"{type(e).__name__}: {e}"[:300]})  # fmt: skip
            print(f"FAILED on {dev}: {type(e).__name__}: {e}", file=sys.stderr)
        if args.json:
            harness.write_json(args.json, harness.make_payload("e2e_gpt", "e2e", rows, env, configs=CONFIGS))
    print(harness.format_table(rows, harness.E2E_COLUMNS))
    return 1 if any(not r.get("ok") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
