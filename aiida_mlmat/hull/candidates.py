"""Candidate structures for a hull screening: read from files, or enumerate ordered decorations of small cells.

Enumeration follows Hart and Forcade, Phys. Rev. B 77, 224115 (2008): every superlattice of the parent lattice
with ``m`` times its volume is a Hermite normal form (HNF) matrix of determinant ``m``; superlattices related by a
rotation of the parent are the same and one representative is kept; every decoration (labelling) of the sites of a
representative is reduced under the symmetry group of that superlattice (parent rotations that map it onto itself
combined with the translations of the parent lattice), and labellings that are periodic in a smaller cell are left
out (they are found at that smaller size). What remains is every symmetry-distinct ordered structure exactly once.
:func:`deduplicate` (pymatgen ``StructureMatcher``) then removes structures that two parent lattices share.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Lattice, Structure

#: Parent lattices :func:`generate_candidates` knows, with their number of atoms per primitive cell.
LATTICES: dict[str, int] = {'fcc': 1, 'bcc': 1, 'hcp': 2}

#: Ideal hcp axial ratio c/a.
HCP_C_OVER_A = math.sqrt(8 / 3)

#: File suffixes read with ase (extended XYZ may hold several frames).
ASE_SUFFIXES = ('.xyz', '.extxyz')


class CandidateError(ValueError):
    """A candidate file that cannot be read, or a candidate that cannot be screened."""


# ----------------------------------------------------------------------------------------------------------------
# Reading


def _from_ase(path: Path) -> list[Structure]:
    from ase.io import read
    from pymatgen.io.ase import AseAtomsAdaptor

    frames = read(str(path), index=':')
    if not isinstance(frames, list):
        frames = [frames]
    structures = []
    for i, atoms in enumerate(frames):
        if not atoms.pbc.all() or abs(atoms.cell.volume) < 1e-8:
            raise CandidateError(f'{path}: frame {i} has no periodic cell (a candidate must be a crystal)')
        structures.append(AseAtomsAdaptor.get_structure(atoms))
    return structures


def _from_pymatgen(path: Path) -> list[Structure]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # CIF parser warnings about rounding and missing keys
        return [Structure.from_file(str(path))]


def _read_file(path: Path) -> list[Structure]:
    if not path.is_file():
        raise CandidateError(f'{path}: no such file')
    errors = []
    readers = (_from_ase,) if path.suffix.lower() in ASE_SUFFIXES else (_from_pymatgen, _from_ase)
    for reader in readers:
        try:
            structures = reader(path)
        except CandidateError:
            raise
        except Exception as exc:  # every reader has its own exceptions for a bad file
            detail = f'{type(exc).__name__}: {exc}' if str(exc).strip() else f'content not valid ({type(exc).__name__})'
            errors.append(f'{reader.__name__[6:]}: {detail}')
            continue
        if structures:
            return structures
        errors.append(f'{reader.__name__[6:]}: no structure in the file')
    raise CandidateError(f'{path}: not a readable structure file (CIF, POSCAR, extxyz ...): {"; ".join(errors)}')


def _check_structure(path: Path, name: str, structure: Structure) -> None:
    if len(structure) == 0:
        raise CandidateError(f'{path}: `{name}` has no atoms')
    if not structure.is_ordered:
        raise CandidateError(f'{path}: `{name}` has partial occupancies; give an ordered structure')
    if not (np.isfinite(structure.lattice.matrix).all() and np.isfinite(structure.cart_coords).all()):
        raise CandidateError(f'{path}: `{name}` has a cell or positions that are not finite numbers (NaN or inf)')
    if not structure.volume > 1e-8:  # NaN too
        raise CandidateError(f'{path}: `{name}` has a degenerate cell')


def read_candidates(paths: Iterable[str | Path]) -> list[tuple[str, Structure]]:
    """Read candidate structures from files.

    Any format that pymatgen's ``Structure.from_file`` reads (CIF, POSCAR, CONTCAR, ``*.vasp`` ...) or ase reads
    (extended XYZ, with a periodic cell). A candidate is named after its file stem; the frames of a multi-frame
    file are named ``<stem>_<i>`` (from 0).

    :raises CandidateError: naming the file, for a file that is missing, cannot be read, holds a structure with
        partial occupancies or no cell, or whose name another file already gave.
    """
    candidates: list[tuple[str, Structure]] = []
    origin: dict[str, Path] = {}
    for entry in paths:
        path = Path(entry)
        structures = _read_file(path)
        stem = Path(path.stem).stem if path.suffix.lower() in ('.gz', '.bz2', '.xz') else path.stem
        names = [stem] if len(structures) == 1 else [f'{stem}_{i}' for i in range(len(structures))]
        for name, structure in zip(names, structures, strict=True):
            _check_structure(path, name, structure)
            if name in origin:
                raise CandidateError(f'{path}: candidate name `{name}` already taken by {origin[name]}; rename one')
            origin[name] = path
            candidates.append((name, structure))
    return candidates


def check_elements(structure: Structure, elements: Iterable[str]) -> str | None:
    """Return why a candidate cannot be screened in the system of ``elements`` (None when it can).

    A candidate may use a subset of the system's elements, not an element outside it.
    """
    system = set(elements)
    present = sorted({str(el) for el in structure.composition.elements})
    outside = [el for el in present if el not in system]
    if outside:
        return (
            f'{", ".join(outside)} {"is" if len(outside) == 1 else "are"} not in the chemical system '
            f'{"-".join(sorted(system))}'
        )
    return None


# ----------------------------------------------------------------------------------------------------------------
# Lattice constants


def atomic_volume(symbol: str) -> float:
    """Return an estimate of an element's volume per atom (Å^3): its ase reference state, else covalent radius."""
    from ase.data import atomic_numbers, covalent_radii, reference_states

    number = atomic_numbers.get(symbol)
    if not number:
        raise ValueError(f'unknown element `{symbol}`')
    state = reference_states[number] or {}
    symmetry = state.get('symmetry')
    a = float(state.get('a') or 0.0)  # type: ignore[arg-type]
    if symmetry == 'fcc':
        return a**3 / 4
    if symmetry == 'bcc':
        return a**3 / 2
    if symmetry == 'hcp':
        return math.sqrt(3) / 4 * a**3 * float(state.get('c/a', HCP_C_OVER_A))  # type: ignore[arg-type]
    if symmetry == 'diamond':
        return a**3 / 8
    if symmetry == 'sc':
        return a**3
    return float(4 / 3 * math.pi * covalent_radii[number] ** 3 / 0.74)


