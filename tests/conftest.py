"""Shared fixtures: an isolated AiiDA profile, the worker Code, EMT helpers.

The session's profile is chosen by ``MLMAT_TEST_PROFILE``:

- ``sqlite`` (default): SQLite storage (``core.sqlite_dos``) and the embedded ZeroMQ broker, one daemon worker.
- ``psql``: the production tier, PostgreSQL storage (``core.psql_dos``, a fresh database on the server at
  ``MLMAT_TEST_PG_HOST:MLMAT_TEST_PG_PORT``, dropped at the end) and RabbitMQ (``core.rabbitmq`` on
  ``MLMAT_TEST_RMQ_HOST:5672``, its queues deleted at the end), two daemon workers.

Tests marked ``production`` need the PostgreSQL + RabbitMQ profile: they are deselected on the SQLite profile.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import sys
from pathlib import Path

import pytest

from aiida_mlmat.cli.utils import put_own_bin_on_path

put_own_bin_on_path()  # the daemon is started as `verdi` from PATH: pytest run without an activated environment works
pytest_plugins = ['aiida.tools.pytest_fixtures']

IN_CI = os.environ.get('CI', '').lower() in ('1', 'true', 'yes')
#: ``sqlite`` (SQLite + ZeroMQ, one worker) or ``psql`` (PostgreSQL + RabbitMQ, two workers).
PROFILE_KIND = os.environ.get('MLMAT_TEST_PROFILE', 'sqlite').strip().lower() or 'sqlite'
if PROFILE_KIND not in ('sqlite', 'psql'):
    raise ValueError(f'MLMAT_TEST_PROFILE={PROFILE_KIND!r}: expected `sqlite` or `psql`')
IS_PSQL = PROFILE_KIND == 'psql'
#: Daemon workers the test daemon starts with.
DAEMON_WORKERS = int(os.environ.get('MLMAT_TEST_WORKERS', '2' if IS_PSQL else '1'))
PG_HOST = os.environ.get('MLMAT_TEST_PG_HOST', '127.0.0.1')
PG_PORT = int(os.environ.get('MLMAT_TEST_PG_PORT', '5432'))
PG_USER = os.environ.get('MLMAT_TEST_PG_USER', 'postgres')
PG_PASSWORD = os.environ.get('MLMAT_TEST_PG_PASSWORD', '')
RMQ_HOST = os.environ.get('MLMAT_TEST_RMQ_HOST', '127.0.0.1')
RMQ_PORT = int(os.environ.get('MLMAT_TEST_RMQ_PORT', '5672'))


def pytest_collection_modifyitems(config, items):
    """Deselect the ``production`` tests unless the session runs on the PostgreSQL + RabbitMQ profile."""
    if IS_PSQL:
        return
    kept, dropped = [], []
    for item in items:
        (dropped if item.get_closest_marker('production') else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def port_open(host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether a TCP connection to ``host:port`` opens."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def fresh_postgres_database():
    """Create a uniquely named database on the PostgreSQL server, yield its name, and drop it at the end."""
    import psycopg

    name = f'mlmat_test_{secrets.token_hex(6)}'
    dsn = {'host': PG_HOST, 'port': PG_PORT, 'user': PG_USER, 'dbname': 'postgres', 'autocommit': True}
    if PG_PASSWORD:
        dsn['password'] = PG_PASSWORD
    with psycopg.connect(**dsn) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(**dsn) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def delete_rabbitmq_queues(prefix: str) -> None:
    """Delete the launch queue and the exchanges of a profile (``aiida-<uuid>``) from RabbitMQ; errors are ignored."""
    import asyncio

    import aio_pika

    async def delete() -> None:
        connection = await aio_pika.connect(f'amqp://guest:guest@{RMQ_HOST}:{RMQ_PORT}/', timeout=10)
        async with connection:
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await channel.queue_delete(f'{prefix}.process.queue')
            for exchange in ('messages', 'tasks'):
                with contextlib.suppress(Exception):
                    await channel.exchange_delete(f'{prefix}.{exchange}')

    with contextlib.suppress(Exception):
        asyncio.run(delete())


@pytest.fixture(scope='session')
def aiida_profile(aiida_config, aiida_profile_factory):
    """The session's test profile (see the module docstring): SQLite + ZeroMQ, or PostgreSQL + RabbitMQ."""
    if not IS_PSQL:
        with aiida_profile_factory(aiida_config, broker_backend='core.zeromq') as profile:
            yield profile
        return
    require_or_skip(port_open(PG_HOST, PG_PORT), f'PostgreSQL is not listening on {PG_HOST}:{PG_PORT}')
    require_or_skip(port_open(RMQ_HOST, RMQ_PORT), f'RabbitMQ is not listening on {RMQ_HOST}:{RMQ_PORT}')
    name = f'mlmat-psql-{secrets.token_hex(4)}'
    with fresh_postgres_database() as database:
        storage_config = {
            'database_engine': 'postgresql_psycopg',
            'database_hostname': PG_HOST,
            'database_port': PG_PORT,
            'database_username': PG_USER,
            'database_password': PG_PASSWORD,
            'database_name': database,
            'repository_uri': (Path(aiida_config.dirpath) / name / 'repository').as_uri(),
        }
        broker_config = {
            'broker_protocol': 'amqp',
            'broker_username': 'guest',
            'broker_password': 'guest',
            'broker_host': RMQ_HOST,
            'broker_port': RMQ_PORT,
            'broker_virtual_host': '',
        }
        prefix = None
        try:
            with aiida_profile_factory(
                aiida_config,
                storage_backend='core.psql_dos',
                storage_config=storage_config,
                broker_backend='core.rabbitmq',
                broker_config=broker_config,
                name=name,
            ) as profile:
                profile.set_option('daemon.default_workers', DAEMON_WORKERS)
                # aiida-core marks factory profiles as test profiles, which puts kiwipy in testing mode: the
                # RabbitMQ task queue is then not durable and expires 10 s after its last consumer, so a daemon
                # that is down for longer loses every task. Production queues are durable; so is this one.
                profile.is_test_profile = False
                # A non-test profile polls the state of a process that a runner awaits every `runner.poll.interval`
                # (60 s by default) besides listening for its broadcast; an in-process `run` of a workflow (the
                # provenance and archive graphs) hears no broadcast here and would wait the full minute per child.
                profile.set_option('runner.poll.interval', 1)
                aiida_config.update_profile(profile)
                aiida_config.store()
                prefix = f'aiida-{profile.uuid}'
                yield profile
        finally:
            from aiida.manage import get_manager

            with contextlib.suppress(Exception):
                get_manager().reset_profile()
            if prefix:
                delete_rabbitmq_queues(prefix)


