"""Saved-tensor version checks on the fused ops: an in-place write into what a backward needs raises, as PyTorch.

Each fused op keeps kernel residuals that alias its inputs or output (never copied); an in-place write into one of
them before backward used to give a silently wrong gradient. Now it raises PyTorch's error, whichever kernel path
ran, and the cases PyTorch gets right (cross_entropy's logits, an input read by an op that keeps nothing of it,
softmax's input) keep their right gradient. References are closed-form NumPy in float64.
"""

import gc
import importlib

import numpy as np
import pytest

import conch
import conch.nn.functional as F

_tensor_module = importlib.import_module("conch.tensor")  # the module (``conch.tensor`` the attribute is the factory)

MSG = r"modified by an inplace operation: a tensor of shape \(\d, \d\) saved by {} is at version 1; expected version 0"


def _leaf(shape=(3, 4), dtype=np.float64, seed=0):
    return conch.tensor(np.random.default_rng(seed).standard_normal(shape).astype(dtype), requires_grad=True)


def _w(shape, seed=5):
    """A fixed upstream weighting, so that a wrong gradient cannot hide behind a symmetric loss."""
    return np.random.default_rng(seed).standard_normal(shape)


# (op name in the message, forward of h (3, 4), which tensor the write goes into: "in" = h, "out" = the result)
RAISES = {
    "log_softmax": ("SoftmaxLast", lambda h: F.log_softmax(h, -1), "out"),
    "softmax": ("SoftmaxLast", lambda h: F.softmax(h, -1), "out"),
    "softmax_dim0_out": ("SoftmaxLast", lambda h: F.softmax(h, 0), "out"),
    "gelu": ("Activation", lambda h: F.gelu(h), "in"),
    "gelu_tanh": ("Activation", lambda h: F.gelu(h, approximate="tanh"), "in"),
    "silu": ("Activation", lambda h: F.silu(h), "in"),
    "layer_norm": ("LayerNorm", lambda h: F.layer_norm(h, (4,)), "in"),
    "rms_norm": ("LayerNorm", lambda h: F.rms_norm(h, (4,)), "in"),
    "sdpa": ("Attention", lambda h: F.scaled_dot_product_attention(h, h * 2, h * 3), "in"),
    "sdpa_out": ("Attention", lambda h: F.scaled_dot_product_attention(h, h, h, is_causal=True), "out"),
    # a 2-D product without bias or activation is the plain op on the CPU (MatMulAct, the kernel, elsewhere); its
    # other operand requires grad, since PyTorch keeps h only for that operand's gradient (see
    # test_operand_kept_only_for_the_other_gradient below)
    "matmul": ("MatMul(Act)?", lambda h: h @ conch.ones(4, 2, dtype=h.dtype, requires_grad=True), "in"),
    "rmatmul": ("MatMul(Act)?", lambda h: conch.ones(2, 3, dtype=h.dtype, requires_grad=True) @ h, "in"),
    "linear": ("MatMulAct", lambda h: F.linear(h, conch.ones(2, 4, dtype=h.dtype)), "in"),
    "linear_relu_out": ("MatMulAct", lambda h: F.linear(h.T, conch.ones(3, 3, dtype=h.dtype), None, "relu"), "out"),
}


def _write(h, y, where):
    t = h if where == "in" else y
    if t.shape != (3, 4):  # the output of a (4, 3) linear: write through a (3, 4) view of it
        t = t.T
    t.mul_(2)


