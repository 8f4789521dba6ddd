"""Normalisation layers: LayerNorm, RMSNorm, GroupNorm, BatchNorm1d/2d and InstanceNorm1d/2d."""

from __future__ import annotations

import numbers

from .. import _dtype as D
from ..creation import ones, tensor, zeros
from . import functional as F
from . import init
from .module import Module
from .parameter import Parameter


def _reset_affine(m):
    """weight to ones and bias to zeros, those that exist."""
    if m.weight is not None:
        init.ones_(m.weight)
    if m.bias is not None:
        init.zeros_(m.bias)


def _shape(normalized_shape):
    if isinstance(normalized_shape, numbers.Integral):
        return (int(normalized_shape),)
    return tuple(int(s) for s in normalized_shape)


class LayerNorm(Module):
    """y = (x - mean) / √(var + eps) · weight + bias over the trailing ``normalized_shape`` dims (biased var).

    weight starts at ones and bias at zeros (``elementwise_affine=False`` drops both, ``bias=False``
    drops the bias). Runs as one fused kernel.
    """

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, device=None, dtype=None):
        super().__init__()
        self.normalized_shape, self.eps, self.elementwise_affine = _shape(normalized_shape), eps, elementwise_affine
        kw = {"device": device, "dtype": dtype}
        if elementwise_affine:
            self.weight = Parameter(ones(*self.normalized_shape, **kw))
            if bias:
                self.bias = Parameter(zeros(*self.normalized_shape, **kw))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def reset_parameters(self):
        _reset_affine(self)

    def forward(self, input):
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        s = f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
        return s + (f", bias={self.bias is not None}" if self.elementwise_affine else "")


class RMSNorm(Module):
    """y = x / √(mean(x²) + eps) · weight over the trailing ``normalized_shape`` dims; weight starts at ones."""

    def __init__(self, normalized_shape, eps=1e-6, elementwise_affine=True, device=None, dtype=None):
        super().__init__()
        self.normalized_shape, self.eps, self.elementwise_affine = _shape(normalized_shape), eps, elementwise_affine
        if elementwise_affine:
            self.weight = Parameter(ones(*self.normalized_shape, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)

    def reset_parameters(self):
        if self.weight is not None:
            init.ones_(self.weight)

    def forward(self, input):
        return F.rms_norm(input, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class _BatchNorm(Module):
    """Batch normalisation over channel dim 1, as PyTorch's.

    Training: normalise with the batch's mean and biased variance and update the running statistics
    r ← (1 - momentum)·r + momentum·stat (unbiased variance; ``momentum=None`` is a cumulative
    average over ``num_batches_tracked``). Eval: normalise with the running statistics. Without
    ``track_running_stats`` the batch statistics are always used and there are no buffers.
    """

    _expected_dims: tuple = ()

    def __init__(
        self,
        num_features,
        eps=1e-5,
        momentum=0.1,
        affine=True,
        track_running_stats=True,
        device=None,
        dtype=None,
        bias=True,
    ):
        super().__init__()
        self.num_features, self.eps, self.momentum = int(num_features), eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        kw = {"device": device, "dtype": dtype}
        if affine:
            self.weight = Parameter(ones(self.num_features, **kw))
            if bias:
                self.bias = Parameter(zeros(self.num_features, **kw))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", zeros(self.num_features, **kw))
            self.register_buffer("running_var", ones(self.num_features, **kw))
            self.register_buffer("num_batches_tracked", tensor(0, dtype=D.int64, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self):
        if self.track_running_stats:
            self.running_mean._data.fill(0)
            self.running_var._data.fill(1)
            self.num_batches_tracked._data.fill(0)

    def reset_parameters(self):
        self.reset_running_stats()
        if self.affine:
            init.ones_(self.weight)
            if self.bias is not None:
                init.zeros_(self.bias)

    def _check_input_dim(self, input):
        if input.ndim not in self._expected_dims:
            want = " or ".join(f"{d}D" for d in self._expected_dims)
            raise ValueError(
                f"{type(self).__name__}: expected {want} input (got {input.ndim}D input of size {list(input.shape)})"
            )
        if input.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__}: expected input with {self.num_features} channels in dim 1, got "
                f"input of size {list(input.shape)}"
            )

    def forward(self, input):
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked._data += 1
            self.num_batches_tracked._version[0] += 1
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked.item())
        use_batch = self.training or self.running_mean is None
        track = not self.training or self.track_running_stats
        return F.batch_norm(
            input,
            self.running_mean if track else None,
            self.running_var if track else None,
            self.weight,
            self.bias,
            use_batch,
            factor,
            self.eps,
        )

    _repr_bias = False  # InstanceNorm prints bias= also without affine, as PyTorch

    def extra_repr(self):
        bias = f", bias={self.bias is not None}" if self.affine or self._repr_bias else ""
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}{bias}, "
            f"track_running_stats={self.track_running_stats}"
        )


