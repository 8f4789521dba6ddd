"""The python examples of README.md and docs/*.md run as written (each page's blocks in order, in one namespace).

A block whose text contains the line comment ``# needs a GPU`` runs only when ``conch.cuda.is_available()``.
docs/training.md has its own test (tests/test_optim_docs.py).
"""

import pathlib
import re

import pytest

import conch

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = ["README.md", "docs/tensors.md", "docs/nn.md", "docs/mixed_precision.md", "docs/checkpointing.md",
         "docs/design.md", "docs/porting.md"]  # fmt: skip
GPU_MARK = re.compile(r"^\s*# needs a GPU\b", re.M)


def blocks(page):
    """The ```python fenced blocks of ``page``, in order."""
    path = ROOT / page
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), re.S | re.M) if path.exists() else []


@pytest.mark.parametrize("page", PAGES)
def test_page_examples_run(page, tmp_path, monkeypatch, capsys):
    found = blocks(page)
    if not found:
        pytest.skip(f"{page} not found next to tests/ or has no python blocks")
    monkeypatch.chdir(tmp_path)  # an example that writes a file writes it here
    ns = {"__name__": "__docs__"}
    ran = 0
    for k, code in enumerate(found):
        if GPU_MARK.search(code) and not conch.cuda.is_available():
            continue
        exec(compile(code, f"{page}[block {k}]", "exec"), ns)
        ran += 1
    assert ran > 0, f"every python block of {page} needs a GPU: nothing was checked"


def test_gpu_mark_is_recognised():
    code = "import conch\n# needs a GPU\nx = conch.zeros(2, device='cuda')\n"
    assert GPU_MARK.search(code) and not GPU_MARK.search("x = 1  # does not need a GPU\n")
