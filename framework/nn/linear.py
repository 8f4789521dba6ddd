"""Linear, Embedding, Dropout, Identity, Flatten and Unflatten layers."""

from __future__ import annotations

import math

from conch.kernels._act_names import ACTIVATIONS

from ..autograd.grad_mode import no_grad
from ..creation import empty
from ..fused import matmul as fused_matmul
from ..tensor import Tensor
from . import functional as F
from . import init
from .module import Module
from .parameter import Parameter


def _factory(device, dtype):
    return {"device": device, "dtype": dtype}


class Identity(Module):
    """Returns its input unchanged (any constructor arguments are ignored)."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, input):
        return input


class Linear(Module):
    """y = activation(x Wᵀ + b) with W of shape (out_features, in_features), as torch.nn.Linear.

    Initialisation matches PyTorch: W ~ kaiming_uniform(a=√5), i.e. U(-1/√in, 1/√in), and
    b ~ U(-1/√in, 1/√in). ``activation`` (None, "relu", "gelu", "gelu_tanh", "silu", "tanh",
    "sigmoid") is applied inside the same fused kernel; it is not a parameter, so the state dict is
    PyTorch's.

    Shapes: input (*, in_features) -> output (*, out_features).

    Example::

        fc = conch.nn.Linear(16, 32, activation="gelu")
        y = fc(conch.randn(8, 16))      # (8, 32)
    """

    def __init__(self, in_features, out_features, bias=True, activation=None, device=None, dtype=None):
        super().__init__()
        if activation is not None and activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; expected None or one of {', '.join(ACTIVATIONS)}")
        self.in_features, self.out_features, self.activation = int(in_features), int(out_features), activation
        self.weight = Parameter(empty(self.out_features, self.in_features, **_factory(device, dtype)))
        if bias:
            self.bias = Parameter(empty(self.out_features, **_factory(device, dtype)))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.in_features
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input):
        return self._forward_act(input, self.activation)

    def _forward_act(self, input, activation, **act_params):
        if input.shape[-1:] != (self.in_features,):
            raise RuntimeError(
                f"Linear: expected input of shape (*, {self.in_features}), got {tuple(input.shape)} "
                f"(mat1 and mat2 shapes cannot be multiplied)"
            )
        return fused_matmul.linear(input, self.weight, self.bias, activation=activation, **act_params)

    def extra_repr(self):
        s = f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        return s + (f", activation={self.activation!r}" if self.activation else "")


class Embedding(Module):
    """A lookup table: integer indices (*) -> rows of ``weight`` (num_embeddings, embedding_dim), shape (*, dim).

    ``weight`` ~ N(0, 1); the row ``padding_idx`` (if given) starts at zero and never receives a
    gradient.

    Example::

        emb = conch.nn.Embedding(100, 16, padding_idx=0)
        h = emb(conch.tensor([[1, 2, 0]]))    # (1, 3, 16); h[0, 2] is all zeros
    """

    def __init__(
        self,
        num_embeddings,
        embedding_dim,
        padding_idx=None,
        max_norm=None,
        norm_type=2.0,
        scale_grad_by_freq=False,
        sparse=False,
        _weight=None,
        _freeze=False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        if padding_idx is not None:
            if not -self.num_embeddings <= padding_idx < self.num_embeddings:
                raise ValueError(f"padding_idx must be within num_embeddings ({num_embeddings}), got {padding_idx}")
            padding_idx %= self.num_embeddings
        self.padding_idx, self.max_norm, self.norm_type = padding_idx, max_norm, norm_type
        self.scale_grad_by_freq, self.sparse = scale_grad_by_freq, sparse
        if _weight is None:
            self.weight = Parameter(
                empty(self.num_embeddings, self.embedding_dim, **_factory(device, dtype)), requires_grad=not _freeze
            )
            self.reset_parameters()
        else:
            if tuple(_weight.shape) != (self.num_embeddings, self.embedding_dim):
                raise ValueError(
                    f"Shape of weight {tuple(_weight.shape)} does not match num_embeddings and "
                    f"embedding_dim ({self.num_embeddings}, {self.embedding_dim})"
                )
            self.weight = Parameter(_weight, requires_grad=not _freeze)

    def reset_parameters(self):
        init.normal_(self.weight)
        if self.padding_idx is not None:
            with no_grad():
                self.weight[self.padding_idx] = 0

    @classmethod
    def from_pretrained(
        cls,
        embeddings,
        freeze=True,
        padding_idx=None,
        max_norm=None,
        norm_type=2.0,
        scale_grad_by_freq=False,
        sparse=False,
    ):
        if embeddings.ndim != 2:
            raise ValueError(f"Embeddings parameter is expected to be 2-dimensional, got shape {embeddings.shape}")
        rows, cols = embeddings.shape
        return cls(
            rows,
            cols,
            padding_idx,
            max_norm,
            norm_type,
            scale_grad_by_freq,
            sparse,
            _weight=Tensor._make(embeddings._data.copy()),
            _freeze=freeze,
        )

    def forward(self, input):
        return F.embedding(input, self.weight, self.padding_idx, self.max_norm, self.norm_type)

    def extra_repr(self):
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        if self.padding_idx is not None:
            s += f", padding_idx={self.padding_idx}"
        if self.max_norm is not None:
            s += f", max_norm={self.max_norm}"
        return s


class Dropout(Module):
    """Zero each element with probability ``p`` in training mode and scale the survivors by 1/(1-p);
    the identity in eval mode."""

    def __init__(self, p=0.5, inplace=False):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p, self.inplace = float(p), inplace

    def forward(self, input):
        return F.dropout(input, self.p, self.training, self.inplace)

    def extra_repr(self):
        return f"p={self.p}, inplace={self.inplace}"


class Dropout1d(Dropout):
    """Zero whole channels of (N, C, L) or (C, L) with probability ``p`` in training (scale the rest by 1/(1-p))."""

    def forward(self, input):
        return F.dropout1d(input, self.p, self.training, self.inplace)


class Dropout2d(Dropout):
    """Zero whole channels of (N, C, H, W) with probability ``p`` in training (scale the rest by 1/(1-p))."""

    def forward(self, input):
        return F.dropout2d(input, self.p, self.training, self.inplace)


class Flatten(Module):
    """Flatten dims ``start_dim..end_dim`` into one: (N, C, H, W) -> (N, C·H·W) by default."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, input):
        return input.flatten(self.start_dim, self.end_dim)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Unflatten(Module):
    """Split dim ``dim`` into ``unflattened_size``."""

    def __init__(self, dim, unflattened_size):
        super().__init__()
        self.dim, self.unflattened_size = dim, tuple(unflattened_size)

    def forward(self, input):
        return input.unflatten(self.dim, self.unflattened_size)

    def extra_repr(self):
        return f"dim={self.dim}, unflattened_size={self.unflattened_size}"
