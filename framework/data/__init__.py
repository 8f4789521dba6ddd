"""conch.data: datasets, a reproducible DataLoader, an MNIST IDX reader and the bundled 8x8 digits.

Example::

    train, test = conch.data.load_digits()            # 1437 / 360 images, (64,) float32 in [0, 1]
    loader = conch.data.DataLoader(train, batch_size=64, shuffle=True, seed=0)
    for x, y in loader:                                # x: (64, 64) float32, y: (64,) int64
        ...
"""

from .dataloader import DataLoader, WorkerInfo, default_collate, default_convert, get_worker_info
from .dataset import ChainDataset, ConcatDataset, Dataset, IterableDataset, Subset, TensorDataset, random_split
from .datasets import load_digits
from .mnist import MNIST, read_idx, write_idx
from .sampler import (
    BatchSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)

__all__ = [
    "Dataset", "IterableDataset", "TensorDataset", "Subset", "ConcatDataset", "ChainDataset", "random_split",
    "DataLoader", "default_collate", "default_convert", "get_worker_info", "WorkerInfo", "Sampler",
    "SequentialSampler", "RandomSampler", "SubsetRandomSampler", "WeightedRandomSampler", "BatchSampler",
    "load_digits", "read_idx", "write_idx", "MNIST",
]  # fmt: skip
