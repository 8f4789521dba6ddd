"""PyTorch parity (skipped without torch): GroupNorm, Conv1d, LSTM/GRU, TransformerEncoder and more; values, grads."""

import numpy as np
import pytest

import conch
import conch.nn as nn
import conch.nn.functional as F

torch = pytest.importorskip("torch", reason="PyTorch is not installed; these cross-checks are optional")

from test_nn_torch import _copy_to_torch  # noqa: E402  (after the importorskip on purpose)

TF = torch.nn.functional
RTOL, ATOL = 1e-9, 1e-11
# PyTorch's CPU hardsigmoid backward multiplies by the float32 constant 1.0f / 6.0f even in float64 (a 3e-8 relative
# error); conch's gradient is exactly 1/6 (checked in closed form in test_nn_more.py), so these compare more loosely
LOOSE_GRAD = {"hardsigmoid": 1e-7}


def _randomize(cm, scale=0.5):
    """Random parameters (ones/zeros initialisers would hide a swapped weight and bias)."""
    with conch.no_grad():
        for p in cm.parameters():
            p.copy_(conch.tensor(np.random.standard_normal(p.shape) * scale))


def _convert(obj, lib, leaves, grad):
    """NumPy arrays (inside tuples) to lib tensors; float64 ones require grad when ``grad`` and land in ``leaves``."""
    if isinstance(obj, tuple):
        return tuple(_convert(o, lib, leaves, grad) for o in obj)
    if isinstance(obj, np.ndarray):
        t = lib.tensor(obj)
        if grad and obj.dtype == np.float64:
            t.requires_grad_(True)
            leaves.append(t)
        return t
    return obj


def _flat(out):
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat(o)]
    return [] if out is None else [out]


def _npy(t):
    return t.detach().cpu().numpy() if isinstance(t, conch.Tensor) else t.detach().numpy()


def _check(cm, tm, args, kwargs=None, kwargs_t=None, randomize=True, grad_rtol=RTOL):
    """Same weights, same inputs: outputs, input gradients and parameter gradients agree (float64)."""
    cm, tm = cm.double(), tm.double()
    if randomize:
        _randomize(cm)
    _copy_to_torch(cm, tm)
    kwargs = kwargs or {}
    leaves_c, leaves_t = [], []
    ac = _convert(tuple(args), conch, leaves_c, True)
    at = _convert(tuple(args), torch, leaves_t, True)
    kc = {k: _convert(v, conch, [], False) for k, v in kwargs.items()}
    kt = {k: _convert(v, torch, [], False) for k, v in kwargs.items()}
    kt.update(kwargs_t or {})
    oc, ot = _flat(cm(*ac, **kc)), _flat(tm(*at, **kt))
    assert len(oc) == len(ot)
    for i, (a, b) in enumerate(zip(oc, ot)):
        assert tuple(a.shape) == tuple(b.shape), f"output {i}: {tuple(a.shape)} vs {tuple(b.shape)}"
        np.testing.assert_allclose(_npy(a), _npy(b), rtol=RTOL, atol=ATOL, err_msg=f"output {i}")
    gs = [np.random.standard_normal(tuple(b.shape)) for b in ot]
    sum((a * conch.tensor(g)).sum() for a, g in zip(oc, gs)).backward()
    sum((b * torch.tensor(g)).sum() for b, g in zip(ot, gs)).backward()
    for i, (a, b) in enumerate(zip(leaves_c, leaves_t)):
        assert a.grad is not None, f"input {i} got no gradient"
        np.testing.assert_allclose(_npy(a.grad), _npy(b.grad), rtol=grad_rtol, atol=ATOL, err_msg=f"grad of input {i}")
    pc, pt = dict(cm.named_parameters()), dict(tm.named_parameters())
    assert list(pc) == list(pt)
    for n in pt:
        assert pc[n].grad is not None, f"{n} got no gradient"
        np.testing.assert_allclose(_npy(pc[n].grad), _npy(pt[n].grad), rtol=RTOL, atol=ATOL, err_msg=n)
    return oc, ot


_rng = np.random.default_rng(0)  # the case lists below are built at import, before the per-test seeding


def _rand(*shape):
    return _rng.standard_normal(shape)


# ---------------------------------------------------------------- GroupNorm, Conv1d, activations, Upsample

