"""The second batch of Tensor ops (rounding, prod, sort, gather/scatter, tril, roll, unique...) vs float64 NumPy.

Forward values are compared with NumPy float64 references, gradients with central differences
(``conch.autograd.gradcheck``), and the user errors (bad dim, index out of range, mismatched shapes)
with ``pytest.raises``. No PyTorch here: tests/test_torch_parity_more.py holds the parity cases.
"""

import math

import numpy as np
import pytest

import conch
from conch.autograd import gradcheck

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


# ---------------------------------------------------------------- helpers


def rnd(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def distinct(*shape, seed=0):
    """Values without ties (a shuffled, scaled arange plus noise), so sort/topk/median indices are unique."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    return (rng.permutation(n) - n / 2 + 0.25 * rng.random(n)).reshape(shape) / 3


def mk(a, device, grad=True):
    return conch.tensor(np.asarray(a, dtype=np.float64), dtype=conch.float64, device=device, requires_grad=grad)


def ix(a, device):
    """An int64 index tensor."""
    return conch.tensor(np.asarray(a, dtype=np.int64), device=device)


def npy(t):
    return t.detach().cpu().numpy()


def check(t, ref, dtype=None, rtol=1e-12, atol=1e-12):
    """``t`` has ``ref``'s shape (and ``dtype`` if given) and its values."""
    ref = np.asarray(ref)
    assert tuple(t.shape) == ref.shape, f"shape {tuple(t.shape)} vs reference {ref.shape}"
    if dtype is not None:
        assert t.dtype == dtype, f"dtype {t.dtype} vs {dtype}"
    if ref.dtype == bool or np.issubdtype(ref.dtype, np.integer):
        np.testing.assert_array_equal(npy(t), ref)
    else:
        np.testing.assert_allclose(npy(t).astype(np.float64), ref, rtol=rtol, atol=atol, equal_nan=True)


def grad_of(fn, x, g=None):
    """The gradient of ``sum(g * fn(x))`` w.r.t. ``x`` (``g`` defaults to ones)."""
    x.grad = None
    y = fn(x)
    y.backward(conch.ones_like(y) if g is None else g)
    return x.grad


# ---------------------------------------------------------------- creation from a tensor


@pytest.mark.parametrize("dtype", [conch.float64, conch.float32, conch.int64])
def test_new_factories_keep_dtype_and_device(device, dtype):
    x = conch.zeros(2, dtype=dtype, device=device)
    cases = {
        "new_zeros": (x.new_zeros(2, 3), np.zeros((2, 3))),
        "new_zeros_tuple": (x.new_zeros((3, 1)), np.zeros((3, 1))),
        "new_ones": (x.new_ones(3, 2), np.ones((3, 2))),
        "new_ones_tuple": (x.new_ones((4,)), np.ones(4)),
        "new_full": (x.new_full((2, 3), 7), np.full((2, 3), 7)),
        "new_tensor": (x.new_tensor([[1, 2], [3, 5]]), np.array([[1, 2], [3, 5]])),
    }
    for name, (t, ref) in cases.items():
        assert t.dtype == dtype, f"{name}: dtype {t.dtype}"
        assert str(t.device) == str(x.device), f"{name}: device {t.device}"
        assert not t.requires_grad, name
        check(t, ref)
    e = x.new_empty(2, 5)
    assert tuple(e.shape) == (2, 5) and e.dtype == dtype and str(e.device) == str(x.device)
    assert tuple(x.new_empty((3,)).shape) == (3,)
    assert tuple(x.new_zeros(()).shape) == ()


def test_new_full_value_and_new_tensor_copies(device):
    x = mk(rnd(2), device)
    check(x.new_full((2, 2), -1.5), np.full((2, 2), -1.5), dtype=conch.float64)
    data = np.array([1.0, 2.0, 3.0])
    t = x.new_tensor(data)
    data[0] = 100.0  # new_tensor copies its data
    check(t, [1.0, 2.0, 3.0], dtype=conch.float64)
    assert not t.requires_grad and t.grad_fn is None
    # an int tensor's new_tensor casts float data to its own dtype
    check(ix([1], device).new_tensor([2.0, 3.0]), np.array([2, 3]), dtype=conch.int64)


def test_new_factories_dtype_override(device):
    x = mk(rnd(2), device)
    assert x.new_zeros(2, dtype=conch.int64).dtype == conch.int64
    assert x.new_ones((2,), dtype=conch.float32).dtype == conch.float32
    assert x.new_full((2,), 1, dtype=conch.int64).dtype == conch.int64


# ---------------------------------------------------------------- elementwise

HALVES = np.array([[-2.5, -1.5, -0.5, 0.5, 1.5], [2.5, -1.7, 2.3, 0.0, 3.999], [-0.2, 7.5, -3.5, 4.5, 0.49]])
ROUNDING = {
    "floor": (lambda t: t.floor(), np.floor),
    "ceil": (lambda t: t.ceil(), np.ceil),
    "round": (lambda t: t.round(), np.round),  # half to even, as np.round
    "trunc": (lambda t: t.trunc(), np.trunc),
    "frac": (lambda t: t.frac(), lambda a: a - np.trunc(a)),
    "floor_fn": (lambda t: conch.floor(t), np.floor),
    "ceil_fn": (lambda t: conch.ceil(t), np.ceil),
    "round_fn": (lambda t: conch.round(t), np.round),
    "trunc_fn": (lambda t: conch.trunc(t), np.trunc),
    "frac_fn": (lambda t: conch.frac(t), lambda a: a - np.trunc(a)),
}


@pytest.mark.parametrize("name", list(ROUNDING))
def test_rounding_forward_and_gradient(device, name):
    fn, ref = ROUNDING[name]
    check(fn(mk(HALVES, device)), ref(HALVES), dtype=conch.float64)
    x = mk(rnd(3, 5), device)
    y = fn(x)
    assert y.requires_grad, "the result of a differentiable op on a leaf that requires grad requires grad"
    g = grad_of(fn, x)
    check(g, np.ones((3, 5)) if name.startswith("frac") else np.zeros((3, 5)))
    assert gradcheck(fn, (x,))


def test_round_half_to_even_exact():
    check(conch.tensor(np.array([0.5, 1.5, 2.5, 3.5, -0.5, -2.5])).round(), [0.0, 2.0, 2.0, 4.0, -0.0, -2.0])


@pytest.mark.parametrize("decimals", [1, 2, 0, -1, -2])
def test_round_decimals(device, decimals):
    a = np.array([1.25, 0.125, -1.375, 1234.5, 1250.0, 1350.0, 3.14159, -0.05, 99.99])
    x = mk(a, device)
    check(x.round(decimals=decimals), np.round(a, decimals), rtol=1e-12)
    check(conch.round(x, decimals=decimals), np.round(a, decimals), rtol=1e-12)
    check(grad_of(lambda t: t.round(decimals=decimals), x), np.zeros(a.shape))


def test_rounding_keeps_integer_dtype(device):
    a = np.array([[-3, 0, 4], [7, -1, 2]])
    for name in ("floor", "ceil", "round", "trunc"):
        check(getattr(ix(a, device), name)(), a, dtype=conch.int64)


def test_sign(device):
    a = np.array([[-2.0, 0.0, 3.5], [-0.0, 1e-300, -7.0]])
    x = mk(a, device)
    check(x.sign(), np.sign(a), dtype=conch.float64)
    check(conch.sign(x), np.sign(a))
    assert x.sign().requires_grad
    check(grad_of(lambda t: t.sign(), x), np.zeros(a.shape))
    check(ix([-3, 0, 5], device).sign(), np.array([-1, 0, 1]), dtype=conch.int64)


def test_erf(device):
    a = rnd(3, 5) * 1.5
    erf = np.vectorize(math.erf)
    x = mk(a, device)
    check(x.erf(), erf(a), rtol=1e-12, atol=1e-15)
    check(conch.erf(x), erf(a), rtol=1e-12, atol=1e-15)
    check(conch.erf(mk([0.0, np.inf, -np.inf], device)), [0.0, 1.0, -1.0])
    check(grad_of(lambda t: t.erf(), x), 2 / math.sqrt(math.pi) * np.exp(-(a**2)), rtol=1e-10)
    assert gradcheck(lambda t: t.erf(), (x,))


SPECIAL = np.array([[np.nan, np.inf, -np.inf, 0.0, -1.5], [2.0, np.nan, 1e308, -0.0, -np.inf]])


@pytest.mark.parametrize("name,ref", [("isnan", np.isnan), ("isinf", np.isinf), ("isfinite", np.isfinite)])
def test_isnan_isinf_isfinite(device, name, ref):
    x = mk(SPECIAL, device, grad=False)
    check(getattr(x, name)(), ref(SPECIAL), dtype=conch.bool)
    check(getattr(conch, name)(x), ref(SPECIAL), dtype=conch.bool)
    assert not getattr(x, name)().requires_grad
    a = np.array([3, 0, -2])  # integers are always finite, never NaN or inf
    check(getattr(ix(a, device), name)(), ref(a.astype(np.float64)), dtype=conch.bool)


def test_nan_to_num(device):
    x = mk(SPECIAL, device)
    big = np.finfo(np.float64).max
    check(x.nan_to_num(), np.nan_to_num(SPECIAL, nan=0.0, posinf=big, neginf=-big), dtype=conch.float64)
    check(
        conch.nan_to_num(x, nan=1.5, posinf=9.0, neginf=-9.0), np.nan_to_num(SPECIAL, nan=1.5, posinf=9.0, neginf=-9.0)
    )
    check(x.nan_to_num(posinf=2.0), np.nan_to_num(SPECIAL, nan=0.0, posinf=2.0, neginf=-big))
    f32 = conch.tensor(np.array([np.inf, -np.inf, np.nan], dtype=np.float32), device=device)
    big32 = float(np.finfo(np.float32).max)
    check(f32.nan_to_num(), np.array([big32, -big32, 0.0], dtype=np.float32), dtype=conch.float32)
    # the gradient passes where the input is finite and is zero where it was replaced
    check(grad_of(lambda t: t.nan_to_num(), x), np.isfinite(SPECIAL).astype(np.float64))


def test_lerp(device):
    a, b, w = rnd(3, 5, seed=1), rnd(3, 5, seed=2), np.random.default_rng(3).random(5)
    start, end, weight = mk(a, device), mk(b, device), mk(w, device)
    check(start.lerp(end, 0.3), a + 0.3 * (b - a))
    check(conch.lerp(start, end, 0.3), a + 0.3 * (b - a))
    check(start.lerp(end, weight), a + w * (b - a))  # a tensor weight broadcasts
    check(conch.lerp(start, end, weight), a + w * (b - a))
    assert gradcheck(lambda s, e: s.lerp(e, 0.7), (start, end))
    assert gradcheck(lambda s, e, w_: conch.lerp(s, e, w_), (start, end, weight))


def test_lerp_gradient_closed_form(device):
    a, b, w = rnd(4, seed=1), rnd(4, seed=2), np.array([0.1, 0.5, 0.9, 1.3])
    start, end, weight = mk(a, device), mk(b, device), mk(w, device)
    start.lerp(end, weight).sum().backward()
    check(start.grad, 1 - w)
    check(end.grad, w)
    check(weight.grad, b - a)


@pytest.mark.parametrize("value", [1, 0.5, -2.0])
def test_addcmul_addcdiv(device, value):
    a, b, c = rnd(3, 5, seed=1), rnd(3, 1, seed=2), rnd(5, seed=3)
    c = c + np.where(c >= 0, 0.5, -0.5)  # a denominator away from zero
    x, t1, t2 = mk(a, device), mk(b, device), mk(c, device)
    kw = {} if value == 1 else {"value": value}
    check(x.addcmul(t1, t2, **kw), a + value * b * c)
    check(conch.addcmul(x, t1, t2, **kw), a + value * b * c)
    check(x.addcdiv(t1, t2, **kw), a + value * b / c)
    check(conch.addcdiv(x, t1, t2, **kw), a + value * b / c)
    assert gradcheck(lambda p, q, r: p.addcmul(q, r, **kw), (x, t1, t2))
    assert gradcheck(lambda p, q, r: conch.addcdiv(p, q, r, **kw), (x, t1, t2))


def test_clamp_min_clamp_max(device):
    a = np.linspace(-2.05, 2.05, 15).reshape(3, 5)  # no element sits on the bound 0.3
    x = mk(a, device)
    check(x.clamp_min(0.3), np.maximum(a, 0.3))
    check(conch.clamp_min(x, 0.3), np.maximum(a, 0.3))
    check(x.clamp_max(0.3), np.minimum(a, 0.3))
    check(conch.clamp_max(x, -0.3), np.minimum(a, -0.3))
    check(grad_of(lambda t: t.clamp_min(0.3), x), (a > 0.3).astype(np.float64))
    check(grad_of(lambda t: t.clamp_max(0.3), x), (a < 0.3).astype(np.float64))
    assert gradcheck(lambda t: t.clamp_min(0.3), (x,))
    assert gradcheck(lambda t: conch.clamp_max(t, 0.3), (x,))
    check(ix([-2, 0, 3], device).clamp_min(1), np.array([1, 1, 3]), dtype=conch.int64)


def test_atan2(device):
    a = rnd(3, 5, seed=1)
    b = rnd(5, seed=2)
    b = b + np.where(b >= 0, 0.3, -0.3)  # every quadrant, away from the origin
    y, x = mk(a, device), mk(b, device)
    check(y.atan2(x), np.arctan2(a, b))
    check(conch.atan2(y, x), np.arctan2(a, b))
    check(conch.atan2(mk([1.0, -1.0, 0.0], device), mk([-1.0, -1.0, -1.0], device)), np.arctan2([1, -1, 0.0], -1.0))
    assert gradcheck(lambda p, q: p.atan2(q), (y, x))
    y.atan2(x).sum().backward()
    r2 = a**2 + b**2
    check(y.grad, b / r2)
    check(x.grad, (-a / r2).sum(0))


@pytest.mark.parametrize("name", ["logical_and", "logical_or", "logical_xor"])
def test_logical_binary(device, name):
    a = np.array([[0.0, 1.5, -2.0, 0.0], [np.nan, 0.0, 3.0, -0.0], [1.0, 1.0, 0.0, 0.0]])
    b = np.array([3, 0, 1, 0])
    ref = getattr(np, name)(a != 0, b != 0)  # NaN counts as True
    x, y = mk(a, device, grad=False), ix(b, device)
    check(getattr(x, name)(y), ref, dtype=conch.bool)
    check(getattr(conch, name)(x, y), ref, dtype=conch.bool)
    m = x > 0
    check(getattr(m, name)(m.logical_not()), getattr(np, name)(a > 0, ~(a > 0)), dtype=conch.bool)


def test_logical_not(device):
    a = np.array([[0.0, 1.5, np.nan], [-0.0, -2.0, 0.0]])
    check(mk(a, device, grad=False).logical_not(), np.logical_not(a != 0), dtype=conch.bool)
    check(conch.logical_not(ix([0, 2, -1], device)), np.array([True, False, False]), dtype=conch.bool)
    check(conch.logical_not(mk(a, device, grad=False) > 0), ~(a > 0), dtype=conch.bool)


# ---------------------------------------------------------------- reductions


@pytest.mark.parametrize("dim,keepdim", [(None, False), (0, False), (1, True), (-1, False), (-3, True)])
def test_prod(device, dim, keepdim):
    a = rnd(2, 3, 4) + 0.5
    x = mk(a, device)
    if dim is None:
        check(x.prod(), np.prod(a))
        check(conch.prod(x), np.prod(a))
        assert gradcheck(lambda t: t.prod(), (x,))
    else:
        check(x.prod(dim, keepdim=keepdim), np.prod(a, axis=dim, keepdims=keepdim))
        check(conch.prod(x, dim=dim, keepdim=keepdim), np.prod(a, axis=dim, keepdims=keepdim))
        assert gradcheck(lambda t: t.prod(dim, keepdim=keepdim), (x,))


ZERO_ROWS = np.array([
    [1.5, -0.7, 2.0, 0.9, -1.1],  # no zero
    [1.5, 0.0, 2.0, -0.6, 1.3],  # one zero
    [0.8, 0.0, 0.0, 1.7, -1.2],  # two zeros in a row
    [0.0, 2.5, -1.4, 0.0, 0.0],  # three zeros
])  # fmt: skip


def test_prod_gradient_with_zeros(device):
    x = mk(ZERO_ROWS, device)
    check(x.prod(1), np.prod(ZERO_ROWS, axis=1))
    assert gradcheck(lambda t: t.prod(1), (x,))
    assert gradcheck(lambda t: t.prod(0, keepdim=True), (x,))
    # closed form: d prod / d x_i = product of the others
    expected = np.array([[np.prod(np.delete(r, j)) for j in range(5)] for r in ZERO_ROWS])
    check(grad_of(lambda t: t.prod(-1), x), expected)
    for row in ZERO_ROWS[1:3]:  # the whole-tensor product with one zero, then two zeros
        v = mk(row, device)
        assert gradcheck(lambda t: t.prod(), (v,))
        check(grad_of(lambda t: t.prod(), v), [np.prod(np.delete(row, j)) for j in range(5)])


def test_prod_integer(device):
    a = np.array([[2, -3, 1], [4, 0, 5]])
    check(ix(a, device).prod(), np.prod(a), dtype=conch.int64)
    check(ix(a, device).prod(1), np.prod(a, axis=1), dtype=conch.int64)


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_cumprod(device, dim):
    a = rnd(3, 5) + 0.3
    x = mk(a, device)
    check(x.cumprod(dim), np.cumprod(a, axis=dim))
    check(conch.cumprod(x, dim), np.cumprod(a, axis=dim))
    assert gradcheck(lambda t: t.cumprod(dim), (x,))


def test_cumprod_gradient_with_zeros(device):
    x = mk(ZERO_ROWS, device)
    check(x.cumprod(1), np.cumprod(ZERO_ROWS, axis=1))
    assert gradcheck(lambda t: t.cumprod(1), (x,))
    assert gradcheck(lambda t: t.cumprod(0), (x,))
    assert gradcheck(lambda t: t.cumprod(-1), (mk(rnd(2, 3, 4) * (rnd(2, 3, 4, seed=5) > -0.3), device),))


@pytest.mark.parametrize("dim", [None, 0, -1, (0, 2), 1])
def test_count_nonzero(device, dim):
    a = rnd(2, 3, 4) * (rnd(2, 3, 4, seed=1) > 0)
    x = mk(a, device, grad=False)
    ref = np.count_nonzero(a, axis=dim)
    out = x.count_nonzero() if dim is None else x.count_nonzero(dim)
    check(out, np.asarray(ref), dtype=conch.int64)
    check(conch.count_nonzero(x, dim=dim), np.asarray(ref), dtype=conch.int64)
    check((x > 0).count_nonzero(dim=dim), np.asarray(np.count_nonzero(a > 0, axis=dim)), dtype=conch.int64)


@pytest.mark.parametrize("name", ["any", "all"])
@pytest.mark.parametrize("dim,keepdim", [(None, False), (0, False), (-1, True), (1, False)])
def test_any_all(device, name, dim, keepdim):
    a = np.array([[[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]], [[2.0, np.nan, -1.0], [0.0, 3.0, 0.0]]])  # (2, 2, 3)
    x = mk(a, device, grad=False)
    ref = getattr(np, name)(a != 0, axis=dim, keepdims=keepdim)
    out = getattr(x, name)() if dim is None else getattr(x, name)(dim, keepdim=keepdim)
    check(out, np.asarray(ref), dtype=conch.bool)
    if dim is None:
        check(getattr(conch, name)(x), np.asarray(ref), dtype=conch.bool)
    else:
        check(getattr(conch, name)(x, dim, keepdim=keepdim), np.asarray(ref), dtype=conch.bool)


@pytest.mark.parametrize("dim,keepdim", [(None, False), (0, False), (-1, True), (1, False)])
def test_aminmax(device, dim, keepdim):
    a = distinct(2, 3, 4)
    x = mk(a, device)
    kw = {} if dim is None else {"dim": dim, "keepdim": keepdim}
    for r in (x.aminmax(**kw), conch.aminmax(x, **kw)):
        lo, hi = r
        check(lo, np.asarray(np.amin(a, axis=dim, keepdims=keepdim)))
        check(hi, np.asarray(np.amax(a, axis=dim, keepdims=keepdim)))
        check(r.min, np.asarray(np.amin(a, axis=dim, keepdims=keepdim)))
        check(r.max, np.asarray(np.amax(a, axis=dim, keepdims=keepdim)))
    assert gradcheck(lambda t: tuple(t.aminmax(**kw)), (x,))


def test_aminmax_ties_share_gradient(device):
    a = np.array([[1.0, 3.0, 3.0], [0.0, 0.0, 2.0]])
    x = mk(a, device)
    r = x.aminmax()
    (r.min * 2 + r.max * 3).backward()
    check(x.grad, [[0.0, 1.5, 1.5], [1.0, 1.0, 0.0]])  # ties share the gradient evenly, as amax/amin


@pytest.mark.parametrize("name", ["std_mean", "var_mean"])
@pytest.mark.parametrize("dim,keepdim,correction", [(None, False, 1), (1, False, 1), (-1, True, 0), ((0, 2), False, 1)])
def test_std_mean_var_mean(device, name, dim, keepdim, correction):
    a = rnd(2, 3, 4)
    x = mk(a, device)
    spread = np.std if name == "std_mean" else np.var
    kw = {"keepdim": keepdim} if correction == 1 else {"keepdim": keepdim, "correction": correction}
    s, m = getattr(conch, name)(x, dim, **kw)
    check(s, np.asarray(spread(a, axis=dim, ddof=correction, keepdims=keepdim)))
    check(m, np.asarray(np.mean(a, axis=dim, keepdims=keepdim)))
    s2, _ = getattr(conch, name)(x, dim=dim, unbiased=correction == 1, keepdim=keepdim)
    check(s2, np.asarray(spread(a, axis=dim, ddof=correction, keepdims=keepdim)))
    assert gradcheck(lambda t: tuple(getattr(conch, name)(t, dim, **kw)), (x,))


def test_std_mean_no_dim(device):
    a = rnd(3, 5)
    s, m = conch.std_mean(mk(a, device))
    check(s, np.asarray(np.std(a, ddof=1)))
    check(m, np.asarray(np.mean(a)))


@pytest.mark.parametrize("n", [5, 6, 1])
def test_median_whole_tensor_is_lower_median(device, n):
    a = distinct(n)
    x = mk(a, device)
    expected = np.sort(a)[(n - 1) // 2]  # the lower of the two middle values when n is even (not their mean)
    check(x.median(), np.asarray(expected))
    check(conch.median(x), np.asarray(expected))
    assert gradcheck(lambda t: t.median(), (x,))
    check(grad_of(lambda t: t.median(), x), (a == expected).astype(np.float64))


@pytest.mark.parametrize("dim,keepdim", [(0, False), (1, False), (-1, True), (-2, False)])
def test_median_dim(device, dim, keepdim):
    a = distinct(2, 5, 4)
    x = mk(a, device)
    n = a.shape[dim]
    order = np.argsort(a, axis=dim)
    idx = np.take(order, [(n - 1) // 2], axis=dim)
    vals = np.take_along_axis(a, idx, axis=dim)
    if not keepdim:
        idx, vals = idx.squeeze(dim), vals.squeeze(dim)
    for r in (x.median(dim, keepdim=keepdim), conch.median(x, dim=dim, keepdim=keepdim)):
        v, i = r
        check(v, vals)
        check(i, idx, dtype=conch.int64)
        check(r.values, vals)
        check(r.indices, idx)
    assert gradcheck(lambda t: t.median(dim, keepdim=keepdim).values, (x,))


def test_median_of_matrix_flattens(device):
    a = distinct(3, 4)
    check(mk(a, device).median(), np.asarray(np.sort(a.ravel())[5]))


def _logsumexp(a, axis, keepdims=False):
    m = np.max(a, axis=axis, keepdims=True)
    out = np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis)


@pytest.mark.parametrize("dim,keepdim", [(0, False), (-1, True), ((0, 2), False), (1, False)])
def test_logsumexp(device, dim, keepdim):
    a = rnd(2, 3, 4) * 3
    x = mk(a, device)
    check(x.logsumexp(dim, keepdim=keepdim), _logsumexp(a, dim, keepdim), rtol=1e-12)
    check(conch.logsumexp(x, dim, keepdim=keepdim), _logsumexp(a, dim, keepdim), rtol=1e-12)
    assert gradcheck(lambda t: t.logsumexp(dim, keepdim=keepdim), (x,))
    big = np.array([[1000.0, 1000.5, -1000.0], [-2000.0, -2001.0, -1999.5]])  # no overflow or underflow
    check(mk(big, device).logsumexp(1), _logsumexp(big, 1), rtol=1e-12)


# ---------------------------------------------------------------- sorting


@pytest.mark.parametrize("dim", [-1, 0, 1])
@pytest.mark.parametrize("descending", [False, True])
def test_sort(device, dim, descending):
    a = distinct(2, 3, 4)
    x = mk(a, device)
    order = np.argsort(-a if descending else a, axis=dim)
    vals = np.take_along_axis(a, order, axis=dim)
    kw = {"dim": dim, "descending": descending}
    for r in (x.sort(**kw), conch.sort(x, **kw)):
        v, i = r
        check(v, vals)
        check(i, order, dtype=conch.int64)
        check(r.values, vals)
        check(r.indices, order)
    check(x.argsort(**kw), order, dtype=conch.int64)
    check(conch.argsort(x, **kw), order, dtype=conch.int64)
    assert gradcheck(lambda t: t.sort(**kw).values, (x,))
    g = rnd(2, 3, 4, seed=7)
    gx = np.zeros_like(a)
    np.put_along_axis(gx, order, g, axis=dim)  # each value's gradient goes back to where it came from
    check(grad_of(lambda t: t.sort(**kw)[0], x, mk(g, device, grad=False)), gx)


def test_sort_defaults(device):
    a = distinct(3, 5)
    x = mk(a, device)
    check(x.sort()[0], np.sort(a, axis=-1))
    check(x.sort(0)[1], np.argsort(a, axis=0))
    check(x.argsort(), np.argsort(a, axis=-1))
    check(x.sort(descending=True).values, -np.sort(-a, axis=-1))


def test_sort_integer(device):
    a = np.array([[5, -2, 9, 0], [1, 7, -3, 4]])
    v, i = ix(a, device).sort(1)
    check(v, np.sort(a, axis=1), dtype=conch.int64)
    check(i, np.argsort(a, axis=1))


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("dim", [-1, 0, 1])
@pytest.mark.parametrize("largest", [True, False])
def test_topk(device, k, dim, largest):
    a = distinct(3, 5, 4)
    x = mk(a, device)
    order = np.argsort(-a if largest else a, axis=dim)
    idx = np.take(order, range(k), axis=dim)
    vals = np.take_along_axis(a, idx, axis=dim)
    for r in (x.topk(k, dim=dim, largest=largest), conch.topk(x, k, dim=dim, largest=largest)):
        v, i = r
        check(v, vals)
        check(i, idx, dtype=conch.int64)
        check(r.values, vals)
        check(r.indices, idx)
    assert gradcheck(lambda t: t.topk(k, dim=dim, largest=largest).values, (x,))
    g = np.random.default_rng(3).standard_normal(vals.shape)
    gx = np.zeros_like(a)
    np.put_along_axis(gx, idx, g, axis=dim)  # gradients flow back to the selected positions only
    check(grad_of(lambda t: t.topk(k, dim=dim, largest=largest)[0], x, mk(g, device, grad=False)), gx)


def test_topk_defaults_and_unsorted(device):
    a = distinct(3, 5)
    x = mk(a, device)
    check(x.topk(2).values, -np.sort(-a, axis=-1)[:, :2])
    v, i = x.topk(3, sorted=False)
    assert tuple(v.shape) == (3, 3) and tuple(i.shape) == (3, 3)
    # unsorted: the same set of values, each matching its index
    np.testing.assert_allclose(np.sort(npy(v), axis=1), np.sort(-np.sort(-a, axis=1)[:, :3], axis=1))
    np.testing.assert_allclose(npy(v), np.take_along_axis(a, npy(i), axis=1))
    check(x.topk(5).values, -np.sort(-a, axis=-1))  # k = size: the whole sorted row


# ---------------------------------------------------------------- indexing


def _gather_ref(a, dim, idx):
    out = np.empty(idx.shape)
    for pos in np.ndindex(*idx.shape):
        src = list(pos)
        src[dim] = idx[pos]
        out[pos] = a[tuple(src)]
    return out


@pytest.mark.parametrize(
    "dim,index",
    [
        (1, [[0, 4], [2, 2], [3, 1]]),  # repeated indices: their gradients accumulate
        (0, [[2, 0, 1, 1, 0], [1, 1, 0, 2, 2]]),
        (-1, [[4], [0], [3]]),
        (1, [[1, 0, 3]]),  # an index smaller than the input in the other dims
    ],
)
def test_gather(device, dim, index):
    a = rnd(3, 5)
    idx = np.array(index)
    x = mk(a, device)
    ref = _gather_ref(a, dim % 2, idx)
    check(x.gather(dim, ix(idx, device)), ref)
    check(conch.gather(x, dim, ix(idx, device)), ref)
    assert gradcheck(lambda t: t.gather(dim, ix(idx, device)), (x,))


def test_gather_3d_matches_take_along_axis(device):
    a = rnd(2, 3, 4)
    idx = np.random.default_rng(1).integers(0, 3, (2, 3, 4))
    check(mk(a, device).gather(-2, ix(idx, device)), np.take_along_axis(a, idx, axis=-2))


def _scatter_ref(a, dim, idx, src, add=False):
    out = a.copy()
    for pos in np.ndindex(*idx.shape):
        dst = list(pos)
        dst[dim] = idx[pos]
        val = src[pos] if isinstance(src, np.ndarray) else src
        if add:
            out[tuple(dst)] += val
        else:
            out[tuple(dst)] = val
    return out


SCATTER_INDEX = np.array([[4, 0], [1, 3], [2, 0]])  # distinct per row: scatter is then deterministic


@pytest.mark.parametrize("dim", [1, -1])
def test_scatter_src(device, dim):
    a, s = rnd(3, 5), rnd(3, 2, seed=1)
    x, src, idx = mk(a, device), mk(s, device), ix(SCATTER_INDEX, device)
    ref = _scatter_ref(a, 1, SCATTER_INDEX, s)
    check(x.scatter(dim, idx, src), ref)
    check(conch.scatter(x, dim, idx, src), ref)
    check(x, a)  # out of place
    assert gradcheck(lambda t, u: t.scatter(dim, idx, u), (x, src))
    x.scatter(dim, idx, src).backward(mk(np.arange(15.0).reshape(3, 5), device, grad=False))
    written = _scatter_ref(np.zeros((3, 5)), 1, SCATTER_INDEX, 1.0)
    check(x.grad, np.arange(15.0).reshape(3, 5) * (written == 0))
    check(src.grad, _gather_ref(np.arange(15.0).reshape(3, 5), 1, SCATTER_INDEX))


def test_scatter_larger_src_and_dim0(device):
    a, s = rnd(3, 5), rnd(4, 5, seed=1)
    idx = np.array([[2, 0, 1, 0, 2], [0, 1, 2, 1, 0]])  # (2, 5): only src[:2] is used
    x, src = mk(a, device), mk(s, device)
    check(x.scatter(0, ix(idx, device), src), _scatter_ref(a, 0, idx, s[:2]))
    # w.r.t. the input only: PyTorch itself cannot backpropagate into a src larger than the index
    assert gradcheck(lambda t: t.scatter(0, ix(idx, device), src.detach()), (x,))


def test_scatter_value(device):
    a = rnd(3, 5)
    x, idx = mk(a, device), ix(SCATTER_INDEX, device)
    ref = _scatter_ref(a, 1, SCATTER_INDEX, 2.5)
    check(x.scatter(1, idx, value=2.5), ref)
    check(x.scatter(1, idx, 2.5), ref)
    check(conch.scatter(x, 1, idx, value=2.5), ref)
    assert gradcheck(lambda t: t.scatter(1, idx, value=2.5), (x,))


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_scatter_add(device, dim):
    a = rnd(3, 5)
    if dim == 0:
        idx = np.array([[2, 0, 2, 0, 1], [2, 2, 0, 1, 1]])  # repeated targets accumulate
    else:
        idx = np.array([[4, 4, 0], [1, 1, 1], [0, 2, 0]])
    s = rnd(*idx.shape, seed=1)
    x, src, index = mk(a, device), mk(s, device), ix(idx, device)
    ref = _scatter_ref(a, dim % 2, idx, s, add=True)
    check(x.scatter_add(dim, index, src), ref)
    check(conch.scatter_add(x, dim, index, src), ref)
    check(x, a)
    assert gradcheck(lambda t, u: t.scatter_add(dim, index, u), (x, src))


def test_scatter_add_matches_np_add_at(device):
    idx = np.array([0, 3, 3, 1, 3, 0, 5])
    s = rnd(7, seed=2)
    expected = np.zeros(6)
    np.add.at(expected, idx, s)
    check(mk(np.zeros(6), device).scatter_add(0, ix(idx, device), mk(s, device)), expected)


@pytest.mark.parametrize("dim,index", [(0, [2, 0, 2]), (1, [4, 0, 1, 1]), (-1, [3]), (-2, [1, 1, 1, 0])])
def test_index_select(device, dim, index):
    a = rnd(3, 5)
    x = mk(a, device)
    idx = ix(index, device)
    check(x.index_select(dim, idx), np.take(a, index, axis=dim))
    check(conch.index_select(x, dim, idx), np.take(a, index, axis=dim))
    assert gradcheck(lambda t: t.index_select(dim, idx), (x,))
    counts = np.bincount(np.array(index), minlength=a.shape[dim]).astype(np.float64)  # repeats accumulate
    shape = [1, 1]
    shape[dim] = -1
    check(grad_of(lambda t: t.index_select(dim, idx), x), np.broadcast_to(counts.reshape(shape), a.shape))


def test_index_select_3d(device):
    a = rnd(2, 3, 4)
    check(mk(a, device).index_select(1, ix([2, 0], device)), a[:, [2, 0]])


@pytest.mark.parametrize("mask_shape", [(3, 5), (5,), (3, 1)])
def test_masked_select(device, mask_shape):
    a = rnd(3, 5)
    m = np.random.default_rng(4).random(mask_shape) < 0.5
    m.flat[0] = True
    x, mask = mk(a, device), conch.tensor(m, device=device)
    ref = a[np.broadcast_to(m, a.shape)]
    check(x.masked_select(mask), ref)
    check(conch.masked_select(x, mask), ref)
    assert x.masked_select(mask).ndim == 1
    assert gradcheck(lambda t: t.masked_select(mask), (x,))
    check(grad_of(lambda t: t.masked_select(mask), x), np.broadcast_to(m, a.shape).astype(np.float64))


def test_masked_select_broadcasts_input(device):
    a = rnd(5)
    m = np.array([[True, False, True, False, False], [False, True, True, True, False]])
    x = mk(a, device)
    check(x.masked_select(conch.tensor(m, device=device)), np.broadcast_to(a, (2, 5))[m])
    assert gradcheck(lambda t: t.masked_select(conch.tensor(m, device=device)), (x,))


@pytest.mark.parametrize(
    "a",
    [
        rnd(3, 5) * (rnd(3, 5, seed=1) > 0),
        np.array([0, 3, 0, -1, 2]),
        np.random.default_rng(2).random((2, 3, 4)) < 0.4,
        np.zeros((2, 3)),
    ],
    ids=["float2d", "int1d", "bool3d", "empty"],
)
def test_nonzero(device, a):
    x = conch.tensor(a, device=device)
    check(x.nonzero(), np.argwhere(a), dtype=conch.int64)
    check(conch.nonzero(x), np.argwhere(a), dtype=conch.int64)
    assert tuple(x.nonzero().shape) == (np.count_nonzero(a), a.ndim)
    parts = x.nonzero(as_tuple=True)
    assert isinstance(parts, tuple) and len(parts) == a.ndim
    for p, r in zip(parts, np.nonzero(a)):
        check(p, r, dtype=conch.int64)
    for p, r in zip(conch.nonzero(x, as_tuple=True), np.nonzero(a)):
        check(p, r)


@pytest.mark.parametrize("dim,start,length", [(0, 1, 2), (-1, 1, 3), (1, 0, 5), (1, -3, 2), (1, 4, 0)])
def test_narrow(device, dim, start, length):
    a = rnd(3, 5)
    x = mk(a, device)
    s = start % a.shape[dim]
    ref = np.take(a, range(s, s + length), axis=dim)
    check(x.narrow(dim, start, length), ref)
    check(conch.narrow(x, dim, start, length), ref)
    if length:
        assert gradcheck(lambda t: t.narrow(dim, start, length), (x,))


@pytest.mark.parametrize("dim,index", [(0, 1), (1, 2), (-1, -1), (2, 0), (-3, -2)])
def test_select(device, dim, index):
    a = rnd(2, 3, 4)
    x = mk(a, device)
    ref = np.take(a, index, axis=dim)
    check(x.select(dim, index), ref)
    check(conch.select(x, dim, index), ref)
    assert gradcheck(lambda t: t.select(dim, index), (x,))


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_take_along_dim(device, dim):
    a = rnd(3, 5)
    idx = np.random.default_rng(1).integers(0, a.shape[dim], (3, 5))
    x, index = mk(a, device), ix(idx, device)
    ref = np.take_along_axis(a, idx, axis=dim)
    check(conch.take_along_dim(x, index, dim), ref)
    check(x.take_along_dim(index, dim=dim), ref)
    assert gradcheck(lambda t: conch.take_along_dim(t, index, dim=dim), (x,))


def test_take_along_dim_flat_and_argsort(device):
    a = distinct(3, 5)
    x = mk(a, device)
    flat = np.array([14, 0, 7, 7])
    check(conch.take_along_dim(x, ix(flat, device)), a.ravel()[flat])  # dim=None indexes the flattened input
    check(conch.take_along_dim(x, x.argsort(1), 1), np.sort(a, axis=1))


# ---------------------------------------------------------------- shape


@pytest.mark.parametrize("source,destination", [(0, -1), (-1, 0), ((0, 1), (2, 0)), ((2,), (1,)), (1, 1)])
def test_movedim(device, source, destination):
    a = rnd(2, 3, 4)
    x = mk(a, device)
    ref = np.moveaxis(a, source, destination)
    check(x.movedim(source, destination), ref)
    check(conch.movedim(x, source, destination), ref)
    assert gradcheck(lambda t: t.movedim(source, destination), (x,))


@pytest.mark.parametrize(
    "shape,offset,dim1,dim2",
    [((3, 5), 0, 0, 1), ((3, 5), 2, 0, 1), ((3, 5), -1, 0, 1), ((3, 5), 1, 1, 0), ((2, 3, 4), 1, -1, 0),
     ((2, 3, 4), -1, 1, 2), ((3, 5), 7, 0, 1)],
)  # fmt: skip
def test_diagonal(device, shape, offset, dim1, dim2):
    a = rnd(*shape)
    x = mk(a, device)
    ref = np.diagonal(a, offset, dim1, dim2)
    check(x.diagonal(offset=offset, dim1=dim1, dim2=dim2), ref)
    check(x.diagonal(offset, dim1, dim2), ref)
    check(conch.diagonal(x, offset=offset, dim1=dim1, dim2=dim2), ref)
    if ref.size:
        assert gradcheck(lambda t: t.diagonal(offset, dim1, dim2), (x,))


def test_diagonal_default(device):
    a = rnd(4, 3)
    check(mk(a, device).diagonal(), np.diagonal(a))


@pytest.mark.parametrize("k", [0, 1, -2])
def test_diag(device, k):
    v, m = rnd(4), rnd(3, 5)
    check(conch.diag(mk(v, device), k), np.diag(v, k))
    check(conch.diag(mk(m, device), diagonal=k), np.diag(m, k))
    assert gradcheck(lambda t: conch.diag(t, k), (mk(v, device),))
    assert gradcheck(lambda t: conch.diag(t, k), (mk(m, device),))


def test_diag_default(device):
    check(conch.diag(mk([1.0, 2.0, 3.0], device)), np.diag([1.0, 2.0, 3.0]))
    check(conch.diag(ix([[1, 2], [3, 4]], device)), np.array([1, 4]), dtype=conch.int64)


@pytest.mark.parametrize("name", ["tril", "triu"])
@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 4), (5, 2)])
@pytest.mark.parametrize("k", [0, 1, -1, 3, -4])
def test_tril_triu(device, name, shape, k):
    a = rnd(*shape)
    x = mk(a, device)
    ref = getattr(np, name)(a, k)  # NumPy's tril/triu act on the last two dims, as PyTorch's
    check(getattr(x, name)(k), ref)
    check(getattr(x, name)(diagonal=k), ref)
    check(getattr(conch, name)(x, k), ref)
    if k == 0:
        check(getattr(x, name)(), ref)
        assert gradcheck(lambda t: getattr(t, name)(k), (x,))
        check(grad_of(lambda t: getattr(t, name)(k), x), getattr(np, name)(np.ones(shape), k))


