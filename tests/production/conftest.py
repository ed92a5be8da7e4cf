"""Production tier: helpers for the PostgreSQL + RabbitMQ profile (``MLMAT_TEST_PROFILE=psql``, two workers).

Every test here is marked ``production`` and is deselected on the SQLite profile (see ``tests/conftest.py``).
The helpers act on the real services: the daemon's processes are killed with SIGKILL, RabbitMQ's process queue
is read and purged through AMQP, ``verdi`` runs as a subprocess the way a user runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiida import orm

from aiida_mlmat.workflows.idempotent import is_orphan
from tests.conftest import DAEMON_WORKERS, RMQ_HOST, RMQ_PORT

GRACEFUL_STOP_S = 90
"""Seconds the daemon's processes get to stop on request (circus kills a worker 30 s after its SIGTERM)."""


def process_queue_name(profile) -> str:
    """Name of the profile's RabbitMQ process (task) queue."""
    return f'aiida-{profile.uuid}.process.queue'


async def _queue_call(name: str, purge: bool) -> int:
    import aio_pika

    connection = await aio_pika.connect(f'amqp://guest:guest@{RMQ_HOST}:{RMQ_PORT}/', timeout=10)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, passive=True)
        count = queue.declaration_result.message_count
        if purge:
            await queue.purge()
        return count


def queued_tasks(profile) -> int:
    """Number of ready (not yet delivered) tasks in the profile's process queue."""
    return asyncio.run(_queue_call(process_queue_name(profile), purge=False))


def purge_tasks(profile) -> int:
    """Delete the ready tasks of the profile's process queue (a broker losing its tasks); return their count."""
    return asyncio.run(_queue_call(process_queue_name(profile), purge=True))


def daemon_processes(client) -> list:
    """The circus daemon process of the profile and its direct children (the daemon workers), as psutil objects."""
    import psutil

    pid = client.get_daemon_pid()
    if pid is None:
        return []
    circus = psutil.Process(pid)
    return [circus, *circus.children(recursive=False)]


def kill_daemon_hard(client) -> list[int]:
    """SIGKILL the profile's circus daemon and all its workers at once (no clean-up runs); return the PIDs."""
    import psutil

    processes = daemon_processes(client)  # circus, its workers and its statistics process
    workers = [p for p in processes if p.cmdline()[-2:] == ['daemon', 'worker']]
    assert len(workers) == DAEMON_WORKERS, [p.cmdline() for p in processes]
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)
    _, alive = psutil.wait_procs(processes, timeout=20)
    assert not alive, alive
    return [process.pid for process in processes]


def stop_daemon(client) -> None:
    """Stop the daemon gracefully (workers hand their tasks back) and wait until it is gone.

    On a loaded machine circus may answer the stop request late: then its process gets SIGTERM, which circus
    also handles gracefully (it stops its workers with SIGTERM before it exits). Circus SIGKILLs a worker that
    has not stopped 30 s after its SIGTERM, so the whole daemon is normally gone well within a minute. Once (CI,
    after the ssh outage test) circus itself was still alive 180 s after the request: if the daemon's processes
    outlive :data:`GRACEFUL_STOP_S`, what is left of them is SIGKILLed (RabbitMQ requeues the tasks the workers held,
    as after a crash) with a warning that names them, so that a stuck circus cannot fail the test that only wanted
    the daemon restarted.
    """
    import psutil

    pid = client.get_daemon_pid()
    if pid is None or not psutil.pid_exists(pid):
        return
    processes = daemon_processes(client)
    try:
        client.stop_daemon(wait=True, timeout=GRACEFUL_STOP_S)
    except Exception:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(processes, timeout=GRACEFUL_STOP_S)
    if alive:
        described = []
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                described.append(f'{process.pid} {process.status()} {" ".join(process.cmdline()[-3:])}')
        warnings.warn(
            f'the daemon did not stop within {GRACEFUL_STOP_S} s, SIGKILL to: {described}\n{python_stacks(alive)}',
            stacklevel=2,
        )
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)
        _, alive = psutil.wait_procs(alive, timeout=20)
        assert not alive, alive
        Path(client.circus_pid_file).unlink(missing_ok=True)
    deadline = time.monotonic() + 30
    while client.is_daemon_running and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not psutil.pid_exists(pid)


