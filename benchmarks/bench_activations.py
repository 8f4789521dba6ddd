"""Microbenchmarks: elementwise activation kernels (forward, backward) vs the unfused CuPy composition."""

from __future__ import annotations


def _rel_err(a, b):
    """max |a - b| / max |b| in float32."""
    a = a.astype("float32")
    b = b.astype("float32")
    return float(abs(a - b).max() / max(float(abs(b).max()), 1e-30))


def cases(size="large"):
    """gelu (exact), silu and sigmoid on a flat tensor of 64M (large) or 1M (small) elements, fp32 and fp16.

    Baselines compute in fp32 from the storage dtype, as the kernels do, with CuPy elementwise operations.
    """
    import math

    import cupy

    from conch.kernels import activations as act

    n = 64 * 2**20 if size == "large" else 2**20
    rng = cupy.random.default_rng(0)
    erf = cupy.ElementwiseKernel("T x", "T y", "y = erf(x)", "bench_erf")

    def gelu(z):
        return 0.5 * z * (1 + erf(z / math.sqrt(2)))

    def gelu_grad(z):
        return 0.5 * (1 + erf(z / math.sqrt(2))) + z * cupy.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)

    def sig(z):
        return 1 / (1 + cupy.exp(-z))

    fns = {
        "gelu": (gelu, lambda x, y: gelu_grad(x)),
        "silu": (lambda z: z * sig(z), lambda x, y: sig(x) * (1 + x * (1 - sig(x)))),
        "sigmoid": (sig, lambda x, y: y * (1 - y)),  # conch saves y for sigmoid
    }
    out = []
    for dtype in ("float32", "float16"):
        x = (rng.standard_normal(n, dtype=cupy.float32) * 2).astype(dtype)
        dy = rng.standard_normal(n, dtype=cupy.float32).astype(dtype)
        isz = x.itemsize
        for name, (f, df) in fns.items():
            y, res = act.activation_forward(x, name)

            def base_fwd(x=x, f=f):
                return f(x.astype(cupy.float32)).astype(x.dtype)

            def base_bwd(x=x, y=y, dy=dy, df=df):
                return (dy.astype(cupy.float32) * df(x.astype(cupy.float32), y.astype(cupy.float32))).astype(x.dtype)

            out.append(
                dict(
                    name=f"{name}_fwd",
                    shape=(n,),
                    dtype=dtype,
                    flops=0,
                    bytes=2 * n * isz,
                    run=lambda x=x, name=name: act.activation_forward(x, name),
                    baseline_name=f"CuPy elementwise {name}",
                    baseline=base_fwd,
                    check=lambda x=x, name=name, g=base_fwd: _rel_err(act.activation_forward(x, name)[0], g()),
                )
            )
            out.append(
                dict(
                    name=f"{name}_bwd",
                    shape=(n,),
                    dtype=dtype,
                    flops=0,
                    bytes=3 * n * isz,  # read the residual and dy, write dx
                    run=lambda res=res, dy=dy: act.activation_backward(res, dy),
                    baseline_name=f"CuPy elementwise dy * {name}'",
                    baseline=base_bwd,
                    check=lambda res=res, dy=dy, g=base_bwd: _rel_err(act.activation_backward(res, dy), g()),
                )
            )
    return out
