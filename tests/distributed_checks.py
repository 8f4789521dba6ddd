"""Checks run inside one 2-rank MPI job (tests/test_distributed_ddp.py launches it): DDP, ZeRO-1, AMP, collectives.

Each check runs on every rank against a single-process reference computed on the same rank (float64 NumPy or
conch on the concatenated batch) and prints ``PASS <name> <rank>``; a failure raises, which aborts the job
(``python -m mpi4py``) with that rank's traceback, so the pytest side reports the checks that did not pass.
``python -m conch.distributed.run --nproc-per-node 2 tests/distributed_checks.py [names...]`` runs them by hand.
"""

import os
import sys
import tempfile

import numpy as np
from numpy.testing import assert_allclose, assert_array_equal

import conch
import conch.distributed as dist
import conch.nn as nn
from conch.distributed.optim import ZeroRedundancyOptimizer
from conch.nn.parallel import DistributedDataParallel as DDP

CHECKS = {}


def check(fn):
    CHECKS[fn.__name__] = fn
    return fn


def net(seed=None, dtype=conch.float64):
    """Odd sizes, three layers: with a tiny bucket cap, several buckets."""
    if seed is not None:
        conch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 9), nn.GELU(), nn.Linear(9, 3)).to(dtype=dtype)


def data(n=12, dtype=conch.float64, seed=123):
    rng = np.random.default_rng(seed)
    x = conch.tensor(rng.standard_normal((n, 5)), dtype=dtype)
    y = conch.tensor(rng.standard_normal((n, 3)), dtype=dtype)
    return x, y


def shard(n, rank, w):
    """Rank r's contiguous block of a batch of n (the concatenated batch is then the full one, in order)."""
    k = n // w
    return slice(rank * k, (rank + 1) * k)


def replica_pair(rank, **kw):
    """A DDP model (rank-dependent initial weights: DDP must broadcast rank 0's) and a plain copy of it."""
    model = DDP(net(seed=rank), **kw)
    ref = net()
    ref.load_state_dict(model.module.state_dict())
    return model, ref


def same_grads(model, ref, rtol=1e-12, atol=1e-14):
    for (n, p), q in zip(model.module.named_parameters(), ref.parameters()):
        assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=rtol, atol=atol, err_msg=n)


@check
def ddp_gradients_equal_full_batch(rank, w):
    # cap 104 bytes: the float64 weights (>= 104 bytes) get solo buckets, the biases two regular ones
    model, ref = replica_pair(rank, bucket_cap_mb=0.0001)
    regular = [b for b in model._buckets if not b.solo]
    solo = [model._params[b.params[0]] for b in model._buckets if b.solo]
    assert len(regular) >= 2 and len(solo) == 3, [(b.params, b.solo) for b in model._buckets]
    # a gradient that is not a contiguous array of its own (here F-ordered) is reduced in a copy instead
    model.module[2].weight.register_hook(lambda g: g.t().contiguous().t())
    # the regular buckets start during backward (overlap), the solo ones in the end-of-backward callback,
    # in each parameter's own .grad (the same memory before and after) unless it is not contiguous
    launched_before_end, before = [], {}
    inner = model._finalize

    def spy():
        launched_before_end.append(model._next_bucket)
        before.update({id(p): p.grad._data for p in solo})
        inner()

    model._finalize = spy
    x, y = data()
    r = conch.tensor(np.random.default_rng(5).standard_normal((12, 3)))  # random upstream gradient
    s = shard(12, rank, w)
    ((model(x[s]) - y[s]) * r[s]).pow(2).sum().mul(1 / 12).backward()
    ((ref(x) - y) * r).pow(2).sum().mul(1 / 12 / w).backward()  # the local loss sums 1/w of the batch
    same_grads(model, ref)
    assert launched_before_end == [len(regular)], launched_before_end
    in_place = [p.grad._data is before[id(p)] for p in solo]
    assert in_place == [p is not model.module[2].weight for p in solo], in_place


@check
def ddp_k_steps_equal_single_process(rank, w):
    for overlap, as_view in ((True, False), (False, False), (True, True)):
        model, ref = replica_pair(rank, bucket_cap_mb=0.0003, gradient_as_bucket_view=as_view)
        model.overlap = overlap
        opt = conch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        ref_opt = conch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
        loss_fn = nn.MSELoss()
        for step in range(4):
            x, y = data(seed=step)
            s = shard(12, rank, w)
            opt.zero_grad()
            loss_fn(model(x[s]), y[s]).backward()
            opt.step()
            ref_opt.zero_grad()
            loss_fn(ref(x), y).backward()
            ref_opt.step()
        for p, q in zip(model.module.parameters(), ref.parameters()):
            assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-11, atol=1e-13)
        # the replicas stay identical to one another
        flat = conch.tensor(np.concatenate([p.detach().numpy().ravel() for p in model.module.parameters()]))
        other = flat.clone()
        dist.broadcast(other, src=0)
        assert_array_equal(flat.numpy(), other.numpy())


@check
def ddp_no_sync_accumulation_equals_one_big_batch(rank, w):
    model, ref = replica_pair(rank, bucket_cap_mb=0.0002)
    loss_fn = nn.MSELoss(reduction="sum")
    x, y = data(n=16)
    mine = np.arange(16)[shard(16, rank, w)]
    halves = [mine[:3], mine[3:]]  # unequal micro-batches
    with model.no_sync():
        loss_fn(model(x[halves[0]]), y[halves[0]]).backward()
    local = model.module[0].weight.grad.numpy().copy()
    first = conch.tensor(local)
    dist.broadcast(first, src=0)
    assert rank == 0 or not np.array_equal(local, first.numpy()), "no_sync must not reduce"
    loss_fn(model(x[halves[1]]), y[halves[1]]).backward()
    loss_fn(ref(x), y).backward()
    for q in ref.parameters():
        q.grad = q.grad / w  # DDP averages the ranks' sums
    same_grads(model, ref)


@check
def ddp_unused_parameters(rank, w):
    for cap in (None, 0.00001):  # one bucket; every parameter a solo bucket (reduced after backward, in place)
        _unused_parameters(rank, w, cap)


def _unused_parameters(rank, w, cap):
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x, use_b):
            h = self.a(x).tanh()
            return self.c(self.b(h) if use_b else h)

    x = conch.randn(3, 4, dtype=conch.float64)
    conch.manual_seed(0)
    model = DDP(Branchy().double(), bucket_cap_mb=cap)
    model(x, False).sum().backward()  # b gets no gradient and find_unused_parameters is off
    try:
        model(x, False)
        raise AssertionError("no error for a parameter without gradient")
    except RuntimeError as e:
        msg = str(e)
        assert "Expected to have finished reduction in the prior iteration" in msg, msg
        assert "find_unused_parameters=True" in msg and "b.weight" in msg, msg

    # b unused on every rank: its grad stays None everywhere; the others are averaged
    conch.manual_seed(0)
    model = DDP(Branchy().double(), find_unused_parameters=True, bucket_cap_mb=cap)
    ref = Branchy().double()
    ref.load_state_dict(model.module.state_dict())
    xs = conch.randn(2 * w, 4, dtype=conch.float64)
    s = shard(2 * w, rank, w)
    model(xs[s], False).sum().backward()
    ref(xs, False).sum().mul(1 / w).backward()
    assert model.module.b.weight.grad is None and model.module.b.bias.grad is None
    for n in ("a", "c"):
        assert_allclose(getattr(model.module, n).weight.grad.numpy(), getattr(ref, n).weight.grad.numpy(), rtol=1e-12)
    # b used on rank 0 only: its gradient is rank 0's divided by the world size (zeros from the others)
    model.zero_grad()
    ref.zero_grad()
    model(xs[s], rank == 0).sum().backward()
    ref(xs[shard(2 * w, 0, w)], True).sum().mul(1 / w).backward()
    assert_allclose(model.module.b.weight.grad.numpy(), ref.b.weight.grad.numpy(), rtol=1e-12, atol=1e-15)
    # a second iteration works (no leftover state)
    model.zero_grad()
    model(xs[s], True).sum().backward()
    assert model.module.b.weight.grad is not None


class _HalfUsed(nn.Module):
    """Two layers, ``b`` never used in forward (an unused parameter on every rank)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return self.a(x).tanh()


@check
def ddp_static_graph(rank, w):
    """static_graph: the unused parameters as find_unused_parameters finds them, the graph walked only once."""
    from conch.autograd import engine

    walks = []
    walk = engine.walk_graph

    def counting(roots, with_leaves=False):
        walks.append(with_leaves)  # DDP's walk asks for the leaves; the engine's own does not
        return walk(roots, with_leaves)

    for cap in (None, 0.00001):  # one bucket; every parameter alone
        conch.manual_seed(0)
        model = DDP(_HalfUsed().double(), static_graph=True, bucket_cap_mb=cap)
        ref = _HalfUsed().double()
        ref.load_state_dict(model.module.state_dict())
        engine.walk_graph, walks[:] = counting, []
        try:
            for it in range(3):
                xs = conch.tensor(np.random.default_rng(it).standard_normal((2 * w, 4)))
                model.zero_grad()
                ref.zero_grad()
                model(xs[shard(2 * w, rank, w)]).sum().backward()
                ref(xs).sum().mul(1 / w).backward()
                assert model.module.b.weight.grad is None and model.module.b.bias.grad is None
                for n in ("weight", "bias"):
                    assert_allclose(getattr(model.module.a, n).grad.numpy(), getattr(ref.a, n).grad.numpy(), rtol=1e-12)
        finally:
            engine.walk_graph = walk
        assert walks.count(True) == 1, walks  # the first iteration only


@check
def ddp_join_uneven_inputs(rank, w):
    """join(): rank r trains on 2 + 2r batches; the others shadow its all-reduces, then all take its weights."""
    loss_fn = nn.MSELoss(reduction="sum")
    batches = [data(n=4, seed=100 + k) for k in range(2 + 2 * (w - 1))]
    counts = [2 + 2 * r for r in range(w)]
    for divide, kw in ((True, {}), (False, {"bucket_cap_mb": 0.0001, "find_unused_parameters": True})):
        model, ref = replica_pair(rank, **kw)
        opt = conch.optim.SGD(model.parameters(), lr=0.1)
        ref_opt = conch.optim.SGD(ref.parameters(), lr=0.1)
        with model.join(divide_by_initial_world_size=divide):
            for k in range(counts[rank]):
                x, y = batches[k]
                opt.zero_grad()
                loss_fn(model(x[shard(4, rank, w)]), y[shard(4, rank, w)]).backward()
                opt.step()
        for k in range(max(counts)):  # the reference: the ranks still training at step k, averaged
            x, y = batches[k]
            active = [r for r in range(w) if counts[r] > k]
            ref_opt.zero_grad()
            for r in active:
                loss_fn(ref(x[shard(4, r, w)]), y[shard(4, r, w)]).mul(1 / (w if divide else len(active))).backward()
            ref_opt.step()
        for p, q in zip(model.module.parameters(), ref.parameters()):
            assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-11, atol=1e-13)
    # throw_on_early_termination: every rank raises once one has run out (rank 0 after 1 batch, the others 2)
    model, _ = replica_pair(rank)
    raised = False
    try:
        with model.join(throw_on_early_termination=True):
            for k in range(1 if rank == 0 else 2):
                x, y = batches[k]
                loss_fn(model(x[shard(4, rank, w)]), y[shard(4, rank, w)]).backward()
    except RuntimeError as e:
        raised = "exhausted inputs" in str(e)
    assert raised
    x, y = batches[0]
    loss_fn(model(x[shard(4, rank, w)]), y[shard(4, rank, w)]).backward()  # usable afterwards, without join


def _local_grads(model, x, y, w):
    """Every rank's local gradients (float64 NumPy), computed here from a copy of ``model`` on each shard."""
    out = []
    for r in range(w):
        ref = net()
        ref.load_state_dict(model.module.state_dict())
        s = shard(len(x), r, w)
        ((ref(x[s]) - y[s]) ** 2).sum().backward()
        out.append([q.grad.numpy() for q in ref.parameters()])
    return out


def _compressed_average(grads, dtype, w):
    """What a compress hook gives: each rank's gradient rounded to ``dtype`` and divided there by w, summed in
    float32 (the MPI backend's reduction type for float16/bfloat16), rounded to ``dtype`` once."""
    total = sum((g.astype(dtype) / np.asarray(w, dtype)).astype(dtype).astype(np.float32) for g in grads)
    return total.astype(dtype).astype(np.float64)


@check
def ddp_comm_hooks(rank, w):
    import ml_dtypes

    from conch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from conch.futures import Future

    x, y = data()
    for cap in (None, 0.0001):  # one bucket; solo weights (their .grad is the hook's buffer) and bias buckets
        hooks = {"allreduce": default_hooks.allreduce_hook, "fp16": default_hooks.fp16_compress_hook,
                 "bf16": default_hooks.bf16_compress_hook}  # fmt: skip
        for name, hook in hooks.items():
            model = DDP(net(seed=rank), bucket_cap_mb=cap)
            model.register_comm_hook(None, hook)
            local = _local_grads(model, x, y, w)
            s = shard(12, rank, w)
            ((model(x[s]) - y[s]) ** 2).sum().backward()
            for k, p in enumerate(model.module.parameters()):
                got = p.grad.numpy()
                if name == "allreduce":
                    assert_allclose(got, sum(g[k] for g in local) / w, rtol=1e-12, err_msg=f"{cap} {name}")
                else:
                    dt = np.float16 if name == "fp16" else ml_dtypes.bfloat16
                    want = _compressed_average([g[k] for g in local], dt, w)
                    assert_array_equal(got, want, err_msg=f"{cap} {name} {k}")

        # a hook that communicates nothing: .grad stays local; the bucket's API as PyTorch's
        state = {"calls": 0, "last": []}

        def local_hook(state, bucket):
            state["calls"] += 1
            state["last"].append(bucket.is_last())
            grads, params = bucket.gradients(), bucket.parameters()
            assert [tuple(g.shape) for g in grads] == [tuple(q.shape) for q in params]
            assert bucket.buffer().numel() == sum(q.numel() for q in params) and bucket.buffer().ndim == 1
            fut = Future()
            fut.set_result(bucket.buffer())
            return fut

        model = DDP(net(seed=rank), bucket_cap_mb=cap)
        model.register_comm_hook(state, local_hook)
        local = _local_grads(model, x, y, w)[rank]
        s = shard(12, rank, w)
        ((model(x[s]) - y[s]) ** 2).sum().backward()
        for k, p in enumerate(model.module.parameters()):
            assert_allclose(p.grad.numpy(), local[k], rtol=1e-12)
        assert state["calls"] == len(model._buckets) and state["last"] == [False] * (state["calls"] - 1) + [True]

    for bad, err, msg in ((42, TypeError, "must be callable"), (local_hook, RuntimeError, "only be called once")):
        try:
            model.register_comm_hook(None, bad)
            raise AssertionError("no error")
        except err as e:
            assert msg in str(e), e
    model = DDP(net(seed=rank))
    model.register_comm_hook(None, lambda state, bucket: bucket.buffer())  # not a future
    try:
        model(x).sum().backward()
        raise AssertionError("no error")
    except TypeError as e:
        assert "must return a conch.futures.Future" in str(e), e


