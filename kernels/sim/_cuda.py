"""The fake ``cupy.cuda``: devices, runtime queries, streams, events, memory pools and the allocator hook."""

from __future__ import annotations

import ctypes
import time
import types
import weakref

from . import _state
from ._state import CURRENT, record


class CUDARuntimeError(RuntimeError):
    """What CuPy raises for a failed CUDA runtime call."""


def _check_id(i: int) -> int:
    i = int(i)
    if not 0 <= i < _state.device_count():
        raise CUDARuntimeError("cudaErrorInvalidDevice: invalid device ordinal")
    return i


class Device:
    """A simulated GPU; ``with Device(i):`` makes it current for allocations and kernels."""

    def __init__(self, device=None):
        self.id = CURRENT["device"] if device is None else int(device)
        self._saved: list = []

    def use(self):
        CURRENT["device"] = _check_id(self.id)

    def __enter__(self):
        self._saved.append(CURRENT["device"])
        self.use()
        return self

    def __exit__(self, *exc):
        CURRENT["device"] = self._saved.pop()

    def synchronize(self):
        record("sync", "Device.synchronize")

    @property
    def compute_capability(self) -> str:
        return "90"

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self):
        return hash(("cuda", self.id))

    def __int__(self):
        return self.id

    def __repr__(self):
        return f"<CUDA Device {self.id}>"


def _props(i: int) -> dict:
    return {
        "name": b"NVIDIA H100 80GB HBM3 (simulated)", "totalGlobalMem": 85_031_714_816, "sharedMemPerBlock": 49152,
        "regsPerBlock": 65536, "warpSize": 32, "maxThreadsPerBlock": 1024, "maxThreadsDim": (1024, 1024, 64),
        "maxGridSize": (2147483647, 65535, 65535), "clockRate": 1980000, "totalConstMem": 65536, "major": 9,
        "minor": 0, "multiProcessorCount": 132, "l2CacheSize": 52428800, "maxThreadsPerMultiProcessor": 2048,
        "sharedMemPerBlockOptin": 232448, "sharedMemPerMultiprocessor": 233472, "regsPerMultiprocessor": 65536,
        "memoryClockRate": 2619000, "memoryBusWidth": 5120, "computeMode": 0, "integrated": 0,
        "canMapHostMemory": 1, "concurrentKernels": 1, "ECCEnabled": 1, "pciBusID": 24 + i, "pciDeviceID": 0,
        "pciDomainID": 0, "asyncEngineCount": 3, "unifiedAddressing": 1, "managedMemory": 1,
        "cooperativeLaunch": 1, "uuid": bytes(16), "persistingL2CacheMaxSize": 0,
    }  # fmt: skip


# cudaDeviceAttr values (CUDA runtime enum) -> keys of the property dict
_ATTRS = {1: "maxThreadsPerBlock", 8: "sharedMemPerBlock", 10: "warpSize", 12: "regsPerBlock",
          16: "multiProcessorCount", 38: "l2CacheSize", 75: "major", 76: "minor",
          81: "sharedMemPerMultiprocessor", 97: "sharedMemPerBlockOptin"}  # fmt: skip


def _get_device_properties(i):
    record("props", "getDeviceProperties")
    return _props(_check_id(i))


def _device_get_attribute(attr, i):
    record("props", "deviceGetAttribute")
    key = _ATTRS.get(int(attr))
    if key is None:
        raise CUDARuntimeError(f"cudaErrorInvalidValue: device attribute {attr} is not simulated")
    return _props(_check_id(i))[key]


def _set_device(i):
    CURRENT["device"] = _check_id(i)


def _memcpy(dst, src, size, kind, stream=None):
    """cudaMemcpy(Async) between simulated arrays: their ``data.ptr`` are the host addresses of NumPy buffers.

    Device-to-host and host-to-device copies are how data crosses, so they count as a sync and a transfer;
    device-to-device copies count nothing (the GPU does them without the host).
    """
    if kind in (1, 2):  # cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost
        record("h2d" if kind == 1 else "sync", "runtime.memcpy")
    ctypes.memmove(dst, src, size)


