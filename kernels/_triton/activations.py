"""Triton kernels of kernels/activations.py: flat elementwise activation forward and backward."""

from __future__ import annotations

import triton
import triton.language as tl

from ._act import act_backward, apply_act

# --------------------------------------------------------------------------------------------------------------
# Triton kernels: flat over n contiguous elements, BLOCK per program.
# --------------------------------------------------------------------------------------------------------------


@triton.jit
def _act_fwd_kernel(x_ptr, y_ptr, n, param, ACT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = apply_act(x, ACT, param)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _act_bwd_kernel(s_ptr, dy_ptr, dx_ptr, n, param, ACT: tl.constexpr, FROM_OUT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    s = tl.load(s_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    # dx = dy * f'(x); f' from the saved output y for relu/tanh/sigmoid, from x otherwise
    dx = act_backward(dy, s, ACT, FROM_OUT, param)
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
