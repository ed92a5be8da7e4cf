"""Every ``mlmat`` command line written in the docs and the README names a command and options that exist.

The how-to pages are the users' entry point; a renamed option or subcommand must fail here, not in a user's shell.
Lines are collected from ``console`` blocks of ``docs/**/*.md`` (``$ mlmat ...``) and from README.md's indented
command block (``    mlmat ...``), with ``\\`` continuations joined and ``#`` comments dropped.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from aiida_mlmat.cli.main import cli

ROOT = Path(__file__).resolve().parents[2]
SHELL_OPERATORS = {'|', '||', '&', '&&', ';', '>', '>>', '<', '2>', '(', ')'}
DOC_FILES = sorted([*(ROOT / 'docs').rglob('*.md'), ROOT / 'README.md'])


def _joined_lines(lines: list[str]) -> list[tuple[int, str]]:
    """``(first line number, text)`` with shell continuation lines (a trailing backslash) joined."""
    out: list[tuple[int, str]] = []
    pending, start = '', 0
    for number, line in enumerate(lines, start=1):
        stripped = line.rstrip()
        start = start or number
        if stripped.endswith('\\'):
            pending += stripped[:-1] + ' '
            continue
        out.append((start, pending + stripped))
        pending, start = '', 0
    if pending:
        out.append((start, pending))
    return out


def doc_commands(path: Path) -> list[tuple[str, str]]:
    """``(where, command line)`` of every ``mlmat`` command in ``path``: in fenced blocks other than ``python`` and
    ``ini``, and in indented blocks; a line may start with a ``$`` prompt and environment assignments.
    """
    found: list[tuple[str, str]] = []
    fence: str | None = None
    lines = path.read_text().splitlines()
    for number, line in _joined_lines(lines):
        if line.startswith('```'):
            fence = None if fence is not None else (line[3:].strip() or 'text')
            continue
        if fence in ('python', 'ini'):
            continue
        if fence is None and not line.startswith('    '):
            continue
        text = line.strip()
        text = text[2:] if text.startswith('$ ') else text
        text = re.sub(r'^([A-Z_]+=\S+\s+)+', '', text)
        if text.startswith('mlmat '):
            found.append((f'{path.relative_to(ROOT)}:{number}', text))
    return found


COMMANDS = [item for path in DOC_FILES for item in doc_commands(path)]


def option_names(command: click.Command) -> set[str]:
    names = {'-h', '--help'}
    for param in command.params:
        if isinstance(param, click.Option):
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names


def check_command_line(line: str) -> None:
    """Raise ``AssertionError`` naming the unknown subcommand or option of ``line``."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    tokens = []
    for token in lexer:  # the command ends at the first shell operator (a pipe, `;`, `&&`, a redirection)
        if token in SHELL_OPERATORS:
            break
        tokens.append(token)
    assert tokens[0] == 'mlmat', line
    command: click.Command = cli
    args = tokens[1:]
    path = ['mlmat']
    while True:
        known = option_names(command)
        takes_value = {
            name
            for param in command.params
            if isinstance(param, click.Option) and not param.is_flag and not param.count
            for name in param.opts
        }
        index = 0
        while index < len(args) and args[index].startswith('-'):
            name = args[index].split('=', 1)[0]
            assert name in known, f'`{" ".join(path)}` has no option `{name}` (in: {line})'
            index += 2 if name in takes_value and '=' not in args[index] else 1
        if not isinstance(command, click.Group):
            break
        assert index < len(args), f'`{" ".join(path)}` needs a subcommand (in: {line})'
        name = args[index]
        sub = command.get_command(click.Context(command), name)
        assert sub is not None, f'`{" ".join(path)}` has no subcommand `{name}` (in: {line})'
        path.append(name)
        command, args = sub, args[index + 1 :]
    for token in args:
        if token.startswith('--') or re.fullmatch(r'-[A-Za-z]', token):
            name = token.split('=', 1)[0]
            assert name in known, f'`{" ".join(path)}` has no option `{name}` (in: {line})'


def test_docs_hold_commands() -> None:
    """The collector finds the pages' commands (a broken collector would pass every check below)."""
    pages = {where.split(':')[0] for where, _ in COMMANDS}
    assert len(COMMANDS) >= 40
    assert 'README.md' in pages
    assert 'docs/howto/pipeline.md' in pages
    assert any(line.startswith('mlmat run ') for _, line in COMMANDS)