def test_tril_integer(device):
    a = np.arange(12).reshape(3, 4)
    check(ix(a, device).tril(), np.tril(a), dtype=conch.int64)


@pytest.mark.parametrize(
    "shifts,dims",
    [(2, None), (-7, None), (1, 0), (-2, -1), ((1, 2), (0, 1)), ((7, -1), (-1, 0)), ((1, 1), (1, 1)), (5, 1)],
)
def test_roll(device, shifts, dims):
    a = rnd(3, 5)
    x = mk(a, device)
    ref = np.roll(a, shifts, axis=dims)
    check(x.roll(shifts, dims), ref)
    check(conch.roll(x, shifts, dims=dims), ref)
    if dims is None:
        check(x.roll(shifts), ref)
    assert gradcheck(lambda t: t.roll(shifts, dims), (x,))


@pytest.mark.parametrize("dims", [(0,), (-1,), (0, 1), (2, 0), (1, -1)])
def test_flip(device, dims):
    a = rnd(2, 3, 4)
    x = mk(a, device)
    ref = np.flip(a, axis=dims)
    check(x.flip(dims), ref)
    check(conch.flip(x, dims), ref)
    assert gradcheck(lambda t: t.flip(dims), (x,))


@pytest.mark.parametrize("sizes", [(2, 1), (1, 3), (2, 2), (2, 1, 3), (1, 2, 1, 1), (1, 1)])
def test_repeat(device, sizes):
    a = rnd(3, 5)
    x = mk(a, device)
    ref = np.tile(a, sizes)  # torch's repeat is NumPy's tile (leading dims added)
    check(x.repeat(*sizes), ref)
    check(x.repeat(sizes), ref)
    assert gradcheck(lambda t: t.repeat(*sizes), (x,))


