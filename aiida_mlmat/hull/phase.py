"""Formation energies and energies above the convex hull, for one energy model or an ensemble of models.

Every function takes plain data: ``{name: (composition, total_energy_eV)}`` where a composition is a mapping
``{element: count}`` (a formula string or a pymatgen ``Composition`` are accepted too) and the energy is the
total energy of that many atoms in eV. Energies per atom are in eV/atom.

One pymatgen :class:`~pymatgen.analysis.phase_diagram.PhaseDiagram` is built from all reference entries and all
candidate entries together. The hull energy of every candidate is then read from the lower facets of that phase
diagram in one vectorised step: a convex piecewise-linear function is the maximum of its affine pieces, so the
hull energy at a composition is the largest value of the facet planes there, and the facet that gives it is the
one whose vertices are the decomposition. This gives the same numbers as ``PhaseDiagram.get_e_above_hull(entry,
allow_negative=False)`` (to rounding, 1e-12 eV/atom) without a Python loop over the facets for every candidate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition, Element

#: ``{name: (composition, total energy in eV)}``
EnergyTable = Mapping[str, tuple[Any, float]]
#: ``{name: (composition, [total energy of member 0, member 1, ...])}``
EnsembleTable = Mapping[str, tuple[Any, Sequence[float]]]

#: Candidates closer to the hull than this (eV/atom) are reported at exactly 0.
ZERO_TOLERANCE = 1e-12
#: Fraction of a decomposition product below which it is left out of ``decomposition``.
DECOMPOSITION_TOLERANCE = 1e-8

STATUS_OK = 'ok'
STATUS_FAILED = 'failed'


class MissingReferenceError(ValueError):
    """An element of the chemical system has no elemental reference entry."""


@dataclass
class _Parsed:
    """A parsed entry: its composition, or why it cannot take part."""

    name: str
    composition: Composition | None
    reason: str = ''

    @property
    def comp(self) -> Composition:
        """The composition of a valid entry."""
        if self.composition is None:
            raise ValueError(f'`{self.name}` has no valid composition: {self.reason}')
        return self.composition

    @property
    def formula(self) -> str | None:
        if self.composition is None:
            return None
        return _reduced_formula(tuple((str(el), float(n)) for el, n in self.composition.items()))

    @property
    def n_atoms(self) -> float | None:
        return float(self.composition.num_atoms) if self.composition is not None else None

    def composition_dict(self) -> dict[str, float] | None:
        if self.composition is None:
            return None
        return {str(el): float(amount) for el, amount in self.composition.items()}


@lru_cache(maxsize=4096)
def _reduced_formula(items: tuple[tuple[str, float], ...]) -> str:
    """pymatgen's reduced formula, computed once per composition (candidates share few compositions)."""
    return Composition(dict(items)).reduced_formula


def _parse_composition(value: Any) -> Composition:
    """Return a pymatgen Composition of a mapping, formula or Composition; ``ValueError`` when it is not one."""
    if isinstance(value, Composition):
        composition = value
    else:
        try:
            composition = Composition(value)
        except Exception as exc:  # pymatgen raises ValueError, KeyError or TypeError for bad input
            raise ValueError(f'not a composition: {value!r} ({exc})') from exc
    if composition.num_atoms <= 0:
        raise ValueError(f'empty composition: {value!r}')
    if any(amount < 0 for amount in composition.values()):
        raise ValueError(f'negative amount in composition {value!r}')
    for element in composition.elements:
        if not isinstance(element, Element):
            raise ValueError(f'{getattr(element, "symbol", element)} in {value!r} is not a chemical element')
    return composition


def _is_finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _parse_references(references: Mapping[str, tuple[Any, Any]]) -> tuple[list[_Parsed], list[str]]:
    """Parse reference entries and return them with the system's elements (sorted by electronegativity).

    :raises ValueError: for a reference that is not a composition.
    :raises MissingReferenceError: when there are no references, or an element of them has no elemental entry.
    """
    parsed = []
    for name, (composition, _energy) in references.items():
        try:
            parsed.append(_Parsed(str(name), _parse_composition(composition)))
        except ValueError as exc:
            raise ValueError(f'reference `{name}`: {exc}') from exc
    if not parsed:
        raise MissingReferenceError('no reference entries given: every element needs an elemental reference')
    elements = sorted({el for p in parsed for el in p.comp.elements})
    elemental = {p.comp.elements[0] for p in parsed if p.comp.is_element}
    missing = [str(el) for el in elements if el not in elemental]
    if missing:
        raise MissingReferenceError(
            f'no elemental reference for {", ".join(missing)}: add the energy of the pure element'
            f'{"s" if len(missing) > 1 else ""} to the references'
        )
    return parsed, [str(el) for el in elements]


