"""Triton launches on the simulated device: an optional offline compile check, then the interpreted kernel."""

from __future__ import annotations

import os

from .._launch import _DeviceArray, _HostArray, interpreted
from ._core import ndarray

try:  # written separately: compiles the specialization for sm_90 and raises on resource excess
    from . import compile as _compile
except ImportError:
    _compile = None


def _host(x):
    if isinstance(x, _DeviceArray):
        return _HostArray(x.a._a if isinstance(x.a, ndarray) else x.a)
    if isinstance(x, ndarray):
        return _HostArray(x._a)
    return x


class Launcher:
    """``Launcher(jitfn)[grid](*args, **kwargs)``: what ``jitfn[grid](...)`` does on a GPU, run on the CPU."""

    __slots__ = ("jitfn",)

    def __init__(self, jitfn):
        self.jitfn = jitfn

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            if _compile is not None and os.environ.get("CONCH_SIM_COMPILE", "1") != "0":
                _compile.check(self.jitfn, grid, args, kwargs)
            args = [_host(a) for a in args]
            kwargs = {k: _host(v) for k, v in kwargs.items()}
            if kwargs.get("UPCAST") is False:
                # the interpreter's tl.dot multiplies raw bf16 bits: kernels upcast their tiles under this flag,
                # which launchers set only for NumPy arrays (the GPU compiles the kernel without it)
                kwargs["UPCAST"] = any(isinstance(a, _HostArray) and a.dtype.name == "bfloat16" for a in args)
            return interpreted(self.jitfn)[grid](*args, **kwargs)

        return run
