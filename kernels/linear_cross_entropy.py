"""Fused linear + cross-entropy: the vocabulary projection and the loss chunk by chunk, never the full logits.

For x (N, D), weight (V, D), bias (V,) and integer targets t (N,), with eps = ``label_smoothing``::

    z_i    = x_i @ W^T + b                                   (one row of logits, never all N at once)
    loss_i = (1 - eps) * (lse(z_i) - z_i[t_i]) + eps / V * sum_j (lse(z_i) - z_ij),   0 where t_i == ignore_index
    dz_i   = (softmax(z_i) - (1 - eps) * onehot(t_i) - eps / V) * s_i
    dx_i = dz_i @ W,   dW = sum_i dz_i^T x_i,   db = sum_i dz_i

Rows go in chunks of C (:func:`chunk_rows`, from a memory budget): per chunk the matmul kernel makes the (C, V)
logits, the cross-entropy kernel gives the chunk's losses and then turns the logits *in place* into their
gradient, and the matmul kernel's backward gives dx for the chunk and the chunk's share of dW; dW and db
accumulate in float32 (float64 for float64 inputs). The largest arrays alive are one chunk's logits and dW, so
the (N, V) logits and their gradient never exist (Liger-Kernel's fused linear cross-entropy, on conch's
kernels). Each kernel takes its own path (:func:`conch.kernels._launch.use_triton`): Triton on CuPy arrays and
under ``TRITON_INTERPRET=1``, the NumPy/CuPy reference path otherwise, with the same chunking.

For "mean" and "sum" the gradients of the loss are computed in the forward when asked for (s_i = 1 / n_valid for
the mean, 1 for the sum), and the backward only scales them by dloss (nothing to do for the usual dloss = 1). For
"none" the upstream gradient is per row, so the backward runs the chunks again with s_i = dloss_i.

Example::

    loss, res = linear_cross_entropy_forward(x, w, t)              # x (N, D), w (V, D), t (N,)
    dx, dw, db = linear_cross_entropy_backward(res, np.float32(1.0))
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import cross_entropy as ce
from . import matmul as mm
from ._launch import use_triton, xp_of
from ._threads import sum_rows

#: Smallest budget for one chunk's float32 logits, in bytes: below it the per-chunk launches and Python
#: calls, not the arithmetic, would set the time.
MIN_CHUNK_BYTES = 4 << 20
#: Default budget for one chunk's float32 logits, in multiples of x's float32 size (see :func:`chunk_rows`).
X_TIMES = 4
_REDUCTIONS = ("mean", "sum", "none")


class LinearCrossEntropyResiduals(NamedTuple):
    """What the backward needs: the caller's arrays by reference and, for mean/sum, the gradients of the sum."""

    x: object  # (N, D), the caller's x viewed as 2-D
    weight: object  # (V, D), the caller's
    bias: object  # (V,) or None, the caller's
    target: object  # (N,) int32/int64, range-checked
    grads: list | None  # mean/sum: [dx, dw, db] of the loss (dx in x's dtype, dw/db float32), emptied by the
    # backward that takes them (it scales them in place: no second dW-sized array); else None
    n_valid: object  # 0-d, the loss's dtype: number of targets != ignore_index
    needs: tuple  # (x, weight, bias): which gradients are wanted
    ignore_index: int
    label_smoothing: float
    reduction: str
    x_shape: tuple
    chunk: int  # rows per chunk
    allow_tf32: bool


