"""Active learning, the pure part: scores, selection between trust bounds, stopping, calibration (imports no aiida).

The committee disagreement of a configuration is the largest, over its atoms, of the norm of the standard
deviation of the ensemble's forces (eV/Å; :class:`aiida_mlmat.ml.calculator.MLMatCalculator` reports it as
``forces_disagreement``). Below the lower trust bound the ensemble agrees: nothing to learn. Above the upper bound
the configuration is more likely unphysical (a trajectory gone astray) than informative. Candidates lie in
between: ``lower < d <= upper``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from aiida_mlmat.ml.selection import farthest_point_sampling

#: Why the loop stopped.
STOP_TARGET_ERROR = 'target_error'  # the test force RMSE reached the target
STOP_CONVERGED_FRACTION = 'converged_fraction'  # few explored configurations are above the lower bound
STOP_MAX_ITERATIONS = 'max_iterations'
STOP_NO_CANDIDATES = 'no_candidates'  # not converged, but nothing lies between the bounds: no label can help
STOP_REASONS = (STOP_TARGET_ERROR, STOP_CONVERGED_FRACTION, STOP_MAX_ITERATIONS, STOP_NO_CANDIDATES)

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


#: Default trust bounds of the committee force disagreement, eV/Å (the workchain's `selection.lower/upper`).
DEFAULT_LOWER = 0.05
DEFAULT_UPPER = 0.5


def check_bounds(lower: float, upper: float) -> str | None:
    """Return why trust bounds (eV/Å) are invalid, or None."""
    if not (np.isfinite(lower) and np.isfinite(upper)):
        return f'the trust bounds must be finite numbers, got lower {lower} and upper {upper} eV/Å'
    if lower < 0:
        return f'the lower trust bound must be zero or positive, got {lower} eV/Å'
    if not lower < upper:
        return f'the lower trust bound ({lower} eV/Å) must be smaller than the upper one ({upper} eV/Å)'
    return None


def candidates_between(disagreement: Sequence[float], lower: float, upper: float) -> np.ndarray:
    """Indices of the configurations with ``lower < d <= upper`` (eV/Å), in their order."""
    values = np.asarray(disagreement, dtype=float)
    return np.flatnonzero((values > lower) & (values <= upper))


def check_quantile(quantile: float) -> str | None:
    """Return why a lower-bound quantile is invalid (it must lie in [0, 1)), or None."""
    if not 0.0 <= quantile < 1.0:
        return f'must lie in [0, 1), got {quantile}'
    return None


def adaptive_lower(
    disagreement: Sequence[float], lower: float, upper: float, quantile: float | None, min_candidates: int = 0
) -> float:
    """The lower bound (eV/Å) candidates are taken above: ``lower``, or raised to a quantile of the disagreement.

    With ``quantile`` q, the bound becomes the larger of ``lower`` and the q-quantile of the disagreement of the
    configurations at most ``upper`` (never reaching ``upper``), so that only the most uncertain ``1 - q`` of the
    trusted-but-uncertain region is a candidate while the ensemble is still poor. This is the adaptive lower
    trust level of DP-GEN (``model_devi_adapt_trust_lo`` with ``model_devi_perc_candi_f``). Convergence is
    still judged against the fixed ``lower`` bound.

    With ``min_candidates`` n (DP-GEN's ``model_devi_numb_candi_f``) the raised bound is lowered again, where
    needed, so that at least n configurations lie above it (or all of them at most ``upper``): a high quantile of
    a small exploration never leaves fewer candidates than the labels an iteration may spend. It never goes
    below ``lower``: what the ensemble agrees on is not a candidate.

    :raises ValueError: for a quantile outside [0, 1) or a negative ``min_candidates``.
    """
    if quantile is None:
        return float(lower)
    error = check_quantile(quantile)
    if error:
        raise ValueError(f'the lower-bound quantile {error}')
    if min_candidates < 0:
        raise ValueError(f'the minimum number of candidates must be at least 0, got {min_candidates}')
    values = np.asarray(disagreement, dtype=float)
    values = values[values <= upper]
    if not len(values):
        return float(lower)
    raised = float(np.quantile(values, quantile))
    if min_candidates:
        ordered = np.sort(values)[::-1]
        nth = ordered[min(min_candidates, len(values)) - 1]  # the n-th most uncertain at most upper
        below = ordered[ordered < nth]
        # halfway to the next value down (a bound that prints as what it is), or everything: down to `lower`
        raised = min(raised, float((nth + below[0]) / 2) if len(below) else float(lower))
    return float(min(max(lower, raised), np.nextafter(upper, -np.inf)))


def disagreement_statistics(
    disagreement: Sequence[float], lower: float, upper: float, skipped: Sequence[int] | None = None
) -> dict[str, Any]:
    """Statistics of the disagreement (eV/Å) over explored configurations, for the convergence test and the report.

    :param skipped: per configuration, snapshots its trajectory did not make because it was stopped above the
        trust region (``mlmat_skipped``); they count as explored and above both bounds.
    :return: ``n_explored``, ``n_skipped``, ``n_candidates``, ``mean``, ``max``, ``quantiles`` (``q05`` ..
        ``q95``), ``fraction_above_lower``, ``fraction_above_upper`` (over snapshots made and skipped).
    """
    values = np.asarray(disagreement, dtype=float)
    n_skipped = int(np.sum(skipped)) if skipped is not None and len(skipped) else 0
    total = len(values) + n_skipped
    stats: dict[str, Any] = {
        'n_explored': len(values),
        'n_skipped': n_skipped,
        'n_candidates': len(candidates_between(values, lower, upper)),
        'lower_bound': float(lower),
        'upper_bound': float(upper),
        'units': 'eV/Å',
    }
    if total == 0:
        return {**stats, 'mean': None, 'max': None, 'quantiles': {}, 'fraction_above_lower': None,
                'fraction_above_upper': None}  # fmt: skip
    stats['fraction_above_lower'] = float((np.sum(values > lower) + n_skipped) / total)
    stats['fraction_above_upper'] = float((np.sum(values > upper) + n_skipped) / total)
    if len(values):
        stats['mean'] = float(values.mean())
        stats['max'] = float(values.max())
        stats['quantiles'] = {f'q{round(q * 100):02d}': float(np.quantile(values, q)) for q in QUANTILES}
    else:
        stats.update({'mean': None, 'max': None, 'quantiles': {}})
    return stats


def _standardised(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=float)
    scale = features.std(axis=0)
    keep = scale > 1e-12
    if not keep.any():
        return np.zeros((len(features), 1))
    return (features[:, keep] - features[:, keep].mean(axis=0)) / scale[keep]


def select_candidates(
    disagreement: Sequence[float],
    lower: float,
    upper: float,
    max_selected: int,
    features: np.ndarray | None = None,
    labelled_features: np.ndarray | None = None,
) -> list[int]:
    """Pick at most ``max_selected`` configurations between the bounds, diverse when there are more.

    With more candidates than ``max_selected``: farthest-point sampling on the standardised ``features`` of the
    candidates (one row per configuration, e.g. mean descriptors), starting from the most uncertain one; without
    features, the most uncertain ones. With ``labelled_features`` (the same features of what is labelled already)
    the sampling also keeps away from the labelled configurations (they count as picked; the standardisation is
    over both). Returns indices into ``disagreement``, in the order picked.

    :raises ValueError: for invalid bounds, a cap below 1, features of another length, or labelled features of
        another width.
    """
    error = check_bounds(lower, upper)
    if error:
        raise ValueError(error)
    if max_selected < 1:
        raise ValueError(f'the number to select must be at least 1, got {max_selected}')
    values = np.asarray(disagreement, dtype=float)
    candidates = candidates_between(values, lower, upper)
    ranked = candidates[np.argsort(-values[candidates], kind='stable')]
    if len(candidates) <= max_selected:
        return [int(index) for index in ranked]
    if features is None:
        return [int(index) for index in ranked[:max_selected]]
    features = np.asarray(features, dtype=float)
    if len(features) != len(values):
        raise ValueError(f'features have {len(features)} rows for {len(values)} configurations')
    reference = None
    if labelled_features is not None and len(labelled_features):
        labelled_features = np.asarray(labelled_features, dtype=float)
        if labelled_features.ndim != 2 or labelled_features.shape[1] != features.shape[1]:
            raise ValueError(
                f'labelled features of shape {labelled_features.shape} for features of {features.shape[1]} columns'
            )
        joint = _standardised(np.concatenate([features[candidates], labelled_features]))
        points, reference = joint[: len(candidates)], joint[len(candidates) :]
    else:
        points = _standardised(features[candidates])
    start = int(np.argmax(values[candidates]))
    picked = farthest_point_sampling(points, max_selected, start=start, reference=reference)
    if len(picked) < max_selected:  # duplicates left: fill with the most uncertain ones not yet picked
        chosen = {int(candidates[i]) for i in picked}
        extra = [int(index) for index in ranked if int(index) not in chosen]
        return [int(candidates[i]) for i in picked] + extra[: max_selected - len(picked)]
    return [int(candidates[i]) for i in picked]


def stop_reason(
    *,
    iteration: int,
    max_iterations: int,
    fraction_above_lower: float | None,
    fraction_threshold: float,
    test_forces_rmse: float | None = None,
    target_forces_rmse: float | None = None,
    n_to_label: int = 1,
    n_pending: int = 0,
) -> str | None:
    """Decide whether the loop stops after ``iteration`` (1-based), and why; None to go on.

    In order: ``target_error`` when the test force RMSE (eV/Å) is at most the target; ``converged_fraction``
    when the fraction of explored configurations above the lower bound is below the threshold;
    ``max_iterations``; ``no_candidates`` when nothing would be labelled. The first two wait while
    ``n_pending`` configurations (hull candidates) are still to be labelled.
    """
    if n_pending == 0:
        if target_forces_rmse is not None and test_forces_rmse is not None and test_forces_rmse <= target_forces_rmse:
            return STOP_TARGET_ERROR
        if fraction_above_lower is not None and fraction_above_lower < fraction_threshold:
            return STOP_CONVERGED_FRACTION
    if iteration >= max_iterations:
        return STOP_MAX_ITERATIONS
    if n_to_label == 0:
        return STOP_NO_CANDIDATES
    return None


def _rank(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind='stable')
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    for value in np.unique(values):  # average ranks of ties
        tied = values == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def _correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    def flat(values: np.ndarray) -> bool:
        return bool(values.std() <= 1e-12 * max(float(np.abs(values).max()), 1e-300))

    if len(a) < 2 or flat(a) or flat(b):
        return None
    return float(np.corrcoef(a, b)[0, 1])


def calibration(predicted_std: Sequence[float], true_error: Sequence[float], n_bins: int = 5) -> dict[str, Any]:
    """How well the ensemble's predicted force spread tracks its true force error (both eV/Å, one value per atom).

    ``predicted_std`` is the norm of the per-component standard deviation of the members' forces and
    ``true_error`` the norm of the ensemble-mean force error; calibrated here means the truth is distributed
    as N(ensemble mean, std^2), where the mean of ``error^2 / std^2`` is 1. The std is the population one
    (ddof 0, as :class:`~aiida_mlmat.ml.calculator.MLMatCalculator` reports it): a committee of K members that
    are exchangeable with the truth (independent draws from the same distribution) has ``scale``
    sqrt((K + 1) / (K - 1)), 1.73 for 2 members, 1.41 for 3, 1.13 for 8, not 1.

    :return: ``n``; ``pearson`` and ``spearman`` correlations; ``scale`` = sqrt(mean err^2 / mean std^2) (1 when
        calibrated on average, > 1 over-confident); ``ence``, the expected normalised calibration error
        (mean over ``n_bins`` equal-count bins of predicted std of |RMV - RMSE| / RMV, 0 is perfect); ``bins``
        (``rmv``, ``rmse``, ``n`` per bin) for a reliability diagram. Undefined figures are None.
    """
    std = np.asarray(predicted_std, dtype=float).ravel()
    error = np.asarray(true_error, dtype=float).ravel()
    if len(std) != len(error):
        raise ValueError(f'{len(std)} predicted spreads for {len(error)} errors')
    result: dict[str, Any] = {'n': len(std), 'units': 'eV/Å'}
    if len(std) == 0:
        return {**result, 'pearson': None, 'spearman': None, 'scale': None, 'ence': None, 'bins': []}
    result['pearson'] = _correlation(std, error)
    result['spearman'] = _correlation(_rank(std), _rank(error))
    mean_var = float(np.mean(std**2))
    result['scale'] = float(np.sqrt(np.mean(error**2) / mean_var)) if mean_var > 0 else None
    bins = []
    order = np.argsort(std, kind='stable')
    for part in np.array_split(order, min(n_bins, len(std))):
        rmv = float(np.sqrt(np.mean(std[part] ** 2)))
        rmse = float(np.sqrt(np.mean(error[part] ** 2)))
        bins.append({'rmv': rmv, 'rmse': rmse, 'n': len(part)})
    valid = [b for b in bins if b['rmv'] > 0]
    result['ence'] = float(np.mean([abs(b['rmv'] - b['rmse']) / b['rmv'] for b in valid])) if valid else None
    result['bins'] = bins
    return result


def force_spread_and_error(member_forces: np.ndarray, reference_forces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-atom predicted spread and true error (eV/Å) from the members' forces, shape (K, n_atoms, 3).

    :return: (norm of the per-component std over members, norm of the ensemble-mean error), each (n_atoms,).
    """
    member_forces = np.asarray(member_forces, dtype=float)
    spread = np.linalg.norm(member_forces.std(axis=0), axis=1)
    error = np.linalg.norm(member_forces.mean(axis=0) - np.asarray(reference_forces, dtype=float), axis=1)
    return spread, error
