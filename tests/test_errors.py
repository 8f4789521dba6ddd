"""Every user error named in the Foundation issue raises a clear exception naming the shapes, versions or devices."""

import numpy as np
import pytest

import conch


def mk(a, device, grad=True):
    return conch.tensor(np.asarray(a, dtype=np.float64), dtype=conch.float64, device=device, requires_grad=grad)


# ---------------------------------------------------------------- autograd misuse


def test_backward_twice_without_retain_graph(device):
    x = mk([1.0, 2.0], device)
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match=r"backward through the graph a second time.*retain_graph=True"):
        y.backward()


def test_grad_twice_without_retain_graph(device):
    x = mk([1.0, 2.0], device)
    y = x.exp().sum()
    conch.autograd.grad(y, x)
    with pytest.raises(RuntimeError, match="second time"):
        conch.autograd.grad(y, x)


def test_saved_tensors_after_free(device):
    class Keep(conch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return g * 2

    y = Keep.apply(mk([1.0], device))
    y.sum().backward()
    with pytest.raises(RuntimeError, match="already been freed"):
        _ = y.grad_fn.saved_tensors


def test_backward_of_non_scalar_without_gradient(device):
    y = mk(np.ones((2, 3)), device) * 2
    with pytest.raises(RuntimeError, match=r"implicitly created only for scalar outputs.*\(2, 3\)"):
        y.backward()
    with pytest.raises(RuntimeError, match=r"scalar outputs.*\(2, 3\)"):
        conch.autograd.grad(y, [y])


def test_backward_gradient_shape_mismatch(device):
    y = mk(np.ones((2, 3)), device) * 2
    with pytest.raises(RuntimeError, match=r"Mismatch in shape.*\(3,\).*\(2, 3\)"):
        y.backward(conch.ones(3, dtype=conch.float64, device=device))


def test_backward_on_tensor_without_grad(device):
    with pytest.raises(RuntimeError, match="does not require grad"):
        conch.ones(2, device=device).sum().backward()
    with pytest.raises(RuntimeError, match="does not require grad"):
        conch.autograd.grad(conch.ones(1, device=device).sum(), [mk([1.0], device)])


def test_inplace_modification_after_save_names_op_and_versions(device):
    x = mk([1.0, 2.0], device)
    y = x * 1
    z = y * y  # Mul saves y at version 0
    with conch.no_grad():
        y += 1  # version 1
    msg = r"modified by an inplace operation.*\(2,\).*Mul.*version 1.*expected version 0"
    with pytest.raises(RuntimeError, match=msg):
        z.sum().backward()


def test_inplace_modification_in_graph_after_save(device):
    x = mk([1.0, 2.0], device)
    y = x * 1
    z = y.sin()  # Sin saves its input y
    y.mul_(2)
    with pytest.raises(RuntimeError, match=r"Sin is at version 1; expected version 0"):
        z.sum().backward()


def test_inplace_modification_through_a_view(device):
    x = mk(np.ones((2, 2)), device)
    y = x * 1
    z = y.sin()
    with conch.no_grad():
        y[0] += 5  # writes through a view of y: the shared counter moves
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        z.sum().backward()


def test_inplace_on_leaf_requiring_grad(device):
    w = mk([1.0], device)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad.*in-place"):
        w += 1
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        w.zero_()
    with pytest.raises(RuntimeError, match="__setitem__"):
        w[0] = 2.0


def test_requires_grad_on_integer_tensor(device):
    with pytest.raises(RuntimeError, match="floating point.*int64"):
        conch.tensor([1, 2], device=device, requires_grad=True)
    with pytest.raises(RuntimeError, match="only change requires_grad flags of leaf"):
        (mk([1.0], device) * 2).requires_grad_(False)


def test_numpy_of_tensor_requiring_grad(device):
    with pytest.raises(RuntimeError, match=r"detach\(\)"):
        mk([1.0], device).numpy()


# ---------------------------------------------------------------- shapes


def test_broadcast_mismatch_names_both_shapes(device):
    a, b = conch.ones(2, 3, device=device), conch.ones(4, device=device)
    for op in (lambda: a + b, lambda: a * b, lambda: a - b, lambda: a / b, lambda: conch.maximum(a, b)):
        with pytest.raises(RuntimeError, match=r"\(2, 3\).*\(4,\)"):
            op()
    with pytest.raises(RuntimeError, match=r"\(2, 3\).*\(4,\)"):
        a + np.ones(4)
    with pytest.raises(RuntimeError, match=r"\(4,\).*\(2, 3\)"):
        np.ones(4) + a


def test_matmul_mismatch_names_both_shapes(device):
    with pytest.raises(RuntimeError, match=r"2x3 and 2x3"):
        conch.ones(2, 3, device=device) @ conch.ones(2, 3, device=device)
    with pytest.raises(RuntimeError, match=r"cannot be multiplied.*4.*5"):
        conch.ones(4, device=device) @ conch.ones(5, device=device)
    with pytest.raises(RuntimeError, match=r"batch dimensions of \(2, 3, 4\) and \(5, 4, 3\)"):
        conch.ones(2, 3, 4, device=device) @ conch.ones(5, 4, 3, device=device)
    with pytest.raises(RuntimeError, match="at least 1D"):
        conch.matmul(conch.tensor(1.0, device=device), conch.ones(2, device=device))


def test_reshape_and_view_mismatch_name_shapes(device):
    x = conch.ones(2, 3, device=device)
    with pytest.raises(RuntimeError, match=r"shape '\[4, 2\]' is invalid for input of size 6"):
        x.reshape(4, 2)
    with pytest.raises(RuntimeError, match=r"'\[-1, 4\]' is invalid for input of size 6"):
        x.view(-1, 4)
    with pytest.raises(RuntimeError, match="only one dimension can be inferred"):
        x.reshape(-1, -1)


def test_cat_and_stack_mismatch_name_shapes(device):
    with pytest.raises(RuntimeError, match=r"Sizes of tensors must match except in dimension 0.*\(2, 3\).*\(3, 2\)"):
        conch.cat([conch.ones(2, 3, device=device), conch.ones(3, 2, device=device)])
    with pytest.raises(RuntimeError, match=r"stack expects each tensor to be equal size.*\(2, 3\).*\(2, 4\)"):
        conch.stack([conch.ones(2, 3, device=device), conch.ones(2, 4, device=device)])
    with pytest.raises(RuntimeError, match="non-empty"):
        conch.cat([])
    with pytest.raises(RuntimeError, match="zero-dimensional"):
        conch.cat([conch.tensor(1.0), conch.tensor(2.0)])


def test_expand_and_split_errors(device):
    x = conch.ones(2, 3, device=device)
    with pytest.raises(RuntimeError, match=r"expanded size of the tensor \(4\) must match the existing size \(3\)"):
        x.expand(2, 4)
    with pytest.raises(RuntimeError, match=r"split_sizes=\[1, 1\]"):
        conch.split(x, [1, 1], dim=1)


@pytest.mark.parametrize(
    "call",
    [
        lambda x: x.sum(3),
        lambda x: x.mean(-4),
        lambda x: x.sum((0, 5)),
        lambda x: x.var(3),
        lambda x: x.amax(3),
        lambda x: x.argmax(3),
        lambda x: x.max(3),
        lambda x: x.softmax(3),
        lambda x: x.log_softmax(-4),
        lambda x: x.transpose(0, 3),
        lambda x: x.permute(0, 1, 3),
        lambda x: x.unsqueeze(4),
        lambda x: x.squeeze(3),
        lambda x: x.flatten(0, 3),
        lambda x: x.size(3),
        lambda x: conch.cat([x, x], 3),
        lambda x: conch.stack([x, x], 4),
        lambda x: conch.split(x, 1, 3),
    ],
)
def test_dim_out_of_range(call, device):
    x = conch.ones(2, 3, 4, device=device)
    with pytest.raises(IndexError, match=r"Dimension out of range \(expected to be in range of \[-\d, \d\], but got"):
        call(x)


def test_index_errors(device):
    x = conch.ones(2, 3, device=device)
    with pytest.raises(IndexError):
        x[5]
    with pytest.raises(IndexError, match="long, int or bool"):
        x[conch.tensor([0.0, 1.0], device=device)]
    with pytest.raises(IndexError):
        x[conch.tensor([0, 7], device=device)]


def test_item_and_bool_of_many_elements(device):
    x = conch.ones(3, device=device)
    with pytest.raises(RuntimeError, match="3 elements cannot be converted to Scalar"):
        x.item()
    with pytest.raises(RuntimeError, match="ambiguous"):
        bool(x)


def test_mean_of_integers(device):
    with pytest.raises(RuntimeError, match="mean.*floating point.*int64"):
        conch.tensor([1, 2], device=device).mean()


def test_integer_negative_power():
    with pytest.raises(RuntimeError, match="Integers to negative integer powers are not allowed"):
        conch.tensor([1, 2]) ** -1


def test_bad_creation_arguments():
    with pytest.raises(TypeError, match="unknown dtype 'float17'"):
        conch.zeros(2, dtype="float17")
    with pytest.raises(RuntimeError, match="unknown device 'tpu'"):
        conch.zeros(2, device="tpu")
    with pytest.raises(RuntimeError, match="cuda:N"):
        conch.zeros(2, device="cuda:x")
    with pytest.raises((TypeError, ValueError), match="ragged|could not make a tensor"):
        conch.tensor([[1, 2], [3]])
    with pytest.raises(ValueError, match="step must be nonzero"):
        conch.arange(0, 3, 0)
    with pytest.raises(TypeError, match="expected np.ndarray"):
        conch.from_numpy([1, 2])


# ---------------------------------------------------------------- devices


def test_cuda_tensor_without_gpu_says_why():
    if conch.cuda.is_available():
        pytest.skip("a GPU is present: creating a cuda tensor succeeds")
    for make in (
        lambda: conch.tensor(1.0, device="cuda"),
        lambda: conch.zeros(2, device="cuda:0"),
        lambda: conch.randn(2, device="cuda"),
        lambda: conch.ones(2).to("cuda"),
        lambda: conch.ones(2).cuda(),
    ):
        with pytest.raises(RuntimeError, match=r"no usable GPU was found.*\(.+\)") as e:
            make()
        assert "device='cpu'" in str(e.value)


def test_cuda_is_available_never_raises():
    assert isinstance(conch.cuda.is_available(), bool)
    assert isinstance(conch.cuda.device_count(), int)
    if not conch.cuda.is_available():
        assert conch.cuda.device_count() == 0
        assert conch.cuda.memory_allocated() == 0
        conch.cuda.synchronize()  # a no-op without a GPU


@pytest.mark.skipif(not conch.cuda.is_available(), reason="needs a CUDA GPU to hold tensors on two devices")
def test_tensors_on_different_devices_name_both():
    a, b = conch.ones(3), conch.ones(3, device="cuda")
    for op in (lambda: a + b, lambda: b * a, lambda: conch.cat([a, b]), lambda: a @ b, lambda: conch.maximum(a, b)):
        with pytest.raises(RuntimeError, match=r"same device.*(cpu.*cuda:0|cuda:0.*cpu)"):
            op()
    with pytest.raises(RuntimeError, match="device"):
        a[conch.tensor([0], device="cuda")]
