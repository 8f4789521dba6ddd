"""Issue #14's maths and views: elementwise maths, bitwise ops, rounding division, axis= aliases, scans, in-place
methods, PyTorch's view rule and view(dtype), each against NumPy (float64) with gradchecks where differentiable."""

import numpy as np
import pytest

import conch
from conch.autograd import gradcheck, gradgradcheck
from conch.tensor import _view_strides


def npy(t):
    return t.detach().cpu().numpy()


def _shares(a, b):
    """Whether two tensors' storages overlap (on a GPU: their device address ranges)."""
    x, y = a._data, b._data
    if isinstance(x, np.ndarray):
        return np.shares_memory(x, y)
    lo = lambda t: t.data.ptr  # noqa: E731
    return lo(x) < lo(y) + y.nbytes and lo(y) < lo(x) + x.nbytes


def f64(a, device, grad=False):
    return conch.tensor(np.asarray(a, dtype=np.float64), device=device, requires_grad=grad)


RNG = np.random.default_rng(0)

# name -> (NumPy reference, a sampler of the domain)
UNARY = {
    "tan": (np.tan, lambda s: RNG.uniform(-1.2, 1.2, s)),
    "sinh": (np.sinh, lambda s: RNG.normal(size=s)),
    "cosh": (np.cosh, lambda s: RNG.normal(size=s)),
    "asin": (np.arcsin, lambda s: RNG.uniform(-0.9, 0.9, s)),
    "acos": (np.arccos, lambda s: RNG.uniform(-0.9, 0.9, s)),
    "atan": (np.arctan, lambda s: RNG.normal(size=s) * 3),
    "asinh": (np.arcsinh, lambda s: RNG.normal(size=s) * 3),
    "acosh": (np.arccosh, lambda s: RNG.uniform(1.1, 4, s)),
    "atanh": (np.arctanh, lambda s: RNG.uniform(-0.9, 0.9, s)),
    "log2": (np.log2, lambda s: RNG.uniform(0.1, 5, s)),
    "log10": (np.log10, lambda s: RNG.uniform(0.1, 5, s)),
    "exp2": (np.exp2, lambda s: RNG.normal(size=s) * 3),
}


@pytest.mark.parametrize("name", UNARY)
def test_unary_maths(name, device):
    ref, sample = UNARY[name]
    a = sample((3, 7))
    for dt, tol in ((conch.float32, 1e-5), (conch.float64, 1e-12)):
        x = conch.tensor(a, dtype=dt, device=device)
        for out in (getattr(x, name)(), getattr(conch, name)(x), getattr(x.T, name)().T):
            assert out.dtype == dt
            np.testing.assert_allclose(npy(out), ref(a), rtol=tol, atol=tol)
    with np.errstate(all="ignore"):
        assert getattr(conch.tensor([1, 2], device=device), name)().dtype == conch.float32  # integers promote
    x = f64(sample((2, 3)), device, grad=True)
    assert gradcheck(lambda t: getattr(t, name)(), (x,))
    assert gradgradcheck(lambda t: getattr(t, name)(), (x,))


def test_arc_aliases_and_inplace_unary(device):
    x = conch.tensor([0.5, -0.25], device=device)
    np.testing.assert_allclose(npy(x.arcsin()), npy(x.asin()))
    np.testing.assert_allclose(npy(conch.arctanh(x)), np.arctanh([0.5, -0.25]), rtol=1e-6)
    y = x.clone()
    assert y.tan_() is y
    np.testing.assert_allclose(npy(y), np.tan([0.5, -0.25]), rtol=1e-6)


BINARY = {
    "fmod": np.fmod,
    "remainder": np.remainder,
    "copysign": np.copysign,
    "logaddexp": np.logaddexp,
    "hypot": np.hypot,
}


