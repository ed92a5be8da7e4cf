"""Unit tier: `mlmat ... | head` ends quietly when the reader closes the pipe (no "system error BrokenPipeError")."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

#: A command that writes far more than a pipe buffer holds, added to the real `mlmat` group and run through `main`.
SCRIPT = """
import click
from aiida_mlmat.cli.main import cli, main
@cli.command('lines')
def lines():
    for index in range(200000):
        click.echo(f'line {index} ' + 'x' * 60)
main()
"""


def test_a_closed_pipe_ends_the_command_quietly():
    shell = f'{sys.executable} -c "$SCRIPT" lines | head -n 2; echo "status ${{PIPESTATUS[0]}}"'
    result = subprocess.run(
        ['bash', '-c', shell],
        capture_output=True,
        text=True,
        timeout=120,
        env={'SCRIPT': SCRIPT, 'PATH': '/usr/bin:/bin'},
    )
    assert result.stdout.splitlines() == ['line 0 ' + 'x' * 60, 'line 1 ' + 'x' * 60, 'status 141'], result
    assert result.stderr == '', result.stderr