CASES = [
    ("groupnorm-3d", lambda m: m.GroupNorm(2, 6), (_rand(2, 6, 5),)),
    ("groupnorm-4d", lambda m: m.GroupNorm(3, 6, eps=1e-3), (_rand(2, 6, 3, 4),)),
    ("groupnorm-2d", lambda m: m.GroupNorm(6, 6), (_rand(4, 6),)),
    ("groupnorm-1group", lambda m: m.GroupNorm(1, 4), (_rand(2, 4, 2, 2, 3),)),
    ("groupnorm-noaffine", lambda m: m.GroupNorm(2, 4, affine=False), (_rand(3, 4, 5),)),
    ("conv1d", lambda m: m.Conv1d(3, 4, 3), (_rand(2, 3, 9),)),
    ("conv1d-stride-pad-dil", lambda m: m.Conv1d(4, 6, 3, stride=2, padding=2, dilation=2), (_rand(2, 4, 11),)),
    ("conv1d-groups-nobias", lambda m: m.Conv1d(4, 6, 2, groups=2, bias=False), (_rand(2, 4, 7),)),
    ("conv1d-same", lambda m: m.Conv1d(3, 5, 4, padding="same"), (_rand(2, 3, 8),)),
    ("conv1d-same-dil", lambda m: m.Conv1d(3, 5, 3, padding="same", dilation=3), (_rand(2, 3, 10),)),
    ("conv1d-valid", lambda m: m.Conv1d(3, 5, 4, padding="valid"), (_rand(2, 3, 8),)),
    ("conv1d-unbatched", lambda m: m.Conv1d(3, 5, 3, padding=1), (_rand(3, 8),)),
    ("conv1d-tuple-args", lambda m: m.Conv1d(3, 5, (3,), stride=(2,), padding=(1,)), (_rand(2, 3, 8),)),
    *(
        (
            f"conv1d-{mode}-{pad}",
            lambda m, mode=mode, pad=pad: m.Conv1d(2, 3, 4, padding=pad, padding_mode=mode),
            (_rand(2, 2, 7),),
        )  # fmt: skip
        for mode in ("reflect", "replicate", "circular")
        for pad in (2, "same")
    ),
    ("convT2d", lambda m: m.ConvTranspose2d(3, 4, 3), (_rand(2, 3, 5, 4),)),
    (
        "convT2d-stride-pad-outpad",
        lambda m: m.ConvTranspose2d(4, 6, (3, 2), stride=(2, 3), padding=(1, 0), output_padding=(1, 2)),
        (_rand(2, 4, 3, 4),),
    ),
    (
        "convT2d-groups-dil-nobias",
        lambda m: m.ConvTranspose2d(4, 6, 3, groups=2, dilation=2, bias=False),
        (_rand(1, 4, 4, 3),),
    ),  # fmt: skip
    ("convT2d-unbatched", lambda m: m.ConvTranspose2d(3, 2, 2, stride=2), (_rand(3, 4, 5),)),
    ("maxpool1d", lambda m: m.MaxPool1d(3, 2, 1), (_rand(2, 3, 11),)),
    ("maxpool1d-ceil-dil", lambda m: m.MaxPool1d(3, 2, 1, dilation=2, ceil_mode=True), (_rand(2, 3, 12),)),
    ("avgpool1d", lambda m: m.AvgPool1d(4, 3, 2, count_include_pad=False, ceil_mode=True), (_rand(2, 3, 11),)),
    ("adaptiveavgpool1d", lambda m: m.AdaptiveAvgPool1d(4), (_rand(2, 3, 11),)),
    ("instancenorm1d", lambda m: m.InstanceNorm1d(3), (_rand(2, 3, 7),)),
    ("instancenorm2d-affine", lambda m: m.InstanceNorm2d(3, affine=True), (_rand(2, 3, 4, 5),)),
    (
        "instancenorm2d-tracked",
        lambda m: m.InstanceNorm2d(3, affine=True, track_running_stats=True),
        (_rand(2, 3, 4, 5),),
    ),  # fmt: skip
    ("prelu-1", lambda m: m.PReLU(), (_rand(2, 3, 4),)),
    ("prelu-channels", lambda m: m.PReLU(3, init=0.1), (_rand(2, 3, 4, 2),)),
    ("prelu-channels-2d", lambda m: m.PReLU(3), (_rand(5, 3),)),
    ("hardswish", lambda m: m.Hardswish(), (_rand(3, 7) * 3,)),
    ("hardsigmoid", lambda m: m.Hardsigmoid(), (_rand(3, 7) * 3,)),
    ("softsign", lambda m: m.Softsign(), (_rand(3, 7) * 3,)),
    ("hardtanh", lambda m: m.Hardtanh(), (_rand(3, 7) * 2,)),
    ("hardtanh-bounds", lambda m: m.Hardtanh(-2.0, 0.5), (_rand(3, 7) * 2,)),
    ("glu", lambda m: m.GLU(), (_rand(3, 8),)),
    ("glu-dim1", lambda m: m.GLU(1), (_rand(3, 4, 5),)),
    ("cosine", lambda m: m.CosineSimilarity(), (_rand(3, 5, 2), _rand(3, 5, 2))),
    ("cosine-dim-broadcast", lambda m: m.CosineSimilarity(dim=-1, eps=1e-6), (_rand(3, 1, 5), _rand(1, 4, 5))),
    ("upsample-nearest-1d", lambda m: m.Upsample(scale_factor=2), (_rand(2, 3, 5),)),
    ("upsample-nearest-1d-1.7", lambda m: m.Upsample(scale_factor=1.7), (_rand(2, 3, 5),)),
    ("upsample-nearest-1d-size", lambda m: m.Upsample(size=3), (_rand(2, 3, 7),)),
    ("upsample-nearest-2d", lambda m: m.Upsample(scale_factor=(1.5, 0.7), mode="nearest"), (_rand(1, 2, 4, 5),)),
    ("upsample-nearest-2d-size", lambda m: m.Upsample(size=(7, 3)), (_rand(1, 2, 4, 5),)),
    ("upsample-bilinear-2", lambda m: m.Upsample(scale_factor=2, mode="bilinear"), (_rand(2, 2, 3, 4),)),
    ("upsample-bilinear-1.5", lambda m: m.Upsample(scale_factor=1.5, mode="bilinear"), (_rand(2, 2, 3, 5),)),
    (
        "upsample-bilinear-ac",
        lambda m: m.Upsample(scale_factor=1.5, mode="bilinear", align_corners=True),
        (_rand(2, 2, 3, 5),),
    ),
    ("upsample-bilinear-size-down", lambda m: m.Upsample(size=(2, 3), mode="bilinear"), (_rand(1, 2, 5, 7),)),
    (
        "upsample-bilinear-size-ac",
        lambda m: m.Upsample(size=(7, 2), mode="bilinear", align_corners=True),
        (_rand(1, 2, 5, 4),),
    ),
]


