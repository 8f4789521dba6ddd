"""The softmax kernel's framework side (kernels/softmax.py): softmax and log-softmax along any dim (the kernel
reduces the last one; another dim is moved there and back).
"""

from __future__ import annotations

from conch import kernels as K

from ..amp.autocast_mode import cast_for
from ..autograd.grad_mode import _enabled
from ..tensor import Tensor, _norm_dim
from ._common import FusedOp, _res, _t


class SoftmaxLast(FusedOp):
    """softmax / log_softmax over the last dim on the softmax kernel.

    Both derivatives are functions of the output, so the output is what is kept (as PyTorch's): the input may be
    modified in place afterwards, the output may not.
    """

    saves = ("out",)

    @staticmethod
    def forward(ctx, x, log):
        ctx.log = log
        y, ctx.res = K.softmax.softmax_forward(x, log=log)
        return y

    @staticmethod
    def backward(ctx, g):
        if _enabled[0]:  # recorded (create_graph): the plain ops' formulas on the saved output, differentiable
            y = ctx.saved_tensor(0)
            if ctx.log:
                return g - y.exp() * g.sum(dim=-1, keepdim=True)
            return y * (g - (g * y).sum(dim=-1, keepdim=True))
        return _t(K.softmax.softmax_backward(_res(ctx), g._data, log=ctx.log))


def _softmax(x, dim, dtype, log):
    (x,) = cast_for("log_softmax" if log else "softmax", x)
    if dtype is not None:
        x = x.to(dtype=dtype)
    if not x.is_floating_point():
        raise TypeError(f"softmax expects a floating-point tensor, got {x.dtype}")
    d = _norm_dim(dim, x.ndim)  # first: a 0-d tensor takes dim 0 or -1 only, as PyTorch
    if x.ndim == 0:
        return x * 0 if log else x * 0 + 1
    if d == x.ndim - 1:
        return SoftmaxLast.apply(x, log=log)
    # the kernel reduces the last dim: move ``dim`` there and back (two copies, still one kernel)
    return SoftmaxLast.apply(x.transpose(d, -1).contiguous(), log=log).transpose(d, -1)


def softmax(x: Tensor, dim: int, dtype=None) -> Tensor:
    """exp(x - max) / Σ exp(x - max) along ``dim``."""
    return _softmax(x, dim, dtype, False)


def log_softmax(x: Tensor, dim: int, dtype=None) -> Tensor:
    """x - max - log Σ exp(x - max) along ``dim``."""
    return _softmax(x, dim, dtype, True)
