"""PyTorch parity of the Tensor and Autograd API (API.md): same random inputs, same values, dtypes, shapes, gradients.

Every case is one function ``f(m, *xs)`` written once for both frameworks (``m`` is ``conch`` or ``torch``);
it runs on conch and on PyTorch, and the forward outputs (values, dtypes, shapes) and, for floating inputs,
the gradients under a random upstream gradient must agree.
"""

import math

import ml_dtypes
import numpy as np
import pytest
from test_inplace import CASES as INPLACE_CASES

import conch

torch = pytest.importorskip("torch", reason="PyTorch is not installed; the parity checks compare against it")

RTOL, ATOL = 1e-10, 1e-12

# edge values (0, inf, NaN) make NumPy warn and PyTorch warn about zero degrees of freedom; both are expected here
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore:var\\(\\)|std\\(\\):UserWarning")


# ---------------------------------------------------------------- harness


class A:
    """A random input array: ``kind`` normal | pos | ties | int | bool | zeros-and-normal; ``grad`` if floating."""

    def __init__(self, shape, dtype=None, kind="normal", grad=True, low=-3, high=4, data=None):
        dtype = dtype or ("bool" if kind == "bool" else "int64" if kind == "int" else "float64")
        self.shape, self.dtype, self.kind, self.grad, self.low, self.high, self.data = (
            tuple(shape), dtype, kind, grad, low, high, data)  # fmt: skip

    def make(self, rng):
        if self.data is not None:
            a = np.asarray(self.data)
        elif self.kind == "normal":
            a = rng.standard_normal(self.shape)
        elif self.kind == "pos":
            a = rng.random(self.shape) + 0.5
        elif self.kind == "ties":  # few distinct values: ties everywhere
            a = rng.integers(0, 3, self.shape).astype(np.float64)
        elif self.kind == "int":
            a = rng.integers(self.low, self.high, self.shape)
        elif self.kind == "bool":
            a = rng.random(self.shape) < 0.5
        elif self.kind == "zeros":
            a = rng.standard_normal(self.shape) * (rng.random(self.shape) < 0.6)
        else:
            raise ValueError(self.kind)
        if self.dtype == "bfloat16":
            return a.astype(ml_dtypes.bfloat16)
        return a.astype(self.dtype)


def _to_conch(a, grad):
    t = conch.tensor(a)
    if grad and t.is_floating_point():
        t.requires_grad_(True)
    return t


def _to_torch(a, grad):
    if a.dtype == ml_dtypes.bfloat16:
        t = torch.tensor(a.astype(np.float32)).to(torch.bfloat16)
    else:
        t = torch.tensor(a)
    if grad and t.is_floating_point():
        t.requires_grad_(True)
    return t


def _f64(t):
    """Values of a conch or torch tensor as float64 NumPy (bools and ints included)."""
    if isinstance(t, torch.Tensor):
        t = t.detach()
        return t.double().numpy() if t.dtype == torch.bfloat16 else t.numpy().astype(np.float64)
    return np.asarray(t.detach().numpy(), dtype=np.float64)


def _dtype_name(t):
    return str(t.dtype).removeprefix("torch.") if isinstance(t, torch.Tensor) else t.dtype.name


def _flat(out):
    if isinstance(out, (tuple, list)):
        res = []
        for o in out:
            res.extend(_flat(o))
        return res
    return [out]


def compare_outputs(oc, ot, rtol=RTOL, atol=ATOL, what="output"):
    fc, ft = _flat(oc), _flat(ot)
    assert len(fc) == len(ft), f"{what}: {len(fc)} conch outputs vs {len(ft)} torch outputs"
    for i, (c, t) in enumerate(zip(fc, ft)):
        if not isinstance(t, torch.Tensor):  # Python values (item, tolist, sizes)
            assert type(c) is type(t), f"{what}[{i}]: {type(c)} vs {type(t)}"
            if isinstance(t, float) and math.isnan(t):
                assert math.isnan(c)
            else:
                assert c == t, f"{what}[{i}]: {c!r} vs {t!r}"
            continue
        assert isinstance(c, conch.Tensor), f"{what}[{i}]: conch gave {type(c).__name__}"
        assert tuple(c.shape) == tuple(t.shape), f"{what}[{i}]: shape {tuple(c.shape)} vs torch {tuple(t.shape)}"
        assert _dtype_name(c) == _dtype_name(t), f"{what}[{i}]: dtype {_dtype_name(c)} vs torch {_dtype_name(t)}"
        np.testing.assert_allclose(_f64(c), _f64(t), rtol=rtol, atol=atol, equal_nan=True, err_msg=f"{what}[{i}]")


def check_case(fn, specs, seed=0, rtol=RTOL, atol=ATOL, grad_rtol=None, grad_atol=None, backward=True):
    """Run ``fn(m, *inputs)`` on conch and torch; compare forward, then gradients for a random upstream grad."""
    rng = np.random.default_rng(seed)
    arrays = [s.make(rng) for s in specs]
    xc = [_to_conch(a, s.grad) for a, s in zip(arrays, specs)]
    xt = [_to_torch(a, s.grad) for a, s in zip(arrays, specs)]
    oc, ot = fn(conch, *xc), fn(torch, *xt)
    compare_outputs(oc, ot, rtol, atol)
    if not backward:
        return
    fc, ft = _flat(oc), _flat(ot)
    roots_c, roots_t, gs_c, gs_t = [], [], [], []
    for c, t in zip(fc, ft):
        if isinstance(t, torch.Tensor) and t.requires_grad:
            assert c.requires_grad, "torch output requires grad, conch output does not"
            g = rng.standard_normal(tuple(t.shape))
            roots_c.append(c)
            roots_t.append(t)
            gs_c.append(conch.tensor(g).to(dtype=c.dtype))
            gs_t.append(torch.tensor(g).to(t.dtype))
        elif isinstance(c, conch.Tensor):
            assert not c.requires_grad, "conch output requires grad, torch output does not"
    if not roots_t:
        return
    conch.autograd.backward(roots_c, gs_c)
    torch.autograd.backward(roots_t, gs_t)
    for i, (c, t) in enumerate(zip(xc, xt)):
        if t.grad is None:
            assert c.grad is None, f"input {i}: conch has a gradient, torch none"
            continue
        assert c.grad is not None, f"input {i}: torch has a gradient, conch none"
        compare_outputs(c.grad, t.grad, grad_rtol or rtol * 10, grad_atol or atol * 10, what=f"grad of input {i}")


F = A  # float64 input with gradient


def C(*shape, **kw):
    """A constant float64 input (no gradient)."""
    return A(shape, grad=False, **kw)


# ---------------------------------------------------------------- cases

UNARY = ["exp", "log", "sqrt", "rsqrt", "abs", "sin", "cos", "tanh", "sigmoid", "relu"]
_POSITIVE = {"log", "sqrt", "rsqrt"}


