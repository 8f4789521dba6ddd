"""CPU training steps (CNN, GPT, MLP) and the cheap CPU kernels, conch against PyTorch in the same run, as ratios.

Sections (``--only`` picks some, comma-separated; all by default):

- ``models``: one training step (zero_grad, forward, loss, backward, AdamW step) of the ``conch train --model cnn``
  CNN (8x8 digits, batch 64), the same CNN on 28x28 images, a GPT (conch.models.GPT: 4 layers, 128 wide, 64
  tokens, batch 16) and MLPs (the default ``conch train`` MLP 64-256-256-10 with exact GELU, batch 64, and a
  784-1024-1024-10 one, batch 256), each beside its PyTorch twin (same layers, same shapes, same optimizer), at
  1 and 2 threads (``conch.set_num_threads``, ``torch.set_num_threads``).
- ``micro``: the 28x28 and 8x8 CNNs' two convolutions forward+backward (against PyTorch and against conch's composite
  im2col + matmul-op path that ops.ConvNd replaced, and against conch's NumPy path, the compiled kernels off),
  max/avg pooling 2x2 on (64, 16, 28, 28) forward+backward (and max pooling 3x3/stride 2/padding 1, against
  conch's own im2col path; each also against conch's NumPy path), exact GELU forward and backward on
  2**20 floats, dropout (p = 0.1) on 2**20 floats (forward with a new seed per call, and forward+backward, where
  the backward finds the forward's mask in conch's cache): conch against PyTorch and against plain NumPy (a
  reshape-max, ``0.5 x (1 + scipy erf(x/√2))``, ``x * (rng.random(shape) >= p) / (1 - p)``); GELU also against
  conch's own NumPy path ("numpy path": the compiled kernels off, as ``CONCH_NUMBA=0``).
- ``busy``: wall time of the default ``conch train`` job (a subprocess) on an idle machine and with two busy-loop
  processes running throughout (spawned before, stopped after): the ratio busy/idle (target: at most 3).
- ``sweep``: the pool's crossover: gelu forward at 2**14..2**20 elements with the pool forced off and forced on
  (where ``kernels/_threads.MIN_PARALLEL`` should lie).

Each measurement is the median over ``--rounds`` rounds in which conch and PyTorch alternate (the order flips every
round), of wall clock (``time.perf_counter``) and CPU clock (``time.process_time``, all threads of the process);
each round times ``--steps`` calls after one warm-up call. Ratios are conch / PyTorch (below 1: conch is faster).
Numbers from a machine shared with other jobs are indicative only: re-measure on an idle machine.

Usage::

    python benchmarks/bench_cpu_models.py [--only models,micro,busy,sweep] [--rounds 5] [--steps 5]
                                          [--threads 1,2] [--json FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np


def _clock(fn, steps):
    """(wall, cpu) seconds per call of fn over ``steps`` calls."""
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - w0) / steps, (time.process_time() - c0) / steps


def interleaved(fns, rounds, steps, setup=None):
    """Median (wall, cpu) per call for each of ``fns`` (a dict), alternating them round by round (the order flips
    every round); ``setup(name)`` runs before each one's turn (thread settings)."""
    names = list(fns)
    times = {n: [] for n in names}
    for n in names:  # warm-up: first-call costs (imports, caches, allocator) stay out of the numbers
        if setup:
            setup(n)
        fns[n]()
    for r in range(rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            if setup:
                setup(n)
            times[n].append(_clock(fns[n], steps))
    return {n: (statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts)) for n, ts in times.items()}


# ---------------------------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------------------------


def _conch_cnn(side):
    import conch
    from conch.models import CNN

    conch.manual_seed(0)
    model = CNN(image_size=side, num_classes=10, dropout=0.1)
    x = conch.randn(64, 1, side, side)
    y = conch.randint(0, 10, (64,))
    return model, (x,), y


def _torch_cnn(side):
    import torch
    from torch import nn

    torch.manual_seed(0)
    s = side // 4
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.1), nn.Linear(32 * s * s, 10),
    )  # fmt: skip
    return model, (torch.randn(64, 1, side, side),), torch.randint(0, 10, (64,))


def _conch_mlp(d_in, hidden, batch):
    import conch
    from conch.models import MLP

    conch.manual_seed(0)
    model = MLP(d_in, hidden, 10, activation="gelu")
    return model, (conch.randn(batch, d_in),), conch.randint(0, 10, (batch,))


