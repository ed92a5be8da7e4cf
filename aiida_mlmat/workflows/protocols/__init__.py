"""YAML protocols (presets) of the aiida-mlmat workchains."""

from __future__ import annotations

import copy
import math
import pathlib
from typing import Any

import yaml


def load_protocols(name: str) -> dict[str, Any]:
    """Return the content of ``<name>.yaml``: ``default_protocol`` and ``protocols``."""
    path = pathlib.Path(__file__).parent / f'{name}.yaml'
    return yaml.safe_load(path.read_text())


def calculator_mapping(calculator: Any) -> dict[str, Any]:
    """The calculator spec a builder was given, as a plain dictionary: a mapping or an ``orm.Dict``.

    :raises ValueError: for anything else (a bare name such as ``'emt'`` included), naming the expected form.
    """
    from collections.abc import Mapping

    from aiida import orm

    if isinstance(calculator, orm.Dict):
        return calculator.get_dict()
    if isinstance(calculator, Mapping):
        return dict(calculator)
    raise ValueError(f'calculator: expected a mapping such as {{"name": "emt"}}, got {calculator!r}')


def get_protocol_inputs(name: str, protocol: str | None = None, overrides: dict | None = None) -> dict[str, Any]:
    """Return the inputs of a protocol, recursively updated with ``overrides``.

    :raises ValueError: for an unknown protocol, naming the known ones.
    """
    if overrides is not None and not isinstance(overrides, dict):
        raise ValueError(f'overrides: expected a mapping of settings, got {overrides!r}')
    data = load_protocols(name)
    protocol = protocol or data['default_protocol']
    if protocol not in data['protocols']:
        raise ValueError(f'unknown protocol `{protocol}`; known: {", ".join(data["protocols"])}')
    inputs = copy.deepcopy(data['protocols'][protocol])
    inputs.pop('description', None)
    merged = recursive_merge(inputs, overrides or {})
    error = protocol_inputs_error(name, merged)
    if error:
        raise ValueError(f'overrides: {error}')
    return merged


#: The settings of an ensemble's training: the training protocol's top level and active learning's `training`.
_TRAINING_KEYS = {
    'ensemble_size',
    'model',
    'training',
    'max_iterations',
    'test_fraction',
    'validation_fraction',
    'seed',
}
#: The settings each workflow's ``get_builder_from_protocol`` reads, by section.
_KNOWN_KEYS: dict[str, dict[str, set[str]]] = {
    'reference': {'': {'sample', 'chunk_size', 'max_iterations', 'select'}, 'select': {'n', 'method', 'descriptor'}},
    'training': {'': _TRAINING_KEYS},
    'active_learning': {
        '': {'training', 'retrain', 'exploration', 'selection', 'convergence', 'chunk_size', 'label_max_iterations'},
        'training': _TRAINING_KEYS,
        # `exploration`, `selection` and `convergence`: the input ports of those namespaces (see _known_keys)
    },
}  # fmt: skip
#: Sections of active learning's protocol whose keys are the input ports of the workchain's namespace of that name.
_AL_PORT_SECTIONS = ('exploration', 'selection', 'convergence')


def _known_keys(name: str) -> dict[str, set[str]]:
    """The keys allowed in each section of workflow ``name``'s protocol inputs ('' for the top level)."""
    known = dict(_KNOWN_KEYS.get(name, {}))
    if name == 'active_learning':
        from aiida_mlmat.workflows.active_learning import ActiveLearningWorkChain

        ports = ActiveLearningWorkChain.spec().inputs
        known.update({section: set(ports[section]) for section in _AL_PORT_SECTIONS})
    return known


def _subschema(task: str, key: str) -> dict[str, Any]:
    """The worker schema of ``key`` in ``task``'s input, its ``required`` lists dropped (filled in later)."""
    from aiida_mlmat.worker.schema import get_schema

    def loosen(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: loosen(v) for k, v in value.items() if k != 'required'}
        if isinstance(value, list):
            return [loosen(v) for v in value]
        return value

    schema = get_schema(task)
    if key:
        return loosen(schema['properties'][key])
    properties = {k: v for k, v in schema['properties'].items() if k not in ('schema_version', 'task', 'structures')}
    return loosen({**schema, 'properties': properties})


def schema_error(where: str, value: Any, schema: dict[str, Any]) -> str | None:
    """The first error of ``value`` against a JSON ``schema`` as ``where.path: message`` (unknown keys listed with
    the allowed ones), or None."""
    import jsonschema

    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(value), key=lambda e: list(e.absolute_path))
    if not errors:
        return None
    error = errors[0]
    path = '.'.join([where, *(str(part) for part in error.absolute_path)])
    if error.validator == 'additionalProperties':
        allowed = sorted(error.schema.get('properties', {}))
        unknown = sorted(set(error.instance) - set(allowed))
        return f'{path}: unknown key(s) {unknown}; allowed: {", ".join(allowed)}'
    return f'{path}: {error.message}'


