"""Elementwise ops: arithmetic, powers, exp/log, trigonometric, activations, clamps, casts, rounding, erf.

Each Op has its forward on arrays (NumPy or CuPy) and its backward on Tensors, side by side. Backward formulas
use Tensor operations, so with ``create_graph=True`` they are recorded too and give higher derivatives.
Broadcasting is undone by the engine, not here: a backward may return a gradient of the broadcast shape.
"""

from __future__ import annotations

import math

import numpy as np

from .._backend import xp_of
from ..autograd.function import Op
from ..autograd.grad_mode import _enabled
from ..kernels._act import relu_select
from ..kernels._erf import erf


class Add(Op):
    @staticmethod
    def forward(ctx, a, b):
        return a + b

    @staticmethod
    def backward(ctx, g):
        return g, g


class Sub(Op):
    @staticmethod
    def forward(ctx, a, b):
        return a - b

    @staticmethod
    def backward(ctx, g):
        return g, -g


class Mul(Op):
    saves = (0, 1)
    cross_saves = True  # d/da = g·b reads only b, d/db = g·a only a

    @staticmethod
    def forward(ctx, a, b):
        return a * b

    @staticmethod
    def backward(ctx, g):
        n = ctx.needs_input_grad
        if not _enabled[0]:  # backward not recorded: plain array maths (see _arr)
            gd = g._data
            return (g._wrap_const(gd * ctx.saved_tensor(1)._data) if n[0] else None), (
                g._wrap_const(gd * ctx.saved_tensor(0)._data) if n[1] else None
            )
        return (g * ctx.saved_tensor(1) if n[0] else None), (g * ctx.saved_tensor(0) if n[1] else None)


class Div(Op):
    saves = (0, 1)

    @staticmethod
    def forward(ctx, a, b):
        return a / b

    @staticmethod
    def backward(ctx, g):
        # d(a/b)/da = 1/b ; d(a/b)/db = -a/b²
        a, b = ctx.saved_tensors
        n = ctx.needs_input_grad
        return (g / b if n[0] else None), (-g * a / (b * b) if n[1] else None)


class AddScalar(Op):
    """a + s for a Python number s (no 0-d tensor is made for s)."""

    @staticmethod
    def forward(ctx, a, s):
        return a + s

    @staticmethod
    def backward(ctx, g):
        return g


class MulScalar(Op):
    """a · s for a Python number s: d/da = s."""

    @staticmethod
    def forward(ctx, a, s):
        ctx.s = s
        return a * s

    @staticmethod
    def backward(ctx, g):
        if not _enabled[0]:
            return g._wrap_const(g._data * ctx.s)
        return g * ctx.s


class DivScalar(Op):
    """a / s for a Python number s: d/da = 1/s."""

    @staticmethod
    def forward(ctx, a, s):
        ctx.s = s
        return a / s

    @staticmethod
    def backward(ctx, g):
        return g / ctx.s


class RSubScalar(Op):
    """s - a for a Python number s: d/da = -1."""

    @staticmethod
    def forward(ctx, a, s):
        return s - a

    @staticmethod
    def backward(ctx, g):
        return -g


class Neg(Op):
    @staticmethod
    def forward(ctx, a):
        return -a

    @staticmethod
    def backward(ctx, g):
        return -g


class PowScalar(Op):
    """a ** p for a Python number p: d/da = p a^(p-1)."""

    saves = (0,)

    @staticmethod
    def forward(ctx, a, p):
        ctx.p = p
        # NumPy's float pow is ~50x slower than a multiply: the common small powers are spelled out
        if p == 2:
            return a * a
        if p == 3:
            return a * a * a
        if p == 0.5:
            return xp_of(a).sqrt(a)
        return (a**p).astype(a.dtype, copy=False)  # NumPy widens bfloat16 ** float to float32

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        p = ctx.p
        if p == 0:
            return g * 0
        if p == 1:
            return g
        if p == 2:
            return g * a * 2
        return g * p * a ** (p - 1)


