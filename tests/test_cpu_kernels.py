"""The cheap CPU kernels: tile pooling (no im2col), the fast NumPy Philox of dropout and its compiled twin
(kernels/_numba/dropout.py), the cached causal masks.

Each is checked against an independent reference (float64 NumPy windows, the generic uint64 Philox, a fresh
tril), by gradcheck in float64, and in separate tests against PyTorch where it imports.
"""

import math

import numpy as np
import pytest

import conch
import conch.nn.functional as F
from conch.autograd import gradcheck, gradgradcheck
from conch.kernels import _causal, _jit, _threads
from conch.kernels import dropout as dk


def t64(a, grad=True):
    return conch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def ref_tiles(x, k, reduce):
    """Pooling over whole kh×kw tiles by explicit windows (float64): (N, C, OH, OW) and the first-argmax positions."""
    n, c, h, w = x.shape
    kh, kw = k
    oh, ow = h // kh, w // kw
    out = np.empty((n, c, oh, ow))
    first = np.empty((n, c, oh, ow), dtype=np.int64)
    for i in range(oh):
        for j in range(ow):
            win = x[:, :, i * kh : (i + 1) * kh, j * kw : (j + 1) * kw].reshape(n, c, -1).astype(np.float64)
            out[:, :, i, j] = reduce(win, axis=-1)
            a = win.argmax(axis=-1)
            first[:, :, i, j] = (i * kh + a // kw) * w + (j * kw + a % kw)
    return out, first


SHAPES = [((2, 3, 8, 8), (2, 2)), ((1, 2, 9, 7), (2, 2)), ((2, 1, 12, 10), (3, 3)), ((1, 2, 6, 9), (2, 3)),
          ((3, 5, 5), (2, 2))]  # fmt: skip


def _op(cpu_path, name):
    """The ops a pooling may record on this CPU path: the compiled kernels' (kernels/_numba/conv.py; 2x2 tiles
    without indices have their own) or ``name``."""
    if cpu_path == "numba":
        return (name, "AvgPoolCompiled") if name.startswith("Avg") else ("MaxPoolCompiled", "MaxPool2x2Compiled")
    return (name,)


def _batched(x):
    return x if x.ndim == 4 else x[None]


@pytest.mark.parametrize("shape,k", SHAPES)
def test_max_pool_tiles_match_windows_and_route_gradient_to_first_max(shape, k, cpu_path):
    rng = np.random.default_rng(0)
    x = rng.integers(-3, 4, shape).astype(np.float64)  # small integers: many ties within a window
    xt = t64(x)
    y, idx = F.max_pool2d(xt, k, return_indices=True)
    assert x.ndim == 3 or type(y.grad_fn).__name__ in _op(cpu_path, "MaxPoolTiles")  # not im2col
    ref, first = ref_tiles(_batched(x), k, np.max)
    ref, first = (ref, first) if x.ndim == 4 else (ref[0], first[0])
    np.testing.assert_array_equal(y.detach().numpy(), ref)
    np.testing.assert_array_equal(idx.numpy(), first)
    g = rng.standard_normal(ref.shape)
    (y * conch.tensor(g)).sum().backward()
    want = np.zeros(x.size)
    lead = int(np.prod(x.shape[:-2]))
    hw = x.shape[-2] * x.shape[-1]
    np.add.at(want, (first.reshape(lead, -1) + np.arange(lead)[:, None] * hw).ravel(), g.ravel())
    np.testing.assert_array_equal(xt.grad.numpy(), want.reshape(x.shape))


@pytest.mark.parametrize("shape,k", SHAPES)
def test_avg_pool_tiles_match_windows(shape, k, cpu_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape)
    xt = t64(x)
    y = F.avg_pool2d(xt, k)
    assert x.ndim == 3 or type(y.grad_fn).__name__ in _op(cpu_path, "AvgPoolTiles")
    ref, _ = ref_tiles(_batched(x), k, np.mean)
    np.testing.assert_allclose(y.detach().numpy(), ref if x.ndim == 4 else ref[0], rtol=1e-14)
    y2 = F.avg_pool2d(xt, k, divisor_override=3)
    np.testing.assert_allclose(y2.detach().numpy() * 3, (ref if x.ndim == 4 else ref[0]) * k[0] * k[1], rtol=1e-13)


@pytest.mark.parametrize("fn", [F.max_pool2d, F.avg_pool2d])
@pytest.mark.parametrize("shape,k", [((1, 2, 5, 7), (2, 2)), ((2, 1, 6, 6), (3, 2))])
def test_tile_pooling_gradcheck_and_second_derivatives(fn, shape, k):
    x = t64(np.random.default_rng(2).standard_normal(shape))
    assert gradcheck(lambda t: fn(t, k), (x,))
    assert gradgradcheck(lambda t: fn(t, k) ** 2, (x,))


def test_tile_pooling_random_upstream_gradients_float32():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3, 11, 13)).astype(np.float32)
    g = rng.standard_normal((4, 3, 5, 6)).astype(np.float32)
    xt = conch.tensor(x, requires_grad=True)
    (F.avg_pool2d(xt, 2) * conch.tensor(g)).sum().backward()
    want = np.zeros_like(x, dtype=np.float64)
    want[:, :, :10, :12] = np.repeat(np.repeat(g.astype(np.float64) / 4, 2, axis=2), 2, axis=3)
    np.testing.assert_allclose(xt.grad.numpy(), want, rtol=1e-6)
    assert xt.grad.dtype == conch.float32


