"""Compiled dropout for NumPy arrays: Philox-4x64-10 words drawn and applied in one pass, no mask array.

Dropout's stream (kernels/dropout.py): uint32 word ``g`` is half ``g % 2`` (the low half first) of output
``(g // 2) % 4`` of Philox-4x64-10 (Salmon et al. 2011) with counter ``(g // 8, 0, 0, 0)`` and key
``(seed, 0)``: NumPy's ``np.random.Philox`` and Triton's ``tl.philox`` on uint64 counters, bit for bit. Each
round is two 64 x 64 -> 128-bit products (``mulhilo``), here one ``mulx`` each through an LLVM i128 product;
NumPy has no 128-bit product, so its reference path calls NumPy's generator per chunk instead.

- ``apply(x, y, seed, pos, t, scale, i0, i1)``: ``y[i] = x[i] * scale`` where word ``pos + i`` >= ``t``, else
  +0.0 (a dropped inf or NaN too, as the Triton kernel's ``where``), for i in [i0, i1) of 1-D float32/float64
  arrays; the product is rounded once to x's dtype, as ``np.multiply(x, scale)``.
- ``keep(out, seed, pos, t, i0, i1)``: ``out[i] = word(pos + i) >= t`` into a bool array.

``t = ceil(float32(p) * 2**32)`` (2**32: nothing kept). Every element depends only on its own counter, so any
split of [i0, i1) over threads gives the same bits. Example::

    y = np.empty_like(x)
    apply(x, y, seed, offset, t, np.float32(1 / (1 - p)), 0, x.size)
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from . import njit

_U64 = np.uint64
_ROUND_A, _ROUND_B = _U64(0xD2E7470EE14C6C93), _U64(0xCA5A826395121157)
_KEY_A, _KEY_B = _U64(0x9E3779B97F4A7C15), _U64(0xBB67AE8584CAA73B)
_ZERO, _LOW = _U64(0), _U64(0xFFFFFFFF)
_S32 = _U64(32)


@intrinsic
def _mulhilo(typingctx, a, b):
    """(high, low) 64-bit halves of the 128-bit product a·b of two uint64: one ``mul``/``mulx`` giving both
    (Numba has no 128-bit type; a separate low product would be a second multiply on the busiest port)."""
    if a != types.uint64 or b != types.uint64:
        return None
    pair = types.UniTuple(types.uint64, 2)

    def codegen(context, builder, signature, args):
        wide, word = ir.IntType(128), ir.IntType(64)
        prod = builder.mul(builder.zext(args[0], wide), builder.zext(args[1], wide))
        hi = builder.trunc(builder.lshr(prod, ir.Constant(wide, 64)), word)
        return context.make_tuple(builder, pair, (hi, builder.trunc(prod, word)))

    return pair(types.uint64, types.uint64), codegen


@njit
def _round(c0, c1, c2, c3, k0, k1):
    hb, lb = _mulhilo(_ROUND_B, c2)
    ha, la = _mulhilo(_ROUND_A, c0)
    return hb ^ c1 ^ k0, lb, ha ^ c3 ^ k1, la


@njit
def _put(words, at, c0, c1, c2, c3):
    """The 8 uint32 words of one block's outputs into words[at:]: lane l is half l % 2 (the low first) of
    output l // 2."""
    words[at], words[at + 1] = c0 & _LOW, c0 >> _S32
    words[at + 2], words[at + 3] = c1 & _LOW, c1 >> _S32
    words[at + 4], words[at + 5] = c2 & _LOW, c2 >> _S32
    words[at + 6], words[at + 7] = c3 & _LOW, c3 >> _S32


@njit
def _words1(ctr, seed, words):
    """words[:8] of Philox-4x64-10 for counter (ctr, 0, 0, 0) and key (seed, 0)."""
    c0, c1, c2, c3 = ctr, _ZERO, _ZERO, _ZERO
    k0, k1 = seed, _ZERO
    for _ in range(10):
        c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
        k0 += _KEY_A
        k1 += _KEY_B
    _put(words, 0, c0, c1, c2, c3)


