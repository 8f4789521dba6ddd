"""Triton kernels of kernels/norms.py: LayerNorm and RMSNorm, forward and backward."""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language import sum as tl_sum

# Triton's own @jit helpers (tl.sum, tl.zeros, tl.rand, ...) are bound to bare global names here and
# tl.zeros is avoided (tl.full is a builtin): kernel_for's interpreted twin swaps bare-name @jit
# helpers for interpreted ones, but not ``tl.<helper>`` attribute lookups.


# ----------------------------------------------------------------------------------------------
# Triton kernels
#
# Both norms share two kernels; the constexpr IS_RMS removes the mean (RMSNorm: mean := 0 and
# var := mean(x^2)). x is viewed as a contiguous (M, D) matrix; each program owns BLOCK_M rows
# and walks D in BLOCK_D chunks (one chunk when D <= BLOCK_D, so any D works).
# ----------------------------------------------------------------------------------------------


@triton.jit
def _norm_fwd_kernel(
    X, W, B, Y, MEAN, RSTD, M, D, eps,
    IS_RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    base = rows.to(tl.int64) * D
    cols0 = tl.arange(0, BLOCK_D)
    # pass 1: mean = sum_D(x) / D  (skipped for RMSNorm)
    if IS_RMS:
        mean = tl.full([BLOCK_M], 0.0, tl.float32)
    else:
        acc = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
        hi = tl.full([BLOCK_M, BLOCK_D], float("-inf"), tl.float32)
        lo = tl.full([BLOCK_M, BLOCK_D], float("inf"), tl.float32)
        for start in range(0, D, BLOCK_D):
            cols = start + cols0
            m = row_ok[:, None] & (cols[None, :] < D)
            x = tl.load(X + base[:, None] + cols[None, :], mask=m, other=0.0).to(tl.float32)
            acc += x
            hi = tl.maximum(hi, tl.where(m, x, float("-inf")))
            lo = tl.minimum(lo, tl.where(m, x, float("inf")))
        mean = tl_sum(acc, axis=1) / D
        # a row whose spread overflows (max - min = inf: [3e38, -3e38, 1] in fp32, or an inf input) is NaN, as
        # PyTorch's Welford moments give; the two-pass variance would give inf, rstd = 0 and finite zeros
        spread = tl.max(hi, axis=1) - tl.min(lo, axis=1)
    # pass 2: var = sum_D((x - mean)^2) / D ; rstd = 1 / sqrt(var + eps)
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
    for start in range(0, D, BLOCK_D):
        cols = start + cols0
        m = row_ok[:, None] & (cols[None, :] < D)
        x = tl.load(X + base[:, None] + cols[None, :], mask=m, other=0.0).to(tl.float32)
        xc = tl.where(m, x - mean[:, None], 0.0)
        acc += xc * xc
    var = tl_sum(acc, axis=1) / D
    rstd = 1.0 / tl.sqrt(var + eps)
    if not IS_RMS:
        rstd = tl.where(spread == float("inf"), float("nan"), rstd)
    if not IS_RMS:
        tl.store(MEAN + rows, mean, mask=row_ok)
    tl.store(RSTD + rows, rstd, mask=row_ok)
    # pass 3: y = xhat * w + b with xhat = (x - mean) * rstd
    for start in range(0, D, BLOCK_D):
        cols = start + cols0
        col_ok = cols < D
        m = row_ok[:, None] & col_ok[None, :]
        x = tl.load(X + base[:, None] + cols[None, :], mask=m, other=0.0).to(tl.float32)
        y = (x - mean[:, None]) * rstd[:, None]
        if HAS_W:
            w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
            y = y * w[None, :]
        if HAS_B:
            b = tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)
            y = y + b[None, :]
        tl.store(Y + base[:, None] + cols[None, :], y.to(Y.dtype.element_ty), mask=m)


@triton.jit
def _norm_bwd_kernel(
    X, W, DY, DX, MEAN, RSTD, DW_PART, DB_PART, M, D, G,
    IS_RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    # Program pid handles row blocks pid, pid + G, pid + 2G, ... and accumulates its share of
    # dweight / dbias into row pid of the fp32 (G, D) partial buffers (stage 1 of a two-stage
    # reduction; the launcher sums over G). Each program owns its row: no atomics, deterministic.
    pid = tl.program_id(0)
    cols0 = tl.arange(0, BLOCK_D)
    part = pid.to(tl.int64) * D
    for rb in range(pid * BLOCK_M, M, G * BLOCK_M):
        rows = rb + tl.arange(0, BLOCK_M)
        row_ok = rows < M
        base = rows.to(tl.int64) * D
        rstd = tl.load(RSTD + rows, mask=row_ok, other=0.0)
        if IS_RMS:
            mean = tl.full([BLOCK_M], 0.0, tl.float32)
        else:
            mean = tl.load(MEAN + rows, mask=row_ok, other=0.0)
        # pass 1: c1 = mean_D(wdy * xhat), c2 = mean_D(wdy) with wdy = dy * w
        acc1 = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
        acc2 = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
        for start in range(0, D, BLOCK_D):
            cols = start + cols0
            col_ok = cols < D
            m = row_ok[:, None] & col_ok[None, :]
            offs = base[:, None] + cols[None, :]
            x = tl.load(X + offs, mask=m, other=0.0).to(tl.float32)
            dy = tl.load(DY + offs, mask=m, other=0.0).to(tl.float32)
            xhat = tl.where(m, (x - mean[:, None]) * rstd[:, None], 0.0)
            wdy = dy
            if HAS_W:
                w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
                wdy = dy * w[None, :]
            acc1 += wdy * xhat
            acc2 += wdy
        c1 = tl_sum(acc1, axis=1) / D
        c2 = tl_sum(acc2, axis=1) / D
        # pass 2: dx = rstd * (wdy - xhat * c1 - c2)   (RMSNorm: no c2 term, the mean is not subtracted)
        #         dw_part += sum_rows(dy * xhat), db_part += sum_rows(dy)
        for start in range(0, D, BLOCK_D):
            cols = start + cols0
            col_ok = cols < D
            m = row_ok[:, None] & col_ok[None, :]
            offs = base[:, None] + cols[None, :]
            x = tl.load(X + offs, mask=m, other=0.0).to(tl.float32)
            dy = tl.load(DY + offs, mask=m, other=0.0).to(tl.float32)
            xhat = tl.where(m, (x - mean[:, None]) * rstd[:, None], 0.0)
            wdy = dy
            if HAS_W:
                w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
                wdy = dy * w[None, :]
            if IS_RMS:
                dx = (wdy - xhat * c1[:, None]) * rstd[:, None]
            else:
                dx = (wdy - xhat * c1[:, None] - c2[:, None]) * rstd[:, None]
            tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=m)
            if HAS_W:
                pw = tl.load(DW_PART + part + cols, mask=col_ok, other=0.0)
                tl.store(DW_PART + part + cols, pw + tl_sum(dy * xhat, axis=0), mask=col_ok)
            if HAS_B:
                pb = tl.load(DB_PART + part + cols, mask=col_ok, other=0.0)
                tl.store(DB_PART + part + cols, pb + tl_sum(tl.where(m, dy, 0.0), axis=0), mask=col_ok)
