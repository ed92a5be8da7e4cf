#!/usr/bin/env bash
# The GPU checks in one run: the CUDA unit tests, then benchmarks/gpu_training.py (CPU vs CUDA, float64, mixed
# precision, MD speed, the worker's train task on cuda). Run from the repository root on a machine with a CUDA
# torch. Where a `.whl/` folder of wheels is present (ase, vesin, jsonschema and its deps, for a Python that lacks
# them), they are installed into /tmp/site first. Logs go to ${OUT:-.}/pytest-cuda.log and gpu_training.log.
set -u -o pipefail
out=${OUT:-.}
if compgen -G '.whl/*.whl' >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
# --noconftest: the CUDA tests are pure unit tests and need no AiiDA profile (the GPU image has no aiida).
python3 -m pytest --noconftest -p no:cacheprovider -q -rs tests/unit/test_descriptors.py tests/unit/test_model.py \
    -k cuda 2>&1 | tee "$out/pytest-cuda.log"
python3 benchmarks/gpu_training.py "$@" 2>&1 | tee "$out/gpu_training.log"
