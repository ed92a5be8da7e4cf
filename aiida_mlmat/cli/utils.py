"""Shared helpers of the command line: JSON output, exit codes, node loading, waiting with progress."""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from aiida_mlmat.common.text import TRACEBACK as _TRACEBACK
from aiida_mlmat.common.text import condense_log
from aiida_mlmat.common.values import non_finite_path

#: Exit codes of the ``mlmat`` commands (click itself uses 2 for usage errors).
EXIT_OK = 0
EXIT_INVALID_INPUT = 2
EXIT_PROCESS_FAILED = 3
EXIT_NOT_FOUND = 4
EXIT_SETUP = 5
#: An error the command did not foresee (a bug: ``MLMAT_DEBUG=1`` shows its traceback).
EXIT_UNEXPECTED = 1
#: The waited process (or one under it) is paused: it waits in the daemon for `verdi process play` or `kill`.
EXIT_PAUSED = 6
#: Interrupted (Ctrl-C) while waiting; the process goes on in the daemon.
EXIT_INTERRUPTED = 130
#: The reader of stdout went away (``mlmat ... | head``): quiet, as a shell tool killed by SIGPIPE (128 + 13).
EXIT_BROKEN_PIPE = 141


class MlmatCliError(click.ClickException):
    """A clear error with a banded exit code, printed without a traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_INVALID_INPUT, data: dict[str, Any] | None = None):
        """:param data: what a script needs beside the message (the failed process's pk, a report's path): it joins
        ``error`` and ``exit_code`` in the JSON object that a command given ``--json`` prints when it fails.
        """
        super().__init__(message)
        self.exit_code = exit_code
        self.data: dict[str, Any] = dict(data or {})


class ClosedPipe(Exception):  # noqa: N818 - not an error: the reader went away
    """The reader of stdout closed it: ``mlmat``'s ``main`` exits with ``EXIT_BROKEN_PIPE`` and says nothing."""


#: ``ctx.meta`` keys of the root context: whether ``--json`` was given, whether its JSON object is out.
JSON_REQUESTED = 'mlmat.json_requested'
JSON_PRINTED = 'mlmat.json_printed'


class JsonErrorGroup(click.Group):
    """The ``mlmat`` group: a command given ``--json`` that fails still ends stdout with one JSON object,
    ``{"error": message, "exit_code": code, ...}`` (plus the error's ``data``), beside the message on stderr.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[JSON_REQUESTED] = any(arg == '--json' or arg.startswith('--json=') for arg in args)
        try:
            return super().parse_args(ctx, args)
        except click.ClickException as exc:  # e.g. `mlmat --json ...`: the root group has no --json
            self._echo_error(ctx, exc)
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            self._echo_error(ctx, exc)
            raise
        except (click.exceptions.Exit, click.Abort):
            raise
        except BrokenPipeError:
            # the reader stopped reading (`mlmat provenance PK | head`): nothing to say; stdout goes to /dev/null so
            # that the flush at exit does not fail on the closed pipe again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise ClosedPipe from None
        except KeyboardInterrupt:
            error = MlmatCliError('interrupted', EXIT_INTERRUPTED)
            self._echo_error(ctx, error)
            raise error from None
        except Exception as exc:
            if os.environ.get('MLMAT_DEBUG', '').lower() in ('1', 'true', 'yes'):
                raise
            error = unforeseen_error(exc)
            self._echo_error(ctx, error)
            raise error from exc

    @staticmethod
    def _echo_error(ctx: click.Context, exc: click.ClickException) -> None:
        if ctx.meta.get(JSON_REQUESTED) and not ctx.meta.get(JSON_PRINTED):
            echo_json(error_object(exc))


def unforeseen_error(exc: Exception) -> MlmatCliError:
    """A clear error for an exception that no command check caught.

    A file that cannot be read or written (an ``OSError`` naming a path: a missing folder, a file where a folder is
    wanted, no permission) is invalid input (exit 2); anything else is a bug in aiida-mlmat (exit 1), reported in one
    line that says how to see the traceback.
    """
    if isinstance(exc, OSError) and exc.filename:
        what = exc.strerror or type(exc).__name__
        return MlmatCliError(f'`{exc.filename}`: {what}', EXIT_INVALID_INPUT)
    if isinstance(exc, OSError):  # the system, not the input nor a bug: a full disk, a lost connection
        return MlmatCliError(f'system error {type(exc).__name__}: {exc}', EXIT_UNEXPECTED)
    return MlmatCliError(
        f'unexpected error {type(exc).__name__}: {exc} (a bug in aiida-mlmat; rerun with MLMAT_DEBUG=1 for the '
        'traceback and report it)',
        EXIT_UNEXPECTED,
    )


def error_object(exc: click.ClickException) -> dict[str, Any]:
    """The JSON object of a failed command: ``error`` (the message), ``exit_code`` (as ``mlmat`` exits), ``data``."""
    code = exc.exit_code if isinstance(exc, MlmatCliError) else EXIT_INVALID_INPUT
    return {'error': exc.format_message(), 'exit_code': code, **getattr(exc, 'data', {})}


class FiniteFloatRange(click.FloatRange):
    """A ``click.FloatRange`` that refuses NaN and infinities, which ``FloatRange`` lets through (NaN compares false
    with any bound, and an unbounded side takes ``inf``): a usage error (exit 2) naming the option.
    """

    name = 'finite float range'

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Convert as ``FloatRange`` does, then refuse a value that is not finite."""
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f'{value!r} is not a finite number', param, ctx)
        return number


