"""Task ``descriptors``: per-atom descriptors of every configuration (torch, CPU or CUDA).

Writes ``descriptors.npz`` with one array ``structure_<i>`` (n_atoms, n_features) per configuration and
``means`` (n_structures, n_features), the per-structure averages.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from aiida_mlmat.common.constants import DESCRIPTORS_FILE
from aiida_mlmat.worker.errors import ErrorCode, WorkerError
from aiida_mlmat.worker.tasks import read_input_frames


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cuda`` without a GPU is an error."""
    import torch

    if name == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if name == 'cuda' and not torch.cuda.is_available():
        raise WorkerError(ErrorCode.INVALID_INPUT, 'device `cuda` requested but no CUDA device is visible')
    return name


def run(params: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Compute the descriptors of ``params['structures']``; see the module docstring."""
    import torch

    from aiida_mlmat.ml.descriptors import DescriptorSpec, UnknownSpeciesError, compute
    from aiida_mlmat.ml.neighbours import CutoffError

    start = time.perf_counter()
    frames = read_input_frames(workdir, params['structures'])
    if not frames:
        raise WorkerError(ErrorCode.INVALID_INPUT, 'no configuration to describe')
    try:
        spec = DescriptorSpec.from_dict(params['descriptor'])
    except (TypeError, ValueError) as exc:
        raise WorkerError(ErrorCode.INVALID_INPUT, f'descriptor: {exc}') from exc
    device = resolve_device(params.get('device', 'auto'))
    dtype = torch.float32 if params.get('dtype', 'float64') == 'float32' else torch.float64
    tick = time.perf_counter()
    try:
        arrays = compute(frames, spec, dtype=dtype, device=device)
    except (UnknownSpeciesError, CutoffError) as exc:
        raise WorkerError(ErrorCode.INVALID_INPUT, str(exc)) from exc
    compute_seconds = time.perf_counter() - tick
    means = np.stack([array.mean(axis=0) for array in arrays])
    np.savez(workdir / DESCRIPTORS_FILE, means=means, **{f'structure_{i}': array for i, array in enumerate(arrays)})
    n_atoms = int(sum(len(atoms) for atoms in frames))
    return {
        'status': 'ok',
        'n_structures': len(frames),
        'n_atoms': n_atoms,
        'n_features': spec.n_features,
        'descriptor': spec.as_dict(),
        'device': device,
        'dtype': str(dtype).replace('torch.', ''),
        'timings': {
            'total_s': time.perf_counter() - start,
            'compute_s': compute_seconds,
            'environments_per_second': n_atoms / compute_seconds if compute_seconds > 0 else None,
        },
    }
