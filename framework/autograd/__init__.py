"""conch.autograd: the graph engine, custom Functions, ``grad`` and ``gradcheck``."""

from __future__ import annotations

from .function import Function
from .grad_mode import enable_grad, inference_mode, is_grad_enabled, no_grad, set_grad_enabled
from .gradcheck import gradcheck, gradgradcheck

__all__ = [
    "Function", "grad", "backward", "gradcheck", "gradgradcheck", "no_grad", "enable_grad", "set_grad_enabled",
    "inference_mode", "is_grad_enabled",
]  # fmt: skip


def _seq(x):
    from ..tensor import Tensor

    return [x] if isinstance(x, Tensor) else list(x)


def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False, allow_unused=False):
    """Gradients of ``outputs`` with respect to ``inputs``, returned (``.grad`` is not touched).

    ``create_graph=True`` records the backward pass so the result can be differentiated again.
    Example::

        x = conch.tensor(3.0, requires_grad=True)
        (g,) = conch.autograd.grad(x ** 3, x, create_graph=True)   # 27
        (h,) = conch.autograd.grad(g, x)                           # 6x = 18
    """
    from ..tensor import Tensor, _as_grad
    from ..tensor import _const as const
    from .engine import run_backward

    outs, ins = _seq(outputs), _seq(inputs)
    if grad_outputs is None:
        gos = [None] * len(outs)
    else:
        gos = _seq(grad_outputs) if not isinstance(grad_outputs, (list, tuple)) else list(grad_outputs)
    if len(gos) != len(outs):
        raise RuntimeError(f"grad requires one grad_output per output: got {len(gos)} for {len(outs)} outputs")
    roots, root_grads = [], []
    for o, g in zip(outs, gos):
        if not isinstance(o, Tensor):
            raise TypeError(f"outputs must be Tensors, got {type(o).__name__}")
        if not o.requires_grad:
            raise RuntimeError("element 0 of tensors does not require grad and does not have a grad_fn")
        if g is None:
            if o.numel() != 1:
                raise RuntimeError(
                    f"grad can be implicitly created only for scalar outputs (output has shape {o.shape})"
                )
            from .._backend import xp_of

            g = const(xp_of(o._data).ones(o.shape, dtype=o.dtype))
        roots.append(o)
        root_grads.append(_as_grad(g, o))
    if retain_graph is None:
        retain_graph = create_graph
    res = run_backward(roots, root_grads, retain_graph, create_graph, ins, allow_unused)
    if not create_graph:
        res = tuple(None if r is None else r.detach() for r in res)
    return res


def backward(tensors, grad_tensors=None, retain_graph=None, create_graph=False):
    """``conch.autograd.backward([y1, y2], [g1, g2])``: backward from several roots at once."""
    from ..tensor import _as_grad
    from .engine import run_backward

    ts = _seq(tensors)
    gs = [None] * len(ts) if grad_tensors is None else _seq(grad_tensors)
    root_grads = []
    for t, g in zip(ts, gs):
        if g is None:
            if t.numel() != 1:
                raise RuntimeError(f"grad can be implicitly created only for scalar outputs (shape {t.shape})")
            g = t.detach() * 0 + 1
        root_grads.append(_as_grad(g, t))
    run_backward(ts, root_grads, create_graph if retain_graph is None else retain_graph, create_graph)
