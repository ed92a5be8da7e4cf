#!/usr/bin/env python
"""Labelling throughput: bare ASE loop vs batched ``mlmat.label`` vs one aiida-ase ``ase.ase`` job per configuration.

Usage::

    python benchmarks/label_throughput.py [--n 1000] [--n-ase 50] [--chunk-size N] [--workers 2]

The script makes a throw-away AiiDA profile (SQLite + ZeroMQ broker, ``verdi presto``) under a temporary
``AIIDA_PATH``, starts its daemon, and removes everything at the end. All three contenders label the same rattled
32-atom Cu cells with EMT (energy, forces, stress):

* ``bare``: one Python loop, ``atoms.calc = EMT()`` then energy, forces, stress, in this process;
* ``batched``: the set stored as one ``mlmat.configurations`` node and labelled by ``mlmat.label`` jobs on the
  daemon (one job, or ``--chunk-size`` chunks run in parallel, split and merged with the package's calcfunctions);
  the batched labels are checked against the bare loop;
* ``aiida-ase``: one ``ase.ase`` CalcJob per configuration for the first ``--n-ase`` configurations, all submitted
  at once.

Both AiiDA contenders run with the same tuned settings: localhost ``safe_interval`` 0 (from ``verdi presto``), no
login shell for the local transport (``--login-shell`` keeps AiiDA's default), the minimum scheduler poll interval
``--poll-interval``, ``--workers`` daemon workers warmed up with one tiny job of each kind (``--no-warmup`` skips
that). Human-readable lines go to stdout, and the last line of stdout is one JSON object (see
``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

PROFILE = 'bench'
SEED = 20240601
RATTLE_STDDEV = 0.05
TARGETS = {'batched_vs_bare_throughput': 0.5, 'batched_vs_aiida_ase_per_config': 50}
EMT_SPEC = {'name': 'emt', 'parameters': {}}
#: Written by the job script before and after the executable runs, read back from the remote folder (localhost).
STAMP_START = '.bench_start'
STAMP_END = '.bench_end'
STAMP_OPTIONS = {
    'prepend_text': f'date +%s.%N > {STAMP_START}',
    'append_text': f'date +%s.%N > {STAMP_END}',
}


def log(message: str) -> None:
    """Print a human-readable line (flushed, so a background run can be followed)."""
    print(message, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--n', type=int, default=1000, help='configurations for the bare and batched contenders')
    parser.add_argument('--n-ase', type=int, default=50, help='configurations for aiida-ase (one job each)')
    parser.add_argument(
        '--chunk-size',
        type=int,
        default=None,
        help='configurations per mlmat.label job; default: split evenly over --workers jobs run in parallel',
    )
    parser.add_argument('--workers', type=int, default=2, help='daemon workers (and default number of chunks)')
    parser.add_argument('--poll-interval', type=float, default=0.5, help='localhost minimum job poll interval (s)')
    parser.add_argument('--timeout', type=float, default=3600.0, help='give up waiting for jobs after this (s)')
    parser.add_argument('--keep', action='store_true', help='keep the temporary AIIDA_PATH (for inspection)')
    parser.add_argument(
        '--no-warmup', dest='warmup', action='store_false', help='skip the warm-up jobs (measure cold daemon workers)'
    )
    parser.add_argument(
        '--login-shell',
        action='store_true',
        help='keep the localhost transport on a login shell (AiiDA default; slow where shell profiles are heavy)',
    )
    args = parser.parse_args(argv)
    if args.n < 1 or args.n_ase < 0 or args.workers < 1 or args.n_ase > args.n:
        parser.error('need --n >= 1, 0 <= --n-ase <= --n and --workers >= 1')
    if args.chunk_size is not None and args.chunk_size < 1:
        parser.error('--chunk-size must be at least 1')
    return args


def build_configurations(n: int, seed: int = SEED) -> list[Any]:
    """Return ``n`` rattled 32-atom fcc Cu cells (a = 3.61 Å), reproducibly."""
    from ase.build import bulk

    base = bulk('Cu', 'fcc', a=3.61, cubic=True).repeat(2)
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = base.copy()
        atoms.positions += rng.normal(0.0, RATTLE_STDDEV, atoms.positions.shape)
        frames.append(atoms)
    return frames


def run_bare(frames: list[Any]) -> dict[str, Any]:
    """Label every configuration with EMT in a plain loop; return the wall time and the labels."""
    from ase.calculators.emt import EMT

    work = [atoms.copy() for atoms in frames]  # leave the shared frames without a calculator
    energies = np.empty(len(work))
    forces = []
    start = time.perf_counter()
    for position, atoms in enumerate(work):
        atoms.calc = EMT()
        energies[position] = atoms.get_potential_energy()
        forces.append(atoms.get_forces())
        atoms.get_stress()
    wall = time.perf_counter() - start
    return {'wall_s': wall, 'energies': energies, 'forces': forces}


# ----------------------------------------------------------------------------------------------------------------
# AiiDA profile and daemon


def verdi_executable() -> str:
    """Path of ``verdi`` next to the running Python (or on PATH)."""
    candidate = Path(sys.executable).parent / 'verdi'
    found = str(candidate) if candidate.exists() else shutil.which('verdi')
    if not found:
        raise RuntimeError('`verdi` not found: run with the Python of the environment where aiida-core is installed')
    return found


def verdi(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``verdi`` with the environment of this process (so with the temporary ``AIIDA_PATH``)."""
    return subprocess.run([verdi_executable(), *args], check=check, capture_output=True, text=True)


