"""Packed q/k/v attention (framework/fused/qkv_attention.py, conch.models.GPT's attention) against float64 NumPy,
finite differences, the unfused split + scaled_dot_product_attention composition and PyTorch."""

import numpy as np
import pytest

import conch
import conch.nn.functional as F
from conch.fused.qkv_attention import qkv_attention


def np_attention(qkv, n_head, causal, scale=None):
    """float64 closed form: split the packed projection into heads, masked softmax, weighted values."""
    qkv = np.asarray(qkv, np.float64)
    b, t, c3 = qkv.shape
    d = c3 // (3 * n_head)
    q, k, v = (
        qkv[..., i * c3 // 3 : (i + 1) * c3 // 3].reshape(b, t, n_head, d).transpose(0, 2, 1, 3) for i in range(3)
    )
    s = q @ k.transpose(0, 1, 3, 2) * (1 / np.sqrt(d) if scale is None else scale)
    if causal:
        s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return (p @ v).transpose(0, 2, 1, 3).reshape(b, t, c3 // 3)


def unfused(qkv, n_head, causal, dropout_p=0.0, scale=None):
    b, t, c3 = qkv.shape
    q, k, v = (z.reshape(b, t, n_head, -1).transpose(1, 2) for z in qkv.split(c3 // 3, dim=2))
    y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal, scale=scale)
    return y.transpose(1, 2).reshape(b, t, c3 // 3)


def _qkv(rng, shape, dtype=conch.float64, device="cpu"):
    return conch.tensor(rng.standard_normal(shape), dtype=dtype, device=device, requires_grad=True)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape,n_head", [((2, 5, 36), 3), ((1, 16, 24), 2), ((3, 1, 6), 1), ((2, 7, 48), 4)])
def test_values_and_gradients_match_float64_references(device, causal, shape, n_head):
    rng = np.random.default_rng(1)
    qkv = _qkv(rng, shape, device=device)
    y = qkv_attention(qkv, n_head, causal=causal)
    assert y.shape == shape[:2] + (shape[2] // 3,) and y.dtype == conch.float64
    np.testing.assert_allclose(y.detach().cpu().numpy(), np_attention(qkv.detach().cpu().numpy(), n_head, causal),
                               rtol=1e-12, atol=1e-13)  # fmt: skip
    up = conch.tensor(rng.standard_normal(y.shape), device=device)  # random upstream gradient
    (got,) = conch.autograd.grad(y, [qkv], up)
    (want,) = conch.autograd.grad(unfused(qkv, n_head, causal), [qkv], up)
    np.testing.assert_allclose(got.cpu().numpy(), want.cpu().numpy(), rtol=1e-11, atol=1e-13)


def test_gradcheck_and_second_derivatives():
    rng = np.random.default_rng(2)
    qkv = _qkv(rng, (2, 4, 12))
    assert conch.autograd.gradcheck(lambda a: qkv_attention(a, 2, causal=True), (qkv,))
    assert conch.autograd.gradgradcheck(lambda a: qkv_attention(a, 2, causal=False, scale=0.3), (qkv,))


@pytest.mark.parametrize("dtype,tol", [("float32", 2e-6), ("float16", 2e-3), ("bfloat16", 2e-2)])
def test_lower_precision_against_float64(device, dtype, tol):
    rng = np.random.default_rng(3)
    qkv = _qkv(rng, (2, 9, 30), dtype=getattr(conch, dtype), device=device)
    y = qkv_attention(qkv, 5)
    assert y.dtype == qkv.dtype
    want = np_attention(qkv.detach().float().cpu().numpy(), 5, True)
    np.testing.assert_allclose(y.detach().float().cpu().numpy(), want, rtol=tol, atol=tol)
    up = conch.tensor(rng.standard_normal(y.shape), dtype=qkv.dtype, device=device)
    (got,) = conch.autograd.grad(y, [qkv], up)
    (ref,) = conch.autograd.grad(unfused(qkv, 5, True), [qkv], up)
    assert got.dtype == qkv.dtype
    np.testing.assert_allclose(got.float().cpu().numpy(), ref.float().cpu().numpy(), rtol=4 * tol, atol=4 * tol)


def test_dropout_matches_the_unfused_composition_with_the_same_seed(device):
    # the same counters as scaled_dot_product_attention: one draw of B·H·T·T, the mask regenerated in backward
    rng = np.random.default_rng(4)
    qkv = _qkv(rng, (2, 6, 24), device=device)
    up = conch.tensor(rng.standard_normal((2, 6, 8)), device=device)
    conch.manual_seed(7)
    y = qkv_attention(qkv, 2, dropout_p=0.3)
    (g,) = conch.autograd.grad(y, [qkv], up)
    conch.manual_seed(7)
    y2 = unfused(qkv, 2, True, dropout_p=0.3)
    (g2,) = conch.autograd.grad(y2, [qkv], up)
    np.testing.assert_allclose(y.detach().cpu().numpy(), y2.detach().cpu().numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(g.cpu().numpy(), g2.cpu().numpy(), rtol=1e-11, atol=1e-13)
    assert not np.allclose(y.detach().cpu().numpy(), np_attention(qkv.detach().cpu().numpy(), 2, True))


def test_autocast_runs_in_the_autocast_dtype():
    rng = np.random.default_rng(5)
    qkv = _qkv(rng, (1, 4, 12), dtype=conch.float32)
    with conch.autocast("cpu", dtype=conch.bfloat16):
        y = qkv_attention(qkv, 2)
        y_ref = unfused(qkv, 2, True)
    assert y.dtype == y_ref.dtype == conch.bfloat16
    np.testing.assert_array_equal(y.float().detach().numpy(), y_ref.float().detach().numpy())


def test_errors_name_the_shape():
    x = conch.zeros(2, 3, 10, requires_grad=True)
    with pytest.raises(ValueError, match=r"divisible by n_head=2.*\(2, 3, 10\)"):
        qkv_attention(x, 2)
    with pytest.raises(ValueError, match="expected qkv of shape"):
        qkv_attention(conch.zeros(6, 12), 2)
    with pytest.raises(TypeError, match="floating-point"):
        qkv_attention(conch.zeros(1, 2, 6, dtype=conch.int64), 1)


def test_inplace_write_into_qkv_before_backward_raises():
    qkv = conch.tensor(np.random.default_rng(6).standard_normal((1, 3, 6)), requires_grad=True)
    h = qkv * 1.0
    y = qkv_attention(h, 1)
    h.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_gpt_attention_equals_the_unfused_block():
    # conch.models.GPT's attention module against split + SDPA on its own projection, values and gradients
    from conch.models import GPT, GPTConfig

    conch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)).double()
    attn = model.h[0].attn
    x = conch.tensor(np.random.default_rng(7).standard_normal((2, 5, 8)), requires_grad=True)
    y = attn(x)
    y_ref = attn.c_proj(unfused(attn.c_attn(x), 2, True))
    np.testing.assert_allclose(y.detach().numpy(), y_ref.detach().numpy(), rtol=1e-12, atol=1e-14)
    params = [x, attn.c_attn.weight, attn.c_attn.bias]
    for a, b in zip(conch.autograd.grad(y.sum(), params), conch.autograd.grad(y_ref.sum(), params)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-11, atol=1e-13)


def test_matches_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    a = rng.standard_normal((2, 7, 24))
    up = rng.standard_normal((2, 7, 8))
    qkv = conch.tensor(a, requires_grad=True)
    y = qkv_attention(qkv, 2)
    y.backward(conch.tensor(up))
    ta = torch.tensor(a, requires_grad=True)
    q, k, v = (z.reshape(2, 7, 2, 4).transpose(1, 2) for z in ta.split(8, dim=2))
    ty = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, 7, 8)
    ty.backward(torch.tensor(up))
    np.testing.assert_allclose(y.detach().numpy(), ty.detach().numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(qkv.grad.numpy(), ta.grad.numpy(), rtol=1e-11, atol=1e-13)
