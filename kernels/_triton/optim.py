"""Triton kernels of kernels/optim.py: multi-tensor Adam/AdamW and SGD steps."""

from __future__ import annotations

import triton
import triton.language as tl

# ----------------------------------------------------------------------------------------------
# Triton kernels
#
# Multi-tensor launch ("foreach/fused" style): PTRS is an (L, T) int64 table of the addresses of
# the T tensors of each of the L lists (params, grads, states...), SIZES their element counts and
# WORK a (programs, 2) table of (tensor index, first element) pairs; program i updates elements
# [start, start + BLOCK) of tensor WORK[i, 0]. The *0 arguments are the first tensor of each list,
# passed only for their pointer types (every tensor of a list in one launch has the same dtype).
#
# These kernels, unlike every other conch kernel, write into their inputs: params and optimizer
# state are updated in place, as torch.optim does. Math in fp32; each tensor is stored back in its
# own dtype. tl.fma stands where PyTorch's CPU kernels use a fused multiply-add (add with alpha,
# lerp, addcmul), and div_rn / sqrt_rn keep IEEE division and square root on the GPU.
# ----------------------------------------------------------------------------------------------


@triton.jit
def _adam_kernel(
    PTRS, SIZES, WORK, T, P0, G0, M0, V0, VM0,
    decay, weight_decay, lerp_coeff, beta2, one_minus_beta2, bc2_sqrt, eps, neg_step_size,
    MAXIMIZE: tl.constexpr, HAS_WD: tl.constexpr, DECOUPLED: tl.constexpr, LERP_SMALL: tl.constexpr,
    AMSGRAD: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    t = tl.load(WORK + 2 * pid)
    start = tl.load(WORK + 2 * pid + 1)
    n = tl.load(SIZES + t)
    p_ptr = tl.load(PTRS + t).to(P0.dtype, bitcast=True)
    g_ptr = tl.load(PTRS + T + t).to(G0.dtype, bitcast=True)
    m_ptr = tl.load(PTRS + 2 * T + t).to(M0.dtype, bitcast=True)
    v_ptr = tl.load(PTRS + 3 * T + t).to(V0.dtype, bitcast=True)
    offs = start + tl.arange(0, BLOCK)
    ok = offs < n
    p = tl.load(p_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    m = tl.load(m_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    if MAXIMIZE:
        g = -g
    if HAS_WD:
        if DECOUPLED:
            p = p * decay  # AdamW: p *= 1 - lr * wd
        else:
            g = tl.fma(p, weight_decay, g)  # Adam: g += wd * p
    # m = lerp(m, g, 1 - beta1) = m + (1 - beta1) * (g - m)   (PyTorch's two-branch lerp)
    if LERP_SMALL:
        m = tl.fma(lerp_coeff, g - m, m)
    else:
        m = tl.fma(lerp_coeff, g - m, g)
    # v = beta2 * v + (1 - beta2) * g * g
    v = tl.fma(one_minus_beta2 * g, g, v * beta2)
    if AMSGRAD:
        vm_ptr = tl.load(PTRS + 4 * T + t).to(VM0.dtype, bitcast=True)
        vm = tl.load(vm_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        vm = tl.maximum(vm, v, propagate_nan=tl.PropagateNan.ALL)  # max_v = max(max_v, v)
        tl.store(vm_ptr + offs, vm.to(VM0.dtype.element_ty), mask=ok)
        s = vm
    else:
        s = v
    # denom = sqrt(v) / sqrt(1 - beta2^step) + eps ; p -= lr / (1 - beta1^step) * m / denom
    denom = tl.div_rn(tl.sqrt_rn(s), bc2_sqrt) + eps
    p = p + tl.div_rn(neg_step_size * m, denom)
    tl.store(p_ptr + offs, p.to(P0.dtype.element_ty), mask=ok)
    tl.store(m_ptr + offs, m.to(M0.dtype.element_ty), mask=ok)
    tl.store(v_ptr + offs, v.to(V0.dtype.element_ty), mask=ok)


@triton.jit
def _sgd_kernel(
    PTRS, SIZES, WORK, T, P0, G0, B0,
    neg_lr, weight_decay, momentum, one_minus_dampening,
    MAXIMIZE: tl.constexpr, HAS_WD: tl.constexpr, HAS_MOMENTUM: tl.constexpr, FIRST_STEP: tl.constexpr,
    NESTEROV: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    t = tl.load(WORK + 2 * pid)
    start = tl.load(WORK + 2 * pid + 1)
    n = tl.load(SIZES + t)
    p_ptr = tl.load(PTRS + t).to(P0.dtype, bitcast=True)
    g_ptr = tl.load(PTRS + T + t).to(G0.dtype, bitcast=True)
    offs = start + tl.arange(0, BLOCK)
    ok = offs < n
    p = tl.load(p_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    d = tl.load(g_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    if MAXIMIZE:
        d = -d
    if HAS_WD:
        d = tl.fma(p, weight_decay, d)  # d_p = g + wd * p
    if HAS_MOMENTUM:
        b_ptr = tl.load(PTRS + 2 * T + t).to(B0.dtype, bitcast=True)
        if FIRST_STEP:
            buf = d  # buf = d_p
        else:
            buf = tl.load(b_ptr + offs, mask=ok, other=0.0).to(tl.float32)
            buf = tl.fma(d, one_minus_dampening, buf * momentum)  # buf = momentum * buf + (1 - dampening) * d_p
        tl.store(b_ptr + offs, buf.to(B0.dtype.element_ty), mask=ok)
        if NESTEROV:
            d = tl.fma(buf, momentum, d)  # d_p = d_p + momentum * buf
        else:
            d = buf
    p = tl.fma(d, neg_lr, p)  # p -= lr * d_p
    tl.store(p_ptr + offs, p.to(P0.dtype.element_ty), mask=ok)
