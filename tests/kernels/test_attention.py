"""Flash-attention kernels: Triton (interpreter or GPU) vs reference path vs float64 NumPy."""

import math

import ml_dtypes
import numpy as np
import pytest
from devices import dev, host
from tolerances import MATMUL_TOL, assert_close

from conch.kernels import attention as at
from conch.kernels._launch import LAUNCHES

BF16 = np.dtype(ml_dtypes.bfloat16)
KERNELS = ("_attn_fwd_kernel", "_attn_bwd_dq_kernel", "_attn_bwd_dkdv_kernel")


def np_attention(q, k, v, dout, causal, scale, keep=None, p=0.0):
    """out, dq, dk, dv in float64 from the explicit probabilities (an independent formulation); with a dropout
    ``keep`` mask: out = (P ∘ keep/(1-p)) v, and the softmax Jacobian is applied to dP ∘ keep/(1-p)."""
    q, k, v, g = (np.asarray(t).astype(np.float64) for t in (q, k, v, dout))
    s = q @ np.swapaxes(k, -1, -2) * scale
    if causal:
        s = np.where(np.tril(np.ones(s.shape[-2:], bool)), s, -np.inf)
    pr = np.exp(s - s.max(-1, keepdims=True))
    pr /= pr.sum(-1, keepdims=True)
    w = 1.0 if keep is None else keep / (1 - p)
    dp = (g @ np.swapaxes(v, -1, -2)) * w
    ds = pr * (dp - (dp * pr).sum(-1, keepdims=True))  # softmax Jacobian applied row by row
    return (pr * w) @ v, ds @ k * scale, np.swapaxes(ds, -1, -2) @ q * scale, np.swapaxes(pr * w, -1, -2) @ g


def rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def launches():
    return sum(LAUNCHES[k] for k in KERNELS)


