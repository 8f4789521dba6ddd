"""Every launch specialization conch's dispatch and autotuner can choose, as cases for the offline compile check.

The block configs, activation codes, fusion choices and launch settings come from the kernel modules themselves
(``GPU_CONFIGS``, ``ACT_CODES``, ``FUSE_IN_LOADS``, ``_launch_settings``, ``_config``...); only the argument
layout of each launch is restated here, with 16-aligned pointers, shapes and strides (a stride not divisible by
16 turns off software pipelining and would hide most of a config's shared memory).

``all_cases()`` is the full cross product; ``ci_cases()`` is a deterministic subset that still covers every
kernel x dtype x flag combination and every block config (of every config list) at least once, with the
config lists' worst-case flags (fp32, act' fused into the matmul's operand loads; every attention head dim).
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from .compile import Ptr

_F32, _F16 = np.dtype(np.float32), np.dtype(np.float16)


def _bf16():
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


def dtypes():
    """The dtypes the Triton paths take (float64 always goes to the reference path)."""
    return (_F32, _F16, _bf16())


@dataclasses.dataclass
class Case:
    """One launch: ``jitfn[grid](*args, **kwargs)``; ``family``/``flags`` name it, ``config`` is its block config
    (an entry of ``configs``, the list it was drawn from, when the autotuner chooses it)."""

    family: str
    jitfn: object
    grid: tuple
    args: list
    kwargs: dict
    dtype: str
    flags: dict
    config: dict
    configs: str | None = None  # "module.LIST" the config came from (None: fixed by the launcher)

    def __post_init__(self):
        from .._launch import TritonKernel

        if type(self.jitfn) is TritonKernel:  # the kernel modules name their kernels lazily: compile the real one
            self.jitfn = self.jitfn.resolve()

    @property
    def name(self):
        flags = ",".join(f"{k}={v}" for k, v in self.flags.items())
        cfg = ",".join(f"{k}={v}" for k, v in self.config.items())
        return f"{self.jitfn.fn.__name__}[{self.dtype}|{flags}|{cfg}]"

    def kernel_key(self):
        """(kernel, dtype, flags): what must compile with at least one config."""
        return (self.jitfn.fn.__name__, self.dtype, tuple(sorted(self.flags.items())))


# --------------------------------------------------------------------------------------------------------------
# matmul
# --------------------------------------------------------------------------------------------------------------

MM = 1024  # M = N = K: 16-aligned, several tiles of every config


def matmul_variants():
    """(flags, kernel constexprs, operand layout) of every product the forward and backward launch."""
    from .. import matmul as mm
    from .._act import ACT_CODES, FROM_OUTPUT

    out = []
    for act, code in ACT_CODES.items():
        for bias in (False, True):
            flags = {"op": "fwd", "act": act, "bias": bias}
            kw = {"HAS_BIAS": bias, "ACT": code, "STORE_Z": act not in FROM_OUTPUT and act != "none", "DOUT_OP": 0,
                  "HAS_R": False, "GRAD_ACT": 0, "R_IS_OUT": False, "DBIAS": False}  # fmt: skip
            out.append((flags, kw))
    # backward: act' fused in the loads for FUSE_IN_LOADS, else dZ precomputed (a plain product)
    for op, dout_op in (("dA", 1), ("dB", 2)):
        for act in ["none"] + sorted(mm.FUSE_IN_LOADS):
            for dbias in (False, True):
                flags = {"op": op, "fused_act": act, "dbias": dbias}
                fused = act != "none"
                grad = ACT_CODES[act] if fused else 0
                kw = {"HAS_BIAS": False, "ACT": 0, "STORE_Z": False, "DOUT_OP": dout_op, "HAS_R": fused,
                      "GRAD_ACT": grad, "R_IS_OUT": act in FROM_OUTPUT, "DBIAS": dbias}  # fmt: skip
                out.append((flags, kw))
    return out


def _matmul_case(flags, kw, dtype, precision, cfg, configs):
    from .. import matmul as mm

    n = MM
    # strides (batch, reduction-batch, row, col): forward a (M,K) @ b (K,N); dA = dOut (M,N) @ bᵀ; dB = aᵀ @ dOut
    op = flags["op"]
    if op == "fwd":
        a_s, b_s = (0, 0, n, 1), (0, 0, n, 1)
    elif op == "dA":
        a_s, b_s = (0, 0, n, 1), (0, 0, 1, n)
    else:
        a_s, b_s = (0, 0, 1, n), (0, 0, n, 1)
    c_s = (0, n, 1)
    r_s = (0, 0, n, 1) if kw["HAS_R"] else (0, 0, 0, 0)
    p = Ptr(dtype)
    args = [p, p, p, Ptr(dtype) if kw["HAS_BIAS"] else None, Ptr(dtype) if kw["STORE_Z"] else None,
            Ptr(dtype) if kw["HAS_R"] else None, Ptr(np.float32) if kw["DBIAS"] else None,
            n, n, n, 1, 0.0, *a_s, *b_s, *c_s, *r_s]  # fmt: skip
    kwargs = dict(kw, UPCAST=False, INPUT_PRECISION=precision, **cfg)
    grid = ((n // cfg["BLOCK_M"]) * (n // cfg["BLOCK_N"]), 1)
    fl = dict(flags, precision=precision) if dtype == _F32 else dict(flags)
    return Case("matmul", mm._matmul_kernel, grid, args, kwargs, dtype.name, fl, dict(cfg), "matmul.GPU_CONFIGS")


def matmul_cases(full=True):
    from .. import matmul as mm

    cases = []
    for dtype in dtypes():
        precisions = ("tf32", "ieee") if dtype == _F32 or full else ("tf32",)
        for precision in precisions:
            for flags, kw in matmul_variants():
                for cfg in mm.GPU_CONFIGS:
                    cases.append(_matmul_case(flags, kw, dtype, precision, cfg, mm.GPU_CONFIGS))
    return cases


# --------------------------------------------------------------------------------------------------------------
# attention
# --------------------------------------------------------------------------------------------------------------

ATT_B, ATT_H, ATT_L = 2, 4, 1024


def attention_head_dims():
    """One head dim per BLOCK_D the launcher can choose (16 ... MAX_HEAD_DIM)."""
    from .. import attention as at

    out, d = [], 16
    while d <= at.MAX_HEAD_DIM:
        out.append(d)
        d *= 2
    return out


def _attention_case(which, dtype, d, causal, dropout, cfg):
    from .. import attention as at

    B, H, L = ATT_B, ATT_H, ATT_L
    st = (H * L * d, L * d, d, 1)
    t, f32 = Ptr(dtype), Ptr(np.float32)
    dargs = (1234, 0, 0.1, 1.0 / 0.9) if dropout else (0, 0, 0.0, 1.0)
    block_d = at._block_d(d)
    common = dict(CAUSAL=causal, DROPOUT=dropout, UPCAST=False, INPUT_PRECISION="tf32", BLOCK_D=block_d, **cfg)
    if which == "fwd":
        jit, lst = at._attn_fwd_kernel, "attention.GPU_CONFIGS"
        args = [t, t, t, t, f32, H, L, L, d, 0.125, *dargs, *st, *st, *st, *st]
        grid = (L // cfg["BLOCK_M"], B * H)
    elif which == "dq":
        jit, lst = at._attn_bwd_dq_kernel, "attention.GPU_BWD_CONFIGS"
        args = [t, t, t, t, t, t, f32, f32, H, L, L, d, 0.125, 0.125, *dargs, *st, *st, *st, *st, *st, *st]
        grid = (L // cfg["BLOCK_M"], B * H)
    else:
        jit, lst = at._attn_bwd_dkdv_kernel, "attention.GPU_BWD_CONFIGS"
        args = [t, t, t, t, t, t, f32, f32, H, L, L, d, 0.125, 0.125, *dargs, *st, *st, *st, *st, *st, *st]
        grid = (L // cfg["BLOCK_N"], B * H)
    flags = {"head_dim": d, "causal": causal, "dropout": dropout}
    return Case("attention", jit, grid, args, common, dtype.name, flags, dict(cfg), lst)


def attention_cases(full=True):
    from .. import attention as at

    cases = []
    for which, configs in (("fwd", at.GPU_CONFIGS), ("dq", at.GPU_BWD_CONFIGS), ("dkdv", at.GPU_BWD_CONFIGS)):
        for dtype, d, causal, dropout in itertools.product(dtypes(), attention_head_dims(), (False, True),
                                                           (False, True)):  # fmt: skip
            for cfg in configs:
                cases.append(_attention_case(which, dtype, d, causal, dropout, cfg))
    return cases


# --------------------------------------------------------------------------------------------------------------
# fixed-config kernels: the launch settings come from the launchers' own helpers
# --------------------------------------------------------------------------------------------------------------


def elementwise_cases():
    from .. import activations as ac
    from .. import dropout as dr
    from .. import optim as op
    from .._act import ACT_CODES, FROM_OUTPUT

    n = 1 << 20
    cases = []
    for dtype in dtypes():
        p = Ptr(dtype)
        ecfg = {"BLOCK": ac.BLOCK, "num_warps": ac.NUM_WARPS}
        for act, code in ACT_CODES.items():
            kw = dict(ecfg, ACT=code)
            cases.append(Case("activations", ac._act_fwd_kernel, (n // ac.BLOCK,), [p, p, n, 0.01], kw, dtype.name,
                              {"op": "fwd", "act": act}, ecfg))  # fmt: skip
            kw = dict(kw, FROM_OUT=act in FROM_OUTPUT)
            cases.append(Case("activations", ac._act_bwd_kernel, (n // ac.BLOCK,), [p, p, p, n, 0.01], kw,
                              dtype.name, {"op": "bwd", "act": act}, ecfg))  # fmt: skip
        blk = dr._BLOCK_GPU
        cases.append(Case("dropout", dr._dropout_kernel, (n // blk,), [p, p, n, 0.1, 1 / 0.9, 1234, 0],
                          {"BLOCK": blk, "num_warps": 4}, dtype.name, {}, {"BLOCK": blk, "num_warps": 4}))  # fmt: skip
        i64 = Ptr(np.int64)
        blk = op._BLOCK_GPU
        for flags in _bool_grid(("MAXIMIZE", "HAS_WD", "DECOUPLED", "LERP_SMALL", "AMSGRAD")):
            protos = [p, p, p, p, p if flags["AMSGRAD"] else None]
            args = [i64, i64, i64, 4, *protos, 0.999, 0.01, 0.1, 0.999, 0.001, 0.9, 1e-8, -1e-3]
            cases.append(Case("optim", op._adam_kernel, (64,), args, dict(flags, BLOCK=blk, num_warps=4), dtype.name,
                              flags, {"BLOCK": blk, "num_warps": 4}))  # fmt: skip
        for flags in _bool_grid(("MAXIMIZE", "HAS_WD", "HAS_MOMENTUM", "FIRST_STEP", "NESTEROV")):
            protos = [p, p, p if flags["HAS_MOMENTUM"] else None]
            args = [i64, i64, i64, 4, *protos, -0.1, 0.01, 0.9, 1.0]
            cases.append(Case("optim", op._sgd_kernel, (64,), args, dict(flags, BLOCK=blk, num_warps=4), dtype.name,
                              flags, {"BLOCK": blk, "num_warps": 4}))  # fmt: skip
    return cases


def _bool_grid(names):
    return [dict(zip(names, vals)) for vals in itertools.product((False, True), repeat=len(names))]


def _pow2_cols():
    """Row lengths 16 ... 2**17: every BLOCK the row kernels' launch settings can pick."""
    return [1 << k for k in range(4, 18)]


