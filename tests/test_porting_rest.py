"""The rest of issue #14: pad cropping, einsum diagonals, scatter_reduce, interpolate, argument errors, GradScaler.

Each behaviour is checked against an independent reference (float64 NumPy, closed forms, finite differences by
``conch.autograd.gradcheck``) and, in separate ``*_torch`` functions, against PyTorch where it imports.
"""

import warnings

import numpy as np
import pytest

import conch
import conch.nn.functional as F
from conch.autograd import gradcheck, gradgradcheck


def t64(a, grad=False):
    return conch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def npv(t):
    return t.detach().numpy()


def _vjp_check(fn, xs, rng):
    """gradcheck of <fn(xs), r> with a random upstream gradient r (so a wrong permutation of g cannot pass)."""
    r = t64(rng.standard_normal(tuple(fn(*xs).shape)))
    assert gradcheck(lambda *a: (fn(*a) * r).sum(), xs)


# ---------------------------------------------------------------- GradScaler's two argument orders


def test_grad_scaler_takes_the_device_first_as_torch_amp():
    s = conch.amp.GradScaler("cuda", 1024.0, 3.0, 0.25, 7)
    assert (s.get_scale(), s.get_growth_factor(), s.get_backoff_factor(), s.get_growth_interval()) == (
        1024.0, 3.0, 0.25, 7)  # fmt: skip
    assert conch.amp.GradScaler("cpu", init_scale=8.0).get_scale() == 8.0


def test_cuda_amp_grad_scaler_keeps_the_deprecated_order():
    with pytest.warns(FutureWarning, match="deprecated"):
        s = conch.cuda.amp.GradScaler(1024.0, 4.0)
    assert (s.get_scale(), s.get_growth_factor()) == (1024.0, 4.0)


@pytest.mark.parametrize("first", [1024.0, conch.float16])
def test_grad_scaler_mixups_are_type_errors(first):
    with pytest.raises(TypeError, match="device must be a str"):
        conch.amp.GradScaler(first)
    with pytest.raises(TypeError, match="init_scale must be a finite float, got 'cuda'"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            conch.cuda.amp.GradScaler("cuda")


def test_grad_scaler_matches_torch_positional_order():
    torch = pytest.importorskip("torch")
    c, t = conch.amp.GradScaler("cpu", 512.0, 4.0, 0.125, 3), torch.amp.GradScaler("cpu", 512.0, 4.0, 0.125, 3)
    for name in ("get_scale", "get_growth_factor", "get_backoff_factor", "get_growth_interval"):
        assert getattr(c, name)() == getattr(t, name)()


# ---------------------------------------------------------------- pad: negative widths in every mode


def _pad_reference(x, lo, hi, mode):
    """NumPy reference along the last axis: reflect/replicate pad by the positive widths, then crop the negative
    ones (the mirror is the whole input's); circular crops first and wraps the crop; constant crops then pads."""
    n = x.shape[-1]
    crop = x[..., max(-lo, 0) : n - max(-hi, 0)]
    pos = [(0, 0)] * (x.ndim - 1) + [(max(lo, 0), max(hi, 0))]
    if mode in ("constant", "circular"):
        return np.pad(crop, pos, mode={"constant": "constant", "circular": "wrap"}[mode])
    full = np.pad(x, pos, mode={"reflect": "reflect", "replicate": "edge"}[mode])
    return full[..., max(-lo, 0) : full.shape[-1] - max(-hi, 0)]


PAD_CASES = [(-1, 2), (2, -1), (-3, 3), (-2, -2), (3, -4), (-4, 0), (0, -1)]


@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("lo,hi", PAD_CASES)
def test_pad_negative_widths_crop_in_every_mode(mode, lo, hi):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5))
    m = 5 + min(lo, 0) + min(hi, 0)  # the cropped size, which circular wraps around at most once
    if mode == "circular" and max(lo, hi) > m:
        with pytest.raises(RuntimeError, match="wrapping around more than once"):
            F.pad(t64(x), (lo, hi), mode=mode)
        return
    np.testing.assert_array_equal(npv(F.pad(t64(x), (lo, hi), mode=mode)), _pad_reference(x, lo, hi, mode))
    xs = t64(x, grad=True)
    _vjp_check(lambda t: F.pad(t, (lo, hi), mode=mode), (xs,), rng)
    assert gradgradcheck(lambda t: F.pad(t, (lo, hi), mode=mode) ** 2, (xs,))


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_pad_negative_widths_on_two_dims(mode):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 2, 4, 6))
    want = _pad_reference(x, -1, 2, mode)
    want = np.swapaxes(_pad_reference(np.swapaxes(want, -1, -2), 1, -2, mode), -1, -2)
    np.testing.assert_array_equal(npv(F.pad(t64(x), (-1, 2, 1, -2), mode=mode)), want)
    _vjp_check(lambda t: F.pad(t, (-1, 2, 1, -2), mode=mode), (t64(x, grad=True),), rng)