class BatchNorm1d(_BatchNorm):
    """Batch norm over (N, C) or (N, C, L) inputs (statistics over N, or N and L)."""

    _expected_dims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch norm over (N, C, H, W) inputs (statistics over N, H and W per channel)."""

    _expected_dims = (4,)


class GroupNorm(Module):
    """Normalize (N, C, *) over groups of C/num_groups channels (and every position), then per-channel affine.

    weight (C,) starts at ones, bias (C,) at zeros (``affine=False`` drops both, ``bias=False`` the bias), as
    torch.nn.GroupNorm.

    Example::

        gn = conch.nn.GroupNorm(4, 16)
        y = gn(conch.randn(2, 16, 8, 8))      # each group of 4 channels has mean 0 and variance 1
    """

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, bias=True, device=None, dtype=None):
        super().__init__()
        if num_groups < 1 or num_channels % num_groups:
            raise ValueError(f"num_channels ({num_channels}) must be divisible by num_groups ({num_groups})")
        self.num_groups, self.num_channels, self.eps, self.affine = int(num_groups), int(num_channels), eps, affine
        kw = {"device": device, "dtype": dtype}
        self.register_parameter("weight", Parameter(ones(num_channels, **kw)) if affine else None)
        self.register_parameter("bias", Parameter(zeros(num_channels, **kw)) if affine and bias else None)

    def reset_parameters(self):
        _reset_affine(self)

    def forward(self, input):
        if input.ndim < 2 or input.shape[1] != self.num_channels:
            raise RuntimeError(
                f"GroupNorm: expected input of shape (N, {self.num_channels}, *), got {tuple(input.shape)}"
            )
        return F.group_norm(input, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self):
        head = f"{self.num_groups}, {self.num_channels}, eps={self.eps}"
        return f"{head}, affine={self.affine}, bias={self.bias is not None}"


class _InstanceNorm(_BatchNorm):
    """Normalise each (sample, channel) over its positions, as PyTorch's InstanceNorm: weight/bias only with
    ``affine=True``, running statistics only with ``track_running_stats=True`` (then updated in training with
    the per-instance means and unbiased variances averaged over the batch, and used in eval)."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=False, track_running_stats=False, device=None,
                 dtype=None, bias=True):  # fmt: skip
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias)

    def forward(self, input):
        unbatched = input.ndim == self._expected_dims[0]
        if input.ndim not in self._expected_dims:
            want = " or ".join(f"{d}D" for d in self._expected_dims)
            raise ValueError(
                f"{type(self).__name__}: expected {want} input (got {input.ndim}D input of size {list(input.shape)})"
            )
        x = input.unsqueeze(0) if unbatched else input
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__}: expected input with {self.num_features} channels, got input of size "
                f"{list(input.shape)}"
            )
        use_input = self.training or not self.track_running_stats
        factor, stats = 0.0, (None, None)
        if self.training and self.track_running_stats:
            # as PyTorch: num_batches_tracked stays 0 and momentum=None means no update (not a cumulative mean)
            factor = 0.0 if self.momentum is None else self.momentum
            stats = (self.running_mean, self.running_var)
        elif not use_input:
            stats = (self.running_mean, self.running_var)
        y = F.instance_norm(x, *stats, self.weight, self.bias, use_input, factor, self.eps)
        return y.squeeze(0) if unbatched else y

    _repr_bias = True


class InstanceNorm1d(_InstanceNorm):
    """Instance norm over (N, C, L) or unbatched (C, L)."""

    _expected_dims = (2, 3)


class InstanceNorm2d(_InstanceNorm):
    """Instance norm over (N, C, H, W) or unbatched (C, H, W)."""

    _expected_dims = (3, 4)
