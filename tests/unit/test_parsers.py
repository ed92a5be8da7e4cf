"""Parsers ``mlmat.label``, ``mlmat.sample``, ``mlmat.train`` and ``mlmat.relax`` and the SLURM message mapping of
the base parser, on hand-made retrieved folders (no daemon, no worker run)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.plugins import ParserFactory
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from aiida_mlmat.calcjobs.label import LabelCalculation
from aiida_mlmat.calcjobs.relax import RelaxCalculation
from aiida_mlmat.calcjobs.train import TrainCalculation
from aiida_mlmat.common.constants import INDEX_KEY
from aiida_mlmat.data.configurations import ConfigurationSetData
from aiida_mlmat.data.potential import PotentialData
from aiida_mlmat.parsers.label import LabelParser
from aiida_mlmat.parsers.relax import RelaxParser
from aiida_mlmat.parsers.sample import SampleParser
from aiida_mlmat.parsers.train import TrainParser
from aiida_mlmat.worker.structures import extxyz_string

pytestmark = pytest.mark.unit

CALCULATOR = {'name': 'emt', 'parameters': {}}


def labelled_frames(n: int = 3) -> list[Atoms]:
    frames = []
    for index in range(n):
        atoms = bulk('Cu', 'fcc', a=3.61, cubic=True)
        atoms.rattle(0.03, seed=index)
        atoms.calc = EMT()
        results = {'energy': atoms.get_potential_energy(), 'forces': atoms.get_forces(), 'stress': atoms.get_stress()}
        atoms.calc = SinglePointCalculator(atoms, **results)
        atoms.info[INDEX_KEY] = index
        frames.append(atoms)
    return frames


def results_json(status: str = 'ok', code: str | None = None, message: str = '', **extra) -> str:
    data = {'status': status, 'schema_version': 1, 'task': 'label', **extra}
    if code:
        data['error'] = {'code': code, 'message': message}
    return json.dumps(data)


@pytest.fixture
def calc_job_node(aiida_localhost, tmp_path):
    """Build a stored ``CalcJobNode`` with inputs and a ``retrieved`` FolderData, plus a temporary folder.

    Follows aiida-quantumespresso's ``generate_calc_job_node``: ``retrieved`` holds the permanent files
    (``results.json``), the temporary folder the files of ``retrieve_temporary_list``.
    """

    def _make(entry_point: str, retrieved: dict[str, str | bytes], temporary: dict[str, str | bytes], inputs=None):
        node = orm.CalcJobNode(computer=aiida_localhost, process_type=f'aiida.calculations:{entry_point}')
        node.set_option('resources', {'num_machines': 1, 'num_mpiprocs_per_machine': 1})
        node.set_option('max_wallclock_seconds', 1800)
        for label, value in (inputs or {}).items():
            node.base.links.add_incoming(value, link_type=LinkType.INPUT_CALC, link_label=label)
        node.store()

        retrieved_dir = tmp_path / f'retrieved_{node.pk}'
        temporary_dir = tmp_path / f'temporary_{node.pk}'
        for folder, files in ((retrieved_dir, retrieved), (temporary_dir, temporary)):
            folder.mkdir()
            for name, content in files.items():
                path = folder / name
                if isinstance(content, bytes):
                    path.write_bytes(content)
                else:
                    path.write_text(content)
        folder_data = orm.FolderData()
        folder_data.base.repository.put_object_from_tree(str(retrieved_dir))
        folder_data.base.links.add_incoming(node, link_type=LinkType.CREATE, link_label='retrieved')
        folder_data.store()
        return node, str(temporary_dir)

    return _make


@pytest.fixture(scope='module')
def label_inputs(aiida_profile):
    """Stored inputs of a label job, shared by the module's tests (storing is the slow part)."""
    inputs = {
        'configurations': ConfigurationSetData(labelled_frames()),
        'calculator': orm.Dict(CALCULATOR),
        'properties': orm.List(['energy', 'forces', 'stress']),
    }
    return {label: value.store() for label, value in inputs.items()}