@pytest.mark.parametrize(
    "widths,mode,match",
    [
        ((5, 0), "reflect", r"less than .* padding \(5, 0\) at dimension 2 of input \[1, 2, 5\]"),
        ((-5, 5), "reflect", "Padding size should be less than"),
        ((-5, 0), "reflect", "too small. Calculated output size: 0"),
        ((-6, 1), "replicate", "too small"),
        ((-3, 3), "circular", "wrapping around more than once"),
        ((6, 0), "circular", "wrapping around more than once"),
        ((-6, 1), "constant", r"crop dim 2 of size 5 below zero"),
        ((1, 2, 3), "constant", "Padding length must be divisible by 2"),
        ((1,) * 8, "reflect", "less than or equal to two times the input dimension"),
    ],
)
def test_pad_invalid_widths_raise_as_torch(widths, mode, match):
    with pytest.raises(RuntimeError, match=match):
        F.pad(conch.zeros(1, 2, 5), widths, mode=mode)


@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate", "circular"])
def test_pad_negative_widths_match_torch(mode):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 5, 6))
    for widths in [(-1, 2, 0, 0), (2, -1, -1, 3), (-2, -2, 1, 0), (2, -3, 1, 1), (-2, 2, 0, 0), (-3, 3, 0, 0)]:
        try:
            want = torch.nn.functional.pad(torch.tensor(x), widths, mode=mode)
        except RuntimeError:
            with pytest.raises(RuntimeError):
                F.pad(t64(x), widths, mode=mode)
            continue
        np.testing.assert_array_equal(npv(F.pad(t64(x), widths, mode=mode)), want.numpy())
        g = rng.standard_normal(tuple(want.shape))
        tx, cx = torch.tensor(x, requires_grad=True), t64(x, grad=True)
        torch.nn.functional.pad(tx, widths, mode=mode).backward(torch.tensor(g))
        F.pad(cx, widths, mode=mode).backward(t64(g))
        np.testing.assert_allclose(cx.grad.numpy(), tx.grad.numpy(), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- einsum with a repeated label (a diagonal)


@pytest.mark.parametrize(
    "eq,shapes", [("ii->i", [(3, 3)]), ("ii", [(4, 4)]), ("iij,j->i", [(3, 3, 5), (5,)]), ("bii->b", [(2, 3, 3)])]
)
def test_einsum_diagonal_matches_torch(eq, shapes):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal(s) for s in shapes]
    cs, ts = [t64(a, grad=True) for a in arrays], [torch.tensor(a, requires_grad=True) for a in arrays]
    c, t = conch.einsum(eq, *cs), torch.einsum(eq, *ts)
    np.testing.assert_allclose(npv(c), t.detach().numpy(), rtol=1e-12)
    g = rng.standard_normal(tuple(t.shape))
    c.backward(t64(g))
    t.backward(torch.tensor(g))
    for a, b in zip(cs, ts):
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-12)


# ---------------------------------------------------------------- invalid arguments raise as PyTorch


@pytest.mark.parametrize("fn", ["linspace", "logspace"])
def test_linspace_logspace_refuse_bad_steps(fn):
    f = getattr(conch, fn)
    with pytest.raises(RuntimeError, match="number of steps must be non-negative"):
        f(0, 1, -1)
    for bad in (2.5, True, "3"):
        with pytest.raises(TypeError, match="argument 'steps' must be int"):
            f(0, 1, bad)
    assert f(0, 1, 0).shape == (0,) and f(0, 1, np.int64(3)).shape == (3,)


