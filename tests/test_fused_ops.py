"""Framework-level fused ops: the Triton path is taken under the interpreter and agrees with the reference path."""

import ml_dtypes
import numpy as np
import pytest

import conch
from conch.fused import activations as factivations
from conch.fused import attention as fattention
from conch.fused import cross_entropy as fcross_entropy
from conch.fused import dropout as fdropout
from conch.fused import matmul as fmatmul
from conch.fused import norms as fnorms
from conch.fused import softmax as fsoftmax
from conch.kernels._launch import LAUNCHES

BF16 = np.dtype(ml_dtypes.bfloat16)
TOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float16): 3e-3, BF16: 3e-2}


def _run(fn, arrays, dtype, upstream_seed=0):
    """Forward and backward of ``fn`` on fresh tensors; returns (out, grads) as float64 arrays."""
    ts = [conch.tensor(a.astype(dtype), requires_grad=True) for a in arrays]
    out = fn(*ts)
    g = np.random.default_rng(upstream_seed).standard_normal(out.shape)
    out.backward(conch.tensor(g.astype(out.dtype)))
    return np.asarray(out.detach()._data, np.float64), [np.asarray(t.grad._data, np.float64) for t in ts]


CASES = {
    "matmul": (lambda a, b: a @ b, [(7, 33), (33, 5)]),
    "matmul_batched": (lambda a, b: a @ b, [(2, 3, 7, 9), (9, 4)]),
    "linear_gelu": (lambda x, w, b: fmatmul.linear(x, w, b, "gelu"), [(7, 9), (5, 9), (5,)]),
    "linear_relu": (lambda x, w, b: fmatmul.linear(x, w, b, "relu"), [(3, 7, 9), (5, 9), (5,)]),
    "silu": (lambda x: factivations.activation(x, "silu"), [(7, 33)]),
    "leaky_relu": (lambda x: factivations.activation(x, "leaky_relu", negative_slope=0.2), [(123,)]),
    "softmax": (lambda x: fsoftmax.softmax(x, -1), [(7, 33)]),
    "log_softmax_dim0": (lambda x: fsoftmax.log_softmax(x, 0), [(7, 33)]),
    "layer_norm": (lambda x, w, b: fnorms.layer_norm(x, (33,), w, b), [(7, 33), (33,), (33,)]),
    "rms_norm": (lambda x, w: fnorms.rms_norm(x, 33, w), [(3, 7, 33), (33,)]),
    "attention_causal": (
        lambda q, k, v: fattention.attention(q, k, v, True, 0.4),
        [(2, 3, 9, 8), (2, 3, 9, 8), (2, 3, 9, 8)],
    ),
    "sdpa": (
        lambda q, k, v: conch.nn.functional.scaled_dot_product_attention(q, k, v),
        [(2, 7, 5), (2, 11, 5), (2, 11, 5)],
    ),
}


def _kernel_launches():
    return sum(LAUNCHES.values())


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_triton_path_matches_reference(name, dtype, monkeypatch):
    fn, shapes = CASES[name]
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal(s) for s in shapes]
    monkeypatch.setenv("CONCH_KERNELS", "reference")
    ref_out, ref_grads = _run(fn, arrays, dtype)
    monkeypatch.setenv("CONCH_KERNELS", "auto")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    before = _kernel_launches()
    out, grads = _run(fn, arrays, dtype)
    assert _kernel_launches() > before, "the Triton path was not taken"
    tol = TOL[np.dtype(dtype)] * (10 if "matmul" in name or "linear" in name else 1)
    np.testing.assert_allclose(out, ref_out, atol=tol, rtol=tol)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, atol=tol * 5, rtol=tol * 5)


