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

from conch import kernels as K
from conch.kernels._launch import use_triton

from . import _dtype as D
from . import ops
from ._backend import xp_of
from .amp.autocast_mode import cast_for
from .autograd.function import Op
from .autograd.grad_mode import _enabled
from .backends import _tf32
from .tensor import Tensor, _norm_dim

ACTIVATIONS = ("relu", "leaky_relu", "elu", "gelu", "gelu_tanh", "silu", "tanh", "sigmoid")


def _erf_array(a):
    if xp_of(a) is np:
        from scipy.special import erf
    else:
        from conch.kernels._cupy import special

        erf = special("erf")
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


_amp = cast_for


def _res(ctx):
    """The kernel residuals of ``ctx``, or the "backward twice" error once they were freed."""
    if ctx.res is None:
        from .autograd.function import _FREED_MSG

        raise RuntimeError(_FREED_MSG)
    return ctx.res


def _t(arr):
    return None if arr is None else Tensor._make(arr)


def _recompute_grads(ctx, composite, grads):
    """create_graph fallback: differentiate the composite formula on the saved inputs.

    The kernels' array-level backward cannot itself be recorded, so when a backward is being
    recorded (``create_graph=True``) a fused op re-expresses its forward with Tensor ops and lets
    autograd differentiate that: the result carries a graph, so third derivatives work too.
    """
    from .autograd import grad

    inputs = ctx.saved_tensors
    want = [i for i, n in enumerate(ctx.needs_input_grad) if n]
    out = composite(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    gs = grad(list(outs), [inputs[i] for i in want], list(grads), create_graph=True, allow_unused=True)
    res = [None] * len(inputs)
    for i, g in zip(want, gs):
        res[i] = g
    return tuple(res)


class Activation(Op):
    """act(x) on the activations kernel; backward dx = dy · act'(x) (or act'(y) where cheaper)."""

    saves = (0,)

    @staticmethod
    def forward(ctx, x, name, negative_slope, alpha):
        ctx.attrs = (name, negative_slope, alpha)
        y, ctx.res = K.activations.activation_forward(x, name, negative_slope=negative_slope, alpha=alpha)
        return y

    @staticmethod
    def backward(ctx, g):
        if _enabled[0]:
            name, slope, alpha = ctx.attrs
            return _recompute_grads(ctx, lambda x: _composite_activation(x, name, slope, alpha), (g,))
        return _t(K.activations.activation_backward(_res(ctx), g._data))


def activation(x: Tensor, name: str, negative_slope: float = 0.01, alpha: float = 1.0) -> Tensor:
    """``act(x)`` for one of :data:`ACTIVATIONS`; math in float32 for half-precision inputs."""
    simple = _SIMPLE.get(name)
    if simple is not None and x._data.dtype in _SIMPLE_DTYPES and not use_triton(x._data):
        # float32/float64 on the NumPy reference path: the plain op computes the same maths with about
        # 3 us less Python per call (no kernel residuals or dispatch layers), which is per-op overhead
        return simple.apply(x)
    if not x.is_floating_point():
        raise TypeError(f"{name} expects a floating-point tensor, got {x.dtype}")
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}")
    return Activation.apply(x, name=name, negative_slope=negative_slope, alpha=alpha)


_SIMPLE = {"relu": ops.Relu, "tanh": ops.Tanh, "sigmoid": ops.Sigmoid}
_SIMPLE_DTYPES = (D.float32, D.float64)


