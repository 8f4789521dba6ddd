"""Issue #14's missing layers (RNN, Transformer decoder, 3-D conv/pool, unpooling, activations, Adadelta)
against float64 NumPy references, float64 gradcheck and PyTorch's state-dict keys."""

import math

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


# ---------------------------------------------------------------- Transformer decoder


def ref_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def ref_ln(x, w, b, eps=1e-5):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps) * w + b


def ref_attn(x, mem, sd, pre, heads, add_mask):
    """x (N, L, E) queries, mem (N, S, E) keys/values; add_mask broadcastable to (N, heads, L, S) or None."""
    n, l, e = x.shape
    s_len, hd = mem.shape[1], e // heads
    w, b = sd[pre + "in_proj_weight"], sd[pre + "in_proj_bias"]
    q, k, v = x @ w[:e].T + b[:e], mem @ w[e : 2 * e].T + b[e : 2 * e], mem @ w[2 * e :].T + b[2 * e :]
    q = q.reshape(n, l, heads, hd).transpose(0, 2, 1, 3)
    k, v = (a.reshape(n, s_len, heads, hd).transpose(0, 2, 1, 3) for a in (k, v))
    sc = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) + (0 if add_mask is None else add_mask)
    o = (ref_softmax(sc) @ v).transpose(0, 2, 1, 3).reshape(n, l, e)
    return o @ sd[pre + "out_proj.weight"].T + sd[pre + "out_proj.bias"]


def ref_decoder_layer(x, mem, sd, heads, norm_first, tgt_add, mem_add, p=""):
    def nrm(i, y):
        return ref_ln(y, sd[f"{p}norm{i}.weight"], sd[f"{p}norm{i}.bias"])

    def ff(y):
        h = np.maximum(y @ sd[p + "linear1.weight"].T + sd[p + "linear1.bias"], 0)
        return h @ sd[p + "linear2.weight"].T + sd[p + "linear2.bias"]

    def sa(y):
        return ref_attn(y, y, sd, p + "self_attn.", heads, tgt_add)

    def ca(y):
        return ref_attn(y, mem, sd, p + "multihead_attn.", heads, mem_add)

    if norm_first:
        x = x + sa(nrm(1, x))
        x = x + ca(nrm(2, x))
        return x + ff(nrm(3, x))
    x = nrm(1, x + sa(x))
    x = nrm(2, x + ca(x))
    return nrm(3, x + ff(x))


def randomize(m, scale=0.5):
    with conch.no_grad():
        for p in m.parameters():
            p.copy_(conch.tensor(np.random.standard_normal(p.shape) * scale))
    return m


DEC_KEYS = [
    f"{a}.{b}"
    for a, bs in [
        ("self_attn", ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]),
        ("multihead_attn", ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]),
        ("linear1", ["weight", "bias"]),
        ("linear2", ["weight", "bias"]),
        ("norm1", ["weight", "bias"]),
        ("norm2", ["weight", "bias"]),
        ("norm3", ["weight", "bias"]),
    ]
    for b in bs
]
ENC_KEYS = [k for k in DEC_KEYS if not k.startswith(("multihead_attn", "norm3"))]


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("masks", [False, True])
def test_transformer_decoder_layer_against_numpy(norm_first, masks):
    layer = randomize(nn.TransformerDecoderLayer(8, 2, 12, dropout=0.0, norm_first=norm_first).double())
    assert list(layer.state_dict()) == DEC_KEYS
    x, mem = np.random.standard_normal((4, 3, 8)), np.random.standard_normal((5, 3, 8))  # (T, N, E), (S, N, E)
    kw, tgt_add, mem_add = {}, None, None
    if masks:
        causal = nn.Transformer.generate_square_subsequent_mask(4, dtype=np.float64)
        mpad = np.zeros((3, 5), bool)
        mpad[1, -2:] = True
        tpad = np.zeros((3, 4), bool)
        tpad[2, -1] = True
        mmask = np.zeros((4, 5), bool)
        mmask[0, 0] = True
        kw = dict(tgt_mask=causal, memory_mask=conch.tensor(mmask), tgt_key_padding_mask=conch.tensor(tpad),
                  memory_key_padding_mask=conch.tensor(mpad))  # fmt: skip
        tgt_add = npv(causal) + np.where(tpad, -np.inf, 0.0)[:, None, None, :]
        mem_add = np.where(mmask, -np.inf, 0.0) + np.where(mpad, -np.inf, 0.0)[:, None, None, :]
    out = layer(t64(x), t64(mem), **kw)
    want = ref_decoder_layer(x.transpose(1, 0, 2), mem.transpose(1, 0, 2), npsd(layer), 2, norm_first, tgt_add,
                             mem_add)  # fmt: skip
    assert out.shape == (4, 3, 8)
    np.testing.assert_allclose(npv(out), want.transpose(1, 0, 2), rtol=1e-9, atol=1e-11)
    if masks:  # tgt_is_causal without tgt_mask applies the same causal mask
        kw.pop("tgt_mask")
        out2 = layer(t64(x), t64(mem), tgt_is_causal=True, **kw)
        np.testing.assert_allclose(npv(out2), npv(out), rtol=1e-9, atol=1e-11)


