"""``mlmat.label`` and ``mlmat.sample``: ``prepare_for_submission`` into a sandbox, and input validation."""

from __future__ import annotations

import json
import uuid

import pytest
from aiida import orm
from aiida.common.folders import SandboxFolder
from aiida.engine.utils import instantiate_process
from aiida.manage import get_manager
from aiida.plugins import CalculationFactory
from ase.build import bulk

from aiida_mlmat.calcjobs.base import SOFT_WALLTIME_FRACTION
from aiida_mlmat.calcjobs.label import LabelCalculation, calculator_error, calculator_spec_error
from aiida_mlmat.calcjobs.sample import SampleCalculation
from aiida_mlmat.common.constants import INDEX_KEY
from aiida_mlmat.data.configurations import ConfigurationSetData
from aiida_mlmat.worker.schema import SCHEMA_VERSION, validate_input
from aiida_mlmat.worker.structures import read_extxyz

pytestmark = pytest.mark.unit


def configurations(n: int = 3) -> ConfigurationSetData:
    frames = []
    for seed in range(n):
        atoms = bulk('Cu', 'fcc', a=3.61, cubic=True)
        atoms.rattle(0.03, seed=seed)
        atoms.info[INDEX_KEY] = seed
        frames.append(atoms)
    return ConfigurationSetData(frames)


def seeds() -> ConfigurationSetData:
    return ConfigurationSetData([bulk('Cu', 'fcc', a=3.61, cubic=True), bulk('Au', 'fcc', a=4.08)])


@pytest.fixture
def prepare(worker_code):
    """Instantiate a CalcJob with inputs (validating them) and run ``prepare_for_submission`` into a sandbox."""
    folders = []

    def _prepare(process_class, **inputs):
        inputs.setdefault('code', worker_code)
        process = instantiate_process(get_manager().get_runner(), process_class, **inputs)
        folder = SandboxFolder()
        folders.append(folder)
        calcinfo = process.prepare_for_submission(folder)
        with folder.open('input.json', 'r') as handle:
            input_json = json.load(handle)
        return folder, calcinfo, input_json

    yield _prepare
    for folder in folders:
        folder.erase()


@pytest.fixture
def instantiate(worker_code):
    """Instantiate a CalcJob (this validates the inputs); raise ``ValueError`` for invalid ones."""

    def _instantiate(process_class, **inputs):
        inputs.setdefault('code', worker_code)
        return instantiate_process(get_manager().get_runner(), process_class, **inputs)

    return _instantiate


def read_bytes(folder, name: str) -> bytes:
    with folder.open(name, 'rb') as handle:
        return handle.read()


# --- entry points and defaults ------------------------------------------------------------------------------------


def test_entry_points():
    assert CalculationFactory('mlmat.label') is LabelCalculation
    assert CalculationFactory('mlmat.sample') is SampleCalculation


def test_defaults():
    options = LabelCalculation.spec().inputs['metadata']['options']
    assert options['resources'].default == {'num_machines': 1, 'num_mpiprocs_per_machine': 1}
    assert options['withmpi'].default is False
    assert options['parser_name'].default == 'mlmat.label'
    assert SampleCalculation.spec().inputs['metadata']['options']['parser_name'].default == 'mlmat.sample'
    assert 'soft_time_limit' in LabelCalculation.spec().inputs
    assert 'soft_time_limit' not in SampleCalculation.spec().inputs
    assert SOFT_WALLTIME_FRACTION == 0.95


def test_exit_codes_are_banded():
    codes = LabelCalculation.exit_codes
    assert codes.ERROR_MISSING_RESULTS.status == 300
    assert codes.ERROR_CORRUPT_RESULTS.status == 301
    assert codes.ERROR_MISSING_OUTPUT.status == 302
    assert codes.ERROR_INVALID_INPUT.status == 310
    assert codes.ERROR_ALL_CONFIGURATIONS_FAILED.status == 320
    assert codes.ERROR_WORKER_EXCEPTION.status == 350
    assert codes.ERROR_OUT_OF_WALLTIME.status == 400
    assert codes.ERROR_OUT_OF_WALLTIME.invalidates_cache


# --- label: prepare_for_submission ------------------------------------------------------------------------------


