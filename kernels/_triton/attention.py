"""Triton kernels of kernels/attention.py: flash-attention forward and backward (dq, dk/dv)."""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language import rand as tl_rand  # bare global name: kernel_for's interpreted twin swaps it

# --------------------------------------------------------------------------------------------------------------
# Triton kernels. Grid: (query or key blocks, B·H). Every tensor is addressed through its own 4-D strides
# (batch, head, row, col), so permuted views (a transformer's (B, T, H, D) -> (B, H, T, D)) need no copy.
# --------------------------------------------------------------------------------------------------------------


@triton.jit
def _tile(base, rows, s_r, cols, s_c, mask, UPCAST: tl.constexpr):
    """The (rows, cols) tile at ``base`` (masked lanes 0); fp32 when UPCAST (the interpreter's tl.dot multiplies
    raw bf16 bits, so bf16 dots run in fp32 there)."""
    t = tl.load(base + rows[:, None] * s_r + cols[None, :] * s_c, mask=mask, other=0.0)
    if UPCAST:
        t = t.to(tl.float32)
    return t


@triton.jit
def _keep(seed, offset, p_drop, bh, L, S, rows, cols):
    """Dropout's keep mask of the (rows, cols) probabilities: u >= p with u = tl.rand(seed, offset + (bh·L + i)·S + j),
    the element's linear index in (B·H, L, S), so the backward and the reference path regenerate the same mask."""
    return tl_rand(seed, offset + (bh * L + rows[:, None]) * S + cols[None, :]) >= p_drop


@triton.jit
def _head(H):
    """(b·H + h, b, h) of this program's batch-head (grid axis 1), 64-bit."""
    bh = tl.program_id(1).to(tl.int64)
    return bh, bh // H, bh % H