def python_stacks(processes: list, timeout: float = 30.0) -> str:
    """Every thread's Python stack of each of ``processes`` (``py-spy dump``), to show where a stuck daemon waits.

    :return: the dumps, one after the other, or why there are none (py-spy missing or not allowed to attach).
    """
    import shutil

    py_spy = shutil.which('py-spy') or str(Path(sys.executable).with_name('py-spy'))
    if not Path(py_spy).exists():
        return 'no Python stacks: py-spy is not installed (it is in the `dev` extra)'
    dumps = []
    for process in processes:
        try:
            command = [py_spy, 'dump', '--pid', str(process.pid)]
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
            output = result.stdout + result.stderr
            dumps.append(f'--- py-spy dump of {process.pid} (exit {result.returncode}):\n{output}')
        except subprocess.TimeoutExpired:
            dumps.append(f'--- py-spy dump of {process.pid}: no answer within {timeout} s')
    return '\n'.join(dumps)


def release_database_connections() -> None:
    """Close this process's connections to the profile's database (they reopen on the next query).

    ``verdi process repair`` on ``core.psql_dos`` ends every other connection to the database (``--force``),
    which would include this test process's.
    """
    from aiida.manage import get_manager

    session = get_manager().get_profile_storage().get_session()
    session.rollback()  # hands the connection back to the pool; loaded nodes stay attached and reload lazily
    session.get_bind().dispose()  # closes the pooled connections


def start_daemon(client) -> None:
    """Start the daemon with the tier's worker count, unless it runs.

    After a SIGKILL the circus PID file is left behind, so ``client.is_daemon_running`` (which only looks for the
    file) says yes: the PID's process is checked instead. ``start_daemon`` removes the stale file.
    """
    import psutil

    pid = client.get_daemon_pid()
    if pid is None or not psutil.pid_exists(pid):
        client.start_daemon(number_workers=DAEMON_WORKERS)
    assert client.is_daemon_running and psutil.pid_exists(client.get_daemon_pid())


