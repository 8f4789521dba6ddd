"""The `conch` command as a user meets it (issue #17): one-line errors with exit statuses, resume, quiet, pipes."""

import os
import signal
import subprocess
import sys
import time

import pytest

import conch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def conch_cmd(*args, timeout=120, env=None, cwd=None):
    e = dict(os.environ, **(env or {}))
    if not (env and "CONCH_DEBUG" in env):  # an outer debugging session must not turn on tracebacks here
        e.pop("CONCH_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "conch", *args], capture_output=True, text=True, timeout=timeout,
                          env=e, cwd=cwd)  # fmt: skip


def one_error_line(r, prefix):
    """The last stderr line is the message; no traceback anywhere."""
    assert "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(prefix), r.stderr
    return last


@pytest.mark.parametrize(
    "args, says",
    [
        (["--epochs", "0"], "argument --epochs: must be at least 1, got 0"),
        (["--epochs", "-1"], "argument --epochs: must be at least 1"),
        (["--batch-size", "0"], "argument --batch-size: must be at least 1"),
        (["--steps", "two"], "argument --steps: expected a positive integer"),
        (["--lr", "0"], "argument --lr: must be a finite number above 0"),
        (["--device", "gpu"], "unknown device 'gpu': use cpu, cuda or cuda:N"),
        (["--model", "gpt", "--text", "nofile.txt"], "argument --text: no such file: nofile.txt"),
        (["--modle", "gpt"], "unrecognized arguments: --modle (did you mean --model?)"),
    ],
)
def test_flag_mistakes_are_one_line_with_status_2(args, says, tmp_path):
    r = conch_cmd("train", *args, "--out", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 2
    assert says in one_error_line(r, "conch train: error: ")
    assert r.stderr.startswith("usage: conch train")  # the subcommand's usage, not the top-level one


@pytest.mark.skipif(conch.cuda.is_available(), reason="needs a machine without a GPU")
def test_no_gpu_is_a_runtime_error_with_the_fix(tmp_path):
    r = conch_cmd("train", "--device", "cuda", "--out", str(tmp_path))
    assert r.returncode == 1
    line = one_error_line(r, "conch: error: --device cuda: no usable GPU")
    assert "--device cpu" in line and len(r.stderr.strip().splitlines()) == 1


def test_traceback_flag_and_conch_debug_show_the_trace(tmp_path):
    bad = tmp_path / "runs"
    bad.write_text("a file where the folder goes")
    r = conch_cmd("train", "--epochs", "1", "--out", str(bad))
    assert r.returncode == 1 and "cannot create the folder" in one_error_line(r, "conch: error: --out")
    r = conch_cmd("train", "--epochs", "1", "--out", str(bad), "--traceback")
    assert r.returncode == 1 and "Traceback (most recent call last)" in r.stderr
    r = conch_cmd("train", "--epochs", "1", "--out", str(bad), env={"CONCH_DEBUG": "1"})
    assert "Traceback (most recent call last)" in r.stderr


def test_corrupt_checkpoint_says_delete_it_or_drop_resume(tmp_path):
    (tmp_path / "mlp.ckpt").write_bytes(b"not a checkpoint")
    r = conch_cmd("train", "--epochs", "1", "--resume", "--out", str(tmp_path))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"conch: error: cannot resume from {tmp_path / 'mlp.ckpt'}")
    assert "delete" in lines[1] and "without --resume" in lines[1]


def test_info_into_a_closed_pipe_exits_quietly():
    p = subprocess.Popen(f"{sys.executable} -m conch info | head -1", shell=True, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)  # fmt: skip
    out, err = p.communicate(timeout=60)
    assert out.startswith("conch ") and err == ""


