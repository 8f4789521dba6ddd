"""Microbenchmarks: fused LayerNorm / RMSNorm forward and backward vs the unfused CuPy composition."""

from __future__ import annotations


def _rel_err(a, b):
    """max |a - b| / max |b| in float32."""
    a = a.astype("float32")
    b = b.astype("float32")
    return float(abs(a - b).max() / max(float(abs(b).max()), 1e-30))


def cases(size="large"):
    """LayerNorm and RMSNorm over the last dim of (rows, D): rows 8192 and D 768..8192 (large)."""
    import cupy
    import ml_dtypes

    from conch.kernels import norms

    rows, dims = (8192, (768, 1024, 4096, 8192)) if size == "large" else (512, (256, 1024))
    rng = cupy.random.default_rng(0)
    out = []
    for dtype in ("float32", "float16", "bfloat16"):
        dt = ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype
        for D in dims:
            x = rng.standard_normal((rows, D), dtype=cupy.float32).astype(dt)
            dy = rng.standard_normal((rows, D), dtype=cupy.float32).astype(dt)
            w = (rng.standard_normal(D, dtype=cupy.float32) * 0.1 + 1).astype(dt)
            b = rng.standard_normal(D, dtype=cupy.float32).astype(dt)
            nbytes = rows * D * x.itemsize

            def ln_fwd(x=x, w=w, b=b):  # unfused: upcast, mean, var, normalise, affine, downcast
                xf = x.astype(cupy.float32)
                mu = xf.mean(-1, keepdims=True)
                xc = xf - mu
                rstd = 1.0 / cupy.sqrt((xc * xc).mean(-1, keepdims=True) + 1e-5)
                return (xc * rstd * w.astype(cupy.float32) + b.astype(cupy.float32)).astype(x.dtype)

            def ln_bwd(x=x, w=w, dy=dy):
                xf, dyf = x.astype(cupy.float32), dy.astype(cupy.float32)
                mu = xf.mean(-1, keepdims=True)
                rstd = 1.0 / cupy.sqrt(((xf - mu) ** 2).mean(-1, keepdims=True) + 1e-5)
                xhat = (xf - mu) * rstd
                wdy = dyf * w.astype(cupy.float32)
                dx = rstd * (wdy - wdy.mean(-1, keepdims=True) - xhat * (wdy * xhat).mean(-1, keepdims=True))
                return dx.astype(x.dtype), (dyf * xhat).sum(0).astype(w.dtype), dyf.sum(0).astype(w.dtype)

            def rms_fwd(x=x, w=w):
                xf = x.astype(cupy.float32)
                rstd = 1.0 / cupy.sqrt((xf * xf).mean(-1, keepdims=True) + 1e-6)
                return (xf * rstd * w.astype(cupy.float32)).astype(x.dtype)

            def rms_bwd(x=x, w=w, dy=dy):
                xf, dyf = x.astype(cupy.float32), dy.astype(cupy.float32)
                rstd = 1.0 / cupy.sqrt((xf * xf).mean(-1, keepdims=True) + 1e-6)
                xhat = xf * rstd
                wdy = dyf * w.astype(cupy.float32)
                dx = rstd * (wdy - xhat * (wdy * xhat).mean(-1, keepdims=True))
                return dx.astype(x.dtype), (dyf * xhat).sum(0).astype(w.dtype)

            _, ln_res = norms.layer_norm_forward(x, w, b)
            _, rms_res = norms.rms_norm_forward(x, w)
            common = dict(shape=(rows, D), dtype=dtype, flops=0)
            out += [
                dict(
                    name="layer_norm_fwd", bytes=2 * nbytes, **common,  # read x, write y
                    run=lambda x=x, w=w, b=b: norms.layer_norm_forward(x, w, b),
                    baseline_name="cupy layer_norm (mean, var, normalise, affine)", baseline=ln_fwd,
                    check=lambda x=x, w=w, b=b, f=ln_fwd: _rel_err(norms.layer_norm_forward(x, w, b)[0], f()),
                ),
                dict(
                    name="layer_norm_bwd", bytes=3 * nbytes, **common,  # read x, dy, write dx
                    run=lambda r=ln_res, dy=dy: norms.layer_norm_backward(r, dy),
                    baseline_name="cupy layer_norm backward", baseline=ln_bwd,
                    check=lambda r=ln_res, dy=dy, f=ln_bwd: max(
                        _rel_err(a, e) for a, e in zip(norms.layer_norm_backward(r, dy), f(), strict=False)
                    ),
                ),
                dict(
                    name="rms_norm_fwd", bytes=2 * nbytes, **common,
                    run=lambda x=x, w=w: norms.rms_norm_forward(x, w),
                    baseline_name="cupy rms_norm", baseline=rms_fwd,
                    check=lambda x=x, w=w, f=rms_fwd: _rel_err(norms.rms_norm_forward(x, w)[0], f()),
                ),
                dict(
                    name="rms_norm_bwd", bytes=3 * nbytes, **common,
                    run=lambda r=rms_res, dy=dy: norms.rms_norm_backward(r, dy),
                    baseline_name="cupy rms_norm backward", baseline=rms_bwd,
                    check=lambda r=rms_res, dy=dy, f=rms_bwd: max(
                        _rel_err(a, e) for a, e in zip(norms.rms_norm_backward(r, dy), f(), strict=False)
                    ),
                ),
            ]  # fmt: skip
    return out