class GreedyOption(click.Option):
    """An option that takes every following word up to the next option: ``--elements Cu Au``.

    Repeating the option and comma-separated values work too.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault('multiple', True)
        super().__init__(*args, **kwargs)
        self._previous_process: Any = None

    def add_to_parser(self, parser: Any, ctx: click.Context) -> None:
        """Make the parser consume the words that follow the option."""
        super().add_to_parser(parser, ctx)
        for name in self.opts:
            our_parser = parser._long_opt.get(name) or parser._short_opt.get(name)
            if our_parser:
                self._previous_process = our_parser.process
                our_parser.process = self._make_process(parser)
                break

    def _make_process(self, parser: Any) -> Any:
        def process(value: Any, state: Any) -> None:
            prefixes = tuple(parser._opt_prefixes)
            if str(value).startswith('--'):  # `--elements --calculator emt`: no value was given
                raise click.BadOptionUsage(self.name or '', f'{self.opts[0]} needs at least one value, got `{value}`')
            values = [value]
            while state.rargs and not state.rargs[0].startswith(prefixes):
                values.append(state.rargs.pop(0))
            for item in values:
                for part in str(item).split(','):
                    if part:
                        self._previous_process(part, state)

        return process


def echo_json(data: dict[str, Any]) -> None:
    """Print exactly one JSON object on one line (the last line of stdout).

    Numbers that are not finite (NaN, inf: no JSON has them) are printed as ``null``.
    """
    click.echo(json.dumps(_finite(data), default=_json_default, sort_keys=False, allow_nan=False))
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.find_root().meta[JSON_PRINTED] = True


def _json_default(value: Any) -> Any:
    if hasattr(value, 'tolist'):
        return _finite(value.tolist())
    return str(value)


def _finite(value: Any) -> Any:
    """``value`` with every float that is not finite replaced by ``None``, through dicts, lists and tuples."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def load_profile(profile: str | None = None) -> Any:
    """Load the named or default AiiDA profile, with a clear error when there is none."""
    from aiida import get_profile
    from aiida import load_profile as _load
    from aiida.common.exceptions import MissingConfigurationError, ProfileConfigurationError

    current = get_profile()
    if current is not None and (profile is None or profile == current.name):
        return current
    try:
        return _load(profile, allow_switch=True)
    except (MissingConfigurationError, ProfileConfigurationError) as exc:
        setup = f'mlmat -p {profile} setup' if profile else 'mlmat setup'
        try:
            from aiida.manage.configuration import get_config

            names = sorted(get_config().profile_names)
        except Exception:
            names = []
        known = f'; the profiles here: {", ".join(names)} (`verdi profile list`)' if names else ''
        raise MlmatCliError(f'no AiiDA profile to use ({exc}){known}; run `{setup}` to make it', EXIT_SETUP) from exc


#: The largest PK a storage backend holds (a signed 64-bit integer, in SQLite as in PostgreSQL).
MAX_PK = 2**63 - 1


def _by_uuid_prefix(text: str) -> Any:
    """The one node whose UUID starts with ``text``, or ``None``; several raise the error that says how many."""
    from aiida import orm

    found = orm.QueryBuilder().append(orm.Node, filters={'uuid': {'like': f'{text}%'}}, project='*').all(flat=True)
    if len(found) > 1:
        raise MlmatCliError(
            f'the UUIDs of {len(found)} nodes start with `{text}`: give more of the UUID', EXIT_NOT_FOUND
        )
    return found[0] if found else None


