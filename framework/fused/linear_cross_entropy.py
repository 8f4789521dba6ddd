"""The fused linear cross-entropy's framework side (kernels/linear_cross_entropy.py): the loss of
``cross_entropy(linear(x, weight, bias), target)`` computed chunk by chunk, without the (N, V) logits.
"""

from __future__ import annotations

from conch import kernels as K

from .. import ops
from ..amp.autocast_mode import cast_for
from ..autograd.grad_mode import _enabled
from ..backends import _tf32
from ._common import FusedOp, _no_bias, _recompute_grads, _res, _t
from .cross_entropy import _composite_cross_entropy


class LinearCrossEntropy(FusedOp):
    """loss = cross_entropy(x @ weightᵀ + bias, target) over row chunks (inputs: x (N, D), weight (V, D), bias).

    mean/sum: the forward computes the gradients of the summed loss when an input requires grad, the backward
    scales them by the upstream scalar; "none": the backward runs the chunks again with per-row scales.
    """

    saves = (0, 1, 2)

    @staticmethod
    def forward(ctx, x, weight, bias, target, ignore_index, label_smoothing, reduction, chunk_size=None):
        ctx.has_bias = bias.size > 0
        ctx.ce_args = (target, ignore_index, label_smoothing, reduction)  # for the create_graph composite
        loss, ctx.res = K.linear_cross_entropy.linear_cross_entropy_forward(
            x, weight, target, bias if ctx.has_bias else None, ignore_index=ignore_index,
            label_smoothing=label_smoothing, reduction=reduction, chunk_size=chunk_size, allow_tf32=_tf32[0],
            needs_input_grad=getattr(ctx, "needs_input_grad", (False,) * 3),  # unset when nothing is recorded
            check_targets=False,
        )  # fmt: skip
        return loss

    @staticmethod
    def backward(ctx, g):
        if not _enabled[0]:
            grads = K.linear_cross_entropy.linear_cross_entropy_backward(_res(ctx), g._data, ctx.needs_input_grad)
            return tuple(_t(a) for a in grads)
        ce_args, has_bias = ctx.ce_args, ctx.has_bias

        def composite(x, weight, bias):
            z = ops.MatMul.apply(x, weight.T)
            return _composite_cross_entropy(z + bias if has_bias else z, *ce_args)

        return _recompute_grads(ctx, composite, (g,))


def linear_cross_entropy(x, weight, target, bias=None, ignore_index=-100, label_smoothing=0.0, reduction="mean",
                         chunk_size=None):  # fmt: skip
    """Fused ``cross_entropy(linear(x, weight, bias), target)`` on 2-D x (N, D) and (N,) target array already
    checked by the caller (:func:`conch.nn.functional.linear_cross_entropy`). Under autocast the projection's
    inputs take linear's cast (the autocast dtype) and the loss is computed in float32, as cross_entropy's."""
    if bias is None:
        x, weight = cast_for("linear", x, weight)
        bias = _no_bias(x)
    else:
        x, weight, bias = cast_for("linear", x, weight, bias)
    if weight.dtype != x.dtype or (bias.numel() and bias.dtype != x.dtype):
        raise RuntimeError(
            f"linear_cross_entropy: x, weight and bias must have one dtype, got x {x.dtype}, weight {weight.dtype}"
            + (f", bias {bias.dtype}" if bias.numel() else "")
        )
    return LinearCrossEntropy.apply(
        x, weight, bias, target=target, ignore_index=int(ignore_index), label_smoothing=float(label_smoothing),
        reduction=reduction, chunk_size=chunk_size,
    )  # fmt: skip
