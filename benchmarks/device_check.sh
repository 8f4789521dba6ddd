#!/usr/bin/env bash
# The one-call GPU check: install, test suite on the GPU, kernel microbenchmarks, end-to-end benchmarks, summary.
#
# Run from anywhere inside the repository on a machine with a CUDA GPU, Python, CuPy, Triton and PyTorch, no
# network:   OUT=/some/folder bash benchmarks/device_check.sh
# Writes at most 8 files to $OUT (each under 16 MiB, no sub-folders): env.txt, tests.log, bench.log,
# kernels.png, results.md, results.json (every benchmark's JSON merged), stages.txt. Every stage runs under
# its own `timeout`, with its budget cut to what is left of the whole script's (CHECK_BUDGET_S, default 470 s),
# so the script ends within 8 minutes even when a stage hangs; a failing stage never stops the rest. The last
# thing on stdout is the stage table and the short results table.
#
# Knobs (environment): CHECK_BUDGET_S (total seconds), TESTS_S (test-suite seconds, default 200),
# SKIP_TESTS=1, SKIP_INSTALL=1, PYTHON (interpreter, default python3 or python).

set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
OUT="${OUT:-$ROOT/device_check_out}"
mkdir -p "$OUT"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
BUDGET="${CHECK_BUDGET_S:-470}"
TESTS_S="${TESTS_S:-200}"
START=$(date +%s)
WORK="$(mktemp -d "${TMPDIR:-/tmp}/conch_check.XXXXXX")"   # per-benchmark JSON and scratch: not shipped
RES="$WORK/results"
mkdir -p "$RES"
LOG="$OUT/bench.log"
STAGES="$OUT/stages.txt"
: >"$LOG"
: >"$STAGES"
export CONCH_BENCH_DIR="$ROOT/benchmarks"
export PYTHONUNBUFFERED=1
export MPLBACKEND=Agg

left() { echo $((BUDGET - ($(date +%s) - START))); }

# stage NAME MAX_SECONDS LOGFILE CMD...: run CMD under timeout min(MAX, time left - 25 s reserve), log, record.
stage() {
    local name="$1" max="$2" logf="$3"
    shift 3
    local lim
    lim=$(($(left) - 25))
    [ "$lim" -gt "$max" ] && lim="$max"
    if [ "$lim" -lt 10 ]; then
        printf '%-16s %-8s %6s  %s\n' "$name" "SKIPPED" "0" "out of time budget" | tee -a "$STAGES"
        return 0
    fi
    echo "=== [$name] $(date -u +%H:%M:%S) limit ${lim}s: $*" | tee -a "$logf"
    local t0 rc status
    t0=$(date +%s)
    timeout -k 10 "$lim" "$@" >>"$logf" 2>&1 </dev/null
    rc=$?
    case "$rc" in
        0) status="ok" ;;
        124 | 137) status="TIMEOUT" ;;
        *) status="FAIL($rc)" ;;
    esac
    tail -n 25 "$logf" | sed "s/^/  [$name] /"
    printf '%-16s %-8s %6s  %s\n' "$name" "$status" "$(($(date +%s) - t0))s" "$*" | tee -a "$STAGES"
    return 0
}

# ---- environment -------------------------------------------------------------------------------------------
{
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown) $(git status --porcelain 2>/dev/null | wc -l) changed files"
    echo "host: $(hostname)  nproc: $(nproc)  cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
    echo "python: $PY ($("$PY" --version 2>&1))"
    nvidia-smi 2>&1 || echo "nvidia-smi failed"
    nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit,temperature.gpu --format=csv 2>&1
    "$PY" - <<'EOF' 2>&1
import importlib
for m in ("numpy", "cupy", "triton", "torch", "ml_dtypes", "scipy", "matplotlib", "pytest"):
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
cat "$OUT/env.txt"

# ---- install (editable, no network); fall back to a symlinked package on PYTHONPATH ------------------------
install_ok=0
if [ "${SKIP_INSTALL:-0}" != "1" ]; then
    stage install 120 "$LOG" "$PY" -m pip install --no-deps --no-build-isolation --no-index -e .
