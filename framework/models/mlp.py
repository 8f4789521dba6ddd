"""A multi-layer perceptron whose hidden layers are fused Linear+activation kernels."""

from __future__ import annotations

from .. import nn


class MLP(nn.Module):
    """in_features -> hidden... -> out_features, activation after every hidden layer, optional dropout.

    Each hidden layer is ``nn.Linear(..., activation=act)``: matmul, bias and activation in one
    kernel forward, the activation's gradient fused into the backward matmuls.

    Example::

        model = MLP(64, [128, 128], 10)
        logits = model(conch.randn(32, 64))      # (32, 10)
    """

    def __init__(self, in_features: int, hidden: list[int] | tuple[int, ...], out_features: int,
                 activation: str = "relu", dropout: float = 0.0):  # fmt: skip
        super().__init__()
        layers, d = [], in_features
        for h in hidden:
            layers.append(nn.Linear(d, h, activation=activation))
            if dropout:
                layers.append(nn.Dropout(dropout))
            d = h
        layers.append(nn.Linear(d, out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        # x: (B, ...) -> flattened (B, in_features) -> (B, out_features)
        return self.net(x.flatten(1))
