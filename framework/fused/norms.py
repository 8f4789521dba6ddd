"""The norms kernel's framework side (kernels/norms.py): layer norm and RMS norm over trailing dims."""

from __future__ import annotations

from conch import kernels as K

from .. import _dtype as D
from ..amp.autocast_mode import cast_for
from ..autograd.grad_mode import _enabled
from ..tensor import Tensor
from ._common import FusedOp, _no_bias, _recompute_grads, _res, _t


class LayerNorm(FusedOp):
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
    x, *wb = cast_for(name, x, *(t for t in (weight, bias) if t is not None))
    if weight is not None:
        weight = wb.pop(0)
    if bias is not None:
        bias = wb.pop(0)
    if x.numel() == 0:  # no rows, or rows of 0 elements: an empty result (PyTorch's), no kernel
        y = x.clone()
        y = y * weight if weight is not None else y
        return y + bias if bias is not None else y
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
