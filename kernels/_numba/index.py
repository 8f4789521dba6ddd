"""Numba-compiled scatter-add of rows: ``out[idx[i]] += g[i]``, the gradient of an embedding lookup or a row gather.

For idx (M,) integer indices into out's first axis (repeats accumulate) and g (M, ...) rows::

    out[k] = sum over i with idx[i] == k of g[i]      (in the order of i)

One pass over g in index order: each output row receives its rows in the order they appear, as ``np.add.at``
does, so the bits match it (the NumPy path's sort + ``np.add.reduceat`` for up to 4096 indices may differ from
both in the last bits: reduceat adds a group's rows in its own order). NumPy's fancy-index machinery costs ~1 us
per index in ``np.add.at``, and a sort, a gather and a reduceat per call in the segment sum (~0.28 ms for a
(1024, 128) embedding gradient); the loop runs at memory speed (~15 us). It runs on one thread: the order of a
row's sum must not depend on a split.

Example (what ops/indexing.py's IndexAdd does behind ``_jit.enabled()``)::

    out = np.zeros((vocab, d), np.float32)
    _jit.family("index").add_rows(out, idx, g)      # idx (M,) int64, g (M, d)
"""

from __future__ import annotations

import math

import numpy as np

from . import njit


@njit
def _add_rows(out, idx, g):
    d = out.shape[1]
    for i in range(idx.shape[0]):
        o, gr = out[idx[i]], g[i]
        for j in range(d):
            o[j] += gr[j]


def add_rows(out, idx, g) -> bool:
    """``out[idx] += g`` with repeated indices accumulating, for a C-contiguous float32/float64 ``out`` (N, ...),
    integer ``idx`` of any shape (negative entries count from the end, as NumPy's) and ``g`` of shape
    idx.shape + out.shape[1:]. Returns False, having done nothing, when the arrays are not of that kind (the
    caller keeps its NumPy path); raises IndexError for an index outside [-N, N)."""
    if out.dtype.char not in "fd" or not out.flags.c_contiguous or out.ndim < 1 or idx.dtype.kind not in "iu":
        return False
    n = out.shape[0]
    flat = idx.reshape(-1)
    if flat.size == 0:
        return True
    lo, hi = int(flat.min()), int(flat.max())
    if lo < -n or hi >= n:  # the kernel has no bounds checks: a wrong index must not write outside out
        raise IndexError(f"index {lo if lo < -n else hi} is out of bounds for axis 0 with size {n}")
    flat = np.where(flat < 0, flat + n, flat) if lo < 0 else flat
    rows = out.reshape(n, math.prod(out.shape[1:]))
    gr = np.ascontiguousarray(g.reshape(flat.size, rows.shape[1]), dtype=out.dtype)
    _add_rows(rows, np.ascontiguousarray(flat, dtype=np.int64), gr)
    return True
