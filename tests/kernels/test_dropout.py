"""Dropout kernels: counter-based masks, Triton (interpreter or GPU) bit-identical to the NumPy Philox reference."""

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


SEEDS = [(0, 0), (1234, 7), (2**40 + 7, 2**32 - 100), (2**64 - 1, 1), (99, 2**31 - 50)]


@pytest.mark.parametrize("seed,offset", SEEDS)
def test_triton_mask_bitwise_equals_reference(seed, offset, interpret):
    # offsets crossing 2**31 and 2**32 and seeds above 2**32 check the (seed, offset) -> key/counter mapping
    n = 1000
    x = np.ones(n, np.float32)
    before = LAUNCHES["_dropout_kernel"]
    y, _ = dk.dropout_forward(dev(x), 0.3, seed=seed, offset=offset)
    assert LAUNCHES["_dropout_kernel"] == before + 1
    mask = dk.dropout_mask((n,), 0.3, seed, offset)
    np.testing.assert_array_equal(host(y) != 0, mask)
    u = dk.philox_uniform(n, seed, offset)
    np.testing.assert_array_equal(mask, u >= np.float32(0.3))


@pytest.mark.parametrize("shape", [(1,), (7,), (33,), (123,), (255,), (257,), (3, 5, 7)])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, BF16], ids=["fp32", "fp16", "bf16"])
def test_forward_backward_triton_vs_reference_vs_float64(shape, dtype, rng, interpret, monkeypatch):
    p, seed, offset = 0.37, 42, 1000
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
