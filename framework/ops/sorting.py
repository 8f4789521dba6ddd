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
    xp = xp_of(a)
    kw = {"kind": "stable"} if xp is np else {}
    if descending:
        if a.dtype.kind in "fi":
            return xp.argsort(-a, axis=dim, **kw)
        return xp.flip(xp.argsort(a, axis=dim, **kw), axis=dim)
    return xp.argsort(a, axis=dim, **kw)