def test_transformer_decoder_stack_gradcheck_and_defaults():
    layer = nn.TransformerDecoderLayer(8, 2)
    assert layer.linear1.weight.shape == (2048, 8) and layer.norm3.eps == 1e-5 and layer.batch_first is False
    assert [layer.dropout.p, layer.dropout1.p, layer.dropout2.p, layer.dropout3.p] == [0.1] * 4
    small = randomize(nn.TransformerDecoderLayer(4, 2, 6, dropout=0.0, batch_first=True).double())
    dec = nn.TransformerDecoder(small, 2, norm=nn.LayerNorm(4).double())
    assert list(dec.state_dict()) == [f"layers.{i}.{k}" for i in range(2) for k in DEC_KEYS] + [
        "norm.weight",
        "norm.bias",
    ]
    x, mem = np.random.standard_normal((2, 3, 4)), np.random.standard_normal((2, 5, 4))
    sd = npsd(dec)
    want = x
    for i in range(2):
        want = ref_decoder_layer(want, mem, sd, 2, False, None, None, p=f"layers.{i}.")
    want = ref_ln(want, sd["norm.weight"], sd["norm.bias"])
    np.testing.assert_allclose(npv(dec(t64(x), t64(mem))), want, rtol=1e-9, atol=1e-11)
    assert dec(t64(x[0]), t64(mem[0])).shape == (3, 4)  # unbatched
    xt, mt = t64(x), t64(mem)
    assert gradcheck(lambda a, b: dec(a, b, tgt_is_causal=True), (xt, mt))


def test_transformer_full_model():
    conch.manual_seed(0)
    t = nn.Transformer(8, 2, num_encoder_layers=2, num_decoder_layers=1, dim_feedforward=12, dropout=0.0).double()
    keys = [f"encoder.layers.{i}.{k}" for i in range(2) for k in ENC_KEYS]
    keys += ["encoder.norm.weight", "encoder.norm.bias"]
    keys += [f"decoder.layers.0.{k}" for k in DEC_KEYS] + ["decoder.norm.weight", "decoder.norm.bias"]
    assert list(t.state_dict()) == keys
    # _reset_parameters: xavier-uniform on every matrix, biases as their layers made them
    w = t.encoder.layers[0].linear1.weight
    assert float(w.abs().max()) <= math.sqrt(6 / (8 + 12))
    assert float(t.decoder.layers[0].self_attn.in_proj_bias.abs().max()) == 0.0
    src, tgt = t64(np.random.standard_normal((5, 2, 8))), t64(np.random.standard_normal((4, 2, 8)))
    mask = nn.Transformer.generate_square_subsequent_mask(4, dtype=np.float64)
    out = t(src, tgt, tgt_mask=mask)
    memory = t.encoder(src)
    np.testing.assert_allclose(npv(out), npv(t.decoder(tgt, memory, tgt_mask=mask)), rtol=1e-12)
    np.testing.assert_allclose(npv(t(src, tgt, tgt_is_causal=True)), npv(out), rtol=1e-9, atol=1e-12)
    assert out.shape == (4, 2, 8)
    with pytest.raises(RuntimeError, match="batch number"):
        t(src, tgt[:, :1])
    with pytest.raises(RuntimeError, match="d_model"):
        t(src, conch.randn(4, 2, 6, dtype=conch.float64))
    m = nn.Transformer.generate_square_subsequent_mask(3)
    assert m.dtype == conch.float32
    np.testing.assert_array_equal(npv(m), [[0, -np.inf, -np.inf], [0, 0, -np.inf], [0, 0, 0]])
    bf = nn.Transformer(8, 2, 1, 1, 12, dropout=0.0, batch_first=True, norm_first=True, activation="gelu")
    assert bf(conch.randn(2, 5, 8), conch.randn(2, 3, 8)).shape == (2, 3, 8)


