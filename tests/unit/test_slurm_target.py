"""Unit tier: the SLURM host, user and key of ``mlmat setup --slurm-*`` are checked before anything is registered.

The host must already have a key in known_hosts: the Computer is configured with paramiko's ``RejectPolicy``, so an
unknown host would otherwise be accepted here and fail every job at its first connection. The known_hosts files
are written by the tests with a key made by paramiko; no ssh server is contacted.
"""

from __future__ import annotations

import json
from pathlib import Path

import paramiko
import pytest
from click.testing import CliRunner

from aiida_mlmat.cli.main import cli
from aiida_mlmat.cli.slurm import check_port, is_known_host, validate_slurm_target

pytestmark = pytest.mark.unit


@pytest.fixture(scope='module')
def host_key() -> paramiko.PKey:
    return paramiko.RSAKey.generate(1024)


def write_known_hosts(path: Path, key: paramiko.PKey, names: list[str], hashed: bool = False) -> Path:
    """A known_hosts file with ``key`` for each of ``names`` (hashed as ``ssh-keyscan -H`` writes them if asked)."""
    lines = []
    for name in names:
        entry = paramiko.HostKeys.hash_host(name) if hashed else name
        lines.append(f'{entry} {key.get_name()} {key.get_base64()}')
    path.write_text('\n'.join(lines) + '\n')
    return path


def test_known_host_lookup_plain_hashed_and_port(tmp_path, host_key):
    """Plain and hashed entries are found; a port other than 22 is ``[host]:port``; no file means no keys."""
    plain = write_known_hosts(tmp_path / 'plain', host_key, ['login.cluster.example', '[gate.example]:2222'])
    assert is_known_host('login.cluster.example', known_hosts=plain)
    assert not is_known_host('login2.cluster.example', known_hosts=plain)
    assert is_known_host('gate.example', port=2222, known_hosts=plain)
    assert not is_known_host('gate.example', known_hosts=plain)
    hashed = write_known_hosts(tmp_path / 'hashed', host_key, ['10.0.0.5'], hashed=True)
    assert '10.0.0.5' not in hashed.read_text()
    assert is_known_host('10.0.0.5', known_hosts=hashed)
    assert not is_known_host('10.0.0.6', known_hosts=hashed)
    assert not is_known_host('login.cluster.example', known_hosts=tmp_path / 'missing')
    garbage = tmp_path / 'garbage'
    garbage.write_bytes(b'\x00\xff not a known_hosts file\n')
    assert not is_known_host('login.cluster.example', known_hosts=garbage)
    broken_key = tmp_path / 'broken_key'
    broken_key.write_text('login.cluster.example ssh-rsa AAAA-not-base64\n')
    assert not is_known_host('login.cluster.example', known_hosts=broken_key)


def test_validate_slurm_target_refuses_an_unknown_host(tmp_path, host_key):
    """A known host passes with the key path made absolute; an unknown one is refused naming the fix."""
    known = write_known_hosts(tmp_path / 'known_hosts', host_key, ['login.cluster.example'], hashed=True)
    key = tmp_path / 'id_ed25519'
    key.write_text('not read here\n')
    assert validate_slurm_target('login.cluster.example', 'alice', str(key), known_hosts=known) == (
        'login.cluster.example',
        'alice',
        str(key.resolve()),
    )
    with pytest.raises(ValueError, match=r"'other\.example' has no key in .*ssh-keyscan -H other\.example >> "):
        validate_slurm_target('other.example', 'alice', str(key), known_hosts=known)
    # the malformed-value checks come first and keep their messages
    with pytest.raises(ValueError, match='does not exist'):
        validate_slurm_target('other.example', 'alice', str(tmp_path / 'nokey'), known_hosts=known)
    with pytest.raises(ValueError, match='shell characters'):
        validate_slurm_target('other.example;id', 'alice', str(key), known_hosts=known)


def test_validate_slurm_target_looks_the_host_up_on_its_port(tmp_path, host_key):
    """A login node on port 2222 is known as `[host]:2222`: its entry for port 22 does not count, and the refusal
    names the port and the `ssh-keyscan -p` that fetches its key; a port outside 1-65535 is refused first."""
    known = write_known_hosts(tmp_path / 'known_hosts', host_key, ['[gate.example]:2222', 'login.example'])
    key = tmp_path / 'id_ed25519'
    key.write_text('not read here\n')
    assert validate_slurm_target('gate.example', 'alice', str(key), known_hosts=known, port=2222)[0] == 'gate.example'
    with pytest.raises(
        ValueError, match=r"'\[login\.example\]:2222' has no key .*ssh-keyscan -H -p 2222 login\.example"
    ):
        validate_slurm_target('login.example', 'alice', str(key), known_hosts=known, port=2222)
    with pytest.raises(ValueError, match=r"'gate\.example' has no key .*`ssh-keyscan -H gate\.example >> "):
        validate_slurm_target('gate.example', 'alice', str(key), known_hosts=known)
    for port in (0, 65536, -22, True, '22', 22.0, None):
        with pytest.raises(ValueError, match=r'port: expected a whole number from 1 to 65535, got '):
            validate_slurm_target('gate.example', 'alice', str(key), known_hosts=known, port=port)
    assert check_port(1) == 1 and check_port(65535) == 65535