@pytest.mark.parametrize("name", UNARY)
@pytest.mark.parametrize("form", ["method", "function"])
def test_unary(name, form):
    kind = "pos" if name in _POSITIVE else "zeros"
    if form == "method":
        check_case(lambda m, x: getattr(x, name)(), [F((3, 4), kind=kind)])
    else:
        check_case(lambda m, x: getattr(m, name)(x), [F((3, 4), kind=kind)])


@pytest.mark.parametrize("name", UNARY)
@pytest.mark.parametrize("dtype", ["float32", "int64", "int32", "bool"])
def test_unary_dtypes(name, dtype):
    if name in ("abs", "relu") and dtype == "bool":
        pytest.skip("PyTorch rejects abs/relu of bool tensors")
    kind = {"float32": "pos" if name in _POSITIVE else "normal", "bool": "bool"}.get(dtype, "int")
    low = 1 if name in _POSITIVE else -3
    check_case(lambda m, x: getattr(x, name)(), [A((5,), dtype, kind=kind, low=low)], rtol=1e-6, atol=1e-6)


def test_unary_special_values():
    x = [0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, 1e-300]
    for name in UNARY + ["neg"]:
        check_case(lambda m, t, n=name: getattr(t, n)(), [A((8,), data=x)], backward=name not in ("abs", "relu"))


BINOPS = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b, "div": lambda a, b: a / b,
}  # fmt: skip


@pytest.mark.parametrize("op", list(BINOPS))
@pytest.mark.parametrize(
    "sa,sb", [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 1, 4), (3, 1)), ((), (3,)), ((3, 1), ()), ((1,), (2, 3))]
)
def test_binary_broadcast(op, sa, sb):
    f = BINOPS[op]
    check_case(lambda m, a, b: f(a, b), [F(sa, kind="pos"), F(sb, kind="pos")])


@pytest.mark.parametrize("op", list(BINOPS))
@pytest.mark.parametrize("s", [2, -1.5, 0.5, True])
def test_binary_python_scalars(op, s):
    if op == "sub" and s is True:
        pytest.skip("PyTorch refuses to subtract a bool")
    f = BINOPS[op]
    check_case(lambda m, a: (f(a, s), f(s, a)), [F((2, 3), kind="pos")])


def test_method_spellings():
    check_case(lambda m, a, b: (a.add(b), a.sub(b), a.mul(b), a.div(b), a.neg(), -a, +a),
             [F((2, 3)), F((3,), kind="pos")])  # fmt: skip


def test_numpy_operands_broadcast():
    rng = np.random.default_rng(1)
    n = rng.standard_normal((3,))
    check_case(lambda m, a: (a + (n if m is conch else torch.tensor(n)), a * 2), [F((2, 3))])


# -------------------------------------------------------------- type promotion

_DT = ["float64", "float32", "float16", "bfloat16", "int64", "int32", "bool"]


@pytest.mark.parametrize("da", _DT)
@pytest.mark.parametrize("db", _DT)
@pytest.mark.parametrize("shapes", [((3,), (3,)), ((3,), ()), ((), ())])
def test_promotion_tensor_tensor(da, db, shapes):
    sa, sb = shapes

    def f(m, a, b):
        out = [a + b if "bool" not in (da, db) or da != db else a | b, a * b, a / b, a == b, a < b]
        if not (da == "bool" and db == "bool"):
            out.append(m.maximum(a, b))
        return out

    ka = "bool" if da == "bool" else ("int" if da.startswith("int") else "pos")
    kb = "bool" if db == "bool" else ("int" if db.startswith("int") else "pos")
    check_case(f, [A(sa, da, ka, grad=False, low=1), A(sb, db, kb, grad=False, low=1)], rtol=1e-2, atol=1e-2,
             backward=False)  # fmt: skip


@pytest.mark.parametrize("dt", _DT)
@pytest.mark.parametrize("s", [2, 2.5, True, -3])
def test_promotion_tensor_scalar(dt, s):
    kind = "bool" if dt == "bool" else ("int" if dt.startswith("int") else "pos")

    def f(m, a):
        out = [a * s, s * a, a / s, a == s, a > s]
        if not (dt == "bool" and s is True):
            out += [a + s, s + a, a - s if dt != "bool" and s is not True else a * 1]
        return out

    check_case(f, [A((3,), dt, kind, grad=False, low=1)], rtol=1e-2, atol=1e-2, backward=False)


def test_promotion_gradients_cast_back():
    # a float32 leaf combined with float64: the result is float64; its gradient comes back as float32
    check_case(lambda m, a, b: a * b + a, [A((3,), "float32"), A((3,))], rtol=1e-6, atol=1e-6)
    check_case(lambda m, a, b: a * b, [A((3,), "float16"), A((), "float64")], rtol=1e-3, atol=1e-3)
    check_case(lambda m, a, b: a + b, [A((3,), "int32", "int", grad=False), A((3,), "float16")], rtol=1e-3, atol=1e-3)


# -------------------------------------------------------------- pow


@pytest.mark.parametrize("p", [2, 3, 0, 1, 0.5, -1, -2, 2.5, 1.0, -0.5])
def test_pow_scalar_exponent(p):
    kind = "pos" if (isinstance(p, float) and p != int(p)) or p < 0 else "zeros"
    check_case(lambda m, x: (x**p, x.pow(p), m.pow(x, p)), [F((3, 4), kind=kind)])


def test_pow_edge_cases():
    # 0 ** 0 = 1; negative bases with integer exponents; 0 ** negative = inf; gradients at the edges
    data = [0.0, 0.0, -2.0, -2.0, 0.0, 3.0, -1.5, 2.0]
    expo = [0.0, 2.0, 3.0, 2.0, -1.0, 0.0, 2.0, -1.0]
    check_case(lambda m, a, b: a**b, [A((8,), data=data), A((8,), data=expo)])
    check_case(lambda m, a: (a**0, a**2, a**3, a**-1), [A((8,), data=data)])
    check_case(lambda m, a: (2**a, 0.5**a, 0**a), [A((8,), data=expo)])


def test_pow_tensor_tensor_broadcast():
    check_case(lambda m, a, b: (a**b, a.pow(b), m.pow(a, b)), [F((3, 4), kind="pos"), F((4,))])
    check_case(lambda m, a, b: a**b, [A((3, 4), "int64", "int", low=0), A((4,), "int64", "int", low=0, high=3)])
    check_case(lambda m, a, b: a**b, [A((3,), "int64", "int", grad=False), F((3,))])


@pytest.mark.parametrize("dt", ["int64", "int32", "bool"])
@pytest.mark.parametrize("p", [2, 0, 2.5, 3])
def test_pow_dtypes(dt, p):
    kind = "bool" if dt == "bool" else "int"
    check_case(lambda m, a: (a**p, p**a), [A((5,), dt, kind, low=0, high=4)], rtol=1e-6)