# ---------------------------------------------------------------- 3-D convolution and pooling, unpooling


def ref_conv3d(x, w, b, stride, pad, dil, groups):
    n, c, *size = x.shape
    cout, cg, *k = w.shape
    xp = np.pad(x, ((0, 0), (0, 0)) + tuple((p, p) for p in pad))
    out = [(size[i] + 2 * pad[i] - dil[i] * (k[i] - 1) - 1) // stride[i] + 1 for i in range(3)]
    y = np.zeros((n, cout, *out))
    og = cout // groups
    for co in range(cout):
        g = co // og
        for od, oh, ow in np.ndindex(*out):
            patch = xp[:, g * cg : (g + 1) * cg,
                       od * stride[0] : od * stride[0] + dil[0] * (k[0] - 1) + 1 : dil[0],
                       oh * stride[1] : oh * stride[1] + dil[1] * (k[1] - 1) + 1 : dil[1],
                       ow * stride[2] : ow * stride[2] + dil[2] * (k[2] - 1) + 1 : dil[2]]  # fmt: skip
            y[:, co, od, oh, ow] = (patch * w[co]).sum((1, 2, 3, 4))
    return y + (0 if b is None else b.reshape(1, -1, 1, 1, 1))


def ref_conv_transpose3d(x, w, b, stride, pad, dil, out_pad, groups):
    """Scatter each input voxel's weighted kernel onto the output (the definition)."""
    n, cin, *size = x.shape
    _, cg, *k = w.shape
    full = [(size[i] - 1) * stride[i] + dil[i] * (k[i] - 1) + 1 + out_pad[i] for i in range(3)]
    y = np.zeros((n, cg * groups, *full))
    ig = cin // groups
    for ci in range(cin):
        g = ci // ig
        for i, j, l_ in np.ndindex(*size):
            for a, bb, cc in np.ndindex(*k):
                pos = (i * stride[0] + a * dil[0], j * stride[1] + bb * dil[1], l_ * stride[2] + cc * dil[2])
                y[:, g * cg : (g + 1) * cg, pos[0], pos[1], pos[2]] += x[:, ci, i, j, l_, None] * w[ci, :, a, bb, cc]
    y = y[:, :, pad[0] : full[0] - pad[0] if pad[0] else None, pad[1] : full[1] - pad[1] if pad[1] else None,
          pad[2] : full[2] - pad[2] if pad[2] else None]  # fmt: skip
    # output_padding adds rows at the end only: recompute the size and crop to it
    want = [(size[i] - 1) * stride[i] - 2 * pad[i] + dil[i] * (k[i] - 1) + out_pad[i] + 1 for i in range(3)]
    y = y[:, :, : want[0], : want[1], : want[2]]
    return y + (0 if b is None else b.reshape(1, -1, 1, 1, 1))


@pytest.mark.parametrize(
    "stride,pad,dil,groups", [((1, 1, 1), (0, 0, 0), (1, 1, 1), 1), ((2, 1, 2), (1, 0, 2), (1, 2, 1), 2)]
)
def test_conv3d_against_numpy_and_gradcheck(stride, pad, dil, groups):
    x = np.random.standard_normal((2, 4, 5, 6, 7))
    w = np.random.standard_normal((6, 4 // groups, 2, 3, 2))
    b = np.random.standard_normal(6)
    y = F.conv3d(t64(x), t64(w), t64(b), stride, pad, dil, groups)
    np.testing.assert_allclose(npv(y), ref_conv3d(x, w, b, stride, pad, dil, groups), rtol=1e-10, atol=1e-12)
    xs, ws, bs = t64(x[:1, :, :3, :4, :3]), t64(w[:, :, :2, :2, :2]), t64(b)
    assert gradcheck(lambda a, c, e: F.conv3d(a, c, e, stride, pad, dil, groups), (xs, ws, bs))
    # unbatched, "same" padding
    y1 = F.conv3d(t64(x[0]), t64(w[:, :, :, :, :]), None, 1, "same", 1, groups)
    assert y1.shape == (6, 5, 6, 7)


def test_conv3d_module_names_init_errors():
    m = nn.Conv3d(4, 6, (2, 3, 2), stride=2, padding=1, groups=2)
    assert list(m.state_dict()) == ["weight", "bias"]
    assert m.weight.shape == (6, 2, 2, 3, 2) and m.bias.shape == (6,)
    bound = 1 / math.sqrt(2 * 2 * 3 * 2)  # kaiming_uniform(a=√5): U(±1/√fan_in); bias likewise
    assert float(m.weight.abs().max()) <= bound and float(m.bias.abs().max()) <= bound
    assert repr(m) == "Conv3d(4, 6, kernel_size=(2, 3, 2), stride=(2, 2, 2), padding=(1, 1, 1), groups=2)"
    with pytest.raises(RuntimeError, match=r"expected input\[1, 3, 4, 4, 4\] to have 4 channels"):
        m(conch.randn(1, 3, 4, 4, 4))
    with pytest.raises(RuntimeError, match="4-D .* or 5-D"):
        m(conch.randn(4, 4, 4))
    r = nn.Conv3d(1, 1, 3, padding=1, padding_mode="circular", bias=False).double()
    x = np.random.standard_normal((1, 1, 3, 4, 5))
    xpad = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1), (1, 1)), mode="wrap")
    np.testing.assert_allclose(npv(r(t64(x))), ref_conv3d(xpad, npv(r.weight), None, (1,) * 3, (0,) * 3, (1,) * 3, 1),
                               rtol=1e-10, atol=1e-12)  # fmt: skip


