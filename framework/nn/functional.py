"""conch.nn.functional: stateless layers, activations, losses and attention (PyTorch's names and semantics).

The fused ops (linear + activation, activations, softmax, cross-entropy, layer/RMS norm, dropout)
route through :mod:`conch.fused`, which runs Triton kernels on the GPU; the rest are composed from
Tensor operations or written as ``Op`` subclasses here (im2col for convolution, pooling, embedding).

Example::

    import conch.nn.functional as F
    y = F.linear(x, w, b, activation="gelu")         # one fused kernel: gelu(x @ w.T + b)
    loss = F.cross_entropy(logits, target, label_smoothing=0.1)
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from conch.kernels._act_names import ACTIVATIONS
from conch.kernels._causal import causal_keep

from .. import _dtype as D
from .. import ops
from .._backend import xp_of
from ..amp.autocast_mode import cast_for
from ..autograd.grad_mode import no_grad
from ..creation import philox_seed_offset, rand
from ..fused import activations as fused_act
from ..fused import attention as fattn
from ..fused import cross_entropy as fused_ce
from ..fused import dropout as fdrop
from ..fused import linear_cross_entropy as fused_lce
from ..fused import matmul as fmm
from ..fused import norms as fused_norms
from ..fused import softmax as fused_softmax
from ..fused._common import _mean_over
from ..kernels import _deferred
from ..ops import pooling
from ..ops.nn import _as_strided
from ..tensor import Tensor, cat, stack, where

_REDUCTIONS = ("mean", "sum", "none")


# ---------------------------------------------------------------- helpers


def _check_tensor(x, name, what="input"):
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}(): argument '{what}' must be a conch.Tensor, not {type(x).__name__}")


def _legacy_reduction(size_average, reduce, reduction):
    if size_average is None and reduce is None:
        return reduction
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    return "none" if not reduce else ("mean" if size_average else "sum")


def _check_reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction; expected 'mean', 'sum' or 'none'")


def _reduce(loss, reduction):
    _check_reduction(reduction)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _const_like(arr, like):
    """A no-grad tensor from ``arr`` on ``like``'s device with ``like``'s dtype."""
    xp = xp_of(like._data)
    return Tensor._make(xp.asarray(arr, dtype=like.dtype))


def _ntuple(v, n, name):
    """``v`` (an int, or a sequence of 1 or n ints) as an n-tuple of ints, as PyTorch's _single/_pair."""
    t = (int(v),) * n if isinstance(v, numbers.Integral) else tuple(int(i) for i in v)
    if len(t) == 1 and n > 1:
        t = t * n
    if len(t) != n:
        raise ValueError(f"{name} must be an int or a {'pair' if n == 2 else f'{n}-tuple'} of ints, got {v}")
    return t


def _pair(v, name):
    return _ntuple(v, 2, name)


def _single(v, name):
    return _ntuple(v, 1, name)[0]


# ---------------------------------------------------------------- activations


def _inplace(input, out, inplace, name):
    """``inplace=True``: write ``out`` back into ``input`` (its views see it; autograd records it) and return it."""
    return input._assign(out, name=name) if inplace else out


def relu(input, inplace=False):
    """max(x, 0)."""
    return _inplace(input, fused_act.activation(input, "relu"), inplace, "relu_")


