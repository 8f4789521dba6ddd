"""The simulated CUDA device (conch.kernels.sim): CuPy's strictness, sync counting, memory, devices, kernels."""

import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from conch.kernels import sim
from conch.kernels._cupy import is_cupy_array


@pytest.fixture
def cp():
    """The fake cupy module, installed for this test only (left alone when the whole run is simulated)."""
    was = sim.INSTALLED
    sim.install()
    try:
        yield sys.modules["cupy"]
    finally:
        if not was:
            sim.uninstall()


def test_install_and_uninstall_leave_sys_modules_as_they_were():
    before = {k: sys.modules.get(k) for k in ("cupy", "cupyx", "cupy.cuda")}
    if sim.INSTALLED:
        pytest.skip("the whole run uses the simulated device")
    sim.install()
    assert sys.modules["cupy"].__version__ == "14.2.0 (simulated)"
    import cupy.cuda
    import cupyx.scipy.special  # noqa: F401

    assert cupy.cuda.is_available()
    sim.uninstall()
    assert {k: sys.modules.get(k) for k in before} == before


def test_arrays_look_like_cupy_and_refuse_implicit_host_conversion(cp):
    a = cp.arange(6, dtype=cp.float32).reshape(2, 3)
    assert type(a).__module__.startswith("cupy") and is_cupy_array(a) and isinstance(a, cp.ndarray)
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.asarray(a)
    with pytest.raises(TypeError, match="Unsupported type"):
        a + np.ones(3, np.float32)
    with pytest.raises(TypeError, match="Unsupported type"):
        np.ones(3, np.float32) * a
    with pytest.raises(TypeError, match="Unsupported type"):
        cp.exp(np.ones(3))
    with pytest.raises(TypeError, match="Unsupported type"):
        cp.concatenate([a, np.ones((2, 3))])
    with pytest.raises(AttributeError):
        cp.errstate  # noqa: B018  (NumPy has it, CuPy does not)
    # NumPy's functions and ufuncs dispatch to the device
    assert isinstance(np.sum(a), cp.ndarray) and isinstance(np.exp(a), cp.ndarray)


def test_results_are_device_arrays_views_share_memory_and_reductions_are_0d(cp):
    a = cp.arange(6, dtype=cp.float32)
    s = a.sum()
    assert isinstance(s, cp.ndarray) and s.shape == () and s.dtype == np.float32
    assert isinstance(cp.max(a), cp.ndarray) and isinstance(a[2], cp.ndarray) and a[2].shape == ()
    v = a[1:4]
    assert v.base is a and v.data.ptr == a.data.ptr + 4
    v[...] = 7
    a[0] += 1
    assert a.get().tolist() == [1, 7, 7, 7, 4, 5]
    assert a.reshape(2, 3).base is a and a.copy().base is None
    assert a.astype(np.float32, copy=False) is a
    assert cp.asarray(a) is a
    assert cp.ones(3).dtype == np.float64 and cp.arange(3).dtype == np.int64
    b = cp.ones(4, dtype=ml_dtypes.bfloat16)
    assert (b * 2).dtype == ml_dtypes.bfloat16


def test_host_syncs_are_counted_with_their_sites(cp):
    a = cp.arange(8, dtype=cp.float32)
    with sim.count_syncs() as s:
        b = (a * 2 + 1).sum(axis=0)
        c = cp.where(a > 3, a, 0) @ a
        d = a[cp.asarray([1, 2])]
        del b, c, d
    assert s.n == 0 and s.sites == []
    conversions = [
        lambda: a.sum().item(), lambda: float(a[0]), lambda: int(a[1]), lambda: bool(a[0] > 0), lambda: a.get(),
        lambda: cp.asnumpy(a), lambda: a.tolist(), lambda: repr(a), lambda: f"{a[0]:.2f}", lambda: a[a > 3],
        lambda: a.nonzero(), lambda: cp.nonzero(a), lambda: cp.unique(a), lambda: cp.where(a > 1),
        lambda: cp.cuda.Device().synchronize(), lambda: cp.cuda.Stream.null.synchronize(),
    ]  # fmt: skip
    for fn in conversions:
        with sim.count_syncs() as s:
            fn()
        assert s.n == 1, (fn, s)
        assert s.sites[0].startswith("test_simulated_device.py:"), s.sites
    with sim.count_syncs() as s:
        cp.bincount(cp.asarray([0, 1, 1]), minlength=4)
    assert s.n == 2  # CuPy checks for negatives and reads the maximum, even with minlength
    n = sim.sync_count()
    a[0].item()
    assert sim.sync_count() == n + 1


