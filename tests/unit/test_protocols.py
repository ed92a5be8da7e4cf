"""Protocols of ``mlmat.reference``: loading, overrides, and the builder they fill."""

from __future__ import annotations

import copy

import pytest
from aiida import orm
from aiida.engine.utils import instantiate_process
from aiida.manage import get_manager
from ase.build import bulk

from aiida_mlmat.data.configurations import ConfigurationSetData
from aiida_mlmat.worker.schema import SCHEMA_VERSION, validate_input
from aiida_mlmat.workflows.protocols import get_protocol_inputs, load_protocols, protocol_inputs_error, recursive_merge
from aiida_mlmat.workflows.reference import ReferenceWorkChain

pytestmark = pytest.mark.unit

PROTOCOLS = ('fast', 'balanced', 'precise')
EMT = {'name': 'emt', 'parameters': {}}


def as_worker_input(sample: dict) -> dict:
    return {'schema_version': SCHEMA_VERSION, 'task': 'sample', 'structures': 'structures.extxyz', **sample}


def test_protocol_file():
    data = load_protocols('reference')
    assert data['default_protocol'] == 'fast'
    assert tuple(data['protocols']) == PROTOCOLS
    for protocol in PROTOCOLS:
        assert data['protocols'][protocol]['description']


@pytest.mark.parametrize('protocol', PROTOCOLS)
def test_protocols_load_and_validate(protocol):
    inputs = get_protocol_inputs('reference', protocol)
    assert 'description' not in inputs
    assert set(inputs) == {'sample', 'chunk_size', 'max_iterations'}
    assert inputs['chunk_size'] >= 1
    assert inputs['max_iterations'] == 5
    sample = copy.deepcopy(inputs['sample'])
    if 'md' in sample:
        sample['md']['calculator'] = EMT
    validate_input('sample', as_worker_input(sample))


def test_protocol_values():
    fast = get_protocol_inputs('reference', 'fast')
    balanced = get_protocol_inputs('reference', 'balanced')
    precise = get_protocol_inputs('reference', 'precise')
    assert fast['sample']['supercell'] == [2, 2, 2]
    assert fast['sample']['rattle'] == {'count': 4, 'stdev': 0.05, 'seed': 0}
    assert 'md' not in fast['sample']
    assert fast['chunk_size'] == 50
    assert balanced['sample']['md']['temperatures'] == [300, 900]
    assert balanced['chunk_size'] == 100
    assert precise['sample']['supercell'] == [3, 3, 3]
    assert precise['sample']['md']['temperatures'] == [300, 900, 1500]
    assert precise['chunk_size'] == 200
    # more precise protocols sample more per seed
    assert (
        fast['sample']['rattle']['count'] < balanced['sample']['rattle']['count'] < precise['sample']['rattle']['count']
    )


def test_default_protocol_is_fast():
    assert get_protocol_inputs('reference') == get_protocol_inputs('reference', 'fast')
    assert get_protocol_inputs('reference', None) == get_protocol_inputs('reference', 'fast')


@pytest.mark.parametrize('protocol', ['moderate', 'FAST', ''])
def test_unknown_protocol_names_the_known_ones(protocol):
    if protocol == '':
        # an empty name falls back to the default protocol (it is falsy)
        assert get_protocol_inputs('reference', protocol) == get_protocol_inputs('reference', 'fast')
        return
    with pytest.raises(ValueError) as excinfo:
        get_protocol_inputs('reference', protocol)
    message = str(excinfo.value)
    assert f'unknown protocol `{protocol}`' in message
    assert 'fast, balanced, precise' in message


def test_unknown_protocol_file():
    with pytest.raises(FileNotFoundError):
        load_protocols('no_such_workflow')