runtime = types.SimpleNamespace(
    CUDARuntimeError=CUDARuntimeError, is_hip=False,
    getDeviceCount=lambda: _state.device_count(),
    getDeviceProperties=_get_device_properties,
    deviceGetAttribute=_device_get_attribute,
    runtimeGetVersion=lambda: 12080, driverGetVersion=lambda: 12080,
    deviceSynchronize=lambda: record("sync", "runtime.deviceSynchronize"),
    getDevice=lambda: CURRENT["device"], setDevice=_set_device,
    memGetInfo=lambda: (80 * 2**30, 85_031_714_816),
    memcpy=lambda dst, src, size, kind: _memcpy(dst, src, size, kind), memcpyAsync=_memcpy,
    memcpyHostToHost=0, memcpyHostToDevice=1, memcpyDeviceToHost=2, memcpyDeviceToDevice=3, memcpyDefault=4,
    cudaDevAttrMaxThreadsPerBlock=1, cudaDevAttrMaxSharedMemoryPerBlock=8, cudaDevAttrWarpSize=10,
    cudaDevAttrMaxRegistersPerBlock=12, cudaDevAttrMultiProcessorCount=16, cudaDevAttrL2CacheSize=38,
    cudaDevAttrComputeCapabilityMajor=75, cudaDevAttrComputeCapabilityMinor=76,
    cudaDevAttrMaxSharedMemoryPerMultiprocessor=81, cudaDevAttrMaxSharedMemoryPerBlockOptin=97,
)  # fmt: skip


def is_available() -> bool:
    return True


# ---------------------------------------------------------------- streams and events


class Stream:
    """A stream: work is done eagerly, so only its identity, context and sync counting are simulated."""

    _next_ptr = [0x1000]

    def __init__(self, null=False, non_blocking=False, ptds=False):
        if null:
            self.ptr = 0
        else:
            self.ptr = Stream._next_ptr[0]
            Stream._next_ptr[0] += 0x10
        self._saved: list = []

    def use(self):
        CURRENT["stream"] = self
        return self

    def __enter__(self):
        self._saved.append(CURRENT["stream"])
        return self.use()

    def __exit__(self, *exc):
        CURRENT["stream"] = self._saved.pop()

    def synchronize(self):
        record("sync", "Stream.synchronize")

    @property
    def done(self) -> bool:
        record("sync", "Stream.done")
        return True

    def record(self, event=None):
        event = Event() if event is None else event
        event.record(self)
        return event

    def wait_event(self, event):
        pass

    def __eq__(self, other):
        return isinstance(other, Stream) and other.ptr == self.ptr

    def __hash__(self):
        return hash(self.ptr)

    def __repr__(self):
        return f"<Stream {self.ptr:#x} (simulated)>"


Stream.null = Stream(null=True)


def get_current_stream(device_id=None):
    return CURRENT["stream"] or Stream.null


class Event:
    """An event stamped with the host's clock when recorded (the work before it is already done)."""

    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self.t = None
        self.disable_timing = disable_timing

    def record(self, stream=None):
        self.t = time.perf_counter()

    def synchronize(self):
        record("sync", "Event.synchronize")

    def query(self) -> bool:
        record("sync", "Event.query")
        return True

    @property
    def done(self) -> bool:
        return self.query()


def get_elapsed_time(start: Event, end: Event) -> float:
    """Milliseconds of host wall time between two recorded events."""
    if start.t is None or end.t is None:
        raise CUDARuntimeError("cudaErrorInvalidResourceHandle: event not recorded")
    return (end.t - start.t) * 1000.0


# ---------------------------------------------------------------- memory


