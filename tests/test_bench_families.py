"""Tests for the benchmark case families (lazy setup, checks on NumPy), the unified e2e JSON and device_check.sh."""

from __future__ import annotations

import importlib
import json
import math
import re
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import harness  # noqa: E402
import summary  # noqa: E402

from conch import bench  # noqa: E402

FAMILIES = ("matmul", "activations", "softmax", "cross_entropy", "norms", "dropout", "attention")
TINY = {"matmul": 24, "activations": 300, "softmax": 40, "cross_entropy": 33, "norms": 20, "dropout": 300,
        "attention": 24}  # fmt: skip


@pytest.fixture
def cpu_env():
    env = harness.Env.detect(force_cpu=True)
    env.peaks.update(matmul={"tflops": 0.1, "how": "test"}, copy={"gbps": 10.0, "how": "test"})
    return env


@pytest.fixture
def reference_path(monkeypatch):
    """Kernels on NumPy arrays take their reference path (never the Triton interpreter) in these tests."""
    monkeypatch.setenv("CONCH_KERNELS", "reference")


def _family(name):
    return importlib.import_module(f"bench_{name}")


# ---------------------------------------------------------------------------------------------------------------
# lazy cases: metadata only until setup()
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fam", FAMILIES)
def test_cases_allocate_nothing_until_setup(fam):
    # sizes no machine could hold: building the list must still be instant, because nothing is allocated
    cases = _family(fam).cases("large", sizes=[2**40], xp=np)
    assert cases
    for c in cases:
        harness.validate_case(c)
        assert callable(c["setup"]) and "run" not in c and "check" not in c
        assert tuple(c["shape"])[-1] == 2**40 and c["bytes"] > 2**40


@pytest.mark.parametrize("fam", FAMILIES)
def test_large_sets_and_dtype_selection(fam):
    cases = _family(fam).cases("large", xp=np)
    assert len({(c["name"], tuple(c["shape"]), c["dtype"]) for c in cases}) == len(cases)  # no duplicates
    one = _family(fam).cases("large", dtype="bf16", xp=np)
    assert one and {c["dtype"] for c in one} == {"bfloat16"}


def test_matmul_large_set_has_what_the_issue_asks():
    cases = _family("matmul").cases("large", xp=np)
    have = {(c["name"], tuple(c["shape"]), c["dtype"]) for c in cases}
    for n in (4096, 8192):
        for dt in ("float16", "bfloat16", "tf32"):
            assert ("matmul_fwd", (n, n, n), dt) in have
            assert ("linear_bias_gelu_fwd", (n, n, n), dt) in have
    assert ("matmul_fwd", (4096, 4096, 4096), "float32") in have
    assert cases[0]["dtype"] == "float16" and cases[0]["shape"] == (4096, 4096, 4096)  # most wanted first
    # cases(size, sizes=None, dtype=None): sizes replace the n list
    assert {c["shape"] for c in _family("matmul").cases("large", sizes=[2048], xp=np)} == {(2048, 2048, 2048)}


@pytest.mark.parametrize("fam", FAMILIES)
@pytest.mark.parametrize("dtype", [None, "bf16"])
def test_every_case_checks_and_times_on_numpy(fam, dtype, cpu_env, reference_path):
    cases = _family(fam).cases("small", sizes=[TINY[fam]], dtype=dtype, xp=np)
    for c in cases:
        row = harness.run_case(cpu_env, c, repeats=2, warmup=1, budget_s=0.005)
        assert row["ok"], row["error"]
        assert row["err"] <= row["tol"] and row["time_ms"] > 0 and row["baseline_ms"] > 0


def _patched_matmul(monkeypatch, scale):
    """Make conch's matmul_forward record allow_tf32 and return out * scale."""
    from conch.kernels import matmul as mm

    seen, real = [], mm.matmul_forward

    def fake(a, b, bias=None, activation=None, **kw):
        seen.append(kw.get("allow_tf32"))
        out, res = real(a, b, bias, activation, **kw)
        return (out.astype(np.float32) * scale).astype(out.dtype), res

    monkeypatch.setattr(mm, "matmul_forward", fake)
    return seen


def test_tf32_cases_allow_tf32_and_fp32_cases_do_not(monkeypatch, cpu_env, reference_path):
    seen = _patched_matmul(monkeypatch, 1.0)
    (tf32,) = [c for c in _family("matmul").cases("small", sizes=[16], xp=np) if c["name"] == "matmul_fwd"
               and c["dtype"] == "tf32"]  # fmt: skip
    assert harness.run_case(cpu_env, tf32, repeats=2, budget_s=0.005)["ok"]
    assert seen and all(s is True for s in seen)
    seen.clear()
    (fp32,) = _family("matmul").cases("small", sizes=[16], dtype="fp32", xp=np)[:1]
    assert fp32["dtype"] == "float32"
    assert harness.run_case(cpu_env, fp32, repeats=2, budget_s=0.005)["ok"]
    assert seen and all(s is False for s in seen)


