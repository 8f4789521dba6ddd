"""conch.models: shapes, causality, weight tying, checkpointing equivalence, and that they learn."""

import numpy as np
import pytest

import conch
from conch.models import CNN, GPT, MLP, GPTConfig


def _cfg(**kw):
    base = dict(block_size=12, vocab_size=17, n_layer=2, n_head=2, n_embd=16)
    base.update(kw)
    return GPTConfig(**base)


def test_mlp_and_cnn_shapes(device):
    assert MLP(64, [32, 16], 10).to(device)(conch.randn(5, 64, device=device)).shape == (5, 10)
    cnn = CNN(image_size=8, num_classes=10).to(device)
    assert cnn(conch.randn(4, 1, 8, 8, device=device)).shape == (4, 10)
    assert cnn(conch.randn(4, 64, device=device)).shape == (4, 10)  # flat images are reshaped


def test_mlp_matches_manual_float64_forward():
    conch.manual_seed(1)
    m = MLP(6, [5], 3, activation="relu").double()
    x = np.random.default_rng(0).standard_normal((4, 6))
    l1, l2 = m.net[0], m.net[1]
    h = np.maximum(x @ l1.weight.detach().numpy().T + l1.bias.detach().numpy(), 0)
    ref = h @ l2.weight.detach().numpy().T + l2.bias.detach().numpy()
    np.testing.assert_allclose(m(conch.tensor(x)).detach().numpy(), ref, rtol=1e-12)


def test_gpt_is_causal_and_ties_weights():
    conch.manual_seed(0)
    model = GPT(_cfg())
    model.eval()
    assert model.lm_head.weight is model.wte.weight
    idx = conch.randint(0, 17, (2, 12))
    logits, loss = model(idx)
    assert logits.shape == (2, 12, 17) and loss is None
    changed = idx.numpy().copy()
    changed[:, 7:] = (changed[:, 7:] + 1) % 17  # change only the future after position 6
    logits2, _ = model(conch.tensor(changed))
    np.testing.assert_allclose(logits2.detach().numpy()[:, :7], logits.detach().numpy()[:, :7], atol=1e-5)
    assert not np.allclose(logits2.detach().numpy()[:, 7:], logits.detach().numpy()[:, 7:])


def test_gpt_loss_is_cross_entropy_of_logits():
    model = GPT(_cfg())
    idx = conch.randint(0, 17, (2, 12))
    logits, loss = model(idx, idx)
    lg = logits.detach().numpy().reshape(-1, 17).astype(np.float64)
    t = idx.numpy().reshape(-1)
    lse = np.log(np.exp(lg - lg.max(1, keepdims=True)).sum(1)) + lg.max(1)
    np.testing.assert_allclose(loss.item(), (lse - lg[np.arange(len(t)), t]).mean(), rtol=1e-5)
    with pytest.raises(ValueError, match="block_size"):
        model(conch.randint(0, 17, (1, 13)))


def test_gpt_checkpointing_gives_the_same_gradients():
    conch.manual_seed(0)
    plain = GPT(_cfg(dropout=0.1))
    ckpt = GPT(_cfg(dropout=0.1, checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    idx = conch.randint(0, 17, (2, 12))
    grads = []
    for m in (plain, ckpt):
        conch.manual_seed(5)  # same dropout masks in both runs
        _, loss = m(idx, idx)
        loss.backward()
        grads.append({n: p.grad.numpy().copy() for n, p in m.named_parameters()})
    for name in grads[0]:
        np.testing.assert_allclose(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7, err_msg=name)


def test_gpt_learns_a_repeating_sequence():
    conch.manual_seed(0)
    model = GPT(_cfg(vocab_size=5, n_embd=32))
    seq = np.tile(np.arange(5), 6)[:13]
    x, y = conch.tensor(seq[None, :12]), conch.tensor(seq[None, 1:13])
    params = list(model.parameters())
    first = None
    for _ in range(60):
        _, loss = model(x, y)
        first = loss.item() if first is None else first
        for p in params:
            p.grad = None
        loss.backward()
        with conch.no_grad():
            for p in params:
                p -= 0.05 * p.grad
    assert loss.item() < 0.3 * first, (first, loss.item())
    out = model.generate(x[:, :3], 4, temperature=0.01)
    assert out.shape == (1, 7)
    np.testing.assert_array_equal(out.numpy()[0, 3:], [3, 4, 0, 1])


def test_gpt_fused_loss_equals_the_unfused_one_with_and_without_logits():
    # the loss comes from F.linear_cross_entropy (no logits in its graph): same value and gradients as
    # cross_entropy of the returned logits, and return_logits=False changes nothing but the logits
    conch.manual_seed(0)
    model = GPT(_cfg(vocab_size=23))
    idx, tgt = conch.randint(0, 23, (3, 12)), conch.randint(0, 23, (3, 12))
    tgt[0, :4] = -100
    logits, loss = model(idx, tgt)
    unfused = conch.nn.functional.cross_entropy(logits.reshape(36, 23), tgt.reshape(36))
    np.testing.assert_allclose(loss.item(), unfused.item(), rtol=1e-6)
    params = list(model.parameters())
    g_fused = conch.autograd.grad(loss, params, retain_graph=True)  # the two losses share the trunk
    g_plain = conch.autograd.grad(unfused, params)
    for a, b in zip(g_fused, g_plain):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)
    none, loss2 = model(idx, tgt, return_logits=False)
    assert none is None and loss2.item() == loss.item()