class MemoryPointer:
    """One allocation: ``ptr`` (a made-up device address), ``size`` and ``device_id``; freed when collected."""

    __slots__ = ("ptr", "size", "device_id", "__weakref__")
    _next = [0x7F0000000000]

    def __init__(self, size, device_id=None):
        self.size = int(size)
        self.device_id = CURRENT["device"] if device_id is None else device_id
        self.ptr = MemoryPointer._next[0]
        MemoryPointer._next[0] += max(self.size, 512)

    @property
    def device(self):
        return Device(self.device_id)


def _round(size: int) -> int:
    # CuPy's pool hands out multiples of 512 bytes
    return (int(size) + 511) // 512 * 512


class MemoryPool:
    """Pool accounting as CuPy's: ``used_bytes`` is held by live arrays, freed blocks stay in ``total_bytes``."""

    def __init__(self, allocator=None):
        self._used = 0
        self._total = 0
        self._nfree = 0
        self._limit = 0

    def malloc(self, size):
        size = _round(size)
        if self._limit and self._used + size > self._limit:
            raise MemoryError(f"Out of memory allocating {size:,} bytes (simulated pool limit {self._limit:,})")
        self._used += size
        self._total = max(self._total, self._used)
        mem = MemoryPointer(size)
        weakref.finalize(mem, self._release, size)
        return mem

    def _release(self, size):
        self._used -= size
        self._nfree += 1

    def used_bytes(self) -> int:
        return self._used

    def total_bytes(self) -> int:
        return self._total

    def free_bytes(self) -> int:
        return self._total - self._used

    def n_free_blocks(self) -> int:
        return self._nfree if self._total > self._used else 0

    def free_all_blocks(self, stream=None):
        self._total = self._used
        self._nfree = 0

    def set_limit(self, size=None, fraction=None):
        self._limit = int(size or 0)

    def get_limit(self) -> int:
        return self._limit


class PinnedMemoryPool:
    """Host staging memory: nothing to account for in the simulation."""

    def free_all_blocks(self):
        pass

    def n_free_blocks(self) -> int:
        return 0


_POOL = MemoryPool()
_PINNED = PinnedMemoryPool()
_ALLOCATOR = [_POOL.malloc]


def get_default_memory_pool():
    return _POOL


def get_default_pinned_memory_pool():
    return _PINNED


def set_allocator(allocator=None):
    """Route every array allocation through ``allocator(size) -> MemoryPointer`` (``None``: unpooled)."""
    _ALLOCATOR[0] = allocator if allocator is not None else MemoryPointer


def get_allocator():
    return _ALLOCATOR[0]


def set_pinned_memory_allocator(allocator=None):
    pass


def allocate(nbytes: int):
    """Allocate through the current allocator, as every new CuPy array does."""
    return _ALLOCATOR[0](nbytes)


def reset():
    """Back to a fresh default pool and allocator, device 0, null stream (for uninstall)."""
    global _POOL
    _POOL = MemoryPool()
    _ALLOCATOR[0] = _POOL.malloc
    CURRENT.update(device=0, stream=None)


def module():
    """The ``cupy.cuda`` module object."""
    m = types.ModuleType("cupy.cuda", "Simulated cupy.cuda")
    for name in ("Device", "Stream", "Event", "get_elapsed_time", "get_current_stream", "is_available",
                 "MemoryPool", "PinnedMemoryPool", "MemoryPointer", "set_allocator", "get_allocator",
                 "set_pinned_memory_allocator", "runtime", "CUDARuntimeError"):  # fmt: skip
        setattr(m, name, globals()[name])
    m.get_default_memory_pool = lambda: _POOL
    m.get_default_pinned_memory_pool = get_default_pinned_memory_pool
    m.memory = types.SimpleNamespace(MemoryPointer=MemoryPointer, MemoryPool=MemoryPool, OutOfMemoryError=MemoryError)
    m.Device.__module__ = m.Stream.__module__ = m.Event.__module__ = "cupy.cuda"
    return m
