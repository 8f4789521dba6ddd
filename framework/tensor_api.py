"""The rest of PyTorch's Tensor API, as methods attached to Tensor in one place and as functions (``conch.NAME``).

``tensor.py`` holds the core Tensor; the methods here need layers above it: the fused kernels (``matmul``,
``softmax``, the activations), creation (``new_zeros``, ``multinomial``), or are the long tail of PyTorch's
API (rounding, sorting, gather/scatter, diagonals, repeat, prod...). They are written as the body of
:class:`TensorMethods` and copied onto Tensor by :func:`attach`, which ``conch/__init__.py`` calls once; the ops
they build on live in :mod:`conch.ops`. Example::

    x = conch.randn(4, 6, requires_grad=True)
    top = x.topk(2, dim=1)                       # values (4, 2) with gradients, indices (4, 2) int64
    picked = x.gather(1, top.indices)            # the same values, through gather
    (top.values.sum() + x.tril().sum() + x.prod(1).sum()).backward()
"""

from __future__ import annotations

import functools

import numpy as np

from . import _dtype as D
from . import creation, ops
from ._backend import is_cupy_array, to_host, xp_of
from .amp.autocast_mode import cast_for
from .creation import rand
from .fused import activations as fused_act
from .fused import matmul as fused_matmul
from .fused import softmax as fused_softmax
from .kernels import _deferred
from .ops import (
    Atan2,
    Cumprod,
    DiagEmbed,
    Diagonal,
    MinMax,
    NanToNum,
    Prod,
    Roll,
    Rounding,
    Scatter,
    ScatterReduce,
    ValuesIndices,
    _argsort,
    _gather,
    _scatter_add_into,
)
from .tensor import Tensor, _check_devices, _const, _floating, _mark_view, _mask_array, _operands, cat
from .tensor import _norm_dim as _dim


def _index_array(index, t, what):
    """``index`` (a Tensor or array of integers) as an int64 array on t's device."""
    if not isinstance(index, Tensor) and not (isinstance(index, np.ndarray) or is_cupy_array(index)):
        raise TypeError(f"{what}(): argument 'index' must be Tensor, not {type(index).__name__}")
    arr = index._data if isinstance(index, Tensor) else index
    xp = xp_of(t._data)
    if arr.dtype not in (np.int32, np.int64):  # PyTorch takes int32 and int64 indices only, not bool/uint8/int16
        raise RuntimeError(f"{what}(): Expected dtype int32/int64 for index, got {arr.dtype}")
    if type(arr) is not type(t._data):
        arr = xp.asarray(to_host(arr))
    return arr.astype(np.int64, copy=False)


def _check_range(idx, n, dim, what, error=RuntimeError):
    if idx.size:
        # min and max stay arrays: no host sync on a GPU, where the check is read at the next sync
        # (kernels._deferred, as PyTorch's device assert); the wrap below keeps every index in range meanwhile
        xp = xp_of(idx)
        lo, hi = idx.min(), idx.max()
        # negative indices are out of bounds too: gather/take_along_dim/index_select do not wrap them (PyTorch)
        _deferred.check(
            (lo < 0) | (hi >= n),
            lambda: xp.where(hi >= n, hi, lo),
            lambda bad: error(f"{what}(): index {bad} is out of bounds for dimension {dim} with size {n}"),
        )
    return idx % n if n else idx  # on a GPU the check is read later: meanwhile keep every index in range


_SCATTER_REDUCE = {"add": "sum", "multiply": "prod"}  # scatter(reduce=...)'s names for scatter_reduce's


