"""Numba-compiled row kernels on the CPU: layer/RMS norm, softmax, attention's masked softmax, cross-entropy.

Every op here works along the last axis of a (rows, n) array, one row at a time: the max, the exponentials, the sum
and the scaling of a softmax row take two or three passes over the row while it sits in the L1 cache, where the
NumPy reference paths take 5-8 whole-array passes plus reductions along short rows (slow in NumPy). The kernels
take C-contiguous float32 or float64 arrays (float16/bfloat16 inputs are computed in float32, rounded once at the
end, as on the reference paths), which keeps Numba's compiled signatures to two per kernel.

Rows are split between the pool's threads (:mod:`conch.kernels._threads`), never within a row, so every result is
the same bit for bit on any number of threads; the weight and bias gradients of the norms are summed over fixed
blocks of :data:`ROW_BLOCK` rows and then over the blocks in order, independent of the thread count too.

float32 exponentials use act.py's :func:`_exp32`, Cephes' expf polynomial (within 2 ulp of exp) that LLVM vectorizes;
``math.exp`` is a scalar libm call per element (8x slower here: Numba has no SVML on this machine). float64 keeps
``math.exp`` (the float64 paths are for gradient checks). Row sums are compiled with reassociation (:data:`_SUM`),
so LLVM vectorizes them; row maxima use eight running maxima (LLVM does not vectorize a float max reduction here).

Example (what kernels/softmax.py does behind ``_jit.enabled()``)::

    from conch.kernels import _jit
    y = _jit.family("rows").softmax_forward(x, log=False)   # x: (..., C) NumPy array
"""

from __future__ import annotations

import math

import numpy as np

from .._threads import parallel_for
from . import njit
from .act import _exp as _vexp  # exp in the float type of x: act's vectorizable float32 exp, math.exp for float64

#: Rows per block of the norms' dweight/dbias partial sums: the partials are a (ceil(rows / ROW_BLOCK), D) array
#: summed in block order at the end, so the bits do not depend on how the pool splits the blocks.
ROW_BLOCK = 64

#: Element-passes (the pool's unit, kernels/_threads.py) one element of a compiled row kernel counts for: a
#: kernel runs at ~1 ns per element, so the pool's threshold (MIN_PARALLEL, 2**21) falls at ~200 k elements,
#: ~200 us of work. A one-pass compiled kernel split over 2 threads measured slower below ~130 us of serial
#: work and faster above it (the AdamW update, docs/benchmarks.md "Compiled optimizer updates").
WEIGHT = 10


# ----------------------------------------------------------------------------------------------------------------
# Row helpers (inlined into the kernels by LLVM, or by Numba where marked)
# ----------------------------------------------------------------------------------------------------------------


@njit
def _rmax(a, n):
    """max(a[:n]) (n >= 1) with eight running maxima; a NaN may be skipped (the row's sum turns NaN anyway)."""
    m0 = a[0]
    m1 = m2 = m3 = m4 = m5 = m6 = m7 = m0
    j = 0
    while j + 8 <= n:
        m0, m1, m2, m3 = max(m0, a[j]), max(m1, a[j + 1]), max(m2, a[j + 2]), max(m3, a[j + 3])
        m4, m5, m6, m7 = max(m4, a[j + 4]), max(m5, a[j + 5]), max(m6, a[j + 6]), max(m7, a[j + 7])
        j += 8
    while j < n:
        m0 = max(m0, a[j])
        j += 1
    return max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))


@njit
def _rspread(a, n):
    """max(a[:n]) - min(a[:n]) (n >= 1). One plain loop: the norm kernel calls it only for rows whose sum of squares
    overflowed, and a four-way unrolled version, even uncalled, made that kernel 1.4x slower (its inlined code)."""
    h = lo = a[0]
    for j in range(n):
        h, lo = max(h, a[j]), min(lo, a[j])
    return h - lo