def test_host_to_device_copies_are_counted_not_synced(cp):
    with sim.count_syncs() as s:
        x = cp.asarray(np.ones(3, np.float32))
        y = cp.array([1.0, 2.0])
        x[...] = np.zeros(3, np.float32)
        z = cp.asarray(x)
    assert s.n == 0 and s.h2d == 3 and z is x and y.dtype == np.float64
    with pytest.raises(ValueError, match="repeats"):
        cp.repeat(x, cp.asarray([1, 2, 3]))


def test_memory_pool_accounts_allocations_and_the_allocator_hook_sees_them(cp):
    pool = cp.get_default_memory_pool()
    base = pool.used_bytes()
    x = cp.zeros(1000, dtype=cp.float32)
    assert pool.used_bytes() == base + 4096  # 4000 bytes rounded up to 512-byte units, as CuPy's pool
    v = x[10:]
    del x
    assert pool.used_bytes() == base + 4096  # the view keeps its base alive
    del v
    assert pool.used_bytes() == base and pool.total_bytes() >= base + 4096
    pool.free_all_blocks()
    assert pool.total_bytes() == pool.used_bytes()
    seen = []

    def hook(size):
        seen.append(size)
        return pool.malloc(size)

    cp.cuda.set_allocator(hook)
    try:
        y = cp.ones((16, 16), cp.float32) + 1
        assert seen == [1024, 1024] and isinstance(y, cp.ndarray)
    finally:
        cp.cuda.set_allocator(pool.malloc)


def test_device_contexts_properties_streams_and_events(cp, monkeypatch):
    monkeypatch.setenv("CONCH_SIMULATE_GPU_COUNT", "2")
    assert cp.cuda.runtime.getDeviceCount() == 2
    a = cp.ones(3)
    with cp.cuda.Device(1) as d:
        assert d.id == 1 and cp.cuda.Device().id == 1
        b = cp.ones(3)
        with pytest.raises(ValueError, match="Peer access"):
            a + b
    assert a.device.id == 0 and b.device.id == 1 and (b[1:]).device.id == 1
    with pytest.raises(cp.cuda.runtime.CUDARuntimeError):
        cp.cuda.Device(5).use()
    n = sim.props_count()
    props = cp.cuda.runtime.getDeviceProperties(0)
    assert props["name"] == b"NVIDIA H100 80GB HBM3 (simulated)" and (props["major"], props["minor"]) == (9, 0)
    assert props["multiProcessorCount"] == 132 and props["sharedMemPerBlockOptin"] == 232448
    sms = cp.cuda.runtime.deviceGetAttribute(cp.cuda.runtime.cudaDevAttrMultiProcessorCount, 0)
    assert sms == 132 and sim.props_count() == n + 2
    assert cp.cuda.Device(0).compute_capability == "90"
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        assert cp.cuda.get_current_stream() is s and s.ptr != 0
    assert cp.cuda.get_current_stream() is cp.cuda.Stream.null
    start, end = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    end.record()
    with sim.count_syncs() as c:
        end.synchronize()
    assert c.n == 1 and cp.cuda.get_elapsed_time(start, end) >= 0


def test_elementwise_kernels_match_numpy(cp):
    from scipy.special import erf

    rng = np.random.default_rng(0)
    z = rng.standard_normal((5, 7)).astype(np.float32)
    k = cp.ElementwiseKernel("T x", "T y", "y = erf(x)", "conch_erf")
    np.testing.assert_allclose(k(cp.asarray(z)).get(), erf(z), rtol=1e-6)
    assert k(cp.asarray(z.astype(np.float16))).dtype == np.float16

    g = cp.asarray(np.array([1.0, 2.0, -4.0], np.float32))
    found = cp.zeros((1,), dtype=np.float32)
    unscale = cp.ElementwiseKernel("float64 inv", "T g, raw float32 found", "...", "conch_unscale_and_check")
    unscale(0.5, g, found)
    assert g.get().tolist() == [0.5, 1.0, -2.0] and found.get()[0] == 0
    unscale(1.0, cp.asarray(np.array([np.inf], np.float32)), found)
    assert found.get()[0] == 1

    bias = rng.standard_normal(7).astype(np.float32)
    v = z + bias
    gelu = 0.5 * v * (1 + erf(v / np.sqrt(2)))
    bias_gelu = cp.ElementwiseKernel("T z, T bias", "T y", "...", "bench_bias_gelu")
    np.testing.assert_allclose(bias_gelu(cp.asarray(z), cp.asarray(bias)).get(), gelu, rtol=1e-5, atol=1e-6)
    dz = cp.ElementwiseKernel("T dout, T z", "T dz", "...", "bench_dz_gelu")
    dgelu = 0.5 * (1 + erf(z / np.sqrt(2))) + z * np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)
    np.testing.assert_allclose(dz(cp.asarray(2 * z), cp.asarray(z)).get(), 2 * z * dgelu, rtol=1e-5, atol=1e-6)
    with pytest.raises(NotImplementedError, match="my_kernel"):
        cp.ElementwiseKernel("T x", "T y", "y = x", "my_kernel")(cp.ones(2))


