"""Unit tier: the pure active-learning functions (selection between trust bounds, stopping, calibration)."""

from __future__ import annotations

import numpy as np
import pytest

from aiida_mlmat.ml.active import (
    STOP_CONVERGED_FRACTION,
    STOP_MAX_ITERATIONS,
    STOP_NO_CANDIDATES,
    STOP_TARGET_ERROR,
    adaptive_lower,
    calibration,
    candidates_between,
    check_bounds,
    disagreement_statistics,
    force_spread_and_error,
    select_candidates,
    stop_reason,
)

pytestmark = pytest.mark.unit


def test_candidates_lie_strictly_above_lower_and_at_most_upper():
    values = [0.05, 0.1, 0.11, 0.3, 0.5, 0.51, np.nan]
    assert candidates_between(values, 0.1, 0.5).tolist() == [2, 3, 4]


def test_adaptive_lower_bound_keeps_the_most_uncertain_quarter_below_upper():
    values = [*np.linspace(0.01, 0.4, 40).tolist(), 0.9, 1.2]  # the last two lie above the upper bound
    bound = adaptive_lower(values, 0.05, 0.5, 0.75)
    assert bound == pytest.approx(np.quantile(np.linspace(0.01, 0.4, 40), 0.75))
    assert len(candidates_between(values, bound, 0.5)) == 10  # a quarter of the 40 below upper
    assert adaptive_lower(values, 0.05, 0.5, None) == 0.05  # no quantile: the fixed bound
    assert adaptive_lower(values, 0.35, 0.5, 0.5) == 0.35  # the quantile never lowers the fixed bound
    assert adaptive_lower([0.5, 0.5], 0.1, 0.5, 0.9) < 0.5  # never reaches upper: the top value stays a candidate
    assert adaptive_lower([2.0], 0.1, 0.5, 0.9) == 0.1  # nothing below upper
    for quantile in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r'in \[0, 1\)'):
            adaptive_lower(values, 0.05, 0.5, quantile)


def test_adaptive_lower_bound_leaves_at_least_min_candidates():
    values = [*np.linspace(0.01, 0.4, 40).tolist(), 0.9]  # 0.9 lies above the upper bound 0.5
    high = adaptive_lower(values, 0.05, 0.5, 0.97)
    assert len(candidates_between(values, high, 0.5)) == 2  # the top 3 % of 40: fewer than a cap of 8
    floored = adaptive_lower(values, 0.05, 0.5, 0.97, min_candidates=8)
    assert candidates_between(values, floored, 0.5).tolist() == list(range(32, 40))  # the 8 most uncertain
    assert adaptive_lower(values, 0.05, 0.5, 0.5, min_candidates=8) == pytest.approx(np.quantile(values[:40], 0.5))
    assert adaptive_lower(values, 0.38, 0.5, 0.97, min_candidates=8) == 0.38  # never below the fixed bound
    assert adaptive_lower([0.2, 0.3], 0.05, 0.5, 0.9, min_candidates=8) < 0.2  # fewer than n: all of them
    assert adaptive_lower([0.3, 0.3, 0.3, 0.1], 0.05, 0.5, 0.9, min_candidates=2) < 0.3  # ties stay together
    assert adaptive_lower(values, 0.05, 0.5, None, min_candidates=8) == 0.05  # no quantile: the fixed bound
    with pytest.raises(ValueError, match='at least 0'):
        adaptive_lower(values, 0.05, 0.5, 0.9, min_candidates=-1)


def test_selection_below_the_cap_takes_every_candidate_most_uncertain_first():
    values = [0.2, 0.01, 0.4, 0.9, 0.3]
    assert select_candidates(values, 0.1, 0.5, max_selected=10) == [2, 4, 0]


def test_selection_cap_without_features_keeps_the_most_uncertain():
    values = np.linspace(0.11, 0.49, 20)
    picked = select_candidates(values, 0.1, 0.5, max_selected=4)
    assert picked == [19, 18, 17, 16]


