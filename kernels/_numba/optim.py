"""Compiled one-pass optimizer updates for NumPy parameters: Adam/AdamW, SGD, RMSprop, Adagrad, RAdam, NAdam, Adamax.

Each kernel updates 1-D C-contiguous float32 or float64 arrays in place, element by element, reading every
array once: the parameter ``p``, its gradient ``g`` (read only) and the state. ``c`` holds the update's scalars in
``p``'s dtype (precomputed once per group and step by the optimizer, bias corrections included) and ``flags`` its
switches as bits. Elementwise, so any split of the range gives the same bits. Three sets:

* the fast mode (``adam``, ``sgd``, ``rmsprop``, ``adagrad``): the formulas and order of the NumPy fast kernels
  in ``framework/optim`` (``_adam_fast``, ``_sgd_fast``...), each value rounded to ``p``'s dtype, with
  ``a * b + c`` possibly contracted into one fused multiply-add (conch's ``fastmath={"contract"}``): a few ulps
  from the NumPy fast path after several steps;
* the bitwise mode (``*_exact``): the NumPy reference path's roundings exactly (below);
* ``radam``, ``nadam``, ``adamax``: ``adam_variants``' NumPy operations one for one (the same bits).

Example (AdamW, float32)::

    c = np.array([1 - lr * wd, 0, 1 - b1, -b1, b2, 1 - b2, eps * sqrt(bc2), -lr * sqrt(bc2) / bc1], np.float32)
    adam(p, g, m, v, m, c, 0)           # vmax: any array when flags lacks AMSGRAD
"""

from __future__ import annotations

import numpy as np
from numba import types
from numba.extending import overload

from . import njit

# flag bits (shared with framework/optim, which builds ``flags``)
NEG = 1  # maximize: the gradient's sign flipped
AMSGRAD = 2  # Adam: v_max = max(v_max, v) and the step divides by sqrt(v_max)
MOMENTUM = 2  # SGD / RMSprop: a momentum buffer
FIRST = 4  # SGD: the buffer's first step (buf = grad)
NESTEROV = 8  # SGD: g + momentum * buf
CENTERED = 4  # RMSprop: v - grad_avg**2 in the denominator
# and, kernel by kernel: adam_exact 4 and rmsprop_exact 8 for a lerp weight |w| < 0.5 (torch's first formula),
# radam 2 for the rectified phase


@njit
def _maximum(a, b):
    # np.maximum: NaN in either operand wins
    if a >= b or a != a:
        return a
    return b


@njit
def _grad(pi, gi, neg, wd):
    # the gradient an update uses: -g when maximising, plus the L2 term (skipped at 0: 0 * inf would make a NaN
    # the NumPy path, which skips the term, does not)
    if neg:
        gi = -gi
    if wd != 0:
        gi = pi * wd + gi
    return gi


@njit
def adam(p, g, m, v, vmax, c, flags):
    """Adam/AdamW in place, the order of ``_adam_fast``: ``p = decay * p``, ``gg = ±g + l2 * p``, then::

        m = m + w1 * (gg - m)   (|w1| < 0.5, else gg + w1m * (gg - m))     v = beta2 * v + (omb2 * gg) * gg
        p = p + (m / (sqrt(v or v_max) + eps)) * step

    ``c = [decay, l2, w1, w1m, beta2, omb2, eps, step]`` (``decay = 1 - lr * wd`` for AdamW, else 1; ``l2 = wd``
    for Adam, else 0; ``w1m = w1 - 1``; eps and step carry the bias corrections).
    """
    decay, l2, w1, w1m, beta2, omb2, eps, step = c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]
    neg = (flags & NEG) != 0
    ams = (flags & AMSGRAD) != 0
    small = abs(w1) < 0.5
    for i in range(p.size):
        pi = p[i]
        if decay != 1:
            pi = pi * decay
        gi = _grad(pi, g[i], neg, l2)
        mi = m[i]
        d = gi - mi
        mi = mi + w1 * d if small else gi + w1m * d
        m[i] = mi
        vi = v[i] * beta2 + (gi * omb2) * gi
        v[i] = vi
        if ams:
            vi = _maximum(vmax[i], vi)
            vmax[i] = vi
        p[i] = pi + (mi / (np.sqrt(vi) + eps)) * step


@njit
def _sgd_flags(flags):
    return (flags & NEG) != 0, (flags & MOMENTUM) != 0, (flags & FIRST) != 0, (flags & NESTEROV) != 0


