"""conch.distributed: torch.distributed's process group and collectives, over MPI (CPU) and NCCL (CUDA).

Example (launch with ``python -m conch.distributed.run --nproc-per-node 2 train.py``)::

    import conch
    import conch.distributed as dist

    dist.init_process_group()                      # rank and world size come from MPI
    t = conch.ones(4) * dist.get_rank()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)       # in place: 0 + 1 + ... on every rank
    dist.destroy_process_group()

Importing this package loads neither mpi4py nor CuPy: ``init_process_group`` does.
"""

from ._mpi import Work
from .c10d import (
    GradBucket,
    GroupMember,
    ReduceOp,
    all_gather,
    all_gather_into_tensor,
    all_gather_object,
    all_reduce,
    all_to_all,
    all_to_all_single,
    barrier,
    broadcast,
    broadcast_object_list,
    destroy_process_group,
    gather,
    gather_object,
    get_backend,
    get_global_rank,
    get_group_rank,
    get_local_rank,
    get_node_local_rank,
    get_process_group_ranks,
    get_rank,
    get_world_size,
    group,
    init_process_group,
    irecv,
    is_available,
    is_initialized,
    is_mpi_available,
    is_nccl_available,
    isend,
    new_group,
    recv,
    reduce,
    reduce_scatter_tensor,
    scatter,
    send,
)

__all__ = [
    "init_process_group", "destroy_process_group", "is_initialized", "is_available", "is_mpi_available",
    "is_nccl_available", "get_backend", "get_rank", "get_world_size", "get_local_rank", "get_node_local_rank",
    "barrier", "all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor", "send",
    "recv", "ReduceOp", "Work", "group", "GroupMember", "new_group", "get_process_group_ranks", "get_global_rank",
    "get_group_rank", "reduce", "gather", "scatter", "all_to_all", "all_to_all_single", "isend", "irecv",
    "broadcast_object_list", "all_gather_object", "gather_object", "GradBucket",
]  # fmt: skip


def __getattr__(name):
    # conch.distributed.optim (ZeroRedundancyOptimizer) and .algorithms (DDP communication hooks) on first use,
    # as torch.distributed's are reachable
    if name in ("optim", "algorithms"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