# Tolerances: attention sums S products twice (q kᵀ, then p v), like a matmul.
@pytest.mark.parametrize("dtype", [np.float32, np.float16, BF16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize(
    "shape,causal",
    [
        ((1, 1, 1, 1, 16), False),  # (B, H, L, S, D): one query, one key
        ((1, 2, 7, 7, 5), True),  # odd head dim, padded to the 16-wide dot
        ((2, 1, 33, 20, 16), False),  # L not a block multiple, S < L
        ((1, 1, 17, 40, 8), True),  # causal with S > L (top-left aligned)
        ((1, 2, 13, 15, 32), True),  # 1..3 below a 16-block
    ],
)
def test_forward_backward(triton_path, monkeypatch, rng, shape, causal, dtype):
    B, H, L, S, D = shape
    q_h, k_h, v_h = rand(rng, (B, H, L, D), dtype), rand(rng, (B, H, S, D), dtype), rand(rng, (B, H, S, D), dtype)
    g_h = rand(rng, (B, H, L, D), dtype)
    copies = [t.copy() for t in (q_h, k_h, v_h, g_h)]
    q, k, v, g = dev(q_h), dev(k_h), dev(v_h), dev(g_h)
    before = launches()
    out, res = at.attention_forward(q, k, v, causal=causal, allow_tf32=False)
    dq, dk, dv = at.attention_backward(res, g)
    assert launches() == before + 3 and res.lse is not None and res.p is None  # O(L) residuals, no probabilities
    with monkeypatch.context() as m:
        m.setenv("CONCH_KERNELS", "reference")
        out_r, res_r = at.attention_forward(q, k, v, causal=causal)
        grads_r = at.attention_backward(res_r, g)
    want = np_attention(q_h, k_h, v_h, g_h, causal, 1 / math.sqrt(D))
    for got, ref, exp, name in zip((out, dq, dk, dv), (out_r, *grads_r), want, ("out", "dq", "dk", "dv")):
        got = host(got)
        assert got.dtype == np.dtype(dtype) and got.shape == exp.shape, name
        assert_close(got, host(ref), dtype, table=MATMUL_TOL, scale=2)
        assert_close(got, exp, dtype, table=MATMUL_TOL, scale=2)
    for t, c in zip((q, k, v, g), copies):
        np.testing.assert_array_equal(host(t), c)  # inputs untouched


def test_permuted_views_and_3d_inputs_need_no_copy(triton_path, rng):
    """A transformer's (B, T, 3, H, D) projection permuted to (B, H, T, D) goes in through its strides."""
    B, T, H, D = 2, 19, 3, 8
    qkv_h = rand(rng, (B, T, 3, H, D), np.float32)
    qkv = dev(qkv_h)
    q, k, v = (qkv.transpose(2, 0, 3, 1, 4)[i] for i in range(3))
    assert not q.flags.c_contiguous
    g_h = rand(rng, (B, H, T, D), np.float32)
    out, res = at.attention_forward(q, k, v, causal=True, scale=0.3, allow_tf32=False)
    grads = at.attention_backward(res, dev(g_h))
    qh, kh, vh = (np.ascontiguousarray(qkv_h.transpose(2, 0, 3, 1, 4)[i]) for i in range(3))
    want = np_attention(qh, kh, vh, g_h, True, 0.3)
    for got, exp in zip((out, *grads), want):
        assert_close(host(got), exp, np.float32, table=MATMUL_TOL)
    out3, _ = at.attention_forward(dev(qh[0]), dev(kh[0]), dev(vh[0]), causal=True, scale=0.3, allow_tf32=False)
    assert_close(host(out3), want[0][0], np.float32, table=MATMUL_TOL)  # (H, T, D): a 3-D batch


def test_reference_path_float64_and_broadcast(reference, rng):
    q, k, v = rand(rng, (2, 5, 4), np.float64), rand(rng, (1, 6, 4), np.float64), rand(rng, (1, 6, 3), np.float64)
    g = rand(rng, (2, 5, 3), np.float64)
    out, res = at.attention_forward(q, k, v)
    dq, dk, dv = at.attention_backward(res, g)
    want = np_attention(q, np.broadcast_to(k, (2, 6, 4)), np.broadcast_to(v, (2, 6, 3)), g, False, 0.5)
    np.testing.assert_allclose(out, want[0], rtol=1e-12)
    np.testing.assert_allclose(dq, want[1], rtol=1e-12, atol=1e-14)
    # the reference returns broadcast-shaped dk/dv; the framework's engine sums them to k's shape
    np.testing.assert_allclose(dk.sum(0, keepdims=True), want[2].sum(0, keepdims=True), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dv.sum(0, keepdims=True), want[3].sum(0, keepdims=True), rtol=1e-12, atol=1e-14)


def test_errors_name_shapes_and_dtypes(rng):
    q = rand(rng, (2, 3, 4), np.float32)
    with pytest.raises(ValueError, match=r"q \(2, 3, 4\), k \(2, 3, 5\)"):
        at.attention_forward(q, rand(rng, (2, 3, 5), np.float32), q)
    with pytest.raises(TypeError, match="share one dtype"):
        at.attention_forward(q, q.astype(np.float16), q)
    with pytest.raises(TypeError, match="int64"):
        at.attention_forward(q.astype(np.int64), q, q)
    out, res = at.attention_forward(q, q, q)
    with pytest.raises(ValueError, match="dout shape"):
        at.attention_backward(res, q[:1])


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize(
    "shape,causal", [((1, 2, 7, 7, 5), True), ((2, 1, 33, 20, 16), False), ((1, 1, 17, 40, 8), True)]
)
def test_dropout_regenerates_the_same_mask(triton_path, monkeypatch, rng, shape, causal, dtype):
    """Forward and both backward kernels draw keep = tl.rand(seed, offset + (bh·L + i)·S + j) >= p, bit for bit
    the mask rand_mask gives on the host; the reference path applies that mask too."""
    from conch.kernels.dropout import rand_mask

    B, H, L, S, D = shape
    q, k, v = (rand(rng, (B, H, n, D), dtype) for n in (L, S, S))
    g = rand(rng, (B, H, L, D), dtype)
    kw = dict(causal=causal, dropout_p=0.3, seed=11, offset=1000, allow_tf32=False)
    out, res = at.attention_forward(dev(q), dev(k), dev(v), **kw)
    grads = at.attention_backward(res, dev(g))
    with monkeypatch.context() as m:
        m.setenv("CONCH_KERNELS", "reference")
        out_r, res_r = at.attention_forward(dev(q), dev(k), dev(v), **kw)
        grads_r = at.attention_backward(res_r, dev(g))
    keep = rand_mask((B, H, L, S), 0.3, 11, 1000)
    assert 0.5 < keep.mean() < 0.9  # a mask, not all kept
    want = np_attention(q, k, v, g, causal, 1 / math.sqrt(D), keep, 0.3)
    for got, ref, exp in zip((out, *grads), (out_r, *grads_r), want):
        assert_close(host(got), host(ref), dtype, table=MATMUL_TOL, scale=2)
        assert_close(host(got), exp, dtype, table=MATMUL_TOL, scale=2)
    other, _ = at.attention_forward(dev(q), dev(k), dev(v), **{**kw, "offset": 1000 + B * H * L * S})
    assert not np.allclose(host(other), host(out))  # the next counters give another mask


def test_dropout_p_is_checked(rng):
    q = rand(rng, (2, 3, 4), np.float32)
    with pytest.raises(ValueError, match=r"dropout_p must be in \[0, 1\)"):
        at.attention_forward(q, q, q, dropout_p=1.0)
