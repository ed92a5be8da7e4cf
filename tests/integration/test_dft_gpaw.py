"""Integration tier: real DFT with GPAW (Debian's ``gpaw``) through the daemon, batched and via aiida-ase."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from aiida import orm
from ase.build import bulk
from ase.stress import full_3x3_to_voigt_6_stress

from aiida_mlmat.cli.setup import ISOLATE_PYTHON, find_gpaw_python, gpaw_worker_wrapper, python_has
from aiida_mlmat.common.constants import INDEX_KEY
from aiida_mlmat.data.configurations import ConfigurationSetData
from aiida_mlmat.workflows.reference import ReferenceWorkChain
from tests.conftest import require_or_skip

pytestmark = pytest.mark.integration

GPAW_PARAMETERS = {'mode': {'name': 'pw', 'ecut': 250}, 'kpts': [2, 2, 2], 'xc': 'PBE'}
SAMPLE = {'supercell': [1, 1, 1], 'include_seeds': False, 'rattle': {'count': 2, 'stdev': 0.05, 'seed': 3}}


@pytest.fixture(scope='module')
def gpaw_python():
    """A Python interpreter with GPAW and jsonschema (Debian: gpaw, python3-jsonschema)."""
    python = find_gpaw_python(None)
    require_or_skip(python is not None, 'no Python with GPAW found (apt-get install gpaw)')
    require_or_skip(python_has(python, 'jsonschema'), f'{python} lacks jsonschema (apt-get install python3-jsonschema)')
    return python


@pytest.fixture
def gpaw_codes(gpaw_python, aiida_localhost, tmp_path_factory):
    """The GPAW worker Code and the aiida-ase GPAW Code, as ``mlmat setup`` makes them."""
    from aiida.common.exceptions import NotExistent

    codes = {}
    for label, make, prepend in (
        ('mlmat-worker-gpaw', lambda: gpaw_worker_wrapper(gpaw_python, tmp_path_factory.mktemp('gpaw')), ''),
        ('ase-gpaw', lambda: gpaw_python, ISOLATE_PYTHON),
    ):
        try:
            codes[label] = orm.load_code(f'{label}@localhost')
        except NotExistent:
            codes[label] = orm.InstalledCode(
                label=label, computer=aiida_localhost, filepath_executable=make(), prepend_text=prepend
            ).store()
    return codes


def test_gpaw_labels_match_direct_gpaw_and_aiida_ase(submit_and_await, gpaw_codes, gpaw_python, tmp_path):
    """A 2-configuration Al set labelled with GPAW: batched == direct GPAW (energy 1e-6 eV, forces 1e-6 eV/Å, stress
    1e-6 eV/Å^3) == aiida-ase path."""
    seed = ConfigurationSetData([bulk('Al', 'fcc', a=4.05, cubic=True)])
    calculator = {'name': 'gpaw', 'parameters': GPAW_PARAMETERS}
    labelled = {}
    for labeller in ('batch', 'aiida-ase'):
        builder = ReferenceWorkChain.get_builder_from_protocol(
            gpaw_codes['mlmat-worker-gpaw'],
            calculator=calculator,
            structures=seed,
            labeller=labeller,
            ase_code=gpaw_codes['ase-gpaw'],
        )
        builder.sample.parameters = orm.Dict(SAMPLE)
        node = submit_and_await(builder, timeout=600)
        assert node.is_finished_ok, f'{labeller}: {node.exit_message}'
        labelled[labeller] = node.outputs.configurations
    batch = labelled['batch'].get_atoms()
    assert len(batch) == 2
    assert labelled['batch'].calculator == calculator

    # Independent reference: plain GPAW in its own Python on the stored positions.
    structures = tmp_path / 'structures.extxyz'
    labelled['batch'].write_extxyz(structures)
    parameters = tmp_path / 'parameters.json'
    parameters.write_text(json.dumps({**GPAW_PARAMETERS, 'kpts': GPAW_PARAMETERS['kpts']}))
    script = Path(__file__).parent / 'gpaw_direct.py'
    output = subprocess.run(
        [gpaw_python, str(script), str(structures), str(parameters)], capture_output=True, text=True, check=True
    )
    direct = json.loads(output.stdout.strip().splitlines()[-1])
    for frame, reference in zip(batch, direct, strict=True):
        assert abs(frame.calc.results['energy'] - reference['energy']) < 1e-6
        np.testing.assert_allclose(frame.calc.results['forces'], reference['forces'], rtol=0, atol=1e-6)
        stress = np.asarray(frame.calc.results['stress'])
        stress = full_3x3_to_voigt_6_stress(stress) if stress.shape == (3, 3) else stress
        np.testing.assert_allclose(stress, reference['stress'], rtol=0, atol=1e-6)  # eV/Å^3

    ase_frames = labelled['aiida-ase'].get_atoms()
    assert [f.info[INDEX_KEY] for f in ase_frames] == [f.info[INDEX_KEY] for f in batch]
    for first, second in zip(batch, ase_frames, strict=True):
        assert abs(first.calc.results['energy'] - second.calc.results['energy']) < 1e-6
        np.testing.assert_allclose(first.calc.results['forces'], second.calc.results['forces'], rtol=0, atol=1e-6)


AL_ONE_ATOM = {'supercell': [1, 1, 1], 'include_seeds': True, 'rattle': {'count': 0, 'stdev': 0.05, 'seed': 3}}


def _one_atom_reference(code, calculator, labeller='batch', ase_code=None):
    builder = ReferenceWorkChain.get_builder_from_protocol(
        code, calculator=calculator, structures=ConfigurationSetData([bulk('Al', 'fcc', a=4.05)]), labeller=labeller,
        ase_code=ase_code,
    )  # fmt: skip
    builder.sample.parameters = orm.Dict(AL_ONE_ATOM)
    return builder


def test_gpaw_fd_mode_labels_energy_and_forces_without_stress(submit_and_await, gpaw_codes):
    """GPAW gives stress only in plane-wave mode: an fd-mode set keeps energy and forces, and the job warns."""
    calculator = {'name': 'gpaw', 'parameters': {'mode': 'fd', 'h': 0.3, 'kpts': [2, 2, 2], 'xc': 'PBE'}}
    node = submit_and_await(_one_atom_reference(gpaw_codes['mlmat-worker-gpaw'], calculator), timeout=600)
    assert node.is_finished_ok, node.exit_message
    labelled = node.outputs.configurations
    assert labelled.count == 1 and labelled.label_keys == ['energy', 'forces']
    frame = labelled.get_atoms()[0]
    assert np.isfinite(frame.calc.results['energy']) and 'stress' not in frame.calc.results
    calc = next(n for n in node.called_descendants if n.process_type == 'aiida.calculations:mlmat.label')
    assert calc.outputs.results['n_without_stress'] == 1
    warnings = [log.message for log in orm.Log.collection.get_logs_for(calc) if log.levelname == 'WARNING']
    assert any('labelled without stress' in message and 'plane-wave mode' in message for message in warnings)


def test_unconverged_gpaw_keeps_its_log_and_names_its_cause_on_both_paths(submit_and_await, gpaw_codes):
    """An SCF that does not converge: the batch job retrieves GPAW's log of that configuration; the aiida-ase job's
    failure names GPAW's exception from its stderr (not only "an output file was missing")."""
    calculator = {'name': 'gpaw', 'parameters': {**GPAW_PARAMETERS, 'kpts': [1, 1, 1], 'maxiter': 2}}
    node = submit_and_await(_one_atom_reference(gpaw_codes['mlmat-worker-gpaw'], calculator), timeout=600)
    assert node.exit_status == ReferenceWorkChain.exit_codes.ERROR_ALL_LABELS_FAILED.status
    assert 'KohnShamConvergenceError' in node.exit_message
    assert '(its log: calculator-logs/0.txt, retrieved)' in node.exit_message
    calc = next(n for n in node.called_descendants if n.process_type == 'aiida.calculations:mlmat.label')
    log = calc.outputs.retrieved.base.repository.get_object_content('calculator-logs/0.txt', mode='r')
    assert 'Did not converge' in log or 'iter:' in log  # GPAW's SCF log of that configuration

    node = submit_and_await(
        _one_atom_reference(gpaw_codes['mlmat-worker-gpaw'], calculator, 'aiida-ase', gpaw_codes['ase-gpaw']),
        timeout=600,
    )
    assert node.exit_status == ReferenceWorkChain.exit_codes.ERROR_ALL_LABELS_FAILED.status
    assert 'its stderr ends with gpaw.KohnShamConvergenceError: Did not converge!' in node.exit_message


