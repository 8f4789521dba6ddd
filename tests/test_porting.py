"""PyTorch's plumbing names (issue #14): backends, accelerator, cuda.amp, autocast's signature, load's arguments."""

import importlib.util
import warnings

import numpy as np
import pytest

import conch

GPU = conch.cuda.is_available()


@pytest.fixture
def tf32_restored():
    before = conch.backends.allow_tf32()
    yield
    conch.backends.allow_tf32(before)


def test_backends_cuda_matmul_allow_tf32_is_conchs_switch(tf32_restored):
    conch.backends.cuda.matmul.allow_tf32 = False
    assert conch.get_float32_matmul_precision() == "highest" and conch.backends.allow_tf32() is False
    conch.set_float32_matmul_precision("high")
    assert conch.backends.cuda.matmul.allow_tf32 is True
    conch.backends.cuda.matmul.allow_tf32 = 0
    assert conch.backends.cuda.matmul.allow_tf32 is False
    from conch.fused import matmul as fm

    assert fm._tf32[0] is False  # the list the fused matmul reads at each call
    assert conch.backends.cuda.is_built() == (importlib.util.find_spec("cupy") is not None)


def test_backends_cudnn_and_mps_flags():
    import conch.backends.cudnn as cudnn

    assert (cudnn.allow_tf32, cudnn.benchmark, cudnn.deterministic, cudnn.enabled) == (True, False, False, True)
    cudnn.benchmark = True  # scripts set these; nothing reads them
    cudnn.benchmark = False
    assert cudnn.is_available() is False and conch.backends.mps.is_available() is False
    assert conch.backends.mps.is_built() is False


def test_accelerator_and_cuda_queries():
    assert conch.accelerator.is_available() is GPU
    if GPU:
        assert conch.accelerator.current_accelerator() == conch.device("cuda")
        assert conch.accelerator.device_count() == conch.cuda.device_count() >= 1
    else:
        assert conch.accelerator.current_accelerator() is None and conch.accelerator.device_count() == 0
        assert conch.cuda.is_bf16_supported() is False
    assert isinstance(conch.cuda.is_bf16_supported(), bool)
    assert callable(conch.cuda.synchronize) and callable(conch.cuda.memory_allocated)  # _backend's, through conch.cuda
    with pytest.raises(AttributeError, match="conch.cuda"):
        conch.cuda.no_such_thing  # noqa: B018


def test_cuda_amp_names_are_deprecated_aliases():
    from conch.cuda.amp import GradScaler, autocast

    with pytest.warns(FutureWarning, match="conch.amp.autocast"):
        ac = autocast(dtype=conch.bfloat16)
    assert isinstance(ac, conch.amp.autocast) and ac.device_type == "cuda" and ac.fast_dtype == conch.bfloat16
    with pytest.warns(FutureWarning, match="conch.amp.GradScaler"):
        sc = GradScaler(init_scale=8.0)
    assert isinstance(sc, conch.amp.GradScaler) and sc.get_scale() == 8.0
    x = conch.randn(2, 3)
    with pytest.warns(FutureWarning), conch.cuda.amp.autocast():
        y = x @ x.T
    assert y.dtype == (conch.float16 if x.is_cuda else conch.float32)  # only CUDA tensors are autocast


def test_autocast_pytorch_signature_and_conchs_old_one():
    a = conch.amp.autocast("cuda", dtype=conch.bfloat16)
    assert (a.device_type, a.fast_dtype, a.enabled) == ("cuda", conch.bfloat16, True)
    b = conch.autocast("cpu")
    assert (b.device_type, b.fast_dtype) == ("cpu", conch.bfloat16)  # PyTorch's CPU default
    c = conch.amp.autocast(conch.bfloat16)  # a dtype first: conch's earlier signature
    assert (c.device_type, c.fast_dtype, c.enabled) == (None, conch.bfloat16, True)
    d = conch.amp.autocast(conch.float16, False)
    assert (d.fast_dtype, d.enabled) == (conch.float16, False)
    e = conch.amp.autocast(dtype=conch.float16, device_type="cuda", enabled=False, cache_enabled=True)
    assert (e.device_type, e.enabled) == ("cuda", False)
    with pytest.raises(TypeError, match="device_type"):
        conch.amp.autocast(conch.float16, conch.bfloat16)
    with pytest.raises(ValueError, match="device_type"):
        conch.amp.autocast("tpu")