@pytest.fixture
def label_node(calc_job_node, label_inputs):
    def _make(retrieved, temporary):
        return calc_job_node('mlmat.label', retrieved, temporary, label_inputs)

    return _make


def parse_label(node, temporary):
    return LabelParser.parse_from_node(node, store_provenance=False, retrieved_temporary_folder=temporary)


EXCLUDED = {'index': 3, 'formula': 'Cu2', 'reason': 'invalid configuration: atoms closer than 0.5 Å'}


def test_entry_points():
    assert ParserFactory('mlmat.label') is LabelParser
    assert ParserFactory('mlmat.sample') is SampleParser
    assert ParserFactory('mlmat.train') is TrainParser
    assert ParserFactory('mlmat.relax') is RelaxParser


# --- label ----------------------------------------------------------------------------------------------------


def test_label_ok(label_node):
    frames = labelled_frames()
    results = results_json(n_input=4, n_labelled=3, n_excluded=1, excluded=[EXCLUDED])
    node, temporary = label_node(
        {'results.json': results},
        {'labelled.extxyz': extxyz_string(frames), 'excluded.jsonl': json.dumps(EXCLUDED) + '\n'},
    )
    outputs, calcfunction = parse_label(node, temporary)
    assert calcfunction.is_finished_ok, calcfunction.exit_message
    assert calcfunction.exit_status == 0
    assert set(outputs) == {'results', 'configurations'}
    assert outputs['results'].get_dict()['n_labelled'] == 3
    labelled = outputs['configurations']
    assert isinstance(labelled, ConfigurationSetData)
    assert labelled.count == 3
    assert labelled.calculator == CALCULATOR
    assert labelled.excluded == [EXCLUDED]
    assert labelled.base.attributes.get('n_excluded') == 1
    assert labelled.label_keys == ['energy', 'forces', 'stress']
    assert labelled.get_content() == extxyz_string(frames).encode()
    for original, atoms in zip(frames, labelled.get_atoms(), strict=True):
        assert atoms.get_potential_energy() == pytest.approx(original.get_potential_energy(), abs=1e-8, rel=0)
        np.testing.assert_allclose(atoms.get_forces(), original.get_forces(), atol=1e-8, rtol=0)


def test_label_ok_without_excluded_file(label_node):
    node, temporary = label_node(
        {'results.json': results_json()}, {'labelled.extxyz': extxyz_string(labelled_frames(2))}
    )
    outputs, calcfunction = parse_label(node, temporary)
    assert calcfunction.exit_status == 0
    assert outputs['configurations'].count == 2
    assert outputs['configurations'].excluded == []


def test_label_ok_without_labelled_file_is_missing_output(label_node):
    node, temporary = label_node({'results.json': results_json()}, {})
    outputs, calcfunction = parse_label(node, temporary)
    assert calcfunction.exit_status == 302
    assert 'labelled.extxyz' in calcfunction.exit_message
    assert 'configurations' not in outputs
    assert 'results' in outputs


def test_label_ok_without_temporary_folder_is_missing_output(label_node):
    node, _ = label_node({'results.json': results_json()}, {'labelled.extxyz': extxyz_string(labelled_frames(1))})
    _, calcfunction = LabelParser.parse_from_node(node, store_provenance=False)
    assert calcfunction.exit_status == 302


def test_label_incomplete_gives_400_and_partial_configurations(label_node):
    frames = labelled_frames(2)
    results = results_json('incomplete', 'WALLTIME', 'soft time limit of 60 s reached with 5 configurations left')
    node, temporary = label_node(
        {'results.json': results},
        {'labelled.extxyz': extxyz_string(frames), 'excluded.jsonl': json.dumps(EXCLUDED) + '\n'},
    )
    outputs, calcfunction = parse_label(node, temporary)
    assert calcfunction.exit_status == 400
    assert 'soft time limit of 60 s reached with 5 configurations left' in calcfunction.exit_message
    assert 'configurations' not in outputs
    partial = outputs['partial_configurations']
    assert partial.count == 2
    assert partial.excluded == [EXCLUDED]
    assert partial.calculator == CALCULATOR
    assert [atoms.info[INDEX_KEY] for atoms in partial.get_atoms()] == [0, 1]
    assert outputs['results'].get_dict()['status'] == 'incomplete'


