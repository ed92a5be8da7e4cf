"""``mlmat provenance`` and ``mlmat export``: the chain behind a node, and a self-verifying export of it."""

from __future__ import annotations

from typing import Any

import click

from aiida_mlmat.cli.utils import EXIT_INVALID_INPUT, MlmatCliError, echo_json, load_node, load_profile, output_folder


def _short(uuid: str | None) -> str:
    return uuid[:8] if uuid else '-'


def _calculator_text(spec: dict[str, Any] | None) -> str:
    if not spec:
        return ''
    import json

    parameters = spec.get('parameters') or {}
    return f'{spec.get("name")} {json.dumps(parameters, sort_keys=True)}' if parameters else str(spec.get('name'))


def print_chain(chain: dict[str, Any]) -> None:
    """Print a provenance chain as tables for people: every process with the step that launched it, every set and
    potential with the process and output that made it."""
    node = chain['node']
    label = f' ({node["label"]})' if node['label'] else ''
    click.echo(f'provenance of {node["node_type"].rstrip(".")} {node["uuid"]}{label}')
    click.echo('')
    steps = {step['uuid']: step for step in chain['calculations']}
    number = {step['uuid']: index for index, step in enumerate(chain['calculations'], start=1)}

    def made_by(entry: dict[str, Any]) -> str:
        source = entry.get('made_by')
        if not source or source['process'] not in steps:
            return 'stored directly'
        step = steps[source['process']]
        text = f'{source["link_label"]} of #{number[step["uuid"]]} {step["process_label"]}'
        outer = [item for item in entry.get('returned_as') or [] if item['process'] in steps]
        if outer:
            workflow = steps[outer[0]['process']]
            text += f', returned as {outer[0]["link_label"]} by #{number[workflow["uuid"]]} {workflow["process_label"]}'
        return text

    def named(entry: dict[str, Any]) -> str:
        return f'  "{entry["label"]}"' if entry.get('label') else ''

    click.echo(f'{len(chain["calculations"])} processes, from the sources to the node:')
    click.echo(
        f'  {"#":>3}  {"kind":<11} {"process":<30} {"step":<22} {"uuid":<8}  {"state":<9} {"exit":>4}  calculator'
    )
    for index, step in enumerate(chain['calculations'], start=1):
        exit_status = '' if step['exit_status'] is None else str(step['exit_status'])
        call = str(step.get('call_link_label') or '')
        call = '' if call == 'CALL' else call  # aiida-core's default label says nothing
        calculator = _calculator_text(step['calculator'])
        if step.get('potential'):
            calculator += f' (potential {_short(step["potential"])})'
        if step.get('computer'):  # where a job ran, and its scheduler's job id
            job = f' job {step["job_id"]}' if step.get('job_id') else ''
            calculator = f'{calculator}  @{step["computer"]}{job}'.strip()
        click.echo(
            f'  {index:>3}  {step["kind"]:<11} {str(step["process_label"])[:30]:<30} {call[:22]:<22} '
            f'{_short(step["uuid"])}  {step["process_state"]!s:<9} {exit_status:>4}  {calculator}'
        )
    click.echo('')
    click.echo(f'{len(chain["datasets"])} configuration sets:')
    for entry in chain['datasets']:
        calculator = _calculator_text(entry['calculator']) or 'a calculator not recorded (imported)'
        keys = ','.join(entry['label_keys'])
        labels = f'labels {keys} by {calculator}' if keys else 'no labels (structures only)'
        click.echo(
            f'  {_short(entry["uuid"])}  {entry["n_configurations"]:>6} configurations  {",".join(entry["species"])}'
            f'  {labels}; {made_by(entry)}{named(entry)}'
        )
    click.echo('')
    click.echo(f'{len(chain["models"])} potentials:')
    for entry in chain['models']:
        metrics = entry.get('metrics') or {}
        rmse = metrics.get('forces_rmse')
        figure = f', test force RMSE {rmse:.4f} eV/Å' if isinstance(rmse, float) else ''
        click.echo(
            f'  {_short(entry["uuid"])}  {entry["members"]} member(s), species {",".join(entry["species"])}{figure}'
            f'; {made_by(entry)}{named(entry)}'
        )


