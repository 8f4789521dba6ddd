"""The matmul kernel's framework side (kernels/matmul.py): ``act(a @ b + bias)`` in one kernel, for ``@``,
``conch.matmul`` and ``F.linear``; shape checks, autocast casts, TF32 from :mod:`conch.backends`.
"""

from __future__ import annotations

import math

import numpy as np

from conch import kernels as K
from conch.kernels._act import relu_select
from conch.kernels._act_names import ACTIVATIONS
from conch.kernels._threads import mm, sum_rows

from .. import _dtype as D
from .. import ops
from .._backend import is_cupy_array, reference_path, xp_of
from ..amp.autocast_mode import _state as _autocast
from ..amp.autocast_mode import cast_for
from ..autograd.function import binary, check_guards
from ..autograd.grad_mode import _enabled
from ..backends import _tf32
from ..tensor import Tensor, _as_tensor, _check_devices
from ._common import FusedOp, _no_bias, _recompute_grads, _res, _t
from .activations import _AUTO, _CK, _OFF, _TI, _composite_activation, _env


class MatMulAct(FusedOp):
    """out = act(a @ b + bias) on the matmul kernel (bias and activation fused in the epilogue).

    Backward: dZ = dout · act'(Z), da = dZ @ bᵀ, db = aᵀ @ dZ, dbias = Σ_rows dZ.
    """

    saves = (0, 1, 2)

    @staticmethod
    def forward(ctx, a, b, bias, act, negative_slope, alpha=1.0, plain=False):
        ctx.act, ctx.slope, ctx.alpha, ctx.has_bias = act, negative_slope, alpha, bias.size > 0
        if plain:  # the fast path of matmul() and linear(): see _plain_ok
            ctx.res = None
            if a.ndim == 2:
                out = mm(a, b)
            else:  # (..., K) @ (K, N): one 2-D product over every row, as the kernel's reference path folds them
                out = mm(_rows(a), b).reshape(a.shape[:-1] + b.shape[1:])
            if ctx.has_bias:
                out += bias  # a fresh product: add in place
            if act is not None:  # (Sequential fuses Linear + ReLU/Tanh/Sigmoid) backward reads the output y,
                # which linear() guards against in-place writes; the same maths as the plain ops
                ctx.y = out = _PLAIN_ACTS[act].forward(None, out)
            return out
        out, ctx.res = K.matmul.matmul_forward(
            a, b, bias if ctx.has_bias else None, act, negative_slope=negative_slope, alpha=alpha,
            allow_tf32=_tf32[0],
        )  # fmt: skip
        return out

    @staticmethod
    def backward(ctx, g):
        if _enabled[0]:
            act, slope, alpha, has_bias = ctx.act, ctx.slope, ctx.alpha, ctx.has_bias

            def composite(a, b, bias):
                # half precision: the pre-activation in float32, as the kernel's epilogue has it; rounded to
                # float16 first, z + bias can change sign and move a leaky_relu/relu kink (wrong double backward)
                dt = a.dtype
                low = dt in (D.float16, D.bfloat16) and act is not None
                if low:
                    a, b, bias = a.float(), b.float(), bias.float()
                z = ops.MatMul.apply(a, b)
                if has_bias:
                    z = z + bias
                if act is None:
                    return z
                out = _composite_activation(z, act, slope, alpha)
                return out.to(dtype=dt) if low else out

            return _recompute_grads(ctx, composite, (g,))
        n = ctx.needs_input_grad
        if ctx.res is None and not ctx._freed:  # the plain product (+ bias): its inputs are saved tensors
            a, b = ctx.saved_tensor(0)._data, ctx.saved_tensor(1)._data
            gd = g._data
            act = ctx.act
            if act is not None:  # dz = g·act'(z), from the output (PyTorch's relu/tanh/sigmoid save it too)
                check_guards(ctx)
                y = ctx.y
                if act == "relu":
                    gd = relu_select(y, gd)  # where(y > 0, g, 0) bit for bit, branch-free
                elif act == "tanh":
                    gd = gd * (1 - y * y)
                else:
                    gd = gd * y * (1 - y)
            a2 = _rows(a)
            g2 = gd.reshape(a2.shape[0], b.shape[1])  # (not -1: N may be 0)
            da = mm(g2, b.T).reshape(a.shape) if n[0] else None
            db = None
            if n[1]:  # in b's own layout: linear's b is weight.T, and weight's gradient must come back contiguous
                db = mm(g2.T, a2).T if b.flags.f_contiguous and not b.flags.c_contiguous else mm(a2.T, g2)
            return _t(da), _t(db), _t(sum_rows(g2) if n[2] else None)  # (an empty bias of N = 0: its empty grad)
        da, db, dbias = K.matmul.matmul_backward(_res(ctx), g._data, (n[0], n[1], n[2] and ctx.has_bias))
        if n[2] and not ctx.has_bias:  # a real bias of N = 0 elements looks like "no bias": its gradient is empty
            dbias = xp_of(g._data).zeros((0,), dtype=g.dtype)
        return _t(da), _t(db), _t(dbias)


