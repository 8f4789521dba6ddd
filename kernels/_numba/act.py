"""Compiled activations: forward, derivative and fused backward of every activation, erf, bias + activation.

One loop per call reads each input once (NumPy's reference path takes 5-26 passes per element). :func:`kernel`
takes 2-D C-contiguous float32 or float64 arrays (one compiled signature per dtype), an operation and an
activation code from :data:`conch.kernels._act_names.ACT_CODES`; ``param`` is leaky_relu's slope or elu's
alpha. :func:`run` calls it on any arrays, split over the CPU pool::

    y = run(FORWARD, (z,), 4, cost=2)          # gelu(z), exact: 0.5 z (1 + erf(z/√2))
    dz = run(BACKWARD, (z, dy), 4, cost=5)     # dy · gelu'(z) = dy (Φ(z) + z φ(z))

float32 is computed in float32 with branch-free approximations that the compiler vectorizes (Numba has no
vector exp/tanh here: libm's scalar calls would cost ~3 ns an element):

- erf: Eigen's/XLA's rational x·P(x²)/Q(x²) on x clamped to [-4, 4] (|error| < 5e-7, as kernels/_erf.py);
- exp: Cephes' expf: x = k ln2 + r, |r| <= ln2/2, e^r by a degree-7 polynomial, 2^k added to its exponent
  bits (results down to the smallest subnormal within ~1 ulp, inf above 88.72);
- tanh: Cephes' tanhf: an odd polynomial for |x| < 0.625, 1 - 2/(e^{2|x|} + 1) above (~2 ulps; exactly ±1
  where tanh rounds to ±1, so 1 - tanh² is 0 there and gelu_tanh's tails stay 0);
- expm1 (elu): a Taylor polynomial for |x| < 0.34, where e^x - 1 would cancel, e^x - 1 beyond.

float64 uses libm (``math.erf``, ``math.exp``, ``math.tanh``, ``math.expm1``): float64-accurate, scalar.
NaN propagates through every activation; relu's backward selects, so an inf or NaN upstream gradient where the
unit is off gives +0 (PyTorch's threshold_backward). Every operation is elementwise, and the vectorized body
and the scalar tail of a loop compute the same bits: any split of the range between threads gives the same
result.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic, overload

from .. import _threads
from . import njit

# The codes of kernels/_act_names.ACT_CODES (that module's dict is not a compile-time constant for Numba).
NONE, RELU, LEAKY_RELU, ELU, GELU, GELU_TANH, SILU, TANH, SIGMOID = range(9)

_SQRT1_2 = 0.7071067811865476  # 1/√2
_INV_SQRT_2PI = 0.3989422804014327  # 1/√(2π)
_SQRT_2_OVER_PI = 0.7978845608028654  # √(2/π)
_GELU_C = 0.044715

_F32 = np.float32


# --------------------------------------------------------------------------------------------------------------
# float32 scalar functions (branch-free, so the loops that call them vectorize)
# --------------------------------------------------------------------------------------------------------------


@intrinsic
def _f32_from_bits(typingctx, n):
    """The float32 whose bit pattern is the low 32 bits of integer ``n`` (an LLVM bitcast: vectorizes)."""
    if not isinstance(n, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        if n.bitwidth > 32:
            v = builder.trunc(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(n), codegen


@intrinsic
def _bits(typingctx, x):
    """The bit pattern of float32 ``x`` as an int32 (an LLVM bitcast)."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(x), codegen


@intrinsic
def _sel(typingctx, cond, x, y):
    """``x if cond else y`` as one LLVM select: no branch, so loops vectorize and inlining leaves no phi."""
    if not isinstance(cond, types.Boolean) or x != y:
        return None

    def codegen(context, builder, sig, args):
        return builder.select(args[0], args[1], args[2])

    return x(cond, x, y), codegen


