"""ZeroRedundancyOptimizer: ZeRO stage 1, each rank keeps and steps the optimizer state of its shard only."""

from __future__ import annotations

import copy

import numpy as np

from ...autograd.grad_mode import no_grad
from ...optim.optimizer import Optimizer
from ...tensor import Tensor
from .. import c10d


def _to_host(v):
    """A state value made picklable and device-free for the trip to the consolidating rank."""
    if isinstance(v, Tensor):
        return ("tensor", np.asarray(v.cpu()._data))
    if isinstance(v, dict):
        return {k: _to_host(x) for k, x in v.items()}
    return v


def _from_host(v):
    if isinstance(v, tuple) and len(v) == 2 and v[0] == "tensor":
        return Tensor._make(v[1])
    if isinstance(v, dict):
        return {k: _from_host(x) for k, x in v.items()}
    return v


class ZeroRedundancyOptimizer(Optimizer):
    """PyTorch's ``torch.distributed.optim.ZeroRedundancyOptimizer`` (ZeRO stage 1).

    The parameters are split into one shard per rank, balanced by size (within each parameter group, largest
    first, each to the rank holding the fewest elements so far). Every rank builds
    ``optimizer_class(its shard, **defaults)`` and so holds 1/R of the optimizer state (AdamW's two moments:
    2 * N / R floats instead of 2 * N). ``step()`` updates the local shard from the gradients (which DDP has
    made equal on every rank), then each rank broadcasts its updated parameters to the others, so every
    replica ends the step with the same full parameters as ``optimizer_class`` over all of them would give.

    ``param_groups`` is the global view (a scheduler changing ``lr`` there reaches every shard at the next
    ``step()``). Checkpoints: ``consolidate_state_dict(to=0)`` (on every rank) gathers the shards' states on
    rank ``to``, whose ``state_dict()`` is then the plain optimizer's format (global parameter indices), so it
    loads into a ZeroRedundancyOptimizer on any number of ranks, or into ``optimizer_class`` itself.

    Example::

        model = DistributedDataParallel(net)
        opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=conch.optim.AdamW, lr=1e-3)
        loss.backward(); opt.step()
        opt.consolidate_state_dict(to=0)
        if dist.get_rank() == 0:
            conch.save(opt.state_dict(), "opt.pt")
    """

    def __init__(self, params, optimizer_class, process_group=None, parameters_as_bucket_view=False,
                 overlap_with_ddp=False, **defaults):  # fmt: skip
        if overlap_with_ddp:
            raise NotImplementedError("ZeroRedundancyOptimizer(overlap_with_ddp=True) is not supported")
        self._group = process_group
        pg = c10d._pg(process_group)
        if pg is None:
            raise ValueError("ZeroRedundancyOptimizer: this rank is not a member of process_group")
        self._pg = pg
        self._world, self._rank = pg.mpi.size, pg.mpi.rank
        self._sizes = [0] * self._world  # elements owned by each rank so far
        self._owner = {}  # id(param) -> owning group rank
        self._optimizer_class = optimizer_class
        self.optim = None
        self._local_groups = []
        super().__init__(params, defaults)  # add_param_group partitions each group
        self.optim = optimizer_class(self._local_groups, **defaults)
        self._consolidated = None

    # ------------------------------------------------------------------ partition
    def add_param_group(self, param_group):
        """Add a parameter group (split across the ranks like the others)."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for p in sorted(group["params"], key=lambda t: -t.numel()):  # stable: equal sizes keep their order
            r = int(np.argmin(self._sizes))
            self._owner[id(p)] = r
            self._sizes[r] += p.numel()
        mine = {k: v for k, v in group.items() if k not in ("params", "param_names")}
        mine["params"] = [p for p in group["params"] if self._owner[id(p)] == self._rank]
        if self.optim is None:
            self._local_groups.append(mine)
        else:
            self.optim.add_param_group(mine)

    def _sync_hyperparameters(self):
        for g, lg in zip(self.param_groups, self.optim.param_groups):
            for k, v in g.items():
                if k not in ("params", "param_names"):
                    lg[k] = v

    # ------------------------------------------------------------------ stepping
    def step(self, closure=None):
        """Step this rank's shard, then broadcast every shard's updated parameters from its owner."""
        self._sync_hyperparameters()
        loss = self.optim.step(closure)
        with no_grad():
            for r in range(self._world):
                owned = [p for g in self.param_groups for p in g["params"] if self._owner[id(p)] == r]
                by_kind = {}
                for p in owned:  # one broadcast per owner and dtype/device: a flat buffer each
                    by_kind.setdefault((p.dtype, str(p.device)), []).append(p)
                for ps in by_kind.values():
                    flat = Tensor._make(_flatten(ps))
                    c10d.broadcast(flat, group=self._group, group_src=r)
                    if r != self._rank:
                        _unflatten(flat._data, ps)
        self._opt_called = True  # a scheduler stepped after this one does not warn about the order
        return loss

    # ------------------------------------------------------------------ state dicts
    def _global_ids(self):
        ids, k = {}, 0
        for g in self.param_groups:
            for p in g["params"]:
                ids.setdefault(id(p), k)
                k += 1
        return ids

    def consolidate_state_dict(self, to=0):
        """Gather every shard's optimizer state on group rank ``to`` (a collective: call it on every rank)."""
        ids = self._global_ids()
        mine = {}
        for p, st in self.optim.state.items():
            mine[ids[id(p)]] = _to_host(st)
        comm = self._pg.mpi.comm if self._world > 1 else None
        shards = comm.gather(mine, root=to) if comm is not None else [mine]
        if self._rank != to:
            self._consolidated = None
            return
        state = {}
        for shard in shards:
            for k, st in shard.items():
                state[k] = _from_host(st)
        hp = self.optim.param_groups
        groups = []
        for gi, g in enumerate(self.param_groups):
            packed = {k: v for k, v in hp[gi].items() if k != "params"} if gi < len(hp) else {}
            packed.update({k: copy.deepcopy(v) for k, v in g.items() if k != "params"})
            packed["params"] = [ids[id(p)] for p in g["params"]]
            groups.append(packed)
        self._consolidated = {"state": dict(sorted(state.items())), "param_groups": groups}

    def state_dict(self):
        """The whole optimizer's state in ``optimizer_class``'s format, on the rank ``consolidate_state_dict``
        gathered it to; a RuntimeError elsewhere (as PyTorch)."""
        if self._consolidated is None:
            raise RuntimeError(
                "Optimizer state has not been consolidated on this rank. Please call `consolidate_state_dict(to)` "
                "on all ranks beforehand if you meant to save the global state."
            )
        return self._consolidated

    def load_state_dict(self, state_dict):
        """Load a full state dict (from ``state_dict()`` here, on any world size, or from ``optimizer_class``):
        every rank keeps the states of the parameters it owns."""
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError("optimizer state_dict must be a dict with 'state' and 'param_groups' entries")
        saved = state_dict["param_groups"]
        if len(saved) != len(self.param_groups) or any(
            len(s["params"]) != len(g["params"]) for s, g in zip(saved, self.param_groups)
        ):
            raise ValueError(
                "loaded state dict's parameter groups ("
                + ", ".join(str(len(s["params"])) for s in saved)
                + " parameters) do not match this optimizer's ("
                + ", ".join(str(len(g["params"])) for g in self.param_groups)
                + ")"
            )
        saved_state = {int(k) if isinstance(k, str) and k.isdigit() else k: v for k, v in state_dict["state"].items()}
        local_state, local_groups, k = {}, [], 0
        for s, g in zip(saved, self.param_groups):
            ids = []
            for sid, p in zip(s["params"], g["params"]):
                if self._owner[id(p)] == self._rank:
                    sid = int(sid) if isinstance(sid, str) and sid.isdigit() else sid
                    if sid in saved_state:
                        local_state[k] = saved_state[sid]
                    ids.append(k)
                    k += 1
            local_groups.append({**{n: v for n, v in s.items() if n not in ("params", "param_names")}, "params": ids})
            for n, v in s.items():
                if n not in ("params", "param_names"):
                    g[n] = tuple(v) if n == "betas" and isinstance(v, list) else v
        self.optim.load_state_dict({"state": local_state, "param_groups": local_groups})

    def __repr__(self):
        return f"ZeroRedundancyOptimizer(rank {self._rank} of {self._world}, {self.optim!r})"


def _flatten(ps):
    from ..._backend import xp_of

    xp = xp_of(ps[0]._data)
    return xp.concatenate([p._data.reshape(-1) for p in ps])


def _unflatten(flat, ps):
    off = 0
    for p in ps:
        n = p.numel()
        p._data[...] = flat[off : off + n].reshape(p.shape)
        p._version[0] += 1
        off += n