def test_label_prepare_for_submission(prepare, worker_code):
    node = configurations()
    folder, calcinfo, data = prepare(LabelCalculation, configurations=node, calculator=orm.Dict({'name': 'emt'}))
    assert sorted(folder.get_content_list()) == ['input.json', 'structures.extxyz']
    validate_input('label', data)
    assert data == {
        'schema_version': SCHEMA_VERSION,
        'task': 'label',
        'calculator': {'name': 'emt', 'parameters': {}},
        'structures': 'structures.extxyz',
        'properties': ['energy', 'forces', 'stress'],
    }
    assert read_bytes(folder, 'structures.extxyz') == node.get_content()
    frames = read_extxyz(folder.get_abs_path('structures.extxyz'))
    assert [frame.info[INDEX_KEY] for frame in frames] == [0, 1, 2]

    assert len(calcinfo.codes_info) == 1
    codeinfo = calcinfo.codes_info[0]
    assert codeinfo.code_uuid == worker_code.uuid
    assert codeinfo.cmdline_params == ['label', 'input.json']
    assert codeinfo.stdout_name == 'worker.out'
    # the logs of failed configurations (GPAW's), kept under their folder's name
    assert calcinfo.retrieve_list == ['results.json', 'worker.out', ('calculator-logs/*', '.', 2)]
    assert calcinfo.retrieve_temporary_list == ['labelled.extxyz', 'excluded.jsonl']


def test_label_parameters_and_properties_reach_input_json(prepare):
    calculator = orm.Dict({'name': 'lj', 'parameters': {'sigma': 2.3, 'epsilon': 0.4}})
    _, _, data = prepare(
        LabelCalculation, configurations=configurations(1), calculator=calculator, properties=orm.List(['energy'])
    )
    assert data['calculator'] == {'name': 'lj', 'parameters': {'sigma': 2.3, 'epsilon': 0.4}}
    assert data['properties'] == ['energy']


def test_label_restart_from_writes_previous(prepare):
    partial = configurations(1)
    folder, _, data = prepare(
        LabelCalculation,
        configurations=configurations(3),
        calculator=orm.Dict({'name': 'emt'}),
        restart_from=partial,
    )
    assert data['previous'] == 'previous.extxyz'
    assert read_bytes(folder, 'previous.extxyz') == partial.get_content()
    validate_input('label', data)


def test_label_restart_keeps_exclusions_and_names_the_job_that_retrieved_their_log(prepare, worker_code):
    """An exclusion of the interrupted job is passed on unchanged, except that a reason pointing at a calculator
    log retrieved with that job names the job (the restart does not retrieve it again)."""
    from aiida.common.links import LinkType

    earlier = orm.CalcJobNode(computer=worker_code.computer, process_type='aiida.calculations:mlmat.label')
    earlier.set_process_label('LabelCalculation')
    earlier.set_option('resources', {'num_machines': 1})
    earlier.store()
    failed = 'calculator failed: KohnShamConvergenceError: did not converge'
    excluded = [
        {'index': 1, 'formula': 'Cu4', 'reason': f'{failed} (its log: calculator-logs/1.txt, retrieved)'},
        {'index': 2, 'formula': 'Cu4', 'reason': 'invalid configuration: atoms 0 and 1 are 0.40 Å apart'},
    ]
    partial = ConfigurationSetData([configurations(1).get_atoms()[0]], excluded=excluded)
    partial.base.links.add_incoming(earlier, LinkType.CREATE, 'partial_configurations')
    partial.store()
    folder, _, data = prepare(
        LabelCalculation, configurations=configurations(3), calculator=orm.Dict({'name': 'emt'}), restart_from=partial
    )
    assert data['previous_excluded'] == 'previous_excluded.json'
    passed = json.loads(read_bytes(folder, 'previous_excluded.json'))
    assert passed[0]['reason'] == (
        f'{failed} (its log: calculator-logs/1.txt, retrieved with LabelCalculation<{earlier.pk}>)'
    )
    assert passed[1] == excluded[1]
    assert [record['index'] for record in passed] == [1, 2]
    validate_input('label', data)


def test_label_max_seconds_from_walltime(prepare):
    _, _, data = prepare(
        LabelCalculation,
        configurations=configurations(1),
        calculator=orm.Dict({'name': 'emt'}),
        metadata={'options': {'max_wallclock_seconds': 3600}},
    )
    assert data['max_seconds'] == pytest.approx(0.95 * 3600)
    validate_input('label', data)


def test_label_explicit_soft_time_limit_wins(prepare):
    _, _, data = prepare(
        LabelCalculation,
        configurations=configurations(1),
        calculator=orm.Dict({'name': 'emt'}),
        soft_time_limit=orm.Float(12.5),
        metadata={'options': {'max_wallclock_seconds': 3600}},
    )
    assert data['max_seconds'] == 12.5
    _, _, data = prepare(
        LabelCalculation,
        configurations=configurations(1),
        calculator=orm.Dict({'name': 'emt'}),
        soft_time_limit=orm.Float(0.0),
    )
    assert data['max_seconds'] == 0.0


