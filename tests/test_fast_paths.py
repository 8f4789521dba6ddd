"""The CPU fast paths (binary dunders, reshape/permute, sum/mean, matmul/linear) give the general path's answers."""

import numpy as np
import pytest

import conch
import conch.nn as nn
from conch.autograd import gradcheck, gradgradcheck
from conch.fused import matmul as fmatmul


def _t(a, device, grad=False, dtype=conch.float64):
    return conch.tensor(np.asarray(a), dtype=dtype, device=device, requires_grad=grad)


def _np(t):
    return t.detach().cpu().numpy()


OPS = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "truediv": np.divide}


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("shapes", [((3, 5), (3, 5)), ((2, 1, 7), (4, 1)), ((), (3,)), ((5,), ())])
def test_binary_same_dtype_values_and_gradients(name, shapes, device):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(shapes[0]), rng.standard_normal(shapes[1]) + 3.0  # b away from 0 for division
    x, y = _t(a, device, True), _t(b, device, True)
    for fwd in (lambda p, q: getattr(p, f"__{name}__")(q), lambda p, q: getattr(q, f"__r{name}__")(p)):
        np.testing.assert_allclose(_np(fwd(x, y)), OPS[name](a, b), rtol=1e-14)
        assert gradcheck(fwd, (x, y))
    g = rng.standard_normal(np.broadcast_shapes(*shapes))
    fwd(x, y).backward(conch.tensor(g, dtype=conch.float64, device=device))  # a random upstream gradient
    assert x.grad.shape == x.shape and y.grad.shape == y.shape
    with conch.no_grad():  # nothing recorded: no node, the same values
        out = getattr(x, f"__{name}__")(y)
        assert out.grad_fn is None and not out.requires_grad
        np.testing.assert_allclose(_np(out), OPS[name](a, b), rtol=1e-14)


def test_binary_fast_path_keeps_the_errors_and_promotion(device):
    with pytest.raises(RuntimeError, match=r"The size of tensor a \(2, 3\) must match the size of tensor b \(2, 4\)"):
        conch.ones(2, 3, device=device) + conch.ones(2, 4, device=device)
    i = conch.tensor([3, 4], device=device)
    assert (i / i).dtype == conch.float32 and (i / i).tolist() == [1.0, 1.0]  # true division of ints is floating
    assert (i * i).dtype == conch.int64 and (i + i).tolist() == [6, 8]
    p = nn.Parameter(conch.ones(2, device=device))  # a Tensor subclass takes the fast path too
    assert (p + p).tolist() == [2.0, 2.0] and (p + p).grad_fn is not None


def test_binary_on_a_view_whose_base_changed_in_place(device):
    # a view takes the recording path, where its history is refreshed first
    base = conch.zeros(4, dtype=conch.float64, device=device)
    v = base[1:3]
    w = _t([1.0, 2.0, 3.0, 4.0], device, True)
    base.copy_(w * 2)
    y = v * v
    y.sum().backward()
    np.testing.assert_allclose(_np(w.grad), [0.0, 16.0, 24.0, 0.0])  # d(4w²)/dw = 8w on the viewed elements


def test_reshape_views_share_memory_and_copies_do_not(device):
    x = conch.arange(12.0, device=device)
    v = x.reshape(3, -1)
    assert v.shape == (3, 4)
    v[0, 0] = 100.0  # a view: writes through
    assert x[0].item() == 100.0
    t = conch.arange(6.0, device=device).reshape(2, 3).t()
    c = t.reshape(6)  # a transposed tensor reshapes by copying: not a view
    c[0] = -1.0
    assert t[0, 0].item() == 0.0
    for bad, msg in (((-1, -1), "only one dimension can be inferred"), ((5, -1), "is invalid for input of size 12"),
                     ((-2, -6), "invalid shape dimension -2"), ((5,), "is invalid for input of size 12")):  # fmt: skip
        with pytest.raises(RuntimeError, match=msg):
            x.reshape(*bad)
    assert x.reshape(np.int64(2), 6).shape == (2, 6)  # NumPy integers are sizes too
    with pytest.raises(TypeError):
        x.reshape(2.0, 6)


def test_reshape_permute_gradients(device):
    x = _t(np.random.default_rng(1).standard_normal((2, 3, 5)), device, True)
    assert gradcheck(lambda t: t.reshape(5, -1).permute(1, 0).reshape(-1) * 2, (x,))
    assert gradgradcheck(lambda t: (t.transpose(0, 2) * t.transpose(0, 2)).reshape(15, 2), (x,))