class TensorMethods:
    """The methods :func:`attach` gives Tensor (this class is never instantiated: it is a namespace that reads
    as the class body it extends)."""

    # ---- new tensors like this one
    def _like(self, fn, size, dtype, device, requires_grad):
        size = size[0] if len(size) == 1 and isinstance(size[0], (tuple, list)) else size
        t = getattr(creation, fn)(*size, dtype=dtype or self.dtype, device=device or self.device)
        return t.requires_grad_(True) if requires_grad else t

    def new_zeros(self, *size, dtype=None, device=None, requires_grad=False):
        return self._like("zeros", size, dtype, device, requires_grad)

    def new_ones(self, *size, dtype=None, device=None, requires_grad=False):
        return self._like("ones", size, dtype, device, requires_grad)

    def new_empty(self, *size, dtype=None, device=None, requires_grad=False):
        return self._like("empty", size, dtype, device, requires_grad)

    def new_full(self, size, fill_value, dtype=None, device=None, requires_grad=False):
        t = creation.full(tuple(size), fill_value, dtype=dtype or self.dtype, device=device or self.device)
        return t.requires_grad_(True) if requires_grad else t

    def new_tensor(self, data, dtype=None, device=None, requires_grad=False):
        return creation.tensor(data, dtype=dtype or self.dtype, device=device or self.device,
                               requires_grad=requires_grad)  # fmt: skip

    def nelement(self):
        return self.numel()

    # ---- on the fused kernels (conch.fused)
    def matmul(self, other):
        return fused_matmul.matmul(self, other)

    def softmax(self, dim, dtype=None):
        return fused_softmax.softmax(self, dim, dtype=dtype)

    def log_softmax(self, dim, dtype=None):
        return fused_softmax.log_softmax(self, dim, dtype=dtype)

    def tanh(self):
        return fused_act.activation(_floating(self), "tanh")

    def sigmoid(self):
        return fused_act.activation(_floating(self), "sigmoid")

    def relu(self):
        if not self.is_floating_point():  # integer relu stays integer, as in PyTorch
            return _const(xp_of(self._data).maximum(self._data, 0).astype(self.dtype, copy=False))
        return fused_act.activation(self, "relu")

    # ---- the function forms PyTorch also offers as methods
    def outer(self, vec2):
        return outer(self, vec2)

    ger = outer

    def mm(self, mat2):
        return mm(self, mat2)

    def bmm(self, mat2):
        return bmm(self, mat2)

    def addmm(self, mat1, mat2, beta=1, alpha=1):
        return addmm(self, mat1, mat2, beta=beta, alpha=alpha)

    def baddbmm(self, batch1, batch2, beta=1, alpha=1):
        return baddbmm(self, batch1, batch2, beta=beta, alpha=alpha)

    def diag(self, diagonal=0):
        return diag(self, diagonal)

    def allclose(self, other, rtol=1e-05, atol=1e-08, equal_nan=False):
        return allclose(self, other, rtol, atol, equal_nan)

    def isclose(self, other, rtol=1e-05, atol=1e-08, equal_nan=False):
        return isclose(self, other, rtol, atol, equal_nan)

    def equal(self, other):
        return equal(self, other)

    def unique(self, sorted=True, return_inverse=False, return_counts=False, dim=None):
        return unique(self, sorted, return_inverse, return_counts, dim)

    def bincount(self, weights=None, minlength=0):
        return bincount(self, weights, minlength)

    def multinomial(self, num_samples, replacement=False, generator=None):
        return multinomial(self, num_samples, replacement, generator)

    # ---- elementwise
    def floor(self):
        return Rounding.apply(self, fn="floor", decimals=0)

    def ceil(self):
        return Rounding.apply(self, fn="ceil", decimals=0)

    def trunc(self):
        return Rounding.apply(self, fn="trunc", decimals=0)

    def round(self, decimals=0):
        return Rounding.apply(self, fn="round", decimals=int(decimals))

    def frac(self):
        return self - self.trunc()

    fix = trunc

    def erf(self):
        return ops.Erf.apply(_floating(self))

    def isnan(self):
        return _const(xp_of(self._data).isnan(self._data))

    def isinf(self):
        return _const(xp_of(self._data).isinf(self._data))

    def isfinite(self):
        return _const(xp_of(self._data).isfinite(self._data))

    def isposinf(self):
        return _const(self._data == np.inf)

    def isneginf(self):
        return _const(self._data == -np.inf)

    def nan_to_num(self, nan=0.0, posinf=None, neginf=None):
        if self.dtype.kind in "iub":
            return self.clone()
        return NanToNum.apply(self, nan=float(nan), posinf=posinf, neginf=neginf)

    def lerp(self, end, weight):
        """self + weight · (end - self)."""
        return self + (end - self) * weight

    def addcmul(self, tensor1, tensor2, value=1):
        return self + tensor1 * tensor2 * value

    def addcdiv(self, tensor1, tensor2, value=1):
        return self + tensor1 / tensor2 * value

    def clamp_min(self, min):
        return self.clamp(min=min)

    def clamp_max(self, max):
        return self.clamp(max=max)

    def atan2(self, other):
        a, b = _operands(self, other)
        if not a.is_floating_point():
            a, b = a.to(dtype=D.get_default_dtype()), b.to(dtype=D.get_default_dtype())
        return Atan2.apply(a, b)

    arctan2 = atan2

    def _logical(self, fn, other=None):
        xp = xp_of(self._data)
        if other is None:
            return _const(getattr(xp, fn)(self._data))
        o = other._data if isinstance(other, Tensor) else other
        return _const(getattr(xp, fn)(self._data, o))

    def logical_and(self, other):
        return self._logical("logical_and", other)

    def logical_or(self, other):
        return self._logical("logical_or", other)

    def logical_xor(self, other):
        return self._logical("logical_xor", other)

    def logical_not(self):
        return self._logical("logical_not")

    # ---- more elementwise maths (issue #14): trigonometric, hyperbolic, logs and powers of 2 and 10
    def tan(self):
        return ops.Tan.apply(_floating(self))

    def sinh(self):
        return ops.Sinh.apply(cast_for("sinh", _floating(self))[0])

    def cosh(self):
        return ops.Cosh.apply(cast_for("cosh", _floating(self))[0])

    def asin(self):
        return ops.Asin.apply(cast_for("asin", _floating(self))[0])

    def acos(self):
        return ops.Acos.apply(cast_for("acos", _floating(self))[0])

    def atan(self):
        return ops.Atan.apply(_floating(self))

    def asinh(self):
        return ops.Asinh.apply(_floating(self))

    def acosh(self):
        return ops.Acosh.apply(_floating(self))

    def atanh(self):
        return ops.Atanh.apply(_floating(self))

    arcsin, arccos, arctan, arcsinh, arccosh, arctanh = asin, acos, atan, asinh, acosh, atanh

    def log2(self):
        return ops.LogBase.apply(cast_for("log2", _floating(self))[0], base=2)

    def log10(self):
        return ops.LogBase.apply(cast_for("log10", _floating(self))[0], base=10)

    def exp2(self):
        return ops.Exp2.apply(_floating(self))

    def _binary_float(self, other, op):
        a, b = _operands(self, other, floating=True)
        return op.apply(a, b)

    def copysign(self, other):
        return self._binary_float(other, ops.Copysign)

    def logaddexp(self, other):
        return self._binary_float(other, ops.LogAddExp)

    def hypot(self, other):
        return self._binary_float(other, ops.Hypot)

    def floor_divide(self, other):
        return self // other

    def type(self, dtype=None, non_blocking=False, **kwargs):
        """No argument: the type name as PyTorch spells it, with conch's prefix ("conch.FloatTensor",
        "conch.cuda.LongTensor"); a dtype or such a name (also "torch.cuda.HalfTensor"): a converted tensor."""
        if dtype is None:
            name = _TYPE_NAMES.get(self.dtype.name, self.dtype.name)
            return f"conch.{name}" if self.device.type == "cpu" else f"conch.cuda.{name}"
        if isinstance(dtype, str) and dtype.endswith("Tensor"):
            *prefix, name = dtype.split(".")
            by_name = {v: k for k, v in _TYPE_NAMES.items()}
            if name not in by_name or (prefix and prefix[0] not in ("torch", "conch")):
                raise ValueError(f"invalid type: '{dtype}'")
            cuda = "cuda" in prefix
            dev = self.device if (self.device.type != "cpu") == cuda else ("cuda" if cuda else "cpu")
            return self.to(device=dev, dtype=D.as_dtype(by_name[name]))
        return self.to(dtype=dtype)

    # ---- scans: running extremes with their indices, log-cumulative-sum-exp
    def _cum_extreme(self, dim, largest):
        d = _dim(int(dim), self.ndim)
        x = self if self.ndim else self.reshape(1)
        if x.numel() == 0:
            empty = xp_of(self._data).zeros(self.shape, dtype=np.int64)
            return ValuesIndices((self.clone(), _const(empty)))
        idx = ops._cum_extreme_index(x._data, d, largest)
        vals = _gather(x, idx, d)
        if not self.ndim:
            vals, idx = vals.reshape(()), idx.reshape(())
        return ValuesIndices((vals, _const(idx)))

    def cummax(self, dim):
        """(values, indices): the running maximum along ``dim`` and where it was last attained; the gradient
        goes to those elements."""
        return self._cum_extreme(dim, True)

    def cummin(self, dim):
        return self._cum_extreme(dim, False)

    def logcumsumexp(self, dim):
        """log Σ_{j<=i} exp(x_j) along ``dim``, stable for any spread of values."""
        x = cast_for("logcumsumexp", _floating(self))[0]
        d = _dim(int(dim), self.ndim)
        if not self.ndim:
            return ops.LogCumSumExp.apply(x.reshape(1), dim=0).reshape(())
        return ops.LogCumSumExp.apply(x, dim=d)

    # ---- in-place fills from conch's generators (seeded by conch.manual_seed), for initialisation
    def _fill_random(self, name, draw, floating=True):
        if floating and not self.is_floating_point():
            raise RuntimeError(f"\"{name}_{self.device.type}\" not implemented for '{D.scalar_name(self.dtype)}'")
        if self._records_write():
            return self._assign(draw(), name=name, replaces=True)
        new = draw()
        return self._set_(lambda a: a.__setitem__(Ellipsis, new._data.astype(a.dtype, copy=False)))

    def _rand(self, fn, generator):
        dt = D.float64 if self.dtype == D.float64 else D.float32  # half precision draws in float32
        return getattr(creation, fn)(*self.shape, dtype=dt, device=self.device, generator=generator)

    def normal_(self, mean=0.0, std=1.0, *, generator=None):
        """Fill with N(mean, std²)."""
        if std < 0:
            raise RuntimeError(f"normal expects std >= 0.0, but found std {std}")
        return self._fill_random("normal_", lambda: self._rand("randn", generator) * std + mean)

    def uniform_(self, from_=0.0, to=1.0, *, generator=None, **kwargs):
        """Fill with U(from, to) (``from`` is a keyword Python cannot spell: pass it positionally)."""
        lo = kwargs.pop("from", from_)
        if kwargs:
            raise TypeError(f"uniform_() got an unexpected keyword argument '{next(iter(kwargs))}'")
        if lo > to:
            raise RuntimeError(f"uniform_ expects to return a [from, to) range, but found from={lo} > to={to}")
        return self._fill_random("uniform_", lambda: self._rand("rand", generator) * (to - lo) + lo)

    def exponential_(self, lambd=1.0, *, generator=None):
        """Fill with Exp(lambd): -log(1 - u) / lambd for u ~ U[0, 1)."""
        if lambd <= 0:
            raise RuntimeError(f"exponential_ expects lambda > 0.0, but found lambda={lambd}")
        return self._fill_random("exponential_", lambda: -(-self._rand("rand", generator)).log1p() / lambd)

    def log_normal_(self, mean=1.0, std=2.0, *, generator=None):
        """Fill with exp(N(mean, std²))."""
        return self._fill_random("log_normal_", lambda: (self._rand("randn", generator) * std + mean).exp())

    def bernoulli_(self, p=0.5, *, generator=None):
        """Fill with 1 (probability ``p``, a number or a tensor broadcasting to self) or 0, in self's dtype."""
        pa = p._data if isinstance(p, Tensor) else p
        xp = xp_of(self._data)
        if bool((xp.asarray(pa) < 0).any()) or bool((xp.asarray(pa) > 1).any()):
            raise RuntimeError(f"bernoulli_ expects p to be in [0, 1], but got p={p}")
        return self._fill_random(
            "bernoulli_", lambda: _const(self._rand("rand", generator)._data < pa).to(dtype=self.dtype), False
        )

    def random_(self, *args, generator=None, **kwargs):
        """``random_(from, to)``: integers in [from, to); ``random_(to)``: [0, to); ``random_()``: [0, 2^mantissa]
        for floats, [0, max] for integers (as PyTorch)."""
        lo, hi = 0, kwargs.pop("to", None)
        lo = kwargs.pop("from", lo)
        if len(args) == 1:
            hi = args[0]
        elif len(args) == 2:
            lo, hi = args
        if hi is None:
            if self.dtype == D.bool_:
                hi = 2
            elif self.is_floating_point():
                hi = 2 ** {"float16": 11, "bfloat16": 8, "float32": 24, "float64": 53}[self.dtype.name] + 1
            else:
                hi = int(np.iinfo(self.dtype).max) + 1
        if lo >= hi:
            raise RuntimeError(f"random_ expects 'from' to be less than 'to', but got from={lo} >= to={hi}")

        def draw():
            t = creation.randint(lo, hi, self.shape, dtype=D.int64, device=self.device, generator=generator)
            return t.to(dtype=self.dtype)

        return self._fill_random("random_", draw, False)

    def fill_diagonal_(self, fill_value, wrap=False):
        """Write ``fill_value`` on the main diagonal (all dims of equal size beyond 2-D); a tall 2-D matrix restarts
        its diagonal after every ``cols + 1`` rows with ``wrap=True``, as NumPy's fill_diagonal."""
        if self.ndim < 2:
            raise RuntimeError("dimensions must larger than 1")
        if self.ndim > 2 and len(set(self.shape)) != 1:
            raise RuntimeError("all dimensions of input must be of equal length")
        xp, n = xp_of(self._data), self.numel()
        if self.ndim == 2:
            step = self.shape[1] + 1
            end = n if wrap else min(n, self.shape[1] * self.shape[1])
        else:
            step = sum(int(np.prod(self.shape[i + 1 :], dtype=np.int64)) for i in range(self.ndim))
            end = n
        mask = xp.zeros(n, dtype=bool)
        mask[0:end:step] = True
        return self.masked_fill_(mask.reshape(self.shape), fill_value)

    # ---- index_add / index_fill / masked_scatter (and the in-place forms below)
    def _index_vector(self, dim, index, what, wrap=False):
        """(dim, index as a flat int64 array in range); ``wrap``: negative indices count from the end (index_fill)."""
        d = _dim(int(dim), self.ndim) if self.ndim else 0
        idx = _index_array(index, self, what)
        if idx.ndim > 1:
            raise IndexError(f"{what}(): Index is supposed to be a vector, got shape {tuple(idx.shape)}")
        n = self.shape[d] if self.ndim else 1
        idx = idx.reshape(-1)
        if wrap:
            idx = xp_of(idx).where(idx < 0, idx + n, idx)
        return d, _check_range(idx, n, d, what)

    def index_add(self, dim, index, source, *, alpha=1):
        """self with ``alpha · source[..., i, ...]`` added at ``self[..., index[i], ...]`` (repeats accumulate)."""
        d, idx = self._index_vector(dim, index, "index_add")
        x = self if self.ndim else self.reshape(1)
        src = source if source.ndim else source.reshape(1)
        want = x.shape[:d] + (idx.shape[0],) + x.shape[d + 1 :]
        if tuple(src.shape) != want:
            raise RuntimeError(
                f"index_add_(): source {tuple(source.shape)} must have self's shape {tuple(self.shape)} with "
                f"dimension {d} of size {idx.shape[0]} (the index's length)"
            )
        src = src if alpha == 1 else src * alpha
        src = src if src.dtype == self.dtype else src.to(dtype=self.dtype)
        view = [1] * x.ndim
        view[d] = idx.shape[0]
        full = xp_of(idx).broadcast_to(idx.reshape(view), want)
        out = x + _scatter_add_into(src, full, d, x.shape)
        return out if self.ndim else out.reshape(())

    def index_fill(self, dim, index, value):
        """self with ``value`` at every ``self[..., index[i], ...]``."""
        if isinstance(index, Tensor) and index.dtype != np.int64:
            raise IndexError(f"index_fill_(): Expected dtype int64 for index, got {index.dtype}")
        d, idx = self._index_vector(dim, index, "index_fill", wrap=True)
        mask = xp_of(self._data).zeros(self.shape[d] if self.ndim else 1, dtype=bool)
        mask[idx] = True
        view = [1] * self.ndim
        if self.ndim:
            view[d] = self.shape[d]
        return self.masked_fill(mask.reshape(view), value)

    def masked_scatter(self, mask, source):
        """self with the elements where ``mask`` (broadcasting) is true replaced, in order, by source's first
        elements; gradients flow to self (elsewhere) and to those source elements."""
        m = _mask_array(mask, self)
        if m.dtype != np.bool_:
            raise RuntimeError(f"masked_scatter_ only supports boolean masks, but got mask with dtype {m.dtype}")
        shape = np.broadcast_shapes(self.shape, m.shape)
        xp = xp_of(self._data)
        m = xp.broadcast_to(m, shape)
        pos = xp.flatnonzero(m)
        k = int(pos.shape[0])
        if source.numel() < k:
            raise RuntimeError(
                f"masked_scatter: expected source to have at least {k} elements (the ones in mask), "
                f"got {source.numel()}"
            )
        x = self if self.shape == shape else self.expand(*shape)
        vals = source.reshape(-1)[:k]
        vals = vals if vals.dtype == self.dtype else vals.to(dtype=self.dtype)
        return Scatter.apply(x.reshape(-1), vals, idx=pos, dim=0).reshape(shape)

    def scatter_(self, dim, index, src=None, value=None, *, reduce=None):
        """In-place :meth:`scatter`; ``reduce="add"``/``"multiply"`` combine with self's values instead."""
        return self._inplace_fn(lambda t: t.scatter(dim, index, src, value, reduce=reduce), "scatter_", src)

    def scatter_reduce_(self, dim, index, src, reduce, *, include_self=True):
        """In-place :meth:`scatter_reduce`."""
        return self._inplace_fn(
            lambda t: t.scatter_reduce(dim, index, src, reduce, include_self=include_self), "scatter_reduce_", src
        )

    # ---- reductions
    def prod(self, dim=None, keepdim=False, dtype=None):
        x = cast_for("prod", self)[0] if dtype is None else self.to(dtype=dtype)
        if x.dtype.kind in "biu":
            x = x.to(dtype=D.int64)
        d = None if dim is None else _dim(int(dim), x.ndim)
        return Prod.apply(x, dim=d, keepdim=bool(keepdim) and d is not None)

    def cumprod(self, dim, dtype=None):
        x = self if dtype is None else self.to(dtype=dtype)
        if x.dtype.kind in "biu":
            x = x.to(dtype=D.int64)
        d = _dim(int(dim), x.ndim)
        if x.ndim == 0:  # NumPy's cumprod flattens a 0-d array to shape (1,); PyTorch keeps ()
            return Cumprod.apply(x.reshape(1), dim=0).reshape(())
        return Cumprod.apply(x, dim=d)

    def count_nonzero(self, dim=None):
        return _const((self._data != 0).sum(axis=dim).astype(np.int64))

    def aminmax(self, dim=None, keepdim=False):
        if dim is None:
            return MinMax((self.amin(), self.amax()))
        return MinMax((self.amin(dim, keepdim), self.amax(dim, keepdim)))

    def std_mean(self, dim=None, unbiased=True, keepdim=False, correction=None):
        std = self.std(dim, unbiased=unbiased, keepdim=keepdim, correction=correction)
        return std, self.mean(dim if dim != () else None, keepdim=keepdim)

    def var_mean(self, dim=None, unbiased=True, keepdim=False, correction=None):
        var = self.var(dim, unbiased=unbiased, keepdim=keepdim, correction=correction)
        return var, self.mean(dim if dim != () else None, keepdim=keepdim)

    def _kth(self, k, dim, keepdim, what):
        d = _dim(int(dim), self.ndim)
        n = self.shape[d] if self.ndim else 1
        if not 1 <= k <= n:
            raise IndexError(f"{what}(): k ({k}) must be in [1, {n}] for dimension {d} of size {n}")
        x = self if self.ndim else self.reshape(1)
        idx = _argsort(x._data, d, False)  # stable: among equal values the k-th in input order
        sl = [slice(None)] * x.ndim
        sl[d] = slice(k - 1, k)
        idx = idx[tuple(sl)]
        if what == "median" and self.is_floating_point():
            # median propagates NaN (PyTorch): a slice holding one gives NaN and its first NaN's index
            xp = xp_of(x._data)
            nan = xp.isnan(x._data)
            idx = xp.where(nan.any(axis=d, keepdims=True), nan.argmax(axis=d, keepdims=True), idx)
        vals = _gather(x, idx, d)
        if not keepdim or not self.ndim:  # a 0-d input gives 0-d results, keepdim or not (as PyTorch)
            vals, idx = vals.squeeze(d), idx.squeeze(d)
        return ValuesIndices((vals, _const(idx)))

    def median(self, dim=None, keepdim=False):
        """Lower median (the ⌊(n-1)/2⌋-th smallest); with ``dim`` also its index, as PyTorch."""
        if dim is None:
            if self.numel() == 0:  # PyTorch: NaN for an empty tensor
                return _const(xp_of(self._data).full((), np.nan, dtype=self.dtype))
            flat = self.reshape(-1)
            return flat._kth((flat.shape[0] - 1) // 2 + 1, 0, False, "median").values
        d = _dim(int(dim), self.ndim)
        if self.ndim and self.shape[d] == 0:
            raise IndexError(f"median(): Expected reduction dim {d} to have non-zero size.")
        return self._kth((self.shape[d] - 1) // 2 + 1 if self.ndim else 1, d, keepdim, "median")

    def kthvalue(self, k, dim=-1, keepdim=False):
        return self._kth(int(k), dim, keepdim, "kthvalue")

    # ---- sorting
    def sort(self, dim=-1, descending=False, stable=False):
        d = _dim(int(dim), self.ndim) if self.ndim else 0
        if not self.ndim:
            return ValuesIndices((self.clone(), _const(xp_of(self._data).zeros((), dtype=np.int64))))
        idx = _argsort(self._data, d, descending)
        return ValuesIndices((_gather(self, idx, d), _const(idx)))

    def argsort(self, dim=-1, descending=False, stable=False):
        return self.sort(dim, descending, stable).indices

    def msort(self):
        return self.sort(0).values

    def topk(self, k, dim=-1, largest=True, sorted=True):
        d = _dim(int(dim), self.ndim) if self.ndim else 0
        n = self.shape[d] if self.ndim else 1
        if not 0 <= k <= n:
            raise RuntimeError(f"topk(): selected index k ({k}) out of range for dimension {d} of size {n}")
        x = self if self.ndim else self.reshape(1)
        idx = _argsort(x._data, d, largest)
        sl = [slice(None)] * x.ndim
        sl[d] = slice(0, k)
        idx = idx[tuple(sl)]
        vals = _gather(x, idx, d)
        if not self.ndim:
            vals, idx = vals.reshape(()), idx.reshape(())
        return ValuesIndices((vals, _const(idx)))

    # ---- gather / scatter / index
    def _gather_index(self, dim, index, what):
        d = _dim(int(dim), self.ndim)
        idx = _index_array(index, self, what)
        if idx.ndim != self.ndim:
            raise RuntimeError(
                f"{what}(): Index tensor must have the same number of dimensions as input tensor "
                f"(index {tuple(idx.shape)}, input {tuple(self.shape)})"
            )
        for i, (si, sx) in enumerate(zip(idx.shape, self.shape)):
            if i != d and si > sx:
                raise RuntimeError(
                    f"{what}(): Size does not match at dimension {i}: index {tuple(idx.shape)} is larger than "
                    f"input {tuple(self.shape)} outside dimension {d}"
                )
        return d, _check_range(idx, self.shape[d], d, what)

    def gather(self, dim, index):
        """out[i][j] = self[i][index[i][j]] (dim=1): ``index`` has self's ndim, and is no larger outside ``dim``."""
        d, idx = self._gather_index(dim, index, "gather")
        src = self[tuple(slice(0, s) if i != d else slice(None) for i, s in enumerate(idx.shape))]
        return _gather(src, idx, d)

    def take_along_dim(self, indices, dim=None):
        if dim is None:
            return self.reshape(-1).gather(0, indices.reshape(-1))
        d = _dim(int(dim), self.ndim)
        idx = _index_array(indices, self, "take_along_dim")
        shape = list(np.broadcast_shapes(tuple(s for i, s in enumerate(self.shape) if i != d),
                                         tuple(s for i, s in enumerate(idx.shape) if i != d)))  # fmt: skip
        full_x, full_i = list(shape), list(shape)
        full_x.insert(d, self.shape[d])
        full_i.insert(d, idx.shape[d])
        xp = xp_of(idx)
        idx = xp.broadcast_to(idx, tuple(full_i))
        return _gather(self.expand(*full_x), _check_range(idx, self.shape[d], d, "take_along_dim"), d)

    def _scatter_src(self, src, idx, what):
        T = Tensor
        if not isinstance(src, T):
            return _const(xp_of(self._data).full(idx.shape, src, dtype=self.dtype))
        if src.ndim != idx.ndim or any(a < b for a, b in zip(src.shape, idx.shape)):
            raise RuntimeError(
                f"{what}(): src {tuple(src.shape)} must have index's ndim and be at least index's size "
                f"{tuple(idx.shape)} in every dimension"
            )
        if src.dtype != self.dtype:
            raise RuntimeError(
                f"{what}(): Expected self.dtype to be equal to src.dtype (self {self.dtype}, src {src.dtype})"
            )
        return src[tuple(slice(0, s) for s in idx.shape)]

    def scatter(self, dim, index, src=None, value=None, *, reduce=None):
        """Out of place: self with ``src[i][j]`` written at ``[i][index[i][j]]`` (dim=1); ``value`` for a scalar.

        ``reduce="add"`` adds into self's values, ``"multiply"`` multiplies (repeated indices accumulate): that is
        ``scatter_reduce`` with "sum"/"prod" and ``include_self=True``.
        """
        if (src is None) == (value is None):
            raise TypeError("scatter(): pass exactly one of src (a tensor or number) and value")
        if reduce is not None and reduce not in _SCATTER_REDUCE:
            raise RuntimeError(f"reduce argument must be either add or multiply, got {reduce!r}")
        d, idx = self._gather_index(dim, index, "scatter")
        s = self._scatter_src(value if src is None else src, idx, "scatter")
        if reduce is not None:
            return ScatterReduce.apply(self, s, idx=idx, dim=d, reduce=_SCATTER_REDUCE[reduce], include_self=True)
        return Scatter.apply(self, s, idx=idx, dim=d)

    def scatter_reduce(self, dim, index, src, reduce, *, include_self=True):
        """self with every ``src[i][j]`` reduced into ``[i][index[i][j]]`` (dim=1; likewise for other dims).

        ``reduce``: "sum", "prod", "mean", "amax" or "amin". With ``include_self=False`` a targeted position
        reduces only the src values sent to it (self's value is left out); untargeted positions keep self's.
        Example: ``conch.zeros(3).scatter_reduce(0, conch.tensor([0, 0, 2]), conch.tensor([1., 5., 2.]), "amax")``
        is [5, 0, 2]. Gradients as PyTorch (amax/amin share among ties, prod handles zeros).
        """
        if reduce not in ("sum", "prod", "mean", "amax", "amin"):
            raise RuntimeError(f"reduce argument must be either sum, prod, mean, amax or amin, got {reduce}")
        if not isinstance(src, Tensor):
            raise TypeError(f"scatter_reduce(): argument 'src' must be Tensor, not {type(src).__name__}")
        d, idx = self._gather_index(dim, index, "scatter_reduce")
        s = self._scatter_src(src, idx, "scatter_reduce")
        return ScatterReduce.apply(self, s, idx=idx, dim=d, reduce=reduce, include_self=bool(include_self))

    def scatter_add(self, dim, index, src):
        """self + zeros with ``src`` added at ``index`` along ``dim`` (repeated indices accumulate)."""
        d, idx = self._gather_index(dim, index, "scatter_add")
        s = self._scatter_src(src, idx, "scatter_add")
        return self + _scatter_add_into(s, idx, d, self.shape)

    def index_select(self, dim, index):
        d = _dim(int(dim), self.ndim)
        idx = _index_array(index, self, "index_select")
        if idx.ndim > 1:
            raise IndexError(f"index_select(): Index is supposed to be a vector, got shape {tuple(idx.shape)}")
        idx = _check_range(idx.reshape(-1), self.shape[d], d, "index_select")
        return self[(slice(None),) * d + (idx,)]

    def masked_select(self, mask):
        m = mask._data if isinstance(mask, Tensor) else xp_of(self._data).asarray(mask)
        if m.dtype != np.bool_:
            raise RuntimeError(f"masked_select(): expected a bool mask, got {m.dtype}")
        try:
            shape = np.broadcast_shapes(self.shape, m.shape)
        except ValueError:
            raise RuntimeError(
                f"masked_select(): the mask of shape {tuple(m.shape)} does not broadcast with the input of shape "
                f"{tuple(self.shape)}"
            ) from None
        x = self if self.shape == shape else self.expand(*shape)
        return x[xp_of(m).broadcast_to(m, shape)]

    def nonzero(self, as_tuple=False):
        xp = xp_of(self._data)
        parts = xp.nonzero(self._data) if self.ndim else xp.nonzero(self._data.reshape(1))
        if as_tuple:
            return tuple(_const(p.astype(np.int64)) for p in parts)
        if not self.ndim:  # a 0-d tensor has no dims to index: (1, 0) when it is nonzero, else (0, 0)
            return _const(xp.zeros((int(parts[0].size), 0), dtype=np.int64))
        return _const(xp.stack(parts, axis=1).astype(np.int64))

    def argwhere(self):
        return self.nonzero()

    def narrow(self, dim, start, length):
        d = _dim(int(dim), self.ndim)
        n = self.shape[d]
        start = int(start) + (n if int(start) < 0 else 0)
        if not (0 <= start <= n and 0 <= length and start + length <= n):
            raise RuntimeError(f"narrow(): start ({start}) + length ({length}) exceeds dimension {d} of size {n}")
        return self[(slice(None),) * d + (slice(start, start + int(length)),)]

    def select(self, dim, index):
        d = _dim(int(dim), self.ndim)
        n = self.shape[d]
        if not -n <= int(index) < n:
            raise IndexError(f"select(): index {index} out of range for tensor of size {self.shape} at dimension {d}")
        return self[(slice(None),) * d + (int(index),)]

    # ---- shapes
    def movedim(self, source, destination):
        src = [source] if isinstance(source, int) else list(source)
        dst = [destination] if isinstance(destination, int) else list(destination)
        if len(src) != len(dst):
            raise RuntimeError(f"movedim: Invalid source or destination dims: {source} and {destination}")
        src = [_dim(s, self.ndim) for s in src]
        dst = [_dim(s, self.ndim) for s in dst]
        for name, dims in (("source", src), ("destination", dst)):
            if len(set(dims)) != len(dims):
                raise RuntimeError(f"movedim: repeated dim in `{name}` ({source if name == 'source' else destination})")
        rest = [i for i in range(self.ndim) if i not in src]
        perm = [None] * self.ndim
        for s, t in zip(src, dst):
            perm[t] = s
        it = iter(rest)
        perm = [p if p is not None else next(it) for p in perm]
        return self.permute(*perm)

    moveaxis = movedim

    def diagonal(self, offset=0, dim1=0, dim2=1):
        """The diagonal ``offset`` of the (dim1, dim2) planes as the last dim: a view (writes reach self)."""
        d1, d2 = _dim(dim1, self.ndim), _dim(dim2, self.ndim)
        if d1 == d2:
            raise RuntimeError(f"diagonal dimensions cannot be identical {dim1}, {dim2}")
        out = Diagonal.apply(self, offset=int(offset), d1=d1, d2=d2)
        return _mark_view(out, self, lambda b, o=int(offset), i=d1, j=d2: b.diagonal(o, i, j))

    def tril(self, diagonal=0):
        return self._triangle(diagonal, "tril")

    def triu(self, diagonal=0):
        return self._triangle(diagonal, "triu")

    def _triangle(self, k, which):
        if self.ndim < 2:
            raise RuntimeError(f"{which}: input tensor must have at least 2 dimensions, got shape {tuple(self.shape)}")
        xp = xp_of(self._data)
        keep = getattr(xp, which)(xp.ones(self.shape[-2:], dtype=bool), int(k))
        return self.masked_fill(~keep, 0)  # masked_fill, not a product: inf/NaN above the diagonal vanish too

    def roll(self, shifts, dims=None):
        if dims is None:
            return Roll.apply(self.reshape(-1), shifts=int(shifts), dims=0).reshape(self.shape)
        if isinstance(shifts, int) != isinstance(dims, int):
            shifts = (shifts,) if isinstance(shifts, int) else tuple(shifts)
            dims = (dims,) if isinstance(dims, int) else tuple(dims)
        if isinstance(dims, int):
            return Roll.apply(self, shifts=int(shifts), dims=_dim(dims, self.ndim))
        if len(shifts) != len(dims):
            raise RuntimeError(f"roll: shifts and dimensions must align. shifts: {len(shifts)}, dims: {len(dims)}")
        return Roll.apply(self, shifts=tuple(int(s) for s in shifts), dims=tuple(_dim(d, self.ndim) for d in dims))

    def repeat(self, *sizes):
        sizes = tuple(sizes[0]) if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)) else tuple(sizes)
        if len(sizes) < self.ndim:
            raise RuntimeError(
                f"Number of dimensions of repeat dims ({len(sizes)}) can not be smaller than number of dimensions "
                f"of tensor ({self.ndim})"
            )
        shape = (1,) * (len(sizes) - self.ndim) + tuple(self.shape)
        x = self.reshape(shape)
        inter = tuple(v for s in shape for v in (1, s))
        big = tuple(v for r, s in zip(sizes, shape) for v in (r, s))
        out = x.reshape(inter).expand(*big).reshape(tuple(r * s for r, s in zip(sizes, shape)))
        # repeating only along size-1 dims leaves a view of self: PyTorch's repeat (and tile) always copies
        return out.clone() if out._base is not None else out

    def tile(self, *dims):
        dims = tuple(dims[0]) if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else tuple(dims)
        return self.repeat(*((1,) * (self.ndim - len(dims)) + dims))

    def repeat_interleave(self, repeats, dim=None, output_size=None):
        """Each element (or slice along ``dim``) repeated ``repeats`` times (an int, or one count per element);
        ``dim=None`` flattens first. Differentiable (an index_select)."""
        x, d = (self.reshape(-1), 0) if dim is None else (self, _dim(int(dim), self.ndim))
        n = x.shape[d]
        reps = repeats._data if isinstance(repeats, Tensor) else repeats
        reps = np.asarray(to_host(reps), dtype=np.int64)
        if reps.ndim > 1 or (reps.ndim == 1 and reps.shape[0] not in (1, n)):
            raise RuntimeError(f"repeat_interleave: repeats must have shape ({n},) or be a number, got {reps.shape}")
        if (reps < 0).any():
            raise RuntimeError("repeat_interleave: repeats can not be negative")
        idx = np.repeat(np.arange(n), np.broadcast_to(reps.reshape(-1), (n,)))
        return x.index_select(d, _const(xp_of(self._data).asarray(idx)))

    def diff(self, n=1, dim=-1, prepend=None, append=None):
        d = _dim(dim, self.ndim)
        if int(n) < 0:
            raise RuntimeError(f"diff expects n to be non-negative (order must be non-negative but got {n})")
        x = self
        if prepend is not None or append is not None:
            x = cat([t for t in (prepend, x, append) if t is not None], d)
        for _ in range(int(n)):
            m = x.shape[d]
            x = x.narrow(d, 1, m - 1) - x.narrow(d, 0, m - 1) if m else x
        return x


