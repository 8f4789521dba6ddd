"""Graph nodes: saved tensors with version checks, user-defined ``Function``s and array-level ``Op``s.

A node is created per differentiable call. It records, for each input, an *edge*: ``None``
(no gradient needed), the leaf ``Tensor`` itself (gradients accumulate into ``.grad``), or a
``(node, output_nr)`` pair pointing at the node that produced the input. The engine
(``engine.py``) walks these edges backwards.
"""

from __future__ import annotations

from .grad_mode import _enabled


class GraphTensor:
    """The base of ``conch.Tensor``: what this layer records (``_data``, ``requires_grad``, ``grad_fn``,
    ``_output_nr``, ``_version``, ``_base``) and ``_make(array, requires_grad, grad_fn, version)``.

    The graph layer sits below the Tensor class and never names it: a node makes its outputs with an input's
    ``_make`` (a static method that always builds a plain Tensor), and tests ``isinstance(x, GraphTensor)``.
    """

    __slots__ = ()


class SavedTensor:
    """A tensor kept for backward: its array, version and graph position, without holding the tensor.

    Keeping the array (not the output Tensor) avoids a reference cycle ``out -> node -> out``; the
    version counter is shared with the tensor and its views, so an in-place change after saving
    is detected when the tensor is unpacked.
    """

    __slots__ = ("data", "version", "counter", "grad_fn", "output_nr", "leaf", "requires_grad", "is_output", "make")

    def __init__(self, t, is_output: bool):
        c = t._version
        rg = t.requires_grad
        fn = t.grad_fn
        self.data, self.make, self.counter, self.version = t._data, t._make, c, c[0]
        self.requires_grad, self.is_output, self.output_nr = rg, is_output, t._output_nr
        self.leaf = t if (fn is None and rg) else None
        self.grad_fn = None if is_output else fn

    def unpack(self, owner):
        if self.counter[0] != self.version:
            raise _modified(self.data.shape, owner, self.counter[0], self.version)
        if self.leaf is not None:
            return self.leaf
        t = self.make(self.data, self.requires_grad, owner if self.is_output else self.grad_fn, self.counter)
        t._output_nr = self.output_nr
        return t


def _modified(shape, owner, now, expected):
    """The error for a saved tensor (or an array a kernel kept) written in place after it was saved."""
    return RuntimeError(
        "one of the variables needed for gradient computation has been modified by an inplace "
        f"operation: a tensor of shape {tuple(shape)} saved by {type(owner).__name__} is at "
        f"version {now}; expected version {expected} instead. Hint: replace the in-place "
        "operation (+=, *=, x[...] = ..., an optimizer step) by an out-of-place one, or clone() the tensor "
        "before modifying it."
    )


def check_guards(owner):
    """Raise the saved-tensor error if a tensor whose memory ``owner``'s kernel residuals alias (an input or the
    output, kept by reference outside ``_saved``) was written in place since. ``owner._guards`` holds one
    ``(array, version counter, version at save)`` per such tensor (``fused/_common.FusedOp`` records them); the
    array is kept so that an op handed a private copy of the old values (``tensor._keep_old_values``) can tell
    which guards the copy settles."""
    for data, counter, version in owner._guards:
        if counter[0] != version:
            raise _modified(data.shape, owner, counter[0], version)


_FREED_MSG = (
    "Trying to backward through the graph a second time (or directly access saved tensors after they have "
    "already been freed). Saved intermediate values of the graph are freed when you call .backward() or "
    "autograd.grad(). Specify retain_graph=True if you need to backward through the graph a second time or "
    "if you need to access saved tensors after calling backward."
)


