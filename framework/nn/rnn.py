"""Recurrent layers: RNN, LSTM and GRU with PyTorch's parameter names, gate order, layouts and initialisation.

Per layer and direction, the input projection of every time step is one matmul (T·N, H_in) @ W_ihᵀ; only
the hidden projection runs step by step. The maths (σ = sigmoid, ∘ = elementwise)::

    RNN:  h' = act(W_ih x + b_ih + W_hh h + b_hh),  act = tanh or relu
    LSTM: i, f, g, o = σ, σ, tanh, σ of (W_ih x + b_ih + W_hh h + b_hh) split in 4
          c' = f ∘ c + i ∘ g,   h' = o ∘ tanh(c')
    GRU:  r, z = σ of the first two thirds of (W_ih x + b_ih + W_hh h + b_hh)
          n = tanh(W_in x + b_in + r ∘ (W_hn h + b_hn)),   h' = (1 - z) ∘ n + z ∘ h

A PackedSequence input (``conch.nn.utils.rnn``) runs only the real steps of each sequence.

Example::

    lstm = conch.nn.LSTM(8, 16, num_layers=2, batch_first=True)
    out, (h_n, c_n) = lstm(conch.randn(4, 10, 8))     # out (4, 10, 16); h_n, c_n (2, 4, 16)
"""

from __future__ import annotations

import math

import numpy as np

from ..creation import empty, zeros
from ..tensor import cat, stack
from . import functional as F
from . import init
from .module import Module
from .parameter import Parameter
from .utils.rnn import PackedSequence


class _RNNBase(Module):
    _GATES = 1
    mode = ""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, device=None, dtype=None):  # fmt: skip
        super().__init__()
        if hidden_size <= 0 or num_layers <= 0:
            raise ValueError(f"hidden_size ({hidden_size}) and num_layers ({num_layers}) must be positive")
        if not 0 <= dropout <= 1:
            raise ValueError(f"dropout should be a number in range [0, 1], got {dropout}")
        self.input_size, self.hidden_size, self.num_layers = int(input_size), int(hidden_size), int(num_layers)
        self.bias, self.batch_first, self.dropout, self.bidirectional = bias, batch_first, float(dropout), bidirectional
        kw = {"device": device, "dtype": dtype}
        g = self._GATES * hidden_size
        dirs = 2 if bidirectional else 1
        for layer in range(num_layers):
            width = input_size if layer == 0 else hidden_size * dirs
            for sfx in ("", "_reverse")[:dirs]:
                setattr(self, f"weight_ih_l{layer}{sfx}", Parameter(empty(g, width, **kw)))
                setattr(self, f"weight_hh_l{layer}{sfx}", Parameter(empty(g, hidden_size, **kw)))
                if bias:
                    setattr(self, f"bias_ih_l{layer}{sfx}", Parameter(empty(g, **kw)))
                    setattr(self, f"bias_hh_l{layer}{sfx}", Parameter(empty(g, **kw)))
        self.reset_parameters()

    def reset_parameters(self):
        k = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            init.uniform_(p, -k, k)

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s

    def _weights(self, layer, sfx):
        get = lambda n: getattr(self, f"{n}_l{layer}{sfx}", None)  # noqa: E731
        return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")

    def _step(self, xw, state, w_hh, b_hh):
        raise NotImplementedError

    def _run(self, data, batch_sizes, states):
        """The recurrence over time-major rows ``data`` (Σ batch_sizes, H_in): at step t the first batch_sizes[t]
        rows advance. A padded batch (T, N) has batch_sizes N at every step; in a packed one the sequences still
        running come first, so the finished ones keep their last state (their h_n). ``states``: one per
        (layer, direction), an h (GRU) or an (h, c) pair (LSTM). Returns the last layer's rows and the finals."""
        dirs = 2 if self.bidirectional else 1
        offs = np.concatenate(([0], np.cumsum(batch_sizes)))
        finals = []
        for layer in range(self.num_layers):
            outs = []
            for d, sfx in enumerate(("", "_reverse")[:dirs]):
                w_ih, w_hh, b_ih, b_hh = self._weights(layer, sfx)
                xw = F.linear(data, w_ih, b_ih)  # the input projection of every step: one matmul
                state = states[layer * dirs + d]
                pair = isinstance(state, tuple)
                hs = [None] * len(batch_sizes)
                for t in range(len(batch_sizes) - 1, -1, -1) if d else range(len(batch_sizes)):
                    bs = int(batch_sizes[t])
                    live = tuple(v[:bs] for v in state) if pair else state[:bs]
                    new = self._step(xw[int(offs[t]) : int(offs[t]) + bs], live, w_hh, b_hh)
                    new_t, old_t = (new, state) if pair else ((new,), (state,))
                    merged = tuple(n if bs == o.shape[0] else cat([n, o[bs:]], 0) for n, o in zip(new_t, old_t))
                    state = merged if pair else merged[0]
                    hs[t] = new_t[0]
                outs.append(cat(hs, 0))
                finals.append(state)
            data = outs[0] if dirs == 1 else cat(outs, 1)
            if self.dropout and self.training and layer < self.num_layers - 1:
                data = F.dropout(data, self.dropout, True)
        return data, finals

    def _forward(self, input, hx_parts):
        """Shared by LSTM and GRU: ``hx_parts`` is (h0,) or (h0, c0); returns (output, final state parts)."""
        packed = isinstance(input, PackedSequence)
        if packed:
            data, batch_sizes = input.data, np.asarray(input.batch_sizes._data, dtype=np.int64)
            n, unbatched = int(batch_sizes[0]), False
        else:
            if input.ndim not in (2, 3):
                raise ValueError(
                    f"{type(self).__name__}: Expected input to be 2D or 3D, got {input.ndim}D tensor of shape "
                    f"{tuple(input.shape)}"
                )
            unbatched = input.ndim == 2
            x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if self.batch_first else input)
            t_len, n = x.shape[0], x.shape[1]
            data, batch_sizes = x.reshape(t_len * n, x.shape[2]), np.full(t_len, n, dtype=np.int64)
        if data.shape[-1] != self.input_size:
            raise RuntimeError(
                f"{type(self).__name__}: input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                f"got {data.shape[-1]}"
            )
        parts = self._initial_states(hx_parts, n, data, unbatched, input.sorted_indices if packed else None)
        per = [tuple(p[i] for p in parts) if len(parts) == 2 else parts[0][i] for i in range(parts[0].shape[0])]
        out, finals = self._run(data, batch_sizes, per)
        stacks = [stack([f[j] for f in finals], 0) for j in range(2)] if len(parts) == 2 else [stack(finals, 0)]
        if packed:
            if input.unsorted_indices is not None:  # the states go back in the caller's batch order
                stacks = [v.index_select(1, input.unsorted_indices) for v in stacks]
            return type(input)(out, input.batch_sizes, input.sorted_indices, input.unsorted_indices), stacks
        out = out.reshape(len(batch_sizes), n, -1)
        if unbatched:
            return out.squeeze(1), [v.squeeze(1) for v in stacks]
        return (out.transpose(0, 1) if self.batch_first else out), stacks

    def _initial_states(self, hx_parts, n, like, unbatched, sorted_indices):
        """The checked initial states (L·D, N, H), zeros where not given, in the order the rows run in."""
        want = (self.num_layers * (2 if self.bidirectional else 1), n, self.hidden_size)
        given = [h for h in hx_parts if h is not None]
        if unbatched and any(h.ndim != 2 for h in given):
            names = "hx and cx" if len(hx_parts) == 2 else "hx"
            got = ", ".join(f"{h.ndim}-D" for h in given)
            raise RuntimeError(f"For unbatched 2-D input, {names} should also be 2-D but got ({got}) tensors")
        parts = []
        for h in hx_parts:
            if h is None:
                parts.append(zeros(*want, dtype=like.dtype, device=like.device))
                continue
            h = h.unsqueeze(1) if unbatched else h
            if tuple(h.shape) != want:
                raise RuntimeError(f"Expected hidden size {want}, got {tuple(h.shape)}")
            parts.append(h if sorted_indices is None else h.index_select(1, sorted_indices))
        return parts


