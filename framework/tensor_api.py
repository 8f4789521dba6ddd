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
from .ops.sorting import _Named
from .ops.special import IncompleteGamma, Special
from .tensor import (
    Size,
    Tensor,
    _check_devices,
    _const,
    _floating,
    _mark_view,
    _mask_array,
    _operands,
    cat,
    maximum,
    minimum,
    stack,
    where,
)
from .tensor import _index_arrays as _index_arrays_of
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


def _to_dtype(dtype, name):
    """``t.NAME()``: ``t.to(dtype=dtype)`` (PyTorch's byte(), char(), short())."""

    def method(self):
        return self.to(dtype=dtype)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"``self.to({D.scalar_name(dtype).lower()})``."
    return method


class _Frexp(_Named):
    _fields = ("mantissa", "exponent")


class _Histogram(_Named):
    _fields = ("hist", "bin_edges")


_SCATTER_REDUCE = {"add": "sum", "multiply": "prod"}  # scatter(reduce=...)'s names for scatter_reduce's


def _relu(self):
    """``Tensor.relu`` off the fast path: integer relu stays integer, as in PyTorch."""
    if not self.is_floating_point():
        return _const(xp_of(self._data).maximum(self._data, 0).astype(self.dtype, copy=False))
    return fused_act.activation(self, "relu")


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
    matmul = fused_matmul.matmul  # the function itself: one call layer less on every ``@``

    def softmax(self, dim, dtype=None):
        return fused_softmax.softmax(self, dim, dtype=dtype)

    def log_softmax(self, dim, dtype=None):
        return fused_softmax.log_softmax(self, dim, dtype=dtype)

    # float32/float64 on the CPU: the plain op, with no call layer in between (fused_act.fast_path)
    tanh = fused_act.fast("tanh", lambda self: fused_act.activation(_floating(self), "tanh"))
    sigmoid = fused_act.fast("sigmoid", lambda self: fused_act.activation(_floating(self), "sigmoid"))
    relu = fused_act.fast("relu", lambda self: _relu(self))

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
        d = _dim(dim, self.ndim)
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
        d = _dim(dim, self.ndim)
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

    def cauchy_(self, median=0.0, sigma=1.0, *, generator=None):
        """Fill with Cauchy(median, sigma): median + sigma·tan(π(u - ½)) for u ~ U[0, 1)."""
        if sigma <= 0:
            raise RuntimeError(f"cauchy_ expects sigma > 0.0, but found sigma={sigma}")
        return self._fill_random(
            "cauchy_", lambda: ((self._rand("rand", generator) - 0.5) * np.pi).tan() * sigma + median
        )

    def geometric_(self, p, *, generator=None):
        """Fill with Geometric(p) on {1, 2, ...} (trials up to the first success): ⌈log(1 - u) / log(1 - p)⌉,
        at least 1, for u ~ U[0, 1); integer tensors too."""
        if not 0 < p < 1:
            raise RuntimeError(f"geometric_ expects p to be in (0, 1), but got p={p}")
        draw = lambda: ((-self._rand("rand", generator)).log1p() / float(np.log1p(-p))).ceil().clamp_min(1)  # noqa: E731
        return self._fill_random("geometric_", draw, False)

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
        d = _dim(dim, self.ndim) if self.ndim else 0
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
        d = None if dim is None else _dim(dim, x.ndim)
        return Prod.apply(x, dim=d, keepdim=bool(keepdim) and d is not None)

    def cumprod(self, dim, dtype=None):
        x = self if dtype is None else self.to(dtype=dtype)
        if x.dtype.kind in "biu":
            x = x.to(dtype=D.int64)
        d = _dim(dim, x.ndim)
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
        d = _dim(dim, self.ndim)
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
        d = _dim(dim, self.ndim)
        if self.ndim and self.shape[d] == 0:
            raise IndexError(f"median(): Expected reduction dim {d} to have non-zero size.")
        return self._kth((self.shape[d] - 1) // 2 + 1 if self.ndim else 1, d, keepdim, "median")

    def kthvalue(self, k, dim=-1, keepdim=False):
        return self._kth(int(k), dim, keepdim, "kthvalue")

    def _picked(self, x, idx, d, keepdim):
        """(values at ``idx`` along ``d``, with their gradient, and idx) as ``ValuesIndices``, squeezed unless
        ``keepdim``."""
        vals = _gather(x, idx, d)
        if not keepdim or not self.ndim:
            vals, idx = vals.squeeze(d), idx.squeeze(d)
        return ValuesIndices((vals, _const(idx)))

    def nanmedian(self, dim=None, keepdim=False):
        """median over the non-NaN values: the ⌊(c-1)/2⌋-th smallest of the c non-NaN ones (NaN when c = 0)."""
        if dim is None:
            return self.reshape(-1).nanmedian(0).values if self.numel() else self.median()
        d = _dim(dim, self.ndim) if self.ndim else 0
        x = self if self.ndim else self.reshape(1)
        if x.shape[d] == 0:
            raise IndexError(f"nanmedian(): Expected reduction dim {d} to have non-zero size.")
        xp = xp_of(x._data)
        order = _argsort(x._data, d, False)  # NaN sorts last
        count = (~xp.isnan(x._data)).sum(axis=d, keepdims=True) if self.is_floating_point() else x.shape[d]
        k = xp.maximum((xp.asarray(count) - 1) // 2, 0)
        k = xp.broadcast_to(k, x.shape[:d] + (1,) + x.shape[d + 1 :])
        return self._picked(x, xp.take_along_axis(order, k.astype(np.int64), axis=d), d, keepdim)

    def mode(self, dim=-1, keepdim=False):
        """The most frequent value along ``dim`` (the smallest among equally frequent ones) and the index of its
        last occurrence, as PyTorch's CPU kernel; the gradient goes to that element."""
        d = _dim(dim, self.ndim) if self.ndim else 0
        x = self if self.ndim else self.reshape(1)
        xp = xp_of(x._data)
        a = xp.moveaxis(x._data, d, -1)
        n = a.shape[-1]
        order = _argsort(a, -1, False)
        s = xp.take_along_axis(a, order, axis=-1)
        new_run = xp.concatenate([xp.ones(s.shape[:-1] + (1,), dtype=bool), s[..., 1:] != s[..., :-1]], axis=-1)
        run_id = xp.cumsum(new_run, axis=-1) - 1
        # run r starts at the r-th True of new_run and ends at the r-th True of run_end: sorting the positions
        # (n where False) lists them in order, and run_id picks each position's (no ufunc.accumulate, for CuPy)
        run_end = xp.concatenate([new_run[..., 1:], xp.ones(s.shape[:-1] + (1,), dtype=bool)], axis=-1)
        pos = xp.arange(n)
        first = xp.take_along_axis(xp.sort(xp.where(new_run, pos, n), axis=-1), run_id, axis=-1)
        last = xp.take_along_axis(xp.sort(xp.where(run_end, pos, n), axis=-1), run_id, axis=-1)
        length = last - first + 1
        best = xp.argmax(length, axis=-1)[..., None]  # first = smallest value among the longest runs
        best_run = xp.take_along_axis(run_id, best, axis=-1)
        # the mode's last occurrence in the input: the largest original index in that run
        in_run = run_id == best_run
        idx = xp.max(xp.where(in_run, order, -1), axis=-1, keepdims=True)
        return self._picked(x, xp.moveaxis(idx, -1, d), d, keepdim)

    # ---- sorting
    def sort(self, dim=-1, descending=False, stable=False):
        d = _dim(dim, self.ndim) if self.ndim else 0
        if not self.ndim:
            return ValuesIndices((self.clone(), _const(xp_of(self._data).zeros((), dtype=np.int64))))
        idx = _argsort(self._data, d, descending)
        return ValuesIndices((_gather(self, idx, d), _const(idx)))

    def argsort(self, dim=-1, descending=False, stable=False):
        return self.sort(dim, descending, stable).indices

    def msort(self):
        return self.sort(0).values

    def topk(self, k, dim=-1, largest=True, sorted=True):
        d = _dim(dim, self.ndim) if self.ndim else 0
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
        d = _dim(dim, self.ndim)
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
        d = _dim(dim, self.ndim)
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
        d = _dim(dim, self.ndim)
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
        d = _dim(dim, self.ndim)
        n = self.shape[d]
        start = int(start) + (n if int(start) < 0 else 0)
        if not (0 <= start <= n and 0 <= length and start + length <= n):
            raise RuntimeError(f"narrow(): start ({start}) + length ({length}) exceeds dimension {d} of size {n}")
        return self[(slice(None),) * d + (slice(start, start + int(length)),)]

    def select(self, dim, index):
        d = _dim(dim, self.ndim)
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
        x, d = (self.reshape(-1), 0) if dim is None else (self, _dim(dim, self.ndim))
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

    # ---- the attribute sweep of issue #14: PyTorch's aliases, queries and small composites
    def greater(self, other):
        return self.gt(other)

    def greater_equal(self, other):
        return self.ge(other)

    def less(self, other):
        return self.lt(other)

    def less_equal(self, other):
        return self.le(other)

    def not_equal(self, other):
        return self.ne(other)

    def absolute(self):
        return self.abs()

    def sgn(self):
        """sign(x): for real tensors PyTorch's sgn is sign."""
        return self.sign()

    def positive(self):
        if self.dtype == np.bool_:
            raise NotImplementedError("The `+` operator, on a bool tensor is not supported.")
        return self

    def swapdims(self, dim0, dim1):
        return self.transpose(dim0, dim1)

    def broadcast_to(self, size):
        return self.expand(*size)

    def ravel(self):
        return self.reshape(-1)

    def ndimension(self):
        return self.ndim

    @property
    def itemsize(self):
        return self.element_size()

    @property
    def nbytes(self):
        return self.numel() * self.element_size()

    @property
    def is_cpu(self):
        return self.device.type == "cpu"

    # conch has no sparse, quantized or meta tensors: PyTorch's flags are False
    is_sparse = is_quantized = is_meta = False

    def is_complex(self):
        return False

    def is_conj(self):
        return False

    def is_neg(self):
        return False

    def is_inference(self):
        return False

    def is_signed(self):
        return self.dtype.kind not in "bu"

    def is_same_size(self, other):
        return self.shape == other.shape

    def is_nonzero(self):
        n = self.numel()
        if n != 1:
            what = "no values" if n == 0 else "more than one value"
            raise RuntimeError(f"Boolean value of Tensor with {what} is ambiguous (shape {tuple(self.shape)})")
        return bool(self.item())

    def get_device(self):
        """-1 on the CPU, else the GPU's ordinal (PyTorch's)."""
        return -1 if self.device.type == "cpu" else self.device.index

    byte, char, short = (_to_dtype(dt, n) for dt, n in ((D.uint8, "byte"), (D.int8, "char"), (D.int16, "short")))

    def dot(self, other):
        """Σ self[i]·other[i] of two 1-D tensors of one dtype and length."""
        if self.ndim != 1 or other.ndim != 1:
            raise RuntimeError(f"1D tensors expected, but got {self.ndim}D and {other.ndim}D tensors")
        if self.shape != other.shape:
            raise RuntimeError(
                f"inconsistent tensor size, expected tensor [{self.shape[0]}] and src [{other.shape[0]}] to have the "
                "same number of elements, but got different sizes"
            )
        if self.dtype != other.dtype:
            raise RuntimeError(
                f"dot : expected both vectors to have same dtype, but found {D.scalar_name(self.dtype)} and "
                f"{D.scalar_name(other.dtype)}"
            )
        return self.matmul(other)

    def vdot(self, other):
        return self.dot(other)  # a real tensor is its own conjugate

    def inner(self, other):
        """Σ over the last dims, shape self.shape[:-1] + other.shape[:-1]; a 0-d operand multiplies."""
        if self.ndim == 0 or other.ndim == 0:
            return self * other
        if self.shape[-1] != other.shape[-1]:
            raise RuntimeError(
                f"inner() the last dimension must match on both input tensors but got shapes {tuple(self.shape)} "
                f"and {tuple(other.shape)}"
            )
        k = self.shape[-1]
        out = self.reshape(-1, k).matmul(other.reshape(-1, k).transpose(0, 1))
        return out.reshape(self.shape[:-1] + other.shape[:-1])

    def mv(self, vec):
        if self.ndim != 2 or vec.ndim != 1:
            raise RuntimeError(f"vector + matrix @ vector expected, got {self.ndim}, {vec.ndim}")
        return self.matmul(vec)

    def addmv(self, mat, vec, *, beta=1, alpha=1):
        """beta·self + alpha·(mat @ vec)."""
        return _scaled_sum(self, mat.mv(vec), beta, alpha)

    def addr(self, vec1, vec2, *, beta=1, alpha=1):
        """beta·self + alpha·outer(vec1, vec2)."""
        return _scaled_sum(self, vec1.outer(vec2), beta, alpha)

    def addbmm(self, batch1, batch2, *, beta=1, alpha=1):
        """beta·self + alpha·Σ_b batch1[b] @ batch2[b]."""
        return _scaled_sum(self, batch1.bmm(batch2).sum(0), beta, alpha)

    def trace(self):
        if self.ndim != 2:
            raise RuntimeError(f"trace: expected a matrix, but got tensor with dim {self.ndim}")
        return self.diagonal().sum()

    def kron(self, other):
        """Kronecker product: out[i·p + k, j·q + l] = self[i, j]·other[k, l] (any ndim; the shorter gets leading 1s)."""
        nd = max(self.ndim, other.ndim)
        sa = (1,) * (nd - self.ndim) + tuple(self.shape)
        sb = (1,) * (nd - other.ndim) + tuple(other.shape)
        a = self.reshape(tuple(s for n in sa for s in (n, 1)))  # self's dims interleaved with other's
        b = other.reshape(tuple(s for n in sb for s in (1, n)))
        return (a * b).reshape(tuple(p * q for p, q in zip(sa, sb)))

    def cross(self, other, dim=None):
        """The cross product along ``dim`` (of size 3; by default the first such dim, as PyTorch)."""
        shape = np.broadcast_shapes(self.shape, other.shape)
        if dim is None:
            dim = next((i for i, n in enumerate(shape) if n == 3), None)
            if dim is None:
                raise RuntimeError(f"no dimension of size 3 in input shapes {tuple(self.shape)}, {tuple(other.shape)}")
        d = _dim(dim, len(shape))
        a, b = self.expand(*shape), other.expand(*shape)
        if shape[d] != 3:
            raise RuntimeError(
                f"linalg.cross: inputs dimension {d} must have length 3. Got {self.shape[d]} and {other.shape[d]}"
            )
        a, b = a.unbind(d), b.unbind(d)
        return stack([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]], d)

    def _as_float(self):
        return self if D.is_floating(self.dtype) else self.to(dtype=_floating(self.dtype))

    def xlogy(self, other):
        """self·log(other), and 0 where self is 0 (unless other is NaN)."""
        x = self._as_float()
        other = other if isinstance(other, Tensor) else x._wrap_const(xp_of(x._data).asarray(other, dtype=x.dtype))
        return where((x == 0) & ~other.isnan(), 0.0, x * other.log())

    def logit(self, eps=None):
        """log(p / (1 - p)), p clamped to [eps, 1 - eps] when ``eps`` is given."""
        p = self._as_float() if eps is None else self._as_float().clamp(eps, 1 - eps)
        return p.log() - (-p).log1p()

    def erfc(self):
        return 1 - self.erf()

    # ---- special functions (through SciPy: conch.ops.special)
    def erfinv(self):
        """The inverse of erf on (-1, 1) (±inf at ±1, NaN outside)."""
        return Special.apply(_floating(self), name="erfinv")

    def lgamma(self):
        """log|Γ(x)|."""
        return Special.apply(_floating(self), name="gammaln")

    def digamma(self):
        """ψ(x) = d/dx log Γ(x)."""
        return Special.apply(_floating(self), name="polygamma", n=0)

    def polygamma(self, n):
        """The n-th derivative of digamma (``t.polygamma(n)``; the function is ``conch.polygamma(n, t)``)."""
        if int(n) < 0:
            raise RuntimeError(f"polygamma(n, x) does not support negative n, got n={n}")
        return Special.apply(_floating(self), name="polygamma", n=int(n))

    def mvlgamma(self, p):
        """The multivariate log-gamma of dimension p: Σ_{i<p} lgamma(x - i/2) + p(p-1)/4 · log π."""
        if p < 1:
            raise RuntimeError(f"p has to be greater than or equal to 1, got {p}")
        x = _floating(self)
        if bool((x <= (p - 1) / 2).any()):
            raise RuntimeError(f"All elements must be greater than (p-1)/2 = {(p - 1) / 2}")
        return sum(((x - i / 2).lgamma() for i in range(1, p)), x.lgamma()) + p * (p - 1) / 4 * float(np.log(np.pi))

    def i0(self):
        """The modified Bessel function of the first kind, order 0."""
        return Special.apply(_floating(self), name="i0")

    def igamma(self, other):
        """The regularised lower incomplete gamma P(self, other) (gradient to ``other``, as PyTorch)."""
        a, x = _operands(self, other)
        return IncompleteGamma.apply(_floating(a), _floating(x), upper=False)

    def igammac(self, other):
        """The regularised upper incomplete gamma Q(self, other) = 1 - P(self, other)."""
        a, x = _operands(self, other)
        return IncompleteGamma.apply(_floating(a), _floating(x), upper=True)

    def deg2rad(self):
        return self._as_float() * (np.pi / 180)

    def rad2deg(self):
        return self._as_float() * (180 / np.pi)

    def fmax(self, other):
        """max(self, other) ignoring NaN: NaN only where both are."""
        return where(other.isnan(), self, where(self.isnan(), other, maximum(self, other)))

    def fmin(self, other):
        """min(self, other) ignoring NaN: NaN only where both are."""
        return where(other.isnan(), self, where(self.isnan(), other, minimum(self, other)))

    def heaviside(self, values):
        """0 where self < 0, ``values`` where self == 0, 1 where self > 0."""
        return where(self == 0, values, (self > 0).to(dtype=self.dtype))

    def sinc(self):
        """sin(πx)/(πx), and 1 at 0 (with gradient 0 there)."""
        zero = self == 0
        px = where(zero, 1.0, self._as_float() * np.pi)
        return where(zero, 1.0, px.sin() / px)

    def signbit(self):
        return _const(xp_of(self._data).signbit(self._data))

    def float_power(self, exponent):
        """self ** exponent computed in float64."""
        e = exponent.to(dtype=D.float64) if isinstance(exponent, Tensor) else exponent
        return self.to(dtype=D.float64) ** e

    def logaddexp2(self, other):
        """log2(2^self + 2^other)."""
        ln2 = float(np.log(2.0))
        return (self * ln2).logaddexp(other * ln2) / ln2

    def ldexp(self, other):
        """self · 2^other."""
        return self._as_float() * (other._as_float().exp2() if isinstance(other, Tensor) else 2.0 ** float(other))

    def nansum(self, dim=None, keepdim=False, *, dtype=None):
        """sum with NaN counted as 0."""
        x = self if dtype is None else self.to(dtype=dtype)
        x = where(x.isnan(), 0, x) if D.is_floating(x.dtype) else x
        return x.sum() if dim is None else x.sum(dim, keepdim)

    def nanmean(self, dim=None, keepdim=False, *, dtype=None):
        """mean over the non-NaN elements."""
        x = self if dtype is None else self.to(dtype=dtype)
        n = (~x.isnan()).to(dtype=x.dtype)
        return x.nansum() / n.sum() if dim is None else x.nansum(dim, keepdim) / n.sum(dim, keepdim)

    def fliplr(self):
        if self.ndim < 2:
            raise RuntimeError(f"Input must be >= 2-d, got shape {tuple(self.shape)}")
        return self.flip(1)

    def flipud(self):
        if self.ndim < 1:
            raise RuntimeError("Input must be >= 1-d.")
        return self.flip(0)

    def rot90(self, k=1, dims=(0, 1)):
        """Rotate by 90°·k in the plane ``dims``, from the first axis towards the second."""
        if len(dims) != 2:
            raise RuntimeError(f"expected total rotation dims == 2, but got dims = {len(dims)}")
        if self.ndim < 2:
            raise RuntimeError(f"expected total dims >= 2, but got total dims = {self.ndim}")
        d0, d1 = _dim(dims[0], self.ndim), _dim(dims[1], self.ndim)
        if d0 == d1:
            raise RuntimeError(f"expected rotation dims to be different, but got dim0 = {d0} and dim1 = {d1}")
        k %= 4
        if k == 1:
            return self.flip(d1).transpose(d0, d1)
        if k == 2:
            return self.flip((d0, d1))
        if k == 3:
            return self.flip(d0).transpose(d0, d1)
        return self.clone()

    def take(self, index):
        """self.flatten()[index], in index's shape (negative indices count from the end)."""
        idx = _index_array(index, self, "take")
        n = self.numel()
        idx = _check_range(xp_of(idx).where(idx < 0, idx + n, idx), n, 0, "take", IndexError)
        return self.reshape(-1)[_const(idx)]

    def tensor_split(self, indices_or_sections, dim=0):
        """Views: ``n`` sections as equal as possible (the first n % size one longer), or the pieces between
        the given indices."""
        d = _dim(dim, self.ndim)
        n = self.shape[d]
        if isinstance(indices_or_sections, Tensor):
            indices_or_sections = indices_or_sections.tolist()
        if isinstance(indices_or_sections, (int, np.integer)):
            k = int(indices_or_sections)
            if k <= 0:
                raise RuntimeError(f"number of sections must be larger than 0, got {k}")
            q, r = divmod(n, k)
            bounds = np.cumsum([0] + [q + 1] * r + [q] * (k - r)).tolist()
        else:
            bounds = [0, *(int(i) for i in indices_or_sections), n]
        lead = (slice(None),) * d
        return tuple(self[lead + (slice(min(a, n), max(min(b, n), min(a, n))),)] for a, b in zip(bounds, bounds[1:]))

    def _split_even(self, sections, dim, what, min_dims):
        if self.ndim < min_dims:
            raise RuntimeError(f"torch.{what} requires a tensor with at least {min_dims} dimension, but got a tensor "
                               f"with {self.ndim} dimensions!")  # fmt: skip
        if isinstance(sections, (int, np.integer)) and self.shape[dim] % sections:
            raise RuntimeError(
                f"torch.{what} attempted to split along dimension {dim}, but the size of the dimension "
                f"{self.shape[dim]} is not divisible by the split_size {sections}!"
            )
        return self.tensor_split(sections, dim)

    def hsplit(self, sections):
        return self._split_even(sections, 1 if self.ndim > 1 else 0, "hsplit", 1)

    def vsplit(self, sections):
        return self._split_even(sections, 0, "vsplit", 2)

    def dsplit(self, sections):
        return self._split_even(sections, 2, "dsplit", 3)

    def split_with_sizes(self, split_sizes, dim=0):
        d = _dim(dim, self.ndim)
        if sum(split_sizes) != self.shape[d]:
            raise RuntimeError(
                f"split_with_sizes expects split_sizes to sum exactly to {self.shape[d]} (input tensor's size at "
                f"dimension {d}), but got split_sizes={list(split_sizes)}"
            )
        return self.split(list(split_sizes), d)

    def unfold(self, dimension, size, step):
        """Windows of ``size`` every ``step`` along ``dimension``: that dim becomes the window count and a last dim
        of ``size`` is added (``x.unfold(0, 2, 1)`` of [1, 2, 3] is [[1, 2], [2, 3]])."""
        d = _dim(dimension, self.ndim) if self.ndim else 0
        n = self.shape[d] if self.ndim else 1
        if size > n:
            raise RuntimeError(f"maximum size for tensor at dimension {d} is {n} but size is {size}")
        if step <= 0:
            raise RuntimeError(f"step is {step} but must be > 0")
        x = self if self.ndim else self.reshape(1)
        count = (n - size) // step + 1
        idx = (np.arange(count)[:, None] * step + np.arange(size)[None, :]).reshape(-1)
        win = x.index_select(d, _const(xp_of(x._data).asarray(idx)))
        win = win.reshape(x.shape[:d] + (count, size) + x.shape[d + 1 :]).movedim(d + 1, -1)
        return win.reshape(size) if not self.ndim else win

    def diag_embed(self, offset=0, dim1=-2, dim2=-1):
        """The last dim of self onto diagonal ``offset`` of new dims ``dim1``, ``dim2`` (zeros elsewhere)."""
        n = self.shape[-1]
        m = n + abs(int(offset))
        sel = np.zeros((n, m, m))
        i = np.arange(n)
        sel[i, i + max(-offset, 0), i + max(offset, 0)] = 1.0
        out = einsum("...i,irc->...rc", self, _const(xp_of(self._data).asarray(sel, dtype=self.dtype)))
        nd = self.ndim + 1
        d1, d2 = _dim(dim1, nd), _dim(dim2, nd)
        if d1 == d2:
            raise RuntimeError(f"diagonal dimensions cannot be identical {dim1}, {dim2}")
        return out.movedim((-2, -1), (d1, d2))

    def diagflat(self, offset=0):
        return self.reshape(-1).diag(offset)

    def narrow_copy(self, dim, start, length):
        return self.narrow(dim, start, length).clone()

    def sum_to_size(self, *size):
        """Sum the broadcast dims away so that self has ``size`` (which must broadcast to self's shape)."""
        size = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list)) else tuple(size)
        lead = self.ndim - len(size)
        if lead < 0 or any(s not in (1, n) for s, n in zip(size, self.shape[lead:])):
            raise RuntimeError(f"size {list(size)} is not expandable to size {list(self.shape)}")
        out = self.sum(tuple(range(lead))) if lead else self
        dims = tuple(i for i, (s, n) in enumerate(zip(size, out.shape)) if s == 1 and n != 1)
        return out.sum(dims, keepdim=True) if dims else out

    def _index_source(self, dim, index, source, what):
        """(self as ≥1-D, source likewise, dim, the index broadcast to source's shape) for index_copy/index_reduce:
        source must have self's shape with ``dim`` of the index's length, and self's dtype."""
        d, idx = self._index_vector(dim, index, what)
        x = self if self.ndim else self.reshape(1)
        src = source if source.ndim else source.reshape(1)
        want = x.shape[:d] + (idx.shape[0],) + x.shape[d + 1 :]
        if tuple(src.shape) != want:
            raise RuntimeError(f"{what}_(): source {tuple(source.shape)} must have shape {want} (self "
                               f"{tuple(self.shape)} with dimension {d} of the index's length)")  # fmt: skip
        if src.dtype != self.dtype:
            raise RuntimeError(f"{what}_(): self and source expected to have the same dtype, but got (self) "
                               f"{D.scalar_name(self.dtype)} and (source) {D.scalar_name(src.dtype)}")  # fmt: skip
        view = [1] * x.ndim
        view[d] = idx.shape[0]
        return x, src, d, xp_of(idx).broadcast_to(idx.reshape(view), want)

    def index_copy(self, dim, index, source):
        """self with ``source[..., i, ...]`` written at ``self[..., index[i], ...]``."""
        x, src, d, full = self._index_source(dim, index, source, "index_copy")
        out = Scatter.apply(x, src, idx=full, dim=d)
        return out if self.ndim else out.reshape(())

    def index_reduce(self, dim, index, source, reduce, *, include_self=True):
        """self with ``source[..., i, ...]`` reduced into ``self[..., index[i], ...]`` by "prod", "mean", "amax" or
        "amin" (``scatter_reduce`` along one dim with a vector index; the same gradients)."""
        if reduce not in ("prod", "mean", "amax", "amin"):
            raise RuntimeError(
                f"index_reduce(): Expected reduce to be one of prod, mean, amax or amin but got {reduce}."
            )
        x, src, d, full = self._index_source(dim, index, source, "index_reduce")
        out = ScatterReduce.apply(x, src, idx=full, dim=d, reduce=reduce, include_self=bool(include_self))
        return out if self.ndim else out.reshape(())

    def put(self, index, source, accumulate=False):
        """self with ``source`` written (``accumulate``: added) at the flat positions ``index`` of self."""
        if source.dtype != self.dtype:
            raise RuntimeError(
                f"put_(): self and source expected to have the same dtype, but got self.dtype = "
                f"{D.scalar_name(self.dtype)} and source.dtype = {D.scalar_name(source.dtype)}"
            )
        idx = _index_array(index, self, "put").reshape(-1)
        n = self.numel()
        idx = _check_range(xp_of(idx).where(idx < 0, idx + n, idx), n, 0, "put", IndexError)
        flat = self.reshape(-1).index_put((_const(idx),), source.reshape(-1), accumulate)
        return flat.reshape(self.shape)

    def histogram(self, bins=100, *, range=None, weight=None, density=False):
        """(hist, bin_edges) as NumPy's histogram: ``bins`` a count or a tensor of edges, in self's dtype."""
        xp = xp_of(self._data)
        b = bins._data if isinstance(bins, Tensor) else int(bins)
        w = None if weight is None else weight._data
        hist, edges = xp.histogram(self._data, bins=b, range=range, weights=w, density=density)
        return _Histogram((_const(hist.astype(self.dtype)), _const(edges.astype(self.dtype))))

    def float_power_(self, exponent):
        if self.dtype != D.float64:
            raise RuntimeError(
                f"the base given to float_power_ has dtype {D.scalar_name(self.dtype)} but the operation's result "
                "requires dtype Double"
            )
        return self._inplace_fn(lambda t: t.float_power(exponent), "float_power_", exponent)

    def index_put(self, indices, values, accumulate=False):
        """self with ``values`` written (or, ``accumulate=True``, added, repeats summing) at ``self[indices]``."""
        if not isinstance(indices, (tuple, list)):
            raise TypeError(f"index_put(): argument 'indices' must be tuple of Tensors, not {type(indices).__name__}")
        idx = tuple(indices)
        values = values if isinstance(values, Tensor) else _const(xp_of(self._data).asarray(values, self.dtype))
        if accumulate:
            sel = self[idx]
            v = values.to(dtype=self.dtype).expand(*sel.shape)
            arrays = _index_arrays_of(idx, self)
            return self + ops.IndexAdd.apply(v, shape=self.shape, idx=arrays)
        out = self.clone()
        out[idx] = values
        return out

    def unique_consecutive(self, return_inverse=False, return_counts=False, dim=None):
        """Each run of equal consecutive (flattened) values once; optionally each element's run and run lengths."""
        if dim is not None:
            raise NotImplementedError("unique_consecutive(dim=...) is not supported by conch; flatten first")
        xp = xp_of(self._data)
        flat = self._data.reshape(-1)
        starts = xp.concatenate([xp.ones(min(flat.shape[0], 1), dtype=bool), flat[1:] != flat[:-1]])
        out = [_const(flat[starts])]
        if return_inverse:
            out.append(_const((xp.cumsum(starts) - 1).astype(np.int64).reshape(self.shape)))
        if return_counts:
            pos = xp.concatenate([xp.flatnonzero(starts), xp.asarray([flat.shape[0]])])
            out.append(_const(xp.diff(pos).astype(np.int64)))
        return out[0] if len(out) == 1 else tuple(out)

    def histc(self, bins=100, min=0, max=0):
        """Counts in ``bins`` equal bins over [min, max] (the data's range when min == max), out-of-range values
        left out, in self's dtype."""
        xp = xp_of(self._data)
        data = self._data.astype(np.float64)
        lo, hi = float(min), float(max)
        if lo == hi and data.size:
            lo, hi = float(data.min()), float(data.max())
        if lo == hi:
            lo, hi = lo - 1, hi + 1
        if lo > hi:
            raise RuntimeError(f"torch.histc: max must be larger than min, got min {lo} and max {hi}")
        counts, _ = xp.histogram(data, bins=int(bins), range=(lo, hi))
        return _const(counts.astype(self.dtype))

    @property
    def mH(self):  # noqa: N802  (PyTorch's name)
        """The conjugate transpose of the last two dims: ``mT`` for a real tensor."""
        return self.mT

    @property
    def H(self):  # noqa: N802
        """The conjugate transpose of a matrix: ``t()`` for a real 2-D tensor."""
        if self.ndim not in (0, 2):
            raise RuntimeError(f"tensor.H is only supported on matrices (2-D tensors). Got {self.ndim}-D tensor.")
        return self.t() if self.ndim else self

    def adjoint(self):
        return self.mT

    def conj(self):
        return self  # a real tensor is its own conjugate (PyTorch returns self too)

    def resolve_conj(self):
        return self

    def resolve_neg(self):
        return self

    def isreal(self):
        return _const(xp_of(self._data).ones(self.shape, dtype=bool))

    def is_pinned(self):
        return False

    def bernoulli(self, p=None, *, generator=None):
        """0/1 draws with probability ``p`` (a number) or self's values (p=None), in self's dtype."""
        return bernoulli(self, p, generator)

    def dist(self, other, p=2):
        return dist(self, other, p)

    def cov(self, *, correction=1, fweights=None, aweights=None):
        """Covariance of the variables in the rows of a (variables, observations) matrix (a 1-D input is one)."""
        if fweights is not None or aweights is not None:
            raise NotImplementedError("cov(fweights=, aweights=) is not supported by conch")
        if self.ndim > 2:
            raise RuntimeError(
                f"cov(): expected input to have two or fewer dimensions but got an input with {self.ndim} dimensions"
            )
        x = (self if self.ndim == 2 else self.reshape(1, -1))._as_float()
        n = x.shape[1]
        xc = x - x.mean(1, keepdim=True)
        out = xc.matmul(xc.transpose(0, 1)) / max(n - correction, 0)
        return out.reshape(()) if self.ndim < 2 else out

    def corrcoef(self):
        """Pearson correlation of the rows: cov / (σ_i σ_j), clipped to [-1, 1]."""
        c = self.cov()
        if c.ndim == 0:
            return c / c
        d = c.diagonal().sqrt()
        return (c / d[:, None] / d[None, :]).clamp(-1, 1)

    def quantile(self, q, dim=None, keepdim=False, *, interpolation="linear"):
        """The q-quantiles along ``dim`` (all elements when None) from the sorted values, interpolated as NumPy's
        methods of the same names: linear, lower, higher, midpoint, nearest. Gradients flow to the picked values."""
        return self._quantile(q, dim, keepdim, interpolation, "quantile", ignore_nan=False)

    def nanquantile(self, q, dim=None, keepdim=False, *, interpolation="linear"):
        """quantile over the non-NaN values."""
        return self._quantile(q, dim, keepdim, interpolation, "nanquantile", ignore_nan=True)

    def _quantile(self, q, dim, keepdim, interpolation, what, ignore_nan):
        if interpolation not in ("linear", "lower", "higher", "midpoint", "nearest"):
            raise ValueError(f"{what}() interpolation must be one of linear, lower, higher, midpoint or nearest. "
                             f"Got {interpolation}")  # fmt: skip
        if not D.is_floating(self.dtype):
            raise RuntimeError(f"{what}() input tensor must be either float or double dtype, got {self.dtype}")
        scalar_q = not isinstance(q, Tensor)
        qa = np.atleast_1d(np.asarray(q if scalar_q else to_host(q._data), dtype=np.float64))
        if qa.ndim > 1 or ((qa < 0) | (qa > 1)).any():
            raise RuntimeError(f"{what}() q values must be in the range [0, 1] and q at most 1-D, got {q}")
        x = self.reshape(-1) if dim is None else self.movedim(_dim(dim, self.ndim), -1)
        xs = x.sort(-1).values  # NaN sorts last
        n = x.shape[-1]
        xp = xp_of(self._data)
        valid = (~x.isnan()).sum(-1, keepdim=True) if ignore_nan else None
        count = valid._data.astype(np.float64) if ignore_nan else np.float64(n)
        pos = xp.asarray(qa) * (count - 1)  # (..., nq) with nan-ignoring counts, else (nq,)
        if interpolation == "lower":
            pos = xp.floor(pos)
        elif interpolation == "higher":
            pos = xp.ceil(pos)
        elif interpolation == "nearest":
            pos = xp.round(pos)  # half to even, as PyTorch
        last = xp.maximum(xp.asarray(count) - 1, 0)  # the last valid position (NaNs sort after it)
        lo = xp.minimum(xp.maximum(xp.floor(pos), 0), last).astype(np.int64)
        hi = xp.minimum(lo + 1, last).astype(np.int64)
        frac = 0.5 if interpolation == "midpoint" else pos - xp.floor(pos)
        if interpolation == "midpoint":
            frac = xp.where(xp.floor(pos) == pos, 0.0, 0.5)
        shape = xs.shape[:-1] + (qa.shape[0],)
        lo_v = xs.gather(-1, _const(xp.broadcast_to(lo, shape).copy()))
        hi_v = xs.gather(-1, _const(xp.broadcast_to(hi, shape).copy()))
        w = _const(xp.broadcast_to(xp.asarray(frac, dtype=xs.dtype), shape).copy())
        out = lo_v + (hi_v - lo_v) * w
        if not ignore_nan:  # any NaN in a slice makes its quantiles NaN
            out = where(x.isnan().any(-1, keepdim=True), float("nan"), out)
        else:
            out = where(valid == 0, float("nan"), out)
        out = out.movedim(-1, 0)  # q's dim leads, as PyTorch
        if keepdim:
            out = out.unsqueeze(-1) if dim is not None else out.reshape(out.shape[:1] + (1,) * self.ndim)
            if dim is not None:
                out = out.movedim(-1, 1 + _dim(dim, self.ndim))
        return out[0] if scalar_q or (isinstance(q, Tensor) and q.ndim == 0) else out

    def renorm(self, p, dim, maxnorm):
        """Each slice along ``dim`` with p-norm above ``maxnorm`` scaled down to norm maxnorm (1e-7 slack)."""
        d = _dim(dim, self.ndim)
        others = tuple(i for i in range(self.ndim) if i != d)
        norms = (self.abs() ** p).sum(others, keepdim=True) ** (1.0 / p)
        scale = where(norms > maxnorm, maxnorm / (norms + 1e-7), 1.0)
        return self * scale.detach()  # PyTorch's renorm scale carries no gradient

    def select_scatter(self, src, dim, index):
        """self with ``src`` written at ``select(dim, index)``."""
        out = self.clone()
        out.select(dim, index).copy_(src)
        return out

    def slice_scatter(self, src, dim=0, start=None, end=None, step=1):
        """self with ``src`` written at ``self[..., start:end:step, ...]`` (along ``dim``)."""
        out = self.clone()
        d = _dim(dim, self.ndim)
        out[(slice(None),) * d + (slice(start, end, step),)] = src
        return out

    def diagonal_scatter(self, src, offset=0, dim1=0, dim2=1):
        """self with ``src`` written on the diagonal ``diagonal(offset, dim1, dim2)``."""
        out = self.clone()
        out.diagonal(offset, dim1, dim2).copy_(src)
        return out

    def _integer_only(self, other, what, fn):
        for t in (self, other):
            if t.dtype.kind not in "iu":
                raise NotImplementedError(f"\"{what}_cpu\" not implemented for '{D.scalar_name(t.dtype)}'")
        a, b = _operands(self, other)
        return _const(fn(a._data, b._data))

    def gcd(self, other):
        return self._integer_only(other, "gcd", xp_of(self._data).gcd)

    def lcm(self, other):
        return self._integer_only(other, "lcm", xp_of(self._data).lcm)

    def hardshrink(self, lambd=0.5):
        """x where |x| > lambd, else 0."""
        return where(self.abs() > lambd, self, 0.0)

    def frexp(self):
        """(mantissa, exponent) with self = mantissa · 2^exponent and 0.5 <= |mantissa| < 1."""
        m, e = xp_of(self._data).frexp(self._data)
        return _Frexp((_const(m), _const(e.astype(np.int32))))

    def nextafter(self, other):
        a, b = _operands(self, other)
        return _const(xp_of(a._data).nextafter(a._data, b._data))


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
for _n in (  # the attribute sweep of issue #14 (comparisons write 0/1 in self's dtype, as PyTorch)
    "absolute", "sgn", "xlogy", "logit", "erfc", "deg2rad", "rad2deg", "sinc", "ldexp", "addmv", "addr", "addbmm",
    "addmm", "baddbmm", "index_copy", "index_put", "cumsum", "cumprod", "tril", "triu", "eq", "ne", "lt", "le", "gt",
    "ge", "greater", "greater_equal", "less", "less_equal", "not_equal", "heaviside", "subtract", "multiply", "divide",
    "true_divide", "arccosh", "arcsinh", "arctan2", "arctanh", "renorm", "gcd", "lcm", "nextafter",
    "erfinv", "lgamma", "digamma", "polygamma", "mvlgamma", "i0", "igamma", "igammac", "index_reduce", "put",
):  # fmt: skip
    if not hasattr(Tensor, _n + "_"):
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
    if code is None or getattr(fn, "__wrapped__", None) is not None or getattr(fn, "_numpy_names", False):
        return False  # (_numpy_names: the method takes axis=/keepdims= itself, as Tensor.sum/mean)
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


