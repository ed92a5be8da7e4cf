"""Calcfunctions of aiida-mlmat: small, pure steps recorded in provenance."""

from __future__ import annotations

from typing import Any

import numpy as np
from aiida import orm
from aiida.engine import calcfunction
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from aiida_mlmat.common.constants import INDEX_KEY
from aiida_mlmat.data.configurations import ConfigurationSetData
from aiida_mlmat.worker.structures import InvalidConfigurationError, build_seeds, check_labels


@calcfunction
def build_seed_set(elements: orm.List) -> ConfigurationSetData:
    """Seeds for a chemical system from its elements: fcc, bcc, hcp phases and simple ordered alloys."""
    seeds = ConfigurationSetData(build_seeds(elements.get_list()))
    seeds.label = f'seed structures ({"-".join(elements.get_list())})'
    return seeds


@calcfunction
def structures_to_set(**structures: orm.StructureData) -> ConfigurationSetData:
    """Gather StructureData nodes (sorted by link label) into one configuration set."""
    frames = [structures[key].get_ase() for key in sorted(structures)]
    return ConfigurationSetData(frames)


@calcfunction
def split_configurations(configurations: ConfigurationSetData, chunk_size: orm.Int) -> dict[str, ConfigurationSetData]:
    """Split a set into chunks of at most ``chunk_size`` configurations (``chunk_0000``, ...).

    Each frame keeps (or gets) its index in the whole set as ``info['mlmat_index']``.
    """
    size, count = chunk_size.value, configurations.count
    groups = [range(start, min(start + size, count)) for start in range(0, count, size)]
    chunks = configurations.subsets(groups, numbered=True)
    return {f'chunk_{number:04d}': chunk for number, chunk in enumerate(chunks)}


def chunk_exclusions(chunks: dict[str, Any], reasons: dict[str, str]) -> list[dict[str, Any]]:
    """Exclusion records of labelled chunks (``labelled_*``: their own) and of failed unlabelled chunks (``failed_*``:
    every configuration, with ``reasons[key]``), in chunk order."""
    excluded: list[dict[str, Any]] = []
    for key in sorted(chunks):
        node = chunks[key]
        if not key.startswith('failed_'):
            excluded.extend(node.excluded)
            continue
        for position, frame in enumerate(node.iter_atoms()):
            excluded.append(
                {
                    'index': int(frame.info.get(INDEX_KEY, position)),
                    'formula': frame.get_chemical_formula(),
                    'reason': reasons.get(key, 'the label job failed'),
                }
            )
    return excluded


def gather_chunks(chunks: dict[str, Any], reasons: dict[str, str]) -> tuple[list[Atoms], list[dict[str, Any]]]:
    """Frames and exclusions of labelled chunks (``labelled_*``) and failed unlabelled chunks (``failed_*``).

    Every configuration of a failed chunk is excluded with ``reasons[key]``; the frames come back sorted by their
    original index, the exclusions in chunk order.
    """
    frames: list[Atoms] = []
    for key in sorted(chunks):
        if not key.startswith('failed_'):
            frames.extend(chunks[key].get_atoms())
    frames.sort(key=lambda frame: int(frame.info.get(INDEX_KEY, 0)))
    return frames, chunk_exclusions(chunks, reasons)


@calcfunction
def collect_labels(calculator: orm.Dict, failures: orm.Dict, **chunks: ConfigurationSetData) -> ConfigurationSetData:
    """Merge labelled chunks into one set, sorted by configuration index, with every exclusion recorded.

    The chunks' frames are copied byte for byte and read one at a time (see :meth:`ConfigurationSetData.joined`):
    a large reference set is never in memory as ASE objects.

    :param calculator: the calculator spec that made the labels.
    :param failures: ``{link label of an unlabelled chunk: reason}`` for chunks whose job failed as a whole;
        every configuration of such a chunk is excluded with that reason.
    :param chunks: labelled chunks (``labelled_*``) and failed unlabelled chunks (``failed_*``).
    """
    excluded = chunk_exclusions(chunks, failures.get_dict())
    excluded.sort(key=lambda record: record['index'])
    parts = [chunks[key] for key in sorted(chunks) if not key.startswith('failed_')]
    labelled = ConfigurationSetData.joined(parts, calculator=calculator.get_dict(), excluded=excluded)
    labelled.label = f'labelled by {calculator.get("name")}'
    return labelled


