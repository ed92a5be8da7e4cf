"""Task ``label``: batched single points (energy, forces, stress) with a registry calculator.

One configuration failing (the calculator raises, returns NaN or infinity, or the configuration is
unphysical) does not fail the batch: it is excluded with its reason. Labelled frames are appended to
``labelled.extxyz`` and flushed one by one, so a job killed by the scheduler leaves everything it finished
readable; ``previous`` names such a partial file, whose configurations are copied and not recomputed.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.singlepoint import SinglePointCalculator

from aiida_mlmat.common.constants import (
    CALCULATOR_LOGS,
    EXCLUDED_FILE,
    INDEX_KEY,
    LABELLED_FILE,
    MIN_INTERATOMIC_DISTANCE,
)
from aiida_mlmat.worker.calculators import get_factory, resolve_parameters
from aiida_mlmat.worker.errors import ErrorCode, WorkerError
from aiida_mlmat.worker.structures import InvalidConfigurationError, check_configuration, index_of
from aiida_mlmat.worker.tasks import read_input_frames


def compute_labels(atoms: Atoms, calculator: Any, properties: list[str]) -> dict[str, Any]:
    """Compute the requested labels of one configuration and check that they are finite.

    :return: ``energy`` (eV), ``forces`` (eV/Å, n x 3), ``stress`` (eV/Å^3, Voigt 6) as requested;
        stress is skipped for a configuration that is not periodic in all three directions, and where the
        calculator does not implement it (GPAW in its ``fd`` and ``lcao`` modes): energy and forces are kept.
    :raises ValueError: when a label is NaN or infinite.
    """
    atoms = atoms.copy()
    atoms.calc = calculator
    results: dict[str, Any] = {'energy': float(atoms.get_potential_energy())}
    if 'forces' in properties:
        results['forces'] = np.array(atoms.get_forces(), dtype=float)
    if 'stress' in properties and atoms.pbc.all():
        with contextlib.suppress(PropertyNotImplementedError):  # the caller records the configuration as stress-less
            results['stress'] = np.array(atoms.get_stress(voigt=True), dtype=float)
    for key, value in results.items():
        if not np.all(np.isfinite(value)):
            raise ValueError(f'calculator returned a non-finite {key}')
    return results


#: Calculators that write a text log through a keyword argument: each configuration gets its own log, kept (and
#: retrieved, in :data:`CALCULATOR_LOGS`) only where the calculator failed, unless the parameters set the keyword.
LOG_KEYWORDS = {'gpaw': 'txt'}


def _flushed_size(log: Path) -> int:
    """The size of a failed calculator's ``log`` once the calculator is gone. A calculator that raised (GPAW missing a
    PAW dataset) holds its log file open, with what it wrote in a buffer, as long as the exception's traceback keeps
    it: called after the ``except`` block, when that is gone, with a collection for any reference cycle."""
    import gc

    gc.collect()
    return log.stat().st_size if log.is_file() else 0


def _same_configuration(first: Atoms, second: Atoms, tolerance: float = 1e-6) -> bool:
    """Whether two frames are the same configuration (species, cell, positions within ``tolerance`` Å)."""
    return (
        len(first) == len(second)
        and (first.numbers == second.numbers).all()
        and np.allclose(first.cell.array, second.cell.array, atol=tolerance)
        and np.allclose(first.positions, second.positions, atol=tolerance)
    )


def run(params: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Label the configurations of ``params['structures']``; see the module docstring."""
    start = time.perf_counter()
    frames = read_input_frames(workdir, params['structures'])
    previous: dict[int, Atoms] = {}
    if params.get('previous'):
        for atoms in read_input_frames(workdir, params['previous']):
            previous[index_of(atoms, -1)] = atoms
    previous_excluded: dict[int, dict[str, Any]] = {}
    if params.get('previous_excluded'):
        path = workdir / params['previous_excluded']
        if not path.is_file():
            raise WorkerError(ErrorCode.MISSING_FILE, f'input file `{path.name}` is missing')
        try:
            for record in json.loads(path.read_text()):
                previous_excluded[int(record['index'])] = record
        except (ValueError, KeyError, TypeError) as exc:
            raise WorkerError(ErrorCode.CORRUPT_FILE, f'cannot read `{path.name}`: {exc}') from exc
    if not frames:
        raise WorkerError(ErrorCode.INVALID_INPUT, f'`{params["structures"]}` holds no configuration to label')

    calc_spec = params['calculator']
    try:
        factory = get_factory(calc_spec['name'])
    except KeyError as exc:
        raise WorkerError(ErrorCode.UNKNOWN_CALCULATOR, str(exc)) from exc
    except ImportError as exc:
        raise WorkerError(ErrorCode.CALCULATOR_UNAVAILABLE, str(exc)) from exc
    calc_params = resolve_parameters(calc_spec['name'], calc_spec.get('parameters', {}), workdir)
    properties = list(params['properties'])
    log_keyword = LOG_KEYWORDS.get(calc_spec['name'])
    min_distance = float(params.get('min_distance', MIN_INTERATOMIC_DISTANCE))
    max_seconds = params.get('max_seconds')

    n_labelled = n_reused = n_new = n_without_stress = 0
    excluded: list[dict[str, Any]] = []
    remaining = 0
    compute_seconds = 0.0
    with open(workdir / LABELLED_FILE, 'w') as out, open(workdir / EXCLUDED_FILE, 'w') as excl:
        from ase.io import write

        for position, atoms in enumerate(frames):
            index = index_of(atoms, position)
            if index in previous and _same_configuration(previous[index], atoms):
                labels = previous[index].calc.results if previous[index].calc is not None else {}
                if 'stress' in properties and atoms.pbc.all() and 'stress' not in labels:
                    n_without_stress += 1
                write(out, previous[index], format='extxyz')
                n_reused += 1
                n_labelled += 1
                continue
            if index in previous_excluded:  # failed before: keep the record, do not recompute
                excluded.append(previous_excluded[index])
                excl.write(json.dumps(previous_excluded[index]) + '\n')
                continue
            # Always make progress (one new configuration) before honouring the soft time limit.
            if max_seconds is not None and n_new > 0 and time.perf_counter() - start > max_seconds:
                remaining = len(frames) - position
                break
            n_new += 1
            clean = atoms.copy()
            clean.calc = None
            clean.info[INDEX_KEY] = index
            log, crashed = None, False
            config_params = dict(calc_params)
            if log_keyword is not None and log_keyword not in calc_params:
                log = workdir / CALCULATOR_LOGS / f'{index}.txt'
                log.parent.mkdir(exist_ok=True)
                config_params[log_keyword] = str(log)
            try:
                check_configuration(clean, min_distance)
                tick = time.perf_counter()
                results = compute_labels(clean, factory(config_params), properties)
                compute_seconds += time.perf_counter() - tick
            except InvalidConfigurationError as exc:
                reason = f'invalid configuration: {exc}'
            except Exception as exc:
                reason = f'calculator failed: {type(exc).__name__}: {exc}'.strip()
                crashed = True
            else:
                if log is not None:
                    log.unlink(missing_ok=True)
                if 'stress' in properties and clean.pbc.all() and 'stress' not in results:
                    n_without_stress += 1
                clean.calc = SinglePointCalculator(clean, **results)
                write(out, clean, format='extxyz')
                out.flush()
                n_labelled += 1
                continue
            if crashed and log is not None and _flushed_size(log):
                reason += f' (its log: {CALCULATOR_LOGS}/{index}.txt, retrieved)'
            record = {'index': index, 'formula': atoms.get_chemical_formula(), 'reason': reason}
            excluded.append(record)
            excl.write(json.dumps(record) + '\n')
            excl.flush()

    elapsed = time.perf_counter() - start
    computed = n_new
    results_dict: dict[str, Any] = {
        'status': 'ok',
        'n_input': len(frames),
        'n_labelled': n_labelled,
        'n_reused': n_reused,
        'n_excluded': len(excluded),
        'n_remaining': remaining,
        'excluded': excluded,
        'properties': properties,
        'n_without_stress': n_without_stress,
        'timings': {
            'total_s': elapsed,
            'compute_s': compute_seconds,
            'per_configuration_s': (compute_seconds / computed) if computed else None,
        },
    }
    if remaining:
        results_dict['status'] = 'incomplete'
        results_dict['error'] = {
            'code': ErrorCode.WALLTIME.value,
            'message': f'soft time limit of {max_seconds} s reached with {remaining} configurations left',
        }
    elif frames and n_labelled == 0:
        results_dict['status'] = 'error'
        first = excluded[0]['reason'] if excluded else 'unknown'
        results_dict['error'] = {
            'code': ErrorCode.ALL_FAILED.value,
            'message': f'every one of the {len(frames)} configurations failed; first reason: {first}',
        }
    return results_dict
