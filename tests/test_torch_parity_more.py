"""PyTorch parity of the second batch of Tensor ops (rounding, prod, sort, gather/scatter, tril, roll, unique...).

Each case is ``f(m, *xs)`` run on conch and on PyTorch by ``check_case`` (tests/test_torch_parity.py):
values, dtypes, shapes and, for floating inputs, gradients under a random upstream gradient must agree.
Method and function spellings are checked together where PyTorch has both. Skipped without PyTorch.
"""

import numpy as np
import pytest

import conch

torch = pytest.importorskip("torch", reason="PyTorch is not installed; the parity checks compare against it")

from test_torch_parity import A, C, F, check_case  # noqa: E402  (after the importorskip on purpose)

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")

SPECIAL = [np.nan, np.inf, -np.inf, 0.0, -1.5, 2.5, -0.0, 1e308]
HALVES = [-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, -1.7, 2.3, 0.0, 3.999, 7.5, -3.5]
ZEROS = [
    [1.5, -0.7, 2.0, 0.9, -1.1],
    [1.5, 0.0, 2.0, -0.6, 1.3],
    [0.8, 0.0, 0.0, 1.7, -1.2],
    [0.0, 2.5, -1.4, 0.0, 0.0],
]


def I(data):  # noqa: E743
    """A constant int64 index input."""
    a = np.asarray(data, dtype=np.int64)
    return A(a.shape, "int64", grad=False, data=a)


def B(data):
    """A constant bool mask input."""
    a = np.asarray(data, dtype=bool)
    return A(a.shape, "bool", grad=False, data=a)


