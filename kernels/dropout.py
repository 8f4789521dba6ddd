"""Dropout with counter-based randomness (Philox-4x64-10, as np.random.Philox and tl.philox): masks are regenerated."""

from __future__ import annotations

import functools
import math
import threading
from collections import OrderedDict
from typing import NamedTuple

import numpy as np

from . import _jit
from ._launch import TritonKernel, cdiv, kernel_for, targ, use_triton, xp_of
from ._threads import parallel_for

# The @triton.jit kernels are in kernels/_triton/dropout.py, imported by kernel_for at the first Triton
# launch: the reference path never imports Triton.
_dropout_kernel = TritonKernel("dropout", "_dropout_kernel")


# ----------------------------------------------------------------------------------------------
# Launcher
# ----------------------------------------------------------------------------------------------

_FLOATS = ("float32", "float16", "bfloat16", "float64")


class DropoutResiduals(NamedTuple):
    """All a dropout backward needs: the Philox stream (seed, offset), p, and the input's shape and dtype."""

    seed: int
    offset: int
    p: float
    shape: tuple
    dtype: object


def _check(p, seed, offset, n, name):
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name}: p must be a float in [0, 1], got {type(p).__name__}")
    if not 0.0 <= float(p) <= 1.0:  # also rejects NaN
        raise ValueError(f"{name}: dropout probability p must be in [0, 1], got {p}")
    for label, v, hi in (("seed", seed, 2**64), ("offset", offset, 2**63)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name}: {label} must be an int, got {type(v).__name__}")
        if not 0 <= int(v) < hi:
            raise ValueError(f"{name}: {label} must be in [0, 2**{hi.bit_length() - 1}), got {v}")
    if int(offset) + n >= 2**63:
        raise ValueError(f"{name}: offset {offset} + numel {n} overflows the 63-bit Philox counter")


def _scale(p):
    """1 / (1 - p), and 0 for p = 1 (PyTorch: every element dropped, no division by zero)."""
    return 0.0 if p >= 1.0 else 1.0 / (1.0 - p)


_BLOCK_GPU, _BLOCK_INTERP = 1024, 256


def _dropout_triton(x, p, seed, offset):
    xp = xp_of(x)
    xc = xp.ascontiguousarray(x)  # the mask indexes the C-order flattening: copy non-contiguous inputs
    y = xp.empty_like(xc)
    n = xc.size
    if n:
        block = _BLOCK_INTERP if isinstance(x, np.ndarray) else _BLOCK_GPU
        grid = (cdiv(int(offset) % _LANES + n, block),)  # programs start at 8-aligned stream positions
        kernel_for(_dropout_kernel, xc)[grid](
            targ(xc), targ(y), n, float(p), _scale(p), int(seed), int(offset), BLOCK=block, num_warps=4
        )
    return y


# ----------------------------------------------------------------------------------------------
# tl.rand's stream (attention's dropout): Philox-4x32-10 in xp with uint64 arithmetic, bit-for-bit Triton's tl.rand
# (triton/language/random.py: randint4x -> philox -> philox_impl, then uint_to_uniform_float).
# ----------------------------------------------------------------------------------------------

_PHILOX_KEY_A, _PHILOX_KEY_B = 0x9E3779B9, 0xBB67AE85
_PHILOX_ROUND_A, _PHILOX_ROUND_B = 0xD2511F53, 0xCD9E8D57
_M32 = 0xFFFFFFFF


def philox4x32(c0, c1, c2, c3, k0, k1, xp=np, rounds=10):
    """Philox-4x32 (Salmon et al. 2011, Random123) on uint64 arrays holding 32-bit words, as Triton's
    ``philox_impl``: returns the four output words ``(c0, c1, c2, c3)`` as uint64 arrays."""
    u64 = xp.uint64
    c0, c1, c2, c3 = (xp.asarray(c, dtype=u64) for c in (c0, c1, c2, c3))
    k0, k1 = int(k0) & _M32, int(k1) & _M32
    ra, rb, m32, s32 = u64(_PHILOX_ROUND_A), u64(_PHILOX_ROUND_B), u64(_M32), u64(32)
    for _ in range(rounds):
        pb = rb * c2  # 32x32 -> 64-bit products, exact in uint64
        pa = ra * c0
        c0, c1, c2, c3 = (
            (pb >> s32) ^ c1 ^ u64(k0),  # umulhi(B, c2) ^ c1 ^ k0
            pb & m32,  # B * c2 (low word)
            (pa >> s32) ^ c3 ^ u64(k1),  # umulhi(A, c0) ^ c3 ^ k1
            pa & m32,  # A * c0 (low word)
        )
        k0 = (k0 + _PHILOX_KEY_A) & _M32  # raise the key
        k1 = (k1 + _PHILOX_KEY_B) & _M32
    return c0, c1, c2, c3


