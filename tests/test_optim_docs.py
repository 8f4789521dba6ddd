"""The examples in docs/training.md run as written (each fenced python block, in a fresh namespace)."""

import pathlib
import re

import pytest

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "training.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S) if DOC.exists() else []


@pytest.mark.skipif(not BLOCKS, reason="docs/training.md not found next to tests/")
@pytest.mark.parametrize("k", range(len(BLOCKS)) if BLOCKS else [0])
def test_training_md_example_runs(k, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the examples write their checkpoints to the current folder
    exec(compile(BLOCKS[k], f"{DOC.name}[block {k}]", "exec"), {"__name__": "__docs__"})
    out = capsys.readouterr().out
    if "test accuracy:" in out:  # the full training loop learns the digits
        assert float(out.strip().splitlines()[-1].rsplit(" ", 1)[-1]) > 0.9
