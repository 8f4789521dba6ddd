"""Thread settings of the CPU paths: a small persistent pool for elementwise and row-wise passes, and BLAS's threads.

``set_num_threads(n)`` sets both: the pool runs large elementwise/row-wise NumPy passes on ``n`` threads (NumPy
releases the GIL inside its ufunc loops, so chunks really run in parallel) and the BLAS library (OpenBLAS, MKL,
found by threadpoolctl) uses ``n`` threads for large products and one for small ones. The default is
``OMP_NUM_THREADS`` when set, else the cores this process may run on (``os.sched_getaffinity``).

Work is split into contiguous chunks of a flat range (elements, or rows for row-wise reductions), one chunk per
thread, the caller running the first. An elementwise result is the same bit for bit whatever the chunking (each
element is computed by the same instructions), and a row-wise reduction is split between rows, never within a
row, so results never depend on the thread count::

    out = np.empty_like(x)
    parallel_for(x.size, lambda a, b: np.tanh(x.ravel()[a:b], out=out.ravel()[a:b]))

The pool and BLAS never oversubscribe the cores: pool workers run elementwise and row-wise code, and a product
runs on the calling thread while the workers sleep, with at most ``n`` BLAS threads. The one exception is
attention's CPU path (kernels/attention.py ``_by_heads``), which splits heads over the pool only when each head's
products are at most :data:`BLAS_SERIAL` multiply-adds, sizes OpenBLAS runs on the calling thread alone.
On a busy machine both use fewer threads, leaving out the cores other processes keep busy (/proc/stat, read
every LOAD_EVERY seconds; ``CONCH_ADAPT_THREADS=0`` turns this off): a thread waiting for a core another
process holds would hold up every pass it takes part in.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time

#: Below this much work (elements times elementwise passes per element) a pass runs on the calling thread:
#: handing a chunk to a worker costs ~20-40 us, about 2**21 float32 element-passes (measured for gelu, ~26
#: passes per element, between 2**16 and 2**17 elements; benchmarks/bench_cpu_models.py --threads-sweep).
MIN_PARALLEL = 1 << 21

#: Products with fewer multiply-adds than this (M·N·K) run with one BLAS thread: OpenBLAS's threads cost more to
#: wake than such a product saves (float32 GEMM, 1 vs 2 threads: even at 64x784x128 = 6.4e6, ahead from
#: 256^3 = 1.7e7), and under a busy machine they spin for the cores other processes hold.
BLAS_SMALL = 1 << 23

#: OpenBLAS runs a GEMM of at most this many multiply-adds on one thread by itself (its SMP_THRESHOLD_MIN 65,536
#: times GEMM_MULTITHREAD_THRESHOLD 4): below it :func:`mm` needs no thread limit of its own.
BLAS_SERIAL = 1 << 18

_lock = threading.Lock()
_state: dict = {"n": None, "interop": None, "pool": None, "pool_n": 0, "blas": None, "blas_now": None}
#: How many parallel_for calls went to the pool (more than one thread): tests check a path really was split.
SPLITS = [0]
_local = threading.local()  # .busy: True inside a pool chunk (a nested parallel_for runs serially)


def _default_threads() -> int:
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env:
        try:
            n = int(env.split(",")[0])
        except ValueError:
            n = 0
        if n >= 1:
            return n
    return _cores()


def get_num_threads() -> int:
    """The number of threads of the CPU paths (pool and BLAS): ``OMP_NUM_THREADS``, else the usable cores."""
    n = _state["n"]
    if n is None:
        n = _state["n"] = _default_threads()
    return n


# ----------------------------------------------------------------------------------------------------------------
# A busy machine: threads that other processes' work would hold up are not used.
# ----------------------------------------------------------------------------------------------------------------

#: Seconds between two readings of the machine's load (/proc/stat: ~20 us each).
LOAD_EVERY = 0.25
_load: dict = {
    "t": -1.0,
    "busy": None,
    "own": None,
    "total": None,
    "others": 0.0,
    "adapt": None,
    "cores": None,
    "cores_t": 0.0,
}


def _adapting() -> bool:
    a = _load["adapt"]
    if a is None:
        a = _load["adapt"] = os.environ.get("CONCH_ADAPT_THREADS", "1").strip() not in ("0", "off", "false")
    return a


def _cpu_ticks():
    """(busy, total) clock ticks of all CPUs since boot, and this process's own CPU ticks (all its threads)."""
    with open("/proc/stat", "rb") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    t = os.times()
    return v[0] + v[1] + v[2] + v[5] + v[6] + v[7], sum(v), (t.user + t.system) * os.sysconf("SC_CLK_TCK")


