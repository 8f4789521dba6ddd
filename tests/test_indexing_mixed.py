"""Indexing that mixes ints, None, Ellipsis, slices, bools, lists/tuples and integer/bool tensors (issue #14).

PyTorch's rule is NumPy's with one difference: integers are applied first, as ``select`` (so ``x[0, :, [0, 1]]``
is ``x[0][:, [0, 1]]``, shape (n, 2), where NumPy would move the broadcast dim first). The reference below is
NumPy itself: directly when the index mixes no integer with an index array, else in those two steps. Random
index tuples check getitem, setitem and the gradient (a scatter-add of the upstream gradient).
"""

import random
import warnings

import numpy as np
import pytest

import conch

SHAPE = (4, 5, 3, 2)


def _random_index(rng):
    """A random index tuple over SHAPE: ("T", array) entries become tensors (on the test device), the rest stay."""
    items, d, ellipsis = [], 0, False
    for _ in range(rng.randrange(1, 5)):
        n = SHAPE[min(d, len(SHAPE) - 1)]
        k = rng.randrange(11)
        if k == 0:
            it = rng.randrange(-n, n)
        elif k == 1:
            it = None
        elif k == 2:
            it = slice(rng.choice([None, 0, 1]), rng.choice([None, n, -1]), rng.choice([None, 1, 2]))
        elif k == 3:
            it = [rng.randrange(-n, n) for _ in range(rng.randrange(1, 4))]
        elif k == 4:
            it = tuple(rng.randrange(n) for _ in range(2))
        elif k == 5:
            it = ("T", np.array([rng.randrange(-n, n) for _ in range(2)]))
        elif k == 6:
            it = ("T", np.array([rng.random() < 0.5 for _ in range(n)]))  # a boolean mask over one dim
        elif k == 7:
            it = ("T", np.array([[rng.randrange(n)], [rng.randrange(n)]]))  # broadcasts against the others
        elif k == 8:
            it = ("T", np.array(rng.randrange(n)))  # a 0-d integer tensor selects, as an int does
        elif k == 9:
            it = rng.choice([True, False])
        else:
            if ellipsis:
                continue
            it, ellipsis = Ellipsis, True
        items.append(it)
        if it is not None and it is not Ellipsis and not isinstance(it, bool):
            d += 1
    return items


def _for_conch(items, device):
    return tuple(conch.tensor(i[1], device=device) if _is_tensor_item(i) else i for i in items)


def _for_numpy(items):
    """The NumPy form: tensors as arrays (a 0-d integer one as an int), tuples as lists (NumPy reads a tuple
    inside an index as a sequence too, but lists say it plainly)."""
    out = []
    for i in items:
        if _is_tensor_item(i):
            out.append(int(i[1]) if i[1].ndim == 0 and i[1].dtype != bool else i[1])
        else:
            out.append(list(i) if isinstance(i, tuple) else i)
    return out


def _is_tensor_item(i):
    return isinstance(i, tuple) and len(i) == 2 and i[0] == "T"


def _two_steps(items):
    """(ints-first index, rest) when an integer meets an index array, else None: PyTorch's order of application."""
    is_int = [type(i) is int for i in items]
    is_arr = [isinstance(i, (list, np.ndarray)) or type(i) is bool for i in items]
    if not (any(is_int) and any(is_arr)):
        return None
    first, rest = [], []
    for i in items:
        if type(i) is int:
            first.append(i)
        elif i is None:
            first.append(None)
            rest.append(slice(None))
        elif i is Ellipsis:
            first.append(i)
            rest.append(i)
        elif type(i) is bool:  # a 0-d mask spans no dim of the input
            rest.append(i)
        elif isinstance(i, np.ndarray) and i.dtype == bool:
            first.extend([slice(None)] * i.ndim)
            rest.append(i)
        else:
            first.append(slice(None))
            rest.append(i)
    return tuple(first), tuple(rest)


def _np_view(a, items):
    """(array to index, the index) so that ``arr[index]`` is PyTorch's ``a[items]`` (a view of ``a`` for step 1)."""
    steps = _two_steps(items)
    return (a, tuple(items)) if steps is None else (a[steps[0]], steps[1])


def _reference(x, items, g):
    """NumPy's getitem, setitem (writing 2·y + 1, identical for repeated positions) and gradient of sum(y·g)."""
    arr, idx = _np_view(x, items)
    y = arr[idx]
    written = x.copy()
    warr, widx = _np_view(written, items)
    warr[widx] = 2 * y + 1
    grad = np.zeros_like(x)
    garr, gidx = _np_view(grad, items)
    np.add.at(garr, gidx, g)
    return y, written, grad