def _check_reference_energies(parsed: list[_Parsed], energies: np.ndarray) -> None:
    bad = [p.name for p, e in zip(parsed, energies, strict=True) if not math.isfinite(e)]
    if bad:
        raise ValueError(f'references with a non-finite energy: {", ".join(bad)}')


def _parse_candidate(name: str, composition: Any, elements: set[str]) -> _Parsed:
    try:
        parsed = _Parsed(str(name), _parse_composition(composition))
    except ValueError as exc:
        return _Parsed(str(name), None, str(exc))
    outside = sorted(str(el) for el in parsed.comp.elements if str(el) not in elements)
    if outside:
        parsed.reason = (
            f'{", ".join(outside)} outside the chemical system of the references ({"-".join(sorted(elements))})'
        )
    return parsed


class _Hull:
    """The lower hull of one PhaseDiagram as facet planes, for vectorised hull energies and decompositions."""

    def __init__(self, diagram: PhaseDiagram):
        self.diagram = diagram
        self.elements = [str(el) for el in diagram.elements]
        self.entries = diagram.qhull_entries
        if diagram.dim == 1:
            self.facets = np.zeros((1, 1), dtype=int)
            self.facets[0, 0] = self.entries.index(diagram.el_refs[diagram.elements[0]])
            self.planes = np.array([[diagram.el_refs[diagram.elements[0]].energy_per_atom]])
            self.inverse = np.ones((1, 1, 1))
            return
        data = np.asarray(diagram.qhull_data, dtype=float)
        self.facets = np.asarray(diagram.facets, dtype=int)  # (F, d) indices into qhull_entries
        vertices = data[self.facets]  # (F, d, d): d-1 coordinates and the energy per atom of every vertex
        matrix = vertices.copy()
        matrix[:, :, -1] = 1.0  # rows [x_1 .. x_{d-1}, 1]
        # facet plane E(x) = w . [x, 1] through the d vertices
        self.planes = np.linalg.solve(matrix, vertices[:, :, -1][..., None])[..., 0]  # (F, d)
        # barycentric coordinates: lambda = (M^T)^-1 [x, 1]
        self.inverse = np.linalg.inv(np.transpose(matrix, (0, 2, 1)))  # (F, d, d)

    def coordinates(self, fractions: np.ndarray) -> np.ndarray:
        """Return ``[x_1 .. x_{d-1}, 1]`` of atomic fractions (columns in the order of ``self.elements``)."""
        return np.concatenate([fractions[:, 1:], np.ones((len(fractions), 1))], axis=1)

    def evaluate(self, fractions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return the hull energy per atom, the facet and the barycentric coordinates at each composition."""
        x = self.coordinates(fractions)  # (N, d)
        values = x @ self.planes.T  # (N, F)
        facet = np.argmax(values, axis=1)
        energy = values[np.arange(len(x)), facet]
        bary = np.einsum('nij,nj->ni', self.inverse[facet], x)
        return energy, facet, bary

    def decomposition(self, facet: int, bary: np.ndarray) -> dict[str, float]:
        return {
            self.entries[index].name: float(amount)
            for index, amount in zip(self.facets[facet], bary, strict=True)
            if abs(amount) > DECOMPOSITION_TOLERANCE
        }


def _fractions(parsed: Sequence[_Parsed], elements: Sequence[str]) -> np.ndarray:
    column = {el: i for i, el in enumerate(elements)}
    fractions = np.zeros((len(parsed), len(elements)))
    for row, p in enumerate(parsed):
        total = p.comp.num_atoms
        for el, amount in p.comp.items():
            fractions[row, column[str(el)]] = amount / total
    return fractions


def _element_counts(parsed: Sequence[_Parsed], elements: Sequence[str]) -> np.ndarray:
    column = {el: i for i, el in enumerate(elements)}
    counts = np.zeros((len(parsed), len(elements)))
    for row, p in enumerate(parsed):
        for el, amount in p.comp.items():
            counts[row, column[str(el)]] = amount
    return counts


def _elemental_energies(
    references: Sequence[_Parsed], energies: np.ndarray, elements: Sequence[str]
) -> dict[str, tuple[str, float]]:
    """Return the lowest energy per atom among the elemental references of every element, and its name."""
    best: dict[str, tuple[str, float]] = {}
    for p, energy in zip(references, energies, strict=True):
        if p.comp.is_element:
            el = str(p.comp.elements[0])
            per_atom = float(energy) / p.comp.num_atoms
            if el not in best or per_atom < best[el][1]:
                best[el] = (p.name, per_atom)
    return {el: best[el] for el in elements}


def _solve(
    references: Sequence[_Parsed],
    reference_energies: np.ndarray,
    candidates: Sequence[_Parsed],
    candidate_energies: np.ndarray,
    elements: Sequence[str],
) -> dict[str, Any]:
    """One hull: return per-candidate energy per atom, formation energy, e_above_hull, facet and barycentres.

    ``candidates`` must all be valid (composition inside the system, finite energy).
    """
    entries = [PDEntry(p.comp, float(e), name=p.name) for p, e in zip(references, reference_energies, strict=True)]
    entries += [PDEntry(p.comp, float(e), name=p.name) for p, e in zip(candidates, candidate_energies, strict=True)]
    diagram = PhaseDiagram(entries, elements=[Element(el) for el in elements])
    hull = _Hull(diagram)
    n_atoms = np.array([float(p.comp.num_atoms) for p in candidates])
    energy_per_atom = candidate_energies / n_atoms if len(candidates) else np.zeros(0)
    mu = _elemental_energies(references, reference_energies, elements)
    mu_vector = np.array([mu[el][1] for el in hull.elements])
    if len(candidates):
        fractions = _fractions(candidates, hull.elements)
        hull_energy, facet, bary = hull.evaluate(fractions)
        e_form = energy_per_atom - fractions @ mu_vector
    else:
        hull_energy = facet = bary = e_form = np.zeros(0)
    e_above_hull = energy_per_atom - hull_energy
    e_above_hull[np.abs(e_above_hull) < ZERO_TOLERANCE] = 0.0
    e_above_hull = np.maximum(e_above_hull, 0.0)  # allow_negative=False: every candidate is in the diagram
    return {
        'energy_per_atom': energy_per_atom,
        'e_form_per_atom': e_form,
        'e_above_hull': e_above_hull,
        'facet': facet,
        'bary': bary,
        'hull': hull,
        'diagram': diagram,
    }


def _failed(parsed: _Parsed, reason: str, energy_per_atom: float | None = None) -> dict[str, Any]:
    return {
        'name': parsed.name,
        'formula': parsed.formula,
        'composition': parsed.composition_dict(),
        'n_atoms': parsed.n_atoms,
        'status': STATUS_FAILED,
        'reason': reason,
        'energy_per_atom': energy_per_atom,
        'e_form_per_atom': None,
        'e_form_per_atom_std': None,
        'e_above_hull': None,
        'e_above_hull_std': None,
        'p_stable': 0.0,  # no member put it on the hull: comparisons such as 0 < p_stable < 1 stay valid
        'stable': False,
    }


def build_phase_diagram(references: EnergyTable, candidates: EnergyTable | None = None) -> PhaseDiagram:
    """Return the pymatgen PhaseDiagram of all references and the valid candidates (for plots and checks)."""
    parsed_refs, elements = _parse_references(references)
    ref_energies = np.array([float(references[p.name][1]) for p in parsed_refs])
    _check_reference_energies(parsed_refs, ref_energies)
    entries = [PDEntry(p.comp, e, name=p.name) for p, e in zip(parsed_refs, ref_energies, strict=True)]
    for name, (composition, energy) in (candidates or {}).items():
        parsed = _parse_candidate(name, composition, set(elements))
        if parsed.composition is not None and not parsed.reason and _is_finite(energy):
            entries.append(PDEntry(parsed.comp, float(energy), name=parsed.name))
    return PhaseDiagram(entries, elements=[Element(el) for el in elements])


def hull_results(
    candidates: EnergyTable, references: EnergyTable, stability_tolerance: float = 1e-6
) -> dict[str, dict[str, Any]]:
    """Return the formation energy, energy above the hull and stability verdict of every candidate.

    One pymatgen PhaseDiagram is built from all reference entries plus all valid candidate entries (a candidate
    can lower the hull for the others). Formation energies are relative to the lowest-energy elemental reference
    of each element; an elemental candidate below that reference lowers the hull (pymatgen takes it as the
    terminal entry) but not the zero of the formation energies.

    :param candidates: ``{name: (composition, total energy in eV)}``.
    :param references: ``{name: (composition, total energy in eV)}``; elemental entries for every element in them,
        compounds optional.
    :param stability_tolerance: a candidate with ``e_above_hull <= stability_tolerance`` (eV/atom) is stable.
    :return: per candidate name: ``name``, ``formula`` (reduced), ``composition``, ``n_atoms``, ``status``
        (``ok`` or ``failed``), ``reason`` (empty unless failed), ``energy_per_atom``, ``e_form_per_atom``,
        ``e_form_per_atom_std`` (0), ``e_above_hull`` (>= 0), ``e_above_hull_std`` (0), ``p_stable`` (1.0 or 0.0),
        ``stable``, ``decomposition`` (``{entry name: fraction}`` of the hull phases at its composition). A failed
        candidate (not a composition, elements outside the references' system, non-finite energy) has ``None``
        for the energies, ``p_stable`` 0 and ``stable`` False; the others are computed.
    :raises MissingReferenceError: when an element of the references has no elemental entry.
    :raises ValueError: for a reference that is not a composition or has a non-finite energy.
    """
    parsed_refs, elements = _parse_references(references)
    ref_energies = np.array([float(references[p.name][1]) for p in parsed_refs])
    _check_reference_energies(parsed_refs, ref_energies)
    system = set(elements)

    results: dict[str, dict[str, Any]] = {}
    valid: list[_Parsed] = []
    valid_energies: list[float] = []
    for name, (composition, energy) in candidates.items():
        parsed = _parse_candidate(name, composition, system)
        if parsed.composition is None or parsed.reason:
            results[parsed.name] = _failed(parsed, parsed.reason)
        elif not _is_finite(energy):
            results[parsed.name] = _failed(parsed, f'energy is not a finite number: {energy!r}')
        else:
            results[parsed.name] = {}
            valid.append(parsed)
            valid_energies.append(float(energy))

    solved = _solve(parsed_refs, ref_energies, valid, np.array(valid_energies, dtype=float), elements)
    hull = solved['hull']
    for i, parsed in enumerate(valid):
        e_hull = float(solved['e_above_hull'][i])
        stable = e_hull <= stability_tolerance
        results[parsed.name] = {
            'name': parsed.name,
            'formula': parsed.formula,
            'composition': parsed.composition_dict(),
            'n_atoms': parsed.n_atoms,
            'status': STATUS_OK,
            'reason': '',
            'energy_per_atom': float(solved['energy_per_atom'][i]),
            'e_form_per_atom': float(solved['e_form_per_atom'][i]),
            'e_form_per_atom_std': 0.0,
            'e_above_hull': e_hull,
            'e_above_hull_std': 0.0,
            'p_stable': 1.0 if stable else 0.0,
            'stable': bool(stable),
            'decomposition': hull.decomposition(int(solved['facet'][i]), solved['bary'][i]),
        }
    return results


def ensemble_hull(
    candidates_members: EnsembleTable, references_members: EnsembleTable, tolerance: float = 1e-6
) -> dict[str, dict[str, Any]]:
    """Return hull distances with their spread over an ensemble of energy models (one hull per member).

    Member ``m`` of every candidate and every reference is the total energy from model ``m``; for each member a
    phase diagram of all references and candidates is built as in :func:`hull_results`.

    :param candidates_members: ``{name: (composition, [total energy of member 0, member 1, ...])}``.
    :param references_members: ``{name: (composition, [total energies])}``, the same number of members each.
    :param tolerance: a member puts a candidate on the hull when its ``e_above_hull <= tolerance`` (eV/atom).
    :return: per candidate name the keys of :func:`hull_results` (without ``decomposition``) where
        ``e_above_hull``, ``e_form_per_atom`` and ``energy_per_atom`` are member means, ``e_above_hull_std`` and
        ``e_form_per_atom_std`` the population standard deviations (ddof 0; 0 for one member), ``p_stable`` the
        fraction of members that put the candidate on the hull, ``stable`` whether more than half of them do
        (``p_stable > 0.5``: a tie, one of two members, is uncertain, not stable),
        ``members`` the per-member ``e_above_hull`` and ``n_members``. A candidate whose member list has the
        wrong length or a non-finite energy fails, as do candidates outside the references' system.
    :raises MissingReferenceError: when an element of the references has no elemental entry.
    :raises ValueError: when references have different numbers of members, none, or non-finite energies.
    """
    parsed_refs, elements = _parse_references(references_members)
    ref_table = []
    for p in parsed_refs:
        member_energies = np.asarray(references_members[p.name][1], dtype=float).ravel()
        ref_table.append(member_energies)
    lengths = {len(row) for row in ref_table}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(
            'every reference needs the same, non-zero number of member energies; got '
            + ', '.join(f'{p.name}: {len(row)}' for p, row in zip(parsed_refs, ref_table, strict=True))
        )
    n_members = lengths.pop()
    ref_energies = np.stack(ref_table)  # (R, M)
    _check_reference_energies(parsed_refs, ref_energies.sum(axis=1))
    system = set(elements)

    results: dict[str, dict[str, Any]] = {}
    valid: list[_Parsed] = []
    valid_energies: list[np.ndarray] = []
    for name, (composition, energies) in candidates_members.items():
        parsed = _parse_candidate(name, composition, system)
        if parsed.composition is None or parsed.reason:
            results[parsed.name] = _failed(parsed, parsed.reason)
            continue
        try:
            member_energies = np.asarray(energies, dtype=float).ravel()
        except (TypeError, ValueError):
            results[parsed.name] = _failed(parsed, f'member energies are not numbers: {energies!r}')
            continue
        if len(member_energies) != n_members:
            results[parsed.name] = _failed(
                parsed, f'{len(member_energies)} member energies where the references have {n_members}'
            )
        elif not np.isfinite(member_energies).all():
            results[parsed.name] = _failed(parsed, f'non-finite member energy: {member_energies.tolist()}')
        else:
            results[parsed.name] = {}
            valid.append(parsed)
            valid_energies.append(member_energies)

    cand_energies = np.stack(valid_energies) if valid else np.zeros((0, n_members))  # (N, M)
    e_hull = np.zeros((len(valid), n_members))
    e_form = np.zeros((len(valid), n_members))
    e_atom = np.zeros((len(valid), n_members))
    for member in range(n_members):
        solved = _solve(parsed_refs, ref_energies[:, member], valid, cand_energies[:, member], elements)
        e_hull[:, member] = solved['e_above_hull']
        e_form[:, member] = solved['e_form_per_atom']
        e_atom[:, member] = solved['energy_per_atom']
    on_hull = e_hull <= tolerance
    for i, parsed in enumerate(valid):
        p_stable = float(on_hull[i].mean())
        results[parsed.name] = {
            'name': parsed.name,
            'formula': parsed.formula,
            'composition': parsed.composition_dict(),
            'n_atoms': parsed.n_atoms,
            'status': STATUS_OK,
            'reason': '',
            'energy_per_atom': float(e_atom[i].mean()),
            'energy_per_atom_std': float(e_atom[i].std()),
            'e_form_per_atom': float(e_form[i].mean()),
            'e_form_per_atom_std': float(e_form[i].std()),
            'e_above_hull': float(e_hull[i].mean()),
            'e_above_hull_std': float(e_hull[i].std()),
            'p_stable': p_stable,
            'stable': p_stable > 0.5,
            'members': [float(v) for v in e_hull[i]],
            'n_members': n_members,
        }
    return results


def reference_energies_per_atom(references: EnergyTable) -> dict[str, float]:
    """Return the lowest elemental-reference energy per atom of every element (eV/atom)."""
    parsed, elements = _parse_references(references)
    energies = np.array([float(references[p.name][1]) for p in parsed])
    return {el: value for el, (_name, value) in _elemental_energies(parsed, energies, elements).items()}
