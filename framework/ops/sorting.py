"""Sorting and selection: the (values, indices) result type, argsort, sort, topk, k-th value and median.

Values come through a gather (so they carry gradients back to the selected elements); indices are int64 constants.
Example: ``conch.randn(4, 6).topk(2, dim=1)`` is ``ValuesIndices(values (4, 2), indices (4, 2))``.
"""

from __future__ import annotations

import numpy as np

from .._backend import xp_of


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


def _argsort(a, dim, descending):
    """Indices that sort ``a`` along ``dim`` (stable on the CPU). NaN counts as the largest value, as in
    PyTorch's sort and topk: last ascending (NumPy's order too), first descending."""
    xp = xp_of(a)
    kw = {"kind": "stable"} if xp is np else {}
    if not descending:
        return xp.argsort(a, axis=dim, **kw)
    if a.dtype.kind == "i":
        return xp.argsort(-a, axis=dim, **kw)
    if a.dtype.kind != "f" and a.dtype.name != "bfloat16":
        return xp.flip(xp.argsort(a, axis=dim, **kw), axis=dim)
    # -a sorts NaN last; as -inf it ties with +inf instead, and a second stable pass puts the NaNs first
    nan = xp.isnan(a)
    idx = xp.argsort(xp.where(nan, -xp.inf, -a).astype(a.dtype, copy=False), axis=dim, **kw)
    if xp is not np or nan.any():  # (no host sync on a GPU: always the second pass there)
        first = xp.argsort(~xp.take_along_axis(nan, idx, axis=dim), axis=dim, **kw)  # CuPy sorts stably
        idx = xp.take_along_axis(idx, first, axis=dim)
    return idx
