"""Unit tier: diversity selection (FPS, CUR), out-of-distribution scores and the PCA map."""

from __future__ import annotations

import numpy as np
import pytest

from aiida_mlmat.ml.selection import (
    cur_selection,
    farthest_point_sampling,
    out_of_distribution_scores,
    pca_2d,
    plot_map,
    select,
)

pytestmark = pytest.mark.unit


def square_with_interior(seed: int = 0) -> np.ndarray:
    """The four corners of a 10 x 10 square plus 200 interior points strictly inside it."""
    rng = np.random.default_rng(seed)
    corners = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    interior = rng.uniform(2.0, 8.0, size=(200, 2))
    return np.concatenate([interior[:100], corners, interior[100:]])


def test_fps_picks_the_known_extreme_points_first():
    """On a square with interior points, the first four FPS picks are exactly its corners."""
    points = square_with_interior()
    picked = farthest_point_sampling(points, 4)
    assert sorted(picked) == [100, 101, 102, 103]


def test_fps_is_deterministic_and_spreads():
    points = np.random.default_rng(1).normal(size=(300, 5))
    first, second = farthest_point_sampling(points, 20), farthest_point_sampling(points, 20)
    assert first == second and len(set(first)) == 20

    # Greedy FPS is a 2-approximation of the k-centre problem: covering radius of FPS <= 2 x that of any set,
    # in particular of random subsets.
    def radius(idx):
        d = np.linalg.norm(points[:, None, :] - points[idx][None, :, :], axis=2)
        return d.min(axis=1).max()

    rng = np.random.default_rng(2)
    assert all(radius(first) <= 2 * radius(rng.choice(300, 20, replace=False)) for _ in range(20))


def test_fps_stops_at_duplicates_and_caps_at_size():
    points = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    assert sorted(farthest_point_sampling(points, 5)) == [0, 2] or sorted(farthest_point_sampling(points, 5)) == [1, 2]


def test_fps_with_reference_starts_farthest_from_it_and_never_repeats_it():
    """Reference points count as picked: the first pick is the point farthest from them, duplicates never come."""
    points = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]])
    assert farthest_point_sampling(points, 3, reference=np.array([[5.0, 0.0]])) == [0, 1]
    assert farthest_point_sampling(points, 3, reference=np.zeros((0, 2))) == farthest_point_sampling(points, 3)
    assert farthest_point_sampling(points, 2, start=1, reference=np.array([[0.2, 0.0]])) == [1, 2]
    with pytest.raises(ValueError, match='reference points of shape'):
        farthest_point_sampling(points, 2, reference=np.zeros((2, 3)))


def test_cur_picks_one_point_per_independent_direction():
    """Rows along three orthogonal axes with different spreads: CUR takes one per axis first."""
    rows = np.zeros((30, 3))
    rows[:10, 0] = np.linspace(1, 5, 10)
    rows[10:20, 1] = np.linspace(1, 3, 10)
    rows[20:, 2] = np.linspace(1, 2, 10)
    picked = cur_selection(rows, 3)
    assert sorted(index // 10 for index in picked) == [0, 1, 2]


def svd_cur_reference(points: np.ndarray, n: int, rank: int | None = None) -> list[int]:
    """The former ``cur_selection``: a full SVD of the (n_points x n_features) residual at every pick."""
    points = np.asarray(points, dtype=float)
    n = min(n, len(points))
    residual = points - points.mean(axis=0)
    picked: list[int] = []
    for _ in range(n):
        u, s, _ = np.linalg.svd(residual, full_matrices=False)
        k = max(1, min(rank or n, int((s > 1e-12 * max(s[0], 1e-300)).sum())))
        leverage = (u[:, :k] ** 2).sum(axis=1)
        leverage[picked] = -1.0
        choice = int(np.argmax(leverage))
        if leverage[choice] <= 1e-14:
            break
        picked.append(choice)
        row = residual[choice]
        norm = row @ row
        if norm > 0:
            residual = residual - np.outer(residual @ row / norm, row)
    return picked


@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize(
    ('shape', 'n', 'rank'),
    [
        ((200, 8), 8, None),
        ((200, 8), 5, 2),
        ((150, 40), 40, None),
        ((1000, 50), 40, 20),
        ((30, 80), 10, 5),  # more features than points
        ((25, 60), 15, 5),
    ],
)
def test_cur_picks_as_the_svd_reference(seed, shape, n, rank):
    """On well-conditioned data the picks equal those of a full SVD per pick, in order, more features than points
    included (there the rank is held below the points left, which would otherwise all tie at equal leverage)."""
    rng = np.random.default_rng(seed)
    points = rng.normal(size=shape) * rng.uniform(0.5, 3.0, size=shape[1]) + rng.normal(size=shape[1])
    picked = cur_selection(points, n, rank)
    assert picked == svd_cur_reference(points, n, rank)
    assert len(picked) == n == len(set(picked))


@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize(('n_points', 'n_features', 'true_rank'), [(120, 12, 4), (40, 100, 6)])
def test_cur_on_rank_deficient_data_picks_as_the_reference_then_stops(seed, n_points, n_features, true_rank):
    """Centred data of rank r: the first r picks equal the SVD reference; then the residual is round-off only and
    the selection stops (the reference goes on picking from round-off)."""
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(n_points, true_rank)) @ rng.normal(size=(true_rank, n_features)) + 3.0
    assert cur_selection(points, true_rank) == svd_cur_reference(points, true_rank)
    picked = cur_selection(points, true_rank + 5)
    assert picked == svd_cur_reference(points, true_rank + 5)[:true_rank]