@pytest.mark.parametrize("make,args", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_modules_match_torch(request, make, args):
    _check(make(nn), make(torch.nn), args, grad_rtol=LOOSE_GRAD.get(request.node.callspec.id, RTOL))


REPRS = [
    lambda m: m.GroupNorm(2, 6),
    lambda m: m.GroupNorm(3, 6, eps=1e-3, affine=False),
    lambda m: m.Conv1d(3, 4, 3),
    lambda m: m.Conv1d(3, 4, 3, stride=2, padding=1, dilation=2, bias=False, padding_mode="reflect"),
    lambda m: m.Conv1d(4, 4, 3, groups=2, padding="same"),
    lambda m: m.LSTM(4, 5),
    lambda m: m.LSTM(4, 5, 2, batch_first=True, bidirectional=True),
    lambda m: m.GRU(4, 5, num_layers=2, bias=False, dropout=0.5),
    lambda m: m.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1),
    lambda m: m.ConvTranspose2d(4, 6, (3, 2), groups=2, bias=False, dilation=2),
    lambda m: m.MaxPool1d(3),
    lambda m: m.AvgPool1d(3, 2, 1),
    lambda m: m.AdaptiveAvgPool1d(5),
    lambda m: m.InstanceNorm1d(3),
    lambda m: m.InstanceNorm2d(4, affine=True, track_running_stats=True),
    lambda m: m.Dropout1d(0.2),
    lambda m: m.Dropout2d(),
    lambda m: m.PReLU(),
    lambda m: m.PReLU(3),
    lambda m: m.Hardswish(),
    lambda m: m.Hardsigmoid(),
    lambda m: m.Softsign(),
    lambda m: m.Hardtanh(),
    lambda m: m.Hardtanh(-2.0, 0.5),
    lambda m: m.GLU(),
    lambda m: m.GLU(0),
    lambda m: m.CosineSimilarity(),
    lambda m: m.CosineSimilarity(dim=0, eps=1e-6),
    lambda m: m.Upsample(scale_factor=2),
    lambda m: m.Upsample(size=(3, 4), mode="bilinear", align_corners=True),
    lambda m: m.TransformerEncoderLayer(8, 2, 16),
]