def test_tile_path_only_for_tiling_windows(cpu_path):
    x = t64(np.random.default_rng(4).standard_normal((1, 1, 8, 8)))
    assert type(F.max_pool2d(x, 2, stride=1).grad_fn).__name__ in _op(cpu_path, "MaxPoolWindows")  # overlapping
    assert type(F.max_pool2d(x, 2, padding=1).grad_fn).__name__ in _op(cpu_path, "MaxPoolWindows")  # padded
    assert type(F.max_pool2d(x, 3, ceil_mode=True).grad_fn).__name__ in _op(
        cpu_path, "MaxPoolWindows"
    )  # a partial window
    assert type(F.max_pool2d(x, 2, ceil_mode=True).grad_fn).__name__ in _op(
        cpu_path, "MaxPoolTiles"
    )  # exact: no partial one
    assert (
        type(F.avg_pool2d(x, 2, stride=1).grad_fn).__name__ != "AvgPoolTiles"
    )  # avg: im2col (or compiled) when overlapping


# (kernel, stride, padding, dilation, ceil_mode): overlapping, padded, dilated and ceil_mode windows
WINDOWS = [(3, 2, 1, 1, False), (3, 1, 0, 1, False), (2, 1, 1, 1, False), (3, 2, 1, 2, False), (3, 2, 0, 1, True),
           ((2, 3), (1, 2), (1, 0), (1, 2), True)]  # fmt: skip