def test_setup_records_gpaw_keywords_and_a_misspelled_one_is_refused_before_submission(gpaw_codes, gpaw_python):
    """`mlmat setup` reads GPAW's keywords from the Code's Python; `kpt` is refused by the workflow's validation."""
    from aiida_mlmat.calcjobs.label import CALCULATORS_EXTRA
    from aiida_mlmat.cli.setup import gpaw_calculator_record

    record = gpaw_calculator_record(gpaw_python)
    assert record is not None and {'kpts', 'mode', 'xc', 'txt', 'maxiter', 'parallel'} <= set(record['parameters'])
    code = gpaw_codes['mlmat-worker-gpaw']
    code.base.extras.set(CALCULATORS_EXTRA, {'gpaw': record})
    try:
        calculator = {'name': 'gpaw', 'parameters': {'mode': {'name': 'pw', 'ecut': 200}, 'kpt': [2, 2, 2]}}
        builder = _one_atom_reference(code, calculator)
        error = ReferenceWorkChain.spec().inputs.validate(dict(builder._inputs(prune=True)))
        assert error is not None and "takes no parameter(s) ['kpt'] (did you mean `kpts`?)" in error.message
        assert f'gpaw {record["version"]}' in error.message
    finally:
        code.base.extras.delete(CALCULATORS_EXTRA)


