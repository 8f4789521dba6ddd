"""Tests for the benchmark harness, `conch bench` in CPU mode and benchmarks/summary.py (tiny sizes, no timings)."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import harness  # noqa: E402
import summary  # noqa: E402

from conch import bench  # noqa: E402


@pytest.fixture
def cpu_env():
    """A CPU environment with pre-set peaks, so tests never spend time measuring them."""
    env = harness.Env.detect(force_cpu=True)
    env.peaks.update(matmul={"tflops": 0.1, "how": "test"}, copy={"gbps": 10.0, "how": "test"})
    return env


def _case(check_value=0.0, dtype="float32", run=None, **kw):
    x = np.arange(12, dtype=np.float32)
    c = dict(
        name="double", shape=(3, 4), dtype=dtype, flops=0, bytes=2 * x.nbytes,
        run=run or (lambda: x * 2), baseline_name="numpy multiply", baseline=lambda: np.multiply(x, 2),
        check=lambda: check_value,
    )  # fmt: skip
    c.update(kw)
    return c


# ---------------------------------------------------------------------------------------------------------------
# dtypes, tolerances, tables
# ---------------------------------------------------------------------------------------------------------------


def test_canonical_dtype_and_tolerance():
    assert harness.canonical_dtype("fp16") == "float16"
    assert harness.canonical_dtype("BF16") == "bfloat16"
    assert harness.canonical_dtype(np.dtype(np.float32)) == "float32"
    assert harness.canonical_dtype("tf32") == "tf32"
    assert harness.tolerance("fp32") < harness.tolerance("tf32") < harness.tolerance("bf16")
    assert harness.tolerance("float16", override=0.5) == 0.5


def test_format_table_aligns_and_marks_missing():
    rows = [{"a": "x", "n": 1.23456, "s": (4, 5)}, {"a": "longer", "n": None, "s": [7]}]
    cols = [("name", "a", "s"), ("num", "n", ".2f"), ("shape", "s", "shape")]
    text = harness.format_table(rows, cols).splitlines()
    assert text[0].split() == ["name", "num", "shape"]
    assert set(text[1].replace(" ", "")) == {"-"}
    assert text[2].split() == ["x", "1.23", "4x5"]
    assert text[3].split() == ["longer", "-", "7"]
    # every column starts at the same offset on every line
    starts = [line.index("1.23") if "1.23" in line else line.index("-", 8) for line in (text[2], text[3])]
    assert starts[0] == starts[1] == text[0].index("num")


def test_format_table_markdown_escapes_pipes():
    md = harness.format_table([{"a": "x|y", "n": 2.0}], [("a", "a", "s"), ("n", "n", ".1f")], markdown=True)
    lines = md.splitlines()
    assert lines[0] == "| a | n |"
    assert lines[1] == "|---|---|"
    assert lines[2] == "| x\\|y | 2.0 |"


def test_fmt_value_nan_and_bool():
    assert harness.fmt_value(float("nan"), ".2f") == "nan"
    assert harness.fmt_value(True, ".2f") == "True"
    assert harness.fmt_value(None) == "-"


# ---------------------------------------------------------------------------------------------------------------
# running cases: checks fail loudly
# ---------------------------------------------------------------------------------------------------------------


def test_run_case_ok_row(cpu_env):
    row = harness.run_case(cpu_env, _case(), repeats=3, warmup=1, budget_s=0.05)
    assert row["ok"] and row["error"] is None
    assert row["time_ms"] > 0 and row["baseline_ms"] > 0
    assert row["unit"] == "GB/s" and row["bound"] == "memory"
    # throughput and percent of peak follow from bytes and time
    assert math.isclose(row["throughput"], row["bytes"] / (row["time_ms"] * 1e-3) / 1e9, rel_tol=1e-9)
    assert math.isclose(row["pct_peak"], 100 * row["throughput"] / 10.0, rel_tol=1e-9)
    assert math.isclose(row["speedup"], row["baseline_ms"] / row["time_ms"], rel_tol=1e-9)


@pytest.mark.parametrize("bad", [0.5, float("nan"), 2e-4])
def test_run_case_wrong_result_is_reported_not_timed(cpu_env, bad):
    calls = []
    row = harness.run_case(cpu_env, _case(check_value=bad, run=lambda: calls.append(1)), repeats=3, warmup=1)
    assert row["ok"] is False
    assert "WRONG RESULT" in row["error"] and "double" in row["error"] and "float32" in row["error"]
    assert row["time_ms"] is None and calls == []
    assert harness.failures([row]) == [row]


def test_run_case_tolerance_per_dtype(cpu_env):
    # 2e-4 is wrong for float32 but within bfloat16's tolerance; a case's own "tol" overrides both
    assert harness.run_case(cpu_env, _case(2e-4, dtype="bf16"), repeats=3, budget_s=0.02)["ok"]
    assert harness.run_case(cpu_env, _case(2e-4, tol=1e-3), repeats=3, budget_s=0.02)["ok"]


def test_run_case_exception_is_an_error_row(cpu_env):
    def boom():
        raise FloatingPointError("kaboom")

    row = harness.run_case(cpu_env, _case(run=boom), repeats=3)
    assert not row["ok"] and "FloatingPointError" in row["error"] and "kaboom" in row["error"]


def test_validate_case_names_missing_keys():
    c = _case()
    del c["check"]
    with pytest.raises(ValueError, match="check"):
        harness.validate_case(c)
    with pytest.raises(ValueError, match="callable"):
        harness.validate_case(_case(run=3))


def test_compute_bound_case_uses_matmul_peak(cpu_env):
    row = harness.run_case(cpu_env, _case(flops=10**9, bytes=10), repeats=3, budget_s=0.02)
    assert row["bound"] == "compute" and row["unit"] == "TFLOP/s"
    assert math.isclose(row["pct_peak"], 100 * row["throughput"] / 0.1, rel_tol=1e-9)


def test_rotation_uses_every_input_set(cpu_env):
    seen = []
    runs = [lambda i=i: seen.append(i) for i in range(3)]
    harness.time_fn(cpu_env, runs, repeats=9, warmup=1, budget_s=10)
    assert set(seen) == {0, 1, 2}


# ---------------------------------------------------------------------------------------------------------------
# JSON and plot
# ---------------------------------------------------------------------------------------------------------------


def test_json_schema_round_trip(cpu_env, tmp_path):
    rows = [harness.run_case(cpu_env, _case(), repeats=3, budget_s=0.02), {"op": "x", "err": float("nan")}]
    path = tmp_path / "sub" / "k.json"
    harness.write_json(path, harness.make_payload("kernels", "kernels", rows, cpu_env, extra_key=1))
    doc = json.loads(path.read_text())  # strict JSON: NaN written as a string
    harness.validate_payload(doc)
    assert doc["schema"] == harness.SCHEMA and doc["kind"] == "kernels" and doc["extra_key"] == 1
    assert doc["results"][1]["err"] == "nan"
    assert {"op", "shape", "dtype", "time_ms", "baseline_ms", "speedup", "ok", "err", "tol"} <= set(doc["results"][0])
    assert doc["info"]["commit"] and doc["timer"] == "perf_counter"


@pytest.mark.parametrize(
    "doc, msg",
    [([], "object"), ({"schema": "other", "name": "a", "kind": "k", "results": []}, "schema"),
     ({"schema": harness.SCHEMA, "name": "a", "kind": "k"}, "results"),
     ({"schema": harness.SCHEMA, "name": "a", "kind": "k", "results": [{"x": {"y": 1}}]}, "flat")],
)  # fmt: skip
def test_validate_payload_rejects(doc, msg):
    with pytest.raises(ValueError, match=msg):
        harness.validate_payload(doc)


def test_plot_writes_png(cpu_env, tmp_path):
    rows = [harness.run_case(cpu_env, _case(shape=(n,), size=n), repeats=3, budget_s=0.01) for n in (8, 16)]
    n = harness.plot(rows, tmp_path / "p.png")
    assert n == 1
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------------------------
# `conch bench` on the CPU
# ---------------------------------------------------------------------------------------------------------------


def test_conch_bench_cpu_all_families(tmp_path, capsys):
    out = tmp_path / "k.json"
    rc = bench.main(["all", "--cpu", "--sizes", "16", "--repeats", "2", "--budget", "0.01", "--no-torch",
                     "--json", str(out), "--markdown", str(tmp_path / "k.md")])  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "no usable GPU" in text and "NumPy" in text
    doc = json.loads(out.read_text())
    harness.validate_payload(doc)
    ops = {r["op"] for r in doc["results"]}
    assert {"matmul", "softmax_fwd", "cross_entropy_bwd", "layer_norm_fwd", "gelu_fwd", "dropout_fwd"} <= ops
    assert all(r["ok"] and r["err"] <= r["tol"] for r in doc["results"])
    assert (tmp_path / "k.md").read_text().startswith("| op |")


def test_conch_bench_with_torch_baseline(capsys):
    pytest.importorskip("torch", reason="the PyTorch column needs torch")
    rc = bench.main(["softmax", "--cpu", "--sizes", "32", "--repeats", "2", "--budget", "0.01"])
    text = capsys.readouterr().out
    assert rc == 0
    line = next(ln for ln in text.splitlines() if ln.startswith("softmax_fwd"))
    assert line.split()[-3] != "-"  # a torch speedup was measured


FAKE_FAMILY = """
import numpy as np

