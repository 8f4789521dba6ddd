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


class _Sentinel:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"<conch.distributed.group.{self.name}>"


class group:  # noqa: N801  (torch.distributed.group's spelling)
    """``group.WORLD`` (the default group, also ``None``) and ``group.NON_GROUP_MEMBER`` (what ``new_group``
    returns on a rank outside the new group; collectives on it do nothing)."""

    WORLD = _Sentinel("WORLD")
    NON_GROUP_MEMBER = _Sentinel("NON_GROUP_MEMBER")


GroupMember = group


class _ProcessGroup:
    """A group of ranks (the world, or a ``new_group``): its MPI backend (communicator), NCCL made on first use,
    and ``ranks``, the global rank of each group rank."""

    def __init__(self, backend, mpi, ranks=None):
        self.backend, self.mpi, self.nccl = backend, mpi, None
        self.ranks = list(range(mpi.size)) if ranks is None else list(ranks)

    def __repr__(self):
        return f"<conch.distributed.ProcessGroup ranks={self.ranks} backend={self.backend}>"

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

            self.nccl = NCCLBackend(self.mpi, device=t._data.device.id)
        return self.nccl


_WORLD: _ProcessGroup | None = None
_SUBGROUPS: list = []  # new_group's groups, freed with the world


def _pg(group=None):
    """The group a collective runs on, or None on a rank outside ``group`` (the collective then does nothing,
    as PyTorch's ``_rank_not_in_group``)."""
    if _WORLD is None:
        raise ValueError(_NOT_INIT)
    if group is None or group is GroupMember.WORLD:
        return _WORLD
    if group is GroupMember.NON_GROUP_MEMBER:
        return None
    if not isinstance(group, _ProcessGroup):
        raise TypeError(f"group must be a process group from new_group(), group.WORLD or None; got {group!r}")
    return group


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


def new_group(ranks=None, timeout=None, backend=None, pg_options=None, use_local_synchronization=False,
              group_desc=None, device_id=None):  # fmt: skip
    """A process group of the global ranks ``ranks`` (all when None), with its own MPI communicator (a split
    of the world's). Every rank of the world must call it, with the same ``ranks``; a rank outside gets
    ``group.NON_GROUP_MEMBER``. Group rank i is the i-th smallest of ``ranks``.

    Example::

        evens = dist.new_group([r for r in range(dist.get_world_size()) if r % 2 == 0])
        dist.all_reduce(t, group=evens)        # on the even ranks; a no-op on the odd ones
    """
    world = _pg()
    size = world.mpi.size
    members = list(range(size)) if ranks is None else sorted(int(r) for r in ranks)
    bad = [r for r in members if not 0 <= r < size]
    if bad or len(set(members)) != len(members) or not members:
        raise ValueError(f"new_group: ranks {list(ranks) if ranks is not None else None} must be distinct ranks of "
                         f"this world of size {size} (at least one)")  # fmt: skip
    mpi = world.mpi.split(members)
    if mpi is None:
        return GroupMember.NON_GROUP_MEMBER
    name = world.backend if backend is None else {"gloo": "mpi"}.get(str(backend).lower(), str(backend).lower())
    pg = _ProcessGroup(name, mpi, members)
    _SUBGROUPS.append(pg)
    return pg


def _close(pg):
    if pg.nccl is not None:
        pg.nccl.close()
    if pg.mpi is not _WORLD.mpi:  # a world of size 1 without MPI splits into itself
        pg.mpi.close()


def destroy_process_group(group=None):
    """Leave the default process group and every ``new_group`` (or, given a group, free only that one). MPI
    itself is finalised at exit, by mpi4py."""
    global _WORLD
    pg = _pg(group)
    if pg is None:
        return
    if pg is not _WORLD:
        _close(pg)
        _SUBGROUPS.remove(pg)
        return
    for sub in _SUBGROUPS:
        _close(sub)
    _SUBGROUPS.clear()
    if pg.nccl is not None:
        pg.nccl.close()
    pg.mpi.close()
    _WORLD = None


def get_backend(group=None):
    pg = _pg(group)
    if pg is None:
        raise ValueError("Invalid process group specified")
    return {"auto": "cpu:mpi,cuda:nccl"}.get(pg.backend, pg.backend)


def get_rank(group=None):
    """This process's rank in ``group`` (the world by default); -1 outside the group, as PyTorch."""
    pg = _pg(group)
    return -1 if pg is None else pg.mpi.rank


def get_world_size(group=None):
    """The number of ranks in ``group``; -1 on a rank outside it, as PyTorch."""
    pg = _pg(group)
    return -1 if pg is None else pg.mpi.size


