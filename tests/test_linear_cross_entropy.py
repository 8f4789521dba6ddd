"""F.linear_cross_entropy and nn.LinearCrossEntropyLoss: float64 NumPy, gradcheck, the unfused composition, PyTorch,
autocast, errors and the chunked path's peak memory."""

import gc
import tracemalloc

import numpy as np
import pytest

import conch
import conch.nn.functional as F
from conch import nn

REDUCTIONS = ["mean", "sum", "none"]


def np_reference(x, w, b, t, ignore_index=-100, label_smoothing=0.0, reduction="mean"):
    """Loss of the unfused composition in float64: log-softmax of x wᵀ + b, then the smoothed NLL."""
    x = np.asarray(x, np.float64).reshape(-1, w.shape[1])
    z = x @ np.asarray(w, np.float64).T
    if b is not None:
        z = z + np.asarray(b, np.float64)
    logp = z - z.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    t = np.asarray(t).reshape(-1)
    keep = t != ignore_index
    nll = -logp[np.arange(len(t)), np.where(keep, t, 0)]
    per = ((1 - label_smoothing) * nll - label_smoothing * logp.mean(1)) * keep
    if reduction == "none":
        return per
    return per.sum() if reduction == "sum" else per.sum() / keep.sum()


def _inputs(rng, lead, d, v, dtype=conch.float64, bias=True, device="cpu", n_ignored=2):
    x = conch.tensor(rng.standard_normal(lead + (d,)), dtype=dtype, device=device, requires_grad=True)
    w = conch.tensor(rng.standard_normal((v, d)) / np.sqrt(d), dtype=dtype, device=device, requires_grad=True)
    b = conch.tensor(rng.standard_normal(v), dtype=dtype, device=device, requires_grad=True) if bias else None
    t = rng.integers(0, v, lead)
    t.reshape(-1)[rng.permutation(t.size)[:n_ignored]] = -100
    return x, w, b, conch.tensor(t, device=device)


def _np(t):
    return None if t is None else t.detach().cpu().numpy().astype(np.float64)


def _grads(loss, params, g=None):
    return conch.autograd.grad(loss, [p for p in params if p is not None], g)


