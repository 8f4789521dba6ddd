"""The launcher: ``python -m conch.distributed.run --nproc-per-node N script.py args...`` (torchrun's spelling)
over the environment's ``mpiexec``; each rank runs under ``python -m mpi4py``, so an uncaught exception on one
rank prints its traceback and aborts the whole job with a non-zero exit instead of leaving the others hanging."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path


def find_mpiexec():
    """``mpiexec`` next to this Python (the ``mpich`` wheel puts it in the venv's bin), else on PATH, else None."""
    for name in ("mpiexec", "mpirun"):
        beside = Path(sys.executable).parent / name
        if beside.is_file() and os.access(beside, os.X_OK):
            return str(beside)
    return shutil.which("mpiexec") or shutil.which("mpirun")


def environment(nproc, base=None):
    """The ranks' environment: ``base`` (default ``os.environ``) with ``OMP_NUM_THREADS`` set, unless given, to
    the cores divided among the ``nproc`` ranks of this node, as torchrun does (N ranks each running a
    many-threaded BLAS on the same cores mostly wait for one another)."""
    env = dict(os.environ if base is None else base)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, nproc))))
    return env


def command(nproc, target, args, module=False, mpiexec=None):
    """The ``mpiexec`` command line that runs ``target`` (a script, or a module with ``module=True``) on
    ``nproc`` ranks; each rank starts in conch.distributed._rank, which exports RANK/LOCAL_RANK/... first."""
    mpiexec = mpiexec or find_mpiexec()
    if mpiexec is None:
        raise RuntimeError(
            "conch.distributed.run needs mpiexec and found none next to Python or on PATH: "
            "pip install 'conch[distributed]' (the mpich wheel provides mpiexec), or install an MPI"
        )
    run = ["-m", target] if module else [target]
    return [mpiexec, "-n", str(nproc), sys.executable, "-m", "conch.distributed._rank", *run, *args]


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m conch.distributed.run",
        description="Run a training script on N processes (ranks) over MPI; one rank failing ends the job.",
    )
    p.add_argument("--nproc-per-node", "--nproc_per_node", "--nproc", type=int, default=1, dest="nproc",
                   help="number of processes to start (one per GPU on a GPU node)")  # fmt: skip
    p.add_argument("--mpiexec", default=None, help="the mpiexec to use (default: next to Python, else on PATH)")
    p.add_argument("-m", "--module", action="store_true", help="run the target as a module, like python -m")
    p.add_argument("target", help="the script (or module, with -m) to run")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the script")
    ns = p.parse_args(argv)
    if ns.nproc < 1:
        p.error("--nproc-per-node must be at least 1")
    try:
        cmd = command(ns.nproc, ns.target, ns.args, ns.module, ns.mpiexec)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return subprocess.call(cmd, env=environment(ns.nproc))


if __name__ == "__main__":
    sys.exit(main())
