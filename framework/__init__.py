"""conch: a deep learning framework for NVIDIA GPUs with a PyTorch-style API, CuPy tensors and Triton kernels.

Example::

    import conch
    x = conch.randn(64, 10)
    model = conch.nn.Sequential(conch.nn.Linear(10, 32, activation="gelu"), conch.nn.Linear(32, 1))
    loss = model(x).pow(2).mean()
    loss.backward()
"""

from __future__ import annotations

import importlib

from conch.kernels import _malloc

# CPU threads (the elementwise pool and BLAS, PyTorch's names): conch.kernels._threads imports only the stdlib
from conch.kernels._threads import (
    get_num_interop_threads,
    get_num_threads,
    set_num_interop_threads,
    set_num_threads,
)

from . import _dtype, accelerator, autograd, backends, cuda
from ._backend import device, xp_of
from ._dtype import (
    bool_,
    double,
    float16,
    float32,
    float64,
    get_default_dtype,
    half,
    int8,
    int16,
    int32,
    int64,
    long,
    set_default_dtype,
    uint8,
)
from ._dtype import float as float  # noqa: PLC0414
from ._dtype import int as int  # noqa: PLC0414
from .autograd.grad_mode import enable_grad, inference_mode, is_grad_enabled, no_grad, set_grad_enabled
from .backends import get_float32_matmul_precision, set_float32_matmul_precision
from .creation import (
    arange,
    as_tensor,
    empty,
    empty_like,
    eye,
    from_dlpack,
    from_numpy,
    full,
    full_like,
    get_rng_state,
    initial_seed,
    linspace,
    logspace,
    manual_seed,
    normal,
    ones,
    ones_like,
    rand,
    rand_like,
    randint,
    randint_like,
    randn,
    randn_like,
    randperm,
    seed,
    set_rng_state,
    tensor,
    zeros,
    zeros_like,
)
from .fused.matmul import matmul
from .fused.softmax import log_softmax, softmax
from .serialization import load as _load
from .serialization import map_location_device as _map_location_device
from .serialization import save as _save
from .tensor import Size, Tensor, cat, concat, concatenate, cumsum, maximum, minimum, split, stack, where
from .tensor_api import (  # the attribute sweep of issue #14
    addmm,
    allclose,
    atleast_1d,
    atleast_2d,
    atleast_3d,
    baddbmm,
    bernoulli,
    bincount,
    block_diag,
    bmm,
    broadcast_shapes,
    broadcast_tensors,
    bucketize,
    can_cast,
    cartesian_prod,
    cdist,
    column_stack,
    diag,
    dist,
    dstack,
    einsum,
    equal,
    ger,
    hstack,
    isclose,
    isin,
    meshgrid,
    mm,
    multinomial,
    outer,
    promote_types,
    result_type,
    row_stack,
    rsub,
    searchsorted,
    set_printoptions,
    tensordot,
    tril_indices,
    triu_indices,
    unique,
    vstack,
)
from .tensor_api import attach as _attach_tensor_methods
from .tensor_api import numpy_kwargs as _numpy_kwargs

# The one place Tensor gets the methods that need the layers above tensor.py (fused kernels, creation, the rest of
# PyTorch's Tensor API): conch.tensor_api.TensorMethods, copied onto Tensor before anything can use it.
_attach_tensor_methods(Tensor)

# torch.cat(xs, axis=0), torch.softmax(x, axis=-1): PyTorch's NumPy-style aliases for the functions defined outside
# Tensor too (the conch.NAME functions below call the methods, which take them already)
cat, concat, concatenate, stack, split, cumsum = (_numpy_kwargs(f) for f in (cat, concat, concatenate, stack, split,
                                                                           cumsum))  # fmt: skip
softmax, log_softmax = _numpy_kwargs(softmax), _numpy_kwargs(log_softmax)

globals()["bool"] = bool_  # conch.bool, as torch.bool (assigned so the builtin stays usable in this module)

__version__ = "0.1.0"

