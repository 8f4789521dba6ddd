"""conch.nn.Module and Parameter: registration, iteration, state dicts, modes, conversion, hooks, repr."""

import copy
import pickle

import numpy as np
import pytest

import conch
import conch.nn as nn


class Block(nn.Module):
    def __init__(self, d_in=3):
        super().__init__()
        self.fc = nn.Linear(d_in, 4)
        self.norm = nn.LayerNorm(4)
        self.register_buffer("steps", conch.zeros(1))
        self.register_buffer("scratch", conch.zeros(2), persistent=False)

    def forward(self, x):
        return self.norm(self.fc(x))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([Block(3), Block(4)])
        self.head = nn.Linear(4, 2, bias=False)
        self.scale = nn.Parameter(conch.ones(1))

    def forward(self, x):
        for b in self.layers:
            x = b(x)
        return self.head(x) * self.scale


def test_parameter_basics(device):
    p = nn.Parameter(conch.randn(2, 3, device=device))
    assert isinstance(p, conch.Tensor) and isinstance(p, nn.Parameter)
    assert p.requires_grad and p.is_leaf
    assert repr(p).startswith("Parameter containing:\ntensor(")
    q = nn.Parameter(conch.zeros(2), requires_grad=False)
    assert not q.requires_grad
    y = p * 2  # ops on a Parameter give plain Tensors
    assert type(y) is conch.Tensor
    with pytest.raises(RuntimeError, match="floating point"):
        nn.Parameter(conch.tensor([1, 2]))


def test_parameter_shares_memory():
    t = conch.zeros(3)
    p = nn.Parameter(t)
    with conch.no_grad():
        p[0] = 5.0
    assert t.numpy()[0] == 5.0


def test_named_parameters_nested_names_and_order():
    net = Net()
    names = [n for n, _ in net.named_parameters()]
    assert names == [
        "scale",
        "layers.0.fc.weight",
        "layers.0.fc.bias",
        "layers.0.norm.weight",
        "layers.0.norm.bias",
        "layers.1.fc.weight",
        "layers.1.fc.bias",
        "layers.1.norm.weight",
        "layers.1.norm.bias",
        "head.weight",
    ]
    assert len(list(net.parameters())) == 10
    assert [n for n, _ in net.named_buffers()] == [
        "layers.0.steps",
        "layers.0.scratch",
        "layers.1.steps",
        "layers.1.scratch",
    ]
    assert [n for n, _ in net.named_children()] == ["layers", "head"]
    mods = [n for n, _ in net.named_modules()]
    assert mods[:4] == ["", "layers", "layers.0", "layers.0.fc"]
    assert len(list(net.modules())) == len(mods) == 9
    assert [n for n, _ in net.named_parameters(prefix="model", recurse=False)] == ["model.scale"]


def test_shared_parameters_deduplicated():
    a = nn.Linear(3, 3)
    seq = nn.Sequential(a, nn.ReLU(), a)
    assert len(list(seq.parameters())) == 2
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias"]
    assert len(list(seq.named_modules())) == 3  # seq, a, relu
    tied = nn.Module()
    tied.emb = nn.Embedding(5, 3)
    tied.out = nn.Linear(3, 5, bias=False)
    tied.out.weight = tied.emb.weight
    assert len(list(tied.parameters())) == 1
    assert set(tied.state_dict()) == {"emb.weight", "out.weight"}  # state dict keeps both names, as PyTorch


def test_setattr_rules():
    m = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="cannot assign 'Tensor' as parameter 'weight'"):
        m.weight = conch.zeros(2, 2)
    m.bias = None
    assert m.bias is None and "bias" not in dict(m.named_parameters())
    m.extra = nn.Parameter(conch.zeros(1))
    assert "extra" in dict(m.named_parameters())
    del m.extra
    assert "extra" not in dict(m.named_parameters())
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        _ = m.nope
    with pytest.raises(AttributeError, match="before Module.__init__"):

        class Bad(nn.Module):
            def __init__(self):
                self.w = nn.Parameter(conch.zeros(1))

        Bad()
    b = Block()
    b.steps = conch.ones(1)  # re-assigning a buffer keeps it a buffer
    assert "steps" in dict(b.named_buffers())
    b.x = nn.Buffer(conch.ones(2), persistent=False)
    assert "x" in dict(b.named_buffers()) and "x" not in b.state_dict()


def test_state_dict_round_trip_and_names():
    net = Net()
    sd = net.state_dict()
    assert list(sd)[:3] == ["scale", "layers.0.steps", "layers.0.fc.weight"]  # own tensors before children
    assert "layers.0.steps" in sd and "layers.0.scratch" not in sd  # non-persistent buffer left out
    assert all(not v.requires_grad for v in sd.values())
    other = Net()
    res = other.load_state_dict({k: v.numpy().copy() for k, v in sd.items()})
    assert res.missing_keys == [] and res.unexpected_keys == []
    for (k, a), (_, b) in zip(net.state_dict().items(), other.state_dict().items()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=k)
    x = conch.randn(5, 3)
    np.testing.assert_allclose(net(x).detach().numpy(), other(x).detach().numpy(), rtol=1e-6)
    seq = nn.Sequential(nn.Sequential(nn.Linear(2, 3)), nn.ReLU(), nn.Linear(3, 1))
    assert list(seq.state_dict()) == ["0.0.weight", "0.0.bias", "2.weight", "2.bias"]


