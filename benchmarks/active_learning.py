"""Active-learning benchmark: reference labels needed to reach a force error, committee selection against random.

One pool of candidate configurations comes from molecular dynamics, the way an active-learning loop explores:
Langevin MD with the reference (EMT) of 16-atom Cu-Au fcc cells (25, 50 and 75 % Au on random sites) over a
ladder of temperatures and isotropic strains, a snapshot every ``--interval`` steps. A held-out set comes from
other trajectories over the same ladder (other seeds, other decorations). Both contenders start from the same
``--initial`` labelled pool configurations and grow the training set by ``--step`` labels per round up to
``--budget``; after each round an ensemble of ``--members`` bootstrap members is trained from scratch with the
same settings (or, with ``--warm-epochs``, from the previous round's weights, as the workchain retrains), and the
force RMSE of its mean on the held-out set is recorded (the learning curve).

- **active**: the pool is scored by the committee force disagreement of the current ensemble (the largest, over
  atoms, of the norm of the per-component standard deviation of the members' forces, eV/Å; what
  ``MLMatCalculator`` reports as ``forces_disagreement``) and the next labels are picked between the trust bounds,
  diverse by farthest-point sampling on mean descriptors: :func:`aiida_mlmat.ml.active.select_candidates`, the
  function the ``mlmat.active_learning`` workchain selects with.
- **random**: the next labels are drawn uniformly from the unlabelled part of the same pool (fixed seed).

``--score error`` replaces the committee's disagreement by each configuration's true force RMSE: it reads the labels
selection is meant to save, so it is no strategy but the ceiling of what any committee score could select.

The target error is the held-out force RMSE that random selection reaches with the whole budget (or
``--target-forces-rmse``). The figure of each contender is the number of labels at which its learning curve
first reaches the target (null if it never does; active learning's curve ends there unless ``--full-curves``);
the ratio is random's labels over active learning's (bigger is better; the target is 2: the same error with at
most half the labels). The same figures interpolated between rounds (log-log, the curve taken as a power law
between the rounds that bracket the target) are reported beside them, so that a crossing just past a round does
not cost a whole round; ``met`` is decided on the rounds themselves. Everything (training, scoring) runs in this
process through ``aiida_mlmat.ml``; no AiiDA profile is needed.

With several ``--seeds`` every seed is an independent repeat (its own pool, held-out set, initial labels and
training seeds); the figures come from the learning curves averaged over the seeds, round by round, so that one
lucky or unlucky training run moves neither the target nor the labels needed.

Run: python benchmarks/active_learning.py [--budget 96] [--initial 8] [--step 8] [--members 3] [--epochs 120]
     [--seeds 0 1 2]
The last line of stdout is one JSON object with ``ratios``, ``targets`` and the raw figures.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.langevin import Langevin

from aiida_mlmat.ml.active import adaptive_lower, check_quantile, select_candidates
from aiida_mlmat.ml.calculator import MLMatCalculator
from aiida_mlmat.ml.descriptors import DescriptorSpec, compute
from aiida_mlmat.ml.model import default_config
from aiida_mlmat.ml.training import TrainingConfig, train
from aiida_mlmat.worker.tasks.sample import thermalize

SPECIES = ['Cu', 'Au']
#: Settings that make random selection's learning curves what they are: a run with ``--random-from`` must match them.
RANDOM_SETTINGS = (
    'budget', 'initial', 'step', 'members', 'epochs', 'steps', 'warm_epochs', 'warm_learning_rate', 'temperatures',
    'strains', 'pool_snapshots', 'pool_repeats', 'held_out_snapshots', 'interval', 'seeds',
)  # fmt: skip
FRACTIONS_AU = (0.25, 0.5, 0.75)


def lattice_constant(x_au: float) -> float:
    """Vegard's law between fcc Cu (3.61 Å) and fcc Au (4.08 Å)."""
    return 3.61 + (4.08 - 3.61) * x_au


def labelled(atoms: Atoms) -> Atoms:
    """A copy of ``atoms`` with its EMT energy (eV), forces (eV/Å) and stress (eV/Å^3) attached."""
    frame = Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=True)
    frame.calc = EMT()
    energy, forces, stress = frame.get_potential_energy(), frame.get_forces(), frame.get_stress()
    frame.calc = SinglePointCalculator(frame, energy=energy, forces=forces, stress=stress)
    return frame