def test_repeat_gradient_sums_copies(device):
    a = rnd(2, 3)
    x = mk(a, device)
    check(grad_of(lambda t: t.repeat(3, 1, 2), x), np.full((2, 3), 6.0))


@pytest.mark.parametrize("dims", [(2,), (2, 1), (1, 3), (2, 1, 2), (1,)])
def test_tile(device, dims):
    a = rnd(3, 5)
    x = mk(a, device)
    ref = np.tile(a, dims)  # fewer dims than the input: ones are prepended
    check(x.tile(dims), ref)
    check(conch.tile(x, dims), ref)
    assert gradcheck(lambda t: t.tile(dims), (x,))


def test_outer(device):
    u, v = rnd(3), rnd(5, seed=1)
    a, b = mk(u, device), mk(v, device)
    check(conch.outer(a, b), np.outer(u, v))
    assert gradcheck(lambda p, q: conch.outer(p, q), (a, b))


def test_bmm(device):
    p, q = rnd(2, 3, 4), rnd(2, 4, 5, seed=1)
    a, b = mk(p, device), mk(q, device)
    check(conch.bmm(a, b), np.matmul(p, q), rtol=1e-12)
    assert gradcheck(lambda s, t: conch.bmm(s, t), (a, b))


@pytest.mark.parametrize("beta,alpha", [(1, 1), (0.5, -2.0), (0, 1.5)])
@pytest.mark.parametrize("input_shape", [(3, 5), (5,), (1, 5), ()])
def test_addmm(device, beta, alpha, input_shape):
    c, p, q = rnd(*input_shape), rnd(3, 4, seed=1), rnd(4, 5, seed=2)
    inp, m1, m2 = mk(c, device), mk(p, device), mk(q, device)
    ref = beta * c + alpha * (p @ q)
    kw = {} if (beta, alpha) == (1, 1) else {"beta": beta, "alpha": alpha}
    check(conch.addmm(inp, m1, m2, **kw), ref, rtol=1e-12)
    assert gradcheck(lambda i, s, t: conch.addmm(i, s, t, **kw), (inp, m1, m2))


