"""Issue #14's missing layers (RNN, Transformer decoder, 3-D conv/pool, unpooling, activations, Adadelta)
against float64 NumPy references, float64 gradcheck and PyTorch's state-dict keys."""

import math

import numpy as np
import pytest

import conch
import conch.nn as nn
from conch.autograd import gradcheck


def t64(a, grad=True):
    return conch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def npv(t):
    return t.detach().cpu().numpy()


def npsd(m):
    return {k: npv(v) for k, v in m.state_dict().items()}


# ---------------------------------------------------------------- RNN


def ref_elman(x, sd, num_layers, bidirectional, act, h0=None):
    """x (T, N, H_in) time-major; returns output (T, N, D·H) and h_n (layers·D, N, H)."""
    nd = 2 if bidirectional else 1
    seq, n = x.shape[:2]
    hid = sd["weight_hh_l0"].shape[1]
    h0 = np.zeros((num_layers * nd, n, hid)) if h0 is None else h0
    hs, inp = [], x
    for layer in range(num_layers):
        outs = []
        for d in range(nd):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            wih, whh = sd["weight_ih" + sfx], sd["weight_hh" + sfx]
            bih, bhh = sd.get("bias_ih" + sfx, 0.0), sd.get("bias_hh" + sfx, 0.0)
            h, out = h0[layer * nd + d], np.zeros((seq, n, hid))
            for t in range(seq) if d == 0 else reversed(range(seq)):
                h = act(inp[t] @ wih.T + bih + h @ whh.T + bhh)
                out[t] = h
            outs.append(out)
            hs.append(h)
        inp = np.concatenate(outs, axis=-1)
    return inp, np.stack(hs)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize(
    "num_layers,bidirectional,batch_first,bias",
    [(1, False, False, True), (2, True, True, True), (2, False, False, False)],
)
def test_rnn_against_numpy(nonlinearity, num_layers, bidirectional, batch_first, bias):
    m = nn.RNN(3, 4, num_layers, nonlinearity, bias, batch_first, bidirectional=bidirectional).double()
    nd = 2 if bidirectional else 1
    x = np.random.standard_normal((5, 2, 3))
    h0 = np.random.standard_normal((num_layers * nd, 2, 4))
    act = np.tanh if nonlinearity == "tanh" else (lambda a: np.maximum(a, 0))
    out_r, hn_r = ref_elman(x, npsd(m), num_layers, bidirectional, act, h0)
    out, hn = m(t64(x.transpose(1, 0, 2) if batch_first else x), t64(h0))
    want = out_r.transpose(1, 0, 2) if batch_first else out_r
    np.testing.assert_allclose(npv(out), want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(npv(hn), hn_r, rtol=1e-10, atol=1e-12)
    out0, _ = m(t64(x[:, 0]))  # unbatched (T, H_in), zero initial state
    np.testing.assert_allclose(npv(out0), ref_elman(x[:, :1], npsd(m), num_layers, bidirectional, act)[0][:, 0],
                               rtol=1e-10, atol=1e-12)  # fmt: skip


def test_rnn_state_dict_keys_init_and_errors():
    m = nn.RNN(6, 25, num_layers=2, bidirectional=True)
    keys = []
    for layer in range(2):
        for sfx in ("", "_reverse"):
            keys += [f"{n}_l{layer}{sfx}" for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    assert list(m.state_dict()) == keys
    assert m.weight_ih_l0.shape == (25, 6) and m.weight_ih_l1.shape == (25, 50) and m.bias_hh_l1_reverse.shape == (25,)
    bound = 1 / math.sqrt(25)
    for p in m.parameters():
        assert float(p.abs().max()) <= bound
    assert float(m.weight_ih_l1.std()) > 0.5 * bound / math.sqrt(3)
    assert m.mode == "RNN_TANH" and nn.RNN(2, 3, nonlinearity="relu").mode == "RNN_RELU"
    with pytest.raises(ValueError, match="nonlinearity"):
        nn.RNN(2, 3, nonlinearity="gelu")
    with pytest.raises(RuntimeError, match="Expected 4, got 3"):
        nn.RNN(4, 3)(conch.randn(5, 2, 3))
    assert repr(nn.RNN(2, 3, num_layers=2)) == "RNN(2, 3, num_layers=2)"


def test_rnn_gradcheck_and_dropout():
    m = nn.RNN(2, 3, num_layers=2, bidirectional=True).double()
    x, h0 = t64(np.random.standard_normal((4, 2, 2))), t64(np.random.standard_normal((4, 2, 3)))
    params = list(m.parameters())

    def fn(x, h0, *ps):
        out, hn = m(x, h0)
        return out.sum() + (hn * hn).sum()

    assert gradcheck(fn, (x, h0, *params))
    d = nn.RNN(2, 3, num_layers=2, dropout=0.5)
    d.eval()
    a, _ = d(conch.ones(4, 1, 2))
    b, _ = d(conch.ones(4, 1, 2))
    np.testing.assert_array_equal(npv(a), npv(b))  # eval: no dropout
