"""More of PyTorch's Tensor API: rounding, sorting, gather/scatter, triangular and diagonal views, repeat, prod.

``Tensor`` inherits these methods from :class:`TensorOpsMixin`; the Ops they need live here, each with its
forward on arrays and its backward in Tensor operations (so second derivatives work), as in ``ops.py``.
Example::

    x = conch.randn(4, 6, requires_grad=True)
    top = x.topk(2, dim=1)                       # values (4, 2) with gradients, indices (4, 2) int64
    picked = x.gather(1, top.indices)            # the same values, through gather
    (top.values.sum() + x.tril().sum() + x.prod(1).sum()).backward()
"""

from __future__ import annotations

import numpy as np

from . import _dtype as D
from . import ops
from ._backend import to_host, xp_of
from .autograd.function import Op
from .kernels import _deferred


def _T():
    return _tensor.Tensor


def _const(arr):
    return _tensor._const(arr)


def _dim(d, ndim):
    return _tensor._norm_dim(d, ndim)


class _Named(tuple):
    """A tuple with named fields, as torch.return_types (``values``/``indices``, ``min``/``max``)."""

    _fields: tuple = ()

    def __new__(cls, items):
        return super().__new__(cls, items)

    def __getattr__(self, name):
        try:
            return self[type(self)._fields.index(name)]
        except ValueError:
            raise AttributeError(name) from None


class ValuesIndices(_Named):
    _fields = ("values", "indices")


class MinMax(_Named):
    _fields = ("min", "max")


# ---------------------------------------------------------------------------------------------------------------
# Ops
# ---------------------------------------------------------------------------------------------------------------


class Rounding(Op):
    """floor / ceil / round / trunc / sign: piecewise constant, so the gradient is zero (as PyTorch)."""

    @staticmethod
    def forward(ctx, a, fn, decimals):
        xp = xp_of(a)
        if fn == "sign":
            return xp.sign(a)
        if a.dtype.kind in "iub":  # integers are already whole
            return a.copy()
        if fn == "round":
            return xp.round(a, decimals).astype(a.dtype, copy=False)  # half to even, as PyTorch
        return getattr(xp, fn)(a).astype(a.dtype, copy=False)

    @staticmethod
    def backward(ctx, g):
        return g * 0


class NanToNum(Op):
    """NaN -> nan, +inf -> posinf, -inf -> neginf; the gradient passes where the input was finite."""

    @staticmethod
    def forward(ctx, a, nan, posinf, neginf):
        xp = xp_of(a)
        ctx.finite = xp.isfinite(a)
        return xp.nan_to_num(a, nan=nan, posinf=posinf, neginf=neginf)

    @staticmethod
    def backward(ctx, g):
        return g.masked_fill(~ctx.finite, 0)


class Atan2(Op):
    """atan2(a, b); d/da = b / (a² + b²), d/db = -a / (a² + b²)."""

    saves = (0, 1)

    @staticmethod
    def forward(ctx, a, b):
        return xp_of(a).arctan2(a, b)

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        r = g / (a * a + b * b)
        return r * b, -(r * a)


def _along(idx, dim):
    """The full advanced index that addresses ``a[..., idx[...], ...]`` along ``dim`` (take_along_axis's)."""
    xp = xp_of(idx)
    nd = idx.ndim
    return tuple(idx if d == dim else xp.arange(idx.shape[d]).reshape((-1,) + (1,) * (nd - d - 1)) for d in range(nd))


def _add_at(out, index, values):
    if xp_of(out) is np:
        np.add.at(out, index, values)
    else:
        from conch.kernels._cupy import scatter_add

        scatter_add(out, index, values)


def _gather(a, idx, dim):
    """a[i][idx[i][j][k]][k] along ``dim``: GetItem with the full index, so its gradient is IndexAdd's
    scatter-add (repeated indices accumulate) and higher derivatives come for free."""
    return ops.GetItem.apply(a, idx=_along(idx, dim))


