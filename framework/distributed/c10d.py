"""The default process group and torch.distributed's collectives: MPI for CPU tensors, NCCL for CUDA tensors."""

from __future__ import annotations

import enum
import importlib.util
import os

import numpy as np

from .. import _dtype as D
from ..tensor import Tensor

_NOT_INIT = "Default process group has not been initialized, please make sure to call init_process_group."


class ReduceOp(enum.Enum):
    """How ``all_reduce`` and ``reduce_scatter_tensor`` combine the ranks' tensors (``dist.ReduceOp.SUM``...)."""

    SUM = "sum"
    AVG = "avg"
    PRODUCT = "product"
    MAX = "max"
    MIN = "min"
    BAND = "band"
    BOR = "bor"
    BXOR = "bxor"


class _WorldGroup:
    """``dist.group.WORLD``: the only group so far (``new_group`` is planned)."""

    def __repr__(self):
        return "<conch.distributed.group.WORLD>"


class group:  # noqa: N801  (torch.distributed.group's spelling)
    WORLD = _WorldGroup()


GroupMember = group


class _ProcessGroup:
    def __init__(self, backend, mpi):
        self.backend, self.mpi, self.nccl = backend, mpi, None

    def for_tensor(self, t, what):
        if not isinstance(t, Tensor):
            raise TypeError(f"{what} expects a conch Tensor, got {type(t).__name__}")
        if isinstance(t._data, np.ndarray):
            if self.backend == "nccl":
                raise RuntimeError(f"{what}: the nccl backend takes CUDA tensors; got a CPU tensor "
                                   "(init_process_group() with no backend handles both)")  # fmt: skip
            return self.mpi
        if self.backend == "mpi":
            raise RuntimeError(
                f"{what}: the mpi backend takes CPU tensors; got a tensor on {t.device}. Use "
                "init_process_group('nccl') or init_process_group() (no backend), which sends CUDA tensors to NCCL"
            )
        if self.nccl is None:  # every rank reaches the same collective, so creating it here is collective too
            from ._nccl import NCCLBackend

            self.nccl = NCCLBackend(self.mpi)
        return self.nccl


_WORLD: _ProcessGroup | None = None


def _pg(group=None):
    if _WORLD is None:
        raise ValueError(_NOT_INIT)
    if group is not None and group is not GroupMember.WORLD:
        raise NotImplementedError("process subgroups (new_group) are not supported yet: pass group=None")
    return _WORLD


def is_available():
    """True when the MPI backend can run (mpi4py is installed: ``pip install conch[distributed]``). Without it,
    ``init_process_group`` still works in a single process (world size 1)."""
    return importlib.util.find_spec("mpi4py") is not None


def is_initialized():
    return _WORLD is not None


def is_mpi_available():
    return is_available()


def is_nccl_available():
    from ..kernels import _cupy

    if _cupy.get_cupy() is None:
        return False
    try:
        from cupy.cuda import nccl
    except ImportError:
        return False
    return bool(getattr(nccl, "available", True))


def _launched_size():
    """The world size a launcher announced in the environment (MPICH, Open MPI, Slurm), or 1."""
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 1


