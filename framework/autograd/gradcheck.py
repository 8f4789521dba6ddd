"""Finite-difference gradient checks in float64 (central differences), as torch.autograd.gradcheck."""

from __future__ import annotations

import numpy as np


def _tensors(inputs):
    from ..tensor import Tensor

    return [inputs] if isinstance(inputs, Tensor) else list(inputs)


def _flat_outputs(out):
    from ..tensor import Tensor

    return [out] if isinstance(out, Tensor) else [o for o in out if isinstance(o, Tensor)]


def _numerical_jacobian(fn, inputs, i, eps):
    """d(outputs)/d(inputs[i]) by central differences, one column per input element."""
    x = inputs[i]
    arr = x._data
    flat = arr.reshape(-1) if arr.flags.c_contiguous else None
    if flat is None:
        raise ValueError("gradcheck needs contiguous inputs")
    cols = []
    for j in range(flat.size):
        orig = flat[j].item()
        flat[j] = orig + eps
        plus = [o.detach()._data.astype(np.float64).ravel().copy() for o in _flat_outputs(fn(*inputs))]
        flat[j] = orig - eps
        minus = [o.detach()._data.astype(np.float64).ravel().copy() for o in _flat_outputs(fn(*inputs))]
        flat[j] = orig
        cols.append(np.concatenate([(p - m) / (2 * eps) for p, m in zip(plus, minus)]))
    return np.stack(cols, axis=1) if cols else np.zeros((0, 0))


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, raise_exception=True, check_undefined_grad=False):
    """Compare autograd's vector-Jacobian products with central differences, in float64.

    Every floating input that requires grad is checked. A random upstream gradient ``v`` is
    drawn per output; autograd's ``vᵀJ`` must match the numerical ``vᵀJ`` within
    ``atol + rtol * |numerical|``. Returns True, or raises ``RuntimeError`` naming the input and
    the worst element (returns False when ``raise_exception=False``).

    Example::

        x = conch.randn(3, 4, dtype=conch.float64, requires_grad=True)
        conch.autograd.gradcheck(lambda t: (t * t).sum(1), (x,))
    """
    from .. import autograd
    from ..tensor import Tensor

    inputs = _tensors(inputs)
    for k, t in enumerate(inputs):
        if isinstance(t, Tensor) and t.requires_grad and t.dtype != np.float64:
            raise ValueError(
                f"gradcheck expects float64 inputs for precision; input {k} is {t.dtype}. Use .double() first."
            )
    outs = _flat_outputs(fn(*inputs))
    rng = np.random.default_rng(1234)
    vs = [Tensor._make(rng.standard_normal(o.shape)) for o in outs if o.requires_grad]
    diff_outs = [o for o in outs if o.requires_grad]
    wrt = [k for k, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    if not diff_outs:
        raise RuntimeError("gradcheck: none of the outputs requires grad")
    analytic = autograd.grad(diff_outs, [inputs[k] for k in wrt], vs, allow_unused=True)
    v_flat = np.concatenate([v._data.ravel() for v in vs])
    for k, a in zip(wrt, analytic):
        jac = _numerical_jacobian(fn, inputs, k, eps)  # (n_out_total, n_in) over diff and non-diff outputs
        n_rows = sum(o._data.size for o in outs)
        if jac.shape[0] != n_rows:
            raise RuntimeError("gradcheck: outputs changed size between evaluations")
        rows = np.concatenate([np.full(o._data.size, o.requires_grad) for o in outs])
        numeric = v_flat @ jac[rows]
        got = np.zeros(inputs[k].numel()) if a is None else a._data.astype(np.float64).ravel()
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


def gradgradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, raise_exception=True):
    """Check second derivatives: gradcheck of the function ``x -> d(sum(v·fn(x)))/dx`` built with create_graph."""
    from .. import autograd
    from ..tensor import Tensor

    inputs = _tensors(inputs)
    rng = np.random.default_rng(4321)
    outs0 = _flat_outputs(fn(*inputs))
    vs = [Tensor._make(rng.standard_normal(o.shape)) for o in outs0 if o.requires_grad]
    wrt = [k for k, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]

    def first_grads(*xs):
        outs = [o for o in _flat_outputs(fn(*xs)) if o.requires_grad]
        gs = autograd.grad(outs, [xs[k] for k in wrt], vs, create_graph=True, allow_unused=True)
        return tuple(g for g in gs if g is not None)

    return gradcheck(first_grads, inputs, eps=eps, atol=atol, rtol=rtol, raise_exception=raise_exception)
