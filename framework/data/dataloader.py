"""``DataLoader``: batches from a dataset, reproducible shuffling, and a state dict to resume mid-epoch."""

from __future__ import annotations

import collections.abc as cabc
import numbers
import warnings

import numpy as np

from .._backend import is_cupy_array, xp_of
from ..creation import _state
from ..tensor import Tensor, stack

__all__ = ["DataLoader", "default_collate"]


def default_collate(batch):
    """Merge a list of samples into a batch, as PyTorch's ``default_collate``.

    Tensors and NumPy arrays are stacked along a new first dimension; Python ints become an int64 tensor,
    floats a float64 tensor, bools a bool tensor; strings stay a list; tuples, lists and dicts are collated
    field by field (a tuple of tensors gives a tuple of stacked tensors).

    Example::

        default_collate([(conch.zeros(3), 1), (conch.ones(3), 0)])   # (tensor of shape (2, 3), tensor([1, 0]))
    """
    if not batch:
        raise ValueError("default_collate: got an empty batch")
    elem = batch[0]
    if isinstance(elem, Tensor):
        shapes = {t.shape for t in batch}
        if len(shapes) != 1:
            raise RuntimeError(f"default_collate: stack expects each tensor to be equal size, but got {sorted(shapes)}")
        return stack([t.detach() for t in batch], 0)
    if isinstance(elem, np.ndarray):
        shapes = {a.shape for a in batch}
        if len(shapes) != 1:
            raise RuntimeError(f"default_collate: arrays have different shapes {sorted(shapes)}")
        return Tensor._make(np.stack(batch))
    if is_cupy_array(elem):  # CuPy arrays: stacked on their GPU
        shapes = {a.shape for a in batch}
        if len(shapes) != 1:
            raise RuntimeError(f"default_collate: arrays have different shapes {sorted(shapes)}")
        return Tensor._make(xp_of(elem).stack(batch))
    if isinstance(elem, (bool, np.bool_)):
        return Tensor._make(np.array(batch, dtype=np.bool_))
    if isinstance(elem, numbers.Integral):
        return Tensor._make(np.array(batch, dtype=np.int64))
    if isinstance(elem, numbers.Real):
        return Tensor._make(np.array(batch, dtype=np.float64))
    if isinstance(elem, (str, bytes)):
        return list(batch)
    if isinstance(elem, cabc.Mapping):
        return {k: default_collate([d[k] for d in batch]) for k in elem}
    if isinstance(elem, tuple) and hasattr(elem, "_fields"):  # namedtuple
        return type(elem)(*(default_collate(list(s)) for s in zip(*batch)))
    if isinstance(elem, cabc.Sequence):
        n = len(elem)
        if any(len(s) != n for s in batch):
            raise RuntimeError("default_collate: each element in list of batch should be of equal size")
        fields = [default_collate(list(s)) for s in zip(*batch)]
        return tuple(fields) if isinstance(elem, tuple) else fields
    raise TypeError(
        f"default_collate: batch must contain tensors, NumPy arrays, numbers, dicts or lists; found {type(elem)}"
    )


