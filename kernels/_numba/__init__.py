"""Numba-compiled CPU kernels, one module per family; imported only through :func:`conch.kernels._jit.family`.

Every kernel is built by :func:`njit`: cached on disk (Numba's ``__pycache__``, so a process after the first pays
no compile), ``nogil`` (the thread pool runs chunks in parallel), NumPy's error model (x / 0 gives inf, not an
exception) and no bounds checks. ``fastmath`` is limited to contracting a·b + c into one FMA: results stay
deterministic and the same whatever the chunking, and NaN and inf propagate as in NumPy. Row reductions
(``rows.py``'s sums and dot products) add ``reassoc`` through ``njit(fastmath=...)``, which lets LLVM keep
several partial sums in vector lanes (5-7x faster than a sequential sum): the order then depends only on the
row's length and the compiled code, never on the address or the thread count (tests/kernels/test_numba_rows.py).
"""

from __future__ import annotations

import numba

#: The options of every conch kernel (see the module docstring for why each).
OPTIONS = dict(cache=True, nogil=True, error_model="numpy", boundscheck=False, fastmath={"contract"})


def njit(fn=None, **overrides):
    """``numba.njit`` with conch's :data:`OPTIONS` (``overrides`` replace single entries)."""
    opts = {**OPTIONS, **overrides}
    if fn is None:
        return lambda f: numba.njit(**opts)(f)
    return numba.njit(**opts)(fn)
