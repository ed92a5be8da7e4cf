"""Unit tier: user text never reaches a shell, scheduler directives cannot be injected, derived file names stay
inside their directory, and pickled payloads in model and checkpoint files never execute.

The job scripts are the ones AiiDA writes for a SLURM Computer (``core.slurm``; the Computer is never contacted)
in a dry run of every ``mlmat.*`` CalcJob.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import torch
from aiida import orm
from aiida.engine import run_get_node
from ase.build import bulk
from ase.io import read

from aiida_mlmat.data.configurations import ConfigurationSetData
from tests.unit.test_model import emt_data

pytestmark = pytest.mark.unit

#: Quotes, command substitution, backticks, separators, a newline and a path escape, in one string.
EVIL = """x'"; rm -rf ~ ; $(touch /tmp/pwned) `id` && echo pwned > ../../escape\n#SBATCH --wrap=id ../"""
#: The same on one line: text in an extxyz comment line (a line break there is refused, see below).
EVIL_LINE = EVIL.replace('\n', ' ')
#: Fragments of EVIL that must never appear in a job script.
EVIL_FRAGMENTS = ('pwned', '$(', '`', 'rm -rf', '--wrap', '../', 'escape')
WORKER = '/opt/mlmat/bin/mlmat-worker'


def _evil_set(frames: list[Any]) -> ConfigurationSetData:
    for frame in frames:
        frame.info['mlmat_name'] = EVIL_LINE
        frame.info['comment'] = EVIL_LINE
    return ConfigurationSetData(frames, label=EVIL)


def _potential(tmp_path: Path) -> Any:
    from aiida_mlmat.data.potential import PotentialData
    from aiida_mlmat.ml.model import build_model, default_config, save_model

    config = default_config(['Cu', 'Au'])
    config['hidden'] = [4]
    save_model(build_model(config), str(tmp_path / 'member.pt'))
    return PotentialData([(tmp_path / 'member.pt').read_bytes()], config=config, label=EVIL)


def calcjob_inputs(name: str, tmp_path: Path) -> dict[str, Any]:
    """Inputs of each mlmat CalcJob, with user text (labels, parameters, names) full of shell syntax."""
    frames = emt_data(6, 1)
    if name == 'mlmat.sample':
        return {
            'structures': _evil_set([bulk('Cu', 'fcc', a=3.6, cubic=True)]),
            'parameters': orm.Dict({'supercell': [1, 1, 1], 'rattle': {'count': 2, 'stdev': 0.05}}),
        }
    if name == 'mlmat.label':
        return {
            'configurations': _evil_set(frames),
            'calculator': orm.Dict({'name': 'gpaw', 'parameters': {'xc': EVIL, 'txt': '../../' + EVIL}}),
        }
    if name == 'mlmat.descriptors':
        return {'configurations': _evil_set(frames), 'descriptor': orm.Dict({'kind': 'chebyshev', 'rcut': 4.0})}
    if name == 'mlmat.train':
        return {
            'train': _evil_set(frames[:4]),
            'validation': _evil_set(frames[4:]),
            'model': orm.Dict({'hidden': [4]}),
            'training': orm.Dict({'epochs': 1}),
        }
    if name == 'mlmat.relax':
        return {
            'structures': _evil_set(frames[:2]),
            'calculator': orm.Dict({'name': 'mlmat'}),
            'potential': _potential(tmp_path),
        }
    raise AssertionError(f'no inputs for the CalcJob `{name}`: add them here so that its job script is checked')


MLMAT_CALCJOBS = sorted(ep.name for ep in entry_points(group='aiida.calculations') if ep.name.startswith('mlmat.'))


@pytest.fixture
def slurm_code(aiida_computer):
    """A worker Code on a SLURM Computer that is never contacted (dry runs only)."""
    computer = aiida_computer(label='slurm-never-used', scheduler_type='core.slurm')
    try:
        return orm.load_code(f'mlmat-worker@{computer.label}')
    except Exception:
        return orm.InstalledCode(label='mlmat-worker', computer=computer, filepath_executable=WORKER).store()


def dry_run(process: Any, inputs: dict[str, Any], options: dict[str, Any], tmp_path: Path) -> Path:
    """Run a CalcJob as a dry run (nothing stored, nothing submitted) and return its sandbox folder."""
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        metadata = {'dry_run': True, 'store_provenance': False, 'label': EVIL[:200], 'description': EVIL}
        _, node = run_get_node(process, **inputs, metadata={**metadata, 'options': options})
    finally:
        os.chdir(cwd)
    return Path(node.dry_run_info['folder'])


