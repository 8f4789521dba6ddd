"""conch.accelerator: PyTorch's device-agnostic queries (``torch.accelerator``); conch's accelerator is CUDA.

Example::

    dev = conch.accelerator.current_accelerator() if conch.accelerator.is_available() else conch.device("cpu")
"""

from __future__ import annotations

from ._backend import cuda, device

__all__ = ["is_available", "current_accelerator", "device_count", "current_device_index", "synchronize"]


def is_available() -> bool:
    """Whether a usable GPU is present (never raises)."""
    return cuda.is_available()


def device_count() -> int:
    """How many GPUs there are (0 without one)."""
    return cuda.device_count() if cuda.is_available() else 0


def current_accelerator(check_available: bool = False):
    """``conch.device("cuda")`` when a GPU is usable, else ``None`` (PyTorch's answer with no accelerator).

    ``check_available`` is accepted as PyTorch's: conch only reports an accelerator that is available.
    """
    return device("cuda") if cuda.is_available() else None


def current_device_index() -> int:
    """The current GPU's index (0 without one)."""
    from .kernels import _cupy

    return int(_cupy.get_cupy().cuda.Device().id) if _cupy.is_available() else 0


def synchronize(device=None) -> None:  # noqa: A002  (PyTorch's argument name)
    """Wait for the GPU's queued work (nothing to wait for without one)."""
    cuda.synchronize()
