"""Shared fixtures: an isolated AiiDA profile (SQLite + ZeroMQ broker), the worker Code, EMT helpers."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path

import pytest

pytest_plugins = ['aiida.tools.pytest_fixtures']

IN_CI = os.environ.get('CI', '').lower() in ('1', 'true', 'yes')


@pytest.fixture(scope='session')
def aiida_profile(aiida_config, aiida_profile_factory):
    """The session's test profile: SQLite storage and the embedded ZeroMQ broker, so the daemon can run."""
    with aiida_profile_factory(aiida_config, broker_backend='core.zeromq') as profile:
        yield profile


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
