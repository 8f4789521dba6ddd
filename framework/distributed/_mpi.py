"""The MPI backend (mpi4py, CPU tensors) and the one-process backend used when mpi4py is not installed."""

from __future__ import annotations

import zlib

import numpy as np

from .. import _dtype as D

# MPI has no bfloat16 and no portable float16: reductions of either run in float32 and round once at the end
_WIDE = D.HALF  # float16 and (once ml_dtypes is loaded) bfloat16


class Work:
    """An asynchronous collective's handle (``async_op=True``): ``wait()`` blocks until it is done and the result
    is in the tensor; ``is_completed()`` asks without blocking; ``get_future()`` gives a ``conch.futures.Future``
    whose value is ``result()``, the list of output tensors (``[tensor]`` for all_reduce, broadcast, reduce)."""

    def __init__(self, requests=(), finish=None, statuses=None):
        # statuses: MPI.Status objects Waitall fills in, read by ``finish`` (irecv checks the received size)
        self._requests, self._finish, self._statuses = list(requests), finish, statuses
        self._outputs = []  # set by conch.distributed's collectives

    def result(self):
        """The collective's output tensors (valid once it has completed)."""
        return list(self._outputs)

    def get_future(self):
        """A future completed by this collective, with value ``result()`` (PyTorch's ``Work.get_future``)."""
        from ..futures import Future

        return Future._from(_WorkResult(self))

    def is_completed(self):
        if self._requests:
            from mpi4py import MPI

            # Testall also drives MPI's progress engine (MPICH has no progress thread by default)
            if not MPI.Request.Testall(self._requests):
                return False
        return self._finish is None or self.wait()

    def wait(self, timeout=None):
        if self._requests:
            from mpi4py import MPI

            if self._statuses is None:
                MPI.Request.Waitall(self._requests)
            else:
                MPI.Request.Waitall(self._requests, self._statuses)
            self._requests = []
        if self._finish is not None:
            finish, self._finish = self._finish, None
            finish()  # the copy back into the tensor (and the rounding of a widened buffer) happens once
        return True


