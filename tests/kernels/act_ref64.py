"""Independent float64 activation references for kernel tests: closed forms, complex-step derivatives."""

import math

import numpy as np

SLOPE, ALPHA = 0.2, 1.5  # non-default attributes, so that ignoring them fails

_erf = np.vectorize(math.erf)


def f64(name, z):
    """f(z) in float64 (complex z allowed for the analytic branches); ``None`` is the identity."""
    if name is None:
        return z
    if name == "relu":
        return np.maximum(z, 0)
    if name == "leaky_relu":
        return np.where(z > 0, z, SLOPE * z)
    if name == "elu":
        return np.where(np.real(z) > 0, z, ALPHA * (np.exp(z) - 1))
    if name == "gelu":
        return 0.5 * z * (1 + _erf(z / math.sqrt(2)))
    if name == "gelu_tanh":
        return 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))
    if name == "silu":
        return z / (1 + np.exp(-z))
    if name == "tanh":
        return np.tanh(z)
    if name == "sigmoid":
        return 1 / (1 + np.exp(-z))
    raise AssertionError(name)


def df64(name, z):
    """f'(z) in float64: closed forms for the piecewise-linear ones and gelu, complex step for the rest."""
    z = np.asarray(z, np.float64)
    if name is None:
        return np.ones_like(z)
    if name == "relu":
        return (z > 0).astype(np.float64)
    if name == "leaky_relu":
        return np.where(z > 0, 1.0, SLOPE)
    if name == "gelu":
        return 0.5 * (1 + _erf(z / math.sqrt(2))) + z * np.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    return np.imag(f64(name, z + 1e-30j)) / 1e-30
