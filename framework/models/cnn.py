"""A small convolutional classifier for square single-channel images (8x8 digits, 28x28 MNIST)."""

from __future__ import annotations

from .. import nn


class CNN(nn.Module):
    """Two conv-ReLU-maxpool stages and a linear head.

    (B, C, H, W) -> conv3x3(C->c1) -> relu -> pool2 -> conv3x3(c1->c2) -> relu -> pool2 -> (B, c2·H/4·W/4)
    -> linear -> (B, num_classes). Convolutions run as im2col matmuls on the matmul kernel.

    Example::

        model = CNN(image_size=8, num_classes=10)
        logits = model(conch.randn(16, 1, 8, 8))   # (16, 10)
    """

    def __init__(self, image_size: int = 8, in_channels: int = 1, num_classes: int = 10,
                 channels: tuple[int, int] = (16, 32), dropout: float = 0.0):  # fmt: skip
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        side = image_size // 4
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(c2 * side * side, num_classes))
        self.image_size, self.in_channels = image_size, in_channels

    def forward(self, x):
        if x.ndim == 2:  # (B, H*W) flat images
            x = x.reshape(x.shape[0], self.in_channels, self.image_size, self.image_size)
        return self.head(self.features(x))
