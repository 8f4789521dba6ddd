"""conch.training_state: a run checkpointed at step k and resumed in fresh objects equals the uninterrupted run."""

import numpy as np
import pytest

import conch
from conch import optim
from conch.data import DataLoader, TensorDataset
from conch.optim import lr_scheduler as S
from conch.training_state import load_checkpoint, save_checkpoint

N_STEPS, CKPT_AT = 13, 7  # 5 batches per epoch: the checkpoint falls in the middle of the second epoch


def _host(t):
    return t.detach().cpu().numpy()


def _data(device):
    rng = np.random.default_rng(0)
    x = conch.tensor(rng.standard_normal((40, 6)).astype(np.float32), device=device)
    y = conch.tensor(rng.integers(0, 3, 40), device=device)
    return TensorDataset(x, y)


class RawModel:
    """A two-layer MLP from raw parameter tensors, with dropout drawn from conch's global generator."""

    def __init__(self, device):
        self.params = {
            "w1": (conch.randn(6, 16, device=device) * 0.4).requires_grad_(),
            "b1": conch.zeros(16, device=device, requires_grad=True),
            "w2": (conch.randn(16, 3, device=device) * 0.4).requires_grad_(),
        }

    def parameters(self):
        return list(self.params.values())

    def __call__(self, x):
        p = self.params
        h = (x @ p["w1"] + p["b1"]).relu()
        keep = (conch.rand(*h.shape, device=h.device) > 0.25).float()
        return (h * keep / 0.75) @ p["w2"]


def _build(kind, device, seed):
    conch.manual_seed(seed)
    if kind == "raw":
        model = RawModel(device)
        state_obj = model.params  # save_checkpoint accepts a {name: tensor} dict
    else:
        nn = conch.nn
        model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.25), nn.Linear(16, 3)).to(device)
        state_obj = model
    opt = optim.AdamW(model.parameters(), lr=0.02, weight_decay=0.05)
    sched = S.SequentialLR(opt, [S.LinearLR(opt, 0.1, total_iters=3), S.CosineAnnealingLR(opt, T_max=20)], [3])
    loader = DataLoader(_data(device), batch_size=8, shuffle=True)  # seed drawn from the global generator
    scaler = conch.amp.GradScaler(init_scale=2.0**8) if kind == "nn" else None
    return dict(model=model, state_obj=state_obj, opt=opt, sched=sched, loader=loader, scaler=scaler)


def _loss(logits, y):
    logp = logits.log_softmax(1)
    onehot = conch.tensor(np.eye(3, dtype=np.float32)[_host(y)], device=logits.device)
    return -(logp * onehot).sum() / y.shape[0]


def _train(o, step, until, ckpt_path=None):
    while step < until:
        for x, y in o["loader"]:
            loss = _loss(o["model"](x), y)
            o["opt"].zero_grad()
            if o["scaler"] is not None:
                o["scaler"].scale(loss).backward()
                o["scaler"].step(o["opt"])
                o["scaler"].update()
            else:
                loss.backward()
                o["opt"].step()
            o["sched"].step()
            step += 1
            if ckpt_path is not None and step == CKPT_AT:
                save_checkpoint(ckpt_path, model=o["state_obj"], optimizer=o["opt"], scheduler=o["sched"],
                                scaler=o["scaler"], step=step, loader=o["loader"], extra={"note": "mid"})  # fmt: skip
            if step == until:
                break
    return step