@pytest.mark.parametrize("name", BINARY)
def test_binary_maths(name, device):
    a = RNG.normal(size=(3, 4)) * 5
    b = RNG.normal(size=(4,)) * 2 + np.sign(RNG.normal(size=4)) * 0.5  # broadcasts, away from 0
    for dt, tol in ((conch.float32, 1e-5), (conch.float64, 1e-12)):
        x, y = conch.tensor(a, dtype=dt, device=device), conch.tensor(b, dtype=dt, device=device)
        out = getattr(x, name)(y)
        assert out.dtype == dt and out.shape == (3, 4)
        np.testing.assert_allclose(npy(out), BINARY[name](a, b).astype(np.float32 if dt == conch.float32 else None),
                                   rtol=tol, atol=tol * 10)  # fmt: skip
        np.testing.assert_allclose(npy(getattr(conch, name)(x, y)), npy(out))
    x, y = f64(a[:2, :3], device, True), f64(b[:3], device, True)
    # fmod/remainder jump where a/b crosses an integer: keep the checked points away from those
    if name in ("fmod", "remainder"):
        x = f64(np.array([[5.3, -5.3, 2.2], [-7.9, 0.4, 3.3]]), device, True)
        y = f64(np.array([2.0, 3.0, -1.5]), device, True)
    assert gradcheck(lambda p, q: getattr(p, name)(q), (x, y))
    assert gradgradcheck(lambda p, q: getattr(p, name)(q), (x, y))


def test_remainder_and_fmod_signs(device):
    a = conch.tensor([-7, 7, -7, 7], device=device)
    b = conch.tensor([3, 3, -3, -3], device=device)
    np.testing.assert_array_equal(npy(a % b), [2, 1, -1, -2])  # sign of the divisor, as Python
    np.testing.assert_array_equal(npy(a.fmod(b)), [-1, 1, -1, 1])  # sign of the dividend, as C
    assert (a % b).dtype == conch.int64
    np.testing.assert_array_equal(npy(-7 % conch.tensor([3, -3], device=device)), [2, -1])  # __rmod__
    np.testing.assert_allclose(npy(conch.tensor([-7.5, 7.5], device=device) % 2), [0.5, 1.5])
    np.testing.assert_allclose(npy(conch.tensor([-7.5, 7.5], device=device).fmod(2)), [-1.5, 1.5])
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        conch.tensor([1, 2], device=device) % 0
        conch.cuda.synchronize()  # a GPU reports it at the next host sync (a device-side assert)
    x = conch.tensor([5.5, -3.0], device=device, requires_grad=True)
    (x % 2).sum().backward()
    np.testing.assert_allclose(npy(x.grad), [1, 1])
    t = conch.tensor([5.0, -3.0], device=device)
    t %= 2
    np.testing.assert_allclose(npy(t), [1, 1])


def test_copysign_gradient_at_zero_and_logaddexp_extremes(device):
    x = f64([0.0, 2.0, -3.0], device, True)
    out = x.copysign(f64([-1.0, -1.0, 1.0], device))
    np.testing.assert_array_equal(npy(out), [-0.0, -2.0, 3.0])
    out.sum().backward()
    np.testing.assert_array_equal(npy(x.grad), [0.0, -1.0, -1.0])  # PyTorch: 0 where the input is 0
    big = conch.tensor([1000.0, -1000.0], device=device)
    np.testing.assert_allclose(npy(big.logaddexp(big)), [1000 + np.log(2), -1000 + np.log(2)], rtol=1e-6)
    np.testing.assert_allclose(npy(conch.tensor([3e30], device=device).hypot(conch.tensor([4e30], device=device))),
                               [5e30], rtol=1e-6)  # fmt: skip


