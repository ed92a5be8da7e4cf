#!/usr/bin/env bash
# The test suite: unit, engine (real daemon) and integration (GPAW DFT, SLURM over ssh) tiers on the SQLite +
# ZeroMQ profile, then the production tier on a PostgreSQL + RabbitMQ profile with two daemon workers.
# Integration tests skip with a reason where a component is missing, except with CI=true, where they fail.
# Arguments go to the first pytest run only; with arguments (a selection) the production run is left out.
# MLMAT_SKIP_PRODUCTION=1 leaves it out too.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source scripts/bootstrap.sh dev
export AIIDA_WARN_v3=0
ruff check aiida_mlmat tests benchmarks
ruff format --check aiida_mlmat tests benchmarks
python -m pytest -p no:cacheprovider -ra "$@"
if [ "$#" -eq 0 ] && [ "${MLMAT_SKIP_PRODUCTION:-0}" != 1 ]; then
  # Production tier: a representative part of the engine tier again (every workflow kind, restarts, the CLI,
  # caching; the slowest duplicates of what the tier's own tests cover are left out), then tests/production
  # (daemon SIGKILL, lost and duplicated broker tasks, ssh outages, unconverged DFT, the load test).
  MLMAT_TEST_PROFILE=psql python -m pytest -p no:cacheprovider -ra tests/engine/test_reference_workchain.py \
    tests/engine/test_faults.py tests/engine/test_descriptors_engine.py tests/engine/test_training_engine.py \
    tests/engine/test_cli.py tests/production \
    -k 'not (ensemble_end_to_end or aiida_ase_path or nan_loss or structuredata_seeds)'
fi
