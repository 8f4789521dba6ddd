"""Dimension arguments: ``norm_dim``/``norm_dims`` turn a user's ``dim`` into non-negative ints, as PyTorch checks it.

A dim is an ``int``, a NumPy integer or anything with ``__index__`` (a 0-d integer Tensor); a bool or a float is a
TypeError. For a tensor of ``ndim`` dims the valid range is ``[-ndim, ndim - 1]``, and ``[-1, 0]`` for a 0-d
tensor (PyTorch treats a scalar as having one dim for this check); outside it an IndexError names the range::

    norm_dim(-1, 3)          # 2
    norm_dims((0, -1), 3)    # (0, 2)
    norm_dim(1, 0)           # IndexError: Dimension out of range (expected to be in range of [-1, 0], but got 1)
    norm_dims((0, 0), 2)     # RuntimeError: dim 0 appears multiple times in the list of dims
"""

from __future__ import annotations

import operator

__all__ = ["norm_dim", "norm_dims"]


def _as_int(dim, name):
    """``dim`` as a Python int through ``__index__``; bools and non-integers are PyTorch's TypeError."""
    if isinstance(dim, bool) or type(dim).__name__ == "bool_":  # np.bool_ has __index__ too, but is no dim
        raise TypeError(f"{name}(): argument 'dim' must be int or tuple of ints, but got {type(dim).__name__}")
    try:
        return operator.index(dim)
    except TypeError:
        raise TypeError(
            f"{name}(): argument 'dim' must be int or tuple of ints, but got {type(dim).__name__}"
        ) from None


def norm_dim(dim, ndim: int, name: str = "dim") -> int:
    """One dim in ``[0, max(ndim, 1))``: negative dims wrap; out of range is PyTorch's IndexError."""
    if type(dim) is not int:  # the common case (a Python int) skips the __index__ call
        dim = _as_int(dim, name)
    n = ndim if ndim > 0 else 1
    if dim < -n or dim >= n:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-n}, {n - 1}], but got {dim})")
    return dim + n if dim < 0 else dim


def norm_dims(dim, ndim: int, name: str = "dim", empty_is_all: bool = True):
    """A reduction's ``dim``: None -> None (every dim), one dim -> an int, a list/tuple -> a sorted tuple of
    distinct dims. An empty list or tuple means every dim (None) for sum/mean/var/amax... as in PyTorch, and no
    dim at all (``()``) with ``empty_is_all=False`` (all/any, which PyTorch leaves unreduced then). A 0-d
    tensor's dims (0 or -1) also give None, since its one element is the whole reduction. A repeated dim is
    PyTorch's RuntimeError."""
    if dim is None:
        return None
    if isinstance(dim, (tuple, list)):
        if not dim:
            return None if empty_is_all else ()
        dims = [norm_dim(d, ndim, name) for d in dim]
        if len(dims) > 1:
            seen = set()
            for d in dims:
                if d in seen:
                    raise RuntimeError(f"dim {d} appears multiple times in the list of dims")
                seen.add(d)
            dims.sort()
        return tuple(dims) if ndim else None
    d = norm_dim(dim, ndim, name)
    return d if ndim else None