def test_label_incomplete_with_nothing_finished_has_no_partial(label_node):
    node, temporary = label_node(
        {'results.json': results_json('incomplete', 'WALLTIME', 'late')}, {'labelled.extxyz': ''}
    )
    outputs, calcfunction = parse_label(node, temporary)
    assert calcfunction.exit_status == 400
    assert 'partial_configurations' not in outputs


def test_label_all_failed_gives_320(label_node):
    message = 'every one of the 2 configurations failed; first reason: calculator failed: RuntimeError: SCF'
    records = [dict(EXCLUDED, index=0), dict(EXCLUDED, index=1)]
    node, temporary = label_node(
        {'results.json': results_json('error', 'ALL_FAILED', message, excluded=records)},
        {'labelled.extxyz': '', 'excluded.jsonl': ''.join(json.dumps(r) + '\n' for r in records)},
    )
    outputs, calcfunction = parse_label(node, temporary)
    assert calcfunction.exit_status == 320
    assert message in calcfunction.exit_message
    assert 'configurations' not in outputs
    assert 'partial_configurations' not in outputs
    assert outputs['results'].get_dict()['excluded'] == records


@pytest.mark.parametrize(
    ('code', 'status'),
    [
        ('INVALID_INPUT', 310),
        ('MISSING_FILE', 311),
        ('CORRUPT_FILE', 312),
        ('UNKNOWN_CALCULATOR', 313),
        ('CALCULATOR_UNAVAILABLE', 314),
        ('ALL_FAILED', 320),
        ('UNEXPECTED', 350),
        ('SOMETHING_NEW', 350),
    ],
)
def test_label_worker_error_codes_map_to_exit_codes(label_node, code, status):
    node, temporary = label_node({'results.json': results_json('error', code, f'details of {code}')}, {})
    _, calcfunction = parse_label(node, temporary)
    assert calcfunction.exit_status == status
    assert f'details of {code}' in calcfunction.exit_message


def test_label_error_without_error_record_is_worker_exception(label_node):
    node, temporary = label_node({'results.json': results_json('error')}, {})
    _, calcfunction = parse_label(node, temporary)
    assert calcfunction.exit_status == 350
    assert 'no message' in calcfunction.exit_message


def test_label_missing_results_gives_300(label_node):
    node, temporary = label_node({'worker.out': 'Killed\n'}, {})
    outputs, calcfunction = parse_label(node, temporary)
    assert calcfunction.exit_status == 300
    assert outputs == {}


def test_label_missing_results_keeps_partial_labels(label_node):
    node, temporary = label_node({}, {'labelled.extxyz': extxyz_string(labelled_frames(2))})
    outputs, calcfunction = parse_label(node, temporary)
    assert calcfunction.exit_status == 300
    assert outputs['partial_configurations'].count == 2


def test_label_scheduler_killed_keeps_the_scheduler_exit_code(label_node):
    node, temporary = label_node({}, {'labelled.extxyz': extxyz_string(labelled_frames(1))})
    node.set_exit_status(120)  # what the scheduler output parser sets for an out-of-walltime job
    outputs, calcfunction = parse_label(node, temporary)
    assert calcfunction.exit_status == 0  # the parser returns None: the node keeps 120 for the restart wrapper
    assert outputs['partial_configurations'].count == 1