def trajectories(
    temperatures: list[float], strains: list[float], snapshots: int | list[int], interval: int, seed: int
) -> list[dict[str, Any]]:
    """Langevin MD (EMT, 2 fs) of 16-atom Cu-Au cells at every (composition, temperature, strain) of the ladder.

    :param snapshots: snapshots per trajectory: one number for every temperature, or one per temperature.
    :return: one record per snapshot: the labelled configuration and its temperature (K) and strain.
    """
    rng = np.random.default_rng(seed)
    per_temperature = [snapshots] * len(temperatures) if isinstance(snapshots, int) else list(snapshots)
    frames = []
    for x_au in FRACTIONS_AU:
        for temperature, count in zip(temperatures, per_temperature, strict=True):
            for strain in strains:
                atoms = bulk('Cu', 'fcc', a=lattice_constant(x_au) * (1 + strain), cubic=True).repeat((2, 2, 1))
                symbols = np.array(['Cu'] * len(atoms))
                symbols[rng.permutation(len(atoms))[: round(x_au * len(atoms))]] = 'Au'
                atoms.set_chemical_symbols(symbols)
                atoms.calc = EMT()
                thermalize(atoms, temperature, rng)
                dynamics = Langevin(
                    atoms, 2.0 * units.fs, temperature_K=temperature, friction=0.02, rng=np.random.RandomState(seed)
                )
                dynamics.run(interval)  # leave the perfect lattice first
                for _ in range(count):
                    dynamics.run(interval)
                    frames.append({'atoms': labelled(atoms), 'temperature_K': temperature, 'strain': strain})
                seed += 1
    return frames


#: Offset between the MD seeds of the repeats of a pool (the held-out set's trajectories start at seed + 10 000).
REPEAT_SEED_STRIDE = 100_000


def pool_trajectories(
    temperatures: list[float],
    strains: list[float],
    snapshots: int | list[int],
    interval: int,
    seed: int,
    repeats: int = 1,
) -> list[dict[str, Any]]:
    """The pool: :func:`trajectories` ``repeats`` times from independent seeds, one after the other.

    Every repeat runs the same ladder with other decorations and other MD noise, so the pool grows while its mix of
    conditions (the share of each temperature and strain) stays the same; the first repeat is the pool of one.
    """
    return [
        record
        for repeat in range(repeats)
        for record in trajectories(temperatures, strains, snapshots, interval, seed + REPEAT_SEED_STRIDE * repeat)
    ]


BATCH_SIZE = 4


def member_epochs(n_frames: int, epochs: int, steps: int | None) -> int:
    """Epochs of a member trained on ``n_frames``: ``epochs``, or as many as make ``steps`` optimizer steps."""
    if steps is None:
        return epochs
    return max(1, math.ceil(steps / math.ceil(n_frames / BATCH_SIZE)))


def train_member(
    train_frames: list[Atoms], validation: list[Atoms], config: TrainingConfig, directory: Path, init_from: Path | None
) -> Path:
    """Train one member (one torch thread when run in a worker process of ``--jobs``); return its model file.

    :param init_from: the model file of the previous round's member to start from (warm start), or None.
    """
    train(default_config(SPECIES), train_frames, validation, config, directory, init_from=init_from)
    return directory / 'model.pt'


