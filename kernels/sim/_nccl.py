"""The simulated ``cupy.cuda.nccl``: CuPy's NCCL binding over mpi4py, for ranks launched by MPI on simulated GPUs.

Each call takes what CuPy's ``NcclCommunicator`` takes (device pointers as ints, element counts, the
``ncclDataType_t``/``ncclRedOp_t`` enums, a stream pointer) and is done on the host: a simulated array's
``a.data.ptr`` is the address of its NumPy buffer, so ``count`` elements at a pointer are a NumPy view
(``ctypes`` ``from_address``), and the collective runs through mpi4py among the communicator's processes.
float16/bfloat16 reduce in float32 and round once (as conch's MPI backend; NCCL's ring rounds at each hop,
the same result for 2 ranks). ``AVG`` is SUM then a division by the number of ranks.

As strict as the real one where a mistake would fail on a GPU: the argument order and types (ints only;
a negative count raises OverflowError as Cython's ``size_t``), unknown dtype/op enums, a root or peer out
of range, a destroyed communicator (``NcclError``), two ranks of one node on one GPU ("Duplicate GPU"), a
commId that is not the 128-byte tuple ``get_unique_id`` made, mismatched send/recv sizes. Calls between
``groupStart()`` and ``groupEnd()`` are queued and run together (non-blocking MPI) at the outermost
``groupEnd``; an ungrouped ``send`` waits until the peer's ``recv`` has started (``Issend``), as a send
kernel on a stream does, and raises after ``CONCH_SIM_NCCL_TIMEOUT`` seconds (60) instead of hanging where
a GPU would deadlock (two ranks each sending first to the other, ungrouped). :data:`CALLS` counts the calls
per method (``call_counts()``), so a test can tell which path ran.

Example (two ranks under ``mpiexec``, ``CONCH_SIMULATE_GPU=1``)::

    from cupy.cuda import nccl
    uid = comm_world.bcast(nccl.get_unique_id() if rank == 0 else None)
    comm = nccl.NcclCommunicator(2, uid, rank)
    comm.allReduce(a.data.ptr, a.data.ptr, a.size, nccl.NCCL_FLOAT32, nccl.NCCL_SUM, stream.ptr)
"""

from __future__ import annotations

import collections
import ctypes
import importlib.util
import os
import socket
import time

import numpy as np

from ._state import CURRENT

NCCL_SUM, NCCL_PROD, NCCL_MAX, NCCL_MIN, NCCL_AVG = 0, 1, 2, 3, 4
NCCL_INT8 = NCCL_CHAR = 0
NCCL_UINT8 = 1
NCCL_INT32 = NCCL_INT = 2
NCCL_UINT32 = 3
NCCL_INT64 = 4
NCCL_UINT64 = 5
NCCL_FLOAT16 = NCCL_HALF = 6
NCCL_FLOAT32 = NCCL_FLOAT = 7
NCCL_FLOAT64 = NCCL_DOUBLE = 8
NCCL_BFLOAT16 = 9
NCCL_UNIQUE_ID_BYTES = 128

#: mpi4py is what carries the data: without it the module says so, as CuPy's does without NCCL
available = importlib.util.find_spec("mpi4py") is not None

#: calls per method name since the process started ("allReduce", "send", "groupEnd", ...)
CALLS: collections.Counter = collections.Counter()

_ERRORS = {1: "NCCL_ERROR_UNHANDLED_CUDA_ERROR", 2: "NCCL_ERROR_SYSTEM_ERROR", 3: "NCCL_ERROR_INTERNAL_ERROR",
           4: "NCCL_ERROR_INVALID_ARGUMENT", 5: "NCCL_ERROR_INVALID_USAGE"}  # fmt: skip
_INVALID_ARGUMENT, _INVALID_USAGE = 4, 5
_MAGIC = (78, 67, 67, 76)  # "NCCL": marks a commId made by this module
_BOOT_TAG = 0x4E43  # the bootstrap's MPI tag on COMM_WORLD
_INTS = {0: np.int8, 1: np.uint8, 2: np.int32, 3: np.uint32, 4: np.int64, 5: np.uint64, 6: np.float16,
         7: np.float32, 8: np.float64}  # fmt: skip
_GROUP = {"depth": 0, "queue": []}


class NcclError(RuntimeError):
    """CuPy's ``cupy.cuda.nccl.NcclError``: ``status`` is the ncclResult_t; the message says what the
    simulation saw."""

    def __init__(self, status, detail=""):
        self.status = status
        super().__init__(f"{_ERRORS.get(status, status)}: {detail or 'simulated NCCL error'}")


