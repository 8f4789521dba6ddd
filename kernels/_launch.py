"""Launch plumbing shared by every kernel: array namespaces, the Triton argument adapter, dispatch."""

from __future__ import annotations

import collections
import contextlib
import os
import sys

import numpy as np

from ._cupy import is_cupy_array

# os.environ's own bytes dict (POSIX): os.environ[...] = ... and monkeypatch.setenv update it, and one dict
# lookup costs ~50 ns against ~800 ns for os.environ.get, which matters at one dispatch per fused op.
_RAW_ENV = getattr(os.environ, "_data", None)
if not (isinstance(_RAW_ENV, dict) and all(isinstance(k, bytes) for k in list(_RAW_ENV)[:1])):
    _RAW_ENV = None


def _env(key: str, default: str | None = None) -> str | None:
    if _RAW_ENV is None:
        return os.environ.get(key, default)
    v = _RAW_ENV.get(key.encode())
    return default if v is None else v.decode()


class DtypeSet(frozenset):
    """dtypes named, not held: ``x.dtype in DtypeSet(("float32", "bfloat16"))`` tests the dtype's name, so listing
    bfloat16 imports nothing (ml_dtypes loads with the first bfloat16 array: no array holds it before)."""

    __slots__ = ()

    def __contains__(self, dtype):
        return frozenset.__contains__(self, getattr(dtype, "name", dtype))


