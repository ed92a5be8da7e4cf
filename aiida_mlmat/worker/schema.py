"""The versioned JSON schema of the worker's ``input.json``, validated on both sides.

The CalcJob validates the dictionary it is about to write (so bad input fails before submission) and the
worker validates what it reads (so a hand-written or stale file fails with a clear code, not a traceback).
"""

from __future__ import annotations

import copy
from typing import Any

SCHEMA_VERSION = 1

_CALCULATOR = {
    'type': 'object',
    'properties': {
        'name': {
            'type': 'string',
            'pattern': r'^[a-z][a-z0-9_.-]*\Z',
            'description': 'registry name of the calculator',
        },
        'parameters': {'type': 'object', 'description': 'keyword arguments of the calculator, as JSON'},
    },
    'required': ['name'],
    'additionalProperties': False,
}

_FILE_NAME = {'type': 'string', 'pattern': r'^[A-Za-z0-9_][A-Za-z0-9_.-]*\Z', 'maxLength': 128}
_SEED = {'type': 'integer', 'minimum': 0}
_COUNT = {'type': 'integer', 'minimum': 0, 'maximum': 100000}

LABEL_SCHEMA: dict[str, Any] = {
    '$schema': 'https://json-schema.org/draft/2020-12/schema',
    'title': 'mlmat-worker label input',
    'type': 'object',
    'properties': {
        'schema_version': {'const': SCHEMA_VERSION},
        'task': {'const': 'label'},
        'calculator': _CALCULATOR,
        'structures': _FILE_NAME,
        'previous': _FILE_NAME,
        'previous_excluded': _FILE_NAME,
        'properties': {
            'type': 'array',
            'items': {'enum': ['energy', 'forces', 'stress']},
            'contains': {'const': 'energy'},
            'uniqueItems': True,
        },
        'max_seconds': {'type': ['number', 'null'], 'minimum': 0, 'description': 'soft time limit in s'},
        'min_distance': {'type': 'number', 'minimum': 0, 'description': 'smallest allowed interatomic distance, Å'},
    },
    'required': ['schema_version', 'task', 'calculator', 'structures', 'properties'],
    'additionalProperties': False,
}

SAMPLE_SCHEMA: dict[str, Any] = {
    '$schema': 'https://json-schema.org/draft/2020-12/schema',
    'title': 'mlmat-worker sample input',
    'type': 'object',
    'properties': {
        'schema_version': {'const': SCHEMA_VERSION},
        'task': {'const': 'sample'},
        'structures': _FILE_NAME,
        'supercell': {
            'type': 'array',
            'items': {'type': 'integer', 'minimum': 1, 'maximum': 20},
            'minItems': 3,
            'maxItems': 3,
        },
        'include_seeds': {'type': 'boolean'},
        'rattle': {
            'type': 'object',
            'properties': {'count': _COUNT, 'stdev': {'type': 'number', 'minimum': 0, 'maximum': 1.0}, 'seed': _SEED},
            'required': ['count', 'stdev'],
            'additionalProperties': False,
        },
        'strain': {
            'type': 'object',
            'properties': {
                'count': _COUNT,
                'max_strain': {'type': 'number', 'minimum': 0, 'maximum': 0.5},
                'rattle_stdev': {'type': 'number', 'minimum': 0, 'maximum': 1.0},
                'seed': _SEED,
            },
            'required': ['count', 'max_strain'],
            'additionalProperties': False,
        },
        'vacancies': {
            'type': 'object',
            'properties': {'count': _COUNT, 'seed': _SEED},
            'required': ['count'],
            'additionalProperties': False,
        },
        'md': {
            'type': 'object',
            'properties': {
                'calculator': _CALCULATOR,
                'temperatures': {
                    'type': 'array',
                    'items': {'type': 'number', 'exclusiveMinimum': 0, 'maximum': 100000},
                    'minItems': 1,
                },
                'steps': {'type': 'integer', 'minimum': 1},
                'timestep': {'type': 'number', 'exclusiveMinimum': 0, 'maximum': 20, 'description': 'fs'},
                'interval': {'type': 'integer', 'minimum': 1, 'description': 'keep a snapshot every n steps'},
                'friction': {'type': 'number', 'exclusiveMinimum': 0, 'description': 'Langevin friction, 1/fs'},
                'seed': _SEED,
                'strains': {
                    'type': 'array',
                    'items': {'type': 'number', 'minimum': -0.3, 'maximum': 0.3},
                    'minItems': 1,
                    'description': 'isotropic linear strains (fractions) applied to each seed before MD',
                },
                'stop_disagreement': {
                    'type': 'number',
                    'exclusiveMinimum': 0,
                    'description': 'end a trajectory once the ensemble force disagreement exceeds this (eV/Å)',
                },
            },
            'required': ['calculator', 'temperatures', 'steps', 'interval'],
            'additionalProperties': False,
        },
    },
    'required': ['schema_version', 'task', 'structures'],
    'additionalProperties': False,
}