def call_counts() -> dict:
    """A copy of :data:`CALLS`."""
    return dict(CALLS)


def get_version() -> int:
    return 22703


def get_build_version() -> int:
    return 22703


def _mpi():
    from mpi4py import MPI

    return MPI


def _int(name, v, unsigned=False):
    # Cython's intptr_t/size_t/int conversions: a non-integer is a TypeError, a negative size_t an OverflowError
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"an integer is required for {name}, got {type(v).__name__}")
    if unsigned and v < 0:
        raise OverflowError(f"can't convert negative value to size_t ({name}={v})")
    return int(v)


def _dtype(datatype):
    datatype = _int("datatype", datatype)
    if datatype == NCCL_BFLOAT16:
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    if datatype not in _INTS:
        raise NcclError(_INVALID_ARGUMENT, f"invalid data type {datatype}")
    return np.dtype(_INTS[datatype])


def _view(ptr, count, dtype):
    """``count`` elements of ``dtype`` at host address ``ptr`` as a writable NumPy array."""
    ptr = _int("buffer pointer", ptr)
    if count == 0:
        return np.empty(0, dtype)
    if ptr == 0:
        raise NcclError(_INVALID_ARGUMENT, "null buffer pointer")
    return np.frombuffer((ctypes.c_char * (count * dtype.itemsize)).from_address(ptr), dtype)


def get_unique_id():
    """128 signed chars, as CuPy's: "NCCL", the caller's world rank (the bootstrap root), a random nonce."""
    CALLS["get_unique_id"] += 1
    root = _mpi().COMM_WORLD.Get_rank()
    raw = bytes(_MAGIC) + root.to_bytes(4, "little") + os.urandom(16)
    raw += bytes(NCCL_UNIQUE_ID_BYTES - len(raw))
    return tuple(int(b) - 256 if b > 127 else int(b) for b in raw)


def groupStart():  # noqa: N802 (CuPy's name)
    CALLS["groupStart"] += 1
    _GROUP["depth"] += 1


def groupEnd():  # noqa: N802
    """The outermost ``groupEnd`` starts every queued call (non-blocking), then waits for all of them."""
    CALLS["groupEnd"] += 1
    if _GROUP["depth"] == 0:
        raise NcclError(_INVALID_USAGE, "groupEnd without a matching groupStart")
    _GROUP["depth"] -= 1
    if _GROUP["depth"]:
        return
    queue, _GROUP["queue"] = _GROUP["queue"], []
    posted = [start(synchronous=False) for start in queue]
    _mpi().Request.Waitall([r for reqs, _ in posted for r in reqs])
    for _, finish in posted:
        finish()


def _wide(a):
    """The buffer a reduction runs in: float32 for float16/bfloat16 (MPI has neither), else ``a`` itself."""
    return a.astype(np.float32) if a.dtype == np.float16 or a.dtype.name == "bfloat16" else a


