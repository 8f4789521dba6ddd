"""``conch train``: train an MLP or CNN on the bundled digits, or a char-level GPT on any text file."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np

import conch

from . import nn
from ._cli import CommandError, device_name, existing_file, nonnegative_int, positive_float, positive_int
from .nn import functional as F


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (default: an MLP on the bundled 8x8 digits)",
        description="Train an MLP or CNN on the bundled 8x8 digits, or a char-level GPT on a text file. The "
        "checkpoint OUT/<model>.ckpt is written as training goes; --resume continues it.",
    )
    p.add_argument("--model", choices=("mlp", "cnn", "gpt"), default="mlp")
    p.add_argument(
        "--epochs", type=positive_int, default=None, help="epochs over the data (digits; default 40 MLP, 30 CNN)"
    )
    p.add_argument("--steps", type=positive_int, default=None, help="optimizer steps (gpt; default 200)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="default 64 (digits), 16 (gpt)")
    p.add_argument(
        "--lr", type=positive_float, default=None, help="AdamW learning rate (default 2e-3 digits, 1e-3 gpt)"
    )
    p.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (default 1e-4 digits, 0.1 gpt)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--device", type=device_name, default=None, help="cpu, cuda or cuda:N (default: cuda when available)"
    )
    p.add_argument("--amp", choices=("fp16", "bf16"), default=None, help="autocast dtype (fp16 adds a GradScaler)")
    p.add_argument("--checkpointing", action="store_true", help="recompute activations in the backward")
    p.add_argument("--early-stopping", type=nonnegative_int, default=0, metavar="N",
                   help="stop after N epochs without gain")  # fmt: skip
    p.add_argument("--out", default="runs", help="folder for the checkpoint and the plot (default: runs/)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/<model>.ckpt (starts fresh, saying so, when there is none)")  # fmt: skip
    p.add_argument(
        "--stop-after",
        type=positive_int,
        default=None,
        metavar="E",
        help="stop after epoch E (digits) or step E (gpt) as if interrupted; continue with --resume",
    )
    p.add_argument(
        "--save-every",
        type=positive_int,
        default=None,
        metavar="N",
        help="gpt: write the checkpoint every N steps (default: at each fifth of --steps) and at the end",
    )
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plot of the curves")
    p.add_argument("--text", type=existing_file, default=None,
                   help="text file for --model gpt (default: Python's own os.py)")  # fmt: skip
    p.add_argument("--block-size", type=positive_int, default=None, help="context length (gpt; default 64)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="for scripts: no progress bar, no per-epoch/step lines; only the results")  # fmt: skip
    p.add_argument("--nproc", type=positive_int, default=1, metavar="N",
                   help="data-parallel training on N processes (MPI ranks; DDP): --batch-size is the global "
                   "batch, split across them; rank 0 prints and writes the checkpoint")  # fmt: skip
    p.set_defaults(fn=run)
    _PARSER[0] = p


# --nproc: the command relaunches itself under the MPI launcher with this variable set; each rank then trains
_RANK_ENV = "CONCH_TRAIN_RANK_OF_JOB"
_PARSER = [None]  # the train parser, to rebuild the command line for the ranks


class _Dist:
    """The data-parallel context of one run: rank 0 of 1 without --nproc, else the MPI process group's."""

    def __init__(self, nproc: int):
        self.on = nproc > 1 and os.environ.get(_RANK_ENV) == "1"
        self.rank, self.world = 0, 1
        if self.on:
            import conch.distributed as dist

            dist.init_process_group()
            self.rank, self.world = dist.get_rank(), dist.get_world_size()

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, dev):
        """One GPU per rank on a node (``cuda:local_rank``); CPU ranks share the CPU."""
        if self.on and dev.type == "cuda":
            import conch.distributed as dist

            if not dist.is_nccl_available():
                raise CommandError("--nproc on a GPU needs NCCL (CuPy's cupy.cuda.nccl), which is not available "
                                   "here; use --device cpu (ranks then reduce over MPI)")  # fmt: skip
            return conch.device(f"cuda:{dist.get_local_rank() % conch.cuda.device_count()}")
        return dev

    def wrap(self, model):
        if not self.on:
            return model
        from .nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model)

    def local_batch(self, bs: int) -> int:
        if bs % self.world:
            raise CommandError(f"--batch-size {bs} is the global batch and must divide by --nproc {self.world}")
        return bs // self.world

    def close(self):
        if self.on:
            import conch.distributed as dist

            dist.destroy_process_group()