def test_scatter_add_special_and_random(cp):
    import cupyx
    import cupyx.scipy.special

    out = cp.zeros(4, dtype=np.float32)
    cupyx.scatter_add(out, cp.asarray([0, 0, 3]), cp.asarray(np.array([1.0, 2.0, 5.0], np.float32)))
    assert out.get().tolist() == [3, 0, 0, 5]
    with pytest.raises(TypeError, match="scatter_add only supports"):
        cupyx.scatter_add(cp.zeros(2, dtype=ml_dtypes.bfloat16), cp.asarray([0]), 1.0)
    with pytest.raises(TypeError, match="scatter_add only supports"):
        cupyx.scatter_add(cp.zeros(2, dtype=np.int64), cp.asarray([0]), 1)
    assert isinstance(cupyx.scipy.special.erfinv(cp.asarray([0.5])), cp.ndarray)

    def draw():
        g = cp.random.Generator(cp.random.Philox4x3210(seed=7))
        return g.standard_normal((3,), dtype=np.float32)

    x, y = draw(), draw()
    assert isinstance(x, cp.ndarray) and x.dtype == np.float32 and (x == y).all().get()


def _add_kernel_source():
    import triton
    import triton.language as tl

    @triton.jit
    def add_one(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=m) + 1, mask=m)

    return add_one


def test_triton_launches_run_interpreted_on_device_arrays(cp, monkeypatch):
    pytest.importorskip("triton")
    from conch.kernels._launch import kernel_for, targ, use_triton

    monkeypatch.setenv("CONCH_SIM_COMPILE", "0")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = cp.arange(10, dtype=cp.float32)
    y = cp.empty_like(x)
    assert use_triton(x)
    kern = kernel_for(_ADD_ONE, x)
    assert kern is not _ADD_ONE
    kern[(3,)](targ(x), targ(y), 10, BLOCK=4)
    assert y.get().tolist() == list(range(1, 11))
    assert sim.host_view(y).base is not None or sim.host_view(y).flags.owndata
    assert sim.is_fake(y) and not sim.is_fake(np.ones(1))


try:
    _ADD_ONE = _add_kernel_source()
except ImportError:  # pragma: no cover - triton is a Linux dependency
    _ADD_ONE = None


def _run(code, **env):
    e = {k: v for k, v in os.environ.items() if k not in ("CONCH_SIMULATE_GPU", "CONCH_TEST_DEVICE")}
    e.update(env)
    return subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=300)


def test_import_conch_imports_neither_cupy_nor_triton_nor_the_simulator():
    r = _run(
        "import sys, conch; bad = [m for m in sys.modules if m.split('.')[0] in ('cupy', 'triton') or "
        "m.startswith('conch.kernels.sim')]; print(bad)",
        CONCH_SIMULATE_GPU="1",
    )
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_conch_runs_on_the_simulated_device():
    code = (
        "import conch\n"
        "from conch.kernels import sim\n"
        "assert conch.cuda.is_available() and conch.cuda.device_count() == 1\n"
        "x = conch.randn(4, 8, device='cuda', requires_grad=True)\n"
        "w = conch.randn(8, 3, device='cuda', requires_grad=True)\n"
        "with sim.count_syncs() as s:\n"
        "    loss = conch.nn.functional.gelu(x @ w).sum()\n"
        "    loss.backward()\n"
        "assert s.n == 0, s.sites\n"
        "assert x.grad.device == 'cuda:0' and str(x.device) == 'cuda:0'\n"
        "print('ok', conch.cuda.get_device_name(), float(loss) == float(loss))\n"
    )
    r = _run(code, CONCH_SIMULATE_GPU="1", CONCH_SIM_COMPILE="0", CONCH_AUTOTUNE="off")
    assert r.returncode == 0 and "ok NVIDIA H100 80GB HBM3 (simulated) True" in r.stdout, r.stdout + r.stderr