def test_fps_picks_one_per_cluster_where_top_uncertainty_would_take_one_cluster():
    """Ten near-duplicates of high disagreement and two small distant clusters: FPS covers all three."""
    rng = np.random.default_rng(0)
    centres = {'a': [0.0, 0.0], 'b': [10.0, 0.0], 'c': [0.0, 10.0]}
    features, labels, values = [], [], []
    for name, count, level in (('a', 10, 0.4), ('b', 2, 0.2), ('c', 2, 0.15)):
        for _ in range(count):
            features.append(np.array(centres[name]) + rng.normal(0, 0.05, 2))
            labels.append(name)
            values.append(level + rng.uniform(0, 0.01))
    features.append([50.0, 50.0])  # far away but trusted (below the lower bound): never picked
    labels.append('trusted')
    values.append(0.01)
    picked = select_candidates(values, 0.1, 0.5, max_selected=3, features=np.array(features))
    assert sorted(labels[i] for i in picked) == ['a', 'b', 'c']
    assert picked[0] == int(np.argmax(values))  # FPS starts from the most uncertain configuration
    top = select_candidates(values, 0.1, 0.5, max_selected=3)
    assert {labels[i] for i in top} == {'a'}


def test_fps_with_duplicates_fills_the_cap_with_the_most_uncertain():
    values = [0.2, 0.3, 0.25, 0.4]
    features = np.zeros((4, 3))
    assert select_candidates(values, 0.1, 0.5, max_selected=3, features=features) == [3, 1, 2]


def test_fps_with_labelled_features_keeps_away_from_what_is_labelled():
    """Clusters a (most uncertain), b and c; b is the farthest from a but already labelled: then c is picked."""
    features = np.array([[0, 0], [0.1, 0], [10, 10], [10.1, 10.1], [0, 10], [0.1, 10.1]], dtype=float)
    values = [0.4, 0.39, 0.2, 0.21, 0.15, 0.16]
    assert select_candidates(values, 0.1, 0.5, 2, features) == [0, 3]  # a, then b (the farthest)
    labelled = np.array([[10.0, 10.05], [9.9, 10.0]])  # two configurations of cluster b are in the training set
    assert select_candidates(values, 0.1, 0.5, 2, features, labelled_features=labelled) == [0, 4]  # a, then c
    assert select_candidates(values, 0.1, 0.5, 2, features, labelled_features=np.zeros((0, 2))) == [0, 3]
    with pytest.raises(ValueError, match='labelled features of shape'):
        select_candidates(values, 0.1, 0.5, 2, features, labelled_features=np.zeros((3, 5)))


@pytest.mark.parametrize(
    ('lower', 'upper', 'message'),
    [(0.5, 0.1, 'must be smaller'), (0.2, 0.2, 'must be smaller'), (-0.1, 0.3, 'zero or positive'),
     (0.1, float('nan'), 'finite')],
)  # fmt: skip
def test_bad_bounds_are_refused(lower, upper, message):
    assert message in check_bounds(lower, upper)
    with pytest.raises(ValueError, match=message):
        select_candidates([0.2], lower, upper, 1)


def test_bad_cap_and_feature_length_are_refused():
    with pytest.raises(ValueError, match='at least 1'):
        select_candidates([0.2], 0.1, 0.5, 0)
    with pytest.raises(ValueError, match='2 rows for 3'):
        select_candidates([0.2, 0.3, 0.4], 0.1, 0.5, 1, features=np.zeros((2, 2)))


def test_disagreement_statistics_numbers():
    values = [0.05, 0.15, 0.25, 0.6]
    stats = disagreement_statistics(values, 0.1, 0.5)
    assert stats['n_explored'] == 4 and stats['n_candidates'] == 2 and stats['n_skipped'] == 0
    assert stats['fraction_above_lower'] == pytest.approx(0.75)
    assert stats['fraction_above_upper'] == pytest.approx(0.25)
    assert stats['mean'] == pytest.approx(0.2625) and stats['max'] == pytest.approx(0.6)
    assert stats['quantiles']['q50'] == pytest.approx(0.2)
    assert stats['quantiles']['q05'] == pytest.approx(np.quantile(values, 0.05))
    # Two snapshots a stopped trajectory did not make count as explored and above both bounds.
    stats = disagreement_statistics(values, 0.1, 0.5, skipped=[0, 0, 0, 2])
    assert stats['n_skipped'] == 2
    assert stats['fraction_above_lower'] == pytest.approx(5 / 6)
    assert stats['fraction_above_upper'] == pytest.approx(3 / 6)
    empty = disagreement_statistics([], 0.1, 0.5)
    assert empty['fraction_above_lower'] is None and empty['n_explored'] == 0