# (id, fn(m, *inputs), input specs, check_case keyword arguments)
CASES = [
    # ------------------------------------------------------------ creation from a tensor
    ("new_factories", lambda m, x: (x.new_zeros(2, 3), x.new_zeros((3, 1)), x.new_ones(3, 2), x.new_ones((4,)),
                                    x.new_full((2, 3), 1.5), x.new_tensor([[1, 2], [3, 5]]),
                                    x.new_tensor(np.array([0.5, 2.0]))), [F((2, 3))], {}),
    ("new_factories_int", lambda m, x: (x.new_zeros(2), x.new_ones((2, 2)), x.new_full((3,), 7),
                                        x.new_tensor([1.5, 2.0])), [A((3,), "int64", "int", grad=False)], {}),
    ("new_factories_f32", lambda m, x: (x.new_zeros(2), x.new_full((2,), 2.5), x.new_tensor([1, 2])),
     [A((3,), "float32")], {}),
    ("new_empty", lambda m, x: (tuple(x.new_empty(2, 3).shape), tuple(x.new_empty((4,)).shape),
                                x.new_empty(2).dtype == x.dtype), [F((2,))], {}),
    # ------------------------------------------------------------ elementwise
    ("floor", lambda m, x: (x.floor(), m.floor(x)), [A((12,), data=HALVES)], {}),
    ("ceil", lambda m, x: (x.ceil(), m.ceil(x)), [A((12,), data=HALVES)], {}),
    ("round", lambda m, x: (x.round(), m.round(x)), [A((12,), data=HALVES)], {}),
    ("round_decimals", lambda m, x: (x.round(decimals=1), m.round(x, decimals=2), x.round(decimals=-1)),
     [A((9,), data=[1.25, 0.125, -1.375, 1234.5, 1250.0, 1350.0, 3.14159, -0.05, 99.99])], {}),
    ("trunc", lambda m, x: (x.trunc(), m.trunc(x)), [A((12,), data=HALVES)], {}),
    ("frac", lambda m, x: (x.frac(), m.frac(x)), [A((12,), data=HALVES)], {}),
    ("rounding_random", lambda m, x: (x.floor(), x.ceil(), x.round(), x.trunc(), x.frac()), [F((3, 5))], {}),
    ("rounding_int", lambda m, x: (x.floor(), x.ceil(), x.round(), x.trunc()),
     [A((3, 4), "int64", "int", grad=False)], {}),
    ("sign", lambda m, x: (x.sign(), m.sign(x)), [F((3, 5), kind="zeros")], {}),
    ("sign_int", lambda m, x: x.sign(), [A((6,), "int64", "int", grad=False)], {}),
    ("erf", lambda m, x: (x.erf(), m.erf(x)), [F((3, 5))], {"rtol": 1e-12, "atol": 1e-14}),
    ("erf_special", lambda m, x: x.erf(), [A((8,), data=SPECIAL)], {"backward": False}),
    ("isnan", lambda m, x: (x.isnan(), m.isnan(x)), [A((8,), data=SPECIAL)], {}),
    ("isinf", lambda m, x: (x.isinf(), m.isinf(x)), [A((8,), data=SPECIAL)], {}),
    ("isfinite", lambda m, x: (x.isfinite(), m.isfinite(x)), [A((8,), data=SPECIAL)], {}),
    ("is_int", lambda m, x: (x.isnan(), x.isinf(), x.isfinite()), [A((4,), "int64", "int", grad=False)], {}),
    ("nan_to_num", lambda m, x: (x.nan_to_num(), m.nan_to_num(x, nan=1.5, posinf=9.0, neginf=-9.0),
                                 x.nan_to_num(posinf=2.0)), [A((8,), data=SPECIAL)], {}),
    ("nan_to_num_f32", lambda m, x: x.nan_to_num(), [A((8,), "float32", data=SPECIAL)], {}),
    ("lerp_scalar", lambda m, a, b: (a.lerp(b, 0.3), m.lerp(a, b, 0.7)), [F((3, 5)), F((3, 5))], {}),
    ("lerp_tensor", lambda m, a, b, w: (a.lerp(b, w), m.lerp(a, b, w)), [F((3, 5)), F((5,)), F((3, 1))], {}),
    ("addcmul", lambda m, x, a, b: (x.addcmul(a, b), m.addcmul(x, a, b, value=0.5), x.addcmul(a, b, value=-2)),
     [F((3, 5)), F((3, 1)), F((5,))], {}),
    ("addcdiv", lambda m, x, a, b: (x.addcdiv(a, b), m.addcdiv(x, a, b, value=0.5), x.addcdiv(a, b, value=-2)),
     [F((3, 5)), F((3, 1)), F((5,), kind="pos")], {}),
    ("clamp_min", lambda m, x: (x.clamp_min(1.0), m.clamp_min(x, 0.5)), [F((3, 5), kind="ties")], {}),
    ("clamp_max", lambda m, x: (x.clamp_max(1.0), m.clamp_max(x, 0.5)), [F((3, 5), kind="ties")], {}),
    ("clamp_min_max_int", lambda m, x: (x.clamp_min(0), x.clamp_max(1)), [A((6,), "int64", "int", grad=False)], {}),
    ("atan2", lambda m, y, x: (y.atan2(x), m.atan2(y, x)), [F((3, 5)), F((5,))], {}),
    ("logical_and", lambda m, a, b: (a.logical_and(b), m.logical_and(a, b)),
     [C(3, 4, kind="zeros"), A((4,), "int64", "int", grad=False, low=0, high=2)], {}),
    ("logical_or", lambda m, a, b: (a.logical_or(b), m.logical_or(a, b)),
     [C(3, 4, kind="zeros"), A((3, 4), "bool", "bool", grad=False)], {}),
    ("logical_xor", lambda m, a, b: (a.logical_xor(b), m.logical_xor(a, b)),
     [A((3, 4), "bool", "bool", grad=False), C(1, 4, kind="zeros")], {}),
    ("logical_not", lambda m, a, b: (a.logical_not(), m.logical_not(a), b.logical_not()),
     [C(3, 4, kind="zeros"), A((5,), "int64", "int", grad=False, low=0, high=2)], {}),
    ("logical_nan", lambda m, a: (a.logical_not(), a.logical_and(a)), [A((8,), data=SPECIAL)], {}),
    # ------------------------------------------------------------ reductions
    ("prod", lambda m, x: (x.prod(), m.prod(x), x.prod(1), x.prod(-1, keepdim=True), m.prod(x, 0)),
     [F((2, 3, 4), kind="pos")], {}),
    ("prod_zeros", lambda m, x: (x.prod(1), x.prod(0, keepdim=True)), [A((4, 5), data=ZEROS)], {}),
    ("prod_one_zero_whole", lambda m, x: x.prod(), [A((5,), data=ZEROS[1])], {}),
    ("prod_two_zeros_whole", lambda m, x: x.prod(), [A((5,), data=ZEROS[2])], {}),
    ("prod_random_zeros", lambda m, x: (x.prod(-1), x.prod(0)), [F((3, 6), kind="zeros")], {}),
    ("prod_int", lambda m, x: (x.prod(), x.prod(0)), [A((3, 4), "int64", "int", grad=False)], {}),
    ("cumprod", lambda m, x: (x.cumprod(0), m.cumprod(x, 1), x.cumprod(-1)), [F((2, 3, 4))], {}),
    ("cumprod_zeros", lambda m, x: (x.cumprod(1), x.cumprod(0)), [A((4, 5), data=ZEROS)], {}),
    ("count_nonzero", lambda m, x: (x.count_nonzero(), m.count_nonzero(x, dim=1), x.count_nonzero((0, 2)),
                                    x.count_nonzero(-1)), [C(2, 3, 4, kind="zeros")], {}),
    ("any", lambda m, x: (x.any(), m.any(x), x.any(1), x.any(-1, keepdim=True), m.any(x, 0)),
     [C(2, 3, 4, kind="zeros")], {}),
    ("all", lambda m, x: (x.all(), m.all(x), x.all(1), x.all(-1, keepdim=True), m.all(x, 0)),
     [C(2, 3, 4, kind="zeros")], {}),
    ("any_all_bool", lambda m, x: (x.any(0), x.all(1), x.any(), x.all()), [A((3, 4), "bool", "bool", grad=False)], {}),
    ("aminmax", lambda m, x: (tuple(x.aminmax()), tuple(m.aminmax(x, dim=1)), x.aminmax(dim=-1, keepdim=True).min,
                              x.aminmax(dim=0).max), [F((3, 4, 2))], {}),
    ("aminmax_ties", lambda m, x: (tuple(x.aminmax()), tuple(x.aminmax(dim=1))), [F((3, 5), kind="ties")], {}),
    ("std_mean", lambda m, x: (m.std_mean(x), m.std_mean(x, 1), m.std_mean(x, (0, 2), keepdim=True),
                               m.std_mean(x, -1, correction=0), m.std_mean(x, 1, unbiased=False)), [F((2, 3, 4))], {}),
    ("var_mean", lambda m, x: (m.var_mean(x), m.var_mean(x, 1), m.var_mean(x, (0, 2), keepdim=True),
                               m.var_mean(x, -1, correction=0), m.var_mean(x, 1, unbiased=False)), [F((2, 3, 4))], {}),
    ("median_whole", lambda m, x: (x.median(), m.median(x)), [F((3, 4))], {}),
    ("median_odd", lambda m, x: x.median(), [F((7,))], {}),
    ("median_dim", lambda m, x: (tuple(x.median(1)), x.median(-1, keepdim=True).values, m.median(x, 0).indices),
     [F((3, 4, 5))], {}),
    ("logsumexp", lambda m, x: (x.logsumexp(1), m.logsumexp(x, -1, keepdim=True), x.logsumexp((0, 2))),
     [F((2, 3, 4))], {}),
    ("logsumexp_big", lambda m, x: x.logsumexp(1),
     [A((2, 3), data=[[1000.0, 1000.5, -1000.0], [-2000.0, -2001.0, -1999.5]])], {}),
    # ------------------------------------------------------------ sorting
    ("sort", lambda m, x: (tuple(x.sort()), tuple(m.sort(x, 0)), x.sort(dim=1, descending=True).values,
                           m.sort(x, dim=-1, descending=True).indices), [F((2, 3, 4))], {}),
    ("sort_int", lambda m, x: (tuple(x.sort()), x.sort(0, descending=True).values),
     [I(np.random.default_rng(0).permutation(20).reshape(4, 5) - 10)], {}),
    ("argsort", lambda m, x: (x.argsort(), m.argsort(x, dim=0), x.argsort(1, descending=True),
                              m.argsort(x, dim=-1, descending=True)), [C(2, 3, 4)], {}),
    ("topk", lambda m, x: (tuple(x.topk(2)), tuple(m.topk(x, 3, dim=0)), x.topk(1, dim=1, largest=False).values,
                           m.topk(x, 2, dim=-1, largest=False).indices, x.topk(4).values), [F((3, 5, 4))], {}),
    # ------------------------------------------------------------ indexing
    ("gather", lambda m, x, i: (x.gather(1, i), m.gather(x, 1, i), x.gather(-1, i)),
     [F((3, 5)), I([[0, 4], [2, 2], [3, 1]])], {}),
    ("gather_dim0_small_index", lambda m, x, i: (x.gather(0, i), m.gather(x, 0, i)),
     [F((3, 5)), I([[2, 0, 1], [1, 1, 0]])], {}),
    ("gather_3d", lambda m, x, i: x.gather(-2, i),
     [F((2, 3, 4)), I(np.random.default_rng(1).integers(0, 3, (2, 2, 4)))], {}),
    ("scatter_src", lambda m, x, i, s: (x.scatter(1, i, s), m.scatter(x, 1, i, s), x.scatter(-1, i, s)),
     [F((3, 5)), I([[4, 0], [1, 3], [2, 0]]), F((3, 2))], {}),
    ("scatter_src_dim0", lambda m, x, i, s: x.scatter(0, i, s),
     [F((3, 5)), I([[2, 0, 1, 0, 2], [0, 1, 2, 1, 0]]), F((2, 5))], {}),
    ("scatter_value", lambda m, x, i: (x.scatter(1, i, value=2.5), m.scatter(x, 1, i, value=-1.0),
                                       x.scatter(1, i, 0.5)),
     [F((3, 5)), I([[4, 0], [1, 3], [2, 0]])], {}),
    ("scatter_add", lambda m, x, i, s: (x.scatter_add(1, i, s), m.scatter_add(x, 1, i, s)),
     [F((3, 5)), I([[4, 4, 0], [1, 1, 1], [0, 2, 0]]), F((3, 3))], {}),
    ("scatter_add_dim0", lambda m, x, i, s: x.scatter_add(0, i, s),
     [F((3, 5)), I([[2, 0, 2, 0, 1], [2, 2, 0, 1, 1]]), F((2, 5))], {}),
    ("index_select", lambda m, x, i: (x.index_select(0, i), m.index_select(x, 1, i), x.index_select(-1, i)),
     [F((3, 5)), I([2, 0, 2, 1])], {}),
    ("index_select_3d", lambda m, x, i: x.index_select(1, i), [F((2, 3, 4)), I([2, 0])], {}),
    ("masked_select", lambda m, x, k: (x.masked_select(k), m.masked_select(x, k)),
     [F((3, 5)), C(3, 5, kind="bool")], {}),
    ("masked_select_broadcast", lambda m, x, k: x.masked_select(k), [F((5,)), C(2, 5, kind="bool")], {}),
    ("masked_select_row_mask", lambda m, x, k: x.masked_select(k), [F((3, 5)), B([[True], [False], [True]])], {}),
    ("nonzero", lambda m, x: (x.nonzero(), m.nonzero(x), x.nonzero(as_tuple=True), m.nonzero(x, as_tuple=True)),
     [C(3, 5, kind="zeros")], {}),
    ("nonzero_bool_3d", lambda m, x: (x.nonzero(), x.nonzero(as_tuple=True)),
     [A((2, 3, 4), "bool", "bool", grad=False)], {}),
    ("nonzero_none", lambda m, x: (x.nonzero(), x.nonzero(as_tuple=True)), [A((2, 3), data=np.zeros((2, 3)))], {}),
    ("narrow", lambda m, x: (x.narrow(0, 1, 2), m.narrow(x, -1, 1, 3), x.narrow(1, -3, 2), x.narrow(1, 4, 0)),
     [F((3, 5))], {}),
    ("select", lambda m, x: (x.select(0, 1), m.select(x, 1, 2), x.select(-1, -1), x.select(-3, -2)),
     [F((2, 3, 4))], {}),
    ("take_along_dim", lambda m, x, i: (m.take_along_dim(x, i, 1), x.take_along_dim(i, dim=0),
                                        m.take_along_dim(x, i, -1)),
     [F((3, 5)), I(np.random.default_rng(2).integers(0, 3, (3, 5)))], {}),
    ("take_along_dim_flat", lambda m, x, i: m.take_along_dim(x, i), [F((3, 5)), I([14, 0, 7, 7])], {}),
    # ------------------------------------------------------------ shape
    ("movedim", lambda m, x: (x.movedim(0, -1), m.movedim(x, -1, 0), x.movedim((0, 1), (2, 0)), x.movedim(1, 1)),
     [F((2, 3, 4))], {}),
    ("diagonal", lambda m, x: (x.diagonal(), m.diagonal(x, 1), x.diagonal(offset=-1, dim1=1, dim2=0),
                               x.diagonal(7)), [F((3, 5))], {}),
    ("diagonal_3d", lambda m, x: (x.diagonal(1, -1, 0), m.diagonal(x, offset=-1, dim1=1, dim2=2)), [F((2, 3, 4))], {}),
    ("diag_vector", lambda m, v: (m.diag(v), m.diag(v, 1), m.diag(v, diagonal=-2)), [F((4,))], {}),
    ("diag_matrix", lambda m, x: (m.diag(x), m.diag(x, 2), m.diag(x, diagonal=-1)), [F((3, 5))], {}),
    ("tril", lambda m, x: (x.tril(), m.tril(x, 1), x.tril(diagonal=-1), x.tril(4)), [F((3, 5))], {}),
    ("triu", lambda m, x: (x.triu(), m.triu(x, 1), x.triu(diagonal=-1), x.triu(-4)), [F((3, 5))], {}),
    ("tril_triu_batched", lambda m, x: (x.tril(1), x.triu(-1)), [F((2, 3, 4))], {}),
    ("roll", lambda m, x: (x.roll(2), m.roll(x, -7), x.roll(1, 0), x.roll(-2, -1), x.roll((1, 2), (0, 1)),
                           m.roll(x, shifts=(7, -1), dims=(-1, 0)), x.roll(5, 1)), [F((3, 5))], {}),
    ("flip", lambda m, x: (x.flip(0), m.flip(x, (-1,)), x.flip((0, 2)), x.flip((1, -1))), [F((2, 3, 4))], {}),
    ("repeat", lambda m, x: (x.repeat(2, 1), x.repeat(1, 3), x.repeat(2, 1, 3), x.repeat((1, 2, 1, 1)), x.repeat(1, 1)),
     [F((3, 5))], {}),
    ("tile", lambda m, x: (x.tile((2,)), m.tile(x, (2, 1)), x.tile((1, 3)), m.tile(x, (2, 1, 2))), [F((3, 5))], {}),
    ("outer", lambda m, a, b: m.outer(a, b), [F((3,)), F((5,))], {}),
    ("bmm", lambda m, a, b: m.bmm(a, b), [F((2, 3, 4)), F((2, 4, 5))], {}),
    ("addmm", lambda m, c, a, b: (m.addmm(c, a, b), m.addmm(c, a, b, beta=0.5, alpha=-2.0)),
     [F((3, 5)), F((3, 4)), F((4, 5))], {}),
    ("addmm_broadcast", lambda m, c, a, b: (m.addmm(c, a, b), m.addmm(c, a, b, beta=0, alpha=1.5)),
     [F((5,)), F((3, 4)), F((4, 5))], {}),
    ("baddbmm", lambda m, c, a, b: (m.baddbmm(c, a, b), m.baddbmm(c, a, b, beta=0.5, alpha=-2.0)),
     [F((2, 3, 5)), F((2, 3, 4)), F((2, 4, 5))], {}),
    ("baddbmm_broadcast", lambda m, c, a, b: m.baddbmm(c, a, b, alpha=0.5),
     [F((3, 5)), F((2, 3, 4)), F((2, 4, 5))], {}),
    ("diff", lambda m, x: (x.diff(), m.diff(x, n=2), x.diff(dim=0), x.diff(n=2, dim=1), x.diff(n=5), x.diff(n=0)),
     [F((3, 5))], {}),
    ("diff_int", lambda m, x: x.diff(), [A((6,), "int64", "int", grad=False)], {}),
    # ------------------------------------------------------------ misc
    ("allclose", lambda m, a, b: (m.allclose(a, b), m.allclose(a, a + 1e-9), m.allclose(a, a * 1.01, rtol=0.02),
                                  m.allclose(a, a + 1e-3), m.allclose(a, a + 1e-3, atol=1e-2), m.allclose(a, a[0])),
     [C(3, 5), C(3, 5)], {}),
    ("allclose_nan", lambda m, a: (m.allclose(a, a), m.allclose(a, a, equal_nan=True)), [A((8,), data=SPECIAL)], {}),
    ("equal", lambda m, a, b: (m.equal(a, a), m.equal(a, b), m.equal(a, a[:, :4]), m.equal(a, a.reshape(5, 3))),
     [C(3, 5), C(3, 5)], {}),
    ("nelement", lambda m, a, b: (a.nelement(), b.nelement()), [F((2, 3, 4)), F((0, 3))], {}),
    ("unique", lambda m, x: (m.unique(x), m.unique(x, return_inverse=True), m.unique(x, return_counts=True),
                             m.unique(x, sorted=True, return_inverse=True, return_counts=True)),
     [A((3, 5), "int64", "int", grad=False, low=0, high=6)], {}),
    ("unique_float", lambda m, x: m.unique(x, return_inverse=True, return_counts=True), [C(4, 5, kind="ties")], {}),
    ("bincount", lambda m, x: (m.bincount(x), m.bincount(x, minlength=3), m.bincount(x, minlength=12)),
     [A((9,), "int64", "int", grad=False, low=0, high=7)], {}),
]  # fmt: skip


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_parity(name):
    _, fn, specs, kw = next(c for c in CASES if c[0] == name)
    check_case(fn, specs, **kw)