def matmul(a, b):
    """NumPy matmul semantics (1-D, 2-D, batched with broadcast batch dims), with gradient."""
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        ad, bd = a._data, b._data
        dt = ad.dtype
        # _plain_ok for two 2-D arrays, inlined: the common case of every small CPU product
        if (
            dt is bd.dtype and type(ad) is _ND and type(bd) is _ND and dt in _PLAIN and ad.ndim == 2 and bd.ndim == 2
            and ad.shape[1] == bd.shape[0] and not _autocast[0]
            and (_env(_TI) in _OFF and _env(_CK) in _AUTO or reference_path(ad))  # reference_path, inlined
        ):  # fmt: skip
            # no bias, no activation: the plain op (array backward), its node only when something requires grad
            if _enabled[0] and (a.requires_grad or b.requires_grad or a._base is not None or b._base is not None):
                return binary(ops.MatMul, a, b, mm(ad, bd))
            return _make(mm(ad, bd))
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        # a NumPy/CuPy array converts (as for the other binary ops); a list is no matrix: PyTorch refuses
        # x @ [1., 2.], and so does this
        for name, t in (("input", a), ("other", b)):
            if not isinstance(t, Tensor) and not (isinstance(t, np.ndarray) or is_cupy_array(t)):
                raise TypeError(f"matmul(): argument '{name}' must be Tensor, not {type(t).__name__}")
        a, b = (a if isinstance(a, Tensor) else _as_tensor(a, b)), (b if isinstance(b, Tensor) else _as_tensor(b, a))
    _check_devices(a, b)
    if a.ndim == 0 or b.ndim == 0:
        raise RuntimeError(f"both arguments to matmul need to be at least 1D, but they are {a.ndim}D and {b.ndim}D")
    k_a = a.shape[-1]
    k_b = b.shape[0] if b.ndim == 1 else b.shape[-2]
    if k_a != k_b:
        raise RuntimeError(
            f"mat1 and mat2 shapes cannot be multiplied ({_mshape(a)} and {_mshape(b)}): inner dimensions "
            f"{k_a} and {k_b} differ"
        )
    if a.ndim > 2 and b.ndim > 2:
        try:
            np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        except ValueError:
            raise RuntimeError(f"matmul: batch dimensions of {a.shape} and {b.shape} are not broadcastable") from None
    if a.is_floating_point() and b.is_floating_point():
        a, b = cast_for("matmul", a, b)  # autocast casts both: mixed float dtypes are fine under autocast
    _same_dtype(a.dtype, b.dtype)
    if not a.is_floating_point():  # integer/bool matmul: no gradient, no kernel
        return Tensor._make(a._data @ b._data)
    return MatMulAct.apply(a, b, _no_bias(a), act=None, negative_slope=0.01)


_ND = np.ndarray
_make = Tensor._make