def bootstrap_members(
    frames: list[Atoms],
    members: int,
    epochs: int,
    seed: int,
    workdir: Path,
    threads: int,
    steps: int | None = None,
    executor: Executor | None = None,
    previous: list[Path] | None = None,
    learning_rate: float | None = None,
) -> tuple[MLMatCalculator, list[Path]]:
    """Train ``members`` models, each on a bootstrap resample (validated on its out-of-bag frames).

    :param steps: optimizer steps per member (the epochs follow from the set's size) instead of ``epochs``.
    :param executor: a process pool that trains the members side by side (same numbers as one after the other).
    :param previous: the model files of the previous round's members: member ``k`` starts from the weights of
        ``previous[k]`` (warm start, what the workchain does from its second iteration on); None: from scratch.
    :param learning_rate: the initial learning rate; None: :class:`TrainingConfig`'s.
    :return: the ensemble and its members' model files.
    """
    rng = np.random.default_rng(seed)
    jobs = []
    for member in range(members):
        picks = rng.integers(0, len(frames), len(frames)) if members > 1 else np.arange(len(frames))
        out_of_bag = sorted(set(range(len(frames))) - set(picks.tolist())) or list(range(len(frames)))
        n_epochs = member_epochs(len(picks), epochs, steps)
        config = TrainingConfig(
            epochs=n_epochs, batch_size=BATCH_SIZE, patience=n_epochs, seed=seed + member, dtype='float32',
            checkpoint_every_epochs=10**6, checkpoint_every_seconds=1e9,
            **({} if learning_rate is None else {'learning_rate': learning_rate}),
        )  # fmt: skip
        init_from = previous[member] if previous else None
        jobs.append(
            (
                [frames[i] for i in picks],
                [frames[i] for i in out_of_bag],
                config,
                workdir / f'member-{member}',
                init_from,
            )
        )
    if executor is None:
        paths = [train_member(*job) for job in jobs]
    else:
        paths = list(executor.map(train_member, *zip(*jobs, strict=True)))
    torch.set_num_threads(threads)
    return MLMatCalculator.from_files(paths, dtype=torch.float32), paths


def _single_thread() -> None:
    """Initialiser of the ``--jobs`` worker processes: one torch thread each."""
    torch.set_num_threads(1)


def evaluate(calculator: MLMatCalculator, frames: list[Atoms], score: str = 'max') -> tuple[float, np.ndarray]:
    """Force RMSE (eV/Å) of the ensemble mean on labelled ``frames``, and every frame's committee disagreement.

    :param score: how a frame's disagreement (eV/Å) comes from its atoms' force spreads (the norm of the
        per-component standard deviation over members): ``max``, the largest over atoms (``forces_disagreement``,
        what the workchain selects with), or ``rms``, their root mean square, the committee's estimate of the
        frame's contribution to a force RMSE. ``error`` is no disagreement but the frame's true force RMSE (the
        ensemble mean against the reference): selecting on it needs the labels that selection is meant to save, so
        it is no strategy, only the bound on what a perfectly calibrated committee could select.
    """
    errors, disagreement = [], []
    for frame in frames:
        atoms = frame.copy()
        atoms.calc = calculator
        error = atoms.get_forces() - frame.get_forces()
        errors.append(error.ravel())
        if score == 'max':
            disagreement.append(calculator.results['forces_disagreement'])
        elif score == 'rms':
            spread = np.linalg.norm(calculator.results['forces_std'], axis=1)
            disagreement.append(float(np.sqrt(np.mean(spread**2))))
        else:
            disagreement.append(float(np.sqrt(np.mean(error**2))))
    return float(np.sqrt(np.mean(np.square(np.concatenate(errors))))), np.asarray(disagreement)