def test_matmul_check_judges_against_the_exact_product(monkeypatch, cpu_env, reference_path):
    # a 1e-3 relative error is TF32-sized: fine for tf32, wrong for exact float32
    _patched_matmul(monkeypatch, 1.001)
    cases = {c["dtype"]: c for c in _family("matmul").cases("small", sizes=[16], xp=np) if c["name"] == "matmul_fwd"}
    fp32 = _family("matmul").cases("small", sizes=[16], dtype="fp32", xp=np)[0]
    assert harness.run_case(cpu_env, cases["tf32"], repeats=2, budget_s=0.005)["ok"]
    row = harness.run_case(cpu_env, fp32, repeats=2, budget_s=0.005)
    assert not row["ok"] and "WRONG RESULT" in row["error"] and row["time_ms"] is None


def test_wrong_kernel_output_is_caught_in_every_family(monkeypatch, cpu_env, reference_path):
    from conch.kernels import softmax as sm

    real = sm.softmax_forward
    monkeypatch.setattr(sm, "softmax_forward", lambda x, log=False: (lambda o: (o[0] * 1.05, o[1]))(real(x, log=log)))
    rows = [harness.run_case(cpu_env, c, repeats=2, budget_s=0.005)
            for c in _family("softmax").cases("small", sizes=[32], xp=np) if c["name"].endswith("_fwd")]  # fmt: skip
    assert rows and not any(r["ok"] for r in rows)


# ---------------------------------------------------------------------------------------------------------------
# the harness: setup, release, failures, deadline
# ---------------------------------------------------------------------------------------------------------------


class _Big:
    def __init__(self):
        self.a = np.ones(1000, np.float32)


def _lazy_case(ref_holder, **kw):
    def setup():
        big = _Big()
        ref_holder.append(weakref.ref(big))
        return {"run": lambda: big.a * 2, "baseline": lambda: big.a + big.a, "check": lambda: 0.0}

    c = dict(name="lazy", shape=(1000,), dtype="float32", flops=0, bytes=8000, baseline_name="numpy", setup=setup)
    c.update(kw)
    return c


def test_run_case_builds_arrays_late_and_drops_them(cpu_env):
    refs = []
    case = _lazy_case(refs)
    assert refs == []  # nothing allocated by building the case
    row = harness.run_case(cpu_env, case, repeats=2, budget_s=0.005)
    assert row["ok"] and len(refs) == 1
    assert refs[0]() is None  # every array of the case is gone once its row is returned
    assert not any(callable(v) for v in row.values())


def test_setup_failure_and_baseline_failure(cpu_env):
    def bad_setup():
        raise MemoryError("out of memory allocating 40 GiB")

    row = harness.run_case(cpu_env, dict(_lazy_case([]), setup=bad_setup), repeats=2)
    assert not row["ok"] and "MemoryError" in row["error"] and "lazy" in row["error"]

    def setup():
        x = np.ones(8, np.float32)

        def broken():
            raise RuntimeError("cuBLAS says no")

        return {"run": lambda: x * 2, "baseline": broken, "check": lambda: 0.0, "baseline_name": "fancy blas"}

    row = harness.run_case(cpu_env, dict(_lazy_case([]), setup=setup), repeats=2, budget_s=0.005)
    assert row["ok"] and row["time_ms"] > 0 and row["baseline_ms"] is None and row["speedup"] is None
    assert row["baseline_name"].startswith("fancy blas (failed: RuntimeError: cuBLAS says no")


def test_setup_must_return_the_closures(cpu_env):
    row = harness.run_case(cpu_env, dict(_lazy_case([]), setup=lambda: {"run": lambda: 1}), repeats=2)
    assert not row["ok"] and "lacks keys" in row["error"] and "check" in row["error"]
    with pytest.raises(ValueError, match="setup"):
        harness.validate_case(dict(_lazy_case([]), setup=3))


def test_run_cases_stops_at_the_deadline(cpu_env):
    import time

    cases = [_lazy_case([]) for _ in range(3)]
    assert harness.run_cases(cpu_env, cases, repeats=2, deadline=time.monotonic() - 1) == []
    assert len(harness.run_cases(cpu_env, cases, repeats=2, budget_s=0.005, deadline=time.monotonic() + 60)) == 3


LAZY_FAMILY = """
import numpy as np

def cpu_cases(size="small", sizes=None, dtype=None):
    def setup():
        x = np.ones(8, np.float32)
        return dict(run=lambda: x + 1, baseline=lambda: x + 1, check=lambda: 0.0)
    return [dict(name=f"op{i}", shape=(8,), dtype="float32", flops=0, bytes=64, baseline_name="numpy", setup=setup)
            for i in range(3)]
"""