@pytest.mark.parametrize(('where', 'line'), COMMANDS, ids=[where for where, _ in COMMANDS])
def test_documented_command_exists(where: str, line: str) -> None:
    check_command_line(line)


@pytest.mark.parametrize(
    ('line', 'message'),
    [
        ('mlmat trian PK', 'no subcommand `trian`'),
        ('mlmat train PK --ensembel 3', 'no option `--ensembel`'),
        ('mlmat dataset shw 42', 'no subcommand `shw`'),
        ('mlmat -p x run a.yaml --wiat', 'no option `--wiat`'),
    ],
)
def test_misspelt_command_is_caught(line: str, message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_command_line(line)


#: The commands and options the shared interface contract (design/INTERFACES.md) names, ``--help`` left out.
CONTRACT = {
    'setup': {'--profile', '--gpaw-python', '--slurm-host', '--slurm-user', '--slurm-key', '--json'},
    'reference': {
        '--elements', '--structures', '--calculator', '--calculator-params', '--protocol', '--labeller',
        '--computer', '--wait', '--json',
    },
    'dataset import': {'--label', '--json'},
    'dataset export': set(),
    'dataset show': {'--json'},
    'descriptors': {'--kind', '--rcut', '--out', '--json'},
    'train': {'--ensemble', '--protocol', '--computer', '--device', '--max-minutes', '--wait', '--json'},
    'potential evaluate': {'--json'},
    'potential export': set(),
    'screen': {
        '--potential', '--calculator', '--candidates', '--elements', '--references', '--verify-top',
        '--verify-calculator', '--wait', '--json',
    },
    'run': {'--wait', '--json'},
    'report': {'--out'},
    'provenance': {'--json'},
    'export': set(),
}  # fmt: skip


def _leaf_commands(command: click.Command, path: tuple[str, ...] = ()) -> dict[str, click.Command]:
    if not isinstance(command, click.Group):
        return {' '.join(path): command}
    found: dict[str, click.Command] = {}
    for name, sub in command.commands.items():
        found.update(_leaf_commands(sub, (*path, name)))
    return found


def test_every_command_and_option_is_in_the_contract_or_the_additions_page() -> None:
    """docs/reference/interfaces.md lists what the package adds to the contract: a new command in its first table,
    a new option in the row of its command in the second; an option or command added to the code but to neither
    fails here."""
    page = (ROOT / 'docs' / 'reference' / 'interfaces.md').read_text()
    new_commands = set(re.findall(r'^\| `mlmat ([a-z -]+?)(?: [A-Z\[].*?)?` \|', page, flags=re.MULTILINE))
    rows = dict(re.findall(r'^\| `mlmat ([a-z -]+)` \| (.+) \|$', page, flags=re.MULTILINE))
    assert {'potential list', 'dataset used-by', 'import'} <= new_commands and 'screen' in rows  # the parser reads it
    commands = _leaf_commands(cli)
    assert set(CONTRACT) <= set(commands), f'contract commands gone: {set(CONTRACT) - set(commands)}'
    first_cells = dict(re.findall(r'^\| `mlmat ([a-z -]+?)((?: [A-Z\[].*?)?)` \|', page, flags=re.MULTILINE))
    missing = []
    for name, command in sorted(commands.items()):
        options = {opt for param in command.params if isinstance(param, click.Option) for opt in param.opts}
        options = {opt for opt in options if opt.startswith('--')} - {'--help'}
        if name not in CONTRACT:
            if name not in new_commands:
                missing.append(f'command `mlmat {name}`')
            else:  # its options in its first cell (every command takes --json, as the contract says)
                listed = set(re.findall(r'--[a-z-]+', first_cells.get(name, '')))
                missing += [f'`mlmat {name} {option}`' for option in sorted(options - listed - {'--json'})]
            continue
        added = options - CONTRACT[name]
        listed = set(re.findall(r'--[a-z-]+', rows.get(name, '')))
        missing += [f'`mlmat {name} {option}`' for option in sorted(added - listed)]
        assert CONTRACT[name] <= options, f'`mlmat {name}` lost a contract option: {CONTRACT[name] - options}'
    assert not missing, f'not in docs/reference/interfaces.md: {missing}'
