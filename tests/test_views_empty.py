"""Issue #13: which ops alias their input (views) and which copy, as PyTorch; empty and 0-d tensors."""

import numpy as np
import pytest

import conch
import conch.nn.functional as F
from conch.autograd import gradcheck

OVERLAP = "more than one element of the written-to tensor refers to a single memory location"


def _x(*shape, seed=0):
    rng = np.random.default_rng(seed)
    return conch.tensor(rng.standard_normal(shape), requires_grad=True)


# ---------------------------------------------------------------- views: integer indexing writes through


def test_integer_index_of_1d_is_a_view():
    t = conch.zeros(3)
    t[1].add_(1)
    assert t.tolist() == [0.0, 1.0, 0.0]
    e = t[-1]
    e.fill_(5)
    assert t.tolist() == [0.0, 1.0, 5.0]
    assert e.shape == () and e._base is t


def test_integer_index_shares_the_version_counter():
    t = conch.zeros(2, 3)
    v = t[1, 2]
    v += 2
    assert t._version[0] == v._version[0] == 1
    np.testing.assert_array_equal(t.numpy(), [[0, 0, 0], [0, 0, 2]])


def test_integer_index_in_place_rewrites_the_base_history():
    # h[1] is a view: the in-place op on it becomes part of h's history (CopySlices), as PyTorch
    def f(x):
        h = x * 2
        h[1].mul_(x[0])
        h[0, ...].add_(1)
        return h

    x = _x(3)
    h = f(x)
    xn = x.detach().numpy()
    np.testing.assert_allclose(h.detach().numpy(), [2 * xn[0] + 1, 2 * xn[1] * xn[0], 2 * xn[2]])
    h.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [2 + 2 * xn[1], 2 * xn[0], 2])
    assert gradcheck(f, (_x(3),))


def test_integer_index_view_of_2d_gradcheck():
    def f(x):
        h = x * 1
        row = h[1]
        row[0].mul_(3.0)
        return h * 2

    assert gradcheck(f, (_x(2, 3),))


# ---------------------------------------------------------------- copies: flip, repeat, tile


def test_flip_copies():
    x = conch.arange(3.0)
    f = x.flip(0)
    f.add_(1)
    assert x.tolist() == [0.0, 1.0, 2.0] and f.tolist() == [3.0, 2.0, 1.0]
    x.mul_(10)
    assert f.tolist() == [3.0, 2.0, 1.0]


def test_flip_values_and_gradient():
    a = np.arange(24.0).reshape(2, 3, 4)
    x = conch.tensor(a)
    np.testing.assert_array_equal(x.flip((0, -1)).numpy(), np.flip(a, (0, 2)))
    np.testing.assert_array_equal(conch.flip(x, 1).numpy(), np.flip(a, 1))
    assert gradcheck(lambda t: t.flip((0, 2)) * conch.arange(4.0, dtype=conch.float64), (_x(2, 3, 4),))
    z = conch.tensor(2.0)
    assert z.flip(()).item() == 2.0 and z.flip([]).shape == ()


@pytest.mark.parametrize("fn", [lambda t: t.repeat(2, 1), lambda t: t.tile(2, 1), lambda t: t.repeat(1, 1)])
def test_repeat_and_tile_copy(fn):
    x = conch.ones(1, 3)
    r = fn(x)
    x.add_(1)  # a later write to the input leaves the result alone
    np.testing.assert_array_equal(r.numpy(), np.ones(r.shape))
    r.add_(1)  # and the result is writable
    np.testing.assert_array_equal(r.numpy(), np.full(r.shape, 2.0))
    assert x.tolist() == [[2.0, 2.0, 2.0]]


def test_repeat_gradient():
    assert gradcheck(lambda t: t.repeat(2, 1, 3), (_x(1, 2),))
    assert gradcheck(lambda t: t.tile(3), (_x(2, 1),))


# ---------------------------------------------------------------- expand: a view, overlapping writes refused


