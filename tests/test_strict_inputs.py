"""Issue #13 items 4-5: values at degenerate points and kinks, and inputs PyTorch refuses, each against a
closed-form or NumPy reference."""

import numpy as np
import pytest

import conch
import conch.nn.functional as F


def npy(t):
    return t.detach().cpu().numpy()


def grads(fn, *values, device="cpu"):
    xs = [conch.tensor(v, requires_grad=True, device=device) for v in values]
    fn(*xs).sum().backward()
    return [npy(x.grad) for x in xs]


# ---------------------------------------------------------------- gradients at degenerate points


def test_std_gradient_is_zero_at_zero_variance(device):
    # d std/dx = (x - mean) / ((n - 1) std): 0/0 at a constant input, where PyTorch's std_backward gives 0
    (g,) = grads(lambda x: x.std(), [1.0, 1.0, 1.0], device=device)
    np.testing.assert_array_equal(g, np.zeros(3))
    (g,) = grads(lambda x: x.std(dim=0), [[1.0, 2.0], [1.0, 3.0]], device=device)
    np.testing.assert_allclose(g, [[0.0, -np.sqrt(0.5)], [0.0, np.sqrt(0.5)]], rtol=1e-6)
    (g,) = grads(lambda x: x.var(), [1.0, 1.0, 1.0], device=device)  # var was already 0 there
    np.testing.assert_array_equal(g, np.zeros(3))


def test_std_second_derivative_finite_at_zero_variance(device):
    x = conch.tensor([2.0, 2.0, 2.0], requires_grad=True, device=device)
    (g,) = conch.autograd.grad(x.std(), x, create_graph=True)
    (gg,) = conch.autograd.grad(g.sum(), x)
    assert np.isfinite(npy(gg)).all()


@pytest.mark.parametrize("kind", ["cross_entropy_weight", "nll_loss_weight", "cross_entropy_create_graph"])
def test_mean_loss_with_every_target_ignored(kind, device):
    # loss = Σ 0 / Σ 0 = NaN, as PyTorch; its gradient is 0 (nll_loss_backward writes nothing for ignored rows)
    x = conch.tensor(np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32), requires_grad=True,
                     device=device)  # fmt: skip
    y = conch.tensor([-100, -100, -100], device=device)
    w = conch.tensor([1.0, 2.0, 3.0, 4.0], device=device)
    if kind == "cross_entropy_weight":
        loss = F.cross_entropy(x, y, weight=w)
        loss.backward()
        g = x.grad
    elif kind == "nll_loss_weight":
        loss = F.nll_loss(x, y, weight=w)
        loss.backward()
        g = x.grad
    else:
        loss = F.cross_entropy(x, y)
        (g,) = conch.autograd.grad(loss, x, create_graph=True)
    assert np.isnan(npy(loss))
    np.testing.assert_array_equal(npy(g), np.zeros((3, 4)))


def test_cross_entropy_label_smoothing_every_target_ignored(device):
    x = conch.tensor(np.ones((2, 3), np.float32), requires_grad=True, device=device)
    loss = F.cross_entropy(x, conch.tensor([-100, -100], device=device), weight=conch.ones(3, device=device),
                           label_smoothing=0.1)  # fmt: skip
    loss.backward()
    assert np.isnan(npy(loss))
    np.testing.assert_array_equal(npy(x.grad), np.zeros((2, 3)))


def test_mean_loss_partly_ignored_unchanged(device):
    # the guard only acts when every target is ignored: -Σ w_t x_t / Σ w_t otherwise
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    w = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    loss = F.nll_loss(conch.tensor(x, device=device), conch.tensor([1, -100, 3], device=device),
                      weight=conch.tensor(w, device=device))  # fmt: skip
    np.testing.assert_allclose(npy(loss), -(2 * x[0, 1] + 4 * x[2, 3]) / 6, rtol=1e-6)