def test_overrides_merge_recursively():
    inputs = get_protocol_inputs(
        'reference',
        'balanced',
        overrides={
            'chunk_size': 7,
            'sample': {'rattle': {'count': 1}, 'md': {'temperatures': [500]}, 'supercell': [1, 1, 1]},
        },
    )
    assert inputs['chunk_size'] == 7
    assert inputs['sample']['rattle'] == {'count': 1, 'stdev': 0.05, 'seed': 0}
    assert inputs['sample']['md'] == {
        'temperatures': [500],
        'steps': 100,
        'timestep': 2.0,
        'interval': 20,
        'friction': 0.01,
        'seed': 0,
    }
    assert inputs['sample']['supercell'] == [1, 1, 1]  # lists are replaced, not merged
    assert inputs['sample']['strain'] == {'count': 5, 'max_strain': 0.04, 'rattle_stdev': 0.03, 'seed': 0}
    assert inputs['max_iterations'] == 5
    # the protocol file itself is untouched
    assert get_protocol_inputs('reference', 'balanced')['sample']['rattle']['count'] == 10


@pytest.mark.parametrize(
    ('name', 'overrides', 'message'),
    [
        ('reference', {'nonsense': 1}, "<top level>: unknown key(s) ['nonsense']; allowed: chunk_size, max_iterations"),
        ('reference', {'sample': {'bogus': 1}}, "sample: unknown key(s) ['bogus']"),
        ('reference', {'sample': {'rattle': {'count': -5}}}, 'sample.rattle.count: -5 is less than the minimum of 0'),
        ('reference', {'select': {'m': 3}}, "select: unknown key(s) ['m']"),
        ('training', {'training': {'epochs': -5}}, 'training.epochs: -5 is less than the minimum of 1'),
        ('training', {'training': {'epochz': 2}}, "training: unknown key(s) ['epochz']"),
        ('training', {'model': [16]}, 'model: expected a mapping'),
        # the model against the worker's schema, and the committee's whole numbers, before any job runs
        ('training', {'model': {'hidden': [-1]}}, 'model.hidden.0: -1 is less than the minimum of 1'),
        ('training', {'model': {'hidden': []}}, 'model.hidden: [] should be non-empty'),
        ('training', {'model': {'descriptor': {'kind': 'soap'}}}, "model.descriptor.kind: 'soap' is not one of"),
        ('training', {'model': {'descriptor': {'rcut': 50}}}, 'model.descriptor.rcut: 50 is greater than the max'),
        (
            'training',
            {'model': {'descriptor': {'rcut': 0.3}}},
            'model.descriptor.rcut: 0.3 is less than the minimum of 0.5',
        ),
        ('training', {'model': {'foo': 1}}, "model: unknown key(s) ['foo']; allowed: activation, architecture"),
        ('training', {'ensemble_size': 10**9}, 'ensemble_size: must be from 1 to 64, got 1000000000'),
        ('training', {'ensemble_size': 2.5}, 'ensemble_size: expected a whole number, got 2.5'),
        ('training', {'ensemble_size': True}, 'ensemble_size: expected a whole number, got True'),
        ('training', {'ensemble_size': 'x'}, "ensemble_size: expected a whole number, got 'x'"),
        ('training', {'seed': -1}, 'seed: must be from 0 to'),
        ('training', {'max_iterations': 0}, 'max_iterations: must be from 1 to 100, got 0'),
        ('training', {'test_fraction': 1.5}, 'test_fraction: expected a number between 0 and 1, got 1.5'),
        ('active_learning', {'training': {'model': {'hidden': []}}}, 'training.model.hidden: [] should be non-empty'),
        ('active_learning', {'training': {'ensemble_size': 65}}, 'training.ensemble_size: must be from 1 to 64'),
        ('active_learning', {'bogus_section': {}}, "<top level>: unknown key(s) ['bogus_section']"),
        ('active_learning', {'training': {'training': {'epochs': 0}}}, 'training.training.epochs: 0 is less than'),
        ('active_learning', {'retrain': {'learning_rate': -1}}, 'retrain.learning_rate: -1 is less than or equal'),
        ('active_learning', {'exploration': {'temp': [300]}}, "exploration: unknown key(s) ['temp']"),
        ('active_learning', {'selection': {'lower': 0.9, 'upper': 0.1}}, 'must be smaller than the upper one'),
        ('active_learning', {'selection': {'lower': 'low'}}, "selection.lower: expected a number, got 'low'"),
        # settings typed by their ports are checked strictly: the node types would convert silently
        ('active_learning', {'selection': {'fps': 'false'}}, "selection.fps: expected true or false, got 'false'"),
        ('active_learning', {'exploration': {'steps': 2.7}}, 'exploration.steps: expected an integer, got 2.7'),
        ('active_learning', {'exploration': {'temperatures': 300}}, 'exploration.temperatures: expected a list'),
        ('active_learning', {'convergence': {'fraction': True}}, 'convergence.fraction: expected a number, got True'),
        ('active_learning', {'convergence': {'fraction': 10**400}}, 'convergence.fraction: expected a number'),
        # ... and the loop's own checks (ranges, the worker schema of the exploration) run on the overrides too
        # the worker schema's paths are said as the loop's settings (not `md.temperatures.0`)
        ('active_learning', {'exploration': {'temperatures': ['300']}}, "ation.temperatures[0]: '300' is not of type"),
        ('active_learning', {'exploration': {'temperatures': [300, -5]}}, 'exploration.temperatures[1]: -5 is less'),
        ('active_learning', {'exploration': {'strains': [0.9]}}, 'exploration.strains[0]: 0.9 is greater than the max'),
        ('active_learning', {'exploration': {'timestep': 0}}, 'exploration.timestep: 0 is less than or equal to the'),
        ('active_learning', {'exploration': {'supercell': [0, 1, 1]}}, 'exploration.supercell[0]: 0 is less than the'),
        ('active_learning', {'exploration': {'device': 'tpu'}}, 'exploration.device: expected one of cpu, cuda, auto'),
        ('active_learning', {'exploration': {'steps': 5, 'interval': 10}}, 'need 1 <= interval <= steps'),
        ('active_learning', {'training': {'ensemble_size': 1}}, 'a committee of at least 2 members, got 1'),
        ('active_learning', {'convergence': {'fraction': 2.0}}, 'convergence.fraction: must be in [0, 1], got 2.0'),
    ],
)
def test_overrides_are_checked_before_any_process(name, overrides, message):
    """A typo or a bad value in the overrides is refused naming the key, instead of being ignored or failing a
    job later; every protocol as shipped passes."""
    with pytest.raises(ValueError, match=r'^overrides: ') as info:
        get_protocol_inputs(name, None, overrides)
    assert message in str(info.value)


