"""conch.amp: automatic mixed precision (``autocast`` with a per-op policy table) and dynamic loss scaling.

Example::

    scaler = conch.amp.GradScaler()                  # float16 only: bfloat16 needs no scaler
    with conch.amp.autocast(dtype=conch.float16):
        loss = loss_fn(model(x), y)                  # matmuls in float16, softmax/loss in float32
    scaler.scale(loss).backward()                    # parameters and gradients stay float32
    scaler.step(opt)
    scaler.update()
"""

from .autocast_mode import (
    autocast,
    cast_for,
    get_autocast_dtype,
    get_autocast_state,
    is_autocast_enabled,
    set_autocast_state,
)
from .grad_scaler import GradScaler
from .policy import FP32, LOW, POLICY, PROMOTE, policy_of, policy_table, set_policy

__all__ = [
    "autocast", "cast_for", "get_autocast_dtype", "get_autocast_state", "is_autocast_enabled",
    "set_autocast_state", "GradScaler", "POLICY", "LOW", "FP32", "PROMOTE", "policy_of", "policy_table",
    "set_policy",
]  # fmt: skip
