"""``mlmat run`` (the whole loop from a YAML file) and ``mlmat report`` (summary and plots of any mlmat workflow)."""

from __future__ import annotations

import json
import re
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
    load_worker_code,
    output_folder,
    process_reason,
    reference_worker_code,
    wait_for,
)
from aiida_mlmat.hull.metrics import describe_verification


def _fmt(value: Any, digits: int = 4) -> str:
    """A figure in a sentence: a float to ``digits`` significant digits; ``n/a`` for one there is none of."""
    if value is None:
        return 'n/a'
    if isinstance(value, float):
        return f'{value:.{digits}g}'
    return str(value)


def _cell(value: Any, digits: int = 4) -> str:
    """A table cell: a float with ``digits`` decimals (so a column lines up: 0.0500 beside 0.0480), in exponent form
    where that would hide it; ``n/a`` for a figure there is none of (``None``: the last iteration has no new labels to
    calibrate with, a killed process has no exit status)."""
    if isinstance(value, float):
        return f'{value:.{digits}f}' if value == 0 or 10**-digits <= abs(value) < 1e6 else f'{value:.{digits - 1}e}'
    return _fmt(value)


def call_label(process: Any) -> str:
    """The label of the CALL link by which its caller launched ``process`` (``training_2``), '' for a top process."""
    from aiida.common.links import LinkType

    link = process.base.links.get_incoming(link_type=(LinkType.CALL_CALC, LinkType.CALL_WORK)).first()
    return link.link_label if link is not None else ''


#: The files of a report (``write_report``): they are replaced when a report is written into the same folder.
_REPORT_FILE = re.compile(r'^\d{2,}-.+\.(png|csv)$|^summary\.(md|json)$')


def _is_report_folder(out: Path) -> bool:
    """Whether ``out`` holds a report this command wrote (its ``summary.json`` names a process)."""
    try:
        return 'process' in json.loads((out / 'summary.json').read_text())
    except (OSError, ValueError, TypeError):
        return False


def _plots(node: Any, suffixes: tuple[str, ...] = ('.png', '.csv')) -> list[tuple[str, Any]]:
    """Every PNG (plots) and CSV (tables, such as the screening table) a process and its descendants made, as
    (file name, SinglefileData), in creation order.

    Ordered by the processes' creation times (kept by archives; PKs are not) and the output link labels; a name
    carries the producing process's label and, below the top process, its call link (``training_2``: the training
    of the second active-learning iteration).
    """
    from aiida import orm

    processes = [node, *sorted(node.called_descendants, key=lambda process: (process.ctime, process.uuid))]
    found: dict[str, tuple[str, Any]] = {}
    for process in processes:
        step = call_label(process) if process is not node else ''
        step = '' if step in ('', 'CALL') else f'-{step}'
        links = sorted(process.base.links.get_outgoing().all(), key=lambda link: link.link_label)
        for link in links:
            target = link.node
            if (
                isinstance(target, orm.SinglefileData)
                and target.filename.endswith(suffixes)
                and target.uuid not in found
            ):
                name = f'{len(found):02d}-{process.process_label or "process"}{step}-{target.filename}'
                found[target.uuid] = (name.replace('/', '_'), target)
    return list(found.values())


def waits_for_nothing(node: Any) -> bool:
    """Whether a workflow is waiting, not paused, with an empty process status (not "Waiting for child
    processes: ...") although every process it called has ended: for a moment that is a step in between; for good,
    the workflow is stuck (a pause that met a child's end, an aiida-core race: docs/howto/faults.md)."""
    from aiida.engine import ProcessState

    if node.process_state is not ProcessState.WAITING or node.paused or node.process_status or not node.called:
        return False  # a paused workflow (status "Paused through ...") or one that names what it waits for
    return all(child.is_terminated for child in node.called)