def test_bitwise_ops(device):
    a = conch.tensor([12, -5, 7], device=device)
    b = conch.tensor([10, 3, 1], device=device)
    an, bn = np.array([12, -5, 7]), np.array([10, 3, 1])
    for got, want in (
        (a & b, an & bn), (a | b, an | bn), (a ^ b, an ^ bn), (~a, ~an), (a << b, an << bn), (a >> b, an >> bn),
        (a.bitwise_and(b), an & bn), (conch.bitwise_or(a, b), an | bn), (conch.bitwise_xor(a, b), an ^ bn),
        (conch.bitwise_not(a), ~an), (a.bitwise_left_shift(2), an << 2), (conch.bitwise_right_shift(a, 1), an >> 1),
        (6 & a, 6 & an), (6 | a, 6 | an), (6 ^ a, 6 ^ an), (1 << b, 1 << bn), (64 >> b, 64 >> bn),
    ):  # fmt: skip
        np.testing.assert_array_equal(npy(got), want)
        assert got.dtype == conch.int64
    m = conch.tensor([True, False], device=device)
    np.testing.assert_array_equal(npy(~m), [False, True])
    np.testing.assert_array_equal(npy(m ^ True), [False, True])
    assert (m & True).dtype == conch.bool
    f = conch.tensor([1.0], device=device)
    with pytest.raises(RuntimeError, match="\"bitwise_and_(cpu|cuda)\" not implemented for 'Float'"):
        f & 1
    with pytest.raises(RuntimeError, match="\"bitwise_xor_(cpu|cuda)\" not implemented for 'Float'"):
        1 ^ f
    with pytest.raises(TypeError, match="only implemented on integer and Boolean"):
        _ = ~f
    with pytest.raises(RuntimeError, match="\"lshift_(cpu|cuda)\" not implemented for 'Bool'"):
        m << m
    np.testing.assert_array_equal(npy(m << 1), [2, 0])  # bool with an int scalar promotes to int64
    np.testing.assert_allclose(npy(f << 3), [8.0])  # PyTorch shifts floats by powers of 2
    c = a.clone()
    c &= 6
    c <<= 1
    np.testing.assert_array_equal(npy(c), (an & 6) << 1)


def test_div_rounding_modes(device):
    a = np.array([-7, 7, -8, 9, 0])
    b = np.array([2, -2, 3, 3, 5])
    x, y = conch.tensor(a, device=device), conch.tensor(b, device=device)
    np.testing.assert_array_equal(npy(x.div(y, rounding_mode="floor")), np.floor_divide(a, b))
    np.testing.assert_array_equal(npy(conch.div(x, y, rounding_mode="trunc")), np.trunc(a / b).astype(np.int64))
    assert x.div(y, rounding_mode="trunc").dtype == conch.int64
    assert conch.div(x, y).dtype == conch.float32  # true division of integers is floating
    np.testing.assert_allclose(npy(conch.divide(x, y)), a / b, rtol=1e-6)
    af = np.array([-7.5, 7.5, -0.5, 2.0])
    xf = conch.tensor(af, device=device, dtype=conch.float64)
    np.testing.assert_array_equal(npy(xf.div(2, rounding_mode="floor")), np.floor(af / 2))
    np.testing.assert_array_equal(npy(xf.div(2, rounding_mode="trunc")), np.trunc(af / 2))
    with pytest.raises(ValueError, match="rounding_mode to be one of None, 'trunc', or 'floor'"):
        x.div(y, rounding_mode="round")
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        x.div(0, rounding_mode="floor")
        conch.cuda.synchronize()  # a GPU reports it at the next host sync (a device-side assert)
    g = f64(af, device, True)
    g.div(2.0, rounding_mode="floor").sum().backward()
    np.testing.assert_array_equal(npy(g.grad), 0)  # piecewise constant, as PyTorch
    t = conch.tensor([7, -7], device=device)
    t.div_(2, rounding_mode="trunc")
    np.testing.assert_array_equal(npy(t), [3, -3])


def test_type(device):
    x = conch.zeros(2, device=device)
    prefix = "conch." if device == "cpu" else "conch.cuda."
    assert x.type() == prefix + "FloatTensor"
    assert x.long().type() == prefix + "LongTensor"
    assert x.to(dtype=conch.bool).type() == prefix + "BoolTensor"
    assert x.type(conch.float64).dtype == conch.float64
    assert x.type("torch.IntTensor").dtype == conch.int32
    assert x.type("conch.HalfTensor").dtype == conch.float16
    with pytest.raises(ValueError, match="invalid type"):
        x.type("torch.NoSuchTensor")


AXIS_CASES = {
    "sum": {}, "mean": {}, "amax": {}, "amin": {}, "argmax": {}, "argmin": {}, "std": {}, "var": {}, "prod": {},
    "logsumexp": {}, "all": {}, "any": {}, "median": {}, "norm": {"p": 2},
}  # fmt: skip


