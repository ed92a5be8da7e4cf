"""Calcfunctions of the training workflow: split, bootstrap, evaluation with plots, ensemble assembly."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from aiida import orm
from aiida.engine import calcfunction

from aiida_mlmat.common.constants import METRICS_UNITS
from aiida_mlmat.data.configurations import ConfigurationSetData
from aiida_mlmat.data.potential import PotentialData


def stratified_split(compositions: list[str], fractions: tuple[float, float], seed: int) -> list[str]:
    """Assign 'train', 'validation' or 'test' to each item, stratified by composition, deterministically.

    Within each composition group (shuffled with ``seed``), the first ``round(test * n)`` go to test and the next
    ``round(validation * n)`` to validation; leftovers of rounding are balanced across groups so the totals match
    the fractions as nearly as possible.
    """
    test_fraction, validation_fraction = fractions
    rng = np.random.default_rng(seed)
    groups: dict[str, list[int]] = {}
    for index, key in enumerate(compositions):
        groups.setdefault(key, []).append(index)
    n = len(compositions)
    n_test = max(1, round(test_fraction * n)) if test_fraction > 0 else 0
    n_validation = max(1, round(validation_fraction * n)) if validation_fraction > 0 else 0
    labels = ['train'] * n
    permuted = {key: [groups[key][i] for i in rng.permutation(len(groups[key]))] for key in groups}
    position = {i: rank / len(permuted[compositions[i]]) for key in permuted for rank, i in enumerate(permuted[key])}
    ranked = sorted(range(n), key=lambda i: (position[i], compositions[i], i))
    for i in ranked[:n_test]:
        labels[i] = 'test'
    for i in ranked[n_test : n_test + n_validation]:
        labels[i] = 'validation'
    return labels


@calcfunction
def split_dataset(
    configurations: ConfigurationSetData, test_fraction: orm.Float, validation_fraction: orm.Float, seed: orm.Int
) -> dict[str, ConfigurationSetData]:
    """Deterministic train/validation/test split, stratified by composition (reduced formula).

    Each split records the calculator of the whole set's labels (``calculator``), as every subset here does.
    """
    formulas = configurations.base.attributes.get('formulas')
    labels = stratified_split(_compositions(formulas), (test_fraction.value, validation_fraction.value), seed.value)
    too_few = f'{len(formulas)} configurations are too few for the fractions'
    return _subsets(configurations, range(len(formulas)), labels, ('train', 'validation', 'test'), too_few)


@calcfunction
def split_around_test(
    configurations: ConfigurationSetData,
    test_split: ConfigurationSetData,
    test_fraction: orm.Float,
    validation_fraction: orm.Float,
    seed: orm.Int,
) -> dict[str, ConfigurationSetData]:
    """Train and validation splits of the configurations that are not in ``test_split`` (matched by content,
    :func:`aiida_mlmat.query.configuration_key`), stratified by composition; validation takes the same share of
    what is left as it would beside a test split of ``test_fraction``.
    """
    from aiida_mlmat.query import configuration_keys

    held_out = set(configuration_keys(test_split))
    kept = [position for position, key in enumerate(configuration_keys(configurations)) if key not in held_out]
    formulas = configurations.base.attributes.get('formulas')
    share = validation_fraction.value / (1.0 - test_fraction.value)
    labels = stratified_split(_compositions([formulas[position] for position in kept]), (0.0, share), seed.value)
    too_few = f'{len(kept)} configurations outside the test split are too few'
    return _subsets(configurations, kept, labels, ('train', 'validation'), too_few)


def _compositions(formulas: list[str]) -> list[str]:
    """Each configuration's reduced formula (from its chemical formula), the key a split is stratified by."""
    from ase.formula import Formula

    return [str(Formula(formula).reduce()[0]) for formula in formulas]


def _subsets(
    configurations: ConfigurationSetData,
    positions: Sequence[int],
    labels: list[str],
    names: tuple[str, ...],
    too_few: str,
) -> dict[str, ConfigurationSetData]:
    """One labelled set per split name, of the configurations at ``positions`` labelled with it, each recording the
    calculator of the whole set's labels (they were made by it); an empty split is refused, saying why
    (``too_few``)."""
    groups = [[position for position, label in zip(positions, labels, strict=True) if label == name] for name in names]
    for name, group in zip(names, groups, strict=True):
        if not group:
            raise ValueError(f'the {name} split is empty: {too_few}')
    out = dict(zip(names, configurations.subsets(groups, calculator=configurations.calculator), strict=True))
    for name, subset in out.items():
        subset.label = f'{name} split'
    return out


@calcfunction
def bootstrap_sample(configurations: ConfigurationSetData, seed: orm.Int) -> ConfigurationSetData:
    """A bootstrap resample (with replacement, same size) of a set, for an ensemble member."""
    count = configurations.count
    picks = np.random.default_rng(seed.value).integers(0, count, size=count)
    (sample,) = configurations.subsets([sorted(picks)], calculator=configurations.calculator)
    sample.label = f'bootstrap sample (seed {seed.value})'
    return sample