def test_addmm_beta_zero_ignores_nan(device):
    # beta=0: the input is ignored, NaN and inf in it included (as PyTorch)
    p, q = rnd(3, 4, seed=1), rnd(4, 5, seed=2)
    out = conch.addmm(mk(np.full((3, 5), np.nan), device), mk(p, device), mk(q, device), beta=0)
    check(out, p @ q, rtol=1e-12)


@pytest.mark.parametrize("beta,alpha", [(1, 1), (0.5, -2.0)])
@pytest.mark.parametrize("input_shape", [(2, 3, 5), (3, 5), (5,)])
def test_baddbmm(device, beta, alpha, input_shape):
    c, p, q = rnd(*input_shape), rnd(2, 3, 4, seed=1), rnd(2, 4, 5, seed=2)
    inp, b1, b2 = mk(c, device), mk(p, device), mk(q, device)
    ref = beta * c + alpha * np.matmul(p, q)
    kw = {} if (beta, alpha) == (1, 1) else {"beta": beta, "alpha": alpha}
    check(conch.baddbmm(inp, b1, b2, **kw), ref, rtol=1e-12)
    assert gradcheck(lambda i, s, t: conch.baddbmm(i, s, t, **kw), (inp, b1, b2))


@pytest.mark.parametrize("n,dim", [(1, -1), (2, -1), (1, 0), (2, 1), (3, -1), (5, -1), (0, -1)])
def test_diff(device, n, dim):
    a = rnd(3, 5)
    x = mk(a, device)
    ref = np.diff(a, n=n, axis=dim)
    check(x.diff(n=n, dim=dim), ref)
    check(conch.diff(x, n=n, dim=dim), ref)
    if ref.size:
        assert gradcheck(lambda t: t.diff(n=n, dim=dim), (x,))