#: The row sums' options: conch's plus reassociation, so that LLVM vectorizes the sum into 16-32 partial sums
#: (5-7x faster than a chain of dependent adds). The order then depends only on the row's length and the
#: machine's vector width, never on the row's address or on which thread runs it: the same bits for the same row.
_SUM = {"fastmath": {"contract", "reassoc"}}


@njit(**_SUM)
def _rsum(a, n):
    """sum(a[:n]) in a's dtype."""
    s = a.dtype.type(0)
    for j in range(n):
        s += a[j]
    return s


@njit(**_SUM)
def _rdot(a, b, n):
    """sum(a[:n] * b[:n]) in a's dtype."""
    s = a.dtype.type(0)
    for j in range(n):
        s += a[j] * b[j]
    return s


@njit(**_SUM)
def _rcsq(a, m, n):
    """sum((a[:n] - m)²) in a's dtype."""
    s = a.dtype.type(0)
    for j in range(n):
        t = a[j] - m
        s += t * t
    return s


@njit(**_SUM)
def _rdot3(a, b, c, n):
    """sum(a[:n] * b[:n] * c[:n]) in a's dtype."""
    s = a.dtype.type(0)
    for j in range(n):
        s += (a[j] * b[j]) * c[j]
    return s


@njit(**_SUM)
def _exp_sum(xr, m, yr, n):
    """yr[:n] = exp(xr[:n] - m) and their sum, in one pass (_vexp is compiled on its own, without reassoc)."""
    s = xr.dtype.type(0)
    for j in range(n):
        e = _vexp(xr[j] - m)
        yr[j] = e
        s += e
    return s


@njit(inline="always")
def _softmax_row(xr, yr, n):
    """yr[:n] = softmax(xr[:n]) (yr not xr): max, exp and sum, scale by 1 / sum (within 1 ulp of dividing)."""
    m = _rmax(xr, n)
    inv = xr.dtype.type(1) / _exp_sum(xr, m, yr, n)
    for j in range(n):
        yr[j] = yr[j] * inv


# ----------------------------------------------------------------------------------------------------------------
# Kernels: C-contiguous 2-D float32/float64 arrays, rows [lo, hi) (the pool's chunk)
# ----------------------------------------------------------------------------------------------------------------


@njit
def _softmax_fwd(x, y, log, lo, hi):
    n = x.shape[1]
    for i in range(lo, hi):
        xr, yr = x[i], y[i]
        if not log:
            _softmax_row(xr, yr, n)
            continue
        m = _rmax(xr, n)
        ls = math.log(_exp_sum(xr, m, yr, n))
        for j in range(n):
            yr[j] = (xr[j] - m) - ls


@njit
def _softmax_bwd(y, dy, dx, log, lo, hi):
    n = y.shape[1]
    for i in range(lo, hi):
        yr, gr, dr = y[i], dy[i], dx[i]
        if log:  # dx = dy - exp(y) * sum(dy)
            s = _rsum(gr, n)
            for j in range(n):
                dr[j] = gr[j] - _vexp(yr[j]) * s
        else:  # dx = y * (dy - sum(dy * y))
            s = _rdot(gr, yr, n)
            for j in range(n):
                dr[j] = (gr[j] - s) * yr[j]


@njit
def _attn_softmax(s, L, scale, causal, lo, hi):
    """In place: row r of s (query r % L) becomes softmax(s[r] * scale) over keys j <= r % L (causal) or all."""
    n = s.shape[1]
    # the row's scaled scores go to a scratch row first: a loop reading and writing one row through two views
    # fails LLVM's overlap check and runs its unvectorized copy (3x slower)
    tmp = np.empty(n, dtype=s.dtype)
    for r in range(lo, hi):
        sr = s[r]
        k = min(r % L + 1, n) if causal else n
        for j in range(k):
            tmp[j] = sr[j] * scale
        _softmax_row(tmp, sr, k)
        for j in range(k, n):
            sr[j] = 0
    return s


