"""Elementwise activations in one place: fp32 Triton helpers (forward, derivative), name codes, xp references.

Every activation ``f`` is written twice, once as ``@triton.jit`` helpers that kernels inline (fp32 in, fp32
out; in kernels/_triton/_act.py, imported with the first Triton launch) and once against the array API
(``act_ref``/``act_grad_ref``, NumPy or CuPy, here). Kernels select one with a
``tl.constexpr`` integer code (:data:`ACT_CODES`), so unused activations cost nothing::

    z = apply_act(acc, ACT, param)          # inside a kernel; ACT: tl.constexpr
    code = act_code("gelu")                 # in a launcher, validates the name

``param`` is the activation's one scalar: the negative slope of ``leaky_relu`` and ``alpha`` of ``elu``
(ignored by the others). Derivatives are with respect to the pre-activation ``z``; for ``relu``, ``tanh`` and
``sigmoid`` the derivative can also be had from the output ``y`` (``act_grad_out``), which lets a forward pass
save ``y`` (that exists anyway) instead of ``z``.
"""

from __future__ import annotations

import numpy as np

from . import _jit
from ._act_names import ACT_CODES, ACTIVATIONS, act_code, act_name  # noqa: F401  (re-exported)
from ._erf import erf as _erf
from ._launch import xp_of
from ._threads import elementwise

#: Activations whose derivative is a function of the output y alone: their backward saves y, not z.
FROM_OUTPUT = frozenset({"relu", "tanh", "sigmoid"})

_SQRT1_2 = 0.7071067811865476  # 1/sqrt(2)
_INV_SQRT_2PI = 0.3989422804014327  # 1/sqrt(2*pi)
_SQRT_2_OVER_PI = 0.7978845608028654  # sqrt(2/pi)
_GELU_C = 0.044715


# --------------------------------------------------------------------------------------------------------------
# Compiled CPU kernels (kernels/_numba/act.py): one pass per call where Numba is on, for NumPy float32/float64
# --------------------------------------------------------------------------------------------------------------

_JIT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

#: Time per element of the compiled forward and derivative, in NumPy passes (the pool's size threshold; measured
#: on 2**20 float32, 1 thread: gelu's forward takes ~2.2 passes' time, its fused backward ~5).
_JIT_PASSES = {"relu": (1, 2), "leaky_relu": (2, 2), "elu": (3, 3), "gelu": (2, 5), "gelu_tanh": (6, 6),
               "silu": (3, 4), "tanh": (4, 4), "sigmoid": (3, 3)}  # fmt: skip


def compiled(*arrays) -> bool:
    """True when the compiled kernels take ``arrays``: Numba on, NumPy arrays of one dtype, float32 or float64
    (CuPy and the simulated GPU's arrays, half precision and mixed dtypes keep the reference paths)."""
    if not _jit.enabled():
        return False
    dt = arrays[0].dtype
    return dt in _JIT_DTYPES and all(isinstance(a, np.ndarray) and a.dtype == dt for a in arrays)


def jit_passes(name, backward=False):
    """NumPy passes per element that the compiled forward (or derivative) of ``name`` costs."""
    return _JIT_PASSES.get(name, (1, 1))[1 if backward else 0]


def _jit_act(op, arrays, name, param):
    """The compiled kernel's operation ``op`` ("FORWARD", "GRAD", "BACKWARD", "BACKWARD_OUT") of ``name``."""
    k = _jit.family("act")
    cost = jit_passes(name, op != "FORWARD")
    return k.run(getattr(k, op), arrays, ACT_CODES[name], float(param), cost=cost)


# --------------------------------------------------------------------------------------------------------------
# Reference versions against the array API (NumPy or CuPy), computed in the dtype of z (fp32 or fp64).
# --------------------------------------------------------------------------------------------------------------


def _sigmoid_ref(z, xp):
    # sigma(z) = 1/(1+e) for z >= 0 and e/(1+e) for z < 0, e = exp(-|z|): never overflows, and keeps full
    # relative precision in the left tail (0.5*tanh(z/2)+0.5 rounds sigma(-20) to 0 in float32)
    e = xp.exp(-abs(z))
    return xp.where(z >= 0, 1 / (1 + e), e / (1 + e)).astype(z.dtype, copy=False)


