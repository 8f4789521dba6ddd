"""The MPI backend (mpi4py, CPU tensors) and the one-process backend used when mpi4py is not installed."""

from __future__ import annotations

import zlib

import numpy as np

from .. import _dtype as D

# MPI has no bfloat16 and no portable float16: reductions of either run in float32 and round once at the end
_WIDE = D.HALF  # float16 and (once ml_dtypes is loaded) bfloat16


class Work:
    """An asynchronous collective's handle (``async_op=True``): ``wait()`` blocks until it is done and the result
    is in the tensor; ``is_completed()`` asks without blocking."""

    def __init__(self, requests=(), finish=None):
        self._requests, self._finish = list(requests), finish

    def is_completed(self):
        if self._requests:
            from mpi4py import MPI

            if not MPI.Request.Testall(self._requests):
                return False
        return self._finish is None or self.wait()

    def wait(self, timeout=None):
        if self._requests:
            from mpi4py import MPI

            MPI.Request.Waitall(self._requests)
            self._requests = []
        if self._finish is not None:
            finish, self._finish = self._finish, None
            finish()  # the copy back into the tensor (and the rounding of a widened buffer) happens once
        return True


def _contig(a):
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def _bytes(a):
    """A contiguous array as a flat uint8 view: data movement needs no MPI datatype (bfloat16 has none)."""
    return a.reshape(-1).view(np.uint8)


def _reduce_buffer(a):
    """The buffer a reduction runs in: float32 for the half types (a copy), else the array if contiguous."""
    return a.astype(np.float32) if a.dtype in _WIDE else _contig(a)


def _finish_into(tensor, buf, divide=None):
    """Write ``buf`` (a reduction's result) into ``tensor``'s storage, averaging first when asked, and bump the
    version counter as every in-place op does."""
    if divide:
        buf /= divide
    if buf is not tensor._data:
        tensor._data[...] = buf  # rounds a float32 buffer to float16/bfloat16 once; writes through views
    tensor._version[0] += 1


def _describe(a):
    return f"shape {tuple(a.shape)}, dtype {a.dtype}"