# ---- values and gradients against float64 NumPy --------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("eps", [0.0, 0.15])
def test_loss_matches_float64_numpy(device, reduction, bias, eps):
    rng = np.random.default_rng(1)
    x, w, b, t = _inputs(rng, (3, 7), 5, 11, bias=bias, device=device)
    loss = F.linear_cross_entropy(x, w, t, b, label_smoothing=eps, reduction=reduction, chunk_size=4)
    want = np_reference(_np(x), _np(w), _np(b), t.cpu().numpy(), label_smoothing=eps, reduction=reduction)
    assert loss.dtype == conch.float64 and loss.shape == ((3, 7) if reduction == "none" else ())
    np.testing.assert_allclose(_np(loss).reshape(np.shape(want)), want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradients_match_finite_differences(reduction):
    rng = np.random.default_rng(2)
    x, w, b, t = _inputs(rng, (2, 3), 4, 7)
    upstream = conch.tensor(rng.standard_normal((2, 3)))  # random upstream gradients for 'none'

    def f(x, w, b):
        loss = F.linear_cross_entropy(x, w, t, b, label_smoothing=0.1, reduction=reduction, chunk_size=4)
        return (loss * upstream).sum() if reduction == "none" else loss

    assert conch.autograd.gradcheck(f, (x, w, b))
    assert conch.autograd.gradgradcheck(f, (x, w, b))  # create_graph: the composite formula


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradients_match_the_float64_composition_with_random_upstream(device, reduction):
    # against the unfused conch composition (itself gradchecked elsewhere), at a size with many chunks
    rng = np.random.default_rng(3)
    x, w, b, t = _inputs(rng, (5, 9), 6, 13, device=device, n_ignored=5)
    fused = F.linear_cross_entropy(x, w, t, b, ignore_index=-100, label_smoothing=0.05, reduction=reduction,
                                   chunk_size=7)  # fmt: skip
    plain = F.cross_entropy(F.linear(x, w, b).reshape(45, 13), t.reshape(45), label_smoothing=0.05,
                            reduction=reduction)  # fmt: skip
    g = conch.tensor(rng.standard_normal(fused.shape), device=device)
    for a, e in zip(_grads(fused, [x, w, b], g), _grads(plain, [x, w, b], g.reshape(plain.shape))):
        np.testing.assert_allclose(_np(a), _np(e), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("which", ["loss", "logits", "both"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_return_logits_values_and_gradients(device, reduction, which, bias):
    # the logits copied out of the loss's chunk products: values against float64 NumPy, and gradients through
    # the loss, the logits or both (random upstream for each) against the float64 unfused composition
    rng = np.random.default_rng(12)
    x, w, b, t = _inputs(rng, (3, 5), 6, 9, bias=bias, device=device)
    loss, logits = F.linear_cross_entropy(x, w, t, b, label_smoothing=0.1, reduction=reduction, chunk_size=4,
                                          return_logits=True)  # fmt: skip
    want_z = _np(x) @ _np(w).T + (0 if b is None else _np(b))
    assert logits.shape == (3, 5, 9) and logits.dtype == x.dtype
    np.testing.assert_allclose(_np(logits), want_z, rtol=1e-12, atol=1e-13)
    want = np_reference(_np(x), _np(w), _np(b), t.cpu().numpy(), label_smoothing=0.1, reduction=reduction)
    np.testing.assert_allclose(_np(loss).reshape(np.shape(want)), want, rtol=1e-12, atol=1e-14)
    gl = conch.tensor(rng.standard_normal(loss.shape), device=device)
    gz = conch.tensor(rng.standard_normal((3, 5, 9)), device=device)
    z = F.linear(x, w, b)
    plain = F.cross_entropy(z.reshape(15, 9), t.reshape(15), label_smoothing=0.1, reduction=reduction)
    outs, ref_outs, ups = {"loss": ([loss], [plain], [gl]), "logits": ([logits], [z], [gz]),
                           "both": ([loss, logits], [plain, z], [gl, gz])}[which]  # fmt: skip
    params = [p for p in (x, w, b) if p is not None]
    got = conch.autograd.grad(outs, params, ups)
    ref = conch.autograd.grad(ref_outs, params, [u.reshape(o.shape) for u, o in zip(ups, ref_outs)])
    for a, e in zip(got, ref):
        np.testing.assert_allclose(_np(a), _np(e), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_zero_rows_give_zero_weight_gradients(device, reduction):
    # no row, no chunk: dW and db are zeros (the CPU path leaves dW to its first chunk to write otherwise)
    w = conch.tensor(np.full((5, 4), 3.0), device=device, requires_grad=True)
    b = conch.tensor(np.ones(5), device=device, requires_grad=True)
    x = conch.zeros(0, 4, dtype=conch.float64, device=device, requires_grad=True)
    for _ in range(3):  # fresh allocations each time: garbage would show up in one of them
        loss = F.linear_cross_entropy(x, w, conch.zeros(0, dtype=conch.int64, device=device), b, reduction=reduction)
        gw, gb = conch.autograd.grad(loss, [w, b])
        np.testing.assert_array_equal(gw.cpu().numpy(), np.zeros((5, 4)))
        np.testing.assert_array_equal(gb.cpu().numpy(), np.zeros(5))


def test_return_logits_gradcheck():
    # float64 finite differences through both outputs, and the create_graph composite (second derivatives)
    rng = np.random.default_rng(13)
    x, w, b, t = _inputs(rng, (2, 3), 4, 5)
    up = conch.tensor(rng.standard_normal((2, 3, 5)))

    def f(x, w, b):
        loss, z = F.linear_cross_entropy(x, w, t, b, label_smoothing=0.1, chunk_size=4, return_logits=True)
        return loss + (z * z * up).sum()

    assert conch.autograd.gradcheck(f, (x, w, b))
    assert conch.autograd.gradgradcheck(f, (x, w, b))


def test_return_logits_runs_one_projection(monkeypatch):
    # the logits come from the loss's own chunk products: one forward product per chunk, none for the logits
    from conch.kernels import matmul

    calls = []
    real = matmul.matmul_forward
    monkeypatch.setattr(matmul, "matmul_forward", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    rng = np.random.default_rng(14)
    x, w, b, t = _inputs(rng, (8,), 4, 6)
    F.linear_cross_entropy(x, w, t, b, chunk_size=3, return_logits=True)
    assert len(calls) == 3


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_backward_twice_with_retain_graph(device, reduction):
    # the gradients computed in the forward are handed to the first backward (scaled in place, no copy):
    # a second backward must recompute them, not reuse or rescale the first one's
    rng = np.random.default_rng(10)
    x, w, b, t = _inputs(rng, (9,), 4, 6, device=device)
    loss = F.linear_cross_entropy(x, w, t, b, reduction=reduction, chunk_size=4)
    first = [_np(g) for g in conch.autograd.grad(loss * 3.0, [x, w, b], retain_graph=True)]
    second = [_np(g) for g in conch.autograd.grad(loss * 0.5, [x, w, b])]
    for a, c in zip(first, second):
        np.testing.assert_allclose(c * 6.0, a, rtol=1e-12, atol=1e-15)


def test_non_contiguous_inputs(device):
    rng = np.random.default_rng(11)
    xt = conch.tensor(rng.standard_normal((5, 13)), device=device, requires_grad=True)
    wt = conch.tensor(rng.standard_normal((10, 5)), device=device, requires_grad=True)
    x, w = xt.t(), wt.t()[:, ::2]  # (13, 5) transposed and (5, 5) strided views: D = 5, V = 5
    t = conch.tensor(rng.integers(0, 5, 13), device=device)
    loss = F.linear_cross_entropy(x, w.t(), t, chunk_size=4)
    plain = F.cross_entropy(F.linear(x, w.t()), t)
    np.testing.assert_allclose(loss.item(), plain.item(), rtol=1e-12)
    for a, e in zip(_grads(loss, [xt, wt]), _grads(plain, [xt, wt])):
        np.testing.assert_allclose(_np(a), _np(e), rtol=1e-10, atol=1e-14)


def test_all_targets_ignored(device):
    rng = np.random.default_rng(4)
    x, w, b, t = _inputs(rng, (4,), 3, 5, device=device)
    t = conch.full((4,), -1, dtype=conch.int64, device=device)
    loss = F.linear_cross_entropy(x, w, t, b, ignore_index=-1)
    assert np.isnan(loss.item())  # PyTorch: mean over no target is NaN
    loss.backward()
    assert not x.grad.cpu().numpy().any() and not w.grad.cpu().numpy().any() and not b.grad.cpu().numpy().any()
    assert F.linear_cross_entropy(x, w, t, b, ignore_index=-1, reduction="sum").item() == 0.0


# ---- dtypes and autocast ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_low_precision_matches_the_unfused_composition(device, dtype):
    rng = np.random.default_rng(5)
    dt = getattr(conch, dtype)
    x, w, b, t = _inputs(rng, (6, 5), 16, 40, dtype=dt, device=device)
    fused = F.linear_cross_entropy(x, w, t, b, chunk_size=8)
    plain = F.cross_entropy(F.linear(x, w, b).reshape(30, 40), t.reshape(30))
    assert fused.dtype == plain.dtype == conch.float32
    tol = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 2e-2}[dtype]
    np.testing.assert_allclose(fused.item(), plain.item(), rtol=tol)
    for a, e in zip(_grads(fused, [x, w, b]), _grads(plain, [x, w, b])):
        assert a.dtype == dt
        np.testing.assert_allclose(_np(a), _np(e), rtol=4 * tol, atol=4 * tol * np.abs(_np(e)).max())


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_autocast_projects_in_the_autocast_dtype(device, dtype):
    rng = np.random.default_rng(6)
    x, w, b, t = _inputs(rng, (12,), 8, 30, dtype=conch.float32, device=device)
    dt = getattr(conch, dtype)
    with conch.autocast(device.split(":")[0], dtype=dt):
        fused = F.linear_cross_entropy(x, w, t, b, chunk_size=5)
        plain = F.cross_entropy(F.linear(x, w, b), t)
    assert fused.dtype == conch.float32
    # the same casts as the unfused composition: x, w, b rounded to the autocast dtype, the loss in float32
    np.testing.assert_allclose(fused.item(), plain.item(), rtol=1e-3)
    for a, e in zip(_grads(fused, [x, w, b]), _grads(plain, [x, w, b])):
        assert a.dtype == conch.float32  # through the cast back to the float32 leaves
        np.testing.assert_allclose(_np(a), _np(e), rtol=2e-2, atol=2e-2 * np.abs(_np(e)).max())
    exact = np_reference(_np(x), _np(w), _np(b), t.cpu().numpy())
    assert abs(fused.item() - exact) > 0 and abs(fused.item() - exact) < 3e-2 * abs(exact)


# ---- the module -------------------------------------------------------------------------------------------------


def test_module_equals_the_function(device):
    rng = np.random.default_rng(7)
    x, w, b, t = _inputs(rng, (2, 4), 3, 6, device=device)
    loss_fn = nn.LinearCrossEntropyLoss(ignore_index=-100, label_smoothing=0.1, reduction="sum")
    got = loss_fn(x, w, t, bias=b)
    want = F.linear_cross_entropy(x, w, t, b, label_smoothing=0.1, reduction="sum")
    assert got.item() == want.item()
    assert "label_smoothing=0.1" in repr(loss_fn) and "reduction=sum" in repr(loss_fn)
    lin = nn.Linear(3, 6).to(device).double()
    got = nn.LinearCrossEntropyLoss()(x, lin.weight, t, lin.bias)
    np.testing.assert_allclose(got.item(), F.cross_entropy(lin(x).reshape(8, 6), t.reshape(8)).item(), rtol=1e-12)
    with pytest.raises(ValueError, match="reduction"):
        nn.LinearCrossEntropyLoss(reduction="batchmean")


# ---- errors -------------------------------------------------------------------------------------------------------


def test_errors_name_shapes_and_dtypes():
    x, w, t = conch.randn(4, 3), conch.randn(5, 3), conch.tensor([0, 1, 2, 3])
    with pytest.raises(RuntimeError, match=r"input \(4, 2\).*weight \(5, 3\)"):
        F.linear_cross_entropy(x[:, :2], w, t)
    with pytest.raises(RuntimeError, match=r"bias \(4,\)"):
        F.linear_cross_entropy(x, w, t, conch.randn(4))
    with pytest.raises(ValueError, match=r"expected target of shape \(4,\).*got \(3,\)"):
        F.linear_cross_entropy(x, w, t[:3])
    with pytest.raises(RuntimeError, match="integer class targets.*float32"):
        F.linear_cross_entropy(x, w, t.float())
    with pytest.raises(RuntimeError, match="one dtype.*float32.*float64"):
        F.linear_cross_entropy(x, w.double(), t)
    with pytest.raises(IndexError, match="Target 5 is out of bounds"):
        F.linear_cross_entropy(x, w, conch.tensor([0, 5, 1, 1]))
    with pytest.raises(ValueError, match="reduction"):
        F.linear_cross_entropy(x, w, t, reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        F.linear_cross_entropy(x, w, t, label_smoothing=1.5)
    with pytest.raises(ValueError, match="chunk_size"):
        F.linear_cross_entropy(x, w, t, chunk_size=0)
    with pytest.raises(TypeError, match="argument 'weight'"):
        F.linear_cross_entropy(x, w.numpy(), t)


def test_inplace_write_after_forward_is_caught():
    x = conch.randn(4, 3, requires_grad=True)
    h = x * 2.0
    w = conch.randn(5, 3, requires_grad=True)
    loss = F.linear_cross_entropy(h, w, conch.tensor([0, 1, 2, 3]), reduction="none")
    h.add_(1.0)  # the backward of 'none' reads h again
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.sum().backward()


def test_no_gradient_work_without_grad(monkeypatch):
    from conch.kernels import linear_cross_entropy as klce

    def refuse(*a, **k):
        raise AssertionError("a gradient was computed although nothing requires grad")

    monkeypatch.setattr(klce.mm, "matmul_backward", refuse)
    x, w, t = conch.randn(6, 3), conch.randn(5, 3), conch.tensor([0, 1, 2, 3, 4, 0])
    z = x.numpy().astype(np.float64) @ w.numpy().T.astype(np.float64)
    lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    want = float(np.mean(lse - z[np.arange(6), t.numpy()]))
    loss = F.linear_cross_entropy(x, w, t)  # refuse() raises if any gradient is computed
    assert not loss.requires_grad and abs(loss.item() - want) < 1e-5
    with conch.no_grad():
        loss = F.linear_cross_entropy(x.requires_grad_(), w, t)
    assert not loss.requires_grad and abs(loss.item() - want) < 1e-5


# ---- memory: the chunked path never holds the logits (tracemalloc counts NumPy's allocations; deterministic) ----


def test_peak_memory_is_well_below_the_logits():
    rng = np.random.default_rng(8)
    n, d, v = 2048, 32, 2048
    x = conch.tensor(rng.standard_normal((n, d)), dtype=conch.float32, requires_grad=True)
    w = conch.tensor(rng.standard_normal((v, d)) * 0.1, dtype=conch.float32, requires_grad=True)
    t = conch.tensor(rng.integers(0, v, n))
    logits_bytes = n * v * 4  # 16 MiB

    def peak(fn):
        x.grad = w.grad = None
        gc.collect()
        tracemalloc.start()
        try:
            fn().backward()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    def fused_fn():
        return F.linear_cross_entropy(x, w, t, chunk_size=128)

    def plain_fn():
        return F.cross_entropy(F.linear(x, w), t)

    # first calls, not counted: module imports, and the compiled CPU kernels (kernels/_numba) loading their
    # machine code from Numba's disk cache (megabytes of Python objects that tracemalloc sees, once per process)
    fused_fn().backward()
    plain_fn().backward()
    fused = peak(fused_fn)
    g_fused = (_np(x.grad), _np(w.grad))
    plain = peak(plain_fn)
    assert plain > logits_bytes  # the unfused path holds the logits (and more): the measurement sees them
    assert fused < logits_bytes / 5, (fused, logits_bytes)
    np.testing.assert_allclose(g_fused[0], _np(x.grad), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(g_fused[1], _np(w.grad), rtol=1e-4, atol=1e-7)
    # the default budget (here MIN_CHUNK_BYTES: 512 rows, a quarter of the logits): a few chunk-sized temporaries
    from conch.kernels.linear_cross_entropy import chunk_rows

    chunk_bytes = chunk_rows(n, d, v) * v * 4
    assert chunk_bytes <= logits_bytes / 4
    default = peak(lambda: F.linear_cross_entropy(x, w, t))
    assert default < 3 * chunk_bytes, (default, chunk_bytes)


# ---- PyTorch parity ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matches_pytorch(reduction, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(9)
    x, w, b, t = _inputs(rng, (3, 5), 8, 17, dtype=getattr(conch, dtype), n_ignored=3)
    kw = dict(ignore_index=-100, label_smoothing=0.2, reduction=reduction)
    loss = F.linear_cross_entropy(x, w, t, b, chunk_size=4, **kw)
    tx, tw, tb = (torch.tensor(_np(a), dtype=getattr(torch, dtype), requires_grad=True) for a in (x, w, b))
    tl = torch.nn.functional.cross_entropy(
        torch.nn.functional.linear(tx, tw, tb).reshape(15, 17), torch.tensor(t.numpy()).reshape(15), **kw
    )
    g = rng.standard_normal(loss.shape)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == "float32" else dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(_np(loss), tl.detach().numpy().reshape(loss.shape), **tol)
    ours = _grads(loss, [x, w, b], conch.tensor(g, dtype=loss.dtype))
    theirs = torch.autograd.grad(tl, [tx, tw, tb], torch.tensor(g, dtype=tl.dtype).reshape(tl.shape))
    for a, e in zip(ours, theirs):
        np.testing.assert_allclose(_np(a), e.numpy(), **tol)


# ---- the benchmark script and its `conch bench` family (tiny sizes: checks the plumbing, times nothing) --------


def test_benchmark_writes_ratio_rows_and_its_cases_check(tmp_path, monkeypatch, capsys):
    import json
    from pathlib import Path

    bench_dir = Path(__file__).resolve().parent.parent / "benchmarks"
    monkeypatch.syspath_prepend(str(bench_dir))
    import bench_linear_cross_entropy as blce
    import harness

    out = tmp_path / "lce.json"
    assert blce.main(["--device", "cpu", "--tokens", "64", "--dim", "8", "--vocab", "300", "--rounds", "1",
                      "--chunk-size", "16", "--json", str(out)]) == 0  # fmt: skip
    rows = json.loads(out.read_text())["results"]
    assert [r["metric"] for r in rows] == ["peak MiB", "ms/step"]
    assert all(r["ok"] and r["baseline_name"] == "conch unfused" and r["ratio"] > 0 for r in rows)
    monkeypatch.setenv("CONCH_KERNELS", "reference")
    for case in blce.cpu_cases(sizes=[96]) + blce.cases("small", sizes=[2**40], xp=np):
        harness.validate_case(case)
        assert case["shape"][-1] in (96, 2**40)
    full = harness.materialise(blce.cpu_cases(sizes=[96])[0])
    assert full["check"]() < 1e-5
    capsys.readouterr()
