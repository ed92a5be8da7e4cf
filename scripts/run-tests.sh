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
production=(env MLMAT_TEST_PROFILE=psql python -m pytest -p no:cacheprovider -ra tests/engine tests/production)
if [ "$#" -gt 0 ] || [ "${MLMAT_SKIP_PRODUCTION:-0}" = 1 ]; then
  exec python -m pytest -p no:cacheprovider -ra "$@"
fi
if [ "${MLMAT_SERIAL_TIERS:-0}" = 1 ]; then
  python -m pytest -p no:cacheprovider -ra
  exec "${production[@]}"
fi

# Side by side, both runs are background jobs, which a script starts with SIGINT ignored: this wrapper restores
# it, so that an interrupted pytest still runs its teardown (stops its daemon, drops its database).
interruptible=(python -c
  'import signal, sys, pytest; signal.signal(signal.SIGINT, signal.default_int_handler); sys.exit(pytest.main())')
log="$(mktemp -t mlmat-production-tier.XXXXXX.log)"
# The production tier runs in a session of its own: a terminal's Ctrl-C reaches the first run directly and the
# production tier once, through the trap (a second SIGINT would cut its teardown short). TERM stops both.
MLMAT_TEST_PROFILE=psql setsid "${interruptible[@]}" -p no:cacheprovider -ra tests/engine tests/production \
  >"$log" 2>&1 &
production_pid=$!
echo "run-tests: the production tier (PostgreSQL + RabbitMQ, 2 workers) runs in the background; log: $log"
"${interruptible[@]}" -p no:cacheprovider -ra &
first_pid=$!
trap 'kill -INT "$production_pid" 2>/dev/null || true' INT
trap 'kill -INT "$first_pid" "$production_pid" 2>/dev/null || true' TERM

# The exit status of a background run; `wait` returns early when a signal is trapped, so wait until it has ended.
await() {
  local status
  while :; do
    wait "$1" && status=0 || status=$?
    [ "$status" != 127 ] && kill -0 "$1" 2>/dev/null || break
  done
  return "$status"
}
# A failing first run does not stop the production tier: both report.
first=0
await "$first_pid" || first=$?
second=0
await "$production_pid" || second=$?
trap - INT TERM
echo
echo "================ production tier (MLMAT_TEST_PROFILE=psql), output of the background run ================"
cat "$log"
rm -f "$log"
echo "run-tests: SQLite + ZeroMQ run exit status $first, production tier exit status $second"
[ "$first" = 0 ] || exit "$first"
exit "$second"