@pytest.mark.parametrize("make", REPRS)
def test_repr_matches_torch(make):
    assert repr(make(nn)) == repr(make(torch.nn))


# ---------------------------------------------------------------- LSTM / GRU


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_hx", [False, True])
def test_rnn_matches_torch(kind, num_layers, bidirectional, batch_first, with_hx):
    kw = {"num_layers": num_layers, "bidirectional": bidirectional, "batch_first": batch_first}
    cm, tm = getattr(nn, kind)(3, 4, **kw), getattr(torch.nn, kind)(3, 4, **kw)
    nd = 2 if bidirectional else 1
    x = _rand(2, 5, 3) if batch_first else _rand(5, 2, 3)
    args = (x,)
    if with_hx:
        h0 = _rand(num_layers * nd, 2, 4)
        args = (x, (h0, _rand(num_layers * nd, 2, 4)) if kind == "LSTM" else h0)
    _check(cm, tm, args, randomize=False)  # the default U(-1/√H, 1/√H) weights


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("with_hx", [False, True])
def test_rnn_unbatched_and_no_bias_match_torch(kind, with_hx):
    kw = {"num_layers": 2, "bidirectional": True, "bias": False}
    cm, tm = getattr(nn, kind)(3, 4, **kw), getattr(torch.nn, kind)(3, 4, **kw)
    args = (_rand(6, 3),)
    if with_hx:
        args = (args[0], (_rand(4, 4), _rand(4, 4)) if kind == "LSTM" else _rand(4, 4))
    _check(cm, tm, args)


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_rnn_eval_with_dropout_matches_torch(kind):
    cm = getattr(nn, kind)(3, 4, num_layers=3, dropout=0.3).eval()
    tm = getattr(torch.nn, kind)(3, 4, num_layers=3, dropout=0.3).eval()
    _check(cm, tm, (_rand(4, 2, 3),))


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_rnn_state_dict_loads_from_torch(kind):
    tm = getattr(torch.nn, kind)(3, 4, num_layers=2, bidirectional=True).double()
    cm = getattr(nn, kind)(3, 4, num_layers=2, bidirectional=True).double()
    cm.load_state_dict(tm.state_dict())  # PyTorch tensors load directly
    x = _rand(5, 2, 3)
    oc, ot = cm(conch.tensor(x))[0], tm(torch.tensor(x))[0]
    np.testing.assert_allclose(_npy(oc), _npy(ot), rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------- TransformerEncoderLayer / TransformerEncoder


def _masks(kind, n, l):
    causal = np.triu(np.ones((l, l), bool), 1)
    pad = np.zeros((n, l), bool)
    pad[0, -2:] = True
    pad[-1, -1] = True
    return {
        "none": {},
        "causal_float": {"src_mask": np.where(causal, -np.inf, 0.0)},
        "causal_bool": {"src_mask": causal},
        "padding": {"src_key_padding_mask": pad},
        "causal_and_padding": {"src_mask": causal, "src_key_padding_mask": pad},
        "float_mask_and_padding": {
            "src_mask": np.random.standard_normal((l, l)),
            "src_key_padding_mask": np.where(pad, -np.inf, 0.0),
        },  # fmt: skip
    }[kind]


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize(
    "masks", ["none", "causal_float", "causal_bool", "padding", "causal_and_padding", "float_mask_and_padding"]
)
def test_transformer_encoder_layer_matches_torch(norm_first, activation, masks):
    kw = {"dim_feedforward": 16, "dropout": 0.0, "activation": activation, "norm_first": norm_first}
    cm, tm = nn.TransformerEncoderLayer(8, 2, **kw), torch.nn.TransformerEncoderLayer(8, 2, **kw)
    _check(cm, tm, (_rand(5, 3, 8),), _masks(masks, 3, 5))  # (L, N, E): batch_first=False by default


@pytest.mark.parametrize("masks", ["causal_float", "causal_bool"])
def test_transformer_encoder_layer_is_causal_hint_matches_torch(masks):
    kw = {"dim_feedforward": 12, "dropout": 0.0, "batch_first": True}
    cm, tm = nn.TransformerEncoderLayer(8, 4, **kw), torch.nn.TransformerEncoderLayer(8, 4, **kw)
    _check(cm, tm, (_rand(2, 6, 8),), {**_masks(masks, 2, 6), "is_causal": True})


@pytest.mark.parametrize(
    "kw,shape",
    [
        ({"batch_first": True}, (3, 5, 8)),
        ({"batch_first": True, "norm_first": True, "activation": "gelu"}, (5, 8)),  # unbatched (L, E)
        ({"bias": False}, (5, 3, 8)),
        ({"bias": False, "norm_first": True, "layer_norm_eps": 1e-3}, (5, 3, 8)),
        ({"layer_norm_eps": 0.1, "batch_first": True}, (2, 4, 8)),
    ],
)
def test_transformer_encoder_layer_options_match_torch(kw, shape):
    kw = {"dim_feedforward": 16, "dropout": 0.0, **kw}
    _check(nn.TransformerEncoderLayer(8, 2, **kw), torch.nn.TransformerEncoderLayer(8, 2, **kw), (_rand(*shape),))


@pytest.mark.parametrize("with_norm", [False, True])
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("masks", ["none", "causal_and_padding"])
def test_transformer_encoder_matches_torch(with_norm, norm_first, masks):
    kw = {"dim_feedforward": 16, "dropout": 0.0, "norm_first": norm_first, "batch_first": True}
    cm = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, **kw), 3, norm=nn.LayerNorm(8) if with_norm else None)
    tm = torch.nn.TransformerEncoder(
        torch.nn.TransformerEncoderLayer(8, 2, **kw),
        3,
        norm=torch.nn.LayerNorm(8) if with_norm else None,
        enable_nested_tensor=False,
    )
    m = _masks(masks, 2, 5)
    kwargs = {"mask": m["src_mask"], "src_key_padding_mask": m["src_key_padding_mask"]} if m else {}
    _check(cm, tm, (_rand(2, 5, 8),), kwargs)


