"""conch.distributed, DistributedDataParallel and DistributedSampler: 2 MPI processes on the CPU, each test one
short ``python -m conch.distributed.run`` job; plus the single-process parts (errors, world size 1, the sampler)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import conch
import conch.distributed as dist
from conch.data.distributed import DistributedSampler
from conch.distributed.run import find_mpiexec

ROOT = Path(__file__).resolve().parents[1]
_HAVE_MPI = dist.is_available() and find_mpiexec() is not None
needs_mpi = pytest.mark.skipif(not _HAVE_MPI, reason="mpi4py or mpiexec missing: pip install 'conch[distributed]'")


def _launch(tmp_path, body, n=2, timeout=90):
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(body))
    cmd = [sys.executable, "-m", "conch.distributed.run", "--nproc-per-node", str(n), str(script)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp_path)


def _ok(r, n=2):
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("OK") == n, r.stdout + r.stderr


@needs_mpi
def test_collectives_values_for_each_op_and_dtype(tmp_path):
    r = _launch(
        tmp_path,
        """
        import numpy as np, conch, conch.distributed as dist
        from numpy.testing import assert_allclose, assert_array_equal
        dist.init_process_group()
        rank, w = dist.get_rank(), dist.get_world_size()
        assert w == 2 and dist.get_local_rank() == rank and dist.is_initialized()
        vals = [np.random.default_rng(r).uniform(-2, 2, (3, 5)) for r in range(w)]
        red = {"SUM": np.sum, "AVG": np.mean, "MAX": np.max, "MIN": np.min, "PRODUCT": np.prod}
        for dt in (conch.float64, conch.float32, conch.bfloat16, conch.float16):
            rounded = [v.astype(dt).astype(np.float64) for v in vals]  # what each rank really holds
            for name, f in red.items():
                t = conch.tensor(vals[rank], dtype=dt)
                v0 = t._version[0]
                assert dist.all_reduce(t, op=getattr(dist.ReduceOp, name)) is None
                want = f(np.stack(rounded), axis=0).astype(dt)  # one rounding, as in float32-then-round
                assert t.dtype == dt and t._version[0] == v0 + 1
                assert_array_equal(t.numpy(), want, err_msg=f"{dt} {name}")
        # async, non-contiguous views, integers and booleans
        t = conch.tensor(vals[rank]); views = t[:, 1::2]
        work = dist.all_reduce(views, op=dist.ReduceOp.MAX, async_op=True); work.wait()
        assert_array_equal(t.numpy()[:, 1::2], np.maximum(*vals)[:, 1::2])
        assert_array_equal(t.numpy()[:, 0], vals[rank][:, 0])
        i = conch.tensor([rank, 10 * rank + 1]); dist.all_reduce(i); assert i.tolist() == [1, 12]
        b = conch.tensor([rank == 0, False]); dist.all_reduce(b); assert b.tolist() == [True, False]
        # broadcast, gathers, reduce_scatter, point to point
        x = conch.full((2, 3), float(rank), dtype=conch.bfloat16)
        dist.broadcast(x, src=1); assert (x.numpy() == 1).all()
        out = [conch.zeros(2) for _ in range(w)]; dist.all_gather(out, conch.tensor([rank, -rank], dtype=conch.float32))
        assert [o.tolist() for o in out] == [[0, 0], [1, -1]]
        for shape in ((2 * w,), (w, 2)):
            o = conch.zeros(*shape, dtype=conch.float64)
            dist.all_gather_into_tensor(o, conch.tensor([rank, rank + 0.5], dtype=conch.float64))
            assert o.reshape(-1).tolist() == [0, 0.5, 1, 1.5]
        for dt in (conch.float64, conch.bfloat16):
            o = conch.zeros(3, dtype=dt)
            dist.reduce_scatter_tensor(o, conch.arange(3.0 * w, dtype=dt) * (rank + 1), op=dist.ReduceOp.AVG)
            assert_array_equal(o.numpy().astype(np.float64), 1.5 * np.arange(3.0 * w)[3 * rank: 3 * rank + 3])
        if rank == 0:
            dist.send(conch.arange(4.0), dst=1)
        else:
            z = conch.zeros(4); assert dist.recv(z) == 0 and z.tolist() == [0, 1, 2, 3]
        # clear errors, raised on every rank (no hang)
        try:
            dist.all_reduce(conch.zeros(2 + rank)); raise AssertionError("no error")
        except RuntimeError as e:
            assert "rank 0: shape (2,)" in str(e) and "rank 1: shape (3,)" in str(e), e
        try:
            dist.all_reduce(conch.zeros(2, dtype=conch.float32 if rank else conch.float64)); raise AssertionError
        except RuntimeError as e:
            assert "dtype" in str(e)
        try:
            dist.all_reduce(conch.tensor([1, 2]), op=dist.ReduceOp.AVG); raise AssertionError
        except ValueError as e:
            assert "floating" in str(e)
        dist.barrier(); dist.destroy_process_group(); assert not dist.is_initialized()
        print("OK")
    """,
    )
    _ok(r)


@needs_mpi
def test_ddp_gradients_equal_full_batch_and_sampler_covers_the_dataset(tmp_path):
    r = _launch(
        tmp_path,
        """
        import numpy as np, conch, conch.distributed as dist, conch.nn as nn
        from numpy.testing import assert_allclose
        from conch.data.distributed import DistributedSampler
        from conch.nn.parallel import DistributedDataParallel as DDP
        dist.init_process_group()
        rank, w = dist.get_rank(), dist.get_world_size()

        def net():
            return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()

        conch.manual_seed(rank)  # different weights on each rank: DDP must broadcast rank 0's
        model = DDP(net(), bucket_cap_mb=0.0002)  # tiny buckets: several of them
        assert len(model._buckets) > 1
        ref = net(); ref.load_state_dict(model.module.state_dict())
        conch.manual_seed(123)
        x, y = conch.randn(8, 5, dtype=conch.float64), conch.randn(8, 3, dtype=conch.float64)
        sampler = DistributedSampler(range(8), shuffle=False)
        mine = list(sampler)
        assert mine == list(range(rank, 8, w))
        loss_fn = nn.MSELoss()
        loss_fn(model(x[mine]), y[mine]).backward()
        loss_fn(ref(x), y).backward()
        for (n, p), q in zip(model.module.named_parameters(), ref.parameters()):
            assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-12, atol=1e-14, err_msg=n)
        # no_sync: local accumulation, then one averaged sync of the sum
        model.zero_grad(); ref.zero_grad()
        half = [mine[:2], mine[2:]]
        with model.no_sync():
            loss_fn(model(x[half[0]]), y[half[0]]).backward()
        local = model.module[0].weight.grad.numpy().copy()
        rank0 = conch.tensor(local); dist.broadcast(rank0, src=0)
        assert rank == 0 or not np.array_equal(local, rank0.numpy()), "no_sync must not reduce"
        loss_fn(model(x[half[1]]), y[half[1]]).backward()
        sel1 = [i for r in range(w) for i in list(range(r, 8, w))[:2]]
        sel2 = [i for r in range(w) for i in list(range(r, 8, w))[2:]]
        loss_fn(ref(x[sel1]), y[sel1]).backward(); loss_fn(ref(x[sel2]), y[sel2]).backward()
        for p, q in zip(model.module.parameters(), ref.parameters()):
            assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-12, atol=1e-14)

        # DistributedSampler: every index exactly once per epoch, new orders each epoch, padding and drop_last
        def gather(s):
            t = conch.tensor(list(s), dtype=conch.int64)
            out = conch.zeros(w * len(s), dtype=conch.int64)
            dist.all_gather_into_tensor(out, t)
            return out.tolist()

        orders = []
        for epoch in range(3):
            s = DistributedSampler(range(10), shuffle=True, seed=7)
            s.set_epoch(epoch)
            got = gather(s)
            assert sorted(got) == list(range(10)) and len(s) == 5
            orders.append(got)
        assert orders[0] != orders[1]
        padded = gather(DistributedSampler(range(11), shuffle=True, seed=1))
        assert len(padded) == 12 and set(padded) == set(range(11))
        dropped = gather(DistributedSampler(range(11), shuffle=True, seed=1, drop_last=True))
        assert len(dropped) == 10 == len(set(dropped))
        print("OK")
    """,
    )
    _ok(r)


@needs_mpi
def test_a_rank_that_raises_ends_the_job(tmp_path):
    # a hang (rank 0 waiting in the barrier forever) ends at the subprocess timeout as TimeoutExpired: the test
    # then fails without asserting a time; a healthy abort takes about 3 s
    r = _launch(
        tmp_path,
        """
        import conch.distributed as dist
        dist.init_process_group()
        if dist.get_rank() == 1:
            raise ValueError("boom on rank 1")
        dist.barrier()  # rank 0 would wait here forever
    """,
        timeout=60,
    )
    assert r.returncode != 0
    assert "ValueError: boom on rank 1" in r.stderr, r.stderr


@needs_mpi
def test_plain_python_is_world_size_one_and_checks_devices(tmp_path):
    script = tmp_path / "single.py"
    script.write_text(
        textwrap.dedent("""
        import os, conch, conch.distributed as dist
        dist.init_process_group("mpi")
        assert (dist.get_rank(), dist.get_world_size(), dist.get_local_rank()) == (0, 1, 0)
        t = conch.tensor([1.0, 2.0]); dist.all_reduce(t, op=dist.ReduceOp.AVG); assert t.tolist() == [1.0, 2.0]
        g = conch.zeros(1, 2); dist.all_gather_into_tensor(g, t); assert g.tolist() == [[1.0, 2.0]]
        try:
            dist.all_reduce(conch.ones(2, device="cuda")); raise AssertionError("no error")
        except RuntimeError as e:
            assert "mpi backend takes CPU tensors" in str(e), e
        print("OK")
    """)
    )
    env = {**os.environ, "CONCH_SIMULATE_GPU": "1"}
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env)
    _ok(r, 1)


def test_collectives_before_init_raise_pytorch_message():
    assert not dist.is_initialized()
    with pytest.raises(ValueError, match="Default process group has not been initialized"):
        dist.all_reduce(conch.ones(2))
    with pytest.raises(ValueError, match="Default process group has not been initialized"):
        dist.get_rank()
    with pytest.raises(ValueError, match="Default process group has not been initialized"):
        conch.nn.parallel.DistributedDataParallel(conch.nn.Linear(2, 2))


def test_launcher_without_mpiexec_says_so(monkeypatch):
    from conch.distributed import run

    monkeypatch.setattr(run, "find_mpiexec", lambda: None)
    with pytest.raises(RuntimeError, match="needs mpiexec"):
        run.command(2, "train.py", [])
    cmd = run.command(2, "pkg.train", ["--lr", "1"], module=True, mpiexec="/x/mpiexec")
    assert cmd[:3] == ["/x/mpiexec", "-n", "2"] and cmd[-4:] == ["-m", "pkg.train", "--lr", "1"]


def test_launcher_gives_each_rank_its_share_of_the_cores(monkeypatch):
    from conch.distributed import run

    monkeypatch.setattr(run.os, "cpu_count", lambda: 8)
    assert run.environment(2, {})["OMP_NUM_THREADS"] == "4"
    assert run.environment(16, {})["OMP_NUM_THREADS"] == "1"
    assert run.environment(2, {"OMP_NUM_THREADS": "3"})["OMP_NUM_THREADS"] == "3"  # the user's choice stays


@pytest.mark.parametrize("n,replicas,drop_last", [(10, 3, False), (10, 3, True), (2, 4, False), (7, 7, True)])
def test_distributed_sampler_partitions_as_pytorch(n, replicas, drop_last):
    shares = [list(DistributedSampler(range(n), replicas, r, shuffle=False, drop_last=drop_last))
              for r in range(replicas)]  # fmt: skip
    per = n // replicas if drop_last else -(-n // replicas)
    assert all(len(s) == per for s in shares)
    flat = [i for k in range(per) for s in shares for i in s[k : k + 1]]
    base = list(range(n)) * (-(-per * replicas // n))
    assert flat == base[: per * replicas]  # padding repeats the first indices, drop_last cuts the tail
    with pytest.raises(ValueError, match="Invalid rank"):
        DistributedSampler(range(n), replicas, replicas)


def test_queue_callback_runs_after_every_gradient_is_accumulated():
    from conch.autograd import engine

    w = conch.ones(3, requires_grad=True)
    seen, queued = [], []

    def hook(g):
        if not queued:  # the hook runs once per accumulation; queue once
            queued.append(engine.queue_callback(lambda: seen.append(w.grad.tolist())))

    w.register_hook(hook)
    (w * 2 + w * 3).sum().backward()  # two accumulations into w.grad; the callback sees their sum
    assert seen == [[5.0, 5.0, 5.0]]
    with pytest.raises(RuntimeError, match="during the backward pass"):
        engine.queue_callback(lambda: None)


# ---------------------------------------------------------------- conch train --nproc


def _conch(args, tmp_path, env=None, timeout=240):
    cmd = [sys.executable, "-m", "conch", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp_path, env=env)


def _accuracy(text):
    lines = [ln for ln in text.splitlines() if ln.startswith("test accuracy:")]
    assert len(lines) == 1, text  # rank 0 alone prints
    return float(lines[0].split(":")[1])


@needs_mpi
def test_train_nproc_2_reaches_the_accuracy_of_one_process(tmp_path):
    common = ["train", "--epochs", "10", "--quiet", "--no-plot", "--batch-size", "64", "--device", "cpu"]
    two = _conch([*common, "--nproc", "2", "--out", str(tmp_path / "two")], tmp_path)
    assert two.returncode == 0, two.stdout + two.stderr
    one = _conch([*common, "--out", str(tmp_path / "one")], tmp_path)
    assert one.returncode == 0, one.stdout + one.stderr
    acc2, acc1 = _accuracy(two.stdout), _accuracy(one.stdout)
    assert acc2 > 0.9 and abs(acc2 - acc1) <= 0.03, (acc1, acc2)
    # the checkpoint (written by rank 0, the bare model's keys) resumes in a single process
    assert (tmp_path / "two" / "mlp.ckpt").exists()
    again = _conch([*common, "--resume", "--out", str(tmp_path / "two")], tmp_path)
    assert again.returncode == 0 and "resumed from" in again.stdout, again.stdout + again.stderr
    assert _accuracy(again.stdout) == acc2  # evaluates the saved weights: rank 0's, equal on every rank


@needs_mpi
def test_train_nproc_a_crashing_rank_ends_the_job_with_its_traceback(tmp_path):
    # rank 1 raises before its first collective; rank 0 would wait in DDP's broadcast forever without the abort
    # (a hang ends as TimeoutExpired at the subprocess timeout, failing the test without timing it)
    (tmp_path / "sitecustomize.py").write_text(
        textwrap.dedent("""
        import os
        if os.environ.get("PMI_RANK") == "1" and os.environ.get("CONCH_TRAIN_RANK_OF_JOB") == "1":
            import conch.train as t

            def boom(*args, **kwargs):
                raise ZeroDivisionError("boom on rank 1")

            t._train_digits = boom
    """)
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = _conch(["train", "--nproc", "2", "--epochs", "2", "--quiet", "--no-plot", "--device", "cpu", "--out",
                str(tmp_path)], tmp_path, env=env, timeout=120)  # fmt: skip
    assert r.returncode != 0
    assert "ZeroDivisionError: boom on rank 1" in r.stderr and "Traceback" in r.stderr, r.stderr


def test_train_nproc_rebuilds_the_command_line_for_the_ranks():
    from conch import train
    from conch.__main__ import _parser

    parser, _ = _parser()
    args = parser.parse_args(["train", "--nproc", "3", "--epochs", "4", "--amp", "bf16", "--checkpointing", "-q"])
    line = train._command_line(args)
    assert line == ["--epochs", "4", "--amp", "bf16", "--checkpointing", "--quiet", "--nproc", "3"]
    again = parser.parse_args(["train", *line])
    assert vars(again) == vars(args)
