"""A simulated CUDA device: fake ``cupy``/``cupyx`` modules over NumPy, with CuPy's strictness about the host.

Activated by ``CONCH_SIMULATE_GPU=1`` (``conch.kernels._cupy.get_cupy`` calls :func:`install` first), so the test
suite runs with the CUDA device selected on a CPU-only machine. Arrays are ``cupy.ndarray`` objects wrapping NumPy
arrays; implicit conversion to NumPy and NumPy operands raise ``TypeError`` as on a GPU, explicit conversions
(``.get()``, ``.item()``, ``float()``, ``bool()``...) work and are counted as host syncs, and Triton kernels
launched on them run through the interpreter (``launch.py``). Never imported by normal use.

API: :func:`install`, :func:`uninstall`, :func:`sync_count`, :func:`count_syncs`, :func:`h2d_count`,
:func:`props_count`, :func:`host_view`, :func:`is_fake`.
"""

from __future__ import annotations

import contextlib
import sys

from ._state import COUNTS, RECORDERS

#: True while the fake modules are registered in ``sys.modules`` (``_launch.kernel_for`` reads it)
INSTALLED = False
_SAVED: dict = {}


def install() -> None:
    """Register the fake ``cupy``, ``cupy.cuda``, ``cupy.random``, ``cupyx``, ``cupyx.scipy.special``... modules."""
    global INSTALLED
    if INSTALLED:
        return
    from ._modules import build

    for name, mod in build().items():
        _SAVED[name] = sys.modules.get(name)
        sys.modules[name] = mod
    INSTALLED = True


def uninstall() -> None:
    """Remove the fake modules (restoring whatever was there) and forget conch's cached ``cupy`` module."""
    global INSTALLED
    if not INSTALLED:
        return
    from . import _cuda

    for name, prev in _SAVED.items():
        if prev is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = prev
    _SAVED.clear()
    _cuda.reset()
    from .. import _cupy

    mod = _cupy._state.get("module")
    if mod is not None and getattr(mod, "__simulated__", False):
        _cupy._state.clear()
    INSTALLED = False


def is_fake(a) -> bool:
    """True for an array of the simulated device."""
    from ._core import ndarray

    return isinstance(a, ndarray)


def host_view(a):
    """The NumPy array backing a simulated device array (shares its memory; no sync is counted)."""
    from ._core import ndarray

    if not isinstance(a, ndarray):
        raise TypeError(f"host_view expects a simulated cupy.ndarray, got {type(a).__name__}")
    return a._a


def sync_count() -> int:
    """Host syncs since the process started (every way data or completion reached the host)."""
    return COUNTS["sync"]


def h2d_count() -> int:
    """Host-to-device copies since the process started."""
    return COUNTS["h2d"]


def props_count() -> int:
    """Device-property queries (``getDeviceProperties``, ``deviceGetAttribute``) since the process started."""
    return COUNTS["props"]


class SyncRecord:
    """What happened inside one :func:`count_syncs` block: ``n`` syncs at ``sites``, ``h2d`` copies, ``props``."""

    def __init__(self):
        self.sites: list[str] = []
        self._start = dict(COUNTS)
        self._end = None

    def _get(self, kind):
        return (self._end or COUNTS)[kind] - self._start[kind]

    n = property(lambda self: self._get("sync"))
    h2d = property(lambda self: self._get("h2d"))
    props = property(lambda self: self._get("props"))

    def __repr__(self):
        return f"SyncRecord(n={self.n}, h2d={self.h2d}, props={self.props}, sites={self.sites})"


@contextlib.contextmanager
def count_syncs():
    """``with count_syncs() as s: ...``, then ``s.n`` host syncs, ``s.sites`` where ("file:line in fn (kind)")."""
    rec = SyncRecord()
    RECORDERS.append(rec)
    try:
        yield rec
    finally:
        RECORDERS.remove(rec)
        rec._end = dict(COUNTS)
