"""The one place in conch that imports CuPy: lazily, once, remembering why it failed."""

from __future__ import annotations

import os

from ._triton_compat import bind_to_cupy

_state: dict = {}


def get_cupy():
    """Return the ``cupy`` module when a usable GPU is present, else ``None``.

    The import and the device probe run once; the reason for a failure is kept for
    :func:`unavailable_reason`, so error messages can say why no GPU was found.
    """
    if "module" not in _state:
        try:
            if os.environ.get("CONCH_SIMULATE_GPU", "").strip().lower() not in ("", "0", "false", "no", "off"):
                from .sim import install  # the simulated device (tests on CPU-only machines): fake cupy modules

                install()
            import cupy

            if not cupy.cuda.is_available():
                raise RuntimeError("CuPy found no CUDA device (cupy.cuda.is_available() is False)")
            cupy.cuda.runtime.getDeviceCount()
            bind_to_cupy(cupy)  # compiled Triton launches on CuPy's current device and stream, torch or not
            _state["module"], _state["why"] = cupy, None
        except Exception as e:  # ImportError, CUDARuntimeError, missing driver: all mean "no GPU"
            _state["module"], _state["why"] = None, f"{type(e).__name__}: {e}"
    return _state["module"]


def is_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device; never raises."""
    return get_cupy() is not None


def unavailable_reason() -> str | None:
    """Why :func:`get_cupy` returned ``None`` (``None`` when a GPU is usable)."""
    get_cupy()
    return _state["why"]


def is_cupy_array(a) -> bool:
    """True for a ``cupy.ndarray`` without importing CuPy (NumPy arrays never need it)."""
    return type(a).__module__.startswith("cupy")


def scatter_add(out, idx, values) -> None:
    """``out[idx] += values`` with repeated indices accumulating, on a CuPy array (``np.add.at``'s twin).

    ``cupyx.scatter_add`` takes only int32, uint32/64 and float16/32/64 values (its atomicAdd types):
    half-precision (float16, bfloat16) sums are accumulated in a float32 buffer and rounded once, which
    is also more accurate than atomic adds in 16 bits; int64 goes through a float64 buffer.
    """
    import cupyx

    dt = out.dtype
    if dt.itemsize == 2 and dt.kind in "fV" or dt.name == "bfloat16":
        wide = out.astype("float32")
    elif dt.kind in "iu" and dt.name not in ("int32", "uint32", "uint64"):
        wide = out.astype("float64")  # exact below 2**53
    else:
        cupyx.scatter_add(out, idx, values)
        return
    cupyx.scatter_add(wide, idx, values.astype(wide.dtype, copy=False) if hasattr(values, "astype") else values)
    out[...] = wide.astype(dt, copy=False)


def special(name: str):
    """A function from ``cupyx.scipy.special`` (``erf``, ``erfinv``...) for CuPy arrays."""
    import cupyx.scipy.special

    return getattr(cupyx.scipy.special, name)