def _end_time(process: Any) -> Any:
    """When a terminated process ended: the newest of its own and its descendants' outputs, called processes and log
    entries (never past its ``mtime``). ``mtime`` alone moves with any later write to the node (an extra, a label,
    a rehash), so a report written days later would count the days."""
    from aiida import orm

    ids = [process.pk, *(node.pk for node in getattr(process, 'called_descendants', []))]
    times = [process.ctime]
    created = orm.QueryBuilder().append(orm.ProcessNode, filters={'id': {'in': ids}}, tag='process')
    created.append(
        orm.Node, with_incoming='process', edge_filters={'type': {'in': ['create', 'return']}}, project=['ctime']
    )
    times += created.all(flat=True)
    if len(ids) > 1:
        called = orm.QueryBuilder().append(orm.ProcessNode, filters={'id': {'in': ids[1:]}}, project=['ctime'])
        times += called.all(flat=True)
    times += orm.QueryBuilder().append(orm.Log, filters={'dbnode_id': {'in': ids}}, project=['time']).all(flat=True)
    return min(max(times), process.mtime)


def _wall_s(process: Any) -> float:
    """Seconds from a process's creation to its end (:func:`_end_time`; now, while it runs)."""
    from aiida.common import timezone

    end = _end_time(process) if process.is_terminated else timezone.now()
    return round(max((end - process.ctime).total_seconds(), 0.0), 1)


def _job_counts(process: Any) -> dict[str, int]:
    """How many calculation jobs (CalcJobs: the work sent to a Computer) ``process`` and its descendants ran, and
    how many of them failed, excepted or were killed."""
    from aiida import orm

    jobs = [process] if isinstance(process, orm.CalcJobNode) else []
    if isinstance(process, orm.WorkflowNode):
        jobs = [node for node in process.called_descendants if isinstance(node, orm.CalcJobNode)]
    failed = sum(1 for job in jobs if job.is_failed or job.is_excepted or job.is_killed)
    return {'n_calcjobs': len(jobs), 'n_calcjobs_failed': failed}


def stage_records(node: Any) -> list[dict[str, Any]]:
    """One record per process ``node`` called, in creation order: its call link (``step``), process, state, exit
    status, wall time (s) and the calculation jobs under it (``n_calcjobs``, ``n_calcjobs_failed``)."""
    records = []
    for child in sorted(node.called, key=lambda n: (n.ctime, n.uuid)):
        label = call_label(child)
        records.append(
            {
                'step': '' if label == 'CALL' else label,  # a calcfunction's link label says nothing; its name does
                'process': f'{child.process_label}<{child.pk}>',
                'uuid': child.uuid,
                'state': child.process_state.value if child.process_state else 'unknown',
                'exit_status': child.exit_status,
                'wall_s': _wall_s(child),
                **_job_counts(child),
            }
        )
    return records


def stage_total(node: Any) -> dict[str, Any]:
    """The whole workflow's wall time (s) and calculation jobs, as :func:`stage_records` gives them per stage."""
    return {'wall_s': _wall_s(node), **_job_counts(node)}


