"""Unit tier: the atomic NN potential and its training loop (physics contracts, determinism, checkpoints)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from aiida_mlmat.ml import keys
from aiida_mlmat.ml.calculator import MLMatCalculator
from aiida_mlmat.ml.model import build_model, default_config, edge_jacobian, load_model, save_model
from aiida_mlmat.ml.neighbours import build_graph
from aiida_mlmat.ml.training import (
    CHECKPOINT,
    CHECKPOINT_FORMAT,
    MODEL,
    TrainingConfig,
    TrainingError,
    make_batches,
    precompute_descriptors,
    train,
)

pytestmark = pytest.mark.unit


def emt_data(n: int, seed: int, repeat=(2, 1, 1)):
    """Rattled, strained Cu-Au cells labelled with EMT."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = bulk('Cu', 'fcc', a=3.65, cubic=True).repeat(repeat)
        atoms.set_chemical_symbols(np.where(rng.random(len(atoms)) < 0.35, 'Au', 'Cu'))
        atoms.set_cell(atoms.cell.array * (1 + rng.uniform(-0.03, 0.03)), scale_atoms=True)
        atoms.positions += rng.normal(0.0, 0.08, atoms.positions.shape)
        atoms.calc = EMT()
        labels = {'energy': atoms.get_potential_energy(), 'forces': atoms.get_forces(), 'stress': atoms.get_stress()}
        atoms.calc = SinglePointCalculator(atoms, **labels)
        frames.append(atoms)
    return frames


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    config = default_config(['Cu', 'Au'])
    config['hidden'] = [16, 16]
    return build_model(config).double()


def evaluate(model, atoms, stress=True):
    out = model(build_graph([atoms], model.cutoff), forces=True, stress=stress)
    return {key: value.detach().numpy() for key, value in out.items()}


def sample_cell(seed=1):
    atoms = bulk('Cu', 'fcc', a=3.6, cubic=True).repeat(2)
    atoms.symbols[[1, 4, 9]] = 'Au'
    atoms.rattle(0.06, seed=seed)
    return atoms


def test_energy_invariant_forces_covariant_under_rotation_translation_permutation(model):
    atoms = sample_cell()
    reference = evaluate(model, atoms)
    q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(3, 3)))
    rotated = atoms.copy()
    rotated.set_cell(atoms.cell.array @ q.T, scale_atoms=False)
    rotated.positions = atoms.positions @ q.T
    out = evaluate(model, rotated)
    assert abs(out[keys.ENERGY][0] - reference[keys.ENERGY][0]) < 1e-10
    np.testing.assert_allclose(out[keys.FORCES], reference[keys.FORCES] @ q.T, atol=1e-10)
    shifted = atoms.copy()
    shifted.positions += [0.3, -1.1, 2.2]
    assert abs(evaluate(model, shifted)[keys.ENERGY][0] - reference[keys.ENERGY][0]) < 1e-10
    order = np.random.default_rng(3).permutation(len(atoms))
    permuted = atoms[order]
    out = evaluate(model, permuted)
    assert abs(out[keys.ENERGY][0] - reference[keys.ENERGY][0]) < 1e-10
    np.testing.assert_allclose(out[keys.FORCES], reference[keys.FORCES][order], atol=1e-10)


def test_forces_are_minus_the_finite_difference_gradient(model):
    atoms = sample_cell()
    forces = evaluate(model, atoms, stress=False)[keys.FORCES]
    h = 1e-5
    for index, axis in ((0, 0), (3, 1), (9, 2)):
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[index, axis] += h
        minus.positions[index, axis] -= h
        numerical = -(evaluate(model, plus, False)[keys.ENERGY][0] - evaluate(model, minus, False)[keys.ENERGY][0]) / (
            2 * h
        )
        assert abs(numerical - forces[index, axis]) < 1e-7


def test_stress_matches_finite_strain(model):
    atoms = sample_cell()
    stress = evaluate(model, atoms)[keys.STRESS][0]
    volume, h = atoms.get_volume(), 1e-5
    voigt = {0: (0, 0), 1: (1, 1), 2: (2, 2), 3: (1, 2), 4: (0, 2), 5: (0, 1)}
    for component, (i, j) in voigt.items():
        energies = []
        for sign in (1, -1):
            strain = np.zeros((3, 3))
            strain[i, j] += sign * h / (1 if i == j else 2)
            strain[j, i] += 0 if i == j else sign * h / 2
            strained = atoms.copy()
            strained.set_cell(atoms.cell.array @ (np.eye(3) + strain), scale_atoms=True)
            energies.append(evaluate(model, strained, False)[keys.ENERGY][0])
        assert abs((energies[0] - energies[1]) / (2 * h) / volume - stress[component]) < 1e-8