class RNN(_RNNBase):
    """Elman RNN, as torch.nn.RNN: ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``, ``forward(input, h_0=None) ->
    (output, h_n)``.

    ``nonlinearity`` "tanh" (default) or "relu"; layouts as :class:`LSTM`: weight_ih_l{k} (H, H_in),
    weight_hh_l{k} (H, H), bias_ih_l{k}, bias_hh_l{k} (H,), every parameter ~ U(-1/√H, 1/√H).
    Constructor as PyTorch's: ``RNN(input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
    batch_first=False, dropout=0.0, bidirectional=False)`` (positional arguments in that order).
    """

    _GATES = 1

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None):  # fmt: skip
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        self.nonlinearity = nonlinearity
        self.mode = "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU"
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device=device, dtype=dtype)  # fmt: skip

    def _step(self, xw, h, w_hh, b_hh):
        pre = xw + F.linear(h, w_hh, b_hh)
        # d tanh(a)/da = 1 - tanh²(a); d relu(a)/da = [a > 0] (autograd)
        return pre.tanh() if self.nonlinearity == "tanh" else F.relu(pre)

    def forward(self, input, hx=None):
        out, (h_n,) = self._forward(input, (hx,))
        return out, h_n


class LSTM(_RNNBase):
    """Long short-term memory, as torch.nn.LSTM: ``forward(input, (h_0, c_0)=None) -> (output, (h_n, c_n))``.

    input (T, N, H_in) ((N, T, H_in) with ``batch_first``, or unbatched (T, H_in)); output (T, N, D·H);
    h_n, c_n (num_layers·D, N, H) with D = 2 when bidirectional. weight_ih_l{k} (4H, H_in), weight_hh_l{k}
    (4H, H), gates in the order i, f, g, o; every parameter ~ U(-1/√H, 1/√H).
    """

    _GATES = 4
    mode = "LSTM"

    def _step(self, xw, state, w_hh, b_hh):
        h, c = state
        gates = xw + F.linear(h, w_hh, b_hh)
        i, f, g, o = gates.chunk(4, 1)
        c = f.sigmoid() * c + i.sigmoid() * g.tanh()
        return o.sigmoid() * c.tanh(), c

    def forward(self, input, hx=None):
        out, (h_n, c_n) = self._forward(input, (None, None) if hx is None else tuple(hx))
        return out, (h_n, c_n)


class GRU(_RNNBase):
    """Gated recurrent unit, as torch.nn.GRU: ``forward(input, h_0=None) -> (output, h_n)``.

    Layouts as :class:`LSTM`; weight_ih_l{k} (3H, H_in), weight_hh_l{k} (3H, H), gates in the order r, z, n,
    with the reset gate applied to the hidden projection *after* its bias (PyTorch's and cuDNN's form).
    """

    _GATES = 3
    mode = "GRU"

    def _step(self, xw, h, w_hh, b_hh):
        hw = F.linear(h, w_hh, b_hh)
        xr, xz, xn = xw.chunk(3, 1)
        hr, hz, hn = hw.chunk(3, 1)
        r, z = (xr + hr).sigmoid(), (xz + hz).sigmoid()
        n = (xn + r * hn).tanh()
        return n + z * (h - n)  # (1 - z) n + z h

    def forward(self, input, hx=None):
        out, (h_n,) = self._forward(input, (hx,))
        return out, h_n
