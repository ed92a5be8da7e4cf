"""Screening metrics as matbench-discovery defines them, and the choice of candidates to verify.

Following ``matbench_discovery.metrics.discovery.stable_metrics`` (Riebesell et al., Nat. Mach. Intell. 2025):
a candidate is predicted stable when its predicted energy above the hull is at most ``threshold`` (eV/atom) and
truly stable when its reference energy above the hull is. From the confusion matrix (TP, FP, TN, FN):

- precision = TP / (TP + FP), recall (TPR) = TP / (TP + FN), F1 = 2 precision recall / (precision + recall),
  accuracy = (TP + TN) / n, FPR = FP / (FP + TN), TNR = TN / (FP + TN), FNR = FN / (TP + FN);
- prevalence = (TP + FN) / n, the fraction of truly stable candidates in the evaluated set, i.e. the precision of
  picking at random;
- DAF (discovery acceleration factor) = precision / prevalence: how many times more stable candidates the model
  finds than random picking;
- MAE, RMSE and R2 of the predicted against the reference e_above_hull (eV/atom).

As in matbench-discovery, a missing (None or NaN) prediction counts as predicted unstable, and a candidate without
a reference value is left out of the confusion matrix; the regression metrics use the pairs with both values.
Where matbench-discovery returns NaN for a zero denominator (no predicted positives, no true positives, empty set,
R2 of fewer than two pairs or of constant reference values), these functions return ``None``; they never raise
for such cases.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return float(numerator / denominator)


def _as_float(value: Any) -> float:
    try:
        result = float(value)
    except (TypeError, ValueError):
        return math.nan
    return result


def _paired(predicted: Any, true: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(predicted, Mapping) or isinstance(true, Mapping):
        if not (isinstance(predicted, Mapping) and isinstance(true, Mapping)):
            raise TypeError('give both predicted and true values as mappings {name: value}, or both as arrays')
        names = sorted(set(predicted) | set(true))
        pred = np.array([_as_float(predicted.get(name)) for name in names])
        ref = np.array([_as_float(true.get(name)) for name in names])
        return pred, ref
    pred = np.array([_as_float(v) for v in np.asarray(predicted, dtype=object).ravel()])
    ref = np.array([_as_float(v) for v in np.asarray(true, dtype=object).ravel()])
    if pred.shape != ref.shape:
        raise ValueError(f'predicted and true values differ in length: {pred.size} and {ref.size}')
    return pred, ref


def discovery_metrics(predicted_e_above_hull: Any, true_e_above_hull: Any, threshold: float = 0.0) -> dict[str, Any]:
    """Return the classification and regression metrics of predicted against reference energies above the hull.

    :param predicted_e_above_hull: predicted e_above_hull (eV/atom), an array or ``{name: value}``.
    :param true_e_above_hull: the reference values, in the same order, or a mapping (names are matched; a name in
        only one of the two counts as a missing value there).
    :param threshold: stability threshold (eV/atom): stable means ``e_above_hull <= threshold``.
    :return: ``n`` (candidates in the confusion matrix), ``threshold``, ``tp``, ``fp``, ``tn``, ``fn``,
        ``precision``, ``recall``, ``f1``, ``accuracy``, ``tpr``, ``fpr``, ``tnr``, ``fnr``, ``prevalence``,
        ``daf``, ``mae``, ``rmse``, ``r2`` (energies in eV/atom), ``n_regression`` (pairs with both values) and
        ``n_missing_predictions``; a ratio with a zero denominator is ``None``.
    :raises ValueError: when two arrays of different lengths are given.
    """
    pred, ref = _paired(predicted_e_above_hull, true_e_above_hull)
    has_ref = ~np.isnan(ref)
    missing = np.isnan(pred)
    pred_stable = (pred <= threshold) & ~missing  # a missing prediction counts as unstable
    true_stable = ref <= threshold
    tp = int(np.sum(pred_stable & true_stable & has_ref))
    fp = int(np.sum(pred_stable & ~true_stable & has_ref))
    tn = int(np.sum(~pred_stable & ~true_stable & has_ref))
    fn = int(np.sum(~pred_stable & true_stable & has_ref))
    n = tp + fp + tn + fn
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    f1 = _ratio(2 * precision * recall, precision + recall) if precision is not None and recall is not None else None
    prevalence = _ratio(tp + fn, n)
    both = has_ref & ~missing
    errors = pred[both] - ref[both]
    n_regression = int(both.sum())
    r2 = None
    if n_regression > 1:
        total = float(np.sum((ref[both] - ref[both].mean()) ** 2))
        r2 = _ratio(total - float(np.sum(errors**2)), total)
    return {
        'n': n,
        'threshold': float(threshold),
        'tp': tp,
        'fp': fp,
        'tn': tn,
        'fn': fn,
        'precision': precision,
        'recall': recall,
        'f1': f1,
        'accuracy': _ratio(tp + tn, n),
        'tpr': recall,
        'fpr': _ratio(fp, fp + tn),
        'tnr': _ratio(tn, fp + tn),
        'fnr': _ratio(fn, tp + fn),
        'prevalence': prevalence,
        'daf': _ratio(precision, prevalence) if prevalence else None,
        'mae': float(np.mean(np.abs(errors))) if n_regression else None,
        'rmse': float(np.sqrt(np.mean(errors**2))) if n_regression else None,
        'r2': r2,
        'n_regression': n_regression,
        'n_missing_predictions': int(np.sum(missing & has_ref)),
    }


def select_top(results: Mapping[str, Mapping[str, Any]], k: int) -> list[str]:
    """Return the names of the ``k`` most promising candidates.

    Ordered by P(stable) descending, then e_above_hull ascending, then name; failed candidates (``status`` not
    ``ok``) and those without an e_above_hull are skipped. Without ``p_stable`` (one model), ``stable`` gives 1 or 0.
    """

    def p_stable(entry: Mapping[str, Any]) -> float:
        value = entry.get('p_stable')
        if value is None or math.isnan(_as_float(value)):
            return 1.0 if entry.get('stable') else 0.0
        return float(value)

    ok = [
        (name, entry)
        for name, entry in results.items()
        if entry.get('status', 'ok') == 'ok' and not math.isnan(_as_float(entry.get('e_above_hull')))
    ]
    ok.sort(key=lambda item: (-p_stable(item[1]), float(item[1]['e_above_hull']), str(item[0])))
    return [name for name, _ in ok[: max(0, int(k))]]


def describe_verification(metrics: Mapping[str, Any], daf: bool = False) -> str:
    """One line on how the checked candidates fared against the reference (the metrics of :func:`discovery_metrics`).

    Both sides are hulls of the checked candidates and the elements alone: the model's (its mean energies) and the
    reference's, so "on the model's hull" is not the ensemble vote that a candidate's ``stable`` counts.

    :param daf: also give the discovery acceleration factor, where it is defined.
    """

    def fmt(value: Any) -> str:
        return 'n/a' if value is None else f'{value:.4g}' if isinstance(value, float) else str(value)

    predicted = (metrics.get('tp') or 0) + (metrics.get('fp') or 0)
    confirmed = (
        f'the model puts {predicted} on their hull, the reference confirms {metrics.get("tp")} '
        f'(precision {fmt(metrics.get("precision"))})'
        if predicted
        else 'the model puts none on their hull'
    )
    recall = metrics.get('recall')
    if recall is None:
        found = 'none stable by the reference'
    else:
        f1 = metrics.get('f1')
        found = f'recall {fmt(recall)}' + (f', F1 {fmt(f1)}' if f1 is not None else '')
    factor = metrics.get('daf') if daf else None
    return (
        f'verification of the top {metrics.get("n")} by the reference: e_above_hull MAE {fmt(metrics.get("mae"))} '
        f'eV/atom; {confirmed}; {found}' + (f'; DAF {factor:.3g}' if factor is not None else '')
    )
