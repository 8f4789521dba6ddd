"""Conv1d/2d/3d and ConvTranspose2d/3d (im2col + the matmul kernel), max/average pooling and unpooling, Upsample."""

from __future__ import annotations

import math

import numpy as np

from .. import ops
from ..amp.autocast_mode import _state as _autocast
from ..creation import empty
from ..tensor import Tensor
from . import functional as F
from . import init
from .module import Module
from .parameter import Parameter


class _ConvNd(Module):
    """Shared by Conv1d and Conv2d: weight (C_out, C_in/groups, *kernel) ~ kaiming_uniform(a=√5), bias (C_out,)
    ~ U(-1/√fan_in, 1/√fan_in) with fan_in = C_in/groups·∏kernel; non-"zeros" ``padding_mode`` pads with F.pad
    first, as PyTorch."""

    _N = 2

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
                 padding_mode="zeros", device=None, dtype=None):  # fmt: skip
        super().__init__()
        if groups < 1:
            raise ValueError(f"groups must be a positive integer, got {groups}")
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if v % groups:
                raise ValueError(f"{name} must be divisible by groups ({name}={v}, groups={groups})")
        if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
            raise ValueError(
                f"padding_mode must be one of 'zeros', 'reflect', 'replicate' or 'circular', got {padding_mode!r}"
            )
        if isinstance(padding, str) and padding not in ("same", "valid"):
            raise ValueError(f"Invalid padding string {padding!r}, should be one of {{'valid', 'same'}}")
        n = self._N
        if padding == "same" and any(st != 1 for st in F._ntuple(stride, n, "stride")):
            raise ValueError("padding='same' is not supported for strided convolutions")
        self.in_channels, self.out_channels, self.groups = int(in_channels), int(out_channels), int(groups)
        self.kernel_size = F._ntuple(kernel_size, n, "kernel_size")
        self.stride = F._ntuple(stride, n, "stride")
        self.padding = padding if isinstance(padding, str) else F._ntuple(padding, n, "padding")
        self.dilation = F._ntuple(dilation, n, "dilation")
        self.padding_mode = padding_mode
        kw = {"device": device, "dtype": dtype}
        self.weight = Parameter(empty(out_channels, in_channels // groups, *self.kernel_size, **kw))
        if bias:
            self.bias = Parameter(empty(out_channels, **kw))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
            if fan_in:
                bound = 1 / math.sqrt(fan_in)
                init.uniform_(self.bias, -bound, bound)

    def _conv(self, x, padding):
        raise NotImplementedError

    def _key(self, input):
        """What F.conv2d/conv3d's checks and geometry depend on, for a batched NumPy input without autocast (else
        None): the forward then goes straight to ops.ConvNd, as F does on the CPU, without ~13 us of checks a
        call (a tenth of the 8x8 CNN's second convolution)."""
        if type(self)._conv not in _OWN_CONV or _autocast[0]:  # conv1d has a geometry of its own, a subclass may
            return None  # convolve otherwise, autocast casts first
        w, b = self.weight, self.bias
        if type(input._data) is not np.ndarray or type(w._data) is not np.ndarray:
            return None
        if input.ndim != self._N + 2 or (b is not None and type(b._data) is not np.ndarray):
            return None
        return (input.shape, input.dtype, w.shape, w.dtype, None if b is None else b.dtype, self.stride,
                self.padding, self.dilation, self.groups)  # fmt: skip

    def _plan(self, input):
        plans = self.__dict__.get("_plans")
        if not plans or not isinstance(input, Tensor):
            return None
        key = self._key(input)
        return None if key is None else plans.get(key)

    def _remember(self, input):
        """After F's checks passed for ``input``: its geometry (k, stride, dilation, pads, out), F's own."""
        key = self._key(input)
        if key is None:
            return
        ks, s, d, size = tuple(self.weight.shape[2:]), self.stride, self.dilation, input.shape[2:]
        pads = F._conv_padding(self.padding, ks, d, s)
        out = tuple((size[i] + pads[2 * i] + pads[2 * i + 1] - d[i] * (ks[i] - 1) - 1) // s[i] + 1
                    for i in range(self._N))  # fmt: skip
        plans = self.__dict__.setdefault("_plans", {})
        if len(plans) >= 16:  # a few input shapes at most in practice; never grow without bound
            plans.clear()
        plans[key] = (ks, s, d, pads, out)

    def forward(self, input):
        if self.padding_mode == "zeros":
            geom = self._plan(input)
            if geom is not None:  # a CPU call seen before: straight to the op, the checks already passed
                b = self.bias
                return ops.ConvNd.apply(input, self.weight, *(() if b is None else (b,)), geom=geom, groups=self.groups)
            y = self._conv(input, self.padding)
            self._remember(input)
            return y
        if self.padding == "same":  # total dilation·(k-1) per dim, the extra one on the right/bottom
            pairs = [(t // 2, t - t // 2) for t in (d * (k - 1) for d, k in zip(self.dilation, self.kernel_size))]
        elif self.padding == "valid":
            pairs = [(0, 0)] * self._N
        else:
            pairs = [(p, p) for p in self.padding]
        widths = tuple(w for pair in reversed(pairs) for w in pair)  # F.pad starts from the last dim
        return self._conv(F.pad(input, widths, mode=self.padding_mode), 0)


class Conv2d(_ConvNd):
    """2-D cross-correlation over (N, C_in, H, W) -> (N, C_out, OH, OW), as torch.nn.Conv2d.

    weight (C_out, C_in/groups, kh, kw) ~ kaiming_uniform(a=√5); bias (C_out,) ~ U(-1/√fan_in, 1/√fan_in)
    with fan_in = C_in/groups·kh·kw. ``padding`` is an int, a pair, "valid" or "same";
    OH = ⌊(H + 2·ph - dh·(kh-1) - 1)/sh⌋ + 1.

    Example::

        conv = conch.nn.Conv2d(3, 8, 3, padding=1)
        y = conv(conch.randn(2, 3, 16, 16))     # (2, 8, 16, 16)
    """

    _N = 2

    def _conv(self, x, padding):
        return F.conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0,) * self._N:
            s += f", padding={self.padding}"  # a string too, unquoted, as PyTorch prints it
        if self.dilation != (1,) * self._N:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s


class Conv1d(_ConvNd):
    """1-D cross-correlation over (N, C_in, L) -> (N, C_out, OL), as torch.nn.Conv1d (weight (C_out, C_in/groups,
    k), same init); it runs as a conv2d over a height-1 image.

    Example::

        conv = conch.nn.Conv1d(4, 8, 3, padding="same")
        y = conv(conch.randn(2, 4, 50))       # (2, 8, 50)
    """

    _N = 1

    def _conv(self, x, padding):
        return F.conv1d(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)

    extra_repr = Conv2d.extra_repr


class Conv3d(_ConvNd):
    """3-D cross-correlation over (N, C_in, D, H, W) -> (N, C_out, OD, OH, OW), as torch.nn.Conv3d.

    weight (C_out, C_in/groups, kd, kh, kw) ~ kaiming_uniform(a=√5); bias (C_out,) ~ U(-1/√fan_in, 1/√fan_in)
    with fan_in = C_in/groups·kd·kh·kw; OD = ⌊(D + 2·pd - dd·(kd-1) - 1)/sd⌋ + 1 (likewise H, W).

    Example::

        conv = conch.nn.Conv3d(2, 4, 3, padding=1)
        y = conv(conch.randn(1, 2, 5, 6, 7))     # (1, 4, 5, 6, 7)
    """

    _N = 3

    def _conv(self, x, padding):
        return F.conv3d(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)

    extra_repr = Conv2d.extra_repr


_OWN_CONV = (Conv2d._conv, Conv3d._conv)  # the convolutions _ConvNd._plan may run without F's checks


class MaxPool2d(Module):
    """Max over kernel_size windows (stride defaults to kernel_size; padding counts as -inf)."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, (stride if stride is not None else kernel_size)
        self.padding, self.dilation = padding, dilation
        self.return_indices, self.ceil_mode = return_indices, ceil_mode

    def forward(self, input):
        return F.max_pool2d(
            input, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode, self.return_indices
        )

    def extra_repr(self):
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, ceil_mode={self.ceil_mode}"
        )


class AvgPool2d(Module):
    """Mean over kernel_size windows (``count_include_pad`` counts zero padding in the divisor)."""

    def __init__(
        self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None
    ):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, (stride if stride is not None else kernel_size)
        self.padding, self.ceil_mode = padding, ceil_mode
        self.count_include_pad, self.divisor_override = count_include_pad, divisor_override

    def forward(self, input):
        return F.avg_pool2d(
            input,
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
        )

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    """Average into a fixed (OH, OW) output whatever the input size (e.g. 1 for global average pooling)."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, input):
        return F.adaptive_avg_pool2d(input, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class Upsample(Module):
    """Resize (N, C, *spatial) by ``size`` or ``scale_factor``: F.interpolate as a module (torch.nn.Upsample)."""

    def __init__(self, size=None, scale_factor=None, mode="nearest", align_corners=None, recompute_scale_factor=None):
        super().__init__()
        self.size, self.scale_factor, self.mode, self.align_corners = size, scale_factor, mode, align_corners
        self.recompute_scale_factor = recompute_scale_factor

    def forward(self, input):
        return F.interpolate(input, self.size, self.scale_factor, self.mode, self.align_corners,
                             recompute_scale_factor=self.recompute_scale_factor)  # fmt: skip

    def extra_repr(self):
        info = f"size={self.size}" if self.size is not None else f"scale_factor={float(self.scale_factor)}"
        return f"{info}, mode='{self.mode}'"


class ConvTranspose2d(_ConvNd):
    """The adjoint of Conv2d (upsampling by a learned kernel), as torch.nn.ConvTranspose2d.

    weight (C_in, C_out/groups, kh, kw) ~ kaiming_uniform(a=√5) with PyTorch's fan (dim 1), bias (C_out,);
    OH = (H-1)·sh - 2·ph + dh·(kh-1) + output_padding + 1. ``forward(input, output_size=None)``: a target
    size picks the output_padding, as PyTorch.

    Example::

        up = conch.nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
        y = up(conch.randn(2, 8, 16, 16))       # (2, 4, 32, 32)
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                 bias=True, dilation=1, padding_mode="zeros", device=None, dtype=None):  # fmt: skip
        if padding_mode != "zeros" or isinstance(padding, str):
            raise ValueError(
                f"{type(self).__name__} supports only padding_mode='zeros' and integer padding, got "
                f"padding_mode={padding_mode!r}, padding={padding!r}"
            )
        # the base builds weight (first, second/groups, *k): pass the channels swapped for (C_in, C_out/groups)
        super().__init__(out_channels, in_channels, kernel_size, stride, padding, dilation, groups, bias,
                         device=device, dtype=dtype)  # fmt: skip
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        if bias:
            self.bias = Parameter(empty(out_channels, device=device, dtype=dtype))
            self.reset_parameters()
        self.output_padding = F._ntuple(output_padding, self._N, "output_padding")

    _fn = staticmethod(F.conv_transpose2d)

    def forward(self, input, output_size=None):
        op, n = self.output_padding, self._N
        if output_size is not None:
            want = tuple(int(v) for v in tuple(output_size)[-n:])
            base = tuple(
                (i - 1) * s - 2 * p + d * (k - 1) + 1
                for i, s, p, d, k in zip(input.shape[-n:], self.stride, self.padding, self.dilation, self.kernel_size)
            )
            op = tuple(w - b for w, b in zip(want, base))
            if any(o < 0 or o >= max(s, d) for o, s, d in zip(op, self.stride, self.dilation)):
                raise ValueError(f"requested an output size of {want}, but valid sizes range from {base} (inclusive)")
        return self._fn(input, self.weight, self.bias, self.stride, self.padding, op, self.groups,
                        self.dilation)  # fmt: skip

    def extra_repr(self):
        s = Conv2d.extra_repr(self)
        if self.output_padding != (0,) * self._N:
            head, sep, tail = s.partition(", dilation=") if ", dilation=" in s else (s, "", "")
            s = head + f", output_padding={self.output_padding}" + sep + tail
        return s


class ConvTranspose3d(ConvTranspose2d):
    """The adjoint of Conv3d, as torch.nn.ConvTranspose3d: weight (C_in, C_out/groups, kd, kh, kw), bias (C_out,),
    init as ConvTranspose2d; OD = (D-1)·sd - 2·pd + dd·(kd-1) + output_padding + 1 (likewise H, W).

    Example::

        up = conch.nn.ConvTranspose3d(4, 2, 2, stride=2)
        y = up(conch.randn(1, 4, 3, 3, 3))       # (1, 2, 6, 6, 6)
    """

    _N = 3
    _fn = staticmethod(F.conv_transpose3d)


class MaxPool3d(MaxPool2d):
    """Max over kernel_size windows of (N, C, D, H, W) (stride defaults to kernel_size; padding counts as -inf)."""

    def forward(self, input):
        return F.max_pool3d(
            input, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode, self.return_indices
        )


class AvgPool3d(AvgPool2d):
    """Mean over kernel_size windows of (N, C, D, H, W), with AvgPool2d's divisor rules."""

    def forward(self, input):
        return F.avg_pool3d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad, self.divisor_override)  # fmt: skip


class MaxUnpool2d(Module):
    """Partial inverse of MaxPool2d: ``forward(input, indices, output_size=None)`` puts each value back at its
    max index in an otherwise zero (N, C, (H-1)·sh - 2ph + kh, (W-1)·sw - 2pw + kw) output."""

    _N = 2

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        n = self._N
        self.kernel_size = F._ntuple(kernel_size, n, "kernel_size")
        self.stride = F._ntuple(stride if stride is not None else kernel_size, n, "stride")
        self.padding = F._ntuple(padding, n, "padding")

    def forward(self, input, indices, output_size=None):
        fn = {1: F.max_unpool1d, 2: F.max_unpool2d, 3: F.max_unpool3d}[self._N]
        return fn(input, indices, self.kernel_size, self.stride, self.padding, output_size)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxUnpool1d(MaxUnpool2d):
    """Partial inverse of MaxPool1d: (N, C, L) -> (N, C, (L-1)·s - 2p + k) (or ``output_size``)."""

    _N = 1


class MaxUnpool3d(MaxUnpool2d):
    """Partial inverse of MaxPool3d: (N, C, D, H, W) -> (N, C, (D-1)·sd - 2pd + kd, ...) (or ``output_size``)."""

    _N = 3


class MaxPool1d(MaxPool2d):
    """Max over windows of (N, C, L) (stride defaults to kernel_size; padding counts as -inf)."""

    def forward(self, input):
        return F.max_pool1d(
            input, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode, self.return_indices
        )


class AvgPool1d(Module):
    """Mean over windows of (N, C, L) (``count_include_pad`` counts zero padding in the divisor)."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
        super().__init__()
        self.kernel_size = F._ntuple(kernel_size, 1, "kernel_size")
        self.stride = F._ntuple(stride if stride is not None else kernel_size, 1, "stride")
        self.padding = F._ntuple(padding, 1, "padding")
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad

    def forward(self, input):
        return F.avg_pool1d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool1d(AdaptiveAvgPool2d):
    """Average (N, C, L) into a fixed output length."""

    def forward(self, input):
        return F.adaptive_avg_pool1d(input, self.output_size)


class Unfold(Module):
    """Sliding blocks of (N, C, H, W) as columns (N, C·kh·kw, L): F.unfold as a module."""

    def __init__(self, kernel_size, dilation=1, padding=0, stride=1):
        super().__init__()
        self.kernel_size, self.dilation, self.padding, self.stride = kernel_size, dilation, padding, stride

    def forward(self, input):
        return F.unfold(input, self.kernel_size, self.dilation, self.padding, self.stride)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, dilation={self.dilation}, padding={self.padding}, stride={self.stride}"


class Fold(Unfold):
    """Columns (N, C·kh·kw, L) summed back into (N, C, H, W): F.fold as a module."""

    def __init__(self, output_size, kernel_size, dilation=1, padding=0, stride=1):
        super().__init__(kernel_size, dilation, padding, stride)
        self.output_size = output_size

    def forward(self, input):
        return F.fold(input, self.output_size, self.kernel_size, self.dilation, self.padding, self.stride)

    def extra_repr(self):
        return f"output_size={self.output_size}, " + super().extra_repr()
