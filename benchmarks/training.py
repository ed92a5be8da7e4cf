"""Training benchmark: aiida-mlmat's atomic NN potential against a small MACE, same data, same wall-clock budget.

One labelled data set (EMT energy, forces, stress) of rattled, strained Cu-Au fcc supercells of 16, 24 and 32 atoms
(fixed seed) is split into train / validation / test. Both contenders train on energy per atom and forces (loss
w_E MSE(E/atom) + w_F MSE(F), w_E = 1, w_F = 10) for the same wall-clock budget on the same threads, keep the model
that is best on validation, and are evaluated through their ASE calculators on the test split. Then each runs
VelocityVerlet molecular dynamics on a 256-atom Cu-Au cell (4x4x4 cubic fcc supercell), the two in alternating
blocks of steps so that both see the same background load, and the speed is reported in atom-steps per second.

- **ours**: :func:`aiida_mlmat.ml.training.train` (default model config, ``TrainingConfig(max_seconds=budget)``),
  evaluated and run with :class:`aiida_mlmat.ml.calculator.MLMatCalculator`.
- **mace**: mace-torch's ``ScaleShiftMACE`` built as ``mace_run_train --model MACE`` builds it (first interaction
  block non-residual, shift 0, scale = RMS of the forces, E0s by least squares), trained by a minimal loop written
  here (Adam with AMSGrad, learning rate reduced on plateau), saved as a state dict plus its config, reloaded with
  ``weights_only=True`` and run with ``mace.calculators.MACECalculator(models=[...])``. Nothing is downloaded.

Run: python benchmarks/training.py [--budget-s 120] [--n-train 150] [--device cpu]
The last line of stdout is one JSON object with ``ratios`` (bigger is better), ``targets`` and the raw figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

SPECIES = ('Cu', 'Au')
NUMBERS = (29, 79)
ENERGY_WEIGHT = 1.0
FORCES_WEIGHT = 10.0


def lattice_constant(x_au: float) -> float:
    """Vegard's law between fcc Cu (3.61 Å) and fcc Au (4.08 Å)."""
    return 3.61 + (4.08 - 3.61) * x_au


def dataset(n: int, seed: int = 0) -> list[Atoms]:
    """Rattled, strained Cu-Au fcc supercells of 16, 24 or 32 atoms (10-60 % Au), labelled with EMT."""
    rng = np.random.default_rng(seed)
    repeats = [(2, 2, 1), (3, 2, 1), (2, 2, 2)]
    frames = []
    for k in range(n):
        x_au = rng.uniform(0.1, 0.6)
        atoms = bulk('Cu', 'fcc', a=lattice_constant(x_au), cubic=True).repeat(repeats[k % 3])
        atoms.set_chemical_symbols(np.where(rng.random(len(atoms)) < x_au, 'Au', 'Cu'))
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + rng.uniform(-0.03, 0.03, (3, 3))), scale_atoms=True)
        atoms.positions += rng.normal(0.0, rng.uniform(0.03, 0.15), atoms.positions.shape)
        atoms.calc = EMT()
        energy, forces, stress = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces, stress=stress)
        frames.append(atoms)
    return frames


def md_cell(seed: int = 1, repeat: int = 4) -> Atoms:
    """A Cu-Au fcc cell of 4 repeat^3 atoms (256 by default: a 4x4x4 cubic supercell), 30 % Au on random sites."""
    rng = np.random.default_rng(seed)
    atoms = bulk('Cu', 'fcc', a=lattice_constant(0.3), cubic=True).repeat((repeat, repeat, repeat))
    atoms.set_chemical_symbols(np.where(rng.random(len(atoms)) < 0.3, 'Au', 'Cu'))
    return atoms


def reference_energies(frames: list[Atoms]) -> np.ndarray:
    """Per-element energies (eV) by least squares of total energies on composition (order of SPECIES)."""
    counts = np.array([[atoms.get_chemical_symbols().count(s) for s in SPECIES] for atoms in frames], dtype=float)
    energies = np.array([atoms.get_potential_energy() for atoms in frames])
    return np.linalg.lstsq(counts, energies, rcond=None)[0]