def test_logspace_values():
    np.testing.assert_allclose(npv(conch.logspace(0, 2, 3, dtype=conch.float64)), [1.0, 10.0, 100.0], rtol=1e-15)
    np.testing.assert_allclose(npv(conch.logspace(-1, 3, 5, base=2.0, dtype=conch.float64)), 2.0 ** np.arange(-1, 4))


def test_flip_refuses_repeated_and_out_of_range_dims():
    x = conch.zeros(2, 3)
    with pytest.raises(RuntimeError, match=r"dim 0 appears multiple times in the list of dims"):
        x.flip((0, 0))
    with pytest.raises(RuntimeError, match="dim 1 appears multiple times"):
        x.flip((1, -1))
    with pytest.raises(IndexError, match=r"Dimension out of range \(expected to be in range of \[-2, 1\], but got 2\)"):
        x.flip(2)


@pytest.mark.parametrize("dtype", [np.float64, np.bool_, np.uint8, np.int16])
@pytest.mark.parametrize("what", ["gather", "scatter", "scatter_add", "index_select", "index_add"])
def test_index_of_the_wrong_dtype_is_refused(what, dtype):
    x = conch.zeros(2, 3)
    idx2 = conch.tensor(np.zeros((1, 2), dtype=dtype))
    idx1 = conch.tensor(np.zeros(2, dtype=dtype))
    calls = {
        "gather": lambda: x.gather(1, idx2),
        "scatter": lambda: x.scatter(1, idx2, 1.0),
        "scatter_add": lambda: x.scatter_add(1, idx2, conch.ones(1, 2)),
        "index_select": lambda: x.index_select(1, idx1),
        "index_add": lambda: x.index_add(1, idx1, conch.ones(2, 2)),
    }
    with pytest.raises(RuntimeError, match=f"{what}\\(\\): Expected dtype int32/int64 for index, got"):
        calls[what]()


def test_index_fill_takes_int64_only_and_wraps_negative_indices():
    x = conch.zeros(2, 3)
    with pytest.raises(IndexError, match="index_fill_\\(\\): Expected dtype int64 for index"):
        x.index_fill(1, conch.tensor([0], dtype=conch.int32), 1.0)
    np.testing.assert_array_equal(npv(x.index_fill(1, conch.tensor([-1]), 1.0)), [[0, 0, 1], [0, 0, 1]])


def test_gather_scatter_index_ndim_range_and_src_dtype_errors():
    x = conch.zeros(2, 3)
    for f in (lambda i: x.gather(1, i), lambda i: x.scatter(1, i, 1.0), lambda i: x.scatter_add(1, i, conch.ones(2)),
              lambda i: x.scatter_reduce(1, i, conch.ones(2), "sum")):  # fmt: skip
        with pytest.raises(RuntimeError, match=r"Index tensor must have the same number of dimensions .* \(2,\)"):
            f(conch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match="index 5 is out of bounds for dimension 1 with size 3"):
        x.scatter(1, conch.tensor([[0, 5]]), 1.0)
    with pytest.raises(RuntimeError, match="index -1 is out of bounds for dimension 1 with size 3"):
        x.index_select(1, conch.tensor([0, -1]))
    with pytest.raises(RuntimeError, match="Expected self.dtype to be equal to src.dtype"):
        x.scatter(1, conch.tensor([[0, 1]]), conch.ones(1, 2, dtype=conch.float64))
    with pytest.raises(RuntimeError, match="Expected self.dtype to be equal to src.dtype"):
        x.scatter_add(1, conch.tensor([[0, 1]]), conch.ones(1, 2, dtype=conch.float64))


