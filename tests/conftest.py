"""Shared test fixtures: the device under test comes from CONCH_TEST_DEVICE (cpu by default)."""

import os

import numpy as np
import pytest

import conch

DEVICE = os.environ.get("CONCH_TEST_DEVICE", "cpu")
if DEVICE.startswith("cuda") and not conch.cuda.is_available():
    raise pytest.UsageError("CONCH_TEST_DEVICE=cuda but conch.cuda.is_available() is False")


@pytest.fixture
def device():
    """The device tests run on: 'cpu', or 'cuda' when CONCH_TEST_DEVICE=cuda."""
    return DEVICE


@pytest.fixture(params=["numba", "numpy"])
def cpu_path(request):
    """Runs a test once per CPU path: the Numba-compiled kernels and the NumPy reference (kernels/_jit.py)."""
    from conch.kernels import _jit

    if request.param == "numba" and not _jit._probe():
        pytest.skip("Numba is not importable here or CONCH_NUMBA=0: only the NumPy path runs")
    prev = _jit.set_enabled(request.param == "numba")
    yield request.param
    _jit.set_enabled(prev)


@pytest.fixture(autouse=True)
def _seed():
    conch.manual_seed(0)
    np.random.seed(0)
    yield
    # a GPU range check that failed raises at the next host sync: read what a test left, so that a failure
    # fails that test (in its teardown), not whichever test syncs next on the same worker
    from conch.kernels import _deferred

    if _deferred.pending():
        try:
            _deferred.raise_pending()
        finally:
            _deferred._PENDING.clear()


requires_gpu = pytest.mark.skipif(not conch.cuda.is_available(), reason="needs a CUDA GPU (conch.cuda.is_available())")
