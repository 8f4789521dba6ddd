"""conch.autograd: the graph engine, custom Functions, ``grad`` and ``gradcheck``."""

from __future__ import annotations

from .engine import backward, grad
from .function import Function
from .grad_mode import enable_grad, inference_mode, is_grad_enabled, no_grad, set_grad_enabled
from .gradcheck import gradcheck, gradgradcheck

__all__ = [
    "Function", "grad", "backward", "gradcheck", "gradgradcheck", "no_grad", "enable_grad", "set_grad_enabled",
    "inference_mode", "is_grad_enabled",
]  # fmt: skip
