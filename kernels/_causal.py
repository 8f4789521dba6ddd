"""Causal attention masks, built once per (rows, cols, device) and cached read-only.

``causal_keep(L, S, like)[i, j]`` is True where query i may attend to key j (j <= i, top-left aligned as
PyTorch's ``is_causal``); ``causal_drop`` is its complement. Every causal call of a training step asked for the
same (L, S) mask again (a ``tril`` of ones, L·S bytes, per layer and per step)::

    s[..., causal_drop(L, S, s)] = -inf        # or np.copyto(s, -np.inf, where=causal_drop(L, S, s))
"""

from __future__ import annotations

from collections import OrderedDict

from ._launch import xp_of

_CACHE: OrderedDict = OrderedDict()
_MAX_ENTRIES = 16  # a few sequence lengths x {keep, drop} x devices; the oldest goes first


def _device_key(like):
    dev = getattr(like, "device", None)
    return getattr(dev, "id", None) if dev is not None and not isinstance(dev, str) else None


def _mask(kind, rows, cols, like):
    xp = xp_of(like)
    key = (kind, int(rows), int(cols), xp.__name__, _device_key(like))
    m = _CACHE.get(key)
    if m is not None:
        _CACHE.move_to_end(key)
        return m
    m = xp.tril(xp.ones((rows, cols), dtype=bool))
    if kind == "drop":
        m = ~m
    if hasattr(m, "setflags"):
        m.setflags(write=False)  # shared by every caller: nobody may write it
    _CACHE[key] = m
    while len(_CACHE) > _MAX_ENTRIES:
        _CACHE.popitem(last=False)
    return m


def causal_keep(rows: int, cols: int, like):
    """(rows, cols) bool array on ``like``'s device, True where j <= i (may attend); cached, read-only."""
    return _mask("keep", rows, cols, like)


def causal_drop(rows: int, cols: int, like):
    """(rows, cols) bool array on ``like``'s device, True where j > i (masked out); cached, read-only."""
    return _mask("drop", rows, cols, like)
