"""Benchmark harness: timing (CuPy events or perf_counter), measured peaks, checks, tables, JSON and plots.

A *case* is a dict (the contract every ``benchmarks/bench_<family>.py`` follows through
``cases(size, sizes=None, dtype=None, xp=None)``). Its metadata is plain data::

    name           str        op name, e.g. "matmul_fwd", "softmax_fwd"
    shape          tuple      problem shape (the last entry is what ``--sizes`` filters on)
    dtype          str        "float16", "bfloat16", "float32", "tf32", ... (aliases fp16/bf16/fp32 accepted)
    flops          int        floating-point operations of one call (0 for memory-bound ops)
    bytes          int        fewest bytes one call must move (each input read once, each output written once)
    baseline_name  str        what ``baseline`` is ("cupy.matmul (cuBLAS)", "numpy composition", ...)

and its arrays come from ``setup``, a zero-arg callable that allocates the inputs and returns a dict of
zero-arg closures over them::

    run            conch's kernel on the case's arrays
    baseline       the baseline on the same arrays
    check          max relative error of conch's result against the baseline (a float)

:func:`run_case` calls ``setup()`` right before checking and timing and drops every reference to its
result right after, then :meth:`Env.release` frees the memory pools (CuPy's, and PyTorch's when it was
used): only one case's arrays exist at a time, so a list of large cases costs nothing until it runs.
``setup()`` may also return ``runs``/``baselines``, ``torch``/``torch_factory`` or ``baseline_name``
(which override the metadata). A case may instead carry ``run``/``baseline``/``check`` directly (eager
arrays: fine for small CPU cases).

Optional metadata: ``tol`` (overrides the per-dtype tolerance), ``torch`` (zero-arg callable: PyTorch on
the same problem) or ``torch_factory`` (zero-arg, returns that callable or None; called just before timing
so PyTorch's inputs live for one case only), ``torch_name``, ``runs``/``baselines`` (lists of zero-arg
callables over distinct input sets, rotated between repeats so inputs that fit in L2 are not timed from
cache), ``size`` (x value for plots).

One call is timed as the median of ``repeats`` timed calls after warm-up (the check runs first and doubles
as the first warm-up, so compilation and autotuning stay out of the numbers). On the GPU each call sits
between two CuPy events on the current stream (CuPy's legacy default stream, which is also where Triton
launches through PyTorch's current stream and where PyTorch runs, unless someone sets another); when
neither rotation sets nor a working set larger than four L2 caches are there, L2 is flushed (a memset of
a 256 MiB buffer) before every timed call, outside the events. On the CPU, ``time.perf_counter`` around
each call.

Throughput: a case with ``flops`` is compute-bound when ``flops / peak_flops >= bytes / peak_bandwidth``
(roofline), and then reports TFLOP/s against the measured matmul peak at its dtype (a large cuBLAS or
NumPy matmul); otherwise GB/s (``bytes / time``) against the measured copy bandwidth (a large
device-to-device copy, bytes read plus bytes written).

Example::

    from benchmarks import harness
    env = harness.Env.detect()
    rows = harness.run_cases(env, cases, repeats=20)
    print(harness.format_table(harness.table_rows(rows), harness.KERNEL_COLUMNS))
"""

from __future__ import annotations

import datetime
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

SCHEMA = "conch-bench/1"

#: Accepted dtype spellings -> canonical names used in tables and JSON.
DTYPE_ALIASES = {
    "fp16": "float16", "half": "float16", "float16": "float16",
    "bf16": "bfloat16", "bfloat16": "bfloat16",
    "fp32": "float32", "float": "float32", "float32": "float32",
    "tf32": "tf32",
    "fp64": "float64", "double": "float64", "float64": "float64",
}  # fmt: skip

#: Largest accepted ``check()`` value (max |conch - baseline| / max |baseline|) per dtype. The numbers
#: allow for one rounding of the output in the storage dtype plus different fp32 summation orders.
TOLERANCES = {"float64": 1e-9, "float32": 1e-4, "tf32": 5e-3, "float16": 5e-3, "bfloat16": 3e-2}


class BenchmarkFailure(RuntimeError):
    """Raised (or reported through a non-zero exit) when a benchmarked kernel computes a wrong result."""


def canonical_dtype(name) -> str:
    """``"fp16"`` -> ``"float16"``; unknown spellings (``"int64"``) pass through lower-cased."""
    s = str(getattr(name, "name", name)).strip().lower()
    return DTYPE_ALIASES.get(s, s)


def tolerance(dtype, override=None) -> float:
    """The check tolerance for ``dtype`` (``override`` wins when given)."""
    if override is not None:
        return float(override)
    return TOLERANCES.get(canonical_dtype(dtype), 1e-4)


# ----------------------------------------------------------------------------------------------------------------
# Environment: device, versions, commit
# ----------------------------------------------------------------------------------------------------------------


def git_commit(root=None) -> str:
    """Short commit of the checkout holding this file ("unknown" outside git)."""
    root = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=False
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def get_cupy():
    """CuPy when a usable GPU is present (through conch's single CuPy import point), else None."""
    try:
        from conch.kernels import _cupy

        return _cupy.get_cupy()
    except ImportError:
        try:
            import cupy

            return cupy if cupy.cuda.is_available() else None
        except Exception:
            return None