def test_diff_default(device):
    a = rnd(2, 3, 4)
    check(mk(a, device).diff(), np.diff(a))
    check(ix([1, 4, 9, 16], device).diff(), np.array([3, 5, 7]), dtype=conch.int64)


# ---------------------------------------------------------------- misc


def test_allclose(device):
    a = rnd(3, 5)
    x = mk(a, device, grad=False)
    for b, kw in [
        (a, {}), (a + 1e-9, {}), (a + 1e-3, {}), (a * (1 + 1e-6), {}), (a + 1e-3, {"atol": 1e-2}),
        (a * 1.01, {"rtol": 0.02}), (a * 1.01, {"rtol": 0.001}), (a[0], {}),
    ]:  # fmt: skip
        expected = bool(np.allclose(a, b, **kw))
        got = conch.allclose(x, mk(b, device, grad=False), **kw)
        assert isinstance(got, bool) and got is expected, (kw, got, expected)
    nan = mk([1.0, np.nan], device, grad=False)
    assert conch.allclose(nan, nan) is False
    assert conch.allclose(nan, nan, equal_nan=True) is True


def test_equal(device):
    a = rnd(3, 5)
    x = mk(a, device, grad=False)
    assert conch.equal(x, mk(a.copy(), device, grad=False)) is True
    assert conch.equal(x, mk(a + 1e-12, device, grad=False)) is False
    assert conch.equal(x, mk(a[:, :4], device, grad=False)) is False  # different shapes: not equal, no error
    assert conch.equal(x, mk(a.reshape(5, 3), device, grad=False)) is False
    assert conch.equal(ix([1, 2], device), ix([1, 2], device)) is True


