"""Issue #13: which ops alias their input (views) and which copy, as PyTorch; empty and 0-d tensors."""

import numpy as np
import pytest

import conch
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
