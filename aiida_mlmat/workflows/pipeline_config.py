"""The YAML configuration of ``mlmat run`` / ``mlmat.pipeline``: its schema and a loader with clear errors.

Example (``examples/pipeline-cuau-emt.yaml``)::

    elements: [Cu, Au]
    reference: {calculator: {name: emt}, protocol: fast, select: 40}
    training: {protocol: fast, ensemble: 2}
    active_learning: {enabled: true, max_iterations: 2}
    screening: {generate: {max_atoms: 4}, verify_top: 3}

Every section but ``elements`` is optional. An unknown key or a wrong type is an error that names the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_CALCULATOR = {
    'type': 'object',
    'properties': {'name': {'type': 'string', 'pattern': r'^[a-z][a-z0-9_.-]*\Z'}, 'parameters': {'type': 'object'}},
    'required': ['name'],
    'additionalProperties': False,
}
_PROTOCOL = {'enum': ['fast', 'balanced', 'precise']}
_POSITIVE = {'type': 'integer', 'minimum': 1}

SCHEMA: dict[str, Any] = {
    'type': 'object',
    'properties': {
        'elements': {
            'type': 'array',
            'items': {'type': 'string', 'pattern': r'^[A-Z][a-z]?\Z'},
            'minItems': 1,
            'uniqueItems': True,
        },
        'computer': {'type': 'string', 'description': 'Computer whose mlmat-worker Code runs every job'},
        'code': {
            'type': 'string',
            'description': 'worker Code that runs every job (label, label@computer, UUID, or a PK in quotes); '
            'default mlmat-worker@computer',
        },
        'reference': {
            'type': 'object',
            'properties': {
                'calculator': _CALCULATOR,
                'protocol': _PROTOCOL,
                'labeller': {'enum': ['batch', 'aiida-ase']},
                'select': {
                    'type': 'integer',
                    'minimum': 3,  # the labelled set is split into train, validation and test
                    'description': 'label only the N most diverse (FPS); at least 3',
                },
                'overrides': {'type': 'object'},
            },
            'additionalProperties': False,
        },
        'training': {
            'type': 'object',
            'properties': {
                'protocol': _PROTOCOL,
                'ensemble': {'type': 'integer', 'minimum': 2, 'maximum': 64},  # MAX_ENSEMBLE_SIZE of the protocols
                'gpus': {'type': 'integer', 'minimum': 0},
                'overrides': {'type': 'object'},
            },
            'additionalProperties': False,
        },
        'active_learning': {
            'type': 'object',
            'properties': {
                'enabled': {'type': 'boolean'},
                'protocol': _PROTOCOL,
                'max_iterations': _POSITIVE,
                'hull_aware': {'type': 'boolean'},
                'overrides': {'type': 'object'},
            },
            'additionalProperties': False,
        },
        'screening': {
            'type': 'object',
            'properties': {
                'enabled': {'type': 'boolean'},
                'generate': {
                    'type': 'object',
                    'properties': {
                        'max_atoms': {'type': 'integer', 'minimum': 2, 'maximum': 8},
                        'lattices': {'type': 'array', 'items': {'enum': ['fcc', 'bcc', 'hcp']}, 'minItems': 1},
                        'max_candidates': _POSITIVE,
                    },
                    'additionalProperties': False,
                },
                'verify_top': {'type': 'integer', 'minimum': 0},
                'verify_relax': {'type': 'boolean'},
                'relax': {
                    'type': 'object',
                    'properties': {
                        'fmax': {'type': 'number', 'exclusiveMinimum': 0},
                        'max_steps': _POSITIVE,
                    },
                    'additionalProperties': False,
                },
                'chunk_size': _POSITIVE,
            },
            'additionalProperties': False,
        },
    },
    'required': ['elements'],
    'additionalProperties': False,
}

#: Defaults filled in where the YAML is silent.
DEFAULTS: dict[str, Any] = {
    'computer': 'localhost',
    'reference': {'calculator': {'name': 'emt', 'parameters': {}}, 'protocol': 'fast', 'labeller': 'batch'},
    'training': {'protocol': 'fast', 'ensemble': 2, 'gpus': 0},
    'active_learning': {'enabled': True, 'protocol': 'fast', 'max_iterations': 2, 'hull_aware': False},
    'screening': {'enabled': True, 'generate': {'max_atoms': 4}, 'verify_top': 3, 'verify_relax': True},
}


class ConfigError(ValueError):
    """The pipeline configuration is invalid; the message names the key."""


def validate_config(config: Any) -> dict[str, Any]:
    """Validate a configuration and return it with defaults filled in.

    :raises ConfigError: naming the first offending key (``screening.verify_top: 'three' is not of type
        'integer'``, ``training: unknown key `epochs```).
    """
    import jsonschema

    if not isinstance(config, dict):
        raise ConfigError('the configuration must be a mapping with at least `elements`')
    validator = jsonschema.Draft202012Validator(SCHEMA)
    errors = sorted(validator.iter_errors(config), key=lambda error: list(error.absolute_path))
    if errors:
        messages = []
        for error in errors:
            where = '.'.join(str(part) for part in error.absolute_path) or '<top level>'
            if error.validator == 'additionalProperties':
                allowed = sorted(error.schema.get('properties', {}))
                unknown = sorted(set(error.instance) - set(allowed))
                messages.append(f'{where}: unknown key(s) {unknown}; allowed: {", ".join(allowed)}')
            else:
                messages.append(f'{where}: {error.message}')
        raise ConfigError('invalid pipeline configuration: ' + '; '.join(messages))
    from aiida_mlmat.common.values import non_finite_path

    where = non_finite_path(config)
    if where is not None:
        raise ConfigError(f'invalid pipeline configuration: {where}: not a finite number (.nan, .inf, too large)')
    # with a `code` and no `computer` the jobs run on the Code's Computer (`mlmat run` fills it in)
    computer = config.get('computer', None if 'code' in config else DEFAULTS['computer'])
    merged = {'elements': list(config['elements']), 'computer': computer}
    if 'code' in config:
        merged['code'] = config['code']
    for section in ('reference', 'training', 'active_learning', 'screening'):
        merged[section] = {**DEFAULTS[section], **config.get(section, {})}
    calculator = merged['reference']['calculator']
    merged['reference']['calculator'] = {'name': calculator['name'], 'parameters': calculator.get('parameters', {})}
    error = _reconcile(config, merged) or _semantic_error(merged)
    if error:
        raise ConfigError(f'invalid pipeline configuration: {error}')
    return merged


def _reconcile(given: dict[str, Any], merged: dict[str, Any]) -> str | None:
    """Make every setting the YAML gives count once, in ``merged``; refuse two that disagree or one that would be
    ignored. (Each stage's builder sets ``max_iterations`` and the ensemble size from the section keys, so an
    override of them, or a training setting while active learning trains, must land there or be refused.)

    - ``active_learning.overrides.convergence.max_iterations`` is ``active_learning.max_iterations``;
    - ``ensemble_size`` in ``training.overrides`` or ``active_learning.overrides.training`` is ``training.ensemble``;
    - with active learning on, the loop trains: ``training.overrides`` go under ``active_learning.overrides.training``
      (the loop's own win), and a ``training.protocol`` other than ``active_learning.protocol`` or ``training.gpus``
      is refused; with it off, ``active_learning`` takes no other key, and ``hull_aware`` needs screening.
    """
    from aiida_mlmat.workflows.protocols import recursive_merge

    # `mlmat run` submits the merged configuration and the workflow validates it again: a value equal to its
    # default counts as not given, so that validating twice gives the same answer
    given_al = {k: v for k, v in given.get('active_learning', {}).items() if v != DEFAULTS['active_learning'].get(k)}
    given_training = {k: v for k, v in given.get('training', {}).items() if v != DEFAULTS['training'].get(k)}
    al, training = merged['active_learning'], merged['training']
    al_overrides = al.get('overrides', {})
    for where, value in (
        ('active_learning.overrides.training', al_overrides.get('training')),
        ('active_learning.overrides.convergence', al_overrides.get('convergence')),
        ('training.overrides.training', (given_training.get('overrides') or {}).get('training')),
    ):
        if value is not None and not isinstance(value, dict):
            return f'{where}: must be a mapping of settings, got {value!r}'
    enabled = al['enabled']
    sizes = {  # a value written twice is compared as written, default or not (see max_iterations below)
        'training.ensemble': (given.get('training') or {}).get('ensemble'),
        'training.overrides.ensemble_size': (given_training.get('overrides') or {}).get('ensemble_size'),
        'active_learning.overrides.training.ensemble_size': (al_overrides.get('training') or {}).get('ensemble_size'),
    }
    sizes = {key: value for key, value in sizes.items() if value is not None}
    if len(set(sizes.values())) > 1:
        return 'the ensemble size is given twice with different values: ' + ', '.join(
            f'{key} {value}' for key, value in sizes.items()
        )
    if sizes:
        training['ensemble'] = next(iter(sizes.values()))
    if not enabled:
        ignored = sorted(set(given_al) - {'enabled'})
        if ignored:
            return f'active_learning.{ignored[0]}: not used with `active_learning: {{enabled: false}}`; remove it'
        return None
    if al['hull_aware'] and not merged['screening']['enabled']:
        return 'active_learning.hull_aware: needs the screening stage (`screening: {enabled: true}`) for candidates'
    override = (al_overrides.get('convergence') or {}).get('max_iterations')
    if override is not None:
        # as written, even when equal to the default: `max_iterations: 2` beside an override of 3 is a contradiction
        # (a merged configuration validated again has the override's value in both places)
        written = (given.get('active_learning') or {}).get('max_iterations')
        if written is not None and written != override:
            return (
                f'active_learning: max_iterations {written} and '
                f'overrides.convergence.max_iterations {override} disagree; give one'
            )
        al['max_iterations'] = override
    if given_training.get('gpus'):
        return (
            'training.gpus: not used while active learning trains the ensemble; set `active_learning: {enabled: '
            'false}` to train once on GPUs'
        )
    if 'protocol' in given_training and given_training['protocol'] != al['protocol']:
        return (
            f'training.protocol {given_training["protocol"]}: active learning trains with active_learning.protocol '
            f'({al["protocol"]}); set that one, or tune active_learning.overrides.training'
        )
    if given_training.get('overrides'):
        merged_training = recursive_merge(given_training['overrides'], al_overrides.get('training') or {})
        al['overrides'] = {**al_overrides, 'training': merged_training}
    return None


def _semantic_error(config: dict[str, Any]) -> str | None:
    """What the schema cannot see: unknown elements, a calculator that is not registered or cannot treat the
    elements, and each stage's protocol with its overrides (unknown settings, training parameters, trust bounds),
    checked as the stage will build them, so that the pipeline fails here and not after its first stages ran.
    """
    from aiida_mlmat.calcjobs.label import calculator_error
    from aiida_mlmat.worker.structures import check_element
    from aiida_mlmat.workflows.protocols import get_protocol_inputs

    for symbol in config['elements']:
        try:
            check_element(symbol)
        except ValueError as exc:
            return f'elements: {exc}'
    error = calculator_error(config['reference']['calculator'], config['elements'])
    if error:
        return f'reference.{error}'
    stages = {
        'reference': ('reference', config['reference'].get('overrides', {})),
        'training': ('training', config['training'].get('overrides', {})),
    }
    if config['active_learning']['enabled']:
        stages['active_learning'] = ('active_learning', config['active_learning'].get('overrides', {}))
    for section, (name, overrides) in stages.items():
        try:
            get_protocol_inputs(name, config[section]['protocol'], overrides)
        except ValueError as exc:
            return f'{section}.{exc}'
    select = config['reference'].get('select') or (
        (config['reference'].get('overrides') or {}).get('select') or {}
    ).get('n')
    if select and select < 3:  # 0 or null: no selection
        return f'reference: selecting {select} configurations leaves too few to split into train, validation and test'
    from aiida_mlmat.workflows.reference import select_error, select_without_n_error

    settings = dict((config['reference'].get('overrides') or {}).get('select') or {})
    if config['reference'].get('select'):
        settings['n'] = config['reference']['select']
    error = select_without_n_error(settings) or select_error(settings, config['elements'])
    if error:
        return f'reference.overrides.{error}'.replace('(--select N)', '(reference.select)')
    if config['screening']['enabled'] and len(set(config['elements'])) < 2:
        return (
            'screening: the generated candidates are decorations of two or more elements; for one element set '
            '`screening: {enabled: false}`'
        )
    return None


def _unique_keys_loader() -> Any:
    """A ``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == 'tag:yaml.org,2002:merge':  # `<<: *anchor` merges; its keys may repeat
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    repeated = key in seen
                    seen.add(key)
                except TypeError as exc:
                    raise yaml.constructor.ConstructorError(
                        None, None, f'a key must be a plain value, got {key!r}', key_node.start_mark
                    ) from exc
                if repeated:
                    raise yaml.constructor.ConstructorError(
                        None, None, f'the key `{key}` is given twice', key_node.start_mark
                    )
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def load_config(path: str | Path) -> dict[str, Any]:
    """Read and validate a YAML configuration file.

    :raises ConfigError: for a missing file, invalid YAML or an invalid configuration.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f'no such configuration file: {path}')
    try:
        with path.open(encoding='utf-8') as handle:  # the stream's name goes into YAML's error marks
            config = yaml.load(handle, Loader=_unique_keys_loader())  # a SafeLoader subclass
    except UnicodeDecodeError as exc:
        raise ConfigError(f'{path} is not a text (UTF-8) YAML file: {exc.reason} at byte {exc.start}') from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f'{path} is not valid YAML: {exc}') from exc
    return validate_config(config)
