#!/usr/bin/env bash
# The test suite: unit, engine (real daemon) and integration (GPAW DFT, SLURM over ssh) tiers on the SQLite +
# ZeroMQ profile, and the production tier on a PostgreSQL + RabbitMQ profile with two daemon workers.
# Integration tests skip with a reason where a component is missing, except with CI=true, where they fail.
#
# The two runs use separate profiles, databases, brokers and daemons, and most of their time is spent waiting on
# daemons, SLURM and subprocesses, so they run side by side: the production tier in the background (its output
# goes to a log that is printed when it ends), the first run in the foreground. MLMAT_SERIAL_TIERS=1 runs them one
# after the other instead.
# Arguments go to the first pytest run only; with arguments (a selection) the production run is left out.
# MLMAT_SKIP_PRODUCTION=1 leaves it out too.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source scripts/bootstrap.sh dev
export AIIDA_WARN_v3=0
ruff check aiida_mlmat tests benchmarks
ruff format --check aiida_mlmat tests benchmarks

# Production tier: the whole engine tier again (the same tests as on the embedded profile), then
# tests/production (daemon SIGKILL, lost and duplicated broker tasks, ssh outages, unconverged DFT, the load test).
# (A background job of a script starts with SIGINT ignored; the wrapper restores it, so Ctrl-C and the trap below
# stop the run through pytest, whose fixtures then stop its daemon and drop its database.)
production=(env MLMAT_TEST_PROFILE=psql python -c
  'import signal, sys, pytest; signal.signal(signal.SIGINT, signal.default_int_handler); sys.exit(pytest.main())'
  -p no:cacheprovider -ra tests/engine tests/production)
if [ "$#" -gt 0 ] || [ "${MLMAT_SKIP_PRODUCTION:-0}" = 1 ]; then
  python -m pytest -p no:cacheprovider -ra "$@"
  exit 0
fi
if [ "${MLMAT_SERIAL_TIERS:-0}" = 1 ]; then
  python -m pytest -p no:cacheprovider -ra
  "${production[@]}"
  exit 0
fi

log="$(mktemp -t mlmat-production-tier.XXXXXX.log)"
"${production[@]}" >"$log" 2>&1 &
production_pid=$!
# Ctrl-C (or TERM) stops the background run too, through pytest; a failing first run does not: both report.
trap 'kill -INT "$production_pid" 2>/dev/null || true' INT TERM
echo "run-tests: the production tier (PostgreSQL + RabbitMQ, 2 workers) runs in the background; log: $log"
first=0
python -m pytest -p no:cacheprovider -ra || first=$?
second=0
wait "$production_pid" || second=$?
trap - INT TERM
echo
echo "================ production tier (MLMAT_TEST_PROFILE=psql), output of the background run ================"
cat "$log"
echo "run-tests: SQLite + ZeroMQ run exit status $first, production tier exit status $second"
[ "$first" = 0 ] && [ "$second" = 0 ]
