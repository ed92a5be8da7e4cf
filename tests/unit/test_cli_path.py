"""``mlmat`` run as ``.venv/bin/mlmat`` without an activated environment still finds its own ``verdi``."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aiida_mlmat.cli.utils import put_own_bin_on_path

pytestmark = pytest.mark.unit

OWN_BIN = Path(sys.executable).parent


@pytest.mark.skipif(not (OWN_BIN / 'verdi').exists(), reason='verdi is not installed beside this Python')
def test_own_bin_put_on_path_when_verdi_is_missing(monkeypatch, tmp_path):
    monkeypatch.setenv('PATH', str(tmp_path))  # nothing on PATH: no verdi
    assert shutil.which('verdi') is None
    put_own_bin_on_path()
    assert os.environ['PATH'].split(os.pathsep) == [str(OWN_BIN), str(tmp_path)]
    assert Path(shutil.which('verdi')).parent == OWN_BIN
    put_own_bin_on_path()  # idempotent: verdi is found now
    assert os.environ['PATH'].split(os.pathsep) == [str(OWN_BIN), str(tmp_path)]


@pytest.mark.skipif(not (OWN_BIN / 'verdi').exists(), reason='verdi is not installed beside this Python')
def test_another_environments_verdi_is_not_used(monkeypatch, tmp_path):
    other = tmp_path / 'verdi'
    other.write_text('#!/bin/sh\n')
    other.chmod(0o755)
    monkeypatch.setenv('PATH', str(tmp_path))
    put_own_bin_on_path()
    assert Path(shutil.which('verdi')).parent == OWN_BIN


def test_path_left_alone_when_this_environment_has_no_verdi(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, 'executable', str(tmp_path / 'python'))  # a Python with no verdi beside it
    monkeypatch.setenv('PATH', '/usr/bin')
    put_own_bin_on_path()
    assert os.environ['PATH'] == '/usr/bin'


@pytest.mark.skipif(not (OWN_BIN / 'mlmat').exists(), reason='mlmat is not installed beside this Python')
def test_cli_puts_its_bin_on_path_for_the_daemon(tmp_path):
    """The daemon is started as `verdi` from PATH: the CLI's group callback makes that the environment's own."""
    probe = 'import os, shutil, sys; sys.argv = ["mlmat", "setup", "--help"]; '
    probe += 'from aiida_mlmat.cli.main import cli\n'
    probe += 'try:\n    cli.main(standalone_mode=False)\nexcept SystemExit:\n    pass\n'
    probe += 'print("VERDI", shutil.which("verdi"))'
    env = {**os.environ, 'PATH': str(tmp_path)}
    result = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True, env=env, check=True)
    assert f'VERDI {OWN_BIN / "verdi"}' in result.stdout


@pytest.mark.skipif(not (OWN_BIN / 'verdi').exists(), reason='verdi is not installed beside this Python')
def test_an_empty_path_does_not_put_the_working_directory_on_it(monkeypatch):
    monkeypatch.setenv('PATH', '')
    put_own_bin_on_path()
    assert os.environ['PATH'] == str(OWN_BIN)
