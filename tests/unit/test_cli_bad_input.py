"""Bad input to ``mlmat`` commands: a clear, early error with its banded exit code (2 invalid input, 4 not found),
never a traceback, one JSON object as the last stdout line with ``--json``, and nothing stored before the refusal.
"""

from __future__ import annotations

import json

import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from click.testing import CliRunner

from aiida_mlmat.cli.main import cli

HUGE_PK = '99999999999999999999999'


def invoke(args: list[str]):
    """Run ``mlmat ARGS``; the result, with no traceback in its output."""
    result = CliRunner().invoke(cli, args)
    assert 'Traceback' not in result.output
    return result


def json_error(result) -> dict:
    """The JSON error object on the last line of stdout."""
    return json.loads(result.stdout.strip().splitlines()[-1])


def node_count() -> int:
    from aiida import orm

    return orm.QueryBuilder().append(orm.Node).count()


def labelled(atoms: Atoms, forces: bool = True, stress: bool = True) -> Atoms:
    """``atoms`` with EMT labels (energy eV, forces eV/Å, stress eV/Å^3) as a single-point calculator."""
    atoms = atoms.copy()
    atoms.calc = EMT()
    results = {'energy': atoms.get_potential_energy()}
    if forces:
        results['forces'] = atoms.get_forces()
    if stress:
        results['stress'] = atoms.get_stress()
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def write_frames(path, frames) -> str:
    from aiida_mlmat.worker.structures import extxyz_string

    path.write_text(extxyz_string(frames))
    return str(path)


def copper_frames(n: int = 3) -> list[Atoms]:
    frames = []
    for k in range(n):
        atoms = bulk('Cu', 'fcc', a=3.6, cubic=True)
        atoms.rattle(0.05, seed=k)
        frames.append(atoms)
    return frames


# --- 1. a PK too large for a database integer is not found (exit 4), not an OverflowError -------------------------


@pytest.mark.parametrize(
    'args',
    [
        ['dataset', 'show', HUGE_PK],
        ['train', HUGE_PK],
        ['report', HUGE_PK],
        ['provenance', HUGE_PK],
        ['descriptors', HUGE_PK],
    ],
)
def test_huge_pk_is_not_found(aiida_profile, args):
    result = invoke([*args, '--json'])
    assert result.exit_code == 4, result.output
    error = json_error(result)
    assert error['exit_code'] == 4
    assert HUGE_PK in error['error']
    assert 'OverflowError' not in result.output


def test_load_node_refuses_a_pk_beyond_the_database_integer(aiida_profile):
    from aiida_mlmat.cli.utils import EXIT_NOT_FOUND, MAX_PK, MlmatCliError, load_node

    for identifier in (MAX_PK + 1, str(MAX_PK + 1), HUGE_PK, '-' + HUGE_PK):
        with pytest.raises(MlmatCliError, match=f'no node with PK `{identifier}`') as info:
            load_node(identifier)
        assert info.value.exit_code == EXIT_NOT_FOUND
    with pytest.raises(MlmatCliError) as info:  # the largest PK is looked up: not there
        load_node(MAX_PK)
    assert info.value.exit_code == EXIT_NOT_FOUND
    with pytest.raises(MlmatCliError) as info:  # a superscript is a digit to str.isdigit, but no number to int()
        load_node('²')
    assert info.value.exit_code == EXIT_NOT_FOUND