def get_process_group_ranks(group):
    """The global ranks of ``group``'s members, in group-rank order."""
    pg = _pg(group)
    if pg is None:
        raise ValueError("get_process_group_ranks: this rank is not a member of the group")
    return list(pg.ranks)


def get_global_rank(group, group_rank):
    """The global rank of ``group``'s rank ``group_rank``."""
    ranks = get_process_group_ranks(group)
    if not 0 <= group_rank < len(ranks):
        raise ValueError(f"Group rank {group_rank} is not part of group {ranks}")
    return ranks[group_rank]


def get_group_rank(group, global_rank):
    """The rank within ``group`` of the global rank ``global_rank``."""
    ranks = get_process_group_ranks(group)
    if global_rank not in ranks:
        raise ValueError(f"Global rank {global_rank} is not part of group {ranks}")
    return ranks.index(global_rank)


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


def _peer(pg, rank, group_rank, what, name):
    """The group-local rank for a collective's ``src``/``dst``: ``rank`` is global (PyTorch's convention),
    ``group_rank`` (``group_src``/``group_dst``) already local."""
    if group_rank is not None:
        if not isinstance(group_rank, (int, np.integer)) or not 0 <= group_rank < pg.mpi.size:
            raise ValueError(f"{what}: group_{name}={group_rank!r} is not a rank of this group of size {pg.mpi.size}")
        return int(group_rank)
    if not isinstance(rank, (int, np.integer)) or rank not in pg.ranks:
        where = f"this world of size {_WORLD.mpi.size}" if pg is _WORLD else f"the group {pg.ranks}"
        raise ValueError(f"{what}: {name}={rank!r} is not a rank of {where}")
    return pg.ranks.index(int(rank))


def _check_like(what, tensors, ref, n):
    """Every tensor of a list argument (one per rank) is a conch tensor shaped and typed as ``ref``."""
    if tensors is None or len(tensors) != n:
        raise ValueError(f"{what}: expected a list of {n} tensors (one per rank), got "
                         f"{'None' if tensors is None else len(tensors)}")  # fmt: skip
    for i, t in enumerate(tensors):
        if not isinstance(t, Tensor):
            raise TypeError(f"{what}: element {i} of the list is {type(t).__name__}, not a conch Tensor")
        if t.shape != ref.shape or t.dtype != ref.dtype or t.device != ref.device:
            raise ValueError(f"{what}: list element {i} has shape {tuple(t.shape)}, dtype {t.dtype}, device "
                             f"{t.device}; the tensor has shape {tuple(ref.shape)}, dtype {ref.dtype}, device "
                             f"{ref.device}")  # fmt: skip


def all_reduce(tensor, op=ReduceOp.SUM, group=None, async_op=False):
    """Combine ``tensor`` across ranks in place (every rank gets the result). float16/bfloat16 reduce in
    float32 and round once. Returns a work handle with ``wait()`` when ``async_op=True``, else None."""
    pg, op = _pg(group), _op(op)
    if pg is None:
        return None
    be = pg.for_tensor(tensor, "all_reduce")
    _check_op(op, tensor, "all_reduce")
    return _outputs(be.all_reduce(tensor, op, async_op), [tensor])


def _outputs(work, tensors):
    """``work`` (None for a blocking call) with its output tensors, for ``Work.result()`` and ``get_future()``."""
    if work is not None:
        work._outputs = tensors
    return work


def _xp(pg, tensor):
    return np if isinstance(tensor._data, np.ndarray) else pg.nccl.cp


def broadcast(tensor, src=None, group=None, async_op=False, group_src=None):
    """Copy rank ``src``'s ``tensor`` into every rank's ``tensor``, in place (``src`` is a global rank;
    ``group_src`` a rank of ``group``)."""
    pg = _pg(group)
    if pg is None:
        return None
    be = pg.for_tensor(tensor, "broadcast")
    return _outputs(be.broadcast(tensor, _peer(pg, src, group_src, "broadcast", "src"), async_op), [tensor])


def reduce(tensor, dst=None, op=ReduceOp.SUM, group=None, async_op=False, group_dst=None):
    """Combine ``tensor`` across ranks into rank ``dst``'s ``tensor`` (the other ranks' tensors are left as
    they were)."""
    pg, op = _pg(group), _op(op)
    if pg is None:
        return None
    be = pg.for_tensor(tensor, "reduce")
    _check_op(op, tensor, "reduce")
    return _outputs(be.reduce(tensor, _peer(pg, dst, group_dst, "reduce", "dst"), op, async_op), [tensor])


