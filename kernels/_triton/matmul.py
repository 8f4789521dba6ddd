"""Triton kernel of kernels/matmul.py: matmul with fused bias, activation and backward products."""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language import cdiv
from triton.language import sum as tl_sum

from ._act import act_backward, apply_act

# --------------------------------------------------------------------------------------------------------------
# Triton kernel. Triton's own @jit helpers (cdiv, sum) are bound to bare names and tl.zeros is replaced by tl.full:
# kernel_for's interpreted twin swaps bare-name @jit helpers, not ``tl.<helper>`` attribute lookups.
# --------------------------------------------------------------------------------------------------------------


@triton.jit
def _matmul_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    bias_ptr,
    z_ptr,
    r_ptr,
    dbias_ptr,
    M,
    N,
    K,
    RB,
    param,
    s_ab,
    s_arb,
    s_am,
    s_ak,
    s_bb,
    s_brb,
    s_bk,
    s_bn,
    s_cb,
    s_cm,
    s_cn,
    s_rb,
    s_rrb,
    s_r0,
    s_r1,
    HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr,
    STORE_Z: tl.constexpr,
    DOUT_OP: tl.constexpr,
    HAS_R: tl.constexpr,
    GRAD_ACT: tl.constexpr,
    R_IS_OUT: tl.constexpr,
    DBIAS: tl.constexpr,
    UPCAST: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """C[b] = act(sum_rb A[b, rb] @ B[b, rb] + bias) for one (BLOCK_M, BLOCK_N) tile of C.

    Grid: (cdiv(M, BLOCK_M) * cdiv(N, BLOCK_N), number of C batches). ``RB`` extra reduction batches are
    summed into the same tile (dA/dB of an operand broadcast over the batch). DOUT_OP = 1 (2) marks the A (B)
    operand as dOut: with HAS_R every loaded tile is multiplied by act'(R tile) in fp32 (GRAD_ACT: the
    activation; R: Z, or the output when R_IS_OUT); with DBIAS the column sums of the dZ tile go into ``dbias``
    (fp32, atomics) from the programs of the first tile column (row) only, so each element counts once.
    """
    pid = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    num_pid_m = cdiv(M, BLOCK_M)
    num_pid_n = cdiv(N, BLOCK_N)
    # grouped ordering: GROUP_M tile rows share their B columns in L2
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N

    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    # batch bases as 64-bit pointers; the reduction batches advance them (pointer arithmetic, no int32 overflow)
    a_base = a_ptr + pid_b * s_ab
    b_base = b_ptr + pid_b * s_bb
    r_base = a_base  # placeholder of the right kind when there is no R (r_ptr is None then)
    if HAS_R:
        r_base = r_ptr + pid_b * s_rb
    for _rb in range(0, RB):
        for k0 in range(0, cdiv(K, BLOCK_K)):
            kk = k0 * BLOCK_K + offs_k
            mask_k = kk < K
            a_mask = mask_m[:, None] & mask_k[None, :]
            b_mask = mask_k[:, None] & mask_n[None, :]
            a = tl.load(a_base + offs_m[:, None] * s_am + kk[None, :] * s_ak, mask=a_mask, other=0.0)
            b = tl.load(b_base + kk[:, None] * s_bk + offs_n[None, :] * s_bn, mask=b_mask, other=0.0)
            if DOUT_OP == 1:
                # A tile is dOut (rows m, inner index kk over n): dZ = dOut * act'(R) in fp32
                dz = a.to(tl.float32)
                if HAS_R:
                    r = tl.load(r_base + offs_m[:, None] * s_r0 + kk[None, :] * s_r1, mask=a_mask, other=0.0)
                    r = r.to(tl.float32)
                    dz = act_backward(dz, r, GRAD_ACT, R_IS_OUT, param)
                if DBIAS:
                    # dbias[n] += sum over rows of dZ, from the first tile column only (each dZ element once)
                    if pid_n == 0:
                        tl.atomic_add(dbias_ptr + kk, tl_sum(dz, axis=0), mask=mask_k)
                a = dz.to(a_ptr.dtype.element_ty)  # back to the storage dtype for the tensor-core dot
            if DOUT_OP == 2:
                # B tile is dOut (inner index kk over m, columns n)
                dz = b.to(tl.float32)
                if HAS_R:
                    r = tl.load(r_base + kk[:, None] * s_r0 + offs_n[None, :] * s_r1, mask=b_mask, other=0.0)
                    r = r.to(tl.float32)
                    dz = act_backward(dz, r, GRAD_ACT, R_IS_OUT, param)
                if DBIAS:
                    # dbias[n] += sum over the inner rows of dZ, from the first tile row only
                    if pid_m == 0:
                        tl.atomic_add(dbias_ptr + offs_n, tl_sum(dz, axis=0), mask=mask_n)
                b = dz.to(b_ptr.dtype.element_ty)
            if UPCAST:
                # the interpreter's tl.dot multiplies raw bf16 bits: do the dot in fp32 there
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        a_base += s_arb
        b_base += s_brb
        if HAS_R:
            r_base += s_rrb

    # epilogue, while acc is fp32: + bias, keep Z if asked, activation, store in C's dtype
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        acc = acc + bias[None, :]
    c_off = pid_b * s_cb + offs_m[:, None] * s_cm + offs_n[None, :] * s_cn
    c_mask = mask_m[:, None] & mask_n[None, :]
    if STORE_Z:
        tl.store(z_ptr + c_off, acc.to(z_ptr.dtype.element_ty), mask=c_mask)
    out = apply_act(acc, ACT, param)
    tl.store(c_ptr + c_off, out.to(c_ptr.dtype.element_ty), mask=c_mask)