def ref_windows(x, k, s, p, d, ceil_mode):
    """max_pool2d by explicit windows in float64 (-inf padding): values and first-max flat indices into H·W."""
    k, s, p, d = (v if isinstance(v, tuple) else (v, v) for v in (k, s, p, d))
    n, c, h, w = x.shape
    out_hw = []
    for i, size in enumerate((h, w)):
        num = size + 2 * p[i] - d[i] * (k[i] - 1) - 1
        o = (-(-num // s[i]) if ceil_mode else num // s[i]) + 1
        if ceil_mode and (o - 1) * s[i] >= size + p[i]:
            o -= 1
        out_hw.append(o)
    out = np.full((n, c, *out_hw), -np.inf)
    idx = np.zeros((n, c, *out_hw), dtype=np.int64)
    for i in range(out_hw[0]):
        for j in range(out_hw[1]):
            for a in range(k[0]):
                for b in range(k[1]):
                    r, q = i * s[0] - p[0] + a * d[0], j * s[1] - p[1] + b * d[1]
                    if 0 <= r < h and 0 <= q < w:
                        v = x[:, :, r, q]
                        better = v > out[:, :, i, j]
                        out[:, :, i, j] = np.where(better, v, out[:, :, i, j])
                        idx[:, :, i, j] = np.where(better, r * w + q, idx[:, :, i, j])
    return out, idx


@pytest.mark.parametrize("k,s,p,d,ceil_mode", WINDOWS)
def test_max_pool_windows_match_explicit_windows(k, s, p, d, ceil_mode, cpu_path):
    rng = np.random.default_rng(10)
    x = rng.integers(-3, 4, (2, 3, 9, 11)).astype(np.float64)  # ties
    xt = t64(x)
    y, idx = F.max_pool2d(xt, k, s, p, d, ceil_mode, return_indices=True)
    assert type(y.grad_fn).__name__ in _op(cpu_path, "MaxPoolWindows")
    ref, first = ref_windows(x, k, s, p, d, ceil_mode)
    np.testing.assert_array_equal(y.detach().numpy(), ref)
    np.testing.assert_array_equal(idx.numpy(), first)
    g = rng.standard_normal(ref.shape)
    (y * conch.tensor(g)).sum().backward()
    want = np.zeros((6, 99))
    np.add.at(want, (np.repeat(np.arange(6), first[0, 0].size), first.reshape(6, -1).ravel()), g.reshape(6, -1).ravel())
    np.testing.assert_allclose(xt.grad.numpy(), want.reshape(x.shape), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k,s,p,d,ceil_mode", WINDOWS[:4])
def test_max_pool_windows_gradcheck_and_second_derivatives(k, s, p, d, ceil_mode):
    x = t64(np.random.default_rng(11).standard_normal((1, 2, 7, 6)))
    fn = lambda t: F.max_pool2d(t, k, s, p, d, ceil_mode)  # noqa: E731
    assert gradcheck(fn, (x,))
    assert gradgradcheck(lambda t: fn(t) ** 2, (x,))


@pytest.mark.parametrize("k,s,p,d,ceil_mode", WINDOWS)
def test_max_pool_windows_match_torch(k, s, p, d, ceil_mode):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(12)
    x = rng.integers(-4, 5, (2, 3, 10, 9)).astype(np.float32)
    xc, xt = conch.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    yc, ic = F.max_pool2d(xc, k, s, p, d, ceil_mode, return_indices=True)
    yt, it = torch.nn.functional.max_pool2d(xt, k, s, p, d, ceil_mode, return_indices=True)
    np.testing.assert_array_equal(yc.detach().numpy(), yt.detach().numpy())
    np.testing.assert_array_equal(ic.numpy(), it.numpy())
    g = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    (yc * conch.tensor(g)).sum().backward()
    (yt * torch.tensor(g)).sum().backward()
    np.testing.assert_allclose(xc.grad.numpy(), xt.grad.numpy(), rtol=1e-6, atol=1e-6)


def test_max_pool_tiles_leave_nan_to_im2col_rule(cpu_path):
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    x[0, 0, 1, 1] = np.nan
    y = F.max_pool2d(t64(x), 2)
    assert type(y.grad_fn).__name__ in _op(cpu_path, "MaxPool2d")
    assert np.isnan(y.detach().numpy()[0, 0, 0, 0]) and y.detach().numpy()[0, 0, 1, 1] == 15


def test_max_pool_tiles_do_not_modify_the_input():
    x = np.array([[[[1.0, 5.0], [3.0, 2.0]]]])  # a 1x1 output: its view of x is contiguous
    xs = x.copy()
    F.max_pool2d(t64(x, grad=False), 2)
    np.testing.assert_array_equal(x, xs)


@pytest.mark.parametrize("shape,k", SHAPES[:4])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_tile_pooling_matches_torch(shape, k, kind):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x = rng.integers(-4, 5, shape).astype(np.float32)
    x += rng.standard_normal(shape).astype(np.float32) * (kind == "avg")
    g_shape = shape[:2] + (shape[2] // k[0], shape[3] // k[1])
    g = rng.standard_normal(g_shape).astype(np.float32)
    xc, xt = conch.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    fc, ft = (F.max_pool2d, torch.nn.functional.max_pool2d) if kind == "max" else (
        F.avg_pool2d, torch.nn.functional.avg_pool2d)  # fmt: skip
    yc, yt = fc(xc, k), ft(xt, k)
    (yc * conch.tensor(g)).sum().backward()
    (yt * torch.tensor(g)).sum().backward()
    np.testing.assert_allclose(yc.detach().numpy(), yt.detach().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(xc.grad.numpy(), xt.grad.numpy(), rtol=1e-6, atol=1e-7)


def test_max_pool_tiles_indices_match_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(6).integers(0, 3, (2, 3, 7, 9)).astype(np.float32)  # ties everywhere
    _, ic = F.max_pool2d(conch.tensor(x), (2, 3), return_indices=True)
    _, it = torch.nn.functional.max_pool2d(torch.tensor(x), (2, 3), return_indices=True)
    np.testing.assert_array_equal(ic.numpy(), it.numpy())


# ---------------------------------------------------------------- dropout's fast Philox


def generic_uniform(n, seed, offset):
    """tl.rand's uniforms from the generic uint64 Philox (dk.philox4x32, checked against Random123's answers)."""
    ctr = np.arange(n, dtype=np.uint64) + np.uint64(offset)
    zero = np.zeros(n, dtype=np.uint64)
    m32 = np.uint64(0xFFFFFFFF)
    r = dk.philox4x32(ctr & m32, ctr >> np.uint64(32), zero, zero, seed & 0xFFFFFFFF, seed >> 32)[0]
    r = r.astype(np.uint32).view(np.int32)
    r = np.where(r < 0, ~r, r)
    return r.astype(np.float32) * np.float32(4.6566127342e-10)


@pytest.mark.parametrize("seed,offset", [(0, 0), (1234, 7), (2**40 + 7, 2**32 - 100), (2**64 - 1, 1),
                                         (99, 2**31 - 50), (5, 3 * 2**32 - 40000)])  # fmt: skip
def test_fast_philox_equals_generic(seed, offset, monkeypatch):
    monkeypatch.setattr(dk, "_PHILOX_BLOCK", 4096)  # several blocks, one straddling 2**32 for some offsets
    n = 50000
    u = generic_uniform(n, seed, offset)
    np.testing.assert_array_equal(dk.philox_uniform(n, seed, offset), u)
    for p in (0.0, 1e-10, 0.1, 0.5, 0.9999999, 1.0):
        np.testing.assert_array_equal(dk.rand_mask((n,), p, seed, offset), u >= np.float32(p))


@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 0.75, 1.0, float(np.nextafter(np.float32(0.5), 1))])
def test_keep_threshold_is_exact(p):
    t = dk._keep_threshold(p)
    f = lambda r: np.float32(r) * np.float32(4.6566127342e-10) >= np.float32(p)  # noqa: E731
    assert t == 2**31 or f(t)
    assert t == 0 or not f(t - 1)


def generic_keep(n, p, seed, offset):
    """Dropout's mask from the generic uint64 Philox-4x64 (dk.philox4x64, checked against Random123's answers):
    word g = half g % 2 of output (g // 2) % 4 of block g // 8, kept when >= ceil(float32(p) * 2**32)."""
    g = np.arange(offset, offset + n, dtype=np.uint64)
    zero = np.zeros(n, dtype=np.uint64)
    out = np.stack(dk.philox4x64(g >> np.uint64(3), zero, zero, zero, seed), axis=1)
    w = out[np.arange(n), (g >> np.uint64(1)) & np.uint64(3)]
    half = (w >> (np.uint64(32) * (g & np.uint64(1)))) & np.uint64(0xFFFFFFFF)
    return half >= np.uint64(math.ceil(float(np.float32(p)) * 2**32)) if p < 1 else np.zeros(n, bool)


@pytest.mark.parametrize("seed,offset", [(0, 0), (1234, 7), (2**64 - 1, 2**32 - 3), (5, 2**62 + 1)])
def test_numpy_philox_mask_equals_generic(seed, offset, monkeypatch):
    monkeypatch.setattr(dk, "_RAW_BLOCK", 1000)  # several chunks, starting mid-block
    n = 5003
    for p in (0.0, 2.0**-32, 0.1, 0.5, 1 - 2.0**-32, 1.0):
        np.testing.assert_array_equal(dk.dropout_mask((n,), p, seed, offset), generic_keep(n, p, seed, offset))


def test_reference_dropout_values_and_dropped_non_finite(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("CONCH_KERNELS", "reference")
    x = np.random.default_rng(7).standard_normal(3001).astype(np.float32)
    x[:50] = np.inf
    x[50:100] = np.nan
    y, _ = dk.dropout_forward(x, 0.4, seed=3, offset=10)
    keep = generic_keep(x.size, 0.4, 3, 10)
    want = np.where(keep, x.astype(np.float64) * np.float64(np.float32(1 / 0.6)), 0.0)
    np.testing.assert_allclose(y, want.astype(np.float32), rtol=1e-7)
    assert not np.signbit(y[~keep]).any()  # a dropped element is +0, whatever x held (as the kernel's where)


# ---------------------------------------------------------------- dropout's compiled Philox (Numba)

# seeds and offsets: block-aligned and mid-block starts, the 2**32 word boundary, a 64-bit seed, a large offset
STREAMS = [(0, 0), (1234, 7), (2**64 - 1, 2**32 - 3), (5, 2**62 + 1), (77, 64)]
SIZES = [1, 7, 8, 9, 31, 32, 33, 64, 1000, 5003]


@pytest.mark.parametrize("seed,offset", STREAMS)
def test_dropout_mask_equals_generic_on_both_paths(seed, offset, cpu_path):
    for n in SIZES:
        for p in (0.0, 2.0**-32, 0.1, 0.5, 1 - 2.0**-32, 1.0):
            dk._MASKS.clear()  # drawn afresh, not read back from the other path's cache
            np.testing.assert_array_equal(dk.dropout_mask((n,), p, seed, offset), generic_keep(n, p, seed, offset))


@pytest.mark.filterwarnings("ignore:invalid value encountered in multiply:RuntimeWarning")  # p = 1 times inf
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_dropout_forward_backward_values(dtype, cpu_path, monkeypatch):
    """y = x / (1 - p) where the generic mask keeps, in float32 (float64 for float64 input) rounded once to x's
    dtype; a dropped inf or NaN gives +0.0, a kept one stays; non-contiguous input in its logical order."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("CONCH_KERNELS", "reference")
    dt = np.dtype(getattr(conch, dtype))
    acc = np.float64 if dtype == "float64" else np.float32
    base = np.random.default_rng(10).standard_normal((37, 2 * 29))
    base[0, :20] = np.inf
    base[1, :20] = -np.inf
    base[2, :20] = np.nan
    x = base.astype(dt)[:, ::2]  # not contiguous
    for p, seed, offset in ((0.3, 3, 11), (0.0, 4, 0), (1.0, 5, 8), (0.9, 2**64 - 1, 2**32 - 5)):
        y, res = dk.dropout_forward(x, p, seed=seed, offset=offset)
        keep = generic_keep(x.size, p, seed, offset).reshape(x.shape)
        scale = 0.0 if p == 1.0 else 1.0 / (1.0 - p)
        with np.errstate(invalid="ignore"):
            want = np.where(keep, (x.astype(acc) * acc(scale)), 0.0).astype(dt)
        assert y.dtype == dt and y.shape == x.shape
        np.testing.assert_array_equal(y.astype(np.float64), want.astype(np.float64))
        assert not np.signbit(y[~keep].astype(np.float64)).any()
        dx = dk.dropout_backward(res, x)
        np.testing.assert_array_equal(dx.astype(np.float64), y.astype(np.float64))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_compiled_dropout_equals_numpy_path(dtype, monkeypatch):
    """The compiled draw gives the NumPy path's bits: forward, backward and mask, at odd sizes and offsets."""
    if not _jit._probe():
        pytest.skip("Numba is not importable here or CONCH_NUMBA=0: this compares the compiled path with NumPy's")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("CONCH_KERNELS", "reference")
    rng = np.random.default_rng(11)
    for n in (5, 8192, 70001):
        x = rng.standard_normal(n).astype(dtype)
        out = {}
        for on in (True, False):
            prev = _jit.set_enabled(on)
            try:
                dk._MASKS.clear()
                y, res = dk.dropout_forward(x, 0.2, seed=n, offset=n % 13)
                out[on] = (y, dk.dropout_backward(res, x[::-1].copy()), dk.dropout_mask((n,), 0.2, n, n % 13))
            finally:
                _jit.set_enabled(prev)
        for a, b in zip(out[True], out[False], strict=True):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)


def test_compiled_dropout_does_not_depend_on_threads(monkeypatch, cpu_path):
    """Elementwise over the stream: the same bits on 1 and 2 threads, and the 2-thread run really split."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("CONCH_KERNELS", "reference")
    monkeypatch.setattr(_threads, "MIN_PARALLEL", 64)
    monkeypatch.setenv("CONCH_ADAPT_THREADS", "0")
    monkeypatch.setitem(_threads._load, "adapt", False)
    before = conch.get_num_threads()
    x = np.random.default_rng(12).standard_normal(10007).astype(np.float32)
    res = []
    try:
        for n in (1, 2):
            conch.set_num_threads(n)
            splits = _threads.SPLITS[0]
            dk._MASKS.clear()
            res.append((dk.dropout_forward(x, 0.4, seed=9, offset=3)[0], dk.dropout_mask((x.size,), 0.4, 9, 3)))
            assert n == 1 or _threads.SPLITS[0] > splits, "nothing was split on 2 threads"
    finally:
        conch.set_num_threads(before)
    for a, b in zip(*res, strict=True):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- causal masks


def test_causal_masks_are_cached_read_only_and_correct():
    like = np.empty(0)
    keep = _causal.causal_keep(5, 7, like)
    assert keep is _causal.causal_keep(5, 7, like)
    np.testing.assert_array_equal(keep, np.tril(np.ones((5, 7), bool)))
    np.testing.assert_array_equal(_causal.causal_drop(5, 7, like), ~keep)
    assert not keep.flags.writeable
    with pytest.raises(ValueError):
        keep[0, 0] = False
    assert _causal.causal_keep(7, 5, like).shape == (7, 5)


def test_causal_mask_cache_is_bounded():
    like = np.empty(0)
    for t in range(1, 3 * _causal._MAX_ENTRIES):
        _causal.causal_keep(t, t, like)
    assert len(_causal._CACHE) <= _causal._MAX_ENTRIES


def test_causal_attention_uses_the_mask_as_before():
    rng = np.random.default_rng(8)
    q, k, v = (rng.standard_normal((2, 3, 6, 4)) for _ in range(3))
    s = q @ k.swapaxes(-1, -2) / 2.0
    s = np.where(np.tril(np.ones((6, 6), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    want = (p / p.sum(-1, keepdims=True)) @ v
    for _ in range(2):  # the second call reads the cached mask
        out = F.scaled_dot_product_attention(t64(q), t64(k), t64(v), is_causal=True)
        np.testing.assert_allclose(out.detach().numpy(), want, rtol=1e-12)


@pytest.mark.parametrize("cpu_path", ["numpy"], indirect=True)  # the NumPy path's cache (the compiled one has none)
def test_dropout_backward_reuses_the_forwards_mask(monkeypatch, cpu_path):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("CONCH_KERNELS", "reference")
    x = np.random.default_rng(9).standard_normal((13, 29)).astype(np.float32)
    y, res = dk.dropout_forward(x, 0.25, seed=777, offset=5)
    calls = []
    real = dk._raw_words
    monkeypatch.setattr(dk, "_raw_words", lambda *a: (calls.append(a), real(*a))[1])
    dx = dk.dropout_backward(res, x)
    assert calls == []  # the mask came from the cache
    np.testing.assert_array_equal(dx, y)  # dy = x: the same mask and scale
    keep = generic_keep(x.size, 0.25, 777, 5).reshape(x.shape)
    np.testing.assert_array_equal(dk.dropout_mask(x.shape, 0.25, 777, 5), keep)
    dk.dropout_mask(x.shape, 0.25, 778, 5)  # another seed: computed afresh
    assert len(calls) == 1


def test_dropout_mask_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(dk, "_MASK_BYTES", 4096)
    dk._MASKS.clear()
    dk._mask_bytes[0] = 0
    for seed in range(40):
        dk.dropout_mask((999,), 0.5, seed)  # 125 bytes packed each
    assert dk._mask_bytes[0] <= 4096
    assert dk._mask_bytes[0] == sum(b.nbytes for b in dk._MASKS.values())
    np.testing.assert_array_equal(dk.dropout_mask((999,), 0.5, 39), generic_keep(999, 0.5, 39, 0))
