"""Property-based tests: random small graphs of differentiable ops against finite differences and the saved-tensor rule.

Hypothesis draws a few float64 leaves (1-3 dims of sizes 1-4, so size-1 dims and broadcasting are common) and a
short program over them: elementwise unary and binary ops with broadcasting, reductions, matmul, softmax and
log_softmax, layer_norm, gelu/silu, attention, cross_entropy and views (transpose, permute, reshape, slicing,
indexing, unsqueeze/squeeze, expand). Two properties:

- every leaf's gradient agrees with float64 central differences (``conch.autograd.gradcheck``);
- an in-place write into a result before backward raises exactly when an op kept that result's memory for its
  backward (a view shares its base's memory), by PyTorch's table of what each op saves, written here
  independently of conch: softmax keeps its output, mul its operands, a sum nothing, cross_entropy nothing the
  caller can write.

``derandomize=True``: the examples are the same on every run, so CI is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import conch
import conch.nn.functional as F
from conch.autograd import gradcheck

SETTINGS = settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow], database=None
)


@dataclass
class Op:
    """One op of the list: ``plan(data, *shapes)`` draws its parameters (None: not applicable to these shapes),
    ``run(params, *operands)`` computes it, ``saves(params)`` names what PyTorch keeps for backward ("a", "b",
    "out"; a view of an operand counts as that operand), ``view`` that the result shares operand a's memory."""

    arity: int
    plan: object
    run: object
    saves: object = lambda p: ()
    view: bool = False


def _any(data, shape):
    return ()


def _dim(data, shape):
    return None if not shape else (data.draw(st.integers(0, len(shape) - 1)),)


def _nd(n):
    return lambda data, shape: () if len(shape) >= n else None


def _transpose(data, shape):
    if len(shape) < 2:
        return None
    d0, d1 = data.draw(st.lists(st.integers(0, len(shape) - 1), min_size=2, max_size=2, unique=True))
    return (d0, d1)


def _permute(data, shape):
    return None if len(shape) < 2 else (tuple(data.draw(st.permutations(range(len(shape))))),)


def _slice(data, shape):
    if not shape:
        return None
    d = data.draw(st.integers(0, len(shape) - 1))
    lo = data.draw(st.integers(0, shape[d] - 1))
    hi = data.draw(st.integers(lo + 1, shape[d]))
    return (d, lo, hi)


def _select(data, shape):
    return None if not shape else (data.draw(st.integers(-shape[0], shape[0] - 1)),)


def _unsqueeze(data, shape):
    return None if len(shape) >= 4 else (data.draw(st.integers(0, len(shape))),)


def _squeeze(data, shape):
    ones = [i for i, s in enumerate(shape) if s == 1]
    return None if not ones else (data.draw(st.sampled_from(ones)),)


def _expand(data, shape):
    ones = [i for i, s in enumerate(shape) if s == 1]
    if not ones:
        return None
    d = data.draw(st.sampled_from(ones))
    return (tuple(data.draw(st.integers(2, 3)) if i == d else s for i, s in enumerate(shape)),)


def _reduce(data, shape):
    if not shape:
        return None
    return (data.draw(st.integers(0, len(shape) - 1)), data.draw(st.booleans()))


def _cross_entropy(data, shape):
    if len(shape) != 2:
        return None
    t = tuple(data.draw(st.lists(st.integers(0, shape[1] - 1), min_size=shape[0], max_size=shape[0])))
    return (t, data.draw(st.sampled_from(["none", "mean", "sum"])))


def _broadcast(data, sa, sb):
    try:
        np.broadcast_shapes(sa, sb)
        return (True,)
    except ValueError:
        return (False,)  # not broadcastable: b's mean (0-d) stands in for b


def _b(params, b):
    return b if params[0] else b.mean()


def _matmul(data, sa, sb):
    if not sa:
        return None
    k = sa[-1]
    if sb and (sb[0] if len(sb) == 1 else sb[-2]) == k:
        try:
            if len(sa) > 2 and len(sb) > 2:
                np.broadcast_shapes(sa[:-2], sb[:-2])
            return ("b",)
        except ValueError:
            pass
    return ("self",)  # a @ aᵀ (a · a for 1-D): always defined


def _run_matmul(params, a, b):
    if params[0] == "b":
        return a @ b
    return a @ (a if a.ndim == 1 else a.transpose(-1, -2))