def test_conch_bench_max_seconds_keeps_partial_json(tmp_path, capsys):
    (tmp_path / "harness.py").write_text((BENCH / "harness.py").read_text())
    (tmp_path / "bench_lazy.py").write_text(LAZY_FAMILY)
    out = tmp_path / "k.json"
    try:
        rc = bench.main(["lazy", "--cpu", "--repeats", "2", "--budget", "0.01", "--no-torch", "--max-seconds", "0",
                         "--json", str(out), "--bench-dir", str(tmp_path)])  # fmt: skip
        rc2 = bench.main(["lazy", "--cpu", "--repeats", "2", "--budget", "0.01", "--no-torch",
                          "--json", str(tmp_path / "all.json"), "--bench-dir", str(tmp_path)])  # fmt: skip
    finally:
        sys.modules["harness"] = harness
        while str(tmp_path) in sys.path:
            sys.path.remove(str(tmp_path))
    assert rc == 0 and rc2 == 0
    doc = json.loads(out.read_text())
    harness.validate_payload(doc)
    assert doc["results"] == [] and doc["cases_planned"] == 3
    assert any("3 of 3 cases not run" in n for n in doc["notes"])
    full = json.loads((tmp_path / "all.json").read_text())
    assert [r["op"] for r in full["results"]] == ["op0", "op1", "op2"] and all(r["ok"] for r in full["results"])
    capsys.readouterr()


# ---------------------------------------------------------------------------------------------------------------
# one row layout for every non-kernel benchmark
# ---------------------------------------------------------------------------------------------------------------


def test_ratio_row_semantics():
    rate = harness.ratio_row("m", "steps/s", 30.0, 10.0, True, ok=True)
    assert rate["ratio"] == 3.0 and rate["torch"] == 10.0 and rate["baseline"] == 10.0 and rate["check"] == "ok"
    t = harness.ratio_row("m", "ms/step", 4.0, 2.0, False, baseline_name="conch fp32", ok=False)
    assert t["ratio"] == 0.5 and "torch" not in t and t["baseline_name"] == "conch fp32" and t["check"] == "FAILED"
    assert harness.ratio_row("m", "ms", None, 2.0)["ratio"] is None


def _e2e_rows(path):
    doc = json.loads(Path(path).read_text())
    harness.validate_payload(doc)
    assert doc["kind"] == "e2e" and doc["results"]
    for r in doc["results"]:
        assert {"case", "metric", "conch", "baseline", "baseline_name", "ratio", "ok"} <= set(r)
        if r["better"] == "lower":
            assert math.isclose(r["ratio"], r["baseline"] / r["conch"])
        else:
            assert math.isclose(r["ratio"], r["conch"] / r["baseline"])
    return doc["results"]


def test_overhead_writes_ratio_rows(tmp_path, capsys):
    import bench_overhead

    out = tmp_path / "o.json"
    assert bench_overhead.main(["--ops", "30", "--repeats", "2", "--rounds", "1", "--baseline", "numpy",
                                "--mode", "chain", "--json", str(out)]) == 0  # fmt: skip
    rows = _e2e_rows(out)
    assert [r["case"].rsplit(" ", 1)[1] for r in rows] == ["forward", "forward_no_grad", "backward",
                                                            "forward+backward"]  # fmt: skip
    assert all(r["metric"] == "us/op" and r["better"] == "lower" and r["baseline_name"].startswith("numpy")
               for r in rows)  # fmt: skip
    capsys.readouterr()


def test_overhead_per_op_rows_against_torch(tmp_path, capsys):
    pytest.importorskip("torch")  # the per-op section's baseline is PyTorch only
    import bench_overhead

    out = tmp_path / "ops.json"
    assert bench_overhead.main(["--mode", "ops", "--calls", "3", "--op-rounds", "1", "--json", str(out)]) == 0
    rows = _e2e_rows(out)
    # every case, in each of the three passes, on both clocks
    assert {(r["op"], r["pass_"], r["clock"]) for r in rows} == {
        (c, p, k) for c in bench_overhead.OP_CASES for p in bench_overhead.OP_PASSES for k in ("cpu", "wall")
    }
    assert all(r["metric"] == "us/call" and r["baseline_name"].startswith("torch") for r in rows)
    assert "| chain10 |" in capsys.readouterr().out