def test_an_all_digit_uuid_prefix_that_is_no_pk_is_a_uuid_prefix(aiida_profile):
    """``mlmat provenance`` prints 8-character UUID prefixes; about one in forty is all digits, which AiiDA reads as
    a PK. Such a prefix loads its node; a PK keeps precedence; eight digits with a leading 0 are never a PK; a prefix
    that matches none or several is refused (exit 4)."""
    from aiida import orm

    from aiida_mlmat.cli import utils
    from aiida_mlmat.cli.utils import EXIT_NOT_FOUND, MlmatCliError, load_node

    for attempt in range(5000):  # each new UUID has a (10/16)^8 chance of an all-digit prefix: ~43 tries expected
        node = orm.Int(attempt).store()
        if node.uuid[:8].isdecimal():
            break
    else:
        pytest.fail('no all-digit UUID prefix in 5000 nodes')
    prefix = node.uuid[:8]
    assert load_node(prefix).uuid == node.uuid
    assert load_node(prefix + '-' + node.uuid[9:13]).uuid == node.uuid
    assert load_node(str(node.pk)).uuid == node.uuid  # a PK is a PK
    padded = f'{node.pk:08d}'  # what AiiDA itself reads as this PK
    assert orm.load_node(padded).pk == node.pk
    with pytest.raises(MlmatCliError, match=f'no node whose UUID starts with `{padded}`') as info:
        load_node(padded)
    assert info.value.exit_code == EXIT_NOT_FOUND
    for text in ('999999999', '9999999'):  # no PK, and not 8 digits: not looked up as a prefix
        with pytest.raises(MlmatCliError, match='no unique node') as info:
            load_node(text)
        assert info.value.exit_code == EXIT_NOT_FOUND
    starts = [uuid[0] for uuid in orm.QueryBuilder().append(orm.Node, project='uuid').all(flat=True)]
    digit = next(d for d in '0123456789' if starts.count(d) > 1)
    with pytest.raises(MlmatCliError, match=f'the UUIDs of {starts.count(digit)} nodes start with `{digit}`') as info:
        utils._by_uuid_prefix(digit)
    assert info.value.exit_code == EXIT_NOT_FOUND


def test_a_label_on_several_nodes_lists_their_pks(aiida_profile):
    from aiida import orm

    from aiida_mlmat.cli.utils import EXIT_NOT_FOUND, MlmatCliError, load_node

    first, second = (orm.Dict({'n': n}, label='twice-imported').store() for n in (1, 2))
    with pytest.raises(MlmatCliError) as info:
        load_node('twice-imported')
    assert info.value.exit_code == EXIT_NOT_FOUND
    assert str(info.value) == (
        f'the label `twice-imported` names 2 nodes (PKs {first.pk} (Dict), {second.pk} (Dict)); give one PK or UUID'
    )
    assert load_node(str(second.pk)).pk == second.pk


# --- 2. NaN and infinities are refused by every float option (exit 2, naming it) ----------------------------------


@pytest.mark.parametrize('value', ['inf', 'nan', '-nan', 'Infinity'])
def test_train_max_minutes_must_be_finite(value):
    result = invoke(['train', '1', '--max-minutes', value, '--json'])
    assert result.exit_code == 2, result.output
    error = json_error(result)
    assert "'--max-minutes'" in error['error']
    assert error['exit_code'] == 2


def test_train_max_minutes_has_a_maximum():
    result = invoke(['train', '1', '--max-minutes', '1e300'])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--max-minutes'" in result.output


@pytest.mark.parametrize('value', ['nan', 'inf'])
def test_screen_fmax_must_be_finite(value):
    args = ['screen', '--elements', 'Cu', '--calculator', 'emt', '--generate', '2', '--fmax', value, '--json']
    result = invoke(args)
    assert result.exit_code == 2, result.output
    assert "'--fmax'" in json_error(result)['error']
    assert 'is not a finite number' in json_error(result)['error']


@pytest.mark.parametrize('value', ['nan', 'inf'])
def test_descriptors_rcut_must_be_finite(tmp_path, value):
    path = write_frames(tmp_path / 'in.xyz', copper_frames(1))
    result = invoke(['descriptors', path, '--rcut', value])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--rcut'" in result.output


def test_finite_float_range_keeps_finite_values_and_bounds():
    import click

    from aiida_mlmat.cli.utils import FiniteFloatRange

    kind = FiniteFloatRange(min=0.1, max=10.0)
    assert kind.convert('2.5', None, None) == 2.5
    for bad in ('nan', 'inf', '-inf', '0.05', '11'):
        with pytest.raises(click.BadParameter):
            kind.convert(bad, None, None)


