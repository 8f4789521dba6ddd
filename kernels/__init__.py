"""conch.kernels: array-level fused ops (Triton kernels, launchers, reference paths); never imports the framework.

Every fused op is a pair in the style of JAX's custom_vjp::

    out, residuals = NAME_forward(*arrays, **attrs)
    grads = NAME_backward(residuals, dout, **attrs)

working on NumPy arrays (reference path, or Triton under ``TRITON_INTERPRET=1``) and CuPy
arrays (Triton on the GPU). Submodules load on first use so ``import conch`` stays fast, and their ``@triton.jit``
code lives in ``kernels/_triton/``, loaded at the first Triton launch, so the CPU reference path never imports Triton.
"""

import importlib
import os
import sys

_SUBMODULES = (
    "matmul", "activations", "softmax", "cross_entropy", "norms", "dropout", "attention", "autotune", "optim",
    "linear_cross_entropy",
)  # fmt: skip


def __getattr__(name):
    if name in _SUBMODULES:
        return _import_compiled(f"{__name__}.{name}")
    raise AttributeError(f"module 'conch.kernels' has no attribute {name!r}")


def _import_compiled(modname):
    """Import a kernel module with ``TRITON_INTERPRET`` unset, whatever the caller's environment.

    ``@triton.jit`` picks compiled or interpreted mode at decoration time, from that variable; conch decides per
    launch instead (``_launch.kernel_for`` builds interpreted twins of compiled-mode functions). A module first
    imported while the variable is set (the framework imports kernel modules lazily, so possibly inside a test
    that set it) would hold interpreted functions, and launches would fail for the rest of the process.
    """
    mod = sys.modules.get(modname)
    if mod is not None:
        return mod
    saved = os.environ.pop("TRITON_INTERPRET", None)
    try:
        return importlib.import_module(modname)
    finally:
        if saved is not None:
            os.environ["TRITON_INTERPRET"] = saved


__all__ = list(_SUBMODULES)