def _torch_mlp(d_in, hidden, batch):
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers, d = [], d_in
    for h in hidden:
        layers += [nn.Linear(d, h), nn.GELU()]
        d = h
    model = nn.Sequential(*layers, nn.Linear(d, 10))
    return model, (torch.randn(batch, d_in),), torch.randint(0, 10, (batch,))


GPT_CFG = dict(vocab_size=256, block_size=64, n_layer=4, n_head=4, n_embd=128, batch=16)


def _conch_gpt():
    import conch
    from conch.models import GPT, GPTConfig

    conch.manual_seed(0)
    c = GPT_CFG
    model = GPT(GPTConfig(vocab_size=c["vocab_size"], block_size=c["block_size"], n_layer=c["n_layer"],
                          n_head=c["n_head"], n_embd=c["n_embd"]))  # fmt: skip
    idx = conch.randint(0, c["vocab_size"], (c["batch"], c["block_size"]))
    return model, (idx,), conch.randint(0, c["vocab_size"], (c["batch"], c["block_size"]))


def _torch_gpt():
    """conch.models.GPT's twin: pre-LayerNorm blocks, causal SDPA, tanh-GELU MLP, tied LM head."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    c = GPT_CFG
    d, nh = c["n_embd"], c["n_head"]

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.c_attn, self.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.fc, self.proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=2)
            q, k, v = (z.reshape(b, t, nh, d // nh).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
            x = x + self.c_proj(y)
            return x + self.proj(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(c["vocab_size"], d), nn.Embedding(c["block_size"], d)
            self.h = nn.ModuleList(Block() for _ in range(c["n_layer"]))
            self.ln_f = nn.LayerNorm(d)
            self.lm_head = nn.Linear(d, c["vocab_size"], bias=False)
            self.lm_head.weight = self.wte.weight

        def forward(self, idx, targets):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
            for blk in self.h:
                x = blk(x)
            logits = self.lm_head(self.ln_f(x))
            return logits, F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    torch.manual_seed(0)
    idx = torch.randint(0, c["vocab_size"], (c["batch"], c["block_size"]))
    return GPT(), (idx,), torch.randint(0, c["vocab_size"], (c["batch"], c["block_size"]))


def _step_fn(framework, model, inputs, target):
    """One training step: zero_grad, forward, loss, backward, AdamW step."""
    if framework == "conch":
        import conch

        opt = conch.optim.AdamW(model.parameters(), lr=1e-3)
        ce = conch.nn.functional.cross_entropy
    else:
        import torch

        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        ce = torch.nn.functional.cross_entropy
    gpt = inputs[0].ndim == 2 and target.ndim == 2

    def step():
        opt.zero_grad()
        loss = model(*inputs, target)[1] if gpt else ce(model(*inputs), target)
        loss.backward()
        opt.step()

    return step


MODELS = {
    "cnn 8x8 (conch train --model cnn)": (lambda: _conch_cnn(8), lambda: _torch_cnn(8)),
    "cnn 28x28": (lambda: _conch_cnn(28), lambda: _torch_cnn(28)),
    "gpt 4x128, 16x64 tokens": (_conch_gpt, _torch_gpt),
    "mlp 64-256-256-10 (conch train)": (lambda: _conch_mlp(64, [256, 256], 64), lambda: _torch_mlp(64, [256, 256], 64)),
    "mlp 784-1024-1024-10, batch 256": (lambda: _conch_mlp(784, [1024, 1024], 256),
                                        lambda: _torch_mlp(784, [1024, 1024], 256)),
}  # fmt: skip


def _set_threads(n):
    import torch

    import conch

    conch.set_num_threads(n)
    torch.set_num_threads(n)


def bench_models(args):
    rows = []
    for name, (mk_conch, mk_torch) in MODELS.items():
        if args.match not in name:
            continue
        fns = {"conch": _step_fn("conch", *mk_conch()), "torch": _step_fn("torch", *mk_torch())}
        for t in args.threads:
            res = interleaved(fns, args.rounds, args.steps, setup=lambda _n, t=t: _set_threads(t))
            rows.append(_ratio_row(f"{name} step", t, res))
            print(_fmt(rows[-1]), flush=True)
    return rows


def _ratio_row(name, threads, res, base="torch"):
    (cw, cc), (bw, bc) = res["conch"], res[base]
    return dict(case=name, threads=threads, baseline=base, conch_ms=cw * 1e3, base_ms=bw * 1e3,
                wall_ratio=cw / bw, cpu_ratio=cc / bc)  # fmt: skip


def _fmt(r):
    return (f"{r['case']:<46} threads={r['threads']}  conch {r['conch_ms']:8.2f} ms  {r['baseline']} "
            f"{r['base_ms']:8.2f} ms  wall x{r['wall_ratio']:.2f}  cpu x{r['cpu_ratio']:.2f}")  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# micro
# ---------------------------------------------------------------------------------------------------------------


def _numpy_path(fn):
    """``fn`` run with conch's compiled CPU kernels off (kernels/_jit.py): the NumPy reference path."""
    from conch.kernels import _jit

    def run():
        prev = _jit.set_enabled(False)
        try:
            return fn()
        finally:
            _jit.set_enabled(prev)

    return run if _jit.enabled() else None  # without compiled kernels "conch" is already the NumPy path


