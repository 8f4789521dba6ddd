"""CPU optimizer steps on real models' parameter sets: conch (compiled and NumPy paths) against PyTorch, as ratios.

The parameter sets are those of the models in ``bench_cpu_models.py``: the ``conch train`` MLP (64-256-256-10, 6
tensors, 85k floats), the 784-1024-1024-10 MLP (6 tensors, 1.9M floats) and the GPT (4 layers, 128 wide, tied
head: 52 tensors, 0.84M floats). Each parameter gets a fixed random float32 gradient, and one timed call is one
``opt.step()`` (no forward or backward) of AdamW (``lr=1e-3``, ``weight_decay=0.01``), Adam with ``amsgrad``, SGD
with momentum and Nesterov, RMSprop, Adagrad, RAdam, NAdam and Adamax, each beside ``torch.optim``'s twin with its
defaults (foreach on CPU for the multi-tensor optimizers). conch runs twice: with its Numba-compiled kernels
(``numba``) and with the NumPy fast path (``numpy``, ``conch.kernels._jit.set_enabled(False)``: the code before
the compiled kernels), so one run gives both the before and the after. ``--bitwise`` runs conch in
``set_bitwise_torch(True)`` mode (PyTorch's roundings: the compiled kernels against the NumPy reference path).

``--models`` times whole training steps instead (zero_grad, forward, loss, backward, AdamW step: ``bench_cpu_models``'s
MLP and GPT steps), conch with the compiled kernels on and off (every compiled kernel: ``_jit.set_enabled``) beside
PyTorch, to show what the optimizer's share of a step becomes.

Each figure is the median over ``--rounds`` rounds in which the three alternate (the order flips every round) of
the wall-clock (``perf_counter``) and CPU-clock (``process_time``) time per step over ``--steps`` steps. Ratios are
conch / PyTorch (below 1: conch is faster). On a machine shared with other jobs the numbers are indicative only.

Usage::

    python benchmarks/bench_cpu_optim.py [--rounds 7] [--steps 50] [--threads 1,2] [--match gpt] [--opt adamw]
                                         [--bitwise] [--models]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cpu_models import MODELS, _conch_gpt, _conch_mlp, _step_fn, interleaved  # noqa: E402

SETS = {
    "mlp 64-256-256-10": lambda: _conch_mlp(64, [256, 256], 64)[0],
    "mlp 784-1024-1024-10": lambda: _conch_mlp(784, [1024, 1024], 256)[0],
    "gpt 4x128": lambda: _conch_gpt()[0],
}

OPTS = {
    "adamw": ("AdamW", dict(lr=1e-3, weight_decay=0.01)),
    "adam amsgrad": ("Adam", dict(lr=1e-3, amsgrad=True)),
    "sgd nesterov": ("SGD", dict(lr=1e-2, momentum=0.9, nesterov=True)),
    "rmsprop": ("RMSprop", dict(lr=1e-3)),
    "adagrad": ("Adagrad", dict(lr=1e-2)),
    "radam": ("RAdam", dict(lr=1e-3)),
    "nadam": ("NAdam", dict(lr=2e-3)),
    "adamax": ("Adamax", dict(lr=2e-3)),
}


def _shapes(make):
    model = make()
    seen, shapes = set(), []
    for p in model.parameters():  # tied weights appear once, as in the optimizer
        if id(p) not in seen:
            seen.add(id(p))
            shapes.append(tuple(p.shape))
    return shapes


def _steppers(shapes, opt_name, kw, bitwise=False):
    import torch

    import conch
    from conch.kernels import _jit

    rng = np.random.default_rng(0)
    values = [rng.standard_normal(s).astype(np.float32) * 0.1 for s in shapes]
    grads = [rng.standard_normal(s).astype(np.float32) * 0.01 for s in shapes]

    def conch_opt():
        ps = [conch.tensor(v.copy(), requires_grad=True) for v in values]
        for p, g in zip(ps, grads):
            p.grad = conch.tensor(g)
        return getattr(conch.optim, opt_name)(ps, **kw)

    tps = [torch.tensor(v.copy(), requires_grad=True) for v in values]
    for p, g in zip(tps, grads):
        p.grad = torch.tensor(g)
    topt = getattr(torch.optim, opt_name)(tps, **kw)
    c_numba, c_numpy = conch_opt(), conch_opt()

    fns = {"torch": topt.step, "conch numpy": _toggled(False, c_numpy.step, bitwise)}
    if _jit._probe():
        fns["conch numba"] = _toggled(True, c_numba.step, bitwise)
    return fns


def _toggled(flag, fn, bitwise=False):
    """``fn`` run with conch's compiled kernels on (``flag``) or off, in the bitwise mode or not."""
    import conch
    from conch.kernels import _jit

    def run():
        prev = _jit.set_enabled(flag)
        conch.optim.set_bitwise_torch(bitwise)
        try:
            fn()
        finally:
            _jit.set_enabled(prev)
            conch.optim.set_bitwise_torch(False)

    return run


def bench_model_steps(args):
    import torch

    import conch

    for name, (mk_conch, mk_torch) in MODELS.items():
        if not (("mlp 64" in name or "gpt" in name) and args.match in name):
            continue
        fns = {"torch": _step_fn("torch", *mk_torch()), "conch numpy": _toggled(False, _step_fn("conch", *mk_conch())),
               "conch numba": _toggled(True, _step_fn("conch", *mk_conch()))}  # fmt: skip
        for t in [int(x) for x in args.threads.split(",")]:
            conch.set_num_threads(t)
            torch.set_num_threads(t)
            _report(f"{name} step", t, interleaved(fns, args.rounds, args.steps))


def _report(label, threads, res):
    tw, tc = res["torch"]
    cells = "  ".join(
        f"{k} {w * 1e6:8.1f} us (wall x{w / tw:.2f}, cpu x{c / tc:.2f})" for k, (w, c) in res.items() if k != "torch"
    )
    print(f"{label} threads={threads}  torch {tw * 1e6:8.1f} us  {cells}", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--match", default="", help="only the parameter sets whose name contains this")
    ap.add_argument("--opt", default="", help="only the optimizers whose name contains this")
    ap.add_argument("--bitwise", action="store_true", help="conch in set_bitwise_torch(True) mode")
    ap.add_argument("--models", action="store_true", help="whole MLP and GPT training steps instead")
    args = ap.parse_args(argv)
    import torch

    import conch

    print(f"{os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
          f"{', conch bitwise mode' if args.bitwise else ''}")  # fmt: skip
    if args.models:
        return bench_model_steps(args)
    for set_name, make in SETS.items():
        if args.match not in set_name:
            continue
        shapes = _shapes(make)
        n = sum(int(np.prod(s)) for s in shapes)
        for opt_key, (opt_name, kw) in OPTS.items():
            if args.opt not in opt_key:
                continue
            fns = _steppers(shapes, opt_name, kw, args.bitwise)
            for t in [int(x) for x in args.threads.split(",")]:
                conch.set_num_threads(t)
                torch.set_num_threads(t)
                res = interleaved(fns, args.rounds, args.steps)
                _report(f"{set_name} ({len(shapes)} tensors, {n} floats) {opt_key:<13}", t, res)


if __name__ == "__main__":
    main()
