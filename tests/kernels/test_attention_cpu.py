"""Attention's CPU path (kernels/_numba/attn.py behind kernels/attention.py's reference path) against float64.

The public pair runs once per CPU path (``cpu_path``: compiled kernels, NumPy) at sizes around the kernels' strips
(64 queries) and vectors (8), L != S both ways, both product layouts (kernels.attention.NN_MACS), NaN and inf
scores; the kernels themselves against closed forms; the compiled path against the NumPy path at a stated
tolerance; the same bits on any thread count; PyTorch at the GPT benchmark's shapes where it imports.
"""

import numpy as np
import pytest
from tolerances import assert_close

import conch
from conch.kernels import _jit, _threads, attention


def _f64(a):
    return np.asarray(a).astype(np.float64)


def _attention64(q, k, v, causal, scale, g):
    s = q @ np.swapaxes(k, -1, -2) * scale
    if causal:
        L, S = s.shape[-2:]
        s = np.where(np.tril(np.ones((L, S), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = p @ v
    ds = p * (g @ np.swapaxes(v, -1, -2) - (g * out).sum(-1, keepdims=True))
    return out, ds @ k * scale, np.swapaxes(ds, -1, -2) @ q * scale, np.swapaxes(p, -1, -2) @ g, p


def _compiled_kernels():
    if not _jit._probe():
        pytest.skip("Numba is not importable here or CONCH_NUMBA=0: there are no compiled kernels to test")
    return _jit.family("attn")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(
    "L,S,D", [(64, 64, 32), (130, 130, 8), (7, 65, 16), (65, 7, 16), (128, 128, 64), (140, 100, 96), (100, 160, 80)]
)
def test_attention_matches_float64(dtype, causal, L, S, D, rng, cpu_path, reference):
    q, k, v, g = (rng.standard_normal((2, 1, n, D)).astype(dtype) for n in (L, S, S, L))
    q *= 2  # scores of a few units: a softmax far from uniform
    out, res = attention.attention_forward(q, k, v, causal=causal)
    dq, dk, dv = attention.attention_backward(res, g)
    *want, p = _attention64(_f64(q), _f64(k), _f64(v), causal, 1 / np.sqrt(D), _f64(g))
    assert_close(res.p, p, dtype, scale=4)
    for got, exp in zip((out, dq, dk, dv), want):
        assert got.dtype == np.dtype(dtype) and got.shape == exp.shape
        assert_close(got, exp, dtype, scale=4 * np.sqrt(max(L, S)))  # products of up to 130 terms


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("L,S", [(1, 1), (7, 7), (16, 16), (5, 9), (9, 5)])
def test_attention_tiny_sizes_and_float16(dtype, causal, L, S, rng, cpu_path, reference):
    q = rng.standard_normal((2, 3, L, 8)).astype(dtype)
    k = rng.standard_normal((2, 3, S, 8)).astype(dtype)
    v = rng.standard_normal((2, 3, S, 8)).astype(dtype)
    g = rng.standard_normal((2, 3, L, 8)).astype(dtype)
    out, res = attention.attention_forward(q, k, v, causal=causal)
    dq, dk, dv = attention.attention_backward(res, g)
    *want, _ = _attention64(_f64(q), _f64(k), _f64(v), causal, 1 / np.sqrt(8), _f64(g))
    for got, exp in zip((out, dq, dk, dv), want):
        assert got.dtype == np.dtype(dtype)
        assert_close(got, exp, dtype, scale=10)  # the (L, S) products sum up to 16 terms


def test_attention_non_contiguous_and_large_scores(rng, cpu_path, reference):
    q = (rng.standard_normal((2, 16, 3, 8)) * 30).astype(np.float32).transpose(0, 2, 1, 3)  # (2, 3, 16, 8) strided
    k = (rng.standard_normal((2, 16, 3, 8)) * 30).astype(np.float32).transpose(0, 2, 1, 3)
    v = rng.standard_normal((2, 3, 16, 8)).astype(np.float32)
    g = rng.standard_normal((2, 16, 3, 8)).astype(np.float32).transpose(0, 2, 1, 3)
    out, res = attention.attention_forward(q, k, v, causal=True)
    dq, dk, dv = attention.attention_backward(res, g)
    want = _attention64(_f64(q), _f64(k), _f64(v), True, 1 / np.sqrt(8), _f64(g))
    assert_close(out, want[0], np.float32, scale=10)
    assert_close(dv, want[3], np.float32, scale=10)
    # scores of +-1e3 (saturated softmax): the gradients w.r.t. q, k scale with them
    for got, exp in zip((dq, dk), want[1:3]):
        assert_close(got, exp, np.float32, scale=10 * max(1.0, np.abs(exp).max()))


def test_nan_and_inf_scores(rng, cpu_path, reference):
    q, k, v = (rng.standard_normal((1, 2, 20, 8)).astype(np.float32) for _ in range(3))
    q[0, 0, 5, 3] = np.nan  # query 5 of head 0: its scores, and so its output row, are NaN
    k[0, 1, 9, 0] = np.inf  # key 9 of head 1: +-inf scores, NaN (inf - inf) for the queries that see key 9
    out, _ = attention.attention_forward(q, k, v, causal=True)
    assert np.isnan(out[0, 0, 5]).all() and np.isfinite(np.delete(out[0, 0], 5, axis=0)).all()
    want = _attention64(_f64(q), _f64(k), _f64(v), True, 1 / np.sqrt(8), np.zeros((1, 2, 20, 8)))[0]
    np.testing.assert_array_equal(np.isnan(out), np.isnan(want))
    assert np.isfinite(out[0, 1, :9]).all()  # queries before key 9 never see it (causal)
    fin = np.isfinite(want)
    assert_close(out[fin], want[fin], np.float32, scale=4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("S,L", [(1, 1), (9, 9), (64, 64), (70, 130), (130, 70)])
@pytest.mark.parametrize("scale", [0.3, -1.5])
def test_softmax_t_kernel_matches_closed_form(dtype, S, L, scale, rng):
    attn = _compiled_kernels()
    for causal in (False, True):
        x = (rng.standard_normal((3, S, L)) * 4).astype(dtype)
        y = attn.softmax_t(x.copy(), scale, causal)
        s = _f64(x) * scale
        if causal:  # key j masked for query i when j > i
            s = np.where(np.arange(S)[:, None] > np.arange(L)[None, :], -np.inf, s)
        p = np.exp(s - s.max(-2, keepdims=True))
        p /= p.sum(-2, keepdims=True)
        assert_close(y, p, dtype, scale=2)
        if causal:
            assert (y[:, np.arange(S)[:, None] > np.arange(L)[None, :]] == 0).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ds_t_kernel_matches_closed_form(dtype, rng):
    attn = _compiled_kernels()
    S, L, D = 33, 70, 12
    pt, dpt = (rng.random((2, S, L)).astype(dtype) for _ in range(2))
    g, o = (rng.standard_normal((2, L, D)).astype(dtype) for _ in range(2))
    delta = (g * o).sum(-1)  # (2, L): one per query i, a column of the transposed layout
    got = attn.ds_t(dpt.copy(), pt, delta, 0.25)
    assert_close(got, _f64(pt) * (_f64(dpt) - _f64(delta)[:, None, :]) * 0.25, dtype, scale=4)


@pytest.mark.parametrize("L,D", [(33, 16), (130, 64)])
def test_compiled_matches_numpy_path(L, D, rng, reference):
    if not _jit._probe():
        pytest.skip("Numba is not importable here or CONCH_NUMBA=0: there is no compiled path to compare")
    q, k, v, g = (rng.standard_normal((2, 3, L, D)).astype(np.float32) for _ in range(4))

    def run():
        out, res = attention.attention_forward(q, k, v, causal=True, dropout_p=0.2, seed=3)
        return (out, res.p, *attention.attention_backward(res, g))

    prev = _jit.set_enabled(True)
    try:
        a = run()
        _jit.set_enabled(False)
        b = run()
    finally:
        _jit.set_enabled(prev)
    for x, y in zip(a, b):
        # the scale folded into exp's argument (one rounding fewer), products in another layout
        np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("shape", [(5, 3, 40, 8), (2, 3, 150, 16)])
@pytest.mark.parametrize("dropout_p", [0.0, 0.25])
def test_same_bits_on_any_thread_count(shape, dropout_p, rng, monkeypatch, reference):
    # (5, 3, 40, 8): heads split between threads (attention._by_heads); (2, 3, 150, 16): per-head products above
    # BLAS_SERIAL, whole products, the kernels' strips and heads split
    _compiled_kernels()
    monkeypatch.setitem(_threads._load, "adapt", False)
    monkeypatch.setattr(_threads, "MIN_PARALLEL", 64)
    q, k, v, g = (rng.standard_normal(shape).astype(np.float32) for _ in range(4))
    prev, before = _jit.set_enabled(True), conch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            conch.set_num_threads(n)
            splits = _threads.SPLITS[0]
            out, res = attention.attention_forward(q, k, v, causal=True, dropout_p=dropout_p, seed=1)
            results.append([out, *attention.attention_backward(res, g)])
            assert n == 1 or _threads.SPLITS[0] >= splits + 2, f"the attention kernels were not split on {n} threads"
    finally:
        _jit.set_enabled(prev)
        conch.set_num_threads(before)
    for other in results[1:]:
        for a, c in zip(results[0], other):
            assert a.tobytes() == c.tobytes()


@pytest.mark.parametrize("shape", [(2, 4, 64, 32), (1, 2, 130, 64)])
def test_matches_torch(shape, rng, cpu_path, reference):
    torch = pytest.importorskip("torch")
    q, k, v, g = (rng.standard_normal(shape).astype(np.float32) for _ in range(4))
    out, res = attention.attention_forward(q, k, v, causal=True)
    grads = attention.attention_backward(res, g)
    qt, kt, vt = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    ot = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=True)
    ot.backward(torch.tensor(g))
    np.testing.assert_allclose(out, ot.detach().numpy(), rtol=1e-5, atol=1e-5)
    for got, t in zip(grads, (qt, kt, vt)):
        np.testing.assert_allclose(got, t.grad.numpy(), rtol=1e-4, atol=2e-5)


def test_outputs_keep_the_heads_layout(rng, cpu_path, reference):
    # q, k, v as GPT makes them: (B, H, T, D) views of one (B, T, 3·H·D) projection; the compiled path writes out,
    # dq, dk, dv in (B, T, H, D) memory order, so transposing them back to (B, T, H·D) needs no copy
    x = rng.standard_normal((2, 9, 3 * 4 * 8)).astype(np.float32)
    q, k, v = (a.reshape(2, 9, 4, 8).transpose(0, 2, 1, 3) for a in np.split(x, 3, axis=2))
    g = rng.standard_normal((2, 9, 4, 8)).astype(np.float32).transpose(0, 2, 1, 3)
    out, res = attention.attention_forward(q, k, v, causal=True)
    grads = attention.attention_backward(res, g)
    *want, _ = _attention64(_f64(q), _f64(k), _f64(v), True, 1 / np.sqrt(8), _f64(g))
    for got, exp in zip((out, *grads), want):
        assert_close(got, exp, np.float32, scale=4)
        if cpu_path == "numba":
            assert got.transpose(0, 2, 1, 3).flags.c_contiguous


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_backward_writes_into_given_arrays(rng, cpu_path, reference, dtype):
    # out=: the head views of one packed (B, T, 3·H·D) gradient receive dq, dk, dv (the compiled path's products
    # write there; the NumPy path copies), every element of it written, values against float64
    x = rng.standard_normal((2, 9, 3 * 4 * 8)).astype(dtype)
    q, k, v = (a.reshape(2, 9, 4, 8).transpose(0, 2, 1, 3) for a in np.split(x, 3, axis=2))
    g = rng.standard_normal((2, 4, 9, 8)).astype(dtype)
    _, res = attention.attention_forward(q, k, v, causal=True)
    packed = np.full((2, 9, 3 * 4 * 8), np.nan, dtype)
    views = tuple(a.reshape(2, 9, 4, 8).transpose(0, 2, 1, 3) for a in np.split(packed, 3, axis=2))
    got = attention.attention_backward(res, g, out=views)
    assert all(a is b for a, b in zip(got, views))
    _, *want, _ = _attention64(_f64(q), _f64(k), _f64(v), True, 1 / np.sqrt(8), _f64(g))
    for a, e in zip(views, want):
        assert_close(a, e, dtype, scale=4)
    assert not np.isnan(packed).any()
    with pytest.raises(ValueError, match="out must be three arrays"):
        attention.attention_backward(res, g, out=views[:2])
    with pytest.raises(ValueError, match="out must be three arrays"):
        attention.attention_backward(res, g, out=tuple(a.astype(np.float64 if dtype != np.float64 else np.float32)
                                                       for a in views))  # fmt: skip


@pytest.mark.parametrize("L,S", [(128, 128), (140, 100), (100, 160)])
def test_split_products_never_read_unset_memory(L, S, rng, monkeypatch, reference):
    # causal products of >= SPLIT_MACS per head leave the masked quarter of sT and dpT unset: with every fresh
    # float array NaN-filled, a read of it would turn the results NaN
    _compiled_kernels()
    empty = np.empty

    def nan_empty(shape, dtype=float, *args, **kwargs):
        a = empty(shape, dtype, *args, **kwargs)
        if a.dtype.kind == "f":
            a.fill(np.nan)
        return a

    q, k, v, g = (rng.standard_normal((2, 1, n, 96)).astype(np.float32) for n in (L, S, S, L))
    assert attention._halves(L, S, True, L * S * 96) is not None
    prev = _jit.set_enabled(True)
    try:
        monkeypatch.setattr(np, "empty", nan_empty)
        out, res = attention.attention_forward(q, k, v, causal=True)
        grads = attention.attention_backward(res, g)
    finally:
        monkeypatch.undo()
        _jit.set_enabled(prev)
    *want, _ = _attention64(_f64(q), _f64(k), _f64(v), True, 1 / np.sqrt(96), _f64(g))
    for got, exp in zip((out, *grads), want):
        assert_close(got, exp, np.float32, scale=40)
