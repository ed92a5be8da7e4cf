"""``benchmarks/active_learning.py`` on a tiny pool: both contenders, ``--random-from`` and ``--no-random`` runs.

The figures of a run this small mean nothing; what is checked is that every mode runs to its JSON line with the
same learning curves for the same settings (training is deterministic on CPU) and that bad combinations of
options are refused by the parser.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / 'benchmarks' / 'active_learning.py'
TINY = [
    '--budget', '16', '--epochs', '2', '--pool-snapshots', '3', '--held-out-snapshots', '1', '--strains', '0.0',
    '--temperatures', '300', '1500', '--lower-quantile', '0.5', '--threads', '1', '--full-curves',
]  # fmt: skip


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *TINY, *args], capture_output=True, text=True, timeout=300, env=env
    )


def last_json(process: subprocess.CompletedProcess) -> dict:
    assert process.returncode == 0, process.stderr[-3000:]
    return json.loads(process.stdout.strip().splitlines()[-1])


def load_module():
    spec = importlib.util.spec_from_file_location('benchmark_active_learning', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def full_run(tmp_path_factory) -> tuple[dict, Path]:
    process = run()
    log = tmp_path_factory.mktemp('bench') / 'al.log'
    log.write_text(process.stdout)
    return last_json(process), log


def test_both_contenders_grow_to_the_budget_from_the_same_start(full_run):
    result, _ = full_run
    curves = result['learning_curves']
    assert [r['n_labels'] for r in curves['random']] == [8, 16]
    assert [r['n_labels'] for r in curves['active']] == [8, 16]
    assert curves['random'][0]['held_out_forces_rmse'] == curves['active'][0]['held_out_forces_rmse']  # same start
    assert result['target_forces_rmse'] == curves['random'][-1]['held_out_forces_rmse']
    target = result['target_forces_rmse']
    for name, curve in curves.items():  # the first round at or below the target (a 2-epoch curve need not fall)
        reached = [r['n_labels'] for r in curve if r['held_out_forces_rmse'] <= target]
        assert result['labels_to_target'][name] == (reached[0] if reached else None)
    assert result['labels_to_target']['random'] is not None
    assert result['targets'] == {'labels_random_over_active': 2.0}
    added = [r['added'] for r in result['learning_curves_by_seed']['active']['0'][:-1]]
    assert len(added) == 1 and len(set(added[0])) == 8


def test_random_from_reuses_the_curves_and_no_random_trains_active_learning_only(full_run):
    result, log = full_run
    reused = last_json(run('--random-from', str(log)))
    assert reused['learning_curves'] == result['learning_curves']  # deterministic on CPU
    alone = last_json(run('--no-random', '--target-forces-rmse', '0.5', '--active-step', '4', '--fps-labelled'))
    assert set(alone['learning_curves']) == {'active'}
    assert [r['n_labels'] for r in alone['learning_curves']['active']] == [8, 12, 16]
    assert alone['labels_to_target']['random'] is None and alone['ratios']['labels_random_over_active'] is None
    assert alone['target_from'] == 'argument'


def test_member_epochs_follow_the_steps():
    module = load_module()
    assert module.member_epochs(128, 60, 1920) == 60  # 32 batches of 4
    assert module.member_epochs(64, 60, 1920) == 120  # half the data, twice the epochs: the same steps
    assert module.member_epochs(10, 60, 7) == 3  # 3 batches a epoch: 9 steps, the fewest that reach 7
    assert module.member_epochs(10, 60, None) == 60  # without --steps, --epochs


def test_equal_steps_and_worker_processes(full_run):
    result, log = full_run
    steps = last_json(run('--steps', '40', '--jobs', '2'))
    assert steps['settings']['steps'] == 40
    assert steps['learning_curves']['random'] != result['learning_curves']['random']  # other training lengths
    assert steps['learning_curves'] == last_json(run('--steps', '40'))['learning_curves']  # same numbers in workers
    refused = run('--steps', '6', '--random-from', str(log))  # random's curves were made with --epochs
    assert refused.returncode == 2 and 'other settings: steps' in refused.stderr


def test_warm_start_begins_from_the_previous_rounds_weights(full_run):
    """With a vanishing learning rate a warm-started round predicts what the round before it did."""
    result, log = full_run
    frozen = last_json(run('--warm-epochs', '1', '--warm-learning-rate', '1e-12'))
    for name in ('random', 'active'):
        cold = [r['held_out_forces_rmse'] for r in result['learning_curves'][name]]
        warm = [r['held_out_forces_rmse'] for r in frozen['learning_curves'][name]]
        assert warm[0] == cold[0]  # the first round trains from scratch either way
        assert warm[1] == pytest.approx(warm[0], rel=1e-4)  # 8 more labels, the same weights: the same forces
        assert cold[1] != pytest.approx(cold[0], rel=1e-4)  # from scratch on the 16 labels they differ
    moving = last_json(run('--warm-epochs', '2', '--warm-learning-rate', '3e-3'))['learning_curves']['random']
    assert moving[1]['held_out_forces_rmse'] != pytest.approx(
        frozen['learning_curves']['random'][0]['held_out_forces_rmse'], rel=1e-4
    )
    refused = run('--warm-epochs', '1', '--random-from', str(log))  # random's curves were trained from scratch
    assert refused.returncode == 2 and 'other settings: warm_epochs' in refused.stderr


def test_error_score_is_each_configurations_true_force_rmse(tmp_path):
    """``--score error`` (the bound of a perfect committee) scores a frame by its own force RMSE (eV/Å)."""
    module = load_module()
    frames = [r['atoms'] for r in module.trajectories([300.0, 1500.0], [0.0], 2, 5, seed=3)]
    calculator, paths = module.bootstrap_members(frames[:6], 2, 2, 0, tmp_path, threads=1)
    assert len(paths) == 2 and all(path.is_file() for path in paths)
    rmse, scores = module.evaluate(calculator, frames, 'error')
    assert rmse == pytest.approx(float(np.sqrt(np.mean(scores**2))), rel=1e-6)  # 16 atoms each: frames weigh alike
    frame = frames[-1].copy()
    frame.calc = calculator
    own = float(np.sqrt(np.mean((frame.get_forces() - frames[-1].get_forces()) ** 2)))
    assert scores[-1] == pytest.approx(own, rel=1e-6)
    _, spread = module.evaluate(calculator, frames, 'rms')
    assert not np.allclose(spread, scores)  # the committee's estimate is not the error itself


@pytest.mark.parametrize(
    ('args', 'message'),
    [(['--no-random'], '--no-random needs --target-forces-rmse'), (['--active-step', '0'], 'at least 1'),
     (['--seeds', '1', '1'], 'must differ'), (['--steps', '0'], '--steps must be at least 1'),
     (['--jobs', '0'], '--jobs must be at least 1'), (['--warm-epochs', '0'], '--warm-epochs must be at least 1'),
     (['--pool-repeats', '0'], '--pool-repeats must be at least 1')],
)  # fmt: skip
def test_bad_options_are_refused_by_the_parser(args, message, monkeypatch, capsys):
    """Refused before any work, in this process (a subprocess would spend its time importing torch)."""
    import torch

    module = load_module()
    threads = torch.get_num_threads()  # main() sets them from --threads
    monkeypatch.setattr(sys, 'argv', [str(SCRIPT), *TINY, *args])
    try:
        with warnings.catch_warnings(), pytest.raises(SystemExit) as exited:  # main() sets warning filters
            module.main()
    finally:
        torch.set_num_threads(threads)
    error = capsys.readouterr().err
    assert exited.value.code == 2 and message in error, error[-2000:]


def test_labels_to_target_between_rounds_follows_a_power_law():
    module = load_module()
    curve = [
        {'n_labels': 8, 'held_out_forces_rmse': 0.2},
        {'n_labels': 16, 'held_out_forces_rmse': 0.1},
        {'n_labels': 32, 'held_out_forces_rmse': 0.05},
    ]
    # error ∝ 1/N between 16 and 32 labels: 0.08 eV/Å is reached at 16 * 0.1 / 0.08 = 20 labels
    assert module.labels_to_reach_interpolated(curve, 0.08) == pytest.approx(20.0)
    assert module.labels_to_reach(curve, 0.08) == 32
    assert module.labels_to_reach_interpolated(curve, 0.1) == pytest.approx(16.0)  # on a round: the round
    assert module.labels_to_reach_interpolated(curve, 0.3) == 8.0  # the start is already below
    assert module.labels_to_reach_interpolated(curve, 0.04) is None  # never reached
    flat = [{'n_labels': 8, 'held_out_forces_rmse': 0.1}, {'n_labels': 16, 'held_out_forces_rmse': 0.1}]
    assert module.labels_to_reach_interpolated(flat, 0.1) == 8.0
    rising = [curve[0], {'n_labels': 16, 'held_out_forces_rmse': 0.25}, {'n_labels': 24, 'held_out_forces_rmse': 0.15}]
    # the first crossing follows the last round above the target, here the 16-label round
    assert module.labels_to_reach_interpolated(rising, 0.19) == pytest.approx(
        np.exp(np.log(16) + np.log(0.25 / 0.19) / np.log(0.25 / 0.15) * np.log(24 / 16))
    )


def test_the_json_reports_the_interpolated_figures_beside_the_rounds(full_run):
    """Each contender's interpolated labels-to-target is ``labels_to_reach_interpolated`` of its curve, between
    the round before and the round that reached the target (rounds of 8 labels). Random selection always reaches
    the target (its last figure), so each ratio is random's figure over active learning's when active learning
    reached it and None when it did not; ``random_over_active`` itself gives 32 / 8 = 4 and None for a missing
    figure."""
    result, _ = full_run
    module = load_module()
    target = result['target_forces_rmse']
    for name, curve in result['learning_curves'].items():
        between = result['labels_to_target_interpolated'][name]
        assert between == module.labels_to_reach_interpolated(curve, target)
        rounds = result['labels_to_target'][name]
        if rounds is None:
            assert between is None
        else:  # never later than the round that reached it, never earlier than the round before
            assert rounds - 8 <= between <= rounds
    ratios = result['ratios']
    for key, figures in (
        ('labels_random_over_active', result['labels_to_target']),
        ('labels_random_over_active_interpolated', result['labels_to_target_interpolated']),
    ):
        assert figures['random'] is not None, key  # the target is random selection's last figure
        if figures['active'] is None:  # a 2-epoch active curve need not reach it: then there is no ratio
            assert ratios[key] is None, key
        else:
            assert ratios[key] == pytest.approx(figures['random'] / figures['active']), key
    assert module.random_over_active({'random': 32, 'active': 8}) == 4.0
    assert module.random_over_active({'random': 32.0, 'active': None}) is None
    assert module.random_over_active({'random': None, 'active': 8.0}) is None


def test_pool_repeats_grow_the_pool_with_the_same_mix_of_conditions():
    """Repeats are independent trajectories over the same ladder: the first repeat is the pool of one, each
    condition's share is unchanged, and no configuration comes twice."""
    module = load_module()
    ladder = ([300.0, 1500.0], [0.0], [3, 1], 5)
    one = module.pool_trajectories(*ladder, seed=4)
    three = module.pool_trajectories(*ladder, seed=4, repeats=3)
    assert len(three) == 3 * len(one) == 3 * 3 * (3 + 1)  # 3 compositions x (3 snapshots at 300 K, 1 at 1500 K)
    assert all(
        np.array_equal(a['atoms'].positions, b['atoms'].positions) for a, b in zip(one, three[: len(one)], strict=True)
    )
    for records in (one, three):
        shares = [sum(r['temperature_K'] == t for r in records) / len(records) for t in (300.0, 1500.0)]
        assert shares == pytest.approx([0.75, 0.25])
    keys = {tuple(np.round(r['atoms'].positions.ravel(), 6)) for r in three}
    assert len(keys) == len(three)