@njit
def sgd(p, g, buf, c, flags):
    """SGD in place, the order of ``_sgd_fast``: ``gg = ±g + wd * p``; with a buffer ``buf = gg`` (first step) or
    ``momentum * buf + omd * gg``, then ``d = gg + momentum * buf`` (Nesterov) or ``buf``; ``p = p + d * mlr``.

    ``c = [mlr, momentum, omd, wd]`` (``mlr = -lr``, ``omd = 1 - dampening``); ``buf``: any array without MOMENTUM.
    """
    mlr, mom, omd, wd = c[0], c[1], c[2], c[3]
    neg, has_buf, first, nesterov = _sgd_flags(flags)
    for i in range(p.size):
        pi = p[i]
        gi = _grad(pi, g[i], neg, wd)
        if has_buf:
            if first:
                b = gi
            elif omd != 1:
                b = buf[i] * mom + gi * omd
            else:
                b = buf[i] * mom + gi
            buf[i] = b
            gi = b * mom + gi if nesterov else b
        p[i] = pi + gi * mlr


@njit
def rmsprop(p, g, sq, ga, buf, c, flags):
    """RMSprop in place, the order of ``_rmsprop_fast``: ``gg = ±g + wd * p``, ``sq = alpha * sq + (oma * gg) *
    gg``; centered: ``ga = lerp(ga, gg, oma)`` and ``avg = sqrt(sq - ga * ga) + eps``, else ``sqrt(sq) + eps``;
    with momentum ``buf = momentum * buf + gg / avg`` and ``p = p + buf * mlr``, else ``p = p + (gg * mlr) / avg``.

    ``c = [mlr, alpha, oma, omam, eps, wd, momentum]`` (``mlr = -lr``, ``oma = 1 - alpha``, ``omam = oma - 1``);
    ``ga``/``buf``: any array without CENTERED/MOMENTUM.
    """
    mlr, alpha, oma, omam, eps, wd, mom = c[0], c[1], c[2], c[3], c[4], c[5], c[6]
    neg = (flags & NEG) != 0
    has_buf = (flags & MOMENTUM) != 0
    centered = (flags & CENTERED) != 0
    small = abs(oma) < 0.5
    for i in range(p.size):
        pi = p[i]
        gi = _grad(pi, g[i], neg, wd)
        s = sq[i] * alpha + (gi * oma) * gi
        sq[i] = s
        if centered:
            a = ga[i]
            d = gi - a
            a = a + oma * d if small else gi + omam * d
            ga[i] = a
            s = s - a * a
        avg = np.sqrt(s) + eps
        if has_buf:
            b = buf[i] * mom + gi / avg
            buf[i] = b
            p[i] = pi + b * mlr
        else:
            p[i] = pi + (gi * mlr) / avg


@njit
def adagrad(p, g, s, c, flags):
    """Adagrad in place, the order of ``_adagrad_fast``: ``gg = ±g + wd * p``, ``s = s + gg * gg``,
    ``p = p + (gg * mclr) / (sqrt(s) + eps)``. ``c = [mclr, eps, wd]`` (``mclr = -lr / (1 + (step - 1) * lr_decay)``).
    """
    mclr, eps, wd = c[0], c[1], c[2]
    neg = (flags & NEG) != 0
    for i in range(p.size):
        pi = p[i]
        gi = _grad(pi, g[i], neg, wd)
        si = s[i] + gi * gi
        s[i] = si
        p[i] = pi + (gi * mclr) / (np.sqrt(si) + eps)


# ------------------------------------------------------------------------------------------------------------
# The bitwise mode (set_bitwise_torch(True)): the rounding of framework/optim's NumPy reference path exactly.
#
# torch's CPU kernels fuse add-with-alpha, lerp and addcmul into one fma; the reference path emulates each as
# ``round(float64(a) * float64(b) + float64(c))`` (the float32 product is exact in float64) and rounds every
# other operation in the parameter's dtype. These kernels do the same, element by element: the float64 sum is
# stored into an array of the parameter's dtype (the rounding) and every other operation runs on values of that
# dtype. ``fastmath`` is off: a contracted float64 a * b + c would round differently for float64 parameters.
# ``_like(x, y)`` rounds float64 ``x`` to the type of ``y`` (chosen at compile time; a store into a scratch array
# inside a branch kept the loop from vectorising: ~5x slower).
# ------------------------------------------------------------------------------------------------------------


def _like(x, y):
    """``x`` as ``y``'s floating-point type (compiled code only; see the overload below)."""
    raise NotImplementedError


@overload(_like)
def _like_impl(x, y):
    if y == types.float32:
        return lambda x, y: np.float32(x)
    return lambda x, y: np.float64(x)


@njit(fastmath=False)
def _fma(a, b, c):
    # a * b + c in float64 (exact product for float32 operands), rounded by the store that receives it
    return np.float64(a) * np.float64(b) + np.float64(c)


