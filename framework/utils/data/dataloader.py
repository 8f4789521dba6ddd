"""conch.utils.data.dataloader: PyTorch's module path (``from torch.utils.data.dataloader import DataLoader``)."""

from ...data.dataloader import DataLoader, WorkerInfo, default_collate, default_convert, get_worker_info

__all__ = ["DataLoader", "WorkerInfo", "default_collate", "default_convert", "get_worker_info"]