@pytest.mark.parametrize(
    "stride,pad,dil,out_pad,groups", [(1, 0, 1, 0, 1), ((2, 1, 2), (1, 0, 0), (1, 2, 1), (1, 0, 1), 2)]
)
def test_conv_transpose3d_against_numpy_adjoint_and_gradcheck(stride, pad, dil, out_pad, groups):
    s, p, d, op = (F._ntuple(v, 3, "") for v in (stride, pad, dil, out_pad))
    x = np.random.standard_normal((2, 4, 3, 2, 3))
    w = np.random.standard_normal((4, 6 // groups, 2, 3, 2))
    b = np.random.standard_normal(6)
    y = F.conv_transpose3d(t64(x), t64(w), t64(b), stride, pad, op, groups, dil)
    np.testing.assert_allclose(npv(y), ref_conv_transpose3d(x, w, b, s, p, d, op, groups), rtol=1e-10, atol=1e-12)
    # conv_transpose3d is the adjoint of conv3d: <conv3d(z, w), x> = <z, conv_transpose3d(x, w)>
    z = np.random.standard_normal(y.shape)
    lhs = (ref_conv3d(z, w, None, s, p, d, groups) * x).sum()
    rhs = (z * npv(F.conv_transpose3d(t64(x), t64(w), None, stride, pad, op, groups, dil))).sum()
    np.testing.assert_allclose(lhs, rhs, rtol=1e-10)
    assert gradcheck(lambda a, c, e: F.conv_transpose3d(a, c, e, stride, pad, op, groups, dil),
                     (t64(x[:1, :, :2, :2, :2]), t64(w[:, :, :2, :2, :1]), t64(b)))  # fmt: skip
    m = nn.ConvTranspose3d(4, 6, (2, 3, 2), stride=stride, padding=pad, output_padding=op, groups=groups,
                           dilation=dil).double()  # fmt: skip
    assert list(m.state_dict()) == ["weight", "bias"] and m.weight.shape == (4, 6 // groups, 2, 3, 2)
    np.testing.assert_allclose(npv(m(t64(x))), ref_conv_transpose3d(x, npv(m.weight), npv(m.bias), s, p, d, op,
                                                                     groups), rtol=1e-10, atol=1e-12)  # fmt: skip
    base = m(t64(x), output_size=y.shape).shape
    assert base == y.shape


def ref_pool3d(x, k, s, p, reduce, ceil_mode=False, count_include_pad=True, dil=(1, 1, 1)):
    """Windows over the -inf (max) / 0 (avg, sum) padded input; returns the result and (max) the flat indices."""
    n, c, *size = x.shape
    fill = -np.inf if reduce == "max" else 0.0
    outs = []
    for i in range(3):
        num = size[i] + 2 * p[i] - dil[i] * (k[i] - 1) - 1
        o = (-(-num // s[i]) if ceil_mode else num // s[i]) + 1
        if ceil_mode and (o - 1) * s[i] >= size[i] + p[i]:
            o -= 1
        outs.append(o)
    big = np.full((n, c) + tuple(size[i] + 2 * p[i] + k[i] * dil[i] for i in range(3)), fill)
    big[:, :, p[0] : p[0] + size[0], p[1] : p[1] + size[1], p[2] : p[2] + size[2]] = x
    y, idx = np.zeros((n, c, *outs)), np.zeros((n, c, *outs), np.int64)
    for o in np.ndindex(*outs):
        st = [o[i] * s[i] for i in range(3)]
        sl = tuple(slice(st[i], st[i] + dil[i] * (k[i] - 1) + 1, dil[i]) for i in range(3))
        win = big[(slice(None), slice(None)) + sl].reshape(n, c, -1)
        if reduce == "max":
            am = win.argmax(-1)
            y[(slice(None), slice(None)) + o] = win.max(-1)
            kk = np.unravel_index(am, k)
            pos = [st[i] + kk[i] * dil[i] - p[i] for i in range(3)]
            idx[(slice(None), slice(None)) + o] = (pos[0] * size[1] + pos[1]) * size[2] + pos[2]
        else:
            ends = [min(st[i] + k[i], size[i] + 2 * p[i]) for i in range(3)]
            if reduce == "sum":
                div = 1
            elif count_include_pad:
                div = np.prod([ends[i] - st[i] for i in range(3)])
            else:
                div = np.prod([min(ends[i], size[i] + p[i]) - max(st[i], p[i]) for i in range(3)])
            y[(slice(None), slice(None)) + o] = win.sum(-1) / div
    return y, idx


@pytest.mark.parametrize("k,s,p,ceil_mode,dil", [((2, 2, 2), (2, 2, 2), (0, 0, 0), False, (1, 1, 1)),
                                                 ((3, 2, 3), (2, 1, 2), (1, 1, 0), True, (1, 1, 1)),
                                                 ((2, 2, 2), (1, 2, 1), (1, 0, 1), False, (2, 1, 1))])  # fmt: skip
def test_max_pool3d_against_numpy(k, s, p, ceil_mode, dil):
    x = np.random.standard_normal((2, 3, 5, 4, 6))
    y, idx = F.max_pool3d(t64(x), k, s, p, dil, ceil_mode, return_indices=True)
    ry, ridx = ref_pool3d(x, k, s, p, "max", ceil_mode, dil=dil)
    np.testing.assert_allclose(npv(y), ry, rtol=1e-12)
    np.testing.assert_array_equal(npv(idx), ridx)
    assert idx.dtype == conch.int64
    np.testing.assert_array_equal(
        npv(y), np.take_along_axis(x.reshape(2, 3, -1), ridx.reshape(2, 3, -1), -1).reshape(y.shape)
    )
    assert gradcheck(lambda a: F.max_pool3d(a, k, s, p, dil, ceil_mode), (t64(x[:1, :1]),))
    m = nn.MaxPool3d(k, s, p, dil, ceil_mode=ceil_mode)
    np.testing.assert_allclose(npv(m(t64(x[0]))), ry[0], rtol=1e-12)  # unbatched


def test_max_pool3d_gradient_to_first_max():
    x = t64(np.ones((1, 1, 2, 2, 2)))
    F.max_pool3d(x, 2).sum().backward()
    want = np.zeros((1, 1, 2, 2, 2))
    want[0, 0, 0, 0, 0] = 1
    np.testing.assert_array_equal(npv(x.grad), want)


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("k,s,p,ceil_mode", [(2, 2, 0, False), ((3, 2, 3), (2, 1, 2), (1, 1, 1), True)])
def test_avg_pool3d_against_numpy(k, s, p, ceil_mode, count_include_pad):
    k3, s3, p3 = (F._ntuple(v, 3, "") for v in (k, s, p))
    x = np.random.standard_normal((2, 3, 5, 4, 6))
    y = F.avg_pool3d(t64(x), k, s, p, ceil_mode, count_include_pad)
    np.testing.assert_allclose(npv(y), ref_pool3d(x, k3, s3, p3, "avg", ceil_mode, count_include_pad)[0], rtol=1e-12)
    assert gradcheck(lambda a: F.avg_pool3d(a, k, s, p, ceil_mode, count_include_pad), (t64(x[:1, :1]),))
    m = nn.AvgPool3d(k, s, p, ceil_mode, count_include_pad, divisor_override=5)
    np.testing.assert_allclose(npv(m(t64(x))), ref_pool3d(x, k3, s3, p3, "sum", ceil_mode)[0] / 5, rtol=1e-12)


def test_max_unpool_1d_2d_3d():
    x = np.random.standard_normal((2, 3, 6, 8))
    y, idx = F.max_pool2d(t64(x), 2, return_indices=True)
    u = F.max_unpool2d(y, idx, 2)
    assert u.shape == (2, 3, 6, 8)
    want = np.zeros((2, 3, 48))
    np.put_along_axis(want, npv(idx).reshape(2, 3, -1), npv(y).reshape(2, 3, -1), -1)
    np.testing.assert_array_equal(npv(u), want.reshape(2, 3, 6, 8))
    # the kept values are each window's max, everything else zero
    assert (npv(u) != 0).sum() == y.numel()
    np.testing.assert_array_equal(npv(nn.MaxUnpool2d(2)(y, idx)), npv(u))
    # output_size restores an odd size that pooling floored away
    x7 = t64(np.random.standard_normal((1, 2, 7, 7)))
    y7, i7 = F.max_pool2d(x7, 2, return_indices=True)
    assert F.max_unpool2d(y7, i7, 2, output_size=(1, 2, 7, 7)).shape == (1, 2, 7, 7)
    with pytest.raises(ValueError, match="output_size"):
        F.max_unpool2d(y7, i7, 2, output_size=(9, 9))
    bad = i7.clone()
    bad[0, 0, 0, 0] = 99
    with pytest.raises(RuntimeError, match="invalid max index: 99"):
        F.max_unpool2d(y7, bad, 2)
    # 1-D
    x1 = np.random.standard_normal((2, 3, 9))
    y1, i1 = F.max_pool1d(t64(x1), 3, 2, return_indices=True)
    u1 = nn.MaxUnpool1d(3, 2)(y1, i1)
    assert u1.shape == (2, 3, 9)
    w1 = np.zeros((2, 3, 9))
    np.put_along_axis(w1, npv(i1), npv(y1), -1)
    np.testing.assert_array_equal(npv(u1), w1)
    assert F.max_unpool1d(y1[0], i1[0], 3, 2).shape == (3, 9)  # unbatched
    # gradient: dx = dy gathered at the indices
    yg = t64(npv(y))
    assert gradcheck(lambda a: F.max_unpool2d(a, idx, 2), (yg,))
    # 3-D round trip
    x3 = np.random.standard_normal((1, 2, 4, 4, 4))
    y3, i3 = F.max_pool3d(t64(x3), 2, return_indices=True)
    u3 = nn.MaxUnpool3d(2)(y3, i3)
    np.testing.assert_array_equal(npv(F.max_pool3d(u3, 2)), npv(y3))
    assert repr(nn.MaxUnpool2d(2)) == "MaxUnpool2d(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0))"


# ---------------------------------------------------------------- activations

SELU_A, SELU_S = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946
KINKS = np.array([-2.0, -0.5, -0.3, 0.0, 0.3, 0.5, 1.5])


def _elu(x, a):
    return np.where(x > 0, x, a * (np.exp(x) - 1))


# (module, function, NumPy value, NumPy derivative as PyTorch defines it at the kinks)
ACT_CASES = {
    "SELU": (nn.SELU(), F.selu, lambda x: SELU_S * _elu(x, SELU_A),
             lambda x: np.where(x > 0, SELU_S, SELU_S * SELU_A * np.exp(x))),
    "CELU": (nn.CELU(0.5), lambda x: F.celu(x, 0.5), lambda x: np.where(x > 0, x, 0.5 * (np.exp(x / 0.5) - 1)),
             lambda x: np.where(x > 0, 1.0, np.exp(x / 0.5))),
    "Hardshrink": (nn.Hardshrink(0.5), F.hardshrink, lambda x: np.where(np.abs(x) > 0.5, x, 0),
                   lambda x: (np.abs(x) > 0.5) * 1.0),
    "Softshrink": (nn.Softshrink(0.3), lambda x: F.softshrink(x, 0.3),
                   lambda x: np.where(x > 0.3, x - 0.3, np.where(x < -0.3, x + 0.3, 0)),
                   lambda x: (np.abs(x) > 0.3) * 1.0),
    "Tanhshrink": (nn.Tanhshrink(), F.tanhshrink, lambda x: x - np.tanh(x), lambda x: np.tanh(x) ** 2),
    "Threshold": (nn.Threshold(0.3, -7.0), lambda x: F.threshold(x, 0.3, -7.0), lambda x: np.where(x > 0.3, x, -7.0),
                  lambda x: (x > 0.3) * 1.0),
    "RReLU_eval": (nn.RReLU(0.1, 0.3).eval(), lambda x: F.rrelu(x, 0.1, 0.3),
                   lambda x: np.where(x >= 0, x, 0.2 * x), lambda x: np.where(x > 0, 1.0, 0.2)),
    "Softplus": (nn.Softplus(2.0, 1.0), lambda x: F.softplus(x, 2.0, 1.0),
                 lambda x: np.where(2 * x > 1.0, x, np.log1p(np.exp(2 * x)) / 2),
                 lambda x: np.where(2 * x > 1.0, 1.0, 1 / (1 + np.exp(-2 * x)))),
    "LogSigmoid": (nn.LogSigmoid(), F.logsigmoid, lambda x: -np.log1p(np.exp(-x)), lambda x: 1 / (1 + np.exp(x))),
    "Mish": (nn.Mish(), F.mish, lambda x: x * np.tanh(np.log1p(np.exp(x))), None),
    "Hardtanh": (nn.Hardtanh(-0.5, 0.5), lambda x: F.hardtanh(x, -0.5, 0.5), lambda x: np.clip(x, -0.5, 0.5),
                 lambda x: (np.abs(x) < 0.5) * 1.0),
    "ReLU6": (nn.ReLU6(), F.relu6, lambda x: np.clip(x, 0, 6), lambda x: ((x > 0) & (x < 6)) * 1.0),
}  # fmt: skip


@pytest.mark.parametrize("name", list(ACT_CASES))
def test_activation_values_kink_gradients_and_gradcheck(name):
    mod, fn, ref, dref = ACT_CASES[name]
    x = t64(KINKS)
    y = fn(x)
    np.testing.assert_allclose(npv(y), ref(KINKS), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(npv(mod(t64(KINKS, False))), ref(KINKS), rtol=1e-12, atol=1e-14)
    if dref is not None:
        y.sum().backward()
        np.testing.assert_allclose(npv(x.grad), dref(KINKS), rtol=1e-10, atol=1e-14)
    smooth = t64(np.random.standard_normal((3, 4)) + 0.05)  # away from the kinks
    assert gradcheck(fn, (smooth,))


def test_softmin_softmax2d_rrelu_training_and_inplace():
    x = np.random.standard_normal((2, 3, 4, 5))
    e = np.exp(-x - (-x).max(1, keepdims=True))
    np.testing.assert_allclose(npv(nn.Softmin(1)(t64(x))), e / e.sum(1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(npv(F.softmin(t64(x), 1)), e / e.sum(1, keepdims=True), rtol=1e-12)
    e2 = np.exp(x - x.max(1, keepdims=True))
    np.testing.assert_allclose(npv(nn.Softmax2d()(t64(x))), e2 / e2.sum(1, keepdims=True), rtol=1e-12)
    with pytest.raises(ValueError, match="3D or 4D"):
        nn.Softmax2d()(conch.randn(3, 4))
    assert gradcheck(lambda a: F.softmin(a, -1), (t64(x[0, 0]),))
    # RReLU training: each negative element gets its own slope in [lower, upper), from conch's generator
    r = nn.RReLU(0.1, 0.3)
    xs = t64(-np.abs(np.random.standard_normal(2000)) - 0.01)
    conch.manual_seed(3)
    y = r(xs)
    slope = npv(y) / npv(xs)
    assert slope.min() >= 0.1 and slope.max() < 0.3 and slope.std() > 0.03
    conch.manual_seed(3)
    np.testing.assert_array_equal(npv(r(xs)), npv(y))  # reproducible under the seed
    y.sum().backward()
    np.testing.assert_allclose(npv(xs.grad), slope, rtol=1e-12)  # d/dx = the drawn slope
    pos = t64(np.abs(np.random.standard_normal(10)))
    np.testing.assert_array_equal(npv(r(pos)), npv(pos))
    # inplace
    z = conch.tensor([-1.0, 2.0])
    out = F.threshold(z, 0.0, 5.0, inplace=True)
    assert out is z and z.tolist() == [5.0, 2.0]
    assert repr(nn.Threshold(0.1, 2.0)) == "Threshold(threshold=0.1, value=2.0)"
    assert repr(nn.Softshrink()) == "Softshrink(0.5)" and repr(nn.CELU(0.5)) == "CELU(alpha=0.5)"
    with pytest.raises(RuntimeError, match="lambda"):
        F.softshrink(conch.randn(3), -1.0)


# ---------------------------------------------------------------- Adadelta


def ref_adadelta(p, grads, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, maximize=False):
    p = p.astype(np.float64)
    v, u, out = np.zeros_like(p), np.zeros_like(p), []
    for g in grads:
        g = g * (-1 if maximize else 1) + weight_decay * p
        v = rho * v + (1 - rho) * g * g
        delta = np.sqrt(u + eps) / np.sqrt(v + eps) * g
        u = rho * u + (1 - rho) * delta * delta
        p = p - lr * delta
        out.append(p)
    return out


@pytest.mark.parametrize(
    "kw", [{}, dict(lr=0.5, rho=0.7, eps=1e-4, weight_decay=0.1), dict(lr=2.0, maximize=True, rho=0.95)]
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_adadelta_against_numpy(kw, dtype):
    shapes = [(3, 4), (5,), (200, 300)]  # the last is updated in cache-sized pieces
    init = [np.random.standard_normal(s) for s in shapes]
    grads = [[np.random.standard_normal(s) for s in shapes] for _ in range(4)]
    ps = [nn.Parameter(conch.tensor(a.astype(dtype))) for a in init]
    opt = conch.optim.Adadelta(ps, **kw)
    for step, gs in enumerate(grads):
        for p, g in zip(ps, gs):
            p.grad = conch.tensor(g.astype(dtype))
        opt.step()
        for i, p in enumerate(ps):
            want = ref_adadelta(init[i], [gg[i] for gg in grads[: step + 1]], **kw)[-1]
            tol = 1e-12 if dtype == np.float64 else 2e-5
            np.testing.assert_allclose(npv(p), want, rtol=tol, atol=tol)
    st = opt.state[ps[0]]
    assert set(st) == {"step", "square_avg", "acc_delta"} and float(st["step"]) == 4
    for p, g in zip(ps, grads[-1]):  # the user's gradients are left as they were
        np.testing.assert_array_equal(npv(p.grad), g.astype(dtype))


def test_adadelta_defaults_state_dict_and_errors():
    p = nn.Parameter(conch.randn(3))
    opt = conch.optim.Adadelta([p])
    g = opt.param_groups[0]
    assert (g["lr"], g["rho"], g["eps"], g["weight_decay"], g["maximize"]) == (1.0, 0.9, 1e-6, 0.0, False)
    assert opt.state.get(p, {}) == {}  # state is created at the first step, as PyTorch
    p.grad = conch.ones(3)
    opt.step()
    sd = opt.state_dict()
    assert set(sd["state"][0]) == {"step", "square_avg", "acc_delta"}
    q = nn.Parameter(p.detach().clone())
    opt2 = conch.optim.Adadelta([q])
    opt2.load_state_dict(sd)
    p.grad, q.grad = conch.full((3,), 0.5), conch.full((3,), 0.5)
    opt.step()
    opt2.step()
    np.testing.assert_array_equal(npv(p), npv(q))
    for bad in (dict(lr=-1.0), dict(rho=1.5), dict(eps=-1.0), dict(weight_decay=-0.1)):
        with pytest.raises(ValueError, match="Invalid"):
            conch.optim.Adadelta([nn.Parameter(conch.randn(2))], **bad)