DESCRIPTOR_SPEC_SCHEMA: dict[str, Any] = {
    'type': 'object',
    'properties': {
        'kind': {'enum': ['chebyshev', 'acsf']},
        'species': {'type': 'array', 'items': {'type': 'string', 'pattern': r'^[A-Z][a-z]?\Z'}, 'minItems': 1},
        'rcut': {'type': 'number', 'minimum': 0.5, 'maximum': 20, 'description': 'Å (at least the shortest distance)'},
        'rcut_angular': {'type': ['number', 'null'], 'exclusiveMinimum': 0, 'maximum': 20, 'description': 'Å'},
        'n_radial': {'type': 'integer', 'minimum': 1, 'maximum': 40},
        'n_angular': {'type': 'integer', 'minimum': 0, 'maximum': 12},
        'g2': {'type': 'array', 'items': {'type': 'array', 'items': {'type': 'number'}, 'minItems': 2, 'maxItems': 2}},
        'g4': {'type': 'array', 'items': {'type': 'array', 'items': {'type': 'number'}, 'minItems': 3, 'maxItems': 3}},
        'n_features': {'type': 'integer'},
    },
    'required': ['kind', 'species'],
    'additionalProperties': False,
}

DESCRIPTORS_SCHEMA: dict[str, Any] = {
    '$schema': 'https://json-schema.org/draft/2020-12/schema',
    'title': 'mlmat-worker descriptors input',
    'type': 'object',
    'properties': {
        'schema_version': {'const': SCHEMA_VERSION},
        'task': {'const': 'descriptors'},
        'structures': _FILE_NAME,
        'descriptor': DESCRIPTOR_SPEC_SCHEMA,
        'dtype': {'enum': ['float32', 'float64']},
        'device': {'enum': ['auto', 'cpu', 'cuda']},
    },
    'required': ['schema_version', 'task', 'structures', 'descriptor'],
    'additionalProperties': False,
}

TRAIN_SCHEMA: dict[str, Any] = {
    '$schema': 'https://json-schema.org/draft/2020-12/schema',
    'title': 'mlmat-worker train input',
    'type': 'object',
    'properties': {
        'schema_version': {'const': SCHEMA_VERSION},
        'task': {'const': 'train'},
        'train': _FILE_NAME,
        'validation': _FILE_NAME,
        'checkpoint': _FILE_NAME,
        'init_model': {
            'type': 'string',
            'pattern': r'^potential/member_[0-9]{1,4}\.pt\Z',
            'description': 'model file of a previous potential (the job folder `potential/`) to start from',
        },
        'model': {
            'type': 'object',
            'properties': {
                'architecture': {'type': 'string', 'pattern': r'^[a-z][a-z0-9_-]*\Z'},
                'species': {'type': 'array', 'items': {'type': 'string', 'pattern': r'^[A-Z][a-z]?\Z'}, 'minItems': 1},
                'descriptor': DESCRIPTOR_SPEC_SCHEMA,
                'hidden': {'type': 'array', 'items': {'type': 'integer', 'minimum': 1, 'maximum': 4096}, 'minItems': 1},
                'activation': {'enum': ['silu', 'tanh']},
            },
            'required': ['architecture', 'species', 'descriptor'],
            'additionalProperties': False,
        },
        'training': {
            'type': 'object',
            'properties': {
                'epochs': {'type': 'integer', 'minimum': 1},
                'batch_size': {'type': 'integer', 'minimum': 1},
                'learning_rate': {'type': 'number', 'exclusiveMinimum': 0},
                'weight_decay': {'type': 'number', 'minimum': 0},
                'energy_weight': {'type': 'number', 'minimum': 0},
                'forces_weight': {'type': 'number', 'minimum': 0},
                'stress_weight': {'type': 'number', 'minimum': 0},
                'patience': {'type': 'integer', 'minimum': 1},
                'lr_patience': {'type': 'integer', 'minimum': 1},
                'lr_factor': {'type': 'number', 'exclusiveMinimum': 0, 'exclusiveMaximum': 1},
                'min_learning_rate': {'type': 'number', 'minimum': 0},
                'seed': {'type': 'integer', 'minimum': 0},
                'dtype': {'enum': ['float32', 'float64']},
                'device': {'enum': ['auto', 'cpu', 'cuda']},
                'amp': {'type': 'boolean'},
                'checkpoint_every_epochs': {'type': 'integer', 'minimum': 1},
                'checkpoint_every_seconds': {'type': 'number', 'exclusiveMinimum': 0},
                'lr_scale': {'type': 'number', 'exclusiveMinimum': 0, 'maximum': 1},
                'jacobian_memory_mb': {'type': 'number', 'minimum': 0},
            },
            'additionalProperties': False,
        },
        'max_seconds': {'type': ['number', 'null'], 'minimum': 0},
    },
    'required': ['schema_version', 'task', 'train', 'validation', 'model'],
    'additionalProperties': False,
}