class Node:
    """Base of every graph node; the ``ctx`` argument of ``forward``/``backward`` is the node itself."""

    _saved = ()
    res = None  # a fused op's kernel residuals (set by its forward)
    _guards = ()  # a fused op's (array, counter, version) triples: check_guards
    _freed = False
    _pre_hooks = None
    n_outputs = 1
    materialize_grads = True  # False: an output without a gradient reaches backward as None, not zeros

    def save_for_backward(self, *tensors):
        """Keep tensors (inputs or outputs of this call) for ``backward``; read them as ``saved_tensors``."""
        self._to_save = tensors

    @property
    def saved_tensors(self):
        if self._freed:
            raise RuntimeError(_FREED_MSG)
        return tuple([None if s is None else s.unpack(self) for s in self._saved])

    def saved_tensor(self, i):
        """``saved_tensors[i]`` alone (a backward that needs one of several saved tensors skips the rest)."""
        if self._freed:
            raise RuntimeError(_FREED_MSG)
        s = self._saved[i]
        return None if s is None else s.unpack(self)

    def mark_non_differentiable(self, *tensors):
        self._non_diff = {id(t) for t in tensors}

    def set_materialize_grads(self, value: bool):
        """PyTorch's switch: with False, ``backward`` gets None for an output that received no gradient instead
        of zeros of its shape (call it in ``forward``; a class may set ``materialize_grads = False`` instead)."""
        self.materialize_grads = bool(value)

    def name(self) -> str:
        return type(self).__name__

    def _release(self):
        # kernel-backed ops keep their kernels' residual arrays in ``res``: free those too
        if self._saved or self.res is not None:
            self._saved = ()
            self.res = None
            self._guards = ()  # they hold the aliased arrays: release those with the residuals
            self._freed = True

    def register_prehook(self, output_nr, fn):
        if self._pre_hooks is None:
            self._pre_hooks = {}
        self._pre_hooks.setdefault(output_nr, []).append(fn)
        return _RemovableHandle(self._pre_hooks[output_nr], fn)

    def __repr__(self):
        return f"<{self.name()}>"


class _RemovableHandle:
    def __init__(self, lst, fn):
        self._lst, self._fn = lst, fn

    def remove(self):
        if self._fn in self._lst:
            self._lst.remove(self._fn)


def fresh(t):
    """Re-derive a view's grad_fn from its base if an in-place change (on the base or another of its views)
    has rewritten the base's history since the view was taken; otherwise leave ``t`` as it is."""
    if t._base is not None and t._vver != t._version[0]:
        t._refresh_view()
    return t


def _edge(t):
    if t._base is not None and t._vver != t._version[0]:
        t._refresh_view()
    if not t.requires_grad:
        return None
    return t if t.grad_fn is None else (t.grad_fn, t._output_nr)


class Function(Node):
    """A user-defined differentiable operation, as in PyTorch.

    Example::

        class Cube(conch.autograd.Function):
            @staticmethod
            def forward(ctx, x):           # d/dx x^3 = 3x^2
                ctx.save_for_backward(x)
                return x * x * x

            @staticmethod
            def backward(ctx, g):
                (x,) = ctx.saved_tensors
                return 3 * x * x * g

        y = Cube.apply(x)

    ``forward`` runs without recording a graph and returns a tensor or a tuple of tensors;
    ``backward`` gets one gradient per output and returns one per ``forward`` argument (``None``
    for arguments that need none).
    """

    def __init__(self, *args, **kwargs):
        raise RuntimeError(f"{type(self).__name__} is used through {type(self).__name__}.apply(...), not instantiated")

    @staticmethod
    def forward(ctx, *args, **kwargs):
        raise NotImplementedError("a Function subclass must define forward(ctx, *args)")

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError("a Function subclass must define backward(ctx, *grads)")

    @classmethod
    def apply(cls, *args, **kwargs):
        ctx = object.__new__(cls)
        tensors = [a if isinstance(a, GraphTensor) else None for a in args]
        record = _enabled[0] and any(t is not None and t.requires_grad for t in tensors)
        ctx.needs_input_grad = tuple(t is not None and t.requires_grad for t in tensors)
        ctx._to_save = ()
        prev = _enabled[0]
        _enabled[0] = False
        try:
            out = cls.forward(ctx, *args, **kwargs)
        finally:
            _enabled[0] = prev
        single = not isinstance(out, tuple)
        outs = (out,) if single else out
        inputs = {id(t) for t in tensors if t is not None}
        wrapped = []
        for o in outs:
            if isinstance(o, GraphTensor) and id(o) in inputs:  # returning an input: give it its own node
                o = o._make(o._data, False, None, o._version)
            wrapped.append(o)
        if record:
            non_diff = getattr(ctx, "_non_diff", ())
            ctx.next_edges = tuple(None if t is None else _edge(t) for t in tensors)
            ctx.in_meta = tuple(None if t is None else (t.shape, t.dtype) for t in tensors)
            ctx.out_meta = []
            for i, o in enumerate(wrapped):
                if isinstance(o, GraphTensor) and id(o) not in non_diff and o.is_floating_point():
                    o.grad_fn, o._output_nr, o.requires_grad = ctx, i, True
                ctx.out_meta.append((o.shape, o.dtype, o.device) if isinstance(o, GraphTensor) else None)
            ctx.n_outputs = len(wrapped)
            outs_ids = {id(o) for o in wrapped}
            ctx._saved = tuple(None if t is None else SavedTensor(t, id(t) in outs_ids) for t in ctx._to_save)
        ctx._to_save = ()
        return wrapped[0] if single else tuple(wrapped)


