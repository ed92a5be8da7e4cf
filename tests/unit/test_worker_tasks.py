"""The worker end to end in a temporary folder: ``main(['label' | 'sample', input.json])``.

Every number the worker writes is checked against a direct ASE evaluation; failures, the soft time limit,
restarts from partial output and each error code in ``results.json`` are exercised.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT

from aiida_mlmat.common.constants import (
    EXCLUDED_FILE,
    INDEX_KEY,
    LABELLED_FILE,
    METHOD_KEY,
    RESULTS_JSON,
    SAMPLED_FILE,
    SEED_KEY,
)
from aiida_mlmat.worker import calculators
from aiida_mlmat.worker.__main__ import main
from aiida_mlmat.worker.schema import SCHEMA_VERSION
from aiida_mlmat.worker.structures import read_extxyz, write_extxyz

pytestmark = pytest.mark.unit

ATOL = 1e-8


# --- helpers --------------------------------------------------------------------------------------------------


def mixed_frames() -> list[Atoms]:
    """Five small, distinct configurations: rattled fcc Cu, a CuAu alloy, Au with a vacancy, a Cu3 cluster."""
    frames = []
    for seed in range(2):
        atoms = bulk('Cu', 'fcc', a=3.6 + 0.05 * seed, cubic=True)
        atoms.rattle(0.05, seed=seed)
        frames.append(atoms)
    alloy = bulk('Cu', 'fcc', a=3.8, cubic=True)
    alloy.set_chemical_symbols(['Cu', 'Au', 'Cu', 'Au'])
    alloy.rattle(0.03, seed=7)
    frames.append(alloy)
    vacancy = bulk('Au', 'fcc', a=4.1, cubic=True)
    del vacancy[1]
    frames.append(vacancy)  # 3 atoms
    frames.append(Atoms('Cu3', positions=[[0, 0, 0], [2.5, 0, 0], [1.2, 2.1, 0.1]], pbc=False))
    return frames


def write_label_input(workdir: Path, frames, calculator=None, **extra) -> Path:
    write_extxyz(str(workdir / 'structures.extxyz'), frames)
    data = {
        'schema_version': SCHEMA_VERSION,
        'task': 'label',
        'calculator': calculator or {'name': 'emt', 'parameters': {}},
        'structures': 'structures.extxyz',
        'properties': ['energy', 'forces', 'stress'],
        **extra,
    }
    path = workdir / 'input.json'
    path.write_text(json.dumps(data))
    return path


def run_worker(task: str, path: Path) -> tuple[int, dict]:
    status = main([task, str(path)])
    results = json.loads((path.parent / RESULTS_JSON).read_text())
    return status, results


def read_excluded(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / EXCLUDED_FILE).read_text().splitlines() if line.strip()]


def emt_reference(atoms: Atoms) -> dict:
    atoms = atoms.copy()
    atoms.calc = EMT()
    reference = {'energy': atoms.get_potential_energy(), 'forces': atoms.get_forces()}
    if atoms.pbc.all():
        reference['stress'] = atoms.get_stress()
    return reference


class FakeEntryPoint:
    def __init__(self, factory):
        self._factory = factory

    def load(self):
        return self._factory


class OddRefusingEMT(EMT):
    """EMT that refuses configurations with an odd number of atoms (e.g. with a vacancy)."""

    def calculate(self, atoms=None, properties=('energy',), system_changes=all_changes):
        if len(atoms) % 2:
            raise RuntimeError(f'odd atom count {len(atoms)} refused')
        super().calculate(atoms, properties, system_changes)


class NaNCalculator(Calculator):
    """Returns a NaN energy for configurations containing gold, finite numbers otherwise."""

    implemented_properties = ('energy', 'forces', 'stress')

    def calculate(self, atoms=None, properties=('energy',), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        energy = float('nan') if 'Au' in atoms.get_chemical_symbols() else -1.0 * len(atoms)
        self.results = {'energy': energy, 'forces': np.zeros((len(atoms), 3)), 'stress': np.zeros(6)}


class InfForcesCalculator(NaNCalculator):
    def calculate(self, atoms=None, properties=('energy',), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results['energy'] = 0.0
        self.results['forces'][0, 0] = np.inf


@pytest.fixture
def test_calculators(monkeypatch):
    """Register test calculators as if they came from ``mlmat.calculators`` entry points."""
    registered = {
        'odd_refusing': FakeEntryPoint(lambda parameters: OddRefusingEMT(**parameters)),
        'nan_for_gold': FakeEntryPoint(lambda parameters: NaNCalculator(**parameters)),
        'inf_forces': FakeEntryPoint(lambda parameters: InfForcesCalculator(**parameters)),
        'always_raises': FakeEntryPoint(lambda parameters: (_ for _ in ()).throw(ValueError('no licence found'))),
    }
    monkeypatch.setattr(calculators, '_entry_points', lambda: dict(registered))
    return registered


def assert_labels_match_emt(labelled: list[Atoms], inputs: list[Atoms], properties=('energy', 'forces', 'stress')):
    assert len(labelled) == len(inputs)
    for frame, original in zip(labelled, inputs, strict=True):
        reference = emt_reference(original)
        np.testing.assert_allclose(frame.positions, original.positions, atol=ATOL, rtol=0)
        assert frame.get_chemical_symbols() == original.get_chemical_symbols()
        assert frame.calc.results['energy'] == pytest.approx(reference['energy'], abs=ATOL, rel=0)
        if 'forces' in properties:
            np.testing.assert_allclose(frame.calc.results['forces'], reference['forces'], atol=ATOL, rtol=0)
        else:
            assert 'forces' not in frame.calc.results
        if 'stress' in properties and original.pbc.all():
            np.testing.assert_allclose(frame.calc.results['stress'], reference['stress'], atol=ATOL, rtol=0)
        else:
            assert 'stress' not in frame.calc.results


# --- label: numbers ---------------------------------------------------------------------------------------------


def test_label_equals_direct_emt(tmp_path):
    path = write_label_input(tmp_path, mixed_frames())
    status, results = run_worker('label', path)
    assert status == 0
    assert results['status'] == 'ok'
    assert results['task'] == 'label'
    assert results['schema_version'] == SCHEMA_VERSION
    assert {'ase', 'numpy', 'python', 'aiida_mlmat'} <= set(results['versions'])
    assert results['n_input'] == 5
    assert results['n_labelled'] == 5
    assert results['n_reused'] == 0
    assert results['n_excluded'] == 0
    assert results['n_remaining'] == 0
    assert results['excluded'] == []
    assert results['properties'] == ['energy', 'forces', 'stress']
    assert results['timings']['compute_s'] <= results['timings']['total_s']
    assert results['timings']['per_configuration_s'] == pytest.approx(results['timings']['compute_s'] / 5)
    assert 'error' not in results

    inputs = read_extxyz(str(tmp_path / 'structures.extxyz'))  # what the worker saw (8 decimals)
    labelled = read_extxyz(str(tmp_path / LABELLED_FILE))
    assert_labels_match_emt(labelled, inputs)
    assert [frame.info[INDEX_KEY] for frame in labelled] == [0, 1, 2, 3, 4]
    assert 'stress' not in labelled[4].calc.results  # the non-periodic cluster has no stress
    assert (tmp_path / EXCLUDED_FILE).read_text() == ''
    # the numbers are not trivially zero
    assert len({round(frame.get_potential_energy(), 6) for frame in labelled}) == 5
    assert np.abs(labelled[0].get_forces()).max() > 0.05


def test_label_energy_only(tmp_path):
    path = write_label_input(tmp_path, mixed_frames()[:3], properties=['energy'])
    status, results = run_worker('label', path)
    assert status == 0
    assert results['properties'] == ['energy']
    inputs = read_extxyz(str(tmp_path / 'structures.extxyz'))
    assert_labels_match_emt(read_extxyz(str(tmp_path / LABELLED_FILE)), inputs, properties=('energy',))


def test_label_keeps_given_indices_and_info(tmp_path):
    frames = mixed_frames()[:3]
    for position, frame in enumerate(frames):
        frame.info[INDEX_KEY] = 100 + 10 * position
        frame.info[METHOD_KEY] = f'rattle{position}'
    path = write_label_input(tmp_path, frames)
    status, _ = run_worker('label', path)
    assert status == 0
    labelled = read_extxyz(str(tmp_path / LABELLED_FILE))
    assert [frame.info[INDEX_KEY] for frame in labelled] == [100, 110, 120]
    assert [frame.info[METHOD_KEY] for frame in labelled] == ['rattle0', 'rattle1', 'rattle2']


def test_label_ignores_existing_labels_of_the_input(tmp_path):
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = mixed_frames()[:2]
    for frame in frames:
        frame.calc = SinglePointCalculator(frame, energy=999.0, forces=np.full((len(frame), 3), 9.0))
    path = write_label_input(tmp_path, frames)
    assert run_worker('label', path)[0] == 0
    inputs = read_extxyz(str(tmp_path / 'structures.extxyz'))
    labelled = read_extxyz(str(tmp_path / LABELLED_FILE))
    assert_labels_match_emt(labelled, inputs)
    assert all(frame.get_potential_energy() != 999.0 for frame in labelled)


def test_lj_parameters_reach_the_worker(tmp_path):
    from ase.calculators.lj import LennardJones

    frames = [Atoms('Ar2', positions=[[0, 0, 0], [3.8, 0, 0]], pbc=False)]
    parameters = {'sigma': 3.4, 'epsilon': 0.0104, 'rc': 10.0}
    path = write_label_input(tmp_path, frames, calculator={'name': 'lj', 'parameters': parameters})
    assert run_worker('label', path)[0] == 0
    atoms = frames[0].copy()
    atoms.calc = LennardJones(**parameters)
    labelled = read_extxyz(str(tmp_path / LABELLED_FILE))
    assert labelled[0].get_potential_energy() == pytest.approx(atoms.get_potential_energy(), abs=1e-12)
    assert labelled[0].get_potential_energy() < 0


# --- label: exclusions --------------------------------------------------------------------------------------------


def too_close(frame: Atoms, distance: float = 0.3) -> Atoms:
    frame = frame.copy()
    positions = frame.positions.copy()
    positions[1] = positions[0] + [distance, 0, 0]
    frame.positions = positions
    return frame


def test_too_close_pair_is_excluded_and_the_rest_labelled(tmp_path):
    frames = mixed_frames()
    frames[2] = too_close(frames[2])
    path = write_label_input(tmp_path, frames)
    status, results = run_worker('label', path)
    assert status == 0
    assert results['status'] == 'ok'
    assert results['n_labelled'] == 4
    assert results['n_excluded'] == 1
    record = results['excluded'][0]
    assert record['index'] == 2
    assert record['formula'] == frames[2].get_chemical_formula()
    assert record['reason'].startswith('invalid configuration: atoms closer than 0.5 Å')
    assert 'shortest distance 0.300 Å' in record['reason']
    assert read_excluded(tmp_path) == [record]
    inputs = read_extxyz(str(tmp_path / 'structures.extxyz'))
    labelled = read_extxyz(str(tmp_path / LABELLED_FILE))
    assert [frame.info[INDEX_KEY] for frame in labelled] == [0, 1, 3, 4]
    assert_labels_match_emt(labelled, [inputs[i] for i in (0, 1, 3, 4)])


def test_too_close_across_the_periodic_boundary_is_excluded(tmp_path):
    frames = [Atoms('Cu2', positions=[[0.1, 2, 2], [3.8, 2, 2]], cell=[4, 4, 4], pbc=True), *mixed_frames()[:1]]
    path = write_label_input(tmp_path, frames)
    status, results = run_worker('label', path)
    assert status == 0
    assert [record['index'] for record in results['excluded']] == [0]
    assert 'shortest distance 0.300 Å' in results['excluded'][0]['reason']


def test_min_distance_is_honoured(tmp_path):
    frames = [too_close(mixed_frames()[0], 0.45)]
    path = write_label_input(tmp_path, frames, min_distance=0.4)
    status, results = run_worker('label', path)
    assert status == 0
    assert results['n_labelled'] == 1
    assert results['n_excluded'] == 0


def test_calculator_exception_is_excluded_with_its_text(tmp_path, test_calculators):
    frames = mixed_frames()  # frame 3 (Au with a vacancy) and frame 4 (Cu3) have odd atom counts
    path = write_label_input(tmp_path, frames, calculator={'name': 'odd_refusing', 'parameters': {}})
    status, results = run_worker('label', path)
    assert status == 0
    assert results['status'] == 'ok'
    assert results['n_labelled'] == 3
    assert [record['index'] for record in results['excluded']] == [3, 4]
    assert results['excluded'][0] == {
        'index': 3,
        'formula': 'Au3',
        'reason': 'calculator failed: RuntimeError: odd atom count 3 refused',
    }
    assert read_excluded(tmp_path) == results['excluded']
    inputs = read_extxyz(str(tmp_path / 'structures.extxyz'))
    assert_labels_match_emt(read_extxyz(str(tmp_path / LABELLED_FILE)), inputs[:3])


def test_nan_energy_is_excluded_as_non_finite(tmp_path, test_calculators):
    frames = mixed_frames()  # frame 2 (CuAu) and 3 (Au3) contain gold
    path = write_label_input(tmp_path, frames, calculator={'name': 'nan_for_gold'})
    status, results = run_worker('label', path)
    assert status == 0
    assert [record['index'] for record in results['excluded']] == [2, 3]
    for record in results['excluded']:
        assert 'non-finite energy' in record['reason']
    labelled = read_extxyz(str(tmp_path / LABELLED_FILE))
    assert [frame.get_potential_energy() for frame in labelled] == [-4.0, -4.0, -3.0]


def test_infinite_force_is_excluded_as_non_finite(tmp_path, test_calculators):
    path = write_label_input(tmp_path, mixed_frames()[:2], calculator={'name': 'inf_forces'})
    status, results = run_worker('label', path)
    assert status == 1
    assert results['error']['code'] == 'ALL_FAILED'
    assert all('non-finite forces' in record['reason'] for record in results['excluded'])


def test_all_failing_gives_all_failed(tmp_path):
    frames = [too_close(frame) for frame in mixed_frames()[:3]]
    path = write_label_input(tmp_path, frames)
    status, results = run_worker('label', path)
    assert status == 1
    assert results['status'] == 'error'
    assert results['error']['code'] == 'ALL_FAILED'
    assert 'every one of the 3 configurations failed' in results['error']['message']
    assert 'atoms closer than 0.5 Å' in results['error']['message']
    assert results['n_excluded'] == 3
    assert results['n_labelled'] == 0
    assert (tmp_path / LABELLED_FILE).read_text() == ''
    assert len(read_excluded(tmp_path)) == 3


def test_calculator_that_cannot_be_built_fails_every_configuration(tmp_path, test_calculators):
    path = write_label_input(tmp_path, mixed_frames()[:2], calculator={'name': 'always_raises'})
    status, results = run_worker('label', path)
    assert status == 1
    assert results['error']['code'] == 'ALL_FAILED'
    assert 'calculator failed: ValueError: no licence found' in results['error']['message']


# --- label: soft time limit and restarts ------------------------------------------------------------------------


def test_zero_time_limit_labels_one_configuration_per_run(tmp_path):
    frames = mixed_frames()
    path = write_label_input(tmp_path, frames, max_seconds=0)
    status, results = run_worker('label', path)
    assert status == 2
    assert results['status'] == 'incomplete'
    assert results['error']['code'] == 'WALLTIME'
    assert 'soft time limit of 0 s reached with 4 configurations left' in results['error']['message']
    assert results['n_labelled'] == 1
    assert results['n_remaining'] == 4
    labelled = read_extxyz(str(tmp_path / LABELLED_FILE))
    assert len(labelled) == 1
    assert labelled[0].info[INDEX_KEY] == 0


def test_restart_from_partial_output_labels_only_the_rest(tmp_path):
    """A run stopped by a zero soft time limit labels configuration 0; its label, marked with a fake energy
    (EMT's + 100 eV) and forces (EMT's + 0.25 eV/Å), is passed back as ``previous``: the restart reuses it as
    written (1 reused, 5 labelled, the compute time per configuration over the 4 new ones) and labels
    configurations 1-4 with EMT (to 1e-8)."""
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = mixed_frames()
    path = write_label_input(tmp_path, frames, max_seconds=0)
    assert run_worker('label', path)[0] == 2

    # mark the partial label with values EMT does not give, so that a recomputation would show
    previous = read_extxyz(str(tmp_path / LABELLED_FILE))
    assert len(previous) == 1 and previous[0].info[INDEX_KEY] == 0
    marked = previous[0]
    sentinel = marked.get_potential_energy() + 100.0  # eV
    fake_forces = marked.get_forces() + 0.25  # eV/Å
    marked.calc = SinglePointCalculator(marked, energy=sentinel, forces=fake_forces, stress=marked.get_stress())
    write_extxyz(str(tmp_path / 'previous.extxyz'), [marked])

    data = json.loads(path.read_text())
    data.update(previous='previous.extxyz', max_seconds=None)
    path.write_text(json.dumps(data))
    status, results = run_worker('label', path)
    assert status == 0
    assert results['status'] == 'ok'
    assert results['n_reused'] == 1
    assert results['n_labelled'] == 5
    assert results['timings']['per_configuration_s'] == pytest.approx(results['timings']['compute_s'] / 4)
    labelled = read_extxyz(str(tmp_path / LABELLED_FILE))
    assert [frame.info[INDEX_KEY] for frame in labelled] == [0, 1, 2, 3, 4]
    assert labelled[0].get_potential_energy() == pytest.approx(sentinel, abs=1e-8, rel=0)
    np.testing.assert_allclose(labelled[0].get_forces(), fake_forces, atol=1e-8, rtol=0)
    inputs = read_extxyz(str(tmp_path / 'structures.extxyz'))
    assert_labels_match_emt(labelled[1:], inputs[1:])


def test_previous_labels_are_copied_not_recomputed(tmp_path):
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = mixed_frames()
    fake = frames[1].copy()
    fake.info[INDEX_KEY] = 1
    fake.calc = SinglePointCalculator(fake, energy=123.456, forces=np.full((len(fake), 3), 0.5), stress=np.ones(6))
    write_extxyz(str(tmp_path / 'previous.extxyz'), [fake])
    path = write_label_input(tmp_path, frames, previous='previous.extxyz')
    status, results = run_worker('label', path)
    assert status == 0
    assert results['n_reused'] == 1
    labelled = read_extxyz(str(tmp_path / LABELLED_FILE))
    assert labelled[1].get_potential_energy() == 123.456
    np.testing.assert_array_equal(labelled[1].get_forces(), np.full((len(fake), 3), 0.5))
    inputs = read_extxyz(str(tmp_path / 'structures.extxyz'))
    assert_labels_match_emt([labelled[i] for i in (0, 2, 3, 4)], [inputs[i] for i in (0, 2, 3, 4)])


def test_a_reused_label_without_stress_is_counted(tmp_path):
    """A label copied from the interrupted job counts in ``n_without_stress`` as a new one would: the restart's
    warning covers every periodic configuration it outputs without stress, not only those it computed."""
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = mixed_frames()
    assert frames[1].pbc.all()
    earlier = frames[1].copy()
    earlier.info[INDEX_KEY] = 1
    earlier.calc = SinglePointCalculator(earlier, energy=-0.1, forces=np.zeros((len(earlier), 3)))  # no stress
    write_extxyz(str(tmp_path / 'previous.extxyz'), [earlier])
    path = write_label_input(tmp_path, frames, previous='previous.extxyz')
    status, results = run_worker('label', path)
    assert status == 0
    assert results['n_reused'] == 1
    assert results['n_without_stress'] == 1  # EMT gave stress for the other periodic ones


def restart_until_done(workdir: Path, path: Path, max_runs: int = 10) -> tuple[list[int], dict]:
    """Run the worker, feeding each partial output back as ``previous``, as the restart wrapper does."""
    statuses = []
    for _ in range(max_runs):
        status, results = run_worker('label', path)
        statuses.append(status)
        if status != 2:
            break
        shutil.copy(workdir / LABELLED_FILE, workdir / 'previous.extxyz')
        data = json.loads(path.read_text())
        data['previous'] = 'previous.extxyz'
        excluded = [json.loads(line) for line in (workdir / 'excluded.jsonl').read_text().splitlines() if line]
        if excluded:  # as LabelCalculation does with ``restart_from.excluded``
            (workdir / 'previous_excluded.json').write_text(json.dumps(excluded))
            data['previous_excluded'] = 'previous_excluded.json'
        path.write_text(json.dumps(data))
    return statuses, results


def test_repeated_zero_limit_runs_converge(tmp_path):
    path = write_label_input(tmp_path, mixed_frames(), max_seconds=0)
    statuses, results = restart_until_done(tmp_path, path)
    assert statuses == [2, 2, 2, 2, 0]  # each run makes exactly one step of progress
    assert results['n_reused'] == 4
    assert results['n_labelled'] == 5
    labelled = read_extxyz(str(tmp_path / LABELLED_FILE))
    assert_labels_match_emt(labelled, read_extxyz(str(tmp_path / 'structures.extxyz')))


def test_repeated_zero_limit_runs_converge_past_an_excluded_configuration(tmp_path):
    frames = mixed_frames()
    frames[2] = too_close(frames[2])
    path = write_label_input(tmp_path, frames, max_seconds=0)
    statuses, results = restart_until_done(tmp_path, path)
    assert statuses[-1] == 0, statuses
    assert results['n_labelled'] == 4
    assert [record['index'] for record in results['excluded']] == [2]


# --- worker errors -------------------------------------------------------------------------------------------------


def error_of(workdir: Path, status: int) -> dict:
    results = json.loads((workdir / RESULTS_JSON).read_text())
    assert status == 1
    assert results['status'] == 'error'
    assert {'schema_version', 'task', 'started', 'versions'} <= set(results)
    return results['error']


def test_invalid_json(tmp_path):
    path = tmp_path / 'input.json'
    path.write_text('{"schema_version": 1, "task": ')
    error = error_of(tmp_path, main(['label', str(path)]))
    assert error['code'] == 'CORRUPT_FILE'
    assert '`input.json` is not valid JSON' in error['message']


def test_missing_input(tmp_path):
    error = error_of(tmp_path, main(['label', str(tmp_path / 'input.json')]))
    assert error['code'] == 'MISSING_FILE'
    assert '`input.json` is missing' in error['message']


def test_unknown_task(tmp_path):
    path = write_label_input(tmp_path, mixed_frames()[:1])
    error = error_of(tmp_path, main(['anneal', str(path)]))
    assert error['code'] == 'INVALID_INPUT'
    assert 'unknown task `anneal`' in error['message']
    assert 'known: descriptors, label, relax, sample, train' in error['message']


def test_schema_violation_is_invalid_input(tmp_path):
    path = write_label_input(tmp_path, mixed_frames()[:1], structures='../structures.extxyz')
    error = error_of(tmp_path, main(['label', str(path)]))
    assert error['code'] == 'INVALID_INPUT'
    assert 'structures:' in error['message']


def test_task_mismatch_is_invalid_input(tmp_path):
    path = write_label_input(tmp_path, mixed_frames()[:1])
    error = error_of(tmp_path, main(['sample', str(path)]))
    assert error['code'] == 'INVALID_INPUT'
    assert "task: 'sample' was expected" in error['message']
    assert "'calculator', 'properties' were unexpected" in error['message']


@pytest.mark.parametrize(
    'content',
    [
        'this is not an extxyz file\nat all\n',
        '4\nLattice="3.6 0 0 0 3.6 0 0 0 3.6" Properties=species:S:1:pos:R:3\nCu 0 0 0\nCu 1.8 1.8 0\n',
        '2\n\nCu 0 0 zero\nCu 1 1 1\n',
    ],
    ids=['garbage', 'truncated', 'bad-number'],
)
def test_corrupt_extxyz(tmp_path, content):
    path = write_label_input(tmp_path, mixed_frames()[:1])
    (tmp_path / 'structures.extxyz').write_text(content)
    error = error_of(tmp_path, main(['label', str(path)]))
    assert error['code'] == 'CORRUPT_FILE'
    assert 'cannot read `structures.extxyz` as extxyz' in error['message']


def test_missing_structures_file(tmp_path):
    path = write_label_input(tmp_path, mixed_frames()[:1])
    (tmp_path / 'structures.extxyz').unlink()
    error = error_of(tmp_path, main(['label', str(path)]))
    assert error['code'] == 'MISSING_FILE'
    assert '`structures.extxyz` is missing' in error['message']


def test_missing_previous_file(tmp_path):
    path = write_label_input(tmp_path, mixed_frames()[:1], previous='previous.extxyz')
    error = error_of(tmp_path, main(['label', str(path)]))
    assert error['code'] == 'MISSING_FILE'
    assert '`previous.extxyz`' in error['message']


def test_unknown_calculator(tmp_path):
    path = write_label_input(tmp_path, mixed_frames()[:1], calculator={'name': 'nope'})
    error = error_of(tmp_path, main(['label', str(path)]))
    assert error['code'] == 'UNKNOWN_CALCULATOR'
    assert 'unknown calculator `nope`' in error['message']
    assert 'emt' in error['message']


def test_unavailable_calculator(tmp_path, monkeypatch):
    monkeypatch.setitem(calculators.BUILTIN, 'ghost', ('mlmat_no_such_module_xyz', 'Ghost', {}, ''))
    path = write_label_input(tmp_path, mixed_frames()[:1], calculator={'name': 'ghost'})
    error = error_of(tmp_path, main(['label', str(path)]))
    assert error['code'] == 'CALCULATOR_UNAVAILABLE'
    assert 'mlmat_no_such_module_xyz' in error['message']


def test_unexpected_exception_is_reported_with_a_traceback(tmp_path, monkeypatch):
    from aiida_mlmat.worker.tasks import label

    def explode(params, workdir):
        raise ZeroDivisionError('boom')

    monkeypatch.setattr(label, 'run', explode)
    path = write_label_input(tmp_path, mixed_frames()[:1])
    error = error_of(tmp_path, main(['label', str(path)]))
    assert error == {'code': 'UNEXPECTED', 'message': 'ZeroDivisionError: boom'}
    assert 'ZeroDivisionError' in json.loads((tmp_path / RESULTS_JSON).read_text())['traceback']


@pytest.mark.parametrize('argv', [[], ['label'], ['label', 'a.json', 'b.json']])
def test_usage_error(argv, capsys):
    assert main(argv) == 64
    assert 'usage: mlmat-worker TASK input.json' in capsys.readouterr().err


def test_relative_input_path_writes_results_beside_it(tmp_path, monkeypatch):
    path = write_label_input(tmp_path, mixed_frames()[:1])
    monkeypatch.chdir(tmp_path)
    assert main(['label', path.name]) == 0
    assert json.loads((tmp_path / RESULTS_JSON).read_text())['status'] == 'ok'


# --- sample -------------------------------------------------------------------------------------------------------


def sample_seeds() -> list[Atoms]:
    cu = bulk('Cu', 'fcc', a=3.61, cubic=True)  # 4 atoms
    au = bulk('Au', 'fcc', a=4.08)  # 1 atom
    return [cu, au]


def write_sample_input(workdir: Path, seeds=None, **params) -> Path:
    write_extxyz(str(workdir / 'structures.extxyz'), seeds if seeds is not None else sample_seeds())
    data = {'schema_version': SCHEMA_VERSION, 'task': 'sample', 'structures': 'structures.extxyz', **params}
    path = workdir / 'input.json'
    path.write_text(json.dumps(data))
    return path


FULL_SAMPLE = {
    'supercell': [2, 1, 1],
    'rattle': {'count': 3, 'stdev': 0.05, 'seed': 1},
    'strain': {'count': 2, 'max_strain': 0.03, 'rattle_stdev': 0.01, 'seed': 2},
    'vacancies': {'count': 2, 'seed': 3},
    'md': {
        'calculator': {'name': 'emt'},
        'temperatures': [300, 900],
        'steps': 5,
        'interval': 2,
        'timestep': 2.0,
        'seed': 4,
    },
}


def run_sample(workdir: Path, **params) -> tuple[dict, list[Atoms]]:
    path = write_sample_input(workdir, **params)
    status, results = run_worker('sample', path)
    assert status == 0, results
    return results, read_extxyz(str(workdir / SAMPLED_FILE))


def test_sample_counts_match_the_parameters(tmp_path):
    results, frames = run_sample(tmp_path, **FULL_SAMPLE)
    n_seeds = 2
    n_md = len(FULL_SAMPLE['md']['temperatures']) * (5 // 2)
    expected = {'seed': n_seeds, 'rattle': 3 * n_seeds, 'strain': 2 * n_seeds, 'vacancy': 2 * n_seeds, 'md': n_md * 2}
    assert results['counts'] == expected
    assert results['n_seeds'] == 2
    assert results['n_configurations'] == sum(expected.values()) == len(frames) == 24
    assert [frame.info[INDEX_KEY] for frame in frames] == list(range(24))
    methods = [frame.info[METHOD_KEY] for frame in frames]
    per_seed = ['seed'] + ['rattle'] * 3 + ['strain'] * 2 + ['vacancy'] * 2 + ['md:300K'] * 2 + ['md:900K'] * 2
    assert methods == per_seed * 2
    assert [frame.info[SEED_KEY] for frame in frames] == [0] * 12 + [1] * 12


def test_sample_supercell_multiplies_atom_counts_and_vacancy_removes_one(tmp_path):
    _, frames = run_sample(tmp_path, **FULL_SAMPLE)
    sizes = {(frame.info[SEED_KEY], frame.info[METHOD_KEY]): len(frame) for frame in frames}
    assert sizes[(0, 'seed')] == 4 * 2
    assert sizes[(1, 'seed')] == 1 * 2
    for (seed, method), size in sizes.items():
        expected = (8 if seed == 0 else 2) - (1 if method == 'vacancy' else 0)
        assert size == expected, (seed, method)
    seeds = sample_seeds()
    for frame in frames:
        original = seeds[frame.info[SEED_KEY]]
        if frame.info[METHOD_KEY] != 'strain':
            np.testing.assert_allclose(frame.cell.array, original.cell.array * [[2], [1], [1]], atol=1e-8)
        if frame.info[METHOD_KEY] == 'vacancy':
            assert frame.get_chemical_symbols() == [original.get_chemical_symbols()[0]] * (len(original) * 2 - 1)


def test_sample_repeats_a_seed_only_along_its_periodic_directions(tmp_path):
    """A cluster (no cell) beside a bulk seed under a protocol's supercell [2, 2, 2]: the bulk seed is repeated,
    the cluster sampled as it is (repeating along an undefined lattice vector failed the whole sampling job)."""
    cluster = Atoms('Cu3', positions=[[0, 0, 0], [2.5, 0, 0], [1.25, 2.2, 0]])
    slab = bulk('Cu', 'fcc', a=3.61, cubic=True)
    slab.pbc = [True, True, False]
    seeds = [bulk('Cu', 'fcc', a=3.61, cubic=True), cluster, slab]
    results, frames = run_sample(tmp_path, seeds=seeds, supercell=[2, 2, 2], rattle={'count': 1, 'stdev': 0.05})
    assert results['counts'] == {'seed': 3, 'rattle': 3}
    sizes = [len(frame) for frame in frames if frame.info[METHOD_KEY] == 'seed']
    assert sizes == [32, 3, 16]  # 4 x 8, the cluster as given, the slab 2 x 2 in plane only


def test_sample_without_supercell_and_seeds(tmp_path):
    results, frames = run_sample(tmp_path, include_seeds=False, rattle={'count': 2, 'stdev': 0.1})
    assert results['counts'] == {'rattle': 4}
    assert [len(frame) for frame in frames] == [4, 4, 1, 1]


def test_sample_vacancy_of_a_one_atom_seed_is_skipped(tmp_path):
    results, frames = run_sample(tmp_path, vacancies={'count': 3})
    assert results['counts'] == {'seed': 2, 'vacancy': 3}  # only the 4-atom Cu seed gives vacancies
    assert [len(frame) for frame in frames if frame.info[METHOD_KEY] == 'vacancy'] == [3, 3, 3]


def test_sample_is_reproducible(tmp_path):
    first_dir, second_dir, third_dir = (tmp_path / name for name in ('a', 'b', 'c'))
    for folder in (first_dir, second_dir, third_dir):
        folder.mkdir()
    _, first = run_sample(first_dir, **FULL_SAMPLE)
    _, second = run_sample(second_dir, **FULL_SAMPLE)
    assert len(first) == len(second)
    for one, two in zip(first, second, strict=True):
        np.testing.assert_array_equal(one.positions, two.positions)
        np.testing.assert_array_equal(one.cell.array, two.cell.array)
        assert one.get_chemical_symbols() == two.get_chemical_symbols()
    other = {**FULL_SAMPLE, 'rattle': {**FULL_SAMPLE['rattle'], 'seed': 99}}
    _, third = run_sample(third_dir, **other)
    assert not np.allclose(first[1].positions, third[1].positions)  # a different rattle seed
    np.testing.assert_array_equal(first[4].positions, third[4].positions)  # strains do not depend on it


def test_sample_rattle_has_the_requested_spread(tmp_path):
    seeds = [bulk('Cu', 'fcc', a=3.61, cubic=True)]
    _, frames = run_sample(
        tmp_path, seeds=seeds, supercell=[3, 3, 3], include_seeds=False, rattle={'count': 3, 'stdev': 0.05}
    )
    reference = seeds[0].repeat((3, 3, 3))
    displacements = np.concatenate([frame.positions - reference.positions for frame in frames])
    assert displacements.shape == (3 * 108, 3)
    assert displacements.std() == pytest.approx(0.05, rel=0.1)
    assert abs(displacements.mean()) < 0.01
    for frame in frames:
        np.testing.assert_allclose(frame.cell.array, reference.cell.array, atol=1e-12)


def test_sample_strain_stays_within_bounds(tmp_path):
    seeds = [bulk('Cu', 'fcc', a=3.61, cubic=True)]
    _, frames = run_sample(tmp_path, seeds=seeds, include_seeds=False, strain={'count': 5, 'max_strain': 0.04})
    reference = seeds[0]
    for frame in frames:
        deformation = np.linalg.solve(reference.cell.array, frame.cell.array)  # cell1 = cell0 @ (1 + eps)
        eps = deformation - np.eye(3)
        np.testing.assert_allclose(eps, eps.T, atol=1e-8)
        assert np.abs(eps).max() <= 0.04 + 1e-8
        assert np.abs(eps).max() > 1e-4
        shift = frame.get_scaled_positions(wrap=False) - reference.get_scaled_positions(wrap=False)
        np.testing.assert_allclose(shift, 0, atol=1e-7)  # no rattle: atoms follow the cell


def test_sample_md_snapshots_are_physical(tmp_path):
    seeds = [bulk('Cu', 'fcc', a=3.61, cubic=True)]
    params = {'include_seeds': False, 'md': {**FULL_SAMPLE['md'], 'temperatures': [600], 'steps': 6, 'interval': 3}}
    results, frames = run_sample(tmp_path, seeds=seeds, **params)
    assert results['counts'] == {'md': 2}
    assert [frame.info[METHOD_KEY] for frame in frames] == ['md:600K', 'md:600K']
    for frame in frames:
        displacement = frame.positions - seeds[0].positions
        assert np.all(np.isfinite(frame.positions))
        assert 1e-4 < np.abs(displacement).max() < 0.5
    assert not np.allclose(frames[0].positions, frames[1].positions)


def test_sample_md_realises_the_requested_temperatures(tmp_path):
    """Langevin MD of a 32-atom fcc Cu cell (EMT, 2 fs steps, friction 0.05/fs, every step kept) at 300 K and
    900 K realises each temperature.

    Snapshots keep no momenta, so velocities are finite differences of consecutive positions; after a burn-in of
    40 steps (80 fs, four friction times) the mean kinetic temperature ``sum(m v^2) / (3 N k_B)`` of the next 200
    steps must be the requested one times ``1 - friction * timestep / 3`` (0.967: ASE's Langevin scheme moves the
    atoms with a half-step velocity damped by ``1 - friction * timestep / 2`` and a position noise adding
    ``friction * timestep / 6``) within 10 % (the standard deviation over 16 seeds was 3 %). The mean square
    displacement from the ideal lattice (the drift of the centre of mass taken out) must grow with temperature
    as in a harmonic solid, 900 K / 300 K = 3 (3.2 +- 0.4 over 16 seeds, EMT being slightly anharmonic): between
    2 and 4.5.
    """
    seed = bulk('Cu', 'fcc', a=3.61, cubic=True)
    timestep, friction, burn_in = 2.0, 0.05, 40  # fs, 1/fs, steps
    md = {'calculator': {'name': 'emt'}, 'temperatures': [300, 900], 'steps': 240, 'interval': 1,
          'timestep': timestep, 'friction': friction, 'seed': 0}  # fmt: skip
    results, frames = run_sample(tmp_path, seeds=[seed], supercell=[2, 2, 2], include_seeds=False, md=md)
    assert results['counts'] == {'md': 480}
    lattice = seed.repeat((2, 2, 2))
    masses = lattice.get_masses()[None, :, None]  # amu
    msd = {}
    for temperature in (300, 900):
        trajectory = [frame for frame in frames if frame.info[METHOD_KEY] == f'md:{temperature}K']
        assert len(trajectory) == 240
        positions = np.array([frame.positions for frame in trajectory])[burn_in:]  # Å
        velocities = np.diff(positions, axis=0) / (timestep * units.fs)  # Å per ASE time unit
        kinetic = (masses * velocities**2).sum(axis=(1, 2)) / (3 * len(lattice) * units.kB)  # K, per step
        expected = temperature * (1 - friction * timestep / 3)
        assert kinetic.mean() == pytest.approx(expected, rel=0.1), (temperature, kinetic.mean())
        displacements = positions - lattice.positions
        displacements -= displacements.mean(axis=1, keepdims=True)  # fixcm=False: the centre of mass diffuses
        msd[temperature] = (displacements**2).sum(axis=2).mean()  # Å^2
    assert 2.0 < msd[900] / msd[300] < 4.5, msd


def test_sample_errors(tmp_path, monkeypatch):
    path = write_sample_input(tmp_path, seeds=[])
    (tmp_path / 'structures.extxyz').write_text('')
    error = error_of(tmp_path, main(['sample', str(path)]))
    assert error == {'code': 'INVALID_INPUT', 'message': 'no seed structures given'}

    (tmp_path / 'structures.extxyz').write_text('garbage\n')
    assert error_of(tmp_path, main(['sample', str(path)]))['code'] == 'CORRUPT_FILE'

    (tmp_path / 'structures.extxyz').unlink()
    assert error_of(tmp_path, main(['sample', str(path)]))['code'] == 'MISSING_FILE'

    path = write_sample_input(tmp_path, md={**FULL_SAMPLE['md'], 'calculator': {'name': 'nope'}})
    assert error_of(tmp_path, main(['sample', str(path)]))['code'] == 'UNKNOWN_CALCULATOR'

    monkeypatch.setitem(calculators.BUILTIN, 'ghost', ('mlmat_no_such_module_xyz', 'Ghost', {}, ''))
    path = write_sample_input(tmp_path, md={**FULL_SAMPLE['md'], 'calculator': {'name': 'ghost'}})
    assert error_of(tmp_path, main(['sample', str(path)]))['code'] == 'CALCULATOR_UNAVAILABLE'


def test_sample_md_failure_is_unexpected(tmp_path, test_calculators):
    path = write_sample_input(tmp_path, md={**FULL_SAMPLE['md'], 'calculator': {'name': 'odd_refusing'}})
    error = error_of(tmp_path, main(['sample', str(path)]))
    assert error['code'] == 'UNEXPECTED'
    assert error['message'] == 'MD on seed 1 failed: RuntimeError: odd atom count 1 refused'


def test_label_of_an_empty_structures_file_is_invalid_input(tmp_path):
    path = write_label_input(tmp_path, mixed_frames()[:1])
    (tmp_path / 'structures.extxyz').write_text('')
    error = error_of(tmp_path, main(['label', str(path)]))
    assert error['code'] == 'INVALID_INPUT'


# --- threads ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ('environ', 'expected', 'after'),
    [
        ({}, 1, '1'),  # a machine shared with other jobs: one thread each
        ({'SLURM_CPUS_PER_TASK': '4'}, 4, '4'),  # SLURM's --cpus-per-task: the job's own cores
        ({'SLURM_CPUS_PER_TASK': 'x'}, 1, '1'),
        ({'OMP_NUM_THREADS': '3'}, None, None),  # set by the Code or the job's environment: kept
        ({'MKL_NUM_THREADS': '2'}, None, None),
    ],
)
def test_configure_threads(environ, expected, after):
    from aiida_mlmat.worker.__main__ import configure_threads

    given = dict(environ)
    assert configure_threads(environ) == expected
    if after is None:
        assert environ == given  # nothing changed
    else:
        assert environ['OMP_NUM_THREADS'] == environ['MKL_NUM_THREADS'] == after


@pytest.mark.parametrize(('omp', 'expected'), [(None, 1), ('2', 2)])
def test_worker_program_computes_with_the_configured_threads(tmp_path, omp, expected):
    """``mlmat-worker`` run as a program (as every job runs it) records the threads torch computed with."""
    import os
    import subprocess
    import sys

    write_extxyz(tmp_path / 'structures.extxyz', mixed_frames()[:2])
    spec = {'kind': 'chebyshev', 'species': ['Au', 'Cu'], 'rcut': 4.0, 'n_radial': 4, 'n_angular': 2}
    params = {'schema_version': SCHEMA_VERSION, 'task': 'descriptors', 'structures': 'structures.extxyz',
              'descriptor': spec, 'device': 'cpu'}  # fmt: skip
    (tmp_path / 'input.json').write_text(json.dumps(params))
    environ = {key: value for key, value in os.environ.items() if key not in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS')}
    environ.pop('SLURM_CPUS_PER_TASK', None)
    if omp is not None:
        environ['OMP_NUM_THREADS'] = omp
    command = [sys.executable, '-m', 'aiida_mlmat.worker', 'descriptors', 'input.json']
    completed = subprocess.run(command, cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=300)
    results = json.loads((tmp_path / RESULTS_JSON).read_text())
    assert completed.returncode == 0 and results['status'] == 'ok', completed.stderr
    assert results['threads'] == expected