def test_expand_in_place_raises_pytorch_error():
    e = conch.ones(1, 3).expand(2, 3)
    for write in (lambda: e.add_(1), lambda: e.mul_(2), lambda: e.copy_(conch.zeros(2, 3)),
                  lambda: e.clamp_(0, 0.5), lambda: e.__setitem__(slice(None), conch.zeros(3))):  # fmt: skip
        with pytest.raises(RuntimeError, match=OVERLAP):
            write()
    assert e.tolist() == [[1.0] * 3] * 2


def test_expand_in_place_raises_in_graph():
    x = _x(1, 3)
    e = (x * 1).expand(2, 3)
    with pytest.raises(RuntimeError, match=OVERLAP):
        e.add_(1)


def test_expand_is_a_view_and_non_overlapping_writes_go_through():
    x = conch.zeros(1, 3)
    e = x.expand(2, 3)
    x.add_(1)
    assert e.tolist() == [[1.0] * 3] * 2
    e[0] = conch.tensor([1.0, 2.0, 3.0])  # e[0] has no repeated element: writes x, as PyTorch
    assert x.tolist() == [[1.0, 2.0, 3.0]] and e.tolist() == [[1.0, 2.0, 3.0]] * 2
    e.fill_(4)  # filling is idempotent: PyTorch allows it
    assert x.tolist() == [[4.0] * 3]


def test_empty_expanded_view_can_be_written():
    e = conch.ones(1, 0).expand(3, 0)
    e.add_(1)
    assert e.shape == (3, 0)


# ---------------------------------------------------------------- empty tensors: forward and backward


def _grads(fn, *shapes, seed=0):
    """fn on float64 leaves of ``shapes``; backward of sum(); returns (output, leaves)."""
    xs = [_x(*s, seed=seed + i) for i, s in enumerate(shapes)]
    y = fn(*xs)
    y = y[0] if isinstance(y, tuple) else y
    y.sum().backward()
    for x in xs:
        assert x.grad is not None and x.grad.shape == x.shape
    return y, xs


@pytest.mark.parametrize(
    "fn, shapes, out_shape",
    [
        (lambda x, w, b: F.layer_norm(x, (4,), w, b), [(0, 4), (4,), (4,)], (0, 4)),
        (lambda x, w, b: F.layer_norm(x, (0,), w, b), [(2, 0), (0,), (0,)], (2, 0)),
        (lambda x, w: F.rms_norm(x, (4,), w), [(2, 0, 4), (4,)], (2, 0, 4)),
        (lambda x, w, b: F.group_norm(x, 2, w, b), [(0, 4, 3), (4,), (4,)], (0, 4, 3)),
        (lambda x, w, b: F.group_norm(x, 2, w, b), [(2, 4, 0), (4,), (4,)], (2, 4, 0)),
        (lambda x: F.instance_norm(x), [(0, 4, 3)], (0, 4, 3)),
        (lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), [(0, 4), (4,), (4,)], (0, 4)),
        (
            lambda x: F.batch_norm(x, conch.zeros(4, dtype=conch.float64), conch.ones(4, dtype=conch.float64)),
            [(0, 4, 2)],
            (0, 4, 2),
        ),  # fmt: skip
        (lambda x: F.glu(x), [(0, 4)], (0, 2)),
        (lambda a: a.amax(1), [(0, 3)], (0,)),
        (lambda a: a.amin(1, keepdim=True), [(0, 3)], (0, 1)),
        (lambda a: a.max(1), [(0, 3)], (0,)),
        (lambda a: a.min(-1), [(2, 0, 3)], (2, 0)),
        (lambda a: a.median(1), [(0, 3)], (0,)),
        (lambda a: a.logsumexp(1), [(0, 3)], (0,)),
        (lambda a: a.softmax(0), [(0, 3)], (0, 3)),
        (lambda a: a.log_softmax(-1), [(3, 0)], (3, 0)),
        (lambda q, k, v: F.scaled_dot_product_attention(q, k, v), [(0, 2, 4), (0, 2, 4), (0, 2, 4)], (0, 2, 4)),
        (lambda q, k, v: F.scaled_dot_product_attention(q, k, v), [(1, 0, 4), (1, 0, 4), (1, 0, 4)], (1, 0, 4)),
    ],
)
def test_empty_forward_and_backward(fn, shapes, out_shape):
    y, xs = _grads(fn, *shapes)
    assert y.shape == out_shape
    for x in xs:  # every gradient is zero (or empty): nothing flows through an empty result
        np.testing.assert_array_equal(x.grad.numpy(), np.zeros(x.shape))


