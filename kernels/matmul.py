"""Matmul with a fused epilogue, out = act(a @ b + bias), and its backward (act' and dbias fused into the products).

Forward (NumPy ``matmul`` semantics: 1-D operands and broadcast batch dims)::

    z = a @ b + bias          a: (..., M, K) or (K,)   b: (..., K, N) or (K,)   bias: (N,)
    out = act(z)

Backward, with dZ = dOut * act'(Z)::

    dA = dZ @ B^T             summed over the batch dims a was broadcast along; shaped like a
    dB = A^T @ dZ             summed over the batch dims b was broadcast along; shaped like b
    dbias = sum of dZ over every row (all dims but the last)

Example::

    out, res = matmul_forward(x, w, bias, activation="gelu")
    da, db, dbias = matmul_backward(res, dout)

One Triton kernel (tutorial 03 style: grouped program order, fp32 accumulator, masks for any M/N/K, any strides,
batch on grid axis 1 with stride 0 for broadcast operands) serves the forward and both backward products. In the
backward, act' is fused into the loads of dOut for cheap activations (:data:`FUSE_IN_LOADS`) and computed once
by the elementwise activation kernel otherwise; dbias is summed inside the first product that runs.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from . import _jit, autotune
from ._act import ACT_CODES, FROM_OUTPUT, act_backward_ref, act_code, act_name, act_ref, compiled, jit_passes
from ._launch import DtypeSet, TritonKernel, cdiv, kernel_for, targ, use_triton, xp_of
from ._threads import blas_product, sum_rows
from .activations import dz_from_saved


class MatmulResiduals(NamedTuple):
    """What the backward needs: the operands (by reference, never copied), the saved ``r`` and the attributes."""

    a: object  # the caller's a, (..., M, K) or (K,)
    b: object  # the caller's b, (..., K, N) or (K,)
    r: object  # None (identity), out (relu/tanh/sigmoid: act' from the output) or Z = a @ b + bias in out's dtype
    act: str  # canonical activation name
    param: float  # negative_slope for leaky_relu, alpha for elu, 0.0 otherwise
    allow_tf32: bool  # fp32 products on tensor cores in TF32 (GPU only)
    bias_shape: tuple | None  # None: no bias
    bias_dtype: object  # None: no bias
    batch: tuple  # the broadcast batch dims
    M: int
    K: int
    N: int
    out_shape: tuple  # dout must have it


# The @triton.jit kernels are in kernels/_triton/matmul.py, imported by kernel_for at the first Triton
# launch: the reference path never imports Triton.
_matmul_kernel = TritonKernel("matmul", "_matmul_kernel")


# --------------------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------------------

_TRITON_DTYPES = DtypeSet(("float16", "float32", "bfloat16"))  # by name: no ml_dtypes import
_ALL_DTYPES = DtypeSet((*_TRITON_DTYPES, "float64"))

#: The one config under the interpreter (small tiles keep CPU tests fast).
INTERPRET_CONFIG = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 8, "num_warps": 4, "num_stages": 1}


def _cfg(bm, bn, bk, warps, stages, group=8):
    return {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group, "num_warps": warps, "num_stages": stages}


#: Candidates timed by autotune.pick on the GPU (Triton tutorial 03's, within 64-256 tiles).
GPU_CONFIGS = [
    _cfg(128, 256, 64, 8, 3),
    _cfg(256, 128, 64, 8, 3),
    _cfg(128, 128, 64, 8, 3),
    _cfg(128, 128, 32, 4, 4),
    _cfg(128, 64, 64, 4, 4),
    _cfg(64, 128, 64, 4, 4),
    _cfg(128, 64, 32, 4, 4),
    _cfg(64, 128, 32, 4, 4),
    _cfg(64, 64, 64, 4, 5),
    _cfg(64, 64, 32, 4, 5),
]


def smem_bytes(cfg, itemsize, dout_op=0, fused=False):
    """Shared memory of one ``_matmul_kernel`` launch with ``cfg``, in bytes (sm_90, Triton 3.x, 16-aligned
    operands; an upper bound, exact but for relu's dA, checked by tests/kernels/test_sim_compile.py).

    Software pipelining keeps ``num_stages`` copies of the A (BLOCK_M x BLOCK_K) and B (BLOCK_K x BLOCK_N) tiles.
    act' fused into the loads of dOut (``fused``, FUSE_IN_LOADS) adds the Z/output tile that rides along:
    ``num_stages - 1`` more tiles of dOut's shape (relu's dA, computed from the output, needs one fewer).
    fp32 tiles are twice fp16's, so 128x256x64 and 256x128x64 at 3 stages never fit an H100 in fp32 (294,912
    bytes), and fused fp32 backward products also lose the 64-deep tiles. autotune.pick drops the configs above
    the GPU's limit before compiling anything.
    """
    bm, bn, bk, st = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"], cfg["num_stages"]
    elems = st * (bm * bk + bk * bn)
    if fused and dout_op == 1:
        elems += max(st - 1, 0) * bm * bk
    elif fused and dout_op == 2:
        elems += max(st - 1, 0) * bk * bn
    return elems * itemsize


def _check_dtype(x, what):
    if x.dtype not in _ALL_DTYPES:
        raise TypeError(f"{what} must be float16, bfloat16, float32 or float64, got {what}.dtype={x.dtype}")


def _check_inputs(a, b, bias):
    """Validate shapes and dtypes; returns (batch shape, M, K, N, out shape)."""
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul needs operands of at least 1 dimension, got a{tuple(a.shape)} and b{tuple(b.shape)}")
    _check_dtype(a, "a")
    _check_dtype(b, "b")
    if a.dtype != b.dtype:
        raise TypeError(f"matmul needs a and b of one dtype, got a.dtype={a.dtype} and b.dtype={b.dtype}")
    ka = a.shape[-1]
    kb = b.shape[0] if b.ndim == 1 else b.shape[-2]
    if ka != kb:
        raise ValueError(f"matmul inner dimensions differ: a{tuple(a.shape)} has K={ka}, b{tuple(b.shape)} has K={kb}")
    m = 1 if a.ndim == 1 else a.shape[-2]
    n = 1 if b.ndim == 1 else b.shape[-1]
    ba = tuple(a.shape[:-2])
    bb = tuple(b.shape[:-2])
    try:
        batch = tuple(np.broadcast_shapes(ba, bb))
    except ValueError:
        raise ValueError(f"matmul batch dims do not broadcast: a{tuple(a.shape)} and b{tuple(b.shape)}") from None
    out_shape = batch + ((m,) if a.ndim > 1 else ()) + ((n,) if b.ndim > 1 else ())
    if bias is not None:
        if bias.dtype != a.dtype:
            raise TypeError(f"bias.dtype={bias.dtype} must match a.dtype={a.dtype}")
        ok = tuple(bias.shape) == (n,) or (b.ndim == 1 and tuple(bias.shape) in ((), (1,)))
        if not ok:
            raise ValueError(
                f"bias must have shape ({n},) (the last dim of b{tuple(b.shape)}), got {tuple(bias.shape)}"
            )
    return batch, m, ka, n, out_shape


def _as2d(a, b):
    """Operands with the 1-D cases made 2-D: a (K,) -> (1, K), b (K,) -> (K, 1) (views)."""
    return (a[None, :] if a.ndim == 1 else a), (b[:, None] if b.ndim == 1 else b)


def _as3d(x2, batch):
    """(x3, mode): x2 (..., R, C) seen as (B, R, C). mode "none": x has no real batch (batch stride 0),
    "full": x covers the whole batch, "copy": x was broadcast along some batch dims only (materialized)."""
    xp = xp_of(x2)
    nb = math.prod(batch)
    tail = tuple(x2.shape[-2:])
    xb = tuple(x2.shape[:-2])
    if math.prod(xb) == 1 or nb == 1:
        x = x2.reshape(tail)
        return xp.broadcast_to(x, (nb,) + tail), "none"
    if (1,) * (len(batch) - len(xb)) + xb == batch:
        return x2.reshape((nb,) + tail), "full"
    return xp.ascontiguousarray(xp.broadcast_to(x2, batch + tail)).reshape((nb,) + tail), "copy"


def _fold(a3, mode_a, b3, mode_b, M):
    """Fold the batch into M when b has no batch and a's (batch, M) dims merge without a copy (a contiguous
    (B, M, K) input, say): one (B*M, K) @ (K, N) product fills the GPU better than B small ones, and its
    backward needs no reduction over batches. Returns (a3, mode_a, b3, mode_b, nb, M)."""
    nb = a3.shape[0]
    if nb > 1 and mode_a == "full" and mode_b == "none" and (M == 1 or a3.strides[0] == M * a3.strides[1]):
        return a3.reshape(1, nb * M, a3.shape[2]), "full", b3[:1], "none", 1, nb * M
    return a3, mode_a, b3, mode_b, nb, M


def _strides(x):
    return tuple(s // x.itemsize for s in x.strides)


def _upcast(x):
    return isinstance(x, np.ndarray) and x.dtype.name == "bfloat16"


def _launch(
    a3, a_s, b3, b_s, c, c_s, M, N, K, nb, rb, *, key, bias=None, z=None, r=None, r_s=(0, 0, 0, 0),
    dbias=None, act=0, dout_op=0, grad_act=0, r_is_out=False, param=0.0, allow_tf32=True,
):  # fmt: skip
    """Launch _matmul_kernel over C (nb batches of M x N); a_s/b_s: (batch, reduction-batch, row, col) strides."""
    if M == 0 or N == 0 or nb == 0:
        return
    like = a3
    probed = []  # configs launched by autotune.pick (timing or probe runs): only then does dbias hold their sums

    def run(cfg):
        grid = (cdiv(M, cfg["BLOCK_M"]) * cdiv(N, cfg["BLOCK_N"]), nb)
        kernel_for(_matmul_kernel, a3, b3)[grid](
            targ(a3), targ(b3), targ(c), targ(bias), targ(z), targ(r), targ(dbias),
            M, N, K, rb, param, *a_s, *b_s, *c_s, *r_s,
            HAS_BIAS=bias is not None, ACT=act, STORE_Z=z is not None, DOUT_OP=dout_op, HAS_R=r is not None,
            GRAD_ACT=grad_act, R_IS_OUT=r_is_out, DBIAS=dbias is not None, UPCAST=_upcast(a3),
            INPUT_PRECISION="tf32" if allow_tf32 else "ieee",
            BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"], GROUP_M=cfg["GROUP_M"],
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        )  # fmt: skip

    full_key = (str(a3.dtype), autotune.bucket(M), autotune.bucket(N), autotune.bucket(K), autotune.bucket(rb)) + key
    cfg = autotune.pick(
        "matmul", full_key, GPU_CONFIGS, lambda c: (probed.append(1), run(c)), like=like,
        interpret_config=INTERPRET_CONFIG, smem=lambda c: smem_bytes(c, a3.dtype.itemsize, dout_op, r is not None),
    )  # fmt: skip
    if dbias is not None and probed:
        # the timing runs (first call per key only) added into dbias: reset it then, and only then (a cached
        # config launches nothing in pick, so the caller's zeroed dbias is clean: no fill per launch). This CuPy
        # fill, the xp.zeros/empty allocations above and the Triton launches are ordered because both sides use
        # the legacy default stream unless someone sets another; a caller that sets a CuPy stream must set
        # Triton's to match.
        dbias[...] = 0
    run(cfg)


def _triton_forward(a, b, bias, name, param, allow_tf32, batch, M, K, N, out_shape):
    xp = xp_of(a)
    a2, b2 = _as2d(a, b)
    a3, mode_a = _as3d(a2, batch)
    b3, mode_b = _as3d(b2, batch)
    a3, _, b3, _, nb, M = _fold(a3, mode_a, b3, mode_b, M)
    c = xp.empty((nb, M, N), dtype=a.dtype)
    z = xp.empty((nb, M, N), dtype=a.dtype) if name not in FROM_OUTPUT and name != "none" else None
    bias1 = None if bias is None else xp.ascontiguousarray(bias.reshape(N))
    sa, sb, sc = _strides(a3), _strides(b3), _strides(c)
    _launch(
        a3, (sa[0], 0, sa[1], sa[2]), b3, (sb[0], 0, sb[1], sb[2]), c, sc, M, N, K, nb, 1,
        key=("fwd", act_code(name)), bias=bias1, z=z, act=act_code(name), param=param, allow_tf32=allow_tf32,
    )  # fmt: skip
    return c.reshape(out_shape), (None if z is None else z.reshape(out_shape))


def _sum_to(x, shape):
    """Sum x over its leading dims and over the dims where ``shape`` has 1, giving ``shape``."""
    lead = x.ndim - len(shape)
    if lead:
        x = x.sum(axis=tuple(range(lead)))
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and x.shape[i] != 1)
    return x.sum(axis=axes, keepdims=True) if axes else x


#: Activations whose act' is fused into the operand loads of the backward products. The fused tile is
#: recomputed by every program that loads it (K / BLOCK_N times per element in dA, K / BLOCK_M in dB), which
#: is free for a compare-and-select but costs more than one elementwise pass for erf/exp/tanh activations:
#: those get dZ from one elementwise kernel (the activations backward kernel) and plain products.
FUSE_IN_LOADS = frozenset({"relu", "leaky_relu"})


def _triton_backward(res, dout, needs):
    a, b, bias_shape, name, param = res.a, res.b, res.bias_shape, res.act, res.param
    batch, M, K, N = res.batch, res.M, res.K, res.N
    xp = xp_of(a)
    a2, b2 = _as2d(a, b)
    a3, mode_a = _as3d(a2, batch)
    b3, mode_b = _as3d(b2, batch)
    a3, mode_a, b3, mode_b, nb, M = _fold(a3, mode_a, b3, mode_b, M)
    d3 = dout.astype(a.dtype, copy=False).reshape(nb, M, N)
    r3 = None if res.r is None else res.r.reshape(nb, M, N)
    if r3 is not None and name not in FUSE_IN_LOADS:
        # dZ = dOut * act'(Z) once, elementwise, in the storage dtype; the products then read it plainly
        d3 = dz_from_saved(r3, d3, name, param, a.dtype)
        r3 = None
    sd = _strides(d3)
    sr = _strides(r3) if r3 is not None else (0, 0, 0)
    common = {"r": r3, "grad_act": act_code(name), "r_is_out": name in FROM_OUTPUT, "param": param,
              "allow_tf32": res.allow_tf32}  # fmt: skip
    want_da, want_db, want_dbias = needs[0], needs[1], needs[2] and bias_shape is not None
    dbias = xp.zeros(N, dtype=np.float32) if want_dbias else None
    dbias_done = False
    da = db = None
    sa, sb = _strides(a3), _strides(b3)

    def split(s, reduce_batch):
        """(batch, reduction-batch, row, col) strides: batch stride on the grid axis, or on the in-kernel loop."""
        return (0, s[0], s[1], s[2]) if reduce_batch else (s[0], 0, s[1], s[2])

    if want_da and M and K and N:  # N == 0: dA is a sum of nothing (zeros below), no launch
        # dA = dZ @ B^T: A operand dOut (act' fused in its loads when r is given), B operand b3 transposed
        # (strides swapped, no copy); dbias from the first tile column
        red = mode_a == "none" and nb > 1
        out_nb, rb = (1, nb) if red else (nb, 1)
        da3 = xp.empty((out_nb, M, K), dtype=a.dtype)
        _launch(
            d3, split(sd, red), b3, split((sb[0], sb[2], sb[1]), red), da3, _strides(da3), M, K, N, out_nb, rb,
            key=("dA", common["grad_act"] if r3 is not None else 0, want_dbias), r_s=split(sr, red),
            dbias=dbias, dout_op=1, **common,
        )  # fmt: skip
        dbias_done = want_dbias
        da = _unflatten(da3, a, a2, batch, mode_a)
    if want_db and K and N and M:  # M == 0 (no rows): dB is zeros, no launch
        # dB = A^T @ dZ: A operand a3 transposed, B operand dOut (act' fused in its loads when r is given)
        red = mode_b == "none" and nb > 1
        out_nb, rb = (1, nb) if red else (nb, 1)
        # written in b's own layout: for b = weightᵀ (a linear layer) dB is then a view of a contiguous dW
        db3 = xp.empty((out_nb, N, K), dtype=b.dtype).transpose(0, 2, 1) if _col_major(b) else \
            xp.empty((out_nb, K, N), dtype=b.dtype)  # fmt: skip
        db_bias = dbias if want_dbias and not dbias_done else None
        _launch(
            a3, split((sa[0], sa[2], sa[1]), red), d3, split(sd, red), db3, _strides(db3), K, N, M, out_nb, rb,
            key=("dB", common["grad_act"] if r3 is not None else 0, db_bias is not None), r_s=split(sr, red),
            dbias=db_bias, dout_op=2, **common,
        )  # fmt: skip
        dbias_done = dbias_done or db_bias is not None
        db = _unflatten(db3, b, b2, batch, mode_b)
    if want_da and da is None:
        da = xp.zeros(a.shape, dtype=a.dtype)
    if want_db and db is None:
        db = xp.zeros(b.shape, dtype=b.dtype)
    dbias_out = None
    if want_dbias:
        if not dbias_done and M and N and nb:
            # neither product ran (not requested, or K == 0): column sums of dZ with xp
            dz = d3 if r3 is None else dz_from_saved(r3, d3, name, param, np.float32)
            dbias = dz.astype(np.float32).reshape(-1, N).sum(axis=0)
        dbias_out = dbias.astype(res.bias_dtype).reshape(bias_shape)
    return da, db, dbias_out


def _col_major(b):
    """True for a 2-D operand stored column-major, such as ``weight.T`` in a linear layer.

    Its gradient is then produced in the same layout, so that the gradient of ``weight`` itself comes
    out C-contiguous: optimizers and gradient clipping would otherwise copy it on every step.
    """
    return b.ndim == 2 and b.shape[0] > 1 and b.shape[1] > 1 and b.strides[0] < b.strides[1]


def _unflatten(x3, x, x2, batch, mode):
    """A gradient computed as (B or 1, R, C) back to the shape of the operand x (summing a 'copy' broadcast)."""
    if mode == "copy":
        return (
            _sum_to(x3.astype(np.float32).reshape(batch + tuple(x2.shape[-2:])), x2.shape)
            .astype(x.dtype)
            .reshape(x.shape)
        )
    return x3.reshape(x.shape)


# --------------------------------------------------------------------------------------------------------------
# Reference path (NumPy or CuPy): fp32 math for fp16/bf16/fp32, fp64 for fp64
# --------------------------------------------------------------------------------------------------------------


def _ct(dtype):
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def _mm(xp, x, y):
    """``x @ y`` on the reference path; NumPy products get one BLAS thread when small (_threads.blas_product)."""
    if xp is not np or y.ndim < 2:
        return xp.matmul(x, y)
    macs = max(x.size * y.shape[-1], y.size * (x.shape[-2] if x.ndim > 1 else 1))  # M·K·N times the batch
    return blas_product(macs, np.matmul, x, y)


def _fold_rows(a, b):
    """True when ``a @ b`` is one 2-D product over a's rows: b is a plain matrix (a linear layer's weightᵀ) and
    a has a batch, so (..., M, K) @ (K, N) is (rows, K) @ (K, N). One BLAS call instead of one per batch
    entry, and dB = Aᵀ dZ needs no per-batch products summed afterwards."""
    return b.ndim == 2 and a.ndim > 2


def _reference_forward(a, b, bias, name, param, out_shape):
    xp = xp_of(a)
    ct = _ct(a.dtype)
    a_c, b_c = a.astype(ct, copy=False), b.astype(ct, copy=False)
    if _fold_rows(a, b):
        z = _mm(xp, a_c.reshape(-1, a.shape[-1]), b_c)
    else:
        z = _mm(xp, a_c, b_c)
    if name != "none" and z.ndim >= 1 and z.flags.c_contiguous and compiled(z):
        out = _compiled_epilogue(z, bias, name, param, ct)
    else:
        if bias is not None:
            z += bias.astype(ct, copy=False).reshape(-1)  # z is a fresh product: add in place
        out = act_ref(z, name, param)
    out = out.astype(a.dtype, copy=False)
    # z is a fresh array act_ref does not modify; out is another one, so r may share z's memory
    r = None if name == "none" else (out if name in FROM_OUTPUT else z.astype(a.dtype, copy=False))
    return out.reshape(out_shape), r


def _compiled_epilogue(z, bias, name, param, ct):
    """act(z + bias) in one compiled pass over the fresh product z (bias added into z in place, as z is the
    residual of the names outside FROM_OUTPUT); relu/tanh/sigmoid write the output over z itself."""
    n = z.shape[-1]
    out = z if name in FROM_OUTPUT else np.empty_like(z)
    if bias is None:
        b = np.zeros(n, ct)
    else:  # bias (N,), or one value for every element when b was 1-D (z (..., M)): a contiguous row of n values
        b = np.ascontiguousarray(bias.astype(ct, copy=False).reshape(-1))
        b = b if b.size == n else np.full(n, b[0], ct)
    _jit.family("act").bias_forward(
        z.reshape(-1, n), b, ACT_CODES[name], float(param), cost=jit_passes(name), out=out.reshape(-1, n)
    )
    return out


def _dz_ref(dout, r, name, param):
    """dZ = dOut * act'(Z) in the compute dtype (act' from Z, or from the output for relu/tanh/sigmoid)."""
    ct = _ct(dout.dtype)
    d = dout.astype(ct, copy=False)
    if r is None:
        return d
    return act_backward_ref(r.astype(ct, copy=False), d.reshape(r.shape), name, param)


def _reference_backward(res, dout, needs):
    a, b, bias_shape, name = res.a, res.b, res.bias_shape, res.act
    batch, M, N = res.batch, res.M, res.N
    xp = xp_of(a)
    ct = _ct(a.dtype)
    dz = _dz_ref(dout.astype(a.dtype, copy=False), res.r, name, res.param)
    da = db = dbias = None
    if _fold_rows(a, b):
        # (rows, N) products: see _fold_rows
        K = a.shape[-1]
        dz2 = dz.reshape(-1, N)
        if needs[0]:
            da = _mm(xp, dz2, b.astype(ct, copy=False).T).reshape(a.shape).astype(a.dtype, copy=False)
        if needs[1]:
            a2 = a.astype(ct, copy=False).reshape(-1, K)
            # dBᵀ = dZᵀ A keeps dB in b's own (transposed) layout; see _col_major
            db2 = _mm(xp, dz2.T, a2).T if _col_major(b) else _mm(xp, a2.T, dz2)
            db = db2.astype(b.dtype, copy=False)
    else:
        a2, b2 = _as2d(a, b)
        dz2 = dz.reshape(batch + (M, N))
        if needs[0]:
            da2 = _mm(xp, dz2, xp.swapaxes(b2.astype(ct, copy=False), -1, -2))  # dA = dZ @ B^T
            da = _sum_to(da2, a2.shape).reshape(a.shape).astype(a.dtype, copy=False)
        if needs[1]:
            if _col_major(b):  # dB^T = dZ^T @ A keeps dB in b's own (transposed) layout; see _col_major
                db2 = xp.swapaxes(_mm(xp, xp.swapaxes(dz2, -1, -2), a2.astype(ct, copy=False)), -1, -2)
            else:
                db2 = _mm(xp, xp.swapaxes(a2.astype(ct, copy=False), -1, -2), dz2)  # dB = A^T @ dZ
            db = _sum_to(db2, b2.shape).reshape(b.shape).astype(b.dtype, copy=False)
    if needs[2] and bias_shape is not None:
        dbias = sum_rows(dz.reshape(-1, N)).reshape(bias_shape).astype(res.bias_dtype)  # BLAS gemv on NumPy
    return da, db, dbias


# --------------------------------------------------------------------------------------------------------------
# Public pair
# --------------------------------------------------------------------------------------------------------------


def matmul_forward(a, b, bias=None, activation=None, *, negative_slope=0.01, alpha=1.0, allow_tf32=True):
    """out = act(a @ b + bias); returns ``(out, residuals)``.

    a: (..., M, K) or (K,); b: (..., K, N) or (K,), NumPy matmul semantics (1-D operands, broadcast batch
    dims); bias: (N,) or None (shape () or (1,) when b is 1-D). a, b, bias share one dtype: float16,
    bfloat16, float32 (float64: reference path only; the Triton path falls back to it). ``activation``:
    None/"none", "relu", "leaky_relu" (``negative_slope``), "elu" (``alpha``), "gelu", "gelu_tanh", "silu",
    "tanh", "sigmoid". ``allow_tf32``: fp32 dots on tensor cores in TF32 (GPU only). out has a's dtype.
    Example: ``out, res = matmul_forward(x, w, b, "relu")`` with x (32, 64), w (64, 16), b (16,).
    """
    name = act_name(activation)
    batch, M, K, N, out_shape = _check_inputs(a, b, bias)
    param = float(negative_slope if name == "leaky_relu" else alpha if name == "elu" else 0.0)
    if use_triton(a, b, bias) and a.dtype != np.float64:
        out, r = _triton_forward(a, b, bias, name, param, allow_tf32, batch, M, K, N, out_shape)
        if r is None and name in FROM_OUTPUT:
            r = out
    else:
        out, r = _reference_forward(a, b, bias, name, param, out_shape)
    bias_shape, bias_dtype = (None, None) if bias is None else (tuple(bias.shape), bias.dtype)
    return out, MatmulResiduals(a, b, r, name, param, allow_tf32, bias_shape, bias_dtype, batch, M, K, N, out_shape)


def matmul_backward(residuals, dout, needs_input_grad=(True, True, True)):
    """(da, db, dbias) for out = act(a @ b + bias), given dout = dL/dout (out's shape, any float dtype).

    dZ = dout * act'(Z); da = dZ @ b^T, db = a^T @ dZ, each summed over the batch dims its operand was
    broadcast along and shaped like it; dbias = dZ summed over all rows. Entries not requested by
    ``needs_input_grad`` (and dbias without a bias) are None. Gradients have their input's dtype.
    """
    if tuple(dout.shape) != tuple(residuals.out_shape):
        raise ValueError(f"dout has shape {tuple(dout.shape)}, expected the output's shape {residuals.out_shape}")
    if dout.dtype not in _ALL_DTYPES:
        raise TypeError(f"dout must be a float array, got dtype {dout.dtype}")
    needs = tuple(bool(x) for x in needs_input_grad) + (True,) * (3 - len(needs_input_grad))
    a, b = residuals.a, residuals.b
    if use_triton(a, b, dout) and a.dtype != np.float64:
        return _triton_backward(residuals, dout, needs)
    return _reference_backward(residuals, dout, needs)