def _printed_prefix(identifier: str | int) -> bool:
    """Whether ``identifier`` is a UUID prefix as ``mlmat provenance`` prints it (8 characters) and all digits, which
    AiiDA would take for a PK: about one in forty of them."""
    return isinstance(identifier, str) and re.fullmatch(r'[0-9]{8}', identifier.strip()) is not None


def load_node(identifier: str | int, expected: type | tuple[type, ...] | None = None) -> Any:
    """Load a node by PK, UUID (prefix) or label, with a clear error for a missing or wrong-typed node.

    A PK beyond what a database integer holds (``MAX_PK``) is not found (exit 4), not a database overflow. Eight
    digits, as ``mlmat provenance`` prints a UUID prefix, are a UUID prefix when they start with 0 (no PK is written
    so) or when no node has that PK.
    """
    from aiida import orm
    from aiida.common.exceptions import MultipleObjectsError, NotExistent

    text = str(identifier).strip()
    if _printed_prefix(identifier) and text.startswith('0'):  # `00001234` is a prefix, not PK 1234
        node = _by_uuid_prefix(text)
        if node is None:
            raise MlmatCliError(f'no node whose UUID starts with `{text}`', EXIT_NOT_FOUND)
        return _checked_type(node, identifier, expected)
    if text.lstrip('+-').isdecimal() and not 0 < int(text) <= MAX_PK:  # isdigit() also takes '²', which int() refuses
        raise MlmatCliError(
            f'no node with PK `{identifier}`: a PK is a whole number from 1 to {MAX_PK}', EXIT_NOT_FOUND
        )
    try:
        node = orm.load_node(identifier)
    except MultipleObjectsError as exc:
        same = orm.QueryBuilder().append(orm.Node, filters={'label': text}, project=['id', 'node_type']).all()
        if len(same) > 1:  # a label given to several nodes: name them, so one can be picked by PK
            shown = [f'{pk} ({node_type.rstrip(".").rsplit(".", 1)[-1]})' for pk, node_type in sorted(same)[:10]]
            listed = ', '.join(shown) + (f', ... {len(same) - 10} more' if len(same) > 10 else '')
            raise MlmatCliError(
                f'the label `{identifier}` names {len(same)} nodes (PKs {listed}); give one PK or UUID',
                EXIT_NOT_FOUND,
            ) from exc
        raise MlmatCliError(f'no unique node with PK, UUID or label `{identifier}`: {exc}', EXIT_NOT_FOUND) from exc
    except (NotExistent, ValueError, OverflowError) as exc:
        node = _by_uuid_prefix(text) if _printed_prefix(identifier) else None
        if node is None:
            raise MlmatCliError(f'no unique node with PK, UUID or label `{identifier}`: {exc}', EXIT_NOT_FOUND) from exc
    return _checked_type(node, identifier, expected)


def a_or_an(name: str) -> str:
    """``name`` after its indefinite article: ``an InstalledCode``, ``a PotentialData``."""
    return f'{"an" if name[:1].lower() in "aeiou" else "a"} {name}'


def _checked_type(node: Any, identifier: str | int, expected: type | tuple[type, ...] | None) -> Any:
    if expected is not None and not isinstance(node, expected):
        wanted = ' or '.join(
            a_or_an(kind.__name__) for kind in (expected if isinstance(expected, tuple) else [expected])
        )
        raise MlmatCliError(f'node {identifier} is {a_or_an(type(node).__name__)}, not {wanted}', EXIT_INVALID_INPUT)
    return node


def load_code(label: str) -> Any:
    """Load a Code by full label, with a hint to run ``mlmat setup`` when it is missing."""
    from aiida import orm
    from aiida.common.exceptions import MultipleObjectsError, NotExistent

    try:
        return orm.load_code(label)
    except (NotExistent, MultipleObjectsError) as exc:
        raise MlmatCliError(f'code `{label}` not found: run `mlmat setup` first ({exc})', EXIT_SETUP) from exc