# --- 3. `mlmat screen` validates before it stores anything --------------------------------------------------------


def candidate_file(tmp_path) -> str:
    atoms = bulk('Cu', 'fcc', a=3.7, cubic=True)
    atoms.set_chemical_symbols(['Cu', 'Cu', 'Au', 'Au'])
    return write_frames(tmp_path / 'cand.xyz', [atoms])


def test_screen_with_a_potential_missing_an_element_stores_nothing(aiida_profile, worker_code, tmp_path):
    from aiida_mlmat.data.potential import PotentialData

    potential = PotentialData([b'not read: refused before'], config={'species': ['Au', 'Cu']}).store()
    before = node_count()
    args = ['screen', '--elements', 'Cu', 'Au', 'Ni', '--potential', str(potential.pk)]
    result = invoke([*args, '--candidates', candidate_file(tmp_path), '--json'])
    assert result.exit_code == 2, result.output
    assert "potential: it was not trained on ['Ni']" in json_error(result)['error']
    assert node_count() == before


def test_screen_with_references_missing_an_element_stores_nothing(aiida_profile, worker_code, tmp_path):
    references = write_frames(tmp_path / 'refs.xyz', [labelled(bulk('Cu', 'fcc', a=3.6), forces=False)])
    before = node_count()
    args = ['screen', '--elements', 'Cu', 'Au', '--calculator', 'emt', '--candidates', candidate_file(tmp_path)]
    result = invoke([*args, '--references', references, '--json'])
    assert result.exit_code == 2, result.output
    assert "no elemental reference for ['Au']" in json_error(result)['error']
    assert node_count() == before


def test_screen_without_the_worker_code_stores_nothing(aiida_profile, tmp_path):
    """A missing Code (exit 5) is found before the candidate files are stored."""
    before = node_count()
    args = ['screen', '--elements', 'Cu', 'Au', '--calculator', 'emt', '--candidates', candidate_file(tmp_path)]
    result = invoke([*args, '--computer', 'no-such-computer', '--json'])
    assert result.exit_code == 5, result.output
    assert 'no-such-computer' in json_error(result)['error']
    assert node_count() == before


def test_screen_inputs_store_the_candidates_once_valid(aiida_profile, worker_code, tmp_path):
    """Valid input: the candidate files are stored with their provenance (``candidates_from_files``)."""
    from aiida_mlmat.cli.screen import build_screen_inputs

    kwargs = {
        'elements': ('Cu', 'Au'),
        'potential': None,
        'calculator': 'emt',
        'calculator_params': None,
        'candidate_files': (candidate_file(tmp_path),),
        'generate': None,
        'references': None,
        'verify_top': 0,
        'verify_calculator': None,
        'verify_params': None,
        'verify_relax': False,
        'fmax': None,
        'max_steps': None,
        'chunk_size': None,
        'computer': 'localhost',
    }
    inputs = build_screen_inputs(**kwargs)
    candidates = inputs['candidates']
    assert candidates.is_stored
    assert candidates.creator.process_label == 'candidates_from_files'
    assert candidates.count == 1


# --- 4. `--ensemble` is bounded ------------------------------------------------------------------------------------


def test_train_ensemble_has_a_maximum():
    from aiida_mlmat.workflows.protocols import MAX_ENSEMBLE_SIZE

    result = invoke(['train', '1', '--ensemble', '1000000000', '--json'])
    assert result.exit_code == 2, result.output
    error = json_error(result)['error']
    assert "'--ensemble'" in error
    assert f'1<=x<={MAX_ENSEMBLE_SIZE}' in error
    assert invoke(['train', '1', '--ensemble', str(MAX_ENSEMBLE_SIZE + 1)]).exit_code == 2


# --- 5. a cutoff below the minimum is refused clearly, on the file path, the stored-set path and the worker ----------


