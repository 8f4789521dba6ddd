"""The dropout kernel's framework side (kernels/dropout.py): a counter-based mask the backward regenerates."""

from __future__ import annotations

from conch import kernels as K

from .._backend import xp_of
from ..autograd.grad_mode import _enabled
from ..creation import philox_seed_offset
from ..tensor import Tensor
from ._common import FusedOp, _res, _t


class Dropout(FusedOp):
    """y = x · mask / (1 - p) with a counter-based mask: the backward regenerates it from (seed, offset)."""

    @staticmethod
    def forward(ctx, x, p, seed, offset):
        y, ctx.res = K.dropout.dropout_forward(x, p, seed=seed, offset=offset)
        ctx.p, ctx.seed, ctx.offset = p, seed, offset
        return y

    @staticmethod
    def backward(ctx, g):
        if _enabled[0]:  # linear in x: the mask is a constant, so the composite is g · mask / (1-p)
            xp = xp_of(g._data)
            keep = K.dropout.dropout_mask(g.shape, ctx.p, ctx.seed, ctx.offset, xp=xp)
            return g * Tensor._make((keep / (1 - ctx.p)).astype(g.dtype))
        return _t(K.dropout.dropout_backward(_res(ctx), g._data))


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Zero each element with probability p and scale the rest by 1/(1-p); identity when not training.

    The mask comes from a counter-based generator (seed, offset) that ``conch.manual_seed`` sets
    and checkpointing saves and restores, so a recomputation draws the same mask.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0

    seed, offset = philox_seed_offset(x.numel())
    return Dropout.apply(x, p=float(p), seed=seed, offset=offset)
