"""Adagrad (Duchi et al.), with learning-rate decay and an initial accumulator value."""

from __future__ import annotations

from .._backend import xp_of
from ..creation import full_like
from . import optimizer as _o
from .optimizer import (
    Optimizer,
    _addcdiv_,
    _addcmul_,
    _chunked,
    _coeffs,
    _compiled_coeffs,
    _compiled_exact,
    _fast,
    _fast_update,
    _grad_for_update,
    _l2_grad_fast,
    _opmath,
    _run_compiled,
    _scalar_state,
)

__all__ = ["Adagrad"]


class Adagrad(Optimizer):
    r"""Adagrad, update for update as ``torch.optim.Adagrad`` (its single-tensor path), with ``t`` the step
    count after increment::

        g = -grad if maximize else grad;  g = g + weight_decay * p       (weight_decay != 0)
        clr = lr / (1 + (t - 1) * lr_decay)
        s = s + g * g                                  (s starts at initial_accumulator_value)
        p = p - clr * g / (sqrt(s) + eps)

    State per parameter (created at construction, as in PyTorch): ``step`` and ``sum``.

    Example::

        opt = conch.optim.Adagrad(model.parameters(), lr=0.1, lr_decay=1e-4)
    """

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10,
                 *, maximize=False):  # fmt: skip
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, maximize=maximize)  # fmt: skip
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                self._init_state(p, self.state[p], group)

    def _check_group(self, g):
        for key in ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps"):
            if not 0.0 <= g[key]:
                raise ValueError(f"Invalid {key} value: {g[key]}")

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        if hasattr(self, "state"):
            g = self.param_groups[-1]
            for p in g["params"]:
                if not self.state.get(p):
                    self._init_state(p, self.state[p], g)

    def _init_state(self, p, state, group):
        state["step"] = _scalar_state(0.0)
        state["sum"] = full_like(p.detach(), group["initial_accumulator_value"])

    def _update(self, p, g, state, group):
        st = state["step"]._data
        st[()] = float(st) + 1.0  # as st += 1 (rounded to float32 once), without a ufunc call
        step = float(st)
        clr = group["lr"] / (1 + (step - 1) * group["lr_decay"])
        arrays = (p, g, state["sum"]._data)
        fast = _fast(p)
        k = None if fast else _compiled_exact(p, arrays)
        if fast or k is not None:
            key = (id(group), step, p.dtype)
            coeffs = self._coef_cache.get(key)
            if coeffs is None:
                c = _coeffs(p, clr, group["eps"], group["weight_decay"], group["maximize"])
                # and the compiled kernels' (kernels/_numba/optim.adagrad and adagrad_exact), the same roundings
                coeffs = self._coef_cache[key] = c + ((_compiled_coeffs(p, -c[0], c[1], c[2]), int(c[3])),)
            if fast:
                _fast_update("adagrad", _adagrad_fast, arrays, self._ws, 3, coeffs)
            else:
                _run_compiled(k.adagrad_exact, arrays, *coeffs[-1])
            return
        _chunked(_adagrad_single, (p, g, state["sum"]._data), self._ws, clr=clr, eps=group["eps"],
                 weight_decay=group["weight_decay"], maximize=group["maximize"])  # fmt: skip


def _adagrad_single(p, g, s, ws, *, clr, eps, weight_decay, maximize):
    """One Adagrad update of array ``p`` in place (torch.optim.adagrad._single_tensor_adagrad, op for op)."""
    xp = xp_of(p)
    opm = _opmath(p.dtype)
    g = _grad_for_update(p, g, maximize, weight_decay, ws)
    _addcmul_(s, g, g, 1, s, ws)  # state_sum.addcmul_(grad, grad, value=1)
    std = ws.get("std", s, s.dtype)
    _o._sqrt(s, std, opm)  # state_sum.sqrt().add_(eps)
    xp.add(std, opm.type(eps), out=std, dtype=opm)
    _addcdiv_(p, g, std, -clr, ws)  # param.addcdiv_(grad, std, value=-clr)


def _adagrad_fast(xp, p, g, s, t0, t1, t2, c):
    """One Adagrad update of ``p`` in place with plain ufuncs, in torch's single-tensor op order (7 passes)."""
    clr, eps, weight_decay, neg = c
    if weight_decay != 0:
        g, neg = _l2_grad_fast(xp, p, g, neg, weight_decay, t0), False
    xp.multiply(g, g, out=t1)  # state_sum.addcmul_(grad, grad, value=1)
    xp.add(s, t1, out=s)
    xp.sqrt(s, out=t2)  # std = state_sum.sqrt().add_(eps)
    xp.add(t2, eps, out=t2)
    xp.multiply(g, clr if neg else -clr, out=t1)  # param.addcdiv_(grad, std, value=-clr)
    xp.divide(t1, t2, out=t1)
    xp.add(p, t1, out=p)
