#!/usr/bin/env bash
# The one-call GPU check: install, GPU smoke test, test suite on the GPU, kernel and end-to-end benchmarks, summary.
#
# Run from anywhere inside the repository on a machine with a CUDA GPU, Python, CuPy, Triton and PyTorch, no
# network:   OUT=/some/folder bash benchmarks/device_check.sh
# Writes 7 files to $OUT (each under 16 MiB, no sub-folders): env.txt, stages.txt, bench.log (every stage's
# output), tests.log, results.md, results.json (every benchmark's JSON merged), kernels.png. Every stage runs
# under its own `timeout` (its cap, cut to what is left of CHECK_BUDGET_S, default 480 s, less a 25 s reserve
# for the summary), so the script ends within 8 minutes even when a stage hangs; a stage at its cap first gets
# SIGINT (pytest then still prints its failure summary; benchmarks keep the JSON written so far) and SIGKILL
# 15 s later. A failing stage never stops the rest. Without a GPU every GPU stage fails or skips within
# seconds (the kernel stages then time the CPU reference paths at one small size, which exercises the whole
# pipeline).
#
# On the simulated device (CONCH_SIMULATE_GPU=1: a CuPy stand-in over NumPy whose Triton launches compile for
# sm_90 offline and run under the interpreter, see docs/kernels.md) every stage runs its GPU code path at tiny
# sizes, and the test stage runs the device-parametrised subset (tests/sim_subset.txt): the whole pipeline is
# tried end to end on a CPU-only machine, with no meaningful timings.
#
# stdout ends with the stage table and then the headline results table (ratio > 1: conch better than the
# baseline measured in the same run); the full tables are in results.md.
#
# Knobs (environment): CHECK_BUDGET_S (total seconds), TESTS_S (test-suite cap, default 170), TEST_WORKERS
# (pytest-xdist workers, default 8; 0 = serial), SKIP_TESTS=1, SKIP_INSTALL=1, PYTHON (default python3),
# CONCH_SIMULATE_GPU=1 (the simulated device).

set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
OUT="${OUT:-$ROOT/device_check_out}"
mkdir -p "$OUT"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
BUDGET="${CHECK_BUDGET_S:-480}"
TESTS_S="${TESTS_S:-170}"
TEST_WORKERS="${TEST_WORKERS:-8}"
START=$(date +%s)
WORK="$(mktemp -d "${TMPDIR:-/tmp}/conch_check.XXXXXX")" # per-benchmark JSON and scratch: not shipped
RES="$WORK/results"
mkdir -p "$RES"
LOG="$OUT/bench.log"
STAGES="$OUT/stages.txt"
: >"$LOG"
: >"$STAGES"
export CONCH_BENCH_DIR="$ROOT/benchmarks"
# tuning is mostly compile time: time only the 3 most promising matmul configs per shape (tests: none); on the
# simulated device every timed launch is interpreted, so time one (the timing loop still runs)
SIM=0
case "${CONCH_SIMULATE_GPU:-0}" in "" | 0 | false | no) ;; *) SIM=1 ;; esac
if [ "$SIM" = "1" ]; then
    export CONCH_AUTOTUNE="${CONCH_AUTOTUNE:-1}"
    # the peaks' cuBLAS product and copy run on NumPy there: small ones (the % of peak column means nothing)
    export CONCH_BENCH_PEAK_N="${CONCH_BENCH_PEAK_N:-256}" CONCH_BENCH_COPY_MB="${CONCH_BENCH_COPY_MB:-16}"
else
    export CONCH_AUTOTUNE="${CONCH_AUTOTUNE:-3}"
fi
export PYTHONUNBUFFERED=1
export MPLBACKEND=Agg
export PYTHONDONTWRITEBYTECODE=1

left() { echo $((BUDGET - ($(date +%s) - START))); }

