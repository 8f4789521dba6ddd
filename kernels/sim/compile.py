"""Offline compile check: build a launch's exact Triton specialization for sm_90/sm_80 and check it fits the GPU.

No GPU and no driver are needed: a stand-in driver whose target is ``GPUTarget("cuda", 90, 32)`` is made active
while ``jitfn.warmup(...)`` runs, so Triton's own binder picks the specialization a real launch would (dtypes,
constexprs, ints equal to 1, divisibility by 16 of ints and pointers), and Triton's real compiler and the ptxas
shipped in its wheel produce the cubin. Shared memory comes from the compiled metadata (what Triton checks
before a launch), registers per thread from ``cuobjdump --dump-resource-usage`` on the cubin::

    from conch.kernels.sim.compile import check
    res = check(_matmul_kernel, grid, args, kwargs)   # raises OutOfResources like a launch on an H100 would
    res.shared, res.regs, res.compile_s

``args`` are the launch's positional arguments: pointer arguments are objects with ``data_ptr()`` and a NumPy
``dtype`` (:class:`Ptr`, or ``_launch._DeviceArray``), plus ints, floats and None; ``kwargs`` hold constexprs
and launch options (``BLOCK_M``, ``num_warps``, ``num_stages``...). The target is sm_90 unless
``CONCH_SIM_ARCH=80``. Results are cached in memory and on disk (``$CONCH_CACHE_DIR/sim_compile/``, default
``~/.cache/conch/sim_compile/``), keyed by the kernel's source and the sources of the ``@jit`` helpers it calls,
the specialization, the target and the Triton version, so a rerun with unchanged kernels compiles nothing.

Use 16-aligned shapes and strides when checking block configs: an unaligned stride turns off Triton's software
pipelining, which hides most of the shared memory a config needs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time

import numpy as np

__all__ = ["LIMITS", "Limits", "Ptr", "Result", "arch", "cache_dir", "check", "compile_info", "source_hash"]

_CACHE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Limits:
    """Per-block resource limits of one GPU generation (CUDA occupancy tables)."""

    name: str
    shared_optin: int  # cudaDevAttrMaxSharedMemoryPerBlockOptin: what Triton compares metadata.shared with
    regs_per_block: int
    regs_per_thread: int
    reg_alloc_unit: int = 256  # registers are allocated per warp in units of 256


#: Targets the check knows: sm_90 (H100) and sm_80 (A100).
LIMITS = {90: Limits("NVIDIA H100", 232_448, 65_536, 255), 80: Limits("NVIDIA A100", 166_912, 65_536, 255)}


def arch() -> int:
    """The target compute capability: ``CONCH_SIM_ARCH`` (``90``, ``80``; ``sm_90`` works too), default 90."""
    raw = (os.environ.get("CONCH_SIM_ARCH") or "90").strip().lower().removeprefix("sm_").removeprefix("sm")
    cc = int(raw)
    if cc not in LIMITS:
        raise ValueError(f"CONCH_SIM_ARCH={raw!r}: the offline check knows sm_{sorted(LIMITS)}")
    return cc


def cache_dir() -> str:
    """``$CONCH_CACHE_DIR/sim_compile`` or ``~/.cache/conch/sim_compile``."""
    root = os.environ.get("CONCH_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "conch")
    return os.path.join(root, "sim_compile")


class Ptr:
    """A pointer argument for :func:`check`: a NumPy ``dtype`` and an address (16-aligned by default)."""

    __slots__ = ("dtype", "ptr")

    def __init__(self, dtype, ptr: int = 1 << 20):
        self.dtype = np.dtype(dtype)
        self.ptr = int(ptr)

    def data_ptr(self):
        return self.ptr

    def __repr__(self):
        return f"Ptr({self.dtype.name})"


@dataclasses.dataclass
class Result:
    """What one specialization needs: bytes of dynamic shared memory, registers per thread, and the verdict."""

    kernel: str
    config: dict
    arch: int
    shared: int
    static_shared: int
    regs: int | None
    stack: int | None
    num_warps: int
    compile_s: float
    cached: bool = False
    problem: tuple | None = None  # (what, required, limit) when it does not fit

    @property
    def fits(self) -> bool:
        return self.problem is None

    def error(self):
        """The OutOfResources a launch would raise (None when it fits)."""
        if self.problem is None:
            return None
        what, required, limit = self.problem
        return _out_of_resources(required, limit, what, self.kernel, self.config, self.arch)


def _out_of_resources(required, limit, what, kernel, config, cc):
    from triton.runtime.errors import OutOfResources

    class SimOutOfResources(OutOfResources):
        """Triton's OutOfResources (same type, same message), plus the kernel and config it is about."""

        def __str__(self):
            return f"{super().__str__()} [{kernel} {config} on sm_{cc}, offline compile check]"

        def __reduce__(self):
            return (OutOfResources, (self.required, self.limit, self.name))

    return SimOutOfResources(required, limit, what)


