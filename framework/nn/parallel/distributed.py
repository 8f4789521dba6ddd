"""DistributedDataParallel: one model replica per rank, gradients averaged across ranks during backward."""

from __future__ import annotations

import contextlib
import weakref

import numpy as np

from ... import distributed as dist
from ..._backend import xp_of
from ...autograd import engine
from ...autograd.grad_mode import is_grad_enabled, no_grad
from ...futures import Future
from ...tensor import Tensor
from ..module import Module

#: PyTorch's ``dist._DEFAULT_FIRST_BUCKET_BYTES``: the first bucket (the last layers, whose gradients come
#: first) is small so that communication starts early in the backward pass
FIRST_BUCKET_BYTES = 1024 * 1024

#: A CPU parameter of at least this many bytes (or of the bucket cap, when smaller) is reduced alone and in place,
#: in its own ``.grad``, when backward has finished: copying it into a bucket and back costs two passes over its
#: gradient, as much CPU time as the all-reduce itself, while MPICH moves a non-blocking all-reduce only inside
#: MPI calls, so starting it during backward gains nothing on the CPU (measured: 784-1024-1024-10 MLP, 2 ranks).
SOLO_BYTES = 1024 * 1024

_EARLY = "Detected at least one rank that exhausted inputs. Throwing across all ranks."

_UNFINISHED = (
    "Expected to have finished reduction in the prior iteration before starting a new one. This error indicates "
    "that your module has parameters that were not used in producing loss. You can enable unused parameter "
    "detection by passing the keyword argument `find_unused_parameters=True` to "
    "`conch.nn.parallel.DistributedDataParallel`, and by making sure all `forward` function outputs participate "
    "in calculating loss. If you already have done the above, then the distributed data parallel module wasn't "
    "able to locate the output tensors in the return value of your module's `forward` function."
)


class _Bucket:
    """Parameters whose gradients travel in one all-reduce: their indices, offsets in the flat buffer, and
    this pass's state (the buffer, how many gradients are still to come, the work handle). A ``solo`` bucket
    holds one large CPU parameter, reduced in its own ``.grad`` when possible (``inplace``) after backward."""

    __slots__ = ("index", "params", "offsets", "numel", "dtype", "flat", "pending", "work", "solo", "inplace")

    def __init__(self, index, params, offsets, numel, dtype, solo=False):
        self.index, self.params, self.offsets, self.numel, self.dtype = index, params, offsets, numel, dtype
        self.flat = self.work = None
        self.pending = len(params)
        self.solo, self.inplace = solo, False