def gelu(input, approximate="none"):
    """x·Φ(x) (``approximate="none"``) or 0.5x(1 + tanh(√(2/π)(x + 0.044715x³))) (``"tanh"``)."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate argument must be either none or tanh, got {approximate!r}")
    return fused_act.activation(input, "gelu" if approximate == "none" else "gelu_tanh")


def silu(input, inplace=False):
    """x·σ(x)."""
    return _inplace(input, fused_act.activation(input, "silu"), inplace, "silu_")


def tanh(input):
    return fused_act.activation(input, "tanh")


def sigmoid(input):
    """σ(x) = 1 / (1 + e^-x)."""
    return fused_act.activation(input, "sigmoid")


def leaky_relu(input, negative_slope=0.01, inplace=False):
    """x for x > 0, negative_slope·x otherwise."""
    out = fused_act.activation(input, "leaky_relu", negative_slope=float(negative_slope))
    return _inplace(input, out, inplace, "leaky_relu_")


def elu(input, alpha=1.0, inplace=False):
    """x for x > 0, α(eˣ - 1) otherwise."""
    return _inplace(input, fused_act.activation(input, "elu", alpha=float(alpha)), inplace, "elu_")


def logsigmoid(input):
    return ops.LogSigmoid.apply(input)


def softplus(input, beta=1.0, threshold=20.0):
    """(1/β)·log(1 + e^(βx)), linear where βx > threshold (as PyTorch)."""
    soft = -ops.LogSigmoid.apply(input * -beta) * (1.0 / beta)
    return where((input * beta)._data > threshold, input, soft)


def mish(input):
    return input * tanh(softplus(input))


def relu6(input, inplace=False):
    """min(max(x, 0), 6): hardtanh(x, 0, 6), so no gradient at 0 or 6 (as PyTorch)."""
    _check_tensor(input, "relu6")
    return _inplace(input, ops.Clamp.apply(input, lo=0.0, hi=6.0, open_=True), inplace, "relu6_")


def hardtanh(input, min_val=-1.0, max_val=1.0, inplace=False):
    """min(max(x, min_val), max_val); the gradient is 1 strictly inside, 0 at and beyond the bounds
    (PyTorch's hardtanh_backward), unlike clamp's, which passes at the bounds."""
    _check_tensor(input, "hardtanh")
    return _inplace(input, ops.Clamp.apply(input, lo=min_val, hi=max_val, open_=True), inplace, "hardtanh_")


_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def selu(input, inplace=False):
    """scale·(max(0, x) + min(0, α(eˣ - 1))) with PyTorch's α ≈ 1.6733 and scale ≈ 1.0507: scale·elu(x, α).
    d/dx = scale for x > 0, scale·α·eˣ for x <= 0 (so scale·α at 0, as PyTorch)."""
    return _inplace(input, elu(input, _SELU_ALPHA) * _SELU_SCALE, inplace, "selu_")


def celu(input, alpha=1.0, inplace=False):
    """max(0, x) + min(0, α(e^(x/α) - 1)) = α·elu(x/α, 1). d/dx = 1 for x > 0, e^(x/α) for x <= 0 (1 at 0)."""
    if alpha == 0:
        raise ValueError("ZeroDivisionError: alpha cannot be 0 for CELU")
    return _inplace(input, elu(input * (1.0 / alpha), 1.0) * float(alpha), inplace, "celu_")


def _mask(cond, like):
    """The bool array ``cond`` as a no-grad 0/1 tensor of ``like``'s dtype."""
    return Tensor._make(cond.astype(like.dtype))


def hardshrink(input, lambd=0.5):
    """x where |x| > λ, else 0. d/dx = 1 where |x| > λ, 0 elsewhere (0 at ±λ, as PyTorch)."""
    _check_tensor(input, "hardshrink")
    x = input._data
    return input * _mask((x > lambd) | (x < -lambd), input)


def softshrink(input, lambd=0.5):
    """x - λ where x > λ, x + λ where x < -λ, else 0. d/dx = 1 where |x| > λ, else 0."""
    _check_tensor(input, "softshrink")
    if lambd < 0:
        raise RuntimeError(f"lambda must be greater or equal to 0, but found to be {lambd}.")
    x = input._data
    hi, lo = x > lambd, x < -lambd
    return input * _mask(hi | lo, input) - Tensor._make((hi.astype(input.dtype) - lo.astype(input.dtype)) * lambd)


def tanhshrink(input):
    """x - tanh(x); d/dx = tanh²(x)."""
    return input - tanh(input)


def threshold(input, threshold, value, inplace=False):
    """x where x > threshold, else ``value``. d/dx = 1 where x > threshold, else 0."""
    _check_tensor(input, "threshold")
    keep = input._data > threshold
    out = input * _mask(keep, input) + Tensor._make((~keep).astype(input.dtype) * value)
    return _inplace(input, out, inplace, "threshold_")


def rrelu(input, lower=1.0 / 8, upper=1.0 / 3, training=False, inplace=False):
    """Randomised leaky ReLU: x for x >= 0, a·x otherwise. Training: a ~ U(lower, upper) per element, drawn from
    conch's generator (so ``conch.manual_seed`` repeats it); eval: the fixed slope a = (lower + upper)/2.
    d/dx = 1 for x > 0 and a for x <= 0 (the drawn a at 0, as PyTorch's noise)."""
    _check_tensor(input, "rrelu")
    if not training:
        return leaky_relu(input, (lower + upper) / 2.0, inplace)
    u = rand(*input.shape, dtype=input.dtype, device=input.device)._data
    neg = input._data <= 0
    noise = xp_of(neg).where(neg, lower + (upper - lower) * u, 1).astype(input.dtype)
    return _inplace(input, input * Tensor._make(noise), inplace, "rrelu_")


def softmin(input, dim=None, dtype=None):
    """softmax(-x) along ``dim``: exp(-x) / Σ exp(-x)."""
    return softmax(-input, dim, dtype)


def _softmax_dim(ndim):
    return 0 if ndim in (0, 1, 3) else 1


def softmax(input, dim=None, dtype=None):
    """exp(x) / Σ exp(x) along ``dim`` (computed in ``dtype`` if given)."""
    return fused_softmax.softmax(input, _softmax_dim(input.ndim) if dim is None else dim, dtype=dtype)


def log_softmax(input, dim=None, dtype=None):
    """x - log Σ exp(x) along ``dim``."""
    return fused_softmax.log_softmax(input, _softmax_dim(input.ndim) if dim is None else dim, dtype=dtype)


def normalize(input, p=2.0, dim=1, eps=1e-12):
    """x / max(‖x‖_p, eps) along ``dim``."""
    return input / input.norm(p, dim, keepdim=True).clamp(min=eps)


# ---------------------------------------------------------------- linear, dropout, embedding


def linear(input, weight, bias=None, activation=None):
    """``activation(input @ weightᵀ + bias)``: input (..., in), weight (out, in), bias (out,) -> (..., out).

    ``activation`` is None or one of "relu", "gelu", "gelu_tanh", "silu", "tanh", "sigmoid" (also
    "leaky_relu", "elu" with their default parameters); the whole expression is one fused kernel.
    """
    _check_tensor(input, "linear")
    if activation is not None and activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected None or one of {', '.join(ACTIVATIONS)}")
    return fmm.linear(input, weight, bias, activation=activation)


def dropout(input, p=0.5, training=True, inplace=False):
    """Zero each element with probability ``p`` and scale the rest by 1/(1-p) when ``training``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    return _inplace(input, fdrop.dropout(input, float(p), bool(training)), inplace and training and p > 0, "dropout_")


def embedding(input, weight, padding_idx=None, max_norm=None, norm_type=2.0, scale_grad_by_freq=False, sparse=False):
    """Rows of ``weight`` (num_embeddings, dim) picked by the integer tensor ``input`` -> (*input.shape, dim)."""
    _check_tensor(input, "embedding")
    if input.dtype.kind not in "iu":
        raise TypeError(f"embedding(): expected an integer index tensor (int32/int64), got {input.dtype}")
    if weight.ndim != 2:
        raise RuntimeError(f"embedding(): weight must be 2-D (num_embeddings, embedding_dim), got {weight.shape}")
    if input.device != weight.device:
        raise RuntimeError(f"embedding(): indices on {input.device} but weight on {weight.device}")
    num = weight.shape[0]
    idx = input._data
    if idx.size:
        # min and max stay arrays: on a GPU the check is read at the next host sync (kernels._deferred), not here
        xp = xp_of(idx)
        lo, hi = idx.min(), idx.max()
        _deferred.check(
            (lo < 0) | (hi >= num),
            lambda: xp.where(lo < 0, lo, hi),
            lambda bad: IndexError(f"index out of range in self: index {bad} for an embedding with {num} rows"),
        )
        if xp is not np:
            idx = idx % num  # until the check surfaces, a bad index must not read outside the table (one pass)
    if padding_idx is not None:
        padding_idx = int(padding_idx)
        if not -num <= padding_idx < num:
            raise ValueError(f"padding_idx must be within num_embeddings ({num}), got {padding_idx}")
        padding_idx %= num
    if max_norm is not None:
        with no_grad():  # renormalise the looked-up rows in place, as PyTorch does
            xp = xp_of(weight._data)
            rows = xp.unique(idx)
            w = weight._data
            norms = xp.linalg.norm(w[rows].astype(np.float64), ord=norm_type, axis=1)
            scale = xp.where(norms > max_norm, max_norm / (norms + 1e-7), 1.0)
            w[rows] = (w[rows] * scale[:, None]).astype(w.dtype)
            weight._version[0] += 1
    return ops.Embedding.apply(weight, idx=idx, padding_idx=padding_idx)


def one_hot(tensor, num_classes=-1):
    """(…,) integer tensor -> (…, num_classes) int64 with a 1 at each index."""
    if tensor.dtype.kind not in "iu":
        raise TypeError(f"one_hot is only applicable to index tensors, got {tensor.dtype}")
    a = tensor._data
    xp = xp_of(a)
    if num_classes < 0:
        num_classes = int(a.max()) + 1 if a.size else 0  # the shape depends on it: a sync, as in PyTorch
    if a.size:  # on a GPU read at the next host sync (kernels._deferred), as PyTorch's device assert
        lo, hi = a.min(), a.max()
        _deferred.check(
            (lo < 0) | (hi >= num_classes),
            lambda: xp.where(lo < 0, lo, hi),
            lambda v: RuntimeError(f"one_hot: class values must be in [0, {num_classes}), got {v}"),
        )
    return Tensor._make((a[..., None] == xp.arange(num_classes)).astype(np.int64))


# ---------------------------------------------------------------- padding


def _pad_source(mode, n, left, right):
    """Source position of every output position along a dim of size n padded by (left, right).

    A negative width crops: the positions are those of the padded-by-the-positive-widths dim with the cropped
    ends left out, which is PyTorch's rule for reflect and replicate (the mirror/edge stays the input's own);
    circular crops first and then wraps the cropped dim (PyTorch), so its source is computed on the crop.
    """
    if mode == "circular":
        lo, m = max(-left, 0), n - max(-left, 0) - max(-right, 0)
        return lo + np.arange(-max(left, 0), m + max(right, 0)) % m
    i = np.arange(-left, n + right)
    if mode == "replicate":
        return np.clip(i, 0, n - 1)
    period = 2 * (n - 1)  # reflect: mirror about the edges without repeating them
    i = np.abs(i) % period if period else np.zeros_like(i)
    return np.where(i > n - 1, period - i, i)


PAD_MODES = ("constant", "reflect", "replicate", "circular")


def _check_pad(mode, input, d, lo, hi):
    """PyTorch's errors for widths (lo, hi) of dim ``d``: a reflection must stay inside the dim, a circular wrap
    must not go round the (cropped) dim more than once, and no output may be empty (constant: none negative)."""
    n, shape = input.shape[d], list(input.shape)
    if mode == "constant":
        if n + min(lo, 0) + min(hi, 0) < 0:
            raise RuntimeError(f"pad: widths {(lo, hi)} crop dim {d} of size {n} below zero (input {shape})")
        return
    if mode == "reflect" and (lo >= n or hi >= n):
        raise RuntimeError(
            f"Argument #4: Padding size should be less than the corresponding input dimension, but got: padding "
            f"{(lo, hi)} at dimension {d} of input {shape}"
        )
    m = n + min(lo, 0) + min(hi, 0)  # the cropped size, which circular wraps around
    if mode == "circular" and (m <= 0 or lo > m or hi > m):
        raise RuntimeError(f"Padding value causes wrapping around more than once: padding {(lo, hi)} of dim {d} "
                           f"(size {n}, {max(m, 0)} after cropping) of input {shape}")  # fmt: skip
    if n + lo + hi <= 0:
        raise RuntimeError(f"input (size {n} at dim {d}) is too small. Calculated output size: {n + lo + hi} "
                           f"(padding {(lo, hi)}, input {shape})")  # fmt: skip


def pad(input, pad, mode="constant", value=0.0):
    """Pad the last ``len(pad)//2`` dims: ``pad = (left, right, top, bottom, ...)`` starting from the last dim.

    ``mode``: "constant" (``value``), "reflect" (mirror without repeating the edge, widths < the dim's size),
    "replicate" (repeat the edge) or "circular" (wrap around, widths <= size). A negative width crops, in every
    mode, as PyTorch: reflect and replicate mirror/repeat the uncropped input's edge, circular wraps the crop.
    Example: ``F.pad(x, (1, 1), mode="reflect")`` on [1, 2, 3] gives [2, 1, 2, 3, 2];
    ``F.pad(x, (-1, 2), mode="replicate")`` gives [2, 3, 3, 3].
    """
    if mode not in PAD_MODES:
        raise ValueError(f"pad: mode must be one of {', '.join(PAD_MODES)}, got {mode!r}")
    if len(pad) % 2:
        raise RuntimeError(f"Padding length must be divisible by 2, got {len(pad)} (input {list(input.shape)})")
    if len(pad) // 2 > input.ndim:
        raise RuntimeError(
            f"Padding length should be less than or equal to two times the input dimension but got padding length "
            f"{len(pad)} and input of dimension {input.ndim}"
        )
    pairs = [(input.ndim - 1 - i, int(pad[2 * i]), int(pad[2 * i + 1])) for i in range(len(pad) // 2)]
    for d, lo, hi in pairs:
        _check_pad(mode, input, d, lo, hi)
    if mode == "constant":
        crop, widths = [slice(None)] * input.ndim, [(0, 0)] * input.ndim
        for d, lo, hi in pairs:
            crop[d] = slice(max(-lo, 0), input.shape[d] - max(-hi, 0))  # negative widths crop first
            widths[d] = (max(lo, 0), max(hi, 0))
        if any(lo < 0 or hi < 0 for _, lo, hi in pairs):
            input = input[tuple(crop)]
        return ops.Pad.apply(input, widths=tuple(widths), value=value)
    for d, lo, hi in pairs:
        if lo or hi:
            input = ops.PadTake.apply(input, idx=_pad_source(mode, input.shape[d], lo, hi), axis=d)
    return input


# ---------------------------------------------------------------- convolution (im2col + matmul)


def _conv_padding(padding, k, d, s):
    """(before, after) widths of each spatial dim, flattened, for an int, a tuple, "valid" or "same" (the extra
    pixel at the end, as PyTorch); for 2-D that is (top, bottom, left, right)."""
    nd = len(k)
    if isinstance(padding, str):
        if padding == "valid":
            return (0,) * (2 * nd)
        if padding == "same":
            if any(si != 1 for si in s):
                raise ValueError("padding='same' is not supported for strided convolutions")
            tot = [d[i] * (k[i] - 1) for i in range(nd)]
            return tuple(w for t in tot for w in (t // 2, t - t // 2))
        raise ValueError(f"Invalid padding string {padding!r}, should be one of {{'valid', 'same'}}")
    p = _ntuple(padding, nd, "padding")
    if min(p) < 0:
        raise ValueError(f"negative padding is not supported, got {padding}")
    return tuple(w for pi in p for w in (pi, pi))


_SPATIAL = {2: "(C, H, W)", 3: "(C, D, H, W)"}
_KERNEL = {2: "kh, kw", 3: "kd, kh, kw"}


def _convnd(name, nd, input, weight, bias, stride, padding, dilation, groups):
    """conv2d and conv3d: the checks, then im2col and one batched matmul (see conv2d)."""
    _check_tensor(input, name)
    _check_tensor(weight, name, "weight")
    input, weight, bias = cast_for("conv2d", input, weight, bias)
    for t in (weight, bias):  # no silent promotion (PyTorch refuses a float32 input with float64 weights)
        if t is not None and t.dtype != input.dtype:
            raise RuntimeError(f"expected scalar type {D.scalar_name(input.dtype)} but found {D.scalar_name(t.dtype)}")
    unbatched = input.ndim == nd + 1
    if unbatched:
        input = input.unsqueeze(0)
    if input.ndim != nd + 2:
        raise RuntimeError(
            f"{name}: expected {nd + 1}-D {_SPATIAL[nd]} or {nd + 2}-D (N, {_SPATIAL[nd][1:]} input, got "
            f"{input.ndim}-D input of size {list(input.shape)}"
        )
    if weight.ndim != nd + 2:
        raise RuntimeError(
            f"{name}: weight must be {nd + 2}-D (C_out, C_in/groups, {_KERNEL[nd]}), got shape {list(weight.shape)}"
        )
    n, c, *size = input.shape
    cout, cg, *ks = weight.shape
    if groups < 1 or cout % groups:
        raise RuntimeError(f"{name}: out_channels ({cout}) must be divisible by groups ({groups})")
    if c != cg * groups:
        raise RuntimeError(
            f"Given groups={groups}, weight of size {list(weight.shape)}, expected input{list(input.shape)} to have "
            f"{cg * groups} channels, but got {c} channels instead"
        )
    if bias is not None and bias.shape != (cout,):
        raise RuntimeError(f"{name}: bias must have shape ({cout},), got {tuple(bias.shape)}")
    s, d = _ntuple(stride, nd, "stride"), _ntuple(dilation, nd, "dilation")
    if min(s) < 1 or min(d) < 1:
        raise ValueError(f"{name}: stride and dilation must be positive, got stride={s}, dilation={d}")
    pads = _conv_padding(padding, ks, d, s)
    padded = [size[i] + pads[2 * i] + pads[2 * i + 1] for i in range(nd)]
    out = tuple((padded[i] - d[i] * (ks[i] - 1) - 1) // s[i] + 1 for i in range(nd))
    if min(out) <= 0:
        x = "x".join
        raise RuntimeError(
            f"{name}: calculated output size ({x(map(str, out))}) is too small: input {list(input.shape)} (padded "
            f"{x(map(str, padded))}) is smaller than the dilated kernel "
            f"{x(str(d[i] * (ks[i] - 1) + 1) for i in range(nd))}"
        )
    geom = (tuple(ks), s, d, pads, out)
    if type(input._data) is np.ndarray:  # the CPU: one op, products straight on BLAS (ops.ConvNd)
        if bias is not None and bias.dtype != input.dtype:  # autocast may have cast input and weight only
            bias = bias.to(dtype=input.dtype)
        y = ops.ConvNd.apply(input, weight, *(() if bias is None else (bias,)), geom=geom, groups=groups)
        return y.squeeze(0) if unbatched else y
    # CuPy: im2col, then the matmul kernel (Triton, TF32 and autocast rules) on the weight expanded over the
    # batch as a view; the engine sums the weight gradient over the expanded dim
    cols = ops.Im2col.apply(input, geom=geom)  # (N, C·∏k, ∏O)
    k, npos = cg * math.prod(ks), math.prod(out)
    if groups == 1:
        y = weight.reshape(cout, k).expand(n, cout, k) @ cols  # (N, C_out, ∏O): already NC*
    else:
        w = weight.reshape(groups, cout // groups, k).expand(n, groups, cout // groups, k)
        y = w @ cols.reshape(n, groups, k, npos)
    if bias is not None:
        b = bias.to(dtype=y.dtype)  # autocast may have run the matmul in half precision
        y = y + (b.reshape(cout, 1) if groups == 1 else b.reshape(groups, cout // groups, 1))
    y = y.reshape((n, cout) + out)
    return y.squeeze(0) if unbatched else y


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation, as ``torch.nn.functional.conv2d``.

    input (N, C_in, H, W) or (C_in, H, W), weight (C_out, C_in/groups, kh, kw), bias (C_out,) ->
    (N, C_out, OH, OW) with OH = ⌊(H + pad_h - dh·(kh-1) - 1)/sh⌋ + 1. Runs as im2col (a strided view
    copied into patches (N, C·kh·kw, OH·OW)) followed by one batched product W (C_out, C·kh·kw) @ patches,
    whose result is already contiguous NCHW: on NumPy arrays one op (``ops.ConvNd``, BLAS each way, dx by
    col2im's slice adds), on CuPy arrays Tensor ops on the matmul kernel.
    """
    return _convnd("conv2d", 2, input, weight, bias, stride, padding, dilation, groups)


def conv3d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """3-D cross-correlation, as ``torch.nn.functional.conv3d``.

    input (N, C_in, D, H, W) or (C_in, D, H, W), weight (C_out, C_in/groups, kd, kh, kw), bias (C_out,) ->
    (N, C_out, OD, OH, OW) with OD = ⌊(D + pad_d - dd·(kd-1) - 1)/sd⌋ + 1 (likewise H, W). As conv2d: im2col
    into (N, C·kd·kh·kw, OD·OH·OW), then one batched matmul.
    """
    return _convnd("conv3d", 3, input, weight, bias, stride, padding, dilation, groups)


# ---------------------------------------------------------------- pooling


def _pool_out(size, k, s, p, d, ceil_mode):
    eff = d * (k - 1) + 1
    num = size + 2 * p - eff
    out = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:  # the last window must start inside the input or left padding
        out -= 1
    return out


def _pool_args(name, input, kernel_size, stride, padding, dilation, nd=2):
    unbatched = input.ndim == nd + 1
    if input.ndim not in (nd + 1, nd + 2):
        raise RuntimeError(
            f"{name}: expected {nd + 1}-D {_SPATIAL[nd]} or {nd + 2}-D (N, {_SPATIAL[nd][1:]} input, got "
            f"{input.ndim}-D input of size {list(input.shape)}"
        )
    k = _ntuple(kernel_size, nd, "kernel_size")
    no_stride = stride is None or (not isinstance(stride, int) and len(stride) == 0)
    s = k if no_stride else _ntuple(stride, nd, "stride")
    p, d = _ntuple(padding, nd, "padding"), _ntuple(dilation, nd, "dilation")
    if min(k) < 1 or min(s) < 1 or min(d) < 1:
        raise ValueError(f"{name}: kernel_size, stride and dilation must be positive, got {k}, {s}, {d}")
    for i in range(nd):
        if p[i] > (d[i] * (k[i] - 1) + 1) // 2:
            raise RuntimeError(
                f"{name}: pad should be at most half of effective kernel size, but got pad={p[i]}, "
                f"kernel_size={k[i]} and dilation={d[i]}"
            )
    return unbatched, k, s, p, d


def _pool_geom(name, input, x, k, s, p, d, ceil_mode):
    """Output sizes and the (before, after) paddings (the after side grown for ceil_mode windows) of a pooling."""
    size = x.shape[2:]
    out = tuple(_pool_out(size[i], k[i], s[i], p[i], d[i], ceil_mode) for i in range(len(k)))
    if min(out) <= 0:
        raise RuntimeError(
            f"{name}: output size is too small ({'x'.join(map(str, out))}) for input of size {list(input.shape)}"
        )
    need = [(out[i] - 1) * s[i] + d[i] * (k[i] - 1) + 1 for i in range(len(k))]
    pads = tuple(w for i in range(len(k)) for w in (p[i], max(need[i] - size[i] - p[i], 0)))
    return out, pads


def _max_pool_arrays(x, k, s, p, d, out_hw):
    """Forward of max pooling on arrays: (output, PyTorch-style indices into H·W, flat indices into the padded
    input, padded shape, crop)."""
    xp = xp_of(x)
    n, c, h, w = x.shape
    oh, ow = out_hw
    need_h = (oh - 1) * s[0] + d[0] * (k[0] - 1) + 1
    need_w = (ow - 1) * s[1] + d[1] * (k[1] - 1) + 1
    pb, pr = max(need_h - h - p[0], 0), max(need_w - w - p[1], 0)
    lo = -np.inf if x.dtype.kind == "f" or x.dtype == D.bfloat16 else np.iinfo(x.dtype).min
    xpad = xp.pad(x, ((0, 0), (0, 0), (p[0], pb), (p[1], pr)), mode="constant", constant_values=lo)
    hp, wp = xpad.shape[2:]
    s_n, s_c, s_h, s_w = xpad.strides
    win = _as_strided(xp, xpad, (n, c, oh, ow, k[0], k[1]), (s_n, s_c, s_h * s[0], s_w * s[1], s_h * d[0], s_w * d[1]))
    win = win.reshape(n, c, oh, ow, k[0] * k[1])
    am = win.argmax(axis=-1)  # the first maximum of each window, as PyTorch
    out = xp.take_along_axis(win, am[..., None], axis=-1)[..., 0]
    ki, kj = am // k[1], am % k[1]
    rows = xp.arange(oh).reshape(oh, 1) * s[0] + ki * d[0]  # row/col of the max in the padded input
    cols = xp.arange(ow) * s[1] + kj * d[1]
    indices = (rows - p[0]) * w + (cols - p[1])
    flat = (rows * wp + cols) + (xp.arange(n * c).reshape(n, c, 1, 1) * (hp * wp))
    return out, indices, flat.ravel(), (n, c, hp, wp), (p[0], p[1], h, w)


def _max_pool_views(x, k, s, p, d, ceil_mode, out_hw, return_indices):
    """max_pool2d of a NumPy (N, C, H, W) Tensor over strided views (conch.ops.pooling), no im2col: (out,
    indices or None), or (None, None) when x holds a NaN. Tiling windows take the tile ops (no padding, no
    overlap: the backward writes each view once); any other geometry takes MaxPoolWindows."""
    arr = x._data
    if _tiles(arr.shape[2:], k, s, p, d, ceil_mode):
        best = pooling.max_tiles(arr, k, out_hw)
        if best is None:
            return None, None
        return pooling.MaxPoolTiles.apply(x, out=best, geom=k), (
            pooling.tile_indices(arr, best, k) if return_indices else None)  # fmt: skip
    geom = (k, s, d, _window_pads(arr.shape[2:], k, s, p, d, out_hw))
    best = pooling.max_windows(arr, geom, out_hw)
    if best is None:
        return None, None
    return pooling.MaxPoolWindows.apply(x, out=best, geom=geom), (
        pooling.window_indices(arr, best, geom) if return_indices else None)  # fmt: skip


def _window_pads(size, k, s, p, d, out):
    """(top, bottom, left, right) padding of a 2-D pooling: p before, and after whatever the last (ceil_mode)
    window needs beyond the input, as _max_pool_arrays pads."""
    need = [(out[i] - 1) * s[i] + d[i] * (k[i] - 1) + 1 for i in range(2)]
    return (p[0], max(need[0] - size[0] - p[0], 0), p[1], max(need[1] - size[1] - p[1], 0))


def _tiles(size, k, s, p, d, ceil_mode):
    """True when the pooling windows tile the input without overlap: kernel == stride, no padding or dilation
    (ceil_mode only when it adds no partial window). Such pooling is a reshape and a reduction, no im2col."""
    return (
        tuple(s) == tuple(k)
        and not any(p)
        and all(v == 1 for v in d)
        and (not ceil_mode or all(n % kk == 0 for n, kk in zip(size, k, strict=True)))
    )


_TILE_DTYPES = frozenset(np.dtype(t) for t in (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32,
                                                np.int64, np.uint8))  # fmt: skip


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Max over kh×kw windows: (N, C, H, W) -> (N, C, OH, OW); padding counts as -inf.

    With ``return_indices=True`` also returns the flat index (into H·W) of each maximum.
    """
    _check_tensor(input, "max_pool2d")
    unbatched, k, s, p, d = _pool_args("max_pool2d", input, kernel_size, stride, padding, dilation)
    x = input.unsqueeze(0) if unbatched else input
    h, w = x.shape[2:]
    oh, ow = _pool_out(h, k[0], s[0], p[0], d[0], ceil_mode), _pool_out(w, k[1], s[1], p[1], d[1], ceil_mode)
    if oh <= 0 or ow <= 0:
        raise RuntimeError(
            f"max_pool2d: output size is too small ({oh}x{ow}) for input of size {list(input.shape)} "
            f"and kernel_size={k}"
        )
    arr, out = x._data, None
    if pooling.compiled(arr):  # every geometry, NaN included, on the compiled kernels
        out, indices = pooling.max_pool_compiled(x, k, s, d, p, (oh, ow), return_indices)
    elif type(arr) is np.ndarray and arr.dtype in _TILE_DTYPES:
        out, indices = _max_pool_views(x, k, s, p, d, ceil_mode, (oh, ow), return_indices)
    if out is None:  # CuPy, bfloat16, or a NaN in x (im2col's argmax rule for NaN)
        res = _max_pool_arrays(arr, k, s, p, d, (oh, ow))
        out, indices = ops.MaxPool2d.apply(x, res=res), res[1]
    if unbatched:
        out = out.squeeze(0)
    if return_indices:
        idx = Tensor._make(indices.astype(np.int64, copy=False))
        return out, (idx.squeeze(0) if unbatched else idx)
    return out


def _avg_pool(name, nd, input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    """avg_pool2d and avg_pool3d: window sums from im2col over (N·C, 1, *S), then PyTorch's divisors."""
    _check_tensor(input, name)
    unbatched, k, s, p, _ = _pool_args(name, input, kernel_size, stride, padding, 1, nd)
    x = input.unsqueeze(0) if unbatched else input
    n, c, *size = x.shape
    out, pads = _pool_geom(name, input, x, k, s, p, (1,) * nd, ceil_mode)
    tiles = _tiles(size, k, s, p, (1,) * nd, ceil_mode)  # whole tiles: no im2col, every divisor the same
    tiles_2d = tiles and nd == 2 and type(x._data) is np.ndarray and x.dtype in _TILE_DTYPES and x.dtype.kind == "f"
    if not tiles_2d and pooling.compiled(x._data):  # the 2-D tiles' strided sums are faster than the kernel
        res = pooling.AvgPoolCompiled.apply(x, k=k, s=s, p=p, shape=out, include_pad=bool(count_include_pad),
                                            div=float(divisor_override or 0))  # fmt: skip
        return res.squeeze(0) if unbatched else res
    if tiles:
        div = float(divisor_override or math.prod(k))
        if tiles_2d:
            res = pooling.AvgPoolTiles.apply(x, k=k, out_hw=out, div=div)
        else:  # a reshape and a sum over the window axes
            xs = x[(slice(None), slice(None)) + tuple(slice(0, o * kk) for o, kk in zip(out, k, strict=True))]
            res = xs.reshape((n, c) + tuple(v for o, kk in zip(out, k, strict=True) for v in (o, kk)))
            res = res.sum(tuple(range(3, 3 + 2 * nd, 2))) / div
        return res.squeeze(0) if unbatched else res
    cols = ops.Im2col.apply(x.reshape((n * c, 1) + tuple(size)), geom=(k, s, (1,) * nd, pads, out))
    total = cols.sum(1).reshape((n, c) + out)
    if divisor_override:
        res = total / float(divisor_override)
    else:

        def sizes(o, st, kk, pp, sz):
            start = np.arange(o) * st - pp
            end = np.minimum(start + kk, sz + pp)
            full = end - start
            inside = np.minimum(end, sz) - np.maximum(start, 0)
            return full if count_include_pad else inside

        div = sizes(out[0], s[0], k[0], p[0], size[0])
        for i in range(1, nd):
            div = np.multiply.outer(div, sizes(out[i], s[i], k[i], p[i], size[i]))
        if (div == math.prod(k)).all():
            res = total / float(math.prod(k))
        else:
            res = total / _const_like(xp_of(x._data).asarray(div), total)
    return res.squeeze(0) if unbatched else res


def avg_pool2d(
    input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None
):
    """Mean over kh×kw windows: (N, C, H, W) -> (N, C, OH, OW), with PyTorch's divisor rules
    (``count_include_pad``, ``ceil_mode`` windows clipped at the padded border, ``divisor_override``)."""
    return _avg_pool("avg_pool2d", 2, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override)  # fmt: skip


def avg_pool3d(
    input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None
):
    """Mean over kd×kh×kw windows: (N, C, D, H, W) -> (N, C, OD, OH, OW), with avg_pool2d's divisor rules.
    The gradient spreads dy/divisor over each window (im2col's adjoint)."""
    return _avg_pool("avg_pool3d", 3, input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override)  # fmt: skip


def max_pool3d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Max over kd×kh×kw windows: (N, C, D, H, W) -> (N, C, OD, OH, OW); padding counts as -inf.

    im2col over (N·C, 1, D, H, W) with -inf padding, then a gather of each window's first maximum, so the
    gradient goes to that one element (as PyTorch). ``return_indices=True`` also returns the flat index (into
    D·H·W) of each maximum, which max_unpool3d takes.
    """
    _check_tensor(input, "max_pool3d")
    unbatched, k, s, p, d = _pool_args("max_pool3d", input, kernel_size, stride, padding, dilation, 3)
    x = input.unsqueeze(0) if unbatched else input
    n, c, *size = x.shape
    out, pads = _pool_geom("max_pool3d", input, x, k, s, p, d, ceil_mode)
    if pooling.compiled(x._data):
        y, flat = pooling.max_pool_compiled(x, k, s, d, p, out)
        if not return_indices:
            return y.squeeze(0) if unbatched else y
        idx = Tensor._make(flat)
        return (y.squeeze(0), idx.squeeze(0)) if unbatched else (y, idx)
    lo = -np.inf if x.dtype.kind == "f" or x.dtype == D.bfloat16 else np.iinfo(x.dtype).min
    cols = ops.Im2col.apply(x.reshape((n * c, 1) + tuple(size)), geom=(k, s, d, pads, out), value=lo)
    xp = xp_of(x._data)
    am = cols._data.argmax(axis=1)[:, None, :]  # (N·C, 1, ∏O): the first maximum of each window
    y = cols.gather(1, Tensor._make(am.astype(np.int64))).reshape((n, c) + out)
    if unbatched:
        y = y.squeeze(0)
    if not return_indices:
        return y
    flat = xp.zeros(am.shape, dtype=np.int64)
    o_idx = xp.arange(math.prod(out)).reshape(1, 1, -1)
    for i in range(3):  # the position of the max along dim i: o_i·s_i + k_i·d_i - p_i
        inner_k, inner_o = math.prod(k[i + 1 :]), math.prod(out[i + 1 :])
        pos = (o_idx // inner_o) % out[i] * s[i] + (am // inner_k) % k[i] * d[i] - p[i]
        flat = flat * size[i] + pos
    idx = Tensor._make(flat.reshape((n, c) + out))
    return y, (idx.squeeze(0) if unbatched else idx)


def adaptive_avg_pool2d(input, output_size):
    """Mean over the adaptive windows [⌊i·H/OH⌋, ⌈(i+1)·H/OH⌉) (as PyTorch): (N, C, H, W) -> (N, C, OH, OW)."""
    _check_tensor(input, "adaptive_avg_pool2d")
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    h, w = input.shape[-2:]
    oh, ow = oh or h, ow or w
    if h % oh == 0 and w % ow == 0:
        return avg_pool2d(input, (h // oh, w // ow))
    rows = []
    for i in range(oh):
        h0, h1 = (i * h) // oh, -(-((i + 1) * h) // oh)
        row = [input[..., h0:h1, (j * w) // ow : -(-((j + 1) * w) // ow)].mean((-2, -1)) for j in range(ow)]
        rows.append(_stack(row, -1))
    return _stack(rows, -2)


def _stack(ts, dim):
    return stack(ts, dim)


# ---------------------------------------------------------------- normalisation


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """(x - mean) / √(var + eps) · weight + bias over the trailing ``normalized_shape`` dims (biased var)."""
    _check_tensor(input, "layer_norm")
    return fused_norms.layer_norm(input, normalized_shape, weight, bias, eps)


def rms_norm(input, normalized_shape, weight=None, eps=None):
    """x / √(mean(x²) + eps) · weight over the trailing ``normalized_shape`` dims; eps=None uses the dtype's eps."""
    _check_tensor(input, "rms_norm")
    if eps is None:
        eps = float(np.finfo(np.float32 if input.dtype == D.bfloat16 else input.dtype).eps)
    return fused_norms.rms_norm(input, normalized_shape, weight, eps)


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """Normalise over every dim except 1 (channels): y = (x - μ)/√(σ² + eps)·weight + bias.

    In training μ, σ² are the batch's (biased σ²) and the running statistics, when given, are updated
    in place: r ← (1 - momentum)·r + momentum·stat, using the unbiased variance n/(n-1)·σ². In eval
    the running statistics are used.
    """
    _check_tensor(input, "batch_norm")
    if input.ndim < 2:
        raise ValueError(f"batch_norm: expected input with at least 2 dims (N, C, ...), got shape {input.shape}")
    c = input.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        if t is not None and t.shape != (c,):
            raise RuntimeError(
                f"batch_norm: {name} should have shape ({c},) for input of size {list(input.shape)}, "
                f"got {tuple(t.shape)}"
            )
    (input,) = cast_for("batch_norm", input)
    dims = (0,) + tuple(range(2, input.ndim))
    bshape = (1, c) + (1,) * (input.ndim - 2)
    x = input.float() if input.dtype in (D.float16, D.bfloat16) else input
    if training:
        n = int(np.prod(input.shape[:1] + input.shape[2:], dtype=np.int64))  # values per channel
        if n == 1:  # PyTorch refuses exactly one value per channel; an empty batch passes (below)
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {list(input.shape)}"
            )
    if input.numel() == 0:
        # PyTorch: an empty input gives an empty output (a clone, so the graph is kept) and leaves the
        # running statistics alone
        y = x.clone()
    elif training:
        mean = x.mean(dims, keepdim=True)
        xc = x - mean
        var = (xc * xc).mean(dims, keepdim=True)
        if running_mean is not None or running_var is not None:
            m = float(momentum)
            if running_mean is not None:
                rm = running_mean._data
                rm[...] = ((1 - m) * rm + m * mean._data.reshape(c)).astype(rm.dtype)
                running_mean._version[0] += 1
            if running_var is not None:
                rv = running_var._data
                rv[...] = ((1 - m) * rv + m * var._data.reshape(c) * (n / (n - 1))).astype(rv.dtype)
                running_var._version[0] += 1
        y = xc * (var + eps).rsqrt()
    else:
        if running_mean is None or running_var is None:
            raise RuntimeError("batch_norm: running_mean and running_var are required when training=False")
        inv = (running_var.reshape(bshape).to(dtype=x.dtype) + eps).rsqrt()
        y = (x - running_mean.reshape(bshape).to(dtype=x.dtype)) * inv
    # the affine part runs in the statistics' precision; the result has the input's dtype (as under autocast)
    if weight is not None:
        y = y * weight.reshape(bshape).to(dtype=y.dtype)
    if bias is not None:
        y = y + bias.reshape(bshape).to(dtype=y.dtype)
    return y.to(dtype=input.dtype)


