"""Offline compile check: every Triton kernel specialization conch can launch compiles for sm_90 (and sm_80) and
fits the GPU, the autotuner's shared-memory bounds hold, and interpreting a kernel leaves compiling intact.

No GPU needed: Triton's compiler and the ptxas in its wheel run on the CPU. The cold-cache CI set is
``compile_cases.ci_cases()``; ``CONCH_SIM_COMPILE_ALL=1`` compiles every case (``all_cases()``, about 3,900
per target). Results are cached in ``$CONCH_CACHE_DIR/sim_compile/``, so reruns with unchanged kernels are free.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("triton")

from conch.kernels import autotune  # noqa: E402
from conch.kernels.sim import compile_cases as cc  # noqa: E402
from conch.kernels.sim.compile import LIMITS, Ptr, check, compile_info  # noqa: E402

FULL = os.environ.get("CONCH_SIM_COMPILE_ALL", "") not in ("", "0")


def _have_ptxas():
    from conch.kernels.sim.compile import _tool

    return _tool("ptxas") is not None or _tool("cuobjdump") is not None


pytestmark = pytest.mark.skipif(not _have_ptxas(), reason="Triton's NVIDIA toolchain (ptxas) is not installed")


def _cases(cc_):
    if FULL:
        return cc.all_cases()
    if cc_ == 90:
        return cc.ci_cases()
    # sm_80: the first surviving config of each kernel x dtype x flag value (the configs' bounds: sm_90's set)
    return [c for c in cc.ci_cases(LIMITS[80].shared_optin) if c.configs is None or c.family == "matmul"
            and c.config == _first_fit(c, 80)]  # fmt: skip


def _first_fit(case, cc_):
    from conch.kernels import attention as at
    from conch.kernels import matmul as mm

    lst = mm.GPU_CONFIGS if case.family == "matmul" else at.GPU_CONFIGS
    for cfg in lst:
        if cc.estimate(type(case)(**{**case.__dict__, "config": cfg})) <= LIMITS[cc_].shared_optin:
            return cfg
    return None


def _run(cases, cc_):
    """Compile every case; returns the failures as messages naming kernel and config."""
    limit = LIMITS[cc_].shared_optin
    failures, over_pruned = [], []
    for c in cases:
        try:
            res = compile_info(c.jitfn, c.grid, c.args, c.kwargs, cc=cc_)
        except Exception as e:  # a compile error names the case
            failures.append(f"{c.name} on sm_{cc_}: does not compile: {type(e).__name__}: {str(e)[:300]}")
            continue
        est = cc.estimate(c)
        if est is not None and cc_ == 90 and est < res.shared:
            failures.append(f"{c.name}: shared-memory bound {est} < compiled {res.shared} bytes on sm_90")
        if cc.survives(c, limit) and not res.fits:
            failures.append(f"{c.name}: kept by the autotuner's pruning but does not fit sm_{cc_}: {res.error()}")
        if not cc.survives(c, limit) and res.fits:
            over_pruned.append(c.name)
    return failures, over_pruned


@pytest.mark.parametrize("cc_", [90, 80])
def test_every_kernel_compiles_and_fits(cc_, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    failures, over_pruned = _run(_cases(cc_), cc_)
    assert not failures, "\n".join(failures)
    if over_pruned:  # conservative bounds: a config that would fit is skipped (reported, not an error)
        print(f"sm_{cc_}: pruned although it fits: {len(over_pruned)}\n" + "\n".join(over_pruned))


def test_ci_set_covers_every_kernel_dtype_flag_and_config():
    ci = {c.name for c in cc.ci_cases()}
    limit = LIMITS[90].shared_optin
    want = {(c.jitfn.fn.__name__, c.dtype, k, v) for c in cc.all_cases() for k, v in c.flags.items()}
    have = {(c.jitfn.fn.__name__, c.dtype, k, v) for c in cc.ci_cases() for k, v in c.flags.items()}
    assert want == have
    for lst in ("matmul.GPU_CONFIGS", "attention.GPU_CONFIGS", "attention.GPU_BWD_CONFIGS"):
        all_cfgs = {str(c.config) for c in cc.all_cases() if c.configs == lst}
        assert all_cfgs == {str(c.config) for c in cc.all_cases() if c.configs == lst and c.name in ci}, lst
    assert all(cc.survives(c, limit) or c.family in ("matmul", "attention") for c in cc.ci_cases())


@pytest.mark.parametrize("cc_", [90, 80])
def test_pruned_lists_are_never_empty(cc_):
    """Every (kernel, dtype, flags) keeps at least one config on the H100 and the A100, best-first order kept."""
    from conch.kernels import attention as at
    from conch.kernels import matmul as mm

    limit = LIMITS[cc_].shared_optin
    groups: dict = {}
    for c in cc.matmul_cases(full=False) + cc.attention_cases():
        groups.setdefault(c.kernel_key(), []).append(c)
    for key, group in groups.items():
        kept = [c.config for c in group if cc.survives(c, limit)]
        assert kept, f"{key}: every config pruned on sm_{cc_}"
        lst = mm.GPU_CONFIGS if group[0].family == "matmul" else (
            at.GPU_CONFIGS if group[0].jitfn is at._attn_fwd_kernel.resolve() else at.GPU_BWD_CONFIGS)  # fmt: skip
        assert kept == [cfg for cfg in lst if cfg in kept], key  # order unchanged


def test_fp32_relu_backward_keeps_configs_under_autotune_3(monkeypatch, tmp_path):
    """CONCH_AUTOTUNE=3 used to time three configs that cannot fit and fail 'every config failed'."""
    from conch.kernels import matmul as mm

    monkeypatch.setenv("CONCH_AUTOTUNE", "3")
    monkeypatch.setenv("CONCH_CACHE_DIR", str(tmp_path))
    autotune.clear_cache()
    for dout_op in (1, 2):
        timed = []
        cfg = autotune.pick(
            "matmul-test", ("float32", dout_op), mm.GPU_CONFIGS, timed.append, timer=lambda fn: fn() or 1.0,
            smem=lambda c, d=dout_op: mm.smem_bytes(c, 4, d, True), limit=LIMITS[90].shared_optin,
        )  # fmt: skip
        assert len(timed) == 3 * (autotune.WARMUP + autotune.REPEATS), timed
        assert all(mm.smem_bytes(c, 4, dout_op, True) <= LIMITS[90].shared_optin for c in timed + [cfg])
    autotune.clear_cache()


def test_interpret_then_compile_in_one_process(monkeypatch):
    """Triton's interpreter patches triton.language and never restores it; _launch undoes that per launch."""
    from conch.kernels import matmul as mm
    from conch.kernels import norms

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)
    mm.matmul_forward(x, x, None, "relu")
    norms.layer_norm_forward(x, np.ones(8, np.float32), np.zeros(8, np.float32))
    monkeypatch.delenv("TRITON_INTERPRET")
    # a config compiled nowhere else in this file, so the compiler really runs
    case = cc._matmul_case({"op": "fwd", "act": "silu", "bias": True}, {
        "HAS_BIAS": True, "ACT": 7, "STORE_Z": True, "DOUT_OP": 0, "HAS_R": False, "GRAD_ACT": 0, "R_IS_OUT": False,
        "DBIAS": False}, np.dtype(np.float16), "ieee", mm._cfg(32, 32, 32, 4, 2), mm.GPU_CONFIGS)  # fmt: skip
    res = check(case.jitfn, case.grid, case.args, case.kwargs, cc=90)
    assert res.shared > 0 and res.fits


def test_check_raises_out_of_resources_naming_kernel_and_config():
    from triton.runtime.errors import OutOfResources

    from conch.kernels import matmul as mm

    flags, kw = next((f, k) for f, k in cc.matmul_variants() if f.get("op") == "dB" and f.get("fused_act") == "relu")
    case = cc._matmul_case(flags, kw, np.dtype(np.float32), "tf32", mm.GPU_CONFIGS[0], mm.GPU_CONFIGS)
    with pytest.raises(OutOfResources, match=r"shared memory, Required: \d+, Hardware limit: 232448") as ei:
        check(case.jitfn, case.grid, case.args, case.kwargs, cc=90)
    assert "_matmul_kernel" in str(ei.value) and "BLOCK_N': 256" in str(ei.value)
    assert isinstance(Ptr(np.float16).data_ptr(), int)