def test_nelement(device):
    for shape in [(3, 5), (2, 3, 4), (), (0, 3)]:
        x = conch.zeros(shape, device=device)
        assert x.nelement() == int(np.prod(shape)) == x.numel()


@pytest.mark.parametrize("a", [np.array([3, 1, 2, 3, 1, 5, 5, 5]), np.array([[2.5, -1.0, 2.5], [0.0, -1.0, 7.0]])])
def test_unique(device, a):
    x = conch.tensor(a, device=device)
    vals, inv, counts = np.unique(a, return_inverse=True, return_counts=True)
    inv = inv.reshape(a.shape)  # the inverse has the input's shape
    check(conch.unique(x), vals, dtype=x.dtype)
    out = conch.unique(x, return_inverse=True)
    assert isinstance(out, tuple) and len(out) == 2
    check(out[0], vals)
    check(out[1], inv, dtype=conch.int64)
    out = conch.unique(x, return_counts=True)
    assert len(out) == 2
    check(out[1], counts, dtype=conch.int64)
    u, i, c = conch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    check(u, vals)
    check(i, inv)
    check(c, counts)
    np.testing.assert_array_equal(npy(u)[npy(i)], a)  # the inverse rebuilds the input


def test_unique_method(device):
    a = np.array([[2.5, -1.0, 2.5], [0.0, -1.0, 7.0]])
    u, c = conch.tensor(a, device=device).unique(return_counts=True)
    check(u, [-1.0, 0.0, 2.5, 7.0])
    check(c, np.array([2, 1, 2, 1]), dtype=conch.int64)


