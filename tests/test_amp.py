"""conch.amp.autocast and the policy table: output dtypes per policy, nesting, decorators, gradients to float32."""

import pathlib

import numpy as np
import pytest

import conch
from conch.amp import FP32, LOW, POLICY, PROMOTE, autocast, cast_for

F16, BF16, F32, F64 = conch.float16, conch.bfloat16, conch.float32, conch.float64
LOWS = [F16, BF16]


def _t(shape, dtype, device, requires_grad=False):
    return conch.randn(*shape, dtype=dtype, device=device, requires_grad=requires_grad)


@pytest.fixture(autouse=True)
def _no_autocast_leak():
    state = conch.amp.get_autocast_state()
    yield
    assert conch.amp.get_autocast_state() == state, "a test left autocast on"


# ------------------------------------------------------------------ cast_for per policy


def test_cast_for_is_identity_when_off(device):
    x, w = _t((2, 3), F32, device), _t((4, 3), F16, device)
    out = cast_for("linear", x, w, None)
    assert out[0] is x and out[1] is w and out[2] is None
    assert not conch.amp.is_autocast_enabled()


@pytest.mark.parametrize("dt", LOWS)
@pytest.mark.parametrize("op", sorted(n for n, p in POLICY.items() if p == LOW))
def test_low_ops_cast_to_autocast_dtype(op, dt, device):
    x, w, b = _t((2, 3), F32, device), _t((4, 3), F32, device), _t((4,), F16, device)
    with autocast(dtype=dt):
        assert conch.amp.get_autocast_dtype() == dt
        cx, cw, cb, none, n = cast_for(op, x, w, b, None, 3)
    assert cx.dtype == dt and cw.dtype == dt and cb.dtype == dt
    assert none is None and n == 3
    # the cast rounds once: values are float32's rounded to the low dtype
    np.testing.assert_array_equal(cx.float().cpu().numpy(), x.cpu().numpy().astype(dt).astype(np.float32))


@pytest.mark.parametrize("dt", LOWS)
@pytest.mark.parametrize("op", sorted(n for n, p in POLICY.items() if p == FP32))
def test_fp32_ops_cast_to_float32(op, dt, device):
    a, b = _t((3,), F16, device), _t((3,), BF16, device)
    with autocast(dtype=dt):
        ca, cb, cc = cast_for(op, a, b, _t((3,), F32, device))
    assert (ca.dtype, cb.dtype, cc.dtype) == (F32, F32, F32)


@pytest.mark.parametrize(
    "dtypes, expect",
    [((F16, F16), F16), ((F16, F32), F32), ((BF16, F16), F32), ((BF16, BF16), BF16), ((F32, BF16), F32)],
)
def test_promote_ops_cast_to_widest(dtypes, expect, device):
    ts = [_t((2,), d, device) for d in dtypes]
    with autocast(dtype=F16):
        out = cast_for("add", *ts)
        out_unlisted = cast_for("some_op_not_in_the_table", *ts)
    assert [o.dtype for o in out] == [expect, expect]
    assert [o.dtype for o in out_unlisted] == [expect, expect]
    assert conch.amp.policy_of("some_op_not_in_the_table") == PROMOTE


def test_float64_and_integer_tensors_are_never_cast(device):
    d, i, bl = _t((2,), F64, device), conch.arange(3, device=device), conch.ones(2, device=device) > 0
    with autocast(dtype=BF16):
        for op in ("matmul", "softmax", "add"):
            out = cast_for(op, d, i, bl)
            assert out[0] is d and out[1] is i and out[2] is bl
        # float64 does not take part in promotion either (PyTorch's rule): float16 stays float16
        h = _t((2,), F16, device)
        assert cast_for("add", h, d)[0] is h


def test_device_type_restricts_autocast(device):
    x = _t((2, 2), F32, device)
    other = "cuda" if device == "cpu" else "cpu"
    with autocast(dtype=BF16, device_type=other):
        assert cast_for("matmul", x)[0] is x
        assert conch.amp.is_autocast_enabled()
        assert not conch.amp.is_autocast_enabled(device)
    with autocast(dtype=BF16, device_type=device):
        assert cast_for("matmul", x)[0].dtype == BF16
    assert autocast(device_type="cpu").fast_dtype == BF16 and autocast(device_type="cuda").fast_dtype == F16


