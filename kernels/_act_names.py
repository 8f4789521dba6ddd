"""The activation names the kernels know, and their integer codes: importable without Triton.

:mod:`conch.kernels._act` (the Triton side) re-exports these; the framework (``conch.fused.activations``,
``conch.nn``) and ``conch bench`` read :data:`ACTIVATIONS` from here, so ``import conch`` needs no Triton.
"""

from __future__ import annotations

#: Integer code per activation name, as the kernels' ``ACT`` constexpr sees it.
ACT_CODES = {
    "none": 0,
    "relu": 1,
    "leaky_relu": 2,
    "elu": 3,
    "gelu": 4,
    "gelu_tanh": 5,
    "silu": 6,
    "tanh": 7,
    "sigmoid": 8,
}

#: The activation names (every code but "none"): the one list conch validates names against.
ACTIVATIONS = tuple(n for n in ACT_CODES if n != "none")


def act_name(name) -> str:
    """Canonical activation name (``None`` -> ``"none"``); ValueError listing the valid names otherwise."""
    if name is None:
        return "none"
    if isinstance(name, str) and name.lower() in ACT_CODES:
        return name.lower()
    valid = ", ".join(["None"] + [repr(n) for n in ACT_CODES])
    raise ValueError(f"unknown activation {name!r}; valid names are: {valid}")


def act_code(name) -> int:
    """The ``ACT`` constexpr code for ``name`` (validated by :func:`act_name`)."""
    return ACT_CODES[act_name(name)]
