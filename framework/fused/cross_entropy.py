"""The cross-entropy kernel's framework side (kernels/cross_entropy.py): fused loss from (N, C) logits and (N,)
integer targets, with ignore_index, label smoothing and reductions as PyTorch's.
"""

from __future__ import annotations

from conch import kernels as K

from .. import _dtype as D
from .. import ops
from .._backend import xp_of
from ..amp.autocast_mode import cast_for
from ..autograd.grad_mode import _enabled
from ..tensor import Tensor
from ._common import FusedOp, _mean_over, _recompute_grads, _res, _t


class CrossEntropy(FusedOp):
    """Fused cross-entropy from logits (logsumexp in the forward, softmax − onehot in the backward)."""

    saves = (0,)
    # the residuals keep the logits by reference (no copy of the largest activation), but PyTorch's unfused
    # loss keeps none of them (log_softmax saves its output): a later in-place write into the logits copies them
    copy_on_write = (0,)

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
    (logits,) = cast_for("cross_entropy", logits)
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
    return _mean_over(nll.sum(), xp.asarray(valid.sum(), dtype=x.dtype))
