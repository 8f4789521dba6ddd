"""``Parameter``: a Tensor that a Module registers as learnable (requires_grad=True by default)."""

from __future__ import annotations

import copy

from ..creation import empty, tensor
from ..tensor import Tensor


class Parameter(Tensor):
    """A leaf tensor that :class:`conch.nn.Module` registers in ``parameters()`` when assigned as an attribute.

    It shares memory (and the in-place version counter) with the tensor it wraps, as PyTorch's does.
    Operations on a Parameter return plain Tensors.

    Example::

        w = conch.nn.Parameter(conch.randn(3, 4))    # w.requires_grad is True
        class M(conch.nn.Module):
            def __init__(self):
                super().__init__()
                self.w = w                           # now in M().parameters()
    """

    def __new__(cls, data=None, requires_grad=True):
        if data is None:
            data = empty(0)
        if not isinstance(data, Tensor):
            data = tensor(data)
        p = Tensor._make_as(cls, data._data, False, None, data._version)
        if requires_grad:
            p.requires_grad_(True)
        return p

    def __init__(self, data=None, requires_grad=True):  # all the work is in __new__
        pass

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()

    def __deepcopy__(self, memo):
        if id(self) in memo:
            return memo[id(self)]
        p = Parameter(Tensor._make(self._data.copy()), self.requires_grad)
        if self.grad is not None:
            p.grad = copy.deepcopy(self.grad, memo)
        memo[id(self)] = p
        return p

    def __reduce_ex__(self, protocol):
        return (_rebuild_parameter, (self.detach(), self.requires_grad))


def _rebuild_parameter(data, requires_grad):
    return Parameter(data, requires_grad)


class Buffer(Tensor):
    """Marks a tensor to be registered as a buffer when assigned to a Module attribute (as ``torch.nn.Buffer``)."""

    def __new__(cls, data, persistent=True):
        b = Tensor._make_as(cls, data._data, False, None, data._version)
        b.persistent = persistent
        return b

    def __init__(self, data, persistent=True):
        pass
