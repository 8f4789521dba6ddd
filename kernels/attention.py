"""Fused scaled-dot-product attention (flash attention): Triton forward and backward kernels, reference path.

Forward, per batch-head, for queries q (L, D), keys k (S, D), values v (S, D)::

    s = q kᵀ · scale            (causal: s[i, j] = -inf where j > i, top-left aligned as PyTorch)
    lse = log Σ_j exp(s[i, j])  (one float32 per query row)
    out = exp(s - lse) v

The kernels never store the (L, S) score matrix: each program keeps BLOCK_M query rows and walks the keys
BLOCK_N at a time with an online softmax (a running max m, a running sum l rescaled when m grows), so the
memory is O(L) per head instead of O(L·S), and the backward recomputes p = exp(s - lse) tile by tile::

    delta_i = Σ_d dout[i, d] · out[i, d]
    dv = pᵀ dout        dp = dout vᵀ        ds = p ∘ (dp - delta)
    dq = ds k · scale   dk = dsᵀ q · scale

Two backward kernels avoid atomics: one per query block writes dq (and delta), one per key block writes
dk and dv. Scores are kept in base-2 units (s · scale · log2 e) so the kernels use exp2.

Example::

    out, res = attention_forward(q, k, v, causal=True)        # q, k, v: (B, H, L, D)
    dq, dk, dv = attention_backward(res, dout)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from . import _jit, _threads, autotune
from ._causal import causal_keep
from ._launch import DtypeSet, TritonKernel, cdiv, kernel_for, next_power_of_2, targ, use_triton, xp_of
from .dropout import rand_mask

_LOG2E = 1.4426950408889634


class AttentionResiduals(NamedTuple):
    """What the backward needs: the inputs and output (by reference), the attributes, and one of ``lse``/``p``.

    The Triton path keeps ``lse`` (O(L) per head) and recomputes the probabilities tile by tile; the reference
    path keeps the probabilities ``p`` (O(L·S)) and needs no second q kᵀ product. The other one is None.
    """

    q: object  # (..., L, D)
    k: object  # (..., S, D)
    v: object  # (..., S, Dv)
    out: object  # (..., L, Dv), the forward's output
    causal: bool
    scale: float
    allow_tf32: bool  # fp32 dots in TF32 (GPU only)
    drop: tuple | None  # (dropout_p, seed, offset) or None without dropout
    lse: object  # Triton path: (B·H, L) float32 logsumexp of the scores in base 2; None on the reference path
    p: object  # reference path: (..., L, S) probabilities in the compute dtype; None on the Triton path


_TRITON_DTYPES = DtypeSet(("float16", "float32", "bfloat16"))  # by name: no ml_dtypes import
_ALL_DTYPES = DtypeSet((*_TRITON_DTYPES, "float64"))
#: Largest head dim the Triton path takes (q, k, v tiles stay in registers); larger ones use the reference path.
MAX_HEAD_DIM = 256


# The @triton.jit kernels are in kernels/_triton/attention.py, imported by kernel_for at the first Triton
# launch: the reference path never imports Triton.
_attn_fwd_kernel = TritonKernel("attention", "_attn_fwd_kernel")
_attn_bwd_dq_kernel = TritonKernel("attention", "_attn_bwd_dq_kernel")
_attn_bwd_dkdv_kernel = TritonKernel("attention", "_attn_bwd_dkdv_kernel")


# --------------------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------------------

#: The one config under the interpreter (small tiles keep CPU tests fast).
INTERPRET_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1}


def _cfg(bm, bn, warps, stages):
    return {"BLOCK_M": bm, "BLOCK_N": bn, "num_warps": warps, "num_stages": stages}


#: Candidates timed by autotune.pick on the GPU (flash-attention tile sizes for head dims up to 128).
GPU_CONFIGS = [_cfg(128, 64, 4, 3), _cfg(128, 64, 8, 3), _cfg(64, 64, 4, 3), _cfg(128, 32, 4, 3), _cfg(64, 32, 4, 4),
               _cfg(64, 64, 4, 2), _cfg(32, 32, 4, 2)]  # fmt: skip
#: The backward holds more tiles per program: smaller candidates.
GPU_BWD_CONFIGS = [_cfg(64, 64, 4, 2), _cfg(64, 64, 8, 2), _cfg(32, 64, 4, 2), _cfg(64, 32, 4, 2), _cfg(32, 32, 4, 2),
                   _cfg(32, 32, 4, 1)]  # fmt: skip


def smem_bytes(kind, cfg, block_d, itemsize):
    """Upper bound on the shared memory of one attention kernel launch, in bytes (sm_90, Triton 3.x, 16-aligned
    strides; checked against the compiled kernels by tests/kernels/test_sim_compile.py). ``kind``: "fwd", "dq"
    or "dkdv". The forward keeps its q tile and ``num_stages`` copies of the k and v tiles (exact for 64+ rows);
    the backward kernels keep their fixed tiles and pipeline the streamed ones, or, for 32-row tiles or one
    stage, hold about three row tiles and the two column tiles. fp32 at head dim 128-256 is where configs
    stop fitting (the fp32 forward's 128x64 at head dim 128 needs 262,144 bytes)."""
    bm, bn, st, d = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["num_stages"], block_d
    if kind == "fwd":
        return (bm + 2 * st * bn) * d * itemsize
    if kind == "dq":
        return max(2 * bm + 2 * st * bn, 3 * bm + 2 * bn) * d * itemsize
    return max(2 * bn + 2 * st * bm, 3 * bm + 2 * bn) * d * itemsize + 2 * st * bm * 4  # + lse, delta rows


def _as4d(x):
    """``x`` (..., R, D) as a (B, H, R, D) view: 2-D and 3-D inputs gain unit dims, more leading dims merge."""
    if x.ndim == 2:
        return x[None, None]
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        return x
    return x.reshape((-1, 1) + tuple(x.shape[-2:]))


def _st(x):
    return tuple(s // x.itemsize for s in x.strides)


def _upcast(x):
    return isinstance(x, np.ndarray) and x.dtype.name == "bfloat16"


def _block_d(d):
    return max(16, next_power_of_2(d))  # tl.dot needs every dim >= 16


def _triton_ok(q, k, v):
    d = q.shape[-1]
    return (
        np.dtype(q.dtype) in _TRITON_DTYPES
        and q.ndim >= 2
        and q.shape[:-2] == k.shape[:-2] == v.shape[:-2]
        and v.shape[-1] == d
        and 0 < d <= MAX_HEAD_DIM
        and q.shape[-2] > 0
        and k.shape[-2] > 0
    )


def _drop_args(drop):
    """(seed, offset, p, 1/(1-p)) kernel arguments and the DROPOUT flag for ``drop`` = None or (p, seed, offset)."""
    if drop is None:
        return (0, 0, 0.0, 1.0), False
    p, seed, offset = drop
    return (int(seed), int(offset), float(p), 1.0 / (1.0 - p)), True


def _triton_forward(q, k, v, causal, scale, allow_tf32, drop=None):
    xp = xp_of(q)
    q4, k4, v4 = _as4d(q), _as4d(k), _as4d(v)
    B, H, L, D = q4.shape
    S = k4.shape[2]
    o4 = xp.empty((B, H, L, D), dtype=q.dtype)
    lse = xp.empty((B * H, L), dtype=np.float32)
    prec = "tf32" if allow_tf32 else "ieee"
    dargs, dropout = _drop_args(drop)

    def run(cfg):
        grid = (cdiv(L, cfg["BLOCK_M"]), B * H)
        kernel_for(_attn_fwd_kernel, q4)[grid](
            targ(q4), targ(k4), targ(v4), targ(o4), targ(lse), H, L, S, D, scale * _LOG2E, *dargs,
            *_st(q4), *_st(k4), *_st(v4), *_st(o4),
            CAUSAL=causal, DROPOUT=dropout, UPCAST=_upcast(q4), INPUT_PRECISION=prec,
            BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_D=_block_d(D),
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        )  # fmt: skip

    key = (str(q.dtype), autotune.bucket(L), autotune.bucket(S), _block_d(D), bool(causal), dropout)
    it = q4.dtype.itemsize
    cfg = autotune.pick("attention_fwd", key, GPU_CONFIGS, run, like=q4, interpret_config=INTERPRET_CONFIG,
                        smem=lambda c: smem_bytes("fwd", c, _block_d(D), it))  # fmt: skip
    run(cfg)
    return o4.reshape(q.shape[:-1] + (D,)), lse


def _triton_backward(res, dout):
    q, k, v, out, lse = res.q, res.k, res.v, res.out, res.lse
    causal, scale, prec = res.causal, res.scale, "tf32" if res.allow_tf32 else "ieee"
    xp = xp_of(q)
    q4, k4, v4, o4, g4 = _as4d(q), _as4d(k), _as4d(v), _as4d(out), _as4d(dout.astype(q.dtype, copy=False))
    B, H, L, D = q4.shape
    S = k4.shape[2]
    dq, dk, dv = (xp.empty(t.shape, dtype=q.dtype) for t in (q4, k4, v4))
    delta = xp.empty((B * H, L), dtype=np.float32)
    dargs, dropout = _drop_args(res.drop)
    common = dict(CAUSAL=causal, DROPOUT=dropout, UPCAST=_upcast(q4), INPUT_PRECISION=prec, BLOCK_D=_block_d(D))

    def run_dq(cfg):
        kernel_for(_attn_bwd_dq_kernel, q4)[(cdiv(L, cfg["BLOCK_M"]), B * H)](
            targ(q4), targ(k4), targ(v4), targ(o4), targ(g4), targ(dq), targ(lse), targ(delta),
            H, L, S, D, scale * _LOG2E, scale, *dargs, *_st(q4), *_st(k4), *_st(v4), *_st(o4), *_st(g4), *_st(dq),
            BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], num_warps=cfg["num_warps"],
            num_stages=cfg["num_stages"], **common,
        )  # fmt: skip

    def run_dkdv(cfg):
        kernel_for(_attn_bwd_dkdv_kernel, q4)[(cdiv(S, cfg["BLOCK_N"]), B * H)](
            targ(q4), targ(k4), targ(v4), targ(g4), targ(dk), targ(dv), targ(lse), targ(delta),
            H, L, S, D, scale * _LOG2E, scale, *dargs, *_st(q4), *_st(k4), *_st(v4), *_st(g4), *_st(dk), *_st(dv),
            BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], num_warps=cfg["num_warps"],
            num_stages=cfg["num_stages"], **common,
        )  # fmt: skip

    key = (str(q.dtype), autotune.bucket(L), autotune.bucket(S), _block_d(D), bool(causal), dropout)
    tune = {"like": q4, "interpret_config": INTERPRET_CONFIG}
    it, bd = q4.dtype.itemsize, _block_d(D)
    run_dq(autotune.pick("attention_bwd_dq", key, GPU_BWD_CONFIGS, run_dq,
                         smem=lambda c: smem_bytes("dq", c, bd, it), **tune))  # fmt: skip
    # dk/dv read the delta the dq kernel wrote: the dq launch (and any timing runs) precede it on the stream
    run_dkdv(autotune.pick("attention_bwd_dkdv", key, GPU_BWD_CONFIGS, run_dkdv,
                           smem=lambda c: smem_bytes("dkdv", c, bd, it), **tune))  # fmt: skip
    return dq.reshape(q.shape), dk.reshape(k.shape), dv.reshape(v.shape)


