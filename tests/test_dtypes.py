"""dtypes and PyTorch's type promotion: tensor/tensor, tensor/0-d tensor, tensor/Python scalar, in every op kind."""

import itertools

import ml_dtypes
import numpy as np
import pytest

import conch

NAMES = ["bool", "int32", "int64", "float16", "bfloat16", "float32", "float64"]


def test_dtype_objects():
    assert conch.float32 == np.float32 and conch.float64 == np.float64 and conch.float16 == np.float16
    assert conch.bfloat16 == np.dtype(ml_dtypes.bfloat16)
    assert conch.int32 == np.int32 and conch.int64 == np.int64 and conch.bool == np.bool_
    assert conch.half == conch.float16 and conch.double == conch.float64 and conch.long == conch.int64
    assert conch.get_default_dtype() == conch.float32


def t(name, nd=1, device="cpu"):
    return conch.ones((2,) * nd, dtype=getattr(conch, name), device=device)


# (a, b, expected) for tensors with dims; symmetric
TENSOR_TENSOR = [
    ("int32", "int64", "int64"),
    ("int32", "float16", "float16"),
    ("int64", "bfloat16", "bfloat16"),
    ("float16", "bfloat16", "float32"),
    ("float16", "float32", "float32"),
    ("bfloat16", "float64", "float64"),
    ("bool", "int32", "int32"),
    ("bool", "float16", "float16"),
    ("bool", "bool", "bool"),
    ("float32", "float64", "float64"),
]


@pytest.mark.parametrize("a,b,expected", TENSOR_TENSOR)
def test_tensor_tensor_promotion(a, b, expected, device):
    for x, y in ((t(a, device=device), t(b, device=device)), (t(b, device=device), t(a, device=device))):
        for op in (lambda p, q: p + q, lambda p, q: p * q, lambda p, q: p - q if "bool" not in (a, b) else p + q):
            assert op(x, y).dtype == getattr(conch, expected)


# (tensor dtype, scalar, expected): a Python scalar never widens within its category
TENSOR_SCALAR = [
    ("int32", 2.5, "float32"),  # int tensor + float scalar -> default float
    ("int64", 2.5, "float32"),
    ("float16", 2.5, "float16"),  # float16 + 2.5 stays float16
    ("bfloat16", 2.5, "bfloat16"),
    ("float16", 2, "float16"),
    ("int32", 2, "int32"),  # an int scalar does not widen int32
    ("bool", 2, "int64"),  # bool + int -> int64
    ("bool", True, "bool"),
    ("bool", 2.5, "float32"),
    ("float64", 2.5, "float64"),
    ("int32", np.float64(2.5), "float32"),  # NumPy scalars behave as Python scalars
    ("float16", np.int64(3), "float16"),
]


@pytest.mark.parametrize("a,s,expected", TENSOR_SCALAR)
def test_tensor_scalar_promotion(a, s, expected, device):
    x = t(a, device=device)
    assert (x + s).dtype == getattr(conch, expected)
    assert (s + x).dtype == getattr(conch, expected)
    assert (x * s).dtype == getattr(conch, expected)
    assert (s * x).dtype == getattr(conch, expected)


def test_zero_dim_tensors_promote_like_scalars(device):
    # a 0-d tensor only matters when it is of a higher category than the dimensioned operand
    assert (t("float16", device=device) + t("float64", 0, device)).dtype == conch.float16
    assert (t("int32", device=device) + t("int64", 0, device)).dtype == conch.int32
    assert (t("int32", device=device) + t("float64", 0, device)).dtype == conch.float64
    assert (t("float32", 0, device) + t("float64", 0, device)).dtype == conch.float64
    assert (t("bool", device=device) + t("int64", 0, device)).dtype == conch.int64


