"""The examples in docs/tensors.md run as written (each fenced python block, in a fresh namespace)."""

import pathlib
import re

import pytest

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "tensors.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S) if DOC.exists() else []


@pytest.mark.skipif(not BLOCKS, reason="docs/tensors.md not found next to tests/")
@pytest.mark.parametrize("k", range(len(BLOCKS)) if BLOCKS else [0])
def test_tensors_md_example_runs(k, capsys):
    exec(compile(BLOCKS[k], f"{DOC.name}[block {k}]", "exec"), {"__name__": "__docs__"})
