"""Triton-version shims: the interpreter's numpy >= 2.4 fix and binding compiled launches to CuPy's stream/device."""

import sys
import types

import numpy as np
import pytest
import triton
import triton.language as tl

from conch.kernels import _triton_compat
from conch.kernels._launch import kernel_for, targ


@triton.jit
def _strided_sum_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    # ``range`` over a runtime bound: the interpreter calls ``tl.tensor.__index__`` on ``n``, which is what
    # Triton < 3.8 does with int() of a 1-element array, refused by numpy >= 2.4
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        acc += tl.load(x_ptr + offs, mask=offs < n, other=0.0)
    tl.store(out_ptr, tl.sum(acc, axis=0))


def test_interpreted_range_over_runtime_bound(interpret):
    from triton.runtime import interpreter

    before = (interpreter._patch_lang_tensor, tl.tensor.__dict__.get("__index__"))
    x = np.arange(37, dtype=np.float32)
    out = np.zeros(1, dtype=np.float32)
    kernel_for(_strided_sum_kernel, x)[(1,)](targ(x), targ(out), x.size, BLOCK=8)
    assert out[0] == x.sum()
    # nothing the shim (or the interpreter) installed outlives the launch
    assert (interpreter._patch_lang_tensor, tl.tensor.__dict__.get("__index__")) == before


class _Scope:
    def __init__(self):
        self.changes = []

    def set_attr(self, obj, name, value):
        self.changes.append((obj, name, getattr(obj, name, None)))
        setattr(obj, name, value)


@pytest.mark.parametrize("version, patched", [((3, 6), True), ((3, 7), True), ((3, 8), False), ((3, 9), False)])
def test_interpreter_fix_is_version_guarded_and_restored(monkeypatch, version, patched):
    from triton.runtime import interpreter

    monkeypatch.setattr(_triton_compat, "triton_version", lambda: version)
    calls = []

    def old_helper(tensor, scope):  # Triton 3.6's: ``int(self.handle.data)``
        calls.append(tensor)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data))

    monkeypatch.setattr(interpreter, "_patch_lang_tensor", old_helper)

    class T:
        handle = types.SimpleNamespace(data=np.array([7], dtype=np.int32))

    with _triton_compat.interpreter_fixes():
        assert (interpreter._patch_lang_tensor is old_helper) is not patched
        with _triton_compat.interpreter_fixes():  # nested: wrapped once
            interpreter._patch_lang_tensor(T, _Scope())
    assert interpreter._patch_lang_tensor is old_helper and calls == [T]
    if patched:
        assert T().__index__() == 7 and type(T().__index__()) is int


# --- binding compiled launches to CuPy's current device and stream ---------------------------------------------


class _StubCuPy:
    """CuPy as far as the binding reads it: two devices, each with its own current stream."""

    def __init__(self):
        self.device = 1
        self.streams = {0: 0x1000, 1: 0x2000}
        rt = types.SimpleNamespace(getDevice=lambda: self.device, setDevice=self._set, is_hip=False)
        self.cuda = types.SimpleNamespace(
            runtime=rt,
            get_current_stream=lambda device_id=-1: types.SimpleNamespace(
                ptr=self.streams[self.device if device_id == -1 else device_id]
            ),
            Device=lambda d: types.SimpleNamespace(compute_capability={0: "80", 1: "90"}[d]),
        )

    def _set(self, d):
        self.device = d


_TORCH = types.SimpleNamespace(  # torch's answers, which must not be the ones launches use
    cuda=types.SimpleNamespace(
        get_device_capability=lambda d=None: (7, 0),
        current_stream=lambda d=None: types.SimpleNamespace(cuda_stream=0xDEAD),
        current_device=lambda: 0,
        set_device=lambda d: None,
        is_available=lambda: True,
    ),
    version=types.SimpleNamespace(hip=None),
)


