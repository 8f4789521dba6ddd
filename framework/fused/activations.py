"""The activations kernel's framework side (kernels/activations.py): the Op adapter, its composite fallback and
the name check. ``act(x)`` for one of :data:`ACTIVATIONS`; the composite is what ``create_graph=True`` differentiates.
"""

from __future__ import annotations

import math

import numpy as np

from conch import kernels as K
from conch.kernels._act import act_ref
from conch.kernels._act_names import ACTIVATIONS

from .. import _dtype as D
from .. import ops
from .._backend import _AUTO, _OFF, _RAW_ENV, reference_path
from ..autograd.function import record1
from ..autograd.grad_mode import _enabled
from ..ops import Erf
from ..ops.elementwise import zero_0d
from ..tensor import Tensor
from ._common import FusedOp, _recompute_grads, _res, _t


def _composite_activation(x, name, negative_slope=0.01, alpha=1.0):
    """act(x) from Tensor ops (the create_graph path). Half-precision inputs compute in float32, as the kernel
    does: in float16, gelu_tanh's x³ overflows to inf for |x| > 40 and its derivatives turn NaN."""
    if x.dtype in (D.float16, D.bfloat16):
        return _composite_activation(x.float(), name, negative_slope, alpha).to(dtype=x.dtype)
    if name == "relu":
        return ops.Relu.apply(x)
    if name == "tanh":
        return ops.Tanh.apply(x)
    if name == "sigmoid":
        return ops.Sigmoid.apply(x)
    if name == "silu":
        return x * ops.Sigmoid.apply(x)
    if name == "gelu":
        return x * 0.5 * (1 + Erf.apply(x * (1 / math.sqrt(2))))
    if name == "gelu_tanh":
        return x * 0.5 * (1 + ops.Tanh.apply((x + x * x * x * 0.044715) * math.sqrt(2 / math.pi)))
    if name == "leaky_relu":
        return ops.Relu.apply(x) - ops.Relu.apply(-x) * negative_slope
    if name == "elu":
        neg = (ops.Clamp.apply(x, lo=None, hi=0).exp() - 1) * alpha
        return ops.Relu.apply(x) + neg
    raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)} or None")


class Activation(FusedOp):
    """act(x) on the activations kernel; backward dx = dy · act'(x) (or act'(y) where cheaper)."""

    saves = (0,)

    @staticmethod
    def forward(ctx, x, name, negative_slope, alpha):
        ctx.attrs = (name, negative_slope, alpha)
        y, ctx.res = K.activations.activation_forward(x, name, negative_slope=negative_slope, alpha=alpha)
        return y

    @staticmethod
    def backward(ctx, g):
        if _enabled[0]:
            name, slope, alpha = ctx.attrs
            return _recompute_grads(ctx, lambda x: _composite_activation(x, name, slope, alpha), (g,))
        return _t(K.activations.activation_backward(_res(ctx), g._data))


def activation(x: Tensor, name: str, negative_slope: float = 0.01, alpha: float = 1.0) -> Tensor:
    """``act(x)`` for one of :data:`ACTIVATIONS`; math in float32 for half-precision inputs."""
    if not isinstance(x, Tensor):  # F.relu([1., 2.]) names the argument, as PyTorch, not a missing ``_data``
        raise TypeError(f"{name}(): argument 'input' (position 1) must be Tensor, not {type(x).__name__}")
    fast = _FAST.get(name)
    if fast is not None:  # relu/tanh/sigmoid: the plain op where it computes the same, else _general below
        return fast(x)
    return _general(x, name, negative_slope, alpha)


def _general(x, name, negative_slope=0.01, alpha=1.0):
    """``activation`` on the kernel (any dtype, any dispatch), after ``fast_path``'s common case."""
    if not x.is_floating_point():
        raise TypeError(f"{name} expects a floating-point tensor, got {x.dtype}")
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}")
    return Activation.apply(x, name=name, negative_slope=negative_slope, alpha=alpha)


def fast_path(op, general, array_fn, zeros=None):
    """``f(x)``: relu/tanh/sigmoid as plain Op ``op`` (Relu, Tanh, Sigmoid), or ``general(x)``.

    The plain op runs for float32/float64 NumPy arrays on the kernels' reference path: ``array_fn(d)`` (or
    ``array_fn(d, zeros[dtype])``: relu's ``np.maximum`` with a 0-d zero) is the op's own array forward, the
    same maths as the kernel's reference path, called with no layer in between, and the node is built by
    ``autograd.function.record1`` only when something requires grad: no kernel residuals nor dispatch layers,
    on a (16, 16) tensor half the time of the kernel route. ``general`` takes everything else (half precision,
    integers, CuPy, Triton under the interpreter). Tensor's ``relu``/``tanh``/``sigmoid`` methods are such
    functions (tensor_api.py), and so is ``activation`` for those names. Example::

        tanh = fast_path(ops.Tanh, lambda x: activation(x.float(), "tanh"), np.tanh)
        y = tanh(x)   # x float32 on the CPU: np.tanh(x), y.grad_fn an ops.Tanh node when x requires grad
    """

    def f(x):
        d = x._data
        dt = d.dtype
        if (
            (dt is _F32 or dt is _F64)
            and type(d) is _ND
            and (_env(_TI) in _OFF and _env(_CK) in _AUTO or reference_path(d))
        ):  # reference_path's two environment lookups inlined (a call layer is a tenth of a small op)
            out = array_fn(d) if zeros is None else array_fn(d, zeros[dt])
            if _enabled[0] and (x.requires_grad or x._base is not None):
                return record1(_new(op), x, out)
            return _make(out)
        return general(x)

    return f


def fast(name, general):
    """``fast_path`` for activation ``name`` (relu, tanh or sigmoid) with fallback ``general``."""
    if name == "relu":
        return fast_path(ops.Relu, general, np.maximum, {dt: zero_0d(dt) for dt in (_F32, _F64)})
    if name == "tanh":
        return fast_path(ops.Tanh, general, np.tanh)
    # sigmoid's array forward is act_ref's: ops.Sigmoid's formula (exp(-|x|), split by sign), one compiled pass
    # where Numba is on (kernels/_numba/act.py), five NumPy passes otherwise
    return fast_path(ops.Sigmoid, general, lambda d: act_ref(d, "sigmoid"))


_new = object.__new__
_make = Tensor._make
# _backend.reference_path's test for NumPy arrays, spelled out where a call layer counts: the environment's own
# bytes dict read twice (tests that set the variables take effect at the next op); without that dict, _env's
# answer is never in _OFF and reference_path decides
_env = _RAW_ENV.get if _RAW_ENV is not None else (lambda key: b"?")
_TI, _CK = b"TRITON_INTERPRET", b"CONCH_KERNELS"
_ND = np.ndarray
_F32, _F64 = D.float32, D.float64
_FAST = {name: fast(name, lambda x, name=name: _general(x, name)) for name in ("relu", "tanh", "sigmoid")}
