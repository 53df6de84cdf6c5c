#!/usr/bin/env bash
# Idempotent setup of the GPyTorch / linear_operator peer environment.
#
# Creates <repo>/.venv-peer with Python 3.11 (PyTorch is only available here as a
# CPU wheel for cp311: /opt/wheels/torch-2.13.0+cpu-cp311-...whl) and installs
#   torch==2.13.0+cpu  gpytorch  linear-operator  numpy
# The CPU build of torch is pinned explicitly (and kept pinned via a constraints
# file while installing gpytorch/linear-operator) so no CUDA torch gets pulled in.
#
# Usage:  bash benchmarks/peers/setup_gpytorch.sh        (from anywhere)
# Env:    PEER_PYTHON=/path/to/python3.11  to force the interpreter.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$REPO/.venv-peer"
TORCH_SPEC="torch==2.13.0+cpu"

is_py311() { "$1" -c 'import sys; sys.exit(0 if sys.version_info[:2]==(3,11) else 1)' >/dev/null 2>&1; }

find_py311() {
    local cand
    if [[ -n "${PEER_PYTHON:-}" ]]; then
        is_py311 "$PEER_PYTHON" && { echo "$PEER_PYTHON"; return 0; }
        echo "PEER_PYTHON=$PEER_PYTHON is not a working Python 3.11" >&2; return 1
    fi
    local roots=()
    if command -v pyenv >/dev/null 2>&1; then roots+=("$(pyenv root)"); fi
    roots+=("$HOME/.pyenv")
    for r in "${roots[@]}"; do
        # highest 3.11.x first
        for cand in $(ls -d "$r"/versions/3.11*/bin/python 2>/dev/null | sort -V -r); do
            is_py311 "$cand" && { echo "$cand"; return 0; }
        done
    done
    if command -v python3.11 >/dev/null 2>&1 && is_py311 python3.11; then
        command -v python3.11; return 0
    fi
    return 1
}

if [[ -x "$VENV/bin/python" ]] && is_py311 "$VENV/bin/python"; then
    echo "[setup_gpytorch] reusing existing $VENV"
else
    PY311="$(find_py311)" || {
        echo "[setup_gpytorch] ERROR: no Python 3.11 interpreter found (looked in \$(pyenv root)/versions/3.11*, ~/.pyenv/versions/3.11*, python3.11). Set PEER_PYTHON=/path/to/python3.11." >&2
        exit 1
    }
    echo "[setup_gpytorch] creating $VENV with $PY311"
    rm -rf "$VENV"
    "$PY311" -m venv "$VENV"
fi

PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "$TORCH_SPEC" > "$CONSTRAINTS"

# 1) CPU torch (from /opt/wheels via pip's find-links), 2) the rest with torch held fixed.
"${PIP[@]}" install -q "$TORCH_SPEC"
"${PIP[@]}" install -q -c "$CONSTRAINTS" gpytorch linear-operator numpy

# Verify: CPU build, no CUDA, imports work.
"$VENV/bin/python" - <<'PY'
import sys, importlib.metadata as md
import torch, linear_operator, gpytorch, numpy
v = torch.__version__
assert v.endswith("+cpu"), f"expected a +cpu torch build, got {v}"
assert torch.version.cuda is None, f"torch has CUDA {torch.version.cuda}"
bad = [d.metadata["Name"] for d in md.distributions() if d.metadata["Name"].lower().startswith("nvidia-")]
assert not bad, f"CUDA packages present in venv: {bad}"
print(f"[setup_gpytorch] OK python={sys.version.split()[0]} torch={v} "
      f"gpytorch={gpytorch.__version__} linear_operator={linear_operator.__version__} "
      f"numpy={numpy.__version__}")
PY
"${PIP[@]}" show torch | sed -n '1,3p'
