"""Engine tier: the ``mlmat`` command line against the test profile and its daemon."""

from __future__ import annotations

import json

import pytest
from aiida import orm
from ase.build import bulk
from ase.io import write
from click.testing import CliRunner

from aiida_mlmat.cli.main import cli
from aiida_mlmat.cli.utils import new_reports, wait_for
from aiida_mlmat.data.configurations import ConfigurationSetData
from tests.engine.helpers import assert_labels_equal_emt

pytestmark = pytest.mark.engine


def invoke(*args: str):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result


def last_json(result) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


def n_sets() -> int:
    return orm.QueryBuilder().append(ConfigurationSetData).count()


def test_reference_wait_json_and_dataset_round_trip(started_daemon_client, worker_code, tmp_path, capsys):
    """`mlmat reference --wait --json` prints the contract; show/export/import round-trip the set."""
    seed = tmp_path / 'Cu.cif'
    write(seed, bulk('Cu', 'fcc', a=3.6, cubic=True))
    overrides = json.dumps({'sample': {'supercell': [1, 1, 1], 'rattle': {'count': 3, 'stdev': 0.05}}, 'chunk_size': 3})
    result = invoke(
        'reference',
        '--structures',
        str(seed),
        '--elements',
        'Cu',
        '--calculator',
        'emt',
        '--overrides',
        overrides,
        '--code',
        worker_code.full_label,  # the Code named (its Computer follows), not found from --computer
        '--wait',
        '--json',
    )
    assert result.exit_code == 0, result.output
    data = last_json(result)
    assert set(data) == {'process', 'configurations', 'n_configurations', 'n_excluded'}
    assert {
        calc.inputs.code.uuid for calc in orm.load_node(data['process']).called_descendants if 'code' in calc.inputs
    } == {worker_code.uuid}
    # fast protocol with these overrides: seed + 3 rattles + 2 strains + 1 vacancy
    assert data['n_configurations'] == 7 and data['n_excluded'] == 0
    node = orm.load_node(data['configurations'])
    process = orm.load_node(data['process'])
    assert process.outputs.configurations.uuid == node.uuid

    # `--wait` without --json prints the reports of the workflow and of the processes it called, each once, in order
    seen: set[int] = set()
    reports = [text for _, text in new_reports(process, seen)]
    assert reports[0].startswith(f'ReferenceWorkChain<{process.pk}>: sampling 1 seeds in SampleCalculation<')
    assert reports[-1] == (f'ReferenceWorkChain<{process.pk}>: labelled set {node.uuid}: 7 configurations, 0 excluded')
    assert any(text.startswith(f'ReferenceWorkChain<{process.pk}>: labelling 7 configurations') for text in reports)
    # the restart wrapper's routine lines of a chunk that needed no restart are left out; its reports are not
    assert not any('remote folders will not be cleaned' in text or 'iteration #1' in text for text in reports)
    raw = [log.message for child in process.called_descendants for log in orm.Log.collection.get_logs_for(child)]
    assert any('remote folders will not be cleaned' in message for message in raw)  # they were there to leave out
    assert seen and new_reports(process, seen) == []  # each message once
    assert [text for _, text in new_reports(process, set())] == reports
    wait_for(process)  # ended already: the status line is skipped, the reports are printed once
    printed = capsys.readouterr().err.splitlines()
    assert [line.split('s]   ', 1)[1] for line in printed if 's]   ' in line] == reports
    assert printed[-1].startswith(f'ReferenceWorkChain<{process.pk}> finished in ')

    shown = last_json(invoke('dataset', 'show', node.uuid, '--json'))
    assert shown['n_configurations'] == 7 and shown['species'] == ['Cu'] and shown['sha256'] == node.sha256

    exported = tmp_path / 'out.extxyz'
    assert invoke('dataset', 'export', str(node.pk), str(exported)).exit_code == 0
    assert exported.read_bytes() == node.get_content()
    imported = last_json(invoke('dataset', 'import', str(exported), '--label', 'again', '--json'))
    copy = orm.load_node(imported['configurations'])
    assert imported['n_configurations'] == 7 and copy.sha256 == node.sha256
    assert_labels_equal_emt(copy.get_atoms())