def test_batch_norm_empty_leaves_running_stats():
    rm, rv = conch.full((4,), 0.5), conch.full((4,), 2.0)
    y = F.batch_norm(conch.zeros(0, 4), rm, rv, training=True)
    assert y.shape == (0, 4) and rm.tolist() == [0.5] * 4 and rv.tolist() == [2.0] * 4
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        F.batch_norm(conch.zeros(1, 4), None, None, training=True)  # exactly one value: PyTorch refuses


def test_matmul_and_linear_with_k_zero():
    y, (a, b) = _grads(lambda a, b: a @ b, (3, 0), (0, 2))
    np.testing.assert_array_equal(y.detach().numpy(), np.zeros((3, 2)))
    y, (x, w, bias) = _grads(lambda x, w, b: F.linear(x, w, b), (3, 0), (2, 0), (2,))
    np.testing.assert_allclose(y.detach().numpy(), np.broadcast_to(bias.detach().numpy(), (3, 2)))
    np.testing.assert_array_equal(bias.grad.numpy(), [3.0, 3.0])  # d sum / d bias: one per row
    _, (x, w, bias) = _grads(lambda x, w, b: F.linear(x, w, b), (3, 4), (0, 4), (0,))  # N = 0: empty bias grad
    np.testing.assert_array_equal(x.grad.numpy(), np.zeros((3, 4)))


def test_sdpa_with_no_keys_gives_zeros():
    # S = 0: softmax over an empty row, times an empty V: zeros (PyTorch's math path)
    y, (q, k, v) = _grads(lambda q, k, v: F.scaled_dot_product_attention(q, k, v), (1, 2, 4), (1, 0, 4), (1, 0, 4))
    assert y.shape == (1, 2, 4)
    np.testing.assert_array_equal(y.detach().numpy(), np.zeros((1, 2, 4)))


def test_empty_reductions_over_a_size_zero_dim():
    x = conch.zeros(0, 3)
    for fn, name in ((lambda: x.amax(0), "amax"), (lambda: x.max(0), "max"), (lambda: x.argmax(0), "argmax"),
                     (lambda: x.amin(0), "amin"), (lambda: x.median(0), "median")):  # fmt: skip
        with pytest.raises(IndexError, match=f"{name}\\(\\): Expected reduction dim 0 to have non-zero size"):
            fn()
    with pytest.raises(RuntimeError, match="Expected reduction dim to be specified"):
        x.amax()
    assert x.argmax(1).shape == (0,) and x.argmin(1, keepdim=True).shape == (0, 1)
    assert x.argmax(1).dtype == np.int64
    y, (t,) = _grads(lambda a: a.logsumexp(0), (0, 3))
    np.testing.assert_array_equal(y.detach().numpy(), np.full(3, -np.inf))  # log of an empty sum
    assert conch.zeros(2, 0).logsumexp((0, 1)).item() == -np.inf
    assert np.isnan(conch.zeros(0, 3).median().item())  # PyTorch: NaN


