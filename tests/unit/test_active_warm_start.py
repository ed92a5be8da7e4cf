"""Unit tier: retraining from previous weights (warm start) in the training loop, the worker and the CalcJob."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aiida_mlmat.ml.model import default_config, load_model
from aiida_mlmat.ml.training import (
    MODEL,
    TrainingConfig,
    TrainingError,
    make_batches,
    train,
    warm_start_mismatch,
)
from tests.unit.test_model import emt_data

pytestmark = pytest.mark.unit

CONFIG = {
    **default_config(['Cu', 'Au']),
    'hidden': [12, 12],
    'descriptor': {'kind': 'chebyshev', 'rcut': 4.5, 'n_radial': 6, 'n_angular': 3},
}
FAST = {'batch_size': 4, 'learning_rate': 0.01, 'checkpoint_every_epochs': 100}


@pytest.fixture(scope='module')
def first_model(tmp_path_factory):
    """A model trained for 12 epochs on one EMT Cu-Au set."""
    frames = emt_data(24, 3)
    workdir = tmp_path_factory.mktemp('first')
    train(CONFIG, frames[:18], frames[18:], TrainingConfig(epochs=12, **FAST), workdir)
    return workdir / MODEL


def test_warm_start_begins_where_the_previous_model_ended(first_model, tmp_path):
    """On new data of the same system, the first epoch from previous weights is far better than from scratch."""
    new = emt_data(24, 7)
    config = TrainingConfig(epochs=2, **{**FAST, 'learning_rate': 0.003})
    warm = train(CONFIG, new[:18], new[18:], config, tmp_path / 'warm', init_from=first_model)
    cold = train(CONFIG, new[:18], new[18:], config, tmp_path / 'cold')
    assert warm['warm_start'] is True and cold['warm_start'] is False
    first_warm, first_cold = warm['learning_curve'][0], cold['learning_curve'][0]
    assert first_warm['forces_rmse'] < 0.5 * first_cold['forces_rmse']
    assert first_warm['energy_rmse_per_atom'] < first_cold['energy_rmse_per_atom']


def test_reference_energies_are_refit_on_the_new_data(first_model, tmp_path):
    """After a warm start the per-element energies are the least-squares fit of E - E_network on the new data:
    the mean energy residual per composition is zero (up to the one epoch trained), and they differ from before."""
    previous = load_model(str(first_model)).double()
    shifted = emt_data(16, 9)
    from ase.calculators.singlepoint import SinglePointCalculator

    for atoms in shifted:  # a constant 0.2 eV per Cu atom added to every energy: only the Cu constant must move
        results = dict(atoms.calc.results)
        results['energy'] += 0.2 * atoms.get_chemical_symbols().count('Cu')
        atoms.calc = SinglePointCalculator(atoms, **results)
    from aiida_mlmat.ml.training import refit_reference_energies

    batches = make_batches(shifted, previous.cutoff, 4, torch.float64, 'cpu', False, False)
    before = previous.reference_energies.clone().numpy()
    refit = refit_reference_energies(previous, batches, shifted)
    species = previous.species
    delta = dict(zip(species, refit - before, strict=True))
    assert abs(delta['Cu'] - 0.2) < 0.03 and abs(delta['Au']) < 0.1
    # the refit constants make the residual of the (unchanged) network zero-mean in the least-squares sense
    previous.reference_energies.copy_(torch.tensor(refit))
    counts = np.array([[a.get_chemical_symbols().count(s) for s in species] for a in shifted], float)
    predicted = torch.cat([previous(b.graph, forces=False)['energy'] for b in batches]).detach().numpy()
    residual = np.array([a.calc.results['energy'] for a in shifted]) - predicted
    np.testing.assert_allclose(counts.T @ residual, 0.0, atol=1e-8)


def test_warm_start_refuses_another_model(first_model, tmp_path):
    new = emt_data(8, 7)
    config = TrainingConfig(epochs=1, **FAST)
    with pytest.raises(TrainingError, match=r'hidden \[12, 12\] \(previous\) != \[8\] \(new\)') as info:
        train({**CONFIG, 'hidden': [8]}, new[:6], new[6:], config, tmp_path / 'a', init_from=first_model)
    assert info.value.code == 'RESUME_MISMATCH'
    other = {**CONFIG, 'descriptor': {**CONFIG['descriptor'], 'rcut': 5.0}}
    with pytest.raises(TrainingError, match='descriptor'):
        train(other, new[:6], new[6:], config, tmp_path / 'b', init_from=first_model)
    not_a_model = tmp_path / 'junk.pt'
    torch.save({'weights': torch.zeros(3)}, not_a_model)
    with pytest.raises(TrainingError, match='not an aiida-mlmat potential'):
        train(CONFIG, new[:6], new[6:], config, tmp_path / 'c', init_from=not_a_model)


def test_warm_start_mismatch_names_species_and_tolerates_defaults():
    assert warm_start_mismatch(CONFIG, dict(CONFIG)) is None
    assert warm_start_mismatch({**CONFIG, 'activation': None}, {**CONFIG, 'activation': 'silu'}) is None
    message = warm_start_mismatch(CONFIG, {**CONFIG, 'species': ['Cu']})
    assert message is not None and "species ['Cu', 'Au'] (previous) != ['Cu'] (new)" in message


def test_worker_train_task_starts_from_potential_member(first_model, tmp_path, capsys):
    """The worker reads `init_model` from the job's potential/ folder; a missing file is a coded error. Every epoch
    is a line on stdout (the job's worker.out)."""
    from aiida_mlmat.worker.__main__ import main
    from aiida_mlmat.worker.structures import write_extxyz

    frames = emt_data(10, 5)
    write_extxyz(str(tmp_path / 'train.extxyz'), frames[:8])
    write_extxyz(str(tmp_path / 'validation.extxyz'), frames[8:])
    data = {
        'schema_version': 1,
        'task': 'train',
        'train': 'train.extxyz',
        'validation': 'validation.extxyz',
        'model': {**CONFIG, 'descriptor': {**CONFIG['descriptor'], 'species': CONFIG['species']}},
        'training': {'epochs': 1, **FAST},
        'init_model': 'potential/member_1.pt',
    }
    (tmp_path / 'input.json').write_text(json.dumps(data))
    assert main(['train', str(tmp_path / 'input.json')]) != 0
    results = json.loads((tmp_path / 'results.json').read_text())
    assert results['error']['code'] == 'MISSING_FILE' and 'potential/member_1.pt' in results['error']['message']
    (tmp_path / 'potential').mkdir()
    (tmp_path / 'potential' / 'member_1.pt').write_bytes(first_model.read_bytes())
    capsys.readouterr()
    assert main(['train', str(tmp_path / 'input.json')]) == 0
    results = json.loads((tmp_path / 'results.json').read_text())
    assert results['status'] == 'ok' and results['warm_start'] is True
    (line,) = capsys.readouterr().out.splitlines()  # one epoch
    row = results['learning_curve'][0]
    assert line.startswith(f'epoch 1: train loss {row["train_loss"]:.5g}, validation loss {row["validation_loss"]:.5g}')
    assert 'validation force RMSE' in line and 'eV/Å' in line
    from aiida_mlmat.worker.schema import validate_input

    with pytest.raises(ValueError, match='init_model'):
        validate_input('train', {**data, 'init_model': '../elsewhere/model.pt'})


def test_renormalisation_keeps_the_predictions(first_model):
    """Moving the feature normalisation to broader data leaves energies and forces unchanged (to 1e-10)."""
    from aiida_mlmat.ml.neighbours import build_graph
    from aiida_mlmat.ml.training import renormalise_features

    model = load_model(str(first_model)).double()
    atoms = emt_data(1, 13)[0]
    before = model(build_graph([atoms], model.cutoff), forces=True)
    old_std = model.feature_std.clone()
    with torch.no_grad():
        renormalise_features(model, model.feature_mean + 0.3, model.feature_std * 2.5)
    after = model(build_graph([atoms], model.cutoff), forces=True)
    assert torch.allclose(model.feature_std, old_std * 2.5)
    assert abs(float(after['energy'][0] - before['energy'][0])) < 1e-10
    assert torch.allclose(after['forces'], before['forces'], atol=1e-10)
