"""Self-attention on a packed (B, T, 3·C) q/k/v projection: one op from the projection's output to (B, T, C).

A transformer block's ``q, k, v = c_attn(x).split(C, 2)``, three reshapes to heads, three transposes,
``scaled_dot_product_attention`` and a transpose back make ten graph nodes; their backward copies each head-major
gradient back to (B, T, C) and then concatenates the three into (B, T, 3·C): two full copies of the projection's
gradient. Here the heads are strided views of the packed array (no copy in the forward; the attention kernels read
them in place) and the backward's products write dq, dk and dv straight into their places in one (B, T, 3·C)
gradient (``attention_backward(..., out=)``; the other paths copy them in): no copy at all on the CPU, one node.
The maths is :mod:`.attention`'s, on the same kernels (kernels/attention.py)::

    q, k, v = qkv.reshape(B, T, 3, H, D) split on axis 2, each seen as (B, H, T, D)
    y = softmax(q kᵀ · scale [causal]) [dropout] v, returned as (B, T, H·D)

Example (conch.models.GPT's attention)::

    y = qkv_attention(self.c_attn(x), n_head=4, causal=True)      # (B, T, 3C) -> (B, T, C)
"""

from __future__ import annotations

import math

from conch import kernels as K

from .._backend import xp_of
from ..amp.autocast_mode import cast_for
from ..autograd.grad_mode import _enabled
from ..backends import _tf32
from ..creation import philox_seed_offset
from ..tensor import Tensor
from ._common import FusedOp, _recompute_grads, _res, _t
from .attention import _composite_attention


def _heads(qkv, n_head):
    """The (B, H, T, D) views of q, k and v in a (B, T, 3·H·D) array."""
    b, t, c3 = qkv.shape
    v5 = qkv.reshape(b, t, 3, n_head, c3 // (3 * n_head))
    return tuple(v5[:, :, i].transpose(0, 2, 1, 3) for i in range(3))


class QKVAttention(FusedOp):
    """y (B, T, C) = attention of the heads of a packed qkv (B, T, 3C); backward: dqkv with dq, dk, dv in place."""

    saves = (0,)

    @staticmethod
    def forward(ctx, qkv, n_head, causal, scale, drop):
        ctx.attrs = (n_head, causal, scale, drop)
        q, k, v = _heads(qkv, n_head)
        p, seed, offset = drop if drop is not None else (0.0, 0, 0)
        out, ctx.res = K.attention.attention_forward(q, k, v, causal=causal, scale=scale, dropout_p=p, seed=seed,
                                                     offset=offset, allow_tf32=_tf32[0])  # fmt: skip
        b, h, t, d = out.shape
        return xp_of(out).ascontiguousarray(out.transpose(0, 2, 1, 3)).reshape(b, t, h * d)

    @staticmethod
    def backward(ctx, g):
        n_head, causal, scale, drop = ctx.attrs
        if _enabled[0]:

            def composite(qkv):
                b, t, _ = qkv.shape
                q, k, v = (z.reshape(b, t, n_head, -1).transpose(1, 2) for z in qkv.split(qkv.shape[-1] // 3, 2))
                y = _composite_attention(q, k, v, causal, scale, drop)
                return y.transpose(1, 2).reshape(b, t, -1)

            return _recompute_grads(ctx, composite, (g,))
        res = _res(ctx)
        b, t, c = g.shape
        g4 = g._data.reshape(b, t, n_head, c // n_head).transpose(0, 2, 1, 3)
        dqkv = xp_of(g._data).empty((b, t, 3 * c), dtype=res.q.dtype)
        K.attention.attention_backward(res, g4, out=_heads(dqkv, n_head))  # dq, dk, dv written into their places
        return _t(dqkv)


def qkv_attention(qkv: Tensor, n_head: int, causal: bool = True, scale: float | None = None,
                  dropout_p: float = 0.0) -> Tensor:  # fmt: skip
    """Multi-head attention of the packed projection ``qkv`` (B, T, 3·C) with ``n_head`` heads of C / n_head
    dims -> (B, T, C): the same values and gradients as splitting, reshaping to heads and calling
    ``scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal, scale=scale)``, in one node.
    ``scale`` defaults to 1/√(C / n_head)."""
    if qkv.ndim != 3 or qkv.shape[-1] % (3 * n_head):
        raise ValueError(
            f"qkv_attention: expected qkv of shape (B, T, 3·C) with C divisible by n_head={n_head}, got {qkv.shape}"
        )
    if not qkv.is_floating_point():
        raise TypeError(f"qkv_attention: qkv must be a floating-point tensor, got {qkv.dtype}")
    (qkv,) = cast_for("scaled_dot_product_attention", qkv)  # under autocast: the attention's dtype, as SDPA
    hd = qkv.shape[-1] // (3 * n_head)
    sc = 1.0 / math.sqrt(hd) if scale is None else float(scale)
    drop = None
    if dropout_p > 0.0:
        seed, offset = philox_seed_offset(qkv.shape[0] * n_head * qkv.shape[1] * qkv.shape[1])
        drop = (float(dropout_p), seed, offset)
    return QKVAttention.apply(qkv, n_head=int(n_head), causal=bool(causal), scale=sc, drop=drop)