def test_invalid_calls_raise_the_same_type_as_torch():
    torch = pytest.importorskip("torch")
    cases = [
        ("linspace", lambda m: m.linspace(0, 1, -1)),
        ("linspace", lambda m: m.linspace(0, 1, 2.5)),
        ("logspace", lambda m: m.logspace(0, 1, -2)),
        ("flip", lambda m: m.zeros(2, 3).flip((0, 0))),
        ("flip", lambda m: m.zeros(2, 3).flip(3)),
        ("gather", lambda m: m.zeros(2, 3).gather(1, m.zeros(1, 2, dtype=m.int16))),
        ("gather", lambda m: m.zeros(2, 3).gather(1, m.tensor([[0, 3]]))),
        ("scatter", lambda m: m.zeros(2, 3).scatter(1, m.tensor([0]), 1.0)),
        ("scatter", lambda m: m.zeros(2, 3).scatter(1, m.tensor([[0]]), m.ones(1, 1, dtype=m.float64))),
        ("index_select", lambda m: m.zeros(2, 3).index_select(1, m.tensor([0.0]))),
        ("index_select", lambda m: m.zeros(2, 3).index_select(1, m.tensor([[0]]))),
        ("index_fill", lambda m: m.zeros(2, 3).index_fill(1, m.tensor([0], dtype=m.int32), 1.0)),
    ]
    for _name, call in cases:  # the name says which call failed in the traceback
        with pytest.raises(Exception) as want:
            call(torch)
        with pytest.raises(want.type):
            call(conch)


# ---------------------------------------------------------------- scatter_reduce and scatter(reduce=)

REDUCES = ["sum", "prod", "mean", "amax", "amin"]


def _scatter_reduce_reference(x, dim, idx, src, reduce, include_self):
    """A loop over every index element, in float64 (or the integers' own type): the definition itself."""
    groups = {}
    for pos in np.ndindex(*idx.shape):
        target = pos[:dim] + (int(idx[pos]),) + pos[dim + 1 :]
        groups.setdefault(target, [x[target]] if include_self else []).append(src[pos])
    out = x.copy()
    fns = {"sum": np.sum, "prod": np.prod, "amax": np.max, "amin": np.min}
    for target, vals in groups.items():
        if reduce == "mean":
            out[target] = np.sum(vals) // len(vals) if x.dtype.kind in "iu" else np.mean(vals)
        else:
            out[target] = fns[reduce](vals)
    return out


@pytest.mark.parametrize("reduce", REDUCES)
@pytest.mark.parametrize("include_self", [True, False])
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_scatter_reduce_matches_the_definition_and_gradchecks(reduce, include_self, dim):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 5, 2))
    idx = rng.integers(0, x.shape[dim], (2, 4, 2))  # smaller than src: src's leading part is used
    src = rng.standard_normal((3, 4, 2))
    want = _scatter_reduce_reference(x, dim % 3, idx, src[:2, :4, :2], reduce, include_self)
    got = t64(x).scatter_reduce(dim, conch.tensor(idx), t64(src), reduce, include_self=include_self)
    np.testing.assert_allclose(npv(got), want, rtol=1e-12, atol=1e-14)
    xs, ss = t64(x, grad=True), t64(src, grad=True)
    fn = lambda a, b: a.scatter_reduce(dim, conch.tensor(idx), b, reduce, include_self=include_self)  # noqa: E731
    _vjp_check(fn, (xs, ss), rng)


@pytest.mark.parametrize("reduce", REDUCES)
def test_scatter_reduce_integers(reduce):
    rng = np.random.default_rng(5)
    x, src, idx = rng.integers(-9, 10, (4, 3)), rng.integers(-9, 10, (6, 3)), rng.integers(0, 4, (6, 3))
    for inc in (True, False):
        got = conch.tensor(x).scatter_reduce(0, conch.tensor(idx), conch.tensor(src), reduce, include_self=inc)
        assert got.dtype == conch.int64
        np.testing.assert_array_equal(npv(got), _scatter_reduce_reference(x, 0, idx, src, reduce, inc))


def test_scatter_reduce_amax_shares_the_gradient_among_ties():
    x = t64([1.0, 0.0, 3.0], grad=True)
    src = t64([3.0, 3.0, 2.0, 0.5], grad=True)
    out = x.scatter_reduce(0, conch.tensor([2, 2, 0, 1]), src, "amax")  # [2, 0.5, 3]: three 3s tie at position 2
    np.testing.assert_array_equal(npv(out), [2.0, 0.5, 3.0])
    out.backward(t64([10.0, 20.0, 30.0]))
    np.testing.assert_allclose(x.grad.numpy(), [0.0, 0.0, 10.0])  # self's 1 and 0 lost; its 3 ties
    np.testing.assert_allclose(src.grad.numpy(), [10.0, 10.0, 10.0, 20.0])