def others_busy() -> float:
    """Cores other processes kept busy over the last ~LOAD_EVERY seconds (0.0 where /proc/stat is unreadable)."""
    now = time.monotonic()
    if now - _load["t"] < LOAD_EVERY:
        return _load["others"]
    _load["t"] = now
    try:
        busy, total, own = _cpu_ticks()
    except (OSError, ValueError, IndexError):
        return 0.0
    if _load["total"] is not None and total > _load["total"]:
        frac = ((busy - _load["busy"]) - (own - _load["own"])) / (total - _load["total"])
        _load["others"] = max(frac, 0.0) * (os.cpu_count() or 1)
    _load["busy"], _load["total"], _load["own"] = busy, total, own
    return _load["others"]


def effective_threads() -> int:
    """get_num_threads(), less the cores other processes are using (at least 1), unless CONCH_ADAPT_THREADS=0.

    On a busy machine a second thread (ours or BLAS's) waits for a core another process holds, and the whole
    pass waits for it: OpenBLAS's spinning threads made a training job ~30x slower. conch then runs on fewer
    threads, which changes no result (the pool's chunking is exact).
    """
    n = get_num_threads()
    if n <= 1 or not _adapting():
        return n
    return max(1, min(n, _cores() - int(others_busy() + 0.5)))


def _cores() -> int:
    """The cores this process may run on, read every LOAD_EVERY seconds (the affinity mask can change, taskset;
    a system call per BLAS product was ~1 us of every product's thread switch)."""
    now = time.monotonic()
    c = _load["cores"]
    if c is None or now - _load["cores_t"] >= LOAD_EVERY:
        try:
            c = max(len(os.sched_getaffinity(0)), 1)
        except (AttributeError, OSError):
            c = max(os.cpu_count() or 1, 1)
        _load["cores"], _load["cores_t"] = c, now
    return c


def _check_positive(name, n):
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"{name}: expected an int, got {type(n).__name__}")
    if n < 1:
        raise RuntimeError(f"{name}: number of threads must be positive, got {n}")


def set_num_threads(n: int) -> None:
    """Use ``n`` threads for the CPU elementwise/row-wise passes and for large BLAS products (PyTorch's name).

    ``conch.set_num_threads(1)`` makes every CPU op single-threaded, BLAS included. Example::

        conch.set_num_threads(2); assert conch.get_num_threads() == 2
    """
    _check_positive("set_num_threads", n)
    with _lock:
        _state["n"] = n
    # BLAS follows at once (threadpoolctl finds the library on the first call, ~10-50 ms): products that do not
    # go through blas_product (NumPy's @ inside an op) must see the new limit too
    _set_blas(effective_threads())


def get_num_interop_threads() -> int:
    """Accepted for PyTorch parity: conch runs one op at a time, so this only reports the value set (default 1)."""
    return _state["interop"] or 1


def set_num_interop_threads(n: int) -> None:
    """Accepted for PyTorch parity (conch has no inter-op parallelism); recorded for get_num_interop_threads."""
    _check_positive("set_num_interop_threads", n)
    _state["interop"] = n


def _after_fork():  # a forked child (DataLoader worker) has none of the parent's pool threads: start afresh
    global _lock
    _lock = threading.Lock()
    _state["pool"], _state["pool_n"] = None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


class _Task:
    """One parallel_for: chunks handed out in order to whichever thread asks first (the caller included), so a
    worker the scheduler wakes late (a busy machine) finds the work done rather than holding the caller up."""

    def __init__(self, body, bounds):
        self.body, self.bounds = body, bounds
        self.next, self.left, self.error = 0, len(bounds), None
        self.lock, self.done = threading.Lock(), threading.Event()

    def work(self):
        _local.busy = True
        try:
            while True:
                with self.lock:
                    i = self.next
                    if i >= len(self.bounds):
                        return
                    self.next = i + 1
                try:
                    self.body(*self.bounds[i])
                except BaseException as e:  # noqa: BLE001 - re-raised on the calling thread
                    self.error = self.error or e
                with self.lock:
                    self.left -= 1
                    if self.left == 0:
                        # every chunk has run: drop the body and the arrays it holds now, not when a worker woken
                        # late takes this task off the queue (the memory of a pass then outlived it, at random)
                        self.body = None
                        self.done.set()
        finally:
            _local.busy = False


