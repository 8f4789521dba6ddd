"""conch.utils: PyTorch's ``torch.utils`` namespace (``data`` and ``checkpoint``), so ported imports work unchanged."""

from . import checkpoint, data

__all__ = ["checkpoint", "data"]