class MatMulAct(Op):
    """out = act(a @ b + bias) on the matmul kernel (bias and activation fused in the epilogue).

    Backward: dZ = dout · act'(Z), da = dZ @ bᵀ, db = aᵀ @ dZ, dbias = Σ_rows dZ.
    """

    saves = (0, 1, 2)

    @staticmethod
    def forward(ctx, a, b, bias, act, negative_slope, alpha=1.0):
        ctx.act, ctx.slope, ctx.alpha, ctx.has_bias = act, negative_slope, alpha, bias.size > 0
        out, ctx.res = K.matmul.matmul_forward(
            a, b, bias if ctx.has_bias else None, act, negative_slope=negative_slope, alpha=alpha,
            allow_tf32=_tf32[0],
        )  # fmt: skip
        return out

    @staticmethod
    def backward(ctx, g):
        if _enabled[0]:
            act, slope, alpha, has_bias = ctx.act, ctx.slope, ctx.alpha, ctx.has_bias

            def composite(a, b, bias):
                z = ops.MatMul.apply(a, b)
                if has_bias:
                    z = z + bias
                return z if act is None else _composite_activation(z, act, slope, alpha)

            return _recompute_grads(ctx, composite, (g,))
        n = ctx.needs_input_grad
        da, db, dbias = K.matmul.matmul_backward(_res(ctx), g._data, (n[0], n[1], n[2] and ctx.has_bias))
        return _t(da), _t(db), _t(dbias)


def _no_bias(a):
    return Tensor._make(xp_of(a._data).empty((0,), dtype=a.dtype))


def matmul(a: Tensor, b: Tensor) -> Tensor:
    a, b = _amp("matmul", a, b)
    return MatMulAct.apply(a, b, _no_bias(a), act=None, negative_slope=0.01)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None,
           negative_slope: float = 0.01, alpha: float = 1.0) -> Tensor:  # fmt: skip
    """``act(x @ weightᵀ + bias)`` in one kernel: x (..., in), weight (out, in), bias (out,) -> (..., out)."""
    if weight.ndim != 2:
        raise RuntimeError(f"linear: weight must be 2-D (out_features, in_features), got shape {weight.shape}")
    if x.ndim == 0 or x.shape[-1] != weight.shape[1]:
        raise RuntimeError(
            f"linear: input shape {x.shape} does not match weight shape {weight.shape}: "
            f"expected last dim {weight.shape[1]} (in_features), got {x.shape[-1] if x.ndim else 'a 0-d tensor'}"
        )
    if bias is not None and bias.shape != weight.shape[:1]:
        raise RuntimeError(f"linear: bias shape {bias.shape} does not match out_features {weight.shape[0]}")
    if activation == "none":
        activation = None
    if activation is not None and activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected None or one of {', '.join(ACTIVATIONS)}")
    if bias is None:
        x, weight = _amp("linear", x, weight)
        bias = _no_bias(x)
    else:
        x, weight, bias = _amp("linear", x, weight, bias)
    dt = x.dtype
    if weight.dtype != dt or (bias.numel() and bias.dtype != dt):
        weight, bias = weight.to(dtype=dt), bias.to(dtype=dt)
    # weightᵀ is a strided view: the kernel reads it in place, no copy
    return MatMulAct.apply(x, weight.T, bias, act=activation, negative_slope=negative_slope, alpha=alpha)


class SoftmaxLast(Op):
    """softmax / log_softmax over the last dim on the softmax kernel."""

    saves = (0,)

    @staticmethod
    def forward(ctx, x, log):
        ctx.log = log
        y, ctx.res = K.softmax.softmax_forward(x, log=log)
        return y

    @staticmethod
    def backward(ctx, g):
        if _enabled[0]:
            cls = ops.LogSoftmax if ctx.log else ops.Softmax
            return _recompute_grads(ctx, lambda x: cls.apply(x, dim=x.ndim - 1), (g,))
        return _t(K.softmax.softmax_backward(_res(ctx), g._data, log=ctx.log))


def _softmax(x, dim, dtype, log):
    (x,) = _amp("log_softmax" if log else "softmax", x)
    if dtype is not None:
        x = x.to(dtype=dtype)
    if not x.is_floating_point():
        raise TypeError(f"softmax expects a floating-point tensor, got {x.dtype}")
    if x.ndim == 0:
        return x * 0 if log else x * 0 + 1
    d = _norm_dim(dim, x.ndim)
    if d == x.ndim - 1:
        return SoftmaxLast.apply(x, log=log)
    # the kernel reduces the last dim: move ``dim`` there and back (two copies, still one kernel)
    return SoftmaxLast.apply(x.transpose(d, -1).contiguous(), log=log).transpose(d, -1)


