"""Microbenchmarks: fused softmax / log_softmax forward and backward vs the unfused CuPy composition."""

from __future__ import annotations


def _rel_err(a, b):
    """max |a - b| / max |b| in float32 (NaN-free inputs)."""
    a = a.astype("float32")
    b = b.astype("float32")
    return float(abs(a - b).max() / max(float(abs(b).max()), 1e-30))


def cases(size="large"):
    """Softmax and log-softmax over the last dim of (rows, cols): rows 4096, cols 4096..32768 (large)."""
    import cupy

    from conch.kernels import softmax as sm

    rows, all_cols = (4096, (4096, 8192, 16384, 32768)) if size == "large" else (256, (1024, 4096))
    out = []
    rng = cupy.random.default_rng(0)
    for dtype in ("float32", "float16"):
        for cols in all_cols:
            x = (rng.standard_normal((rows, cols), dtype=cupy.float32) * 3).astype(dtype)
            dy = rng.standard_normal((rows, cols), dtype=cupy.float32).astype(dtype)
            nbytes = rows * cols * x.itemsize
            for log in (False, True):
                y, res = sm.softmax_forward(x, log=log)
                name = "log_softmax" if log else "softmax"

                def base_fwd(x=x, log=log):
                    xf = x.astype(cupy.float32)  # unfused: upcast, max, subtract, exp, sum, divide, downcast
                    z = xf - xf.max(axis=-1, keepdims=True)
                    if log:
                        return (z - cupy.log(cupy.exp(z).sum(axis=-1, keepdims=True))).astype(x.dtype)
                    e = cupy.exp(z)
                    return (e / e.sum(axis=-1, keepdims=True)).astype(x.dtype)

                def base_bwd(y=y, dy=dy, log=log):
                    yf, dyf = y.astype(cupy.float32), dy.astype(cupy.float32)
                    if log:
                        return (dyf - cupy.exp(yf) * dyf.sum(axis=-1, keepdims=True)).astype(y.dtype)
                    return (yf * (dyf - (dyf * yf).sum(axis=-1, keepdims=True))).astype(y.dtype)

                out.append(
                    dict(
                        name=f"{name}_fwd",
                        shape=(rows, cols),
                        dtype=dtype,
                        flops=0,
                        bytes=2 * nbytes,  # read x, write y
                        run=lambda x=x, log=log: sm.softmax_forward(x, log=log),
                        baseline_name=f"cupy {name} (max, exp, sum, div)",
                        baseline=base_fwd,
                        check=lambda x=x, log=log, f=base_fwd: _rel_err(sm.softmax_forward(x, log=log)[0], f()),
                    )
                )
                out.append(
                    dict(
                        name=f"{name}_bwd",
                        shape=(rows, cols),
                        dtype=dtype,
                        flops=0,
                        bytes=3 * nbytes,  # read y, dy, write dx
                        run=lambda res=res, dy=dy, log=log: sm.softmax_backward(res, dy, log=log),
                        baseline_name=f"cupy {name} backward",
                        baseline=base_bwd,
                        check=lambda res=res, dy=dy, log=log, f=base_bwd: _rel_err(
                            sm.softmax_backward(res, dy, log=log), f()
                        ),
                    )
                )
    return out
