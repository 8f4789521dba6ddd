"""conch.nn.init: in-place weight initialisers drawing from conch's RNG (``conch.manual_seed``), as torch.nn.init.

Every function fills its tensor in place under ``no_grad`` and returns it. Fans follow PyTorch:
for a weight of shape (out, in, *k), fan_in = in·∏k and fan_out = out·∏k.

Example::

    w = conch.nn.Parameter(conch.empty(64, 32))
    conch.nn.init.kaiming_uniform_(w, a=math.sqrt(5))   # PyTorch's default for Linear
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from .. import _dtype as D
from .._backend import xp_of
from ..autograd.grad_mode import no_grad
from ..creation import eye, rand, randn
from ..tensor import Tensor

_LINEAR = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d")


def calculate_gain(nonlinearity, param=None):
    """The recommended gain for ``nonlinearity``: 1 (linear, conv, sigmoid), 5/3 (tanh), √2 (relu),
    √(2/(1 + slope²)) (leaky_relu, slope default 0.01), 3/4 (selu)."""
    if nonlinearity in _LINEAR or nonlinearity == "sigmoid":
        return 1
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, (int, float)) and not isinstance(param, bool):
            slope = param
        else:
            raise ValueError(f"negative_slope {param} not a valid number")
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"Unsupported nonlinearity {nonlinearity}")


def _calculate_fan_in_and_fan_out(tensor):
    if tensor.ndim < 2:
        raise ValueError(
            "Fan in and fan out can not be computed for tensor with fewer than 2 dimensions "
            f"(shape {tuple(tensor.shape)})"
        )
    receptive = int(np.prod(tensor.shape[2:], dtype=np.int64)) if tensor.ndim > 2 else 1
    return tensor.shape[1] * receptive, tensor.shape[0] * receptive


def _calculate_correct_fan(tensor, mode):
    mode = mode.lower()
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"Mode {mode} not supported, please use one of fan_in, fan_out")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return fan_in if mode == "fan_in" else fan_out


def _fill(tensor, arr_fn):
    """Write ``arr_fn(shape, device)`` (a conch Tensor) into ``tensor`` in place."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"expected a conch.Tensor, got {type(tensor).__name__}")
    with no_grad():
        if tensor.numel():
            tensor.copy_(arr_fn())
    return tensor


def _rng_dtype(tensor):
    return D.float64 if tensor.dtype == D.float64 else D.float32


def uniform_(tensor, a=0.0, b=1.0, generator=None):
    """Fill with U(a, b)."""
    return _fill(
        tensor,
        lambda: rand(*tensor.shape, dtype=_rng_dtype(tensor), device=tensor.device, generator=generator) * (b - a) + a,
    )


def normal_(tensor, mean=0.0, std=1.0, generator=None):
    """Fill with N(mean, std²)."""
    return _fill(
        tensor,
        lambda: randn(*tensor.shape, dtype=_rng_dtype(tensor), device=tensor.device, generator=generator) * std + mean,
    )


def trunc_normal_(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0, generator=None):
    """Fill with N(mean, std²) truncated to [a, b] (absolute bounds), by inverting the normal CDF:
    u ~ U(Φ(α), Φ(β)), x = mean + std·√2·erfinv(2u - 1)."""
    if mean < a - 2 * std or mean > b + 2 * std:
        warnings.warn(
            "mean is more than 2 std from [a, b] in nn.init.trunc_normal_; the distribution of values may "
            "be incorrect.",
            stacklevel=2,
        )

    def cdf(x):
        return (1.0 + math.erf(x / math.sqrt(2.0))) / 2.0

    lo, hi = cdf((a - mean) / std), cdf((b - mean) / std)

    def draw():
        u = rand(*tensor.shape, dtype=_rng_dtype(tensor), device=tensor.device, generator=generator)
        arr = 2 * (u._data * (hi - lo) + lo) - 1
        if isinstance(arr, np.ndarray):
            from scipy.special import erfinv
        else:
            from conch.kernels._cupy import special

            erfinv = special("erfinv")
        x = erfinv(arr) * (std * math.sqrt(2.0)) + mean
        xp = xp_of(x)
        return Tensor._make(xp.clip(x, a, b).astype(u.dtype, copy=False))

    return _fill(tensor, draw)