@pytest.mark.parametrize("kind", ["raw", "nn"])
def test_resume_is_bitwise_identical(kind, device, tmp_path):
    if kind == "nn" and not hasattr(conch.nn, "Linear"):
        pytest.skip("conch.nn.Linear is not available yet")
    path = tmp_path / "ckpt.safetensors"
    full = _build(kind, device, seed=0)
    _train(full, 0, N_STEPS, ckpt_path=path)
    conch.rand(5)  # disturb the global generator: the checkpoint must restore it

    fresh = _build(kind, device, seed=12345)  # different initial weights, loader seed and RNG
    ck = load_checkpoint(path, model=fresh["state_obj"], optimizer=fresh["opt"], scheduler=fresh["sched"],
                         scaler=fresh["scaler"], loader=fresh["loader"])  # fmt: skip
    assert ck["step"] == CKPT_AT and ck["extra"] == {"note": "mid"}
    _train(fresh, ck["step"], N_STEPS)

    pa, pb = list(full["model"].parameters()), list(fresh["model"].parameters())
    for a, b in zip(pa, pb):
        if device == "cpu":
            np.testing.assert_array_equal(_host(a), _host(b))
        else:
            np.testing.assert_allclose(_host(a), _host(b), rtol=1e-5, atol=1e-6)
    assert full["sched"].get_last_lr() == fresh["sched"].get_last_lr()
    assert full["loader"].state_dict() == fresh["loader"].state_dict()
    for a, b in zip(pa, pb):
        sa, sb = full["opt"].state[a], fresh["opt"].state[b]
        np.testing.assert_array_equal(_host(sa["step"]), _host(sb["step"]))
        if device == "cpu":
            np.testing.assert_array_equal(_host(sa["exp_avg_sq"]), _host(sb["exp_avg_sq"]))
    if full["scaler"] is not None:
        assert full["scaler"].get_scale() == fresh["scaler"].get_scale()


def test_resume_without_checkpoint_differs(device, tmp_path):
    # the control: skipping the RNG restore changes the dropout masks, so the comparison above can fail
    path = tmp_path / "ckpt.safetensors"
    full = _build("raw", device, seed=0)
    _train(full, 0, N_STEPS, ckpt_path=path)
    fresh = _build("raw", device, seed=12345)
    ck = load_checkpoint(path, model=fresh["state_obj"], optimizer=fresh["opt"], scheduler=fresh["sched"],
                         loader=fresh["loader"], restore_rng=False)  # fmt: skip
    _train(fresh, ck["step"], N_STEPS)
    diffs = [np.abs(_host(a) - _host(b)).max() for a, b in zip(full["model"].parameters(), fresh["model"].parameters())]
    assert max(diffs) > 0


def test_checkpoint_errors(tmp_path):
    w = conch.zeros(3, requires_grad=True)
    conch.save({"w": w.detach()}, tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="not a conch training checkpoint"):
        load_checkpoint(tmp_path / "plain.safetensors", model={"w": w})
    save_checkpoint(tmp_path / "c.safetensors", model={"w": w}, step=4)
    with pytest.raises(KeyError, match="optimizer"):
        load_checkpoint(tmp_path / "c.safetensors", optimizer=optim.SGD([w], lr=0.1))
    with pytest.raises(RuntimeError, match="shape"):
        load_checkpoint(tmp_path / "c.safetensors", model={"w": conch.zeros(4, requires_grad=True)})
    with pytest.raises(RuntimeError, match="missing"):
        load_checkpoint(tmp_path / "c.safetensors", model={"v": conch.zeros(3, requires_grad=True)})
    ck = load_checkpoint(tmp_path / "c.safetensors", model={"w": w})
    assert ck["step"] == 4 and ck["optimizer"] is None and "np" in ck["rng"]


def test_corrupt_checkpoint_raises_unless_verify_false(tmp_path):
    from conch.serialization import SerializationError

    w = conch.ones(64, requires_grad=True)
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, model={"w": w}, step=4)
    data = bytearray(path.read_bytes())
    data[-4] ^= 0x80  # the last tensor's last byte
    path.write_bytes(bytes(data))
    with pytest.raises(SerializationError, match="c.safetensors.*checksum mismatch in tensor"):
        load_checkpoint(path, model={"w": w})
    assert load_checkpoint(path, model={"w": w}, verify=False)["step"] == 4
