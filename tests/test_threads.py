"""CPU threads: set/get_num_threads and OMP_NUM_THREADS, the pool's chunking, BLAS limits, and every pooled path
giving the same bits on 1, 2 and 3 threads (odd sizes, thresholds lowered so small arrays are split)."""

import os
import threading
import time

import numpy as np
import pytest

import conch
from conch.kernels import _act, _threads, activations, dropout, norms, optim, softmax

ODD = [(101,), (1023,), (3, 337), (5, 7, 61)]  # each more than one block of split_small's 100


@pytest.fixture
def restore_threads(monkeypatch):
    """Restore the thread setting afterwards; the load adaptation is off (the machine's load must not decide
    how many threads a test's pass gets)."""
    monkeypatch.setitem(_threads._load, "adapt", False)
    before = conch.get_num_threads()
    yield
    conch.set_num_threads(before)


@pytest.fixture
def split_small(monkeypatch, restore_threads):
    """Pool every pass (threshold 64 element-passes), cut the blockwise paths into small blocks, and take the
    NumPy reference paths (the ones the pool serves)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("CONCH_KERNELS", "reference")
    monkeypatch.setattr(_threads, "MIN_PARALLEL", 64)
    monkeypatch.setattr(_act, "_BLOCK", 100)
    monkeypatch.setattr(optim, "_REF_BLOCK", 50)
    monkeypatch.setattr(dropout, "_PHILOX_BLOCK", 96)
    monkeypatch.setattr(dropout, "_RAW_BLOCK", 100)  # not a multiple of 8: chunks start mid-block


def on_threads(fn, counts=(1, 2, 3)):
    """fn() under each thread count; asserts the multi-thread runs really went to the pool."""
    out = []
    for n in counts:
        conch.set_num_threads(n)
        before = _threads.SPLITS[0]
        out.append(fn())
        if n > 1:
            assert _threads.SPLITS[0] > before, f"nothing was split on {n} threads"
    return out


def assert_same_bits(results):
    first = results[0]
    for r in results[1:]:
        for a, b in zip(first if isinstance(first, tuple) else (first,), r if isinstance(r, tuple) else (r,)):
            if a is None:
                assert b is None
                continue
            a, b = np.asarray(a), np.asarray(b)
            assert a.dtype == b.dtype and a.shape == b.shape
            assert a.tobytes() == b.tobytes()


# ---------------------------------------------------------------- settings


def test_set_and_get_num_threads(restore_threads):
    conch.set_num_threads(3)
    assert conch.get_num_threads() == 3
    conch.set_num_threads(1)
    assert conch.get_num_threads() == 1


@pytest.mark.parametrize("bad,exc", [(0, RuntimeError), (-2, RuntimeError), (1.5, TypeError), (True, TypeError)])
def test_set_num_threads_rejects_bad_values(bad, exc, restore_threads):
    with pytest.raises(exc, match="set_num_threads"):
        conch.set_num_threads(bad)


def test_default_follows_omp_num_threads_else_affinity(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert _threads._default_threads() == 5
    monkeypatch.setenv("OMP_NUM_THREADS", "3,2")  # OpenMP's nested list: the outer level counts
    assert _threads._default_threads() == 3
    import os

    cores = len(os.sched_getaffinity(0))
    for unset in ("", "zero", "0"):
        monkeypatch.setenv("OMP_NUM_THREADS", unset)
        assert _threads._default_threads() == cores
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert _threads._default_threads() == cores


def test_default_is_read_once_when_unset(monkeypatch, restore_threads):
    monkeypatch.setitem(_threads._state, "n", None)
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert conch.get_num_threads() == 4


def test_interop_threads_are_recorded(monkeypatch):
    monkeypatch.setitem(_threads._state, "interop", None)
    assert conch.get_num_interop_threads() == 1
    conch.set_num_interop_threads(2)
    assert conch.get_num_interop_threads() == 2
    with pytest.raises(RuntimeError, match="set_num_interop_threads"):
        conch.set_num_interop_threads(0)


def test_busy_machine_leaves_out_the_cores_others_use(monkeypatch, restore_threads):
    monkeypatch.setattr(_threads, "_cores", lambda: 4)
    conch.set_num_threads(4)
    for others, want in ((0.0, 4), (0.4, 4), (1.2, 3), (2.6, 1), (7.0, 1)):
        monkeypatch.setattr(_threads, "others_busy", lambda o=others: o)
        monkeypatch.setitem(_threads._load, "adapt", True)
        assert _threads.effective_threads() == want
        monkeypatch.setitem(_threads._load, "adapt", False)
        assert _threads.effective_threads() == 4  # CONCH_ADAPT_THREADS=0: the setting alone
    conch.set_num_threads(2)
    monkeypatch.setitem(_threads._load, "adapt", True)
    monkeypatch.setattr(_threads, "others_busy", lambda: 0.0)
    assert _threads.effective_threads() == 2  # never more than the setting


def test_others_busy_reads_the_machine(monkeypatch):
    if not os.path.exists("/proc/stat"):
        pytest.skip("no /proc/stat (not Linux): others_busy() is 0.0 there")
    monkeypatch.setattr(_threads, "LOAD_EVERY", 0.0)
    monkeypatch.setitem(_threads._load, "total", None)
    _threads.others_busy()
    time.sleep(0.05)
    v = _threads.others_busy()
    assert 0.0 <= v <= os.cpu_count()


def test_adapt_setting_comes_from_the_environment(monkeypatch):
    for value, want in (("0", False), ("off", False), ("1", True), ("", True)):
        monkeypatch.setenv("CONCH_ADAPT_THREADS", value)
        monkeypatch.setitem(_threads._load, "adapt", None)
        assert _threads._adapting() is want


# ---------------------------------------------------------------- the pool


@pytest.mark.parametrize("n", [1, 2, 17, 1000, 4099])
@pytest.mark.parametrize("threads", [2, 3, 5])
def test_parallel_for_covers_the_range_once(n, threads, monkeypatch, restore_threads):
    monkeypatch.setattr(_threads, "MIN_PARALLEL", 1)
    conch.set_num_threads(threads)
    hits = np.zeros(n, dtype=np.int64)
    seen = set()

    def body(a, b):
        assert 0 <= a < b <= n
        hits[a:b] += 1
        seen.add(threading.get_ident())

    _threads.parallel_for(n, body, align=16)
    np.testing.assert_array_equal(hits, 1)


def test_parallel_for_raises_the_bodys_error(monkeypatch, restore_threads):
    monkeypatch.setattr(_threads, "MIN_PARALLEL", 1)
    conch.set_num_threads(2)

    def body(a, b):
        if a > 0:
            raise ValueError(f"chunk {a}")

    with pytest.raises(ValueError, match="chunk"):
        _threads.parallel_for(1000, body)
    out = []
    _threads.parallel_for(1000, lambda a, b: out.append(b - a))  # the pool still works afterwards
    assert sum(out) == 1000


@pytest.mark.parametrize("sleep_worker", [False, True])
def test_parallel_for_releases_its_arrays_on_return(sleep_worker, monkeypatch, restore_threads):
    """What a pass's body holds is freed when parallel_for returns, even if a worker has not yet taken its copy of
    the task off the queue (a worker woken late used to keep the last pass's arrays alive, at random)."""
    import gc
    import weakref

    monkeypatch.setattr(_threads, "MIN_PARALLEL", 1)
    conch.set_num_threads(3)
    _threads.parallel_for(64, lambda a, b: None)  # the workers exist
    gate = threading.Event()
    if sleep_worker:  # hold one worker busy in another pass, so a copy of the next task waits in the queue
        threading.Thread(target=lambda: _threads.parallel_for(64, lambda a, b: gate.wait(5)), daemon=True).start()
        time.sleep(0.05)
    arr = np.ones(1 << 16)
    ref = weakref.ref(arr)
    out = np.zeros_like(arr)
    _threads.parallel_for(arr.size, lambda a, b, x=arr: np.copyto(out[a:b], x[a:b]))
    del arr
    gc.collect()
    try:
        assert ref() is None
        np.testing.assert_array_equal(out, 1.0)
    finally:
        gate.set()


def test_nested_parallel_for_runs_serially(monkeypatch, restore_threads):
    monkeypatch.setattr(_threads, "MIN_PARALLEL", 1)
    conch.set_num_threads(2)
    inner = []

    def body(a, b):
        before = _threads.SPLITS[0]
        _threads.parallel_for(100, lambda c, d: None)
        inner.append(_threads.SPLITS[0] - before)

    _threads.parallel_for(1000, body)
    assert inner and all(d == 0 for d in inner)  # no chunk handed its work to the pool again


def test_small_work_stays_on_the_calling_thread(restore_threads):
    conch.set_num_threads(2)
    ids = []
    _threads.parallel_for(_threads.MIN_PARALLEL - 1, lambda a, b: ids.append(threading.get_ident()))
    assert ids == [threading.get_ident()]
    assert _threads.threads_for(10 * _threads.MIN_PARALLEL) == 2
    conch.set_num_threads(1)
    assert _threads.threads_for(10 * _threads.MIN_PARALLEL) == 1


# ---------------------------------------------------------------- BLAS


def _blas_threads():
    from threadpoolctl import threadpool_info

    return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


def test_blas_follows_set_num_threads_and_small_products_use_one(restore_threads):
    if not _threads._blas_libs():
        pytest.skip("threadpoolctl finds no BLAS library in this NumPy build")
    big = _threads.BLAS_SMALL
    conch.set_num_threads(2)
    _threads.blas_for(big)
    assert _blas_threads() == {2}
    inside = _threads.blas_product(1000, lambda: _blas_threads())  # a small product: one thread while it runs
    assert inside == {1}
    assert _blas_threads() == {2}  # and the setting is back afterwards
    conch.set_num_threads(1)
    assert _blas_threads() == {1}
    assert _threads.blas_product(big, lambda: _blas_threads()) == {1}


def test_matmul_reference_runs_small_products_on_one_blas_thread(monkeypatch, restore_threads):
    if not _threads._blas_libs():
        pytest.skip("threadpoolctl finds no BLAS library in this NumPy build")
    from conch.kernels import matmul

    conch.set_num_threads(2)
    seen = []
    real = np.matmul
    monkeypatch.setattr(matmul, "blas_product", lambda macs, fn, *a: _threads.blas_product(
        macs, lambda *b: (seen.append(_blas_threads()), real(*b))[1], *a))  # fmt: skip
    a = np.ones((4, 5), np.float32)
    b = np.ones((5, 3), np.float32)
    out, _ = matmul.matmul_forward(a, b)
    np.testing.assert_array_equal(out, np.full((4, 3), 5, np.float32))
    assert seen == [{1}]
    assert _blas_threads() == {2}


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("shape", [(1024, 384), (37, 5), (1, 3), (0, 4), (6, 0), (2, 1)])
@pytest.mark.parametrize("layout", ["c", "f", "strided"])
def test_sum_rows_is_the_column_sum(dtype, shape, layout):
    """sum_rows (a linear layer's bias gradient: a BLAS gemv ones @ a) against a float64 column sum."""
    base = np.random.default_rng(3).standard_normal((shape[0], 2 * shape[1])).astype(dtype)
    a = {"c": np.ascontiguousarray(base[:, : shape[1]]), "f": np.asfortranarray(base[:, : shape[1]]),
         "strided": base[:, ::2]}[layout]  # fmt: skip
    got = _threads.sum_rows(a)
    assert got.shape == (shape[1],) and got.dtype == dtype
    tol = {np.float64: 1e-12, np.float32: 1e-5, np.float16: 2e-3}[dtype] * max(shape[0], 1)
    np.testing.assert_allclose(got.astype(np.float64), a.astype(np.float64).sum(0), rtol=0, atol=tol)


# ---------------------------------------------------------------- bit-exact pooled paths


@pytest.mark.parametrize("name", ["leaky_relu", "elu", "gelu", "gelu_tanh", "silu", "tanh", "sigmoid"])
@pytest.mark.parametrize("shape", ODD)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activations_same_bits_on_any_thread_count(name, shape, dtype, split_small):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)

    def run():
        y, res = activations.activation_forward(x, name)
        return y, activations.activation_backward(res, dy)

    assert_same_bits(on_threads(run))


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_same_bits_on_any_thread_count(amsgrad, decoupled, split_small):
    rng = np.random.default_rng(2)
    shapes = [(1023,), (7, 61), (3,)]
    start = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]

    def run():
        p = [a.copy() for a in start]
        m = [np.full_like(a, 0.1) for a in start]
        v = [np.full_like(a, 0.2) for a in start]
        vm = [np.full_like(a, 0.3) for a in start] if amsgrad else None
        for step in (1, 2):
            optim.adam_step(p, grads, m, v, vm, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1,
                            step=step, decoupled=decoupled, amsgrad=amsgrad)  # fmt: skip
        return tuple(p + m + v + (vm or []))

    assert_same_bits(on_threads(run))


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_same_bits_on_any_thread_count(nesterov, split_small):
    rng = np.random.default_rng(3)
    start = [rng.standard_normal(s).astype(np.float32) for s in [(1023,), (5, 41)]]
    grads = [rng.standard_normal(a.shape).astype(np.float32) for a in start]

    def run():
        p = [a.copy() for a in start]
        b = [np.zeros_like(a) for a in start]
        for first in (True, False):
            optim.sgd_step(p, grads, b, lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=nesterov, first_step=first)
        return tuple(p + b)

    assert_same_bits(on_threads(run))


