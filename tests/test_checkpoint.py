"""Gradient checkpointing: same gradients as the plain run (dropout included), RNG/autocast replay, errors, memory."""

import gc
import math
import tracemalloc

import numpy as np
import pytest

import conch
from conch.checkpoint import checkpoint, checkpoint_sequential


def _dropout(x, p):
    try:
        from conch.nn.functional import dropout
    except ImportError:
        from conch.fused.dropout import dropout
    return dropout(x, p, True)


class Lin:
    """A hand-built module: relu(x Wᵀ + b) (optionally with dropout), exposing parameters() like nn.Module."""

    def __init__(self, i, o, device, p=0.0):
        self.w = (conch.randn(o, i, device=device) * (1 / math.sqrt(i))).requires_grad_()
        self.b = (conch.randn(o, device=device) * 0.1).requires_grad_()
        self.p = p

    def __call__(self, x):
        y = (x @ self.w.T + self.b).relu()
        return _dropout(y, self.p) if self.p else y

    def parameters(self):
        return [self.w, self.b]


def _grads(ts):
    return [None if t.grad is None else t.grad.cpu().numpy().copy() for t in ts]


def _zero(ts):
    for t in ts:
        t.grad = None


def _assert_same(ga, gb):
    assert len(ga) == len(gb)
    for a, b in zip(ga, gb):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ equal gradients


@pytest.mark.parametrize("trial", range(5))
def test_closure_with_dropout_matches_plain(trial, device):
    conch.manual_seed(100 + trial)
    w1 = conch.randn(6, 7, device=device, requires_grad=True)
    w2 = conch.randn(7, 5, device=device, requires_grad=True)
    x = conch.randn(4, 6, device=device, requires_grad=True)
    up = conch.randn(4, 5, device=device)

    def f(x, scale):
        return _dropout((x @ w1).tanh(), 0.5) @ w2 * scale

    ts = [x, w1, w2]
    state = conch.get_rng_state()
    y_plain = f(x, 0.5)
    (y_plain * up).sum().backward()
    g_plain, rng_after_plain = _grads(ts), conch.get_rng_state()
    _zero(ts)
    conch.set_rng_state(state)
    y_ck = checkpoint(f, x, 0.5)
    assert conch.get_rng_state() == rng_after_plain  # the forward drew exactly what the plain run drew
    np.testing.assert_array_equal(y_ck.detach().cpu().numpy(), y_plain.detach().cpu().numpy())
    before_bw = conch.get_rng_state()
    (y_ck * up).sum().backward()
    assert conch.get_rng_state() == before_bw  # the recompute does not disturb the global RNG
    _assert_same(_grads(ts), g_plain)
    assert all(g is not None and np.abs(g).sum() > 0 for g in g_plain)


def test_without_preserved_rng_masks_differ(device):
    w = conch.randn(32, 32, device=device, requires_grad=True)
    x = conch.randn(16, 32, device=device)

    def f(x):
        return _dropout(x @ w, 0.5)

    state = conch.get_rng_state()
    f(x).sum().backward()
    g_plain = _grads([w])
    _zero([w])
    conch.set_rng_state(state)
    checkpoint(f, x, preserve_rng_state=False).sum().backward()
    assert not np.array_equal(_grads([w])[0], g_plain[0])


@pytest.mark.parametrize("segments", [1, 2, 3, 5])
def test_checkpoint_sequential_matches_plain(segments, device):
    layers = [Lin(8, 8, device, p=0.25 if i % 2 else 0.0) for i in range(5)]
    params = [p for m in layers for p in m.parameters()]
    x = conch.randn(3, 8, device=device)  # an input that does not require grad: parameters still get grads
    state = conch.get_rng_state()
    h = x
    for m in layers:
        h = m(h)
    h.sum().backward()
    g_plain = _grads(params)
    _zero(params)
    conch.set_rng_state(state)
    y = checkpoint_sequential(layers, segments, x)
    np.testing.assert_array_equal(y.detach().cpu().numpy(), h.detach().cpu().numpy())
    y.sum().backward()
    _assert_same(_grads(params), g_plain)


def test_module_parameters_get_gradients_through_autograd_grad(device):
    m = Lin(4, 3, device)
    x = conch.randn(2, 4, device=device)
    y = checkpoint(m, x)
    gw, gb = conch.autograd.grad(y.sum(), [m.w, m.b])
    assert m.w.grad is None  # autograd.grad leaves .grad alone for parameters of a Module fn
    y2 = m(x)
    ew, eb = conch.autograd.grad(y2.sum(), [m.w, m.b])
    np.testing.assert_allclose(gw.cpu().numpy(), ew.cpu().numpy(), rtol=1e-6)
    np.testing.assert_allclose(gb.cpu().numpy(), eb.cpu().numpy(), rtol=1e-6)


