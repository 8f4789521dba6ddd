"""conch's kernel autotuner: time candidate launch configs with CuPy events, cache the best in memory and on disk.

Triton's ``@triton.autotune`` and ``do_bench`` import torch, so conch times configs itself::

    cfg = pick("matmul_fwd", (dtype.name, bucket(M), bucket(N), bucket(K)), configs,
               bench=lambda c: launch(c), like=a)

The cache key is ``(kernel_name, GPU name, *key)``; the caller puts the dtype and the shape buckets
(:func:`bucket`) in ``key``. Results live in a memory dict and in a JSON file (``$CONCH_CACHE_DIR/autotune.json``,
default ``~/.cache/conch/autotune.json``), written atomically (temp file + ``os.replace``). Under the interpreter
or for NumPy arrays ``pick`` returns a fixed config without timing. Configs that fail to compile or launch
(too much shared memory, say) are skipped.

``CONCH_AUTOTUNE`` bounds the cost of tuning, which is mostly compile time: ``off`` (or ``0``) takes the first
config that launches without timing anything, ``N`` times only the first N candidates (lists are best-first).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import threading
import warnings
from collections.abc import Callable

import numpy as np

from ._launch import interpreting, tuning, xp_of

_VERSION = 1
_MEMORY: dict[str, dict] = {}
_DISK_LOADED: set[str] = set()
_LOCK = threading.Lock()

#: Calls before timing (the first one compiles) and timed calls per config; the median is kept.
WARMUP = 2
REPEATS = 7


def bucket(n: int) -> int:
    """``n`` rounded up to the next power of two (``bucket(0) == bucket(1) == 1``): the shape part of a key."""
    n = int(n)
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def cache_path() -> str:
    """The on-disk cache file: ``$CONCH_CACHE_DIR/autotune.json`` or ``~/.cache/conch/autotune.json``."""
    root = os.environ.get("CONCH_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "conch")
    return os.path.join(root, "autotune.json")


def clear_cache(*, disk: bool = False) -> None:
    """Forget the in-memory results (and delete the on-disk file too when ``disk``)."""
    with _LOCK:
        _MEMORY.clear()
        _DISK_LOADED.clear()
        if disk:
            try:
                os.remove(cache_path())
            except FileNotFoundError:
                pass


def _key_str(kernel_name, device, key) -> str:
    return json.dumps([kernel_name, device, *[str(k) if not isinstance(k, (int, float)) else k for k in key]])


def _read_disk(path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError, OSError):
        return {}
    if not isinstance(data, dict) or data.get("version") != _VERSION:
        return {}
    entries = data.get("entries", {})
    return entries if isinstance(entries, dict) else {}


def _load_disk_once() -> None:
    path = cache_path()
    if path not in _DISK_LOADED:
        _DISK_LOADED.add(path)
        for k, v in _read_disk(path).items():
            _MEMORY.setdefault(k, v)


def _write_disk(k: str, cfg: dict) -> None:
    """Merge one entry into the JSON file: read, update, write a temp file in the same folder, os.replace."""
    path = cache_path()
    try:
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        entries = _read_disk(path)
        entries[k] = cfg
        fd, tmp = tempfile.mkstemp(prefix=".autotune.", suffix=".json", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"version": _VERSION, "entries": entries}, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:  # a read-only home must not break a training run
        warnings.warn(f"conch autotune: could not write cache {path}: {e}", RuntimeWarning, stacklevel=3)


_PROPS: dict = {}


def device_props(xp, device_id: int | None = None) -> dict:
    """``getDeviceProperties`` of a CuPy device (the current one by default), queried once per device id.

    The query costs about 1 ms in CuPy and the properties never change, while :func:`pick` needs the name and
    the shared-memory limit on every launch. NumPy (``xp is np``) gives ``{"name": "cpu"}``.
    """
    if xp is np:
        return {"name": "cpu"}
    dev = xp.cuda.Device().id if device_id is None else int(device_id)
    props = _PROPS.get(dev)
    if props is None:
        props = dict(xp.cuda.runtime.getDeviceProperties(dev))
        name = props.get("name", "")
        props["name"] = name.decode() if isinstance(name, bytes) else str(name)
        _PROPS[dev] = props
    return props


def device_name(xp) -> str:
    """Name of the current GPU for CuPy (``"NVIDIA H100 80GB HBM3"``), ``"cpu"`` for NumPy."""
    return device_props(xp)["name"]


def shared_limit(xp) -> int | None:
    """Opt-in shared memory per block of the current GPU in bytes (``sharedMemPerBlockOptin``, what Triton checks
    a kernel's shared memory against before a launch); None for NumPy or when the driver does not say."""
    if xp is np:
        return None
    props = device_props(xp)
    limit = props.get("sharedMemPerBlockOptin") or props.get("sharedMemPerBlock")
    return int(limit) if limit else None


def fitting(configs: list[dict], smem: Callable[[dict], int] | None, limit: int | None) -> list[dict]:
    """The configs whose shared memory ``smem(cfg)`` (an upper bound, see each kernel's ``smem_bytes``) fits in
    ``limit`` bytes, in their order (the lists are best-first). No estimate or no limit keeps them all."""
    if smem is None or limit is None:
        return list(configs)
    return [c for c in configs if smem(c) <= limit]


def event_timer(xp) -> Callable[[Callable[[], None]], float]:
    """A timer ``t(fn) -> milliseconds`` for one call of ``fn``, using CuPy events on the current stream.

    Triton launches on the driver's current stream, which is CuPy's legacy default stream unless either
    side sets one; the events below go on CuPy's current stream, so the two agree in the default setup.
    """

    def timer(fn):
        start, end = xp.cuda.Event(), xp.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return xp.cuda.get_elapsed_time(start, end)

    return timer


def _fit(kernel_name, key, configs, smem, limit, xp) -> list[dict]:
    """``configs`` less those that cannot fit in the GPU's shared memory (never empty: that is an error)."""
    if limit is None and smem is not None:
        limit = shared_limit(xp if xp is not None else np)
    fit = fitting(configs, smem, limit)
    if not fit:
        need = ", ".join(f"{c}: {smem(c)} bytes" for c in configs)
        raise RuntimeError(f"autotune.pick({kernel_name!r}, {key}): no config fits in {limit} bytes of shared "
                           f"memory: {need}")  # fmt: skip
    return fit


def pick(
    kernel_name: str,
    key: tuple,
    configs: list[dict],
    bench: Callable[[dict], None],
    *,
    like=None,
    interpret_config: dict | None = None,
    timer: Callable[[Callable[[], None]], float] | None = None,
    smem: Callable[[dict], int] | None = None,
    limit: int | None = None,
) -> dict:
    """The fastest of ``configs`` for ``(kernel_name, GPU, *key)``, timing ``bench(config)`` once per key.

    ``bench(cfg)`` must launch the kernel with ``cfg`` (and be safe to repeat). ``like``: an array whose
    namespace (``xp_of``) says where it runs; NumPy arrays, or ``TRITON_INTERPRET=1`` with no ``like``, give
    ``interpret_config`` (default ``configs[0]``) without timing. ``timer(fn) -> ms`` replaces the CuPy-event
    timer (tests inject a fake one to run on the CPU). ``smem(cfg)``: the kernel's shared-memory bound in bytes;
    configs above ``limit`` (default: the GPU's ``sharedMemPerBlockOptin``) are dropped before anything is
    compiled, so ``CONCH_AUTOTUNE=N`` times the first N that fit. Configs whose bench raises are skipped; if
    every one fails, RuntimeError lists why.
    """
    if not configs:
        raise ValueError(f"autotune.pick({kernel_name!r}): no candidate configs")
    xp = xp_of(like) if like is not None else None
    if timer is None:
        on_cpu = xp is np if xp is not None else interpreting()
        if on_cpu:
            return dict(interpret_config if interpret_config is not None else configs[0])
        if xp is None:
            from ._cupy import get_cupy

            xp = get_cupy()
            if xp is None:
                return dict(interpret_config if interpret_config is not None else configs[0])
        timer = event_timer(xp)
    budget = os.environ.get("CONCH_AUTOTUNE", "").strip().lower()
    if budget in ("0", "off", "no", "false"):
        # no timing: the first config that launches (compiles are the cost of tuning; tests don't need it);
        # remembered in memory so the probe launch happens once per key, but never written to disk
        k = ("untimed", _key_str(kernel_name, device_name(xp if xp is not None else np), key))
        with _LOCK:
            hit = _MEMORY.get(k)
        if hit is not None:
            return dict(hit)
        errors = []
        for cfg in _fit(kernel_name, key, configs, smem, limit, xp):
            try:
                with tuning():
                    bench(cfg)
                with _LOCK:
                    _MEMORY[k] = dict(cfg)
                return dict(cfg)
            except Exception as e:
                errors.append(f"{cfg}: {type(e).__name__}: {e}")
        raise RuntimeError(f"autotune.pick({kernel_name!r}, {key}): every config failed:\n" + "\n".join(errors))
    device = device_name(xp if xp is not None else np)
    k = _key_str(kernel_name, device, key)
    with _LOCK:
        _load_disk_once()
        hit = _MEMORY.get(k)
    if hit is not None:
        return dict(hit)
    configs = _fit(kernel_name, key, configs, smem, limit, xp)
    if budget.isdigit():  # CONCH_AUTOTUNE=N: time only the first N candidates (the list is best-first)
        configs = configs[: max(int(budget), 1)]

    results, errors = [], []
    for cfg in configs:
        try:
            with tuning():
                for _ in range(WARMUP):
                    bench(cfg)
                ms = statistics.median(timer(lambda c=cfg: bench(c)) for _ in range(REPEATS))
        except Exception as e:  # out of shared memory, too many registers, compile errors: skip the config
            errors.append(f"{cfg}: {type(e).__name__}: {e}")
            continue
        results.append((ms, cfg))
    if not results:
        raise RuntimeError(f"autotune.pick({kernel_name!r}, {key}): every config failed:\n" + "\n".join(errors))
    best = dict(min(results, key=lambda r: r[0])[1])
    with _LOCK:
        _MEMORY[k] = best
    _write_disk(k, best)
    return dict(best)
