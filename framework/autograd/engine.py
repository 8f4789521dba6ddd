"""The backward pass: walk the graph from the outputs, run each node once all its consumers have run.

    roots ─► node ─► node ─► leaf.grad
               └───► node ─┘

Each node's incoming gradients are summed in a buffer; it runs when every node that consumes
its outputs has run (a dependency count, as in PyTorch's engine). The engine, not each op,
reduces a gradient over broadcast axes and casts it to its input's dtype.
"""

from __future__ import annotations

import weakref

from .._backend import xp_of
from . import function as _fn
from .function import GraphTensor
from .grad_mode import _enabled


def sum_to_shape(g, shape):
    """Reduce (or broadcast) gradient tensor ``g`` to ``shape``: undo NumPy broadcasting."""
    if g.shape == shape:
        return g
    nd = g.ndim - len(shape)
    if nd < 0:  # a reduction's backward returned a keepdim-shaped gradient: broadcast it back
        return g.reshape((1,) * -nd + g.shape).expand(*shape)
    dims = tuple(range(nd)) + tuple(i + nd for i, s in enumerate(shape) if s == 1 and g.shape[i + nd] != 1)
    if dims:
        g = g.sum(dim=dims, keepdim=True)
    if nd:
        g = g.reshape(shape)
    if g.shape != shape:
        g = g.expand(*shape)
    return g


def _buffer_id(a):
    """Identity of the memory behind array ``a`` (the end of its chain of views)."""
    while a.base is not None:
        a = a.base
        if not hasattr(a, "base"):  # memory owned by a non-array object (buffer, DLPack capsule)
            break
    return id(a)


def _add(a, b):
    if a is None:
        return b
    return a + b


def walk_graph(roots, with_leaves=False):
    """One depth-first pass over the graph behind the tensors ``roots``, iterative (no recursion limit).

    Returns ``(nodes, deps, leaves)``: the set of nodes reachable from the roots' grad_fns; for each node the
    number of edges that point at it from reachable nodes (absent means 0: the engine runs a node when its count
    falls to 0, that is when every consumer has run); and, with ``with_leaves``, the leaf tensors reached, each
    once, in the order the walk first meets them (else ``[]``: the engine does not need them, and collecting
    costs it ~4% on a chain of small ops). The engine and checkpointing's backward both walk the graph with it.
    """
    deps, nodes, leaves, leaf_ids, stack = {}, set(), [], set(), []
    for r in roots:
        n = r.grad_fn
        if n is not None and n not in nodes:
            nodes.add(n)
            stack.append(n)
    while stack:
        for e in stack.pop().next_edges:
            if type(e) is tuple:
                child = e[0]
                deps[child] = deps.get(child, 0) + 1
                if child not in nodes:
                    nodes.add(child)
                    stack.append(child)
            elif with_leaves and e is not None and id(e) not in leaf_ids:
                leaf_ids.add(id(e))
                leaves.append(e)
    return nodes, deps, leaves


def _useful_nodes(nodes, capture_leaf, target_nodes):
    """For each node: does running it send gradient towards a requested leaf or non-leaf? (post-order DFS)"""
    useful = {}
    for start in nodes:
        if start in useful:
            continue
        stack = [(start, False)]
        while stack:
            n, done = stack.pop()
            if done:
                u = False
                for e in n.next_edges:
                    if type(e) is tuple:
                        if e[0] in target_nodes or useful[e[0]]:
                            u = True
                            break
                    elif e is not None and id(e) in capture_leaf:
                        u = True
                        break
                useful[n] = u
            elif n not in useful:
                stack.append((n, True))
                stack.extend((e[0], False) for e in n.next_edges if type(e) is tuple and e[0] not in useful)
    return useful


_callbacks: list = []  # queue_callback's functions, run when the outermost backward pass ends
_depth = [0]  # backward passes running now (checkpointing runs one inside another)


def queue_callback(fn):
    """Run ``fn()`` once the current backward pass has finished, every gradient accumulated (PyTorch's
    ``Variable._execution_engine.queue_callback``). DDP's gradient hooks use it: a leaf hook sees a gradient
    before it reaches ``.grad``, and only the end of the pass knows that every ``.grad`` is final."""
    if not _depth[0]:
        raise RuntimeError("queue_callback can only be called during the backward pass")
    _callbacks.append(fn)


_post_hooks: dict = {}  # id(leaf) -> its post-accumulate-grad hooks (Tensor.register_post_accumulate_grad_hook)


def register_post_accumulate_grad_hook(leaf, hook):
    """Call ``hook(leaf)`` in each backward pass once ``leaf.grad`` holds every gradient of that pass (after the
    last accumulation into it); returns a handle with ``remove()``. Kept here, not on the tensor, so that a
    backward without such hooks pays one dict test per pass."""
    hooks = _post_hooks.get(id(leaf))
    if hooks is None:
        hooks = _post_hooks[id(leaf)] = []
        weakref.finalize(leaf, _post_hooks.pop, id(leaf), None)  # the id may be reused once leaf is gone
    hooks.append(hook)
    return _fn._RemovableHandle(hooks, hook)