def softmax(x: Tensor, dim: int, dtype=None) -> Tensor:
    """exp(x - max) / Σ exp(x - max) along ``dim``."""
    return _softmax(x, dim, dtype, False)


def log_softmax(x: Tensor, dim: int, dtype=None) -> Tensor:
    """x - max - log Σ exp(x - max) along ``dim``."""
    return _softmax(x, dim, dtype, True)


class CrossEntropy(Op):
    """Fused cross-entropy from logits (logsumexp in the forward, softmax − onehot in the backward)."""

    saves = (0,)

    @staticmethod
    def forward(ctx, logits, target, ignore_index, label_smoothing, reduction, check_targets=True):
        ctx.attrs = (target, ignore_index, label_smoothing, reduction)
        loss, ctx.res = K.cross_entropy.cross_entropy_forward(
            logits, target, ignore_index=ignore_index, label_smoothing=label_smoothing, reduction=reduction,
            check_targets=check_targets,
        )  # fmt: skip
        return loss

    @staticmethod
    def backward(ctx, g):
        if _enabled[0]:
            t, ii, ls, red = ctx.attrs
            return _recompute_grads(ctx, lambda x: _composite_cross_entropy(x, t, ii, ls, red), (g,))
        return _t(K.cross_entropy.cross_entropy_backward(_res(ctx), g._data))


def cross_entropy(
    logits: Tensor, target: Tensor, ignore_index=-100, label_smoothing=0.0, reduction="mean", check_targets=True
):
    """Cross-entropy of (N, C) logits against (N,) integer targets, PyTorch semantics.

    loss_i = (1-ε)(lse_i - x_i[t_i]) + ε/C Σ_j (lse_i - x_ij); rows with t_i = ignore_index count 0
    and are left out of the mean's denominator. The loss is float32 for half-precision logits.
    ``check_targets=False``: the caller has range-checked the targets (one check per call, not two).
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{reduction} is not a valid value for reduction; expected 'mean', 'sum' or 'none'")
    if logits.ndim != 2 or target.ndim != 1 or target.shape[0] != logits.shape[0]:
        raise ValueError(
            f"cross_entropy expects logits (N, C) and target (N,), got logits {logits.shape} and target {target.shape}"
        )
    if target.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy expects integer class targets (int64), got {target.dtype}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be between 0.0 and 1.0, got {label_smoothing}")
    if target.device != logits.device:
        raise RuntimeError(f"cross_entropy: logits are on {logits.device} but target is on {target.device}")
    (logits,) = _amp("cross_entropy", logits)
    return CrossEntropy.apply(
        logits, target=target._data, ignore_index=int(ignore_index), label_smoothing=float(label_smoothing),
        reduction=reduction, check_targets=check_targets,
    )  # fmt: skip


def _composite_cross_entropy(logits, t, ignore_index, label_smoothing, reduction):
    n, c = logits.shape
    valid = t != ignore_index
    x = logits.float() if logits.dtype in (D.float16, D.bfloat16) else logits
    logp = ops.LogSoftmax.apply(x, dim=1)
    xp = xp_of(t)
    nll = -logp[xp.arange(n), xp.where(valid, t, 0)]
    if label_smoothing:
        nll = nll * (1 - label_smoothing) - logp.sum(1) * (label_smoothing / c)
    nll = nll * Tensor._make(valid.astype(x.dtype))
    if reduction == "none":
        return nll
    if reduction == "sum":
        return nll.sum()
    return nll.sum() / Tensor._make(xp.asarray(valid.sum(), dtype=x.dtype))


class LayerNorm(Op):
    """Layer norm over the last dim on the norms kernel (fp32 mean/rstd saved)."""

    saves = (0, 1, 2)

    @staticmethod
    def forward(ctx, x, w, b, eps, rms):
        ctx.eps, ctx.rms, ctx.hw, ctx.hb = eps, rms, w.size > 0, b.size > 0
        w = w if ctx.hw else None
        if rms:
            y, ctx.res = K.norms.rms_norm_forward(x, w, eps=eps)
        else:
            y, ctx.res = K.norms.layer_norm_forward(x, w, b if ctx.hb else None, eps=eps)
        return y

    @staticmethod
    def backward(ctx, g):
        if _enabled[0]:
            eps, rms, hw, hb = ctx.eps, ctx.rms, ctx.hw, ctx.hb

            def composite(x, w, b):
                d = x.shape[-1]
                if rms:
                    return _composite_rms_norm(x, (d,), w if hw else None, eps)
                return _composite_layer_norm(x, (d,), w if hw else None, b if hb else None, eps)

            return _recompute_grads(ctx, composite, (g,))
        if ctx.rms:
            dx, dw = K.norms.rms_norm_backward(_res(ctx), g._data)
            return _t(dx), _t(dw), None
        dx, dw, db = K.norms.layer_norm_backward(_res(ctx), g._data)
        return _t(dx), _t(dw), _t(db)


def _norm(x, normalized_shape, weight, bias, eps, rms):
    name = "rms_norm" if rms else "layer_norm"
    shape = _check_norm(x, normalized_shape, weight, name)
    if bias is not None and bias.shape != shape:
        raise RuntimeError(f"{name}: bias shape {bias.shape} does not match normalized_shape {shape}")
    x, *wb = _amp(name, x, *(t for t in (weight, bias) if t is not None))
    if weight is not None:
        weight = wb.pop(0)
    if bias is not None:
        bias = wb.pop(0)
    d = 1
    for s in shape:
        d *= s
    lead = x.shape[: x.ndim - len(shape)]
    x2 = x if len(shape) == 1 else x.reshape(lead + (d,))
    none = _no_bias(x)
    w2 = none if weight is None else weight.reshape(d)
    b2 = none if bias is None else bias.reshape(d)
    y = LayerNorm.apply(x2, w2, b2, eps=float(eps), rms=rms)
    return y if len(shape) == 1 else y.reshape(x.shape)


def layer_norm(x: Tensor, normalized_shape, weight=None, bias=None, eps=1e-5) -> Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias over the trailing ``normalized_shape`` dims (biased var)."""
    return _norm(x, normalized_shape, weight, bias, eps, rms=False)


