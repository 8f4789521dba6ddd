"""A small model trained on the Triton path (under the interpreter) and on the reference path gives matching losses."""

import numpy as np
import pytest

import conch
import conch.nn as nn
import conch.nn.functional as F
from conch.data import load_digits
from conch.kernels._launch import LAUNCHES


def _train(steps, monkeypatch, triton):
    if triton:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        monkeypatch.setenv("CONCH_KERNELS", "auto")
    else:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        monkeypatch.setenv("CONCH_KERNELS", "reference")
    conch.manual_seed(0)
    train, _ = load_digits()
    x, y = train.tensors
    model = nn.Sequential(nn.Linear(64, 48, activation="gelu"), nn.LayerNorm(48), nn.Dropout(0.1), nn.Linear(48, 10))
    opt = conch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(steps):
        xb, yb = x[step * 64 : (step + 1) * 64], y[step * 64 : (step + 1) * 64]
        loss = F.cross_entropy(model(xb), yb, label_smoothing=0.05)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return np.array(losses)


def test_triton_and_reference_paths_train_alike(monkeypatch):
    before = sum(LAUNCHES.values())
    tri = _train(12, monkeypatch, triton=True)
    launches = sum(LAUNCHES.values()) - before
    ref = _train(12, monkeypatch, triton=False)
    assert launches >= 12 * 6, f"expected several Triton launches per step, got {launches}"
    assert ref[-1] < 0.75 * ref[0], ref  # it learns
    # same seed, same dropout masks (counter-based), same maths: only float32 summation order differs
    np.testing.assert_allclose(tri, ref, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("dtype", [conch.float16, conch.bfloat16])
def test_low_precision_training_matches_float32_accuracy(dtype):
    conch.manual_seed(0)
    train, test = load_digits()
    (x, y), (xt, yt) = train.tensors, test.tensors
    accs = {}
    for run in ("fp32", "amp"):
        conch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 64, activation="relu"), nn.Linear(64, 10))
        opt = conch.optim.Adam(model.parameters(), lr=1e-2)
        scaler = conch.amp.GradScaler(enabled=run == "amp" and dtype == conch.float16)
        for _ in range(6):
            for i in range(0, len(x), 128):
                with conch.amp.autocast(dtype=dtype, enabled=run == "amp"):
                    loss = F.cross_entropy(model(x[i : i + 128]), y[i : i + 128])
                opt.zero_grad()
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
        with conch.no_grad(), conch.amp.autocast(dtype=dtype, enabled=run == "amp"):
            accs[run] = (model(xt).argmax(1) == yt).float().mean().item()
    assert accs["fp32"] > 0.93, accs
    assert accs["amp"] >= accs["fp32"] - 0.02, accs