# ---------------------------------------------------------------- attention


def _causal_keep(xp, lq, lk):
    """The (lq, lk) causal keep-mask (j <= i) in ``xp``'s default device, cached (conch.kernels._causal)."""
    return causal_keep(lq, lk, xp.empty(0, dtype=bool))


def _attention(q, k, v, add_mask, keep_mask, dropout_p, scale):
    """softmax(q kᵀ·scale + add_mask, masked where not keep_mask) (dropout) @ v -> (out, probabilities)."""
    scores = (q @ k.transpose(-2, -1)) * scale
    if keep_mask is not None:
        scores = scores.masked_fill(~keep_mask, -math.inf)
    if add_mask is not None:
        scores = scores + add_mask
    attn = fused_softmax.softmax(scores, -1)
    if dropout_p > 0.0:
        attn = fdrop.dropout(attn, dropout_p, True)
    return attn @ v, attn


def scaled_dot_product_attention(
    query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False
):
    """softmax(Q Kᵀ · scale + mask) V with Q (..., L, E), K (..., S, E), V (..., S, Ev) -> (..., L, Ev).

    ``scale`` defaults to 1/√E. ``attn_mask``: a bool mask (True = may attend, as PyTorch) or a float
    mask added to the scores, broadcastable to (..., L, S). ``is_causal`` masks j > i (top-left
    aligned) and excludes ``attn_mask``. Fully masked rows give NaN, as in PyTorch.
    """
    for nm, t in (("query", query), ("key", key), ("value", value)):
        _check_tensor(t, "scaled_dot_product_attention", nm)
    if query.ndim < 2 or key.ndim < 2 or value.ndim < 2:
        raise RuntimeError(
            "scaled_dot_product_attention: query, key and value need at least 2 dims, got shapes "
            f"{query.shape}, {key.shape}, {value.shape}"
        )
    if query.shape[-1] != key.shape[-1] or key.shape[-2] != value.shape[-2]:
        raise RuntimeError(
            f"scaled_dot_product_attention: expected query (..., L, E), key (..., S, E), value (..., S, Ev); got "
            f"query {query.shape}, key {key.shape}, value {value.shape}"
        )
    if enable_gqa and query.ndim >= 3 and key.shape[-3] != query.shape[-3]:
        hq, hk = query.shape[-3], key.shape[-3]
        if hq % hk:
            raise RuntimeError(f"scaled_dot_product_attention: {hq} query heads are not a multiple of {hk} key heads")
        rep = hq // hk

        def expand(t):
            s = t.shape
            return t.unsqueeze(-3).expand(*s[:-2], rep, *s[-2:]).reshape(*s[:-3], hq, *s[-2:])

        key, value = expand(key), expand(value)
    query, key, value = cast_for("scaled_dot_product_attention", query, key, value)
    lq, lk = query.shape[-2], key.shape[-2]
    sc = 1.0 / math.sqrt(query.shape[-1]) if scale is None else float(scale)
    keep = add = None
    xp = xp_of(query._data)
    if is_causal and attn_mask is not None:
        raise RuntimeError("scaled_dot_product_attention: explicit attn_mask should not be set when is_causal=True")
    empty = not (query.numel() and key.numel() and value.numel())  # the composite path below handles L, S or N = 0
    if (attn_mask is None and query.is_floating_point() and query.dtype == key.dtype == value.dtype and dropout_p < 1
            and not empty):  # fmt: skip
        return fattn.attention(query, key, value, is_causal, sc, float(dropout_p))  # flash: no (L, S) matrix kept
    if is_causal:
        keep = _causal_keep(xp, lq, lk)
    elif attn_mask is not None:
        if attn_mask.dtype == np.bool_:
            keep = attn_mask._data
        else:
            add = attn_mask if attn_mask.dtype == query.dtype else attn_mask.to(dtype=query.dtype)
    out, _ = _attention(query, key, value, add, keep, float(dropout_p), sc)
    return out


