"""``mlmat screen``: convex-hull stability screening (workflow ``mlmat.hull``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from aiida_mlmat.cli.utils import (
    EXIT_INVALID_INPUT,
    FiniteFloatRange,
    GreedyOption,
    MlmatCliError,
    calculator_option_error,
    check_elements_option,
    echo_json,
    ensure_daemon,
    load_node,
    load_profile,
    load_worker_code,
    output_folder,
    parse_json_option,
    reference_worker_code,
    wait_for,
)

#: Keys of each candidate in the JSON output (INTERFACES.md), energies in eV/atom.
CANDIDATE_KEYS = ('name', 'formula', 'e_form_per_atom', 'e_above_hull', 'e_above_hull_std', 'p_stable', 'stable')


def candidate_rows(node: Any) -> list[dict[str, Any]]:
    """The per-candidate rows of a finished ``mlmat.hull`` process, sorted by e_above_hull (failed ones last)."""
    rows = []
    for candidate in node.outputs.candidates.values():
        attributes = candidate.get_dict()
        row = {key: attributes.get(key) for key in CANDIDATE_KEYS}
        row['status'] = attributes.get('status')
        if attributes.get('status') != 'ok':
            row['reason'] = attributes.get('reason')
        if 'reference_e_above_hull' in attributes:
            row['reference_e_above_hull'] = attributes['reference_e_above_hull']
        rows.append(row)
    return sorted(rows, key=lambda r: (r['status'] != 'ok', r['e_above_hull'] or 0.0, -(r['p_stable'] or 0), r['name']))


def build_screen_inputs(**kwargs: Any) -> dict[str, Any]:
    """Turn the command's options into validated ``mlmat.hull`` inputs, with clear errors.

    Every check, the workflow's own input validation included, runs before anything is stored: the candidate files
    are validated as an unstored set built from the structures read here, and only then stored (with the
    ``candidates_from_files`` calcfunction that records where the candidates came from).

    :raises MlmatCliError: (exit 2) for invalid input, with nothing stored.
    """
    from aiida import orm

    from aiida_mlmat.data.configurations import CorruptFileError
    from aiida_mlmat.data.potential import PotentialData
    from aiida_mlmat.hull.candidates import CandidateError, read_candidates
    from aiida_mlmat.workflows.hull import HullWorkChain
    from aiida_mlmat.workflows.hull_functions import candidate_set, candidates_from_files

    elements = list(kwargs['elements'] or [])
    if not elements:
        raise MlmatCliError('--elements: name the chemical system, e.g. `--elements Cu Au`')
    if bool(kwargs['potential']) == bool(kwargs['calculator']):
        raise MlmatCliError('give exactly one energy model: --potential PK or --calculator NAME')
    files = list(kwargs['candidate_files'] or [])
    if bool(files) == bool(kwargs['generate']):
        raise MlmatCliError('give one of --candidates FILE ... or --generate N (decorations of up to N atoms)')
    if kwargs['calculator'] == 'mlmat':
        raise MlmatCliError('--calculator: for a trained potential give --potential PK')
    if kwargs['verify_calculator'] and not kwargs['verify_top']:
        raise MlmatCliError('--verify-calculator needs --verify-top K (how many of the top candidates to check)')
    if kwargs['verify_top'] and not kwargs['verify_calculator']:
        raise MlmatCliError('--verify-top needs --verify-calculator NAME (the reference method)')
    ignored = [name for name, given in (('--verify-params', kwargs['verify_params'] is not None),
                                        ('--verify-relax', bool(kwargs['verify_relax']))) if given]  # fmt: skip
    if ignored and not kwargs['verify_top']:
        raise MlmatCliError(f'{" and ".join(ignored)} only apply to a verification: give --verify-top K too')
    if kwargs['calculator_params'] is not None and not kwargs['calculator']:
        raise MlmatCliError('--calculator-params are the parameters of --calculator NAME; a --potential takes none')
    check_elements_option(elements)
    if len(set(elements)) != len(elements):
        raise MlmatCliError(f'--elements: an element is named twice in {elements}')
    from aiida_mlmat.calcjobs.label import calculator_error

    potential = load_node(kwargs['potential'], PotentialData) if kwargs['potential'] else None
    calculator_params = parse_json_option(kwargs['calculator_params'], '--calculator-params')
    verify_params = parse_json_option(kwargs['verify_params'], '--verify-params')
    if kwargs['verify_calculator']:  # a reference method that treats the elements
        verify = {'name': kwargs['verify_calculator'], 'parameters': verify_params}
        calculator_option_error(calculator_error(verify, elements), '--verify-calculator', '--verify-params')
    if kwargs['calculator']:  # refuse a bad energy model before anything is stored
        model = {'name': kwargs['calculator'], 'parameters': calculator_params}
        error = calculator_error(model, elements, reference=False)
        calculator_option_error(error, '--calculator', '--calculator-params')
    inputs: dict[str, Any] = {'elements': orm.List(elements)}
    if files:
        missing = [path for path in files if not Path(path).is_file()]
        if missing:
            raise MlmatCliError(f'--candidates: no such file: {", ".join(missing)}')
        try:  # read them here first: a bad file is refused before anything is stored
            candidates = read_candidates(files)
        except CandidateError as exc:
            raise MlmatCliError(f'--candidates: {exc}') from exc
        system = set(elements)
        if not any({str(el) for el in structure.composition.elements} <= system for _, structure in candidates):
            raise MlmatCliError(f'--candidates: no candidate lies in the chemical system {"-".join(elements)}')
        inputs['candidates'] = candidate_set(candidates)  # unstored: validated below, stored only after
    else:
        inputs['generate'] = orm.Dict({'max_atoms': kwargs['generate']})
    if potential is not None:
        inputs['potential'] = potential
    else:
        inputs['calculator'] = orm.Dict({'name': kwargs['calculator'], 'parameters': calculator_params})
    if kwargs['references']:
        try:
            inputs['references'] = _reference_set(kwargs['references'])
        except CorruptFileError as exc:
            raise MlmatCliError(f'--references: {exc}') from exc
    relax = {}
    if kwargs['fmax'] is not None:
        relax['fmax'] = kwargs['fmax']
    if kwargs['max_steps'] is not None:
        relax['max_steps'] = kwargs['max_steps']
    if relax:
        inputs['relax'] = orm.Dict(relax)
    if kwargs['chunk_size']:
        inputs['chunk_size'] = orm.Int(kwargs['chunk_size'])
    if kwargs['verify_top']:
        inputs['verify'] = {
            'top': orm.Int(kwargs['verify_top']),
            'calculator': orm.Dict({'name': kwargs['verify_calculator'], 'parameters': verify_params}),
            'relax': orm.Bool(kwargs['verify_relax']),
        }
    inputs['code'] = load_worker_code(kwargs.get('computer'), kwargs.get('code'))
    worker = inputs['code']
    if potential is None and not kwargs.get('code'):  # relaxations with the calculator: GPAW on its own Python
        inputs['code'] = reference_worker_code(kwargs['calculator'], worker)
    if kwargs['verify_top']:
        verify_code = reference_worker_code(kwargs['verify_calculator'], worker)
        if verify_code.pk != inputs['code'].pk:
            inputs['verify']['code'] = verify_code
    error = HullWorkChain.spec().inputs.validate(inputs)
    if error is not None:
        raise MlmatCliError(f'invalid input: {error.message}', EXIT_INVALID_INPUT)
    if files:  # valid: now store the files and the set read from them, with their provenance
        nodes = {f'file_{i}': orm.SinglefileData(str(Path(path).resolve())) for i, path in enumerate(files)}
        inputs['candidates'] = candidates_from_files(**nodes)
    return inputs


def _reference_set(paths: list[str]) -> Any:
    from aiida_mlmat.data.configurations import ConfigurationSetData, parse_extxyz_bytes

    frames = []
    for path in paths:
        if not Path(path).is_file():
            raise MlmatCliError(f'--references: no such file: {path}')
        frames.extend(parse_extxyz_bytes(Path(path).read_bytes(), name=path))
    for frame in frames:
        if frame.calc is None or 'energy' not in frame.calc.results:
            raise MlmatCliError(
                f'--references: every entry needs an energy (eV); {frame.get_chemical_formula()} has none'
            )
    return ConfigurationSetData(frames)


def screen(profile: str | None, **kwargs: Any) -> None:
    """Submit ``mlmat.hull``; with ``--wait`` print the verdicts, write the table and plot."""
    json_output = bool(kwargs['json_output'])
    load_profile(profile)
    from aiida.engine import submit

    from aiida_mlmat.workflows.hull import HullWorkChain

    if kwargs['out']:
        output_folder(str(kwargs['out']), '--out')  # before submitting: the table would be lost after the run
    inputs = build_screen_inputs(**kwargs)  # validated, nothing stored when it is refused
    ensure_daemon(quiet=json_output)
    node = submit(HullWorkChain, **inputs)
    if not json_output:
        click.echo(f'submitted {node.process_label}<{node.pk}> ({node.uuid})')
    result: dict[str, Any] = {'process': node.pk, 'candidates': None}  # null: not screened yet (no --wait)
    if kwargs['wait']:
        failure = None
        try:
            wait_for(node, quiet=json_output)
        except MlmatCliError as exc:
            failure = exc  # candidates screened before the failure are still shown
        if 'candidates' in node.outputs:
            result.update(_finished(node, kwargs, json_output))
        if failure is not None:
            failure.data = {**result, **failure.data}
            raise failure
        if json_output:
            echo_json(result)
        return
    if json_output:
        echo_json(result)


def _ev(value: float) -> str:
    """An energy (eV/atom) in 9 columns, 4 decimals; a non-zero value that would print as 0.0000 in exponent form,
    so a candidate just above the hull (and so not stable) is not shown as on it.
    """
    return f'{value:9.1e}' if value and abs(value) < 5e-5 else f'{value:9.4f}'


def _finished(node: Any, kwargs: dict[str, Any], json_output: bool) -> dict[str, Any]:
    rows = candidate_rows(node)
    out = Path(kwargs['out'] or f'mlmat-screen-{node.pk}')
    out.mkdir(parents=True, exist_ok=True)
    (out / 'screening.csv').write_bytes(node.outputs.table.get_content(mode='rb'))
    (out / 'hull.png').write_bytes(node.outputs.plot.get_content(mode='rb'))
    result: dict[str, Any] = {
        'candidates': rows,
        'summary': node.outputs.summary.get_dict(),
        'table': str(out / 'screening.csv'),
        'plot': str(out / 'hull.png'),
    }
    if 'verification' in node.outputs:
        result['verification'] = node.outputs.verification.get_dict()['metrics']
    if not json_output:
        click.echo('E_form (formation energy), E_hull (energy above the hull) and std (its spread) in eV/atom')
        click.echo(f'{"name":<24} {"formula":<10} {"E_form":>9} {"E_hull":>9} {"std":>8} {"P(stable)":>9}')
        for row in rows:
            if row['status'] != 'ok':
                click.echo(f'{row["name"]:<24} {row["formula"] or "":<10} failed: {row.get("reason")}')
                continue
            click.echo(
                f'{row["name"]:<24} {row["formula"]:<10} {row["e_form_per_atom"]:9.4f} {_ev(row["e_above_hull"])} '
                f'{row["e_above_hull_std"]:8.4f} {row["p_stable"]:9.2f}{_stability_tag(row)}'
            )
        if 'verification' in result:
            from aiida_mlmat.hull.metrics import describe_verification

            click.echo(describe_verification(result['verification'], daf=True))
        click.echo(f'table: {result["table"]}\nplot: {result["plot"]}')
    return result


def _stability_tag(row: dict[str, Any]) -> str:
    from aiida_mlmat.hull.plot import stability_class

    kind = stability_class(row)
    return '' if kind == 'above hull' else f'  {kind}'


@click.command('screen')
@click.option('--potential', default=None, help='Energy model: a trained potential (PK or UUID).')
@click.option('--calculator', default=None, help='Energy model: a registry calculator (emt, gpaw, ...).')
@click.option('--calculator-params', default=None, help='Keyword arguments of the calculator as a JSON object.')
@click.option('--candidates', 'candidate_files', cls=GreedyOption, help='Candidate files (CIF, POSCAR, extxyz).')
@click.option('--generate', type=click.IntRange(min=2, max=8), default=None, help='Generate decorations of fcc, '
              'bcc and hcp cells of up to N atoms instead of reading files.')  # fmt: skip
@click.option('--elements', cls=GreedyOption, help='The chemical system, e.g. `--elements Cu Au`.')
@click.option('--references', cls=GreedyOption, help='extxyz files of reference entries with energies (eV).')
@click.option('--verify-top', type=click.IntRange(min=0), default=0, help='Check the top K with the reference.')
@click.option('--verify-calculator', default=None, help='Reference calculator for the verification.')
@click.option('--verify-params', default=None, help='Keyword arguments of the reference calculator (JSON).')
@click.option('--verify-relax', is_flag=True, help='Relax with the reference (default: single point).')
@click.option('--fmax', type=FiniteFloatRange(min=0, min_open=True), default=None, help='Relaxation fmax, eV/Å.')
@click.option('--max-steps', type=click.IntRange(min=1), default=None, help='Relaxation step limit.')
@click.option('--chunk-size', type=click.IntRange(min=1), default=None, help='Structures per relaxation job.')
@click.option(
    '--computer', default=None, help='Computer whose worker Code runs the jobs (default: localhost, or that of --code).'
)
@click.option('--code', default=None, help='The worker Code that runs the jobs (default: mlmat-worker@COMPUTER).')
@click.option('--out', default=None, help='Folder for the table and plot (default: mlmat-screen-PK).')
@click.option('--wait', is_flag=True, help='Block until the workflow ends, showing progress.')
@click.option('--json', 'json_output', is_flag=True, help='Print one JSON object as the last line.')
@click.pass_context
def screen_cmd(ctx: click.Context, **kwargs: object) -> None:
    """Screen candidates for thermodynamic stability on the convex hull (workflow ``mlmat.hull``)."""
    screen(ctx.obj.get('profile'), **kwargs)