@njit(inline="always")
def _exp_reduced32(x):
    """(t, e^r) for x = k ln2 + r, |r| <= ln2/2 (Cephes expf): t = x·log2(e) + 1.5·2^23, whose low mantissa bits
    hold k (the rounding trick: no float-to-int conversion), and e^r by its degree-7 polynomial."""
    t = x * _F32(1.44269504088896341) + _F32(12582912.0)
    k = t - _F32(12582912.0)
    r = x - k * _F32(0.693359375)  # ln 2 in two parts (Cody-Waite): k·C1 is exact
    r = r - k * _F32(-2.12194440e-4)
    p = _F32(1.9875691500e-4)
    p = p * r + _F32(1.3981999507e-3)
    p = p * r + _F32(8.3334519073e-3)
    p = p * r + _F32(4.1665795894e-2)
    p = p * r + _F32(1.6666665459e-1)
    p = p * r + _F32(5.0000001201e-1)
    return t, p * (r * r) + r + _F32(1.0)


@njit(inline="always")
def _exp32(x):
    # e^x = 2^k e^r: 2^k scales p = e^r by an integer add to p's exponent bits (p in [0.7, 1.42], so exact for k
    # in [-125, 128]); below that, k + 64 and a product by 2^-64 round subnormals once.
    xc = _sel(x > _F32(88.72284), _F32(88.72284), x)
    xc = _sel(xc < _F32(-104.0), _F32(-104.0), xc)
    t, p = _exp_reduced32(xc)
    small = t < _F32(12582912.0 - 125.0)  # k < -125
    n = _bits(t) - np.int32(0x4B400000) + _sel(small, np.int32(64), np.int32(0))
    y = _f32_from_bits(_bits(p) + (n << 23))
    y = _sel(small, y * _F32(5.421010862427522e-20), y)  # 2^-64
    y = _sel(x > _F32(88.72284), _F32(np.inf), y)
    return _sel(x != x, x, y)


@njit(inline="always")
def _exp_neg32(x):
    # _exp32 for x <= 0 that is not NaN, with results below 2^-126 flushed to 0: ten operations fewer (gelu's
    # derivative, where e^(-z²/2) < 2^-126 only where |z| > 13.2 and the term is below 1e-36 next to Φ(z))
    xc = _sel(x < _F32(-87.33655), _F32(-87.33655), x)
    t, p = _exp_reduced32(xc)
    y = _f32_from_bits(_bits(p) + ((_bits(t) - np.int32(0x4B400000)) << 23))
    return _sel(x < _F32(-87.33655), _F32(0.0), y)


@njit(inline="always")
def _tanh32(x):
    # Cephes tanhf: odd polynomial below 0.625 (no cancellation near 0), 1 - 2/(e^{2|x|} + 1) above
    a = abs(x)
    z = x * x
    p = _F32(-5.70498872745e-3)
    p = p * z + _F32(2.06390887954e-2)
    p = p * z + _F32(-5.37397155531e-2)
    p = p * z + _F32(1.33314422036e-1)
    p = p * z + _F32(-3.33332819422e-1)
    small = p * z * x + x
    big = _F32(1.0) - _F32(2.0) / (_exp32(a + a) + _F32(1.0))
    return _sel(a < _F32(0.625), small, _sel(x < 0, -big, big))


@njit(inline="always")
def _erf32(x):
    # Eigen's/XLA's rational erf (kernels/_erf.py has the same coefficients for the NumPy path)
    x = _sel(x > _F32(4.0), _F32(4.0), x)
    x = _sel(x < _F32(-4.0), _F32(-4.0), x)
    x2 = x * x
    p = _F32(-2.72614225801306e-10)
    p = p * x2 + _F32(2.77068142495902e-08)
    p = p * x2 + _F32(-2.10102402082508e-06)
    p = p * x2 + _F32(-5.69250639462346e-05)
    p = p * x2 + _F32(-7.34990630326855e-04)
    p = p * x2 + _F32(-2.95459980854025e-03)
    p = p * x2 + _F32(-1.60960333262415e-02)
    q = _F32(-1.45660718464996e-05)
    q = q * x2 + _F32(-2.13374055278905e-04)
    q = q * x2 + _F32(-1.68282697438203e-03)
    q = q * x2 + _F32(-7.37332916720468e-03)
    q = q * x2 + _F32(-1.42647390514189e-02)
    return x * p / q