def test_scatter_reduce_prod_gradient_with_zeros():
    # position 0: self 2 * src (0, 3): one zero, so d/d(the zero) = 2*3 and the others get 0
    # position 1: self 0 * src (4,): d/dself = 4, d/dsrc = 0; position 2: two zeros, every gradient 0
    x = t64([2.0, 0.0, 5.0], grad=True)
    src = t64([0.0, 3.0, 4.0, 0.0, 0.0], grad=True)
    out = x.scatter_reduce(0, conch.tensor([0, 0, 1, 2, 2]), src, "prod")
    np.testing.assert_array_equal(npv(out), [0.0, 0.0, 0.0])
    out.backward(t64([1.0, 1.0, 1.0]))
    np.testing.assert_allclose(x.grad.numpy(), [0.0, 4.0, 0.0])
    np.testing.assert_allclose(src.grad.numpy(), [6.0, 0.0, 0.0, 0.0, 0.0])


def test_scatter_with_reduce_add_and_multiply_and_in_place():
    rng = np.random.default_rng(6)
    x, idx, src = rng.standard_normal((2, 4)), rng.integers(0, 4, (2, 3)), rng.standard_normal((2, 3))
    for reduce, name in (("add", "sum"), ("multiply", "prod")):
        want = _scatter_reduce_reference(x, 1, idx, src, name, True)
        np.testing.assert_allclose(npv(t64(x).scatter(1, conch.tensor(idx), t64(src), reduce=reduce)), want)
        y = t64(x)
        y.scatter_(1, conch.tensor(idx), 2.0, reduce=reduce)
        np.testing.assert_allclose(npv(y), _scatter_reduce_reference(x, 1, idx, np.full((2, 3), 2.0), name, True))
    y = t64(x)
    assert y.scatter_reduce_(1, conch.tensor(idx), t64(src), "amin", include_self=False) is y
    np.testing.assert_allclose(npv(y), _scatter_reduce_reference(x, 1, idx, src, "amin", False))
    np.testing.assert_allclose(npv(conch.scatter_reduce(t64(x), 1, conch.tensor(idx), t64(src), "mean")),
                               _scatter_reduce_reference(x, 1, idx, src, "mean", True))  # fmt: skip
    with pytest.raises(RuntimeError, match="reduce argument must be either sum, prod, mean, amax or amin"):
        t64(x).scatter_reduce(1, conch.tensor(idx), t64(src), "max")
    with pytest.raises(RuntimeError, match="reduce argument must be either add or multiply"):
        t64(x).scatter(1, conch.tensor(idx), t64(src), reduce="sum")