def test_cur_ignores_feature_scales_and_handles_degenerate_input():
    """With every direction counted, rescaling features (here over six decades) leaves the picks unchanged; equal
    rows give one pick; more than there are points caps at the rank; no index repeats."""
    points = np.random.default_rng(3).normal(size=(500, 12))
    picked = cur_selection(points, 12)
    assert cur_selection(points * np.logspace(-6, 0, 12), 12) == picked
    assert len(picked) == len(set(picked)) == 12
    assert cur_selection(np.ones((5, 3)), 3) == [0]
    assert cur_selection(np.ones((1, 3)), 3) == [0]
    corners = cur_selection(np.eye(4), 10)
    assert len(corners) == len(set(corners)) == 3  # four centred points span three dimensions


def test_select_with_cur_fills_past_the_rank_by_farthest_point_sampling():
    """CUR stops at the rank of the data (12 here); ``select`` picks the rest by FPS away from CUR's picks, all
    distinct, so a selection of 40 gives 40."""
    points = np.random.default_rng(5).normal(size=(300, 12))
    first = cur_selection(points, 40)
    assert len(first) == 12
    picked = select(points, 40, 'cur')
    assert picked[:12] == first
    assert len(picked) == len(set(picked)) == 40
    rest = [position for position in range(300) if position not in set(first)]
    expected = farthest_point_sampling(points[rest], 28, reference=points[first])
    assert picked[12:] == [rest[position] for position in expected]
    # duplicates of what is picked are never added: five distinct rows, each twice
    doubled = np.repeat(np.eye(5), 2, axis=0)
    picked = select(doubled, 10, 'cur')
    assert sorted({tuple(doubled[position]) for position in picked}) == sorted({tuple(row) for row in np.eye(5)})
    assert len(picked) == 5


def test_fps_with_a_reference_never_picks_a_duplicate_of_it():
    points = np.array([[0.0, 0.0], [1.0, 1.0]])
    assert farthest_point_sampling(points, 2, reference=points) == []
    assert farthest_point_sampling(points, 2, reference=points[:1]) == [1]


def test_select_validates_method_and_count():
    points = np.ones((4, 2))
    with pytest.raises(ValueError, match='unknown selection method `random`'):
        select(points, 2, 'random')
    with pytest.raises(ValueError, match='at least 1'):
        select(points, 0, 'fps')
    with pytest.raises(ValueError, match='non-empty'):
        select(np.zeros((0, 3)), 2, 'fps')


def test_ood_scores_separate_novel_from_seen():
    rng = np.random.default_rng(3)
    reference = [rng.normal(size=(20, 4)) for _ in range(10)]
    seen = [reference[0][:5] + 1e-3]
    novel = [rng.normal(size=(5, 4)) + 25.0]
    scores, scale = out_of_distribution_scores(reference, seen + novel)
    assert scale > 0
    assert scores[0] < 0.1 and scores[1] > 10


def test_pca_map_recovers_dominant_direction_and_writes_png(tmp_path):
    t = np.linspace(-1, 1, 50)
    points = np.stack([t, 2 * t + 0.05 * np.sin(7 * t), np.full_like(t, 3.0)], axis=1)
    coords, variance = pca_2d(points)
    assert coords.shape == (50, 2) and variance[0] > 0.6
    assert abs(np.corrcoef(coords[:, 0], t)[0, 1]) > 0.999
    path = plot_map(coords, t, 't', str(tmp_path / 'map.png'))
    with open(path, 'rb') as handle:
        assert handle.read(8) == b'\x89PNG\r\n\x1a\n'
