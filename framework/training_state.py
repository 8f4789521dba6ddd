"""Whole-training checkpoints: model, optimizer, scheduler, loss scaler, RNG, step and data position.

``save_checkpoint`` writes one safetensors file with :func:`conch.save` (atomic: a crash mid-save leaves the
previous checkpoint intact); ``load_checkpoint`` restores every object it is given, in place, and the global
RNG state, so that on the CPU a resumed run is bit-for-bit the run that was never interrupted.

File content (nested dict)::

    {"format": "conch.training_state", "version": 1, "step": int,
     "model": {...}, "optimizer": {...}, "scheduler": {...} | None, "scaler": {...} | None,
     "loader": {...} | None, "rng": conch.get_rng_state(), "extra": user data | None}

Example::

    save_checkpoint("ckpt.safetensors", model=model, optimizer=opt, scheduler=sched, step=step, loader=loader)
    ...
    ckpt = load_checkpoint("ckpt.safetensors", model=model, optimizer=opt, scheduler=sched, loader=loader)
    step = ckpt["step"]
"""

from __future__ import annotations

import os

from ._backend import to_device
from .creation import get_rng_state, set_rng_state
from .serialization import load, save
from .tensor import Tensor

__all__ = ["save_checkpoint", "load_checkpoint"]

_FORMAT = "conch.training_state"
_VERSION = 1


def _model_state(model):
    if hasattr(model, "state_dict"):
        return model.state_dict()
    if isinstance(model, dict):  # a plain {name: tensor} of raw parameters
        return {k: v.detach() if isinstance(v, Tensor) else v for k, v in model.items()}
    if isinstance(model, (list, tuple)):
        return {str(i): t.detach() for i, t in enumerate(model)}
    raise TypeError(f"model must be a Module, a dict of tensors or a list of tensors, got {type(model).__name__}")


def _load_model_state(model, sd):
    if hasattr(model, "load_state_dict"):
        model.load_state_dict(sd)
        return
    targets = model if isinstance(model, dict) else {str(i): t for i, t in enumerate(model)}
    missing = sorted(set(targets) - set(sd))
    unexpected = sorted(set(sd) - set(targets))
    if missing or unexpected:
        raise RuntimeError(f"checkpoint model state does not match: missing {missing}, unexpected {unexpected}")
    for k, t in targets.items():
        src = sd[k]
        if tuple(src.shape) != tuple(t.shape):
            raise RuntimeError(f"checkpoint tensor {k!r} has shape {tuple(src.shape)}, the model's has {t.shape}")
        t._data[...] = to_device(src._data, t.device).astype(t.dtype, copy=False)
        t._version[0] += 1


def save_checkpoint(path, model=None, optimizer=None, scheduler=None, scaler=None, step=0, loader=None, extra=None):
    """Write a training checkpoint to ``path`` (safetensors; atomic).

    Args:
        model: a Module, or a ``{name: tensor}`` dict / list of raw parameter tensors.
        optimizer, scheduler, scaler, loader: objects with ``state_dict()`` (any may be ``None``).
        step: the number of optimizer steps taken so far.
        extra: any JSON-like data (numbers, strings, lists, dicts, tensors) stored alongside.
    """
    ckpt = {
        "format": _FORMAT,
        "version": _VERSION,
        "step": int(step),
        "model": None if model is None else _model_state(model),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "scaler": None if scaler is None else scaler.state_dict(),
        "loader": None if loader is None else loader.state_dict(),
        "rng": get_rng_state(),
        "extra": extra,
    }
    save(ckpt, path)


def load_checkpoint(path, model=None, optimizer=None, scheduler=None, scaler=None, loader=None, *,
                    restore_rng=True, device=None, verify=True):  # fmt: skip
    """Restore the given objects (in place) and the RNG state from a :func:`save_checkpoint` file.

    Objects passed as ``None`` are skipped; a component the file lacks while an object for it was given
    raises ``KeyError``. Returns the whole checkpoint dict (``ckpt["step"]``, ``ckpt["extra"]``, ...).
    ``device`` places loaded tensors (default: the host; ``load_state_dict`` moves them next to the
    parameters). ``verify=False`` skips the checksum checks, as in :func:`conch.load`.
    """
    ckpt = load(path, device=device, verify=verify)
    if not isinstance(ckpt, dict) or ckpt.get("format") != _FORMAT:
        raise ValueError(f"{os.fspath(path)}: not a conch training checkpoint (no format={_FORMAT!r} entry)")
    if ckpt.get("version", 0) > _VERSION:
        raise ValueError(f"{os.fspath(path)}: checkpoint version {ckpt['version']} is newer than this conch reads")

    def need(key):
        if ckpt.get(key) is None:
            raise KeyError(f"{os.fspath(path)}: the checkpoint has no {key!r} state to restore")
        return ckpt[key]

    if model is not None:
        _load_model_state(model, need("model"))
    if optimizer is not None:
        optimizer.load_state_dict(need("optimizer"))
    if scheduler is not None:
        scheduler.load_state_dict(need("scheduler"))
    if scaler is not None:
        scaler.load_state_dict(need("scaler"))
    if loader is not None:
        loader.load_state_dict(need("loader"))
    if restore_rng and ckpt.get("rng") is not None:
        set_rng_state(_plain(ckpt["rng"]))
    return ckpt


def _plain(x):
    """RNG state as set_rng_state expects it (tuples from the file are fine; tensors become ints/lists)."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, Tensor):
        return x.tolist()  # via the host: load(device="cuda") puts the RNG arrays on the GPU
    return x
