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
