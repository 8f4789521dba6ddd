"""Special functions (erfinv, lgamma, digamma, polygamma, i0, regularised incomplete gammas) through SciPy.

SciPy comes with scikit-learn, a conch dependency. The values are computed in float64 on the host (a GPU array
makes one round trip: these functions are rare in training code, used for initialisation and losses) and
returned in the input's dtype. Each gradient is another special function, so higher derivatives come free:

    d erfinv(x) = √π/2 · exp(erfinv(x)²)     d lgamma(x) = digamma(x)     d polygamma(n, x) = polygamma(n+1, x)
    d i0(x) = i1(x)                          d igamma(a, x) = x^(a-1) e^(-x) / Γ(a)  (igammac: minus that)

Example: ``Special.apply(x, name="erfinv")`` is ``x.erfinv()``.
"""

from __future__ import annotations

import numpy as np

from .._backend import to_host, xp_of
from ..autograd.function import Op


def _scipy(name):
    from scipy import special  # imported on first use: SciPy costs ~100 ms to import

    return getattr(special, name)


def _evaluate(name, n, *arrays):
    """SciPy's ``name`` of the arrays in float64 (polygamma's order ``n`` first), in the first array's dtype and
    namespace."""
    xp, dt = xp_of(arrays[0]), arrays[0].dtype
    host = [np.asarray(to_host(a), dtype=np.float64) for a in arrays]
    out = _scipy(name)(n, *host) if name == "polygamma" else _scipy(name)(*host)
    return xp.asarray(np.asarray(out).astype(dt, copy=False))


class Special(Op):
    """One-argument special function ``name`` (erfinv, gammaln, polygamma with order ``n``, i0, i1)."""

    saves = (0, "out")

    @staticmethod
    def forward(ctx, a, name, n=0):
        ctx.name, ctx.n = name, n
        return _evaluate(name, n, a)

    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        if ctx.name == "erfinv":
            return g * (y * y).exp() * (np.pi**0.5 / 2)
        if ctx.name == "gammaln":
            return g * Special.apply(x, name="polygamma", n=0)
        if ctx.name == "polygamma":
            return g * Special.apply(x, name="polygamma", n=ctx.n + 1)
        if ctx.name == "i0":
            return g * Special.apply(x, name="i1")
        if ctx.name == "i1":  # i1' = i0 - i1/x (limit 1/2 at 0)
            safe = x.masked_fill(x == 0, 1.0)
            return g * (Special.apply(x, name="i0") - (y / safe).masked_fill(x == 0, 0.5))
        raise RuntimeError(f"the derivative of {ctx.name} is not implemented")


class IncompleteGamma(Op):
    """Regularised lower (``upper=False``: igamma) or upper (igammac) incomplete gamma P(a, x) / Q(a, x); the
    gradient flows to x only, as PyTorch's."""

    saves = (0, 1)

    @staticmethod
    def forward(ctx, a, x, upper):
        ctx.upper = upper
        return _evaluate("gammaincc" if upper else "gammainc", 0, a, x)

    @staticmethod
    def backward(ctx, g):
        a, x = ctx.saved_tensors
        if ctx.needs_input_grad[0]:
            raise NotImplementedError("the derivative of igamma with respect to its first argument is not implemented")
        density = ((a - 1) * x.log() - x - Special.apply(a, name="gammaln")).exp()
        return None, g * (-density if ctx.upper else density)
