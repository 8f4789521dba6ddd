"""``conch bench``: kernel microbenchmarks against cuBLAS/CuPy (GPU) or NumPy (CPU), with PyTorch when importable.

Usage::

    conch bench matmul --dtype bf16 --sizes 1024,4096,8192
    conch bench all --json results/kernels.json --plot results/kernels.png
    python -m conch.bench softmax --repeats 50

On a GPU each family's cases come from ``benchmarks/bench_<family>.py`` (``cases(size, sizes, dtype)``, see
``benchmarks/harness.py`` for the case contract: each case allocates its arrays in ``setup()`` right before
it is timed and frees them right after) and are timed with CuPy events. Without a GPU the command
says so and times conch's reference paths (NumPy) against plain NumPy compositions, and PyTorch CPU when it
is installed, at small sizes with ``time.perf_counter``.

Every case is checked before it is timed: a result off by more than the per-dtype tolerance makes the
command print ``WRONG RESULT`` lines and exit with status 1 after the table.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import math
import os
import sys
import time
from pathlib import Path

from conch.kernels._act_names import ACTIVATIONS  # the one list of activation names (no Triton import)

FAMILIES = ("matmul", "activations", "softmax", "cross_entropy", "norms", "dropout", "attention")
FAMILIES += ("linear_cross_entropy",)  # benchmarks/bench_linear_cross_entropy.py brings its own cpu_cases
#: bench_*.py files that are end-to-end scripts, not kernel families.
_NOT_FAMILIES = ("e2e", "overhead", "checkpoint", "amp")


# ----------------------------------------------------------------------------------------------------------------
# Locating benchmarks/ and its modules
# ----------------------------------------------------------------------------------------------------------------


def bench_dir(explicit=None) -> Path:
    """The benchmarks folder: ``explicit``, ``$CONCH_BENCH_DIR``, or ``<checkout>/benchmarks`` beside framework/."""
    for cand in (explicit, os.environ.get("CONCH_BENCH_DIR")):
        if cand:
            p = Path(cand)
            if not (p / "harness.py").is_file():
                raise FileNotFoundError(f"benchmark folder {p} has no harness.py")
            return p
    p = Path(__file__).resolve().parent.parent / "benchmarks"  # resolve(): also right through a symlinked package
    if not (p / "harness.py").is_file():
        raise FileNotFoundError(
            f"conch bench needs the benchmarks/ folder of a source checkout (looked in {p}); "
            "install conch editable from the repository or set CONCH_BENCH_DIR"
        )
    return p


def load_harness(bdir: Path):
    """Import ``harness`` from ``bdir`` (which also lets bench files ``import harness``)."""
    if str(bdir) not in sys.path:
        sys.path.insert(0, str(bdir))
    import harness

    if Path(harness.__file__).resolve().parent != bdir.resolve():  # another folder's harness was imported first
        spec = importlib.util.spec_from_file_location("harness", bdir / "harness.py")
        harness = importlib.util.module_from_spec(spec)
        sys.modules["harness"] = harness
        spec.loader.exec_module(harness)
    return harness


def discover(bdir: Path) -> list:
    """Kernel families with a ``bench_<family>.py`` file in ``bdir`` (known families first)."""
    found = sorted(p.stem[len("bench_") :] for p in bdir.glob("bench_*.py"))
    fams = [f for f in found if not f.startswith(_NOT_FAMILIES)]
    return [f for f in FAMILIES if f in fams] + [f for f in fams if f not in FAMILIES]


def load_family(bdir: Path, family: str):
    """Import ``bench_<family>.py`` from ``bdir``; None when the file does not exist."""
    path = bdir / f"bench_{family}.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(f"conch_bench_{family}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _call_cases(fn, size, sizes, dtype):
    """Call ``fn(size=...)``, passing ``sizes``/``dtype`` too when its signature takes them.

    Returns (cases, took_sizes, took_dtype) so the caller filters only what the function did not.
    """
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    kw = {"size": size}
    took_sizes = sizes is not None and "sizes" in params
    took_dtype = dtype is not None and "dtype" in params
    if took_sizes:
        kw["sizes"] = list(sizes)
    if took_dtype:
        kw["dtype"] = dtype
    return list(fn(**kw)), took_sizes, took_dtype


def filter_cases(harness, cases, sizes=None, dtype=None) -> list:
    """Keep cases whose dtype is ``dtype`` and whose last shape entry is in ``sizes`` (None keeps all)."""
    out = []
    want = harness.canonical_dtype(dtype) if dtype else None
    for c in cases:
        if want and harness.canonical_dtype(c["dtype"]) != want:
            continue
        if sizes and int(tuple(c["shape"])[-1]) not in sizes:
            continue
        out.append(c)
    return out


# ----------------------------------------------------------------------------------------------------------------
# PyTorch baselines built from a case's name, shape and dtype (used when a case brings no "torch" callable)
# ----------------------------------------------------------------------------------------------------------------


def torch_baseline(torch, name, shape, dtype, device):
    """A zero-arg PyTorch callable for the same problem on its own random inputs, or None if ambiguous.

    Covers square matmul (shape (n, n, n)), softmax/log_softmax/layer_norm/rms_norm/cross_entropy
    forward over (rows, cols), causal attention forward over (batch·heads, D, T) and elementwise
    activations forward. Inputs are drawn once here.
    """
    import torch.nn.functional as F

    tdt = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "tf32": torch.float32,
           "float64": torch.float64}.get(dtype)  # fmt: skip
    if tdt is None:
        return None
    shape = tuple(int(s) for s in shape)
    g = torch.Generator(device=device).manual_seed(0)

    def randn(*s):
        return torch.randn(*s, generator=g, device=device, dtype=torch.float32).to(tdt)

    base = name[:-4] if name.endswith("_fwd") else name
    if base == "matmul" and len(shape) == 3 and len(set(shape)) == 1:
        n = shape[0]
        a, b = randn(n, n), randn(n, n)
        out = torch.empty(n, n, device=device, dtype=tdt)
        tf32 = dtype == "tf32"

        def fn():
            if device != "cpu":
                torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.matmul(a, b, out=out)

        return fn
    if len(shape) == 2 and base in ("softmax", "log_softmax", "layer_norm", "rms_norm", "cross_entropy"):
        rows, cols = shape
        x = randn(rows, cols)
        if base == "softmax":
            return lambda: torch.softmax(x, -1)
        if base == "log_softmax":
            return lambda: torch.log_softmax(x, -1)
        w, b = randn(cols), randn(cols)
        if base == "layer_norm":
            return lambda: F.layer_norm(x, (cols,), w, b)
        if base == "rms_norm":
            if not hasattr(F, "rms_norm"):
                return None
            return lambda: F.rms_norm(x, (cols,), w)
        t = torch.randint(0, cols, (rows,), generator=g, device=device)
        return lambda: F.cross_entropy(x, t)
    if base == "attention" and len(shape) == 3:  # (batch·heads, D, T), causal, as the attention cases
        bh, d, t = shape
        q, k, v = randn(1, bh, t, d), randn(1, bh, t, d), randn(1, bh, t, d)
        return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if base in ACTIVATIONS:
        x = randn(*shape)
        fns = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
               "elu": F.elu, "leaky_relu": F.leaky_relu,
               "gelu_tanh": lambda v: F.gelu(v, approximate="tanh")}  # fmt: skip
        f = fns[base]
        return lambda: f(x)
    return None


def attach_torch(cases, device):
    """Give each case without a ``torch`` callable a ``torch_factory`` from :func:`torch_baseline`.

    The factory runs when the case is timed, so PyTorch's inputs exist for one case at a time.
    """
    try:
        import torch
    except Exception:
        return cases
    if device != "cpu" and not torch.cuda.is_available():
        return cases
    for c in cases:
        if "torch" in c or "torch_factory" in c:
            continue
        c["torch_factory"] = lambda c=c: torch_baseline(torch, c["name"], c["shape"], _canon(c["dtype"]), device)
        c.setdefault("torch_name", f"torch {torch.__version__}")
    return cases


def _canon(dtype):
    s = str(getattr(dtype, "name", dtype)).lower()
    return {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32", "half": "float16"}.get(s, s)


# ----------------------------------------------------------------------------------------------------------------
# CPU cases: conch's reference paths (NumPy) against plain NumPy compositions
# ----------------------------------------------------------------------------------------------------------------


def _rel(a, b):
    import numpy as np

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-30))


def _np_dtype(dtype):
    import ml_dtypes
    import numpy as np

    return {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32, "tf32": np.float32,
            "float64": np.float64}[dtype]  # fmt: skip


def _np_gelu(z):
    from scipy.special import erf

    return 0.5 * z * (1.0 + erf(z * (1.0 / math.sqrt(2.0))))


def cpu_cases(family, sizes=None, dtype="float32") -> list:
    """Small CPU cases for ``family``: conch.kernels' reference path vs a NumPy composition.

    ``sizes``: square matmul sizes (matmul), column counts at 256 rows (softmax, cross_entropy, norms),
    element counts (activations, dropout). Each baseline computes in float32 (float64 for float64 input)
    and casts back, as conch's reference path does.
    """
    import numpy as np

    from conch.kernels import activations as act
    from conch.kernels import cross_entropy as ce
    from conch.kernels import dropout as dr
    from conch.kernels import matmul as mm
    from conch.kernels import norms
    from conch.kernels import softmax as sm

    dt = _np_dtype(dtype)
    ct = np.float64 if dtype == "float64" else np.float32
    isz = np.dtype(dt).itemsize
    rng = np.random.default_rng(0)

    def randn(*shape):
        return rng.standard_normal(shape, dtype=np.float32).astype(dt)

    base = dict(dtype=dtype, baseline_name="numpy")
    out = []
    rows = 256
    if family == "matmul":
        for n in sizes or (256, 512):
            a, b, bias = randn(n, n), randn(n, n), randn(n)

            def mm_base(a=a, b=b):
                return np.matmul(a.astype(ct), b.astype(ct)).astype(dt)

            def lin_base(a=a, b=b, bias=bias):
                return _np_gelu(np.matmul(a.astype(ct), b.astype(ct)) + bias.astype(ct)).astype(dt)

            out.append(dict(base, name="matmul", shape=(n, n, n), flops=2 * n**3, bytes=3 * n * n * isz,
                            run=lambda a=a, b=b: mm.matmul_forward(a, b),
                            baseline=mm_base, baseline_name="numpy.matmul",
                            check=lambda a=a, b=b, f=mm_base: _rel(mm.matmul_forward(a, b)[0], f())))  # fmt: skip
            out.append(dict(base, name="linear_bias_gelu", shape=(n, n, n), flops=2 * n**3 + 10 * n * n,
                            bytes=3 * n * n * isz + n * isz,
                            run=lambda a=a, b=b, bias=bias: mm.matmul_forward(a, b, bias, "gelu"),
                            baseline=lin_base, baseline_name="numpy matmul + bias + gelu",
                            check=lambda a=a, b=b, bias=bias, f=lin_base: _rel(
                                mm.matmul_forward(a, b, bias, "gelu")[0], f())))  # fmt: skip
    elif family == "activations":
        np_acts = {"relu": lambda z: np.maximum(z, 0), "gelu": _np_gelu, "silu": lambda z: z / (1 + np.exp(-z))}
        for n in sizes or (2**18, 2**20):
            x = randn(n)
            dy = randn(n)
            for name, f in np_acts.items():

                def fwd_base(x=x, f=f):
                    return f(x.astype(ct)).astype(dt)

                _, res = act.activation_forward(x, name)
                out.append(dict(base, name=f"{name}_fwd", shape=(n,), flops=0, bytes=2 * n * isz,
                                run=lambda x=x, name=name: act.activation_forward(x, name),
                                baseline=fwd_base, baseline_name=f"numpy {name}",
                                check=lambda x=x, name=name, f=fwd_base: _rel(
                                    act.activation_forward(x, name)[0], f())))  # fmt: skip
                if name == "gelu":
                    from scipy.special import erf

                    def gelu_bwd(x=x, dy=dy):
                        z = x.astype(ct)
                        d = 0.5 * (1 + erf(z / math.sqrt(2))) + z * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
                        return (dy.astype(ct) * d).astype(dt)

                    out.append(dict(base, name="gelu_bwd", shape=(n,), flops=0, bytes=3 * n * isz,
                                    run=lambda res=res, dy=dy: act.activation_backward(res, dy),
                                    baseline=gelu_bwd, baseline_name="numpy gelu'(x) * dy",
                                    check=lambda res=res, dy=dy, f=gelu_bwd: _rel(
                                        act.activation_backward(res, dy), f())))  # fmt: skip
    elif family == "softmax":
        for cols in sizes or (1024, 4096):
            x, dy = randn(rows, cols), randn(rows, cols)
            nb = rows * cols * isz
            for log in (False, True):
                name = "log_softmax" if log else "softmax"
                y, res = sm.softmax_forward(x, log=log)

                def fwd_base(x=x, log=log):
                    z = x.astype(ct)
                    z = z - z.max(-1, keepdims=True)
                    if log:
                        return (z - np.log(np.exp(z).sum(-1, keepdims=True))).astype(dt)
                    e = np.exp(z)
                    return (e / e.sum(-1, keepdims=True)).astype(dt)

                def bwd_base(y=y, dy=dy, log=log):
                    yf, d = y.astype(ct), dy.astype(ct)
                    if log:
                        return (d - np.exp(yf) * d.sum(-1, keepdims=True)).astype(dt)
                    return (yf * (d - (d * yf).sum(-1, keepdims=True))).astype(dt)

                out.append(dict(base, name=f"{name}_fwd", shape=(rows, cols), flops=0, bytes=2 * nb,
                                run=lambda x=x, log=log: sm.softmax_forward(x, log=log),
                                baseline=fwd_base, baseline_name=f"numpy {name}",
                                check=lambda x=x, log=log, f=fwd_base: _rel(
                                    sm.softmax_forward(x, log=log)[0], f())))  # fmt: skip
                out.append(dict(base, name=f"{name}_bwd", shape=(rows, cols), flops=0, bytes=3 * nb,
                                run=lambda res=res, dy=dy, log=log: sm.softmax_backward(res, dy, log=log),
                                baseline=bwd_base, baseline_name=f"numpy {name} backward",
                                check=lambda res=res, dy=dy, log=log, f=bwd_base: _rel(
                                    sm.softmax_backward(res, dy, log=log), f())))  # fmt: skip
    elif family == "cross_entropy":
        for v in sizes or (1024, 4096):
            x = randn(rows, v)
            t = rng.integers(0, v, rows).astype(np.int64)
            t[::17] = -100
            idx = np.arange(rows)
            _, res = ce.cross_entropy_forward(x, t)
            one = np.asarray(1.0, dtype=np.float32)

            def ce_fwd(x=x, t=t, idx=idx):
                z = x.astype(ct)
                m = z.max(1)
                lse = m + np.log(np.exp(z - m[:, None]).sum(1))
                valid = t != -100
                return np.where(valid, lse - z[idx, np.where(valid, t, 0)], 0.0).sum() / valid.sum()

            def ce_bwd(x=x, t=t, idx=idx):
                z = x.astype(ct)
                p = np.exp(z - z.max(1, keepdims=True))
                p /= p.sum(1, keepdims=True)
                valid = t != -100
                p[idx, np.where(valid, t, 0)] -= 1.0
                return (p * (valid / valid.sum())[:, None]).astype(dt)

            nb = rows * v * isz
            out.append(dict(base, name="cross_entropy_fwd", shape=(rows, v), flops=0, bytes=nb + rows * 8,
                            run=lambda x=x, t=t: ce.cross_entropy_forward(x, t),
                            baseline=ce_fwd, baseline_name="numpy logsumexp - x[target], mean",
                            check=lambda x=x, t=t, f=ce_fwd: _rel(ce.cross_entropy_forward(x, t)[0], f())))  # fmt: skip
            out.append(dict(base, name="cross_entropy_bwd", shape=(rows, v), flops=0, bytes=2 * nb + rows * 8,
                            run=lambda res=res, one=one: ce.cross_entropy_backward(res, one),
                            baseline=ce_bwd, baseline_name="numpy (softmax - onehot) / n",
                            check=lambda res=res, one=one, f=ce_bwd: _rel(
                                ce.cross_entropy_backward(res, one), f())))  # fmt: skip
    elif family == "norms":
        for cols in sizes or (1024, 4096):
            x, w, b = randn(rows, cols), randn(cols), randn(cols)
            nb = rows * cols * isz

            def ln_base(x=x, w=w, b=b):
                z = x.astype(ct)
                mu = z.mean(-1, keepdims=True)
                var = ((z - mu) ** 2).mean(-1, keepdims=True)
                return ((z - mu) / np.sqrt(var + 1e-5) * w.astype(ct) + b.astype(ct)).astype(dt)

            def rms_base(x=x, w=w):
                z = x.astype(ct)
                return (z / np.sqrt((z * z).mean(-1, keepdims=True) + 1e-6) * w.astype(ct)).astype(dt)

            out.append(dict(base, name="layer_norm_fwd", shape=(rows, cols), flops=0, bytes=2 * nb + 2 * cols * isz,
                            run=lambda x=x, w=w, b=b: norms.layer_norm_forward(x, w, b),
                            baseline=ln_base, baseline_name="numpy layer norm",
                            check=lambda x=x, w=w, b=b, f=ln_base: _rel(
                                norms.layer_norm_forward(x, w, b)[0], f())))  # fmt: skip
            out.append(dict(base, name="rms_norm_fwd", shape=(rows, cols), flops=0, bytes=2 * nb + cols * isz,
                            run=lambda x=x, w=w: norms.rms_norm_forward(x, w),
                            baseline=rms_base, baseline_name="numpy rms norm",
                            check=lambda x=x, w=w, f=rms_base: _rel(norms.rms_norm_forward(x, w)[0], f())))  # fmt: skip
    elif family == "dropout":
        p = 0.1
        for n in sizes or (2**18, 2**20):
            x = randn(n)
            gen = np.random.default_rng(1)

            def drop_base(x=x, gen=gen):
                return (x.astype(ct) * (gen.random(x.shape, dtype=np.float32) >= p) / (1 - p)).astype(dt)

            def drop_expected(x=x, n=n):
                return (x.astype(ct) * dr.dropout_mask(n, p, seed=7, offset=0) / (1 - p)).astype(dt)

            seeds = iter(range(8, 1 << 62))  # a fresh seed per timed call: the mask cache must not serve it
            out.append(dict(base, name="dropout_fwd", shape=(n,), flops=0, bytes=2 * n * isz,
                            run=lambda x=x, seeds=seeds: dr.dropout_forward(x, p, seed=next(seeds)),
                            baseline=drop_base, baseline_name="numpy uniform mask * x / (1-p)",
                            check=lambda x=x, f=drop_expected: _rel(
                                dr.dropout_forward(x, p, seed=7)[0], f())))  # fmt: skip
    elif family == "attention":
        from conch.kernels import attention as at

        for t in sizes or (128, 256):
            q, k, v = randn(4, t, 64), randn(4, t, 64), randn(4, t, 64)

            def attn_base(q=q, k=k, v=v):
                s = q.astype(ct) @ k.astype(ct).transpose(0, 2, 1) * 0.125
                s = np.where(np.tril(np.ones((s.shape[-1],) * 2, bool)), s, -np.inf)
                p = np.exp(s - s.max(-1, keepdims=True))
                return ((p / p.sum(-1, keepdims=True)) @ v.astype(ct)).astype(dt)

            out.append(dict(base, name="attention_fwd", shape=(4, 64, t), flops=2 * 4 * t * t * 64,
                            bytes=4 * 4 * t * 64 * isz,
                            run=lambda q=q, k=k, v=v: at.attention_forward(q, k, v, causal=True),
                            baseline=attn_base, baseline_name="numpy causal softmax(q kᵀ/√d) v",
                            check=lambda q=q, k=k, v=v, f=attn_base: _rel(
                                at.attention_forward(q, k, v, causal=True)[0], f())))  # fmt: skip
    else:
        raise ValueError(f"no CPU benchmark cases for kernel family {family!r}; known: {', '.join(FAMILIES)}")
    return out


# ----------------------------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------------------------


def _sizes(text):
    if text is None:
        return None
    try:
        vals = [int(float(s)) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes takes comma-separated integers, got {text!r}") from None
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"--sizes takes positive integers, got {text!r}")
    return vals


def add_parser(subparsers):
    """Add the ``bench`` subcommand to ``conch``'s subparsers (sets ``fn=run``)."""
    p = subparsers.add_parser(
        "bench",
        help="kernel microbenchmarks vs cuBLAS/CuPy (GPU) or NumPy (CPU)",
        description=__doc__.split("\n\n")[0],
    )
    configure_parser(p)
    p.set_defaults(fn=run)
    return p