def test_atan2_gradient_zero_at_origin(device):
    # d/da atan2(a, b) = b / (a² + b²), d/db = -a / (a² + b²): 0/0 at (0, 0), where PyTorch gives 0
    ga, gb = grads(lambda a, b: conch.atan2(a, b), [0.0, 1.0], [0.0, 2.0], device=device)
    np.testing.assert_allclose(ga, [0.0, 2.0 / 5.0], rtol=1e-6)
    np.testing.assert_allclose(gb, [0.0, -1.0 / 5.0], rtol=1e-6)


# ---------------------------------------------------------------- values at kinks


def test_clamp_gradient_strict_at_bounds(device):
    # PyTorch 2.14's clamp with number bounds passes the gradient only where min < x < max: none at a bound,
    # none for NaN, none anywhere when min > max
    data = [-1.0, 0.0, 0.5, 1.0, 2.0, float("nan")]
    for lo, hi, want in [(0.0, 1.0, [0, 0, 1, 0, 0, 0]), (0.0, None, [0, 0, 1, 1, 1, 0]),
                         (None, 1.0, [1, 1, 1, 0, 0, 0]), (1.0, 0.0, [0] * 6)]:  # fmt: skip
        (g,) = grads(lambda x, lo=lo, hi=hi: x.clamp(lo, hi), data, device=device)
        np.testing.assert_array_equal(g, want, err_msg=f"clamp({lo}, {hi})")


def test_clamp_tensor_bounds_gradient_table(device):
    # Tensor bounds (PyTorch 2.14): one bound behaves as maximum/minimum (ties share, NaN feeds both sides);
    # with both, a tie with one bound of a proper range shares dy/2, lo == a == hi gives a all of it,
    # crossed bounds (lo > hi) send it to hi, a NaN bound stops it from reaching either bound.
    nan = float("nan")
    cases = [  # x, lo, hi, (dx, dlo, dhi)
        (0.0, 0.0, 1.0, (0.5, 0.5, 0.0)), (1.0, 0.0, 1.0, (0.5, 0.0, 0.5)), (0.5, 0.0, 1.0, (1.0, 0.0, 0.0)),
        (-1.0, 0.0, 1.0, (0.0, 1.0, 0.0)), (2.0, 0.0, 1.0, (0.0, 0.0, 1.0)), (0.0, 0.0, 0.0, (1.0, 0.0, 0.0)),
        (-1.0, 0.0, 0.0, (0.0, 1.0, 0.0)), (0.5, 1.0, 0.0, (0.0, 0.0, 1.0)), (nan, 1.0, 0.0, (1.0, 0.0, 1.0)),
        (nan, 0.0, 1.0, (1.0, 0.0, 0.0)), (-1.0, 0.0, nan, (0.0, 0.0, 0.0)), (0.0, 0.0, nan, (1.0, 0.0, 0.0)),
        (-1.0, nan, 0.0, (1.0, 0.0, 0.0)), (1.0, nan, 0.0, (0.0, 0.0, 0.0)),
    ]  # fmt: skip
    x, lo, hi = ([c[i] for c in cases] for i in range(3))
    gx, glo, ghi = grads(lambda a, b, c: a.clamp(b, c), x, lo, hi, device=device)
    want = np.array([c[3] for c in cases])
    np.testing.assert_array_equal(np.stack([gx, glo, ghi], 1), want)
    one = [(0.0, 0.0, (0.5, 0.5)), (-1.0, 0.0, (0.0, 1.0)), (1.0, 0.0, (1.0, 0.0)), (nan, 0.0, (1.0, 1.0)),
           (1.0, nan, (1.0, 1.0))]  # fmt: skip
    gx, glo = grads(lambda a, b: a.clamp(min=b), [c[0] for c in one], [c[1] for c in one], device=device)
    np.testing.assert_array_equal(np.stack([gx, glo], 1), [c[2] for c in one])
    gx, ghi = grads(lambda a, c: a.clamp(max=c), [-c[0] for c in one], [-c[1] for c in one], device=device)
    np.testing.assert_array_equal(np.stack([gx, ghi], 1), [c[2] for c in one])