def test_reference_path_takes_no_triton_launch(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("CONCH_KERNELS", "auto")
    before = _kernel_launches()
    x = conch.randn(4, 5, requires_grad=True)
    fmatmul.linear(x, conch.randn(3, 5), None, "gelu").sum().backward()
    assert _kernel_launches() == before


def test_cross_entropy_triton_path(monkeypatch):
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((9, 37))
    target = np.array([0, 5, 36, -100, 2, 2, 7, 1, 30])
    upstream = rng.standard_normal(9).astype(np.float32)
    out = {}
    for mode in ("reference", "triton"):
        monkeypatch.setenv("CONCH_KERNELS", "reference" if mode == "reference" else "auto")
        if mode == "triton":
            monkeypatch.setenv("TRITON_INTERPRET", "1")
        x = conch.tensor(logits.astype(np.float32), requires_grad=True)
        before = _kernel_launches()
        loss = fcross_entropy.cross_entropy(x, conch.tensor(target), label_smoothing=0.1, reduction="none")
        loss.backward(conch.tensor(upstream))
        if mode == "triton":
            assert _kernel_launches() > before
        out[mode] = (loss.detach().numpy().astype(np.float64), x.grad.numpy().astype(np.float64))
    # independent float64 reference
    lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    valid = target != -100
    t = np.where(valid, target, 0)
    ref = (0.9 * (lse - logits[np.arange(9), t]) + 0.1 / 37 * (lse[:, None] - logits).sum(1)) * valid
    for mode in out:
        np.testing.assert_allclose(out[mode][0], ref, atol=1e-4, rtol=1e-4)
    p = np.exp(logits - lse[:, None])
    onehot = np.eye(37)[t]
    ref_grad = (p - 0.9 * onehot - 0.1 / 37) * (upstream * valid)[:, None]
    for mode in out:
        np.testing.assert_allclose(out[mode][1], ref_grad, atol=1e-5, rtol=1e-4)


def test_dropout_mask_same_on_both_paths(monkeypatch):
    x = conch.ones(7, 33, requires_grad=True)
    conch.manual_seed(3)
    monkeypatch.setenv("CONCH_KERNELS", "reference")
    y_ref = fdropout.dropout(x, 0.3).detach().numpy().copy()
    conch.manual_seed(3)
    monkeypatch.setenv("CONCH_KERNELS", "auto")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    y = fdropout.dropout(x, 0.3)
    y.sum().backward()
    np.testing.assert_array_equal(y.detach().numpy(), y_ref)
    np.testing.assert_array_equal(x.grad.numpy(), y_ref)  # dy/dx = mask / (1-p) = y for x = 1
    assert 0.1 < (y_ref == 0).mean() < 0.5


def test_dropout_gradcheck_and_random_upstream_gradient():
    # a fixed (seed, offset) makes dropout a fixed linear map: float64 gradcheck and gradgradcheck on an odd shape
    # (an offset not a multiple of 8, so the mask starts mid-Philox-block), and the backward against the closed
    # form g * mask / (1 - p) for a random upstream gradient
    rng = np.random.default_rng(12)
    x = conch.tensor(rng.standard_normal((3, 7, 5)), requires_grad=True)
    fn = lambda x: fdropout.Dropout.apply(x, p=0.35, seed=19, offset=13)  # noqa: E731
    assert conch.autograd.gradcheck(fn, (x,))
    assert conch.autograd.gradgradcheck(fn, (x,))
    g = rng.standard_normal((3, 7, 5))
    y = fn(x)
    y.backward(conch.tensor(g))
    from conch.kernels.dropout import dropout_mask

    keep = dropout_mask((3, 7, 5), 0.35, 19, 13)
    assert 0.4 < keep.mean() < 0.9  # a mask, not all kept
    np.testing.assert_allclose(y.detach().numpy(), np.where(keep, x.detach().numpy() / 0.65, 0.0), rtol=1e-13)
    np.testing.assert_allclose(x.grad.numpy(), np.where(keep, g / 0.65, 0.0), rtol=1e-13)


@pytest.mark.parametrize("act", [None, *factivations.ACTIVATIONS])
def test_linear_gradcheck_and_second_derivatives(act):
    x = conch.randn(3, 4, dtype=conch.float64, requires_grad=True)
    w = conch.randn(5, 4, dtype=conch.float64, requires_grad=True)
    b = conch.randn(5, dtype=conch.float64, requires_grad=True)
    assert conch.autograd.gradcheck(lambda x, w, b: fmatmul.linear(x, w, b, act), (x, w, b))
    assert conch.autograd.gradgradcheck(lambda x, w, b: fmatmul.linear(x, w, b, act), (x, w, b))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_gradcheck(reduction):
    x = conch.randn(5, 7, dtype=conch.float64, requires_grad=True)
    t = conch.tensor([1, 0, -100, 6, 3])
    fn = lambda x: fcross_entropy.cross_entropy(x, t, label_smoothing=0.2, reduction=reduction)  # noqa: E731
    assert conch.autograd.gradcheck(fn, (x,))
    assert conch.autograd.gradgradcheck(fn, (x,))


def test_norms_and_softmax_second_derivatives():
    x = conch.randn(3, 6, dtype=conch.float64, requires_grad=True)
    w = conch.randn(6, dtype=conch.float64, requires_grad=True)
    for fn in (
        lambda x, w: fnorms.layer_norm(x, 6, w, w),
        lambda x, w: fnorms.rms_norm(x, 6, w),
        lambda x, w: fsoftmax.softmax(x * w, 1),
        lambda x, w: fsoftmax.log_softmax(x * w, 0),
    ):
        assert conch.autograd.gradcheck(fn, (x, w))
        assert conch.autograd.gradgradcheck(fn, (x, w))


def test_attention_gradcheck_second_derivatives_and_composite_agree():
    rng = np.random.default_rng(3)
    q, k, v = (conch.tensor(rng.standard_normal(s), requires_grad=True) for s in ((2, 5, 3), (2, 6, 3), (2, 6, 4)))
    for causal in (False, True):
        fn = lambda q, k, v, causal=causal: fattention.attention(q, k, v, causal, 0.7)  # noqa: E731
        assert conch.autograd.gradcheck(fn, (q, k, v))
        assert conch.autograd.gradgradcheck(fn, (q, k, v))
        out = fn(q, k, v).detach().numpy()
        np.testing.assert_allclose(
            out, fattention._composite_attention(q, k, v, causal, 0.7).detach().numpy(), rtol=1e-12
        )


def test_fused_op_backward_twice_raises():
    x = conch.randn(3, 4, requires_grad=True)
    y = fmatmul.linear(x, conch.randn(2, 4), None, "silu").sum()
    y.backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        y.backward()


def test_linear_shape_errors_name_shapes():
    with pytest.raises(RuntimeError, match=r"\(3, 4\).*\(2, 5\)"):
        fmatmul.linear(conch.randn(3, 4), conch.randn(2, 5))
    with pytest.raises(ValueError, match="unknown activation"):
        fmatmul.linear(conch.randn(3, 4), conch.randn(2, 4), None, "swish")


@pytest.mark.parametrize("interp", [False, True])
def test_linear_weight_grad_is_contiguous(interp, monkeypatch):
    # linear passes weight.T to the matmul kernel; its gradient must come back in weight's own layout
    if interp:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = conch.randn(5, 33)
    w = conch.randn(17, 33, requires_grad=True)
    g = np.random.default_rng(0).standard_normal((5, 17)).astype(np.float32)
    fmatmul.linear(x, w, None, "tanh").backward(conch.tensor(g))
    assert w.grad.is_contiguous()
    z = x.numpy().astype(np.float64) @ w.detach().numpy().T.astype(np.float64)
    ref = (g * (1 - np.tanh(z) ** 2)).T @ x.numpy()
    np.testing.assert_allclose(w.grad.numpy(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("interp", [False, True])
def test_relu_propagates_nan_like_pytorch(interp, monkeypatch):
    if interp:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = conch.tensor([float("nan"), -1.0, 0.0, 2.0])
    np.testing.assert_array_equal(x.relu().numpy(), [np.nan, 0.0, 0.0, 2.0])
    y = fmatmul.linear(conch.tensor([[float("nan")], [1.0]]), conch.ones(1, 1), None, "relu")
    assert np.isnan(y.numpy()[0, 0]) and y.numpy()[1, 0] == 1.0


@pytest.mark.parametrize("make", [lambda nn: nn.LeakyReLU(0.2), lambda nn: nn.ELU(1.5), lambda nn: nn.GELU("tanh")])
def test_sequential_fuses_linear_with_parametrised_activations(make):
    import conch.nn as nn

    act = make(nn)
    seq = nn.Sequential(nn.Linear(5, 4), act).double()
    x = conch.randn(3, 5, dtype=conch.float64, requires_grad=True)
    y = seq(x)
    assert y.grad_fn.name() == "MatMulAct"  # one fused op: matmul, bias and activation
    ref = act(seq[0](x))
    np.testing.assert_allclose(y.detach().numpy(), ref.detach().numpy(), rtol=1e-12)
    assert conch.autograd.gradcheck(lambda t: seq(t), (x,))


def test_float32_matmul_precision_switch_reaches_the_kernel(monkeypatch):
    seen = []
    real = conch.kernels.matmul.matmul_forward

    def spy(*args, **kwargs):
        seen.append(kwargs.get("allow_tf32"))
        return real(*args, **kwargs)

    monkeypatch.setattr(conch.kernels.matmul, "matmul_forward", spy)
    assert conch.get_float32_matmul_precision() == "high"
    # batched operands: 2-D NumPy products take matmul's fast path, which never reaches the kernel (nor TF32)
    try:
        conch.randn(1, 2, 3) @ conch.randn(3, 2)
        conch.set_float32_matmul_precision("highest")
        assert conch.get_float32_matmul_precision() == "highest"
        conch.randn(1, 2, 3) @ conch.randn(3, 2)
    finally:
        conch.set_float32_matmul_precision("high")
    assert seen == [True, False]
    with pytest.raises(ValueError, match="highest"):
        conch.set_float32_matmul_precision("exact")


def test_attention_dropout_gradcheck_and_both_paths(monkeypatch):
    rng = np.random.default_rng(4)
    q, k, v = (conch.tensor(rng.standard_normal(s), requires_grad=True) for s in ((2, 5, 3), (2, 6, 3), (2, 6, 4)))
    drop = (0.4, 7, 123)  # a fixed (p, seed, offset): every evaluation of gradcheck sees the same mask
    for causal in (False, True):
        fn = lambda q, k, v, causal=causal: fattention.Attention.apply(q, k, v, causal=causal, scale=0.7, drop=drop)  # noqa: E731
        assert conch.autograd.gradcheck(fn, (q, k, v))
        assert conch.autograd.gradgradcheck(fn, (q, k, v))
        composite = fattention._composite_attention(q, k, v, causal, 0.7, drop)
        np.testing.assert_allclose(fn(q, k, v).detach().numpy(), composite.detach().numpy(), rtol=1e-12)
    # scaled_dot_product_attention with dropout: the same seed gives the same result on the Triton path
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    outs = []
    for env in ({"CONCH_KERNELS": "reference"}, {"CONCH_KERNELS": "auto", "TRITON_INTERPRET": "1"}):
        for key, val in env.items():
            monkeypatch.setenv(key, val)
        conch.manual_seed(0)
        t = conch.tensor(x, requires_grad=True)
        before = _kernel_launches()
        y = conch.nn.functional.scaled_dot_product_attention(t, t, t, dropout_p=0.25, is_causal=True)
        y.sum().backward()
        outs.append((y.detach().numpy(), t.grad.numpy(), _kernel_launches() - before))
    assert outs[0][2] == 0 and outs[1][2] >= 3  # reference path: no launch; Triton path: forward + 2 backward
    np.testing.assert_allclose(outs[1][0], outs[0][0], rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(outs[1][1], outs[0][1], rtol=2e-4, atol=2e-5)


def test_checkpointed_attention_dropout_replays_the_mask():
    from conch.checkpoint import checkpoint

    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 2, 7, 4))

    def block(t):
        return conch.nn.functional.scaled_dot_product_attention(t, t * 0.5, t, dropout_p=0.3, is_causal=True)

    grads = []
    for ck in (False, True):
        conch.manual_seed(1)
        t = conch.tensor(x, requires_grad=True)
        (checkpoint(block, t) if ck else block(t)).pow(2).sum().backward()
        grads.append(t.grad.numpy())
    np.testing.assert_array_equal(grads[0], grads[1])
    conch.manual_seed(2)
    t = conch.tensor(x, requires_grad=True)
    block(t).pow(2).sum().backward()
    assert not np.allclose(t.grad.numpy(), grads[0])  # another seed, another mask