@pytest.mark.parametrize('broken', ['labelled', 'excluded'])
def test_label_killed_mid_write_keeps_the_complete_frames(label_node, broken):
    text = extxyz_string(labelled_frames(3))
    excluded = json.dumps(EXCLUDED) + '\n'
    if broken == 'labelled':
        text = text[: len(text) - 100]  # the third frame is cut in the middle of a line
    else:
        excluded += '{"index": 4, "formula": "Cu'
    node, temporary = label_node({}, {'labelled.extxyz': text, 'excluded.jsonl': excluded})
    outputs, calcfunction = parse_label(node, temporary)
    assert calcfunction.exit_status == 300
    assert outputs['partial_configurations'].count == (2 if broken == 'labelled' else 3)


@pytest.mark.parametrize(
    ('content', 'phrase'),
    [
        ('{"status": "ok", "n_labelled": ', 'Expecting value'),
        (b'\xff\xfe\x00\x01', 'decode'),
        ('[1, 2, 3]', 'no `status` key'),
        ('{"n_labelled": 3}', 'no `status` key'),
        ('{"status": "done", "n_labelled": 3}', "`status` is 'done', not one of ok, incomplete, error"),
    ],
)
def test_label_corrupt_results_gives_301(label_node, content, phrase):
    node, temporary = label_node({'results.json': content}, {'labelled.extxyz': extxyz_string(labelled_frames(1))})
    outputs, calcfunction = parse_label(node, temporary)
    assert calcfunction.exit_status == 301
    assert phrase in calcfunction.exit_message
    assert 'results' not in outputs
    assert 'configurations' not in outputs


# --- sample ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def sample_inputs(aiida_profile):
    inputs = {'structures': ConfigurationSetData([bulk('Cu', 'fcc', a=3.61)]), 'parameters': orm.Dict({})}
    return {label: value.store() for label, value in inputs.items()}


@pytest.fixture
def sample_node(calc_job_node, sample_inputs):
    def _make(retrieved, temporary):
        return calc_job_node('mlmat.sample', retrieved, temporary, sample_inputs)

    return _make


def parse_sample(node, temporary):
    return SampleParser.parse_from_node(node, store_provenance=False, retrieved_temporary_folder=temporary)


def test_sample_ok(sample_node):
    frames = [bulk('Cu', 'fcc', a=3.61, cubic=True) for _ in range(3)]
    for index, atoms in enumerate(frames):
        atoms.rattle(0.05, seed=index)
        atoms.info[INDEX_KEY] = index
    text = extxyz_string(frames)
    node, temporary = sample_node(
        {'results.json': results_json(n_configurations=3, counts={'rattle': 3})}, {'sampled.extxyz': text}
    )
    outputs, calcfunction = parse_sample(node, temporary)
    assert calcfunction.exit_status == 0
    assert outputs['configurations'].count == 3
    assert outputs['configurations'].get_content() == text.encode()
    assert outputs['configurations'].label_keys == []
    assert outputs['results'].get_dict()['counts'] == {'rattle': 3}


def test_sample_missing_output(sample_node):
    node, temporary = sample_node({'results.json': results_json()}, {})
    _, calcfunction = parse_sample(node, temporary)
    assert calcfunction.exit_status == 302
    assert 'sampled.extxyz' in calcfunction.exit_message


def test_sample_error_codes(sample_node):
    node, temporary = sample_node({'results.json': results_json('error', 'MISSING_FILE', 'no seeds')}, {})
    outputs, calcfunction = parse_sample(node, temporary)
    assert calcfunction.exit_status == 311
    assert 'no seeds' in calcfunction.exit_message
    assert 'configurations' not in outputs


def test_sample_missing_and_corrupt_results(sample_node):
    node, temporary = sample_node({}, {})
    assert parse_sample(node, temporary)[1].exit_status == 300
    node, temporary = sample_node({'results.json': 'not json'}, {})
    assert parse_sample(node, temporary)[1].exit_status == 301


def test_sample_scheduler_killed(sample_node):
    node, temporary = sample_node({}, {})
    node.set_exit_status(110)
    outputs, calcfunction = parse_sample(node, temporary)
    assert calcfunction.exit_status == 0
    assert outputs == {}