def test_hardtanh_relu6_gradient_zero_at_bounds(device):
    # PyTorch's hardtanh_backward (relu6 is hardtanh(0, 6)) passes the gradient only where min < x < max
    (g,) = grads(lambda x: F.hardtanh(x), [-2.0, -1.0, 0.5, 1.0, 2.0], device=device)
    np.testing.assert_array_equal(g, [0, 0, 1, 0, 0])
    (g,) = grads(lambda x: F.relu6(x), [-1.0, 0.0, 3.0, 6.0, 7.0], device=device)
    np.testing.assert_array_equal(g, [0, 0, 1, 0, 0])
    (g,) = grads(lambda x: conch.nn.Hardtanh(-2.0, 2.0)(x), [-2.0, 0.0, 2.0], device=device)
    np.testing.assert_array_equal(g, [0, 1, 0])
    out = F.relu6(conch.tensor([-1.0, 0.0, 3.0, 6.0, 7.0], device=device))
    np.testing.assert_array_equal(npy(out), [0, 0, 3, 6, 6])


def test_hardsigmoid_hardswish_gradients_at_kinks(device):
    # PyTorch 2.14: hardsigmoid_backward is 1/6 for -3 < x < 3 only (none for NaN); hardswish_backward is
    # 0 for x <= -3, x/3 + 1/2 for -3 < x < 3 and 1 for x >= 3
    (g,) = grads(lambda x: F.hardsigmoid(x), [-3.0, 0.0, 3.0, float("nan")], device=device)
    np.testing.assert_allclose(g, [0, 1 / 6, 0, 0], rtol=1e-6)
    (g,) = grads(lambda x: F.hardswish(x), [-3.0, -1.5, 0.0, 3.0, 4.0], device=device)
    np.testing.assert_allclose(g, [0.0, 0.0, 0.5, 1.0, 1.0], rtol=1e-6)


def test_prelu_gradient_at_zero(device):
    # out = x if x > 0 else w·x: at 0 the input gradient is w (not 1 + w) and the weight's is x = 0
    gx, gw = grads(lambda x, w: F.prelu(x, w), [0.0, -1.0, 2.0], [0.25], device=device)
    np.testing.assert_allclose(gx, [0.25, 0.25, 1.0])
    np.testing.assert_allclose(gw, [-1.0])
    out = F.prelu(conch.tensor([0.0, -1.0, 2.0], device=device), conch.tensor([0.25], device=device))
    np.testing.assert_allclose(npy(out), [0.0, -0.25, 2.0])


def test_sign_of_nan_is_nan(device):
    out = conch.tensor([float("nan"), 2.0, -3.0, 0.0], device=device).sign()
    np.testing.assert_array_equal(npy(out), np.sign(np.array([np.nan, 2.0, -3.0, 0.0])))


def _nan_last_desc_reference(a):
    """PyTorch's descending order: NaNs first (in input order), then the rest largest first, ties stable."""
    nan = np.flatnonzero(np.isnan(a))
    rest = np.flatnonzero(~np.isnan(a))
    return np.concatenate([nan, rest[np.argsort(-a[rest], kind="stable")]])


@pytest.mark.parametrize("dt", ["float32", "float16", "float64"])
def test_sort_topk_treat_nan_as_largest(dt, device):
    a = np.array([1.0, np.nan, np.inf, 3.0, np.nan, -np.inf, 3.0], dtype=dt)
    x = conch.tensor(a, device=device)
    v, i = x.sort(descending=True)
    ref = _nan_last_desc_reference(a)
    np.testing.assert_array_equal(npy(i), ref)
    np.testing.assert_array_equal(npy(v), a[ref])
    v, i = x.sort()
    np.testing.assert_array_equal(npy(i), np.argsort(a, kind="stable"))  # NaN last ascending, as NumPy
    v, i = x.topk(3)
    np.testing.assert_array_equal(npy(i), ref[:3])
    v, i = x.topk(2, largest=False)
    np.testing.assert_array_equal(npy(i), [5, 0])