def learning_rounds(
    strategy: str,
    pool: list[Atoms],
    held_out: list[Atoms],
    features: np.ndarray,
    args: argparse.Namespace,
    root: Path,
    seed: int,
    executor: Executor | None = None,
) -> Iterator[dict[str, Any]]:
    """Grow the training set from the same initial labels with one strategy; yield one record per round.

    Every round trains an ensemble on the labels chosen so far, measures it on the held-out set and (but for the
    last round, at the budget) chooses the next ``--step`` labels; the caller decides when to stop asking.
    """
    rng = np.random.default_rng(seed + 1)
    chosen = list(rng.choice(len(pool), args.initial, replace=False))
    previous = None
    while True:
        start = time.perf_counter()
        warm = previous is not None and args.warm_epochs is not None
        calculator, paths = bootstrap_members(
            [pool[i] for i in chosen], args.members, args.warm_epochs if warm else args.epochs, seed,
            root / f'{strategy}-{seed}-{len(chosen)}', args.threads, None if warm else args.steps, executor,
            previous if warm else None, args.warm_learning_rate if warm else None,
        )  # fmt: skip
        previous = paths
        train_s = time.perf_counter() - start
        rmse, _ = evaluate(calculator, held_out)
        record: dict[str, Any] = {'n_labels': len(chosen), 'held_out_forces_rmse': rmse, 'train_s': train_s}
        print(f'{strategy:>6} seed {seed}: {len(chosen):4d} labels -> held-out force RMSE {rmse:.4f} eV/Å', flush=True)
        if len(chosen) >= min(args.budget, len(pool)):
            yield record
            return
        rest = np.array(sorted(set(range(len(pool))) - set(chosen)))
        step = args.active_step if strategy == 'active' and args.active_step else args.step
        n_new = min(step, args.budget - len(chosen), len(rest))
        if strategy == 'active':
            _, scores = evaluate(calculator, [pool[i] for i in rest], args.score)
            upper = max(args.upper, float(scores.max()))  # nothing in the pool is unphysical: it is reference MD
            # the workchain's adaptive bound, never leaving fewer candidates than the labels of this round
            lower = adaptive_lower(scores, args.lower, upper, args.lower_quantile, min_candidates=n_new)
            labelled = features[chosen] if args.fps_labelled else None
            picked = select_candidates(scores, lower, upper, n_new, features[rest], labelled_features=labelled)
            if len(picked) < n_new:  # fewer above the fixed lower bound than labels to spend: the most uncertain
                extra = [int(i) for i in np.argsort(-scores, kind='stable') if int(i) not in set(picked)]
                picked += extra[: n_new - len(picked)]
            record['pool_disagreement'] = {
                'mean': float(scores.mean()), 'max': float(scores.max()),
                'fraction_above_lower': float(np.mean(scores > args.lower)),
                'lower_used': lower,
            }  # fmt: skip
            new = [int(rest[i]) for i in picked]
        else:
            new = [int(i) for i in rng.choice(rest, n_new, replace=False)]
        record['added'] = new
        yield record
        chosen += new


