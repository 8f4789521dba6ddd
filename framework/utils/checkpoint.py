"""conch.utils.checkpoint: PyTorch's ``torch.utils.checkpoint`` names, the functions of :mod:`conch.checkpoint`.

``use_reentrant=`` and ``preserve_rng_state=`` are accepted as PyTorch's: conch has one (non-reentrant style)
implementation, and it replays the RNG state when ``preserve_rng_state`` is true (the default).
"""

from ..checkpoint import checkpoint, checkpoint_sequential

__all__ = ["checkpoint", "checkpoint_sequential"]
