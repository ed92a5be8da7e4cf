"""Pure structure helpers used on both sides: validation, seed generation, extxyz I/O."""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Iterable, Sequence
from typing import IO

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols, covalent_radii, reference_states

from aiida_mlmat.common.constants import INDEX_KEY, METHOD_KEY, MIN_INTERATOMIC_DISTANCE


class InvalidConfigurationError(ValueError):
    """A configuration that no calculator should be asked about."""


def check_element(symbol: str) -> int:
    """Return the atomic number of a chemical symbol, or raise ``ValueError`` with a clear message."""
    number = atomic_numbers.get(symbol)
    if not number or chemical_symbols[number] != symbol:
        raise ValueError(f'unknown element `{symbol}`: use a chemical symbol such as Cu or Au')
    return number


def shortest_distance(atoms: Atoms, cutoff: float = MIN_INTERATOMIC_DISTANCE) -> float | None:
    """Return the shortest interatomic distance (Å, periodic images included) if below ``cutoff``, else None."""
    if len(atoms) == 0:
        return None
    if atoms.pbc.any() and abs(atoms.cell.volume) < 1e-12:
        raise InvalidConfigurationError('periodic configuration with a degenerate (zero-volume) cell')
    try:  # vesin (C++) where installed: several times faster than ASE for this tiny cutoff
        from vesin import NeighborList

        periodic = bool(atoms.pbc.all())
        if periodic or not atoms.pbc.any():
            box = atoms.cell.array if periodic else np.zeros((3, 3))
            (distances,) = NeighborList(cutoff=cutoff, full_list=False).compute(
                points=atoms.positions, box=box, periodic=periodic, quantities='d'
            )
            return float(distances.min()) if len(distances) else None
    except ImportError:
        pass
    from ase.neighborlist import neighbor_list

    distances = neighbor_list('d', atoms, cutoff)
    if len(distances) == 0:
        return None
    return float(distances.min())


def check_configuration(atoms: Atoms, min_distance: float = MIN_INTERATOMIC_DISTANCE) -> None:
    """Raise :class:`InvalidConfigurationError` when a configuration is unphysical.

    Checks: at least one atom, real elements, finite positions, a non-degenerate periodic cell, no two atoms
    closer than ``min_distance`` (Å).
    """
    if len(atoms) == 0:
        raise InvalidConfigurationError('configuration has no atoms')
    if (atoms.numbers <= 0).any():
        raise InvalidConfigurationError('configuration has a dummy atom (X) that is not an element')
    if not np.isfinite(atoms.positions).all():
        raise InvalidConfigurationError('configuration has non-finite positions')
    if min_distance > 0:
        shortest = shortest_distance(atoms, min_distance)
        if shortest is not None:
            raise InvalidConfigurationError(f'atoms closer than {min_distance} Å (shortest distance {shortest:.3f} Å)')


#: Largest magnitudes a label may have: an all-electron total energy of the heaviest elements is below 1e6 eV/atom,
#: and a force above 1e4 eV/Å or a stress above 1e3 eV/Å^3 (about 1.6e5 GPa) is no physical configuration but a
#: unit or parsing error, which would otherwise surface as a non-finite training loss.
LABEL_LIMITS = {'energy': 1e6, 'forces': 1e4, 'stress': 1e3}
_LABEL_UNITS = {'energy': 'eV/atom', 'forces': 'eV/Å', 'stress': 'eV/Å^3'}


def check_labels(atoms: Atoms, limits: bool = True) -> None:
    """Raise :class:`InvalidConfigurationError` when a configuration's labels cannot be trained on or evaluated.

    Checks whichever labels the configuration carries: energy (eV) one finite number, forces (eV/Å) finite with
    shape (n_atoms, 3), stress (eV/Å^3) finite with 6 (Voigt) or 3 x 3 components, and with ``limits`` each
    within :data:`LABEL_LIMITS` (the energy per atom).
    """
    results = atoms.calc.results if atoms.calc is not None else {}
    shapes = {'energy': [()], 'forces': [(len(atoms), 3)], 'stress': [(6,), (3, 3)]}
    for key, allowed in shapes.items():
        if key not in results:
            continue
        try:
            value = np.asarray(results[key], dtype=float)
        except (TypeError, ValueError) as exc:
            raise InvalidConfigurationError(f'{key} is not numeric ({exc})') from exc
        if value.shape not in allowed:
            raise InvalidConfigurationError(
                f'{key} has shape {value.shape}, expected {" or ".join(str(shape) for shape in allowed)}'
            )
        if not np.isfinite(value).all():
            raise InvalidConfigurationError(f'{key} is not finite (NaN or inf)')
        largest = float(np.abs(value).max()) / (max(len(atoms), 1) if key == 'energy' else 1) if value.size else 0.0
        if limits and largest > LABEL_LIMITS[key]:
            raise InvalidConfigurationError(
                f'{key} of magnitude {largest:.3g} {_LABEL_UNITS[key]} is beyond any physical value '
                f'({LABEL_LIMITS[key]:g} {_LABEL_UNITS[key]}); check its units'
            )