@pytest.mark.parametrize("rms", [False, True])
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("shape", [(37, 33), (3, 13, 65), (129, 8), (130, 8), (67, 3)])
def test_norms_same_bits_on_any_thread_count(rms, affine, shape, split_small):
    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape).astype(np.float32) * 2 + 0.5
    dy = rng.standard_normal(shape).astype(np.float32)
    d = shape[-1]
    w = rng.standard_normal(d).astype(np.float32) if affine else None
    b = rng.standard_normal(d).astype(np.float32) if affine else None

    def run():
        if rms:
            y, res = norms.rms_norm_forward(x, w)
            return (y, res.rstd, *norms.rms_norm_backward(res, dy))
        y, res = norms.layer_norm_forward(x, w, b)
        return (y, res.mean, res.rstd, *norms.layer_norm_backward(res, dy))

    assert_same_bits(on_threads(run))


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("shape", [(37, 33), (3, 13, 65), (2, 5, 3, 7)])
def test_softmax_same_bits_on_any_thread_count(log, shape, split_small):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape).astype(np.float32) * 4
    dy = rng.standard_normal(shape).astype(np.float32)

    def run():
        y, res = softmax.softmax_forward(x, log=log)
        return y, softmax.softmax_backward(res, dy, log=log)

    assert_same_bits(on_threads(run))