# ----------------------------------------------------------------------------------------------
# Fast NumPy path: the same words as philox4x32, with uint32 state and uint64 products read as two
# uint32 halves (views, no shift or mask passes), the all-zero counter words c2 = c3 = 0 and the constant
# high counter word folded into scalars for the first rounds, and the last round reduced to the one
# output word tl.rand reads. Counters are independent, so blocks (cache-sized) and threads split them
# without changing a bit.
# ----------------------------------------------------------------------------------------------

_U32, _U64 = np.dtype(np.uint32), np.dtype(np.uint64)
_PHILOX_BLOCK = 16384  # counters per block: a block's ~6 uint32/uint64 temporaries stay in the L2 cache


def _mulhilo(a, m):
    """(hi, lo) 32-bit words of ``m * a`` for a uint32 array (views into one uint64 product) or a Python int."""
    if isinstance(a, int):
        p = a * m
        return p >> 32, p & _M32
    prod = np.multiply(a, np.uint64(m), dtype=_U64)
    halves = prod.view(_U32)  # little-endian: even words are the low halves
    if np.little_endian:
        return halves[1::2], halves[0::2]
    return halves[0::2], halves[1::2]  # pragma: no cover - big-endian hosts


def _xor3(h, c, k):
    """h ^ c ^ k for uint32 arrays or Python ints (one pass when either of h, c is a scalar)."""
    if isinstance(h, int) and isinstance(c, int):
        return h ^ c ^ k
    if isinstance(c, int):
        return np.bitwise_xor(h, np.uint32(c ^ k))
    if isinstance(h, int):
        return np.bitwise_xor(c, np.uint32(h ^ k))
    out = np.bitwise_xor(h, c)
    out ^= np.uint32(k)
    return out


def _philox_word0(lo, hi, seed):
    """The first output word of Philox-4x32-10 for counters (lo, hi, 0, 0), key (lo32(seed), hi32(seed)):
    ``lo`` a uint32 array, ``hi`` one Python int for the whole block. As :func:`philox4x32`'s first word."""
    k0, k1 = int(seed) & _M32, int(seed) >> 32
    c0, c1, c2, c3 = lo, hi, 0, 0
    for r in range(10):
        hb, lb = _mulhilo(c2, _PHILOX_ROUND_B)
        if r == 9:
            return _xor3(hb, c1, k0)
        ha, la = _mulhilo(c0, _PHILOX_ROUND_A)
        c0, c1, c2, c3 = _xor3(hb, c1, k0), lb, _xor3(ha, c3, k1), la
        k0, k1 = (k0 + _PHILOX_KEY_A) & _M32, (k1 + _PHILOX_KEY_B) & _M32
    raise AssertionError("unreachable")  # pragma: no cover


def _blocks(n, offset, body):
    """body(start, stop, words) over cache-sized blocks of counters offset + [start, stop) (split on the CPU
    pool; ~120 uint32 passes per counter): ``words`` the uint32 first output words."""

    def run(lo_i, hi_i):
        for a in range(lo_i, hi_i, _PHILOX_BLOCK):
            b = min(a + _PHILOX_BLOCK, hi_i)
            first, last = offset + a, offset + b - 1
            if first >> 32 == last >> 32:  # one high counter word: a scalar through the rounds
                lo = np.arange(first & _M32, (first & _M32) + (b - a), dtype=_U32)
                words = _philox_word0(lo, first >> 32, body.seed)
            else:  # a block straddling 2**32: the generic uint64 form
                ctr = np.arange(first, first + (b - a), dtype=_U64)
                zero = np.zeros(b - a, dtype=_U64)
                words = philox4x32(ctr & _U64.type(_M32), ctr >> _U64.type(32), zero, zero,
                                   body.seed & _M32, body.seed >> 32)[0].astype(_U32)  # fmt: skip
            body(a, b, words)

    parallel_for(n, run, work=n * 120, align=_PHILOX_BLOCK)


