"""``autocast``: run the matmul family in float16/bfloat16 and precision-sensitive ops in float32, per policy.py.

The state is three module globals in one list, ``_state = [enabled, dtype, device_type]``, and a stack of
saved states for nesting. An op asks :func:`cast_for` for its inputs; when autocast is off that is one list
read and a return, so ops can call it unconditionally. Casting goes through ``Tensor.to(dtype=...)``, which
is differentiable: gradients flow back through the cast into the float32 parameters (master weights) and
arrive there in float32.

Example::

    with conch.amp.autocast(dtype=conch.bfloat16):
        y = x @ w                         # bfloat16 (policy LOW)
        p = y.softmax(-1)                 # float32 (policy FP32)
        with conch.amp.autocast(enabled=False):
            z = x @ w                     # float32: autocast is off in here

    @conch.amp.autocast(dtype=conch.float16)
    def forward(x): ...
"""

from __future__ import annotations

import functools

import numpy as np

from .. import _dtype as D
from .policy import FP32, LOW, policy_of

# [enabled, dtype, device_type]: read on every op, so a flat list indexed by constants, not an object
_state = [False, D.float16, None]
_stack: list = []

# float64 is never cast, as in PyTorch. D.HALF holds bfloat16 once ml_dtypes is loaded (no array is bfloat16
# before), so these membership tests need no import of it
_CASTABLE = D.with_bfloat16({D.float16, D.float32})
_LOW_DTYPES = D.HALF


def _default_dtype(device_type):
    # PyTorch's defaults: float16 on CUDA, bfloat16 on the CPU; device_type=None means "every device"
    return D.bfloat16 if device_type == "cpu" else D.float16


def _norm_device_type(device_type):
    if device_type is None:
        return None
    if not isinstance(device_type, str):
        raise TypeError(f"autocast: device_type must be 'cpu', 'cuda' or None, got {type(device_type).__name__}")
    dt = device_type.split(":")[0].lower()
    if dt not in ("cpu", "cuda"):
        raise ValueError(f"autocast: device_type must be 'cpu', 'cuda' or None, got {device_type!r}")
    return dt


class autocast:  # noqa: N801  (PyTorch's name)
    """Context manager and decorator: ops inside run in mixed precision per :data:`conch.amp.policy.POLICY`.

    Args:
        device_type: ``"cuda"``/``"cpu"`` to autocast only tensors on that device (PyTorch's first argument);
            ``None`` (default) autocasts tensors on every device.
        dtype: ``conch.float16`` or ``conch.bfloat16``; default float16 (bfloat16 when
            ``device_type="cpu"``), as PyTorch.
        enabled: ``False`` turns autocast off inside (to opt a region out of an enclosing one).
        cache_enabled: accepted for PyTorch compatibility (conch casts on every use).

    ``autocast("cuda", dtype=conch.bfloat16)`` is PyTorch's spelling, ``autocast(dtype=conch.bfloat16)`` conch's;
    a dtype as the first argument (``autocast(conch.bfloat16)``, conch's earlier signature) still works.

    Nesting restores the enclosing state on exit. The same object may be entered again (it keeps no
    per-entry state), so ``@autocast(...)`` works on recursive functions.
    """

    def __init__(self, device_type=None, dtype=None, enabled=True, cache_enabled=None):
        # cache_enabled is accepted for PyTorch compatibility; conch casts on every use (no stale-cache risk
        # when an optimizer updates weights inside the region)
        if device_type is not None and not isinstance(device_type, str):
            # conch's earlier signature was autocast(dtype=None, enabled=True, device_type=None): a dtype first,
            # maybe followed by enabled
            if isinstance(dtype, (bool, np.bool_)):
                dtype, enabled = None, dtype
            if dtype is not None:
                raise TypeError(f"autocast: device_type must be 'cpu', 'cuda' or None, got {device_type!r} "
                                f"(with dtype={dtype!r})")  # fmt: skip
            device_type, dtype = None, device_type
        if not isinstance(enabled, (bool, np.bool_)):
            raise TypeError(f"autocast: enabled must be a bool, got {type(enabled).__name__}")
        self.device_type = _norm_device_type(device_type)
        d = _default_dtype(self.device_type) if dtype is None else D.as_dtype(dtype)
        if d not in _LOW_DTYPES:
            raise ValueError(
                f"autocast: dtype must be conch.float16 or conch.bfloat16, got {d}. (float32 is what runs "
                "without autocast: use enabled=False to opt a region out.)"
            )
        self.fast_dtype = d
        self.enabled = bool(enabled)

    def __enter__(self):
        _stack.append(tuple(_state))
        _state[0] = self.enabled
        if self.enabled:
            _state[1], _state[2] = self.fast_dtype, self.device_type
        return self

    def __exit__(self, *exc):
        _state[:] = _stack.pop()
        return False

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with self:
                return fn(*args, **kwargs)

        return wrapper

    def __repr__(self):
        dev = "" if self.device_type is None else f", device_type={self.device_type!r}"
        return f"autocast(dtype=conch.{self.fast_dtype.name}, enabled={self.enabled}{dev})"


def is_autocast_enabled(device_type=None) -> bool:
    """Whether autocast is on (for tensors on ``device_type`` when it is given)."""
    if not _state[0]:
        return False
    return device_type is None or _state[2] is None or _state[2] == _norm_device_type(device_type)


def get_autocast_dtype(device_type=None):
    """The low-precision dtype LOW ops use (the innermost enabled autocast's, float16 by default)."""
    return _state[1]


def get_autocast_state() -> tuple:
    """An opaque snapshot ``(enabled, dtype, device_type)`` of the autocast state, for :func:`set_autocast_state`."""
    return tuple(_state)


def set_autocast_state(state) -> None:
    """Restore a snapshot from :func:`get_autocast_state` (checkpoint's recompute uses it)."""
    if not isinstance(state, tuple) or len(state) != 3:
        raise TypeError(f"set_autocast_state expects the tuple get_autocast_state() returned, got {state!r}")
    _state[:] = state


def _wider(a, b):
    # both in _CASTABLE: float32 wins; float16 with bfloat16 -> float32 (neither holds the other)
    return a if a == b else D.float32


def _on_device(arr, device_type):
    return device_type is None or (device_type == "cpu") == isinstance(arr, np.ndarray)


def cast_for(op_name: str, *tensors):
    """``tensors`` cast for op ``op_name`` under the current autocast state; always a tuple of the same length.

    LOW casts floating inputs to the autocast dtype, FP32 to float32, PROMOTE to the widest floating
    input. ``None``, Python numbers, integer/bool tensors and float64 tensors pass through unchanged,
    and with autocast off the arguments come back as they are (no work beyond one check).

    Example::

        x, w, b = cast_for("linear", x, w, b)      # in an op's implementation
        (p,) = cast_for("softmax", logits)
    """
    if not _state[0]:
        return tensors
    pol = policy_of(op_name)
    dev = _state[2]
    if pol == LOW:
        target = _state[1]
    elif pol == FP32:
        target = D.float32
    else:
        target = None
        for t in tensors:
            a = getattr(t, "_data", None)
            if a is not None and a.dtype in _CASTABLE and _on_device(a, dev):
                target = a.dtype if target is None else _wider(target, a.dtype)
        if target is None:
            return tensors
    out = []
    for t in tensors:
        a = getattr(t, "_data", None)
        if a is not None and a.dtype != target and a.dtype in _CASTABLE and _on_device(a, dev):
            t = t.to(dtype=target)
        out.append(t)
    return tuple(out)