def create_profile(workers: int, poll_interval: float, use_login_shell: bool) -> dict[str, Any]:
    """Create the ``bench`` profile, tune the localhost computer and start the daemon; return the settings."""
    verdi('presto', '--use-zeromq', '--profile-name', PROFILE, '--non-interactive')
    from aiida import load_profile, orm

    load_profile(PROFILE, allow_switch=True)
    computer = orm.load_computer('localhost')
    computer.set_minimum_job_poll_interval(poll_interval)
    # `verdi presto` sets safe_interval 0 already. A login shell sources the shell's profile files on every
    # transport command (job submission, every scheduler poll): that can cost most of a second per command.
    computer.configure(safe_interval=0.0, use_login_shell=use_login_shell)
    configuration = computer.get_configuration()
    settings = {
        'profile': 'SQLite (core.sqlite_dos) + ZeroMQ broker, made by `verdi presto --use-zeromq`',
        'minimum_job_poll_interval_s': computer.get_minimum_job_poll_interval(),
        'transport_safe_interval_s': configuration.get('safe_interval'),
        'transport_use_login_shell': configuration.get('use_login_shell'),
        'scheduler': computer.scheduler_type,
        'daemon_workers': workers,
    }
    verdi('-p', PROFILE, 'config', 'set', 'daemon.timeout', '60')  # a loaded machine answers slowly
    verdi('-p', PROFILE, 'daemon', 'start', str(workers))
    return settings


def stop_daemon() -> None:
    """Stop the daemon of the ``bench`` profile; if that fails, terminate its circus process by its pid."""
    result = verdi('-p', PROFILE, 'daemon', 'stop', '--timeout', '60', check=False)
    if result.returncode == 0:
        return
    log(f'warning: `verdi daemon stop` failed: {result.stderr.strip() or result.stdout.strip()}')
    try:
        from aiida.engine.daemon.client import get_daemon_client

        pid = get_daemon_client(PROFILE).get_daemon_pid()
    except Exception as exc:
        log(f'warning: cannot find the daemon pid: {exc}')
        return
    if pid is None:
        return
    import signal

    log(f'terminating the daemon (circus pid {pid})')
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    log(f'warning: daemon process {pid} still alive')