def test_resume_says_what_it_did_and_refuses_changed_settings(tmp_path):
    common = ["train", "--epochs", "2", "--batch-size", "256", "-q", "--no-plot", "--out", str(tmp_path)]
    r = conch_cmd(*common, "--resume")
    assert r.returncode == 0 and f"no checkpoint at {tmp_path / 'mlp.ckpt'}; starting fresh" in r.stdout
    r = conch_cmd(*common, "--resume")
    assert r.returncode == 0 and "resumed from" in r.stdout and "has finished its 2 epochs" in r.stdout
    assert "trained in" not in r.stdout and r.stdout.strip().splitlines()[-1].startswith("test accuracy: ")
    # flags left out take the checkpoint's values; a given one that differs is refused, by name
    r = conch_cmd("train", "-q", "--no-plot", "--out", str(tmp_path), "--resume")
    assert r.returncode == 0 and "finished its 2 epochs" in r.stdout
    r = conch_cmd(*common[:-2], "--batch-size", "128", "--out", str(tmp_path), "--resume")
    assert r.returncode == 1
    assert "drop those flags" in one_error_line(r, "drop those flags")
    assert "settings differ (--batch-size: checkpoint 256, now 128)" in r.stderr


def test_quiet_prints_only_results_and_progress_never_lands_on_the_bar(tmp_path):
    r = conch_cmd("train", "--epochs", "1", "--batch-size", "256", "-q", "--no-plot", "--out", str(tmp_path))
    assert r.returncode == 0 and r.stderr == ""
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("trained in ") and lines[1].startswith("test accuracy: "), lines
    # not quiet but piped: tqdm draws no bar into a pipe, the per-epoch lines go to stdout whole
    r = conch_cmd("train", "--epochs", "1", "--batch-size", "256", "--no-plot", "--out", str(tmp_path / "b"))
    assert r.returncode == 0 and "\r" not in r.stderr and "epoch   1  train loss" in r.stdout


def _gpt_args(tmp_path, *more):
    text = tmp_path / "t.txt"
    if not text.exists():
        text.write_text("the quick brown fox jumps over the lazy dog\n" * 40)
    return ["train", "--model", "gpt", "--text", str(text), "--block-size", "16", "--batch-size", "4",
            "--out", str(tmp_path), *more]  # fmt: skip


def test_gpt_saves_a_checkpoint_and_resumes_bitwise(tmp_path):
    from conch.__main__ import main

    full, part = tmp_path / "full", tmp_path / "part"
    full.mkdir()
    part.mkdir()
    assert main(_gpt_args(full, "--steps", "4", "-q")) == 0
    assert main(_gpt_args(part, "--steps", "4", "-q", "--stop-after", "2")) == 0
    assert conch.load(part / "gpt.ckpt")["step"] == 2
    assert main(_gpt_args(part, "--steps", "4", "-q", "--resume")) == 0
    a, b = conch.load(full / "gpt.ckpt"), conch.load(part / "gpt.ckpt")
    assert a["step"] == b["step"] == 4
    for k in a["model"]:
        assert (a["model"][k] == b["model"][k]).all(), k
    r = conch_cmd(*_gpt_args(part, "--steps", "4", "-q", "--resume", "--block-size", "8"))
    assert r.returncode == 1 and "settings differ (--block-size: checkpoint 16, now 8)" in r.stderr


