"""Neighbour graphs (vesin) and triplet enumeration of :mod:`aiida_mlmat.ml.neighbours`."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.neighborlist import neighbor_list

from aiida_mlmat.ml.neighbours import (
    MAX_CUTOFF_TO_WIDTH,
    CutoffError,
    build_graph,
    check_cutoff,
    perpendicular_widths,
    triplets,
)

pytestmark = pytest.mark.unit


def cuau_cell(seed: int = 0, distortion: float = 0.0) -> Atoms:
    """A rattled 32-atom Cu-Au fcc cell, optionally sheared into a triclinic cell."""
    rng = np.random.default_rng(seed)
    atoms = bulk('Cu', 'fcc', a=3.7, cubic=True).repeat((2, 2, 2))
    symbols = atoms.get_chemical_symbols()
    for k in range(0, len(atoms), 3):
        symbols[k] = 'Au'
    atoms.set_chemical_symbols(symbols)
    if distortion:
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + distortion * rng.uniform(-1, 1, (3, 3))), scale_atoms=True)
    atoms.positions += rng.normal(scale=0.1, size=atoms.positions.shape)
    return atoms


def small_triclinic(seed: int = 0) -> Atoms:
    """A two-atom cell about 2.5 Å wide: a 5 Å cutoff reaches several periodic images, including self-images."""
    rng = np.random.default_rng(seed)
    cell = 2.6 * (np.eye(3) + 0.15 * rng.uniform(-1, 1, (3, 3)))
    atoms = Atoms('CuAu', cell=cell, pbc=True, scaled_positions=[[0.0, 0.0, 0.0], [0.45, 0.55, 0.5]])
    atoms.positions += rng.normal(scale=0.05, size=(2, 3))
    return atoms


def cluster(seed: int = 0) -> Atoms:
    rng = np.random.default_rng(seed)
    positions = rng.uniform(-3.5, 3.5, (40, 3))
    kept = [positions[0]]
    for p in positions[1:]:
        if min(np.linalg.norm(p - q) for q in kept) > 2.2:
            kept.append(p)
    return Atoms(['Cu', 'Au'] * (len(kept) // 2) + ['Cu'] * (len(kept) % 2), positions=kept)


def edge_set(i, j, vectors, decimals: int = 8) -> set:
    return {(int(a), int(b), *np.round(v, decimals)) for a, b, v in zip(i, j, vectors, strict=True)}


# --- perpendicular widths and cutoff checks ------------------------------------------------------------------


def test_perpendicular_widths_match_reciprocal_lattice():
    rng = np.random.default_rng(3)
    cell = 3.0 * (np.eye(3) + 0.3 * rng.uniform(-1, 1, (3, 3)))
    expected = 1.0 / np.linalg.norm(np.linalg.inv(cell).T, axis=1)
    np.testing.assert_allclose(perpendicular_widths(cell), expected, rtol=1e-12)
    np.testing.assert_allclose(perpendicular_widths(np.diag([2.0, 3.0, 5.0])), [2.0, 3.0, 5.0], rtol=1e-14)


def test_check_cutoff_limits():
    atoms = bulk('Cu', 'fcc', a=3.6)  # primitive cell, perpendicular width a / sqrt(3)
    width = perpendicular_widths(atoms.cell.array).min()
    assert width == pytest.approx(3.6 / np.sqrt(3))
    check_cutoff(atoms, MAX_CUTOFF_TO_WIDTH * width * (1 - 1e-9))
    with pytest.raises(CutoffError, match='supercell'):
        check_cutoff(atoms, MAX_CUTOFF_TO_WIDTH * width * (1 + 1e-6))
    for cutoff in (0.0, -1.0, float('nan')):
        with pytest.raises(CutoffError, match='positive'):
            check_cutoff(atoms, cutoff)
    # non-periodic: any positive cutoff is fine, whatever the cell
    check_cutoff(Atoms('Cu2', positions=[[0, 0, 0], [0, 0, 2.5]]), 1000.0)


def test_degenerate_periodic_cell_is_refused():
    atoms = Atoms('Cu', cell=[[2.5, 0, 0], [0, 2.5, 0], [0, 0, 0]], pbc=True)
    with pytest.raises(CutoffError, match='degenerate'):
        build_graph([atoms], 3.0)


# --- build_graph ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize('make', [cuau_cell, lambda: cuau_cell(1, 0.1), small_triclinic, cluster])
def test_build_graph_matches_ase(make):
    atoms = make()
    cutoff = 5.0
    graph = build_graph([atoms], cutoff)
    i, j, vectors = neighbor_list('ijD', atoms, cutoff)
    assert graph.centre.shape[0] == len(i) > 0
    ours = graph.edge_vectors().numpy()
    assert edge_set(graph.centre.numpy(), graph.neighbour.numpy(), ours) == edge_set(i, j, vectors)
    # edges are grouped by centre (triplets relies on it) and never pair an atom with itself in the same image
    assert torch.all(graph.centre[1:] >= graph.centre[:-1])
    assert np.linalg.norm(ours, axis=1).min() > 0.5
    assert np.linalg.norm(ours, axis=1).max() < cutoff


def test_small_cell_has_self_images():
    atoms = small_triclinic()
    graph = build_graph([atoms], 5.0)
    self_edges = graph.centre == graph.neighbour
    assert int(self_edges.sum()) > 0
    assert torch.all(graph.shifts[self_edges].norm(dim=1) > 1.0)


def test_build_graph_batches_structures_with_offsets():
    frames = [cuau_cell(0), cluster(1), small_triclinic(2)]
    cutoff = 4.5
    graph = build_graph(frames, cutoff)
    assert graph.n_structures == 3
    assert graph.positions.shape == (sum(len(a) for a in frames), 3)
    np.testing.assert_array_equal(graph.numbers.numpy(), np.concatenate([a.numbers for a in frames]))
    np.testing.assert_array_equal(graph.structure.numpy(), np.repeat([0, 1, 2], [len(a) for a in frames]))
    offset = 0
    vectors = graph.edge_vectors().numpy()
    for k, atoms in enumerate(frames):
        mask = (graph.structure[graph.centre] == k).numpy()
        assert np.all(graph.structure[graph.neighbour].numpy()[mask] == k)
        i, j, d = neighbor_list('ijD', atoms, cutoff)
        got = edge_set(graph.centre.numpy()[mask] - offset, graph.neighbour.numpy()[mask] - offset, vectors[mask])
        assert got == edge_set(i, j, d)
        offset += len(atoms)


def test_edge_vectors_differentiable_and_typed():
    atoms = small_triclinic()
    graph = build_graph([atoms], 4.0, dtype=torch.float32)
    assert graph.positions.dtype == graph.shifts.dtype == torch.float32
    graph.positions.requires_grad_(True)
    vectors = graph.edge_vectors()
    vectors.sum().backward()
    # sum over edges of (pos_j - pos_i): every full-list edge has its reverse, so the gradient vanishes
    assert torch.allclose(graph.positions.grad, torch.zeros_like(graph.positions))


@pytest.mark.parametrize(
    'frames',
    [
        [],
        [Atoms()],
        [Atoms('Cu', positions=[[0, 0, 0]]), Atoms()],
    ],
)
def test_build_graph_refuses_empty_input(frames):
    with pytest.raises(ValueError, match=r'no structures|no atoms'):
        build_graph(frames, 3.0)


def test_build_graph_refuses_mixed_periodicity():
    atoms = bulk('Cu', 'fcc', a=3.6, cubic=True)
    atoms.pbc = [True, True, False]
    with pytest.raises(ValueError, match='mixed periodicity'):
        build_graph([atoms], 3.0)


def test_build_graph_refuses_large_cutoff():
    atoms = bulk('Cu', 'fcc', a=3.6)
    with pytest.raises(CutoffError, match='supercell'):
        build_graph([atoms], 9.0)
    with pytest.raises(CutoffError, match='positive'):
        build_graph([atoms], 0.0)


# --- triplets ------------------------------------------------------------------------------------------------


def brute_force_pairs(centre: np.ndarray) -> set[tuple[int, int]]:
    return {(p, q) for p, q in itertools.combinations(range(len(centre)), 2) if centre[p] == centre[q]}


@pytest.mark.parametrize('seed', range(8))
def test_triplets_are_all_pairs_sharing_a_centre(seed):
    rng = np.random.default_rng(seed)
    n_atoms = int(rng.integers(1, 15))
    counts = rng.integers(0, 9, n_atoms)
    counts[rng.random(n_atoms) < 0.2] = 0  # some atoms without neighbours
    centre = np.repeat(np.arange(n_atoms), counts)
    first, second = triplets(torch.tensor(centre, dtype=torch.long), n_atoms)
    got = list(zip(first.tolist(), second.tolist(), strict=True))
    assert len(got) == len(set(got))
    assert set(got) == brute_force_pairs(centre)
    assert len(got) == int((counts * (counts - 1) // 2).sum())


def test_triplets_table_cache_shrinking_and_growing():
    # a large neighbour count first, then smaller and larger ones: the cached pair tables must not leak across
    for counts in ([12, 3], [2, 1, 0, 4], [1, 1], [20], [0, 0, 5]):
        centre = np.repeat(np.arange(len(counts)), counts)
        first, second = triplets(torch.tensor(centre, dtype=torch.long), len(counts))
        assert set(zip(first.tolist(), second.tolist(), strict=True)) == brute_force_pairs(centre)


def test_triplets_without_pairs():
    for centre in ([], [0, 1, 2], [3]):
        first, second = triplets(torch.tensor(centre, dtype=torch.long), 4)
        assert first.numel() == second.numel() == 0
        assert first.dtype == torch.long


def test_triplets_of_a_graph_share_centres():
    graph = build_graph([cuau_cell(0), cluster(2)], 4.0)
    n_atoms = graph.positions.shape[0]
    first, second = triplets(graph.centre, n_atoms)
    assert torch.equal(graph.centre[first], graph.centre[second])
    assert torch.all(first < second)
    counts = torch.bincount(graph.centre, minlength=n_atoms)
    assert first.numel() == int((counts * (counts - 1) // 2).sum())