# --- SLURM's words in the scheduler's stderr --------------------------------------------------------------------

#: What ``slurmstepd`` writes when it ends a job at its time limit, and when ``scancel`` ends it.
SLURM_TIME_LIMIT = 'slurmstepd: error: *** JOB 4242 ON node01 CANCELLED AT 2024-05-01T12:00:00 DUE TO TIME LIMIT ***\n'
SLURM_SCANCEL = 'slurmstepd: error: *** JOB 4242 ON node01 CANCELLED AT 2024-05-01T12:00:00 ***\n'
#: aiida-core's scheduler parser reads only the first line: these put SLURM's line after another one.
PREAMBLE = 'srun: warning: can not set the memory limit\nworker: starting\n'


@pytest.mark.parametrize(
    ('stderr', 'expected'),
    [
        (SLURM_TIME_LIMIT, (120, 'ERROR_SCHEDULER_OUT_OF_WALLTIME')),
        (PREAMBLE + SLURM_TIME_LIMIT, (120, 'ERROR_SCHEDULER_OUT_OF_WALLTIME')),
        (SLURM_SCANCEL, (430, 'ERROR_JOB_CANCELLED')),
        (PREAMBLE + SLURM_SCANCEL, (430, 'ERROR_JOB_CANCELLED')),
        (PREAMBLE, None),
        ('', None),
        (None, None),
    ],
    ids=[
        'time limit',
        'time limit after other lines',
        'scancel',
        'scancel after other lines',
        'other',
        'empty',
        'none',
    ],
)
def test_scheduler_message_exit_code_reads_slurm_anywhere_in_stderr(label_node, stderr, expected):
    """``scheduler_message_exit_code`` called on a parser of a label job: SLURM's ``DUE TO TIME LIMIT`` line gives
    120 ERROR_SCHEDULER_OUT_OF_WALLTIME (although it also holds ``CANCELLED AT``), a plain ``CANCELLED AT`` line
    430 ERROR_JOB_CANCELLED, on the first line or after others; other text, an empty file or no
    ``_scheduler-stderr.txt`` at all give None."""
    retrieved = {} if stderr is None else {'_scheduler-stderr.txt': stderr}
    node, _ = label_node(retrieved, {})
    exit_code = LabelParser(node).scheduler_message_exit_code()
    if expected is None:
        assert exit_code is None
        return
    status, name = expected
    assert exit_code == getattr(LabelCalculation.exit_codes, name)
    assert exit_code.status == status


@pytest.mark.parametrize(
    ('stderr', 'status', 'name'),
    [
        (PREAMBLE + SLURM_TIME_LIMIT, 120, 'ERROR_SCHEDULER_OUT_OF_WALLTIME'),
        (PREAMBLE + SLURM_SCANCEL, 430, 'ERROR_JOB_CANCELLED'),
        (PREAMBLE, 300, 'ERROR_MISSING_RESULTS'),
    ],
    ids=['time limit', 'scancel', 'other'],
)
def test_label_job_without_results_takes_its_exit_code_from_slurms_message(label_node, stderr, status, name):
    """A label job that left no ``results.json`` but one complete labelled frame: the parser ends with the exit code
    SLURM's stderr names (120 time limit, 430 scancel) or 300 ERROR_MISSING_RESULTS when it names none, and keeps
    the frame as ``partial_configurations`` (count 1) for the restart."""
    node, temporary = label_node(
        {'_scheduler-stderr.txt': stderr}, {'labelled.extxyz': extxyz_string(labelled_frames(1))}
    )
    outputs, calcfunction = parse_label(node, temporary)
    assert calcfunction.exit_status == status == getattr(LabelCalculation.exit_codes, name).status
    assert calcfunction.exit_message == getattr(LabelCalculation.exit_codes, name).message
    assert outputs['partial_configurations'].count == 1
    assert 'results' not in outputs


