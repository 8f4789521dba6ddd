"""GPU-only costs removed (issue #11): deferred range checks, dbias fill, fused-optimizer tables and errors, RNG."""

import numpy as np
import pytest

import conch
import conch.nn.functional as F
from conch import creation, optim
from conch.kernels import _deferred

# ---------------------------------------------------------------------------------------------- deferred checks


class _FakeDev:
    def __init__(self, i):
        self.id = i


class _FakeDeviceArray:
    """Enough of a cupy.ndarray for kernels._deferred.check: a 0-d value with a device (never read here)."""

    def __init__(self, value, dev=0):
        self.value, self.device = np.asarray(value), _FakeDev(dev)


def test_cpu_checks_raise_at_once_with_the_same_messages():
    x = conch.randn(4, 3)
    with pytest.raises(IndexError, match=r"cross_entropy: Target 3 is out of bounds: input has 3 classes"):
        F.cross_entropy(x, conch.tensor([0, 1, 3, -7]))  # the first bad target is named, as before
    with pytest.raises(IndexError, match=r"index out of range in self: index -1 for an embedding with 5 rows"):
        F.embedding(conch.tensor([0, -1, 9]), conch.randn(5, 2))  # the low end is named first, as before
    with pytest.raises(IndexError, match=r"index out of range in self: index 9 for an embedding with 5 rows"):
        F.embedding(conch.tensor([0, 9]), conch.randn(5, 2))
    with pytest.raises(RuntimeError, match=r"gather\(\): index 5 is out of bounds for dimension 1 with size 3"):
        conch.randn(2, 3).gather(1, conch.tensor([[5], [-9]]))  # the high end first, as before
    with pytest.raises(RuntimeError, match=r"index -9 is out of bounds for dimension 1 with size 3"):
        conch.randn(2, 3).gather(1, conch.tensor([[0], [-9]]))
    with pytest.raises(RuntimeError, match="between 0 and 1"):
        F.binary_cross_entropy(conch.tensor([0.5, 1.5]), conch.tensor([0.0, 1.0]))
    with pytest.raises(RuntimeError, match=r"one_hot: class values must be in \[0, 3\), got 4"):
        F.one_hot(conch.tensor([0, 4]), 3)
    assert _deferred.pending() == 0  # nothing is left for later on the CPU


def test_kernel_cross_entropy_checks_once_or_not_at_all():
    from conch.kernels import cross_entropy as K

    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"target value 3 .*V=3"):
        K.cross_entropy_forward(x, np.array([0, 3]))
    # check_targets=False: the caller (F.cross_entropy) has checked; a valid batch gives the same loss
    a, _ = K.cross_entropy_forward(x, np.array([0, 2]))
    b, _ = K.cross_entropy_forward(x, np.array([0, 2]), check_targets=False)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, np.log(3.0), rtol=1e-6)


def test_deferred_check_records_device_flags_without_reading_them():
    calls = []

    def value():
        calls.append(1)
        return _FakeDeviceArray(7)

    try:
        _deferred.check(_FakeDeviceArray(True), value, lambda v: IndexError(f"bad {v}"))
        assert _deferred.pending() == 1 and calls == [1]  # the value is computed at once (device ops), not read
    finally:
        _deferred.clear()
    # on the CPU the value callable runs only for a failing check
    _deferred.check(np.False_, lambda: calls.append(2), lambda v: IndexError(f"bad {v}"))
    assert calls == [1]
    with pytest.raises(IndexError, match="bad 4"):
        _deferred.check(np.True_, lambda: np.int64(4), lambda v: IndexError(f"bad {v}"))


# ---------------------------------------------------------------------------------------------- matmul dbias