def rowwise_cases():
    from .. import cross_entropy as ce
    from .. import norms as nm
    from .. import softmax as sm

    rows = 256
    cases = []
    for dtype in dtypes():
        p, f32 = Ptr(dtype), Ptr(np.float32)
        seen = set()
        for cols in _pow2_cols():
            # softmax: the forward budgets its tile by the storage dtype, the backward as fp32
            for op, itemsize in (("fwd", dtype.itemsize), ("bwd", 4)):
                looped, block, warps = sm._config(cols, itemsize)
                for log in (False, True):
                    if (op, looped, block, warps, log) in seen:
                        continue
                    seen.add((op, looped, block, warps, log))
                    if op == "fwd":
                        jit = sm._softmax_fwd_loop_kernel if looped else sm._softmax_fwd_row_kernel
                        args = [p, p, cols, cols, cols]
                    else:
                        jit = sm._softmax_bwd_loop_kernel if looped else sm._softmax_bwd_row_kernel
                        args = [p, p, p, cols, cols, cols, cols]
                    kw = {"LOG": log, "BLOCK": block, "num_warps": warps}
                    cases.append(Case("softmax", jit, (rows,), args, kw, dtype.name, {"op": op, "log": log},
                                      {"BLOCK": block, "num_warps": warps}))  # fmt: skip
            block, warps = ce._block(cols)
            for tdt in (np.int64, np.int32):
                t = Ptr(tdt)
                for smooth in (False, True):
                    if ("ce", block, warps, tdt, smooth) in seen:
                        continue
                    seen.add(("ce", block, warps, tdt, smooth))
                    cfg = {"BLOCK": block, "num_warps": warps}
                    cases.append(Case("cross_entropy", ce._ce_fwd_kernel, (rows,), [p, t, f32, f32, f32, cols, cols,
                                      -100, 0.1 if smooth else 0.0], dict(cfg, SMOOTH=smooth), dtype.name,
                                      {"op": "fwd", "target": np.dtype(tdt).name, "smooth": smooth}, cfg))  # fmt: skip
                for per_row in (False, True):
                    if ("ceb", block, warps, tdt, per_row) in seen:
                        continue
                    seen.add(("ceb", block, warps, tdt, per_row))
                    cfg = {"BLOCK": block, "num_warps": warps}
                    cases.append(Case("cross_entropy", ce._ce_bwd_kernel, (rows, -(-cols // block)),
                                      [p, t, f32, f32, f32, p, cols, cols, cols, -100, 0.0],
                                      dict(cfg, PER_ROW_SCALE=per_row), dtype.name,
                                      {"op": "bwd", "target": np.dtype(tdt).name, "per_row": per_row},
                                      cfg))  # fmt: skip
            block_m, block_d, warps = nm._launch_settings(cols, dtype.itemsize, True)
            cfg = {"BLOCK_M": block_m, "BLOCK_D": block_d, "num_warps": warps}
            for is_rms, has_w, has_b in itertools.product((False, True), repeat=3):
                if is_rms and has_b:
                    continue  # rms_norm takes no bias
                if ("norm", block_m, block_d, warps, is_rms, has_w, has_b) in seen:
                    continue
                seen.add(("norm", block_m, block_d, warps, is_rms, has_w, has_b))
                w, b = (p if has_w else None), (p if has_b else None)
                mean = None if is_rms else f32
                flags = {"rms": is_rms, "weight": has_w, "bias": has_b}
                kw = dict(cfg, IS_RMS=is_rms, HAS_W=has_w, HAS_B=has_b)
                cases.append(Case("norms", nm._norm_fwd_kernel, (rows // block_m or 1,),
                                  [p, w, b, p, mean, f32, rows, cols, 1e-5], kw, dtype.name, dict(flags, op="fwd"),
                                  cfg))  # fmt: skip
                dw, db = (f32 if has_w else None), (f32 if has_b else None)
                cases.append(Case("norms", nm._norm_bwd_kernel, (64,),
                                  [p, w, p, p, mean, f32, dw, db, rows, cols, 64], kw, dtype.name,
                                  dict(flags, op="bwd"), cfg))  # fmt: skip
    return cases


# --------------------------------------------------------------------------------------------------------------
# Full sweep and CI subset
# --------------------------------------------------------------------------------------------------------------


def all_cases():
    """Every case: each kernel x dtype x flag x block config its dispatch and autotuner can choose."""
    return matmul_cases() + attention_cases() + elementwise_cases() + rowwise_cases()


def estimate(case) -> int | None:
    """The kernel's own shared-memory bound for this case (what autotune.pick prunes with); None when the
    launcher fixes the config (nothing is pruned)."""
    from .. import attention as at
    from .. import matmul as mm

    it = np.dtype(case.args[0].dtype).itemsize
    if case.family == "matmul":
        return mm.smem_bytes(case.config, it, case.kwargs["DOUT_OP"], case.kwargs["HAS_R"])
    if case.family == "attention":
        kind = {"_attn_fwd_kernel": "fwd", "_attn_bwd_dq_kernel": "dq"}.get(case.jitfn.fn.__name__, "dkdv")
        return at.smem_bytes(kind, case.config, case.kwargs["BLOCK_D"], it)
    return None


def survives(case, limit) -> bool:
    """True when autotune.pick keeps this case's config on a GPU with ``limit`` bytes of shared memory."""
    est = estimate(case)
    return est is None or est <= limit


def ci_cases(limit=None):
    """A deterministic subset of :func:`all_cases` for cold-cache CI.

    1. Coverage: cases are taken in order, each kept when it brings a (kernel, dtype, flag=value) pair not yet
       seen, with the first config of its list that survives pruning at ``limit`` (default: the H100's).
    2. Every config of every list with the list's worst case (matmul: fp32 with relu' fused into the dA and the
       dB loads, and the plain fp32/fp16 forward; attention: fp32 forward and backward at head dims 64-256), so
       the shared-memory bounds behind the pruning are checked against the compiler for every config.
    """
    from .compile import LIMITS

    limit = LIMITS[90].shared_optin if limit is None else limit
    picked: dict = {}
    seen: set = set()
    for c in all_cases():
        if not survives(c, limit):
            continue
        pairs = {(c.jitfn.fn.__name__, c.dtype, k, v) for k, v in c.flags.items()} | {(c.jitfn.fn.__name__, c.dtype)}
        if c.configs is not None:
            first = (c.jitfn.fn.__name__, c.dtype, tuple(sorted(c.flags.items())))
            if first in seen:
                continue
            seen.add(first)  # the first surviving config of this (kernel, dtype, flags)
        if pairs - seen:
            seen |= pairs
            picked.setdefault(c.name, c)
    for c in matmul_cases(full=False):
        f = c.flags
        worst = f.get("fused_act") == "relu" and not f.get("dbias") and f.get("precision") == "tf32"
        plain = f == {"op": "fwd", "act": "none", "bias": False, "precision": "tf32"} or (
            c.dtype == "float16" and f == {"op": "fwd", "act": "none", "bias": False}
        )
        if worst or plain:
            picked.setdefault(c.name, c)
    for c in attention_cases():  # head dims 16 and 32 are far below every limit
        if c.dtype == "float32" and not c.flags["causal"] and not c.flags["dropout"] and c.flags["head_dim"] >= 64:
            picked.setdefault(c.name, c)
    return list(picked.values())
