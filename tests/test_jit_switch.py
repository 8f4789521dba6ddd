"""The switch of the compiled CPU kernels (kernels/_jit.py): on by default with Numba, off by environment."""

import os
import subprocess
import sys

import pytest

from conch.kernels import _jit


def _run(code, **env):
    e = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e)


def test_environment_turns_it_off():
    r = _run("from conch.kernels import _jit; print(_jit.enabled())", CONCH_NUMBA="0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_numba_without_its_jit_keeps_numpy():
    """NUMBA_DISABLE_JIT=1 would run every kernel as a Python loop over elements: the NumPy path runs instead."""
    r = _run("from conch.kernels import _jit; print(_jit.enabled())", NUMBA_DISABLE_JIT="1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_set_enabled_round_trip(cpu_path):
    assert _jit.enabled() is (cpu_path == "numba")
    prev = _jit.set_enabled(False)
    try:
        assert _jit.enabled() is False
    finally:
        _jit.set_enabled(prev)
    assert _jit.enabled() is (cpu_path == "numba")


def test_set_enabled_refuses_without_numba():
    code = "from conch.kernels import _jit\ntry:\n    _jit.set_enabled(True)\nexcept RuntimeError as e:\n    print(e)"
    r = _run(code, CONCH_NUMBA="0")
    assert "need Numba" in r.stdout, r.stdout + r.stderr


def test_family_imports_numba_lazily():
    pytest.importorskip("numba", reason="Numba is a dependency; this checks only where it is installed")
    code = (
        "import sys; import conch; from conch.kernels import _jit; assert 'numba' not in sys.modules; "
        "import conch.kernels._numba as m; print('numba' in sys.modules, callable(m.njit))"
    )
    r = _run(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "True True"
