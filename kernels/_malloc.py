"""glibc malloc settings for the CPU path: large NumPy temporaries reuse heap memory instead of fresh pages.

A training step on the CPU allocates and frees the same large arrays every step (activations, products,
gradients: megabytes each). glibc serves an allocation above its mmap threshold (128 KiB, rising to at most
32 MiB as such blocks are freed) with fresh pages from the kernel, and gives the top of its heap back once more
than twice that is free. Either way the next step writes to pages the kernel must fault in and zero first: in
the GPT step of ``benchmarks/bench_cpu_models.py`` that was ~9,600 page faults and ~8 ms of a 62 ms step (13%),
in the 28x28 CNN ~1,200 faults and ~1.2 ms of 9 ms. PyTorch keeps its own allocator for the same reason.

:func:`tune` (called by ``import conch``) raises both thresholds once, through ``mallopt``: blocks below
``MMAP_THRESHOLD`` come from the heap and are reused, and up to ``TRIM_THRESHOLD`` of free heap is kept for
the next step. The cost is that a process keeps its peak heap (as PyTorch's caching allocators keep their
peak). ``CONCH_MALLOC=system`` leaves glibc's defaults; other C libraries (musl) and other systems are left
alone. Results never change, only where memory comes from::

    from conch.kernels import _malloc
    _malloc.tune()     # True when the settings were applied
"""

from __future__ import annotations

import ctypes
import os
import sys

#: Allocations below this many bytes come from malloc's heap (glibc's mallopt M_MMAP_THRESHOLD).
MMAP_THRESHOLD = 256 << 20
#: Free memory at the top of the heap kept for reuse (mallopt M_TRIM_THRESHOLD).
TRIM_THRESHOLD = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
_state: dict = {"applied": None}


def tune() -> bool:
    """Apply the thresholds above once per process (glibc on Linux, ``CONCH_MALLOC`` not ``system``)."""
    if _state["applied"] is not None:
        return _state["applied"]
    ok = False
    if os.environ.get("CONCH_MALLOC", "").strip().lower() not in ("system", "0", "off") and sys.platform == "linux":
        mallopt = _glibc_mallopt()
        if mallopt is not None:
            ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    _state["applied"] = ok
    return ok


def _glibc_mallopt():
    """glibc's mallopt from the C library this process runs on, or None (musl's ignores these settings)."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  (present in glibc only)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt
