"""Checks of conch's NCCL backend run inside one 2-rank MPI job on simulated GPUs (test_distributed_nccl_sim.py).

The job runs with ``CONCH_SIMULATE_GPU=1 CONCH_SIMULATE_GPU_COUNT=2``: rank r uses the simulated cuda:r, and
``init_process_group("nccl")`` talks to ``cupy.cuda.nccl``, which the simulator implements over mpi4py
(kernels/sim/_nccl.py). Each check compares with float64 NumPy references computed on every rank, asserts
through the simulator's call counts that NCCL (not the MPI backend) moved the data, and prints
``PASS <name> <rank>``; a failure aborts the job with that rank's traceback.
"""

import os
import sys

import numpy as np
from distributed_checks import main  # the same loop: a PASS line per check and rank
from numpy.testing import assert_allclose, assert_array_equal

import conch
import conch.distributed as dist
import conch.nn as nn
from conch.distributed.algorithms.ddp_comm_hooks import default_hooks
from conch.nn.parallel import DistributedDataParallel as DDP

CHECKS = {}
DTYPES = {"float64": conch.float64, "float32": conch.float32, "float16": conch.float16, "bfloat16": conch.bfloat16}


def check(fn):
    CHECKS[fn.__name__] = fn
    return fn


def nccl():
    from cupy.cuda import nccl as mod

    return mod


class calls:  # noqa: N801
    """``with calls() as c: ...`` then ``c["allReduce"]``: the simulated NCCL's calls inside the block."""

    def __enter__(self):
        self.before = nccl().call_counts()
        return self

    def __exit__(self, *exc):
        self.after = nccl().call_counts()

    def __getitem__(self, k):
        return self.after.get(k, 0) - self.before.get(k, 0)


def dev(rank):
    return f"cuda:{rank}"


def host(t):
    return t.detach().cpu().numpy().astype(np.float64)


def vals(w, shape=(3, 5), seed=0):
    return [np.random.default_rng(seed + r).uniform(-2, 2, shape) for r in range(w)]


@check
def backend_is_nccl_on_the_ranks_device(rank, w):
    be = dist.c10d._WORLD.nccl
    assert dist.get_backend() == "nccl" and be is not None and be.device == rank
    assert be.comm.rank_id() == rank and be.comm.size() == w and be.comm.device_id() == rank
    try:  # a CPU tensor is refused by the nccl backend
        dist.all_reduce(conch.ones(2))
        raise AssertionError("no error")
    except RuntimeError as e:
        assert "CUDA tensors" in str(e), e


@check
def all_reduce_each_op_and_dtype(rank, w):
    v = vals(w)
    red = {"SUM": np.sum, "AVG": np.mean, "MAX": np.max, "MIN": np.min, "PRODUCT": np.prod}
    for name, dt in DTYPES.items():
        held = [conch.tensor(x, dtype=dt).numpy().astype(np.float64) for x in v]  # what each rank holds
        for op, f in red.items():
            t = conch.tensor(v[rank], dtype=dt, device=dev(rank))
            with calls() as c:
                assert dist.all_reduce(t, op=getattr(dist.ReduceOp, op)) is None
            want = conch.tensor(f(np.stack(held), axis=0), dtype=dt).numpy()  # float64 result rounded once
            assert c["allReduce"] == 1 and t.device == dev(rank) and t.dtype == dt
            assert_array_equal(t.cpu().numpy(), want, err_msg=f"{name} {op}")
    # async work handle, integers, a non-contiguous tensor refused with a clear message
    t = conch.tensor(v[rank], device=dev(rank))
    work = dist.all_reduce(t, op=dist.ReduceOp.MAX, async_op=True)
    assert work.wait() and work.is_completed() and work.result()[0] is t
    assert_array_equal(host(t), np.maximum(*v))
    i = conch.tensor([rank, 10 * rank + 1], device=dev(rank))
    dist.all_reduce(i)
    assert i.tolist() == [1, 12]
    try:
        dist.all_reduce(conch.zeros(4, 4, device=dev(rank))[:, ::2])
        raise AssertionError("no error")
    except RuntimeError as e:
        assert "contiguous" in str(e), e


@check
def broadcast_gather_scatter_reduce(rank, w):
    for name, dt in DTYPES.items():
        v = vals(w, (4, 3), seed=7)
        held = [conch.tensor(x, dtype=dt).numpy() for x in v]
        t = conch.tensor(v[rank], dtype=dt, device=dev(rank))
        with calls() as c:
            work = dist.broadcast(t, src=1, async_op=True)
            work.wait()
        assert c["bcast"] == 1 and name and (t.cpu().numpy() == held[1]).all()
        t = conch.tensor(v[rank], dtype=dt, device=dev(rank))
        with calls() as c:
            dist.reduce(t, dst=1, op=dist.ReduceOp.SUM)
        want = conch.tensor(np.sum([h.astype(np.float64) for h in held], 0), dtype=dt).numpy()
        assert c["reduce"] == 1
        assert_array_equal(t.cpu().numpy(), want if rank == 1 else held[rank], err_msg=name)
        outs = [conch.zeros(4, 3, dtype=dt, device=dev(rank)) for _ in range(w)]
        with calls() as c:
            dist.all_gather(outs, conch.tensor(v[rank], dtype=dt, device=dev(rank)))
        assert c["allGather"] == 1 and all((o.cpu().numpy() == held[r]).all() for r, o in enumerate(outs))
        gl = [conch.zeros(4, 3, dtype=dt, device=dev(rank)) for _ in range(w)] if rank == 0 else None
        with calls() as c:
            dist.gather(conch.tensor(v[rank], dtype=dt, device=dev(rank)), gl, dst=0)
        assert c["groupEnd"] == 1 and c["send"] == (rank != 0) and c["recv"] == (w - 1 if rank == 0 else 0)
        assert rank != 0 or all((g.cpu().numpy() == held[r]).all() for r, g in enumerate(gl))
        o = conch.zeros(2, 3, dtype=dt, device=dev(rank))
        src = [conch.full((2, 3), 10.0 * r + 0.5, dtype=dt, device=dev(rank)) for r in range(w)]
        dist.scatter(o, src if rank == 1 else None, src=1)
        assert_array_equal(host(o), np.full((2, 3), 10.0 * rank + 0.5))


@check
def into_tensor_reduce_scatter_all_to_all(rank, w):
    for name, dt in DTYPES.items():
        x = conch.tensor(np.arange(6.0).reshape(2, 3) + 100 * rank, dtype=dt, device=dev(rank))
        cat = conch.zeros(2 * w, 3, dtype=dt, device=dev(rank))
        stack = conch.zeros(w, 2, 3, dtype=dt, device=dev(rank))
        dist.all_gather_into_tensor(cat, x)
        work = dist.all_gather_into_tensor(stack, x, async_op=True)
        work.wait()
        want = np.stack([np.arange(6.0).reshape(2, 3) + 100 * r for r in range(w)])
        assert_array_equal(host(cat), conch.tensor(want.reshape(2 * w, 3), dtype=dt).numpy().astype(float), name)
        assert_array_equal(host(stack), conch.tensor(want, dtype=dt).numpy().astype(float), name)
        v = vals(w, (2 * w, 3), seed=11)
        held = [conch.tensor(a, dtype=dt).numpy().astype(np.float64) for a in v]
        for op, f in (("SUM", np.sum), ("AVG", np.mean), ("MAX", np.max)):
            out = conch.zeros(2, 3, dtype=dt, device=dev(rank))
            inp = conch.tensor(v[rank], dtype=dt, device=dev(rank))
            with calls() as c:
                dist.reduce_scatter_tensor(out, inp, getattr(dist.ReduceOp, op))
            want = conch.tensor(f(np.stack(held), 0)[2 * rank : 2 * rank + 2], dtype=dt).numpy()
            assert c["reduceScatter"] == 1
            assert_array_equal(out.cpu().numpy(), want, err_msg=f"{name} {op}")
    out = conch.zeros(3, 2 * w, device=dev(rank)).t()  # a non-contiguous output: gathered in a copy
    dist.all_gather_into_tensor(out, conch.full((2, 3), float(rank), device=dev(rank)))
    assert out.tolist() == [[float(r)] * 3 for r in range(w) for _ in range(2)]
    outs = [conch.zeros(r + 1, device=dev(rank)) for r in range(w)]  # rank j sends j+1 values to everyone
    with calls() as c:
        dist.all_to_all(outs, [conch.full((rank + 1,), float(100 * rank + j), device=dev(rank)) for j in range(w)])
    assert c["groupEnd"] == 1 and c["send"] == w - 1 and c["recv"] == w - 1
    assert [x.tolist() for x in outs] == [[100.0 * r + rank] * (r + 1) for r in range(w)]
    o = conch.zeros(2 * w, dtype=conch.int64, device=dev(rank))
    dist.all_to_all_single(o, conch.arange(2 * w, device=dev(rank)) + 10 * rank)
    assert o.tolist() == [10 * r + 2 * rank + k for r in range(w) for k in range(2)]
    # a size mismatch raises on every rank (no rank left waiting in NCCL)
    try:
        dist.all_to_all([conch.zeros(1 + rank, device=dev(rank)) for _ in range(w)],
                        [conch.zeros(1, device=dev(rank)) for _ in range(w)])  # fmt: skip
        raise AssertionError("no error")
    except RuntimeError as e:
        assert "all_to_all" in str(e) and "bytes" in str(e), e


@check
def point_to_point_and_barrier(rank, w):
    for name, dt in DTYPES.items():
        if rank == 0:
            with calls() as c:
                dist.send(conch.tensor([1.5, -2.0, 3.25], dtype=dt, device=dev(rank)), dst=1)
                works = [dist.isend(conch.arange(3.0, device=dev(rank)).to(dt), 1, tag=7),
                         dist.isend(conch.ones(2, dtype=dt, device=dev(rank)), 1, tag=8)]  # fmt: skip
                for wk in works:
                    wk.wait()
            assert c["send"] == 3, name
        else:
            a = conch.zeros(3, dtype=dt, device=dev(rank))
            assert dist.recv(a, src=0) == 0 and a.tolist() == [1.5, -2.0, 3.25]
            b, c_ = conch.zeros(3, dtype=dt, device=dev(rank)), conch.zeros(2, dtype=dt, device=dev(rank))
            wb, wc = dist.irecv(b, 0, tag=7), dist.irecv(c_, 0, tag=8)
            wb.wait()
            wc.wait()
            assert b.tolist() == [0.0, 1.0, 2.0] and c_.tolist() == [1.0, 1.0], name
    # a shape mismatch in point to point is named, and the NCCL transfer is not left half done
    if rank == 0:
        dist.send(conch.zeros(5, device=dev(rank)), dst=1)
    else:
        try:
            dist.recv(conch.zeros(3, device=dev(rank)), src=0)
            raise AssertionError("no error")
        except RuntimeError as e:
            assert "(5,)" in str(e) and "(3,)" in str(e), e
    with calls() as c:
        dist.barrier()
        work = dist.barrier(async_op=True)
        work.wait()
    assert c["allReduce"] == 0


@check
def ddp_gradients_equal_single_process(rank, w):
    def net(seed):
        conch.manual_seed(seed)
        return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).to(dtype=conch.float64)

    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((8, 5)), rng.standard_normal((8, 3))
    for hook in (None, default_hooks.allreduce_hook, default_hooks.fp16_compress_hook,
                 default_hooks.bf16_compress_hook):  # fmt: skip
        model = DDP(net(seed=rank).to(dev(rank)), bucket_cap_mb=0.0001)  # rank 0's weights are broadcast
        if hook is not None:
            model.register_comm_hook(None, hook)
        ref = net(seed=0)
        ref.load_state_dict({k: v.cpu() for k, v in model.module.state_dict().items()})
        k = len(x) // w
        xs = conch.tensor(x[rank * k : (rank + 1) * k], device=dev(rank))
        ys = conch.tensor(y[rank * k : (rank + 1) * k], device=dev(rank))
        with calls() as c:
            nn.functional.mse_loss(model(xs), ys).backward()
        assert c["allReduce"] >= 2, c.after  # several buckets, each one NCCL all-reduce
        # the full-batch mean is the average of the shards' means (equal shard sizes)
        nn.functional.mse_loss(ref(conch.tensor(x)), conch.tensor(y)).backward()
        tol = 1e-12 if hook in (None, default_hooks.allreduce_hook) else 1e-2
        for (n, p), q in zip(model.module.named_parameters(), ref.parameters()):
            assert p.grad.device == dev(rank), n
            assert_allclose(host(p.grad), q.grad.numpy(), rtol=tol, atol=tol, err_msg=f"{n} {hook}")


@check
def ddp_unused_parameters_and_static_graph(rank, w):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.unused, self.b = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 2)

        def forward(self, x):
            return self.b(self.a(x).tanh())

    rng = np.random.default_rng(9)
    x = rng.standard_normal((6, 4))
    for kw in ({"find_unused_parameters": True}, {"static_graph": True}):
        conch.manual_seed(rank)
        model = DDP(Net().to(dtype=conch.float64).to(dev(rank)), **kw)
        conch.manual_seed(0)
        ref = Net().to(dtype=conch.float64)
        ref.load_state_dict({k: v.cpu() for k, v in model.module.state_dict().items()})
        for _ in range(2):  # static_graph: the second pass reuses what the first found
            for p in [*model.parameters(), *ref.parameters()]:
                p.grad = None
            model(conch.tensor(x[3 * rank : 3 * rank + 3], device=dev(rank))).square().mean().backward()
            ref(conch.tensor(x)).square().mean().backward()
            for (n, p), q in zip(model.module.named_parameters(), ref.parameters()):
                assert (p.grad is None) == n.startswith("unused") and (q.grad is None) == n.startswith("unused"), n
                if p.grad is not None:
                    assert_allclose(host(p.grad), q.grad.numpy(), rtol=1e-12, atol=1e-14, err_msg=f"{n} {kw}")


@check
def ddp_join_and_grad_scaler(rank, w):
    # join(): rank 0 trains 2 batches, rank 1 four; the result is one process's run of the same schedule
    def xs(r, k):
        return np.random.default_rng(10 * r + k).standard_normal((2, 3))

    conch.manual_seed(rank)
    model = DDP(nn.Linear(3, 2).to(dtype=conch.float64).to(dev(rank)), bucket_cap_mb=0.0001)
    conch.manual_seed(0)
    ref = nn.Linear(3, 2).to(dtype=conch.float64)
    ref.load_state_dict({k: v.cpu() for k, v in model.module.state_dict().items()})
    opt, ref_opt = conch.optim.SGD(model.parameters(), lr=0.1), conch.optim.SGD(ref.parameters(), lr=0.1)
    with model.join():
        for k in range(2 + 2 * rank):
            model(conch.tensor(xs(rank, k), device=dev(rank))).square().sum().backward()
            opt.step()
            opt.zero_grad()
    for k in range(4):  # divide_by_initial_world_size: the ranks still training, summed, over 2
        ref_opt.zero_grad()
        loss = sum(ref(conch.tensor(xs(r, k))).square().sum() for r in range(w) if k < 2 + 2 * r)
        (loss / w).backward()
        ref_opt.step()
    for p, q in zip(model.module.parameters(), ref.parameters()):
        assert_allclose(host(p), q.detach().numpy(), rtol=1e-12, atol=1e-14)
    # GradScaler: an inf gradient on rank 1 only makes every rank skip the step and lower the scale
    m = DDP(nn.Linear(3, 2).to(dev(rank)))
    before = [host(p) for p in m.parameters()]
    sopt = conch.optim.AdamW(m.parameters(), lr=0.1)
    scaler = conch.amp.GradScaler("cuda", init_scale=4.0)
    x = conch.full((2, 3), float("inf") if rank == 1 else 1.0, device=dev(rank))
    with calls() as c:
        scaler.scale(m(x).sum()).backward()
        scaler.step(sopt)
        scaler.update()
    assert c["allReduce"] >= 1 and scaler.get_scale() == 2.0
    for p, b in zip(m.parameters(), before):
        assert_array_equal(host(p), b)


@check
def groups_and_zero1(rank, w):
    from conch.distributed.optim import ZeroRedundancyOptimizer

    everyone, solo = dist.new_group(), dist.new_group([1])  # solo: rank 1's own communicator of one
    t = conch.tensor([float(rank)], device=dev(rank))
    dist.all_reduce(t, group=everyone)
    assert t.item() == sum(range(w))
    if rank == 1:
        t = conch.tensor([5.0], device=dev(rank))
        dist.all_reduce(t, group=solo)
        assert t.item() == 5.0 and conch.zeros(1, device=dev(rank)).device == dev(rank)
        assert conch.cuda.current_device() == rank  # a group's NCCL left this rank's device current
    # ZeRO-1 AdamW on the GPUs equals plain AdamW (each rank steps its shard, the shards are broadcast)
    conch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 3)).to(dtype=conch.float64)
    ref = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 3)).to(dtype=conch.float64)
    ref.load_state_dict(model.state_dict())
    model.to(dev(rank))
    opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=conch.optim.AdamW, lr=0.1)
    ref_opt = conch.optim.AdamW(ref.parameters(), lr=0.1)
    x = np.random.default_rng(3).standard_normal((6, 4))
    for _ in range(3):
        for m, o, xx in ((model, opt, conch.tensor(x, device=dev(rank))), (ref, ref_opt, conch.tensor(x))):
            o.zero_grad()
            m(xx).square().mean().backward()
            o.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        assert_allclose(host(p), q.detach().numpy(), rtol=1e-12, atol=1e-14)


@check
def simulated_nccl_is_strict(rank, w):
    from mpi4py import MPI

    mod = nccl()
    uid = MPI.COMM_WORLD.bcast(mod.get_unique_id() if rank == 0 else None, root=0)
    try:  # both ranks on one GPU of one node: NCCL refuses
        from cupy import cuda

        with cuda.Device(0):
            mod.NcclCommunicator(w, uid, rank)
        raise AssertionError("no error")
    except mod.NcclError as e:
        assert "Duplicate GPU" in str(e), e
    for bad, err in ((lambda: mod.NcclCommunicator(w, list(uid), rank), TypeError),
                     (lambda: mod.NcclCommunicator(w, uid, w), mod.NcclError)):  # fmt: skip
        try:
            bad()
            raise AssertionError("no error")
        except err:
            pass
    comm = dist.c10d._WORLD.nccl.comm
    a = conch.zeros(4, device=dev(rank))._data
    for bad, err in ((lambda: comm.allReduce(a.data.ptr, a.data.ptr, a.size, 7, 9, 0), mod.NcclError),
                     (lambda: comm.allReduce(a.data.ptr, a.data.ptr, a.size, 42, 0, 0), mod.NcclError),
                     (lambda: comm.allReduce(a.data.ptr, a.data.ptr, -1, 7, 0, 0), OverflowError),
                     (lambda: comm.bcast(a.data.ptr, a.size, 7, w, 0), mod.NcclError),
                     (lambda: comm.send(a.data.ptr, a.size, 7, 0, None), TypeError)):  # fmt: skip
        try:
            bad()
            raise AssertionError("no error")
        except err:
            pass
    # two ranks each sending to the other first, ungrouped, deadlock on GPU streams: the simulation says so (on
    # a communicator of its own, which is unusable afterwards, as NCCL's after a hang)
    uid = MPI.COMM_WORLD.bcast(mod.get_unique_id() if rank == 0 else None, root=0)
    own = mod.NcclCommunicator(w, uid, rank)
    os.environ["CONCH_SIM_NCCL_TIMEOUT"] = "1"
    try:
        own.send(a.data.ptr, a.size, 7, 1 - rank, 0)
        raise AssertionError("no error")
    except mod.NcclError as e:
        assert "deadlock" in str(e), e
    finally:
        os.environ.pop("CONCH_SIM_NCCL_TIMEOUT")
    # both sends have timed out before either rank's receive below completes the other's send (without this, a
    # rank that reached its send late saw it completed by the early rank's receive: a flake under load)
    MPI.COMM_WORLD.Barrier()
    try:
        own.allReduce(a.data.ptr, a.data.ptr, a.size, 7, 0, 0)
        raise AssertionError("no error")
    except mod.NcclError as e:
        assert "unusable" in str(e), e
    own._comm.Recv(np.empty(a.nbytes, np.uint8), source=1 - rank)  # completes the peer's pending send
    own.destroy()


if __name__ == "__main__":
    main(sys.argv[1:], CHECKS, backend="nccl")
