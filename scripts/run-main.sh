#!/usr/bin/env bash
# The main job: a labelled Cu-Au reference data set with EMT, submitted to the AiiDA daemon of an isolated
# embedded profile (SQLite + ZeroMQ broker, made by `verdi presto --use-zeromq`) under ./.aiida-local.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
source scripts/bootstrap.sh
export AIIDA_PATH="${AIIDA_PATH:-$root/.aiida-local}"
mkdir -p "$AIIDA_PATH"
mlmat setup --profile mlmat-demo
elements=$(python -c "import yaml; print(' '.join(yaml.safe_load(open('examples/pipeline-cuau-emt.yaml'))['elements']))")
mlmat -p mlmat-demo reference --elements $elements --calculator emt --protocol fast --wait --json | tee .aiida-local/last-run.json
pk=$(python -c "import json; print(json.loads(open('.aiida-local/last-run.json').read().strip().splitlines()[-1])['configurations'])")
mlmat -p mlmat-demo dataset show "$pk"
mlmat -p mlmat-demo dataset export "$pk" .aiida-local/reference-cuau-emt.extxyz
echo "labelled data set: .aiida-local/reference-cuau-emt.extxyz (AiiDA node $pk; profile mlmat-demo in $AIIDA_PATH)"
echo "the daemon keeps running for more work; stop it with: AIIDA_PATH=$AIIDA_PATH verdi -p mlmat-demo daemon stop"