_TYPE_NAMES = {
    "float32": "FloatTensor", "float64": "DoubleTensor", "float16": "HalfTensor", "bfloat16": "BFloat16Tensor",
    "int64": "LongTensor", "int32": "IntTensor", "int16": "ShortTensor", "int8": "CharTensor", "uint8": "ByteTensor",
    "bool": "BoolTensor",
}  # fmt: skip


def _inplace_method(name):
    """``t.NAME_(...)``: ``t.NAME(...)`` written into t (through the in-place machinery: views, versions, graph)."""

    def method(self, *args, **kwargs):
        return self._inplace_fn(lambda t: getattr(t, name)(*args, **kwargs), name + "_", *args, *kwargs.values())

    method.__name__ = method.__qualname__ = name + "_"
    method.__doc__ = f"In-place :meth:`{name}`."
    return method


for _n in (
    "sqrt", "rsqrt", "exp", "exp2", "log", "log2", "log10", "log1p", "expm1", "abs", "neg", "negative", "sin", "cos",
    "tan", "tanh", "sigmoid", "sinh", "cosh", "asin", "acos", "atan", "asinh", "acosh", "atanh", "arcsin", "arccos",
    "arctan", "relu", "floor", "ceil", "round", "trunc", "frac", "fix", "reciprocal", "sign", "erf", "square", "pow",
    "lerp", "addcmul", "addcdiv", "atan2", "copysign", "hypot", "clamp_min", "clamp_max", "nan_to_num", "scatter_add",
    "index_add", "index_fill", "masked_scatter", "bitwise_not", "bitwise_and", "bitwise_or", "bitwise_xor",
    "bitwise_left_shift", "bitwise_right_shift", "logical_not", "logical_and", "logical_or", "logical_xor",
    "floor_divide", "t", "clip",
):  # fmt: skip
    setattr(TensorMethods, _n + "_", _inplace_method(_n))