def summary_markdown(
    node: Any, plots: list[str], stages: list[dict[str, Any]] | None = None, total: dict[str, Any] | None = None
) -> str:
    """A Markdown summary of a finished (or failed) mlmat workflow: stages, headline figures, plots.

    :param stages: :func:`stage_records` of ``node`` and ``total`` its :func:`stage_total`, where the caller has them.
    """
    lines = [f'# {node.process_label}<{node.pk}>', '', f'- UUID: `{node.uuid}`']
    state = node.process_state.value if node.process_state else 'unknown'
    if node.paused and not node.is_terminated:  # a paused process stays `waiting` (a killed one keeps the flag)
        state += f', paused ({node.process_status or "no reason recorded"}; `verdi process play {node.pk}` goes on)'
    reason = f': {process_reason(node)}' if node.is_failed or node.is_excepted or node.is_killed else ''
    status = f', exit status {node.exit_status}' if node.exit_status is not None else ''
    lines.append(f'- state: {state}{status}{reason}')
    if waits_for_nothing(node):
        lines.append(
            '- note: every process it called has ended and it waits for none of them; if it stays so while the '
            'daemon runs, it is stuck (see docs/howto/faults.md, "A workflow that waits for nothing")'
        )
    stages = stage_records(node) if stages is None else stages
    total = stage_total(node) if total is None else total
    lines += [
        '',
        '## Stages',
        '',
        f'Wall time in all {total["wall_s"]:.1f} s, {total["n_calcjobs"]} calculation jobs '
        f'({total["n_calcjobs_failed"]} failed).',
        '',
        '| step | process | state | exit status | wall time (s) | jobs | failed jobs |',
        '|---|---|---|---|---|---|---|',
    ]
    for stage in stages:
        lines.append(
            f'| {stage["step"]} | {stage["process"]} | {stage["state"]} | {_cell(stage["exit_status"])} '
            f'| {stage["wall_s"]:.1f} | {stage["n_calcjobs"]} | {stage["n_calcjobs_failed"]} |'
        )
    lines += _iteration_table(node)
    if 'summary' in node.outputs:
        lines += ['', '## Headline figures (eV, eV/atom, eV/Å)', '', '```json']
        lines += [json.dumps(node.outputs.summary.get_dict(), indent=1, default=str), '```']
    for key in ('metrics', 'verification'):
        if key in node.outputs:
            lines += ['', f'## {key}', '', '```json', json.dumps(node.outputs[key].get_dict(), indent=1), '```']
    images = [name for name in plots if name.endswith('.png')]
    tables = [name for name in plots if name.endswith('.csv')]
    if images:
        lines += ['', '## Plots', '']
        lines += [f'![{name}]({name})' for name in images]
    if tables:
        lines += ['', '## Tables', '']
        lines += [f'- [{name}]({name})' for name in tables]
    return '\n'.join(lines) + '\n'


def _iteration_table(node: Any) -> list[str]:
    """One row per active-learning iteration (of ``node`` or the loop it called): labels, test errors,
    disagreement and calibration; the full record is the loop's ``metrics`` output."""
    loops = [node] if node.process_label == 'ActiveLearningWorkChain' else []
    loops += [child for child in node.called if child.process_label == 'ActiveLearningWorkChain']
    lines: list[str] = []
    for loop in loops:
        if 'metrics' not in loop.outputs:
            continue
        metrics = loop.outputs.metrics.get_dict()
        lines += [
            '',
            f'## Active learning: every iteration ({loop.process_label}<{loop.pk}>, stopped by '
            f'{metrics.get("stop_reason")})',
            '',
            '| iteration | training set | labelled | failed | test force RMSE (eV/Å) | test energy RMSE (eV/atom) '
            '| explored above lower bound | calibration scale |',
            '|---|---|---|---|---|---|---|---|',
        ]
        for index, record in enumerate(metrics.get('iterations', []), start=1):
            counts, test = record.get('counts') or {}, record.get('test') or {}
            fraction = (record.get('disagreement') or {}).get('fraction_above_lower')
            scale = (record.get('calibration') or {}).get('scale')
            lines.append(
                f'| {index} | {counts.get("training")} | {counts.get("labelled")} | {counts.get("failed")} '
                f'| {_cell(test.get("forces_rmse"))} | {_cell(test.get("energy_rmse_per_atom"))} | {_cell(fraction)} '
                f'| {_cell(scale)} |'
            )
    return lines


def report_summary(node: Any) -> dict[str, Any]:
    """The headline figures of a workflow: its ``summary`` output (a pipeline, a screening), else what its
    ``metrics`` hold (active learning: the stop reason, iterations and final test errors; a training: the test
    errors)."""
    if 'summary' in node.outputs:
        return node.outputs.summary.get_dict()
    if 'metrics' not in node.outputs:
        return {}
    metrics = node.outputs.metrics.get_dict()
    if 'stop_reason' in metrics:
        keys = ('stop_reason', 'n_iterations', 'labels_added', 'labels_failed')
        return {
            'active_learning': {key: metrics.get(key) for key in keys},
            'potential_metrics': metrics.get('final') or {},
        }
    return {'potential_metrics': metrics}