def code_labels() -> list[str]:
    """The full labels (``label@computer``) of this profile's Codes, sorted.

    Not ``QueryBuilder().append(orm.AbstractCode)``: aiida-core filters that class by the type string ``data.core.``,
    which every Data node has. The Data type strings of the profile are resolved to their classes, and the nodes of
    those that are Codes (of aiida-core or of a plugin) are listed.
    """
    from aiida import orm
    from aiida.orm.utils.node import load_node_class

    def is_code(kind: str) -> bool:
        try:
            return issubclass(load_node_class(kind), orm.AbstractCode)
        except Exception:  # a Data plugin installed but broken: not listed, the message stays one line
            return False

    types = orm.QueryBuilder().append(orm.Data, project='node_type').distinct().all(flat=True)
    codes = [kind for kind in types if is_code(kind)]
    if not codes:
        return []
    nodes = orm.QueryBuilder().append(orm.Data, filters={'node_type': {'in': codes}}).all(flat=True)
    return sorted(str(getattr(node, 'full_label', node.label)) for node in nodes)


def load_worker_code(
    computer: str | None,
    code: str | None = None,
    name: str = 'mlmat-worker',
    options: tuple[str, str] = ('--code', '--computer'),
) -> Any:
    """The Code that runs the jobs: ``code`` (a label, ``label@computer``, PK or UUID) when given, else
    ``name@computer``; with a clear error for a Computer that does not exist and for one without that Code.

    :param computer: the Computer's label (``--computer``); a given ``code`` must be on it unless it is None. A
        ``code`` label without ``@`` is looked up on it first (``mlmat setup`` registers ``mlmat-worker`` on
        ``localhost`` and on the SLURM Computer alike).
    :param options: how the caller names the two settings in messages (``code:``/``computer:`` for a YAML file).
    """
    from aiida import orm
    from aiida.common.exceptions import MultipleObjectsError, NotExistent

    code_option, computer_option = options
    if code is not None:
        found = None
        if computer is not None and '@' not in code and not code.isdecimal():
            try:
                found = orm.load_code(f'{code}@{computer}')
            except (NotExistent, MultipleObjectsError, ValueError):
                found = None
        if found is None:
            try:
                found = orm.load_code(code)
            except (NotExistent, MultipleObjectsError, ValueError) as exc:
                codes = ', '.join(code_labels())
                raise MlmatCliError(
                    f'{code_option.rstrip(":")}: no unique Code `{code}` ({exc}); the Codes of this profile: '
                    f'{codes or "none"} (`verdi code list`)',
                    EXIT_SETUP,
                ) from exc
        if found.computer is None:
            raise MlmatCliError(
                f'{code_option} {code}: the Code `{found.label}` belongs to no Computer; the jobs need a Code '
                f'installed on one (`verdi code create core.code.installed --computer ...`)'
            )
        from aiida_mlmat.calcjobs.base import worker_code_error

        error = worker_code_error(found)
        if error:
            raise MlmatCliError(f'{code_option} {code}: {error}', EXIT_SETUP)
        if computer is not None and found.computer.label != computer:
            raise MlmatCliError(
                f'{code_option} {code} runs on the Computer `{found.computer.label}`, not `{computer}` '
                f'({computer_option}): give one of them, or both for the same Computer'
            )
        return found
    computer = computer or 'localhost'
    try:
        orm.load_computer(computer)
    except NotExistent:
        computers = ', '.join(sorted(c.label for c in orm.Computer.collection.all()))
        raise MlmatCliError(
            f'{computer_option.rstrip(":")}: no Computer `{computer}` in this profile; its Computers: '
            f'{computers or "none"} (`verdi computer list`; `mlmat setup` makes `localhost`, and `slurm-ssh` with '
            '--slurm-host)',
            EXIT_SETUP,
        ) from None
    label = f'{name}@{computer}'
    try:
        return orm.load_code(label)
    except (NotExistent, MultipleObjectsError) as exc:
        if name.endswith('gpaw') and computer == 'localhost':
            raise MlmatCliError(
                f'the Computer `localhost` has no Code `{name}` ({exc}): `mlmat setup` found no Python that imports '
                'GPAW. Run `mlmat setup --gpaw-python PATH` with a Python that has GPAW (and jsonschema), e.g. '
                '/usr/bin/python3 after `apt-get install gpaw python3-jsonschema`, or name a Code with '
                f'{code_option}',
                EXIT_SETUP,
            ) from exc
        raise MlmatCliError(
            f'the Computer `{computer}` has no Code `{name}` ({exc}). `mlmat setup` registers it on `localhost` and on '
            f'the SLURM Computer it sets up (--slurm-host); on another Computer create it (`verdi code create '
            f'core.code.installed --label {name} --computer {computer} --filepath-executable PATH/{name}`) or name '
            f'a Code with {code_option}',
            EXIT_SETUP,
        ) from exc


