"""Elementwise activations: one flat Triton kernel each way (fp32 math, storage dtype out) plus the xp reference.

Forward ``y = f(x)`` and backward ``dx = dy * f'(x)`` for the activations of :mod:`conch.kernels._act`
(None/"none", "relu", "leaky_relu", "elu", "gelu", "gelu_tanh", "silu", "tanh", "sigmoid")::

    y, res = activation_forward(x, "gelu")
    dx = activation_backward(res, dy)

Residuals are an :class:`ActivationResiduals`: ``saved`` is ``y`` for relu/tanh/sigmoid (their derivative is a
function of the output, and ``y`` exists anyway) and ``x`` otherwise (``None`` for the identity); plus the attributes.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import _act as _act_module
from . import _jit
from ._act import (
    FROM_OUTPUT,
    act_backward_ref,
    act_code,
    act_name,
    act_passes,
    act_ref,
)
from ._launch import TritonKernel, cdiv, kernel_for, targ, use_triton, xp_of
from ._threads import for_blocks

# The @triton.jit kernels are in kernels/_triton/activations.py, imported by kernel_for at the first Triton
# launch: the reference path never imports Triton.
_act_fwd_kernel = TritonKernel("activations", "_act_fwd_kernel")
_act_bwd_kernel = TritonKernel("activations", "_act_bwd_kernel")


# --------------------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------------------

_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
BLOCK = 1024  # elements per program; 4 warps on the GPU (8 fp32 per thread)
NUM_WARPS = 4


class ActivationResiduals(NamedTuple):
    """What an activation's backward needs: the one saved array and the attributes."""

    name: str  # canonical activation name (``act_name``)
    param: float  # negative_slope for leaky_relu, alpha for elu, 0.0 otherwise
    saved: object  # y for relu/tanh/sigmoid (FROM_OUTPUT), x otherwise, None for the identity
    shape: tuple  # x's shape (dy must match it)
    dtype: object  # x's dtype (dx has it)


def _check_float(x, what):
    if x.dtype not in _FLOATS and x.dtype.name != "bfloat16":  # by name: importing ml_dtypes costs 0.5 s
        raise TypeError(f"{what} must be float16, bfloat16, float32 or float64, got dtype {x.dtype}")


def _param(name, negative_slope, alpha):
    return float(negative_slope if name == "leaky_relu" else alpha if name == "elu" else 0.0)


def _launch_forward(x, name, param):
    xp = xp_of(x)
    xc = xp.ascontiguousarray(x)  # flat kernel: non-contiguous inputs are copied once here
    y = xp.empty(x.shape, dtype=x.dtype)
    n = x.size
    if n:
        grid = (cdiv(n, BLOCK),)
        kernel_for(_act_fwd_kernel, xc)[grid](
            targ(xc), targ(y), n, param, ACT=act_code(name), BLOCK=BLOCK, num_warps=NUM_WARPS
        )
    return y


def _launch_backward(saved, dy, name, param, dtype):
    xp = xp_of(saved)
    sc = xp.ascontiguousarray(saved)
    dyc = xp.ascontiguousarray(dy)
    dx = xp.empty(saved.shape, dtype=dtype)
    n = saved.size
    if n:
        grid = (cdiv(n, BLOCK),)
        kernel_for(_act_bwd_kernel, sc, dyc)[grid](
            targ(sc),
            targ(dyc),
            targ(dx),
            n,
            param,
            ACT=act_code(name),
            FROM_OUT=name in FROM_OUTPUT,
            BLOCK=BLOCK,
            num_warps=NUM_WARPS,
        )
    return dx


def dz_from_saved(saved, dy, name, param, dtype):
    """dy * f'(.) from a saved residual (the output y for relu/tanh/sigmoid, the input otherwise), in ``dtype``.

    The backward of an activation, also used by matmul's backward to form dZ once before the two products.
    Triton for CuPy arrays (and NumPy arrays under the interpreter), the reference path otherwise.
    """
    name = act_name(name)
    if use_triton(saved, dy) and np.dtype(dtype) != np.float64 and np.dtype(saved.dtype) != np.float64:
        return _launch_backward(saved, dy, name, param, dtype)
    return _reference_backward(saved, dy, name, param, dtype)