# --------------------------------------------------------------------------------------------------------------
# Reference path (array API: NumPy and CuPy). It materializes the (L, S) probabilities and keeps them for the
# backward: on the CPU memory is not the constraint and the backward then needs no second q kᵀ product.
# --------------------------------------------------------------------------------------------------------------


def _ct(dtype):
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def _keep_ref(shape, drop, xp):
    """The keep mask of (..., L, S) probabilities: the kernels' linear index over (B·H, L, S) is C order here."""
    p, seed, offset = drop
    return rand_mask(shape, p, seed, offset, xp)


def _compiled(*arrays):
    """The compiled CPU kernels take these: NumPy arrays, Numba on, no empty dim."""
    return _jit.enabled() and all(isinstance(a, np.ndarray) and a.size for a in arrays)


#: Per-head products of at most this many multiply-adds take their transposed operand as a copy (see _tr).
NN_MACS = 1 << 18


def _tr(x, ct, macs):
    """x (..., R, D) transposed to (..., D, R) in ``ct``, for a product of ``macs`` multiply-adds per head. A product
    X Yᵀ of two row-major operands (BLAS's "NT" case) ran at half the speed of X (Yᵀ copied) at attention's small
    heads (OpenBLAS, 64 heads of (64, 32) x (32, 64): 188 us against 151 with the copy); from 256x256x64 per head
    the copy costs more than it saves (5.4 ms against 6.7 ms at (8, 12, 256, 64)), and a view is passed."""
    if macs <= NN_MACS:
        return np.ascontiguousarray(x.swapaxes(-1, -2), dtype=ct)
    return x.astype(ct, copy=False).swapaxes(-1, -2)


