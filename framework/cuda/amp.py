"""conch.cuda.amp: PyTorch's deprecated ``torch.cuda.amp`` names, warning as PyTorch does; use ``conch.amp``."""

from __future__ import annotations

import warnings

from .. import _dtype as D
from ..amp import autocast_mode as _ac
from ..amp import grad_scaler as _gs

__all__ = ["autocast", "GradScaler"]


class autocast(_ac.autocast):  # noqa: N801  (PyTorch's name)
    """``conch.amp.autocast("cuda", ...)`` under its deprecated name (a FutureWarning, as PyTorch)."""

    def __init__(self, enabled=True, dtype=D.float16, cache_enabled=True):
        warnings.warn(
            "`conch.cuda.amp.autocast(args...)` is deprecated. Please use `conch.amp.autocast('cuda', args...)` "
            "instead.",
            FutureWarning,
            stacklevel=2,
        )
        super().__init__("cuda", dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)


class GradScaler(_gs.GradScaler):
    """``conch.amp.GradScaler("cuda", ...)`` under its deprecated name (a FutureWarning, as PyTorch)."""

    def __init__(self, init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000, enabled=True):
        warnings.warn(
            "`conch.cuda.amp.GradScaler(args...)` is deprecated. Please use `conch.amp.GradScaler('cuda', args...)` "
            "instead.",
            FutureWarning,
            stacklevel=2,
        )
        super().__init__("cuda", init_scale, growth_factor, backoff_factor, growth_interval, enabled)
