"""Dropout kernels: counter-based masks, Triton (interpreter or GPU) bit-identical to the NumPy Philox reference."""

import math

import ml_dtypes
import numpy as np
import pytest
from devices import ON_GPU, SIMULATED, dev, host

from conch.kernels import dropout as dk
from conch.kernels._launch import LAUNCHES

BF16 = np.dtype(ml_dtypes.bfloat16)
ON_CUDA = ON_GPU


def bits(a):
    a = host(a)
    return a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.itemsize])


def test_philox_known_answers():
    # Random123's kat_vectors for philox4x32_10 (counter words, key words -> output words)
    kat = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ]
    for ctr, key, out in kat:
        got = dk.philox4x32(*[np.array([c], np.uint64) for c in ctr], *key)
        assert [int(g[0]) for g in got] == list(out)


def test_uniform_conversion_matches_tritons_formula():
    # tl.rand: the uint32 word as int32, negatives bit-inverted, times 4.6566127342e-10 (float32): in [0, 1)
    u = dk.philox_uniform(4096, seed=5, offset=0)
    assert u.dtype == np.float32 and u.min() >= 0.0 and u.max() < 1.0
    w = dk.philox4x32(np.arange(4096, dtype=np.uint64), 0, 0, 0, 5, 0)[0].astype(np.int64)
    w = np.where(w >= 2**31, 2**32 - 1 - w, w)  # ~x for negative int32 values
    np.testing.assert_array_equal(u, w.astype(np.float32) * np.float32(4.6566127342e-10))


# Random123's kat_vectors for philox4x64_10 (counter words, key words -> output words)
KAT64 = [
    ((0, 0, 0, 0), (0, 0), (0x16554D9ECA36314C, 0xDB20FE9D672D0FDC, 0xD7E772CEE186176B, 0x7E68B68AEC7BA23B)),
    (
        (2**64 - 1,) * 4,
        (2**64 - 1,) * 2,
        (0x87B092C3013FE90B, 0x438C3C67BE8D0224, 0x9CC7D7C69CD777B6, 0xA09CAEBF594F0BA0),
    ),
    (
        (0x243F6A8885A308D3, 0x13198A2E03707344, 0xA4093822299F31D0, 0x082EFA98EC4E6C89),
        (0x452821E638D01377, 0xBE5466CF34E90C6C),
        (0xA528F45403E61D95, 0x38C72DBD566E9788, 0xA5A1610E72FD18B5, 0x57BD43B5E52B7FE6),
    ),
]


def philox4x64_int(ctr, key):
    """Philox-4x64-10 on Python ints (Random123's round, no limbs): an independent check of dk.philox4x64."""
    m = (1 << 64) - 1
    (c0, c1, c2, c3), (k0, k1) = ctr, key
    for _ in range(10):
        pb, pa = 0xCA5A826395121157 * c2, 0xD2E7470EE14C6C93 * c0
        c0, c1, c2, c3 = (pb >> 64) ^ c1 ^ k0, pb & m, (pa >> 64) ^ c3 ^ k1, pa & m
        k0, k1 = (k0 + 0x9E3779B97F4A7C15) & m, (k1 + 0xBB67AE8584CAA73B) & m
    return c0, c1, c2, c3


@pytest.mark.parametrize("ctr,key,out", KAT64)
def test_philox4x64_known_answers_and_numpy(ctr, key, out):
    assert philox4x64_int(ctr, key) == out
    got = dk.philox4x64(*[np.array([c], np.uint64) for c in ctr], *key)
    assert [int(g[0]) for g in got] == list(out)
    # NumPy's C Philox is the same function, its counter bumped before each block
    c = sum(w << (64 * i) for i, w in enumerate(ctr))
    gen = np.random.Philox(key=key[0] + (key[1] << 64), counter=(c - 1) % 2**256)
    assert [int(w) for w in gen.random_raw(4)] == list(out)


