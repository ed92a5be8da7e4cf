"""Task ``train``: train one potential (one ensemble member) on extxyz splits, CPU or CUDA.

Writes ``model.pt`` (state dict + config, best on validation), ``checkpoint.pt`` (to resume) and, in
``results.json``, the validation metrics, the learning curve, why it stopped and the sha256 of ``model.pt``.
A run stopped by the soft time limit before its epochs are done reports ``incomplete`` (recoverable: resume).
With ``init_model`` (a member file of a previous potential in ``potential/``) training starts from its weights.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from aiida_mlmat.worker.errors import ErrorCode, WorkerError
from aiida_mlmat.worker.tasks import read_input_frames


def epoch_line(row: dict[str, Any]) -> None:
    """One line per epoch on stdout (the job's ``worker.out``, flushed): a long training shows how far it is."""
    forces = row.get('forces_rmse')
    text = f'epoch {row["epoch"]}: train loss {row["train_loss"]:.5g}, validation loss {row["validation_loss"]:.5g}'
    text += f', validation force RMSE {forces:.4f} eV/Å' if isinstance(forces, float) else ''
    print(f'{text}, learning rate {row["learning_rate"]:.3g}', flush=True)


def run(params: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Train; see the module docstring."""
    import torch

    from aiida_mlmat.ml.training import CHECKPOINT, MODEL, TrainingConfig, TrainingError, is_out_of_memory, train
    from aiida_mlmat.worker.tasks.descriptors import resolve_device

    start = time.perf_counter()
    train_frames = read_input_frames(workdir, params['train'])
    validation_frames = read_input_frames(workdir, params['validation'])
    options = dict(params.get('training', {}))
    options['device'] = resolve_device(options.get('device', 'auto'))
    if params.get('max_seconds') is not None:
        options['max_seconds'] = params['max_seconds']
    config = TrainingConfig(**options)
    resume = workdir / params['checkpoint'] if params.get('checkpoint') else None
    if resume is not None and not resume.is_file():
        raise WorkerError(ErrorCode.MISSING_FILE, f'checkpoint `{params["checkpoint"]}` is missing')
    init = workdir / params['init_model'] if params.get('init_model') else None
    if init is not None and not init.is_file():
        raise WorkerError(ErrorCode.MISSING_FILE, f'initial model `{params["init_model"]}` is missing')
    try:
        summary = train(
            params['model'], train_frames, validation_frames, config, workdir, resume_from=resume, init_from=init,
            log=epoch_line,
        )  # fmt: skip
    except TrainingError as exc:
        raise WorkerError(ErrorCode(exc.code), exc.message) from exc
    except (RuntimeError, MemoryError) as exc:  # CUDA's OutOfMemoryError, or the CPU allocator's under a memory limit
        if not is_out_of_memory(exc):
            raise
        raise WorkerError(ErrorCode.OUT_OF_MEMORY, f'out of memory on {options["device"]}: {exc}') from exc
    model_bytes = (workdir / MODEL).read_bytes()
    results: dict[str, Any] = {
        'status': 'ok',
        **summary,
        'device': options['device'],
        'model_file': MODEL,
        'checkpoint_file': CHECKPOINT,
        'model_sha256': hashlib.sha256(model_bytes).hexdigest(),
        'hyperparameters': {k: v for k, v in asdict(config).items() if k not in ('extra', 'max_seconds')},
        'n_train': len(train_frames),
        'n_validation': len(validation_frames),
        'torch': torch.__version__,
        'timings': {'total_s': time.perf_counter() - start},
    }
    if summary['stopped'] == 'time_limit' and summary['epochs'] < config.epochs:
        results['status'] = 'incomplete'
        results['error'] = {
            'code': ErrorCode.WALLTIME.value,
            'message': f'soft time limit reached after {summary["epochs"]} of {config.epochs} epochs; checkpoint saved',
        }
    return results
