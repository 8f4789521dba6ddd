"""DistributedDataParallel: one model replica per rank, gradients averaged across ranks during backward."""

from __future__ import annotations

import contextlib

from ... import distributed as dist
from ..._backend import xp_of
from ...autograd import engine
from ...autograd.grad_mode import is_grad_enabled, no_grad
from ...tensor import Tensor
from ..module import Module


class DistributedDataParallel(Module):
    """Wrap ``module`` for data-parallel training (PyTorch's ``torch.nn.parallel.DistributedDataParallel``).

    At construction rank 0's parameters and buffers are broadcast to every rank, so all replicas start equal.
    Each ``backward`` then leaves in every parameter's ``.grad`` the average over ranks of the local gradients,
    so that ``optimizer.step()`` keeps the replicas equal. Gradients travel in buckets of about
    ``bucket_cap_mb`` MiB (parameters in reverse order, the order backward produces them), all launched as
    non-blocking all-reduces and then awaited. Inside ``with model.no_sync():`` gradients only accumulate
    locally; the first backward outside it averages the accumulated sum.

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
        self.module = module
        self.process_group = process_group
        self.broadcast_buffers = broadcast_buffers
        self.require_backward_grad_sync = True
        self.bucket_bytes_cap = int((25 if bucket_cap_mb is None else bucket_cap_mb) * 1024 * 1024)
        params = [p for p in module.parameters() if p.requires_grad]
        with no_grad():  # every replica starts from rank 0's weights
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t, 0, group=process_group)
        self._buckets = self._make_buckets(params)
        self._armed = self._queued = False
        self._grad_hooks = [p.register_hook(self._grad_hook) for p in params]

    def _make_buckets(self, params):
        """Reverse parameter order, split when a bucket would pass the cap or change dtype or device (one
        flat buffer each); the layout is the same on every rank, since every rank builds the same model."""
        buckets, cur, size = [], [], 0
        for p in reversed(params):
            nbytes = p.numel() * p._data.itemsize
            if cur and (size + nbytes > self.bucket_bytes_cap or p.dtype != cur[0].dtype or p.device != cur[0].device):
                buckets.append(cur)
                cur, size = [], 0
            cur.append(p)
            size += nbytes
        if cur:
            buckets.append(cur)
        return buckets

    def forward(self, *args, **kwargs):
        if self.broadcast_buffers and is_grad_enabled() and dist.get_world_size(self.process_group) > 1:
            with no_grad():  # PyTorch's default: rank 0's buffers (BatchNorm statistics) at each training forward
                for b in self.module.buffers():
                    dist.broadcast(b, 0, group=self.process_group)
        self._armed = is_grad_enabled() and self.require_backward_grad_sync
        return self.module(*args, **kwargs)

    def _grad_hook(self, g):
        # a leaf hook sees a gradient before it reaches .grad; the reduction waits for the end of the pass
        if self._armed and not self._queued:
            self._queued = True
            engine.queue_callback(self._reduce_gradients)
        return None

    def _reduce_gradients(self):
        self._queued = self._armed = False
        pending = []
        for bucket in self._buckets:
            first = bucket[0]._data
            xp = xp_of(first)
            # a parameter this rank did not use contributes zeros (every rank must send the same bucket)
            flat = xp.concatenate([(p.grad._data if p.grad is not None else xp.zeros(p.shape, p.dtype)).reshape(-1)
                                   for p in bucket])  # fmt: skip
            ft = Tensor._make(flat)
            pending.append((bucket, ft, dist.all_reduce(ft, dist.ReduceOp.AVG, self.process_group, async_op=True)))
        for bucket, ft, work in pending:
            work.wait()
            off = 0
            for p in bucket:
                n = p.numel()
                p.grad = Tensor._make(ft._data[off : off + n].reshape(p.shape))  # views of the averaged bucket
                off += n

    @contextlib.contextmanager
    def no_sync(self):
        """Backward passes inside accumulate gradients locally, without communication."""
        old = self.require_backward_grad_sync
        self.require_backward_grad_sync = False
        try:
            yield
        finally:
            self.require_backward_grad_sync = old
