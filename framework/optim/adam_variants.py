"""Adam's relatives with PyTorch's update rules: RAdam (rectified), NAdam (Nesterov momentum) and Adamax.

Each update runs in place on the parameter's array, in the parameter's precision (float32, or float64 for
float64 parameters), in torch's single-tensor op order, so the values follow ``torch.optim`` to rounding.
The shared first steps (with ``g = -grad`` when maximizing)::

    g = g + weight_decay * p          (or, decoupled: p = p * (1 - lr * weight_decay))
    m = m + (1 - beta1) * (g - m)     (lerp)

Example::

    opt = conch.optim.RAdam(model.parameters(), lr=1e-3)
"""

from __future__ import annotations

import math

from .._backend import xp_of
from ..creation import zeros_like
from .adam import Adam
from .optimizer import Optimizer, _opmath, _scalar_state

__all__ = ["RAdam", "NAdam", "Adamax"]


class _AdamLike(Optimizer):
    _STATE = ("exp_avg", "exp_avg_sq")

    _check_group = Adam._check_group  # lr, eps, betas and weight_decay, with Adam's messages

    def _init_state(self, p, state, group):
        state["step"] = _scalar_state(0.0)
        for name in self._STATE:
            state[name] = zeros_like(p.detach())

    def _begin(self, p, g, state, group):
        """Step count, the gradient to use (a fresh array) and the parameter after decoupled decay."""
        xp = xp_of(p)
        opm = _opmath(p.dtype)
        state["step"]._data += 1
        step = float(state["step"]._data)
        g = (-g if group["maximize"] else g).astype(opm)  # a copy: the user's .grad is left as it is
        wd = group["weight_decay"]
        if wd != 0:
            if group.get("decoupled_weight_decay"):
                xp.multiply(p, opm.type(1 - group["lr"] * wd), out=p, dtype=opm)
            else:
                g += opm.type(wd) * p
        m = state["exp_avg"]._data
        m += (g - m) * opm.type(1 - group["betas"][0])  # exp_avg.lerp_(grad, 1 - beta1)
        return xp, opm, step, g, m


class RAdam(_AdamLike):
    r"""Rectified Adam (Liu et al. 2019), as ``torch.optim.RAdam``. With ρ∞ = 2/(1-β2) - 1 and
    ρt = ρ∞ - 2t·β2^t/(1-β2^t): while ρt <= 5 the step is momentum SGD, p -= lr·m/(1-β1^t); after it,
    p -= lr·m/(1-β1^t) · r·√(1-β2^t)/(√v + eps) with r = √((ρt-4)(ρt-2)ρ∞ / ((ρ∞-4)(ρ∞-2)ρt)).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False,
                 *, maximize=False):  # fmt: skip
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      decoupled_weight_decay=decoupled_weight_decay, maximize=maximize))  # fmt: skip

    def _update(self, p, g, state, group):
        xp, opm, step, g, m = self._begin(p, g, state, group)
        beta1, beta2 = group["betas"]
        v = state["exp_avg_sq"]._data
        v *= opm.type(beta2)
        v += g * g * opm.type(1 - beta2)
        bc1, bc2 = 1 - beta1**step, 1 - beta2**step
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 * step * (beta2**step) / bc2
        upd = m / opm.type(bc1)
        upd *= opm.type(group["lr"])
        if rho_t > 5.0:
            rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
            denom = xp.sqrt(v) + opm.type(group["eps"])
            upd *= opm.type(math.sqrt(bc2)) / denom
            upd *= opm.type(rect)
        p -= upd.astype(p.dtype, copy=False)


class NAdam(_AdamLike):
    r"""Adam with Nesterov momentum (Dozat 2016), as ``torch.optim.NAdam``: μt = β1(1 - ½·0.96^(t·ψ)) with
    ψ = ``momentum_decay``, Πt = ∏ μ, and

        p -= lr(1-μt)/(1-Πt) · g/d + lr·μ(t+1)/(1-Πt·μ(t+1)) · m/d,   d = √(v/(1-β2^t)) + eps
    """

    _STATE = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, momentum_decay=4e-3,
                 decoupled_weight_decay=False, *, maximize=False):  # fmt: skip
        if not 0.0 <= momentum_decay:
            raise ValueError(f"Invalid momentum_decay value: {momentum_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      momentum_decay=momentum_decay, decoupled_weight_decay=decoupled_weight_decay,
                                      maximize=maximize))  # fmt: skip

    def _init_state(self, p, state, group):
        super()._init_state(p, state, group)
        state["mu_product"] = _scalar_state(1.0)

    def _update(self, p, g, state, group):
        xp, opm, step, g, m = self._begin(p, g, state, group)
        beta1, beta2 = group["betas"]
        lr, psi = group["lr"], group["momentum_decay"]
        v = state["exp_avg_sq"]._data
        v *= opm.type(beta2)
        v += g * g * opm.type(1 - beta2)
        mu = beta1 * (1.0 - 0.5 * 0.96 ** (step * psi))
        mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((step + 1) * psi))
        state["mu_product"]._data *= mu  # a float32 scalar, as torch keeps it: use its rounded value below
        prod = float(state["mu_product"]._data)
        denom = xp.sqrt(v / opm.type(1 - beta2**step)) + opm.type(group["eps"])
        upd = g / denom * opm.type(lr * (1.0 - mu) / (1.0 - prod))
        upd += m / denom * opm.type(lr * mu_next / (1.0 - prod * mu_next))
        p -= upd.astype(p.dtype, copy=False)


class Adamax(_AdamLike):
    r"""Adam with the infinity norm (Kingma & Ba 2015), as ``torch.optim.Adamax``::

    u = max(β2·u, |g| + eps),   p -= lr/(1-β1^t) · m/u
    """

    _STATE = ("exp_avg", "exp_inf")

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *, maximize=False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      maximize=maximize))  # fmt: skip

    def _update(self, p, g, state, group):
        xp, opm, step, g, m = self._begin(p, g, state, group)
        beta1, beta2 = group["betas"]
        u = state["exp_inf"]._data
        xp.maximum(u * opm.type(beta2), xp.abs(g) + opm.type(group["eps"]), out=u)
        clr = group["lr"] / (1 - beta1**step)
        p -= (m / u * opm.type(clr)).astype(p.dtype, copy=False)
