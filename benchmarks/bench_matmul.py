"""Microbenchmarks: conch's matmul (plain, fused linear+bias+gelu forward and backward) vs cuBLAS through cupy.matmul.

Cases (``cases(size, sizes=None, dtype=None, xp=None)``; ``n`` is the square size, the problem is n x n x n):

* ``matmul_fwd``: ``a @ b`` against ``cupy.matmul`` (cuBLAS). dtypes ``float16``, ``bfloat16``, ``tf32``
  (conch with ``allow_tf32=True`` against cuBLAS in its TF32 compute mode) and ``float32`` (conch with
  ``allow_tf32=False``, IEEE fp32 FMAs, against cuBLAS in its exact FP32 mode).
* ``linear_bias_gelu_fwd``: conch's one kernel ``gelu(a @ b + bias)`` (which also stores the pre-activation
  for the backward) against ``cupy.matmul`` followed by one CuPy elementwise kernel for bias + gelu.
* ``linear_bias_gelu_bwd``: dZ = dout * gelu'(Z), dA = dZ @ b^T, dB = a^T @ dZ, dbias = sum(dZ) against
  one CuPy elementwise kernel for dZ, two ``cupy.matmul`` and a sum.

Every check compares against a float32 reference computed from the same (upcast) inputs with cuBLAS in exact
FP32 mode, never against the timed baseline, so the tf32 and half-precision rows are judged against the
truth with their dtype's tolerance. ``large``: n in 4096 and 8192 for matmul and linear+bias+gelu in
float16, bfloat16 and tf32, float32 at 4096, the backward in bfloat16 at 4096. ``small``: n 512 and 1024.
``sizes`` replaces the n list; ``dtype`` builds every op at every n in that dtype only.

Example::

    conch bench matmul --dtype bf16 --sizes 2048,8192
"""

from __future__ import annotations

import contextlib
import math
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import harness  # noqa: E402

SQRT_HALF = 0.7071067811865476
INV_SQRT_2PI = 0.3989422804014327

_BIAS_GELU_SRC = "float v = (float)z + (float)bias; y = (T)(0.5f * v * (1.0f + erff(v * 0.7071067811865476f)));"
_DZ_GELU_SRC = (
    "float v = (float)z; float g = 0.5f * (1.0f + erff(v * 0.7071067811865476f)) "
    "+ v * expf(-0.5f * v * v) * 0.3989422804014327f; dz = (T)((float)dout * g);"
)


def _is_numpy(xp):
    return xp.__name__ == "numpy"


@contextlib.contextmanager
def cublas_fp32_mode(xp, tf32):
    """While inside, CuPy multiplies float32 matrices in TF32 (``tf32``) or exact FP32 compute mode (restored
    on exit). A no-op for NumPy."""
    if _is_numpy(xp):
        yield
        return
    from cupy._core import _routines_linalg as rl

    f32 = xp.dtype(xp.float32)
    old = rl.get_compute_type(f32)
    rl.set_compute_type(f32, rl.COMPUTE_TYPE_TF32 if tf32 else rl.COMPUTE_TYPE_FP32)
    try:
        yield
    finally:
        rl.set_compute_type(f32, old)


def ref_matmul(xp, a, b):
    """a @ b in float32 from upcast inputs, cuBLAS in exact FP32 mode: the checks' reference."""
    with cublas_fp32_mode(xp, tf32=False):
        return xp.matmul(a.astype(xp.float32), b.astype(xp.float32))


def ref_gelu(xp, z):
    """Exact gelu of a float32 array."""
    return 0.5 * z * (1.0 + harness.erf_fn(xp)(z * SQRT_HALF))


def ref_gelu_grad(xp, z):
    """gelu'(z) = Phi(z) + z phi(z), float32."""
    return 0.5 * (1.0 + harness.erf_fn(xp)(z * SQRT_HALF)) + z * xp.exp(-0.5 * z * z) * INV_SQRT_2PI


def _kernel(xp, params_in, params_out, src, name):
    """A CuPy ElementwiseKernel (one launch), or None on NumPy."""
    return None if _is_numpy(xp) else xp.ElementwiseKernel(params_in, params_out, src, name)


def _bias_gelu(xp, dtype):
    """(one-kernel y = gelu(z + bias) or None on NumPy, the same as a composition of xp ops), float32 math,
    results stored in ``dtype``."""

    def composed(z, bias):
        return ref_gelu(xp, z.astype(xp.float32) + bias.astype(xp.float32)).astype(dtype)

    return _kernel(xp, "T z, T bias", "T y", _BIAS_GELU_SRC, "bench_bias_gelu"), composed