@njit
def _words4(ctr, seed, words):
    """words[:32] of the counters ctr .. ctr + 3, interleaved: a round's products wait on the previous round's
    (~5 cycles), so four independent blocks keep the multiplier busy (~2x the throughput of one at a time)."""
    a0, a1, a2, a3 = ctr, _ZERO, _ZERO, _ZERO
    b0, b1, b2, b3 = ctr + _U64(1), _ZERO, _ZERO, _ZERO
    c0, c1, c2, c3 = ctr + _U64(2), _ZERO, _ZERO, _ZERO
    d0, d1, d2, d3 = ctr + _U64(3), _ZERO, _ZERO, _ZERO
    k0, k1 = seed, _ZERO
    for _ in range(10):
        a0, a1, a2, a3 = _round(a0, a1, a2, a3, k0, k1)
        b0, b1, b2, b3 = _round(b0, b1, b2, b3, k0, k1)
        c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
        d0, d1, d2, d3 = _round(d0, d1, d2, d3, k0, k1)
        k0 += _KEY_A
        k1 += _KEY_B
    _put(words, 0, a0, a1, a2, a3)
    _put(words, 8, b0, b1, b2, b3)
    _put(words, 16, c0, c1, c2, c3)
    _put(words, 24, d0, d1, d2, d3)


@njit
def _emit(x, y, out, words, w0, at, count, tt, scale, mask):
    """Elements at .. at + count - 1 from words[w0:]: y = x·scale where the word is >= tt, else +0.0, or with
    ``mask`` the bool out. Unsigned indices spare Numba's negative-index test, so the loop vectorises."""
    base, w = _U64(at), _U64(w0)
    if mask:
        for u in range(_U64(count)):
            out[base + u] = words[w + u] >= tt
    else:
        zero = scale - scale  # +0.0 in x's dtype (a float64 literal would widen the select)
        for u in range(_U64(count)):
            y[base + u] = x[base + u] * scale if words[w + u] >= tt else zero


@njit
def _run(x, y, out, seed, pos, t, scale, i0, i1, mask):
    """apply or keep (``mask``) over [i0, i1): element i takes word pos + i, the first partial block alone, then
    four whole blocks (32 elements) at a time, then the rest block by block."""
    seed, tt = _U64(seed), _U64(t)
    words = np.empty(32, dtype=np.uint64)
    i = i0
    lane = (pos + i0) % 8
    if lane and i < i1:
        _words1(_U64(pos + i) >> _U64(3), seed, words)
        n = min(i1 - i, 8 - lane)
        _emit(x, y, out, words, lane, i, n, tt, scale, mask)
        i += n
    zero = scale - scale  # +0.0 in x's dtype (a float64 literal would widen the select)
    while i + 32 <= i1:  # _emit's loops with a constant trip count, which LLVM vectorises whole
        _words4(_U64(pos + i) >> _U64(3), seed, words)
        base = _U64(i)
        if mask:
            for u in range(_U64(32)):
                out[base + u] = words[u] >= tt
        else:
            for u in range(_U64(32)):
                y[base + u] = x[base + u] * scale if words[u] >= tt else zero
        i += 32
    while i < i1:
        _words1(_U64(pos + i) >> _U64(3), seed, words)
        n = min(i1 - i, 8)
        _emit(x, y, out, words, 0, i, n, tt, scale, mask)
        i += n


@njit
def apply(x, y, seed, pos, t, scale, i0, i1):
    _run(x, y, np.empty(0, dtype=np.bool_), seed, pos, t, scale, i0, i1, False)


@njit
def keep(out, seed, pos, t, i0, i1):
    nothing = np.empty(0, dtype=np.float32)  # _run's x and y, unused when it writes a mask
    _run(nothing, nothing, out, seed, pos, t, np.float32(0), i0, i1, True)
