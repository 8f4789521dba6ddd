"""Triton kernel of kernels/dropout.py: dropout with a Philox-4x64-10 counter-based mask in NumPy's Philox order."""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language import philox as tl_philox  # bare global name: kernel_for's interpreted twin swaps it

# ----------------------------------------------------------------------------------------------
# One kernel for forward (X = x) and backward (X = dy), since both compute
# out_i = keep_i * X_i * scale with keep_i = (w_i >= ceil(float32(p) * 2**32)), w_i the uint32 word offset + i of the
# Philox-4x64-10 stream keyed by seed (eight words per counter block, in NumPy's np.random.Philox order).
# ----------------------------------------------------------------------------------------------


@triton.jit
def _dropout_kernel(X, Y, N, p, scale, seed, offset, BLOCK: tl.constexpr):
    # Stream position g = offset + i (i the flat index) reads 32-bit half g % 2 (low first) of word (g // 2) % 4 of
    # Philox-4x64-10 block g // 8 (counter (g // 8, 0, 0, 0), key (seed, 0)): NumPy's Philox output order, so the
    # reference path is one random_raw call. A program covers BLOCK positions from an 8-aligned start.
    QUADS: tl.constexpr = BLOCK // 8
    start = (offset // 8) * 8 + tl.program_id(0).to(tl.int64) * BLOCK
    ctr = (start // 8 + tl.arange(0, QUADS)).to(tl.uint64)
    zero = ctr * 0
    w0, w1, w2, w3 = tl_philox(seed, ctr, zero, zero, zero)
    # join puts its new axis last: (QUADS, 2, 2) with [q, j, k] = (w0, w2 | w1, w3)[k][j], flat order w0 w1 w2 w3
    w = tl.reshape(tl.join(tl.join(w0, w2), tl.join(w1, w3)), (BLOCK // 2,))
    h = tl.reshape(tl.join(w.to(tl.uint32), (w >> 32).to(tl.uint32)), (BLOCK,))
    idx = start - offset + tl.arange(0, BLOCK)
    ok = (idx >= 0) & (idx < N)
    x = tl.load(X + idx, mask=ok, other=0.0).to(tl.float32)
    # keep when the word >= ceil(p * 2**32) (p in float32, so the product and its ceil are exact): P(keep) = 1 - p
    # to within 2**-32; p = 1 gives 2**32, which no word reaches (hence the int64 comparison)
    thresh = tl.math.ceil(p * 4294967296.0).to(tl.int64)
    keep = h.to(tl.int64) >= thresh
    # forward: y = x * mask / (1 - p); backward: dx = dy * mask / (1 - p)  (scale = 0 when p = 1)
    y = tl.where(keep, x * scale, 0.0)
    tl.store(Y + idx, y.to(Y.dtype.element_ty), mask=ok)
