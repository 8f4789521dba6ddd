"""Adam and AdamW (decoupled weight decay), with AMSGrad."""

from __future__ import annotations

from .._backend import xp_of
from ..creation import zeros_like
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
    _lerp_,
    _lerp_fast,
    _opmath,
    _run_compiled,
    _scalar_state,
)

__all__ = ["Adam", "AdamW"]


class Adam(Optimizer):
    r"""Adam (Kingma & Ba), update for update as ``torch.optim.Adam`` (its single-tensor path).

    With ``t`` the step count after increment and ``g`` the gradient (negated when ``maximize``)::

        AdamW (decoupled_weight_decay):  p = p * (1 - lr * weight_decay)
        Adam:                            g = g + weight_decay * p
        m = lerp(m, g, 1 - beta1)                  v = beta2 * v + (1 - beta2) * g * g
        amsgrad: v_max = max(v_max, v), used in place of v below
        p = p - lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    State per parameter: ``step`` (0-d float32), ``exp_avg``, ``exp_avg_sq`` and, with ``amsgrad``,
    ``max_exp_avg_sq``.

    ``fused``: ``None`` (default) updates all CuPy parameters of a group with one multi-tensor kernel
    (``conch.kernels.optim.adam_step``) and NumPy parameters with the per-parameter path; ``True``/``False``
    force either. Both give the same numbers up to rounding. The per-parameter path is the fast float32 one
    unless :func:`conch.optim.set_bitwise_torch` asks for PyTorch's exact rounding.

    Example::

        opt = conch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
        opt.zero_grad(); loss.backward(); opt.step()
    """

    _decoupled_default = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, *,
                 maximize=False, fused=None, decoupled_weight_decay=None):  # fmt: skip
        if decoupled_weight_decay is None:
            decoupled_weight_decay = self._decoupled_default
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        maximize=maximize, fused=fused, decoupled_weight_decay=decoupled_weight_decay)  # fmt: skip
        super().__init__(params, defaults)

    def _check_group(self, g):
        betas = g["betas"]
        if not 0.0 <= g["lr"]:
            raise ValueError(f"Invalid learning rate: {g['lr']}")
        if not 0.0 <= g["eps"]:
            raise ValueError(f"Invalid epsilon value: {g['eps']}")
        if len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= g["weight_decay"]:
            raise ValueError(f"Invalid weight_decay value: {g['weight_decay']}")

    def _init_state(self, p, state, group):
        d = p.detach()
        state["step"] = _scalar_state(0.0)
        state["exp_avg"] = zeros_like(d)
        state["exp_avg_sq"] = zeros_like(d)
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = zeros_like(d)

    def _update(self, p, g, state, group):
        step_t = state["step"]._data
        step_t[()] = float(step_t) + 1.0  # as step_t += 1 (rounded to float32 once), without a ufunc call
        step = float(step_t)
        vmax = state["max_exp_avg_sq"]._data if group["amsgrad"] else None
        arrays = (p, g, state["exp_avg"]._data, state["exp_avg_sq"]._data, vmax)
        if _fast(p):
            key = (id(group), step, p.dtype)
            coeffs = self._coef_cache.get(key)
            if coeffs is None:
                coeffs = self._coef_cache[key] = _adam_coeffs(p, group, step)
            _fast_update("adam", _adam_fast, arrays, self._ws, 3, coeffs)
            return
        k = _compiled_exact(p, arrays)
        if k is not None:
            key = ("exact", id(group), step, p.dtype)
            coeffs = self._coef_cache.get(key)
            if coeffs is None:
                coeffs = self._coef_cache[key] = _adam_exact_coeffs(p, group, step)
            _run_compiled(k.adam_exact, arrays, *coeffs)
            return
        lr, wd = group["lr"], group["weight_decay"]
        beta1, beta2 = group["betas"]
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        _chunked(_adam_single, arrays, self._ws, lr=lr, beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=wd,
                 decoupled=group["decoupled_weight_decay"], maximize=group["maximize"],
                 step_size=lr / bias_correction1, bias_correction2_sqrt=bias_correction2**0.5)  # fmt: skip

    def _step_group(self, group):
        plan = self._fused_plan(group)
        if plan is None:
            return super()._step_group(group)
        k, params = plan
        if not params:
            return
        by_step = {}
        for p in params:
            st = self.state[p]
            if not st:
                self._init_state(p, st, group)
            st["step"]._data += 1
            by_step.setdefault(float(st["step"]._data), []).append(p)
        beta1, beta2 = group["betas"]
        amsgrad = group["amsgrad"]
        for step, ps in by_step.items():  # one launch unless parameters joined the group at different steps
            sts = [self.state[p] for p in ps]
            xp = xp_of(ps[0]._data)
            k.adam_step(
                [p._data for p in ps], [xp.ascontiguousarray(p.grad._data) for p in ps],
                [s["exp_avg"]._data for s in sts], [s["exp_avg_sq"]._data for s in sts],
                [s["max_exp_avg_sq"]._data for s in sts] if amsgrad else None,
                lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                step=int(step), decoupled=group["decoupled_weight_decay"], amsgrad=amsgrad,
                maximize=group["maximize"],
            )  # fmt: skip
            for p in ps:
                p._version[0] += 1


