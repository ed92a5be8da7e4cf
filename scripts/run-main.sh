#!/usr/bin/env bash
# The main job: the whole loop (reference data, active learning, hull screening) for Cu-Au with EMT, submitted to the AiiDA daemon of an isolated
# embedded profile (SQLite + ZeroMQ broker, made by `verdi presto --use-zeromq`) under ./.aiida-local.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source scripts/bootstrap.sh
export AIIDA_PATH="${AIIDA_PATH:-$root/.aiida-local}"
mkdir -p "$AIIDA_PATH"
mlmat setup --profile mlmat-demo
# progress (every step's report) on stderr; the headline figures and the report's path on stdout
mlmat -p mlmat-demo run examples/pipeline-cuau-emt.yaml --out .aiida-local/report --wait
echo "the daemon keeps running for more work; stop it with: AIIDA_PATH=$AIIDA_PATH verdi -p mlmat-demo daemon stop"
