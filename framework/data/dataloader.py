"""``DataLoader``: batches from a dataset (samplers, worker processes), reproducible shuffling, mid-epoch resume."""

from __future__ import annotations

import collections.abc as cabc
import multiprocessing
import numbers
import random
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from .._backend import is_cupy_array, xp_of
from ..creation import _state
from ..tensor import Tensor, stack
from .dataset import IterableDataset
from .sampler import BatchSampler, RandomSampler, SequentialSampler

__all__ = ["DataLoader", "default_collate", "default_convert", "get_worker_info", "WorkerInfo"]


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


def default_convert(data):
    """Without batching (``batch_size=None``): NumPy arrays become tensors, containers are converted field by field,
    everything else stays as it is (PyTorch's ``default_convert``)."""
    if isinstance(data, np.ndarray) and data.dtype.kind not in "USO":
        return Tensor._make(data)
    if isinstance(data, cabc.Mapping):
        return {k: default_convert(v) for k, v in data.items()}
    if isinstance(data, tuple) and hasattr(data, "_fields"):
        return type(data)(*(default_convert(d) for d in data))
    if isinstance(data, (list, tuple)):
        return type(data)(default_convert(d) for d in data)
    return data


class WorkerInfo:
    """What :func:`get_worker_info` returns inside a worker: ``id``, ``num_workers``, ``seed``, ``dataset``."""

    def __init__(self, id, num_workers, seed, dataset):  # noqa: A002  (PyTorch's field name)
        self.id, self.num_workers, self.seed, self.dataset = id, num_workers, seed, dataset

    def __repr__(self):
        return f"WorkerInfo(id={self.id}, num_workers={self.num_workers}, seed={self.seed})"


_worker = {"info": None}  # set once in each worker process by _worker_init


def get_worker_info():
    """The :class:`WorkerInfo` of the DataLoader worker process this runs in; ``None`` in the main process."""
    return _worker["info"]


def _index(i):
    return int(i) if isinstance(i, np.integer) else i


def _fetch(dataset, indices, collate_fn, auto):
    """One batch: ``indices`` is a list of indices (auto-batching) or a single index (``batch_size=None``)."""
    if not auto:
        return collate_fn(dataset[_index(indices)])
    if collate_fn is default_collate and hasattr(dataset, "_batch"):  # one gather per tensor, no per-sample stack
        try:
            return dataset._batch(np.asarray(indices, dtype=np.int64))
        except AttributeError:  # a Subset over a dataset without the fast path
            pass
    return collate_fn([dataset[_index(i)] for i in indices])


def _worker_init(dataset, collate_fn, auto, worker_init_fn, base_seed, counter, num_workers):
    with counter.get_lock():
        wid = counter.value
        counter.value += 1
    seed = (base_seed + wid) % 2**63
    # each worker draws different random numbers (augmentations), reproducibly from the loader's base seed
    from ..creation import manual_seed

    manual_seed(seed)
    random.seed(seed)
    _worker.update(info=WorkerInfo(wid, num_workers, seed, dataset), dataset=dataset, collate_fn=collate_fn, auto=auto)
    if worker_init_fn is not None:
        worker_init_fn(wid)


def _worker_fetch(indices):
    return _fetch(_worker["dataset"], indices, _worker["collate_fn"], _worker["auto"])


def _worker_iterate(shard, batch_size, drop_last):
    """An IterableDataset in a worker: shard ``shard``'s copy of the stream, batched, as one list.

    A process-pool task is not bound to one process (two tasks may run in the same worker), so the shard number
    travels with the task and get_worker_info() reports it while the dataset is iterated.
    """
    own = _worker["info"]
    _worker["info"] = WorkerInfo(shard, own.num_workers, own.seed, own.dataset)
    try:
        return _stream_batches(iter(_worker["dataset"]), _worker["collate_fn"], batch_size, drop_last)
    finally:
        _worker["info"] = own


def _stream_batches(it, collate_fn, batch_size, drop_last):
    if batch_size is None:
        return [collate_fn(s) for s in it]
    out, batch = [], []
    for s in it:
        batch.append(s)
        if len(batch) == batch_size:
            out.append(collate_fn(batch))
            batch = []
    if batch and not drop_last:
        out.append(collate_fn(batch))
    return out