def configure_parser(p):
    p.add_argument("kernel", nargs="?", default="all",
                   help=f"kernel family ({', '.join(FAMILIES)}) or 'all' (default)")  # fmt: skip
    p.add_argument("--dtype", default=None, help="fp16, bf16, fp32 or tf32 (default: every dtype the cases offer "
                   "on a GPU, fp32 on the CPU)")  # fmt: skip
    p.add_argument("--sizes", type=_sizes, default=None,
                   help="comma-separated sizes: matmul n (n^3), columns of row-wise ops, elements of "
                        "elementwise ops (GPU: passed to cases() when it takes `sizes`, else a filter on the "
                        "last dim)")  # fmt: skip
    p.add_argument("--size", choices=("small", "large"), default=None,
                   help="case set: large (GPU default) or small (CPU default)")  # fmt: skip
    p.add_argument("--repeats", type=int, default=None, help="timed calls per implementation (median taken)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before timing (after the check)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds at most per implementation and case (fewer repeats when slow)")  # fmt: skip
    p.add_argument("--max-seconds", type=float, default=None,
                   help="start no case after this many seconds (the rest are reported as not run); "
                        "the JSON is rewritten after every case, so a killed run keeps what it measured")  # fmt: skip
    p.add_argument(
        "--wide",
        action="store_true",
        help="the full table: baseline names and times, torch's time, max error, how peaks were measured",
    )
    p.add_argument("--json", metavar="FILE", default=None, help="write the results as JSON (schema conch-bench/1)")
    p.add_argument("--markdown", metavar="FILE", default=None, help="write the table as markdown")
    p.add_argument("--plot", metavar="FILE.png", default=None, help="throughput against size, one line per impl")
    p.add_argument("--cpu", action="store_true", help="benchmark the CPU reference paths even with a GPU present")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch baseline")
    p.add_argument("--bench-dir", default=None, help="folder holding harness.py and bench_<family>.py")
    return p