@triton.jit
def _attn_fwd_kernel(
    Q, K, V, O, LSE, H, L, S, D, qk_scale, seed, offset, p_drop, drop_scale,
    s_qb, s_qh, s_ql, s_qd, s_kb, s_kh, s_ks, s_kd, s_vb, s_vh, s_vs, s_vd, s_ob, s_oh, s_ol, s_od,
    CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    bh, b, h = _head(H)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < L
    mask_d = offs_d < D
    md = mask_m[:, None] & mask_d[None, :]
    q = _tile(Q + b * s_qb + h * s_qh, offs_m, s_ql, offs_d, s_qd, md, UPCAST)
    k_base = K + b * s_kb + h * s_kh
    v_base = V + b * s_vb + h * s_vh
    m_i = tl.full([BLOCK_M], -float("inf"), tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, tl.float32)
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
    hi = S
    if CAUSAL:  # keys past this block's last query are masked for every row: skip them
        hi = min(S, (pid_m + 1) * BLOCK_M)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < S
        kt = _tile(k_base, offs_d, s_kd, offs_n, s_ks, mask_d[:, None] & mask_n[None, :], UPCAST)  # (D, N)
        v = _tile(v_base, offs_n, s_vs, offs_d, s_vd, mask_n[:, None] & mask_d[None, :], UPCAST)
        s = tl.dot(q, kt, input_precision=INPUT_PRECISION) * qk_scale  # base-2 scores
        valid = mask_n[None, :]
        if CAUSAL:
            valid = valid & (offs_n[None, :] <= offs_m[:, None])
        s = tl.where(valid, s, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # a row that has seen only masked keys keeps m = -inf: shift by 0 so exp2(-inf - -inf) never makes NaN
        shift = tl.where(m_new == -float("inf"), 0.0, m_new)
        p = tl.exp2(s - shift[:, None])
        alpha = tl.exp2(m_i - shift)
        l_i = l_i * alpha + tl.sum(p, axis=1)  # the normalizer counts every key, dropped or not
        acc = acc * alpha[:, None]
        if DROPOUT:  # out = (p ∘ keep / (1 - p_drop)) v
            p = tl.where(_keep(seed, offset, p_drop, bh, L, S, offs_m, offs_n), p * drop_scale, 0.0)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=INPUT_PRECISION)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(O + b * s_ob + h * s_oh + offs_m[:, None] * s_ol + offs_d[None, :] * s_od, out.to(O.dtype.element_ty),
             mask=md)  # fmt: skip
    tl.store(LSE + bh * L + offs_m, m_i + tl.log2(l_i), mask=mask_m)  # base 2


@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, O, DO, DQ, LSE, DELTA, H, L, S, D, qk_scale, sm_scale, seed, offset, p_drop, drop_scale,
    s_qb, s_qh, s_ql, s_qd, s_kb, s_kh, s_ks, s_kd, s_vb, s_vh, s_vs, s_vd,
    s_ob, s_oh, s_ol, s_od, s_gb, s_gh, s_gl, s_gd, s_dqb, s_dqh, s_dql, s_dqd,
    CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    # One query block: delta = rowsum(dout ∘ out) (stored for the dk/dv kernel), then
    # dq = Σ_key blocks ds k · scale with p = exp2(s - lse), ds = p ∘ (dout vᵀ - delta).
    pid_m = tl.program_id(0)
    bh, b, h = _head(H)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < L
    mask_d = offs_d < D
    md = mask_m[:, None] & mask_d[None, :]
    q = _tile(Q + b * s_qb + h * s_qh, offs_m, s_ql, offs_d, s_qd, md, UPCAST)
    do = _tile(DO + b * s_gb + h * s_gh, offs_m, s_gl, offs_d, s_gd, md, UPCAST)
    o = _tile(O + b * s_ob + h * s_oh, offs_m, s_ol, offs_d, s_od, md, UPCAST)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), axis=1)
    tl.store(DELTA + bh * L + offs_m, delta, mask=mask_m)
    lse = tl.load(LSE + bh * L + offs_m, mask=mask_m, other=0.0)
    k_base = K + b * s_kb + h * s_kh
    v_base = V + b * s_vb + h * s_vh
    dq = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
    hi = S
    if CAUSAL:
        hi = min(S, (pid_m + 1) * BLOCK_M)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < S
        nd = mask_n[:, None] & mask_d[None, :]
        k = _tile(k_base, offs_n, s_ks, offs_d, s_kd, nd, UPCAST)
        v = _tile(v_base, offs_n, s_vs, offs_d, s_vd, nd, UPCAST)
        s = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * qk_scale
        valid = mask_m[:, None] & mask_n[None, :]
        if CAUSAL:
            valid = valid & (offs_n[None, :] <= offs_m[:, None])
        p = tl.where(valid, tl.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=INPUT_PRECISION)
        if DROPOUT:  # d/dp of (p ∘ keep / (1 - p_drop)) v; delta = rowsum(dout ∘ out) already has the mask in it
            dp = tl.where(_keep(seed, offset, p_drop, bh, L, S, offs_m, offs_n), dp * drop_scale, 0.0)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=INPUT_PRECISION)
    dq = dq * sm_scale
    tl.store(DQ + b * s_dqb + h * s_dqh + offs_m[:, None] * s_dql + offs_d[None, :] * s_dqd,
             dq.to(DQ.dtype.element_ty), mask=md)  # fmt: skip


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, LSE, DELTA, H, L, S, D, qk_scale, sm_scale, seed, offset, p_drop, drop_scale,
    s_qb, s_qh, s_ql, s_qd, s_kb, s_kh, s_ks, s_kd, s_vb, s_vh, s_vs, s_vd,
    s_gb, s_gh, s_gl, s_gd, s_dkb, s_dkh, s_dks, s_dkd, s_dvb, s_dvh, s_dvs, s_dvd,
    CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    # One key block: dv = Σ_query blocks pᵀ dout, dk = Σ dsᵀ q · scale (transposed tiles: rows are keys).
    pid_n = tl.program_id(0)
    bh, b, h = _head(H)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_n = offs_n < S
    mask_d = offs_d < D
    nd = mask_n[:, None] & mask_d[None, :]
    k = _tile(K + b * s_kb + h * s_kh, offs_n, s_ks, offs_d, s_kd, nd, UPCAST)
    v = _tile(V + b * s_vb + h * s_vh, offs_n, s_vs, offs_d, s_vd, nd, UPCAST)
    q_base = Q + b * s_qb + h * s_qh
    do_base = DO + b * s_gb + h * s_gh
    dk = tl.full([BLOCK_N, BLOCK_D], 0.0, tl.float32)
    dv = tl.full([BLOCK_N, BLOCK_D], 0.0, tl.float32)
    lo = 0
    if CAUSAL:  # queries before this block's first key see none of its keys
        lo = (pid_n * BLOCK_N // BLOCK_M) * BLOCK_M
    for start_m in range(lo, L, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        mask_m = offs_m < L
        md = mask_m[:, None] & mask_d[None, :]
        q = _tile(q_base, offs_m, s_ql, offs_d, s_qd, md, UPCAST)
        do = _tile(do_base, offs_m, s_gl, offs_d, s_gd, md, UPCAST)
        lse = tl.load(LSE + bh * L + offs_m, mask=mask_m, other=0.0)
        delta = tl.load(DELTA + bh * L + offs_m, mask=mask_m, other=0.0)
        st = tl.dot(k, tl.trans(q), input_precision=INPUT_PRECISION) * qk_scale  # (keys, queries)
        valid = mask_n[:, None] & mask_m[None, :]
        if CAUSAL:
            valid = valid & (offs_n[:, None] <= offs_m[None, :])
        pt = tl.where(valid, tl.exp2(st - lse[None, :]), 0.0)
        dpt = tl.dot(v, tl.trans(do), input_precision=INPUT_PRECISION)
        if DROPOUT:  # the transposed tile's mask: rows are keys j, columns queries i
            keep = tl.trans(_keep(seed, offset, p_drop, bh, L, S, offs_m, offs_n))
            dv = tl.dot(tl.where(keep, pt * drop_scale, 0.0).to(do.dtype), do, dv, input_precision=INPUT_PRECISION)
            dpt = tl.where(keep, dpt * drop_scale, 0.0)
        else:
            dv = tl.dot(pt.to(do.dtype), do, dv, input_precision=INPUT_PRECISION)
        dst = pt * (dpt - delta[None, :])
        dk = tl.dot(dst.to(q.dtype), q, dk, input_precision=INPUT_PRECISION)
    tl.store(DK + b * s_dkb + h * s_dkh + offs_n[:, None] * s_dks + offs_d[None, :] * s_dkd,
             (dk * sm_scale).to(DK.dtype.element_ty), mask=nd)  # fmt: skip
    tl.store(DV + b * s_dvb + h * s_dvh + offs_n[:, None] * s_dvs + offs_d[None, :] * s_dvd,
             dv.to(DV.dtype.element_ty), mask=nd)  # fmt: skip