def _command_line(args) -> list:
    """The train flags that ``args`` holds (those that differ from the defaults), for the ranks' command."""
    argv = []
    for a in _PARSER[0]._actions:
        if not a.option_strings or a.dest in ("help", "traceback"):
            continue
        v = getattr(args, a.dest, a.default)
        if v == a.default or v is None:
            continue
        flag = a.option_strings[-1] if a.option_strings[-1].startswith("--") else a.option_strings[0]
        argv += [flag] if v is True else [flag, str(v)]
    return argv


def _launch(args) -> int:
    """Run this same ``conch train`` on ``--nproc`` MPI ranks and wait: rank 0's output is the run's, a rank
    that fails prints its traceback and aborts the job (``python -m mpi4py``), whose exit status is then
    non-zero."""
    from .distributed import run as launcher

    try:
        cmd = launcher.command(args.nproc, "conch", ["train", *_command_line(args)], module=True)
    except RuntimeError as e:
        raise CommandError(str(e)) from e
    env = launcher.environment(args.nproc, {**os.environ, _RANK_ENV: "1", "CONCH_DEBUG": "1"})  # full tracebacks
    sys.stdout.flush()
    return subprocess.call(cmd, env=env)


class _Out:
    """Progress lines through tqdm.write, so that a line never lands on the live bar; quiet drops the chatter."""

    def __init__(self, quiet: bool, silent: bool = False):
        self.quiet = quiet or silent
        self.silent = silent  # a rank other than 0 of a --nproc run: prints nothing

    def say(self, msg: str) -> None:  # always shown: results and what resume did
        if self.silent:
            return
        from tqdm import tqdm

        tqdm.write(msg, file=sys.stdout)

    def log(self, msg: str) -> None:  # per-epoch / per-step lines, dropped by --quiet
        if not self.quiet:
            self.say(msg)

    def bar(self, it, **kw):
        from tqdm import tqdm

        # disable=None: no bar when stderr is not a terminal (a log file or a pipe gets no carriage returns)
        return tqdm(it, disable=True if self.quiet else None, file=sys.stderr, dynamic_ncols=True, **kw)


class _Interrupt:
    """Ctrl-C sets a flag the training loop checks between steps, so the checkpoint it then saves is consistent.

    A second Ctrl-C raises KeyboardInterrupt at once.
    """

    def __enter__(self):
        self.hit = False
        try:
            self._prev = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread: keep Python's default
            self._prev = None
        return self

    def _handler(self, signum, frame):
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True

    def __exit__(self, *exc):
        if self._prev is not None:
            signal.signal(signal.SIGINT, self._prev)
        return False


def _interrupted(where: str, ckpt: str) -> CommandError:
    return CommandError(f"interrupted {where}; checkpoint saved to {ckpt}\nrun the same command with --resume "
                        "to continue", status=130)  # fmt: skip


def _on_rank0(save, ddp):
    """``save_checkpoint`` on rank 0 only (every rank holds the same weights after each step)."""
    if not ddp.on:
        return save

    def save_on_rank0(*args, **kwargs):
        if ddp.main:
            save(*args, **kwargs)

    return save_on_rank0


class _NoInterrupt:
    """--nproc: Ctrl-C reaches every rank at a different step, so it ends the job (mpiexec forwards it) rather
    than saving a checkpoint; the last one written (each epoch, or every --save-every steps) resumes."""

    hit = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _read_checkpoint(path: str) -> dict:
    """The checkpoint's contents for --resume (nothing restored yet); a corrupt file is a one-line error."""
    from .training_state import load_checkpoint

    try:
        return load_checkpoint(path, restore_rng=False)
    except Exception as e:
        raise CommandError(
            f"cannot resume from {path}: {type(e).__name__}: {e}\n"
            "delete the file, or run without --resume (or with another --out) to start fresh"
        ) from e


#: the settings a checkpoint records; a resumed run takes the checkpoint's value for any of them not given
_FLAGS = {"model": "--model", "epochs": "--epochs", "batch_size": "--batch-size", "checkpointing": "--checkpointing",
          "amp": "--amp", "block_size": "--block-size", "vocab": "--text", "steps": "--steps"}  # fmt: skip


