"""Implementations of the ``mlmat`` commands (imported lazily by :mod:`aiida_mlmat.cli.main`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from aiida_mlmat.cli.utils import (
    EXIT_INVALID_INPUT,
    EXIT_NOT_FOUND,
    MlmatCliError,
    calculator_option_error,
    check_elements_option,
    echo_json,
    ensure_daemon,
    load_code,
    load_node,
    load_profile,
    load_worker_code,
    output_file,
    output_folder,
    parse_json_option,
    process_reason,
    read_structures,
    reference_worker_code,
    wait_for,
)


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
    if kwargs.get('select_n'):
        if not isinstance(overrides.get('select') or {}, dict):
            raise MlmatCliError(f'--overrides: `select` must be a mapping, got {overrides["select"]!r}')
        overrides['select'] = {**(overrides.get('select') or {}), 'n': kwargs['select_n']}
    if not elements and not files:
        raise MlmatCliError('give `--elements` (e.g. --elements Cu Au) or `--structures FILE ...`')
    check_elements_option(elements)
    from aiida_mlmat.calcjobs.label import calculator_error

    calculator_option_error(calculator_error(calculator, elements), '--calculator', '--calculator-params')
    frames = read_structures(files) if files else []
    if frames:  # the seeds' elements too, before a profile or a Code is needed
        species = {symbol for frame in frames for symbol in frame.get_chemical_symbols()}
        if elements and not species <= set(elements):
            raise MlmatCliError(
                f'--structures: elements {sorted(species - set(elements))} are not in the chemical system '
                f'{elements} (--elements)'
            )
        error = calculator_error(calculator, species)  # the name and parameters passed above: the elements
        calculator_option_error(error and f'{error} (in --structures)', '--calculator', '--calculator-params')

    load_profile(profile)
    from aiida.engine import submit

    from aiida_mlmat.data.configurations import ConfigurationSetData
    from aiida_mlmat.workflows.reference import ReferenceWorkChain

    if kwargs['code']:
        code = load_worker_code(kwargs['computer'], kwargs['code'])
    else:  # GPAW on the GPAW worker Code of the Computer, as `mlmat run` and `mlmat screen` pick it
        code = reference_worker_code(calculator['name'], load_worker_code(kwargs['computer']))
    computer = code.computer.label
    descriptors_code = None
    select = overrides.get('select') or {}
    if kwargs.get('select_n') or (isinstance(select, dict) and select.get('n')):
        from aiida_mlmat.calcjobs.base import without_torch

        if without_torch(code):  # the selection's descriptors need torch: the package's own worker on that Computer
            descriptors_code = load_worker_code(computer)
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
            descriptors_code=descriptors_code,
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
        wait_for(node, quiet=json_output)  # progress goes to stderr; with --json there is none
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
    output_file(file, 'FILE')
    node.write_extxyz(file)
    if json_output:
        echo_json({'configurations': node.pk, 'file': str(Path(file).resolve()), 'n_configurations': node.count})
    else:
        click.echo(f'wrote {node.count} configurations to {file}')


def dataset_used_by(profile: str | None, identifier: str, index: int, json_output: bool) -> None:
    """``mlmat dataset used-by``."""
    load_profile(profile)
    from aiida_mlmat.data.configurations import ConfigurationSetData
    from aiida_mlmat.query import configuration_key, potentials_trained_on

    node = load_node(identifier, ConfigurationSetData)
    if not 0 <= index < node.count:
        raise MlmatCliError(f'INDEX: configuration {index} is outside the set of {node.count} (0 to {node.count - 1})')
    atoms = node.get_frame(index)
    hits = potentials_trained_on(atoms)
    if json_output:
        echo_json({
            'configurations': node.uuid, 'index': index, 'configuration_key': configuration_key(atoms),
            'potentials': [hit.as_dict() for hit in hits],
        })  # fmt: skip
        return
    click.echo(f'configuration {index} of {node.uuid} ({atoms.get_chemical_formula()}): {len(hits)} potential(s)')
    for hit in hits:
        members = f' (member(s) {", ".join(map(str, hit.members))})' if hit.members else ''
        kind = f'ensemble of {hit.potential.n_members}' if hit.potential.n_members > 1 else 'single model'
        label = f'  "{hit.potential.label}"' if hit.potential.label else ''
        click.echo(f'  {hit.potential.pk:>6}  {hit.potential.uuid}  {kind:<14}  {hit.role}{members}{label}')


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
        reason = ' '.join(str(record['reason']).split())  # a calculator's message may span lines
        click.echo(f'{"":>18}  #{record["index"]} {record.get("formula", "")}: {reason}')
    click.echo(f'{"sha256":>18}: {summary["sha256"]}')


def _check_map_colour(colour: str | None, species: list[str], frames: list[Any]) -> None:
    """Refuse a bad ``--colour`` before anything is computed or stored."""
    from aiida_mlmat.ml.selection import check_colour

    if colour is not None:
        energies = any(frame.calc is not None and 'energy' in frame.calc.results for frame in frames)
        try:
            check_colour(colour, species, energies)
        except ValueError as exc:
            raise MlmatCliError(f'--colour: {exc}') from exc


def descriptors(profile: str | None, **kwargs: Any) -> None:
    """``mlmat descriptors``: from a file (direct computation) or a stored set (a recorded CalcJob run here)."""
    import time

    import numpy as np

    source = str(kwargs['source'])
    json_output = bool(kwargs['json_output'])
    descriptor = {'kind': kwargs['kind'], 'rcut': kwargs['rcut']}
    result: dict[str, Any] = {'descriptors': None, 'process': None}
    # the output paths are checked before anything is computed or stored
    out_path = output_file(kwargs['out'], '--out', '.npz') if kwargs['out'] else None
    images = ('.pdf', '.svg', '.jpg', '.jpeg', '.PNG', '.PDF', '.SVG', '.JPG', '.JPEG')
    map_path = output_file(kwargs['map_png'], '--map', '.png', images) if kwargs['map_png'] else None
    if kwargs['colour'] is not None and map_path is None:
        raise MlmatCliError('--colour colours the data-set map: give --map FILE.png too')
    if Path(source).is_file():
        import torch

        if kwargs['device'] == 'cuda' and not torch.cuda.is_available():
            raise MlmatCliError('--device cuda: no CUDA device is visible here (use --device cpu or auto)')

        from aiida_mlmat.calcjobs.descriptors import descriptor_definition
        from aiida_mlmat.data.configurations import CorruptFileError, parse_extxyz_bytes
        from aiida_mlmat.ml.descriptors import DescriptorSpec, UnknownSpeciesError, compute
        from aiida_mlmat.ml.neighbours import CutoffError

        try:
            frames = parse_extxyz_bytes(Path(source).read_bytes(), name=source)
        except CorruptFileError as exc:
            raise MlmatCliError(str(exc)) from exc
        species = sorted({symbol for frame in frames for symbol in frame.get_chemical_symbols()})
        _check_map_colour(kwargs['colour'] if map_path is not None else None, species, frames)
        try:
            spec = DescriptorSpec.from_dict(descriptor_definition(descriptor, species))
            device = (
                kwargs['device'] if kwargs['device'] != 'auto' else ('cuda' if torch.cuda.is_available() else 'cpu')
            )
            tick = time.perf_counter()
            dtype = torch.float32 if kwargs['dtype'] == 'float32' else torch.float64
            arrays = compute(frames, spec, dtype=dtype, device=device)
            seconds = time.perf_counter() - tick
        except (ValueError, UnknownSpeciesError, CutoffError) as exc:
            raise MlmatCliError(str(exc)) from exc
        means = np.stack([array.mean(axis=0) for array in arrays])
        n_atoms = sum(len(frame) for frame in frames)
        result.update(environments_per_second=n_atoms / seconds if seconds > 0 else None)
    else:
        load_profile(profile)
        from aiida import orm
        from aiida.engine import run_get_node

        from aiida_mlmat.calcjobs.descriptors import DescriptorsCalculation
        from aiida_mlmat.data.configurations import ConfigurationSetData

        try:
            node = load_node(source, ConfigurationSetData)
        except MlmatCliError as exc:
            if exc.exit_code != EXIT_NOT_FOUND:
                raise
            what = 'a folder, not a file' if Path(source).is_dir() else 'neither an existing file'
            raise MlmatCliError(
                f'`{source}` is {what} nor the PK or UUID of a stored configuration set', EXIT_NOT_FOUND
            ) from exc
        frames = node.get_atoms()
        _check_map_colour(kwargs['colour'] if map_path is not None else None, node.species, frames)
        from aiida_mlmat.ml.neighbours import CutoffError, check_cutoff

        try:  # refused here, before the job and its nodes are stored, as the worker would refuse it
            for index, frame in enumerate(frames):
                check_cutoff(frame, kwargs['rcut'], index)
        except CutoffError as exc:
            raise MlmatCliError(f'--rcut: {exc}') from exc
        builder = DescriptorsCalculation.get_builder()
        builder.code = load_code('mlmat-worker@localhost')
        builder.configurations = node
        builder.descriptor = orm.Dict(descriptor)
        builder.settings = orm.Dict({'dtype': kwargs['dtype'], 'device': kwargs['device']})
        error = DescriptorsCalculation.spec().inputs.validate(dict(builder._inputs(prune=True)))
        if error is not None:
            raise MlmatCliError(f'invalid input: {error.message}')
        outputs, calc = run_get_node(builder)
        if not calc.is_finished_ok:
            raise MlmatCliError(
                f'{calc.process_label}<{calc.pk}> failed: {process_reason(calc)}', 3, {'process': calc.pk}
            )
        data = outputs['descriptors']
        arrays, means = data.get_all(), data.get_means()
        spec_dict = data.definition
        n_atoms = data.base.attributes.get('n_atoms_total')
        result.update(
            descriptors=data.pk,
            process=calc.pk,
            environments_per_second=outputs['results'].get('timings', {}).get('environments_per_second'),
        )
        from aiida_mlmat.ml.descriptors import DescriptorSpec

        spec = DescriptorSpec.from_dict(spec_dict)
    result.update(n_structures=len(arrays), n_atoms=int(n_atoms), n_features=spec.n_features, kind=spec.kind)
    if out_path is not None:
        np.savez(out_path, means=means, **{f'structure_{i}': array for i, array in enumerate(arrays)})
        result['out'] = str(out_path.resolve())
    if map_path is not None:
        from aiida_mlmat.ml.selection import map_colours, pca_2d, plot_map

        try:
            values, label = map_colours(frames, kwargs['colour'] or f'composition:{spec.species[0]}')
        except ValueError as exc:
            raise MlmatCliError(f'--colour: {exc}') from exc
        coords, _ = pca_2d(means)
        result['map'] = str(Path(plot_map(coords, values, label, str(map_path))).resolve())
    if json_output:
        echo_json(result)
        return
    click.echo(
        f'{result["n_structures"]} structures, {result["n_atoms"]} environments, {result["n_features"]} '
        f'{spec.kind} features each'
        + (f', {result["environments_per_second"]:.0f} environments/s' if result.get('environments_per_second') else '')
    )
    for key in ('out', 'map'):
        if key in result:
            click.echo(f'{key}: {result[key]}')


def train(profile: str | None, **kwargs: Any) -> None:
    """``mlmat train``: submit ``mlmat.training`` on a stored labelled set."""
    json_output = bool(kwargs['json_output'])
    overrides = parse_json_option(kwargs['overrides'], '--overrides')
    load_profile(profile)
    from aiida.engine import submit

    from aiida_mlmat.data.configurations import ConfigurationSetData
    from aiida_mlmat.workflows.training import TrainingWorkChain

    dataset = load_node(kwargs['dataset_identifier'], ConfigurationSetData)
    if kwargs['ensemble']:
        overrides['ensemble_size'] = kwargs['ensemble']
    training = overrides.setdefault('training', {})
    if not isinstance(training, dict):
        raise MlmatCliError(f'--overrides: `training` must be a mapping of training parameters, got {training!r}')
    if 'device' in training and kwargs['device'] != 'auto' and training['device'] != kwargs['device']:
        raise MlmatCliError(
            f'--device {kwargs["device"]} and --overrides training.device {training["device"]!r} differ'
        )
    training.setdefault('device', kwargs['device'])
    options: dict[str, Any] = {}
    if kwargs['max_minutes']:
        options['max_wallclock_seconds'] = int(kwargs['max_minutes'] * 60)
    code = load_worker_code(kwargs['computer'], kwargs['code'])
    wants_cuda = training['device'] == 'cuda' or bool(kwargs['gpus'])
    here = code.computer.transport_type == 'core.local' and code.computer.scheduler_type == 'core.direct'
    if wants_cuda and here:  # the job runs on this machine: ask torch now, not the job
        import torch

        if not torch.cuda.is_available():
            raise MlmatCliError(
                f'--device cuda / --gpus: no CUDA device is visible on `{code.computer.label}` (this machine); '
                'train on a GPU node (--computer) or with --device cpu'
            )
    try:
        builder = TrainingWorkChain.get_builder_from_protocol(
            code,
            dataset,
            protocol=kwargs['protocol'],
            overrides=overrides,
            options=options or None,
            gpus=kwargs['gpus'],
        )
    except ValueError as exc:
        raise MlmatCliError(str(exc)) from exc
    error = TrainingWorkChain.spec().inputs.validate(dict(builder._inputs(prune=True)))
    if error is not None:
        raise MlmatCliError(f'invalid input: {error.message}')
    ensure_daemon(quiet=json_output)
    node = submit(builder)
    if not json_output:
        click.echo(f'submitted {node.process_label}<{node.pk}> ({node.uuid})')
    if kwargs['wait']:
        wait_for(node, quiet=json_output)
    result: dict[str, Any] = {'process': node.pk, 'potential': None, 'metrics': None}
    if node.is_finished_ok:
        result.update(potential=node.outputs.potential.pk, metrics=node.outputs.metrics.get_dict())
        if not json_output:
            metrics = result['metrics']
            forces = metrics.get('forces_rmse', float('nan'))
            click.echo(
                f'potential pk {result["potential"]}: {metrics["n_members"]} members; test energy RMSE '
                f'{metrics["energy_rmse_per_atom"]:.4f} eV/atom, force RMSE {forces:.4f} eV/Å'
            )
    if json_output:
        echo_json(result)


def potential_list(profile: str | None, limit: int, members: bool, json_output: bool) -> None:
    """``mlmat potential list``: the newest potentials, with their test errors (ensemble members left out unless
    ``members``)."""
    load_profile(profile)
    from aiida import orm

    from aiida_mlmat.data.potential import PotentialData
    from aiida_mlmat.query import is_member

    if limit < 1:
        raise MlmatCliError(f'--limit: must be at least 1, got {limit}', EXIT_INVALID_INPUT)
    query = orm.QueryBuilder().append(PotentialData, project='*').order_by({PotentialData: {'id': 'desc'}})
    rows: list[dict[str, Any]] = []
    for (node,) in query.iterall():
        member = is_member(node)
        if member and not members:
            continue
        metrics = node.metrics
        rows.append({
            'pk': node.pk, 'uuid': node.uuid, 'label': node.label, 'n_members': node.n_members,
            'species': node.species, 'member': member, 'ctime': node.ctime.isoformat(timespec='seconds'),
            'test_forces_rmse': metrics.get('forces_rmse'),
            'test_energy_rmse_per_atom': metrics.get('energy_rmse_per_atom'),
        })  # fmt: skip
        if len(rows) == limit:
            break
    if json_output:
        echo_json({'potentials': rows, 'units': {'test_forces_rmse': 'eV/Å', 'test_energy_rmse_per_atom': 'eV/atom'}})
        return
    header = f'{"pk":>6} {"members":>7} {"species":<12} {"F RMSE eV/Å":>12} {"E RMSE eV/atom":>15}'
    click.echo(f'{header}  {"created":<19}  label')
    for row in rows:
        forces, energy = row['test_forces_rmse'], row['test_energy_rmse_per_atom']
        kind = f'{row["n_members"]}' + (' (m)' if row['member'] else '')
        click.echo(
            f'{row["pk"]:>6} {kind:>7} {"-".join(row["species"]):<12} '
            f'{"-" if forces is None else f"{forces:.4f}":>12} {"-" if energy is None else f"{energy:.4f}":>15}  '
            f'{row["ctime"][:19]:<19}  {row["label"]}'
        )
    if not rows:
        click.echo('no potentials in this profile' + ('' if members else ' (ensemble members left out: --members)'))
    elif not members:
        click.echo('(ensemble members left out: --members lists them, marked (m))')


def potential_show(profile: str | None, identifier: str, json_output: bool) -> None:
    """``mlmat potential show``: what a potential is, how good, and what it was trained on (read from the graph)."""
    load_profile(profile)
    import json

    from aiida_mlmat.common.constants import metric_unit
    from aiida_mlmat.data.potential import PotentialData
    from aiida_mlmat.query import reference_calculators, training_dataset

    node = load_node(identifier, PotentialData)
    attributes = node.base.attributes
    dataset = training_dataset(node)
    calculators = reference_calculators(node)
    creator = node.creator
    result: dict[str, Any] = {
        'potential': node.uuid,
        'pk': node.pk,
        'label': node.label,
        'architecture': attributes.get('architecture'),
        'species': attributes.get('species'),
        'cutoff_angstrom': attributes.get('cutoff'),
        'n_members': node.n_members,
        'metrics': attributes.get('metrics', {}),
        'training_set': None
        if dataset is None
        else {'uuid': dataset.uuid, 'pk': dataset.pk, 'n_configurations': dataset.count},
        'reference_calculators': calculators,
        'made_by': None
        if creator is None
        else {
            'process_label': creator.process_label,
            'uuid': creator.uuid,
            'caller': None if creator.caller is None else {'uuid': creator.caller.uuid, 'label': creator.caller.label},
        },
    }
    if json_output:
        echo_json(result)
        return
    click.echo(f'{"potential":>24}: pk {node.pk} {node.uuid}' + (f' "{node.label}"' if node.label else ''))
    click.echo(f'{"architecture":>24}: {result["architecture"]}, cutoff {result["cutoff_angstrom"]} Å')
    click.echo(f'{"species":>24}: {", ".join(result["species"] or [])}')
    click.echo(f'{"members":>24}: {result["n_members"]}')
    units = result['metrics'].get('units')
    for key, value in result['metrics'].items():
        if key == 'units':
            continue
        text = f'{value:.5g} {metric_unit(key, units)}'.rstrip() if isinstance(value, float) else str(value)
        click.echo(f'{key:>24}: {text}')
    if dataset is None:
        click.echo(f'{"training set":>24}: not in this profile')
    else:
        click.echo(f'{"training set":>24}: pk {dataset.pk} {dataset.uuid}, {dataset.count} configurations')
    for spec in calculators:
        parameters = json.dumps(spec['parameters'], sort_keys=True) if spec['parameters'] else ''
        click.echo(f'{"labelled by":>24}: {spec["name"]} {parameters}'.rstrip())
    if not calculators:
        click.echo(f'{"labelled by":>24}: not recorded (no labelling job in this profile; an imported set?)')
    if creator is not None:
        made = f'{creator.process_label}<{creator.pk}>'
        caller = creator.caller
        if caller is not None:  # the workflow step, more telling than the calcfunction's own name
            made += f' in {caller.process_label}<{caller.pk}>' + (f' "{caller.label}"' if caller.label else '')
        click.echo(f'{"made by":>24}: {made}')


def potential_evaluate(profile: str | None, identifier: str, file: str, json_output: bool) -> None:
    """``mlmat potential evaluate``: errors on a labelled extxyz file (computed here)."""
    load_profile(profile)
    from aiida_mlmat.common.constants import metric_unit
    from aiida_mlmat.data.configurations import CorruptFileError, parse_extxyz_bytes
    from aiida_mlmat.data.potential import PotentialData, PotentialIntegrityError
    from aiida_mlmat.ml.calculator import reference_errors

    node = load_node(identifier, PotentialData)
    path = Path(file)
    if not path.is_file():
        raise MlmatCliError(f'file `{file}` does not exist')
    try:
        frames = parse_extxyz_bytes(path.read_bytes(), name=file)
    except CorruptFileError as exc:
        raise MlmatCliError(str(exc)) from exc
    unknown = sorted({s for f in frames for s in f.get_chemical_symbols()} - set(node.species))
    if unknown:
        raise MlmatCliError(f'{file} holds {unknown}, which potential {node.pk} was not trained on ({node.species})')
    if any(frame.calc is None or 'energy' not in frame.calc.results for frame in frames):
        raise MlmatCliError(f'{file}: every configuration needs a reference energy to evaluate against')
    try:
        calculator = node.get_calculator()
    except PotentialIntegrityError as exc:
        raise MlmatCliError(str(exc)) from exc
    metrics, _ = reference_errors(calculator, frames)
    # the contract's keys are always there: null where the file has no forces to compare with
    result: dict[str, Any] = {'n_structures': len(frames), 'forces_mae': None, 'forces_rmse': None, **metrics}
    if json_output:
        echo_json({**result, 'units': {key: metric_unit(key) for key in result if metric_unit(key)}})
        return
    for key, value in result.items():
        if value is None:
            text = 'n/a (the file has no forces)'
        else:
            text = f'{value:.5g} {metric_unit(key)}'.rstrip() if isinstance(value, float) else str(value)
        click.echo(f'{key:>22}: {text}')


def potential_export(profile: str | None, identifier: str, directory: str, json_output: bool) -> None:
    """``mlmat potential export``."""
    load_profile(profile)
    from aiida_mlmat.data.potential import PotentialData, PotentialIntegrityError

    node = load_node(identifier, PotentialData)
    output_folder(directory, 'DIRECTORY', empty=True)
    try:
        card = node.export(directory)
    except PotentialIntegrityError as exc:
        raise MlmatCliError(str(exc)) from exc
    result = {'potential': node.pk, 'directory': str(Path(directory).resolve()), 'files': sorted(card['files'])}
    if json_output:
        echo_json(result)
    else:
        click.echo(f'wrote {len(card["files"])} member file(s), model-card.json and README.md to {directory}')
