"""Discovery metrics (matbench-discovery definitions) on constructed cases, and top-k selection."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aiida_mlmat.hull.metrics import discovery_metrics, select_top

pytestmark = pytest.mark.unit

#: 10 candidates, 2 truly stable (0 and 1); the model calls 0, 1 and 2 stable: TP 2, FP 1, FN 0, TN 7.
TRUE = [0.0, -0.01, 0.1, 0.2, 0.3, 0.05, 0.4, 0.15, 0.02, 0.6]
PRED = [-0.05, 0.0, -0.01, 0.1, 0.25, 0.06, 0.3, 0.2, 0.03, 0.5]


def test_constructed_case():
    metrics = discovery_metrics(np.array(PRED), np.array(TRUE))
    assert (metrics['tp'], metrics['fp'], metrics['tn'], metrics['fn']) == (2, 1, 7, 0)
    assert metrics['n'] == 10
    assert metrics['precision'] == pytest.approx(2 / 3)
    assert metrics['recall'] == pytest.approx(1.0)
    assert metrics['f1'] == pytest.approx(0.8)
    assert metrics['accuracy'] == pytest.approx(0.9)
    assert metrics['prevalence'] == pytest.approx(0.2)
    assert metrics['daf'] == pytest.approx((2 / 3) / 0.2)
    assert metrics['fpr'] == pytest.approx(1 / 8)
    assert metrics['tnr'] == pytest.approx(7 / 8)
    assert metrics['fnr'] == pytest.approx(0.0)
    assert metrics['mae'] == pytest.approx(0.059)
    assert metrics['rmse'] == pytest.approx(math.sqrt(0.00499))
    ref = np.array(TRUE)
    r2 = 1 - 0.0499 / np.sum((ref - ref.mean()) ** 2)
    assert metrics['r2'] == pytest.approx(r2)
    assert metrics['threshold'] == 0.0


def test_threshold():
    metrics = discovery_metrics(PRED, TRUE, threshold=0.05)
    # true stable: 0, 1, 5, 8; predicted stable: 0, 1, 2, 8
    assert (metrics['tp'], metrics['fp'], metrics['tn'], metrics['fn']) == (3, 1, 5, 1)
    assert metrics['precision'] == pytest.approx(0.75)
    assert metrics['recall'] == pytest.approx(0.75)
    assert metrics['daf'] == pytest.approx(0.75 / 0.4)


def test_mappings_match_names_and_missing_predictions_are_unstable():
    predicted = {'a': None, 'b': 0.0, 'd': 0.3}
    true = {'a': 0.0, 'b': 0.1, 'c': 0.0, 'd': 0.2}
    metrics = discovery_metrics(predicted, true)
    # a: missing prediction, truly stable -> FN; b: FP; c: no prediction -> FN; d: TN
    assert (metrics['tp'], metrics['fp'], metrics['tn'], metrics['fn']) == (0, 1, 1, 2)
    assert metrics['n_missing_predictions'] == 2
    assert metrics['n_regression'] == 2
    assert metrics['mae'] == pytest.approx(0.1)
    assert metrics['precision'] == 0.0
    assert metrics['recall'] == 0.0
    assert metrics['f1'] is None  # precision + recall = 0
    assert metrics['daf'] == 0.0


def test_zero_divisions_give_none():
    empty = discovery_metrics([], [])
    assert empty['n'] == 0
    for key in ('precision', 'recall', 'f1', 'accuracy', 'prevalence', 'daf', 'mae', 'rmse', 'r2'):
        assert empty[key] is None, key
    nothing_predicted = discovery_metrics([0.1, 0.2], [0.0, 0.3])
    assert nothing_predicted['precision'] is None
    assert nothing_predicted['f1'] is None
    assert nothing_predicted['daf'] is None
    assert nothing_predicted['recall'] == 0.0
    nothing_stable = discovery_metrics([0.0, 0.2], [0.1, 0.3])
    assert nothing_stable['prevalence'] == 0.0
    assert nothing_stable['recall'] is None
    assert nothing_stable['daf'] is None
    assert nothing_stable['precision'] == 0.0
    one = discovery_metrics([0.0], [0.0])
    assert one['r2'] is None
    assert one['daf'] == 1.0


def test_length_mismatch():
    with pytest.raises(ValueError, match='length'):
        discovery_metrics([0.0, 1.0], [0.0])


def test_select_top():
    results = {
        'a': {'status': 'ok', 'p_stable': 0.5, 'e_above_hull': 0.01},
        'b': {'status': 'ok', 'p_stable': 1.0, 'e_above_hull': 0.0},
        'c': {'status': 'ok', 'p_stable': 0.5, 'e_above_hull': 0.0},
        'd': {'status': 'failed', 'p_stable': None, 'e_above_hull': None},
        'e': {'status': 'ok', 'p_stable': 0.0, 'e_above_hull': 0.2},
        'f': {'status': 'failed', 'p_stable': 1.0, 'e_above_hull': 0.0},
        'g': {'status': 'ok', 'stable': True, 'e_above_hull': 0.0},
    }
    assert select_top(results, 3) == ['b', 'g', 'c']
    assert select_top(results, 10) == ['b', 'g', 'c', 'a', 'e']
    assert select_top(results, 0) == []
    assert select_top({}, 5) == []