class _Body:
    """A block callback with the seed it draws from (``_blocks`` reads ``.seed``)."""

    def __init__(self, seed, fn):
        self.seed, self.fn = int(seed), fn

    def __call__(self, a, b, words):
        self.fn(a, b, words)


_TO_UNIFORM = np.float32(4.6566127342e-10)


@functools.lru_cache(maxsize=64)
def _keep_threshold(p):
    """The least r in [0, 2**31] with float32(r) * 4.6566127342e-10 >= p in float32 (2**31: none): u >= p
    exactly when the bit-inverted int32 word is >= it (float32 rounding is monotone)."""
    pf = np.float32(p)
    lo, hi = 0, 2**31
    while lo < hi:
        mid = (lo + hi) // 2
        if np.float32(mid) * _TO_UNIFORM >= pf:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _keep_from_words(words, t):
    """keep_i = (u_i >= p) from the uint32 words: with r the word as int32 and r' = ~r for r < 0, r' >= t, that is
    t <= word <= 2**32 - 1 - t, which one wrapping subtraction and one comparison decide."""
    if t >= 2**31:
        return np.zeros(words.shape, dtype=bool)
    d = words - np.uint32(t)  # wraps modulo 2**32
    return d <= np.uint32(_M32 - 2 * t)


def philox_uniform(n, seed, offset, xp=np):
    """``tl.rand(seed, offset + arange(n))`` on the host or device: float32 uniforms in [0, 1).

    Counter (c0, c1, c2, c3) = (lo32(offset + i), hi32(offset + i), 0, 0); key (k0, k1) =
    (lo32(seed), hi32(seed)); 10 rounds; the first output word is read as int32, negative
    values are bit-inverted, and the result is multiplied by 4.6566127342e-10 in float32.
    """
    if xp is np:
        out = np.empty(n, dtype=np.float32)

        def put(a, b, words):
            r = words.view(np.int32)
            r = r ^ (r >> 31)  # ~r for negative r (arithmetic shift: all ones), r otherwise
            np.multiply(r, _TO_UNIFORM, out=out[a:b], dtype=np.float32)

        _blocks(n, int(offset), _Body(seed, put))
        return out
    u64 = xp.uint64
    ctr = xp.arange(n, dtype=u64) + u64(offset)
    zero = xp.zeros(n, dtype=u64)
    r, _, _, _ = philox4x32(ctr & u64(_M32), ctr >> u64(32), zero, zero, int(seed) & _M32, int(seed) >> 32, xp)
    r = r.astype(xp.uint32).view(xp.int32)
    r = xp.where(r < 0, ~r, r)
    return r.astype(xp.float32) * xp.float32(4.6566127342e-10)


# ----------------------------------------------------------------------------------------------
# Dropout's stream: Philox-4x64-10 (Random123; NumPy's np.random.Philox; Triton's tl.philox on uint64
# counters with a 64-bit seed), eight uint32 words per counter block, read by the stream position.
# ----------------------------------------------------------------------------------------------

_LANES = 8  # uint32 words per Philox-4x64 block: four 64-bit outputs, low half first
_P64_ROUND_A, _P64_ROUND_B = 0xD2E7470EE14C6C93, 0xCA5A826395121157
_P64_KEY_A, _P64_KEY_B = 0x9E3779B97F4A7C15, 0xBB67AE8584CAA73B
_M64 = (1 << 64) - 1
_RAW_BLOCK = 1 << 16  # words per NumPy chunk: a chunk's words and mask stay in the L2 cache


def _mulhilo64(m, a, xp):
    """(hi, lo) 64-bit words of ``m * a`` for a Python int ``m`` and a uint64 array ``a``, from 32-bit limbs
    (xp has no 128-bit product): m·a = mh·ah·2**64 + (mh·al + ml·ah)·2**32 + ml·al, each partial product exact."""
    u64 = xp.uint64
    m32, s32 = u64(_M32), u64(32)
    ml, mh = u64(m & _M32), u64(m >> 32)
    al, ah = a & m32, a >> s32
    ll, lh, hl, hh = ml * al, ml * ah, mh * al, mh * ah
    mid = (ll >> s32) + (lh & m32) + (hl & m32)  # < 3·2**32: no overflow
    hi = hh + (lh >> s32) + (hl >> s32) + (mid >> s32)
    lo = (mid << s32) | (ll & m32)
    return hi, lo