def test_max_amax_argmax_propagate_nan(device):
    a = np.array([[1.0, np.nan, 3.0], [2.0, 5.0, 4.0]], np.float32)
    x = conch.tensor(a, device=device)
    assert np.isnan(npy(x.max())) and np.isnan(npy(x.amax())) and np.isnan(npy(x.min()))
    v, i = x.max(dim=1)
    np.testing.assert_array_equal(npy(v), [np.nan, 5.0])
    np.testing.assert_array_equal(npy(i), [1, 1])
    np.testing.assert_array_equal(npy(x.argmax(dim=1)), [1, 1])
    np.testing.assert_array_equal(npy(x.argmin(dim=1)), [1, 0])


def test_median_lower_value_and_nan(device):
    # lower median (the ⌊(n-1)/2⌋-th smallest); a slice holding NaN gives NaN and its first NaN's index
    a = np.array([[1.0, np.nan, 3.0, np.nan], [4.0, 1.0, 2.0, 2.0], [3.0, 1.0, 1.0, 3.0]], np.float32)
    v, i = conch.tensor(a, device=device).median(dim=1)
    np.testing.assert_array_equal(npy(v), [np.nan, 2.0, 1.0])
    np.testing.assert_array_equal(npy(i)[:1], [1])
    np.testing.assert_array_equal(a[[1, 2], npy(i)[1:]], [2.0, 1.0])  # the index points at the median value
    assert np.isnan(npy(conch.tensor(a, device=device).median()))
    assert npy(conch.tensor([1.0, 2.0, 3.0, 4.0], device=device).median()) == 2.0


# ---------------------------------------------------------------- inputs PyTorch refuses


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: x + None,
        lambda x: None + x,
        lambda x: x * "a",
        lambda x: x + [1.0, 2.0],
        lambda x: [1.0, 2.0] + x,
        lambda x: x - (1.0, 2.0),
        lambda x: conch.maximum(x, [1.0, 2.0]),
        lambda x: x @ [1.0, 2.0],
        lambda x: x.matmul([1.0, 2.0]),
    ],
)
def test_binary_ops_refuse_none_lists_and_strings(fn, device):
    with pytest.raises(TypeError):
        fn(conch.tensor([1.0, 2.0], device=device))


def test_binary_ops_still_take_numbers_and_arrays(device):
    x = conch.tensor([1.0, 2.0], device=device)
    np.testing.assert_allclose(npy(x + 1), [2.0, 3.0])
    np.testing.assert_allclose(npy(x + np.float32(1)), [2.0, 3.0])
    np.testing.assert_allclose(npy(x + np.array([1.0, 1.0], np.float32)), [2.0, 3.0])


def test_tensor_refuses_none_and_strings():
    with pytest.raises(RuntimeError, match="Could not infer dtype of NoneType"):
        conch.tensor(None)
    with pytest.raises(TypeError):
        conch.tensor([1.0, None])
    with pytest.raises(TypeError):
        conch.tensor(["a", "b"])
    with pytest.raises(TypeError):
        conch.tensor("3")
    with pytest.raises(TypeError):
        conch.tensor(np.array(["a", "b"]))
    with pytest.raises(TypeError):
        conch.tensor(np.array([1, "a"], dtype=object))
    assert conch.tensor(np.array([1.5], dtype=conch.bfloat16)).dtype == conch.bfloat16  # kind "V", still numeric