@pytest.mark.parametrize("name", AXIS_CASES)
def test_axis_alias(name, device):
    x = conch.tensor(RNG.normal(size=(3, 4)), device=device)
    kw = AXIS_CASES[name]
    for fn in (getattr(x, name), lambda **k: getattr(conch, name)(x, **k)):
        a = fn(axis=1, **kw)
        b = fn(dim=1, **kw)
        a, b = (a[0], b[0]) if isinstance(a, tuple) else (a, b)
        np.testing.assert_array_equal(npy(a), npy(b))
        k = fn(axis=0, keepdims=True, **kw)
        assert (k[0] if isinstance(k, tuple) else k).shape == (1, 4)


def test_axis_alias_elsewhere(device):
    x = conch.tensor(RNG.normal(size=(3, 4)), device=device)
    assert x.max(axis=1).values.shape == (3,) and x.min(axis=0).indices.shape == (4,)
    np.testing.assert_allclose(npy(x.cumsum(axis=1)), np.cumsum(npy(x), axis=1), rtol=1e-6)
    np.testing.assert_allclose(npy(conch.cumsum(x, axis=0)), np.cumsum(npy(x), axis=0), rtol=1e-6)
    np.testing.assert_allclose(npy(x.softmax(axis=1)), npy(x.softmax(1)))
    np.testing.assert_allclose(npy(conch.softmax(x, axis=0)), npy(conch.softmax(x, dim=0)))
    np.testing.assert_allclose(npy(conch.log_softmax(x, axis=0)), npy(x.log_softmax(0)))
    assert conch.cat([x, x], axis=1).shape == (3, 8) and conch.stack([x, x], axis=2).shape == (3, 4, 2)
    assert x.cumprod(axis=0).shape == (3, 4) and x.logcumsumexp(axis=1).shape == (3, 4)
    assert x.sum(axis=(0, 1)).shape == ()
    with pytest.raises(TypeError, match="multiple values for argument 'dim'"):
        x.sum(dim=0, axis=1)


def _cum_ref(a, largest):
    """cummax/cummin by a loop with PyTorch's update rule (ties and NaN take the later index)."""
    vals, idx = np.empty_like(a), np.empty(a.shape, dtype=np.int64)
    for r in range(a.shape[0]):
        best, bi = a[r, 0], 0
        for j in range(a.shape[1]):
            x = a[r, j]
            better = x >= best if largest else x <= best
            if np.isnan(x) or (not np.isnan(best) and better):
                best, bi = x, j
            vals[r, j], idx[r, j] = best, bi
    return vals, idx


@pytest.mark.parametrize("largest", [True, False])
def test_cummax_cummin(largest, device):
    a = RNG.integers(-3, 4, size=(4, 9)).astype(np.float64)  # many ties
    a[2, 4] = np.nan
    x = conch.tensor(a, device=device)
    name = "cummax" if largest else "cummin"
    res = getattr(x, name)(1)
    vals, idx = _cum_ref(a, largest)
    np.testing.assert_array_equal(npy(res.values), vals)
    np.testing.assert_array_equal(npy(res.indices), idx)
    res0 = getattr(conch, name)(x.T, dim=0)
    np.testing.assert_array_equal(npy(res0.indices), idx.T)
    assert res.indices.dtype == conch.int64
    i = conch.tensor([3, 1, 4, 1, 5], device=device)
    np.testing.assert_array_equal(npy(getattr(i, name)(0).values), (np.maximum if largest else np.minimum).accumulate(
        [3, 1, 4, 1, 5]))  # fmt: skip
    g = f64(RNG.normal(size=(3, 5)), device, True)
    assert gradcheck(lambda t: getattr(t, name)(1).values, (g,))
    s = getattr(conch.tensor(2.0, device=device), name)(0)
    assert s.values.shape == () and s.indices.item() == 0


def test_logcumsumexp(device):
    a = RNG.normal(size=(3, 6)) * 4
    for dt, tol in ((conch.float32, 1e-5), (conch.float64, 1e-12)):
        x = conch.tensor(a, dtype=dt, device=device)
        np.testing.assert_allclose(npy(x.logcumsumexp(1)), np.logaddexp.accumulate(a, axis=1), rtol=tol)
        np.testing.assert_allclose(npy(conch.logcumsumexp(x, 0)), np.logaddexp.accumulate(a, axis=0), rtol=tol)
    wide = conch.tensor([[-1000.0, 0.0, 1000.0, -1000.0]], device=device)  # no underflow to -inf, no overflow
    np.testing.assert_allclose(npy(wide.logcumsumexp(1)), [[-1000.0, 0.0, 1000.0, 1000.0]], rtol=1e-6)
    x = f64(RNG.normal(size=(2, 5)), device, True)
    assert gradcheck(lambda t: t.logcumsumexp(1), (x,))
    assert gradgradcheck(lambda t: t.logcumsumexp(1), (x,))
    half = conch.tensor(a, dtype=conch.float16, device=device).logcumsumexp(1)
    assert half.dtype == conch.float16


