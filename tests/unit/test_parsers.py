"""Parsers ``mlmat.label`` and ``mlmat.sample`` on hand-made retrieved folders (no daemon, no worker run)."""

from __future__ import annotations

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

from aiida_mlmat.common.constants import INDEX_KEY
from aiida_mlmat.data.configurations import ConfigurationSetData
from aiida_mlmat.parsers.label import LabelParser
from aiida_mlmat.parsers.sample import SampleParser
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