def test_random_index_tuples_match_numpy(device):
    rng = random.Random(0)
    data = np.random.default_rng(0).standard_normal(SHAPE)
    checked = 0
    for _ in range(400):
        items = _random_index(rng)
        np_items = _for_numpy(items)
        try:
            arr, idx = _np_view(data, np_items)
            shape = arr[idx].shape
        except IndexError:  # out of range for the dim it landed on: conch must refuse it too
            with pytest.raises(IndexError):
                conch.tensor(data, device=device)[_for_conch(items, device)]
            continue
        g = np.random.default_rng(checked).standard_normal(shape)
        want_y, want_written, want_grad = _reference(data, np_items, g)
        x = conch.tensor(data, device=device, requires_grad=True)
        y = x[_for_conch(items, device)]
        np.testing.assert_array_equal(y.detach().cpu().numpy(), want_y, err_msg=str(items))
        (y * conch.tensor(g, device=device)).sum().backward()
        np.testing.assert_allclose(x.grad.cpu().numpy(), want_grad, rtol=1e-13, atol=1e-13, err_msg=str(items))
        w = conch.tensor(data, device=device)
        w[_for_conch(items, device)] = 2 * w[_for_conch(items, device)] + 1
        np.testing.assert_array_equal(w.cpu().numpy(), want_written, err_msg=str(items))
        checked += 1
    assert checked > 300  # the generator produces mostly valid indices: the test cannot pass vacuously


@pytest.mark.parametrize(
    "index,shape",
    [
        ((0, slice(None), [0, 1]), (5, 2, 2)),  # an int first: PyTorch selects it before the list (NumPy: (2, 5, 2))
        ((slice(None), [0, 1], [1, 2]), (4, 2, 2)),  # adjacent index arrays stay in place
        (([0, 1], slice(None), [1, 2]), (2, 5, 2)),  # separated by a slice: the broadcast dims go first
        ((None, 1, (0, 2), Ellipsis, [1, 0]), (2, 1, 3)),  # the tuple and the list are separated: dims first
        ((Ellipsis, True, [1]), (4, 5, 3, 1)),  # True (a 0-d mask) and [1] are adjacent: one dim of 1 in place
        ((False, 0), (0, 5, 3, 2)),
    ],
)
def test_placement_rule_closed_forms(index, shape, device):
    x = conch.zeros(*SHAPE, device=device)
    assert tuple(x[index].shape) == shape


def test_setitem_gradient_reaches_base_and_value(device):
    base = conch.tensor(np.arange(24.0).reshape(2, 3, 4), device=device, requires_grad=True)
    value = conch.tensor(np.array([10.0, 20.0]), device=device, requires_grad=True)
    y = base.clone()
    y[1, conch.tensor([0, 2], device=device), None, (3,)] = value[:, None]  # shape (2, 1) positions (1, 0/2, 3)
    g = np.arange(24.0).reshape(2, 3, 4) + 1
    (y * conch.tensor(g, device=device)).sum().backward()
    want_base = g.copy()
    want_base[1, [0, 2], 3] = 0.0
    np.testing.assert_array_equal(base.grad.cpu().numpy(), want_base)
    np.testing.assert_array_equal(value.grad.cpu().numpy(), g[1, [0, 2], 3])


def test_list_of_tensors_is_read_as_a_tuple_of_indices():
    x = conch.tensor(np.arange(12.0).reshape(3, 4))
    np.testing.assert_array_equal(x[[conch.tensor([0, 1]), conch.tensor([1, 2])]].numpy(), [1.0, 6.0])
    np.testing.assert_array_equal(x[[0, 2]].numpy(), np.arange(12.0).reshape(3, 4)[[0, 2]])


def test_random_index_tuples_match_torch():
    torch = pytest.importorskip("torch")
    rng = random.Random(1)
    data = np.random.default_rng(1).standard_normal(SHAPE)
    for _ in range(400):
        items = _random_index(rng)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tidx = tuple(torch.tensor(i[1]) if _is_tensor_item(i) else i for i in items)
            try:
                want = torch.tensor(data)[tidx]
            except IndexError:
                with pytest.raises(IndexError):
                    conch.tensor(data)[_for_conch(items, "cpu")]
                continue
            tx = torch.tensor(data, requires_grad=True)
            g = np.random.default_rng(0).standard_normal(tuple(want.shape))
            (tx[tidx] * torch.tensor(g)).sum().backward()
            tw = torch.tensor(data)
            tw[tidx] = 2 * tw[tidx] + 1
        x = conch.tensor(data, requires_grad=True)
        y = x[_for_conch(items, "cpu")]
        np.testing.assert_array_equal(y.detach().numpy(), want.numpy(), err_msg=str(items))
        (y * conch.tensor(g)).sum().backward()
        np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-13, atol=1e-13, err_msg=str(items))
        w = conch.tensor(data)
        w[_for_conch(items, "cpu")] = 2 * w[_for_conch(items, "cpu")] + 1
        np.testing.assert_array_equal(w.numpy(), tw.numpy(), err_msg=str(items))


def test_empty_list_index_selects_nothing(device):
    x = conch.tensor(np.arange(12.0).reshape(3, 4), device=device, requires_grad=True)
    assert x[[]].shape == (0, 4) and x[:, []].shape == (3, 0) and x[:, ()].shape == (3, 0)
    x[:, []].sum().backward()
    np.testing.assert_array_equal(x.grad.cpu().numpy(), np.zeros((3, 4)))
    w = conch.zeros(3, 4, device=device)
    w[[]] = 1.0
    assert w.sum().item() == 0.0