@pytest.mark.parametrize('name', MLMAT_CALCJOBS)
def test_job_script_holds_no_user_text(name, slurm_code, tmp_path):
    """The command line is fixed, `mlmat-worker TASK input.json`; user text lives only in input.json and data
    files with fixed names inside the sandbox."""
    from aiida.plugins import CalculationFactory

    process = CalculationFactory(name)
    inputs = {'code': slurm_code, **calcjob_inputs(name, tmp_path)}
    folder = dry_run(process, inputs, {'max_wallclock_seconds': 600, 'queue_name': 'debug'}, tmp_path)
    script = (folder / '_aiidasubmit.sh').read_text()
    for fragment in EVIL_FRAGMENTS:
        assert fragment not in script, (name, fragment)
    commands = [' '.join(line.split()) for line in script.splitlines() if WORKER in line]
    assert commands == [f"'{WORKER}' '{process.TASK}' 'input.json' > 'worker.out'"], commands
    assert re.search(r'^#SBATCH --job-name="[A-Za-z0-9_.-]+"$', script, re.MULTILINE), script
    # Every file is a plain name inside the sandbox; user text travels in them, byte for byte.
    written = sorted(path.relative_to(folder).as_posix() for path in folder.rglob('*') if path.is_file())
    assert all(re.fullmatch(r'[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*', file) for file in written), written
    assert not any(part == '..' for file in written for part in file.split('/')), written
    assert all(path.resolve().is_relative_to(folder.resolve()) for path in folder.rglob('*'))
    data = json.loads((folder / 'input.json').read_text())
    assert data['task'] == process.TASK
    carried = [
        path.name
        for path in folder.glob('*.extxyz')
        if all(atoms.info.get('mlmat_name') == EVIL_LINE for atoms in read(path, index=':', format='extxyz'))
    ]
    assert carried, written  # the names reached the worker unchanged, in a data file
    if name == 'mlmat.label':
        assert data['calculator']['parameters'] == {'xc': EVIL, 'txt': '../../' + EVIL}


def test_line_breaks_in_configuration_text_are_refused():
    """ASE would write a line break in an `info` text raw into the extxyz comment line, making the file unreadable:
    such a set is refused when it is made, with the reason."""
    from aiida_mlmat.worker.structures import InvalidConfigurationError

    atoms = bulk('Cu', 'fcc', a=3.6)
    atoms.info['mlmat_name'] = EVIL
    with pytest.raises(InvalidConfigurationError, match='`mlmat_name` holds a line break'):
        ConfigurationSetData([atoms])


@pytest.mark.parametrize('option', ['queue_name', 'account', 'qos'])
@pytest.mark.parametrize(
    'value',
    [
        'debug\n#SBATCH --wrap=id',
        'debug; touch /tmp/pwned',
        'debug --wrap=id',
        '$(id)',
        '`id`',
        "debug'",
        '../x',
    ],
)
def test_scheduler_directives_refuse_injection(option, value, slurm_code):
    """Partition, account and QoS are written verbatim into `#SBATCH` lines by aiida-core: they are refused
    before submission when they hold anything but a plain name (also through the training workflow)."""
    from aiida_mlmat.calcjobs.train import TrainCalculation
    from aiida_mlmat.workflows.training import TrainingWorkChain

    frames = emt_data(6, 2)
    inputs = {
        'code': slurm_code,
        'train': ConfigurationSetData(frames[:4]),
        'validation': ConfigurationSetData(frames[4:]),
        'metadata': {'options': {'resources': {'num_machines': 1}, option: value}},
    }
    error = TrainCalculation.spec().inputs.validate(inputs)
    assert error is not None and option in str(error) and 'plain scheduler name' in str(error), error
    try:  # the builder refuses it when the option is set, or the workflow's validation does
        builder = TrainingWorkChain.get_builder_from_protocol(
            slurm_code, ConfigurationSetData(emt_data(10, 2)), options={option: value}
        )
        message = str(TrainingWorkChain.spec().inputs.validate(dict(builder._inputs(prune=True))))
    except ValueError as exc:
        message = str(exc)
    assert 'plain scheduler name' in message and repr(value) in message, message


