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
  # Production tier: the whole engine tier again (the same tests as on the embedded profile), then
  # tests/production (daemon SIGKILL, lost and duplicated broker tasks, ssh outages, unconverged DFT, the load test).
  MLMAT_TEST_PROFILE=psql python -m pytest -p no:cacheprovider -ra tests/engine tests/production
fi