OPS = {
    # unary elementwise (bounded, so that chains stay well inside finite differences' accuracy)
    "tanh": Op(1, _any, lambda p, a: a.tanh(), lambda p: ("out",)),
    "sigmoid": Op(1, _any, lambda p, a: a.sigmoid(), lambda p: ("out",)),
    "sin": Op(1, _any, lambda p, a: a.sin(), lambda p: ("a",)),
    "exp_tanh": Op(1, _any, lambda p, a: a.tanh().exp(), lambda p: ("out",)),
    "log1p_square": Op(1, _any, lambda p, a: (a * a).log1p(), lambda p: ("a",)),
    "scale_shift": Op(1, _any, lambda p, a: a * 0.5 - 1.0),
    "gelu": Op(1, _any, lambda p, a: F.gelu(a), lambda p: ("a",)),
    "silu": Op(1, _any, lambda p, a: F.silu(a), lambda p: ("a",)),
    # row-wise
    "softmax": Op(1, _dim, lambda p, a: F.softmax(a, p[0]), lambda p: ("out",)),
    "log_softmax": Op(1, _dim, lambda p, a: F.log_softmax(a, p[0]), lambda p: ("out",)),
    "layer_norm": Op(1, _nd(1), lambda p, a: F.layer_norm(a, a.shape[-1:]), lambda p: ("a",)),
    "attention": Op(1, _nd(2), lambda p, a: F.scaled_dot_product_attention(a, a, a), lambda p: ("a", "out")),
    "cross_entropy": Op(1, _cross_entropy, lambda p, a: F.cross_entropy(a, conch.tensor(list(p[0])), reduction=p[1])),
    # reductions
    "sum": Op(1, _reduce, lambda p, a: a.sum(p[0], keepdim=p[1])),
    "mean": Op(1, _reduce, lambda p, a: a.mean(p[0], keepdim=p[1])),
    "sum_all": Op(1, _any, lambda p, a: a.sum()),
    # views
    "transpose": Op(1, _transpose, lambda p, a: a.transpose(*p), view=True),
    "permute": Op(1, _permute, lambda p, a: a.permute(*p[0]), view=True),
    "slice": Op(1, _slice, lambda p, a: a[(slice(None),) * p[0] + (slice(p[1], p[2]),)], view=True),
    "select": Op(1, _select, lambda p, a: a[p[0]], view=True),
    "unsqueeze": Op(1, _unsqueeze, lambda p, a: a.unsqueeze(p[0]), view=True),
    "squeeze": Op(1, _squeeze, lambda p, a: a.squeeze(p[0]), view=True),
    "expand": Op(1, _expand, lambda p, a: a.expand(*p[0]), view=True),
    "reshape": Op(1, _nd(1), lambda p, a: a.reshape(-1), view=True),  # a copy when the strides do not allow a view
    # binary, broadcasting
    "add": Op(2, _broadcast, lambda p, a, b: a + _b(p, b)),
    "sub": Op(2, _broadcast, lambda p, a, b: _b(p, b) - a),
    "mul": Op(2, _broadcast, lambda p, a, b: a * _b(p, b), lambda p: ("a", "b") if p[0] else ("a",)),
    "div": Op(2, _broadcast, lambda p, a, b: a / (_b(p, b) * _b(p, b) + 1), lambda p: ("a", "b") if p[0] else ("a",)),
    "matmul": Op(2, _matmul, _run_matmul, lambda p: ("a", "b") if p[0] == "b" else ("a",)),
}

SHAPES = st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple)


@dataclass
class Step:
    name: str
    args: tuple  # pool positions of the operands
    params: tuple


def _draw_program(data):
    """Leaves' shapes and a program, drawn by running it once (each op's applicability depends on shapes)."""
    shapes = data.draw(st.lists(SHAPES, min_size=1, max_size=3), label="shapes")
    pool = [conch.zeros(*s, dtype=conch.float64) for s in shapes]
    steps = []
    for _ in range(data.draw(st.integers(1, 4), label="length")):
        for _attempt in range(20):
            name = data.draw(st.sampled_from(sorted(OPS)))
            op = OPS[name]
            args = tuple(data.draw(st.integers(0, len(pool) - 1)) for _ in range(op.arity))
            params = op.plan(data, *(pool[i].shape for i in args))
            if params is not None:
                break
        else:
            continue
        steps.append(Step(name, args, params))
        pool.append(op.run(params, *(pool[i] for i in args)))
    return shapes, steps


def _leaves(shapes, seed):
    rng = np.random.default_rng(seed)
    return [
        conch.tensor(np.clip(rng.standard_normal(s), -2, 2), dtype=conch.float64, requires_grad=True) for s in shapes
    ]


def _replay(steps, leaves):
    pool = list(leaves)
    for s in steps:
        pool.append(OPS[s.name].run(s.params, *(pool[i] for i in s.args)))
    return pool


@SETTINGS
@given(st.data())
def test_random_graph_gradients_match_finite_differences(data):
    shapes, steps = _draw_program(data)
    leaves = _leaves(shapes, data.draw(st.integers(0, 2**16), label="seed"))
    n = len(leaves)
    for s in steps:
        event(s.name)
    event(f"elements: {sum(x.numel() for x in leaves) // 10 * 10}+")

    def fn(*xs):
        return tuple(_replay(steps, xs)[n:])  # every intermediate is an output: each op's gradient is checked

    assert gradcheck(fn, leaves), steps


@SETTINGS
@given(st.data())
def test_random_graph_inplace_write_raises_exactly_when_saved(data):
    shapes, steps = _draw_program(data)
    leaves = _leaves(shapes, 0)
    n = len(leaves)
    pool = list(leaves)
    # memory bookkeeping, independent of conch's version counters: a storage id per pool entry (a view takes its
    # operand's), whether it aliases a leaf (writes raise the leaf error) or an expanded view (several elements
    # share one location: writes raise), and the storages some op keeps for backward
    storage, on_leaf, expanded, kept = list(range(n)), [True] * n, [False] * n, set()
    for k, s in enumerate(steps):
        op = OPS[s.name]
        ops_ = [pool[i] for i in s.args]
        out = op.run(s.params, *ops_)
        a = s.args[0]
        is_view = op.view and np.shares_memory(out._data, ops_[0]._data)
        storage.append(storage[a] if is_view else n + k)
        on_leaf.append(on_leaf[a] if is_view else False)
        expanded.append((expanded[a] or s.name == "expand") if is_view else False)
        for what in op.saves(s.params):
            kept.add(storage[-1] if what == "out" else storage[s.args["ab".index(what)]])
        pool.append(out)
    targets = [i for i in range(n, len(pool)) if not on_leaf[i] and not expanded[i]]
    if not targets:
        event("no writable result")
        return
    t = data.draw(st.sampled_from(targets), label="written")
    pool[t].mul_(1.5)
    loss = sum(p.sum() for p in pool[n:])
    event("kept: must raise" if storage[t] in kept else "not kept: must not raise")
    if storage[t] in kept:
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()
    else:
        loss.backward()  # nothing kept that memory: no error
        assert all(x.grad is None or np.isfinite(x.grad._data).all() for x in leaves)
