"""Dimension arguments (ops.dims.norm_dim/norm_dims) as every reduction checks them: PyTorch's ranges, types, errors."""

import re

import numpy as np
import pytest

import conch
from conch.autograd import gradcheck, gradgradcheck
from conch.ops.dims import norm_dim, norm_dims


class Idx:
    """Anything with __index__ is a dim, as in PyTorch."""

    def __init__(self, i):
        self.i = i

    def __index__(self):
        return self.i


OUT_OF_RANGE = "Dimension out of range (expected to be in range of [{}, {}], but got {})"


@pytest.mark.parametrize(
    "dim,ndim,want",
    [(0, 3, 0), (2, 3, 2), (-1, 3, 2), (-3, 3, 0), (np.int64(1), 3, 1), (np.int32(-2), 3, 1), (Idx(1), 2, 1),
     (0, 0, 0), (-1, 0, 0)],
)  # fmt: skip
def test_norm_dim_closed_form(dim, ndim, want):
    got = norm_dim(dim, ndim)
    assert got == want and type(got) is int


@pytest.mark.parametrize("dim,ndim", [(3, 3), (-4, 3), (1, 0), (-2, 0), (np.int64(5), 2)])
def test_norm_dim_out_of_range_names_the_range(dim, ndim):
    n = max(ndim, 1)
    with pytest.raises(IndexError, match=re.escape(OUT_OF_RANGE.format(-n, n - 1, int(dim)))):
        norm_dim(dim, ndim)


@pytest.mark.parametrize("dim", [1.0, 1.5, True, np.bool_(False), "1", None, [0]])
def test_norm_dim_refuses_non_integers(dim):
    with pytest.raises(TypeError, match="argument 'dim' must be int"):
        norm_dim(dim, 3, "sum")


def test_norm_dims_closed_form():
    assert norm_dims(None, 3) is None
    assert norm_dims((), 3) is None and norm_dims([], 3) is None  # every dim, as PyTorch
    assert norm_dims((2, -3), 3) == (0, 2)  # sorted, non-negative
    assert norm_dims([np.int64(1), Idx(0)], 2) == (0, 1)
    assert norm_dims(-1, 2) == 1
    assert norm_dims(0, 0) is None and norm_dims((-1,), 0) is None  # a 0-d tensor's one element: reduce all
    with pytest.raises(RuntimeError, match="dim 0 appears multiple times"):  # 0 and -1 are one dim there
        norm_dims((0, -1), 0)
    with pytest.raises(RuntimeError, match="dim 0 appears multiple times in the list of dims"):
        norm_dims((0, -2), 2)
    with pytest.raises(RuntimeError, match="dim 1 appears multiple times in the list of dims"):
        norm_dims([1, 1], 3)
    with pytest.raises(TypeError):
        norm_dims((0, 1.0), 2)
    with pytest.raises(IndexError, match=re.escape(OUT_OF_RANGE.format(-2, 1, 2))):
        norm_dims((0, 2), 2)


# (method, kwargs) of every reduction that takes a dim
REDUCTIONS = [
    ("sum", {}), ("mean", {}), ("amax", {}), ("amin", {}), ("var", {}), ("std", {}), ("norm", {}),
    ("logsumexp", {}), ("prod", {}), ("argmax", {}), ("argmin", {}), ("cumsum", {}), ("softmax", {}),
]  # fmt: skip
MULTI = {"sum", "mean", "amax", "amin", "var", "std", "norm", "logsumexp"}  # those that take a tuple of dims


def _x(device, *shape):
    return conch.tensor(np.arange(1.0, 1.0 + np.prod(shape)).reshape(shape) / 7, dtype=conch.float64, device=device)


@pytest.mark.parametrize("name,kw", REDUCTIONS)
def test_scalar_tensor_allows_dims_0_and_minus_1_only(name, kw, device):
    s = conch.tensor(2.5, dtype=conch.float64, device=device)
    for d in (0, -1):
        r = getattr(s, name)(dim=d, **kw)
        assert r.shape == ()
    with pytest.raises(IndexError, match=re.escape(OUT_OF_RANGE.format(-1, 0, 1))):
        getattr(s, name)(dim=1, **kw)


@pytest.mark.parametrize("name,kw", REDUCTIONS)
def test_numpy_and_index_dims_match_int_dims(name, kw, device):
    x = _x(device, 2, 3, 4)
    want = getattr(x, name)(dim=1, **kw)
    for d in (np.int64(1), np.int32(-2), Idx(1), conch.tensor(1)):
        got = getattr(x, name)(dim=d, **kw)
        np.testing.assert_array_equal(got.detach().cpu().numpy(), want.detach().cpu().numpy())


@pytest.mark.parametrize("name,kw", REDUCTIONS)
@pytest.mark.parametrize("bad", [1.0, True])
def test_float_and_bool_dims_are_type_errors(name, kw, bad, device):
    with pytest.raises(TypeError):
        getattr(_x(device, 2, 3), name)(dim=bad, **kw)


@pytest.mark.parametrize("name", sorted(MULTI))
def test_repeated_dims_are_runtime_errors(name, device):
    with pytest.raises(RuntimeError, match="dim 0 appears multiple times in the list of dims"):
        getattr(_x(device, 2, 3), name)(dim=(0, -2))


@pytest.mark.parametrize("name", ["sum", "mean", "amax", "amin", "var"])
@pytest.mark.parametrize("empty", [(), []])
def test_empty_dim_list_reduces_everything(name, empty, device):
    x = _x(device, 2, 3)
    ref = {"sum": np.sum, "mean": np.mean, "amax": np.max, "amin": np.min, "var": lambda a: np.var(a, ddof=1)}[name]
    got = getattr(x, name)(empty)
    assert got.shape == ()
    np.testing.assert_allclose(got.cpu().numpy(), ref(x.cpu().numpy()), rtol=1e-12)