class _WorkResult:
    """Completes a Work's future: polling asks the work, calling waits for it and gives its outputs."""

    __slots__ = ("work",)

    def __init__(self, work):
        self.work = work

    def is_completed(self):
        return self.work.is_completed()

    def __call__(self):
        self.work.wait()
        return self.work.result()


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

    def __init__(self, comm=None):
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = MPI.COMM_WORLD.Dup() if comm is None else comm  # a subgroup's communicator (new_group)
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

    def agree_counts(self, send_arrs, recv_arrs):
        """all_to_all's byte counts ``(sent, received)`` per rank, after the ranks have swapped theirs: a size
        mismatch raises on every rank (the collective never starts), naming what this rank expected and got."""
        MPI = self.MPI
        scounts = np.array([x.nbytes for x in send_arrs], np.int64)
        rcounts = np.array([x.nbytes for x in recv_arrs], np.int64)
        peer = np.empty_like(scounts)
        self.comm.Alltoall(scounts, peer)  # peer[j]: what rank j sends me
        bad = np.array([int(not np.array_equal(peer, rcounts))], np.int64)
        self.comm.Allreduce(MPI.IN_PLACE, bad, op=MPI.MAX)
        if bad[0]:
            raise RuntimeError(
                f"all_to_all: rank {self.rank} expects {rcounts.tolist()} bytes from each rank but they send "
                f"{peer.tolist()}; the output sizes must match what the other ranks send (the failing ranks "
                "raise this too)"
            )
        return scounts, rcounts

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
    def split(self, members):
        """A backend over the ranks ``members`` of this one (collective: every rank calls it), or None on a
        rank that is not a member."""
        MPI = self.MPI
        inside = self.rank in members
        comm = self.comm.Split(0 if inside else MPI.UNDEFINED, members.index(self.rank) if inside else 0)
        return MPIBackend(comm) if inside else None

    def all_reduce(self, tensor, op, async_op, check=True):
        a = tensor._data
        if check:  # DDP's buckets skip it: every rank built the same layout, checked once at construction
            self.agree("all_reduce", f"{_describe(a)}, op {op.name}")
        mop, buf = self.mpi_op(op, a.dtype), _reduce_buffer(a)
        divide = self.size if op.name == "AVG" and self.size > 1 else None
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
        divide = self.size if op.name == "AVG" and self.size > 1 else None
        return self._run(
            lambda: self.comm.Reduce_scatter_block(send, recv, op=mop),
            lambda: self.comm.Ireduce_scatter_block(send, recv, op=mop),
            async_op, lambda: _finish_into(output, recv, divide),
        )  # fmt: skip

    def reduce(self, tensor, dst, op, async_op):
        a = tensor._data
        self.agree("reduce", f"{_describe(a)}, op {op.name}, dst {dst}")
        mop, buf = self.mpi_op(op, a.dtype), _reduce_buffer(a)
        root = self.rank == dst
        divide = self.size if op.name == "AVG" and root and self.size > 1 else None
        send = self.MPI.IN_PLACE if root else buf
        recv = buf if root else None
        # only the destination's tensor changes (PyTorch leaves the others' contents unspecified; ours are kept)
        finish = (lambda: _finish_into(tensor, buf, divide)) if root else (lambda: None)
        return self._run(
            lambda: self.comm.Reduce(send, recv, op=mop, root=dst),
            lambda: self.comm.Ireduce(send, recv, op=mop, root=dst),
            async_op, finish,
        )  # fmt: skip

    def gather_into(self, out_arr, tensor, dst, async_op, finish):
        """Every rank's ``tensor`` into ``out_arr`` (rank order along a new first axis) on rank ``dst`` only."""
        a = tensor._data
        self.agree("gather", f"{_describe(a)}, dst {dst}")
        send = _bytes(_contig(a))
        recv = _bytes(out_arr) if self.rank == dst else None
        return self._run(
            lambda: self.comm.Gather(send, recv, root=dst),
            lambda: self.comm.Igather(send, recv, root=dst),
            async_op, finish,
        )  # fmt: skip

    def scatter_from(self, tensor, in_arr, src, async_op):
        """Chunk r of rank ``src``'s ``in_arr`` (shape ``(world, *tensor.shape)``) into rank r's ``tensor``."""
        a = tensor._data
        self.agree("scatter", f"{_describe(a)}, src {src}")
        buf = _contig(a)
        send = _bytes(in_arr) if self.rank == src else None
        return self._run(
            lambda: self.comm.Scatter(send, _bytes(buf), root=src),
            lambda: self.comm.Iscatter(send, _bytes(buf), root=src),
            async_op, lambda: _finish_into(tensor, buf),
        )  # fmt: skip

    def all_to_all(self, send_arrs, recv_arrs, async_op, finish):
        """``send_arrs[j]`` to rank j, ``recv_arrs[j]`` from rank j (contiguous arrays of one dtype; sizes may
        differ). The ranks first swap their byte counts, so a size mismatch raises on every rank, not in MPI."""
        MPI = self.MPI
        scounts, rcounts = self.agree_counts(send_arrs, recv_arrs)
        sbuf = np.concatenate([_bytes(x) for x in send_arrs]) if send_arrs else np.empty(0, np.uint8)
        rbuf = np.empty(int(rcounts.sum()), np.uint8)
        sdispl, rdispl = np.cumsum(scounts) - scounts, np.cumsum(rcounts) - rcounts
        smsg, rmsg = [sbuf, (scounts, sdispl), MPI.BYTE], [rbuf, (rcounts, rdispl), MPI.BYTE]

        def done():
            for x, off, n in zip(recv_arrs, rdispl, rcounts):
                _bytes(x)[...] = rbuf[off : off + n]
            finish()

        return self._run(lambda: self.comm.Alltoallv(smsg, rmsg), lambda: self.comm.Ialltoallv(smsg, rmsg),
                         async_op, done)  # fmt: skip

    def barrier(self, async_op):
        return self._run(self.comm.Barrier, self.comm.Ibarrier, async_op, lambda: None)

    # point to point: plain byte messages (a pickled header would make irecv blocking); a size mismatch is
    # named from the message's length, a same-size shape or dtype difference goes unseen (as in NCCL and Gloo)
    def send(self, tensor, dst, tag):
        self.comm.Send(_bytes(_contig(tensor._data)), dest=dst, tag=tag)

    def isend(self, tensor, dst, tag):
        buf = _contig(tensor._data)
        return Work([self.comm.Isend(_bytes(buf), dest=dst, tag=tag)], lambda: buf)  # keeps buf alive until done

    def _size_error(self, tensor, status):
        return RuntimeError(
            f"recv: rank {status.Get_source()} sent {status.Get_count(self.MPI.BYTE)} bytes into a tensor of "
            f"{_describe(tensor._data)} ({tensor._data.nbytes} bytes); send and recv need the same shape and dtype"
        )

    def recv(self, tensor, src, tag):
        MPI = self.MPI
        status = MPI.Status()
        self.comm.Probe(source=MPI.ANY_SOURCE if src is None else src, tag=tag, status=status)
        sender = status.Get_source()
        buf = _contig(tensor._data)
        if status.Get_count(MPI.BYTE) != buf.nbytes:
            self.comm.Recv(np.empty(status.Get_count(MPI.BYTE), np.uint8), source=sender, tag=tag)
            raise self._size_error(tensor, status)
        self.comm.Recv(_bytes(buf), source=sender, tag=tag)
        _finish_into(tensor, buf)
        return sender

    def irecv(self, tensor, src, tag):
        MPI = self.MPI
        status = MPI.Status()
        # one byte more than expected: a longer message is then reported by size rather than by MPI's truncation
        buf = np.empty(tensor._data.nbytes + 1, np.uint8)
        req = self.comm.Irecv(buf, source=MPI.ANY_SOURCE if src is None else src, tag=tag)

        def finish():
            if status.Get_count(MPI.BYTE) != tensor._data.nbytes:
                raise self._size_error(tensor, status)
            tensor._data[...] = buf[:-1].view(tensor._data.dtype).reshape(tensor._data.shape)
            tensor._version[0] += 1

        return Work([req], finish, [status])


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

    def split(self, members):
        return self

    def all_reduce(self, tensor, op, async_op, check=True):
        tensor._version[0] += 1
        return Work() if async_op else None

    def broadcast(self, tensor, src, async_op):
        tensor._version[0] += 1
        return Work() if async_op else None

    def reduce(self, tensor, dst, op, async_op):
        return self.all_reduce(tensor, op, async_op)

    def gather_into(self, out_arr, tensor, dst, async_op, finish):
        return self.all_gather_into(out_arr, tensor, async_op, finish)

    def scatter_from(self, tensor, in_arr, src, async_op):
        _finish_into(tensor, in_arr[0].reshape(tensor.shape))
        return Work() if async_op else None

    def all_to_all(self, send_arrs, recv_arrs, async_op, finish):
        if send_arrs[0].nbytes != recv_arrs[0].nbytes:
            raise RuntimeError(f"all_to_all: rank 0 expects {recv_arrs[0].nbytes} bytes from itself but sends "
                               f"{send_arrs[0].nbytes}")  # fmt: skip
        _bytes(recv_arrs[0])[...] = _bytes(send_arrs[0])
        finish()
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

    isend, irecv = send, recv