def test_a_description_in_a_settings_section_is_a_comment():
    inputs = get_protocol_inputs('active_learning', 'fast', {'exploration': {'description': 'hot runs', 'steps': 40}})
    assert inputs['exploration']['steps'] == 40


def test_shipped_protocols_pass_and_null_means_the_default():
    """Every protocol as shipped passes the check; null trust bounds and a null `retrain` keep their defaults."""
    for name in ('reference', 'training', 'active_learning'):
        for protocol, inputs in load_protocols(name)['protocols'].items():
            assert protocol_inputs_error(name, inputs) is None, (name, protocol)
    inputs = get_protocol_inputs(
        'active_learning', 'fast', {'selection': {'lower': None, 'upper': 0.3}, 'retrain': None}
    )
    assert inputs['selection']['lower'] is None and inputs['retrain'] is None
    with pytest.raises(ValueError, match=r'must be smaller than the upper one \(0.01 eV/Å\)'):
        get_protocol_inputs('active_learning', 'fast', {'selection': {'lower': None, 'upper': 0.01}})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['1'\]"):
        get_protocol_inputs('reference', 'fast', {1: 2})


def test_recursive_merge_does_not_mutate():
    left = {'a': {'b': 1, 'c': [1, 2]}, 'd': 1}
    right = {'a': {'b': 2, 'e': {'f': 3}}, 'd': {'x': 1}}
    merged = recursive_merge(left, right)
    assert merged == {'a': {'b': 2, 'c': [1, 2], 'e': {'f': 3}}, 'd': {'x': 1}}
    assert left == {'a': {'b': 1, 'c': [1, 2]}, 'd': 1}
    assert right == {'a': {'b': 2, 'e': {'f': 3}}, 'd': {'x': 1}}
    merged['a']['e']['f'] = 99
    assert right['a']['e']['f'] == 3
    assert recursive_merge({'a': 1}, {'a': None}) == {'a': None}
    assert recursive_merge({'a': {'b': 1}}, {}) == {'a': {'b': 1}}