def all_gather(tensor_list, tensor, group=None, async_op=False):
    """Fill ``tensor_list[r]`` with rank r's ``tensor``, on every rank."""
    pg = _pg(group)
    if pg is None:
        return None
    be = pg.for_tensor(tensor, "all_gather")
    _check_like("all_gather", tensor_list, tensor, pg.mpi.size)
    out = _xp(pg, tensor).empty((pg.mpi.size, *tensor.shape), tensor.dtype)
    return be.all_gather_into(out, tensor, async_op, lambda: _fill_list(tensor_list, out))


def _fill_list(tensors, arr):
    for r, t in enumerate(tensors):
        t._data[...] = arr[r]
        t._version[0] += 1


def _rooted(what, tensor, lst, list_name, role, rank, group_rank, group):
    """``(pg, backend, root)`` for gather/scatter, the list checked on the root and refused elsewhere; None
    for ``pg`` on a rank outside ``group``."""
    pg = _pg(group)
    if pg is None:
        return None, None, None
    be = pg.for_tensor(tensor, what)
    root = _peer(pg, 0 if rank is None and group_rank is None else rank, group_rank, what, "dst" if role else "src")
    if pg.mpi.rank == root:
        _check_like(what, lst, tensor, pg.mpi.size)
    elif lst:
        raise ValueError(f"Argument ``{list_name}`` must NOT be specified on non-{role or 'source'} ranks.")
    return pg, be, root


def gather(tensor, gather_list=None, dst=None, group=None, async_op=False, group_dst=None):
    """Rank ``dst`` receives every rank's ``tensor`` in ``gather_list`` (one tensor per rank); the other ranks
    pass no list."""
    pg, be, root = _rooted("gather", tensor, gather_list, "gather_list", "destination", dst, group_dst, group)
    if pg is None:
        return None
    if pg.mpi.rank != root:
        return be.gather_into(None, tensor, root, async_op, lambda: None)
    out = _xp(pg, tensor).empty((pg.mpi.size, *tensor.shape), tensor.dtype)
    return be.gather_into(out, tensor, root, async_op, lambda: _fill_list(gather_list, out))


def scatter(tensor, scatter_list=None, src=None, group=None, async_op=False, group_src=None):
    """Rank r's ``tensor`` receives ``scatter_list[r]`` of rank ``src``; the other ranks pass no list."""
    pg, be, root = _rooted("scatter", tensor, scatter_list, "scatter_list", None, src, group_src, group)
    if pg is None:
        return None
    arr = None
    if pg.mpi.rank == root:
        xp = _xp(pg, tensor)
        arr = xp.stack([xp.ascontiguousarray(t._data) for t in scatter_list])
    return be.scatter_from(tensor, arr, root, async_op)


def all_to_all(output_tensor_list, input_tensor_list, group=None, async_op=False):
    """Rank i's ``input_tensor_list[j]`` lands in rank j's ``output_tensor_list[i]`` (sizes may differ from
    pair to pair; every tensor of one dtype and device)."""
    return _all_to_all(output_tensor_list, input_tensor_list, group, async_op)


def _all_to_all(output_tensor_list, input_tensor_list, group, async_op, also=()):
    """all_to_all; ``also``: tensors whose storage the outputs view (their version counters are bumped too)."""
    pg = _pg(group)
    if pg is None:
        return None
    w = pg.mpi.size
    for name, lst in (("output_tensor_list", output_tensor_list), ("input_tensor_list", input_tensor_list)):
        if len(lst) != w:
            raise ValueError(f"all_to_all: {name} has {len(lst)} tensors for a group of size {w}")
    ref = input_tensor_list[0]
    be = pg.for_tensor(ref, "all_to_all")
    for t in [*output_tensor_list, *input_tensor_list]:
        if pg.for_tensor(t, "all_to_all") is not be or t.dtype != ref.dtype:
            raise ValueError(f"all_to_all: every tensor must have the dtype and device of input 0 ({ref.dtype}, "
                             f"{ref.device}); got {t.dtype} on {t.device}")  # fmt: skip
    xp = _xp(pg, ref)
    send = [xp.ascontiguousarray(t._data) for t in input_tensor_list]
    recv = [xp.empty(t.shape, t.dtype) for t in output_tensor_list]

    def finish():
        for t, a in zip(output_tensor_list, recv):
            t._data[...] = a
            t._version[0] += 1
        for t in also:
            t._version[0] += 1

    return be.all_to_all(send, recv, async_op, finish)