def test_check_cutoff_has_a_minimum():
    from aiida_mlmat.ml.neighbours import MIN_CUTOFF, CutoffError, check_cutoff

    assert MIN_CUTOFF == 0.5
    check_cutoff(bulk('Cu'), MIN_CUTOFF)
    for cutoff in (1e-9, 0.49):
        with pytest.raises(CutoffError, match=r'below the minimum of 0\.5 Å'):
            check_cutoff(bulk('Cu'), cutoff)
        with pytest.raises(CutoffError, match=r'below the minimum of 0\.5 Å'):  # non-periodic too
            check_cutoff(Atoms('Cu2', positions=[[0, 0, 0], [0, 0, 2.5]]), cutoff)
    with pytest.raises(CutoffError, match='finite'):
        check_cutoff(Atoms('Cu2', positions=[[0, 0, 0], [0, 0, 2.5]]), float('inf'))


def test_descriptors_of_a_file_refuse_a_tiny_cutoff(tmp_path):
    path = write_frames(tmp_path / 'in.xyz', copper_frames(1))
    result = invoke(['descriptors', path, '--rcut', '1e-9', '--json'])
    assert result.exit_code == 2, result.output
    error = json_error(result)
    assert 'below the minimum of 0.5 Å' in error['error']
    assert 'RuntimeError' not in result.output


def test_descriptors_of_a_stored_set_refuse_a_tiny_cutoff_before_storing(aiida_profile, tmp_path):
    from aiida_mlmat.data.configurations import ConfigurationSetData

    node = ConfigurationSetData(copper_frames(2)).store()
    before = node_count()
    result = invoke(['descriptors', str(node.pk), '--rcut', '0.1', '--json'])
    assert result.exit_code == 2, result.output
    assert json_error(result)['error'].startswith('--rcut: the cutoff 0.1 Å is below the minimum of 0.5 Å')
    assert node_count() == before


def test_worker_descriptors_task_refuses_a_tiny_cutoff(tmp_path):
    from aiida_mlmat.worker.errors import ErrorCode, WorkerError
    from aiida_mlmat.worker.tasks.descriptors import run

    write_frames(tmp_path / 'structures.extxyz', copper_frames(1))
    params = {
        'structures': 'structures.extxyz',
        'descriptor': {'kind': 'chebyshev', 'species': ['Cu'], 'rcut': 1e-9, 'n_radial': 4, 'n_angular': 2},
        'device': 'cpu',
    }
    with pytest.raises(WorkerError, match=r'below the minimum of 0\.5 Å') as info:
        run(params, tmp_path)
    assert info.value.code == ErrorCode.INVALID_INPUT


# --- 6. a label that only some configurations carry is refused on import ---------------------------------------------


def test_dataset_import_refuses_forces_on_some_frames_only(aiida_profile, tmp_path):
    frames = [labelled(atoms, forces=position != 1) for position, atoms in enumerate(copper_frames(3))]
    path = write_frames(tmp_path / 'partial.xyz', frames)
    before = node_count()
    result = invoke(['dataset', 'import', path, '--json'])
    assert result.exit_code == 2, result.output
    error = json_error(result)['error']
    assert 'only 2 of the 3 configurations carry `forces`' in error
    assert 'configuration 1 is the first without it' in error
    assert 'nothing was stored' in error
    assert node_count() == before


def test_dataset_import_refuses_energy_on_some_frames_only(aiida_profile, tmp_path):
    frames = copper_frames(3)
    frames[2] = labelled(frames[2])
    path = write_frames(tmp_path / 'partial.xyz', frames)
    before = node_count()
    result = invoke(['dataset', 'import', path])
    assert result.exit_code == 2, result.output
    assert 'only 1 of the 3 configurations carry `energy`; configuration 0 is the first without it' in result.output
    assert node_count() == before