# ---------------------------------------------------------------- functions of issue #14's attribute sweep


def _tensors_arg(tensors):
    return tuple(tensors[0]) if len(tensors) == 1 and isinstance(tensors[0], (list, tuple)) else tuple(tensors)


def _atleast_shape(shape, nd):
    """NumPy's atleast_Nd placement: leading 1s, except that atleast_3d puts a 1-D (n) at (1, n, 1) and a 2-D
    (m, n) at (m, n, 1)."""
    if len(shape) >= nd:
        return shape
    if nd == 3 and len(shape) in (1, 2):
        return ((1,) if len(shape) == 1 else ()) + shape + (1,)
    return (1,) * (nd - len(shape)) + shape


def _atleast(nd, tensors):
    out = [t.reshape(_atleast_shape(tuple(t.shape), nd)) for t in _tensors_arg(tensors)]
    return out[0] if len(out) == 1 else tuple(out)


def atleast_1d(*tensors):
    """Each tensor with at least 1 dim (a 0-d one becomes shape (1,)); one tensor in, one out."""
    return _atleast(1, tensors)


def atleast_2d(*tensors):
    """At least 2 dims: 0-d -> (1, 1), (n,) -> (1, n)."""
    return _atleast(2, tensors)


def atleast_3d(*tensors):
    """At least 3 dims: 0-d -> (1, 1, 1), (n,) -> (1, n, 1), (m, n) -> (m, n, 1)."""
    return _atleast(3, tensors)


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def hstack(tensors):
    """Concatenate along dim 1 (dim 0 for 1-D tensors)."""
    ts = _as_tuple(atleast_1d(*tensors))
    return cat(ts, 0 if ts[0].ndim == 1 else 1)