@pytest.mark.parametrize("minlength", [0, 3, 10])
def test_bincount(device, minlength):
    a = np.array([0, 2, 2, 5, 1, 2, 0])
    out = conch.bincount(ix(a, device), minlength=minlength)
    check(out, np.bincount(a, minlength=minlength), dtype=conch.int64)
    check(conch.bincount(ix(np.zeros(0), device), minlength=minlength), np.zeros(minlength, dtype=np.int64))


def test_multinomial_without_replacement(device):
    conch.manual_seed(0)
    probs = np.array([[0.2, 0.0, 0.5, 0.3, 0.1], [1.0, 1.0, 0.0, 0.0, 2.0], [0.0, 0.1, 0.1, 0.1, 0.0]])
    p = mk(probs, device, grad=False)
    for _ in range(20):
        s = conch.multinomial(p, 3)
        assert tuple(s.shape) == (3, 3) and s.dtype == conch.int64
        got = npy(s)
        assert ((got >= 0) & (got < 5)).all()
        for row, pr in zip(got, probs):
            assert len(set(row.tolist())) == 3, f"repeated draws without replacement: {row}"
            assert (pr[row] > 0).all(), f"drew a zero-probability class: {row}"
    s = conch.multinomial(p[0], 4)  # 1-D probabilities: a 1-D sample
    assert tuple(s.shape) == (4,) and s.dtype == conch.int64
    assert sorted(npy(s).tolist()) == [0, 2, 3, 4]  # the only 4 classes with nonzero probability


def test_multinomial_with_replacement(device):
    conch.manual_seed(0)
    probs = np.array([[0.1, 0.0, 0.2, 0.7], [0.0, 3.0, 0.0, 1.0]])  # unnormalised weights are fine
    s = npy(conch.multinomial(mk(probs, device, grad=False), 4000, replacement=True))
    assert s.shape == (2, 4000) and s.dtype == np.int64
    assert ((s >= 0) & (s < 4)).all()
    for row, pr in zip(s, probs):
        assert (pr[row] > 0).all(), "drew a zero-probability class"
        freq = np.bincount(row, minlength=4) / row.size
        np.testing.assert_allclose(freq, pr / pr.sum(), atol=0.04)


def test_multinomial_seeded(device):
    p = mk([0.3, 0.2, 0.5, 0.4, 0.1], device, grad=False)
    conch.manual_seed(0)
    a = npy(conch.multinomial(p, 5))
    conch.manual_seed(0)
    b = npy(conch.multinomial(p, 5))
    np.testing.assert_array_equal(a, b)
    assert sorted(a.tolist()) == [0, 1, 2, 3, 4]  # every class once when drawing all of them without replacement


# ---------------------------------------------------------------- errors users hit


def _errors(d):
    x = mk(rnd(3, 5), d)
    i2 = ix([[0, 1], [2, 3], [1, 1]], d)
    z3 = conch.zeros(2, 3, 4, device=d)
    return [
        ("sort dim", lambda: x.sort(2), IndexError, "[Dd]im"),
        ("argsort dim", lambda: x.argsort(-3), IndexError, "[Dd]im"),
        ("topk dim", lambda: x.topk(1, dim=2), IndexError, "[Dd]im"),
        ("topk k", lambda: x.topk(6), RuntimeError, "range"),
        ("prod dim", lambda: x.prod(2), IndexError, "[Dd]im"),
        ("cumprod dim", lambda: x.cumprod(-3), IndexError, "[Dd]im"),
        ("median dim", lambda: x.median(3), IndexError, "[Dd]im"),
        ("count_nonzero dim", lambda: x.count_nonzero(2), IndexError, "[Dd]im"),
        ("gather dim", lambda: x.gather(2, i2), IndexError, "[Dd]im"),
        ("gather index out of range", lambda: x.gather(1, ix([[5], [0], [0]], d)), RuntimeError, "out of bounds|range"),
        ("gather index ndim", lambda: x.gather(1, ix([0, 1], d)), RuntimeError, "dimension"),
        ("scatter index out of range", lambda: x.scatter(1, ix([[7]], d), 1.0), RuntimeError, "out of bounds|range"),
        (
            "scatter_add index out of range",
            lambda: x.scatter_add(1, ix([[7]], d), mk([[1.0]], d)),
            RuntimeError,
            "out of bounds|range",
        ),  # fmt: skip
        (
            "index_select out of range",
            lambda: x.index_select(1, ix([5], d)),
            (IndexError, RuntimeError),
            "out of (range|bounds)|bounds",
        ),  # fmt: skip
        ("index_select dim", lambda: x.index_select(2, ix([0], d)), IndexError, "[Dd]im"),
        ("index_select 2-D index", lambda: x.index_select(1, ix([[0]], d)), IndexError, "vector|1-D|dim"),
        (
            "masked_select shape",
            lambda: x.masked_select(conch.ones(4, dtype=conch.bool, device=d)),
            RuntimeError,
            "size|shape",
        ),  # fmt: skip
        ("narrow past the end", lambda: x.narrow(1, 3, 4), RuntimeError, "exceeds|size|range"),
        ("narrow dim", lambda: x.narrow(2, 0, 1), IndexError, "[Dd]im"),
        ("select index", lambda: x.select(1, 5), IndexError, "out of range|index"),
        ("select dim", lambda: x.select(2, 0), IndexError, "[Dd]im"),
        ("movedim repeated", lambda: x.movedim((0, 1), (0, 0)), RuntimeError, "repeated"),
        ("movedim lengths", lambda: x.movedim((0, 1), (0,)), RuntimeError, "same number|source|destination"),
        ("movedim dim", lambda: x.movedim(2, 0), IndexError, "[Dd]im"),
        ("diagonal same dims", lambda: x.diagonal(0, 1, 1), RuntimeError, "identical|same|dim"),
        ("diag 3-D", lambda: conch.diag(z3), RuntimeError, "1D or 2D|1-D|dim"),
        ("tril 1-D", lambda: mk(rnd(3), d).tril(), RuntimeError, "2 dim|dimensions|dim"),
        ("roll shifts/dims mismatch", lambda: x.roll((1, 2), (0,)), RuntimeError, "align|shifts|dims"),
        ("roll dim", lambda: x.roll(1, 2), IndexError, "[Dd]im"),
        ("repeat fewer sizes", lambda: x.repeat(2), RuntimeError, "dimensions|dims|smaller"),
        ("flip dim", lambda: x.flip((2,)), IndexError, "[Dd]im"),
        ("bmm inner", lambda: conch.bmm(z3, conch.zeros(2, 5, 6, device=d)), RuntimeError, "size|shape"),
        ("bmm batch", lambda: conch.bmm(z3, conch.zeros(3, 4, 6, device=d)), RuntimeError, "size|shape|batch"),
        (
            "bmm 2-D",
            lambda: conch.bmm(conch.zeros(3, 4, device=d), conch.zeros(4, 6, device=d)),
            RuntimeError,
            "3D|3-D|dim",
        ),  # fmt: skip
        (
            "addmm shapes",
            lambda: conch.addmm(conch.zeros(2, 2, device=d), conch.zeros(2, 3, device=d), conch.zeros(4, 2, device=d)),
            RuntimeError,
            "shape|multiplied",
        ),  # fmt: skip
        (
            "outer 2-D",
            lambda: conch.outer(conch.zeros(2, 2, device=d), conch.zeros(2, device=d)),
            RuntimeError,
            "1-D|1D|dim",
        ),  # fmt: skip
        ("lerp shapes", lambda: conch.lerp(mk(rnd(3), d), mk(rnd(4), d), 0.5), RuntimeError, "size|shape"),
        (
            "addcmul shapes",
            lambda: conch.addcmul(mk(rnd(3), d), mk(rnd(4), d), mk(rnd(3), d)),
            RuntimeError,
            "size|shape",
        ),  # fmt: skip
        ("atan2 shapes", lambda: conch.atan2(mk(rnd(3), d), mk(rnd(4), d)), RuntimeError, "size|shape"),
        ("diff negative n", lambda: x.diff(n=-1), RuntimeError, "non-negative|negative|order"),
        ("diff dim", lambda: x.diff(dim=2), IndexError, "[Dd]im"),
        ("logsumexp dim", lambda: x.logsumexp(3), IndexError, "[Dd]im"),
        ("bincount negative", lambda: conch.bincount(ix([-1, 2], d)), RuntimeError, "non-negative|negative"),
        ("bincount 2-D", lambda: conch.bincount(ix([[1, 2]], d)), RuntimeError, "1-d|1-D|1D"),
        (
            "multinomial too many",
            lambda: conch.multinomial(conch.ones(3, device=d), 4),
            RuntimeError,
            "without replacement|n_sample",
        ),  # fmt: skip
        (
            "multinomial negative",
            lambda: conch.multinomial(mk([1.0, -1.0, 1.0], d, grad=False), 1),
            RuntimeError,
            "< 0|negative|probability",
        ),  # fmt: skip
        (
            "multinomial all zero",
            lambda: conch.multinomial(conch.zeros(3, device=d), 1),
            RuntimeError,
            "sum of probabilities|<= 0|zero",
        ),  # fmt: skip
        (
            "multinomial 3-D",
            lambda: conch.multinomial(conch.ones(2, 2, 2, device=d), 1),
            RuntimeError,
            "1 or 2 dim|dim",
        ),  # fmt: skip
        ("aminmax empty", lambda: conch.zeros(0, device=d).aminmax(), RuntimeError, "empty|numel"),
    ]


