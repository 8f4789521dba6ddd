"""GroupNorm, Conv1d, LSTM/GRU, TransformerEncoder, activations, distances, interpolate against float64 NumPy."""

import math
from fractions import Fraction

import numpy as np
import pytest

import conch
import conch.nn as nn
import conch.nn.functional as F
from conch.autograd import gradcheck


def t64(a, grad=True):
    return conch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def npv(t):
    return t.detach().cpu().numpy()


def npsd(m):
    return {k: npv(v) for k, v in m.state_dict().items()}


def randomize(m, scale=0.5):
    """Overwrite every parameter with random values (so ones/zeros initialisers cannot hide a bug)."""
    with conch.no_grad():
        for p in m.parameters():
            p.copy_(conch.tensor(np.random.standard_normal(p.shape) * scale))
    return m


def sig(x):
    return 1 / (1 + np.exp(-x))


def ref_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


_erf = np.vectorize(math.erf)


def ref_gelu(x):
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


# ---------------------------------------------------------------- GroupNorm


def ref_group_norm(x, g, w=None, b=None, eps=1e-5):
    n, c = x.shape[:2]
    xr = x.reshape(n, g, -1)
    y = ((xr - xr.mean(-1, keepdims=True)) / np.sqrt(xr.var(-1, keepdims=True) + eps)).reshape(x.shape)
    shape = (1, c) + (1,) * (x.ndim - 2)
    if w is not None:
        y = y * w.reshape(shape)
    if b is not None:
        y = y + b.reshape(shape)
    return y


@pytest.mark.parametrize("shape", [(2, 6, 5), (2, 6, 3, 4), (3, 6), (1, 6, 2, 2, 2)])
@pytest.mark.parametrize("groups", [1, 2, 3, 6])
def test_group_norm_against_numpy(shape, groups):
    x = np.random.standard_normal(shape) * 2 + 1
    m = randomize(nn.GroupNorm(groups, 6).double())
    w, b = npv(m.weight), npv(m.bias)
    np.testing.assert_allclose(npv(m(t64(x))), ref_group_norm(x, groups, w, b), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(npv(F.group_norm(t64(x), groups)), ref_group_norm(x, groups), rtol=1e-10, atol=1e-12)
    out = F.group_norm(t64(x), groups, t64(w), t64(b), eps=0.3)
    np.testing.assert_allclose(npv(out), ref_group_norm(x, groups, w, b, eps=0.3), rtol=1e-10, atol=1e-12)


def test_group_norm_gradcheck_and_state():
    m = randomize(nn.GroupNorm(2, 4).double())
    x = t64(np.random.standard_normal((2, 4, 3)))
    gradcheck(lambda x, w, b: m(x), (x, m.weight, m.bias))
    gradcheck(lambda x: F.group_norm(x, 4), (t64(np.random.standard_normal((1, 4, 2, 2))),))
    d = nn.GroupNorm(3, 6)
    assert (d.num_groups, d.num_channels, d.eps, d.affine) == (3, 6, 1e-5, True)
    assert list(d.state_dict()) == ["weight", "bias"]
    np.testing.assert_array_equal(npv(d.weight), np.ones(6))
    np.testing.assert_array_equal(npv(d.bias), np.zeros(6))
    na = nn.GroupNorm(3, 6, eps=0.1, affine=False).double()
    assert list(na.state_dict()) == [] and na.weight is None and na.bias is None
    x = np.random.standard_normal((2, 6, 4))
    np.testing.assert_allclose(npv(na(t64(x))), ref_group_norm(x, 3, eps=0.1), rtol=1e-10, atol=1e-12)


def test_group_norm_errors():
    with pytest.raises(ValueError, match=r"num_channels \(6\) must be divisible by num_groups \(4\)"):
        nn.GroupNorm(4, 6)
    with pytest.raises(RuntimeError, match=r"6.*[\[(]2, 4, 3[\])]"):
        nn.GroupNorm(2, 6)(conch.randn(2, 4, 3))
    with pytest.raises(RuntimeError, match="divisible by num_groups"):
        F.group_norm(conch.randn(2, 6, 3), 4)
    with pytest.raises(RuntimeError, match=r"at least 2 dimensions|\(N, 6, \*\)"):
        nn.GroupNorm(2, 6)(conch.randn(6))


# ---------------------------------------------------------------- Conv1d


def ref_conv1d(x, w, b, stride=1, pad=(0, 0), dil=1, groups=1):
    n, c, l = x.shape
    co, cg, k = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), pad))
    lo = (l + pad[0] + pad[1] - dil * (k - 1) - 1) // stride + 1
    out = np.zeros((n, co, lo))
    per = co // groups
    for o in range(co):
        g = o // per
        for i in range(lo):
            patch = xp[:, g * cg : (g + 1) * cg, i * stride : i * stride + dil * (k - 1) + 1 : dil]
            out[:, o, i] = (patch * w[o]).sum(axis=(1, 2))
    return out + (0 if b is None else b[None, :, None])


CONV1D_ARGS = [(1, 0, 1, 1), (2, 1, 1, 1), (1, 2, 2, 1), (2, 1, 1, 2), (3, 0, 2, 4)]