def cpu_cases(size="small", sizes=None, dtype=None):
    x = np.ones(8, np.float32)
    good = dict(name="fine_op", shape=(8,), dtype="float32", flops=0, bytes=64, run=lambda: x + 1,
                baseline_name="numpy", baseline=lambda: x + 1, check=lambda: 0.0)
    bad = dict(good, name="broken_op", check=lambda: 0.25)
    return [good, bad]
"""


def test_conch_bench_fails_loudly_on_wrong_result(tmp_path, capsys):
    (tmp_path / "harness.py").write_text((BENCH / "harness.py").read_text())
    (tmp_path / "bench_fake.py").write_text(FAKE_FAMILY)
    try:
        rc = bench.main(["fake", "--cpu", "--repeats", "2", "--budget", "0.01", "--no-torch",
                         "--bench-dir", str(tmp_path)])  # fmt: skip
    finally:
        sys.modules["harness"] = harness  # later imports get benchmarks/harness.py again
        while str(tmp_path) in sys.path:
            sys.path.remove(str(tmp_path))

    cap = capsys.readouterr()
    assert rc == 1
    assert "WRONG RESULT: broken_op" in cap.err and "FAILED: 1 of 2" in cap.err
    assert "fine_op" in cap.out and "WRONG" in cap.out


def test_cpu_mode_leaves_kernel_dispatch_alone(monkeypatch):
    monkeypatch.delenv("CONCH_KERNELS", raising=False)
    assert bench.main(["norms", "--cpu", "--sizes", "8", "--repeats", "2", "--budget", "0.01", "--no-torch"]) == 0
    assert "CONCH_KERNELS" not in os.environ
    monkeypatch.setenv("CONCH_KERNELS", "auto")
    bench.main(["norms", "--cpu", "--sizes", "8", "--repeats", "2", "--budget", "0.01", "--no-torch"])
    assert os.environ["CONCH_KERNELS"] == "auto"


def test_conch_bench_rejects_bad_arguments(capsys):
    assert bench.main(["softmax", "--cpu", "--dtype", "int7"]) == 2
    assert "unknown --dtype" in capsys.readouterr().err
    assert bench.main(["nonexistent_family", "--cpu"]) == 2
    with pytest.raises(SystemExit):
        bench.main(["softmax", "--sizes", "12,x"])


def test_add_parser_wires_subcommand():
    import argparse

    p = argparse.ArgumentParser(prog="conch")
    sub = p.add_subparsers(dest="cmd")
    bench.add_parser(sub)
    args = p.parse_args(["bench", "matmul", "--dtype", "bf16", "--sizes", "1024,4096", "--json", "x.json"])
    assert args.fn is bench.run and args.kernel == "matmul" and args.sizes == [1024, 4096] and args.dtype == "bf16"


def test_gpu_case_selection_helpers():
    cases = [dict(name="a", shape=(4, 1024), dtype="fp16"), dict(name="b", shape=(4, 2048), dtype="float16"),
             dict(name="c", shape=(4, 1024), dtype="bfloat16")]  # fmt: skip
    assert [c["name"] for c in bench.filter_cases(harness, cases, sizes=[1024])] == ["a", "c"]
    assert [c["name"] for c in bench.filter_cases(harness, cases, dtype="fp16")] == ["a", "b"]

    def takes_sizes(size="large", sizes=None):
        return [dict(name="m", shape=(s, s, s), dtype="float16") for s in sizes or (1,)]

    got, took_sizes, took_dtype = bench._call_cases(takes_sizes, "large", [8, 16], "float16")
    assert took_sizes and not took_dtype and [c["shape"][0] for c in got] == [8, 16]
    fams = bench.discover(BENCH)
    assert fams[: len([f for f in bench.FAMILIES if f in fams])] == [f for f in bench.FAMILIES if f in fams]
    assert not any(f.startswith(("e2e", "overhead")) for f in fams)


# ---------------------------------------------------------------------------------------------------------------
# summary.py
# ---------------------------------------------------------------------------------------------------------------


def test_summary_collects_every_json(cpu_env, tmp_path, capsys):
    good = harness.run_case(cpu_env, _case(), repeats=3, budget_s=0.01)
    wrong = harness.run_case(cpu_env, _case(check_value=1.0, name="bad_kernel"), repeats=3)
    harness.write_json(tmp_path / "kernels.json", harness.make_payload("kernels", "kernels", [good, wrong], cpu_env))
    e2e = [harness.ratio_row("mlp", "steps/s", 10.0, 5.0, True, ok=True),
           harness.ratio_row("mlp", "peak MiB", 100.0, 50.0, False, ok=True)]  # fmt: skip
    harness.write_json(tmp_path / "e2e.json", harness.make_payload("e2e_mlp", "e2e", e2e))
    (tmp_path / "free.json").write_text(json.dumps({"meta": {"n": 1}, "ratio_x": {"fwd": 2.5}}))
    (tmp_path / "list.json").write_text(json.dumps([{"name": "row", "value": 3}]))
    (tmp_path / "broken.json").write_text("{not json")
    rc = summary.main([str(tmp_path), "--short"])
    out = capsys.readouterr().out
    assert rc == 0
    md = (tmp_path / "results.md").read_text()
    for heading in ("## kernels", "## e2e_mlp", "## free", "## list"):
        assert heading in md
    assert "broken.json: unreadable" in md
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["failures"] == 1 and len(res["files"]) == 4
    e2e_short = [r for r in res["short"] if r["bench"] == "e2e_mlp"]
    assert [r["ratio"] for r in e2e_short] == [2.0, 0.5]  # rates: conch/torch; memory: torch/conch
    assert any(r["case"] == "ratio_x.fwd" and r["ratio"] == 2.5 for r in res["short"])
    assert "bad_kernel" in out and "WRONG" in out and out.rstrip().endswith("1 failed checks")


def test_summary_condensed_keeps_failures_and_largest():
    rows = [{"bench": "k", "case": f"op {n}", "check": "ok", "_group": ("op", "f16"), "_size": n} for n in (1, 9, 4)]
    rows.append({"bench": "k", "case": "op 2 bad", "check": "WRONG", "_group": ("op", "f16"), "_size": 2})
    rows.append({"bench": "e2e", "case": "mlp", "check": "ok"})
    got = [r["case"] for r in summary.condensed(rows)]
    assert got == ["op 2 bad", "op 9", "mlp"]


def test_summary_missing_folder(tmp_path, capsys):
    assert summary.main([str(tmp_path / "nope")]) == 2


def test_device_check_script_is_valid_bash():
    import shutil
    import subprocess

    script = BENCH / "device_check.sh"
    assert os.access(script, os.R_OK)
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    subprocess.run(["bash", "-n", str(script)], check=True)