@pytest.mark.parametrize('option', ['queue_name', 'account', 'qos', 'environment_variables'])
def test_aiida_ase_job_options_refuse_injection(option, slurm_code):
    """The reference workflow's `ase_options` go to aiida-ase's CalcJob, which checks none of them: refused here."""
    from aiida_mlmat.workflows.reference import ReferenceWorkChain

    builder = ReferenceWorkChain.get_builder_from_protocol(
        slurm_code, calculator={'name': 'emt'}, elements=['Cu'], labeller='aiida-ase', ase_code=slurm_code
    )
    value = {'A;id': '1'} if option == 'environment_variables' else 'debug\n#SBATCH --wrap=id'
    builder.ase_options = orm.Dict({'resources': {'num_machines': 1}, option: value})
    error = ReferenceWorkChain.spec().inputs.validate(dict(builder._inputs(prune=True)))
    assert error is not None and f'ase_options.{option}' in str(error), error
    builder.ase_options = orm.Dict({'resources': {'num_machines': 1}, 'queue_name': 'debug', 'account': 'p-1'})
    assert ReferenceWorkChain.spec().inputs.validate(dict(builder._inputs(prune=True))) is None


def test_plain_scheduler_names_reach_the_script(slurm_code, tmp_path):
    """Legitimate partition, account and QoS names pass and become single `#SBATCH` lines; GPU counts are ints."""
    from aiida_mlmat.calcjobs.train import TrainCalculation, gpu_scheduler_commands

    options = {
        'max_wallclock_seconds': 3600,
        'queue_name': 'gpu-a100_1',
        'account': 'proj.mat-42',
        'qos': 'normal',
        'custom_scheduler_commands': gpu_scheduler_commands(2),
        'environment_variables': {'OMP_NUM_THREADS': '1; touch /tmp/pwned'},
    }
    folder = dry_run(
        TrainCalculation, {'code': slurm_code, **calcjob_inputs('mlmat.train', tmp_path)}, options, tmp_path
    )
    script = (folder / '_aiidasubmit.sh').read_text()
    for line in ('#SBATCH --partition=gpu-a100_1', '#SBATCH --account=proj.mat-42', '#SBATCH --qos=normal'):
        assert line in script.splitlines()
    assert '#SBATCH --gres=gpu:2' in script.splitlines()
    # aiida-core quotes environment values: the `;` stays inside the value.
    assert "export OMP_NUM_THREADS='1; touch /tmp/pwned'" in script
    with pytest.raises((TypeError, ValueError)):
        gpu_scheduler_commands('2\n#SBATCH --wrap=id')  # type: ignore[arg-type]


@pytest.mark.parametrize('key', ['A;touch /tmp/pwned', 'A B', '$(id)', '1ABC', 'A=B'])
def test_environment_variable_names_are_refused_unless_identifiers(key, slurm_code):
    """aiida-core quotes the values of `environment_variables` but writes their names verbatim (`export NAME=`)."""
    from aiida_mlmat.calcjobs.label import LabelCalculation

    inputs = {
        'code': slurm_code,
        'configurations': ConfigurationSetData(emt_data(2, 3)),
        'calculator': orm.Dict({'name': 'emt'}),
        'metadata': {'options': {'resources': {'num_machines': 1}, 'environment_variables': {key: '1'}}},
    }
    error = LabelCalculation.spec().inputs.validate(inputs)
    assert error is not None and 'environment variable name' in str(error), error


# ------------------------------------------------------------------------------------ file names from inputs


def test_safe_name_and_relative_path_checks():
    """Names derived from labels keep to [A-Za-z0-9._-]; manifest paths may not be absolute or climb out."""
    from aiida_mlmat.archive import check_relative, safe_name

    uuid = '0123abcd-0000-4000-8000-000000000000'
    for label in (EVIL, '..', '../../etc/passwd', '/etc/passwd', '~root', '.hidden', 'a/b\\c', '\x00x', ''):
        name = safe_name(label, uuid)
        assert re.fullmatch(r'[A-Za-z0-9][A-Za-z0-9._-]*', name), (label, name)
        assert ('/' not in name and not name.startswith('.') and name.endswith(uuid[:8])) or name == uuid
        assert (Path('/export') / name).resolve().parent == Path('/export')
    assert safe_name('Cu-Au reference set', uuid) == 'Cu-Au_reference_set-0123abcd'
    for bad in ('../x', '/abs', 'a/../../b', 'a//b', '~/x', 'a\\b', 'a\nb', ''):
        with pytest.raises(ValueError):
            check_relative(bad)
    assert str(check_relative('datasets/set-1234/configurations.extxyz')) == 'datasets/set-1234/configurations.extxyz'