ERROR_NAMES = [e[0] for e in _errors("cpu")]


@pytest.mark.parametrize("name", ERROR_NAMES)
def test_errors(device, name):
    _, fn, exc, match = next(e for e in _errors(device) if e[0] == name)
    with pytest.raises(exc, match=match):
        fn()
        # an index range check on a GPU raises at the next host sync (a device-side assert), not in the op
        conch.cuda.synchronize()


# ---------------------------------------------------------------- p-norms: gradients, also at zero


@pytest.mark.parametrize("p", [2, 3, 1.5])
@pytest.mark.parametrize("dim,keepdim", [(None, False), (1, False), ((0, 1), True), (-1, True)])
def test_norm_values_and_gradcheck(p, dim, keepdim):
    x = rnd(3, 4, seed=7)
    axis = tuple(dim) if isinstance(dim, tuple) else dim
    want = (np.abs(x) ** p).sum(axis=axis, keepdims=keepdim) ** (1 / p)
    t = conch.tensor(x, requires_grad=True)
    np.testing.assert_allclose(t.norm(p, dim, keepdim).detach().numpy(), want, rtol=1e-12)
    assert gradcheck(lambda t: t.norm(p, dim, keepdim), (t,))


def test_norm_gradient_is_zero_where_the_norm_is_zero():
    # d‖x‖/dx = x/‖x‖ has no limit at 0; PyTorch's subgradient there is 0, where sqrt(Σx²) gives NaN
    x = conch.tensor([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]], dtype=conch.float64, requires_grad=True)
    (x.norm(dim=1).sum() + x.norm(3, dim=1).sum()).backward()
    r3 = np.array([3.0, 4.0, 0.0]) ** 2 / (27 + 64) ** (2 / 3)  # x²/‖x‖₃² for p = 3
    np.testing.assert_allclose(x.grad.numpy(), [[0, 0, 0], [0.6 + r3[0], 0.8 + r3[1], 0]], rtol=1e-12)
    z = conch.zeros(2, 3, requires_grad=True)
    conch.nn.functional.normalize(z, dim=1).sum().backward()
    assert np.isfinite(z.grad.numpy()).all()


# ---------------------------------------------------------------- repeat_interleave, meshgrid, cdist, bernoulli...


def test_repeat_interleave_against_numpy_and_gradcheck():
    x = rnd(3, 4, seed=3)
    t = conch.tensor(x, requires_grad=True)
    np.testing.assert_array_equal(t.repeat_interleave(2).detach().numpy(), np.repeat(x, 2))
    reps = [2, 0, 3]
    out = conch.repeat_interleave(t, conch.tensor(reps), dim=0)
    np.testing.assert_array_equal(out.detach().numpy(), np.repeat(x, reps, axis=0))
    assert gradcheck(lambda t: t.repeat_interleave(conch.tensor([1, 2, 0, 3]), dim=1), (t,))
    with pytest.raises(RuntimeError, match="repeats must have shape"):
        t.repeat_interleave(conch.tensor([1, 2]), dim=0)
    with pytest.raises(RuntimeError, match="negative"):
        t.repeat_interleave(-1)


@pytest.mark.parametrize("indexing", ["ij", "xy"])
def test_meshgrid_and_broadcast_tensors(indexing):
    a, b, c = rnd(3, seed=1), rnd(2, seed=2), rnd(4, seed=3)
    ts = [conch.tensor(v, requires_grad=True) for v in (a, b, c)]
    got = conch.meshgrid(*ts, indexing=indexing)
    for g, w in zip(got, np.meshgrid(a, b, c, indexing=indexing)):
        np.testing.assert_array_equal(g.detach().numpy(), w)
    assert gradcheck(lambda a, b: [g * 1.0 for g in conch.meshgrid(a, b, indexing=indexing)], tuple(ts[:2]))
    x, y = conch.broadcast_tensors(conch.ones(3, 1), conch.zeros(4))
    assert x.shape == y.shape == (3, 4)


def test_cdist_dist_against_numpy_and_zero_distance_gradient():
    a, b = rnd(4, 3, seed=4), rnd(5, 3, seed=5)
    for p in (2.0, 1.0, 3.0):
        want = (np.abs(a[:, None] - b[None]) ** p).sum(-1) ** (1 / p)
        ta, tb = conch.tensor(a, requires_grad=True), conch.tensor(b, requires_grad=True)
        np.testing.assert_allclose(conch.cdist(ta, tb, p).detach().numpy(), want, rtol=1e-12)
        assert gradcheck(lambda x, y, p=p: conch.cdist(x, y, p), (ta, tb))
    b[1] = a[2]  # a coinciding pair: its distance is 0 and its gradient 0, not NaN
    ta = conch.tensor(a, requires_grad=True)
    conch.cdist(ta, conch.tensor(b)).sum().backward()
    assert np.isfinite(ta.grad.numpy()).all()
    np.testing.assert_allclose(conch.dist(conch.tensor(a), conch.tensor(a * 0)).item(), np.sqrt((a * a).sum()))


def test_bernoulli_statistics_seed_and_range():
    conch.manual_seed(0)
    probs = conch.tensor(np.linspace(0, 1, 5)).reshape(5, 1).expand(5, 4000)
    draws = conch.bernoulli(probs).numpy()
    assert set(np.unique(draws)) <= {0.0, 1.0} and draws[0].sum() == 0 and draws[-1].sum() == 4000
    np.testing.assert_allclose(draws.mean(1), np.linspace(0, 1, 5), atol=0.03)
    conch.manual_seed(0)
    np.testing.assert_array_equal(conch.bernoulli(probs).numpy(), draws)
    with pytest.raises(RuntimeError, match=r"\[0, 1\]"):
        conch.bernoulli(conch.tensor([1.5]))


def test_inference_mode_forms():
    w = conch.ones(2, requires_grad=True)
    with conch.inference_mode():
        assert not (w * 2).requires_grad
    assert conch.is_grad_enabled()

    @conch.inference_mode
    def bare(x):
        return x * 2

    @conch.inference_mode()
    def called(x):
        return x * 2

    assert not bare(w).requires_grad and not called(w).requires_grad
    with conch.inference_mode(False):
        assert (w * 2).requires_grad


def test_set_printoptions_changes_the_repr():
    x = conch.tensor([1.0 / 3.0])
    saved = np.get_printoptions()
    try:
        conch.set_printoptions(precision=2)
        assert "0.33" in repr(x) and "0.333" not in repr(x)
        conch.set_printoptions(profile="full")
        assert "..." not in repr(conch.arange(3000))
    finally:
        np.set_printoptions(**saved)  # NumPy's print options are global: leave them as found


def test_compile_returns_the_model_unchanged():
    model = conch.nn.Linear(3, 2)
    assert conch.compile(model) is model and conch.compile(mode="max-autotune")(model) is model

    @conch.compile
    def f(x):
        return x * 2

    assert f(conch.ones(2)).tolist() == [2.0, 2.0]
    with pytest.raises(TypeError, match="Module or a function"):
        conch.compile(3)
