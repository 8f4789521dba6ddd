"""Adadelta (Zeiler 2012): per-coordinate step sizes from running averages of squared gradients and updates."""

from __future__ import annotations

from .._backend import xp_of
from ..creation import zeros_like
from . import optimizer as _o
from .optimizer import Optimizer, _addcmul_, _chunked, _fma, _grad_for_update, _opmath, _scalar_state

__all__ = ["Adadelta"]


class Adadelta(Optimizer):
    r"""Adadelta, update for update as ``torch.optim.Adadelta`` (its single-tensor path)::

        g = -grad if maximize else grad;  g = g + weight_decay * p       (weight_decay != 0)
        v = rho * v + (1 - rho) * g * g                  (square_avg)
        delta = sqrt(u + eps) / sqrt(v + eps) * g
        u = rho * u + (1 - rho) * delta * delta          (acc_delta)
        p = p - lr * delta

    Defaults as PyTorch: ``lr=1.0`` (a scale on the unitless step), ``rho=0.9``, ``eps=1e-6``. State per
    parameter (created at its first step): ``step``, ``square_avg``, ``acc_delta``.

    Example::

        opt = conch.optim.Adadelta(model.parameters(), lr=1.0, rho=0.9, weight_decay=1e-4)
    """

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, foreach=None, *, capturable=False,
                 maximize=False, differentiable=False):  # fmt: skip
        defaults = dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults)

    def _check_group(self, g):
        for key in ("lr", "eps", "weight_decay"):
            if not 0.0 <= g[key]:
                raise ValueError(f"Invalid {'epsilon' if key == 'eps' else key} value: {g[key]}")
        if not 0.0 <= g["rho"] <= 1.0:
            raise ValueError(f"Invalid rho value: {g['rho']}")

    def _init_state(self, p, state, group):
        d = p.detach()
        state["step"] = _scalar_state(0.0)
        state["square_avg"] = zeros_like(d)
        state["acc_delta"] = zeros_like(d)

    def _update(self, p, g, state, group):
        state["step"]._data += 1
        _chunked(_adadelta_single, (p, g, state["square_avg"]._data, state["acc_delta"]._data), self._ws,
                 lr=group["lr"], rho=group["rho"], eps=group["eps"], weight_decay=group["weight_decay"],
                 maximize=group["maximize"])  # fmt: skip


def _adadelta_single(p, g, sq, ad, ws, *, lr, rho, eps, weight_decay, maximize):
    """One Adadelta update of array ``p`` in place (torch.optim.adadelta._single_tensor_adadelta, op for op)."""
    xp = xp_of(p)
    opm = _opmath(p.dtype)
    g = _grad_for_update(p, g, maximize, weight_decay, ws)
    xp.multiply(sq, opm.type(rho), out=sq, dtype=opm)  # square_avg.mul_(rho).addcmul_(grad, grad, value=1 - rho)
    _addcmul_(sq, g, g, 1 - rho, sq, ws)
    std = ws.get("std", sq, sq.dtype)  # std = square_avg.add(eps).sqrt_()
    xp.add(sq, opm.type(eps), out=std, dtype=opm)
    _o._sqrt(std, std, opm)
    delta = ws.get("delta", ad, ad.dtype)  # delta = acc_delta.add(eps).sqrt_()
    xp.add(ad, opm.type(eps), out=delta, dtype=opm)
    _o._sqrt(delta, delta, opm)
    xp.divide(delta, std, out=delta, dtype=opm)  # delta.div_(std).mul_(grad)
    xp.multiply(delta, g, out=delta, dtype=opm)
    xp.multiply(ad, opm.type(rho), out=ad, dtype=opm)  # acc_delta.mul_(rho).addcmul_(delta, delta, value=1 - rho)
    _addcmul_(ad, delta, delta, 1 - rho, ad, ws)
    _fma(delta, opm.type(-lr), p, p, ws)  # param.add_(delta, alpha=-lr)
