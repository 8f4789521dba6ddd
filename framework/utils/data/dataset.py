"""conch.utils.data.dataset: PyTorch's module path (``from torch.utils.data.dataset import Dataset``)."""

from ...data.dataset import ChainDataset, ConcatDataset, Dataset, IterableDataset, Subset, TensorDataset, random_split

__all__ = ["Dataset", "IterableDataset", "TensorDataset", "Subset", "ConcatDataset", "ChainDataset", "random_split"]
