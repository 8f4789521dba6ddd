"""Devices: the array type is the device (numpy = "cpu", cupy = "cuda:N"); moving arrays between them."""

from __future__ import annotations

import numpy as np

from conch.kernels import _cupy, _deferred
from conch.kernels._cupy import is_cupy_array
from conch.kernels._launch import _RAW_ENV, use_triton
from conch.kernels._launch import xp_of as _xp_of_any

__all__ = ["is_cupy_array", "on_gpu", "to_host", "xp_of", "device", "device_of", "to_device", "namespace"]


def xp_of(a):
    """The array namespace of ``a``: ``numpy`` for NumPy arrays, ``cupy`` for CuPy arrays.

    A one-comparison fast path for NumPy (every CPU op asks) in front of ``conch.kernels``' test.
    """
    return np if type(a) is np.ndarray else _xp_of_any(a)


_OFF = (None, b"", b"0")  # TRITON_INTERPRET values that leave NumPy arrays on the reference path
_AUTO = (None, b"auto", b"reference")  # CONCH_KERNELS values under which NumPy arrays take it then


def reference_path(a) -> bool:
    """Whether a kernel given NumPy array ``a`` takes its NumPy reference path: ``not use_triton(a)``, decided
    with two lookups in the environment's own dict and no string decoding (~0.1 us; every fused op on the CPU
    asks). Tests that set ``TRITON_INTERPRET`` or ``CONCH_KERNELS`` take effect at the next op, as there."""
    if _RAW_ENV is not None and type(a) is np.ndarray:
        if _RAW_ENV.get(b"TRITON_INTERPRET") in _OFF and _RAW_ENV.get(b"CONCH_KERNELS") in _AUTO:
            return True
    return not use_triton(a)


def on_gpu(a) -> bool:
    """Whether array ``a`` lives on a GPU: the one device test for arrays (anything not NumPy is CuPy here)."""
    return type(a) is not np.ndarray and is_cupy_array(a)


def to_host(a):
    """``a`` as a NumPy array when it is a CuPy one (a copy that also reads pending device-side checks);
    anything else (NumPy arrays, lists, numbers) comes back unchanged."""
    return _deferred.fetch(a)[0] if is_cupy_array(a) else a


class device(str):
    """A device name that compares equal to its string: ``device("cuda") == "cuda:0"``.

    ``.type`` is ``"cpu"`` or ``"cuda"``; ``.index`` is the GPU ordinal (``None`` on the CPU).
    """

    def __new__(cls, spec="cpu", index=None):
        if isinstance(spec, device):
            return spec
        if not isinstance(spec, str):
            raise TypeError(f"device must be a string like 'cpu' or 'cuda:0', got {type(spec).__name__}")
        s = spec.strip().lower()
        if s == "cpu":
            name, typ, idx = "cpu", "cpu", None
        elif s == "cuda" or s.startswith("cuda:"):
            idx = index if s == "cuda" else s[5:]
            try:
                idx = 0 if idx is None else int(idx)
            except ValueError:
                raise RuntimeError(f"Invalid device string: {spec!r}: expected 'cuda:N' with an integer N") from None
            name, typ = f"cuda:{idx}", "cuda"
        else:
            # RuntimeError, as torch.device: an unknown device type is not a bad value of a known one
            raise RuntimeError(
                f"unknown device {spec!r}: Expected one of cpu, cuda device type at start of device string: {s}"
            )
        obj = super().__new__(cls, name)
        obj.type, obj.index = typ, idx
        return obj

    def __repr__(self):
        return f"device(type='{self.type}'" + (f", index={self.index})" if self.index is not None else ")")

    def __eq__(self, other):
        if isinstance(other, str) and not isinstance(other, device):
            try:
                other = device(other)
            except (ValueError, TypeError):
                return False
        return str.__eq__(self, other)

    __hash__ = str.__hash__


CPU = device("cpu")
_cuda_devices: dict = {}