def reference_worker_code(calculator: str, code: Any, options: tuple[str, str] = ('--code', '--computer')) -> Any:
    """The worker Code for jobs of the reference ``calculator`` beside ``code`` (the worker with torch).

    GPAW runs on the GPAW worker Code ``mlmat setup`` made on ``code``'s Computer (its Python has GPAW, no torch).
    On ``localhost`` that Code must exist (the message says how to make it); on another Computer, where the worker
    itself may have GPAW, ``code`` is used when there is none. Other calculators run on ``code``.
    """
    from aiida_mlmat.common.constants import GPAW_WORKER_CODE

    if calculator != 'gpaw' or code.label == GPAW_WORKER_CODE:
        return code
    computer = code.computer.label
    try:
        return load_worker_code(computer, None, GPAW_WORKER_CODE, options=options)
    except MlmatCliError:
        if computer == 'localhost':
            raise
        return code


def calculator_option_error(error: str | None, name_option: str, params_option: str) -> None:
    """Raise a refusal naming the CLI option for a message of :func:`aiida_mlmat.calcjobs.label.calculator_error`.

    ``calculator.parameters: ...`` is about ``params_option`` (e.g. ``--calculator-params``), ``calculator: ...``
    about ``name_option`` (e.g. ``--calculator``).
    """
    if not error:
        return
    for prefix, option in (('calculator.parameters: ', params_option), ('calculator: ', name_option)):
        if error.startswith(prefix):
            raise MlmatCliError(f'{option}: {error[len(prefix) :]}', EXIT_INVALID_INPUT)
    raise MlmatCliError(f'{name_option}: {error}', EXIT_INVALID_INPUT)


def put_own_bin_on_path() -> None:
    """Put the folder of the running Python's scripts first on ``PATH`` when it holds a ``verdi`` that ``PATH`` misses.

    AiiDA starts its daemon as the ``verdi`` found on ``PATH``. ``.venv/bin/mlmat`` run without activating the
    virtual environment would otherwise fail to start it, or start it with another environment's ``verdi`` (a pipx
    install, another venv) that may lack this package or have another aiida-core. Called before aiida is imported
    (it looks ``verdi`` up once).
    """
    import shutil

    own_verdi = Path(sys.executable).parent / 'verdi'
    found = shutil.which('verdi')
    if own_verdi.exists() and (found is None or Path(found).resolve() != own_verdi.resolve()):
        rest = [part for part in os.environ.get('PATH', '').split(os.pathsep) if part]  # '' would mean `.`
        os.environ['PATH'] = os.pathsep.join([str(own_verdi.parent), *rest])


def ensure_daemon(workers: int = 1, quiet: bool = False) -> None:
    """Start the daemon of the loaded profile if it is not running."""
    from aiida.common.exceptions import ConfigurationError
    from aiida.engine.daemon.client import get_daemon_client

    client = get_daemon_client()
    if not client.is_daemon_running:
        if not quiet:
            click.echo(f'starting the AiiDA daemon ({workers} worker(s)) for profile `{client.profile.name}`', err=True)
        try:
            client.start_daemon(number_workers=workers)
        except ConfigurationError as exc:  # no `verdi` to run the daemon with
            raise MlmatCliError(f'cannot start the AiiDA daemon: {exc}', EXIT_SETUP) from exc


def failing_step(node: Any) -> str:
    """Describe the deepest failed process under ``node`` (the step to look at)."""
    from aiida import orm

    failed = [
        child
        for child in node.called_descendants
        if isinstance(child, orm.ProcessNode) and (child.is_failed or child.is_excepted or child.is_killed)
    ]
    target = failed[-1] if failed else node
    state = target.process_state.value if target.process_state else 'unknown'
    status = f', exit status {target.exit_status}' if target.exit_status is not None else ''
    reason = process_reason(target)
    if isinstance(target, orm.CalcJobNode) and target.is_failed:
        from aiida_mlmat.workflows.label import stderr_exception

        cause = stderr_exception(target)  # a script job (aiida-ase running GPAW) says why only in its stderr
        reason += f'; its stderr ends with {cause}' if cause and cause not in reason else ''
    return f'{target.process_label}<{target.pk}> ({state}{status}): {reason}; see `verdi process report {node.pk}`'