def test_batch_equals_members_one_by_one(model):
    frames = [sample_cell(seed) for seed in range(3)] + [bulk('Au', 'fcc', a=4.1)]
    together = model(build_graph(frames, model.cutoff), forces=True)
    forces = together[keys.FORCES].detach().numpy()
    offset = 0
    for index, atoms in enumerate(frames):
        alone = evaluate(model, atoms, stress=False)
        assert abs(together[keys.ENERGY][index].item() - alone[keys.ENERGY][0]) < 1e-10
        np.testing.assert_allclose(forces[offset : offset + len(atoms)], alone[keys.FORCES], atol=1e-10)
        offset += len(atoms)


def test_isolated_atom_gives_its_reference_energy(model):
    from ase import Atoms

    with torch.no_grad():
        model.reference_energies.copy_(torch.tensor([-1.5, -2.5], dtype=torch.float64))
    atom = Atoms('Cu', positions=[[0, 0, 0]], pbc=False)
    energy = evaluate(model, atom, stress=False)[keys.ENERGY][0]
    features = model.descriptor(build_graph([atom], model.cutoff))
    net = model.networks[0]((features - model.feature_mean) / model.feature_std).item()
    assert abs(energy - (-1.5 + net)) < 1e-12
    with torch.no_grad():
        model.reference_energies.zero_()


def test_nve_energy_is_conserved(model, tmp_path):
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    save_model(model, str(tmp_path / 'model.pt'))
    atoms = sample_cell()
    atoms.calc = MLMatCalculator.from_directory(tmp_path)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, 1.0 * units.fs)
    totals = []
    for _ in range(40):
        dyn.run(1)
        totals.append(atoms.get_total_energy())
    assert np.ptp(totals) < 2e-3 * len(atoms)  # eV; drift and noise over 40 fs


@pytest.fixture(scope='module')
def data():
    return emt_data(24, 1), emt_data(8, 2)


FAST = {'epochs': 30, 'batch_size': 4, 'learning_rate': 1e-2, 'seed': 5, 'checkpoint_every_epochs': 5}


def small_config():
    config = default_config(['Cu', 'Au'])
    config['hidden'] = [16, 16]
    config['descriptor'] = {'kind': 'chebyshev', 'rcut': 4.5, 'n_radial': 8, 'n_angular': 4}
    return config


def test_training_reduces_force_error_below_bound(data, tmp_path):
    summary = train(small_config(), *data, TrainingConfig(**FAST), tmp_path)
    curve = summary['learning_curve']
    assert curve[-1]['forces_rmse'] < 0.5 * curve[0]['forces_rmse']
    assert summary['validation']['forces_rmse'] < 0.25  # eV/Å on this EMT Cu-Au set
    assert (tmp_path / MODEL).exists() and (tmp_path / CHECKPOINT).exists()
    assert summary['validation']['energy_rmse_per_atom'] < 0.2  # eV/atom after 30 force-weighted epochs
    calculator = MLMatCalculator.from_files([tmp_path / MODEL])
    trained = load_model(str(tmp_path / MODEL)).double()
    for original in data[1][:3]:
        atoms = original.copy()
        atoms.calc = calculator
        direct = evaluate(trained, original, stress=True)
        assert abs(atoms.get_potential_energy() - direct[keys.ENERGY][0]) < 1e-10
        np.testing.assert_allclose(atoms.get_forces(), direct[keys.FORCES], atol=1e-10)
        np.testing.assert_allclose(atoms.get_stress(), direct[keys.STRESS][0], atol=1e-10)
        assert atoms.calc.results['n_members'] == 1 and atoms.calc.results['energy_std'] == 0.0


def test_a_training_split_of_one_one_atom_cell_trains_without_nan(tmp_path):
    """The smallest set a pipeline may select (3 configurations, split 1/1/1) can leave one one-atom cell to train
    on: its features have no spread, which made every loss NaN from the first epoch (a sample standard deviation
    of one value). They are normalised by 1 then, and the training runs."""
    frames = []
    for a in (3.55, 3.61, 3.70):
        atoms = bulk('Cu', 'fcc', a=a)  # one atom
        atoms.calc = EMT()
        labels = {'energy': atoms.get_potential_energy(), 'forces': atoms.get_forces(), 'stress': atoms.get_stress()}
        atoms.calc = SinglePointCalculator(atoms, **labels)
        frames.append(atoms)
    config = small_config()
    config['species'] = ['Cu']
    summary = train(config, frames[:1], frames[1:], TrainingConfig(**{**FAST, 'epochs': 5}), tmp_path)
    assert all(math.isfinite(row['energy_rmse_per_atom']) for row in summary['learning_curve'])
    trained = load_model(str(tmp_path / MODEL))
    assert torch.equal(trained.feature_std, torch.ones_like(trained.feature_std))


