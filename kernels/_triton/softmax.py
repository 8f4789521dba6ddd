"""Triton kernels of kernels/softmax.py: softmax and log-softmax rows, forward and backward."""

from __future__ import annotations

import triton
import triton.language as tl

from ._reduce import row_max, row_sum

# ----------------------------------------------------------------------------------------------
# Triton kernels. One program per row; rows are contiguous in the last dim, row strides passed.
# ----------------------------------------------------------------------------------------------


@triton.jit
def _softmax_fwd_row_kernel(X, Y, n_cols, stride_x, stride_y, LOG: tl.constexpr, BLOCK: tl.constexpr):
    # The whole row in one block: y = exp(x - m) / s, log y = x - m - log(s), m = max x, s = sum exp(x - m).
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(X + row * stride_x + cols, mask=mask, other=-float("inf")).to(tl.float32)
    m = row_max(x)  # a row of -inf gives m = -inf, x - m = nan: NaN output, as PyTorch
    z = x - m
    e = tl.exp(z)  # padding lanes: exp(-inf) = 0
    s = row_sum(e)
    if LOG:
        y = z - tl.log(s)
    else:
        y = e / s
    tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _softmax_fwd_loop_kernel(X, Y, n_cols, stride_x, stride_y, LOG: tl.constexpr, BLOCK: tl.constexpr):
    # Pass 1, online: per lane a running max m and a sum s rescaled when m grows,
    #   m' = max(m, x), s' = s * exp(m - m') + exp(x - m');
    # then one combine: M = max m, S = sum s * exp(m - M). Pass 2 writes y from M and S.
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    x_row = X + row * stride_x
    m_vec = tl.full([BLOCK], -float("inf"), tl.float32)
    s_vec = tl.full([BLOCK], 0.0, tl.float32)
    for start in range(0, n_cols, BLOCK):
        offs = start + cols
        x = tl.load(x_row + offs, mask=offs < n_cols, other=-float("inf")).to(tl.float32)
        m_new = tl.maximum(m_vec, x)
        # A lane that has seen only -inf keeps m = -inf; shift by 0 there so exp(-inf - -inf) never makes NaN.
        shift = tl.where(m_new == -float("inf"), 0.0, m_new)
        s_vec = s_vec * tl.exp(m_vec - shift) + tl.exp(x - shift)
        m_vec = m_new
    m = row_max(m_vec)  # all -inf row: m = -inf, then s and y are NaN, as PyTorch
    s = row_sum(s_vec * tl.exp(m_vec - m))
    log_s = tl.log(s)
    y_row = Y + row * stride_y
    for start in range(0, n_cols, BLOCK):
        offs = start + cols
        mask = offs < n_cols
        x = tl.load(x_row + offs, mask=mask, other=-float("inf")).to(tl.float32)
        if LOG:
            y = x - m - log_s
        else:
            y = tl.exp(x - m) / s
        tl.store(y_row + offs, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _softmax_bwd_row_kernel(Y, DY, DX, n_cols, stride_y, stride_dy, stride_dx, LOG: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    y = tl.load(Y + row * stride_y + cols, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
    if LOG:
        # y = log softmax(x): dx = dy - exp(y) * sum(dy)
        dx = dy - tl.exp(y) * row_sum(dy)
    else:
        # y = softmax(x): dx = y * (dy - sum(dy * y))
        dx = y * (dy - row_sum(dy * y))
    tl.store(DX + row * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=mask)


@triton.jit
def _softmax_bwd_loop_kernel(Y, DY, DX, n_cols, stride_y, stride_dy, stride_dx, LOG: tl.constexpr, BLOCK: tl.constexpr):
    # Same formulas as the one-row kernel: pass 1 reduces sum(dy) (log) or sum(dy * y), pass 2 writes dx.
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    y_row = Y + row * stride_y
    dy_row = DY + row * stride_dy
    acc = tl.full([BLOCK], 0.0, tl.float32)
    for start in range(0, n_cols, BLOCK):
        offs = start + cols
        mask = offs < n_cols
        dy = tl.load(dy_row + offs, mask=mask, other=0.0).to(tl.float32)
        if LOG:
            acc += dy
        else:
            y = tl.load(y_row + offs, mask=mask, other=0.0).to(tl.float32)
            acc += dy * y
    r = row_sum(acc)
    dx_row = DX + row * stride_dx
    for start in range(0, n_cols, BLOCK):
        offs = start + cols
        mask = offs < n_cols
        y = tl.load(y_row + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_row + offs, mask=mask, other=0.0).to(tl.float32)
        if LOG:
            dx = dy - tl.exp(y) * r  # dx = dy - exp(y) * sum(dy)
        else:
            dx = y * (dy - r)  # dx = y * (dy - sum(dy * y))
        tl.store(dx_row + offs, dx.to(DX.dtype.element_ty), mask=mask)