_LAZY = {
    "nn": "conch.nn", "optim": "conch.optim", "amp": "conch.amp", "checkpoint": "conch.checkpoint",
    "data": "conch.data", "models": "conch.models", "kernels": "conch.kernels", "bench": "conch.bench",
    "distributed": "conch.distributed", "utils": "conch.utils",
}  # fmt: skip


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(_LAZY[name])
    if name in ("autocast", "GradScaler"):  # torch.autocast spelling; amp loads on first use
        return getattr(importlib.import_module("conch.amp"), name)
    if name == "bfloat16":  # conch.bfloat16: ml_dtypes (0.5-0.8 s) loads on first use (conch._dtype)
        return _dtype.bfloat16
    raise AttributeError(f"module 'conch' has no attribute {name!r}")


def _method(name):
    def fn(t, *args, **kwargs):
        if not isinstance(t, Tensor):
            t = tensor(t)
        return getattr(t, name)(*args, **kwargs)

    fn.__name__ = name
    fn.__doc__ = f"``conch.{name}(t, ...)`` is ``t.{name}(...)``."
    return fn


for _n in (
    "sum", "mean", "var", "std", "amax", "amin", "max", "min", "argmax", "argmin", "exp", "log", "sqrt", "rsqrt",
    "abs", "sin", "cos", "tanh", "sigmoid", "relu", "pow", "clamp", "clip", "reshape", "flatten", "transpose",
    "permute", "unsqueeze", "squeeze", "expand", "masked_fill", "sign", "square", "logsumexp", "all", "any",
    "chunk", "unbind", "flip", "norm", "log1p", "expm1", "numel", "neg", "t", "clone", "detach",
    "floor", "ceil", "round", "trunc", "frac", "fix", "erf", "isinf", "isposinf", "isneginf", "nan_to_num", "lerp",
    "addcmul", "addcdiv", "clamp_min", "clamp_max", "atan2", "arctan2", "logical_and", "logical_or", "logical_xor",
    "logical_not", "prod", "cumprod", "count_nonzero", "aminmax", "std_mean", "var_mean", "median", "kthvalue",
    "sort", "argsort", "msort", "topk", "gather", "take_along_dim", "scatter", "scatter_add", "index_select",
    "masked_select", "nonzero", "argwhere", "narrow", "select", "movedim", "moveaxis", "diagonal", "tril", "triu",
    "roll", "tile", "diff", "nelement", "repeat_interleave",
    "tan", "sinh", "cosh", "asin", "acos", "atan", "asinh", "acosh", "atanh", "arcsin", "arccos", "arctan", "arcsinh",
    "arccosh", "arctanh", "log2", "log10", "exp2", "fmod", "remainder", "copysign", "logaddexp", "hypot",
    "bitwise_not", "bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_left_shift", "bitwise_right_shift", "div",
    "divide", "true_divide", "floor_divide", "mul", "multiply", "cummax", "cummin", "logcumsumexp", "index_add",
    "index_fill", "masked_scatter", "reciprocal", "negative",
    "scatter_reduce",
    # the attribute sweep of issue #14
    "add", "sub", "subtract", "eq", "ne", "lt", "le", "gt", "ge", "greater", "greater_equal", "less", "less_equal",
    "not_equal", "zero_", "fill_", "abs_", "relu_", "sigmoid_", "tanh_", "exp_", "sqrt_", "clamp_", "clip_",
    "swapaxes", "swapdims", "broadcast_to", "is_floating_point", "is_complex", "is_nonzero", "is_same_size",
    "is_signed", "ravel", "unflatten", "dot", "vdot", "inner", "mv", "addmv", "addr", "addbmm", "trace", "kron",
    "cross", "xlogy", "logit", "erfc", "deg2rad", "rad2deg", "fmax", "fmin", "heaviside", "sinc", "signbit",
    "float_power", "logaddexp2", "ldexp", "nansum", "nanmean", "fliplr", "flipud", "rot90", "take", "tensor_split",
    "hsplit", "vsplit", "dsplit", "split_with_sizes", "diag_embed", "diagflat", "index_copy", "index_put", "index_put_",
    "unique_consecutive", "positive", "sgn", "absolute", "histc", "narrow_copy", "get_device", "cov", "corrcoef",
    "quantile", "nanquantile", "renorm", "select_scatter", "slice_scatter", "diagonal_scatter", "gcd", "lcm",
    "hardshrink", "frexp", "nextafter", "conj", "resolve_conj", "resolve_neg", "isreal", "adjoint", "detach_",
    "is_conj", "is_inference", "is_neg", "acos_", "acosh_", "addmv_", "arccos_", "arccosh_", "arcsin_", "arcsinh_",
    "arctan_", "arctanh_", "asin_", "asinh_", "atan_", "atanh_", "ceil_", "clamp_max_", "clamp_min_", "cos_", "cosh_",
    "deg2rad_", "erf_", "erfc_", "exp2_", "expm1_", "fix_", "floor_", "frac_", "gcd_", "lcm_", "ldexp_", "log10_",
    "log1p_", "log2_", "log_", "logit_", "nan_to_num_", "neg_", "negative_", "rad2deg_", "reciprocal_", "round_",
    "rsqrt_", "sin_", "sinc_", "sinh_", "square_", "tan_", "trunc_", "xlogy_", "mode", "nanmedian",
    "erfinv", "lgamma", "digamma", "mvlgamma", "i0", "i0_", "igamma", "igammac",
    "index_reduce", "put", "histogram",
):  # fmt: skip
    if _n not in globals():
        globals()[_n] = _method(_n)