def process_reason(node: Any) -> str:
    """Why a process failed: its exit message, for a killed one why it was killed, or for an excepted one the last
    line of its exception."""
    if node.exit_message:
        return node.exit_message
    if node.is_killed:
        return node.process_status or 'killed'
    exception = (getattr(node, 'exception', None) or '').strip()
    if exception:
        return exception.splitlines()[-1].strip()
    return 'no message'


def wait_for(node: Any, quiet: bool = False, poll: float = 1.0, timeout: float | None = None) -> None:
    """Block until the process ends, printing progress to stderr; raise with the failing step if it failed.

    Ctrl-C stops the waiting, not the process: the error (exit code 130) names the process, which goes on.
    """
    start = time.monotonic()
    try:
        _poll_until_terminated(node, start, quiet, poll, timeout)
    except KeyboardInterrupt:
        raise MlmatCliError(
            f'interrupted while waiting; {node.process_label}<{node.pk}> goes on in the daemon '
            f'(`verdi process status {node.pk}`, `verdi process kill {node.pk}`)',
            EXIT_INTERRUPTED,
            {'process': node.pk},
        ) from None
    if not node.is_finished_ok:
        step = failing_step(node)
        data = {'process': node.pk, 'exit_status': node.exit_status, 'failed_step': step}
        name = f'{node.process_label}<{node.pk}> '
        # failed itself, in none of the processes it called: named once, not "X failed at X"
        message = f'{name}failed {step.removeprefix(name)}' if step.startswith(name) else f'{name}failed at {step}'
        raise MlmatCliError(message, EXIT_PROCESS_FAILED, data)
    if not quiet:
        click.echo(f'{node.process_label}<{node.pk}> finished in {time.monotonic() - start:.1f} s', err=True)


_REPORT_PREFIX = re.compile(r'^\[\d+\|[^|\]]*\|[^\]]*\]: ')
#: What aiida-core's restart wrapper (``BaseRestartWorkChain``) reports of every child that needs no restart: left
#: out of the progress (a restart, ``iteration #2`` on, and the handlers' reports are shown).
_ROUTINE_REPORT = re.compile(
    r'^(remote folders will not be cleaned|launching \S+<\d+> iteration #1|work chain completed after 1 iterations)$'
)


def new_reports(node: Any, seen: set[int], descendants: Sequence[Any] | None = None) -> list[tuple[int, str]]:
    """The log messages (``self.report`` of a workflow, a calculation's warnings) of ``node`` and every process it
    called, directly or not, that are not in ``seen`` (log ids); in the order they were written. Every id fetched
    is added to ``seen``, so each message comes once, also one written late (log ids of two daemon workers may
    commit out of order) or by a child that was launched after the last call.

    :param descendants: ``node.called_descendants`` when the caller has them already.
    :return: ``(log id, line)`` pairs, each line naming its process (``ActiveLearningWorkChain<12>: iteration 1:
        ...``); messages below the REPORT level (debug, info) and the restart wrapper's routine reports of a child
        that needed no restart are left out.
    """
    from aiida import orm

    labels = {node.pk: f'{node.process_label}<{node.pk}>'}
    children = node.called_descendants if descendants is None else descendants
    labels.update({child.pk: f'{child.process_label}<{child.pk}>' for child in children})
    ids = orm.QueryBuilder().append(
        orm.Log,
        filters={'dbnode_id': {'in': list(labels)}, 'levelname': {'!in': ['DEBUG', 'INFO']}},
        project=['id'],
    )
    fresh = sorted(set(ids.all(flat=True)) - seen)
    if not fresh:
        return []
    rows = orm.QueryBuilder().append(
        orm.Log, filters={'id': {'in': fresh}}, project=['id', 'dbnode_id', 'levelname', 'message']
    )
    seen.update(fresh)
    lines = []
    for log_id, pk, level, message in sorted(rows.all(), key=lambda row: row[0]):
        prefix = '' if level == 'REPORT' else f'{level}: '
        message = _REPORT_PREFIX.sub('', message, count=1)  # `[pk|label|step]: ` of a workflow's report
        message = condense_log(message)
        if level == 'REPORT' and _ROUTINE_REPORT.match(message):
            continue
        lines.append((log_id, f'{labels[pk]}: {prefix}{message}'))
    return lines


