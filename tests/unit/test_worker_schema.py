"""The worker's ``input.json`` schema: what passes, and that every refusal names the offending key."""

from __future__ import annotations

import copy
import re

import pytest

from aiida_mlmat.worker.schema import LABEL_SCHEMA, SAMPLE_SCHEMA, SCHEMA_VERSION, get_schema, validate_input

pytestmark = pytest.mark.unit


def label_input(**changes):
    data = {
        'schema_version': SCHEMA_VERSION,
        'task': 'label',
        'calculator': {'name': 'emt', 'parameters': {}},
        'structures': 'structures.extxyz',
        'properties': ['energy', 'forces', 'stress'],
    }
    data.update(changes)
    return data


def sample_input(**changes):
    data = {
        'schema_version': SCHEMA_VERSION,
        'task': 'sample',
        'structures': 'structures.extxyz',
        'supercell': [2, 2, 2],
        'include_seeds': True,
        'rattle': {'count': 3, 'stdev': 0.05, 'seed': 1},
        'strain': {'count': 2, 'max_strain': 0.03, 'rattle_stdev': 0.01, 'seed': 2},
        'vacancies': {'count': 1, 'seed': 3},
        'md': {
            'calculator': {'name': 'emt'},
            'temperatures': [300, 900.5],
            'steps': 10,
            'timestep': 1.0,
            'interval': 5,
            'friction': 0.02,
            'seed': 4,
        },
    }
    data.update(changes)
    return data


def refused(task, data) -> str:
    with pytest.raises(ValueError) as excinfo:
        validate_input(task, data)
    return str(excinfo.value)


# --- valid inputs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    'data',
    [
        label_input(),
        label_input(properties=['energy']),
        label_input(properties=['forces', 'energy']),
        label_input(calculator={'name': 'emt'}),
        label_input(calculator={'name': 'lj', 'parameters': {'sigma': 2.3, 'epsilon': 0.4, 'rc': 6.0}}),
        label_input(calculator={'name': 'my_plugin.calc-2'}),
        label_input(previous='previous.extxyz', max_seconds=12.5, min_distance=0.4),
        label_input(max_seconds=None),
        label_input(max_seconds=0),
        label_input(structures='_hidden-ish_name.v2.extxyz'),
    ],
)
def test_valid_label_inputs_pass(data):
    assert validate_input('label', data) is None


@pytest.mark.parametrize(
    'data',
    [
        sample_input(),
        {'schema_version': SCHEMA_VERSION, 'task': 'sample', 'structures': 'seeds.extxyz'},
        sample_input(supercell=[1, 1, 1], include_seeds=False),
        sample_input(rattle={'count': 0, 'stdev': 0.0}),
        sample_input(md={'calculator': {'name': 'lj'}, 'temperatures': [10], 'steps': 1, 'interval': 1}),
    ],
)
def test_valid_sample_inputs_pass(data):
    assert validate_input('sample', data) is None


def test_validation_does_not_modify_the_input():
    data = sample_input()
    before = copy.deepcopy(data)
    validate_input('sample', data)
    assert data == before


# --- refusals, label -------------------------------------------------------------------------------------------


@pytest.mark.parametrize('key', ['schema_version', 'task', 'calculator', 'structures', 'properties'])
def test_label_missing_required_key_is_named(key):
    data = label_input()
    del data[key]
    message = refused('label', data)
    assert f"'{key}' is a required property" in message
    assert message.startswith('invalid label input (schema version 1)')


def test_label_missing_calculator_name_is_named():
    message = refused('label', label_input(calculator={'parameters': {}}))
    assert 'calculator' in message
    assert "'name' is a required property" in message


@pytest.mark.parametrize(
    ('changes', 'where'),
    [
        ({'calculator': 'emt'}, 'calculator:'),
        ({'calculator': {'name': 3}}, 'calculator.name:'),
        ({'calculator': {'name': 'emt', 'parameters': [1, 2]}}, 'calculator.parameters:'),
        ({'structures': 42}, 'structures:'),
        ({'properties': 'energy'}, 'properties:'),
        ({'max_seconds': '10'}, 'max_seconds:'),
        ({'max_seconds': True}, 'max_seconds:'),
        ({'min_distance': 'small'}, 'min_distance:'),
        ({'previous': ['a']}, 'previous:'),
    ],
)
def test_label_wrong_type_is_named(changes, where):
    message = refused('label', label_input(**changes))
    assert where in message
    assert 'is not of type' in message


@pytest.mark.parametrize(
    ('changes', 'where'),
    [
        ({'max_seconds': -1}, 'max_seconds:'),
        ({'min_distance': -0.1}, 'min_distance:'),
        ({'properties': ['energy', 'magmoms']}, 'properties.1:'),
        ({'properties': ['energy', 3]}, 'properties.1:'),
        ({'properties': ['energy', 'energy']}, 'properties:'),
        ({'calculator': {'name': 'EMT'}}, 'calculator.name:'),
        ({'calculator': {'name': 'emt; rm -rf /'}}, 'calculator.name:'),
    ],
)
def test_label_bad_value_is_named(changes, where):
    assert where in refused('label', label_input(**changes))


@pytest.mark.parametrize(
    ('data', 'key'),
    [
        (label_input(foo=1), 'foo'),
        (label_input(calculator={'name': 'emt', 'kwargs': {}}), 'kwargs'),
    ],
)
def test_label_unknown_key_is_named(data, key):
    message = refused('label', data)
    assert 'Additional properties are not allowed' in message
    assert f"'{key}' was unexpected" in message


