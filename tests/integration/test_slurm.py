"""Integration tier: real SLURM (one-node cluster on this machine) reached over real ssh (``core.ssh``).

Needs ``scripts/start-integration-services.sh`` (run as root): sshd on 127.0.0.1 with the user's key authorised,
munge, slurmctld and slurmd. Skips with the reason when they are not up, except with CI=true, where it fails.

Jobs ended by SLURM's time limit are tested in ``test_slurm_walltime.py``.
"""

from __future__ import annotations

import getpass
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from aiida import orm
from aiida.engine import submit

from aiida_mlmat.cli.slurm import check_slurm, ensure_slurm_codes, ensure_slurm_computer, setup_slurm
from aiida_mlmat.common.constants import INDEX_KEY, LABELLED_FILE
from aiida_mlmat.data.configurations import ConfigurationSetData
from tests.conftest import require_or_skip
from tests.engine.helpers import assert_labels_equal_emt

pytestmark = pytest.mark.integration

HOST = '127.0.0.1'
KEY = Path.home() / '.ssh' / 'id_ed25519'
HINT = 'run `scripts/start-integration-services.sh` as root'
#: The port of the second sshd that script starts.
OTHER_PORT = 2200
#: Configurations of the interrupted jobs: 500-atom Cu cells, 0.2 s (idle machine) to 1 s (loaded) of EMT each,
#: so the test, polling every 0.2 s, catches the job with at least 14 configurations still to do.
N_LARGE = 16
#: Configurations the worker must have labelled before the test freezes or cancels the job.
MIN_PROGRESS = 2


def _succeeds(command: list[str]) -> bool:
    try:
        return subprocess.run(command, capture_output=True, timeout=60, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope='module')
def slurm_computer(aiida_profile):
    """The ``slurm-ssh`` Computer (``core.ssh`` to 127.0.0.1, ``core.slurm``) as ``mlmat setup --slurm-*`` makes it."""
    require_or_skip(shutil.which('sinfo') is not None and _succeeds(['sinfo']), f'SLURM is not running ({HINT})')
    require_or_skip(
        _succeeds(['ssh', '-o', 'BatchMode=yes', '-o', 'ConnectTimeout=10', HOST, 'true']),
        f'`ssh -o BatchMode=yes {HOST} true` fails ({HINT})',
    )
    require_or_skip(KEY.is_file(), f'no ssh key {KEY} ({HINT})')
    return ensure_slurm_computer(HOST, getpass.getuser(), str(KEY))


@pytest.fixture(scope='module')
def slurm_worker(slurm_computer):
    """``mlmat-worker@slurm-ssh``."""
    return ensure_slurm_codes(slurm_computer)['worker']


def small_cu_set() -> ConfigurationSetData:
    """Three 4-atom Cu cells."""
    from ase.build import bulk

    frames = []
    for index, a in enumerate((3.55, 3.60, 3.65)):
        atoms = bulk('Cu', 'fcc', a=a, cubic=True)
        atoms.info[INDEX_KEY] = index
        frames.append(atoms)
    return ConfigurationSetData(frames)


def large_cu_set(count: int = N_LARGE) -> ConfigurationSetData:
    """``count`` rattled 500-atom Cu cells: enough work that the job is caught while it runs."""
    from ase.build import bulk

    frames = []
    for index in range(count):
        atoms = bulk('Cu', 'fcc', a=3.6, cubic=True).repeat(5)
        atoms.rattle(stdev=0.05, seed=index)
        atoms.info[INDEX_KEY] = index
        frames.append(atoms)
    return ConfigurationSetData(frames)


def label_restart_builder(code, configurations, emt, **options):
    """A ``mlmat.label.base`` builder with the given scheduler options."""
    from aiida_mlmat.workflows.label import LabelBaseWorkChain

    builder = LabelBaseWorkChain.get_builder()
    builder.label.code = code
    builder.label.configurations = configurations
    builder.label.calculator = orm.Dict(emt)
    for key, value in options.items():
        builder.label.metadata.options[key] = value
    builder.max_iterations = orm.Int(3)
    return builder