class Op(Node):
    """A built-in operation: ``forward`` works on raw arrays, ``backward`` on Tensors.

    ``saves`` names what backward needs: input positions (ints) and/or ``"out"``. Other state
    (dims, masks as arrays, flags) is stored on ``ctx`` as plain attributes. Because backward is
    written with Tensor operations, it can itself be differentiated (``create_graph=True``).
    """

    saves: tuple = ()
    # with two inputs saved as (0, 1): input 0 is read only by input 1's gradient and the other way round (a * b,
    # a @ b), so each is saved only when the other requires grad, as PyTorch's generated nodes do (an in-place
    # write into an operand whose partner needs no gradient is then no error, and no SavedTensor is built)
    cross_saves = False

    @staticmethod
    def forward(ctx, *arrays, **attrs):
        raise NotImplementedError

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError

    @classmethod
    def apply(cls, *tensors, **attrs):
        # the hot path of every op: kept to plain loops and attribute reads (see benchmarks/bench_overhead.py)
        ctx = _new(cls)
        t0 = tensors[0]
        make = t0._make  # Tensor._make: this layer does not import the Tensor class above it
        if _enabled[0]:
            record = False
            for t in tensors:
                if t._base is not None and t._vver != t._version[0]:
                    t._refresh_view()  # a view whose base changed in place: its grad_fn is re-derived first
                if t.requires_grad:
                    record = True
            if record:
                return _record(cls, ctx, make, tensors, attrs)
        # one or two inputs (nearly every call) pass their arrays without building a list
        n = len(tensors)
        if n == 1:
            out = cls.forward(ctx, t0._data, **attrs)
        elif n == 2:
            out = cls.forward(ctx, t0._data, tensors[1]._data, **attrs)
        else:
            out = cls.forward(ctx, *[t._data for t in tensors], **attrs)
        if type(out) is tuple:
            return tuple(make(o) for o in out)
        return make(out)


_new = object.__new__


def _record(cls, ctx, make, tensors, attrs):
    """``Op.apply`` when a node is recorded: edges, input metadata, the forward, outputs, saved tensors."""
    if len(tensors) == 1:  # one input (and it requires grad, or apply would not record): no loop, no lists
        t = tensors[0]
        ctx.needs_input_grad = _ONE
        out = cls.forward(ctx, t._data, **attrs)
        if type(out) is not tuple:
            return record1(ctx, t, out)
        d = t._data
        fn = t.grad_fn
        ctx.next_edges, ctx.in_meta = (t if fn is None else (fn, t._output_nr),), ((d.shape, d.dtype),)
    elif len(tensors) == 2:  # two inputs, the other common case: no loop, no lists either
        t, u = tensors
        rt, ru = t.requires_grad, u.requires_grad
        ctx.needs_input_grad = (rt, ru)
        out = cls.forward(ctx, t._data, u._data, **attrs)
        if type(out) is not tuple:
            return _node2(ctx, t, u, rt, ru, out)
        d, e = t._data, u._data
        ctx.next_edges = (
            ((t if t.grad_fn is None else (t.grad_fn, t._output_nr)) if rt else None),
            ((u if u.grad_fn is None else (u.grad_fn, u._output_nr)) if ru else None),
        )
        ctx.in_meta = ((d.shape, d.dtype), (e.shape, e.dtype))
    else:
        needs, edges, meta, arrays = [], [], [], []
        for t in tensors:
            d = t._data
            arrays.append(d)
            meta.append((d.shape, d.dtype))
            if t.requires_grad:
                needs.append(True)
                fn = t.grad_fn
                edges.append(t if fn is None else (fn, t._output_nr))
            else:
                needs.append(False)
                edges.append(None)
        ctx.needs_input_grad = tuple(needs)
        out = cls.forward(ctx, *arrays, **attrs)
        ctx.next_edges, ctx.in_meta = edges, meta
    saves = cls.saves
    if type(out) is not tuple:
        res = make(out, True, ctx)
        if saves:
            ctx._saved = tuple([_saved_output(res) if s == "out" else SavedTensor(tensors[s], False)
                                for s in saves])  # fmt: skip
        return res
    res = tuple(make(o, True, ctx) for o in out)
    for i, r in enumerate(res):
        r._output_nr = i
    ctx.n_outputs = len(res)
    ctx.out_meta = [(r.shape, r.dtype, r.device) for r in res]
    if saves:
        ctx._saved = tuple([SavedTensor(tensors[s], False) for s in saves])
    return res