@njit
def _attn_ds(dp, g, o, p, lo, hi):
    """In place: ds = p * (dp - delta) with delta_r = sum_d g[r, d] * o[r, d] (attention's backward row term)."""
    n, dv = dp.shape[1], g.shape[1]
    for r in range(lo, hi):
        delta = _rdot(g[r], o[r], dv)
        dr, pr = dp[r], p[r]
        for j in range(n):
            dr[j] = (dr[j] - delta) * pr[j]


@njit
def _norm_fwd(x, w, b, eps, is_rms, y, mean, rstd, lo, hi):
    """y = (x - mean) * rstd * w + b per row (RMS: x * rstd * w), the variance of the centred row (two passes:
    the mean, then the squares of x - mean formed on the fly, not stored: 2x faster than a centred copy)."""
    d = x.shape[1]
    T = x.dtype.type
    for i in range(lo, hi):
        xr, yr = x[i], y[i]
        m = T(0)
        if is_rms:
            ss = _rdot(xr, xr, d)
        else:
            m = _rsum(xr, d) / T(d)
            ss = _rcsq(xr, m, d)
        r = T(1.0 / math.sqrt(ss / T(d) + eps))
        # a spread that overflows gives NaN, as the reference and PyTorch's Welford moments; such a row's centred
        # squares overflow too, so the (scalar, unvectorized) spread pass runs only for a sum of squares of inf
        if not is_rms and math.isinf(ss) and math.isinf(_rspread(xr, d)):
            r = T(np.nan)
        mean[i], rstd[i] = m, r
        for j in range(d):
            yr[j] = (xr[j] - m) * r * w[j] + b[j]


@njit
def _norm_bwd(x, dy, mean, rstd, w, is_rms, with_db, dx, dwp, dbp, block, blo, bhi):
    """dx of rows in blocks [blo, bhi) of ``block`` rows; dwp[k] / dbp[k]: block k's sums of dy * xhat and dy."""
    m, d = x.shape
    for k in range(blo, bhi):
        dwk, dbk = dwp[k], dbp[k]
        for i in range(k * block, min(k * block + block, m)):
            xr, gr, dr = x[i], dy[i], dx[i]
            r = rstd[i]
            mu = x.dtype.type(0) if is_rms else mean[i]
            for j in range(d):
                xh = (xr[j] - mu) * r  # xhat, kept in dx's row until the last pass
                dr[j] = xh
                dwk[j] += gr[j] * xh
            if with_db:
                for j in range(d):
                    dbk[j] += gr[j]
            c1t = _rdot3(gr, dr, w, d) / x.dtype.type(d)  # mean(dy * xhat * w)
            c2t = x.dtype.type(0) if is_rms else _rdot(gr, w, d) / x.dtype.type(d)  # mean(dy * w)
            for j in range(d):
                dr[j] = ((gr[j] * w[j] - dr[j] * c1t) - c2t) * r


@njit
def _ce_fwd(x, t, ignore_index, eps, loss, row_max, log_sum, lo, hi):
    """Per row: row_max, log_sum = log sum exp(x - row_max), loss (label smoothing eps; 0 where t == ignore_index)."""
    v = x.shape[1]
    T = x.dtype.type
    tmp = np.empty(v, dtype=x.dtype)
    for i in range(lo, hi):
        xr = x[i]
        m = _rmax(xr, v)
        ls = math.log(_exp_sum(xr, m, tmp, v))
        row_max[i], log_sum[i] = m, ls
        ti = t[i]
        if ti == ignore_index:
            loss[i] = 0
            continue
        nll = ls - (xr[ti] - m)  # -log softmax(x)[t] = lse - (x_t - m)
        if eps > 0:
            for j in range(v):
                tmp[j] = xr[j] - m
            smooth = T(v) * ls - _rsum(tmp, v)  # sum_j -log softmax(x)_j
            nll = (1 - eps) * nll + (eps / T(v)) * smooth
        loss[i] = nll


