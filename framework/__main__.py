"""The ``conch`` command: ``conch train``, ``conch bench``, ``conch info``, ``conch demo``."""

from __future__ import annotations

import argparse
import sys

from ._cli import CommandError, debug_wanted, positive_int, quiet_broken_pipe, report, unrecognized


def _info(args):
    import platform

    import numpy as np

    import conch
    from conch.kernels import _cupy
    from conch.kernels._launch import interpreting, kernel_mode

    print(f"conch {conch.__version__}  python {platform.python_version()}  numpy {np.__version__}")
    try:
        import triton

        print(f"triton {triton.__version__}")
    except ImportError:
        print("triton: not installed (kernels take the reference path)")
    if _cupy.is_available():
        cp = _cupy.get_cupy()
        n = cp.cuda.runtime.getDeviceCount()
        names = [cp.cuda.runtime.getDeviceProperties(i)["name"].decode() for i in range(n)]
        print(f"cupy {cp.__version__}; GPUs: {', '.join(names)}")
        print("kernel path: Triton on the GPU" if kernel_mode() != "reference" else "kernel path: reference (forced)")
    else:
        print(f"no usable GPU ({_cupy.unavailable_reason()})")
        path = "Triton interpreter (TRITON_INTERPRET=1)" if interpreting() and kernel_mode() != "reference" else "NumPy"
        print(f"kernel path on the CPU: {path}")


def _demo(args):
    """Fit a two-layer MLP to a noisy sine with plain autograd and SGD; prints the loss falling."""
    import numpy as np

    import conch

    conch.manual_seed(0)
    x = conch.linspace(-3, 3, 256).reshape(-1, 1)
    y = x.sin() + conch.randn(256, 1) * 0.05
    w1 = (conch.randn(1, 64) * 1.0).requires_grad_()
    b1 = conch.zeros(64, requires_grad=True)
    w2 = (conch.randn(64, 1) * 0.1).requires_grad_()
    b2 = conch.zeros(1, requires_grad=True)
    params = [w1, b1, w2, b2]
    for step in range(args.steps + 1):
        pred = (x @ w1 + b1).tanh() @ w2 + b2
        loss = ((pred - y) ** 2).mean()
        for p in params:
            p.grad = None
        loss.backward()
        with conch.no_grad():
            for p in params:
                p -= 0.01 * p.grad
        if step % max(1, args.steps // 10) == 0:
            print(f"step {step:5d}  loss {loss.item():.5f}")
    print(f"final loss: {float(np.asarray(loss.item())):.5f}")


def _parser():
    parser = argparse.ArgumentParser(prog="conch", description="conch: deep learning on NVIDIA GPUs (and NumPy)")
    parser.add_argument("--traceback", action="store_true", help="show the full Python traceback of an error "
                        "(also: CONCH_DEBUG=1)")  # fmt: skip
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="{info,demo,train,bench}")
    sub.add_parser("info", help="versions, devices, which kernel path is active").set_defaults(fn=_info)
    d = sub.add_parser("demo", help="fit a small MLP with autograd on synthetic data")
    d.add_argument("--steps", type=positive_int, default=500)
    d.set_defaults(fn=_demo)
    from . import train

    train.add_parser(sub)
    try:
        from . import bench
    except ImportError:  # the benchmark command needs the benchmarks' own helpers
        bench = None
    if bench is not None and hasattr(bench, "add_parser"):
        bench.add_parser(sub)
    for p in sub.choices.values():  # accepted after the subcommand too, where users put it
        p.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser, sub


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, sub = _parser()
    # parse_known_args, then the subcommand's own error: argparse's parse_args would report an unknown option
    # after `train` with the top-level usage, which does not list train's options
    args, extras = parser.parse_known_args(argv)
    if extras:
        unrecognized(sub.choices.get(args.cmd, parser), extras)
    if debug_wanted(argv):
        return args.fn(args) or 0
    try:
        status = args.fn(args) or 0
        sys.stdout.flush()  # here, not at exit: a reader that left (`| head`) is then caught below
        return status
    except CommandError as e:
        if e.status == 130:
            print(f"conch: {e}", file=sys.stderr)
        else:
            report(str(e))
        return e.status
    except KeyboardInterrupt:
        print("\nconch: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return quiet_broken_pipe()
    except Exception as e:  # not an expected condition: one line, and how to see the whole story
        report(f"{type(e).__name__}: {e}")
        print("(this may be a bug in conch; rerun with --traceback or CONCH_DEBUG=1 for the full trace)",
              file=sys.stderr)  # fmt: skip
        return 1


if __name__ == "__main__":
    sys.exit(main())
