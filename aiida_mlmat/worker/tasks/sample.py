"""Task ``sample``: make configurations from seed structures.

Operations, each optional and applied to every seed after the supercell expansion (along the seed's periodic
directions only: a cluster or molecule is not repeated): keep the seed itself,
rattled copies, homogeneous random strains (with a small rattle), single vacancies, and Langevin MD at a list
of temperatures with a registry calculator, keeping a snapshot every ``interval`` steps. Every output frame
records its seed (``mlmat_seed``) and method (``mlmat_method``); the sequence is reproducible from the seeds.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms, units

from aiida_mlmat.common.constants import (
    DISAGREEMENT_KEY,
    ENERGY_STD_KEY,
    INDEX_KEY,
    METHOD_KEY,
    SAMPLED_FILE,
    SEED_KEY,
)
from aiida_mlmat.worker.calculators import get_factory, resolve_parameters
from aiida_mlmat.worker.errors import ErrorCode, WorkerError
from aiida_mlmat.worker.structures import write_extxyz
from aiida_mlmat.worker.tasks import read_input_frames

#: Frame info keys of MD snapshots: the isotropic strain applied to the seed (fraction), and on the last snapshot of
#: a trajectory stopped by ``stop_disagreement`` the number of snapshots it did not make.
STRAIN_KEY = 'mlmat_strain'
SKIPPED_KEY = 'mlmat_skipped'


def _plain(atoms: Atoms) -> Atoms:
    return Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)


def rattled(seed: Atoms, count: int, stdev: float, rng: np.random.Generator) -> list[Atoms]:
    """Return ``count`` copies of ``seed`` with Gaussian displacements of ``stdev`` Å."""
    frames = []
    for _ in range(count):
        atoms = _plain(seed)
        atoms.positions += rng.normal(0.0, stdev, size=atoms.positions.shape)
        frames.append(atoms)
    return frames


def strained(seed: Atoms, count: int, max_strain: float, rattle_stdev: float, rng: np.random.Generator) -> list[Atoms]:
    """Return ``count`` copies under random symmetric strains with components in [-max_strain, max_strain]."""
    frames = []
    for _ in range(count):
        eps = rng.uniform(-max_strain, max_strain, size=(3, 3))
        eps = (eps + eps.T) / 2
        atoms = _plain(seed)
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
        if rattle_stdev:
            atoms.positions += rng.normal(0.0, rattle_stdev, size=atoms.positions.shape)
        frames.append(atoms)
    return frames


def with_vacancies(seed: Atoms, count: int, rng: np.random.Generator) -> list[Atoms]:
    """Return ``count`` copies of ``seed`` with one random atom removed (none for a one-atom seed)."""
    if len(seed) < 2:
        return []
    frames = []
    for _ in range(count):
        atoms = _plain(seed)
        del atoms[int(rng.integers(len(atoms)))]
        frames.append(atoms)
    return frames


def thermalize(atoms: Any, temperature: float, rng: Any) -> None:
    """Give ``atoms`` Maxwell-Boltzmann momenta at ``temperature`` (K) drawn with ``rng``.

    ``thermalize_momenta`` is ASE >= 3.29's name for ``MaxwellBoltzmannDistribution`` (same draws); the older
    name is used where ASE is older (the system Python of a cluster).
    """
    from ase.md import velocitydistribution

    function = getattr(velocitydistribution, 'thermalize_momenta', None)
    (function or velocitydistribution.MaxwellBoltzmannDistribution)(atoms, temperature_K=temperature, rng=rng)


def md_snapshots(
    seed: Atoms, spec: dict[str, Any], factory: Any, rng: np.random.Generator
) -> list[tuple[float, Atoms]]:
    """Run Langevin MD at each temperature and return ``(temperature K, snapshot)`` pairs.

    With an ensemble calculator (``mlmat``) each snapshot records the committee force disagreement (eV/Å) under
    ``mlmat_disagreement`` and the energy spread (eV) under ``mlmat_energy_std``.

    ``strains`` (optional): isotropic linear strains (fractions, e.g. -0.02 for -2 %) applied to the seed's cell
    and positions before MD; each strain runs every temperature and its snapshots record it under ``mlmat_strain``.
    ``stop_disagreement`` (optional, eV/Å, ensembles only): a trajectory whose disagreement exceeds it has left
    the region the potential can be trusted in; it ends there, and its last snapshot records under
    ``mlmat_skipped`` how many snapshots it did not make (so that statistics over snapshots stay honest).
    """
    from ase.md.langevin import Langevin

    timestep = float(spec.get('timestep', 2.0)) * units.fs
    friction = float(spec.get('friction', 0.01)) / units.fs
    stop = spec.get('stop_disagreement')
    count = spec['steps'] // spec['interval']
    snapshots = []
    for strain in spec.get('strains') or [None]:
        start = _plain(seed)
        if strain is not None:
            start.set_cell(start.cell.array * (1.0 + strain), scale_atoms=True)
        for temperature in spec['temperatures']:
            atoms = _plain(start)
            atoms.calc = factory(dict(spec['calculator'].get('parameters', {})))
            thermalize(atoms, temperature, rng)
            dyn = Langevin(atoms, timestep, temperature_K=temperature, friction=friction, fixcm=False, rng=rng)
            for number in range(count):
                dyn.run(spec['interval'])
                snapshot = _plain(atoms)
                if strain is not None:
                    snapshot.info[STRAIN_KEY] = float(strain)
                results = atoms.calc.results
                if 'forces_disagreement' in results:  # an ensemble: keep its committee disagreement at this snapshot
                    snapshot.info[DISAGREEMENT_KEY] = float(results['forces_disagreement'])
                    snapshot.info[ENERGY_STD_KEY] = float(results['energy_std'])
                    if stop is not None and results['forces_disagreement'] > stop and number < count - 1:
                        snapshot.info[SKIPPED_KEY] = count - number - 1
                        snapshots.append((float(temperature), snapshot))
                        break
                snapshots.append((float(temperature), snapshot))
    return snapshots


def run(params: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Sample configurations from the seeds in ``params['structures']``; see the module docstring."""
    start = time.perf_counter()
    seeds = read_input_frames(workdir, params['structures'])
    if not seeds:
        raise WorkerError(ErrorCode.INVALID_INPUT, 'no seed structures given')

    md = params.get('md')
    factory = None
    if md:
        try:
            factory = get_factory(md['calculator']['name'])
        except KeyError as exc:
            raise WorkerError(ErrorCode.UNKNOWN_CALCULATOR, str(exc)) from exc
        except ImportError as exc:
            raise WorkerError(ErrorCode.CALCULATOR_UNAVAILABLE, str(exc)) from exc
        name = md['calculator']['name']
        parameters = resolve_parameters(name, md['calculator'].get('parameters', {}), workdir)
        md = {**md, 'calculator': {'name': name, 'parameters': parameters}}

    repeat = tuple(params.get('supercell', (1, 1, 1)))
    out: list[Atoms] = []
    counts: dict[str, int] = {}

    def keep(frame: Atoms, seed_index: int, method: str) -> None:
        frame.info[SEED_KEY] = seed_index
        frame.info[METHOD_KEY] = method
        frame.info[INDEX_KEY] = len(out)
        out.append(frame)
        counts[method.split(':')[0]] = counts.get(method.split(':')[0], 0) + 1

    for seed_index, original in enumerate(seeds):
        factors = tuple(int(n) if periodic else 1 for n, periodic in zip(repeat, original.pbc, strict=True))
        seed = _plain(original).repeat(factors) if factors != (1, 1, 1) else _plain(original)
        if params.get('include_seeds', True):
            keep(seed.copy(), seed_index, 'seed')
        if 'rattle' in params:
            spec = params['rattle']
            rng = np.random.default_rng([spec.get('seed', 0), seed_index, 1])
            for frame in rattled(seed, spec['count'], spec['stdev'], rng):
                keep(frame, seed_index, 'rattle')
        if 'strain' in params:
            spec = params['strain']
            rng = np.random.default_rng([spec.get('seed', 0), seed_index, 2])
            for frame in strained(seed, spec['count'], spec['max_strain'], spec.get('rattle_stdev', 0.0), rng):
                keep(frame, seed_index, 'strain')
        if 'vacancies' in params:
            spec = params['vacancies']
            rng = np.random.default_rng([spec.get('seed', 0), seed_index, 3])
            for frame in with_vacancies(seed, spec['count'], rng):
                keep(frame, seed_index, 'vacancy')
        if md:
            rng = np.random.default_rng([md.get('seed', 0), seed_index, 4])
            try:
                snapshots = md_snapshots(seed, md, factory, rng)
            except Exception as exc:
                raise WorkerError(
                    ErrorCode.UNEXPECTED, f'MD on seed {seed_index} failed: {type(exc).__name__}: {exc}'
                ) from exc
            for temperature, frame in snapshots:
                strain = frame.info.get(STRAIN_KEY)
                keep(frame, seed_index, f'md:{temperature:g}K' + ('' if strain is None else f':{strain:+g}'))

    write_extxyz(str(workdir / SAMPLED_FILE), out)
    return {
        'status': 'ok',
        'n_seeds': len(seeds),
        'n_configurations': len(out),
        'counts': counts,
        'timings': {'total_s': time.perf_counter() - start},
    }