del _n

_NUMPY_NAMES = (("axis", "dim"), ("keepdims", "keepdim"))


def numpy_kwargs(fn):
    """Accept PyTorch's NumPy-style keyword aliases: ``axis=`` for ``dim=``, ``keepdims=`` for ``keepdim=``."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if "axis" in kwargs or "keepdims" in kwargs:
            for alias, name in _NUMPY_NAMES:
                if alias in kwargs:
                    if name in kwargs:
                        raise TypeError(f"{fn.__name__}() got multiple values for argument '{name}'")
                    kwargs[name] = kwargs.pop(alias)
        return fn(*args, **kwargs)

    return wrapper


def _takes_dim(fn):
    code = getattr(fn, "__code__", None)
    if code is None or getattr(fn, "__wrapped__", None) is not None:
        return False
    names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
    return "dim" in names or "keepdim" in names


def attach(cls=Tensor):
    """Copy :class:`TensorMethods`' methods onto ``cls`` (conch.Tensor); called once, by ``conch/__init__.py``.

    A name Tensor already defines is an error, not an override: each method has one home.
    """
    for name, fn in vars(TensorMethods).items():
        if name.startswith("__"):
            continue
        if name in vars(cls):
            raise RuntimeError(f"Tensor.{name} is defined twice: in tensor.py and in tensor_api.py")
        setattr(cls, name, fn)
    for name, fn in list(vars(cls).items()):  # every method with a dim/keepdim takes axis=/keepdims= too
        if not name.startswith("_") and callable(fn) and not isinstance(fn, type) and _takes_dim(fn):
            setattr(cls, name, numpy_kwargs(fn))


# ----------------------------------------------------------------------------------------------------
# functions (conch.NAME)
# ----------------------------------------------------------------------------------------------------


def outer(a, b):
    if a.ndim != 1 or b.ndim != 1:
        raise RuntimeError(f"outer: expected 1-D vectors, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    return a.reshape(-1, 1) * b.reshape(1, -1)


ger = outer


def bmm(a, b):
    if a.ndim != 3 or b.ndim != 3:
        raise RuntimeError(f"bmm: expected 3-D tensors, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] != b.shape[0]:
        raise RuntimeError(f"bmm: batch sizes differ: {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = cast_for("bmm", a, b)
    return a @ b


def mm(a, b):
    if a.ndim != 2 or b.ndim != 2:
        raise RuntimeError(f"mm: expected 2-D matrices, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = cast_for("mm", a, b)
    return a @ b


def _scaled_sum(input, prod, beta, alpha):
    out = prod if alpha == 1 else prod * alpha
    if beta == 0:  # as PyTorch: input is ignored (its NaN/inf do not propagate)
        return out
    return out + (input if beta == 1 else input * beta)


def addmm(input, mat1, mat2, beta=1, alpha=1):
    input, mat1, mat2 = cast_for("addmm", input, mat1, mat2)
    return _scaled_sum(input, mm(mat1, mat2), beta, alpha)


def baddbmm(input, batch1, batch2, beta=1, alpha=1):
    input, batch1, batch2 = cast_for("baddbmm", input, batch1, batch2)
    return _scaled_sum(input, bmm(batch1, batch2), beta, alpha)


def diag(input, diagonal=0):
    """1-D v: the matrix with v on diagonal ``diagonal``; 2-D: that diagonal as a 1-D copy."""
    if input.ndim == 1:
        return DiagEmbed.apply(input, offset=int(diagonal))
    if input.ndim == 2:
        return input.diagonal(int(diagonal)).clone()
    raise RuntimeError(f"diag(): expected a 1-D or 2-D input, got shape {tuple(input.shape)}")


def allclose(a, b, rtol=1e-05, atol=1e-08, equal_nan=False):
    T = Tensor
    xa = a._data if isinstance(a, T) else a
    xb = b._data if isinstance(b, T) else b
    return bool(xp_of(xa).allclose(xa, xb, rtol=rtol, atol=atol, equal_nan=equal_nan))


def isclose(a, b, rtol=1e-05, atol=1e-08, equal_nan=False):
    T = Tensor
    xa = a._data if isinstance(a, T) else a
    xb = b._data if isinstance(b, T) else b
    return _const(xp_of(xa).isclose(xa, xb, rtol=rtol, atol=atol, equal_nan=equal_nan))


def equal(a, b):
    return a.shape == b.shape and bool((a._data == b._data).all())


def unique(input, sorted=True, return_inverse=False, return_counts=False, dim=None):
    xp = xp_of(input._data)
    a = input._data
    if dim is None:
        res = xp.unique(a.reshape(-1), return_inverse=return_inverse, return_counts=return_counts)
    else:
        res = xp.unique(a, return_inverse=return_inverse, return_counts=return_counts, axis=_dim(dim, input.ndim))
    if not (return_inverse or return_counts):
        return _const(res)
    out = [_const(res[0])]
    i = 1
    if return_inverse:
        inv = res[i].astype(np.int64)
        out.append(_const(inv.reshape(a.shape) if dim is None else inv.reshape(-1)))
        i += 1
    if return_counts:
        out.append(_const(res[i].astype(np.int64)))
    return tuple(out)


def bincount(input, weights=None, minlength=0):
    a = input._data
    if input.ndim != 1 or a.dtype.kind not in "iu":
        raise RuntimeError(f"bincount only supports 1-d non-negative integral inputs, got {input.dtype} {input.shape}")
    if a.size and int(a.min()) < 0:
        raise RuntimeError("bincount only supports 1-d non-negative integral inputs (found a negative value)")
    w = None if weights is None else weights._data
    out = xp_of(a).bincount(a, weights=w, minlength=int(minlength))
    return _const(out if w is not None else out.astype(np.int64))


def multinomial(input, num_samples, replacement=False, generator=None):
    """Row-wise draws of class indices with probabilities proportional to ``input`` (1-D or 2-D, non-negative).

    With replacement: inverse-CDF sampling of uniforms; without: the Gumbel-top-k trick (the k largest of
    log p + Gumbel noise are k draws without replacement). Classes of probability zero are never drawn.
    """
    p = input if input.ndim == 2 else input.reshape(1, -1)
    if input.ndim not in (1, 2):
        raise RuntimeError(f"multinomial: prob_dist must be 1 or 2 dim, got shape {tuple(input.shape)}")
    xp = xp_of(p._data)
    w = p._data.astype(np.float64 if p.dtype == D.float64 else np.float32)
    if bool((w < 0).any()) or not bool(xp.isfinite(w).all()):
        raise RuntimeError("multinomial: probability tensor contains either `inf`, `nan` or element < 0")
    nonzero = (w > 0).sum(axis=1)
    if bool((nonzero == 0).any()):
        raise RuntimeError("multinomial: invalid multinomial distribution (sum of probabilities <= 0)")
    rows, n = w.shape
    k = int(num_samples)
    if not replacement and k > int(nonzero.min()):
        raise RuntimeError(
            f"multinomial: cannot sample n_sample > prob_dist.size(-1) samples without replacement "
            f"({k} asked, a row has only {int(nonzero.min())} classes of nonzero probability)"
        )
    u = rand(rows, k, dtype=D.float64, device=input.device, generator=generator)._data
    if replacement:
        cdf = xp.cumsum(w, axis=1)
        cdf /= cdf[:, -1:]
        idx = (cdf[:, None, :] <= u[:, :, None]).sum(axis=2)  # the first class whose cdf exceeds u
        last = n - 1 - xp.argmax((w > 0)[:, ::-1], axis=1)  # rounding at u ~ 1: stay on a class with p > 0
        idx = xp.minimum(idx, last[:, None])
    else:
        g = rand(rows, n, dtype=D.float64, device=input.device, generator=generator)._data
        with np.errstate(divide="ignore"):  # log 0 = -inf: a zero-probability class never wins
            keys = xp.log(w) - xp.log(-xp.log(xp.clip(g, 1e-300, 1.0)))
        idx = _argsort(keys, 1, True)[:, :k]
    idx = idx.astype(np.int64)
    return _const(idx if input.ndim == 2 else idx.reshape(-1))


def bernoulli(input, p=None, generator=None):
    """1 with probability ``p`` (default: the values of ``input``, in [0, 1]) and 0 otherwise, in input's dtype."""
    probs = input if p is None else p
    pa = probs._data if isinstance(probs, Tensor) else probs
    if bool((xp_of(input._data).asarray(pa) < 0).any()) or bool((xp_of(input._data).asarray(pa) > 1).any()):
        raise RuntimeError("bernoulli: all probabilities must be in [0, 1]")
    u = rand(*input.shape, dtype=D.float64, device=input.device, generator=generator)._data
    return _const((u < pa).astype(input.dtype if input.dtype.kind == "f" else D.get_default_dtype()))


