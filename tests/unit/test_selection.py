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
