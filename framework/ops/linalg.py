"""Linear algebra: matrix products (the plain op behind the fused matmul's composite) and einsum.

Example: ``Einsum``'s gradient for operand i is another einsum of the output gradient with the other operands.
"""

from __future__ import annotations

import string

import numpy as np

from conch.kernels._threads import mm

from .._backend import xp_of
from ..autograd.function import Op
from ..autograd.grad_mode import _enabled


class MatMul(Op):
    """NumPy matmul semantics: 1-D operands are promoted and the added dim removed afterwards."""

    saves = (0, 1)
    cross_saves = True  # da = g @ bᵀ reads only b, db = aᵀ @ g only a: each saved when the other needs a gradient

    @staticmethod
    def forward(ctx, a, b):
        return mm(a, b).astype(a.dtype, copy=False)  # NumPy's bfloat16 matmul returns float32

    @staticmethod
    def backward(ctx, g):
        n = ctx.needs_input_grad
        (sa, _), (sb, _) = ctx.in_meta  # the operands' shapes: an operand is saved only when the other needs it
        na, nb = len(sa), len(sb)
        a = ctx.saved_tensor(0) if n[1] else None
        b = ctx.saved_tensor(1) if n[0] else None
        if not _enabled[0] and na == 2 and nb == 2:  # not recorded, 2-D: two array products
            gd = g._data
            da = g._wrap_const(mm(gd, b._data.T)) if n[0] else None
            return da, (g._wrap_const(mm(a._data.T, gd)) if n[1] else None)
        if na == 1:
            g = g.unsqueeze(-2 if nb > 1 else 0)
        if nb == 1:
            g = g.unsqueeze(-1)
        ga = gb = None
        if n[0]:
            ga = g @ (b.unsqueeze(-1) if nb == 1 else b).mT
            if na == 1:
                ga = ga.reshape(-1, sa[0]).sum(0)
        if n[1]:
            gb = (a.unsqueeze(0) if na == 1 else a).mT @ g
            if nb == 1:
                gb = gb.reshape(-1, sb[0]).sum(0)
        return ga, gb


def _parse(equation: str, shapes):
    """Explicit subscripts for every operand and the output, with ``...`` spelled out as letters."""
    eq = equation.replace(" ", "")
    lhs, arrow, out = eq.partition("->")
    ins = lhs.split(",")
    if len(ins) != len(shapes):
        raise ValueError(f"einsum(): the equation {equation!r} names {len(ins)} operands but {len(shapes)} were given")
    used = set(eq) - set(".,->")
    free = [c for c in string.ascii_letters if c not in used]
    n_ell = 0
    for sub, shape in zip(ins, shapes):
        if "..." in sub:
            n_ell = max(n_ell, len(shape) - (len(sub) - 3))
        elif len(sub) != len(shape):
            raise ValueError(
                f"einsum(): the subscripts {sub!r} name {len(sub)} dims but the operand has shape {tuple(shape)}"
            )
    ell = "".join(free[:n_ell])
    ins_x = []
    for sub, shape in zip(ins, shapes):
        if "..." in sub:
            k = len(shape) - (len(sub) - 3)
            sub = sub.replace("...", ell[n_ell - k :] if k else "")
        ins_x.append(sub)
    if arrow:
        out_x = out.replace("...", ell)
    else:  # implicit output: broadcast dims, then the labels used exactly once, sorted
        once = sorted(c for c in set("".join(ins)) - set(".") if "".join(ins).count(c) == 1)
        out_x = ell + "".join(once)
    return ins_x, out_x


class Einsum(Op):
    """out = einsum(subs -> out_sub, *operands); d/d operand_i = einsum(out_sub, others -> sub_i)."""

    @staticmethod
    def forward(ctx, *arrays, ins, out):
        ctx.ins, ctx.out, ctx.arrays_shapes = ins, out, [a.shape for a in arrays]
        xp, dt = xp_of(arrays[0]), arrays[0].dtype
        if dt.itemsize < 4:  # NumPy's einsum has no bfloat16 loop; accumulate half precision in float32
            arrays = [a.astype(np.float32) for a in arrays]
        return xp.einsum(",".join(ins) + "->" + out, *arrays).astype(dt, copy=False)

    @staticmethod
    def backward(ctx, g):
        ops = ctx.saved_tensors  # linked to the graph, so the gradient is differentiable again
        grads = []
        for i, (sub, shape) in enumerate(zip(ctx.ins, ctx.arrays_shapes)):
            if not ctx.needs_input_grad[i]:
                grads.append(None)
                continue
            if len(set(sub)) != len(sub):
                raise RuntimeError(
                    f"einsum backward does not support a label repeated within one operand ({sub!r}, a diagonal); "
                    "use torch-style explicit ops (e.g. diagonal via indexing) instead"
                )
            others = [s for j, s in enumerate(ctx.ins) if j != i]
            avail = set(ctx.out).union(*others)
            keep = "".join(c for c in sub if c in avail)
            gi = _op(len(others) + 1).apply(
                g, *[o for j, o in enumerate(ops) if j != i], ins=[ctx.out, *others], out=keep
            )
            if keep != sub:  # labels summed away inside operand i alone: their gradient is broadcast
                gi = gi.reshape(tuple(shape[k] if c in avail else 1 for k, c in enumerate(sub))).expand(*shape)
            grads.append(gi)
        return tuple(grads)


_OPS: dict = {}


def _op(n):
    """The Einsum op class for ``n`` operands (``saves`` must name each one)."""
    cls = _OPS.get(n)
    if cls is None:
        cls = _OPS[n] = type(f"Einsum{n}", (Einsum,), {"saves": tuple(range(n))})
    return cls