def verdi(profile, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``verdi -p PROFILE ARGS`` in a subprocess, as a user would; return the completed process."""
    executable = Path(sys.executable).parent / 'verdi'
    env = {**os.environ, 'AIIDA_WARN_v3': '0'}
    return subprocess.run(
        [str(executable), '-p', profile.name, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def await_terminated(node: orm.ProcessNode, client, timeout: float = 300) -> orm.ProcessNode:
    """Wait until ``node`` is terminated; on timeout fail with the daemon log's tail."""
    deadline = time.monotonic() + timeout
    while not node.is_terminated:
        if time.monotonic() > deadline:
            log = Path(client.daemon_log_file).read_text(errors='replace')[-6000:]
            raise AssertionError(f'{node} not terminated after {timeout} s (state {node.process_state}):\n{log}')
        time.sleep(0.2)
    return node


def repair_processes(profile) -> str:
    """Run ``verdi process repair --force`` (the daemon must be stopped); assert it succeeds; return its output."""
    release_database_connections()
    result = verdi(profile, 'process', 'repair', '--force')
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def revive_cut_off_launches(
    workflows: list[orm.WorkflowNode], client, profile, timeout: float = 600, grace: float = 60
) -> list[int]:
    """Wait until ``workflows`` terminate; if a child is cut off between its checkpoint and its broker task, repair.

    The one stall that :mod:`aiida_mlmat.workflows.idempotent` leaves to AiiDA: a daemon killed in the milliseconds
    between a child's checkpoint and the broker task that would run it leaves a child in the ``created`` state with
    no task, which nothing ever runs. While the daemon runs such a child stays ``created``; one that is picked up
    leaves the state within a second. A child seen ``created`` for ``grace`` seconds is taken for such a child:
    the daemon is stopped, ``verdi process repair`` must revive exactly those children and nothing else, and the
    daemon is started again. Return the pks revived (empty when the kill missed the window, as it mostly does).
    """
    from aiida.engine import ProcessState

    first_seen: dict[int, float] = {}
    deadline = time.monotonic() + timeout
    while not all(node.is_terminated for node in workflows):
        now = time.monotonic()
        assert now < deadline, f'{workflows} not terminated after {timeout} s'
        created = {
            child.pk
            for node in workflows
            for child in [node, *node.called_descendants]
            if child.process_state == ProcessState.CREATED and child.checkpoint is not None
        }
        first_seen = {pk: first_seen.get(pk, now) for pk in created}
        stalled = sorted(pk for pk, seen in first_seen.items() if now - seen > grace)
        if stalled:
            break
        time.sleep(0.5)
    else:
        return []
    stop_daemon(client)
    output = repair_processes(profile)
    revived = sorted(int(pk) for pk in re.findall(r'Revived process `(\d+)`', output))
    assert revived == stalled, output  # only the cut-off children lacked a task
    start_daemon(client)
    return revived


def wait_until(condition, timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``condition()`` until it returns a truthy value; return it, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f'timed out after {timeout} s waiting for {what}')


def input_signature(node: orm.ProcessNode) -> tuple:
    """What a process was asked to do: its type and the content hashes of its input nodes, by link label."""
    from aiida.common.links import LinkType

    inputs = node.base.links.get_incoming(link_type=(LinkType.INPUT_CALC, LinkType.INPUT_WORK)).all()
    return (
        node.process_type,
        tuple(sorted((link.link_label, link.node.base.caching.get_hash()) for link in inputs)),
    )


def calcjob_census(workflow: orm.WorkflowNode) -> Counter:
    """Count the CalcJobs below ``workflow`` by :func:`input_signature`; a duplicate shows as a count above 1."""
    return Counter(
        input_signature(node)
        for node in workflow.called_descendants
        if isinstance(node, orm.CalcJobNode) and not is_orphan(node)
    )


def describe_duplicates(workflow: orm.WorkflowNode) -> str:
    """The CalcJobs below ``workflow`` that share an input signature: pk, state, exit status, caller, creation time."""
    groups: dict[tuple, list[orm.CalcJobNode]] = {}
    for node in workflow.called_descendants:
        if isinstance(node, orm.CalcJobNode):
            groups.setdefault(input_signature(node), []).append(node)
    lines = []
    for nodes in groups.values():
        if len(nodes) > 1:
            for node in sorted(nodes, key=lambda n: n.ctime):
                caller = node.caller
                lines.append(
                    f'{node.process_label}<{node.pk}> {node.process_state} exit {node.exit_status} '
                    f'ctime {node.ctime.isoformat()} caller {caller.process_label}<{caller.pk}> '
                    f'job {node.get_job_id()} {node.exit_message or ""}'
                )
    return '\n'.join(lines) or 'no duplicates'


def process_census(workflow: orm.WorkflowNode) -> Counter:
    """Count every process below ``workflow`` by process type (calcfunctions, CalcJobs, workchains)."""
    return Counter(
        node.process_type or node.process_label for node in workflow.called_descendants if not is_orphan(node)
    )


def no_excepted_processes(since_pk: int) -> list[orm.ProcessNode]:
    """Excepted or killed processes created after ``since_pk`` (a test asserts this is empty).

    Children closed because their launch was cut off before they could run (``is_orphan``) are not counted: they
    never ran, and their replacement did."""
    query = orm.QueryBuilder().append(
        orm.ProcessNode,
        filters={
            'id': {'>': since_pk},
            'attributes.process_state': {'in': ['excepted', 'killed']},
        },
    )
    return [node for node in query.all(flat=True) if not is_orphan(node)]


def last_pk() -> int:
    """The highest node pk so far (0 in an empty database)."""
    result = orm.QueryBuilder().append(orm.Node, project='id').order_by({orm.Node: {'id': 'desc'}}).first()
    return int(result[0]) if result else 0


@pytest.fixture
def profile_options(aiida_profile, daemon_client):
    """Set profile options for one test (e.g. transport retries), restart the daemon, and restore them after."""
    from aiida.manage import get_config

    config = get_config()
    saved: dict[str, Any] = {}

    def apply(**options: Any) -> None:
        for key, value in options.items():
            name = key.replace('__', '.')
            saved.setdefault(name, aiida_profile.get_option(name, None))
            aiida_profile.set_option(name, value)
        config.update_profile(aiida_profile)
        config.store()
        stop_daemon(daemon_client)  # the options are read by the workers when they start
        start_daemon(daemon_client)

    yield apply
    if saved:
        for name, value in saved.items():
            if value is None:
                aiida_profile.unset_option(name)
            else:
                aiida_profile.set_option(name, value)
        config.update_profile(aiida_profile)
        config.store()
        stop_daemon(daemon_client)
        start_daemon(daemon_client)