def test_rpow():
    check_case(lambda m, a: (2**a, 2.5**a, 1**a, 0.5**a), [F((3, 4))])


# -------------------------------------------------------------- reductions

_DIMS = [None, 0, 1, -1, (0, 2), (-1, 0), (0, 1, 2), ()]


@pytest.mark.parametrize("name", ["sum", "mean"])
@pytest.mark.parametrize("dim", _DIMS)
@pytest.mark.parametrize("keepdim", [False, True])
def test_sum_mean(name, dim, keepdim):
    if dim is None and not keepdim:
        check_case(lambda m, x: (getattr(x, name)(), getattr(m, name)(x)), [F((2, 3, 4))])
    # dim=() reduces over every dim, as dim=None does (PyTorch's rule for sum/mean/var)
    check_case(lambda m, x: (getattr(x, name)(dim, keepdim), getattr(m, name)(x, dim=dim, keepdim=keepdim)),
             [F((2, 3, 4))])  # fmt: skip


@pytest.mark.parametrize("dt", ["float32", "int64", "int32", "bool", "float16", "bfloat16"])
def test_sum_dtypes(dt):
    kind = "bool" if dt == "bool" else ("int" if dt.startswith("int") else "normal")
    check_case(lambda m, x: (x.sum(), x.sum(0), x.sum(-1, keepdim=True)), [A((3, 4), dt, kind, grad=False)],
             rtol=1e-2, atol=1e-2, backward=False)  # fmt: skip