def mean_curve(curves: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The learning curve averaged over seeds, round by round (as far as every seed's curve goes).

    :return: per round ``n_labels`` and the mean and the standard deviation over seeds of the held-out force RMSE
        (eV/Å); the seeds' own values are in their curves.
    """
    rounds = min(len(curve) for curve in curves)
    averaged = []
    for k in range(rounds):
        values = [curve[k]['held_out_forces_rmse'] for curve in curves]
        assert len({curve[k]['n_labels'] for curve in curves}) == 1, 'the seeds grow their sets in the same steps'
        averaged.append({
            'n_labels': curves[0][k]['n_labels'], 'held_out_forces_rmse': float(np.mean(values)),
            'held_out_forces_rmse_std': float(np.std(values)),
        })  # fmt: skip
    return averaged


def labels_to_reach(curve: list[dict[str, Any]], target: float) -> int | None:
    """The number of labels at which a learning curve first reaches ``target`` (eV/Å), or None."""
    for record in curve:
        if record['held_out_forces_rmse'] <= target:
            return record['n_labels']
    return None


def labels_to_reach_interpolated(curve: list[dict[str, Any]], target: float) -> float | None:
    """Where a learning curve first reaches ``target`` (eV/Å), interpolated between rounds, or None.

    Between the last round above the target and the first at or below it the curve is taken as a power law (straight
    in log-log, as learning curves are), so the figure is not quantised by the size of the rounds. A curve that
    starts at or below the target gives its first round's labels; ``labels_to_reach`` gives the round itself.
    """
    for k, record in enumerate(curve):
        error = record['held_out_forces_rmse']
        if error > target:
            continue
        if k == 0:
            return float(record['n_labels'])
        before = curve[k - 1]
        n0, e0 = float(before['n_labels']), float(before['held_out_forces_rmse'])
        n1, e1 = float(record['n_labels']), float(error)
        if e1 <= 0.0:  # an exact zero has no logarithm (e0 > target >= e1 otherwise)
            return n1
        fraction = (math.log(e0) - math.log(target)) / (math.log(e0) - math.log(e1))
        return math.exp(math.log(n0) + fraction * (math.log(n1) - math.log(n0)))
    return None


def random_over_active(labels: dict[str, float | None]) -> float | None:
    """Random selection's labels over active learning's (bigger is better), or None when either is missing."""
    return labels['random'] / labels['active'] if labels.get('active') and labels.get('random') else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--budget', type=int, default=96, help='labels at the end of each learning curve')
    parser.add_argument('--initial', type=int, default=8, help='labels to start from (the same for both)')
    parser.add_argument('--step', type=int, default=8, help='labels added per round')
    parser.add_argument('--members', type=int, default=3, help='ensemble members (bootstrap), for both')
    parser.add_argument('--epochs', type=int, default=120, help='training epochs of every member, from scratch')
    parser.add_argument(
        '--steps', type=int,
        help='optimizer steps of every member instead of --epochs (epochs = steps / batches per epoch): every '
        'ensemble gets the same training, so that a learning curve measures data, not training length',
    )  # fmt: skip
    parser.add_argument(
        '--warm-epochs', type=int,
        help='from the second round on, every member starts from the previous round\'s weights (the workchain\'s '
        'retraining) and trains this many epochs; default: every round from scratch for --epochs',
    )  # fmt: skip
    parser.add_argument(
        '--warm-learning-rate', type=float, help="initial learning rate of a warm start (default: the first round's)"
    )
    parser.add_argument('--jobs', type=int, default=1, help='processes that train ensemble members side by side')
    parser.add_argument('--temperatures', type=float, nargs='+', default=[300.0, 700.0, 1100.0, 1500.0])
    parser.add_argument('--strains', type=float, nargs='+', default=[-0.03, 0.0, 0.03])
    parser.add_argument(
        '--pool-snapshots', type=int, nargs='+', default=[16],
        help='snapshots per pool trajectory: one number, or one per temperature (an exploration-like pool that '
        'is mostly near-equilibrium frames, e.g. 40 8 8 8)',
    )  # fmt: skip
    parser.add_argument(
        '--pool-repeats', type=int, default=1,
        help='independent pool trajectories per (composition, temperature, strain): a pool that many times larger '
        'with the same mix of conditions (new decorations and MD noise; the first repeat is the pool of 1)',
    )  # fmt: skip
    parser.add_argument('--held-out-snapshots', type=int, default=4, help='snapshots per held-out trajectory')
    parser.add_argument('--interval', type=int, default=10, help='MD steps between snapshots')
    parser.add_argument('--lower', type=float, default=0.02, help='lower trust bound (eV/Å)')
    parser.add_argument('--upper', type=float, default=1.0, help='upper trust bound (eV/Å)')
    parser.add_argument(
        '--lower-quantile', type=float,
        help='calibrate the lower bound every round: at least this quantile of the pool disagreement (e.g. 0.75: '
        'farthest-point sampling among the most uncertain quarter)',
    )  # fmt: skip
    parser.add_argument(
        '--score', choices=('max', 'rms', 'error'), default='max',
        help="a configuration's disagreement from its atoms' force spreads: the largest (max, what the workchain "
        'uses) or their root mean square (rms); error: its true force RMSE, read from the labels selection is meant '
        'to save (a bound on what any committee score could do, not a strategy)',
    )  # fmt: skip
    parser.add_argument('--target-forces-rmse', type=float, help='eV/Å; default: what random reaches at --budget')
    parser.add_argument(
        '--active-step', type=int,
        help='labels active learning adds per round (default: --step, which random keeps): more, smaller rounds',
    )  # fmt: skip
    parser.add_argument(
        '--fps-labelled', action='store_true',
        help='farthest-point sampling also keeps away from the configurations labelled already (they count as picked)',
    )  # fmt: skip
    parser.add_argument(
        '--no-random', action='store_true',
        help='train active learning only, against --target-forces-rmse (an exploratory run: no ratio is reported)',
    )  # fmt: skip
    parser.add_argument(
        '--full-curves', action='store_true',
        help='run active learning to the whole budget too (default: it stops once it reaches the target)',
    )  # fmt: skip
    parser.add_argument(
        '--random-from', type=Path,
        help="reuse random selection's curves from an earlier run's output (its JSON line, or a log ending in it) "
        'with the same pool, seeds, budget and training settings (checked): only active learning is trained',
    )  # fmt: skip
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument(
        '--seeds',
        type=int,
        nargs='+',
        default=[0],
        help='independent repeats (pool, held-out set, initial labels, training); the curves are averaged',
    )
    args = parser.parse_args()

    warnings.filterwarnings('ignore', category=UserWarning)
    warnings.filterwarnings('ignore', category=FutureWarning)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if len(args.pool_snapshots) not in (1, len(args.temperatures)) or min(args.pool_snapshots) < 0:
        parser.error('--pool-snapshots takes one count, or one count (>= 0) per temperature')
    if args.lower_quantile is not None and check_quantile(args.lower_quantile):
        parser.error(f'--lower-quantile {check_quantile(args.lower_quantile)}')
    earlier = None
    if args.random_from is not None:
        try:
            lines = [line for line in args.random_from.read_text().splitlines() if line.startswith('{')]
            earlier = json.loads(lines[-1])
            settings = earlier['settings']  # a key it lacks (an older run) had the default, None
            defaults = {'pool_repeats': 1}  # runs from before the option had one pool
            differ = [key for key in RANDOM_SETTINGS if settings.get(key, defaults.get(key)) != vars(args)[key]]
        except (OSError, IndexError, KeyError, ValueError) as error:
            parser.error(f'--random-from {args.random_from}: not the output of this benchmark ({error!r})')
        if differ:
            parser.error(f'--random-from {args.random_from} was run with other settings: {", ".join(differ)}')
    if args.no_random and (args.target_forces_rmse is None or args.random_from is not None):
        parser.error('--no-random needs --target-forces-rmse (and no --random-from)')
    if args.active_step is not None and args.active_step < 1:
        parser.error(f'--active-step must be at least 1, got {args.active_step}')
    if args.warm_epochs is not None and args.warm_epochs < 1:
        parser.error(f'--warm-epochs must be at least 1, got {args.warm_epochs}')
    if args.steps is not None and args.steps < 1:
        parser.error(f'--steps must be at least 1, got {args.steps}')
    if args.jobs < 1:
        parser.error(f'--jobs must be at least 1, got {args.jobs}')
    if args.pool_repeats < 1:
        parser.error(f'--pool-repeats must be at least 1, got {args.pool_repeats}')
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f'--seeds must differ from each other, got {args.seeds}')
    pool_snapshots = args.pool_snapshots[0] if len(args.pool_snapshots) == 1 else args.pool_snapshots
    spec = DescriptorSpec.from_dict({**default_config(SPECIES)['descriptor'], 'species': SPECIES})
    data = {}  # per seed: its own pool and held-out trajectories (other decorations, other MD noise)
    for seed in args.seeds:
        pool_records = pool_trajectories(
            args.temperatures, args.strains, pool_snapshots, args.interval, seed, args.pool_repeats
        )
        held_records = trajectories(
            args.temperatures, args.strains, args.held_out_snapshots, 3 * args.interval, seed + 10_000
        )
        pool = [record['atoms'] for record in pool_records]
        if not 0 < args.initial < len(pool):
            parser.error(f'--initial must be between 1 and the pool size - 1 ({len(pool) - 1}), got {args.initial}')
        features = np.stack([array.mean(axis=0) for array in compute(pool, spec)])
        held_out = [record['atoms'] for record in held_records]
        data[seed] = {'records': pool_records, 'pool': pool, 'held_out': held_out, 'features': features}
    data_s = time.perf_counter() - t0
    held_out_forces = np.concatenate([a.get_forces().ravel() for d in data.values() for a in d['held_out']])
    force_rms = float(np.sqrt(np.mean(held_out_forces**2)))
    n_pool, n_held_out = len(data[args.seeds[0]]['pool']), len(data[args.seeds[0]]['held_out'])
    print(
        f'{len(args.seeds)} seed(s): pool {n_pool} and held-out {n_held_out} configurations of 16 atoms (EMT MD) '
        f'each, held-out force RMS {force_rms:.3f} eV/Å, made in {data_s:.1f} s',
        flush=True,
    )
    start = time.perf_counter()
    executor = None
    if args.jobs > 1:
        context = multiprocessing.get_context('spawn')  # no fork of a process that holds torch's threads
        executor = ProcessPoolExecutor(args.jobs, mp_context=context, initializer=_single_thread)
    with tempfile.TemporaryDirectory(prefix='mlmat-bench-al-') as directory, executor or nullcontext():
        root = Path(directory)

        def rounds(strategy: str, seed: int) -> Iterator[dict[str, Any]]:
            d = data[seed]
            return learning_rounds(strategy, d['pool'], d['held_out'], d['features'], args, root, seed, executor)

        per_seed: dict[str, dict[int, list[dict[str, Any]]]] = {}
        if earlier is not None:
            per_seed['random'] = {int(k): v for k, v in earlier['learning_curves_by_seed']['random'].items()}
        elif not args.no_random:
            per_seed['random'] = {seed: list(rounds('random', seed)) for seed in args.seeds}
        curves = {name: mean_curve(list(by_seed.values())) for name, by_seed in per_seed.items()}
        target = args.target_forces_rmse or curves['random'][-1]['held_out_forces_rmse']
        # Active learning, all seeds a round at a time: its figure is known once the mean curve reaches the target.
        active = {seed: rounds('active', seed) for seed in args.seeds}
        per_seed['active'] = {seed: [] for seed in args.seeds}
        while True:
            records = {seed: next(generator, None) for seed, generator in active.items()}
            if any(record is None for record in records.values()):
                break
            for seed, record in records.items():
                per_seed['active'][seed].append(record)
            curves['active'] = mean_curve(list(per_seed['active'].values()))
            if not args.full_curves and curves['active'][-1]['held_out_forces_rmse'] <= target:
                break
    wall = time.perf_counter() - start
    needed = {name: labels_to_reach(curve, target) for name, curve in curves.items()}
    needed.setdefault('random', None)  # --no-random
    ratio = random_over_active(needed)
    between = {name: labels_to_reach_interpolated(curve, target) for name, curve in curves.items()}
    between.setdefault('random', None)
    ratio_between = random_over_active(between)
    conditions = {}
    for name in curves:
        temperatures = [
            data[seed]['records'][i]['temperature_K']
            for seed, curve in per_seed[name].items()
            for record in curve[:-1]  # what the last round picked was never trained on
            for i in record.get('added', [])
        ]
        conditions[name] = {f'{t:g}K': temperatures.count(t) for t in args.temperatures}
    if earlier is not None:
        conditions['random'] = earlier['selected_by_temperature']['random']
    pool_records = data[args.seeds[0]]['records']
    result = {
        'benchmark': 'active_learning',
        'units': {'forces_rmse': 'eV/Å', 'temperature': 'K', 'time': 's'},
        'n_pool': n_pool,
        'n_held_out': n_held_out,
        'seeds': args.seeds,
        'pool_by_temperature': {
            f'{t:g}K': sum(1 for record in pool_records if record['temperature_K'] == t) for t in args.temperatures
        },
        'held_out_force_rms': force_rms,
        'target_forces_rmse': target,
        'target_from': 'argument'
        if args.target_forces_rmse
        else f'random selection at {args.budget} labels, mean over the seeds',
        'labels_to_target': needed,
        'labels_to_target_interpolated': between,
        'learning_curves': curves,
        'learning_curves_by_seed': {
            name: {
                str(seed): curve  # every round's record, with the pool indices it picked (`added`)
                for seed, curve in by_seed.items()
            }
            for name, by_seed in per_seed.items()
        },
        'selected_by_temperature': conditions,
        'settings': {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        'ratios': {'labels_random_over_active': ratio, 'labels_random_over_active_interpolated': ratio_between},
        'targets': {'labels_random_over_active': 2.0},
        'met': {'labels_random_over_active': ratio is not None and ratio >= 2.0},
        'wall_s': wall,
        'machine': {
            'cores': os.cpu_count(),
            'threads': args.threads,
            'cpu': platform.processor() or platform.machine(),
            'python': platform.python_version(),
            'torch': torch.__version__,
            'loadavg_end': os.getloadavg()[0],
        },
    }
    print(
        f'target {target:.4f} eV/Å: random needs {needed["random"]} labels, active learning {needed["active"]} '
        f'(ratio {ratio if ratio is None else round(ratio, 2)}, target 2; between rounds '
        f'{ratio_between if ratio_between is None else round(ratio_between, 2)})',
        flush=True,
    )
    print(json.dumps(result))


if __name__ == '__main__':
    main()