@check
def zero1_adamw_equals_adamw_and_resumes_on_other_world_sizes(rank, w):
    hp = dict(lr=0.05, weight_decay=0.1, betas=(0.8, 0.95))
    model, ref = replica_pair(rank, bucket_cap_mb=0.0002)
    opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=conch.optim.AdamW, **hp)
    ref_opt = conch.optim.AdamW(ref.parameters(), **hp)
    assert max(opt._sizes) - min(opt._sizes) <= max(p.numel() for p in ref.parameters())
    loss_fn = nn.MSELoss()

    def train(m, o, steps, first, dist_model, sched=None):
        for step in range(first, first + steps):
            x, y = data(seed=100 + step)
            if dist_model:
                x, y = x[shard(12, rank, w)], y[shard(12, rank, w)]
            o.zero_grad()
            loss_fn(m(x), y).backward()
            o.step()
            if sched is not None:
                sched.step()

    # a scheduler changes the global param_groups' lr: each rank's shard must step with it
    train(model, opt, 3, 0, True, conch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5))
    train(ref, ref_opt, 3, 0, False, conch.optim.lr_scheduler.StepLR(ref_opt, step_size=1, gamma=0.5))
    assert opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"] == hp["lr"] / 8
    for p, q in zip(model.module.parameters(), ref.parameters()):
        assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-12, atol=1e-14)
    # each rank holds the state of its shard only
    n_state = len(opt.optim.state)
    total = conch.tensor([n_state])
    dist.all_reduce(total)
    assert total.item() == len(list(ref.parameters())) and 0 < n_state < total.item(), n_state
    try:
        opt.state_dict()
        raise AssertionError("state_dict before consolidate_state_dict")
    except RuntimeError as e:
        assert "consolidate_state_dict" in str(e)
    opt.consolidate_state_dict(to=0)
    path = os.path.join(tempfile.gettempdir(), f"conch_zero_{os.getppid()}.pt")
    if rank == 0:
        sd = opt.state_dict()
        assert sorted(sd["state"]) == list(range(len(list(ref.parameters()))))
        conch.save({"model": model.module.state_dict(), "opt": sd}, path)
    else:
        try:
            opt.state_dict()
            raise AssertionError("state_dict on a rank that did not consolidate")
        except RuntimeError:
            pass
    dist.barrier()
    ck = conch.load(path)
    dist.barrier()
    if rank == 0:
        os.remove(path)
    train(ref, ref_opt, 3, 3, False)  # the plain AdamW trajectory the resumed runs must follow
    want = [q.detach().numpy().copy() for q in ref.parameters()]
    # resume at world size 2 (a fresh model and optimizer), at world size 1 (a group of this rank alone),
    # and into plain AdamW: each continues on the same trajectory
    solo = [dist.new_group([r]) for r in range(w)][rank]
    for group in (None, solo):
        m = DDP(net(seed=7), process_group=group, bucket_cap_mb=0.0002)
        m.module.load_state_dict(ck["model"])
        o = ZeroRedundancyOptimizer(m.parameters(), conch.optim.AdamW, process_group=group, **hp)
        o.load_state_dict(ck["opt"])
        for step in range(3, 6):
            x, y = data(seed=100 + step)
            if group is None:
                x, y = x[shard(12, rank, w)], y[shard(12, rank, w)]
            o.zero_grad()
            loss_fn(m(x), y).backward()
            o.step()
        for p, q in zip(m.module.parameters(), want):
            assert_allclose(p.detach().numpy(), q, rtol=1e-12, atol=1e-14)
    plain = net()
    plain.load_state_dict(ck["model"])
    po = conch.optim.AdamW(plain.parameters(), **hp)
    po.load_state_dict(ck["opt"])
    train(plain, po, 3, 3, False)
    for p, q in zip(plain.parameters(), want):
        assert_allclose(p.detach().numpy(), q, rtol=1e-12, atol=1e-14)


