"""Launch plumbing shared by every kernel: array namespaces, the Triton argument adapter, dispatch."""

from __future__ import annotations

import collections
import os

import numpy as np

from ._cupy import is_cupy_array

_FLOAT_DTYPES = None


def xp_of(a):
    """The array namespace of ``a``: ``numpy`` for NumPy arrays, ``cupy`` for CuPy arrays."""
    if is_cupy_array(a):
        from ._cupy import get_cupy

        return get_cupy()
    return np


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def kernel_mode() -> str:
    """The value of ``CONCH_KERNELS``: ``auto`` (default), ``triton`` or ``reference``."""
    mode = os.environ.get("CONCH_KERNELS", "auto").strip().lower() or "auto"
    if mode not in ("auto", "triton", "reference"):
        raise ValueError(f"CONCH_KERNELS must be 'auto', 'triton' or 'reference', got {mode!r}")
    return mode


def use_triton(*arrays) -> bool:
    """Decide, per call, whether a kernel takes its Triton path or its reference path.

    CuPy arrays go to Triton; NumPy arrays go to Triton only under ``TRITON_INTERPRET=1``
    (the CPU test mode) and to the NumPy reference path otherwise. ``CONCH_KERNELS=reference``
    forces the reference path everywhere; ``CONCH_KERNELS=triton`` forces Triton, which for
    NumPy arrays needs the interpreter.
    """
    mode = kernel_mode()
    if mode == "reference":
        return False
    on_gpu = any(is_cupy_array(a) for a in arrays if a is not None)
    if on_gpu or interpreting():
        return True
    if mode == "triton":
        raise RuntimeError(
            "CONCH_KERNELS=triton but the arrays are NumPy arrays and TRITON_INTERPRET is not set: "
            "set TRITON_INTERPRET=1 to run Triton kernels on the CPU, or use CONCH_KERNELS=auto"
        )
    return False


class _HostArray:
    """A NumPy array dressed as the torch tensor that Triton's interpreter expects.

    The interpreter copies every pointer argument to the host and back through a
    ``untyped_storage()/new_empty/set_/copy_`` protocol. NumPy buffers already live on the
    host, so each step hands back the same object and the kernel works on the array in place.
    """

    __slots__ = ("a", "dtype")

    def __init__(self, a):
        self.a = a
        self.dtype = a.dtype

    def data_ptr(self):
        return self.a.ctypes.data

    def untyped_storage(self):
        return self

    def cpu(self):
        return self

    def new_empty(self, *args, **kwargs):
        return self

    def set_(self, *args, **kwargs):
        return self

    def copy_(self, other):
        return self

    def storage_offset(self):
        return 0

    def size(self):
        return self.a.shape

    def stride(self):
        return tuple(s // self.a.itemsize for s in self.a.strides)


class _DeviceArray:
    """A CuPy array as Triton's launcher reads it: ``data_ptr()`` and a NumPy ``dtype``."""

    __slots__ = ("a", "dtype")

    def __init__(self, a):
        self.a = a
        self.dtype = a.dtype

    def data_ptr(self):
        return self.a.data.ptr


def targ(a):
    """Wrap an array for a Triton launch (``None`` passes through, for optional pointers)."""
    if a is None:
        return None
    if isinstance(a, np.ndarray):
        return _HostArray(a)
    return _DeviceArray(a)


def elem_strides(a):
    """Strides of ``a`` in elements (NumPy and CuPy both report bytes)."""
    return tuple(s // a.itemsize for s in a.strides)


_INTERPRETED: dict = {}

#: Triton launches per kernel name, counted by :func:`kernel_for`; tests read it to prove which path ran.
LAUNCHES: collections.Counter = collections.Counter()


def _rebind_for_interpreter(fn):
    """Copy ``fn`` with every ``@triton.jit`` helper it names swapped for an interpreted twin.

    Triton picks compiled or interpreted mode when ``@triton.jit`` decorates a function, from
    ``TRITON_INTERPRET`` at import time. conch decides per call instead (NumPy arrays to the
    interpreter, CuPy arrays to the compiler, in the same process), so the interpreted twin of a
    kernel must also call interpreted twins of its helpers. Helpers must therefore be referenced
    by bare global name inside kernels (``gelu(x)``, not ``module.gelu(x)``).
    """
    import types

    from triton.runtime.jit import JITFunction

    g = dict(fn.__globals__)
    for name in fn.__code__.co_names:
        val = g.get(name)
        if isinstance(val, JITFunction):
            g[name] = interpreted(val)
    return types.FunctionType(fn.__code__, g, fn.__name__, fn.__defaults__, fn.__closure__)


def interpreted(jitfn):
    """The interpreter's twin of a ``@triton.jit`` function, built once and cached."""
    twin = _INTERPRETED.get(id(jitfn))
    if twin is None:
        from triton.runtime.interpreter import InterpretedFunction

        twin = InterpretedFunction(_rebind_for_interpreter(jitfn.fn))
        _INTERPRETED[id(jitfn)] = twin
    return twin


def kernel_for(jitfn, *arrays):
    """``jitfn`` itself for CuPy arrays, its interpreted twin for NumPy arrays.

    Usage: ``kernel_for(_my_kernel, x)[grid](targ(x), ..., BLOCK=...)``.
    """
    LAUNCHES[jitfn.fn.__name__] += 1
    if any(isinstance(a, np.ndarray) for a in arrays if a is not None):
        return interpreted(jitfn)
    return jitfn