def volume_from_lattice_constant(a: float, lattice: str) -> float:
    """Return the volume per atom (Å^3) of the ``lattice`` (fcc, bcc, ideal hcp) with lattice constant ``a``."""
    if lattice == 'fcc':
        return a**3 / 4
    if lattice == 'bcc':
        return a**3 / 2
    if lattice == 'hcp':
        return math.sqrt(3) / 4 * a**3 * HCP_C_OVER_A
    raise ValueError(f'unknown lattice `{lattice}`: choose from {", ".join(LATTICES)}')


def lattice_constant_from_volume(volume: float, lattice: str) -> float:
    """Return the lattice constant (Å) of the ``lattice`` with ``volume`` Å^3 per atom."""
    return (volume / volume_from_lattice_constant(1.0, lattice)) ** (1 / 3)


# ----------------------------------------------------------------------------------------------------------------
# Enumeration


def _parent(lattice: str) -> tuple[np.ndarray, np.ndarray]:
    """Return the primitive lattice vectors (rows, lattice constant 1) and fractional basis of a parent."""
    if lattice == 'fcc':
        return 0.5 * np.array([[0.0, 1, 1], [1, 0, 1], [1, 1, 0]]), np.zeros((1, 3))
    if lattice == 'bcc':
        return 0.5 * np.array([[-1.0, 1, 1], [1, -1, 1], [1, 1, -1]]), np.zeros((1, 3))
    if lattice == 'hcp':
        vectors = np.array([[1.0, 0, 0], [-0.5, math.sqrt(3) / 2, 0], [0, 0, HCP_C_OVER_A]])
        return vectors, np.array([[1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]])
    raise ValueError(f'unknown lattice `{lattice}`: choose from {", ".join(LATTICES)}')


