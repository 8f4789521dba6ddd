"""Cross-checks against PyTorch on the same weights and inputs (skipped without torch): forward, backward, names."""

import numpy as np
import pytest

import conch
import conch.nn as nn

torch = pytest.importorskip("torch", reason="PyTorch is not installed; these cross-checks are optional")


def _copy_to_torch(cm, tm):
    sd = {k: torch.tensor(np.array(v.numpy())) for k, v in cm.state_dict().items()}
    assert list(sd) == list(tm.state_dict())  # the same names, in the same order
    for k, v in tm.state_dict().items():
        assert tuple(v.shape) == tuple(sd[k].shape), k
    tm.load_state_dict(sd)


CASES = [
    (
        lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1),
        lambda: torch.nn.Conv2d(3, 4, 3, stride=2, padding=1),
        (2, 3, 7, 6),
    ),
    (lambda: nn.BatchNorm2d(3), lambda: torch.nn.BatchNorm2d(3), (4, 3, 3, 3)),
    *(
        (
            lambda m=m, p=p: nn.Conv2d(3, 4, (3, 2), padding=p, padding_mode=m),
            lambda m=m, p=p: torch.nn.Conv2d(3, 4, (3, 2), padding=p, padding_mode=m),
            (2, 3, 6, 5),
        )
        for m, p in (("reflect", 1), ("replicate", (2, 1)), ("circular", "same"))
    ),
    (
        lambda: nn.Sequential(nn.Linear(5, 6), nn.GELU(), nn.LayerNorm(6), nn.Linear(6, 2)),
        lambda: torch.nn.Sequential(
            torch.nn.Linear(5, 6), torch.nn.GELU(), torch.nn.LayerNorm(6), torch.nn.Linear(6, 2)
        ),
        (3, 4, 5),
    ),
    (
        lambda: nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True), nn.Flatten()),
        lambda: torch.nn.Sequential(
            torch.nn.Conv2d(2, 3, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2, ceil_mode=True), torch.nn.Flatten()
        ),
        (2, 2, 7, 7),
    ),
]


@pytest.mark.parametrize("make_c,make_t,shape", CASES)
def test_layers_match_torch(make_c, make_t, shape):
    cm, tm = make_c().double(), make_t().double()
    _copy_to_torch(cm, tm)
    x = np.random.standard_normal(shape)
    for _ in range(2):  # twice: batch norm's running statistics must agree too
        xc, xt = conch.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
        yc, yt = cm(xc), tm(xt)
        np.testing.assert_allclose(yc.detach().numpy(), yt.detach().numpy(), rtol=1e-9, atol=1e-12)
        g = np.random.standard_normal(yt.shape)
        yc.backward(conch.tensor(g))
        yt.backward(torch.tensor(g))
        np.testing.assert_allclose(xc.grad.numpy(), xt.grad.numpy(), rtol=1e-9, atol=1e-12)
        for (n, p), (_, q) in zip(cm.named_parameters(), tm.named_parameters()):
            np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=n)
        for (n, b), (_, c) in zip(cm.named_buffers(), tm.named_buffers()):
            np.testing.assert_allclose(b.numpy(), c.numpy(), rtol=1e-12, err_msg=n)
        cm.zero_grad()
        tm.zero_grad()
    assert repr(cm) == repr(tm)


def test_multihead_attention_matches_torch():
    cm = nn.MultiheadAttention(8, 2).double()
    tm = torch.nn.MultiheadAttention(8, 2, batch_first=True).double()
    _copy_to_torch(cm, tm)
    q, kv = np.random.standard_normal((2, 4, 8)), np.random.standard_normal((2, 5, 8))
    kpm = np.array([[False] * 4 + [True], [False] * 2 + [True] * 3])
    oc, wc = cm(conch.tensor(q), conch.tensor(kv), conch.tensor(kv), key_padding_mask=conch.tensor(kpm))
    ot, wt = tm(torch.tensor(q), torch.tensor(kv), torch.tensor(kv), key_padding_mask=torch.tensor(kpm))
    np.testing.assert_allclose(oc.detach().numpy(), ot.detach().numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(wc.detach().numpy(), wt.detach().numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("bias_kv,zero_attn", [(True, False), (False, True), (True, True)])
def test_multihead_attention_bias_kv_zero_attn_match_torch(bias_kv, zero_attn):
    kw = {"add_bias_kv": bias_kv, "add_zero_attn": zero_attn}
    cm = nn.MultiheadAttention(8, 2, **kw).double()
    tm = torch.nn.MultiheadAttention(8, 2, batch_first=True, **kw).double()
    _copy_to_torch(cm, tm)
    q, kv = np.random.standard_normal((2, 4, 8)), np.random.standard_normal((2, 5, 8))
    kpm = np.where(np.array([[False] * 4 + [True], [False] * 2 + [True] * 3]), -np.inf, 0.0)
    am = np.random.standard_normal((4, 5))  # float masks, added to the scores (padded with zeros for the extras)
    oc, wc = cm(conch.tensor(q), conch.tensor(kv), conch.tensor(kv), key_padding_mask=conch.tensor(kpm),
                attn_mask=conch.tensor(am))  # fmt: skip
    ot, wt = tm(torch.tensor(q), torch.tensor(kv), torch.tensor(kv), key_padding_mask=torch.tensor(kpm),
                attn_mask=torch.tensor(am))  # fmt: skip
    np.testing.assert_allclose(oc.detach().numpy(), ot.detach().numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(wc.detach().numpy(), wt.detach().numpy(), rtol=1e-9, atol=1e-12)
    g = np.random.standard_normal(ot.shape)
    oc.backward(conch.tensor(g))
    ot.backward(torch.tensor(g))
    for (n, p), (_, r) in zip(cm.named_parameters(), tm.named_parameters()):
        np.testing.assert_allclose(p.grad.numpy(), r.grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=n)


def test_state_dict_round_trip_through_torch():
    cm = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4), nn.Linear(4, 3))
    tm = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 3))
    with torch.no_grad():
        for p in tm.parameters():
            p.normal_()
    back = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4), nn.Linear(4, 3))
    back.load_state_dict(tm.state_dict())  # PyTorch tensors load directly
    for (k, a), (_, b) in zip(back.state_dict().items(), tm.state_dict().items()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=k)
    _copy_to_torch(cm, tm)
