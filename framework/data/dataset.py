"""Datasets: map-style ``Dataset`` and ``IterableDataset``, ``TensorDataset``, ``Subset``, ``random_split``."""

from __future__ import annotations

import math
import numbers

import numpy as np

from .._backend import xp_of
from ..creation import _state
from ..tensor import Tensor

__all__ = ["Dataset", "IterableDataset", "TensorDataset", "Subset", "ConcatDataset", "ChainDataset", "random_split"]


class Dataset:
    """A map-style dataset: ``ds[i]`` returns the i-th sample and ``len(ds)`` the number of samples.

    Subclasses implement ``__getitem__`` and ``__len__``; ``a + b`` concatenates two datasets.

    Example::

        class Squares(conch.data.Dataset):
            def __len__(self):
                return 10
            def __getitem__(self, i):
                return conch.tensor([float(i)]), conch.tensor([float(i * i)])
    """

    def __getitem__(self, index):
        raise NotImplementedError(f"{type(self).__name__} must implement __getitem__")

    def __add__(self, other):
        return ConcatDataset([self, other])


class IterableDataset(Dataset):
    """A stream of samples: subclasses implement ``__iter__`` (no indexing, no length needed).

    A DataLoader batches the stream in order (no shuffle or sampler). With ``num_workers > 0`` each worker
    process iterates its own copy, so shard the stream with :func:`get_worker_info` (``id``, ``num_workers``)
    or every sample arrives ``num_workers`` times, as in PyTorch. ``a + b`` chains two streams.

    Example::

        class Count(conch.utils.data.IterableDataset):
            def __iter__(self):
                return iter(range(10))
    """

    def __iter__(self):
        raise NotImplementedError(f"{type(self).__name__} must implement __iter__")

    def __add__(self, other):
        return ChainDataset([self, other])


class ChainDataset(IterableDataset):
    """Several iterable datasets one after another."""

    def __init__(self, datasets):
        self.datasets = list(datasets)

    def __iter__(self):
        for d in self.datasets:
            yield from d

    def __len__(self):
        return sum(len(d) for d in self.datasets)


class TensorDataset(Dataset):
    """Samples are the i-th rows of the given tensors: ``ds[i] == (t0[i], t1[i], ...)``.

    Every tensor must have the same first dimension. The DataLoader fetches a whole batch of a
    TensorDataset with one indexing operation per tensor instead of stacking rows one by one.

    Example::

        ds = TensorDataset(conch.randn(100, 3), conch.randint(0, 2, (100,)))
        x, y = ds[0]                         # shapes (3,) and ()
    """

    def __init__(self, *tensors):
        if not tensors:
            raise ValueError("TensorDataset needs at least one tensor")
        for t in tensors:
            if not isinstance(t, Tensor):
                raise TypeError(f"TensorDataset expects conch Tensors, got {type(t).__name__}")
            if t.ndim == 0:
                raise ValueError("TensorDataset tensors must have a first (sample) dimension; got a 0-d tensor")
        n = tensors[0].shape[0]
        if any(t.shape[0] != n for t in tensors):
            raise ValueError(f"Size mismatch between tensors: first dimensions {[t.shape[0] for t in tensors]}")
        self.tensors = tuple(tensors)

    def __getitem__(self, index):
        return tuple(t[index] for t in self.tensors)

    def __len__(self):
        return self.tensors[0].shape[0]

    def _batch(self, indices):
        """The collated batch of ``indices`` (an int64 array): one gather per tensor."""
        out = []
        for t in self.tensors:
            a = t._data
            idx = indices if isinstance(a, np.ndarray) else xp_of(a).asarray(indices)  # gather on the GPU
            out.append(Tensor._make(a[idx]))
        return tuple(out)


class Subset(Dataset):
    """The samples of ``dataset`` at ``indices``, in that order."""

    def __init__(self, dataset, indices):
        self.dataset = dataset
        self.indices = [int(i) for i in indices]

    def __getitem__(self, idx):
        if isinstance(idx, list):
            return self.dataset[[self.indices[i] for i in idx]]
        return self.dataset[self.indices[idx]]

    def __len__(self):
        return len(self.indices)

    def _batch(self, indices):
        inner = getattr(self.dataset, "_batch", None)
        if inner is None:
            raise AttributeError("_batch")
        return inner(np.asarray(self.indices, dtype=np.int64)[indices])


class ConcatDataset(Dataset):
    """Several datasets one after another."""

    def __init__(self, datasets):
        self.datasets = list(datasets)
        if not self.datasets:
            raise ValueError("ConcatDataset needs at least one dataset")
        self.cumulative_sizes = list(np.cumsum([len(d) for d in self.datasets]))

    def __len__(self):
        return int(self.cumulative_sizes[-1]) if self.cumulative_sizes else 0

    def __getitem__(self, idx):
        n = len(self)
        if idx < 0:
            if -idx > n:
                raise IndexError(f"index {idx} is out of range for a dataset of length {n}")
            idx += n
        if idx >= n:
            raise IndexError(f"index {idx} is out of range for a dataset of length {n}")
        k = int(np.searchsorted(self.cumulative_sizes, idx, side="right"))
        start = 0 if k == 0 else int(self.cumulative_sizes[k - 1])
        return self.datasets[k][idx - start]


def random_split(dataset, lengths, generator=None, seed=None):
    """Split ``dataset`` into non-overlapping :class:`Subset`\\ s of the given lengths (ints summing to
    ``len(dataset)``, or fractions summing to 1 with the remainder spread round-robin, as PyTorch does).

    The permutation comes from ``seed`` (an int) or ``generator`` (a ``numpy.random.Generator``), else from
    conch's global generator (``conch.manual_seed``).

    Example::

        train, val = random_split(ds, [0.9, 0.1], seed=0)
    """
    n = len(dataset)
    lengths = list(lengths)
    if lengths and all(isinstance(x, float) for x in lengths) and math.isclose(sum(lengths), 1.0) and sum(lengths) <= 1:
        sizes = [int(math.floor(n * f)) for f in lengths]
        for i in range(n - sum(sizes)):
            sizes[i % len(sizes)] += 1
        lengths = sizes
    if not all(isinstance(x, numbers.Integral) and x >= 0 for x in lengths):
        raise ValueError(f"random_split lengths must be non-negative ints or fractions summing to 1, got {lengths}")
    if sum(lengths) != n:
        raise ValueError(f"Sum of input lengths ({sum(lengths)}) does not equal the length of the input dataset ({n})!")
    perm = _rng(generator, seed).permutation(n)
    out, offset = [], 0
    for length in lengths:
        out.append(Subset(dataset, perm[offset : offset + length].tolist()))
        offset += length
    return out


def _rng(generator, seed):
    if seed is not None:
        return np.random.default_rng(int(seed))
    if isinstance(generator, np.random.Generator):
        return generator
    if isinstance(generator, numbers.Integral):
        return np.random.default_rng(int(generator))
    if generator is not None:
        raise TypeError(f"generator must be a numpy.random.Generator or an int seed, got {type(generator).__name__}")

    return _state["np"]
