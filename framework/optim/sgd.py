"""Stochastic gradient descent with momentum, dampening, Nesterov momentum and L2 weight decay."""

from __future__ import annotations

from .._backend import xp_of
from ..creation import zeros_like
from ..tensor import Tensor
from .optimizer import (
    Optimizer,
    _chunked,
    _coeffs,
    _compiled_coeffs,
    _compiled_exact,
    _fast,
    _fast_update,
    _fma,
    _grad_for_update,
    _l2_grad_fast,
    _opmath,
    _run_compiled,
)

__all__ = ["SGD"]


class SGD(Optimizer):
    r"""SGD, update for update as ``torch.optim.SGD`` (its single-tensor path)::

        g = -grad if maximize else grad
        g = g + weight_decay * p                                        (weight_decay != 0)
        buf = g  (first step),  buf = momentum * buf + (1 - dampening) * g   (momentum != 0)
        g = g + momentum * buf  if nesterov  else  buf
        p = p - lr * g

    State per parameter: ``momentum_buffer`` (only with ``momentum != 0``).

    ``fused``: ``None`` (default) runs the multi-tensor kernel of ``conch.kernels.optim`` for CuPy parameters
    and the per-parameter path for NumPy ones; ``True``/``False`` force either. The per-parameter path is the
    fast float32 one unless :func:`conch.optim.set_bitwise_torch` asks for PyTorch's exact rounding.

    Example::

        opt = conch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
        opt.zero_grad(); loss.backward(); opt.step()
    """

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, *,
                 maximize=False, fused=None):  # fmt: skip
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=nesterov, maximize=maximize, fused=fused)  # fmt: skip
        super().__init__(params, defaults)

    def _check_group(self, g):
        if not 0.0 <= g["lr"]:
            raise ValueError(f"Invalid learning rate: {g['lr']}")
        if g["momentum"] < 0.0:
            raise ValueError(f"Invalid momentum value: {g['momentum']}")
        if g["weight_decay"] < 0.0:
            raise ValueError(f"Invalid weight_decay value: {g['weight_decay']}")
        if g["nesterov"] and (g["momentum"] <= 0 or g["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def _update(self, p, g, state, group):
        momentum = group["momentum"]
        buf = None
        first = False
        if momentum != 0:
            buf_t = state.get("momentum_buffer")
            first = buf_t is None
            if first:
                buf_t = state["momentum_buffer"] = Tensor._make(xp_of(p).empty_like(p, order="C"))
            buf = buf_t._data
        arrays = (p, g, buf)
        fast = _fast(p)
        k = None if fast else _compiled_exact(p, arrays)
        if fast or k is not None:
            key = (id(group), first, p.dtype)
            coeffs = self._coef_cache.get(key)
            if coeffs is None:
                coeffs = self._coef_cache[key] = _sgd_coeffs(p, group, first)
            if fast:
                _fast_update("sgd", _sgd_fast, arrays, self._ws, 2, coeffs)
            else:  # the compiled twin of _sgd_single (the same scalars: -lr, momentum, 1 - dampening, wd)
                _run_compiled(k.sgd_exact, arrays, *coeffs[-1])
            return
        _chunked(_sgd_single, (p, g, buf), self._ws, lr=group["lr"], momentum=momentum,
                 dampening=group["dampening"], weight_decay=group["weight_decay"], nesterov=group["nesterov"],
                 maximize=group["maximize"], first_step=first)  # fmt: skip

    def _step_group(self, group):
        plan = self._fused_plan(group)
        if plan is None:
            return super()._step_group(group)
        k, params = plan
        if not params:
            return
        momentum = group["momentum"]
        # Parameters whose momentum buffer does not exist yet take torch's first-step rule (buf = grad): one
        # launch for them and one for the rest.
        parts = {True: [], False: []}
        for p in params:
            first = momentum != 0 and self.state.get(p, {}).get("momentum_buffer") is None
            parts[first].append(p)
        for first, ps in parts.items():
            if not ps:
                continue
            bufs = None
            if momentum != 0:
                for p in ps:
                    if first:
                        self.state[p]["momentum_buffer"] = zeros_like(p.detach())
                bufs = [self.state[p]["momentum_buffer"]._data for p in ps]
            xp = xp_of(ps[0]._data)
            k.sgd_step(
                [p._data for p in ps], [xp.ascontiguousarray(p.grad._data) for p in ps], bufs,
                lr=group["lr"], momentum=momentum, dampening=group["dampening"],
                weight_decay=group["weight_decay"], nesterov=group["nesterov"], first_step=first,
                maximize=group["maximize"],
            )  # fmt: skip
            for p in ps:
                p._version[0] += 1


def _sgd_coeffs(p, group, first):
    """The scalars of ``_sgd_fast`` for parameters like ``p`` of ``group``, then those of the compiled kernel
    (kernels/_numba/optim.sgd): ``(c, flags)`` with the same roundings."""
    c = _coeffs(p, group["lr"], group["momentum"], 1 - group["dampening"], group["weight_decay"], group["nesterov"],
                group["maximize"], first)  # fmt: skip
    lr, momentum, omd, wd, nesterov, neg, first = c
    flags = int(neg) | (2 if momentum != 0 else 0) | (4 if first else 0) | (8 if nesterov else 0)
    return c + ((_compiled_coeffs(p, -lr, momentum, omd, wd), flags),)


def _sgd_single(p, g, buf, ws, *, lr, momentum, dampening, weight_decay, nesterov, maximize, first_step):
    """One SGD update of array ``p`` in place (torch.optim.sgd._single_tensor_sgd, op for op)."""
    xp = xp_of(p)
    opm = _opmath(p.dtype)
    g = _grad_for_update(p, g, maximize, weight_decay, ws)
    if momentum != 0:
        if first_step:
            xp.copyto(buf, g)  # buf = grad.detach().clone()
        else:
            xp.multiply(buf, opm.type(momentum), out=buf, dtype=opm)  # buf.mul_(momentum)
            _fma(g, opm.type(1 - dampening), buf, buf, ws)  # .add_(grad, alpha=1 - dampening)
        if nesterov:
            g = _fma(buf, opm.type(momentum), g, ws.get("nesterov", g, g.dtype), ws)  # grad.add(buf, alpha=momentum)
        else:
            g = buf
    _fma(g, opm.type(-lr), p, p, ws)  # param.add_(grad, alpha=-lr)


def _sgd_fast(xp, p, g, buf, t0, t1, c):
    """One SGD update of ``p`` in place with plain ufuncs (torch's single-tensor formulas; 4 passes with
    momentum). ``neg`` (maximize) folds the gradient's sign into the additions instead of negating it."""
    lr, momentum, omd, weight_decay, nesterov, neg, first_step = c
    if weight_decay != 0:
        g, neg = _l2_grad_fast(xp, p, g, neg, weight_decay, t0), False
    if buf is not None:
        if first_step:  # buf = grad.detach().clone()
            if neg:
                xp.negative(g, out=buf)
            else:
                xp.copyto(buf, g)
        else:  # buf.mul_(momentum).add_(grad, alpha=1 - dampening)
            xp.multiply(buf, momentum, out=buf)
            if omd != 1:
                xp.multiply(g, omd, out=t1)
                g1 = t1
            else:
                g1 = g
            (xp.subtract if neg else xp.add)(buf, g1, out=buf)
        if nesterov:  # grad = grad.add(buf, alpha=momentum)
            xp.multiply(buf, momentum, out=t1)
            (xp.subtract if neg else xp.add)(t1, g, out=t1)
            g = t1
        else:
            g = buf
        neg = False
    xp.multiply(g, lr if neg else -lr, out=t1)  # param.add_(grad, alpha=-lr)
    xp.add(p, t1, out=p)
