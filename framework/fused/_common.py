"""What every fused adapter shares: the create_graph fallback, the freed-residuals check, array wrapping."""

from __future__ import annotations

from .._backend import xp_of
from ..autograd import grad
from ..autograd.function import _FREED_MSG
from ..tensor import Tensor


def _res(ctx):
    """The kernel residuals of ``ctx``, or the "backward twice" error once they were freed."""
    if ctx.res is None:
        raise RuntimeError(_FREED_MSG)
    return ctx.res


def _t(arr):
    return None if arr is None else Tensor._make(arr)


def _recompute_grads(ctx, composite, grads):
    """create_graph fallback: differentiate the composite formula on the saved inputs.

    The kernels' array-level backward cannot itself be recorded, so when a backward is being
    recorded (``create_graph=True``) a fused op re-expresses its forward with Tensor ops and lets
    autograd differentiate that: the result carries a graph, so third derivatives work too.
    """
    inputs = ctx.saved_tensors
    want = [i for i, n in enumerate(ctx.needs_input_grad) if n]
    out = composite(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    gs = grad(list(outs), [inputs[i] for i in want], list(grads), create_graph=True, allow_unused=True)
    res = [None] * len(inputs)
    for i, g in zip(want, gs):
        res[i] = g
    return tuple(res)


def _mean_over(total, wsum):
    """``total / wsum`` for a loss's "mean" reduction (``wsum``: a 0-d array, the summed weights of the
    elements not ignored). When every element is ignored wsum is 0: the value is NaN (0/0) as PyTorch's, but
    the gradient is 0, as PyTorch's nll_loss_backward writes nothing for ignored rows, where dividing by the
    zero would make it 0·∞ = NaN. So divide by 1 there and add the NaN as a constant (no gradient)."""
    xp = xp_of(wsum)
    wsum = wsum.astype(total.dtype, copy=False)
    empty = wsum == 0
    out = total / Tensor._make(xp.where(empty, xp.ones_like(wsum), wsum))
    return out + Tensor._make(xp.where(empty, xp.asarray(float("nan"), dtype=wsum.dtype), xp.zeros_like(wsum)))


def _no_bias(a):
    return Tensor._make(xp_of(a._data).empty((0,), dtype=a.dtype))
