"""Triton kernels of kernels/cross_entropy.py: cross-entropy forward and backward per row."""

from __future__ import annotations

import triton
import triton.language as tl

from ._reduce import row_max, row_sum

# ----------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _ce_fwd_kernel(
    X, T, LOSS, MAX, LOGSUM, n_cols, stride_x, ignore_index, eps, SMOOTH: tl.constexpr, BLOCK: tl.constexpr
):
    # One program per row, online over V-chunks. Per lane a running max m and a rescaled sum s:
    #   m' = max(m, x), s' = s * exp(m - m') + exp(x - m');  M = max m, L = log(sum s * exp(m - M)), lse = M + L.
    # loss = (1 - eps) * (lse - x[t]) + eps / V * sum_j (lse - x_j)
    #      = (1 - eps) * ((M - x[t]) + L) + eps * ((M - p) - sum_j (x_j - p) / V + L);   ignored rows: 0.
    # M and L are kept apart (not summed into lse), and the sum of x is taken about a pivot p (the
    # target logit), so that differences of nearby large logits (|x| ~ 1e4) stay exact in fp32.
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    x_row = X + row * stride_x
    m_vec = tl.full([BLOCK], -float("inf"), tl.float32)
    s_vec = tl.full([BLOCK], 0.0, tl.float32)
    sx_vec = tl.full([BLOCK], 0.0, tl.float32)
    t = tl.load(T + row).to(tl.int64)
    ignored = t == ignore_index
    x_t = tl.load(x_row + tl.where(ignored, 0, t)).to(tl.float32)
    pivot = tl.where(tl.abs(x_t) < float("inf"), x_t, 0.0)  # a -inf target logit must not make inf - inf
    for start in range(0, n_cols, BLOCK):
        offs = start + cols
        mask = offs < n_cols
        x = tl.load(x_row + offs, mask=mask, other=-float("inf")).to(tl.float32)
        m_new = tl.maximum(m_vec, x)
        # A lane that has seen only -inf keeps m = -inf: shift by 0 there so exp(-inf - -inf) never makes NaN.
        shift = tl.where(m_new == -float("inf"), 0.0, m_new)
        s_vec = s_vec * tl.exp(m_vec - shift) + tl.exp(x - shift)
        m_vec = m_new
        if SMOOTH:
            sx_vec += tl.where(mask, x - pivot, 0.0)
    m = row_max(m_vec)
    log_sum = tl.log(row_sum(s_vec * tl.exp(m_vec - m)))
    loss = (m - x_t) + log_sum
    if SMOOTH:
        loss = (1.0 - eps) * loss + eps * ((m - pivot) - row_sum(sx_vec) / n_cols + log_sum)
    loss = tl.where(ignored, 0.0, loss)
    tl.store(LOSS + row, loss)
    tl.store(MAX + row, m)
    tl.store(LOGSUM + row, log_sum)


@triton.jit
def _ce_bwd_kernel(
    X,
    T,
    MAX,
    LOGSUM,
    SCALE,
    DX,
    n_cols,
    stride_x,
    stride_dx,
    ignore_index,
    eps,
    PER_ROW_SCALE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # Grid (row, chunk). Softmax recomputed from the logits and the saved lse = M + L, no [N, V] fp32 buffer:
    #   dlogits = (exp((x - M) - L) - (1 - eps) * onehot(t) - eps / V) * scale_i;   ignored rows: 0,
    # scale_i = dloss (sum), dloss / n_valid (mean, folded into SCALE by the launcher), dloss[i] (none).
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_cols
    t = tl.load(T + row).to(tl.int64)
    m = tl.load(MAX + row)
    log_sum = tl.load(LOGSUM + row)
    if PER_ROW_SCALE:
        scale = tl.load(SCALE + row).to(tl.float32)
    else:
        scale = tl.load(SCALE).to(tl.float32)
    x = tl.load(X + row * stride_x + offs, mask=mask, other=-float("inf")).to(tl.float32)
    g = tl.exp((x - m) - log_sum) - eps / n_cols
    g = tl.where(offs == t, g - (1.0 - eps), g)
    g = tl.where(t == ignore_index, 0.0, g * scale)
    tl.store(DX + row * stride_dx + offs, g.to(DX.dtype.element_ty), mask=mask)
