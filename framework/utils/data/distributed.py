"""conch.utils.data.distributed: PyTorch's ``torch.utils.data.distributed`` name for the DistributedSampler."""

from ...data.distributed import DistributedSampler

__all__ = ["DistributedSampler"]