def test_nested_checkpoints_and_modules(device):
    inner = [Lin(5, 5, device, p=0.3), Lin(5, 5, device)]
    outer = Lin(5, 5, device, p=0.3)
    params = [p for m in [*inner, outer] for p in m.parameters()]
    x = conch.randn(4, 5, device=device, requires_grad=True)

    def block(h):
        h = checkpoint(inner[0], h)
        return outer(checkpoint(inner[1], h))

    state = conch.get_rng_state()
    block_plain = outer(inner[1](inner[0](x)))
    block_plain.sum().backward()
    g_plain = _grads([x, *params])
    _zero([x, *params])
    conch.set_rng_state(state)
    checkpoint(block, x).sum().backward()
    _assert_same(_grads([x, *params]), g_plain)


def test_kwargs_non_tensor_args_and_containers(device):
    a = conch.randn(3, device=device, requires_grad=True)
    b = conch.randn(3, device=device, requires_grad=True)
    c = conch.randn(3, device=device)  # does not require grad

    def f(x, pair, *, power, mode="mul", extra=None):
        y = x**power
        y = y * pair[0] + pair[1] if mode == "mul" else y
        return y + extra["bias"]

    args = dict(power=3, mode="mul", extra={"bias": b})
    f(a, [b, c], **args).sum().backward()
    g_plain = _grads([a, b])
    _zero([a, b])
    out = checkpoint(f, a, [b, c], **args)
    out.sum().backward()
    _assert_same(_grads([a, b]), g_plain)
    assert c.grad is None


def test_tuple_and_list_outputs_with_unused_and_non_tensor_parts(device):
    x = conch.randn(3, 4, device=device, requires_grad=True)

    def f(x):
        return x.exp(), (x * 2).sum(0), "tag", conch.arange(3, device=device)

    y1, y2, tag, idx = checkpoint(f, x)
    assert tag == "tag" and idx.dtype == conch.int64 and not idx.requires_grad
    y1.sum().backward()  # y2 unused
    np.testing.assert_allclose(x.grad.cpu().numpy(), np.exp(x.detach().cpu().numpy()), rtol=1e-6)
    x.grad = None
    out = checkpoint(lambda x: [x * 3, x], x)
    assert isinstance(out, list)
    (out[0].sum() + out[1].sum()).backward()
    np.testing.assert_array_equal(x.grad.cpu().numpy(), np.full((3, 4), 4.0, np.float32))


def test_gradcheck_float64(device):
    w = conch.randn(5, 3, dtype=conch.float64, device=device, requires_grad=True)
    x = conch.randn(7, 5, dtype=conch.float64, device=device, requires_grad=True)
    b = conch.randn(1, 3, dtype=conch.float64, device=device, requires_grad=True)  # broadcast over rows

    def f(x, w, b):
        return checkpoint(lambda x, w, b: ((x @ w) + b).tanh() * x.sum(1, keepdim=True), x, w, b)

    assert conch.autograd.gradcheck(f, (x, w, b))


def test_double_backward_through_checkpoint(device):
    x = conch.randn(4, dtype=conch.float64, device=device, requires_grad=True)
    y = checkpoint(lambda t: (t**3).sum(), x)
    (g,) = conch.autograd.grad(y, x, create_graph=True)  # 3x²
    np.testing.assert_allclose(g.detach().cpu().numpy(), 3 * x.detach().cpu().numpy() ** 2)
    g.sum().backward()  # d/dx Σ 3x² = 6x
    np.testing.assert_allclose(x.grad.cpu().numpy(), 6 * x.detach().cpu().numpy())


def test_retain_graph_and_second_backward_error(device):
    x = conch.randn(3, device=device, requires_grad=True)
    y = checkpoint(lambda t: (t * t).sum(), x)
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad.cpu().numpy(), 4 * x.detach().cpu().numpy(), rtol=1e-6)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        y.backward()


def test_inplace_change_of_input_is_detected(device):
    x = conch.randn(3, device=device, requires_grad=True)
    h = x * 1
    y = checkpoint(lambda t: (t * t).sum(), h)
    with conch.no_grad():
        h += 1
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


def test_no_grad_mode_just_calls(device):
    w = conch.randn(3, device=device, requires_grad=True)
    with conch.no_grad():
        y = checkpoint(lambda t: t * w, conch.randn(3, device=device))
    assert not y.requires_grad and y.grad_fn is None


def test_nothing_requires_grad_gives_constant_output(device):
    m = Lin(3, 3, device)
    m.w.requires_grad_(False)
    m.b.requires_grad_(False)
    y = checkpoint(m, conch.randn(2, 3, device=device))
    assert not y.requires_grad


# ------------------------------------------------------------------ autocast state and debug checks