def write_report(node: Any, out: Path) -> dict[str, Any]:
    """Write ``summary.md``, ``summary.json`` and every plot of ``node`` into ``out``; return what was written."""
    out.mkdir(parents=True, exist_ok=True)
    if _is_report_folder(out):  # an earlier report here: its plots would mix with this one's (other files stay)
        for stale in out.iterdir():
            if stale.is_file() and _REPORT_FILE.match(stale.name):
                stale.unlink()
    names = []
    for name, plot in _plots(node):
        (out / name).write_bytes(plot.get_content(mode='rb'))
        names.append(name)
    stages, total = stage_records(node), stage_total(node)  # once: each reads every process under the node
    (out / 'summary.md').write_text(summary_markdown(node, names, stages, total))
    record = {'process': node.uuid, 'summary': report_summary(node), 'stages': stages, 'total': total}
    (out / 'summary.json').write_text(json.dumps(record, indent=1, default=str))
    return {
        'report': str(out),
        'summary_md': str(out / 'summary.md'),
        'plots': [str(out / n) for n in names if n.endswith('.png')],
        'tables': [str(out / n) for n in names if n.endswith('.csv')],
    }


def headline(summary: dict[str, Any]) -> list[str]:
    """The few numbers a scientist looks at first."""
    lines = []
    reference = summary.get('reference', {})
    if reference:
        lines.append(
            f'reference set: {reference.get("n_configurations")} configurations, {reference.get("n_excluded")} excluded'
        )
    al = summary.get('active_learning', {})
    if al:
        lines.append(f'active learning: {al.get("n_iterations")} iterations, stopped by {al.get("stop_reason")}')
    metrics = summary.get('potential_metrics', {})
    if metrics:
        lines.append(
            f'potential (test split): force RMSE {_fmt(metrics.get("forces_rmse"))} eV/Å, energy RMSE '
            f'{_fmt(metrics.get("energy_rmse_per_atom"))} eV/atom'
        )
    screening = summary.get('screening', {})
    if screening:
        uncertain = screening.get('n_uncertain')
        lines.append(
            f'screening: {screening.get("n_screened")} candidates, {screening.get("n_stable")} stable'
            + (f', {uncertain} uncertain (on the hull for some members, not most)' if uncertain else '')
            + f', {screening.get("n_failed")} failed'
        )
        verification = screening.get('verification') or {}
        if verification:
            lines.append(describe_verification(verification))
    return lines


@click.command('run')
@click.argument('config_file', type=click.Path(dir_okay=False))
@click.option('--out', default=None, help='Report folder (default: mlmat-report-PK).')
@click.option('--wait', is_flag=True, help='Block until the workflow ends, showing progress.')
@click.option('--json', 'json_output', is_flag=True, help='Print one JSON object as the last line.')
@click.pass_context
def run_cmd(ctx: click.Context, config_file: str, out: str | None, wait: bool, json_output: bool) -> None:
    """Run the whole loop described by CONFIG_FILE (workflow ``mlmat.pipeline``)."""
    from aiida_mlmat.workflows.pipeline_config import ConfigError, load_config

    try:
        config = load_config(config_file)
    except ConfigError as exc:
        raise MlmatCliError(str(exc), EXIT_INVALID_INPUT) from exc
    if out:
        output_folder(out, '--out')  # before submitting: a report that cannot be written is refused now
    load_profile(ctx.obj.get('profile'))
    from aiida import orm
    from aiida.engine import submit

    from aiida_mlmat.workflows.pipeline import PipelineWorkChain

    codes = pipeline_codes(config)  # sets config['computer'] to the Code's Computer
    inputs = {'config': orm.Dict(config), **codes}
    ensure_daemon(workers=2, quiet=json_output)
    # labelled by the file's name: every step below is labelled `<name>/<step>` (`verdi process list -P ... label`)
    inputs['metadata'] = {'label': Path(config_file).stem[:100], 'description': f'mlmat run {config_file}'[:1000]}
    node = submit(PipelineWorkChain, **inputs)
    if not json_output:
        click.echo(f'submitted {node.process_label}<{node.pk}> ({node.uuid})')
    result: dict[str, Any] = {'process': node.pk, 'uuid': node.uuid}
    if wait:
        failure = None
        try:
            wait_for(node, quiet=json_output)
        except MlmatCliError as exc:
            failure = exc  # the report is written all the same: it records what ran and what failed
        if node.is_terminated:
            result.update(write_report(node, Path(out or f'mlmat-report-{node.pk}')))
            if 'summary' in node.outputs:
                result['summary'] = node.outputs.summary.get_dict()
                result['potential'] = node.outputs.potential.pk
                if not json_output:
                    for line in headline(result['summary']):
                        click.echo(line)
            total = stage_total(node)
            result['total'] = total
            if not json_output:
                click.echo(
                    f'wall time {total["wall_s"]:.0f} s, {total["n_calcjobs"]} calculation jobs '
                    f'({total["n_calcjobs_failed"]} failed); per stage in the report'
                )
            if not json_output:
                click.echo(f'report: {result["summary_md"]}')
        if failure is not None:
            failure.data = {**result, **failure.data}
            raise failure
        if json_output:
            echo_json(result)
        return
    if json_output:
        echo_json(result)


