"""conch.nn layers against float64 NumPy references, with gradchecks, train/eval behaviour and shape errors."""

import math

import numpy as np
import pytest

import conch
import conch.nn as nn
import conch.nn.functional as F
from conch.autograd import gradcheck, gradgradcheck


def t64(a, grad=True):
    return conch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def npv(t):
    return t.detach().cpu().numpy()


# ---------------------------------------------------------------- NumPy references


def ref_conv2d(x, w, b, stride, pad, dil, groups=1):
    n, c, h, wd = x.shape
    co, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    oh = (h + 2 * pad[0] - dil[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + 2 * pad[1] - dil[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((n, co, oh, ow))
    per = co // groups
    for o in range(co):
        g = o // per
        for i in range(oh):
            for j in range(ow):
                patch = xp[
                    :,
                    g * cg : (g + 1) * cg,
                    i * stride[0] : i * stride[0] + dil[0] * (kh - 1) + 1 : dil[0],
                    j * stride[1] : j * stride[1] + dil[1] * (kw - 1) + 1 : dil[1],
                ]
                out[:, o, i, j] = (patch * w[o]).sum(axis=(1, 2, 3))
    return out + (0 if b is None else b[None, :, None, None])


def ref_pool(x, k, s, p, reduce, pad_value):
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=pad_value)
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = reduce(xp[:, :, i * s : i * s + k, j * s : j * s + k], axis=(2, 3))
    return out


def ref_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


# ---------------------------------------------------------------- Linear


def test_linear_forward_backward_against_numpy():
    m = nn.Linear(5, 3).double()
    x = np.random.standard_normal((2, 4, 5))
    y = m(t64(x))
    w, b = npv(m.weight), npv(m.bias)
    np.testing.assert_allclose(npv(y), x @ w.T + b, rtol=1e-12)
    g = np.random.standard_normal(y.shape)
    y.backward(conch.tensor(g))
    np.testing.assert_allclose(npv(m.weight.grad), g.reshape(-1, 3).T @ x.reshape(-1, 5), rtol=1e-10)
    np.testing.assert_allclose(npv(m.bias.grad), g.reshape(-1, 3).sum(0), rtol=1e-10)


def test_linear_default_init_bounds_and_shapes():
    m = nn.Linear(50, 40)
    assert m.weight.shape == (40, 50) and m.bias.shape == (40,)
    bound = 1 / math.sqrt(50)  # kaiming_uniform(a=√5) gives U(-1/√fan_in, 1/√fan_in)
    w = npv(m.weight)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.1 * bound
    assert np.abs(npv(m.bias)).max() <= bound
    assert nn.Linear(3, 2, bias=False).bias is None


@pytest.mark.parametrize("act", ["relu", "gelu", "gelu_tanh", "silu", "tanh", "sigmoid"])
def test_linear_activation_and_gradcheck(act):
    m = nn.Linear(4, 3, activation=act).double()
    x = t64(np.random.standard_normal((5, 4)))
    z = npv(x) @ npv(m.weight).T + npv(m.bias)
    from scipy.special import erf

    ref = {
        "relu": np.maximum(z, 0),
        "gelu": 0.5 * z * (1 + erf(z / math.sqrt(2))),
        "gelu_tanh": 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3))),
        "silu": z / (1 + np.exp(-z)),
        "tanh": np.tanh(z),
        "sigmoid": 1 / (1 + np.exp(-z)),
    }[act]
    np.testing.assert_allclose(npv(m(x)), ref, rtol=1e-7, atol=1e-10)
    gradcheck(lambda x, w, b: F.linear(x, w, b, activation=act), (x, m.weight, m.bias))


def test_linear_wrong_shape_names_both():
    m = nn.Linear(4, 3)
    with pytest.raises(RuntimeError, match=r"\(\*, 4\).*\(2, 5\)"):
        m(conch.randn(2, 5))
    with pytest.raises(ValueError, match="unknown activation"):
        nn.Linear(2, 2, activation="swishy")


# ---------------------------------------------------------------- Sequential fusion and containers


