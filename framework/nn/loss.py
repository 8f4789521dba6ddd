"""Loss modules: CrossEntropyLoss, NLLLoss, MSELoss, L1Loss, BCEWithLogitsLoss, BCELoss, HuberLoss, SmoothL1Loss,
KLDivLoss, LinearCrossEntropyLoss. Each wraps the function of the same meaning in conch.nn.functional."""

from __future__ import annotations

from . import functional as F
from .module import Module


class _Loss(Module):
    def __init__(self, size_average=None, reduce=None, reduction="mean"):
        super().__init__()
        self.reduction = F._legacy_reduction(size_average, reduce, reduction)
        if self.reduction not in F._REDUCTIONS + ("batchmean",):
            raise ValueError(f"{reduction} is not a valid value for reduction")


class _WeightedLoss(_Loss):
    def __init__(self, weight=None, size_average=None, reduce=None, reduction="mean"):
        super().__init__(size_average, reduce, reduction)
        self.register_buffer("weight", weight)


class CrossEntropyLoss(_WeightedLoss):
    """Cross-entropy of logits (N, C) / (N, C, d1, ...) against class indices or class probabilities.

    ``weight`` (C,) rescales classes; ``ignore_index`` targets count zero and leave the mean;
    ``label_smoothing`` ε mixes the target with the uniform distribution. See
    :func:`conch.nn.functional.cross_entropy` for the formula.

    Example::

        loss = conch.nn.CrossEntropyLoss(label_smoothing=0.1)(logits, target)
    """

    def __init__(
        self, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean", label_smoothing=0.0
    ):
        super().__init__(weight, size_average, reduce, reduction)
        self.ignore_index, self.label_smoothing = ignore_index, label_smoothing

    def forward(self, input, target):
        return F.cross_entropy(
            input,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
        )


class LinearCrossEntropyLoss(_Loss):
    """Cross-entropy of ``linear(x, weight, bias)`` against class indices, without the logits (no PyTorch twin).

    Called as ``loss_fn(x, weight, target, bias=None)`` with x (..., D), weight (V, D) (an ``nn.Linear``'s or a
    tied embedding's), target (...) integers; see :func:`conch.nn.functional.linear_cross_entropy` for the
    formula and the chunking (``chunk_size`` rows at a time; None: from a memory budget).

    Example::

        loss_fn = conch.nn.LinearCrossEntropyLoss(ignore_index=-1, label_smoothing=0.1)
        loss = loss_fn(hidden, model.lm_head.weight, targets, model.lm_head.bias)
    """

    def __init__(self, ignore_index=-100, label_smoothing=0.0, reduction="mean", chunk_size=None):
        super().__init__(reduction=reduction)
        if self.reduction == "batchmean":
            raise ValueError("batchmean is not a valid value for reduction; expected 'mean', 'sum' or 'none'")
        self.ignore_index, self.label_smoothing, self.chunk_size = ignore_index, label_smoothing, chunk_size

    def forward(self, input, weight, target, bias=None):
        return F.linear_cross_entropy(
            input, weight, target, bias, ignore_index=self.ignore_index, label_smoothing=self.label_smoothing,
            reduction=self.reduction, chunk_size=self.chunk_size,
        )  # fmt: skip

    def extra_repr(self):
        return f"ignore_index={self.ignore_index}, label_smoothing={self.label_smoothing}, reduction={self.reduction}"


class NLLLoss(_WeightedLoss):
    """Negative log-likelihood of log-probabilities (N, C, ...) at integer targets (N, ...)."""

    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean"):
        super().__init__(weight, size_average, reduce, reduction)
        self.ignore_index = ignore_index

    def forward(self, input, target):
        return F.nll_loss(input, target, weight=self.weight, ignore_index=self.ignore_index, reduction=self.reduction)


class MSELoss(_Loss):
    """(input - target)²."""

    def forward(self, input, target):
        return F.mse_loss(input, target, reduction=self.reduction)


class L1Loss(_Loss):
    """|input - target|."""

    def forward(self, input, target):
        return F.l1_loss(input, target, reduction=self.reduction)


class HuberLoss(_Loss):
    """0.5·d² for |d| < delta, delta·(|d| - delta/2) otherwise."""

    def __init__(self, reduction="mean", delta=1.0):
        super().__init__(reduction=reduction)
        self.delta = delta

    def forward(self, input, target):
        return F.huber_loss(input, target, reduction=self.reduction, delta=self.delta)


class SmoothL1Loss(_Loss):
    """0.5·d²/beta for |d| < beta, |d| - beta/2 otherwise."""

    def __init__(self, size_average=None, reduce=None, reduction="mean", beta=1.0):
        super().__init__(size_average, reduce, reduction)
        self.beta = beta

    def forward(self, input, target):
        return F.smooth_l1_loss(input, target, reduction=self.reduction, beta=self.beta)


class BCEWithLogitsLoss(_Loss):
    """Sigmoid + binary cross-entropy in one numerically stable expression; ``pos_weight`` weighs positives."""

    def __init__(self, weight=None, size_average=None, reduce=None, reduction="mean", pos_weight=None):
        super().__init__(size_average, reduce, reduction)
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, input, target):
        return F.binary_cross_entropy_with_logits(
            input, target, self.weight, reduction=self.reduction, pos_weight=self.pos_weight
        )


class BCELoss(_WeightedLoss):
    """Binary cross-entropy of probabilities (logs clamped at -100)."""

    def forward(self, input, target):
        return F.binary_cross_entropy(input, target, weight=self.weight, reduction=self.reduction)


class KLDivLoss(_Loss):
    """target·(log target - input) with input given as log-probabilities."""

    def __init__(self, size_average=None, reduce=None, reduction="mean", log_target=False):
        super().__init__(size_average, reduce, reduction)
        self.log_target = log_target

    def forward(self, input, target):
        return F.kl_div(input, target, reduction=self.reduction, log_target=self.log_target)