def _port_values_error(inputs: dict[str, Any]) -> str | None:
    """Why a value of active learning's port sections does not fit its port's node type (null: the default).

    Strict, since the node types would convert silently: ``Bool("false")`` is true, ``Int(2.7)`` is 2.
    """
    from aiida import orm

    from aiida_mlmat.workflows.active_learning import ActiveLearningWorkChain

    ports = ActiveLearningWorkChain.spec().inputs
    accepted = {
        orm.Bool: (lambda v: isinstance(v, bool), 'true or false'),
        orm.Int: (lambda v: isinstance(v, int) and not isinstance(v, bool), 'an integer'),
        orm.Float: (_is_finite_number, 'a number'),
        orm.List: (lambda v: isinstance(v, list | tuple), 'a list'),
        orm.Str: (lambda v: isinstance(v, str), 'a string'),
    }
    for section in _AL_PORT_SECTIONS:
        for key, value in (inputs.get(section) or {}).items():
            if value is None or key not in ports[section]:  # null: the default; `description`: a comment
                continue
            node_type = port_node_type(ports[section][key])
            check, expected = accepted.get(node_type, (lambda v: True, ''))
            if not check(value):
                return f'{section}.{key}: expected {expected}, got {value!r}'
    return None


def _is_finite_number(value: Any) -> bool:
    """A finite int or float that converts to a float (10**400 does not), and not a bool."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def port_node_type(port: Any) -> Any:
    """The node type a port's value is built as: its valid type, the first that is not ``NoneType`` of several."""
    valid_type = port.valid_type
    if isinstance(valid_type, tuple):
        return next(t for t in valid_type if t is not type(None))
    return valid_type


#: The largest committee an ensemble workflow trains (each member is a training job).
MAX_ENSEMBLE_SIZE = 64
#: Seeds of the split and the members are numpy seeds: whole numbers from 0 to 2**32 - 1 (member k adds k).
MAX_SEED = 2**32 - 1 - MAX_ENSEMBLE_SIZE
#: The most restarts of one training job (``max_iterations`` of its restart wrapper).
MAX_RESTARTS = 100
#: Whole-number settings of an ensemble's training and their ranges.
_TRAINING_RANGES = {'ensemble_size': (1, MAX_ENSEMBLE_SIZE), 'seed': (0, MAX_SEED), 'max_iterations': (1, MAX_RESTARTS)}


def training_settings_error(settings: dict[str, Any], where: str = '') -> str | None:
    """Why an ensemble's training settings are invalid, or None: the committee size, seed and restart count (whole
    numbers in range), the split fractions, and ``model`` and ``training`` against the worker's ``train`` schema.

    The same check serves the protocols (``mlmat train --overrides``, a pipeline YAML) and the builder's inputs, so
    a bad model never reaches a training job. ``where`` prefixes the key in the message (``training.``).
    """
    for key, (low, high) in _TRAINING_RANGES.items():
        value = settings.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            return f'{where}{key}: expected a whole number, got {value!r}'
        if not low <= value <= high:
            return f'{where}{key}: must be from {low} to {high}, got {value}'
    for key in ('test_fraction', 'validation_fraction'):
        value = settings.get(key)
        if value is not None and not (_is_finite_number(value) and 0 < value < 1):
            return f'{where}{key}: expected a number between 0 and 1, got {value!r}'
    for key in ('model', 'training'):
        value = settings.get(key)
        if value is None:
            continue
        if not isinstance(value, dict):
            return f'{where}{key}: expected a mapping, got {value!r}'
        error = schema_error(f'{where}{key}', value, _subschema('train', key))
        if error:
            return error
    return None


def protocol_inputs_error(name: str, inputs: dict[str, Any]) -> str | None:
    """Why the protocol inputs of workflow ``name`` (after the overrides were merged) are invalid, or None.

    Checked here, before any process runs: unknown keys (a typo would otherwise be ignored), the sampling settings
    and the training parameters against the worker's schema, and the trust bounds of active learning.
    """
    mappings = {'reference': ('sample', 'select'), 'training': ('model', 'training')}.get(
        name, ('training', 'retrain', 'exploration', 'selection', 'convergence')
    )
    for section in mappings:
        if section == 'retrain' and inputs.get(section) is None:  # no retraining settings: train from scratch
            continue
        if section in inputs and not isinstance(inputs[section], dict):
            return f'{section}: expected a mapping, got {inputs[section]!r}'
    known = _known_keys(name)
    for section, keys in known.items():
        if section and inputs.get(section) is None:  # absent, or null for the default (checked above)
            continue
        value = inputs.get(section) if section else inputs
        if not isinstance(value, dict):
            return f'{section}: expected a mapping, got {value!r}'
        unknown = sorted(map(str, set(value) - keys - {'description'}))
        if unknown:
            return f'{section or "<top level>"}: unknown key(s) {unknown}; allowed: {", ".join(sorted(keys))}'
    trainings = {'training': inputs} if name == 'training' else {}
    if name == 'active_learning':
        from aiida_mlmat.workflows.active_learning import settings_error

        error = _port_values_error(inputs) or settings_error(inputs)  # types first, then ranges and the schema
        if error:
            return error
        trainings = {'training': inputs.get('training') or {}}
        if inputs.get('retrain') is not None:
            error = schema_error('retrain', inputs['retrain'], _subschema('train', 'training'))
            if error:
                return error
    for where, training in trainings.items():
        prefix = f'{where}.' if name == 'active_learning' else ''
        if 'training' in training and training['training'] is None:
            return f'{prefix}training: expected a mapping, got None'
        error = training_settings_error(training, prefix)
        if error:
            return error
    if name == 'reference' and inputs.get('sample') is not None:
        return schema_error('sample', inputs['sample'], _subschema('sample', ''))
    return None


def recursive_merge(left: dict[str, Any], right: dict[str, Any]) -> dict[str, Any]:
    """Merge ``right`` into a copy of ``left``, recursing into nested dictionaries."""
    merged = copy.deepcopy(left)
    for key, value in right.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = recursive_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