@pytest.fixture
def fake_home(tmp_path, monkeypatch):
    """A HOME with an ssh key and no known hosts; profile creation is recorded instead of done (it must not be).

    :return: the home folder, the key path and the list of calls to ``ensure_profile``.
    """
    home = tmp_path / 'home'
    (home / '.ssh').mkdir(parents=True)
    key = home / '.ssh' / 'id_ed25519'
    key.write_text('not read here\n')
    monkeypatch.setenv('HOME', str(home))
    called = []
    monkeypatch.setattr('aiida_mlmat.cli.setup.ensure_profile', lambda *args: called.append(args))
    return home, key, called


def test_setup_slurm_port_is_checked_and_needs_a_host(fake_home):
    """`--slurm-port` outside 1-65535 is a usage error (exit 2) and, like the other `--slurm-*`, needs
    `--slurm-host`; the host is then looked up on that port. Nothing is registered in either case."""
    home, key, called = fake_home
    result = CliRunner().invoke(cli, ['setup', '--slurm-host', 'gate.example', '--slurm-port', '0'])
    assert result.exit_code == 2
    assert "Invalid value for '--slurm-port': 0 is not in the range 1<=x<=65535" in result.output
    result = CliRunner().invoke(cli, ['setup', '--slurm-port', '2222', '--json'])
    assert result.exit_code == 2, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])['error'] == (
        '--slurm-port needs --slurm-host HOST (the SLURM login node)'
    )
    write_known_hosts(home / '.ssh' / 'known_hosts', paramiko.RSAKey.generate(1024), ['gate.example'])
    args = ['setup', '--slurm-host', 'gate.example', '--slurm-key', str(key), '--slurm-port', '2222', '--json']
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert "host: '[gate.example]:2222' has no key in " in json.loads(result.stdout.strip().splitlines()[-1])['error']
    assert called == []


def test_setup_refuses_an_unknown_slurm_host_before_registering_anything(fake_home):
    """`mlmat setup --slurm-host` with a host missing from ~/.ssh/known_hosts: exit 2, one JSON error object, and
    no profile was loaded or made (the check runs before any registration)."""
    home, key, called = fake_home
    args = ['setup', '--slurm-host', 'login.cluster.example', '--slurm-user', 'alice', '--slurm-key', str(key)]
    result = CliRunner().invoke(cli, [*args, '--json'])
    assert result.exit_code == 2, result.output
    error = json.loads(result.stdout.strip().splitlines()[-1])
    assert error['exit_code'] == 2
    assert error['error'].startswith("--slurm-*: host: 'login.cluster.example' has no key in ")
    assert str(home / '.ssh' / 'known_hosts') in error['error']
    assert called == []
    assert 'Traceback' not in result.output


def test_output_file_reports_the_name_numpy_and_matplotlib_write(tmp_path):
    """np.savez appends .npz to any name not ending in it; plots keep a named image type, else get .png."""
    from aiida_mlmat.cli.utils import output_file

    assert output_file(str(tmp_path / 'data.v1'), '--out', '.npz') == tmp_path / 'data.v1.npz'
    assert output_file(str(tmp_path / 'data.NPZ'), '--out', '.npz') == tmp_path / 'data.NPZ.npz'
    assert output_file(str(tmp_path / 'data.npz'), '--out', '.npz') == tmp_path / 'data.npz'
    assert output_file(str(tmp_path / 'map.svg'), '--map', '.png', ('.svg',)) == tmp_path / 'map.svg'
    assert output_file(str(tmp_path / 'map.v1'), '--map', '.png', ('.svg',)) == tmp_path / 'map.v1.png'


def test_mlmat_debug_only_when_asked(monkeypatch):
    """MLMAT_DEBUG=0 keeps the one-line error; MLMAT_DEBUG=1 re-raises for the traceback."""
    import click

    from aiida_mlmat.cli.utils import JsonErrorGroup

    @click.group(cls=JsonErrorGroup)
    def group() -> None:
        pass

    @group.command()
    def boom() -> None:
        raise RuntimeError('boom')

    monkeypatch.setenv('MLMAT_DEBUG', '0')
    result = CliRunner().invoke(group, ['boom'])
    assert result.exit_code == 1 and 'unexpected error RuntimeError: boom' in result.output
    monkeypatch.setenv('MLMAT_DEBUG', '1')
    assert isinstance(CliRunner().invoke(group, ['boom']).exception, RuntimeError)
