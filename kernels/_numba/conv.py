"""Compiled im2col / col2im and max/avg pooling (forward and backward) for NumPy arrays, 1-3 spatial dims.

Every kernel sees 3 spatial dims (a 2-D input is the view (N, C, 1, H, W), a 1-D one (N, C, 1, 1, L)) and walks
(n, c) planes, so the pool splits a call between planes and the result is the same bits for any thread count.
Geometry per spatial dim (depth, height, width): kernel ``k``, stride ``s``, dilation ``d``, leading padding ``p``
and output size ``o``; input element (z, y, x) of window (oz, oy, ox) at offset (a, i, j) is
(oz·sz + a·dz - pz, oy·sy + i·dy - py, ox·sx + j·dx - px), and positions outside the input are padding.

- ``im2col(x, k, s, d, p, o, value)``: (N, C, *S) -> cols (N, C·∏k, ∏O), written row by row (no padded copy of
  x, no reshape copy), padding read as ``value``.
- ``col2im(cols, k, s, d, p, o, in_shape)``: the adjoint, each (n, c) plane summed in the cache over the ∏k
  window offsets in order (the NumPy path's order, so the same bits).
- ``batch_last=True`` (both): cols (C·∏k, ∏O·N) for one product over the whole batch (small planes), every
  entry part of a run of N contiguous elements; ``transpose(a, bias, group)`` takes arrays in and out of that
  layout (a tiled transpose, ``bias[i // group]`` added to the entries from a's row i).
- ``max_pool(x, k, s, d, p, o)`` -> (out, idx): each window's first maximum (a NaN counts as larger than any
  number, the first NaN wins; padding is skipped) and its flat index into the plane ∏S (PyTorch's indices).
  ``max_pool_backward(g, idx, in_shape)`` adds g at those indices.
- ``avg_pool(x, k, s, p, o, count_include_pad, divisor)`` and ``avg_pool_backward``: PyTorch's divisors (the
  window clipped to the padded input, or to the input when ``count_include_pad`` is False, or ``divisor`` > 0),
  sums accumulated in float64 and rounded once.

Example::

    from conch.kernels import _jit
    conv = _jit.family("conv")
    cols = conv.im2col(x, (1, 3, 3), (1, 1, 1), (1, 1, 1), (0, 1, 1), (1, 28, 28))  # x (64, 16, 1, 28, 28)
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .._threads import parallel_for
from . import njit


@njit
def _range(o, st, off, size):
    """[lo, hi) of the outputs t in range(o) with 0 <= t·st + off < size (an empty range gives lo == hi)."""
    lo = 0 if off >= 0 else (-off + st - 1) // st
    if lo > o:
        lo = o
    last = size - 1 - off
    hi = 0 if last < 0 else last // st + 1
    if hi > o:
        hi = o
    if hi < lo:
        hi = lo
    return lo, hi


# The kernels index flat 1-D arrays with computed offsets: a view per row (x[n, c, z, y]) would cost an allocation
# and two atomic reference-count updates, more than copying the row itself for the CNN's 14-wide rows. The inner
# loops index with unsigned offsets (_U), which spares Numba's negative-index wraparound and lets them vectorise.

_U = np.uint64


@njit
def _copy(dst, d0, src, s0, n):
    """dst[d0 : d0 + n] = src[s0 : s0 + n] (offsets >= 0)."""
    d0, s0 = _U(d0), _U(s0)
    for u in range(_U(n)):
        dst[d0 + u] = src[s0 + u]


@njit
def _add(dst, d0, src, s0, n):
    """dst[d0 : d0 + n] += src[s0 : s0 + n] (offsets >= 0)."""
    d0, s0 = _U(d0), _U(s0)
    for u in range(_U(n)):
        dst[d0 + u] += src[s0 + u]


@njit
def _fill(dst, d0, n, value):
    d0 = _U(d0)
    for u in range(_U(n)):
        dst[d0 + u] = value


@njit
def _borders(cols, at, ylo, yhi, lo, hi, ow, value):
    """The entries of rows ylo..yhi-1 outside the valid columns [lo, hi) set to value."""
    for zh in range(ylo, yhi):
        _fill(cols, at + zh * ow, lo, value)
        _fill(cols, at + zh * ow + hi, ow - hi, value)


@njit
def _patches(x, cols, size, k, s, d, p, o, value, adjoint, scratch, q0, q1):
    """im2col (``adjoint`` False: cols from x, padding read as value) or col2im (True: x's planes set to the sums
    of their cols entries; value must be 0) over the planes q0..q1-1 of x (N·C, D, H, W), cols (N, C·∏k, ∏O)."""
    dd, hh, ww = size
    kd, kh, kw = k
    od, oh, ow = o
    # unit strides and as wide an output as the input (a "same" convolution): the valid rows of one window
    # offset are one shifted contiguous run of x, whose border columns are the padding. im2col copies the run
    # and overwrites those entries afterwards; col2im, when cols is its own to change (scratch), sets them to
    # +0.0 first and adds the run (adding +0.0 to a sum that started at +0.0 changes no bit)
    runs = s[1] == 1 and s[2] == 1 and ow == ww and (scratch or not adjoint)
    for q in range(q0, q1):
        plane = q * dd * hh * ww
        if adjoint:
            _fill(x, plane, dd * hh * ww, 0.0)
        for a in range(kd):
            for i in range(kh):
                ylo, yhi = _range(oh, s[1], i * d[1] - p[1], hh)
                for j in range(kw):
                    at = (q * kd * kh * kw + (a * kh + i) * kw + j) * od * oh * ow
                    xo = j * d[2] - p[2]
                    lo, hi = _range(ow, s[2], xo, ww)
                    for zd in range(od):
                        iz = zd * s[0] + a * d[0] - p[0]
                        if iz < 0 or iz >= dd or ylo == yhi or lo == hi:
                            if not adjoint:
                                _fill(cols, at, oh * ow, value)
                            at += oh * ow
                            continue
                        if not adjoint:
                            _fill(cols, at, ylo * ow, value)
                            _fill(cols, at + yhi * ow, (oh - yhi) * ow, value)
                        if runs:  # from the first valid element of row ylo to the last of row yhi - 1
                            src = plane + (iz * hh + ylo + i * d[1] - p[1]) * ww + xo + lo
                            n = (yhi - ylo - 1) * ow + hi - lo
                            if adjoint:
                                _borders(cols, at, ylo, yhi, lo, hi, ow, value)
                                _add(x, src, cols, at + ylo * ow + lo, n)
                            else:
                                _copy(cols, at + ylo * ow + lo, x, src, n)
                                _borders(cols, at, ylo, yhi, lo, hi, ow, value)
                        else:
                            for zh in range(ylo, yhi):
                                src = plane + (iz * hh + zh * s[1] + i * d[1] - p[1]) * ww + xo
                                row = at + zh * ow
                                if adjoint and s[2] == 1:
                                    _add(x, src + lo, cols, row + lo, hi - lo)
                                elif adjoint:
                                    for t in range(lo, hi):
                                        x[src + t * s[2]] += cols[row + t]
                                elif s[2] == 1:
                                    _copy(cols, row + lo, x, src + lo, hi - lo)
                                else:
                                    for t in range(lo, hi):
                                        cols[row + t] = x[src + t * s[2]]
                            if not adjoint:
                                _borders(cols, at, ylo, yhi, lo, hi, ow, value)
                        at += oh * ow


@njit
def _patches_small(x, cols, table, plane, npos, value, adjoint, q0, q1):
    """_patches through a table, for small planes (``plane`` elements): entry (r, t) of the ∏k × ∏O block of
    plane q (``npos`` = ∏O) is x's plane at table[r·∏O + t] (-1: padding). Runs along 4-wide rows would be
    a loop call per 3-4 elements; the table is one loop over the block. cols is (N·C, ∏k, ∏O), q0..q1 count
    planes. col2im adds in (offset, position) order: each element's contributions in offset order, as _patches
    and the NumPy path."""
    nk = table.shape[0] // npos
    for q in range(q0, q1):
        xb = q * plane
        if adjoint:
            _fill(x, xb, plane, 0.0)
        for r in range(nk):
            rb, tb = (q * nk + r) * npos, r * npos
            if adjoint:
                for t in range(npos):
                    i = table[tb + t]
                    if i >= 0:
                        x[xb + i] += cols[rb + t]
            else:
                for t in range(npos):
                    i = table[tb + t]
                    v = x[xb + max(i, 0)]
                    cols[rb + t] = v if i >= 0 else value


@njit
def _patches_batch_last(xt, cols, table, plane, npos, batch, value, adjoint, q0, q1):
    """im2col / col2im (``adjoint``) in the batch-last layout, channels q0..q1-1: xt is the input as
    (C, ∏S, N) and cols (C·∏k, ∏O, N), so entry ((c, r), t, n) = xt[c, table[r·∏O + t], n] (-1: padding) and
    every read, write or add is a run of N contiguous elements. col2im sets each run of xt to the sum of its
    cols runs in (offset, position) order, the order of _patches_small and the NumPy path (the same bits)."""
    nk = table.shape[0] // npos
    for q in range(q0, q1):
        if adjoint:
            _fill(xt, q * plane * batch, plane * batch, 0.0)
        for r in range(nk):
            for t in range(npos):
                i = table[r * npos + t]
                at = ((q * nk + r) * npos + t) * batch
                if adjoint:
                    if i >= 0:
                        _add(xt, (q * plane + i) * batch, cols, at, batch)
                elif i >= 0:
                    _copy(cols, at, xt, (q * plane + i) * batch, batch)
                else:
                    _fill(cols, at, batch, value)


@njit
def _band8(src, dst, jb, it):
    """dst[jb : jb + 8, :it] = src[:it, jb : jb + 8]ᵀ in 8 x 8 tiles. Constant trip counts let LLVM turn a tile
    into register shuffles (~2x faster than a general tile loop), and only in a function of its own (measured:
    the same loops inlined in _transpose's band loop, or with an add in the tile, run at the general speed)."""
    for ib in range(0, it, 8):
        for j in range(8):
            for i in range(8):
                dst[jb + j, ib + i] = src[ib + i, jb + j]


@njit
def _transpose(src, dst, bias, group, j0, j1):
    """dst[j, i] = src[i, j] (+ bias[i // group] when bias is not empty) for dst's rows j0..j1-1; src (R, C),
    dst (C, R): 8-row bands of dst by _band8, the ragged edges element by element, then the bias added to
    each band just written (a contiguous pass, one rounding as src + bias)."""
    rows = src.shape[0]
    with_bias = bias.shape[0] > 0
    add = np.empty(rows if with_bias else 0, dtype=src.dtype)  # each source row's bias: no division per element
    for i in range(add.shape[0]):
        add[i] = bias[i // group]
    it = rows // 8 * 8
    for jb in range(j0, j1, 8):
        je = min(jb + 8, j1)
        done = it if je - jb == 8 else 0  # source rows whose tiles _band8 wrote
        if done:
            _band8(src, dst, jb, it)
        for j in range(jb, je):
            for i in range(done, rows):
                dst[j, i] = src[i, j]
            if with_bias:
                for i in range(rows):
                    dst[j, i] += add[i]


@njit
def _max_pool(x, out, idx, k, s, d, p, q0, q1):
    dd, hh, ww = x.shape[1], x.shape[2], x.shape[3]
    od, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    for q in range(q0, q1):
        for zd in range(od):
            for zh in range(oh):
                best, at = out[q, zd, zh], idx[q, zd, zh]
                at[:] = -1
                # a whole output row at a time, the window offsets (a, i, j) in row-major order, so each window
                # still sees its elements in order: the first maximum wins, a NaN beats any number
                for a in range(k[0]):
                    iz = zd * s[0] + a * d[0] - p[0]
                    if iz < 0 or iz >= dd:
                        continue
                    for i in range(k[1]):
                        ih = zh * s[1] + i * d[1] - p[1]
                        if ih < 0 or ih >= hh:
                            continue
                        src, base = x[q, iz, ih], (iz * hh + ih) * ww
                        for j in range(k[2]):
                            xo = j * d[2] - p[2]
                            lo, hi = _range(ow, s[2], xo, ww)
                            for t in range(lo, hi):
                                pos = t * s[2] + xo
                                v, b, was = src[pos], best[t], at[t]
                                # selects, not branches: whether v wins is data-dependent, a branch mispredicts
                                up = (was < 0) | (v > b) | ((v != v) & (b == b))
                                best[t] = v if up else b
                                at[t] = base + pos if up else was


@njit
def _max_pool2x2(x, out, q0, q1):
    oh, ow = out.shape[1], out.shape[2]
    for q in range(q0, q1):
        for zh in range(oh):
            r0, r1, o = x[q, 2 * zh], x[q, 2 * zh + 1], out[q, zh]
            for t in range(ow):
                a, b, c, e = r0[2 * t], r0[2 * t + 1], r1[2 * t], r1[2 * t + 1]
                nan = (a != a) | (b != b) | (c != c) | (e != e)
                m = max(max(a, b), max(c, e))
                o[t] = np.nan if nan else m


@njit
def _max_pool2x2_backward(x, out, g, dx, q0, q1):
    oh, ow = out.shape[1], out.shape[2]
    hh, ww = x.shape[1], x.shape[2]
    for q in range(q0, q1):
        for zh in range(oh):
            r0, r1, o, gr = x[q, 2 * zh], x[q, 2 * zh + 1], out[q, zh], g[q, zh]
            d0, d1 = dx[q, 2 * zh], dx[q, 2 * zh + 1]
            for t in range(ow):
                a, b, c, m, gv = r0[2 * t], r0[2 * t + 1], r1[2 * t], o[t], gr[t]
                # the first element equal to the maximum (or the first NaN, when the maximum is NaN) takes g
                ha = (a == m) | (a != a)
                hb = ((b == m) | (b != b)) & ~ha
                hc = ((c == m) | (c != c)) & ~(ha | hb)
                he = ~(ha | hb | hc)
                d0[2 * t] = gv if ha else 0.0
                d0[2 * t + 1] = gv if hb else 0.0
                d1[2 * t] = gv if hc else 0.0
                d1[2 * t + 1] = gv if he else 0.0
            for w in range(2 * ow, ww):  # an odd width: the last column is in no window
                d0[w] = 0.0
                d1[w] = 0.0
        for h in range(2 * oh, hh):
            for w in range(ww):
                dx[q, h, w] = 0.0


@njit
def _max_pool2x2_backward_narrow(x, out, g, dx, hh, ww, q0, q1):
    """_max_pool2x2_backward for rows of at most NARROW windows, on flat arrays with unsigned offsets: at 2 windows a
    row the vectorised loop's set-up and the row views cost more than the loop (the 8x8 CNN's 4x4 planes: ~2x
    faster). x, dx (P·H·W), out, g (P·OH·OW); the same selects, so the same bits."""
    oh, ow = hh // 2, ww // 2
    for q in range(q0, q1):
        for zh in range(oh):
            r0 = _U((q * hh + 2 * zh) * ww)
            r1 = r0 + _U(ww)
            ob = _U((q * oh + zh) * ow)
            for t in range(_U(ow)):
                a, b, c, m, gv = x[r0 + 2 * t], x[r0 + 2 * t + 1], x[r1 + 2 * t], out[ob + t], g[ob + t]
                ha = (a == m) | (a != a)
                hb = ((b == m) | (b != b)) & ~ha
                hc = ((c == m) | (c != c)) & ~(ha | hb)
                he = ~(ha | hb | hc)
                dx[r0 + 2 * t] = gv if ha else 0.0
                dx[r0 + 2 * t + 1] = gv if hb else 0.0
                dx[r1 + 2 * t] = gv if hc else 0.0
                dx[r1 + 2 * t + 1] = gv if he else 0.0
            for w in range(_U(2 * ow), _U(ww)):  # an odd width: the last column is in no window
                dx[r0 + w] = 0.0
                dx[r1 + w] = 0.0
        for w in range(_U((q * hh + 2 * oh) * ww), _U((q + 1) * hh * ww)):  # an odd height: the last row
            dx[w] = 0.0


@njit
def _max_pool_backward(g, idx, dx, q0, q1):
    for q in range(q0, q1):
        row = dx[q]
        row[:] = 0
        gq, iq = g[q], idx[q]
        for t in range(gq.shape[0]):
            row[iq[t]] += gq[t]


@njit
def _window(z, st, kk, pp, size, include_pad):
    """(first, stop, count) of one window along one dim: the input positions, and the divisor's share."""
    start = z * st - pp
    end = min(start + kk, size + pp)
    full = end - start
    a, b = max(start, 0), min(end, size)
    return a, b, full if include_pad else b - a


@njit
def _avg_pool(x, y, k, s, p, include_pad, divisor, adjoint, q0, q1):
    """Average pooling of the planes q0..q1-1 of x (P, D, H, W) into y (P, OD, OH, OW), or (``adjoint``) its
    transpose: x set to the sum of y / divisor over the windows holding each element."""
    for q in range(q0, q1):
        if adjoint:
            x[q] = 0
        for zd in range(y.shape[1]):
            a0, a1, nd = _window(zd, s[0], k[0], p[0], x.shape[1], include_pad)
            for zh in range(y.shape[2]):
                i0, i1, nh = _window(zh, s[1], k[1], p[1], x.shape[2], include_pad)
                for zw in range(y.shape[3]):
                    j0, j1, nw = _window(zw, s[2], k[2], p[2], x.shape[3], include_pad)
                    div = divisor if divisor > 0 else nd * nh * nw
                    if adjoint:
                        v = y[q, zd, zh, zw] / div
                        for a in range(a0, a1):
                            for i in range(i0, i1):
                                for j in range(j0, j1):
                                    x[q, a, i, j] += v
                    else:
                        acc = 0.0
                        for a in range(a0, a1):
                            for i in range(i0, i1):
                                for j in range(j0, j1):
                                    acc += x[q, a, i, j]
                        y[q, zd, zh, zw] = acc / div


# ----------------------------------------------------------------------------------------------------------------
# Callers' side: 5-D contiguous operands, the planes split over the pool
# ----------------------------------------------------------------------------------------------------------------


def _three(t, fill):
    """A per-dim tuple of 1-3 entries padded at the front to 3 (``fill`` for the missing leading dims)."""
    return (fill,) * (3 - len(t)) + tuple(int(v) for v in t)


def _five(a, spatial):
    """``a`` (N, C, *S) as a C-contiguous (N, C, D, H, W) array (a view when it already is contiguous)."""
    a = np.ascontiguousarray(a)
    return a.reshape(a.shape[:2] + _three(spatial, 1))


#: What one element of these kernels weighs against the pool's threshold (_threads.MIN_PARALLEL = 2**21). They
#: run at ~0.2-0.5 ns an element on one thread (im2col of the 28x28 CNN's second layer: 1.8e6 elements in ~0.5
#: ms; 2x2 max pooling's backward: 8e5 in ~0.4 ms), so a ~20-40 us handoff is repaid from ~1-3e5 elements; at 8
#: a call splits from 2**18 elements. Not measured on an idle machine yet (benchmarks/bench_cpu_models.py).
WORK_PER_ELEMENT = 8


def _split(planes, per_plane, kernel):
    """kernel(q0, q1) over the plane range, split between threads when there is enough work."""
    parallel_for(planes, kernel, work=planes * per_plane * WORK_PER_ELEMENT, align=1)


#: 2x2 max pooling's backward takes _max_pool2x2_backward_narrow for rows of at most this many windows (measured:
#: 2 windows ~2x faster there, 4 about even, 7 and more slower than the vectorised kernel).
NARROW = 2

#: Planes of at most this many output positions (∏O) take the table kernel (_patches_small): measured at the
#: CNNs' layers, the runs of _patches win from 8x8 outputs on and the table below (4x4: ~3x faster).
SMALL_OUTPUT = 32


@functools.lru_cache(maxsize=64)
def _table(size, k, s, d, p, o):
    """The flat plane position (-1: padding) that each (offset, output position) of a window geometry reads."""
    offs = np.indices(k).reshape(3, -1, 1)
    wins = np.indices(o).reshape(3, 1, -1)
    col = lambda v: np.array(v).reshape(3, 1, 1)  # noqa: E731
    pos = wins * col(s) + offs * col(d) - col(p)
    ok = ((pos >= 0) & (pos < col(size))).all(axis=0)
    flat = (pos[0] * size[1] + pos[1]) * size[2] + pos[2]
    return np.where(ok, flat, -1).astype(np.int64).ravel()


@functools.lru_cache(maxsize=256)
def _geometry(in_shape, k, s, d, p, o):
    """A call's geometry in 3 spatial dims, ((N, C, D, H, W), k, s, d, p, o): cached per shape, since building
    these tuples costs more Python than a small plane's kernel call."""
    three = (_three(k, 1), _three(s, 1), _three(d, 1), _three(p, 0), _three(o, 1))
    return (tuple(int(v) for v in in_shape[:2]) + _three(in_shape[2:], 1),) + three


def _patch_call(x, cols, shape, k, s, d, p, o, value, adjoint, scratch):
    """_patches or _patches_small over all planes of x (flat; ``shape`` (N, C, D, H, W)), split between threads."""
    size, planes = shape[2:], shape[0] * shape[1]
    if x.size == 0 or cols.size == 0:  # an empty batch (or a dim of size 0): nothing to read or write
        if adjoint:
            x[:] = 0
        return
    work = cols.size // planes
    if math.prod(o) <= SMALL_OUTPUT:
        args = (_table(size, k, s, d, p, o), math.prod(size), math.prod(o), value, adjoint)
        _split(planes, work, lambda a, b: _patches_small(x, cols, *args, a, b))
    else:
        args = (size, k, s, d, p, o, value, adjoint, scratch)
        _split(planes, work, lambda a, b: _patches(x, cols, *args, a, b))


def _batch_last_call(xt, cols, shape, k, s, d, p, o, value, adjoint):
    """_patches_batch_last over the channels of xt (C·∏S·N, flat) and cols (flat), split between threads."""
    n, c, size = shape[0], shape[1], shape[2:]
    if xt.size == 0 or cols.size == 0:
        if adjoint:
            xt[:] = 0
        return
    args = (_table(size, k, s, d, p, o), math.prod(size), math.prod(o), n, value, adjoint)
    _split(c, cols.size // c, lambda a, b: _patches_batch_last(xt, cols, *args, a, b))


def im2col(x, k, s, d, p, o, value=0.0, batch_last=False):
    """x (N, C, *S) float32/float64 -> cols (N, C·∏k, ∏O) of x's dtype; ``p`` the leading padding per dim
    (the trailing padding is whatever the output size ``o`` needs), ``value`` fills the padding.

    ``batch_last``: cols (C·∏k, ∏O·N) instead, entry ((c, r), (t, n)), for one product over the whole batch
    (small planes: N products of ∏O <= SMALL_OUTPUT columns cost more in BLAS calls than they compute). x is
    transposed to (C·∏S, N) first, so every entry is part of a contiguous run of N."""
    n, c = x.shape[:2]
    shape, k3, s3, d3, p3, o3 = geom = _geometry(x.shape, tuple(k), tuple(s), tuple(d), tuple(p), tuple(o))
    nk, npos = math.prod(k3), math.prod(o3)
    if batch_last:
        cols = np.empty((c * nk, npos * n), dtype=x.dtype)
        xt = transpose(x.reshape(n, math.prod(x.shape[1:])))
        _batch_last_call(xt.reshape(-1), cols.reshape(-1), *geom, float(value), False)
        return cols
    xf = np.ascontiguousarray(x).reshape(-1)
    cols = np.empty((n, c * nk, npos), dtype=x.dtype)
    _patch_call(xf, cols.reshape(-1), *geom, float(value), False, False)
    return cols


def col2im(cols, k, s, d, p, o, in_shape, scratch=False, batch_last=False):
    """cols (N, C·∏k, ∏O) float32/float64 -> (N, C, *S) (``in_shape``): every entry added onto the input
    position it was read from (padding positions dropped). ``scratch=True``: cols is a temporary the kernel may
    overwrite (its padding entries zeroed, so a "same" convolution's rows are added as long runs);
    ``batch_last``: cols is (C·∏k, ∏O·N), as im2col(batch_last=True) gives (the sums are formed in (C·∏S, N)
    and transposed back)."""
    cf = np.ascontiguousarray(cols).reshape(-1)
    geom = _geometry(tuple(in_shape), tuple(k), tuple(s), tuple(d), tuple(p), tuple(o))
    if batch_last:
        n = in_shape[0]
        xt = np.empty((math.prod(in_shape[1:]), n), dtype=cols.dtype)
        _batch_last_call(xt.reshape(-1), cf, *geom, 0.0, True)
        return transpose(xt).reshape(tuple(in_shape))
    scratch = bool(scratch) or not np.may_share_memory(cf, cols)  # a copy is ours to overwrite
    out = np.empty(tuple(in_shape), dtype=cols.dtype)
    _patch_call(out.reshape(-1), cf, *geom, 0.0, True, scratch)
    return out


_NO_BIAS = {np.dtype(t): np.empty(0, dtype=t) for t in (np.float32, np.float64)}


def transpose(a, bias=None, group=1):
    """a (R, C) float32/float64 -> its transpose (C, R), C-contiguous, plus ``bias[i // group]`` on the
    entries from a's row i when a bias (R // group,) is given: the batch-last layout's way in and out (NumPy's
    own transposing copy of a (512, 64) float32 matrix costs ~3x this tiled one)."""
    a = np.ascontiguousarray(a)
    out = np.empty(a.shape[::-1], dtype=a.dtype)
    b = _NO_BIAS[a.dtype] if bias is None else np.ascontiguousarray(bias, dtype=a.dtype)
    if a.size:
        _split(out.shape[0], a.shape[0], lambda j0, j1: _transpose(a, out, b, group, j0, j1))
    return out


def _planes(x, nd):
    """x (..., *S) as a C-contiguous (P, D, H, W) array of its P = ∏(leading dims) planes."""
    return _five(x.reshape((-1, 1) + x.shape[x.ndim - nd :]), x.shape[x.ndim - nd :])[:, 0]


def max_pool(x, k, s, d, p, o):
    """x (..., *S) float32/float64 -> (out, idx), both (..., *O): each window's first maximum and its flat index
    into ∏S (int64)."""
    nd = len(k)
    xq = _planes(x, nd)
    lead = x.shape[: x.ndim - nd]
    out = np.empty((xq.shape[0],) + _three(o, 1), dtype=x.dtype)
    idx = np.empty(out.shape, dtype=np.int64)
    args = (_three(k, 1), _three(s, 1), _three(d, 1), _three(p, 0))
    _split(xq.shape[0], math.prod(k) * math.prod(o), lambda a, b: _max_pool(xq, out, idx, *args, a, b))
    return out.reshape(lead + tuple(o)), idx.reshape(lead + tuple(o))


def max_pool2x2(x):
    """Max pooling 2x2 / stride 2 of x (..., H, W) float32/float64 -> (..., H // 2, W // 2) (a NaN in a
    window gives NaN); no indices (:func:`max_pool2x2_backward` finds the first maxima again from x and out)."""
    xq = _planes(x, 2)[:, 0]
    out = np.empty((xq.shape[0], xq.shape[1] // 2, xq.shape[2] // 2), dtype=x.dtype)
    _split(xq.shape[0], xq.shape[1] * xq.shape[2], lambda a, b: _max_pool2x2(xq, out, a, b))
    return out.reshape(x.shape[:-2] + out.shape[1:])


def max_pool2x2_backward(x, out, g):
    """dx (x's shape) of :func:`max_pool2x2`: g at each window's first maximum (first NaN), zeros elsewhere."""
    xq = _planes(x, 2)[:, 0]
    oq = np.ascontiguousarray(out).reshape((-1,) + out.shape[-2:])
    gq = np.ascontiguousarray(g, dtype=x.dtype).reshape(oq.shape)
    dx = np.empty(xq.shape, dtype=x.dtype)
    planes, hh, ww = xq.shape
    if oq.shape[2] <= NARROW:
        xf, of, gf, df = xq.reshape(-1), oq.reshape(-1), gq.reshape(-1), dx.reshape(-1)
        _split(planes, hh * ww, lambda a, b: _max_pool2x2_backward_narrow(xf, of, gf, df, hh, ww, a, b))
    else:
        _split(planes, hh * ww, lambda a, b: _max_pool2x2_backward(xq, oq, gq, dx, a, b))
    return dx.reshape(x.shape)


def max_pool_backward(g, idx, size):
    """dx (..., *size) of g (..., *O) added at the flat positions ``idx`` (from max_pool) of each plane ∏size."""
    nd = len(size)
    lead = g.shape[: g.ndim - nd]
    gq = np.ascontiguousarray(g).reshape(-1, math.prod(g.shape[g.ndim - nd :]))
    iq = np.ascontiguousarray(idx).reshape(gq.shape)
    dx = np.empty((gq.shape[0], math.prod(size)), dtype=g.dtype)
    _split(gq.shape[0], dx.shape[1], lambda a, b: _max_pool_backward(gq, iq, dx, a, b))
    return dx.reshape(lead + tuple(size))


def avg_pool(x, k, s, p, o, count_include_pad=True, divisor=0):
    """x (..., *S) float32/float64 -> (..., *O): window sums over PyTorch's divisors (see the module docstring)."""
    return _avg_call(x, k, s, p, o, count_include_pad, divisor, False)


def avg_pool_backward(g, k, s, p, size, count_include_pad=True, divisor=0):
    """dx (..., *size) of g (..., *O): each g spread over its window, divided by the forward's divisor."""
    return _avg_call(g, k, s, p, size, count_include_pad, divisor, True)


def _avg_call(a, k, s, p, shape, include_pad, divisor, adjoint):
    """avg_pool (a: x, shape: O) or its adjoint (a: g, shape: S) on the planes of ``a``."""
    nd = len(k)
    aq = _planes(a, nd)
    res = np.empty((aq.shape[0],) + _three(shape, 1), dtype=a.dtype)
    x, y = (res, aq) if adjoint else (aq, res)
    args = (_three(k, 1), _three(s, 1), _three(p, 0), bool(include_pad), float(divisor or 0), adjoint)
    _split(aq.shape[0], math.prod(k) * math.prod(y.shape[1:]), lambda q0, q1: _avg_pool(x, y, *args, q0, q1))
    return res.reshape(a.shape[: a.ndim - nd] + tuple(shape))
