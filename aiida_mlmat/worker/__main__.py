"""Entry point of the remote worker: ``mlmat-worker TASK input.json`` (or ``python -m aiida_mlmat.worker``).

Writes ``results.json`` beside the input in every case: ``status`` is ``ok``, ``incomplete`` (soft time limit
reached; recoverable; with ``error: {code: "WALLTIME", message}``) or ``error`` with ``error: {code, message}``.
Exit status: 0 ok, 2 incomplete, 1 error.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from aiida_mlmat.common.constants import RESULTS_JSON
from aiida_mlmat.worker.errors import ErrorCode, WorkerError
from aiida_mlmat.worker.schema import SCHEMA_VERSION, SCHEMAS, validate_input

#: Modules whose version goes into ``results.json`` when the task imported them (a DFT code, torch).
RECORDED_MODULES = ('gpaw', 'torch', 'pymatgen')


def _versions() -> dict[str, str]:
    import ase
    import numpy

    from aiida_mlmat import __version__

    versions = {
        'aiida_mlmat': __version__,
        'ase': ase.__version__,
        'numpy': numpy.__version__,
        'python': platform.python_version(),
    }
    for name in RECORDED_MODULES:  # the code that computed the results, where the task imported it
        module = sys.modules.get(name)
        if module is not None and isinstance(getattr(module, '__version__', None), str):
            versions[name] = module.__version__
    return versions


#: The variables that fix the threads of a job's numerical libraries (torch's OpenMP pool and MKL, used by torch's
#: sparse products); the worker sets them where the job's environment sets neither.
THREAD_VARIABLES = ('OMP_NUM_THREADS', 'MKL_NUM_THREADS')


def configure_threads(environ: Any = os.environ) -> int | None:
    """Give the job's numerical libraries as many threads as the job has cores: SLURM's ``SLURM_CPUS_PER_TASK``
    (``--cpus-per-task``) where set, else one. Set before torch is imported; a job whose environment sets
    ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` (a Code's prepend text, ``metadata.options.environment_variables``)
    keeps them.

    Why one on a machine shared by other jobs: the worker's tensors are small (a few to a few hundred atoms per MD
    step or relaxation step), and a thread pool that spins while another job holds the other cores costs more than
    it gains. The main job's exploration MD took 74 s with torch's default of every core against 22 s with one,
    its relaxation 159 s against 23 s, its training 9 s against 7 s (2 cores, beside another job); a daemon runs
    ensemble members and labelling chunks side by side, which keeps every core busy anyway.

    :return: the threads set, or None where the environment had set them.
    """
    if any(environ.get(name) for name in THREAD_VARIABLES):
        return None
    cpus = environ.get('SLURM_CPUS_PER_TASK', '')
    threads = int(cpus) if cpus.isdigit() and int(cpus) > 0 else 1
    for name in THREAD_VARIABLES:
        environ[name] = str(threads)
    return threads


def _threads() -> int | None:
    """The threads torch computes with, where the task imported torch (``results.json`` records it)."""
    torch = sys.modules.get('torch')
    return int(torch.get_num_threads()) if torch is not None else None


def _tasks() -> dict[str, Any]:
    from aiida_mlmat.worker.tasks import descriptors, label, relax, sample, train

    return {
        'label': label.run,
        'sample': sample.run,
        'descriptors': descriptors.run,
        'train': train.run,
        'relax': relax.run,
    }


def execute(task: str, input_path: Path) -> tuple[dict[str, Any], int]:
    """Run one task on an input file and return the results dictionary and the exit status."""
    workdir = input_path.parent
    started = time.time()
    try:
        if task not in SCHEMAS:
            raise WorkerError(ErrorCode.INVALID_INPUT, f'unknown task `{task}`; known: {", ".join(sorted(SCHEMAS))}')
        try:
            params = json.loads(input_path.read_text())
        except FileNotFoundError as exc:
            raise WorkerError(ErrorCode.MISSING_FILE, f'input file `{input_path.name}` is missing') from exc
        except json.JSONDecodeError as exc:
            raise WorkerError(ErrorCode.CORRUPT_FILE, f'`{input_path.name}` is not valid JSON: {exc}') from exc
        try:
            validate_input(task, params)
        except ValueError as exc:
            raise WorkerError(ErrorCode.INVALID_INPUT, str(exc)) from exc
        results = _tasks()[task](params, workdir)
    except WorkerError as exc:
        results = {'status': 'error', 'error': {'code': exc.code.value, 'message': exc.message}}
    except Exception as exc:
        results = {
            'status': 'error',
            'error': {'code': ErrorCode.UNEXPECTED.value, 'message': f'{type(exc).__name__}: {exc}'},
            'traceback': traceback.format_exc(),
        }
    results.update({'schema_version': SCHEMA_VERSION, 'task': task, 'started': started, 'versions': _versions()})
    threads = _threads()
    if threads is not None:
        results['threads'] = threads
    status = {'ok': 0, 'incomplete': 2}.get(results['status'], 1)
    return results, status


def main(argv: list[str] | None = None) -> int:
    """Parse ``TASK input.json``, run, write ``results.json`` and return the exit status."""
    from_command_line = argv is None
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print('usage: mlmat-worker TASK input.json   (tasks: ' + ', '.join(sorted(SCHEMAS)) + ')', file=sys.stderr)
        return 64
    task, input_file = argv
    if from_command_line:  # a program of its own: its threads are its to set (a caller's process keeps its own)
        configure_threads()
    input_path = Path(input_file).resolve()
    results, status = execute(task, input_path)
    (input_path.parent / RESULTS_JSON).write_text(json.dumps(results, indent=1, default=float))
    if status == 1:
        print(f'mlmat-worker: {results["error"]["code"]}: {results["error"]["message"]}', file=sys.stderr)
    return status


if __name__ == '__main__':
    sys.exit(main())
