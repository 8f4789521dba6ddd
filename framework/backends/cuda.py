"""conch.backends.cuda: PyTorch's ``torch.backends.cuda`` (``matmul.allow_tf32`` is conch's TF32 switch)."""

from __future__ import annotations

import importlib.util

from ._state import _tf32

__all__ = ["matmul", "is_built"]


class _Matmul:
    """``conch.backends.cuda.matmul``: ``allow_tf32`` reads and writes the switch the fused matmul reads."""

    # accepted, as PyTorch's: conch's float16/bfloat16 matmuls always accumulate in float32
    allow_fp16_reduced_precision_reduction = True
    allow_bf16_reduced_precision_reduction = True

    @property
    def allow_tf32(self) -> bool:
        return _tf32[0]

    @allow_tf32.setter
    def allow_tf32(self, flag) -> None:
        _tf32[0] = bool(flag)

    def __repr__(self):
        return f"conch.backends.cuda.matmul(allow_tf32={_tf32[0]})"


matmul = _Matmul()


def is_built() -> bool:
    """Whether conch can use a GPU at all here: CuPy is installed (``conch.cuda.is_available()`` says if one works)."""
    return importlib.util.find_spec("cupy") is not None
