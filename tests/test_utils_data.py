"""conch.utils.data: PyTorch's samplers, DataLoader arguments, worker processes; conch.utils.checkpoint."""

import numpy as np
import pytest

import conch
from conch.utils.data import (
    BatchSampler,
    ConcatDataset,
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    Subset,
    SubsetRandomSampler,
    TensorDataset,
    WeightedRandomSampler,
    get_worker_info,
    random_split,
)


class Squares(Dataset):
    """A plain map-style dataset: sample i is (float tensor [i], i * i)."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return conch.tensor([float(i)]), i * i


class Count(IterableDataset):
    """0..n-1, sharded between DataLoader workers by worker id."""

    def __init__(self, n):
        self.n = n

    def __iter__(self):
        info = get_worker_info()
        start, step = (0, 1) if info is None else (info.id, info.num_workers)
        return iter(range(start, self.n, step))

    def __len__(self):
        return self.n


class Boom(Squares):
    def __getitem__(self, i):
        if i == 3:
            raise KeyError("sample 3 is broken")
        return super().__getitem__(i)


class WorkerSeed(Squares):
    def __getitem__(self, i):
        info = get_worker_info()
        return info.id, info.num_workers, float(conch.rand(1).item())


def _ys(loader):
    return [b[1].tolist() for b in loader]


def test_same_objects_as_conch_data():
    assert conch.utils.data.DataLoader is conch.data.DataLoader
    assert conch.utils.data.TensorDataset is conch.data.TensorDataset
    import conch.utils.checkpoint as uc

    assert uc.checkpoint is conch.checkpoint.checkpoint
    assert uc.checkpoint_sequential is conch.checkpoint.checkpoint_sequential


def test_sequential_and_batch_sampler():
    assert list(SequentialSampler(range(4))) == [0, 1, 2, 3]
    assert list(BatchSampler(SequentialSampler(range(5)), 2, drop_last=False)) == [[0, 1], [2, 3], [4]]
    assert list(BatchSampler(range(5), 2, drop_last=True)) == [[0, 1], [2, 3]]
    assert len(BatchSampler(range(5), 2, False)) == 3 and len(BatchSampler(range(5), 2, True)) == 2
    with pytest.raises(ValueError, match="batch_size"):
        BatchSampler(range(5), 0, False)


def test_random_sampler_permutation_replacement_and_generator():
    a = list(RandomSampler(range(10), generator=np.random.default_rng(0)))
    assert a == np.random.default_rng(0).permutation(10).tolist()  # the documented order
    s = RandomSampler(range(10), generator=3)
    e0, e1 = list(s), list(s)
    assert sorted(e0) == sorted(e1) == list(range(10)) and e0 != e1  # a new order each iteration
    r = list(RandomSampler(range(4), replacement=True, num_samples=50, generator=1))
    assert len(r) == 50 and set(r) <= {0, 1, 2, 3} and len(set(r)) == 4
    chained = list(RandomSampler(range(3), num_samples=7, generator=0))  # permutations chained without replacement
    assert len(chained) == 7 and sorted(chained[:3]) == sorted(chained[3:6]) == [0, 1, 2]
    conch.manual_seed(5)
    x = list(RandomSampler(range(20)))
    conch.manual_seed(5)
    assert list(RandomSampler(range(20))) == x
    with pytest.raises(ValueError, match="num_samples"):
        RandomSampler(range(3), num_samples=0)
    with pytest.raises(TypeError, match="replacement"):
        RandomSampler(range(3), replacement=1)


def test_subset_random_and_weighted_samplers():
    s = list(SubsetRandomSampler([5, 7, 9], generator=0))
    assert sorted(s) == [5, 7, 9]
    w = WeightedRandomSampler([0.0, 1.0, 3.0], 4000, generator=0)
    counts = np.bincount(list(w), minlength=3)
    assert counts[0] == 0 and abs(counts[2] / counts[1] - 3.0) < 0.4 and len(w) == 4000
    nr = list(WeightedRandomSampler(conch.tensor([1.0, 1.0, 1.0, 0.0]), 3, replacement=False, generator=0))
    assert sorted(nr) == [0, 1, 2]
    with pytest.raises(RuntimeError, match="without replacement"):
        WeightedRandomSampler([1.0, 0.0], 2, replacement=False)
    with pytest.raises(RuntimeError, match="non-negative"):
        WeightedRandomSampler([1.0, -1.0], 2)


def test_loader_with_sampler_and_batch_sampler():
    ds = Squares(6)
    dl = DataLoader(ds, batch_size=4, sampler=[5, 0, 3, 1, 2])
    assert _ys(dl) == [[25, 0, 9, 1], [4]] and len(dl) == 2
    dl = DataLoader(ds, batch_sampler=[[1, 2], [5]])
    assert _ys(dl) == [[1, 4], [25]] and len(dl) == 2
    dl = DataLoader(ds, batch_size=2, sampler=RandomSampler(ds, generator=0))
    expect = np.random.default_rng(0).permutation(6)
    assert sum(_ys(dl), []) == (expect**2).tolist()
    with pytest.raises(ValueError, match="mutually exclusive with shuffle"):
        DataLoader(ds, sampler=[0], shuffle=True)
    with pytest.raises(ValueError, match="batch_sampler"):
        DataLoader(ds, batch_size=2, batch_sampler=[[0]])
    with pytest.raises(ValueError, match="drop_last"):
        DataLoader(ds, batch_size=None, drop_last=True)
    assert isinstance(DataLoader(ds).sampler, SequentialSampler)
    assert isinstance(DataLoader(ds, shuffle=True).sampler, RandomSampler)
    assert isinstance(DataLoader(ds, batch_size=2).batch_sampler, BatchSampler)


def test_custom_sampler_subclass_and_no_batching():
    class Evens(Sampler):
        def __iter__(self):
            return iter([0, 2, 4])

        def __len__(self):
            return 3

    assert _ys(DataLoader(Squares(5), batch_size=2, sampler=Evens())) == [[0, 4], [16]]
    samples = list(DataLoader(Squares(3), batch_size=None))
    assert [s[1] for s in samples] == [0, 1, 4] and samples[2][0].tolist() == [2.0]  # not collated
    arrays = list(DataLoader([np.arange(2), np.arange(2) + 1], batch_size=None))
    assert isinstance(arrays[1], conch.Tensor) and arrays[1].tolist() == [1, 2]  # default_convert


def test_iterable_dataset_in_process():
    dl = DataLoader(Count(7), batch_size=3)
    assert [b.tolist() for b in dl] == [[0, 1, 2], [3, 4, 5], [6]] and len(dl) == 3
    assert [b.tolist() for b in DataLoader(Count(7), batch_size=3, drop_last=True)] == [[0, 1, 2], [3, 4, 5]]
    assert [int(b) for b in DataLoader(Count(3), batch_size=None)] == [0, 1, 2]
    with pytest.raises(ValueError, match="shuffle"):
        DataLoader(Count(3), shuffle=True)
    assert get_worker_info() is None


def test_workers_give_the_in_process_batches_in_order():
    ds = Squares(11)
    ref = DataLoader(ds, batch_size=3, shuffle=True, seed=4)
    dl = DataLoader(ds, batch_size=3, shuffle=True, seed=4, num_workers=2)
    for epoch in range(2):
        got, want = list(dl), list(ref)
        assert len(got) == len(want) == 4, epoch
        for (xg, yg), (xw, yw) in zip(got, want):
            np.testing.assert_array_equal(xg.numpy(), xw.numpy())
            assert yg.tolist() == yw.tolist() and yg.dtype == conch.int64


def test_workers_fast_path_resume_and_persistent():
    ds = TensorDataset(conch.arange(20, dtype=conch.float32).reshape(10, 2), conch.arange(10))
    full = [b[1].tolist() for b in DataLoader(ds, batch_size=3, shuffle=True, seed=2)]
    dl = DataLoader(ds, batch_size=3, shuffle=True, seed=2, num_workers=2, persistent_workers=True, pin_memory=True)
    it = iter(dl)
    first = [next(it)[1].tolist(), next(it)[1].tolist()]
    state = dl.state_dict()
    del it
    fresh = DataLoader(ds, batch_size=3, shuffle=True, seed=0, num_workers=2, prefetch_factor=1)
    fresh.load_state_dict(state)
    assert first + [b[1].tolist() for b in fresh] == full
    dl._shutdown()


def test_worker_info_seeds_and_init_fn():
    seen = []
    dl = DataLoader(WorkerSeed(6), batch_size=None, num_workers=2, worker_init_fn=seen.append)
    samples = list(dl)
    assert {s[1] for s in samples} == {2} and {s[0] for s in samples} <= {0, 1}
    assert seen == []  # worker_init_fn ran in the workers, not here


def test_worker_error_reaches_the_caller():
    with pytest.raises(KeyError, match="sample 3"):
        list(DataLoader(Boom(6), batch_size=2, num_workers=2))


def test_iterable_dataset_with_workers_is_sharded():
    dl = DataLoader(Count(9), batch_size=2, num_workers=2)
    got = sorted(sum((b.tolist() for b in dl), []))
    assert got == list(range(9))


def test_pin_memory_on_cpu_and_subset_concat():
    t = conch.arange(3)
    if not conch.cuda.is_available():
        assert t.pin_memory() is t
    ds = ConcatDataset([Squares(3), Squares(2)])
    assert [ds[i][1] for i in range(5)] == [0, 1, 4, 0, 1]
    a, b = random_split(Squares(10), [7, 3], generator=np.random.default_rng(0))
    assert isinstance(a, Subset) and len(a) == 7 and len(b) == 3
    assert sorted([a[i][1] for i in range(7)] + [b[i][1] for i in range(3)]) == [i * i for i in range(10)]


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_utils_checkpoint_keywords(use_reentrant):
    from conch.utils.checkpoint import checkpoint, checkpoint_sequential

    w = conch.randn(4, 4, requires_grad=True)
    x = conch.randn(3, 4, requires_grad=True)
    y = checkpoint(lambda a: (a @ w).tanh(), x, use_reentrant=use_reentrant, preserve_rng_state=False)
    y.sum().backward()
    gx = x.grad.numpy()
    xa, wa = x.detach().numpy(), w.detach().numpy()
    ref = (1 - np.tanh(xa @ wa) ** 2) @ wa.T  # d/dx sum(tanh(x @ w))
    np.testing.assert_allclose(gx, ref, rtol=1e-5, atol=1e-6)
    model = conch.nn.Sequential(conch.nn.Linear(4, 4), conch.nn.ReLU(), conch.nn.Linear(4, 2))
    out = checkpoint_sequential(model, 2, x.detach(), use_reentrant=use_reentrant)
    np.testing.assert_allclose(out.detach().numpy(), model(x.detach()).detach().numpy(), rtol=1e-6)
