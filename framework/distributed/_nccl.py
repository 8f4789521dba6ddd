"""The NCCL backend (CUDA tensors) through CuPy's ``cupy.cuda.nccl``: the unique id travels over MPI.

Untested in CI (no GPU there); written against CuPy 13's ``NcclCommunicator`` and guarded so that a missing piece
raises a RuntimeError that says which.
"""

from __future__ import annotations

import numpy as np

from .. import _dtype as D
from ._mpi import Work, _describe

# ncclDataType_t and ncclRedOp_t values (nccl.h); NCCL reduces bfloat16 natively from 2.10
_NCCL_DTYPES = {
    np.dtype(np.int8): 0, np.dtype(np.uint8): 1, np.dtype(np.bool_): 1, np.dtype(np.int32): 2,
    np.dtype(np.uint32): 3, np.dtype(np.int64): 4, np.dtype(np.uint64): 5, np.dtype(np.float16): 6,
    np.dtype(np.float32): 7, np.dtype(np.float64): 8,
}  # fmt: skip
D.on_bfloat16(lambda bf: _NCCL_DTYPES.__setitem__(bf, 9))  # ml_dtypes loads lazily (conch._dtype)
_NCCL_OPS = {"SUM": 0, "PRODUCT": 1, "MAX": 2, "MIN": 3, "AVG": 4}


