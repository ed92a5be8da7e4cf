"""Engine tier: training through the daemon (mlmat.train, restart wrapper, mlmat.training ensemble)."""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm

from aiida_mlmat.data.configurations import ConfigurationSetData
from aiida_mlmat.data.potential import PotentialData, PotentialIntegrityError
from aiida_mlmat.workflows.train import TrainBaseWorkChain
from aiida_mlmat.workflows.training import TrainingWorkChain
from tests.unit.test_model import emt_data

pytestmark = pytest.mark.engine

MODEL = {'hidden': [16, 16], 'descriptor': {'kind': 'chebyshev', 'rcut': 4.5, 'n_radial': 8, 'n_angular': 4}}
TRAINING = {'epochs': 25, 'batch_size': 4, 'learning_rate': 0.01, 'forces_weight': 10.0, 'checkpoint_every_epochs': 1}


@pytest.fixture(scope='module')
def dataset():
    return ConfigurationSetData(emt_data(40, 11)).store()


def test_training_workchain_ensemble_end_to_end(submit_and_await, worker_code, dataset, tmp_path):
    """Split -> 2 members in parallel -> evaluation -> one ensemble node; metrics, plots, provenance."""
    builder = TrainingWorkChain.get_builder_from_protocol(
        worker_code, dataset, overrides={'ensemble_size': 2, 'model': MODEL, 'training': TRAINING}
    )
    node = submit_and_await(builder, timeout=600)
    assert node.is_finished_ok, node.exit_message
    potential = node.outputs.potential
    assert potential.n_members == 2 and potential.species == ['Cu', 'Au']
    metrics = node.outputs.metrics.get_dict()
    assert metrics['n_test'] == node.outputs.splits.test.count == 8
    assert metrics['forces_rmse'] < 0.35  # eV/Å after 25 epochs on this EMT Cu-Au set
    assert potential.metrics == metrics
    assert metrics['units'] == {'energy': 'eV/atom', 'forces': 'eV/Å', 'stress': 'eV/Å^3'}
    assert potential.base.attributes.get('data_sha256') == dataset.sha256
    # Members differ (seeds, bootstrap), so the ensemble has a spread.
    atoms = node.outputs.splits.test.get_atoms()[0]
    atoms.calc = potential.get_calculator()
    atoms.get_potential_energy()
    assert atoms.calc.results['n_members'] == 2 and atoms.calc.results['forces_disagreement'] > 0
    for plot in ('parity_forces', 'parity_energy', 'learning_curves'):
        with node.outputs.plots[plot].open(mode='rb') as handle:
            assert handle.read(8) == b'\x89PNG\r\n\x1a\n', plot
    # Per test configuration: the errors behind the metrics, to find the worst ones (in the order of the test split).
    errors = node.outputs.test_errors
    assert errors.base.attributes.get('units')['forces_rmse'] == 'eV/Å'
    per_config = errors.get_array('forces_rmse')
    assert per_config.shape == (8,) and (per_config > 0).all()
    test_frames = node.outputs.splits.test.get_atoms()
    atoms_count = np.array([3 * len(frame) for frame in test_frames])
    pooled = np.sqrt((per_config**2 * atoms_count).sum() / atoms_count.sum())  # the RMSE over every component
    assert pooled == pytest.approx(metrics['forces_rmse'], rel=1e-9)
    energy_errors = errors.get_array('energy_error_per_atom')
    assert np.sqrt((energy_errors**2).mean()) == pytest.approx(metrics['energy_rmse_per_atom'], rel=1e-9)
    assert (errors.get_array('energy_std_per_atom') >= 0).all()
    curve = node.outputs.member_results.member_0['learning_curve']
    assert len(curve) == 25 and curve[-1]['forces_rmse'] < curve[0]['forces_rmse']
    # Export and evaluate from the command line; the exported directory loads in ASE and refuses tampering.
    import json

    from click.testing import CliRunner

    from aiida_mlmat.cli.main import cli
    from aiida_mlmat.ml.calculator import MLMatCalculator

    export = CliRunner().invoke(cli, ['potential', 'export', str(potential.pk), str(tmp_path / 'pot'), '--json'])
    assert export.exit_code == 0, export.output
    card = json.loads((tmp_path / 'pot' / 'model-card.json').read_text())
    assert card['metrics'] == metrics and len(card['files']) == 2
    assert card['training']['members'][0]['hyperparameters']['epochs'] == 25
    assert card['versions']['aiida_mlmat'] and card['versions']['torch']
    readme = (tmp_path / 'pot' / 'README.md').read_text()
    assert '## Training hyperparameters' in readme and 'Device time:' in readme and '## Versions' in readme
    exported = MLMatCalculator.from_directory(tmp_path / 'pot')
    assert exported.results == {} and len(exported.models) == 2
    test_file = tmp_path / 'test.extxyz'
    node.outputs.splits.test.write_extxyz(test_file)
    evaluated = CliRunner().invoke(cli, ['potential', 'evaluate', str(potential.uuid), str(test_file), '--json'])
    assert evaluated.exit_code == 0, evaluated.output
    figures = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert figures['n_structures'] == 8
    assert abs(figures['forces_rmse'] - metrics['forces_rmse']) < 1e-8
    assert abs(figures['stress_rmse'] - metrics['stress_rmse']) < 1e-10  # eV/Å^3, the same errors as the test split's
    assert figures['energy_rmse_per_atom'] == pytest.approx(metrics['energy_rmse_per_atom'], abs=1e-10)
    assert figures['units'] == {
        'forces_mae': 'eV/Å', 'forces_rmse': 'eV/Å', 'stress_mae': 'eV/Å^3', 'stress_rmse': 'eV/Å^3',
        'energy_mae_per_atom': 'eV/atom', 'energy_rmse_per_atom': 'eV/atom',
    }  # fmt: skip
    member = tmp_path / 'pot' / 'member_1.pt'
    tampered = bytearray(member.read_bytes())
    tampered[len(tampered) // 2] ^= 0xFF
    member.write_bytes(bytes(tampered))
    with pytest.raises(ValueError, match='does not match the sha256'):
        MLMatCalculator.from_directory(tmp_path / 'pot')

    # Provenance: the potential <- make_ensemble <- members <- TrainCalculation <- bootstrap <- split <- dataset
    creator = potential.creator
    assert creator.process_label == 'make_ensemble'
    member = creator.inputs.member_0.creator
    assert member.process_type == 'aiida.calculations:mlmat.train'
    assert member.inputs.train.creator.process_label == 'bootstrap_sample'
    assert member.inputs.validation.creator.process_label == 'split_dataset'


def test_train_restart_resumes_from_checkpoint(submit_and_await, worker_code, dataset):
    """A soft time limit of 0 s stops each run after one epoch; the wrapper resumes from the checkpoint until done."""
    train, validation = dataset.get_atoms()[:30], dataset.get_atoms()[30:]
    builder = TrainBaseWorkChain.get_builder()
    builder.trainer.code = worker_code
    builder.trainer.train = ConfigurationSetData(train)
    builder.trainer.validation = ConfigurationSetData(validation)
    builder.trainer.training = orm.Dict({**TRAINING, 'epochs': 3})
    builder.trainer.model = orm.Dict({**MODEL, 'hidden': [8]})
    builder.trainer.soft_time_limit = orm.Float(0.0)  # stop after every epoch
    builder.max_iterations = orm.Int(8)
    node = submit_and_await(builder, timeout=600)
    assert node.is_finished_ok, node.exit_message
    calcs = sorted(node.called, key=lambda calc: calc.ctime)
    assert len(calcs) == 3  # one epoch per run
    assert all(calc.exit_status == 400 for calc in calcs[:-1]) and calcs[-1].exit_status == 0
    assert 'checkpoint' not in calcs[0].inputs and all('checkpoint' in calc.inputs for calc in calcs[1:])
    epochs = [calc.outputs.results['epochs'] for calc in calcs]
    assert epochs == [1, 2, 3]
    assert node.outputs.potential.base.attributes.get('training')['epochs'] == 3


def test_bad_training_input_refused_before_submission(worker_code, dataset):
    unlabelled = ConfigurationSetData([atoms for atoms in emt_data(4, 3)])
    unlabelled_frames = unlabelled.get_atoms()
    for frame in unlabelled_frames:
        frame.calc = None
    builder = TrainingWorkChain.get_builder_from_protocol(worker_code, ConfigurationSetData(unlabelled_frames))
    error = TrainingWorkChain.spec().inputs.validate(dict(builder._inputs(prune=True)))
    assert error is not None and 'not labelled' in error.message
    builder = TrainBaseWorkChain.get_builder()
    builder.trainer.code = worker_code
    energy_only = dataset.get_atoms()[:5]
    from ase.calculators.singlepoint import SinglePointCalculator

    for frame in energy_only:
        frame.calc = SinglePointCalculator(frame, energy=frame.calc.results['energy'])
    builder.trainer.train = ConfigurationSetData(energy_only)
    builder.trainer.validation = ConfigurationSetData(energy_only)
    error = TrainBaseWorkChain.spec().inputs.validate(dict(builder._inputs(prune=True)))
    assert error is not None and "lack ['forces']" in error.message


def test_tampered_potential_is_refused(dataset, tmp_path):
    """A member file whose bytes no longer match the recorded sha256 is refused on load."""
    from aiida_mlmat.ml.model import build_model, default_config, save_model

    save_model(build_model(default_config(['Cu', 'Au'])), str(tmp_path / 'm.pt'))
    content = (tmp_path / 'm.pt').read_bytes()
    node = PotentialData([content], config=default_config(['Cu', 'Au']))
    node.base.repository.put_object_from_bytes(content[:-10] + b'0123456789', 'member_0.pt')
    with pytest.raises(PotentialIntegrityError, match='sha256 mismatch'):
        node.get_models()
    intact = PotentialData([content], config=default_config(['Cu', 'Au']))
    assert len(intact.get_models()) == 1  # the same bytes untampered load: the refusal is the tampering's


def test_nan_loss_lowers_the_learning_rate_with_bounded_retries(submit_and_await, worker_code, dataset):
    """NaN loss (exit 410): each restart resumes from the checkpoint at half the learning rate, at most
    ``max_iterations`` times; data whose loss cannot be finite therefore fails for good, with every try recorded.
    (A NaN label is refused when the set is made; an energy of 1e300 eV is finite, but its square is not.)"""
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = dataset.get_atoms()[:12]
    poisoned = []
    for index, frame in enumerate(frames):
        results = dict(frame.calc.results)
        if index == 0:
            results['energy'] = 1e300  # eV: stored as given, overflows the loss
        atoms = frame.copy()
        atoms.calc = SinglePointCalculator(atoms, **results)
        poisoned.append(atoms)
    builder = TrainBaseWorkChain.get_builder()
    builder.trainer.code = worker_code
    builder.trainer.train = ConfigurationSetData(poisoned[:8])
    builder.trainer.validation = ConfigurationSetData(poisoned[8:])
    builder.trainer.model = orm.Dict({**MODEL, 'hidden': [8]})
    builder.trainer.training = orm.Dict({**TRAINING, 'epochs': 3})
    builder.max_iterations = orm.Int(3)
    node = submit_and_await(builder, timeout=600)
    assert node.is_finished and not node.is_finished_ok
    assert node.exit_status == TrainBaseWorkChain.exit_codes.ERROR_MAXIMUM_ITERATIONS_EXCEEDED.status
    calcs = sorted(node.called, key=lambda calc: calc.ctime)
    assert [calc.exit_status for calc in calcs] == [410, 410, 410]
    assert [calc.inputs.training.get_dict().get('lr_scale') for calc in calcs] == [None, 0.5, 0.25]
    assert 'checkpoint' not in calcs[0].inputs
    assert calcs[1].inputs.checkpoint.uuid == calcs[0].outputs.checkpoint.uuid
