"""glibc malloc settings (kernels/_malloc.py): a large array freed and allocated again reuses its pages."""

import os
import subprocess
import sys

import pytest

from conch.kernels import _malloc

# 40 MiB arrays: above glibc's largest dynamic mmap threshold (32 MiB), so without the settings every
# allocation maps fresh pages (10,240 4-KiB faults each, fewer where NumPy asks for transparent huge pages:
# ~530 seen here); with them the heap's pages are reused after the first.
CODE = """
import resource, numpy as np, conch
from conch.kernels import _malloc
n = 10 * (1 << 20)
a = np.ones(n, np.float32); del a
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    a = np.ones(n, np.float32); del a
print(_malloc.tune(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
"""


def _faults(**env):
    r = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env={**os.environ, **env})
    assert r.returncode == 0, r.stderr
    applied, faults = r.stdout.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(_malloc._glibc_mallopt() is None, reason="glibc's mallopt only (this C library has none)")
def test_large_arrays_reuse_pages():
    applied, faults = _faults()
    assert applied
    assert faults < 100, faults
    applied, faults = _faults(CONCH_MALLOC="system")
    assert not applied
    assert faults >= 1000, faults  # glibc's defaults: fresh pages for every array (the test can tell them apart)
