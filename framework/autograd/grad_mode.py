"""Whether operations record the graph: ``no_grad`` / ``enable_grad`` / ``set_grad_enabled`` / ``inference_mode``."""

from __future__ import annotations

import functools

_enabled = [True]


def is_grad_enabled() -> bool:
    return _enabled[0]


class _GradMode:
    """Context manager and decorator that sets grad mode to ``self.mode`` and restores it."""

    mode = True

    def __new__(cls, *args):
        # bare decorator use (``@conch.no_grad``) passes the function itself
        self = super().__new__(cls)
        if cls.__init__ is _GradMode.__init__ and len(args) == 1 and callable(args[0]):
            return self(args[0])
        return self

    def __init__(self, orig_func=None):
        pass

    def __enter__(self):
        self._prev = _enabled[0]
        _enabled[0] = self.mode

    def __exit__(self, *exc):
        _enabled[0] = self._prev
        return False

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with self.__class__():
                return fn(*args, **kwargs)

        return wrapper


class no_grad(_GradMode):
    """Disable graph recording: ``with conch.no_grad(): ...``, ``@conch.no_grad()`` or ``@conch.no_grad``."""

    mode = False


class inference_mode(_GradMode):
    """``with conch.inference_mode(): ...`` (or a decorator): no graph is recorded, as ``no_grad``.

    PyTorch's inference mode also skips version counting on the tensors it makes; conch's counters cost
    nothing to skip, so here it is ``no_grad`` under PyTorch's name (``inference_mode(False)`` records).
    """

    def __new__(cls, mode=True):
        self = object.__new__(cls)
        if callable(mode) and not isinstance(mode, bool):  # bare ``@conch.inference_mode``
            self.mode = False
            return self(mode)
        return self

    def __init__(self, mode: bool = True):
        self.mode = not mode

    def __call__(self, fn):
        enabled = self.mode

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            prev = _enabled[0]
            _enabled[0] = enabled
            try:
                return fn(*args, **kwargs)
            finally:
                _enabled[0] = prev

        return wrapper


class enable_grad(_GradMode):
    """Re-enable graph recording inside a ``no_grad`` region (also as ``@conch.enable_grad``)."""

    mode = True


class set_grad_enabled(_GradMode):
    """``with conch.set_grad_enabled(flag): ...``; also sets the mode immediately when called bare."""

    def __init__(self, mode: bool):
        self.mode = bool(mode)
        self._prev = _enabled[0]
        _enabled[0] = self.mode

    def __enter__(self):
        pass

    def __call__(self, fn):
        _enabled[0] = self._prev
        mode = self.mode

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            prev = _enabled[0]
            _enabled[0] = mode
            try:
                return fn(*args, **kwargs)
            finally:
                _enabled[0] = prev

        return wrapper