@calcfunction
def ase_results_to_set(calculator: orm.Dict, failures: orm.Dict, **nodes: orm.Data) -> ConfigurationSetData:
    """Turn aiida-ase ``ase.ase`` results (one job per configuration) into one labelled set.

    Inputs come in triples per configuration index ``i``: ``structure_i`` (StructureData), ``parameters_i``
    (the job's output Dict with ``total_energy`` eV and ``stress`` eV/Å^3) and ``array_i`` (ArrayData with
    ``forces`` eV/Å). ``failures`` maps ``structure_i`` of failed jobs to their reason.
    """
    reasons = failures.get_dict()
    frames: list[Atoms] = []
    excluded: list[dict] = []
    indices = sorted(int(key.split('_', 1)[1]) for key in nodes if key.startswith('structure_'))
    for index in indices:
        atoms = nodes[f'structure_{index}'].get_ase()
        key = f'structure_{index}'
        if key in reasons or f'parameters_{index}' not in nodes:
            reason = reasons.get(key, 'the aiida-ase job produced no results')
            excluded.append({'index': index, 'formula': atoms.get_chemical_formula(), 'reason': reason})
            continue
        parameters = nodes[f'parameters_{index}'].get_dict()
        results = {'energy': float(parameters['total_energy'])}
        if f'array_{index}' in nodes and 'forces' in nodes[f'array_{index}'].get_arraynames():
            results['forces'] = np.asarray(nodes[f'array_{index}'].get_array('forces'), dtype=float)
        if 'stress' in parameters:
            results['stress'] = np.asarray(parameters['stress'], dtype=float)
        elif f'array_{index}' in nodes and 'stress' in nodes[f'array_{index}'].get_arraynames():
            results['stress'] = np.asarray(nodes[f'array_{index}'].get_array('stress'), dtype=float)
        atoms.info[INDEX_KEY] = index
        atoms.calc = SinglePointCalculator(atoms, **results)
        try:
            check_labels(atoms, limits=False)
        except InvalidConfigurationError as exc:
            reason = f'the aiida-ase job gave unusable labels: {exc}'
            excluded.append({'index': index, 'formula': atoms.get_chemical_formula(), 'reason': reason})
            continue
        frames.append(atoms)
    return ConfigurationSetData(frames, calculator=calculator.get_dict(), excluded=excluded)


@calcfunction
def select_configurations(
    configurations: ConfigurationSetData, descriptors: orm.ArrayData, n: orm.Int, method: orm.Str
) -> dict[str, orm.Data]:
    """Keep the ``n`` most diverse configurations (FPS or CUR on per-structure mean descriptors).

    Outputs ``selected`` (the subset, each frame keeping its index in the whole set) and ``indices``.
    """
    from aiida_mlmat.ml.selection import select

    if descriptors.base.attributes.get('n_structures') != configurations.count:
        raise ValueError('descriptors and configurations differ in length')
    picked = sorted(int(index) for index in select(descriptors.get_array('means'), n.value, method.value))
    (selected,) = configurations.subsets([picked], numbered=True, calculator=configurations.calculator)
    return {'selected': selected, 'indices': orm.List(picked)}


@calcfunction
def dataset_map(
    configurations: ConfigurationSetData, descriptors: orm.ArrayData, colour: orm.Str
) -> dict[str, orm.Data]:
    """2-D PCA map of the per-structure descriptors as a PNG, coloured by ``energy`` (eV/atom) or by the
    fraction of an element (``composition:Au``); also the coordinates and explained variance."""
    import tempfile
    from pathlib import Path

    from aiida_mlmat.ml.selection import map_colours, pca_2d, plot_map

    frames = configurations.get_atoms()
    coords, variance = pca_2d(descriptors.get_array('means'))
    values, label = map_colours(frames, colour.value)
    with tempfile.TemporaryDirectory() as tmp:
        path = plot_map(coords, values, label, str(Path(tmp) / 'map.png'))
        image = orm.SinglefileData(path, filename='dataset-map.png')
    array = orm.ArrayData()
    array.set_array('coordinates', coords)
    array.set_array('colour', values)
    array.base.attributes.set('explained_variance', [float(v) for v in variance])
    return {'image': image, 'map': array}