def test_stop_reasons_in_order():
    base = {'iteration': 2, 'max_iterations': 5, 'fraction_threshold': 0.1}
    assert stop_reason(**base, fraction_above_lower=0.5) is None
    assert stop_reason(**base, fraction_above_lower=0.05) == STOP_CONVERGED_FRACTION
    assert stop_reason(**base, fraction_above_lower=0.1) is None  # strictly below the threshold
    assert (
        stop_reason(**base, fraction_above_lower=0.05, test_forces_rmse=0.1, target_forces_rmse=0.1)
        == STOP_TARGET_ERROR
    )
    assert stop_reason(**base, fraction_above_lower=0.5, test_forces_rmse=0.2, target_forces_rmse=0.1) is None
    assert stop_reason(**{**base, 'iteration': 5}, fraction_above_lower=0.5) == STOP_MAX_ITERATIONS
    assert stop_reason(**base, fraction_above_lower=0.5, n_to_label=0) == STOP_NO_CANDIDATES
    # Hull candidates still to label hold off convergence, not the iteration limit.
    assert stop_reason(**base, fraction_above_lower=0.0, n_pending=2) is None
    assert stop_reason(**{**base, 'iteration': 5}, fraction_above_lower=0.0, n_pending=2) == STOP_MAX_ITERATIONS


def _committee(n_atoms: int, spreads: np.ndarray, factor: float, rng: np.random.Generator):
    """Per-atom std norms and true errors of a Gaussian committee whose true error is ``factor`` times its spread."""
    component = spreads / np.sqrt(3.0)
    errors = rng.normal(size=(n_atoms, 3)) * component[:, None] * factor
    return spreads, np.linalg.norm(errors, axis=1)


def test_calibration_of_a_calibrated_committee():
    rng = np.random.default_rng(1)
    spreads = rng.uniform(0.02, 1.0, 40000)
    result = calibration(*_committee(40000, spreads, 1.0, rng))
    assert result['n'] == 40000
    assert result['scale'] == pytest.approx(1.0, abs=0.02)
    assert result['ence'] < 0.05
    assert result['spearman'] > 0.5 and result['pearson'] > 0.5
    assert len(result['bins']) == 5 and sum(b['n'] for b in result['bins']) == 40000
    assert all(abs(b['rmse'] / b['rmv'] - 1) < 0.05 for b in result['bins'])


def test_calibration_of_an_overconfident_and_of_an_uninformative_committee():
    rng = np.random.default_rng(2)
    spreads = rng.uniform(0.02, 1.0, 40000)
    over = calibration(*_committee(40000, spreads, 2.0, rng))
    assert over['scale'] == pytest.approx(2.0, abs=0.05)
    assert over['ence'] == pytest.approx(1.0, abs=0.06)
    errors = np.linalg.norm(rng.normal(size=(40000, 3)) * 0.3, axis=1)  # error independent of the spread
    flat = calibration(spreads, errors)
    assert abs(flat['pearson']) < 0.03 and abs(flat['spearman']) < 0.03


def test_calibration_edge_cases():
    assert calibration([], [])['pearson'] is None
    constant = calibration([0.1, 0.1, 0.1], [0.1, 0.2, 0.3])
    assert constant['pearson'] is None and constant['scale'] == pytest.approx(np.sqrt(0.14 / 3) / 0.1)
    with pytest.raises(ValueError, match='2 predicted spreads for 3 errors'):
        calibration([0.1, 0.2], [0.1, 0.2, 0.3])


def test_force_spread_and_error_by_hand():
    members = np.array([[[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [[3.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    reference = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    spread, error = force_spread_and_error(members, reference)
    np.testing.assert_allclose(spread, [1.0, 0.0])
    np.testing.assert_allclose(error, [0.0, 1.0])


@pytest.mark.parametrize('members', [2, 3, 8])
def test_calibration_scale_of_a_committee_exchangeable_with_the_truth(members):
    """Members and truth drawn from one distribution: with the population std the scale is sqrt((K+1)/(K-1))."""
    rng = np.random.default_rng(members)
    draws = rng.normal(0.0, 0.1, size=(members + 1, 20000, 3))  # eV/Å; the last draw plays the reference
    spread, error = force_spread_and_error(draws[:-1], draws[-1])
    assert calibration(spread, error)['scale'] == pytest.approx(np.sqrt((members + 1) / (members - 1)), rel=0.02)