def test_gather_refuses_lists_and_negative_indices(device):
    x = conch.tensor([1.0, 2.0], device=device)
    with pytest.raises(TypeError, match="argument 'index' must be Tensor, not list"):
        conch.gather(x, 0, [0, 1])
    with pytest.raises(RuntimeError, match="index -1 is out of bounds for dimension 0 with size 2"):
        conch.gather(x, 0, conch.tensor([-1], device=device))
        conch.cuda.synchronize() if device != "cpu" else None
    with pytest.raises(RuntimeError, match="out of bounds"):  # PyTorch's type (the CPU's and the GPU's assert)
        x.index_select(0, conch.tensor([-1], device=device))
        conch.cuda.synchronize() if device != "cpu" else None
    np.testing.assert_array_equal(npy(conch.gather(x, 0, conch.tensor([1, 0, 1], device=device))), [2.0, 1.0, 2.0])


def test_cat_and_where_refuse_non_sequences(device):
    x = conch.ones(2, 2, device=device)
    with pytest.raises(TypeError, match="must be tuple of Tensors, not Tensor"):
        conch.cat(x)
    with pytest.raises(TypeError, match="expected Tensor as element 1"):
        conch.cat([x, [[1.0, 2.0]]])
    with pytest.raises(TypeError, match="argument 'condition'"):
        conch.where(True, x, x)
    np.testing.assert_array_equal(npy(conch.cat((x, x))), np.ones((4, 2)))


def test_dims_and_sizes_must_be_ints(device):
    with pytest.raises(TypeError, match="dim"):
        conch.ones(2, 2, device=device).sum(dim=1.5)
    with pytest.raises(TypeError, match="dim"):
        conch.ones(2, 2, device=device).sum(dim=(0, 1.5))
    with pytest.raises(
        TypeError, match=r"zeros\(\): argument 'size' must be tuple of ints, but found element of type str"
    ):
        conch.zeros("3")
    with pytest.raises(TypeError, match="size"):
        conch.ones(2.5)
    with pytest.raises(TypeError, match="size"):
        conch.ones(2, 2, device=device).reshape(2.0, 2)
    np.testing.assert_array_equal(npy(conch.ones(2, 2, device=device).sum(dim=1)), [2.0, 2.0])
    assert conch.zeros(np.int64(3)).shape == (3,)


@pytest.mark.parametrize("make", [lambda: conch.zeros(-1), lambda: conch.randn(2, -3), lambda: conch.full((-1,), 1.0)])
def test_negative_sizes_are_runtime_errors(make):
    with pytest.raises(RuntimeError, match="Trying to create tensor with negative dimension"):
        make()


def test_split_zero_and_unknown_device_are_runtime_errors(device):
    with pytest.raises(RuntimeError, match="split_size can only be 0 if dimension size is 0"):
        conch.ones(4, device=device).split(0)
    with pytest.raises(RuntimeError, match="non-negative"):
        conch.ones(4, device=device).split(-1)
    assert len(conch.ones(0, device=device).split(0)) == 1
    with pytest.raises(RuntimeError, match="tpu"):
        conch.zeros(2, device="tpu")


