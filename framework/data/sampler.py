"""Samplers: which dataset indices a DataLoader visits, and in which batches (PyTorch's ``torch.utils.data``)."""

from __future__ import annotations

import numbers

import numpy as np

from .dataset import _rng

__all__ = [
    "Sampler", "SequentialSampler", "RandomSampler", "SubsetRandomSampler", "WeightedRandomSampler", "BatchSampler",
]  # fmt: skip


class Sampler:
    """Base class: ``iter(sampler)`` yields dataset indices (or, for a batch sampler, lists of them).

    Example::

        class Evens(conch.utils.data.Sampler):
            def __init__(self, n):
                self.n = n
            def __iter__(self):
                return iter(range(0, self.n, 2))
            def __len__(self):
                return (self.n + 1) // 2
    """

    def __init__(self, data_source=None):
        pass  # PyTorch's signature; the base class keeps nothing

    def __iter__(self):
        raise NotImplementedError(f"{type(self).__name__} must implement __iter__")


class SequentialSampler(Sampler):
    """``0, 1, ..., len(data_source) - 1``, in order."""

    def __init__(self, data_source):
        self.data_source = data_source

    def __iter__(self):
        return iter(range(len(self.data_source)))

    def __len__(self):
        return len(self.data_source)


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} should be a positive integer value, but got {name}={value!r}")
    return int(value)


class RandomSampler(Sampler):
    """A random permutation of the indices (``replacement=False``) or ``num_samples`` draws with replacement.

    Args:
        data_source: the dataset (only its length is used).
        replacement: draw with replacement; then ``num_samples`` may exceed the dataset's length.
        num_samples: how many indices one iteration yields (default ``len(data_source)``); without replacement,
            several permutations are chained when it is larger, as PyTorch does.
        generator: a ``numpy.random.Generator`` (advanced by each iteration) or an int seed; default conch's global
            generator, so ``conch.manual_seed(s)`` makes the order reproducible.

    Example::

        list(RandomSampler(range(5), generator=np.random.default_rng(0)))   # a permutation of 0..4
    """

    def __init__(self, data_source, replacement=False, num_samples=None, generator=None):
        if not isinstance(replacement, bool):
            raise TypeError(f"replacement should be a boolean value, but got replacement={replacement!r}")
        self.data_source = data_source
        self.replacement = replacement
        self._num_samples = None if num_samples is None else _positive_int(num_samples, "num_samples")
        # an int seed becomes one Generator here, so successive iterations give different orders (as a seeded
        # torch.Generator does) instead of repeating the first
        self.generator = np.random.default_rng(int(generator)) if isinstance(generator, numbers.Integral) else generator

    @property
    def num_samples(self):
        return len(self.data_source) if self._num_samples is None else self._num_samples

    _BLOCK = 8192  # indices drawn at a time: minGPT's num_samples=int(1e10) must not be materialised

    def __iter__(self):
        n, k = len(self.data_source), self.num_samples
        rng = _rng(self.generator, None)
        if n == 0:
            return iter(())
        if self.replacement:
            first = rng.integers(0, n, size=min(k, self._BLOCK)).tolist()  # drawn now, as a shorter run draws all
            return iter(first) if k <= self._BLOCK else self._more(first, rng, n, k)
        if k <= n:
            return iter(rng.permutation(n)[:k].tolist())
        return self._chained(rng, n, k)

    def _more(self, first, rng, n, k):
        yield from first
        k -= len(first)
        while k > 0:
            block = rng.integers(0, n, size=min(k, self._BLOCK)).tolist()
            k -= len(block)
            yield from block

    @staticmethod
    def _chained(rng, n, k):
        while k > 0:  # one permutation after another, as PyTorch chains them
            perm = rng.permutation(n)[:k].tolist()
            k -= len(perm)
            yield from perm

    def __len__(self):
        return self.num_samples


class SubsetRandomSampler(Sampler):
    """The given ``indices`` in a random order (a new permutation each iteration)."""

    def __init__(self, indices, generator=None):
        self.indices = indices
        self.generator = np.random.default_rng(int(generator)) if isinstance(generator, numbers.Integral) else generator

    def __iter__(self):
        perm = _rng(self.generator, None).permutation(len(self.indices))
        return iter([self.indices[int(i)] for i in perm])

    def __len__(self):
        return len(self.indices)


class WeightedRandomSampler(Sampler):
    """``num_samples`` indices ``i`` drawn with probability ``weights[i] / sum(weights)``.

    Args:
        weights: a sequence or 1-D tensor of non-negative weights (need not sum to 1).
        num_samples: how many indices to draw.
        replacement: without replacement each index appears at most once (``num_samples <= len(weights)``).
        generator: as :class:`RandomSampler`.

    Example::

        WeightedRandomSampler([0.1, 0.9], 100)        # mostly index 1
    """

    def __init__(self, weights, num_samples, replacement=True, generator=None):
        if not isinstance(replacement, bool):
            raise ValueError(f"replacement should be a boolean value, but got replacement={replacement!r}")
        w = np.asarray(weights.tolist() if hasattr(weights, "tolist") else list(weights), dtype=np.float64)
        if w.ndim != 1:
            raise ValueError(f"weights should be a 1d sequence but given weights have shape {tuple(w.shape)}")
        if w.size == 0 or (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
            raise RuntimeError("WeightedRandomSampler: weights must be finite, non-negative and not all zero")
        self.weights = w
        self.num_samples = _positive_int(num_samples, "num_samples")
        if not replacement and self.num_samples > int((w > 0).sum()):
            raise RuntimeError(f"WeightedRandomSampler: cannot draw {self.num_samples} samples without replacement "
                               f"from {int((w > 0).sum())} non-zero weights")  # fmt: skip
        self.replacement = replacement
        self.generator = np.random.default_rng(int(generator)) if isinstance(generator, numbers.Integral) else generator

    def __iter__(self):
        rng = _rng(self.generator, None)
        p = self.weights / self.weights.sum()
        return iter(rng.choice(len(p), size=self.num_samples, replace=self.replacement, p=p).tolist())

    def __len__(self):
        return self.num_samples


class BatchSampler(Sampler):
    """Groups the indices of ``sampler`` into lists of ``batch_size`` (the last one shorter unless ``drop_last``).

    Example::

        list(BatchSampler(SequentialSampler(range(5)), 2, drop_last=False))   # [[0, 1], [2, 3], [4]]
    """

    def __init__(self, sampler, batch_size, drop_last):
        self.sampler = sampler
        self.batch_size = _positive_int(batch_size, "batch_size")
        if not isinstance(drop_last, bool):
            raise ValueError(f"drop_last should be a boolean value, but got drop_last={drop_last!r}")
        self.drop_last = drop_last

    def __iter__(self):
        batch = []
        for i in self.sampler:
            batch.append(i)
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch and not self.drop_last:
            yield batch

    def __len__(self):
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)