def atomic_volume(symbol: str) -> float:
    """Return an estimate of the volume per atom (Å^3) of an element's ground state."""
    number = check_element(symbol)
    state = reference_states[number] or {}
    symmetry = state.get('symmetry')
    a = state.get('a')
    if symmetry == 'fcc':
        return a**3 / 4
    if symmetry == 'bcc':
        return a**3 / 2
    if symmetry == 'hcp':
        return math.sqrt(3) / 4 * a**2 * a * state.get('c/a', math.sqrt(8 / 3))
    if symmetry == 'diamond':
        return a**3 / 8
    if symmetry == 'sc':
        return a**3
    radius = covalent_radii[number]
    return 4 / 3 * math.pi * radius**3 / 0.74


def lattice_constant(volume: float, crystal: str) -> float:
    """Return the cubic (or hcp basal) lattice constant (Å) that gives ``volume`` Å^3 per atom."""
    if crystal == 'fcc':
        return (4 * volume) ** (1 / 3)
    if crystal == 'bcc':
        return (2 * volume) ** (1 / 3)
    if crystal == 'hcp':
        return (volume / (math.sqrt(3) / 4 * math.sqrt(8 / 3))) ** (1 / 3)
    raise ValueError(f'unknown crystal `{crystal}`')


def build_seeds(elements: Sequence[str], crystals: Iterable[str] = ('fcc', 'bcc', 'hcp')) -> list[Atoms]:
    """Build seed structures for a chemical system from its element symbols alone.

    For every element: its fcc, bcc and hcp phases at the ground-state volume per atom. For every pair of
    elements: ordered alloys on the fcc lattice (L1_2 A3B and AB3, L1_0 AB) and on the bcc lattice (B2 AB),
    each at its Vegard volume per atom (the elements' volumes weighted by the composition). Each seed carries its
    name in ``info['mlmat_method']``.

    :raises ValueError: for an empty list or an unknown element.
    """
    from ase.build import bulk

    elements = list(dict.fromkeys(elements))
    if not elements:
        raise ValueError('no elements given: name at least one chemical element')
    for symbol in elements:
        check_element(symbol)
    seeds: list[Atoms] = []
    for symbol in elements:
        volume = atomic_volume(symbol)
        for crystal in crystals:
            a = lattice_constant(volume, crystal)
            if crystal == 'hcp':
                atoms = bulk(symbol, crystal, a=a, covera=math.sqrt(8 / 3))
            else:
                atoms = bulk(symbol, crystal, a=a, cubic=True)
            atoms.info[METHOD_KEY] = f'seed:{crystal}'
            seeds.append(atoms)
    for first, second in itertools.combinations(elements, 2):
        for name, crystal, symbols in (
            ('L12', 'fcc', [first, second, second, second]),
            ('L12', 'fcc', [second, first, first, first]),
            ('L10', 'fcc', [first, first, second, second]),
            ('B2', 'bcc', [first, second]),
        ):
            # Vegard: the composition-weighted mean of the elements' volumes per atom
            volume = sum(atomic_volume(symbol) for symbol in symbols) / len(symbols)
            # fcc cube: corner + 3 face centres; bcc cube: corner + body centre
            atoms = bulk(first, crystal, a=lattice_constant(volume, crystal), cubic=True)
            atoms.set_chemical_symbols(symbols)
            atoms.info[METHOD_KEY] = f'seed:{name}'
            seeds.append(atoms)
    return seeds


def read_extxyz(source: str | IO[str]) -> list[Atoms]:
    """Read every frame of an extxyz file (path or text handle)."""
    from ase.io import read

    frames = read(source, index=':', format='extxyz')
    return list(frames) if isinstance(frames, list) else [frames]


def write_extxyz(destination: str | IO[str], frames: Sequence[Atoms]) -> None:
    """Write frames (with their calculator results, if any) as extxyz.

    :raises InvalidConfigurationError: when an ``info`` text holds a line break: ASE would write it raw into the
        one-line comment of the frame and make the file unreadable.
    """
    from ase.io import write

    for position, atoms in enumerate(frames):
        for key, value in atoms.info.items():
            if isinstance(value, str) and ('\n' in value or '\r' in value):
                raise InvalidConfigurationError(
                    f'configuration {position}: `{key}` holds a line break, which an extxyz comment line cannot store'
                )
    write(destination, list(frames), format='extxyz')


def extxyz_string(frames: Sequence[Atoms]) -> str:
    """Return frames as extxyz text."""
    handle = io.StringIO()
    write_extxyz(handle, frames)
    return handle.getvalue()


def index_of(atoms: Atoms, default: int) -> int:
    """Return the configuration index stored in ``info`` or ``default``."""
    value = atoms.info.get(INDEX_KEY, default)
    return int(value)