def test_errors(calculator: Any, frames: list[Atoms]) -> dict[str, float]:
    """Energy RMSE per atom (eV/atom), force RMSE (eV/Å), stress RMSE (eV/Å^3) of a calculator on labelled frames."""
    e_err, f_err, s_err = [], [], []
    for frame in frames:
        atoms = frame.copy()
        atoms.calc = calculator
        e_err.append((atoms.get_potential_energy() - frame.get_potential_energy()) / len(atoms))
        f_err.append((atoms.get_forces() - frame.get_forces()).ravel())
        s_err.append(atoms.get_stress() - frame.get_stress())
    return {
        'test_energy_rmse_per_atom': float(np.sqrt(np.mean(np.square(e_err)))),
        'test_forces_rmse': float(np.sqrt(np.mean(np.square(np.concatenate(f_err))))),
        'test_stress_rmse': float(np.sqrt(np.mean(np.square(np.concatenate(s_err))))),
    }


def md_speed(calculators: dict[str, Any], warm_steps: int, steps: int, block: int, seed: int = 2) -> dict[str, dict]:
    """VelocityVerlet (2 fs, 300 K start) on the 256-atom cell with each calculator: atom-steps per second.

    After ``warm_steps`` untimed steps each, the contenders run ``steps`` timed steps in alternating blocks of
    ``block`` steps, so that both see the same background load; the figure is the median over blocks (robust to
    bursts of load), the mean over all timed steps is reported beside it.
    """
    from ase import units
    from ase.md.verlet import VelocityVerlet

    from aiida_mlmat.worker.tasks.sample import thermalize

    runs = {}
    for name, calculator in calculators.items():
        atoms = md_cell()
        atoms.calc = calculator
        thermalize(atoms, 300, np.random.default_rng(seed))
        dynamics = VelocityVerlet(atoms, timestep=2.0 * units.fs)
        dynamics.run(warm_steps)
        runs[name] = {'atoms': atoms, 'dynamics': dynamics, 'energy': atoms.get_total_energy(), 'blocks': []}
    done = 0
    while done < steps:
        size = min(block, steps - done)
        for run in runs.values():
            start = time.perf_counter()
            run['dynamics'].run(size)
            run['blocks'].append((size, time.perf_counter() - start))
        done += size
    figures = {}
    for name, run in runs.items():
        atoms, blocks = run['atoms'], run['blocks']
        seconds = sum(t for _, t in blocks)
        figures[name] = {
            'md_atom_steps_per_s': float(np.median([len(atoms) * n / t for n, t in blocks])),
            'md_atom_steps_per_s_mean': len(atoms) * steps / seconds,
            'md_seconds': seconds,
            'md_steps': steps,
            'md_final_temperature_K': float(atoms.get_temperature()),
            'md_energy_drift_eV_per_atom': float((atoms.get_total_energy() - run['energy']) / len(atoms)),
        }
    return figures


# -- ours ------------------------------------------------------------------------------------------------------------
def train_ours(train: list[Atoms], validation: list[Atoms], args: argparse.Namespace, workdir: Path) -> dict:
    from aiida_mlmat.ml.model import default_config
    from aiida_mlmat.ml.training import TrainingConfig
    from aiida_mlmat.ml.training import train as train_model

    model_config = default_config(list(SPECIES))
    config = TrainingConfig(
        epochs=1_000_000, max_seconds=args.budget_s, forces_weight=FORCES_WEIGHT, energy_weight=ENERGY_WEIGHT,
        patience=1_000_000, dtype=args.ours_dtype, device=args.device, checkpoint_every_epochs=1_000_000,
        checkpoint_every_seconds=1e9, seed=args.seed, jacobian_memory_mb=args.ours_jacobian_mb,
    )  # fmt: skip
    start = time.perf_counter()
    summary = train_model(model_config, train, validation, config, workdir)
    wall = time.perf_counter() - start
    return {'model_config': model_config, 'summary': summary, 'train_wall_s': wall, 'path': workdir / 'model.pt'}