def broadcast_tensors(*tensors):
    """The tensors expanded (as views) to their common broadcast shape."""
    shape = np.broadcast_shapes(*(t.shape for t in tensors))
    return tuple(t if t.shape == shape else t.expand(*shape) for t in tensors)


def meshgrid(*tensors, indexing="ij"):
    """Coordinate grids from 1-D tensors: with ``indexing="ij"`` output i varies along dim i ("xy" swaps the
    first two dims, as NumPy's). Each grid is an expanded view (gradients sum back)."""
    ts = tensors[0] if len(tensors) == 1 and isinstance(tensors[0], (list, tuple)) else tensors
    if indexing not in ("ij", "xy"):
        raise ValueError(f"meshgrid: indexing must be 'ij' or 'xy', got {indexing!r}")
    if any(t.ndim > 1 for t in ts):
        raise RuntimeError(f"meshgrid: expects 0-D or 1-D tensors, got shapes {[tuple(t.shape) for t in ts]}")
    ts = [t.reshape(-1) for t in ts]
    swap = indexing == "xy" and len(ts) >= 2
    order = [1, 0] + list(range(2, len(ts))) if swap else list(range(len(ts)))
    shape = tuple(ts[i].shape[0] for i in order)
    out = []
    for i, t in enumerate(ts):
        pos = order.index(i)
        view = [1] * len(ts)
        view[pos] = -1
        out.append(t.reshape(view).expand(*shape))
    return tuple(out)