@njit(inline="always")
def _expm1_32(x):
    # e^x - 1: Taylor to x^8/8! for |x| < 0.34 (the next term is below 2^-25 x), where e^x - 1 would cancel
    q = _F32(2.48015873e-05)
    q = q * x + _F32(1.98412698e-04)
    q = q * x + _F32(1.38888889e-03)
    q = q * x + _F32(8.33333333e-03)
    q = q * x + _F32(4.16666667e-02)
    q = q * x + _F32(1.66666667e-01)
    q = q * x + _F32(0.5)
    small = q * (x * x) + x
    return _sel(abs(x) < _F32(0.34), small, _exp32(x) - _F32(1.0))


# --------------------------------------------------------------------------------------------------------------
# dtype-generic scalars: float32 above, libm for float64 (resolved at compile time, per signature)
# --------------------------------------------------------------------------------------------------------------


def _exp(x):
    """e^x in x's float type."""


def _tanh(x):
    """tanh(x) in x's float type."""


def _erf(x):
    """erf(x) in x's float type."""


def _expm1(x):
    """e^x - 1 in x's float type."""


def _exp_neg(x):
    """e^x for x <= 0 (not NaN) in x's float type; float32 flushes results below 2^-126 to 0."""


def _c(x, v):
    """The constant ``v`` in the float type of x (a scalar or an array): Numba types a Python float as float64."""


def _by_type(generic, f32, f64):
    @overload(generic, inline="always")
    def _impl(x):
        return f32 if x == types.float32 else f64


_by_type(_exp, lambda x: _exp32(x), lambda x: math.exp(x))
_by_type(_tanh, lambda x: _tanh32(x), lambda x: math.tanh(x))
_by_type(_erf, lambda x: _erf32(x), lambda x: math.erf(x))
_by_type(_expm1, lambda x: _expm1_32(x), lambda x: math.expm1(x))
_by_type(_exp_neg, lambda x: _exp_neg32(x), lambda x: math.exp(x))


@overload(_c)
def _c_impl(x, v):
    if getattr(x, "dtype", x) == types.float32:  # a float32 scalar or array
        return lambda x, v: np.float32(v)
    return lambda x, v: np.float64(v)


# --------------------------------------------------------------------------------------------------------------
# One element: f(z, p) and f'(z, p) per activation (z: the pre-activation; p: slope or alpha in z's type)
# --------------------------------------------------------------------------------------------------------------


@njit(inline="always")
def _sigmoid(z):
    # e = exp(-|z|) never overflows; e/(1+e) keeps the left tail's relative precision (as the NumPy path)
    one = _c(z, 1.0)
    e = _exp(-abs(z))
    return _sel(z >= 0, one / (one + e), e / (one + e))


@njit(inline="always")
def _gelu_tanh_inner(z):
    return _tanh((_c(z, _GELU_C) * (z * z) + _c(z, 1.0)) * z * _c(z, _SQRT_2_OVER_PI))


@njit(inline="always")
def _relu(z, p):
    return _sel(z <= 0, _c(z, 0.0), z)  # maximum(z, 0): NaN stays, -0.0 gives +0.0


@njit(inline="always")
def _relu_d(z, p):
    return _sel(z > 0, _c(z, 1.0), _c(z, 0.0))


@njit(inline="always")
def _leaky(z, p):
    return _sel(z > 0, z, z * p)


@njit(inline="always")
def _leaky_d(z, p):
    return _sel(z > 0, _c(z, 1.0), p)


@njit(inline="always")
def _elu(z, p):
    return _sel(z > 0, z, p * _expm1(z))


@njit(inline="always")
def _elu_d(z, p):
    return _sel(z > 0, _c(z, 1.0), p * _exp(z))


@njit(inline="always")
def _gelu(z, p):
    return (_erf(z * _c(z, _SQRT1_2)) + _c(z, 1.0)) * z * _c(z, 0.5)


@njit(inline="always")
def _gelu_d(z, p):  # Φ(z) + z φ(z)
    cdf = (_erf(z * _c(z, _SQRT1_2)) + _c(z, 1.0)) * _c(z, 0.5)
    return cdf + _exp_neg(z * z * _c(z, -0.5)) * z * _c(z, _INV_SQRT_2PI)  # (a NaN z: cdf is NaN)


