"""The switch for conch's compiled CPU kernels (Numba): whether they run, and the lazy import of their modules.

Some CPU passes cost many NumPy passes per element (an exact GELU through a float32 rational erf takes ~25;
a row softmax or layer norm is 5-8 passes plus reductions along short rows). Numba compiles such a pass into
one loop that reads each input once, so it runs at memory speed. The kernels live in ``conch.kernels._numba``
(one module per family), which imports Numba; this module never does, so ``import conch`` stays light and a
machine without Numba (or with ``CONCH_NUMBA=0``) keeps the NumPy reference paths, which compute the same
functions to the same documented tolerances::

    from conch.kernels import _jit

    if _jit.enabled() and isinstance(z, np.ndarray):
        y = _jit.family("act").gelu(z)        # compiled on first use, cached on disk by Numba
    else:
        y = act_ref_numpy(z)

Only NumPy arrays take compiled kernels (CuPy and the simulated GPU keep their own paths). Every kernel is
compiled with ``nogil=True``, so :mod:`conch.kernels._threads` runs chunks of one call on several threads; an
elementwise kernel gives the same bits whatever the chunking.
"""

from __future__ import annotations

import importlib
import os

_state: dict = {"on": None}
_families: dict = {}  # name -> module: importlib's lookup costs microseconds on every call of a hot path
_OFF = ("0", "false", "off", "no")


def _probe() -> bool:
    if os.environ.get("CONCH_NUMBA", "1").strip().lower() in _OFF:
        return False
    if os.environ.get("NUMBA_DISABLE_JIT", "0").strip() not in ("", "0"):  # the kernels would run as Python loops
        return False
    try:
        import numba  # noqa: F401  (a Numba too old or too new for this NumPy raises ImportError here)
    except Exception:  # pragma: no cover - depends on the environment
        return False
    return True


def enabled() -> bool:
    """True when the compiled CPU kernels run: Numba imports and ``CONCH_NUMBA`` is not ``0`` (read once)."""
    on = _state["on"]
    if on is None:
        on = _state["on"] = _probe()
    return on


def set_enabled(flag: bool | None) -> bool | None:
    """Turn the compiled kernels on or off in this process (``None``: decide again from Numba and the
    environment). Returns the previous setting, for tests that run both paths::

        prev = _jit.set_enabled(False)
        try: ...  # the NumPy reference paths
        finally: _jit.set_enabled(prev)
    """
    prev = _state["on"]
    if flag and not _probe():
        raise RuntimeError("conch: compiled CPU kernels need Numba (pip install numba) and CONCH_NUMBA unset or 1")
    _state["on"] = None if flag is None else bool(flag)
    return prev


def family(name: str):
    """The compiled kernels of one family, ``conch.kernels._numba.<name>`` (imports Numba on first use)."""
    mod = _families.get(name)
    if mod is None:
        mod = _families[name] = importlib.import_module(f"{__package__}._numba.{name}")
    return mod
