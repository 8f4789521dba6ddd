"""The Tensor: an array (NumPy on the CPU, CuPy on a GPU) plus its place in the autograd graph.

This module holds the core: storage, graph position, version counter and views, the dunder operators, in-place
writes, indexing, shapes, reductions and plain elementwise methods, and the array-level functions built from the
ops alone (cat, stack, split, where, maximum, minimum, cumsum). It imports only the op definitions
(:mod:`conch.ops`), autograd and the backend modules. Methods that need the layers above it (the fused kernels,
creation, the rest of PyTorch's Tensor API) are attached in one place, :mod:`conch.tensor_api`.
"""

from __future__ import annotations

import math
import numbers
import operator
import weakref

import numpy as np

from . import _dtype as D
from . import ops
from ._backend import CPU, asarray_on, device, device_of, is_cupy_array, namespace, to_device, to_host, xp_of
from .amp.autocast_mode import _state as _autocast
from .amp.autocast_mode import cast_for
from .autograd import engine
from .autograd import function as _function
from .autograd.function import GraphTensor, _RemovableHandle
from .autograd.function import binary as _binary
from .autograd.function import record1 as _record1
from .autograd.grad_mode import _enabled, no_grad
from .kernels import _cupy, _deferred
from .ops.dims import norm_dim, norm_dims
from .ops.reductions import count as _count
from .ops.reductions import mean_array as _mean_array
from .ops.reductions import sum_array as _sum_array

_new = object.__new__
_UNSET = type("_Unset", (), {"__repr__": lambda self: "False", "__slots__": ()})()  # keepdim not given


def _numpy_names(name, dim, keepdim, axis, keepdims):
    """``(dim, keepdim)`` from PyTorch's NumPy-style aliases ``axis=``/``keepdims=`` (what tensor_api.numpy_kwargs
    does for the other methods): giving both spellings of one argument is a TypeError."""
    if axis is not None:
        if dim is not None:
            raise TypeError(f"{name}() got multiple values for argument 'dim'")
        dim = axis
    if keepdims is not None:
        if keepdim is not _UNSET:
            raise TypeError(f"{name}() got multiple values for argument 'keepdim'")
        keepdim = keepdims
    return dim, (False if keepdim is _UNSET else keepdim)


def _reduction_args(t, name, dim, keepdim, dtype, axis, keepdims):
    """sum/mean's shared prologue: (input after dtype= or autocast, normalised dims, keepdim) with PyTorch's
    and NumPy's argument names."""
    if axis is not None or keepdims is not None:
        dim, keepdim = _numpy_names(name, dim, keepdim, axis, keepdims)
    elif keepdim is _UNSET:
        keepdim = False
    if dtype is not None:
        x = t.to(dtype=dtype)
    else:
        x = cast_for(name, t)[0] if _autocast[0] else t
    return x, (None if dim is None else norm_dims(dim, t._data.ndim, name)), keepdim


_ND = np.ndarray
_SCALAR_FAST = (D.float32, D.float64)  # dtypes a Python number never promotes
_FLOATS = D.FLOATING


def _arith(op, scalar_op, swap=False, negate=False, floating=False):
    """A binary arithmetic dunder for ``op`` (Add, Sub, Mul, Div); ``swap``: the reflected form (other op self).

    Fast path, the common case: the other operand a Tensor, both NumPy arrays of the very same dtype (a float
    dtype for ``floating``, true division): no promotion, no device check, and no broadcast check either (the
    op's NumPy call raises ValueError for shapes that do not broadcast, and the general path then gives
    PyTorch's error). A Python int/float with a float32/float64 tensor goes to ``scalar_op`` (``s`` an attribute,
    ``-s`` for ``negate``). Anything else: ``_operands`` (promotion, arrays, devices), then ``op``.
    """

    fwd = op.forward  # Add/Sub/Mul/Div keep nothing on ctx in forward: callable without a node
    sfwd = scalar_op.forward if scalar_op is not None else None

    def method(self, other):
        if isinstance(other, Tensor):
            a, b = self._data, other._data
            if a.dtype is b.dtype and type(a) is _ND and type(b) is _ND and (not floating or a.dtype in _FLOATS):
                try:
                    out = fwd(None, b, a) if swap else fwd(None, a, b)
                    if _enabled[0] and (self.requires_grad or other.requires_grad or self._base is not None
                                        or other._base is not None):  # fmt: skip
                        # a node (binary refreshes a view's history first, and makes none if then not needed)
                        return _binary(op, other, self, out) if swap else _binary(op, self, other, out)
                    return _make(out)  # nothing to record
                except ValueError:
                    if a.shape == b.shape:
                        raise
                    # shapes that do not broadcast: the general path below raises PyTorch's error for them
        elif (
            scalar_op is not None and (type(other) is float or type(other) is int) and self._data.dtype in _SCALAR_FAST
        ):
            ctx = _new(scalar_op)  # the scalar ops' forwards keep at most ``s`` on it
            out = sfwd(ctx, self._data, -other if negate else other)
            if _enabled[0] and (self.requires_grad or self._base is not None):
                return _record1(ctx, self, out)
            return _make(out)
        x, y = _operands(other, self, floating) if swap else _operands(self, other, floating)
        return op.apply(x, y)

    return method


class Size(tuple):
    """A tensor's shape (PyTorch's ``torch.Size``): a tuple of ints that prints as ``conch.Size([2, 3])``.

    It equals (and hashes as) the plain tuple, so ``t.shape == (2, 3)`` holds; slicing it or adding a tuple gives a
    Size again. Example: ``conch.zeros(2, 3).shape.numel() == 6``.
    """

    __slots__ = ()

    def numel(self) -> int:
        n = 1
        for s in self:
            n *= s
        return n

    def __repr__(self):
        return f"conch.Size({list(self)})"

    def __format__(self, spec):
        # f-strings show the plain tuple: conch's error messages build shapes from both Tensor.shape and raw
        # arrays' shapes, and stay uniform ("(2, 3)") that way; print()/str()/repr() show conch.Size([2, 3])
        return tuple.__repr__(self) if not spec else format(tuple(self), spec)

    def __getitem__(self, index):
        r = tuple.__getitem__(self, index)
        return Size(r) if isinstance(index, slice) else r

    def __add__(self, other):
        return Size(tuple.__add__(self, other)) if isinstance(other, tuple) else NotImplemented

    def __reduce__(self):
        return (Size, (tuple(self),))