def make_codes() -> tuple[Any, Any]:
    """Return the ``mlmat-worker`` Code and a plain Python Code (for aiida-ase) on localhost."""
    from aiida import orm

    computer = orm.load_computer('localhost')
    worker = Path(sys.executable).parent / 'mlmat-worker'
    worker_path = str(worker) if worker.exists() else shutil.which('mlmat-worker')
    if not worker_path:
        raise RuntimeError('mlmat-worker is not installed: pip install -e .')
    worker_code = orm.InstalledCode(label='mlmat-worker', computer=computer, filepath_executable=worker_path).store()
    python_code = orm.InstalledCode(label='python', computer=computer, filepath_executable=sys.executable).store()
    return worker_code, python_code


def warm_up(worker_code: Any, python_code: Any, frames: list[Any], workers: int, timeout: float) -> float:
    """Run ``workers`` tiny jobs of each kind so every daemon worker has imported the plugins (as a running one has).

    A fresh daemon worker pays the import of aiida-mlmat, ASE, scipy and aiida-ase on its first job; a production
    daemon runs for days. Both AiiDA contenders profit equally. Returns the wall time of the warm-up.
    """
    from aiida import orm
    from aiida.engine import submit
    from aiida.plugins import CalculationFactory

    from aiida_mlmat.calcjobs.label import LabelCalculation
    from aiida_mlmat.data.configurations import ConfigurationSetData

    start = time.time()
    tiny = ConfigurationSetData(frames[:2]).store()
    calculator = orm.Dict(EMT_SPEC).store()
    parameters = orm.Dict({'calculator': {'name': 'emt', 'args': {}}, 'atoms_getters': ['forces', 'stress']}).store()
    structure = orm.StructureData(ase=frames[0]).store()
    options = {'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': 1}, 'withmpi': False}
    nodes = []
    for _ in range(workers):
        nodes.append(submit(LabelCalculation, code=worker_code, configurations=tiny, calculator=calculator))
        nodes.append(
            submit(
                CalculationFactory('ase.ase'),
                code=python_code,
                structure=structure,
                parameters=parameters,
                metadata={'options': options},
            )
        )
    wait_for(nodes, timeout, 'warm-up')
    check_finished_ok(nodes, 'warm-up')
    return time.time() - start


def wait_for(nodes: list[Any], timeout: float, what: str) -> float:
    """Poll until every process node is terminated; return ``time.time()`` when the last one was seen done."""
    deadline = time.time() + timeout
    pending = list(nodes)
    last_report = time.time()
    while pending:
        pending = [node for node in pending if not node.is_terminated]
        if not pending:
            break
        if time.time() > deadline:
            raise TimeoutError(f'{what}: {len(pending)} of {len(nodes)} jobs still running after {timeout:.0f} s')
        if time.time() - last_report > 30:
            log(f'  ... {what}: {len(nodes) - len(pending)}/{len(nodes)} done')
            last_report = time.time()
        time.sleep(0.1)
    return time.time()


def check_finished_ok(nodes: list[Any], what: str) -> None:
    """Raise with the process reports when a job did not finish ok."""
    failed = [node for node in nodes if not node.is_finished_ok]
    if failed:
        node = failed[0]
        report = verdi('-p', PROFILE, 'process', 'report', str(node.pk), check=False).stdout
        raise RuntimeError(
            f'{what}: {len(failed)} of {len(nodes)} jobs failed; first {node.process_label}<{node.pk}> '
            f'exit status {node.exit_status}: {node.exit_message}\n{report}'
        )