class NcclCommunicator:
    """One rank of an NCCL communicator of ``ndev`` ranks (``ncclCommInitRank``): collective over the ``ndev``
    processes that pass the same ``commId``, each with its own ``rank``; bound to the current device."""

    def __init__(self, ndev, commId, rank):  # noqa: N803 (CuPy's names)
        CALLS["NcclCommunicator"] += 1
        ndev, rank = _int("ndev", ndev), _int("rank", rank)
        if not isinstance(commId, tuple):
            raise TypeError(f"Argument 'commId' has incorrect type (expected tuple, got {type(commId).__name__})")
        if len(commId) != NCCL_UNIQUE_ID_BYTES:
            raise AssertionError(f"commId has {len(commId)} bytes, not {NCCL_UNIQUE_ID_BYTES}")
        raw = bytes(b & 0xFF for b in commId)
        if tuple(raw[:4]) != _MAGIC:
            raise NcclError(_INVALID_ARGUMENT, "commId was not made by get_unique_id()")
        if ndev < 1 or not 0 <= rank < ndev:
            raise NcclError(_INVALID_ARGUMENT, f"rank {rank} is not in [0, {ndev})")
        self._ndev, self._rank, self._device, self._broken = ndev, rank, CURRENT["device"], None
        self._comm = self._bootstrap(int.from_bytes(raw[4:8], "little"), raw[8:24])

    def _bootstrap(self, root, nonce):
        """Every member tells the commId's creator (world rank ``root``) its rank, node and device; the root
        checks them and answers with the world ranks in NCCL-rank order; the members make that MPI group."""
        MPI = _mpi()
        world = MPI.COMM_WORLD
        me = (nonce, self._rank, self._ndev, world.Get_rank(), socket.gethostname(), self._device)
        if world.Get_rank() == root:
            got = [me] + [world.recv(source=MPI.ANY_SOURCE, tag=_BOOT_TAG) for _ in range(self._ndev - 1)]
            err = self._check_members(got, nonce)
            order = sorted(got, key=lambda m: m[1])
            answer = err or [m[3] for m in order]
            for m in got[1:]:
                world.send(answer, dest=m[3], tag=_BOOT_TAG)
        else:
            world.send(me, dest=root, tag=_BOOT_TAG)
            answer = world.recv(source=root, tag=_BOOT_TAG)
        if isinstance(answer, str):
            raise NcclError(_INVALID_USAGE, answer)
        if self._ndev == 1:
            return MPI.COMM_SELF.Dup()
        return world.Create_group(world.Get_group().Incl(answer), tag=_BOOT_TAG)

    def _check_members(self, got, nonce):
        if any(m[0] != nonce or m[2] != self._ndev for m in got):
            return "the ranks passed different commIds or ndev to NcclCommunicator"
        ranks = sorted(m[1] for m in got)
        if ranks != list(range(self._ndev)):
            return f"NcclCommunicator ranks {ranks} are not 0..{self._ndev - 1} once each"
        seen = {}
        for m in got:
            other = seen.setdefault((m[4], m[5]), m[1])
            if other != m[1]:
                return (f"Duplicate GPU detected : rank {m[1]} and rank {other} both on CUDA device {m[5]} of "
                        f"{m[4]} (one GPU per rank: CONCH_SIMULATE_GPU_COUNT and the rank's device)")  # fmt: skip
        return None

    # ------------------------------------------------------------ properties
    @property
    def comm(self):
        return 0 if self._comm is None else id(self)

    def device_id(self):
        self._live()
        return self._device

    def rank_id(self):
        self._live()
        return self._rank

    def size(self):
        self._live()
        return self._ndev

    def destroy(self):
        CALLS["destroy"] += 1
        if self._comm is not None:
            self._comm.Free()
            self._comm = None

    abort = destroy

    def check_async_error(self):
        self._live()

    def _live(self):
        if self._comm is None:
            raise NcclError(_INVALID_ARGUMENT, "the communicator was destroyed")
        if self._broken:
            raise NcclError(_INVALID_USAGE, f"the communicator is unusable after an error ({self._broken})")

    # ------------------------------------------------------------ plumbing
    def _peer(self, name, r):
        r = _int(name, r)
        if not 0 <= r < self._ndev:
            raise NcclError(_INVALID_ARGUMENT, f"{name} {r} is not a rank of this communicator of {self._ndev}")
        return r

    def _op(self, op, dtype):
        op = _int("op", op)
        MPI = _mpi()
        table = {NCCL_SUM: MPI.SUM, NCCL_PROD: MPI.PROD, NCCL_MAX: MPI.MAX, NCCL_MIN: MPI.MIN, NCCL_AVG: MPI.SUM}
        if op not in table:
            raise NcclError(_INVALID_ARGUMENT, f"invalid reduction op {op}")
        return table[op], (self._ndev if op == NCCL_AVG else None)

    def _enqueue(self, name, stream, start):
        """Run ``start`` now, or at the outermost ``groupEnd`` inside a group. ``start(synchronous)`` posts the
        MPI requests and returns them with a function that writes the results out."""
        CALLS[name] += 1
        self._live()
        _int("stream", stream)
        if _GROUP["depth"]:
            _GROUP["queue"].append(start)
            return
        reqs, finish = start(synchronous=True)
        self._wait(reqs, name)
        finish()

    def _wait(self, reqs, name, statuses=None):
        if not reqs:
            return
        MPI = _mpi()
        limit = float(os.environ.get("CONCH_SIM_NCCL_TIMEOUT", "60"))
        end = time.monotonic() + limit
        while not MPI.Request.Testall(reqs, statuses):
            if time.monotonic() > end:
                # as a GPU after a hang, the communicator is unusable (ncclCommAbort): its send stays pending
                self._broken = f"{name} timed out"
                raise NcclError(_INVALID_USAGE, f"{name} did not complete in {limit:g} s: an ungrouped send or recv "
                                "waits for its peer, as on a GPU stream (deadlock? two ranks each sending, or each "
                                "receiving, first); group them with groupStart()/groupEnd()")  # fmt: skip
            time.sleep(1e-4)

    def _reduction(self, name, send, recv, count, datatype, op, stream, root=None):
        """allReduce, reduce (``root`` given) and reduceScatter (``recv`` None: ``count`` is the receive count)."""
        dt = _dtype(datatype)
        mop, divide = self._op(op, dt)
        scatter = name == "reduceScatter"
        n = self._ndev

        def start(synchronous):
            src = _view(send, count * n if scatter else count, dt)
            dst = _view(recv, count, dt)
            buf = _wide(src).copy()
            out = np.empty(count, buf.dtype) if scatter else buf
            comm = self._comm
            if scatter:
                reqs = [comm.Ireduce_scatter_block(buf, out, op=mop)]
            elif root is None:
                reqs = [comm.Iallreduce(_mpi().IN_PLACE, buf, op=mop)]
            elif root == self._rank:
                reqs = [comm.Ireduce(_mpi().IN_PLACE, buf, op=mop, root=root)]
            else:
                reqs = [comm.Ireduce(buf, None, op=mop, root=root)]

            def finish():
                if root is not None and root != self._rank:
                    return  # recvbuf is only significant on the root
                if divide:
                    out[...] = out / divide
                dst[...] = out  # rounds a float32 buffer to float16/bfloat16 once

            return reqs, finish

        self._enqueue(name, stream, start)

    # ------------------------------------------------------------ collectives (CuPy's signatures)
    def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):  # noqa: N802
        self._reduction("allReduce", sendbuf, recvbuf, _int("count", count, True), datatype, op, stream)

    def reduce(self, sendbuf, recvbuf, count, datatype, op, root, stream):
        root = self._peer("root", root)
        self._reduction("reduce", sendbuf, recvbuf, _int("count", count, True), datatype, op, stream, root)

    def reduceScatter(self, sendbuf, recvbuf, recvcount, datatype, op, stream):  # noqa: N802
        self._reduction("reduceScatter", sendbuf, recvbuf, _int("recvcount", recvcount, True), datatype, op, stream)

    def bcast(self, buff, count, datatype, root, stream):
        self._broadcast("bcast", buff, buff, count, datatype, root, stream)

    def broadcast(self, sendbuff, recvbuff, count, datatype, root, stream):
        self._broadcast("broadcast", sendbuff, recvbuff, count, datatype, root, stream)

    def _broadcast(self, name, sendbuff, recvbuff, count, datatype, root, stream):
        count, dt, root = _int("count", count, True), _dtype(datatype), self._peer("root", root)

        def start(synchronous):
            dst = _view(recvbuff, count, dt)
            if root == self._rank and sendbuff != recvbuff:
                dst[...] = _view(sendbuff, count, dt)
            raw = dst.view(np.uint8)
            return [self._comm.Ibcast(raw, root=root)], lambda: None

        self._enqueue(name, stream, start)

    def allGather(self, sendbuf, recvbuf, count, datatype, stream):  # noqa: N802
        count, dt = _int("count", count, True), _dtype(datatype)

        def start(synchronous):
            src = _view(sendbuf, count, dt).view(np.uint8).copy()  # in place: the send is a slice of recvbuf
            dst = _view(recvbuf, count * self._ndev, dt).view(np.uint8)
            return [self._comm.Iallgather(src, dst)], lambda: None

        self._enqueue("allGather", stream, start)

    def send(self, sendbuf, count, datatype, peer, stream):
        count, dt, peer = _int("count", count, True), _dtype(datatype), self._peer("peer", peer)

        def start(synchronous):
            raw = _view(sendbuf, count, dt).view(np.uint8)
            isend = self._comm.Issend if synchronous else self._comm.Isend
            return [isend(raw, dest=peer, tag=0)], lambda: None

        self._enqueue("send", stream, start)

    def recv(self, recvbuf, count, datatype, peer, stream):
        count, dt, peer = _int("count", count, True), _dtype(datatype), self._peer("peer", peer)
        MPI = _mpi()

        def start(synchronous):
            want = count * dt.itemsize
            tmp = np.empty(want + 1, np.uint8)  # one byte more: a longer message is reported, not truncated
            status = MPI.Status()
            req = self._comm.Irecv(tmp, source=peer, tag=0)

            def finish():  # waits here (a recv waits for its sender, as on a GPU), reading the size received
                self._wait([req], "recv", [status])
                got = status.Get_count(MPI.BYTE)
                if got != want:
                    raise NcclError(_INVALID_USAGE, f"recv of {want} bytes from peer {peer}, which sent {got} bytes "
                                    "(send and recv need the same count and datatype)")  # fmt: skip
                _view(recvbuf, count, dt).view(np.uint8)[...] = tmp[:want]

            return [], finish

        self._enqueue("recv", stream, start)