def constant_(tensor, val):
    with no_grad():
        tensor.fill_(val)
    return tensor


def zeros_(tensor):
    return constant_(tensor, 0.0)


def ones_(tensor):
    return constant_(tensor, 1.0)


def eye_(tensor):
    """Fill a 2-D tensor with the identity (ones on the diagonal)."""
    if tensor.ndim != 2:
        raise ValueError(f"Only tensors with 2 dimensions are supported, got shape {tuple(tensor.shape)}")

    return _fill(tensor, lambda: eye(*tensor.shape, dtype=tensor.dtype, device=tensor.device))


def dirac_(tensor, groups=1):
    """Fill a {3,4,5}-D conv weight so that the convolution is the identity (per group)."""
    if tensor.ndim not in (3, 4, 5):
        raise ValueError("Only tensors with 3, 4, or 5 dimensions are supported")
    out_per = tensor.shape[0] // groups
    mn = min(out_per, tensor.shape[1])
    arr = np.zeros(tensor.shape, dtype=np.float64)
    centre = tuple(s // 2 for s in tensor.shape[2:])
    for g in range(groups):
        for d in range(mn):
            arr[(g * out_per + d, d) + centre] = 1
    return _fill(tensor, lambda: Tensor._make(arr))


def xavier_uniform_(tensor, gain=1.0, generator=None):
    """U(-a, a) with a = gain·√(6 / (fan_in + fan_out)) (Glorot & Bengio, 2010)."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    a = gain * math.sqrt(6.0 / float(fan_in + fan_out))
    return uniform_(tensor, -a, a, generator)


def xavier_normal_(tensor, gain=1.0, generator=None):
    """N(0, std²) with std = gain·√(2 / (fan_in + fan_out))."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return normal_(tensor, 0.0, gain * math.sqrt(2.0 / float(fan_in + fan_out)), generator)


def kaiming_uniform_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """U(-b, b) with b = gain·√(3 / fan), gain = calculate_gain(nonlinearity, a) (He et al., 2015)."""
    if 0 in tensor.shape:
        warnings.warn("Initializing zero-element tensors is a no-op", stacklevel=2)
        return tensor
    fan = _calculate_correct_fan(tensor, mode)
    bound = math.sqrt(3.0) * calculate_gain(nonlinearity, a) / math.sqrt(fan)
    return uniform_(tensor, -bound, bound, generator)


def kaiming_normal_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """N(0, std²) with std = gain / √fan."""
    if 0 in tensor.shape:
        warnings.warn("Initializing zero-element tensors is a no-op", stacklevel=2)
        return tensor
    fan = _calculate_correct_fan(tensor, mode)
    return normal_(tensor, 0.0, calculate_gain(nonlinearity, a) / math.sqrt(fan), generator)


def orthogonal_(tensor, gain=1.0, generator=None):
    """Fill with a (semi-)orthogonal matrix (QR of a Gaussian matrix, signs fixed by diag(R)), times gain."""
    if tensor.ndim < 2:
        raise ValueError("Only tensors with 2 or more dimensions are supported")

    rows = tensor.shape[0]
    cols = tensor.numel() // rows

    def draw():
        flat = randn(rows, cols, dtype=_rng_dtype(tensor), generator=generator)._data.astype(np.float64)
        if rows < cols:
            flat = flat.T
        q, r = np.linalg.qr(flat)
        q = q * np.sign(np.diag(r))
        if rows < cols:
            q = q.T
        return Tensor._make((q * gain).reshape(tensor.shape))

    return _fill(tensor, draw)


# PyTorch's deprecated un-suffixed aliases
uniform, normal, constant = uniform_, normal_, constant_
xavier_uniform, xavier_normal, kaiming_uniform, kaiming_normal = (
    xavier_uniform_,
    xavier_normal_,
    kaiming_uniform_,
    kaiming_normal_,
)