class NCCLBackend:
    """Collectives on CuPy arrays, enqueued on CuPy's current stream (so they are ordered with the kernels around
    them, and ``async_op`` needs no extra synchronisation). Shape checks go over the MPI communicator."""

    name = "nccl"

    def __init__(self, mpi, device=None):
        """``device``: the GPU of the tensors of the collective that made this backend (a group's, made on first
        use; the current device is left alone), or None at ``init_process_group("nccl")``: the node-local rank's
        GPU, made current (one GPU per rank)."""
        from ..kernels import _cupy

        cp = _cupy.get_cupy()
        if cp is None:
            raise RuntimeError(f"the nccl backend needs a usable GPU: {_cupy.unavailable_reason()}")
        try:
            from cupy.cuda import nccl
        except ImportError as e:
            raise RuntimeError(f"the nccl backend needs CuPy built with NCCL (cupy.cuda.nccl): {e}") from None
        if not getattr(nccl, "available", True):
            raise RuntimeError("the nccl backend needs NCCL: CuPy's cupy.cuda.nccl reports it is not available")
        self.cp, self.nccl, self.mpi = cp, nccl, mpi
        self.rank, self.size = mpi.rank, mpi.size
        if device is None:  # a group's local_rank counts its own members: only the world's names this rank's GPU
            device = mpi.local_rank % cp.cuda.runtime.getDeviceCount()  # one GPU per rank on each node
            cp.cuda.Device(device).use()
        self.device = device
        uid = nccl.get_unique_id() if self.rank == 0 else None
        uid = mpi.comm.bcast(uid, root=0) if mpi.size > 1 else uid
        with cp.cuda.Device(device):  # NCCL binds a communicator to the current device
            self.comm = nccl.NcclCommunicator(self.size, uid, self.rank)

    def close(self):
        self.comm.destroy()

    def _args(self, tensor, what):
        a = tensor._data
        if a.device.id != self.device:
            raise RuntimeError(
                f"{what}: the tensor is on cuda:{a.device.id}, this rank's NCCL device is cuda:{self.device}"
            )
        if a.dtype not in _NCCL_DTYPES:
            raise RuntimeError(f"{what}: NCCL has no type for {a.dtype}")
        if not a.flags.c_contiguous:
            raise RuntimeError(f"{what}: NCCL needs a contiguous tensor; call .contiguous() first")
        return a, _NCCL_DTYPES[a.dtype], self.cp.cuda.get_current_stream().ptr

    def _op(self, op, dtype):
        if op.name not in _NCCL_OPS:
            raise ValueError(f"ReduceOp.{op.name} is not supported by the nccl backend")
        if dtype == np.bool_ and op.name in ("SUM", "PRODUCT"):  # on bytes 0/1, "any" is MAX and "all" is MIN
            return _NCCL_OPS["MAX" if op.name == "SUM" else "MIN"]
        return _NCCL_OPS[op.name]

    @staticmethod
    def _done(tensor, async_op):
        tensor._version[0] += 1
        return Work() if async_op else None

    def all_reduce(self, tensor, op, async_op, check=True):
        a, dt, stream = self._args(tensor, "all_reduce")
        if check:
            self.mpi.agree("all_reduce", f"{_describe(a)}, op {op.name}")
        self.comm.allReduce(a.data.ptr, a.data.ptr, a.size, dt, self._op(op, a.dtype), stream)
        return self._done(tensor, async_op)

    def broadcast(self, tensor, src, async_op):
        a, dt, stream = self._args(tensor, "broadcast")
        self.mpi.agree("broadcast", f"{_describe(a)}, src {src}")
        self.comm.bcast(a.data.ptr, a.size, dt, src, stream)
        return self._done(tensor, async_op)

    def all_gather_into(self, out_arr, tensor, async_op, finish):
        a, dt, stream = self._args(tensor, "all_gather")
        self.mpi.agree("all_gather", _describe(a))
        self.comm.allGather(a.data.ptr, out_arr.data.ptr, a.size, dt, stream)
        finish()
        return Work() if async_op else None

    def reduce_scatter(self, output, inp, op, async_op):
        a, dt, stream = self._args(inp, "reduce_scatter_tensor")
        o, _, _ = self._args(output, "reduce_scatter_tensor")
        self.mpi.agree("reduce_scatter_tensor", f"{_describe(a)}, op {op.name}")
        self.comm.reduceScatter(a.data.ptr, o.data.ptr, o.size, dt, self._op(op, a.dtype), stream)
        return self._done(output, async_op)

    def reduce(self, tensor, dst, op, async_op):
        a, dt, stream = self._args(tensor, "reduce")
        self.mpi.agree("reduce", f"{_describe(a)}, op {op.name}, dst {dst}")
        self.comm.reduce(a.data.ptr, a.data.ptr, a.size, dt, self._op(op, a.dtype), dst, stream)
        return self._done(tensor, async_op)

    def _grouped(self, pairs):
        """NCCL has no gather/scatter/all-to-all: grouped sends and receives ``(kind, array, peer)``."""
        stream = self.cp.cuda.get_current_stream().ptr
        self.nccl.groupStart()
        try:
            for kind, a, peer in pairs:
                flat = a.reshape(-1).view(np.uint8)
                getattr(self.comm, kind)(flat.data.ptr, flat.size, _NCCL_DTYPES[np.dtype(np.uint8)], peer, stream)
        finally:
            self.nccl.groupEnd()

    def gather_into(self, out_arr, tensor, dst, async_op, finish):
        a, _, _ = self._args(tensor, "gather")
        self.mpi.agree("gather", f"{_describe(a)}, dst {dst}")
        if self.rank == dst:
            out_arr[dst] = a
            self._grouped([("recv", out_arr[r], r) for r in range(self.size) if r != dst])
        else:
            self._grouped([("send", a, dst)])
        finish()
        return Work() if async_op else None

    def scatter_from(self, tensor, in_arr, src, async_op):
        a, _, _ = self._args(tensor, "scatter")
        self.mpi.agree("scatter", f"{_describe(a)}, src {src}")
        if self.rank == src:
            a[...] = in_arr[src]
            self._grouped([("send", self.cp.ascontiguousarray(in_arr[r]), r) for r in range(self.size) if r != src])
        else:
            self._grouped([("recv", a, src)])
        return self._done(tensor, async_op)

    def all_to_all(self, send_arrs, recv_arrs, async_op, finish):
        self.mpi.agree_counts(send_arrs, recv_arrs)  # raises on every rank: none is left waiting in NCCL
        recv_arrs[self.rank][...] = send_arrs[self.rank].view(recv_arrs[self.rank].dtype)
        pairs = [("send", send_arrs[r], r) for r in range(self.size) if r != self.rank]
        self._grouped(pairs + [("recv", recv_arrs[r], r) for r in range(self.size) if r != self.rank])
        finish()
        return Work() if async_op else None

    def isend(self, tensor, dst, tag):
        self.send(tensor, dst, tag)
        return Work()

    def irecv(self, tensor, src, tag):
        self.recv(tensor, src, tag)
        return Work()

    def barrier(self, async_op):
        self.cp.cuda.get_current_stream().synchronize()
        return self.mpi.barrier(async_op)

    def send(self, tensor, dst, tag):
        a, dt, stream = self._args(tensor, "send")
        # the dtype by name: bfloat16's ``dtype.str`` is a bare "|V2", which reads back as raw bytes
        self.mpi.comm.send((tuple(a.shape), a.dtype.name), dest=dst, tag=tag)
        self.comm.send(a.data.ptr, a.size, dt, dst, stream)

    def recv(self, tensor, src, tag):
        a, dt, stream = self._args(tensor, "recv")
        if src is None:
            raise RuntimeError("recv: the nccl backend needs the sender's rank (src=None is MPI-only)")
        shape, dtype = self.mpi.comm.recv(source=src, tag=tag)  # NCCL needs the peer: src=None is not supported
        if shape != tuple(a.shape) or dtype != a.dtype.name:
            # the sender's NCCL send must still be matched, else its stream waits forever: take it, then raise
            scratch = self.cp.empty(shape, D.as_dtype(dtype))
            self.comm.recv(scratch.data.ptr, scratch.size, _NCCL_DTYPES[scratch.dtype], src, stream)
            raise RuntimeError(f"recv: rank {src} sent shape {shape}, dtype {dtype} into {_describe(a)}; send and "
                               "recv need the same shape and dtype")  # fmt: skip
        self.comm.recv(a.data.ptr, a.size, dt, src, stream)
        tensor._version[0] += 1
        return src