@check
def amp_scaler_checkpointing_fused_optimizer_under_ddp(rank, w):
    from conch.utils.checkpoint import checkpoint

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.mid, self.out = (
                nn.Linear(8, 16),
                nn.Sequential(nn.Linear(16, 16), nn.GELU()),
                nn.Linear(16, 4),
            )

        def forward(self, x):
            h = self.inp(x).relu()
            h = checkpoint(self.mid, h, use_reentrant=False)
            return self.out(h)

    conch.manual_seed(rank)
    model = DDP(Net(), bucket_cap_mb=0.001)
    ref = Net()
    ref.load_state_dict(model.module.state_dict())
    opts = [conch.optim.AdamW(m.parameters(), lr=1e-2, fused=True) for m in (model, ref)]
    scalers = [conch.amp.GradScaler(init_scale=2.0**10) for _ in range(2)]
    rng = np.random.default_rng(9)
    for _ in range(3):
        x = conch.tensor(rng.standard_normal((8, 8)), dtype=conch.float32)
        y = conch.tensor(rng.integers(0, 4, 8))
        for m, o, sc, xs, ys in ((model, opts[0], scalers[0], x[shard(8, rank, w)], y[shard(8, rank, w)]),
                                 (ref, opts[1], scalers[1], x, y)):  # fmt: skip
            o.zero_grad()
            with conch.amp.autocast(dtype=conch.float16):
                loss = nn.functional.cross_entropy(m(xs), ys)
            sc.scale(loss).backward()
            assert sc.step(o)
            sc.update()
    for p, q in zip(model.module.parameters(), ref.parameters()):
        assert_allclose(
            p.detach().numpy(), q.detach().numpy(), rtol=2e-3, atol=2e-3
        )  # float16 forward on half vs full batches
    # a non-finite gradient on one rank only: every rank skips the step and backs off together
    lin = nn.Linear(2, 2)
    opt = conch.optim.SGD(lin.parameters(), lr=1.0)
    scaler = conch.amp.GradScaler(init_scale=4.0)
    before = lin.weight.detach().numpy().copy()
    for p in lin.parameters():
        p.grad = conch.full(p.shape, float("inf") if rank == 1 else 1.0)
    scaler.unscale_(opt)
    assert scaler.step(opt) is False
    scaler.update()
    assert scaler.get_scale() == 2.0
    assert_array_equal(lin.weight.detach().numpy(), before)