def test_load_state_dict_errors():
    net = Net()
    sd = net.state_dict()
    del sd["head.weight"]
    sd["bogus"] = conch.zeros(1)
    with pytest.raises(RuntimeError) as e:
        Net().load_state_dict(sd)
    msg = str(e.value)
    assert 'Missing key(s) in state_dict: "head.weight"' in msg and 'Unexpected key(s) in state_dict: "bogus"' in msg
    res = Net().load_state_dict(sd, strict=False)
    assert res.missing_keys == ["head.weight"] and res.unexpected_keys == ["bogus"]
    bad = net.state_dict()
    bad["layers.1.fc.bias"] = conch.zeros(7)
    with pytest.raises(RuntimeError, match=r"size mismatch for layers.1.fc.bias: copying a param with shape \(7,\)"):
        Net().load_state_dict(bad)
    with pytest.raises(RuntimeError, match="size mismatch"):
        Net().load_state_dict(bad, strict=False)  # shapes are checked even when not strict


def test_load_state_dict_copies_in_place():
    m = nn.Linear(3, 2)
    w = m.weight
    m.load_state_dict({"weight": conch.ones(2, 3), "bias": conch.zeros(2)})
    assert m.weight is w and np.all(w.detach().numpy() == 1)


def test_train_eval_flags():
    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5), nn.Sequential(nn.BatchNorm1d(2)))
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    with pytest.raises(ValueError):
        net.train("yes")


def test_to_dtype_in_place_keeps_references():
    net = Net()
    params = list(net.parameters())
    out = net(conch.randn(4, 3)).sum()
    out.backward()
    assert net.to(conch.float64) is net
    for p, q in zip(params, net.parameters()):
        assert p is q and p.dtype == conch.float64 and p.grad.dtype == conch.float64
    assert net.layers[0].steps.dtype == conch.float64
    bn = nn.BatchNorm1d(2).half()
    assert bn.num_batches_tracked.dtype == conch.int64  # integer buffers keep their dtype
    assert bn.weight.dtype == conch.float16
    net.to(device="cpu", dtype="float32")
    assert all(p.dtype == conch.float32 for p in net.parameters())
    with pytest.raises(TypeError, match="floating point"):
        net.to(conch.int32)


def test_zero_grad_and_requires_grad():
    m = nn.Linear(3, 2)
    m(conch.randn(4, 3)).sum().backward()
    m.zero_grad(set_to_none=False)
    assert np.all(m.weight.grad.numpy() == 0)
    m.zero_grad()
    assert m.weight.grad is None
    m.requires_grad_(False)
    assert not any(p.requires_grad for p in m.parameters())


def test_apply_order():
    seen = []
    net = nn.Sequential(nn.Linear(1, 1), nn.Sequential(nn.ReLU()))
    net.apply(lambda m: seen.append(type(m).__name__))
    assert seen == ["Linear", "ReLU", "Sequential", "Sequential"]


def test_hooks_and_removal():
    m = nn.Linear(3, 2)
    calls = []

    def pre(mod, args):
        calls.append("pre")
        return (args[0] * 2,)

    def post(mod, args, out):
        calls.append("post")
        return out + 1

    h1 = m.register_forward_pre_hook(pre)
    h2 = m.register_forward_hook(post)
    x = conch.randn(4, 3)
    expect = (x.numpy() * 2) @ m.weight.detach().numpy().T + m.bias.detach().numpy() + 1
    np.testing.assert_allclose(m(x).detach().numpy(), expect, rtol=1e-5, atol=1e-6)
    assert calls == ["pre", "post"]
    h1.remove()
    h2.remove()
    np.testing.assert_allclose(
        m(x).detach().numpy(), expect - 1 - x.numpy() @ m.weight.detach().numpy().T, rtol=1e-4, atol=1e-5
    )
    assert calls == ["pre", "post"]
    with m.register_forward_hook(lambda mod, a, o: calls.append("ctx")):
        m(x)
    m(x)
    assert calls.count("ctx") == 1


def test_repr_like_pytorch():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Sequential(nn.Dropout(0.1)))
    assert repr(net) == (
        "Sequential(\n"
        "  (0): Linear(in_features=4, out_features=8, bias=True)\n"
        "  (1): ReLU()\n"
        "  (2): Sequential(\n"
        "    (0): Dropout(p=0.1, inplace=False)\n"
        "  )\n"
        ")"
    )

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(1, 1)

        def extra_repr(self):
            return "hello=1"

    assert repr(Custom()) == "Custom(\n  hello=1\n  (fc): Linear(in_features=1, out_features=1, bias=True)\n)"


def test_deepcopy_and_pickle():
    net = Net()
    clone = copy.deepcopy(net)
    for (n1, a), (n2, b) in zip(net.named_parameters(), clone.named_parameters()):
        assert n1 == n2 and a is not b and isinstance(b, nn.Parameter)
        np.testing.assert_array_equal(a.detach().numpy(), b.detach().numpy())
    with conch.no_grad():
        clone.head.weight.fill_(0)
    assert not np.all(net.head.weight.detach().numpy() == 0)
    back = pickle.loads(pickle.dumps(net))
    assert isinstance(back.head.weight, nn.Parameter) and back.head.weight.requires_grad


def test_forward_missing_and_get_submodule():
    with pytest.raises(NotImplementedError, match="forward"):
        nn.Module()(1)
    net = Net()
    assert net.get_submodule("layers.1.fc") is net.layers[1].fc
    assert net.get_parameter("layers.0.norm.bias") is net.layers[0].norm.bias
    with pytest.raises(AttributeError):
        net.get_submodule("layers.5")


def test_custom_module_gradients_flow(device):
    net = Net().to(device)
    x = conch.randn(6, 3, device=device)
    net(x).pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in net.parameters())
