"""PyTorch's built-in DDP communication hooks: plain all-reduce and all-reduce of a float16/bfloat16 copy.

A hook is ``hook(state, bucket) -> Future`` (``DistributedDataParallel.register_comm_hook``): ``bucket`` is a
``conch.distributed.GradBucket`` whose ``buffer()`` holds the bucket's local gradients, flat; the future's value
is a tensor of that size holding what DDP then writes into the parameters' ``.grad``. These hooks take the process
group (None: the world) as their state and average over its R ranks::

    allreduce_hook:      out = sum_r (g_r / R)
    fp16_compress_hook:  out = float(sum_r half(half(g_r) / R))    (bf16_compress_hook: bfloat16)

The compressing hooks halve the bytes on the wire for float32 gradients at the cost of the narrow type's rounding
(about 1e-3 relative for float16, 1e-2 for bfloat16; the MPI backend sums them in float32 and rounds once).

Example::

    from conch.distributed.algorithms.ddp_comm_hooks import default_hooks
    model = DistributedDataParallel(net)
    model.register_comm_hook(None, default_hooks.fp16_compress_hook)
"""

from __future__ import annotations

from .... import _dtype as D
from ... import c10d as dist


def _allreduce_fut(process_group, tensor):
    """Divide ``tensor`` by the group's size in place, start its all-reduce (SUM), and return a future of it."""
    tensor.div_(dist.get_world_size(process_group))
    work = dist.all_reduce(tensor, group=process_group, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def allreduce_hook(process_group, bucket):
    """The average over the ranks of the bucket's gradients (what DDP does without a hook)."""
    return _allreduce_fut(process_group, bucket.buffer())


def _compress_hook(dtype, process_group, bucket):
    buffer = bucket.buffer()
    compressed = buffer.to(dtype).div_(dist.get_world_size(process_group))
    fut = dist.all_reduce(compressed, group=process_group, async_op=True).get_future()

    def decompress(fut):
        decompressed = bucket.buffer()
        decompressed.copy_(fut.value()[0])  # back to the gradients' dtype, into the bucket
        return decompressed

    return fut.then(decompress)


def fp16_compress_hook(process_group, bucket):
    """All-reduce a float16 copy of the bucket divided by the world size; the result back in the bucket's dtype."""
    return _compress_hook(D.float16, process_group, bucket)


def bf16_compress_hook(process_group, bucket):
    """As :func:`fp16_compress_hook`, with bfloat16 (float32's range: no overflow, coarser rounding)."""
    return _compress_hook(D.bfloat16, process_group, bucket)  # D.bfloat16 loads ml_dtypes on first use