@check
def collectives_reduce_gather_scatter_all_to_all_p2p_groups(rank, w):
    t = conch.tensor([rank + 1.0, 2.0 * rank])
    dist.reduce(t, dst=1, op=dist.ReduceOp.SUM)
    assert t.tolist() == ([3.0, 2.0] if rank == 1 else [1.0, 0.0])
    gl = [conch.zeros(2, dtype=conch.bfloat16) for _ in range(w)] if rank == 0 else None
    dist.gather(conch.tensor([rank, -rank], dtype=conch.bfloat16), gl, dst=0)
    if rank == 0:
        assert [g.tolist() for g in gl] == [[0, 0], [1, -1]]
    o = conch.zeros(2, 3)
    dist.scatter(o, [conch.full((2, 3), 10.0 * r) for r in range(w)] if rank == 1 else None, src=1)
    assert (o.numpy() == 10 * rank).all()
    outs = [conch.zeros(r + 1) for r in range(w)]  # rank j sends j+1 values to everyone
    dist.all_to_all(outs, [conch.full((rank + 1,), float(100 * rank + j)) for j in range(w)])
    assert [x.tolist() for x in outs] == [[100.0 * r + rank] * (r + 1) for r in range(w)]
    o = conch.zeros(2 * w, dtype=conch.int64)
    work = dist.all_to_all_single(o, conch.arange(2 * w) + 10 * rank, async_op=True)
    work.wait()
    assert o.tolist() == [10 * r + 2 * rank + k for r in range(w) for k in range(2)]
    sizes_in = [1, 3] if rank == 0 else [2, 2]  # uneven splits
    sizes_out = [1, 2] if rank == 0 else [3, 2]
    o = conch.zeros(sum(sizes_out))
    dist.all_to_all_single(o, conch.arange(4.0) + 10 * rank, sizes_out, sizes_in)
    assert o.tolist() == ([0.0, 10.0, 11.0] if rank == 0 else [1.0, 2.0, 3.0, 12.0, 13.0])
    if rank == 0:
        works = [dist.isend(conch.arange(3.0), 1, tag=7), dist.isend(conch.ones(2), 1, tag=8)]
        for wk in works:
            wk.wait()
    else:
        a, b = conch.zeros(3), conch.zeros(2)
        wb, wa = dist.irecv(b, 0, tag=8), dist.irecv(a, tag=7)
        wa.wait()
        wb.wait()
        assert a.tolist() == [0.0, 1.0, 2.0] and b.tolist() == [1.0, 1.0]
    # a size mismatch in point to point names both sizes
    if rank == 0:
        dist.send(conch.zeros(5), dst=1)
    else:
        try:
            dist.recv(conch.zeros(3), src=0)
            raise AssertionError("no error")
        except RuntimeError as e:
            assert "20 bytes" in str(e) and "12 bytes" in str(e), e
    # pickled objects
    objs = [{"lr": 0.1 * (rank + 1)}, "x" * rank]
    dist.broadcast_object_list(objs, src=1)
    assert objs == [{"lr": 0.2}, "x"]
    slots = [None] * w
    dist.all_gather_object(slots, (rank, [rank] * rank))
    assert slots == [(r, [r] * r) for r in range(w)]
    got = [None] * w if rank == 0 else None
    dist.gather_object(f"r{rank}", got, dst=0)
    assert rank != 0 or got == ["r0", "r1"]
    # subgroups: the world again, and rank 1 alone
    everyone, solo = dist.new_group(), dist.new_group([1])
    t = conch.tensor([float(rank)])
    dist.all_reduce(t, group=everyone)
    assert t.item() == sum(range(w)) and dist.get_process_group_ranks(everyone) == list(range(w))
    if rank == 1:
        assert dist.get_rank(solo) == 0 and dist.get_world_size(solo) == 1 and dist.get_global_rank(solo, 0) == 1
        t = conch.tensor([5.0])
        dist.all_reduce(t, group=solo)
        assert t.item() == 5.0
    else:
        assert solo is dist.GroupMember.NON_GROUP_MEMBER and dist.get_rank(solo) == -1
        assert dist.all_reduce(conch.ones(1), group=solo) is None  # not a member: nothing happens
    # a list on a rank that only sends is refused before any communication
    if rank == 0:
        for bad in (lambda: dist.gather(conch.ones(1), [conch.ones(1)] * w, dst=1),
                    lambda: dist.scatter(conch.ones(1), [conch.ones(1)] * w, src=1)):  # fmt: skip
            try:
                bad()
                raise AssertionError("no error")
            except ValueError as e:
                assert "must NOT be specified" in str(e)
    # mismatched shapes or dtypes across ranks raise on every rank, naming each rank's (no hang)
    mine = conch.zeros(2, dtype=conch.float32 if rank else conch.float64)
    for call in (lambda: dist.reduce(conch.zeros(2 + rank), dst=0),
                 lambda: dist.scatter(mine, [mine] * w if rank == 1 else None, src=1)):  # fmt: skip
        try:
            call()
            raise AssertionError("no error")
        except RuntimeError as e:
            assert "rank 0:" in str(e) and "rank 1:" in str(e), e
    # an all-to-all size mismatch raises on every rank (no hang)
    try:
        dist.all_to_all([conch.zeros(1 + rank) for _ in range(w)], [conch.zeros(1) for _ in range(w)])
        raise AssertionError("no error")
    except RuntimeError as e:
        assert "all_to_all" in str(e) and "bytes" in str(e)
    dist.barrier()


def main(names, checks=CHECKS, backend=None):
    """Run ``names`` (every check when empty) of ``checks`` in order, a barrier and a PASS line after each."""
    dist.init_process_group(backend)
    rank, w = dist.get_rank(), dist.get_world_size()
    for name in names or list(checks):
        checks[name](rank, w)
        dist.barrier()
        print(f"PASS {name} {rank}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