def _resolve(args, state, defaults: dict, must_match: tuple, ckpt: str) -> dict:
    """Settings for this run: the flags given, else the checkpoint's (when resuming), else ``defaults``.

    A flag given with a value other than the checkpoint's, for a setting in ``must_match`` (it changes the
    model's shapes, the state's layout or the learning-rate schedule), refuses the resume, naming it.
    """
    saved = ((state or {}).get("extra") or {}).get("settings") or {}
    out, clash = {}, []
    for key, default in defaults.items():
        given = getattr(args, key, None)
        given = None if given is False else given  # a store_true flag left off counts as not given
        if key in saved and given is not None and key in must_match and given != saved[key]:
            clash.append(f"{_FLAGS.get(key, key)}: checkpoint {_show(saved[key])}, now {_show(given)}")
        out[key] = given if given is not None else saved.get(key, default)
    if clash:
        raise CommandError(f"cannot resume from {ckpt}: settings differ ({'; '.join(clash)})\n"
                           "drop those flags to take the checkpoint's, or train afresh without --resume "
                           "(or with another --out)")  # fmt: skip
    return out


def _show(v) -> str:
    if v is True:
        return "on"
    if isinstance(v, str) and len(v) > 20:
        return f"a vocabulary of {len(v)} characters"
    return str(v)


def _device(arg):
    if not arg:
        return conch.device("cuda") if conch.cuda.is_available() else conch.device("cpu")
    if arg.startswith("cuda"):
        if not conch.cuda.is_available():
            from .kernels import _cupy

            raise CommandError(f"--device {arg}: no usable GPU ({_cupy.unavailable_reason() or 'none found'}); "
                               "use --device cpu or leave --device out")  # fmt: skip
        n = conch.cuda.device_count()
        if ":" in arg and int(arg.split(":")[1]) >= n:
            raise CommandError(f"--device {arg}: this machine has {n} GPU(s), cuda:0 to cuda:{n - 1}")
    return conch.device(arg)