def test_same_seed_gives_identical_weights(data, tmp_path):
    config = TrainingConfig(**{**FAST, 'epochs': 3})
    train(small_config(), *data, config, tmp_path / 'a')
    train(small_config(), *data, config, tmp_path / 'b')
    first, second = load_model(str(tmp_path / 'a' / MODEL)), load_model(str(tmp_path / 'b' / MODEL))
    for (name, left), right in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(left, right), name


def test_resume_continues_exactly_and_refuses_mismatch(data, tmp_path):
    straight = train(small_config(), *data, TrainingConfig(**{**FAST, 'epochs': 6}), tmp_path / 'straight')
    train(small_config(), *data, TrainingConfig(**{**FAST, 'epochs': 3}), tmp_path / 'part')
    resumed = train(
        small_config(), *data, TrainingConfig(**{**FAST, 'epochs': 6}), tmp_path / 'part',
        resume_from=tmp_path / 'part' / CHECKPOINT,
    )  # fmt: skip
    assert resumed['epochs'] == 6
    assert [row['train_loss'] for row in resumed['learning_curve']] == pytest.approx(
        [row['train_loss'] for row in straight['learning_curve']], rel=1e-12
    )
    with pytest.raises(TrainingError, match='other hyperparameters') as info:
        train(small_config(), *data, TrainingConfig(**{**FAST, 'learning_rate': 0.1}), tmp_path / 'x',
              resume_from=tmp_path / 'part' / CHECKPOINT)  # fmt: skip
    assert info.value.code == 'RESUME_MISMATCH'
    with pytest.raises(TrainingError, match='another data set'):
        train(small_config(), data[0][:-1], data[1], TrainingConfig(**FAST), tmp_path / 'y',
              resume_from=tmp_path / 'part' / CHECKPOINT)  # fmt: skip


ACSF = {'kind': 'acsf', 'rcut': 4.5, 'g2': [[1.0, 0.0], [0.5, 2.5]], 'g4': [[0.01, 1.0, 1.0], [0.02, 2.0, -1.0]]}


@pytest.mark.parametrize('descriptor', [{'kind': 'chebyshev', 'rcut': 4.5, 'n_radial': 6, 'n_angular': 4}, ACSF])
@pytest.mark.parametrize('periodic', [True, False])
def test_precomputed_descriptors_give_the_same_energy_forces_stress_and_parameter_gradients(descriptor, periodic):
    torch.manual_seed(3)
    model = build_model({**small_config(), 'descriptor': descriptor}).double()
    if periodic:
        frames = [sample_cell(1), emt_data(1, 4, repeat=(2, 2, 1))[0]]  # 32 and 16 atoms
    else:
        cluster = bulk('Cu', 'fcc', a=3.6, cubic=True)
        cluster.symbols[[0, 2]] = 'Au'
        cluster.rattle(0.1, seed=2)
        cluster.pbc = False
        frames = [cluster, cluster[:3]]
    graph = build_graph(frames, model.cutoff)
    jacobian = edge_jacobian(model.descriptor, graph)
    assert jacobian.values.shape == (len(graph.centre), 3, model.spec.n_features)
    direct = model(graph, forces=True, stress=periodic, training=True)
    graph.positions.requires_grad_(False)
    stored = model.forward_precomputed(graph, jacobian, forces=True, stress=periodic, training=True)
    assert set(stored) == set(direct)
    for key in direct:
        assert torch.allclose(stored[key], direct[key], rtol=1e-10, atol=1e-12), key
    assert direct[keys.FORCES].abs().max() > 1e-3  # eV/Å: forces of a rattled cell, not a trivial zero
    # What training backpropagates: the gradient of a force (and stress) loss with respect to the weights.
    parameters = list(model.parameters())

    def loss(out):
        return (out[keys.FORCES] ** 2).sum() + ((out[keys.STRESS] ** 2).sum() if periodic else 0.0)

    expected = torch.autograd.grad(loss(direct), parameters, allow_unused=True)  # output biases do not enter
    found = torch.autograd.grad(loss(stored), parameters, allow_unused=True)
    assert sum(grad is not None for grad in expected) >= len(parameters) - len(model.networks)
    for left, right in zip(expected, found, strict=True):
        assert (left is None) == (right is None)
        if left is not None:
            assert torch.allclose(left, right, rtol=1e-9, atol=1e-12)


