"""conch.data: datasets, DataLoader order/seeds/resume, collation, IDX files and the bundled digits."""

import gzip
import struct

import numpy as np
import pytest

import conch
from conch.data import (
    MNIST,
    DataLoader,
    Dataset,
    Subset,
    TensorDataset,
    default_collate,
    load_digits,
    random_split,
    read_idx,
    write_idx,
)


def _host(t):
    return t.detach().cpu().numpy()


def _ds(n=10, device="cpu"):
    x = conch.arange(n * 2, dtype=conch.float32, device=device).reshape(n, 2)
    y = conch.arange(n, device=device)
    return TensorDataset(x, y)


class ListDataset(Dataset):
    """A plain map-style dataset (no fast batch path)."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return conch.tensor([float(i), float(2 * i)]), i


# ------------------------------------------------------------------------------------------------ datasets


def test_tensor_dataset(device):
    ds = _ds(5, device)
    assert len(ds) == 5
    x, y = ds[3]
    assert _host(x).tolist() == [6.0, 7.0] and int(y.item()) == 3
    with pytest.raises(ValueError, match="Size mismatch"):
        TensorDataset(conch.zeros(3, 2), conch.zeros(4))
    with pytest.raises(TypeError):
        TensorDataset(np.zeros(3))


def test_random_split_lengths_fractions_and_seed():
    ds = ListDataset(10)
    a, b = random_split(ds, [7, 3], seed=0)
    assert len(a) == 7 and len(b) == 3
    assert sorted(a.indices + b.indices) == list(range(10))
    a2, _ = random_split(ds, [7, 3], seed=0)
    assert a.indices == a2.indices
    a3, _ = random_split(ds, [7, 3], seed=1)
    assert a.indices != a3.indices
    parts = random_split(ds, [0.5, 0.3, 0.2], seed=0)
    assert [len(p) for p in parts] == [5, 3, 2]
    with pytest.raises(ValueError, match="Sum of input lengths"):
        random_split(ds, [3, 3])
    assert isinstance(a, Subset) and a[0][1] == ds[a.indices[0]][1]


def test_concat_dataset():
    ds = ListDataset(3) + ListDataset(2)
    assert len(ds) == 5 and ds[3][1] == 0 and ds[-1][1] == 1
    with pytest.raises(IndexError):
        ds[5]


# ------------------------------------------------------------------------------------------------ collate


def test_default_collate_kinds():
    b = default_collate([(conch.tensor([1.0, 2.0]), 3, 0.5, "a"), (conch.tensor([3.0, 4.0]), 4, 1.5, "b")])
    x, i, f, s = b
    assert x.shape == (2, 2) and i.dtype == conch.int64 and f.dtype == conch.float64 and s == ["a", "b"]
    assert isinstance(b, tuple)
    d = default_collate([{"x": np.ones(3, np.float32), "y": True}, {"x": np.zeros(3, np.float32), "y": False}])
    assert d["x"].shape == (2, 3) and d["y"].dtype == conch.bool and _host(d["y"]).tolist() == [True, False]
    lst = default_collate([[1, 2], [3, 4]])
    assert isinstance(lst, list) and _host(lst[0]).tolist() == [1, 3]
    with pytest.raises(RuntimeError, match="equal size"):
        default_collate([conch.zeros(2), conch.zeros(3)])
    with pytest.raises(TypeError):
        default_collate([object(), object()])


# ------------------------------------------------------------------------------------------------ DataLoader


def _collect(loader):
    return [_host(y).tolist() for _, y in loader]


def test_sequential_batches_and_drop_last(device):
    ds = _ds(10, device)
    assert _collect(DataLoader(ds, batch_size=4)) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert _collect(DataLoader(ds, batch_size=4, drop_last=True)) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert len(DataLoader(ds, batch_size=4)) == 3 and len(DataLoader(ds, batch_size=4, drop_last=True)) == 2
    x, _ = next(iter(DataLoader(ds, batch_size=3)))
    assert _host(x).tolist() == [[0, 1], [2, 3], [4, 5]] and x.device == ds.tensors[0].device


def test_shuffle_is_a_seeded_permutation_per_epoch():
    ds = _ds(23)
    dl = DataLoader(ds, batch_size=5, shuffle=True, seed=7)
    e0, e1 = sum(_collect(dl), []), sum(_collect(dl), [])
    assert sorted(e0) == sorted(e1) == list(range(23))
    assert e0 != e1  # a new order each epoch
    expect0 = np.random.default_rng([7, 0]).permutation(23).tolist()  # the documented order
    assert e0 == expect0
    again = DataLoader(ds, batch_size=5, shuffle=True, seed=7)
    assert sum(_collect(again), []) == e0 and sum(_collect(again), []) == e1
    other = DataLoader(ds, batch_size=5, shuffle=True, seed=8)
    assert sum(_collect(other), []) != e0


def test_unseeded_shuffle_follows_manual_seed():
    ds = _ds(30)
    conch.manual_seed(123)
    a = sum(_collect(DataLoader(ds, batch_size=30, shuffle=True)), [])
    conch.manual_seed(123)
    b = sum(_collect(DataLoader(ds, batch_size=30, shuffle=True)), [])
    conch.manual_seed(124)
    c = sum(_collect(DataLoader(ds, batch_size=30, shuffle=True)), [])
    assert a == b and a != c
    g = np.random.default_rng(5)
    d1 = sum(_collect(DataLoader(ds, batch_size=30, shuffle=True, generator=g)), [])
    d2 = sum(_collect(DataLoader(ds, batch_size=30, shuffle=True, generator=np.random.default_rng(5))), [])
    assert d1 == d2


def test_generic_dataset_matches_fast_path():
    n = 11
    fast = DataLoader(TensorDataset(conch.tensor([[float(i), 2.0 * i] for i in range(n)]), conch.arange(n)),
                      batch_size=4, shuffle=True, seed=3)  # fmt: skip
    slow = DataLoader(ListDataset(n), batch_size=4, shuffle=True, seed=3)
    for (xf, yf), (xs, ys) in zip(fast, slow):
        np.testing.assert_array_equal(_host(xf), _host(xs))
        np.testing.assert_array_equal(_host(yf), _host(ys))


def test_custom_collate_fn():
    dl = DataLoader(ListDataset(5), batch_size=2, collate_fn=lambda samples: [s[1] for s in samples])
    assert list(dl) == [[0, 1], [2, 3], [4]]


def test_resume_mid_epoch_gives_the_same_batches():
    ds = _ds(17)
    full = DataLoader(ds, batch_size=3, shuffle=True, seed=11)
    expect = [_collect(full) for _ in range(3)]  # three epochs, uninterrupted
    dl = DataLoader(ds, batch_size=3, shuffle=True, seed=11)
    got, state = [], None
    for epoch in range(2):
        batches = []
        for k, (_, y) in enumerate(dl):
            batches.append(_host(y).tolist())
            if epoch == 1 and k == 2:
                state = conch.load(_roundtrip(dl.state_dict()))  # checkpoint after the third batch of epoch 1
                break
        got.append(batches)
    assert state["epoch"] == 1 and state["position"] == 3
    fresh = DataLoader(ds, batch_size=3, shuffle=True, seed=999)  # the seed comes from the state
    fresh.load_state_dict(state)
    got[1] += _collect(fresh)  # the rest of epoch 1
    got.append(_collect(fresh))  # epoch 2
    assert got == expect


def _roundtrip(obj):
    import os
    import tempfile

    path = os.path.join(tempfile.mkdtemp(), "state.safetensors")
    conch.save(obj, path)
    return path


def test_abandoned_iteration_starts_next_epoch():
    dl = DataLoader(_ds(10), batch_size=2, shuffle=True, seed=0)
    it = iter(dl)
    next(it)
    assert dl.state_dict()["epoch"] == 0 and dl.state_dict()["position"] == 1
    e1 = sum(_collect(dl), [])
    assert e1 == np.random.default_rng([0, 1]).permutation(10).tolist()
    assert dl.epoch == 2


def test_state_dict_for_wrong_dataset_raises():
    dl = DataLoader(_ds(10), batch_size=2)
    with pytest.raises(ValueError, match="10 samples"):
        DataLoader(_ds(9), batch_size=2).load_state_dict(dl.state_dict())


def test_bad_loader_arguments():
    with pytest.raises(ValueError):
        DataLoader(_ds(), batch_size=0)
    with pytest.raises(TypeError):
        DataLoader(_ds(), batch_size=2.5)
    with pytest.raises(TypeError):
        DataLoader([1, 2, 3].__iter__(), batch_size=1)


# ------------------------------------------------------------------------------------------------ IDX / MNIST


def _idx_bytes(array, code):
    # written by hand from the format description, independently of write_idx
    big = array.astype(array.dtype.newbyteorder(">"))
    return bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape) + big.tobytes()


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize(
    "dtype,code", [(np.uint8, 0x08), (np.int8, 0x09), (np.int16, 0x0B), (np.int32, 0x0C), (np.float32, 0x0D),
                   (np.float64, 0x0E)],
)  # fmt: skip
def test_read_idx(tmp_path, compress, dtype, code):
    a = (np.arange(2 * 3 * 4).reshape(2, 3, 4) * 7 - 20).astype(dtype)
    if dtype == np.uint8:
        a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4) * 10
    data = _idx_bytes(a, code)
    path = tmp_path / ("x.idx.gz" if compress else "x.idx")
    path.write_bytes(gzip.compress(data) if compress else data)
    b = read_idx(path)
    assert b.dtype == np.dtype(dtype) and b.shape == (2, 3, 4)
    np.testing.assert_array_equal(b, a)


def test_write_idx_round_trip_and_errors(tmp_path):
    a = np.random.default_rng(0).integers(0, 255, (5, 28, 28)).astype(np.uint8)
    write_idx(tmp_path / "a.gz", a)
    assert (tmp_path / "a.gz").read_bytes()[:2] == b"\x1f\x8b"
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), a)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(_idx_bytes(np.zeros((4, 4), np.uint8), 8)[:-3])
    with pytest.raises(ValueError, match="needs 16 data bytes"):
        read_idx(tmp_path / "short")


def test_mnist_dataset_from_local_files(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (6, 28, 28)).astype(np.uint8)
    labels = np.array([3, 1, 4, 1, 5, 9], np.uint8)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(imgs, 8)))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(labels, 8))
    ds = MNIST(tmp_path, train=False)
    x, y = ds[2]
    assert x.shape == (1, 28, 28) and x.dtype == conch.float32 and int(y.item()) == 4
    np.testing.assert_allclose(_host(x)[0], imgs[2] / 255.0, rtol=1e-6)
    with pytest.raises(FileNotFoundError, match="train-images"):
        MNIST(tmp_path, train=True)


# ------------------------------------------------------------------------------------------------ digits


def test_load_digits_split_and_values():
    train, test = load_digits()
    assert len(train) == 1437 and len(test) == 360
    x, y = train.tensors
    assert x.shape == (1437, 64) and x.dtype == conch.float32 and y.dtype == conch.int64
    xs = np.concatenate([_host(x), _host(test.tensors[0])])
    assert xs.min() == 0.0 and xs.max() == 1.0
    ys = np.concatenate([_host(y), _host(test.tensors[1])])
    assert sorted(set(ys.tolist())) == list(range(10)) and len(ys) == 1797
    # fixed split: the same every call; different images in train and test
    train2, test2 = load_digits()
    np.testing.assert_array_equal(_host(test2.tensors[1]), _host(test.tensors[1]))
    cnn = load_digits("test", flatten=False)
    assert cnn.tensors[0].shape == (360, 1, 8, 8)


def test_load_digits_matches_scikit_learn():
    datasets = pytest.importorskip("sklearn.datasets")
    d = datasets.load_digits()
    ds = load_digits("all", normalize=False, dtype="float64")
    np.testing.assert_array_equal(_host(ds.tensors[0]), d.data)
    np.testing.assert_array_equal(_host(ds.tensors[1]), d.target)
    with pytest.raises(ValueError):
        load_digits("val")
