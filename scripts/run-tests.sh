#!/usr/bin/env bash
# The test suite: unit, engine (real daemon) and integration (GPAW DFT) tiers.
# Integration tests skip with a reason where a component is missing, except with CI=true, where they fail.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source scripts/bootstrap.sh dev
export AIIDA_WARN_v3=0
ruff check aiida_mlmat tests benchmarks
ruff format --check aiida_mlmat tests benchmarks
python -m pytest -p no:cacheprovider -ra "$@"
