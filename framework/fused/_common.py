"""What every fused adapter shares: the create_graph fallback, the freed-residuals check, array wrapping."""

from __future__ import annotations

from .._backend import xp_of
from ..autograd import grad
from ..autograd.function import _FREED_MSG, Op, check_guards
from ..tensor import Tensor, _register_copy_on_write


class FusedOp(Op):
    """An ``Op`` whose forward keeps kernel residuals in ``ctx.res``, some of them the caller's arrays by
    reference (inputs, the output), never copied.

    Those arrays escape ``saves``' version check, so after a recording forward every input and output whose
    memory a residual array aliases gets a ``VersionGuard``, checked wherever the residuals are read (``_res``,
    ``_recompute_grads``): an in-place write before backward raises as for a plain op's saved tensor, whatever
    the kernel. Input positions in ``copy_on_write`` are the exception, for the inputs PyTorch's unfused op does
    not save (so a write must not raise): a write into them first gives the node a private copy of the old values.
    """

    copy_on_write: tuple = ()

    @classmethod
    def apply(cls, *tensors, **attrs):
        out = _op_apply(cls, *tensors, **attrs)
        node = out[0].grad_fn if type(out) is tuple else out.grad_fn
        if node is not None:  # a node was recorded: find what its residuals alias
            _guard(node, tensors, out if type(out) is tuple else (out,), cls.copy_on_write)
        return out


_op_apply = Op.apply.__func__


def _guard(node, inputs, outputs, cow):
    res = node.res
    if res is None:
        return
    # residual arrays are the inputs and output themselves or views the kernel took of them, so a residual
    # aliases a tensor exactly when both have the same root (the array owning the memory, the last array on the
    # base chain): an identity test, cheaper than a memory-bounds test per pair (this runs on every fused call)
    kind = type(outputs[0]._data)  # the residuals' arrays are of the output's array type (the rest: attributes)
    roots = set()  # ids: the residuals hold the roots alive meanwhile
    for r in res:
        if type(r) is kind and r.size:
            b = r.base
            while b is not None and type(b) is kind:
                r, b = b, b.base
            roots.add(id(r))
    if not roots:
        return
    guards = []
    for i, t in enumerate((*inputs, *outputs)):
        r = d = t._data
        b = r.base
        while b is not None and type(b) is kind:
            r, b = b, b.base
        if id(r) in roots and d.size:
            if i in cow:
                _register_copy_on_write(node, t._version)
            else:
                guards.append((d, t._version, t._version[0]))
    node._guards = tuple(guards)


def _res(ctx):
    """The kernel residuals of ``ctx`` after the version check of what they alias, or the "backward twice"
    error once they were freed."""
    if ctx.res is None:
        raise RuntimeError(_FREED_MSG)
    check_guards(ctx)
    return ctx.res


def _t(arr):
    return None if arr is None else Tensor._make(arr)


def _recompute_grads(ctx, composite, grads):
    """create_graph fallback: differentiate the composite formula on the saved inputs.

    The kernels' array-level backward cannot itself be recorded, so when a backward is being
    recorded (``create_graph=True``) a fused op re-expresses its forward with Tensor ops and lets
    autograd differentiate that: the result carries a graph, so third derivatives work too.
    """
    check_guards(ctx)
    inputs = ctx.saved_tensors
    want = [i for i, n in enumerate(ctx.needs_input_grad) if n]
    out = composite(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    pairs = [(o, g) for o, g in zip(outs, grads) if g is not None]  # outputs without a gradient (not materialized)
    outs, grads = [o for o, _ in pairs], [g for _, g in pairs]
    gs = grad(outs, [inputs[i] for i in want], grads, create_graph=True, allow_unused=True)
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
