"""Screening benchmark: candidates per second end to end, and the hull step against a bare pymatgen loop.

1. A small aiida-mlmat potential (2 members) is trained on EMT Cu-Au data (fixed seeds, a few seconds).
2. N binary Cu-Au candidates are generated (decorations of fcc, bcc and hcp cells, deduplicated with pymatgen's
   StructureMatcher; :func:`aiida_mlmat.hull.candidates.generate_candidates`).
3. End to end: the ``relax`` worker task (the code ``mlmat.relax`` runs: FIRE under a cell filter, the ensemble as
   the energy model) relaxes every candidate and the elemental references, then
   :func:`aiida_mlmat.hull.phase.ensemble_hull` puts them on one hull per member. Reported: candidates per second.
4. The hull step alone, on the relaxed energies: ours (:func:`aiida_mlmat.hull.phase.hull_results`) against a bare
   pymatgen loop (PDEntry objects, one PhaseDiagram, ``get_e_above_hull`` per candidate), best of 3 repeats each,
   alternated; the two must agree to 1e-8 eV/atom. Ratio: bare time over ours (target: at least 0.5).

Run: python benchmarks/screening.py [--n 500] [--max-atoms 8]
The last line of stdout is one JSON object with ``ratios`` (bigger is better), ``targets`` and the raw figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase.io import read, write

from aiida_mlmat.common.constants import NAME_KEY, RELAXED_FILE
from aiida_mlmat.hull.candidates import generate_candidates
from aiida_mlmat.hull.phase import ensemble_hull, hull_results
from aiida_mlmat.hull.plot import stability_class
from aiida_mlmat.ml.model import default_config
from aiida_mlmat.ml.training import MODEL, TrainingConfig, train
from aiida_mlmat.worker.__main__ import execute
from aiida_mlmat.worker.structures import build_seeds


def training_data(n: int, seed: int) -> list[Any]:
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = bulk('Cu', 'fcc', a=3.75, cubic=True).repeat((2, 1, 1))
        atoms.set_chemical_symbols(np.where(rng.random(len(atoms)) < 0.5, 'Au', 'Cu'))
        atoms.set_cell(atoms.cell.array * (1 + rng.uniform(-0.04, 0.04)), scale_atoms=True)
        atoms.positions += rng.normal(0.0, 0.08, atoms.positions.shape)
        atoms.calc = EMT()
        labels = {'energy': atoms.get_potential_energy(), 'forces': atoms.get_forces(), 'stress': atoms.get_stress()}
        atoms.calc = SinglePointCalculator(atoms, **labels)
        frames.append(atoms)
    return frames


def train_potential(directory: Path) -> float:
    start = time.perf_counter()
    config = default_config(['Cu', 'Au'])
    config['hidden'] = [32, 32]
    for member in range(2):
        workdir = directory / f'train_{member}'
        workdir.mkdir()
        train(
            config,
            training_data(60, member),
            training_data(12, 100 + member),
            TrainingConfig(epochs=40, batch_size=8, learning_rate=5e-3, seed=member),
            workdir,
        )
        (directory / 'potential').mkdir(exist_ok=True)
        (directory / 'potential' / f'member_{member}.pt').write_bytes((workdir / MODEL).read_bytes())
    return time.perf_counter() - start


def bare_pymatgen(candidates: dict[str, tuple[dict, float]], references: dict[str, tuple[dict, float]]) -> dict:
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
    from pymatgen.core import Composition

    ref_entries = [PDEntry(Composition(comp), energy) for comp, energy in references.values()]
    cand_entries = {name: PDEntry(Composition(comp), energy) for name, (comp, energy) in candidates.items()}
    diagram = PhaseDiagram(ref_entries + list(cand_entries.values()))
    return {name: diagram.get_e_above_hull(entry) for name, entry in cand_entries.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--n', type=int, default=500, help='number of generated candidates')
    parser.add_argument('--max-atoms', type=int, default=8, help='largest generated cell')
    parser.add_argument('--repeats', type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        train_s = train_potential(tmp_path)
        start = time.perf_counter()
        items = generate_candidates(['Cu', 'Au'], max_atoms=args.max_atoms, max_candidates=args.n)
        generate_s = time.perf_counter() - start
        from pymatgen.io.ase import AseAtomsAdaptor

        frames = []
        for name, structure in items:
            atoms = AseAtomsAdaptor.get_atoms(structure)
            atoms.info = {NAME_KEY: name}
            frames.append(atoms)
        for seed in build_seeds(['Cu', 'Au']):
            if len(set(seed.numbers)) == 1:
                seed.info = {NAME_KEY: f'ref-{seed.get_chemical_formula()}-{seed.info["mlmat_method"]}'}
                frames.append(seed)
        write(tmp_path / 'structures.extxyz', frames)
        data = {
            'schema_version': 1,
            'task': 'relax',
            'calculator': {'name': 'mlmat'},
            'structures': 'structures.extxyz',
            'max_steps': 200,
        }
        (tmp_path / 'input.json').write_text(json.dumps(data))
        start = time.perf_counter()
        results, status = execute('relax', tmp_path / 'input.json')
        relax_s = time.perf_counter() - start
        if status != 0:
            raise SystemExit(f'relaxation failed: {results.get("error")}')
        relaxed = read(tmp_path / RELAXED_FILE, ':')

    def composition(atoms: Any) -> dict[str, int]:
        symbols = atoms.get_chemical_symbols()
        return {s: symbols.count(s) for s in sorted(set(symbols))}

    members_c, members_r, single_c, single_r = {}, {}, {}, {}
    for atoms in relaxed:
        name = atoms.info[NAME_KEY]
        members = [float(x) for x in np.atleast_1d(atoms.info['mlmat_member_energies'])]
        target = (members_r, single_r) if name.startswith('ref-') else (members_c, single_c)
        target[0][name] = (composition(atoms), members)
        target[1][name] = (composition(atoms), float(atoms.get_potential_energy()))
    start = time.perf_counter()
    screened = ensemble_hull(members_c, members_r)
    hull_ensemble_s = time.perf_counter() - start

    ours_times, bare_times = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours = hull_results(single_c, single_r)
        ours_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        bare = bare_pymatgen(single_c, single_r)
        bare_times.append(time.perf_counter() - start)
    deviation = max(abs(ours[name]['e_above_hull'] - bare[name]) for name in bare)
    if deviation > 1e-8:
        raise SystemExit(f'our hull and the bare pymatgen loop disagree by {deviation} eV/atom')
    n_candidates = len(members_c)
    end_to_end_s = relax_s + hull_ensemble_s
    ratios = {'hull_step_ours_over_bare_pymatgen_speed': min(bare_times) / min(ours_times)}
    targets = {'hull_step_ours_over_bare_pymatgen_speed': 0.5}
    report = {
        'benchmark': 'screening',
        'n_candidates': n_candidates,
        'n_excluded': results['n_excluded'],
        'n_unconverged': results['n_unconverged'],
        'n_stable': sum(1 for r in screened.values() if stability_class(r) == 'stable'),  # P(stable) > 0.5
        'n_uncertain': sum(1 for r in screened.values() if stability_class(r) == 'uncertain'),  # 0 < P <= 0.5
        'candidates_per_s_end_to_end': n_candidates / end_to_end_s,
        'relax_s': relax_s,
        'hull_ensemble_s': hull_ensemble_s,
        'hull_ours_s': min(ours_times),
        'hull_bare_pymatgen_s': min(bare_times),
        'max_deviation_ev_per_atom': deviation,
        'generate_s': generate_s,
        'train_s': train_s,
        'ratios': ratios,
        'targets': targets,
        'met': {key: ratios[key] >= value for key, value in targets.items()},
        'machine': {'python': platform.python_version(), 'torch_threads': torch.get_num_threads()},
    }
    print(
        f'{n_candidates} candidates: relaxation {relax_s:.1f} s, ensemble hull {hull_ensemble_s:.3f} s '
        f'-> {report["candidates_per_s_end_to_end"]:.2f} candidates/s; hull step ours {min(ours_times) * 1e3:.1f} ms '
        f'vs bare pymatgen {min(bare_times) * 1e3:.1f} ms'
    )
    print(json.dumps(report))


if __name__ == '__main__':
    main()
