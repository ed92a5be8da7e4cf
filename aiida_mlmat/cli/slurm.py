"""A SLURM Computer reached over ssh (``core.ssh`` + ``core.slurm``) and its Codes, registered idempotently.

``mlmat setup --slurm-host HOST --slurm-user USER --slurm-key KEY [--slurm-port PORT]`` calls :func:`setup_slurm`.
On a cluster the host is the login node; for the integration tests it is ``127.0.0.1``
(``scripts/start-integration-services.sh`` starts sshd and a one-node SLURM there), and the worker Code points at
the same ``mlmat-worker`` as on localhost.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from aiida_mlmat.cli.setup import WORKER_CODE, ensure_code, worker_executable
from aiida_mlmat.common.constants import PARTITION_PROPERTY

SLURM_COMPUTER = 'slurm-ssh'
TRANSPORT = 'core.ssh'
SCHEDULER = 'core.slurm'
#: AiiDA substitutes ``{username}`` with the remote user name.
DEFAULT_WORKDIR = '/tmp/aiida-slurm/{username}'
#: Seconds between two connections over the transport (AiiDA's default for ssh is 5 s).
SAFE_INTERVAL = 0.5
#: Seconds between two polls of ``squeue`` (AiiDA's default is 10 s).
POLL_INTERVAL = 1.0
#: The ssh port of a login node unless told otherwise.
DEFAULT_PORT = 22

_FORBIDDEN = re.compile(r'[\s\'"`\\;$|&<>(){}*?!#]|[\x00-\x1f\x7f]')


def _check_word(name: str, value: Any) -> str:
    """Return ``value`` if it is a non-empty string without spaces, newlines, quotes or shell syntax."""
    if not isinstance(value, str) or not value:
        raise ValueError(f'{name}: expected a non-empty string, got {value!r}')
    bad = _FORBIDDEN.search(value)
    if bad:
        raise ValueError(
            f'{name}: {value!r} contains {bad.group()!r}; spaces, newlines, quotes and shell characters are refused'
        )
    if value.startswith('-'):
        raise ValueError(f'{name}: {value!r} must not start with `-`')
    return value


def default_known_hosts() -> Path:
    """``~/.ssh/known_hosts``: the host keys that the ``core.ssh`` transport checks (``load_system_host_keys``)."""
    return Path.home() / '.ssh' / 'known_hosts'


def is_known_host(host: str, port: int = 22, known_hosts: Path | None = None) -> bool:
    """Whether ``known_hosts`` (default ``~/.ssh/known_hosts``) holds a key for ``host`` on ``port``.

    Hashed entries (``ssh-keyscan -H``) count, and a port other than 22 is looked up as ``[host]:port``, as ssh and
    paramiko do. A missing or unreadable file holds no keys.
    """
    import paramiko

    path = known_hosts if known_hosts is not None else default_known_hosts()
    if not path.is_file():
        return False
    keys = paramiko.HostKeys()
    try:
        keys.load(str(path))
    except (OSError, ValueError, paramiko.SSHException, paramiko.hostkeys.InvalidHostKey):  # ValueError: not UTF-8
        return False
    return keys.lookup(host if port == 22 else f'[{host}]:{port}') is not None


def check_port(port: Any) -> int:
    """Return ``port`` if it is a TCP port number (1-65535).

    :raises ValueError: otherwise.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f'port: expected a whole number from 1 to 65535, got {port!r}')
    return port