@pytest.mark.parametrize(
    ('content', 'message'),
    [
        (b'', 'empty'),
        (b'this is not\nan extxyz file\n', 'cannot be read as extxyz'),
        (b'3\nLattice="5 0 0 0 5 0 0 0 5" Properties=species:S:1:pos:R:3\nCu 0 0 0\nCu 1 1 1\n', 'cannot be read'),
        (b'\x89PNG\r\n\x1a\n\x00\x00', 'not a text extxyz file'),
        (
            b'2\nLattice="5 0 0 0 5 0 0 0 5" Properties=species:S:1:pos:R:3 pbc="T T T"\nCu 0 0 0\nCu 0.2 0 0\n',
            'closer',
        ),
        (
            b'2\nLattice="3.6 0 0 0 3.6 0 0 0 3.6" Properties=species:S:1:pos:R:3:forces:R:2 energy=-1.0 pbc="T T T"\n'
            b'Cu 0 0 0 0.1 0.2\nCu 1.8 1.8 0 0.1 0.2\n',
            'forces has shape (2, 2), expected (2, 3)',
        ),
        (
            b'2\nLattice="3.6 0 0 0 3.6 0 0 0 3.6" Properties=species:S:1:pos:R:3:forces:R:3 energy=nan pbc="T T T"\n'
            b'Cu 0 0 0 0.1 0.2 0\nCu 1.8 1.8 0 0.1 0.2 0\n',
            'energy is not finite',
        ),
    ],
)
def test_dataset_import_refuses_corrupt_files(tmp_path, content, message):
    """A corrupt or unphysical file gets a clear message, exit code 2, and nothing is stored."""
    path = tmp_path / 'bad.extxyz'
    path.write_bytes(content)
    before = n_sets()
    result = invoke('dataset', 'import', str(path), '--json')
    assert result.exit_code == 2
    assert message in result.stderr and 'nothing was stored' in result.stderr
    assert n_sets() == before
    # With --json the refusal still ends stdout with one JSON object, for scripts.
    refusal = last_json(result)
    assert refusal['exit_code'] == 2 and message in refusal['error'] and 'nothing was stored' in refusal['error']
    assert len(result.stdout.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ('args', 'message'),
    [
        (['--elements', 'Cu', 'Qq', '--calculator', 'emt'], 'unknown element `Qq`'),
        (['--elements', 'Cu', '--calculator', 'nosuch'], 'unknown calculator `nosuch`'),
        (['--elements', 'Cu', '--calculator', 'emt', '--calculator-params', '{bad'], 'not valid JSON'),
        (['--elements', 'Cu', '--calculator', 'emt', '--calculator-params', '{"foo": 1}'], "no parameter(s) ['foo']"),
        (['--elements', 'Cu', '--calculator', 'emt', '--calculator-params', '{"asap_cutoff": "yes"}'], 'true or false'),
        (['--calculator', 'emt'], 'give `--elements`'),
        (
            ['--elements', 'Ar', '--calculator', 'lj', '--calculator-params', '{"sigma": -1}'],
            '--calculator-params: `sigma` must be a positive number, got -1',
        ),
        (['--elements', 'Fe', '--calculator', 'emt'], "--calculator: `emt` cannot treat the elements ['Fe']"),
        (['--structures', '/no/such/file.cif', '--calculator', 'emt'], 'does not exist'),
    ],
)
def test_reference_refuses_bad_input(worker_code, args, message):
    """Bad input to `mlmat reference` is refused early with exit code 2 and no process."""
    before = orm.QueryBuilder().append(orm.ProcessNode).count()
    result = invoke('reference', *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert orm.QueryBuilder().append(orm.ProcessNode).count() == before


def test_reference_checks_the_elements_of_structure_files_early(worker_code, tmp_path):
    from ase.build import bulk
    from ase.io import write

    seed = tmp_path / 'Fe.cif'
    write(seed, bulk('Fe', 'bcc', a=2.87))
    before = orm.QueryBuilder().append(orm.Node).count()
    result = invoke('reference', '--structures', str(seed), '--calculator', 'emt', '--json')
    assert result.exit_code == 2, result.output
    error = last_json(result)['error']
    assert error.startswith("--calculator: `emt` cannot treat the elements ['Fe'] (in --structures)")
    result = invoke('reference', '--elements', 'Cu', '--structures', str(seed), '--calculator', 'emt', '--json')
    assert result.exit_code == 2, result.output
    assert "--structures: elements ['Fe'] are not in the chemical system ['Cu']" in last_json(result)['error']
    assert orm.QueryBuilder().append(orm.Node).count() == before


def test_elements_option_accepts_spaces_commas_and_repeats(worker_code):
    """`--elements Cu Au`, `--elements Cu,Au` and `--elements Cu --elements Au` are the same."""
    for args in (['--elements', 'Cu', 'Xq'], ['--elements', 'Cu,Xq'], ['--elements', 'Cu', '--elements', 'Xq']):
        result = invoke('reference', *args, '--calculator', 'emt')
        assert 'unknown element `Xq`' in result.output


def test_json_errors_end_stdout_with_one_object(worker_code):
    """A usage error or a refusal given `--json` prints `{"error", "exit_code"}` as stdout's only line; without
    `--json` stdout stays empty and the message goes to stderr."""
    missing = invoke('dataset', 'show', '--json')
    assert missing.exit_code == 2
    assert last_json(missing) == {'error': "Missing argument 'IDENTIFIER'.", 'exit_code': 2}
    unknown = invoke('dataset', 'show', '999999999', '--json')
    assert unknown.exit_code == 4 and len(unknown.stdout.strip().splitlines()) == 1
    data = last_json(unknown)
    assert data['exit_code'] == 4 and data['error'].startswith('no unique node with PK, UUID or label `999999999`')
    plain = invoke('dataset', 'show', '999999999')
    assert plain.exit_code == 4 and plain.stdout == '' and 'no unique node' in plain.stderr


def test_failed_process_with_wait_json_names_it(started_daemon_client, worker_code, tmp_path):
    """`--wait --json` on a workflow that fails exits 3 and still prints one JSON object naming the process, its
    exit status and the failing step, so a script can find what ran."""
    from aiida_mlmat.workflows.reference import ReferenceWorkChain

    seed = tmp_path / 'Cu.cif'
    write(seed, bulk('Cu', 'fcc', a=3.6, cubic=True))
    overrides = json.dumps({'sample': {'supercell': [1, 1, 1], 'rattle': {'count': 2, 'stdev': 0.05}}, 'chunk_size': 8})
    result = invoke(
        'reference',
        '--structures',
        str(seed),
        '--elements',
        'Cu',
        '--calculator',
        'faulty',
        '--calculator-params',
        json.dumps({'raise_for': ['Cu4', 'Cu3']}),
        '--overrides',
        overrides,
        '--wait',
        '--json',
    )
    assert result.exit_code == 3, result.output
    assert len(result.stdout.strip().splitlines()) == 1
    data = last_json(result)
    status = ReferenceWorkChain.exit_codes.ERROR_ALL_LABELS_FAILED.status
    assert data['exit_code'] == 3 and data['exit_status'] == status
    node = orm.load_node(data['process'])
    assert node.is_failed and node.exit_status == status
    assert data['error'].startswith(f'ReferenceWorkChain<{node.pk}> failed at ')
    assert 'exit status' in data['failed_step'] and data['failed_step'] in data['error']


def _stored_set(n: int = 4) -> ConfigurationSetData:
    from tests.unit.test_model import emt_data

    return ConfigurationSetData(emt_data(n, 3)).store()


def _refused(result, message: str, code: int = 2) -> dict:
    """The command exited with ``code``, without a traceback, and its JSON error names ``message``."""
    assert result.exit_code == code, result.output
    assert 'Traceback' not in result.output
    error = last_json(result)
    assert error['exit_code'] == code and message in error['error'], error
    return error


def n_processes() -> int:
    return orm.QueryBuilder().append(orm.ProcessNode).count()


def test_output_paths_are_checked_before_any_work(worker_code, tmp_path):
    """An output file in a missing folder, a folder that is a file, or a non-empty export folder is refused with
    exit 2 before anything runs or is stored; the JSON names the files actually written."""
    dataset = _stored_set()
    before = n_processes()
    _refused(
        invoke('dataset', 'export', str(dataset.pk), str(tmp_path / 'no' / 'x.extxyz'), '--json'),
        'of `x.extxyz` does not exist',
    )
    _refused(
        invoke('descriptors', str(dataset.pk), '--kind', 'chebyshev', '--out', str(tmp_path / 'no' / 'd'), '--json'),
        f'the folder `{tmp_path / "no"}` of `d.npz` does not exist',
    )
    assert n_processes() == before  # the descriptors were not computed (and stored) for nothing
    afile = tmp_path / 'afile'
    afile.write_text('x')
    _refused(invoke('report', '1', '--out', str(afile), '--json'), 'exists and is not a folder')
    config = tmp_path / 'pipeline.yaml'
    config.write_text('elements: [Cu, Au]\n')
    _refused(invoke('run', str(config), '--out', str(afile / 'sub'), '--json'), 'is a file, so')
    assert n_processes() == before
    # the npz and the map are reported where they are written (np.savez adds .npz, plots are .png)
    extxyz = tmp_path / 'set.extxyz'
    dataset.write_extxyz(str(extxyz))
    out, png = tmp_path / 'desc', tmp_path / 'map'
    done = invoke('descriptors', str(extxyz), '--kind', 'chebyshev', '--out', str(out), '--map', str(png), '--json')
    assert done.exit_code == 0, done.output
    result = last_json(done)
    assert result['out'] == str(out) + '.npz' and (tmp_path / 'desc.npz').is_file()
    assert result['map'] == str(png) + '.png' and (tmp_path / 'map.png').is_file()
    # a mistyped path is named as such
    _refused(invoke('descriptors', str(tmp_path / 'nofile.extxyz'), '--json'), 'neither an existing file', code=4)


def test_option_combinations_are_refused_early(worker_code, tmp_path):
    """Options that would be ignored or fail later are refused with exit 2 and no process."""
    from ase.build import bulk as build

    candidate = tmp_path / 'Ag.cif'
    write(candidate, build('Ag', 'fcc', a=4.09))
    before = n_processes()
    screen = ['screen', '--elements', 'Cu', 'Au']
    _refused(invoke('reference', '--elements', 'Cu', '--calculator', 'mlmat', '--json'), 'not a reference method')
    _refused(invoke(*screen, '--calculator', 'mlmat', '--generate', '2', '--json'), 'give --potential PK')
    _refused(
        invoke(*screen, '--calculator', 'emt', '--generate', '2', '--candidates', str(candidate), '--json'), 'one of'
    )
    _refused(
        invoke(*screen, '--calculator', 'emt', '--generate', '2', '--verify-calculator', 'emt', '--json'),
        '--verify-calculator needs --verify-top K',
    )
    _refused(
        invoke(*screen, '--calculator', 'emt', '--candidates', str(candidate), '--json'),
        'no candidate lies in the chemical system Cu-Au',
    )
    _refused(invoke('setup', '--slurm-user', 'bob', '--slurm-partition', 'gpu', '--json'), 'need --slurm-host HOST')
    _refused(invoke('setup', '--profile', 'bad name/x', '--json'), "'bad name/x' is not a usable profile name")
    _refused(invoke('setup', '--gpaw-python', '/no/such/python', '--json'), '`/no/such/python` does not exist')
    _refused(invoke('reference', '--elements', '--calculator', 'emt', '--json'), '--elements needs at least one value')
    _refused(invoke(*screen, '--calculator', 'emt', '--candidates', '--json'), '--candidates needs at least one value')
    if not __import__('torch').cuda.is_available():
        extxyz = tmp_path / 'set.extxyz'
        _stored_set(2).write_extxyz(str(extxyz))
        _refused(invoke('descriptors', str(extxyz), '--device', 'cuda', '--json'), 'no CUDA device is visible')
        dataset = _stored_set(2)
        _refused(invoke('train', str(dataset.pk), '--device', 'cuda', '--json'), 'no CUDA device is visible on')
        _refused(invoke('train', str(dataset.pk), '--gpus', '1', '--json'), 'no CUDA device is visible on')
    assert n_processes() == before


def test_potential_export_refuses_a_folder_that_is_not_empty(worker_code, tmp_path):
    """Member files of an earlier export would mix with the new ones (and fail its sha256 check on loading)."""
    from aiida_mlmat.data.potential import PotentialData
    from aiida_mlmat.ml.model import build_model, default_config, save_model

    config = default_config(['Cu', 'Au'])
    config['hidden'] = [4]
    save_model(build_model(config), str(tmp_path / 'member.pt'))
    potential = PotentialData([(tmp_path / 'member.pt').read_bytes()], config=config).store()
    stale = tmp_path / 'stale'
    stale.mkdir()
    (stale / 'member_2.pt').write_bytes(b'old')
    _refused(invoke('potential', 'export', str(potential.pk), str(stale), '--json'), 'is not empty')
    fresh = invoke('potential', 'export', str(potential.pk), str(tmp_path / 'fresh'), '--json')
    assert fresh.exit_code == 0 and last_json(fresh)['files'] == ['member_0.pt']


def test_no_traceback_reaches_the_user(worker_code, monkeypatch):
    """A root-level option error, and an error no check foresaw, still end stdout with the JSON error object; the
    unforeseen one exits 1 in one line that says how to see the traceback."""
    _refused(invoke('--json', 'dataset', 'show', '1'), 'No such option: --json')
    dataset = _stored_set(2)

    def broken(*args, **kwargs):
        raise RuntimeError('boom')

    monkeypatch.setattr('aiida_mlmat.cli.commands.dataset_show', broken)
    error = _refused(invoke('dataset', 'show', str(dataset.pk), '--json'), 'unexpected error RuntimeError: boom', 1)
    assert 'MLMAT_DEBUG=1' in error['error']
    monkeypatch.setenv('MLMAT_DEBUG', '1')
    with pytest.raises(RuntimeError, match='boom'):
        invoke('dataset', 'show', str(dataset.pk), '--json')


def test_json_has_no_nan_and_an_excepted_step_shows_its_exception(worker_code):
    """Non-finite numbers print as null (strict JSON); an excepted process's reason is its exception's last line."""
    from aiida.engine import calcfunction, run_get_node

    from aiida_mlmat.cli.utils import _finite, process_reason

    assert json.loads(json.dumps(_finite({'a': float('nan'), 'b': [1.0, float('inf')], 'c': (2,)}))) == {
        'a': None,
        'b': [1.0, None],
        'c': [2],
    }

    @calcfunction
    def fails(x):
        raise ValueError(f'calculator `nosuch` is not registered ({x.value})')

    with pytest.raises(ValueError):
        run_get_node(fails, x=orm.Int(1))
    node = orm.QueryBuilder().append(orm.CalcFunctionNode).order_by({orm.CalcFunctionNode: {'id': 'desc'}}).first()[0]
    assert node.is_excepted
    assert process_reason(node) == 'ValueError: calculator `nosuch` is not registered (1)'


def test_report_of_an_excepted_workflow_names_the_exception(worker_code):
    """`mlmat report` on a workflow that excepted says why, instead of "exit status None"."""
    from aiida.engine import run_get_node, workfunction

    from aiida_mlmat.cli.pipeline import summary_markdown

    @workfunction
    def breaks(x):
        raise RuntimeError(f'the reference stage lost its Code ({x.value})')

    with pytest.raises(RuntimeError):
        run_get_node(breaks, x=orm.Int(2))
    node = orm.QueryBuilder().append(orm.WorkFunctionNode).order_by({orm.WorkFunctionNode: {'id': 'desc'}}).first()[0]
    text = summary_markdown(node, [])
    assert '- state: excepted: RuntimeError: the reference stage lost its Code (2)' in text  # no exit status None


def test_non_finite_numbers_null_sections_and_conflicts_are_refused(worker_code, tmp_path):
    """NaN, inf and 1e400 cannot be stored: refused naming the key; a null section, a device given twice
    differently, and a bad energy model for screening are refused before any node or process is stored."""
    dataset = _stored_set(2)
    before = n_processes()
    train = ['train', str(dataset.pk)]
    _refused(invoke(*train, '--overrides', '{"training": {"learning_rate": NaN}}', '--json'), 'NaN is not a number')
    _refused(
        invoke(*train, '--overrides', '{"training": {"learning_rate": 1e400}}', '--json'), '`training.learning_rate`'
    )
    _refused(invoke(*train, '--overrides', '{"training": null}', '--json'), '`training` must be a mapping')
    _refused(invoke(*train, '--overrides', '{"training": {"device": "tpu"}}', '--json'), "'tpu' is not one of")
    _refused(invoke(*train, '--device', 'cpu', '--overrides', '{"training": {"device": "cuda"}}', '--json'), 'differ')
    ref = ['reference', '--elements', 'Cu', '--calculator', 'emt']
    _refused(invoke(*ref, '--overrides', '{"sample": null}', '--json'), 'sample: expected a mapping, got None')
    config = tmp_path / 'inf.yaml'
    config.write_text('elements: [Cu]\nactive_learning: {overrides: {training: {training: {learning_rate: .inf}}}}\n')
    _refused(invoke('run', str(config), '--json'), 'active_learning.overrides.training.training.learning_rate: not')
    config.write_text('elements: [Cu]\nactive_learning: {overrides: {training: null}}\n')
    _refused(invoke('run', str(config), '--json'), 'training: expected a mapping, got None')
    assert n_processes() == before

    candidate = tmp_path / 'CuAu.cif'
    atoms = bulk('Cu', 'fcc', a=3.8, cubic=True)
    atoms.set_chemical_symbols(['Cu', 'Au', 'Cu', 'Au'])
    write(candidate, atoms)
    nodes = orm.QueryBuilder().append(orm.Node).count()
    screen = ['screen', '--candidates', str(candidate), '--elements', 'Cu', 'Au']
    _refused(invoke(*screen, '--calculator', 'emt', '--calculator-params', '{"foo": 1}', '--json'), "['foo']")
    _refused(invoke(*screen, '--potential', str(dataset.pk), '--json'), 'not a PotentialData')
    _refused(
        invoke(
            *screen,
            '--calculator',
            'emt',
            '--verify-top',
            '1',
            '--verify-calculator',
            'lj',
            '--verify-params',
            '{"sigma": "x"}',
            '--json',
        ),
        '--verify-params: `sigma` must be a number',
    )
    # verification needs a reference method, not a trained potential
    verify = ['--calculator', 'emt', '--verify-top', '1', '--verify-calculator', 'mlmat', '--json']
    _refused(invoke(*screen, *verify), '--verify-calculator: `mlmat` is a trained potential, not a reference method')
    _refused(
        invoke('screen', '--candidates', str(candidate), '--elements', 'Cu', 'Xx', '--calculator', 'emt', '--json'),
        'unknown element `Xx`',
    )
    _refused(
        invoke('screen', '--candidates', str(candidate), '--elements', 'Cu', 'Cu', '--calculator', 'emt', '--json'),
        'named twice',
    )
    assert orm.QueryBuilder().append(orm.Node).count() == nodes  # nothing stored for a refused screen
    afile = tmp_path / 'afile.extxyz'
    afile.write_text('x')
    _refused(invoke('dataset', 'export', str(dataset.pk), str(afile / 'x.extxyz'), '--json'), 'is a file, so')
    _refused(invoke('setup', '--slurm-partition', 'gpu', '--json'), '--slurm-partition needs --slurm-host')


def test_setup_on_a_fresh_machine_makes_a_profile_with_a_patient_daemon_client(tmp_path):
    """`mlmat setup` with no AiiDA configuration makes the embedded profile (SQLite + ZeroMQ) and registers the
    worker Code; that profile's `daemon.timeout` is 20 s (aiida-core's 2 s times out on a busy machine), and a
    second run changes nothing. Runs in its own AIIDA_PATH, as a user would, in a subprocess."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, 'AIIDA_PATH': str(tmp_path)}
    mlmat = [str(Path(sys.executable).parent / 'mlmat')]
    first = subprocess.run([*mlmat, 'setup', '--json'], env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    config = json.loads((tmp_path / '.aiida' / 'config.json').read_text())
    profile = config['default_profile']
    assert config['profiles'][profile]['options']['daemon.timeout'] == 20
    assert config['profiles'][profile]['process_control']['backend'] == 'core.zeromq'
    assert 'mlmat-worker@localhost' in json.dumps(summary)
    if 'mlmat-worker-gpaw@localhost' in json.dumps(summary):  # a Python with GPAW was found (CI installs one)
        probe = 'from aiida import load_profile, orm; load_profile()'
        probe += "; print(orm.load_code('mlmat-worker-gpaw@localhost').base.extras.get('mlmat_torch'))"
        marked = subprocess.run([sys.executable, '-c', probe], env=env, capture_output=True, text=True, timeout=120)
        assert marked.stdout.strip().splitlines()[-1] == 'False', marked.stderr  # it labels; torch jobs go elsewhere
    second = subprocess.run([*mlmat, 'setup', '--json'], env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert json.loads((tmp_path / '.aiida' / 'config.json').read_text())['profiles'] == config['profiles']


def test_computer_and_code_errors_say_what_exists(aiida_profile, worker_code, tmp_path):
    """A mistyped --computer lists the Computers; a Computer without the worker Code says how to make one; a
    mistyped --code lists the Codes; a --code on another Computer than --computer is refused. Nothing is submitted."""
    dataset = _stored_set()
    before = orm.QueryBuilder().append(orm.ProcessNode).count()
    error = _refused(invoke('train', str(dataset.pk), '--computer', 'slurm', '--json'), 'no Computer `slurm`', 5)
    assert worker_code.computer.label in error['error'] and '`verdi computer list`' in error['error']
    bare = orm.Computer.collection.find(filters={'label': 'bare-no-code'})
    if not bare:
        computer = orm.Computer(
            label='bare-no-code', hostname='localhost', transport_type='core.local', scheduler_type='core.direct'
        ).store()
        computer.set_workdir('/tmp/aiida-bare')
    error = _refused(invoke('train', str(dataset.pk), '--computer', 'bare-no-code', '--json'), 'has no Code', 5)
    assert 'verdi code create core.code.installed --label mlmat-worker --computer bare-no-code' in error['error']
    error = _refused(invoke('train', str(dataset.pk), '--code', 'mlmat-worker-gpu', '--json'), 'no unique Code', 5)
    assert worker_code.full_label in error['error']
    listed = error['error'].split('the Codes of this profile: ', 1)[1].rsplit(' (`verdi code list`)', 1)[0].split(', ')
    codes = orm.QueryBuilder().append(orm.Data, filters={'node_type': {'like': 'data.core.code.%'}}).all(flat=True)
    assert listed == sorted(code.full_label for code in codes)  # the Codes, not every Data node of the profile
    # the Code `mlmat setup` registers for aiida-ase runs Python, not the worker: refused, not failed in the daemon
    ase_python = orm.InstalledCode(
        label='ase-python-cli', computer=worker_code.computer, filepath_executable='/usr/bin/python3',
        default_calc_job_plugin='ase.ase',
    ).store()  # fmt: skip
    error = _refused(invoke('train', str(dataset.pk), '--code', ase_python.full_label, '--json'), 'ase.ase', 5)
    assert f'the Code `{ase_python.full_label}` is registered for the CalcJob plugin `ase.ase`' in error['error']
    _refused(
        invoke('train', str(dataset.pk), '--code', worker_code.full_label, '--computer', 'bare-no-code', '--json'),
        f'runs on the Computer `{worker_code.computer.label}`, not `bare-no-code`',
    )
    assert orm.QueryBuilder().append(orm.ProcessNode).count() == before
    # a mistyped profile lists the profiles there are, rather than only suggesting to make the typo
    error = _refused(invoke('-p', 'no-such-profile', 'dataset', 'show', str(dataset.pk), '--json'), 'no-such', 5)
    assert 'the profiles here: ' in error['error'] and aiida_profile.name in error['error']

    # `--code mlmat-worker --computer C` takes the Code of that label on C, although `mlmat setup` registers the
    # same label on several Computers; without a Computer that label is ambiguous. A Code on no Computer is refused.
    from aiida_mlmat.cli.utils import MlmatCliError, load_worker_code

    bare = orm.load_computer('bare-no-code')
    other = orm.InstalledCode(
        label='mlmat-worker', computer=bare, filepath_executable=str(worker_code.filepath_executable)
    )
    other.store()
    assert load_worker_code('bare-no-code', 'mlmat-worker').uuid == other.uuid
    assert load_worker_code(worker_code.computer.label, 'mlmat-worker').uuid == worker_code.uuid
    assert load_worker_code(None, str(other.pk)).uuid == other.uuid
    with pytest.raises(MlmatCliError, match='no unique Code `mlmat-worker`'):
        load_worker_code(None, 'mlmat-worker')
    (tmp_path / 'run').write_text('#!/bin/sh\n')
    portable = orm.PortableCode(label='portable-worker', filepath_executable='run', filepath_files=tmp_path).store()
    with pytest.raises(MlmatCliError, match='belongs to no Computer') as raised:
        load_worker_code(None, portable.uuid)
    assert raised.value.exit_code == 2
    with pytest.raises(MlmatCliError, match=r'^computer: no Computer `nowhere`'):
        load_worker_code('nowhere', options=('code:', 'computer:'))


def test_potential_list_and_verdi_data_mlmat_show_potentials(worker_code, tmp_path):
    """`mlmat potential list` (and `verdi data mlmat potentials`) list the potentials newest first with their test
    errors, leaving ensemble members out unless asked; `verdi data mlmat show` takes a potential as well as a set."""
    from aiida.cmdline.commands.cmd_data import verdi_data

    from aiida_mlmat.data.potential import PotentialData
    from aiida_mlmat.ml.model import build_model, default_config, save_model
    from aiida_mlmat.workflows.training_functions import make_ensemble

    config = default_config(['Cu', 'Au'])
    config['hidden'] = [4]
    save_model(build_model(config), str(tmp_path / 'member.pt'))
    content = (tmp_path / 'member.pt').read_bytes()
    members = {f'member_{k}': PotentialData([content], config=config).store() for k in (0, 1)}
    metrics = orm.Dict({'forces_rmse': 0.0512, 'energy_rmse_per_atom': 0.0031})
    ensemble = make_ensemble(metrics, _stored_set(), **members)
    ensemble.label = 'cuau-ensemble'
    listed = last_json(invoke('potential', 'list', '--json'))
    assert listed['units'] == {'test_forces_rmse': 'eV/Å', 'test_energy_rmse_per_atom': 'eV/atom'}
    first = listed['potentials'][0]
    assert (first['pk'], first['n_members'], first['member']) == (ensemble.pk, 2, False)
    assert first['label'] == 'cuau-ensemble'
    assert (first['test_forces_rmse'], first['test_energy_rmse_per_atom']) == (0.0512, 0.0031)
    assert not {member.pk for member in members.values()} & {row['pk'] for row in listed['potentials']}
    with_members = last_json(invoke('potential', 'list', '--members', '--limit', '3', '--json'))['potentials']
    assert [(row['pk'], row['member']) for row in with_members] == [
        (ensemble.pk, False), (members['member_1'].pk, True), (members['member_0'].pk, True),
    ]  # fmt: skip
    _refused(invoke('potential', 'list', '--limit', '0', '--json'), '--limit: must be at least 1')
    text = CliRunner().invoke(verdi_data, ['mlmat', 'potentials'], catch_exceptions=False)
    assert text.exit_code == 0 and f'{ensemble.pk:>6}       2 Cu-Au' in text.stdout and '0.0512' in text.stdout
    shown = CliRunner().invoke(verdi_data, ['mlmat', 'show', str(ensemble.pk)], catch_exceptions=False)
    assert shown.exit_code == 0 and 'members: 2' in shown.stdout and 'forces_rmse: 0.0512' in shown.stdout
    code = CliRunner().invoke(verdi_data, ['mlmat', 'show', str(worker_code.pk)])
    assert code.exit_code == 2
    assert f'node {worker_code.pk} is an InstalledCode, not a ConfigurationSetData or a PotentialData' in code.output