def get_torch():
    """``torch`` when importable, else None (never raises)."""
    try:
        import torch

        return torch
    except Exception:
        return None


@dataclass
class Env:
    """Where the benchmarks run: ``xp`` (cupy or numpy), device description, versions, peak cache."""

    xp: object
    gpu: bool
    device: str
    info: dict = field(default_factory=dict)
    peaks: dict = field(default_factory=dict)
    l2_bytes: int = 0
    _flush_buf: object = None

    @classmethod
    def detect(cls, force_cpu=False):
        """The GPU through CuPy when one is usable (and ``force_cpu`` is False), else the CPU through NumPy."""
        import numpy as np

        cp = None if force_cpu else get_cupy()
        info = {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cpu": cpu_model(),
            "nproc": os.cpu_count(),
            "hostname": platform.node(),
            "commit": git_commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            # other work on the machine skews CPU timings: the 1-minute load average says how much there was
            "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        }
        torch = get_torch()
        if torch is not None:
            info["torch"] = torch.__version__
        try:
            import triton

            info["triton"] = triton.__version__
        except Exception:
            pass
        if cp is None:
            return cls(xp=np, gpu=False, device=f"cpu: {info['cpu']} ({info['nproc']} cores)", info=info)
        dev = cp.cuda.Device()
        props = cp.cuda.runtime.getDeviceProperties(dev.id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        info.update(cupy=cp.__version__, gpu=name, cuda_runtime=cp.cuda.runtime.runtimeGetVersion())
        try:
            l2 = int(dev.attributes.get("L2CacheSize", 0))
        except Exception:
            l2 = 0
        info["l2_bytes"] = l2
        return cls(xp=cp, gpu=True, device=f"cuda:{dev.id} {name}", info=info, l2_bytes=l2 or 50 * 2**20)

    # -- synchronisation and L2 ------------------------------------------------------------------------------

    def sync(self):
        if self.gpu:
            self.xp.cuda.Device().synchronize()

    def flush_l2(self):
        """Overwrite L2 with a memset of a buffer several times its size (outside the timed region)."""
        if self._flush_buf is None:
            self._flush_buf = self.xp.empty(max(256 * 2**20, 4 * self.l2_bytes) // 4, dtype=self.xp.int32)
        self._flush_buf.fill(0)

    def release(self):
        """Give freed memory back between cases: collect cycles, empty CuPy's pools and PyTorch's cache.

        A case's arrays die with its closures; the pools would still hold their blocks, and the next
        case's large allocations would then fail or fragment.
        """
        if not self.gpu:
            return
        gc.collect()
        self.sync()
        self.xp.get_default_memory_pool().free_all_blocks()
        self.xp.get_default_pinned_memory_pool().free_all_blocks()
        torch = sys.modules.get("torch")
        if torch is not None:
            try:
                if torch.cuda.is_initialized():
                    torch.cuda.empty_cache()
            except Exception:  # PyTorch's cache is an extra: never fail a benchmark over it
                pass


# ----------------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------------


def _as_list(fn_or_fns):
    return list(fn_or_fns) if isinstance(fn_or_fns, (list, tuple)) else [fn_or_fns]


def time_fn(env: Env, fns, repeats=20, warmup=2, flush=False, budget_s=1.0):
    """Median milliseconds of one call, and all samples. ``fns``: a callable or a list rotated per repeat.

    The repeat count shrinks so that timing one implementation takes about ``budget_s`` seconds at most
    (never under 3 samples); the estimate comes from the warm-up calls.
    """
    fns = _as_list(fns)
    if not env.gpu:
        time.sleep(0.02)  # let the previous implementation's spinning thread pools (BLAS, OpenMP) go idle
    t0 = time.perf_counter()
    calls = 0
    # At least ``warmup`` calls and 20 ms of them (up to 10x ``warmup``): thread pools of the previous
    # implementation (BLAS, OpenMP) spin for a few ms and would otherwise land in the first samples.
    while calls < max(1, warmup) or (time.perf_counter() - t0 < 0.02 and calls < 10 * max(1, warmup)):
        fns[calls % len(fns)]()
        calls += 1
        if env.gpu:
            env.sync()
    est = (time.perf_counter() - t0) / calls
    n = int(max(3, min(repeats, budget_s / max(est, 1e-9))))
    samples = []
    if env.gpu:
        cp = env.xp
        starts = [cp.cuda.Event() for _ in range(n)]
        ends = [cp.cuda.Event() for _ in range(n)]
        for i in range(n):
            if flush:
                env.flush_l2()
            starts[i].record()
            fns[i % len(fns)]()
            ends[i].record()
        ends[-1].synchronize()
        samples = [cp.cuda.get_elapsed_time(s, e) for s, e in zip(starts, ends)]
    else:
        for i in range(n):
            f = fns[i % len(fns)]
            t = time.perf_counter()
            f()
            samples.append((time.perf_counter() - t) * 1e3)
    return statistics.median(samples), samples


# ----------------------------------------------------------------------------------------------------------------
# Peaks: a large matmul at each dtype, a large copy
# ----------------------------------------------------------------------------------------------------------------


def _matmul_peak_gpu(env, dtype, n):
    cp = env.xp
    from cupy._core import _routines_linalg as rl

    np_dtype = {"float16": cp.float16, "float32": cp.float32, "tf32": cp.float32, "float64": cp.float64}.get(dtype)
    if dtype == "bfloat16":
        import ml_dtypes

        np_dtype = ml_dtypes.bfloat16
    if np_dtype is None:
        return None
    rng = cp.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=cp.float32).astype(np_dtype)
    b = rng.standard_normal((n, n), dtype=cp.float32).astype(np_dtype)
    out = cp.empty((n, n), dtype=np_dtype)
    old = rl.get_compute_type(cp.dtype(cp.float32))
    try:
        if dtype in ("tf32", "float32"):
            rl.set_compute_type(cp.dtype(cp.float32), rl.COMPUTE_TYPE_TF32 if dtype == "tf32" else rl.COMPUTE_TYPE_FP32)
        _, samples = time_fn(env, lambda: cp.matmul(a, b, out=out), repeats=10, warmup=2, budget_s=2.0)
        ms = min(samples)  # a peak is the best the machine did, not its typical run
    finally:
        try:
            rl.set_compute_type(cp.dtype(cp.float32), old)
        except Exception as e:  # keep the measurement; say that the process's fp32 matmul mode may have changed
            eprint(f"harness: could not restore CuPy's float32 compute type ({type(e).__name__}: {e})")
    return 2.0 * n**3 / (ms * 1e-3) / 1e12


def _matmul_peak_cpu(env, dtype, n):
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    _, samples = time_fn(env, lambda: np.matmul(a, b, out=out), repeats=5, warmup=1, budget_s=0.5)
    ms = min(samples)  # a peak is the best the machine did, not its typical run
    return 2.0 * n**3 / (ms * 1e-3) / 1e12


def matmul_peak(env: Env, dtype) -> dict:
    """Measured matmul rate at ``dtype`` in TFLOP/s, cached on ``env``: {"tflops", "how"}.

    GPU: cupy.matmul (cuBLAS) on 8192³ random operands (tf32: cuBLAS in TF32 compute mode; bfloat16
    falls back to the float16 figure if CuPy cannot multiply it). CPU: float32 NumPy matmul at 1024³
    whatever the dtype (NumPy has no fast half-precision product, so that is the machine's peak).
    """
    dtype = canonical_dtype(dtype)
    key = f"matmul_{dtype}" if env.gpu else "matmul"
    if key in env.peaks:
        return env.peaks[key]
    if env.gpu:
        n = int(os.environ.get("CONCH_BENCH_PEAK_N", "8192"))
        try:
            tf = _matmul_peak_gpu(env, dtype, n)
            how = f"cupy.matmul {n}^3 {dtype}"
        except Exception as e:  # bf16 support in cupy.matmul is experimental
            if dtype == "bfloat16":
                tf = matmul_peak(env, "float16")["tflops"]
                how = f"float16 figure (cupy.matmul bfloat16 failed: {type(e).__name__})"
            else:
                tf, how = None, f"failed: {type(e).__name__}: {e}"
    else:
        n = 1024
        tf = _matmul_peak_cpu(env, dtype, n)
        how = f"numpy.matmul {n}^3 float32"
    env.peaks[key] = {"tflops": tf, "how": how}
    return env.peaks[key]


def copy_peak(env: Env) -> dict:
    """Measured copy bandwidth in GB/s (bytes read + bytes written), cached: {"gbps", "how"}.

    GPU: device-to-device ``cudaMemcpyAsync`` of 1 GiB. CPU: ``numpy.copyto`` of 256 MiB.
    """
    if "copy" in env.peaks:
        return env.peaks["copy"]
    xp = env.xp
    nbytes = (
        (2**30 if env.gpu else 2**28)
        if "CONCH_BENCH_COPY_MB" not in os.environ
        else (int(os.environ["CONCH_BENCH_COPY_MB"]) * 2**20)
    )
    src = xp.ones(nbytes // 4, dtype=xp.float32)
    dst = xp.empty_like(src)
    if env.gpu:
        rt = xp.cuda.runtime

        def fn():
            rt.memcpyAsync(
                dst.data.ptr, src.data.ptr, nbytes, rt.memcpyDeviceToDevice, xp.cuda.get_current_stream().ptr
            )

        how = f"cudaMemcpyAsync device-to-device {nbytes >> 20} MiB"
    else:

        def fn():
            xp.copyto(dst, src)

        how = f"numpy.copyto {nbytes >> 20} MiB"
    _, samples = time_fn(env, fn, repeats=20, warmup=2, budget_s=1.0)
    ms = min(samples)  # the best of the repeats: a peak, not a typical run
    env.peaks["copy"] = {"gbps": 2.0 * nbytes / (ms * 1e-3) / 1e9, "how": how}
    return env.peaks["copy"]


# ----------------------------------------------------------------------------------------------------------------
# Running cases
# ----------------------------------------------------------------------------------------------------------------

META_KEYS = ("name", "shape", "dtype", "flops", "bytes", "baseline_name")
CLOSURE_KEYS = ("run", "baseline", "check")
#: Every key a materialised case has (metadata plus the closures ``setup()`` returns).
REQUIRED_KEYS = META_KEYS + CLOSURE_KEYS


def validate_case(case, materialised=False) -> None:
    """Raise ValueError naming the missing keys or wrong types of a case dict.

    A case needs the metadata keys and either a ``setup`` callable or the ``run``/``baseline``/``check``
    closures; ``materialised`` (after ``setup()``) requires the closures.
    """
    if not isinstance(case, dict):
        raise ValueError(f"a benchmark case must be a dict, got {type(case).__name__}")
    lazy = not materialised and "setup" in case
    if lazy and not callable(case["setup"]):
        raise ValueError(f"benchmark case {case.get('name', '?')!r}: 'setup' must be a zero-arg callable")
    missing = [k for k in (META_KEYS if lazy else REQUIRED_KEYS) if k not in case]
    if missing:
        raise ValueError(f"benchmark case {case.get('name', '?')!r} lacks keys {missing}")
    for k in () if lazy else CLOSURE_KEYS:
        if not callable(case[k]):
            raise ValueError(f"benchmark case {case['name']!r}: {k!r} must be a zero-arg callable")


def materialise(case) -> dict:
    """The case with ``setup()``'s closures merged in (the case itself when it has no ``setup``)."""
    if "setup" not in case:
        return case
    parts = case["setup"]()
    if not isinstance(parts, dict):
        raise ValueError(f"benchmark case {case['name']!r}: setup() must return a dict, got {type(parts).__name__}")
    full = {k: v for k, v in case.items() if k != "setup"}
    full.update(parts)
    validate_case(full, materialised=True)
    return full


def _throughput(flops, nbytes, ms, peak_tflops, peak_gbps):
    """(bound, value, unit, percent of peak) of one timing, the bound chosen by the roofline."""
    if ms is None or ms <= 0:
        return None, None, None, None
    compute = bool(flops) and (
        not nbytes or not peak_tflops or not peak_gbps or flops / (peak_tflops * 1e12) >= nbytes / (peak_gbps * 1e9)
    )
    if compute:
        tf = flops / (ms * 1e-3) / 1e12
        return "compute", tf, "TFLOP/s", (100.0 * tf / peak_tflops if peak_tflops else None)
    gb = nbytes / (ms * 1e-3) / 1e9
    return "memory", gb, "GB/s", (100.0 * gb / peak_gbps if peak_gbps else None)


def run_case(env: Env, case: dict, repeats=20, warmup=2, with_torch=True, budget_s=1.0, log=None) -> dict:
    """Set up, check, then time one case (conch, its baseline, PyTorch when given); returns a result row.

    The row always has ``ok``; a wrong result (check above tolerance, NaN) or an exception (in ``setup()``
    too, e.g. out of memory) sets it False with the reason in ``error`` instead of raising, so one bad
    kernel does not hide the others. The case's arrays are released before this returns.
    """
    validate_case(case)
    dtype = canonical_dtype(case["dtype"])
    row = {
        "op": case["name"], "shape": [int(s) for s in case["shape"]], "dtype": dtype,
        "flops": int(case["flops"] or 0), "bytes": int(case["bytes"] or 0),
        "size": case.get("size", math.prod(int(s) for s in case["shape"])),
        "baseline_name": case["baseline_name"], "tol": tolerance(dtype, case.get("tol")),
        "err": None, "ok": False, "error": None,
        "time_ms": None, "baseline_ms": None, "torch_ms": None, "torch_name": None,
    }  # fmt: skip
    try:
        _check_and_time(env, case, row, repeats, warmup, with_torch, budget_s)
    except Exception as e:
        row["error"] = f"ERROR in {case['name']} {tuple(row['shape'])} {dtype}: {type(e).__name__}: {e}"[:500]
    finally:
        try:
            env.release()  # the closures died with _check_and_time's frame: hand their memory back
        except Exception as e:
            eprint(f"harness: releasing memory after {case['name']} failed ({type(e).__name__}: {e})")
    return _finish(env, row)


def _check_and_time(env, case, row, repeats, warmup, with_torch, budget_s):
    """Fill ``row`` in place; every array lives in this frame only (see :func:`run_case`)."""
    full = materialise(case)
    row["baseline_name"] = full["baseline_name"]
    err = float(full["check"]())
    env.sync()
    row["err"] = err
    if math.isnan(err) or err > row["tol"]:
        row["error"] = (
            f"WRONG RESULT: {row['op']} {tuple(row['shape'])} {row['dtype']}: max relative error {err:.3g} "
            f"against {row['baseline_name']} exceeds the {row['dtype']} tolerance {row['tol']:.1g}"
        )
        return
    flush = env.gpu and "runs" not in full and row["bytes"] < 4 * env.l2_bytes
    row["time_ms"], _ = time_fn(env, full.get("runs", full["run"]), repeats, warmup, flush, budget_s)
    try:
        row["baseline_ms"], _ = time_fn(
            env, full.get("baselines", full["baseline"]), repeats, warmup, flush and "baselines" not in full, budget_s
        )
    except Exception as e:  # conch's checked time stands; the row says what the baseline did
        row["baseline_name"] = f"{row['baseline_name']} (failed: {type(e).__name__}: {e})"[:200]
    if with_torch and (callable(full.get("torch")) or callable(full.get("torch_factory"))):
        try:
            # a factory builds PyTorch's inputs only now, so they are freed again after this case
            tfn = full["torch"] if callable(full.get("torch")) else full["torch_factory"]()
            if tfn is not None:
                row["torch_ms"], _ = time_fn(env, tfn, repeats, warmup, flush, budget_s)
                row["torch_name"] = full.get("torch_name", "torch")
            del tfn
        except Exception as e:  # PyTorch is an extra: its failure must not sink conch's row
            row["torch_name"] = f"torch failed: {type(e).__name__}: {e}"[:200]
    row["ok"] = True


def _finish(env, row):
    flops, nbytes = row["flops"], row["bytes"]
    peak_f = matmul_peak(env, row["dtype"])["tflops"] if flops else None
    peak_b = copy_peak(env)["gbps"] if nbytes else None
    bound, val, unit, pct = _throughput(flops, nbytes, row["time_ms"], peak_f, peak_b)
    row.update(bound=bound, throughput=val, unit=unit, pct_peak=pct)
    for impl in ("baseline", "torch"):
        row[f"{impl}_throughput"] = _throughput(flops, nbytes, row[f"{impl}_ms"], peak_f, peak_b)[1]
    row["speedup"] = row["baseline_ms"] / row["time_ms"] if row["time_ms"] and row["baseline_ms"] else None
    row["torch_speedup"] = row["torch_ms"] / row["time_ms"] if row["time_ms"] and row["torch_ms"] else None
    return row


def run_cases(
    env: Env, cases, repeats=20, warmup=2, with_torch=True, budget_s=1.0, progress=None, deadline=None
) -> list:
    """Run every case in order; ``progress(row)`` is called after each (e.g. to print a line or save JSON).

    ``deadline``: a ``time.monotonic()`` value after which no further case starts (the rows returned are
    then fewer than the cases; the caller says how many were left out).
    """
    rows = []
    for case in cases:
        if deadline is not None and time.monotonic() >= deadline:
            break
        row = run_case(env, case, repeats, warmup, with_torch, budget_s)
        rows.append(row)
        if progress is not None:
            progress(row)
    return rows


def failures(rows) -> list:
    """The rows whose kernel was wrong or raised."""
    return [r for r in rows if not r.get("ok")]


# ----------------------------------------------------------------------------------------------------------------
# Helpers for bench_<family>.py: array module, dtypes, random inputs, the check's error measure
# ----------------------------------------------------------------------------------------------------------------


def family_xp(xp=None):
    """The array module a family's cases use: ``xp`` when given (NumPy in the CPU tests), else CuPy on a
    usable GPU; RuntimeError otherwise (``conch bench`` only calls ``cases()`` with a GPU)."""
    if xp is not None:
        return xp
    cp = get_cupy()
    if cp is None:
        raise RuntimeError("these benchmark cases need a CUDA GPU through CuPy (or pass xp=numpy)")
    return cp


def storage_dtype(name):
    """The array dtype of a case dtype: ``"bfloat16"`` -> ml_dtypes.bfloat16, ``"tf32"`` -> float32."""
    import numpy as np

    name = canonical_dtype(name)
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype("float32" if name == "tf32" else name)


def randn(xp, rng, shape, dtype, scale=1.0, shift=0.0):
    """Standard normal draws (float32, times ``scale`` plus ``shift``) stored in ``dtype``: never zeros,
    which would hide unwritten outputs and can run faster than real data."""
    x = rng.standard_normal(shape, dtype=xp.float32)
    if scale != 1.0:
        x *= scale
    if shift != 0.0:
        x += shift
    return x.astype(storage_dtype(dtype))


def rel_err(a, b) -> float:
    """``max |a - b| / max |b|`` computed in float32 (NaN anywhere gives NaN, which fails the check)."""
    a = a.astype("float32")
    b = b.astype("float32")
    return float(abs(a - b).max() / max(float(abs(b).max()), 1e-30))


def erf_fn(xp):
    """``erf`` for ``xp``'s arrays: cupyx.scipy.special.erf on CuPy, scipy.special.erf on NumPy."""
    if xp.__name__ == "numpy":
        from scipy.special import erf
    else:
        from cupyx.scipy.special import erf
    return erf


def pick_sizes(sizes, default):
    """``sizes`` (a ``--sizes`` list) when given, else ``default``, as a tuple of ints."""
    return tuple(int(s) for s in sizes) if sizes else tuple(default)


def wanted_dtypes(dtype, default):
    """The case dtypes to build: ``(canonical dtype,)`` when ``dtype`` is given, else ``default``."""
    return (canonical_dtype(dtype),) if dtype else tuple(default)


# ----------------------------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------------------------

#: (header, key, format) of the kernel table.
KERNEL_COLUMNS = [
    ("op", "op", "s"), ("shape", "shape", "shape"), ("dtype", "dtype", "s"), ("time ms", "time_ms", ".4g"),
    ("throughput", "throughput_str", "s"), ("% peak", "pct_peak_str", "s"), ("baseline", "baseline_name", "s"),
    ("base ms", "baseline_ms", ".4g"), ("speedup", "speedup", ".2f"), ("torch ms", "torch_ms", ".4g"),
    ("vs torch", "torch_speedup", ".2f"), ("max rel err", "err", ".1e"), ("check", "check_str", "s"),
]  # fmt: skip


#: the default ``conch bench`` table: fits 120 columns; the baseline's name and time, torch's time and the error
#: are in KERNEL_COLUMNS (``--wide``, the markdown file and the JSON)
COMPACT_KERNEL_COLUMNS = [
    ("op", "op", "s"), ("shape", "shape", "shape"), ("dtype", "dtype", "s"), ("time ms", "time_ms", ".4g"),
    ("throughput", "throughput_str", "s"), ("% peak", "pct_peak_str", "s"), ("vs base", "speedup", ".2f"),
    ("vs torch", "torch_speedup", ".2f"), ("check", "check_str", "s"),
]  # fmt: skip


def remeasure_peaks(env: Env) -> list:
    """Measure every peak in ``env.peaks`` again (after the cases) and keep the best of the two measurements.

    A peak taken while other jobs share the machine is too low and puts kernels above 100% of it; the best of
    a measurement before and one after the cases is less likely to be. Returns notes on peaks that moved by
    more than 20% between the two (the machine was busy).
    """
    before = {k: dict(v) for k, v in env.peaks.items()}
    env.peaks.clear()
    for key in before:
        if key == "copy":
            copy_peak(env)
        elif key == "matmul":
            matmul_peak(env, "float32")
        elif key.startswith("matmul_"):
            matmul_peak(env, key[len("matmul_") :])
    notes = []
    for key, old in before.items():
        field, unit = ("tflops", "TFLOP/s") if "tflops" in old else ("gbps", "GB/s")
        a, b = old.get(field), (env.peaks.get(key) or {}).get(field)
        best = max(v for v in (a, b, 0.0) if v is not None) or None
        env.peaks[key] = {field: best, "how": old["how"] + "; best of before and after the cases",
                          "before": a, "after": b}  # fmt: skip
        if a and b and max(a, b) > 1.2 * min(a, b):
            notes.append(f"peak {key} measured {a:.4g} then {b:.4g} {unit}: the machine was busy; % peak uses the best")
    return notes


def apply_peaks(env: Env, rows) -> int:
    """Recompute each row's ``pct_peak`` against ``env.peaks`` and cap it at 100; returns how many were capped.

    A capped row keeps the uncapped figure in ``pct_peak_measured`` and is shown as ``100*``.
    """
    capped = 0
    for r in rows:
        if r.get("throughput") is None or r.get("pct_peak") is None:
            continue
        if r.get("unit") == "TFLOP/s":
            key = f"matmul_{canonical_dtype(r['dtype'])}" if env.gpu else "matmul"
            peak = (env.peaks.get(key) or {}).get("tflops")
        else:
            peak = (env.peaks.get("copy") or {}).get("gbps")
        if not peak:
            continue
        pct = 100.0 * r["throughput"] / peak
        if pct > 100.0:
            r["pct_peak_measured"], r["pct_capped"], pct = pct, True, 100.0
            capped += 1
        r["pct_peak"] = pct
    return capped


def nonempty_columns(rows, columns) -> list:
    """``columns`` less those whose every cell is ``-`` (no PyTorch: no torch columns)."""
    return [c for c in columns if any(fmt_value(r.get(c[1]), c[2]) != "-" for r in rows)] if rows else columns


def fmt_value(v, spec="s") -> str:
    """One table cell: ``-`` for None, shapes as 4096x4096, numbers with ``spec``."""
    if v is None:
        return "-"
    if spec == "shape":
        return "x".join(str(s) for s in v) if isinstance(v, (list, tuple)) else str(v)
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return str(v)
    if spec != "s" and isinstance(v, (int, float)) and not isinstance(v, bool):
        return format(v, spec)
    return str(v)


def table_rows(rows) -> list:
    """Kernel result rows with the derived display keys (``throughput_str``, ``check_str``) added."""
    out = []
    for r in rows:
        r = dict(r)
        r["throughput_str"] = f"{r['throughput']:.4g} {r['unit']}" if r.get("throughput") is not None else None
        r["check_str"] = "ok" if r.get("ok") else ("WRONG" if r.get("err") is not None else "ERROR")
        pct = r.get("pct_peak")
        r["pct_peak_str"] = None if pct is None else f"{pct:.1f}" + ("*" if r.get("pct_capped") else "")
        out.append(r)
    return out


def format_table(rows, columns, markdown=False) -> str:
    """Aligned text table (or a GitHub markdown table) of ``rows`` (dicts) with ``columns`` (header, key, fmt)."""
    headers = [c[0] for c in columns]
    cells = [[fmt_value(r.get(key), spec) for _, key, spec in columns] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
        return "\n".join(lines)
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    fmt_line = "  ".join("{:<" + str(w) + "}" for w in widths)
    lines = [fmt_line.format(*headers), fmt_line.format(*("-" * w for w in widths))]
    lines += [fmt_line.format(*row) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


# ----------------------------------------------------------------------------------------------------------------
# JSON
# ----------------------------------------------------------------------------------------------------------------


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items() if not callable(x)}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return str(v)  # strict JSON has no NaN/inf
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if hasattr(v, "item"):  # NumPy/CuPy scalars
        return _jsonable(v.item())
    return str(v)


def make_payload(name, kind, results, env: Env | None = None, **extra) -> dict:
    """The JSON document every benchmark writes (``schema`` "conch-bench/1").

    ``{"schema", "name", "kind": "kernels"|"e2e"|..., "device", "info", "peaks", "results": [rows], ...}``;
    each row is a flat dict of numbers and strings. :mod:`benchmarks.summary` reads any such file.
    """
    doc = {
        "schema": SCHEMA,
        "name": name,
        "kind": kind,
        "device": env.device if env else None,
        "timer": (("cupy events" if env.gpu else "perf_counter") if env else None),
        "info": dict(env.info) if env else {"commit": git_commit(), "date": _now()},
        "peaks": dict(env.peaks) if env else {},
        "results": list(results),
    }
    doc.update(extra)
    return _jsonable(doc)


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def write_json(path, payload) -> None:
    """Write ``payload`` (see :func:`make_payload`) to ``path``, creating its folder."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "w") as f:
        json.dump(_jsonable(payload), f, indent=1, allow_nan=False)
        f.write("\n")


def validate_payload(doc) -> None:
    """Raise ValueError when ``doc`` does not follow the conch-bench/1 schema."""
    if not isinstance(doc, dict):
        raise ValueError(f"benchmark JSON must be an object, got {type(doc).__name__}")
    for k, t in (("schema", str), ("name", str), ("kind", str), ("results", list)):
        if not isinstance(doc.get(k), t):
            raise ValueError(f"benchmark JSON: key {k!r} must be a {t.__name__}, got {doc.get(k)!r:.80}")
    if doc["schema"] != SCHEMA:
        raise ValueError(f"benchmark JSON schema {doc['schema']!r}, expected {SCHEMA!r}")
    for i, r in enumerate(doc["results"]):
        if not isinstance(r, dict):
            raise ValueError(f"benchmark JSON: results[{i}] must be an object")
        for k, v in r.items():
            if isinstance(v, (dict,)):
                raise ValueError(f"benchmark JSON: results[{i}][{k!r}] must be flat (numbers, strings, lists)")


# ----------------------------------------------------------------------------------------------------------------
# Plot
# ----------------------------------------------------------------------------------------------------------------


def plot(rows, path, title="conch kernel benchmarks") -> int:
    """Throughput against size, one panel per (op, dtype), one line per implementation; returns panels drawn.

    Like Triton's perf_report: x is ``size`` (the case's ``size`` or its element count), y the achieved
    TFLOP/s or GB/s of conch, the baseline and PyTorch measured in the same run.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict = {}
    for r in rows:
        if r.get("throughput") is None:
            continue
        groups.setdefault((r["op"], r["dtype"]), []).append(r)
    if not groups:
        return 0
    n = len(groups)
    ncol = min(4, n)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow), squeeze=False)
    for ax, ((op, dtype), rs) in zip(axes.flat, sorted(groups.items())):
        rs = sorted(rs, key=lambda r: r["size"])
        xs = [r["size"] for r in rs]
        for key, label, style in (
            ("throughput", "conch", "o-"),
            ("baseline_throughput", rs[0]["baseline_name"][:32], "s--"),
            ("torch_throughput", "torch", "^:"),
        ):
            pts = [(x, r.get(key)) for x, r in zip(xs, rs) if r.get(key) is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{op} {dtype}", fontsize=9)
        ax.set_xlabel("size (elements or problem size)", fontsize=8)
        ax.set_ylabel(rs[0]["unit"], fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return n


def eprint(*a):
    print(*a, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------------
# End-to-end helpers (shared by bench_e2e_*.py and the other training benchmarks)
# ----------------------------------------------------------------------------------------------------------------


def conch_sync(device) -> None:
    """Wait for conch's queued GPU work on ``device`` (no-op on the CPU)."""
    if str(device).startswith("cuda"):
        cp = get_cupy()
        if cp is not None:
            cp.cuda.Device().synchronize()


def torch_sync(torch, device) -> None:
    """Wait for PyTorch's queued GPU work on ``device`` (no-op on the CPU)."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(step, sync, seconds=2.0, min_steps=5, max_steps=10_000, warmup=3) -> dict:
    """Steps per second of ``step()`` (a whole training step), synchronising with ``sync()`` around the run.

    ``warmup`` untimed steps first (compilation, autotuning, allocator growth), then a short probe to pick a
    step count that lasts about ``seconds``, then one timed run: {"steps", "seconds", "steps_per_s", "ms_per_step"}.
    """
    for _ in range(warmup):
        step()
    sync()
    t = time.perf_counter()
    step()
    sync()
    est = max(time.perf_counter() - t, 1e-6)
    n = int(min(max_steps, max(min_steps, seconds / est)))
    sync()
    t = time.perf_counter()
    for _ in range(n):
        step()
    sync()
    dt = time.perf_counter() - t
    return {"steps": n, "seconds": dt, "steps_per_s": n / dt, "ms_per_step": 1e3 * dt / n}


def interleaved(measure_a, measure_b, rounds=3, pause=0.25) -> tuple:
    """Run ``measure_a()`` and ``measure_b()`` alternately ``rounds`` times (so machine drift hits both alike);
    returns the two lists of results. ``pause`` seconds of sleep before each measurement let the other
    side's spinning thread pools (OpenBLAS, OpenMP) go idle first."""
    a, b = [], []
    for _ in range(max(1, rounds)):
        time.sleep(pause)
        a.append(measure_a())
        time.sleep(pause)
        b.append(measure_b())
    return a, b


def median_of(results, key):
    """Median of ``r[key]`` over a list of dicts."""
    return statistics.median(r[key] for r in results)


def copy_params_to_torch(conch_module, torch_module, by_name=True) -> int:
    """Copy every parameter of a conch module into the same-shaped PyTorch module; returns how many.

    ``by_name``: match ``named_parameters()`` names (the two models must use the same attribute names);
    otherwise match by order. Raises ValueError naming the first mismatch.
    """
    import numpy as np
    import torch

    cps = list(conch_module.named_parameters())
    tps = list(torch_module.named_parameters())
    if len(cps) != len(tps):
        raise ValueError(f"conch model has {len(cps)} parameters, torch model {len(tps)}")
    if by_name:
        tmap = dict(tps)
        pairs = []
        for n, p in cps:
            if n not in tmap:
                raise ValueError(f"torch model has no parameter {n!r} (has {sorted(tmap)[:8]}...)")
            pairs.append((n, p, tmap[n]))
    else:
        pairs = [(cn, cp_, tp) for (cn, cp_), (_, tp) in zip(cps, tps)]
    with torch.no_grad():
        for n, cp_, tp in pairs:
            arr = np.ascontiguousarray(np.asarray(cp_.detach().cpu().numpy(), dtype=np.float32))
            if tuple(arr.shape) != tuple(tp.shape):
                raise ValueError(f"parameter {n!r}: conch shape {arr.shape} vs torch shape {tuple(tp.shape)}")
            tp.copy_(torch.from_numpy(arr).to(device=tp.device, dtype=tp.dtype))
    return len(pairs)


class CupyPeakMemory:
    """Peak bytes in use in CuPy's default memory pool while the ``with`` block runs (GPU only).

    Installs an allocator that reads ``used_bytes()`` after every allocation (frees only lower it, so this
    is the exact peak), and restores the pool's allocator on exit. Adds Python work per allocation: measure
    memory in a separate, untimed step. ``.peak`` holds the result.
    """

    def __init__(self):
        self.cp = get_cupy()
        self.peak = None

    def __enter__(self):
        cp = self.cp
        pool = cp.get_default_memory_pool()
        cp.cuda.Device().synchronize()
        self.peak = pool.used_bytes()

        def alloc(size):
            mem = pool.malloc(size)
            used = pool.used_bytes()
            if used > self.peak:
                self.peak = used
            return mem

        self._pool = pool
        cp.cuda.set_allocator(alloc)
        return self

    def __exit__(self, *exc):
        self.cp.cuda.Device().synchronize()
        self.cp.cuda.set_allocator(self._pool.malloc)
        return False


def ratio_row(case, metric, conch, torch, higher_is_better=True, baseline_name="torch", **extra) -> dict:
    """One end-to-end result row, the layout every non-kernel benchmark writes.

    ``torch`` is the baseline's value (PyTorch, or what ``baseline_name`` says: "conch fp32", "numpy"...).
    ``ratio`` is conch/baseline for rates and baseline/conch for times and memory (``higher_is_better``
    False), so a ratio above 1 always means conch (or the feature measured) did better. The row keeps the
    baseline's value under ``baseline`` and, when the baseline is PyTorch, under ``torch`` too.
    """
    ratio = None
    if conch and torch:
        ratio = conch / torch if higher_is_better else torch / conch
    row = {"case": case, "metric": metric, "conch": conch, "baseline": torch, "baseline_name": baseline_name,
           "ratio": ratio, "better": "higher" if higher_is_better else "lower"}  # fmt: skip
    if str(baseline_name).startswith("torch"):
        row["torch"] = torch
    row.update(extra)
    if "ok" in row and "check" not in row:
        row["check"] = "ok" if row["ok"] else "FAILED"
    return row


E2E_COLUMNS = [
    ("case", "case", "s"), ("device", "device", "s"), ("metric", "metric", "s"), ("conch", "conch", ".4g"),
    ("baseline", "baseline", ".4g"), ("vs", "baseline_name", "s"), ("ratio (>1: conch better)", "ratio", ".3f"),
    ("check", "check", "s"),
]  # fmt: skip