def test_label_without_any_limit_has_no_max_seconds(prepare):
    _, _, data = prepare(LabelCalculation, configurations=configurations(1), calculator=orm.Dict({'name': 'emt'}))
    assert 'max_seconds' not in data


def test_worker_input_classmethod():
    emt = {'name': 'emt', 'parameters': {'asap_cutoff': True}}
    inputs = {'configurations': configurations(1), 'calculator': orm.Dict(emt)}
    data = LabelCalculation.worker_input(inputs, max_seconds=7.0)
    assert data['max_seconds'] == 7.0
    assert data['calculator'] == emt
    assert data['properties'] == ['energy', 'forces', 'stress']
    assert 'max_seconds' not in SampleCalculation.worker_input({'structures': seeds()}, max_seconds=7.0)


# --- label: validation ----------------------------------------------------------------------------------------


def test_label_empty_set_is_refused(instantiate):
    with pytest.raises(ValueError, match='configurations: the set is empty; there is nothing to label'):
        instantiate(LabelCalculation, configurations=ConfigurationSetData([]), calculator=orm.Dict({'name': 'emt'}))


def test_a_code_registered_for_another_plugin_is_refused(instantiate, worker_code):
    """The ``ase-python`` Code `mlmat setup` registers for aiida-ase runs Python, not the worker: the job would end
    without a ``results.json`` (exit 300). It is refused before submission; a Code of no default plugin is taken."""
    other = orm.InstalledCode(
        label=f'ase-python-{uuid.uuid4().hex[:6]}', computer=worker_code.computer,
        filepath_executable='/usr/bin/python3', default_calc_job_plugin='ase.ase',
    ).store()  # fmt: skip
    with pytest.raises(ValueError, match=rf'code: the Code `{other.full_label}` is registered for the CalcJob plugin '
                                         r'`ase.ase`, not for the aiida-mlmat worker'):  # fmt: skip
        instantiate(SampleCalculation, code=other, structures=seeds())
    assert worker_code.default_calc_job_plugin is None
    instantiate(SampleCalculation, structures=seeds())


def test_label_unknown_calculator_lists_known_names(instantiate):
    with pytest.raises(ValueError) as excinfo:
        instantiate(LabelCalculation, configurations=configurations(1), calculator=orm.Dict({'name': 'nope'}))
    message = str(excinfo.value)
    assert 'unknown calculator `nope`' in message
    for name in ('emt', 'lj', 'gpaw', 'espresso', 'vasp', 'cp2k'):
        assert name in message


@pytest.mark.parametrize(
    ('calculator', 'phrase'),
    [
        ({'parameters': {}}, '`name` is required'),
        ({'name': 'emt', 'kwargs': {}}, "unknown keys ['kwargs']"),
        ({'name': 'emt', 'parameters': [1, 2]}, 'calculator.parameters: must be a dictionary'),
    ],
)
def test_label_bad_calculator_spec(instantiate, calculator, phrase):
    with pytest.raises(ValueError, match=r'calculator') as excinfo:
        instantiate(LabelCalculation, configurations=configurations(1), calculator=orm.Dict(calculator))
    assert phrase in str(excinfo.value)


@pytest.mark.parametrize(
    ('properties', 'phrase'),
    [
        (['forces'], 'properties:'),
        (['energy', 'magmoms'], 'properties.1:'),
        (['energy', 'energy'], 'non-unique'),
        ([], 'properties:'),
    ],
)
def test_label_bad_properties(instantiate, properties, phrase):
    with pytest.raises(ValueError) as excinfo:
        instantiate(
            LabelCalculation,
            configurations=configurations(1),
            calculator=orm.Dict({'name': 'emt'}),
            properties=orm.List(properties),
        )
    assert 'invalid label input' in str(excinfo.value)
    assert phrase in str(excinfo.value)


def test_label_spec_validate(worker_code):
    options = {'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': 1}}
    inputs = {
        'code': worker_code,
        'configurations': configurations(1),
        'calculator': orm.Dict({'name': 'emt'}),
        'metadata': {'options': options},
    }
    assert LabelCalculation.spec().inputs.validate(inputs) is None
    error = LabelCalculation.spec().inputs.validate({**inputs, 'properties': orm.List(['stress'])})
    assert error is not None
    assert 'properties' in error.message
    error = LabelCalculation.spec().inputs.validate({**inputs, 'calculator': orm.Dict({'name': 'Bad Name'})})
    assert 'unknown calculator `Bad Name`' in error.message