@pytest.mark.parametrize("reduce", REDUCES)
def test_scatter_reduce_matches_torch_with_ties_and_zeros(reduce):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    for include_self in (True, False):
        x = rng.integers(-2, 3, (3, 4)).astype(np.float64)  # small integers: many ties and zeros
        src = rng.integers(-2, 3, (3, 6)).astype(np.float64)
        idx = rng.integers(0, 4, (3, 6))
        g = rng.standard_normal((3, 4))
        cx, cs = t64(x, grad=True), t64(src, grad=True)
        tx, ts = torch.tensor(x, requires_grad=True), torch.tensor(src, requires_grad=True)
        c = cx.scatter_reduce(1, conch.tensor(idx), cs, reduce, include_self=include_self)
        t = tx.scatter_reduce(1, torch.tensor(idx), ts, reduce, include_self=include_self)
        np.testing.assert_allclose(npv(c), t.detach().numpy(), rtol=1e-12)
        c.backward(t64(g))
        t.backward(torch.tensor(g))
        np.testing.assert_allclose(cx.grad.numpy(), tx.grad.numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(cs.grad.numpy(), ts.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduce", REDUCES)
def test_scatter_reduce_on_the_test_device(reduce, device):
    rng = np.random.default_rng(8)
    x, src, idx = rng.standard_normal((3, 4)), rng.standard_normal((3, 7)), rng.integers(0, 4, (3, 7))
    cx = conch.tensor(x, device=device, requires_grad=True)
    out = cx.scatter_reduce(1, conch.tensor(idx, device=device), conch.tensor(src, device=device), reduce)
    np.testing.assert_allclose(out.detach().cpu().numpy(), _scatter_reduce_reference(x, 1, idx, src, reduce, True))
    out.sum().backward()
    assert cx.grad.shape == (3, 4) and cx.grad.device == cx.device


# ---------------------------------------------------------------- interpolate: nearest-exact, trilinear, bicubic


def _keys(x, a=-0.75):
    """Keys' cubic convolution kernel at distance x (the textbook piecewise form)."""
    x = abs(x)
    if x <= 1:
        return (a + 2) * x**3 - (a + 3) * x**2 + 1
    return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a if x < 2 else 0.0


def _src_pos(j, n_in, n_out, scale, align_corners, clamp):
    if align_corners:
        return j * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    p = (j + 0.5) * scale - 0.5
    return max(p, 0.0) if clamp else p


def _interp_reference(x, out_size, scales, mode, align_corners):
    """Output element by output element, straight from the definitions (not separable: full 2^d / 4x4 sums)."""
    spatial = x.shape[2:]
    out = np.zeros(x.shape[:2] + tuple(out_size))
    for o in np.ndindex(*out_size):
        if mode == "nearest-exact":
            src = tuple(min(int(np.floor((j + 0.5) * s)), n - 1) for j, s, n in zip(o, scales, spatial))
            out[(...,) + o] = x[(...,) + src]
            continue
        pos = [_src_pos(j, n, m, s, align_corners, mode != "bicubic") for j, n, m, s in
               zip(o, spatial, out_size, scales)]  # fmt: skip
        acc = 0.0
        if mode == "bicubic":
            (py, px), (h, w) = pos, spatial
            fy, fx = int(np.floor(py)), int(np.floor(px))
            for dy in range(-1, 3):
                for dx in range(-1, 3):
                    wgt = _keys(py - (fy + dy)) * _keys(px - (fx + dx))
                    acc = acc + wgt * x[..., min(max(fy + dy, 0), h - 1), min(max(fx + dx, 0), w - 1)]
        else:  # linear family: the 2^d corners around pos, weights the products of (1 - distance)
            base = [min(int(np.floor(p)), n - 1) for p, n in zip(pos, spatial)]
            for corner in np.ndindex(*(2,) * len(pos)):
                idx = tuple(min(b + c, n - 1) for b, c, n in zip(base, corner, spatial))
                wgt = np.prod([(p - b) if c else 1 - (p - b) for p, b, c in zip(pos, base, corner)])
                acc = acc + wgt * x[(...,) + idx]
        out[(...,) + o] = acc
    return out


INTERP_CASES = [
    ("nearest-exact", (2, 3, 5)),
    ("nearest-exact", (1, 2, 4, 5)),
    ("nearest-exact", (1, 1, 3, 2, 4)),
    ("trilinear", (1, 2, 3, 4, 2)),
    ("bicubic", (2, 1, 4, 5)),
]


@pytest.mark.parametrize(
    "mode,shape,align_corners",
    [(m, s, None) for m, s in INTERP_CASES if m.startswith("nearest")]
    + [(m, s, ac) for m, s in INTERP_CASES if not m.startswith("nearest") for ac in (False, True)],
)
@pytest.mark.parametrize("how", ["size", "scale", "recompute"])
def test_interpolate_modes_match_the_definitions(mode, shape, how, align_corners):
    rng = np.random.default_rng(9)
    x = rng.standard_normal(shape)
    n = len(shape) - 2
    spatial = shape[2:]
    if how == "size":
        kw, out = {"size": (7, 3, 5)[:n]}, (7, 3, 5)[:n]
        scales = [i / o for i, o in zip(spatial, out)]
    else:
        sf = (1.7, 0.6, 2.5)[:n]
        out = tuple(int(np.floor(i * f)) for i, f in zip(spatial, sf))
        kw = {"scale_factor": sf, "recompute_scale_factor": how == "recompute"}
        scales = [i / o for i, o in zip(spatial, out)] if how == "recompute" else [1 / f for f in sf]
    ac = align_corners
    got = F.interpolate(t64(x), mode=mode, align_corners=ac, **kw)
    np.testing.assert_allclose(npv(got), _interp_reference(x, out, scales, mode, bool(ac)), rtol=1e-12, atol=1e-12)
    _vjp_check(lambda t: F.interpolate(t, mode=mode, align_corners=ac, **kw), (t64(x, grad=True),), rng)


def test_interpolate_bicubic_closed_forms():
    rng = np.random.default_rng(10)
    # halfway between samples (odd outputs of size 2n-1 with align_corners) the A=-0.75 weights are
    # (-3, 19, 19, -3)/32; the samples themselves (even outputs) are kept
    row = rng.standard_normal(6)
    up = npv(F.interpolate(t64(row[None, None, None, :]), size=(1, 11), mode="bicubic", align_corners=True))[0, 0, 0]
    np.testing.assert_allclose(up[::2], row, rtol=1e-13)
    mid = (-3 * row[0:-3] + 19 * row[1:-2] + 19 * row[2:-1] - 3 * row[3:]) / 32
    np.testing.assert_allclose(up[3:-3:2], mid, rtol=1e-12)
    # the weights sum to one, so a constant image stays constant, border clamping included
    flat = npv(F.interpolate(t64(np.full((1, 1, 3, 4), 2.5)), scale_factor=1.7, mode="bicubic"))
    np.testing.assert_allclose(flat, 2.5, rtol=1e-13)


def test_interpolate_argument_errors():
    x = conch.zeros(1, 1, 4, 4)
    with pytest.raises(NotImplementedError, match="Got 4D input, but trilinear mode needs 5D input"):
        F.interpolate(x, size=3, mode="trilinear")
    with pytest.raises(NotImplementedError, match="bicubic"):
        F.interpolate(conch.zeros(1, 1, 2, 2, 2), size=3, mode="bicubic")
    with pytest.raises(ValueError, match="align_corners option can only be set with the interpolating modes"):
        F.interpolate(x, size=3, mode="nearest-exact", align_corners=True)
    with pytest.raises(ValueError, match="recompute_scale_factor is not meaningful with an explicit size"):
        F.interpolate(x, size=3, recompute_scale_factor=True)


@pytest.mark.parametrize("mode,shape", INTERP_CASES)
def test_interpolate_modes_match_torch(mode, shape):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    x = rng.standard_normal(shape)
    n = len(shape) - 2
    for kw in [{"size": (7, 3, 9)[:n]}, {"scale_factor": 2.0}, {"scale_factor": (1.7, 0.6, 2.5)[:n]},
               {"scale_factor": 0.5, "recompute_scale_factor": True}]:  # fmt: skip
        for ac in [None] if mode.startswith("nearest") else [False, True]:
            tx, cx = torch.tensor(x, requires_grad=True), t64(x, grad=True)
            t = torch.nn.functional.interpolate(tx, mode=mode, align_corners=ac, **kw)
            c = F.interpolate(cx, mode=mode, align_corners=ac, **kw)
            np.testing.assert_allclose(npv(c), t.detach().numpy(), rtol=1e-10, atol=1e-12)
            g = rng.standard_normal(tuple(t.shape))
            t.backward(torch.tensor(g))
            c.backward(t64(g))
            np.testing.assert_allclose(cx.grad.numpy(), tx.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_upsample_module_takes_the_new_modes_and_recompute_scale_factor():
    x = conch.tensor(np.random.default_rng(12).standard_normal((1, 2, 3, 4)))
    up = conch.nn.Upsample(scale_factor=1.5, mode="bicubic", align_corners=False, recompute_scale_factor=True)
    np.testing.assert_array_equal(
        npv(up(x)),
        npv(F.interpolate(x, scale_factor=1.5, mode="bicubic", align_corners=False, recompute_scale_factor=True)),
    )
    assert up(x).shape == (1, 2, 4, 6)