def test_import_benchmark_rows(tmp_path, capsys):
    import bench_import

    out = tmp_path / "imp.json"
    assert bench_import.main(["--runs", "1", "--top", "3", "--baseline", "numpy", "--json", str(out)]) == 0
    rows = _e2e_rows(out)
    assert [r["metric"] for r in rows] == ["s", "s", "s", "RSS MiB added"] and all(r["conch"] > 0 for r in rows)
    doc = json.loads(out.read_text())
    assert doc["params"]["heavy_modules"] == []  # import conch loads no CuPy, Triton, ml_dtypes or torch
    assert doc["params"]["step_heavy_modules"] == []  # nor does a first CPU GPT step (no Triton launch)
    assert "slowest 3 modules" in capsys.readouterr().out


def test_checkpoint_writes_ratio_rows(tmp_path, capsys):
    import bench_checkpoint

    out = tmp_path / "c.json"
    assert bench_checkpoint.main(["--device", "cpu", "--layers", "4", "--width", "16", "--batch", "8",
                                  "--segments", "2", "--seconds", "0.01", "--json", str(out)]) == 0  # fmt: skip
    rows = _e2e_rows(out)
    assert {r["metric"] for r in rows} == {"kept MiB", "peak MiB", "ms/step"}
    assert all(r["baseline_name"] == "conch plain" for r in rows)
    capsys.readouterr()


def test_amp_writes_ratio_rows_and_skips_without_gpu(tmp_path, capsys):
    import bench_amp

    out = tmp_path / "a.json"
    assert bench_amp.main(["--device", "cpu", "--layers", "2", "--width", "8", "--batch", "4", "--seconds", "0.01",
                           "--json", str(out)]) == 0  # fmt: skip
    rows = _e2e_rows(out)
    assert [r["case"].split(" ", 3)[-1] for r in rows] == ["bf16", "fp16", "fp16+scaler", "scaler cost"]
    assert rows[-1]["baseline_name"] == "conch fp16 (no scaler)" and "scaler_pct" in rows[-1]
    import conch

    if not conch.cuda.is_available():
        assert bench_amp.main(["--json", str(tmp_path / "skip.json")]) == 0
        assert json.loads((tmp_path / "skip.json").read_text())["results"] == []
    capsys.readouterr()


def test_summary_short_table_names_baselines_and_plots(cpu_env, tmp_path, capsys):
    cases = _family("softmax").cases("small", sizes=[16], xp=np)[:2]
    import os

    os.environ["CONCH_KERNELS"] = "reference"
    try:
        krows = [harness.run_case(cpu_env, c, repeats=2, budget_s=0.005) for c in cases]
    finally:
        del os.environ["CONCH_KERNELS"]
    harness.write_json(tmp_path / "k.json", harness.make_payload("kernels", "kernels", krows, cpu_env))
    harness.write_json(tmp_path / "a.json", harness.make_payload(
        "amp", "e2e", [harness.ratio_row("mlp bf16", "ms/step", 1.0, 2.0, False, baseline_name="conch fp32",
                                         ok=True)]))  # fmt: skip
    assert summary.main([str(tmp_path), "--short", "--plot", str(tmp_path / "k.png")]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if "mlp bf16" in ln)
    assert "conch fp32" in line and line.split()[-1] == "ok" and " 2 " in f" {line} "  # ratio 2: conch better
    assert "cupy softmax" in out  # kernel rows name their baseline too
    assert (tmp_path / "k.png").read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------------------------------------------
# the GPU scripts on a machine without a GPU
# ---------------------------------------------------------------------------------------------------------------


def test_gpu_smoke_without_gpu_exits_2(capsys):
    import conch

    if conch.cuda.is_available():
        pytest.skip("a GPU is present: the no-GPU exit is not reachable")
    import gpu_smoke

    assert gpu_smoke.main() == 2
    assert "no usable GPU" in capsys.readouterr().out


def test_device_check_stage_caps_fit_the_budget():
    text = (BENCH / "device_check.sh").read_text()
    budget = int(re.search(r'BUDGET="\$\{CHECK_BUDGET_S:-(\d+)\}"', text).group(1))
    tests_cap = int(re.search(r'TESTS_S="\$\{TESTS_S:-(\d+)\}"', text).group(1))
    caps = {m.group(1): int(m.group(2)) for m in re.finditer(r"^\s*stage (\w+) (\d+) ", text, re.M)}
    assert {"install", "smoke", "kernels_mm", "kernels", "e2e_mlp", "e2e_gpt", "amp", "checkpoint"} <= set(caps)
    # the long stages together leave the 25 s summary reserve and about 25 s for install, info and smoke
    long_stages = sum(v for k, v in caps.items() if k not in ("install", "info", "smoke")) + tests_cap
    assert long_stages <= budget - 25 - 25, (long_stages, budget)
    assert budget <= 480  # 8 minutes
    for script in re.findall(r"benchmarks/(\w+\.py)", text):
        assert (BENCH / script).is_file(), script
