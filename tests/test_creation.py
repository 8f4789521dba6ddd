"""Factories, dtype inference, NumPy/DLPack interop, seeding, and what ``import conch`` costs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import conch


def npy(t):
    return t.detach().cpu().numpy()


@pytest.mark.parametrize(
    "data,dtype",
    [
        (1.5, conch.float32),
        (3, conch.int64),
        (True, conch.bool),
        ([1, 2, 3], conch.int64),
        ([1, 2.5], conch.float32),  # every element counts, not only the first
        ([[1, 2], [3, 4.0]], conch.float32),
        ([True, False], conch.bool),
        ([True, 2], conch.int64),
        ([], conch.float32),
        (np.float16(1.0), conch.float16),
        (np.arange(3, dtype=np.int32), conch.int32),
        (np.ones(2, dtype=np.float64), conch.float64),
    ],
)
def test_tensor_dtype_inference(data, dtype, device):
    t = conch.tensor(data, device=device)
    assert t.dtype == dtype
    np.testing.assert_array_equal(npy(t), np.asarray(data, dtype=dtype))
    assert t.device == device and not t.requires_grad and t.is_leaf


def test_tensor_with_dtype_and_default_dtype(device):
    assert conch.tensor([1, 2], dtype=conch.float64, device=device).dtype == conch.float64
    assert conch.tensor([1.7, -2.2], dtype="int32", device=device).tolist() == [1, -2]
    assert conch.tensor([1.0], dtype=conch.bfloat16, device=device).dtype == conch.bfloat16
    prev = conch.get_default_dtype()
    try:
        conch.set_default_dtype(conch.float64)
        assert conch.tensor([1.5]).dtype == conch.float64 and conch.zeros(2).dtype == conch.float64
        assert (conch.tensor([1]) * 0.5).dtype == conch.float64
    finally:
        conch.set_default_dtype(prev)
    with pytest.raises(TypeError, match="floating-point"):
        conch.set_default_dtype(conch.int64)


def test_tensor_copies_its_input(device):
    a = np.zeros(3)
    t = conch.tensor(a, device=device)
    a[0] = 1
    assert npy(t)[0] == 0
    u = conch.tensor(t)
    assert not np.shares_memory(npy(u), npy(t)) if device == "cpu" else True


@pytest.mark.parametrize("fn,val", [(conch.zeros, 0.0), (conch.ones, 1.0), (conch.empty, None)])
def test_zeros_ones_empty(fn, val, device):
    for shape_args, shape in [((2, 3), (2, 3)), (((2, 3),), (2, 3)), (([4],), (4,)), ((), ())]:
        t = fn(*shape_args, device=device)
        assert t.shape == shape and t.dtype == conch.float32 and t.device == device
        if val is not None:
            np.testing.assert_array_equal(npy(t), np.full(shape, val))
    t = fn(2, dtype=conch.int64, device=device, requires_grad=False)
    assert t.dtype == conch.int64
    g = fn(2, device=device, requires_grad=True)
    assert g.requires_grad and g.is_leaf


def test_full(device):
    assert conch.full((2, 2), 7, device=device).dtype == conch.int64
    assert conch.full((2,), 1.5, device=device).dtype == conch.float32
    assert conch.full((2,), True, device=device).dtype == conch.bool
    t = conch.full(3, -2.0, dtype=conch.float64, device=device)
    np.testing.assert_array_equal(npy(t), [-2, -2, -2])
    assert t.dtype == conch.float64


@pytest.mark.parametrize(
    "args,kwargs,ref",
    [
        ((5,), {}, np.arange(5)),
        ((2, 7), {}, np.arange(2, 7)),
        ((0, 10, 3), {}, np.arange(0, 10, 3)),
        ((5, 0, -2), {}, np.arange(5, 0, -2)),
        ((0, 1, 0.25), {}, np.arange(0, 1, 0.25)),
        ((3.0,), {}, np.arange(3.0)),
        ((4,), {"dtype": conch.float64}, np.arange(4.0)),
    ],
)
def test_arange(args, kwargs, ref, device):
    t = conch.arange(*args, device=device, **kwargs)
    np.testing.assert_allclose(npy(t), ref)
    expect = kwargs.get("dtype", conch.int64 if ref.dtype.kind == "i" else conch.float32)
    assert t.dtype == expect


def test_random_factories(device):
    r = conch.rand(2000, device=device)
    assert r.dtype == conch.float32 and r.shape == (2000,)
    a = npy(r)
    assert a.min() >= 0 and a.max() < 1 and abs(a.mean() - 0.5) < 0.05
    n = npy(conch.randn(4000, dtype=conch.float64, device=device))
    assert abs(n.mean()) < 0.1 and abs(n.std() - 1) < 0.1
    assert conch.randn(2, 3, device=device).shape == (2, 3) and conch.rand((3, 2), device=device).shape == (3, 2)
    i = conch.randint(3, 7, (500,), device=device)
    assert i.dtype == conch.int64 and set(npy(i).tolist()) == {3, 4, 5, 6}
    assert npy(conch.randint(4, (10,), device=device)).max() < 4
    assert conch.randn(2, requires_grad=True, device=device).requires_grad
    assert conch.rand(3, dtype=conch.bfloat16, device=device).dtype == conch.bfloat16


def test_like_factories(device):
    x = conch.ones(2, 3, dtype=conch.float64, device=device)
    for fn, val in [(conch.zeros_like, 0), (conch.ones_like, 1)]:
        t = fn(x)
        assert t.shape == (2, 3) and t.dtype == conch.float64 and t.device == device
        np.testing.assert_array_equal(npy(t), np.full((2, 3), val))
    r = conch.randn_like(x)
    assert r.shape == (2, 3) and r.dtype == conch.float64
    assert conch.zeros_like(x, dtype=conch.int32).dtype == conch.int32
    assert conch.full_like(x, 4.0).tolist() == [[4.0] * 3] * 2
    assert conch.rand_like(x).dtype == conch.float64 and conch.empty_like(x).shape == (2, 3)


def test_manual_seed_reproducibility(device):
    conch.manual_seed(123)
    a = [npy(conch.randn(5, device=device)), npy(conch.rand(3, device=device)), npy(conch.randint(0, 9, (4,)))]
    conch.manual_seed(123)
    b = [npy(conch.randn(5, device=device)), npy(conch.rand(3, device=device)), npy(conch.randint(0, 9, (4,)))]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    conch.manual_seed(124)
    assert not np.array_equal(npy(conch.randn(5, device=device)), a[0])
    assert conch.initial_seed() == 124


def test_rng_state_roundtrip(device):
    conch.manual_seed(7)
    state = conch.get_rng_state()
    json.dumps(state)  # plain data
    a = npy(conch.randn(4, device=device))
    conch.randn(10, device=device)
    conch.set_rng_state(state)
    np.testing.assert_array_equal(npy(conch.randn(4, device=device)), a)


def test_from_numpy_shares_memory():
    a = np.arange(6.0).reshape(2, 3)
    t = conch.from_numpy(a)
    assert t.dtype == conch.float64 and t.shape == (2, 3)
    a[0, 0] = 42
    assert t[0, 0].item() == 42
    t[1, 2] = -1.0
    assert a[1, 2] == -1
    assert np.shares_memory(t.numpy(), a)
    i = conch.from_numpy(np.array([1, 2], dtype=np.int32))
    assert i.dtype == conch.int32


def test_from_dlpack_numpy_roundtrip():
    a = np.arange(4, dtype=np.float32)
    t = conch.from_dlpack(a)
    assert np.shares_memory(t.numpy(), a)
    back = np.from_dlpack(t)
    assert np.shares_memory(back, a)
    b = conch.ones(3)
    assert conch.from_dlpack(b) is b
    dev_type, _ = conch.ones(1).__dlpack_device__()
    assert int(dev_type) == 1  # kDLCPU


def test_from_dlpack_torch():
    torch = pytest.importorskip("torch")
    pt = torch.arange(5, dtype=torch.float32)
    t = conch.from_dlpack(pt)
    pt[0] = 9
    assert t[0].item() == 9  # zero copy
    back = torch.from_dlpack(conch.arange(3.0))
    assert back.tolist() == [0.0, 1.0, 2.0]


def test_as_tensor_and_other_factories(device):
    x = conch.ones(2, device=device)
    assert conch.as_tensor(x) is x
    np.testing.assert_allclose(npy(conch.linspace(0, 1, 5, device=device)), np.linspace(0, 1, 5))
    np.testing.assert_array_equal(npy(conch.eye(3, device=device)), np.eye(3))
    p = npy(conch.randperm(10, device=device))
    assert sorted(p.tolist()) == list(range(10))


def test_device_objects():
    d = conch.device("cuda")
    assert d == "cuda:0" and d.type == "cuda" and d.index == 0
    assert conch.device("cpu") == "cpu" and conch.device("cpu").index is None
    assert conch.ones(1).device == "cpu" and conch.ones(1).device.type == "cpu"


def test_import_is_light():
    # what `import conch` pulls in, not how long it takes: a time limit fails on a busy machine (the import
    # time is measured in benchmarks/, never asserted here)
    code = (
        "import sys, json; import conch; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('triton', 'cupy', 'cupyx', 'torch')"
        " or m.startswith('conch.kernels.sim'))))"
    )
    env = {k: v for k, v in os.environ.items() if k != "CONCH_SIMULATE_GPU"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    mods = json.loads(out.strip().splitlines()[-1])
    assert mods == [], f"import conch pulled in {mods}"
