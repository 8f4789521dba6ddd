"""The flash-attention kernel's framework side (kernels/attention.py): softmax(q kᵀ·scale) v without the (L, S)
matrix, with causal masking and counter-based dropout.
"""

from __future__ import annotations

import math

import numpy as np

from conch import kernels as K

from .._backend import xp_of
from ..autograd.grad_mode import _enabled
from ..backends import _tf32
from ..creation import philox_seed_offset
from ..kernels._causal import causal_drop
from ..tensor import Tensor
from ._common import FusedOp, _recompute_grads, _res, _t
from .softmax import softmax


def _composite_attention(q, k, v, causal, scale, drop=None):
    s = (q @ k.transpose(-2, -1)) * scale
    if causal:
        s = s.masked_fill(causal_drop(*s.shape[-2:], s._data), -math.inf)
    p = softmax(s, -1)
    if drop is not None:  # the kernels' mask: the same counters over the (..., L, S) probabilities
        keep = K.dropout.rand_mask(p.shape, drop[0], drop[1], drop[2], xp=xp_of(p._data))
        p = p * Tensor._make((keep / (1 - drop[0])).astype(p.dtype))
    return p @ v


class Attention(FusedOp):
    """softmax(q kᵀ·scale [causal]) [dropout] v on the flash-attention kernels (no (L, S) matrix kept on the GPU).

    Backward: dv = p̃ᵀ dout, ds = p ∘ (dp̃ - rowsum(dout ∘ out)), dq = ds k·scale, dk = dsᵀ q·scale, with p
    recomputed tile by tile from the saved logsumexp and p̃, dp̃ carrying the regenerated dropout mask.
    """

    saves = (0, 1, 2)

    @staticmethod
    def forward(ctx, q, k, v, causal, scale, drop):
        ctx.attrs = (causal, scale, drop)
        p, seed, offset = drop if drop is not None else (0.0, 0, 0)
        out, ctx.res = K.attention.attention_forward(q, k, v, causal=causal, scale=scale, dropout_p=p, seed=seed,
                                                     offset=offset, allow_tf32=_tf32[0])  # fmt: skip
        return out

    @staticmethod
    def backward(ctx, g):
        if _enabled[0]:
            causal, scale, drop = ctx.attrs
            return _recompute_grads(ctx, lambda q, k, v: _composite_attention(q, k, v, causal, scale, drop), (g,))
        grads = K.attention.attention_backward(_res(ctx), g._data)
        return tuple(_t(a) if need else None for a, need in zip(grads, ctx.needs_input_grad))


def attention(q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float, dropout_p: float = 0.0) -> Tensor:
    """softmax(q kᵀ·scale) v for q (..., L, D), k (..., S, D), v (..., S, Dv) of one float dtype; ``causal``
    masks key j > query i; ``dropout_p`` drops probabilities with the counter-based generator (the mask is
    regenerated in the backward and in a checkpointed recomputation). The fused path of
    ``scaled_dot_product_attention`` without an explicit mask."""
    drop = None
    if dropout_p > 0.0:
        lead = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
        n = math.prod(lead) * q.shape[-2] * k.shape[-2]
        seed, offset = philox_seed_offset(n)
        drop = (float(dropout_p), seed, offset)
    return Attention.apply(q, k, v, causal=bool(causal), scale=float(scale), drop=drop)