def count_frames(path: Path) -> int:
    """Number of extxyz frames (comment lines with ``Lattice=``) written so far to ``path``."""
    try:
        text = path.read_text(errors='replace')
    except FileNotFoundError:
        return 0
    return sum(1 for line in text.splitlines() if 'Lattice=' in line)


def first_job(workchain) -> tuple[orm.CalcJobNode, str | None, str | None] | None:
    """The first CalcJob of a running ``workchain`` with its SLURM job id and remote folder (each None until known),
    or None before there is one; the workflow must not have ended."""
    assert not workchain.is_terminated, f'{workchain} ended before its job could be caught'
    calcs = [node for node in workchain.called if isinstance(node, orm.CalcJobNode)]
    if not calcs:
        return None
    return calcs[0], calcs[0].get_job_id(), calcs[0].get_remote_workdir()


def label_progress(workchain, minimum: int) -> tuple[tuple[orm.CalcJobNode, str] | None, str]:
    """Whether the first CalcJob of ``workchain`` runs in SLURM with ``minimum`` frames labelled.

    The ssh target is this machine, so the job's remote folder is read directly. Return ``(calc, job_id)`` or None,
    and a description of the state for a message.
    """
    job = first_job(workchain)
    if job is None:
        return None, 'no CalcJob yet'
    calc, job_id, workdir = job
    done = count_frames(Path(workdir) / LABELLED_FILE) if workdir else 0
    state = f'job {job_id}, {done} frames labelled, calc state {calc.get_state()}'
    if job_id and done >= minimum:
        assert done < N_LARGE, f'the job finished before it could be caught ({state})'
        return (calc, job_id), state
    return None, state


def wait_for_progress(workchain, minimum: int, timeout: float = 150) -> tuple[orm.CalcJobNode, str]:
    """Wait until the first CalcJob of ``workchain`` runs in SLURM with ``minimum`` frames labelled; return it and
    its job id."""
    deadline = time.monotonic() + timeout
    state = 'not looked yet'
    while time.monotonic() < deadline:
        found, state = label_progress(workchain, minimum)
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f'the job did not make progress within {timeout} s: {state}')


def squeue_state(job_id: str) -> str:
    """SLURM state of ``job_id`` (``RUNNING``, ``TIMEOUT``, ... or '' once forgotten)."""
    result = subprocess.run(
        ['scontrol', 'show', 'job', job_id, '--oneliner'], capture_output=True, text=True, check=False
    )
    for word in result.stdout.split():
        if word.startswith('JobState='):
            return word.split('=', 1)[1]
    return ''


def test_transport_runs_sinfo(slurm_computer):
    """Like `verdi computer test`: the ssh transport opens, and SLURM answers through it."""
    assert slurm_computer.transport_type == 'core.ssh'
    assert slurm_computer.scheduler_type == 'core.slurm'
    with slurm_computer.get_transport() as transport:
        retval, stdout, stderr = transport.exec_command_wait('sinfo --noheader --format=%P:%t')
        assert retval == 0, stderr
        assert stdout.strip(), 'sinfo listed no partition'
        assert transport.whoami() == getpass.getuser()
    scheduler = slurm_computer.get_scheduler()
    with slurm_computer.get_transport() as transport:
        scheduler.set_transport(transport)
        assert isinstance(scheduler.get_jobs(as_dict=True), dict)  # squeue through ssh parses
    assert check_slurm(slurm_computer).strip()


def test_setup_is_idempotent(slurm_computer, slurm_worker):
    """Registering twice gives the same Computer and Code; a bad value is refused with a clear message."""
    summary = setup_slurm(HOST, getpass.getuser(), str(KEY))
    assert summary['computer']['pk'] == slurm_computer.pk
    assert summary['computer']['transport'] == 'core.ssh' and summary['computer']['scheduler'] == 'core.slurm'
    assert summary['computer']['key_filename'] == str(KEY.resolve())
    assert summary['codes']['worker'] == {'label': slurm_worker.full_label, 'pk': slurm_worker.pk}
    assert slurm_worker.full_label == 'mlmat-worker@slurm-ssh'
    with pytest.raises(ValueError, match='quotes'):
        ensure_slurm_computer(HOST, 'root; rm', str(KEY))
    with pytest.raises(ValueError, match='does not exist'):
        ensure_slurm_computer(HOST, getpass.getuser(), '/nonexistent/id_ed25519')
    with pytest.raises(ValueError, match='exists with hostname'):
        ensure_slurm_computer('localhost', getpass.getuser(), str(KEY))