def multi_head_attention_forward(
    query,
    key,
    value,
    num_heads,
    in_proj_weight,
    in_proj_bias,
    out_proj_weight,
    out_proj_bias,
    dropout_p=0.0,
    training=True,
    key_padding_mask=None,
    need_weights=True,
    attn_mask=None,
    average_attn_weights=True,
    is_causal=False,
    q_proj_weight=None,
    k_proj_weight=None,
    v_proj_weight=None,
    bias_k=None,
    bias_v=None,
    add_zero_attn=False,
):
    """Batch-first multi-head attention: query (B, L, E), key/value (B, S, Ek/Ev) -> ((B, L, E), weights).

    ``key_padding_mask`` (B, S) and ``attn_mask`` (L, S) or (B·H, L, S) follow ``nn.MultiheadAttention``:
    bool True means *masked out*; float masks are added to the scores. ``bias_k``/``bias_v`` (1, 1, E)
    append one learned key and value to every sequence after the projections; ``add_zero_attn``
    appends a zero key and value per head after that. Either widens the weights to S+1 (S+2) columns,
    and the masks let every query attend to the added positions.
    """
    b, lq, e = query.shape
    s = key.shape[1]
    h = num_heads
    hd = e // h
    if q_proj_weight is None:
        if query is key and key is value:
            qkv = fmm.linear(query, in_proj_weight, in_proj_bias)
            q, k, v = qkv.split(e, dim=-1)
        else:
            wq, wk, wv = in_proj_weight.split(e, dim=0)
            bq, bk, bv = (None, None, None) if in_proj_bias is None else in_proj_bias.split(e, dim=0)
            q, k, v = (
                fmm.linear(query, wq, bq),
                fmm.linear(key, wk, bk),
                fmm.linear(value, wv, bv),
            )
    else:
        bq, bk, bv = (None, None, None) if in_proj_bias is None else in_proj_bias.split(e, dim=0)
        q = fmm.linear(query, q_proj_weight, bq)
        k, v = fmm.linear(key, k_proj_weight, bk), fmm.linear(value, v_proj_weight, bv)
    extra = 0
    if (bias_k is None) != (bias_v is None):
        raise ValueError("multi_head_attention_forward: bias_k and bias_v must be given together")
    if bias_k is not None:
        if bias_k.shape != (1, 1, e) or bias_v.shape != (1, 1, e):
            raise ValueError(
                f"bias_k and bias_v must have shape (1, 1, {e}), got {tuple(bias_k.shape)} and {tuple(bias_v.shape)}"
            )
        k, v = cat([k, bias_k.expand(b, 1, e)], 1), cat([v, bias_v.expand(b, 1, e)], 1)
        extra += 1
    q = q.reshape(b, lq, h, hd).permute(0, 2, 1, 3)
    k = k.reshape(b, s + extra, h, hd).permute(0, 2, 1, 3)
    v = v.reshape(b, s + extra, h, hd).permute(0, 2, 1, 3)
    xp = xp_of(query._data)
    if add_zero_attn:
        zero = Tensor._make(xp.zeros((b, h, 1, hd), dtype=k.dtype))
        k, v = cat([k, zero], 2), cat([v, zero], 2)
        extra += 1
    keep = None
    add = None

    def merge_bool(masked):  # masked: True = may not attend
        nonlocal keep
        keep = ~masked if keep is None else (keep & ~masked)

    def merge_float(m):
        nonlocal add
        m = m if m.dtype == q.dtype else m.to(dtype=q.dtype)
        add = m if add is None else add + m

    if attn_mask is not None:
        am = attn_mask
        if am.ndim == 2:
            if am.shape != (lq, s):
                raise RuntimeError(f"The shape of the 2D attn_mask is {tuple(am.shape)}, but should be {(lq, s)}.")
        elif am.ndim == 3:
            if am.shape != (b * h, lq, s):
                raise RuntimeError(
                    f"The shape of the 3D attn_mask is {tuple(am.shape)}, but should be {(b * h, lq, s)}."
                )
            am = am.reshape(b, h, lq, s)
        else:
            raise RuntimeError(f"attn_mask's dimension {am.ndim} is not supported (expected 2 or 3)")
        merge_bool(am._data) if am.dtype == np.bool_ else merge_float(am)
    elif is_causal:
        merge_bool(~_causal_keep(xp, lq, s))
    if key_padding_mask is not None:
        if key_padding_mask.shape != (b, s):
            raise RuntimeError(f"expected key_padding_mask of shape {(b, s)}, got {tuple(key_padding_mask.shape)}")
        kpm = key_padding_mask.reshape(b, 1, 1, s)
        merge_bool(kpm._data) if kpm.dtype == np.bool_ else merge_float(kpm)
    if extra:  # the appended keys are open to every query: pad the masks with "keep" columns
        if keep is not None:
            keep = xp.concatenate([keep, xp.ones(keep.shape[:-1] + (extra,), dtype=np.bool_)], axis=-1)
        if add is not None:
            add = cat([add, Tensor._make(xp.zeros(add.shape[:-1] + (extra,), dtype=add.dtype))], -1)
    drop = dropout_p if training else 0.0
    causal_only = is_causal and attn_mask is None and key_padding_mask is None and not extra
    if not need_weights and drop < 1 and add is None and (keep is None or causal_only) and q.dtype == v.dtype:
        out = fattn.attention(q, k, v, causal_only, 1.0 / math.sqrt(hd), drop)  # flash attention: no weights kept
    else:
        out, attn = _attention(q, k, v, add, keep, drop, 1.0 / math.sqrt(hd))
    out = out.permute(0, 2, 1, 3).reshape(b, lq, e)
    out = fmm.linear(out, out_proj_weight, out_proj_bias)
    if not need_weights:
        return out, None
    return out, (attn.mean(1) if average_attn_weights else attn)