@pytest.mark.parametrize("name", sorted(RAISES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("create_graph", [False, True])
def test_write_into_saved_tensor_raises(name, dtype, create_graph):
    op, fn, where = RAISES[name]
    x = _leaf(dtype=dtype)
    h = x * 1
    y = fn(h)
    _write(h, y, where)
    with pytest.raises(RuntimeError, match=MSG.format(op)):
        if create_graph:
            conch.autograd.grad((y * conch.tensor(_w(y.shape))).sum(), x, create_graph=True)
        else:
            (y * conch.tensor(_w(y.shape))).sum().backward()


@pytest.mark.parametrize("name", ["log_softmax", "gelu", "layer_norm", "sdpa", "matmul", "sdpa_out"])
def test_write_raises_on_the_triton_path(name, monkeypatch):
    """The Triton kernels keep other residuals (attention: lse, not the probabilities): the check is the same."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    op, fn, where = RAISES[name]
    x = _leaf(dtype=np.float32)
    h = x * 1
    y = fn(h)
    _write(h, y, where)
    with pytest.raises(RuntimeError, match=MSG.format(op)):
        y.sum().backward()


def test_weight_written_under_no_grad_raises():
    """An optimizer step between forward and backward: the weight the matmul kept has changed."""
    x = _leaf((5, 4))
    w = _leaf((3, 4), seed=1)
    y = F.linear(x, w)
    with conch.no_grad():
        w -= 0.1
    with pytest.raises(RuntimeError, match="shape \\(4, 3\\) saved by MatMulAct is at version 1"):  # w.T
        y.sum().backward()


def test_retain_graph_second_backward_raises():
    x = _leaf()
    h = x * 1
    y = F.gelu(h)
    y.sum().backward(retain_graph=True)
    h.add_(1)
    with pytest.raises(RuntimeError, match=MSG.format("Activation")):
        y.sum().backward()


def test_guards_released_with_the_residuals():
    x = _leaf()
    y = F.layer_norm(x * 1, (4,))
    node = y.grad_fn
    assert len(node._guards) == 1
    y.sum().backward()
    assert node._guards == ()


# ---------------------------------------------------------------------------------------------- must not raise


# (forward of h (3, 4) and a constant c, its gradient with respect to h for upstream w, in NumPy)
_CONST_PARTNER = {
    "mul": (lambda h, c: h * c, lambda c, w: w * c, (3, 4)),
    "rmul": (lambda h, c: c * h, lambda c, w: w * c, (3, 4)),
    "matmul": (lambda h, c: h @ c, lambda c, w: w @ c.T, (4, 2)),
    "rmatmul": (lambda h, c: c @ h, lambda c, w: c.T @ w, (2, 3)),
}


@pytest.mark.parametrize("name", sorted(_CONST_PARTNER))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_operand_kept_only_for_the_other_gradient(name, dtype, device):
    """a * c and a @ c keep a only for c's gradient (PyTorch's mul/mm nodes): with a constant c, writing a in
    place before backward is no error, and a's gradient (w·c, w @ cᵀ) is right. The kernel's MatMulAct (a GPU,
    the interpreter) keeps both operands, so the products are checked on the CPU's plain path only."""
    if name.endswith("matmul") and device != "cpu":
        pytest.skip("the kernel's MatMulAct keeps both operands: only the CPU's plain MatMul keeps one")
    fwd, grad, cshape = _CONST_PARTNER[name]
    x = conch.tensor(_w((3, 4), seed=0).astype(dtype), device=device, requires_grad=True)
    c_np = _w(cshape, seed=3).astype(dtype)
    h = x * 1
    y = fwd(h, conch.tensor(c_np, device=device))
    h.mul_(2)
    w = _w(y.shape).astype(dtype)
    (y * conch.tensor(w, device=device)).sum().backward()
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(x.grad.cpu()._data, grad(c_np.astype(np.float64), w), rtol=tol, atol=tol)


@pytest.mark.parametrize("name", sorted(_CONST_PARTNER))
def test_operand_kept_only_for_the_other_gradient_as_pytorch(name):
    torch = pytest.importorskip("torch")
    fwd, _, cshape = _CONST_PARTNER[name]
    grads = []
    for lib in (conch, torch):
        x = lib.tensor(_w((3, 4), seed=0), requires_grad=True)
        h = x * 1
        y = fwd(h, lib.tensor(_w(cshape, seed=3)))
        h.mul_(2)
        y.backward(lib.tensor(_w(tuple(y.shape))))
        grads.append(np.asarray(x.grad.detach().numpy()))
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-12, atol=1e-12)