class DataLoader:
    """Iterate over ``dataset`` in batches.

    Args:
        dataset: a map-style dataset (``__getitem__`` and ``__len__``).
        batch_size: samples per batch.
        shuffle: visit the samples in a new random order each epoch.
        drop_last: drop the last batch when it is smaller than ``batch_size``.
        collate_fn: merges a list of samples into a batch (default :func:`default_collate`).
        seed: the shuffling seed. Epoch ``e`` visits ``numpy.random.default_rng([seed, e]).permutation(n)``,
            so the order depends only on (seed, epoch). Without a seed, one is drawn at construction from
            ``generator`` (a ``numpy.random.Generator`` or an int seed) or else from conch's global generator,
            so ``conch.manual_seed(s)`` before building the loader makes runs reproducible.

    Each ``iter(loader)`` is one epoch. ``state_dict()`` records (seed, epoch, batches already yielded);
    after ``load_state_dict`` the next iteration continues that epoch from the following batch, so a resumed
    run sees exactly the batches the uninterrupted run would have. Samples are loaded in this process
    (``num_workers`` is accepted for compatibility and ignored).

    Example::

        loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, seed=0)
        for epoch in range(3):
            for xb, yb in loader:
                ...
    """

    def __init__(self, dataset, batch_size=1, shuffle=False, drop_last=False, collate_fn=None, *, seed=None,
                 generator=None, num_workers=0, pin_memory=False):  # fmt: skip
        if batch_size is None or isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
            raise TypeError(f"batch_size should be a positive integer value, but got batch_size={batch_size!r}")
        if batch_size <= 0:
            raise ValueError(f"batch_size should be a positive integer value, but got batch_size={batch_size}")
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise TypeError(f"DataLoader needs a map-style dataset (__getitem__ and __len__), got {type(dataset)}")
        if num_workers:
            warnings.warn("conch's DataLoader loads in the main process; num_workers is ignored", stacklevel=2)
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.collate_fn = default_collate if collate_fn is None else collate_fn
        if seed is None and shuffle:
            seed = _draw_seed(generator)
        self.seed = None if seed is None else int(seed)
        self._epoch = 0
        self._position = 0
        self._resume = False
        self._active = False

    def __len__(self):
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def epoch(self):
        """The number of the current (or next) epoch, from 0."""
        return self._epoch

    def set_epoch(self, epoch):
        """Make the next iteration epoch ``epoch`` (from its start)."""
        self._epoch, self._position, self._resume, self._active = int(epoch), 0, False, False

    def _order(self, epoch):
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n, dtype=np.int64)
        return np.random.default_rng([self.seed, epoch]).permutation(n).astype(np.int64)

    def __iter__(self):
        if self._resume:
            self._resume = False
        elif self._active:  # the previous iteration was abandoned mid-epoch: start the next epoch
            self._epoch += 1
            self._position = 0
        return self._iterate()

    def _iterate(self):
        epoch = self._epoch
        order = self._order(epoch)
        n, bs = len(order), self.batch_size
        nb = len(self)
        fast = self.collate_fn is default_collate and hasattr(self.dataset, "_batch")
        self._active = True
        b = self._position
        while b < nb and self._epoch == epoch:
            idx = order[b * bs : min((b + 1) * bs, n)]
            if fast:
                batch = self.dataset._batch(idx)
            else:
                batch = self.collate_fn([self.dataset[int(i)] for i in idx])
            b += 1
            self._position = b  # counted before yielding: a state_dict taken in the loop body resumes after it
            yield batch
        if self._epoch == epoch:
            self._epoch, self._position, self._active = epoch + 1, 0, False

    def state_dict(self):
        """``{"seed", "epoch", "position", "num_samples"}``: where the next batch comes from."""
        return {"seed": self.seed, "epoch": self._epoch, "position": self._position, "num_samples": len(self.dataset)}

    def load_state_dict(self, state):
        """Continue from ``state``: the next iteration resumes epoch ``state["epoch"]`` after ``position`` batches."""
        n = state.get("num_samples")
        if n is not None and n != len(self.dataset):
            raise ValueError(
                f"DataLoader state was saved for a dataset of {n} samples, but this dataset has {len(self.dataset)}"
            )
        self.seed = None if state.get("seed") is None else int(state["seed"])
        self._epoch = int(state["epoch"])
        self._position = int(state["position"])
        self._resume = True
        self._active = False


def _draw_seed(generator):
    if isinstance(generator, np.random.Generator):
        return int(generator.integers(0, 2**63 - 1))
    if isinstance(generator, numbers.Integral):
        return int(generator)
    if generator is not None:
        raise TypeError(f"generator must be a numpy.random.Generator or an int seed, got {type(generator).__name__}")

    return int(_state["np"].integers(0, 2**63 - 1))