@pytest.mark.parametrize("dt", ["float32", "float16", "bfloat16"])
def test_mean_low_precision(dt):
    check_case(lambda m, x: (x.mean(), x.mean(1)), [A((3, 4), dt)], rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("name", ["var", "std"])
@pytest.mark.parametrize("dim", [None, 0, -1, (0, 2), (1,)])
@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("unbiased", [True, False])
def test_var_std(name, dim, keepdim, unbiased):
    def f(m, x):
        if dim is None and not keepdim:
            return getattr(x, name)(unbiased=unbiased), getattr(m, name)(x, unbiased=unbiased)
        return (getattr(x, name)(dim, unbiased=unbiased, keepdim=keepdim),
                getattr(m, name)(x, dim, unbiased=unbiased, keepdim=keepdim))  # fmt: skip

    check_case(f, [F((2, 3, 4))])


@pytest.mark.parametrize("name", ["var", "std"])
@pytest.mark.parametrize("correction", [0, 1, 2])
def test_var_std_correction(name, correction):
    check_case(lambda m, x: (getattr(x, name)(correction=correction), getattr(x, name)(1, correction=correction)),
             [F((3, 5))])  # fmt: skip


@pytest.mark.parametrize("name", ["var", "std"])
def test_var_std_degenerate(name):
    # one element: the unbiased estimate is 0/0 = NaN, its gradient NaN; the biased one is 0
    check_case(lambda m, x: getattr(x, name)(), [F((1,))])
    check_case(lambda m, x: getattr(x, name)(0), [F((1, 3))])
    check_case(lambda m, x: getattr(x, name)(unbiased=False), [F((1,))], backward=name == "var")
    # correction >= n: the divisor is clamped at 0, giving inf (PyTorch's gradient there is degenerate)
    check_case(lambda m, x: (getattr(x, name)(correction=3), getattr(x, name)(correction=5)), [F((3,))], backward=False)


@pytest.mark.parametrize("name", ["amax", "amin"])
@pytest.mark.parametrize("dim", [0, -1, (0, 1), (2, 0), ()])
@pytest.mark.parametrize("keepdim", [False, True])
def test_amax_amin_ties(name, dim, keepdim):
    check_case(lambda m, x: (getattr(x, name)(dim, keepdim), getattr(m, name)(x, dim=dim, keepdim=keepdim)),
             [F((3, 4, 2), kind="ties")])  # fmt: skip


@pytest.mark.parametrize("name", ["max", "min"])
def test_max_min_full_ties(name):
    check_case(lambda m, x: getattr(x, name)(), [F((3, 4), kind="ties")])
    check_case(lambda m, x: getattr(m, name)(x), [F((3, 4))])
    check_case(lambda m, x: getattr(x, name)(), [A((3, 4), "int64", "int", grad=False)])


@pytest.mark.parametrize("name", ["max", "min"])
@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("keepdim", [False, True])
def test_max_min_dim_ties(name, dim, keepdim):
    # the indices are the first extremum's; the gradient goes to that element only
    def f(m, x):
        r = getattr(x, name)(dim, keepdim=keepdim)
        r2 = getattr(m, name)(x, dim=dim, keepdim=keepdim)
        return r.values, r.indices, r[0], r[1], r2.values

    check_case(f, [F((4, 5, 3), kind="ties")])


def test_max_min_binary_overload():
    check_case(lambda m, a, b: (a.max(b), a.min(b)), [F((3, 4), kind="ties"), F((4,), kind="ties")])


@pytest.mark.parametrize("name", ["argmax", "argmin"])
@pytest.mark.parametrize("dim", [None, 0, 1, -1])
@pytest.mark.parametrize("keepdim", [False, True])
def test_argmax_argmin_ties(name, dim, keepdim):
    for kind in ("ties", "normal"):
        check_case(lambda m, x: (getattr(x, name)(dim, keepdim=keepdim), getattr(m, name)(x, dim=dim, keepdim=keepdim)),
                 [C(4, 5, 3, kind=kind)])  # fmt: skip
    check_case(lambda m, x: getattr(x, name)(dim), [A((4, 5, 3), "int32", "int", grad=False, low=0, high=2)])


# -------------------------------------------------------------- clamp, where, maximum, masked_fill


@pytest.mark.parametrize("lo,hi", [(-0.5, 0.5), (-0.5, None), (None, 0.5), (0, 0), (1.0, -1.0), (0, None)])
def test_clamp(lo, hi):
    check_case(lambda m, x: (x.clamp(lo, hi), x.clamp(min=lo, max=hi), m.clamp(x, lo, hi)), [F((4, 5), kind="ties")])
    check_case(lambda m, x: x.clamp(lo, hi), [F((4, 5))])


def test_clamp_bounds_crossed_and_at_bounds():
    # min > max: everything is max and no gradient reaches the input, even where it equals max
    data = [-1.0, 1.0, 0.0, 2.0, -2.0, np.nan]
    check_case(lambda m, x: (x.clamp(1, -1), x.clamp(-1, 1), x.clamp(0, 0), x.clamp(min=1), x.clamp(max=-1)),
             [A((6,), data=data)])  # fmt: skip
    bounds = [A((4,), data=d) for d in ([0.0, 1.0, 2.0, 3.0], [0.0, 2.0, 0.0, 1.0], [1.0, 1.0, 2.0, 1.0])]
    check_case(lambda m, x, lo, hi: x.clamp(lo, hi), bounds)


def test_clamp_ints_and_tensor_bounds():
    check_case(lambda m, x: (x.clamp(-1, 2), x.clamp(min=0), x.clamp(max=1)), [A((6,), "int64", "int", grad=False)])
    check_case(lambda m, x: x.clamp(0.5), [A((6,), "int64", "int", grad=False)])  # int clamp with a float -> float
    check_case(lambda m, x, lo, hi: x.clamp(lo, hi), [F((3, 4)), F((4,)), F((3, 1))])
    check_case(lambda m, x, lo: x.clamp(min=lo), [F((3, 4), kind="ties"), F((4,), kind="ties")])


@pytest.mark.parametrize("fn", ["maximum", "minimum"])
def test_maximum_minimum_ties(fn):
    check_case(lambda m, a, b: getattr(m, fn)(a, b), [F((3, 4), kind="ties"), F((3, 4), kind="ties")])
    check_case(lambda m, a, b: getattr(m, fn)(a, b), [F((3, 4), kind="ties"), F((4,), kind="ties")])
    check_case(lambda m, a, b: (getattr(a, fn)(b), getattr(m, fn)(a, b)), [F((2, 1, 3)), F((4, 1))])
    check_case(lambda m, a, b: getattr(m, fn)(a, b), [A((4,), "int32", "int", grad=False), F((4,))])
    check_case(lambda m, a, b: getattr(m, fn)(a, b), [A((4,), data=[np.nan, 1.0, 2.0, np.nan]),
                                                    A((4,), data=[1.0, np.nan, 2.0, np.nan])])  # fmt: skip


def test_where():
    check_case(lambda m, c, a, b: m.where(c, a, b), [C(3, 4, kind="bool"), F((3, 4)), F((3, 4))])
    check_case(lambda m, c, a, b: m.where(c, a, b), [C(4, kind="bool"), F((3, 1)), F(())])
    check_case(lambda m, c, a: (m.where(c, a, 0.0), m.where(c, 1.5, a)), [C(3, 4, kind="bool"), F((3, 4))])
    check_case(lambda m, c, a, b: m.where(c, a, b), [C(3, kind="bool"), F((3,), "float32"), F((3,))], rtol=1e-6)
    check_case(lambda m, c, a, b: m.where(c, a, b), [C(3, kind="bool"), A((3,), "int32", "int", grad=False), F((3,))])
    check_case(lambda m, c, a: a.where(c, -a), [C(3, kind="bool"), F((3,))])
    check_case(lambda m, x: m.where(x > 0, x, x * 2), [F((5,))])


@pytest.mark.parametrize("mask_shape", [(3, 4), (4,), (3, 1), (1, 4), ()])
@pytest.mark.parametrize("value", [0.0, -1e9, float("-inf"), 2])
def test_masked_fill(mask_shape, value):
    check_case(lambda m, x, k: (x.masked_fill(k, value), m.masked_fill(x, k, value)),
             [F((3, 4)), C(*mask_shape, kind="bool")])  # fmt: skip


def test_masked_fill_tensor_value_and_ints():
    check_case(lambda m, x, k: x.masked_fill(k, m.tensor(3.5, dtype=m.float64)), [F((3, 4)), C(4, kind="bool")])
    check_case(lambda m, x, k: x.masked_fill(k, 7), [A((3, 4), "int64", "int", grad=False), C(3, 1, kind="bool")])
    check_case(lambda m, x, k: x.masked_fill(x > 0, 0.0), [F((3, 4)), C(1)])


# -------------------------------------------------------------- shapes


def test_reshape_view():
    check_case(lambda m, x: (x.reshape(4, 6), x.reshape(-1), x.reshape((2, -1)), x.reshape([3, 8]), x.view(6, 4),
                           x.view(-1, 2), x.view((24,)), m.reshape(x, (4, -1))), [F((2, 3, 4))])  # fmt: skip
    check_case(lambda m, x: (x.reshape(()), x.reshape(1, 1), x.view(-1)), [F((1,))])


@pytest.mark.parametrize("start,end", [(0, -1), (1, -1), (0, 1), (1, 2), (-2, -1), (2, 2), (0, 0)])
def test_flatten(start, end):
    check_case(lambda m, x: (x.flatten(start, end), m.flatten(x, start_dim=start, end_dim=end)), [F((2, 3, 4))])


def test_flatten_defaults_and_0d():
    check_case(lambda m, x, s: (x.flatten(), s.flatten()), [F((2, 3, 4)), F(())])


@pytest.mark.parametrize("d0,d1", [(0, 1), (-1, 0), (-2, -1), (1, 1), (2, -3)])
def test_transpose(d0, d1):
    check_case(lambda m, x: (x.transpose(d0, d1), m.transpose(x, d0, d1)), [F((2, 3, 4))])


@pytest.mark.parametrize("perm", [(0, 1, 2), (2, 0, 1), (-1, 0, 1), (1, -1, -3)])
def test_permute(perm):
    check_case(lambda m, x: (x.permute(*perm), x.permute(perm), m.permute(x, perm)), [F((2, 3, 4))])


def test_T_and_mT():
    check_case(lambda m, x: x.T, [F((3, 4))])
    check_case(lambda m, x: x.mT, [F((2, 3, 4))])


@pytest.mark.parametrize("d", [0, 1, 2, 3, -1, -2, -4])
def test_unsqueeze(d):
    check_case(lambda m, x: (x.unsqueeze(d), m.unsqueeze(x, d)), [F((2, 3, 4))])


@pytest.mark.parametrize("d", [None, 0, 1, 2, -1, -3, (0, 2), (1, 3)])
def test_squeeze(d):
    def f(m, x):
        if d is None:
            return x.squeeze(), m.squeeze(x)
        return x.squeeze(d), m.squeeze(x, d)

    check_case(f, [F((1, 3, 1, 1))])
    check_case(f, [F((1, 1, 1, 1))])


def test_squeeze_0d_and_unsqueeze_0d():
    check_case(lambda m, x: (x.squeeze(), x.squeeze(0), x.squeeze(-1), x.unsqueeze(0), x.unsqueeze(-1)), [F(())])


@pytest.mark.parametrize("shape", [(3, 4), (-1, 4), (2, 3, 4), (2, -1, -1), (1, 3, -1), ((2, 3, 4),), ([3, -1],)])
def test_expand(shape):
    check_case(lambda m, x: x.expand(*shape), [F((3, 1))])
    check_case(lambda m, x: conch.expand(x, *shape) if m is conch else x.expand(*shape), [F((3, 1))])


def test_expand_as_and_broadcast_grad():
    check_case(lambda m, x, y: x.expand_as(y) * y, [F((1, 4)), F((3, 4))])
    check_case(lambda m, x: x.expand(2, 3) * 2, [F(())])


def test_contiguous_clone():
    check_case(lambda m, x: (x.T.contiguous(), x.clone(), x.contiguous(), m.clone(x)), [F((3, 4))])


# -------------------------------------------------------------- indexing

INDEXES = [
    1, -1, slice(None), slice(1, None), slice(None, None, 2), slice(-2, None), (0, 1), (slice(None), 1), (1, -1, 0),
    None, (None, 1), (Ellipsis, 0), (0, Ellipsis), (Ellipsis, None), (slice(None), None, slice(None, 2)),
    (0, slice(None), slice(1, 3)), (Ellipsis,), (), (slice(None, None, 3), Ellipsis, slice(None, -1)),
]  # fmt: skip


@pytest.mark.parametrize("idx", INDEXES, ids=repr)
def test_getitem_basic(idx):
    check_case(lambda m, x: x[idx], [F((3, 4, 5))])


TENSOR_INDEXES = [
    ("int", lambda m: m.tensor([0, 2, 0, 1])),  # repeated indices accumulate in the gradient
    ("int2d", lambda m: m.tensor([[0, 1], [2, 2]])),
    ("neg", lambda m: m.tensor([-1, 0, -1])),
    ("int32", lambda m: m.tensor([1, 1], dtype=m.int32)),
    ("list", lambda m: [2, 0, 2]),
    ("bool", lambda m: m.tensor([True, False, True])),
    ("bool2d", lambda m: m.tensor([[True, False, True, False]] * 2 + [[False, False, True, True]])),
    ("int,slice", lambda m: (m.tensor([0, 2, 2]), slice(1, 3))),
    ("slice,int", lambda m: (slice(None), m.tensor([3, 0, 3]))),
    ("int,int", lambda m: (m.tensor([0, 2, 1]), m.tensor([1, 1, 3]))),
    ("int,scalar,int", lambda m: (m.tensor([0, 2]), 1, m.tensor([1, 1]))),
    ("scalar,slice,int", lambda m: (1, slice(None), m.tensor([1, 0, 1]))),
    ("int,None", lambda m: (m.tensor([1, 1]), None)),
    ("ellipsis,int", lambda m: (Ellipsis, m.tensor([0, 4, 0]))),
    ("bool,int", lambda m: (m.tensor([True, False, True]), m.tensor([1, 3]))),
    ("0d-int", lambda m: m.tensor(1)),
    ("0d-int,slice,int", lambda m: (m.tensor(1), slice(None), m.tensor([0, 0]))),
    ("empty", lambda m: m.tensor([], dtype=m.int64)),
]


@pytest.mark.parametrize("name,make", TENSOR_INDEXES, ids=[n for n, _ in TENSOR_INDEXES])
def test_getitem_advanced(name, make):
    check_case(lambda m, x: x[make(m)], [F((3, 4, 5))])


@pytest.mark.parametrize("name,make", TENSOR_INDEXES, ids=[n for n, _ in TENSOR_INDEXES])
def test_setitem(name, make):
    def f(m, x, v):
        y = x.detach().clone()
        y[make(m)] = 7.5
        z = x.detach().clone()
        target = z[make(m)]
        z[make(m)] = v.detach()[: target.shape[-1]] if target.ndim else v.detach()[0]
        return y, z

    check_case(f, [F((3, 4, 5)), F((5,))], backward=False)


def test_setitem_more():
    def f(m, x, v):
        y = x.detach().clone()
        y[0] = 1.0
        y[:, 1] = v.detach()[:3]
        y[y > 1.5] = -1.0
        y[..., 0] = m.tensor([1, 2, 3], dtype=m.int64)  # int values into a float tensor
        z = m.zeros(4, dtype=m.int64)
        z[m.tensor([0, 0, 3])] = 5
        z[1:3] = m.tensor([2.7, -2.7], dtype=m.float64)  # float into int: truncates toward zero
        return y, z

    check_case(f, [F((3, 4)), F((5,))], backward=False)


def test_indexing_mask_from_comparison_and_grad():
    check_case(lambda m, x: x[x > 0] * 2, [F((3, 4))])
    check_case(lambda m, x: x[x.argmax(1)], [F((3, 3))])


# -------------------------------------------------------------- cat, stack, split


@pytest.mark.parametrize("dim", [0, 1, -1, -2])
def test_cat(dim):
    sa, sb = [2, 3, 4], [2, 3, 4]
    sb[dim] = 1
    check_case(lambda m, a, b, c: (m.cat([a, b, c], dim), m.cat((a, b), dim=dim)), [F(sa), F(tuple(sb)), F(sa)])


def test_cat_mixed_dtypes_and_single():
    check_case(lambda m, a, b: m.cat([a, b]), [F((2, 3), "float32"), F((1, 3))], rtol=1e-6)
    check_case(lambda m, a, b: m.cat([a, b], 1), [A((2, 3), "int64", "int", grad=False), F((2, 2))])
    check_case(lambda m, a: m.cat([a]), [F((2, 3))])
    check_case(lambda m, a, b: m.cat([a, b]), [F((2, 3)), F((0, 3))])


@pytest.mark.parametrize("dim", [0, 1, 2, -1, -3])
def test_stack(dim):
    check_case(lambda m, a, b: (m.stack([a, b], dim), m.stack((b, a, b), dim=dim)), [F((2, 3)), F((2, 3))])


@pytest.mark.parametrize(
    "spec,dim", [(2, 0), (3, 1), (1, -1), (4, 1), ([1, 3], 1), ([2, 0, 2], -1), ((3, 1), 1), (10, 0), ([4], 1)]
)
def test_split(spec, dim):
    check_case(lambda m, x: (m.split(x, spec, dim), x.split(spec, dim=dim)), [F((3, 4, 4))])


def test_split_gradient_with_unused_pieces():
    check_case(lambda m, x: m.split(x, 2, 1)[1] * 3, [F((3, 5))])


# -------------------------------------------------------------- softmax and matmul


@pytest.mark.parametrize("dim", [0, 1, -1, 2, -3])
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax(name, dim):
    check_case(lambda m, x: (getattr(x, name)(dim), getattr(m, name)(x, dim)), [F((2, 3, 4))])
    check_case(lambda m, x: getattr(x, name)(dim), [A((2, 3, 4), "float32")], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_extremes(name):
    x = [[0.0, -np.inf, 1.0], [1e4, -1e4, 0.0], [5.0, 5.0, 5.0]]
    check_case(lambda m, t: getattr(t, name)(-1), [A((3, 3), data=x)], backward=False)
    check_case(lambda m, t: getattr(t, name)(0), [F(())])
    check_case(lambda m, t: getattr(t, name)(0), [F((1,))])


MATMUL_SHAPES = [
    ((3,), (3,)), ((3,), (3, 4)), ((2, 3), (3,)), ((2, 3), (3, 4)), ((5, 2, 3), (3,)), ((3,), (5, 3, 4)),
    ((5, 2, 3), (3, 4)), ((2, 3), (5, 3, 4)), ((5, 2, 3), (5, 3, 4)), ((5, 1, 2, 3), (4, 3, 2)),
    ((1, 2, 3), (5, 3, 4)), ((2, 1, 2, 3), (1, 3, 3, 2)),
]  # fmt: skip


@pytest.mark.parametrize("sa,sb", MATMUL_SHAPES)
def test_matmul(sa, sb):
    check_case(lambda m, a, b: (a @ b, a.matmul(b), m.matmul(a, b)), [F(sa), F(sb)])


def test_matmul_dtypes():
    check_case(lambda m, a, b: a @ b, [A((2, 3), "float32"), A((3, 4), "float32")], rtol=1e-5, atol=1e-6)
    check_case(lambda m, a, b: a @ b, [A((2, 3), "int64", "int", grad=False), A((3, 4), "int64", "int", grad=False)])
    check_case(lambda m, a, b: a @ b, [F((2, 3), grad=False), F((3, 2))])


# -------------------------------------------------------------- in-place ops


@pytest.mark.parametrize("op", ["+=", "-=", "*=", "/="])
def test_inplace_values(op):
    def f(m, x, y):
        a = x.detach().clone()
        b = a  # in-place keeps identity
        exec(f"a {op} y.detach()")  # noqa: S102  (the operator under test)
        assert a is b
        c = x.detach().clone()
        exec(f"c {op} 2")  # noqa: S102
        return a, c

    check_case(f, [F((3, 4)), F((4,), kind="pos")], backward=False)


def test_inplace_in_graph():
    def f(m, x, y):
        h = x * 2
        h += y
        h *= y
        h -= 1
        h /= y + 3
        return h

    check_case(f, [F((3, 4)), F((4,), kind="pos")])


def test_inplace_methods_and_dtypes():
    def f(m, x, y):
        a = x.detach().clone().add_(y.detach()).mul_(2).sub_(1.5).div_(4)
        a.add_(y.detach(), alpha=2)
        b = m.zeros(3, dtype=m.float32)
        b += x.detach()[0, :3]  # float64 into float32: same kind, cast
        i = m.ones(3, dtype=m.int64)
        i += 2
        i *= m.tensor([1, 2, 3], dtype=m.int32)
        return a, b, i

    check_case(f, [F((3, 4)), F((4,))], backward=False, rtol=1e-6)


def test_inplace_type_errors():
    for mod in (conch, torch):
        i = mod.ones(3, dtype=mod.int64)
        with pytest.raises(RuntimeError):
            i += 1.5
        with pytest.raises(RuntimeError):
            i /= 2
        x = mod.ones(3, dtype=mod.float64, requires_grad=True)
        with pytest.raises(RuntimeError):
            x += 1
        s = mod.ones(3)
        with pytest.raises(RuntimeError):
            s += mod.ones(2, 3)  # the result would not fit the in-place tensor


# -------------------------------------------------------------- comparisons and conversions


@pytest.mark.parametrize("op", ["==", "!=", "<", "<=", ">", ">="])
def test_comparisons(op):
    def f(m, a, b):
        env = {"a": a, "b": b}
        return [eval(f"a {op} b", env), eval(f"a {op} 1.0", env), eval(f"1 {op} a", env), eval(f"a {op} b[0]", env)]  # noqa: S307

    check_case(f, [F((3, 4), kind="ties"), F((4,), kind="ties")])
    check_case(f, [A((3, 4), "int32", "int", grad=False), A((4,), "float32", grad=False)])


def test_item_tolist_and_python_conversions():
    def f(m, x, i, b):
        return [x[0, 0].item(), x.sum().item(), i[1].item(), b[0].item(), x.tolist(), i.tolist(), b.tolist(),
                x[1].tolist(), x[0, 1].tolist(), float(x[0, 0]), int(i[0]), bool(b[0]), x.size(), x.size(1),
                x.size(-1), x.numel(), x.ndim, x.dim(), len(x), list(x.shape)]  # fmt: skip

    rng = np.random.default_rng(0)
    arrays = [A((2, 3)).make(rng), A((3,), "int64", "int").make(rng), A((2,), "bool", "bool").make(rng)]
    oc = f(conch, *[conch.tensor(a) for a in arrays])
    ot = f(torch, *[torch.tensor(a) for a in arrays])
    for c, t in zip(oc, ot):
        if isinstance(t, torch.Size):
            t = tuple(t)
        assert c == t and type(c) is type(t) or (isinstance(c, tuple) and c == t), (c, t)
    for c, t in zip(oc[4:9], ot[4:9]):
        assert repr(c) == repr(t)  # element types too (int/float/bool)
    assert conch.tensor([1.5], dtype=conch.float32).item() == torch.tensor([1.5]).item()
    assert type(conch.tensor(3, dtype=conch.int32).item()) is int


def test_tensor_attributes():
    x = conch.randn(2, 3, requires_grad=True)
    y = (x * 2).sum()
    assert x.is_leaf and not y.is_leaf and y.grad_fn is not None and x.grad_fn is None
    assert x.requires_grad and y.requires_grad and x.grad is None
    assert str(x.device) == "cpu" and x.device.type == "cpu"
    assert x.float().dtype == conch.float32 and x.half().dtype == conch.float16
    assert x.bfloat16().dtype == conch.bfloat16 and x.to(dtype=conch.float64).dtype == conch.float64
    assert x.cpu() is x and x.to("cpu") is x  # no copy, as torch
    assert x.float() is x  # same dtype: the tensor itself, as torch


def test_detach_and_requires_grad_():
    for m in (conch, torch):
        x = m.ones(3, requires_grad=True)
        y = x * 2
        d = y.detach()
        assert not d.requires_grad and d.grad_fn is None and d.is_leaf
        d[0] = 5.0  # shares memory with y
        assert y[0].item() == 5.0
        z = m.ones(2)
        assert z.requires_grad_() is z and z.requires_grad and z.is_leaf
        z.requires_grad_(False)
        assert not z.requires_grad
        with pytest.raises(RuntimeError):
            m.ones(2, dtype=m.int64).requires_grad_()
        with pytest.raises(RuntimeError):
            y.requires_grad_(False)  # a non-leaf's flag cannot be switched off
        w = m.ones(2, requires_grad=True)
        with m.no_grad():
            v = w * 2
        assert not v.requires_grad
        with m.no_grad():
            with m.enable_grad():
                v = w * 2
        assert v.requires_grad


# -------------------------------------------------------------- autograd


def _check_both(fn, specs, seed=0, rtol=1e-10, atol=1e-12):
    """Run ``fn(m, *leaves)`` returning a list of tensors (gradients) on both frameworks and compare them."""
    rng = np.random.default_rng(seed)
    arrays = [s.make(rng) for s in specs]
    oc = fn(conch, *[_to_conch(a, s.grad) for a, s in zip(arrays, specs)])
    ot = fn(torch, *[_to_torch(a, s.grad) for a, s in zip(arrays, specs)])
    compare_outputs(oc, ot, rtol, atol)
    return oc, ot


SECOND_ORDER = {
    "poly": lambda m, x, y: (x**3 * y + x * y**2).sum(),
    "trans": lambda m, x, y: (x.tanh() * y.sigmoid() + x.sin() * y.cos() + (x * y).exp()).sum(),
    "logs": lambda m, x, y: ((x * x + 1).log() + (y * y + 1).sqrt() + (y * y + 1).rsqrt() + (x - y).abs()).sum(),
    "softmax": lambda m, x, y: (x.softmax(-1) * y).sum() + (x.log_softmax(0) * y).sum(),
    "matmul": lambda m, x, y: ((x @ y.T).tanh() ** 2).sum(),
    "reduce": lambda m, x, y: x.var(1).sum() * y.std() + x.mean(0).sum() * y.amax() + (x * y).sum(1).pow(2).sum(),
    "shapes": lambda m, x, y: (x.T.reshape(-1)[1:] ** 2).sum() + m.cat([x, y], 1).unsqueeze(0).sum(-1).pow(2).sum(),
    "select": lambda m, x, y: (
        (m.where(x > 0, x * y, y * y) * x).sum()
        + m.maximum(x, y).pow(2).sum()
        + x.clamp(-0.5, 0.5).pow(3).sum()
        + x.relu().pow(2).sum()
    ),
    "div": lambda m, x, y: (x / (y * y + 1)).sum() + (1 / (x * x + 2)).sum() + (x ** y.abs()).sum() * 0,
    "index": lambda m, x, y: (x[m.tensor([0, 0, 2])] ** 2 * y[1]).sum() + x.masked_fill(x > 0, 0).pow(2).sum(),
}


@pytest.mark.parametrize("name", list(SECOND_ORDER))
def test_second_derivatives(name):
    f = SECOND_ORDER[name]

    def fn(m, x, y):
        out = f(m, x, y)
        gx, gy = m.autograd.grad(out, (x, y), create_graph=True)
        assert gx.requires_grad
        s = (gx * gx).sum() + (gx * gy).sum() if gx.shape == gy.shape else (gx * gx).sum() + gy.sum()
        hx, hy = m.autograd.grad(s, [x, y])
        return [out, gx, gy, hx, hy]

    _check_both(fn, [F((3, 4)), F((3, 4))], rtol=1e-9, atol=1e-10)


def test_grad_arguments():
    def fn(m, x, y, z):
        out = (x * y).sum(1)
        go = m.ones(3, dtype=m.float64) * 2
        (gx,) = m.autograd.grad(out, x, grad_outputs=go, retain_graph=True)
        gx2, gz = m.autograd.grad([out], [x, z], grad_outputs=[go], allow_unused=True)
        assert gz is None
        with pytest.raises(RuntimeError):
            m.autograd.grad(out.sum(), [x, z])  # z unused, allow_unused=False
        return [gx, gx2]

    _check_both(fn, [F((3, 4)), F((3, 4)), F((2,))])


def test_grad_of_nonleaf_and_accumulation():
    def fn(m, x):
        h = x.exp()
        out = (h * h).sum()
        (gh,) = m.autograd.grad(out, h, retain_graph=True)
        out.backward(retain_graph=True)
        out.backward()  # accumulates into x.grad
        return [gh, x.grad]

    _check_both(fn, [F((3,))])


def test_retain_graph_and_freed_buffers():
    for m in (conch, torch):
        x = m.ones(3, dtype=m.float64, requires_grad=True)
        y = (x.exp() * x).sum()
        y.backward(retain_graph=True)
        y.backward()
        np.testing.assert_allclose(_f64(x.grad), 2 * 2 * np.e * np.ones(3))
        with pytest.raises(RuntimeError, match="backward through the graph a second time"):
            y.backward()


def test_modified_in_place_after_save_raises():
    for m in (conch, torch):
        x = m.ones(3, dtype=m.float64, requires_grad=True)
        h = x * 1
        y = h * h
        h += 1
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y.sum().backward()


def test_backward_gradient_argument():
    def fn(m, x):
        y = x * x
        y.backward(gradient=m.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=m.float64))
        return [x.grad]

    _check_both(fn, [F((2, 3))])
    for m in (conch, torch):
        with pytest.raises(RuntimeError):
            (m.ones(2, requires_grad=True) * 2).backward()  # non-scalar without gradient


def test_register_hook():
    def fn(m, x):
        seen = []
        h = x * 3
        h.register_hook(lambda g: seen.append(g.clone()))
        handle = h.register_hook(lambda g: g * 10)
        x.register_hook(lambda g: g + 1)
        (h * h).sum().backward(retain_graph=True)
        first = x.grad.clone()
        handle.remove()
        x.grad = None
        (h * h).sum().backward()
        return [first, x.grad, seen[0], seen[1]]

    _check_both(fn, [F((2, 3))])


def test_hook_returning_none_and_leaf_hook_order():
    def fn(m, x):
        calls = []
        x.register_hook(lambda g: calls.append(1))
        x.register_hook(lambda g: g * 2)
        x.register_hook(lambda g: g - 1)
        (x**2).sum().backward()
        assert calls == [1]
        return [x.grad]

    _check_both(fn, [F((4,))])


def test_retain_grad():
    def fn(m, x):
        h = x.sin()
        h.retain_grad()
        (h * h).sum().backward()
        return [h.grad, x.grad]

    _check_both(fn, [F((4,))])


def _make_functions(m):
    class Cube(m.autograd.Function):
        @staticmethod
        def forward(ctx, x, k):
            ctx.save_for_backward(x)
            ctx.k = k
            return x * x * x * k

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 3 * ctx.k * x * x * g, None

    class Split2(m.autograd.Function):
        @staticmethod
        def forward(ctx, a, b):
            ctx.save_for_backward(a, b)
            return a * b, a + b

        @staticmethod
        def backward(ctx, g1, g2):
            a, b = ctx.saved_tensors
            return g1 * b + g2, g1 * a + g2

    return Cube, Split2


def test_function_apply():
    def fn(m, x, y):
        Cube, Split2 = _make_functions(m)
        c = Cube.apply(x, 2.0)
        p, s = Split2.apply(x, y)
        out = (c * y).sum() + (p * s).sum()
        out.backward()
        return [c, p, s, x.grad, y.grad]

    _check_both(fn, [F((3,)), F((3,))])


def test_function_apply_second_order_and_unused_output():
    def fn(m, x, y):
        Cube, Split2 = _make_functions(m)
        (g,) = m.autograd.grad(Cube.apply(x, 1.5).sum(), x, create_graph=True)
        (h,) = m.autograd.grad(g.sum(), x)
        p, _ = Split2.apply(x, y)  # only one output used: the other's gradient is zeros
        p.sum().backward()
        return [g, h, x.grad, y.grad]

    _check_both(fn, [F((3,)), F((3,))])


def test_gradcheck_on_parity_ops():
    x = conch.randn(3, 4, dtype=conch.float64, requires_grad=True)
    y = conch.randn(4, dtype=conch.float64, requires_grad=True)
    assert conch.autograd.gradcheck(lambda a, b: (a * b).softmax(-1).log() * (a.amax(0) - b.pow(2)), (x, y))


def test_api_functions_exist():
    names = ["sum", "mean", "var", "std", "amax", "amin", "max", "min", "argmax", "argmin", "exp", "log", "sqrt",
             "rsqrt", "abs", "sin", "cos", "tanh", "sigmoid", "relu", "pow", "clamp", "reshape", "flatten", "transpose",
             "permute", "unsqueeze", "squeeze", "masked_fill", "softmax", "log_softmax", "matmul", "cat", "stack",
             "split", "where", "maximum", "minimum", "einsum", "tensor", "zeros", "ones", "empty", "full", "arange",
             "rand", "randn", "randint", "zeros_like", "ones_like", "randn_like", "from_numpy", "from_dlpack",
             "manual_seed", "no_grad", "enable_grad"]  # fmt: skip
    for n in names:
        assert callable(getattr(conch, n)), n
        assert hasattr(torch, n), n
    for n in ["float32", "float16", "bfloat16", "float64", "int32", "int64", "bool"]:
        assert str(getattr(torch, n)).removeprefix("torch.") == getattr(conch, n).name


def test_einsum():
    check_case(lambda m, a, b: (m.einsum("ij,jk->ik", a, b), m.einsum("ij,ij->i", a, b.T), m.einsum("ij->", a)),
             [F((2, 3)), F((3, 2))])  # fmt: skip


# -------------------------------------------------------------- creation (deterministic factories)

CREATION = {
    "tensor-int": lambda m: m.tensor([1, 2, 3]),
    "tensor-float": lambda m: m.tensor([1.0, 2, 3]),
    "tensor-bool": lambda m: m.tensor([True, False]),
    "tensor-0d": lambda m: (m.tensor(3), m.tensor(2.5), m.tensor(True)),
    "tensor-nested": lambda m: m.tensor([[1, 2], [3, 4]], dtype=m.float16),
    "tensor-np64": lambda m: m.tensor(np.arange(3.0)),
    "tensor-np32": lambda m: m.tensor(np.arange(3, dtype=np.int32)),
    "tensor-dtype": lambda m: (m.tensor([1.7, -1.7], dtype=m.int64), m.tensor([0, 2], dtype=m.bool)),
    "zeros": lambda m: (m.zeros(2, 3), m.zeros((2, 3)), m.zeros([2]), m.zeros(2, dtype=m.int32), m.zeros(())),
    "ones": lambda m: (m.ones(2, 3), m.ones((3,), dtype=m.bfloat16), m.ones(2, dtype=m.bool)),
    "empty": lambda m: (m.empty(2, 3).shape, m.empty((4,), dtype=m.int64).dtype),
    "full": lambda m: (m.full((2, 3), 1.5), m.full((2,), 3), m.full((2,), True), m.full((2,), 2, dtype=m.float64),
                       m.full([], 7.0)),
    "arange": lambda m: (m.arange(5), m.arange(1, 4), m.arange(0, 1, 0.25), m.arange(5, dtype=m.float64),
                         m.arange(10, 0, -3), m.arange(0.5, 3), m.arange(1, 2.5, 0.5)),
    "like": lambda m: (m.zeros_like(m.ones(2, 3, dtype=m.int32)), m.ones_like(m.zeros(2, dtype=m.float16)),
                       m.randn_like(m.zeros(2, 3, dtype=m.float64)).shape,
                       m.randn_like(m.zeros(2, 3, dtype=m.float64)).dtype),
    "random-shapes": lambda m: (m.rand(2, 3).shape, m.randn((4,)).shape, m.rand(2).dtype, m.randn(2).dtype,
                                m.randint(0, 5, (3, 2)).shape, m.randint(0, 5, (3,)).dtype),
    "from_numpy": lambda m: m.from_numpy(np.arange(6, dtype=np.float32).reshape(2, 3)),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CREATION))