def _shape_arg(shape, what="view", arg="size"):
    """``*shape`` or one sequence of them as a tuple of ints; a float or string is a TypeError, as PyTorch."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    for s in shape:
        if type(s) is not int:
            break
    else:  # Python ints only, the common case: nothing to convert
        return shape
    out = []
    for pos, s in enumerate(shape):
        try:
            out.append(operator.index(s))
        except TypeError:
            raise TypeError(
                f"{what}(): argument '{arg}' must be tuple of ints, but found element of type "
                f"{type(s).__name__} at pos {pos}"
            ) from None
    return tuple(out)


_SWAP2 = (1, 0)
_norm_dim = norm_dim  # the name the rest of the framework imports (tensor_api, fused/softmax)


class Tensor(GraphTensor):
    """An n-dimensional array with autograd, on the CPU (NumPy) or a GPU (CuPy).

    Example::

        x = conch.randn(3, 4, requires_grad=True)
        y = (x @ x.T).relu().sum()
        y.backward()          # x.grad has shape (3, 4)
    """

    # _base: the tensor a view op (reshape, permute, expand, split, basic indexing) was taken from, or None.
    # A view also keeps _vfn (base -> view, as Tensor ops), _vver (the shared version counter's value when its
    # grad_fn was last derived) and _vgrad (whether it was taken with grad mode on): an in-place change through
    # the graph rewrites the base's history, and each view re-derives its grad_fn from the base when next used.
    __slots__ = (
        "_data", "requires_grad", "grad", "grad_fn", "_version", "_output_nr", "_hooks", "_base", "_vfn", "_vver",
        "_vgrad", "__weakref__",
    )  # fmt: skip
    __array_priority__ = 1000  # make NumPy defer to Tensor's reflected operators

    def __init__(self, data, dtype=None, device=None, requires_grad=False):
        arr = _to_array(data, dtype, device)
        self._data, self.grad, self.grad_fn, self._version = arr, None, None, [0]
        self._output_nr, self._hooks, self.requires_grad, self._base = 0, None, False, None
        if requires_grad:
            self.requires_grad_(True)

    @staticmethod
    def _make(data, requires_grad=False, grad_fn=None, version=None):
        """A Tensor around array ``data`` (no copy); always a plain Tensor, also when called on a Parameter,
        so that autograd can make an op's outputs with any input's ``_make``."""
        # _make_as's body, inlined: every op's output is made here, and a call layer is ~10% of a small op
        if type(data) is not np.ndarray and isinstance(data, np.generic):
            data = np.asarray(data)  # NumPy reductions hand back scalars; keep 0-d arrays
        t = _new(Tensor)
        t._data, t.requires_grad, t.grad_fn, t.grad = data, requires_grad, grad_fn, None
        t._version = [0] if version is None else version
        t._output_nr, t._hooks, t._base = 0, None, None
        return t

    @staticmethod
    def _make_as(cls, data, requires_grad=False, grad_fn=None, version=None):
        """``_make`` for a subclass ``cls`` (Parameter, Buffer)."""
        if isinstance(data, np.generic):  # NumPy reductions hand back scalars; keep 0-d arrays
            data = np.asarray(data)
        t = object.__new__(cls)
        t._data, t.requires_grad, t.grad_fn, t.grad = data, requires_grad, grad_fn, None
        t._version = [0] if version is None else version
        t._output_nr, t._hooks, t._base = 0, None, None
        return t

    @staticmethod
    def _zeros(shape, dtype, dev):
        if dev.type == "cpu":
            return Tensor._make(np.zeros(shape, dtype=dtype))
        cp = namespace(dev)
        with cp.cuda.Device(dev.index):  # allocate on that GPU, not on whichever one is current
            return Tensor._make(cp.zeros(shape, dtype=dtype))

    def _wrap_const(self, arr):
        """A constant (no-grad) tensor on this tensor's device."""
        return Tensor._make(arr)

    # ------------------------------------------------------------ attributes
    @property
    def shape(self):
        return Size(self._data.shape)

    @property
    def ndim(self):
        return self._data.ndim

    def dim(self):
        return self._data.ndim

    @property
    def dtype(self):
        return self._data.dtype

    @property
    def device(self):
        return device_of(self._data)

    @property
    def is_cuda(self):
        return not isinstance(self._data, np.ndarray)

    @property
    def is_leaf(self):
        return self.grad_fn is None

    @property
    def data(self):
        """A tensor sharing this one's memory, outside the graph (as PyTorch's ``.data``)."""
        return Tensor._make(self._data, False, None, self._version)

    @data.setter
    def data(self, value):
        self._data = value._data if isinstance(value, Tensor) else value

    @property
    def T(self):
        if self.ndim != 2:
            raise RuntimeError(f"T expects a 2-D tensor, got {self.ndim}-D with shape {self.shape}; use mT or permute")
        return self.transpose(0, 1)

    @property
    def mT(self):
        if self.ndim < 2:
            raise RuntimeError(f"mT expects a tensor with at least 2 dims, got shape {self.shape}")
        return self.transpose(-2, -1)

    def size(self, dim=None):
        if dim is None:
            return self.shape
        return self.shape[_norm_dim(dim, self.ndim)]

    def numel(self):
        return int(self._data.size)

    def element_size(self):
        return self._data.itemsize

    def is_floating_point(self):
        return self._data.dtype in D.FLOATING

    def is_contiguous(self):
        return bool(self._data.flags.c_contiguous)

    def stride(self, dim=None):
        st = tuple(s // self._data.itemsize for s in self._data.strides)
        return st if dim is None else st[_norm_dim(dim, self.ndim)]

    def data_ptr(self):
        return self._data.ctypes.data if isinstance(self._data, np.ndarray) else self._data.data.ptr

    # ------------------------------------------------------------ conversion
    def item(self):
        if self._data.size != 1:
            raise RuntimeError(f"a Tensor with {self._data.size} elements cannot be converted to Scalar")
        if isinstance(self._data, np.ndarray):
            return self._data.reshape(()).item()
        # the host waits here anyway: pending device-side checks are read in the same copy (and raise)
        return _deferred.fetch(self._data)[0].reshape(()).item() if _deferred._PENDING else self._data.item()

    def tolist(self):
        return self.cpu()._data.tolist()

    def numpy(self, force=False):
        if self.requires_grad and not force:
            raise RuntimeError("Can't call numpy() on Tensor that requires grad. Use tensor.detach().numpy() instead.")
        if not isinstance(self._data, np.ndarray):
            if not force:
                raise TypeError(
                    f"can't convert {self.device} device type tensor to numpy. Use Tensor.cpu() to copy the tensor "
                    "to host memory first."
                )
            return _deferred.fetch(self._data)[0]  # a sync: pending device-side checks are read with it
        return self._data

    def __array__(self, dtype=None, copy=None):
        a = self.detach().cpu()._data
        return a if dtype is None else a.astype(dtype)

    def __dlpack__(self, *args, **kwargs):
        return self._data.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self._data.__dlpack_device__()

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __index__(self):
        if self.dtype.kind not in "iub":
            raise TypeError("only integer tensors of a single element can be converted to an index")
        return int(self.item())

    def __format__(self, spec):
        # PyTorch's rule: a 0-d tensor formats as its number (f"{loss:.4f}"), any other with object's format
        if self._data.ndim == 0:
            return format(self.item(), spec)
        return object.__format__(self, spec)

    def __bool__(self):
        if self._data.size != 1:
            raise RuntimeError(
                f"Boolean value of Tensor with {self._data.size} elements is ambiguous; use .any() or .all()"
            )
        return bool(self.item())

    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self.shape[0]))

    __hash__ = object.__hash__

    def __repr__(self):
        if _enabled[0]:
            _function.fresh(self)  # a view whose base changed in place shows its current grad_fn
        body = np.array2string(np.asarray(self.detach().cpu()._data, dtype=np.float64) if D.is_bfloat16(self.dtype)
                               else self.detach().cpu()._data, separator=", ", prefix="tensor(")  # fmt: skip
        extra = []
        if self.device.type != "cpu":
            extra.append(f"device='{self.device}'")
        if self.dtype not in (D.float32, D.int64, D.bool_):
            extra.append(f"dtype=conch.{self.dtype.name}")
        if self.grad_fn is not None:
            extra.append(f"grad_fn=<{self.grad_fn.name()}>")
        elif self.requires_grad:
            extra.append("requires_grad=True")
        return "tensor(" + body + "".join(", " + e for e in extra) + ")"

    # ------------------------------------------------------------ autograd
    def backward(self, gradient=None, retain_graph=None, create_graph=False, inputs=None):
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad`` (``gradient`` is dL/dself)."""
        _function.fresh(self)
        if not self.requires_grad:
            raise RuntimeError("element 0 of tensors does not require grad and does not have a grad_fn")
        if gradient is None:
            if self._data.size != 1:
                raise RuntimeError(
                    f"grad can be implicitly created only for scalar outputs (this tensor has shape {self.shape}); "
                    "pass gradient= with the same shape"
                )
            gradient = Tensor._make(xp_of(self._data).ones(self.shape, dtype=self.dtype))
        else:
            gradient = self._as_grad(gradient)
        if retain_graph is None:
            retain_graph = create_graph
        if inputs is not None:
            inputs = [inputs] if isinstance(inputs, Tensor) else list(inputs)
            grads = engine.run_backward([self], [gradient], retain_graph, create_graph, inputs, allow_unused=True)
            for t, g in zip(inputs, grads):
                if g is not None:
                    g = g if create_graph else g.detach()
                    t.grad = g if t.grad is None else t.grad + g
            return
        engine.run_backward([self], [gradient], retain_graph, create_graph)

    def detach(self):
        return Tensor._make(self._data, False, None, self._version)

    def detach_(self):
        self.grad_fn, self.requires_grad = None, False
        return self

    def requires_grad_(self, requires_grad=True):
        if requires_grad and not self.is_floating_point():
            raise RuntimeError(f"only Tensors of floating point dtype can require gradients, got {self.dtype}")
        if not requires_grad and self.grad_fn is not None:
            raise RuntimeError(
                "you can only change requires_grad flags of leaf variables; use detach() for a non-leaf tensor"
            )
        self.requires_grad = bool(requires_grad)
        return self

    def register_hook(self, fn):
        """Call ``fn(grad)`` when this tensor's gradient is computed; a returned tensor replaces it."""
        if not self.requires_grad:
            raise RuntimeError("cannot register a hook on a tensor that doesn't require gradient")
        if self.grad_fn is not None:
            return self.grad_fn.register_prehook(self._output_nr, fn)
        if self._hooks is None:
            self._hooks = []
        self._hooks.append(fn)
        return _RemovableHandle(self._hooks, fn)

    def register_post_accumulate_grad_hook(self, hook):
        """Call ``hook(self)`` after each backward pass has accumulated all of its gradient into this leaf's
        ``.grad`` (PyTorch's name and semantics; DDP launches a bucket's all-reduce from it)."""
        if self.grad_fn is not None:
            raise RuntimeError("post accumulate grad hooks cannot be registered on non-leaf tensors")
        if not self.requires_grad:
            raise RuntimeError("cannot register a hook on a tensor that doesn't require gradient")
        return engine.register_post_accumulate_grad_hook(self, hook)

    def retain_grad(self):
        """Keep ``.grad`` for this non-leaf tensor after backward."""
        if self.grad_fn is None:
            return
        ref = weakref.ref(self)

        def keep(g):
            t = ref()
            if t is not None:
                t.grad = g.detach() if t.grad is None else t.grad + g.detach()

        self.grad_fn.register_prehook(self._output_nr, keep)

    # ------------------------------------------------------------ devices and dtypes
    def to(self, *args, device=None, dtype=None, copy=False, non_blocking=False):
        for a in args:
            if isinstance(a, Tensor):
                device, dtype = a.device, a.dtype
            elif isinstance(a, str) and not _looks_like_dtype(a):
                device = a
            else:
                dtype = a
        out = self
        if dtype is not None:
            dtype = D.as_dtype(dtype)
            if dtype != self.dtype:
                out = ops.Cast.apply(out, dtype=dtype) if out.requires_grad else _const(out._data.astype(dtype))
        if device is not None:
            dev = _device_arg(device)
            if dev != out.device:
                out = ops.ToDevice.apply(out, dev=dev) if out.requires_grad else _const(to_device(out._data, dev))
        if copy and out is self:
            out = self.clone()
        return out

    def cpu(self):
        return self.to(device="cpu")

    def cuda(self, device=None):
        return self.to(device="cuda" if device is None else (f"cuda:{device}" if isinstance(device, int) else device))

    def pin_memory(self, device=None):
        """A copy in page-locked host memory, so a later ``.cuda(non_blocking=True)`` copy can overlap compute.

        Without a usable GPU there is nothing to pin for and the tensor comes back as it is (PyTorch raises
        there; a no-op lets the same ``pin_memory=True`` script run on a CPU-only machine).
        """
        if not isinstance(self._data, np.ndarray):
            raise RuntimeError(f"cannot pin a tensor on {self.device}: only CPU tensors can be pinned")
        if not _cupy.is_available():
            return self
        import cupyx

        buf = cupyx.empty_pinned(self._data.shape, self._data.dtype)
        buf[...] = self._data
        return Tensor._make(buf)

    def float(self):
        return self.to(dtype=D.float32)

    def double(self):
        return self.to(dtype=D.float64)

    def half(self):
        return self.to(dtype=D.float16)

    def bfloat16(self):
        return self.to(dtype=D.bfloat16)

    def long(self):
        return self.to(dtype=D.int64)

    def int(self):
        return self.to(dtype=D.int32)

    def bool(self):
        return self.to(dtype=D.bool_)

    def type_as(self, other):
        return self.to(dtype=other.dtype)

    def contiguous(self):
        if self._data.flags.c_contiguous:
            return self
        return ops.Contiguous.apply(self)

    def clone(self):
        return ops.Clone.apply(self)

    # ------------------------------------------------------------ arithmetic
    # The fast path (_arith): two NumPy tensors of one dtype go straight to the op; a Python number with a
    # float32/float64 tensor needs no promotion and no 0-d tensor: the *Scalar ops take it as an attribute.
    __add__ = _arith(ops.Add, ops.AddScalar)
    __radd__ = _arith(ops.Add, ops.AddScalar, swap=True)
    __sub__ = _arith(ops.Sub, ops.AddScalar, negate=True)  # a + (-s) rounds exactly as a - s
    __rsub__ = _arith(ops.Sub, ops.RSubScalar, swap=True)
    __mul__ = _arith(ops.Mul, ops.MulScalar)
    __rmul__ = _arith(ops.Mul, ops.MulScalar, swap=True)
    __truediv__ = _arith(ops.Div, ops.DivScalar, floating=True)
    __rtruediv__ = _arith(ops.Div, None, swap=True, floating=True)

    def __neg__(self):
        return ops.Neg.apply(self)

    def __pos__(self):
        return self

    def __pow__(self, other):
        self = _fp32("pow", self)
        if isinstance(other, (numbers.Real, np.generic)):
            if not self.is_floating_point() and isinstance(other, (numbers.Integral, np.integer, np.bool_)):
                # integer ** integer stays integer (no gradient), as in PyTorch
                if other < 0 and self.dtype != D.bool_:
                    raise RuntimeError("Integers to negative integer powers are not allowed.")
                dt = D.result_type((self.dtype, self.ndim), other)
                out = self._data.astype(dt, copy=False) ** xp_of(self._data).asarray(other, dtype=dt)
                return _const(out.astype(dt, copy=False))
            base = self if self.is_floating_point() else self.to(dtype=D.get_default_dtype())
            p = other.item() if isinstance(other, np.generic) else other
            return ops.PowScalar.apply(base, p=int(p) if isinstance(p, bool) else p)
        a, b = _operands(self, other)
        return ops.Pow.apply(a, b)

    def __rpow__(self, other):
        if isinstance(other, (numbers.Real, np.generic)):
            if not self.is_floating_point() and isinstance(other, (numbers.Integral, np.integer, np.bool_)):
                dt = D.result_type(other, (self.dtype, self.ndim))
                out = xp_of(self._data).asarray(other, dtype=dt) ** self._data.astype(dt, copy=False)
                return _const(out.astype(dt, copy=False))
            x = self if self.is_floating_point() else self.to(dtype=D.get_default_dtype())
            return ops.RPowScalar.apply(x, s=other.item() if isinstance(other, np.generic) else other)
        a, b = _operands(other, self)
        return ops.Pow.apply(a, b)

    # ``matmul`` runs on the fused matmul kernel: attached with the other kernel-backed methods (tensor_api.py)
    def __matmul__(self, other):
        return self.matmul(other)

    def __rmatmul__(self, other):
        return _as_tensor(other, self).matmul(self)

    def __abs__(self):
        return self.abs()

    def __floordiv__(self, other):
        a, b = _operands(self, other)
        _check_int_divisor(b)
        return _const(a._data // b._data)

    def __rfloordiv__(self, other):
        a, b = _operands(other, self)
        _check_int_divisor(b)
        return _const(a._data // b._data)

    def __mod__(self, other):
        return self.remainder(other)

    def __rmod__(self, other):
        a, b = _operands(other, self)
        return a.remainder(b)

    def remainder(self, other):
        """a - floor(a/b)·b: Python's %, the sign of the divisor; differentiable (ops.Remainder)."""
        a, b = _operands(self, other)
        _check_int_divisor(b)
        return ops.Remainder.apply(_fp32("remainder", a), b)

    def fmod(self, other):
        """a - trunc(a/b)·b: C's fmod, the sign of the dividend; differentiable (ops.Fmod)."""
        a, b = _operands(self, other)
        _check_int_divisor(b)
        return ops.Fmod.apply(a, b)

    def div(self, other, *, rounding_mode=None):
        """a / b; ``rounding_mode`` "trunc" (towards 0) or "floor" keeps integer dtypes (zero gradient)."""
        if rounding_mode is None:
            return self.__truediv__(other)
        if rounding_mode not in ("trunc", "floor"):
            raise ValueError(
                f"div expected rounding_mode to be one of None, 'trunc', or 'floor' but found '{rounding_mode}'"
            )
        a, b = _operands(self, other)
        _check_int_divisor(b)
        return ops.DivRounded.apply(a, b, mode=rounding_mode)

    divide = div

    def _bitwise(self, other, name, fn):
        """An integer/bool-only operation outside the graph; a float operand raises as PyTorch's kernels do."""
        a, b = (self, None) if other is None else _operands(self, other)
        if a.dtype.kind not in "biu":
            raise RuntimeError(f"\"{name}_{a.device.type}\" not implemented for '{D.scalar_name(a.dtype)}'")
        return _const(fn(a._data) if b is None else fn(a._data, b._data))

    def __invert__(self):
        if self.dtype.kind not in "biu":
            raise TypeError("~ (operator.invert) is only implemented on integer and Boolean-type tensors")
        return _const(~self._data)

    def bitwise_not(self):
        return self._bitwise(None, "bitwise_not", operator.invert)

    def bitwise_and(self, other):
        return self._bitwise(other, "bitwise_and", operator.and_)

    def bitwise_or(self, other):
        return self._bitwise(other, "bitwise_or", operator.or_)

    def bitwise_xor(self, other):
        return self._bitwise(other, "bitwise_xor", operator.xor)

    def _shift(self, other, left, reverse=False):
        a, b = _operands(other, self) if reverse else _operands(self, other)
        if a.is_floating_point():  # PyTorch shifts floats too: a · 2^b and a / 2^b
            return a * 2**b if left else a / 2**b
        name = "lshift" if left else "rshift"
        if a.dtype.kind not in "iu":
            raise RuntimeError(f"\"{name}_{a.device.type}\" not implemented for '{D.scalar_name(a.dtype)}'")
        return _const((a._data << b._data) if left else (a._data >> b._data))

    def bitwise_left_shift(self, other):
        return self._shift(other, True)

    def bitwise_right_shift(self, other):
        return self._shift(other, False)

    __and__, __or__, __xor__ = bitwise_and, bitwise_or, bitwise_xor
    __lshift__, __rshift__ = bitwise_left_shift, bitwise_right_shift

    def __rand__(self, other):
        return self._bitwise(other, "bitwise_and", lambda a, b: b & a)

    def __ror__(self, other):
        return self._bitwise(other, "bitwise_or", lambda a, b: b | a)

    def __rxor__(self, other):
        return self._bitwise(other, "bitwise_xor", lambda a, b: b ^ a)

    def __rlshift__(self, other):
        return self._shift(other, True, reverse=True)

    def __rrshift__(self, other):
        return self._shift(other, False, reverse=True)

    # comparisons: results are bool tensors outside the graph
    def __eq__(self, other):
        a, b = _operands(self, other)
        return _const(a._data == b._data)

    def __ne__(self, other):
        a, b = _operands(self, other)
        return _const(a._data != b._data)

    def __lt__(self, other):
        a, b = _operands(self, other)
        return _const(a._data < b._data)

    def __le__(self, other):
        a, b = _operands(self, other)
        return _const(a._data <= b._data)

    def __gt__(self, other):
        a, b = _operands(self, other)
        return _const(a._data > b._data)

    def __ge__(self, other):
        a, b = _operands(self, other)
        return _const(a._data >= b._data)

    eq, ne, lt, le, gt, ge = __eq__, __ne__, __lt__, __le__, __gt__, __ge__
    add, sub, mul, pow = __add__, __sub__, __mul__, __pow__
    true_divide, multiply, subtract, neg, negative = __truediv__, __mul__, __sub__, __neg__, __neg__

    # ------------------------------------------------------------ in-place
    # As in PyTorch, an in-place op writes into this tensor's memory (so its views see the new values) and,
    # when gradients are being recorded, makes the op this tensor's history. The op itself runs out of place
    # first (``new``), then ``_assign`` writes it back; see _assign for views and what the old values' savers get.
    def _inplace(self, op, other):
        other_t = other if isinstance(other, Tensor) else None
        if _enabled[0] and (
            self.requires_grad or (other_t is not None and other_t.requires_grad) or self._base is not None
        ):
            return self._assign(getattr(Tensor, op)(self, other), name=op.strip("_"))
        return self._write_back(getattr(Tensor, op)(self.detach(), other.detach() if other_t is not None else other))

    def _inplace_fn(self, fn, name, *others):
        """The in-place form of an out-of-place method: ``fn(self)`` written into self, through ``_assign`` when
        a graph or a view is involved (``others``: the other tensors it reads), else straight into the array."""
        if self._records_write(*(o for o in others if isinstance(o, Tensor))):
            return self._assign(fn(self), name=name)
        return self._write_back(fn(self.detach()))

    def _write_back(self, res):
        """Write ``res`` (computed out of place, outside any graph) into self's memory and bump the version."""
        if res.dtype != self.dtype and not np.can_cast(res.dtype, self.dtype, "same_kind"):
            raise RuntimeError(
                f"result type {D.scalar_name(res.dtype)} can't be cast to the desired output type "
                f"{D.scalar_name(self.dtype)}"
            )
        if res.shape != self.shape:
            raise RuntimeError(
                f"output with shape {list(self.shape)} doesn't match the broadcast shape {list(res.shape)}"
            )
        _check_overlap(self._data)
        if _COW:
            _copy_on_write(self)
        self._data[...] = res._data
        self._version[0] += 1
        return self

    def _assign(self, new, steps=(), name="in-place operation", replaces=False, fills=False):
        """Write ``new`` into ``self`` (or into ``self[i][j]...`` for ``steps=(i, j, ...)``) in place, recording
        the change for autograd.

        ``new`` is a Tensor computed out of place (it broadcasts to the written shape and is cast to
        self's dtype); ``replaces`` says it does not derive from the old values (copy_, fill_, zero_), whose
        history then still gets a node (a zero gradient, as PyTorch); ``fills`` (fill_, zero_, a scalar
        ``__setitem__``) may write one value into an expanded view outside the graph, as PyTorch's idempotent fill.
        Three cases while gradients are recorded:

        - self is not a view and there are no steps: self's history becomes ``new``'s (no extra node);
        - otherwise the base B at the root of self's views gets B' = CopySlices(B, new): dB = g with the
          written elements zeroed, dnew = g at the written elements; self's grad_fn is re-derived from B'
          at once, its other views' when next used (their version stamps are stale);
        - anything that saved the old values (by the shared version counter) refuses to backward, except
          the op that produced ``new`` from them: it gets a private copy (PyTorch's "original self").
        """
        target = self._data
        for i in steps:
            target = target[i]
        tshape = target.shape
        if new.shape != tshape:
            try:
                full = np.broadcast_shapes(new.shape, tshape)
            except ValueError:
                full = None
            if full != tshape:
                raise RuntimeError(
                    f"{name}: the value of shape {new.shape} can't be written into a tensor of shape {tshape} "
                    "(it must broadcast to that shape)"
                )
        root, chain = self, []
        while root._base is not None:
            chain.append(root._vfn)
            root = root._base
        recording = _enabled[0] and (self.requires_grad or new.requires_grad or root.requires_grad)
        if new.dtype != self.dtype:
            if not np.can_cast(new.dtype, self.dtype, "same_kind"):
                raise RuntimeError(f"result type {new.dtype} can't be cast to the desired output type {self.dtype}")
        if not recording:
            if not fills:
                _check_overlap(target)
            if _COW:
                _copy_on_write(self)
            _write(self._data, steps, new._data.astype(self.dtype, copy=False))
            self._version[0] += 1
            return self
        if root.requires_grad and root.grad_fn is None:
            what = "a view of a leaf Variable" if chain else "a leaf Variable"
            raise RuntimeError(
                f"{what} that requires grad is being used in an in-place operation ({name}); wrap it in "
                "conch.no_grad() or use an out-of-place operation"
            )
        if chain and root.requires_grad and not self._vgrad:
            raise RuntimeError(
                f"a view (shape {self.shape}) of a tensor that requires grad was created in no_grad mode and is "
                f"being modified in place ({name}) with grad mode enabled; take the view with grad mode on, or "
                "clone() it first"
            )
        _check_overlap(target)
        if new.grad_fn is not None:
            _keep_old_values(new.grad_fn, self._version, self._data)
        if new.dtype != self.dtype:
            new = new.to(dtype=self.dtype)
        if new.shape != tshape:
            new = new.expand(*tshape)
        if _COW:
            _copy_on_write(self)
        _write(self._data, steps, new._data)
        self._version[0] += 1
        if not chain and not steps and new.grad_fn is not None and not replaces:
            self.grad_fn, self._output_nr, self.requires_grad = new.grad_fn, new._output_nr, True
            return self
        xp = xp_of(root._data)
        if not chain and not steps:
            mask = sel = None
        else:  # the written elements' flat positions in the root, found by replaying the views on positions
            with no_grad():
                pos = Tensor._make(xp.arange(root._data.size).reshape(root.shape))
                for fn in reversed(chain):
                    pos = fn(pos)
            sel = pos._data
            for i in steps:
                sel = sel[i]
            mask = xp.zeros(root._data.size, dtype=np.bool_)
            mask[sel.reshape(-1)] = True
            mask = mask.reshape(root.shape)
        out = ops.CopySlices.apply(root, new, mask=mask, sel=sel)
        root.grad_fn, root._output_nr, root.requires_grad = out.grad_fn, 0, True
        if chain:
            self._refresh_view()
        return self

    def _refresh_view(self):
        """Re-derive this view's grad_fn (and requires_grad) from its base's current history."""
        base = self._base
        if base._base is not None and base._vver != base._version[0]:
            base._refresh_view()
        if self._vgrad and _enabled[0]:
            fresh = self._vfn(base)
            self.grad_fn, self._output_nr, self.requires_grad = fresh.grad_fn, fresh._output_nr, fresh.requires_grad
        self._vver = self._version[0]

    def __iadd__(self, other):
        return self._inplace("__add__", other)

    def __isub__(self, other):
        return self._inplace("__sub__", other)

    def __imul__(self, other):
        return self._inplace("__mul__", other)

    def __itruediv__(self, other):
        return self._inplace("__truediv__", other)

    def add_(self, other, alpha=1):
        return self._inplace("__add__", other if alpha == 1 else other * alpha)

    def sub_(self, other, alpha=1):
        return self._inplace("__sub__", other if alpha == 1 else other * alpha)

    def mul_(self, other):
        return self._inplace("__mul__", other)

    def div_(self, other, *, rounding_mode=None):
        if rounding_mode is None:
            return self._inplace("__truediv__", other)
        return self._inplace_fn(lambda t: t.div(other, rounding_mode=rounding_mode), "div_", other)

    def __imod__(self, other):
        return self._inplace_fn(lambda t: t.remainder(other), "remainder_", other)

    remainder_ = __imod__

    def fmod_(self, other):
        return self._inplace_fn(lambda t: t.fmod(other), "fmod_", other)

    def __ifloordiv__(self, other):
        return self._inplace_fn(lambda t: t // other, "floor_divide_", other)

    def __iand__(self, other):
        return self._inplace_fn(lambda t: t & other, "bitwise_and_", other)

    def __ior__(self, other):
        return self._inplace_fn(lambda t: t | other, "bitwise_or_", other)

    def __ixor__(self, other):
        return self._inplace_fn(lambda t: t ^ other, "bitwise_xor_", other)

    def __ilshift__(self, other):
        return self._inplace_fn(lambda t: t << other, "bitwise_left_shift_", other)

    def __irshift__(self, other):
        return self._inplace_fn(lambda t: t >> other, "bitwise_right_shift_", other)

    def _set_(self, array_fn, fills=False):
        """Overwrite in place under no_grad; used by zero_, fill_, copy_, init functions. ``fills``: one value
        everywhere, which PyTorch allows into an expanded view (every alias gets the same value)."""
        if _enabled[0] and self.requires_grad and self.grad_fn is None:
            raise RuntimeError(
                "a leaf Variable that requires grad is being used in an in-place operation; wrap it in conch.no_grad()"
            )
        if not fills:
            _check_overlap(self._data)
        if _COW:
            _copy_on_write(self)
        array_fn(self._data)
        self._version[0] += 1
        return self

    def _records_write(self, *others):
        """Whether an in-place write now must go through ``_assign`` (a graph or a view may be involved)."""
        if not _enabled[0]:
            return False
        return self.requires_grad or self._base is not None or any(o.requires_grad for o in others)

    def _scalar(self, value):
        return Tensor._make(xp_of(self._data).asarray(value, dtype=self.dtype))

    def zero_(self):
        if self._records_write():
            return self._assign(self._scalar(0), name="zero_", replaces=True, fills=True)
        return self._set_(lambda a: a.fill(0), fills=True)

    def fill_(self, value):
        if isinstance(value, Tensor):
            if value.ndim:
                raise RuntimeError(
                    f"fill_ only supports 0-dimension value tensor but got tensor with {value.ndim} dimensions"
                )
            if self._records_write(value):
                return self._assign(value.to(device=self.device), name="fill_", replaces=True, fills=True)
            value = value.item()
        if self._records_write():
            return self._assign(self._scalar(value), name="fill_", replaces=True, fills=True)
        return self._set_(lambda a: a.fill(value), fills=True)

    def copy_(self, src):
        src = _as_tensor(src, self)
        if src.device != self.device:
            src = src.to(device=self.device)
        if self._records_write(src):
            return self._assign(src, name="copy_", replaces=True)

        def put(a):
            a[...] = src._data.astype(a.dtype, copy=False)

        return self._set_(put)

    def clamp_(self, min=None, max=None):
        if self._records_write():
            return self._assign(self.clamp(min, max), name="clamp_")
        xp = xp_of(self._data)
        return self._set_(lambda a: xp.clip(a, min, max, out=a))

    # ------------------------------------------------------------ indexing
    def __getitem__(self, idx):
        idx = _index_arrays(idx, self)
        if type(idx) is tuple and len(idx) > 1:
            split = _split_int_index(idx)
            if split is not None:  # ints with index arrays: select the ints first, as PyTorch
                return self[split[0]][split[1]]
        idx = _view_index(idx)
        if not (_enabled[0] and self.requires_grad):
            out = Tensor._make(self._data[idx])
        else:
            out = ops.GetItem.apply(self, idx=idx)
        if ops._is_basic(idx):
            _mark_view(out, self, lambda b, idx=idx: b[idx])
        return out

    def __setitem__(self, idx, value):
        idx = _index_arrays(idx, self)
        steps = (idx,)
        if type(idx) is tuple and len(idx) > 1:
            split = _split_int_index(idx)
            if split is not None:
                steps = split  # self[ints] is a view: assigning into it writes self
        if isinstance(value, Tensor):
            if value.device != self.device:
                raise RuntimeError(f"expected value on {self.device}, got a tensor on {value.device}")
            if self._records_write(value):
                self._assign(value, steps, name="__setitem__")
                return
            v = value._data
        elif self._records_write():
            self._assign(_as_tensor(value, self), steps, name="__setitem__", fills=isinstance(value, numbers.Number))
            return
        elif isinstance(value, (np.ndarray, list, tuple)) and type(self._data) is not np.ndarray:
            # CuPy's basic-index assignment takes only scalars or CuPy arrays: copy host data over once
            v = xp_of(self._data).asarray(value, dtype=self._data.dtype)
        else:
            v = value
        if not isinstance(v, numbers.Number):  # a scalar is PyTorch's fill_, allowed into an expanded view
            target = self._data
            for i in steps:
                target = target[i]
            _check_overlap(target)
        if _COW:
            _copy_on_write(self)
        _write(self._data, steps, v)
        self._version[0] += 1

    def masked_fill(self, mask, value):
        m = _mask_array(mask, self)
        if isinstance(value, Tensor):
            value = value.item()
        return ops.MaskedFill.apply(self, mask=m, value=value)

    def masked_fill_(self, mask, value):
        m = _mask_array(mask, self)
        if isinstance(value, Tensor):
            value = value.item()
        if self._records_write():
            return self._assign(self.masked_fill(m, value), name="masked_fill_")
        if type(self._data) is np.ndarray:
            return self._set_(lambda a: np.putmask(a, m, value))
        # CuPy has no putmask; a masked copyto also broadcasts the mask, as PyTorch's masked_fill_ does
        xp = xp_of(self._data)
        m = m if m.dtype == np.bool_ else m.astype(np.bool_)
        return self._set_(lambda a: xp.copyto(a, xp.asarray(value, dtype=a.dtype), where=m))

    # ------------------------------------------------------------ shapes
    def reshape(self, *shape):
        a = self._data
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        known = 1
        for s in shape:  # the common case, sizes >= 0 as Python ints that fit: no -1 to infer, nothing to convert
            if type(s) is not int or s < 0:
                shape = _infer_shape(_shape_arg(shape), self)  # a -1 to infer, other integer types, or an error
                break
            known *= s
        else:
            if known != a.size:
                _infer_shape(shape, self)  # raises PyTorch's error for sizes that do not fit
        if shape == a.shape:
            return self
        arr = a.reshape(shape)
        b = arr.base  # a view's base is the array owning the memory (or a itself); a copy's is its own
        fn = None
        if b is not None and (b is a or b is a.base or _shares_memory(arr, a)):  # not when reshape copied
            fn = lambda b, shape=shape: b.reshape(shape)  # noqa: E731 (the view's replay, see _mark_view)
        if _enabled[0] and (self.requires_grad or self._base is not None):
            ctx = _new(ops.Reshape)
            ctx.shape = a.shape  # what Reshape's forward keeps
            out = _record1(ctx, self, arr)
            return out if fn is None else _mark_view(out, self, fn)
        return _make(arr) if fn is None else _view_tensor(arr, self, fn)  # nothing to record: no node

    def view(self, *shape):
        """The same memory seen with another shape (PyTorch's rule: each group of merged or split dims must be
        evenly strided, else a RuntimeError says to reshape), or with another dtype (``view(dtype)``: the bits
        reinterpreted, the last dim scaled by the ratio of item sizes)."""
        if len(shape) == 1 and not isinstance(shape[0], (int, tuple, list, np.integer)):
            return self._view_dtype(D.as_dtype(shape[0]))
        shape = _infer_shape(_shape_arg(shape), self)
        a = self._data
        # a C-contiguous tensor views as any shape of its size: the stride test only for the others
        if shape != a.shape and not a.flags.c_contiguous and _view_strides(self.shape, self.stride(), shape) is None:
            raise RuntimeError(
                "view size is not compatible with input tensor's size and stride (at least one dimension spans "
                "across two contiguous subspaces). Use .reshape(...) instead."
            )
        return self.reshape(shape)

    def _view_dtype(self, dtype):
        """``view(dtype)``: no copy, no gradient (as PyTorch); shares self's memory and version counter."""
        a, old, new = self._data, self._data.itemsize, np.dtype(dtype).itemsize
        if old != new:
            if self.ndim == 0:
                raise RuntimeError(
                    "self.dim() cannot be 0 to view "
                    f"{D.scalar_name(self.dtype)} as {D.scalar_name(dtype)} (different element sizes)"
                )
            if a.shape[-1] != 1 and a.strides[-1] != old:
                raise RuntimeError("self.stride(-1) must be 1 to view " f"{D.scalar_name(self.dtype)} as "
                                   f"{D.scalar_name(dtype)} (different element sizes)")  # fmt: skip
            if new > old and (a.shape[-1] * old) % new:
                raise RuntimeError(
                    f"self.size(-1) must be divisible by {new // old} to view {D.scalar_name(self.dtype)} as "
                    f"{D.scalar_name(dtype)} (different element sizes), but got {a.shape[-1]}"
                )
            if new > old and any(st % new for st in a.strides[:-1]):
                raise RuntimeError(
                    f"self.stride(i) must be divisible by {new // old} for all i < self.dim() - 1 to view "
                    f"{D.scalar_name(self.dtype)} as {D.scalar_name(dtype)} (different element sizes)"
                )
            if a.shape[-1] == 1 and a.strides[-1] != old:  # a size-1 last dim may have any stride: make it dense
                a = xp_of(a).lib.stride_tricks.as_strided(a, strides=a.strides[:-1] + (old,))
        out = Tensor._make(a.view(dtype))
        out._version = self._version
        return out

    def flatten(self, start_dim=0, end_dim=-1):
        if self.ndim == 0:
            return self.reshape(1)
        s, e = _norm_dim(start_dim, self.ndim), _norm_dim(end_dim, self.ndim)
        if s > e:
            raise RuntimeError("flatten() has invalid args: start_dim cannot come after end_dim")
        shape = self.shape[:s] + (math.prod(self.shape[s : e + 1]),) + self.shape[e + 1 :]
        return self.reshape(shape)

    def unflatten(self, dim, sizes):
        d = _norm_dim(dim, self.ndim)
        return self.reshape(self.shape[:d] + tuple(sizes) + self.shape[d + 1 :])

    def transpose(self, dim0, dim1):
        nd = self._data.ndim
        if nd == 2 and type(dim0) is int and type(dim1) is int and -2 <= dim0 < 2 and -2 <= dim1 < 2:
            # a matrix, the common case: two different dims (modulo 2) swap, else nothing moves
            return self._permute(_SWAP2) if (dim0 - dim1) % 2 else self
        d0, d1 = norm_dim(dim0, nd), norm_dim(dim1, nd)
        if d0 == d1:
            return self
        perm = list(range(nd))
        perm[d0], perm[d1] = d1, d0
        return self._permute(tuple(perm))

    swapaxes = transpose

    def t(self):
        return self if self.ndim < 2 else self.transpose(0, 1)

    def permute(self, *dims):
        dims = _shape_arg(dims)
        if len(dims) != self.ndim:
            raise RuntimeError(
                f"permute(sparse_coo): number of dimensions in the tensor input does not match the length of the "
                f"desired ordering of dimensions i.e. input.dim() = {self.ndim} is not equal to len(dims) = {len(dims)}"
            )
        perm = tuple([norm_dim(d, self.ndim) for d in dims])
        if len(set(perm)) != len(perm):
            raise RuntimeError(f"permute(): duplicate dims are not allowed, got {dims}")
        return self._permute(perm)

    def _permute(self, perm):
        """The view with dims in the order ``perm`` (a checked tuple of distinct non-negative dims)."""
        arr = self._data.transpose(perm)
        fn = lambda b, perm=perm: b._permute(perm)  # noqa: E731 (the view's replay, see _mark_view)
        if _enabled[0] and (self.requires_grad or self._base is not None):
            ctx = _new(ops.Permute)
            ctx.perm = perm  # what Permute's forward keeps
            return _mark_view(_record1(ctx, self, arr), self, fn)
        return _view_tensor(arr, self, fn)  # nothing to record: no node

    def unsqueeze(self, dim):
        d = _norm_dim(dim, self.ndim + 1)
        return self.reshape(self.shape[:d] + (1,) + self.shape[d:])

    def squeeze(self, dim=None):
        if dim is None:
            return self.reshape(tuple(s for s in self.shape if s != 1))
        dims = {_norm_dim(d, self.ndim) for d in (dim if isinstance(dim, (tuple, list)) else (dim,))}
        return self.reshape(tuple(s for i, s in enumerate(self.shape) if not (i in dims and s == 1)))

    def expand(self, *shape):
        shape = _shape_arg(shape)
        if len(shape) < self.ndim:
            raise RuntimeError(
                f"expand: the number of sizes provided ({len(shape)}) must be greater or equal to the number of "
                f"dimensions in the tensor ({self.ndim})"
            )
        lead = len(shape) - self.ndim
        full = tuple((self.shape[i - lead] if s == -1 else s) if i >= lead else s for i, s in enumerate(shape))
        for i in range(self.ndim):
            if self.shape[i] != 1 and self.shape[i] != full[i + lead]:
                raise RuntimeError(
                    f"The expanded size of the tensor ({full[i + lead]}) must match the existing size "
                    f"({self.shape[i]}) at non-singleton dimension {i + lead}.  Target sizes: {list(shape)}.  "
                    f"Tensor sizes: {list(self.shape)}"
                )
        if full == self.shape:
            return self
        return _mark_view(ops.Expand.apply(self, shape=full), self, lambda b, full=full: b.expand(*full))

    def expand_as(self, other):
        return self.expand(*other.shape)

    def view_as(self, other):
        return self.view(*other.shape)

    def reshape_as(self, other):
        return self.reshape(*other.shape)

    def split(self, split_size_or_sections, dim=0):
        return split(self, split_size_or_sections, dim)

    def chunk(self, chunks, dim=0):
        chunks = int(chunks)
        if chunks <= 0:
            raise RuntimeError(f"chunk expects `chunks` to be greater than 0, got: {chunks}")
        d = _norm_dim(dim, self.ndim)
        n = self.shape[d]
        if n == 0:  # PyTorch: `chunks` empty parts (split would give one)
            return split(self, [0] * chunks, d)
        return split(self, -(-n // chunks), d)

    def unbind(self, dim=0):
        d = _norm_dim(dim, self.ndim)
        return tuple(p.squeeze(d) for p in split(self, 1, d))

    # ------------------------------------------------------------ reductions
    # dim=() (and []) reduces over every dim in sum/mean/var/amax (as PyTorch), not over none: ops.dims.norm_dims
    def sum(self, dim=None, keepdim=_UNSET, dtype=None, *, axis=None, keepdims=None):
        x, d, keepdim = _reduction_args(self, "sum", dim, keepdim, dtype, axis, keepdims)
        a = x._data
        if _enabled[0] and (x.requires_grad or x._base is not None):
            ctx = _new(ops.Sum)
            ctx.dim, ctx.keepdim, ctx.shape = d, keepdim, a.shape  # what Sum's forward keeps
            return _record1(ctx, x, _sum_array(a, d, keepdim))
        return _make(_sum_array(a, d, keepdim))  # nothing to record: no node

    def mean(self, dim=None, keepdim=_UNSET, dtype=None, *, axis=None, keepdims=None):
        x, d, keepdim = _reduction_args(self, "mean", dim, keepdim, dtype, axis, keepdims)
        if x._data.dtype not in _FLOATS:
            raise RuntimeError(
                f"mean(): could not infer output dtype. Input dtype must be floating point, but got {x.dtype}"
            )
        a = x._data
        n = _count(a.shape, d)
        if _enabled[0] and (x.requires_grad or x._base is not None):
            ctx = _new(ops.Mean)
            ctx.dim, ctx.keepdim, ctx.shape, ctx.n = d, keepdim, a.shape, n  # what Mean's forward keeps
            return _record1(ctx, x, _mean_array(a, d, keepdim, n))
        return _make(_mean_array(a, d, keepdim, n))  # nothing to record: no node

    sum._numpy_names = mean._numpy_names = True  # they take axis=/keepdims= themselves (no tensor_api wrapper)

    def var(self, dim=None, unbiased=True, keepdim=False, correction=None):
        c = (1 if unbiased else 0) if correction is None else correction
        d = norm_dims(dim, self.ndim, "var")
        return ops.Var.apply(_fp32("var", self), dim=d, correction=c, keepdim=keepdim)

    def std(self, dim=None, unbiased=True, keepdim=False, correction=None):
        return ops.StdFromVar.apply(_fp32("std", self).var(dim, unbiased, keepdim, correction))

    def amax(self, dim=None, keepdim=False):
        d = norm_dims(dim, self.ndim, "amax")
        _check_reduce(self, "amax", d)
        return ops.AMax.apply(self, dim=d, keepdim=keepdim)

    def amin(self, dim=None, keepdim=False):
        d = norm_dims(dim, self.ndim, "amin")
        _check_reduce(self, "amin", d)
        return ops.AMax.apply(self, dim=d, keepdim=keepdim, largest=False)

    def max(self, dim=None, keepdim=False):
        """``max()``: the largest element (gradient shared by ties); ``max(dim)``: ``(values, indices)``
        with the first maximum's index, which alone gets the gradient (as PyTorch)."""
        if isinstance(dim, Tensor):
            return maximum(self, dim)
        if dim is None:
            return self.amax()
        return self._minmax_dim(dim, keepdim, True)

    def min(self, dim=None, keepdim=False):
        if isinstance(dim, Tensor):
            return minimum(self, dim)
        if dim is None:
            return self.amin()
        return self._minmax_dim(dim, keepdim, False)

    def _minmax_dim(self, dim, keepdim, largest):
        d = _norm_dim(dim, self.ndim)
        _check_reduce(self, "max" if largest else "min", d if self.ndim else None)
        if self.ndim == 0:
            return ops.ValuesIndices((self.clone(), _const(xp_of(self._data).zeros((), dtype=np.int64))))
        a = self._data
        # NumPy's argmax/argmin pick the first extremum (and the first NaN), as PyTorch's max(dim) does
        idx = (a.argmax if largest else a.argmin)(axis=d, keepdims=True).astype(np.int64, copy=False)
        values = ops.TakeAlongDim.apply(self, idx=idx, dim=d, keepdim=keepdim)
        return ops.ValuesIndices((values, _const(idx if keepdim else idx.squeeze(d))))

    def argmax(self, dim=None, keepdim=False):
        return self._arg(dim, keepdim, "argmax")

    def argmin(self, dim=None, keepdim=False):
        return self._arg(dim, keepdim, "argmin")

    def _arg(self, dim, keepdim, name):
        _check_reduce(self, name, None if dim is None or not self.ndim else _norm_dim(dim, self.ndim))
        a = self._data
        if dim is None:
            i = xp_of(a).asarray(getattr(a, name)()).astype(np.int64)
            return _const(i.reshape((1,) * a.ndim) if keepdim else i)
        d = _norm_dim(dim, self.ndim)
        if a.ndim == 0:
            return _const(xp_of(a).zeros((), dtype=np.int64))
        return _const(getattr(a, name)(axis=d, keepdims=keepdim).astype(np.int64, copy=False))

    def all(self, dim=None, keepdim=False):
        d = norm_dims(dim, self.ndim, "all", empty_is_all=False)  # all(dim=()) reduces nothing, as PyTorch
        return _const(xp_of(self._data).asarray(self._data.all(axis=d, keepdims=keepdim)))

    def any(self, dim=None, keepdim=False):
        d = norm_dims(dim, self.ndim, "any", empty_is_all=False)
        return _const(xp_of(self._data).asarray(self._data.any(axis=d, keepdims=keepdim)))

    def norm(self, p=2, dim=None, keepdim=False):
        self = _fp32("norm", _floating(self))
        if p == 1:
            return self.abs().sum(dim, keepdim)
        if p == float("inf"):
            return self.abs().amax(dim, keepdim)
        if p == 0:
            return (self != 0).to(dtype=self.dtype).sum(dim, keepdim)
        d = norm_dims(dim, self.ndim, "norm")
        return ops.PNorm.apply(self, p=float(p), dim=d, keepdim=bool(keepdim) and d is not None)

    def logsumexp(self, dim, keepdim=False):
        self = _fp32("logsumexp", self)
        if self._data.size == 0:  # log of an empty sum: -inf (or an empty result), without log(0)'s warning
            out = self.sum(dim, keepdim=True) + float("-inf")
        else:
            m = self.detach().amax(dim, keepdim=True)
            m = m.masked_fill(~xp_of(m._data).isfinite(m._data), 0)
            out = (self - m).exp().sum(dim, keepdim=True).log() + m
        return out if keepdim else out.squeeze(dim)

    def cumsum(self, dim):
        return cumsum(self, dim)

    # ------------------------------------------------------------ elementwise
    def exp(self):
        return ops.Exp.apply(_fp32("exp", _floating(self)))

    def log(self):
        return ops.Log.apply(_fp32("log", _floating(self)))

    def sqrt(self):
        return ops.Sqrt.apply(_floating(self))

    def rsqrt(self):
        return ops.Rsqrt.apply(_fp32("rsqrt", _floating(self)))

    def abs(self):
        return ops.Abs.apply(self)

    def sin(self):
        return ops.Sin.apply(_floating(self))

    def cos(self):
        return ops.Cos.apply(_floating(self))

    def sign(self):
        return ops.Rounding.apply(self, fn="sign", decimals=0)  # piecewise constant: zero gradient

    def square(self):
        return self * self

    def reciprocal(self):
        return 1 / _fp32("reciprocal", self)

    def log1p(self):
        return ops.Log1p.apply(_fp32("log1p", _floating(self)))

    def expm1(self):
        return ops.Expm1.apply(_fp32("expm1", _floating(self)))

    def clamp(self, min=None, max=None):
        if min is None and max is None:
            raise RuntimeError("clamp: at least one of 'min' or 'max' must not be None")
        if isinstance(min, Tensor) or isinstance(max, Tensor):
            bounds = [_as_tensor(b, self) for b in (min, max) if b is not None]
            dt = D.result_type(*[(t.dtype, t.ndim) for t in [self, *bounds]])
            ts = []
            for t in [self, *bounds]:
                _check_devices(self, t)
                ts.append(t if t.dtype == dt else t.to(dtype=dt))
            has = ("lo" if min is not None else "") + ("hi" if max is not None else "")
            return ops.ClampTensor.apply(*ts, has=has)
        if not self.is_floating_point() and (isinstance(min, float) or isinstance(max, float)):
            self = self.to(dtype=D.get_default_dtype())  # an integer tensor clamped to a float bound: float
        return ops.Clamp.apply(self, lo=min, hi=max)

    clip = clamp

    def maximum(self, other):
        return maximum(self, other)

    def minimum(self, other):
        return minimum(self, other)

    def where(self, cond, other):
        return where(cond, self, other)

    def flip(self, dims):
        """A copy reversed along ``dims`` (as PyTorch: not a view, so writes to it leave self alone)."""
        dims = (dims,) if isinstance(dims, int) else tuple(dims)
        norm = [_norm_dim(d, self.ndim) for d in dims] if self.ndim else []
        if len(set(norm)) != len(norm):
            raise RuntimeError(f"dim {max(norm, key=norm.count)} appears multiple times in the list of dims {dims}")
        return ops.Flip.apply(self, dims=tuple(sorted(norm)))

    def _as_grad(self, g):
        """``g`` (a Tensor, number or array) as a gradient for this tensor: a Tensor of its shape."""
        if not isinstance(g, Tensor):
            g = _as_tensor(g, self)
        if g._data.shape != self._data.shape:
            raise RuntimeError(
                f"Mismatch in shape: grad_output has a shape of {g.shape} and output has a shape of {self.shape}"
            )
        return g


# ---------------------------------------------------------------- helpers

_make = Tensor._make


def _fp32(op, t):
    """``t`` as autocast's policy table casts it for ``op`` (reductions, exp/log/pow: float32); one list read
    when autocast is off."""
    return cast_for(op, t)[0] if _autocast[0] else t


def _check_int_divisor(b):
    """Integer // 0 and % 0 raise, as PyTorch's CPU kernels ("ZeroDivisionError"), where NumPy returns 0 with a
    warning. Read at once on the CPU; on a GPU at the next sync (kernels._deferred, as index checks)."""
    d = b._data
    if d.dtype.kind in "iu":
        _deferred.check((d == 0).any(), 0, lambda _: RuntimeError("ZeroDivisionError"))


def _const(arr):
    return Tensor._make(arr)


def _looks_like_dtype(s):
    try:
        D.as_dtype(s)
        return True
    except TypeError:
        return False


def _check_reduce(t, name, dims):
    """A max-like reduction (no identity) of an empty tensor: over a dim of size 0 it raises, as PyTorch; over
    non-empty dims (another dim is 0) it gives an empty result."""
    if t._data.size != 0:
        return
    if dims is None:
        raise RuntimeError(
            f"{name}(): Expected reduction dim to be specified for input.numel() == 0. Specify the reduction dim "
            "with the 'dim' argument."
        )
    for d in (dims,) if isinstance(dims, int) else dims:
        if t.shape[d] == 0:
            raise IndexError(f"{name}(): Expected reduction dim {d} to have non-zero size.")


def _floating(t):
    return t if t.is_floating_point() else t.to(dtype=D.get_default_dtype())


def _view_strides(old_shape, old_strides, new_shape):
    """The strides (in elements) under which ``new_shape`` views a tensor of ``old_shape``/``old_strides`` without
    a copy, or None: PyTorch's ``computeStride``. Old dims are taken in chunks of evenly strided neighbours; each
    chunk must be covered exactly by a run of new dims, which then get that chunk's strides."""
    if not old_shape:
        return (1,) * len(new_shape)
    numel = math.prod(old_shape)
    if numel == 0:  # an empty tensor views as anything of the same (zero) size
        return tuple(old_strides) if tuple(old_shape) == tuple(new_shape) else (0,) * len(new_shape)
    new_strides = [0] * len(new_shape)
    view_d = len(new_shape) - 1
    base_stride, tensor_numel, view_numel = old_strides[-1], 1, 1
    for d in range(len(old_shape) - 1, -1, -1):
        tensor_numel *= old_shape[d]
        # the chunk ends at d when d is the first dim or dim d-1 does not continue it evenly
        if d == 0 or (old_shape[d - 1] != 1 and old_strides[d - 1] != tensor_numel * base_stride):
            while view_d >= 0 and (view_numel < tensor_numel or new_shape[view_d] == 1):
                new_strides[view_d] = view_numel * base_stride
                view_numel *= new_shape[view_d]
                view_d -= 1
            if view_numel != tensor_numel:
                return None
            if d > 0:
                base_stride, tensor_numel, view_numel = old_strides[d - 1], 1, 1
    return tuple(new_strides) if view_d == -1 else None


def _infer_shape(shape, t):
    """``shape`` (a tuple of ints) for ``t``'s elements, its one ``-1`` filled in; a size that does not fit is
    PyTorch's RuntimeError. Plain integer arithmetic: no NumPy call on this path of every reshape/view."""
    n = t._data.size
    known, infer = 1, -1
    for i, s in enumerate(shape):
        if s == -1:
            if infer >= 0:
                raise RuntimeError("only one dimension can be inferred")
            infer = i
        elif s < 0:
            raise RuntimeError(f"invalid shape dimension {s}")
        else:
            known *= s
    if infer >= 0:
        if known == 0 or n % known:
            raise RuntimeError(f"shape '{list(shape)}' is invalid for input of size {n}")
        return shape[:infer] + (n // known,) + shape[infer + 1 :]
    if known != n:
        raise RuntimeError(f"shape '{list(shape)}' is invalid for input of size {n} (tensor shape {t.shape})")
    return shape


def _as_tensor(x, like):
    if isinstance(x, Tensor):
        return x
    if isinstance(x, numbers.Number):
        dt = D.result_type((like.dtype, like.ndim), x)
        return Tensor._make(xp_of(like._data).asarray(x, dtype=dt))
    return Tensor._make(_to_array(x, None, like.device))


def _device_arg(d):
    return CPU if d is None else device(d)


def _infer_dtype(data):
    """dtype of nested Python data, as torch.tensor infers it."""
    if isinstance(data, (bool, np.bool_)):
        return D.bool_
    if isinstance(data, numbers.Integral):
        return D.int64
    if isinstance(data, numbers.Real):
        return D.get_default_dtype()
    try:  # every element counts: [1, 2.5] is floating, [True, 2] is integer
        kind = np.asarray(data).dtype.kind
    except (ValueError, TypeError):
        return D.get_default_dtype()  # ragged or odd data: the conversion below reports it
    return D.bool_ if kind == "b" else D.int64 if kind in "iu" else D.get_default_dtype()


def _to_array(data, dtype, dev):
    dtype = None if dtype is None else D.as_dtype(dtype)
    if isinstance(data, Tensor):
        arr = data._data
        dev = device_of(arr) if dev is None else device(dev)
        return asarray_on(arr if dtype is None else arr.astype(dtype), dtype or arr.dtype, dev)
    dev = (CPU if dev is None else device(dev)) if dev is not None or not is_cupy_array(data) else device_of(data)
    if isinstance(data, np.ndarray) or is_cupy_array(data):
        _check_numeric(data.dtype, data)
        return asarray_on(data, dtype or data.dtype, dev)
    if isinstance(data, np.generic):
        _check_numeric(data.dtype, data)
        return asarray_on(np.asarray(data), dtype or data.dtype, dev)
    if data is None:  # np.array(None, float) would be nan: PyTorch refuses
        raise RuntimeError("Could not infer dtype of NoneType")
    if isinstance(data, (str, bytes)):
        raise TypeError(f"new(): invalid data type '{type(data).__name__}'")
    if dtype is None:
        dtype = _infer_dtype(data)
    try:
        probe = np.asarray(data)
    except ValueError:  # ragged: the conversion below reports it
        probe = None
    if probe is not None:
        if probe.dtype.kind in "US" or (probe.dtype.kind == "O" and _has_none_or_str(data)):
            # a nested None or string: NumPy would turn None into nan and keep strings as a str32 array
            raise TypeError(f"new(): invalid data type in {type(data).__name__}: expected numbers or bools")
    try:
        arr = np.array(data, dtype=np.float64 if dtype in D.FLOATING else None)
    except ValueError as e:
        raise ValueError(f"could not make a tensor from {type(data).__name__}: {e}") from None
    if arr.dtype == object:
        raise TypeError(f"could not make a tensor from data of type {type(data).__name__} (ragged or non-numeric)")
    return asarray_on(arr, dtype, dev)


def _has_none_or_str(data):
    if data is None or isinstance(data, (str, bytes)):
        return True
    return isinstance(data, (list, tuple)) and any(_has_none_or_str(d) for d in data)


def _check_numeric(dt, data):
    """Strings, bytes and Python objects make no tensor (NumPy would hold them as a str32/object array)."""
    if dt.kind == "V":  # bfloat16 made by the caller's ml_dtypes: conch's dtype tables list it from now on
        D.note_dtype(dt)
    elif dt.kind in "USO":
        raise TypeError(f"can't convert np.ndarray of type {dt}: only numeric and bool arrays make tensors")


def _check_devices(a, b):
    if type(a._data) is not type(b._data) or (not isinstance(a._data, np.ndarray) and a.device != b.device):
        raise RuntimeError(
            f"Expected all tensors to be on the same device, but found at least two devices, {a.device} and {b.device}!"
        )


def _operand(x, t):
    """``x`` if it may meet a Tensor in a binary op: an array (NumPy/CuPy); a list, None or string is a
    TypeError, as PyTorch (``tensor + [1, 2]`` and ``tensor + None`` compute nothing)."""
    if isinstance(x, np.ndarray) or is_cupy_array(x):
        _check_numeric(x.dtype, x)
        return x
    raise TypeError(f"unsupported operand type(s): 'Tensor' and '{type(x).__name__}'")


def _operands(a, b, floating=False):
    """Turn a binary op's operands into two Tensors of the promoted dtype on one device."""
    at, bt = isinstance(a, Tensor), isinstance(b, Tensor)
    if at and bt:
        ad, bd = a._data, b._data
        if type(ad) is not type(bd) or (type(ad) is not np.ndarray and a.device != b.device):
            _check_devices(a, b)
        da, db = ad.dtype, bd.dtype
        if da == db and (not floating or da in D.FLOATING):  # the common case: nothing to convert
            dt = da
        else:
            dt = D.result_type((da, ad.ndim), (db, bd.ndim))
            if floating and dt not in D.FLOATING:
                dt = D.get_default_dtype()
            if da != dt:
                a = a.to(dtype=dt)
            if db != dt:
                b = b.to(dtype=dt)
        sa, sb = ad.shape, bd.shape
        if sa != sb and sa and sb:
            try:
                np.broadcast_shapes(sa, sb)
            except ValueError:
                raise RuntimeError(
                    f"The size of tensor a {sa} must match the size of tensor b {sb}: shapes are not broadcastable"
                ) from None
        return a, b
    if at:
        if not isinstance(b, (numbers.Number, np.generic)):
            return _operands(a, _as_tensor(_operand(b, a), a), floating)
        da = a._data.dtype
        if (type(b) is float or type(b) is int) and da in D.FLOATING:  # a Python number keeps a float dtype
            return a, Tensor._make(xp_of(a._data).asarray(b, dtype=da))
        like, dt = a, D.result_type((da, a._data.ndim), b)
    elif bt:
        if not isinstance(a, (numbers.Number, np.generic)):
            return _operands(_as_tensor(_operand(a, b), b), b, floating)
        db = b._data.dtype
        if (type(a) is float or type(a) is int) and db in D.FLOATING:
            return Tensor._make(xp_of(b._data).asarray(a, dtype=db)), b
        like, dt = b, D.result_type(a, (db, b._data.ndim))
    else:
        raise TypeError("at least one operand must be a Tensor")
    if floating and dt not in D.FLOATING:
        dt = D.get_default_dtype()
    xp = xp_of(like._data)
    if at:
        a = a if a._data.dtype == dt else a.to(dtype=dt)
        b = Tensor._make(xp.asarray(b, dtype=dt))
    else:
        a = Tensor._make(xp.asarray(a, dtype=dt))
        b = b if b._data.dtype == dt else b.to(dtype=dt)
    return a, b


def _mask_array(mask, t):
    """``mask`` (a Tensor, NumPy/CuPy array or nested list) as a bool-or-other array in ``t``'s namespace."""
    m = mask._data if isinstance(mask, Tensor) else mask
    if type(m) is not type(t._data):
        m = xp_of(t._data).asarray(to_host(m))
    return m


#: What a list inside an index usually holds; anything else gets a closer look (tensors, nested lists).
_PLAIN_LIST_ITEMS = frozenset((int, bool))


class _EmptyIndex(dict):
    """namespace -> an empty int64 index array (made once per namespace)."""

    def __missing__(self, xp):
        self[xp] = xp.zeros(0, dtype=np.int64)
        return self[xp]


_EMPTY_INDEX = _EmptyIndex()
_AS_ARRAY = frozenset((bool, list, tuple))


def _index_arrays(idx, t):
    """Replace Tensors and lists in an index by arrays on the tensor's device."""
    if type(idx) is list:
        if set(map(type, idx)) <= _PLAIN_LIST_ITEMS:  # the common x[[0, 2]] (set/map: no per-item Python frame)
            return xp_of(t._data).asarray(idx) if idx else _EMPTY_INDEX[xp_of(t._data)]
        if any(isinstance(e, (Tensor, list, tuple, slice, type(None), type(...))) for e in idx):
            idx = tuple(idx)  # PyTorch still reads such a list as the tuple of indices (deprecated, as NumPy did)
    items = idx if isinstance(idx, tuple) else (idx,)
    out = []
    xp = xp_of(t._data)
    for i in items:
        if isinstance(i, Tensor):
            if i.dtype.kind not in "biu":
                raise IndexError(f"tensors used as indices must be long, int or bool tensors, got {i.dtype}")
            if i._data.ndim == 0 and i.dtype.kind != "b":  # a 0-d integer tensor selects, as an int does
                out.append(int(i._data))
                continue
            if i.device != t.device:
                if i.device.type != "cpu":  # as PyTorch: CPU indices may index a GPU tensor, not the reverse
                    raise RuntimeError(f"indices should be on the tensor's device ({t.device}), got {i.device}")
                out.append(xp.asarray(i._data))
                continue
            out.append(i._data)
        elif type(i) in _AS_ARRAY:
            # True/False: a new dim of size 1/0 (a 0-d boolean mask); a list or tuple inside the index: an index
            # array (PyTorch, NumPy), whose tensors become arrays first
            plain = type(i) is bool or set(map(type, i)) <= _PLAIN_LIST_ITEMS
            if type(i) is not bool and not i:  # x[:, []]: an empty integer index (NumPy would make it float)
                out.append(_EMPTY_INDEX[xp])
                continue
            out.append(xp.asarray(i if plain or not any(isinstance(e, Tensor) for e in i) else _index_arrays(i, t)))
        elif isinstance(i, np.ndarray) and xp is not np:
            out.append(xp.asarray(i))
        else:
            out.append(i)
    return tuple(out) if isinstance(idx, tuple) else out[0]


_OVERLAP = (
    "unsupported operation: more than one element of the written-to tensor refers to a single memory location. "
    "Please clone() the tensor before performing the operation."
)


def _check_overlap(arr):
    """Refuse an in-place write into ``arr`` when several of its elements share one memory location (an expanded
    view): the result would depend on the write order. PyTorch's check (a 0 stride on a dim of size > 1)."""
    if arr.size > 1 and any(st == 0 and n > 1 for st, n in zip(arr.strides, arr.shape)):
        raise RuntimeError(_OVERLAP)


def _view_index(idx):
    """A basic index with integers that would give NumPy a scalar (a copy) gets a trailing ``...``, which makes
    NumPy return a 0-d view instead: ``t[1]`` of a 1-D tensor is then a view, as in PyTorch."""
    items = idx if type(idx) is tuple else (idx,)
    has_int = False
    for i in items:
        if type(i) is int or isinstance(i, np.integer):
            has_int = True
        elif i is Ellipsis or not isinstance(i, (slice, type(None))):
            return idx  # already has an ellipsis, or is advanced indexing
    return items + (Ellipsis,) if has_int else idx


def _mark_view(out, base, fn):
    """Record that ``out`` views ``base`` (``out = fn(base)``): they share memory and the version counter."""
    out._version, out._base, out._vfn, out._vver, out._vgrad = base._version, base, fn, base._version[0], _enabled[0]
    return out


def _view_tensor(arr, base, fn):
    """``_mark_view(_make(arr), base, fn)`` in one step, each slot written once: a view with no node (reshape and
    permute when nothing is recorded)."""
    t = _new(Tensor)
    t._data, t.requires_grad, t.grad_fn, t.grad, t._output_nr, t._hooks = arr, False, None, None, 0, None
    v = base._version
    t._version, t._base, t._vfn, t._vver, t._vgrad = v, base, fn, v[0], _enabled[0]
    return t


def _keep_old_values(node, counter, arr):
    """Before an in-place write into ``arr``: give the op that computed the new values from the old ones a
    private copy of whatever it saved from ``arr`` (PyTorch's "original self"), so its backward still works."""
    for s in node._saved:
        if s is not None and s.counter is counter and not s.is_output:
            s.data, s.counter = s.data.copy(), [s.version]
    res = getattr(node, "res", None)  # a fused op's kernel residuals: always its family's NamedTuple
    if res is not None:  # fields are arrays and attributes (ints, dtypes, shapes): copy the arrays aliasing arr
        node.res = res._make(
            r.copy() if hasattr(r, "strides") and r.size and _shares_memory(r, arr) else r for r in res
        )
        # the residuals that aliased the written memory are private copies now: their guards have nothing to check
        node._guards = tuple(g for g in node._guards if g[1] is not counter or not _shares_memory(g[0], arr))


# Copy-on-write registrations: id(version counter) -> (counter, [weak references to nodes]). A fused op whose
# residuals alias an input that PyTorch's unfused op would not save (cross_entropy's logits: log_softmax keeps
# its output, nll_loss the log-probabilities) registers that input's counter here; an in-place write into memory
# sharing the counter first hands each live registered node a private copy of the old values (``_keep_old_values``),
# so the gradient stays right without keeping a copy of the logits when nothing writes them. The counter is held
# in the entry, so its id is not reused while the entry lives; an entry goes when its last node is collected.
_COW: dict = {}


def _register_copy_on_write(node, counter):
    key = id(counter)
    entry = _COW.get(key)
    if entry is None:
        entry = _COW[key] = (counter, [])

    def drop(ref, key=key):
        e = _COW.get(key)
        if e is not None:
            if ref in e[1]:
                e[1].remove(ref)
            if not e[1]:
                del _COW[key]

    entry[1].append(weakref.ref(node, drop))


def _copy_on_write(t):
    """Before an in-place write into ``t`` (or a part of it: copying for the whole is the safe superset):
    private copies of the old values for the nodes registered on ``t``'s counter."""
    entry = _COW.get(id(t._version))
    if entry is None or entry[0] is not t._version:
        return
    for ref in list(entry[1]):
        node = ref()
        if node is not None:
            _keep_old_values(node, t._version, t._data)


def _write(arr, steps, value):
    """``arr[s0][s1]...[sn] = value``: every step but the last is basic indexing (a view of arr)."""
    if not steps:
        arr[...] = value
        return
    for i in steps[:-1]:
        arr = arr[i]
    arr[steps[-1]] = value


def _shares_memory(a, b):
    return bool(xp_of(a).may_share_memory(a, b))


def _split_int_index(idx):
    """PyTorch applies integer indices before index arrays: ``x[0, :, [0, 1]]`` is ``x[0][:, [0, 1]]`` (shape
    (n, 2)); NumPy would broadcast the 0 with the array and move that dim first (shape (2, n)).
    Returns ``(ints, rest)`` (two indices applied one after the other) or None when NumPy's answer is PyTorch's.
    """
    has_int = has_array = False
    for i in idx:
        if type(i) is int or isinstance(i, np.integer):
            has_int = True
        elif not isinstance(i, (slice, type(None), type(Ellipsis))):
            has_array = True
    if not (has_int and has_array):
        return None
    first, rest = [], []
    for i in idx:
        if type(i) is int or isinstance(i, np.integer):
            first.append(i)
        elif i is None:
            first.append(None)
            rest.append(slice(None))  # the new axis exists after the first step
        elif i is Ellipsis:
            first.append(i)
            rest.append(i)
        elif isinstance(i, slice):
            first.append(slice(None))
            rest.append(i)
        else:
            nd = i.ndim if i.dtype == np.bool_ else 1  # a boolean mask spans as many dims as it has
            first.extend([slice(None)] * nd)
            rest.append(i)
    return tuple(first), tuple(rest)


# ---------------------------------------------------------------- functions


def cat(tensors, dim=0):
    if isinstance(tensors, Tensor) or not isinstance(tensors, (list, tuple)):
        # a tensor is iterable, but cat(x) is a mistake PyTorch refuses rather than concatenating x's rows
        raise TypeError(
            f"cat(): argument 'tensors' (position 1) must be tuple of Tensors, not {type(tensors).__name__}"
        )
    for i, t in enumerate(tensors):
        if not isinstance(t, Tensor):
            raise TypeError(f"cat(): expected Tensor as element {i} in argument 0, but got {type(t).__name__}")
    tensors = list(tensors)
    if not tensors:
        raise RuntimeError("cat(): expected a non-empty list of Tensors")
    ref = tensors[0]
    if ref.ndim == 0:
        raise RuntimeError("zero-dimensional tensor cannot be concatenated")
    d = _norm_dim(dim, ref.ndim)
    for i, t in enumerate(tensors[1:], 1):
        _check_devices(ref, t)
        if t.ndim != ref.ndim or t.shape[:d] + t.shape[d + 1 :] != ref.shape[:d] + ref.shape[d + 1 :]:
            raise RuntimeError(
                f"Sizes of tensors must match except in dimension {d}. Expected {ref.shape} (tensor 0) but got "
                f"{t.shape} for tensor number {i} in the list"
            )
    dt = ref.dtype
    for t in tensors[1:]:
        if t.dtype != dt:
            dt = D.result_type((dt, 1), (t.dtype, 1))
    tensors = [t.to(dtype=dt) for t in tensors]
    return ops.Cat.apply(*tensors, dim=d)


concat = concatenate = cat


def stack(tensors, dim=0):
    tensors = list(tensors)
    if not tensors:
        raise RuntimeError("stack expects a non-empty TensorList")
    for i, t in enumerate(tensors[1:], 1):
        if t.shape != tensors[0].shape:
            raise RuntimeError(
                f"stack expects each tensor to be equal size, but got {tensors[0].shape} at entry 0 and "
                f"{t.shape} at entry {i}"
            )
    d = _norm_dim(dim, tensors[0].ndim + 1)
    return cat([t.unsqueeze(d) for t in tensors], d)


def split(t, split_size_or_sections, dim=0):
    d = _norm_dim(dim, t.ndim)
    n = t.shape[d]
    if isinstance(split_size_or_sections, int):
        s = split_size_or_sections
        if s < 0:
            raise RuntimeError(f"split expects split_size be non-negative, but got split_size={s}")
        if s == 0:
            if n:
                raise RuntimeError(f"split_size can only be 0 if dimension size is 0, but got dimension size of {n}")
            return (t,)
        sizes = [s] * (n // s) + ([n % s] if n % s else []) or [0]  # a dim of size 0 gives one empty part
    else:
        sizes = [int(s) for s in split_size_or_sections]
        if sum(sizes) != n:
            raise RuntimeError(
                f"split_with_sizes expects split_sizes to sum exactly to {n} (input tensor's size at dimension "
                f"{d}), but got split_sizes={sizes}"
            )
    if len(sizes) <= 1:
        return (t,) if sizes else ()
    parts, start = ops.Split.apply(t, sizes=sizes, dim=d), 0
    for p, n in zip(parts, sizes):  # each part views t
        sl = (slice(None),) * d + (slice(start, start + n),)
        _mark_view(p, t, lambda b, sl=sl: b[sl])
        start += n
    return parts


def where(cond, a=None, b=None):
    if a is None and b is None:
        c = cond._data if isinstance(cond, Tensor) else cond
        return tuple(_const(i) for i in xp_of(c).nonzero(c))
    if not isinstance(cond, Tensor) and not (isinstance(cond, np.ndarray) or is_cupy_array(cond)):
        # where(True, x, y) is an error in PyTorch (the condition must be a bool tensor), not a broadcast
        raise TypeError(f"where(): argument 'condition' (position 1) must be Tensor, not {type(cond).__name__}")
    ref = a if isinstance(a, Tensor) else b
    if not isinstance(ref, Tensor):
        ref = cond
    a = _as_tensor(a, ref) if not isinstance(a, Tensor) else a
    b = _as_tensor(b, ref) if not isinstance(b, Tensor) else b
    a, b = _operands(a, b)
    c = cond._data if isinstance(cond, Tensor) else cond
    if isinstance(cond, Tensor):
        _check_devices(cond, a)
    elif type(c) is not type(a._data):  # a NumPy mask (or list) for GPU tensors: onto their device
        c = xp_of(a._data).asarray(to_host(c))
    if c.dtype != np.bool_:
        c = c.astype(bool)
    shape = np.broadcast_shapes(c.shape, a.shape, b.shape)
    c = xp_of(c).broadcast_to(c, shape)
    return ops.Where.apply(a, b, cond=c)


def maximum(a, b):
    a, b = _operands(a, b)
    return ops.Maximum.apply(a, b)


def minimum(a, b):
    a, b = _operands(a, b)
    return ops.Maximum.apply(a, b, largest=False)


def cumsum(t, dim):
    d = _norm_dim(dim, t.ndim)
    if t.ndim == 0:  # NumPy's cumsum flattens a 0-d array to shape (1,); PyTorch keeps ()
        return ops.Cumsum.apply(_fp32("cumsum", t.reshape(1)), dim=0).reshape(())
    return ops.Cumsum.apply(_fp32("cumsum", t), dim=d)
