"""Fixtures for kernel tests: run the Triton path under the interpreter, on the CPU, per test."""

import numpy as np
import pytest
from devices import ON_GPU


@pytest.fixture
def interpret(monkeypatch):
    """Route NumPy arrays to the Triton kernels (through Triton's interpreter) for this test."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("CONCH_KERNELS", "auto")


@pytest.fixture
def triton_path(request, monkeypatch):
    """Triton kernels: compiled on the GPU (CONCH_TEST_DEVICE=cuda), interpreted on the CPU."""
    if ON_GPU:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        monkeypatch.setenv("CONCH_KERNELS", "auto")
    else:
        request.getfixturevalue("interpret")


@pytest.fixture
def reference(monkeypatch):
    """Force the reference path for this test."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("CONCH_KERNELS", "reference")


@pytest.fixture
def rng():
    return np.random.default_rng(0)
