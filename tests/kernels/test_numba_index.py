"""The compiled scatter-add of rows (kernels/_numba/index.py, an embedding's gradient) against float64 NumPy and
np.add.at, and the embedding backward on both CPU paths against a closed form."""

import numpy as np
import pytest

import conch
import conch.nn.functional as F
from conch.kernels import _jit


@pytest.fixture
def index_kernels():
    if not _jit._probe():
        pytest.skip("Numba is not importable here or CONCH_NUMBA=0: there is no compiled kernel to test")
    return _jit.family("index")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7,), (13, 5), (9, 3, 4), (256, 128)])
@pytest.mark.parametrize("idx_dtype", [np.int64, np.int32, np.uint16])
def test_add_rows_matches_add_at(index_kernels, dtype, shape, idx_dtype):
    # repeated indices accumulate in the order they appear: the same bits as np.add.at, and float64 to rounding
    rng = np.random.default_rng(1)
    n = shape[0]
    idx = rng.integers(0, n, (5, 11)).astype(idx_dtype)
    idx.reshape(-1)[:4] = idx.reshape(-1)[0]  # a row hit several times
    g = rng.standard_normal(idx.shape + shape[1:]).astype(dtype)
    out = rng.standard_normal(shape).astype(dtype)  # accumulates into what is there
    want = out.copy()
    np.add.at(want, idx, g)
    ref64 = out.astype(np.float64)
    np.add.at(ref64, idx.astype(np.int64), g.astype(np.float64))
    assert index_kernels.add_rows(out, idx, g) is True
    np.testing.assert_array_equal(out, want)
    np.testing.assert_allclose(out, ref64, rtol=0, atol={np.float32: 1e-5, np.float64: 1e-13}[dtype])


def test_add_rows_negative_empty_and_non_contiguous(index_kernels):
    rng = np.random.default_rng(2)
    out = np.zeros((6, 4), np.float32)
    idx = np.array([-1, 5, 0, -6, 2])
    g = rng.standard_normal((5, 8)).astype(np.float32)[:, ::2]  # a strided view
    want = np.zeros((6, 4), np.float64)
    np.add.at(want, idx, g.astype(np.float64))
    assert index_kernels.add_rows(out, idx, g)
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-6)
    assert want[5].any() and want[0].any()  # -1 and 5 are row 5, -6 and 0 are row 0
    assert index_kernels.add_rows(out, np.zeros((0,), np.int64), np.zeros((0, 4), np.float32))
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("bad", [6, -7])
def test_add_rows_refuses_out_of_bounds(index_kernels, bad):
    out = np.zeros((6, 4), np.float32)
    with pytest.raises(IndexError, match="out of bounds for axis 0 with size 6"):
        index_kernels.add_rows(out, np.array([0, bad]), np.ones((2, 4), np.float32))
    assert not out.any()  # nothing written before the check


def test_add_rows_declines_what_it_does_not_handle(index_kernels):
    # half types, a non-contiguous out and float indices stay on the caller's NumPy path
    g = np.ones((2, 3), np.float16)
    assert index_kernels.add_rows(np.zeros((4, 3), np.float16), np.array([0, 1]), g) is False
    assert index_kernels.add_rows(np.zeros((3, 4), np.float32).T, np.array([0, 1]), g.astype(np.float32)) is False
    assert index_kernels.add_rows(np.zeros((4, 3), np.float32), np.array([0.0, 1.0]), g.astype(np.float32)) is False


@pytest.mark.parametrize("n_idx", [5, 1024, 5000])  # the NumPy path: sort + reduceat up to 4096, np.add.at above
def test_embedding_backward_both_paths(cpu_path, n_idx):
    # d loss / d weight of sum(embedding(idx) * up): row k gets the sum of up over the positions where idx == k
    rng = np.random.default_rng(3)
    w = conch.tensor(rng.standard_normal((37, 6)).astype(np.float32), requires_grad=True)
    idx = rng.integers(0, 37, (n_idx,))
    up = rng.standard_normal((n_idx, 6))
    (F.embedding(conch.tensor(idx), w) * conch.tensor(up.astype(np.float32))).sum().backward()
    want = np.zeros((37, 6))
    for k in range(37):
        want[k] = up[idx == k].sum(0)
    np.testing.assert_allclose(w.grad.numpy(), want, rtol=0, atol=1e-4)