def _scatter_add_into(src, idx, dim, shape):
    """zeros(shape) with ``src`` added at the positions _gather reads."""
    return ops.IndexAdd.apply(src, shape=shape, idx=_along(idx, dim))


class Scatter(Op):
    """out = a with ``src`` written at ``idx`` along ``dim``; d/da = g off the written positions, d/dsrc = g there."""

    @staticmethod
    def forward(ctx, a, src, idx, dim):
        ctx.idx, ctx.dim = idx, dim
        index = _along(idx, dim)
        out = a.copy()
        out[index] = src
        ctx.written = xp_of(a).zeros(a.shape, dtype=bool)
        ctx.written[index] = True
        return out

    @staticmethod
    def backward(ctx, g):
        n = ctx.needs_input_grad
        ga = g.masked_fill(ctx.written, 0) if n[0] else None
        return ga, (_gather(g, ctx.idx, ctx.dim) if n[1] else None)


class Prod(Op):
    """Π over ``dim`` (all dims for None). d/dx_i = Π_{j≠i} x_j, computed without dividing by a zero."""

    saves = (0,)

    @staticmethod
    def forward(ctx, a, dim, keepdim):
        ctx.dim, ctx.keepdim = dim, keepdim
        return a.prod(axis=dim, keepdims=keepdim)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        dim = ctx.dim
        if not ctx.keepdim:
            g = g.reshape(ops._keep_shape(x.shape, dim) if dim is not None else (1,) * x.ndim)
        nz = x._data != 0
        xp = xp_of(nz)
        zeros = (~nz).sum(axis=dim, keepdims=True)
        safe = x.masked_fill(~nz, 1)  # a differentiable x with its zeros replaced by ones
        p_safe = Prod.apply(safe, dim=dim, keepdim=True)
        if not zeros.any():
            return g * p_safe / safe
        # one zero in a slice: only that element gets Π(others); two or more: every gradient is zero
        others = (p_safe / safe).masked_fill(~xp.broadcast_to(zeros == 0, x.shape), 0)
        at_zero = p_safe.masked_fill(~((zeros == 1) & ~nz), 0)
        return g * (others.masked_fill(~nz, 0) + at_zero)


class Cumprod(Op):
    """Running product along ``dim``. d out_j / d x_i = Π_{k≤j, k≠i} x_k for j ≥ i."""

    saves = (0, "out")

    @staticmethod
    def forward(ctx, a, dim):
        ctx.dim = dim
        return a.cumprod(axis=dim)

    @staticmethod
    def backward(ctx, g):
        x, out = ctx.saved_tensors
        d = ctx.dim
        if bool((x._data != 0).all()):  # Σ_{j≥i} g_j out_j / x_i: a reversed cumulative sum, divided by x
            return (g * out).flip(d).cumsum(d).flip(d) / x
        # zeros: per position i, the running product with x_i replaced by 1, summed from i on (n passes)
        n = x.shape[d]
        xp = xp_of(x._data)
        pos = xp.arange(n).reshape((n,) + (1,) * (x.ndim - d - 1))
        cols = []
        for i in range(n):
            ones_at_i = Cumprod.apply(x.masked_fill(pos == i, 1), dim=d)
            cols.append((g * ones_at_i).masked_fill(pos < i, 0).sum(d, keepdim=True))
        return ops.Cat.apply(*cols, dim=d)


class Roll(Op):
    @staticmethod
    def forward(ctx, a, shifts, dims):
        ctx.shifts, ctx.dims = shifts, dims
        return xp_of(a).roll(a, shifts, axis=dims)

    @staticmethod
    def backward(ctx, g):
        neg = tuple(-s for s in ctx.shifts) if isinstance(ctx.shifts, tuple) else -ctx.shifts
        return Roll.apply(g, shifts=neg, dims=ctx.dims)