@cache
def _symmetry(lattice: str) -> tuple[np.ndarray, np.ndarray]:
    """Return the space-group operations of a parent in fractional coordinates: rotations (integer) and shifts."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    vectors, basis = _parent(lattice)
    parent = Structure(Lattice(vectors * 3.0), ['Cu'] * len(basis), basis)
    operations = SpacegroupAnalyzer(parent, symprec=1e-3).get_symmetry_operations(cartesian=False)
    rotations = np.array([np.rint(op.rotation_matrix) for op in operations], dtype=np.int64)
    shifts = np.array([op.translation_vector for op in operations], dtype=float)
    return rotations, shifts


def _hnfs(m: int) -> list[np.ndarray]:
    """Return all lower-triangular Hermite normal forms of determinant ``m`` (columns span the superlattice)."""
    matrices = []
    for a in range(1, m + 1):
        if m % a:
            continue
        for c in range(1, m // a + 1):
            if (m // a) % c:
                continue
            f = m // (a * c)
            for b, d, e in itertools.product(range(c), range(f), range(f)):
                matrices.append(np.array([[a, 0, 0], [b, c, 0], [d, e, f]], dtype=np.int64))
    return matrices


def _adjugate(h: np.ndarray) -> np.ndarray:
    """Integer adjugate of a 3x3 integer matrix (``h @ adj = det * I``)."""
    return np.rint(np.linalg.inv(h) * round(np.linalg.det(h))).astype(np.int64)


@cache
def _superlattices(lattice: str, m: int) -> tuple[np.ndarray, ...]:
    """Return one HNF per class of superlattices of index ``m`` equivalent under the parent's rotations."""
    rotations, _ = _symmetry(lattice)
    rotations = np.unique(rotations, axis=0)
    hnfs = _hnfs(m)
    adjugates = np.array([_adjugate(h) for h in hnfs])  # (K, 3, 3); h^-1 = adj / m
    unique: list[np.ndarray] = []
    assigned = np.zeros(len(hnfs), dtype=bool)
    for i, h in enumerate(hnfs):
        if assigned[i]:
            continue
        unique.append(h)
        rotated = rotations @ h  # (G, 3, 3)
        # h_j ~ h when h_j^-1 R h is an integer matrix for some rotation R
        products = np.einsum('kab,gbc->kgac', adjugates, rotated)
        equivalent = np.all(products % m == 0, axis=(2, 3)).any(axis=1)
        assigned |= equivalent
    return tuple(unique)