def test_validation_loss_has_the_training_losss_stress_term(data, tmp_path):
    """With a stress weight the validation loss (best model, early stopping, schedule) includes stress, and the
    validation metrics report it (eV/Å^3), recomputed here from the saved model."""
    config = TrainingConfig(**{**FAST, 'epochs': 3, 'stress_weight': 10.0})
    summary = train(small_config(), *data, config, tmp_path)
    for row in summary['learning_curve']:
        assert row['validation_loss'] == pytest.approx(
            config.energy_weight * row['energy_rmse_per_atom'] ** 2
            + config.forces_weight * row['forces_rmse'] ** 2
            + 10.0 * row['stress_rmse'] ** 2,
            rel=1e-12,
        )
    calculator = MLMatCalculator.from_files([str(tmp_path / MODEL)])
    errors = []
    for frame in data[1]:
        atoms = frame.copy()
        atoms.calc = calculator
        errors.append(atoms.get_stress() - frame.calc.results['stress'])
    assert summary['validation']['stress_rmse'] == pytest.approx(np.sqrt(np.mean(np.square(errors))), rel=1e-6)
    # without a stress weight stress is neither in the loss nor reported
    plain = train(small_config(), *data, TrainingConfig(**{**FAST, 'epochs': 1}), tmp_path / 'plain')
    assert 'stress_rmse' not in plain['validation'] and 'stress_rmse' not in plain['learning_curve'][-1]


def test_resuming_an_older_checkpoint_measures_its_best_model_with_the_stress_term(data, tmp_path):
    """A format-1 checkpoint's best validation loss left stress out: on resume its best model is measured again."""
    config = TrainingConfig(**{**FAST, 'epochs': 2, 'stress_weight': 10.0})
    train(small_config(), *data, config, tmp_path)
    checkpoint = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert checkpoint['format'] == CHECKPOINT_FORMAT
    best_row = min(checkpoint['state']['curve'], key=lambda row: row['validation_loss'])
    # format 1 recorded the loss without its stress term, lower than any new epoch's can be: 0 stands for it here,
    # so that kept, it would keep the old model for good (and stop early after `patience` epochs)
    checkpoint['format'], checkpoint['state']['best'] = 'aiida-mlmat-checkpoint/1', 0.0
    torch.save(checkpoint, tmp_path / CHECKPOINT)
    more = TrainingConfig(**{**FAST, 'epochs': 3, 'stress_weight': 10.0})
    summary = train(small_config(), *data, more, tmp_path / 'resumed', resume_from=tmp_path / CHECKPOINT)
    resumed = torch.load(tmp_path / 'resumed' / CHECKPOINT, weights_only=True)
    new_row = summary['learning_curve'][-1]
    # the best is the smaller of the old best model measured with stress and the new epoch, never the stale figure
    assert resumed['state']['best'] == pytest.approx(min(best_row['validation_loss'], new_row['validation_loss']))


def test_training_on_precomputed_descriptors_equals_recomputing_them_and_resumes_across(data, tmp_path):
    config = {**FAST, 'epochs': 4, 'stress_weight': 1.0}
    fast = train(small_config(), *data, TrainingConfig(**config), tmp_path / 'fast')
    slow = train(small_config(), *data, TrainingConfig(**config, jacobian_memory_mb=0), tmp_path / 'slow')
    assert fast['descriptors_precomputed'] and not slow['descriptors_precomputed']
    assert (fast['descriptors_storage'], slow['descriptors_storage']) == ('stored', 'disabled')
    # a budget that holds some batches only: those train from stored derivatives, the rest recompute; same numbers
    model = build_model(small_config()).double()
    batches = make_batches([*data[0], *data[1]], model.cutoff, config['batch_size'], torch.float64, 'cpu', True, True)
    needed_mb = sum(len(batch.graph.centre) for batch in batches) * model.spec.n_features * 3 * 8 / 2**20
    half = train(small_config(), *data, TrainingConfig(**config, jacobian_memory_mb=0.5 * needed_mb), tmp_path / 'half')
    stored, total = half['descriptors_stored_batches']
    assert fast['descriptors_stored_batches'] == [total, total] and total >= 6
    assert half['descriptors_storage'] == 'partial' and 0 < stored < total, half['descriptors_stored_batches']
    assert [row['train_loss'] for row in half['learning_curve']] == pytest.approx(
        [row['train_loss'] for row in slow['learning_curve']], rel=1e-9
    )
    assert [row['train_loss'] for row in fast['learning_curve']] == pytest.approx(
        [row['train_loss'] for row in slow['learning_curve']], rel=1e-9
    )
    assert fast['validation'] == pytest.approx(slow['validation'], rel=1e-9)
    first, second = load_model(str(tmp_path / 'fast' / MODEL)), load_model(str(tmp_path / 'slow' / MODEL))
    for (name, left), right in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.allclose(left, right, rtol=1e-8, atol=1e-10), name
    # Storing descriptors changes how training runs, not what it computes: a checkpoint made with them resumes
    # without them (a smaller memory budget on another machine) and continues the same curve.
    train(small_config(), *data, TrainingConfig(**{**config, 'epochs': 2}), tmp_path / 'part')
    resumed = train(
        small_config(), *data, TrainingConfig(**config, jacobian_memory_mb=1e-3), tmp_path / 'part',
        resume_from=tmp_path / 'part' / CHECKPOINT,
    )  # fmt: skip
    assert resumed['descriptors_storage'] == 'over_budget'  # 1 KiB holds no derivatives
    assert [row['train_loss'] for row in resumed['learning_curve']] == pytest.approx(
        [row['train_loss'] for row in fast['learning_curve']], rel=1e-9
    )


