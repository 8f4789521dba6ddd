"""Cross-device checks that need a GPU: the same model, data and weights on "cuda" and "cpu" agree.

Every test here skips without a usable GPU (conch.cuda.is_available() is False on CPU-only machines).
They complement running the whole suite with CONCH_TEST_DEVICE=cuda: that checks each op on the GPU
against float64 NumPy; these check whole training steps, the fused optimizer kernels, autocast,
memory accounting and saving across devices.
"""

import numpy as np
import pytest

import conch
import conch.nn as nn
import conch.nn.functional as F

pytestmark = pytest.mark.skipif(not conch.cuda.is_available(), reason="needs a CUDA GPU (conch.cuda.is_available())")


def _mlp():
    conch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64, activation="gelu"), nn.LayerNorm(64), nn.Linear(64, 10))


def _batch():
    rng = np.random.default_rng(0)
    return rng.standard_normal((16, 32)).astype(np.float32), rng.integers(0, 10, 16)


def _host(t):
    return t.detach().cpu().numpy()


@pytest.mark.parametrize("opt_name", ["AdamW", "SGD"])
def test_training_steps_agree_across_devices(opt_name):
    x, y = _batch()
    results = {}
    for dev in ("cpu", "cuda"):
        model = _mlp().to(dev)
        kw = {"lr": 1e-2, "momentum": 0.9} if opt_name == "SGD" else {"lr": 1e-2}
        opt = getattr(conch.optim, opt_name)(model.parameters(), **kw)  # fused kernel on the GPU
        xb, yb = conch.tensor(x, device=dev), conch.tensor(y, device=dev)
        losses = []
        for _ in range(3):
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        results[dev] = (losses, {k: _host(v) for k, v in model.state_dict().items()})
    # allow_tf32 is on by default: float32 matmuls on the GPU round their inputs to 10 mantissa bits
    np.testing.assert_allclose(results["cuda"][0], results["cpu"][0], rtol=5e-3)
    for k, v in results["cpu"][1].items():
        np.testing.assert_allclose(results["cuda"][1][k], v, rtol=2e-2, atol=2e-3, err_msg=k)


def test_tensors_move_and_keep_gradients():
    x = conch.randn(3, 4, requires_grad=True)
    y = (x.cuda() * 2).sum()
    assert y.device == "cuda:0"
    y.backward()
    assert x.grad.device == "cpu"
    np.testing.assert_array_equal(x.grad.numpy(), np.full((3, 4), 2, np.float32))
    a = conch.arange(6, device="cuda").reshape(2, 3)
    assert a.tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(RuntimeError, match="same device"):
        conch.ones(2) + conch.ones(2, device="cuda")


def test_autocast_on_gpu_runs_matmuls_in_bf16_and_loss_in_fp32():
    model = _mlp().cuda()
    x, y = _batch()
    with conch.amp.autocast(dtype=conch.bfloat16):
        logits = model(conch.tensor(x, device="cuda"))
        loss = F.cross_entropy(logits, conch.tensor(y, device="cuda"))
    assert logits.dtype == conch.bfloat16 and loss.dtype == conch.float32
    loss.backward()
    assert all(p.grad.dtype == conch.float32 for p in model.parameters())


def test_grad_scaler_skips_a_step_with_inf_on_gpu():
    model = _mlp().cuda()
    opt = conch.optim.SGD(model.parameters(), lr=0.1)
    scaler = conch.amp.GradScaler(init_scale=2.0**4)
    x, y = _batch()
    loss = F.cross_entropy(model(conch.tensor(x, device="cuda")), conch.tensor(y, device="cuda"))
    scaler.scale(loss).backward()
    before = {k: _host(v).copy() for k, v in model.state_dict().items()}
    first = next(iter(model.parameters()))
    first.grad._data[0, 0] = float("inf")
    assert scaler.step(opt) is False
    scaler.update()
    assert scaler.get_scale() == 2.0**3
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(_host(v), before[k], err_msg=k)


