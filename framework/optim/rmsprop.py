"""RMSprop (Hinton), with momentum and the centered variant."""

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
    _fma,
    _grad_for_update,
    _l2_grad_fast,
    _lerp_,
    _lerp_fast,
    _opmath,
    _run_compiled,
    _scalar_state,
)

__all__ = ["RMSprop"]


class RMSprop(Optimizer):
    r"""RMSprop, update for update as ``torch.optim.RMSprop`` (its single-tensor path)::

        g = -grad if maximize else grad;  g = g + weight_decay * p       (weight_decay != 0)
        v = alpha * v + (1 - alpha) * g * g
        centered:  g_avg = lerp(g_avg, g, 1 - alpha);  avg = sqrt(v - g_avg * g_avg) + eps
        otherwise: avg = sqrt(v) + eps
        momentum > 0:  buf = momentum * buf + g / avg;  p = p - lr * buf
        otherwise:     p = p - lr * g / avg

    State per parameter: ``step``, ``square_avg``, ``momentum_buffer`` (momentum > 0), ``grad_avg``
    (centered).

    Example::

        opt = conch.optim.RMSprop(model.parameters(), lr=1e-2, alpha=0.99, momentum=0.9, centered=True)
    """

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, *,
                 maximize=False):  # fmt: skip
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                        centered=centered, maximize=maximize)  # fmt: skip
        super().__init__(params, defaults)

    def _check_group(self, g):
        for key in ("lr", "eps", "momentum", "weight_decay", "alpha"):
            if not 0.0 <= g[key]:
                raise ValueError(f"Invalid {'alpha' if key == 'alpha' else key} value: {g[key]}")

    def _init_state(self, p, state, group):
        d = p.detach()
        state["step"] = _scalar_state(0.0)
        state["square_avg"] = zeros_like(d)
        if group["momentum"] > 0:
            state["momentum_buffer"] = zeros_like(d)
        if group["centered"]:
            state["grad_avg"] = zeros_like(d)

    def _update(self, p, g, state, group):
        st = state["step"]._data
        st[()] = float(st) + 1.0  # as step += 1 (rounded to float32 once), without a ufunc call
        ga = state["grad_avg"]._data if group["centered"] else None
        buf = state["momentum_buffer"]._data if group["momentum"] > 0 else None
        arrays = (p, g, state["square_avg"]._data, ga, buf)
        if _fast(p):
            key = (id(group), p.dtype)
            coeffs = self._coef_cache.get(key)
            if coeffs is None:
                coeffs = self._coef_cache[key] = _rmsprop_coeffs(p, group)
            _fast_update("rmsprop", _rmsprop_fast, arrays, self._ws, 3, coeffs)
            return
        k = _compiled_exact(p, arrays)
        if k is not None:
            key = ("exact", id(group), p.dtype)
            coeffs = self._coef_cache.get(key)
            if coeffs is None:
                coeffs = self._coef_cache[key] = _rmsprop_exact_coeffs(p, group)
            _run_compiled(k.rmsprop_exact, arrays, *coeffs)
            return
        _chunked(_rmsprop_single, arrays, self._ws, lr=group["lr"],
                 alpha=group["alpha"], eps=group["eps"], weight_decay=group["weight_decay"],
                 momentum=group["momentum"], maximize=group["maximize"])  # fmt: skip


def _rmsprop_coeffs(p, group):
    """The scalars of ``_rmsprop_fast`` for parameters like ``p`` of ``group``, then those of the compiled kernel
    (kernels/_numba/optim.rmsprop): ``(c, flags)`` with the same roundings (``1 - alpha`` and ``w - 1`` in p's
    dtype, as the NumPy path computes them)."""
    c = _coeffs(p, group["lr"], group["alpha"], group["eps"], group["weight_decay"], group["momentum"],
                group["maximize"])  # fmt: skip
    lr, alpha, eps, wd, momentum, neg = c
    oma = 1 - alpha
    flags = int(neg) | (2 if group["momentum"] > 0 else 0) | (4 if group["centered"] else 0)
    return c + ((_compiled_coeffs(p, -lr, alpha, oma, oma - 1, eps, wd, momentum), flags),)