@pytest.mark.parametrize("dt", [conch.bfloat16, conch.float16])
def test_autocast_state_is_replayed(dt, device):
    from conch.amp import autocast, cast_for

    w = conch.randn(6, 6, device=device, requires_grad=True)
    x = conch.randn(3, 6, device=device, requires_grad=True)

    def f(x):
        a, b = cast_for("matmul", x, w)
        y = a @ b
        assert y.dtype == dt  # also in the recompute, which runs outside the autocast block
        return y.float()

    with autocast(dtype=dt):
        f(x).sum().backward()
    g_plain = _grads([x, w])
    _zero([x, w])
    with autocast(dtype=dt):
        y = checkpoint(f, x, debug=True)
    y.sum().backward()
    _assert_same(_grads([x, w]), g_plain)
    assert w.grad.dtype == conch.float32


def test_debug_detects_a_different_recomputation(device):
    calls = [0]
    x = conch.randn(3, device=device, requires_grad=True)

    def f(t):
        calls[0] += 1
        return t * calls[0]

    y = checkpoint(f, x, debug=True)
    with pytest.raises(RuntimeError, match=r"debug=True.*differs.*max abs difference"):
        y.sum().backward()
    # without debug, a changed shape is still caught with a clear message
    n = [2]

    def g(t):
        n[0] += 1
        return t[: n[0] % 3 + 1] * 1  # one element in the forward, two in the recompute

    y = checkpoint(g, x)
    with pytest.raises(RuntimeError, match="recomputed output 0 has shape"):
        y.sum().backward()


def test_bad_arguments(device):
    with pytest.raises(TypeError, match="callable"):
        checkpoint(3, conch.randn(2))
    with pytest.raises(TypeError, match="Tensor or a tuple"):
        checkpoint(lambda t: {"y": t}, conch.randn(2, requires_grad=True))
    layers = [Lin(2, 2, device)]
    with pytest.raises(ValueError, match="segments"):
        checkpoint_sequential(layers, 2, conch.randn(1, 2, device=device))
    with pytest.raises(ValueError, match="no modules"):
        checkpoint_sequential([], 1, conch.randn(1, 2, device=device))


# ------------------------------------------------------------------ with conch.nn, when it is there


def test_nn_sequential_with_dropout_matches_plain(device):
    nn = pytest.importorskip("conch.nn", reason="conch.nn not importable yet")
    model = nn.Sequential(*[m for _ in range(4) for m in (nn.Linear(16, 16), nn.ReLU(), nn.Dropout(0.2))])
    model.to(device)
    params = list(model.parameters())
    x = conch.randn(8, 16, device=device)
    for _ in range(2):
        state = conch.get_rng_state()
        model(x).pow(2).mean().backward()
        g_plain = _grads(params)
        _zero(params)
        conch.set_rng_state(state)
        checkpoint_sequential(model, 3, x).pow(2).mean().backward()
        _assert_same(_grads(params), g_plain)
        _zero(params)


# ------------------------------------------------------------------ memory


def test_checkpoint_sequential_peak_memory_is_well_below_plain():
    # 16 layers, activations (batch 1024 x width 128, 0.5 MB each) outweighing parameter gradients (64 KB per
    # layer), measured with tracemalloc on NumPy's allocations; docs/checkpointing.md explains the choice
    layers = [Lin(128, 128, "cpu") for _ in range(16)]
    params = [p for m in layers for p in m.parameters()]
    x = conch.randn(1024, 128)

    def plain():
        h = x
        for m in layers:
            h = m(h)
        return h

    def measure(fwd):
        _zero(params)
        gc.collect()
        tracemalloc.start()
        try:
            y = fwd()
            kept = tracemalloc.get_traced_memory()[0]  # what the graph holds for backward
            y.sum().backward()
            del y
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return kept, peak, _grads(params)

    kept_plain, peak_plain, g_plain = measure(plain)
    kept_ck, peak_ck, g_ck = measure(lambda: checkpoint_sequential(layers, 4, x))
    _assert_same(g_ck, g_plain)
    act = 1024 * 128 * 4
    assert kept_plain > 16 * act  # about two activations per layer
    # 3 segment inputs + the last segment's 4 layers, against all 16 layers
    assert kept_ck < 0.45 * kept_plain, (kept_ck, kept_plain)
    assert peak_ck < 0.6 * peak_plain, (peak_ck, peak_plain)


def test_nn_module_fn_parameter_hooks_run_once(device):
    nn = pytest.importorskip("conch.nn", reason="conch.nn not importable yet")
    block = nn.Sequential(nn.Linear(6, 6), nn.GELU(), nn.Dropout(0.3), nn.Linear(6, 2)).to(device)
    calls = []

    def hook(g):
        calls.append(1)
        return g * 2

    handle = block[0].weight.register_hook(hook)
    x = conch.randn(5, 6, device=device, requires_grad=True)
    ts = [x, *block.parameters()]
    state = conch.get_rng_state()
    block(x).sum().backward()
    g_plain, n_plain = _grads(ts), len(calls)
    _zero(ts)
    conch.set_rng_state(state)
    checkpoint(block, x).sum().backward()
    assert len(calls) - n_plain == n_plain == 1
    _assert_same(_grads(ts), g_plain)
    handle.remove()