#: Tiny Al DFT: plane waves (stress), one k-point, LDA; a few seconds per configuration.
TINY_GPAW = {'name': 'gpaw', 'parameters': {'mode': {'name': 'pw', 'ecut': 200}, 'kpts': [1, 1, 1], 'xc': 'LDA'}}


def test_gpaw_reference_with_selection_computes_descriptors_with_the_torch_worker(
    started_daemon_client, worker_code, gpaw_codes, tmp_path
):
    """`mlmat reference --calculator gpaw --select N`: the GPAW worker Code samples and labels, the mlmat-worker Code
    (torch) computes the selection's descriptors (the GPAW Python has no torch: every such run failed). Without a
    `select.code` the workflow refuses such a selection up front."""
    from click.testing import CliRunner

    from aiida_mlmat.cli.main import cli

    structure = tmp_path / 'Al.xyz'
    bulk('Al', 'fcc', a=4.05).write(structure)
    overrides = {'sample': {'supercell': [1, 1, 1], 'include_seeds': False, 'rattle': {'count': 5, 'stdev': 0.05}}}
    args = ['reference', '--structures', str(structure), '--calculator', 'gpaw', '--select', '3', '--wait', '--json']
    args += ['--calculator-params', json.dumps(TINY_GPAW['parameters']), '--overrides', json.dumps(overrides)]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    node = orm.load_node(summary['process'])
    assert summary['n_configurations'] == 3 and node.outputs.configurations.label_keys == ['energy', 'forces', 'stress']
    by_type = {child.process_label: child.inputs.code.label for child in node.called if 'code' in child.inputs}
    assert by_type == {'SampleCalculation': 'mlmat-worker-gpaw', 'DescriptorsCalculation': 'mlmat-worker'}
    labels = [calc for calc in node.called_descendants if calc.process_label == 'LabelCalculation']
    assert labels and {calc.inputs.code.label for calc in labels} == {'mlmat-worker-gpaw'}

    builder = ReferenceWorkChain.get_builder_from_protocol(
        gpaw_codes['mlmat-worker-gpaw'], calculator=TINY_GPAW, elements=['Al'], overrides={'select': {'n': 3}}
    )
    error = ReferenceWorkChain.spec().inputs.validate(dict(builder._inputs(prune=True)))
    assert error is not None and 'select.code: the descriptors of the selection need torch' in error.message