def init_process_group(backend=None, init_method=None, timeout=None, world_size=-1, rank=-1, store=None,
                       group_name="", pg_options=None, device_id=None):  # fmt: skip
    """Join the default process group. Rank and world size come from MPI (launch with ``mpiexec`` or
    ``python -m conch.distributed.run``); no TCP store, so ``init_method``/``store`` are ignored. ``backend``:
    ``"mpi"`` (CPU tensors; ``"gloo"`` is accepted as a synonym), ``"nccl"`` (CUDA tensors), or None for both,
    each tensor going to the backend of its device. A plain ``python script.py`` is a world of size 1.
    """
    global _WORLD
    if _WORLD is not None:
        raise ValueError("trying to initialize the default process group twice!")
    name = "auto" if backend is None else str(backend).lower()
    name = {"gloo": "mpi", "cpu:gloo,cuda:nccl": "auto", "cpu:mpi,cuda:nccl": "auto"}.get(name, name)
    if name not in ("auto", "mpi", "nccl"):
        raise ValueError(f"unknown backend {backend!r}: conch.distributed supports 'mpi' (CPU) and 'nccl' (CUDA)")
    if is_available():
        from ._mpi import MPIBackend

        mpi = MPIBackend()
    elif _launched_size() > 1:
        raise ImportError(
            f"this process is one of {_launched_size()} ranks, but mpi4py is not installed: "
            "pip install 'conch[distributed]' (mpi4py and mpich)"
        )
    else:
        from ._mpi import SelfBackend

        mpi = SelfBackend()
    for given, actual, what in ((world_size, mpi.size, "world_size"), (rank, mpi.rank, "rank")):
        if given not in (None, -1) and int(given) != actual:
            mpi.close()
            raise ValueError(f"init_process_group({what}={given}), but MPI says {what} is {actual}")
    pg = _ProcessGroup(name, mpi)
    if name == "nccl":
        from ._nccl import NCCLBackend

        pg.nccl = NCCLBackend(mpi)
    # PyTorch launchers export these; scripts written for torchrun read them after init
    for var, value in (("RANK", mpi.rank), ("WORLD_SIZE", mpi.size), ("LOCAL_RANK", mpi.local_rank),
                       ("LOCAL_WORLD_SIZE", mpi.local_size)):  # fmt: skip
        os.environ.setdefault(var, str(value))
    _WORLD = pg


def destroy_process_group(group=None):
    """Leave the default process group (MPI itself is finalised at exit, by mpi4py)."""
    global _WORLD
    pg = _pg(group)
    if pg.nccl is not None:
        pg.nccl.close()
    pg.mpi.close()
    _WORLD = None


def get_backend(group=None):
    pg = _pg(group)
    return {"auto": "cpu:mpi,cuda:nccl"}.get(pg.backend, pg.backend)


def get_rank(group=None):
    return _pg(group).mpi.rank


def get_world_size(group=None):
    return _pg(group).mpi.size


def get_local_rank():
    """This process's rank among the ranks on its node (the GPU it should use)."""
    return _pg().mpi.local_rank


def get_node_local_rank(fallback_rank=None):
    if _WORLD is None and fallback_rank is not None:
        return fallback_rank
    return get_local_rank()


def _op(op):
    if isinstance(op, ReduceOp):
        return op
    if isinstance(op, str) and op.upper() in ReduceOp.__members__:
        return ReduceOp[op.upper()]
    raise ValueError(f"op must be a dist.ReduceOp, got {op!r}")


def _check_op(op, t, what):
    if op is ReduceOp.AVG and t.dtype not in D.FLOATING:
        raise ValueError(f"{what}: ReduceOp.AVG needs a floating tensor, got {t.dtype}")
    if op in (ReduceOp.BAND, ReduceOp.BOR, ReduceOp.BXOR) and t.dtype in D.FLOATING:
        raise ValueError(f"{what}: ReduceOp.{op.name} needs an integer or bool tensor, got {t.dtype}")


def _check_rank(r, what, name):
    size = _pg().mpi.size
    if not isinstance(r, (int, np.integer)) or not 0 <= r < size:
        raise ValueError(f"{what}: {name}={r!r} is not a rank of this world of size {size}")


def all_reduce(tensor, op=ReduceOp.SUM, group=None, async_op=False):
    """Combine ``tensor`` across ranks in place (every rank gets the result). float16/bfloat16 reduce in
    float32 and round once. Returns a work handle with ``wait()`` when ``async_op=True``, else None."""
    pg, op = _pg(group), _op(op)
    be = pg.for_tensor(tensor, "all_reduce")
    _check_op(op, tensor, "all_reduce")
    return be.all_reduce(tensor, op, async_op)


def broadcast(tensor, src, group=None, async_op=False, group_src=None):
    """Copy rank ``src``'s ``tensor`` into every rank's ``tensor``, in place."""
    pg = _pg(group)
    src = group_src if group_src is not None else src
    be = pg.for_tensor(tensor, "broadcast")
    _check_rank(src, "broadcast", "src")
    return be.broadcast(tensor, int(src), async_op)


