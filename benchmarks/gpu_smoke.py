"""GPU smoke check in seconds: versions, one shared CUDA stream for CuPy/PyTorch/Triton, a few conch kernels right.

Run first on a GPU machine (``benchmarks/device_check.sh`` does), so a broken setup is named in one screen
before the long stages start::

    python benchmarks/gpu_smoke.py          # exit 0: all checks passed; 1: a check failed; 2: no usable GPU

Checks, each printed as one ``ok``/``FAIL`` line:

* streams: CuPy's current stream, PyTorch's current stream and the stream Triton launches on (Triton's
  NVIDIA driver asks PyTorch for it when torch is importable) must be the same one; in the default setup
  all three are the legacy default stream (handle 0), so conch's Triton kernels and CuPy's work are
  ordered without synchronisation.
* kernels: fused matmul+bias+gelu (float16, bfloat16, tf32, exact float32), softmax, layer_norm,
  cross-entropy and dropout on CuPy arrays through the Triton path (the launch counter must move), each
  against a float64 NumPy reference on fresh random inputs: ``max |out - ref| / max |ref|`` under the
  dtype's tolerance, NaN never.
* autograd: a Linear(gelu) + cross-entropy forward and backward on ``cuda`` against the same on the CPU.
"""

from __future__ import annotations

import math
import os
import sys
import time
import traceback

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import harness  # noqa: E402

RESULTS: list = []


def report(name, ok, detail=""):
    RESULTS.append((name, ok))
    print(f"{'ok  ' if ok else 'FAIL'}  {name:<34} {detail}", flush=True)


def check(name):
    """Decorator: run the check, print ok/FAIL with its detail string or the exception."""

    def deco(fn):
        t0 = time.perf_counter()
        try:
            ok, detail = fn()
        except Exception as e:
            ok, detail = False, f"{type(e).__name__}: {str(e)[:300]}"
            traceback.print_exc(limit=3, file=sys.stdout)
        report(name, ok, f"{detail} ({time.perf_counter() - t0:.1f} s)")
        return fn

    return deco


def rel(got, ref):
    import numpy as np

    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.abs(got - ref).max() / max(float(np.abs(ref).max()), 1e-30))