def _micro_cases():
    import torch
    from scipy.special import erf

    import conch
    import conch.nn.functional as F

    rng = np.random.default_rng(0)
    x4 = rng.standard_normal((64, 16, 28, 28)).astype(np.float32)
    g4 = rng.standard_normal((64, 16, 14, 14)).astype(np.float32)
    x1 = rng.standard_normal(1 << 20).astype(np.float32)
    dy1 = rng.standard_normal(1 << 20).astype(np.float32)
    xc4, xt4 = conch.tensor(x4, requires_grad=True), torch.tensor(x4, requires_grad=True)
    gc4, gt4 = conch.tensor(g4), torch.tensor(g4)
    xc1, xt1 = conch.tensor(x1), torch.tensor(x1)
    g7 = rng.standard_normal((64, 16, 14, 14)).astype(np.float32)  # 3x3/2/1 on 28x28 also gives 14x14
    gc7, gt7 = conch.tensor(g7), torch.tensor(g7)

    def im2col_maxpool():  # conch's own im2col path (what 3x3/2/1 took before), forward and backward
        res = F._max_pool_arrays(x4, (3, 3), (2, 2), (1, 1), (1, 1), (14, 14))
        xc4.grad = None
        conch.ops.MaxPool2d.apply(xc4, res=res).backward(gc7)

    numpy_path = _numpy_path

    def pool(fn, x, g):
        def run():
            x.grad = None
            fn(x, 2).backward(g)

        return run

    def np_maxpool():  # the same work in plain NumPy: a reshape-max forward, the first-max mask backward
        v = x4.reshape(64, 16, 14, 2, 14, 2)
        m = v.max(axis=(3, 5))
        return (v == m[:, :, :, None, :, None]) * g4[:, :, :, None, :, None]

    def np_avgpool():
        m = x4.reshape(64, 16, 14, 2, 14, 2).mean(axis=(3, 5))
        return m, np.broadcast_to((g4 / 4)[:, :, :, None, :, None], (64, 16, 14, 2, 14, 2)).reshape(x4.shape).copy()

    from conch.kernels import activations as A
    from conch.kernels import dropout as dk

    def np_gelu():
        return 0.5 * x1 * (1 + erf(x1 * np.float32(0.7071067811865476)))

    def np_gelu_bwd():
        cdf = 0.5 * (1 + erf(x1 * np.float32(0.7071067811865476)))
        return dy1 * (cdf + x1 * np.exp(-0.5 * x1 * x1) * np.float32(0.3989422804014327))

    drng = np.random.default_rng(1)
    seeds = itertools.count(1)  # conch's mask cache must not serve a timed forward
    xd, dyt1 = torch.tensor(x1, requires_grad=True), torch.tensor(dy1)

    def drop_fwd():
        return dk.dropout_forward(x1, 0.1, seed=next(seeds))

    def drop_fwd_bwd():  # the NumPy path's backward reads the forward's mask from its cache; the compiled one redraws
        return dk.dropout_backward(dk.dropout_forward(x1, 0.1, seed=next(seeds))[1], dy1)

    x_small, dy_small = x1[: 64 * 128].reshape(64, 128), dy1[: 64 * 128].reshape(64, 128)
    xd_small, dyt_small = torch.tensor(x_small, requires_grad=True), torch.tensor(dy_small)

    def drop_small():
        return dk.dropout_backward(dk.dropout_forward(x_small, 0.1, seed=next(seeds))[1], dy_small)

    def np_dropout_fwd_bwd():
        keep = drng.random(x1.shape) >= 0.1
        return x1 * keep / np.float32(0.9), dy1 * keep / np.float32(0.9)

    def conv_case(c, side, cout, x_grad):
        """The 28x28 CNN's conv layers, forward+backward: conch (ops.ConvNd), PyTorch, and conch's composite
        path before it (Im2col, then the weight expanded over the batch @ patches through the matmul op)."""
        xa = rng.standard_normal((64, c, side, side)).astype(np.float32)
        wa = rng.standard_normal((cout, c, 3, 3)).astype(np.float32)
        ga = rng.standard_normal((64, cout, side, side)).astype(np.float32)
        xc, wc, bc = (conch.tensor(a, requires_grad=r) for a, r in ((xa, x_grad), (wa, True), (wa[:, 0, 0, 0], True)))
        xt, wt, bt = (torch.tensor(a, requires_grad=r) for a, r in ((xa, x_grad), (wa, True), (wa[:, 0, 0, 0], True)))
        gc, gt = conch.tensor(ga), torch.tensor(ga)
        geom = ((3, 3), (1, 1), (1, 1), (1, 1, 1, 1), (side, side))

        def run(x, w, b, g, fn):
            def step():
                x.grad = w.grad = b.grad = None
                fn(x, w, b).backward(g)

            return step

        def composite(x, w, b):
            cols = conch.ops.Im2col.apply(x, geom=geom)
            y = w.reshape(cout, c * 9).expand(64, cout, c * 9) @ cols + b.reshape(cout, 1)
            return y.reshape(64, cout, side, side)

        conch_fn = run(xc, wc, bc, gc, lambda x, w, b: F.conv2d(x, w, b, padding=1))
        return {"conch": conch_fn,
                "torch": run(xt, wt, bt, gt, lambda x, w, b: torch.nn.functional.conv2d(x, w, b, padding=1)),
                "im2col": run(xc, wc, bc, gc, composite), "numpy path": numpy_path(conch_fn)}  # fmt: skip

    mp2, mp3, ap2 = (pool(F.max_pool2d, xc4, gc4), pool(lambda x, _k: F.max_pool2d(x, 3, 2, 1), xc4, gc7),
                     pool(F.avg_pool2d, xc4, gc4))  # fmt: skip
    cases = {
        "conv2d 3x3/1/1 (64,1,28,28)->16 fwd+bwd (no dx)": conv_case(1, 28, 16, False),
        "conv2d 3x3/1/1 (64,16,14,14)->32 fwd+bwd": conv_case(16, 14, 32, True),
        "conv2d 3x3/1/1 (64,1,8,8)->16 fwd+bwd (no dx)": conv_case(1, 8, 16, False),  # the 8x8 CNN's layers
        "conv2d 3x3/1/1 (64,16,4,4)->32 fwd+bwd": conv_case(16, 4, 32, True),
        "max_pool2d 2x2 (64,16,28,28) fwd+bwd": {
            "conch": mp2, "torch": pool(torch.nn.functional.max_pool2d, xt4, gt4), "numpy": np_maxpool,
            "numpy path": numpy_path(mp2)},
        "max_pool2d 3x3/2/1 (64,16,28,28) fwd+bwd": {  # overlapping windows; the im2col path as the baseline
            "conch": mp3, "torch": pool(lambda x, _k: torch.nn.functional.max_pool2d(x, 3, 2, 1), xt4, gt7),
            "im2col": im2col_maxpool, "numpy path": numpy_path(mp3)},
        "avg_pool2d 2x2 (64,16,28,28) fwd+bwd": {
            "conch": ap2, "torch": pool(torch.nn.functional.avg_pool2d, xt4, gt4), "numpy": np_avgpool,
            "numpy path": numpy_path(ap2)},
        "gelu exact fwd 2**20": {  # "numpy path": conch with the compiled kernels off (CONCH_NUMBA=0's path)
            "conch": lambda: F.gelu(xc1), "torch": lambda: torch.nn.functional.gelu(xt1), "numpy": np_gelu,
            "numpy path": numpy_path(lambda: F.gelu(xc1))},
        "gelu exact bwd 2**20": {
            "conch": lambda: A.dz_from_saved(x1, dy1, "gelu", 0.0, np.float32),
            "numpy path": numpy_path(lambda: A.dz_from_saved(x1, dy1, "gelu", 0.0, np.float32)),
            # dy as a tensor made once (dyt1): a torch.tensor copy per call would be timed on torch's side only
            "torch": lambda: torch.ops.aten.gelu_backward(dyt1, xt1), "numpy": np_gelu_bwd},
        "dropout p=0.1 fwd 2**20, a new seed per call": {
            "conch": drop_fwd, "torch": lambda: torch.nn.functional.dropout(xt1, 0.1),
            "numpy": lambda: x1 * (drng.random(x1.shape) >= 0.1) / np.float32(0.9), "numpy path": numpy_path(drop_fwd)},
        "dropout p=0.1 fwd+bwd 2**20": {
            "conch": drop_fwd_bwd, "torch": lambda: torch.nn.functional.dropout(xd, 0.1).backward(dyt1),
            "numpy": np_dropout_fwd_bwd, "numpy path": numpy_path(drop_fwd_bwd)},
        "dropout p=0.1 fwd+bwd (64,128), the 8x8 CNN's": {
            "conch": drop_small, "torch": lambda: torch.nn.functional.dropout(xd_small, 0.1).backward(dyt_small),
            "numpy path": numpy_path(drop_small)},
    }  # fmt: skip
    # "numpy path": conch with the compiled kernels off (absent where they are off anyway)
    return {name: {k: f for k, f in fns.items() if f is not None} for name, fns in cases.items()}