class DistributedDataParallel(Module):
    """Wrap ``module`` for data-parallel training (PyTorch's ``torch.nn.parallel.DistributedDataParallel``).

    At construction rank 0's parameters and buffers are broadcast to every rank, so all replicas start equal.
    Each ``backward`` then leaves in every parameter's ``.grad`` the average over the R ranks of the local
    gradients, ``grad = (1/R) * sum_r grad_r``, so that ``optimizer.step()`` keeps the replicas equal.

    Buckets and overlap: parameters are grouped in reverse order (the order backward produces their gradients)
    into buckets of about ``bucket_cap_mb`` MiB (25 by default; the first one about 1 MiB), one flat buffer
    each. When the last gradient of a bucket has been accumulated (``Tensor.register_post_accumulate_grad_hook``),
    its all-reduce starts, non-blocking, while backward goes on computing the earlier layers' gradients;
    buckets start in index order on every rank. A callback the engine runs when backward finishes waits for
    them and writes the averages into ``.grad``, so the optimizer never sees a partial result. On the CPU a
    parameter of at least ``min(SOLO_BYTES, bucket cap)`` bytes is reduced alone in that callback, in its own
    ``.grad`` (divided by R in place, then summed): no copy into a bucket and back (MPICH advances an all-reduce
    only inside MPI calls, so starting it during backward would not overlap anyway).

    ``no_sync()``: backward passes inside only accumulate locally; the first one outside averages the sum.
    ``find_unused_parameters=True``: parameters the forward's outputs do not reach are found by walking the
    graph after forward and count as zero gradients in the average; one unused on every rank keeps
    ``grad=None``. Without it, a parameter that gets no gradient leaves its bucket unreduced, and the next
    forward raises PyTorch's "Expected to have finished reduction in the prior iteration" RuntimeError.
    ``static_graph=True``: the first iteration finds the unused parameters as ``find_unused_parameters`` does;
    later ones reuse what it found (no graph walk, no all-reduce of the used flags).
    ``register_comm_hook(state, hook)``: each bucket is reduced by ``hook`` instead (PyTorch's comm hooks).

    Example::

        dist.init_process_group()
        model = DistributedDataParallel(Net())
        loss = loss_fn(model(x_local), y_local)
        loss.backward()          # .grad is the average over ranks
        opt.step()
    """

    def __init__(self, module, device_ids=None, output_device=None, dim=0, broadcast_buffers=True,
                 process_group=None, bucket_cap_mb=None, find_unused_parameters=False, check_reduction=False,
                 gradient_as_bucket_view=False, static_graph=False, **kwargs):  # fmt: skip
        super().__init__()
        if not dist.is_initialized():
            raise ValueError(dist.c10d._NOT_INIT)
        pg = dist.c10d._pg(process_group)
        if pg is None:
            raise ValueError("DistributedDataParallel: this rank is not a member of process_group")
        self.module = module
        self.process_group = process_group
        self.broadcast_buffers = broadcast_buffers
        self.find_unused_parameters = bool(find_unused_parameters)
        self.static_graph = bool(static_graph)
        self._static = None  # static_graph: (unused here, used on any rank) as the first iteration found them
        self.gradient_as_bucket_view = bool(gradient_as_bucket_view)
        self.require_backward_grad_sync = True
        #: conch's switch for benchmarks: False starts every bucket's all-reduce only after backward
        self.overlap = True
        self.bucket_bytes_cap = int((25 if bucket_cap_mb is None else bucket_cap_mb) * 1024 * 1024)
        names = {id(p): n for n, p in module.named_parameters()}
        self._params = [p for p in module.parameters() if p.requires_grad]
        self._names = [names.get(id(p), "?") for p in self._params]
        pg.mpi.agree("DistributedDataParallel", ";".join(f"{tuple(p.shape)}:{p.dtype}" for p in self._params))
        with no_grad():  # every replica starts from rank 0's weights
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t, pg.ranks[0], group=process_group)
        self._pg = pg
        self._solo = pg.mpi.size == 1
        self._buckets, self._where = self._make_buckets(self._params)
        self._armed = self._started = self._queued = False
        self._ready = [False] * len(self._params)
        self._used = np.zeros(len(self._params), np.uint8)  # got a gradient this pass (for find_unused_parameters)
        self._used_anywhere = self._used  # the same on every rank after the end-of-backward all-reduce (MAX)
        self._inplace_ids = set()  # the .grad arrays reduced in place this pass
        self._scale = 1.0 / pg.mpi.size  # DDP averages: each rank divides by the world size, the all-reduce sums
        self._comm_hook = None  # (state, hook) from register_comm_hook: the hook then reduces (and divides)
        self._join = None  # inside join(): (divide_by_initial_world_size, throw_on_early_termination)
        self._unused_expected = []  # from the graph walk after forward
        self._next_bucket = 0
        self._unfinished = None  # indices of parameters that got no gradient in the last pass
        me = weakref.ref(self)  # the hooks live on the parameters: they must not keep this wrapper alive
        self._hook_handles = [p.register_post_accumulate_grad_hook(_hook(me, i)) for i, p in enumerate(self._params)]

    def _make_buckets(self, params):
        """Reverse parameter order, split when a bucket would pass its cap (1 MiB for the first, then
        ``bucket_bytes_cap``) or change dtype or device; the layout is the same on every rank, since every rank
        builds the same model (checked at construction). CPU parameters of at least ``min(SOLO_BYTES,
        bucket_bytes_cap)`` bytes get solo buckets, after the others (reverse order too): the regular buckets
        start during backward, the solo ones in the end-of-backward callback, so every rank issues the
        collectives in the same order."""
        solo_at = min(SOLO_BYTES, self.bucket_bytes_cap)
        groups, solos, cur, size = [], [], [], 0
        for i in reversed(range(len(params))):
            p = params[i]
            nbytes = p.numel() * p._data.itemsize
            if nbytes >= solo_at and isinstance(p._data, np.ndarray):
                solos.append([i])
                continue
            cap = min(FIRST_BUCKET_BYTES, self.bucket_bytes_cap) if not groups else self.bucket_bytes_cap
            first = params[cur[0]] if cur else None
            if cur and (size + nbytes > cap or p.dtype != first.dtype or p.device != first.device):
                groups.append(cur)
                cur, size = [], 0
            cur.append(i)
            size += nbytes
        if cur:
            groups.append(cur)
        buckets, where = [], [None] * len(params)
        for b, idx in enumerate(groups + solos):
            offsets, off = [], 0
            for i in idx:
                where[i] = (b, len(offsets))
                offsets.append(off)
                off += params[i].numel()
            buckets.append(_Bucket(b, idx, offsets, off, params[idx[0]].dtype, solo=b >= len(groups)))
        return buckets, where

    # ------------------------------------------------------------------ forward
    def forward(self, *args, **kwargs):
        if self._unfinished is not None:
            missing, self._unfinished = self._unfinished, None
            rank = dist.get_rank(self.process_group)
            raise RuntimeError(
                f"{_UNFINISHED}\nParameter indices which did not receive grad for rank {rank}: "
                + " ".join(map(str, missing))
                + "\nParameters which did not receive grad for rank "
                + f"{rank}: "
                + ", ".join(self._names[i] for i in missing)
            )
        src = self._pg.ranks[0]
        if self._join is not None:
            src = self._notify_join()
        if self.broadcast_buffers and is_grad_enabled() and self._pg.mpi.size > 1:
            self._sync_buffers(src)  # PyTorch's default: rank 0's buffers (BatchNorm statistics) at each forward
        out = self.module(*args, **kwargs)
        self._prepare(out)
        return out

    def _prepare(self, out):
        """Reset this pass's state; with find_unused_parameters, find the parameters ``out`` does not reach."""
        self._armed = is_grad_enabled() and self.require_backward_grad_sync
        self._started = False
        if not self._armed:
            return
        self._ready = [False] * len(self._params)
        self._used[:] = 0
        self._next_bucket = 0
        for b in self._buckets:
            b.work, b.pending = None, len(b.params)
        roots = [t for t in _tensors(out) if t.requires_grad and t.grad_fn is not None]
        if self._static is not None:  # static_graph: the first iteration's walk holds for every later one
            self._unused_expected = self._static[0]
        elif self.find_unused_parameters or self.static_graph:
            reached = {id(leaf) for leaf in engine.walk_graph(roots, with_leaves=True)[2]}
            self._unused_expected = [i for i, p in enumerate(self._params) if id(p) not in reached]
        me = weakref.ref(self)
        for t in roots:  # the pass's start, even when no parameter's hook fires (all unused on this rank)
            t.register_hook(lambda g, me=me: _start(me))

    # ------------------------------------------------------------------ backward
    def _start_pass(self):
        if self._started:
            return
        self._started = True
        if not self._queued:
            self._queued = True
            engine.queue_callback(self._finalize)
        for i in self._unused_expected if self._finds_unused() else ():
            self._mark_ready(i)

    def _mark_ready(self, i):
        if self._ready[i]:
            raise RuntimeError(
                f"Expected to mark a variable ready only once. Parameter {i} ({self._names[i]}) got a gradient "
                "twice in one backward pass under DistributedDataParallel (a reentrant backward, or a parameter "
                "shared with a module outside DDP?)"
            )
        self._ready[i] = True
        if self._solo:  # one rank: the local gradients are the average already; only the bookkeeping runs
            self._used[i] = self._params[i].grad is not None
            return
        b_idx, k = self._where[i]
        b = self._buckets[b_idx]
        p = self._params[i]
        g = p.grad
        self._used[i] = g is not None
        if b.solo:  # reduced in .grad itself once backward has finished (_finalize): nothing to copy now
            b.pending = 0
            return
        if b.flat is None:  # kept across passes: a fresh buffer each step would cost its page faults each step
            b.flat = xp_of(p._data).empty(b.numel, b.dtype)
        seg = b.flat[b.offsets[k] : b.offsets[k] + p.numel()]
        if g is not None:  # PyTorch's order: divide by the world size while copying into the bucket, then SUM
            xp_of(seg).multiply(g._data, self._copy_scale(), out=seg.reshape(g.shape))
        else:  # unused here: zeros in the average (find_unused_parameters)
            seg.fill(0)
        b.pending -= 1
        if b.pending == 0 and self.overlap:
            self._launch_ready()
        elif self._next_bucket:
            self._poke()

    def _launch_ready(self, final=False):
        """Start the all-reduce of every complete bucket from ``_next_bucket`` on, in order (MPI and NCCL match
        collectives by issue order, so every rank must start them in the same one); the solo buckets only when
        ``final`` (backward has finished and every .grad is final)."""
        buckets = self._buckets
        while self._next_bucket < len(buckets):
            b = buckets[self._next_bucket]
            if b.pending or (b.solo and not final):
                break
            arr = self._solo_buffer(b) if b.solo else b.flat
            if arr is None:
                pass
            elif self._comm_hook is not None:
                b.work = self._run_hook(b, Tensor._make(arr))
            else:
                t = Tensor._make(arr)
                b.work = self._pg.for_tensor(t, "DistributedDataParallel").all_reduce(
                    t, dist.ReduceOp.SUM, True, check=False
                )
            self._next_bucket += 1
        self._poke()

    def _run_hook(self, b, buffer):
        state, hook = self._comm_hook
        params = [self._params[i] for i in b.params]
        fut = hook(state, dist.GradBucket(b.index, buffer, params, b.index == len(self._buckets) - 1))
        if not isinstance(fut, Future):
            raise TypeError(
                f"DistributedDataParallel: the communication hook returned {type(fut).__name__}; it must return a "
                "conch.futures.Future whose value is the bucket's reduced gradients (a tensor)"
            )
        return fut

    def _hook_result(self, b, value):
        """The flat array a hook's future gave for bucket ``b`` (a tensor, or a list holding one)."""
        if isinstance(value, (list, tuple)) and len(value) == 1:
            value = value[0]
        if not isinstance(value, Tensor) or value.numel() != b.numel:
            what = f"a tensor of {value.numel()} elements" if isinstance(value, Tensor) else type(value).__name__
            raise RuntimeError(
                f"DistributedDataParallel: the communication hook's future for bucket {b.index} gave {what}; "
                f"expected a tensor of the bucket's {b.numel} elements"
            )
        a = value._data
        return a if a.ndim == 1 else a.reshape(-1)  # the bucket's own array when the hook reduced in place

    def _solo_buffer(self, b):
        """The array a solo bucket's parameter is reduced in, already divided by the world size: its ``.grad``'s
        own memory when nothing else can see it (no copy in or out), else a new array (a view's or a shared
        gradient's copy, or zeros where this rank has none). None when no rank has a gradient (no collective:
        every rank knows it from the agreed ``_used``)."""
        i = b.params[0]
        p, g = self._params[i], self._params[i].grad
        b.inplace, b.flat = False, None  # b.flat: the array reduced this pass (the .grad's own, or a copy)
        if g is None:
            if self._used_anywhere[i]:
                b.flat = np.zeros(b.numel, b.dtype)
            return b.flat
        a = g._data
        at = a.__array_interface__["data"][0] if type(a) is np.ndarray else None
        if at is not None and _exclusive(a) and a.shape == p.shape and at not in self._inplace_ids:
            self._inplace_ids.add(at)  # two .grads set by hand to one array: reduced once, not twice
            b.inplace = True
            flat = a.reshape(-1)
            if self._comm_hook is None:
                np.multiply(flat, self._scale, out=flat)
            b.flat = flat
            return flat
        b.flat = np.multiply(a.reshape(-1), self._copy_scale(), dtype=b.dtype)
        return b.flat

    def _finds_unused(self):
        return self.find_unused_parameters or self.static_graph

    def _copy_scale(self):
        """The factor gradients are copied into a bucket with: 1/world (the all-reduce then sums), or 1 when a
        communication hook runs (the hook divides, as PyTorch's do)."""
        return self._scale if self._comm_hook is None else 1.0

    def _poke(self):
        """MPICH advances a non-blocking collective only inside MPI calls: test the oldest one in flight (at
        every gradient hook, so the transfer moves along between the layers' backward)."""
        for b in self._buckets[: self._next_bucket]:
            w = b.work
            if w is not None and not (w.done() if type(w) is Future else w.is_completed()):
                break

    def _finalize(self):
        """Run by the engine when backward has finished: every .grad is final. Reduce what is left, wait, and
        write the averages into .grad."""
        self._queued = False
        if not self._armed:
            return
        self._armed = False
        missing = []
        for i, p in enumerate(self._params):
            if not self._ready[i]:
                # a gradient accumulated without the hook (a leaf inside a checkpointed closure) still counts
                if p.grad is not None or self._finds_unused():
                    self._mark_ready(i)
                else:
                    missing.append(i)
        self._launch_ready()
        if missing:  # PyTorch's behaviour: the incomplete buckets stay unreduced and the next forward raises
            self._unfinished = missing
        self._used_anywhere = self._used
        if self._static is not None:
            self._used_anywhere = self._static[1]
        elif self._finds_unused() and self._pg.mpi.size > 1:
            used = Tensor._make(self._used.copy())
            self._host_all_reduce(used, dist.ReduceOp.MAX)
            self._used_anywhere = used._data
        if self.static_graph and self._static is None:
            self._static = (list(self._unused_expected), self._used_anywhere.copy())
        if self._solo:
            return
        self._inplace_ids = set()
        self._launch_ready(final=True)
        for b in self._buckets[: self._next_bucket]:
            if b.work is None:  # a solo parameter no rank has a gradient for
                continue
            done = b.work.wait()
            b.work = None
            src = b.flat if self._comm_hook is None else self._hook_result(b, done)
            if b.solo:
                self._solo_done(b, src)
                continue
            if src is not b.flat and self.gradient_as_bucket_view:
                b.flat[...] = src  # the .grads are views of the bucket
                src = b.flat
            for k, i in enumerate(b.params):
                p = self._params[i]
                if self._used_anywhere[i] == 0 and p.grad is None:
                    continue  # unused on every rank: grad stays None, as in PyTorch
                seg = src[b.offsets[k] : b.offsets[k] + p.numel()].reshape(p.shape)
                g = p.grad
                if self.gradient_as_bucket_view:  # .grad is the bucket's memory (overwritten by the next pass)
                    if g is None or g._data is not seg:
                        p.grad = Tensor._make(seg)
                elif g is not None and g._data.shape == seg.shape and _exclusive(g._data, b.flat):
                    g._data[...] = seg  # PyTorch copies the average back into .grad, in place
                    g._version[0] += 1
                else:
                    p.grad = Tensor._make(seg.copy())

    def _solo_done(self, b, src):
        """A solo bucket's reduction has finished, its result in ``src``: the average is in .grad already (in
        place), is copied there (a hook's own result), or becomes it."""
        p = self._params[b.params[0]]
        flat, b.flat = b.flat, None
        if b.inplace:
            if src is not flat:
                flat[...] = src
            p.grad._version[0] += 1  # changed in place, as every in-place op marks it
            return
        p.grad = Tensor._make((src if src is flat else src.copy()).reshape(p.shape))

    def register_comm_hook(self, state, hook):
        """Reduce each bucket with ``hook(state, bucket)`` instead of DDP's all-reduce (PyTorch's
        ``register_comm_hook``): ``bucket`` is a ``conch.distributed.GradBucket`` holding the local gradients
        (not divided by the world size), and the hook returns a ``conch.futures.Future`` whose value is a tensor
        of the bucket's size; its values become the parameters' ``.grad``. The built-in hooks are in
        ``conch.distributed.algorithms.ddp_comm_hooks.default_hooks`` (``allreduce_hook``, ``fp16_compress_hook``,
        ``bf16_compress_hook``; their state is the process group, None for the world). Once, before training.

        Example::

            model.register_comm_hook(None, default_hooks.fp16_compress_hook)
        """
        if not callable(hook):
            raise TypeError("Communication hook must be callable.")
        if self._comm_hook is not None:
            raise RuntimeError("register_comm_hook or register_builtin_comm_hook can only be called once.")
        self._comm_hook = (state, hook)
        self._solo = False  # the hook runs at one rank too, as in PyTorch

    def _host_all_reduce(self, t, op):
        """All-reduce a small CPU tensor of bookkeeping flags over the group's MPI communicator, whatever the
        backend: ``init_process_group("nccl")`` refuses CPU tensors, and the flags need no trip to the GPU."""
        self._pg.mpi.all_reduce(t, op, False)

    def _sync_buffers(self, src):
        with no_grad():
            for b in self.module.buffers():
                dist.broadcast(b, src, group=self.process_group)

    # ------------------------------------------------------------------ join (uneven inputs)
    @contextlib.contextmanager
    def join(self, divide_by_initial_world_size=True, enable=True, throw_on_early_termination=False):
        """Train on uneven inputs (PyTorch's ``DistributedDataParallel.join``): a rank whose loop inside ends
        first waits at the end of the block, taking part with zeros in the collectives of the ranks still
        training (buffer broadcasts, the gradient all-reduces), until every rank has finished; then every rank
        takes the parameters and buffers of one of the last to finish, so the replicas end equal.

        Each training forward inside first all-reduces which ranks are still training. The gradients are then
        ``sum_active g_r / R`` with ``divide_by_initial_world_size=True`` (R: the world size), else divided by
        the number still training. ``throw_on_early_termination=True``: once a rank has run out, every rank
        raises PyTorch's "Detected at least one rank that exhausted inputs" RuntimeError instead. Every training
        forward inside must be followed by a backward (the waiting ranks expect its all-reduces).

        Example::

            with model.join():
                for x, y in my_shard:            # ranks may hold different numbers of batches
                    loss_fn(model(x), y).backward()
                    opt.step(); opt.zero_grad()
        """
        if not enable or self._pg.mpi.size == 1:
            yield
            return
        if self._join is not None:
            raise RuntimeError("DistributedDataParallel.join() contexts cannot be nested")
        self._join = (bool(divide_by_initial_world_size), bool(throw_on_early_termination))
        try:
            yield  # an exception inside leaves at once, without waiting for the others (as in PyTorch)
            last = self._shadow_until_all_joined()
            self._sync_final_model(last)
        finally:
            self._join, self._scale = None, 1.0 / self._pg.mpi.size

    def _join_flags(self, active):
        """The join round's all-reduce (SUM): one flag per rank still training, then whether this pass's
        backward reduces gradients and whether the forward broadcasts buffers (from the ranks training)."""
        w = self._pg.mpi.size
        flags = np.zeros(w + 2, np.int64)
        if active:
            flags[self._pg.mpi.rank] = 1
            flags[w] = is_grad_enabled() and self.require_backward_grad_sync
            flags[w + 1] = is_grad_enabled() and self.broadcast_buffers
        t = Tensor._make(flags)
        self._host_all_reduce(t, dist.ReduceOp.SUM)
        return t._data

    def _notify_join(self):
        """A training rank's forward inside join(): count the ranks still training; returns the global rank the
        buffers come from (the highest one still training)."""
        flags = self._join_flags(True)
        w = self._pg.mpi.size
        active = np.flatnonzero(flags[:w])
        divide_by_initial, throw = self._join
        if throw and len(active) < w:
            raise RuntimeError(_EARLY)
        self._scale = 1.0 / (w if divide_by_initial else len(active))
        return self._pg.ranks[int(active[-1])]

    def _shadow_until_all_joined(self):
        """A rank that has finished: match the training ranks' collectives with zeros until none is left.
        Returns whether this rank was among the last to finish."""
        w = self._pg.mpi.size
        first = True
        while True:
            flags = self._join_flags(False)
            active = np.flatnonzero(flags[:w])
            if first:
                last, first = len(active) == 0, False
            if len(active) == 0:
                return last
            if self._join[1]:
                raise RuntimeError(_EARLY)
            if flags[w + 1]:
                self._sync_buffers(self._pg.ranks[int(active[-1])])
            if flags[w]:
                self._shadow_backward()

    def _zeros_reduction(self, b):
        t = Tensor._make(xp_of(self._params[b.params[0]]._data).zeros(b.numel, b.dtype))
        if self._comm_hook is not None:
            return self._run_hook(b, t)
        return self._pg.for_tensor(t, "DistributedDataParallel").all_reduce(t, dist.ReduceOp.SUM, True, check=False)

    def _shadow_backward(self):
        """The collectives of one backward pass, in the training ranks' order, with zero gradients: the regular
        buckets, the used-flags all-reduce (find_unused_parameters), the solo buckets of used parameters."""
        works = [self._zeros_reduction(b) for b in self._buckets if not b.solo]
        if self._static is not None:
            used = self._static[1]
        elif self._finds_unused():
            t = Tensor._make(np.zeros(len(self._params), np.uint8))
            self._host_all_reduce(t, dist.ReduceOp.MAX)
            used = t._data
            if self.static_graph:
                self._static = ([], used.copy())  # as the training ranks recorded at their first iteration
        else:
            used = np.ones(len(self._params), np.uint8)
        works += [self._zeros_reduction(b) for b in self._buckets if b.solo and used[b.params[0]]]
        for work in works:
            work.wait()

    def _sync_final_model(self, last):
        """Every rank takes the parameters and buffers of the highest-numbered rank among the last to finish."""
        t = Tensor._make(np.array([self._pg.mpi.rank if last else -1], np.int64))
        self._host_all_reduce(t, dist.ReduceOp.MAX)
        src = self._pg.ranks[int(t._data[0])]
        with no_grad():
            for x in [*self.module.parameters(), *self.module.buffers()]:
                dist.broadcast(x, src, group=self.process_group)

    @contextlib.contextmanager
    def no_sync(self):
        """Backward passes inside accumulate gradients locally, without communication."""
        old = self.require_backward_grad_sync
        self.require_backward_grad_sync = False
        try:
            yield
        finally:
            self.require_backward_grad_sync = old


def _exclusive(a, avoid=None):
    """Whether gradient array ``a`` may be overwritten in place: writable, C-contiguous, and owning its memory or
    a view spanning the whole array that does (a product's result reshaped), not a view of ``avoid`` (a bucket:
    a .grad left from ``gradient_as_bucket_view``). CuPy arrays must own their memory."""
    if not (getattr(a.flags, "writeable", True) and a.flags.c_contiguous):  # CuPy's flags have no writeable
        return False
    root = a
    while getattr(root, "base", None) is not None:
        root = root.base
    if root is a:
        return True
    if type(root) is not np.ndarray or root is avoid or root.nbytes != a.nbytes:
        return False
    return root.__array_interface__["data"][0] == a.__array_interface__["data"][0]


def _hook(me, i):
    def hook(param):
        ddp = me()
        if ddp is not None and ddp._armed:
            ddp._start_pass()
            ddp._mark_ready(i)

    return hook


def _start(me):
    ddp = me()
    if ddp is not None and ddp._armed:
        ddp._start_pass()


def _tensors(obj):
    """The tensors in a forward's output (a tensor, or lists, tuples and dicts of them)."""
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)