def test_memory_accounting_sees_allocations():
    conch.cuda.reset_peak_memory_stats()
    base = conch.cuda.memory_allocated()
    t = conch.zeros(1024, 1024, device="cuda")  # 4 MiB
    assert conch.cuda.memory_allocated() >= base + 4 * 2**20
    assert conch.cuda.max_memory_allocated() >= base + 4 * 2**20
    del t


def test_save_and_load_gpu_state_dict(tmp_path):
    model = _mlp().cuda()
    conch.save(model.state_dict(), tmp_path / "m.safetensors")
    sd = conch.load(tmp_path / "m.safetensors", device="cuda")
    assert all(v.device == "cuda:0" for v in sd.values())
    other = _mlp().cuda()
    other.load_state_dict(sd)
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        np.testing.assert_array_equal(_host(a), _host(b), err_msg=k)


def test_dropout_masks_match_across_devices():
    # the counter-based generator gives the same mask on the CPU (NumPy Philox) and the GPU (tl.rand)
    outs = []
    for dev in ("cpu", "cuda"):
        conch.manual_seed(7)
        outs.append(_host(F.dropout(conch.ones(64, 33, device=dev), 0.3)))
    np.testing.assert_array_equal(outs[0], outs[1])


def assert_same_on_both(fn, arrays, rtol=1e-4, atol=1e-5):
    """fn(*tensors) on "cpu" and "cuda" (float32 inputs that require grad): outputs and input gradients agree."""
    res = {}
    for dev in ("cpu", "cuda"):
        ts = [conch.tensor(a, device=dev, requires_grad=a.dtype.kind == "f") for a in arrays]
        out = fn(*ts)
        out = out if isinstance(out, tuple) else (out,)
        g = np.random.default_rng(1).standard_normal(out[0].shape).astype(np.float32)
        out[0].backward(conch.tensor(g, device=dev))
        res[dev] = [_host(o) for o in out] + [_host(t.grad) for t in ts if t.grad is not None]
    for c, g in zip(res["cpu"], res["cuda"]):
        np.testing.assert_allclose(g, c, rtol=rtol, atol=atol)


def test_flash_attention_and_its_dropout_agree_across_devices():
    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal((2, 3, 37, 16)).astype(np.float32) for _ in range(3))
    conch.set_float32_matmul_precision("highest")
    try:
        assert_same_on_both(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), [q, k, v])

        def dropped(q, k, v):
            conch.manual_seed(5)  # the same Philox stream on both devices: the same mask
            return F.scaled_dot_product_attention(q, k, v, dropout_p=0.2)

        assert_same_on_both(dropped, [q, k, v])
    finally:
        conch.set_float32_matmul_precision("high")


def test_in_place_views_sort_gather_and_recurrent_layers_on_the_gpu():
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((4, 6)).astype(np.float32), rng.standard_normal((2, 6)).astype(np.float32)

    def in_place(x, w):
        h = x * 2
        early = h[1]
        h[0] += w[0]
        h.T[1:].mul_(2.0)
        h.diagonal().zero_()
        return h + early.sum()

    assert_same_on_both(in_place, [x, w])
    idx = rng.integers(0, 6, (4, 3))
    assert_same_on_both(lambda x, i: x.topk(3, dim=1).values * x.gather(1, i), [x, idx])
    assert_same_on_both(lambda x, i: x.scatter_add(1, i, x[:, :3]).sort(1, descending=True).values, [x, idx])
    conch.manual_seed(0)
    lstm = nn.LSTM(6, 5, num_layers=2, bidirectional=True)
    sd = lstm.state_dict()

    def run(x):
        m = nn.LSTM(6, 5, num_layers=2, bidirectional=True).to(x.device)
        m.load_state_dict({k: v.to(x.device) for k, v in sd.items()})
        return m(x.reshape(4, 1, 6))[0]

    assert_same_on_both(run, [x], rtol=2e-3, atol=2e-4)
