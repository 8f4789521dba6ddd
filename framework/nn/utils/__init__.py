"""conch.nn.utils: gradient clipping and flattening parameters into one vector and back."""

from __future__ import annotations

import math

import numpy as np

from ..._backend import xp_of
from ...autograd.grad_mode import no_grad
from ...tensor import Tensor, cat


def _params(parameters):
    return [parameters] if isinstance(parameters, Tensor) else list(parameters)


def _norm_arr(g, norm_type):
    """The ``norm_type``-norm of one array, accumulated in at least float32 (as torch.linalg.vector_norm)."""
    xp = xp_of(g)
    a = abs(g.astype(np.float32, copy=False) if g.itemsize < 4 else g)
    if norm_type == math.inf:
        return a.max() if a.size else xp.asarray(0.0, dtype=a.dtype)
    if norm_type == -math.inf:
        return a.min() if a.size else xp.asarray(math.inf, dtype=a.dtype)
    if norm_type == 2:
        return xp.sqrt((a * a).sum())
    if norm_type == 1:
        return a.sum()
    if norm_type == 0:
        return (a != 0).sum().astype(a.dtype)
    return (a**norm_type).sum() ** (1.0 / norm_type)


def _common_dtype(dtypes):
    """torch.stack's promotion of the per-tensor norms' dtypes (float16 with bfloat16 gives float32)."""
    try:
        return np.result_type(*dtypes)
    except (TypeError, np.exceptions.DTypePromotionError):  # bfloat16 (ml_dtypes) with float16
        return np.result_type(np.float32, *[d for d in dtypes if d.itemsize >= 4])


def get_total_norm(tensors, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    """The ``norm_type``-norm of all tensors together: the norm of their per-tensor norms, as
    ``torch.nn.utils.get_total_norm``.

    Each per-tensor norm is accumulated in at least float32 and rounded to its tensor's dtype; the total
    has the tensors' common dtype (a float16 gradient list gives a float16 norm, as in PyTorch). An empty
    list gives ``tensor(0.)``.

    Example::

        total = conch.nn.utils.get_total_norm([p.grad for p in model.parameters()], 2.0)
    """
    norm_type = float(norm_type)
    arrs = [t._data for t in _params(tensors) if t is not None]
    if not arrs:
        return Tensor._make(np.asarray(0.0, dtype=np.float32))
    xp = xp_of(arrs[0])
    out_dtype = _common_dtype([a.dtype for a in arrs])
    norms = xp.stack([_norm_arr(a, norm_type).astype(a.dtype).astype(out_dtype) for a in arrs])
    total = xp.asarray(_norm_arr(norms, norm_type)).astype(out_dtype)
    if error_if_nonfinite and not bool(xp.isfinite(total)):
        raise RuntimeError(
            f"The total norm of order {norm_type} for gradients from `parameters` is non-finite, so it cannot be "
            "clipped. To disable this error and scale the gradients by the non-finite norm anyway, set "
            "`error_if_nonfinite=False`"
        )
    return Tensor._make(total)


def clip_grads_with_norm_(parameters, max_norm, total_norm, foreach=None):
    """Multiply every gradient in place by ``min(max_norm / (total_norm + 1e-6), 1)``, as PyTorch.

    The coefficient is computed in ``total_norm``'s dtype and is NaN when ``total_norm`` is NaN (every
    gradient becomes NaN) and 0 when it is inf, as in PyTorch. On the GPU nothing synchronises with the host.

    Example::

        total = conch.nn.utils.get_total_norm([p.grad for p in params])
        conch.nn.utils.clip_grads_with_norm_(params, 1.0, total)
    """
    params = [p for p in _params(parameters) if p.grad is not None]
    if not params:
        return
    t = total_norm._data if isinstance(total_norm, Tensor) else np.asarray(total_norm, dtype=np.float32)
    xp = xp_of(t)
    dt = t.dtype.type
    with np.errstate(divide="ignore", invalid="ignore"):
        coef = dt(float(max_norm)) / (t + dt(1e-6))
        coef = xp.minimum(coef, dt(1.0))  # NaN propagates, as torch.clamp(max=1.0)
    if xp is np:
        c = float(coef)
        if c == 1.0:  # multiplying by exactly 1 changes nothing: skip the pass over the gradients
            return
    for p in params:  # a gradient listed twice is scaled twice, as in PyTorch
        g = p.grad._data
        with np.errstate(invalid="ignore"):  # inf * 0 -> NaN, as PyTorch, without NumPy's warning
            g *= coef.astype(g.dtype) if xp is not np else g.dtype.type(c)
        p.grad._version[0] += 1


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    """Scale all gradients in place so that their joint ``norm_type``-norm is at most ``max_norm``.

    total = ‖(‖g_1‖_p, …, ‖g_n‖_p)‖_p; every gradient is multiplied by min(max_norm / (total + 1e-6), 1)
    (computed in total's dtype, as PyTorch: a NaN total makes every gradient NaN, an inf total zeroes the
    finite entries). Returns the total norm (before clipping) as a 0-d tensor.

    Example::

        loss.backward()
        total = conch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    """
    params = [p for p in _params(parameters) if p.grad is not None]
    total = get_total_norm([p.grad for p in params], norm_type, error_if_nonfinite)
    if params:
        clip_grads_with_norm_(params, max_norm, total)
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