@pytest.mark.parametrize("act", [nn.ReLU(), nn.GELU(), nn.GELU("tanh"), nn.SiLU(), nn.Tanh(), nn.Sigmoid()])
def test_fused_sequential_equals_unfused(act, monkeypatch):
    seq = nn.Sequential(nn.Linear(6, 5), act, nn.Linear(5, 2))
    x = conch.randn(7, 6)
    calls = []
    import conch.fused.matmul as fused

    real = fused.linear

    def spy(*a, **k):
        calls.append(k.get("activation"))
        return real(*a, **k)

    monkeypatch.setattr(fused, "linear", spy)
    y = seq(x)
    assert calls[0] == act.fused_name and len(calls) == 2  # Linear+activation ran as one fused call
    unfused = seq[2](act(x @ seq[0].weight.T + seq[0].bias))
    np.testing.assert_allclose(npv(y), npv(unfused), rtol=1e-5, atol=1e-6)
    y.sum().backward()
    g_fused = npv(seq[0].weight.grad).copy()
    seq.zero_grad()
    unfused.sum().backward()
    np.testing.assert_allclose(g_fused, npv(seq[0].weight.grad), rtol=1e-5, atol=1e-6)


def test_sequential_no_fusion_with_hooks_or_leaky():
    seen = []
    act = nn.ReLU()
    act.register_forward_hook(lambda m, a, o: seen.append(o))
    seq = nn.Sequential(nn.Linear(3, 3), act)
    seq(conch.randn(2, 3))
    assert len(seen) == 1  # the hook fired, so the pair was not fused away
    seq2 = nn.Sequential(nn.Linear(3, 3), nn.LeakyReLU(0.3))
    x = conch.randn(4, 3)
    z = npv(x) @ npv(seq2[0].weight).T + npv(seq2[0].bias)
    np.testing.assert_allclose(npv(seq2(x)), np.where(z > 0, z, 0.3 * z), rtol=1e-5, atol=1e-6)


def test_sequential_indexing_slicing_append():
    a, b, c = nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)
    seq = nn.Sequential(a, b)
    assert len(seq) == 2 and seq[0] is a and seq[-1] is b
    assert list(seq) == [a, b]
    sub = seq[1:]
    assert isinstance(sub, nn.Sequential) and len(sub) == 1 and sub[0] is b
    seq.append(c)
    assert seq[2] is c and list(seq.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert seq(conch.randn(4, 2)).shape == (4, 1)
    with pytest.raises(IndexError):
        seq[3]
    del seq[1]
    assert [type(m).__name__ for m in seq] == ["Linear", "Linear"] and list(seq._modules) == ["0", "1"]
    from collections import OrderedDict

    named = nn.Sequential(OrderedDict([("fc", nn.Linear(2, 2)), ("act", nn.Tanh())]))
    assert list(named.state_dict()) == ["fc.weight", "fc.bias"] and named.act is named[1]


def test_module_list_and_dict():
    ml = nn.ModuleList([nn.Linear(2, 2), nn.ReLU()])
    ml.append(nn.Linear(2, 1))
    ml.extend([nn.Tanh()])
    assert len(ml) == 4 and isinstance(ml[-1], nn.Tanh) and isinstance(ml[1:3], nn.ModuleList)
    assert [n for n, _ in ml.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    md = nn.ModuleDict({"enc": nn.Linear(2, 2), "dec": nn.Linear(2, 3)})
    assert list(md.keys()) == ["enc", "dec"] and "enc" in md and len(md) == 2
    assert list(md.state_dict()) == ["enc.weight", "enc.bias", "dec.weight", "dec.bias"]
    md["act"] = nn.ReLU()
    assert len(md) == 3
    pl = nn.ParameterList([nn.Parameter(conch.zeros(2)), conch.ones(3)])
    assert [n for n, _ in pl.named_parameters()] == ["0", "1"] and pl[1].requires_grad


# ---------------------------------------------------------------- activations


@pytest.mark.parametrize(
    "mod,ref",
    [
        (nn.ReLU(), lambda x: np.maximum(x, 0)),
        (nn.SiLU(), lambda x: x / (1 + np.exp(-x))),
        (nn.Tanh(), np.tanh),
        (nn.Sigmoid(), lambda x: 1 / (1 + np.exp(-x))),
        (nn.LeakyReLU(0.2), lambda x: np.where(x > 0, x, 0.2 * x)),
        (nn.ELU(0.7), lambda x: np.where(x > 0, x, 0.7 * (np.exp(x) - 1))),
        (nn.GELU("tanh"), lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))),
        (nn.Softmax(dim=1), lambda x: ref_softmax(x, 1)),
        (nn.LogSoftmax(dim=-1), lambda x: np.log(ref_softmax(x, -1))),
        (nn.Softplus(), lambda x: np.log1p(np.exp(x))),
    ],
)
def test_activation_modules(mod, ref):
    x = np.random.standard_normal((3, 7))
    x[0, 0] = 0.3  # keep away from the kinks for the finite differences
    x[np.abs(x) < 1e-3] = 0.5
    np.testing.assert_allclose(npv(mod(t64(x))), ref(x), rtol=1e-7, atol=1e-10)
    gradcheck(mod, (t64(x),))


