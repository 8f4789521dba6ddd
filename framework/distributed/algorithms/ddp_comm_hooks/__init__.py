"""DDP communication hooks: ``default_hooks`` holds PyTorch's built-in ones (all-reduce, fp16/bf16 compression)."""

from . import default_hooks

__all__ = ["default_hooks"]