# ---------------------------------------------------------------- losses


def _flatten_classes(input, target, name):
    """(N, C, d1, ...) logits and (N, d1, ...) targets -> (M, C) and (M,), plus the shape of per-element losses."""
    if input.ndim == 1:
        if target.ndim != 0:
            raise ValueError(
                f"{name}: for an unbatched input of shape {tuple(input.shape)} expected a 0-d target, got "
                f"shape {tuple(target.shape)}"
            )
        return input.unsqueeze(0), target.reshape(1), ()
    if input.ndim < 1:
        raise ValueError(f"{name}: expected input of shape (C,), (N, C) or (N, C, d1, ...), got {tuple(input.shape)}")
    exp = input.shape[:1] + input.shape[2:]
    if target.shape != exp:
        raise ValueError(
            f"{name}: expected target of shape {exp} for input of shape {tuple(input.shape)}, got {tuple(target.shape)}"
        )
    if input.ndim == 2:
        return input, target, exp
    perm = (0,) + tuple(range(2, input.ndim)) + (1,)
    return input.permute(*perm).reshape(-1, input.shape[1]), target.reshape(-1), exp


def _check_targets(t, c, ignore_index, name):
    """``(valid, safe)``: the mask of targets != ignore_index, after checking the others are in [0, c), and
    the targets a kernel may read.

    CPU: raises now; ``safe`` is the targets' array. GPU: no host sync; the check raises at the next sync
    (``kernels._deferred``), as PyTorch's device-side assert, and until then ``safe`` holds ignore_index in
    place of a bad target so that no kernel reads outside its row.
    """
    a = t._data
    xp = xp_of(a)
    valid = a != ignore_index
    if not a.size:  # no target, nothing to check (a GPU check would take the argmax of an empty array)
        return valid, a
    bad = valid & ((a < 0) | (a >= c))
    _deferred.check(
        bad.any(),
        lambda: xp.take(a.reshape(-1), xp.argmax(bad.reshape(-1))),
        lambda v: IndexError(
            f"{name}: Target {v} is out of bounds: input has {c} classes (valid targets "
            f"are 0..{c - 1} or ignore_index={ignore_index})"
        ),
    )
    return valid, (a if xp is np else xp.where(bad, a.dtype.type(ignore_index), a))


