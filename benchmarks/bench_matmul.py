"""Microbenchmarks: fused matmul + bias + activation (forward, backward) vs cupy.matmul and unfused CuPy epilogues."""

from __future__ import annotations


def _rel_err(a, b):
    """max |a - b| / max |b| in float32."""
    a = a.astype("float32")
    b = b.astype("float32")
    return float(abs(a - b).max() / max(float(abs(b).max()), 1e-30))


def _gelu_tanh(cupy, z):
    return 0.5 * z * (1 + cupy.tanh(0.7978845608028654 * (z + 0.044715 * z**3)))


def _gelu_tanh_grad(cupy, z):
    t = cupy.tanh(0.7978845608028654 * (z + 0.044715 * z**3))
    return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * 0.7978845608028654 * (1 + 0.134145 * z * z)


def cases(size="large"):
    """Square and MLP-shaped (M, K) @ (K, N) in fp16/bf16/fp32: plain matmul, linear+gelu_tanh forward and backward.

    large: 4096^3 and a transformer MLP up-projection (8192 x 4096 -> 16384); small: 512^3 and 1024 x 512 -> 2048.
    Baselines: cupy.matmul (cuBLAS) for the plain product; cuBLAS + CuPy elementwise ops for the fused ones.
    """
    import cupy
    import ml_dtypes

    from conch.kernels import matmul as mm

    shapes = [(4096, 4096, 4096), (8192, 4096, 16384)] if size == "large" else [(512, 512, 512), (1024, 512, 2048)]
    dtypes = {"float16": cupy.float16, "bfloat16": ml_dtypes.bfloat16, "float32": cupy.float32}
    rng = cupy.random.default_rng(0)
    out = []
    for dname, dtype in dtypes.items():
        for m, k, n in shapes:
            a = (rng.standard_normal((m, k), dtype=cupy.float32) / k**0.5).astype(dtype)
            b = rng.standard_normal((k, n), dtype=cupy.float32).astype(dtype)
            bias = (rng.standard_normal(n, dtype=cupy.float32) * 0.1).astype(dtype)
            dout = rng.standard_normal((m, n), dtype=cupy.float32).astype(dtype)
            isz = a.itemsize
            flops = 2 * m * n * k
            shape = (m, k, n)

            # plain matmul: conch Triton kernel vs cuBLAS (bf16 through cupy.matmul is experimental in CuPy 14)
            out.append(
                dict(
                    name="matmul_fwd",
                    shape=shape,
                    dtype=dname,
                    flops=flops,
                    bytes=(m * k + k * n + m * n) * isz,
                    run=lambda a=a, b=b: mm.matmul_forward(a, b),
                    baseline_name="cupy.matmul",
                    baseline=lambda a=a, b=b: cupy.matmul(a, b),
                    check=lambda a=a, b=b: _rel_err(mm.matmul_forward(a, b)[0], cupy.matmul(a, b)),
                )
            )

            # linear + gelu_tanh forward: one kernel (Z saved in the epilogue) vs matmul, add, gelu (fp32 math)
            def base_fwd(a=a, b=b, bias=bias):
                z = cupy.matmul(a, b).astype(cupy.float32) + bias.astype(cupy.float32)
                return _gelu_tanh(cupy, z).astype(a.dtype), z.astype(a.dtype)

            out.append(
                dict(
                    name="linear_gelu_tanh_fwd",
                    shape=shape,
                    dtype=dname,
                    flops=flops,
                    bytes=(m * k + k * n + n + 2 * m * n) * isz,  # read a, b, bias; write out and Z
                    run=lambda a=a, b=b, bias=bias: mm.matmul_forward(a, b, bias, "gelu_tanh"),
                    baseline_name="cupy.matmul + bias + gelu_tanh (elementwise CuPy)",
                    baseline=base_fwd,
                    check=lambda a=a, b=b, bias=bias, f=base_fwd: _rel_err(
                        mm.matmul_forward(a, b, bias, "gelu_tanh")[0], f()[0]
                    ),
                )
            )

            # backward: act' fused into the loads of both products, dbias in the dA kernel, vs unfused CuPy
            _, res = mm.matmul_forward(a, b, bias, "gelu_tanh")
            z = res["r"]

            def base_bwd(a=a, b=b, z=z, dout=dout):
                dz = (dout.astype(cupy.float32) * _gelu_tanh_grad(cupy, z.astype(cupy.float32))).astype(a.dtype)
                return cupy.matmul(dz, b.T), cupy.matmul(a.T, dz), dz.astype(cupy.float32).sum(axis=0)

            def check_bwd(res=res, dout=dout, f=base_bwd):
                got, want = mm.matmul_backward(res, dout), f()
                return max(_rel_err(g, w) for g, w in zip(got, want, strict=True))

            out.append(
                dict(
                    name="linear_gelu_tanh_bwd",
                    shape=shape,
                    dtype=dname,
                    flops=2 * flops,
                    # read dout, Z, a, b once; write da, db, dbias
                    bytes=(2 * m * n + 2 * m * k + 2 * k * n + n) * isz,
                    run=lambda res=res, dout=dout: mm.matmul_backward(res, dout),
                    baseline_name="CuPy dZ = dout * gelu'(Z), cupy.matmul x2, sum",
                    baseline=base_bwd,
                    check=check_bwd,
                )
            )
    return out