def _empty_like(like, shape, ct):
    """An empty ``shape`` array of ``ct`` in the memory order of ``like`` (q, k or v; ``shape`` has like's dims but
    the last). GPT's heads are transposed views of one (B, T, 3·H·D) projection: its transpose of the output back
    to (B, T, H·D), and the framework's of dq, dk, dv, then find them contiguous, a reshape and not a copy (35 us
    of 150 per array at (16, 4, 64, 32)). A layout BLAS cannot write (the last axis not the fastest) is C order."""
    if like.ndim != len(shape) or like.flags.c_contiguous:
        return np.empty(shape, ct)
    st = like.strides
    order = sorted(range(like.ndim), key=lambda ax: -st[ax])
    if order[-1] != like.ndim - 1:
        return np.empty(shape, ct)
    inv = [0] * like.ndim
    for pos, ax in enumerate(order):
        inv[ax] = pos
    return np.empty([shape[ax] for ax in order], ct).transpose(inv)


#: Causal products of at least this many multiply-adds per head are split at the middle query (see _causal_mm).
SPLIT_MACS = 1 << 20


def _halves(L, S, causal, macs):
    """(h, kh): causal products split at query h, whose first h queries see keys < kh; None: not split."""
    if not causal or macs < SPLIT_MACS or L < 16:
        return None
    h = L // 2 // 8 * 8
    return h, min(h, S)