@pytest.mark.parametrize("n", [1, 2, 5, 8, 13])
@pytest.mark.parametrize("ufunc", ["maximum", "minimum", "logaddexp", "add"])
def test_stepped_scan_matches_accumulate(ufunc, n):
    # the CuPy path of cummax/cummin/logcumsumexp (a Hillis-Steele scan), run on NumPy arrays
    from conch.ops import _scan

    a = RNG.normal(size=(3, n, 2))
    np.testing.assert_allclose(_scan(a, 1, ufunc, steps=True), getattr(np, ufunc).accumulate(a, axis=1), rtol=1e-12)


# ---------------------------------------------------------------- in-place methods


def test_random_fills_are_seeded_and_distributed(device):
    def draw():
        conch.manual_seed(3)
        return [npy(conch.empty(2000, device=device).normal_(2.0, 0.5)),
                npy(conch.empty(2000, device=device).uniform_(-1, 3)),
                npy(conch.empty(2000, device=device).exponential_(2.0)),
                npy(conch.empty(2000, device=device).bernoulli_(0.3)),
                npy(conch.empty(2000, device=device).log_normal_(0.0, 0.25))]  # fmt: skip

    a, b = draw(), draw()
    for p, q in zip(a, b):
        np.testing.assert_array_equal(p, q)  # conch.manual_seed makes the fills reproducible
    n, u, e, ber, ln = a
    assert abs(n.mean() - 2) < 0.05 and abs(n.std() - 0.5) < 0.05
    assert u.min() >= -1 and u.max() < 3 and abs(u.mean() - 1) < 0.1
    assert e.min() >= 0 and abs(e.mean() - 0.5) < 0.05
    assert set(np.unique(ber)) <= {0.0, 1.0} and abs(ber.mean() - 0.3) < 0.05
    assert abs(np.log(ln).std() - 0.25) < 0.03
    g = np.random.default_rng(5)
    x1 = npy(conch.empty(5, device=device).normal_(generator=g if device == "cpu" else None))
    assert x1.shape == (5,)
    with pytest.raises(RuntimeError, match="not implemented for 'Long'"):
        conch.zeros(3, dtype=conch.int64, device=device).normal_()
    h = conch.empty(100, dtype=conch.float16, device=device).uniform_(0, 1)
    assert h.dtype == conch.float16 and float(h.max()) <= 1


def test_random_and_bernoulli_tensor_p(device):
    r = npy(conch.empty(500, dtype=conch.int32, device=device).random_(3, 7))
    assert set(np.unique(r)) == {3, 4, 5, 6}
    r = npy(conch.empty(500, device=device).random_(4))
    assert set(np.unique(r)) == {0.0, 1.0, 2.0, 3.0}
    r = npy(conch.empty(500, dtype=conch.uint8, device=device).random_())
    assert r.min() >= 0 and r.max() <= 255 and r.max() > 200
    b = npy(conch.empty(4, device=device).bernoulli_(conch.tensor([0.0, 1.0, 0.0, 1.0], device=device)))
    np.testing.assert_array_equal(b, [0, 1, 0, 1])
    with pytest.raises(RuntimeError, match="'from' to be less than 'to'"):
        conch.empty(2, device=device).random_(5, 5)