def test_label_negative_soft_time_limit_is_refused_before_submission(instantiate):
    with pytest.raises(ValueError, match=r'soft_time_limit|max_seconds'):
        instantiate(
            LabelCalculation,
            configurations=configurations(1),
            calculator=orm.Dict({'name': 'emt'}),
            soft_time_limit=orm.Float(-5.0),
        )


def test_calculator_spec_error():
    assert calculator_spec_error({'name': 'emt'}) is None
    assert calculator_spec_error({'name': 'emt', 'parameters': {'asap_cutoff': True}}) is None
    assert calculator_spec_error({'name': 'lj', 'parameters': {'sigma': 2.3, 'epsilon': 1, 'rc': None}}) is None
    # EMT and LJ take a closed set of keyword arguments: a typo or a wrong type is refused, not ignored
    assert calculator_spec_error({'name': 'emt', 'parameters': {'x': 1}}) == (
        "calculator.parameters: `emt` takes no parameter(s) ['x']; it takes asap_cutoff"
    )
    assert 'must be true or false' in calculator_spec_error({'name': 'emt', 'parameters': {'asap_cutoff': 'yes'}})
    assert calculator_spec_error({'name': 'lj', 'parameters': {'sigma': 'abc'}}) == (
        'calculator.parameters: `sigma` must be a number, got "abc"'  # as written in JSON or YAML
    )
    assert calculator_spec_error({'name': 'lj', 'parameters': {'smooth': None}}).endswith('true or false, got null')
    assert calculator_spec_error({'name': 'lj', 'parameters': []}) == (
        'calculator.parameters: must be a dictionary of keyword arguments'
    )
    assert 'must be a number' in calculator_spec_error({'name': 'lj', 'parameters': {'rc': True}})
    # ... and numbers that are not physical: LJ lengths (Å) and well depth (eV) must be positive
    assert calculator_spec_error({'name': 'lj', 'parameters': {'sigma': -1}}) == (
        'calculator.parameters: `sigma` must be a positive number, got -1'
    )
    assert 'must be a positive number' in calculator_spec_error({'name': 'lj', 'parameters': {'epsilon': 0}})
    assert 'must be a positive number' in calculator_spec_error({'name': 'lj', 'parameters': {'rc': -2.0}})
    # null is ASE's default only for the cut-offs; a null sigma or epsilon fails in ASE, so it is refused here
    assert calculator_spec_error({'name': 'lj', 'parameters': {'sigma': None}}) == (
        'calculator.parameters: `sigma` must be a positive number, got null'
    )
    assert calculator_spec_error({'name': 'lj', 'parameters': {'rc': None, 'ro': None}}) is None
    assert 'zero or positive' in calculator_spec_error({'name': 'lj', 'parameters': {'ro': -0.5, 'smooth': True}})
    assert '`ro` (3 Å) must be smaller than the cut-off `rc` (2 Å)' in calculator_spec_error(
        {'name': 'lj', 'parameters': {'ro': 3, 'rc': 2, 'smooth': True}}
    )
    # without rc ASE cuts off at 3 sigma; without smoothing ASE ignores ro
    smooth = {'sigma': 2.0, 'ro': 6.5, 'smooth': True}
    assert 'cut-off `rc` (6.0 Å)' in calculator_spec_error({'name': 'lj', 'parameters': smooth})
    assert calculator_spec_error({'name': 'lj', 'parameters': {'sigma': 2.0, 'ro': 6.5}}) is None
    assert calculator_spec_error({'name': 'lj', 'parameters': {'ro': -1.0}}) is None  # ignored without smoothing
    assert calculator_spec_error({'name': 'lj', 'parameters': {'sigma': 2.0, 'ro': 5.5, 'smooth': True}}) is None
    # a reference method labels data: a trained potential is refused, and EMT must treat every element
    assert calculator_error({'name': 'emt'}, ['Cu', 'Au']) is None
    assert calculator_error({'name': 'mlmat'}, ['Cu']) == (
        'calculator: `mlmat` is a trained potential, not a reference method; use emt, gpaw, ...'
    )
    assert calculator_error({'name': 'emt'}, ['Cu', 'Fe', 'U']) == (
        "calculator: `emt` cannot treat the elements ['Fe', 'U']"
    )
    assert calculator_error({'name': 'lj', 'parameters': {'sigma': 0}}, ['Ar']).endswith('positive number, got 0')
    # as an energy model (screening) a calculator must treat the elements too, and `mlmat` is not refused there
    as_model = calculator_error({'name': 'emt'}, ['Fe'], reference=False)
    assert as_model == "calculator: `emt` cannot treat the elements ['Fe']"
    assert calculator_error({'name': 'mlmat'}, ['Cu'], reference=False) is None
    with pytest.raises(TypeError, match='element symbols'):
        calculator_error({'name': 'emt'}, 'Cu')
    # other calculators take open-ended arguments, checked by the calculator itself
    assert calculator_spec_error({'name': 'gpaw', 'parameters': {'anything': 1}}) is None
    assert calculator_spec_error('emt').startswith('calculator: expected a dictionary')
    assert 'registered:' in calculator_spec_error({'name': 'nope'})