def bench_micro(args):
    rows = []
    for name, fns in _micro_cases().items():
        if args.match not in name:
            continue
        for t in args.threads:
            res = interleaved(fns, args.rounds, args.steps, setup=lambda _n, t=t: _set_threads(t))
            for base in (b for b in fns if b != "conch"):
                rows.append(_ratio_row(name, t, res, base))
                print(_fmt(rows[-1]), flush=True)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# busy machine
# ---------------------------------------------------------------------------------------------------------------


def _spin(stop):
    while not stop.is_set():
        pass


def _train_wall(epochs):
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "conch", "train", "--out", out, "--device", "cpu"]
        if epochs:
            cmd += ["--epochs", str(epochs)]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - t0


def bench_busy(args, n_busy=2):
    """conch train (the default job) idle and beside ``n_busy`` busy-loop processes, alternating."""
    idle, busy = [], []
    ctx = mp.get_context("spawn")
    for r in range(max(args.rounds // 2, 1)):
        idle.append(_train_wall(args.train_epochs))
        stop = ctx.Event()
        procs = [ctx.Process(target=_spin, args=(stop,), daemon=True) for _ in range(n_busy)]
        for p in procs:
            p.start()
        try:
            busy.append(_train_wall(args.train_epochs))
        finally:
            stop.set()
            for p in procs:
                p.join(timeout=5)
                if p.is_alive():
                    p.terminate()
        print(f"  round {r}: idle {idle[-1]:.1f} s, busy {busy[-1]:.1f} s", flush=True)
    row = dict(case=f"conch train (default job{'' if not args.train_epochs else f', {args.train_epochs} epochs'})",
               idle_s=statistics.median(idle), busy_s=statistics.median(busy))  # fmt: skip
    row["busy_ratio"] = row["busy_s"] / row["idle_s"]
    print(f"{row['case']}: idle {row['idle_s']:.1f} s, with {n_busy} busy loops {row['busy_s']:.1f} s, "
          f"x{row['busy_ratio']:.2f} (target <= 3)", flush=True)  # fmt: skip
    return [row]


# ---------------------------------------------------------------------------------------------------------------
# pool crossover
# ---------------------------------------------------------------------------------------------------------------


def bench_sweep(args):
    from conch.kernels import _threads
    from conch.kernels._act import act_ref

    rows = []
    saved = _threads.MIN_PARALLEL
    try:
        _threads.set_num_threads(max(args.threads))
        for e in range(14, 21):
            x = np.random.default_rng(e).standard_normal(1 << e).astype(np.float32)

            def setup(name):
                _threads.MIN_PARALLEL = 1 if name == "conch" else 1 << 62

            res = interleaved({"conch": lambda x=x: act_ref(x, "gelu"), "serial": lambda x=x: act_ref(x, "gelu")},
                              args.rounds, args.steps, setup)  # fmt: skip
            rows.append(_ratio_row(f"gelu 2**{e}: pool on vs off", max(args.threads), res, "serial"))
            print(_fmt(rows[-1]), flush=True)
    finally:
        _threads.MIN_PARALLEL = saved
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="models,micro,busy,sweep")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    ap.add_argument("--train-epochs", type=int, default=0, help="busy: epochs of the conch train job (0: default)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--match", default="", help="models/micro: only the cases whose name contains this")
    args = ap.parse_args(argv)
    args.threads = [int(t) for t in args.threads.split(",")]
    parts = {"models": bench_models, "micro": bench_micro, "busy": bench_busy, "sweep": bench_sweep}
    out = {"machine": f"{os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f} at start",
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}  # fmt: skip
    for part in args.only.split(","):
        print(f"== {part}", flush=True)
        out[part] = parts[part](args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v)
    return out


if __name__ == "__main__":
    main()
