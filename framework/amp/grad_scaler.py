"""``GradScaler``: dynamic loss scaling for float16 training, with PyTorch's semantics and state machine.

float16 has a narrow range (smallest normal 6.1e-5), so small gradients of a float16 forward underflow
to zero. The scaler multiplies the loss by ``S`` before backward (every gradient is then S times
larger), divides the gradients by ``S`` before the optimizer step, and adapts ``S``:

    step t has an inf/NaN gradient  ->  skip optimizer.step(), S <- S * backoff_factor, clean run <- 0
    otherwise                       ->  optimizer.step();      clean run += 1, and when it reaches
                                        growth_interval: S <- S * growth_factor, clean run <- 0

so after ``c`` growth events and ``k`` skipped steps ``S = init_scale * growth_factor^c * backoff_factor^k``
(all in float32, as PyTorch). Per optimizer, between two ``update()`` calls::

    READY --unscale_()--> UNSCALED --step()--> STEPPED --update()--> READY
    READY --step()-----------------------------^   (step() unscales first when needed)

Unscaling and the inf/NaN check are one pass over all gradients (:func:`_unscale_and_check`) that keeps
the found-inf flag on the device; ``step()`` reads it once: one host synchronisation per step.

Example::

    scaler = conch.amp.GradScaler()
    for x, y in loader:
        opt.zero_grad()
        with conch.amp.autocast(dtype=conch.float16):
            loss = loss_fn(model(x), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)                               # optional: clip true gradients
        conch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if scaler.step(opt):                               # False when the step was skipped
            sched.step()
        scaler.update()
"""

from __future__ import annotations

import numbers

import numpy as np

from .. import _dtype as D
from .._backend import asarray_on, xp_of
from ..autograd.function import GraphTensor
from ..kernels import _deferred

READY, UNSCALED, STEPPED = "READY", "UNSCALED", "STEPPED"


def _unscale_and_check(grads: list, inv_scale: float):
    """Multiply every array in ``grads`` by ``inv_scale`` in place; return a 0-d float32 array, 1.0 if any
    element of any gradient is inf or NaN (after unscaling) and 0.0 otherwise.

    All arrays are on one device (one namespace, NumPy or CuPy). The flag stays on that device: nothing
    here synchronises with the host. On CuPy each gradient takes one elementwise kernel (multiply, test,
    set the shared flag); a Triton multi-tensor kernel can replace the loop without changing this
    signature. Example::

        found = _unscale_and_check([g1, g2], 1 / 65536)    # g1, g2 now divided by 65536
        if float(found): ...                               # the one sync, in GradScaler.step
    """
    if not grads:
        raise ValueError("_unscale_and_check needs at least one gradient array")
    xp = xp_of(grads[0])
    if xp is np:
        if inv_scale != 1.0:
            for g in grads:
                g *= inv_scale  # a Python float: the gradient keeps its dtype
        # host memory: no device to keep the flag on, so stop at the first non-finite gradient
        ok = all(np.isfinite(g).all() for g in grads)
        return np.asarray(0.0 if ok else 1.0, dtype=np.float32)
    with grads[0].device:  # the flag and the kernels on the gradients' GPU, whichever one is current
        found = _cupy_unscale_and_check(xp, grads, inv_scale)
        if found is not None:
            return found
        if inv_scale != 1.0:
            for g in grads:
                g *= inv_scale
        oks = [xp.isfinite(g).all() for g in grads]
        ok = oks[0] if len(oks) == 1 else xp.stack(oks).all()
        return xp.asarray(xp.logical_not(ok), dtype=np.float32)


_cupy_kernel = [None]  # the compiled kernel, or False after it failed once (then the generic path serves)


def _cupy_unscale_and_check(cp, grads, inv_scale):
    """One CuPy elementwise kernel per gradient: g *= inv; found = 1 where g is not finite (float32/64 only)."""
    if _cupy_kernel[0] is False or any(g.dtype not in (np.float32, np.float64) for g in grads):
        return None
    found = cp.zeros((1,), dtype=np.float32)
    if _cupy_kernel[0] is None:
        try:  # compiles on the first launch; a failure there leaves the gradient untouched
            k = cp.ElementwiseKernel(
                "float64 inv", "T g, raw float32 found",
                "T v = g * (T)inv; g = v; if (!isfinite(v)) found[0] = 1.0f;",
                "conch_unscale_and_check",
            )  # fmt: skip
            k(float(inv_scale), grads[0], found)
        except Exception:  # noqa: BLE001  (a CuPy without NVRTC: the generic path serves)
            _cupy_kernel[0] = False
            return None
        _cupy_kernel[0] = k
        grads = grads[1:]
    for g in grads:
        _cupy_kernel[0](float(inv_scale), g, found)
    return found.reshape(())


