#!/usr/bin/env bash
# CI: run the Triton-interpreter tests under Triton 3.6 (the GPU machines' version), which pip's `triton>=3.2` never picks.
set -euo pipefail
cd "$(dirname "$0")/.."

# Kept outside the checkout, so later CI runs (each in a fresh clone) reuse it warm.
VENV="${CONCH_TRITON36_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/conch/venv-triton36}"
PY="$VENV/bin/python"
TRITON_VERSION=3.6.0

if ! "$PY" -c "import sys" 2>/dev/null; then
    rm -rf "$VENV"
    python -m venv "$VENV"
fi
# One resolve with triton pinned, every run (a no-op in seconds when the venv is current; picks up a dependency
# the project added since): the project's other deps and the test extra at their usual versions, numpy unpinned
# so the newest (the one that breaks Triton 3.6's interpreter without conch's shim) is what runs. The editable
# install then points at this checkout.
"$PY" -m pip install -q "triton==$TRITON_VERSION" -e ".[test]"
"$PY" -c "import numpy, triton; print(f'triton {triton.__version__}, numpy {numpy.__version__}')"

# The kernel suite plus the framework tests that launch Triton under the interpreter (the others never do).
"$PY" -m pytest -q -n 2 -p no:cacheprovider tests/kernels tests/test_fused_ops.py tests/test_convergence.py "$@"