def test_dataset_import_keeps_whole_labels_and_stress_only_where_periodic(aiida_profile, tmp_path):
    """Stress on every bulk frame, none on a cluster (which has none): stored, without the `stress` key."""
    cluster = Atoms('Cu3', positions=[[0, 0, 0], [2.5, 0, 0], [1.2, 2.1, 0]], pbc=False)
    frames = [*(labelled(atoms) for atoms in copper_frames(2)), labelled(cluster, stress=False)]
    path = write_frames(tmp_path / 'mixed.xyz', frames)
    result = invoke(['dataset', 'import', path, '--json'])
    assert result.exit_code == 0, result.output
    from aiida import orm

    node = orm.load_node(json.loads(result.stdout.strip().splitlines()[-1])['configurations'])
    assert node.label_keys == ['energy', 'forces']


def test_partial_stress_on_periodic_frames_is_refused(aiida_profile, tmp_path):
    from aiida_mlmat.data.configurations import ConfigurationSetData, CorruptFileError

    frames = [labelled(atoms, stress=position == 0) for position, atoms in enumerate(copper_frames(2))]
    path = write_frames(tmp_path / 'stress.xyz', frames)
    with pytest.raises(CorruptFileError, match='only 1 of the 2 periodic configurations carry `stress`'):
        ConfigurationSetData.from_file(path)
    assert ConfigurationSetData.from_file(path, validate=False).label_keys == ['energy', 'forces']


# --- options that would be ignored or colour a flat map ---------------------------------------------------------


def test_descriptors_colour_is_checked_before_anything_is_computed(aiida_profile, tmp_path):
    """`--colour` without `--map` would be ignored; `composition:Ni` for a Cu set would draw one flat colour; both
    are refused (exit 2) before the descriptors are computed or a job is stored."""
    from aiida_mlmat.data.configurations import ConfigurationSetData

    path = write_frames(tmp_path / 'in.xyz', copper_frames(3))
    result = invoke(['descriptors', path, '--colour', 'energy', '--json'])
    assert result.exit_code == 2
    assert json_error(result)['error'] == '--colour colours the data-set map: give --map FILE.png too'
    result = invoke(['descriptors', path, '--map', str(tmp_path / 'map.png'), '--colour', 'composition:Ni', '--json'])
    assert result.exit_code == 2
    assert (
        "--colour: `composition:Ni`: 'Ni' is in none of the configurations (elements: Cu)"
        in json_error(result)['error']
    )
    assert not (tmp_path / 'map.png').exists()
    stored = ConfigurationSetData([labelled(frame) for frame in copper_frames(3)]).store()
    before = node_count()
    args = ['descriptors', str(stored.pk), '--map', str(tmp_path / 'map.png'), '--colour', 'size', '--json']
    result = invoke(args)
    assert result.exit_code == 2
    assert 'colour must be `energy` or `composition:<element>`, got `size`' in json_error(result)['error']
    assert node_count() == before


@pytest.mark.parametrize(
    ('extra', 'message'),
    [
        (['--verify-params', '{}'], '--verify-params only apply to a verification: give --verify-top K too'),
        (['--verify-relax'], '--verify-relax only apply to a verification: give --verify-top K too'),
    ],
)
def test_screen_verification_options_without_a_verification(aiida_profile, tmp_path, extra, message):
    path = write_frames(tmp_path / 'cand.xyz', copper_frames(1))
    args = ['screen', '--elements', 'Cu', '--calculator', 'emt', '--candidates', path, *extra, '--json']
    before = node_count()
    result = invoke(args)
    assert result.exit_code == 2
    assert json_error(result)['error'] == message
    assert node_count() == before


def test_screen_calculator_params_with_a_potential(aiida_profile, tmp_path):
    path = write_frames(tmp_path / 'cand.xyz', copper_frames(1))
    args = ['screen', '--elements', 'Cu', '--potential', '1', '--calculator-params', '{}', '--candidates', path]
    result = invoke([*args, '--json'])
    assert result.exit_code == 2
    assert json_error(result)['error'] == (
        '--calculator-params are the parameters of --calculator NAME; a --potential takes none'
    )
