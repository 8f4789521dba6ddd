"""Microbenchmarks: elementwise activation kernels (forward, backward) vs the unfused CuPy composition.

gelu (exact), silu and sigmoid on a flat tensor of 64M (large) or 1M (small) elements, float32 and
float16 (``sizes``: element counts; ``dtype``: one dtype). Baselines compute in float32 from the storage
dtype, as the kernels do, with CuPy elementwise operations; each case allocates its arrays in ``setup()``.

Example::

    conch bench activations --dtype fp16 --sizes 16777216
"""

from __future__ import annotations

import math
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import harness  # noqa: E402


def _fns(xp):
    """{name: (f(z), f'(x, y))} in float32 with ``xp`` ops; sigmoid's derivative uses the saved output."""
    erf = harness.erf_fn(xp)

    def gelu(z):
        return 0.5 * z * (1 + erf(z / math.sqrt(2)))

    def gelu_grad(z):
        return 0.5 * (1 + erf(z / math.sqrt(2))) + z * xp.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)

    def sig(z):
        return 1 / (1 + xp.exp(-z))

    return {
        "gelu": (gelu, lambda x, y: gelu_grad(x)),
        "silu": (lambda z: z * sig(z), lambda x, y: sig(x) * (1 + x * (1 - sig(x)))),
        "sigmoid": (sig, lambda x, y: y * (1 - y)),  # conch saves y for sigmoid
    }


def _case(xp, act, name, f, df, dtype, n, backward, seed):
    isz = harness.storage_dtype(dtype).itemsize
    f32 = xp.float32

    def setup():
        rng = xp.random.default_rng(seed)
        x = harness.randn(xp, rng, (n,), dtype, scale=2.0)
        if not backward:

            def base():
                return f(x.astype(f32)).astype(x.dtype)

            return {"run": lambda: act.activation_forward(x, name), "baseline": base,
                    "check": lambda: harness.rel_err(act.activation_forward(x, name)[0], base())}  # fmt: skip
        dy = harness.randn(xp, rng, (n,), dtype)
        y, res = act.activation_forward(x, name)

        def base_bwd():
            return (dy.astype(f32) * df(x.astype(f32), y.astype(f32))).astype(x.dtype)

        return {"run": lambda: act.activation_backward(res, dy), "baseline": base_bwd,
                "check": lambda: harness.rel_err(act.activation_backward(res, dy), base_bwd())}  # fmt: skip

    if backward:
        return dict(name=f"{name}_bwd", shape=(n,), dtype=dtype, flops=0, bytes=3 * n * isz,  # read res, dy; write dx
                    baseline_name=f"CuPy elementwise dy * {name}'", setup=setup)  # fmt: skip
    return dict(name=f"{name}_fwd", shape=(n,), dtype=dtype, flops=0, bytes=2 * n * isz,
                baseline_name=f"CuPy elementwise {name}", setup=setup)  # fmt: skip


def cases(size="large", sizes=None, dtype=None, xp=None):
    """gelu, silu, sigmoid forward and backward; arrays are allocated by each case's ``setup()``."""
    from conch.kernels import activations as act

    xp = harness.family_xp(xp)
    ns = harness.pick_sizes(sizes, (64 * 2**20,) if size == "large" else (2**20,))
    out = []
    seed = 100
    for dt in harness.wanted_dtypes(dtype, ("float32", "float16")):
        for n in ns:
            for name, (f, df) in _fns(xp).items():
                for backward in (False, True):
                    seed += 1
                    out.append(_case(xp, act, name, f, df, dt, n, backward, seed))
    return out
