"""Adapters from Tensors to conch.kernels' fused ops: one Op per kernel pair, routed by the dispatch rule.

Forward and backward call a kernel pair (``NAME_forward``/``NAME_backward``), which takes the
Triton path for CuPy arrays (and NumPy arrays under ``TRITON_INTERPRET=1``) and the reference
path otherwise. When a backward is itself being recorded (``create_graph=True``) the kernels'
array-level backward cannot be differentiated, so the op falls back to its composite formula
written with Tensor operations.
"""

from __future__ import annotations

import math

import numpy as np

from . import _dtype as D
from . import ops
from ._backend import xp_of
from .autograd.function import Op
from .tensor import Tensor, _norm_dim

ACTIVATIONS = ("relu", "leaky_relu", "elu", "gelu", "gelu_tanh", "silu", "tanh", "sigmoid")


def _erf_array(a):
    if xp_of(a) is np:
        from scipy.special import erf
    else:
        from cupyx.scipy.special import erf
    return erf(a).astype(a.dtype, copy=False)


class Erf(Op):
    """erf(x); d/dx = 2/√π · exp(-x²)."""

    saves = (0,)

    @staticmethod
    def forward(ctx, a):
        return _erf_array(a.astype(np.float32) if a.itemsize < 4 else a).astype(a.dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return g * (-(a * a)).exp() * (2 / math.sqrt(math.pi))


def _composite_activation(x, name, negative_slope=0.01, alpha=1.0):
    if name == "relu":
        return ops.Relu.apply(x)
    if name == "tanh":
        return ops.Tanh.apply(x)
    if name == "sigmoid":
        return ops.Sigmoid.apply(x)
    if name == "silu":
        return x * ops.Sigmoid.apply(x)
    if name == "gelu":
        return x * 0.5 * (1 + Erf.apply(x * (1 / math.sqrt(2))))
    if name == "gelu_tanh":
        return x * 0.5 * (1 + ops.Tanh.apply((x + x * x * x * 0.044715) * math.sqrt(2 / math.pi)))
    if name == "leaky_relu":
        return ops.Relu.apply(x) - ops.Relu.apply(-x) * negative_slope
    if name == "elu":
        neg = (ops.Clamp.apply(x, lo=None, hi=0).exp() - 1) * alpha
        return ops.Relu.apply(x) + neg
    raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)} or None")


def activation(x: Tensor, name: str, negative_slope: float = 0.01, alpha: float = 1.0) -> Tensor:
    """``act(x)`` for one of :data:`ACTIVATIONS`, computed in float32 for half-precision inputs."""
    if not x.is_floating_point():
        raise TypeError(f"{name} expects a floating-point tensor, got {x.dtype}")
    return _composite_activation(x, name, negative_slope, alpha)


def matmul(a: Tensor, b: Tensor) -> Tensor:
    return ops.MatMul.apply(a, b)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None) -> Tensor:
    """``act(x @ weightᵀ + bias)``: x (..., in), weight (out, in), bias (out,) -> (..., out)."""
    if weight.ndim != 2:
        raise RuntimeError(f"linear: weight must be 2-D (out_features, in_features), got shape {weight.shape}")
    if x.shape[-1:] != weight.shape[1:]:
        raise RuntimeError(
            f"linear: input shape {x.shape} does not match weight shape {weight.shape}: "
            f"expected last dim {weight.shape[1]}, got {x.shape[-1] if x.ndim else 'a 0-d tensor'}"
        )
    if bias is not None and bias.shape != weight.shape[:1]:
        raise RuntimeError(f"linear: bias shape {bias.shape} does not match out_features {weight.shape[0]}")
    y = x @ weight.T
    if bias is not None:
        y = y + bias
    if activation is not None and activation != "none":
        y = _composite_activation(y, activation)
    return y


def softmax(x: Tensor, dim: int, dtype=None) -> Tensor:
    if dtype is not None:
        x = x.to(dtype=dtype)
    return ops.Softmax.apply(x, dim=_norm_dim(dim, x.ndim))