def _rows(a):
    """(..., K) as (rows, K) (not reshape(-1, K): K may be 0)."""
    return a if a.ndim == 2 else a.reshape(math.prod(a.shape[:-1]), a.shape[-1])


def _plain_ok(a, b, bias=None):
    """The fast path of matmul/linear, the common case on the CPU: ``a`` (..., K) and ``b`` (K, N) NumPy
    float32/float64 arrays of one dtype (``bias`` (N,) of it, or None), no autocast, and the kernels on their
    reference path (one environment lookup): one NumPy product, no kernel residuals to keep or guard."""
    dt = a.dtype
    return (
        dt is b.dtype and dt in _PLAIN and type(a) is np.ndarray and type(b) is np.ndarray and a.ndim >= 1
        and b.ndim == 2 and a.shape[-1] == b.shape[0] and not _autocast[0] and reference_path(a)
        and (bias is None or (type(bias) is np.ndarray and bias.dtype is dt and bias.shape == b.shape[1:]))
    )  # fmt: skip


# the activations the fast path applies after the product: each plain op's forward (it keeps nothing on ctx)
_PLAIN_ACTS = {"relu": ops.Relu, "tanh": ops.Tanh, "sigmoid": ops.Sigmoid}

# the fast path's "no bias" inputs, one per dtype: empty and never written, so sharing them is safe
_PLAIN = {D.float32: Tensor._make(np.empty((0,), np.float32)), D.float64: Tensor._make(np.empty((0,), np.float64))}


def _same_dtype(da, db):
    """matmul never promotes (float32 @ float64 is an error in PyTorch, not a float64 product)."""
    if da != db:
        raise RuntimeError(f"expected m1 and m2 to have the same dtype, but got: {D.c_name(da)} != {D.c_name(db)}")


def _mshape(t):
    return "x".join(str(s) for s in t.shape)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None,
           negative_slope: float = 0.01, alpha: float = 1.0) -> Tensor:  # fmt: skip
    """``act(x @ weightᵀ + bias)`` in one kernel: x (..., in), weight (out, in), bias (out,) -> (..., out)."""
    if weight.ndim != 2:
        raise RuntimeError(f"linear: weight must be 2-D (out_features, in_features), got shape {weight.shape}")
    if x.ndim == 0 or x.shape[-1] != weight.shape[1]:
        raise RuntimeError(
            f"linear: input shape {x.shape} does not match weight shape {weight.shape}: "
            f"expected last dim {weight.shape[1]} (in_features), got {x.shape[-1] if x.ndim else 'a 0-d tensor'}"
        )
    if bias is not None and bias.shape != weight.shape[:1]:
        raise RuntimeError(f"linear: bias shape {bias.shape} does not match out_features {weight.shape[0]}")
    if activation == "none":
        activation = None
    if (
        (activation is None or activation in _PLAIN_ACTS)
        and x.ndim >= 2
        and _plain_ok(x._data, weight._data.T, None if bias is None else bias._data)
    ):
        b = _PLAIN[x._data.dtype] if bias is None else bias
        out = MatMulAct.apply(x, weight.T, b, act=activation, negative_slope=negative_slope, alpha=alpha, plain=True)
        node = out.grad_fn
        if node is not None and activation is not None:  # backward reads the output: guard it as FusedOp does
            node._guards = ((out._data, out._version, out._version[0]),)
        return out
    if activation is not None and activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected None or one of {', '.join(ACTIVATIONS)}")
    if bias is None:
        x, weight = cast_for("linear", x, weight)
        bias = _no_bias(x)
    else:
        x, weight, bias = cast_for("linear", x, weight, bias)
    _same_dtype(x.dtype, weight.dtype)
    if bias.numel() and bias.dtype != x.dtype:
        raise RuntimeError(
            f"self and mat2 must have the same dtype, but got {D.scalar_name(bias.dtype)} and {D.scalar_name(x.dtype)}"
        )
    # weightᵀ is a strided view: the kernel reads it in place, no copy
    return MatMulAct.apply(x, weight.T, bias, act=activation, negative_slope=negative_slope, alpha=alpha)