def ours_step_breakdown(path: Path, dtype: torch.dtype, device: str, repeats: int = 10) -> dict[str, float]:
    """Mean seconds per MD force call on the 256-atom cell: neighbour graph, descriptor alone, energy (descriptor
    plus networks, forward) and forces (the backward pass)."""
    from aiida_mlmat.ml.model import load_model
    from aiida_mlmat.ml.neighbours import build_graph

    model = load_model(str(path), map_location=device).to(dtype=dtype).eval()
    model.reference_energies = model.reference_energies.to(torch.float64)
    atoms = md_cell()
    atoms.rattle(0.05, seed=3)
    times = {'graph_s': 0.0, 'descriptor_forward_s': 0.0, 'energy_forward_s': 0.0, 'forces_backward_s': 0.0}
    for k in range(repeats + 2):
        t0 = time.perf_counter()
        graph = build_graph([atoms], model.cutoff, dtype=dtype, device=device)
        graph.positions.requires_grad_(True)
        t1 = time.perf_counter()
        model.descriptor.sparse = True
        model.descriptor(graph)
        t2 = time.perf_counter()
        energy = model.atomic_energies(graph).sum()
        t3 = time.perf_counter()
        torch.autograd.grad(energy, [graph.positions])
        t4 = time.perf_counter()
        if k >= 2:
            for key, value in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                times[key] += value / repeats
    return times


# -- MACE ------------------------------------------------------------------------------------------------------------
def mace_model(config: dict[str, Any]) -> torch.nn.Module:
    """A ScaleShiftMACE from plain data (under the current default dtype)."""
    from e3nn import o3
    from mace import modules

    return modules.ScaleShiftMACE(
        r_max=config['r_max'],
        num_bessel=config['num_bessel'],
        num_polynomial_cutoff=config['num_polynomial_cutoff'],
        max_ell=config['max_ell'],
        interaction_cls=modules.interaction_classes[config['interaction']],
        interaction_cls_first=modules.interaction_classes[config['interaction_first']],
        num_interactions=config['num_interactions'],
        num_elements=len(config['atomic_numbers']),
        hidden_irreps=o3.Irreps(config['hidden_irreps']),
        MLP_irreps=o3.Irreps(config['MLP_irreps']),
        atomic_energies=np.array(config['atomic_energies']),
        avg_num_neighbors=config['avg_num_neighbors'],
        atomic_numbers=config['atomic_numbers'],
        correlation=config['correlation'],
        gate=modules.gate_dict[config['gate']],
        radial_MLP=config['radial_MLP'],
        atomic_inter_scale=config['atomic_inter_scale'],
        atomic_inter_shift=config['atomic_inter_shift'],
    )


def mace_data(frames: list[Atoms], z_table: Any, r_max: float) -> list:
    from mace.data import AtomicData, Configuration

    data = []
    for atoms in frames:
        configuration = Configuration(
            atomic_numbers=atoms.numbers.copy(), positions=atoms.positions.copy(),
            properties={'energy': atoms.get_potential_energy(), 'forces': atoms.get_forces()},
            property_weights={'energy': 1.0, 'forces': 1.0}, cell=atoms.cell.array.copy(),
            pbc=tuple(bool(p) for p in atoms.pbc),
        )  # fmt: skip
        data.append(AtomicData.from_config(configuration, z_table=z_table, cutoff=r_max))
    return data