@njit
def _ce_bwd(x, t, row_max, log_sum, scale, per_row, ignore_index, eps, g, lo, hi):
    """g = (softmax(x) - (1 - eps) onehot(t) - eps / V) * scale_i per row, 0 where t == ignore_index (g may be x)."""
    v = x.shape[1]
    off = eps / x.dtype.type(v)
    tmp = np.empty(v, dtype=x.dtype)  # the row's x - row_max - log_sum: g may be x (see _attn_softmax's tmp)
    for i in range(lo, hi):
        gr = g[i]
        ti = t[i]
        if ti == ignore_index:
            for j in range(v):
                gr[j] = 0
            continue
        xr = x[i]
        m, ls = row_max[i], log_sum[i]
        sc = scale[i] if per_row else scale[0]
        for j in range(v):
            tmp[j] = (xr[j] - m) - ls
        for j in range(v):
            gr[j] = (_vexp(tmp[j]) - off) * sc
        gr[ti] = ((_vexp(tmp[ti]) - off) - (1 - eps)) * sc


# ----------------------------------------------------------------------------------------------------------------
# Entry points: NumPy arrays in, NumPy arrays out, rows split over the pool
# ----------------------------------------------------------------------------------------------------------------


def _acc(dtype):
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def _rows2d(a, acc):
    """``a`` as a C-contiguous (rows, n) array of ``acc`` (a view when it already is one)."""
    return np.ascontiguousarray(a.reshape(-1, a.shape[-1]), dtype=acc)


def _split(kernel, n_rows, n_cols, *args):
    """``kernel(*args, lo, hi)`` over row chunks of [0, n_rows) on the pool (rows never split)."""
    parallel_for(n_rows, lambda a, b: kernel(*args, a, b), work=n_rows * n_cols * WEIGHT)


def softmax_forward(x, log):
    """softmax (or log_softmax) of ``x`` (..., C) along the last axis; ``x``'s shape and dtype (C >= 1)."""
    acc = _acc(x.dtype)
    x2 = _rows2d(x, acc)
    y = np.empty_like(x2)
    _split(_softmax_fwd, x2.shape[0], x2.shape[1], x2, y, bool(log))
    return y.reshape(x.shape).astype(x.dtype, copy=False)


def softmax_backward(y, dy, log):
    """dx of softmax (``log``: log_softmax) from its output ``y`` and ``dy`` (same shape); ``y``'s dtype."""
    acc = _acc(y.dtype)
    y2, g2 = _rows2d(y, acc), _rows2d(dy, acc)
    dx = np.empty_like(y2)
    _split(_softmax_bwd, y2.shape[0], y2.shape[1], y2, g2, dx, bool(log))
    return dx.reshape(y.shape).astype(y.dtype, copy=False)


def attention_softmax(s, scale, causal):
    """In place on the C-contiguous float32/float64 scores ``s`` (..., L, S): softmax(s * scale) along the keys,
    masked to keys j <= i for query i when ``causal`` (top-left aligned; masked probabilities are 0). Returns s."""
    L, n = s.shape[-2], s.shape[-1]
    s2 = s.reshape(-1, n)
    _split(_attn_softmax, s2.shape[0], n, s2, L, s.dtype.type(scale), bool(causal))
    return s


def attention_ds(dp, g, o, p):
    """In place on ``dp`` (..., L, S): ds = p * (dp - delta), delta = sum(g * o, -1) with g, o (..., L, Dv)."""
    n, acc = dp.shape[-1], dp.dtype.type
    dp2, p2 = dp.reshape(-1, n), p.reshape(-1, n)
    g2, o2 = _rows2d(g, acc), _rows2d(o, acc)
    _split(_attn_ds, dp2.shape[0], n + g2.shape[1], dp2, g2, o2, p2)
    return dp


