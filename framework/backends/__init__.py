"""Backend switches that change how kernels compute (today: TF32 for float32 matmuls), as ``torch.backends``.

The setting is read by the fused matmul and attention adapters (``conch.fused.matmul``, ``conch.fused.attention``)
at each call. PyTorch's spellings are the submodules: ``conch.backends.cuda.matmul.allow_tf32`` is the same
switch; ``conch.backends.cudnn`` and ``conch.backends.mps`` hold PyTorch's flags for scripts that set them.
Example::

    conch.set_float32_matmul_precision("highest")   # exact float32 dots on the GPU
    conch.backends.allow_tf32()                     # False now
    conch.backends.cuda.matmul.allow_tf32 = True    # and True again
"""

from __future__ import annotations

from ._state import _tf32


def allow_tf32(flag: bool | None = None) -> bool:
    """Let float32 matmuls use TF32 tensor cores on the GPU (default True); returns the setting."""
    if flag is not None:
        _tf32[0] = bool(flag)
    return _tf32[0]


def set_float32_matmul_precision(precision: str) -> None:
    """PyTorch's switch for float32 matmuls on the GPU: ``"highest"`` computes in exact fp32 (IEEE dots),
    ``"high"``/``"medium"`` allow TF32 tensor cores (10-bit mantissa inputs, fp32 accumulation).

    conch defaults to ``"high"`` (PyTorch defaults to ``"highest"``): training in float32 on an H100 is
    several times faster with TF32 and loses little. Example: ``conch.set_float32_matmul_precision("highest")``.
    """
    if precision not in ("highest", "high", "medium"):
        raise ValueError(f"precision must be 'highest', 'high' or 'medium', got {precision!r}")
    _tf32[0] = precision != "highest"


def get_float32_matmul_precision() -> str:
    """``"high"`` while TF32 is allowed, else ``"highest"``."""
    return "high" if _tf32[0] else "highest"


from . import cuda, cudnn, mps  # noqa: E402  (PyTorch's submodules; they read _tf32 above)

__all__ = ["allow_tf32", "set_float32_matmul_precision", "get_float32_matmul_precision", "cuda", "cudnn", "mps"]
