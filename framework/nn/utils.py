"""conch.nn.utils: gradient clipping and flattening parameters into one vector and back."""

from __future__ import annotations

import math

import numpy as np

from .._backend import xp_of
from ..autograd.grad_mode import no_grad
from ..tensor import Tensor


def _params(parameters):
    return [parameters] if isinstance(parameters, Tensor) else list(parameters)


def _norm_arr(g, norm_type):
    xp = xp_of(g)
    a = abs(g.astype(np.float32, copy=False) if g.itemsize < 4 else g)
    if norm_type == math.inf:
        return a.max() if a.size else xp.asarray(0.0, dtype=a.dtype)
    if norm_type == 2:
        return xp.sqrt((a * a).sum())
    if norm_type == 1:
        return a.sum()
    return (a**norm_type).sum() ** (1.0 / norm_type)


def get_total_norm(tensors, norm_type=2.0, error_if_nonfinite=False):
    """The ``norm_type``-norm of all tensors together (the norm of their per-tensor norms)."""
    norm_type = float(norm_type)
    arrs = [t._data for t in _params(tensors) if t is not None]
    if not arrs:
        return Tensor._make(np.asarray(0.0, dtype=np.float32))
    xp = xp_of(arrs[0])
    norms = xp.stack([_norm_arr(a, norm_type).astype(np.float64) for a in arrs])
    total = _norm_arr(norms, norm_type)
    out_dtype = np.result_type(*[a.dtype if a.itemsize >= 4 else np.float32 for a in arrs])
    total = total.astype(out_dtype)
    if error_if_nonfinite and not bool(xp.isfinite(total)):
        raise RuntimeError(
            f"The total norm of order {norm_type} for gradients from `parameters` is non-finite, so it cannot be "
            "clipped. To disable this error and scale the gradients by the non-finite norm anyway, set "
            "`error_if_nonfinite=False`"
        )
    return Tensor._make(xp.asarray(total))


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    """Scale all gradients in place so that their joint ``norm_type``-norm is at most ``max_norm``.

    coef = max_norm / (total_norm + 1e-6), applied only when < 1 (as PyTorch). Returns the total norm
    (before clipping) as a 0-d tensor.

    Example::

        loss.backward()
        total = conch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    """
    params = [p for p in _params(parameters) if p.grad is not None]
    total = get_total_norm([p.grad for p in params], norm_type, error_if_nonfinite)
    if not params:
        return total
    coef = float(max_norm) / (float(total.item()) + 1e-6)
    if coef < 1.0:
        for p in params:
            g = p.grad._data
            g *= g.dtype.type(coef)
            p.grad._version[0] += 1
    return total


def clip_grad_value_(parameters, clip_value, foreach=None):
    """Clamp every gradient element to [-clip_value, clip_value] in place."""
    clip_value = float(clip_value)
    for p in _params(parameters):
        if p.grad is not None:
            g = p.grad._data
            xp_of(g).clip(g, -clip_value, clip_value, out=g)
            p.grad._version[0] += 1


def parameters_to_vector(parameters):
    """All parameters flattened and concatenated into one 1-D tensor (differentiable)."""
    from ..tensor import cat

    ps = _params(parameters)
    if not ps:
        raise ValueError("parameters_to_vector: got no parameters")
    dev = ps[0].device
    for p in ps:
        if p.device != dev:
            raise TypeError(
                f"Found two parameters on different devices, this is currently not supported ({dev} and {p.device})"
            )
    return cat([p.reshape(-1) for p in ps])


def vector_to_parameters(vec, parameters):
    """Copy consecutive slices of the 1-D ``vec`` into the parameters, in place (the inverse of
    :func:`parameters_to_vector`)."""
    if not isinstance(vec, Tensor):
        raise TypeError(f"expected vec to be a conch.Tensor, but got: {type(vec).__name__}")
    ps = _params(parameters)
    total = sum(p.numel() for p in ps)
    if vec.ndim != 1 or vec.numel() != total:
        raise ValueError(
            f"vector_to_parameters: expected a 1-D vector of {total} elements, got shape {tuple(vec.shape)}"
        )
    off = 0
    with no_grad():
        for p in ps:
            n = p.numel()
            p.copy_(vec[off : off + n].reshape(p.shape))
            off += n
