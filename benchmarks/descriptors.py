"""Descriptor throughput: aiida-mlmat's torch descriptors against DScribe (ACSF and SOAP), side by side.

1,000 rattled Cu-Au structures of 32 to 64 atoms, one cutoff for everyone, comparable feature counts.
Environments per second for: our Chebyshev (float32, float64), our ACSF (float64), DScribe ACSF and DScribe
SOAP with n_jobs equal to the cores. The target ratio is ours (Chebyshev, float32) over DScribe ACSF.

Run: python benchmarks/descriptors.py [--n 1000] [--rcut 5.0] [--device cpu|cuda]
The last line of stdout is one JSON object with ``ratios``, ``targets`` and the raw figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch
from ase.build import bulk


def structures(n: int, seed: int = 0) -> list:
    """Rattled, strained Cu-Au fcc supercells of 32, 48 or 64 atoms, 30 % Au on random sites."""
    rng = np.random.default_rng(seed)
    repeats = [(2, 2, 2), (2, 2, 3), (2, 2, 4)]
    frames = []
    for k in range(n):
        atoms = bulk('Cu', 'fcc', a=3.75, cubic=True).repeat(repeats[k % 3])
        atoms.set_chemical_symbols(np.where(rng.random(len(atoms)) < 0.3, 'Au', 'Cu'))
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + rng.uniform(-0.02, 0.02, (3, 3))), scale_atoms=True)
        atoms.positions += rng.normal(0.0, 0.08, atoms.positions.shape)
        frames.append(atoms)
    return frames


def timed(function, repeats: int = 2) -> float:
    """Best wall time of ``repeats`` calls (s)."""
    best = float('inf')
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--n', type=int, default=1000)
    parser.add_argument('--rcut', type=float, default=5.0)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--repeats', type=int, default=2)
    args = parser.parse_args()

    from dscribe.descriptors import ACSF, SOAP

    from aiida_mlmat.ml.descriptors import DescriptorSpec, compute

    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    frames = structures(args.n)
    n_env = sum(len(atoms) for atoms in frames)
    species = ('Cu', 'Au')
    figures: dict[str, dict] = {}

    cheb = DescriptorSpec('chebyshev', species, rcut=args.rcut, n_radial=10, n_angular=6)
    acsf = DescriptorSpec('acsf', species, rcut=args.rcut)
    for name, spec, dtype in (
        ('mlmat_chebyshev_float32', cheb, torch.float32),
        ('mlmat_chebyshev_float64', cheb, torch.float64),
        ('mlmat_acsf_float64', acsf, torch.float64),
    ):
        compute(frames[:10], spec, dtype=dtype, device=args.device)  # warm-up
        seconds = timed(
            lambda spec=spec, dtype=dtype: compute(frames, spec, dtype=dtype, device=args.device), args.repeats
        )
        figures[name] = {'seconds': seconds, 'env_per_s': n_env / seconds, 'n_features': spec.n_features}
        print(f'{name:28s} {spec.n_features:4d} features  {n_env / seconds:10.0f} environments/s', flush=True)

    d_acsf = ACSF(
        species=list(species), r_cut=args.rcut, g2_params=[list(p) for p in acsf.g2],
        g4_params=[list(p) for p in acsf.g4], periodic=True,
    )  # fmt: skip
    d_soap = SOAP(species=list(species), r_cut=args.rcut, n_max=4, l_max=3, periodic=True)
    for name, descriptor in (('dscribe_acsf', d_acsf), ('dscribe_soap', d_soap)):
        descriptor.create(frames[:10], n_jobs=cores)
        seconds = timed(lambda d=descriptor: d.create(frames, n_jobs=cores), args.repeats)
        n_features = descriptor.get_number_of_features()
        figures[name] = {'seconds': seconds, 'env_per_s': n_env / seconds, 'n_features': n_features}
        print(f'{name:28s} {n_features:4d} features  {n_env / seconds:10.0f} environments/s', flush=True)

    ours = figures['mlmat_chebyshev_float32']['env_per_s']
    ratios = {
        'chebyshev_f32_vs_dscribe_acsf': ours / figures['dscribe_acsf']['env_per_s'],
        'chebyshev_f64_vs_dscribe_acsf': figures['mlmat_chebyshev_float64']['env_per_s']
        / figures['dscribe_acsf']['env_per_s'],
        'acsf_vs_dscribe_acsf': figures['mlmat_acsf_float64']['env_per_s'] / figures['dscribe_acsf']['env_per_s'],
        'chebyshev_f32_vs_dscribe_soap': ours / figures['dscribe_soap']['env_per_s'],
    }
    targets = {'chebyshev_f32_vs_dscribe_acsf': 5.0 if args.device == 'cuda' else 1.0}
    print(
        json.dumps(
            {
                'benchmark': 'descriptors',
                'n_structures': len(frames),
                'n_environments': n_env,
                'rcut': args.rcut,
                'device': args.device,
                'figures': figures,
                'ratios': ratios,
                'targets': targets,
                'met': {key: ratios[key] >= value for key, value in targets.items()},
                'machine': {'cores': cores, 'python': platform.python_version(), 'torch': torch.__version__},
            }
        )
    )


if __name__ == '__main__':
    main()
