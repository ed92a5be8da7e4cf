"""Chebyshev and ACSF descriptors of :mod:`aiida_mlmat.ml.descriptors`: symmetry, smoothness, gradients, references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.data import atomic_numbers
from ase.neighborlist import neighbor_list

from aiida_mlmat.ml.descriptors import (
    Descriptor,
    DescriptorSpec,
    UnknownSpeciesError,
    chebyshev,
    compute,
    feature_names,
    species_weights,
)
from aiida_mlmat.ml.neighbours import CutoffError, build_graph, triplets
from tests.conftest import require_or_skip

pytestmark = pytest.mark.unit

KINDS = ('chebyshev', 'acsf')


# --- structures ----------------------------------------------------------------------------------------------


def alloy_cell(seed: int = 0, distortion: float = 0.0, species: tuple[str, ...] = ('Cu', 'Au')) -> Atoms:
    """A rattled 32-atom fcc cell decorated with ``species``; sheared into a triclinic cell with ``distortion``."""
    rng = np.random.default_rng(seed)
    atoms = bulk('Cu', 'fcc', a=3.8, cubic=True).repeat((2, 2, 2))
    atoms.set_chemical_symbols([species[k % len(species)] for k in rng.permutation(len(atoms))])
    if distortion:
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + distortion * rng.uniform(-1, 1, (3, 3))), scale_atoms=True)
    atoms.positions += rng.normal(scale=0.1, size=atoms.positions.shape)
    return atoms


def small_cell(seed: int = 0, symbols: str = 'CuAu') -> Atoms:
    """A triclinic cell of one to three atoms, 2.2-3.8 Å wide.

    A 5 Å cutoff reaches many periodic images, the atom's own included.
    """
    rng = np.random.default_rng(seed)
    atoms = Atoms(symbols, pbc=True)
    atoms.cell = 2.6 * len(atoms) ** (1 / 3) * (np.eye(3) + 0.15 * rng.uniform(-1, 1, (3, 3)))
    atoms.set_scaled_positions([[0.0, 0.0, 0.0], [0.45, 0.55, 0.5], [0.8, 0.2, 0.35]][: len(atoms)])
    atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
    return atoms


def cluster(seed: int = 0, species: tuple[str, ...] = ('Cu', 'Au'), n_max: int = 14) -> Atoms:
    """A random non-periodic cluster with interatomic distances above 2.2 Å."""
    rng = np.random.default_rng(seed)
    kept = [np.zeros(3)]
    while len(kept) < n_max:
        p = rng.uniform(-3.2, 3.2, 3)
        if min(np.linalg.norm(p - q) for q in kept) > 2.2:
            kept.append(p)
    return Atoms([species[k % len(species)] for k in range(len(kept))], positions=kept)


def make_spec(kind: str, species=('Cu', 'Au'), rcut: float = 4.5, **kwargs) -> DescriptorSpec:
    if kind == 'chebyshev':
        kwargs = {'rcut_angular': rcut - 0.7, 'n_radial': 7, 'n_angular': 5, **kwargs}
    else:
        kwargs = {
            'g2': ((0.05, 0.0), (0.4, 2.5), (1.0, 3.2)),
            'g4': ((0.005, 1.0, 1.0), (0.005, 1.0, -1.0), (0.02, 2.0, 1.0), (0.01, 4.0, -1.0)),
            **kwargs,
        }
    return DescriptorSpec(kind, tuple(species), rcut=rcut, **kwargs)


def descriptors(atoms: Atoms, spec: DescriptorSpec) -> np.ndarray:
    return compute([atoms], spec)[0]


def random_rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


STRUCTURES = {
    'cell': lambda: alloy_cell(0),
    'triclinic': lambda: alloy_cell(1, distortion=0.12),
    'cluster': lambda: cluster(2),
}


# --- 1. invariances ------------------------------------------------------------------------------------------


@pytest.mark.parametrize('name', list(STRUCTURES))
@pytest.mark.parametrize('kind', KINDS)
def test_rotation_invariance(kind, name):
    atoms = STRUCTURES[name]()
    spec = make_spec(kind)
    reference = descriptors(atoms, spec)
    rotation = random_rotation(7)
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ rotation.T
    if atoms.pbc.all():
        rotated.cell = atoms.cell.array @ rotation.T
    assert np.abs(reference).max() > 1.0
    assert np.abs(descriptors(rotated, spec) - reference).max() < 1e-10


@pytest.mark.parametrize('name', list(STRUCTURES))
@pytest.mark.parametrize('kind', KINDS)
def test_translation_invariance(kind, name):
    atoms = STRUCTURES[name]()
    spec = make_spec(kind)
    reference = descriptors(atoms, spec)
    for shift in ([3.1, -7.25, 11.5], [-0.37, 0.01, 0.2]):
        moved = atoms.copy()
        moved.positions += shift  # not wrapped back into the cell
        assert np.abs(descriptors(moved, spec) - reference).max() < 1e-10
    if atoms.pbc.all():
        wrapped = atoms.copy()
        wrapped.wrap()
        assert np.abs(descriptors(wrapped, spec) - reference).max() < 1e-10


@pytest.mark.parametrize('like_only', [True, False])
@pytest.mark.parametrize('name', list(STRUCTURES))
@pytest.mark.parametrize('kind', KINDS)
def test_permutation_equivariance(kind, name, like_only):
    atoms = STRUCTURES[name]()
    spec = make_spec(kind)
    reference = descriptors(atoms, spec)
    rng = np.random.default_rng(11)
    if like_only:
        # swap atoms of the same species only: the chemical-symbol array is unchanged
        perm = np.arange(len(atoms))
        for number in set(atoms.numbers):
            where = np.flatnonzero(atoms.numbers == number)
            perm[where] = rng.permutation(where)
        assert not np.array_equal(perm, np.arange(len(atoms)))
        assert np.array_equal(atoms.numbers[perm], atoms.numbers)
    else:
        perm = rng.permutation(len(atoms))
    permuted = atoms[perm]
    got = descriptors(permuted, spec)
    assert np.abs(got - reference[perm]).max() < 1e-10
    # and the permutation is not trivially absorbed: distinct atoms have distinct descriptors
    assert np.abs(reference[perm] - reference).max() > 1e-3


# --- 2. continuity at the cutoff -----------------------------------------------------------------------------


def features_and_gradient(atoms: Atoms, spec: DescriptorSpec, rows=slice(None), columns=slice(None)):
    """Descriptors[rows, columns] and the gradient of their plain sum with respect to the positions."""
    graph = build_graph([atoms], spec.rcut)
    graph.positions.requires_grad_(True)
    values = Descriptor(spec)(graph)[rows, columns]
    (grad,) = torch.autograd.grad(values.sum(), graph.positions)
    assert torch.isfinite(grad).all()
    return values.detach().numpy(), grad.numpy()


def dimer(r: float) -> Atoms:
    return Atoms('CuAu', positions=[[0.0, 0.0, 0.0], [r * 0.6, r * 0.8, 0.0]])


def hinge_trimer(r_jk: float) -> Atoms:
    """j and k at fixed distances 2.0 and 2.6 Å from i; the angle at i sets r_jk, which crosses the cutoff."""
    theta = np.arccos((2.0**2 + 2.6**2 - r_jk**2) / (2 * 2.0 * 2.6))
    return Atoms(
        'AuCuCu', positions=[[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [2.6 * np.cos(theta), 2.6 * np.sin(theta), 0.0]]
    )


def bent_trimer(r_ik: float) -> Atoms:
    """k crosses the cutoff of i (atom 0) along a fixed direction while j stays well inside."""
    direction = np.array([np.cos(1.2), np.sin(1.2), 0.0])
    return Atoms('CuAuCu', positions=[[0.0, 0.0, 0.0], [2.4, 0.0, 0.0], r_ik * direction])


@pytest.mark.parametrize('kind', KINDS)
def test_dimer_continuous_at_cutoff(kind):
    spec = make_spec(kind, rcut_angular=None) if kind == 'chebyshev' else make_spec(kind)
    eps = 1e-6
    inside, grad_inside = features_and_gradient(dimer(spec.rcut - eps), spec)
    outside, grad_outside = features_and_gradient(dimer(spec.rcut + eps), spec)
    assert np.abs(outside).max() == 0.0
    assert np.abs(grad_outside).max() == 0.0
    assert np.abs(inside - outside).max() < 1e-8
    # f_c'(R_c) = 0: f_c'(R_c - eps) ~ pi^2 eps / (2 R_c^2), so the gradient just inside is O(eps)
    assert np.abs(grad_inside - grad_outside).max() < 1e-5
    # the test is not vacuous: well inside the cutoff, features and gradients are sizeable
    values, grad = features_and_gradient(dimer(spec.rcut - 0.8), spec)
    assert np.abs(values).max() > 1e-2
    assert np.abs(grad).max() > 1e-2


def assert_continuous(make, crossing: float, spec: DescriptorSpec, rows=slice(None), columns=slice(None)) -> None:
    eps = 1e-6
    below, grad_below = features_and_gradient(make(crossing - eps), spec, rows, columns)
    above, grad_above = features_and_gradient(make(crossing + eps), spec, rows, columns)
    assert np.abs(below - above).max() < 1e-8
    assert np.abs(grad_below - grad_above).max() < 1e-5
    far, _ = features_and_gradient(make(crossing - 0.6), spec, rows, columns)
    assert np.abs(far - above).max() > 1e-3  # the crossing term does contribute when inside


def test_acsf_g4_continuous_when_r_jk_crosses_cutoff():
    spec = make_spec('acsf')
    # only G4 of i changes with the angle (r_ij, r_ik fixed); f_c(r_jk) switches the triplet off smoothly
    assert_continuous(hinge_trimer, spec.rcut, spec, rows=0)


@pytest.mark.parametrize('kind', KINDS)
def test_trimer_continuous_when_neighbour_leaves(kind):
    spec = make_spec(kind, rcut_angular=None) if kind == 'chebyshev' else make_spec(kind)
    assert_continuous(bent_trimer, spec.rcut, spec, rows=0)


def test_chebyshev_angular_continuous_at_angular_cutoff():
    spec = make_spec('chebyshev', rcut_angular=3.8)
    n_rad, n_ang = spec.n_radial, spec.n_angular
    angular = np.r_[n_rad : n_rad + n_ang, 2 * n_rad + n_ang : 2 * (n_rad + n_ang)]
    assert_continuous(bent_trimer, spec.angular_cutoff, spec, rows=0, columns=torch.tensor(angular))


@pytest.mark.parametrize('kind', KINDS)
def test_gradient_finite_for_axis_aligned_bonds(kind):
    """Unit-vector components exactly 0 or +-1 (x**0, x**1 at x = 0 in the moment tensors) give finite gradients."""
    atoms = Atoms('CuAuCuAu', positions=[[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0], [0, 0, 2.5]])
    spec = make_spec(kind)
    values, grad = features_and_gradient(atoms, spec)
    assert np.isfinite(values).all()
    assert np.abs(grad).max() > 1e-3


# --- 3. autograd versus finite differences -------------------------------------------------------------------


def small_alloy(seed: int) -> Atoms:
    """An 8-atom triclinic Cu-Au cell (periodic images within the cutoff)."""
    rng = np.random.default_rng(seed)
    atoms = bulk('Cu', 'fcc', a=3.7, cubic=True).repeat((2, 1, 1))
    atoms.set_chemical_symbols(['Cu', 'Au', 'Cu', 'Cu', 'Au', 'Cu', 'Au', 'Cu'])
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.1 * rng.uniform(-1, 1, (3, 3))), scale_atoms=True)
    atoms.positions += rng.normal(scale=0.12, size=atoms.positions.shape)
    return atoms


@pytest.mark.parametrize('periodic', [True, False])
@pytest.mark.parametrize('kind', KINDS)
def test_autograd_matches_finite_differences(kind, periodic):
    atoms = small_alloy(3) if periodic else cluster(4, n_max=7)
    spec = make_spec(kind)
    rng = np.random.default_rng(5)
    weights = rng.normal(size=spec.n_features)

    graph = build_graph([atoms], spec.rcut)
    graph.positions.requires_grad_(True)
    loss = (Descriptor(spec)(graph) * torch.tensor(weights)).sum()
    (autograd,) = torch.autograd.grad(loss, graph.positions)

    def energy(positions: np.ndarray) -> float:
        displaced = atoms.copy()
        displaced.positions = positions
        return float((descriptors(displaced, spec) * weights).sum())

    h = 1e-5
    numeric = np.zeros_like(atoms.positions)
    for index in np.ndindex(*numeric.shape):
        plus, minus = atoms.positions.copy(), atoms.positions.copy()
        plus[index] += h
        minus[index] -= h
        numeric[index] = (energy(plus) - energy(minus)) / (2 * h)
    scale = np.abs(numeric).max()
    assert scale > 1e-2
    np.testing.assert_allclose(autograd.numpy(), numeric, rtol=1e-6, atol=1e-6 * scale)


# --- 4. ACSF against DScribe ---------------------------------------------------------------------------------

# DScribe orders the G4 species pairs (a <= b, by position in the sorted species) by b, then a:
# (0,0), (0,1), (1,1), (0,2), (1,2), (2,2), ...; aiida_mlmat orders them by a, then b: (0,0), (0,1), (0,2), (1,1), ...
# The two agree for one and two species only.

ACSF_CASES = [
    pytest.param(lambda: alloy_cell(0, species=('Cu',)), ('Cu',), id='alloy-1'),
    pytest.param(lambda: alloy_cell(0, distortion=0.1), ('Cu', 'Au'), id='alloy-2'),
    pytest.param(lambda: alloy_cell(1, species=('Cu', 'Ag', 'Au')), ('Au', 'Cu', 'Ag'), id='alloy-3'),
    pytest.param(lambda: small_cell(0, 'Cu'), ('Cu',), id='small-1'),
    pytest.param(lambda: small_cell(1, 'CuAu'), ('Cu', 'Au'), id='small-2'),
    pytest.param(lambda: small_cell(2, 'CuAgAu'), ('Cu', 'Ag', 'Au'), id='small-3'),
    pytest.param(lambda: cluster(3, species=('Cu',)), ('Cu',), id='cluster-1'),
    pytest.param(lambda: cluster(4), ('Cu', 'Au'), id='cluster-2'),
    pytest.param(lambda: cluster(5, species=('Ag', 'Au', 'Cu')), ('Cu', 'Ag', 'Au'), id='cluster-3'),
    # species defined but absent from the structure (only the Cu-Cu pair block is non-zero)
    pytest.param(lambda: cluster(6, species=('Cu',)), ('Cu', 'Ag', 'Au'), id='absent'),
]


def dscribe_acsf(atoms: Atoms, spec: DescriptorSpec) -> np.ndarray:
    """DScribe's ACSF of ``atoms``: the reference the cases compare with. Without DScribe (the ``dev`` extra) the
    cases skip, and fail in CI rather than vanish."""
    try:
        from dscribe.descriptors import ACSF
    except ImportError as exc:
        require_or_skip(False, f'DScribe, the ACSF reference, is not installed (pip install -e .[dev]): {exc}')
    return ACSF(
        species=list(spec.species),
        r_cut=spec.rcut,
        g2_params=[list(p) for p in spec.g2],
        g4_params=[list(p) for p in spec.g4],
        periodic=bool(atoms.pbc.all()),
    ).create(atoms)


@pytest.mark.parametrize(('make', 'species'), ACSF_CASES)
def test_acsf_matches_dscribe(make, species):
    atoms = make()
    spec = make_spec('acsf', species=species, rcut=5.0)
    reference = dscribe_acsf(atoms, spec)
    ours = descriptors(atoms, spec)
    assert ours.shape == reference.shape == (len(atoms), spec.n_features)
    assert np.abs(reference).max() > 1.0
    np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-9)


def dscribe_pair_permutation(spec: DescriptorSpec) -> np.ndarray:
    """Column permutation taking aiida_mlmat's ACSF columns to DScribe's (pairs ordered by b, then a)."""
    n = len(spec.species)
    n_g4 = len(spec.g4)
    radial = n * (1 + len(spec.g2))
    ours = [(a, b) for a in range(n) for b in range(a, n)]
    theirs = [(a, b) for b in range(n) for a in range(b + 1)]
    columns = list(range(radial))
    for pair in theirs:
        start = radial + ours.index(pair) * n_g4
        columns += range(start, start + n_g4)
    return np.array(columns)


def test_acsf_feature_names_in_dscribe_pair_order():
    spec = DescriptorSpec('acsf', ('Au', 'Cu', 'Ag'), g2=(), g4=((0.01, 1.0, 1.0),))
    names = feature_names(spec)
    assert [name.split('(')[0] for name in names[3:]] == [
        'G4[CuCu]',
        'G4[CuAg]',
        'G4[AgAg]',
        'G4[CuAu]',
        'G4[AgAu]',
        'G4[AuAu]',
    ]


# --- 5. Chebyshev against explicit sums ----------------------------------------------------------------------


def test_chebyshev_polynomials():
    x = torch.linspace(-1, 1, 101, dtype=torch.float64)
    values = chebyshev(x, 9).numpy()
    expected = np.cos(np.arange(9)[None, :] * np.arccos(x.numpy())[:, None])
    np.testing.assert_allclose(values, expected, atol=1e-12)
    assert chebyshev(x, 1).shape == (101, 1)
    assert chebyshev(x.reshape(1, -1), 3).shape == (1, 101, 3)


def cosine_cutoff(r: np.ndarray, rcut: float) -> np.ndarray:
    return np.where(r < rcut, 0.5 * (np.cos(np.pi * r / rcut) + 1.0), 0.0)


CHEBYSHEV_CASES = {
    'cell-2': (lambda: alloy_cell(0, distortion=0.1), ('Cu', 'Au')),
    'small-3': (lambda: small_cell(2, 'CuAgAu'), ('Cu', 'Ag', 'Au')),
    'cluster-4': (lambda: cluster(5, species=('Ag', 'Au', 'Cu', 'Pd')), ('Cu', 'Ag', 'Au', 'Pd')),
    'cluster-1': (lambda: cluster(3, species=('Cu',)), ('Cu',)),
}


@pytest.mark.parametrize('rcut_angular', [None, 3.6])
@pytest.mark.parametrize('case', list(CHEBYSHEV_CASES))
def test_chebyshev_angular_is_triplet_sum(case, rcut_angular):
    make, species = CHEBYSHEV_CASES[case]
    atoms = make()
    spec = DescriptorSpec('chebyshev', species, rcut=5.0, rcut_angular=rcut_angular, n_radial=6, n_angular=7)
    ours = descriptors(atoms, spec)
    n_rad, n_ang = spec.n_radial, spec.n_angular

    graph = build_graph([atoms], spec.rcut)
    vectors = graph.edge_vectors().numpy()
    centre, neighbour = graph.centre.numpy(), graph.neighbour.numpy()
    first, second = (t.numpy() for t in triplets(graph.centre, len(atoms)))
    r = np.linalg.norm(vectors, axis=1)
    fc = cosine_cutoff(r, spec.angular_cutoff)
    cos = np.einsum('ij,ij->i', vectors[first], vectors[second]) / (r[first] * r[second])
    poly = chebyshev(torch.tensor(cos), n_ang).numpy()
    term = poly * (fc[first] * fc[second])[:, None]
    weight_of = species_weights(species)
    w = np.array([weight_of[z] for z in graph.numbers.numpy()])[neighbour]
    plain = np.zeros((len(atoms), n_ang))
    weighted = np.zeros((len(atoms), n_ang))
    # triplets gives each unordered pair (j, k) once; the sum over j != k counts it twice
    np.add.at(plain, centre[first], 2 * term)
    np.add.at(weighted, centre[first], 2 * term * (w[first] * w[second])[:, None])

    assert np.abs(plain).max() > 0.1
    np.testing.assert_allclose(ours[:, n_rad : n_rad + n_ang], plain, rtol=1e-10, atol=1e-10)
    if len(species) > 1:
        np.testing.assert_allclose(ours[:, 2 * n_rad + n_ang :], weighted, rtol=1e-10, atol=1e-10)
        assert np.abs(weighted).max() > 1e-2
    else:
        assert ours.shape[1] == n_rad + n_ang


@pytest.mark.parametrize('case', list(CHEBYSHEV_CASES))
def test_chebyshev_radial_is_neighbour_sum(case):
    make, species = CHEBYSHEV_CASES[case]
    atoms = make()
    spec = DescriptorSpec('chebyshev', species, rcut=5.0, rcut_angular=3.5, n_radial=9, n_angular=4)
    ours = descriptors(atoms, spec)
    weight_of = species_weights(species)
    i_list, j_list, d_list = neighbor_list('ijd', atoms, spec.rcut)
    plain = np.zeros((len(atoms), spec.n_radial))
    weighted = np.zeros((len(atoms), spec.n_radial))
    for i in range(len(atoms)):
        for j, d in zip(j_list[i_list == i], d_list[i_list == i], strict=True):
            x = 2 * d / spec.rcut - 1
            values = np.array([np.cos(a * np.arccos(x)) for a in range(spec.n_radial)])
            fc = 0.5 * (np.cos(np.pi * d / spec.rcut) + 1)
            plain[i] += values * fc
            weighted[i] += values * fc * weight_of[atoms.numbers[j]]
    np.testing.assert_allclose(ours[:, : spec.n_radial], plain, rtol=1e-10, atol=1e-10)
    if len(species) > 1:
        start = spec.n_radial + spec.n_angular
        np.testing.assert_allclose(ours[:, start : start + spec.n_radial], weighted, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    ('species', 'expected'),
    [
        (('Cu',), {29: 0.0}),
        (('Au', 'Cu'), {29: -1.0, 79: 1.0}),
        (('Au', 'Cu', 'Ag'), {29: -1.0, 47: 0.0, 79: 1.0}),
        (('Pd', 'Au', 'Cu', 'Ag'), {29: -2.0, 46: -1.0, 47: 1.0, 79: 2.0}),
        (('H', 'C', 'N', 'O', 'Cu'), {1: -2.0, 6: -1.0, 7: 0.0, 8: 1.0, 29: 2.0}),
    ],
)
def test_species_weights(species, expected):
    assert species_weights(species) == expected


def test_chebyshev_size_independent_of_species():
    atoms = cluster(5, species=('Ag', 'Au', 'Cu', 'Pd'))
    sizes = set()
    for species in (('Cu', 'Au'), ('Cu', 'Au', 'Ag'), ('Cu', 'Au', 'Ag', 'Pd'), ('Cu', 'Au', 'Ag', 'Pd', 'Pt', 'Ni')):
        spec = DescriptorSpec('chebyshev', species, rcut=4.5, n_radial=7, n_angular=5)
        sub = atoms[[k for k, s in enumerate(atoms.get_chemical_symbols()) if s in species]]
        values = descriptors(sub, spec)
        assert values.shape == (len(sub), spec.n_features)
        sizes.add(spec.n_features)
    assert sizes == {2 * (7 + 5)}
    assert DescriptorSpec('chebyshev', ('Cu',), n_radial=7, n_angular=5).n_features == 12


@pytest.mark.parametrize(
    'spec',
    [
        DescriptorSpec('chebyshev', ('Cu',), n_radial=4, n_angular=3),
        DescriptorSpec('chebyshev', ('Cu', 'Au', 'Ag'), n_radial=5, n_angular=2),
        DescriptorSpec('chebyshev', ('Cu', 'Au'), n_radial=5, n_angular=0),
        DescriptorSpec('acsf', ('Cu',)),
        DescriptorSpec('acsf', ('Cu', 'Au', 'Ag')),
        DescriptorSpec('acsf', ('Cu', 'Au'), g2=(), g4=()),
    ],
    ids=lambda s: f'{s.kind}-{len(s.species)}',
)
def test_feature_names_match_features(spec):
    names = feature_names(spec)
    assert len(names) == len(set(names)) == spec.n_features
    atoms = cluster(8, species=spec.species, n_max=6)
    assert descriptors(atoms, spec).shape == (len(atoms), spec.n_features)


def test_spec_round_trip():
    spec = make_spec('acsf', species=('Au', 'Cu'))
    data = spec.as_dict()
    assert data['species'] == ['Cu', 'Au']  # sorted by atomic number
    assert data['n_features'] == spec.n_features
    assert DescriptorSpec.from_dict(data) == spec


# --- 6. batching and precision -------------------------------------------------------------------------------


@pytest.mark.parametrize('kind', KINDS)
def test_batching_matches_single_structures(kind):
    frames = [alloy_cell(0), cluster(1, n_max=5), small_cell(2, 'CuAu'), alloy_cell(3, distortion=0.1), cluster(4)]
    spec = make_spec(kind)
    alone = [descriptors(atoms, spec) for atoms in frames]
    for batch_atoms in (20000, 40, 10, 1):
        together = compute(frames, spec, batch_atoms=batch_atoms)
        assert len(together) == len(frames)
        for got, expected, atoms in zip(together, alone, frames, strict=True):
            assert got.shape == (len(atoms), spec.n_features)
            assert np.abs(got - expected).max() < 1e-12


@pytest.mark.parametrize('kind', KINDS)
def test_float32_close_to_float64(kind):
    frames = [alloy_cell(0, distortion=0.1), small_cell(2, 'CuAu'), cluster(4)]
    spec = make_spec(kind)
    double = compute(frames, spec, dtype=torch.float64)
    single = compute(frames, spec, dtype=torch.float32)
    for got, expected in zip(single, double, strict=True):
        assert got.dtype == np.float32
        scale = np.abs(expected).max(axis=0, keepdims=True)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * scale.max())
        assert np.all(np.abs(got - expected) <= 1e-4 * np.maximum(np.abs(expected), scale) + 1e-6)


# --- 8. bad input --------------------------------------------------------------------------------------------


@pytest.mark.parametrize('kind', KINDS)
def test_empty_input_is_refused(kind):
    spec = make_spec(kind)
    with pytest.raises(ValueError, match='no structures'):
        compute([], spec)
    with pytest.raises(ValueError, match='no atoms'):
        compute([cluster(0), Atoms()], spec)


def test_unknown_species_is_named():
    spec = make_spec('chebyshev')
    atoms = cluster(0, species=('Cu', 'Ag'))
    with pytest.raises(UnknownSpeciesError, match='Ag') as info:
        compute([cluster(1), atoms], spec)
    assert 'structure 1' in str(info.value)
    assert isinstance(info.value, ValueError)


def test_cutoff_far_beyond_cell_width_asks_for_supercell():
    atoms = bulk('Cu', 'fcc', a=3.6)  # width 2.08 Å
    spec = DescriptorSpec('acsf', ('Cu',), rcut=9.0)
    with pytest.raises(CutoffError, match='supercell'):
        compute([atoms], spec)
    # just within four widths periodic images are summed
    assert compute([atoms], DescriptorSpec('acsf', ('Cu',), rcut=8.0))[0].shape == (1, spec.n_features)


@pytest.mark.parametrize(
    ('kwargs', 'message'),
    [
        ({'kind': 'acsf', 'species': ('Cu',), 'rcut': 0.0}, 'positive'),
        ({'kind': 'acsf', 'species': ('Cu',), 'rcut': -2.0}, 'positive'),
        ({'kind': 'chebyshev', 'species': ('Cu',), 'rcut': 4.0, 'rcut_angular': 0.0}, 'rcut_angular'),
        ({'kind': 'chebyshev', 'species': ('Cu',), 'rcut': 4.0, 'rcut_angular': 5.0}, 'rcut_angular'),
        ({'kind': 'soap', 'species': ('Cu',)}, 'unknown descriptor kind'),
        ({'kind': 'acsf', 'species': ('Cu', 'Xx')}, 'unknown element `Xx`'),
        ({'kind': 'acsf', 'species': ('X',)}, 'unknown element `X`'),
        ({'kind': 'acsf', 'species': ()}, 'at least one species'),
        ({'kind': 'chebyshev', 'species': ('Cu',), 'n_radial': 0}, 'n_radial'),
    ],
)
def test_bad_spec_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DescriptorSpec(**kwargs)


@pytest.mark.parametrize('kind', KINDS)
def test_descriptor_module_refuses_unknown_species(kind):
    spec = make_spec(kind)
    graph = build_graph([Atoms('CuAg', positions=[[0, 0, 0], [0, 0, 2.5]])], spec.rcut)
    with pytest.raises(ValueError, match='Ag'):
        Descriptor(spec)(graph)


@pytest.mark.parametrize('kind', KINDS)
def test_mixed_periodicity_is_refused(kind):
    atoms = alloy_cell(0)
    atoms.pbc = [True, True, False]
    with pytest.raises(ValueError, match='mixed periodicity'):
        compute([atoms], make_spec(kind))


# --- 9. CUDA -------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason='CUDA is not available')
@pytest.mark.parametrize('kind', KINDS)
def test_cuda_matches_cpu(kind):
    frames = [alloy_cell(0, distortion=0.1), small_cell(2, 'CuAu'), cluster(4)]
    spec = make_spec(kind)
    cpu = compute(frames, spec, device='cpu')
    gpu = compute(frames, spec, device='cuda')
    for got, expected in zip(gpu, cpu, strict=True):
        assert np.abs(got - expected).max() < 1e-10


def test_atomic_numbers_in_specs_are_sorted():
    spec = DescriptorSpec('chebyshev', ('Au', 'Ag', 'Cu', 'Au'))
    assert spec.species == ('Cu', 'Ag', 'Au')
    assert [atomic_numbers[s] for s in spec.species] == sorted(atomic_numbers[s] for s in spec.species)
