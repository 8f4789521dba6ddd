"""Shims for differences between the Triton versions conch runs on (3.6 on the GPU machines, newer in CI)."""

from __future__ import annotations

import contextlib
import re
import sys

_BOUND: dict = {}


def triton_version() -> tuple[int, int]:
    """Triton's ``(major, minor)``; ``(0, 0)`` when the version string cannot be read (treated as old)."""
    import triton

    m = re.match(r"(\d+)\.(\d+)", getattr(triton, "__version__", ""))
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _index(self):
    # The interpreter keeps a scalar as a 1-element 1-d array; numpy >= 2.4 refuses int() of one (it was
    # deprecated since 1.25), so squeeze it to 0-d first, exactly as Triton >= 3.8 does.
    return int(self.handle.data.squeeze())


@contextlib.contextmanager
def interpreter_fixes():
    """Fix Triton < 3.8's interpreter for numpy >= 2.4 while one interpreted launch runs.

    Triton <= 3.6 (3.8 is the first release checked to carry the fix, triton-lang/triton#9171; 3.7 is
    patched too, to be safe) sets ``tl.tensor.__index__`` to ``int(self.handle.data)`` for every launch,
    and a scalar's data is a 1-element 1-d array: ``range(0, n, BLOCK)`` over a runtime ``n`` or
    ``tl.static_range`` bounds then raise ``TypeError: only 0-dimensional arrays can be converted to
    Python scalars`` under numpy >= 2.4. The helper that installs it, ``interpreter._patch_lang_tensor``,
    is wrapped to install the squeezing ``__index__`` after it, through the same restore scope, and put
    back when the launch ends, so nothing outlives conch's launch. No-op on Triton >= 3.8.
    """
    if triton_version() >= (3, 8):
        yield
        return
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "_conch_fix", False):  # nested launch: the outer one already patched it
        yield
        return

    def _patch_lang_tensor(tensor, *args, **kwargs):
        original(tensor, *args, **kwargs)
        scope = args[0] if args else kwargs.get("scope")
        if scope is not None and hasattr(scope, "set_attr"):
            scope.set_attr(tensor, "__index__", _index)  # restored with the interpreter's own patches
        else:  # Triton < 3.4 has no restore scope and leaves its patches installed anyway
            tensor.__index__ = _index

    _patch_lang_tensor._conch_fix = True
    interpreter._patch_lang_tensor = _patch_lang_tensor
    try:
        yield
    finally:
        interpreter._patch_lang_tensor = original


def _cupy_capability(cupy, device):
    cc = cupy.cuda.Device(device).compute_capability  # "90" for sm_90
    return int(cc[:-1]), int(cc[-1])


def _use_cupy(drv, cupy) -> None:
    """Point one Triton CUDA driver's current-device and current-stream queries at CuPy's."""
    drv.get_current_device = cupy.cuda.runtime.getDevice
    drv.set_current_device = cupy.cuda.runtime.setDevice
    # CuPy keeps a current stream per device (``device_id=-1``: the current one); ``.ptr`` is the raw handle,
    # 0 for the legacy default stream and 2 (cudaStreamPerThread) under CuPy's per-thread default stream.
    drv.get_current_stream = lambda device=None: cupy.cuda.get_current_stream(-1 if device is None else device).ptr
    drv.get_device_capability = lambda device=None: _cupy_capability(
        cupy, cupy.cuda.runtime.getDevice() if device is None else device
    )


def bind_to_cupy(cupy) -> bool:
    """Make every compiled Triton launch use CuPy's current device and stream, with or without torch.

    Triton's launcher asks its active driver for ``get_current_device()`` and then
    ``get_current_stream(device)`` on every launch. Left alone, these are torch's when torch is imported
    (Triton 3.6: always, since its ``GPUDriver.__init__`` imports torch), or the device's default stream
    (Triton >= 3.8 without torch), so a kernel could run on another stream than the CuPy ops around it and
    race them. This swaps CuPy's in on the driver Triton creates (``CudaDriver.__init__`` is wrapped: the
    driver is built lazily at the first compile) and on one already built.

    Triton < 3.8 only (3.7 unverified, treated as old): ``CudaDriver.is_active`` is False without torch
    ("0 active drivers") and ``GPUDriver.__init__`` imports torch only to take the four functions replaced
    here, so ``is_active`` becomes True (CuPy has found a CUDA device before this is called) and, when
    torch is not already imported, the driver is built without importing it. Called once, by
    :func:`conch.kernels._cupy.get_cupy` after CuPy found a device; returns False where there is no CUDA
    backend to bind (ROCm CuPy, conch's simulated CuPy, Triton without the nvidia backend) or the binding
    failed: a Triton whose internals moved must not turn the GPU off, so that only warns.
    """
    if _BOUND.get("cupy") is cupy:
        return True
    if getattr(cupy, "__simulated__", False) or getattr(getattr(cupy.cuda, "runtime", None), "is_hip", False):
        return False
    try:
        import importlib

        nv = importlib.import_module("triton.backends.nvidia.driver")
        # the module, whose ``driver`` is the DriverConfig (``from triton.runtime import driver`` gives that object)
        config = importlib.import_module("triton.runtime.driver").driver
    except (ImportError, AttributeError):
        return False
    try:
        _bind(cupy, nv, config)
    except Exception as e:  # any failure here only costs the stream binding, never the GPU
        import warnings

        warnings.warn(
            f"conch could not bind Triton {triton_version()} to CuPy's stream and device: {e!r}", stacklevel=2
        )
        return False
    return True


def _bind(cupy, nv, config) -> None:
    cls = nv.CudaDriver
    original_init = _BOUND.get("init", cls.__init__)
    old = triton_version() < (3, 8)

    def __init__(self):
        if old and sys.modules.get("torch") is None:
            # Triton < 3.8's own __init__ is these two lines plus GPUDriver.__init__ (torch's four functions)
            self.utils = nv.CudaUtils()
            self.launcher_cls = nv.CudaLauncher
        else:
            original_init(self)
        _use_cupy(self, cupy)

    cls.__init__ = __init__
    if old:
        cls.is_active = staticmethod(lambda: True)
    for drv in (getattr(config, "_default", None), getattr(config, "_active", None)):
        if isinstance(drv, cls):
            _use_cupy(drv, cupy)
    _BOUND.update(cupy=cupy, init=original_init)