fi
if (cd "$WORK" && "$PY" -c "import conch, conch.kernels, conch.bench" >>"$LOG" 2>&1); then
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
    if (cd "$WORK" && "$PY" -c "import conch, conch.kernels, conch.bench; print('shim ok:', conch.__file__)" >>"$LOG" 2>&1); then
        install_ok=1
        printf '%-16s %-8s %6s  %s\n' "shim" "ok" "0s" "PYTHONPATH=$SHIM" | tee -a "$STAGES"
    else
        printf '%-16s %-8s %6s  %s\n' "shim" "FAIL" "0s" "conch not importable; see bench.log" | tee -a "$STAGES"
    fi
fi
CONCH=("$PY" -m conch.bench)
stage info 30 "$LOG" "$PY" -m conch info

# ---- test suite on the GPU ---------------------------------------------------------------------------------
if [ "${SKIP_TESTS:-0}" != "1" ]; then
    : >"$OUT/tests.log"
    stage tests "$TESTS_S" "$OUT/tests.log" env CONCH_TEST_DEVICE=cuda "$PY" -m pytest -q -x -p no:cacheprovider tests
fi

# ---- kernel microbenchmarks at realistic sizes -------------------------------------------------------------
# matmul 4096^3 and 8192^3 in fp16, bf16 and tf32 (and linear+bias+gelu); softmax, layer_norm, cross-entropy
# at 4096 rows x 4096..32768 columns; activations on 64M elements: the families' "large" case sets.
stage kernels 130 "$LOG" "${CONCH[@]}" all --size large --repeats 30 --budget 0.2 \
    --json "$RES/kernels.json" --plot "$OUT/kernels.png"

# ---- end-to-end and training benchmarks that exist ---------------------------------------------------------
[ -f benchmarks/bench_e2e_mlp.py ] && stage e2e_mlp 35 "$LOG" "$PY" benchmarks/bench_e2e_mlp.py \
    --device cuda --seconds 1 --rounds 2 --json "$RES/e2e_mlp.json"
[ -f benchmarks/bench_e2e_gpt.py ] && stage e2e_gpt 50 "$LOG" "$PY" benchmarks/bench_e2e_gpt.py \
    --device cuda --seconds 1.5 --rounds 2 --json "$RES/e2e_gpt.json"
for b in overhead amp checkpoint; do
    [ -f "benchmarks/bench_$b.py" ] && stage "$b" 30 "$LOG" "$PY" "benchmarks/bench_$b.py" --json "$RES/$b.json"
done

# ---- summary ----------------------------------------------------------------------------------------------
SHORT="$WORK/short.txt"
timeout -k 5 20 "$PY" benchmarks/summary.py "$RES" --md "$OUT/results.md" --json "$OUT/results.json" --short \
    >"$SHORT" 2>>"$LOG" || echo "summary failed (rc $?)" | tee -a "$LOG"

# Keep every shipped file under 16 MiB (logs keep their head and tail).
for f in "$OUT"/*; do
    [ -f "$f" ] || continue
    if [ "$(stat -c %s "$f")" -gt 15000000 ]; then
        case "$f" in
            *.log | *.txt | *.md) { head -c 4000000 "$f"; echo; echo "... [truncated] ..."; tail -c 8000000 "$f"; } >"$f.tmp" && mv "$f.tmp" "$f" ;;
            *) echo "removed oversized $f" | tee -a "$LOG"; rm -f "$f" ;;
        esac
    fi
done
rm -rf "$WORK/shim"

echo
echo "==================== results (ratio > 1: conch better than the baseline in the same run) ===================="
cat "$SHORT" 2>/dev/null || echo "(no summary)"
echo "==================== device check: stages ($(($(date +%s) - START)) s; conch importable: $install_ok) ===================="
cat "$STAGES"
grep -E "[0-9]+ (passed|failed|error)" "$OUT/tests.log" 2>/dev/null | tail -n 2
