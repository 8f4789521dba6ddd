"""MultiheadAttention with PyTorch's parameter names (in_proj_weight, in_proj_bias, out_proj.weight/bias)."""

from __future__ import annotations

from ..creation import empty, zeros
from . import functional as F
from . import init
from .linear import Linear
from .module import Module
from .parameter import Parameter


class NonDynamicallyQuantizableLinear(Linear):
    """A Linear under the class name PyTorch uses for ``MultiheadAttention.out_proj``."""


class MultiheadAttention(Module):
    """Multi-head attention: softmax(Q Kᵀ/√d + mask) V per head, then the output projection.

    Parameters as torch.nn.MultiheadAttention: ``in_proj_weight`` (3E, E) (xavier uniform),
    ``in_proj_bias`` (3E,) (zeros), ``out_proj.weight`` (E, E), ``out_proj.bias`` (zeros); with
    ``kdim``/``vdim`` different from E, separate ``q_proj_weight``, ``k_proj_weight``,
    ``v_proj_weight`` instead of ``in_proj_weight``. ``batch_first=True`` (the default here):
    inputs (B, L, E); otherwise (L, B, E); unbatched (L, E) is accepted too.

    ``add_bias_kv=True`` learns one extra key and value (``bias_k``, ``bias_v``, shape (1, 1, E), xavier
    normal) appended to every sequence; ``add_zero_attn=True`` appends a zero key and value per head.

    ``forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
    average_attn_weights=True, is_causal=False)`` returns ``(output, weights)``; weights are
    averaged over heads, shape (B, L, S), or None when ``need_weights=False``. Masks follow
    PyTorch's MultiheadAttention: bool True = *not allowed to attend*; float masks are added.
    ``is_causal=True`` without ``attn_mask`` applies the causal mask.

    Example::

        mha = conch.nn.MultiheadAttention(32, 4)
        x = conch.randn(2, 10, 32)
        y, w = mha(x, x, x, is_causal=True)     # y (2, 10, 32), w (2, 10, 10)
    """

    def __init__(
        self,
        embed_dim,
        num_heads,
        dropout=0.0,
        bias=True,
        add_bias_kv=False,
        add_zero_attn=False,
        kdim=None,
        vdim=None,
        batch_first=True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0:
            raise ValueError(
                f"embed_dim and num_heads must be greater than 0, got embed_dim={embed_dim} and "
                f"num_heads={num_heads} instead"
            )
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        self.embed_dim, self.num_heads, self.dropout, self.batch_first = (
            embed_dim,
            num_heads,
            float(dropout),
            batch_first,
        )
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.head_dim = embed_dim // num_heads
        kw = {"device": device, "dtype": dtype}
        if self._qkv_same_embed_dim:
            self.in_proj_weight = Parameter(empty(3 * embed_dim, embed_dim, **kw))
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        else:
            self.q_proj_weight = Parameter(empty(embed_dim, embed_dim, **kw))
            self.k_proj_weight = Parameter(empty(embed_dim, self.kdim, **kw))
            self.v_proj_weight = Parameter(empty(embed_dim, self.vdim, **kw))
            self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = Parameter(zeros(3 * embed_dim, **kw))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = NonDynamicallyQuantizableLinear(embed_dim, embed_dim, bias=bias, **kw)
        if add_bias_kv:
            self.bias_k = Parameter(empty(1, 1, embed_dim, **kw))
            self.bias_v = Parameter(empty(1, 1, embed_dim, **kw))
        else:
            self.bias_k = self.bias_v = None
        self.add_zero_attn = bool(add_zero_attn)
        self._reset_parameters()

    def _reset_parameters(self):
        if self._qkv_same_embed_dim:
            init.xavier_uniform_(self.in_proj_weight)
        else:
            init.xavier_uniform_(self.q_proj_weight)
            init.xavier_uniform_(self.k_proj_weight)
            init.xavier_uniform_(self.v_proj_weight)
        if self.in_proj_bias is not None:
            init.zeros_(self.in_proj_bias)
            init.zeros_(self.out_proj.bias)
        if self.bias_k is not None:
            init.xavier_normal_(self.bias_k)
            init.xavier_normal_(self.bias_v)

    def forward(
        self,
        query,
        key,
        value,
        key_padding_mask=None,
        need_weights=True,
        attn_mask=None,
        average_attn_weights=True,
        is_causal=False,
    ):
        e = self.embed_dim
        unbatched = query.ndim == 2
        if query.ndim not in (2, 3) or key.ndim != query.ndim or value.ndim != query.ndim:
            raise RuntimeError(
                f"MultiheadAttention: expected 3-D (batched) or 2-D (unbatched) query, key and value, "
                f"got shapes {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}"
            )
        if query.shape[-1] != e:
            raise RuntimeError(
                f"MultiheadAttention: was expecting embedding dimension of {e} for query, but got "
                f"shape {tuple(query.shape)}"
            )
        if key.shape[-1] != self.kdim or value.shape[-1] != self.vdim:
            raise RuntimeError(
                f"MultiheadAttention: expected key (..., {self.kdim}) and value (..., {self.vdim}), got "
                f"{tuple(key.shape)} and {tuple(value.shape)}"
            )
        if key.shape[:-1] != value.shape[:-1]:
            raise RuntimeError(
                f"MultiheadAttention: key shape {tuple(key.shape)} does not match value shape {tuple(value.shape)}"
            )
        same = query is key and key is value
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None and key_padding_mask.ndim == 1:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        if query.shape[0] != key.shape[0]:
            raise RuntimeError(
                f"MultiheadAttention: query batch {query.shape[0]} differs from key batch {key.shape[0]}"
            )
        if same:
            key = value = query
        out, w = F.multi_head_attention_forward(
            query,
            key,
            value,
            self.num_heads,
            self.in_proj_weight,
            self.in_proj_bias,
            self.out_proj.weight,
            self.out_proj.bias,
            dropout_p=self.dropout,
            training=self.training,
            key_padding_mask=key_padding_mask,
            need_weights=need_weights,
            attn_mask=attn_mask,
            average_attn_weights=average_attn_weights,
            is_causal=is_causal,
            q_proj_weight=self.q_proj_weight,
            k_proj_weight=self.k_proj_weight,
            v_proj_weight=self.v_proj_weight,
            bias_k=self.bias_k,
            bias_v=self.bias_v,
            add_zero_attn=self.add_zero_attn,
        )
        if unbatched:
            return out.squeeze(0), (None if w is None else w.squeeze(0))
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, w