def test_precompute_respects_the_memory_budget(data):
    model = build_model(small_config()).double()
    batches = make_batches(data[0], model.cutoff, 8, torch.float64, 'cpu', True, False)
    n_edges = sum(len(batch.graph.centre) for batch in batches)
    needed_mb = n_edges * model.spec.n_features * 3 * 8 / 2**20
    sizes = [len(batch.graph.centre) * model.spec.n_features * 3 * 8 / 2**20 for batch in batches]
    assert len(batches) >= 3 and sum(sizes) == pytest.approx(needed_mb)
    assert precompute_descriptors(model, batches, 0.9 * min(sizes)) == 'over_budget'
    assert all(batch.jacobian is None for batch in batches)
    assert precompute_descriptors(model, batches, 0) == 'disabled'
    # as many batches as the budget holds, in order: here the first, and no other fits beside it
    assert precompute_descriptors(model, batches, sizes[0] + 0.5 * min(sizes[1:])) == 'partial'
    assert [batch.jacobian is not None for batch in batches] == [True] + [False] * (len(batches) - 1)
    for batch in batches:
        batch.jacobian = None
    assert precompute_descriptors(model, batches, 1.1 * needed_mb) == 'stored'
    assert all(batch.jacobian is not None for batch in batches)


def test_bad_training_input(data, tmp_path):
    no_forces = [atoms.copy() for atoms in data[0]]
    for atoms in no_forces:
        atoms.calc = SinglePointCalculator(atoms, energy=0.0)
    with pytest.raises(TrainingError, match='has no forces') as info:
        train(small_config(), no_forces, data[1], TrainingConfig(**FAST), tmp_path)
    assert info.value.code == 'MISSING_LABELS'
    with pytest.raises(TrainingError, match='validation split is empty'):
        train(small_config(), data[0], [], TrainingConfig(**FAST), tmp_path)
    silver = bulk('Ag', 'fcc', a=4.09, cubic=True)
    silver.calc = SinglePointCalculator(silver, energy=0.0, forces=np.zeros((4, 3)))
    with pytest.raises(TrainingError, match=r"\['Ag'\]") as info:
        train(small_config(), [*data[0], silver], data[1], TrainingConfig(**FAST), tmp_path)
    assert info.value.code == 'UNKNOWN_SPECIES'
    poisoned = [atoms.copy() for atoms in data[0]]
    for atoms, original in zip(poisoned, data[0], strict=True):
        atoms.calc = SinglePointCalculator(atoms, **original.calc.results)
    poisoned[0].calc.results['energy'] = float('nan')
    with pytest.raises(TrainingError, match='non-finite loss') as info:
        train(small_config(), poisoned, data[1], TrainingConfig(**FAST), tmp_path / 'nan')
    assert info.value.code == 'NAN_LOSS'
    assert (tmp_path / 'nan' / CHECKPOINT).exists()  # saved before giving up, for a restart at a lower rate


class _Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, 'w'))


@pytest.mark.parametrize('force_unsafe_env', [False, True])
def test_pickled_object_never_executes(tmp_path, force_unsafe_env):
    """A model file whose unpickling would create a marker file is refused; the marker never appears,
    also with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 (as `import mace` sets it)."""
    marker = tmp_path / 'marker'
    payload = tmp_path / 'evil.pt'
    torch.save({'format': 'aiida-mlmat-potential/1', 'config': _Marker(str(marker))}, payload, pickle_protocol=2)
    script = textwrap.dedent(
        f"""
        import sys
        from aiida_mlmat.ml.model import load_model
        try:
            load_model({str(payload)!r})
        except Exception as exc:
            print('refused', type(exc).__name__)
            sys.exit(0)
        sys.exit(1)
        """
    )
    env = {**os.environ}
    if force_unsafe_env:
        env['TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'] = '1'
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0 and 'refused' in result.stdout, result.stdout + result.stderr
    assert not marker.exists()


