"""Mixed-precision training end to end: an MLP on sklearn's digits in bf16 and fp16 reaches fp32's accuracy."""

import math

import numpy as np
import pytest

import conch
from conch.amp import GradScaler, autocast, cast_for

DTYPES = {"fp32": None, "bf16": conch.bfloat16, "fp16": conch.float16}


@pytest.fixture(scope="module")
def digits():
    datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn provides the digits data")
    x, y = datasets.load_digits(return_X_y=True)
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = (x[perm] / 16.0).astype(np.float32), y[perm].astype(np.int64)
    return x[:1400], y[:1400], x[1400:], y[1400:]


def _batches(n, bs, epoch):
    order = np.random.default_rng(epoch).permutation(n)
    return [order[i : i + bs] for i in range(0, n, bs)]


def _hand_built_run(mode, digits, device):
    """Raw tensors, explicit cast_for calls (as the wired ops make them), manual SGD on float32 weights."""
    xtr, ytr, xte, yte = digits
    rng = np.random.default_rng(1)
    shapes = [(64, 64), (64,), (10, 64), (10,)]
    params = []
    for s in shapes:
        a = rng.uniform(-1, 1, s) / math.sqrt(64) if len(s) == 2 else np.zeros(s)
        params.append(conch.tensor(a, dtype=conch.float32, device=device, requires_grad=True))
    w1, b1, w2, b2 = params
    dt = DTYPES[mode]
    scaler = GradScaler(init_scale=2.0**12, enabled=mode == "fp16")

    class Opt:  # plain SGD with the interface GradScaler needs
        param_groups = [{"params": params}]

        @staticmethod
        def step():
            with conch.no_grad():
                for p in params:
                    p -= 0.5 * p.grad

    def logits(x):
        h = (lambda a, w, b: (a @ w.T + b).relu())(*cast_for("linear", x, w1, b1))
        a, w, b = cast_for("linear", h, w2, b2)
        return a @ w.T + b

    low_dtypes = set()
    for epoch in range(12):
        for idx in _batches(len(xtr), 100, epoch):
            x = conch.tensor(xtr[idx], device=device)
            t = ytr[idx]
            with autocast(dtype=dt or conch.float16, enabled=dt is not None):
                z = logits(x)
                low_dtypes.add(z.dtype)
                (z32,) = cast_for("log_softmax", z)
                logp = z32.log_softmax(-1)
                loss = -logp[np.arange(len(idx)), t].mean()
            for p in params:
                p.grad = None
            scaler.scale(loss).backward()
            assert all(p.grad.dtype == conch.float32 for p in params)
            scaler.step(Opt)
            scaler.update()
    assert low_dtypes == {dt or conch.float32}
    with conch.no_grad():
        pred = logits(conch.tensor(xte, device=device)).argmax(-1).cpu().numpy()
    return float((pred == yte).mean())


def test_hand_built_mlp_bf16_fp16_match_fp32(digits, device):
    acc = {m: _hand_built_run(m, digits, device) for m in DTYPES}
    assert acc["fp32"] > 0.93, acc
    assert acc["bf16"] >= acc["fp32"] - 0.03, acc
    assert acc["fp16"] >= acc["fp32"] - 0.03, acc


def _nn_run(mode, digits, device):
    nn = pytest.importorskip("conch.nn", reason="conch.nn not importable yet")
    optim = pytest.importorskip("conch.optim", reason="conch.optim not importable yet")
    import conch.nn.functional as F

    xtr, ytr, xte, yte = digits
    conch.manual_seed(3)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).to(device)
    opt = optim.Adam(model.parameters(), lr=1e-2)
    dt = DTYPES[mode]
    scaler = GradScaler(enabled=mode == "fp16")
    skipped = 0
    for epoch in range(10):
        for idx in _batches(len(xtr), 100, epoch):
            x = conch.tensor(xtr[idx], device=device)
            t = conch.tensor(ytr[idx], device=device)
            opt.zero_grad()
            with autocast(dtype=dt or conch.float16, enabled=dt is not None):
                z = model(x)
                assert z.dtype == (dt or conch.float32), "nn.Linear does not follow the autocast policy"
                loss = F.cross_entropy(z, t)
                assert loss.dtype == conch.float32
            scaler.scale(loss).backward()
            skipped += not scaler.step(opt)
            scaler.update()
    assert all(p.dtype == conch.float32 and p.grad.dtype == conch.float32 for p in model.parameters())
    with conch.no_grad():
        pred = model(conch.tensor(xte, device=device)).argmax(-1).cpu().numpy()
    return float((pred == yte).mean()), skipped


def test_nn_mlp_bf16_fp16_match_fp32(digits, device):
    res = {m: _nn_run(m, digits, device) for m in DTYPES}
    acc = {m: r[0] for m, r in res.items()}
    assert acc["fp32"] > 0.93, acc
    assert acc["bf16"] >= acc["fp32"] - 0.03, acc
    assert acc["fp16"] >= acc["fp32"] - 0.03, acc
    assert res["fp16"][1] <= 3, f"the scaler skipped {res['fp16'][1]} steps (2^16 overflows at most a few times)"