def _diag_view(a, offset, d1, d2):
    """A strided view of ``a``'s diagonal ``offset`` in the (d1, d2) planes, as the last dim (NumPy's layout)."""
    xp = xp_of(a)
    m = xp.moveaxis(a, (d1, d2), (-2, -1))
    r0, c0 = max(-offset, 0), max(offset, 0)
    n = max(0, min(m.shape[-2] - r0, m.shape[-1] - c0))
    sub = m[..., r0 : r0 + n, c0 : c0 + n]
    step = sub.strides[-2] + sub.strides[-1]
    return xp.lib.stride_tricks.as_strided(sub, shape=sub.shape[:-2] + (n,), strides=sub.strides[:-2] + (step,))


class Diagonal(Op):
    """A view of a diagonal; the gradient is g placed on that diagonal of zeros (DiagonalAdjoint)."""

    @staticmethod
    def forward(ctx, a, offset, d1, d2):
        ctx.args, ctx.shape = (offset, d1, d2), a.shape
        return _diag_view(a, offset, d1, d2)

    @staticmethod
    def backward(ctx, g):
        return DiagonalAdjoint.apply(g, shape=ctx.shape, args=ctx.args)


class DiagonalAdjoint(Op):
    @staticmethod
    def forward(ctx, g, shape, args):
        ctx.args = args
        out = xp_of(g).zeros(shape, dtype=g.dtype)
        _diag_view(out, *args)[...] = g
        return out

    @staticmethod
    def backward(ctx, g):
        offset, d1, d2 = ctx.args
        return Diagonal.apply(g, offset=offset, d1=d1, d2=d2)


def _diag_index(xp, n, offset):
    return xp.arange(n) + max(-offset, 0), xp.arange(n) + max(offset, 0)


class DiagEmbed(Op):
    """A 1-D v of length n onto diagonal ``offset`` of an (n+|offset|)² zero matrix; the gradient reads it back."""

    @staticmethod
    def forward(ctx, v, offset):
        xp = xp_of(v)
        n = v.shape[0]
        m = n + abs(offset)
        ctx.rc = _diag_index(xp, n, offset)
        out = xp.zeros((m, m), dtype=v.dtype)
        out[ctx.rc] = v
        return out

    @staticmethod
    def backward(ctx, g):
        return ops.GetItem.apply(g, idx=ctx.rc)


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------


def _index_array(index, t, what):
    """``index`` (a Tensor or array of integers) as an int64 array on t's device."""
    T = _T()
    arr = index._data if isinstance(index, T) else index
    xp = xp_of(t._data)
    if not hasattr(arr, "dtype"):
        arr = np.asarray(arr)
    if arr.dtype.kind not in "iu":
        raise RuntimeError(f"{what}(): Expected dtype int64 for index, got {arr.dtype}")
    if type(arr) is not type(t._data):
        arr = xp.asarray(to_host(arr))
    return arr.astype(np.int64, copy=False)


def _check_range(idx, n, dim, what, error=RuntimeError):
    if idx.size:
        # min and max stay arrays: no host sync on a GPU, where the check is read at the next sync
        # (kernels._deferred, as PyTorch's device assert); the wrap below keeps every index in range meanwhile
        xp = xp_of(idx)
        lo, hi = idx.min(), idx.max()
        _deferred.check(
            (lo < -n) | (hi >= n),
            lambda: xp.where(hi >= n, hi, lo),
            lambda bad: error(f"{what}(): index {bad} is out of bounds for dimension {dim} with size {n}"),
        )
    return idx % n if n else idx  # negative indices wrap, as Python's


def _argsort(a, dim, descending):
    xp = xp_of(a)
    kw = {"kind": "stable"} if xp is np else {}
    if descending:
        if a.dtype.kind in "fi":
            return xp.argsort(-a, axis=dim, **kw)
        return xp.flip(xp.argsort(a, axis=dim, **kw), axis=dim)
    return xp.argsort(a, axis=dim, **kw)


# ---------------------------------------------------------------------------------------------------------------
# the mixin
# ---------------------------------------------------------------------------------------------------------------