def _post_counter(seen, roots):
    """``done(leaf, g)`` for the edge loop: counts down each hooked leaf's incoming edges from the nodes of this
    pass and runs its post-accumulate hooks at the last one, when a gradient arrived on any of them."""
    pending, got = {}, set()
    for n in seen:
        for e in n.next_edges:
            if e is not None and type(e) is not tuple and id(e) in _post_hooks:
                pending[id(e)] = pending.get(id(e), 0) + 1
    for r in roots:
        if r.grad_fn is None and id(r) in _post_hooks:
            pending[id(r)] = pending.get(id(r), 0) + 1

    def done(leaf, g):
        k = id(leaf)
        left = pending.get(k)
        if left is None:
            return
        if g is not None:
            got.add(k)
        pending[k] = left - 1
        if left == 1 and k in got:
            for hook in list(_post_hooks.get(k, ())):
                hook(leaf)

    return done


def run_backward(roots, root_grads, retain_graph=False, create_graph=False, inputs=None, allow_unused=False):
    """Backpropagate ``root_grads`` from ``roots``.

    With ``inputs=None`` gradients accumulate into every leaf's ``.grad``; otherwise the gradients
    of exactly those tensors are returned (``autograd.grad``) and no ``.grad`` is touched. Callbacks queued
    during the pass run after it, in order, when it succeeded (a failed pass drops them).
    """
    _depth[0] += 1
    ok = False
    try:
        out = _run_backward(roots, root_grads, retain_graph, create_graph, inputs, allow_unused)
        ok = True
    finally:
        _depth[0] -= 1
        if not _depth[0] and _callbacks:
            queued = _callbacks[:]
            _callbacks.clear()
            if ok:
                for fn in queued:
                    fn()
    return out


def _run_backward(roots, root_grads, retain_graph, create_graph, inputs, allow_unused):
    make, zeros = roots[0]._make, roots[0]._zeros  # Tensor's constructors (this layer sits below tensor.py)
    capture_leaf, capture_node, captured = {}, {}, None
    for t in roots:
        _fn.fresh(t)
    if inputs is not None:
        captured = [None] * len(inputs)
        for i, t in enumerate(inputs):
            _fn.fresh(t)
            if not t.requires_grad:
                raise RuntimeError(f"input {i} of autograd.grad does not require grad and is not part of the graph")
            if t.grad_fn is None:
                capture_leaf.setdefault(id(t), []).append(i)
            else:
                capture_node.setdefault((t.grad_fn, t._output_nr), []).append(i)

    # Count, for every node, how many edges point at it from nodes reachable from the roots.
    seen, deps, _ = walk_graph(roots)
    post = _post_counter(seen, roots) if _post_hooks and inputs is None else None

    # autograd.grad: run only nodes that lead to a requested input; a requested non-leaf's own node need
    # not run (its gradient is captured before it would), nor anything behind it that leads nowhere
    useful = None if inputs is None else _useful_nodes(seen, capture_leaf, {n for n, _ in capture_node})

    # ids of the buffers behind arrays that a leaf's .grad must not share: the caller's gradients and
    # every .grad stored in this pass (Add hands the same array to both inputs; Reshape a view of it)
    stored = {_buffer_id(g._data) for g in root_grads}

    def accumulate(leaf, g):
        for hook in leaf._hooks or ():
            out = hook(g)
            if out is not None:
                g = out
        if inputs is not None:
            for i in capture_leaf.get(id(leaf), ()):
                captured[i] = _add(captured[i], g)
            return
        if not create_graph:
            g = g.detach()
        if leaf.grad is None:
            b = _buffer_id(g._data)
            if b in stored or b == _buffer_id(leaf._data):
                g = make(g._data.copy(), g.requires_grad, g.grad_fn)
                b = id(g._data)
            stored.add(b)
            leaf.grad = g
        else:
            leaf.grad = leaf.grad + g if create_graph else make(leaf.grad._data + g._data, False, None)

    buffers = {}
    for r, g in zip(roots, root_grads):
        if r.grad_fn is None:
            accumulate(r, g)
            if post is not None:
                post(r, g)
        else:
            buf = buffers.setdefault(r.grad_fn, [None] * r.grad_fn.n_outputs)
            buf[r._output_nr] = _add(buf[r._output_nr], g)
    ready = [n for n in seen if deps.get(n, 0) == 0]

    prev = _enabled[0]
    _enabled[0] = create_graph
    try:
        while ready:
            node = ready.pop()
            n_out = node.n_outputs
            grads = buffers.pop(node, None) or [None] * n_out
            if node._pre_hooks:
                for nr, hooks in node._pre_hooks.items():
                    for hook in hooks:
                        if grads[nr] is not None:
                            out = hook(grads[nr])
                            if out is not None:
                                grads[nr] = out
            if capture_node:
                for nr, g in enumerate(grads):
                    for i in capture_node.get((node, nr), ()):
                        captured[i] = _add(captured[i], g)
            edges = node.next_edges
            n_in = len(edges)
            if useful is not None and not useful[node]:
                has_grad = False
            elif n_out == 1:
                has_grad = grads[0] is not None
            else:
                has_grad = any(g is not None for g in grads)
            if has_grad:
                if n_out > 1 and node.materialize_grads:
                    for nr, g in enumerate(grads):
                        if g is None and node.out_meta[nr] is not None:  # missing output gradient: zeros
                            shape, dtype, dev = node.out_meta[nr]
                            grads[nr] = zeros(shape, dtype, dev)
                in_grads = type(node).backward(node, *grads)
                if type(in_grads) is not tuple:
                    in_grads = (in_grads,)
                if len(in_grads) != n_in:
                    if len(in_grads) > n_in:
                        raise RuntimeError(
                            f"function {node.name()} returned {len(in_grads)} gradients, "
                            f"but forward took {n_in} arguments"
                        )
                    in_grads = in_grads + (None,) * (n_in - len(in_grads))
                if not retain_graph:  # only nodes that ran free their buffers, as in PyTorch
                    node._release()
            else:
                in_grads = (None,) * n_in
            for e, g, meta in zip(edges, in_grads, node.in_meta):
                if e is None:
                    continue
                if g is not None:
                    if not isinstance(g, GraphTensor):
                        raise TypeError(
                            f"{node.name()}.backward returned {type(g).__name__}, expected a Tensor or None"
                        )
                    shape, dtype = meta
                    gd = g._data
                    if gd.shape != shape:
                        try:
                            g = sum_to_shape(g, shape)
                        except (ValueError, RuntimeError):
                            raise RuntimeError(
                                f"function {node.name()} returned a gradient of shape {g.shape} "
                                f"for an input of shape {shape}"
                            ) from None
                    if gd.dtype != dtype:
                        g = g.to(dtype=dtype)
                if type(e) is tuple:
                    child, nr = e
                    if g is not None:
                        buf = buffers.get(child)
                        if buf is None:
                            buf = buffers[child] = [None] * child.n_outputs
                        buf[nr] = g if buf[nr] is None else buf[nr] + g
                    d = deps[child] - 1
                    deps[child] = d
                    if d == 0:
                        ready.append(child)
                else:
                    if g is not None:
                        accumulate(e, g)
                    if post is not None:
                        post(e, g)
    finally:
        _enabled[0] = prev

    if inputs is not None:
        for i, c in enumerate(captured):
            if c is None and not allow_unused:
                raise RuntimeError(
                    f"one of the differentiated tensors (input {i}) appears to not have been used in the graph. "
                    "Set allow_unused=True if this is the desired behavior."
                )
        return tuple(captured)
    return None