RELAX_SCHEMA: dict[str, Any] = {
    '$schema': 'https://json-schema.org/draft/2020-12/schema',
    'title': 'mlmat-worker relax input',
    'type': 'object',
    'properties': {
        'schema_version': {'const': SCHEMA_VERSION},
        'task': {'const': 'relax'},
        'calculator': _CALCULATOR,
        'structures': _FILE_NAME,
        'previous': _FILE_NAME,
        'fmax': {'type': 'number', 'exclusiveMinimum': 0, 'description': 'force convergence criterion, eV/Å'},
        'max_steps': {'type': 'integer', 'minimum': 0, 'maximum': 100000},
        'relax_cell': {'type': 'boolean', 'description': 'relax the cell too (FIRE with a cell filter)'},
        'optimizer': {'enum': ['FIRE', 'BFGS', 'LBFGS']},
        'min_distance': {'type': 'number', 'minimum': 0, 'description': 'collapse below this distance, Å'},
        'max_energy_drop': {
            'type': 'number',
            'exclusiveMinimum': 0,
            'description': 'energy divergence: largest fall of the energy per atom during relaxation, eV/atom',
        },
        'max_volume_ratio': {
            'type': 'number',
            'exclusiveMinimum': 1,
            'description': 'explosion: largest volume change factor (either way) during relaxation',
        },
        'max_seconds': {'type': ['number', 'null'], 'minimum': 0, 'description': 'soft time limit in s'},
    },
    'required': ['schema_version', 'task', 'calculator', 'structures'],
    'additionalProperties': False,
}

SCHEMAS: dict[str, dict[str, Any]] = {
    'label': LABEL_SCHEMA,
    'sample': SAMPLE_SCHEMA,
    'descriptors': DESCRIPTORS_SCHEMA,
    'train': TRAIN_SCHEMA,
    'relax': RELAX_SCHEMA,
}


def validate_input(task: str, data: Any) -> None:
    """Validate the content of an ``input.json`` for a task.

    :param task: the worker task, ``label`` or ``sample``.
    :param data: the decoded JSON.
    :raises ValueError: with a message naming the offending key when the input does not validate.
    """
    errors = input_errors(task, data)
    if errors:
        messages = [f'{".".join(str(part) for part in path) or "<root>"}: {message}' for path, message in errors]
        raise ValueError(f'invalid {task} input (schema version {SCHEMA_VERSION}): ' + '; '.join(messages))


def input_errors(task: str, data: Any) -> list[tuple[tuple[str | int, ...], str]]:
    """Every schema error of an ``input.json`` for a task, as (path of the offending value, message), by path.

    :raises ValueError: for an unknown task.
    """
    import jsonschema

    if task not in SCHEMAS:
        raise ValueError(f'unknown worker task `{task}`; known: {", ".join(sorted(SCHEMAS))}')
    validator = jsonschema.Draft202012Validator(SCHEMAS[task])

    def where(error: Any) -> list[tuple[int, int | str]]:  # list indices in numeric order, before keys
        return [(0, part) if isinstance(part, int) else (1, str(part)) for part in error.absolute_path]

    errors = sorted(validator.iter_errors(data), key=where)
    return [(tuple(error.absolute_path), error.message) for error in errors]


def get_schema(task: str) -> dict[str, Any]:
    """Return a copy of the JSON schema of a task (for documentation and external tools)."""
    return copy.deepcopy(SCHEMAS[task])