def philox4x64(c0, c1, c2, c3, k0, k1=0, xp=np, rounds=10):
    """Philox-4x64 (Salmon et al. 2011, Random123) on uint64 arrays, as Triton's ``philox_impl`` for uint64
    counters: returns the four output words ``(c0, c1, c2, c3)``. ``np.random.Philox(key=k0 + (k1 << 64),
    counter=c - 1).random_raw(4)`` gives the same words (NumPy increments the counter before each block)."""
    u64 = xp.uint64
    c0, c1, c2, c3 = (xp.asarray(c, dtype=u64) for c in (c0, c1, c2, c3))
    k0, k1 = int(k0) & _M64, int(k1) & _M64
    for _ in range(rounds):
        hb, lb = _mulhilo64(_P64_ROUND_B, c2, xp)
        ha, la = _mulhilo64(_P64_ROUND_A, c0, xp)
        c0, c1, c2, c3 = hb ^ c1 ^ u64(k0), lb, ha ^ c3 ^ u64(k1), la
        k0, k1 = (k0 + _P64_KEY_A) & _M64, (k1 + _P64_KEY_B) & _M64
    return c0, c1, c2, c3


def _raw_words(n, seed, pos):
    """uint32 words pos .. pos + n - 1 of dropout's stream on the host: one C call to NumPy's Philox-4x64-10."""
    first = pos // _LANES
    blocks = (pos + n + _LANES - 1) // _LANES - first
    gen = np.random.Philox(key=int(seed), counter=(first - 1) % (1 << 256))  # NumPy bumps the counter first
    raw = gen.random_raw(blocks * 4).astype("<u8", copy=False)  # little-endian bytes: the low half comes first
    skip = pos - first * _LANES
    return raw.view("<u4")[skip : skip + n]


def dropout_words(n, seed, offset=0, xp=np):
    """The uint32 words ``offset .. offset + n - 1`` of dropout's stream: word ``g`` is half ``g % 2`` (low
    first) of output ``(g // 2) % 4`` of Philox-4x64-10 with counter ``(g // 8, 0, 0, 0)`` and key ``(seed, 0)``.

    >>> dropout_words(3, seed=1, offset=5).dtype
    dtype('uint32')
    """
    if xp is np:
        return _raw_words(int(n), seed, int(offset))
    u64 = xp.uint64
    first = int(offset) // _LANES
    blocks = (int(offset) + int(n) + _LANES - 1) // _LANES - first
    ctr = xp.arange(blocks, dtype=u64) + u64(first)
    zero = xp.zeros(blocks, dtype=u64)
    w = xp.stack(philox4x64(ctr, zero, zero, zero, seed, 0, xp), axis=1).reshape(-1)
    halves = xp.stack([w & u64(_M32), w >> u64(32)], axis=1).reshape(-1).astype(xp.uint32)
    skip = int(offset) - first * _LANES
    return halves[skip : skip + int(n)]


def _drop_threshold(p):
    """ceil(float32(p) * 2**32), as the kernel computes it from its float32 p (the product is exact, a power-of-two
    scaling): a word is kept when >= it, so P(keep) = 1 - p to within 2**-32 (and p's float32 rounding, < 2**-25
    relative); p = 1 gives 2**32, which no word reaches."""
    return math.ceil(float(np.float32(p)) * 2.0**32)


#: Recent keep-masks, bit-packed, by (stream, seed, offset, numel, threshold): a dropout's backward (and
#: attention's, which draws the same mask twice) finds its forward's mask here instead of drawing it again. A mask
#: is a function of its key, so a hit is always the right mask; at most _MASK_BYTES are kept, oldest out first.
_MASKS: OrderedDict = OrderedDict()
_MASK_BYTES = 64 << 20
_mask_lock = threading.Lock()
_mask_bytes = [0]