def vstack(tensors):
    """Concatenate along dim 0 after atleast_2d: 1-D tensors become rows."""
    return cat(_as_tuple(atleast_2d(*tensors)), 0)


row_stack = vstack


def dstack(tensors):
    """Concatenate along dim 2 after atleast_3d."""
    return cat(_as_tuple(atleast_3d(*tensors)), 2)


def column_stack(tensors):
    """0-d and 1-D tensors as columns (n, 1), then concatenate along dim 1."""
    return cat([t.reshape(-1, 1) if t.ndim < 2 else t for t in tensors], 1)


def isin(elements, test_elements, *, assume_unique=False, invert=False):
    """A bool tensor: whether each element of ``elements`` is among ``test_elements`` (either may be a number)."""
    ref = elements if isinstance(elements, Tensor) else test_elements
    xp = xp_of(ref._data)

    def arr(v):
        return v._data if isinstance(v, Tensor) else xp.asarray(v)

    return _const(xp.isin(arr(elements), arr(test_elements), assume_unique=assume_unique, invert=invert))


def searchsorted(sorted_sequence, values, *, out_int32=False, right=False, side=None, sorter=None):
    """For each value, the index where it would be inserted into ``sorted_sequence`` (its last dim) to keep it
    sorted: the first such index (``right=False``/``side="left"``) or the last. A 1-D sequence serves every value;
    an N-D one pairs its rows with ``values``' rows (same leading dims)."""
    if side is not None:
        if side not in ("left", "right"):
            raise RuntimeError(f"side can only be 'left' or 'right' but got {side}")
        if right and side == "left":
            raise RuntimeError("side and right can't be set to opposites, got side of left while right was True")
        right = side == "right"
    seq = sorted_sequence
    xp = xp_of(seq._data)
    if sorter is not None:
        seq = seq.gather(-1, sorter)
    scalar = not isinstance(values, Tensor)
    vals = xp.asarray(values) if scalar else values._data
    s = seq._data
    side_ = "right" if right else "left"
    if s.ndim == 1:
        out = xp.searchsorted(s, vals, side=side_)
    else:
        if vals.shape[:-1] != s.shape[:-1]:
            raise RuntimeError(
                f"torch.searchsorted(): boundaries tensor should be 1 dimension or the first N-1 dimensions of "
                f"boundaries tensor and input value tensor must match, but we got boundaries tensor "
                f"{list(s.shape)} and input value tensor {list(vals.shape)}"
            )
        rows_s, rows_v = s.reshape(-1, s.shape[-1]), vals.reshape(-1, vals.shape[-1])
        out = xp.stack([xp.searchsorted(a, b, side=side_) for a, b in zip(rows_s, rows_v)]).reshape(vals.shape)
    return _const(xp.asarray(out).astype(np.int32 if out_int32 else np.int64))