def _causal_mm(a, b, out, hk, kind):
    """out = a @ b, skipping the quarter a causal mask zeroes when ``hk`` = (h, kh) (queries < h see keys < kh).

    ``kind`` names the masked operand's axes: "cols", out (..., S, L) = a (..., S, D) @ b (..., D, L), the scores
    sᵀ (or dpᵀ), whose block (keys >= kh, queries < h) is left unset (the kernels write it 0 unread); "rows",
    out (..., L, D) = a (..., L, S) @ b (..., S, D) with a's block (queries < h, keys >= kh) zero; "keys",
    out (..., S, D) = a (..., S, L) @ b (..., L, D) with a's block (keys >= kh, queries < h) zero. At 256-512
    queries per head the split products ran 5-20% faster (OpenBLAS, one thread), at 64 slower (smaller calls)."""
    if hk is None:
        np.matmul(a, b, out=out)
        return
    h, kh = hk
    if kind == "cols":
        np.matmul(a[..., :kh, :], b[..., :, :h], out=out[..., :kh, :h])
        np.matmul(a, b[..., :, h:], out=out[..., :, h:])
    elif kind == "rows":
        np.matmul(a[..., :h, :kh], b[..., :kh, :], out=out[..., :h, :])
        np.matmul(a[..., h:, :], b, out=out[..., h:, :])
    else:
        np.matmul(a[..., :kh, :], b, out=out[..., :kh, :])
        np.matmul(a[..., kh:, h:], b[..., h:, :], out=out[..., kh:, :])