def test_unknown_architecture_and_species_in_calculator(tmp_path, model):
    with pytest.raises(ValueError, match='unknown architecture `mace-x`'):
        build_model({**small_config(), 'architecture': 'mace-x'})
    save_model(model, str(tmp_path / 'm.pt'))
    atoms = bulk('Ag', 'fcc', a=4.09)
    atoms.calc = MLMatCalculator.from_directory(tmp_path)
    with pytest.raises(ValueError, match=r"not trained on \['Ag'\]"):
        atoms.get_potential_energy()


def test_ensemble_results_are_the_numpy_statistics_of_its_members(tmp_path):
    """Three differently initialised members, each evaluated alone, against the ensemble of the three (float64)
    on three Cu-Au cells (a 32-atom rattled cubic cell and two strained 8-atom cells): ``energy``
    (eV), ``forces`` (eV/Å), ``stress`` (eV/Å^3) and per-atom ``energies`` are the member means,
    ``member_energies`` the members' energies in file order, ``energy_std`` their population standard deviation,
    ``forces_std`` the per-atom, per-component population standard deviation of the member forces and
    ``forces_disagreement`` the largest per-atom norm of that standard deviation (eV/Å), all to 1e-10."""
    paths = []
    for seed in (11, 12, 13):
        torch.manual_seed(seed)
        paths.append(tmp_path / f'member_{seed}.pt')
        save_model(build_model(small_config()).double(), str(paths[-1]))
    ensemble = MLMatCalculator.from_directory(tmp_path)
    alone = [MLMatCalculator.from_files([path]) for path in paths]
    cells = [sample_cell(seed=3), *emt_data(2, 7)]
    for original in cells:
        members = []
        for calculator in alone:
            atoms = original.copy()
            atoms.calc = calculator
            stress = atoms.get_stress(voigt=False)  # first: one evaluation gives every property
            members.append(
                {
                    'energy': atoms.get_potential_energy(),
                    'forces': atoms.get_forces(),
                    'stress': stress,
                    'energies': atoms.get_potential_energies(),
                }
            )
        atoms = original.copy()
        atoms.calc = ensemble
        stress = atoms.get_stress(voigt=False)
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        results = ensemble.results
        energies = np.array([member['energy'] for member in members])
        stacked = np.array([member['forces'] for member in members])  # (member, atom, component)
        assert results['n_members'] == 3
        assert np.std(energies) > 1e-3  # eV: the members really differ, so a mean taken over one member shows
        np.testing.assert_allclose(results['member_energies'], energies, rtol=0, atol=1e-10)
        assert energy == pytest.approx(energies.mean(), rel=0, abs=1e-10)
        assert results['energy_std'] == pytest.approx(np.std(energies), rel=0, abs=1e-10)
        np.testing.assert_allclose(forces, stacked.mean(axis=0), rtol=0, atol=1e-10)
        np.testing.assert_allclose(
            stress, np.mean([member['stress'] for member in members], axis=0), rtol=0, atol=1e-10
        )
        np.testing.assert_allclose(
            atoms.get_potential_energies(), np.mean([m['energies'] for m in members], axis=0), rtol=0, atol=1e-10
        )
        spread = stacked.std(axis=0)
        np.testing.assert_allclose(results['forces_std'], spread, rtol=0, atol=1e-10)
        per_atom = np.sqrt((spread**2).sum(axis=1))
        assert per_atom.max() > 1e-3  # eV/Å: the members' forces differ
        assert results['forces_disagreement'] == pytest.approx(per_atom.max(), rel=0, abs=1e-10)
        # Not the mean over atoms, nor the spread of the force norms: the definition is pinned down.
        assert abs(per_atom.max() - per_atom.mean()) > 1e-6


# --- CUDA (run on a GPU machine; skipped where there is none, e.g. in CI) ------------------------------------------
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='CUDA is not available')