def test_computer_on_another_ssh_port(slurm_computer):
    """`mlmat setup --slurm-port 2200`: the Computer's transport connects on that port (the second sshd that
    `scripts/start-integration-services.sh` starts there), and SLURM answers through it; an unused port is refused
    before anything is registered, because known_hosts has no `[127.0.0.1]:PORT` key for it."""
    require_or_skip(
        _succeeds(['ssh', '-p', str(OTHER_PORT), '-o', 'BatchMode=yes', '-o', 'ConnectTimeout=10', HOST, 'true']),
        f'`ssh -p {OTHER_PORT} -o BatchMode=yes {HOST} true` fails ({HINT})',
    )
    summary = setup_slurm(HOST, getpass.getuser(), str(KEY), label='slurm-ssh-2200', port=OTHER_PORT)
    assert summary['computer']['port'] == OTHER_PORT
    computer = orm.load_computer('slurm-ssh-2200')
    assert computer.pk != slurm_computer.pk
    assert computer.get_authinfo(orm.User.collection.get_default()).get_auth_params()['port'] == OTHER_PORT
    with computer.get_transport() as transport:
        # the connection is the one sshd accepted on port 2200: the remote side sees it in SSH_CONNECTION
        retval, stdout, stderr = transport.exec_command_wait('echo $SSH_CONNECTION')
    assert retval == 0, stderr
    assert stdout.split()[-1] == str(OTHER_PORT)
    assert check_slurm(computer).strip()
    with pytest.raises(ValueError, match=r"'\[127\.0\.0\.1\]:2223' has no key in .*ssh-keyscan -H -p 2223 127"):
        setup_slurm(HOST, getpass.getuser(), str(KEY), label='slurm-ssh-2223', port=2223)
    assert not orm.Computer.collection.find(filters={'label': 'slurm-ssh-2223'})


def test_label_through_slurm_over_ssh(submit_and_await, slurm_worker, emt):
    """Three Cu cells labelled by one SLURM job reached over ssh: labels equal direct EMT."""
    from aiida_mlmat.calcjobs.label import LabelCalculation

    builder = LabelCalculation.get_builder()
    builder.code = slurm_worker
    builder.configurations = small_cu_set()
    builder.calculator = orm.Dict(emt)
    builder.metadata.options.max_wallclock_seconds = 600
    node = submit_and_await(builder, timeout=180)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    assert node.computer.label == 'slurm-ssh'
    assert node.get_job_id().isdigit()
    assert node.outputs.results['n_labelled'] == 3
    assert assert_labels_equal_emt(node.outputs.configurations.get_atoms()) == 3
    script = (Path(node.get_remote_workdir()) / '_aiidasubmit.sh').read_text()  # the ssh target is this machine
    assert '#SBATCH --time=00:10:00' in script
    assert '--partition' not in script  # no partition stored on `slurm-ssh`: SLURM's default one
    # aiida-core recognises TIMEOUT only when SLURM's message is the first line of the scheduler's stderr:
    # a clean job must leave it empty.
    assert node.outputs.retrieved.base.repository.get_object_content('_scheduler-stderr.txt') == ''


def test_stored_partition_is_used_by_jobs_given_none(submit_and_await, slurm_computer, emt):
    """`mlmat setup --slurm-partition debug` stores the partition on the Computer; a job given no `queue_name`
    (as every `mlmat` command submits) goes there and records it as its own option."""
    from aiida_mlmat.calcjobs.label import LabelCalculation

    summary = setup_slurm(HOST, getpass.getuser(), str(KEY), label='slurm-ssh-debug', partition='debug')
    assert summary['computer']['partition'] == 'debug'
    builder = LabelCalculation.get_builder()
    builder.code = orm.load_code(summary['codes']['worker']['label'])
    builder.configurations = small_cu_set()
    builder.calculator = orm.Dict(emt)
    node = submit_and_await(builder, timeout=180)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    assert node.get_option('queue_name') == 'debug'
    script = (Path(node.get_remote_workdir()) / '_aiidasubmit.sh').read_text()
    assert '#SBATCH --partition=debug' in script
    assert slurm_computer.get_property('mlmat_queue_name', None) is None  # the other Computer has none