def norm_forward(x2, weight, bias, eps, is_rms, out_dtype):
    """(y in ``out_dtype``, mean (None for RMS), rstd) of the rows of ``x2`` (M, D), as norms._norm_fwd_rows."""
    acc = _acc(x2.dtype)
    xf = np.ascontiguousarray(x2, dtype=acc)
    m, d = xf.shape
    w = np.ones(d, acc) if weight is None else np.ascontiguousarray(weight, dtype=acc)
    b = np.zeros(d, acc) if bias is None else np.ascontiguousarray(bias, dtype=acc)
    y = np.empty_like(xf)
    mean, rstd = np.empty(m, acc), np.empty(m, acc)
    _split(_norm_fwd, m, d, xf, w, b, float(eps), bool(is_rms), y, mean, rstd)
    return y.astype(out_dtype, copy=False), (None if is_rms else mean), rstd


def norm_backward(x2, dy2, mean, rstd, weight, is_rms, with_db):
    """(dx in x2's dtype, dweight sum or None, dbias sum or None) in the accumulation dtype, as norms._norm_bwd_ref.

    dweight = sum_rows(dy * xhat) and dbias = sum_rows(dy) are summed per block of :data:`ROW_BLOCK` rows, then
    over the blocks in order: the same bits on any number of threads."""
    acc = _acc(x2.dtype)
    xf, gf = np.ascontiguousarray(x2, dtype=acc), np.ascontiguousarray(dy2, dtype=acc)
    m, d = xf.shape
    w = np.ones(d, acc) if weight is None else np.ascontiguousarray(weight, dtype=acc)
    mu = rstd if mean is None else np.ascontiguousarray(mean, dtype=acc)  # unread for RMS
    rs = np.ascontiguousarray(rstd, dtype=acc)
    nb = -(-m // ROW_BLOCK)
    dwp = np.zeros((nb, d), acc)
    dbp = np.zeros((nb, d) if with_db else (1, d), acc)
    dx = np.empty_like(xf)

    def body(a, b):
        _norm_bwd(xf, gf, mu, rs, w, bool(is_rms), bool(with_db), dx, dwp, dbp, ROW_BLOCK, a, b)

    parallel_for(nb, body, work=m * d * WEIGHT, align=1)
    dw = dwp.sum(axis=0) if weight is not None else None
    db = dbp.sum(axis=0) if with_db else None
    return dx.astype(x2.dtype, copy=False), dw, db


def ce_forward(x2, t, ignore_index, eps):
    """(loss, row_max, log_sum) per row of the logits ``x2`` (N, V) for targets ``t`` (N,), as
    cross_entropy._ce_fwd_reference: float32 (float64 for float64 logits)."""
    acc = _acc(x2.dtype)
    xf = np.ascontiguousarray(x2, dtype=acc)
    n, v = xf.shape
    loss, row_max, log_sum = np.empty(n, acc), np.empty(n, acc), np.empty(n, acc)
    t64 = np.ascontiguousarray(t, dtype=np.int64)
    _split(_ce_fwd, n, v, xf, t64, int(ignore_index), acc(eps), loss, row_max, log_sum)
    return loss, row_max, log_sum


def ce_backward(x2, t, row_max, log_sum, scale, per_row, ignore_index, eps, out=None):
    """dlogits (N, V) in x2's dtype (or written into ``out``, which may be x2 itself), as
    cross_entropy._ce_bwd_reference; ``scale``: (N,) when ``per_row``, else one element."""
    acc = _acc(x2.dtype)
    xf = np.ascontiguousarray(x2, dtype=acc)
    n, v = xf.shape
    g = out if out is not None and out.dtype == acc else np.empty_like(xf)
    args = (np.ascontiguousarray(t, dtype=np.int64), row_max.astype(acc, copy=False), log_sum.astype(acc, copy=False))
    sc = np.ascontiguousarray(scale, dtype=acc).reshape(-1)
    _split(_ce_bwd, n, v, xf, *args, sc, bool(per_row), int(ignore_index), acc(eps), g)
    if out is not None and g is not out:
        out[...] = g
        return out
    return g.astype(x2.dtype, copy=False)