@pytest.mark.parametrize('key', ['structures', 'previous'])
@pytest.mark.parametrize(
    'name', ['../x', '/etc/passwd', 'a;b', 'a b', 'sub/dir.extxyz', '.hidden', '', '$(reboot)', 'a' * 129]
)
def test_label_bad_file_name_is_named(key, name):
    message = refused('label', label_input(**{key: name}))
    assert f'{key}:' in message


@pytest.mark.parametrize(('key', 'value'), [('structures', 'structures.extxyz\n'), ('calculator', {'name': 'emt\n'})])
def test_label_trailing_newline_in_names_is_refused(key, value):
    refused('label', label_input(**{key: value}))


@pytest.mark.parametrize('properties', [['forces'], ['forces', 'stress'], []])
def test_label_properties_without_energy_are_refused(properties):
    message = refused('label', label_input(properties=properties))
    assert 'properties:' in message


@pytest.mark.parametrize('version', [0, 2, '1', None])
def test_label_wrong_schema_version_is_named(version):
    message = refused('label', label_input(schema_version=version))
    assert 'schema_version:' in message
    assert '1 was expected' in message


def test_label_wrong_task_is_named():
    message = refused('label', label_input(task='sample'))
    assert 'task:' in message
    assert "'label' was expected" in message


def test_every_error_is_reported_at_once():
    message = refused('label', label_input(schema_version=9, structures='../x', foo=1))
    assert 'schema_version:' in message
    assert 'structures:' in message
    assert "'foo' was unexpected" in message


@pytest.mark.parametrize('data', [None, [], 'label', 3])
def test_non_object_input_is_refused(data):
    message = refused('label', data)
    assert '<root>:' in message
    assert "is not of type 'object'" in message


# --- refusals, sample -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ('changes', 'where'),
    [
        ({'supercell': [2, 2]}, 'supercell:'),
        ({'supercell': [2, 2, 2, 2]}, 'supercell:'),
        ({'supercell': [0, 1, 1]}, 'supercell.0:'),
        ({'supercell': [1, 21, 1]}, 'supercell.1:'),
        ({'supercell': [1, 1, 1.5]}, 'supercell.2:'),
        ({'include_seeds': 'yes'}, 'include_seeds:'),
        ({'rattle': {'count': 3}}, 'rattle:'),
        ({'rattle': {'count': -1, 'stdev': 0.1}}, 'rattle.count:'),
        ({'rattle': {'count': 3, 'stdev': 2.0}}, 'rattle.stdev:'),
        ({'rattle': {'count': 3, 'stdev': 0.1, 'seed': -1}}, 'rattle.seed:'),
        ({'strain': {'count': 3, 'max_strain': 0.9}}, 'strain.max_strain:'),
        ({'vacancies': {'count': 100001}}, 'vacancies.count:'),
        ({'structures': '../seeds.extxyz'}, 'structures:'),
    ],
)
def test_sample_bad_values_are_named(changes, where):
    assert where in refused('sample', sample_input(**changes))


@pytest.mark.parametrize(
    ('md_changes', 'where'),
    [
        ({'temperatures': []}, 'md.temperatures:'),
        ({'temperatures': [0]}, 'md.temperatures.0:'),
        ({'temperatures': [-300]}, 'md.temperatures.0:'),
        ({'steps': 0}, 'md.steps:'),
        ({'interval': 0}, 'md.interval:'),
        ({'timestep': 0}, 'md.timestep:'),
        ({'friction': 0}, 'md.friction:'),
        ({'calculator': {'name': 'emt', 'extra': 1}}, 'md.calculator:'),
    ],
)
def test_sample_bad_md_values_are_named(md_changes, where):
    data = sample_input()
    data['md'].update(md_changes)
    assert where in refused('sample', data)


@pytest.mark.parametrize('key', ['calculator', 'temperatures', 'steps', 'interval'])
def test_sample_md_missing_key_is_named(key):
    data = sample_input()
    del data['md'][key]
    message = refused('sample', data)
    assert 'md:' in message
    assert f"'{key}' is a required property" in message


def test_sample_unknown_key_is_named():
    message = refused('sample', sample_input(jitter={'count': 1}))
    assert "'jitter' was unexpected" in message
    message = refused('sample', sample_input(rattle={'count': 1, 'stdev': 0.1, 'sigma': 1}))
    assert 'rattle:' in message
    assert "'sigma' was unexpected" in message


def test_label_input_is_not_a_sample_input():
    message = refused('sample', label_input(task='sample'))
    for key in ('calculator', 'properties'):
        assert f"'{key}'" in message


# --- tasks and schema access -------------------------------------------------------------------------------------


def test_unknown_task_names_known_ones():
    message = refused('anneal', label_input())
    assert 'unknown worker task `anneal`' in message
    for task in ('descriptors', 'label', 'relax', 'sample', 'train'):
        assert task in message


def test_get_schema_returns_an_independent_copy():
    schema = get_schema('label')
    assert schema == LABEL_SCHEMA
    schema['properties']['structures']['pattern'] = '.*'
    schema['required'].clear()
    assert LABEL_SCHEMA['properties']['structures']['pattern'] != '.*'
    assert 'structures' in LABEL_SCHEMA['required']
    assert get_schema('sample') == SAMPLE_SCHEMA


def test_file_name_pattern_is_shared_and_anchored():
    pattern = LABEL_SCHEMA['properties']['structures']['pattern']
    assert pattern == SAMPLE_SCHEMA['properties']['structures']['pattern']
    assert re.fullmatch(pattern, 'structures.extxyz')
    assert not re.fullmatch(pattern, '..')
