"""Issue #13: the Triton path with no rows (or rows of no elements) launches nothing and returns empty results."""

import collections

import numpy as np
import pytest

import conch
import conch.nn.functional as F
from conch.kernels import matmul as mm
from conch.kernels import softmax as sm
from conch.kernels._launch import LAUNCHES


def _leaf(*shape):
    return conch.tensor(np.random.default_rng(0).standard_normal(shape).astype(np.float32), requires_grad=True)


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (2, 0, 3), (0,)])
@pytest.mark.parametrize("log", [False, True])
def test_softmax_kernel_empty(interpret, shape, log):
    x = np.zeros(shape, np.float32)
    before = collections.Counter(LAUNCHES)
    y, res = sm.softmax_forward(x, log=log)
    dx = sm.softmax_backward(res, np.zeros(shape, np.float32), log=log)
    assert LAUNCHES == before
    assert y.shape == dx.shape == shape and y.dtype == dx.dtype == np.float32


@pytest.mark.parametrize(
    "fn, shapes, out_shape",
    [
        (lambda x: x.softmax(-1), [(0, 4)], (0, 4)),
        (lambda x: x.softmax(0), [(0, 4)], (0, 4)),
        (lambda x: x.log_softmax(-1), [(3, 0)], (3, 0)),
        (lambda x, w, b: F.linear(x, w, b), [(0, 3), (2, 3), (2,)], (0, 2)),
        (lambda x, w, b: F.linear(x, w, b, activation="gelu"), [(2, 0, 3), (2, 3), (2,)], (2, 0, 2)),
        (lambda x, w, b: F.linear(x, w, b), [(3, 4), (0, 4), (0,)], (3, 0)),
        (lambda a, b: a @ b, [(0, 3), (3, 2)], (0, 2)),
    ],
)
def test_framework_ops_with_no_rows_launch_nothing(interpret, fn, shapes, out_shape):
    xs = [_leaf(*s) for s in shapes]
    before = collections.Counter(LAUNCHES)
    y = fn(*xs)
    y.sum().backward()
    assert LAUNCHES == before
    assert y.shape == out_shape
    for x in xs:
        assert x.grad is not None and x.grad.shape == x.shape
        np.testing.assert_array_equal(x.grad.numpy(), np.zeros(x.shape))


def test_matmul_kernel_backward_with_no_rows(interpret):
    a, b, bias = np.zeros((0, 3), np.float32), np.ones((3, 2), np.float32), np.ones(2, np.float32)
    before = collections.Counter(LAUNCHES)
    out, res = mm.matmul_forward(a, b, bias)
    da, db, dbias = mm.matmul_backward(res, np.zeros((0, 2), np.float32))
    assert LAUNCHES == before
    assert out.shape == (0, 2) and da.shape == (0, 3)
    np.testing.assert_array_equal(db, np.zeros((3, 2)))
    np.testing.assert_array_equal(dbias, np.zeros(2))
