"""Training loop of aiida-mlmat potentials (imports no aiida).

loss = w_E MSE(E/atom) + w_F MSE(F) + w_S MSE(S); AdamW; learning rate reduced on plateau; early stopping on the
validation split; a fixed, recorded seed (two CPU runs with one seed give identical weights); checkpoints written
atomically (temporary file, then os.replace, keeping the previous one); a soft time limit after which it saves and
returns; resume from a checkpoint, refused when the hyperparameters or the data differ; a warm start from the
weights of a previous model of the same architecture, species and descriptor (active learning), with the per-element
reference energies refit on the new data.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms

from aiida_mlmat.common.constants import DEFAULT_BATCH_SIZE, DEFAULT_JACOBIAN_MEMORY_MB
from aiida_mlmat.ml import keys
from aiida_mlmat.ml.descriptors import UnknownSpeciesError
from aiida_mlmat.ml.model import EdgeJacobian, build_model, edge_jacobian, save_model
from aiida_mlmat.ml.neighbours import Graph, build_graph

CHECKPOINT = 'checkpoint.pt'
MODEL = 'model.pt'


class TrainingError(Exception):
    """A failure of training with a machine-readable code (mapped to exit codes by the CalcJob's parser)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class TrainingConfig:
    """Hyperparameters of the loop (energies eV, forces eV/Å, stress eV/Å^3; times in s)."""

    epochs: int = 200
    batch_size: int = DEFAULT_BATCH_SIZE
    learning_rate: float = 3e-3
    weight_decay: float = 1e-6
    energy_weight: float = 1.0
    forces_weight: float = 10.0
    stress_weight: float = 0.0
    patience: int = 40
    lr_patience: int = 10
    lr_factor: float = 0.5
    min_learning_rate: float = 1e-5
    seed: int = 0
    dtype: str = 'float64'
    device: str = 'cpu'
    amp: bool = False
    checkpoint_every_epochs: int = 10
    checkpoint_every_seconds: float = 300.0
    max_seconds: float | None = None
    lr_scale: float = 1.0
    #: Memory (MiB) that descriptors and their derivatives, computed once before the first epoch, may take; every
    #: step then runs the network only (:meth:`aiida_mlmat.ml.model.AtomicNNPotential.forward_precomputed`, same
    #: numbers). Over it, or at 0, descriptors are recomputed at every step.
    jacobian_memory_mb: float = DEFAULT_JACOBIAN_MEMORY_MB
    extra: dict[str, Any] = field(default_factory=dict)

    #: Keys that change how long or where training runs, not what it computes: excluded from the resume check.
    #: ``lr_scale`` multiplies the learning rate on resume (what a restart after a NaN loss sets).
    RUNTIME_KEYS = (
        'epochs',
        'max_seconds',
        'checkpoint_every_epochs',
        'checkpoint_every_seconds',
        'device',
        'extra',
        'lr_scale',
        'jacobian_memory_mb',
    )

    def fingerprint(self, model_config: dict[str, Any]) -> str:
        """sha256 of everything that must match for a resume to be valid."""
        data = {k: v for k, v in asdict(self).items() if k not in self.RUNTIME_KEYS}
        return hashlib.sha256(json.dumps({'model': model_config, 'train': data}, sort_keys=True).encode()).hexdigest()


def data_fingerprint(frames: Sequence[Atoms]) -> str:
    """sha256 over species, positions, cells and labels of a list of configurations."""
    digest = hashlib.sha256()
    for atoms in frames:
        digest.update(atoms.numbers.tobytes())
        digest.update(np.ascontiguousarray(atoms.positions).tobytes())
        digest.update(np.ascontiguousarray(atoms.cell.array).tobytes())
        for key in (keys.ENERGY, keys.FORCES, keys.STRESS):
            value = atoms.calc.results.get(key) if atoms.calc is not None else None
            if value is not None:
                digest.update(np.asarray(value, dtype=float).tobytes())
    return digest.hexdigest()


@dataclass
class Batch:
    """A batch of configurations as one graph with its labels."""

    graph: Graph
    energy: torch.Tensor
    n_atoms: torch.Tensor
    forces: torch.Tensor | None
    stress: torch.Tensor | None
    #: descriptors and their derivatives, when computed once (:func:`precompute_descriptors`)
    jacobian: EdgeJacobian | None = None


def predict(model: torch.nn.Module, batch: Batch, forces: bool, stress: bool, training: bool) -> dict[str, Any]:
    """The model's energies, forces and stress on a batch: from its stored descriptors when it has them."""
    if batch.jacobian is not None:
        return model.forward_precomputed(batch.graph, batch.jacobian, forces=forces, stress=stress, training=training)
    return model(batch.graph, forces=forces, stress=stress, training=training)


def training_features(model: torch.nn.Module, batches: Sequence[Batch]) -> torch.Tensor:
    """Raw descriptors (n_atoms, n_features) of all batches in float64, the stored ones where there are."""
    with torch.no_grad():
        blocks = [
            batch.jacobian.features if batch.jacobian is not None else model.descriptor(batch.graph)
            for batch in batches
        ]
    return torch.cat(blocks).to(torch.float64)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a failed allocation: CUDA's ``torch.OutOfMemoryError``, the CPU allocator's
    ``RuntimeError`` (``DefaultCPUAllocator: can't allocate memory``, e.g. under a job's memory limit) or a
    ``MemoryError`` from Python or numpy.
    """
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


def release_memory(device: str | torch.device) -> None:
    """Give cached device memory back after a failed allocation (CUDA keeps freed blocks cached)."""
    if torch.device(device).type == 'cuda':
        torch.cuda.empty_cache()


def precompute_descriptors(model: torch.nn.Module, batches: Sequence[Batch], memory_mb: float) -> str:
    """Store the batches' descriptors and their edge derivatives when the model can use them, as many batches as
    fit in ``memory_mb`` (in order; a batch that does not fit is skipped, a smaller one after it may still fit).

    A batch with stored derivatives trains from them, the others recompute their descriptors at every step: the
    same numbers either way, the stored ones 5-7 times faster. When the device runs out of memory while they are
    computed, what was stored is dropped and every batch recomputes.

    :param memory_mb: the most memory (MiB) the derivatives may take, all batches together.
    :return: ``stored`` (every batch), ``partial`` (some: the budget holds no more), or why none were:
        ``unsupported`` (the model cannot use them), ``disabled`` (a budget of 0 or no batches), ``over_budget``
        (no batch fits), ``out_of_memory``.
    """
    if not hasattr(model, 'forward_precomputed'):
        return 'unsupported'
    if memory_mb <= 0 or not batches:
        return 'disabled'
    dtype = batches[0].graph.positions.dtype
    budget, used, stored = memory_mb * 2**20, 0, 0
    try:
        for batch in batches:
            size = EdgeJacobian.nbytes(len(batch.graph.centre), model.spec.n_features, dtype)
            if used + size > budget:
                continue
            batch.jacobian = edge_jacobian(model.descriptor, batch.graph)
            used, stored = used + size, stored + 1
    except (RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
    else:
        return 'stored' if stored == len(batches) else 'partial' if stored else 'over_budget'
    # outside the except clause: its traceback no longer holds the partial results
    for batch in batches:
        batch.jacobian = None
    release_memory(batches[0].graph.positions.device)
    return 'out_of_memory'


def make_batches(
    frames: Sequence[Atoms], cutoff: float, batch_size: int, dtype: torch.dtype, device: str, need_forces: bool,
    need_stress: bool,
) -> list[Batch]:  # fmt: skip
    """Graphs and labels of consecutive groups of ``batch_size`` configurations."""
    batches = []
    for start in range(0, len(frames), batch_size):
        group = frames[start : start + batch_size]
        graph = build_graph(group, cutoff, dtype=dtype, device=device)
        energy = torch.tensor([a.calc.results['energy'] for a in group], dtype=dtype, device=device)
        n_atoms = torch.tensor([len(a) for a in group], dtype=dtype, device=device)
        forces = stress = None
        if need_forces:
            forces = torch.tensor(np.concatenate([a.calc.results['forces'] for a in group]), dtype=dtype, device=device)
        if need_stress:
            stress = torch.tensor(np.stack([a.calc.results['stress'] for a in group]), dtype=dtype, device=device)
        batches.append(Batch(graph, energy, n_atoms, forces, stress))
    return batches


def weighted_labels(settings: TrainingConfig | Mapping[str, Any]) -> list[str]:
    """The labels a loss with ``settings`` needs on every configuration.

    :param settings: a :class:`TrainingConfig` or a mapping of training settings; a weight not given takes
        :class:`TrainingConfig`'s default (``forces_weight`` 10, ``stress_weight`` 0).
    :return: ``energy``, then ``forces`` and ``stress`` where their weight is above 0.
    """

    def weight(key: str) -> float:
        value = getattr(settings, key) if isinstance(settings, TrainingConfig) else settings.get(key)
        return float(getattr(TrainingConfig, key) if value is None else value)

    return ['energy'] + [label for label in ('forces', 'stress') if weight(f'{label}_weight') > 0]


def check_split_labels(frames: Sequence[Atoms], config: TrainingConfig, name: str) -> None:
    """Refuse data that lack the labels the loss weights."""
    if not frames:
        raise TrainingError('EMPTY_SPLIT', f'the {name} split is empty')
    needed = weighted_labels(config)
    for index, atoms in enumerate(frames):
        results = atoms.calc.results if atoms.calc is not None else {}
        missing = [key for key in needed if key not in results]
        if missing:
            raise TrainingError(
                'MISSING_LABELS',
                f'{name} configuration {index} has no {", ".join(missing)} but the loss weights them '
                '(set the weight to 0 or label the data)',
            )


def fit_reference_energies(frames: Sequence[Atoms], species: list[str]) -> np.ndarray:
    """Per-element energies (eV) that best explain total energies from composition alone (least squares)."""
    counts = np.array([[atoms.get_chemical_symbols().count(s) for s in species] for atoms in frames], dtype=float)
    energies = np.array([atoms.calc.results['energy'] for atoms in frames])
    solution, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return solution


#: Model config keys that must be equal for a warm start from a previous model.
WARM_START_KEYS = ('architecture', 'species', 'descriptor', 'hidden', 'activation')


def warm_start_mismatch(previous: dict[str, Any], new: dict[str, Any]) -> str | None:
    """Return why a model of config ``previous`` cannot initialise one of config ``new`` (None when it can).

    Architecture, species, descriptor (kind, cutoff Å, sizes) and network widths must be equal.
    """
    from aiida_mlmat.ml.descriptors import sorted_species

    def normalised(config: dict[str, Any]) -> dict[str, Any]:
        out = {key: config.get(key) for key in WARM_START_KEYS}
        out['architecture'] = out['architecture'] or 'ann'
        out['activation'] = out['activation'] or 'silu'
        out['species'] = sorted_species(list(out['species'] or []))
        descriptor = dict(out['descriptor'] or {})
        descriptor['species'] = sorted_species(list(descriptor.get('species') or out['species']))
        out['descriptor'] = descriptor
        out['hidden'] = list(out['hidden'] or [64, 64])
        return out

    old, now = normalised(previous), normalised(new)
    differences = [
        f'{key} {old[key]} (previous) != {now[key]} (new)' for key in WARM_START_KEYS if old[key] != now[key]
    ]
    if differences:
        return 'the initial model does not match the model to train: ' + '; '.join(differences)
    return None


def load_initial_weights(model: torch.nn.Module, path: str | Path, model_config: dict[str, Any], device: str) -> None:
    """Load the weights of a previous model (``weights_only=True``) into ``model`` after checking they fit.

    :raises TrainingError: code RESUME_MISMATCH when the file is not a potential or its config does not match.
    """
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        raise TrainingError('RESUME_MISMATCH', f'the initial model {Path(path).name} cannot be read: {exc}') from exc
    if not isinstance(payload, dict) or payload.get('format') != 'aiida-mlmat-potential/1':
        raise TrainingError('RESUME_MISMATCH', f'{Path(path).name} is not an aiida-mlmat potential file')
    mismatch = warm_start_mismatch(payload.get('config', {}), model_config)
    if mismatch:
        raise TrainingError('RESUME_MISMATCH', mismatch)
    model.load_state_dict(payload['state_dict'])


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and standard deviation (at least 1e-6) of the training atoms' features, to normalise them by.

    A training split of a single atom (one one-atom cell) has no spread: its standard deviation is taken as 1
    (the sample standard deviation of one value is NaN, and every loss would be NaN from the first epoch).
    """
    mean = features.mean(dim=0)
    if features.shape[0] < 2:
        return mean, torch.ones_like(mean)
    return mean, features.std(dim=0).clamp(min=1e-6)


def renormalise_features(model: torch.nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Move a model's feature normalisation to new statistics without changing the function it computes.

    Each element network sees ``(D - mu) / sigma``; its first linear layer ``W x + b`` becomes
    ``W' x' + b'`` with ``W' = W sigma' / sigma`` (per feature) and ``b' = b + W (mu' - mu) / sigma``, so a warm-started
    model keeps its predictions while the normalisation suits the (broader) new data.
    """
    old_mean, old_std = model.feature_mean.clone(), model.feature_std.clone()
    for network in model.networks:
        first = network[0]
        weight = first.weight.detach().to(torch.float64)
        bias = first.bias.detach().to(torch.float64)
        new_bias = bias + weight @ ((mean - old_mean) / old_std)
        first.weight.copy_((weight * (std / old_std)[None, :]).to(first.weight.dtype))
        first.bias.copy_(new_bias.to(first.bias.dtype))
    model.feature_mean.copy_(mean)
    model.feature_std.copy_(std)


def refit_reference_energies(model: torch.nn.Module, batches: Sequence[Batch], frames: Sequence[Atoms]) -> np.ndarray:
    """Per-element energies (eV) that, added to the network's present output, best fit the total energies.

    Least squares of ``E - E_network`` on composition, where ``E_network`` is the model energy without its
    reference energies: a warm-started model keeps its network and gets the constants that suit the new data.
    """
    counts = np.array([[atoms.get_chemical_symbols().count(s) for s in model.species] for atoms in frames], float)
    with torch.no_grad():
        predicted = torch.cat([model(batch.graph, forces=False)[keys.ENERGY] for batch in batches])
    network = predicted.detach().cpu().double().numpy() - counts @ model.reference_energies.cpu().numpy()
    energies = np.array([atoms.calc.results['energy'] for atoms in frames])
    solution, *_ = np.linalg.lstsq(counts, energies - network, rcond=None)
    return solution


def errors(model: torch.nn.Module, batches: Sequence[Batch], stress: bool = False) -> dict[str, float]:
    """Energy (per atom), force and stress MAE and RMSE of a model on batches (eV/atom, eV/Å, eV/Å^3)."""
    e_err, f_err, s_err = [], [], []
    for batch in batches:
        out = predict(model, batch, batch.forces is not None, stress and batch.stress is not None, training=False)
        e_err.append(((out[keys.ENERGY] - batch.energy) / batch.n_atoms).detach().cpu().numpy())
        if batch.forces is not None:
            f_err.append((out[keys.FORCES] - batch.forces).detach().cpu().numpy().ravel())
        if stress and batch.stress is not None:
            s_err.append((out[keys.STRESS] - batch.stress).detach().cpu().numpy().ravel())
        batch.graph.positions.requires_grad_(False)
    metrics = {}
    for name, values in (('energy', e_err), ('forces', f_err), ('stress', s_err)):
        if values:
            array = np.concatenate(values)
            suffix = '_per_atom' if name == 'energy' else ''
            metrics[f'{name}_mae{suffix}'] = float(np.abs(array).mean())
            metrics[f'{name}_rmse{suffix}'] = float(np.sqrt((array**2).mean()))
    return metrics


#: Checkpoint format. 2: the validation loss has the stress term when stress is weighted (1 left it out).
CHECKPOINT_FORMAT = 'aiida-mlmat-checkpoint/2'


def validation_loss(metrics: dict[str, float], config: TrainingConfig) -> float:
    """The training loss's terms on the validation split (what picks the best model and stops early)."""
    return (
        config.energy_weight * metrics['energy_rmse_per_atom'] ** 2
        + config.forces_weight * metrics.get('forces_rmse', 0.0) ** 2
        + config.stress_weight * metrics.get('stress_rmse', 0.0) ** 2
    )


def _atomic_save(payload: dict[str, Any], path: Path) -> None:
    """Write with os.replace so that a kill at any instant leaves the previous file or the new one, whole."""
    temporary = path.with_suffix(path.suffix + '.tmp')
    torch.save(payload, temporary)
    if path.exists():
        shutil.copyfile(path, path.with_suffix(path.suffix + '.prev'))
    os.replace(temporary, path)


def train(
    model_config: dict[str, Any],
    train_frames: Sequence[Atoms],
    validation_frames: Sequence[Atoms],
    config: TrainingConfig,
    workdir: str | Path,
    resume_from: str | Path | None = None,
    log: Any = None,
    init_from: str | Path | None = None,
) -> dict[str, Any]:
    """Train a potential and return a summary; writes ``model.pt`` (best on validation) and ``checkpoint.pt``.

    :param resume_from: a checkpoint of an interrupted run of the same training (takes precedence over
        ``init_from``, whose weights the checkpoint already holds).
    :param init_from: a model file (:func:`aiida_mlmat.ml.model.save_model`) of the same architecture, species and
        descriptor to start from (warm start): its network is kept, its feature normalisation moves to the new
        training data without changing its predictions (:func:`renormalise_features`), and the per-element
        reference energies are refit on the new training data (:func:`refit_reference_energies`).
    :raises TrainingError: codes EMPTY_SPLIT, MISSING_LABELS, UNKNOWN_SPECIES, RESUME_MISMATCH, NAN_LOSS.
    """
    start = time.monotonic()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    check_split_labels(train_frames, config, 'training')
    check_split_labels(validation_frames, config, 'validation')
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    dtype = torch.float32 if config.dtype == 'float32' else torch.float64
    device = config.device
    model = build_model(model_config).to(device=device, dtype=dtype)
    model.reference_energies = model.reference_energies.to(torch.float64)
    model.feature_mean = model.feature_mean.to(torch.float64)
    model.feature_std = model.feature_std.to(torch.float64)
    try:
        model.spec.check_species(list(train_frames) + list(validation_frames))
    except UnknownSpeciesError as exc:
        raise TrainingError('UNKNOWN_SPECIES', str(exc)) from exc
    need_forces, need_stress = config.forces_weight > 0, config.stress_weight > 0
    train_batches = make_batches(train_frames, model.cutoff, config.batch_size, dtype, device, need_forces, need_stress)
    val_batches = make_batches(
        validation_frames, model.cutoff, config.batch_size, dtype, device, need_forces, need_stress
    )
    storage = precompute_descriptors(model, [*train_batches, *val_batches], config.jacobian_memory_mb)
    hyper = config.fingerprint(model_config)
    data = data_fingerprint(list(train_frames) + list(validation_frames))

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=config.lr_factor, patience=config.lr_patience, min_lr=config.min_learning_rate
    )
    state = {'epoch': 0, 'best': math.inf, 'best_epoch': 0, 'curve': [], 'elapsed': 0.0}
    if resume_from is not None:
        try:  # weights_only: a checkpoint holding pickled code is refused, never run
            checkpoint = torch.load(resume_from, map_location=device, weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
            message = str(exc).splitlines()[0][:200]
            raise TrainingError('CORRUPT_FILE', f'the checkpoint cannot be loaded safely: {message}') from exc
        if not isinstance(checkpoint, dict):
            raise TrainingError('CORRUPT_FILE', 'the checkpoint cannot be loaded safely: not a checkpoint dictionary')
        if checkpoint.get('hyperparameters') != hyper:
            raise TrainingError('RESUME_MISMATCH', 'the checkpoint was made with other hyperparameters or model')
        if checkpoint.get('data') != data:
            raise TrainingError('RESUME_MISMATCH', 'the checkpoint was made on another data set')
        model.load_state_dict(checkpoint['model'])
        optimizer.load_state_dict(checkpoint['optimizer'])
        scheduler.load_state_dict(checkpoint['scheduler'])
        torch.set_rng_state(checkpoint['rng'])
        state = checkpoint['state']
        if config.lr_scale != 1.0:
            for group in optimizer.param_groups:
                group['lr'] *= config.lr_scale
        best_state = checkpoint['best_model']
        if checkpoint.get('format') != CHECKPOINT_FORMAT and need_stress:
            # an older checkpoint's best validation loss left the stress term out: measure its best model again, so
            # that the new epochs (which include it) are compared like for like
            current = {k: v.detach().clone() for k, v in model.state_dict().items()}
            model.load_state_dict(best_state)
            model.train(False)
            state['best'] = validation_loss(errors(model, val_batches, stress=True), config)
            model.load_state_dict(current)
            scheduler.best = state['best']  # the epochs since the best model still count towards a cut
    elif init_from is not None:
        load_initial_weights(model, init_from, model_config, device)
        with torch.no_grad():
            features = training_features(model, train_batches)
            renormalise_features(model, *feature_statistics(features))
            model.reference_energies.copy_(torch.tensor(refit_reference_energies(model, train_batches, train_frames)))
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    else:
        with torch.no_grad():
            features = training_features(model, train_batches)
            mean, std = feature_statistics(features)
            model.feature_mean.copy_(mean)
            model.feature_std.copy_(std)
            model.reference_energies.copy_(torch.tensor(fit_reference_energies(train_frames, model.species)))
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def save_checkpoint() -> None:
        _atomic_save(
            {
                'format': CHECKPOINT_FORMAT,
                'model': model.state_dict(),
                'optimizer': optimizer.state_dict(),
                'scheduler': scheduler.state_dict(),
                'rng': torch.get_rng_state(),
                'state': state,
                'best_model': best_state,
                'hyperparameters': hyper,
                'data': data,
                'model_config': model_config,
            },
            workdir / CHECKPOINT,
        )

    last_checkpoint = time.monotonic()
    generator = torch.Generator().manual_seed(config.seed)
    stopped = 'epochs'
    autocast = config.amp and str(device).startswith('cuda')
    first_epoch = state['epoch']
    while state['epoch'] < config.epochs:
        progressed = state['epoch'] > first_epoch  # every run trains at least one epoch before honouring the limit
        if config.max_seconds is not None and progressed and time.monotonic() - start > config.max_seconds:
            stopped = 'time_limit'
            break
        if state['epoch'] - state['best_epoch'] > config.patience:
            stopped = 'early_stopping'
            break
        generator.manual_seed(config.seed + state['epoch'])
        order = torch.randperm(len(train_batches), generator=generator).tolist()
        train_loss = 0.0
        model.train()
        for index in order:
            batch = train_batches[index]
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast('cuda', enabled=autocast):
                out = predict(model, batch, need_forces, need_stress, training=True)
            loss = config.energy_weight * torch.mean(((out[keys.ENERGY] - batch.energy) / batch.n_atoms) ** 2)
            if need_forces:
                loss = loss + config.forces_weight * torch.mean((out[keys.FORCES] - batch.forces) ** 2)
            if need_stress:
                loss = loss + config.stress_weight * torch.mean((out[keys.STRESS] - batch.stress) ** 2)
            if not torch.isfinite(loss):
                save_checkpoint()
                raise TrainingError('NAN_LOSS', f'non-finite loss at epoch {state["epoch"]}; lower the learning rate')
            loss.backward()
            optimizer.step()
            batch.graph.positions.requires_grad_(False)
            train_loss += float(loss.detach()) / len(order)
        model.train(False)  # inference mode
        metrics = errors(model, val_batches, stress=need_stress)
        val_loss = validation_loss(metrics, config)
        scheduler.step(val_loss)
        state['epoch'] += 1
        state['curve'].append(
            {'epoch': state['epoch'], 'train_loss': train_loss, 'validation_loss': val_loss,
             'learning_rate': optimizer.param_groups[0]['lr'], **metrics}
        )  # fmt: skip
        if val_loss < state['best']:
            state['best'], state['best_epoch'] = val_loss, state['epoch']
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if log is not None:
            log(state['curve'][-1])
        due_epochs = state['epoch'] % config.checkpoint_every_epochs == 0
        if due_epochs or time.monotonic() - last_checkpoint > config.checkpoint_every_seconds:
            save_checkpoint()
            last_checkpoint = time.monotonic()
    state['elapsed'] += time.monotonic() - start
    save_checkpoint()
    model.load_state_dict(best_state)
    save_model(model, str(workdir / MODEL))
    return {
        'stopped': stopped,
        'epochs': state['epoch'],
        'best_epoch': state['best_epoch'],
        'validation': errors(model, val_batches, stress=need_stress),
        'learning_curve': state['curve'],
        'hyperparameters_sha256': hyper,
        'data_sha256': data,
        'seconds': state['elapsed'],
        'warm_start': init_from is not None and resume_from is None,
        'descriptors_precomputed': storage == 'stored',
        'descriptors_storage': storage,
        'descriptors_stored_batches': [
            sum(batch.jacobian is not None for batch in train_batches + val_batches),
            len(train_batches) + len(val_batches),
        ],
    }
