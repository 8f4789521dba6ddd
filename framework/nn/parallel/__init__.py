"""conch.nn.parallel: DistributedDataParallel, data parallelism over conch.distributed's process group."""

from .distributed import DistributedDataParallel

__all__ = ["DistributedDataParallel"]