def dist(input, other, p=2):
    """‖input - other‖_p over all elements."""
    return (input - other).norm(p)


def cdist(x1, x2, p=2.0):
    """Pairwise p-norm distances: x1 (..., P, M), x2 (..., R, M) -> (..., P, R), computed from the differences
    (exact, and a zero gradient where two rows coincide, as PyTorch's)."""
    if x1.shape[-1] != x2.shape[-1]:
        raise RuntimeError(
            f"cdist: X1 and X2 must have the same number of columns, got {tuple(x1.shape)} and {tuple(x2.shape)}"
        )
    return (x1.unsqueeze(-2) - x2.unsqueeze(-3)).norm(p, -1)


def set_printoptions(precision=None, threshold=None, edgeitems=None, linewidth=None, profile=None, sci_mode=None):
    """How tensors print (NumPy's print options underneath): ``profile`` "default", "short" or "full"."""
    opts = {}
    if profile is not None:
        opts.update({"default": dict(precision=4, threshold=1000, edgeitems=3, linewidth=80),
                     "short": dict(precision=2, threshold=1000, edgeitems=2, linewidth=80),
                     "full": dict(precision=4, threshold=np.inf, edgeitems=3, linewidth=80)}[profile])  # fmt: skip
    for k, v in (("precision", precision), ("threshold", threshold), ("edgeitems", edgeitems),
                 ("linewidth", linewidth)):  # fmt: skip
        if v is not None:
            opts[k] = v
    if sci_mode is not None:
        opts["suppress"] = not sci_mode
    np.set_printoptions(**opts)


