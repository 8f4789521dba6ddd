"""conch.distributed and its launcher: 2 MPI processes on the CPU, each test one short
``python -m conch.distributed.run`` job; plus the single-process parts (errors, world size 1, the launcher)."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import conch
import conch.distributed as dist
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
def test_a_rank_that_raises_ends_the_job(tmp_path):
    t0 = time.perf_counter()
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
    assert time.perf_counter() - t0 < 30


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


def test_launcher_without_mpiexec_says_so(monkeypatch):
    from conch.distributed import run

    monkeypatch.setattr(run, "find_mpiexec", lambda: None)
    with pytest.raises(RuntimeError, match="needs mpiexec"):
        run.command(2, "train.py", [])
    cmd = run.command(2, "pkg.train", ["--lr", "1"], module=True, mpiexec="/x/mpiexec")
    assert cmd[:3] == ["/x/mpiexec", "-n", "2"] and cmd[-4:] == ["-m", "pkg.train", "--lr", "1"]


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