def _families(kernel, available):
    if kernel in (None, "all"):
        return list(available)
    fams = [k.strip() for k in kernel.split(",") if k.strip()]
    return fams


def _progress(i_total, after=None):
    i, total = [0], i_total

    def cb(row):
        i[0] += 1
        if after is not None:
            after(row)
        if row["ok"]:
            thr = f"{row['throughput']:.4g} {row['unit']}" if row.get("throughput") is not None else "-"
            pct = f", {row['pct_peak']:.0f}% of peak" if row.get("pct_peak") is not None else ""
            sp = f", x{row['speedup']:.2f} vs baseline" if row.get("speedup") else ""
            msg = f"{row['time_ms']:.4g} ms ({thr}{pct}{sp})"
        else:
            msg = row["error"]
        shape = "x".join(map(str, row["shape"]))
        print(f"[{i[0]}/{total}] {row['op']} {shape} {row['dtype']}: {msg}", file=sys.stderr, flush=True)

    return cb


def run(args) -> int:
    """Run ``conch bench`` with parsed ``args``; returns the exit status (1 when any kernel is wrong)."""
    saved = os.environ.get("CONCH_KERNELS")
    try:
        return _run(args)
    finally:  # CPU mode forces the reference path for its own calls only
        if saved is None:
            os.environ.pop("CONCH_KERNELS", None)
        else:
            os.environ["CONCH_KERNELS"] = saved