class MPIBackend:
    """Collectives on NumPy arrays over a duplicate of ``MPI.COMM_WORLD`` (user MPI traffic never mixes in)."""

    name = "mpi"

    def __init__(self):
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = MPI.COMM_WORLD.Dup()
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()

    def close(self):
        self.comm.Free()

    # ----------------------------------------------------------------- checks
    def agree(self, what, desc):
        """Raise on every rank (so none hangs) when ranks pass different tensors to the same collective: one
        small all-reduce of a checksum of ``desc``, and a gather of the descriptions only when they differ."""
        if self.size == 1:
            return
        sig = zlib.crc32(desc.encode())  # not hash(): Python randomises string hashes per process
        buf = np.array([sig, -sig], np.int64)
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.MAX)
        if buf[0] != -buf[1]:
            descs = self.comm.allgather(desc)
            raise RuntimeError(
                f"{what}: the ranks passed different tensors ("
                + "; ".join(f"rank {r}: {d}" for r, d in enumerate(descs))
                + "); every rank must call the same collective with the same shape and dtype"
            )

    def mpi_op(self, op, dtype):
        MPI = self.MPI
        if dtype == np.bool_:  # MPI defines only logical ops on booleans: SUM/MAX are "any", PRODUCT/MIN "all"
            table = {"SUM": MPI.LOR, "MAX": MPI.LOR, "PRODUCT": MPI.LAND, "MIN": MPI.LAND}
        else:
            table = {"SUM": MPI.SUM, "AVG": MPI.SUM, "PRODUCT": MPI.PROD, "MAX": MPI.MAX, "MIN": MPI.MIN,
                     "BAND": MPI.BAND, "BOR": MPI.BOR, "BXOR": MPI.BXOR}  # fmt: skip
        if op.name not in table:
            raise ValueError(f"ReduceOp.{op.name} is not supported for {dtype} tensors")
        return table[op.name]

    def _run(self, blocking, nonblocking, async_op, finish):
        if async_op:
            return Work([nonblocking()], finish)
        blocking()
        finish()
        return None

    # ------------------------------------------------------------ collectives
    def all_reduce(self, tensor, op, async_op):
        a = tensor._data
        self.agree("all_reduce", f"{_describe(a)}, op {op.name}")
        mop, buf = self.mpi_op(op, a.dtype), _reduce_buffer(a)
        divide = self.size if op.name == "AVG" else None
        IN_PLACE = self.MPI.IN_PLACE
        return self._run(
            lambda: self.comm.Allreduce(IN_PLACE, buf, op=mop),
            lambda: self.comm.Iallreduce(IN_PLACE, buf, op=mop),
            async_op, lambda: _finish_into(tensor, buf, divide),
        )  # fmt: skip

    def broadcast(self, tensor, src, async_op):
        a = tensor._data
        self.agree("broadcast", f"{_describe(a)}, src {src}")
        buf = _contig(a)
        return self._run(
            lambda: self.comm.Bcast(_bytes(buf), root=src),
            lambda: self.comm.Ibcast(_bytes(buf), root=src),
            async_op, lambda: _finish_into(tensor, buf),
        )  # fmt: skip

    def all_gather_into(self, out_arr, tensor, async_op, finish):
        """Gather every rank's ``tensor`` into the contiguous ``out_arr`` (rank order along a new first axis)."""
        a = tensor._data
        self.agree("all_gather", _describe(a))
        send = _bytes(_contig(a))
        recv = _bytes(out_arr)
        return self._run(
            lambda: self.comm.Allgather(send, recv),
            lambda: self.comm.Iallgather(send, recv),
            async_op, finish,
        )  # fmt: skip

    def reduce_scatter(self, output, inp, op, async_op):
        a = inp._data
        self.agree("reduce_scatter_tensor", f"{_describe(a)}, op {op.name}")
        mop, send = self.mpi_op(op, a.dtype), _reduce_buffer(a)
        recv = np.empty(output.shape, send.dtype)
        divide = self.size if op.name == "AVG" else None
        return self._run(
            lambda: self.comm.Reduce_scatter_block(send, recv, op=mop),
            lambda: self.comm.Ireduce_scatter_block(send, recv, op=mop),
            async_op, lambda: _finish_into(output, recv, divide),
        )  # fmt: skip

    def barrier(self, async_op):
        return self._run(self.comm.Barrier, self.comm.Ibarrier, async_op, lambda: None)

    def send(self, tensor, dst, tag):
        a = _contig(tensor._data)
        # a header first (MPI keeps the order of two messages on the same pair and tag), so the receiver can name
        # a mismatch; it still takes the data then, so the sender never blocks forever
        self.comm.send((tuple(a.shape), a.dtype.str), dest=dst, tag=tag)
        self.comm.Send(_bytes(a), dest=dst, tag=tag)

    def recv(self, tensor, src, tag):
        MPI = self.MPI
        status = MPI.Status()
        shape, dtype = self.comm.recv(source=MPI.ANY_SOURCE if src is None else src, tag=tag, status=status)
        sender = status.Get_source()
        a = tensor._data
        if shape != tuple(a.shape) or np.dtype(dtype) != a.dtype:
            self.comm.Recv(_bytes(np.empty(shape, np.dtype(dtype))), source=sender, tag=tag)
            raise RuntimeError(
                f"recv: rank {sender} sent a tensor of shape {shape}, dtype {np.dtype(dtype)} into a tensor of "
                f"{_describe(a)}"
            )
        buf = _contig(a)
        self.comm.Recv(_bytes(buf), source=sender, tag=tag)
        _finish_into(tensor, buf)
        return sender


class SelfBackend:
    """World size 1 without mpi4py (a plain ``python script.py``): every collective is the identity."""

    name = "mpi"
    rank, size, local_rank, local_size = 0, 1, 0, 1

    def close(self):
        pass

    def agree(self, what, desc):
        pass

    def mpi_op(self, op, dtype):
        return None

    def all_reduce(self, tensor, op, async_op):
        tensor._version[0] += 1
        return Work() if async_op else None

    def broadcast(self, tensor, src, async_op):
        tensor._version[0] += 1
        return Work() if async_op else None

    def all_gather_into(self, out_arr, tensor, async_op, finish):
        out_arr[0] = tensor._data
        finish()
        return Work() if async_op else None

    def reduce_scatter(self, output, inp, op, async_op):
        _finish_into(output, _reduce_buffer(inp._data).reshape(output.shape).copy())
        return Work() if async_op else None

    def barrier(self, async_op):
        return Work() if async_op else None

    def send(self, tensor, dst, tag):
        raise RuntimeError("send: there is no other rank (world size 1)")

    def recv(self, tensor, src, tag):
        raise RuntimeError("recv: there is no other rank (world size 1)")