def job_phases(node: Any, submitted: float) -> dict[str, float | None]:
    """Split one CalcJob's wall time into phases from its node, its stamp files and its worker's results.

    ``to_start``: submit call -> job script starts (process start, upload, scheduler submit, scheduler start);
    ``run``: the job script's executable (Python start-up and the work); ``to_output``: executable done ->
    last output node created (scheduler poll latency, retrieve, parse, store). For ``mlmat-worker``, ``run`` is
    split further: ``worker_startup`` (interpreter, entry point), ``worker_imports_and_exit`` (task module import,
    results.json, exit), ``worker_total`` (the task) = ``worker_compute`` (EMT) + ``worker_io_and_checks``.
    """
    remote = Path(node.outputs.remote_folder.get_remote_path())
    try:
        start = float((remote / STAMP_START).read_text())
        end = float((remote / STAMP_END).read_text())
    except (OSError, ValueError):
        return {}
    last_output = max(link.node.ctime.timestamp() for link in node.base.links.get_outgoing().all())
    phases: dict[str, float | None] = {
        'to_start_s': start - submitted,
        'run_s': end - start,
        'to_output_s': last_output - end,
    }
    if 'results' in node.outputs:  # mlmat worker: split the run into start-up, I/O and compute
        results = node.outputs.results.get_dict()
        timings = results.get('timings', {})
        phases['worker_startup_s'] = results['started'] - start
        phases['worker_total_s'] = timings.get('total_s')
        phases['worker_compute_s'] = timings.get('compute_s')
        phases['worker_io_and_checks_s'] = timings.get('total_s', 0.0) - timings.get('compute_s', 0.0)
        # the task module (ASE, scipy) is imported after `started` and before the timed task; then exit
        phases['worker_imports_and_exit_s'] = end - results['started'] - timings.get('total_s', 0.0)
    return phases


def mean_phases(phases: list[dict[str, float | None]]) -> dict[str, float]:
    """Average each phase over jobs (ignoring missing values)."""
    keys = sorted({key for item in phases for key in item})
    means = {}
    for key in keys:
        values = [item[key] for item in phases if item.get(key) is not None]
        if values:
            means[key] = float(np.mean(values))
    return means


# ----------------------------------------------------------------------------------------------------------------
# Contenders on the daemon


def run_batched(frames: list[Any], code: Any, chunk_size: int, timeout: float) -> dict[str, Any]:
    """Store the set, label it with ``mlmat.label`` job(s) on the daemon and return timings and labels.

    With more than one chunk the set is split by ``split_configurations`` and merged by ``collect_labels`` (as
    ``mlmat.reference`` does); both calcfunctions are inside the timed wall, so the result is one labelled set as
    for a single job.
    """
    from aiida import orm
    from aiida.engine import submit

    from aiida_mlmat.calcjobs.label import LabelCalculation
    from aiida_mlmat.common.constants import INDEX_KEY
    from aiida_mlmat.data.configurations import ConfigurationSetData
    from aiida_mlmat.workflows.functions import collect_labels, split_configurations

    tick = time.perf_counter()
    full = ConfigurationSetData(frames).store()
    store_s = time.perf_counter() - tick
    calculator = orm.Dict(EMT_SPEC).store()

    start = time.time()
    split_s = 0.0
    if chunk_size < len(frames):
        tick = time.perf_counter()
        chunks = split_configurations(full, orm.Int(chunk_size))
        split_s = time.perf_counter() - tick
        inputs = [chunks[key] for key in sorted(chunks)]
    else:
        inputs = [full]
    submitted = time.time()
    nodes = []
    for chunk in inputs:
        builder = LabelCalculation.get_builder()
        builder.code = code
        builder.configurations = chunk
        builder.calculator = calculator
        for key, value in STAMP_OPTIONS.items():
            builder.metadata.options[key] = value
        nodes.append(submit(builder))
    wait_for(nodes, timeout, 'batched')
    check_finished_ok(nodes, 'batched')
    labelled_at = max(node.outputs.configurations.ctime.timestamp() for node in nodes)
    collect_s = 0.0
    if len(nodes) > 1:
        tick = time.perf_counter()
        labelled = collect_labels(
            calculator,
            orm.Dict({}),
            **{f'labelled_{position:04d}': node.outputs.configurations for position, node in enumerate(nodes)},
        )
        collect_s = time.perf_counter() - tick
        end = labelled.ctime.timestamp()
    else:
        labelled = nodes[0].outputs.configurations
        end = labelled_at
    wall = end - start

    energies = np.full(len(frames), np.nan)
    forces: dict[int, np.ndarray] = {}
    for frame in labelled.get_atoms():
        index = int(frame.info[INDEX_KEY])
        energies[index] = frame.get_potential_energy()
        forces[index] = frame.get_forces()
    phases = [job_phases(node, submitted) for node in nodes]
    return {
        'wall_s': wall,
        'submit_to_labelled_s': labelled_at - submitted,
        'store_s': store_s,
        'split_s': split_s,
        'collect_s': collect_s,
        'n_jobs': len(nodes),
        'chunk_size': chunk_size,
        'pks': [node.pk for node in nodes],
        'energies': energies,
        'forces': forces,
        'n_excluded': labelled.base.attributes.get('n_excluded'),
        'phases_per_job': phases,
    }