def _splits(sizes, n, w, what):
    if sizes is None or len(sizes) == 0:
        if n % w:
            raise ValueError(f"all_to_all_single: dim 0 of the {what} ({n}) is not divisible by the group size {w}; "
                             f"pass {what}_split_sizes")  # fmt: skip
        return [n // w] * w
    sizes = [int(x) for x in sizes]
    if len(sizes) != w or sum(sizes) != n or min(sizes) < 0:
        raise ValueError(f"all_to_all_single: {what}_split_sizes {sizes} must be {w} sizes >= 0 adding up to dim 0 "
                         f"of the {what} ({n})")  # fmt: skip
    return sizes


def all_to_all_single(output, input, output_split_sizes=None, input_split_sizes=None, group=None,  # noqa: A002
                      async_op=False):  # fmt: skip
    """``all_to_all`` on one tensor each way: ``input`` is cut along dim 0 into ``input_split_sizes`` (equal
    parts by default), part j goes to rank j, and ``output`` is the concatenation of what each rank sent."""
    pg = _pg(group)
    if pg is None:
        return None
    w = pg.mpi.size
    ins = input.split(_splits(input_split_sizes, input.shape[0] if input.ndim else 0, w, "input"))
    outs_sizes = _splits(output_split_sizes, output.shape[0] if output.ndim else 0, w, "output")
    if output.shape[1:] != input.shape[1:]:
        raise ValueError(f"all_to_all_single: output shape {tuple(output.shape)} and input shape "
                         f"{tuple(input.shape)} differ beyond dim 0")  # fmt: skip
    offs = np.cumsum([0, *outs_sizes])
    outs = [Tensor._make(output._data[offs[j] : offs[j + 1]]) for j in range(w)]  # views: written in place
    return _all_to_all(outs, list(ins), group, async_op, also=(output,))


def all_gather_into_tensor(output_tensor, input_tensor, group=None, async_op=False):
    """Gather every rank's ``input_tensor`` into ``output_tensor``: concatenated along dim 0
    (``(world * n, ...)``) or stacked (``(world, n, ...)``)."""
    pg = _pg(group)
    if pg is None:
        return None
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
    shape = (w, *input_tensor.shape)
    out = o.reshape(shape) if direct else _xp(pg, output_tensor).empty(shape, o.dtype)  # a CuPy array for NCCL

    def finish():
        if not direct:
            o[...] = out.reshape(o.shape)
        output_tensor._version[0] += 1

    return _outputs(be.all_gather_into(out, input_tensor, async_op, finish), [output_tensor])


def reduce_scatter_tensor(output, input, op=ReduceOp.SUM, group=None, async_op=False):  # noqa: A002 (torch's name)
    """Reduce ``input`` (world_size chunks along dim 0) across ranks and leave chunk r of the result in rank r's
    ``output``."""
    pg, op = _pg(group), _op(op)
    if pg is None:
        return None
    be = pg.for_tensor(input, "reduce_scatter_tensor")
    pg.for_tensor(output, "reduce_scatter_tensor")
    _check_op(op, input, "reduce_scatter_tensor")
    w = pg.mpi.size
    if input.numel() != w * output.numel() or output.dtype != input.dtype:
        raise ValueError(
            f"reduce_scatter_tensor: the input (shape {tuple(input.shape)}, {input.dtype}) must hold world_size={w} "
            f"chunks the size of the output (shape {tuple(output.shape)}, {output.dtype})"
        )
    return _outputs(be.reduce_scatter(output, input, op, async_op), [output])


def barrier(group=None, async_op=False, device_ids=None):
    """Wait until every rank has reached the barrier."""
    pg = _pg(group)
    return None if pg is None else pg.mpi.barrier(async_op)


def _p2p(tensor, peer, group, group_peer, what, name):
    pg = _pg(group)
    if pg is None:
        return None, None, None
    be = pg.for_tensor(tensor, what)
    local = None if peer is None and group_peer is None else _peer(pg, peer, group_peer, what, name)
    if local is not None and local == pg.mpi.rank:
        raise ValueError(f"{what}: a rank cannot {'send to' if name == 'dst' else 'receive from'} itself")
    return pg, be, local


def send(tensor, dst=None, group=None, tag=0, group_dst=None):
    """Send ``tensor`` to rank ``dst`` (blocks until it may be reused)."""
    pg, be, peer = _p2p(tensor, dst, group, group_dst, "send", "dst")
    if pg is not None:
        be.send(tensor, peer, tag)


def recv(tensor, src=None, group=None, tag=0, group_src=None):
    """Receive into ``tensor`` from rank ``src`` (any rank when None); returns the sender's (global) rank."""
    pg, be, peer = _p2p(tensor, src, group, group_src, "recv", "src")
    if pg is None:
        return -1
    return pg.ranks[be.recv(tensor, peer, tag)]


def isend(tensor, dst=None, group=None, tag=0, group_dst=None):
    """Start sending ``tensor`` to rank ``dst``; returns a work handle (do not modify ``tensor`` before its
    ``wait()``)."""
    pg, be, peer = _p2p(tensor, dst, group, group_dst, "isend", "dst")
    return None if pg is None else be.isend(tensor, peer, tag)


def irecv(tensor, src=None, group=None, tag=0, group_src=None):
    """Start receiving into ``tensor`` from rank ``src`` (any rank when None); the data is in ``tensor`` after
    the returned handle's ``wait()``."""
    pg, be, peer = _p2p(tensor, src, group, group_src, "irecv", "src")
    return None if pg is None else be.irecv(tensor, peer, tag)


def _object_comm(pg):
    """The MPI communicator that carries pickled objects (None in a world of one without mpi4py)."""
    return getattr(pg.mpi, "comm", None) if pg.mpi.size > 1 else None


def broadcast_object_list(object_list, src=None, group=None, device=None, group_src=None):
    """Replace ``object_list``'s items on every rank by rank ``src``'s (picklable objects; the lists must have
    the same length on every rank)."""
    pg = _pg(group)
    if pg is None:
        return
    root = _peer(pg, 0 if src is None and group_src is None else src, group_src, "broadcast_object_list", "src")
    comm = _object_comm(pg)
    if comm is not None:
        object_list[:] = comm.bcast(list(object_list) if pg.mpi.rank == root else None, root=root)


def all_gather_object(object_list, obj, group=None):
    """Fill ``object_list`` (one slot per rank) with every rank's ``obj`` (picklable)."""
    pg = _pg(group)
    if pg is None:
        return
    if len(object_list) != pg.mpi.size:
        raise ValueError(f"all_gather_object: object_list has {len(object_list)} slots for {pg.mpi.size} ranks")
    comm = _object_comm(pg)
    object_list[:] = comm.allgather(obj) if comm is not None else [obj]


def gather_object(obj, object_gather_list=None, dst=None, group=None, group_dst=None):
    """Rank ``dst`` receives every rank's ``obj`` in ``object_gather_list``; the other ranks pass None."""
    pg = _pg(group)
    if pg is None:
        return
    root = _peer(pg, 0 if dst is None and group_dst is None else dst, group_dst, "gather_object", "dst")
    if pg.mpi.rank == root and (object_gather_list is None or len(object_gather_list) != pg.mpi.size):
        raise ValueError(f"gather_object: the destination needs object_gather_list with {pg.mpi.size} slots")
    comm = _object_comm(pg)
    got = comm.gather(obj, root=root) if comm is not None else [obj]
    if pg.mpi.rank == root:
        object_gather_list[:] = got


def _any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is True on any rank of the world (one small MPI all-reduce; False
    without a process group or in a world of one). GradScaler agrees on skipping a step with it."""
    pg = _WORLD
    if pg is None or pg.mpi.size == 1:
        return bool(flag)
    buf = np.array([1 if flag else 0], np.int32)
    pg.mpi.comm.Allreduce(pg.mpi.MPI.IN_PLACE, buf, op=pg.mpi.MPI.MAX)
    return bool(buf[0])


class GradBucket:
    """One DDP bucket as a communication hook sees it (PyTorch's ``torch.distributed.GradBucket``).

    ``buffer()`` is the flat 1-D tensor of the bucket's local gradients (concatenated in ``parameters()`` order);
    ``gradients()`` views of it shaped like each parameter; ``index()`` the bucket's position in the order the
    all-reduces start (0 first: the last layers), ``is_last()`` whether it is the last of the pass;
    ``set_buffer(t)`` replaces the buffer with a tensor of the same size.
    """

    __slots__ = ("_index", "_buffer", "_params", "_last")

    def __init__(self, index, buffer, params, is_last):
        self._index, self._buffer, self._params, self._last = index, buffer, list(params), is_last

    def index(self):
        return self._index

    def buffer(self):
        return self._buffer

    def parameters(self):
        return list(self._params)

    def is_last(self):
        return self._last

    def gradients(self):
        out, off = [], 0
        for p in self._params:
            n = p.numel()
            out.append(self._buffer[off : off + n].view(*p.shape))
            off += n
        return out

    def set_buffer(self, buffer):
        if buffer.numel() != self._buffer.numel():
            raise ValueError(
                f"GradBucket.set_buffer: the new buffer has {buffer.numel()} elements, the bucket "
                f"{self._buffer.numel()}"
            )
        self._buffer = buffer
