"""Compiled one-pass optimizer updates (Adam/AdamW, SGD, RMSprop, Adagrad) for the CPU fast mode.

Each kernel updates 1-D C-contiguous float32 or float64 arrays in place, element by element, reading every
array once: the parameter ``p``, its gradient ``g`` (read only) and the state. ``c`` holds the update's scalars in
``p``'s dtype (precomputed once per group and step by the optimizer, bias corrections included) and ``flags`` its
switches as bits. The formulas and their order are those of the NumPy fast kernels in ``framework/optim``
(``_adam_fast``, ``_sgd_fast``...), each value rounded to ``p``'s dtype, with ``a * b + c`` possibly contracted into
one fused multiply-add (conch's ``fastmath={"contract"}``): results agree with the NumPy path to a few ulps per
step. Elementwise, so any split of the range gives the same bits. Example (AdamW, float32)::

    c = np.array([1 - lr * wd, 0, 1 - b1, -b1, b2, 1 - b2, eps * sqrt(bc2), -lr * sqrt(bc2) / bc1], np.float32)
    adam(p, g, m, v, m, c, 0)           # vmax: any array when flags lacks AMSGRAD
"""

from __future__ import annotations

import numpy as np

from . import njit

# flag bits (shared with framework/optim, which builds ``flags``)
NEG = 1  # maximize: the gradient's sign flipped
AMSGRAD = 2  # Adam: v_max = max(v_max, v) and the step divides by sqrt(v_max)
MOMENTUM = 2  # SGD / RMSprop: a momentum buffer
FIRST = 4  # SGD: the buffer's first step (buf = grad)
NESTEROV = 8  # SGD: g + momentum * buf
CENTERED = 4  # RMSprop: v - grad_avg**2 in the denominator


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
def sgd(p, g, buf, c, flags):
    """SGD in place, the order of ``_sgd_fast``: ``gg = ±g + wd * p``; with a buffer ``buf = gg`` (first step) or
    ``momentum * buf + omd * gg``, then ``d = gg + momentum * buf`` (Nesterov) or ``buf``; ``p = p + d * mlr``.

    ``c = [mlr, momentum, omd, wd]`` (``mlr = -lr``, ``omd = 1 - dampening``); ``buf``: any array without MOMENTUM.
    """
    mlr, mom, omd, wd = c[0], c[1], c[2], c[3]
    neg = (flags & NEG) != 0
    has_buf = (flags & MOMENTUM) != 0
    first = (flags & FIRST) != 0
    nesterov = (flags & NESTEROV) != 0
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