def chunk_rows(n_rows, d, v, budget=None) -> int:
    """Rows per chunk: as many as fit ``budget`` bytes of float32 logits (C * V * 4 <= budget).

    The default budget is :data:`X_TIMES` (4) times the size of x in float32 (N * D * 16 bytes), at least
    :data:`MIN_CHUNK_BYTES`. Liger-Kernel takes 1x (the chunk's logits cost no more than the input); on the CPU
    OpenBLAS runs few-row products well below its speed (a (196, 768) @ (768, 32000) chunk 1.3-2x slower per
    row than the whole product on 2 cores), and 4x still leaves the chunk a tenth of the logits. At least 1
    row, at most ``n_rows``. For 8 x 1024 tokens, D = 768, V = 32000: 786 rows, 100 MB of logits per chunk
    instead of 1 GB (and as much again for their gradient).
    """
    if budget is None:
        budget = max(n_rows * d * 4 * X_TIMES, MIN_CHUNK_BYTES)
    return int(max(1, min(max(n_rows, 1), budget // (4 * max(v, 1)))))


def _check(x, weight, target, bias, ignore_index, label_smoothing, reduction, chunk_size):
    for name, a in (("x", x), ("weight", weight), ("target", target)) + ((("bias", bias),) if bias is not None else ()):
        if not hasattr(a, "dtype") or not hasattr(a, "shape"):
            raise TypeError(f"linear_cross_entropy: {name} must be a NumPy or CuPy array, got {type(a).__name__}")
    if weight.ndim != 2 or x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"linear_cross_entropy: x (..., D) and weight (V, D) must agree: x shape {tuple(x.shape)}, "
            f"weight shape {tuple(weight.shape)}"
        )
    if x.dtype != weight.dtype or (bias is not None and bias.dtype != x.dtype):
        raise TypeError(
            f"linear_cross_entropy: x, weight and bias must share one dtype, got x {x.dtype}, weight {weight.dtype}"
            + (f", bias {bias.dtype}" if bias is not None else "")
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"linear_cross_entropy: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    if tuple(target.shape) != tuple(x.shape[:-1]):
        raise ValueError(
            f"linear_cross_entropy: target shape {tuple(target.shape)} must be x's leading shape "
            f"{tuple(x.shape[:-1])} (x shape {tuple(x.shape)})"
        )
    if reduction not in _REDUCTIONS:
        raise ValueError(f"linear_cross_entropy: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if chunk_size is not None and int(chunk_size) < 1:
        raise ValueError(f"linear_cross_entropy: chunk_size must be a positive number of rows, got {chunk_size}")
    for what, arr, ok, expected in (
        ("x", x, np.dtype(x.dtype) in ce._FLOAT_DTYPES, "float16, bfloat16, float32 or float64"),
        ("target", target, np.dtype(target.dtype).kind in "iu", "integer class indices (int32/int64)"),
    ):
        if not ok:
            raise TypeError(f"linear_cross_entropy: {what} must be {expected}, got {arr.dtype} (shape {arr.shape})")
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"linear_cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    if int(ignore_index) != ignore_index:
        raise TypeError(f"linear_cross_entropy: ignore_index must be an integer, got {ignore_index!r}")
    if weight.shape[0] == 0:
        raise ValueError(
            f"linear_cross_entropy: weight needs at least one class (row), got shape {tuple(weight.shape)}"
        )


def _acc_dtype(dtype):
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


#: Below this many rows a chunk's dx = dz @ W is formed as (Wᵀ dzᵀ)ᵀ on the CPU (see :func:`_cpu_backward`).
FEW_ROWS = 384
#: Rows of dW updated per product on the CPU: the temporary is (V_BLOCK, D), not a second (V, D) array.
V_BLOCK = 4096


def _cpu_backward(dz, xc, wc, dx_c, dw, first):
    """dx_c[...] = dz @ wc and dw += dzᵀ @ xc (``first``: dw = dzᵀ @ xc) on NumPy arrays (wc: weight in dw's
    dtype), straight into both.

    Measured with OpenBLAS on 2 cores (D = 768, V = 32000): a (C, V) @ (V, D) product with few rows and the long
    V inside ran 4x slower at C = 196 than the same product as (Wᵀ dzᵀ)ᵀ, and faster than it at C = 786; so
    the layout depends on C (:data:`FEW_ROWS`). dW's share is added block by block over the vocabulary
    (:data:`V_BLOCK` rows), so no second (V, D) array exists at the peak (a chunk's whole dzᵀ x_c would be
    one: 98 MB in the issue's case).
    """
    dzf = dz.astype(wc.dtype, copy=False)
    if dx_c is not None:
        if dzf.shape[0] >= FEW_ROWS and dx_c.dtype == wc.dtype and dx_c.flags.c_contiguous:
            np.matmul(dzf, wc, out=dx_c)  # straight into dx's rows: no temporary, no copy
        else:
            dx_c[...] = dzf @ wc if dzf.shape[0] >= FEW_ROWS else np.matmul(wc.T, dzf.T).T
    if dw is not None:
        xf = xc.astype(dw.dtype, copy=False)
        for s in range(0, dw.shape[0], V_BLOCK):
            if first:  # dw is uninitialised memory until the first chunk writes it
                np.matmul(dzf[:, s : s + V_BLOCK].T, xf, out=dw[s : s + V_BLOCK])
            else:
                dw[s : s + V_BLOCK] += dzf[:, s : s + V_BLOCK].T @ xf


def _chunks(res, needs, scale_rows=None, want_losses=False, logits_out=None, scale=None):
    """One pass over the row chunks of ``res``'s arrays.

    Returns (losses (N,) when ``want_losses`` else None, sum of the losses (0-d), (dx, dw, db)) where the
    gradients (None unless in ``needs``) are those of sum_i s_i * loss_i: s_i = ``scale`` (a 0-d array; default 1),
    or ``scale_rows[i]``.
    dx has x's dtype; dw and db are float32 accumulators (float64 for float64 inputs). ``logits_out`` (N, V), when
    given, receives each chunk's logits before they turn into their gradient.
    """
    x2, w, bias, t = res.x, res.weight, res.bias, res.target
    xp = xp_of(x2)
    n, d = x2.shape
    v = w.shape[0]
    acc = _acc_dtype(x2.dtype)
    any_grad = any(needs)
    cpu = any_grad and type(x2) is np.ndarray and not use_triton(x2)  # the reference path on NumPy arrays
    dx = xp.empty((n, d), dtype=x2.dtype) if needs[0] else None
    dw = ((xp.empty if cpu and n else xp.zeros)((v, d), dtype=acc)) if needs[1] else None  # CPU: chunk 0 writes it
    db = xp.zeros((v,), dtype=acc) if needs[2] else None
    losses = xp.empty((n,), dtype=acc) if want_losses else None
    total = xp.zeros((), dtype=acc)
    one = xp.ones((), dtype=acc) if scale is None else scale
    red = "none" if (want_losses or scale_rows is not None) else "sum"
    wt = w.T  # a strided view: the matmul kernels read weight in place
    wc = w.astype(acc, copy=False) if cpu else None  # half weights: one float32 copy per pass
    for s in range(0, n, res.chunk):
        e = min(n, s + res.chunk)
        logits, mres = mm.matmul_forward(x2[s:e], wt, bias, None, allow_tf32=res.allow_tf32)
        if logits_out is not None:
            logits_out[s:e] = logits
        loss, cres = ce.cross_entropy_forward(
            logits, t[s:e], ignore_index=res.ignore_index, label_smoothing=res.label_smoothing, reduction=red,
            check_targets=False,
        )  # fmt: skip
        if want_losses:
            losses[s:e] = loss
        total += loss.sum()
        if not any_grad:
            continue
        dz = ce.cross_entropy_backward(cres, one if scale_rows is None else scale_rows[s:e], out=logits)
        if cpu:
            _cpu_backward(dz, x2[s:e], wc, dx[s:e] if needs[0] else None, dw, s == 0)
        else:
            dxc, dwt, _ = mm.matmul_backward(mres, dz, (needs[0], needs[1], False))
            if needs[0]:
                dx[s:e] = dxc
            if needs[1]:
                dw += dwt.T  # dwt is (V, D) memory seen as (D, V): .T is contiguous
            del dxc, dwt
        if needs[2]:
            db += dz.sum(axis=0, dtype=acc)
        del logits, dz, mres, cres  # one chunk's arrays at a time
    return losses, total, (dx, dw, db)


def _mean_scale(res):
    """The mean's 1 / n_valid as a 0-d array (0 when every target is ignored: a zero gradient, as PyTorch's, not
    0 * inf), applied to each chunk's logit gradients so the gradients come out already divided (no pass over dx
    and dW afterwards); None for "sum" and "none". On the device it stays there: no host sync."""
    if res.reduction != "mean":
        return None
    xp = xp_of(res.n_valid)
    one = xp.ones((), dtype=res.n_valid.dtype)
    empty = res.n_valid == 0
    return xp.where(empty, xp.zeros_like(one), one / xp.where(empty, one, res.n_valid))


def linear_cross_entropy_forward(
    x, weight, target, bias=None, *, ignore_index=-100, label_smoothing=0.0, reduction="mean",
    needs_input_grad=(True, True, True), chunk_size=None, allow_tf32=True, check_targets=True, logits_out=None,
):  # fmt: skip
    """``cross_entropy(x @ weight.T + bias, target)`` chunk by chunk over rows; returns ``(loss, residuals)``.

    x: (..., D) float16 / bfloat16 / float32 / float64; weight: (V, D) and bias: (V,) or None of x's dtype;
    target: (...) int32/int64 shaped like x's leading dims. ``reduction``: "mean" (over targets !=
    ``ignore_index``; all ignored: NaN), "sum" or "none" (shaped like target). The loss is float32 (float64
    for float64 inputs). ``needs_input_grad`` (x, weight, bias): for mean/sum the gradients asked for are
    computed here, chunk by chunk (nothing asked: the loss alone). ``chunk_size``: rows per chunk (default
    :func:`chunk_rows`). Targets outside [0, V) other than ``ignore_index`` raise ValueError (NumPy: now;
    CuPy: at the next host sync, see ``kernels._deferred``); ``check_targets=False``: the caller checked them.
    ``logits_out``: an (N, V) array of x's dtype (N = rows of x) that receives the logits x Wᵀ + b, for a caller
    that returns them too: they come out of the same products, so the projection runs once (the loss's
    gradients still never need them; :func:`logits_backward` is their own backward).

    >>> loss, res = linear_cross_entropy_forward(np.ones((4, 3), np.float32), np.ones((5, 3), np.float32),
    ...                                          np.array([0, 1, 4, -100]))
    """
    _check(x, weight, target, bias, ignore_index, label_smoothing, reduction, chunk_size)
    xp = xp_of(x)
    d, v = weight.shape[1], weight.shape[0]
    x2 = x.reshape(-1, d)  # a view when x's leading dims merge
    n = x2.shape[0]
    t = target.reshape(-1)
    if np.dtype(t.dtype) not in (np.dtype(np.int32), np.dtype(np.int64)):
        t = t.astype(np.int64)
    t = xp.ascontiguousarray(t)
    if check_targets:
        t = ce._check_targets_in_range(t, v, ignore_index)
    acc = _acc_dtype(x.dtype)
    n_valid = xp.asarray(xp.count_nonzero(t != ignore_index), dtype=acc)
    needs = (bool(needs_input_grad[0]), bool(needs_input_grad[1]), bool(needs_input_grad[2]) and bias is not None)
    chunk = int(chunk_size) if chunk_size is not None else chunk_rows(n, d, v)
    res = LinearCrossEntropyResiduals(
        x2, weight, bias, t, None, n_valid, needs, int(ignore_index), float(label_smoothing), reduction,
        tuple(x.shape), chunk, bool(allow_tf32),
    )  # fmt: skip
    if logits_out is not None and (tuple(logits_out.shape) != (n, v) or logits_out.dtype != x.dtype):
        raise ValueError(
            f"linear_cross_entropy: logits_out must be a ({n}, {v}) array of {x.dtype}, got "
            f"{tuple(logits_out.shape)} {logits_out.dtype}"
        )
    if reduction == "none":
        losses, _, _ = _chunks(res, (False, False, False), want_losses=True, logits_out=logits_out)
        return losses.reshape(target.shape), res
    _, total, grads = _chunks(res, needs, logits_out=logits_out, scale=_mean_scale(res))
    if reduction == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):  # all targets ignored: 0 / 0 = NaN, as PyTorch
            total = total / n_valid
    return xp.asarray(total, dtype=acc), res._replace(grads=list(grads) if any(needs) else None)


def linear_cross_entropy_backward(residuals, dloss, needs_input_grad=None):
    """(dx, dweight, dbias) of :func:`linear_cross_entropy_forward`, in the inputs' dtypes (None where not asked).

    ``dloss``: dL/dloss, one element for mean/sum, shaped like the loss for "none". mean/sum: the gradients
    computed in the forward times dloss (/ n_valid for the mean; all targets ignored: zeros, as PyTorch);
    "none" (or a forward that computed no gradients): the chunks run again with each row's loss weighted by
    its dloss. ``needs_input_grad`` defaults to the forward's.
    """
    res = residuals
    xp = xp_of(res.x)
    needs = res.needs if needs_input_grad is None else tuple(bool(b) for b in needs_input_grad)
    needs = (needs[0], needs[1], needs[2] and res.bias is not None)
    acc = _acc_dtype(res.x.dtype)
    dl = xp.asarray(dloss)
    n = res.x.shape[0]
    if res.reduction == "none":
        if dl.size != n or (dl.ndim and tuple(dl.shape) != tuple(res.x_shape[:-1])):
            raise ValueError(
                f"linear_cross_entropy_backward: reduction='none' needs dloss shaped like the loss "
                f"{tuple(res.x_shape[:-1])}, got {tuple(dl.shape)}"
            )
        _, _, grads = _chunks(res, needs, scale_rows=xp.ascontiguousarray(dl.reshape(-1).astype(acc)))
        scale = None
    else:
        if dl.size != 1:
            raise ValueError(
                f"linear_cross_entropy_backward: reduction={res.reduction!r} gives a scalar loss; dloss must have "
                f"one element, got shape {tuple(dl.shape)}"
            )
        scale = dl.reshape(()).astype(acc)  # the mean's 1 / n_valid is already in the gradients (_mean_scale)
        if type(scale) is np.ndarray and scale == 1:  # the usual loss.backward() on the CPU: nothing to scale
            scale = None
        stored = res.grads
        if stored and all(g is not None for w, g in zip(needs, stored) if w):
            grads = tuple(stored)
            stored.clear()  # handed over and scaled in place: a second backward (retain_graph) recomputes them
        else:
            _, _, grads = _chunks(res, needs, scale=_mean_scale(res))
    dtypes = (res.x.dtype, res.weight.dtype, None if res.bias is None else res.bias.dtype)
    out = []
    for want, g, dt in zip(needs, grads, dtypes):
        if not want:
            out.append(None)
            continue
        if scale is not None and g.dtype == acc:
            g *= scale  # our own array (computed for this backward): no second dW-sized array
        elif scale is not None:
            g = g.astype(acc) * scale
        out.append(g.astype(dt, copy=False))
    dx, dw, db = out
    return (None if dx is None else dx.reshape(res.x_shape)), dw, db


def logits_backward(residuals, dlogits, needs_input_grad=None):
    """(dx, dweight, dbias) of the logits z = x Wᵀ + b that ``logits_out`` received, for dlogits = dL/dz (N, V)::

        dx = dz W,   dW = dzᵀ x,   db = Σ_rows dz

    computed in float32 (float64 for float64 inputs) and returned in the inputs' dtypes (None where not asked;
    ``needs_input_grad`` defaults to the forward's). dx has x's shape as the forward saw it.
    """
    res = residuals
    xp = xp_of(res.x)
    needs = res.needs if needs_input_grad is None else tuple(bool(b) for b in needs_input_grad)
    acc = _acc_dtype(res.x.dtype)
    v = res.weight.shape[0]
    g = dlogits.reshape(-1, v).astype(acc, copy=False)
    dx = dw = db = None
    if needs[0]:
        dx = mm._mm(xp, g, res.weight.astype(acc, copy=False)).astype(res.x.dtype, copy=False).reshape(res.x_shape)
    if needs[1]:
        dw = mm._mm(xp, g.T, res.x.astype(acc, copy=False)).astype(res.weight.dtype, copy=False)
    if needs[2] and res.bias is not None:
        db = sum_rows(g).astype(res.bias.dtype, copy=False)
    return dx, dw, db