def _prepare_out(folder: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise CommandError(f"--out {folder}: cannot create the folder ({e.strerror})") from e


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


def _train_digits(args, dev, out, ddp=None):
    from .data import DataLoader, TensorDataset, load_digits
    from .models import CNN, MLP
    from .training_state import load_checkpoint, save_checkpoint

    ddp = ddp or _Dist(1)
    _prepare_out(args.out)
    ckpt = os.path.join(args.out, f"{args.model}.ckpt")
    state = _resume_state(args, ckpt, out)
    cfg = _resolve(args, state, {"model": args.model, "epochs": 40 if args.model == "mlp" else 30, "batch_size": 64,
                                 "checkpointing": False, "amp": None},
                   must_match=("model", "epochs", "batch_size", "checkpointing", "amp"), ckpt=ckpt)  # fmt: skip
    epochs, bs = cfg["epochs"], cfg["batch_size"]
    conch.manual_seed(args.seed)
    train_full, test_set = load_digits(flatten=args.model == "mlp")  # fixed split: 1437 train / 360 test
    x, y = (t.to(dev) for t in train_full.tensors)
    n_val = len(x) // 10  # the last tenth of the (already shuffled) training split validates
    train_set, val_set = TensorDataset(x[:-n_val], y[:-n_val]), TensorDataset(x[-n_val:], y[-n_val:])
    test_set = TensorDataset(*(t.to(dev) for t in test_set.tensors))
    if ddp.on:  # each rank a 1/N share of every epoch, bs/N a batch: the same global batches' count
        from .data.distributed import DistributedSampler

        sampler = DistributedSampler(train_set, shuffle=True, seed=args.seed)
        train_loader = DataLoader(train_set, batch_size=ddp.local_batch(bs), sampler=sampler)
    else:
        sampler, train_loader = None, DataLoader(train_set, batch_size=bs, shuffle=True, seed=args.seed)
    val_loader = DataLoader(val_set, batch_size=512)
    test_loader = DataLoader(test_set, batch_size=512)
    model = (
        MLP(64, [256, 256], 10, activation="gelu")
        if args.model == "mlp"
        else CNN(image_size=8, num_classes=10, dropout=0.1)
    )
    if cfg["checkpointing"]:
        model = _checkpointed(model)
    model.to(dev)
    lr = args.lr or 2e-3
    wd = 1e-4 if args.weight_decay is None else args.weight_decay
    opt = conch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    net, save_checkpoint = model, _on_rank0(save_checkpoint, ddp)  # checkpoints hold the bare model's weights
    sched = conch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * len(train_loader))
    prec = _Precision(cfg["amp"], dev)

    history = {"epoch": [], "train_loss": [], "val_loss": [], "val_acc": []}
    start_epoch, best, bad_epochs, partial = 0, -1.0, 0, None
    if state is not None:
        try:
            st = load_checkpoint(ckpt, model=model, optimizer=opt, scheduler=sched, scaler=prec.scaler,
                                 loader=train_loader)  # fmt: skip
        except (KeyError, ValueError, RuntimeError) as e:
            raise CommandError(f"cannot resume from {ckpt}: {e}\ndelete it or run without --resume") from e
        start_epoch = int(st["step"])
        extra = st.get("extra") or {}
        history = extra.get("history", history)
        bad_epochs = int(extra.get("bad_epochs", 0))
        partial = extra.get("partial")  # set when the run was interrupted mid-epoch
        best = max(history["val_acc"], default=-1.0)
        where = f"epoch {start_epoch}" + (f", {int(partial['batches'])} batches into the next" if partial else "")
        out.say(f"resumed from {ckpt} at {where} of {epochs}")
    model = ddp.wrap(net)  # after loading: DDP broadcasts rank 0's weights

    out.log(f"training {args.model} on digits: {len(train_set)} train / {len(val_set)} val / {len(test_set)} test, "
            f"{sum(p.numel() for p in model.parameters())} parameters, device {dev}"
            + (f", autocast {cfg['amp']}" if cfg["amp"] else ""))  # fmt: skip
    settings = {**cfg, "lr": lr, "weight_decay": wd, "seed": args.seed}
    if start_epoch >= epochs:
        out.say(f"{ckpt} has finished its {epochs} epochs: nothing to train (evaluating it)")
    t0 = time.perf_counter()
    with _Interrupt() if not ddp.on else _NoInterrupt() as stop:
        for epoch in range(start_epoch, epochs):
            if sampler is not None:
                sampler.set_epoch(epoch)
            model.train()
            seen, loss_sum, batches = 0, 0.0, 0
            if partial:
                seen, loss_sum, batches = int(partial["seen"]), float(partial["loss_sum"]), int(partial["batches"])
                partial = None
            bar = out.bar(train_loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False, initial=batches,
                          total=len(train_loader))  # fmt: skip
            te, seen0 = time.perf_counter(), seen
            for xb, yb in bar:
                with prec.autocast():
                    loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad()
                prec.step(loss, opt)
                sched.step()
                n = yb.shape[0]
                seen, batches = seen + n, batches + 1
                lv = loss.item()  # one device-to-host sync per step on the GPU
                loss_sum += lv * n
                bar.set_postfix(loss=f"{lv:.4f}", samples_per_s=f"{(seen - seen0) / (time.perf_counter() - te):.0f}")
                if stop.hit:
                    break
            bar.close()
            if stop.hit:  # between two steps: the loader's position, the model and the optimizer agree
                save_checkpoint(
                    ckpt,
                    model=net,
                    optimizer=opt,
                    scheduler=sched,
                    scaler=prec.scaler,
                    step=epoch,
                    loader=train_loader,
                    extra={
                        "history": history,
                        "epochs": epochs,
                        "settings": settings,
                        "bad_epochs": bad_epochs,
                        "partial": {"seen": seen, "loss_sum": loss_sum, "batches": batches},
                    },
                )
                raise _interrupted(f"in epoch {epoch + 1} of {epochs} (batch {batches} of {len(train_loader)})", ckpt)
            val_loss, val_acc = _evaluate(model, val_loader, prec)
            history["epoch"].append(epoch + 1)
            history["train_loss"].append(loss_sum / max(seen, 1))
            history["val_loss"].append(val_loss)
            history["val_acc"].append(val_acc)
            out.log(
                f"epoch {epoch + 1:3d}  train loss {loss_sum / max(seen, 1):.4f}  val loss {val_loss:.4f}  "
                f"val accuracy {val_acc:.4f}  ({(seen - seen0) / (time.perf_counter() - te):.0f} samples/s)"
            )
            if val_acc > best:
                best, bad_epochs = val_acc, 0
            else:
                bad_epochs += 1
            save_checkpoint(ckpt, model=net, optimizer=opt, scheduler=sched, scaler=prec.scaler, step=epoch + 1,
                            loader=train_loader, extra={"history": history, "epochs": epochs, "settings": settings,
                                                        "bad_epochs": bad_epochs})  # fmt: skip
            if args.early_stopping and bad_epochs >= args.early_stopping:
                out.say(f"early stopping: no validation gain for {bad_epochs} epochs")
                break
            if args.stop_after is not None and epoch + 1 >= args.stop_after and epoch + 1 < epochs:
                out.say(f"stopped after epoch {epoch + 1} of {epochs}; continue with --resume")
                return None
            if stop.hit:
                raise _interrupted(f"after epoch {epoch + 1} of {epochs}", ckpt)
    if start_epoch < epochs:
        out.say(f"trained in {time.perf_counter() - t0:.1f} s; checkpoint: {ckpt}")
    if not args.no_plot and history["epoch"] and ddp.main:
        png = os.path.join(args.out, f"{args.model}_curves.png")
        try:
            _plot(png, history, f"conch {args.model} on digits")
            out.say(f"plot: {png}")
        except Exception as e:  # a missing or broken matplotlib must not lose a finished run's result
            out.say(f"note: no plot ({type(e).__name__}: {e})")
    _, test_acc = _evaluate(model, test_loader, prec)
    out.say(f"test accuracy: {test_acc:.4f}")
    return test_acc


