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
from .optimizer import Optimizer, _compiled_coeffs, _compiled_float, _opmath, _run_compiled, _scalar_state

__all__ = ["RAdam", "NAdam", "Adamax"]


class _AdamLike(Optimizer):
    _STATE = ("exp_avg", "exp_avg_sq")

    _check_group = Adam._check_group  # lr, eps, betas and weight_decay, with Adam's messages

    def _init_state(self, p, state, group):
        state["step"] = _scalar_state(0.0)
        for name in self._STATE:
            state[name] = zeros_like(p.detach())

    def _compiled_step(self, name, p, g, state, group, flags, *values):
        """Run the compiled twin (kernels/_numba/optim.py ``name``: the same operations in p's dtype, so the same
        bits) of this update with scalars ``values`` after the shared decay/L2/lerp ones and the kernel's own
        ``flags`` (maximize added); False when it cannot."""
        arrays = (p, g, *(state[s]._data for s in self._STATE))
        k = _compiled_float(p, arrays)
        if k is None:
            return False
        wd = group["weight_decay"]
        decoupled = wd != 0 and group.get("decoupled_weight_decay")
        c = _compiled_coeffs(p, 1 - group["lr"] * wd if decoupled else 1.0, 0.0 if decoupled else wd,
                             1 - group["betas"][0], *values)  # fmt: skip
        _run_compiled(getattr(k, name), arrays, c, int(group["maximize"]) | flags)
        return True

    def _step_count(self, state):
        st = state["step"]._data
        st[()] = float(st) + 1.0  # as step += 1 (rounded to float32 once), without a ufunc call
        return float(st)

    def _begin(self, p, g, state, group):
        """The gradient to use (a fresh array), the parameter after decoupled decay and ``m`` after its lerp."""
        xp = xp_of(p)
        opm = _opmath(p.dtype)
        g = (-g if group["maximize"] else g).astype(opm)  # a copy: the user's .grad is left as it is
        wd = group["weight_decay"]
        if wd != 0:
            if group.get("decoupled_weight_decay"):
                xp.multiply(p, opm.type(1 - group["lr"] * wd), out=p, dtype=opm)
            else:
                g += opm.type(wd) * p
        m = state["exp_avg"]._data
        m += (g - m) * opm.type(1 - group["betas"][0])  # exp_avg.lerp_(grad, 1 - beta1)
        return xp, opm, g, m


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
        step = self._step_count(state)
        beta1, beta2 = group["betas"]
        bc1, bc2 = 1 - beta1**step, 1 - beta2**step
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 * step * (beta2**step) / bc2
        rectified = rho_t > 5.0
        rect = 0.0
        if rectified:
            rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
        if self._compiled_step("radam", p, g, state, group, 2 if rectified else 0, beta2, 1 - beta2, bc1,
                               group["lr"], math.sqrt(bc2), group["eps"], rect):  # fmt: skip
            return
        xp, opm, g, m = self._begin(p, g, state, group)
        v = state["exp_avg_sq"]._data
        v *= opm.type(beta2)
        v += g * g * opm.type(1 - beta2)
        upd = m / opm.type(bc1)
        upd *= opm.type(group["lr"])
        if rectified:
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
        step = self._step_count(state)
        beta1, beta2 = group["betas"]
        lr, psi = group["lr"], group["momentum_decay"]
        mu = beta1 * (1.0 - 0.5 * 0.96 ** (step * psi))
        mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((step + 1) * psi))
        state["mu_product"]._data *= mu  # a float32 scalar, as torch keeps it: use its rounded value below
        prod = float(state["mu_product"]._data)
        c1, c2 = lr * (1.0 - mu) / (1.0 - prod), lr * mu_next / (1.0 - prod * mu_next)
        if self._compiled_step("nadam", p, g, state, group, 0, beta2, 1 - beta2, 1 - beta2**step, group["eps"], c1, c2):
            return
        xp, opm, g, m = self._begin(p, g, state, group)
        v = state["exp_avg_sq"]._data
        v *= opm.type(beta2)
        v += g * g * opm.type(1 - beta2)
        denom = xp.sqrt(v / opm.type(1 - beta2**step)) + opm.type(group["eps"])
        upd = g / denom * opm.type(c1)
        upd += m / denom * opm.type(c2)
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
        step = self._step_count(state)
        beta1, beta2 = group["betas"]
        clr = group["lr"] / (1 - beta1**step)
        if self._compiled_step("adamax", p, g, state, group, 0, beta2, group["eps"], clr):
            return
        xp, opm, g, m = self._begin(p, g, state, group)
        u = state["exp_inf"]._data
        xp.maximum(u * opm.type(beta2), xp.abs(g) + opm.type(group["eps"]), out=u)
        p -= (m / u * opm.type(clr)).astype(p.dtype, copy=False)