def _relu_mask(z):
    # ``(z > 0)`` as 0/1 in z's dtype. Arithmetic on masks, not xp.where: NumPy's where branches per element
    # and a random sign pattern mispredicts half the time (~10x slower than a multiply).
    return (z > 0).astype(z.dtype)


#: Unsigned integer of each float width: relu_select masks d's bits with them.
_UINT_OF = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def relu_select(s, d):
    """relu's backward, ``where(s > 0, d, 0)`` (s: z or the output y, same sign), as PyTorch's threshold_backward:
    a NaN or inf in d where the unit is off gives +0, not the NaN of d * 0. On NumPy a bitwise AND of d's bits
    with an all-ones/all-zeros mask: the same bits as where, without where's per-element branch, which a random
    sign pattern mispredicts half the time (~10x slower on (64, 16, 28, 28) float32). Compiled: one pass."""
    if s.shape == d.shape and compiled(s, d):
        return _jit_act("BACKWARD", (s, d), "relu", 0.0)
    if type(d) is np.ndarray and type(s) is np.ndarray and d.dtype.itemsize in _UINT_OF and s.shape == d.shape:
        u = _UINT_OF[d.dtype.itemsize]
        mask = (s > 0).astype(u)
        np.negative(mask, out=mask)  # 1 -> all ones (unsigned wrap-around), 0 -> 0
        np.bitwise_and(mask, d.view(u), out=mask)
        return mask.view(d.dtype)
    xp = xp_of(d)
    return xp.where(s > 0, d, d.dtype.type(0))


def _gelu_tanh_inner(z, z2, xp):
    """tanh(√(2/π)(z + c z³)) from z and z² (fresh array)."""
    u = z2 * _GELU_C
    u += 1
    u *= z
    u *= _SQRT_2_OVER_PI
    return xp.tanh(u, out=u)


#: NumPy arrays longer than this run the multi-pass activations block by block (see :func:`_blockwise`).
_BLOCK = 65536

#: Elementwise passes per element of each activation's forward and derivative (for the pool's size threshold).
_PASSES = {"leaky_relu": 3, "elu": 5, "gelu": 26, "gelu_tanh": 9, "silu": 8, "tanh": 1, "sigmoid": 6}


def act_passes(name):
    """Elementwise passes per element of activation ``name``'s forward or derivative (the pool's threshold)."""
    return _PASSES.get(name, 4)


def _blockwise(fn, z, name, param):
    """``fn(z, name, param)`` for an elementwise ``fn``, on contiguous blocks of _BLOCK elements over the pool.

    Each block's ~10-25 passes then stay in the L2 cache and reuse the same few small temporaries, where
    whole-array temporaries of a large activation (megabytes each) go to fresh, page-faulting memory: about
    twice as fast on the CPU for gelu at 2**19 elements. Blocks are split between the pool's threads
    (:mod:`conch.kernels._threads`); the result is the same bit for bit on any number of threads. NumPy only
    (a GPU wants one launch per pass).
    """
    return elementwise(fn, z, name, param, block=_BLOCK, work=z.size * act_passes(name))


def _big_numpy(z, name):
    return name not in ("none", "relu") and z.size > _BLOCK and isinstance(z, np.ndarray)


def act_ref(z, name, param=0.01):
    """f(z) on an array (fp32/fp64), for any name :func:`act_name` accepts; z is never modified.

    The temporaries are updated in place (one fresh array per term, not per operation) and large NumPy
    arrays go block by block: these references are conch's CPU path, where every elementwise pass over a
    large array costs as much as a small matmul.
    """
    name = act_name(name)
    if name not in ("none", "relu", "tanh") and compiled(z):  # NumPy's maximum and (SIMD) tanh: one pass already
        return _jit_act("FORWARD", (z,), name, param)
    if z.ndim == 0:  # NumPy turns 0-d results into scalars, which the in-place updates (out=) refuse
        return act_ref(z.reshape(1), name, param).reshape(())
    if _big_numpy(z, name):
        return _blockwise(_act, z, name, param)
    return _act(z, name, param)