@pytest.mark.parametrize("empty", [(), []])
def test_all_any_with_an_empty_dim_list_reduce_nothing(empty, device):
    b = np.array([[True, False], [True, True]])
    for name in ("all", "any"):
        got = getattr(conch.tensor(b, device=device), name)(dim=empty)
        np.testing.assert_array_equal(got.cpu().numpy(), b)  # PyTorch leaves them as they are
    assert norm_dims((), 2, empty_is_all=False) == () and norm_dims([], 2) is None


def test_all_any_empty_dims_match_pytorch():
    torch = pytest.importorskip("torch")
    b = np.array([[True, False], [True, True]])
    for name in ("all", "any"):
        for d in ((), [], (1,), (0, -1)):
            want = getattr(torch.tensor(b), name)(dim=d).numpy()
            np.testing.assert_array_equal(getattr(conch.tensor(b), name)(dim=d).numpy(), want)


def test_sum_mean_over_numpy_dims_gradcheck_odd_shapes(device):
    rng = np.random.default_rng(1)
    x = conch.tensor(rng.standard_normal((3, 5, 7)), dtype=conch.float64, device=device, requires_grad=True)
    for dims in ((np.int64(0), -1), [Idx(1)], np.int64(2), (0, 1, 2)):
        assert gradcheck(lambda t, d=dims: t.sum(d) * 1.5 + t.mean(d), (x,))
        assert gradgradcheck(lambda t, d=dims: (t * t).mean(d, keepdim=True), (x,))


def test_sum_mean_values_and_random_upstream_gradient(device):
    rng = np.random.default_rng(2)
    a = rng.standard_normal((4, 1, 6))
    x = conch.tensor(a, dtype=conch.float64, device=device, requires_grad=True)
    y = x.sum(dim=(np.int64(0), 2)) + x.mean(dim=-1, keepdim=True).reshape(4, 1).sum(0)
    np.testing.assert_allclose(y.detach().cpu().numpy(), a.sum((0, 2)) + a.mean(-1).sum(0), rtol=1e-12)
    g = rng.standard_normal(y.shape)
    y.backward(conch.tensor(g, dtype=conch.float64, device=device))
    want = np.broadcast_to(g.reshape(1, 1, 1), a.shape) + np.broadcast_to(g.reshape(1, 1, 1) / 6, a.shape)
    np.testing.assert_allclose(x.grad.cpu().numpy(), want, rtol=1e-12)


def test_sum_dtypes_and_empty_mean():
    assert conch.ones(3, dtype=conch.int32).sum().dtype == conch.int64  # integers sum to int64
    assert conch.ones(3, dtype=conch.bool).sum().item() == 3
    h = conch.full((4096,), 0.1, dtype=conch.float16)
    assert h.sum().dtype == conch.float16  # accumulated in float32, rounded once
    np.testing.assert_allclose(h.sum().item(), np.float16(np.float32(np.float16(0.1)) * 4096), rtol=1e-3)
    assert np.isnan(conch.zeros(0).mean().item()) and conch.zeros(3, 0).mean(1).isnan().all()


# ---------------------------------------------------------------- against PyTorch, where it imports

CASES = [
    ("sum", (1,), ()), ("sum", (0,), ()), ("sum", (-1,), ()), ("mean", (1,), ()), ("amax", (2,), (2, 3)),
    ("sum", ((0, 0),), (2, 3)), ("sum", ((0, -2),), (2, 3)), ("sum", ((),), (2, 3)), ("sum", ([],), (2, 3)),
    ("sum", (-3,), (2, 3)), ("var", ((1, 1),), (2, 3)), ("logsumexp", ((0, 0),), (2, 3)), ("argmax", (5,), (2, 3)),
    ("softmax", (2,), (2, 3)), ("cumsum", (-3,), (2, 3)), ("max", (1,), ()), ("max", (2,), (2, 3)),
]  # fmt: skip


@pytest.mark.parametrize("name,args,shape", CASES)
def test_dims_match_pytorch(name, args, shape):
    torch = pytest.importorskip("torch")
    a = np.arange(1.0, 1.0 + np.prod(shape)).reshape(shape)
    results = []
    for lib in (conch, torch):
        try:
            r = getattr(lib.tensor(a), name)(*args)
            r = r[0] if isinstance(r, tuple) else r
            results.append(("ok", np.asarray(r.numpy(), dtype=np.float64)))
        except (IndexError, RuntimeError, TypeError) as e:
            results.append((type(e).__name__, str(e)))
    (kc, vc), (kt, vt) = results
    assert kc == kt, results
    if kc == "ok":
        np.testing.assert_allclose(vc, vt, rtol=1e-12)
    elif kc != "TypeError":  # PyTorch's TypeError lists its overloads; the type is what matters there
        assert vc == vt


@pytest.mark.parametrize("dim", [np.int64(1), np.int32(-1)])
def test_index_dims_match_pytorch(dim):
    torch = pytest.importorskip("torch")
    a = np.random.default_rng(3).standard_normal((3, 4))
    np.testing.assert_allclose(conch.tensor(a).sum(dim=dim).numpy(), torch.tensor(a).sum(dim=dim).numpy())


@pytest.mark.parametrize("bad", [1.5, True])
def test_bad_dim_types_are_type_errors_in_pytorch_too(bad):
    torch = pytest.importorskip("torch")
    for lib in (conch, torch):
        with pytest.raises(TypeError):
            lib.ones(2, 3).sum(dim=bad)