class TensorOpsMixin:
    """Methods Tensor inherits (this class has no state of its own)."""

    __slots__ = ()

    # ---- new tensors like this one
    def _like(self, fn, size, dtype, device, requires_grad):
        from . import creation

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
        from . import creation

        t = creation.full(tuple(size), fill_value, dtype=dtype or self.dtype, device=device or self.device)
        return t.requires_grad_(True) if requires_grad else t

    def new_tensor(self, data, dtype=None, device=None, requires_grad=False):
        from . import creation

        return creation.tensor(data, dtype=dtype or self.dtype, device=device or self.device,
                               requires_grad=requires_grad)  # fmt: skip

    def nelement(self):
        return self.numel()

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
        from ._fused import Erf
        from .tensor import _floating

        return Erf.apply(_floating(self))

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
        from .tensor import _operands

        a, b = _operands(self, other)
        if not a.is_floating_point():
            a, b = a.to(dtype=D.get_default_dtype()), b.to(dtype=D.get_default_dtype())
        return Atan2.apply(a, b)

    arctan2 = atan2

    def _logical(self, fn, other=None):
        xp = xp_of(self._data)
        if other is None:
            return _const(getattr(xp, fn)(self._data))
        o = other._data if isinstance(other, _T()) else other
        return _const(getattr(xp, fn)(self._data, o))

    def logical_and(self, other):
        return self._logical("logical_and", other)

    def logical_or(self, other):
        return self._logical("logical_or", other)

    def logical_xor(self, other):
        return self._logical("logical_xor", other)

    def logical_not(self):
        return self._logical("logical_not")

    # ---- reductions
    def prod(self, dim=None, keepdim=False, dtype=None):
        x = self if dtype is None else self.to(dtype=dtype)
        if x.dtype.kind in "biu":
            x = x.to(dtype=D.int64)
        d = None if dim is None else _dim(int(dim), x.ndim)
        return Prod.apply(x, dim=d, keepdim=bool(keepdim) and d is not None)

    def cumprod(self, dim, dtype=None):
        x = self if dtype is None else self.to(dtype=dtype)
        if x.dtype.kind in "biu":
            x = x.to(dtype=D.int64)
        return Cumprod.apply(x, dim=_dim(int(dim), x.ndim))

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
        idx = _argsort(x._data, d, False)
        sl = [slice(None)] * x.ndim
        sl[d] = slice(k - 1, k)
        idx = idx[tuple(sl)]
        vals = _gather(x, idx, d)
        if not keepdim:
            vals, idx = vals.squeeze(d), idx.squeeze(d)
        return ValuesIndices((vals, _const(idx)))

    def median(self, dim=None, keepdim=False):
        """Lower median (the ⌊(n-1)/2⌋-th smallest); with ``dim`` also its index, as PyTorch."""
        if dim is None:
            flat = self.reshape(-1)
            return flat._kth((flat.shape[0] - 1) // 2 + 1, 0, False, "median").values
        d = _dim(int(dim), self.ndim)
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
        T = _T()
        if not isinstance(src, T):
            return _const(xp_of(self._data).full(idx.shape, src, dtype=self.dtype))
        if src.ndim != idx.ndim or any(a < b for a, b in zip(src.shape, idx.shape)):
            raise RuntimeError(
                f"{what}(): src {tuple(src.shape)} must have index's ndim and be at least index's size "
                f"{tuple(idx.shape)} in every dimension"
            )
        src = src[tuple(slice(0, s) for s in idx.shape)]
        return src if src.dtype == self.dtype else src.to(dtype=self.dtype)

    def scatter(self, dim, index, src=None, value=None):
        """Out of place: self with ``src[i][j]`` written at ``[i][index[i][j]]`` (dim=1); ``value`` for a scalar."""
        if (src is None) == (value is None):
            raise TypeError("scatter(): pass exactly one of src (a tensor or number) and value")
        d, idx = self._gather_index(dim, index, "scatter")
        s = self._scatter_src(value if src is None else src, idx, "scatter")
        return Scatter.apply(self, s, idx=idx, dim=d)

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
        idx = _check_range(idx.reshape(-1), self.shape[d], d, "index_select", IndexError)
        return self[(slice(None),) * d + (idx,)]

    def masked_select(self, mask):
        m = mask._data if isinstance(mask, _T()) else xp_of(self._data).asarray(mask)
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
        if not parts:
            return _const(xp.zeros((0, 0), dtype=np.int64))
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
        from .tensor import _mark_view

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
        return x.reshape(inter).expand(*big).reshape(tuple(r * s for r, s in zip(sizes, shape)))

    def tile(self, *dims):
        dims = tuple(dims[0]) if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else tuple(dims)
        return self.repeat(*((1,) * (self.ndim - len(dims)) + dims))

    def repeat_interleave(self, repeats, dim=None, output_size=None):
        """Each element (or slice along ``dim``) repeated ``repeats`` times (an int, or one count per element);
        ``dim=None`` flattens first. Differentiable (an index_select)."""
        x, d = (self.reshape(-1), 0) if dim is None else (self, _dim(int(dim), self.ndim))
        n = x.shape[d]
        reps = repeats._data if isinstance(repeats, _T()) else repeats
        reps = np.asarray(to_host(reps), dtype=np.int64)
        if reps.ndim > 1 or (reps.ndim == 1 and reps.shape[0] not in (1, n)):
            raise RuntimeError(f"repeat_interleave: repeats must have shape ({n},) or be a number, got {reps.shape}")
        if (reps < 0).any():
            raise RuntimeError("repeat_interleave: repeats can not be negative")
        idx = np.repeat(np.arange(n), np.broadcast_to(reps.reshape(-1), (n,)))
        return x.index_select(d, _const(xp_of(self._data).asarray(idx)))

    def diff(self, n=1, dim=-1, prepend=None, append=None):
        from .tensor import cat

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


# ---------------------------------------------------------------------------------------------------------------
# functions (conch.NAME)
# ---------------------------------------------------------------------------------------------------------------


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
    return a @ b


def mm(a, b):
    if a.ndim != 2 or b.ndim != 2:
        raise RuntimeError(f"mm: expected 2-D matrices, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    return a @ b


def _scaled_sum(input, prod, beta, alpha):
    out = prod if alpha == 1 else prod * alpha
    if beta == 0:  # as PyTorch: input is ignored (its NaN/inf do not propagate)
        return out
    return out + (input if beta == 1 else input * beta)


def addmm(input, mat1, mat2, beta=1, alpha=1):
    return _scaled_sum(input, mm(mat1, mat2), beta, alpha)


def baddbmm(input, batch1, batch2, beta=1, alpha=1):
    return _scaled_sum(input, bmm(batch1, batch2), beta, alpha)


def diag(input, diagonal=0):
    """1-D v: the matrix with v on diagonal ``diagonal``; 2-D: that diagonal as a 1-D copy."""
    if input.ndim == 1:
        return DiagEmbed.apply(input, offset=int(diagonal))
    if input.ndim == 2:
        return input.diagonal(int(diagonal)).clone()
    raise RuntimeError(f"diag(): expected a 1-D or 2-D input, got shape {tuple(input.shape)}")


def allclose(a, b, rtol=1e-05, atol=1e-08, equal_nan=False):
    T = _T()
    xa = a._data if isinstance(a, T) else a
    xb = b._data if isinstance(b, T) else b
    return bool(xp_of(xa).allclose(xa, xb, rtol=rtol, atol=atol, equal_nan=equal_nan))


def isclose(a, b, rtol=1e-05, atol=1e-08, equal_nan=False):
    T = _T()
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
    from .creation import rand

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
    from .creation import rand

    probs = input if p is None else p
    pa = probs._data if isinstance(probs, _T()) else probs
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


__all__ = [
    "TensorOpsMixin", "ValuesIndices", "MinMax", "outer", "ger", "bmm", "mm", "addmm", "baddbmm", "diag",
    "allclose", "isclose", "equal", "unique", "bincount", "multinomial", "bernoulli", "broadcast_tensors",
    "meshgrid", "dist", "cdist", "set_printoptions",
]  # fmt: skip

# last: tensor.py imports TensorOpsMixin from here, and the helpers above look its names up at call time
from . import tensor as _tensor  # noqa: E402