# ------------------------------------------------------------------ nesting, decorator, state


def test_nesting_and_opt_out():
    x = conch.randn(2, 2)
    with autocast(dtype=F16):
        with autocast(dtype=BF16):
            assert cast_for("matmul", x)[0].dtype == BF16
            with autocast(enabled=False):
                assert cast_for("matmul", x)[0] is x
                assert not conch.amp.is_autocast_enabled()
            assert cast_for("matmul", x)[0].dtype == BF16
        assert cast_for("matmul", x)[0].dtype == F16
    assert cast_for("matmul", x)[0] is x


def test_state_restored_after_exception():
    with pytest.raises(KeyError):
        with autocast(dtype=BF16):
            raise KeyError("boom")
    assert not conch.amp.is_autocast_enabled()


def test_decorator_and_reentry():
    ac = autocast(dtype=BF16)

    @ac
    def f(x, depth):
        inner = f(x, depth - 1) if depth else None
        return cast_for("matmul", x)[0].dtype, inner

    x = conch.randn(2)
    assert f(x, 2) == (BF16, (BF16, (BF16, None)))
    assert f.__name__ == "f"
    assert not conch.amp.is_autocast_enabled()
    with ac, ac:  # the same object entered twice
        assert conch.amp.is_autocast_enabled()
    assert not conch.amp.is_autocast_enabled()


def test_get_set_autocast_state():
    s0 = conch.amp.get_autocast_state()
    with autocast(dtype=BF16):
        s1 = conch.amp.get_autocast_state()
    conch.amp.set_autocast_state(s1)
    try:
        assert conch.amp.is_autocast_enabled() and conch.amp.get_autocast_dtype() == BF16
    finally:
        conch.amp.set_autocast_state(s0)
    with pytest.raises(TypeError, match="get_autocast_state"):
        conch.amp.set_autocast_state([True, BF16])


def test_bad_arguments():
    with pytest.raises(ValueError, match="float16 or conch.bfloat16"):
        autocast(dtype=F32)
    with pytest.raises(ValueError, match="device_type"):
        autocast(dtype=F16, device_type="tpu")
    with pytest.raises(TypeError, match="enabled"):
        autocast(dtype=F16, enabled="yes")
    with pytest.raises(ValueError, match="policy"):
        conch.amp.set_policy("my_op", "fp8")


def test_set_policy_for_a_custom_op():
    prev = conch.amp.set_policy("my_custom_op", LOW)
    try:
        with autocast(dtype=BF16):
            assert cast_for("my_custom_op", conch.randn(2))[0].dtype == BF16
    finally:
        del POLICY["my_custom_op"]
    assert prev == PROMOTE


def test_policy_lists_cover_the_contract():
    for op in ("matmul", "linear", "conv2d", "scaled_dot_product_attention", "einsum", "bmm"):
        assert conch.amp.policy_of(op) == LOW, op
    for op in ("softmax", "log_softmax", "cross_entropy", "nll_loss", "mse_loss", "l1_loss",
               "binary_cross_entropy_with_logits", "smooth_l1_loss", "huber_loss", "layer_norm", "rms_norm",
               "batch_norm", "sum", "mean", "var", "std", "norm", "exp", "log", "logsumexp", "pow"):  # fmt: skip
        assert conch.amp.policy_of(op) == FP32, op
    for op in ("add", "mul", "cat", "where"):
        assert conch.amp.policy_of(op) == PROMOTE, op


def test_docs_show_the_policy_table():
    doc = pathlib.Path(__file__).resolve().parents[1] / "docs" / "mixed_precision.md"
    assert conch.amp.policy_table() in doc.read_text(), "docs/mixed_precision.md is out of date with policy.py"


# ------------------------------------------------------------------ gradients reach float32 master weights