def bucketize(input, boundaries, *, out_int32=False, right=False):
    """The bucket of each value: i with boundaries[i-1] < x <= boundaries[i] (``right=True``: [i-1] <= x < [i])."""
    if boundaries.ndim != 1:
        raise RuntimeError(f"boundaries tensor must be 1 dimension, but got dim({boundaries.ndim})")
    return searchsorted(boundaries, input, out_int32=out_int32, right=right)


def _tri_indices(fn, row, col, offset, dtype, device):
    r, c = fn(int(row), int(offset), int(col))
    return creation.tensor(np.stack([r, c]).reshape(2, -1), dtype=dtype or D.int64, device=device)


def tril_indices(row, col, offset=0, *, dtype=None, device=None, layout=None):
    """(2, N): the row and column indices of the lower triangle (``offset`` diagonals above the main included)."""
    return _tri_indices(np.tril_indices, row, col, offset, dtype, device)


def triu_indices(row, col, offset=0, *, dtype=None, device=None, layout=None):
    """(2, N): the row and column indices of the upper triangle from diagonal ``offset``."""
    return _tri_indices(np.triu_indices, row, col, offset, dtype, device)


def tensordot(a, b, dims=2):
    """Σ over paired dims: ``dims`` an int (a's last n with b's first n) or two lists (a's dims, b's dims).
    One matmul after moving the summed dims together; differentiable."""
    if isinstance(dims, int):
        if dims < 0:
            raise RuntimeError(f"tensordot expects dims >= 0, but got dims={dims}")
        da, db = list(range(a.ndim - dims, a.ndim)), list(range(dims))
    else:
        da, db = ([d] if isinstance(d, int) else list(d) for d in dims)
    da, db = [_dim(d, a.ndim) for d in da], [_dim(d, b.ndim) for d in db]
    for i, j in zip(da, db):
        if a.shape[i] != b.shape[j]:
            raise RuntimeError(
                f"contracted dimensions need to match, but first has size {a.shape[i]} in dim {i} and second has "
                f"size {b.shape[j]} in dim {j}"
            )
    fa, fb = [i for i in range(a.ndim) if i not in da], [j for j in range(b.ndim) if j not in db]
    k = int(np.prod([a.shape[i] for i in da]))
    am = a.permute(*fa, *da).reshape(-1, k)
    bm = b.permute(*db, *fb).reshape(k, -1)
    return am.matmul(bm).reshape(tuple(a.shape[i] for i in fa) + tuple(b.shape[j] for j in fb))


