#!/usr/bin/env python
"""How many daemon workers and concurrent processes the SQLite profile (``core.sqlite_dos``) takes.

Usage::

    python benchmarks/sqlite_concurrency.py [--workers 1 2 4 8] [--workflows 20] [--timeout 900]

The script makes a throw-away profile with ``verdi presto --use-zeromq`` (SQLite + ZeroMQ, what a laptop user
gets) under a temporary ``AIIDA_PATH``. For each worker count W it restarts the daemon with W workers and
submits ``--workflows`` small ``mlmat.reference`` workchains at once (each: seeds, a sample job, two label jobs
of one configuration through the ``mlmat.label.base`` wrapper, collection: about ten processes and calcfunctions
per workflow, all writing to the one SQLite file). It then counts, for that round:

* processes that finished ok, failed, excepted, or were still not terminated at ``--timeout``;
* ``database is locked`` in the daemon log and in the exceptions of excepted processes.

The last line of stdout is one JSON object (see ``benchmarks/README.md``): ``ratios`` holds, per round, the
fraction of workflows that finished ok with no lock error (target 1.0), and ``limit`` the largest worker count
whose round was clean.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROFILE = 'sqlite-bench'
LOCKED = 'database is locked'


def log(message: str) -> None:
    print(message, flush=True)


def verdi(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``verdi`` next to this Python, with this process's environment (the temporary ``AIIDA_PATH``)."""
    executable = Path(sys.executable).parent / 'verdi'
    command = str(executable) if executable.exists() else shutil.which('verdi') or 'verdi'
    return subprocess.run([command, *args], check=check, capture_output=True, text=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--workers', type=int, nargs='+', default=[1, 2, 4, 8], help='daemon worker counts to try')
    parser.add_argument('--workflows', type=int, default=20, help='workflows submitted at once per round')
    parser.add_argument('--timeout', type=float, default=900.0, help='seconds to wait for one round')
    parser.add_argument('--keep', action='store_true', help='keep the temporary AIIDA_PATH')
    return parser.parse_args(argv)


def setup() -> Any:
    """Create the profile, tune localhost, and return the ``mlmat-worker`` Code."""
    verdi('presto', '--use-zeromq', '--profile-name', PROFILE, '--non-interactive')
    verdi('-p', PROFILE, 'config', 'set', 'daemon.timeout', '60')
    from aiida import load_profile, orm

    load_profile(PROFILE, allow_switch=True)
    computer = orm.load_computer('localhost')
    computer.set_minimum_job_poll_interval(0.5)
    computer.configure(safe_interval=0.0, use_login_shell=False)
    worker = Path(sys.executable).parent / 'mlmat-worker'
    path = str(worker) if worker.exists() else shutil.which('mlmat-worker')
    if not path:
        raise RuntimeError('mlmat-worker is not installed: pip install -e .')
    return orm.InstalledCode(label='mlmat-worker', computer=computer, filepath_executable=path).store()


def builder(code: Any, seed: int) -> Any:
    """A small ``mlmat.reference``: one Cu seed, one rattle, two label jobs of one configuration each."""
    from aiida import orm
    from ase.build import bulk

    from aiida_mlmat.data.configurations import ConfigurationSetData
    from aiida_mlmat.workflows.reference import ReferenceWorkChain

    seeds = ConfigurationSetData([bulk('Cu', 'fcc', a=3.6 + 0.001 * seed, cubic=True)])
    built = ReferenceWorkChain.get_builder_from_protocol(
        code, calculator={'name': 'emt', 'parameters': {}}, structures=seeds, overrides={'chunk_size': 1}
    )
    built.sample.parameters = orm.Dict(
        {'supercell': [1, 1, 1], 'include_seeds': True, 'rattle': {'count': 1, 'stdev': 0.03, 'seed': seed}}
    )
    return built


def run_round(code: Any, workers: int, n_workflows: int, timeout: float) -> dict[str, Any]:
    """Restart the daemon with ``workers`` workers, submit the workflows, wait, and count what happened."""
    from aiida import orm
    from aiida.engine import submit
    from aiida.engine.daemon.client import get_daemon_client

    verdi('-p', PROFILE, 'daemon', 'stop', '--timeout', '60', check=False)
    verdi('-p', PROFILE, 'daemon', 'start', str(workers))
    # The ZeroMQ broker runs inside the daemon's supervisor and restarted with it: a connection this process made
    # in an earlier round points at the old one, and tasks sent through it would never reach a worker.
    from aiida.manage import get_manager

    get_manager().reset_runner()
    get_manager().reset_broker()
    client = get_daemon_client(PROFILE)
    log_file = Path(client.daemon_log_file)
    offset = log_file.stat().st_size if log_file.exists() else 0
    first = orm.QueryBuilder().append(orm.Node, project='id').order_by({orm.Node: {'id': 'desc'}}).first()
    first_pk = int(first[0]) if first else 0

    start = time.perf_counter()
    nodes = []
    submit_errors = 0
    for index in range(n_workflows):
        try:
            nodes.append(submit(builder(code, index)))
        except Exception as exc:  # a lock error while submitting counts too
            submit_errors += 1
            log(f'  submit {index} failed: {type(exc).__name__}: {exc}')
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(node.is_terminated for node in nodes):
        time.sleep(1.0)
    wall = time.perf_counter() - start

    processes = orm.QueryBuilder().append(orm.ProcessNode, filters={'id': {'>': first_pk}}).all(flat=True)
    excepted = [p for p in processes if p.is_excepted]
    locked_exceptions = sum(1 for p in excepted if LOCKED in (p.exception or ''))
    text = log_file.read_text(errors='replace')[offset:] if log_file.exists() else ''
    return {
        'workers': workers,
        'workflows': n_workflows,
        'processes': len(processes),
        'finished_ok': sum(1 for node in nodes if node.is_finished_ok),
        'failed': sum(1 for node in nodes if node.is_finished and not node.is_finished_ok),
        'excepted_workflows': sum(1 for node in nodes if node.is_excepted),
        'excepted_processes': len(excepted),
        'not_terminated': sum(1 for node in nodes if not node.is_terminated),
        'submit_errors': submit_errors,
        'locked_in_log': text.count(LOCKED),
        'locked_in_exceptions': locked_exceptions,
        'wall_s': round(wall, 1),
    }


def exit_on_sigterm() -> None:
    """Turn SIGTERM (``timeout``, ``kill``) into SystemExit, so that ``finally`` stops the daemon and cleans up."""
    import signal

    def handle(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handle)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    tmpdir = tempfile.mkdtemp(prefix='mlmat-sqlite-bench-')
    os.environ['AIIDA_PATH'] = tmpdir
    rounds: list[dict[str, Any]] = []
    try:
        code = setup()
        for workers in args.workers:
            log(f'round: {workers} workers, {args.workflows} workflows submitted at once')
            result = run_round(code, workers, args.workflows, args.timeout)
            log('  ' + ', '.join(f'{key} {value}' for key, value in result.items()))
            rounds.append(result)
    finally:
        verdi('-p', PROFILE, 'daemon', 'stop', '--timeout', '60', check=False)
        if args.keep:
            log(f'kept {tmpdir}')
        else:
            shutil.rmtree(tmpdir, ignore_errors=True)

    def clean(r: dict[str, Any]) -> bool:
        return r['finished_ok'] == r['workflows'] and r['locked_in_log'] == 0 and r['locked_in_exceptions'] == 0

    ratios = {
        f'ok_fraction_{r["workers"]}w_{r["workflows"]}wf': (r['finished_ok'] / r['workflows'] if clean(r) else 0.0)
        for r in rounds
    }
    clean_workers = [r['workers'] for r in rounds if clean(r)]
    summary = {
        'profile': 'SQLite (core.sqlite_dos) + ZeroMQ broker, `verdi presto --use-zeromq`',
        'rounds': rounds,
        'limit': {
            'max_clean_workers': max(clean_workers) if clean_workers else 0,
            'first_locked_workers': next((r['workers'] for r in rounds if not clean(r)), None),
        },
        'ratios': ratios,
        'targets': dict.fromkeys(ratios, 1.0),
        'machine': {'cpus': os.cpu_count(), 'python': sys.version.split()[0]},
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