def act_grad_ref(z, name, param=0.01):
    """f'(z) on an array (fp32/fp64), the derivative with respect to the pre-activation z (a fresh array)."""
    name = act_name(name)
    if name != "none" and compiled(z):
        return _jit_act("GRAD", (z,), name, param)
    if z.ndim == 0:  # as in act_ref: 0-d arithmetic gives NumPy scalars, which out= refuses
        return act_grad_ref(z.reshape(1), name, param).reshape(())
    if _big_numpy(z, name):
        return _blockwise(_act_grad, z, name, param)
    return _act_grad(z, name, param)


def _act(z, name, param):
    xp = xp_of(z)
    if name == "none":
        return z
    if name == "relu":
        # maximum propagates NaN, as PyTorch's relu and the kernel do; branch-free
        return xp.maximum(z, xp.zeros((), dtype=z.dtype))
    if name == "leaky_relu":
        return xp.where(z > 0, z, z * param).astype(z.dtype, copy=False)
    if name == "elu":
        return xp.where(z > 0, z, param * xp.expm1(xp.minimum(z, 0))).astype(z.dtype, copy=False)
    if name == "gelu":
        y = _erf(z * _SQRT1_2)
        y += 1
        y *= z
        y *= 0.5
        return y
    if name == "gelu_tanh":
        y = _gelu_tanh_inner(z, z * z, xp)
        y += 1
        y *= z
        y *= 0.5
        return y
    if name == "silu":
        return z * _sigmoid_ref(z, xp)
    if name == "tanh":
        return xp.tanh(z)
    return _sigmoid_ref(z, xp)  # sigmoid


def _act_grad(z, name, param):
    xp = xp_of(z)
    if name == "none":
        return xp.ones_like(z)
    if name == "relu":
        return _relu_mask(z)
    if name == "leaky_relu":
        return xp.where(z > 0, xp.ones_like(z), param).astype(z.dtype, copy=False)  # 1 or slope
    if name == "elu":
        return xp.where(z > 0, xp.ones_like(z), param * xp.exp(xp.minimum(z, 0))).astype(z.dtype, copy=False)
    if name == "gelu":
        # Phi(z) + z phi(z)
        g = _erf(z * _SQRT1_2)
        g += 1
        g *= 0.5
        e = z * z
        e *= -0.5
        xp.exp(e, out=e)
        e *= z
        e *= _INV_SQRT_2PI
        g += e
        return g
    if name == "gelu_tanh":
        # 0.5 (1 + t) + 0.5 z (1 - t^2) sqrt(2/pi) (1 + 3c z^2)
        z2 = z * z
        t = _gelu_tanh_inner(z, z2, xp)
        d = t * t
        xp.subtract(1, d, out=d)
        d *= z
        d *= 0.5 * _SQRT_2_OVER_PI
        z2 *= 3 * _GELU_C
        z2 += 1
        d *= z2
        t += 1
        t *= 0.5
        t += d
        return t
    if name == "silu":
        s = _sigmoid_ref(z, xp)
        return s * (1 + z * (1 - s))  # sigma (1 + z (1 - sigma))
    if name == "tanh":
        t = xp.tanh(z)
        return 1 - t * t
    s = _sigmoid_ref(z, xp)
    return s * (1 - s)


def act_backward_ref(s, d, name, param=0.01):
    """dz = d * f'(z) in s's dtype (s: z, or the output y for the names in :data:`FROM_OUTPUT`; a fresh array).
    relu selects instead of multiplying (:func:`relu_select`), so an inf or NaN in d where the unit is off
    gives 0, as PyTorch's threshold_backward."""
    name = act_name(name)
    if name == "relu":
        return relu_select(s, d.astype(s.dtype, copy=False))
    if s.size == d.size and compiled(s, d):  # one pass: f'(s) and the product
        op = "BACKWARD_OUT" if name in FROM_OUTPUT else "BACKWARD"
        return _jit_act(op, (s, d.reshape(s.shape)), name, param)
    g = act_grad_out_ref(s, name) if name in FROM_OUTPUT else act_grad_ref(s, name, param)
    g *= d.reshape(g.shape)
    return g


def act_grad_out_ref(y, name):
    """f'(z) from the output y = f(z), for the names in :data:`FROM_OUTPUT` (a fresh array)."""
    name = act_name(name)
    if name == "relu":
        return _relu_mask(y)
    if name == "tanh":
        return 1 - y * y
    if name == "sigmoid":
        return y * (1 - y)
    raise ValueError(f"the derivative of {name!r} is not a function of its output; save z instead")