def _cached_mask(key, n, fill):
    """The flat keep-mask (bool, n) under ``key``, from the cache or from ``fill(keep)`` (then remembered)."""
    with _mask_lock:
        bits = _MASKS.get(key)
        if bits is not None:
            _MASKS.move_to_end(key)
    if bits is not None:
        return np.unpackbits(bits, count=n).view(bool)
    keep = np.empty(n, dtype=bool)
    fill(keep)
    bits = np.packbits(keep)
    if bits.nbytes <= _MASK_BYTES // 4:
        with _mask_lock:
            if key not in _MASKS:
                _MASKS[key] = bits
                _mask_bytes[0] += bits.nbytes
            while _mask_bytes[0] > _MASK_BYTES:
                _mask_bytes[0] -= _MASKS.popitem(last=False)[1].nbytes
    return keep


def _keep_np(n, seed, offset, p):
    """Dropout's flat keep-mask on the host: words >= _drop_threshold(p), chunk by chunk over the CPU pool."""
    t = _drop_threshold(p)

    def fill(keep):
        if t >= 1 << 32:
            keep[:] = False
            return
        if _jit.enabled():  # the words drawn and compared in one compiled pass
            k, s = _jit.family("dropout"), np.uint64(seed)
            parallel_for(n, lambda a, b: k.keep(keep, s, int(offset), t, a, b), work=n * _JIT_WORK, align=_LANES * 8)
            return

        def run(lo_i, hi_i):
            for a in range(lo_i, hi_i, _RAW_BLOCK):
                b = min(a + _RAW_BLOCK, hi_i)
                np.greater_equal(_raw_words(b - a, seed, offset + a), np.uint32(t), out=keep[a:b])

        parallel_for(n, run, work=n * 4, align=_LANES * 64)

    return _cached_mask(("dropout", int(seed), int(offset), int(n), t), n, fill)


def _rand_keep_np(n, seed, offset, p):
    """The flat mask ``tl.rand(seed, offset + i) >= p`` on the host (fast Philox-4x32 path)."""
    t = _keep_threshold(float(p))

    def fill(keep):
        def put(a, b, words):
            keep[a:b] = _keep_from_words(words, t)

        _blocks(n, int(offset), _Body(seed, put))

    return _cached_mask(("rand", int(seed), int(offset), int(n), t), n, fill)


def _mask_args(shape, p, seed, offset, name):
    shape = tuple(int(s) for s in (shape if isinstance(shape, (tuple, list)) else (shape,)))
    n = int(np.prod(shape, dtype=np.int64))
    _check(p, seed, offset, n, name)
    return shape, n


def dropout_mask(shape, p, seed, offset=0, xp=np):
    """The boolean keep-mask of :func:`dropout_forward` for an input of ``shape``:
    ``dropout_words(n, seed, offset) >= ceil(float32(p) * 2**32)`` in C order.

    >>> bool(dropout_mask((2, 3), 0.0, seed=0).all())
    True
    """
    shape, n = _mask_args(shape, p, seed, offset, "dropout_mask")
    if xp is np:
        return _keep_np(n, seed, offset, p).reshape(shape)
    t = _drop_threshold(p)
    if t >= 1 << 32:
        return xp.zeros(shape, dtype=bool)
    return (dropout_words(n, seed, offset, xp) >= xp.uint32(t)).reshape(shape)


def rand_mask(shape, p, seed, offset=0, xp=np):
    """``tl.rand(seed, offset + i) >= p`` for the C-order flat index ``i`` of ``shape`` (Philox-4x32-10, one
    counter per element): the mask attention's kernels draw over their (B·H, L, S) probabilities."""
    shape, n = _mask_args(shape, p, seed, offset, "rand_mask")
    if xp is np:
        return _rand_keep_np(n, seed, offset, p).reshape(shape)
    return (philox_uniform(n, seed, offset, xp) >= xp.float32(p)).reshape(shape)


#: What one element of the compiled draw weighs against the pool's threshold (_threads.MIN_PARALLEL = 2**21):
#: ~1 ns an element on one thread (10 rounds of two 128-bit products per 8 elements), so a call splits from
#: 2**16 elements (~60 us), where a ~20-40 us handoff is repaid.
_JIT_WORK = 32
_JIT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
#: Up to this many elements a NumPy dropout draws and applies its words in one compiled pass, the backward drawing
#: them again (no mask, no cache: the 8x8 CNN's (64, 128) dropout, fwd+bwd ~0.55x the NumPy path's time). Larger
#: ones keep the NumPy path's cached bit mask (drawn by the compiled ``keep``): there the backward's unpacking
#: costs less than a second draw (2**20 elements fwd+bwd: ~1.3x slower when redrawn, measured).
_JIT_DIRECT = 1 << 16