def _worker(q):
    while True:
        task = q.get()
        if task is None:
            return
        task.work()
        task = None  # not held while waiting for the next one


def _pool(n_workers):
    """The queue the persistent workers (daemon threads) read tasks from, started on first use."""
    with _lock:
        if _state["pool"] is None or _state["pool_n"] != n_workers:
            old = _state["pool"]
            q = queue.SimpleQueue()
            for i in range(n_workers):
                threading.Thread(target=_worker, args=(q,), name=f"conch-cpu-{i}", daemon=True).start()
            if old is not None:
                for _ in range(_state["pool_n"]):
                    old.put(None)  # the old workers finish what they hold, then exit
            _state["pool"], _state["pool_n"] = q, n_workers
        return _state["pool"]


def threads_for(work: int) -> int:
    """How many threads a pass of ``work`` element-passes gets: 1 below :data:`MIN_PARALLEL`, else up to the setting."""
    if work < MIN_PARALLEL:
        return 1
    n = effective_threads()
    if n <= 1 or getattr(_local, "busy", False):
        return 1
    return min(n, work // max(MIN_PARALLEL // 2, 1))


def parallel_for(n: int, body, *, work: int | None = None, align: int = 16) -> None:
    """Call ``body(start, stop)`` over contiguous chunks covering ``range(n)``, on up to get_num_threads() threads.

    ``work`` is the pass's cost in element-passes (default ``n``); below :data:`MIN_PARALLEL` it is one call on
    this thread. The range is cut into a few chunks per thread (starts at multiples of ``align``, so cache lines stay
    with one thread) that the threads take in turn. ``body`` must write disjoint outputs per chunk; the first
    exception it raises is re-raised here once every chunk has finished.
    """
    t = min(threads_for(n if work is None else work), n)
    if t <= 1:
        body(0, n)
        return
    step = -(-n // (4 * t))
    if align > 1:
        step = -(-step // align) * align
    task = _Task(body, [(s, min(s + step, n)) for s in range(0, n, step)])
    SPLITS[0] += 1
    q = _pool(get_num_threads() - 1)
    for _ in range(t - 1):
        q.put(task)
    task.work()
    task.done.wait()
    if task.error is not None:
        raise task.error


def for_blocks(n: int, block: int, fn, *, work: int | None = None) -> None:
    """``fn(a, b)`` over consecutive ranges [a, b) of at most ``block`` elements covering ``range(n)``, the ranges
    split between the pool's threads (each thread runs its chunk block by block, so a multi-pass ``fn`` keeps
    its temporaries in the cache). ``work`` as in :func:`parallel_for`."""

    def body(lo, hi):
        for a in range(lo, hi, block):
            fn(a, min(a + block, hi))

    parallel_for(n, body, work=work)


def elementwise(fn, x, *args, out_dtype=None, block: int | None = None, work: int | None = None):
    """``fn(x, *args)`` for an elementwise ``fn`` of a NumPy array, over contiguous chunks on the pool.

    Returns a fresh C-contiguous array of x's shape (dtype ``out_dtype``, x's by default). ``block`` splits each
    thread's chunk further into blocks of that many elements (:func:`for_blocks`); ``work`` (default x.size)
    weighs the pass for the size threshold (elements times passes per element). Bit for bit ``fn(x, *args)``
    whatever the thread count.
    """
    import numpy as np

    xc = np.ascontiguousarray(x)
    out = np.empty(xc.shape, dtype=out_dtype or xc.dtype)
    xf, of = xc.reshape(-1), out.reshape(-1)

    def put(a, b):
        of[a:b] = fn(xf[a:b], *args)

    for_blocks(xf.size, block or max(xf.size, 1), put, work=work)
    return out


# ----------------------------------------------------------------------------------------------------------------
# BLAS: threadpoolctl finds the library NumPy links (OpenBLAS, MKL, BLIS); its set_num_threads is one C call.
# ----------------------------------------------------------------------------------------------------------------


def _blas_libs():
    libs = _state["blas"]
    # look again when modules were imported since (SciPy, for one, brings its own OpenBLAS, which a limit set
    # on NumPy's alone would miss); only reached when the limit changes, so a steady loop pays one len()
    if libs is None or _state.get("blas_key") != len(sys.modules):
        _state["blas_key"] = len(sys.modules)
        try:
            from threadpoolctl import ThreadpoolController

            libs = [_setter(c) for c in ThreadpoolController().lib_controllers if c.user_api == "blas"]
        except Exception:  # noqa: BLE001 - no threadpoolctl or an unknown library: leave BLAS alone
            libs = []
        _state["blas"] = libs
    return libs


def _setter(lib):
    """The function that sets ``lib``'s thread count: the library's own C function where threadpoolctl can name
    it (one ctypes call, ~0.3 us), else threadpoolctl's method (~5 us of Python: its symbol lookup and thread
    checks on every call; at 2 threads the 8x8 CNN step changes the limit ~14 times, ~70 us of a 1.7 ms step)."""
    name = {"openblas": "openblas_set_num_threads", "blis": "bli_thread_set_num_threads"}.get(lib.internal_api)
    if name and getattr(lib, "threading_layer", None) != "openmp":  # OpenMP's limits are per thread: leave those
        try:
            fn = lib._get_symbol(name)  # threadpoolctl's lookup with the library's symbol prefix and suffix
        except Exception:  # noqa: BLE001 - another threadpoolctl: its public method below
            fn = None
        if fn is not None:
            return fn
    return lib.set_num_threads


def _set_blas(n):
    for set_threads in _blas_libs():
        set_threads(n)
    _state["blas_now"] = n


def blas_threads() -> int | None:
    """The BLAS thread limit conch last applied (None before the first product or when no BLAS was found)."""
    return _state["blas_now"]


def blas_for(macs: int) -> None:
    """Set BLAS's threads for a product of ``macs`` multiply-adds: 1 below :data:`BLAS_SMALL`, else the setting.

    One C call (~0.5 us) when the limit changes, nothing otherwise.
    """
    want = 1 if macs < BLAS_SMALL else effective_threads()
    if _state["blas_now"] != want:
        _set_blas(want)


def blas_product(macs: int, fn, *args):
    """``fn(*args)`` (a BLAS product of ``macs`` multiply-adds) with :func:`blas_for`'s thread count, the BLAS
    limit set back to effective_threads() afterwards, so products elsewhere (NumPy's ``@`` in an op) keep it::

        z = blas_product(m * k * n, np.matmul, a, b)
    """
    blas_for(macs)
    try:
        return fn(*args)
    finally:
        n = effective_threads()
        if _state["blas_now"] != n:
            _set_blas(n)


def mm(a, b):
    """``a @ b`` for 2-D (or stacked) NumPy arrays with BLAS's threads chosen by the product's size: a product
    between :data:`BLAS_SERIAL` and :data:`BLAS_SMALL` multiply-adds runs on one BLAS thread. Left at the
    setting, OpenBLAS wakes its other threads for such a product (64x64x256 in the default MLP, the CNN's 10-way
    head) and their wake-up costs more than the split saves: the 8x8 CNN and the small MLP steps took ~4-8%
    longer at 2 threads than at 1. Smaller and larger products run as they are (no limit to set)."""
    macs = a.size * b.shape[1] if b.ndim == 2 else 0  # (..., K) @ (K, N): rows·K·N (stacked b: as it is)
    if macs <= BLAS_SERIAL or macs >= BLAS_SMALL or _state["blas_now"] == 1:
        return a @ b
    return blas_product(macs, _matmul, a, b)


def _matmul(a, b):
    return a @ b


def sum_rows(a):
    """``a.sum(0)`` of a 2-D (M, N) array, float32/float64 NumPy through BLAS: ``ones(M) @ a``, a matrix-vector
    product (the bias gradient of a linear layer, Σ_rows dZ).

    NumPy's ``sum(axis=0)`` adds row after row in its ufunc loop: 40 us for (1024, 384) float32 against 19 us for
    the product (OpenBLAS's gemv, one thread), and the product's blocked float32 sums err no more. Other dtypes
    and arrays (CuPy, float16) keep ``a.sum(0)``::

        db = sum_rows(dz.reshape(-1, n))      # (n,)
    """
    import numpy as np

    if type(a) is not np.ndarray or a.dtype.char not in "fd" or a.ndim != 2 or a.shape[0] < 2:
        return a.sum(0)
    return mm(np.ones(a.shape[0], a.dtype), a)
