"""dtypes (NumPy dtypes, bfloat16 from ml_dtypes) and PyTorch's type-promotion rules.

ml_dtypes (0.5-0.8 s to import) loads when bfloat16 is first needed: ``D.bfloat16`` (a module attribute made on
first access), ``as_dtype("bfloat16")``, or an array of that dtype entering a tensor (``note_dtype``). Until then
no array can hold bfloat16, so the sets below (FLOATING, HALF) hold it only from then on.
"""

from __future__ import annotations

import builtins
import sys

import numpy as np

float16 = np.dtype(np.float16)
float32 = np.dtype(np.float32)
float64 = np.dtype(np.float64)
int8 = np.dtype(np.int8)
uint8 = np.dtype(np.uint8)
int16 = np.dtype(np.int16)
int32 = np.dtype(np.int32)
int64 = np.dtype(np.int64)
bool_ = np.dtype(np.bool_)

half, float, double, long, int = float16, float32, float64, int64, int32  # noqa: A001  (torch aliases)

# mutable on purpose: bfloat16 joins both when ml_dtypes loads (_load_bfloat16); never reassign them
FLOATING = {float16, float32, float64}  # the floating dtypes
HALF = {float16}  # the 16-bit floats, which compute in float32
_default_float = [float32]

_ALIASES = {
    "float16": float16, "half": float16, "fp16": float16,
    "float32": float32, "float": float32, "fp32": float32, "float64": float64, "double": float64,
    "int8": int8, "uint8": uint8, "int16": int16, "int32": int32, "int64": int64, "long": int64,
    "bool": bool_,
}  # fmt: skip
_LAZY_ALIASES = ("bfloat16", "bf16")


def _load_bfloat16() -> np.dtype:
    """Import ml_dtypes (once) and register bfloat16 in FLOATING, HALF and the aliases; returns its dtype."""
    bf = globals().get("bfloat16")
    if bf is None:
        import ml_dtypes

        bf = np.dtype(ml_dtypes.bfloat16)
        _ALIASES.update(bfloat16=bf, bf16=bf)
        globals()["bfloat16"] = bf
        for fn in _ON_BF16:
            fn(bf)
    return bf


_ON_BF16 = [FLOATING.add, HALF.add]  # called with bfloat16's dtype when ml_dtypes loads


def on_bfloat16(fn) -> None:
    """Call ``fn(bfloat16)`` when ml_dtypes loads (at once if it has): for tables that list bfloat16."""
    _ON_BF16.append(fn)
    bf = globals().get("bfloat16")
    if bf is not None:
        fn(bf)


def with_bfloat16(group: set) -> set:
    """Make ``group`` (a set of dtypes, kept by the caller) hold bfloat16 from when ml_dtypes loads; returns it."""
    on_bfloat16(group.add)
    return group


def __getattr__(name):
    # ``D.bfloat16`` and ``from ._dtype import bfloat16``: made on first access (PEP 562)
    if name == "bfloat16":
        return _load_bfloat16()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def note_dtype(dtype) -> None:
    """Register bfloat16 if ``dtype`` is it (an array made with ml_dtypes by the caller, entering a tensor)."""
    if dtype.kind == "V" and dtype.name == "bfloat16":
        _load_bfloat16()


def is_bfloat16(dtype) -> bool:
    """``dtype == bfloat16`` without importing ml_dtypes (an array cannot be bfloat16 before it is imported)."""
    return dtype.kind == "V" and dtype.name == "bfloat16"


if "ml_dtypes" in sys.modules:  # already paid for by the caller: register at once
    _load_bfloat16()


def get_default_dtype() -> np.dtype:
    """The dtype of floating tensors made from Python floats (float32 unless changed)."""
    return _default_float[0]


def set_default_dtype(dtype) -> None:
    """Change the default floating dtype; only float16/bfloat16/float32/float64 are allowed."""
    d = as_dtype(dtype)
    if d not in FLOATING:
        raise TypeError(f"only floating-point types are supported as the default type, got {d}")
    _default_float[0] = d