def _reduce(points: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Reduce integer lattice points (rows, parent coordinates) modulo the lower-triangular HNF ``h``."""
    p = points.copy()
    for column in range(3):
        q = np.floor_divide(p[:, column], h[column, column])
        p -= q[:, None] * h[:, column][None, :]
    return p


def _site_permutations(lattice: str, h: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the sites of superlattice ``h`` and its symmetry group as permutations of them.

    :return: lattice points (n_points, 3), the permutations of the group (G, n_sites) and those of the pure
        translations by a parent lattice vector that is not a superlattice vector (T, n_sites).
    """
    _, basis = _parent(lattice)
    n_basis = len(basis)
    a, c, f = int(h[0, 0]), int(h[1, 1]), int(h[2, 2])
    points = np.array(list(itertools.product(range(a), range(c), range(f))), dtype=np.int64)
    n_points = len(points)

    def index(reduced: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (reduced[:, 0] * c * f + reduced[:, 1] * f + reduced[:, 2]) * n_basis + b

    sites_p = np.repeat(points, n_basis, axis=0)
    sites_b = np.tile(np.arange(n_basis), n_points)

    translations = []
    for t in points:
        translations.append(index(_reduce(sites_p + t, h), sites_b))
    translations_arr = np.array(translations)

    rotations, shifts = _symmetry(lattice)
    adjugate, m = _adjugate(h), round(np.linalg.det(h))
    operations = []
    for rotation, shift in zip(rotations, shifts, strict=True):
        if np.any((adjugate @ rotation @ h) % m):
            continue  # this operation does not map the superlattice onto itself
        image = basis @ rotation.T + shift  # (n_basis, 3): R f_b + t
        target = np.empty(n_basis, dtype=np.int64)
        offset = np.empty((n_basis, 3), dtype=np.int64)
        for b in range(n_basis):
            difference = image[b][None, :] - basis
            match = np.where(np.all(np.abs(difference - np.rint(difference)) < 1e-6, axis=1))[0]
            target[b] = match[0]
            offset[b] = np.rint(difference[match[0]])
        moved = sites_p @ rotation.T + offset[sites_b]
        operations.append(index(_reduce(moved, h), target[sites_b]))
    operations_arr = np.array(operations)
    # the group: every operation followed by every translation
    group = translations_arr[:, operations_arr].reshape(-1, n_points * n_basis)
    group = np.unique(group, axis=0)
    return points, group, translations_arr[1:]


def _labellings(n_sites: int, n_species: int, group: np.ndarray, translations: np.ndarray) -> np.ndarray:
    """Return one labelling per orbit of the group: with two or more species, not periodic in a smaller cell."""
    labels = np.array(list(itertools.product(range(n_species), repeat=n_sites)), dtype=np.int64)
    weights = n_species ** np.arange(n_sites - 1, -1, -1, dtype=np.int64)
    codes = labels @ weights
    canonical = codes.copy()
    for permutation in group:
        np.minimum(canonical, labels[:, permutation] @ weights, out=canonical)
    keep = canonical == codes
    keep &= np.array([len(set(row)) >= 2 for row in labels.tolist()]) if n_sites > 1 else False
    for permutation in translations:
        keep &= ~np.all(labels[:, permutation] == labels, axis=1)
    return labels[keep]


def _formula(counts: Mapping[str, int], elements: Sequence[str]) -> str:
    divisor = math.gcd(*[counts[el] for el in elements if counts.get(el)])
    parts = []
    for el in elements:
        n = counts.get(el, 0) // divisor
        if n:
            parts.append(el if n == 1 else f'{el}{n}')
    return ''.join(parts)


def _element_volume(element: str, lattice: str, a: Mapping[str, float] | None) -> float:
    if a and element in a:
        return volume_from_lattice_constant(float(a[element]), lattice)
    return atomic_volume(element)


def enumerate_decorations(lattice: str, n_atoms: int, n_species: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return the symmetry-distinct decorations of the ``lattice`` with exactly ``n_atoms`` atoms per cell.

    :return: ``(hnf, labels)`` pairs: the superlattice (columns in parent coordinates) and a labelling (species
        index of every site, sites ordered as lattice point then basis atom); only labellings with at least two
        species that are not periodic in a smaller cell.
    """
    n_basis = LATTICES[lattice]
    if n_atoms % n_basis:
        return []
    m = n_atoms // n_basis
    decorations = []
    for h in _superlattices(lattice, m):
        _, group, translations = _site_permutations(lattice, h)
        for labels in _labellings(n_atoms, n_species, group, translations):
            decorations.append((h, labels))
    return decorations


def _build(lattice: str, h: np.ndarray, labels: np.ndarray, elements: Sequence[str], volume: float) -> Structure:
    vectors, basis = _parent(lattice)
    a, c, f = int(h[0, 0]), int(h[1, 1]), int(h[2, 2])
    points = np.array(list(itertools.product(range(a), range(c), range(f))), dtype=float)
    super_vectors = h.T.astype(float) @ vectors  # row i: sum_j h[j, i] a_j
    cartesian = (points[:, None, :] + basis[None, :, :]).reshape(-1, 3) @ vectors
    species = [elements[i] for i in labels]
    structure = Structure(Lattice(super_vectors), species, cartesian, coords_are_cartesian=True, to_unit_cell=True)
    structure.scale_lattice(volume)
    return structure


def generate_candidates(
    elements: Sequence[str],
    lattices: Sequence[str] = ('fcc', 'bcc', 'hcp'),
    max_atoms: int = 4,
    a: Mapping[str, float] | None = None,
    include_elements: bool = False,
    max_candidates: int | None = None,
) -> list[tuple[str, Structure]]:
    """Return every symmetry-distinct ordered decoration of small fcc, bcc and hcp cells by ``elements``.

    Cells of 1 to ``max_atoms`` atoms (primitive fcc and bcc cells and their supercells; the 2-atom hcp cell and
    its supercells, so even sizes only), with at least two different elements (binaries, and ternaries for three
    elements). Structures are enumerated by superlattice (Hermite normal form) and symmetry-reduced decoration
    (Hart and Forcade 2008), then deduplicated with pymatgen's ``StructureMatcher`` per composition.

    The volume of a candidate is the sum of the volumes per atom of its elements (Vegard's law in volume); the
    volume per atom of an element is that of its ase reference state (or its covalent radius), or, when ``a``
    gives the element's lattice constant, that of the element in the lattice being decorated with constant
    ``a[element]`` (Å; ideal c/a for hcp).

    Binary candidates (two elements, ``include_elements=False``), cumulative to ``max_atoms`` (after matching;
    the enumeration alone gives, per lattice, 0 2 8 27 55 135 239 629 for fcc and bcc and 0 1 1 11 11 61 61 331
    for hcp; counted up to the exchange of the two elements it gives Hart and Forcade's 2, 3, 12, 14 and 50 fcc
    structures of 2 to 6 atoms):

    ========= ===== ===== ===== ===== ===== ===== ===== =====
    max_atoms 1     2     3     4     5     6     7     8
    ========= ===== ===== ===== ===== ===== ===== ===== =====
    fcc       0     2     8     27    55    135   239   624
    bcc       0     2     8     27    55    133   237   627
    hcp       0     1     1     11    11    61    61    278
    all three 0     5     17    58    114   286   494   1300
    ========= ===== ===== ===== ===== ===== ===== ===== =====

    The default three lattices give ~500 Cu-Au candidates at ``max_atoms=7`` (494, about 10-20 s on one core,
    almost all of it in ``StructureMatcher``); ``max_atoms=8`` gives 1300 in several minutes. Cap large cells
    with ``max_candidates``, which
    stops the enumeration once that many are found (smallest cells first), so ``max_atoms=8,
    max_candidates=500`` costs little more than ``max_atoms=7``. Ternary systems give many more (fcc alone with 3
    atoms: 8 binaries per pair and 3 ternaries).

    :param elements: chemical symbols of the system (two or three; one gives only ``include_elements`` phases).
    :param lattices: parent lattices, from ``fcc``, ``bcc``, ``hcp``.
    :param max_atoms: largest number of atoms per cell.
    :param a: optional lattice constants (Å) per element, see above.
    :param include_elements: also return the pure elements on each lattice (``fcc-Cu-0`` ...).
    :param max_candidates: keep at most this many (in the order of enumeration: smallest cells first).
    :return: ``(name, structure)`` pairs, names ``<lattice>-<reduced formula in the order of elements>-<i>`` with
        ``i`` counting the structures of that lattice and formula (``fcc-CuAu3-0``).
    :raises ValueError: for an unknown element or lattice, or ``max_atoms < 1``.
    """
    elements = list(dict.fromkeys(elements))
    if not elements:
        raise ValueError('no elements given')
    for element in elements:
        atomic_volume(element)
    for lattice in lattices:
        if lattice not in LATTICES:
            raise ValueError(f'unknown lattice `{lattice}`: choose from {", ".join(LATTICES)}')
    if max_atoms < 1:
        raise ValueError(f'max_atoms must be at least 1, got {max_atoms}')

    def decorations(n_atoms: int):
        """Yield (lattice, formula, structure) of one cell size, in lattice order."""
        for lattice in lattices:
            if n_atoms == LATTICES[lattice] and include_elements:
                for i in range(len(elements)):
                    yield lattice, np.eye(3, dtype=np.int64), np.full(n_atoms, i)
            if len(elements) >= 2 and n_atoms >= 2:
                for h, labels in enumerate_decorations(lattice, n_atoms, len(elements)):
                    yield lattice, h, labels

    unique = _Deduplicator(group_by_exact_composition=True)
    items: list[tuple[str, Structure]] = []
    counters: dict[tuple[str, str], int] = {}
    limit = math.inf if max_candidates is None else max(0, int(max_candidates))
    for n_atoms in range(1, max_atoms + 1):
        for lattice, h, labels in decorations(n_atoms):
            if len(items) >= limit:
                return items
            counts = {el: int(np.sum(labels == i)) for i, el in enumerate(elements)}
            volume = sum(counts[el] * _element_volume(el, lattice, a) for el in elements)
            structure = _build(lattice, h, labels, elements, volume)
            if not unique.add(structure):
                continue
            key = (lattice, _formula(counts, elements))
            items.append((f'{key[0]}-{key[1]}-{counters.get(key, 0)}', structure))
            counters[key] = counters.get(key, 0) + 1
    return items


# ----------------------------------------------------------------------------------------------------------------
# Deduplication


class _Deduplicator:
    """Accepts structures one by one, refusing those ``StructureMatcher`` finds equal to an accepted one."""

    def __init__(self, matcher: Any = None, group_by_exact_composition: bool = False):
        from pymatgen.analysis.structure_matcher import StructureMatcher

        self.matcher = matcher or StructureMatcher()
        self.exact = group_by_exact_composition
        self.primitive = bool(getattr(self.matcher, '_primitive_cell', True))
        self.groups: dict[Any, list[Structure]] = {}

    def _reduce(self, structure: Structure) -> Structure:
        # once per structure (Niggli, then primitive, as the matcher does at every comparison otherwise)
        reduced = structure.get_reduced_structure(reduction_algo='niggli')
        return reduced.get_primitive_structure() if self.primitive else reduced

    def add(self, structure: Structure) -> bool:
        """Return whether ``structure`` is new (and remember it)."""
        composition = structure.composition
        key = (
            tuple(sorted((str(el), amount) for el, amount in composition.items()))
            if self.exact
            else composition.reduced_formula
        )
        accepted = self.groups.setdefault(key, [])
        reduced = self._reduce(structure)
        for other in accepted:
            if self.matcher.fit(other, reduced, skip_structure_reduction=True):
                return False
        accepted.append(reduced)
        return True


def deduplicate(
    items: Sequence[tuple[str, Structure]],
    matcher: Any = None,
    group_by_exact_composition: bool = False,
) -> list[tuple[str, Structure]]:
    """Return ``items`` without structures that pymatgen's ``StructureMatcher`` finds equal to an earlier one.

    Structures are first grouped by composition (reduced formula; with ``group_by_exact_composition`` the number
    of atoms too, which is right for primitive cells and faster), and only structures of one group are compared.
    Each structure is reduced (Niggli, primitive) once. Order is kept; of equal structures the first one stays.

    :param items: ``(name, structure)`` pairs.
    :param matcher: a ``StructureMatcher`` (default: pymatgen's default tolerances).
    """
    unique = _Deduplicator(matcher, group_by_exact_composition)
    return [(name, structure) for name, structure in items if unique.add(structure)]