@needs_cuda
def test_cuda_training_float64_follows_the_cpu_curve(data, tmp_path):
    config = {**FAST, 'epochs': 4, 'stress_weight': 1.0}
    cpu = train(small_config(), *data, TrainingConfig(**config), tmp_path / 'cpu')
    gpu = train(small_config(), *data, TrainingConfig(**config, device='cuda'), tmp_path / 'cuda')
    assert gpu['descriptors_precomputed'] and cpu['descriptors_precomputed']
    # Same seed, same batches, float64: only the order of floating-point sums differs between the devices.
    assert [row['train_loss'] for row in gpu['learning_curve']] == pytest.approx(
        [row['train_loss'] for row in cpu['learning_curve']], rel=1e-6
    )
    assert gpu['validation'] == pytest.approx(cpu['validation'], rel=1e-6)
    # The saved model loads on the CPU (weights_only) and predicts what the CPU-trained one predicts.
    on_cpu = MLMatCalculator.from_files([tmp_path / 'cuda' / MODEL])
    reference = MLMatCalculator.from_files([tmp_path / 'cpu' / MODEL])
    atoms = data[1][0].copy()
    atoms.calc = on_cpu
    forces = atoms.get_forces()
    atoms.calc = reference
    np.testing.assert_allclose(forces, atoms.get_forces(), atol=1e-6)  # eV/Å


@needs_cuda
def test_cuda_mixed_precision_training_learns(data, tmp_path):
    summary = train(small_config(), *data, TrainingConfig(**FAST, device='cuda', dtype='float32', amp=True), tmp_path)
    curve = summary['learning_curve']
    assert all(np.isfinite(row['train_loss']) for row in curve)
    assert curve[-1]['forces_rmse'] < 0.5 * curve[0]['forces_rmse']
    assert summary['validation']['forces_rmse'] < 0.25  # eV/Å, the bound the CPU float64 test meets


@needs_cuda
def test_cuda_precomputed_descriptors_match_cpu():
    torch.manual_seed(3)
    model = build_model(small_config()).double()
    frames = [sample_cell(1), emt_data(1, 4, repeat=(2, 2, 1))[0]]
    results = {}
    for device in ('cpu', 'cuda'):
        moved = model.to(device)
        graph = build_graph(frames, moved.cutoff, device=device)
        jacobian = edge_jacobian(moved.descriptor, graph)
        out = moved.forward_precomputed(graph, jacobian, forces=True, stress=True, training=False)
        results[device] = {key: value.detach().cpu() for key, value in out.items()}
    model.to('cpu')
    for key, value in results['cpu'].items():
        assert torch.allclose(results['cuda'][key], value, rtol=1e-9, atol=1e-11), key