def stream_words(n, seed, offset):
    """Words offset .. offset + n - 1 of dropout's stream from Python-int Philox: word g is half g % 2 (low first)
    of output (g // 2) % 4 of the block with counter (g // 8, 0, 0, 0), key (seed, 0)."""
    out = []
    for g in range(offset, offset + n):
        w = philox4x64_int((g // 8, 0, 0, 0), (seed, 0))[(g // 2) % 4]
        out.append((w >> (32 * (g % 2))) & 0xFFFFFFFF)
    return np.array(out, np.uint32)


def keep_ref(n, p, seed, offset):
    return stream_words(n, seed, offset).astype(np.int64) >= math.ceil(float(np.float32(p)) * 2**32)


SEEDS = [(0, 0), (1234, 7), (2**40 + 7, 2**32 - 100), (2**64 - 1, 1), (99, 2**31 - 50), (3, 2**62 + 5)]


@pytest.mark.parametrize("seed,offset", SEEDS)
def test_dropout_words_follow_the_stream_layout(seed, offset):
    for n in (1, 7, 8, 9, 30):
        np.testing.assert_array_equal(dk.dropout_words(n, seed, offset), stream_words(n, seed, offset))


@pytest.mark.parametrize("seed,offset", SEEDS)
@pytest.mark.parametrize("n", [1, 255, 1000])
def test_triton_mask_bitwise_equals_reference(seed, offset, n, interpret):
    # offsets crossing 2**31 and 2**32, at every residue mod 8, and seeds above 2**32 check the (seed, offset) ->
    # key/counter mapping; n = 1000 spans several 256-element programs, which start at 8-aligned stream positions
    x = np.ones(n, np.float32)
    before = LAUNCHES["_dropout_kernel"]
    y, _ = dk.dropout_forward(dev(x), 0.3, seed=seed, offset=offset)
    assert LAUNCHES["_dropout_kernel"] == before + 1
    mask = dk.dropout_mask((n,), 0.3, seed, offset)
    np.testing.assert_array_equal(host(y) != 0, mask)
    m = min(n, 40)  # the Python-int reference is slow: its first words
    np.testing.assert_array_equal(mask[:m], keep_ref(m, 0.3, seed, offset))


@pytest.mark.parametrize("p", [0.0, 2.0**-32, 3e-10, 0.1, 0.5, 1 - 2.0**-24, 1 - 2.0**-30, 1.0])
def test_keep_threshold_edges(p, interpret):
    # keep = word >= ceil(float32(p) * 2**32): p = 0 keeps all, p = 1 none, tiny p are not rounded to 0 or 1
    n = 300
    x = np.ones(n, np.float32)
    y, _ = dk.dropout_forward(dev(x), p, seed=21, offset=3)
    want = dk.dropout_words(n, 21, 3).astype(np.int64) >= math.ceil(float(np.float32(p)) * 2**32)
    np.testing.assert_array_equal(host(y) != 0, want)
    np.testing.assert_array_equal(dk.dropout_mask((n,), p, 21, 3), want)


@pytest.mark.parametrize("shape", [(1,), (7,), (33,), (123,), (255,), (257,), (3, 5, 7)])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, BF16], ids=["fp32", "fp16", "bf16"])
def test_forward_backward_triton_vs_reference_vs_float64(shape, dtype, rng, interpret, monkeypatch):
    p, seed, offset = 0.37, 42, 1003  # an offset not a multiple of 8: programs start mid-block
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    xs = x.copy()
    y, res = dk.dropout_forward(dev(x), p, seed=seed, offset=offset)
    dx = dk.dropout_backward(res, dev(dy))
    assert np.array_equal(bits(x), bits(xs)), "input mutated"
    assert y.dtype == dtype and dx.dtype == dtype and y.shape == shape
    assert res == (seed, offset, p, shape, np.dtype(dtype))  # no mask is stored
    # independent float64 formula with the reference mask
    mask = dk.dropout_mask(shape, p, seed, offset)
    scale = np.float32(1 / (1 - p)).astype(np.float64)
    y64 = np.where(mask, x.astype(np.float64) * scale, 0.0)
    dx64 = np.where(mask, dy.astype(np.float64) * scale, 0.0)
    np.testing.assert_allclose(host(y).astype(np.float64), y64, rtol={4: 1e-7}.get(np.dtype(dtype).itemsize, 8e-3))
    np.testing.assert_allclose(host(dx).astype(np.float64), dx64, rtol={4: 1e-7}.get(np.dtype(dtype).itemsize, 8e-3))
    # the reference path gives the same bits (bf16 under the interpreter: within 1 ulp, because the
    # interpreter rounds fp32 -> bf16 toward zero where the GPU and ml_dtypes round to nearest even)
    monkeypatch.setenv("CONCH_KERNELS", "reference")
    yr, resr = dk.dropout_forward(dev(x), p, seed=seed, offset=offset)
    dxr = dk.dropout_backward(resr, dev(dy))
    ulps = 1 if (np.dtype(dtype) == BF16 and (not ON_CUDA or SIMULATED)) else 0
    for a, r in ((y, yr), (dx, dxr)):
        assert np.abs(bits(a).astype(np.int64) - bits(r).astype(np.int64)).max() <= ulps
        np.testing.assert_array_equal(host(a) != 0, host(r) != 0)


@pytest.mark.parametrize("path", ["interpret", "reference"])
def test_p_zero_is_identity_and_p_one_gives_zeros(path, rng, request):
    request.getfixturevalue(path)
    x = rng.standard_normal(300).astype(np.float32)
    y0, r0 = dk.dropout_forward(dev(x), 0.0, seed=3)
    np.testing.assert_array_equal(host(y0), x)
    np.testing.assert_array_equal(host(dk.dropout_backward(r0, dev(x))), x)
    with np.errstate(all="raise"):  # no division by zero
        y1, r1 = dk.dropout_forward(dev(x), 1.0, seed=3)
        dx1 = dk.dropout_backward(r1, dev(x))
    assert not host(y1).any() and not host(dx1).any() and np.isfinite(host(y1)).all()


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_fraction_is_one_minus_p(p, reference):
    n = 400_000
    keep = dk.dropout_mask((n,), p, seed=11, offset=0).mean()
    sigma = np.sqrt(p * (1 - p) / n)
    assert abs(keep - (1 - p)) < 5 * sigma