@pytest.mark.parametrize("stride,pad,dil,groups", CONV1D_ARGS)
def test_conv1d_against_numpy_and_gradcheck(stride, pad, dil, groups):
    x = np.random.standard_normal((2, 4, 11))
    w = np.random.standard_normal((8, 4 // groups, 3))
    b = np.random.standard_normal(8)
    out = F.conv1d(t64(x), t64(w), t64(b), stride, pad, dil, groups)
    np.testing.assert_allclose(npv(out), ref_conv1d(x, w, b, stride, (pad, pad), dil, groups), rtol=1e-10, atol=1e-12)
    out = F.conv1d(t64(x), t64(w), None, stride=stride, padding=pad, dilation=dil, groups=groups)
    want = ref_conv1d(x, w, None, stride, (pad, pad), dil, groups)
    np.testing.assert_allclose(npv(out), want, rtol=1e-10, atol=1e-12)
    xs, ws, bs = t64(x[:1, :, :7]), t64(w[: 2 * groups]), t64(b[: 2 * groups])
    gradcheck(lambda x, w, b: F.conv1d(x, w, b, stride, pad, dil, groups), (xs, ws, bs))


def test_conv1d_module_same_valid_unbatched_and_init():
    conv = nn.Conv1d(3, 5, 4, padding="same").double()
    assert conv.weight.shape == (5, 3, 4) and conv.bias.shape == (5,)
    assert list(conv.state_dict()) == ["weight", "bias"]
    x = np.random.standard_normal((2, 3, 9))
    y = conv(t64(x))
    assert y.shape == (2, 5, 9)
    # an even kernel pads one more element on the right, as PyTorch
    want = ref_conv1d(x, npv(conv.weight), npv(conv.bias), pad=(1, 2))
    np.testing.assert_allclose(npv(y), want, rtol=1e-10, atol=1e-12)
    yd = nn.Conv1d(3, 5, 3, padding="same", dilation=2, bias=False).double()
    np.testing.assert_allclose(npv(yd(t64(x))), ref_conv1d(x, npv(yd.weight), None, pad=(2, 2), dil=2), rtol=1e-10)
    assert yd.bias is None and list(yd.state_dict()) == ["weight"]
    valid = nn.Conv1d(3, 5, 4, padding="valid").double()
    assert valid(t64(x)).shape == (2, 5, 6)
    un = conv(t64(x[0]))  # unbatched (C, L)
    assert un.shape == (5, 9)
    np.testing.assert_allclose(npv(un), want[0], rtol=1e-10, atol=1e-12)
    gradcheck(lambda x, w, b: conv(x), (t64(x[:1, :, :5]), conv.weight, conv.bias))
    c2 = nn.Conv1d(4, 6, 5, groups=2)
    bound = 1 / math.sqrt(2 * 5)  # fan_in = in_channels / groups * kernel_size
    assert bound * 0.8 < np.abs(npv(c2.weight)).max() <= bound
    assert np.abs(npv(c2.bias)).max() <= bound


NP_PAD = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


@pytest.mark.parametrize("mode", list(NP_PAD))
@pytest.mark.parametrize("padding", [2, "same"])
def test_conv1d_padding_modes(mode, padding):
    conv = nn.Conv1d(2, 3, 4, padding=padding, padding_mode=mode).double()
    x = np.random.standard_normal((2, 2, 7))
    widths = (1, 2) if padding == "same" else (2, 2)
    xp = np.pad(x, ((0, 0), (0, 0), widths), mode=NP_PAD[mode])
    want = ref_conv1d(xp, npv(conv.weight), npv(conv.bias))
    np.testing.assert_allclose(npv(conv(t64(x))), want, rtol=1e-10, atol=1e-12)
    gradcheck(lambda t: conv(t), (t64(x[:1]),))


def test_conv1d_errors():
    with pytest.raises(RuntimeError, match=r"expected input\[2, 4, 7\] to have 3 channels, but got 4"):
        nn.Conv1d(3, 4, 3)(conch.randn(2, 4, 7))
    with pytest.raises(RuntimeError, match=r"2D \(unbatched\) or 3D \(batched\) input to conv1d"):
        nn.Conv1d(3, 4, 3)(conch.randn(1, 3, 4, 7))
    with pytest.raises(RuntimeError, match=r"2D \(unbatched\) or 3D \(batched\) input to conv1d"):
        F.conv1d(conch.randn(7), conch.randn(4, 3, 3))
    with pytest.raises(RuntimeError, match="too small|greater than"):
        nn.Conv1d(3, 4, 5)(conch.randn(1, 3, 3))
    with pytest.raises(ValueError, match="padding='same' is not supported for strided convolutions"):
        nn.Conv1d(3, 4, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="Invalid padding string 'foo'"):
        nn.Conv1d(3, 4, 3, padding="foo")
    with pytest.raises(ValueError, match="in_channels must be divisible by groups"):
        nn.Conv1d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="out_channels must be divisible by groups"):
        nn.Conv1d(4, 3, 3, groups=2)
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        nn.Conv1d(3, 4, 3, padding_mode="foo")


# ---------------------------------------------------------------- LSTM / GRU


def ref_lstm_cell(x, h, c, wih, whh, bih, bhh):
    i, f, g, o = np.split(x @ wih.T + bih + h @ whh.T + bhh, 4, axis=-1)
    c = sig(f) * c + sig(i) * np.tanh(g)
    return sig(o) * np.tanh(c), c


def ref_gru_cell(x, h, wih, whh, bih, bhh):
    ir, iz, in_ = np.split(x @ wih.T + bih, 3, axis=-1)
    hr, hz, hn = np.split(h @ whh.T + bhh, 3, axis=-1)
    r, z = sig(ir + hr), sig(iz + hz)
    n = np.tanh(in_ + r * hn)
    return (1 - z) * n + z * h


def ref_rnn(kind, x, sd, num_layers, bidirectional, h0=None, c0=None):
    """x (L, N, H_in), time-major; sd the NumPy state dict. Returns output (L, N, D·H), h_n, c_n (D·layers, N, H)."""
    nd = 2 if bidirectional else 1
    seq, n = x.shape[:2]
    hid = sd["weight_hh_l0"].shape[1]
    h0 = np.zeros((num_layers * nd, n, hid)) if h0 is None else h0
    c0 = np.zeros((num_layers * nd, n, hid)) if c0 is None else c0
    hs, cs, inp = [], [], x
    for layer in range(num_layers):
        outs = []
        for d in range(nd):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            wih, whh = sd["weight_ih" + sfx], sd["weight_hh" + sfx]
            bih = sd.get("bias_ih" + sfx, np.zeros(wih.shape[0]))
            bhh = sd.get("bias_hh" + sfx, np.zeros(wih.shape[0]))
            h, c = h0[layer * nd + d], c0[layer * nd + d]
            out = np.zeros((seq, n, hid))
            for t in range(seq) if d == 0 else reversed(range(seq)):
                if kind == "LSTM":
                    h, c = ref_lstm_cell(inp[t], h, c, wih, whh, bih, bhh)
                else:
                    h = ref_gru_cell(inp[t], h, wih, whh, bih, bhh)
                out[t] = h
            outs.append(out)
            hs.append(h)
            cs.append(c)
        inp = np.concatenate(outs, axis=-1)
    return inp, np.stack(hs), np.stack(cs)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_rnn_single_layer_recurrence_by_hand(kind):
    """One layer, one direction: the gate equations written out step by step."""
    m = getattr(nn, kind)(3, 4).double()
    x = np.random.standard_normal((5, 2, 3))
    sd = npsd(m)
    wih, whh, bih, bhh = sd["weight_ih_l0"], sd["weight_hh_l0"], sd["bias_ih_l0"], sd["bias_hh_l0"]
    h, c, outs = np.zeros((2, 4)), np.zeros((2, 4)), []
    for t in range(5):
        gi, gh = x[t] @ wih.T + bih, h @ whh.T + bhh
        if kind == "LSTM":  # gates i, f, g, o
            i, f, o = sig(gi[:, :4] + gh[:, :4]), sig(gi[:, 4:8] + gh[:, 4:8]), sig(gi[:, 12:] + gh[:, 12:])
            c = f * c + i * np.tanh(gi[:, 8:12] + gh[:, 8:12])
            h = o * np.tanh(c)
        else:  # gates r, z, n; the reset gate scales W_hn h + b_hn
            r, z = sig(gi[:, :4] + gh[:, :4]), sig(gi[:, 4:8] + gh[:, 4:8])
            h = (1 - z) * np.tanh(gi[:, 8:] + r * gh[:, 8:]) + z * h
        outs.append(h)
    res = m(t64(x))
    out, hn = res[0], (res[1][0] if kind == "LSTM" else res[1])
    np.testing.assert_allclose(npv(out), np.stack(outs), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(npv(hn), h[None], rtol=1e-10, atol=1e-12)
    if kind == "LSTM":
        np.testing.assert_allclose(npv(res[1][1]), c[None], rtol=1e-10, atol=1e-12)
    # stepping one time step at a time with the carried state gives the same result
    state = None
    for t in range(5):
        step, state = m(t64(x[t : t + 1]), state)
        np.testing.assert_allclose(npv(step[0]), outs[t], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize(
    "num_layers,bidirectional,batch_first", [(1, False, False), (1, True, True), (2, False, True), (2, True, False)]
)
@pytest.mark.parametrize("with_hx", [False, True])
def test_rnn_against_numpy(kind, num_layers, bidirectional, batch_first, with_hx):
    m = getattr(nn, kind)(3, 4, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first).double()
    nd = 2 if bidirectional else 1
    x = np.random.standard_normal((5, 2, 3))  # (L, N, H_in)
    h0 = np.random.standard_normal((num_layers * nd, 2, 4)) if with_hx else None
    c0 = np.random.standard_normal((num_layers * nd, 2, 4)) if with_hx else None
    out_r, hn_r, cn_r = ref_rnn(kind, x, npsd(m), num_layers, bidirectional, h0, c0)
    xin = x.transpose(1, 0, 2) if batch_first else x
    if not with_hx:
        hx = None
    else:
        hx = (t64(h0), t64(c0)) if kind == "LSTM" else t64(h0)
    out, state = m(t64(xin), hx)
    hn, cn = state if kind == "LSTM" else (state, None)
    want = out_r.transpose(1, 0, 2) if batch_first else out_r
    assert out.shape == want.shape == ((2, 5, 4 * nd) if batch_first else (5, 2, 4 * nd))
    np.testing.assert_allclose(npv(out), want, rtol=1e-10, atol=1e-12)
    assert hn.shape == (num_layers * nd, 2, 4)  # h_n is never batch-first
    np.testing.assert_allclose(npv(hn), hn_r, rtol=1e-10, atol=1e-12)
    if kind == "LSTM":
        np.testing.assert_allclose(npv(cn), cn_r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_rnn_unbatched_and_no_bias(kind):
    m = getattr(nn, kind)(3, 4, num_layers=2, bidirectional=True, bias=False).double()
    assert all("bias" not in k for k in m.state_dict())
    x = np.random.standard_normal((5, 3))
    h0, c0 = np.random.standard_normal((4, 4)), np.random.standard_normal((4, 4))
    out_r, hn_r, cn_r = ref_rnn(kind, x[:, None], npsd(m), 2, True, h0[:, None], c0[:, None])
    hx = (t64(h0), t64(c0)) if kind == "LSTM" else t64(h0)
    out, state = m(t64(x), hx)
    hn = state[0] if kind == "LSTM" else state
    assert out.shape == (5, 8) and hn.shape == (4, 4)
    np.testing.assert_allclose(npv(out), out_r[:, 0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(npv(hn), hn_r[:, 0], rtol=1e-10, atol=1e-12)
    if kind == "LSTM":
        assert state[1].shape == (4, 4)
        np.testing.assert_allclose(npv(state[1]), cn_r[:, 0], rtol=1e-10, atol=1e-12)
    out0, _ = m(t64(x))  # hx defaults to zeros for unbatched input too
    np.testing.assert_allclose(npv(out0), ref_rnn(kind, x[:, None], npsd(m), 2, True)[0][:, 0], rtol=1e-10)


@pytest.mark.parametrize("kind,gates", [("LSTM", 4), ("GRU", 3)])
def test_rnn_parameter_names_shapes_and_init(kind, gates):
    m = getattr(nn, kind)(6, 25, num_layers=2, bidirectional=True)
    names = []
    for layer in range(2):
        for sfx in ("", "_reverse"):
            names += [f"{k}_l{layer}{sfx}" for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    assert [n for n, _ in m.named_parameters()] == names
    assert list(m.state_dict()) == names
    assert m.weight_ih_l0.shape == (gates * 25, 6) and m.weight_ih_l1_reverse.shape == (gates * 25, 50)
    assert m.weight_hh_l1.shape == (gates * 25, 25) and m.bias_hh_l0_reverse.shape == (gates * 25,)
    bound = 1 / math.sqrt(25)
    for n, p in m.named_parameters():
        a = npv(p)
        assert np.abs(a).max() <= bound and np.abs(a).max() > 0.8 * bound, n
        assert abs(a.mean()) < 0.3 * bound, n  # centred: U(-1/√H, 1/√H), biases included
    d = getattr(nn, kind)(2, 3)
    assert (d.input_size, d.hidden_size, d.num_layers, d.bias, d.batch_first, d.dropout, d.bidirectional) == (
        2,
        3,
        1,
        True,
        False,
        0.0,
        False,
    )


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_rnn_gradcheck(kind):
    m = getattr(nn, kind)(2, 2, bidirectional=True).double()
    x = t64(np.random.standard_normal((3, 1, 2)))
    h0 = t64(np.random.standard_normal((2, 1, 2)))
    if kind == "LSTM":
        c0 = t64(np.random.standard_normal((2, 1, 2)))
        gradcheck(lambda x, h, c, *ps: (lambda o, s: (o, s[0], s[1]))(*m(x, (h, c))), (x, h0, c0, *m.parameters()))
    else:
        gradcheck(lambda x, h, *ps: m(x, h), (x, h0, *m.parameters()))
    m2 = getattr(nn, kind)(2, 2, num_layers=2, batch_first=True).double()
    gradcheck(lambda x: m2(x)[0], (t64(np.random.standard_normal((1, 3, 2))),))


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_rnn_dropout_between_layers(kind):
    m = getattr(nn, kind)(3, 8, num_layers=2, dropout=0.5).double()
    x = np.random.standard_normal((4, 2, 3))
    m.eval()
    want = ref_rnn(kind, x, npsd(m), 2, False)[0]
    np.testing.assert_allclose(npv(m(t64(x))[0]), want, rtol=1e-10, atol=1e-12)
    m.train()
    a, b = npv(m(t64(x))[0]), npv(m(t64(x))[0])
    assert not np.allclose(a, want) and not np.allclose(a, b)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_rnn_errors(kind):
    cls = getattr(nn, kind)
    m = cls(4, 5)
    with pytest.raises(RuntimeError, match=r"input.size\(-1\) must be equal to input_size. Expected 4, got 6"):
        m(conch.randn(3, 2, 6))
    with pytest.raises(ValueError, match=rf"{kind}: Expected input to be 2D or 3D, got 4D"):
        m(conch.randn(3, 2, 4, 1))
    with pytest.raises(ValueError, match=r"dropout should be a number in range \[0, 1\]"):
        cls(4, 5, dropout=1.5)
    x = conch.randn(3, 2, 4)
    if kind == "LSTM":
        with pytest.raises(RuntimeError, match=r"Expected hidden\S* size \(1, 2, 5\), got [\[(]1, 3, 5[\])]"):
            m(x, (conch.zeros(1, 3, 5), conch.zeros(1, 3, 5)))
        with pytest.raises(RuntimeError, match=r"Expected hidden\S* size \(1, 2, 5\), got [\[(]1, 2, 4[\])]"):
            m(x, (conch.zeros(1, 2, 5), conch.zeros(1, 2, 4)))
        with pytest.raises(RuntimeError, match=r"(?i)unbatched.*2-D"):
            m(conch.randn(3, 4), (conch.zeros(1, 2, 5), conch.zeros(1, 2, 5)))
    else:
        with pytest.raises(RuntimeError, match=r"Expected hidden size \(1, 2, 5\), got [\[(]2, 2, 5[\])]"):
            m(x, conch.zeros(2, 2, 5))
        with pytest.raises(RuntimeError, match=r"(?i)unbatched.*2-D"):
            m(conch.randn(3, 4), conch.zeros(1, 2, 5))


# ---------------------------------------------------------------- TransformerEncoderLayer / TransformerEncoder


def ref_layer_norm(x, w, b, eps=1e-5):
    y = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
    return y * w + (0 if b is None else b)


def ref_mha(x, w_in, b_in, w_out, b_out, heads, add_mask):
    """x (N, L, E); add_mask broadcastable to (N, heads, L, L) (0 or -inf), or None."""
    n, l, e = x.shape
    hd = e // heads
    qkv = x @ w_in.T + (0 if b_in is None else b_in)
    q, k, v = (a.reshape(n, l, heads, hd).transpose(0, 2, 1, 3) for a in np.split(qkv, 3, axis=-1))
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd)
    if add_mask is not None:
        s = s + add_mask
    o = (ref_softmax(s) @ v).transpose(0, 2, 1, 3).reshape(n, l, e)
    return o @ w_out.T + (0 if b_out is None else b_out)


def ref_encoder_layer(x, sd, heads, norm_first, act, add_mask, prefix="", eps=1e-5):
    """x (N, L, E), batch-first; sd the NumPy state dict; act a NumPy function."""

    def p(k):
        return sd.get(prefix + k)

    def sa(y):
        return ref_mha(y, p("self_attn.in_proj_weight"), p("self_attn.in_proj_bias"), p("self_attn.out_proj.weight"),
                       p("self_attn.out_proj.bias"), heads, add_mask)  # fmt: skip

    def ff(y):
        h = act(y @ p("linear1.weight").T + (0 if p("linear1.bias") is None else p("linear1.bias")))
        return h @ p("linear2.weight").T + (0 if p("linear2.bias") is None else p("linear2.bias"))

    def n1(y):
        return ref_layer_norm(y, p("norm1.weight"), p("norm1.bias"), eps)

    def n2(y):
        return ref_layer_norm(y, p("norm2.weight"), p("norm2.bias"), eps)

    if norm_first:
        x = x + sa(n1(x))
        return x + ff(n2(x))
    x = n1(x + sa(x))
    return n2(x + ff(x))


ACTS = {"relu": lambda a: np.maximum(a, 0), "gelu": ref_gelu}


def make_masks(kind, n, l):
    """(conch src_mask, conch key padding mask, the additive NumPy mask broadcastable to (N, heads, L, L))."""
    causal = np.triu(np.ones((l, l), bool), 1)
    pad = np.zeros((n, l), bool)
    pad[0, -2:] = True  # padding at the end only: every query keeps at least key 0
    pad[-1, -1] = True
    if kind == "none":
        return None, None, None
    if kind == "causal_float":
        fm = np.where(causal, -np.inf, 0.0)
        return conch.tensor(fm), None, fm
    if kind == "causal_bool":
        return conch.tensor(causal), None, np.where(causal, -np.inf, 0.0)
    if kind == "padding":
        return None, conch.tensor(pad), np.where(pad, -np.inf, 0.0)[:, None, None, :]
    both = np.where(causal, -np.inf, 0.0) + np.where(pad, -np.inf, 0.0)[:, None, None, :]
    return conch.tensor(causal), conch.tensor(pad), both


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("masks", ["none", "causal_float", "causal_bool", "padding", "causal_and_padding"])
def test_transformer_encoder_layer_against_numpy(norm_first, activation, masks):
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation=activation, norm_first=norm_first).double()
    randomize(layer)
    x = np.random.standard_normal((5, 3, 8))  # (L, N, E): batch_first=False is the default
    src_mask, kpm, add = make_masks(masks, 3, 5)
    out = layer(t64(x), src_mask=src_mask, src_key_padding_mask=kpm)
    want = ref_encoder_layer(x.transpose(1, 0, 2), npsd(layer), 2, norm_first, ACTS[activation], add)
    assert out.shape == (5, 3, 8)
    np.testing.assert_allclose(npv(out), want.transpose(1, 0, 2), rtol=1e-9, atol=1e-11)
    if masks.startswith("causal"):  # is_causal is a hint that src_mask is the causal mask
        out = layer(t64(x), src_mask=src_mask, src_key_padding_mask=kpm, is_causal=True)
        np.testing.assert_allclose(npv(out), want.transpose(1, 0, 2), rtol=1e-9, atol=1e-11)


def test_transformer_encoder_layer_batch_first_unbatched_callable_activation_and_no_bias():
    layer = randomize(nn.TransformerEncoderLayer(8, 4, 12, dropout=0.0, activation="gelu", batch_first=True).double())
    x = np.random.standard_normal((2, 5, 8))
    want = ref_encoder_layer(x, npsd(layer), 4, False, ref_gelu, None)
    np.testing.assert_allclose(npv(layer(t64(x))), want, rtol=1e-9, atol=1e-11)
    un = layer(t64(x[1]))  # unbatched (L, E)
    assert un.shape == (5, 8)
    np.testing.assert_allclose(npv(un), want[1], rtol=1e-9, atol=1e-11)
    fn = nn.TransformerEncoderLayer(8, 4, 12, dropout=0.0, activation=F.gelu, batch_first=True).double()
    fn.load_state_dict(layer.state_dict())
    np.testing.assert_allclose(npv(fn(t64(x))), want, rtol=1e-9, atol=1e-11)
    nb = randomize(nn.TransformerEncoderLayer(8, 2, 12, dropout=0.0, bias=False, norm_first=True).double())
    assert list(nb.state_dict()) == [
        "self_attn.in_proj_weight",
        "self_attn.out_proj.weight",
        "linear1.weight",
        "linear2.weight",
        "norm1.weight",
        "norm2.weight",
    ]
    want = ref_encoder_layer(x, npsd(nb), 2, True, ACTS["relu"], None)
    np.testing.assert_allclose(npv(nb(t64(x.transpose(1, 0, 2)))), want.transpose(1, 0, 2), rtol=1e-9, atol=1e-11)


def test_transformer_encoder_layer_defaults_names_and_dropout():
    layer = nn.TransformerEncoderLayer(8, 2)
    assert layer.linear1.weight.shape == (2048, 8) and layer.linear2.weight.shape == (8, 2048)
    assert layer.norm1.eps == 1e-5 and layer.norm_first is False
    assert [layer.dropout.p, layer.dropout1.p, layer.dropout2.p] == [0.1, 0.1, 0.1]
    assert isinstance(layer.self_attn, nn.MultiheadAttention)
    assert [n for n, _ in layer.named_children()] == [
        "self_attn",
        "linear1",
        "dropout",
        "linear2",
        "norm1",
        "norm2",
        "dropout1",
        "dropout2",
    ]
    assert list(layer.state_dict()) == [
        "self_attn.in_proj_weight",
        "self_attn.in_proj_bias",
        "self_attn.out_proj.weight",
        "self_attn.out_proj.bias",
        "linear1.weight",
        "linear1.bias",
        "linear2.weight",
        "linear2.bias",
        "norm1.weight",
        "norm1.bias",
        "norm2.weight",
        "norm2.bias",
    ]
    d = randomize(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.5, layer_norm_eps=1e-3).double())
    assert d.norm2.eps == 1e-3
    x = np.random.standard_normal((4, 2, 8))
    want = ref_encoder_layer(x.transpose(1, 0, 2), npsd(d), 2, False, ACTS["relu"], None, eps=1e-3)
    d.eval()
    np.testing.assert_allclose(npv(d(t64(x))), want.transpose(1, 0, 2), rtol=1e-9, atol=1e-11)
    d.train()
    assert not np.allclose(npv(d(t64(x))), want.transpose(1, 0, 2))


@pytest.mark.parametrize("with_norm", [False, True])
def test_transformer_encoder_stack(with_norm):
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True).double()
    enc = nn.TransformerEncoder(layer, 3, norm=nn.LayerNorm(8).double() if with_norm else None)
    assert len(enc.layers) == 3 and enc.num_layers == 3
    assert all(enc.layers[i] is not layer for i in range(3))
    assert enc.layers[0].linear1.weight is not enc.layers[1].linear1.weight
    # deep copies: the same initial values, independent storage
    np.testing.assert_array_equal(npv(enc.layers[0].linear1.weight), npv(enc.layers[2].linear1.weight))
    randomize(enc)
    assert not np.allclose(npv(enc.layers[0].linear1.weight), npv(enc.layers[1].linear1.weight))
    names = list(enc.state_dict())
    assert names[0] == "layers.0.self_attn.in_proj_weight" and "layers.2.norm2.bias" in names
    assert (names[-2:] == ["norm.weight", "norm.bias"]) == with_norm and len(names) == 36 + 2 * with_norm
    x = np.random.standard_normal((2, 5, 8))
    src_mask, kpm, add = make_masks("causal_and_padding", 2, 5)
    sd, want = npsd(enc), x
    for i in range(3):
        want = ref_encoder_layer(want, sd, 2, False, ACTS["relu"], add, prefix=f"layers.{i}.")
    if with_norm:
        want = ref_layer_norm(want, sd["norm.weight"], sd["norm.bias"])
    out = enc(t64(x), mask=src_mask, src_key_padding_mask=kpm)
    np.testing.assert_allclose(npv(out), want, rtol=1e-9, atol=1e-11)
    out = enc(t64(x), src_mask, kpm, is_causal=True)
    np.testing.assert_allclose(npv(out), want, rtol=1e-9, atol=1e-11)


def test_transformer_gradcheck():
    layer = randomize(nn.TransformerEncoderLayer(4, 2, 6, dropout=0.0, activation="gelu", norm_first=True).double())
    x = t64(np.random.standard_normal((3, 1, 4)))
    mask = conch.tensor(np.triu(np.ones((3, 3), bool), 1))
    gradcheck(lambda x, *ps: layer(x, src_mask=mask), (x, *layer.parameters()))
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(4, 2, 6, dropout=0.0).double(), 2)
    randomize(enc)
    gradcheck(lambda x: enc(x), (t64(np.random.standard_normal((3, 2, 4))),))


def test_transformer_errors():
    with pytest.raises(RuntimeError, match="activation should be relu/gelu, not foo"):
        nn.TransformerEncoderLayer(8, 2, activation="foo")
    with pytest.raises(ValueError, match="divisible"):
        nn.TransformerEncoderLayer(8, 3)
    with pytest.raises(RuntimeError, match="embedding dimension of 8"):
        nn.TransformerEncoderLayer(8, 2, 16)(conch.randn(3, 2, 6))


# ---------------------------------------------------------------- activations


def ref_hardsigmoid(x):
    return np.clip(x + 3, 0, 6) / 6


ACT_CASES = [
    (nn.Hardswish, F.hardswish, lambda x: x * ref_hardsigmoid(x)),
    (nn.Hardsigmoid, F.hardsigmoid, ref_hardsigmoid),
    (nn.Softsign, F.softsign, lambda x: x / (1 + np.abs(x))),
    (nn.Hardtanh, F.hardtanh, lambda x: np.clip(x, -1, 1)),
    (lambda: nn.Hardtanh(-2.0, 0.5), lambda x: F.hardtanh(x, -2.0, 0.5), lambda x: np.clip(x, -2, 0.5)),
    (lambda: nn.Hardtanh(min_val=-0.5, max_val=2.0), None, lambda x: np.clip(x, -0.5, 2)),
    (nn.PReLU, lambda x: F.prelu(x, conch.tensor([0.25], dtype=conch.float64)), lambda x: np.where(x > 0, x, 0.25 * x)),
    (lambda: nn.PReLU(init=-0.75), None, lambda x: np.where(x > 0, x, -0.75 * x)),  # exact in float32,
]


@pytest.mark.parametrize("make,fn,ref", ACT_CASES)
def test_activations_against_numpy_and_gradcheck(make, fn, ref):
    x = np.linspace(-5, 5, 41) + 0.0123  # a grid that misses the kinks at 0, ±1, ±3 and the clip bounds
    x = np.concatenate([x, np.random.standard_normal(19) * 4]).reshape(2, 3, 10)
    m = make().double()
    np.testing.assert_allclose(npv(m(t64(x))), ref(x), rtol=1e-12, atol=1e-15)
    if fn is not None:
        np.testing.assert_allclose(npv(fn(t64(x))), ref(x), rtol=1e-12, atol=1e-15)
    gradcheck(lambda t: m(t), (t64(x[0]),))  # the grid stays 0.01 away from every kink
    assert m(t64(x[0, 0])).shape == (10,)  # any shape, 1-D included


def test_activation_gradients_closed_form():
    """Exact float64 derivatives (a float32 constant such as 1/6 would show up at 1e-8 here, below gradcheck's eye)."""
    x = np.linspace(-5, 5, 41) + 0.0123
    cases = [
        (F.hardsigmoid, np.where(np.abs(x) < 3, 1 / 6, 0.0)),
        (F.hardswish, np.where(x > 3, 1.0, np.where(x < -3, 0.0, (2 * x + 3) / 6))),
        (F.softsign, 1 / (1 + np.abs(x)) ** 2),
        (lambda t: F.hardtanh(t, -2.0, 0.5), ((x > -2) & (x < 0.5)).astype(float)),
        (lambda t: F.prelu(t, t64([0.3], grad=False)), np.where(x > 0, 1.0, 0.3)),
    ]
    for fn, want in cases:
        xt = t64(x)
        fn(xt).sum().backward()
        np.testing.assert_allclose(npv(xt.grad), want, rtol=1e-13, atol=1e-15)
    a, b = x[:20], x[20:40]
    xt = t64(x[:40])
    F.glu(xt).sum().backward()  # d/da = σ(b), d/db = a σ(b)(1 - σ(b))
    np.testing.assert_allclose(npv(xt.grad), np.concatenate([sig(b), a * sig(b) * (1 - sig(b))]), rtol=1e-12)


def test_prelu_channels_init_and_gradcheck():
    m = nn.PReLU(3).double()
    assert list(m.state_dict()) == ["weight"] and m.weight.shape == (3,) and m.num_parameters == 3
    np.testing.assert_array_equal(npv(m.weight), np.full(3, 0.25))
    randomize(m)
    a = npv(m.weight)
    for shape in [(2, 3), (2, 3, 4), (2, 3, 2, 2)]:
        x = np.random.standard_normal(shape) + 0.01
        w = a.reshape((1, 3) + (1,) * (len(shape) - 2))
        np.testing.assert_allclose(npv(m(t64(x))), np.where(x > 0, x, w * x), rtol=1e-12)
        np.testing.assert_allclose(npv(F.prelu(t64(x), t64(a))), np.where(x > 0, x, w * x), rtol=1e-12)
    x = t64(np.random.standard_normal((2, 3, 4)) + 0.01)
    gradcheck(lambda x, w: m(x), (x, m.weight))
    gradcheck(lambda x, w: F.prelu(x, w), (x, t64([0.1])))
    with pytest.raises(RuntimeError, match=r"(?i)mismatch of parameter numbers.*channel size"):
        m(conch.randn(2, 4))


@pytest.mark.parametrize("dim", [-1, 0, 1, 2])
def test_glu_against_numpy_and_gradcheck(dim):
    x = np.random.standard_normal((4, 6, 2))
    a, b = np.split(x, 2, axis=dim)
    np.testing.assert_allclose(npv(F.glu(t64(x), dim)), a * sig(b), rtol=1e-12)
    np.testing.assert_allclose(npv(nn.GLU(dim)(t64(x))), a * sig(b), rtol=1e-12)
    gradcheck(lambda t: F.glu(t, dim=dim), (t64(x),))


def test_glu_default_dim_and_odd_size():
    x = np.random.standard_normal((3, 4))
    np.testing.assert_allclose(npv(nn.GLU()(t64(x))), x[:, :2] * sig(x[:, 2:]), rtol=1e-12)
    np.testing.assert_allclose(npv(F.glu(t64(x))), x[:, :2] * sig(x[:, 2:]), rtol=1e-12)
    with pytest.raises(RuntimeError, match="Halving dimension must be even, but dimension 1 is size 5"):
        F.glu(conch.randn(2, 5))
    with pytest.raises(RuntimeError, match="Halving dimension must be even"):
        nn.GLU(0)(conch.randn(3, 4))


# ---------------------------------------------------------------- distances


def ref_cosine(x1, x2, dim=1, eps=1e-8):
    n1 = np.maximum(np.sqrt((x1 * x1).sum(dim, keepdims=True)), eps)
    n2 = np.maximum(np.sqrt((x2 * x2).sum(dim, keepdims=True)), eps)
    return ((x1 / n1) * (x2 / n2)).sum(dim)


@pytest.mark.parametrize("s1,s2,dim", [((4, 5), (4, 5), 1), ((2, 5, 3), (2, 5, 3), 1), ((3, 1, 5), (1, 4, 5), -1),
                                       ((6,), (6,), 0), ((2, 3, 4), (2, 3, 4), 0)])  # fmt: skip
def test_cosine_similarity_against_numpy_and_gradcheck(s1, s2, dim):
    x1, x2 = np.random.standard_normal(s1), np.random.standard_normal(s2)
    want = ref_cosine(x1, x2, dim)
    out = F.cosine_similarity(t64(x1), t64(x2), dim=dim)
    assert out.shape == want.shape
    np.testing.assert_allclose(npv(out), want, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(npv(nn.CosineSimilarity(dim=dim)(t64(x1), t64(x2))), want, rtol=1e-12, atol=1e-14)
    gradcheck(lambda a, b: F.cosine_similarity(a, b, dim), (t64(x1), t64(x2)))


def test_cosine_similarity_defaults_and_small_norms():
    x1, x2 = np.random.standard_normal((3, 4, 2)), np.random.standard_normal((3, 4, 2))
    np.testing.assert_allclose(npv(F.cosine_similarity(t64(x1), t64(x2))), ref_cosine(x1, x2, 1), rtol=1e-12)
    np.testing.assert_allclose(npv(nn.CosineSimilarity()(t64(x1), t64(x2))), ref_cosine(x1, x2, 1), rtol=1e-12)
    # each norm is clamped to eps on its own (as PyTorch): tiny but non-zero vectors still give the cosine
    a, b = np.array([[3e-5, 4e-5]]), np.array([[1e-5, 0.0]])
    np.testing.assert_allclose(npv(F.cosine_similarity(t64(a), t64(b))), [0.6], rtol=1e-12)
    a = np.array([[3e-9, 4e-9]])  # ||a|| = 5e-9 < eps = 1e-8
    np.testing.assert_allclose(npv(F.cosine_similarity(t64(a), t64([[1.0, 0.0]]))), [0.3], rtol=1e-10)
    np.testing.assert_allclose(npv(F.cosine_similarity(t64(a), t64([[1.0, 0.0]]), eps=1e-9)), [0.6], rtol=1e-10)
    z = F.cosine_similarity(conch.zeros(2, 3, dtype=conch.float64), conch.ones(2, 3, dtype=conch.float64))
    np.testing.assert_array_equal(npv(z), [0.0, 0.0])  # a zero vector: 0, not nan
    with pytest.raises(RuntimeError, match="broadcast"):  # as PyTorch and conch's own broadcasting error
        F.cosine_similarity(conch.randn(2, 3), conch.randn(3, 3))


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
@pytest.mark.parametrize("keepdim", [False, True])
def test_pairwise_distance_against_numpy_and_gradcheck(p, keepdim):
    x1, x2 = np.random.standard_normal((4, 5)), np.random.standard_normal((4, 5))
    want = (np.abs(x1 - x2 + 1e-6) ** p).sum(-1, keepdims=keepdim) ** (1 / p)
    out = F.pairwise_distance(t64(x1), t64(x2), p=p, keepdim=keepdim)
    assert out.shape == ((4, 1) if keepdim else (4,))
    np.testing.assert_allclose(npv(out), want, rtol=1e-12)
    gradcheck(lambda a, b: F.pairwise_distance(a, b, p, 1e-6, keepdim), (t64(x1[:2]), t64(x2[:2])))


def test_pairwise_distance_defaults_eps_and_shapes():
    x1, x2 = np.random.standard_normal((2, 3, 4)), np.random.standard_normal((1, 3, 4))
    want = np.sqrt(((x1 - x2 + 1e-6) ** 2).sum(-1))
    out = F.pairwise_distance(t64(x1), t64(x2))  # broadcast, reduce over the last dim
    assert out.shape == (2, 3)
    np.testing.assert_allclose(npv(out), want, rtol=1e-12)
    z = F.pairwise_distance(conch.zeros(2, 4, dtype=conch.float64), conch.zeros(2, 4, dtype=conch.float64))
    np.testing.assert_allclose(npv(z), [2e-6, 2e-6], rtol=1e-9)  # eps is added to the difference: √(4·eps²)
    z = F.pairwise_distance(conch.zeros(4, dtype=conch.float64), conch.zeros(4, dtype=conch.float64), eps=0.5)
    assert z.shape == () and abs(float(z.item()) - 1.0) < 1e-12
    with pytest.raises(RuntimeError, match="broadcast"):
        F.pairwise_distance(conch.randn(2, 3), conch.randn(3, 3))


# ---------------------------------------------------------------- interpolate / Upsample


def ref_nearest_index(n_in, n_out, scale_factor=None):
    """PyTorch's "nearest": src = ⌊dst · scale⌋ with scale = 1/scale_factor when given, else n_in/n_out (exact)."""
    scale = 1 / Fraction(scale_factor) if scale_factor is not None else Fraction(n_in, n_out)
    return np.array([min(int(d * scale), n_in - 1) for d in range(n_out)])


def ref_linear_matrix(n_in, n_out, align_corners, scale_factor=None):
    """(n_out, n_in) interpolation weights of one axis of PyTorch's "bilinear"."""
    d = np.arange(n_out, dtype=np.float64)
    if align_corners:
        src = d * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    else:
        scale = 1 / scale_factor if scale_factor is not None else n_in / n_out
        src = np.maximum((d + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = src - i0
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), i0), 1 - lam)
    np.add.at(m, (np.arange(n_out), i1), lam)
    return m


def _per_axis(v, k):
    return list(v) if isinstance(v, (tuple, list)) else [v] * k


def ref_interpolate(x, size=None, scale_factor=None, mode="nearest", align_corners=None):
    spatial = x.shape[2:]
    k = len(spatial)
    sfs = _per_axis(scale_factor, k) if scale_factor is not None else [None] * k
    outs = _per_axis(size, k) if size is not None else [int(math.floor(n * s)) for n, s in zip(spatial, sfs)]
    y = x
    for ax, (n_in, n_out, sf) in enumerate(zip(spatial, outs, sfs)):
        axis = 2 + ax
        if mode == "nearest":
            y = np.take(y, ref_nearest_index(n_in, n_out, sf), axis=axis)
        else:
            y = np.moveaxis(np.tensordot(y, ref_linear_matrix(n_in, n_out, align_corners, sf), ([axis], [1])), -1, axis)
    return y


INTERP_CASES = [
    ((2, 3, 5), {"scale_factor": 2}),
    ((2, 3, 5), {"scale_factor": 1.7}),  # 1/1.7 and 5/8 give different source indices
    ((2, 3, 5), {"size": 8}),
    ((2, 3, 7), {"size": 3}),
    ((2, 3, 8), {"scale_factor": 0.6}),
    ((1, 2, 4, 5), {"scale_factor": 2}),
    ((1, 2, 4, 5), {"scale_factor": (1.5, 0.7)}),
    ((1, 2, 4, 5), {"size": (6, 3)}),
    ((1, 2, 5, 4), {"size": 7}),
]


@pytest.mark.parametrize("shape,kw", INTERP_CASES)
def test_interpolate_nearest_against_numpy(shape, kw):
    x = np.random.standard_normal(shape)
    want = ref_interpolate(x, mode="nearest", **kw)
    out = F.interpolate(t64(x), **kw)
    assert out.shape == want.shape
    np.testing.assert_array_equal(npv(out), want)
    np.testing.assert_array_equal(npv(nn.Upsample(**kw)(t64(x))), want)
    np.testing.assert_array_equal(npv(F.interpolate(t64(x), mode="nearest", **kw)), want)


BILINEAR_CASES = [
    {"scale_factor": 2},
    {"scale_factor": 1.5},
    {"scale_factor": (1.7, 0.6)},
    {"size": (7, 3)},
    {"size": (2, 9)},
    {"size": 1},
    {"size": (4, 5)},
]


@pytest.mark.parametrize("kw", BILINEAR_CASES)
@pytest.mark.parametrize("align_corners", [False, True])
def test_interpolate_bilinear_against_numpy(kw, align_corners):
    x = np.random.standard_normal((2, 3, 4, 5))
    want = ref_interpolate(x, mode="bilinear", align_corners=align_corners, **kw)
    out = F.interpolate(t64(x), mode="bilinear", align_corners=align_corners, **kw)
    assert out.shape == want.shape
    np.testing.assert_allclose(npv(out), want, rtol=1e-12, atol=1e-14)
    up = nn.Upsample(mode="bilinear", align_corners=align_corners, **kw)
    np.testing.assert_allclose(npv(up(t64(x))), want, rtol=1e-12, atol=1e-14)


def test_interpolate_bilinear_default_align_corners_is_false():
    x = np.random.standard_normal((1, 2, 3, 4))
    want = ref_interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    np.testing.assert_allclose(npv(F.interpolate(t64(x), scale_factor=2, mode="bilinear")), want, rtol=1e-12)
    # a hand-computed row: [0, 1, 2] upsampled ×2 without aligned corners
    row = F.interpolate(t64(np.arange(3.0).reshape(1, 1, 1, 3)), size=(1, 6), mode="bilinear")
    np.testing.assert_allclose(npv(row).ravel(), [0, 0.25, 0.75, 1.25, 1.75, 2], rtol=1e-12)
    row = F.interpolate(t64(np.arange(3.0).reshape(1, 1, 1, 3)), size=(1, 5), mode="bilinear", align_corners=True)
    np.testing.assert_allclose(npv(row).ravel(), [0, 0.5, 1, 1.5, 2], rtol=1e-12)


@pytest.mark.parametrize(
    "shape,kw",
    [
        ((1, 2, 3), {"scale_factor": 1.7}),
        ((1, 1, 3, 2), {"size": (4, 3)}),
        ((1, 1, 3, 4), {"scale_factor": 1.5, "mode": "bilinear"}),
        ((1, 1, 3, 4), {"size": (2, 5), "mode": "bilinear", "align_corners": True}),
    ],
)
def test_interpolate_gradcheck(shape, kw):
    gradcheck(lambda t: F.interpolate(t, **kw), (t64(np.random.standard_normal(shape)),))


def test_upsample_module_attributes():
    up = nn.Upsample(scale_factor=2)
    assert (up.size, up.scale_factor, up.mode, up.align_corners) == (None, 2.0, "nearest", None)
    assert list(up.state_dict()) == [] and list(up.parameters()) == []
    up = nn.Upsample(size=(3, 4), mode="bilinear", align_corners=True)
    assert (up.size, up.mode, up.align_corners) == ((3, 4), "bilinear", True)


def test_interpolate_errors():
    x = conch.randn(1, 1, 4, 4)
    with pytest.raises(ValueError, match="size or scale_factor"):
        F.interpolate(x, size=3, scale_factor=2)
    with pytest.raises(ValueError, match="either size or scale_factor should be defined"):
        F.interpolate(x)
    with pytest.raises(ValueError, match="either size or scale_factor should be defined"):
        nn.Upsample()(x)
    with pytest.raises((ValueError, NotImplementedError), match="foo"):
        F.interpolate(x, scale_factor=2, mode="foo")
    with pytest.raises((ValueError, NotImplementedError), match="foo"):
        nn.Upsample(scale_factor=2, mode="foo")(x)
    with pytest.raises((ValueError, NotImplementedError), match="bilinear"):  # PyTorch: NotImplementedError
        F.interpolate(conch.randn(1, 1, 4), scale_factor=2, mode="bilinear")
    with pytest.raises(ValueError, match="align_corners option can only be set with the interpolating modes"):
        F.interpolate(x, scale_factor=2, align_corners=True)
    with pytest.raises((ValueError, NotImplementedError), match=r"got 1D|\(4,\)"):
        F.interpolate(conch.randn(4), scale_factor=2)
    with pytest.raises(ValueError, match=r"\(2, 3, 4\)"):  # one size per spatial dim
        F.interpolate(x, size=(2, 3, 4))
    with pytest.raises(ValueError, match=r"\(2, 2, 2\)"):
        F.interpolate(x, scale_factor=(2, 2, 2))


# ---------------------------------------------------------------- ConvTranspose2d


def ref_conv_transpose2d(x, w, b, stride, padding, output_padding, groups, dilation):
    """Scatter each input pixel's weighted kernel onto the output (the definition), then crop the padding."""
    n, cin, h, wd = x.shape
    _, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (oph, opw), (dh, dw) = stride, padding, output_padding, dilation
    full_h, full_w = (h - 1) * sh + dh * (kh - 1) + 1 + oph, (wd - 1) * sw + dw * (kw - 1) + 1 + opw
    out = np.zeros((n, cg * groups, full_h, full_w))
    per = cin // groups
    for c in range(cin):
        g = c // per
        for i in range(h):
            for j in range(wd):
                for a in range(kh):
                    for bb in range(kw):
                        out[:, g * cg : (g + 1) * cg, i * sh + a * dh, j * sw + bb * dw] += (
                            x[:, c, i, j, None] * w[c, :, a, bb]
                        )
    out = out[:, :, ph : full_h - ph, pw : full_w - pw]
    return out + (0 if b is None else b.reshape(1, -1, 1, 1))


@pytest.mark.parametrize(
    "stride,padding,output_padding,groups,dilation",
    [((1, 1), (0, 0), (0, 0), 1, (1, 1)), ((2, 2), (1, 1), (1, 1), 1, (1, 1)), ((2, 3), (1, 0), (1, 2), 2, (1, 1)),
     ((1, 2), (2, 1), (0, 1), 1, (2, 2))],
)  # fmt: skip
def test_conv_transpose2d_against_numpy_and_gradcheck(stride, padding, output_padding, groups, dilation):
    rng = np.random.default_rng(5)
    x, w, b = rng.standard_normal((2, 4, 3, 4)), rng.standard_normal((4, 6 // groups, 3, 2)), rng.standard_normal(6)
    out = F.conv_transpose2d(t64(x), t64(w), t64(b), stride, padding, output_padding, groups, dilation)
    want = ref_conv_transpose2d(x, w, b, stride, padding, output_padding, groups, dilation)
    assert out.shape == want.shape
    np.testing.assert_allclose(npv(out), want, rtol=1e-12, atol=1e-12)
    gradcheck(lambda x, w, b: F.conv_transpose2d(x, w, b, stride, padding, output_padding, groups, dilation),
              (t64(x[:1, :, :2, :3]), t64(w), t64(b)))  # fmt: skip


def test_conv_transpose2d_module_output_size_and_errors():
    up = nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1).double()
    assert up.weight.shape == (4, 3, 3, 3) and up.bias.shape == (3,)
    x = t64(np.random.standard_normal((1, 4, 5, 5)), grad=False)
    assert up(x).shape == (1, 3, 9, 9) and up(x, output_size=(10, 10)).shape == (1, 3, 10, 10)
    with pytest.raises(ValueError, match="output size"):
        up(x, output_size=(12, 12))
    with pytest.raises(RuntimeError, match="to have 4 channels, but got 3"):
        up(t64(np.zeros((1, 3, 5, 5)), grad=False))
    with pytest.raises(ValueError, match="output padding"):
        F.conv_transpose2d(x, up.weight, None, stride=1, output_padding=1)
    with pytest.raises(ValueError, match="padding_mode='zeros'"):
        nn.ConvTranspose2d(4, 3, 3, padding_mode="reflect")


# ---------------------------------------------------------------- 1-D pooling, InstanceNorm, channel dropout


def ref_pool1d(x, k, s, p, op, pad_value, count_include_pad=True):
    """Sliding windows over the last dim of (N, C, L) with ``pad_value`` padding; ``op`` reduces each window."""
    n, c, length = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (p, p)), constant_values=pad_value)
    out_len = (length + 2 * p - k) // s + 1
    out = np.empty((n, c, out_len))
    for i in range(out_len):
        win = xp[:, :, i * s : i * s + k]
        if op == "max":
            out[:, :, i] = win.max(-1)
        else:
            real = min(i * s + k, length + p) - max(i * s, p)  # the window's elements inside the input
            out[:, :, i] = win.sum(-1) / (k if count_include_pad else real)
    return out


@pytest.mark.parametrize("k,s,p", [(3, 1, 0), (3, 2, 1), (4, 3, 2), (2, 2, 0)])
def test_pool1d_against_numpy_and_gradcheck(k, s, p):
    x = np.random.default_rng(k + s + p).standard_normal((2, 3, 11))
    np.testing.assert_allclose(npv(F.max_pool1d(t64(x), k, s, p)), ref_pool1d(x, k, s, p, "max", -np.inf))
    np.testing.assert_allclose(npv(nn.AvgPool1d(k, s, p)(t64(x))), ref_pool1d(x, k, s, p, "avg", 0.0), rtol=1e-12)
    np.testing.assert_allclose(npv(F.avg_pool1d(t64(x), k, s, p, count_include_pad=False)),
                               ref_pool1d(x, k, s, p, "avg", 0.0, count_include_pad=False), rtol=1e-12)  # fmt: skip
    out, idx = nn.MaxPool1d(k, s, p, return_indices=True)(t64(x))
    np.testing.assert_array_equal(np.take_along_axis(x, npv(idx), -1), npv(out))  # indices index L
    gradcheck(lambda t: F.max_pool1d(t, k, s, p), (t64(x[:1]),))
    gradcheck(lambda t: F.avg_pool1d(t, k, s, p), (t64(x[:1]),))


@pytest.mark.parametrize("length,out_len", [(11, 4), (8, 8), (5, 7), (9, 1)])
def test_adaptive_avg_pool1d_windows(length, out_len):
    x = np.random.default_rng(length).standard_normal((2, 3, length))
    want = np.stack(
        [x[..., (i * length) // out_len : -(-(i + 1) * length // out_len)].mean(-1) for i in range(out_len)], -1
    )
    np.testing.assert_allclose(npv(nn.AdaptiveAvgPool1d(out_len)(t64(x))), want, rtol=1e-12)
    gradcheck(lambda t: F.adaptive_avg_pool1d(t, out_len), (t64(x[:1]),))


def test_instance_norm_statistics_running_stats_and_gradcheck():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 4, 5)) * 2 + 1
    m = nn.InstanceNorm2d(3, affine=True, track_running_stats=True).double()
    randomize(m)
    rm0, rv0 = npv(m.running_mean).copy(), npv(m.running_var).copy()
    flat = x.reshape(2, 3, -1)
    mu, var = flat.mean(-1, keepdims=True), flat.var(-1, keepdims=True)
    w, b = npv(m.weight)[:, None, None], npv(m.bias)[:, None, None]
    want = ((flat - mu) / np.sqrt(var + 1e-5)).reshape(x.shape) * w + b
    np.testing.assert_allclose(npv(m(t64(x))), want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(npv(m.running_mean), 0.9 * rm0 + 0.1 * flat.mean(-1).mean(0), rtol=1e-12)
    np.testing.assert_allclose(npv(m.running_var), 0.9 * rv0 + 0.1 * flat.var(-1, ddof=1).mean(0), rtol=1e-12)
    m.eval()  # eval normalises with the running statistics
    rm, rv = npv(m.running_mean)[:, None, None], npv(m.running_var)[:, None, None]
    want = (x - rm) / np.sqrt(rv + 1e-5) * npv(m.weight)[:, None, None] + npv(m.bias)[:, None, None]
    np.testing.assert_allclose(npv(m(t64(x))), want, rtol=1e-10, atol=1e-12)
    plain = nn.InstanceNorm1d(3).double()
    assert plain.weight is None and plain.running_mean is None
    assert plain(t64(x[0, :, 0])).shape == (3, 5)  # unbatched (C, L)
    gradcheck(lambda t: plain(t), (t64(x[:1, :, 0]),))
    with pytest.raises(ValueError, match="expected 2D or 3D input"):
        plain(t64(x))


def test_channel_dropout_zeros_whole_channels():
    x = np.random.default_rng(9).standard_normal((4, 6, 3, 5)) + 5  # no zeros in the input
    conch.manual_seed(0)
    y = npv(nn.Dropout2d(0.5)(t64(x, grad=False)))
    ratio = (y / x).reshape(4, 6, -1)
    assert np.allclose(ratio.min(-1), ratio.max(-1))  # one decision per (sample, channel)
    assert set(np.round(ratio[..., 0].ravel(), 12)) == {0.0, 2.0}
    conch.manual_seed(0)
    np.testing.assert_array_equal(npv(F.dropout2d(t64(x, grad=False), 0.5)), y)  # the same seed, the same mask
    d1 = nn.Dropout1d(0.3)
    conch.manual_seed(1)
    r1 = (npv(d1(t64(x[:, :, 0], grad=False))) / x[:, :, 0]).round(12)
    assert np.allclose(r1.min(-1), r1.max(-1)) and set(r1[:, :, 0].ravel()) <= {0.0, round(1 / 0.7, 12)}
    d1.eval()
    np.testing.assert_array_equal(npv(d1(t64(x[:, :, 0], grad=False))), x[:, :, 0])
    t = t64(x[:1, :2, :1, :2])
    conch.manual_seed(2)
    t2 = F.dropout2d(t, 0.4)
    t2.sum().backward()
    np.testing.assert_allclose(npv(t.grad), npv(t2) / x[:1, :2, :1, :2])  # the gradient is the mask / (1-p)
    with pytest.warns(UserWarning, match="3D input to dropout2d"):
        F.dropout2d(t64(x[0], grad=False), 0.5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        F.dropout1d(t64(x[0, :, 0], grad=False), 1.5)
    with pytest.raises(RuntimeError, match="dropout1d"):
        F.dropout1d(t64(x, grad=False), 0.5)


# ---------------------------------------------------------------- unfold / fold


def ref_unfold(x, k, d, p, s):
    """Blocks by explicit indexing: column (c, i, j) of block (r, q) is x_pad[c, r·sh + i·dh, q·sw + j·dw]."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])))
    oh, ow = ((h + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1, (w + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1)
    out = np.empty((n, c, k[0], k[1], oh, ow))
    for i in range(k[0]):
        for j in range(k[1]):
            out[:, :, i, j] = xp[:, :, i * d[0] : i * d[0] + s[0] * (oh - 1) + 1 : s[0],
                                 j * d[1] : j * d[1] + s[1] * (ow - 1) + 1 : s[1]]  # fmt: skip
    return out.reshape(n, c * k[0] * k[1], oh * ow)


@pytest.mark.parametrize(
    "k,d,p,s", [((3, 3), (1, 1), (0, 0), (1, 1)), ((2, 3), (2, 1), (1, 1), (2, 1)), ((2, 2), (1, 1), (0, 0), (2, 2))]
)
def test_unfold_fold_against_numpy_adjoint_and_gradcheck(k, d, p, s):
    rng = np.random.default_rng(sum(k) + sum(s))
    x = rng.standard_normal((2, 3, 7, 6))
    cols = F.unfold(t64(x), k, d, p, s)
    np.testing.assert_allclose(npv(cols), ref_unfold(x, k, d, p, s))
    y = rng.standard_normal(cols.shape)
    # fold is unfold's adjoint: <unfold(x), y> = <x, fold(y)>
    folded = npv(nn.Fold((7, 6), k, d, p, s)(t64(y, grad=False)))
    np.testing.assert_allclose((ref_unfold(x, k, d, p, s) * y).sum(), (x * folded).sum(), rtol=1e-12)
    gradcheck(lambda t: nn.Unfold(k, d, p, s)(t), (t64(x[:1, :2]),))
    gradcheck(lambda t: F.fold(t, (7, 6), k, d, p, s), (t64(y[:1, : cols.shape[1] // 3 * 2]),))
    with pytest.raises(RuntimeError, match="fold: expected input of size"):
        F.fold(t64(y[:, :, :-1], grad=False), (7, 6), k, d, p, s)


# ---------------------------------------------------------------- packed sequences


def test_pack_pad_round_trip_and_layout():
    from conch.nn.utils.rnn import pack_padded_sequence, pack_sequence, pad_packed_sequence, pad_sequence

    rng = np.random.default_rng(12)
    seqs = [rng.standard_normal((n, 2)) for n in (3, 5, 1)]
    padded = pad_sequence([t64(s) for s in seqs], batch_first=True, padding_value=-7.0)
    assert padded.shape == (3, 5, 2) and npv(padded)[2, 1:].tolist() == [[-7.0, -7.0]] * 4
    packed = pack_padded_sequence(padded, [3, 5, 1], batch_first=True, enforce_sorted=False)
    assert packed.batch_sizes.tolist() == [3, 2, 2, 1, 1]  # sequences still running at each step
    # time-major, longest first: step 0 of (5, 3, 1)-long sequences, then step 1 of the two longer ones...
    want = np.concatenate(
        [np.stack([s[t] for s in sorted(seqs, key=len, reverse=True) if len(s) > t]) for t in range(5)]
    )
    np.testing.assert_array_equal(npv(packed.data), want)
    back, lengths = pad_packed_sequence(packed, batch_first=True, padding_value=-7.0)
    np.testing.assert_array_equal(npv(back), npv(padded))
    assert lengths.tolist() == [3, 5, 1]
    gradcheck(lambda t: pack_padded_sequence(t, [3, 5, 1], batch_first=True, enforce_sorted=False).data,
              (t64(npv(padded)),))  # fmt: skip
    with pytest.raises(RuntimeError, match="sorted in decreasing order"):
        pack_sequence([t64(s) for s in seqs])
    with pytest.raises(ValueError, match="total_length"):
        pad_packed_sequence(packed, total_length=3)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_packed_rnn_equals_running_each_sequence_alone(kind, bidirectional):
    """The reference: each sequence through the same module on its own, unpadded."""
    from conch.nn.utils.rnn import pack_sequence, pad_packed_sequence

    rng = np.random.default_rng(13)
    seqs = [rng.standard_normal((n, 3)) for n in (2, 4, 3)]
    rnn = getattr(nn, kind)(3, 4, num_layers=2, bidirectional=bidirectional).double()
    out, h = rnn(pack_sequence([t64(s) for s in seqs], enforce_sorted=False))
    padded, lengths = pad_packed_sequence(out)
    h_n = h[0] if kind == "LSTM" else h
    for b, s in enumerate(seqs):
        alone, h_alone = rnn(t64(s, grad=False))  # unbatched (L, H_in)
        h_alone = h_alone[0] if kind == "LSTM" else h_alone
        np.testing.assert_allclose(npv(padded)[: len(s), b], npv(alone), rtol=1e-10, atol=1e-12)
        assert np.all(npv(padded)[len(s) :, b] == 0)
        np.testing.assert_allclose(npv(h_n)[:, b], npv(h_alone), rtol=1e-10, atol=1e-12)
    assert lengths.tolist() == [2, 4, 3]