class Pow(Op):
    """a ** b for tensors: d/da = b a^(b-1), d/db = a^b log a."""

    saves = (0, 1, "out")

    @staticmethod
    def forward(ctx, a, b):
        return a**b

    @staticmethod
    def backward(ctx, g):
        a, b, out = ctx.saved_tensors
        n = ctx.needs_input_grad
        ga = gb = None
        if n[0]:
            # b == 0: a^0 is constant 1, so the gradient is 0 even at a == 0 (where b·a^(b-1) is 0·inf)
            # (the exponent is 0 there too, so that no 0·inf appears in a second derivative either)
            b0 = b._data == 0
            ga = (g * b * a ** (b - 1).masked_fill(b0, 0)).masked_fill(b0, 0)
        if n[1]:
            # log a is nan for a < 0 and -inf at 0; at a == 0 the derivative a^b log a is 0 for b >= 0
            # (PyTorch's convention) and stays inf·(-inf) = -inf for b < 0
            zero = (a._data == 0) & (b._data >= 0)
            # (log of 1, not of 0, at those entries: no 0/0 in a second derivative)
            ab = a if a.shape == zero.shape else a.expand(*zero.shape)
            gb = (g * out * ab.masked_fill(zero, 1).log()).masked_fill(zero, 0)
        return ga, gb


class RPowScalar(Op):
    """s ** a for a Python number s: d/da = s^a log s."""

    saves = ("out",)

    @staticmethod
    def forward(ctx, a, s):
        # log 0 = -inf; PyTorch's convention: 0^a has derivative 0 where a >= 0 (only a < 0 gives -inf)
        ctx.logs = float(np.log(s)) if s > 0 else float("-inf") if s == 0 else float("nan")
        ctx.zero = a >= 0 if s == 0 else None
        return xp_of(a).asarray(s, dtype=a.dtype) ** a

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        if ctx.zero is not None:
            return (g * out * ctx.logs).masked_fill(ctx.zero, 0)
        return g * out * ctx.logs


class Exp(Op):
    saves = ("out",)

    @staticmethod
    def forward(ctx, a):
        return xp_of(a).exp(a)

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        if not _enabled[0]:
            return g._wrap_const(g._data * out._data)
        return g * out


