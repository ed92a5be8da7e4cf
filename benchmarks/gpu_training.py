"""GPU benchmark: training and MD of aiida-mlmat's potential on CUDA (float32, float64, mixed precision) against CPU.

Same data as ``benchmarks/training.py`` (rattled, strained Cu-Au fcc cells of 16-32 atoms labelled with EMT). Every
variant trains the default model (:func:`aiida_mlmat.ml.model.default_config`) for the same number of epochs from
the same seed through :func:`aiida_mlmat.ml.training.train`, then is evaluated through
:class:`aiida_mlmat.ml.calculator.MLMatCalculator` on the test split. MD speed (VelocityVerlet, 2 fs) is measured on
Cu-Au cells of several sizes on CPU and on CUDA with the CPU-float32 model. Finally the worker's ``train`` task (what
a ``mlmat.train`` CalcJob runs on a cluster node) is run as a subprocess with ``device: cuda`` and ``amp: true``.

Needs a CUDA GPU for the CUDA variants (they are skipped, and say so, without one). Not part of CI.

Run: python benchmarks/gpu_training.py [--epochs 60] [--n-train 150] [--threads 16] [--md-repeats 4 8 12]
The last line of stdout is one JSON object with ``variants``, ``md``, ``worker``, ``ratios`` (bigger is better),
``targets`` (what each ratio is measured against; see :func:`targets_for`) and ``met``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase.io import write

sys.path.insert(0, str(Path(__file__).resolve().parent))
from training import SPECIES, dataset, md_cell, test_errors

VARIANTS = {
    # name: (device, dtype, amp, batch size)
    'cpu_float32_b8': ('cpu', 'float32', False, 8),
    'cuda_float32_b8': ('cuda', 'float32', False, 8),
    'cuda_float64_b8': ('cuda', 'float64', False, 8),
    'cuda_amp_b8': ('cuda', 'float32', True, 8),
    'cuda_float32_b32': ('cuda', 'float32', False, 32),
    'cuda_amp_b32': ('cuda', 'float32', True, 32),
}

#: The variant every ratio is taken against.
CPU_VARIANT = 'cpu_float32_b8'
#: Targets: a CUDA variant trains at least as many epochs per second as this machine's CPU, and MD with the model
#: runs at least as many atom-steps per second on CUDA as on the CPU.
SPEED_TARGET = 1.0
#: Target of ``forces_rmse_cpu_over_<variant>`` for a CUDA variant with the CPU's batch size (the same
#: hyperparameters and seed): its test force RMSE (eV/Å) is at most 1/0.95 (about 5 %) above the CPU's.
ACCURACY_TARGET = 0.95


def targets_for(variants: list[str], md_repeats: list[int]) -> dict[str, float]:
    """The target of every ratio that a run of ``variants`` and MD cells of ``md_repeats`` can produce.

    A ratio meets its target when it is at least the target. A variant with another batch size than the CPU's has
    no accuracy target: in the same number of epochs it takes fewer optimizer steps, so its force error measures
    the batch size, not the device.
    """
    cpu_batch = VARIANTS[CPU_VARIANT][3]
    targets: dict[str, float] = {}
    for name in variants:
        if name == CPU_VARIANT:
            continue
        targets[f'epochs_per_s_{name}_over_cpu'] = SPEED_TARGET
        if VARIANTS[name][3] == cpu_batch:
            targets[f'forces_rmse_cpu_over_{name}'] = ACCURACY_TARGET
    for repeat in md_repeats:
        targets[f'md_speed_cuda_over_cpu_{4 * repeat**3}_atoms'] = SPEED_TARGET
    return targets


def sync(device: str) -> None:
    """Wait for queued CUDA work, so that wall-clock times are honest."""
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def train_variant(name: str, spec: tuple, frames: dict[str, list], args: argparse.Namespace, root: Path) -> dict:
    """Train one variant for ``--epochs`` epochs and evaluate it on the test split."""
    from aiida_mlmat.ml.calculator import MLMatCalculator
    from aiida_mlmat.ml.model import default_config
    from aiida_mlmat.ml.training import TrainingConfig, train

    device, dtype, amp, batch = spec
    config = TrainingConfig(
        epochs=args.epochs, batch_size=batch, patience=1_000_000, dtype=dtype, device=device, amp=amp,
        checkpoint_every_epochs=1_000_000, checkpoint_every_seconds=1e9, seed=0,
    )  # fmt: skip
    workdir = root / name
    workdir.mkdir()
    sync(device)
    start = time.perf_counter()
    summary = train(default_config(list(SPECIES)), frames['train'], frames['validation'], config, workdir)
    sync(device)
    wall = time.perf_counter() - start
    calculator = MLMatCalculator.from_files([workdir / 'model.pt'], device=device, dtype=getattr(torch, dtype))
    figures = test_errors(calculator, frames['test'])
    return {
        'device': device, 'dtype': dtype, 'amp': amp, 'batch_size': batch, 'epochs': summary['epochs'],
        'best_epoch': summary['best_epoch'], 'train_wall_s': wall, 'epochs_per_s': summary['epochs'] / wall,
        'descriptors_precomputed': summary['descriptors_precomputed'],
        'validation_forces_rmse': summary['validation'].get('forces_rmse'), **figures,
        'peak_cuda_memory_mib': torch.cuda.max_memory_allocated() / 2**20 if device == 'cuda' else None,
    }  # fmt: skip


def md_speed(model_path: Path, device: str, repeat: int, steps: int) -> dict[str, float]:
    """Atom-steps per second of VelocityVerlet (2 fs, 300 K start) with the model on ``device`` (float32)."""
    from ase import units
    from ase.md.verlet import VelocityVerlet

    from aiida_mlmat.ml.calculator import MLMatCalculator
    from aiida_mlmat.worker.tasks.sample import thermalize

    atoms = md_cell(repeat=repeat)
    atoms.calc = MLMatCalculator.from_files([model_path], device=device, dtype=torch.float32)
    thermalize(atoms, 300.0, np.random.default_rng(2))
    dyn = VelocityVerlet(atoms, 2.0 * units.fs)
    dyn.run(3)  # warm-up: allocator, kernels
    sync(device)
    start = time.perf_counter()
    dyn.run(steps)
    sync(device)
    seconds = time.perf_counter() - start
    return {'atoms': len(atoms), 'steps': steps, 'seconds': seconds, 'atom_steps_per_s': len(atoms) * steps / seconds}


def step_breakdown(model_path: Path, device: str, repeat: int, repeats: int = 5) -> dict[str, float]:
    """Mean seconds of one MD force evaluation on ``device`` (float32), in parts: the neighbour graph (built on
    the CPU by vesin, then copied), the model's energy and forces (forward and backward, until the forces are
    back on the host), and the whole ``MLMatCalculator.calculate`` (both, plus its numpy results)."""
    from ase.calculators.calculator import all_changes

    from aiida_mlmat.ml import keys
    from aiida_mlmat.ml.calculator import MLMatCalculator
    from aiida_mlmat.ml.model import load_model
    from aiida_mlmat.ml.neighbours import build_graph

    calculator = MLMatCalculator([load_model(str(model_path), map_location=device)], device=device, dtype=torch.float32)
    model = calculator.models[0]
    atoms = md_cell(repeat=repeat)
    atoms.rattle(0.05, seed=3)
    times = dict.fromkeys(('graph_s', 'model_s', 'calculator_s'), 0.0)
    for k in range(repeats + 2):
        atoms.positions[0, 0] += 1e-4  # a new configuration for the calculator every time
        sync(device)
        t0 = time.perf_counter()
        graph = build_graph([atoms], model.cutoff, dtype=torch.float32, device=device)
        sync(device)
        t1 = time.perf_counter()
        model(graph, forces=True, stress=False)[keys.FORCES].detach().cpu()
        t2 = time.perf_counter()
        calculator.calculate(atoms, ['energy', 'forces'], all_changes)
        t3 = time.perf_counter()
        if k >= 2:
            for key, value in zip(times, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                times[key] += value / repeats
    return times


def worker_train(frames: dict[str, list], root: Path, epochs: int, device: str = 'cuda') -> dict[str, Any]:
    """Run ``python -m aiida_mlmat.worker train input.json`` with ``device`` (cuda) and ``amp: true``."""
    from aiida_mlmat.ml.model import default_config

    job = root / 'worker-job'
    job.mkdir()
    write(job / 'train.extxyz', frames['train'], format='extxyz')
    write(job / 'validation.extxyz', frames['validation'], format='extxyz')
    model = default_config(list(SPECIES))
    model['descriptor'] = {**model['descriptor'], 'species': model['species']}
    params = {
        'schema_version': 1, 'task': 'train', 'train': 'train.extxyz', 'validation': 'validation.extxyz',
        'model': model,
        'training': {'epochs': epochs, 'device': device, 'amp': True, 'dtype': 'float32', 'seed': 0},
    }  # fmt: skip
    (job / 'input.json').write_text(json.dumps(params))
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, '-m', 'aiida_mlmat.worker', 'train', 'input.json'], cwd=job, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    results = json.loads((job / 'results.json').read_text()) if (job / 'results.json').is_file() else {}
    loaded = None
    if (job / 'model.pt').is_file():
        payload = torch.load(job / 'model.pt', map_location='cpu', weights_only=True)
        loaded = sorted(payload)
    return {
        'exit_status': proc.returncode, 'wall_s': wall, 'status': results.get('status'),
        'device': results.get('device'), 'epochs': results.get('epochs'),
        'validation': results.get('validation'), 'hyperparameters_amp': results.get('hyperparameters', {}).get('amp'),
        'model_sha256': results.get('model_sha256'), 'model_keys_weights_only': loaded,
        'stderr_tail': proc.stderr[-2000:],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--epochs', type=int, default=60)
    parser.add_argument('--n-train', type=int, default=150)
    parser.add_argument('--n-validation', type=int, default=25)
    parser.add_argument('--n-test', type=int, default=50)
    parser.add_argument('--threads', type=int, default=os.cpu_count() or 1, help='torch threads for the CPU runs')
    parser.add_argument('--variants', nargs='+', choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument('--md-repeats', type=int, nargs='+', default=[4, 8, 12], help='cubic supercell repeats')
    parser.add_argument('--md-steps', type=int, default=20)
    parser.add_argument('--worker-epochs', type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    cuda = torch.cuda.is_available()

    data = dataset(args.n_train + args.n_validation + args.n_test, seed=0)
    frames = {
        'train': data[: args.n_train],
        'validation': data[args.n_train : args.n_train + args.n_validation],
        'test': data[args.n_train + args.n_validation :],
    }
    out: dict[str, Any] = {'benchmark': 'gpu_training', 'epochs': args.epochs, 'n_train': args.n_train}
    variants: dict[str, Any] = {}
    md: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in args.variants:
            spec = VARIANTS[name]
            if spec[0] == 'cuda' and not cuda:
                variants[name] = {'skipped': 'CUDA is not available'}
                continue
            variants[name] = train_variant(name, spec, frames, args, root)
            print(name, json.dumps(variants[name]), flush=True)
        reference = root / CPU_VARIANT / 'model.pt'
        if reference.is_file():
            for repeat in args.md_repeats:
                for device in ('cpu', 'cuda') if cuda else ('cpu',):
                    key = f'{device}_{4 * repeat**3}'
                    md[key] = md_speed(reference, device, repeat, args.md_steps)
                    md[key]['breakdown_s'] = step_breakdown(reference, device, repeat)
                    print('md', key, json.dumps(md[key]), flush=True)
        out['worker'] = worker_train(frames, root, args.worker_epochs) if cuda else {'skipped': 'no CUDA'}
    out['variants'] = variants
    out['md'] = md
    ratios: dict[str, float] = {}
    cpu = variants.get(CPU_VARIANT, {})
    for name, figures in variants.items():
        if name != CPU_VARIANT and 'epochs_per_s' in figures and 'epochs_per_s' in cpu:
            ratios[f'epochs_per_s_{name}_over_cpu'] = figures['epochs_per_s'] / cpu['epochs_per_s']
            ratios[f'forces_rmse_cpu_over_{name}'] = cpu['test_forces_rmse'] / figures['test_forces_rmse']
    for repeat in args.md_repeats:
        n = 4 * repeat**3
        if f'cuda_{n}' in md and f'cpu_{n}' in md:
            ratios[f'md_speed_cuda_over_cpu_{n}_atoms'] = (
                md[f'cuda_{n}']['atom_steps_per_s'] / md[f'cpu_{n}']['atom_steps_per_s']
            )
    targets = targets_for(args.variants, args.md_repeats)
    met = {key: ratios[key] >= value for key, value in targets.items() if key in ratios}
    for key, value in targets.items():
        verdict = ('met' if met[key] else 'NOT met') if key in met else 'not measured'
        shown = f'{ratios[key]:.3f}' if key in ratios else 'n/a'
        print(f'{key}: {shown} (target >= {value}): {verdict}', flush=True)
    out['ratios'] = ratios
    out['targets'] = targets
    out['met'] = met
    out['wall_s'] = time.perf_counter() - started
    out['machine'] = {
        'cores': os.cpu_count(), 'threads': args.threads, 'python': platform.python_version(),
        'torch': torch.__version__, 'gpu': torch.cuda.get_device_name(0) if cuda else None,
    }  # fmt: skip
    print(json.dumps(out, default=float))


if __name__ == '__main__':
    main()