def _run(args) -> int:
    bdir = bench_dir(args.bench_dir)
    harness = load_harness(bdir)
    env = harness.Env.detect(force_cpu=args.cpu)
    dtype = harness.canonical_dtype(args.dtype) if args.dtype else None
    if dtype is not None and dtype not in harness.TOLERANCES:
        print(f"conch bench: unknown --dtype {args.dtype!r}; use fp16, bf16, fp32, tf32 or fp64", file=sys.stderr)
        return 2
    notes = []
    cases = []
    if env.gpu:
        size = args.size or "large"
        fams = _families(args.kernel, discover(bdir))
        for fam in fams:
            mod = load_family(bdir, fam)
            if mod is None or not hasattr(mod, "cases"):
                notes.append(f"{fam}: benchmarks/bench_{fam}.py with cases() not found, skipped")
                continue
            try:
                got, took_sizes, took_dtype = _call_cases(mod.cases, size, args.sizes, dtype)
            except Exception as e:
                notes.append(f"{fam}: cases() raised {type(e).__name__}: {e}")
                continue
            cases += filter_cases(harness, got, None if took_sizes else args.sizes, None if took_dtype else dtype)
        if not args.no_torch:
            attach_torch(cases, "cuda")
        repeats = args.repeats or 50
        budget = args.budget or 1.0
    else:
        why = "forced by --cpu" if args.cpu else _no_gpu_reason()
        print(f"conch bench: no usable GPU ({why}); timing conch's CPU reference paths against NumPy"
              + ("" if args.no_torch or harness.get_torch() is None else " and PyTorch CPU")
              + " at small sizes with perf_counter", flush=True)  # fmt: skip
        if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
            notes.append("TRITON_INTERPRET is set: forced CONCH_KERNELS=reference (the interpreter is not timed)")
        os.environ["CONCH_KERNELS"] = "reference"
        cpu_dtype = "float32" if dtype in (None, "tf32") else dtype
        if dtype == "tf32":
            notes.append("tf32 has no CPU meaning: benchmarked float32")
        fams = _families(args.kernel, FAMILIES)
        for fam in fams:
            mod = load_family(bdir, fam)
            try:
                if mod is not None and hasattr(mod, "cpu_cases"):  # a family may bring its own CPU cases
                    got, _, _ = _call_cases(mod.cpu_cases, args.size or "small", args.sizes, cpu_dtype)
                    cases += filter_cases(harness, got, None, None)
                else:
                    cases += cpu_cases(fam, args.sizes, cpu_dtype)
            except ValueError as e:
                print(f"conch bench: {e}", file=sys.stderr)
                return 2
        if not args.no_torch:
            attach_torch(cases, "cpu")
        repeats = args.repeats or 10
        budget = args.budget or 0.5
    if not cases:
        print("conch bench: no benchmark cases selected" + (" (" + "; ".join(notes) + ")" if notes else ""),
              file=sys.stderr)  # fmt: skip
        return 2
    print(f"device: {env.device}; commit {env.info.get('commit')}; {len(cases)} cases; median of up to "
          f"{repeats} repeats", flush=True)  # fmt: skip
    meta = {"kernel": args.kernel, "dtype": dtype, "sizes": args.sizes, "size": args.size, "repeats": repeats,
            "budget_s": budget, "max_seconds": args.max_seconds}  # fmt: skip
    done = []

    def save(row=None):
        if row is not None:
            done.append(row)
        if args.json:  # after every case: a run killed by an outer timeout keeps what it measured
            harness.write_json(args.json, harness.make_payload(
                "kernels", "kernels", done, env, mode="gpu" if env.gpu else "cpu", notes=notes, args=meta,
                cases_planned=len(cases)))  # fmt: skip

    deadline = None if args.max_seconds is None else time.monotonic() + args.max_seconds
    rows = harness.run_cases(env, cases, repeats=repeats, warmup=args.warmup, with_torch=not args.no_torch,
                             budget_s=budget, progress=_progress(len(cases), save), deadline=deadline)  # fmt: skip
    if len(rows) < len(cases):
        left = cases[len(rows) :]
        notes.append(f"--max-seconds {args.max_seconds:g} reached: {len(left)} of {len(cases)} cases not run ("
                     + ", ".join(f"{c['name']} {'x'.join(map(str, c['shape']))} {c['dtype']}" for c in left[:6])
                     + (", ..." if len(left) > 6 else "") + ")")  # fmt: skip
    if rows and env.peaks:  # a peak measured once, on a busy machine, put kernels above 100% of it
        notes += harness.remeasure_peaks(env)
        capped = harness.apply_peaks(env, rows)
        if capped:
            notes.append(f"{capped} case(s) above the measured peak (busy machine): % peak capped at 100, marked *")
    peaks = "; ".join(
        f"{k}: {v.get('tflops') or v.get('gbps') or 0:.4g} {'TFLOP/s' if 'tflops' in v else 'GB/s'}"
        + (f" ({v['how']})" if args.wide else "")
        for k, v in env.peaks.items()
    )
    print(f"measured peaks: {peaks}")
    table = harness.table_rows(rows)
    cols = harness.KERNEL_COLUMNS if args.wide else harness.COMPACT_KERNEL_COLUMNS
    print(harness.format_table(table, harness.nonempty_columns(table, cols)))
    if not args.wide:
        print("vs base, vs torch: their time / conch's (above 1: conch is faster); --wide: baselines, times, errors")
    for n in notes:
        print(f"note: {n}")
    if args.json:
        save()
        print(f"wrote {args.json}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            cols = harness.nonempty_columns(table, harness.KERNEL_COLUMNS)
            f.write(harness.format_table(table, cols, markdown=True) + "\n")
    if args.plot:
        try:
            n = harness.plot(rows, args.plot, title=f"conch kernels on {env.device}")
            print(f"wrote {args.plot} ({n} panels)")
        except Exception as e:  # a plot must not turn a good run into a failure
            print(f"note: plot failed: {type(e).__name__}: {e}", file=sys.stderr)
    bad = harness.failures(rows)
    if bad:
        print(f"\nFAILED: {len(bad)} of {len(rows)} cases computed a wrong result or raised:", file=sys.stderr)
        for r in bad:
            print(f"  {r['error']}", file=sys.stderr)
        return 1
    return 0


def _no_gpu_reason():
    try:
        from conch.kernels import _cupy

        return _cupy.unavailable_reason() or "GPU disabled"
    except ImportError:
        return "CuPy not importable"


def main(argv=None) -> int:
    """``python -m conch.bench ...``: the same as ``conch bench ...``."""
    p = argparse.ArgumentParser(prog="conch bench", description=__doc__.split("\n\n")[0])
    configure_parser(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