# --- builder --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('protocol', PROTOCOLS)
def test_builder_from_protocol(worker_code, protocol):
    builder = ReferenceWorkChain.get_builder_from_protocol(
        worker_code, calculator=EMT, elements=['Cu', 'Au'], protocol=protocol
    )
    expected = get_protocol_inputs('reference', protocol)
    sample = builder.sample.parameters.get_dict()
    if 'md' in expected['sample']:
        assert sample['md'] == {**expected['sample']['md'], 'calculator': EMT}
        expected['sample']['md']['calculator'] = EMT
    assert sample == expected['sample']
    assert builder.chunk_size.value == expected['chunk_size']
    assert builder.label.max_iterations.value == expected['max_iterations']
    assert builder.elements.get_list() == ['Cu', 'Au']
    assert builder.calculator.get_dict() == EMT
    assert builder.labeller.value == 'batch'
    assert builder.sample.code.uuid == worker_code.uuid
    assert builder.label.label.code.uuid == worker_code.uuid
    assert 'structures' not in builder
    validate_input('sample', as_worker_input(sample))


def test_builder_overrides_and_md_calculator(worker_code):
    lj = {'name': 'lj', 'parameters': {'sigma': 2.3}}
    builder = ReferenceWorkChain.get_builder_from_protocol(
        worker_code,
        calculator=EMT,
        elements=['Cu'],
        protocol='balanced',
        overrides={'chunk_size': 40, 'sample': {'md': {'calculator': lj, 'steps': 10}}},
    )
    sample = builder.sample.parameters.get_dict()
    assert builder.chunk_size.value == 40
    assert sample['md']['calculator'] == lj  # an explicit MD calculator is not replaced by the reference one
    assert sample['md']['steps'] == 10
    assert sample['md']['interval'] == 20


def test_builder_with_structures_and_options(worker_code):
    seeds = ConfigurationSetData([bulk('Cu', 'fcc', a=3.61)])
    options = {'max_wallclock_seconds': 600, 'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': 2}}
    builder = ReferenceWorkChain.get_builder_from_protocol(
        worker_code, calculator=EMT, structures=seeds, options=options
    )
    assert builder.structures.uuid == seeds.uuid
    assert 'elements' not in builder
    assert builder.sample.metadata.options.max_wallclock_seconds == 600
    assert builder.label.label.metadata.options.max_wallclock_seconds == 600
    assert builder.label.label.metadata.options.resources == options['resources']
    assert 'ase_options' not in builder


def test_builder_is_valid_for_the_workchain(worker_code):
    builder = ReferenceWorkChain.get_builder_from_protocol(
        worker_code, calculator=EMT, elements=['Cu', 'Au'], protocol='fast'
    )
    process = instantiate_process(get_manager().get_runner(), builder)  # validates every port and the namespace
    assert process.inputs.chunk_size.value == 50


def test_builder_refuses_elements_emt_cannot_treat(worker_code):
    builder = ReferenceWorkChain.get_builder_from_protocol(worker_code, calculator=EMT, elements=['Cu', 'Fe'])
    with pytest.raises(ValueError, match=r"calculator: `emt` cannot treat the elements \['Fe'\]"):
        instantiate_process(get_manager().get_runner(), builder)


@pytest.mark.parametrize(
    ('select', 'message'),
    [
        ({'n': 10, 'descriptor': {'kind': 'soap'}}, r'select.descriptor: unknown descriptor kind `soap`'),
        (
            {'n': 10, 'descriptor': {'kind': 'acsf', 'rcut': -1.0}},
            'select.descriptor: the cutoff must be positive, got -1.0 Å',
        ),
        ({'n': 10, 'descriptor': {'species': ['Cu']}}, r"select.descriptor: the seeds hold \['Au'\], which the"),
        ({'n': 10, 'method': 'kmeans'}, 'select.method: `kmeans` is not one of fps, cur'),
        # the worker schema's bounds, as the descriptors job checks them
        ({'n': 10, 'descriptor': {'n_radial': 100}}, 'select.descriptor.n_radial: 100 is greater than the maximum'),
        ({'n': 10, 'descriptor': {'n_radial': 1.5}}, 'select.descriptor.n_radial: 1.5 is not of type'),
    ],
)
def test_selection_settings_are_refused_before_anything_runs(worker_code, select, message):
    """A descriptor the selection's descriptors job would refuse fails the submission, not the workflow after its
    sampling (it excepted there, with a traceback in its report)."""
    builder = ReferenceWorkChain.get_builder_from_protocol(
        worker_code, calculator=EMT, elements=['Cu', 'Au'], overrides={'select': select}
    )
    with pytest.raises(ValueError, match=message):
        instantiate_process(get_manager().get_runner(), builder)