@pytest.mark.parametrize("offset", [0, 2**32 - 500])  # the second straddles the high counter word's carry
def test_dropout_same_bits_on_any_thread_count(offset, split_small):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((7, 149)).astype(np.float32)

    def run():
        y, res = dropout.dropout_forward(x, 0.3, seed=11, offset=offset)
        dropout._MASKS.clear()  # draw each mask afresh, not from the cache
        return (y, dropout.dropout_backward(res, x), dropout.dropout_mask(x.shape, 0.3, 11, offset),
                dropout.rand_mask(x.shape, 0.3, 11, offset), dropout.philox_uniform(x.size, 11, offset))  # fmt: skip

    assert_same_bits(on_threads(run))


def test_threads_do_not_change_a_training_step(split_small):
    """End to end: an MLP's loss and parameters after two Adam steps are the same bits on 1 and 2 threads."""

    def run():
        conch.manual_seed(0)
        model = conch.nn.Sequential(conch.nn.Linear(33, 65), conch.nn.GELU(), conch.nn.LayerNorm(65),
                                    conch.nn.Linear(65, 9))  # fmt: skip
        opt = conch.optim.Adam(model.parameters(), lr=1e-2)
        x = conch.randn(31, 33)
        y = conch.randint(0, 9, (31,))
        for _ in range(2):
            loss = conch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return (loss.detach().numpy(), *(p.detach().numpy() for p in model.parameters()))

    assert_same_bits(on_threads(run, counts=(1, 2)))


def test_set_num_threads_limits_blas_before_any_product(monkeypatch, restore_threads):
    if not _threads._blas_libs():
        pytest.skip("threadpoolctl finds no BLAS library in this NumPy build")
    monkeypatch.setitem(_threads._state, "blas", None)  # as in a fresh process: the library not looked up yet
    conch.set_num_threads(1)
    assert _blas_threads() == {1}
    np.ones((300, 300), np.float32) @ np.ones((300, 300), np.float32)  # a plain NumPy product keeps the limit
    assert _blas_threads() == {1}


def test_blas_limit_reaches_a_library_loaded_later(restore_threads):
    # SciPy links its own OpenBLAS: a limit applied before it loaded must still reach it at the next change
    if not _threads._blas_libs():
        pytest.skip("threadpoolctl finds no BLAS library in this NumPy build")
    conch.set_num_threads(2)
    _threads.blas_for(_threads.BLAS_SMALL)
    import scipy.linalg  # noqa: F401  (loads scipy's BLAS if this build has its own)

    conch.set_num_threads(1)
    assert _blas_threads() == {1}