def log_softmax(x: Tensor, dim: int, dtype=None) -> Tensor:
    if dtype is not None:
        x = x.to(dtype=dtype)
    return ops.LogSoftmax.apply(x, dim=_norm_dim(dim, x.ndim))


def cross_entropy(logits: Tensor, target: Tensor, ignore_index=-100, label_smoothing=0.0, reduction="mean"):
    """Cross-entropy of (N, C) logits against (N,) integer targets, PyTorch semantics.

    loss_i = (1-ε)(lse_i - x_i[t_i]) + ε/C Σ_j (lse_i - x_ij); rows with t_i = ignore_index count 0
    and are left out of the mean's denominator.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{reduction} is not a valid value for reduction; expected 'mean', 'sum' or 'none'")
    if logits.ndim != 2 or target.ndim != 1 or target.shape[0] != logits.shape[0]:
        raise ValueError(
            f"cross_entropy expects logits (N, C) and target (N,), got logits {logits.shape} and target {target.shape}"
        )
    if target.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy expects integer class targets, got {target.dtype}")
    n, c = logits.shape
    t = target._data
    valid = t != ignore_index
    bad = valid & ((t < 0) | (t >= c))
    if bad.any():
        raise IndexError(
            f"Target {int(t[bad][0])} is out of bounds: logits have {c} classes (valid targets are 0..{c - 1} "
            f"or ignore_index={ignore_index})"
        )
    x = logits.float() if logits.dtype in (D.float16, D.bfloat16) else logits
    logp = ops.LogSoftmax.apply(x, dim=1)
    xp = xp_of(t)
    safe_t = xp.where(valid, t, 0)
    nll = -logp[xp.arange(n), safe_t]
    if label_smoothing:
        nll = nll * (1 - label_smoothing) - logp.sum(1) * (label_smoothing / c)
    nll = nll * Tensor._make(valid.astype(x.dtype))
    if reduction == "none":
        return nll
    if reduction == "sum":
        return nll.sum()
    return nll.sum() / Tensor._make(xp.asarray(valid.sum(), dtype=x.dtype))


def layer_norm(x: Tensor, normalized_shape, weight=None, bias=None, eps=1e-5) -> Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias over the trailing ``normalized_shape`` dims."""
    shape = _check_norm(x, normalized_shape, weight, "layer_norm")
    dims = tuple(range(x.ndim - len(shape), x.ndim))
    xf = x.float() if x.dtype in (D.float16, D.bfloat16) else x
    mean = xf.mean(dims, keepdim=True)
    xc = xf - mean
    y = xc * ((xc * xc).mean(dims, keepdim=True) + eps).rsqrt()
    y = y.to(dtype=x.dtype)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def rms_norm(x: Tensor, normalized_shape, weight=None, eps=1e-6) -> Tensor:
    """x / sqrt(mean(x²) + eps) * weight over the trailing ``normalized_shape`` dims."""
    shape = _check_norm(x, normalized_shape, weight, "rms_norm")
    dims = tuple(range(x.ndim - len(shape), x.ndim))
    xf = x.float() if x.dtype in (D.float16, D.bfloat16) else x
    y = (xf * ((xf * xf).mean(dims, keepdim=True) + eps).rsqrt()).to(dtype=x.dtype)
    return y * weight if weight is not None else y


def _check_norm(x, normalized_shape, weight, name):
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if x.shape[x.ndim - len(shape) :] != shape or len(shape) > x.ndim:
        raise RuntimeError(
            f"{name}: given normalized_shape={list(shape)}, expected input with shape [*, "
            f"{', '.join(map(str, shape))}], but got input of size {list(x.shape)}"
        )
    if weight is not None and weight.shape != shape:
        raise RuntimeError(f"{name}: weight shape {weight.shape} does not match normalized_shape {shape}")
    return shape


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Zero each element with probability p and scale the rest by 1/(1-p); identity in eval mode."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0
    from .creation import _state

    g = _state["np"] if isinstance(x._data, np.ndarray) else None
    if g is None:
        import cupy

        keep = cupy.random.random_sample(x.shape) >= p
    else:
        keep = g.random(x.shape) >= p
    return x * Tensor._make((keep / (1 - p)).astype(x.dtype))