def block_diag(*tensors):
    """The tensors (0-d, 1-D as a row, or 2-D) as the blocks of a block-diagonal matrix, zeros elsewhere."""
    ts = [t.reshape(1, 1) if t.ndim == 0 else t.reshape(1, -1) if t.ndim == 1 else t for t in tensors]
    if any(t.ndim != 2 for t in ts):
        raise RuntimeError(f"torch.block_diag: Input tensors must have 2 or fewer dimensions, got shapes "
                           f"{[tuple(t.shape) for t in tensors]}")  # fmt: skip
    dt = D.result_type(*((t.dtype, 1) for t in ts))
    width = sum(t.shape[1] for t in ts)
    rows, left = [], 0
    for t in ts:
        r, c = t.shape
        xp = xp_of(t._data)
        rows.append(
            cat([_const(xp.zeros((r, left), dt)), t.to(dtype=dt), _const(xp.zeros((r, width - left - c), dt))], 1)
        )
        left += c
    return cat(rows, 0)


def cartesian_prod(*tensors):
    """Every combination of the 1-D tensors' elements, as rows (N, k); one tensor comes back as it is."""
    if len(tensors) == 1:
        return tensors[0]
    return stack([g.reshape(-1) for g in meshgrid(*tensors, indexing="ij")], 1)