# --------------------------------------------------------------------------------------------------------------
# Reference path (NumPy or CuPy), computed in fp32 (fp64 for fp64 inputs)
# --------------------------------------------------------------------------------------------------------------


def _compute_dtype(dtype):
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def _one_pass(*arrays):
    """True for NumPy arrays larger than one block: the reference pair then runs block by block on the CPU pool,
    every step of an element (dtype casts, f or f', dy * f') done while its block is in the cache. False where
    the compiled kernels take the arrays as they are (float32/float64, one dtype): one pass, split by act_ref."""
    return (
        all(type(a) is np.ndarray for a in arrays)
        and arrays[0].size > _act_block()
        and not _act_module.compiled(*arrays)
    )


def _act_block():
    return _act_module._BLOCK  # read per call: tests shrink it


def _passes(name, backward):
    """Passes per element of a block's f or f' (compiled: cheaper than the NumPy reference's)."""
    return _act_module.jit_passes(name, backward) if _jit.enabled() else act_passes(name)


def _flat(a):
    return np.ascontiguousarray(a).reshape(-1)


def _reference_forward(x, name, param):
    ct = _compute_dtype(x.dtype)
    if name == "relu" or not _one_pass(x):
        return act_ref(x.astype(ct, copy=False), name, param).astype(x.dtype, copy=False)
    xf, y = _flat(x), np.empty(x.shape, dtype=x.dtype)
    yf = y.reshape(-1)

    def block(a, b):
        yf[a:b] = act_ref(xf[a:b].astype(ct, copy=False), name, param)

    for_blocks(xf.size, _act_block(), block, work=xf.size * _passes(name, False))
    return y


def _reference_backward(saved, dy, name, param, dtype):
    ct = _compute_dtype(dtype)
    if not _one_pass(saved, dy):  # dx = dy * f'
        return act_backward_ref(saved.astype(ct, copy=False), dy.astype(ct, copy=False), name, param).astype(
            dtype, copy=False
        )
    sf, df, dx = _flat(saved), _flat(dy), np.empty(saved.shape, dtype=dtype)
    dxf = dx.reshape(-1)

    def block(a, b):  # the same operations as above on one block: the same bits
        dxf[a:b] = act_backward_ref(sf[a:b].astype(ct, copy=False), df[a:b].astype(ct, copy=False), name, param)

    for_blocks(sf.size, _act_block(), block, work=sf.size * (_passes(name, True) + 2))
    return dx


# --------------------------------------------------------------------------------------------------------------
# Public pair
# --------------------------------------------------------------------------------------------------------------


def activation_forward(x, name, *, negative_slope=0.01, alpha=1.0):
    """y = f(x) elementwise; returns ``(y, residuals)``.

    ``name``: None/"none", "relu", "leaky_relu" (``negative_slope``), "elu" (``alpha``), "gelu" (exact, erf),
    "gelu_tanh", "silu", "tanh", "sigmoid". ``x``: any shape, float16/bfloat16/float32 (float64 on the
    reference path; the Triton path computes float64 through the reference too). ``y`` has x's shape and
    dtype. Example: ``y, res = activation_forward(np.ones(3, np.float32), "relu")``.
    """
    name = act_name(name)
    _check_float(x, "x")
    param = _param(name, negative_slope, alpha)
    if name != "none" and use_triton(x) and x.dtype != np.float64:
        y = _launch_forward(x, name, param)
    elif name == "none":
        y = x.copy()
    else:
        y = _reference_forward(x, name, param)
    saved = None if name == "none" else (y if name in FROM_OUTPUT else x)
    return y, ActivationResiduals(name, param, saved, tuple(x.shape), x.dtype)


def activation_backward(residuals, dy):
    """dx = dy * f'(x), in the dtype of x; ``dy`` must have x's shape (any float dtype, any strides)."""
    name, param, saved, shape, dtype = residuals
    if tuple(dy.shape) != shape:
        raise ValueError(f"dy has shape {tuple(dy.shape)}, expected the input's shape {shape}")
    _check_float(dy, "dy")
    if name == "none":
        return dy.astype(dtype, copy=True)
    return dz_from_saved(saved, dy, name, param, dtype)
