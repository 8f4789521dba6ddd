"""Gradient checkpointing: drop a function's activations in the forward and recompute them in the backward.

``checkpoint(fn, *args)`` is an autograd Function. Its forward runs ``fn`` without recording a graph and
keeps only the inputs, the RNG state (so dropout draws the same masks again) and the autocast state.
Its backward restores both, reruns ``fn`` with the graph on (on detached copies of the inputs), and
backpropagates the incoming gradients through that fresh graph. Memory: for a chain of L layers with
activations of size A split into s segments, the stored activations drop from ~L·A to ~(s + L/s)·A,
which is O(√L·A) at s = √L, for one extra forward per segment.

Example::

    h = conch.checkpoint.checkpoint(block, x)                     # block: a Module or any callable
    y = conch.checkpoint.checkpoint_sequential(model, 4, x)       # a Sequential in 4 segments
    y.sum().backward()
"""

from __future__ import annotations

import numpy as np

from . import _dtype as D
from . import ops
from ._backend import xp_of
from .amp import autocast_mode as _ac
from .autograd import engine as _engine
from .autograd.function import Function, _edge
from .autograd.grad_mode import _enabled
from .creation import get_rng_state, set_rng_state
from .tensor import Tensor

__all__ = ["checkpoint", "checkpoint_sequential"]


class _Slot:
    """Where the i-th flattened tensor goes back into an argument structure."""

    __slots__ = ("i",)

    def __init__(self, i):
        self.i = i


def _flatten(obj, out):
    if isinstance(obj, Tensor):
        out.append(obj)
        return _Slot(len(out) - 1)
    if type(obj) in (list, tuple):
        return type(obj)(_flatten(o, out) for o in obj)
    if type(obj) is dict:
        return {k: _flatten(v, out) for k, v in obj.items()}
    return obj


def _fill(struct, tensors):
    if type(struct) is _Slot:
        return tensors[struct.i]
    if type(struct) in (list, tuple):
        return type(struct)(_fill(o, tensors) for o in struct)
    if type(struct) is dict:
        return {k: _fill(v, tensors) for k, v in struct.items()}
    return struct


def _module_params(fn):
    """Parameters of ``fn`` when it is a Module (or a bound method of one); None when they cannot be known."""
    owner = fn if callable(getattr(fn, "parameters", None)) else getattr(fn, "__self__", None)
    params = getattr(owner, "parameters", None)
    if not callable(params):
        return None
    try:
        ps = list(params())
    except TypeError:
        return None
    seen = set()
    return [p for p in ps if isinstance(p, Tensor) and id(p) not in seen and not seen.add(id(p))]


# Makes the Function record a node when fn is an opaque closure whose parameters are only seen in the
# recompute (no tensor argument requires grad); it receives no gradient.
_ANCHOR = Tensor._make(np.zeros((), np.float32), True)


def _as_outputs(out):
    if isinstance(out, Tensor):
        return (out,), "tensor"
    if isinstance(out, (tuple, list)):
        return tuple(out), type(out).__name__
    raise TypeError(
        f"checkpoint: the function must return a Tensor or a tuple/list of Tensors (and other values), got "
        f"{type(out).__name__}"
    )


def _values_match(a, b):
    """(equal within float tolerance, max abs difference) of two arrays of one shape and dtype."""
    xp = xp_of(a)
    if a.dtype.kind not in "fc" and a.dtype not in D.FLOATING:
        return bool(xp.array_equal(a, b)), 0.0
    wide = np.float64 if a.dtype == np.float64 else np.float32
    a, b = a.astype(wide), b.astype(wide)
    ok = bool(xp.allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True))
    diff = xp.abs(a - b)
    diff = diff[~xp.isnan(diff)]
    return ok, float(diff.max()) if diff.size else 0.0


class _Spec:
    """What the checkpoint node needs besides tensors: the function, the argument structure, the options."""

    __slots__ = ("fn", "struct", "n_args", "params", "preserve_rng", "debug", "kind", "others")

    def __init__(self, fn, struct, n_args, params, preserve_rng, debug):
        self.fn, self.struct, self.n_args, self.params = fn, struct, n_args, params
        self.preserve_rng, self.debug, self.kind, self.others = preserve_rng, debug, None, None