def test_split_and_chunk_of_empty_dim():
    x = conch.zeros(0, 2)
    parts = x.split(1)
    assert len(parts) == 1 and parts[0].shape == (0, 2)  # one empty chunk, as PyTorch
    parts = x.chunk(3)
    assert [p.shape for p in parts] == [(0, 2)] * 3  # PyTorch: `chunks` empty parts
    assert [p.shape for p in conch.zeros(3, 0).chunk(2, 1)] == [(3, 0)] * 2
    assert [p.shape for p in conch.arange(5.0).chunk(2)] == [(3,), (2,)]
    with pytest.raises(RuntimeError, match="greater than 0"):
        x.chunk(0)
    y, (t,) = _grads(lambda a: conch.cat([p * 2 for p in a.chunk(2)]), (0, 2))
    assert y.shape == (0, 2)


@pytest.mark.parametrize("op", ["mul_", "add_", "clamp_", "zero_", "slice"])
def test_in_place_on_empty_non_leaf(op):
    x = _x(0, 3)
    h = x * 2
    if op == "clamp_":
        h.clamp_(0, 1)
    elif op == "zero_":
        h.zero_()
    elif op == "slice":
        h[:, 1:].mul_(3)
    else:
        getattr(h, op)(3.0)
    (h * 1).sum().backward()
    assert x.grad.shape == (0, 3)


# ---------------------------------------------------------------- 0-d tensors


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_zero_dim(approximate):
    from math import erf, exp, pi, sqrt, tanh

    for dtype in (conch.float32, conch.float64):
        x = conch.tensor(0.7, dtype=dtype, requires_grad=True)
        y = F.gelu(x, approximate=approximate)
        y.backward()
        if approximate == "none":
            cdf = 0.5 * (1 + erf(0.7 / sqrt(2)))
            ref, dref = 0.7 * cdf, cdf + 0.7 * exp(-0.245) / sqrt(2 * pi)  # x Φ(x); Φ(x) + x φ(x)
        else:
            u = sqrt(2 / pi) * (0.7 + 0.044715 * 0.7**3)
            ref = 0.5 * 0.7 * (1 + tanh(u))
            dref = 0.5 * (1 + tanh(u)) + 0.5 * 0.7 * (1 - tanh(u) ** 2) * sqrt(2 / pi) * (1 + 3 * 0.044715 * 0.49)
        assert y.shape == () and x.grad.shape == ()
        np.testing.assert_allclose(y.item(), ref, rtol=1e-6)
        np.testing.assert_allclose(x.grad.item(), dref, rtol=1e-6)
    assert gradcheck(lambda t: F.gelu(t, approximate=approximate), (conch.tensor(0.3, dtype=conch.float64,
                                                                                  requires_grad=True),))  # fmt: skip


@pytest.mark.parametrize(
    "fn",
    [
        lambda t: t.cumsum(0),
        lambda t: conch.cumsum(t, -1),
        lambda t: t.cumprod(0),
        lambda t: t.kthvalue(1, 0).values,
        lambda t: t.kthvalue(1, 0, keepdim=True).values,
        lambda t: t.median(0).values,
        lambda t: t.median(-1, keepdim=True).values,
    ],
)
def test_zero_dim_keeps_shape(fn):
    t = conch.tensor(1.5, dtype=conch.float64, requires_grad=True)
    y = fn(t)
    assert y.shape == () and y.item() == 1.5
    y.backward()
    assert t.grad.shape == () and t.grad.item() == 1.0
    assert gradcheck(fn, (conch.tensor(0.4, dtype=conch.float64, requires_grad=True),))
    assert conch.tensor(3).cumsum(0).shape == ()
    assert conch.tensor(2.0).median(0, keepdim=True).indices.shape == ()


def test_nonzero_of_zero_dim():
    assert conch.tensor(2.0).nonzero().shape == (1, 0)
    assert conch.tensor(0.0).nonzero().shape == (0, 0)
    assert conch.argwhere(conch.tensor(True)).shape == (1, 0)
    assert conch.tensor(2.0).nonzero().dtype == np.int64
    (i,) = conch.tensor(2.0).nonzero(as_tuple=True)  # as_tuple treats a 0-d tensor as 1-D (PyTorch's rule)
    assert i.tolist() == [0]