# ---------------------------------------------------------------- Embedding


def test_embedding_padding_idx():
    emb = nn.Embedding(6, 3, padding_idx=2).double()
    assert np.all(npv(emb.weight)[2] == 0)
    idx = conch.tensor([[1, 2, 1], [5, 2, 0]])
    out = emb(idx)
    np.testing.assert_array_equal(npv(out), npv(emb.weight)[idx.numpy()])
    g = np.random.standard_normal(out.shape)
    out.backward(conch.tensor(g))
    ref = np.zeros((6, 3))
    np.add.at(ref, idx.numpy(), g)
    ref[2] = 0  # the padding row never gets a gradient
    np.testing.assert_allclose(npv(emb.weight.grad), ref, rtol=1e-12)
    with pytest.raises(IndexError, match="index out of range"):
        emb(conch.tensor([6]))
    with pytest.raises(TypeError, match="integer"):
        emb(conch.tensor([1.0]))
    w = t64(np.random.standard_normal((5, 2)))
    gradcheck(lambda w: F.embedding(conch.tensor([[0, 4], [4, 3]]), w), (w,))  # (padding rows are exempt by design)


# ---------------------------------------------------------------- normalisation


def test_layer_norm_and_rms_norm():
    x = np.random.standard_normal((2, 3, 4))
    ln = nn.LayerNorm((3, 4)).double()
    with conch.no_grad():
        ln.weight.copy_(conch.tensor(np.random.standard_normal((3, 4))))
        ln.bias.copy_(conch.tensor(np.random.standard_normal((3, 4))))
    mu = x.mean((1, 2), keepdims=True)
    var = x.var((1, 2), keepdims=True)
    np.testing.assert_allclose(
        npv(ln(t64(x))), (x - mu) / np.sqrt(var + 1e-5) * npv(ln.weight) + npv(ln.bias), rtol=1e-9
    )
    gradcheck(ln, (t64(x),))
    rms = nn.RMSNorm(4).double()
    with conch.no_grad():
        rms.weight.copy_(conch.tensor(np.random.standard_normal(4)))
    ref = x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6) * npv(rms.weight)
    np.testing.assert_allclose(npv(rms(t64(x))), ref, rtol=1e-9)
    gradcheck(rms, (t64(x),))
    with pytest.raises(RuntimeError, match=r"normalized_shape=\[3, 4\].*\[2, 4, 3\]"):
        ln(conch.randn(2, 4, 3, dtype=conch.float64))