def test_inplace_init_goes_through_views(device):
    base = conch.zeros(4, 6, device=device)
    v0 = base._version[0]
    base[:, :3].normal_()
    assert base._version[0] > v0
    assert (npy(base)[:, :3] != 0).all() and (npy(base)[:, 3:] == 0).all()
    w = conch.zeros(3, 3, device=device, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        w.uniform_()
    with conch.no_grad():
        w.uniform_(-1, 1)
    assert w.requires_grad and np.abs(npy(w)).max() <= 1


@pytest.mark.parametrize("wrap", [False, True])
@pytest.mark.parametrize("shape", [(4, 4), (7, 3), (3, 5), (3, 3, 3)])
def test_fill_diagonal(shape, wrap, device):
    a = np.zeros(shape)
    np.fill_diagonal(a, 5.0, wrap=wrap)
    x = conch.zeros(*shape, device=device)
    assert x.fill_diagonal_(5.0, wrap=wrap) is x
    np.testing.assert_array_equal(npy(x), a)


def test_fill_diagonal_errors(device):
    with pytest.raises(RuntimeError, match="dimensions must larger than 1"):
        conch.zeros(3, device=device).fill_diagonal_(1)
    with pytest.raises(RuntimeError, match="all dimensions of input must be of equal length"):
        conch.zeros(2, 3, 3, device=device).fill_diagonal_(1)


INPLACE = {
    "sqrt_": (lambda t: t.sqrt_(), np.sqrt),
    "exp_": (lambda t: t.exp_(), np.exp),
    "log_": (lambda t: t.log_(), np.log),
    "abs_": (lambda t: t.abs_(), np.abs),
    "neg_": (lambda t: t.neg_(), np.negative),
    "pow_": (lambda t: t.pow_(3), lambda a: a**3),
    "lerp_": (lambda t: t.lerp_(conch.ones(t.shape, dtype=t.dtype, device=t.device), 0.25),
              lambda a: a + 0.25 * (1 - a)),
    "addcmul_": (lambda t: t.addcmul_(t * 2, t + 1, value=0.5), lambda a: a + 0.5 * (a * 2) * (a + 1)),
    "addcdiv_": (lambda t: t.addcdiv_(t * 2, t + 3, value=-2), lambda a: a - 2 * (a * 2) / (a + 3)),
    "sigmoid_": (lambda t: t.sigmoid_(), lambda a: 1 / (1 + np.exp(-a))),
}  # fmt: skip


@pytest.mark.parametrize("name", INPLACE)
def test_inplace_math(name, device):
    fn, ref = INPLACE[name]
    a = RNG.uniform(0.5, 2.0, size=(3, 4))
    x = conch.tensor(a, dtype=conch.float64, device=device)
    v = x._version[0]
    assert fn(x) is x and x._version[0] == v + 1
    np.testing.assert_allclose(npy(x), ref(a), rtol=1e-12)
    base = conch.tensor(a, dtype=conch.float64, device=device)
    fn(base[1])  # through a view: the base sees it
    want = a.copy()
    want[1] = ref(a[1])
    np.testing.assert_allclose(npy(base), want, rtol=1e-12)
    # in a graph: on a non-leaf, and on a view of one; gradients as the out-of-place chain
    p = f64(a, device, True)

    def chain(t):
        y = t * 1.0
        fn(y[1:])
        return y

    assert gradcheck(chain, (p,))


def test_inplace_math_dtype_rule(device):
    i = conch.tensor([4, 9], device=device)
    with pytest.raises(RuntimeError, match="result type Float can't be cast to the desired output type Long"):
        i.sqrt_()
    i.abs_()
    i.neg_()
    np.testing.assert_array_equal(npy(i), [-4, -9])


def test_scatter_inplace_and_index_ops(device):
    x = conch.zeros(3, 5, device=device)
    idx = conch.tensor([[0, 1, 2], [4, 3, 0]], device=device)
    src = conch.arange(1.0, 7.0, device=device).reshape(2, 3)
    ref = np.zeros((3, 5))
    for i in range(2):
        for j in range(3):
            ref[i, idx.tolist()[i][j]] = src.tolist()[i][j]
    assert x.scatter_(1, idx, src) is x
    np.testing.assert_array_equal(npy(x), ref)
    y = conch.zeros(3, 5, device=device).scatter_(1, idx, 7.0)
    assert float(y.sum()) == 42
    z = conch.ones(3, 5, device=device)
    z.scatter_add_(1, conch.tensor([[0, 0, 1]], device=device), conch.ones(1, 3, device=device))
    np.testing.assert_array_equal(npy(z)[0], [3, 2, 1, 1, 1])
    r = conch.ones(3, 5, device=device).scatter_(1, conch.tensor([[0, 0]], device=device), 2.0, reduce="add")
    np.testing.assert_array_equal(npy(r)[0], [5, 1, 1, 1, 1])

    a = np.arange(15.0).reshape(5, 3)
    s = RNG.normal(size=(4, 3))
    ii = np.array([0, 4, 0, 2])
    want = a.copy()
    np.add.at(want, ii, 2 * s)
    t = conch.tensor(a, device=device, dtype=conch.float64)
    got = t.index_add(0, conch.tensor(ii, device=device), conch.tensor(s, device=device), alpha=2)
    np.testing.assert_allclose(npy(got), want)
    t.index_add_(0, conch.tensor(ii, device=device), conch.tensor(s, device=device), alpha=2)
    np.testing.assert_allclose(npy(t), want)
    np.testing.assert_allclose(npy(conch.index_add(t, 1, conch.tensor([2], device=device), conch.ones(5, 1,
                               device=device, dtype=conch.float64)))[:, 2], want[:, 2] + 1)  # fmt: skip
    with pytest.raises(RuntimeError, match="index_add_"):
        t.index_add_(0, conch.tensor([0, 1], device=device), conch.ones(3, 3, device=device, dtype=conch.float64))
    with pytest.raises(RuntimeError, match="out of bounds"):  # PyTorch's type
        t.index_add_(0, conch.tensor([9], device=device), conch.ones(1, 3, device=device, dtype=conch.float64))
        conch.cuda.synchronize()  # a GPU reports it at the next host sync (a device-side assert)

    f = conch.zeros(3, 4, device=device).index_fill_(1, conch.tensor([0, 2], device=device), -1.0)
    np.testing.assert_array_equal(npy(f), np.where(np.isin(np.arange(4), [0, 2]), -1.0, 0.0)[None].repeat(3, 0))

    p, q = f64(a, device, True), f64(s, device, True)
    ti = conch.tensor(ii, device=device)
    assert gradcheck(lambda u, w: u.index_add(0, ti, w, alpha=3), (p, q))
    assert gradcheck(lambda u: u.index_fill(1, conch.tensor([1], device=device), 2.0), (p,))
    assert gradcheck(lambda u, w: (u * 1).scatter_add_(0, ti[:, None].expand(4, 3), w), (p, q))


def test_masked_scatter(device):
    mask = np.array([[True, False, True], [False, True, True]])
    src = np.arange(10.0, 20.0)
    want = np.zeros((2, 3))
    want[mask] = src[: mask.sum()]
    x = conch.zeros(2, 3, device=device)
    got = x.masked_scatter(conch.tensor(mask, device=device), conch.tensor(src, device=device))
    np.testing.assert_array_equal(npy(got), want)
    assert x.masked_scatter_(conch.tensor(mask, device=device), conch.tensor(src, device=device)) is x
    np.testing.assert_array_equal(npy(x), want)
    row = conch.zeros(2, 3, device=device).masked_scatter(conch.tensor([True, False, True], device=device),
                                                          conch.tensor(src, device=device))  # fmt: skip
    np.testing.assert_array_equal(npy(row), [[10, 0, 11], [12, 0, 13]])
    with pytest.raises(RuntimeError, match="at least 4 elements"):
        x.masked_scatter(conch.tensor(mask, device=device), conch.ones(3, device=device))
    m = conch.tensor(mask, device=device)
    assert gradcheck(lambda a, b: a.masked_scatter(m, b), (f64(RNG.normal(size=(2, 3)), device, True),
                                                            f64(RNG.normal(size=(6,)), device, True)))  # fmt: skip


# ---------------------------------------------------------------- views


def test_view_strides_rule():
    # PyTorch's computeStride on a few known cases (strides in elements)
    assert _view_strides((3, 4), (4, 1), (12,)) == (1,)
    assert _view_strides((4, 3), (1, 4), (12,)) is None  # a transpose spans two subspaces
    assert _view_strides((4, 3), (1, 4), (4, 3, 1)) == (1, 4, 4)
    assert _view_strides((2, 5, 4), (60, 12, 1), (2, 5, 2, 2)) == (60, 12, 2, 1)  # a split's part
    assert _view_strides((2, 5, 4), (60, 12, 1), (10, 4)) == (12, 1)  # dims 0 and 1 are evenly strided
    assert _view_strides((2, 5, 4), (60, 12, 1), (20,)) is None
    assert _view_strides((2, 3), (3, 1), (1, 2, 1, 3)) == (6, 3, 3, 1)
    assert _view_strides((), (), (1, 1)) == (1, 1)
    assert _view_strides((2, 1, 3), (3, 99, 1), (6,)) == (1,)  # a size-1 dim's stride does not matter


def test_nanogpt_split_view(device):
    B, T, C, nh = 2, 5, 12, 3
    x = conch.randn(B, T, 3 * C, device=device, requires_grad=True)
    q, k, v = x.split(C, dim=2)
    assert not k.is_contiguous()
    kh = k.view(B, T, nh, C // nh).transpose(1, 2)
    want = npy(x)[:, :, C : 2 * C].reshape(B, T, nh, C // nh).transpose(0, 2, 1, 3)
    np.testing.assert_array_equal(npy(kh), want)
    kv = k.view(B, T, nh, C // nh)
    assert kv.stride() == (3 * C * T, 3 * C, C // nh, 1) and kv._base is not None
    (kh * 2).sum().backward()
    g = np.zeros((B, T, 3 * C))
    g[:, :, C : 2 * C] = 2
    np.testing.assert_array_equal(npy(x.grad), g)
    y = (kh.transpose(1, 2).contiguous().view(B, T, C) + q).sum()  # nanoGPT's re-assembly
    assert y.shape == ()


def test_view_compatible_non_contiguous_and_errors(device):
    base = conch.arange(24.0, device=device).reshape(4, 6)
    part = base[:, :4]  # rows strided by 6: each row is a contiguous run of 4
    v = part.view(4, 2, 2)
    np.testing.assert_array_equal(npy(v), np.arange(24.0).reshape(4, 6)[:, :4].reshape(4, 2, 2))
    v[0, 0, 0] = -1  # a view: writes reach the base
    assert base[0, 0].item() == -1
    with pytest.raises(RuntimeError, match=r"at least one dimension spans across two contiguous subspaces\)\. "
                                           r"Use \.reshape\(\.\.\.\) instead\."):  # fmt: skip
        part.view(16)
    with pytest.raises(RuntimeError, match="spans across two contiguous subspaces"):
        base.T.view(24)
    assert base.T.view(6, 4, 1).shape == (6, 4, 1)
    assert base.T.view(6, 2, 2).shape == (6, 2, 2)
    # reshape copies only when it must
    assert _shares(part.reshape(4, 2, 2), base)
    assert not _shares(part.reshape(16), base)
    e = conch.zeros(0, 3, device=device).T
    assert e.view(0).shape == (0,) and e.view(3, 0, 1).shape == (3, 0, 1)


def test_view_dtype(device):
    x = conch.tensor([1.0, -2.0, 0.5, 3.0], device=device)
    a = npy(x)
    same = x.view(conch.int32)
    np.testing.assert_array_equal(npy(same), a.view(np.int32))
    assert same.shape == (4,) and same.dtype == conch.int32
    same[0] = 0  # shares memory and the version counter
    assert x[0].item() == 0.0
    small = conch.tensor(a.reshape(2, 2), device=device).view(conch.int16)
    assert small.shape == (2, 4)
    np.testing.assert_array_equal(npy(small), a.reshape(2, 2).view(np.int16))
    big = x.view(conch.float64)
    assert big.shape == (2,)
    np.testing.assert_array_equal(npy(big), npy(x).view(np.float64))
    assert x.view("bfloat16").shape == (8,)
    with pytest.raises(RuntimeError, match="divisible by 2"):
        conch.zeros(3, device=device).view(conch.float64)
    with pytest.raises(RuntimeError, match="cannot be 0"):
        conch.tensor(1.0, device=device).view(conch.float16)
    with pytest.raises(RuntimeError, match="stride\\(-1\\) must be 1"):
        conch.zeros(2, 4, device=device).T.view(conch.float16)
    assert conch.tensor(1.0, device=device).view(conch.int32).shape == ()
    r = conch.ones(2, device=device, requires_grad=True).view(conch.int32)
    assert not r.requires_grad
