"""Microbenchmarks: fused cross-entropy forward (online logsumexp) and backward vs the unfused CuPy composition."""

from __future__ import annotations


def _rel_err(a, b):
    """max |a - b| / max |b| in float32."""
    a = a.astype("float32")
    b = b.astype("float32")
    return float(abs(a - b).max() / max(float(abs(b).max()), 1e-30))


def cases(size="large"):
    """Cross-entropy on logits (N, V): N 4096, V 4096..32768 (large), mean reduction, some ignored rows."""
    import cupy

    from conch.kernels import cross_entropy as ce

    n, all_v = (4096, (4096, 8192, 16384, 32768)) if size == "large" else (256, (1024, 4096))
    out = []
    rng = cupy.random.default_rng(0)
    rows = cupy.arange(n)
    for dtype in ("float32", "float16"):
        for v in all_v:
            x = (rng.standard_normal((n, v), dtype=cupy.float32) * 3).astype(dtype)
            t = rng.integers(0, v, n).astype(cupy.int64)
            t[::17] = -100
            loss, res = ce.cross_entropy_forward(x, t)
            one = cupy.asarray(1.0, dtype=cupy.float32)
            nbytes = n * v * x.itemsize

            def base_fwd(x=x, t=t):
                xf = x.astype(cupy.float32)  # unfused: upcast, max, exp, sum, log, gather, mask, mean
                m = xf.max(axis=1)
                lse = m + cupy.log(cupy.exp(xf - m[:, None]).sum(axis=1))
                valid = t != -100
                xt = xf[rows, cupy.where(valid, t, 0)]
                return cupy.where(valid, lse - xt, 0.0).sum() / valid.sum()

            def base_bwd(x=x, t=t):
                xf = x.astype(cupy.float32)
                m = xf.max(axis=1, keepdims=True)
                p = cupy.exp(xf - m)
                p /= p.sum(axis=1, keepdims=True)
                valid = t != -100
                p[rows, cupy.where(valid, t, 0)] -= 1.0
                p *= (valid / valid.sum())[:, None]
                return p.astype(x.dtype)

            out.append(
                dict(
                    name="cross_entropy_fwd",
                    shape=(n, v),
                    dtype=dtype,
                    flops=0,
                    bytes=nbytes + n * 8 + n * 12,  # read logits and targets, write loss/max/log-sum per row
                    run=lambda x=x, t=t: ce.cross_entropy_forward(x, t),
                    baseline_name="cupy cross-entropy (max, exp, sum, log, gather, mean)",
                    baseline=base_fwd,
                    check=lambda x=x, t=t, f=base_fwd: _rel_err(ce.cross_entropy_forward(x, t)[0], f()),
                )
            )
            out.append(
                dict(
                    name="cross_entropy_bwd",
                    shape=(n, v),
                    dtype=dtype,
                    flops=0,
                    bytes=2 * nbytes + n * 16,  # read logits, write dlogits, per-row target/max/log-sum
                    run=lambda res=res, one=one: ce.cross_entropy_backward(res, one),
                    baseline_name="cupy cross-entropy backward (softmax - onehot) * scale",
                    baseline=base_bwd,
                    check=lambda res=res, one=one, f=base_bwd: _rel_err(ce.cross_entropy_backward(res, one), f()),
                )
            )
    return out