def test_transformer_encoder_default_init_matches_torch_distributions():
    """The same initialisers as PyTorch: xavier-uniform in_proj, zero attention biases, Linear's kaiming bounds."""
    cm = nn.TransformerEncoderLayer(16, 4, 32)
    tm = torch.nn.TransformerEncoderLayer(16, 4, 32)
    for (n, p), (_, q) in zip(cm.named_parameters(), tm.named_parameters()):
        a, b = _npy(p), _npy(q)
        assert a.shape == b.shape, n
        if np.all(b == b.flat[0]):  # constants: ones and zeros
            np.testing.assert_array_equal(a, b, err_msg=n)
        else:  # uniform initialisers: the same bound, up to sampling
            assert 0.8 * np.abs(b).max() < np.abs(a).max() <= 1.25 * np.abs(b).max(), n


# ---------------------------------------------------------------- functional forms


def _fcheck(fc, ft, args, grad_rtol=RTOL):
    leaves_c, leaves_t = [], []
    ac, at = _convert(tuple(args), conch, leaves_c, True), _convert(tuple(args), torch, leaves_t, True)
    oc, ot = fc(*ac), ft(*at)
    assert tuple(oc.shape) == tuple(ot.shape)
    np.testing.assert_allclose(_npy(oc), _npy(ot), rtol=RTOL, atol=ATOL)
    g = np.random.standard_normal(tuple(ot.shape))
    (oc * conch.tensor(g)).sum().backward()
    (ot * torch.tensor(g)).sum().backward()
    for i, (a, b) in enumerate(zip(leaves_c, leaves_t)):
        np.testing.assert_allclose(_npy(a.grad), _npy(b.grad), rtol=grad_rtol, atol=ATOL, err_msg=f"grad of input {i}")