def test_no_correlation_between_neighbours_or_offsets(reference):
    # adjacent elements share a 64-bit word (two halves) and a Philox block (eight words): their masks must still
    # be independent, as must two streams whose offsets differ by less than a block
    n = 1 << 20
    a = dk.dropout_mask((n,), 0.5, seed=13, offset=0).astype(np.float64)
    b = dk.dropout_mask((n,), 0.5, seed=13, offset=n + 3).astype(np.float64)
    bound = 5 / np.sqrt(n)  # |sample correlation| of independent Bernoulli(1/2) pairs: ~N(0, 1/n)
    for lag in range(1, 9):
        assert abs(np.corrcoef(a[:-lag], a[lag:])[0, 1]) < bound, lag
    assert abs(np.corrcoef(a, b)[0, 1]) < bound
    # each of the eight word slots in a block keeps 1 - p of its elements
    for slot in range(8):
        s = a[slot::8]
        assert abs(s.mean() - 0.5) < 5 * np.sqrt(0.25 / s.size), slot


def test_keep_fraction_triton(interpret):
    x = np.ones(8192, np.float32)
    y, _ = dk.dropout_forward(dev(x), 0.25, seed=8)
    keep = (host(y) != 0).mean()
    assert abs(keep - 0.75) < 5 * np.sqrt(0.25 * 0.75 / x.size)
    assert np.allclose(host(y)[host(y) != 0], 1 / 0.75)


def test_streams_are_reproducible_and_distinct(reference):
    n = 4096
    a = dk.dropout_mask((n,), 0.5, seed=1, offset=0)
    np.testing.assert_array_equal(a, dk.dropout_mask((n,), 0.5, seed=1, offset=0))
    assert (a != dk.dropout_mask((n,), 0.5, seed=1, offset=n)).mean() > 0.4
    assert (a != dk.dropout_mask((n,), 0.5, seed=2, offset=0)).mean() > 0.4
    # counter-based: element i of stream offset k is element k + i of stream offset 0
    np.testing.assert_array_equal(dk.dropout_mask((n - 10,), 0.5, seed=1, offset=10), a[10:])


def test_gradient_is_mask_over_keep_prob(rng, interpret):
    x = rng.standard_normal((4, 33)).astype(np.float32)
    dy = rng.standard_normal((4, 33)).astype(np.float32)
    y, res = dk.dropout_forward(dev(x), 0.2, seed=5, offset=77)
    dx = dk.dropout_backward(res, dev(dy))
    mask = dk.dropout_mask((4, 33), 0.2, 5, 77)
    np.testing.assert_allclose(host(dx), mask * dy / np.float32(0.8), rtol=1e-6)
    # y = x * (dy/dx of y), elementwise: the gradient's mask is the forward's
    np.testing.assert_array_equal(host(y) != 0, (host(dx) != 0) | (x == 0))


def test_non_contiguous_input_uses_logical_order(rng, interpret):
    base = rng.standard_normal((33, 5)).astype(np.float32)
    x = base.T
    y, _ = dk.dropout_forward(dev(x), 0.5, seed=9)
    np.testing.assert_array_equal(host(y) != 0, dk.dropout_mask((5, 33), 0.5, 9, 0) & (x != 0))


def test_reference_runs_on_float64(rng, reference):
    x = rng.standard_normal(50)
    y, res = dk.dropout_forward(x, 0.5, seed=4)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, np.where(dk.dropout_mask(50, 0.5, 4), 2 * x, 0))


def test_bad_inputs_raise_clear_errors():
    x = np.ones(8, np.float32)
    for p in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
            dk.dropout_forward(x, p, seed=0)
    with pytest.raises(ValueError, match="seed must be in"):
        dk.dropout_forward(x, 0.5, seed=-1)
    with pytest.raises(ValueError, match="offset must be in"):
        dk.dropout_forward(x, 0.5, seed=0, offset=-3)
    with pytest.raises(TypeError, match="seed must be an int"):
        dk.dropout_forward(x, 0.5, seed=1.5)
    with pytest.raises(TypeError, match="int32"):
        dk.dropout_forward(x.astype(np.int32), 0.5, seed=0)
    _, res = dk.dropout_forward(x, 0.5, seed=0)
    with pytest.raises(ValueError, match="does not match the input shape"):
        dk.dropout_backward(res, np.ones(9, np.float32))
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        dk.dropout_mask((3,), 2.0, 0, 0)
