"""The device kernel tests run on: NumPy arrays by default, CuPy arrays when CONCH_TEST_DEVICE=cuda."""

import os

import numpy as np
import pytest

from conch.kernels._cupy import get_cupy, is_cupy_array, unavailable_reason

ON_GPU = os.environ.get("CONCH_TEST_DEVICE", "cpu").startswith("cuda")
# the simulated GPU (CONCH_SIMULATE_GPU=1) runs Triton kernels through the interpreter, with its rounding
SIMULATED = ON_GPU and os.environ.get("CONCH_SIMULATE_GPU", "").strip().lower() not in ("", "0", "false", "no", "off")


def dev(a):
    """``a`` on the test device (a CuPy copy when CONCH_TEST_DEVICE=cuda; skips when no GPU is usable)."""
    if not ON_GPU or a is None:
        return a
    cp = get_cupy()
    if cp is None:
        pytest.skip(f"CONCH_TEST_DEVICE=cuda but no GPU is usable: {unavailable_reason()}")
    return cp.asarray(a)


def host(a):
    """``a`` as a NumPy array (copied from the GPU when needed); ``None`` stays ``None``."""
    if a is None:
        return None
    return a.get() if is_cupy_array(a) else np.asarray(a)