def run_aiida_ase(frames: list[Any], code: Any, timeout: float) -> dict[str, Any]:
    """Label each configuration with its own aiida-ase ``ase.ase`` job, all submitted at once."""
    from aiida import orm
    from aiida.engine import submit
    from aiida.plugins import CalculationFactory

    AseCalculation = CalculationFactory('ase.ase')  # noqa: N806
    structures = [orm.StructureData(ase=atoms).store() for atoms in frames]
    parameters = orm.Dict({'calculator': {'name': 'emt', 'args': {}}, 'atoms_getters': ['forces', 'stress']}).store()
    options = {'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': 1}, 'withmpi': False, **STAMP_OPTIONS}

    start = time.time()
    nodes = [
        submit(AseCalculation, code=code, structure=structure, parameters=parameters, metadata={'options': options})
        for structure in structures
    ]
    submit_loop_s = time.time() - start
    wait_for(nodes, timeout, 'aiida-ase')
    check_finished_ok(nodes, 'aiida-ase')
    end = max(link.node.ctime.timestamp() for node in nodes for link in node.base.links.get_outgoing().all())
    energies = np.array([node.outputs.parameters['total_energy'] for node in nodes])
    return {
        'wall_s': end - start,
        'submit_loop_s': submit_loop_s,
        'energies': energies,
        'phases_per_job': [job_phases(node, start) for node in nodes],
    }


# ----------------------------------------------------------------------------------------------------------------
# Offline measurements of the pieces of the batched path (no daemon)


def measure_pieces(frames: list[Any], chunk_size: int) -> dict[str, float]:
    """Time, in this process, what the batched path does besides the EMT calls, for one chunk."""
    import io

    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    from aiida_mlmat.data.configurations import ConfigurationSetData, parse_extxyz_bytes
    from aiida_mlmat.worker.structures import check_configuration, extxyz_string, read_extxyz

    chunk = [atoms.copy() for atoms in frames[:chunk_size]]
    pieces: dict[str, float] = {'chunk_size': float(len(chunk))}

    tick = time.perf_counter()
    text = extxyz_string(chunk)
    pieces['write_unlabelled_extxyz_s'] = time.perf_counter() - tick
    tick = time.perf_counter()
    read_extxyz(io.StringIO(text))
    pieces['read_extxyz_s'] = time.perf_counter() - tick
    tick = time.perf_counter()
    for atoms in chunk:
        check_configuration(atoms)
    pieces['check_configuration_s'] = time.perf_counter() - tick
    tick = time.perf_counter()
    for atoms in chunk:
        atoms.calc = EMT()
        results = {'energy': atoms.get_potential_energy(), 'forces': atoms.get_forces(), 'stress': atoms.get_stress()}
        atoms.calc = SinglePointCalculator(atoms, **results)
    pieces['emt_s'] = time.perf_counter() - tick
    tick = time.perf_counter()
    labelled = extxyz_string(chunk).encode()
    pieces['write_labelled_extxyz_s'] = time.perf_counter() - tick
    tick = time.perf_counter()
    parse_extxyz_bytes(labelled, validate=False)
    pieces['parser_read_labelled_s'] = time.perf_counter() - tick
    tick = time.perf_counter()
    ConfigurationSetData(content=labelled, calculator=EMT_SPEC)
    pieces['parser_configurationsetdata_s'] = time.perf_counter() - tick
    tick = time.perf_counter()
    subprocess.run([sys.executable, '-c', 'import aiida_mlmat.worker.__main__, aiida_mlmat.worker.tasks.label'])
    pieces['worker_python_startup_s'] = time.perf_counter() - tick
    return pieces