def _seq(x):
    return [x] if isinstance(x, _fn.GraphTensor) else list(x)


def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False, allow_unused=False):
    """Gradients of ``outputs`` with respect to ``inputs``, returned (``.grad`` is not touched).

    ``create_graph=True`` records the backward pass so the result can be differentiated again.
    Example::

        x = conch.tensor(3.0, requires_grad=True)
        (g,) = conch.autograd.grad(x ** 3, x, create_graph=True)   # 27
        (h,) = conch.autograd.grad(g, x)                           # 6x = 18
    """
    outs, ins = _seq(outputs), _seq(inputs)
    if grad_outputs is None:
        gos = [None] * len(outs)
    else:
        gos = _seq(grad_outputs) if not isinstance(grad_outputs, (list, tuple)) else list(grad_outputs)
    if len(gos) != len(outs):
        raise RuntimeError(f"grad requires one grad_output per output: got {len(gos)} for {len(outs)} outputs")
    roots, root_grads = [], []
    for o, g in zip(outs, gos):
        if not isinstance(o, _fn.GraphTensor):
            raise TypeError(f"outputs must be Tensors, got {type(o).__name__}")
        if not o.requires_grad:
            raise RuntimeError("element 0 of tensors does not require grad and does not have a grad_fn")
        if g is None:
            if o.numel() != 1:
                raise RuntimeError(
                    f"grad can be implicitly created only for scalar outputs (output has shape {o.shape})"
                )
            g = o._make(xp_of(o._data).ones(o.shape, dtype=o.dtype))
        roots.append(o)
        root_grads.append(o._as_grad(g))
    if retain_graph is None:
        retain_graph = create_graph
    res = run_backward(roots, root_grads, retain_graph, create_graph, ins, allow_unused)
    if not create_graph:
        res = tuple(None if r is None else r.detach() for r in res)
    return res


def backward(tensors, grad_tensors=None, retain_graph=None, create_graph=False):
    """``conch.autograd.backward([y1, y2], [g1, g2])``: backward from several roots at once."""
    ts = _seq(tensors)
    gs = [None] * len(ts) if grad_tensors is None else _seq(grad_tensors)
    root_grads = []
    for t, g in zip(ts, gs):
        if g is None:
            if t.numel() != 1:
                raise RuntimeError(f"grad can be implicitly created only for scalar outputs (shape {t.shape})")
            g = t.detach() * 0 + 1
        root_grads.append(t._as_grad(g))
    run_backward(ts, root_grads, create_graph if retain_graph is None else retain_graph, create_graph)