def paused_error(node: Any, paused: Any) -> MlmatCliError:
    """The error of a ``--wait`` that found ``paused`` (``node`` or a process under it) paused: what paused it (its
    status and the last warning it logged, such as ``sbatch``'s refusal) and how to go on or stop."""
    from aiida import orm

    logs = (
        orm.QueryBuilder()
        .append(
            orm.Log,
            filters={'dbnode_id': paused.pk, 'levelname': {'in': ['WARNING', 'ERROR', 'CRITICAL']}},
            project=['message'],
        )
        .order_by({orm.Log: 'id'})
    )
    causes = [condense_log(message) for message in logs.all(flat=True) if _TRACEBACK in message]
    status = paused.process_status or 'paused'
    cause = f'; last error: {causes[-1]}' if causes else ''
    waiting = '' if paused.pk == node.pk else f'; {node.process_label}<{node.pk}> waits for it'
    message = (
        f'{paused.process_label}<{paused.pk}> is paused ({status}){cause}{waiting}. Fix the cause, then '
        f'`verdi process play {paused.pk}` to go on, or `verdi process kill {node.pk}` to stop'
    )
    data = {'process': node.pk, 'paused': paused.pk, 'process_status': status}
    return MlmatCliError(message, EXIT_PAUSED, data)


#: Seconds between the checks, while waiting, that the daemon runs.
DAEMON_CHECK_S = 15.0


def daemon_running() -> bool | None:
    """Whether the daemon of the loaded profile runs (None where that cannot be told)."""
    try:
        from aiida.engine.daemon.client import get_daemon_client

        return bool(get_daemon_client().is_daemon_running)
    except Exception:  # a profile without a daemon client, a broker that cannot be reached: no warning
        return None


#: The wait between two checks of a ``--wait`` is at least this many times what the last check took (so waiting costs
#: at most about a tenth of a core), and at most ``POLL_MAX_S`` seconds (or ``poll``, where that is longer).
POLL_COST_FACTOR = 9.0
POLL_MAX_S = 5.0


def next_wait(poll: float, check_s: float) -> float:
    """Seconds to wait before the next check of a ``--wait``, given ``poll`` and what the last check took (s)."""
    return min(max(poll, POLL_COST_FACTOR * check_s), max(poll, POLL_MAX_S))


def _poll_until_terminated(node: Any, start: float, quiet: bool, poll: float, timeout: float | None) -> None:
    """Print a status line when it changes, and every report of the process and its children as it is written."""
    last = ''
    seen: set[int] = set()

    def echo_reports(descendants: Sequence[Any] | None = None) -> None:
        for _, text in new_reports(node, seen, descendants):
            click.echo(f'[{time.monotonic() - start:6.1f} s]   {text}', err=True)

    daemon_checked, daemon_down = time.monotonic(), False
    while not node.is_terminated:
        if timeout is not None and time.monotonic() - start > timeout:
            raise MlmatCliError(
                f'process {node.pk} still running after {timeout} s', EXIT_PROCESS_FAILED, {'process': node.pk}
            )
        if time.monotonic() - daemon_checked > DAEMON_CHECK_S:  # nothing moves while no daemon runs
            daemon_checked = time.monotonic()
            running = daemon_running()
            if running is False and not daemon_down:
                click.echo(
                    f'warning: the daemon of this profile is not running, so {node.process_label}<{node.pk}> cannot '
                    'go on: `verdi daemon start` (it resumes where it stopped); still waiting',
                    err=True,
                )
            daemon_down = running is False
        checked = time.monotonic()
        descendants = node.called_descendants
        paused = [process for process in (node, *descendants) if process.paused and not process.is_terminated]
        if paused:
            if not quiet:
                echo_reports(descendants)
            raise paused_error(node, paused[-1])
        done = sum(1 for child in descendants if child.is_terminated)
        line = f'[{time.monotonic() - start:6.1f} s] {node.process_label}<{node.pk}>: {node.process_state.value}'
        line += f', {done}/{len(descendants)} steps done'
        if node.process_status:
            line += f' ({node.process_status})'
        if not quiet and line.split('] ', 1)[1] != last:
            click.echo(line, err=True)
            last = line.split('] ', 1)[1]
        if not quiet:
            echo_reports(descendants)
        # a check reads every process under the workflow: on a big one it costs tenths of a second, so the wait
        # between checks grows with it (up to POLL_MAX_S), keeping the waiting below a tenth of a core
        time.sleep(next_wait(poll, time.monotonic() - checked))
    if not quiet:
        echo_reports()  # what was written in the last interval


