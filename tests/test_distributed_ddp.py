"""DDP with overlap, unused parameters, ZeRO-1, AMP under DDP and the remaining collectives: one 2-rank MPI job
(tests/distributed_checks.py) runs every check, each test here reads its own; plus the single-process parts
(Tensor.register_post_accumulate_grad_hook, ZeRO's partition rule, errors before init)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import conch
import conch.distributed as dist
from conch.distributed.run import find_mpiexec

HERE = Path(__file__).resolve().parent
needs_mpi = pytest.mark.skipif(
    not (dist.is_available() and find_mpiexec() is not None),
    reason="mpi4py or mpiexec missing: pip install 'conch[distributed]'",
)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """Run every check once on 2 ranks (each rank imports conch once: the job takes seconds, not minutes)."""
    cmd = [sys.executable, "-m", "conch.distributed.run", "--nproc-per-node", "2", str(HERE / "distributed_checks.py")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path_factory.mktemp("ddp"))
    return r


def _passed(job, name):
    for rank in (0, 1):
        if f"PASS {name} {rank}" not in job.stdout:
            pytest.fail(
                f"check {name} did not pass on rank {rank} (exit {job.returncode}):\n{job.stdout}\n{job.stderr}"
            )


@needs_mpi
@pytest.mark.parametrize(
    "name",
    [
        "ddp_gradients_equal_full_batch",
        "ddp_k_steps_equal_single_process",
        "ddp_no_sync_accumulation_equals_one_big_batch",
        "ddp_unused_parameters",
        "ddp_comm_hooks",
        "ddp_static_graph",
        "ddp_join_uneven_inputs",
        "zero1_adamw_equals_adamw_and_resumes_on_other_world_sizes",
        "amp_scaler_checkpointing_fused_optimizer_under_ddp",
        "collectives_reduce_gather_scatter_all_to_all_p2p_groups",
    ],
)
def test_two_rank_check(job, name):
    _passed(job, name)


@needs_mpi
def test_job_ran_every_check_and_exited_cleanly(job):
    sys.path.insert(0, str(HERE))
    try:
        import distributed_checks
    finally:
        sys.path.remove(str(HERE))
    assert job.returncode == 0, job.stderr
    assert job.stdout.count("PASS ") == 2 * len(distributed_checks.CHECKS), job.stdout


# ---------------------------------------------------------------- single process


def test_post_accumulate_grad_hook_runs_once_after_the_last_accumulation():
    w = conch.ones(3, requires_grad=True)
    b = conch.full((3,), 2.0, requires_grad=True)
    seen = []
    hw = w.register_post_accumulate_grad_hook(lambda t: seen.append(("w", t.grad.tolist())))
    b.register_post_accumulate_grad_hook(lambda t: seen.append(("b", t.grad.tolist())))
    ((w * 2 + w * 3) * b).sum().backward()  # w accumulates twice; its hook sees the sum, once
    assert sorted(seen) == [("b", [5.0, 5.0, 5.0]), ("w", [10.0, 10.0, 10.0])]
    seen.clear()
    w.grad = conch.ones(3)
    (w * b).sum().backward()  # .grad already held a value: the hook sees the accumulated total
    assert ("w", [3.0, 3.0, 3.0]) in seen
    seen.clear()
    hw.remove()
    (w * b).sum().backward()
    assert [s[0] for s in seen] == ["b"]
    seen.clear()
    w.sum().backward()  # a root that is itself a leaf
    assert seen == []
    b.sum().backward()
    assert seen == [("b", [5.0 + 1.0 + 1.0 + 1.0] * 3)]  # the three earlier passes plus this one


def test_post_accumulate_grad_hook_not_for_unreached_or_autograd_grad():
    w = conch.ones(2, requires_grad=True)
    u = conch.ones(2, requires_grad=True)
    calls = []
    u.register_post_accumulate_grad_hook(lambda t: calls.append("u"))
    w.register_post_accumulate_grad_hook(lambda t: calls.append("w"))
    (w * 2).sum().backward()
    assert calls == ["w"]
    conch.autograd.grad((w * u).sum(), [w, u])  # no .grad is accumulated: no hook (as PyTorch)
    assert calls == ["w"]
    with pytest.raises(RuntimeError, match="non-leaf"):
        (w * 2).register_post_accumulate_grad_hook(lambda t: None)
    with pytest.raises(RuntimeError, match="doesn't require gradient"):
        conch.ones(2).register_post_accumulate_grad_hook(lambda t: None)


def test_post_accumulate_grad_hook_matches_pytorch_order_of_values():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    a, g = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    got = {}
    for lib, store in ((conch, "conch"), (torch, "torch")):
        x = lib.tensor(a, requires_grad=True)

        def hook(t, store=store):
            got[store] = t.grad.detach().numpy().copy()

        x.register_post_accumulate_grad_hook(hook)
        ((x * x).sin() + x).backward(lib.tensor(g))
    np.testing.assert_allclose(got["conch"], got["torch"], rtol=1e-12)


def test_future_then_wait_value_and_exceptions():
    from conch.futures import Future

    f = Future()
    seen = []
    f.add_done_callback(lambda fut: seen.append(fut.value()))
    doubled = f.then(lambda fut: fut.value() * 2)
    assert not f.done() and not doubled.done() and seen == []
    with pytest.raises(RuntimeError, match="not completed"):
        f.value()
    f.set_result(21)
    assert f.done() and doubled.done() and seen == [21] and doubled.wait() == 42 and doubled.value() == 42
    with pytest.raises(RuntimeError, match="only be marked completed once"):
        f.set_result(1)
    assert f.then(lambda fut: fut.value() + 1).wait() == 22  # then() on a completed future runs at once
    failing = f.then(lambda fut: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing.wait()
    passed_on = failing.then(lambda fut: fut.value())  # the parent's exception reaches the child
    with pytest.raises(ZeroDivisionError):
        passed_on.wait()
    e = Future()
    e.set_exception(ValueError("boom"))
    with pytest.raises(ValueError, match="boom"):
        e.wait()
    with pytest.raises(TypeError, match="expects an exception"):
        Future().set_exception("boom")
    with pytest.raises(RuntimeError, match="no result yet"):
        Future().wait()


def test_future_from_a_source_completes_on_wait_or_poll():
    from conch.futures import Future

    class Source:  # stands for a collective's work: done after `polls` polls
        def __init__(self, polls):
            self.polls, self.calls = polls, 0

        def is_completed(self):
            self.polls -= 1
            return self.polls <= 0

        def __call__(self):
            self.calls += 1
            return ["result"]

    src = Source(3)
    f = Future._from(src)
    chained = f.then(lambda fut: fut.value()[0].upper())  # then() polls once
    assert not chained.done()  # the second poll: not yet
    assert chained.done() and chained.value() == "RESULT" and src.calls == 1
    src = Source(100)
    chained = Future._from(src).then(lambda fut: fut.value() + ["x"])
    assert chained.wait() == ["result", "x"] and src.calls == 1  # waiting on the child waits on the parent


def test_new_collectives_before_init_raise_pytorch_message():
    assert not dist.is_initialized()
    for call in (lambda: dist.reduce(conch.ones(1), 0), lambda: dist.gather(conch.ones(1)),
                 lambda: dist.scatter(conch.ones(1)), lambda: dist.new_group([0]),
                 lambda: dist.all_to_all_single(conch.ones(2), conch.ones(2)),
                 lambda: dist.isend(conch.ones(1), 1), lambda: dist.irecv(conch.ones(1), 0)):  # fmt: skip
        with pytest.raises(ValueError, match="Default process group has not been initialized"):
            call()
    with pytest.raises(ValueError, match="Default process group has not been initialized"):
        dist.optim.ZeroRedundancyOptimizer([conch.ones(2, requires_grad=True)], conch.optim.AdamW)


@needs_mpi
def test_bench_distributed_runs_and_writes_rows(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(HERE.parent / "benchmarks"))
    import bench_distributed
    import harness

    out = tmp_path / "d.json"
    argv = ["--models", "mlp", "--sizes", "4096,65536", "--repeats", "2", "--seconds", "0.02", "--inner", "1",
            "--rounds", "1", "--batch", "16", "--json", str(out)]  # fmt: skip
    assert bench_distributed.main(argv) == 0, capsys.readouterr()
    doc = __import__("json").loads(out.read_text())
    harness.validate_payload(doc)
    cases = [r["case"] for r in doc["results"]]
    assert cases[:2] == ["all_reduce mpi 2 ranks 4 KiB", "all_reduce mpi 2 ranks 64 KiB"], cases
    assert "ddp mlp 2 ranks x batch 8, overlap on" in cases and "ddp mlp 1 rank, batch 8" in cases
    on = next(r for r in doc["results"] if r["case"].endswith("overlap on"))
    assert on["ratio"] == pytest.approx(on["baseline"] / on["conch"]) and on["target"] == "<= 1.3x"
    # without a GPU the CUDA variant says so and exits 0 (device_check.sh runs it only with one)
    assert bench_distributed.main(["--device", "cuda", "--quick"]) == 0


def test_import_conch_loads_no_mpi_and_reaches_zero_by_attribute():
    code = ("import sys, conch; assert 'mpi4py' not in sys.modules; "
            "assert conch.distributed.optim.ZeroRedundancyOptimizer.__name__ == 'ZeroRedundancyOptimizer'; "
            "hooks = conch.distributed.algorithms.ddp_comm_hooks.default_hooks; "
            "assert hooks.fp16_compress_hook.__name__ == 'fp16_compress_hook'; "
            "assert 'mpi4py' not in sys.modules; print('OK')")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "OK", r.stderr
