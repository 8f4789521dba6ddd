"""Deferred range checks: on a GPU an index/target check raises at the next host sync, as CUDA device asserts do.

Checking that every target of a cross-entropy or every index of an embedding is in range needs the
answer on the host, and reading a device value waits for the whole stream: one host synchronisation per
check, in every forward. PyTorch avoids it with device-side asserts, which surface at the next point
where the host waits for the device anyway. This module is conch's version of that:

* :func:`check` takes a 0-d ``flag`` (true = bad) and the offending ``value``, computed with array ops.
  For NumPy arrays it raises at once (a CPU check costs no sync). For CuPy arrays it only records the
  two device scalars: nothing is read, nothing waits.
* :func:`fetch` is how the framework's natural sync points (``Tensor.item()``, copies to the host,
  ``GradScaler``'s found-inf read) read device arrays: the arrays and every pending check of their
  device travel in ONE device-to-host copy, and the first failed check raises its error there.
* :func:`raise_pending` reads the pending checks alone (``conch.cuda.synchronize()``).

Example::

    lo, hi = idx.min(), idx.max()
    check((lo < 0) | (hi >= n), lambda: xp.where(lo < 0, lo, hi), lambda v: IndexError(f"index {v} ..."))
    ...
    host_loss, = fetch(loss)    # raises that IndexError here if an index was bad: still one sync
"""

from __future__ import annotations

import numpy as np

#: Checks not yet read: (device id, flag, value, make_error). Flag and value are 0-d device arrays.
_PENDING: list = []
#: A loop that never syncs must not grow the list without bound: past this many checks they are read
#: (one sync per MAX_PENDING unchecked ops, far below one per op).
MAX_PENDING = 1024


def _device_id(a):
    dev = getattr(a, "device", None)
    return getattr(dev, "id", dev)


def check(flag, value, make_error) -> None:
    """Raise ``make_error(int(value))`` when ``flag`` is true: now on the CPU, at the next sync on a GPU.

    ``flag``: 0-d bool array or NumPy scalar. ``value``: the integer to report (0-d array or scalar), or a
    callable returning it; on the CPU the callable runs only when the check fails, on a GPU it runs at once
    (device ops, no sync). ``make_error(value) -> Exception``.
    """
    if isinstance(flag, (np.ndarray, np.generic, bool)):
        if flag:
            raise make_error(int(value() if callable(value) else value))
        return
    v = value() if callable(value) else value
    _PENDING.append((_device_id(flag), flag, v, make_error))
    if len(_PENDING) >= MAX_PENDING:
        raise_pending()


def pending() -> int:
    """How many GPU checks wait for the next sync."""
    return len(_PENDING)


def fetch(*arrays):
    """Host (NumPy) copies of device ``arrays`` (all on one GPU), read in ONE transfer together with the
    pending checks of that GPU; raises the first failed check's error (after copying). No pending check:
    one ``.get()`` per array, as before."""
    if not arrays:
        raise ValueError("fetch needs at least one array")
    dev = _device_id(arrays[0])
    mine = [p for p in _PENDING if p[0] == dev]
    if not mine:
        return [a.get() for a in arrays]
    _PENDING[:] = [p for p in _PENDING if p[0] != dev]
    return _read(arrays, mine, dev)


def raise_pending(device=None) -> None:
    """Read every pending check (of ``device``'s id, or of all GPUs) and raise the first failure."""
    devs = {p[0] for p in _PENDING} if device is None else {device}
    for dev in devs:
        mine = [p for p in _PENDING if p[0] == dev]
        if mine:
            _PENDING[:] = [p for p in _PENDING if p[0] != dev]
            _read((), mine, dev)


def clear() -> None:
    """Drop every pending check unread (tests; after a device error nothing else should be read)."""
    _PENDING.clear()


def _read(arrays, checks, dev):
    """One device-to-host copy of ``arrays`` and of the checks' (flag, value) pairs, packed as bytes."""
    from ._launch import xp_of

    xp = xp_of(checks[0][1])
    with xp.cuda.Device(dev):
        pairs = xp.stack([xp.stack([c[1].astype(np.int64), xp.asarray(c[2]).astype(np.int64)]) for c in checks])
        parts = [xp.ascontiguousarray(a).reshape(-1).view(np.uint8) for a in arrays]
        parts.append(pairs.reshape(-1).view(np.uint8))  # byte views: any dtype packs exactly
        host = (xp.concatenate(parts) if len(parts) > 1 else parts[0]).get()  # the one sync
    out, start = [], 0
    for a in arrays:
        n = a.size * a.dtype.itemsize
        out.append(host[start : start + n].view(a.dtype).reshape(a.shape))
        start += n
    flags = host[start:].view(np.int64).reshape(-1, 2)
    for (_, _, _, make_error), (bad, value) in zip(checks, flags):
        if bad:
            raise make_error(int(value))
    return out
