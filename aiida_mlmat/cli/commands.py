"""Implementations of the ``mlmat`` commands (imported lazily by :mod:`aiida_mlmat.cli.main`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from aiida_mlmat.cli.utils import (
    EXIT_INVALID_INPUT,
    MlmatCliError,
    echo_json,
    ensure_daemon,
    load_code,
    load_node,
    load_profile,
    parse_json_option,
    read_structures,
    wait_for,
)


def _worker_code_label(calculator: str, computer: str) -> str:
    from aiida_mlmat.cli.setup import GPAW_WORKER_CODE, WORKER_CODE

    return f'{GPAW_WORKER_CODE if calculator == "gpaw" else WORKER_CODE}@{computer}'


def _ase_code_label(calculator: str, computer: str) -> str:
    from aiida_mlmat.cli.setup import ASE_CODE, GPAW_ASE_CODE

    return f'{GPAW_ASE_CODE if calculator == "gpaw" else ASE_CODE}@{computer}'


def reference(profile: str | None, **kwargs: Any) -> None:
    """``mlmat reference``: validate, build the workflow from a protocol, submit, optionally wait."""
    elements = list(kwargs['elements'] or [])
    files = list(kwargs['structure_files'] or [])
    json_output = bool(kwargs['json_output'])
    calculator = {
        'name': kwargs['calculator'],
        'parameters': parse_json_option(kwargs['calculator_params'], '--calculator-params'),
    }
    overrides = parse_json_option(kwargs['overrides'], '--overrides')
    if kwargs['chunk_size']:
        overrides['chunk_size'] = kwargs['chunk_size']
    if not elements and not files:
        raise MlmatCliError('give `--elements` (e.g. --elements Cu Au) or `--structures FILE ...`')

    from aiida_mlmat.worker.structures import check_element

    for symbol in elements:
        try:
            check_element(symbol)
        except ValueError as exc:
            raise MlmatCliError(f'--elements: {exc}') from exc
    frames = read_structures(files) if files else []

    load_profile(profile)
    from aiida.engine import submit

    from aiida_mlmat.data.configurations import ConfigurationSetData
    from aiida_mlmat.workflows.reference import ReferenceWorkChain

    computer = kwargs['computer']
    code = load_code(_worker_code_label(calculator['name'], computer))
    ase_code = load_code(_ase_code_label(calculator['name'], computer)) if kwargs['labeller'] == 'aiida-ase' else None
    structures = ConfigurationSetData(frames) if frames else None
    try:
        builder = ReferenceWorkChain.get_builder_from_protocol(
            code,
            calculator=calculator,
            structures=structures,
            elements=elements or None,
            protocol=kwargs['protocol'],
            overrides=overrides,
            labeller=kwargs['labeller'],
            ase_code=ase_code,
        )
    except ValueError as exc:
        raise MlmatCliError(str(exc)) from exc
    error = ReferenceWorkChain.spec().inputs.validate(dict(builder._inputs(prune=True)))
    if error is not None:
        raise MlmatCliError(f'invalid input: {error.message}', EXIT_INVALID_INPUT)
    ensure_daemon(quiet=json_output)
    node = submit(builder)
    if not json_output:
        click.echo(f'submitted {node.process_label}<{node.pk}> ({node.uuid})')
    if kwargs['wait']:
        wait_for(node)  # progress goes to stderr, so it never mixes with the JSON on stdout
    result: dict[str, Any] = {'process': node.pk, 'configurations': None, 'n_configurations': None, 'n_excluded': None}
    if node.is_finished_ok:
        labelled = node.outputs.configurations
        result.update(
            configurations=labelled.pk,
            n_configurations=labelled.count,
            n_excluded=labelled.base.attributes.get('n_excluded'),
        )
        if not json_output:
            click.echo(
                f'labelled set pk {labelled.pk}: {labelled.count} configurations, {result["n_excluded"]} excluded, '
                f'labels {", ".join(labelled.label_keys)} by {calculator["name"]}'
            )
    if json_output:
        echo_json(result)


def dataset_import(profile: str | None, file: str, label: str, json_output: bool) -> None:
    """``mlmat dataset import``."""
    load_profile(profile)
    from aiida_mlmat.data.configurations import ConfigurationSetData, CorruptFileError

    path = Path(file)
    if not path.is_file():
        raise MlmatCliError(f'file `{file}` does not exist')
    try:
        node = ConfigurationSetData.from_file(path)
    except CorruptFileError as exc:
        raise MlmatCliError(f'refused: {exc}; nothing was stored') from exc
    node.label = label
    node.store()
    if json_output:
        echo_json({'configurations': node.pk, 'n_configurations': node.count})
    else:
        click.echo(f'stored {node.count} configurations as pk {node.pk} ({node.uuid})')


def dataset_export(profile: str | None, identifier: str, file: str, json_output: bool) -> None:
    """``mlmat dataset export``."""
    load_profile(profile)
    from aiida_mlmat.data.configurations import ConfigurationSetData

    node = load_node(identifier, ConfigurationSetData)
    node.write_extxyz(file)
    if json_output:
        echo_json({'configurations': node.pk, 'file': str(Path(file).resolve()), 'n_configurations': node.count})
    else:
        click.echo(f'wrote {node.count} configurations to {file}')


def dataset_show(profile: str | None, identifier: str, json_output: bool) -> None:
    """``mlmat dataset show``."""
    load_profile(profile)
    from aiida_mlmat.data.configurations import ConfigurationSetData

    node = load_node(identifier, ConfigurationSetData)
    summary = node.summary()
    if json_output:
        echo_json(summary)
        return
    for key in ('pk', 'uuid', 'label', 'n_configurations', 'n_atoms_total', 'species', 'label_keys', 'calculator'):
        click.echo(f'{key:>18}: {summary[key]}')
    for symbol, (low, high) in summary['composition_range'].items():
        click.echo(f'{"x(" + symbol + ")":>18}: {low:.3f} .. {high:.3f}')
    click.echo(f'{"excluded":>18}: {summary["n_excluded"]}')
    for record in summary['excluded'][:20]:
        click.echo(f'{"":>18}  #{record["index"]} {record.get("formula", "")}: {record["reason"]}')
    click.echo(f'{"sha256":>18}: {summary["sha256"]}')
