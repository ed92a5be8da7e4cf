"""Unit tier: the ``relax`` worker task, the ``mlmat`` registry calculator and ensemble MD snapshots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.filters import FrechetCellFilter
from ase.io import read, write
from ase.optimize import FIRE

from aiida_mlmat.common.constants import DISAGREEMENT_KEY, ENERGY_STD_KEY, NAME_KEY, RELAXED_FILE
from aiida_mlmat.ml.model import build_model, save_model
from aiida_mlmat.worker.__main__ import execute
from aiida_mlmat.worker.calculators import make_calculator
from tests.unit.test_model import small_config

pytestmark = pytest.mark.unit


def run_task(tmp_path: Path, task: str, frames, **params):
    write(tmp_path / 'structures.extxyz', frames)
    data = {'schema_version': 1, 'task': task, 'structures': 'structures.extxyz', **params}
    (tmp_path / 'input.json').write_text(json.dumps(data))
    return execute(task, tmp_path / 'input.json')


def cu3au(a: float = 3.8):
    atoms = bulk('Cu', 'fcc', a=a, cubic=True)
    atoms.set_chemical_symbols(['Au', 'Cu', 'Cu', 'Cu'])
    atoms.info[NAME_KEY] = 'Cu3Au'
    return atoms


def test_relax_equals_a_direct_ase_relaxation(tmp_path):
    results, status = run_task(tmp_path, 'relax', [cu3au(), bulk('Au', 'fcc', a=4.3)], calculator={'name': 'emt'})
    assert status == 0 and results['n_relaxed'] == 2 and results['n_converged'] == 2
    relaxed = read(tmp_path / RELAXED_FILE, ':')
    direct = cu3au()
    direct.calc = EMT()
    FIRE(FrechetCellFilter(direct), logfile=None).run(fmax=0.05, steps=300)
    assert relaxed[0].info[NAME_KEY] == 'Cu3Au' and relaxed[0].info['mlmat_converged']
    assert abs(relaxed[0].get_potential_energy() - direct.get_potential_energy()) < 1e-10
    np.testing.assert_allclose(relaxed[0].cell.array, direct.cell.array, atol=1e-10)
    assert relaxed[0].info['mlmat_fmax'] < 0.05
    assert relaxed[0].info['mlmat_initial_energy'] > relaxed[0].get_potential_energy()
    assert float(relaxed[0].info['mlmat_member_energies']) == relaxed[0].get_potential_energy()


def test_unconverged_is_flagged_not_dropped(tmp_path):
    results, status = run_task(tmp_path, 'relax', [cu3au(4.1)], calculator={'name': 'emt'}, max_steps=2)
    assert status == 0 and results['n_unconverged'] == 1
    frame = read(tmp_path / RELAXED_FILE)
    assert not frame.info['mlmat_converged'] and frame.info['mlmat_steps'] == 2 and frame.info['mlmat_fmax'] > 0.05


def test_explosions_and_failures_are_excluded_with_reasons(tmp_path):
    collapsed = bulk('Cu', 'fcc', a=3.6, cubic=True)
    collapsed.positions[1] = collapsed.positions[0] + [0.2, 0.0, 0.0]
    diverging = bulk('Au', 'fcc', a=4.1, cubic=True)  # formula Au4: the faulty calculator returns NaN
    raising = bulk('Cu', 'bcc', a=2.9, cubic=True)  # Cu2: raises
    frames = [cu3au(), collapsed, diverging, raising]
    calculator = {'name': 'faulty', 'parameters': {'nan_for': ['Au4'], 'raise_for': ['Cu2']}}
    results, status = run_task(tmp_path, 'relax', frames, calculator=calculator, max_energy_drop=1.0)
    assert status == 0 and results['n_relaxed'] == 1 and results['n_excluded'] == 3
    reasons = {record['index']: record['reason'] for record in results['excluded']}
    assert 'closer than 0.5' in reasons[1]
    assert reasons[2].startswith('relaxation exploded') and 'not finite' in reasons[2]
    assert 'deliberate failure' in reasons[3]


def test_energy_divergence_is_detected(tmp_path):
    squeezed = cu3au(3.0)  # far from equilibrium: the energy falls steeply while the cell expands
    results, _ = run_task(tmp_path, 'relax', [squeezed], calculator={'name': 'emt'}, max_energy_drop=0.05)
    assert results['status'] == 'error' and results['error']['code'] == 'ALL_FAILED'
    assert 'energy diverged: fell by' in results['excluded'][0]['reason']


def test_soft_limit_and_resume_from_previous(tmp_path):
    frames = [cu3au(3.7), cu3au(3.8), cu3au(3.9)]
    results, status = run_task(tmp_path, 'relax', frames, calculator={'name': 'emt'}, max_seconds=0)
    assert status == 2 and results['status'] == 'incomplete' and results['n_relaxed'] == 1
    assert results['n_remaining'] == 2 and results['error']['code'] == 'WALLTIME'
    (tmp_path / 'previous.extxyz').write_bytes((tmp_path / RELAXED_FILE).read_bytes())
    results, status = run_task(tmp_path, 'relax', frames, calculator={'name': 'emt'}, previous='previous.extxyz')
    assert status == 0 and results['n_reused'] == 1 and results['n_relaxed'] == 3


def test_bad_relax_input_is_refused_by_the_schema(tmp_path):
    results, status = run_task(tmp_path, 'relax', [cu3au()], calculator={'name': 'emt'}, fmax=-1)
    assert status == 1 and results['error']['code'] == 'INVALID_INPUT' and 'fmax' in results['error']['message']


@pytest.fixture(scope='module')
def potential_dir(tmp_path_factory):
    """Two differently initialised (untrained) members: an ensemble with a spread."""
    import torch

    directory = tmp_path_factory.mktemp('potential')
    for seed in (0, 1):
        torch.manual_seed(seed)
        save_model(build_model(small_config()).double(), str(directory / f'member_{seed}.pt'))
    return directory


def test_mlmat_registry_calculator_gives_members_and_disagreement(potential_dir):
    calculator = make_calculator('mlmat', {'directory': str(potential_dir)})
    atoms = cu3au()
    atoms.rattle(0.05, seed=1)
    atoms.calc = calculator
    energy = atoms.get_potential_energy()
    members = calculator.results['member_energies']
    assert len(members) == 2 and abs(np.mean(members) - energy) < 1e-12
    assert calculator.results['energy_std'] == pytest.approx(np.std(members))
    assert calculator.results['forces_disagreement'] > 0
    with pytest.raises(ValueError, match='only `directory` and `device`'):
        make_calculator('mlmat', {'directory': str(potential_dir), 'cutoff': 3})


def test_md_with_an_ensemble_records_disagreement(tmp_path, potential_dir):
    (tmp_path / 'potential').symlink_to(potential_dir)
    md = {'calculator': {'name': 'mlmat'}, 'temperatures': [300], 'steps': 4, 'interval': 2, 'timestep': 0.5}
    results, status = run_task(tmp_path, 'sample', [cu3au()], md=md, include_seeds=False)
    assert status == 0 and results['n_configurations'] == 2
    frames = read(tmp_path / 'sampled.extxyz', ':')
    for frame in frames:
        assert frame.info[DISAGREEMENT_KEY] > 0 and frame.info[ENERGY_STD_KEY] >= 0


def test_every_calcjob_defaults_to_the_parser_of_its_entry_point():
    from aiida.plugins import CalculationFactory
    from aiida.plugins.entry_point import get_entry_point_names

    names = [name for name in get_entry_point_names('aiida.calculations') if name.startswith('mlmat.')]
    assert 'mlmat.relax' in names
    for name in names:
        assert CalculationFactory(name).spec().inputs['metadata']['options']['parser_name'].default == name


def test_candidate_set_from_pymatgen_structures():
    from pymatgen.core import Lattice, Structure

    from aiida_mlmat.workflows.hull_functions import ROLE_KEY, candidate_set

    structure = Structure(Lattice.cubic(3.7), ['Cu', 'Au'], [[0, 0, 0], [0.5, 0.5, 0.5]])
    node = candidate_set({'B2-CuAu': structure, 'L12-Cu3Au': cu3au()})
    frames = node.get_atoms()
    assert [frame.info[NAME_KEY] for frame in frames] == ['B2-CuAu', 'L12-Cu3Au']
    assert all(frame.info[ROLE_KEY] == 'candidate' for frame in frames)
    assert frames[0].get_chemical_formula() == 'AuCu' and abs(frames[0].get_volume() - 3.7**3) < 1e-9
    with pytest.raises(ValueError, match='no candidate'):
        candidate_set([])