def xp_of(a):
    """The array namespace of ``a``: ``numpy`` for NumPy arrays, ``cupy`` for CuPy arrays."""
    if is_cupy_array(a):
        from ._cupy import get_cupy

        return get_cupy()
    return np


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU (``TRITON_INTERPRET=1``)."""
    return _env("TRITON_INTERPRET", "0") not in ("", "0")


def kernel_mode() -> str:
    """The value of ``CONCH_KERNELS``: ``auto`` (default), ``triton`` or ``reference``."""
    mode = (_env("CONCH_KERNELS", "auto") or "auto").strip().lower() or "auto"
    if mode not in ("auto", "triton", "reference"):
        raise ValueError(f"CONCH_KERNELS must be 'auto', 'triton' or 'reference', got {mode!r}")
    return mode


def use_triton(*arrays) -> bool:
    """Decide, per call, whether a kernel takes its Triton path or its reference path.

    CuPy arrays go to Triton; NumPy arrays go to Triton only under ``TRITON_INTERPRET=1``
    (the CPU test mode) and to the NumPy reference path otherwise. ``CONCH_KERNELS=reference``
    forces the reference path everywhere; ``CONCH_KERNELS=triton`` forces Triton, which for
    NumPy arrays needs the interpreter. Called on every fused op, so it reads the environment
    directly (tests change it per test) and checks array types without importing CuPy.
    """
    mode = _env("CONCH_KERNELS")
    if mode is not None and mode != "auto":
        mode = kernel_mode()
        if mode == "reference":
            return False
    for a in arrays:
        if a is not None and type(a) is not np.ndarray and is_cupy_array(a):
            return True
    if _env("TRITON_INTERPRET", "0") not in ("", "0"):
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


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for grid sizes, as ``triton.cdiv`` (here so that launchers need not import Triton)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of 2 >= ``n`` (0 for ``n <= 0``), as ``triton.next_power_of_2``: 5 -> 8, 8 -> 8."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


class TritonKernel:
    """A ``@triton.jit`` kernel of ``conch.kernels._triton.<family>``, imported at its first launch.

    The kernel modules keep their reference paths and launchers; their Triton code lives in ``kernels/_triton/``
    so that the CPU reference path never imports Triton (0.3 s and ~76 MiB). A launcher names the kernel as
    before, ``kernel_for(_my_kernel, x)[grid](...)``, and :func:`kernel_for` resolves the handle. Example::

        _act_fwd_kernel = TritonKernel("activations", "_act_fwd_kernel")
        _act_fwd_kernel.resolve()  # the JITFunction (imports Triton and the family module once)
    """

    __slots__ = ("family", "name", "_jitfn")

    def __init__(self, family: str, name: str):
        self.family = family
        self.name = name
        self._jitfn = None

    def resolve(self):
        """The ``JITFunction``; the family module is imported with ``TRITON_INTERPRET`` unset (see kernels/__init__)."""
        jitfn = self._jitfn
        if jitfn is None:
            from . import _import_compiled

            jitfn = self._jitfn = getattr(_import_compiled(f"{__package__}._triton.{self.family}"), self.name)
        return jitfn

    def __repr__(self):
        return f"TritonKernel({self.family!r}, {self.name!r})"


_INTERPRETED: dict = {}

#: Triton launches per kernel name, counted by :func:`kernel_for`; tests read it to prove which path ran.
LAUNCHES: collections.Counter = collections.Counter()
#: The autotuner's trial launches (probes and timing runs), kept apart so LAUNCHES counts the op's own work.
TUNING_LAUNCHES: collections.Counter = collections.Counter()
_TUNING = [0]


@contextlib.contextmanager
def tuning():
    """Count the launches made inside as :data:`TUNING_LAUNCHES` (the autotuner wraps its trial runs)."""
    _TUNING[0] += 1
    try:
        yield
    finally:
        _TUNING[0] -= 1


def _rebind_for_interpreter(fn):
    """Copy ``fn`` with every ``@triton.jit`` helper it names swapped for an interpreted twin.

    Triton picks compiled or interpreted mode when ``@triton.jit`` decorates a function, from
    ``TRITON_INTERPRET`` at import time. conch decides per call instead (NumPy arrays to the
    interpreter, CuPy arrays to the compiler, in the same process), so the interpreted twin of a
    kernel must also call interpreted twins of its helpers. Helpers must therefore be referenced
    by bare global name inside kernels (``gelu(x)``, not ``module.gelu(x)``); ``tl.*`` library
    functions are handled by :func:`_interpreter_stdlib`. Private names (``_sum_combine``...) are
    left alone: the interpreter recognises Triton's own combine functions by identity and takes
    its fast NumPy path for them.
    """
    import types

    from triton.runtime.jit import JITFunction

    g = dict(fn.__globals__)
    for name in fn.__code__.co_names:
        val = g.get(name)
        if isinstance(val, JITFunction) and not (name.startswith("_") and val.fn.__module__.startswith("triton.")):
            g[name] = interpreted(val)
    return types.FunctionType(fn.__code__, g, fn.__name__, fn.__defaults__, fn.__closure__)


@contextlib.contextmanager
def _interpreter_stdlib():
    """While an interpreted kernel runs, let ``tl.sum``, ``tl.max``, ``x.sum()``... be interpreted too.

    These library functions are ``@triton.jit`` functions compiled-mode objects unless
    ``TRITON_INTERPRET`` was set at import; they are swapped for interpreted twins for the
    duration of the launch and restored afterwards, so compiled launches are unaffected.
    """
    import triton.language as tl
    from triton.runtime.jit import JITFunction

    try:  # imported lazily by Triton's argument handling; it must see the unpatched library
        import triton.experimental.gluon  # noqa: F401
    except ImportError:
        pass
    # Triton's interpreter patches tl, tl.core, tl.math and the tensor/dtype classes each time an interpreted
    # device function is called (InterpretedFunction.__call__ -> _patch_lang) and never undoes it; left in place,
    # every later compile in the process fails ("'value' object has no attribute 'dtype'"). Snapshot all of
    # them here and put every attribute back afterwards, which also undoes the swaps below.
    snapshot = _lang_snapshot()
    for obj in (tl, tl.standard, tl.math, tl.tensor):
        for name, val in list(vars(obj).items()):
            if isinstance(val, JITFunction) and not name.startswith("_"):
                twin = interpreted(val)
                setattr(obj, name, _as_method(twin) if obj is tl.tensor else twin)
    try:
        yield
    finally:
        _lang_restore(snapshot)


def _lang_objects():
    """The modules and classes Triton's interpreter may patch: triton.language's modules and core classes."""
    import inspect

    import triton.language as tl

    objs = {id(tl): tl}
    for mod in (getattr(tl, "core", None), getattr(tl, "math", None), getattr(tl, "standard", None)):
        if mod is not None:
            objs[id(mod)] = mod
    core = getattr(tl, "core", tl)
    for val in list(vars(core).values()):
        if inspect.isclass(val) and getattr(val, "__module__", "").startswith("triton.language"):
            objs[id(val)] = val
    return list(objs.values())


def _lang_snapshot():
    return [(obj, dict(vars(obj))) for obj in _lang_objects()]


def _lang_restore(snapshot):
    missing = object()
    for obj, before in snapshot:
        now = vars(obj)
        for name in [n for n in now if n not in before]:
            try:
                delattr(obj, name)
            except (AttributeError, TypeError):
                pass
        for name, val in before.items():
            if now.get(name, missing) is not val:
                setattr(obj, name, val)


def _as_method(twin):
    # an InterpretedFunction is no descriptor; a plain function binds ``self`` for ``x.sum()``
    def method(self, *args, **kwargs):
        return twin(self, *args, **kwargs)

    return method


def interpreted(jitfn):
    """The interpreter's twin of a ``@triton.jit`` function, built once and cached."""
    twin = _INTERPRETED.get(id(jitfn))
    if twin is None:
        from triton.runtime.interpreter import InterpretedFunction

        from ._triton_compat import interpreter_fixes

        class _Twin(InterpretedFunction):
            def run(self, *args, **kwargs):
                with _interpreter_stdlib(), interpreter_fixes():
                    return super().run(*args, **kwargs)

        twin = _Twin(_rebind_for_interpreter(jitfn.fn))
        _INTERPRETED[id(jitfn)] = twin
    return twin


def kernel_for(jitfn, *arrays):
    """``jitfn`` itself for CuPy arrays, its interpreted twin for NumPy arrays.

    Usage: ``kernel_for(_my_kernel, x)[grid](targ(x), ..., BLOCK=...)``; ``jitfn`` may be a :class:`TritonKernel`.
    """
    if type(jitfn) is TritonKernel:
        jitfn = jitfn.resolve()
    (TUNING_LAUNCHES if _TUNING[0] else LAUNCHES)[jitfn.fn.__name__] += 1
    if any(isinstance(a, np.ndarray) for a in arrays if a is not None):
        return interpreted(jitfn)
    sim = sys.modules.get("conch.kernels.sim")
    if sim is not None and sim.INSTALLED:  # the simulated GPU: compile check, then the interpreted twin
        from .sim.launch import Launcher

        return Launcher(jitfn)
    return jitfn
