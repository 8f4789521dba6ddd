"""Triton kernel of kernels/dropout.py: dropout with tl.rand's counter-based mask."""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language import rand as tl_rand  # bare global name: kernel_for's interpreted twin swaps it

# ----------------------------------------------------------------------------------------------
# Triton kernel: one kernel for forward (X = x) and backward (X = dy), since both compute
# out_i = keep_i * X_i * scale with keep_i = (u_i >= p), u_i = tl.rand(seed, offset + i).
# ----------------------------------------------------------------------------------------------


@triton.jit
def _dropout_kernel(X, Y, N, p, scale, seed, offset, BLOCK: tl.constexpr):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = idx < N
    x = tl.load(X + idx, mask=ok, other=0.0).to(tl.float32)
    # int64 counters: Philox counter words c0 = low 32 bits, c1 = high 32 bits of (offset + i)
    u = tl_rand(seed, offset + idx)
    keep = u >= p
    # forward: y = x * mask / (1 - p); backward: dx = dy * mask / (1 - p)  (scale = 0 when p = 1)
    y = tl.where(keep, x * scale, 0.0)
    tl.store(Y + idx, y.to(Y.dtype.element_ty), mask=ok)
