"""Triton helpers of kernels/_act.py: each activation and its derivative in fp32, inlined by kernels."""

from __future__ import annotations

import triton
import triton.language as tl

# --------------------------------------------------------------------------------------------------------------
# Triton helpers (fp32 in, fp32 out). Kernels call these by bare name (see kernels/_launch.py).
# --------------------------------------------------------------------------------------------------------------


@triton.jit
def sigmoid_fwd(z):
    # sigma(z) = 1 / (1 + exp(-z)); exp(-z) = inf for z << 0 gives 0, never NaN
    return 1.0 / (1.0 + tl.exp(-z))


@triton.jit
def tanh_fwd(z):
    # tanh(z) = sign(z) (1 - e) / (1 + e), e = exp(-2|z|) (no overflow); an odd Taylor polynomial near 0,
    # where 1 - e cancels: z - z^3/3 + 2 z^5/15 - 17 z^7/315 (next term ~ 2e-11 at |z| = 0.1)
    az = tl.abs(z)
    e = tl.exp(-2.0 * az)
    big = (1.0 - e) / (1.0 + e)
    big = tl.where(z < 0, -big, big)
    z2 = z * z
    small = z * (1.0 + z2 * (-0.3333333333333333 + z2 * (0.13333333333333333 + z2 * -0.05396825396825397)))
    return tl.where(az < 0.1, small, big)


@triton.jit
def relu_fwd(z):
    # NaN propagates, as in PyTorch (z != z only for NaN): a NaN must reach the loss and GradScaler's check
    return tl.where(z > 0, z, tl.where(z != z, z, 0.0))


@triton.jit
def relu_grad(z):
    # relu'(z) = 1 if z > 0 else 0 (0 at z = 0, as PyTorch)
    return tl.where(z > 0, 1.0, 0.0)


@triton.jit
def leaky_relu_fwd(z, slope):
    return tl.where(z > 0, z, z * slope)


@triton.jit
def leaky_relu_grad(z, slope):
    # d/dz = 1 if z > 0 else slope
    return tl.where(z > 0, 1.0, slope)


@triton.jit
def elu_fwd(z, alpha):
    return tl.where(z > 0, z, alpha * (tl.exp(tl.minimum(z, 0.0)) - 1.0))


@triton.jit
def elu_grad(z, alpha):
    # d/dz = 1 if z > 0 else alpha exp(z)
    return tl.where(z > 0, 1.0, alpha * tl.exp(tl.minimum(z, 0.0)))


@triton.jit
def gelu_fwd(z):
    # gelu(z) = z Phi(z) = 0.5 z (1 + erf(z / sqrt 2))
    return 0.5 * z * (1.0 + tl.erf(z * 0.7071067811865476))


@triton.jit
def gelu_grad(z):
    # gelu'(z) = Phi(z) + z phi(z),  phi(z) = exp(-z^2/2) / sqrt(2 pi)
    cdf = 0.5 * (1.0 + tl.erf(z * 0.7071067811865476))
    pdf = tl.exp(-0.5 * z * z) * 0.3989422804014327
    return cdf + z * pdf


@triton.jit
def gelu_tanh_fwd(z):
    # gelu_tanh(z) = 0.5 z (1 + tanh(u)),  u = sqrt(2/pi) (z + 0.044715 z^3)
    u = 0.7978845608028654 * (z + 0.044715 * z * z * z)
    return 0.5 * z * (1.0 + tanh_fwd(u))


@triton.jit
def gelu_tanh_grad(z):
    # d/dz = 0.5 (1 + t) + 0.5 z (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 z^2),  t = tanh(u)
    u = 0.7978845608028654 * (z + 0.044715 * z * z * z)
    t = tanh_fwd(u)
    return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 0.134145 * z * z)


@triton.jit
def silu_fwd(z):
    # silu(z) = z sigma(z)
    return z * sigmoid_fwd(z)


@triton.jit
def silu_grad(z):
    # silu'(z) = sigma(z) (1 + z (1 - sigma(z)))
    s = sigmoid_fwd(z)
    return s * (1.0 + z * (1.0 - s))


@triton.jit
def tanh_grad(z):
    # tanh'(z) = 1 - tanh(z)^2
    t = tanh_fwd(z)
    return 1.0 - t * t


@triton.jit
def sigmoid_grad(z):
    # sigma'(z) = sigma(z) (1 - sigma(z))
    s = sigmoid_fwd(z)
    return s * (1.0 - s)


@triton.jit
def apply_act(z, ACT: tl.constexpr, param):
    """y = f(z) for the activation with code ``ACT`` (fp32); ``param``: leaky_relu slope / elu alpha."""
    y = z
    if ACT == 1:
        y = relu_fwd(z)
    elif ACT == 2:
        y = leaky_relu_fwd(z, param)
    elif ACT == 3:
        y = elu_fwd(z, param)
    elif ACT == 4:
        y = gelu_fwd(z)
    elif ACT == 5:
        y = gelu_tanh_fwd(z)
    elif ACT == 6:
        y = silu_fwd(z)
    elif ACT == 7:
        y = tanh_fwd(z)
    elif ACT == 8:
        y = sigmoid_fwd(z)
    return y


@triton.jit
def act_grad(z, ACT: tl.constexpr, param):
    """f'(z) for the activation with code ``ACT`` (fp32), from the pre-activation ``z``."""
    g = tl.full(z.shape, 1.0, tl.float32)
    if ACT == 1:
        g = relu_grad(z)
    elif ACT == 2:
        g = leaky_relu_grad(z, param)
    elif ACT == 3:
        g = elu_grad(z, param)
    elif ACT == 4:
        g = gelu_grad(z)
    elif ACT == 5:
        g = gelu_tanh_grad(z)
    elif ACT == 6:
        g = silu_grad(z)
    elif ACT == 7:
        g = tanh_grad(z)
    elif ACT == 8:
        g = sigmoid_grad(z)
    return g


@triton.jit
def act_grad_out(y, ACT: tl.constexpr):
    """f'(z) from the output ``y = f(z)``, for relu (1), tanh (7) and sigmoid (8) only."""
    g = tl.full(y.shape, 1.0, tl.float32)
    if ACT == 1:
        g = tl.where(y > 0, 1.0, 0.0)  # relu: y > 0 exactly when z > 0
    elif ACT == 7:
        g = 1.0 - y * y  # tanh' = 1 - y^2
    elif ACT == 8:
        g = y * (1.0 - y)  # sigmoid' = y (1 - y)
    return g


@triton.jit
def act_backward(dy, s, ACT: tl.constexpr, FROM_OUT: tl.constexpr, param):
    """dz = dy * f'(z) in fp32 (s: z, or the output y when ``FROM_OUT``); relu selects instead of multiplying,
    so an inf or NaN in dy where the unit is off gives 0, as PyTorch's threshold_backward (dy * 0 would be NaN)."""
    if ACT == 1:
        dz = tl.where(s > 0, dy, 0.0)
    elif FROM_OUT:
        dz = dy * act_grad_out(s, ACT)
    else:
        dz = dy * act_grad(s, ACT, param)
    return dz
