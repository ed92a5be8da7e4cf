#!/usr/bin/env bash
# Create (or reuse) the project venv in .venv and install torch's CPU wheel, then the package with EXTRAS.
# Usage: source scripts/bootstrap.sh [EXTRAS]     (e.g. "dev")
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${1:-}"
python="${PYTHON:-python3}"
if [ ! -x "$root/.venv/bin/python" ]; then
  "$python" -m venv "$root/.venv"
fi
venv_python="$root/.venv/bin/python"
"$venv_python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# The CPU wheel first: an unpinned torch would pull gigabytes of CUDA packages.
if ! "$venv_python" -c 'import torch' >/dev/null 2>&1; then
  "$venv_python" -m pip install -q torch==2.13.0
fi
spec="$root"
[ -n "$extras" ] && spec="$root[$extras]"
"$venv_python" -m pip install -q -e "$spec" 2>&1 | grep -v -i "is ignored" || true
"$venv_python" -c 'import aiida_mlmat, aiida, torch' # fail loudly if the install did not work
export PATH="$root/.venv/bin:$PATH"
