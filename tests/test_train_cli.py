"""The `conch` command end to end on tiny budgets: train (digits MLP/CNN, GPT), resume, info, demo."""

import os
import subprocess
import sys

import numpy as np

import conch
from conch.__main__ import main


def test_train_mlp_reaches_good_accuracy_and_prints_last_line(tmp_path, capsys):
    assert main(["train", "--epochs", "12", "--quiet", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("test accuracy: ")
    acc = float(lines[-1].split(": ")[1])
    assert len(lines[-1].split(": ")[1]) == 6  # 0.NNNN
    assert acc >= 0.95, lines[-3:]
    assert (tmp_path / "mlp.ckpt").exists() and (tmp_path / "mlp_curves.png").stat().st_size > 1000


def _params(path):
    st = conch.load(path)
    return {k: np.asarray(v) for k, v in st["model"].items()}


def test_interrupted_run_resumes_bitwise(tmp_path, capsys):
    full, part = tmp_path / "full", tmp_path / "part"
    common = ["train", "--epochs", "3", "--quiet", "--no-plot", "--batch-size", "128"]
    main([*common, "--out", str(full)])
    main([*common, "--out", str(part), "--stop-after", "1"])
    assert "continue with --resume" in capsys.readouterr().out
    main([*common, "--out", str(part), "--resume"])
    out = capsys.readouterr().out
    assert "resumed from" in out
    a, b = _params(full / "mlp.ckpt"), _params(part / "mlp.ckpt")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_train_cnn_and_amp_run(tmp_path, capsys):
    main(["train", "--model", "cnn", "--epochs", "1", "--quiet", "--no-plot", "--out", str(tmp_path)])
    main(["train", "--epochs", "2", "--amp", "fp16", "--checkpointing", "--quiet", "--no-plot", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert out.count("test accuracy: ") == 2


def test_train_gpt_on_a_text_file(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 40)
    main(["train", "--model", "gpt", "--text", str(text), "--steps", "8", "--block-size", "16", "--batch-size", "4",
          "--quiet"])  # fmt: skip
    out = capsys.readouterr().out
    assert "validation loss" in out and "sample:" in out


def test_train_gpt_rejects_a_too_short_text(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("abc")
    assert main(["train", "--model", "gpt", "--text", str(text), "--steps", "1", "--quiet"]) == 1
    assert "too short" in capsys.readouterr().err


def test_info_and_demo_run_as_module():
    env = dict(os.environ)
    r = subprocess.run([sys.executable, "-m", "conch", "info"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and "conch" in r.stdout and "numpy" in r.stdout
    r = subprocess.run([sys.executable, "-m", "conch", "demo", "--steps", "100"], capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    assert r.returncode == 0
    losses = [float(line.split()[-1]) for line in r.stdout.splitlines() if line.startswith("step")]
    assert losses[-1] < 0.5 * losses[0]