def device_of(a) -> device:
    if isinstance(a, np.ndarray):
        return CPU
    idx = a.device.id
    d = _cuda_devices.get(idx)
    if d is None:
        d = _cuda_devices[idx] = device("cuda", idx)
    return d


def require_cupy():
    """The cupy module, or a RuntimeError saying why no usable GPU was found."""
    cp = _cupy.get_cupy()
    if cp is None:
        raise RuntimeError(
            "no usable GPU was found, so cuda tensors cannot be created "
            f"({_cupy.unavailable_reason()}). Install conch[cuda12] or conch[cuda13] on a machine with an "
            "NVIDIA GPU and driver, or use device='cpu'."
        )
    return cp


def namespace(dev: device):
    return np if dev.type == "cpu" else require_cupy()


def to_device(a, dev: device):
    """Move (or keep) array ``a`` on ``dev``; returns ``a`` itself when it is already there."""
    if dev.type == "cpu":
        if isinstance(a, np.ndarray):
            return a
        return _deferred.fetch(a)[0]  # a sync: pending device-side checks are read in the same copy
    cp = require_cupy()
    if not isinstance(a, np.ndarray) and a.device.id == dev.index:
        return a
    if dev.index >= cp.cuda.runtime.getDeviceCount():
        raise RuntimeError(f"device {dev} does not exist: this machine has {cp.cuda.runtime.getDeviceCount()} GPU(s)")
    with cp.cuda.Device(dev.index):
        return cp.asarray(a)


def asarray_on(data, dtype, dev: device):
    """Make an array of ``dtype`` on ``dev`` from Python data or an array."""
    if dev.type == "cpu":
        return np.asarray(to_host(data), dtype=dtype)
    cp = require_cupy()
    with cp.cuda.Device(dev.index):
        return cp.asarray(data, dtype=dtype)


class _Cuda:
    """``conch.cuda``: GPU queries that never raise without a GPU."""

    @staticmethod
    def is_available() -> bool:
        return _cupy.is_available()

    @staticmethod
    def device_count() -> int:
        cp = _cupy.get_cupy()
        return 0 if cp is None else cp.cuda.runtime.getDeviceCount()

    @staticmethod
    def synchronize() -> None:
        cp = _cupy.get_cupy()
        if cp is not None:
            cp.cuda.Device().synchronize()
            _deferred.raise_pending()  # device-side range checks surface here, as CUDA's device asserts

    @staticmethod
    def get_device_name(index: int = 0) -> str:
        cp = require_cupy()
        return cp.cuda.runtime.getDeviceProperties(index)["name"].decode()

    @staticmethod
    def memory_allocated() -> int:
        """Bytes held by live arrays in CuPy's default memory pool (0 without a GPU)."""
        cp = _cupy.get_cupy()
        return 0 if cp is None else cp.get_default_memory_pool().used_bytes()

    @staticmethod
    def max_memory_allocated() -> int:
        """Peak bytes in use in CuPy's pool since :meth:`reset_peak_memory_stats` (0 without a GPU).

        Tracking starts at the first call of either method: from then on every CuPy allocation goes
        through a hook that records the pool's used bytes, so normal runs pay nothing for it.
        """
        return max(_peak[0], _Cuda.memory_allocated()) if _track_peak() else 0

    @staticmethod
    def reset_peak_memory_stats() -> None:
        if _track_peak():
            _peak[0] = _Cuda.memory_allocated()


_peak = [0]
_tracking = [False]


def _track_peak() -> bool:
    """Route CuPy allocations through a hook that records the pool's peak used bytes (installed once)."""
    if _tracking[0]:
        return True
    cp = _cupy.get_cupy()
    if cp is None:
        return False
    pool = cp.get_default_memory_pool()
    malloc = pool.malloc

    def alloc(size):
        mem = malloc(size)
        used = pool.used_bytes()
        if used > _peak[0]:
            _peak[0] = used
        return mem

    cp.cuda.set_allocator(alloc)
    _tracking[0] = True
    return True


cuda = _Cuda()
