"""conch.distributed.optim: optimizers that shard their state across the ranks (ZeRO stage 1)."""

from .zero_redundancy_optimizer import ZeroRedundancyOptimizer

__all__ = ["ZeroRedundancyOptimizer"]