def nll_loss(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean"):
    """-input[i, target_i]·weight[target_i] (input = log-probabilities, class dim 1); the mean divides by
    Σ weight[target_i] over non-ignored elements."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    _check_reduction(reduction)
    _check_tensor(input, "nll_loss")
    (input,) = cast_for("nll_loss", input)
    if target.dtype.kind not in "iu":
        raise TypeError(f"nll_loss: expected integer class targets, got {target.dtype}")
    x2, t1, out_shape = _flatten_classes(input, target, "nll_loss")
    m, c = x2.shape
    if weight is not None and weight.shape != (c,):
        raise RuntimeError(f"nll_loss: weight should have shape ({c},), got {tuple(weight.shape)}")
    valid, _ = _check_targets(t1, c, ignore_index, "nll_loss")
    xp = xp_of(t1._data)
    safe = xp.where(valid, t1._data, 0)
    picked = x2[Tensor._make(xp.arange(m)), Tensor._make(safe)]
    w = valid.astype(x2.dtype) if weight is None else weight._data[safe].astype(x2.dtype) * valid
    w_t = Tensor._make(w)
    loss = -picked * w_t
    if reduction == "none":
        return loss.reshape(out_shape)
    if reduction == "sum":
        return loss.sum()
    return _mean_over(loss.sum(), xp.asarray(w.sum(), dtype=x2.dtype))


def cross_entropy(
    input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean", label_smoothing=0.0
):
    """Cross-entropy between logits ``input`` (C,), (N, C) or (N, C, d1, ...) (class dim 1) and ``target``.

    Class-index targets: loss_i = (1-ε)·(-log p_i[t_i])·w[t_i] + ε/C·Σ_c -log p_ic·w_c, rows equal to
    ``ignore_index`` count 0 and leave the mean's denominator (Σ w[t_i]). Probability targets (a
    float tensor of the input's shape): loss_i = -Σ_c w_c·((1-ε) t_ic + ε/C)·log p_ic, mean over
    the N·d1·… elements. Without class weights the class-index case is one fused kernel.

    (As a convenience an int passed in ``weight``'s position is taken as ``ignore_index``.)
    """
    if isinstance(weight, numbers.Integral) and not isinstance(weight, bool):
        weight, ignore_index = None, int(weight)
    reduction = _legacy_reduction(size_average, reduce, reduction)
    _check_reduction(reduction)
    _check_tensor(input, "cross_entropy")
    _check_tensor(target, "cross_entropy", "target")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be between 0.0 and 1.0, got {label_smoothing}")
    if target.is_floating_point():
        return _cross_entropy_probs(input, target, weight, reduction, label_smoothing)
    if target.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy: expected integer class targets or float probabilities, got {target.dtype}")
    x2, t1, out_shape = _flatten_classes(input, target, "cross_entropy")
    c = x2.shape[1]
    if weight is None:
        _, safe = _check_targets(t1, c, ignore_index, "cross_entropy")  # once: the kernel does not check again
        if safe is not t1._data:
            t1 = Tensor._make(safe)
        loss = fused_ce.cross_entropy(x2, t1, ignore_index, float(label_smoothing), reduction, check_targets=False)
        return loss.reshape(out_shape) if reduction == "none" else loss
    if weight.shape != (c,):
        raise RuntimeError(f"cross_entropy: weight should have shape ({c},), got {tuple(weight.shape)}")
    logp = fused_softmax.log_softmax(x2.float() if x2.dtype in (D.float16, D.bfloat16) else x2, 1)
    nll = nll_loss(logp, t1, weight, ignore_index=ignore_index, reduction=reduction)
    if not label_smoothing:
        return nll.reshape(out_shape) if reduction == "none" else nll
    valid = t1._data != ignore_index
    smooth = -(logp * weight.to(dtype=logp.dtype)).sum(1) * Tensor._make(valid.astype(logp.dtype))
    if reduction == "none":
        smooth = smooth.reshape(out_shape)
        nll = nll.reshape(out_shape)
    elif reduction == "sum":
        smooth = smooth.sum()
    else:
        xp = xp_of(valid)
        wsum = (weight._data[xp.where(valid, t1._data, 0)] * valid).sum()
        smooth = _mean_over(smooth.sum(), xp.asarray(wsum, dtype=logp.dtype))
    return nll * (1 - label_smoothing) + smooth * (label_smoothing / c)


def _cross_entropy_probs(input, target, weight, reduction, label_smoothing):
    if target.shape != input.shape:
        raise ValueError(
            f"cross_entropy: probability targets must have the input's shape {tuple(input.shape)}, got "
            f"{tuple(target.shape)}"
        )
    cdim = 0 if input.ndim == 1 else 1
    c = input.shape[cdim]
    x = input.float() if input.dtype in (D.float16, D.bfloat16) else input
    logp = fused_softmax.log_softmax(x, cdim)
    t = target.to(dtype=logp.dtype)
    if label_smoothing:
        t = t * (1 - label_smoothing) + label_smoothing / c
    prod = logp * t
    if weight is not None:
        if weight.shape != (c,):
            raise RuntimeError(f"cross_entropy: weight should have shape ({c},), got {tuple(weight.shape)}")
        prod = prod * weight.reshape((c,) + (1,) * (input.ndim - cdim - 1)).to(dtype=logp.dtype)
    loss = -prod.sum(cdim)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / float(max(input.numel() // c, 1))


def linear_cross_entropy(
    input,
    weight,
    target,
    bias=None,
    ignore_index=-100,
    label_smoothing=0.0,
    reduction="mean",
    chunk_size=None,
    *,
    return_logits=False,
):
    """``cross_entropy(linear(input, weight, bias), target, ...)`` without ever building the logits.

    input (..., D), weight (V, D) as ``nn.Linear``'s, bias (V,) or None, target (...) integer class indices
    shaped like input's leading dims. Per row z_i = x_i Wᵀ + b and, with ε = ``label_smoothing``,
    loss_i = (1-ε)(lse(z_i) - z_i[t_i]) + ε/V Σ_j (lse(z_i) - z_ij), 0 where t_i = ``ignore_index``;
    ``reduction`` "mean" (over the targets not ignored; none left: NaN), "sum" or "none" (target's shape).

    The rows go in chunks (``chunk_size`` rows; default from a memory budget: one chunk's float32 logits
    about the size of ``input``), so only one chunk's logits exist at a time, and their gradient is formed in
    place; the gradients of input, weight and bias accumulate in float32. The loss is float32 (float64 for
    float64 inputs), as cross_entropy's. Under autocast the projection runs in the autocast dtype, as linear.

    ``return_logits=True`` returns ``(loss, logits)``, logits (..., V) as ``linear(input, weight, bias)`` gives
    them, for a caller that wants both (a language model returning its logits): they are copied out of the same
    chunk products, so the projection runs once; the loss's own backward still never needs them, and a
    gradient that reaches the logits flows to input, weight and bias as through ``linear``.

    Example::

        h = model.body(idx)                                   # (B, T, D) hidden states
        loss = F.linear_cross_entropy(h, model.lm_head.weight, targets)   # never (B, T, V) logits
    """
    _check_reduction(reduction)
    _check_tensor(input, "linear_cross_entropy")
    _check_tensor(weight, "linear_cross_entropy", "weight")
    _check_tensor(target, "linear_cross_entropy", "target")
    if bias is not None:
        _check_tensor(bias, "linear_cross_entropy", "bias")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be between 0.0 and 1.0, got {label_smoothing}")
    bad_bias = bias is not None and bias.shape != weight.shape[:1]
    if weight.ndim != 2 or input.ndim == 0 or input.shape[-1] != weight.shape[-1] or bad_bias:
        raise RuntimeError(
            f"linear_cross_entropy: input {tuple(input.shape)} (..., D), weight {tuple(weight.shape)} (V, D) and bias "
            f"{None if bias is None else tuple(bias.shape)} (V,) do not agree"
        )
    if target.dtype.kind not in "iu":
        raise RuntimeError(
            f"linear_cross_entropy: expected integer class targets (int64), got {target.dtype} "
            f"(shape {tuple(target.shape)})"
        )
    if target.shape != input.shape[:-1]:
        raise ValueError(
            f"linear_cross_entropy: expected target of shape {tuple(input.shape[:-1])} for input of shape "
            f"{tuple(input.shape)}, got {tuple(target.shape)}"
        )
    for other in (weight, target) + ((bias,) if bias is not None else ()):
        if other.device != input.device:
            raise RuntimeError(f"linear_cross_entropy: input is on {input.device} but an argument is on {other.device}")
    if weight.shape[0] == 0:
        raise RuntimeError(f"linear_cross_entropy: weight needs at least one class, got shape {tuple(weight.shape)}")
    if chunk_size is not None and (not isinstance(chunk_size, numbers.Integral) or chunk_size < 1):
        raise ValueError(f"linear_cross_entropy: chunk_size must be a positive int, got {chunk_size!r}")
    x2, t1 = input.reshape(-1, input.shape[-1]), target.reshape(-1)
    _, safe = _check_targets(t1, weight.shape[0], ignore_index, "linear_cross_entropy")
    out = fused_lce.linear_cross_entropy(
        x2, weight, safe, bias, ignore_index, label_smoothing, reduction, chunk_size, return_logits=return_logits
    )
    loss, logits = out if return_logits else (out, None)
    loss = loss.reshape(target.shape) if reduction == "none" else loss
    return (loss, logits.reshape(tuple(input.shape[:-1]) + (weight.shape[0],))) if return_logits else loss


def _check_same_shape(input, target, name):
    if input.shape != target.shape:
        try:
            np.broadcast_shapes(input.shape, target.shape)
        except ValueError:
            raise ValueError(
                f"{name}: target size {tuple(target.shape)} is not broadcastable with input size {tuple(input.shape)}"
            ) from None


def mse_loss(input, target, size_average=None, reduce=None, reduction="mean", weight=None):
    """(input - target)², reduced."""
    _check_same_shape(input, target, "mse_loss")
    input, target = cast_for("mse_loss", input, target)
    d = input - target
    loss = d * d
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, _legacy_reduction(size_average, reduce, reduction))


def l1_loss(input, target, size_average=None, reduce=None, reduction="mean"):
    """|input - target|, reduced."""
    _check_same_shape(input, target, "l1_loss")
    input, target = cast_for("l1_loss", input, target)
    return _reduce((input - target).abs(), _legacy_reduction(size_average, reduce, reduction))


def huber_loss(input, target, reduction="mean", delta=1.0):
    """0.5·d² where |d| < delta, else delta·(|d| - 0.5·delta); d = input - target."""
    if delta <= 0:
        raise ValueError(f"huber_loss: delta must be positive, got {delta}")
    _check_same_shape(input, target, "huber_loss")
    input, target = cast_for("huber_loss", input, target)
    d = input - target
    a = d.abs()
    loss = where(a._data < delta, d * d * 0.5, (a - 0.5 * delta) * delta)
    return _reduce(loss, reduction)


def smooth_l1_loss(input, target, size_average=None, reduce=None, reduction="mean", beta=1.0):
    """0.5·d²/beta where |d| < beta, else |d| - 0.5·beta (plain L1 when beta = 0)."""
    if beta < 0:
        raise ValueError(f"smooth_l1_loss: beta must be non-negative, got {beta}")
    _check_same_shape(input, target, "smooth_l1_loss")
    reduction = _legacy_reduction(size_average, reduce, reduction)
    input, target = cast_for("smooth_l1_loss", input, target)
    d = input - target
    a = d.abs()
    if beta == 0:
        return _reduce(a, reduction)
    loss = where(a._data < beta, d * d * (0.5 / beta), a - 0.5 * beta)
    return _reduce(loss, reduction)


def binary_cross_entropy_with_logits(
    input, target, weight=None, size_average=None, reduce=None, reduction="mean", pos_weight=None
):
    """-w·[pos_weight·t·log σ(x) + (1 - t)·log(1 - σ(x))], computed stably as
    (1 - t)·x - (1 + (pos_weight - 1)·t)·log σ(x)."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    if input.shape != target.shape:
        raise ValueError(f"Target size ({tuple(target.shape)}) must be the same as input size ({tuple(input.shape)})")
    input, target = cast_for("binary_cross_entropy_with_logits", input, target)
    t = target if target.dtype == input.dtype else target.to(dtype=input.dtype)
    ls = ops.LogSigmoid.apply(input)
    if pos_weight is not None:
        loss = (1 - t) * input - (t * (pos_weight - 1) + 1) * ls
    else:
        loss = (1 - t) * input - ls
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction)


def binary_cross_entropy(input, target, weight=None, size_average=None, reduce=None, reduction="mean"):
    """-w·[t·log p + (1 - t)·log(1 - p)] with each log clamped at -100 (as PyTorch)."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    if input.shape != target.shape:
        raise ValueError(
            f"Using a target size ({tuple(target.shape)}) that is different to the input size "
            f"({tuple(input.shape)}) is deprecated. Please ensure they have the same size."
        )
    a = input._data
    if a.size:  # on a GPU read at the next host sync (kernels._deferred), as PyTorch's device assert
        _deferred.check((a.min() < 0) | (a.max() > 1), 0,
                        lambda _: RuntimeError("all elements of input should be between 0 and 1"))  # fmt: skip
    loss = -(target * input.log().clamp(min=-100) + (1 - target) * (1 - input).log().clamp(min=-100))
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction)


def kl_div(input, target, size_average=None, reduce=None, reduction="mean", log_target=False):
    """target·(log target - input) (input = log-probabilities); ``reduction="batchmean"`` divides by N."""
    if log_target:
        loss = target.exp() * (target - input)
    else:
        tl = target.masked_fill(target._data <= 0, 1).log()
        loss = (target * (tl - input)).masked_fill(target._data <= 0, 0)
    if reduction == "batchmean":
        return loss.sum() / float(input.shape[0] if input.ndim else 1)
    return _reduce(loss, _legacy_reduction(size_average, reduce, reduction))


# ---------------------------------------------------------------- more layers: group norm, conv1d, small activations


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
    """Normalize each of ``num_groups`` channel groups of (N, C, *) over its channels and positions (biased var),
    then ``weight``/``bias`` (C,) per channel. The normalization runs on the fused layer-norm kernel as rows of
    (C/G)·∏spatial elements."""
    _check_tensor(input, "group_norm")
    if input.ndim < 2:
        raise RuntimeError(f"group_norm: expected an input of shape (N, C, *), got {tuple(input.shape)}")
    n, c = input.shape[:2]
    if num_groups < 1 or c % num_groups:
        raise RuntimeError(f"Expected number of channels in input ({c}) to be divisible by num_groups ({num_groups})")
    (input,) = cast_for("group_norm", input)
    if input.numel() == 0:  # nothing to normalise (N, C or a spatial dim is 0): an empty result, as PyTorch
        y = input.clone()
    else:
        rows = input.reshape(n, num_groups, -1)
        y = fused_norms.layer_norm(rows, (rows.shape[-1],), None, None, eps).reshape(input.shape)
    bshape = (1, c) + (1,) * (input.ndim - 2)
    if weight is not None:
        y = y * weight.reshape(bshape)
    if bias is not None:
        y = y + bias.reshape(bshape)
    return y


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """1-D cross-correlation: input (N, C_in, L) or (C_in, L), weight (C_out, C_in/groups, k) -> (N, C_out, OL),
    computed as a conv2d over a height-1 image."""
    _check_tensor(input, "conv1d")
    if input.ndim not in (2, 3):
        raise RuntimeError(
            f"Expected 2D (unbatched) or 3D (batched) input to conv1d, but got input of size: {list(input.shape)}"
        )
    if weight.ndim != 3:
        raise RuntimeError(f"conv1d: weight must be 3-D (C_out, C_in/groups, k), got shape {list(weight.shape)}")

    c = input.shape[-2]
    if groups >= 1 and c != weight.shape[1] * groups:
        raise RuntimeError(
            f"Given groups={groups}, weight of size {list(weight.shape)}, expected input{list(input.shape)} to have "
            f"{weight.shape[1] * groups} channels, but got {c} channels instead"
        )
    pad = padding if isinstance(padding, str) else (0, _single(padding, "padding"))
    out = conv2d(input.unsqueeze(-2), weight.unsqueeze(-2), bias, (1, _single(stride, "stride")), pad,
                 (1, _single(dilation, "dilation")), groups)  # fmt: skip
    return out.squeeze(-2)


def prelu(input, weight):
    """x for x > 0, weight·x otherwise; weight has 1 or C (input.shape[1]) elements.

    At x = 0 the input's gradient is weight (PyTorch's prelu backward takes the x <= 0 branch), not
    1 + weight as the sum of the two clamps would give.
    """
    _check_tensor(input, "prelu")
    if weight.numel() != 1 and (input.ndim < 2 or weight.numel() != input.shape[1]):
        raise RuntimeError(
            f"prelu: mismatch of parameter numbers ({weight.numel()}) and input channel size "
            f"({input.shape[1] if input.ndim > 1 else 1}); input shape {tuple(input.shape)}"
        )
    w = weight.reshape((1, -1) + (1,) * (input.ndim - 2)) if weight.numel() != 1 else weight.reshape(())
    return where(input > 0, input, w * input)


def hardsigmoid(input, inplace=False):
    """relu6(x + 3) / 6; the gradient 1/6 only where -3 < x < 3 (as PyTorch's hardsigmoid_backward: none for NaN)."""
    return _inplace(input, ops.Clamp.apply(input + 3.0, lo=0.0, hi=6.0) / 6.0, inplace, "hardsigmoid_")


def hardswish(input, inplace=False):
    """x · relu6(x + 3) / 6."""
    return _inplace(input, input * (input + 3.0).clamp(0.0, 6.0) / 6.0, inplace, "hardswish_")


def softsign(input):
    """x / (1 + |x|)."""
    return input / (input.abs() + 1.0)


def glu(input, dim=-1):
    """a · σ(b) where (a, b) are the two halves of ``input`` along ``dim``."""
    d = dim % max(input.ndim, 1)
    if input.ndim == 0 or input.shape[d] % 2:
        n = input.shape[d] if input.ndim else 0
        raise RuntimeError(f"glu: Halving dimension must be even, but dimension {d} is size {n}")
    a, b = input.chunk(2, d)
    return a * sigmoid(b)


def cosine_similarity(x1, x2, dim=1, eps=1e-8):
    """Σ (x1/max(‖x1‖, eps)) · (x2/max(‖x2‖, eps)) along ``dim`` (x1, x2 broadcast)."""
    a, b = x1, x2
    if a.shape != b.shape:
        try:
            shape = np.broadcast_shapes(a.shape, b.shape)
        except ValueError:
            raise RuntimeError(
                f"cosine_similarity: x1 of shape {tuple(a.shape)} and x2 of shape {tuple(b.shape)} do not broadcast"
            ) from None
        a, b = a.expand(*shape), b.expand(*shape)
    na = a.norm(2, dim, keepdim=True).clamp(min=eps)
    nb = b.norm(2, dim, keepdim=True).clamp(min=eps)
    return ((a / na) * (b / nb)).sum(dim)


def pairwise_distance(x1, x2, p=2.0, eps=1e-6, keepdim=False):
    """‖x1 - x2 + eps‖_p over the last dim."""
    return (x1 - x2 + eps).norm(p, -1, keepdim=keepdim)


# ---------------------------------------------------------------- interpolate


def _resize_scales(input, size, scale_factor, n_sp, recompute_scale_factor=None):
    """(output sizes, scales): the scale maps an output position to the input's, 1/scale_factor when a
    scale_factor is given (and not ``recompute_scale_factor``), else in/out, as PyTorch computes it."""
    if (size is None) == (scale_factor is None):
        if size is None:
            raise ValueError("interpolate: either size or scale_factor should be defined, not both and not neither")
        raise ValueError("interpolate: only one of size or scale_factor should be defined, not both and not neither")
    sp = input.shape[2:]
    if size is not None:
        if recompute_scale_factor:
            raise ValueError("recompute_scale_factor is not meaningful with an explicit size.")
        out = (int(size),) * n_sp if isinstance(size, numbers.Integral) else tuple(int(s) for s in size)
        if len(out) != n_sp:
            raise ValueError(f"interpolate: size {size} needs {n_sp} entries for input of shape {tuple(input.shape)}")
        return out, tuple(i / o for i, o in zip(sp, out))
    sf = (float(scale_factor),) * n_sp if isinstance(scale_factor, numbers.Number) else tuple(map(float, scale_factor))
    if len(sf) != n_sp:
        raise ValueError(f"interpolate: scale_factor {scale_factor} must have {n_sp} entries")
    out = tuple(int(math.floor(i * f)) for i, f in zip(sp, sf))
    if recompute_scale_factor:  # the scale is recomputed from the (floored) output size
        return out, tuple(i / o if o else 0.0 for i, o in zip(sp, out))
    return out, tuple(1.0 / f for f in sf)


#: The interpolating modes and the number of spatial dims each takes (PyTorch's).
_LINEAR_MODES = {"linear": 1, "bilinear": 2, "bicubic": 2, "trilinear": 3}
INTERPOLATE_MODES = ("nearest", "nearest-exact", *_LINEAR_MODES)
_CUBIC_A = -0.75  # PyTorch's (and OpenCV's) cubic convolution coefficient


def _cubic_weights(t):
    """The 4 cubic-convolution weights (Keys, A = -0.75) of the samples at offsets -1, 0, 1, 2 from ⌊pos⌋, for
    t = pos - ⌊pos⌋: w(x) = (A+2)|x|³ - (A+3)|x|² + 1 for |x| <= 1, A|x|³ - 5A|x|² + 8A|x| - 4A for 1 < |x| < 2."""
    A = _CUBIC_A

    def near(x):
        return ((A + 2) * x - (A + 3)) * x * x + 1

    def far(x):
        return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A

    return far(t + 1), near(t), near(1 - t), far(2 - t)


def _source_positions(mode, n_in, n_out, sc, align_corners):
    """Every output position's (fractional) source position along one dim, in float64."""
    dst = np.arange(n_out, dtype=np.float64)
    if align_corners:
        return dst * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(n_out)
    pos = (dst + 0.5) * sc - 0.5
    return pos if mode == "bicubic" else np.maximum(pos, 0.0)  # cubic keeps negative positions (PyTorch)


def interpolate(input, size=None, scale_factor=None, mode="nearest", align_corners=None, recompute_scale_factor=None,
                antialias=False):  # fmt: skip
    """Resize the spatial dims of (N, C, *spatial) to ``size`` or ``floor(in · scale_factor)``, as PyTorch.

    With ``scale`` = 1/scale_factor when ``scale_factor`` is given (in/out for ``size`` or
    ``recompute_scale_factor=True``), output position j reads input position
      - "nearest": ⌊j·scale⌋;  "nearest-exact": ⌊(j + ½)·scale⌋ (both clamped to the last; any spatial dims);
      - "linear" (3-D input), "bilinear" (4-D), "trilinear" (5-D): the linear blend of the two samples around
        p = (j + ½)·scale - ½ (clamped at 0), or p = j·(in-1)/(out-1) with ``align_corners=True``;
      - "bicubic" (4-D): Keys' cubic convolution (A = -0.75) of the four samples ⌊p⌋-1 .. ⌊p⌋+2, indices clamped
        to the border, p unclamped.
    Each dim is resized in turn (the modes are separable); gradients flow through the gathers and blends.
    Example: ``F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)`` on (N, C, H, W).
    """
    if mode not in INTERPOLATE_MODES:
        raise NotImplementedError(
            f"Input Error: Only 3D, 4D and 5D input Tensors supported (got {input.ndim}D) for the modes: "
            f"{' | '.join(INTERPOLATE_MODES)} (got {mode})"
        )
    if input.ndim < 3 or input.ndim > 5:
        raise NotImplementedError(f"Input Error: Only 3D, 4D and 5D input Tensors supported (got {input.ndim}D) "
                                  f"for the modes: {' | '.join(INTERPOLATE_MODES)} (got {mode}); input shape "
                                  f"{tuple(input.shape)}")  # fmt: skip
    n_sp = input.ndim - 2
    if mode in _LINEAR_MODES and _LINEAR_MODES[mode] != n_sp:
        raise NotImplementedError(f"Got {input.ndim}D input, but {mode} mode needs {_LINEAR_MODES[mode] + 2}D input "
                                  f"(input shape {tuple(input.shape)})")  # fmt: skip
    if mode not in _LINEAR_MODES and align_corners is not None:
        raise ValueError(
            "align_corners option can only be set with the interpolating modes: linear | bilinear | bicubic | trilinear"
        )
    if antialias:
        raise NotImplementedError("interpolate: antialias=True is not supported by conch")
    out_size, scales = _resize_scales(input, size, scale_factor, n_sp, recompute_scale_factor)
    if any(o <= 0 for o in out_size):
        raise ValueError(f"interpolate: output size {out_size} must be positive (input {tuple(input.shape)})")
    xp = xp_of(input._data)
    x = input

    def take(d, idx):
        return x.index_select(d, Tensor._make(xp.asarray(idx)))

    for i, (n_in, n_out, sc) in enumerate(zip(input.shape[2:], out_size, scales)):
        d = 2 + i
        if mode in ("nearest", "nearest-exact"):
            dst = np.arange(n_out, dtype=np.float64) + (0.5 if mode == "nearest-exact" else 0.0)
            x = take(d, np.minimum(np.floor(dst * sc).astype(np.int64), n_in - 1))
            continue
        pos = _source_positions(mode, n_in, n_out, sc, align_corners)
        i0 = np.floor(pos).astype(np.int64)
        t = pos - i0
        bcast = (-1,) + (1,) * (input.ndim - d - 1)
        if mode == "bicubic":
            ws = [Tensor._make(xp.asarray(w.reshape(bcast), dtype=x.dtype)) for w in _cubic_weights(t)]
            parts = [take(d, np.clip(i0 + k - 1, 0, n_in - 1)) * w for k, w in enumerate(ws)]
            x = parts[0] + parts[1] + parts[2] + parts[3]
            continue
        i0 = np.minimum(i0, n_in - 1)
        w = Tensor._make(xp.asarray((pos - i0).reshape(bcast), dtype=x.dtype))
        a, b = take(d, i0), take(d, np.minimum(i0 + 1, n_in - 1))
        x = a + (b - a) * w
    return x


def _conv_transposend(name, nd, input, weight, bias, stride, padding, output_padding, groups, dilation):
    """conv_transpose2d and conv_transpose3d (see conv_transpose2d)."""
    _check_tensor(input, name)
    input, weight, bias = cast_for("conv2d", input, weight, bias)
    unbatched = input.ndim == nd + 1
    if unbatched:
        input = input.unsqueeze(0)
    if input.ndim != nd + 2 or weight.ndim != nd + 2:
        raise RuntimeError(
            f"{name}: expected a {nd + 1}-D or {nd + 2}-D input and a {nd + 2}-D weight (C_in, C_out/groups, "
            f"{_KERNEL[nd]}), got input {list(input.shape)} and weight {list(weight.shape)}"
        )
    n, c, *size = input.shape
    cin, cg, *ks = weight.shape
    if groups < 1 or cin % groups:
        raise RuntimeError(f"{name}: weight's C_in ({cin}) must be divisible by groups ({groups})")
    if c != cin:
        raise RuntimeError(
            f"Given transposed=1, weight of size {list(weight.shape)}, expected input{list(input.shape)} to have "
            f"{cin} channels, but got {c} channels instead"
        )
    s, d = _ntuple(stride, nd, "stride"), _ntuple(dilation, nd, "dilation")
    p, op = _ntuple(padding, nd, "padding"), _ntuple(output_padding, nd, "output_padding")
    if any(o >= max(si, di) or o < 0 for o, si, di in zip(op, s, d)):
        raise ValueError(f"output padding {op} must be smaller than either stride {s} or dilation {d}")
    geo = zip(size, s, p, d, ks, op)
    out_sz = tuple((i - 1) * si - 2 * pi + di * (k - 1) + o + 1 for i, si, pi, di, k, o in geo)
    if min(out_sz) <= 0:
        raise RuntimeError(f"{name}: output size {out_sz} is too small for input {list(input.shape)}")
    cout, kk, npos = cg * groups, math.prod(ks), math.prod(size)
    k = cg * kk
    wt = weight.reshape(groups, cin // groups, k).transpose(-1, -2).expand(n, groups, k, cin // groups)
    cols = (wt @ input.reshape(n, groups, cin // groups, npos)).reshape(n, cout * kk, npos)
    # the convolution whose im2col reads this output's (padded) positions at the input's positions
    need = tuple(di * (kk_ - 1) + si * (i - 1) + 1 for di, kk_, si, i in zip(d, ks, s, size))
    pads = tuple(w for i in range(nd) for w in (p[i], max(need[i] - out_sz[i] - p[i], 0)))
    y = ops.Col2im.apply(cols, geom=(tuple(ks), s, d, pads, tuple(size)), in_shape=(n, cout) + out_sz)
    if bias is not None:
        y = y + bias.to(dtype=y.dtype).reshape((1, cout) + (1,) * nd)
    return y.squeeze(0) if unbatched else y


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """The adjoint of conv2d (a "deconvolution"): input (N, C_in, H, W), weight (C_in, C_out/groups, kh, kw) ->
    (N, C_out, OH, OW) with OH = (H-1)·sh - 2·ph + dh·(kh-1) + output_padding_h + 1.

    Each input pixel's weighted kernel is added onto the output: the products Wᵀ x of all pixels are one
    batched matmul, and col2im (the adjoint of conv2d's im2col) sums them into place.
    """
    return _conv_transposend("conv_transpose2d", 2, input, weight, bias, stride, padding, output_padding, groups,
                             dilation)  # fmt: skip


def conv_transpose3d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """The adjoint of conv3d: input (N, C_in, D, H, W), weight (C_in, C_out/groups, kd, kh, kw) ->
    (N, C_out, OD, OH, OW) with OD = (D-1)·sd - 2·pd + dd·(kd-1) + output_padding_d + 1 (likewise H, W);
    one batched matmul Wᵀx, then col2im, as conv_transpose2d.
    """
    return _conv_transposend("conv_transpose3d", 3, input, weight, bias, stride, padding, output_padding, groups,
                             dilation)  # fmt: skip


# ---------------------------------------------------------------- 1-D pooling and channel dropout


def _as_2d(input, name):
    if input.ndim not in (2, 3):
        raise RuntimeError(f"{name}: expected 2-D (C, L) or 3-D (N, C, L) input, got size {list(input.shape)}")
    return input.unsqueeze(-2)  # (.., C, 1, L): the 2-D kernels with a height-1 window


def max_pool1d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """Max over windows of (N, C, L) or (C, L), as max_pool2d over a height-1 image (indices index L)."""
    k = _single(kernel_size, "kernel_size")
    s = k if stride is None or stride == [] else _single(stride, "stride")
    out = max_pool2d(_as_2d(input, "max_pool1d"), (1, k), (1, s), (0, _single(padding, "padding")),
                     (1, _single(dilation, "dilation")), ceil_mode, return_indices)  # fmt: skip
    if return_indices:
        return out[0].squeeze(-2), out[1].squeeze(-2)
    return out.squeeze(-2)


def avg_pool1d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    """Mean over windows of (N, C, L) or (C, L), with avg_pool2d's divisor rules."""
    k = _single(kernel_size, "kernel_size")
    s = k if stride is None or stride == [] else _single(stride, "stride")
    x = _as_2d(input, "avg_pool1d")
    return avg_pool2d(x, (1, k), (1, s), (0, _single(padding, "padding")), ceil_mode, count_include_pad).squeeze(-2)


def adaptive_avg_pool1d(input, output_size):
    """Mean over PyTorch's adaptive windows of L: (N, C, L) -> (N, C, output_size)."""
    x = _as_2d(input, "adaptive_avg_pool1d")
    return adaptive_avg_pool2d(x, (1, _single(output_size, "output_size"))).squeeze(-2)


def _max_unpool(name, nd, input, indices, kernel_size, stride, padding, output_size):
    """Scatter ``input`` into zeros at the flat positions ``indices`` (from max_pool with return_indices)."""
    _check_tensor(input, name)
    k = _ntuple(kernel_size, nd, "kernel_size")
    s = k if stride is None else _ntuple(stride, nd, "stride")
    p = _ntuple(padding, nd, "padding")
    if tuple(indices.shape) != tuple(input.shape):
        raise RuntimeError(
            f"{name}: Expected shape of indices to be same as that of the input tensor ({tuple(input.shape)}) "
            f"but got indices tensor with shape: {tuple(indices.shape)}"
        )
    if input.ndim not in (nd + 1, nd + 2):
        raise RuntimeError(f"{name}: expected {nd + 1}-D or {nd + 2}-D input, got size {list(input.shape)}")
    unbatched = input.ndim == nd + 1
    x, idx = (input.unsqueeze(0), indices.unsqueeze(0)) if unbatched else (input, indices)
    n, c, *size = x.shape
    default = tuple((size[i] - 1) * s[i] - 2 * p[i] + k[i] for i in range(nd))
    if output_size is None:
        out = default
    else:
        out = tuple(int(v) for v in tuple(output_size))
        if len(out) == nd + 2:
            out = out[2:]
        if len(out) != nd:
            raise ValueError(f"{name}: output_size must have {nd} or {nd + 2} elements, got {output_size}")
        for i in range(nd):
            if not default[i] - s[i] < out[i] < default[i] + s[i]:
                raise ValueError(
                    f"{name}: invalid output_size {output_size} (dim {i} must be between {default[i] - s[i] + 1} "
                    f"and {default[i] + s[i] - 1})"
                )
    m = math.prod(out)
    flat = idx.reshape(n, c, -1)
    lo, hi = (int(flat.min()), int(flat.max())) if flat.numel() else (0, 0)
    if lo < 0 or hi >= m:
        raise RuntimeError(
            f"{name}: Found an invalid max index: {hi if hi >= m else lo} (output volumes are of size "
            f"{'x'.join(map(str, out))})"
        )
    base = Tensor._make(xp_of(x._data).zeros((n, c, m), dtype=x.dtype))
    # y[n, c, idx[j]] = x[n, c, j];  dx[n, c, j] = dy[n, c, idx[j]] (the scatter's gather)
    y = base.scatter(2, flat, x.reshape(n, c, -1)).reshape((n, c) + out)
    return y.squeeze(0) if unbatched else y


def max_unpool1d(input, indices, kernel_size, stride=None, padding=0, output_size=None):
    """Partial inverse of max_pool1d: (N, C, L) -> (N, C, (L-1)·s - 2p + k) (or ``output_size``), zeros except
    each value put back at its max index."""
    return _max_unpool("max_unpool1d", 1, input, indices, kernel_size, stride, padding, output_size)


def max_unpool2d(input, indices, kernel_size, stride=None, padding=0, output_size=None):
    """Partial inverse of max_pool2d: (N, C, H, W) -> (N, C, (H-1)·sh - 2ph + kh, ...) (or ``output_size``);
    ``indices`` index the output's H·W plane, as max_pool2d(return_indices=True) gives them."""
    return _max_unpool("max_unpool2d", 2, input, indices, kernel_size, stride, padding, output_size)


def max_unpool3d(input, indices, kernel_size, stride=None, padding=0, output_size=None):
    """Partial inverse of max_pool3d: (N, C, D, H, W) -> (N, C, (D-1)·sd - 2pd + kd, ...) (or ``output_size``)."""
    return _max_unpool("max_unpool3d", 3, input, indices, kernel_size, stride, padding, output_size)


def _channel_dropout(input, p, training, inplace, name, batched_ndim):
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if input.ndim not in (batched_ndim - 1, batched_ndim):
        raise RuntimeError(
            f"{name}: expected {batched_ndim - 1}-D (unbatched) or {batched_ndim}-D (batched) input, got size "
            f"{list(input.shape)}"
        )
    if not training or p == 0.0:
        return input
    from conch.kernels.dropout import dropout_mask

    lead = input.shape[: input.ndim - (batched_ndim - 2)]  # (N, C) or (C,): one draw per channel
    n = int(np.prod(lead, dtype=np.int64))
    seed, offset = philox_seed_offset(n)
    keep = dropout_mask(lead, p, seed, offset, xp=xp_of(input._data)) if p < 1 else np.zeros(lead, bool)
    scale = 0.0 if p == 1 else 1.0 / (1.0 - p)
    m = (keep * scale).astype(input.dtype).reshape(lead + (1,) * (batched_ndim - 2))
    return _inplace(input, input * Tensor._make(xp_of(input._data).asarray(m)), inplace, f"{name}_")


def dropout1d(input, p=0.5, training=True, inplace=False):
    """Zero whole channels of (N, C, L) or (C, L) with probability p, scaling the rest by 1/(1-p)."""
    return _channel_dropout(input, p, training, inplace, "dropout1d", 3)


def dropout2d(input, p=0.5, training=True, inplace=False):
    """Zero whole channels of (N, C, H, W) with probability p, scaling the rest by 1/(1-p). A 3-D input is taken
    as (N, C, L) with a warning, as PyTorch does."""
    if input.ndim == 3:
        import warnings

        warnings.warn(
            "dropout2d: Received a 3D input to dropout2d and assuming that channel-wise 1D dropout behavior is "
            "desired - input is interpreted as shape (N, C, L), where C is the channel dim.",
            UserWarning,
            stacklevel=2,
        )
        return _channel_dropout(input, p, training, inplace, "dropout2d", 3)
    return _channel_dropout(input, p, training, inplace, "dropout2d", 4)


def instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                  momentum=0.1, eps=1e-5):  # fmt: skip
    """Normalise each (sample, channel) of (N, C, *) over its positions (or with running statistics when
    ``use_input_stats=False``), then per-channel ``weight``/``bias``."""
    if not use_input_stats:
        return batch_norm(input, running_mean, running_var, weight, bias, False, 0.0, eps)
    if running_mean is not None and running_var is not None and input.numel():
        with no_grad():
            # the per-instance means and unbiased variances, averaged over the batch (PyTorch's update)
            flat = input.reshape(input.shape[0], input.shape[1], -1)
            mean, var = flat.mean(-1).mean(0), flat.var(-1, unbiased=True).mean(0)
            running_mean.mul_(1 - momentum).add_(mean.to(dtype=running_mean.dtype) * momentum)
            running_var.mul_(1 - momentum).add_(var.to(dtype=running_var.dtype) * momentum)
    return group_norm(input, input.shape[1], weight, bias, eps)


# ---------------------------------------------------------------- unfold / fold (im2col / col2im)


def _fold_geom(name, spatial, kernel_size, dilation, padding, stride):
    k, d, p, s = (_pair(v, n) for v, n in ((kernel_size, "kernel_size"), (dilation, "dilation"),
                                            (padding, "padding"), (stride, "stride")))  # fmt: skip
    if min(k) < 1 or min(d) < 1 or min(s) < 1 or min(p) < 0:
        raise ValueError(f"{name}: kernel_size, dilation and stride must be positive and padding non-negative")
    out = tuple((n + 2 * pi - di * (ki - 1) - 1) // si + 1 for n, pi, di, ki, si in zip(spatial, p, d, k, s))
    if min(out) < 1:
        raise RuntimeError(f"{name}: the {k} kernel (dilation {d}) does not fit the padded input of size {spatial}")
    return (k, s, d, (p[0], p[0], p[1], p[1]), out)


def unfold(input, kernel_size, dilation=1, padding=0, stride=1):
    """Sliding blocks (im2col): (N, C, H, W) -> (N, C·kh·kw, L) with L the number of block positions, as
    torch.nn.functional.unfold; the gradient sums the blocks back (fold)."""
    if input.ndim not in (3, 4):
        raise RuntimeError(f"unfold: expected 3-D or 4-D input, got size {list(input.shape)}")
    x = input.unsqueeze(0) if input.ndim == 3 else input
    geom = _fold_geom("unfold", x.shape[2:], kernel_size, dilation, padding, stride)
    out = ops.Im2col.apply(x, geom=geom)
    return out.squeeze(0) if input.ndim == 3 else out


def fold(input, output_size, kernel_size, dilation=1, padding=0, stride=1):
    """The adjoint of unfold (col2im): (N, C·kh·kw, L) -> (N, C, H, W), overlapping block entries summed."""
    if input.ndim not in (2, 3):
        raise RuntimeError(f"fold: expected 2-D or 3-D input, got size {list(input.shape)}")
    x = input.unsqueeze(0) if input.ndim == 2 else input
    hw = _pair(output_size, "output_size")
    geom = _fold_geom("fold", hw, kernel_size, dilation, padding, stride)
    kk, n_blocks = geom[0][0] * geom[0][1], geom[4][0] * geom[4][1]
    if x.shape[1] % kk or x.shape[2] != n_blocks:
        raise RuntimeError(
            f"fold: expected input of size (N, C·{kk}, {n_blocks}) for output_size {hw} and kernel_size {geom[0]}, "
            f"got {list(input.shape)}"
        )
    out = ops.Col2im.apply(x, geom=geom, in_shape=(x.shape[0], x.shape[1] // kk) + hw)
    return out.squeeze(0) if input.ndim == 2 else out
