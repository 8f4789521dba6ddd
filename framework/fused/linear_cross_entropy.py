"""The fused linear cross-entropy's framework side (kernels/linear_cross_entropy.py): the loss of
``cross_entropy(linear(x, weight, bias), target)`` computed chunk by chunk, without the (N, V) logits.
"""

from __future__ import annotations

from conch import kernels as K

from .. import ops
from .._backend import xp_of
from ..amp.autocast_mode import cast_for
from ..autograd.grad_mode import _enabled
from ..backends import _tf32
from ._common import FusedOp, _no_bias, _recompute_grads, _res, _t
from .cross_entropy import _composite_cross_entropy


class LinearCrossEntropy(FusedOp):
    """loss = cross_entropy(x @ weightᵀ + bias, target) over row chunks (inputs: x (N, D), weight (V, D), bias).

    mean/sum: the forward computes the gradients of the summed loss when an input requires grad, the backward
    scales them by the upstream scalar; "none": the backward runs the chunks again with per-row scales.
    ``return_logits``: a second output, the (N, V) logits, filled from the same chunk products (the projection
    runs once); a gradient reaching them adds dz W, dzᵀ x and Σ dz to the inputs' gradients. Missing output
    gradients stay None (``materialize_grads``: no (N, V) zeros for logits nobody differentiates).
    """

    saves = (0, 1, 2)
    materialize_grads = False

    @staticmethod
    def forward(ctx, x, weight, bias, target, ignore_index, label_smoothing, reduction, chunk_size=None,
                return_logits=False):  # fmt: skip
        ctx.has_bias = bias.size > 0
        ctx.ce_args = (target, ignore_index, label_smoothing, reduction)  # for the create_graph composite
        logits = xp_of(x).empty((x.shape[0], weight.shape[0]), dtype=x.dtype) if return_logits else None
        ctx.return_logits = return_logits
        loss, ctx.res = K.linear_cross_entropy.linear_cross_entropy_forward(
            x, weight, target, bias if ctx.has_bias else None, ignore_index=ignore_index,
            label_smoothing=label_smoothing, reduction=reduction, chunk_size=chunk_size, allow_tf32=_tf32[0],
            needs_input_grad=getattr(ctx, "needs_input_grad", (False,) * 3),  # unset when nothing is recorded
            check_targets=False, logits_out=logits,
        )  # fmt: skip
        return (loss, logits) if return_logits else loss

    @staticmethod
    def backward(ctx, g, g_logits=None):
        if not _enabled[0]:
            lce, res, needs = K.linear_cross_entropy, _res(ctx), ctx.needs_input_grad
            grads = (None,) * 3 if g is None else lce.linear_cross_entropy_backward(res, g._data, needs)
            if g_logits is not None:
                grads = tuple(a if b is None else b if a is None else a + b
                              for a, b in zip(grads, lce.logits_backward(res, g_logits._data, needs)))  # fmt: skip
            return tuple(_t(a) for a in grads)
        ce_args, has_bias, with_logits = ctx.ce_args, ctx.has_bias, ctx.return_logits

        def composite(x, weight, bias):
            z = ops.MatMul.apply(x, weight.T)
            z = z + bias if has_bias else z
            loss = _composite_cross_entropy(z, *ce_args)
            return (loss, z) if with_logits else loss

        return _recompute_grads(ctx, composite, (g, g_logits) if with_logits else (g,))


def linear_cross_entropy(x, weight, target, bias=None, ignore_index=-100, label_smoothing=0.0, reduction="mean",
                         chunk_size=None, return_logits=False):  # fmt: skip
    """Fused ``cross_entropy(linear(x, weight, bias), target)`` on 2-D x (N, D) and (N,) target array already
    checked by the caller (:func:`conch.nn.functional.linear_cross_entropy`). Under autocast the projection's
    inputs take linear's cast (the autocast dtype) and the loss is computed in float32, as cross_entropy's.
    ``return_logits``: (loss, logits (N, V) in the projection's dtype)."""
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
        reduction=reduction, chunk_size=chunk_size, return_logits=bool(return_logits),
    )  # fmt: skip