def validate_slurm_target(
    host: str, user: str, key: str, known_hosts: Path | None = None, port: int = DEFAULT_PORT
) -> tuple[str, str, str]:
    """Check the host, user, private-key path and ssh port; return them with the key path made absolute.

    The host's key must already be in ``known_hosts`` (default ``~/.ssh/known_hosts``) for that port (``[host]:port``
    when it is not 22): the Computer is configured to refuse unknown hosts, so without it every job would fail at
    its first connection instead of here.

    :raises ValueError: with the reason when a value is malformed, the key file does not exist or the host is not
        a known host.
    """
    _check_word('host', host)
    check_port(port)
    _check_word('user', user)
    if not re.fullmatch(r'[A-Za-z0-9_.][A-Za-z0-9_.-]*', user):
        raise ValueError(f'user: {user!r} is not a valid user name (letters, digits, `_`, `.`, `-`)')
    _check_word('key', key)
    path = Path(key).expanduser()
    if not path.is_file():
        raise ValueError(f'key: the private key file {str(path)!r} does not exist (ssh-keygen -t ed25519 makes one)')
    resolved = str(path.resolve())
    _check_word('key', resolved)
    hosts_file = known_hosts if known_hosts is not None else default_known_hosts()
    if not is_known_host(host, port=port, known_hosts=hosts_file):
        where, scan = (f'{host!r}', host) if port == DEFAULT_PORT else (f"'[{host}]:{port}'", f'-p {port} {host}')
        raise ValueError(
            f'host: {where} has no key in {str(hosts_file)!r}, and the Computer refuses unknown hosts; check the '
            f"host's fingerprint with your cluster's documentation, then `ssh-keyscan -H {scan} >> {hosts_file}`"
        )
    return host, user, resolved


def check_login(host: str, user: str, key: str, port: int = DEFAULT_PORT, timeout: float = 20.0) -> list[str]:
    """Log in as the Computer will (the key only, known host keys only, no login shell) and list the partitions.

    :return: the cluster's partition names (``sinfo --all --noheader --format=%R``).
    :raises ValueError: naming what failed: the connection, the login, or ``sinfo`` on the host.
    """
    import paramiko

    client = paramiko.SSHClient()
    client.load_system_host_keys()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    where = f'{user}@{host}' + ('' if port == DEFAULT_PORT else f':{port}')
    try:
        client.connect(
            host, port=port, username=user, key_filename=key, look_for_keys=False, allow_agent=False,
            timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
        )  # fmt: skip
        _, stdout, stderr = client.exec_command('sinfo --all --noheader --format=%R', timeout=timeout)
        output, errors = stdout.read().decode(errors='replace'), stderr.read().decode(errors='replace')
        status = stdout.channel.recv_exit_status()
    except paramiko.AuthenticationException as exc:
        raise ValueError(f'cannot log in as {where} with the key {key!r} ({exc}): check --slurm-user and --slurm-key; '
                         'nothing was changed') from exc  # fmt: skip
    except (OSError, paramiko.SSHException) as exc:
        raise ValueError(f'cannot reach {where} ({type(exc).__name__}: {exc}); nothing was changed') from exc
    finally:
        client.close()
    if status != 0:
        raise ValueError(
            f'`sinfo` failed on {host} (exit {status}: {errors.strip() or "no message"}): is SLURM on the PATH of a '
            'non-login shell there? nothing was changed'
        )
    return sorted({line.strip() for line in output.splitlines() if line.strip()})


def ensure_slurm_computer(
    host: str,
    user: str,
    key: str,
    label: str = SLURM_COMPUTER,
    workdir: str | None = None,
    partition: str | None = None,
    port: int = DEFAULT_PORT,
) -> Any:
    """Return the Computer ``label`` (``core.ssh`` + ``core.slurm`` on ``host``), creating and configuring it.

    The Computer is configured for the current AiiDA user with ``username``, ``key_filename``, ``port``,
    ``look_for_keys=False``, the host keys of ``~/.ssh/known_hosts`` (an unknown host is refused), a short
    ``safe_interval`` and no login shell; the minimum poll interval is 1 s.
    An existing Computer of that label is reused (and re-configured); one on another host or with another
    transport or scheduler is refused.

    :raises ValueError: when an argument is malformed or the existing Computer does not match.
    """
    from aiida import orm
    from aiida.common.exceptions import NotExistent

    host, user, key = validate_slurm_target(host, user, key, port=port)
    _check_word('label', label)
    if workdir is not None and (
        not isinstance(workdir, str) or not workdir.startswith('/') or re.search(r'[\s\'"`\\;]', workdir)
    ):
        raise ValueError(f'workdir: expected an absolute path without spaces or quotes, got {workdir!r}')
    if partition:  # '' clears a stored partition
        _check_word('partition', partition)

    try:
        computer = orm.load_computer(label)
    except NotExistent:
        computer = orm.Computer(
            label=label,
            hostname=host,
            description=f'SLURM on {host}, reached over ssh (aiida-mlmat)',
            transport_type=TRANSPORT,
            scheduler_type=SCHEDULER,
            workdir=workdir or DEFAULT_WORKDIR,
        ).store()
        computer.set_default_mpiprocs_per_machine(1)
    else:
        found = (computer.hostname, computer.transport_type, computer.scheduler_type)
        if found != (host, TRANSPORT, SCHEDULER):
            raise ValueError(
                f'computer {label!r} exists with hostname/transport/scheduler {found}, not '
                f'{(host, TRANSPORT, SCHEDULER)}: choose another label'
            )
        if workdir is not None and computer.get_workdir() != workdir:
            raise ValueError(
                f'computer {label!r} exists with workdir {computer.get_workdir()!r}, not {workdir!r}: '
                'choose another label'
            )
    computer.configure(
        username=user,
        port=port,
        key_filename=key,
        look_for_keys=False,
        allow_agent=False,
        load_system_host_keys=True,  # the host key must be in ~/.ssh/known_hosts (ssh-keyscan HOST >> it)
        key_policy='RejectPolicy',
        safe_interval=SAFE_INTERVAL,
        use_login_shell=False,
    )
    computer.set_minimum_job_poll_interval(POLL_INTERVAL)
    if partition:
        computer.set_property(PARTITION_PROPERTY, partition)
    elif partition == '' and computer.get_property(PARTITION_PROPERTY, None) is not None:
        computer.delete_property(PARTITION_PROPERTY)
    return computer