def test_manifest_with_escaping_paths_is_refused(tmp_path):
    """verify_export never reads outside the directory, whatever the manifest says."""
    from aiida_mlmat.archive import EXPORT_FORMAT, ExportVerificationError, sha256_file, verify_export

    outside = tmp_path / 'secret.txt'
    outside.write_text('outside')
    export = tmp_path / 'export'
    export.mkdir()
    (export / 'inside.txt').write_text('inside')
    (export / 'link.txt').symlink_to(outside)
    entry = {'sha256': sha256_file(outside), 'size': outside.stat().st_size}
    for name, message in (('../secret.txt', 'escapes'), (str(outside), 'escapes'), ('link.txt', 'outside')):
        manifest = {'format': EXPORT_FORMAT, 'files': {name: entry}}
        (export / 'MANIFEST.json').write_text(json.dumps(manifest))
        with pytest.raises(ExportVerificationError, match=message):
            verify_export(export, check_archive=False)
    inside = {'inside.txt': {'sha256': sha256_file(export / 'inside.txt'), 'size': 6}}
    (export / 'link.txt').unlink()
    (export / 'MANIFEST.json').write_text(json.dumps({'format': EXPORT_FORMAT, 'files': inside}))
    assert verify_export(export, check_archive=False)['files'] == 1


def test_potential_export_writes_only_member_files_and_cards(tmp_path, aiida_profile):
    """`mlmat potential export` names files by member index, never by label; the evil label stays in the card."""
    node = _potential(tmp_path).store()
    target = tmp_path / 'exported'
    node.export(target)
    assert sorted(path.name for path in target.iterdir()) == ['README.md', 'member_0.pt', 'model-card.json']
    assert not any(path.is_symlink() for path in target.iterdir())


# -------------------------------------------------------------------------------------------- pickle payloads


class _Marker:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, 'w'))


def _run_isolated(code: str, unsafe_env: bool) -> subprocess.CompletedProcess:
    env = {**os.environ}
    if unsafe_env:
        env['TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'] = '1'  # what `import mace` sets for the whole process
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], capture_output=True, text=True, env=env)


@pytest.mark.parametrize('unsafe_env', [False, True])
def test_pickled_checkpoint_never_executes(tmp_path, unsafe_env):
    """Resuming from a checkpoint whose unpickling would create a file: refused with a coded error, no file."""
    marker = tmp_path / 'marker'
    checkpoint = tmp_path / 'evil-checkpoint.pt'
    torch.save({'format': 'aiida-mlmat-checkpoint/1', 'state': _Marker(str(marker))}, checkpoint)
    frames = tmp_path / 'frames.extxyz'
    ConfigurationSetData(emt_data(6, 4)).write_extxyz(frames)
    result = _run_isolated(
        f"""
        from ase.io import read
        from aiida_mlmat.ml.model import default_config
        from aiida_mlmat.ml.training import TrainingConfig, TrainingError, train
        frames = read({str(frames)!r}, index=':')
        config = default_config(['Cu', 'Au']); config['hidden'] = [4]
        try:
            train(config, frames[:4], frames[4:], TrainingConfig(epochs=1), {str(tmp_path / 'run')!r},
                  resume_from={str(checkpoint)!r})
        except TrainingError as exc:
            print('refused', exc.code, exc.message)
        """,
        unsafe_env,
    )
    assert 'refused CORRUPT_FILE' in result.stdout, result.stdout + result.stderr
    assert 'cannot be loaded safely' in result.stdout
    assert not marker.exists()


@pytest.mark.parametrize('unsafe_env', [False, True])
def test_pickled_potential_member_never_executes(tmp_path, unsafe_env, aiida_profile, monkeypatch):
    """A potential node whose member bytes (with a matching sha256) hold a pickle payload is refused on load."""
    import pickle

    from aiida_mlmat.data.potential import PotentialData
    from aiida_mlmat.ml.model import default_config

    if unsafe_env:
        monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    marker = tmp_path / 'marker'
    payload = tmp_path / 'evil.pt'
    torch.save({'format': 'aiida-mlmat-potential/1', 'config': _Marker(str(marker)), 'state_dict': {}}, payload)
    node = PotentialData([payload.read_bytes()], config=default_config(['Cu'])).store()
    with pytest.raises(pickle.UnpicklingError):
        orm.load_node(node.uuid).get_models()
    assert not marker.exists()
