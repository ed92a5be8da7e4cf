"""Formation energies and energies above the hull: hand-computed binary, pymatgen equality, ensembles, failures."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition

from aiida_mlmat.hull.phase import (
    MissingReferenceError,
    build_phase_diagram,
    ensemble_hull,
    hull_results,
    reference_energies_per_atom,
)

pytestmark = pytest.mark.unit

#: Elemental references: Cu at -4 eV/atom, Au at -3 eV/atom.
REFERENCES = {'Cu-fcc': ({'Cu': 1}, -4.0), 'Au-fcc': ({'Au': 2}, -6.0)}


def total(cu: int, au: int, e_form: float) -> float:
    """Total energy (eV) of Cu_cu Au_au with formation energy ``e_form`` eV/atom."""
    return -4.0 * cu - 3.0 * au + (cu + au) * e_form


@pytest.fixture
def binary():
    """Hull through Cu (x=0), CuAu (x=0.5, -0.5 eV/atom), CuAu3 (x=0.75, -0.3), Au (x=1).

    Cu3Au (x=0.25) at -0.2 eV/atom lies 0.05 eV/atom above the hull (-0.25 there); a second CuAu at -0.4 lies 0.1
    above; an hcp Cu at +0.02 eV/atom lies 0.02 above.
    """
    return {
        'CuAu': ({'Cu': 1, 'Au': 1}, total(1, 1, -0.5)),
        'CuAu-b': ({'Cu': 2, 'Au': 2}, total(2, 2, -0.4)),
        'Cu3Au': ({'Cu': 3, 'Au': 1}, total(3, 1, -0.2)),
        'CuAu3': ({'Cu': 1, 'Au': 3}, total(1, 3, -0.3)),
        'Cu-hcp': ({'Cu': 2}, total(2, 0, 0.02)),
    }


def test_hand_computed_binary(binary):
    results = hull_results(binary, REFERENCES)
    expected = {
        'CuAu': (-0.5, 0.0, True),
        'CuAu-b': (-0.4, 0.1, False),
        'Cu3Au': (-0.2, 0.05, False),
        'CuAu3': (-0.3, 0.0, True),
        'Cu-hcp': (0.02, 0.02, False),
    }
    for name, (e_form, e_hull, stable) in expected.items():
        entry = results[name]
        assert entry['status'] == 'ok'
        assert entry['reason'] == ''
        assert entry['e_form_per_atom'] == pytest.approx(e_form, abs=1e-12)
        assert entry['e_above_hull'] == pytest.approx(e_hull, abs=1e-12)
        assert entry['stable'] is stable
        assert entry['p_stable'] == (1.0 if stable else 0.0)
        assert entry['e_above_hull_std'] == 0.0
    assert results['Cu3Au']['energy_per_atom'] == pytest.approx((-12.0 - 3.0 - 0.8) / 4)
    assert results['Cu3Au']['formula'] == 'Cu3Au'
    assert results['Cu3Au']['n_atoms'] == 4
    # Cu3Au decomposes into half (by atoms) Cu and half CuAu
    assert results['Cu3Au']['decomposition'] == pytest.approx({'Cu-fcc': 0.5, 'CuAu': 0.5})
    assert results['CuAu']['decomposition'] == pytest.approx({'CuAu': 1.0})


def test_stability_tolerance(binary):
    results = hull_results(binary, REFERENCES, stability_tolerance=0.06)
    assert results['Cu3Au']['stable'] is True
    assert results['CuAu-b']['stable'] is False


def test_formation_energy_uses_lowest_elemental_reference(binary):
    references = {**REFERENCES, 'Cu-bcc': ({'Cu': 1}, -3.9)}
    results = hull_results(binary, references)
    assert results['CuAu']['e_form_per_atom'] == pytest.approx(-0.5)
    assert reference_energies_per_atom(references) == {'Au': -3.0, 'Cu': -4.0}


def test_reference_compound_on_the_hull(binary):
    references = {**REFERENCES, 'Cu3Au-known': ({'Cu': 3, 'Au': 1}, total(3, 1, -0.3))}
    results = hull_results(binary, references)
    # the hull at x=0.25 is now the known compound: -0.3 eV/atom
    assert results['Cu3Au']['e_above_hull'] == pytest.approx(0.1)
    assert results['Cu3Au']['decomposition'] == pytest.approx({'Cu3Au-known': 1.0})


def random_system(rng, elements, n):
    energies = {'Cu': -3.7, 'Au': -3.2, 'Ag': -2.8, 'Pd': -5.1}
    references = {el: ({el: 1}, energies[el]) for el in elements}
    candidates = {}
    for i in range(n):
        size = int(rng.integers(2, 9))
        while True:
            counts = rng.multinomial(size, [1 / len(elements)] * len(elements))
            if (counts > 0).sum() >= 2:
                break
        composition = {el: int(c) for el, c in zip(elements, counts, strict=True) if c}
        reference = sum(energies[el] * c for el, c in composition.items())
        candidates[f'c{i}'] = (composition, reference + size * rng.normal(-0.05, 0.08))
    return candidates, references


@pytest.mark.parametrize('elements', [('Cu', 'Au'), ('Cu', 'Au', 'Ag'), ('Cu', 'Au', 'Ag', 'Pd')])
def test_equal_to_direct_pymatgen(elements):
    rng = np.random.default_rng(len(elements))
    candidates, references = random_system(rng, elements, 300)
    results = hull_results(candidates, references)

    reference_entries = [PDEntry(Composition(c), e, name=n) for n, (c, e) in references.items()]
    candidate_entries = [PDEntry(Composition(c), e, name=n) for n, (c, e) in candidates.items()]
    diagram = PhaseDiagram(reference_entries + candidate_entries)
    n_stable = 0
    for entry in candidate_entries:
        ours = results[entry.name]
        assert ours['e_above_hull'] == pytest.approx(diagram.get_e_above_hull(entry, allow_negative=False), abs=1e-9)
        assert ours['e_form_per_atom'] == pytest.approx(diagram.get_form_energy_per_atom(entry), abs=1e-9)
        assert ours['energy_per_atom'] == pytest.approx(entry.energy_per_atom, abs=1e-12)
        decomposition = {e.name: amount for e, amount in diagram.get_decomposition(entry.composition).items()}
        assert ours['decomposition'] == pytest.approx(decomposition, abs=1e-9)
        n_stable += ours['stable']
    assert n_stable == len([e for e in diagram.stable_entries if e.name.startswith('c')])
    assert n_stable > 0


def test_build_phase_diagram(binary):
    diagram = build_phase_diagram(REFERENCES, binary)
    assert len(diagram.all_entries) == len(REFERENCES) + len(binary)
    assert {e.name for e in diagram.stable_entries} == {'Cu-fcc', 'Au-fcc', 'CuAu', 'CuAu3'}


def test_missing_reference_names_the_element(binary):
    references = {'Cu-fcc': ({'Cu': 1}, -4.0), 'CuAu-known': ({'Cu': 1, 'Au': 1}, -8.0)}
    with pytest.raises(MissingReferenceError, match='Au'):
        hull_results(binary, references)
    with pytest.raises(MissingReferenceError, match='Au'):
        ensemble_hull({}, {k: (c, [e]) for k, (c, e) in references.items()})
    with pytest.raises(MissingReferenceError):
        hull_results(binary, {})


def test_missing_reference_is_a_value_error():
    assert issubclass(MissingReferenceError, ValueError)


def test_element_outside_the_system_fails_alone(binary):
    candidates = {**binary, 'CuFe': ({'Cu': 1, 'Fe': 1}, -9.0), 'Ag': ({'Ag': 1}, -2.0)}
    results = hull_results(candidates, REFERENCES)
    for name in ('CuFe', 'Ag'):
        assert results[name]['status'] == 'failed'
        assert results[name]['e_above_hull'] is None
        assert results[name]['stable'] is False
        assert results[name]['p_stable'] == 0.0
    assert 'Fe' in results['CuFe']['reason']
    assert 'Au-Cu' in results['CuFe']['reason']
    assert 'Ag' in results['Ag']['reason']
    # the others are as without them
    assert results['Cu3Au']['e_above_hull'] == pytest.approx(0.05)
    assert results['CuAu']['stable'] is True


def test_bad_candidates_fail_alone(binary):
    candidates = {
        **binary,
        'nan': ({'Cu': 1, 'Au': 1}, float('nan')),
        'none': ({'Cu': 1, 'Au': 1}, None),
        'empty': ({}, -1.0),
        'dummy': ('Xx2', -1.0),
    }
    results = hull_results(candidates, REFERENCES)
    for name in ('nan', 'none', 'empty', 'dummy'):
        assert results[name]['status'] == 'failed', name
        assert results[name]['reason']
    assert 'finite' in results['nan']['reason']
    assert results['Cu3Au']['e_above_hull'] == pytest.approx(0.05)


def test_bad_reference_raises(binary):
    with pytest.raises(ValueError, match='Au-fcc'):
        hull_results(binary, {**REFERENCES, 'Au-fcc': ({'Au': 1}, float('nan'))})


def test_formula_string_and_composition_inputs():
    results = hull_results(
        {'a': ('CuAu', total(1, 1, -0.5)), 'b': (Composition('Cu3Au'), total(3, 1, -0.2))},
        {'Cu': ('Cu', -4.0), 'Au': (Composition('Au'), -3.0)},
    )
    assert results['b']['e_above_hull'] == pytest.approx(0.05)


def test_no_candidates():
    assert hull_results({}, REFERENCES) == {}
    assert ensemble_hull({}, {k: (c, [e]) for k, (c, e) in REFERENCES.items()}) == {}


def members_of(table, n_members, shifts=None):
    shifts = shifts or {}
    return {
        name: (c, [e + shifts.get(name, [0.0] * n_members)[m] for m in range(n_members)])
        for name, (c, e) in table.items()
    }


def test_ensemble_with_agreeing_members_equals_one_model(binary):
    single = hull_results(binary, REFERENCES)
    ensemble = ensemble_hull(members_of(binary, 3), members_of(REFERENCES, 3), 1e-6)
    for name, entry in ensemble.items():
        assert entry['p_stable'] in (0.0, 1.0)
        assert entry['p_stable'] == (1.0 if single[name]['stable'] else 0.0)
        assert entry['stable'] is single[name]['stable']
        assert entry['e_above_hull_std'] == 0.0
        assert entry['e_form_per_atom_std'] == 0.0
        assert entry['e_above_hull'] == pytest.approx(single[name]['e_above_hull'], abs=1e-12)
        assert entry['e_form_per_atom'] == pytest.approx(single[name]['e_form_per_atom'], abs=1e-12)
        assert entry['members'] == pytest.approx([single[name]['e_above_hull']] * 3, abs=1e-12)
        assert entry['n_members'] == 3


def test_ensemble_with_one_member(binary):
    ensemble = ensemble_hull(members_of(binary, 1), members_of(REFERENCES, 1))
    assert {entry['p_stable'] for entry in ensemble.values()} <= {0.0, 1.0}
    assert all(entry['e_above_hull_std'] == 0.0 for entry in ensemble.values())


def test_ensemble_with_disagreeing_members(binary):
    # member 1 puts Cu3Au 0.1 eV/atom lower (on the hull, -0.3 < -0.25); members 0, 2, 3 agree with the fixture
    shifts = {'Cu3Au': [0.0, -0.4, 0.0, 0.0]}
    ensemble = ensemble_hull(members_of(binary, 4, shifts), members_of(REFERENCES, 4), 1e-6)
    entry = ensemble['Cu3Au']
    assert entry['p_stable'] == 0.25
    assert entry['stable'] is False
    assert entry['members'] == pytest.approx([0.05, 0.0, 0.05, 0.05])
    assert entry['e_above_hull'] == pytest.approx(0.0375)
    assert entry['e_above_hull_std'] == pytest.approx(np.std([0.05, 0.0, 0.05, 0.05]))
    assert entry['e_form_per_atom'] == pytest.approx(np.mean([-0.2, -0.3, -0.2, -0.2]))
    assert entry['e_form_per_atom_std'] == pytest.approx(np.std([-0.2, -0.3, -0.2, -0.2]))
    # in member 1, Cu3Au on the hull lifts nothing else off it: CuAu stays stable in every member
    assert ensemble['CuAu']['p_stable'] == 1.0

    half = ensemble_hull(members_of(binary, 2, {'Cu3Au': [0.0, -0.4]}), members_of(REFERENCES, 2))
    assert half['Cu3Au']['p_stable'] == 0.5
    assert half['Cu3Au']['stable'] is False  # a tie is uncertain: more than half of the members must agree
    assert half['CuAu']['stable'] is True


def test_ensemble_reference_members_differ(binary):
    # member 1 lowers the Cu reference by 0.1 eV/atom: every formation energy in member 1 changes
    references = {'Cu-fcc': ({'Cu': 1}, [-4.0, -4.1]), 'Au-fcc': ({'Au': 2}, [-6.0, -6.0])}
    ensemble = ensemble_hull(members_of(binary, 2), references)
    assert ensemble['CuAu']['members'][0] == 0.0
    assert ensemble['CuAu']['e_form_per_atom'] == pytest.approx(np.mean([-0.5, -0.45]))


def test_ensemble_failures(binary):
    candidates = members_of(binary, 2)
    candidates['short'] = ({'Cu': 1, 'Au': 1}, [-8.0])
    candidates['nan'] = ({'Cu': 1, 'Au': 1}, [-8.0, float('nan')])
    candidates['CuFe'] = ({'Cu': 1, 'Fe': 1}, [-8.0, -8.0])
    ensemble = ensemble_hull(candidates, members_of(REFERENCES, 2))
    for name in ('short', 'nan', 'CuFe'):
        assert ensemble[name]['status'] == 'failed'
        assert ensemble[name]['reason']
    assert '1 member energies' in ensemble['short']['reason']
    assert ensemble['Cu3Au']['e_above_hull'] == pytest.approx(0.05)
    with pytest.raises(ValueError, match='same'):
        ensemble_hull(members_of(binary, 2), {'Cu-fcc': ({'Cu': 1}, [-4.0, -4.0]), 'Au-fcc': ({'Au': 1}, [-3.0])})


def test_hull_results_speed_is_reported(binary):
    """``hull_results`` on 500 random binary Cu-Au candidates: every one ``ok`` with a finite ``e_above_hull`` >= 0
    (eV/atom), within 5 s. That bound is a coarse guard against a pathological slowdown (the call takes about
    0.1 s on a developer machine, 50 times less), not a speed measurement: ``benchmarks/screening.py`` measures the
    speed against a bare pymatgen loop."""
    import time

    candidates, references = random_system(np.random.default_rng(0), ('Cu', 'Au'), 500)
    start = time.perf_counter()
    results = hull_results(candidates, references)
    elapsed = time.perf_counter() - start  # s
    assert len(results) == 500
    assert all(entry['status'] == 'ok' for entry in results.values())
    above = np.array([entry['e_above_hull'] for entry in results.values()])
    assert np.all(np.isfinite(above)) and above.min() >= -1e-12
    assert elapsed < 5.0, elapsed