def slurm_options(computer: Any) -> dict[str, Any]:
    """The ``metadata.options`` a job on this Computer needs: ``queue_name`` when a partition was given.

    mlmat CalcJobs apply it themselves; this is for other CalcJobs (aiida-ase's ``ase.ase``) on the Computer.
    """
    from aiida_mlmat.calcjobs.base import stored_partition

    partition = stored_partition(computer)
    return {'queue_name': partition} if partition else {}


def ensure_slurm_codes(computer: Any) -> dict[str, Any]:
    """Return the Codes on the SLURM Computer: ``mlmat-worker@<label>`` (the same ``mlmat-worker`` as locally)."""
    worker = ensure_code(
        WORKER_CODE,
        computer,
        worker_executable(),
        'mlmat.label',
        f'aiida-mlmat worker (mlmat-worker) run through SLURM on {computer.hostname}',
    )
    return {'worker': worker}


def check_slurm(computer: Any, command: str = 'sinfo --noheader') -> str:
    """Open the Computer's transport, run ``command`` there and return its stdout.

    :raises RuntimeError: when the command fails on the remote side.
    """
    with computer.get_transport() as transport:
        retval, stdout, stderr = transport.exec_command_wait(command)
    if retval != 0:
        raise RuntimeError(f'`{command}` on {computer.label} failed ({retval}): {stderr.strip()}')
    return stdout


def describe_slurm(computer: Any, codes: dict[str, Any]) -> dict[str, Any]:
    """A JSON-able summary of the SLURM Computer and its Codes."""
    auth = computer.get_authinfo(_current_user()).get_auth_params()
    return {
        'computer': {
            'label': computer.label,
            'pk': computer.pk,
            'hostname': computer.hostname,
            'transport': computer.transport_type,
            'scheduler': computer.scheduler_type,
            'workdir': computer.get_workdir(),
            'username': auth.get('username'),
            'port': auth.get('port', DEFAULT_PORT),
            'key_filename': auth.get('key_filename'),
            'partition': computer.get_property(PARTITION_PROPERTY, None),
            'poll_interval': computer.get_minimum_job_poll_interval(),
        },
        'codes': {key: {'label': code.full_label, 'pk': code.pk} for key, code in codes.items()},
    }


def setup_slurm(
    host: str,
    user: str,
    key: str,
    label: str = SLURM_COMPUTER,
    workdir: str | None = None,
    partition: str | None = None,
    port: int = DEFAULT_PORT,
) -> dict[str, Any]:
    """Register the SLURM Computer and its Codes (idempotent) and return :func:`describe_slurm`'s summary."""
    computer = ensure_slurm_computer(host, user, key, label=label, workdir=workdir, partition=partition, port=port)
    return describe_slurm(computer, ensure_slurm_codes(computer))


def _current_user() -> Any:
    from aiida.orm import User

    return User.collection.get_default()
