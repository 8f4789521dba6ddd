"""LayerNorm and RMSNorm over the last dimension: fused Triton kernels (forward, backward) and reference paths."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import _jit
from ._launch import TritonKernel, cdiv, interpreting, kernel_for, next_power_of_2, targ, use_triton, xp_of
from ._threads import blas_for, parallel_for, threads_for

# The @triton.jit kernels are in kernels/_triton/norms.py, imported by kernel_for at the first Triton
# launch: the reference path never imports Triton.
_norm_fwd_kernel = TritonKernel("norms", "_norm_fwd_kernel")
_norm_bwd_kernel = TritonKernel("norms", "_norm_bwd_kernel")


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------

_FLOATS = ("float32", "float16", "bfloat16", "float64")


class NormResiduals(NamedTuple):
    """What a norm's backward needs: the input, the weight, the bias dtype (``None``: no bias) and the
    per-row statistics, ``mean`` (LayerNorm; ``None`` for RMSNorm) and ``rstd``, both of shape (rows,)
    in float32 (float64 when ``x`` is float64)."""

    x: object
    weight: object
    bias_dtype: object
    mean: object
    rstd: object

    @property
    def has_bias(self) -> bool:
        return self.bias_dtype is not None


def _float(dt):
    """dt is one of _FLOATS (by kind code first: NumPy's ``dtype.name`` is a Python property, ~1 us a call)."""
    return dt.char in "efd" or dt.name in _FLOATS


def _check(x, weight, bias, name):
    if not _float(x.dtype):
        raise TypeError(f"{name}: x must be float32, float16, bfloat16 or float64, got dtype {x.dtype}")
    if x.ndim < 1 or x.shape[-1] == 0:
        raise ValueError(f"{name}: x must have a non-empty last dimension to normalise, got shape {x.shape}")
    D = x.shape[-1]
    for label, a in (("weight", weight), ("bias", bias)):
        if a is None:
            continue
        if not _float(a.dtype):
            raise TypeError(f"{name}: {label} must be a float array, got dtype {a.dtype}")
        if tuple(a.shape) != (D,):
            raise ValueError(f"{name}: {label} must have shape ({D},) to match x of shape {x.shape}, got {a.shape}")


def _launch_settings(D, itemsize, on_gpu):
    """(BLOCK_M, BLOCK_D, num_warps): tiles of at most 4096 elements on the GPU, small under the interpreter."""
    if not on_gpu:
        block_d = min(next_power_of_2(D), 64)
        return max(1, min(8, 256 // block_d)), block_d, 1
    block_d = min(next_power_of_2(D), 4096 if itemsize <= 2 else 2048)
    block_m = max(1, min(16, 2048 // block_d))
    num_warps = min(max(block_m * block_d // 256, 1), 8)
    return block_m, block_d, num_warps


def _norm_fwd_triton(x, weight, bias, eps, is_rms):
    xp = xp_of(x)
    D = x.shape[-1]
    x2 = xp.ascontiguousarray(x.reshape(-1, D))  # rows are read with stride D: copy non-contiguous inputs
    M = x2.shape[0]
    y = xp.empty_like(x2)
    mean = None if is_rms else xp.empty((M,), dtype=np.float32)
    rstd = xp.empty((M,), dtype=np.float32)
    if M > 0:
        block_m, block_d, warps = _launch_settings(D, x.itemsize, not isinstance(x, np.ndarray))
        grid = (cdiv(M, block_m),)
        kernel_for(_norm_fwd_kernel, x2)[grid](
            targ(x2), targ(weight), targ(bias), targ(y), targ(mean), targ(rstd), M, D, float(eps),
            IS_RMS=is_rms, HAS_W=weight is not None, HAS_B=bias is not None,
            BLOCK_M=block_m, BLOCK_D=block_d, num_warps=warps,
        )  # fmt: skip
    return y.reshape(x.shape), NormResiduals(x2, weight, None if bias is None else bias.dtype, mean, rstd)


def _num_partials(M, block_m, x):
    """G, the number of backward programs (and rows of the partial dweight buffers)."""
    blocks = cdiv(M, block_m)
    if isinstance(x, np.ndarray) or interpreting():
        return max(1, min(blocks, 4))
    return max(1, min(blocks, 4 * _sm_count(x)))


_SMS: dict = {}


def _sm_count(x):
    """Streaming multiprocessors of the GPU holding ``x`` (one attribute query per GPU, then cached: reading
    ``Device.attributes`` queries every attribute, ~0.1 ms, on every backward otherwise)."""
    dev = x.device.id
    n = _SMS.get(dev)
    if n is None:
        xp = xp_of(x)
        n = _SMS[dev] = int(xp.cuda.runtime.deviceGetAttribute(xp.cuda.runtime.cudaDevAttrMultiProcessorCount, dev))
    return n


def _norm_bwd_triton(res, dy, is_rms):
    xp = xp_of(res.x)
    x2 = res.x
    M, D = x2.shape
    dy2 = xp.ascontiguousarray(dy.reshape(M, D))
    dx = xp.empty_like(x2)
    has_w, has_b = res.weight is not None, res.has_bias
    block_m, block_d, warps = _launch_settings(D, x2.itemsize, not isinstance(x2, np.ndarray))
    G = _num_partials(M, block_m, x2) if M > 0 else 1
    dw_part = xp.zeros((G, D), dtype=np.float32) if has_w else None
    db_part = xp.zeros((G, D), dtype=np.float32) if has_b else None
    if M > 0:
        kernel_for(_norm_bwd_kernel, x2)[(G,)](
            targ(x2), targ(res.weight), targ(dy2), targ(dx), targ(res.mean), targ(res.rstd),
            targ(dw_part), targ(db_part), M, D, G,
            IS_RMS=is_rms, HAS_W=has_w, HAS_B=has_b, BLOCK_M=block_m, BLOCK_D=block_d, num_warps=warps,
        )  # fmt: skip
    # Stage 2 of the reduction: a CuPy/NumPy sum over the G partial rows. CuPy runs on its current
    # stream, Triton on the driver's default stream; both are the legacy default stream unless the
    # caller set another one, so the sum sees the kernel's writes.
    dw = dw_part.sum(axis=0).astype(res.weight.dtype) if has_w else None
    db = db_part.sum(axis=0).astype(res.bias_dtype) if has_b else None
    return dx, dw, db


# ----------------------------------------------------------------------------------------------
# Reference path (array API: NumPy or CuPy). Math in float32 (float64 for float64 inputs).
# ----------------------------------------------------------------------------------------------


def _acc_dtype(x):
    return np.float64 if x.dtype == np.float64 else np.float32


def _norm_fwd_rows(x2, weight, bias, eps, is_rms, out_dtype):
    """y, mean, rstd of the rows of a (rows, D) array: y in ``out_dtype``, mean (None for RMSNorm) and rstd in
    the accumulation dtype."""
    xp = xp_of(x2)
    D = x2.shape[-1]
    acc = _acc_dtype(x2)
    xf = x2.astype(acc, copy=False)
    # row means as matrix-vector products and row dot products: no (rows, D) temporaries, ~4x faster on the CPU
    if is_rms:
        mean = None
        var = xp.einsum("ij,ij->i", xf, xf) / D  # mean(x^2)
    else:
        mean = (xf @ xp.ones(D, dtype=acc)) / D
        xc = xf - mean[:, None]  # fresh: becomes y in place below
        var = xp.einsum("ij,ij->i", xc, xc) / D
    rstd = (1.0 / xp.sqrt(var + acc(eps))).astype(acc)
    if not is_rms and D:
        # a row whose spread overflows (max - min = inf, e.g. [3e38, -3e38, 1] in float32) is NaN, as PyTorch's
        # Welford moments give (x - running mean overflows, then inf - inf); the two-pass form here would give
        # var = inf, rstd = 0 and finite zeros instead
        with np.errstate(over="ignore", invalid="ignore"):
            spread = xf.max(axis=1) - xf.min(axis=1)
        rstd = xp.where(xp.isinf(spread), acc(np.nan), rstd).astype(acc, copy=False)
    if is_rms:
        y = xf * rstd[:, None]  # xhat
    else:
        y = xc
        y *= rstd[:, None]
    if weight is not None:
        y *= weight.astype(acc, copy=False)
    if bias is not None:
        y += bias.astype(acc, copy=False)
    return y.astype(out_dtype, copy=False), mean, rstd


def _pooled_rows(x2, passes):
    """True when a (rows, D) NumPy pass is large enough for the CPU pool (and then BLAS gets one thread, so the
    pool's row-dot products never oversubscribe the cores)."""
    if not isinstance(x2, np.ndarray) or x2.shape[0] < 2 or threads_for(x2.size * passes) <= 1:
        return False
    blas_for(0)
    return True


def _lead(a, b):
    """(start, skip) for a chunk [a, b) of rows (``a`` a multiple of 16, parallel_for's alignment): a chunk of
    fewer than 4 rows is computed with the 4 rows before it, whose results are skipped. BLAS's matrix-vector
    kernels take rows in groups of 4 and round a (1, D) @ (D,) product (a dot kernel) or a remainder group
    differently; with every chunk a multiple of 4 rows long but the last, and the last at least 5, each row
    falls in the same kind of group as in one whole-array call (bit-identical results on any thread count)."""
    return (a - 4, 4) if b - a < 4 and a >= 4 else (a, 0)


def _norm_fwd_ref(x, weight, bias, eps, is_rms):
    D = x.shape[-1]
    x2 = x.reshape(-1, D)
    if _jit.enabled() and isinstance(x2, np.ndarray) and x2.size:  # compiled row kernels (kernels/_numba/rows.py)
        y, mean, rstd = _jit.family("rows").norm_forward(x2, weight, bias, eps, is_rms, x.dtype)
    elif _pooled_rows(x2, 10):  # split between rows, never within one: the same bits on any number of threads
        M, acc = x2.shape[0], _acc_dtype(x2)
        y = np.empty((M, D), dtype=x.dtype)
        mean = None if is_rms else np.empty(M, dtype=acc)
        rstd = np.empty(M, dtype=acc)

        def body(a, b):
            lo, k = _lead(a, b)
            yr, m, r = _norm_fwd_rows(x2[lo:b], weight, bias, eps, is_rms, x.dtype)
            y[a:b], rstd[a:b] = yr[k:], r[k:]
            if mean is not None:
                mean[a:b] = m[k:]

        parallel_for(M, body, work=x2.size * 10)
    else:
        y, mean, rstd = _norm_fwd_rows(x2, weight, bias, eps, is_rms, x.dtype)
    res = NormResiduals(x2, weight, None if bias is None else bias.dtype, mean, rstd)
    return y.reshape(x.shape), res


def _norm_bwd_rows(x2, dyf, mean, rstd, w, is_rms):
    """(dx in x's dtype, p = dy * xhat) for the rows of x2, dyf (accumulation dtype), mean and rstd."""
    xp = xp_of(x2)
    D = x2.shape[1]
    acc = _acc_dtype(x2)
    xf = x2.astype(acc, copy=False)
    rstd = rstd[:, None]
    if is_rms:
        xhat = xf * rstd
    else:
        xhat = xf - mean[:, None]
        xhat *= rstd
    # LayerNorm: dx = rstd * (wdy - mean_D(wdy) - xhat * mean_D(wdy * xhat)),  wdy = dy * w
    # RMSNorm:   dx = rstd * (wdy - xhat * mean_D(wdy * xhat))
    # with p = dy * xhat: mean_D(wdy * xhat) = (p @ w) / D and mean_D(wdy) = (dy @ w) / D (row dots, no temporaries)
    p = dyf * xhat
    if w is None:
        wdy, c1 = dyf, p.mean(axis=1, keepdims=True)
    else:
        wdy, c1 = dyf * w, (p @ w)[:, None] / D
    dx = xhat
    dx *= c1
    xp.subtract(wdy, dx, out=dx)
    if not is_rms:
        dx -= dyf.mean(axis=1, keepdims=True) if w is None else (dyf @ w)[:, None] / D
    dx *= rstd
    return dx.astype(x2.dtype, copy=False), p


def _norm_bwd_ref(res, dy, is_rms):
    x2 = res.x
    M, D = x2.shape
    if _jit.enabled() and isinstance(x2, np.ndarray) and isinstance(dy, np.ndarray) and x2.size:
        # compiled row kernels (kernels/_numba/rows.py): dweight/dbias summed over fixed row blocks
        dx, dw, db = _jit.family("rows").norm_backward(
            x2, dy.reshape(M, D), res.mean, res.rstd, res.weight, is_rms, res.has_bias
        )
    else:
        dx, dw, db = _norm_bwd_numpy(res, dy, is_rms)
    dw = dw.astype(res.weight.dtype) if res.weight is not None else None
    db = db.astype(res.bias_dtype) if res.has_bias else None
    return dx, dw, db


def _norm_bwd_numpy(res, dy, is_rms):
    """(dx, dweight, dbias) of the NumPy/CuPy reference path, dweight/dbias in the accumulation dtype."""
    x2 = res.x
    M, D = x2.shape
    acc = _acc_dtype(x2)
    dyf = dy.reshape(M, D).astype(acc, copy=False)
    w = None if res.weight is None else res.weight.astype(acc, copy=False)
    if _pooled_rows(x2, 12):  # dx split between rows; the column sums below stay whole (their order is fixed)
        dx = np.empty((M, D), dtype=x2.dtype)
        p = np.empty((M, D), dtype=acc) if w is not None else None

        def body(a, b):
            lo, k = _lead(a, b)
            mean = None if res.mean is None else res.mean[lo:b]
            dxr, pr = _norm_bwd_rows(x2[lo:b], dyf[lo:b], mean, res.rstd[lo:b], w, is_rms)
            dx[a:b] = dxr[k:]
            if p is not None:
                p[a:b] = pr[k:]

        parallel_for(M, body, work=x2.size * 12)
    else:
        dx, p = _norm_bwd_rows(x2, dyf, res.mean, res.rstd, w, is_rms)
    # dweight = sum_rows(dy * xhat), dbias = sum_rows(dy)
    dw = p.sum(axis=0) if res.weight is not None else None
    db = dyf.sum(axis=0) if res.has_bias else None
    return dx, dw, db


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


def _triton_ok(*arrays):
    # The kernels compute in fp32; float64 inputs (gradient checks) always take the reference path.
    return all(a is None or a.dtype != np.float64 for a in arrays) and use_triton(*arrays)


def layer_norm_forward(x, weight=None, bias=None, *, eps=1e-5):
    """LayerNorm over the last dimension: ``y = (x - mean) * rstd * weight + bias``.

    ``mean = mean_D(x)``, ``rstd = 1 / sqrt(mean_D((x - mean)^2) + eps)`` (biased variance), per row
    of ``x`` with shape (..., D); ``weight`` and ``bias`` have shape (D,) or are ``None``. Returns
    ``(y, residuals)`` with ``y`` in ``x``'s dtype; residuals are a :class:`NormResiduals` holding ``x``
    as a (rows, D) view, ``weight``, the bias dtype and fp32 ``mean``/``rstd`` of shape (rows,).

    >>> y, res = layer_norm_forward(np.ones((2, 3), np.float32), np.ones(3, np.float32))
    >>> dx, dw, db = layer_norm_backward(res, np.ones((2, 3), np.float32))
    """
    _check(x, weight, bias, "layer_norm_forward")
    if _triton_ok(x, weight, bias):
        return _norm_fwd_triton(x, weight, bias, eps, is_rms=False)
    return _norm_fwd_ref(x, weight, bias, eps, is_rms=False)


def layer_norm_backward(residuals, dy):
    """Gradients of :func:`layer_norm_forward`: ``(dx, dweight, dbias)`` (``None`` for an absent weight/bias).

    ``dx = rstd * (dy*w - mean_D(dy*w) - xhat * mean_D(dy*w*xhat))``, ``dweight = sum_rows(dy * xhat)``,
    ``dbias = sum_rows(dy)``; ``dx`` in ``x``'s dtype, ``dweight``/``dbias`` in the weight's/bias's dtype.
    """
    res = residuals
    _check_dy(res, dy, "layer_norm_backward")
    if _triton_ok(res.x, res.weight, dy):
        dx, dw, db = _norm_bwd_triton(res, dy, is_rms=False)
    else:
        dx, dw, db = _norm_bwd_ref(res, dy, is_rms=False)
    return dx.reshape(dy.shape), dw, db


def rms_norm_forward(x, weight=None, *, eps=1e-6):
    """RMSNorm over the last dimension: ``y = x * rstd * weight`` with ``rstd = 1 / sqrt(mean_D(x^2) + eps)``.

    Returns ``(y, residuals)``; residuals are a :class:`NormResiduals` with ``mean=None`` and fp32 ``rstd``.

    >>> y, res = rms_norm_forward(np.ones((2, 3), np.float32))
    >>> dx, dw = rms_norm_backward(res, np.ones((2, 3), np.float32))
    """
    _check(x, weight, None, "rms_norm_forward")
    if _triton_ok(x, weight):
        return _norm_fwd_triton(x, weight, None, eps, is_rms=True)
    return _norm_fwd_ref(x, weight, None, eps, is_rms=True)


def rms_norm_backward(residuals, dy):
    """Gradients of :func:`rms_norm_forward`: ``(dx, dweight)`` (``dweight`` is ``None`` without a weight).

    ``dx = rstd * (dy*w - xhat * mean_D(dy*w*xhat))`` with ``xhat = x * rstd``; ``dweight = sum_rows(dy * xhat)``.
    """
    res = residuals
    _check_dy(res, dy, "rms_norm_backward")
    if _triton_ok(res.x, res.weight, dy):
        dx, dw, _ = _norm_bwd_triton(res, dy, is_rms=True)
    else:
        dx, dw, _ = _norm_bwd_ref(res, dy, is_rms=True)
    return dx.reshape(dy.shape), dw


def _check_dy(res, dy, name):
    if dy.size != res.x.size or dy.shape[-1] != res.x.shape[-1]:
        raise ValueError(f"{name}: dy of shape {dy.shape} does not match x of shape (rows, D) = {res.x.shape}")
    if not _float(dy.dtype):
        raise TypeError(f"{name}: dy must be a float array, got dtype {dy.dtype}")
