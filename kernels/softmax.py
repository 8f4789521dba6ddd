"""Softmax and log-softmax over the last dim: fused Triton kernels (one-row and online looped), reference path."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import _jit
from ._launch import DtypeSet, TritonKernel, kernel_for, next_power_of_2, targ, use_triton, xp_of
from ._threads import parallel_for, threads_for


class SoftmaxResiduals(NamedTuple):
    """What the backward needs: the output alone (both derivatives are functions of y)."""

    y: object  # the forward's output, x's shape and dtype (log-probabilities for log_softmax)


#: Storage dtypes the Triton kernels take (math is always fp32 inside).
_TRITON_DTYPES = DtypeSet(("float32", "float16", "bfloat16"))  # by name: no ml_dtypes import
#: Every dtype softmax accepts; float64 always takes the reference path (keeps float64 for gradchecks).
_FLOAT_DTYPES = DtypeSet((*_TRITON_DTYPES, "float64"))

#: Largest row (in bytes of the storage dtype) that one program keeps in registers in one block:
#: 16384 fp32 / 32768 fp16-bf16 elements. Longer rows take the online looped kernels.
MAX_FUSED_BYTES = 65536
#: Chunk length of the looped kernels on the GPU.
LOOP_BLOCK = 4096
#: Tests set this (e.g. to 8) to force the looped kernels with that small chunk on short rows.
FORCE_LOOP_BLOCK: int | None = None


# The @triton.jit kernels are in kernels/_triton/softmax.py, imported by kernel_for at the first Triton
# launch: the reference path never imports Triton.
_softmax_fwd_row_kernel = TritonKernel("softmax", "_softmax_fwd_row_kernel")
_softmax_fwd_loop_kernel = TritonKernel("softmax", "_softmax_fwd_loop_kernel")
_softmax_bwd_row_kernel = TritonKernel("softmax", "_softmax_bwd_row_kernel")
_softmax_bwd_loop_kernel = TritonKernel("softmax", "_softmax_bwd_loop_kernel")


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------


def _check_float(name, a):
    if not hasattr(a, "dtype") or not hasattr(a, "shape"):
        raise TypeError(f"softmax: {name} must be a NumPy or CuPy array, got {type(a).__name__}")
    if np.dtype(a.dtype) not in _FLOAT_DTYPES:
        raise TypeError(
            f"softmax: {name} must be float16, bfloat16, float32 or float64, got dtype {a.dtype} (shape {a.shape})"
        )
    if a.ndim == 0:
        raise ValueError(f"softmax: {name} must have at least 1 dim (softmax runs over the last dim), got shape ()")


def _rows(a):
    """``a`` as a 2-D (rows, cols) array whose last dim is contiguous: a view when possible, else a copy."""
    xp = xp_of(a)
    a2 = a.reshape(-1, a.shape[-1])  # a copy only when the leading dims cannot be merged
    if a2.shape[1] > 1 and a2.strides[1] != a2.itemsize:
        a2 = xp.ascontiguousarray(a2)
    return a2


def _config(n_cols, itemsize):
    """(looped, BLOCK, num_warps) for a row of ``n_cols`` elements."""
    if FORCE_LOOP_BLOCK is not None:
        return True, int(FORCE_LOOP_BLOCK), 4
    block = next_power_of_2(max(n_cols, 1))
    if block * itemsize <= MAX_FUSED_BYTES:
        warps = 4 if block <= 1024 else 8 if block <= 4096 else 16
        return False, block, warps
    return True, LOOP_BLOCK, 8


def _row_stride(a):
    return a.strides[0] // a.itemsize


def _softmax_fwd_triton(x, log):
    xp = xp_of(x)
    x2 = _rows(x)
    n_rows, n_cols = x2.shape
    y = xp.empty((n_rows, n_cols), dtype=x.dtype)
    if n_rows and n_cols:
        looped, block, warps = _config(n_cols, x2.itemsize)
        kern = _softmax_fwd_loop_kernel if looped else _softmax_fwd_row_kernel
        kernel_for(kern, x2)[(n_rows,)](
            targ(x2), targ(y), n_cols, _row_stride(x2), _row_stride(y), LOG=log, BLOCK=block, num_warps=warps
        )
    return y.reshape(x.shape)


def _softmax_bwd_triton(y, dy, log):
    xp = xp_of(y)
    y2, dy2 = _rows(y), _rows(dy)
    n_rows, n_cols = y2.shape
    dx = xp.empty((n_rows, n_cols), dtype=y.dtype)
    if n_rows and n_cols:
        looped, block, warps = _config(n_cols, 4)  # two inputs live in registers: budget as fp32
        kern = _softmax_bwd_loop_kernel if looped else _softmax_bwd_row_kernel
        kernel_for(kern, y2)[(n_rows,)](
            targ(y2),
            targ(dy2),
            targ(dx),
            n_cols,
            _row_stride(y2),
            _row_stride(dy2),
            _row_stride(dx),
            LOG=log,
            BLOCK=block,
            num_warps=warps,
        )
    return dx.reshape(y.shape)


# ----------------------------------------------------------------------------------------------
# Reference path (array API: NumPy and CuPy)
# ----------------------------------------------------------------------------------------------


def _compute_dtype(dtype):
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def _softmax_fwd_rows(x, log):
    xp = xp_of(x)
    xf = x.astype(_compute_dtype(x.dtype), copy=False)
    if xf.size == 0:
        return xf.astype(x.dtype)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = xf.max(axis=-1, keepdims=True)  # all -inf row: m = -inf, x - m = nan (NaN output, as PyTorch)
        z = xf - m  # fresh: the passes below update it in place
        if log:
            s = xp.exp(z).sum(axis=-1, keepdims=True)
            z -= xp.log(s)
        else:
            xp.exp(z, out=z)
            z /= z.sum(axis=-1, keepdims=True)
    return z.astype(x.dtype, copy=False)


def _softmax_bwd_rows(y, dy, log):
    ct = _compute_dtype(y.dtype)
    yf, dyf = y.astype(ct, copy=False), dy.astype(ct, copy=False)
    xp = xp_of(y)
    if log:
        dx = xp.exp(yf)  # dx = dy - exp(y) * sum(dy)
        dx *= dyf.sum(axis=-1, keepdims=True)
        xp.subtract(dyf, dx, out=dx)
    else:
        dx = dyf * yf  # dx = y * (dy - sum(dy * y))
        xp.subtract(dyf, dx.sum(axis=-1, keepdims=True), out=dx)
        dx *= yf
    return dx.astype(y.dtype, copy=False)


_PASSES = 6  # elementwise passes per element of the forward and backward (the pool's size threshold)


def _by_rows(fn, first, *rest, log):
    """``fn(first, *rest, log)`` over the rows of the last dim, split between rows on the CPU pool for a large
    NumPy array (never within a row, so the result is the same bit for bit on any number of threads)."""
    if not isinstance(first, np.ndarray) or first.ndim < 2 or threads_for(first.size * _PASSES) <= 1:
        return fn(first, *rest, log)
    arrays = [_rows(a) for a in (first, *rest)]
    out = np.empty(arrays[0].shape, dtype=first.dtype)

    def body(a, b):
        out[a:b] = fn(*(r[a:b] for r in arrays), log)

    parallel_for(out.shape[0], body, work=first.size * _PASSES)
    return out.reshape(first.shape)


def _softmax_fwd_reference(x, log):
    if _jit.enabled() and isinstance(x, np.ndarray) and x.size:  # compiled row kernels (kernels/_numba/rows.py)
        return _jit.family("rows").softmax_forward(x, log)
    return _by_rows(_softmax_fwd_rows, x, log=log)


def _softmax_bwd_reference(y, dy, log):
    if _jit.enabled() and isinstance(y, np.ndarray) and isinstance(dy, np.ndarray) and y.size:
        return _jit.family("rows").softmax_backward(y, dy, log)
    return _by_rows(_softmax_bwd_rows, y, dy, log=log)


# ----------------------------------------------------------------------------------------------
# Public pair
# ----------------------------------------------------------------------------------------------


def softmax_forward(x, *, log=False):
    """Softmax (``log=False``) or log-softmax (``log=True``) over the last dim of ``x``.

    softmax:      y = exp(x - max(x)) / sum(exp(x - max(x)))
    log_softmax:  y = x - max(x) - log(sum(exp(x - max(x))))

    ``x``: any shape ``(..., C)``, float16 / bfloat16 / float32 (Triton) or float64 (reference path).
    Returns ``(y, residuals)`` with ``y`` shaped and typed like ``x`` (fp32 math) and
    ``residuals = SoftmaxResiduals(y)``. A row that is all ``-inf`` gives NaN, as in PyTorch.

    >>> y, res = softmax_forward(np.array([[0.0, 1.0]], np.float32))
    >>> dx = softmax_backward(res, np.ones_like(y))
    """
    _check_float("x", x)
    if use_triton(x) and np.dtype(x.dtype) in _TRITON_DTYPES and x.size:  # empty: no launch (reference below)
        y = _softmax_fwd_triton(x, bool(log))
    else:
        y = _softmax_fwd_reference(x, bool(log))
    return y, SoftmaxResiduals(y)


def softmax_backward(residuals, dy, *, log=False):
    """Gradient of :func:`softmax_forward` (same ``log``) with respect to ``x``.

    softmax:      dx = y * (dy - sum(dy * y))
    log_softmax:  dx = dy - exp(y) * sum(dy)

    ``residuals`` is the forward's :class:`SoftmaxResiduals`; ``dy`` has ``y``'s shape. ``dx`` has ``y``'s dtype.
    """
    y = residuals.y
    _check_float("dy", dy)
    if tuple(dy.shape) != tuple(y.shape):
        raise ValueError(f"softmax_backward: dy shape {tuple(dy.shape)} != output shape {tuple(y.shape)}")
    if use_triton(y, dy) and np.dtype(y.dtype) in _TRITON_DTYPES and y.size:
        return _softmax_bwd_triton(y, dy, bool(log))
    return _softmax_bwd_reference(y, dy, bool(log))