def test_ctrl_c_saves_a_resumable_checkpoint_and_exits_130(tmp_path):
    args = _gpt_args(tmp_path, "--steps", "100000", "--save-every", "100000")
    p = subprocess.Popen([sys.executable, "-m", "conch", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)  # fmt: skip
    try:
        assert p.stdout.readline().startswith("training a char-level GPT")
        time.sleep(1.0)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 130, err
    assert "Traceback" not in err and "--resume" in err and "interrupted at step" in err
    step = conch.load(tmp_path / "gpt.ckpt")["step"]
    assert step >= 1
    r = conch_cmd(*_gpt_args(tmp_path, "--steps", str(step + 1), "-q", "--resume"))
    assert r.returncode == 0 and f"resumed from {tmp_path / 'gpt.ckpt'} at step {step} of {step + 1}" in r.stdout


def test_ctrl_c_mid_epoch_resumes_to_the_uninterrupted_run(tmp_path):
    # batch size 1: an epoch is ~1300 steps, so the signal lands inside epoch 2 and the loader's position counts
    common = ["train", "--epochs", "3", "--batch-size", "1", "--no-plot"]
    assert conch_cmd(*common, "-q", "--out", str(tmp_path / "full")).returncode == 0
    p = subprocess.Popen([sys.executable, "-m", "conch", *common, "--out", str(tmp_path / "part")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        while not p.stdout.readline().startswith("epoch   1"):
            pass
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 130 and "interrupted" in err and "--resume" in err, err
    r = conch_cmd(*common, "-q", "--out", str(tmp_path / "part"), "--resume")
    assert r.returncode == 0 and "resumed from" in r.stdout
    a, b = conch.load(tmp_path / "full" / "mlp.ckpt"), conch.load(tmp_path / "part" / "mlp.ckpt")
    for k in a["model"]:
        assert (a["model"][k] == b["model"][k]).all(), k
    assert a["extra"]["history"]["train_loss"] == b["extra"]["history"]["train_loss"]


def test_bench_default_table_fits_120_columns_without_empty_columns_or_peaks_above_100(tmp_path):
    r = conch_cmd("bench", "softmax,matmul", "--sizes", "128", "--repeats", "2", "--no-torch", "--cpu",
                  "--json", str(tmp_path / "k.json"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("op "))
    table = lines[start : next(i for i in range(start, len(lines)) if not lines[i].strip() or lines[i][0] == "v")]
    assert all(len(line) <= 120 for line in table), table
    header = table[0].split("  ")
    assert "vs torch" not in table[0] and "baseline" not in table[0]  # no PyTorch: no all-`-` column
    col = table[0].index("% peak")
    for row in table[2:]:
        assert float(row[col:].split()[0].rstrip("*")) <= 100.0, row
    assert len(header) > 5
    r = conch_cmd("bench", "softmax", "--sizes", "128", "--repeats", "2", "--no-torch", "--cpu", "--wide")
    assert r.returncode == 0 and "baseline" in r.stdout and "max rel err" in r.stdout


def test_bench_peaks_are_the_best_of_two_and_percentages_are_capped():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import harness

    env = harness.Env.detect(force_cpu=True)
    env.peaks = {"copy": {"gbps": 1e-6, "how": "a tiny stand-in peak"}}  # as if measured on a swamped machine
    notes = harness.remeasure_peaks(env)
    assert env.peaks["copy"]["gbps"] > 1e-6 and env.peaks["copy"]["before"] == 1e-6 and "busy" in notes[0]
    peak = env.peaks["copy"]["gbps"]
    rows = [{"throughput": 2 * peak, "unit": "GB/s", "pct_peak": 500.0, "dtype": "float32"},
            {"throughput": peak / 4, "unit": "GB/s", "pct_peak": 1e8, "dtype": "float32"}]  # fmt: skip
    assert harness.apply_peaks(env, rows) == 1
    assert rows[0]["pct_peak"] == 100.0 and rows[0]["pct_peak_measured"] == pytest.approx(200.0)
    assert rows[1]["pct_peak"] == pytest.approx(25.0)
    shown = harness.table_rows(rows)
    assert [r["pct_peak_str"] for r in shown] == ["100.0*", "25.0"]
    cols = [("a", "throughput", ".1f"), ("b", "torch_ms", ".1f")]
    assert harness.nonempty_columns(rows, cols) == cols[:1]


def test_bench_families_are_all_documented_and_listed_in_help():
    from conch.bench import FAMILIES

    with open(os.path.join(ROOT, "docs", "benchmarks.md")) as f:
        doc = f.read()
    para = doc[doc.index("`KERNEL` is a family") :].split("\n\n")[0]
    r = conch_cmd("bench", "--help")
    for fam in FAMILIES:
        assert f"`{fam}`" in para, fam
        assert fam in r.stdout, fam