def test_pipeline_labels_with_the_gpaw_worker_and_trains_with_the_torch_worker(
    submit_and_await, worker_code, gpaw_codes
):
    """`mlmat run` with GPAW as the reference: the Codes it picks (`pipeline_codes`) sample and label with the GPAW
    worker and select and train with the mlmat-worker; the whole pipeline finishes (every labelling job failed with
    "gpaw is not importable by this worker" before). A YAML `code:` naming the GPAW worker is taken as the labeller."""
    from aiida_mlmat.cli.pipeline import pipeline_codes
    from aiida_mlmat.workflows.pipeline import PipelineWorkChain
    from aiida_mlmat.workflows.pipeline_config import validate_config

    text = {
        'elements': ['Al'],
        'reference': {
            'calculator': TINY_GPAW,
            'select': 3,
            'overrides': {'sample': {'supercell': [1, 1, 1], 'rattle': {'count': 3, 'stdev': 0.05}}},
        },
        'training': {'ensemble': 2, 'overrides': {'training': {'epochs': 3}}},
        'active_learning': {'enabled': False},
        'screening': {'enabled': False},
    }
    config = validate_config(text)
    codes = pipeline_codes(config)
    assert (codes['code'].label, codes['reference_code'].label) == ('mlmat-worker', 'mlmat-worker-gpaw')
    named = pipeline_codes(validate_config({**text, 'code': 'mlmat-worker-gpaw'}))
    assert (named['code'].label, named['reference_code'].label) == ('mlmat-worker', 'mlmat-worker-gpaw')
    node = submit_and_await(PipelineWorkChain, timeout=900, config=orm.Dict(config), **codes)
    assert node.is_finished_ok, node.exit_message
    dataset = node.outputs.dataset
    assert dataset.count == 3 and dataset.calculator['name'] == 'gpaw'
    jobs = {(calc.process_label, calc.inputs.code.label) for calc in node.called_descendants if 'code' in calc.inputs}
    assert ('LabelCalculation', 'mlmat-worker-gpaw') in jobs and ('TrainCalculation', 'mlmat-worker') in jobs
    assert ('DescriptorsCalculation', 'mlmat-worker') in jobs and ('SampleCalculation', 'mlmat-worker-gpaw') in jobs


def test_a_missing_paw_dataset_names_the_log_gpaw_wrote(gpaw_python, tmp_path):
    """GPAW without a PAW dataset for an element (La: none in Debian's gpaw-setups) raises at once, with its log still
    buffered in the open file: the exclusion names the log, which holds what GPAW wrote (the worker through the
    GPAW Python, as the GPAW worker Code runs it)."""
    wrapper = gpaw_worker_wrapper(gpaw_python, tmp_path / 'bin')
    job = tmp_path / 'job'
    job.mkdir()
    frame = bulk('La', 'fcc', a=5.3)
    frame.info[INDEX_KEY] = 0
    ConfigurationSetData([frame]).write_extxyz(job / 'structures.extxyz')
    from aiida_mlmat.worker.schema import SCHEMA_VERSION

    parameters = {'mode': 'fd', 'h': 0.3, 'kpts': [1, 1, 1], 'xc': 'LDA'}
    task = {'schema_version': SCHEMA_VERSION, 'task': 'label', 'structures': 'structures.extxyz',
            'calculator': {'name': 'gpaw', 'parameters': parameters}, 'properties': ['energy', 'forces']}  # fmt: skip
    (job / 'input.json').write_text(json.dumps(task))
    subprocess.run([wrapper, 'label', 'input.json'], cwd=job, timeout=300, check=False, capture_output=True)
    (record,) = [json.loads(line) for line in (job / 'excluded.jsonl').read_text().splitlines()]
    assert 'PAW dataset' in record['reason'] and record['reason'].endswith(
        '(its log: calculator-logs/0.txt, retrieved)'
    )
    assert (job / 'calculator-logs' / '0.txt').stat().st_size > 0