# --------------------------------------------------------------------------------------------------------------
# Cache keys
# --------------------------------------------------------------------------------------------------------------

_SRC_HASH: dict[int, str] = {}


def _jit_source(jitfn) -> str:
    src = getattr(jitfn, "src", None)
    if isinstance(src, str):
        return src
    return inspect.getsource(jitfn.fn)


def source_hash(jitfn) -> str:
    """sha256 of the kernel's source, the sources of the ``@jit`` helpers it reaches by global name, and the
    plain constants (ints, floats, strings) it reads from its globals."""
    h = _SRC_HASH.get(id(jitfn))
    if h is not None:
        return h
    from triton.runtime.jit import JITFunction

    parts, seen, todo = [], set(), [jitfn]
    while todo:
        fn = todo.pop()
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        parts.append(f"{fn.fn.__module__}.{fn.fn.__qualname__}\n{_jit_source(fn)}")
        g = fn.fn.__globals__
        for name in sorted(set(fn.fn.__code__.co_names)):
            val = g.get(name)
            if isinstance(val, JITFunction):
                todo.append(val)
            elif isinstance(val, (bool, int, float, str)):
                parts.append(f"{name}={val!r}")
    h = hashlib.sha256("\n".join(sorted(parts)).encode()).hexdigest()
    _SRC_HASH[id(jitfn)] = h
    return h


def _spec_of(val, constexpr: bool):
    """The part of an argument that decides Triton's specialization (the value itself for constexprs)."""
    if constexpr:
        return repr(val)
    if val is None or isinstance(val, (bool, float, str)):
        return repr(val)
    if isinstance(val, (int, np.integer)):
        v = int(val)
        width = "i32" if -(2**31) <= v < 2**31 else "u32" if v < 2**32 else "i64"
        return f"int:{width}:{'one' if v == 1 else 'd16' if v % 16 == 0 else 'any'}"
    if hasattr(val, "data_ptr"):
        return f"ptr:{np.dtype(val.dtype).name}:{'d16' if val.data_ptr() % 16 == 0 else 'any'}"
    return f"{type(val).__name__}:{val!r}"


def _bind(jitfn, args, kwargs):
    """{param name: value} for the kernel's parameters, and the launch options left over."""
    names = [p.name for p in jitfn.params]
    bound = dict(zip(names, args))
    options = {}
    for k, v in kwargs.items():
        (bound if k in names else options)[k] = v
    return bound, options


def _key(jitfn, args, kwargs, cc) -> str:
    import triton

    bound, options = _bind(jitfn, args, kwargs)
    spec = {p.name: _spec_of(bound.get(p.name), p.is_constexpr) for p in jitfn.params}
    payload = {
        "v": _CACHE_VERSION,
        "triton": triton.__version__,
        "arch": cc,
        "src": source_hash(jitfn),
        "spec": spec,
        "options": {k: repr(v) for k, v in sorted(options.items())},
        "fp_fusion": os.environ.get("TRITON_DEFAULT_FP_FUSION", ""),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:40]


def _config_of(jitfn, args, kwargs) -> dict:
    """The constexprs and launch options of this launch, for messages."""
    bound, options = _bind(jitfn, args, kwargs)
    cfg = {p.name: bound[p.name] for p in jitfn.params if p.is_constexpr and p.name in bound}
    cfg.update(options)
    return cfg


# --------------------------------------------------------------------------------------------------------------
# Compiling without a GPU
# --------------------------------------------------------------------------------------------------------------


class _SimUtils:
    def __init__(self, cc):
        self.cc = cc

    def get_device_properties(self, device):
        lim = LIMITS[self.cc]
        return {
            "max_shared_mem": lim.shared_optin,
            "max_num_regs": lim.regs_per_block,
            "multiprocessor_count": 132,
            "warpSize": 32,
            "sm_clock_rate": 1_980_000,
            "mem_clock_rate": 2_619_000,
            "mem_bus_width": 5120,
        }

    def load_binary(self, *args, **kwargs):
        raise RuntimeError("conch.kernels.sim.compile: compile-only driver, there is no GPU to load a kernel on")


class _SimDriver:
    """A compile-only stand-in for Triton's CUDA driver: a target, a device id, no GPU."""

    def __init__(self, cc):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", cc, 32)
        self.utils = _SimUtils(cc)

    @classmethod
    def is_active(cls):
        return False

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        # its own device id: JITFunction keeps one kernel cache per device, apart from a real GPU's
        return f"conch-sim-sm{self.target.arch}"

    def set_current_device(self, device):
        pass

    def get_current_stream(self, device=None):
        return 0

    def get_device_capability(self, device=None):
        return divmod(self.target.arch, 10)


_LOCK = threading.RLock()
_DRIVERS: dict[int, _SimDriver] = {}