def _pin(obj):
    if isinstance(obj, Tensor):
        return obj.pin_memory()
    if isinstance(obj, dict):
        return {k: _pin(v) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_pin(v) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_pin(v) for v in obj)
    return obj


class DataLoader:
    """Iterate over ``dataset`` in batches, with PyTorch's arguments.

    Args:
        dataset: a map-style dataset (``__getitem__`` and ``__len__``) or an :class:`IterableDataset`.
        batch_size: samples per batch; ``None`` turns batching off (each sample goes through ``collate_fn``,
            default :func:`default_convert`).
        shuffle: visit the samples in a new random order each epoch.
        sampler: an iterable of indices (a :class:`Sampler`); excludes ``shuffle``.
        batch_sampler: an iterable of index lists; excludes ``batch_size``, ``shuffle``, ``sampler``, ``drop_last``.
        num_workers: worker processes that load and collate whole batches; batches still arrive in order.
            Each worker gets a copy of the dataset and seeds conch's and Python's generators with
            ``base_seed + worker_id`` (see :func:`get_worker_info`). 0 loads in this process.
        collate_fn: merges a list of samples into a batch (default :func:`default_collate`).
        pin_memory: put batches in page-locked host memory (``Tensor.pin_memory``) when a GPU is present.
        drop_last: drop the last batch when it is smaller than ``batch_size``.
        timeout: seconds to wait for a worker's batch (0: forever).
        worker_init_fn: called as ``fn(worker_id)`` in each worker after seeding.
        multiprocessing_context: a ``multiprocessing`` context or its name (``"fork"``, ``"spawn"``, ...).
        generator: a ``numpy.random.Generator`` or an int seed for the shuffle (default conch's global generator).
        prefetch_factor: batches in flight per worker (default 2).
        persistent_workers: keep the worker processes between epochs.
        seed: the shuffling seed. Epoch ``e`` visits ``numpy.random.default_rng([seed, e]).permutation(n)``,
            so the order depends only on (seed, epoch). Without a seed, one is drawn at construction from
            ``generator`` or else from conch's global generator, so ``conch.manual_seed(s)`` before building the
            loader makes runs reproducible.

    Each ``iter(loader)`` is one epoch. ``state_dict()`` records (seed, epoch, batches already yielded);
    after ``load_state_dict`` the next iteration continues that epoch from the following batch, so a resumed
    run sees exactly the batches the uninterrupted run would have (with a user ``sampler``/``batch_sampler``
    the resumed epoch skips the batches already seen of a fresh pass over the sampler, which is the same
    batches when the sampler is deterministic).

    Example::

        loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, num_workers=2, seed=0)
        for epoch in range(3):
            for xb, yb in loader:
                ...
    """

    def __init__(self, dataset, batch_size=1, shuffle=None, sampler=None, batch_sampler=None, num_workers=0,
                 collate_fn=None, pin_memory=False, drop_last=False, timeout=0, worker_init_fn=None,
                 multiprocessing_context=None, generator=None, *, prefetch_factor=None, persistent_workers=False,
                 pin_memory_device="", in_order=True, seed=None):  # fmt: skip
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral)):
            raise TypeError(f"batch_size should be a positive integer value, but got batch_size={batch_size!r}")
        if batch_size is not None and batch_size <= 0:
            raise ValueError(f"batch_size should be a positive integer value, but got batch_size={batch_size}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, numbers.Integral) or num_workers < 0:
            raise ValueError(f"num_workers option should be non-negative; got num_workers={num_workers!r}")
        if timeout < 0:
            raise ValueError(f"timeout option should be non-negative; got timeout={timeout!r}")
        if num_workers == 0 and (prefetch_factor is not None or persistent_workers):
            raise ValueError("prefetch_factor and persistent_workers need num_workers > 0")
        iterable = isinstance(dataset, IterableDataset)
        if iterable:
            if shuffle:
                raise ValueError(f"DataLoader with IterableDataset: expected unspecified shuffle option, got {shuffle}")
            if sampler is not None or batch_sampler is not None:
                raise ValueError("DataLoader with IterableDataset: expected unspecified sampler and batch_sampler")
        elif not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise TypeError(f"DataLoader needs a map-style dataset (__getitem__ and __len__) or an IterableDataset, "
                            f"got {type(dataset).__name__}")  # fmt: skip
        if sampler is not None and shuffle:
            raise ValueError("sampler option is mutually exclusive with shuffle")
        if batch_sampler is not None:
            if batch_size != 1 or shuffle or sampler is not None or drop_last:
                raise ValueError("batch_sampler option is mutually exclusive with batch_size, shuffle, sampler, "
                                 "and drop_last")  # fmt: skip
            batch_size, drop_last = None, False
        elif batch_size is None and drop_last:
            raise ValueError("batch_size=None option disables auto-batching and is mutually exclusive with drop_last")
        self.dataset = dataset
        self.batch_size = None if batch_size is None else int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self._iterable = iterable
        self._auto = batch_size is not None or batch_sampler is not None
        default = default_collate if self._auto else default_convert
        self.collate_fn = default if collate_fn is None else collate_fn
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.pin_memory_device = pin_memory_device
        self.timeout = timeout
        self.worker_init_fn = worker_init_fn
        self.multiprocessing_context = multiprocessing_context
        self.prefetch_factor = 2 if prefetch_factor is None and num_workers else prefetch_factor
        self.persistent_workers = bool(persistent_workers)
        self.in_order = in_order  # batches always arrive in order here
        self.generator = generator
        # the default samplers are computed here from (seed, epoch) so that a resumed epoch replays its order;
        # self.sampler/self.batch_sampler still name them, as PyTorch's attributes do
        self._custom = sampler is not None or batch_sampler is not None
        if seed is None and self.shuffle:
            seed = _draw_seed(generator)
        self.seed = None if seed is None else int(seed)
        if iterable:
            self.sampler, self.batch_sampler = None, None
        else:
            if sampler is None:
                sampler = RandomSampler(dataset) if self.shuffle else SequentialSampler(dataset)
            self.sampler = sampler
            if batch_sampler is None and self.batch_size is not None:
                batch_sampler = BatchSampler(sampler, self.batch_size, self.drop_last)
            self.batch_sampler = batch_sampler
        self._epoch = 0
        self._position = 0
        self._resume = False
        self._active = False
        self._executor = None

    def __len__(self):
        if self._iterable:
            n = len(self.dataset)  # TypeError when the stream has no length, as PyTorch
            if self.batch_size is None:
                return n
            return n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        if self._custom:
            return len(self.batch_sampler) if self.batch_sampler is not None else len(self.sampler)
        n = len(self.dataset)
        if self.batch_size is None:
            return n
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

    def _tasks(self, epoch):
        """The epoch's batches as index lists (or single indices without batching), from the start."""
        if self._custom:
            if self.batch_sampler is not None:
                return iter(self.batch_sampler)
            return iter(self.sampler)
        order = self._order(epoch)
        if self.batch_size is None:
            return iter(order.tolist())
        n, bs = len(order), self.batch_size
        return (order[b * bs : min((b + 1) * bs, n)] for b in range(len(self)))

    def __iter__(self):
        if self._resume:
            self._resume = False
        elif self._active:  # the previous iteration was abandoned mid-epoch: start the next epoch
            self._epoch += 1
            self._position = 0
        return self._iterate()

    def _iterate(self):
        epoch = self._epoch
        self._active = True
        b = self._position
        if self._iterable:
            batches = self._stream() if self.num_workers == 0 else self._stream_workers()
            for _ in range(b):  # resume: skip what was yielded before
                next(batches, None)
        else:
            tasks = self._tasks(epoch)
            for _ in range(b):
                next(tasks, None)
            if self.num_workers == 0:
                batches = (_fetch(self.dataset, t, self.collate_fn, self._auto) for t in tasks)
            else:
                batches = self._from_workers(tasks)
        pin = self.pin_memory and _gpu_present()
        try:
            for batch in batches:
                if self._epoch != epoch:
                    break
                b += 1
                self._position = b  # counted before yielding: a state_dict taken in the loop body resumes after it
                yield _pin(batch) if pin else batch
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()
            if not self.persistent_workers:
                self._shutdown()
        if self._epoch == epoch:
            self._epoch, self._position, self._active = epoch + 1, 0, False

    def _stream(self):
        if self.batch_size is None:
            yield from (self.collate_fn(s) for s in self.dataset)
            return
        batch = []
        for s in self.dataset:
            batch.append(s)
            if len(batch) == self.batch_size:
                yield self.collate_fn(batch)
                batch = []
        if batch and not self.drop_last:
            yield self.collate_fn(batch)

    def _pool(self):
        if self._executor is None:
            ctx = self.multiprocessing_context
            if ctx is None or isinstance(ctx, str):
                ctx = multiprocessing.get_context(ctx)
            base_seed = _draw_seed(None)  # a new stream of worker seeds per pool, following conch.manual_seed
            args = (self.dataset, self.collate_fn, self._auto, self.worker_init_fn, base_seed,
                    ctx.Value("i", 0), self.num_workers)  # fmt: skip
            self._executor = ProcessPoolExecutor(self.num_workers, mp_context=ctx, initializer=_worker_init,
                                                 initargs=args)  # fmt: skip
        return self._executor

    def _result(self, future):
        try:
            return future.result(timeout=self.timeout or None)
        except BrokenProcessPool as e:
            self._shutdown()
            raise RuntimeError("DataLoader worker exited unexpectedly (killed, or it crashed while loading)") from e
        except TimeoutError as e:
            raise RuntimeError(f"DataLoader timed out after {self.timeout} seconds waiting for a worker") from e

    def _from_workers(self, tasks):
        """Batches loaded by the workers, in order: at most ``num_workers * prefetch_factor`` in flight."""
        pool = self._pool()
        window = self.num_workers * self.prefetch_factor
        pending = []
        try:
            for t in tasks:
                pending.append(pool.submit(_worker_fetch, t))
                if len(pending) >= window:
                    yield self._result(pending.pop(0))
            while pending:
                yield self._result(pending.pop(0))
        finally:
            for f in pending:
                f.cancel()

    def _stream_workers(self):
        """An IterableDataset: each worker yields its copy of the stream; batches are taken round-robin."""
        pool = self._pool()
        # one task per shard: each loads that shard's whole stream (get_worker_info().id is the shard)
        futures = [pool.submit(_worker_iterate, k, self.batch_size, self.drop_last) for k in range(self.num_workers)]
        streams = [iter(self._result(f)) for f in futures]
        while streams:
            for s in list(streams):
                batch = next(s, _END)
                if batch is _END:
                    streams.remove(s)
                else:
                    yield batch

    def _shutdown(self):
        ex, self._executor = self._executor, None
        if ex is not None:
            ex.shutdown(wait=True, cancel_futures=True)

    def __del__(self):
        try:
            self._shutdown()
        except Exception:  # noqa: BLE001  (interpreter teardown: the pool may already be gone)
            pass

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_executor"] = None  # worker processes do not travel with a pickled loader
        return state

    def state_dict(self):
        """``{"seed", "epoch", "position", "num_samples"}``: where the next batch comes from."""
        n = None if self._iterable else len(self.dataset)
        return {"seed": self.seed, "epoch": self._epoch, "position": self._position, "num_samples": n}

    def load_state_dict(self, state):
        """Continue from ``state``: the next iteration resumes epoch ``state["epoch"]`` after ``position`` batches."""
        n = state.get("num_samples")
        if n is not None and not self._iterable and n != len(self.dataset):
            raise ValueError(
                f"DataLoader state was saved for a dataset of {n} samples, but this dataset has {len(self.dataset)}"
            )
        self.seed = None if state.get("seed") is None else int(state["seed"])
        self._epoch = int(state["epoch"])
        self._position = int(state["position"])
        self._resume = True
        self._active = False


_END = object()


def _gpu_present():
    from .._backend import cuda

    return cuda.is_available()


def _draw_seed(generator):
    if isinstance(generator, np.random.Generator):
        return int(generator.integers(0, 2**63 - 1))
    if isinstance(generator, numbers.Integral):
        return int(generator)
    if generator is not None:
        raise TypeError(f"generator must be a numpy.random.Generator or an int seed, got {type(generator).__name__}")

    return int(_state["np"].integers(0, 2**63 - 1))
