"""Calcfunctions of the active-learning loop: score, select, merge labels, calibrate, summarise with a plot.

Each is small and pure; the numerics live in :mod:`aiida_mlmat.ml.active`. Frames keep what happened to them in
their ``info``: the iteration that labelled them (``mlmat_al_iteration``), where they came from (``mlmat_source``:
``explore`` or ``hull``) and their committee disagreement (``mlmat_disagreement``, eV/Å).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from aiida import orm
from aiida.engine import calcfunction
from ase import Atoms

from aiida_mlmat.common.constants import DISAGREEMENT_KEY, INDEX_KEY
from aiida_mlmat.data.configurations import ConfigurationSetData
from aiida_mlmat.data.potential import PotentialData
from aiida_mlmat.workflows.functions import gather_chunks

ITERATION_KEY = 'mlmat_al_iteration'
SOURCE_KEY = 'mlmat_source'
POOL_INDEX_KEY = 'mlmat_pool_index'
HULL_INDEX_KEY = 'mlmat_hull_index'

#: Per-iteration record inputs of :func:`summarise_active_learning`: ``<kind>_<iteration>``.
RECORD_KINDS = ('potential', 'dataset', 'training', 'test', 'exploration', 'merge', 'calibration')


@calcfunction
def score_exploration(
    explored: ConfigurationSetData,
    lower: orm.Float,
    upper: orm.Float,
    lower_quantile: orm.Float | None = None,
    min_candidates: orm.Int | None = None,
) -> dict[str, orm.Data]:
    """Disagreement statistics of the explored configurations and the candidates between the trust bounds.

    Outputs ``statistics`` (Dict, eV/Å; see :func:`aiida_mlmat.ml.active.disagreement_statistics`, plus
    ``candidate_lower_bound``; ``n_candidates`` counts the configurations with ``l < d <= upper`` and
    ``n_between_bounds`` those with ``lower < d <= upper``: they differ only with ``lower_quantile``) and
    ``candidates`` (the configurations with ``l < d <= upper``, each keeping its index in the explored set).
    ``l`` is ``lower``, or with ``lower_quantile`` the adaptive bound of
    :func:`aiida_mlmat.ml.active.adaptive_lower`, kept low enough to leave ``min_candidates`` candidates (the
    iteration's label cap) where the explored set has them; the convergence statistics always use ``lower``.

    :raises ValueError: when a configuration carries no disagreement (it was not explored with an ensemble).
    """
    from aiida_mlmat.ml.active import adaptive_lower, candidates_between, disagreement_statistics
    from aiida_mlmat.worker.tasks.sample import SKIPPED_KEY

    values, skipped, missing = [], [], []
    for position, frame in enumerate(explored.iter_atoms()):  # one at a time: an explored set can be large
        if DISAGREEMENT_KEY not in frame.info:
            missing.append(position)
            continue
        values.append(float(frame.info[DISAGREEMENT_KEY]))
        skipped.append(int(frame.info.get(SKIPPED_KEY, 0)))
    if missing:
        raise ValueError(
            f'{len(missing)} explored configurations (first: {missing[0]}) carry no `{DISAGREEMENT_KEY}`: '
            'explore with an ensemble potential (calculator `mlmat`, K >= 2)'
        )
    statistics = disagreement_statistics(values, lower.value, upper.value, skipped)
    quantile = lower_quantile.value if lower_quantile is not None else None
    floor = min_candidates.value if min_candidates is not None else 0
    bound = adaptive_lower(values, lower.value, upper.value, quantile, min_candidates=floor)
    picked = candidates_between(values, bound, upper.value)
    statistics['candidate_lower_bound'] = bound
    statistics['n_between_bounds'] = statistics['n_candidates']
    statistics['n_candidates'] = len(picked)
    return {
        'statistics': orm.Dict(statistics),
        'candidates': explored.subsets([[int(index) for index in picked]], numbered=True)[0],
    }


@calcfunction
def select_for_labelling(
    candidates: ConfigurationSetData,
    lower: orm.Float,
    upper: orm.Float,
    max_selected: orm.Int,
    iteration: orm.Int,
    descriptors: orm.ArrayData | None = None,
    pending: ConfigurationSetData | None = None,
) -> ConfigurationSetData:
    """The labelling queue of one iteration: at most ``max_selected`` candidates (FPS on the per-structure mean
    ``descriptors`` when given and there are more candidates, else the most uncertain), then every ``pending``
    hull candidate. Queue frames are numbered 0.. (``mlmat_index``) and record their source and iteration.
    """
    from aiida_mlmat.ml.active import select_candidates

    frames = candidates.get_atoms()
    values = [float(frame.info[DISAGREEMENT_KEY]) for frame in frames]
    features = descriptors.get_array('means') if descriptors is not None else None
    if features is not None and len(features) != len(frames):
        raise ValueError(f'descriptors of {len(features)} structures for {len(frames)} candidates')
    picked = select_candidates(values, lower.value, upper.value, max_selected.value, features) if frames else []
    queue: list[Atoms] = []
    for index in picked:
        frame = frames[index]
        frame.info[POOL_INDEX_KEY] = int(frame.info.get(INDEX_KEY, index))
        frame.info[SOURCE_KEY] = 'explore'
        queue.append(frame)
    if pending is not None:
        for frame in pending.get_atoms():
            frame.info[SOURCE_KEY] = 'hull'
            queue.append(frame)
    for position, frame in enumerate(queue):
        frame.info[INDEX_KEY] = position
        frame.info[ITERATION_KEY] = iteration.value
    queued = ConfigurationSetData(queue)
    queued.label = f'labelling queue of active-learning iteration {iteration.value}'
    return queued


@calcfunction
def prepare_hull_candidates(candidates: ConfigurationSetData) -> ConfigurationSetData:
    """Hull candidates as a pending queue: unlabelled copies, each recording its index in the given set."""
    frames = []
    for position, frame in enumerate(candidates.get_atoms()):
        atoms = Atoms(frame.numbers, positions=frame.positions, cell=frame.cell, pbc=frame.pbc)
        atoms.info[HULL_INDEX_KEY] = position
        frames.append(atoms)
    return ConfigurationSetData(frames)


@calcfunction
def merge_labels(
    training_set: ConfigurationSetData,
    queue: ConfigurationSetData,
    calculator: orm.Dict,
    failures: orm.Dict,
    iteration: orm.Int,
    **chunks: ConfigurationSetData,
) -> dict[str, orm.Data]:
    """Add one iteration's labels to the training set; record every configuration that failed.

    :param queue: the labelling queue (to know which hull candidates are still unlabelled).
    :param failures: ``{failed_<chunk>: reason}`` of chunks whose label job failed as a whole.
    :param chunks: labelled chunks (``labelled_<chunk>``) and the unlabelled chunks of failed jobs (``failed_*``).
    :return: ``training_set`` (old + new configurations; its ``excluded`` attribute holds the exclusions of every
        iteration, each with its ``iteration``), ``labelled`` (this iteration's new labels, when any), ``pending``
        (hull candidates still unlabelled, when any), ``counts`` (Dict: queued, labelled, failed, per source).
    """
    labelled, excluded = gather_chunks(chunks, failures.get_dict())
    queued = queue.get_atoms()
    by_index = {int(frame.info[INDEX_KEY]): frame for frame in queued}
    for record in excluded:
        record['iteration'] = iteration.value
        source = by_index.get(int(record['index']))
        record['source'] = source.info.get(SOURCE_KEY, 'explore') if source is not None else 'explore'
    done = {int(frame.info[INDEX_KEY]) for frame in labelled}
    pending = [
        frame for frame in queued if frame.info.get(SOURCE_KEY) == 'hull' and int(frame.info[INDEX_KEY]) not in done
    ]
    for frame in pending:
        del frame.info[INDEX_KEY]
    spec = training_set.calculator or calculator.get_dict()
    counts = {
        'queued': len(queued),
        'labelled': len(labelled),
        'failed': len(excluded),
        'queued_hull': sum(1 for frame in queued if frame.info.get(SOURCE_KEY) == 'hull'),
        'labelled_hull': sum(1 for frame in labelled if frame.info.get(SOURCE_KEY) == 'hull'),
        'pending_hull': len(pending),
    }
    outputs: dict[str, orm.Data] = {
        'training_set': training_set.extended(labelled, calculator=spec, excluded=training_set.excluded + excluded),
        'counts': orm.Dict(counts),
    }
    if labelled:
        outputs['labelled'] = ConfigurationSetData(labelled, calculator=calculator.get_dict(), excluded=excluded)
    if pending:
        outputs['pending'] = ConfigurationSetData(pending)
    names = {
        'training_set': 'training set after active-learning iteration {}',
        'labelled': 'labels of active-learning iteration {}',
        'pending': 'hull candidates pending after active-learning iteration {}',
    }
    for key, text in names.items():
        if key in outputs:
            outputs[key].label = text.format(iteration.value)
    return outputs


@calcfunction
def calibrate_potential(potential: PotentialData, labelled: ConfigurationSetData) -> orm.Dict:
    """Calibration of the ensemble's force spread against its true force error on newly labelled configurations.

    Per atom: predicted spread = norm of the members' force standard deviation, true error = norm of the
    ensemble-mean force minus the reference force (eV/Å); see :func:`aiida_mlmat.ml.active.calibration`.
    Also ``disagreement_vs_max_error``: the Pearson correlation, per configuration, of the committee
    disagreement (largest per-atom spread) with the largest per-atom error.
    """
    from aiida_mlmat.ml.active import calibration

    calculator = potential.get_calculator()
    spreads, errors, frame_spread, frame_error = [], [], [], []
    for frame in labelled.get_atoms():
        if 'forces' not in frame.calc.results:
            continue
        reference = np.asarray(frame.calc.results['forces'])
        atoms = frame.copy()
        atoms.calc = calculator
        mean = atoms.get_forces()
        spread = np.linalg.norm(atoms.calc.results['forces_std'], axis=1)
        error = np.linalg.norm(mean - reference, axis=1)
        spreads.append(spread)
        errors.append(error)
        frame_spread.append(spread.max())
        frame_error.append(error.max())
    if not spreads:
        return orm.Dict(calibration([], []))
    result = calibration(np.concatenate(spreads), np.concatenate(errors))
    per_frame = calibration(frame_spread, frame_error, n_bins=min(5, len(frame_spread)))
    result['disagreement_vs_max_error'] = per_frame['pearson']
    result['n_configurations'] = len(frame_spread)
    return orm.Dict(result)


def _test_errors(record: dict[str, orm.Data]) -> dict[str, Any]:
    keys = ('energy_rmse_per_atom', 'energy_mae_per_atom', 'forces_rmse', 'forces_mae', 'n_test')
    if 'test' in record:
        metrics = record['test'].get_dict()
        source = 'test_set'
    else:
        metrics = record['training'].get_dict()
        source = 'training_split'
    return {**{key: metrics.get(key) for key in keys}, 'source': source}


def iteration_records(nodes: dict[str, orm.Data]) -> list[dict[str, Any]]:
    """Per-iteration metrics from the ``<kind>_<iteration>`` inputs of :func:`summarise_active_learning`."""
    grouped: dict[int, dict[str, orm.Data]] = {}
    for key, node in nodes.items():
        kind, _, number = key.rpartition('_')
        if kind not in RECORD_KINDS or not number.isdigit():
            raise ValueError(f'unexpected input `{key}`; expected <kind>_<iteration> with kind in {RECORD_KINDS}')
        grouped.setdefault(int(number), {})[kind] = node
    records = []
    for number in sorted(grouped):
        record = grouped[number]
        statistics = record['exploration'].get_dict()
        merge = record['merge'].get_dict() if 'merge' in record else {}
        counts = {
            'training': record['dataset'].count,
            'explored': statistics.get('n_explored'),
            'skipped': statistics.get('n_skipped'),
            'candidates': statistics.get('n_candidates'),
            'selected': merge.get('queued', 0) - merge.get('queued_hull', 0),
            'queued_hull': merge.get('queued_hull', 0),
            'labelled': merge.get('labelled', 0),
            'failed': merge.get('failed', 0),
        }
        records.append(
            {
                'iteration': number,
                'potential': record['potential'].uuid,
                'training_set': record['dataset'].uuid,
                'test': _test_errors(record),
                'disagreement': statistics,
                'counts': counts,
                'calibration': record['calibration'].get_dict() if 'calibration' in record else None,
            }
        )
    return records


def plot_learning_curve(records: list[dict[str, Any]], threshold: float, path: str) -> str:
    """PNG of the test force RMSE (eV/Å) and energy RMSE (eV/atom), and of the fraction above the lower bound."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    iterations = [record['iteration'] for record in records]

    def series(getter: Any) -> list[float]:
        values = []
        for record in records:
            value = getter(record)
            values.append(np.nan if value is None else float(value))
        return values

    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=110)
    left.plot(iterations, series(lambda r: r['test']['forces_rmse']), 'o-', label='force RMSE (eV/Å)')
    left.plot(iterations, series(lambda r: r['test']['forces_mae']), 's--', label='force MAE (eV/Å)')
    twin = left.twinx()
    twin.plot(iterations, series(lambda r: r['test']['energy_rmse_per_atom']), 'd:', color='C3')
    twin.set_ylabel('energy RMSE (eV/atom)', color='C3')
    left.set_ylabel(f'test error ({records[0]["test"]["source"] if records else ""})')
    left.legend(fontsize=7)
    right.plot(iterations, series(lambda r: r['disagreement'].get('fraction_above_lower')), 'o-', label='> lower')
    right.plot(iterations, series(lambda r: r['disagreement'].get('fraction_above_upper')), 's--', label='> upper')
    right.axhline(threshold, color='k', lw=0.8, ls=':', label='threshold')
    right.set_ylabel('fraction of explored configurations')
    right.legend(fontsize=7)
    for axes in (left, right):
        axes.set_xlabel('iteration')
        axes.set_xticks(iterations)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


@calcfunction
def summarise_active_learning(stop_reason: orm.Str, settings: orm.Dict, **records: orm.Data) -> dict[str, orm.Data]:
    """The loop's ``metrics`` (Dict: settings, stop reason and one record per iteration with test errors in eV/atom
    and eV/Å, disagreement statistics, counts and calibration), ``stop_reason`` (Str) and ``learning_curve`` (PNG).

    :param records: ``<kind>_<iteration>`` with kind ``potential``, ``dataset`` (the set it was trained on),
        ``training`` (its test-split metrics),
        ``test`` (metrics on the held-out set), ``exploration`` (disagreement statistics), ``merge`` (counts) and
        ``calibration``.
    """
    iterations = iteration_records(records)
    reason = stop_reason.value
    metrics = {
        'stop_reason': reason,
        'n_iterations': len(iterations),
        'settings': settings.get_dict(),
        'iterations': iterations,
        'final': iterations[-1]['test'] if iterations else {},
        'labels_added': sum(record['counts']['labelled'] for record in iterations),
        'labels_failed': sum(record['counts']['failed'] for record in iterations),
        'units': {'energy': 'eV/atom', 'forces': 'eV/Å', 'disagreement': 'eV/Å'},
    }
    threshold = float(settings.get_dict().get('convergence', {}).get('fraction', 0.0))
    with tempfile.TemporaryDirectory() as tmp:
        path = plot_learning_curve(iterations, threshold, str(Path(tmp) / 'learning-curve.png'))
        image = orm.SinglefileData(path, filename='active-learning-curve.png')
    return {'metrics': orm.Dict(metrics), 'stop_reason': orm.Str(reason), 'learning_curve': image}