def _device_key(a):
    return None if isinstance(a, np.ndarray) else a.device.id


class GradScaler:
    """Dynamic loss scaler (PyTorch's ``torch.amp.GradScaler``); ``step()`` returns whether the optimizer stepped.

    Args:
        device: the device type the scaler serves (``"cuda"``, ``"cpu"``); first, as in ``torch.amp.GradScaler``
            (``conch.cuda.amp.GradScaler`` keeps the deprecated order with ``init_scale`` first). ``None``
            serves gradients on any device.
        init_scale: initial scale factor S.
        growth_factor: S is multiplied by this after ``growth_interval`` consecutive clean steps (> 1).
        backoff_factor: S is multiplied by this after a step with inf/NaN gradients (in (0, 1)).
        growth_interval: number of consecutive clean steps between growths.
        enabled: ``False`` makes every method a pass-through (``scale`` returns its input, ``step``
            just calls ``optimizer.step()``), so one script serves float32 and float16 runs.

    Parameters must be float32 (master weights); gradients of float16 parameters are refused.
    bfloat16 has float32's range and needs no scaler. Example: ``GradScaler("cuda", 1024.0)`` starts at S = 1024.
    """

    def __init__(self, device=None, init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000,
                 enabled=True):  # fmt: skip
        if device is not None and not isinstance(device, str):
            # a number first is the deprecated torch.cuda.amp order, a dtype is autocast's argument: both are
            # silent mix-ups in PyTorch (the value lands in the wrong parameter), so say which call was meant
            hint = (
                "; for init_scale first use conch.cuda.amp.GradScaler(init_scale, ...) or init_scale=..."
                if isinstance(device, numbers.Real)
                else "; the dtype belongs to autocast (GradScaler only serves float16)"
            )
            raise TypeError(
                f"GradScaler: device must be a str such as 'cuda' or 'cpu' (torch.amp order: GradScaler(device, "
                f"init_scale, growth_factor, ...)), got {type(device).__name__} {device!r}{hint}"
            )
        for name, v in (("init_scale", init_scale), ("growth_factor", growth_factor),
                        ("backoff_factor", backoff_factor)):  # fmt: skip
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not np.isfinite(v):
                raise TypeError(f"GradScaler: {name} must be a finite float, got {v!r}")
        if init_scale <= 0:
            raise ValueError(f"GradScaler: init_scale must be positive, got {init_scale}")
        if growth_factor <= 1.0:
            raise ValueError(f"GradScaler: the growth factor must be > 1.0, got {growth_factor}")
        if not 0.0 < backoff_factor < 1.0:
            raise ValueError(f"GradScaler: the backoff factor must be < 1.0 and > 0, got {backoff_factor}")
        if isinstance(growth_interval, bool) or not isinstance(growth_interval, numbers.Integral):
            raise TypeError(f"GradScaler: growth_interval must be an int, got {type(growth_interval).__name__}")
        if growth_interval <= 0:
            raise ValueError(f"GradScaler: growth_interval must be a positive int, got {growth_interval}")
        self._enabled = bool(enabled)
        self._device = device
        self._init_scale = float(init_scale)
        self._scale = float(np.float32(init_scale))
        # PyTorch creates its float32 scale tensor lazily in scale(); until then get_scale()/state_dict()
        # report init_scale as given (unrounded)
        self._scale_used = False
        self._growth_factor = float(growth_factor)
        self._backoff_factor = float(backoff_factor)
        self._growth_interval = int(growth_interval)
        self._growth_tracker = 0
        self._per_optimizer_states: dict = {}
        self._scale_tensors: dict = {}  # device key -> (scale value, 0-d float32 Tensor)

    # ------------------------------------------------------------ scaling
    def _scale_tensor(self, like):
        key = _device_key(like._data)
        hit = self._scale_tensors.get(key)
        if hit is not None and hit[0] == self._scale:
            return hit[1]
        t = like._make(asarray_on(np.float32(self._scale), np.float32, like.device))
        self._scale_tensors[key] = (self._scale, t)
        return t

    def scale(self, outputs):
        """``outputs * S`` for a tensor or (nested) lists/tuples of tensors; unchanged when disabled.

        S is a 0-d float32 tensor, so PyTorch's promotion applies: a 0-d float16 loss becomes float32 and
        cannot overflow; a float16 tensor with dims stays float16.
        """
        if not self._enabled:
            return outputs

        self._scale_used = True
        if isinstance(outputs, GraphTensor):
            return outputs * self._scale_tensor(outputs)
        if isinstance(outputs, (list, tuple)):
            return type(outputs)(self.scale(o) for o in outputs)
        raise ValueError(f"GradScaler.scale: outputs must be a Tensor or a list/tuple of Tensors, got "
                         f"{type(outputs).__name__}")  # fmt: skip

    def _state_of(self, optimizer):
        st = self._per_optimizer_states.get(id(optimizer))
        if st is None:
            st = self._per_optimizer_states[id(optimizer)] = {"stage": READY, "found_inf": None, "found": None}
        return st

    def _grads_by_device(self, optimizer):
        groups = getattr(optimizer, "param_groups", None)
        if groups is None:
            raise TypeError(f"GradScaler: expected an optimizer with param_groups, got {type(optimizer).__name__}")
        by_dev, seen, tensors = {}, set(), []
        for gi, group in enumerate(groups):
            for pi, p in enumerate(group["params"]):
                if p.dtype == D.float16 or (p.grad is not None and p.grad.dtype == D.float16):
                    raise ValueError(
                        f"GradScaler: parameter {pi} of param group {gi} (shape {tuple(p.shape)}) is float16: "
                        "attempting to unscale FP16 gradients. Keep the parameters in float32 (master weights: "
                        "model.float()) and run the forward under conch.amp.autocast(dtype=conch.float16), which "
                        "casts weights to float16 per matmul; their gradients then arrive in float32."
                    )
                g = p.grad
                if g is None or id(g._data) in seen:
                    continue
                seen.add(id(g._data))
                tensors.append(g)
                by_dev.setdefault(_device_key(g._data), []).append(g._data)
        for g in tensors:  # unscaled in place below: anything that saved them must notice
            g._version[0] += 1
        return by_dev

    def unscale_(self, optimizer):
        """Divide ``optimizer``'s gradients by S in place (e.g. before clipping) and record inf/NaN.

        At most once per optimizer between ``update()`` calls, and not after ``step()``.
        """
        if not self._enabled:
            return
        st = self._state_of(optimizer)
        if st["stage"] == UNSCALED:
            raise RuntimeError("unscale_() has already been called on this optimizer since the last update().")
        if st["stage"] == STEPPED:
            raise RuntimeError("unscale_() is being called after step(): call update() first.")
        # 1/S in float64, rounded to float32, as PyTorch; exact for powers of two
        inv = float(np.float32(1.0 / np.float64(self._scale)))
        by_dev = self._grads_by_device(optimizer)
        self._scale_used = True
        st["found_inf"] = {k: _unscale_and_check(v, inv) for k, v in by_dev.items()}
        st["found"] = None
        st["stage"] = UNSCALED

    @staticmethod
    def _found(st):
        # the host synchronisation: one read per device, cached for update(); pending device-side range checks
        # (kernels._deferred: cross-entropy targets, embedding indices) travel in the same copy and raise here
        if st["found"] is None:
            found = any(
                float(f if isinstance(f, np.ndarray) else _deferred.fetch(f)[0]) != 0.0
                for f in st["found_inf"].values()
            )
            # under DDP every rank must skip (or take) the step together: the flag's MAX over the process
            # group's ranks, one small host all-reduce riding on this step's one sync (none without a group)
            from ..distributed.c10d import _any_rank

            st["found"] = _any_rank(found)
        return st["found"]

    def step(self, optimizer, *args, **kwargs) -> bool:
        """Unscale (if ``unscale_`` was not called) and call ``optimizer.step(*args, **kwargs)`` unless a
        gradient is inf/NaN. Returns True when the optimizer stepped, False when the step was skipped
        (parameters and optimizer state untouched)."""
        if not self._enabled:
            optimizer.step(*args, **kwargs)
            return True
        if "closure" in kwargs:
            raise RuntimeError("Closure use is not currently supported if GradScaler is enabled.")
        st = self._state_of(optimizer)
        if st["stage"] == STEPPED:
            raise RuntimeError("step() has already been called since the last update().")
        if st["stage"] == READY:
            self.unscale_(optimizer)
        stepped = not self._found(st)
        if stepped:
            optimizer.step(*args, **kwargs)
        st["stage"] = STEPPED
        return stepped

    def update(self, new_scale=None):
        """Adapt S after this iteration's steps (or set it to ``new_scale``) and reset every optimizer to READY."""
        if not self._enabled:
            return
        if new_scale is not None:
            if isinstance(new_scale, GraphTensor):
                if new_scale.numel() != 1 or new_scale.requires_grad:
                    raise ValueError("new_scale should be a float or a 1-element tensor with requires_grad=False")
                new_scale = new_scale.item()
            if isinstance(new_scale, bool) or not isinstance(new_scale, numbers.Real):
                raise TypeError(f"new_scale should be a float or a 1-element tensor, got {type(new_scale).__name__}")
            self._scale = float(np.float32(new_scale))
            self._scale_used = True
        else:
            states = [st for st in self._per_optimizer_states.values() if st["found_inf"] is not None]
            if not states:
                raise RuntimeError(
                    "No inf checks were recorded prior to update(): call scaler.step(optimizer) (or "
                    "scaler.unscale_(optimizer)) in this iteration before scaler.update()."
                )
            found = any([self._found(st) for st in states])
            s = np.float32(self._scale)
            if found:
                self._scale = float(s * np.float32(self._backoff_factor))
                self._growth_tracker = 0
            else:
                self._growth_tracker += 1
                if self._growth_tracker == self._growth_interval:
                    with np.errstate(over="ignore"):
                        grown = s * np.float32(self._growth_factor)
                    if np.isfinite(grown):  # stay at float32's largest power of two rather than inf
                        self._scale = float(grown)
                    self._growth_tracker = 0
        self._per_optimizer_states = {}

    # ------------------------------------------------------------ accessors
    def get_scale(self) -> float:
        """The current scale S (1.0 when disabled)."""
        if not self._enabled:
            return 1.0
        return self._scale if self._scale_used else self._init_scale

    def get_growth_factor(self) -> float:
        return self._growth_factor

    def set_growth_factor(self, new_factor: float) -> None:
        self._growth_factor = float(new_factor)

    def get_backoff_factor(self) -> float:
        return self._backoff_factor

    def set_backoff_factor(self, new_factor: float) -> None:
        self._backoff_factor = float(new_factor)

    def get_growth_interval(self) -> int:
        return self._growth_interval

    def set_growth_interval(self, new_interval: int) -> None:
        self._growth_interval = int(new_interval)

    def _get_growth_tracker(self) -> int:
        return self._growth_tracker if self._enabled else 0

    def is_enabled(self) -> bool:
        return self._enabled

    def state_dict(self) -> dict:
        """The keys ``scale, growth_factor, backoff_factor, growth_interval, _growth_tracker``; ``{}`` when disabled."""
        if not self._enabled:
            return {}
        return {
            "scale": self.get_scale(),
            "growth_factor": self._growth_factor,
            "backoff_factor": self._backoff_factor,
            "growth_interval": self._growth_interval,
            "_growth_tracker": self._growth_tracker,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        if not self._enabled:
            return
        if len(state_dict) == 0:
            raise RuntimeError(
                "The source state dict is empty, possibly because it was saved from a disabled instance of GradScaler."
            )
        need = ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker")
        missing = [k for k in need if k not in state_dict]
        if missing:
            raise KeyError(f"GradScaler.load_state_dict: missing keys {missing}")
        self._init_scale = float(state_dict["scale"])
        self._scale = float(np.float32(state_dict["scale"]))
        self._growth_factor = float(state_dict["growth_factor"])
        self._backoff_factor = float(state_dict["backoff_factor"])
        self._growth_interval = int(state_dict["growth_interval"])
        self._growth_tracker = int(state_dict["_growth_tracker"])

    def __repr__(self):
        if not self._enabled:
            return "GradScaler(enabled=False)"
        return (f"GradScaler(scale={self._scale}, growth_factor={self._growth_factor}, backoff_factor="
                f"{self._backoff_factor}, growth_interval={self._growth_interval})")  # fmt: skip