# PyTorch also spells these as methods; conch's first contract is the function form tested above.
METHOD_SPELLINGS = [
    ("outer", lambda m, a, b: a.outer(b), [F((3,)), F((5,))]),
    ("bmm", lambda m, a, b: a.bmm(b), [F((2, 3, 4)), F((2, 4, 5))]),
    ("addmm", lambda m, c, a, b: c.addmm(a, b, beta=0.5, alpha=2.0), [F((3, 5)), F((3, 4)), F((4, 5))]),
    ("baddbmm", lambda m, c, a, b: c.baddbmm(a, b), [F((2, 3, 5)), F((2, 3, 4)), F((2, 4, 5))]),
    ("diag", lambda m, x: (x.diag(), x.diag(1)), [F((3, 5))]),
    ("allclose", lambda m, a, b: (a.allclose(b), a.allclose(a)), [C(3, 5), C(3, 5)]),
    ("equal", lambda m, a, b: (a.equal(b), a.equal(a)), [C(3, 5), C(3, 5)]),
    ("unique", lambda m, x: x.unique(return_counts=True), [A((3, 5), "int64", "int", grad=False, low=0, high=6)]),
    ("bincount", lambda m, x: x.bincount(minlength=9), [A((9,), "int64", "int", grad=False, low=0, high=7)]),
]


@pytest.mark.parametrize("name", [c[0] for c in METHOD_SPELLINGS])
def test_method_spellings(name):
    _, fn, specs = next(c for c in METHOD_SPELLINGS if c[0] == name)
    check_case(fn, specs)


@pytest.mark.parametrize("replacement", [False, True])
def test_multinomial_shape_and_dtype_match(replacement):
    # the draws are random: only shapes and dtypes are compared, never the values
    probs = np.array([[0.2, 0.0, 0.5, 0.3], [1.0, 1.0, 0.0, 2.0]])
    conch.manual_seed(0)
    torch.manual_seed(0)
    c = conch.multinomial(conch.tensor(probs), 3, replacement=replacement)
    t = torch.multinomial(torch.tensor(probs), 3, replacement=replacement)
    assert tuple(c.shape) == tuple(t.shape) and c.dtype.name == str(t.dtype).removeprefix("torch.")