# --- train ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def model_bytes(tmp_path_factory):
    """The bytes of a small saved (untrained) Cu-Au model, as the worker writes ``model.pt``."""
    import torch

    from aiida_mlmat.ml.model import build_model, default_config, save_model

    torch.manual_seed(0)
    config = {**default_config(['Cu', 'Au']), 'hidden': [4]}
    path = tmp_path_factory.mktemp('model') / 'model.pt'
    save_model(build_model(config), str(path))
    return path.read_bytes()


def train_results(model_sha256: str | None, **extra) -> str:
    """A train ``results.json`` with the validation metrics (eV/atom, eV/Å) and the recorded model digest."""
    data = {
        'status': 'ok',
        'schema_version': 1,
        'task': 'train',
        'epochs': 12,
        'best_epoch': 9,
        'data_sha256': 'd' * 64,
        'validation': {'energy_rmse_per_atom': 0.012, 'forces_rmse': 0.085},
        'traceback': 'never stored',
        **extra,
    }
    if model_sha256 is not None:
        data['model_sha256'] = model_sha256
    return json.dumps(data)


@pytest.fixture
def train_node(calc_job_node):
    def _make(retrieved, temporary):
        return calc_job_node('mlmat.train', retrieved, temporary)

    return _make


def parse_train(node, temporary):
    return TrainParser.parse_from_node(node, store_provenance=False, retrieved_temporary_folder=temporary)


def test_train_ok_gives_the_potential_of_the_recorded_model(train_node, model_bytes):
    """``model.pt`` whose sha256 is the recorded ``model_sha256``: exit 0 with ``results`` (without the traceback),
    ``checkpoint`` (its bytes) and a one-member ``potential`` whose member bytes are ``model.pt``'s, species
    [Cu, Au], validation metrics 0.012 eV/atom and 0.085 eV/Å, the data digest and 12 epochs (best 9)."""
    digest = hashlib.sha256(model_bytes).hexdigest()
    node, temporary = train_node(
        {'results.json': train_results(digest)}, {'model.pt': model_bytes, 'checkpoint.pt': b'checkpoint bytes'}
    )
    outputs, calcfunction = parse_train(node, temporary)
    assert calcfunction.exit_status == 0, calcfunction.exit_message
    assert set(outputs) == {'results', 'checkpoint', 'potential'}
    assert 'traceback' not in outputs['results'].get_dict()
    assert outputs['results']['model_sha256'] == digest
    assert outputs['checkpoint'].get_content(mode='rb') == b'checkpoint bytes'
    potential = outputs['potential']
    assert isinstance(potential, PotentialData)
    assert potential.n_members == 1
    assert potential.member_bytes(0) == model_bytes
    assert potential.base.attributes.get('sha256') == [digest]
    assert potential.species == ['Cu', 'Au']
    assert potential.metrics == {'validation_energy_rmse_per_atom': 0.012, 'validation_forces_rmse': 0.085}
    assert potential.base.attributes.get('data_sha256') == 'd' * 64
    training = potential.base.attributes.get('training')
    assert (training['epochs'], training['best_epoch']) == (12, 9)


@pytest.mark.parametrize('case', ['tampered', 'other digest', 'no digest'])
def test_train_model_not_matching_its_recorded_sha256_is_corrupt(train_node, model_bytes, case):
    """A ``model.pt`` whose sha256 is not ``results.json``'s ``model_sha256`` (one byte changed after the digest,
    the digest of another file, or no digest at all) gives 301 ERROR_CORRUPT_RESULTS naming the mismatch and no
    ``potential``; ``results`` and the ``checkpoint`` are still attached."""
    content = model_bytes
    digest = hashlib.sha256(model_bytes).hexdigest()
    if case == 'tampered':
        content = model_bytes[:-1] + bytes([model_bytes[-1] ^ 0xFF])
    elif case == 'other digest':
        digest = hashlib.sha256(b'another model').hexdigest()
    else:
        digest = None
    node, temporary = train_node(
        {'results.json': train_results(digest)}, {'model.pt': content, 'checkpoint.pt': b'checkpoint bytes'}
    )
    outputs, calcfunction = parse_train(node, temporary)
    expected = TrainCalculation.exit_codes.ERROR_CORRUPT_RESULTS
    assert calcfunction.exit_status == expected.status == 301
    assert calcfunction.exit_message == expected.format(error='model.pt does not match its recorded sha256').message
    assert set(outputs) == {'results', 'checkpoint'}