def test_sum_mean_fast_path_matches_numpy(device):
    a = np.random.default_rng(2).standard_normal((3, 4, 5))
    x = _t(a, device)
    np.testing.assert_allclose(_np(x.sum()), a.sum(), rtol=1e-13)
    np.testing.assert_allclose(_np(x.mean((0, 2), keepdim=True)), a.mean((0, 2), keepdims=True), rtol=1e-13)
    f = _t(a, device, dtype=conch.float32)
    assert f.mean().dtype == conch.float32  # the count divides in the accumulation dtype, as NumPy's mean
    np.testing.assert_array_equal(_np(f.mean(1)), a.astype(np.float32).mean(1))


@pytest.mark.parametrize("shape_a", [(4, 6), (2, 3, 6)])
@pytest.mark.parametrize("act", [None, "relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_fast_path_against_float64_numpy(shape_a, act, bias, device):
    rng = np.random.default_rng(3)
    a, w, b = rng.standard_normal(shape_a), rng.standard_normal((5, 6)), rng.standard_normal(5)
    x, wt, bt = _t(a, device, True), _t(w, device, True), _t(b, device, True) if bias else None
    z = a @ w.T + (b if bias else 0)
    ref = {None: z, "relu": np.maximum(z, 0), "tanh": np.tanh(z), "sigmoid": 1 / (1 + np.exp(-z))}[act]
    out = fmatmul.linear(x, wt, bt, act)
    np.testing.assert_allclose(_np(out), ref, rtol=1e-12, atol=1e-12)
    ins = (x, wt) + ((bt,) if bias else ())
    assert gradcheck(lambda *t: fmatmul.linear(t[0], t[1], t[2] if bias else None, act), ins)
    assert gradgradcheck(lambda *t: fmatmul.linear(t[0], t[1], t[2] if bias else None, act), ins)
    out.backward(conch.tensor(rng.standard_normal(out.shape), dtype=conch.float64, device=device))
    assert wt.grad.is_contiguous()  # weight's own layout


def test_matmul_fast_path_gradients_and_errors(device):
    rng = np.random.default_rng(4)
    x, y = _t(rng.standard_normal((3, 7)), device, True), _t(rng.standard_normal((7, 2)), device, True)
    np.testing.assert_allclose(_np(x @ y), _np(x) @ _np(y), rtol=1e-13)
    assert gradcheck(lambda p, q: p @ q, (x, y)) and gradgradcheck(lambda p, q: p @ q, (x, y))
    (x @ y).sum().backward()
    (x @ y).sum().backward()  # a fresh graph each time: accumulates
    np.testing.assert_allclose(_np(x.grad), 2 * np.ones((3, 2)) @ _np(y).T, rtol=1e-13)
    z = x @ y
    z.sum().backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        z.sum().backward()
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        x @ x
    with pytest.raises(RuntimeError, match="same dtype"):
        x @ y.float()


def test_fused_linear_output_written_in_place_refuses_backward(device):
    lin = nn.Linear(3, 4).to(device)
    for act in ("relu", "tanh", "sigmoid"):
        out = fmatmul.linear(conch.randn(2, 3, device=device), lin.weight, lin.bias, act)
        out.data.add_(0.0)  # a write through .data bumps the shared version counter
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            out.sum().backward()


def test_relu_saves_its_output_as_pytorch_does(device):
    x = _t([-1.0, 2.0, 0.0, 3.0], device, True)
    y = x.relu()
    y.sum().backward()
    np.testing.assert_array_equal(_np(x.grad), [0.0, 1.0, 0.0, 1.0])
    y2 = x.relu()
    y2.data.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y2.sum().backward()
    g = _t([np.nan, 1.0, np.nan, 2.0], device)
    x.grad = None
    conch.ops.Relu.apply(x).backward(g)  # the plain op: NaN upstream where the input is <= 0 is masked to 0
    np.testing.assert_array_equal(_np(x.grad), [0.0, 1.0, 0.0, 2.0])


def test_relu_output_write_matches_pytorch():
    torch = pytest.importorskip("torch")
    for lib in (conch, torch):
        x = lib.tensor([-1.0, 2.0], requires_grad=True)
        y = x.relu()
        with lib.no_grad():
            y.mul_(2.0)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y.sum().backward()


def test_fast_paths_agree_with_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    a, b, w = (rng.standard_normal(s).astype(np.float32) for s in ((4, 6), (4, 6), (6, 3)))
    res = []
    for lib in (conch, torch):
        x, y, m = (lib.tensor(v, requires_grad=True) for v in (a, b, w))
        out = ((x + y) * y - x / 3.0).relu() @ m
        loss = out.reshape(-1).tanh().sum() + out.mean(dim=np.int64(0)).sum() + x.transpose(0, 1).sum(1).mean()
        loss.backward()
        res.append([loss.detach().numpy(), x.grad.numpy(), y.grad.numpy(), m.grad.numpy()])
    for c, t in zip(*res):
        np.testing.assert_allclose(c, t, rtol=2e-5, atol=2e-6)


# ---------------------------------------------------------------- the recording forward's fast paths (issue 16)

_SPECIAL = [-0.0, 0.0, np.nan, np.inf, -np.inf, 1e-30, -1e-30, 30.0, -30.0, 88.0, -750.0]


@pytest.mark.parametrize("name", ["relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activation_fast_path_is_bit_identical_to_the_kernel_path(name, dtype, device):
    """The method's plain op and the kernel route (fused_act._general: the activations kernel's reference path
    on the CPU) give the same bits, signed zeros and NaN included, and the same gradient up to rounding (sigmoid's
    g·y·(1 - y) is grouped differently there: one float32 ulp)."""
    from conch.fused import activations as fact

    a = np.concatenate([np.random.default_rng(3).standard_normal(29) * 4, _SPECIAL]).astype(dtype)
    x, k = _t(a, device, True, dtype=dtype), _t(a, device, True, dtype=dtype)
    y, yk = getattr(x, name)(), fact._general(k, name)
    plain = name.capitalize() if device == "cpu" else "Activation"  # a GPU array always takes the kernel
    assert (type(y.grad_fn).__name__, type(yk.grad_fn).__name__) == (plain, "Activation")
    assert _np(y).tobytes() == _np(yk).tobytes()
    g = np.random.default_rng(4).standard_normal(a.shape).astype(dtype)
    y.backward(_t(g, device, dtype=dtype))
    yk.backward(_t(g, device, dtype=dtype))
    tol = 3e-7 if dtype == np.float32 else 1e-15
    np.testing.assert_allclose(_np(x.grad), _np(k.grad), rtol=tol, atol=tol)


@pytest.mark.parametrize("name", ["relu", "tanh", "sigmoid"])
def test_activation_fast_path_follows_the_dispatch_environment(name, monkeypatch):
    """TRITON_INTERPRET=1, set after import, sends the next call to the kernel (under the interpreter)."""
    x = conch.tensor([[-1.0, 0.5], [2.0, -3.0]], requires_grad=True)
    assert type(getattr(x, name)().grad_fn).__name__ == name.capitalize()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert type(getattr(x, name)().grad_fn).__name__ == "Activation"


def test_recording_fast_paths_on_a_view_whose_base_changed_in_place(device):
    """A view of a constant base, written in place from a tensor that requires grad: every fast path (scalar
    arithmetic, activations, reshape, transpose, sum, mean, matmul) refreshes its history before recording."""
    fns = {
        "add_scalar": lambda v: (v + 1.5) * (v - 2.0) * (3.0 - v) / 4.0,
        "activations": lambda v: v.relu() + v.tanh() + v.sigmoid(),
        "reshape": lambda v: v.reshape(2, 2)[1] * 3.0,
        "transpose": lambda v: v.reshape(2, 2).transpose(0, 1) * 3.0,
        "sum_mean": lambda v: v.sum() * 2.0 + v.mean(),
        "matmul": lambda v: v.reshape(2, 2) @ conch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=v.dtype, device=v.device),
    }
    rng = np.random.default_rng(6)
    for name, fn in fns.items():
        w0 = rng.standard_normal(4)
        g = rng.standard_normal(fn(_t(w0, device)).shape)

        def f(w, fn=fn):
            base = conch.zeros(6, dtype=conch.float64, device=device)
            v = base[1:5]  # a view of a tensor that requires no grad
            base[1:5] = w * 2  # its history now leads to w
            return fn(v)

        w = _t(w0, device, True)
        f(w).backward(_t(g, device))
        v = _t(w0 * 2, device, True)  # the values the view holds, as a leaf
        fn(v).backward(_t(g, device))
        np.testing.assert_allclose(_np(w.grad), 2 * _np(v.grad), rtol=1e-12, atol=1e-12, err_msg=name)
        assert gradcheck(f, (_t(w0, device, True),)), name


def test_no_grad_views_share_the_version_counter(device):
    x = _t(np.arange(6.0), device, True)
    with conch.no_grad():
        r, t = x.reshape(2, 3), x.reshape(2, 3).transpose(0, 1)
    assert r._version is x._version and t._version is x._version and r.grad_fn is None and not r.requires_grad
    with conch.no_grad():
        r[0, 0] = 7.0  # writes x's memory and bumps the shared counter
    assert x._version[0] == 1 and _np(x)[0] == 7.0 and _np(t)[0, 0] == 7.0
    h = x * 1
    with conch.no_grad():
        hv = h.reshape(3, 2)
    with pytest.raises(RuntimeError, match="created in no_grad mode"):
        hv.mul_(2.0)  # PyTorch's rule: a no_grad view of a tensor that requires grad is not written with grad on