def all_gather(tensor_list, tensor, group=None, async_op=False):
    """Fill ``tensor_list[r]`` with rank r's ``tensor``, on every rank."""
    pg = _pg(group)
    be = pg.for_tensor(tensor, "all_gather")
    if len(tensor_list) != pg.mpi.size:
        raise ValueError(f"all_gather: tensor_list has {len(tensor_list)} tensors for a world of size {pg.mpi.size}")
    for i, t in enumerate(tensor_list):
        pg.for_tensor(t, "all_gather")
        if t.shape != tensor.shape or t.dtype != tensor.dtype:
            raise ValueError(f"all_gather: tensor_list[{i}] has shape {tuple(t.shape)}, dtype {t.dtype}; the input "
                             f"has shape {tuple(tensor.shape)}, dtype {tensor.dtype}")  # fmt: skip
    xp = np if isinstance(tensor._data, np.ndarray) else pg.nccl.cp
    out = xp.empty((pg.mpi.size, *tensor.shape), tensor.dtype)

    def finish():
        for r, t in enumerate(tensor_list):
            t._data[...] = out[r]
            t._version[0] += 1

    return be.all_gather_into(out, tensor, async_op, finish)


def all_gather_into_tensor(output_tensor, input_tensor, group=None, async_op=False):
    """Gather every rank's ``input_tensor`` into ``output_tensor``: concatenated along dim 0
    (``(world * n, ...)``) or stacked (``(world, n, ...)``)."""
    pg = _pg(group)
    be = pg.for_tensor(input_tensor, "all_gather_into_tensor")
    pg.for_tensor(output_tensor, "all_gather_into_tensor")
    w = pg.mpi.size
    if output_tensor.numel() != w * input_tensor.numel() or output_tensor.dtype != input_tensor.dtype:
        raise ValueError(
            f"all_gather_into_tensor: the output (shape {tuple(output_tensor.shape)}, {output_tensor.dtype}) must "
            f"hold world_size={w} copies of the input (shape {tuple(input_tensor.shape)}, {input_tensor.dtype})"
        )
    o = output_tensor._data
    direct = o.flags.c_contiguous
    out = o.reshape(w, *input_tensor.shape) if direct else np.empty((w, *input_tensor.shape), o.dtype)

    def finish():
        if not direct:
            o[...] = out.reshape(o.shape)
        output_tensor._version[0] += 1

    return be.all_gather_into(out, input_tensor, async_op, finish)


def reduce_scatter_tensor(output, input, op=ReduceOp.SUM, group=None, async_op=False):  # noqa: A002 (torch's name)
    """Reduce ``input`` (world_size chunks along dim 0) across ranks and leave chunk r of the result in rank r's
    ``output``."""
    pg, op = _pg(group), _op(op)
    be = pg.for_tensor(input, "reduce_scatter_tensor")
    pg.for_tensor(output, "reduce_scatter_tensor")
    _check_op(op, input, "reduce_scatter_tensor")
    w = pg.mpi.size
    if input.numel() != w * output.numel() or output.dtype != input.dtype:
        raise ValueError(
            f"reduce_scatter_tensor: the input (shape {tuple(input.shape)}, {input.dtype}) must hold world_size={w} "
            f"chunks the size of the output (shape {tuple(output.shape)}, {output.dtype})"
        )
    return be.reduce_scatter(output, input, op, async_op)


def barrier(group=None, async_op=False, device_ids=None):
    """Wait until every rank has reached the barrier."""
    return _pg(group).mpi.barrier(async_op)


def send(tensor, dst, group=None, tag=0):
    """Send ``tensor`` to rank ``dst`` (blocks until it may be reused)."""
    pg = _pg(group)
    be = pg.for_tensor(tensor, "send")
    _check_rank(dst, "send", "dst")
    if dst == pg.mpi.rank:
        raise ValueError("send: a rank cannot send to itself")
    be.send(tensor, int(dst), tag)


def recv(tensor, src=None, group=None, tag=0):
    """Receive into ``tensor`` from rank ``src`` (any rank when None); returns the sender's rank."""
    pg = _pg(group)
    be = pg.for_tensor(tensor, "recv")
    if src is not None:
        _check_rank(src, "recv", "src")
    return be.recv(tensor, None if src is None else int(src), tag)