def _stub_backend(version):
    """The nvidia backend's driver classes as Triton 3.6 or 3.9 writes them, minus the C utilities."""

    class CudaUtils:
        def get_current_device(self):
            return 0

        def get_default_stream(self, device):
            return 0

        def get_device_capability(self, device):
            return (7, 0)

    class GPUDriver:
        def __init__(self):
            import torch  # Triton's own: both versions take these four from torch

            self.get_device_capability = torch.cuda.get_device_capability
            self.get_current_stream = lambda idx: torch.cuda.current_stream(idx).cuda_stream
            self.get_current_device = torch.cuda.current_device
            self.set_current_device = torch.cuda.set_device

    if version < (3, 8):

        class CudaDriver(GPUDriver):
            def __init__(self):
                self.utils = CudaUtils()
                self.launcher_cls = object
                super().__init__()

            @staticmethod
            def is_active():
                try:
                    import torch

                    return torch.cuda.is_available()
                except ImportError:
                    return False

    else:

        class CudaDriver(GPUDriver):
            def __init__(self):
                self.utils = CudaUtils()
                self.launcher_cls = object
                if sys.modules.get("torch") is not None:
                    super().__init__()
                else:
                    self.get_device_capability = self.utils.get_device_capability
                    self.get_current_stream = self.utils.get_default_stream
                    self.get_current_device = self.utils.get_current_device
                    self.set_current_device = lambda d: None

            @staticmethod
            def is_active():
                return True

    nv = types.SimpleNamespace(CudaDriver=CudaDriver, CudaUtils=CudaUtils, CudaLauncher=object)
    return nv, types.SimpleNamespace(_default=None, _active=None)  # and triton.runtime.driver.driver


def _assert_follows_cupy(drv, cp):
    for device in (1, 0):
        cp.device = device
        assert drv.get_current_device() == device
        assert drv.get_current_stream(drv.get_current_device()) == cp.streams[device]
    assert drv.get_device_capability(1) == (9, 0) and drv.get_device_capability(0) == (8, 0)
    drv.set_current_device(1)
    assert cp.device == 1
    cp.streams[1] = 0x3000  # a stream made current later (``with cupy.cuda.Stream():``) is seen at the next launch
    assert drv.get_current_stream(1) == 0x3000


@pytest.mark.parametrize("with_torch", [False, True])
@pytest.mark.parametrize("version", [(3, 6), (3, 9)])
def test_bind_to_cupy_driver_interfaces(monkeypatch, version, with_torch):
    monkeypatch.setattr(_triton_compat, "triton_version", lambda: version)
    monkeypatch.setattr(_triton_compat, "_BOUND", {})
    monkeypatch.setitem(sys.modules, "torch", _TORCH if with_torch else None)  # None: ``import torch`` fails
    nv, config = _stub_backend(version)
    cp = _StubCuPy()
    prebuilt = nv.CudaDriver() if with_torch else None  # a driver Triton built before conch found CuPy
    config._default = config._active = prebuilt
    _triton_compat._bind(cp, nv, config)
    assert nv.CudaDriver.is_active()  # Triton 3.6 without torch: "0 active drivers" unless conch says otherwise
    _assert_follows_cupy(nv.CudaDriver(), cp)
    if prebuilt is not None:
        _assert_follows_cupy(prebuilt, cp)


def test_bind_to_cupy_on_installed_triton(monkeypatch):
    """The real ``CudaDriver`` of whichever Triton runs the tests, with its C utilities stubbed (no GPU here)."""
    from triton.backends.nvidia import driver as nv
    from triton.runtime.driver import driver as config

    cls = nv.CudaDriver
    for name in ("__init__", "is_active"):
        monkeypatch.setattr(cls, name, cls.__dict__[name])  # restored after the test
    monkeypatch.setattr(nv, "CudaUtils", lambda: _stub_backend((3, 9))[0].CudaUtils())
    monkeypatch.setattr(_triton_compat, "_BOUND", {})
    monkeypatch.setattr(config, "_default", None)
    monkeypatch.setattr(config, "_active", None)
    monkeypatch.setitem(sys.modules, "torch", None)
    # Triton >= 3.8 asks libcuda whether a device exists (none here): as on a GPU machine, one does
    monkeypatch.setattr(nv, "_cuda_driver_is_active", lambda: True, raising=False)
    cp = _StubCuPy()
    assert _triton_compat.bind_to_cupy(cp) and _triton_compat.bind_to_cupy(cp)  # the second call is a no-op
    assert cls.is_active()
    _assert_follows_cupy(cls(), cp)
    _assert_follows_cupy(config.active, cp)  # the driver Triton's launcher asks, built through its own config


def test_bind_to_cupy_skips_simulated_and_hip(monkeypatch):
    monkeypatch.setattr(_triton_compat, "_BOUND", {})
    sim = _StubCuPy()
    sim.__simulated__ = True
    assert _triton_compat.bind_to_cupy(sim) is False
    hip = _StubCuPy()
    hip.cuda.runtime.is_hip = True
    assert _triton_compat.bind_to_cupy(hip) is False