# --- sample ----------------------------------------------------------------------------------------------------


def test_sample_prepare_for_submission_default_parameters(prepare):
    node = seeds()
    folder, calcinfo, data = prepare(SampleCalculation, structures=node)
    validate_input('sample', data)
    assert data == {
        'schema_version': SCHEMA_VERSION,
        'task': 'sample',
        'structures': 'structures.extxyz',
        'rattle': {'count': 5, 'stdev': 0.05},
    }
    assert read_bytes(folder, 'structures.extxyz') == node.get_content()
    assert calcinfo.codes_info[0].cmdline_params == ['sample', 'input.json']
    assert calcinfo.retrieve_list == ['results.json', 'worker.out']
    assert calcinfo.retrieve_temporary_list == ['sampled.extxyz']


def test_sample_parameters_reach_input_json_without_a_soft_limit(prepare):
    parameters = {
        'supercell': [2, 2, 1],
        'include_seeds': False,
        'strain': {'count': 2, 'max_strain': 0.02},
        'md': {'calculator': {'name': 'emt'}, 'temperatures': [300], 'steps': 4, 'interval': 2},
    }
    _, _, data = prepare(
        SampleCalculation,
        structures=seeds(),
        parameters=orm.Dict(parameters),
        metadata={'options': {'max_wallclock_seconds': 600}},
    )
    validate_input('sample', data)
    assert {key: data[key] for key in parameters} == parameters
    assert 'max_seconds' not in data


def test_sample_empty_seed_set_is_refused(instantiate):
    with pytest.raises(ValueError, match='structures: the seed set is empty'):
        instantiate(SampleCalculation, structures=ConfigurationSetData([]))


def test_sample_unknown_md_calculator_is_refused(instantiate):
    parameters = {'md': {'calculator': {'name': 'nope'}, 'temperatures': [300], 'steps': 4, 'interval': 2}}
    with pytest.raises(ValueError, match=r'parameters\.md\.calculator: unknown calculator `nope`; registered: .*emt'):
        instantiate(SampleCalculation, structures=seeds(), parameters=orm.Dict(parameters))


@pytest.mark.parametrize(
    ('parameters', 'phrase'),
    [
        ({'rattle': {'count': 3}}, "'stdev' is a required property"),
        ({'supercell': [0, 1, 1]}, 'supercell.0:'),
        ({'jitter': {}}, "'jitter' was unexpected"),
        ({'md': {'calculator': {'name': 'emt'}, 'temperatures': [], 'steps': 4, 'interval': 2}}, 'md.temperatures'),
    ],
)
def test_sample_bad_parameters_are_refused(instantiate, parameters, phrase):
    with pytest.raises(ValueError, match='invalid sample input') as excinfo:
        instantiate(SampleCalculation, structures=seeds(), parameters=orm.Dict(parameters))
    assert phrase in str(excinfo.value)


def test_sample_parameters_cannot_redirect_the_structures_file(prepare):
    """A ``structures`` key in the parameters is accepted but overridden: ``input.json`` names the job's own
    ``structures.extxyz``, which holds the seed set's content, and the other parameters (a rattle of 0.1 Å) pass
    through unchanged."""
    parameters = orm.Dict({'structures': 'elsewhere.extxyz', 'rattle': {'count': 1, 'stdev': 0.1}})
    structures = seeds()
    folder, _, data = prepare(SampleCalculation, structures=structures, parameters=parameters)
    assert data['structures'] == 'structures.extxyz'
    assert data['rattle'] == {'count': 1, 'stdev': 0.1}
    assert read_bytes(folder, 'structures.extxyz') == structures.get_content()