def test_selection_settings_without_n_are_refused(worker_code):
    """Without select.n every sample is labelled: settings of the selection would be ignored without a word."""
    with pytest.raises(ValueError, match=r'select: descriptor, method has no effect without select.n'):
        ReferenceWorkChain.get_builder_from_protocol(
            worker_code, calculator=EMT, elements=['Cu'], overrides={'select': {'method': 'cur', 'descriptor': {}}}
        )
    builder = ReferenceWorkChain.get_builder_from_protocol(
        worker_code, calculator=EMT, elements=['Cu', 'Au'],
        overrides={'select': {'n': 10, 'method': 'cur', 'descriptor': {'kind': 'acsf', 'rcut': 4.0}}},
    )  # fmt: skip
    instantiate_process(get_manager().get_runner(), builder)
    assert builder.select.descriptor.get_dict() == {'kind': 'acsf', 'rcut': 4.0}
    for empty in ({'n': None}, {'n': 0}, {}):  # n alone, 0 or null: no selection, as before
        builder = ReferenceWorkChain.get_builder_from_protocol(
            worker_code, calculator=EMT, elements=['Cu'], overrides={'select': empty}
        )
        assert 'n' not in builder.select


def test_the_selection_descriptor_covers_the_seeds_not_the_chemical_system(worker_code):
    """With seed structures the samples hold their elements, not every element of `elements`: a descriptor for those
    is right."""
    seeds = ConfigurationSetData([bulk('Cu', 'fcc', a=3.61)])
    builder = ReferenceWorkChain.get_builder_from_protocol(
        worker_code, calculator=EMT, elements=['Cu', 'Au'], structures=seeds,
        overrides={'select': {'n': 3, 'descriptor': {'species': ['Cu']}}},
    )  # fmt: skip
    instantiate_process(get_manager().get_runner(), builder)


def test_builder_refuses_an_unknown_element(worker_code):
    builder = ReferenceWorkChain.get_builder_from_protocol(worker_code, calculator=EMT, elements=['Cu', 'Xx'])
    with pytest.raises(ValueError, match='elements: unknown element `Xx`'):
        instantiate_process(get_manager().get_runner(), builder)


def test_builder_refuses_wrong_argument_types_naming_them(worker_code):
    """Arguments of the wrong kind are refused with the argument named, not an AttributeError from inside aiida: a
    string of elements (read letter by letter), a calculator given by name only, overrides that are not a mapping,
    and an element given twice."""
    build = ReferenceWorkChain.get_builder_from_protocol
    with pytest.raises(ValueError, match=r"elements: expected a list of element symbols .*, got 'CuAu'"):
        build(worker_code, calculator=EMT, elements='CuAu')
    with pytest.raises(ValueError, match=r"calculator: expected a mapping such as \{\"name\": \"emt\"\}, got 'emt'"):
        build(worker_code, calculator='emt', elements=['Cu'])
    assert build(worker_code, calculator=orm.Dict(EMT), elements=['Cu']).calculator.get_dict() == EMT  # as AL takes
    with pytest.raises(ValueError, match=r'overrides: expected a mapping of settings, got \[1\]'):
        build(worker_code, calculator=EMT, elements=['Cu'], overrides=[1])
    builder = build(worker_code, calculator=EMT, elements=['Cu', 'Cu'])
    with pytest.raises(ValueError, match='elements: Cu given more than once'):
        instantiate_process(get_manager().get_runner(), builder)