def test_autocast_cpu_device_type_computes_in_bfloat16():
    import ml_dtypes

    rng = np.random.default_rng(0)
    xa, wa = rng.standard_normal((4, 8)).astype(np.float32), rng.standard_normal((8, 3)).astype(np.float32)
    x, w = conch.tensor(xa), conch.tensor(wa)
    with conch.autocast("cpu", dtype=conch.bfloat16):
        y = x @ w
    with conch.autocast("cuda", dtype=conch.bfloat16):
        z = x @ w  # CPU tensors under a CUDA autocast stay float32, as PyTorch
    assert y.dtype == conch.bfloat16 and z.dtype == conch.float32
    bf = ml_dtypes.bfloat16
    ref = xa.astype(bf).astype(np.float32) @ wa.astype(bf).astype(np.float32)
    np.testing.assert_allclose(y.float().numpy(), ref, rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(z.numpy(), xa @ wa, rtol=1e-5, atol=1e-5)


def test_pin_memory():
    t = conch.arange(6).reshape(2, 3)
    p = t.pin_memory()
    assert p.tolist() == t.tolist() and p.dtype == t.dtype and p.device == conch.device("cpu")
    if not GPU:
        assert p is t  # nothing to pin for without a GPU
    else:
        assert p is not t
        with pytest.raises(RuntimeError, match="only CPU tensors"):
            t.cuda().pin_memory()


def test_load_map_location_and_weights_only(tmp_path):
    path = tmp_path / "m.safetensors"
    conch.save({"w": conch.arange(4, dtype=conch.float32), "step": 3}, path)
    for loc in (None, "cpu", conch.device("cpu"), {"cuda:0": "cpu"}, {"cuda:1": "cuda:0"}):
        sd = conch.load(path, map_location=loc, weights_only=True)
        assert sd["w"].tolist() == [0.0, 1.0, 2.0, 3.0] and sd["step"] == 3 and sd["w"].device == "cpu", loc
    assert conch.load(path, "cpu", weights_only=False)["w"].device == "cpu"  # map_location positionally
    with pytest.raises(TypeError, match="function"):
        conch.load(path, map_location=lambda storage, loc: storage)
    with pytest.raises(TypeError, match="not both"):
        conch.load(path, map_location="cpu", device="cpu")
    if GPU:
        assert conch.load(path, map_location="cuda")["w"].is_cuda
        assert conch.load(path, map_location={"cpu": "cuda:0"})["w"].device == "cuda:0"


def test_ported_training_loop_runs_with_only_the_import_changed():
    import conch as torch  # the one-line change
    from conch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = (x.sum(dim=1, keepdim=True) > 0).float()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.backends.cuda.matmul.allow_tf32 = True
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    losses = []
    for _ in range(20):
        for xb, yb in loader:
            xb, yb = xb.pin_memory().to(device), yb.to(device)
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=False):
                loss = torch.nn.functional.binary_cross_entropy_with_logits(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none of the current spellings warns
        torch.amp.GradScaler("cuda", enabled=False)
        torch.amp.autocast("cuda")


def test_size_is_a_tuple_with_numel_printing_as_conch_size():
    import pickle

    t = conch.zeros(2, 3, 4)
    s = t.shape
    assert isinstance(s, conch.Size) and isinstance(s, tuple) and t.size() == s
    assert s == (2, 3, 4) and (2, 3, 4) == s and hash(s) == hash((2, 3, 4)) and s != (2, 3)
    assert repr(s) == str(s) == "conch.Size([2, 3, 4])" and repr(conch.Size([])) == "conch.Size([])"
    assert f"{s}" == "(2, 3, 4)"  # what error messages embed, uniform with raw arrays' shapes
    assert s.numel() == 24 == t.numel() and conch.Size(()).numel() == 1
    assert isinstance(s[1:], conch.Size) and s[1:] == (3, 4) and s[0] == 2 and type(s[0]) is int
    assert isinstance(s + (5,), conch.Size) and s + (5,) == (2, 3, 4, 5)
    assert pickle.loads(pickle.dumps(s)) == s and type(pickle.loads(pickle.dumps(s))) is conch.Size
    assert conch.zeros(s).shape == s and t.reshape(s[0], -1).shape == (2, 12) and t.size(-1) == 4
    assert np.zeros(s).shape == (2, 3, 4)


def test_zero_dim_tensor_formats_as_its_number():
    loss = conch.tensor(2.34567)
    assert f"{loss:.4f}" == "2.3457" and "{:.1f}".format(conch.tensor(3)) == "3.0"  # noqa: UP032
    assert f"{conch.tensor(0.5)}" == "0.5" and f"{conch.zeros(2)}" == str(conch.zeros(2))
    with pytest.raises(TypeError, match="unsupported format string"):
        f"{conch.zeros(2):.2f}"  # noqa: B018  (as PyTorch: only a 0-d tensor is a number)


def test_cuda_manual_seed_is_silent_without_a_gpu():
    conch.manual_seed(5)
    a = conch.rand(3)
    conch.manual_seed(5)
    conch.cuda.manual_seed(7)
    conch.cuda.manual_seed_all(7)
    assert conch.equal(conch.rand(3), a)  # CPU numbers untouched, as PyTorch's
    if GPU:
        conch.cuda.manual_seed(7)
        g = conch.rand(3, device="cuda")
        conch.cuda.manual_seed(7)
        assert conch.equal(conch.rand(3, device="cuda"), g)


def test_random_sampler_with_replacement_draws_lazily():
    from conch.utils.data import RandomSampler

    it = iter(RandomSampler(range(10), replacement=True, num_samples=int(1e10)))  # minGPT's Trainer
    first = [next(it) for _ in range(20000)]
    assert all(0 <= i < 10 for i in first) and len(set(first)) == 10
    rng = np.random.default_rng(0)
    s = RandomSampler(range(4), num_samples=10, generator=rng)
    out = list(s)
    assert len(out) == 10 and sorted(out[:4]) == sorted(out[4:8]) == [0, 1, 2, 3]


def test_utils_data_submodule_paths():
    from conch.utils.data.dataloader import DataLoader  # minGPT's trainer.py imports it from here
    from conch.utils.data.dataset import Dataset, TensorDataset
    from conch.utils.data.sampler import BatchSampler, RandomSampler

    assert DataLoader is conch.utils.data.DataLoader and Dataset is conch.data.Dataset
    assert TensorDataset is conch.utils.data.TensorDataset and RandomSampler is conch.utils.data.RandomSampler
    assert BatchSampler is conch.data.BatchSampler


def test_cuda_set_device_and_empty_cache():
    if conch.cuda.is_available():
        conch.cuda.set_device(0)
        assert conch.cuda.current_device() == 0
        with pytest.raises(RuntimeError, match="invalid device ordinal"):
            conch.cuda.set_device(conch.cuda.device_count())
        x = conch.ones(1000, device="cuda")
        conch.cuda.empty_cache()  # live tensors keep their memory
        assert x.sum().item() == 1000
    else:
        with pytest.raises(RuntimeError, match="no usable GPU"):
            conch.cuda.set_device(0)
        conch.cuda.empty_cache()  # nothing to free, no error, as PyTorch without CUDA initialised
