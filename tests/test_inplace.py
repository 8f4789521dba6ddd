"""In-place ops in and out of the graph: values seen through views, gradients by finite differences, errors."""

import numpy as np
import pytest

import conch
import conch.nn.functional as F
from conch.autograd import gradcheck


def _x(*shape, seed=0):
    rng = np.random.default_rng(seed)
    return conch.tensor(rng.standard_normal(shape), requires_grad=True)


# Each case: (function of the module m, conch or torch, and two tensors; the same maths on float64 NumPy arrays).
# tests/test_torch_parity.py runs the same functions against PyTorch. Every function writes into views or
# slices of a tensor that is in the graph, so the gradient only comes out right if the base's history is
# rewritten and every view (also those taken before the write) re-derives its grad_fn.
def _views(m, x, w):
    h = x * 2
    early = h[1]
    h[0] += w[0]
    h.reshape(-1)[2:4] *= w[1, :2]
    h.T[1:].mul_(x[:, :1].T * 0.5 + 1.0)
    h[:, 2].clamp_(-0.5, 0.5)
    return h, early * 3


def _views_np(x, w):
    h = x * 2
    h[0] += w[0]
    h.reshape(-1)[2:4] *= w[1, :2]
    h.T[1:] *= x[:, :1].T * 0.5 + 1.0
    h[:, 2] = np.clip(h[:, 2], -0.5, 0.5)
    return h, h[1] * 3


def _fills(m, x, w):
    h = x.sin()
    h[0].zero_()
    h[1, ::2].fill_(w[0, 0])
    h[:, 1].copy_(w[1, 1:])
    h.masked_fill_(x > 1.0, 0.25)
    h[m.tensor([2, 0]), m.tensor([1, 3])] = w[0, :2] * 4
    buf = m.zeros(4, dtype=x.dtype)
    buf[1:3] += w[1, :2]  # a tensor outside the graph joins it through an in-place write
    return h, buf


def _fills_np(x, w):
    h = np.sin(x)
    h[0] = 0
    h[1, ::2] = w[0, 0]
    h[:, 1] = w[1, 1:]
    h[x > 1.0] = 0.25
    h[[2, 0], [1, 3]] = w[0, :2] * 4
    buf = np.zeros(4)
    buf[1:3] += w[1, :2]
    return h, buf


def _chained_and_split(m, x, w):
    h = x * w[:, :1].sum()
    # PyTorch refuses in-place writes into split()'s outputs; conch allows them (each part is a plain view)
    a, b = h.split([1, 2]) if m is conch else (h[:1], h[1:])
    b[1:, 1:].mul_(w[0, 1:])  # a view of a view: the write reaches h through both
    a.add_(b[0])
    t = h.permute(1, 0)[::2]
    t -= 1
    return h, a


def _chained_and_split_np(x, w):
    h = x * w[:, :1].sum()
    h[2:, 1:] *= w[0, 1:]
    h[0] += h[1]
    h.T[::2] -= 1
    return h, h[:1]


def _in_place_arith(m, x, w):
    h = x * 1.5
    h *= x  # the op that reads the old h needs a private copy of it (PyTorch's "original self")
    h /= w[0, :4] + 3.0
    h -= h.mean()
    g = x * 1.0
    g.add_(w[1, :4], alpha=2.0)
    return h, g.sub_(x * x, alpha=0.5)


def _in_place_arith_np(x, w):
    h = x * 1.5 * x
    h = h / (w[0, :4] + 3.0)
    h = h - h.mean()
    return h, x + 2.0 * w[1, :4] - 0.5 * x * x


CASES = [(_views, _views_np), (_fills, _fills_np), (_chained_and_split, _chained_and_split_np),
         (_in_place_arith, _in_place_arith_np)]  # fmt: skip