def _resume_state(args, ckpt: str, out):
    """The checkpoint to resume (None to start fresh), saying which."""
    if not args.resume:
        return None
    if not os.path.exists(ckpt):
        out.say(f"no checkpoint at {ckpt}; starting fresh")
        return None
    return _read_checkpoint(ckpt)


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


def _train_gpt(args, dev, out, ddp=None):
    from .models import GPT, GPTConfig
    from .training_state import load_checkpoint, save_checkpoint

    ddp = ddp or _Dist(1)
    save_checkpoint = _on_rank0(save_checkpoint, ddp)
    _prepare_out(args.out)
    ckpt = os.path.join(args.out, "gpt.ckpt")
    state = _resume_state(args, ckpt, out)
    saved = ((state or {}).get("extra") or {}).get("settings") or {}
    path = args.text or saved.get("text") or _default_text()
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as e:
        raise CommandError(f"cannot read --text {path}: {e.strerror}") from e
    chars = sorted(set(text))
    # the vocabulary is the text's own characters: another text is another embedding shape
    args.vocab = "".join(chars)
    cfg = _resolve(args, state, {"model": "gpt", "steps": 200, "batch_size": 16, "block_size": 64,
                                 "checkpointing": False, "amp": None, "vocab": args.vocab},
                   must_match=("model", "batch_size", "block_size", "checkpointing", "amp", "vocab"),
                   ckpt=ckpt)  # fmt: skip
    T, B, steps = cfg["block_size"], cfg["batch_size"], cfg["steps"]
    conch.manual_seed(args.seed)
    stoi = {c: i for i, c in enumerate(chars)}
    data = np.array([stoi[c] for c in text], dtype=np.int64)
    split = int(0.9 * len(data))
    train_data, val_data = data[:split], data[split:]
    if len(val_data) <= T + 1:
        raise CommandError(f"{path} is too short for block size {T}: need more than {10 * (T + 1)} characters "
                           "(use a longer --text or a smaller --block-size)")  # fmt: skip
    gcfg = GPTConfig(block_size=T, vocab_size=len(chars), n_layer=2, n_head=4, n_embd=128,
                     checkpointing=cfg["checkpointing"])  # fmt: skip
    model = GPT(gcfg).to(dev)
    opt = conch.optim.AdamW(model.parameters(), lr=args.lr or 1e-3,
                            weight_decay=0.1 if args.weight_decay is None else args.weight_decay)  # fmt: skip
    prec = _Precision(cfg["amp"], dev)
    rng = np.random.default_rng(args.seed)
    start = 0
    if state is not None:
        try:
            st = load_checkpoint(ckpt, model=model, optimizer=opt, scaler=prec.scaler)
        except (KeyError, ValueError, RuntimeError) as e:
            raise CommandError(f"cannot resume from {ckpt}: {e}\ndelete it or run without --resume") from e
        start = int(st["step"])
        rng.bit_generator.state = json.loads((st.get("extra") or {})["batch_rng"])
        out.say(f"resumed from {ckpt} at step {start} of {steps}")
    settings = {**cfg, "text": os.path.abspath(path)}
    net, model = model, ddp.wrap(model)
    local = slice(ddp.rank, None, ddp.world) if ddp.on else slice(None)
    if ddp.on:
        ddp.local_batch(B)

    def save(step):
        save_checkpoint(ckpt, model=net, optimizer=opt, scaler=prec.scaler, step=step,
                        extra={"settings": settings, "batch_rng": json.dumps(rng.bit_generator.state)})  # fmt: skip

    def batch(src, share=local):
        # every rank draws the same global batch (one generator state to checkpoint) and keeps its share
        ix = rng.integers(0, len(src) - T - 1, size=B)[share]
        x = np.stack([src[i : i + T] for i in ix])
        y = np.stack([src[i + 1 : i + T + 1] for i in ix])
        return conch.tensor(x, device=dev), conch.tensor(y, device=dev)

    out.log(f"training a char-level GPT ({net.num_params()} parameters, vocab {len(chars)}) on {path}, "
            f"device {dev}")  # fmt: skip
    if start >= steps:
        out.say(f"{ckpt} has finished its {steps} steps: nothing to train (pass a larger --steps to continue)")
    every = args.save_every or max(1, steps // 5)
    bar = out.bar(range(start, steps), initial=start, total=steps)
    t0 = time.perf_counter()
    with _Interrupt() if not ddp.on else _NoInterrupt() as stop:
        for step in bar:
            xb, yb = batch(train_data)
            with prec.autocast():
                _, loss = model(xb, yb, return_logits=False)
            opt.zero_grad()
            prec.step(loss, opt)
            tok_s = (step + 1 - start) * B * T / (time.perf_counter() - t0)
            lv = loss.item()
            bar.set_postfix(loss=f"{lv:.3f}", tokens_per_s=f"{tok_s:.0f}")
            done = step + 1
            if done % max(1, steps // 5) == 0:
                out.log(f"step {done:5d}  loss {lv:.4f}  ({tok_s:.0f} tokens/s)")
            if done % every == 0 or done == steps:
                save(done)
            if stop.hit:
                bar.close()
                save(done)
                raise _interrupted(f"at step {done} of {steps}", ckpt)
            if args.stop_after is not None and done >= args.stop_after and done < steps:
                bar.close()
                save(done)
                out.say(f"stopped after step {done} of {steps}; continue with --resume")
                return None
    bar.close()
    if start < steps:
        out.say(f"trained {steps - start} steps in {time.perf_counter() - t0:.1f} s; checkpoint: {ckpt}")
    model.eval()
    with conch.no_grad():
        xb, yb = batch(val_data, slice(None))
        _, vloss = net(xb, yb, return_logits=False)
    out.say(f"validation loss: {vloss.item():.4f} (uniform guess: {math.log(len(chars)):.4f})")
    first = conch.tensor([[stoi.get("\n", 0)]], device=dev)
    sample = net.generate(first, max_new_tokens=200, temperature=0.8, top_k=20)
    out.say("sample:\n" + "".join(chars[i] for i in sample[0].tolist()))
    return vloss.item()


def run(args):
    nproc = getattr(args, "nproc", 1)
    if nproc > 1 and os.environ.get(_RANK_ENV) != "1":
        return _launch(args)
    ddp = _Dist(nproc)
    try:
        dev = ddp.device(_device(args.device))
        out = _Out(args.quiet, silent=not ddp.main)
        if args.model == "gpt":
            _train_gpt(args, dev, out, ddp)
        else:
            _train_digits(args, dev, out, ddp)
    finally:
        ddp.close()
    return 0


def main(argv=None):
    """``python -m conch.train ...``: the same as ``conch train ...``."""
    from .__main__ import main as conch_main

    return conch_main(["train", *(argv or [])])
