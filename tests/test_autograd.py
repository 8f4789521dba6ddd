"""Engine semantics: accumulation, shared and unused inputs, grad modes, retain_graph, hooks, Functions, grad()."""

import gc
import weakref

import numpy as np
import pytest

import conch
from conch.autograd import Function, gradcheck, gradgradcheck


def mk(a, device, grad=True):
    return conch.tensor(np.asarray(a, dtype=np.float64), dtype=conch.float64, device=device, requires_grad=grad)


def npy(t):
    return t.detach().cpu().numpy()


def rnd(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# ---------------------------------------------------------------- accumulation and graph shape


def test_grad_accumulates_across_backward_calls(device):
    x = mk([1.0, 2.0], device)
    (x * 3).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_allclose(npy(x.grad), [3 + 2, 3 + 4])
    x.grad = None
    (x * 3).sum().backward()
    np.testing.assert_allclose(npy(x.grad), [3, 3])


def test_grad_is_not_aliased_with_other_buffers(device):
    # the first gradient stored into .grad must not share memory with the upstream gradient or another .grad
    x, y = mk([1.0, 2.0], device), mk([1.0, 2.0], device)
    g = conch.ones(2, dtype=conch.float64, device=device)
    (x + y).backward(g)
    x.grad += 1
    np.testing.assert_array_equal(npy(y.grad), [1, 1])
    np.testing.assert_array_equal(npy(g), [1, 1])
    a, w = mk([1.0, 2.0], device), mk([[1.0, 2.0]], device)
    (a.reshape(1, 2) + w).sum().backward()  # a.grad is a reshape of the array handed to w.grad
    a.grad += 1
    np.testing.assert_array_equal(npy(w.grad), [[1, 1]])


def test_walk_graph_counts_dependencies_and_finds_leaves_once():
    from conch.autograd.engine import walk_graph

    x, w = mk([1.0, 2.0], "cpu"), mk([3.0, 4.0], "cpu")
    h = x * w  # consumed twice below: its node has two dependencies
    y = h.exp() + h * w  # w reached twice, as a leaf of two nodes
    nodes, deps, leaves = walk_graph([y], with_leaves=True)
    assert len(nodes) == 4 and y.grad_fn in nodes and y.grad_fn not in deps  # add, exp, h * w, h = x * w
    assert deps[h.grad_fn] == 2 and all(deps[n] == 1 for n in nodes if n not in (h.grad_fn, y.grad_fn))
    assert {id(t) for t in leaves} == {id(x), id(w)} and len(leaves) == 2
    assert walk_graph([y])[2] == [] and walk_graph([x]) == (set(), {}, [])


def test_tensor_used_in_several_places(device):
    a = rnd(3)
    x = mk(a, device)
    y = x * x + x.exp() * x + x[0] + x.sum()  # x reaches the loss along five paths
    y.sum().backward()
    ref = 2 * a + np.exp(a) * (a + 1) + 3
    ref[0] += 3
    np.testing.assert_allclose(npy(x.grad), ref, rtol=1e-12)


def test_diamond_graph_runs_each_node_once(device):
    calls = []

    class Tap(Function):
        @staticmethod
        def forward(ctx, x):
            return x * 1

        @staticmethod
        def backward(ctx, g):
            calls.append(1)
            return g

    x = mk(rnd(4), device)
    h = Tap.apply(x)
    out = (h.sin() + h.cos() + h * 2).sum()
    out.backward()
    assert len(calls) == 1  # the dependency count waits for all three consumers
    np.testing.assert_allclose(npy(x.grad), np.cos(npy(x)) - np.sin(npy(x)) + 2, rtol=1e-12)


def test_long_chain_no_recursion_limit(device):
    x = mk([0.5], device)
    y = x
    for _ in range(5000):
        y = y * 1.0001
    y.backward(conch.ones(1, dtype=conch.float64, device=device))
    np.testing.assert_allclose(npy(x.grad), [1.0001**5000], rtol=1e-9)


def test_unused_inputs_and_allow_unused(device):
    x, y = mk([1.0, 2.0], device), mk([3.0], device)
    out = (x * 2).sum()
    gx, gy = conch.autograd.grad(out, [x, y], allow_unused=True, retain_graph=True)
    np.testing.assert_array_equal(npy(gx), [2, 2])
    assert gy is None
    with pytest.raises(RuntimeError, match="input 1.*not have been used in the graph.*allow_unused=True"):
        conch.autograd.grad(out, [x, y], retain_graph=True)
    out.backward()
    assert y.grad is None


def test_non_float_and_no_grad_inputs_get_no_grad(device):
    x = mk([1.0, 2.0], device)
    c = conch.tensor([3.0, 4.0], device=device, dtype=conch.float64)
    i = conch.tensor([1, 2], device=device)
    (x * c + i).sum().backward()
    assert c.grad is None and i.grad is None
    np.testing.assert_array_equal(npy(x.grad), [3, 4])


def test_graph_is_freed_after_backward(device):
    x = mk(rnd(3), device)
    y = x.exp()
    node = y.grad_fn
    ref = weakref.ref(node)
    y.sum().backward()
    assert node._saved == () and node._freed
    del y, node
    gc.collect()
    assert ref() is None


# ---------------------------------------------------------------- grad modes


def test_no_grad_context_and_decorator(device):
    x = mk([1.0], device)
    with conch.no_grad():
        y = x * 2
        assert not conch.is_grad_enabled()
    assert conch.is_grad_enabled()
    assert not y.requires_grad and y.grad_fn is None

    @conch.no_grad()
    def f(t):
        return t * 2

    @conch.no_grad
    def g(t):
        return t * 2

    assert not f(x).requires_grad and not g(x).requires_grad
    assert f.__name__ == "f"
    assert conch.is_grad_enabled()


def test_enable_grad_inside_no_grad(device):
    x = mk([1.0], device)

    @conch.enable_grad()
    def f(t):
        return t * 2

    @conch.enable_grad
    def g(t):
        return t * 2

    with conch.no_grad():
        assert f(x).requires_grad and g(x).requires_grad
        with conch.enable_grad():
            assert (x * 2).requires_grad
        assert not (x * 2).requires_grad


def test_grad_mode_restored_after_exception(device):
    @conch.no_grad()
    def boom():
        raise ValueError("x")

    with pytest.raises(ValueError):
        boom()
    assert conch.is_grad_enabled()
    with pytest.raises(ValueError), conch.no_grad():
        raise ValueError("y")
    assert conch.is_grad_enabled()


def test_set_grad_enabled(device):
    x = mk([1.0], device)
    with conch.set_grad_enabled(False):
        assert not (x * 2).requires_grad
    assert (x * 2).requires_grad
    conch.set_grad_enabled(False)
    try:
        assert not conch.is_grad_enabled()
    finally:
        conch.set_grad_enabled(True)


# ---------------------------------------------------------------- retain_graph and backward options


def test_retain_graph_allows_second_backward(device):
    x = mk([1.0, -2.0], device)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_array_equal(npy(x.grad), [4, -8])


def test_backward_with_explicit_gradient(device):
    a, g = rnd(2, 3), rnd(2, 3, seed=1)
    x = mk(a, device)
    (x * 3).backward(mk(g, device, False))
    np.testing.assert_allclose(npy(x.grad), 3 * g)
    y = mk(a, device)
    (y * 3).backward(g)  # a NumPy array is accepted as the gradient too
    np.testing.assert_allclose(npy(y.grad), 3 * g)


def test_backward_inputs_restricts_accumulation(device):
    x, y = mk([1.0, 2.0], device), mk([3.0, 4.0], device)
    (x * y).sum().backward(inputs=[x])
    np.testing.assert_array_equal(npy(x.grad), [3, 4])
    assert y.grad is None
    (x * y).sum().backward(inputs=y)
    np.testing.assert_array_equal(npy(y.grad), [1, 2])
    np.testing.assert_array_equal(npy(x.grad), [3, 4])


def test_backward_inputs_non_leaf(device):
    x = mk([1.0, 2.0], device)
    h = x * 2
    (h * h).sum().backward(inputs=[h])
    np.testing.assert_array_equal(npy(h.grad), [4, 8])
    assert x.grad is None


def test_autograd_backward_several_roots(device):
    x = mk([1.0, 2.0], device)
    conch.autograd.backward([(x * 2).sum(), (x * x).sum()])
    np.testing.assert_array_equal(npy(x.grad), [4, 6])


# ---------------------------------------------------------------- hooks, retain_grad, detach


def test_leaf_hook_replaces_gradient_and_remove(device):
    x = mk([1.0, 2.0], device)
    seen = []
    h = x.register_hook(lambda g: g * 10)
    h2 = x.register_hook(lambda g: seen.append(npy(g)))  # returns None: observe only
    (x * 3).sum().backward()
    np.testing.assert_array_equal(npy(x.grad), [30, 30])
    np.testing.assert_array_equal(seen[0], [30, 30])  # hooks run in order, each sees the previous result
    h.remove()
    h2.remove()
    x.grad = None
    (x * 3).sum().backward()
    np.testing.assert_array_equal(npy(x.grad), [3, 3])
    assert len(seen) == 1


def test_non_leaf_hook(device):
    x = mk([1.0, 2.0], device)
    y = x * 2
    seen = []
    y.register_hook(lambda g: seen.append(npy(g)))
    h = y.register_hook(lambda g: g + 1)
    (y * y).sum().backward()
    np.testing.assert_array_equal(seen[0], [4, 8])  # dL/dy = 2y
    np.testing.assert_array_equal(npy(x.grad), [(4 + 1) * 2, (8 + 1) * 2])
    assert y.grad is None  # a non-leaf keeps no .grad unless retain_grad() was called
    h.remove()
    x.grad = None
    z = x * 2
    z.register_hook(lambda g: g * 0)
    (z * 1).sum().backward()
    np.testing.assert_array_equal(npy(x.grad), [0, 0])


def test_hook_on_tensor_without_grad_raises(device):
    with pytest.raises(RuntimeError, match="doesn't require gradient"):
        conch.ones(2, device=device).register_hook(lambda g: g)


def test_retain_grad(device):
    x = mk([1.0, 2.0], device)
    y = x * 3
    y.retain_grad()
    z = y * y
    z.retain_grad()
    z.sum().backward()
    np.testing.assert_array_equal(npy(y.grad), [6, 12])
    np.testing.assert_array_equal(npy(z.grad), [1, 1])
    x.retain_grad()  # no-op on a leaf
    assert not y.grad.requires_grad


def test_detach_and_requires_grad_(device):
    x = mk([1.0, 2.0], device)
    d = (x * 2).detach()
    assert not d.requires_grad and d.grad_fn is None and d.is_leaf
    d.requires_grad_()
    (d * 3).sum().backward()
    np.testing.assert_array_equal(npy(d.grad), [3, 3])
    assert x.grad is None
    e = x.detach()
    e[0] = 10.0  # detach shares memory
    assert x[0].item() == 10.0
    w = conch.zeros(2, device=device)
    assert w.requires_grad_() is w and w.requires_grad
    w.requires_grad_(False)
    assert not w.requires_grad


def test_detach_blocks_gradient(device):
    x = mk([2.0], device)
    y = x * x.detach()  # only one factor is differentiated
    y.backward()
    np.testing.assert_array_equal(npy(x.grad), [2])


# ---------------------------------------------------------------- custom Function


class Cube(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * x * x * g


class ScaleShift(Function):
    """(x * k + y, x * y) with a non-tensor argument k in the middle."""

    @staticmethod
    def forward(ctx, x, k, y):
        ctx.save_for_backward(x, y)
        ctx.k = k
        ctx.seen_needs = ctx.needs_input_grad
        return x * k + y, x * y

    @staticmethod
    def backward(ctx, g1, g2):
        x, y = ctx.saved_tensors
        n = ctx.needs_input_grad
        gx = g1 * ctx.k + g2 * y if n[0] else None
        gy = g1 + g2 * x if n[2] else None
        return gx, None, gy


def test_custom_function_single_output(device):
    a = rnd(2, 3)
    x = mk(a, device)
    y = Cube.apply(x)
    assert y.requires_grad and isinstance(y.grad_fn, Cube)
    np.testing.assert_allclose(npy(y), a**3)
    assert gradcheck(Cube.apply, (x,))
    assert gradgradcheck(Cube.apply, (x,))  # the backward is written with Tensor ops: differentiable


def test_custom_function_multiple_outputs_and_non_tensor_args(device):
    x, y = mk(rnd(3), device), mk(rnd(3, seed=1), device)
    assert gradcheck(lambda a, b: ScaleShift.apply(a, 2.5, b), (x, y))
    assert gradgradcheck(lambda a, b: ScaleShift.apply(a, 2.5, b), (x, y))
    o1, o2 = ScaleShift.apply(x, 2.0, y)
    o1.sum().backward()  # the unused output's gradient arrives as zeros
    np.testing.assert_allclose(npy(x.grad), [2, 2, 2])
    np.testing.assert_allclose(npy(y.grad), [1, 1, 1])


def test_custom_function_needs_input_grad(device):
    x = mk([1.0], device)
    c = conch.tensor([2.0], dtype=conch.float64, device=device)
    o1, _ = ScaleShift.apply(x, 3.0, c)
    assert o1.grad_fn.seen_needs == (True, False, False)
    o1.sum().backward()
    assert c.grad is None
    np.testing.assert_array_equal(npy(x.grad), [3])


def test_custom_function_without_grad_inputs_records_nothing(device):
    x = conch.ones(2, dtype=conch.float64, device=device)
    y = Cube.apply(x)
    assert not y.requires_grad and y.grad_fn is None
    with conch.no_grad():
        assert Cube.apply(mk([1.0], device)).grad_fn is None


def test_custom_function_saved_tensors_version_check(device):
    x = mk([1.0, 2.0], device)
    h = x * 1
    y = Cube.apply(h)
    with conch.no_grad():
        h += 1
    with pytest.raises(RuntimeError, match=r"modified by an inplace operation.*Cube.*version 1.*expected version 0"):
        y.sum().backward()


def test_custom_function_mark_non_differentiable(device):
    class SortIdx(Function):
        @staticmethod
        def forward(ctx, x):
            idx = conch.tensor(np.argsort(npy(x)).astype(np.float64), device=x.device)
            ctx.mark_non_differentiable(idx)
            return x * 2, idx

        @staticmethod
        def backward(ctx, g, gi):
            return g * 2

    y, i = SortIdx.apply(mk([3.0, 1.0], device))
    assert y.requires_grad and not i.requires_grad


@pytest.mark.parametrize("materialize", [True, False])
def test_custom_function_set_materialize_grads(device, materialize):
    # PyTorch's switch: an output nobody differentiates reaches backward as zeros (default) or as None
    seen = []

    class Two(Function):
        @staticmethod
        def forward(ctx, x):
            ctx.set_materialize_grads(materialize)
            return x * 2, x * 3

        @staticmethod
        def backward(ctx, ga, gb):
            seen.append(gb)
            return ga * 2 if gb is None else ga * 2 + gb * 3

    x = mk([1.0, -2.0], device)
    a, _ = Two.apply(x)
    a.sum().backward()
    np.testing.assert_array_equal(npy(x.grad), [2.0, 2.0])
    if materialize:
        np.testing.assert_array_equal(npy(seen[0]), [0.0, 0.0])
    else:
        assert seen == [None]


def test_function_cannot_be_instantiated():
    with pytest.raises(RuntimeError, match=r"\.apply"):
        Cube()


def test_function_wrong_number_of_gradients(device):
    class Bad(Function):
        @staticmethod
        def forward(ctx, x):
            return x * 1

        @staticmethod
        def backward(ctx, g):
            return g, g

    with pytest.raises(RuntimeError, match="returned 2 gradients.*1 arguments"):
        Bad.apply(mk([1.0], device)).sum().backward()


# ---------------------------------------------------------------- autograd.grad and higher order


def test_grad_create_graph_second_and_third_derivatives(device):
    x = mk(3.0, device)
    (g,) = conch.autograd.grad(x**3, x, create_graph=True)
    assert g.requires_grad
    (h,) = conch.autograd.grad(g, x, create_graph=True)
    (k,) = conch.autograd.grad(h, x)
    assert (g.item(), h.item(), k.item()) == (27.0, 18.0, 6.0)
    assert x.grad is None  # grad() does not touch .grad


def test_grad_without_create_graph_is_detached(device):
    x = mk([1.0, 2.0], device)
    (g,) = conch.autograd.grad((x**2).sum(), x)
    assert not g.requires_grad and g.grad_fn is None


def test_backward_create_graph_then_grad_of_grad(device):
    a = rnd(3)
    x = mk(a, device)
    (x.sin() * x).sum().backward(create_graph=True)
    g = x.grad
    assert g.requires_grad
    (h,) = conch.autograd.grad(g.sum(), x)
    np.testing.assert_allclose(npy(h), 2 * np.cos(a) - a * np.sin(a), rtol=1e-12)


def test_grad_with_grad_outputs_and_several_outputs(device):
    a, v = rnd(2, 3), rnd(2, 3, seed=1)
    x = mk(a, device)
    y1, y2 = x * 2, x.exp()
    gx = conch.autograd.grad([y1, y2], [x], grad_outputs=[mk(v, device, False), mk(v, device, False)])[0]
    np.testing.assert_allclose(npy(gx), v * 2 + v * np.exp(a), rtol=1e-12)


def test_hessian_vector_product(device):
    # f(x) = Σ x_i² x_j (all pairs) -> the Hessian times v checked against the closed form
    a, v = rnd(4), rnd(4, seed=1)
    x = mk(a, device)
    f = (x * x).sum() * x.sum()
    (g,) = conch.autograd.grad(f, x, create_graph=True)
    (hv,) = conch.autograd.grad((g * mk(v, device, False)).sum(), x)
    H = 2 * np.eye(4) * a.sum() + 2 * a[:, None] + 2 * a[None, :]
    np.testing.assert_allclose(npy(hv), H @ v, rtol=1e-12)


def test_gradcheck_detects_a_wrong_gradient(device):
    class Wrong(Function):
        @staticmethod
        def forward(ctx, x):
            return x * x

        @staticmethod
        def backward(ctx, g):
            return g  # should be 2 x g

    x = mk(rnd(3) + 2, device)
    with pytest.raises(RuntimeError, match="Jacobian mismatch for input 0"):
        gradcheck(Wrong.apply, (x,))
    assert gradcheck(Wrong.apply, (x,), raise_exception=False) is False


def test_gradcheck_detects_a_missing_graph_edge(device):
    # an output that depends on x but does not require grad must fail (its Jacobian is not zero)
    def leaky(t):
        return conch.tensor(npy(t) * 2, device=t.device)

    x = mk(rnd(3), device)
    with pytest.raises(RuntimeError, match="Jacobian mismatch"):
        gradcheck(lambda t: (t * 1, leaky(t)), (x,))


def test_gradcheck_rejects_float32(device):
    x = conch.ones(2, device=device, requires_grad=True)
    with pytest.raises(ValueError, match="float64"):
        gradcheck(lambda t: t * 2, (x,))


# ---------------------------------------------------------------- in-place and versions


def test_version_counter(device):
    x = conch.zeros(3, device=device)
    v = x[1:]
    assert x._version[0] == 0
    x += 1
    x[0] = 2.0
    v.mul_(2)
    x.zero_()
    assert x._version[0] == 4 and v._version is x._version


def test_inplace_after_save_output_is_fine_when_output_saved(device):
    # exp saves its output, not its input: changing the input later does not matter
    x = mk([0.5, 1.0], device)
    h = x * 1
    y = h.exp()
    h += 1
    y.sum().backward()
    np.testing.assert_allclose(npy(x.grad), np.exp([0.5, 1.0]))


def test_inplace_in_graph_then_reuse(device):
    x = mk([1.0, 2.0], device)
    y = x * 1
    y *= x  # y = x², saved x and old y
    z = y * 3  # saves the new y
    y2 = z.sigmoid()  # noqa: F841 (keeps a second consumer alive)
    z.sum().backward()
    np.testing.assert_allclose(npy(x.grad), [6, 12])


def test_inplace_on_leaf_under_no_grad_is_allowed(device):
    w = mk([1.0, 2.0], device)
    with conch.no_grad():
        w -= 0.5 * conch.ones(2, dtype=conch.float64, device=device)
        w.mul_(2)
    assert w.is_leaf and w.requires_grad
    np.testing.assert_array_equal(npy(w), [1, 3])
    (w * w).sum().backward()
    np.testing.assert_array_equal(npy(w.grad), [2, 6])


def test_autograd_grad_runs_only_nodes_leading_to_the_inputs():
    calls = []

    class Spy(conch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 1

        @staticmethod
        def backward(ctx, g):
            calls.append(1)
            return g

    x = conch.randn(3, requires_grad=True)
    h = Spy.apply(x) * 2  # the graph behind h leads only to x, which is not requested
    y = (h * h).sum()
    (g,) = conch.autograd.grad(y, h)
    np.testing.assert_allclose(g.numpy(), 2 * h.detach().numpy())
    assert calls == []
    assert x.grad is None
    (gx,) = conch.autograd.grad((h * h).sum(), x)  # now x is requested: Spy must run
    assert calls == [1]
    np.testing.assert_allclose(gx.numpy(), 8 * x.detach().numpy(), rtol=1e-6)
