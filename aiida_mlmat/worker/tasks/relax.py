"""Task ``relax``: batched relaxations of positions (and cell) with a registry calculator or a trained potential.

Each structure is relaxed with FIRE (or BFGS/LBFGS) under a cell filter (FrechetCellFilter where ASE has it,
ExpCellFilter otherwise) until the largest force (eV/Å; for the cell, the filter's generalised force) is below
``fmax`` or ``max_steps`` is spent. A relaxation that has not converged is written with ``mlmat_converged = False``
(the parser turns it into a warning exit code, not a silent result). A relaxation that explodes is excluded with its
reason: atoms closer than ``min_distance`` Å (collapse), an energy that is not finite or falls by more than
``max_energy_drop`` eV/atom (divergence), or a volume that changes by more than ``max_volume_ratio`` (explosion).

Every written frame carries its final energy (eV), forces (eV/Å) and stress (eV/Å^3) and, in ``info``:
``mlmat_converged``, ``mlmat_steps``, ``mlmat_fmax`` (eV/Å), ``mlmat_initial_energy`` (eV), ``mlmat_energy_std``
(ensemble spread of the energy, eV, 0 for one model) and ``mlmat_member_energies`` (eV, one per ensemble member,
which the hull step uses for one hull per member). Frames are flushed one by one; ``previous`` names a partial output
of an earlier job whose structures are copied and not recomputed.
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

from aiida_mlmat.common.constants import EXCLUDED_FILE, INDEX_KEY, MIN_INTERATOMIC_DISTANCE, RELAXED_FILE
from aiida_mlmat.worker.calculators import get_factory, resolve_parameters
from aiida_mlmat.worker.errors import ErrorCode, WorkerError
from aiida_mlmat.worker.structures import InvalidConfigurationError, check_configuration, index_of
from aiida_mlmat.worker.tasks import read_input_frames

DEFAULTS: dict[str, Any] = {
    'fmax': 0.05,
    'max_steps': 300,
    'relax_cell': True,
    'optimizer': 'FIRE',
    'max_energy_drop': 3.0,
    'max_volume_ratio': 4.0,
}
#: Check for collapse every this many steps (the neighbour search costs more than an EMT step).
DISTANCE_CHECK_EVERY = 10


class RelaxationExplodedError(RuntimeError):
    """The relaxation left physical ground: collapse, divergence or explosion."""


def _cell_filter(atoms: Atoms) -> Any:
    try:
        from ase.filters import FrechetCellFilter

        return FrechetCellFilter(atoms)
    except ImportError:  # ASE < 3.23 (Debian's system Python)
        from ase.constraints import ExpCellFilter

        return ExpCellFilter(atoms)


def _optimizer(name: str) -> Any:
    from ase import optimize

    return getattr(optimize, name)


def largest_force(system: Any) -> float:
    """Largest per-atom (or per generalised coordinate) force norm of an atoms-like object, eV/Å."""
    forces = np.asarray(system.get_forces())
    return float(np.sqrt((forces**2).sum(axis=1)).max()) if len(forces) else 0.0


def relax_one(atoms: Atoms, calculator: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """Relax one structure in place and return what the output frame records.

    :raises RelaxationExplodedError: when the relaxation collapses, diverges or explodes.
    :raises InvalidConfigurationError: when the starting structure has atoms closer than ``min_distance``.
    """
    min_distance = float(settings['min_distance'])
    check_configuration(atoms, min_distance)
    atoms.calc = calculator
    n_atoms = len(atoms)
    initial_energy = float(atoms.get_potential_energy())
    if not np.isfinite(initial_energy):
        raise RelaxationExplodedError('the energy of the starting structure is not finite')
    initial_volume = abs(atoms.get_volume()) if atoms.pbc.all() else None
    relax_cell = bool(settings['relax_cell']) and atoms.pbc.all()
    system = _cell_filter(atoms) if relax_cell else atoms
    optimizer = _optimizer(settings['optimizer'])(system, logfile=None)
    steps = {'n': 0}

    def watch() -> None:
        steps['n'] += 1
        energy = float(atoms.get_potential_energy())
        if not np.isfinite(energy):
            raise RelaxationExplodedError(f'energy diverged: not finite after {steps["n"]} steps')
        drop = (initial_energy - energy) / n_atoms
        if drop > settings['max_energy_drop']:
            raise RelaxationExplodedError(
                f'energy diverged: fell by {drop:.3f} eV/atom (limit {settings["max_energy_drop"]}) '
                f'in {steps["n"]} steps'
            )
        if initial_volume:
            ratio = abs(atoms.get_volume()) / initial_volume
            if max(ratio, 1 / ratio) > settings['max_volume_ratio']:
                raise RelaxationExplodedError(
                    f'cell exploded: volume changed by a factor {ratio:.3g} in {steps["n"]} steps'
                )
        if steps['n'] % DISTANCE_CHECK_EVERY == 0:
            try:
                check_configuration(atoms, min_distance)
            except InvalidConfigurationError as exc:
                raise RelaxationExplodedError(f'atoms collapsed after {steps["n"]} steps: {exc}') from exc

    optimizer.attach(watch, interval=1)
    optimizer.run(fmax=float(settings['fmax']), steps=int(settings['max_steps']))
    try:
        check_configuration(atoms, min_distance)
    except InvalidConfigurationError as exc:
        raise RelaxationExplodedError(f'atoms collapsed: {exc}') from exc
    fmax = largest_force(system)
    results: dict[str, Any] = {
        'energy': float(atoms.get_potential_energy()),
        'forces': np.array(atoms.get_forces(), dtype=float),
    }
    if atoms.pbc.all():
        with contextlib.suppress(PropertyNotImplementedError):  # GPAW in fd or lcao mode gives no stress
            results['stress'] = np.array(atoms.get_stress(voigt=True), dtype=float)
    for key, value in results.items():
        if not np.all(np.isfinite(value)):
            raise RelaxationExplodedError(f'the final {key} is not finite')
    extra = getattr(calculator, 'results', {})
    members = np.atleast_1d(np.asarray(extra.get('member_energies', [results['energy']]), dtype=float))
    return {
        'results': results,
        'converged': bool(fmax < float(settings['fmax'])),
        'steps': int(optimizer.nsteps),
        'fmax': fmax,
        'initial_energy': initial_energy,
        'energy_std': float(extra.get('energy_std', 0.0)),
        'member_energies': members,
    }


def run(params: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Relax the structures of ``params['structures']``; see the module docstring."""
    start = time.perf_counter()
    frames = read_input_frames(workdir, params['structures'])
    if not frames:
        raise WorkerError(ErrorCode.INVALID_INPUT, f'`{params["structures"]}` holds no structure to relax')
    previous: dict[int, Atoms] = {}
    if params.get('previous'):
        for atoms in read_input_frames(workdir, params['previous']):
            previous[index_of(atoms, -1)] = atoms
    settings = {**DEFAULTS, 'min_distance': MIN_INTERATOMIC_DISTANCE, **params}
    calc_spec = params['calculator']
    try:
        factory = get_factory(calc_spec['name'])
    except KeyError as exc:
        raise WorkerError(ErrorCode.UNKNOWN_CALCULATOR, str(exc)) from exc
    except ImportError as exc:
        raise WorkerError(ErrorCode.CALCULATOR_UNAVAILABLE, str(exc)) from exc
    calc_params = resolve_parameters(calc_spec['name'], calc_spec.get('parameters', {}), workdir)
    shared = None
    if calc_spec['name'] == 'mlmat':  # stateless and costly to load: one instance for the whole batch
        try:
            shared = factory(dict(calc_params))
        except (OSError, ValueError) as exc:
            raise WorkerError(ErrorCode.CORRUPT_FILE, f'cannot load the potential: {exc}') from exc
    max_seconds = params.get('max_seconds')

    n_relaxed = n_converged = n_reused = n_new = remaining = 0
    excluded: list[dict[str, Any]] = []
    steps_total = 0
    with open(workdir / RELAXED_FILE, 'w') as out, open(workdir / EXCLUDED_FILE, 'w') as excl:
        from ase.io import write

        for position, original in enumerate(frames):
            index = index_of(original, position)
            if index in previous:
                write(out, previous[index], format='extxyz')
                n_reused += 1
                n_relaxed += 1
                n_converged += bool(previous[index].info.get('mlmat_converged', False))
                continue
            if max_seconds is not None and n_new > 0 and time.perf_counter() - start > max_seconds:
                remaining = len(frames) - position
                break
            n_new += 1
            atoms = Atoms(original.numbers, positions=original.positions, cell=original.cell, pbc=original.pbc)
            atoms.info = {key: value for key, value in original.info.items() if isinstance(value, (str, int, float))}
            atoms.info[INDEX_KEY] = index
            try:
                outcome = relax_one(atoms, shared if shared is not None else factory(dict(calc_params)), settings)
            except InvalidConfigurationError as exc:
                reason = f'invalid structure: {exc}'
            except RelaxationExplodedError as exc:
                reason = f'relaxation exploded: {exc}'
            except Exception as exc:
                reason = f'calculator failed: {type(exc).__name__}: {exc}'.strip()
            else:
                frame = atoms.copy()
                frame.calc = SinglePointCalculator(frame, **outcome['results'])
                frame.info.update(
                    {
                        'mlmat_converged': outcome['converged'],
                        'mlmat_steps': outcome['steps'],
                        'mlmat_fmax': outcome['fmax'],
                        'mlmat_initial_energy': outcome['initial_energy'],
                        'mlmat_energy_std': outcome['energy_std'],
                        'mlmat_member_energies': outcome['member_energies'],
                    }
                )
                write(out, frame, format='extxyz')
                out.flush()
                n_relaxed += 1
                n_converged += outcome['converged']
                steps_total += outcome['steps']
                continue
            record = {
                'index': index,
                'name': str(original.info.get('mlmat_name', '')),
                'formula': original.get_chemical_formula(),
                'reason': reason,
            }
            excluded.append(record)
            excl.write(json.dumps(record) + '\n')
            excl.flush()

    results: dict[str, Any] = {
        'status': 'ok',
        'n_input': len(frames),
        'n_relaxed': n_relaxed,
        'n_converged': n_converged,
        'n_unconverged': n_relaxed - n_converged,
        'n_reused': n_reused,
        'n_excluded': len(excluded),
        'n_remaining': remaining,
        'excluded': excluded,
        'settings': {key: settings[key] for key in (*DEFAULTS, 'min_distance')},
        'timings': {'total_s': time.perf_counter() - start, 'steps': steps_total},
    }
    if remaining:
        results['status'] = 'incomplete'
        results['error'] = {
            'code': ErrorCode.WALLTIME.value,
            'message': f'soft time limit of {max_seconds} s reached with {remaining} structures left',
        }
    elif n_relaxed == 0:
        results['status'] = 'error'
        results['error'] = {
            'code': ErrorCode.ALL_FAILED.value,
            'message': f'every one of the {len(frames)} structures failed; first reason: {excluded[0]["reason"]}',
        }
    return results
