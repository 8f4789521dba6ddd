"""Microbenchmarks: fused counter-based dropout forward/backward vs CuPy (uniform draw, compare, multiply)."""

from __future__ import annotations


def cases(size="large"):
    """Dropout p=0.1 on flat arrays of 2**24 and 2**26 elements (large) or 2**20 (small)."""
    import cupy

    from conch.kernels import dropout as dk

    sizes = (1 << 24, 1 << 26) if size == "large" else (1 << 20,)
    rng = cupy.random.default_rng(0)
    p = 0.1
    out = []
    for dtype in ("float32", "float16"):
        for n in sizes:
            x = rng.standard_normal(n, dtype=cupy.float32).astype(dtype)
            dy = rng.standard_normal(n, dtype=cupy.float32).astype(dtype)
            nbytes = n * x.itemsize
            _, res = dk.dropout_forward(x, p, seed=1, offset=0)

            def base(x=x):  # unfused: a stored mask from CuPy's generator, then a multiply
                keep = rng.random(x.shape, dtype=cupy.float32) >= p
                return (x * keep * cupy.asarray(1 / (1 - p), x.dtype)).astype(x.dtype)

            def check(x=x):
                # same mask as the reference path's Philox on the device; relative error of the values
                y, _ = dk.dropout_forward(x, p, seed=1, offset=0)
                keep = dk.dropout_mask(x.shape, p, 1, 0, cupy)
                ref = cupy.where(keep, x.astype(cupy.float32) * cupy.float32(1 / (1 - p)), 0).astype(x.dtype)
                diff = abs(y.astype(cupy.float32) - ref.astype(cupy.float32)).max()
                return float(diff / max(float(abs(ref.astype(cupy.float32)).max()), 1e-30))

            common = dict(shape=(n,), dtype=dtype, flops=0, bytes=2 * nbytes)  # read x, write y (no mask)
            out += [
                dict(
                    name="dropout_fwd", **common,
                    run=lambda x=x: dk.dropout_forward(x, p, seed=1, offset=0),
                    baseline_name="cupy rand >= p, x * mask / (1-p)", baseline=base, check=check,
                ),
                dict(
                    name="dropout_bwd", **common,  # read dy, write dx: the mask is regenerated
                    run=lambda r=res, dy=dy: dk.dropout_backward(r, dy),
                    baseline_name="cupy rand >= p, dy * mask / (1-p)", baseline=lambda dy=dy: base(dy),
                    check=check,
                ),
            ]  # fmt: skip
    return out