@njit(inline="always")
def _gelu_tanh(z, p):
    return (_gelu_tanh_inner(z) + _c(z, 1.0)) * z * _c(z, 0.5)


@njit(inline="always")
def _gelu_tanh_d(z, p):  # ½(1 + t) + ½ z (1 - t²) √(2/π) (1 + 3c z²)
    one = _c(z, 1.0)
    t = _gelu_tanh_inner(z)
    d = (one - t * t) * z * _c(z, 0.5 * _SQRT_2_OVER_PI) * (z * z * _c(z, 3 * _GELU_C) + one)
    return (t + one) * _c(z, 0.5) + d


@njit(inline="always")
def _silu(z, p):
    return z * _sigmoid(z)


@njit(inline="always")
def _silu_d(z, p):
    s = _sigmoid(z)
    return s * (_c(z, 1.0) + z * (_c(z, 1.0) - s))


@njit(inline="always")
def _tanh_f(z, p):
    return _tanh(z)


@njit(inline="always")
def _tanh_d(z, p):
    t = _tanh(z)
    return _c(z, 1.0) - t * t


@njit(inline="always")
def _tanh_d_out(y, p):
    return _c(y, 1.0) - y * y


@njit(inline="always")
def _sigmoid_f(z, p):
    return _sigmoid(z)


@njit(inline="always")
def _sigmoid_d(z, p):
    s = _sigmoid(z)
    return s * (_c(z, 1.0) - s)


@njit(inline="always")
def _sigmoid_d_out(y, p):
    return y * (_c(y, 1.0) - y)


@njit(inline="always")
def _identity(z, p):
    return z


# --------------------------------------------------------------------------------------------------------------
# The kernel: every loop runs over 2-D C-contiguous arrays (rows, n) (a flat array is one row). The loops take
# the element functions as arguments and are inlined where they are called with constants: Numba compiles one
# loop per (operation, activation), the element function inlined and the loop vectorized; the branches on ``op``
# and ``code`` run once per call. One signature per dtype.
# --------------------------------------------------------------------------------------------------------------

#: Operations of :func:`kernel`.
FORWARD, GRAD, BACKWARD, BACKWARD_OUT, BIAS_FORWARD, ERF, BIAS_INPLACE, BIAS_DERIV = range(8)


@njit(inline="always")
def _map(fn, z, out, p):
    zf, of = z.reshape(z.size), out.reshape(out.size)  # flat views: one simple loop vectorizes best
    for i in range(zf.size):
        of[i] = fn(zf[i], p)


@njit(inline="always")
def _run_fwd(op, f, df, a, b, out, p):
    # the functions are constants here: each caller compiles its own three loops
    if op == FORWARD:
        _map(f, a, out, p)
    elif op == GRAD:
        _map(df, a, out, p)
    elif op == BIAS_INPLACE:  # a = f(a + b): one store per element (the two stores of BIAS_FORWARD to one
        # address make LLVM's runtime alias check fail, and the loop ran scalar: 4-10x slower)
        for r in range(a.shape[0]):
            for j in range(a.shape[1]):
                a[r, j] = f(a[r, j] + b[0, j], p)
    elif op == BIAS_DERIV:  # out = f(a + b) and a = f'(a + b): the backward's dz = g · a is then one product
        # (gelu_tanh's f and f' share their tanh, computed once in the inlined loop body)
        for r in range(a.shape[0]):
            for j in range(a.shape[1]):
                v = a[r, j] + b[0, j]
                out[r, j] = f(v, p)
                a[r, j] = df(v, p)
    else:  # BIAS_FORWARD, b: the bias as one row; a += b in place, out = f(a) (out is another array)
        for r in range(a.shape[0]):
            for j in range(a.shape[1]):
                v = a[r, j] + b[0, j]
                a[r, j] = v
                out[r, j] = f(v, p)


