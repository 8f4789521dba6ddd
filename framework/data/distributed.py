"""DistributedSampler: each rank reads its own 1/world_size share of a dataset's indices, reshuffled per epoch."""

from __future__ import annotations

import math

import numpy as np


class DistributedSampler:
    """PyTorch's ``torch.utils.data.distributed.DistributedSampler``: the (optionally shuffled) indices, padded by
    repeating the first ones so that every rank gets ``len(self)`` of them (or, with ``drop_last=True``, cut to a
    multiple of ``num_replicas``), then rank r takes every ``num_replicas``-th index starting at r. Every rank
    must use the same ``seed`` and call ``set_epoch(epoch)`` at each epoch's start: the shuffle depends on
    ``seed + epoch`` only, so the ranks agree on it without communication. The permutation comes from NumPy's
    generator, not PyTorch's: the same partition rules, different orders.
    """

    def __init__(self, dataset, num_replicas=None, rank=None, shuffle=True, seed=0, drop_last=False):
        if num_replicas is None or rank is None:
            from .. import distributed as dist

            if not dist.is_initialized():
                raise RuntimeError("DistributedSampler needs num_replicas and rank, or an initialized process group")
            num_replicas = dist.get_world_size() if num_replicas is None else num_replicas
            rank = dist.get_rank() if rank is None else rank
        if not 0 <= rank < num_replicas:
            raise ValueError(f"Invalid rank {rank}, rank should be in the interval [0, {num_replicas - 1}]")
        self.dataset, self.num_replicas, self.rank = dataset, num_replicas, rank
        self.shuffle, self.seed, self.drop_last, self.epoch = shuffle, seed, drop_last, 0
        n = len(dataset)
        if drop_last and n % num_replicas:
            self.num_samples = math.ceil((n - num_replicas) / num_replicas)  # drop the tail so no rank pads
        else:
            self.num_samples = math.ceil(n / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def __iter__(self):
        n = len(self.dataset)
        if self.shuffle:
            indices = np.random.default_rng(self.seed + self.epoch).permutation(n).tolist()
        else:
            indices = list(range(n))
        if not self.drop_last:
            pad = self.total_size - len(indices)
            if pad <= len(indices):
                indices += indices[:pad]
            else:  # a dataset smaller than the world: repeat it whole
                indices += (indices * math.ceil(pad / len(indices)))[:pad]
        else:
            indices = indices[: self.total_size]
        return iter(indices[self.rank : self.total_size : self.num_replicas])

    def __len__(self):
        return self.num_samples

    def set_epoch(self, epoch):
        """Set the epoch, whose number seeds this epoch's shuffle (with ``seed``) on every rank alike."""
        self.epoch = epoch