# stage NAME MAX_SECONDS LOGFILE CMD...: run CMD under timeout min(MAX, time left - 25 s reserve), log, record.
stage() {
    local name="$1" max="$2" logf="$3"
    shift 3
    local lim
    lim=$(($(left) - 25))
    [ "$lim" -gt "$max" ] && lim="$max"
    if [ "$lim" -lt 8 ]; then
        printf '%-11s %-9s %5s  %s\n' "$name" "SKIPPED" "0s" "out of time budget" | tee -a "$STAGES"
        return 0
    fi
    echo "=== [$name] $(date -u +%H:%M:%S) limit ${lim}s: $*" >>"$logf"
    echo "=== [$name] limit ${lim}s"
    local t0 rc status off
    t0=$(date +%s)
    off=$(stat -c %s "$logf" 2>/dev/null || echo 0)
    timeout -s INT -k 15 "$lim" "$@" >>"$logf" 2>&1 </dev/null
    rc=$?
    case "$rc" in
        0) status="ok" ;;
        124 | 130 | 137) status="TIMEOUT" ;;
        *) status="FAIL($rc)" ;;
    esac
    tail -c +$((off + 1)) "$logf" | tail -n 4 | cut -c1-150 | sed "s/^/  [$name] /"
    printf '%-11s %-9s %5s  %s\n' "$name" "$status" "$(($(date +%s) - t0))s" \
        "$(echo "$*" | sed "s#$PY#python#g; s#$ROOT/##g; s#$WORK/##g" | cut -c1-72)" >>"$STAGES"
    LAST_RC=$rc
    return 0
}
LAST_RC=0

# ---- environment -------------------------------------------------------------------------------------------
{
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown) + $(git status --porcelain 2>/dev/null | wc -l) changed files"
    echo "host: $(hostname)  nproc: $(nproc)  cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
    echo "python: $PY ($("$PY" --version 2>&1))"
    timeout 20 nvidia-smi 2>&1 || echo "nvidia-smi failed"
    timeout 20 nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit,temperature.gpu --format=csv 2>&1
    timeout 60 "$PY" - <<'EOF' 2>&1
import importlib
for m in ("numpy", "cupy", "triton", "torch", "ml_dtypes", "scipy", "matplotlib", "pytest", "xdist",
          "pytest_timeout", "setuptools", "wheel", "hypothesis", "sklearn", "safetensors", "tqdm"):
    try:
        mod = importlib.import_module(m)
        print(f"{m}: {getattr(mod, '__version__', '?')}")
    except Exception as e:
        print(f"{m}: NOT IMPORTABLE ({type(e).__name__}: {e})")
try:
    import torch
    print("torch.cuda:", torch.cuda.is_available(), torch.version.cuda)
except Exception:
    pass
EOF
} >"$OUT/env.txt" 2>&1
grep -E "^(date|commit|python|numpy|cupy|triton|torch|torch.cuda|setuptools|xdist):" "$OUT/env.txt"
grep -m1 -E "NVIDIA|failed" "$OUT/env.txt" | cut -c1-120

# ---- install (editable, no network, no build isolation); else a symlinked package on PYTHONPATH -------------
install_ok=0
if [ "${SKIP_INSTALL:-0}" != "1" ]; then
    stage install 60 "$LOG" "$PY" -m pip install --no-deps --no-build-isolation --no-index -q -e .
fi
if "$PY" -c "import conch, conch.kernels, conch.bench" >>"$LOG" 2>&1; then
    install_ok=1