@click.command('report')
@click.argument('identifier')
@click.option('--out', default=None, help='Report folder (default: mlmat-report-PK).')
@click.option('--json', 'json_output', is_flag=True, help='Print one JSON object as the last line.')
@click.pass_context
def report_cmd(ctx: click.Context, identifier: str, out: str | None, json_output: bool) -> None:
    """Write the summary (Markdown) and plots of any mlmat workflow PK|UUID into a folder."""
    load_profile(ctx.obj.get('profile'))
    from aiida import orm

    if out:
        output_folder(out, '--out')
    node = load_node(identifier, orm.WorkflowNode)
    result = {'process': node.pk, **write_report(node, Path(out or f'mlmat-report-{node.pk}'))}
    if json_output:
        echo_json(result)
        return
    for line in headline(report_summary(node)):
        click.echo(line)
    click.echo(f'report: {result["summary_md"]}')
    for plot in result['plots']:
        click.echo(f'plot: {plot}')
    for table in result['tables']:
        click.echo(f'table: {table}')


def pipeline_codes(config: dict[str, Any]) -> dict[str, Any]:
    """The Codes of a pipeline (``code``, and ``reference_code`` or ``ase_code`` where the reference needs them)
    for a validated configuration, whose ``computer`` is set to the Code's Computer.

    ``code`` is the worker with torch (training, descriptors, exploration). GPAW labels and verifies with the GPAW
    worker Code of ``mlmat setup`` (:func:`~aiida_mlmat.cli.utils.reference_worker_code`), whichever the reference
    stage's labeller; a YAML ``code:`` naming that Code is taken as such.
    """
    from aiida_mlmat.calcjobs.base import without_torch

    options = ('code:', 'computer:')
    code = load_worker_code(config['computer'], config.get('code'), options=options)
    config['computer'] = code.computer.label
    codes: dict[str, Any] = {'code': code}
    reference = config['reference']
    if without_torch(code):  # `code:` named the GPAW worker: it labels, the package's worker does the rest
        codes['code'], codes['reference_code'] = load_worker_code(config['computer'], options=options), code
    else:
        labeller = reference_worker_code(reference['calculator']['name'], code, options=options)
        if labeller.pk != code.pk:
            codes['reference_code'] = labeller
    if reference.get('labeller') == 'aiida-ase':  # one aiida-ase job per configuration: the Code `mlmat setup` made
        from aiida_mlmat.cli.commands import _ase_code_label

        codes['ase_code'] = load_code(_ase_code_label(reference['calculator']['name'], config['computer']))
    return codes