class _Checkpoint(Function):
    """flat = (inputs..., explicit parameters..., [anchor]); gradients return along the same positions."""

    @staticmethod
    def forward(ctx, spec, *flat):
        ctx.spec = spec
        ctx.rng = get_rng_state() if spec.preserve_rng else None
        ctx.autocast = _ac.get_autocast_state()
        inputs = flat[: spec.n_args]
        args, kwargs = _fill(spec.struct, inputs)
        out, spec.kind = _as_outputs(spec.fn(*args, **kwargs))
        # only tensors go through the node; other values are put back in place by checkpoint()
        spec.others = [(i, o) for i, o in enumerate(out) if not isinstance(o, Tensor)]
        tensors = tuple(o for o in out if isinstance(o, Tensor))
        ctx.n_out = len(out)
        ctx.meta = [(o.shape, o.dtype) for o in tensors]
        ctx.fwd_values = [o._data for o in tensors] if spec.debug else None
        ctx.save_for_backward(*inputs)
        return tensors[0] if spec.kind == "tensor" else tensors

    @staticmethod
    def backward(ctx, *grad_outputs):
        spec = ctx.spec
        saved = ctx.saved_tensors  # raises if an input was modified in place after the forward
        create_graph = _enabled[0]
        detached, roots_in = [], []
        for t in saved:
            d = t.detach()
            d.requires_grad = t.requires_grad
            roots_in.append(d)
            if create_graph and t.requires_grad:
                # double backward: the gradients returned below carry a graph over the recompute's inputs; an
                # alias node (cut off while this backward runs, reconnected to the original input after it)
                # lets that graph reach the original inputs
                d = ops.Alias.apply(d)
            detached.append(d)
        args, kwargs = _fill(spec.struct, detached)
        rng_now = get_rng_state() if spec.preserve_rng else None
        ac_now = _ac.get_autocast_state()
        try:
            if spec.preserve_rng:
                set_rng_state(ctx.rng)
            _ac.set_autocast_state(ctx.autocast)
            _enabled[0] = True
            out_all, _ = _as_outputs(spec.fn(*args, **kwargs))
        finally:
            # the backward itself runs outside autocast and leaves the global RNG where it found it
            _enabled[0] = create_graph
            _ac.set_autocast_state(ac_now)
            if spec.preserve_rng:
                set_rng_state(rng_now)
        out = [o for o in out_all if isinstance(o, Tensor)]
        _check_recompute(ctx, out_all, out)

        n_flat = len(ctx.next_edges) - 1
        roots, root_grads = [], []
        for o, g in zip(out, grad_outputs):
            if o.requires_grad and g is not None:
                roots.append(o)
                root_grads.append(g if g.dtype == o.dtype else g.to(dtype=o.dtype))
        if not roots:
            return (None,) * (n_flat + 1)

        # differentiate w.r.t. the inputs, the module's parameters, and any other leaf the recomputed graph
        # reaches (parameters an opaque closure uses): the first two go back through this node's edges, the
        # last are accumulated into .grad here
        params = spec.params
        wanted = [d for d in detached if d.requires_grad] + [p for p in params if p.requires_grad]
        known = {id(t) for t in wanted} | {id(t) for t in roots_in}
        others = [leaf for leaf in _engine.walk_graph(roots, with_leaves=True)[2] if id(leaf) not in known]
        # hooks of explicit parameters must run once: when the outer engine accumulates what this returns
        hooked = [(p, p._hooks) for p in params if p._hooks]
        for p, _ in hooked:
            p._hooks = None
        try:
            grads = _engine.run_backward(roots, root_grads, False, create_graph, wanted + others, allow_unused=True)
        finally:
            for p, h in hooked:
                p._hooks = h
        if create_graph:
            for d, t in zip(detached, saved):
                if d.grad_fn is not None:
                    d.grad_fn.next_edges = (_edge(t),)
        by_id = {id(t): g for t, g in zip(wanted, grads)}
        for leaf, g in zip(others, grads[len(wanted) :]):
            if g is not None:
                g = g if create_graph else g.detach()
                leaf.grad = g if leaf.grad is None else leaf.grad + g
        res = [None]  # spec
        res += [by_id.get(id(d)) for d in detached]
        res += [by_id.get(id(p)) for p in params]
        res += [None] * (n_flat + 1 - len(res))  # the anchor
        return tuple(res)


def _check_recompute(ctx, out_all, out):
    hint = (
        "Was the function changed between forward and backward (a module switched train/eval, global state), "
        "does it draw random numbers outside conch's generators, or was preserve_rng_state=False?"
    )
    if len(out_all) != ctx.n_out or len(out) != len(ctx.meta):
        raise RuntimeError(
            f"checkpoint: the recomputation returned {len(out_all)} outputs ({len(out)} tensors), the forward "
            f"returned {ctx.n_out} ({len(ctx.meta)} tensors). " + hint
        )
    for i, (o, m) in enumerate(zip(out, ctx.meta)):
        if o.shape != m[0] or o.dtype != m[1]:
            got = f"shape {o.shape}, dtype {o.dtype}"
            raise RuntimeError(
                f"checkpoint: recomputed output {i} has {got}; the forward gave shape {m[0]}, dtype {m[1]}. " + hint
            )
        if ctx.fwd_values is not None:
            ok, diff = _values_match(ctx.fwd_values[i], o._data)
            if not ok:
                raise RuntimeError(
                    f"checkpoint(debug=True): recomputed output {i} (shape {m[0]}, dtype {m[1]}) differs from the "
                    f"forward's: max abs difference {diff:.3g}. " + hint
                )