@pytest.mark.parametrize("fn,ref", CASES, ids=lambda c: getattr(c, "__name__", ""))
def test_in_place_values_match_numpy(fn, ref):
    x, w = _x(3, 4), _x(2, 4, seed=1)
    got = fn(conch, x, w)
    want = ref(x.detach().numpy().copy(), w.detach().numpy().copy())
    for g, e in zip(got, want):
        np.testing.assert_allclose(g.detach().numpy(), e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fn,ref", CASES, ids=lambda c: getattr(c, "__name__", ""))
def test_in_place_gradients_by_finite_differences(fn, ref):
    x, w = _x(3, 4), _x(2, 4, seed=1)
    assert gradcheck(lambda x, w: fn(conch, x, w), (x, w))


def test_views_see_in_place_writes_to_their_base_in_graph():
    h = _x(2, 3) * 1.0
    v, t = h[1], h.T
    h.mul_(3)
    np.testing.assert_array_equal(v.detach().numpy(), h.detach().numpy()[1])
    np.testing.assert_array_equal(t.detach().numpy(), h.detach().numpy().T)
    assert v.grad_fn is not None and "GetItem" in repr(v)


@pytest.mark.parametrize("name", ["relu", "silu", "leaky_relu", "elu", "relu6", "hardtanh"])
def test_functional_inplace_flag_writes_into_the_input(name):
    x = _x(3, 5)

    def f(x):
        h = x * 1.5
        out = getattr(F, name)(h, inplace=True)
        assert out is h
        return h

    want = getattr(F, name)(x * 1.5).detach().numpy()
    np.testing.assert_allclose(f(x).detach().numpy(), want, rtol=0, atol=0)
    assert gradcheck(f, (x,))


def test_inplace_modules_and_dropout():
    x = _x(4, 6)
    h = x * 1.0
    assert conch.nn.ReLU(inplace=True)(h) is h and float(h.min()) >= 0
    conch.manual_seed(3)
    d = conch.nn.Dropout(0.5, inplace=True)
    h2 = x * 1.0
    out = d(h2)
    assert out is h2
    kept = h2.detach().numpy() != 0
    np.testing.assert_allclose(h2.detach().numpy()[kept], 2 * x.detach().numpy()[kept])
    h2.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2.0 * kept)


def test_in_place_under_no_grad_and_without_graph_stays_a_plain_write():
    y = conch.zeros(2, 3)
    v = y[:, 1]
    v += 5
    y[0, 0] = 7.0
    assert y.tolist() == [[7.0, 5.0, 0.0], [0.0, 5.0, 0.0]] and not y.requires_grad
    h = _x(2, 3) * 2
    with conch.no_grad():
        h[0].zero_()
    assert h.grad_fn is not None and h.detach().numpy()[0].tolist() == [0.0, 0.0, 0.0]


def test_values_saved_before_an_in_place_write_refuse_to_backward():
    h = _x(3) * 1.0
    p = h * h  # saves h
    h.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        p.sum().backward()
    e = _x(3).exp()  # saves its output, which the write below changes (PyTorch refuses this too)
    e.mul_(2)
    with pytest.raises(RuntimeError, match="saved by Exp"):
        e.sum().backward()


def test_zero_fill_copy_cut_the_old_history():
    x = _x(3)
    h = x * 2
    h.zero_()
    h.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.zeros(3))  # PyTorch: zeros, not None
    x.grad = None
    c = _x(3, seed=2)
    h = x * 2
    h.copy_(c * 3)
    h.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.zeros(3))
    np.testing.assert_array_equal(c.grad.numpy(), np.full(3, 3.0))


def test_errors_name_the_problem():
    x = _x(2, 3)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        x.mul_(2)
    with pytest.raises(RuntimeError, match="view of a leaf Variable"):
        x[0] += 1
    with pytest.raises(RuntimeError, match="leaf Variable"):
        x[0] = 1.0
    h = x * 2
    with conch.no_grad():
        v = h[0]
    with pytest.raises(RuntimeError, match="no_grad mode"):
        v.mul_(2)
    with pytest.raises(RuntimeError, match="single memory location"):
        h[:1].expand(4, 3).add_(1)
    with pytest.raises(RuntimeError, match=r"shape \(2, 3\).*\(3, 3\)|\(3, 3\).*\(2, 3\)"):
        h.copy_(conch.ones(3, 3))
    with pytest.raises(RuntimeError, match="can't be cast"):
        conch.zeros(3, dtype=conch.int64).add_(_x(3))
    with pytest.raises(RuntimeError, match="0-dimension"):
        h.fill_(conch.ones(2))