def _dropout_compiled(x, p, seed, offset):
    """_dropout_ref's result (the same bits) from kernels/_numba/dropout.py: the words drawn and applied in one
    pass, no mask array (half precision through float32, rounded once, as the NumPy path)."""
    dt = x.dtype
    xf = np.ascontiguousarray(x if dt in _JIT_DTYPES else x.astype(np.float32)).reshape(-1)
    y = np.empty_like(xf)
    t, scale = _drop_threshold(p), xf.dtype.type(_scale(p))
    k, s, n = _jit.family("dropout"), np.uint64(seed), xf.size
    parallel_for(n, lambda a, b: k.apply(xf, y, s, int(offset), t, scale, a, b), work=n * _JIT_WORK, align=_LANES * 8)
    y = y.reshape(x.shape)
    return y if y.dtype == dt else y.astype(dt)


def _dropout_ref(x, p, seed, offset):
    if type(x) is np.ndarray and x.size <= _JIT_DIRECT and _jit.enabled():
        return _dropout_compiled(x, p, seed, offset)
    xp = xp_of(x)
    acc = np.float64 if x.dtype == np.float64 else np.float32
    keep = dropout_mask(x.shape, p, seed, offset, xp)
    if xp is not np:
        y = xp.where(keep, x.astype(acc) * acc(_scale(p)), acc(0))
        return y.astype(x.dtype)
    y = np.multiply(x, acc(_scale(p)), dtype=acc).astype(x.dtype, copy=False)  # a fresh array: x is never written
    # dropped elements: AND their bits with 0, so a dropped inf/NaN gives +0 as the kernel's where (x * 0 would give
    # NaN); one multiply and one AND pass, where np.copyto(where=~keep) costs about three times as much
    bits = y.view(np.dtype(f"u{y.itemsize}"))
    ones = np.multiply(keep, bits.dtype.type(np.iinfo(bits.dtype).max), dtype=bits.dtype)
    np.bitwise_and(bits, ones, out=bits)
    return y


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


def _triton_ok(x):
    return x.dtype != np.float64 and use_triton(x)


def dropout_forward(x, p, *, seed: int, offset: int = 0):
    """Dropout: ``y = x * mask / (1 - p)`` with ``mask_i = (u_i >= p)``, ``u_i = philox(seed, offset + i)``.

    ``i`` is the C-order flat index of the element. ``p = 0`` returns a copy of ``x``; ``p = 1`` returns
    zeros. Returns ``(y, residuals)`` with ``y`` in ``x``'s dtype; the residuals are a
    :class:`DropoutResiduals` (seed, offset, p, shape, dtype): the mask is regenerated in backward.
    A caller drawing fresh masks advances ``offset`` by at least ``x.size`` between calls.

    >>> y, res = dropout_forward(np.ones(8, np.float32), 0.5, seed=0)
    >>> dx = dropout_backward(res, np.ones(8, np.float32))   # equals y here
    """
    if x.dtype not in _JIT_DTYPES and x.dtype.name not in _FLOATS:  # dtype.name costs ~2 us: asked last
        raise TypeError(f"dropout_forward: x must be float32, float16, bfloat16 or float64, got dtype {x.dtype}")
    _check(p, seed, offset, x.size, "dropout_forward")
    p = float(p)
    res = DropoutResiduals(int(seed), int(offset), p, tuple(x.shape), x.dtype)
    if _triton_ok(x):
        return _dropout_triton(x, p, seed, offset), res
    return _dropout_ref(x, p, seed, offset), res


def dropout_backward(residuals, dy):
    """Gradient of :func:`dropout_forward`: ``dx = dy * mask / (1 - p)``, the mask regenerated from (seed, offset)."""
    r = residuals
    if tuple(dy.shape) != tuple(r.shape):
        raise ValueError(f"dropout_backward: dy of shape {dy.shape} does not match the input shape {r.shape}")
    if dy.dtype not in _JIT_DTYPES and dy.dtype.name not in _FLOATS:
        raise TypeError(f"dropout_backward: dy must be a float array, got dtype {dy.dtype}")
    if _triton_ok(dy):
        return _dropout_triton(dy, r.p, r.seed, r.offset)
    return _dropout_ref(dy, r.p, r.seed, r.offset)