@njit(fastmath=False)
def adam_exact(p, g, m, v, vmax, c, flags):
    """Adam/AdamW as ``_adam_single`` (torch's single-tensor op order and roundings, exact sqrt)::

        p = p * decay;  g = fma(p, l2, ±g);  m = fma(coef, g - m, m or g);  v = fma(g * omb2, g, v * beta2)
        p = p + (m * mss) / (sqrt(v or v_max) / bc2s + eps)

    ``c = [decay, l2, coef, beta2, omb2, bc2s, eps, mss]`` in p's dtype (``decay = 1 - lr * wd`` for AdamW, 1
    without decay; ``coef = w`` when ``|w| < 0.5`` else ``w - 1``, ``w = 1 - beta1``; ``bc2s = sqrt(1 - beta2**t)``;
    ``mss = -lr / (1 - beta1**t)``); flags: NEG, AMSGRAD, and 4 for ``|w| < 0.5``.
    """
    decay, l2, coef, beta2, omb2, bc2s, eps, mss = c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]
    neg = (flags & NEG) != 0
    ams = (flags & AMSGRAD) != 0
    small = (flags & 4) != 0
    for i in range(p.size):
        pi = p[i]
        if decay != 1:
            pi = pi * decay
        gi = -g[i] if neg else g[i]
        if l2 != 0:  # torch: grad.add(param, alpha=weight_decay), an fma
            gi = _like(_fma(pi, l2, gi), gi)
        mi = m[i]
        m[i] = _fma(coef, gi - mi, mi if small else gi)
        vi = _like(_fma(gi * omb2, gi, v[i] * beta2), gi)
        v[i] = vi
        if ams:
            vi = _maximum(vmax[i], vi)
            vmax[i] = vi
        p[i] = pi + (m[i] * mss) / (np.sqrt(vi) / bc2s + eps)


@njit(fastmath=False)
def sgd_exact(p, g, buf, c, flags):
    """SGD as ``_sgd_single`` (torch's single-tensor op order and roundings): ``g = fma(p, wd, ±g)``; with a
    buffer ``buf = g`` (first step) or ``fma(g, omd, buf * momentum)``, then ``g = fma(buf, momentum, g)``
    (Nesterov) or ``buf``; ``p = fma(g, mlr, p)``. ``c = [mlr, momentum, omd, wd]``, flags as :func:`sgd`'s.
    """
    mlr, mom, omd, wd = c[0], c[1], c[2], c[3]
    neg, has_buf, first, nesterov = _sgd_flags(flags)
    for i in range(p.size):
        pi = p[i]
        gi = -g[i] if neg else g[i]
        if wd != 0:  # torch: grad.add(param, alpha=weight_decay), an fma
            gi = _like(_fma(pi, wd, gi), gi)
        if has_buf:
            if first:
                buf[i] = gi
            else:
                buf[i] = _fma(gi, omd, buf[i] * mom)
            if nesterov:
                gi = _like(_fma(buf[i], mom, gi), gi)
            else:
                gi = buf[i]
        p[i] = _fma(gi, mlr, pi)


@njit(fastmath=False)
def rmsprop_exact(p, g, sq, ga, buf, c, flags):
    """RMSprop as ``_rmsprop_single`` (torch's op order and roundings, exact sqrt): ``g = fma(p, wd, ±g)``,
    ``sq = fma(g * oma, g, sq * alpha)``; centered: ``ga = fma(coef, g - ga, ga or g)``, ``avg = sqrt(fma(-ga, ga,
    sq)) + eps``, else ``sqrt(sq) + eps``; with momentum ``buf = buf * momentum + g / avg``, ``p = fma(buf, mlr,
    p)``, else ``p = p + (g * mlr) / avg``.

    ``c = [mlr, alpha, oma, coef, eps, wd, momentum]`` in p's dtype (``oma = 1 - alpha`` rounded once; ``coef = oma``
    when ``|oma| < 0.5`` else ``oma - 1``); flags: NEG, MOMENTUM, CENTERED, and 8 for ``|oma| < 0.5``.
    """
    mlr, alpha, oma, coef, eps, wd, mom = c[0], c[1], c[2], c[3], c[4], c[5], c[6]
    neg = (flags & NEG) != 0
    has_buf = (flags & MOMENTUM) != 0
    centered = (flags & CENTERED) != 0
    small = (flags & 8) != 0
    for i in range(p.size):
        pi = p[i]
        gi = -g[i] if neg else g[i]
        if wd != 0:
            gi = _like(_fma(pi, wd, gi), gi)
        s = _like(_fma(gi * oma, gi, sq[i] * alpha), gi)
        sq[i] = s
        if centered:
            a = ga[i]
            a = _like(_fma(coef, gi - a, a if small else gi), gi)
            ga[i] = a
            s = _like(_fma(-a, a, s), gi)
        avg = np.sqrt(s) + eps
        if has_buf:
            b = buf[i] * mom + gi / avg
            buf[i] = b
            p[i] = _fma(b, mlr, pi)
        else:
            p[i] = pi + (gi * mlr) / avg


