"""Shared state of the simulated GPU: counters of host syncs and transfers, the current device and stream."""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))

#: totals since the process started: host syncs, host-to-device transfers, device-property queries
COUNTS = {"sync": 0, "h2d": 0, "props": 0}
#: active :func:`conch.kernels.sim.count_syncs` recorders
RECORDERS: list = []
#: the current device id and the stack of ids saved by ``with Device(i)``
CURRENT = {"device": 0, "stream": None}


def device_count() -> int:
    """Simulated GPUs: ``CONCH_SIMULATE_GPU_COUNT`` (default 1)."""
    try:
        return max(int(os.environ.get("CONCH_SIMULATE_GPU_COUNT", "1")), 1)
    except ValueError:
        return 1


def _site(what: str) -> str:
    # the first frame outside the simulator and NumPy is the code that asked for the data
    f = sys._getframe(2)
    skip = (_HERE, f"{os.sep}numpy{os.sep}")
    while f is not None and (f.f_code.co_filename.startswith(skip[0]) or skip[1] in f.f_code.co_filename):
        f = f.f_back
    if f is None:
        return f"? ({what})"
    return f"{os.path.basename(f.f_code.co_filename)}:{f.f_lineno} in {f.f_code.co_name} ({what})"


def record(kind: str, what: str, n: int = 1) -> None:
    """Count ``n`` events of ``kind`` ("sync", "h2d", "props"); recorders get the call site of syncs."""
    COUNTS[kind] += n
    if RECORDERS and kind == "sync":
        site = _site(what)
        for r in RECORDERS:
            r.sites.extend([site] * n)