_ONE = (True,)


def record1(ctx, t, out):
    """The output Tensor of the one-input Op node ``ctx`` (``object.__new__(cls)``, with whatever its backward
    reads already set on it) on ``t`` for array ``out``, its forward's result, computed by the caller.

    For the fast paths of the Tensor methods (relu/tanh/sigmoid, reshape, permute, sum, mean, the scalar
    arithmetic), called when grad mode is on and ``t`` requires grad or is a view: the view's history is
    refreshed first, then ``ctx`` is recorded if ``t`` requires grad (its edge, input metadata, what
    ``type(ctx).saves`` names: ``"out"`` or ``0``), else a plain tensor comes back. Example::

        y = record1(object.__new__(ops.Tanh), x, np.tanh(x._data))   # ops.Tanh.apply(x) under grad mode
    """
    if t._base is not None and t._vver != t._version[0]:
        t._refresh_view()
    if not t.requires_grad:
        return t._make(out)
    fn = t.grad_fn
    d = t._data
    ctx.needs_input_grad = _ONE
    ctx.next_edges = (t if fn is None else (fn, t._output_nr),)
    ctx.in_meta = ((d.shape, d.dtype),)
    res = t._make(out, True, ctx)
    saves = ctx.saves
    if saves:
        if saves == _OUT:  # relu, tanh, sigmoid, exp...: no loop
            ctx._saved = (_saved_output(res),)
        else:
            ctx._saved = tuple([_saved_output(res) if s == "out" else SavedTensor(t, False) for s in saves])
    return res


_OUT = ("out",)


def binary(cls, t, u, out):
    """The output Tensor of two-input Op ``cls`` on ``t`` and ``u`` for array ``out``, its forward's result
    computed by the caller without a ctx (Add, Sub, Mul, Div, MatMul keep nothing on it): a node when grad mode
    is on and either input requires grad (a view's history refreshed first), else a plain tensor.

    Example: ``binary(ops.Mul, x, y, x._data * y._data)`` is ``ops.Mul.apply(x, y)``.
    """
    if _enabled[0]:
        if t._base is not None and t._vver != t._version[0]:
            t._refresh_view()
        if u._base is not None and u._vver != u._version[0]:
            u._refresh_view()
        rt, ru = t.requires_grad, u.requires_grad
        if rt or ru:
            ctx = _new(cls)
            ctx.needs_input_grad = (rt, ru)
            return _node2(ctx, t, u, rt, ru, out)
    return t._make(out)


def _node2(ctx, t, u, rt, ru, out):
    """``binary``'s and ``_record``'s node for two inputs and one output array (``needs_input_grad`` set)."""
    d, e = t._data, u._data
    ctx.next_edges = (
        ((t if t.grad_fn is None else (t.grad_fn, t._output_nr)) if rt else None),
        ((u if u.grad_fn is None else (u.grad_fn, u._output_nr)) if ru else None),
    )
    ctx.in_meta = ((d.shape, d.dtype), (e.shape, e.dtype))
    res = t._make(out, True, ctx)
    saves = ctx.saves
    if saves:
        if ctx.cross_saves:
            ctx._saved = (SavedTensor(t, False) if ru else None, SavedTensor(u, False) if rt else None)
        else:
            ctx._saved = tuple([_saved_output(res) if s == "out" else SavedTensor(u if s else t, False)
                                for s in saves])  # fmt: skip
    return res


def _saved_output(res):
    """``SavedTensor(res, True)`` for an op's fresh output ``res`` (version 0, this node its grad_fn), without
    reading back what the caller just set."""
    s = _new(SavedTensor)
    s.data, s.make, s.counter, s.version, s.requires_grad = res._data, res._make, res._version, 0, True
    s.is_output, s.output_nr, s.leaf, s.grad_fn = True, 0, None, None
    return s
