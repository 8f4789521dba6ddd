"""Cross-entropy loss on logits: fused online-logsumexp forward, chunked recompute backward, reference path."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import _deferred, _jit
from ._launch import DtypeSet, TritonKernel, cdiv, kernel_for, next_power_of_2, targ, use_triton, xp_of

#: Storage dtypes the Triton kernels take (math is always fp32 inside).
_TRITON_DTYPES = DtypeSet(("float32", "float16", "bfloat16"))  # by name: no ml_dtypes import
#: Every logits dtype accepted; float64 always takes the reference path (keeps float64 for gradchecks).
_FLOAT_DTYPES = DtypeSet((*_TRITON_DTYPES, "float64"))
_REDUCTIONS = ("mean", "sum", "none")

#: Chunk of the vocabulary one program handles per step, on the GPU (forward loops over chunks,
#: backward launches one program per (row, chunk)).
MAX_BLOCK = 4096
#: Tests set this (e.g. to 8) to force many small chunks on short rows.
FORCE_BLOCK: int | None = None


# The @triton.jit kernels are in kernels/_triton/cross_entropy.py, imported by kernel_for at the first Triton
# launch: the reference path never imports Triton.
_ce_fwd_kernel = TritonKernel("cross_entropy", "_ce_fwd_kernel")
_ce_bwd_kernel = TritonKernel("cross_entropy", "_ce_bwd_kernel")


# ----------------------------------------------------------------------------------------------
# Checks, residuals, launchers
# ----------------------------------------------------------------------------------------------


class CrossEntropyResiduals(NamedTuple):
    """What the backward needs: the caller's logits (a 2-D view, no copy when contiguous), targets, per-row lse.

    The logsumexp is kept in two (N,) float32 parts, lse = row_max + log_sum, so that the backward's
    exp((x - row_max) - log_sum) stays accurate for large logits; ``.lse`` gives their sum.
    """

    logits: object  # (N, V), the caller's array viewed as 2-D
    target: object  # (N,) int32/int64
    row_max: object  # (N,) float32 max_j x_ij (float64 for float64 logits)
    log_sum: object  # (N,) float32 log sum_j exp(x_ij - row_max_i)
    n_valid: object  # 0-d, lse's dtype: number of targets != ignore_index
    ignore_index: int
    label_smoothing: float
    reduction: str
    logits_shape: tuple

    @property
    def lse(self):
        """(N,) logsumexp of each row."""
        return self.row_max + self.log_sum


def _check(logits, target, ignore_index, label_smoothing, reduction):
    for name, a in (("logits", logits), ("target", target)):
        if not hasattr(a, "dtype") or not hasattr(a, "shape"):
            raise TypeError(f"cross_entropy: {name} must be a NumPy or CuPy array, got {type(a).__name__}")
    if np.dtype(logits.dtype) not in _FLOAT_DTYPES:
        raise TypeError(
            f"cross_entropy: logits must be float16, bfloat16, float32 or float64, got {logits.dtype} "
            f"(shape {tuple(logits.shape)})"
        )
    if np.dtype(target.dtype).kind not in "iu":
        raise TypeError(
            f"cross_entropy: target must hold integer class indices (int32/int64), got {target.dtype} "
            f"(shape {tuple(target.shape)})"
        )
    if logits.ndim < 1 or tuple(target.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"cross_entropy: logits (..., V) and target (...) must agree: logits shape {tuple(logits.shape)}, "
            f"target shape {tuple(target.shape)} (expected {tuple(logits.shape[:-1])})"
        )
    if logits.shape[-1] == 0:
        raise ValueError(f"cross_entropy: logits need at least one class, got shape {tuple(logits.shape)}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"cross_entropy: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    if int(ignore_index) != ignore_index:
        raise TypeError(f"cross_entropy: ignore_index must be an integer, got {ignore_index!r}")


def _check_targets_in_range(target, n_classes, ignore_index):
    """Raise naming the first bad target; returns the targets the kernels may read.

    NumPy: raises now. CuPy: no host sync; the flag and the first bad value stay on the device and raise at
    the next sync (``kernels._deferred``), as PyTorch's device-side assert. Until then bad targets are read
    as ``ignore_index`` so that no kernel loads outside its row.
    """
    if target.size == 0:  # nothing to check (and argmax of an empty array raises)
        return target
    bad = (target != ignore_index) & ((target < 0) | (target >= n_classes))
    xp = xp_of(target)
    _deferred.check(
        bad.any(),
        lambda: xp.take(target, xp.argmax(bad)),
        lambda value: ValueError(
            f"cross_entropy: target value {value} is out of range for V={n_classes} classes "
            f"(valid targets are 0..{n_classes - 1}, or ignore_index={ignore_index})"
        ),
    )
    return target if xp is np else xp.where(bad, target.dtype.type(ignore_index), target)


def _flatten(logits, target):
    xp = xp_of(logits)
    n_classes = logits.shape[-1]
    x2 = logits.reshape(-1, n_classes)  # a view for contiguous logits; a copy only for unmergeable strides
    if n_classes > 1 and x2.strides[1] != x2.itemsize:
        x2 = xp.ascontiguousarray(x2)
    t = target.reshape(-1)
    if np.dtype(t.dtype) not in (np.dtype(np.int32), np.dtype(np.int64)):
        t = t.astype(np.int64)
    return x2, xp.ascontiguousarray(t)


def _block(n_cols):
    if FORCE_BLOCK is not None:
        return int(FORCE_BLOCK), 4
    block = min(next_power_of_2(n_cols), MAX_BLOCK)
    return block, (4 if block <= 1024 else 8)


def _ce_fwd_triton(x2, t, ignore_index, eps):
    xp = xp_of(x2)
    n_rows, n_cols = x2.shape
    loss = xp.empty((n_rows,), dtype=np.float32)
    row_max = xp.empty((n_rows,), dtype=np.float32)
    log_sum = xp.empty((n_rows,), dtype=np.float32)
    if n_rows:
        block, warps = _block(n_cols)
        kernel_for(_ce_fwd_kernel, x2)[(n_rows,)](
            targ(x2),
            targ(t),
            targ(loss),
            targ(row_max),
            targ(log_sum),
            n_cols,
            x2.strides[0] // x2.itemsize,
            int(ignore_index),
            float(eps),
            SMOOTH=eps > 0.0,
            BLOCK=block,
            num_warps=warps,
        )
    return loss, row_max, log_sum


def _ce_bwd_triton(res, scale, per_row, out=None):
    xp = xp_of(res.logits)
    x2 = res.logits
    n_rows, n_cols = x2.shape
    # each program reads its block of logits before writing the same block: out may be the logits themselves
    dx = xp.empty((n_rows, n_cols), dtype=x2.dtype) if out is None else out
    if n_rows:
        block, warps = _block(n_cols)
        kernel_for(_ce_bwd_kernel, x2)[(n_rows, cdiv(n_cols, block))](
            targ(x2),
            targ(res.target),
            targ(res.row_max),
            targ(res.log_sum),
            targ(scale),
            targ(dx),
            n_cols,
            x2.strides[0] // x2.itemsize,
            n_cols,
            int(res.ignore_index),
            float(res.label_smoothing),
            PER_ROW_SCALE=per_row,
            BLOCK=block,
            num_warps=warps,
        )
    return dx


# ----------------------------------------------------------------------------------------------
# Reference path (array API: NumPy and CuPy)
# ----------------------------------------------------------------------------------------------


def _compute_dtype(dtype):
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def _ce_fwd_reference(x2, t, ignore_index, eps):
    if _jit.enabled() and isinstance(x2, np.ndarray) and x2.size:  # compiled row kernels (kernels/_numba/rows.py)
        return _jit.family("rows").ce_forward(x2, t, ignore_index, eps)
    xp = xp_of(x2)
    xf = x2.astype(_compute_dtype(x2.dtype), copy=False)
    n_rows, n_cols = xf.shape
    ignored = t == ignore_index
    t_safe = xp.where(ignored, 0, t).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        m = xf.max(axis=1, keepdims=True)
        z = xf - m
        z_t = z[xp.arange(n_rows), t_safe]  # (x - m)[t], before z is overwritten below
        smooth = None
        if eps > 0.0:
            smooth = z.sum(axis=1)
        e = xp.exp(z, out=z)  # z's values are no longer needed
        log_sum = xp.log(e.sum(axis=1, keepdims=True))
        ls = log_sum[:, 0]
        nll = ls - z_t  # -log softmax(x)[t] = lse - (x_t - m)
        if smooth is not None:
            smooth = n_cols * ls - smooth  # sum_j -log softmax(x)_j = V lse - sum_j (x_j - m)
            loss = (1.0 - eps) * nll + (eps / n_cols) * smooth
        else:
            loss = nll
        loss = xp.where(ignored, 0.0, loss)
    ldt = np.float64 if xf.dtype == np.float64 else np.float32  # float64 logits keep a float64 loss (gradchecks)
    return loss.astype(ldt, copy=False), m[:, 0].astype(ldt), ls.astype(ldt)


def _ce_bwd_reference(res, scale, per_row, out=None):
    if _jit.enabled() and isinstance(res.logits, np.ndarray) and res.logits.size:
        return _jit.family("rows").ce_backward(res.logits, res.target, res.row_max, res.log_sum, scale, per_row,
                                               res.ignore_index, res.label_smoothing, out)  # fmt: skip
    xp = xp_of(res.logits)
    ct = _compute_dtype(res.logits.dtype)
    xf = res.logits.astype(ct, copy=False)
    n_rows, n_cols = xf.shape
    eps = res.label_smoothing
    t = res.target
    ignored = t == res.ignore_index
    t_safe = xp.where(ignored, 0, t).astype(np.int64)
    # dlogits = (softmax(x) - (1 - eps) * onehot(t) - eps / V) * scale_i, ignored rows 0; built in one
    # fresh (N, V) array: the one-hot term touches N elements, not N·V
    m, log_sum = res.row_max.astype(ct)[:, None], res.log_sum.astype(ct)[:, None]
    # with out (the logits, in the compute dtype) the gradient overwrites them: no second (N, V) array
    g = xp.subtract(xf, m, out=out) if out is not None and out.dtype == ct else xf - m
    g -= log_sum
    xp.exp(g, out=g)
    if eps:
        g -= eps / n_cols
    g[xp.arange(n_rows), t_safe] -= 1.0 - eps
    g *= scale.astype(ct).reshape(-1, 1) if per_row else scale.astype(ct).reshape(1, 1)
    if ignored.any():
        g[ignored] = 0.0
    if out is not None and g is not out:
        out[...] = g
        return out
    return g.astype(res.logits.dtype, copy=False)


# ----------------------------------------------------------------------------------------------
# Public pair
# ----------------------------------------------------------------------------------------------


def cross_entropy_forward(
    logits, target, *, ignore_index=-100, label_smoothing=0.0, reduction="mean", check_targets=True
):
    """Cross-entropy of ``logits`` (..., V) against integer class ``target`` (...), PyTorch semantics.

    Per row, with lse = log(sum_j exp(x_j)) and eps = ``label_smoothing``:
        loss_i = (1 - eps) * (lse - x[t_i]) + eps / V * sum_j (lse - x_j),   0 where t_i == ignore_index.
    ``reduction``: "mean" = sum_i loss_i / n_valid (n_valid = #targets != ignore_index; all ignored
    gives NaN, as PyTorch), "sum" = sum_i loss_i, "none" = loss_i shaped like ``target``.

    logits: float16 / bfloat16 / float32 (Triton) or float64 (reference path); target: int32 / int64.
    Returns ``(loss, residuals)``; ``loss`` is float32 (float64 for float64 logits), 0-d for mean/sum.
    Targets outside [0, V) other than ``ignore_index`` raise ValueError: at once for NumPy arrays, at the
    next host sync for CuPy ones (no sync here). ``check_targets=False``: the caller checked them already.
    Inputs are never modified.

    >>> loss, res = cross_entropy_forward(np.zeros((2, 3), np.float32), np.array([0, 2]))
    >>> dlogits = cross_entropy_backward(res, np.float32(1.0))
    """
    _check(logits, target, ignore_index, label_smoothing, reduction)
    xp = xp_of(logits)
    eps = float(label_smoothing)
    n_classes = logits.shape[-1]
    x2, t = _flatten(logits, target)
    if check_targets:
        t = _check_targets_in_range(t, n_classes, ignore_index)
    if use_triton(logits, target) and np.dtype(logits.dtype) in _TRITON_DTYPES:
        loss, row_max, log_sum = _ce_fwd_triton(x2, t, ignore_index, eps)
    else:
        loss, row_max, log_sum = _ce_fwd_reference(x2, t, ignore_index, eps)
    ldt = loss.dtype  # float32; float64 only for float64 logits
    n_valid = xp.asarray(xp.count_nonzero(t != ignore_index), dtype=ldt)
    if reduction == "none":
        out = loss.reshape(target.shape)
    elif reduction == "sum":
        out = xp.asarray(loss.sum(dtype=ldt), dtype=ldt)
    else:
        with np.errstate(invalid="ignore", divide="ignore"):  # all targets ignored: 0 / 0 = NaN, as PyTorch
            out = xp.asarray(loss.sum(dtype=ldt) / n_valid, dtype=ldt)
    res = CrossEntropyResiduals(
        x2, t, row_max, log_sum, n_valid, int(ignore_index), eps, reduction, tuple(logits.shape)
    )
    return out, res


def cross_entropy_backward(residuals, dloss, out=None):
    """Gradient of :func:`cross_entropy_forward` with respect to the logits (same shape and dtype).

    dlogits_ij = (softmax(x_i)_j - (1 - eps) * [j == t_i] - eps / V) * scale_i,  0 for ignored rows,
    scale_i = dloss (sum), dloss / n_valid (mean), dloss[i] (none; ``dloss`` shaped like the loss).
    ``out``: a C-contiguous (N, V) array of the logits' dtype to write the gradient into; it may be the
    residuals' logits themselves (turned into their gradient in place, as the fused linear cross-entropy does).
    """
    res = residuals
    xp = xp_of(res.logits)
    n_rows = res.logits.shape[0]
    dl = xp.asarray(dloss)
    sdt = res.log_sum.dtype  # float32 (float64 for float64 logits)
    if res.reduction == "none":
        if dl.size != n_rows or (dl.ndim and tuple(dl.shape) != tuple(res.logits_shape[:-1])):
            raise ValueError(
                f"cross_entropy_backward: reduction='none' needs dloss shaped like the loss "
                f"{tuple(res.logits_shape[:-1])}, got {tuple(dl.shape)}"
            )
        scale, per_row = xp.ascontiguousarray(dl.reshape(-1).astype(sdt)), True
    else:
        if dl.size != 1:
            raise ValueError(
                f"cross_entropy_backward: reduction={res.reduction!r} gives a scalar loss; dloss must have "
                f"one element, got shape {tuple(dl.shape)}"
            )
        scale, per_row = dl.reshape(1).astype(sdt), False
        if res.reduction == "mean":
            with np.errstate(invalid="ignore", divide="ignore"):
                scale = scale / res.n_valid  # stays on the device: no host sync; n_valid = 0 gives inf, rows all 0
    if out is not None and (
        tuple(out.shape) != tuple(res.logits.shape) or out.dtype != res.logits.dtype or not out.flags.c_contiguous
    ):
        raise ValueError(
            f"cross_entropy_backward: out must be a C-contiguous {tuple(res.logits.shape)} array of "
            f"{res.logits.dtype}, got shape {tuple(out.shape)}, dtype {out.dtype}"
        )
    if use_triton(res.logits) and np.dtype(res.logits.dtype) in _TRITON_DTYPES:
        dx = _ce_bwd_triton(res, scale, per_row, out)
    else:
        dx = _ce_bwd_reference(res, scale, per_row, out)
    return dx.reshape(res.logits_shape)