@click.command('provenance')
@click.argument('identifier')
@click.option('--json', 'json_output', is_flag=True, help='Print one JSON object (UUIDs only) as the last line.')
@click.pass_context
def provenance_cmd(ctx: click.Context, identifier: str, json_output: bool) -> None:
    """The chain behind the node PK, UUID or label: calculations, data sets and models, from the sources to the node.

    Given a workflow, the chain behind it and everything it returned: every step of the run.
    """
    load_profile(ctx.obj.get('profile') if ctx.obj else None)
    from aiida_mlmat.query import provenance_chain

    node = load_node(identifier)
    chain = provenance_chain(node)
    if json_output:
        echo_json(chain)
    else:
        print_chain(chain)


@click.command('export')
@click.argument('identifier')
@click.argument('directory', type=click.Path(file_okay=False))
@click.option(
    '--licence',
    default='CC-BY-4.0',
    show_default=True,
    help='Licence of the exported data: an SPDX licence expression (CC-BY-4.0, MIT OR Apache-2.0, LicenseRef-x).',
)
@click.option('--creator', default=None, help='Creator to record in the cards (default: the AiiDA user).')
@click.option('--json', 'json_output', is_flag=True, help='Print one JSON object as the last line.')
@click.pass_context
def export_cmd(
    ctx: click.Context, identifier: str, directory: str, licence: str, creator: str | None, json_output: bool
) -> None:
    """Write the node PK with its provenance into DIRECTORY: AiiDA archive, extxyz, potentials, cards, manifest."""
    from pathlib import Path

    from aiida_mlmat.archive import ExportError, check_licence, deprecated_licence_hints, export_node

    try:
        licence = check_licence(licence)  # before anything is loaded or written
    except ExportError as exc:
        raise MlmatCliError(str(exc), EXIT_INVALID_INPUT) from exc
    for hint in deprecated_licence_hints(licence):
        click.echo(f'note: licence: {hint}', err=True)
    load_profile(ctx.obj.get('profile') if ctx.obj else None)
    node = load_node(identifier)
    output_folder(directory, 'DIR')
    try:
        manifest = export_node(node, directory, licence=licence, creator=creator)
    except ExportError as exc:
        raise MlmatCliError(str(exc), EXIT_INVALID_INPUT) from exc
    result = {
        'node': node.uuid,
        'directory': str(Path(directory).resolve()),
        'archive': str((Path(directory) / 'archive.aiida').resolve()),
        'datasets': sorted(manifest['datasets'].values()),
        'models': sorted(manifest['models'].values()),
        'n_files': len(manifest['files']),
        'licence': manifest['licence'],
    }
    if json_output:
        echo_json(result)
        return
    click.echo(
        f'wrote {result["archive"]}, {len(result["datasets"])} data set(s), {len(result["models"])} potential(s) '
        f'and {result["n_files"]} files with their sha256 in MANIFEST.json to {result["directory"]}'
    )
    click.echo(f'verify: cd {directory} && sha256sum -c SHA256SUMS')


@click.command('import')
@click.argument('path', type=click.Path(exists=True))
@click.option('--json', 'json_output', is_flag=True, help='Print one JSON object as the last line.')
@click.pass_context
def import_cmd(ctx: click.Context, path: str, json_output: bool) -> None:
    """Import an AiiDA archive, or the directory `mlmat export` wrote, after verifying every byte of it.

    A directory is checked against its MANIFEST.json first; the archive is refused whole (exit 2, no node added)
    when it is truncated, of a version this AiiDA does not read, or when repository bytes do not match their sha256.
    """
    load_profile(ctx.obj.get('profile') if ctx.obj else None)
    from pathlib import Path

    from aiida_mlmat.archive import ARCHIVE_NAME, ArchiveRefusedError, import_archive, verify_export

    target = Path(path)
    try:
        if target.is_dir():
            verify_export(target, check_archive=False)
            target = target / ARCHIVE_NAME
        result = import_archive(target)
    except (ArchiveRefusedError, ValueError) as exc:
        raise MlmatCliError(f'refused: {exc}', EXIT_INVALID_INPUT) from exc
    result = {**result, 'archive': str(target.resolve())}
    if json_output:
        echo_json(result)
        return
    added, total = result['nodes_added'], result['n_nodes']
    click.echo(f'imported {target}: {added} new node(s) of {total} into {result["profile"]}')