def rms_norm(x: Tensor, normalized_shape, weight=None, eps=1e-6) -> Tensor:
    """x / sqrt(mean(x²) + eps) * weight over the trailing ``normalized_shape`` dims."""
    return _norm(x, normalized_shape, weight, None, eps, rms=True)


def _composite_layer_norm(x, shape, weight, bias, eps):
    dims = tuple(range(x.ndim - len(shape), x.ndim))
    xf = x.float() if x.dtype in (D.float16, D.bfloat16) else x
    xc = xf - xf.mean(dims, keepdim=True)
    y = (xc * ((xc * xc).mean(dims, keepdim=True) + eps).rsqrt()).to(dtype=x.dtype)
    if weight is not None:
        y = y * weight
    return y + bias if bias is not None else y


def _composite_rms_norm(x, shape, weight, eps):
    dims = tuple(range(x.ndim - len(shape), x.ndim))
    xf = x.float() if x.dtype in (D.float16, D.bfloat16) else x
    y = (xf * ((xf * xf).mean(dims, keepdim=True) + eps).rsqrt()).to(dtype=x.dtype)
    return y * weight if weight is not None else y


def _check_norm(x, normalized_shape, weight, name):
    shape = (int(normalized_shape),) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if len(shape) > x.ndim or x.shape[x.ndim - len(shape) :] != shape:
        raise RuntimeError(
            f"{name}: given normalized_shape={list(shape)}, expected input with shape [*, "
            f"{', '.join(map(str, shape))}], but got input of size {list(x.shape)}"
        )
    if weight is not None and weight.shape != shape:
        raise RuntimeError(f"{name}: weight shape {weight.shape} does not match normalized_shape {shape}")
    return shape