def _by_heads(n_heads, macs, body, *arrays):
    """``body(ix)`` over the whole arrays (ix = ...), or over slices ix of their first axis on the pool's threads.

    The heads are independent, so a split changes no bit: each 2-D product is one BLAS call either way, and the
    kernels' columns and rows are the same. Only heads whose products OpenBLAS runs on one thread by itself
    (at most _threads.BLAS_SERIAL multiply-adds) are split: BLAS's own threads never run beside the pool's. At
    (16, 4, 64, 32) one thread ran a head's products and softmax in ~7 us, PyTorch's attention runs heads in
    parallel; the work is counted in multiply-adds (2·macs per head and product pair)."""
    x = arrays[0]
    if x.ndim < 3 or x.shape[0] < 2 or macs > _threads.BLAS_SERIAL or any(a.shape[0] != x.shape[0] for a in arrays):
        body(...)
        return
    # at most 4 chunks: each costs ~35 us of Python and NumPy calls (4 chunks per thread would be 8 at 2 threads)
    n = x.shape[0]
    _threads.parallel_for(n, lambda a, b: body(slice(a, b)), work=2 * macs * n_heads, align=-(-n // 4))


def _lead(q, k, v):
    lead = q.shape[:-2]
    if k.shape[:-2] == lead == v.shape[:-2]:
        return lead
    return np.broadcast_shapes(lead, k.shape[:-2], v.shape[:-2])


def _bcast(t, lead):
    """t (..., R, D) with the leading dims ``lead`` (a view; t itself when it has them: broadcast_to costs ~10 us)."""
    return t if t.shape[:-2] == lead else np.broadcast_to(t, lead + t.shape[-2:])


def _compiled_forward(q, k, v, causal, scale, drop):
    # the scores transposed, sT = k qᵀ (..., S, L): the softmax then runs down the columns (kernels/_numba/attn.py)
    ct = _ct(q.dtype)
    lead = _lead(q, k, v)
    q, k, v = (_bcast(t, lead) for t in (q, k, v))
    L, S = q.shape[-2], k.shape[-2]
    macs = L * S * q.shape[-1]
    st = np.empty(lead + (S, L), ct)
    out = _empty_like(q, lead + (L, v.shape[-1]), ct) if drop is None else None
    attn = _jit.family("attn")

    hk = _halves(L, S, causal, macs)

    def body(ix):
        sa = st[ix]
        _causal_mm(k[ix].astype(ct, copy=False), _tr(q[ix], ct, macs), sa, hk, "cols")
        attn.softmax_t(sa, scale, causal)  # inside the pool's chunk: on this thread
        if out is not None:
            _causal_mm(sa.swapaxes(-1, -2), v[ix].astype(ct, copy=False), out[ix], hk, "rows")

    _by_heads(st.size // (S * L), macs, body, q, k, v)
    p = st.swapaxes(-1, -2)  # (..., L, S), a view
    if out is None:
        out = _attend(p, v.astype(ct, copy=False), drop, np)
    return out.astype(q.dtype, copy=False), p


def _attend(p, vf, drop, xp):
    if drop is None:
        return xp.matmul(p, vf)
    kept = p * _keep_ref(p.shape, drop, xp)
    kept *= 1.0 / (1.0 - drop[0])
    return xp.matmul(kept, vf)


def _reference_forward(q, k, v, causal, scale, drop=None):
    if _compiled(q, k, v):
        return _compiled_forward(q, k, v, causal, scale, drop)
    xp = xp_of(q)
    ct = _ct(q.dtype)
    qf, kf, vf = (t.astype(ct, copy=False) for t in (q, k, v))
    s = xp.matmul(qf, xp.swapaxes(kf, -1, -2))
    s *= scale
    if causal:
        L, S = s.shape[-2:]
        s = xp.where(causal_keep(L, S, s), s, -xp.inf)
    m = s.max(axis=-1, keepdims=True)
    s -= m
    p = xp.exp(s, out=s)
    den = p.sum(axis=-1, keepdims=True)
    p /= den
    return _attend(p, vf, drop, xp).astype(q.dtype, copy=False), p


def _compiled_backward(res, dout, grads_out=None):
    q, k, v, out, p, scale = res.q, res.k, res.v, res.out, res.p, res.scale
    ct = _ct(q.dtype)
    lead = p.shape[:-2]  # the forward's broadcast leading dims
    q, k, v = (_bcast(t, lead) for t in (q, k, v))
    pt = np.ascontiguousarray(p.swapaxes(-1, -2))  # the forward's own array (a view of it) when it ran here
    g, of = dout.astype(ct, copy=False), out.astype(ct, copy=False)
    L, S = q.shape[-2], k.shape[-2]
    macs = L * S * v.shape[-1]
    if grads_out is not None and all(o.dtype == ct and o.shape == t.shape for o, t in zip(grads_out, (q, k, v))):
        dq, dk, dv = grads_out  # the caller's arrays (strided views of one packed gradient): the products write there
    else:
        dq, dk, dv = (_empty_like(t, t.shape, ct) for t in (q, k, v))
    w = None
    if res.drop is not None:  # out = (p ∘ keep / (1 - p_drop)) v: dv and dp carry the mask
        w = np.swapaxes(_keep_ref(p.shape, res.drop, np) * (1.0 / (1.0 - res.drop[0])), -1, -2)
    attn = _jit.family("attn")

    hk = _halves(L, S, res.causal, macs)

    def body(ix):
        pa, ga = pt[ix], g[ix]
        dpt = np.empty(pa.shape, ct)
        if w is not None and hk is not None:  # the quarter _causal_mm leaves unset: the mask multiplies it below
            dpt[..., hk[1] :, : hk[0]] = 0
        _causal_mm(v[ix].astype(ct, copy=False), _tr(ga, ct, macs), dpt, hk, "cols")  # dpᵀ = v doutᵀ (..., S, L)
        if w is not None:
            pa = pa * w[ix]
            dpt *= w[ix]
        _causal_mm(pa, ga, dv[ix], hk, "keys")
        # delta = Σ_d dout·out per query: einsum reads the strided heads in place (24 us against 64 for two copies)
        attn.ds_t(dpt, pt[ix], np.einsum("...d,...d->...", ga, of[ix]), scale, res.causal)
        _causal_mm(dpt.swapaxes(-1, -2), k[ix].astype(ct, copy=False), dq[ix], hk, "rows")  # dsᵀ has the scale
        _causal_mm(dpt, q[ix].astype(ct, copy=False), dk[ix], hk, "keys")

    _by_heads(pt.size // (S * L), macs, body, q, k, v, g, of, pt)
    return tuple(t.astype(res.q.dtype, copy=False) for t in (dq, dk, dv))


def _reference_backward(res, dout, grads_out=None):
    q, k, v, out, p, scale = res.q, res.k, res.v, res.out, res.p, res.scale
    if _compiled(q, k, v, p, dout):
        return _compiled_backward(res, dout, grads_out)
    xp = xp_of(q)
    ct = _ct(q.dtype)
    qf, kf, vf, of = (t.astype(ct, copy=False) for t in (q, k, v, out))
    g = dout.astype(ct, copy=False)
    ds = xp.matmul(g, xp.swapaxes(vf, -1, -2))  # dp
    if res.drop is None:
        dv = xp.matmul(xp.swapaxes(p, -1, -2), g)
    else:  # out = (p ∘ keep / (1 - p_drop)) v
        w = _keep_ref(p.shape, res.drop, xp) * (1.0 / (1.0 - res.drop[0]))
        dv = xp.matmul(xp.swapaxes(p * w, -1, -2), g)
        ds *= w
    ds -= (g * of).sum(axis=-1, keepdims=True)  # - delta
    ds *= p
    dq = xp.matmul(ds, kf)
    dq *= scale
    dk = xp.matmul(xp.swapaxes(ds, -1, -2), qf)
    dk *= scale
    return tuple(t.astype(q.dtype, copy=False) for t in (dq, dk, dv))


# --------------------------------------------------------------------------------------------------------------
# Public pair
# --------------------------------------------------------------------------------------------------------------


#: The common dtypes, held (a DtypeSet looks up ``dtype.name``, ~5 us a call): _check's fast path.
_PLAIN = frozenset(np.dtype(t) for t in (np.float16, np.float32, np.float64))


def _check(q, k, v):
    if (
        type(q) is type(k) is type(v) is np.ndarray
        and q.dtype == k.dtype == v.dtype
        and q.dtype in _PLAIN
        and min(q.ndim, k.ndim, v.ndim) >= 2
        and q.shape[-1] == k.shape[-1]
        and k.shape[-2] == v.shape[-2]
    ):
        return
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not hasattr(t, "dtype") or not hasattr(t, "shape"):
            raise TypeError(f"attention: {name} must be a NumPy or CuPy array, got {type(t).__name__}")
        if np.dtype(t.dtype) not in _ALL_DTYPES:
            raise TypeError(f"attention: {name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
        if t.ndim < 2:
            raise ValueError(f"attention: {name} must have shape (..., rows, dim), got {tuple(t.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"attention: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"attention: expected q (..., L, D), k (..., S, D), v (..., S, Dv); got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}, v {tuple(v.shape)}"
        )


def attention_forward(q, k, v, *, causal=False, scale=None, dropout_p=0.0, seed=0, offset=0, allow_tf32=True):
    """out = softmax(q kᵀ · scale [causal mask]) [dropout] v; returns ``(out, residuals)``.

    q (..., L, D), k (..., S, D), v (..., S, Dv), one float dtype (float64: reference path only); leading
    dims broadcast on the reference path and must match on the Triton path (which also needs Dv == D <= 256).
    ``scale`` defaults to 1/√D; ``causal`` masks key j > query i. ``allow_tf32``: fp32 dots in TF32 (GPU).
    ``dropout_p`` > 0 drops probabilities with dropout's counter-based generator: element (bh, i, j) of the
    (B·H, L, S) probabilities is kept when tl.rand(seed, offset + (bh·L + i)·S + j) >= dropout_p (the caller
    reserves B·H·L·S counters), and the backward regenerates the same mask.
    out has q's dtype and shape (..., L, Dv). The Triton path keeps one float32 logsumexp per query row in
    the residuals; the reference path keeps the probabilities.
    """
    _check(q, k, v)
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"attention: dropout_p must be in [0, 1), got {dropout_p}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    drop = (float(dropout_p), int(seed), int(offset)) if dropout_p > 0 else None
    lse = p = None
    if use_triton(q, k, v) and _triton_ok(q, k, v):
        out, lse = _triton_forward(q, k, v, bool(causal), scale, bool(allow_tf32), drop)
    else:
        out, p = _reference_forward(q, k, v, bool(causal), scale, drop)
    return out, AttentionResiduals(q, k, v, out, bool(causal), scale, bool(allow_tf32), drop, lse, p)


def attention_backward(residuals, dout, out=None):
    """Gradients (dq, dk, dv) of :func:`attention_forward` for the upstream gradient ``dout`` (out's shape).

    ``out``: three arrays shaped like q, k and v, of q's dtype, that receive the gradients (any strides, e.g. the
    head views of one packed (B, T, 3, H, D) gradient); they are returned. The compiled CPU path writes its
    products straight into them; the other paths copy their results in.
    """
    res_out = residuals.out
    if tuple(dout.shape) != tuple(res_out.shape):
        raise ValueError(f"attention_backward: dout shape {tuple(dout.shape)} != output shape {tuple(res_out.shape)}")
    if out is not None:
        want = tuple(tuple(t.shape) for t in (residuals.q, residuals.k, residuals.v))
        dt = residuals.q.dtype
        if len(out) != 3 or tuple(tuple(o.shape) for o in out) != want or any(o.dtype != dt for o in out):
            raise ValueError(
                f"attention_backward: out must be three arrays of {residuals.q.dtype} shaped {want}, got "
                f"{[(tuple(o.shape), o.dtype) for o in out]}"
            )
    if residuals.lse is not None:
        grads = _triton_backward(residuals, dout)
    else:
        grads = _reference_backward(residuals, dout, out)
    if out is None:
        return grads
    for o, g in zip(out, grads):
        if g is not o:
            o[...] = g
    return tuple(out)
