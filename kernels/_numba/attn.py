"""Numba-compiled CPU kernels of attention's reference path: masked softmax and backward ds, on transposed scores.

The scores are kept transposed, ``sT[j, i] = k_j · q_i`` for key j and query i, one (S, L) block per batch-head,
so that the softmax over the keys of query i runs down column i: every pass is elementwise along a row of sT
(vectors of 8-16 queries), with the running maximum ``m[i]`` and the sum ``l[i]`` held in two short arrays, and
needs no reduction along a row. A row-wise softmax over short causal rows (64 keys, 32 on average unmasked) spends
most of its time in scalar loop tails and horizontal reductions; down the columns each pass vectorizes::

    m_i = max_j sT[j, i]·scale            (j <= i when causal)
    p[j, i] = exp(sT[j, i]·scale - m_i) / Σ_j exp(sT[j, i]·scale - m_i)      (0 where j > i)

Causal masking skips the masked part of each row of sT from the first whole vector of 8 columns on (columns i < j
are masked in row j): the exponentials are computed for about half the block. Masked entries are written 0 and
never used (read only under a select), so a caller may leave them unset (attention.py's split products). The
backward's row term is elementwise on the same layout, with the softmax scale folded in::

    dsT[j, i] = pT[j, i] · (dpT[j, i] - delta_i) · scale,   delta_i = Σ_d dout[i, d] · out[i, d] (the caller's)

Columns are independent, so the pool (:mod:`conch.kernels._threads`) splits the work between column strips and
batch-heads and the bits never depend on the thread count; every element is computed by the same instructions
(no reassociation: ``m`` and ``l`` accumulate down the rows in order). The exponentials take act.py's
``_exp_neg`` (arguments are <= 0 after the maximum is subtracted; float32 results below 2^-126 flush to 0, ten
operations fewer than the full exp), NaN passed through. Indices are unsigned so that LLVM drops
Numba's negative-index wraparound and vectorizes the loops. Example (what kernels/attention.py does)::

    st = np.matmul(k, qT)                         # (B·H, S, L) float32, C-contiguous
    _jit.family("attn").softmax_t(st, scale, causal=True)   # st now holds the probabilities, transposed
"""

from __future__ import annotations

import numpy as np
from numba import uint64

from .._threads import parallel_for
from . import njit
from .act import _exp_neg, _sel

#: Columns (queries) per strip: one strip's running maxima and sums stay in L1 and its rows are whole vectors.
STRIP = 64
#: Vector width the causal loops start on (columns below the first unmasked multiple of VEC are zeroed only).
VEC = 8
#: Element-passes one score counts for in the pool's threshold (kernels/_threads.py): ~1 ns per element and pass.
WEIGHT = 10


@njit
def _softmax_t(a, S, L, scale, causal, lo, hi):
    """Strips [lo, hi) of the flat (BH, S, L) transposed scores ``a``: in place, softmax down each column."""
    T = a.dtype.type
    ninf, zero = T(-np.inf), T(0)
    m = np.empty(STRIP, a.dtype)
    inv = np.empty(STRIP, a.dtype)
    nstrip = (L + STRIP - 1) // STRIP
    for t in range(lo, hi):
        h, b = t // nstrip, t % nstrip
        i0 = b * STRIP
        w = min(L - i0, STRIP)
        j1 = min(S, i0 + w) if causal else S  # rows below j1 are masked in every column of the strip
        base = uint64(h * S * L + i0)
        for i in range(w):
            m[uint64(i)] = ninf
            inv[uint64(i)] = zero  # the column sums first, their reciprocals after the exp pass
        for j in range(j1):
            cj = j - i0 if causal else 0  # strip columns i < cj are masked in row j
            c0 = max(cj, 0) // VEC * VEC
            o = base + uint64(j * L)
            for i in range(c0, w):
                iu = uint64(i)
                x = _sel(i < cj, ninf, a[o + iu] * scale)
                m[iu] = max(m[iu], x)  # a NaN may be skipped here: its exp turns the column's sum NaN
        for j in range(j1):
            cj = j - i0 if causal else 0
            c0 = max(cj, 0) // VEC * VEC
            o = base + uint64(j * L)
            for i in range(c0):
                a[o + uint64(i)] = zero
            for i in range(c0, w):
                iu = uint64(i)
                x = a[o + iu] * scale - m[iu]  # <= 0, or NaN (kept: a NaN score makes its column NaN)
                e = _sel(i < cj, zero, _sel(x != x, x, _exp_neg(x)))
                a[o + iu] = e
                inv[iu] += e
        for i in range(w):
            inv[uint64(i)] = T(1) / inv[uint64(i)]
        for j in range(j1):
            c0 = max(j - i0, 0) // VEC * VEC if causal else 0
            o = base + uint64(j * L)
            for i in range(c0, w):
                iu = uint64(i)
                a[o + iu] = a[o + iu] * inv[iu]
        for j in range(j1, S):
            o = base + uint64(j * L)
            for i in range(w):
                a[o + uint64(i)] = zero


@njit
def _ds_t(dp, p, delta, S, L, scale, causal, lo, hi):
    """Heads [lo, hi): in place on the flat (BH, S, L) ``dp``, dsT = pT · (dpT - delta) · scale (see module); with
    ``causal`` the masked entries (i < j) are written 0 without being read: the caller may leave them unset."""
    zero = dp.dtype.type(0)
    for h in range(lo, hi):
        dh = uint64(h * L)
        for j in range(S):
            r = uint64((h * S + j) * L)
            cj = j if causal else 0
            c0 = min(cj, L) // VEC * VEC
            for i in range(c0):
                dp[r + uint64(i)] = zero
            for i in range(c0, L):
                iu = uint64(i)
                dp[r + iu] = _sel(i < cj, zero, p[r + iu] * (dp[r + iu] - delta[dh + iu]) * scale)


def softmax_t(st, scale, causal):
    """In place on the C-contiguous float32/float64 transposed scores ``st`` (..., S, L): column i becomes
    softmax(st[:, i] · scale) over keys j (j <= i when ``causal``, top-left aligned; masked entries 0). Returns st."""
    S, L = st.shape[-2], st.shape[-1]
    bh = st.size // max(S * L, 1)
    n = bh * -(-L // STRIP)
    flat = st.reshape(-1)
    sc = st.dtype.type(scale)
    parallel_for(n, lambda a, b: _softmax_t(flat, S, L, sc, bool(causal), a, b), work=st.size * WEIGHT, align=1)
    return st


def ds_t(dpt, pt, delta, scale, causal=False):
    """In place on ``dpt`` (..., S, L), C-contiguous like ``pt``: dsT = pT (dpT - delta) · scale, ``delta`` (..., L)
    (one per query: sum(dout * out, -1); the same leading dims); ``causal``: entries j > i are 0 (not read).
    Returns dpt."""
    S, L = dpt.shape[-2], dpt.shape[-1]
    bh = dpt.size // max(S * L, 1)
    df = np.ascontiguousarray(delta, dtype=dpt.dtype).reshape(-1)
    flat, pf = dpt.reshape(-1), pt.reshape(-1)
    sc = dpt.dtype.type(scale)
    body = lambda a, b: _ds_t(flat, pf, df, S, L, sc, bool(causal), a, b)  # noqa: E731
    parallel_for(bh, body, work=dpt.size * WEIGHT, align=1)
    return dpt