@njit(inline="always")
def _run_bwd(op, c, df, df_out, a, b, out, p):
    af, bf, of = a.reshape(a.size), b.reshape(b.size), out.reshape(out.size)
    if c == RELU:  # select, not multiply: an inf or NaN gradient where the unit is off gives +0
        zero = _c(p, 0.0)
        for i in range(af.size):
            of[i] = _sel(af[i] > 0, bf[i], zero)
    elif op == BACKWARD_OUT:  # a: the output y = f(z)
        for i in range(af.size):
            of[i] = df_out(af[i], p) * bf[i]
    else:  # BACKWARD, a: the pre-activation z
        for i in range(af.size):
            of[i] = df(af[i], p) * bf[i]


def kernel(op, a, b, out, code, param):
    """One elementwise pass over 2-D C-contiguous arrays of one dtype (float32 or float64), for activation
    ``code`` (:data:`conch.kernels._act_names.ACT_CODES`) with ``param`` (leaky_relu's slope, elu's alpha):

    - FORWARD: out = f(a); GRAD: out = f'(a) (b unused);
    - BACKWARD: out = b · f'(a), a = z; BACKWARD_OUT: out = b · f'(z) from a = y = f(z) (relu, tanh, sigmoid);
      relu selects, out = b where a > 0, else +0;
    - BIAS_FORWARD: a += b in place (b: the bias, shape (1, n)), out = f(a) (out another array);
      BIAS_INPLACE: a = f(a + b) (out unused); BIAS_DERIV: out = f(a + b) and a = f'(a + b) in place;
    - ERF: out = erf(a) (code unused).

    Each activation has its own compiled functions, one for the forward operations and one for the backward
    ones, so a process compiles only what it runs: every loop is a vectorized, inlined body that costs ~0.2 s
    to compile, and one function for all 9 activations x 5 operations took ~11 s on its first call.
    """
    if op == ERF:
        _erf_kernel(a, out)
    elif op == BACKWARD or op == BACKWARD_OUT:
        _BACKWARD[code](op, a, b, out, param)
    else:
        _FORWARD[code](op, a, b, out, param)


@njit
def _erf_kernel(a, out):
    _map(_erf_el, a, out, _c(a, 0.0))


# One forward (FORWARD, GRAD, BIAS_FORWARD, BIAS_INPLACE, BIAS_DERIV) and one backward (BACKWARD, BACKWARD_OUT)
# function per activation: Numba caches module-level functions only (a factory's closures recompile in every
# process).
@njit
def _relu_fwd(op, a, b, out, param):
    _run_fwd(op, _relu, _relu_d, a, b, out, _c(a, param))


@njit
def _relu_bwd(op, a, b, out, param):
    _run_bwd(op, RELU, _relu_d, _relu_d, a, b, out, _c(a, param))


@njit
def _leaky_fwd(op, a, b, out, param):
    _run_fwd(op, _leaky, _leaky_d, a, b, out, _c(a, param))


@njit
def _leaky_bwd(op, a, b, out, param):
    _run_bwd(op, LEAKY_RELU, _leaky_d, _leaky_d, a, b, out, _c(a, param))


@njit
def _elu_fwd(op, a, b, out, param):
    _run_fwd(op, _elu, _elu_d, a, b, out, _c(a, param))


@njit
def _elu_bwd(op, a, b, out, param):
    _run_bwd(op, ELU, _elu_d, _elu_d, a, b, out, _c(a, param))


@njit
def _gelu_fwd(op, a, b, out, param):
    _run_fwd(op, _gelu, _gelu_d, a, b, out, _c(a, param))


@njit
def _gelu_bwd(op, a, b, out, param):
    _run_bwd(op, GELU, _gelu_d, _gelu_d, a, b, out, _c(a, param))


@njit
def _gelu_tanh_fwd(op, a, b, out, param):
    _run_fwd(op, _gelu_tanh, _gelu_tanh_d, a, b, out, _c(a, param))


@njit
def _gelu_tanh_bwd(op, a, b, out, param):
    _run_bwd(op, GELU_TANH, _gelu_tanh_d, _gelu_tanh_d, a, b, out, _c(a, param))


@njit
def _silu_fwd(op, a, b, out, param):
    _run_fwd(op, _silu, _silu_d, a, b, out, _c(a, param))


@njit
def _silu_bwd(op, a, b, out, param):
    _run_bwd(op, SILU, _silu_d, _silu_d, a, b, out, _c(a, param))