def result_type(tensor1, tensor2):
    """The dtype PyTorch's promotion gives ``tensor1 op tensor2`` (tensors or Python numbers)."""
    ops_ = [(t.dtype, t.ndim) if isinstance(t, Tensor) else t for t in (tensor1, tensor2)]
    return D.result_type(*ops_)


def promote_types(type1, type2):
    """The smallest dtype both dtypes convert to without losing their category."""
    return D.result_type((D.as_dtype(type1), 1), (D.as_dtype(type2), 1))


def can_cast(from_, to):
    """Whether PyTorch's casting rules allow ``from_`` -> ``to`` (no float to integer, nothing to bool but bool)."""
    return bool(np.can_cast(D.as_dtype(from_), D.as_dtype(to), "same_kind"))


def broadcast_shapes(*shapes):
    """The shape the given shapes broadcast to (RuntimeError when they do not)."""
    try:
        return Size(np.broadcast_shapes(*(tuple(s) if isinstance(s, (tuple, list)) else (s,) for s in shapes)))
    except ValueError:
        raise RuntimeError(
            f"shape mismatch: the shapes {[tuple(s) if isinstance(s, (tuple, list)) else s for s in shapes]} "
            "cannot be broadcast to one shape"
        ) from None


def rsub(input, other, *, alpha=1):
    """other - alpha·input."""
    return other - (input * alpha if alpha != 1 else input)