def test_train_without_results_takes_the_exit_code_of_slurms_message(train_node):
    """A train job ended by SLURM's time limit before ``results.json``: 120 ERROR_SCHEDULER_OUT_OF_WALLTIME from
    the stderr's second line, with the checkpoint kept for the restart."""
    node, temporary = train_node(
        {'_scheduler-stderr.txt': PREAMBLE + SLURM_TIME_LIMIT}, {'checkpoint.pt': b'checkpoint bytes'}
    )
    outputs, calcfunction = parse_train(node, temporary)
    expected = TrainCalculation.exit_codes.ERROR_SCHEDULER_OUT_OF_WALLTIME
    assert calcfunction.exit_status == expected.status == 120
    assert set(outputs) == {'checkpoint'}


# --- relax ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def relax_inputs(aiida_profile):
    inputs = {'structures': ConfigurationSetData(labelled_frames(2)), 'calculator': orm.Dict(CALCULATOR)}
    return {label: value.store() for label, value in inputs.items()}


@pytest.fixture
def relax_node(calc_job_node, relax_inputs):
    def _make(retrieved, temporary):
        return calc_job_node('mlmat.relax', retrieved, temporary, relax_inputs)

    return _make


def relaxed_frames(converged: list[bool]) -> list[Atoms]:
    frames = labelled_frames(len(converged))
    for atoms, flag in zip(frames, converged, strict=True):
        atoms.info['mlmat_converged'] = flag
    return frames


@pytest.mark.parametrize(('converged', 'status'), [([True, False], 510), ([False, False], 510), ([True, True], 0)])
def test_relax_unconverged_is_a_warning_with_every_output(relax_node, converged, status):
    """A relax job whose ``results.json`` counts ``n_unconverged`` relaxations (flagged ``mlmat_converged =
    False`` in ``relaxed.extxyz``) ends with 510 WARNING_UNCONVERGED naming the count, and still attaches
    ``results`` and the whole ``relaxed`` set (2 structures, flags and energies (eV) as written); with every
    relaxation converged it ends with 0."""
    frames = relaxed_frames(converged)
    unconverged = converged.count(False)
    results = results_json(
        task='relax', n_relaxed=2, n_converged=2 - unconverged, n_unconverged=unconverged, n_reused=0
    )
    node, temporary = relax_node({'results.json': results}, {'relaxed.extxyz': extxyz_string(frames)})
    outputs, calcfunction = RelaxParser.parse_from_node(
        node, store_provenance=False, retrieved_temporary_folder=temporary
    )
    assert calcfunction.exit_status == status
    if status:
        expected = RelaxCalculation.exit_codes.WARNING_UNCONVERGED
        assert status == expected.status
        assert calcfunction.exit_message == expected.format(count=unconverged).message
        assert calcfunction.exit_message.startswith(f'{unconverged} relaxations did not reach fmax')
    assert set(outputs) == {'results', 'relaxed'}
    assert outputs['results']['n_unconverged'] == unconverged
    relaxed = outputs['relaxed']
    assert relaxed.count == 2
    assert relaxed.calculator == CALCULATOR
    atoms = relaxed.get_atoms()
    assert [frame.info['mlmat_converged'] for frame in atoms] == converged
    for original, frame in zip(frames, atoms, strict=True):
        assert frame.get_potential_energy() == pytest.approx(original.get_potential_energy(), abs=1e-8, rel=0)