def mace_loss(model: torch.nn.Module, batch: Any, training: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss, energy errors per atom and force errors of one batch."""
    out = model(batch.to_dict(), training=training, compute_force=True)
    n_atoms = (batch.ptr[1:] - batch.ptr[:-1]).to(out['energy'].dtype)
    e_err = (out['energy'] - batch.energy) / n_atoms
    f_err = out['forces'] - batch.forces
    loss = ENERGY_WEIGHT * torch.mean(e_err**2) + FORCES_WEIGHT * torch.mean(f_err**2)
    return loss, e_err.detach(), f_err.detach()


def train_mace(train: list[Atoms], validation: list[Atoms], args: argparse.Namespace, workdir: Path) -> dict:
    """Build and train a small MACE for ``args.budget_s`` seconds (data preparation included); save the best."""
    from mace import modules, tools
    from mace.tools import torch_geometric

    start = time.perf_counter()
    torch.manual_seed(args.seed)
    with tools.torch_tools.default_dtype(args.mace_dtype):
        z_table = tools.AtomicNumberTable(list(NUMBERS))
        e0 = reference_energies(train)
        train_data = mace_data(train, z_table, args.mace_r_max)
        val_data = mace_data(validation, z_table, args.mace_r_max)
        generator = torch.Generator().manual_seed(args.seed)
        train_loader = torch_geometric.dataloader.DataLoader(
            train_data, batch_size=args.mace_batch_size, shuffle=True, drop_last=False, generator=generator
        )
        stats_loader = torch_geometric.dataloader.DataLoader(train_data, batch_size=50, shuffle=False)
        val_loader = torch_geometric.dataloader.DataLoader(val_data, batch_size=25, shuffle=False)
        avg_num_neighbors = modules.compute_avg_num_neighbors(stats_loader)
        _, rms_forces = modules.scaling_classes['rms_forces_scaling'](stats_loader, e0)
        config = {
            'r_max': args.mace_r_max, 'num_bessel': 8, 'num_polynomial_cutoff': 5, 'max_ell': args.mace_max_ell,
            'interaction': 'RealAgnosticResidualInteractionBlock', 'interaction_first': 'RealAgnosticInteractionBlock',
            'num_interactions': args.mace_num_interactions, 'hidden_irreps': args.mace_hidden_irreps,
            'MLP_irreps': '16x0e', 'atomic_energies': [float(v) for v in e0],
            'avg_num_neighbors': float(avg_num_neighbors), 'atomic_numbers': list(NUMBERS),
            'correlation': args.mace_correlation, 'gate': 'silu', 'radial_MLP': [64, 64, 64],
            'atomic_inter_scale': float(np.asarray(rms_forces).ravel()[0]), 'atomic_inter_shift': 0.0,
        }  # fmt: skip
        model = mace_model(config)
        optimizer = torch.optim.Adam(model.parameters(), lr=args.mace_lr, amsgrad=True)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=10, min_lr=1e-5)
        best, best_epoch, epoch = math.inf, 0, 0
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        best_metrics: dict[str, float] = {}
        while time.perf_counter() - start < args.budget_s:
            model.train()
            for batch in train_loader:
                optimizer.zero_grad(set_to_none=True)
                loss, _, _ = mace_loss(model, batch, training=True)
                loss.backward()
                optimizer.step()
            model.eval()
            e_errs, f_errs = [], []
            for batch in val_loader:
                _, e_err, f_err = mace_loss(model, batch, training=False)
                e_errs.append(e_err)
                f_errs.append(f_err.ravel())
            e_rmse = float(torch.sqrt(torch.mean(torch.cat(e_errs) ** 2)))
            f_rmse = float(torch.sqrt(torch.mean(torch.cat(f_errs) ** 2)))
            val_loss = ENERGY_WEIGHT * e_rmse**2 + FORCES_WEIGHT * f_rmse**2
            scheduler.step(val_loss)
            epoch += 1
            if val_loss < best:
                best, best_epoch = val_loss, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                best_metrics = {'energy_rmse_per_atom': e_rmse, 'forces_rmse': f_rmse}
        wall = time.perf_counter() - start
        path = workdir / 'mace.pt'
        torch.save({'config': config, 'state_dict': best_state, 'dtype': args.mace_dtype}, path)
    return {
        'config': config, 'epochs': epoch, 'best_epoch': best_epoch, 'validation': best_metrics,
        'train_wall_s': wall, 'path': path, 'n_parameters': sum(p.numel() for p in model.parameters()),
    }  # fmt: skip


def load_mace_calculator(path: Path, device: str) -> Any:
    """Rebuild the saved MACE (``weights_only=True``) and wrap it in mace's ASE calculator."""
    from mace import tools
    from mace.calculators import MACECalculator

    payload = torch.load(path, map_location=device, weights_only=True)
    with tools.torch_tools.default_dtype(payload['dtype']):
        model = mace_model(payload['config'])
        model.load_state_dict(payload['state_dict'])
        return MACECalculator(models=[model.to(device)], device=device, default_dtype=payload['dtype'])


def cpu_name() -> str:
    try:
        with open('/proc/cpuinfo') as handle:
            for line in handle:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, 'getloadavg') else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--budget-s', type=float, default=120.0, help='training wall-clock budget of each model (s)')
    parser.add_argument('--n-train', type=int, default=150)
    parser.add_argument('--n-validation', type=int, default=25)
    parser.add_argument('--n-test', type=int, default=50)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--threads', type=int, default=2, help='torch.set_num_threads')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--md-warm-steps', type=int, default=20)
    parser.add_argument('--md-steps', type=int, default=100)
    parser.add_argument('--md-block', type=int, default=10, help='timed MD steps per alternating block')
    parser.add_argument('--ours-dtype', default='float32', choices=['float32', 'float64'])
    parser.add_argument(
        '--ours-jacobian-mb', type=float, default=2048.0,
        help='training.jacobian_memory_mb of ours: memory for descriptors stored once (0: recompute them every step, '
        'the training path before stored descriptors)',
    )  # fmt: skip
    parser.add_argument('--mace-dtype', default='float32', choices=['float32', 'float64'])
    parser.add_argument('--mace-hidden-irreps', default='16x0e')
    parser.add_argument('--mace-r-max', type=float, default=5.0)
    parser.add_argument('--mace-max-ell', type=int, default=2)
    parser.add_argument('--mace-correlation', type=int, default=2)
    parser.add_argument('--mace-num-interactions', type=int, default=2)
    parser.add_argument('--mace-batch-size', type=int, default=5)
    parser.add_argument('--mace-lr', type=float, default=0.01)
    parser.add_argument('--skip', choices=['ours', 'mace'], help='train and run only one contender (for tuning)')
    args = parser.parse_args()

    warnings.filterwarnings('ignore', category=UserWarning)
    torch.set_num_threads(args.threads)
    load_start = loadavg()
    t0 = time.perf_counter()
    frames = dataset(args.n_train + args.n_validation + args.n_test, seed=args.seed)
    train = frames[: args.n_train]
    validation = frames[args.n_train : args.n_train + args.n_validation]
    test = frames[args.n_train + args.n_validation :]
    label_s = time.perf_counter() - t0
    n_atoms = sum(len(a) for a in frames)
    force_rms = float(np.sqrt(np.mean(np.concatenate([a.get_forces().ravel() for a in frames]) ** 2)))
    print(
        f'data: {len(train)}/{len(validation)}/{len(test)} train/validation/test, {n_atoms} atoms, '
        f'label force RMS {force_rms:.3f} eV/Å, labelled in {label_s:.1f} s',
        flush=True,
    )
    results: dict[str, dict] = {}
    calculators: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix='mlmat-bench-training-') as directory:
        workdir = Path(directory)
        if args.skip != 'ours':
            from aiida_mlmat.ml.calculator import MLMatCalculator

            dtype = torch.float32 if args.ours_dtype == 'float32' else torch.float64
            trained = train_ours(train, validation, args, workdir / 'ours')
            summary = trained['summary']
            print(
                f'ours: {summary["epochs"]} epochs in {trained["train_wall_s"]:.1f} s ({summary["stopped"]}), '
                f'validation {summary["validation"]}',
                flush=True,
            )
            calculator = MLMatCalculator.from_files([trained['path']], device=args.device, dtype=dtype)
            figures = test_errors(calculator, test)
            print(f'ours: test {figures}', flush=True)
            calculators['ours'] = calculator
            results['ours'] = {
                **figures, 'epochs': summary['epochs'], 'best_epoch': summary['best_epoch'], 'dtype': args.ours_dtype,
                'descriptors_precomputed': summary['descriptors_precomputed'],
                'train_wall_s': trained['train_wall_s'], 'validation': summary['validation'],
                'config': trained['model_config'],
                'n_parameters': sum(p.numel() for p in calculator.models[0].parameters()),
                'md_step_breakdown_s': ours_step_breakdown(trained['path'], dtype, args.device),
            }  # fmt: skip
            print(f'ours: MD force call {results["ours"]["md_step_breakdown_s"]}', flush=True)
        load_middle = loadavg()
        if args.skip != 'mace':
            trained = train_mace(train, validation, args, workdir)
            print(
                f'mace: {trained["epochs"]} epochs in {trained["train_wall_s"]:.1f} s, '
                f'{trained["n_parameters"]} parameters, validation {trained["validation"]}',
                flush=True,
            )
            calculator = load_mace_calculator(trained['path'], args.device)
            figures = test_errors(calculator, test)
            print(f'mace: test {figures}', flush=True)
            calculators['mace'] = calculator
            config = {k: v for k, v in trained['config'].items() if k not in ('atomic_energies',)}
            results['mace'] = {
                **figures, 'epochs': trained['epochs'], 'best_epoch': trained['best_epoch'], 'dtype': args.mace_dtype,
                'train_wall_s': trained['train_wall_s'], 'validation': trained['validation'], 'config': config,
                'n_parameters': trained['n_parameters'], 'batch_size': args.mace_batch_size, 'lr': args.mace_lr,
            }  # fmt: skip
        load_md = loadavg()
        for name, figures in md_speed(calculators, args.md_warm_steps, args.md_steps, args.md_block).items():
            results[name].update(figures)
            print(
                f'{name}: MD {figures["md_atom_steps_per_s"]:.0f} atom-steps/s (median of blocks), '
                f'{figures["md_atom_steps_per_s_mean"]:.0f} (mean)',
                flush=True,
            )

    ratios, targets = {}, {'force_rmse_mace_over_ours': 1.0, 'md_speed_ours_over_mace': 3.0}
    if 'ours' in results and 'mace' in results:
        ours, mace = results['ours'], results['mace']
        ratios = {
            'force_rmse_mace_over_ours': mace['test_forces_rmse'] / ours['test_forces_rmse'],
            'md_speed_ours_over_mace': ours['md_atom_steps_per_s'] / mace['md_atom_steps_per_s'],
            'energy_rmse_mace_over_ours': mace['test_energy_rmse_per_atom'] / ours['test_energy_rmse_per_atom'],
        }
    import ase
    import mace as mace_package

    report = {
        'benchmark': 'training',
        'budget_s': args.budget_s,
        'n_train': len(train),
        'n_validation': len(validation),
        'n_test': len(test),
        'label_force_rms': force_rms,
        'loss': {'energy_per_atom_weight': ENERGY_WEIGHT, 'forces_weight': FORCES_WEIGHT},
        'md': {
            'atoms': 256, 'warm_steps': args.md_warm_steps, 'steps': args.md_steps, 'block': args.md_block,
            'timestep_fs': 2.0,
        },
        **results,
        'ratios': ratios,
        'targets': targets,
        'met': {key: ratios[key] >= value for key, value in targets.items() if key in ratios},
        'machine': {
            'cores': os.cpu_count(), 'threads': args.threads, 'device': args.device,
            'cpu': cpu_name(), 'python': platform.python_version(),
            'torch': torch.__version__, 'mace': mace_package.__version__, 'ase': ase.__version__,
            'loadavg_start': load_start, 'loadavg_after_ours': load_middle, 'loadavg_before_md': load_md,
            'loadavg_end': loadavg(),
        },
    }  # fmt: skip
    print(json.dumps(report))


if __name__ == '__main__':
    main()
