"""conch.models: small reference models (MLP, CNN, GPT) written like nanoGPT, one paragraph per class."""

from .cnn import CNN
from .gpt import GPT, GPTConfig
from .mlp import MLP

__all__ = ["MLP", "CNN", "GPT", "GPTConfig"]