class Dropout(Op):
    """y = x · mask / (1 - p) with a counter-based mask: the backward regenerates it from (seed, offset)."""

    @staticmethod
    def forward(ctx, x, p, seed, offset):
        y, ctx.res = K.dropout.dropout_forward(x, p, seed=seed, offset=offset)
        ctx.p, ctx.seed, ctx.offset = p, seed, offset
        return y

    @staticmethod
    def backward(ctx, g):
        if _enabled[0]:  # linear in x: the mask is a constant, so the composite is g · mask / (1-p)
            xp = xp_of(g._data)
            keep = K.dropout.dropout_mask(g.shape, ctx.p, ctx.seed, ctx.offset, xp=xp)
            return g * Tensor._make((keep / (1 - ctx.p)).astype(g.dtype))
        return _t(K.dropout.dropout_backward(_res(ctx), g._data))


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Zero each element with probability p and scale the rest by 1/(1-p); identity when not training.

    The mask comes from a counter-based generator (seed, offset) that ``conch.manual_seed`` sets
    and checkpointing saves and restores, so a recomputation draws the same mask.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0
    from .creation import philox_seed_offset

    seed, offset = philox_seed_offset(x.numel())
    return Dropout.apply(x, p=float(p), seed=seed, offset=offset)


def _composite_attention(q, k, v, causal, scale, drop=None):
    s = (q @ k.transpose(-2, -1)) * scale
    if causal:
        xp = xp_of(s._data)
        s = s.masked_fill(~xp.tril(xp.ones(s.shape[-2:], dtype=bool)), -math.inf)
    p = softmax(s, -1)
    if drop is not None:  # the kernels' mask: the same counters over the (..., L, S) probabilities
        keep = K.dropout.dropout_mask(p.shape, drop[0], drop[1], drop[2], xp=xp_of(p._data))
        p = p * Tensor._make((keep / (1 - drop[0])).astype(p.dtype))
    return p @ v


class Attention(Op):
    """softmax(q kᵀ·scale [causal]) [dropout] v on the flash-attention kernels (no (L, S) matrix kept on the GPU).

    Backward: dv = p̃ᵀ dout, ds = p ∘ (dp̃ - rowsum(dout ∘ out)), dq = ds k·scale, dk = dsᵀ q·scale, with p
    recomputed tile by tile from the saved logsumexp and p̃, dp̃ carrying the regenerated dropout mask.
    """

    saves = (0, 1, 2)

    @staticmethod
    def forward(ctx, q, k, v, causal, scale, drop):
        ctx.attrs = (causal, scale, drop)
        p, seed, offset = drop if drop is not None else (0.0, 0, 0)
        out, ctx.res = K.attention.attention_forward(q, k, v, causal=causal, scale=scale, dropout_p=p, seed=seed,
                                                     offset=offset, allow_tf32=_tf32[0])  # fmt: skip
        return out

    @staticmethod
    def backward(ctx, g):
        if _enabled[0]:
            causal, scale, drop = ctx.attrs
            return _recompute_grads(ctx, lambda q, k, v: _composite_attention(q, k, v, causal, scale, drop), (g,))
        grads = K.attention.attention_backward(_res(ctx), g._data)
        return tuple(_t(a) if need else None for a, need in zip(grads, ctx.needs_input_grad))


def attention(q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float, dropout_p: float = 0.0) -> Tensor:
    """softmax(q kᵀ·scale) v for q (..., L, D), k (..., S, D), v (..., S, Dv) of one float dtype; ``causal``
    masks key j > query i; ``dropout_p`` drops probabilities with the counter-based generator (the mask is
    regenerated in the backward and in a checkpointed recomputation). The fused path of
    ``scaled_dot_product_attention`` without an explicit mask."""
    drop = None
    if dropout_p > 0.0:
        from .creation import philox_seed_offset

        lead = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
        n = math.prod(lead) * q.shape[-2] * k.shape[-2]
        seed, offset = philox_seed_offset(n)
        drop = (float(dropout_p), seed, offset)
    return Attention.apply(q, k, v, causal=bool(causal), scale=float(scale), drop=drop)