def checkpoint(fn, *args, preserve_rng_state=True, use_reentrant=None, debug=False, **kwargs):
    """``fn(*args, **kwargs)``, with its activations recomputed in the backward instead of stored.

    Args:
        fn: a Module or any callable returning a Tensor or a tuple/list of Tensors (other values may be
            mixed in). Tensors in ``args``/``kwargs`` (also inside lists, tuples and dicts) are the inputs:
            those that require grad get gradients. Parameters of ``fn`` (when it is a Module or a bound
            method of one) get gradients through the autograd graph like any input; parameters an opaque
            closure uses are found in the recomputed graph and accumulated into their ``.grad`` (so, for
            closures, ``autograd.grad`` sees only the explicit inputs).
        preserve_rng_state: save the RNG state (NumPy/CuPy generators and the dropout counter) before the
            forward and replay it in the recompute, so dropout masks match. The global RNG is left as
            it was before the backward.
        use_reentrant: accepted for PyTorch compatibility; conch has one implementation.
        debug: also check that the recomputed outputs equal the forward's (values, besides the shapes
            and dtypes that are always checked); keeps the forward outputs alive until backward.

    Under ``no_grad`` this is just ``fn(*args, **kwargs)``. The recompute runs under the autocast state of
    the forward. Example::

        def block(x, scale=1.0):
            return conch.nn.functional.dropout(x @ w, 0.1).relu() * scale
        y = checkpoint(block, x, scale=0.5)
    """
    if not callable(fn):
        raise TypeError(f"checkpoint: fn must be callable, got {type(fn).__name__}")
    if use_reentrant not in (None, True, False):
        raise TypeError(f"checkpoint: use_reentrant must be None, True or False, got {use_reentrant!r}")
    if not _enabled[0]:
        return fn(*args, **kwargs)
    flat = []
    struct = _flatten((args, kwargs), flat)
    params = _module_params(fn)
    spec = _Spec(fn, struct, len(flat), params or [], bool(preserve_rng_state), bool(debug))
    extra = spec.params
    if params is None and not any(t.requires_grad for t in flat):
        extra = [_ANCHOR]
    out = _Checkpoint.apply(spec, *flat, *extra)
    if spec.kind == "tensor":
        return out
    out = list(out)
    for i, o in spec.others:
        out.insert(i, o)
    return out if spec.kind == "list" else tuple(out)


class _Segment:
    """Runs ``modules[start:end]`` in order; exposes their parameters so checkpoint can route gradients."""

    def __init__(self, modules):
        self.modules = modules

    def __call__(self, x):
        for m in self.modules:
            x = m(x)
        return x

    def parameters(self):
        for m in self.modules:
            ps = getattr(m, "parameters", None)
            if callable(ps):
                yield from ps()


def checkpoint_sequential(functions, segments, input, preserve_rng_state=True, use_reentrant=None, **kwargs):  # noqa: A002
    """Run a Sequential (or list of modules/callables) in ``segments`` chunks, checkpointing all but the last.

    The last segment runs normally (its activations are needed right away by the backward), as in
    PyTorch. With ``L`` modules, ``segments = √L`` minimises stored activations. Example::

        model = conch.nn.Sequential(*[conch.nn.Linear(512, 512, activation="relu") for _ in range(16)])
        y = checkpoint_sequential(model, 4, x)
    """
    if kwargs:
        raise TypeError(f"checkpoint_sequential: unexpected keyword arguments {sorted(kwargs)}")
    if hasattr(functions, "children") and callable(functions.children) and not isinstance(functions, (list, tuple)):
        functions = list(functions.children())
    else:
        functions = list(functions)
    if isinstance(segments, bool) or not isinstance(segments, int):
        raise TypeError(f"checkpoint_sequential: segments must be an int, got {type(segments).__name__}")
    if not functions:
        raise ValueError("checkpoint_sequential: no modules to run")
    if not 1 <= segments <= len(functions):
        raise ValueError(f"checkpoint_sequential: segments must be in [1, {len(functions)}] for {len(functions)} "
                         f"modules, got {segments}")  # fmt: skip
    size = len(functions) // segments
    end = 0
    for start in range(0, size * (segments - 1), size):
        end = start + size
        input = checkpoint(_Segment(functions[start:end]), input, preserve_rng_state=preserve_rng_state)  # noqa: A001
    return _Segment(functions[end:])(input)