def test_setup_logs_in_first_and_refuses_a_wrong_user_or_partition(slurm_computer):
    """`mlmat setup --slurm-*` logs in as the Computer will and asks SLURM for its partitions before registering
    anything: a user the host refuses, or a partition the cluster lacks, is a clear error (exit 2) and the working
    Computer keeps its configuration. `--slurm-partition ''` clears a stored partition."""
    import json

    from click.testing import CliRunner

    from aiida_mlmat.cli.main import cli
    from aiida_mlmat.cli.slurm import check_login

    assert check_login(HOST, getpass.getuser(), str(KEY)) == ['debug']  # the one-node cluster's partition
    auth = slurm_computer.get_authinfo(orm.User.collection.get_default()).get_auth_params()
    base = ['setup', '--slurm-host', HOST, '--slurm-key', str(KEY), '--json']
    for extra, message in (
        (['--slurm-user', 'nosuchuserx'], f'cannot log in as nosuchuserx@{HOST} with the key'),
        (['--slurm-user', getpass.getuser(), '--slurm-partition', 'gpu'],
         "'gpu' is not a partition of 127.0.0.1 (sinfo lists debug)"),
    ):  # fmt: skip
        result = CliRunner().invoke(cli, [*base, *extra])
        assert result.exit_code == 2, result.output
        error = json.loads(result.stdout.strip().splitlines()[-1])['error']
        assert message in error and 'nothing was changed' in error, error
    assert slurm_computer.get_authinfo(orm.User.collection.get_default()).get_auth_params() == auth
    computer = orm.load_computer(
        setup_slurm(HOST, getpass.getuser(), str(KEY), label='slurm-ssh-clear', partition='debug')['computer']['pk']
    )
    assert computer.get_property('mlmat_queue_name', None) == 'debug'
    assert setup_slurm(HOST, getpass.getuser(), str(KEY), label='slurm-ssh-clear')['computer']['partition'] == 'debug'
    assert (
        setup_slurm(HOST, getpass.getuser(), str(KEY), label='slurm-ssh-clear', partition='')['computer']['partition']
        is None
    )


def test_scancel_is_resubmitted(submit_and_await, slurm_worker, emt):
    """A job cancelled with `scancel` is recognised from SLURM's message (exit 430, ERROR_JOB_CANCELLED); the
    wrapper resubmits it from the configurations it had finished, which are reused, not recomputed."""
    builder = label_restart_builder(slurm_worker, large_cu_set(), emt, max_wallclock_seconds=600)
    workchain = submit(builder)
    _, job_id = wait_for_progress(workchain, MIN_PROGRESS)
    subprocess.run(['scancel', job_id], check=True)
    node = submit_and_await(workchain, timeout=240)

    assert squeue_state(job_id) in ('CANCELLED', ''), squeue_state(job_id)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    calcs = sorted((n for n in node.called if isinstance(n, orm.CalcJobNode)), key=lambda n: n.ctime)
    assert len(calcs) == 2, [c.exit_status for c in calcs]
    first, second = calcs
    stderr = first.outputs.retrieved.base.repository.get_object_content('_scheduler-stderr.txt')
    assert 'CANCELLED' in stderr and 'TIME LIMIT' not in stderr, stderr
    # aiida-core's slurm parser knows no "cancelled" state; our parser reads SLURM's message in the job's stderr.
    assert first.exit_status == 430, (first.exit_status, first.exit_message)
    assert first.outputs.partial_configurations.count >= MIN_PROGRESS
    assert second.is_finished_ok
    assert second.inputs.restart_from.uuid == first.outputs.partial_configurations.uuid
    assert second.outputs.results['n_reused'] == second.inputs.restart_from.count
    frames = node.outputs.configurations.get_atoms()
    assert [frame.info[INDEX_KEY] for frame in frames] == list(range(N_LARGE))
    assert assert_labels_equal_emt(frames) == N_LARGE