@pytest.mark.parametrize("op", [lambda a, b: a // b, lambda a, b: a % b])
def test_integer_division_by_zero_raises(op, device):
    a = conch.tensor([1, 2], device=device)
    for b in (0, conch.tensor([0, 1], device=device)):
        with pytest.raises(RuntimeError, match="ZeroDivisionError"):
            op(a, b)
            conch.cuda.synchronize() if device != "cpu" else None
    np.testing.assert_array_equal(npy(op(a, 2)), op(np.array([1, 2]), 2))
    f = npy(op(conch.tensor([1.0, -1.0], device=device), 0.0))  # floats: inf/nan as IEEE, no error
    assert not np.isfinite(f).all()


def test_mixed_dtype_matmul_linear_conv_raise(device):
    a = conch.ones(2, 2, device=device)
    b = conch.ones(2, 2, dtype=conch.float64, device=device)
    with pytest.raises(RuntimeError, match="expected m1 and m2 to have the same dtype, but got: float != double"):
        a @ b
    with pytest.raises(RuntimeError, match="expected m1 and m2 to have the same dtype, but got: float != double"):
        F.linear(a, b)
    with pytest.raises(RuntimeError, match="same dtype"):
        F.linear(a, a, conch.ones(2, dtype=conch.float64, device=device))
    with pytest.raises(RuntimeError, match="expected scalar type Float but found Double"):
        F.conv2d(conch.ones(1, 1, 3, 3, device=device), conch.ones(1, 1, 2, 2, dtype=conch.float64, device=device))
    with pytest.raises(RuntimeError, match="same dtype"):
        conch.tensor([[1, 2]], dtype=conch.int32, device=device) @ conch.tensor([[3], [4]], device=device)
    with conch.amp.autocast(device_type="cuda" if device != "cpu" else "cpu", dtype=conch.bfloat16):
        out = a @ conch.ones(2, 2, dtype=conch.bfloat16, device=device)  # autocast casts both: no error
    assert out.dtype == conch.bfloat16


def test_functional_names_a_non_tensor_argument():
    for fn in (F.relu, F.gelu, F.relu6, F.hardtanh, F.sigmoid):
        with pytest.raises(TypeError, match="must be"):
            fn([1.0, 2.0])


# ---------------------------------------------------------------- half precision and overflow


def test_gelu_tanh_fp16_double_backward_finite_beyond_40(device):
    # x³ overflows float16 for |x| > 40; the create_graph path computes in float32 as the kernel does.
    # Reference: GELU-tanh's derivatives in float64 (0 and 1 far out, both finite)
    v = np.array([-300.0, -60.0, -41.0, 0.5, 41.0, 60.0, 300.0])
    x = conch.tensor(v, dtype=conch.float16, requires_grad=True, device=device)
    y = F.gelu(x, approximate="tanh")
    (g,) = conch.autograd.grad(y.sum(), x, create_graph=True)
    (gg,) = conch.autograd.grad(g.sum(), x)
    c = np.sqrt(2 / np.pi)
    u = c * (v + 0.044715 * v**3)
    t = np.tanh(u)
    du = c * (1 + 3 * 0.044715 * v**2)
    ref_g = 0.5 * (1 + t) + 0.5 * v * (1 - t**2) * du
    np.testing.assert_allclose(npy(g).astype(np.float64), ref_g, atol=2e-3)
    assert np.isfinite(npy(gg).astype(np.float64)).all()


def test_linear_leaky_relu_fp16_create_graph_uses_float32_preactivation(device):
    # x @ wᵀ + b = 0.5003662 - 0.500488 < 0 in float32 (the kernel's epilogue), but rounds to exactly 0 in float16,
    # where the composite's leaky_relu has gradient 0 instead of the slope: both paths must agree
    x = conch.tensor([[1.0, 1.0]], dtype=conch.float16, requires_grad=True, device=device)
    w = conch.tensor([[0.5, 0.0003662]], dtype=conch.float16, device=device)
    b = conch.tensor([-0.500488], dtype=conch.float16, device=device)
    y = F.linear(x, w, b, activation="leaky_relu")
    (g_kernel,) = conch.autograd.grad(y.sum(), x, retain_graph=True)
    (g_graph,) = conch.autograd.grad(y.sum(), x, create_graph=True)
    ref = 0.01 * np.array([[0.5, 0.0003662]])
    np.testing.assert_allclose(npy(g_kernel).astype(np.float64), ref, rtol=1e-2)
    np.testing.assert_allclose(npy(g_graph).astype(np.float64), ref, rtol=1e-2)


def test_layer_norm_overflowing_row_is_nan():
    # float32 [3e38, -3e38, 1]: the spread overflows; PyTorch's Welford moments give NaN, not finite zeros
    out = npy(F.layer_norm(conch.tensor([[3e38, -3e38, 1.0], [1.0, 2.0, 3.0]]), (3,)))
    assert np.isnan(out[0]).all()
    np.testing.assert_allclose(out[1], [-np.sqrt(1.5), 0.0, np.sqrt(1.5)], rtol=1e-4)
