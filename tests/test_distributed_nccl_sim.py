"""conch's NCCL backend on simulated GPUs: one 2-rank MPI job (tests/nccl_sim_checks.py) with CONCH_SIMULATE_GPU=1
and one simulated GPU per rank, where ``cupy.cuda.nccl`` is the simulator's (kernels/sim/_nccl.py, over mpi4py).
Each test reads its check's PASS lines; the job runs once per module."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import conch.distributed as dist
from conch.distributed.run import find_mpiexec

HERE = Path(__file__).resolve().parent
needs_mpi = pytest.mark.skipif(
    not (dist.is_available() and find_mpiexec() is not None),
    reason="mpi4py or mpiexec missing: pip install 'conch[distributed]'",
)
NAMES = [
    "backend_is_nccl_on_the_ranks_device",
    "all_reduce_each_op_and_dtype",
    "broadcast_gather_scatter_reduce",
    "into_tensor_reduce_scatter_all_to_all",
    "point_to_point_and_barrier",
    "ddp_gradients_equal_single_process",
    "ddp_unused_parameters_and_static_graph",
    "ddp_join_and_grad_scaler",
    "groups_and_zero1",
    "simulated_nccl_is_strict",
]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """Every check once on 2 ranks, each on its own simulated GPU (the environment is the subprocess's own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCH_")}
    env.update(CONCH_SIMULATE_GPU="1", CONCH_SIMULATE_GPU_COUNT="2", CONCH_AUTOTUNE="off", CONCH_SIM_COMPILE="0")
    cmd = [sys.executable, "-m", "conch.distributed.run", "--nproc-per-node", "2", str(HERE / "nccl_sim_checks.py")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path_factory.mktemp("nccl"))  # fmt: skip


@needs_mpi
@pytest.mark.parametrize("name", NAMES)
def test_two_rank_nccl_check(job, name):
    passed = {tuple(line.split()[1:]) for line in job.stdout.replace("PASS ", "\nPASS ").splitlines() if line}
    missing = [rank for rank in ("0", "1") if (name, rank) not in passed]
    assert not missing, f"{name} did not pass on ranks {missing} (exit {job.returncode}):\n{job.stdout}\n{job.stderr}"


@needs_mpi
def test_job_ran_every_check_and_exited_cleanly(job):
    defined = re.findall(r"^@check\ndef (\w+)", (HERE / "nccl_sim_checks.py").read_text(), re.M)
    assert sorted(defined) == sorted(NAMES)  # a new check is listed above, so its failure is reported by name
    assert job.returncode == 0, job.stderr
    assert job.stdout.count("PASS ") == 2 * len(NAMES), job.stdout