del _n


def isfinite(t):
    return Tensor._make(xp_of(t._data).isfinite(t._data))


def isnan(t):
    return Tensor._make(xp_of(t._data).isnan(t._data))


def compile(model=None, *, fullgraph=False, dynamic=None, backend="inductor", mode=None, options=None, disable=False):
    """``torch.compile``'s name and signature: conch has no graph compiler (its speed comes from the fused
    kernels), so the module or function comes back unchanged and scripts written for PyTorch 2 run as they are.

    Example: ``model = conch.compile(model)`` or ``@conch.compile`` / ``@conch.compile(mode="max-autotune")``.
    """
    if model is None:
        return lambda m: m
    if not callable(model):
        raise TypeError(f"compile expects a Module or a function, got {type(model).__name__}")
    return model


def polygamma(n, input):
    """``torch.polygamma(n, input)``: the n-th derivative of digamma (the order comes first here)."""
    return input.polygamma(n)


def prelu(input, weight):
    """``torch.prelu``: :func:`conch.nn.functional.prelu`."""
    from .nn import functional

    return functional.prelu(input, weight)


def cosine_similarity(x1, x2, dim=1, eps=1e-8):
    """``torch.cosine_similarity``: :func:`conch.nn.functional.cosine_similarity`."""
    from .nn import functional

    return functional.cosine_similarity(x1, x2, dim, eps)


def is_tensor(x):
    return isinstance(x, Tensor)


def save(obj, path):
    return _save(obj, path)


def load(path, map_location=None, weights_only=True, verify=True, *, device=None, mmap=None, **pickle_load_args):  # noqa: F811, E501
    """Read a file written by :func:`save` (safetensors) or by ``torch.save`` back into its structure, with
    ``torch.load``'s arguments.

    ``map_location``: where tensors go (``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``conch.device`` or a dict; see
    :func:`conch.serialization.map_location_device`; for a ``torch.save`` file a dict maps each saved location,
    and locations it does not name load onto the host); ``device`` is conch's earlier name for it.
    ``weights_only``, ``mmap`` and pickle arguments are accepted: a ``torch.save`` file is always read as
    ``weights_only=True`` reads it (tensors, Parameters and plain containers; any other global is refused, see
    :mod:`conch.torch_format`), and safetensors holds only tensors and plain values, so loading never runs code.
    ``verify`` checks the stored CRC-32 checksums.
    """
    if device is not None and map_location is not None:
        raise TypeError("conch.load: give map_location or device, not both")
    dev = _map_location_device(map_location) if device is None else device
    locations = map_location if isinstance(map_location, dict) else None  # a torch.save file maps each location
    return _load(path, device=dev, verify=verify, locations=locations)


# Large CPU temporaries reuse malloc's heap instead of fresh pages every step (kernels/_malloc.py;
# CONCH_MALLOC=system leaves glibc's defaults).
_malloc.tune()