def test_a_real_cpu_allocation_failure_counts_as_out_of_memory():
    """What the CPU allocator raises when memory runs out (an exabyte is never there), and what CUDA raises."""
    from aiida_mlmat.ml.training import is_out_of_memory

    with pytest.raises(RuntimeError) as failed:
        torch.empty(2**60, dtype=torch.uint8)
    assert is_out_of_memory(failed.value)
    assert is_out_of_memory(torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB'))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError('mat1 and mat2 shapes cannot be multiplied'))
    assert not is_out_of_memory(ValueError("can't allocate memory"))


def test_out_of_memory_while_storing_descriptors_falls_back_to_recomputing_them(data, tmp_path, monkeypatch):
    """A device that fills up while descriptor derivatives are stored: they are dropped and training runs on,
    recomputing descriptors at every step, with the same numbers as a run that never stored them.

    The failure is raised by a stand-in for the derivative routine on the third batch: it stands for CUDA running
    out of memory, which cannot happen on this CPU-only machine (a real CPU allocation failure is recognised by the
    test above)."""
    import aiida_mlmat.ml.training as training

    real = training.edge_jacobian
    calls = []

    def filling_device(descriptor, graph):
        calls.append(len(graph.centre))
        if len(calls) == 3:
            raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 512.00 MiB')
        return real(descriptor, graph)

    config = {**FAST, 'epochs': 3}
    monkeypatch.setattr(training, 'edge_jacobian', filling_device)
    fallen_back = train(small_config(), *data, TrainingConfig(**config), tmp_path / 'fallback')
    monkeypatch.setattr(training, 'edge_jacobian', real)
    never = train(small_config(), *data, TrainingConfig(**config, jacobian_memory_mb=0), tmp_path / 'never')
    assert len(calls) == 3
    assert (fallen_back['descriptors_storage'], fallen_back['descriptors_precomputed']) == ('out_of_memory', False)
    assert [row['train_loss'] for row in fallen_back['learning_curve']] == pytest.approx(
        [row['train_loss'] for row in never['learning_curve']], rel=1e-12
    )
    # any other error while storing them is not hidden
    monkeypatch.setattr(training, 'edge_jacobian', lambda descriptor, graph: torch.ones(2) @ torch.ones(3))
    with pytest.raises(RuntimeError, match=r'size|shape'):
        train(small_config(), *data, TrainingConfig(**config), tmp_path / 'other')


def test_worker_reports_a_failed_allocation_as_out_of_memory(data, tmp_path, monkeypatch):
    """The worker's train task turns a failed allocation into the recoverable OUT_OF_MEMORY error (what the
    restart wrapper halves the batch for), not a crash.

    Training is replaced by a function that makes a real CPU allocation fail (an exabyte). Real training under an
    address-space limit (``RLIMIT_AS``) was tried on this machine (2026-12-05) and does not fail reliably in torch:
    depending on the limit it fails in Python or numpy (``MemoryError``), inside an extension (``SystemError``) or
    in torch's allocator, at a point that moves with glibc's arenas; a test on it would be flaky."""
    import aiida_mlmat.ml.training as training
    from aiida_mlmat.worker.__main__ import main
    from aiida_mlmat.worker.schema import SCHEMA_VERSION
    from aiida_mlmat.worker.structures import write_extxyz

    def allocating(*args, **kwargs):
        torch.empty(2**60, dtype=torch.uint8)

    monkeypatch.setattr(training, 'train', allocating)
    write_extxyz(str(tmp_path / 'train.extxyz'), data[0])
    write_extxyz(str(tmp_path / 'validation.extxyz'), data[1])
    config = small_config()
    payload = {
        'schema_version': SCHEMA_VERSION,
        'task': 'train',
        'train': 'train.extxyz',
        'validation': 'validation.extxyz',
        'model': {**config, 'descriptor': {**config['descriptor'], 'species': config['species']}},
        'training': {'epochs': 1, 'batch_size': 4},
    }
    (tmp_path / 'input.json').write_text(json.dumps(payload))
    assert main(['train', str(tmp_path / 'input.json')]) != 0
    error = json.loads((tmp_path / 'results.json').read_text())['error']
    assert error['code'] == 'OUT_OF_MEMORY'
    assert error['message'].startswith('out of memory on cpu:') and "can't allocate memory" in error['message']


def test_batched_reference_errors_equal_frame_by_frame(model):
    """``reference_errors`` evaluates an MLMatCalculator's test frames in batched graphs; every number equals the
    frame-by-frame ASE evaluation (any other calculator), periodic frames with stress and a cluster without."""
    from ase import Atoms
    from ase.calculators.calculator import Calculator, all_changes

    from aiida_mlmat.ml.calculator import MLMatCalculator, reference_errors

    torch.manual_seed(1)
    other = build_model(small_config()).double()
    ensemble = MLMatCalculator([model, other])
    cluster = Atoms('Cu2Au', positions=[[0, 0, 0], [2.5, 0, 0], [1.2, 2.1, 0.2]], pbc=False)
    cluster.calc = EMT()
    labels = {'energy': cluster.get_potential_energy(), 'forces': cluster.get_forces()}
    cluster.calc = SinglePointCalculator(cluster, **labels)
    frames = [*emt_data(5, 3), cluster, *emt_data(4, 4, repeat=(1, 1, 1))]

    class FrameByFrame(Calculator):
        implemented_properties = ('energy', 'forces', 'stress')

        def calculate(self, atoms=None, properties=('energy',), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            inner = MLMatCalculator([model, other])
            inner.calculate(self.atoms, ['energy', 'forces', 'stress'], all_changes)
            self.results = dict(inner.results)

    batched, batched_arrays = reference_errors(ensemble, frames)
    looped, looped_arrays = reference_errors(FrameByFrame(), frames)
    assert set(batched) == set(looped) >= {'energy_rmse_per_atom', 'forces_rmse', 'stress_rmse'}
    for key, value in looped.items():
        assert batched[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    for key, value in looped_arrays.items():
        np.testing.assert_allclose(batched_arrays[key], value, rtol=1e-9, atol=1e-12, err_msg=key)
    assert batched_arrays['energy_std'].shape == (10,) and (batched_arrays['energy_std'] > 0).all()
    # smaller batches, by count or by atoms, give the same numbers
    full = ensemble.predict_frames(frames)
    for small in (ensemble.predict_frames(frames, batch_size=3), ensemble.predict_frames(frames, max_atoms=5)):
        assert [p['energy'] for p in small] == pytest.approx([p['energy'] for p in full], rel=1e-12)
    assert 'stress' not in full[5] and full[0]['stress'].shape == (6,)


def test_prediction_groups_bound_frames_and_atoms():
    from aiida_mlmat.ml.calculator import _groups

    assert _groups([0, 1, 2, 3, 4], [4, 4, 4, 4, 4], 2, 100) == [[0, 1], [2, 3], [4]]
    assert _groups([0, 1, 2, 3], [300, 800, 2000, 10], 32, 1024) == [[0], [1], [2], [3]]  # 2000 alone
    assert _groups([5, 7, 9], [10, 10, 10], 32, 1024) == [[5, 7, 9]] and _groups([], [], 32, 1024) == []