def worker_executable() -> str:
    """Path of the ``mlmat-worker`` console script of the running Python."""
    candidate = Path(sys.executable).parent / 'mlmat-worker'
    if candidate.exists():
        return str(candidate)
    found = shutil.which('mlmat-worker')
    if not found:
        raise RuntimeError('mlmat-worker is not installed: pip install -e .')
    return found


@pytest.fixture
def worker_code(aiida_localhost):
    """An InstalledCode for ``mlmat-worker`` on localhost (created once per profile)."""
    from aiida import orm
    from aiida.common.exceptions import NotExistent

    try:
        return orm.load_code('mlmat-worker@localhost')
    except NotExistent:
        code = orm.InstalledCode(
            label='mlmat-worker', computer=aiida_localhost, filepath_executable=worker_executable()
        )
        return code.store()


@pytest.fixture
def emt():
    """Name-only spec of the EMT calculator."""
    return {'name': 'emt', 'parameters': {}}


def finished_process(
    node_class: type, process_type: str, label: str, exit_status: int, message: str = '', caller=None, **options
):
    """A stored process node as aiida-core leaves one that finished with ``exit_status`` (and ``message``), called by
    ``caller`` when given; ``options`` are CalcJob options (``scheduler_stderr``)."""
    from aiida.common.links import LinkType
    from aiida.engine import ProcessState

    node = node_class(process_type=process_type)
    node.set_process_label(label)
    node.set_process_state(ProcessState.FINISHED)
    node.set_exit_status(exit_status)
    if message:
        node.set_exit_message(message)
    for key, value in options.items():
        node.set_option(key, value)
    if caller is not None:
        link = LinkType.CALL_CALC if node.node_type.startswith('process.calculation') else LinkType.CALL_WORK
        node.base.links.add_incoming(caller, link, label.lower())
    return node.store()


def require_or_skip(condition: bool, reason: str) -> None:
    """Skip outside CI when a component is missing; fail in CI, where the CI script installs everything."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f'{reason} (CI installs this component; its absence is a failure)')
    pytest.skip(reason)


@pytest.fixture(scope='session')
def daemon_client(aiida_profile):
    """The daemon client of the test profile; stops the daemon at the end, robustly under load.

    aiida-core's fixture of the same name fails the session when circus answers a stop request late on a busy
    machine; this one retries and then ends the daemon's processes by their PID.
    """
    import signal
    import time

    from aiida.engine.daemon import get_daemon_client

    client = get_daemon_client(aiida_profile.name)
    try:
        yield client
    finally:
        for _ in range(3):
            try:
                if not client.is_daemon_running:
                    break
                client.stop_daemon(wait=True, timeout=30)
                break
            except Exception:
                time.sleep(2)
        pid = client.get_daemon_pid() if client.is_daemon_running else None
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


@pytest.fixture
def started_daemon_client(daemon_client):
    """The test profile's daemon, started with :data:`DAEMON_WORKERS` workers (two on the production profile)."""
    if not daemon_client.is_daemon_running:
        daemon_client.start_daemon(number_workers=DAEMON_WORKERS)
    assert daemon_client.is_daemon_running
    return daemon_client