def _adam_single(p, g, m, v, vmax, ws, *, lr, beta1, beta2, eps, weight_decay, decoupled, maximize, step_size,
                 bias_correction2_sqrt):  # fmt: skip
    """One Adam update of array ``p`` in place (torch.optim.adam._single_tensor_adam, op for op)."""
    xp = xp_of(p)
    opm = _opmath(p.dtype)
    if weight_decay != 0 and decoupled:
        xp.multiply(p, opm.type(1 - lr * weight_decay), out=p, dtype=opm)  # param.mul_(1 - lr * weight_decay)
        weight_decay = 0.0
    g = _grad_for_update(p, g, maximize, weight_decay, ws)
    _lerp_(m, g, 1 - beta1, ws)  # exp_avg.lerp_(grad, 1 - beta1)
    xp.multiply(v, opm.type(beta2), out=v, dtype=opm)  # exp_avg_sq.mul_(beta2)
    _addcmul_(v, g, g, 1 - beta2, v, ws)  # .addcmul_(grad, grad, value=1 - beta2)
    if vmax is not None:
        xp.maximum(vmax, v, out=vmax)  # torch.maximum(max_exp_avg_sqs[i], exp_avg_sq, out=max_exp_avg_sqs[i])
        v = vmax
    denom = ws.get("denom", v, v.dtype)
    _o._sqrt(v, denom, opm)  # (sqrt(v) / bias_correction2_sqrt).add_(eps)
    xp.divide(denom, opm.type(bias_correction2_sqrt), out=denom, dtype=opm)
    xp.add(denom, opm.type(eps), out=denom, dtype=opm)
    _addcdiv_(p, m, denom, -step_size, ws)  # param.addcdiv_(exp_avg, denom, value=-step_size)


def _adam_exact_coeffs(p, group, step):
    """``(c, flags)`` of the compiled bitwise kernel (kernels/_numba/optim.adam_exact): ``_adam_single``'s scalars,
    each rounded to p's dtype as that function rounds it."""
    lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
    beta1, beta2 = group["betas"]
    decoupled = group["decoupled_weight_decay"]
    w = p.dtype.type(1 - beta1)  # _lerp_'s weight and its coefficient
    small = abs(w) < 0.5
    c = _compiled_coeffs(p, 1 - lr * wd if decoupled and wd != 0 else 1.0, 0.0 if decoupled else wd,
                         w if small else w - 1, beta2, 1 - beta2, (1 - beta2**step) ** 0.5, eps,
                         -(lr / (1 - beta1**step)))  # fmt: skip
    return c, int(group["maximize"]) | (2 if group["amsgrad"] else 0) | (4 if small else 0)


def _adam_coeffs(p, group, step):
    """The scalars of ``_adam_fast`` for parameters like ``p`` of ``group`` at step count ``step``."""
    lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
    beta1, beta2 = group["betas"]
    decoupled = group["decoupled_weight_decay"]
    bias_correction1 = 1 - beta1**step
    bc2_sqrt = (1 - beta2**step) ** 0.5
    # torch: p += (-lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps); multiplying numerator and denominator by
    # sqrt(bc2) saves a pass: p += (-lr * sqrt(bc2) / bc1) * m / (sqrt(v) + eps * sqrt(bc2))
    c = _coeffs(p, 1 - lr * wd if decoupled else 1.0, 0.0 if decoupled else wd, group["maximize"], 1 - beta1, beta2,
                1 - beta2, eps * bc2_sqrt, -lr * bc2_sqrt / bias_correction1)  # fmt: skip
    # the compiled kernel's scalars (kernels/_numba/optim.adam), the same roundings; _lerp_fast's w - 1 in p's dtype
    decay, l2, neg, w1, beta2, omb2, eps, step_size = c
    k = _compiled_coeffs(p, decay, l2, w1, w1 - 1, beta2, omb2, eps, step_size)
    return c + ((k, int(neg) | (2 if group["amsgrad"] else 0)),)


def _adam_fast(xp, p, g, m, v, vmax, t0, t1, t2, c):
    """One Adam update of ``p`` in place with plain ufuncs: 13 passes for AdamW (torch's single-tensor op
    order, except the bias correction of ``v`` folded into the step size and eps, as ``_update`` explains)."""
    decay, l2, neg, w1, beta2, omb2, eps, step = c
    if decay != 1:
        xp.multiply(p, decay, out=p)  # param.mul_(1 - lr * weight_decay)
    if l2 != 0:
        g, neg = _l2_grad_fast(xp, p, g, neg, l2, t0), False
    _lerp_fast(xp, m, g, w1, neg, t1)  # exp_avg.lerp_(grad, 1 - beta1)
    xp.multiply(g, omb2, out=t1)  # exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2); the sign of
    xp.multiply(t1, g, out=t1)  # grad (maximize) cancels in the square
    xp.multiply(v, beta2, out=v)
    xp.add(v, t1, out=v)
    if vmax is not None:
        xp.maximum(vmax, v, out=vmax)
        v = vmax
    xp.sqrt(v, out=t2)
    xp.add(t2, eps, out=t2)
    xp.divide(m, t2, out=t1)
    xp.multiply(t1, step, out=t1)
    xp.add(p, t1, out=p)


class AdamW(Adam):
    r"""Adam with decoupled weight decay (Loshchilov & Hutter), as ``torch.optim.AdamW``::

        p = p * (1 - lr * weight_decay), then the Adam update without an L2 term.

    Example::

        opt = conch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    """

    _decoupled_default = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, fused=None):  # fmt: skip
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         maximize=maximize, fused=fused, decoupled_weight_decay=True)  # fmt: skip