def test_batchnorm2d_training_running_stats_by_hand():
    bn = nn.BatchNorm2d(3, momentum=0.3).double()
    x1 = np.random.standard_normal((4, 3, 2, 5)) * 2 + 1
    x2 = np.random.standard_normal((4, 3, 2, 5)) - 0.5
    y = bn(t64(x1))
    mu, var = x1.mean((0, 2, 3)), x1.var((0, 2, 3))
    ref = (x1 - mu[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(npv(y), ref, rtol=1e-9, atol=1e-12)
    n = 4 * 2 * 5
    rm, rv = 0.3 * mu, 0.7 + 0.3 * var * n / (n - 1)  # unbiased variance in the running estimate
    np.testing.assert_allclose(npv(bn.running_mean), rm, rtol=1e-12)
    np.testing.assert_allclose(npv(bn.running_var), rv, rtol=1e-12)
    bn(t64(x2))
    rm = 0.7 * rm + 0.3 * x2.mean((0, 2, 3))
    rv = 0.7 * rv + 0.3 * x2.var((0, 2, 3)) * n / (n - 1)
    np.testing.assert_allclose(npv(bn.running_mean), rm, rtol=1e-12)
    np.testing.assert_allclose(npv(bn.running_var), rv, rtol=1e-12)
    assert int(bn.num_batches_tracked.item()) == 2
    bn.eval()
    out = bn(t64(x1))
    np.testing.assert_allclose(
        npv(out), (x1 - rm[None, :, None, None]) / np.sqrt(rv[None, :, None, None] + 1e-5), rtol=1e-9
    )
    np.testing.assert_allclose(npv(bn.running_mean), rm, rtol=1e-12)  # eval leaves the statistics alone
    assert int(bn.num_batches_tracked.item()) == 2
    assert set(bn.state_dict()) == {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}


def test_batchnorm_gradcheck_and_cumulative_momentum():
    bn = nn.BatchNorm1d(3).double()
    with conch.no_grad():
        bn.weight.copy_(conch.tensor([0.5, 2.0, -1.0]))
    gradcheck(bn, (t64(np.random.standard_normal((5, 3))),))
    gradcheck(bn, (t64(np.random.standard_normal((2, 3, 4))),))
    cum = nn.BatchNorm1d(2, momentum=None).double()
    xs = [np.random.standard_normal((6, 2)) for _ in range(3)]
    for x in xs:
        cum(t64(x, grad=False))
    np.testing.assert_allclose(npv(cum.running_mean), np.mean([x.mean(0) for x in xs], 0), rtol=1e-12)
    nt = nn.BatchNorm1d(2, affine=False, track_running_stats=False).eval()
    x = np.random.standard_normal((5, 2))
    np.testing.assert_allclose(npv(nt(conch.tensor(x))), (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5), rtol=1e-5)
    assert nt.running_mean is None and list(nt.state_dict()) == []


def test_batchnorm_shape_errors():
    with pytest.raises(ValueError, match=r"expected 4D input \(got 3D input of size \[2, 3, 4\]\)"):
        nn.BatchNorm2d(3)(conch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="3 channels"):
        nn.BatchNorm1d(3)(conch.randn(2, 4))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nn.BatchNorm1d(3)(conch.randn(1, 3))


# ---------------------------------------------------------------- Dropout


def test_dropout_train_and_eval():
    d = nn.Dropout(0.4)
    x = conch.ones(200, 50)
    y = npv(d(x))
    kept = y != 0
    assert 0.5 < kept.mean() < 0.7
    np.testing.assert_allclose(y[kept], 1 / 0.6, rtol=1e-6)
    d.eval()
    assert d(x) is x or np.all(npv(d(x)) == 1)
    with pytest.raises(ValueError, match="between 0 and 1"):
        nn.Dropout(1.5)
    xg = conch.ones(10, 10, requires_grad=True)
    d.train()
    out = d(xg)
    out.sum().backward()
    np.testing.assert_allclose(npv(xg.grad), npv(out), rtol=1e-6)  # gradient = mask / (1 - p)


# ---------------------------------------------------------------- convolution and pooling


@pytest.mark.parametrize(
    "stride,pad,dil,groups",
    [
        ((1, 1), (0, 0), (1, 1), 1),
        ((2, 1), (1, 2), (1, 1), 1),
        ((1, 2), (2, 1), (2, 1), 1),
        ((2, 2), (1, 1), (1, 1), 2),
    ],
)
def test_conv2d_against_numpy_and_gradcheck(stride, pad, dil, groups):
    x = np.random.standard_normal((2, 4, 7, 6))
    w = np.random.standard_normal((6, 4 // groups, 3, 2))
    b = np.random.standard_normal(6)
    out = F.conv2d(t64(x), t64(w), t64(b), stride, pad, dil, groups)
    np.testing.assert_allclose(npv(out), ref_conv2d(x, w, b, stride, pad, dil, groups), rtol=1e-10, atol=1e-12)
    xs, ws, bs = t64(x[:1, :, :5, :4]), t64(w[:4]), t64(b[:4])
    gradcheck(lambda x, w, b: F.conv2d(x, w, b, stride, pad, dil, groups), (xs, ws, bs))


NP_PAD = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


@pytest.mark.parametrize("mode", list(NP_PAD))
@pytest.mark.parametrize("widths", [(2, 1), (0, 3, 1, 2), (1, 1, 0, 0, 2, 2)])
def test_pad_modes_against_numpy_and_gradcheck(mode, widths):
    x = np.random.standard_normal((2, 3, 4, 5))
    np_widths = [(0, 0)] * x.ndim
    for i in range(len(widths) // 2):
        np_widths[x.ndim - 1 - i] = (widths[2 * i], widths[2 * i + 1])
    out = F.pad(t64(x), widths, mode=mode)
    np.testing.assert_array_equal(npv(out), np.pad(x, np_widths, mode=NP_PAD[mode]))
    xs = t64(x[:1]).requires_grad_()
    gradcheck(lambda t: F.pad(t, widths, mode=mode), (xs,))
    gradgradcheck(lambda t: F.pad(t, widths, mode=mode) ** 2, (xs,))


def test_pad_crops_with_negative_widths_and_names_bad_widths():
    x = np.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(npv(F.pad(t64(x), (-1, 2, 1, -2), value=7.0)),
                                  np.pad(x[:, :1, 1:], ((0, 0), (1, 0), (0, 2)), constant_values=7.0))  # fmt: skip
    with pytest.raises(RuntimeError, match=r"Padding size should be less than .* padding \(4, 0\) at dimension 2"):
        F.pad(t64(x), (4, 0), mode="reflect")
    with pytest.raises(RuntimeError, match="wrapping around more than once"):
        F.pad(t64(x), (5, 0), mode="circular")
    with pytest.raises(ValueError, match="mode must be one of"):
        F.pad(t64(x), (1, 0), mode="symmetric")


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("padding", [(1, 2), "same"])
def test_conv2d_padding_modes(mode, padding):
    conv = nn.Conv2d(2, 3, (3, 4), padding=padding, padding_mode=mode).double()
    x = np.random.standard_normal((2, 2, 5, 6))
    (pt, pb), (pl, pr) = ((1, 1), (1, 2)) if padding == "same" else ((1, 1), (2, 2))
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), mode=NP_PAD[mode])
    want = ref_conv2d(xp, npv(conv.weight), npv(conv.bias), (1, 1), (0, 0), (1, 1))
    np.testing.assert_allclose(npv(conv(t64(x))), want, rtol=1e-10, atol=1e-12)
    assert f"padding_mode={mode}" in repr(conv)
    gradcheck(lambda t: conv(t), (t64(x[:1]).requires_grad_(),))


def test_conv2d_module_same_padding_and_errors():
    conv = nn.Conv2d(3, 5, (3, 4), padding="same", bias=False).double()
    x = conch.randn(2, 3, 6, 7, dtype=conch.float64)
    y = conv(x)
    assert y.shape == (2, 5, 6, 7)
    w = npv(conv.weight)
    # "same" with an even kernel pads one more pixel on the right, as PyTorch
    xp = np.pad(x.numpy(), ((0, 0), (0, 0), (1, 1), (1, 2)))
    np.testing.assert_allclose(npv(y), ref_conv2d(xp, w, None, (1, 1), (0, 0), (1, 1)), rtol=1e-10)
    assert conv(x[0]).shape == (5, 6, 7)  # unbatched input
    with pytest.raises(RuntimeError, match=r"expected input\[2, 4, 6, 7\] to have 3 channels, but got 4"):
        conv(conch.randn(2, 4, 6, 7, dtype=conch.float64))
    with pytest.raises(RuntimeError, match="too small"):
        nn.Conv2d(1, 1, 5)(conch.randn(1, 1, 3, 3))
    c2 = nn.Conv2d(3, 8, 3)
    bound = 1 / math.sqrt(3 * 9)
    assert np.abs(npv(c2.weight)).max() <= bound and np.abs(npv(c2.bias)).max() <= bound


@pytest.mark.parametrize("k,s,p", [(2, 2, 0), (3, 2, 1), (3, 1, 1)])
def test_max_and_avg_pool(k, s, p):
    x = np.random.standard_normal((2, 3, 7, 6))
    mp = nn.MaxPool2d(k, s, p)
    np.testing.assert_allclose(npv(mp(t64(x))), ref_pool(x, k, s, p, np.max, -np.inf), rtol=1e-12)
    gradcheck(mp, (t64(x[:1, :2]),))
    ap = nn.AvgPool2d(k, s, p)
    np.testing.assert_allclose(npv(ap(t64(x))), ref_pool(x, k, s, p, np.mean, 0.0), rtol=1e-12)
    gradcheck(ap, (t64(x[:1, :2]),))
    if p:
        ap2 = nn.AvgPool2d(k, s, p, count_include_pad=False)
        ones = ref_pool(np.ones_like(x), k, s, p, np.sum, 0.0)
        np.testing.assert_allclose(npv(ap2(t64(x))), ref_pool(x, k, s, p, np.sum, 0.0) / ones, rtol=1e-12)


def test_max_pool_gradient_goes_to_argmax():
    x = t64(np.array([[[[1.0, 5.0], [3.0, 2.0]]]]))
    F.max_pool2d(x, 2).sum().backward()
    np.testing.assert_array_equal(npv(x.grad), [[[[0, 1], [0, 0]]]])
    out, idx = F.max_pool2d(t64(np.arange(16.0).reshape(1, 1, 4, 4)), 2, return_indices=True)
    np.testing.assert_array_equal(idx.numpy(), [[[[5, 7], [13, 15]]]])


def test_adaptive_avg_pool_flatten_identity():
    x = np.random.standard_normal((2, 3, 5, 4))
    np.testing.assert_allclose(npv(nn.AdaptiveAvgPool2d(1)(t64(x))), x.mean((2, 3), keepdims=True), rtol=1e-12)
    gradcheck(nn.AdaptiveAvgPool2d((2, 3)), (t64(x[:1, :1]),))
    assert nn.Flatten()(t64(x)).shape == (2, 60)
    assert nn.Flatten(0, 1)(t64(x)).shape == (6, 5, 4)
    t = t64(x)
    assert nn.Identity(3, foo=1)(t) is t


# ---------------------------------------------------------------- attention


def ref_mha(x_q, x_kv, w_in, b_in, w_out, b_out, heads, keep=None, bias_kv=None, zero_attn=False):
    e = x_q.shape[-1]
    q = x_q @ w_in[:e].T + b_in[:e]
    k = x_kv @ w_in[e : 2 * e].T + b_in[e : 2 * e]
    v = x_kv @ w_in[2 * e :].T + b_in[2 * e :]
    b, lq, _ = q.shape
    d = e // heads
    if bias_kv is not None:  # one more key/value per sequence; every query may attend to it
        k = np.concatenate([k, np.broadcast_to(bias_kv[0], (b, 1, e))], 1)
        v = np.concatenate([v, np.broadcast_to(bias_kv[1], (b, 1, e))], 1)
    if zero_attn:  # a zero key/value (zero per head too)
        k, v = (np.concatenate([t, np.zeros((b, 1, e))], 1) for t in (k, v))
    if keep is not None and k.shape[1] > keep.shape[-1]:
        extra = k.shape[1] - keep.shape[-1]
        keep = np.concatenate([np.broadcast_to(keep, keep.shape), np.ones(keep.shape[:-1] + (extra,), bool)], -1)

    def split(t):
        return t.reshape(b, -1, heads, d).transpose(0, 2, 1, 3)

    s = split(q) @ split(k).transpose(0, 1, 3, 2) / math.sqrt(d)
    if keep is not None:
        s = np.where(keep, s, -np.inf)
    p = ref_softmax(s)
    o = (p @ split(v)).transpose(0, 2, 1, 3).reshape(b, lq, e)
    return o @ w_out.T + b_out, p.mean(1)


def test_multihead_attention_against_numpy():
    mha = nn.MultiheadAttention(8, 2).double()
    assert [n for n, _ in mha.named_parameters()] == [
        "in_proj_weight",
        "in_proj_bias",
        "out_proj.weight",
        "out_proj.bias",
    ]
    assert mha.in_proj_weight.shape == (24, 8) and np.all(npv(mha.in_proj_bias) == 0)
    with conch.no_grad():
        mha.in_proj_bias.copy_(conch.tensor(np.random.standard_normal(24)))
    x = np.random.standard_normal((2, 5, 8))
    args = (npv(mha.in_proj_weight), npv(mha.in_proj_bias), npv(mha.out_proj.weight), npv(mha.out_proj.bias), 2)
    out, w = mha(t64(x), t64(x), t64(x))
    ro, rw = ref_mha(x, x, *args)
    np.testing.assert_allclose(npv(out), ro, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(npv(w), rw, rtol=1e-9, atol=1e-12)
    causal = np.tril(np.ones((5, 5), bool))
    out, w = mha(t64(x), t64(x), t64(x), is_causal=True)
    ro, rw = ref_mha(x, x, *args, keep=causal)
    np.testing.assert_allclose(npv(out), ro, rtol=1e-9, atol=1e-12)
    kv = np.random.standard_normal((2, 3, 8))
    kpm = np.array([[False, False, True], [False, True, True]])  # True = ignore this key
    out, w = mha(t64(x), t64(kv), t64(kv), key_padding_mask=conch.tensor(kpm), need_weights=False)
    assert w is None
    ro, _ = ref_mha(x, kv, *args, keep=~kpm[:, None, None, :])
    np.testing.assert_allclose(npv(out), ro, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("bias_kv,zero_attn", [(True, False), (False, True), (True, True)])
def test_multihead_attention_bias_kv_and_zero_attn_against_numpy(bias_kv, zero_attn):
    mha = nn.MultiheadAttention(8, 2, add_bias_kv=bias_kv, add_zero_attn=zero_attn).double()
    names = [n for n, _ in mha.named_parameters()]
    assert ("bias_k" in names and "bias_v" in names) == bias_kv
    with conch.no_grad():
        mha.in_proj_bias.copy_(conch.tensor(np.random.standard_normal(24)))
    x, kv = np.random.standard_normal((2, 4, 8)), np.random.standard_normal((2, 3, 8))
    kpm = np.array([[False, False, True], [False, True, True]])
    args = (npv(mha.in_proj_weight), npv(mha.in_proj_bias), npv(mha.out_proj.weight), npv(mha.out_proj.bias), 2)
    extra = {"bias_kv": (npv(mha.bias_k), npv(mha.bias_v)) if bias_kv else None, "zero_attn": zero_attn}
    out, w = mha(t64(x), t64(kv), t64(kv), key_padding_mask=conch.tensor(kpm))
    ro, rw = ref_mha(x, kv, *args, keep=~kpm[:, None, None, :], **extra)
    assert w.shape == (2, 4, 3 + bias_kv + zero_attn)
    np.testing.assert_allclose(npv(out), ro, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(npv(w), rw, rtol=1e-9, atol=1e-12)
    out, _ = mha(t64(x), t64(x), t64(x), is_causal=True)
    ro, _ = ref_mha(x, x, *args, keep=np.tril(np.ones((4, 4), bool)), **extra)
    np.testing.assert_allclose(npv(out), ro, rtol=1e-9, atol=1e-12)
    if bias_kv:
        gradcheck(lambda x, bk: mha(x, x, x, attn_mask=conch.ones(4, 4, dtype=conch.float64))[0] * bk.sum(),
                  (t64(x[:1]).requires_grad_(), mha.bias_k))  # fmt: skip


def test_multihead_attention_without_weights_takes_the_flash_path(monkeypatch):
    from conch.fused import attention as _fused

    calls = []
    real = _fused.attention
    monkeypatch.setattr(_fused, "attention", lambda *a: calls.append(a[3]) or real(*a))
    mha = nn.MultiheadAttention(8, 2).double()
    x = np.random.standard_normal((2, 5, 8))
    args = (npv(mha.in_proj_weight), npv(mha.in_proj_bias), npv(mha.out_proj.weight), npv(mha.out_proj.bias), 2)
    for causal in (False, True):
        out, w = mha(t64(x), t64(x), t64(x), need_weights=False, is_causal=causal)
        ro, _ = ref_mha(x, x, *args, keep=np.tril(np.ones((5, 5), bool)) if causal else None)
        assert w is None
        np.testing.assert_allclose(npv(out), ro, rtol=1e-9, atol=1e-12)
    assert calls == [False, True]
    mha(t64(x), t64(x), t64(x), need_weights=True)  # the weights need the explicit probabilities
    assert len(calls) == 2


def test_multihead_attention_gradcheck_and_errors():
    mha = nn.MultiheadAttention(4, 2).double()
    x = t64(np.random.standard_normal((1, 3, 4)))
    gradcheck(
        lambda x, w: F.multi_head_attention_forward(
            x, x, x, 2, w, mha.in_proj_bias, mha.out_proj.weight, mha.out_proj.bias, is_causal=True
        )[0],
        (x, mha.in_proj_weight),
    )
    with pytest.raises(RuntimeError, match=r"embedding dimension of 4.*\(1, 3, 5\)"):
        mha(conch.randn(1, 3, 5), conch.randn(1, 3, 5), conch.randn(1, 3, 5))
    with pytest.raises(ValueError, match="divisible"):
        nn.MultiheadAttention(5, 2)


def test_sdpa_against_numpy_and_gradcheck():
    q, k, v = (np.random.standard_normal(s) for s in ((2, 3, 4), (2, 5, 4), (2, 5, 6)))
    out = F.scaled_dot_product_attention(t64(q), t64(k), t64(v))
    ref = ref_softmax(q @ k.transpose(0, 2, 1) / 2.0) @ v
    np.testing.assert_allclose(npv(out), ref, rtol=1e-10)
    keep = np.random.random((3, 5)) > 0.4
    keep[:, 0] = True
    out = F.scaled_dot_product_attention(t64(q), t64(k), t64(v), attn_mask=conch.tensor(keep), scale=0.7)
    ref = ref_softmax(np.where(keep, q @ k.transpose(0, 2, 1) * 0.7, -np.inf)) @ v
    np.testing.assert_allclose(npv(out), ref, rtol=1e-10)
    fm = np.random.standard_normal((3, 5))
    out = F.scaled_dot_product_attention(t64(q), t64(k), t64(v), attn_mask=t64(fm, False))
    np.testing.assert_allclose(npv(out), ref_softmax(q @ k.transpose(0, 2, 1) / 2.0 + fm) @ v, rtol=1e-10)
    gradcheck(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), (t64(q), t64(k), t64(v)))
    with pytest.raises(RuntimeError, match="is_causal"):
        F.scaled_dot_product_attention(t64(q), t64(k), t64(v), attn_mask=conch.tensor(keep), is_causal=True)
    with pytest.raises(RuntimeError, match=r"query \(2, 3, 4\), key \(2, 5, 3\)"):
        F.scaled_dot_product_attention(t64(q), t64(k[..., :3]), t64(v))