else
    echo "editable install not importable: building a PYTHONPATH shim (conch -> framework, conch/kernels -> kernels)" | tee -a "$LOG"
    SHIM="$WORK/shim"
    mkdir -p "$SHIM/conch"
    for f in "$ROOT"/framework/* "$ROOT"/framework/.[!.]*; do
        [ -e "$f" ] || continue
        ln -sfn "$f" "$SHIM/conch/$(basename "$f")"
    done
    ln -sfn "$ROOT/kernels" "$SHIM/conch/kernels"
    export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
    if "$PY" -c "import conch, conch.kernels, conch.bench; print('shim ok:', conch.__file__)" >>"$LOG" 2>&1; then
        install_ok=1
        printf '%-11s %-9s %5s  %s\n' "shim" "ok" "0s" "PYTHONPATH=$SHIM" >>"$STAGES"
    else
        printf '%-11s %-9s %5s  %s\n' "shim" "FAIL" "0s" "conch not importable; see bench.log" >>"$STAGES"
    fi
fi
stage info 20 "$LOG" "$PY" -m conch info

# ---- smoke: streams, a few kernels against float64 NumPy, autograd cuda vs cpu (exit 2: no usable GPU) ------
stage smoke 45 "$LOG" "$PY" benchmarks/gpu_smoke.py
GPU=1
[ "$LAST_RC" = "2" ] && GPU=0
# per-stage arguments: real GPU (large sizes), simulated GPU (tiny: kernels run under the interpreter), none
REPEATS=30
MLP_ARGS=(--device cuda --seconds 1 --rounds 2)
GPT_ARGS=(--device cuda --seconds 1.5 --rounds 2)
AMP_ARGS=(--device cuda --layers 8 --width 4096 --batch 4096 --seconds 1)
CKPT_ARGS=(--device cuda --seconds 0.5)
if [ "$GPU" = "0" ]; then
    echo "no usable GPU: GPU stages will fail or skip quickly; kernel stages time the CPU paths at one small size" | tee -a "$LOG"
    KSIZE=(--sizes 64 --max-seconds 10)
    KSIZE_MM=(--sizes 64 --max-seconds 10)
    KSIZE_AT=(--sizes 64 --max-seconds 10)
elif [ "$SIM" = "1" ]; then
    echo "simulated GPU: every GPU path at tiny sizes (timings are the interpreter's, not a GPU's)" | tee -a "$LOG"
    KSIZE=(--sizes 64 --max-seconds 10)
    KSIZE_MM=(--sizes 64 --max-seconds 10)
    KSIZE_AT=(--sizes 64 --max-seconds 3)
    MLP_ARGS=(--device cuda --batch 8 --seconds 0.2 --rounds 1)
    GPT_ARGS=(--device cuda --size small --seconds 0.2 --rounds 1)
    AMP_ARGS=(--device cuda --layers 2 --width 64 --batch 32 --seconds 0.2)
    CKPT_ARGS=(--device cuda --layers 4 --width 64 --batch 16 --no-gpt --segments 2 --seconds 0.2)
    REPEATS=3
else
    KSIZE=(--size large --max-seconds 35)
    KSIZE_MM=(--size large --max-seconds 75)
    KSIZE_AT=(--size large --max-seconds 16)
fi

# ---- test suite on the GPU -----------------------------------------------------------------------------------
if [ "${SKIP_TESTS:-0}" != "1" ]; then
    : >"$OUT/tests.log"
    TEST_ARGS=(-q -p no:cacheprovider --maxfail=25 -rfE)
    if [ "$TEST_WORKERS" != "0" ] && "$PY" -c "import xdist" 2>/dev/null; then
        TEST_ARGS+=(-n "$TEST_WORKERS")
    fi
    if "$PY" -c "import pytest_timeout" 2>/dev/null; then
        TEST_ARGS+=(--timeout=60)
    fi
    # GPU-specific files first, so a stage stopped at its cap has run what matters most (pytest collects a
    # file named twice once); the simulated device runs only its subset (tests/sim_subset.txt)
    if [ "$SIM" = "1" ]; then
        mapfile -t TEST_PATHS < <(grep -vE '^\s*(#|$)' tests/sim_subset.txt)
    else
        TEST_PATHS=(tests/test_gpu.py tests/kernels tests/test_fused_ops.py tests/test_amp.py tests/test_amp_training.py
            tests/test_optim.py tests/test_checkpoint.py tests/test_serialization.py tests)
    fi
    stage tests "$TESTS_S" "$OUT/tests.log" env CONCH_TEST_DEVICE=cuda CONCH_AUTOTUNE=off "$PY" -m pytest \
        "${TEST_ARGS[@]}" "${TEST_PATHS[@]}"
fi

# ---- kernel microbenchmarks --------------------------------------------------------------------------------
# matmul (most wanted first): 4096^3 and 8192^3 in fp16, bf16 and tf32 (cuBLAS TF32 mode), linear+bias+gelu
# at the same sizes, exact fp32 at 4096^3, the linear backward in bf16. Then softmax and cross-entropy at
# 4096 rows, layer/rms norm at 8192 rows, activations and dropout on 64M elements. The fused linear cross-entropy
# (8192 x 768 x 32000, forward + backward) comes last in that stage: it runs on whatever time the others leave.
stage kernels_mm 80 "$LOG" "$PY" -m conch.bench matmul "${KSIZE_MM[@]}" --repeats "$REPEATS" --budget 0.2 \
    --json "$RES/kernels_matmul.json"
stage kernels 40 "$LOG" "$PY" -m conch.bench activations,softmax,cross_entropy,norms,dropout,linear_cross_entropy \
    "${KSIZE[@]}" --repeats "$REPEATS" --budget 0.1 --json "$RES/kernels_other.json"

# ---- end-to-end and training benchmarks (every one writes harness.ratio_row rows) --------------------------
stage e2e_mlp 20 "$LOG" "$PY" benchmarks/bench_e2e_mlp.py "${MLP_ARGS[@]}" --json "$RES/e2e_mlp.json"
stage e2e_gpt 35 "$LOG" "$PY" benchmarks/bench_e2e_gpt.py "${GPT_ARGS[@]}" --json "$RES/e2e_gpt.json"
stage amp 25 "$LOG" "$PY" benchmarks/bench_amp.py "${AMP_ARGS[@]}" --json "$RES/amp.json"
stage checkpoint 20 "$LOG" "$PY" benchmarks/bench_checkpoint.py "${CKPT_ARGS[@]}" --json "$RES/checkpoint.json"
stage overhead 10 "$LOG" "$PY" benchmarks/bench_overhead.py --ops 500 --repeats 7 --rounds 2 \
    --json "$RES/overhead.json"
# distributed (issue 15): NCCL all-reduce bandwidth and DDP's overhead at one rank per GPU (a multi-rank job when
# the machine has several GPUs); a real GPU only (the simulated one has no NCCL); 10 s taken from the kernel stages
if [ "$GPU" = "1" ] && [ "$SIM" = "0" ]; then
    stage ddp 10 "$LOG" "$PY" benchmarks/bench_distributed.py --device cuda --quick --json "$RES/distributed.json"
fi
# flash attention (bf16, causal, T 1024 and 4096) last: it runs on whatever time the stages above left
stage kernels_at 20 "$LOG" "$PY" -m conch.bench attention --dtype bf16 "${KSIZE_AT[@]}" --repeats "$REPEATS" \
    --budget 0.1 --json "$RES/kernels_attention.json"

# ---- summary ----------------------------------------------------------------------------------------------
SHORT="$WORK/short.txt"
timeout -k 5 30 "$PY" benchmarks/summary.py "$RES" --md "$OUT/results.md" --json "$OUT/results.json" --short \
    --plot "$OUT/kernels.png" >"$SHORT" 2>>"$LOG" || echo "summary failed (rc $?)" | tee -a "$LOG"

# Keep every shipped file under 16 MiB (logs keep their head and tail) and nothing but plain files in $OUT.
for f in "$OUT"/*; do
    [ -f "$f" ] || { rm -rf "$f"; continue; }
    if [ "$(stat -c %s "$f")" -gt 15000000 ]; then
        case "$f" in
            *.log | *.txt | *.md) { head -c 4000000 "$f"; echo; echo "... [truncated] ..."; tail -c 8000000 "$f"; } >"$f.tmp" && mv "$f.tmp" "$f" ;;
            *) echo "removed oversized $f" | tee -a "$LOG"; rm -f "$f" ;;
        esac
    fi
done

echo
echo "==== device check: stages ($(($(date +%s) - START)) s of $BUDGET; conch importable: $install_ok; GPU: $GPU) ===="
cat "$STAGES"
grep -h -E "^FAIL |^gpu_smoke:" "$LOG" 2>/dev/null | cut -c1-160
grep -E "[0-9]+ (passed|failed|error)" "$OUT/tests.log" 2>/dev/null | tail -n 1 | cut -c1-160
grep -h -E "^FAILED |^ERROR " "$OUT/tests.log" 2>/dev/null | head -n 8 | cut -c1-160
echo "==== results (ratio > 1: conch better than the baseline measured in the same run; all rows in results.md) ===="
cat "$SHORT" 2>/dev/null || echo "(no summary)"
rm -rf "$WORK"