def _parity_plot(reference: np.ndarray, predicted: np.ndarray, std: np.ndarray | None, label: str, path: str) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(4.5, 4.5), dpi=110)
    if std is not None:
        axes.errorbar(reference, predicted, yerr=std, fmt='o', ms=3, alpha=0.7, elinewidth=0.8)
    else:
        axes.plot(reference, predicted, 'o', ms=2, alpha=0.6)
    low, high = float(min(reference.min(), predicted.min())), float(max(reference.max(), predicted.max()))
    axes.plot([low, high], [low, high], 'k--', lw=0.8)
    axes.set_xlabel(f'reference {label}')
    axes.set_ylabel(f'predicted {label}')
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


@calcfunction
def evaluate_ensemble(test: ConfigurationSetData, **members: PotentialData) -> dict[str, orm.Data]:
    """Test metrics of the ensemble mean (energy per atom eV/atom, forces eV/Å, stress eV/Å^3) and parity plots.

    Outputs ``metrics`` (Dict), ``parity_energy`` and ``parity_forces`` (PNG files), and ``errors`` (ArrayData,
    one value per test configuration in the set's order: ``energy_error_per_atom`` predicted minus reference in
    eV/atom, ``forces_rmse`` in eV/Å (NaN without forces), ``energy_std_per_atom`` the members' spread in eV/atom),
    to find the configurations the potential gets most wrong.
    """
    models = [model for key in sorted(members) for model in members[key].get_models()]
    from aiida_mlmat.ml.calculator import MLMatCalculator, reference_errors

    frames = test.get_atoms()
    errors, arrays = reference_errors(MLMatCalculator(models), frames)
    metrics = {
        'n_test': len(frames),
        'n_members': len(models),
        **errors,
        'energy_std_mean_per_atom': float(arrays['energy_std'].mean()),
        'units': METRICS_UNITS,
    }
    outputs: dict[str, orm.Data] = {}
    with tempfile.TemporaryDirectory() as tmp:
        e_ref, e_pred, e_std = arrays['energy_reference'], arrays['energy_predicted'], arrays['energy_std']
        _parity_plot(e_ref, e_pred, e_std, 'energy (eV/atom)', str(Path(tmp) / 'energy.png'))
        outputs['parity_energy'] = orm.SinglefileData(str(Path(tmp) / 'energy.png'), filename='parity-energy.png')
        if 'forces_reference' in arrays:
            fr, fp = arrays['forces_reference'], arrays['forces_predicted']
            _parity_plot(fr, fp, None, 'force component (eV/Å)', str(Path(tmp) / 'forces.png'))
            outputs['parity_forces'] = orm.SinglefileData(str(Path(tmp) / 'forces.png'), filename='parity-forces.png')
    outputs['metrics'] = orm.Dict(metrics)
    per_configuration = orm.ArrayData()
    per_configuration.set_array('energy_error_per_atom', arrays['energy_predicted'] - arrays['energy_reference'])
    per_configuration.set_array('forces_rmse', arrays['configuration_forces_rmse'])
    per_configuration.set_array('energy_std_per_atom', arrays['energy_std'])
    per_configuration.base.attributes.set(
        'units', {'energy_error_per_atom': 'eV/atom', 'forces_rmse': 'eV/Å', 'energy_std_per_atom': 'eV/atom'}
    )
    outputs['errors'] = per_configuration
    return outputs


@calcfunction
def make_ensemble(metrics: orm.Dict, dataset: ConfigurationSetData, **members: PotentialData) -> PotentialData:
    """One potential node holding every member, with the test metrics and the training provenance summary."""
    ordered = [members[key] for key in sorted(members)]
    contents = [node.member_bytes(index) for node in ordered for index in range(node.n_members)]
    first = ordered[0]
    return PotentialData(
        contents,
        config=first.base.attributes.get('config'),
        metrics=metrics.get_dict(),
        extra={
            'data_sha256': dataset.sha256,
            'versions': first.base.attributes.get('versions', {}),
            'training': {
                'members': [node.base.attributes.get('training', {}) for node in ordered],
                'member_data_sha256': [node.base.attributes.get('data_sha256', None) for node in ordered],
            },
        },
    )


@calcfunction
def plot_learning_curves(**results: orm.Dict) -> orm.SinglefileData:
    """Validation force RMSE (eV/Å) and energy RMSE (eV/atom) per epoch of every member, as one PNG."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=110)
    for key in sorted(results):
        curve = results[key].get('learning_curve', [])
        epochs = [row['epoch'] for row in curve]
        left.semilogy(epochs, [row.get('forces_rmse', np.nan) for row in curve], label=key)
        right.semilogy(epochs, [row['energy_rmse_per_atom'] for row in curve], label=key)
    left.set_ylabel('validation force RMSE (eV/Å)')
    right.set_ylabel('validation energy RMSE (eV/atom)')
    for axes in (left, right):
        axes.set_xlabel('epoch')
        axes.legend(fontsize=7)
    figure.tight_layout()
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / 'learning-curves.png')
        figure.savefig(path)
        plt.close(figure)
        return orm.SinglefileData(path, filename='learning-curves.png')