def test_division_is_true_division(device):
    i = conch.tensor([1, 2, 3], device=device)
    for r in (i / 2, 2 / i, i / conch.tensor([2, 2, 2], device=device)):
        assert r.dtype == conch.float32
    np.testing.assert_allclose((i / 2).cpu().numpy(), [0.5, 1.0, 1.5])
    assert (conch.tensor([1.0], dtype=conch.float16, device=device) / 3).dtype == conch.float16
    assert (conch.tensor([7], device=device) // 2).tolist() == [3]


def test_integer_powers_stay_integer(device):
    i = conch.tensor([2, 3], dtype=conch.int32, device=device)
    assert (i**2).dtype == conch.int32 and (i**2).tolist() == [4, 9]
    assert (2**i).dtype == conch.int32 and (2**i).tolist() == [4, 8]
    assert (i**0.5).dtype == conch.float32
    np.testing.assert_allclose((i**0.5).cpu().numpy(), np.sqrt([2, 3]), rtol=1e-6)
    assert (2.0**i).dtype == conch.float32
    assert (conch.tensor([True, False], device=device) ** 2).dtype == conch.int64


def test_half_precision_ops_keep_their_dtype(device):
    for name in ("float16", "bfloat16"):
        x = conch.tensor([[0.5, 1.5], [2.0, 3.0]], dtype=getattr(conch, name), device=device, requires_grad=True)
        outs = [x.exp(), x.log(), x.sqrt(), x.rsqrt(), x.abs(), x.sin(), x.cos(), x.tanh(), x.sigmoid(), x.relu(),
                x**2.5, x**3, 2.0**x, x**x, x.clamp(0.7, 2.5), x @ x, x.sum(0), x.mean(), x.var(), x.std(1),
                x.amax(1), x.softmax(1), x.log_softmax(0), x * 2.5, x / 3, conch.maximum(x, x),
                conch.where(x > 1, x, 0.5), x.masked_fill(x > 1, 0.25), conch.cat([x, x])]  # fmt: skip
        for k, o in enumerate(outs):
            assert o.dtype == x.dtype, (name, k, o.dtype)
        sum(o.float().sum() for o in outs).backward()
        assert x.grad.dtype == x.dtype


def test_comparison_and_where_promotion(device):
    assert (t("int32", device=device) < 2.5).dtype == conch.bool
    assert (t("float16", device=device) == t("float64", device=device)).dtype == conch.bool
    cond = conch.tensor([True, False], device=device)
    assert conch.where(cond, t("int32", device=device), t("float16", device=device)).dtype == conch.float16
    assert conch.where(cond, t("float16", device=device), 0.5).dtype == conch.float16
    assert conch.cat([t("float16", device=device), t("bfloat16", device=device)]).dtype == conch.float32


def test_gradient_comes_back_in_input_dtype(device):
    a = conch.tensor([1.0, 2.0], dtype=conch.float16, device=device, requires_grad=True)
    b = conch.tensor([3.0, 4.0], dtype=conch.float32, device=device, requires_grad=True)
    (a * b).sum().backward()  # computed in float32, the engine casts a's gradient to float16
    assert a.grad.dtype == conch.float16 and b.grad.dtype == conch.float32
    np.testing.assert_array_equal(a.grad.float().cpu().numpy(), [3, 4])
    np.testing.assert_array_equal(b.grad.cpu().numpy(), [1, 2])


def test_to_and_conversions(device):
    x = conch.tensor([1.7, -2.2], device=device)
    assert x.to(conch.int64).tolist() == [1, -2]
    assert x.to(dtype="float16").dtype == conch.float16
    assert x.long().dtype == conch.int64 and x.int().dtype == conch.int32 and x.bool().dtype == conch.bool
    assert x.to(conch.zeros(1, dtype=conch.float64)).dtype == conch.float64  # to(other): its dtype
    assert x.type_as(conch.zeros(1, dtype=conch.bfloat16)).dtype == conch.bfloat16


def test_promotion_matches_torch():
    torch = pytest.importorskip("torch")

    def mk(lib, name, nd):
        return lib.ones((2,) * nd, dtype=getattr(lib, name))

    for a, b in itertools.product(NAMES, NAMES):
        for na, nb in [(1, 1), (1, 0), (0, 1), (0, 0)]:
            for op in ("__add__", "__mul__", "__truediv__"):
                want = getattr(mk(torch, a, na), op)(mk(torch, b, nb)).dtype
                got = getattr(mk(conch, a, na), op)(mk(conch, b, nb)).dtype
                assert str(want).removeprefix("torch.") == str(got), (a, na, b, nb, op)
    for a in NAMES:
        for s in (True, 2, 2.5):
            for op in ("__add__", "__mul__", "__truediv__", "__radd__", "__rtruediv__", "__pow__", "__rpow__"):
                try:
                    want = getattr(mk(torch, a, 1), op)(s).dtype
                except RuntimeError:
                    continue
                got = getattr(mk(conch, a, 1), op)(s).dtype
                assert str(want).removeprefix("torch.") == str(got), (a, s, op)