FCASES = [
    ("group_norm", lambda f: lambda x, w, b: f.group_norm(x, 3, w, b, eps=1e-4), (_rand(2, 6, 4), _rand(6), _rand(6))),
    ("group_norm-plain", lambda f: lambda x: f.group_norm(x, 2), (_rand(2, 4, 3, 3),)),
    ("conv1d", lambda f: lambda x, w, b: f.conv1d(x, w, b, 2, 1, 1, 2), (_rand(2, 4, 9), _rand(6, 2, 3), _rand(6))),
    (
        "conv1d-same",
        lambda f: lambda x, w: f.conv1d(x, w, padding="same", dilation=2),
        (_rand(2, 3, 9), _rand(4, 3, 4)),
    ),  # noqa: E501
    ("conv1d-valid", lambda f: lambda x, w: f.conv1d(x, w, None, 1, "valid"), (_rand(3, 9), _rand(4, 3, 4))),
    ("prelu", lambda f: lambda x, w: f.prelu(x, w), (_rand(2, 3, 4), _rand(3))),
    ("prelu-scalar", lambda f: lambda x, w: f.prelu(x, w), (_rand(2, 3, 4), _rand(1))),
    ("hardswish", lambda f: f.hardswish, (_rand(4, 5) * 3,)),
    ("hardsigmoid", lambda f: f.hardsigmoid, (_rand(4, 5) * 3,)),
    ("softsign", lambda f: f.softsign, (_rand(4, 5) * 3,)),
    ("glu", lambda f: lambda x: f.glu(x, 0), (_rand(4, 5),)),
    ("cosine", lambda f: lambda a, b: f.cosine_similarity(a, b, dim=0), (_rand(4, 5), _rand(4, 5))),
    ("pairwise", lambda f: f.pairwise_distance, (_rand(4, 5), _rand(4, 5))),
    ("pairwise-p1-keep", lambda f: lambda a, b: f.pairwise_distance(a, b, 1.0, 1e-3, True), (_rand(4, 5), _rand(4, 5))),
    ("pairwise-p3-bcast", lambda f: lambda a, b: f.pairwise_distance(a, b, p=3.0), (_rand(2, 3, 5), _rand(3, 5))),
    ("pairwise-1d", lambda f: f.pairwise_distance, (_rand(5), _rand(5))),
    ("interp-nearest-1d", lambda f: lambda x: f.interpolate(x, scale_factor=2.5), (_rand(2, 3, 5),)),
    ("interp-nearest-1d-size", lambda f: lambda x: f.interpolate(x, size=11), (_rand(2, 3, 4),)),
    ("interp-nearest-2d", lambda f: lambda x: f.interpolate(x, scale_factor=(2, 1.5)), (_rand(1, 2, 3, 4),)),
    ("interp-nearest-2d-down", lambda f: lambda x: f.interpolate(x, size=(2, 3)), (_rand(1, 2, 5, 7),)),
    ("interp-bilinear", lambda f: lambda x: f.interpolate(x, scale_factor=1.5, mode="bilinear"), (_rand(1, 2, 3, 4),)),
    (
        "interp-bilinear-ac",
        lambda f: lambda x: f.interpolate(x, size=(5, 2), mode="bilinear", align_corners=True),
        (_rand(2, 1, 3, 4),),
    ),
    (
        "interp-bilinear-down",
        lambda f: lambda x: f.interpolate(x, scale_factor=(0.6, 0.5), mode="bilinear", align_corners=False),
        (_rand(1, 2, 6, 7),),
    ),
]


@pytest.mark.parametrize("make,args", [c[1:] for c in FCASES], ids=[c[0] for c in FCASES])
def test_functional_matches_torch(request, make, args):
    _fcheck(make(F), make(TF), args, grad_rtol=LOOSE_GRAD.get(request.node.callspec.id, RTOL))


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, True)])
def test_packed_sequences_match_torch(kind, layers, bidirectional):
    from conch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    trnn = torch.nn.utils.rnn
    cm = getattr(nn, kind)(4, 3, num_layers=layers, bidirectional=bidirectional).double()
    tm = getattr(torch.nn, kind)(4, 3, num_layers=layers, bidirectional=bidirectional).double()
    _copy_to_torch(cm, tm)
    x, lens = _rand(5, 4, 4), [3, 5, 2, 5]
    xc, xt = conch.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    hx = _rand(layers * (1 + bidirectional), 4, 3)
    args_c = (conch.tensor(hx), conch.tensor(hx)) if kind == "LSTM" else conch.tensor(hx)
    args_t = (torch.tensor(hx), torch.tensor(hx)) if kind == "LSTM" else torch.tensor(hx)
    oc, hc = cm(pack_padded_sequence(xc, lens, enforce_sorted=False), args_c)
    ot, ht = tm(trnn.pack_padded_sequence(xt, lens, enforce_sorted=False), args_t)
    pc, _ = pad_packed_sequence(oc)
    pt, _ = trnn.pad_packed_sequence(ot)
    np.testing.assert_allclose(_npy(pc), _npy(pt), rtol=RTOL, atol=ATOL)
    for a, b in zip(_flat(hc), _flat(ht)):
        np.testing.assert_allclose(_npy(a), _npy(b), rtol=RTOL, atol=ATOL)
    g = _rand(*pt.shape)
    (pc * conch.tensor(g)).sum().backward()
    (pt * torch.tensor(g)).sum().backward()
    np.testing.assert_allclose(_npy(xc.grad), _npy(xt.grad), rtol=RTOL, atol=ATOL)