def test_creation(name):
    oc, ot = CREATION[name](conch), CREATION[name](torch)
    oc, ot = _flat(oc), _flat(ot)
    for c, t in zip(oc, ot):
        if isinstance(t, torch.Size):
            assert tuple(c) == tuple(t)
        elif isinstance(t, torch.dtype):
            assert str(t).removeprefix("torch.") == c.name
        else:
            compare_outputs(c, t)


def test_from_numpy_shares_memory_and_randint_range():
    a = np.zeros(3)
    t = conch.from_numpy(a)
    a[1] = 5.0
    assert t[1].item() == 5.0
    r = conch.randint(-2, 3, (200,))
    assert r.min().item() >= -2 and r.max().item() <= 2 and r.dtype == conch.int64
    u = conch.rand(500)
    assert 0 <= u.min().item() and u.max().item() < 1


def test_sum_keepdim_without_dim_and_reduce_dtype_args():
    check_case(lambda m, x: x.sum(dim=None, keepdim=True) if m is torch else x.sum(None, True), [F((2, 3))])
    check_case(lambda m, x: (x.sum(dtype=m.float64), x.sum(1, dtype=m.float64)), [A((2, 3), "float32")], rtol=1e-6)
    check_case(lambda m, x: (x.softmax(-1, dtype=m.float64), x.log_softmax(0, dtype=m.float64)), [A((2, 3), "float32")],
             rtol=1e-6)  # fmt: skip


def test_var_std_low_precision():
    check_case(lambda m, x: (x.var(), x.std(1), x.var(0, unbiased=False)), [A((3, 4), "float32")], rtol=1e-5, atol=1e-6)
    check_case(lambda m, x: (x.var(), x.std(1)), [A((3, 4), "float16")], rtol=1e-2, atol=1e-2)


def test_inplace_on_views_without_graph():
    def f(m, x):
        y = x.detach().clone()
        row = y[1]
        row += 10  # writes through the view into y
        col = y[:, 0]
        col *= 2
        y.T[0] -= 1
        flat = y.view(-1)
        flat[0] = 100.0
        return y, row, col

    check_case(f, [F((3, 4))], backward=False)


@pytest.mark.parametrize("fn", [c[0] for c in INPLACE_CASES], ids=lambda f: f.__name__)
def test_inplace_ops_on_views_in_graph(fn):
    # PyTorch rewrites the base's history (CopySlices) and re-derives every view's grad_fn; conch does the same
    check_case(fn, [F((3, 4)), F((2, 4))])


def test_max_min_argmax_on_0d():
    check_case(lambda m, x: (x.max(0), x.min(-1), x.argmax(0), x.argmin(), x.amax(0)), [F(())])