def test_matmul_dbias_is_reset_only_after_autotune_launches(monkeypatch):
    from conch.kernels import autotune
    from conch.kernels import matmul as K

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((5, 4)).astype(np.float32), rng.standard_normal((4, 3)).astype(np.float32)
    bias = rng.standard_normal(3).astype(np.float32)
    dout = rng.standard_normal((5, 3)).astype(np.float32)
    real = autotune.pick
    launches = []

    def timing_pick(name, key, configs, bench, **kw):  # what a first call per key on a GPU does: launch, time
        cfg = real(name, key, configs, bench, **kw)
        for _ in range(3):
            bench(cfg)
            launches.append(name)
        return cfg

    out, res = K.matmul_forward(a, b, bias)
    _, _, want = K.matmul_backward(res, dout)
    np.testing.assert_allclose(want, dout.sum(0), rtol=1e-5, atol=1e-5)  # independent reference: column sums
    monkeypatch.setattr(autotune, "pick", timing_pick)
    _, _, got = K.matmul_backward(res, dout)
    assert launches  # the timing runs added into dbias three times; the reset undid them
    np.testing.assert_allclose(got, dout.sum(0), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- fused optimizers


def test_plan_tables_follow_addresses_sizes_dtypes(monkeypatch):
    from conch.kernels import optim as k

    monkeypatch.setattr(k, "_PLANS", {})
    buf = np.zeros(64, np.float32)
    g = np.zeros(64, np.float32)
    p1 = k.get_plan([[buf[:16]], [g[:16]]], 8)
    # same address, other size (a parameter freed and reallocated where the old one was): a new table
    p2 = k.get_plan([[buf[:40]], [g[:40]]], 8)
    assert p2 is not p1
    # same address and size, other dtype: a new table
    p3 = k.get_plan([[buf.view(np.int32)[:16].view(np.float32)[:16]], [g[:16].astype(np.float16)]], 8)
    assert p3 is not p1
    for plan, lists in ((p1, [[buf[:16]], [g[:16]]]), (p2, [[buf[:40]], [g[:40]]])):
        np.testing.assert_array_equal(plan.ptrs, [[lst[0].ctypes.data] for lst in lists])
        np.testing.assert_array_equal(plan.sizes, [lists[0][0].size])
        np.testing.assert_array_equal(plan.work, [[0, s] for s in range(0, lists[0][0].size, 8)])
    # a reused plan holds exactly the addresses it is asked for
    q = k.get_plan([[buf[:16]], [g[:16]]], 8)
    assert q is p1
    np.testing.assert_array_equal(q.ptrs, [[buf.ctypes.data], [g.ctypes.data]])


def test_plan_key_names_the_gpu():
    from conch.kernels import optim as k

    class Mem:
        ptr = 4096

    class FakeGpuArray:  # same address on two GPUs: two different allocations
        __module__ = "cupy"
        data, size, dtype = Mem(), 8, np.dtype(np.float32)

        def __init__(self, dev):
            self.device = _FakeDev(dev)

    assert k._plan_key([[FakeGpuArray(0)]], 8) != k._plan_key([[FakeGpuArray(1)]], 8)


def test_fused_adam_stale_address_gives_right_update(monkeypatch):
    """A parameter freed and replaced by a same-sized one at the same address: the update is still right."""
    from conch.kernels import optim as k

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(k, "_PLANS", {})
    buf = np.zeros(32, np.float32)
    kw = dict(lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, step=1)
    for size, fill in ((16, 1.0), (24, 2.0), (16, 3.0)):
        buf[:] = 0.0
        p = buf[:size]
        p[:] = fill
        g, m, v = np.full(size, 0.5, np.float32), np.zeros(size, np.float32), np.zeros(size, np.float32)
        k.adam_step([p], [g], [m], [v], **kw)
        # step 1 of Adam moves every element by lr (m/sqrt(v) = sign(g) after bias correction)
        np.testing.assert_allclose(p, fill - 0.1, rtol=1e-5)
        np.testing.assert_allclose(m, 0.05, rtol=1e-6)
        assert buf[size:].max() == 0.0  # nothing written past the live parameter


def _params(n=2, dtype=None):
    ps = [conch.randn(3, 2, dtype=dtype, requires_grad=True) for _ in range(n)]
    for p in ps:
        p.grad = conch.ones_like(p)
    return ps


@pytest.mark.parametrize("cls", [optim.Adam, optim.AdamW, optim.SGD])
def test_fused_true_refuses_what_it_cannot_honour(cls):
    # non-contiguous parameter: the kernel updates flat buffers in place
    base = conch.randn(4, 6, requires_grad=True)
    with conch.no_grad():
        t = conch.Tensor._make(base._data[:, ::2])
    t.requires_grad = True
    t.grad = conch.ones_like(t)
    with pytest.raises(ValueError, match=r"fused=True.*parameter 0 \(shape \(4, 3\), strides \(6, 2\)\) is not contig"):
        cls([t], lr=0.1, fused=True).step()
    # a gradient of a dtype the kernel cannot take
    (p,) = _params(1)
    p.grad = conch.Tensor._make(np.ones((3, 2), np.int64))
    with pytest.raises(TypeError, match=r"fused=True.*gradient of parameter 0 \(shape \(3, 2\)\) has dtype int64"):
        cls([p], lr=0.1, fused=True).step()
    # the kernels cannot be imported
    from conch.optim import optimizer as o

    saved = list(o._FUSED)
    o._FUSED[:] = [None]
    o._FUSED_ERROR[0] = "ImportError: no triton"
    try:
        with pytest.raises(RuntimeError, match=r"fused=True.*could not be imported \(ImportError: no triton\)"):
            cls(_params(), lr=0.1, fused=True).step()
    finally:
        o._FUSED[:] = saved
    # fused=None keeps falling back quietly for NumPy parameters and for the non-contiguous one
    cls([t], lr=0.1).step()


def test_fused_true_refuses_mixed_devices(monkeypatch):
    from conch.optim import optimizer as o

    ps = _params()
    monkeypatch.setattr(conch.Tensor, "device", property(lambda self: "cuda:1" if self is ps[1] else "cpu"))
    with pytest.raises(RuntimeError, match=r"fused=True\): one fused launch runs on one device.*parameter 1 on cuda:1"):
        o._check_fusable("Adam", ps)


def test_fused_true_on_cpu_is_one_call_over_the_group(monkeypatch):
    from conch.kernels import optim as k

    calls = []
    real = k.adam_step
    monkeypatch.setattr(k, "adam_step", lambda *a, **kw: (calls.append(len(a[0])), real(*a, **kw))[1])
    ps = _params(3)
    ref = [p.detach().numpy().copy() for p in ps]
    optim.Adam(ps, lr=0.1, fused=True).step()
    assert calls == [3]
    for p, r in zip(ps, ref):  # step 1 of Adam moves each element by lr against the gradient's sign
        np.testing.assert_allclose(p.detach().numpy(), r - 0.1, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- GPU generator


class _FakeCupy:
    """``cupy.random.Generator(cupy.random.Philox4x3210(seed))`` over NumPy's Philox, counting constructions."""

    def __init__(self):
        self.built = []
        fake = self

        class Philox4x3210:
            def __init__(self, seed):
                fake.built.append(seed)
                self.bg = np.random.Philox(seed)

        class random:
            pass

        random.Philox4x3210 = Philox4x3210
        random.Generator = lambda bitgen: np.random.Generator(bitgen.bg)
        self.random = random


@pytest.fixture
def fake_gpu(monkeypatch):
    cp = _FakeCupy()
    monkeypatch.setattr(creation, "require_cupy", lambda: cp)
    monkeypatch.setattr(creation, "_gpu_gens", {})
    yield cp
    conch.manual_seed(0)


def _draws(dev, n):
    return [creation._generator(dev).standard_normal(3) for _ in range(n)]


def test_gpu_generator_is_built_once_per_device_and_seed(fake_gpu):
    dev0, dev1 = conch.device("cuda:0"), conch.device("cuda:1")
    conch.manual_seed(7)
    a = _draws(dev0, 4)
    assert len(fake_gpu.built) == 1  # advanced by each draw, not rebuilt (cuRAND init) per draw
    _draws(dev1, 2)
    assert len(fake_gpu.built) == 2  # one per device
    assert creation.get_rng_state()["cupy"] == [7, 6]  # the documented counter still counts draws
    conch.manual_seed(7)
    b = _draws(dev0, 4)
    for x, y in zip(a, b):  # manual_seed reproduces the stream
        np.testing.assert_array_equal(x, y)
    assert len({tuple(x) for x in a}) == 4  # the draws differ from one another
    conch.manual_seed(8)
    assert not np.array_equal(_draws(dev0, 1)[0], a[0])


def test_gpu_generator_state_round_trip_replays(fake_gpu):
    dev = conch.device("cuda:0")
    conch.manual_seed(3)
    _draws(dev, 2)
    st = creation.get_rng_state()
    after = _draws(dev, 3)
    assert creation.get_rng_state()["cupy"] == [3, 5]
    creation.set_rng_state(st)
    again = _draws(dev, 3)
    for x, y in zip(after, again):
        np.testing.assert_array_equal(x, y)
    assert len(fake_gpu.built) == 3  # seed, capture, restore: one generator each
