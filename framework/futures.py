"""conch.futures.Future: PyTorch's ``torch.futures.Future``, the result of an asynchronous collective or DDP hook."""

from __future__ import annotations

_UNSET = object()


class Future:
    """A value that becomes available later (PyTorch's ``torch.futures.Future``).

    ``Work.get_future()`` gives one whose value, once the collective has finished, is the list of its output
    tensors; DDP communication hooks return one per bucket. ``wait()`` blocks until the value is set and returns
    it (re-raising an exception set with ``set_exception``); ``then(fn)`` returns a new future whose value is
    ``fn(this_future)``, run once this one completes; ``set_result`` completes a future made by hand.

    Example::

        fut = dist.all_reduce(t, async_op=True).get_future()
        doubled = fut.then(lambda f: f.value()[0] * 2)
        doubled.wait()          # the all-reduce's result times 2

        done = conch.futures.Future()
        done.set_result(t)      # a hook that communicates nothing returns such a future
    """

    __slots__ = ("_value", "_error", "_callbacks", "_source")

    def __init__(self, *, devices=None):
        self._value, self._error, self._callbacks = _UNSET, None, []
        self._source = None  # wait(): a callable that completes this future (an MPI/NCCL work's wait)

    @classmethod
    def _from(cls, source):
        """A future completed by calling ``source()`` (from ``wait()``, or ``done()`` when ``source.done``
        says so), whose value is what it returns."""
        f = cls()
        f._source = source
        return f

    def done(self):
        """Whether the value (or an exception) is set; polls the underlying collective without blocking."""
        if not self._finished() and self._source is not None:
            ready = getattr(self._source, "is_completed", None)
            if ready is not None and ready():
                self._complete_from_source()
        return self._finished()

    def _complete_from_source(self):
        source, self._source = self._source, None
        try:
            value = source()
        except Exception as e:  # the collective's failure becomes this future's (PyTorch: set_exception)
            if not self._finished():
                self.set_exception(e)
            return
        if not self._finished():  # a then() child is completed by its parent's callback already
            self.set_result(value)

    def _finished(self):
        return self._value is not _UNSET or self._error is not None

    def wait(self):
        """Block until the value is set and return it (or raise the exception set on this future)."""
        if not self._finished():
            if self._source is None:
                raise RuntimeError("Future.wait(): the future has no result yet and nothing will set one here")
            self._complete_from_source()
        if self._error is not None:
            raise self._error
        return self._value

    def value(self):
        """The value of a completed future (raise its exception, if one was set); use after ``wait()`` or in a
        ``then`` callback."""
        if not self.done():
            raise RuntimeError("Future.value(): the future is not completed yet (call wait() first)")
        return self.wait()

    def set_result(self, result):
        """Complete the future with ``result`` and run the callbacks added so far, in order."""
        if self._finished():
            raise RuntimeError("Future can only be marked completed once (set_result/set_exception was called)")
        self._value, self._source = result, None
        self._run_callbacks()

    def set_exception(self, result):
        """Complete the future with an exception: ``wait()`` and ``value()`` raise it."""
        if self._finished():
            raise RuntimeError("Future can only be marked completed once (set_result/set_exception was called)")
        if not isinstance(result, BaseException):
            raise TypeError(f"set_exception expects an exception, got {type(result).__name__}")
        self._error, self._source = result, None
        self._run_callbacks()

    def _run_callbacks(self):
        callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            cb(self)

    def add_done_callback(self, callback):
        """Call ``callback(self)`` when the future completes (at once if it has)."""
        if self.done():
            callback(self)
        else:
            self._callbacks.append(callback)

    def then(self, callback):
        """A new future whose value is ``callback(self)``, computed when this one completes; waiting on it
        waits on this one. An exception in ``callback`` (or in this future) becomes the new future's."""
        child = Future()

        def run(parent):
            try:
                child.set_result(callback(parent))
            except Exception as e:
                child.set_exception(e)

        if self.done():
            run(self)
        else:
            self._callbacks.append(run)
            child._source = _Chain(self, child)
        return child


class _Chain:
    """``then``'s way to wait: waiting on the child waits on the parent, whose callback completes the child."""

    __slots__ = ("parent", "child")

    def __init__(self, parent, child):
        self.parent, self.child = parent, child

    def is_completed(self):
        return self.parent.done()

    def __call__(self):
        try:
            self.parent.wait()
        except Exception:
            pass  # the parent's callback has passed its exception on to the child already
        return self.child.wait()
