"""conch.cuda: GPU queries that never raise without a GPU, and ``conch.cuda.amp`` (PyTorch's deprecated spelling).

Example::

    if conch.cuda.is_available() and conch.cuda.is_bf16_supported():
        dtype = conch.bfloat16
"""

from __future__ import annotations

from .._backend import cuda as _cuda
from ..kernels import _cupy
from . import amp

__all__ = [
    "amp",
    "is_available",
    "device_count",
    "is_bf16_supported",
    "synchronize",
    "get_device_name",
    "manual_seed",
    "manual_seed_all",
    "set_device",
    "empty_cache",
    "current_device",
]

is_available = _cuda.is_available
device_count = _cuda.device_count


def is_bf16_supported(including_emulation: bool = True) -> bool:
    """Whether the current GPU computes in bfloat16 natively (compute capability 8.0, Ampere, or newer).

    False without a usable GPU. ``including_emulation`` is accepted as PyTorch's: conch's Triton kernels need
    the hardware type, so an older GPU counts as unsupported either way.
    """
    if not _cupy.is_available():
        return False
    cp = _cupy.get_cupy()
    return int(cp.cuda.Device().compute_capability) >= 80


def current_device() -> int:
    """The index of the current GPU (0 without one, as there is nothing else to select)."""
    return int(_cupy.get_cupy().cuda.Device().id) if _cupy.is_available() else 0


def manual_seed(seed: int) -> None:
    """Seed the GPU's random numbers (``torch.cuda.manual_seed``); silently nothing without a GPU, as PyTorch's."""
    from ..creation import cuda_manual_seed

    cuda_manual_seed(seed)


manual_seed_all = manual_seed  # conch's GPU generators share one (seed, counter) state


def set_device(device) -> None:
    """Make GPU ``device`` (an index, ``"cuda:N"`` or a ``conch.device``) current, as ``torch.cuda.set_device``.

    Raises RuntimeError naming the reason without a usable GPU, and for an index past the last GPU.
    """
    from .._backend import device as _device
    from .._backend import require_cupy

    idx = device if isinstance(device, int) else _device(device).index
    if idx is None or idx < 0:  # "cuda" or a negative index: PyTorch leaves the current device as it is
        return
    cp = require_cupy()
    n = cp.cuda.runtime.getDeviceCount()
    if idx >= n:
        raise RuntimeError(f"set_device: invalid device ordinal {idx}: this machine has {n} GPU(s)")
    cp.cuda.Device(idx).use()


def empty_cache() -> None:
    """Return the cached, unused blocks of CuPy's memory pools to the driver (``torch.cuda.empty_cache``).

    Live tensors keep their memory; nothing happens without a GPU.
    """
    if _cupy.is_available():
        cp = _cupy.get_cupy()
        cp.get_default_memory_pool().free_all_blocks()
        cp.get_default_pinned_memory_pool().free_all_blocks()


def __getattr__(name):
    # the rest of conch.cuda (synchronize, memory statistics, ...) lives on _backend's object: one definition
    try:
        return getattr(_cuda, name)
    except AttributeError:
        raise AttributeError(f"module 'conch.cuda' has no attribute {name!r}") from None