@pytest.mark.parametrize("dt", LOWS)
def test_gradients_flow_to_float32_master_weights(dt, device):
    rng = np.random.default_rng(1)
    xa, wa, ba = rng.standard_normal((5, 7)), rng.standard_normal((3, 7)) * 0.3, rng.standard_normal(3)
    ga = rng.standard_normal((5, 3))
    x = conch.tensor(xa, dtype=F32, device=device)
    w = conch.tensor(wa, dtype=F32, device=device, requires_grad=True)
    b = conch.tensor(ba, dtype=F32, device=device, requires_grad=True)
    with autocast(dtype=dt):
        cx, cw, cb = cast_for("linear", x, w, b)
        y = cx @ cw.T + cb
        assert y.dtype == dt
        (yf,) = cast_for("sum", y)
        assert yf.dtype == F32
    (yf * conch.tensor(ga, dtype=F32, device=device)).sum().backward()
    assert w.grad.dtype == F32 and b.grad.dtype == F32
    # float64 reference: dL/dW = gᵀ x, dL/db = Σ g; the low-precision forward/backward costs ~1e-2 relative
    tol = 3e-2 if dt == BF16 else 5e-3
    np.testing.assert_allclose(w.grad.cpu().numpy(), ga.T @ xa, rtol=tol, atol=tol * np.abs(ga.T @ xa).max())
    np.testing.assert_allclose(b.grad.cpu().numpy(), ga.sum(0), rtol=tol, atol=tol)


def test_cast_is_differentiable_in_float64_gradcheck():
    # the cast autocast inserts is Tensor.to(dtype): check its gradient in float64 -> float32 -> float64
    x = conch.randn(3, 4, dtype=F64, requires_grad=True)

    def f(t):
        (c,) = cast_for("softmax", t.to(dtype=F32))  # float32 -> float32 (FP32 policy) under autocast
        return c.to(dtype=F64) * 2

    with autocast(dtype=F16):
        assert conch.autograd.gradcheck(f, (x,), eps=1e-3, atol=1e-3, rtol=1e-2)


# ------------------------------------------------------------------ real ops once the lead wires cast_for in


def test_matmul_runs_in_autocast_dtype(device):
    a, b = _t((4, 3), F32, device), _t((3, 5), F32, device)
    with autocast(dtype=BF16):
        y = conch.matmul(a, b)
        y2 = a @ b
    assert y.dtype == BF16 and y2.dtype == BF16
    assert conch.matmul(a, b).dtype == F32


def test_softmax_runs_in_float32(device):
    h = _t((4, 3), BF16, device)
    with autocast(dtype=BF16):
        assert h.softmax(-1).dtype == F32
        assert h.log_softmax(-1).dtype == F32
    assert h.softmax(-1).dtype == BF16


def test_reductions_and_pointwise_run_in_float32(device):
    h = _t((4, 3), BF16, device)
    with autocast(dtype=BF16):
        assert h.sum().dtype == F32 and h.mean().dtype == F32
        assert h.var().dtype == F32 and h.std().dtype == F32
        assert h.exp().dtype == F32 and h.abs().log().dtype == F32
        assert h.pow(2).dtype == F32 and h.logsumexp(-1).dtype == F32


def test_nn_functional_wired_ops_follow_policy(device):
    F = pytest.importorskip("conch.nn.functional", reason="conch.nn not there yet")
    x, w, b = _t((4, 3), F32, device), _t((5, 3), F32, device), _t((5,), F32, device)
    target = conch.tensor([0, 1, 2, 4], device=device)
    with autocast(dtype=BF16):
        y = F.linear(x, w, b)
        assert y.dtype == BF16
        assert F.linear(x, w, b, activation="relu").dtype == BF16
        assert F.cross_entropy(y, target).dtype == F32
        assert F.softmax(y, -1).dtype == F32
        assert F.layer_norm(y, (5,)).dtype == F32


def test_nn_functional_pending_ops_follow_policy(device):
    F = pytest.importorskip("conch.nn.functional", reason="conch.nn not there yet")
    y = _t((4, 5), BF16, device)
    with autocast(dtype=BF16):
        assert F.mse_loss(y, y * 0).dtype == F32
        assert F.l1_loss(y, y * 0).dtype == F32
        assert F.binary_cross_entropy_with_logits(y, y * 0).dtype == F32
        q = _t((2, 3, 4), F32, device)
        assert F.scaled_dot_product_attention(q, q, q).dtype == BF16
        img, k = _t((1, 2, 5, 5), F32, device), _t((3, 2, 3, 3), F32, device)
        assert F.conv2d(img, k).dtype == BF16
