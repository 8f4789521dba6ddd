"""conch.kernels: array-level fused ops (Triton kernels, launchers, reference paths); never imports the framework.

Every fused op is a pair in the style of JAX's custom_vjp::

    out, residuals = NAME_forward(*arrays, **attrs)
    grads = NAME_backward(residuals, dout, **attrs)

working on NumPy arrays (reference path, or Triton under ``TRITON_INTERPRET=1``) and CuPy
arrays (Triton on the GPU). Submodules load on first use so ``import conch`` stays fast.
"""

import importlib

_SUBMODULES = (
    "matmul", "activations", "softmax", "cross_entropy", "norms", "dropout", "attention", "autotune", "optim",
    "linear_cross_entropy",
)  # fmt: skip


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'conch.kernels' has no attribute {name!r}")


__all__ = list(_SUBMODULES)