@njit
def _tanh_fwd(op, a, b, out, param):
    _run_fwd(op, _tanh_f, _tanh_d, a, b, out, _c(a, param))


@njit
def _tanh_bwd(op, a, b, out, param):
    _run_bwd(op, TANH, _tanh_d, _tanh_d_out, a, b, out, _c(a, param))


@njit
def _sigmoid_fwd(op, a, b, out, param):
    _run_fwd(op, _sigmoid_f, _sigmoid_d, a, b, out, _c(a, param))


@njit
def _sigmoid_bwd(op, a, b, out, param):
    _run_bwd(op, SIGMOID, _sigmoid_d, _sigmoid_d_out, a, b, out, _c(a, param))


@njit
def _none_fwd(op, a, b, out, param):
    _run_fwd(op, _identity, _one, a, b, out, _c(a, param))


@njit
def _none_bwd(op, a, b, out, param):
    _run_bwd(op, NONE, _one, _one, a, b, out, _c(a, param))


@njit(inline="always")
def _erf_el(x, p):
    return _erf(x)


@njit(inline="always")
def _one(x, p):
    return _c(x, 1.0)


_FORWARD = (_none_fwd, _relu_fwd, _leaky_fwd, _elu_fwd, _gelu_fwd, _gelu_tanh_fwd, _silu_fwd, _tanh_fwd, _sigmoid_fwd)
_BACKWARD = (_none_bwd, _relu_bwd, _leaky_bwd, _elu_bwd, _gelu_bwd, _gelu_tanh_bwd, _silu_bwd, _tanh_bwd, _sigmoid_bwd)
#: Every compiled function of this module (tests count their signatures).
DISPATCHERS = (_erf_kernel, *_FORWARD, *_BACKWARD)


# --------------------------------------------------------------------------------------------------------------
# Drivers: flatten, allocate, split over the CPU pool (kernels/_threads.py)
# --------------------------------------------------------------------------------------------------------------


def _plain(x):
    """x as a C-contiguous, writeable array (copied once if not): a read-only or strided array would make Numba
    compile another signature of :func:`kernel` (seconds), where a copy costs one pass."""
    x = np.ascontiguousarray(x)
    return x if x.flags.writeable else x.copy()


def run(op, inputs, code=0, param=0.0, *, cost, out=None):
    """:func:`kernel` ``op`` on flat views of ``inputs`` (one or two arrays of one dtype and size: a, then b),
    in contiguous chunks over the pool; returns ``out`` (a fresh array shaped like the first input, or the given
    C-contiguous one). Non-contiguous inputs are copied once. ``cost``: the kernel's time per element in NumPy
    passes (the pool's size threshold). Example: ``run(FORWARD, (z,), 4, cost=2)`` is gelu(z).
    """
    flat = [_plain(x).reshape(1, -1) for x in inputs]
    a = flat[0]
    b = flat[1] if len(flat) > 1 else a
    if out is None:
        out = np.empty(inputs[0].shape, dtype=a.dtype)
    of = out.reshape(1, -1)
    n = of.shape[1]
    if n * cost < _threads.MIN_PARALLEL:  # one thread: no chunk views, no pool
        kernel(op, a, b, of, code, param)
    elif n:
        _threads.parallel_for(n, lambda i, j: kernel(op, a[:, i:j], b[:, i:j], of[:, i:j], code, param), work=n * cost)
    return out


def bias_forward(z, bias, code, param, *, cost, out, deriv=False):
    """z (rows, n) += bias (n,) in place and out = f(z), rows split over the pool (out may be z; all three
    C-contiguous, of one dtype). ``deriv``: z becomes f'(z + bias) instead (out another array)."""
    rows = z.shape[0]
    b = _plain(bias).reshape(1, -1)
    if rows and z.shape[1]:
        op = BIAS_INPLACE if np.may_share_memory(out, z) else BIAS_DERIV if deriv else BIAS_FORWARD
        body = lambda i, j: kernel(op, z[i:j], b, out[i:j], code, param)  # noqa: E731
        _threads.parallel_for(rows, body, work=z.size * cost, align=1)
    return out
