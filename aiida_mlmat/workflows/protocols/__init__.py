"""YAML protocols (presets) of the aiida-mlmat workchains."""

from __future__ import annotations

import copy
import pathlib
from typing import Any

import yaml


def load_protocols(name: str) -> dict[str, Any]:
    """Return the content of ``<name>.yaml``: ``default_protocol`` and ``protocols``."""
    path = pathlib.Path(__file__).parent / f'{name}.yaml'
    return yaml.safe_load(path.read_text())


def get_protocol_inputs(name: str, protocol: str | None = None, overrides: dict | None = None) -> dict[str, Any]:
    """Return the inputs of a protocol, recursively updated with ``overrides``.

    :raises ValueError: for an unknown protocol, naming the known ones.
    """
    data = load_protocols(name)
    protocol = protocol or data['default_protocol']
    if protocol not in data['protocols']:
        raise ValueError(f'unknown protocol `{protocol}`; known: {", ".join(data["protocols"])}')
    inputs = copy.deepcopy(data['protocols'][protocol])
    inputs.pop('description', None)
    return recursive_merge(inputs, overrides or {})


def recursive_merge(left: dict[str, Any], right: dict[str, Any]) -> dict[str, Any]:
    """Merge ``right`` into a copy of ``left``, recursing into nested dictionaries."""
    merged = copy.deepcopy(left)
    for key, value in right.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = recursive_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
