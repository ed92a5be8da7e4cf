"""Production tier: the ssh transport to the SLURM cluster failing under a running labelling job.

The tests run their own sshd on 127.0.0.1:``FAULT_SSH_PORT`` (same host keys and authorised key as the sshd of
``scripts/start-integration-services.sh``) and a Computer ``slurm-ssh-faults`` that reaches SLURM through it, so
that stopping it (the listener and every session it holds) cuts only these tests off, not anyone else's ssh.

- Refused for ~25 s while the job is in flight: AiiDA's transport tasks retry with exponential backoff
  (``transport.task_retry_initial_interval`` 2 s here) and the workflow finishes.
- Refused past ``transport.task_maximum_attempts`` (2 here): the CalcJob *pauses* (it does not except) with
  "Pausing after failed transport task"; once sshd is back, ``verdi process play`` finishes it.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from aiida import orm
from aiida.engine import submit

from aiida_mlmat.common.constants import INDEX_KEY
from tests.conftest import require_or_skip
from tests.engine.helpers import assert_labels_equal_emt
from tests.integration.test_slurm import HINT, HOST, KEY, _succeeds, label_restart_builder, small_cu_set
from tests.production.conftest import await_terminated, calcjob_census, verdi, wait_until

pytestmark = [pytest.mark.production, pytest.mark.integration]

FAULT_SSH_PORT = int(os.environ.get('MLMAT_FAULT_SSH_PORT', '2222'))
PID_FILE = Path('/run/sshd-mlmat-faults.pid')
COMPUTER = 'slurm-ssh-faults'
OUTAGE_S = 25


def _port_open() -> bool:
    from tests.conftest import port_open

    return port_open(HOST, FAULT_SSH_PORT, timeout=1)


def start_sshd() -> None:
    """Start the fault-test sshd (listener on 127.0.0.1:FAULT_SSH_PORT) unless it listens already."""
    if _port_open():
        return
    Path('/run/sshd').mkdir(exist_ok=True)
    subprocess.run(
        ['/usr/sbin/sshd', '-o', f'ListenAddress={HOST}', '-o', f'Port={FAULT_SSH_PORT}', '-o', f'PidFile={PID_FILE}'],
        check=True,
    )
    wait_until(_port_open, 10, f'sshd on {HOST}:{FAULT_SSH_PORT}')


def stop_sshd() -> None:
    """Stop the fault-test sshd: the listener and every session it has open (AiiDA's connections drop)."""
    import psutil

    if PID_FILE.exists():
        try:
            listener = psutil.Process(int(PID_FILE.read_text().split()[0]))
        except (psutil.NoSuchProcess, ValueError):
            listener = None
        if listener is not None:
            processes = [listener, *listener.children(recursive=True)]
            for process in processes:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.send_signal(signal.SIGKILL)
            psutil.wait_procs(processes, timeout=10)
    wait_until(lambda: not _port_open(), 10, f'sshd on port {FAULT_SSH_PORT} to stop')


@pytest.fixture(scope='module')
def fault_sshd():
    """The fault-test sshd, running; stopped at the end of the module (and always restarted after each outage)."""
    require_or_skip(os.geteuid() == 0, 'the ssh fault tests start and stop their own sshd: run them as root')
    require_or_skip(Path('/usr/sbin/sshd').exists(), 'no /usr/sbin/sshd (apt-get install openssh-server)')
    require_or_skip(shutil.which('sinfo') is not None and _succeeds(['sinfo']), f'SLURM is not running ({HINT})')
    require_or_skip(KEY.is_file(), f'no ssh key {KEY} ({HINT})')
    start_sshd()
    known = Path.home() / '.ssh' / 'known_hosts'
    entry = f'[{HOST}]:{FAULT_SSH_PORT}'
    if subprocess.run(['ssh-keygen', '-F', entry, '-f', str(known)], capture_output=True).returncode != 0:
        scanned = subprocess.run(
            ['ssh-keyscan', '-T', '10', '-p', str(FAULT_SSH_PORT), '-H', HOST], capture_output=True, text=True
        ).stdout
        assert scanned.strip(), f'ssh-keyscan -p {FAULT_SSH_PORT} {HOST} returned no key'
        with known.open('a') as handle:
            handle.write(scanned)
    ssh = ['ssh', '-o', 'BatchMode=yes', '-o', 'ConnectTimeout=10', '-p', str(FAULT_SSH_PORT), HOST, 'true']
    require_or_skip(_succeeds(ssh), f'`{" ".join(ssh)}` fails ({HINT})')
    try:
        yield
    finally:
        stop_sshd()


@pytest.fixture(scope='module')
def fault_worker(fault_sshd, aiida_profile):
    """``mlmat-worker@slurm-ssh-faults``: SLURM through the fault-test sshd."""
    from aiida_mlmat.cli.slurm import ensure_slurm_codes, ensure_slurm_computer

    computer = ensure_slurm_computer(HOST, getpass.getuser(), str(KEY), label=COMPUTER)
    authinfo = computer.get_authinfo(orm.User.collection.get_default())
    authinfo.set_auth_params({**authinfo.get_auth_params(), 'port': FAULT_SSH_PORT})
    return ensure_slurm_codes(computer)['worker']


class DaemonLog:
    """The part of the daemon log written after this object was made (the workers log AiiDA's retries there)."""

    def __init__(self, client) -> None:
        self.path = Path(client.daemon_log_file)
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def text(self) -> str:
        with self.path.open('rb') as handle:
            handle.seek(self.offset)
            return handle.read().decode(errors='replace')

    def retries(self) -> list[str]:
        """AiiDA's exponential-backoff lines (``iteration N of do_update excepted, retrying after S seconds``)."""
        return [line for line in self.text().splitlines() if 'excepted' in line and 'iteration' in line]


def first_calcjob(workchain: orm.WorkflowNode) -> orm.CalcJobNode | None:
    calcs = [node for node in workchain.called if isinstance(node, orm.CalcJobNode)]
    return calcs[0] if calcs else None


def test_ssh_refused_for_a_while_is_retried(profile_options, started_daemon_client, fault_worker, emt):
    """sshd down ~25 s while a SLURM-over-ssh labelling job is in flight: retries with backoff, then success."""
    profile_options(transport__task_retry_initial_interval=2, transport__task_maximum_attempts=10)
    workchain = submit(label_restart_builder(fault_worker, small_cu_set(), emt, max_wallclock_seconds=600))
    calc = wait_until(lambda: (c := first_calcjob(workchain)) is not None and c.get_job_id() and c, 180, 'a job id')
    log = DaemonLog(started_daemon_client)
    try:
        stop_sshd()
        time.sleep(OUTAGE_S)
        assert not workchain.is_terminated and not calc.paused, 'the job must wait for the transport, not fail'
    finally:
        start_sshd()
    await_terminated(workchain, started_daemon_client, timeout=300)
    assert workchain.is_finished_ok, (workchain.exit_status, workchain.exit_message)
    retries = log.retries()
    assert len(retries) >= 2, log.text()[-3000:]  # at 2 s, 4 s, 8 s, 16 s ... after the outage began
    assert all('retrying after' in line for line in retries), retries
    assert f'Unable to connect to port {FAULT_SSH_PORT}' in log.text()
    assert calc.is_finished_ok and calc.computer.label == COMPUTER
    census = calcjob_census(workchain)
    assert sum(census.values()) == 1  # the same job, waited for; nothing resubmitted
    frames = workchain.outputs.configurations.get_atoms()
    assert [frame.info[INDEX_KEY] for frame in frames] == [0, 1, 2]
    assert assert_labels_equal_emt(frames) == 3


def test_ssh_refused_past_retries_pauses_and_play_finishes(profile_options, started_daemon_client, fault_worker, emt):
    """sshd down longer than the retries: the CalcJob pauses (not excepts); `verdi process play` finishes it."""
    profile_options(transport__task_retry_initial_interval=1, transport__task_maximum_attempts=2)
    workchain = submit(label_restart_builder(fault_worker, small_cu_set(), emt, max_wallclock_seconds=600))
    calc = wait_until(lambda: (c := first_calcjob(workchain)) is not None and c.get_job_id() and c, 180, 'a job id')
    log = DaemonLog(started_daemon_client)
    try:
        stop_sshd()
        wait_until(lambda: calc.paused, 120, 'the CalcJob to pause', interval=0.5)
        assert not calc.is_terminated and not calc.is_excepted
        assert 'Pausing after failed transport task' in (calc.process_status or ''), calc.process_status
        assert not workchain.is_terminated
        time.sleep(3)
        assert calc.paused  # it stays paused: nothing retries on its own
    finally:
        start_sshd()
    assert calc.paused  # sshd being back does not resume it either
    played = verdi(started_daemon_client.profile, 'process', 'play', str(calc.pk))
    assert played.returncode == 0, played.stdout + played.stderr
    await_terminated(workchain, started_daemon_client, timeout=300)
    assert workchain.is_finished_ok, (workchain.exit_status, workchain.exit_message)
    assert calc.is_finished_ok and not calc.paused
    assert any('maximum attempts 2' in line for line in log.text().splitlines()), log.text()[-3000:]
    assert sum(calcjob_census(workchain).values()) == 1
    assert assert_labels_equal_emt(workchain.outputs.configurations.get_atoms()) == 3