@contextlib.contextmanager
def _sim_driver(cc):
    from triton.runtime import driver

    with _LOCK:
        sim = _DRIVERS.get(cc) or _DRIVERS.setdefault(cc, _SimDriver(cc))
        prev = getattr(driver, "_active", _SimDriver)  # _SimDriver: "no attribute" sentinel
        driver.set_active(sim)
        try:
            yield sim
        finally:
            if prev is _SimDriver:
                driver.reset_active()
            else:
                driver._active = prev  # None when no driver was ever created: stays lazy, no GPU probe


def _tool(name):
    try:
        from triton import knobs

        path = getattr(knobs.nvidia, name).path
        if path and os.path.exists(path):
            return path
    except Exception:  # older Triton: no knobs, or no such tool knob
        pass
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    return path if os.path.exists(path) else shutil.which(name)


def _resource_usage(cubin: bytes, name: str):
    """(registers per thread, static shared bytes, stack bytes) of kernel ``name`` in ``cubin``, from cuobjdump."""
    tool = _tool("cuobjdump")
    if tool is None:
        return None, 0, None
    with tempfile.TemporaryDirectory(prefix="conch-sim-") as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        out = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True, check=False)
    regs = stack = None
    static = 0
    in_fn = False
    for line in out.stdout.splitlines():
        s = line.strip()
        if s.startswith("Function "):
            in_fn = s[len("Function ") :].rstrip(":") == name
            continue
        if in_fn and s.startswith("REG:"):
            fields = dict(kv.split(":", 1) for kv in s.split() if ":" in kv)
            regs, static, stack = int(fields["REG"]), int(fields.get("SHARED", 0)), int(fields.get("STACK", 0))
            break
    return regs, static, stack


def _verdict(res: Result, lim: Limits):
    if res.shared > lim.shared_optin:
        return ("shared memory", res.shared, lim.shared_optin)
    if res.regs is not None:
        per_warp = -(-res.regs * 32 // lim.reg_alloc_unit) * lim.reg_alloc_unit
        if res.regs > lim.regs_per_thread or per_warp * res.num_warps > lim.regs_per_block:
            return ("registers", per_warp * res.num_warps, lim.regs_per_block)
    return None


def _compile(jitfn, grid, args, kwargs, cc) -> Result:
    name = jitfn.fn.__name__
    t0 = time.perf_counter()
    with _sim_driver(cc):
        kernel = jitfn.warmup(*args, grid=grid, **kwargs)
    compile_s = time.perf_counter() - t0
    if kernel is None:
        raise RuntimeError(
            f"{name}: Triton compiled nothing (is TRITON_INTERPRET set at import? then @triton.jit made an "
            "interpreted function, which the offline check cannot compile)"
        )
    md = kernel.metadata
    regs, static, stack = _resource_usage(kernel.asm["cubin"], getattr(md, "name", name))
    return Result(name, _config_of(jitfn, args, kwargs), cc, int(md.shared), static, regs, stack,
                  int(md.num_warps), compile_s)  # fmt: skip


_MEMO: dict[str, Result] = {}


def _read(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write(path, data):
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".sim.", suffix=".json", dir=os.path.dirname(path))
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except OSError:  # a read-only cache only costs recompiles
        pass


def compile_info(jitfn, grid, args, kwargs=None, *, cc: int | None = None) -> Result:
    """Compile (or find in the cache) the specialization of this launch for the target; never raises for
    resources (see :attr:`Result.problem`), raises Triton's CompilationError when the kernel does not compile."""
    kwargs = dict(kwargs or {})
    cc = arch() if cc is None else int(cc)
    if cc not in LIMITS:
        raise ValueError(f"unknown target sm_{cc}; known: {sorted(LIMITS)}")
    key = _key(jitfn, args, kwargs, cc)
    res = _MEMO.get(key)
    if res is None:
        path = os.path.join(cache_dir(), key[:2], key + ".json")
        data = _read(path)
        if data is not None and data.get("v") == _CACHE_VERSION:
            fields = {f.name for f in dataclasses.fields(Result)}
            res = Result(**{k: v for k, v in data["result"].items() if k in fields})
            res.config = _config_of(jitfn, args, kwargs)
            res.cached = True
        else:
            res = _compile(jitfn, grid, args, kwargs, cc)
            stored = dataclasses.asdict(res)
            stored["config"] = {k: repr(v) for k, v in stored["config"].items()}
            _write(path, {"v": _CACHE_VERSION, "result": stored})
        res.problem = _verdict(res, LIMITS[cc])
        _MEMO[key] = res
    return dataclasses.replace(res)


def check(jitfn, grid, args, kwargs=None, *, cc: int | None = None) -> Result:
    """Compile this launch's specialization for the target (sm_90 unless ``CONCH_SIM_ARCH=80``) and raise
    ``triton.runtime.errors.OutOfResources`` ("shared memory" or "registers", required vs limit, naming the
    kernel and config) where a launch on that GPU would fail; returns the :class:`Result` otherwise."""
    res = compile_info(jitfn, grid, args, kwargs, cc=cc)
    err = res.error()
    if err is not None:
        raise err
    return res
