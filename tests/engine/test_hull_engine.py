"""Engine tier: convex-hull screening (``mlmat.relax`` jobs + hull calcfunctions) through the daemon."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from aiida import orm
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition

from aiida_mlmat.common.constants import NAME_KEY
from aiida_mlmat.data.configurations import ConfigurationSetData
from aiida_mlmat.data.potential import potential_from_files
from aiida_mlmat.data.screening import ScreenedCandidateData
from aiida_mlmat.workflows.hull import HullWorkChain

pytestmark = pytest.mark.engine


def cuau_candidates() -> list[Atoms]:
    """Ordered Cu-Au structures (some stable in EMT, some not)."""
    frames = []
    cube = bulk('Cu', 'fcc', a=3.75, cubic=True)
    for name, symbols in (
        ('L12-Cu3Au', ['Au', 'Cu', 'Cu', 'Cu']),
        ('L10-CuAu', ['Cu', 'Cu', 'Au', 'Au']),
        ('L12-CuAu3', ['Cu', 'Au', 'Au', 'Au']),
    ):
        atoms = cube.copy()
        atoms.set_chemical_symbols(symbols)
        atoms.info[NAME_KEY] = name
        frames.append(atoms)
    b2 = bulk('Cu', 'bcc', a=3.0, cubic=True)
    b2.set_chemical_symbols(['Cu', 'Au'])
    b2.info[NAME_KEY] = 'B2-CuAu'
    frames.append(b2)
    hcp = bulk('Cu', 'hcp', a=2.7, covera=1.633)
    hcp.set_chemical_symbols(['Cu', 'Au'])
    hcp.info[NAME_KEY] = 'hcp-CuAu'
    frames.append(hcp)
    return frames


#: Relaxation settings of the EMT screen and of its independent check: tight enough (eV/Å) that the two
#: relaxations' energies agree to about 1e-6 eV/atom, so the comparison can be strict.
TIGHT_RELAX = {'fmax': 0.001, 'max_steps': 3000}


def independent_e_above_hull(prepared: ConfigurationSetData) -> dict[str, float]:
    """ASE relaxation (FIRE, FrechetCellFilter, same fmax) + a pymatgen PhaseDiagram, nothing from aiida-mlmat."""
    entries = {}
    for frame in prepared.get_atoms():
        atoms = Atoms(frame.numbers, positions=frame.positions, cell=frame.cell, pbc=True)
        atoms.calc = EMT()
        FIRE(FrechetCellFilter(atoms), logfile=None).run(fmax=TIGHT_RELAX['fmax'], steps=TIGHT_RELAX['max_steps'])
        entries[frame.info[NAME_KEY]] = PDEntry(Composition(atoms.get_chemical_formula()), atoms.get_potential_energy())
    diagram = PhaseDiagram(list(entries.values()))
    return {name: diagram.get_e_above_hull(entry) for name, entry in entries.items() if not name.startswith('ref-')}


_SCREENS: dict[str, orm.WorkflowNode] = {}


@pytest.fixture
def emt_screen(submit_and_await, worker_code):
    """One EMT screen shared by the tests of this module (the daemon fixtures are function-scoped)."""
    if 'emt' in _SCREENS:
        return _SCREENS['emt']
    candidates = ConfigurationSetData(cuau_candidates()).store()
    node = submit_and_await(
        HullWorkChain,
        elements=orm.List(['Cu', 'Au']),
        candidates=candidates,
        calculator=orm.Dict({'name': 'emt'}),
        code=worker_code,
        relax=orm.Dict(TIGHT_RELAX),
        chunk_size=orm.Int(6),
        verify={'top': orm.Int(3), 'calculator': orm.Dict({'name': 'emt'})},
        timeout=600,
    )
    _SCREENS['emt'] = node
    return node


def test_emt_screen_equals_independent_relaxation_and_pymatgen(emt_screen):
    node = emt_screen
    assert node.is_finished_ok, node.exit_message
    prepared = next(
        link.node
        for link in node.base.links.get_outgoing().all()
        if isinstance(link.node, orm.CalcFunctionNode) and link.node.process_label == 'prepare_screening'
    ).outputs.result
    expected = independent_e_above_hull(prepared)
    candidates = {candidate.name: candidate for candidate in node.outputs.candidates.values()}
    assert set(candidates) == set(expected) == {c.info[NAME_KEY] for c in cuau_candidates()}
    for name, value in expected.items():
        attributes = candidates[name].get_dict()
        assert attributes['status'] == 'ok' and attributes['converged']
        assert abs(attributes['e_above_hull'] - value) < 2e-5, (name, attributes['e_above_hull'], value)  # eV/atom
        # one energy model: a single member, so no spread and a certain verdict
        assert attributes['e_above_hull_std'] == 0.0 and attributes['p_stable'] in (0.0, 1.0)
        assert attributes['stable'] == (value < 1e-6)
    assert any(c.stable for c in candidates.values()) and not all(c.stable for c in candidates.values())


def test_queryable_table_plot_and_verification(emt_screen):
    node = emt_screen
    threshold = 0.05
    qb = orm.QueryBuilder()
    qb.append(orm.WorkflowNode, filters={'id': node.pk}, tag='screen')
    qb.append(ScreenedCandidateData, with_incoming='screen', filters={'attributes.e_above_hull': {'<': threshold}})
    found = {candidate.name for (candidate,) in qb.all()}
    expected = {c.name for c in node.outputs.candidates.values() if c.e_above_hull < threshold}
    assert found == expected and found
    rows = list(csv.DictReader(io.StringIO(node.outputs.table.get_content())))
    assert {row['name'] for row in rows} == {c.name for c in node.outputs.candidates.values()}
    assert node.outputs.plot.get_content(mode='rb')[:8] == b'\x89PNG\r\n\x1a\n'
    # The reference method is the energy model itself here: the verification must agree exactly.
    metrics = node.outputs.verification['metrics']
    assert metrics['n'] == 3 and metrics['mae'] < 1e-6
    verified = [c for c in node.outputs.candidates.values() if 'reference_e_above_hull' in c.get_dict()]
    assert len(verified) == 3
    assert node.outputs.summary['n_screened'] == 5 and node.outputs.summary['n_failed'] == 0


def test_bad_candidates_are_recorded_and_the_screen_goes_on(submit_and_await, worker_code):
    frames = cuau_candidates()[:3]
    outside = bulk('Cu', 'fcc', a=3.6, cubic=True)
    outside.set_chemical_symbols(['Ni', 'Cu', 'Cu', 'Cu'])
    outside.info[NAME_KEY] = 'L12-Cu3Ni'
    diverging = bulk('Cu', 'bcc', a=3.0, cubic=True)
    diverging.set_chemical_symbols(['Cu', 'Au'])
    diverging.info[NAME_KEY] = 'B2-CuAu'
    crashing = bulk('Cu', 'hcp', a=2.7, covera=1.633).repeat((1, 1, 3))
    crashing.set_chemical_symbols(['Cu', 'Cu', 'Cu', 'Cu', 'Cu', 'Au'])
    crashing.info[NAME_KEY] = 'hcp-Cu5Au'
    candidates = ConfigurationSetData([*frames, outside, diverging, crashing]).store()
    faulty = {'name': 'faulty', 'parameters': {'nan_for': ['AuCu'], 'raise_for': ['AuCu5']}}
    node = submit_and_await(
        HullWorkChain,
        elements=orm.List(['Cu', 'Au']),
        candidates=candidates,
        calculator=orm.Dict(faulty),
        code=worker_code,
        timeout=600,
    )
    assert node.is_finished_ok, node.exit_message
    results = {c.name: c.get_dict() for c in node.outputs.candidates.values()}
    assert (
        results['L12-Cu3Ni']['status'] == 'failed' and 'outside the chemical system' in results['L12-Cu3Ni']['reason']
    )
    assert results['B2-CuAu']['status'] == 'failed' and 'not finite' in results['B2-CuAu']['reason']
    assert results['hcp-Cu5Au']['status'] == 'failed' and 'deliberate failure' in results['hcp-Cu5Au']['reason']
    ok = [name for name, attributes in results.items() if attributes['status'] == 'ok']
    assert sorted(ok) == sorted(f.info[NAME_KEY] for f in frames)
    assert all(np.isfinite(results[name]['e_above_hull']) for name in ok)
    assert node.outputs.summary['n_failed'] == 3


def test_a_screen_where_every_candidate_fails_is_a_failure_with_its_records(submit_and_await, worker_code):
    """Nothing screened is not a success: exit 321 naming the first reason, every record attached."""
    crashing = bulk('Cu', 'hcp', a=2.7, covera=1.633).repeat((1, 1, 3))
    crashing.set_chemical_symbols(['Cu', 'Cu', 'Cu', 'Cu', 'Cu', 'Au'])
    crashing.info[NAME_KEY] = 'hcp-Cu5Au'
    node = submit_and_await(
        HullWorkChain,
        elements=orm.List(['Cu', 'Au']),
        candidates=ConfigurationSetData([crashing]).store(),
        calculator=orm.Dict({'name': 'faulty', 'parameters': {'raise_for': ['AuCu5']}}),
        code=worker_code,
        timeout=600,
    )
    assert node.exit_status == HullWorkChain.exit_codes.ERROR_NOTHING_SCREENED.status, node.exit_message
    assert '1 failed; first:' in node.exit_message and 'deliberate failure' in node.exit_message
    (candidate,) = node.outputs.candidates.values()
    assert candidate.get_dict()['status'] == 'failed' and node.outputs.summary['n_screened'] == 0
    assert 'table' in node.outputs and 'plot' in node.outputs


def test_missing_references_and_bad_input_are_refused_early(worker_code):
    from aiida.engine import run_get_node

    from aiida_mlmat.common.constants import NAME_KEY as KEY

    references = bulk('Cu', 'fcc', a=3.6)
    references.calc = EMT()
    references.get_potential_energy()
    from ase.calculators.singlepoint import SinglePointCalculator

    references.calc = SinglePointCalculator(references, energy=references.get_potential_energy())
    references.info[KEY] = 'Cu-fcc'
    candidates = ConfigurationSetData(cuau_candidates()[:1])
    base = {'elements': orm.List(['Cu', 'Au']), 'candidates': candidates, 'code': worker_code}
    with pytest.raises(ValueError, match=r'no elemental reference for \[.Au.\]'):
        run_get_node(
            HullWorkChain, calculator=orm.Dict({'name': 'emt'}), references=ConfigurationSetData([references]), **base
        )
    with pytest.raises(ValueError, match='exactly one energy model'):
        run_get_node(HullWorkChain, **base)
    with pytest.raises(ValueError, match=r"calculator: `emt` cannot treat the elements \['U'\]"):
        run_get_node(HullWorkChain, calculator=orm.Dict({'name': 'emt'}), **{**base, 'elements': orm.List(['Cu', 'U'])})


def test_ensemble_of_identical_members_gives_certain_verdicts(submit_and_await, worker_code, tmp_path):
    """All members agree -> P(stable) is exactly 0 or 1 and the spread is 0; the potential runs in the worker."""
    from aiida_mlmat.ml.training import MODEL, TrainingConfig, train
    from tests.unit.test_model import emt_data, small_config

    train(small_config(), emt_data(24, 1), emt_data(8, 2), TrainingConfig(epochs=15, batch_size=4, seed=3), tmp_path)
    potential = potential_from_files([tmp_path / MODEL, tmp_path / MODEL]).store()
    node = submit_and_await(
        HullWorkChain,
        elements=orm.List(['Cu', 'Au']),
        candidates=ConfigurationSetData(cuau_candidates()[:3]).store(),
        potential=potential,
        code=worker_code,
        relax=orm.Dict({'max_steps': 150}),
        timeout=600,
    )
    assert node.exit_status in (0,), node.exit_message
    results = [c.get_dict() for c in node.outputs.candidates.values()]
    ok = [r for r in results if r['status'] == 'ok']
    assert ok, results
    for attributes in ok:
        assert attributes['p_stable'] in (0.0, 1.0)
        assert attributes['e_above_hull_std'] == pytest.approx(0.0, abs=1e-12)
    assert node.outputs.hull['n_members'] == 2
    summary = node.outputs.summary.get_dict()
    assert summary['n_uncertain'] == 0  # agreeing members leave nothing uncertain
    assert summary['n_stable'] == sum(r['p_stable'] == 1.0 for r in ok)


def test_screen_command_json_contract_and_bad_files(started_daemon_client, worker_code, tmp_path):
    import json

    from ase.io import write
    from click.testing import CliRunner

    from aiida_mlmat.cli.main import cli

    files = []
    for frame in cuau_candidates()[:2]:
        path = tmp_path / f'{frame.info[NAME_KEY]}.cif'
        write(path, frame)
        files.append(str(path))
    args = ['screen', '--calculator', 'emt', '--candidates', *files, '--elements', 'Cu', 'Au']
    result = CliRunner().invoke(cli, [*args, '--out', str(tmp_path / 'out'), '--wait', '--json'])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert {row['name'] for row in data['candidates']} == {'L12-Cu3Au', 'L10-CuAu'}
    for row in data['candidates']:
        assert {'name', 'formula', 'e_form_per_atom', 'e_above_hull', 'e_above_hull_std', 'p_stable', 'stable'} <= set(
            row
        )
        assert row['e_above_hull'] >= 0 and row['p_stable'] in (0.0, 1.0)
    assert (tmp_path / 'out' / 'hull.png').stat().st_size > 0
    assert (tmp_path / 'out' / 'screening.csv').read_text().startswith('name,formula,status')

    corrupt = tmp_path / 'broken.cif'
    corrupt.write_text('data_broken\n_cell_length_a 3.6\n')
    before = orm.QueryBuilder().append(orm.Node).count()
    result = CliRunner().invoke(cli, [*args[:3], '--candidates', str(corrupt), '--elements', 'Cu', 'Au', '--json'])
    assert result.exit_code == 2 and 'broken.cif' in result.output
    assert orm.QueryBuilder().append(orm.Node).count() == before
