"""``mlmat setup``: profile, localhost Computer and Codes, idempotently."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from aiida_mlmat.cli.utils import EXIT_SETUP, MlmatCliError
from aiida_mlmat.common.constants import GPAW_WORKER_CODE, WORKER_CODE

ASE_CODE = 'ase-python'
GPAW_ASE_CODE = 'ase-gpaw'
GPAW_PYTHON_CANDIDATES = ('/usr/bin/python3',)
#: Job-script lines that keep a foreign Python from importing the daemon's packages (the daemon exports PYTHONPATH).
ISOLATE_PYTHON = 'unset PYTHONPATH'


def worker_executable() -> str:
    """Path of the ``mlmat-worker`` script installed beside the running Python."""
    candidate = Path(sys.executable).parent / 'mlmat-worker'
    if candidate.exists():
        return str(candidate)
    found = shutil.which('mlmat-worker')
    if not found:
        raise MlmatCliError('the `mlmat-worker` script is not installed: pip install aiida-mlmat', EXIT_SETUP)
    return found


#: Seconds ``verdi daemon stop|restart|status`` wait for the daemon of a profile made here (aiida-core's default,
#: 2 s, times out on a busy 2-core machine and leaves ``daemon restart`` with the daemon stopped).
DAEMON_TIMEOUT = 20


def ensure_profile(name: str | None) -> Any:
    """Load the named (or default) profile; make an embedded one (SQLite + ZeroMQ) with ``verdi presto`` if none.

    A profile made here gets ``daemon.timeout`` :data:`DAEMON_TIMEOUT`; an existing profile is left as it is.
    """
    from aiida import load_profile
    from aiida.common.exceptions import MissingConfigurationError, ProfileConfigurationError
    from aiida.manage.configuration import get_config

    try:
        config = get_config(create=True)
        names = config.profile_names
        previous_default = config.default_profile_name
    except MissingConfigurationError:
        names, previous_default = [], None
    if name is None and names:
        return load_profile(allow_switch=True)
    if name is not None and name in names:
        return load_profile(name, allow_switch=True)
    if name is not None and not re.fullmatch(r'[A-Za-z0-9][A-Za-z0-9_.-]*', name):
        from aiida_mlmat.cli.utils import EXIT_INVALID_INPUT

        raise MlmatCliError(
            f'--profile: {name!r} is not a usable profile name (letters, digits, `_`, `.`, `-`)', EXIT_INVALID_INPUT
        )
    command = [str(Path(sys.executable).parent / 'verdi'), 'presto', '--use-zeromq']
    if name:
        command += ['--profile-name', name]
    if not Path(command[0]).exists():
        found = shutil.which('verdi')
        if found is None:
            raise MlmatCliError(
                'no profile yet, and no `verdi` to make one with: install aiida-core in this Python or put its '
                '`verdi` on PATH',
                EXIT_SETUP,
            )
        command[0] = found
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise MlmatCliError(f'`verdi presto` failed:\n{result.stdout}\n{result.stderr}', EXIT_SETUP)
    from aiida.manage.configuration import reset_config

    reset_config()
    try:
        profile = load_profile(name, allow_switch=True)
    except (MissingConfigurationError, ProfileConfigurationError) as exc:  # pragma: no cover - defensive
        raise MlmatCliError(f'profile not loadable after `verdi presto`: {exc}', EXIT_SETUP) from exc
    note = (
        f'note: made profile `{profile.name}` with `verdi presto`: SQLite + ZeroMQ, for one machine (PostgreSQL + '
        'RabbitMQ: docs/howto/production-profile.md)'
    )
    if name and previous_default and previous_default != name:  # `verdi presto` made the new profile the default
        config = get_config()
        config.set_default_profile(previous_default, overwrite=True).store()
        note += (
            f'; the profiles before it: {", ".join(sorted(names))}; the default profile stays `{previous_default}` '
            f'(`verdi profile set-default {name}` to change it; `verdi profile delete {name}` if the name was a typo)'
        )
    click.echo(note, err=True)
    config = get_config()
    config.set_option('daemon.timeout', DAEMON_TIMEOUT, scope=profile.name)
    config.store()
    return profile


def ensure_localhost(poll_interval: float = 0.2) -> Any:
    """Return the ``localhost`` Computer (core.local + core.direct), creating and configuring it if needed."""
    from aiida import orm
    from aiida.common.exceptions import NotExistent

    try:
        computer = orm.load_computer('localhost')
    except NotExistent:
        workdir = Path(os.environ.get('AIIDA_PATH', Path.home())) / 'mlmat-work'
        computer = orm.Computer(
            label='localhost',
            hostname='localhost',
            description='this machine',
            transport_type='core.local',
            scheduler_type='core.direct',
            workdir=str(workdir),
        ).store()
        computer.set_default_mpiprocs_per_machine(1)
    if not computer.is_configured:
        # No login shell: it costs about 0.7 s on every submission and poll on Debian.
        computer.configure(safe_interval=0.0, use_login_shell=False)
    computer.set_minimum_job_poll_interval(poll_interval)
    return computer


def ensure_code(
    label: str, computer: Any, executable: str, plugin: str, description: str, prepend_text: str = ''
) -> Any:
    """Return the InstalledCode ``label@computer``, creating it (or refusing if it points elsewhere)."""
    from aiida import orm
    from aiida.common.exceptions import NotExistent

    try:
        code = orm.load_code(f'{label}@{computer.label}')
    except NotExistent:
        code = orm.InstalledCode(
            label=label,
            computer=computer,
            filepath_executable=executable,
            default_calc_job_plugin=plugin,
            description=description,
            prepend_text=prepend_text,
        ).store()
        return code
    if str(code.filepath_executable) != executable:
        click.echo(
            f'note: code {label}@{computer.label} exists and runs {code.filepath_executable} (not {executable}); kept',
            err=True,
        )
    return code


def python_has(python: str, modules: str) -> bool:
    """Whether ``python -c 'import MODULES'`` succeeds."""
    try:
        result = subprocess.run([python, '-c', f'import {modules}'], capture_output=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def find_gpaw_python(given: str | None) -> str | None:
    """Return a Python interpreter that imports gpaw: the given one (refused if it cannot), else a known place."""
    if given:
        if not python_has(given, 'gpaw, ase'):
            raise MlmatCliError(f'`{given}` cannot import gpaw and ase; give a Python that has GPAW', EXIT_SETUP)
        return given
    if python_has(sys.executable, 'gpaw'):
        return sys.executable
    for candidate in GPAW_PYTHON_CANDIDATES:
        if Path(candidate).exists() and python_has(candidate, 'gpaw, ase'):
            return candidate
    return None


#: Prints the GPAW version and the keyword arguments its calculator takes (``GPAW.set`` refuses any other).
_GPAW_PROBE = (
    'import inspect, json, gpaw\n'
    'from gpaw.calculator import GPAW\n'
    'names = set(GPAW.default_parameters) | {"txt", "legacy_gpaw", "directory", "atoms", "ignore_bad_restart_file"}\n'
    'names |= {name for name, p in inspect.signature(GPAW.__init__).parameters.items()\n'
    '          if p.kind is p.KEYWORD_ONLY or (p.default is not p.empty and name != "restart")}\n'
    'try:\n'
    '    from gpaw.new.input_parameters import parameter_functions  # the new code (GPAW_NEW, newer releases)\n'
    '    names |= set(parameter_functions)\n'
    'except ImportError:\n'
    '    pass\n'
    'print(json.dumps({"version": gpaw.__version__, "parameters": sorted(names)}))\n'
)


def gpaw_calculator_record(python: str) -> dict[str, Any] | None:
    """``{'version', 'parameters'}`` of the GPAW that ``python`` imports, or None where it cannot be read."""
    import json

    try:
        result = subprocess.run(
            [python, '-c', _GPAW_PROBE], capture_output=True, text=True, timeout=120, check=False,
            env={**os.environ, 'PYTHONPATH': ''},
        )  # fmt: skip
        record = json.loads(result.stdout.strip().splitlines()[-1]) if result.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get('parameters'), list):
        return None
    return {'version': str(record.get('version')), 'parameters': [str(name) for name in record['parameters']]}


def gpaw_worker_wrapper(python: str, directory: Path) -> str:
    """Write (idempotently) a wrapper that runs the worker with a GPAW Python and return its path.

    The wrapper puts a folder holding only a link to this ``aiida_mlmat`` package on PYTHONPATH, so the GPAW
    Python uses its own numpy and ASE and needs only jsonschema besides. Every path is shell-quoted.
    """
    import aiida_mlmat

    if not python_has(python, 'jsonschema'):
        raise MlmatCliError(
            f'`{python}` lacks jsonschema, which the worker needs: install it there '
            '(Debian: apt-get install python3-jsonschema; else pip install jsonschema)',
            EXIT_SETUP,
        )
    package_dir = Path(aiida_mlmat.__file__).resolve().parent
    pythonpath = directory / 'pythonpath'
    pythonpath.mkdir(parents=True, exist_ok=True)
    link = pythonpath / 'aiida_mlmat'
    if (link.is_symlink() or link.exists()) and link.resolve() != package_dir:
        link.unlink()
    if not link.exists():
        link.symlink_to(package_dir, target_is_directory=True)
    wrapper = directory / 'mlmat-worker-gpaw'
    text = (
        '#!/bin/sh\n'
        '# Runs the aiida-mlmat worker with the Python that has GPAW (written by `mlmat setup`).\n'
        '# Only this package on the path: the GPAW Python keeps its own numpy and ASE (a daemon exports its own).\n'
        f'PYTHONPATH={shlex.quote(str(pythonpath))}\n'
        'export PYTHONPATH\n'
        'export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}\n'
        f'exec {shlex.quote(python)} -m aiida_mlmat.worker "$@"\n'
    )
    if not wrapper.exists() or wrapper.read_text() != text:
        wrapper.write_text(text)
        wrapper.chmod(0o755)
    return str(wrapper)


def run_setup(
    profile: str | None = None,
    gpaw_python: str | None = None,
    slurm_host: str | None = None,
    slurm_user: str | None = None,
    slurm_key: str | None = None,
    slurm_partition: str | None = None,
    slurm_port: int | None = None,
) -> dict[str, Any]:
    """Do the whole set-up and return the labels and pks made or found.

    The SLURM host, user and key are checked first, so a bad one is refused before anything is registered.
    """
    if gpaw_python and not Path(gpaw_python).is_file() and not shutil.which(gpaw_python):
        from aiida_mlmat.cli.utils import EXIT_INVALID_INPUT

        raise MlmatCliError(f'--gpaw-python: `{gpaw_python}` does not exist', EXIT_INVALID_INPUT)
    slurm_target = None
    options = {'--slurm-user': slurm_user, '--slurm-key': slurm_key, '--slurm-partition': slurm_partition,
               '--slurm-port': slurm_port}  # fmt: skip
    given = [name for name, value in options.items() if value is not None]
    if given and not slurm_host:
        from aiida_mlmat.cli.utils import EXIT_INVALID_INPUT

        verb = 'need' if len(given) > 1 else 'needs'
        raise MlmatCliError(f'{", ".join(given)} {verb} --slurm-host HOST (the SLURM login node)', EXIT_INVALID_INPUT)
    if slurm_host:
        import getpass

        from aiida_mlmat.cli.slurm import DEFAULT_PORT, check_login, validate_slurm_target
        from aiida_mlmat.cli.utils import EXIT_INVALID_INPUT

        try:
            slurm_target = validate_slurm_target(
                slurm_host,
                slurm_user or getpass.getuser(),
                slurm_key or str(Path.home() / '.ssh' / 'id_ed25519'),
                port=slurm_port or DEFAULT_PORT,
            )
            # log in as the Computer will, before anything is registered: a wrong user, key or partition is
            # refused here, not at the first job
            partitions = check_login(*slurm_target, port=slurm_port or DEFAULT_PORT)
        except ValueError as exc:
            raise MlmatCliError(f'--slurm-*: {exc}', EXIT_INVALID_INPUT) from exc
        if slurm_partition and slurm_partition not in partitions:
            raise MlmatCliError(
                f'--slurm-partition: {slurm_partition!r} is not a partition of {slurm_host} (sinfo lists '
                f'{", ".join(partitions) or "none"}); nothing was changed',
                EXIT_INVALID_INPUT,
            )
    loaded = ensure_profile(profile)
    computer = ensure_localhost()
    codes: dict[str, Any] = {}
    worker = ensure_code(WORKER_CODE, computer, worker_executable(), 'mlmat.label', 'aiida-mlmat worker (mlmat-worker)')
    codes['worker'] = worker
    codes['ase'] = ensure_code(ASE_CODE, computer, sys.executable, 'ase.ase', 'Python with ASE for aiida-ase')
    python = find_gpaw_python(gpaw_python)
    if python and not gpaw_python and not python_has(python, 'jsonschema'):
        click.echo(f'note: {python} has GPAW but lacks jsonschema; the DFT path is not set up', err=True)
        python = None
    if python:
        from aiida.manage.configuration import get_config

        directory = Path(get_config().dirpath) / 'mlmat' / loaded.name
        wrapper = gpaw_worker_wrapper(python, directory)
        codes['gpaw_worker'] = ensure_code(
            GPAW_WORKER_CODE, computer, wrapper, 'mlmat.label', f'aiida-mlmat worker run by {python} (GPAW)'
        )
        codes['gpaw_ase'] = ensure_code(
            GPAW_ASE_CODE,
            computer,
            python,
            'ase.ase',
            f'{python} with GPAW for aiida-ase',
            prepend_text=ISOLATE_PYTHON,
        )
        record = gpaw_calculator_record(python)  # lets a misspelled GPAW keyword be refused before submission
        from aiida_mlmat.calcjobs.label import CALCULATORS_EXTRA

        for key in ('gpaw_worker', 'gpaw_ase'):
            known = dict(codes[key].base.extras.get(CALCULATORS_EXTRA, {}) or {})
            known.pop('gpaw', None)  # a record that cannot be read again is dropped, never kept stale
            codes[key].base.extras.set(CALCULATORS_EXTRA, {**known, **({'gpaw': record} if record else {})})
        from aiida_mlmat.common.constants import TORCH_EXTRA

        codes['gpaw_worker'].base.extras.set(TORCH_EXTRA, False)  # samples and labels; never trains or explores
    slurm = None
    if slurm_target:
        from aiida_mlmat.cli.slurm import DEFAULT_PORT, setup_slurm
        from aiida_mlmat.cli.utils import EXIT_INVALID_INPUT

        try:
            slurm = setup_slurm(*slurm_target, partition=slurm_partition, port=slurm_port or DEFAULT_PORT)
        except ValueError as exc:
            raise MlmatCliError(f'--slurm-*: {exc}', EXIT_INVALID_INPUT) from exc
    return {
        'slurm': slurm,
        'profile': loaded.name,
        'storage': loaded.storage_backend,
        'broker': loaded.process_control_backend,
        'computer': {'label': computer.label, 'pk': computer.pk},
        'codes': {key: {'label': code.full_label, 'pk': code.pk} for key, code in codes.items()},
        'gpaw_python': python,
    }
