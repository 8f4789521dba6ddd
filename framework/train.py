"""``conch train``: train an MLP or CNN on the bundled digits, or a char-level GPT on any text file."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

import conch

from . import nn
from .nn import functional as F


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model (default: an MLP on the bundled 8x8 digits)")
    p.add_argument("--model", choices=("mlp", "cnn", "gpt"), default="mlp")
    p.add_argument("--epochs", type=int, default=None, help="epochs over the data (digits; default 40 MLP, 30 CNN)")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps (gpt)")
    p.add_argument("--batch-size", type=int, default=None, help="default 64 (digits), 16 (gpt)")
    p.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default 2e-3 digits, 1e-3 gpt)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--amp", choices=("fp16", "bf16"), default=None, help="autocast dtype (fp16 adds a GradScaler)")
    p.add_argument("--checkpointing", action="store_true", help="recompute activations in the backward")
    p.add_argument("--early-stopping", type=int, default=0, metavar="N", help="stop after N epochs without gain")
    p.add_argument("--out", default="runs", help="folder for the checkpoint and the plot (default: runs/)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/<model>.ckpt if it exists")
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="E",
        help="stop after epoch E as if interrupted (time-boxed runs; continue with --resume)",
    )
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plot of the curves")
    p.add_argument("--text", default=None, help="text file for --model gpt (default: Python's own os.py)")
    p.add_argument("--block-size", type=int, default=64, help="context length (gpt)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=run)


def _device(arg):
    if arg:
        return conch.device(arg)
    return conch.device("cuda") if conch.cuda.is_available() else conch.device("cpu")


class _Precision:
    """Autocast + GradScaler as asked on the command line (no-ops without --amp)."""

    def __init__(self, amp: str | None, device):
        self.dtype = {"fp16": conch.float16, "bf16": conch.bfloat16, None: None}[amp]
        self.scaler = None
        if self.dtype is conch.float16:
            self.scaler = conch.amp.GradScaler()

    def autocast(self):
        if self.dtype is None:
            import contextlib

            return contextlib.nullcontext()
        return conch.amp.autocast(dtype=self.dtype)

    def step(self, loss, opt):
        if self.scaler is None:
            loss.backward()
            opt.step()
            return True
        self.scaler.scale(loss).backward()
        stepped = self.scaler.step(opt)
        self.scaler.update()
        return stepped


def _evaluate(model, loader, prec):
    model.eval()
    correct = total = 0
    loss_sum = 0.0
    with conch.no_grad(), prec.autocast():
        for xb, yb in loader:
            logits = model(xb)
            loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum").item()
            correct += int((logits.argmax(1) == yb).sum().item())
            total += yb.shape[0]
    model.train()
    return loss_sum / max(total, 1), correct / max(total, 1)


def _plot(path, history, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax1 = plt.subplots(figsize=(6, 4))
    ax1.plot(history["epoch"], history["train_loss"], label="train loss")
    ax1.plot(history["epoch"], history["val_loss"], label="validation loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("cross-entropy")
    ax2 = ax1.twinx()
    ax2.plot(history["epoch"], history["val_acc"], color="tab:green", label="validation accuracy")
    ax2.set_ylabel("accuracy")
    lines = ax1.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    labels = ax1.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
    ax1.legend(lines, labels, loc="center right")
    ax1.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _train_digits(args, dev):
    from tqdm import tqdm

    from .data import DataLoader, TensorDataset, load_digits
    from .models import CNN, MLP
    from .training_state import load_checkpoint, save_checkpoint

    conch.manual_seed(args.seed)
    train_full, test_set = load_digits(flatten=args.model == "mlp")  # fixed split: 1437 train / 360 test
    x, y = (t.to(dev) for t in train_full.tensors)
    n_val = len(x) // 10  # the last tenth of the (already shuffled) training split validates
    train_set, val_set = TensorDataset(x[:-n_val], y[:-n_val]), TensorDataset(x[-n_val:], y[-n_val:])
    test_set = TensorDataset(*(t.to(dev) for t in test_set.tensors))
    bs = args.batch_size or 64
    train_loader = DataLoader(train_set, batch_size=bs, shuffle=True, seed=args.seed)
    val_loader = DataLoader(val_set, batch_size=512)
    test_loader = DataLoader(test_set, batch_size=512)
    if args.model == "mlp":
        model = MLP(64, [256, 256], 10, activation="gelu")
        epochs = args.epochs or 40
    else:
        model = CNN(image_size=8, num_classes=10, dropout=0.1)
        epochs = args.epochs or 30
    if args.checkpointing:
        model = _checkpointed(model)
    model.to(dev)
    opt = conch.optim.AdamW(model.parameters(), lr=args.lr or 2e-3, weight_decay=args.weight_decay)
    steps_total = epochs * len(train_loader)
    sched = conch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr or 2e-3, total_steps=steps_total)
    prec = _Precision(args.amp, dev)

    os.makedirs(args.out, exist_ok=True)
    ckpt = os.path.join(args.out, f"{args.model}.ckpt")
    history = {"epoch": [], "train_loss": [], "val_loss": [], "val_acc": []}
    start_epoch, best, bad_epochs = 0, -1.0, 0
    if args.resume and os.path.exists(ckpt):
        st = load_checkpoint(ckpt, model=model, optimizer=opt, scheduler=sched, scaler=prec.scaler,
                             loader=train_loader)  # fmt: skip
        start_epoch = int(st["step"])
        extra = st.get("extra") or {}
        history = extra.get("history", history)
        saved_epochs = int(extra.get("epochs", epochs))
        if saved_epochs != epochs:  # the optimizer schedule was laid out for the original run's length
            print(f"note: resuming the checkpoint's run of {saved_epochs} epochs (--epochs {epochs} ignored)")
            epochs = saved_epochs
        best = max(history["val_acc"], default=-1.0)
        print(f"resumed from {ckpt} at epoch {start_epoch}")

    print(f"training {args.model} on digits: {len(train_set)} train / {len(val_set)} val / {len(test_set)} test, "
          f"{sum(p.numel() for p in model.parameters())} parameters, device {dev}"
          + (f", autocast {args.amp}" if args.amp else ""))  # fmt: skip
    t0 = time.perf_counter()
    for epoch in range(start_epoch, epochs):
        model.train()
        seen, loss_sum = 0, 0.0
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False, disable=args.quiet,
                   file=sys.stderr)  # fmt: skip
        te = time.perf_counter()
        for xb, yb in bar:
            with prec.autocast():
                loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            prec.step(loss, opt)
            sched.step()
            n = yb.shape[0]
            seen += n
            lv = loss.item()  # one device-to-host sync per step on the GPU
            loss_sum += lv * n
            bar.set_postfix(loss=f"{lv:.4f}", samples_per_s=f"{seen / (time.perf_counter() - te):.0f}")
        val_loss, val_acc = _evaluate(model, val_loader, prec)
        history["epoch"].append(epoch + 1)
        history["train_loss"].append(loss_sum / max(seen, 1))
        history["val_loss"].append(val_loss)
        history["val_acc"].append(val_acc)
        print(f"epoch {epoch + 1:3d}  train loss {loss_sum / max(seen, 1):.4f}  val loss {val_loss:.4f}  "
              f"val accuracy {val_acc:.4f}  ({seen / (time.perf_counter() - te):.0f} samples/s)")  # fmt: skip
        if val_acc > best:
            best, bad_epochs = val_acc, 0
        else:
            bad_epochs += 1
        save_checkpoint(ckpt, model=model, optimizer=opt, scheduler=sched, scaler=prec.scaler, step=epoch + 1,
                        loader=train_loader, extra={"history": history, "epochs": epochs})  # fmt: skip
        if args.early_stopping and bad_epochs >= args.early_stopping:
            print(f"early stopping: no validation gain for {bad_epochs} epochs")
            break
        if args.stop_after is not None and epoch + 1 >= args.stop_after and epoch + 1 < epochs:
            print(f"stopped after epoch {epoch + 1} of {epochs}; continue with --resume")
            return None
    print(f"trained in {time.perf_counter() - t0:.1f} s; checkpoint: {ckpt}")
    if not args.no_plot and history["epoch"]:
        png = os.path.join(args.out, f"{args.model}_curves.png")
        _plot(png, history, f"conch {args.model} on digits")
        print(f"plot: {png}")
    _, test_acc = _evaluate(model, test_loader, prec)
    print(f"test accuracy: {test_acc:.4f}")
    return test_acc


def _checkpointed(model):
    """Wrap each top-level Sequential so its activations are recomputed in the backward."""
    from .checkpoint import checkpoint_sequential

    class Checkpointed(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            seqs = [m for m in self.inner.children() if isinstance(m, nn.Sequential)]
            if not self.training or not seqs:
                return self.inner(x)
            x = x.flatten(1) if hasattr(self.inner, "net") else x
            for m in self.inner.children():
                x = checkpoint_sequential(m, max(1, len(m) // 2), x) if isinstance(m, nn.Sequential) else m(x)
            return x

    return Checkpointed(model)


def _default_text() -> str:
    return os.__file__  # the standard library's own source: present wherever Python is


def _train_gpt(args, dev):
    from tqdm import tqdm

    from .models import GPT, GPTConfig

    conch.manual_seed(args.seed)
    path = args.text or _default_text()
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = np.array([stoi[c] for c in text], dtype=np.int64)
    split = int(0.9 * len(data))
    train_data, val_data = data[:split], data[split:]
    T, B = args.block_size, args.batch_size or 16
    if len(val_data) <= T + 1:
        raise SystemExit(f"{path} is too short for block size {T}: need more than {10 * (T + 1)} characters")
    cfg = GPTConfig(block_size=T, vocab_size=len(chars), n_layer=2, n_head=4, n_embd=128,
                    checkpointing=args.checkpointing)  # fmt: skip
    model = GPT(cfg).to(dev)
    opt = conch.optim.AdamW(model.parameters(), lr=args.lr or 1e-3, weight_decay=0.1)
    prec = _Precision(args.amp, dev)
    rng = np.random.default_rng(args.seed)

    def batch(src):
        ix = rng.integers(0, len(src) - T - 1, size=B)
        x = np.stack([src[i : i + T] for i in ix])
        y = np.stack([src[i + 1 : i + T + 1] for i in ix])
        return conch.tensor(x, device=dev), conch.tensor(y, device=dev)

    print(f"training a char-level GPT ({model.num_params()} parameters, vocab {len(chars)}) on {path}, device {dev}")
    bar = tqdm(range(args.steps), disable=args.quiet, file=sys.stderr)
    t0 = time.perf_counter()
    for step in bar:
        xb, yb = batch(train_data)
        with prec.autocast():
            _, loss = model(xb, yb)
        opt.zero_grad()
        prec.step(loss, opt)
        tok_s = (step + 1) * B * T / (time.perf_counter() - t0)
        bar.set_postfix(loss=f"{loss.item():.3f}", tokens_per_s=f"{tok_s:.0f}")
        if (step + 1) % max(1, args.steps // 5) == 0:
            print(f"step {step + 1:5d}  loss {loss.item():.4f}  ({tok_s:.0f} tokens/s)")
    model.eval()
    with conch.no_grad():
        xb, yb = batch(val_data)
        _, vloss = model(xb, yb)
    print(f"validation loss: {vloss.item():.4f} (uniform guess: {math.log(len(chars)):.4f})")
    start = conch.tensor([[stoi.get("\n", 0)]], device=dev)
    out = model.generate(start, max_new_tokens=200, temperature=0.8, top_k=20)
    print("sample:\n" + "".join(chars[i] for i in out[0].tolist()))
    return vloss.item()


def run(args):
    dev = _device(args.device)
    if args.model == "gpt":
        _train_gpt(args, dev)
    else:
        _train_digits(args, dev)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="conch")
    add_parser(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(["train", *(argv or [])])
    return args.fn(args)