def _einsum_diagonal(t, sub, k):
    """Operand ``t`` with subscripts ``sub`` after taking the diagonal of every label repeated in it: the pair of
    dims becomes one last dim (``diagonal``'s placement), labelled once. ``k`` is the operand's position."""
    while len(set(sub)) != len(sub):
        c = next(c for c in sub if sub.count(c) > 1)
        i = sub.index(c)
        j = sub.index(c, i + 1)
        if t.shape[i] != t.shape[j]:
            raise RuntimeError(
                f"einsum(): subscript {c} is repeated for operand {k} but the sizes don't match, "
                f"{t.shape[i]} != {t.shape[j]} (operand shape {tuple(t.shape)})"
            )
        t = t.diagonal(0, i, j)
        sub = sub[:i] + sub[i + 1 : j] + sub[j + 1 :] + c
    return t, sub


def einsum(equation: str, *operands):
    """Einstein summation, as ``torch.einsum``: ``einsum("bij,bjk->bik", a, b)`` is a batched matmul.

    Gradients flow to every operand (each is another einsum). A label repeated inside one operand is a
    diagonal (``einsum("ii->i", a)`` is ``a.diagonal()``, ``einsum("ii", a)`` the trace): it is taken first as a
    ``diagonal`` view, whose gradient writes back onto the diagonal.
    """
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    if not operands or not all(isinstance(t, Tensor) for t in operands):
        raise TypeError("einsum(): expected Tensor operands after the equation")
    for t in operands[1:]:
        _check_devices(operands[0], t)
    operands = cast_for("einsum", *operands)
    ins, out = ops.linalg._parse(equation, [t.shape for t in operands])
    operands, ins = zip(*(_einsum_diagonal(t, sub, k) for k, (t, sub) in enumerate(zip(operands, ins))))
    dt = operands[0].dtype
    for t in operands[1:]:
        if t.dtype != dt:
            raise TypeError(f"einsum(): operands must share one dtype, got {dt} and {t.dtype}")
    try:
        return ops._op(len(operands)).apply(*operands, ins=ins, out=out)
    except ValueError as e:
        shapes = ", ".join(str(tuple(t.shape)) for t in operands)
        raise RuntimeError(f"einsum(): {equation!r} does not fit operands of shapes {shapes}: {e}") from None