class Log(Op):
    saves = (0,)

    @staticmethod
    def forward(ctx, a):
        return xp_of(a).log(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return g / a


class Sqrt(Op):
    saves = ("out",)

    @staticmethod
    def forward(ctx, a):
        return xp_of(a).sqrt(a)

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return g / (out * 2)


class Rsqrt(Op):
    saves = ("out",)

    @staticmethod
    def forward(ctx, a):
        xp = xp_of(a)
        return (1 / xp.sqrt(a)).astype(a.dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        # d/da a^(-1/2) = -1/2 a^(-3/2) = -1/2 out³
        (out,) = ctx.saved_tensors
        return g * out * out * out * -0.5


class Abs(Op):
    saves = (0,)

    @staticmethod
    def forward(ctx, a):
        return abs(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return g * a.sign()


class Sin(Op):
    saves = (0,)

    @staticmethod
    def forward(ctx, a):
        return xp_of(a).sin(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return g * a.cos()


class Cos(Op):
    saves = (0,)

    @staticmethod
    def forward(ctx, a):
        return xp_of(a).cos(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return -g * a.sin()


class Tanh(Op):
    saves = ("out",)

    @staticmethod
    def forward(ctx, a):
        return xp_of(a).tanh(a)

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        if not _enabled[0]:  # d tanh = 1 - tanh²
            y = out._data
            return g._wrap_const(g._data * (1 - y * y))
        return g * (1 - out * out)


class Sigmoid(Op):
    saves = ("out",)

    @staticmethod
    def forward(ctx, a):
        xp = xp_of(a)
        # split by sign so exp never overflows: σ(x) = 1/(1+e^-x) = e^x/(1+e^x)
        e = xp.exp(-abs(a))
        return xp.where(a >= 0, 1 / (1 + e), e / (1 + e)).astype(a.dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        if not _enabled[0]:  # dσ = σ(1 - σ)
            y = out._data
            return g._wrap_const(g._data * y * (1 - y))
        return g * out * (1 - out)


_ZEROS: dict = {}  # dtype -> its scalar 0, made once (a scalar per call costs a tenth of a small relu)
_ZEROS_0D: dict = {}  # dtype -> a read-only 0-d NumPy array 0 (the same result as the scalar, bit for bit)


def zero_0d(dt):
    """A read-only 0-d NumPy array 0 of dtype ``dt``, one per dtype: ``np.maximum(a, zero_0d(a.dtype))`` is
    relu's forward, bit for bit the same as with the scalar 0 and faster on small arrays."""
    zero = _ZEROS_0D.get(dt)
    if zero is None:
        zero = _ZEROS_0D[dt] = np.zeros((), dt)
        zero.flags.writeable = False  # shared by every call
    return zero


class Relu(Op):
    """max(a, 0); d/da = 1 where the output is positive (a > 0), else 0. The output is saved, not a mask, as
    PyTorch's threshold_backward reads it: a forward that records nothing computes nothing for backward."""

    saves = ("out",)

    @staticmethod
    def forward(ctx, a):
        # maximum, not a * mask: keeps NaN (as PyTorch) and gives +0.0, never -0.0, for negative inputs
        dt = a.dtype
        if type(a) is np.ndarray:  # a 0-d array zero: NumPy skips the scalar conversion (0.4 us, not 0.6)
            zero = _ZEROS_0D.get(dt)
            return np.maximum(a, zero_0d(dt) if zero is None else zero)
        zero = _ZEROS.get(dt)
        if zero is None:
            zero = _ZEROS[dt] = dt.type(0)
        return xp_of(a).maximum(a, zero)

    @staticmethod
    def backward(ctx, g):
        y = ctx.saved_tensor(0)._data
        if not _enabled[0]:  # backward not recorded: one array pass (NaN in g stays out where y <= 0)
            return g._wrap_const(relu_select(y, g._data))
        return g.masked_fill(~(y > 0), 0)


class Clamp(Op):
    """min(max(a, lo), hi) with Python-number bounds (either may be None).

    Gradient as PyTorch 2.14: clamp passes it strictly inside the bounds, lo < a < hi (none at a bound,
    none for NaN); with ``open_`` (hardtanh/relu6/hardsigmoid: hardtanh_backward) it is zeroed only where
    a <= lo or a >= hi, so a NaN input passes it.
    """

    @staticmethod
    def forward(ctx, a, lo, hi, open_=False):
        xp = xp_of(a)
        out = a
        lo_ = None if lo is None else xp.asarray(lo, dtype=a.dtype)
        hi_ = None if hi is None else xp.asarray(hi, dtype=a.dtype)
        if lo_ is not None:
            out = xp.maximum(out, lo_)
        if hi_ is not None:
            out = xp.minimum(out, hi_)
        if open_:
            blocked = xp.zeros(a.shape, dtype=bool)
            if lo_ is not None:
                blocked = blocked | (a <= lo_)
            if hi_ is not None:
                blocked = blocked | (a >= hi_)
            ctx.mask = ~blocked
        else:
            mask = xp.ones(a.shape, dtype=bool)
            if lo_ is not None:
                mask = mask & (a > lo_)
            if hi_ is not None:
                mask = mask & (a < hi_)
            ctx.mask = mask
        return out

    @staticmethod
    def backward(ctx, g):
        return g.masked_fill(~ctx.mask, 0)


class ClampTensor(Op):
    """clamp with tensor bounds: out = min(max(a, lo), hi), broadcasting; ``has`` is "lo", "hi" or "lohi".

    Gradients as PyTorch 2.14. One bound: as maximum/minimum (ties share dy/2 each, a NaN on either side
    gives both dy). Both bounds, with w = 1/2 where a meets exactly one bound of a proper range (lo < hi),
    else 1:
      da  = dy · w · [a is NaN, or not crossed (lo > hi) and (lo <= a or lo NaN) and (a <= hi or hi NaN)]
      dlo = dy · ([lo <= hi and a < lo] + 1/2 [lo < hi and a == lo])
      dhi = dy · ([lo > hi] + [lo <= hi and a > hi] + 1/2 [lo < hi and a == hi])
    so a NaN bound passes nothing to either bound, and crossed bounds send everything to hi.
    """

    @staticmethod
    def forward(ctx, a, *bounds, has):
        xp = xp_of(a)
        lo = bounds[0] if has[0:2] == "lo" else None
        hi = bounds[-1] if has.endswith("hi") else None
        out = a
        if lo is not None:
            out = xp.maximum(out, lo)
        if hi is not None:
            out = xp.minimum(out, hi)
        if lo is not None and hi is not None:
            proper, ordered, crossed = lo < hi, lo <= hi, lo > hi
            at_lo, at_hi = proper & (a == lo), proper & (a == hi)
            half = 0.5 * (at_lo ^ at_hi)
            inside = ~crossed & ((a >= lo) | xp.isnan(lo)) & ((a <= hi) | xp.isnan(hi))
            ctx.weights = [
                (xp.isnan(a) | inside) * (1.0 - half),
                (ordered & (a < lo)) + 0.5 * at_lo,
                crossed + (ordered & (a > hi)) + 0.5 * at_hi,
            ]
        else:
            b = lo if lo is not None else hi
            beyond = (a < b) if lo is not None else (a > b)  # where the bound wins
            tie = 0.5 * (a == b)
            nan = xp.isnan(a) | xp.isnan(b)
            ctx.weights = [xp.where(nan, 1.0, ~beyond - tie), xp.where(nan, 1.0, beyond + tie)]
        return out

    @staticmethod
    def backward(ctx, g):
        return tuple(
            g * g._wrap_const(w.astype(g.dtype)) if need else None for w, need in zip(ctx.weights, ctx.needs_input_grad)
        )


class Maximum(Op):
    """Elementwise max (min with ``largest=False``); NaN propagates.

    Gradient as PyTorch: the larger side gets dy, ties give each side dy/2, and where either is NaN (no
    order) both sides get dy: da = dy · [a not below b] · (1/2 at ties), db likewise.
    """

    saves = (0, 1)

    @staticmethod
    def forward(ctx, a, b, largest=True):
        ctx.largest = largest
        xp = xp_of(a)
        return xp.maximum(a, b) if largest else xp.minimum(a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        ad, bd = a._data, b._data
        below, above = (ad < bd, ad > bd) if ctx.largest else (ad > bd, ad < bd)
        half = 0.5 * (ad == bd)
        n = ctx.needs_input_grad
        wa = g._wrap_const((1 - below - half).astype(g.dtype)) if n[0] else None
        wb = g._wrap_const((1 - above - half).astype(g.dtype)) if n[1] else None
        return (g * wa if n[0] else None), (g * wb if n[1] else None)


class Cast(Op):
    @staticmethod
    def forward(ctx, a, dtype):
        return a.astype(dtype)

    @staticmethod
    def backward(ctx, g):
        return g  # the engine casts back to the input dtype


class Rounding(Op):
    """floor / ceil / round / trunc / sign: piecewise constant, so the gradient is zero (as PyTorch)."""

    @staticmethod
    def forward(ctx, a, fn, decimals):
        xp = xp_of(a)
        if fn == "sign":
            return xp.sign(a)
        if a.dtype.kind in "iub":  # integers are already whole
            return a.copy()
        if fn == "round":
            return xp.round(a, decimals).astype(a.dtype, copy=False)  # half to even, as PyTorch
        return getattr(xp, fn)(a).astype(a.dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        return g * 0


class NanToNum(Op):
    """NaN -> nan, +inf -> posinf, -inf -> neginf; the gradient passes where the input was finite."""

    @staticmethod
    def forward(ctx, a, nan, posinf, neginf):
        xp = xp_of(a)
        ctx.finite = xp.isfinite(a)
        return xp.nan_to_num(a, nan=nan, posinf=posinf, neginf=neginf)

    @staticmethod
    def backward(ctx, g):
        return g.masked_fill(~ctx.finite, 0)


class Atan2(Op):
    """atan2(a, b); d/da = b / (a² + b²), d/db = -a / (a² + b²)."""

    saves = (0, 1)

    @staticmethod
    def forward(ctx, a, b):
        return xp_of(a).arctan2(a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        # at (0, 0) the reciprocal of a² + b² is inf and 0·inf NaN: PyTorch's atan2_backward gives 0 there
        d = a * a + b * b
        zero = d == 0
        r = (g / d.masked_fill(zero, 1)).masked_fill(zero, 0)
        return r * b, -(r * a)


class Erf(Op):
    """erf(x); d/dx = 2/√π · exp(-x²)."""

    saves = (0,)

    @staticmethod
    def forward(ctx, a):
        return erf(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return g * (-(a * a)).exp() * (2 / math.sqrt(math.pi))


class LogSigmoid(Op):
    """log σ(x) = -softplus(-x), computed without overflow; d/dx = σ(-x)."""

    saves = (0,)

    @staticmethod
    def forward(ctx, a):
        xp = xp_of(a)
        return (xp.minimum(a, 0) - xp.log1p(xp.exp(-abs(a)))).astype(a.dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return g * Sigmoid.apply(-a)


class Log1p(Op):
    """log(1 + x), accurate where x is tiny (log1p(1e-10) = 1e-10, where log(1 + x) rounds to 0); d/dx = 1/(1 + x)."""

    saves = (0,)

    @staticmethod
    def forward(ctx, a):
        return xp_of(a).log1p(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return g / (a + 1)


class Expm1(Op):
    """eˣ - 1, accurate where x is tiny; d/dx = eˣ = out + 1."""

    saves = ("out",)

    @staticmethod
    def forward(ctx, a):
        return xp_of(a).expm1(a)

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (y + 1)


# ---------------------------------------------------------------- more unary maths (issue #14)


class Tan(Op):
    """tan x; d/dx = 1 + tan² x = 1 + out²."""

    saves = ("out",)

    @staticmethod
    def forward(ctx, a):
        return xp_of(a).tan(a)

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return g * (out * out + 1)


class Sinh(Op):
    """sinh x; d/dx = cosh x."""

    saves = (0,)

    @staticmethod
    def forward(ctx, a):
        return xp_of(a).sinh(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return g * Cosh.apply(a)


class Cosh(Op):
    """cosh x; d/dx = sinh x."""

    saves = (0,)

    @staticmethod
    def forward(ctx, a):
        return xp_of(a).cosh(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return g * Sinh.apply(a)


class Asin(Op):
    """asin x; d/dx = 1/√(1 - x²)."""

    saves = (0,)

    @staticmethod
    def forward(ctx, a):
        return xp_of(a).arcsin(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return g * (1 - a * a).rsqrt()


class Acos(Op):
    """acos x; d/dx = -1/√(1 - x²)."""

    saves = (0,)

    @staticmethod
    def forward(ctx, a):
        return xp_of(a).arccos(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return -g * (1 - a * a).rsqrt()


class Atan(Op):
    """atan x; d/dx = 1/(1 + x²)."""

    saves = (0,)

    @staticmethod
    def forward(ctx, a):
        return xp_of(a).arctan(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return g / (a * a + 1)


class Asinh(Op):
    """asinh x; d/dx = 1/√(x² + 1)."""

    saves = (0,)

    @staticmethod
    def forward(ctx, a):
        return xp_of(a).arcsinh(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return g * (a * a + 1).rsqrt()


class Acosh(Op):
    """acosh x; d/dx = 1/√(x² - 1)."""

    saves = (0,)

    @staticmethod
    def forward(ctx, a):
        return xp_of(a).arccosh(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return g * (a * a - 1).rsqrt()


class Atanh(Op):
    """atanh x; d/dx = 1/(1 - x²)."""

    saves = (0,)

    @staticmethod
    def forward(ctx, a):
        return xp_of(a).arctanh(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return g / (1 - a * a)


class LogBase(Op):
    """log2 x or log10 x (``base``); d/dx = 1/(x ln base)."""

    saves = (0,)

    @staticmethod
    def forward(ctx, a, base):
        ctx.ln = math.log(base)
        return (xp_of(a).log2 if base == 2 else xp_of(a).log10)(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return g / (a * ctx.ln)


class Exp2(Op):
    """2^x; d/dx = 2^x ln 2 = out · ln 2."""

    saves = ("out",)

    @staticmethod
    def forward(ctx, a):
        return xp_of(a).exp2(a)

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return g * out * math.log(2)


# ---------------------------------------------------------------- more binary maths (issue #14)


def _int_quotient(a, b, floor):
    """a / b rounded towards -inf (``floor``) or towards 0, for integer arrays (exact: no float detour)."""
    q = a // b  # NumPy's integer // floors, as Python's
    if floor:
        return q
    fix = (a % b != 0) & ((a < 0) != (b < 0))  # floor went one below the truncated quotient
    return q + fix.astype(q.dtype)


class DivRounded(Op):
    """a / b rounded (``mode`` "trunc" or "floor"): piecewise constant, so both gradients are zero (PyTorch)."""

    @staticmethod
    def forward(ctx, a, b, mode):
        xp = xp_of(a)
        if a.dtype.kind in "iub":
            if a.dtype.kind == "b":
                a, b = a.astype(np.int64), b.astype(np.int64)
            return _int_quotient(a, b, mode == "floor")
        if mode == "floor":
            return xp.floor_divide(a, b).astype(a.dtype, copy=False)  # Python's floor division (fmod-based)
        return xp.trunc(a / b).astype(a.dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        return g * 0, g * 0


class Fmod(Op):
    """fmod(a, b) = a - trunc(a/b)·b (sign of a, as C's fmod); d/da = 1, d/db = -trunc(a/b)."""

    saves = (0, 1)

    @staticmethod
    def forward(ctx, a, b):
        return xp_of(a).fmod(a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        n = ctx.needs_input_grad
        return (g if n[0] else None), (-g * DivRounded.apply(a, b, mode="trunc") if n[1] else None)


class Remainder(Op):
    """remainder(a, b) = a - floor(a/b)·b (sign of b, as Python's %); d/da = 1, d/db = -floor(a/b)."""

    saves = (0, 1)

    @staticmethod
    def forward(ctx, a, b):
        return xp_of(a).remainder(a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        n = ctx.needs_input_grad
        return (g if n[0] else None), (-g * DivRounded.apply(a, b, mode="floor") if n[1] else None)


class Copysign(Op):
    """|a| with the sign (bit) of b; d/da = out/a (±1; 0 where a == 0, as PyTorch), d/db = 0."""

    saves = (0, "out")

    @staticmethod
    def forward(ctx, a, b):
        return xp_of(a).copysign(a, b)

    @staticmethod
    def backward(ctx, g):
        a, out = ctx.saved_tensors
        zero = a._data == 0
        n = ctx.needs_input_grad
        return ((g * (out / a.masked_fill(zero, 1))).masked_fill(zero, 0) if n[0] else None), (g * 0 if n[1] else None)


class LogAddExp(Op):
    """log(eᵃ + eᵇ) without overflow; d/da = e^(a - out), d/db = e^(b - out)."""

    saves = (0, 1, "out")

    @staticmethod
    def forward(ctx, a, b):
        return xp_of(a).logaddexp(a, b)

    @staticmethod
    def backward(ctx, g):
        a, b, out = ctx.saved_tensors
        n = ctx.needs_input_grad
        return (g * (a - out).exp() if n[0] else None), (g * (b - out).exp() if n[1] else None)


class Hypot(Op):
    """√(a² + b²) without overflow; d/da = a/out, d/db = b/out (NaN at (0, 0), as PyTorch)."""

    saves = (0, 1, "out")

    @staticmethod
    def forward(ctx, a, b):
        return xp_of(a).hypot(a, b)

    @staticmethod
    def backward(ctx, g):
        a, b, out = ctx.saved_tensors
        n = ctx.needs_input_grad
        return (g * a / out if n[0] else None), (g * b / out if n[1] else None)