def _softmax_np(a):
    e = np.exp(a - a.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("write", ["add_", "setitem", "view", "no_grad"])
def test_cross_entropy_logits_written_afterwards_keep_the_right_gradient(reduction, dtype, write):
    """PyTorch's cross_entropy keeps log_softmax's output, not the logits: writing the logits is allowed."""
    x = _leaf(dtype=dtype)
    a = np.asarray(x._data, np.float64)
    t = np.array([0, 3, 1])
    h = x * 1
    loss = F.cross_entropy(h, conch.tensor(t), reduction=reduction)
    if write == "add_":
        h.add_(1)
    elif write == "setitem":
        h[1] = 100.0
    elif write == "view":
        h.view(12)[:5].mul_(-3)
    else:
        with conch.no_grad():
            h.zero_()
    w = _w(loss.shape)
    (loss * conch.tensor(w)).sum().backward()
    dl = _softmax_np(a) - np.eye(4)[t]  # d loss_i / d logits_i
    scale = np.broadcast_to(w, (3,)) / (3 if reduction == "mean" else 1)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(x.grad._data, dl * scale[:, None], rtol=tol, atol=tol)


def test_cross_entropy_logits_written_then_double_backward():
    """create_graph recomputes from the saved logits: the copy made before the write is what it sees."""
    x = _leaf()
    a = x._data.copy()
    h = x * 1
    loss = F.cross_entropy(h, conch.tensor([0, 3, 1]))
    h.add_(5)
    (g,) = conch.autograd.grad(loss, x, create_graph=True)
    np.testing.assert_allclose(g._data, (_softmax_np(a) - np.eye(4)[[0, 3, 1]]) / 3, atol=1e-12)


def test_cross_entropy_copy_on_write_registry_is_emptied():
    x = _leaf()
    h = x * 1
    loss = F.cross_entropy(h, conch.tensor([0, 3, 1]))
    assert _tensor_module._COW
    del loss
    gc.collect()
    assert not _tensor_module._COW


def test_cross_entropy_logits_unwritten_are_not_copied():
    x = _leaf()
    h = x * 1
    loss = F.cross_entropy(h, conch.tensor([0, 3, 1]))
    assert np.shares_memory(loss.grad_fn.res.logits, h._data)  # no copy unless something writes
    h.add_(1)
    assert not np.shares_memory(loss.grad_fn.res.logits, h._data)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_input_written_afterwards(name, dtype):
    """softmax keeps its output, as PyTorch's: its input may change, the gradient is the output's."""
    x = _leaf(dtype=dtype)
    h = x * 1
    y = getattr(F, name)(h, -1)
    h.mul_(3)
    w = _w(y.shape)
    (y * conch.tensor(w)).sum().backward()
    s = _softmax_np(np.asarray(x._data, np.float64))
    want = s * (w - (w * s).sum(-1, keepdims=True)) if name == "softmax" else w - s * w.sum(-1, keepdims=True)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(x.grad._data, want, rtol=tol, atol=tol)


def test_softmax_input_written_then_double_backward():
    x = _leaf()
    h = x * 1
    y = F.softmax(h, -1)
    h.mul_(3)
    w = conch.tensor(_w((3, 4)))
    (g,) = conch.autograd.grad((y * w).sum(), x, create_graph=True)
    s = _softmax_np(x._data)
    np.testing.assert_allclose(g._data, s * (w._data - (w._data * s).sum(-1, keepdims=True)), atol=1e-12)
    (g * g).sum().backward()  # differentiable through the saved output
    assert x.grad.shape == (3, 4)


@pytest.mark.parametrize(
    "name,fn",
    [
        ("add", lambda h: h + 1),
        ("sum", lambda h: h.sum(-1)),
        ("dropout", lambda h: F.dropout(h, 0.5)),
        ("relu_out_of_matmul_bias", None),
    ],
)
def test_write_into_unsaved_input_does_not_raise(name, fn):
    """An op that keeps nothing of its input: writing the input later changes no gradient."""
    x = _leaf()
    h = x * 1
    if fn is None:  # a bias is added, never kept: PyTorch's addmm saves only the two factors
        b = conch.zeros(2, dtype=x.dtype, requires_grad=True) * 1
        y = F.linear(x, conch.ones(2, 4, dtype=x.dtype), b)
        b.add_(1)
        y.sum().backward()
        np.testing.assert_allclose(x.grad._data, np.full((3, 4), 2.0))
        return
    y = fn(h)
    h.mul_(5)
    y.sum().backward()
    if name == "dropout":
        keep = y._data != 0
        np.testing.assert_allclose(x.grad._data, keep * 2.0)
    else:
        np.testing.assert_allclose(x.grad._data, np.ones((3, 4)))


@pytest.mark.parametrize("name", ["silu", "relu", "elu", "leaky_relu"])
@pytest.mark.parametrize("triton", [False, True])
def test_inplace_fused_activation_keeps_its_own_copy(name, triton, monkeypatch):
    """``F.silu(h, inplace=True)`` writes the input its own backward needs: the op gets a private copy of the
    old values (PyTorch's "original self"), so neither its guard nor its residuals see the write."""
    if triton:  # relu keeps its output on the kernel path, its input on the reference path
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = _leaf(dtype=np.float32)
    a = np.asarray(x._data, np.float64)
    h = x * 1
    out = getattr(F, name)(h, inplace=True)
    assert out is h
    w = _w((3, 4))
    (h * conch.tensor(w)).sum().backward()
    sig = 1 / (1 + np.exp(-a))
    deriv = {
        "silu": sig * (1 + a * (1 - sig)),
        "relu": (a > 0) * 1.0,
        "elu": np.where(a > 0, 1.0, np.exp(a)),
        "leaky_relu": np.where(a > 0, 1.0, 0.01),
    }[name]
    np.testing.assert_allclose(x.grad._data, w * deriv, rtol=1e-5, atol=1e-6)


def test_write_into_plain_op_saved_tensor_still_raises():
    """The plain ops' check, for reference: the fused one has the same message."""
    x = _leaf()
    h = x * 1
    y = h.exp()
    y.add_(1)
    with pytest.raises(RuntimeError, match="saved by Exp is at version 1; expected version 0"):
        y.sum().backward()