def _rmsprop_exact_coeffs(p, group):
    """``(c, flags)`` of the compiled bitwise kernel (kernels/_numba/optim.rmsprop_exact): ``_rmsprop_single``'s
    scalars, each rounded to p's dtype as that function rounds it (``1 - alpha`` once, from the Python float)."""
    t = p.dtype.type
    oma = t(1 - group["alpha"])
    small = abs(oma) < 0.5
    c = _compiled_coeffs(p, -group["lr"], group["alpha"], oma, oma if small else oma - t(1), group["eps"],
                         group["weight_decay"], group["momentum"])  # fmt: skip
    flags = int(group["maximize"]) | (2 if group["momentum"] > 0 else 0) | (4 if group["centered"] else 0)
    return c, flags | (8 if small else 0)


def _rmsprop_single(p, g, sq, ga, buf, ws, *, lr, alpha, eps, weight_decay, momentum, maximize):
    """One RMSprop update of array ``p`` in place (torch.optim.rmsprop._single_tensor_rmsprop, op for op)."""
    xp = xp_of(p)
    opm = _opmath(p.dtype)
    g = _grad_for_update(p, g, maximize, weight_decay, ws)
    xp.multiply(sq, opm.type(alpha), out=sq, dtype=opm)  # square_avg.mul_(alpha)
    _addcmul_(sq, g, g, 1 - alpha, sq, ws)  # .addcmul_(grad, grad, value=1 - alpha)
    avg = ws.get("avg", sq, sq.dtype)
    if ga is not None:
        _lerp_(ga, g, 1 - alpha, ws)  # grad_avg.lerp_(grad, 1 - alpha)
        _addcmul_(sq, ga, ga, -1, avg, ws)  # square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
        _o._sqrt(avg, avg, opm)
    else:
        _o._sqrt(sq, avg, opm)  # square_avg.sqrt()
    xp.add(avg, opm.type(eps), out=avg, dtype=opm)  # avg.add_(eps)
    if buf is not None:
        xp.multiply(buf, opm.type(momentum), out=buf, dtype=opm)  # buf.mul_(momentum).addcdiv_(grad, avg)
        _addcdiv_(buf, g, avg, 1, ws)
        _fma(buf, opm.type(-lr), p, p, ws)  # param.add_(buf, alpha=-lr)
    else:
        _addcdiv_(p, g, avg, -lr, ws)  # param.addcdiv_(grad, avg, value=-lr)


def _rmsprop_fast(xp, p, g, sq, ga, buf, t0, t1, t2, c):
    """One RMSprop update of ``p`` in place with plain ufuncs, in torch's single-tensor op order."""
    lr, alpha, eps, weight_decay, momentum, neg = c
    if weight_decay != 0:
        g, neg = _l2_grad_fast(xp, p, g, neg, weight_decay, t0), False
    xp.multiply(g, 1 - alpha, out=t1)  # square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
    xp.multiply(t1, g, out=t1)
    xp.multiply(sq, alpha, out=sq)
    xp.add(sq, t1, out=sq)
    if ga is not None:
        _lerp_fast(xp, ga, g, 1 - alpha, neg, t1)  # grad_avg.lerp_(grad, 1 - alpha)
        xp.multiply(ga, ga, out=t2)  # square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
        xp.subtract(sq, t2, out=t2)
        xp.sqrt(t2, out=t2)
    else:
        xp.sqrt(sq, out=t2)
    xp.add(t2, eps, out=t2)
    if buf is not None:  # buf.mul_(momentum).addcdiv_(grad, avg); param.add_(buf, alpha=-lr)
        xp.multiply(buf, momentum, out=buf)
        xp.divide(g, t2, out=t1)
        (xp.subtract if neg else xp.add)(buf, t1, out=buf)
        xp.multiply(buf, -lr, out=t1)
    else:  # param.addcdiv_(grad, avg, value=-lr)
        xp.multiply(g, lr if neg else -lr, out=t1)
        xp.divide(t1, t2, out=t1)
    xp.add(p, t1, out=p)