def machine_info(settings: dict[str, Any]) -> dict[str, Any]:
    """Describe the machine and the software."""
    import aiida
    import ase

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    return {
        'cores': os.cpu_count(),
        'cpu': cpu,
        'platform': platform.platform(),
        'python': platform.python_version(),
        'aiida_core': aiida.__version__,
        'ase': ase.__version__,
        **settings,
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """Return ``numerator / denominator`` or None when either is missing."""
    if not numerator or not denominator:
        return None
    return numerator / denominator


def exit_on_sigterm() -> None:
    """Turn SIGTERM (``timeout``, ``kill``) into SystemExit, so that ``finally`` stops the daemon and cleans up."""
    import signal

    def handle(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handle)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the JSON summary as the last line."""
    args = parse_args(argv)
    exit_on_sigterm()
    chunk_size = args.chunk_size or math.ceil(args.n / args.workers)

    log(f'building {args.n} rattled Cu32 cells (sigma {RATTLE_STDDEV} Å, seed {SEED})')
    frames = build_configurations(args.n)

    log('bare ASE loop ...')
    bare = run_bare(frames)
    bare_per = bare['wall_s'] / args.n
    log(f'  bare: {bare["wall_s"]:.2f} s for {args.n} -> {1e3 * bare_per:.2f} ms/configuration')

    tmpdir = tempfile.mkdtemp(prefix='mlmat-bench-')
    os.environ['AIIDA_PATH'] = tmpdir  # before aiida is imported anywhere in this process
    os.environ['PATH'] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get('PATH', '')
    daemon_started = False
    try:
        log(f'creating profile `{PROFILE}` under AIIDA_PATH={tmpdir} and starting {args.workers} daemon workers')
        daemon_started = True  # stop it even when the start half-failed
        settings = create_profile(args.workers, args.poll_interval, args.login_shell)
        log(
            f'  localhost: minimum job poll interval {settings["minimum_job_poll_interval_s"]} s, '
            f'transport safe_interval {settings["transport_safe_interval_s"]} s, login shell '
            f'{settings["transport_use_login_shell"]}, scheduler {settings["scheduler"]} '
            '(the same for both AiiDA contenders)'
        )
        worker_code, python_code = make_codes()
        settings['daemon_warmup_s'] = None
        if args.warmup:
            settings['daemon_warmup_s'] = warm_up(worker_code, python_code, frames, args.workers, args.timeout)
            log(f'  warm-up: {args.workers} tiny jobs of each kind in {settings["daemon_warmup_s"]:.1f} s (not timed)')

        log(f'batched mlmat.label: {args.n} configurations in chunks of {chunk_size} ...')
        batched = run_batched(frames, worker_code, chunk_size, args.timeout)
        batched_per = batched['wall_s'] / args.n
        log(
            f'  batched: {batched["wall_s"]:.2f} s for {args.n} in {batched["n_jobs"]} job(s) -> '
            f'{1e3 * batched_per:.2f} ms/configuration (split {batched["split_s"]:.2f} s, submit->labelled '
            f'{batched["submit_to_labelled_s"]:.2f} s, collect {batched["collect_s"]:.2f} s; store before the '
            f'clock {batched["store_s"]:.2f} s)'
        )
        if batched['n_excluded']:
            raise AssertionError(f'batched labelling excluded {batched["n_excluded"]} configurations')
        energy_diff = float(np.max(np.abs(batched['energies'] - bare['energies'])))
        force_diff = max(
            float(np.max(np.abs(batched['forces'][index] - bare['forces'][index]))) for index in batched['forces']
        )
        log(f'  check vs bare: max |dE| = {energy_diff:.2e} eV, max |dF| = {force_diff:.2e} eV/Å')
        if not energy_diff < 1e-6:
            raise AssertionError(f'batched energies differ from the bare loop by up to {energy_diff} eV')
        for position, phases in enumerate(batched['phases_per_job']):
            log(f'  job {position}: ' + ', '.join(f'{key} {value:.2f}' for key, value in phases.items()))

        aiida_ase: dict[str, Any] = {'wall_s': None, 'phases_per_job': []}
        ase_per = None
        ase_energy_diff = None
        if args.n_ase:
            log(f'aiida-ase: {args.n_ase} ase.ase jobs submitted at once ...')
            aiida_ase = run_aiida_ase(frames[: args.n_ase], python_code, args.timeout)
            ase_per = aiida_ase['wall_s'] / args.n_ase
            ase_energy_diff = float(np.max(np.abs(aiida_ase['energies'] - bare['energies'][: args.n_ase])))
            log(
                f'  aiida-ase: {aiida_ase["wall_s"]:.2f} s for {args.n_ase} -> {1e3 * ase_per:.1f} ms/configuration '
                f'(submit loop {aiida_ase["submit_loop_s"]:.2f} s; max |dE| vs bare {ase_energy_diff:.1e} eV)'
            )
            ase_means = mean_phases(aiida_ase['phases_per_job'])
            log('  aiida-ase mean per job: ' + ', '.join(f'{key} {value:.2f}' for key, value in ase_means.items()))

        log('measuring the pieces of the batched path offline (one chunk, this process) ...')
        pieces = measure_pieces(frames, min(chunk_size, args.n))
        log('  ' + ', '.join(f'{key} {value:.3f}' for key, value in pieces.items()))
    finally:
        if daemon_started:
            stop_daemon()
        if args.keep:
            log(f'kept {tmpdir}')
        else:
            shutil.rmtree(tmpdir, ignore_errors=True)

    ratios = {
        'batched_vs_bare_throughput': ratio(bare_per, batched_per),
        'batched_vs_aiida_ase_per_config': ratio(ase_per, batched_per),
    }
    met = {key: value is not None and value >= TARGETS[key] for key, value in ratios.items()}
    for key, value in ratios.items():
        shown = 'n/a' if value is None else f'{value:.2f}'
        log(f'{key}: {shown} (target >= {TARGETS[key]}): {"met" if met[key] else "NOT met"}')

    summary = {
        'benchmark': 'label_throughput',
        'n_configurations': args.n,
        'n_ase': args.n_ase,
        'bare_ase_s_per_config': bare_per,
        'batched_s_per_config': batched_per,
        'aiida_ase_s_per_config': ase_per,
        'batched_wall_s': batched['wall_s'],
        'bare_wall_s': bare['wall_s'],
        'aiida_ase_wall_s': aiida_ase['wall_s'],
        'ratios': ratios,
        'targets': TARGETS,
        'met': met,
        'batched': {
            'n_jobs': batched['n_jobs'],
            'chunk_size': batched['chunk_size'],
            'split_s': batched['split_s'],
            'submit_to_labelled_s': batched['submit_to_labelled_s'],
            'collect_s': batched['collect_s'],
            'store_before_clock_s': batched['store_s'],
            'phases_per_job': batched['phases_per_job'],
            'max_abs_energy_diff_vs_bare_eV': energy_diff,
            'max_abs_force_diff_vs_bare_eV_per_A': force_diff,
        },
        'aiida_ase': {
            'mean_phases_per_job': mean_phases(aiida_ase['phases_per_job']),
            'max_abs_energy_diff_vs_bare_eV': ase_energy_diff,
        },
        'pieces_one_chunk_s': pieces,
        'machine': machine_info(settings),
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
