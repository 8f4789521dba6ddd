"""A small GPT (decoder-only transformer) in the style of nanoGPT: pre-norm blocks, causal attention, tied weights."""

from __future__ import annotations

import math
from dataclasses import dataclass

import conch

from .. import nn
from ..checkpoint import checkpoint
from ..fused.qkv_attention import qkv_attention
from ..nn import functional as F


@dataclass
class GPTConfig:
    block_size: int = 128  # longest context
    vocab_size: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True
    checkpointing: bool = False  # recompute each block's activations in the backward


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t attends to positions <= t.

    One fused projection makes q, k, v; scaled_dot_product_attention(is_causal=True) mixes them;
    an output projection brings the heads back to n_embd.
    """

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.n_embd % cfg.n_head:
            raise ValueError(f"n_embd ({cfg.n_embd}) must be divisible by n_head ({cfg.n_head})")
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.n_head, self.n_embd, self.dropout = cfg.n_head, cfg.n_embd, cfg.dropout

    def forward(self, x):
        # q, k, v = c_attn(x).split(C, 2), each reshaped to (B, nh, T, hs), then scaled_dot_product_attention(
        # is_causal=True) and back to (B, T, C): the same maths in one node on the packed projection, whose
        # backward writes dq, dk, dv into one gradient (no per-head copies and no concatenation)
        p = self.dropout if self.training else 0.0
        y = qkv_attention(self.c_attn(x), self.n_head, causal=True, dropout_p=p)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLPBlock(nn.Module):
    """Position-wise feed-forward: n_embd -> 4·n_embd (fused GELU) -> n_embd."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias, activation="gelu_tanh")
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.c_fc(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLPBlock(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Token embedding + learned positions, n_layer blocks, final LayerNorm, LM head tied to the embedding.

    forward(idx (B, T) int64, targets (B, T) or None, return_logits=True) -> (logits (B, T, vocab), loss or None).
    With targets the loss is :func:`conch.nn.functional.linear_cross_entropy` of the final hidden states and the
    LM head's weight: its graph never holds the (B, T, vocab) logits' gradient. The logits are still returned,
    copied out of the loss's own chunk products (``return_logits=True`` there: one projection, not two; a
    gradient reaching them flows back as through the LM head); ``return_logits=False`` skips them (None, and no
    (B, T, vocab) array at all), which is what a training loop that only needs the loss wants.

    Example::

        model = GPT(GPTConfig(vocab_size=65, block_size=64, n_layer=2, n_head=2, n_embd=64))
        logits, loss = model(idx, targets)
        loss.backward()
    """

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying: one (vocab, n_embd) matrix serves both ends
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # scaled residual init (GPT-2)
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx, targets=None, return_logits=True):
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        pos = conch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for block in self.h:
            if self.config.checkpointing and self.training:
                x = checkpoint(block, x)
            else:
                x = block(x)
        h = self.ln_f(x)  # (B, T, C)
        if targets is None:
            return self.lm_head(h), None
        w, b = self.lm_head.weight, self.lm_head.bias
        if return_logits:  # the logits come out of the loss's own products (one projection, not two)
            loss, logits = F.linear_cross_entropy(h, w, targets, b, return_logits=True)
            return logits, loss
        return None, F.linear_cross_entropy(h, w, targets, b)

    @conch.no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None):
        """Sample ``max_new_tokens`` tokens after ``idx`` (B, T), feeding each back in."""
        import numpy as np

        was_training = self.training
        self.eval()
        rng = np.random.default_rng(conch.initial_seed())
        for _ in range(max_new_tokens):
            ctx = idx if idx.shape[1] <= self.config.block_size else idx[:, -self.config.block_size :]
            logits, _ = self(ctx)
            logits = logits[:, -1, :].float() / max(temperature, 1e-6)
            lg = np.asarray(logits.cpu()._data, dtype=np.float64)
            if top_k is not None:
                kth = np.sort(lg, axis=-1)[:, -min(top_k, lg.shape[-1])][:, None]
                lg = np.where(lg < kth, -np.inf, lg)
            p = np.exp(lg - lg.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            nxt = np.array([[rng.choice(p.shape[-1], p=row)] for row in p], dtype=np.int64)
            idx = conch.cat([idx, conch.tensor(nxt, device=idx.device)], dim=1)
        self.train(was_training)
        return idx