def output_file(path: str, option: str, suffix: str | None = None, accepted: tuple[str, ...] = ()) -> Path:
    """Check, before any work, that ``path`` can be written as a file; return the path that will be written.

    :param suffix: appended when ``path`` does not end in it or in one of ``accepted`` (``np.savez`` appends
        ``.npz`` to any other name; plots are written as ``.png`` unless another image type is named).
    :raises MlmatCliError: (exit 2) when its folder does not exist or it is an existing folder.
    """
    target = Path(path)
    if suffix and not target.name.endswith((suffix, *accepted)):
        target = target.with_name(target.name + suffix)
    if target.is_dir():
        raise MlmatCliError(f'{option}: `{target}` is a folder; give a file name')
    if target.parent.exists() and not target.parent.is_dir():
        raise MlmatCliError(f'{option}: `{target.parent}` is a file, so `{target}` cannot be written')
    if not target.parent.is_dir():
        raise MlmatCliError(f'{option}: the folder `{target.parent}` of `{target.name}` does not exist')
    return target


def output_folder(path: str, option: str, empty: bool = False) -> Path:
    """Check, before any work, that ``path`` can be used as an output folder (made if missing); return it.

    :param empty: refuse an existing folder that holds anything (files of an earlier export would mix in).
    :raises MlmatCliError: (exit 2) when it is a file, or with ``empty`` a folder that is not empty.
    """
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise MlmatCliError(f'{option}: `{target}` exists and is not a folder')
    if empty and target.is_dir() and any(target.iterdir()):
        raise MlmatCliError(f'{option}: the folder `{target}` is not empty; give a new or empty folder')
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise MlmatCliError(f'{option}: `{parent}` is a file, so `{target}` cannot be made')
            break
    return target


def check_elements_option(elements: Sequence[str], option: str = '--elements') -> None:
    """Refuse an unknown chemical symbol given to ``option`` (exit 2), naming it."""
    from aiida_mlmat.worker.structures import check_element

    for symbol in elements:
        try:
            check_element(symbol)
        except ValueError as exc:
            raise MlmatCliError(f'{option}: {exc}') from exc


def read_structures(paths: Sequence[str]) -> list[Any]:
    """Read structures from files (CIF, POSCAR, extxyz, ... as ASE reads them), with clear errors."""
    from ase.io import read

    from aiida_mlmat.worker.structures import InvalidConfigurationError, check_configuration

    frames = []
    for path in paths:
        try:
            read_frames = read(path, index=':')
        except FileNotFoundError as exc:
            raise MlmatCliError(f'structure file `{path}` does not exist') from exc
        except Exception as exc:
            detail = f'{type(exc).__name__}: {exc}' if str(exc) else f'its content is not valid ({type(exc).__name__})'
            raise MlmatCliError(f'cannot read structure file `{path}`: {detail}') from exc
        read_frames = read_frames if isinstance(read_frames, list) else [read_frames]
        if not read_frames:
            raise MlmatCliError(f'structure file `{path}` holds no structure')
        for position, atoms in enumerate(read_frames):
            try:
                check_configuration(atoms)
            except InvalidConfigurationError as exc:
                raise MlmatCliError(f'{path}, structure {position}: {exc}') from exc
        frames.extend(read_frames)
    return frames


def parse_json_option(value: str | None, name: str) -> dict[str, Any]:
    """Parse a JSON object given on the command line."""
    if not value:
        return {}

    def no_constant(constant: str) -> None:
        raise MlmatCliError(f'{name}: {constant} is not a number that can be stored; give a finite value')

    try:
        data = json.loads(value, parse_constant=no_constant)
    except json.JSONDecodeError as exc:
        raise MlmatCliError(f'{name}: not valid JSON ({exc})') from exc
    if not isinstance(data, dict):
        raise MlmatCliError(f'{name}: expected a JSON object such as {{"key": value}}')
    where = non_finite_path(data)
    if where is not None:
        raise MlmatCliError(f'{name}: `{where}` is not a finite number (too large?); give a finite value')
    return data


def stdout_is_json(json_output: bool) -> bool:
    """Whether human progress must stay off stdout."""
    return json_output or not sys.stdout.isatty()