@njit(fastmath=False)
def adagrad_exact(p, g, s, c, flags):
    """Adagrad as ``_adagrad_single`` (torch's op order and roundings, exact sqrt): ``g = fma(p, wd, ±g)``,
    ``s = fma(g, g, s)``, ``p = p + (g * mclr) / (sqrt(s) + eps)``. ``c``, flags: as :func:`adagrad`'s."""
    mclr, eps, wd = c[0], c[1], c[2]
    neg = (flags & NEG) != 0
    for i in range(p.size):
        pi = p[i]
        gi = -g[i] if neg else g[i]
        if wd != 0:
            gi = _like(_fma(pi, wd, gi), gi)
        si = _like(_fma(gi, gi, s[i]), gi)
        s[i] = si
        p[i] = pi + (gi * mclr) / (np.sqrt(si) + eps)


# ------------------------------------------------------------------------------------------------------------
# RAdam, NAdam, Adamax (framework/optim/adam_variants.py): that module's NumPy expressions, operation for
# operation in p's dtype (fastmath off), so both paths give the same bits in either mode.
# ------------------------------------------------------------------------------------------------------------


@njit(fastmath=False)
def _variant_begin(pi, gi, mi, neg, decay, l2, w1):
    # _AdamLike._begin: g = ±g; p *= decay (decoupled) or g += l2 * p; m += (g - m) * w1
    if neg:
        gi = -gi
    if decay != 1:
        pi = pi * decay
    if l2 != 0:
        gi = gi + l2 * pi
    return pi, gi, mi + (gi - mi) * w1


@njit(fastmath=False)
def radam(p, g, m, v, c, flags):
    """RAdam as ``RAdam._update``: ``v = v * beta2 + g * g * omb2``, ``u = m / bc1 * lr``, rectified (flag 2):
    ``u = u * (sbc2 / (sqrt(v) + eps)) * rect``; ``p = p - u``. ``c = [decay, l2, w1, beta2, omb2, bc1, lr, sbc2,
    eps, rect]`` in p's dtype (``sbc2 = sqrt(1 - beta2**t)``)."""
    decay, l2, w1, beta2, omb2, bc1, lr, sbc2, eps, rect = c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9]
    neg = (flags & NEG) != 0
    rectified = (flags & 2) != 0
    for i in range(p.size):
        pi, gi, mi = _variant_begin(p[i], g[i], m[i], neg, decay, l2, w1)
        m[i] = mi
        vi = v[i] * beta2 + gi * gi * omb2
        v[i] = vi
        u = mi / bc1 * lr
        if rectified:
            u = u * (sbc2 / (np.sqrt(vi) + eps)) * rect
        p[i] = pi - u


@njit(fastmath=False)
def nadam(p, g, m, v, c, flags):
    """NAdam as ``NAdam._update``: ``v = v * beta2 + g * g * omb2``, ``d = sqrt(v / bc2) + eps``,
    ``p = p - (g / d * c1 + m / d * c2)``. ``c = [decay, l2, w1, beta2, omb2, bc2, eps, c1, c2]`` in p's dtype."""
    decay, l2, w1, beta2, omb2, bc2, eps, c1, c2 = c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8]
    neg = (flags & NEG) != 0
    for i in range(p.size):
        pi, gi, mi = _variant_begin(p[i], g[i], m[i], neg, decay, l2, w1)
        m[i] = mi
        vi = v[i] * beta2 + gi * gi * omb2
        v[i] = vi
        d = np.sqrt(vi / bc2) + eps
        p[i] = pi - (gi / d * c1 + mi / d * c2)


@njit(fastmath=False)
def adamax(p, g, m, u, c, flags):
    """Adamax as ``Adamax._update``: ``u = maximum(u * beta2, |g| + eps)``, ``p = p - m / u * clr``.
    ``c = [decay, l2, w1, beta2, eps, clr]`` in p's dtype."""
    decay, l2, w1, beta2, eps, clr = c[0], c[1], c[2], c[3], c[4], c[5]
    neg = (flags & NEG) != 0
    for i in range(p.size):
        pi, gi, mi = _variant_begin(p[i], g[i], m[i], neg, decay, l2, w1)
        m[i] = mi
        ui = _maximum(u[i] * beta2, abs(gi) + eps)
        u[i] = ui
        p[i] = pi - mi / ui * clr