def _dz_gelu(xp, dtype):
    """(one-kernel dz = dout * gelu'(z) or None on NumPy, the same as a composition of xp ops)."""

    def composed(dout, z):
        return (dout.astype(xp.float32) * ref_gelu_grad(xp, z.astype(xp.float32))).astype(dtype)

    return _kernel(xp, "T dout, T z", "T dz", _DZ_GELU_SRC, "bench_dz_gelu"), composed


def _probe(fn, fallback, *args):
    """``fn`` when ``fn(*args)`` runs, else ``fallback``: (callable, None or the failure's text)."""
    try:
        fn(*args)
        return fn, None
    except Exception as e:  # CuPy's bf16 support is experimental: keep the case alive
        return fallback, f"{type(e).__name__}: {str(e)[:80]}"


def _cublas(xp, dtype):
    """The timed baseline product for ``dtype``: cupy.matmul in the matching cuBLAS mode."""
    tf32 = dtype == "tf32"

    def mm(a, b):
        if dtype in ("tf32", "float32"):
            with cublas_fp32_mode(xp, tf32):
                return xp.matmul(a, b)
        return xp.matmul(a, b)

    return mm


def _torch_dtype(torch, dtype):
    return {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(dtype, torch.float32)


def _torch_linear_factory(n, dtype):
    """PyTorch eager on its own inputs of the same shapes: gelu(addmm(bias, a, b)) (two kernels)."""

    def factory():
        try:
            import torch
        except ImportError:
            return None
        if not torch.cuda.is_available():
            return None
        import torch.nn.functional as F

        tdt = _torch_dtype(torch, dtype)
        g = torch.Generator(device="cuda").manual_seed(0)
        a = (torch.randn(n, n, generator=g, device="cuda") / math.sqrt(n)).to(tdt)
        b = torch.randn(n, n, generator=g, device="cuda").to(tdt)
        bias = (0.1 * torch.randn(n, generator=g, device="cuda")).to(tdt)
        tf32 = dtype == "tf32"

        def fn():
            torch.backends.cuda.matmul.allow_tf32 = tf32
            return F.gelu(torch.addmm(bias, a, b))

        return fn

    return factory


def _matmul_case(xp, mm, dtype, n, seed):
    sdt = harness.storage_dtype(dtype)
    isz = sdt.itemsize
    allow_tf32 = dtype != "float32"
    cublas = _cublas(xp, dtype)

    def setup():
        rng = xp.random.default_rng(seed)
        a = harness.randn(xp, rng, (n, n), dtype, scale=1 / math.sqrt(n))
        b = harness.randn(xp, rng, (n, n), dtype)
        base, why = _probe(cublas, None, a, b)
        parts = {
            "run": lambda: mm.matmul_forward(a, b, allow_tf32=allow_tf32),
            "check": lambda: harness.rel_err(mm.matmul_forward(a, b, allow_tf32=allow_tf32)[0], ref_matmul(xp, a, b)),
        }
        if base is None:  # cupy.matmul cannot multiply this dtype: time cuBLAS on float16 copies instead
            a16, b16 = a.astype(xp.float16), b.astype(xp.float16)
            parts["baseline"] = lambda: xp.matmul(a16, b16)
            parts["baseline_name"] = f"cupy.matmul on float16 copies ({dtype} failed: {why})"
        else:
            parts["baseline"] = lambda: cublas(a, b)
        return parts

    mode = {"tf32": " TF32 mode", "float32": " FP32 mode"}.get(dtype, "")
    return dict(name="matmul_fwd", shape=(n, n, n), dtype=dtype, size=n, flops=2 * n**3, bytes=3 * n * n * isz,
                baseline_name=f"cupy.matmul (cuBLAS{mode})", setup=setup)  # fmt: skip


def _linear_fwd_case(xp, mm, dtype, n, seed):
    sdt = harness.storage_dtype(dtype)
    isz = sdt.itemsize
    allow_tf32 = dtype != "float32"
    cublas = _cublas(xp, dtype)

    def setup():
        rng = xp.random.default_rng(seed)
        a = harness.randn(xp, rng, (n, n), dtype, scale=1 / math.sqrt(n))
        b = harness.randn(xp, rng, (n, n), dtype)
        bias = harness.randn(xp, rng, (n,), dtype, scale=0.1)
        kernel, composed = _bias_gelu(xp, sdt)
        bias_gelu, fused = composed, False
        if kernel is not None:
            bias_gelu, why = _probe(kernel, composed, cublas(a, b), bias)
            fused = why is None

        def base():
            return bias_gelu(cublas(a, b), bias)

        def check():
            got = mm.matmul_forward(a, b, bias, "gelu", allow_tf32=allow_tf32)[0]
            return harness.rel_err(got, ref_gelu(xp, ref_matmul(xp, a, b) + bias.astype(xp.float32)))

        name = "cupy.matmul + " + ("one elementwise bias+gelu kernel" if fused else "CuPy bias, gelu (unfused)")
        return {"run": lambda: mm.matmul_forward(a, b, bias, "gelu", allow_tf32=allow_tf32), "baseline": base,
                "check": check, "baseline_name": name}  # fmt: skip

    return dict(name="linear_bias_gelu_fwd", shape=(n, n, n), dtype=dtype, size=n, flops=2 * n**3 + 10 * n * n,
                bytes=(4 * n * n + n) * isz,  # read a, b, bias; write out and the saved pre-activation
                baseline_name="cupy.matmul + one elementwise bias+gelu kernel", setup=setup,
                torch_factory=_torch_linear_factory(n, dtype), torch_name="torch gelu(addmm)")  # fmt: skip


def _linear_bwd_case(xp, mm, dtype, n, seed):
    sdt = harness.storage_dtype(dtype)
    isz = sdt.itemsize
    allow_tf32 = dtype != "float32"
    cublas = _cublas(xp, dtype)

    def setup():
        rng = xp.random.default_rng(seed)
        a = harness.randn(xp, rng, (n, n), dtype, scale=1 / math.sqrt(n))
        b = harness.randn(xp, rng, (n, n), dtype)
        bias = harness.randn(xp, rng, (n,), dtype, scale=0.1)
        dout = harness.randn(xp, rng, (n, n), dtype)
        _, res = mm.matmul_forward(a, b, bias, "gelu", allow_tf32=allow_tf32)
        z = res.r  # the saved pre-activation a @ b + bias
        kernel, composed = _dz_gelu(xp, sdt)
        dz_gelu, fused = composed, False
        if kernel is not None:
            dz_gelu, why = _probe(kernel, composed, dout, z)
            fused = why is None

        def base():
            dz = dz_gelu(dout, z)
            return cublas(dz, b.T), cublas(a.T, dz), dz.sum(axis=0, dtype=xp.float32)

        def check():
            got = mm.matmul_backward(res, dout)
            zf = ref_matmul(xp, a, b) + bias.astype(xp.float32)
            dz = dout.astype(xp.float32) * ref_gelu_grad(xp, zf)
            with cublas_fp32_mode(xp, tf32=False):
                want = (dz @ b.astype(xp.float32).T, a.astype(xp.float32).T @ dz, dz.sum(axis=0))
            return max(harness.rel_err(g, w) for g, w in zip(got, want, strict=True))

        name = ("one elementwise dZ kernel" if fused else "CuPy dZ (unfused)") + ", cupy.matmul x2, sum"
        return {"run": lambda: mm.matmul_backward(res, dout), "baseline": base, "check": check,
                "baseline_name": name}  # fmt: skip

    return dict(name="linear_bias_gelu_bwd", shape=(n, n, n), dtype=dtype, size=n, flops=4 * n**3,
                bytes=(7 * n * n + n) * isz,  # read dout, Z, a, b; write da, db, dbias
                baseline_name="one elementwise dZ kernel, cupy.matmul x2, sum", setup=setup)  # fmt: skip


def cases(size="large", sizes=None, dtype=None, xp=None):
    """The matmul cases (see the module docstring); arrays are allocated by each case's ``setup()``."""
    from conch.kernels import matmul as mm

    xp = harness.family_xp(xp)
    ns = harness.pick_sizes(sizes, (4096, 8192) if size == "large" else (512, 1024))
    out = []
    seed = 0
    if dtype:
        dts = harness.wanted_dtypes(dtype, ())
        plan = [(_matmul_case, d, n) for d in dts for n in ns] + [(_linear_fwd_case, d, n) for d in dts for n in ns]
        plan += [(_linear_bwd_case, d, n) for d in dts for n in ns]
    else:
        # most wanted first: a time limit that stops the run early cuts the least useful cases
        fast = ("float16", "bfloat16", "tf32")
        plan = [(_matmul_case, d, n) for d in fast for n in ns]
        plan += [(_linear_fwd_case, d, n) for d in fast for n in ns]
        plan += [(_matmul_case, "float32", ns[0]), (_linear_bwd_case, "bfloat16", ns[0])]
    for make, d, n in plan:
        seed += 1
        out.append(make(xp, mm, d, n, seed))
    return out
