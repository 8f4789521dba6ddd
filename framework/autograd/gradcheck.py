"""Finite-difference gradient checks in float64 (central differences), as torch.autograd.gradcheck."""

from __future__ import annotations

import numpy as np

from .._backend import to_host, xp_of
from .engine import grad
from .function import GraphTensor


def _tensors(inputs):
    return [inputs] if isinstance(inputs, GraphTensor) else list(inputs)


def _flat_outputs(out):
    return [out] if isinstance(out, GraphTensor) else [o for o in out if isinstance(o, GraphTensor)]


def _host(a):
    """A float64 NumPy copy of array ``a`` (NumPy or CuPy)."""
    return to_host(a).astype(np.float64).ravel()


def _numerical_jacobian(fn, inputs, i, eps):
    """d(outputs)/d(inputs[i]) by central differences, one column per input element."""
    x = inputs[i]
    arr = x._data
    if not arr.flags.c_contiguous:
        raise ValueError(f"gradcheck needs contiguous inputs; input {i} (shape {tuple(x.shape)}) is not")
    flat = arr.reshape(-1)
    cols = []
    for j in range(flat.size):
        orig = flat[j].item()
        flat[j] = orig + eps
        plus = [_host(o.detach()._data) for o in _flat_outputs(fn(*inputs))]
        flat[j] = orig - eps
        minus = [_host(o.detach()._data) for o in _flat_outputs(fn(*inputs))]
        flat[j] = orig
        cols.append(np.concatenate([(p - m) / (2 * eps) for p, m in zip(plus, minus)]))
    return np.stack(cols, axis=1) if cols else np.zeros((0, 0))


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, raise_exception=True, check_undefined_grad=False):
    """Compare autograd's vector-Jacobian products with central differences, in float64.

    Every floating input that requires grad is checked. A random upstream gradient ``v`` is
    drawn per floating output; autograd's ``vᵀJ`` must match the numerical ``vᵀJ`` within
    ``atol + rtol * |numerical|``. An output that does not require grad counts as a zero
    Jacobian, so its numerical derivative must vanish too (a forgotten graph edge fails).
    Returns True, or raises ``RuntimeError`` naming the input and the worst element (returns
    False when ``raise_exception=False``).

    Example::

        x = conch.randn(3, 4, dtype=conch.float64, requires_grad=True)
        conch.autograd.gradcheck(lambda t: (t * t).sum(1), (x,))
    """
    inputs = _tensors(inputs)
    for k, t in enumerate(inputs):
        if isinstance(t, GraphTensor) and t.requires_grad and t.dtype != np.float64:
            raise ValueError(
                f"gradcheck expects float64 inputs for precision; input {k} is {t.dtype}. Use .double() first."
            )
    wrt = [k for k, t in enumerate(inputs) if isinstance(t, GraphTensor) and t.requires_grad]
    if not wrt:
        raise ValueError("gradcheck: none of the inputs requires grad")
    outs = [o for o in _flat_outputs(fn(*inputs)) if o.is_floating_point()]
    rng = np.random.default_rng(1234)
    vs_np = [rng.standard_normal(o.shape) for o in outs]
    diff = [j for j, o in enumerate(outs) if o.requires_grad]
    if diff:
        vs = [outs[j]._make(_like(outs[j]._data, vs_np[j])) for j in diff]
        analytic = grad([outs[j] for j in diff], [inputs[k] for k in wrt], vs, allow_unused=True)
    else:
        analytic = [None] * len(wrt)
    v_flat = np.concatenate([v.ravel() for v in vs_np]) if vs_np else np.zeros(0)
    n_rows = sum(o.numel() for o in outs)
    for k, a in zip(wrt, analytic):
        jac = _numerical_jacobian(fn, inputs, k, eps)  # (n_out_total, n_in), floating outputs only
        if jac.size and jac.shape[0] != n_rows:
            raise RuntimeError("gradcheck: outputs changed size between evaluations")
        numeric = v_flat @ jac if jac.size else np.zeros(inputs[k].numel())
        got = np.zeros(inputs[k].numel()) if a is None else _host(a._data)
        bad = np.abs(got - numeric) > atol + rtol * np.abs(numeric)
        if bad.any():
            j = int(np.argmax(np.abs(got - numeric) - rtol * np.abs(numeric)))
            msg = (
                f"Jacobian mismatch for input {k} (shape {tuple(inputs[k].shape)}): at flat index {j} "
                f"analytical vJ = {got[j]:.8g}, numerical vJ = {numeric[j]:.8g}; "
                f"{int(bad.sum())} of {bad.size} elements outside atol={atol}, rtol={rtol}"
            )
            if raise_exception:
                raise RuntimeError(msg)
            return False
    return True


def _like(arr, host):
    """``host`` (a NumPy array) moved to ``arr``'s device with ``arr``'s dtype."""
    if isinstance(arr, np.ndarray):
        return host.astype(arr.dtype, copy=False)
    return xp_of(arr).asarray(host, dtype=arr.dtype)


def gradgradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, raise_exception=True):
    """Check second derivatives: gradcheck of the function ``x -> d(sum(v·fn(x)))/dx`` built with create_graph."""
    inputs = _tensors(inputs)
    rng = np.random.default_rng(4321)
    outs0 = _flat_outputs(fn(*inputs))
    vs = [o._make(_like(o._data, rng.standard_normal(o.shape))) for o in outs0 if o.requires_grad]
    wrt = [k for k, t in enumerate(inputs) if isinstance(t, GraphTensor) and t.requires_grad]

    def first_grads(*xs):
        outs = [o for o in _flat_outputs(fn(*xs)) if o.requires_grad]
        gs = grad(outs, [xs[k] for k in wrt], vs, create_graph=True, allow_unused=True)
        # an unused input's gradient is zero everywhere; keep it so the output count is fixed
        return tuple(xs[k].detach() * 0 if g is None else g for k, g in zip(wrt, gs))

    return gradcheck(first_grads, inputs, eps=eps, atol=atol, rtol=rtol, raise_exception=raise_exception)