def main() -> int:
    import numpy as np

    print(f"python {sys.version.split()[0]}  numpy {np.__version__}")
    for m in ("cupy", "triton", "torch", "ml_dtypes"):
        try:
            mod = __import__(m)
            print(f"{m} {getattr(mod, '__version__', '?')}")
        except Exception as e:
            print(f"{m}: NOT IMPORTABLE ({type(e).__name__}: {e})")
    cp = harness.get_cupy()
    if cp is None:
        try:
            from conch.kernels import _cupy

            why = _cupy.unavailable_reason()
        except Exception as e:
            why = f"conch not importable: {type(e).__name__}: {e}"
        print(f"gpu_smoke: no usable GPU ({why})")
        return 2
    rt = cp.cuda.runtime
    props = rt.getDeviceProperties(cp.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    free, total = rt.memGetInfo()
    print(f"GPU {name}, cc {props['major']}.{props['minor']}, {props['multiProcessorCount']} SMs, "
          f"{free / 2**30:.1f} of {total / 2**30:.1f} GiB free; CUDA runtime {rt.runtimeGetVersion()}, "
          f"driver {rt.driverGetVersion()}")  # fmt: skip

    import conch
    from conch.kernels import _launch, norms
    from conch.kernels import cross_entropy as ce
    from conch.kernels import dropout as dk
    from conch.kernels import matmul as mm
    from conch.kernels import softmax as sm

    @check("streams: cupy = torch = triton")
    def _():
        if getattr(cp, "__simulated__", False):  # conch.kernels.sim: launches run on the host, in program order
            return True, "simulated device: no streams to compare (launches run in order on the host)"
        cs = cp.cuda.get_current_stream().ptr
        parts = [f"cupy {cs}"]
        same = True
        try:
            import torch

            ts = torch.cuda.current_stream().cuda_stream
            parts.append(f"torch {ts}")
            same &= ts == cs
        except ImportError:
            parts.append("torch absent")
        import triton

        drv = triton.runtime.driver.active
        tr = drv.get_current_stream(drv.get_current_device())
        parts.append(f"triton {tr}")
        same &= tr == cs
        env = os.environ.get("CUPY_CUDA_PER_THREAD_DEFAULT_STREAM")
        return same, ", ".join(parts) + (" (0 = legacy default stream)" if cs == 0 else "") + (
            f"; CUPY_CUDA_PER_THREAD_DEFAULT_STREAM={env}" if env else ""
        )

    rng = np.random.default_rng(int(time.time()))  # fresh inputs every run

    def dev(x, dtype):
        return cp.asarray(np.asarray(x, np.float32).astype(harness.storage_dtype(dtype)))

    def host(x):
        return cp.asnumpy(x).astype(np.float64)

    tols = {"float16": 5e-3, "bfloat16": 3e-2, "tf32": 5e-3, "float32": 1e-4}
    for dtype in ("float16", "bfloat16", "tf32", "float32"):

        @check(f"matmul+bias+gelu {dtype}")
        def _(dtype=dtype):
            m, k, n = 300, 200, 136  # odd sizes: masked edges
            a, b, bias = rng.standard_normal((m, k)) / math.sqrt(k), rng.standard_normal((k, n)), rng.standard_normal(n)
            da, db, dbias = dev(a, dtype), dev(b, dtype), dev(bias, dtype)
            before = _launch.LAUNCHES["_matmul_kernel"]
            out, _ = mm.matmul_forward(da, db, dbias, "gelu", allow_tf32=dtype != "float32")
            cp.cuda.Device().synchronize()
            launched = _launch.LAUNCHES["_matmul_kernel"] - before
            z = host(da) @ host(db) + host(dbias)
            from scipy.special import erf

            err = rel(host(out), 0.5 * z * (1 + erf(z / math.sqrt(2))))
            tol = tols[dtype]
            return launched > 0 and err <= tol, f"max rel err {err:.2e} (tol {tol:g}), {launched} launch"

    @check("softmax float32 / layer_norm bf16")
    def _():
        x = rng.standard_normal((257, 1000)) * 3
        y, _ = sm.softmax_forward(dev(x, "float32"))
        e = np.exp(x - x.max(1, keepdims=True))
        err1 = rel(host(y), e / e.sum(1, keepdims=True))
        w, b = rng.standard_normal(1000) * 0.1 + 1, rng.standard_normal(1000)
        xb, wb, bb = dev(x, "bfloat16"), dev(w, "bfloat16"), dev(b, "bfloat16")
        y2, _ = norms.layer_norm_forward(xb, wb, bb)
        xh = host(xb)
        ref = (xh - xh.mean(1, keepdims=True)) / np.sqrt(xh.var(1, keepdims=True) + 1e-5) * host(wb) + host(bb)
        err2 = rel(host(y2), ref)
        return err1 <= 1e-4 and err2 <= 3e-2, f"softmax {err1:.2e}, layer_norm {err2:.2e}"

    @check("cross_entropy fp16 / dropout")
    def _():
        x = rng.standard_normal((130, 5000)) * 3
        t = rng.integers(0, 5000, 130)
        xd = dev(x, "float16")
        loss, _ = ce.cross_entropy_forward(xd, cp.asarray(t))
        xh = host(xd)
        lse = xh.max(1) + np.log(np.exp(xh - xh.max(1, keepdims=True)).sum(1))
        err = rel(host(loss), (lse - xh[np.arange(130), t]).mean())
        v = dev(rng.standard_normal(10_000), "float32")
        y, _ = dk.dropout_forward(v, 0.25, seed=3, offset=0)
        keep = cp.asnumpy(dk.dropout_mask((10_000,), 0.25, 3, 0, np))
        err_d = rel(host(y), np.where(keep, host(v) / 0.75, 0.0))
        frac = 1 - keep.mean()
        return err <= 5e-3 and err_d <= 1e-6 and abs(frac - 0.25) < 0.03, (
            f"cross_entropy {err:.2e}, dropout {err_d:.2e} (dropped {frac:.3f} of 0.25)"
        )

    @check("autograd Linear(gelu)+CE cuda vs cpu")
    def _():
        from conch import nn
        from conch.nn import functional as F

        conch.manual_seed(0)
        lin = nn.Linear(96, 40, activation="gelu")
        x = rng.standard_normal((64, 96)).astype(np.float32)
        t = rng.integers(0, 40, 64)
        grads = {}
        for d in ("cpu", "cuda"):
            lin.to(d)
            lin.zero_grad()
            loss = F.cross_entropy(lin(conch.tensor(x, device=d)), conch.tensor(t, device=d))
            loss.backward()
            grads[d] = (float(loss.item()), lin.weight.grad.cpu().numpy().copy(), lin.bias.grad.cpu().numpy().copy())
        errs = [rel(grads["cuda"][i], grads["cpu"][i]) for i in range(3)]
        return max(errs) <= 5e-3, "loss/dW/db rel diff " + ", ".join(f"{e:.1e}" for e in errs) + " (tf32 on)"

    failed = [n for n, ok in RESULTS if not ok]
    print(f"gpu_smoke: {len(RESULTS) - len(failed)} of {len(RESULTS)} checks passed"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