def as_dtype(dtype) -> np.dtype:
    """Normalise anything dtype-like (``conch.float16``, ``"bf16"``, ``np.float32``, Python types)."""
    if isinstance(dtype, np.dtype):
        if dtype.kind == "V":
            note_dtype(dtype)
        return dtype
    if isinstance(dtype, str):
        name = dtype.removeprefix("conch.").removeprefix("torch.")
        d = _ALIASES.get(name)
        if d is None:
            if name in _LAZY_ALIASES:
                return _load_bfloat16()
            raise TypeError(f"unknown dtype {dtype!r}; expected one of {sorted({*_ALIASES, *_LAZY_ALIASES})}")
        return d
    if dtype is builtins.float:
        return get_default_dtype()
    if dtype is builtins.int:
        return int64
    if dtype is builtins.bool:
        return bool_
    try:
        d = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"cannot interpret {dtype!r} as a conch dtype") from None
    note_dtype(d)
    return d


def is_floating(dtype) -> bool:
    return dtype in FLOATING


def _category(dtype: np.dtype) -> builtins.int:
    # bool < integer < floating, as in PyTorch's promotion categories
    if dtype == bool_:
        return 0
    if dtype in FLOATING:
        return 2
    return 1


def _scalar_category(x) -> builtins.int:
    if isinstance(x, (builtins.bool, np.bool_)):
        return 0
    if isinstance(x, (builtins.int, np.integer)):
        return 1
    if isinstance(x, (builtins.float, np.floating)):
        return 2
    raise TypeError(f"unsupported scalar type {type(x).__name__}")


def _promote_pair(a: np.dtype, b: np.dtype) -> np.dtype:
    if a == b:
        return a
    ca, cb = _category(a), _category(b)
    if ca != cb:
        return a if ca > cb else b
    if a in HALF and b in HALF:  # float16 with bfloat16 (equal dtypes returned above)
        return float32  # neither holds the other, as in PyTorch
    return np.promote_types(a, b)


def result_type(*operands) -> np.dtype:
    """PyTorch's promotion: tensors with dims > zero-dim tensors > Python scalars.

    A lower priority class only matters when it is of a higher category (bool < int < float):
    ``int32 tensor + 2.5`` is the default float dtype, ``float16 tensor + 2.5`` stays float16,
    ``float16 tensor + float64 0-d tensor`` stays float16.

    Operands are ``(dtype, ndim)`` pairs for tensors or Python scalars.
    """
    dims, zerod, scalars = None, None, None
    for op in operands:
        if isinstance(op, tuple):
            dt, nd = op
            if nd > 0:
                dims = dt if dims is None else _promote_pair(dims, dt)
            else:
                zerod = dt if zerod is None else _promote_pair(zerod, dt)
        else:
            c = _scalar_category(op)
            scalars = c if scalars is None else max(scalars, c)
    result = dims
    if zerod is not None:
        if result is None or _category(zerod) > _category(result):
            result = zerod
    if scalars is not None:
        if result is None:
            result = (bool_, int64, get_default_dtype())[scalars]
        elif scalars > _category(result):
            result = (bool_, int64, get_default_dtype())[scalars]
    return result


# PyTorch's names in error messages: the C++ type ("float != double") and the ScalarType ("Float", "Double")
_C_NAMES = {
    "float16": "c10::Half", "bfloat16": "c10::BFloat16", "float32": "float", "float64": "double", "int64": "long int",
    "int32": "int", "int16": "short int", "int8": "signed char", "uint8": "unsigned char", "bool": "bool",
}  # fmt: skip
_SCALAR_NAMES = {
    "float16": "Half", "bfloat16": "BFloat16", "float32": "Float", "float64": "Double", "int64": "Long",
    "int32": "Int", "int16": "Short", "int8": "Char", "uint8": "Byte", "bool": "Bool",
}  # fmt: skip


def c_name(dtype) -> str:
    """The C++ type name PyTorch prints for ``dtype`` ("float", "double", "c10::Half")."""
    return _C_NAMES.get(np.dtype(dtype).name, np.dtype(dtype).name)


def scalar_name(dtype) -> str:
    """PyTorch's ScalarType name for ``dtype`` ("Float", "Double", "Half")."""
    return _SCALAR_NAMES.get(np.dtype(dtype).name, np.dtype(dtype).name)