def test_builder_unknown_protocol(worker_code):
    with pytest.raises(ValueError, match='unknown protocol `turbo`; known: fast, balanced, precise'):
        ReferenceWorkChain.get_builder_from_protocol(worker_code, calculator=EMT, elements=['Cu'], protocol='turbo')


def test_builder_aiida_ase_labeller_gets_ase_options(worker_code):
    options = {'max_wallclock_seconds': 100, 'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': 1}}
    builder = ReferenceWorkChain.get_builder_from_protocol(
        worker_code, calculator=EMT, elements=['Cu'], labeller='aiida-ase', ase_code=worker_code, options=options
    )
    assert builder.labeller.value == 'aiida-ase'
    assert builder.ase_code.uuid == worker_code.uuid
    assert builder.ase_options.get_dict() == options
    assert isinstance(builder.ase_options, orm.Dict)


def test_builder_with_a_walltime_only(worker_code):
    builder = ReferenceWorkChain.get_builder_from_protocol(
        worker_code, calculator=EMT, elements=['Cu'], options={'max_wallclock_seconds': 600}
    )
    assert builder.sample.metadata.options.max_wallclock_seconds == 600
    assert builder.sample.metadata.options.resources == {'num_machines': 1, 'num_mpiprocs_per_machine': 1}


def test_exploration_keys_name_what_the_user_wrote():
    """The worker schema's paths said as the loop's settings; list items numerically; the MD's stop threshold named
    as the setting it came from."""
    from aiida_mlmat.worker.schema import SCHEMA_VERSION, input_errors
    from aiida_mlmat.workflows.active_learning import exploration_key, settings_error

    assert exploration_key(('md', 'temperatures', 3)) == 'exploration.temperatures[3]'
    assert exploration_key(('supercell', 0)) == 'exploration.supercell[0]'
    assert exploration_key(('md', 'stop_disagreement')) == 'exploration.stop_disagreement'
    assert exploration_key(('md', 'stop_disagreement'), stop_given=False).startswith('selection.upper')
    assert exploration_key(('include_seeds',)) == 'exploration.include_seeds'
    assert exploration_key(('md', 'calculator', 'parameters', 0)) == 'exploration.md.calculator.parameters[0]'
    data = {'schema_version': SCHEMA_VERSION, 'task': 'sample', 'structures': 's.extxyz'}
    temperatures = [300.0] * 12
    temperatures[2] = temperatures[10] = -1.0
    errors = input_errors('sample', {**data, 'md': {'calculator': {'name': 'emt'}, 'temperatures': temperatures}})
    assert [path for path, _ in errors if len(path) == 3] == [('md', 'temperatures', 2), ('md', 'temperatures', 10)]
    error = settings_error({'exploration': {'temperatures': [300.0, 900.0, -5.0]}})
    assert error.startswith('exploration.temperatures[2]: -5.0 is less than or equal to the minimum of 0')


def test_training_builder_inputs_are_checked_like_the_protocol(aiida_profile):
    """A builder filled by hand (not from a protocol) is refused by the workchain's validator with the port named:
    the committee size and seed in range, the model and training settings against the worker's schema."""
    from aiida_mlmat.workflows.training import validate_inputs

    assert validate_inputs({'ensemble_size': orm.Int(65)}) == 'ensemble_size: must be from 1 to 64, got 65'
    assert validate_inputs({'seed': orm.Int(-1)}).startswith('seed: must be from 0 to')
    model = {'member': {'trainer': {'model': orm.Dict({'hidden': []})}}}
    assert validate_inputs(model) == 'member.trainer.model.hidden: [] should be non-empty'
    assert validate_inputs({'member': {'max_iterations': orm.Int(0)}}) == (
        'member.max_iterations: must be from 1 to 100, got 0'
    )
    training = {'member': {'trainer': {'training': orm.Dict({'epochs': 0})}}}
    assert validate_inputs(training) == 'member.trainer.training.epochs: 0 is less than the minimum of 1'
    good = {'ensemble_size': orm.Int(2), 'member': {'trainer': {'model': orm.Dict({'hidden': [8]})}}}
    assert validate_inputs(good) is None
