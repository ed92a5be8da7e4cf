"""Engine tier: ``mlmat export`` and archive round trips into a fresh profile; bad archives are refused whole.

The graph is the one of ``test_provenance.py`` (built once per session). The round trip imports the exported
``archive.aiida`` into a new SQLite profile in another Python process (its own ``AIIDA_PATH``), the way a colleague
would, and compares the provenance chain and the query answers there with the ones here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from aiida import orm
from ase.build import bulk
from ase.io import read
from click.testing import CliRunner

from aiida_mlmat import query
from aiida_mlmat.archive import ExportVerificationError, verify_export
from aiida_mlmat.cli.main import cli
from aiida_mlmat.data.configurations import ConfigurationSetData
from tests.engine.test_provenance import EMT, provenance_graph

pytestmark = pytest.mark.engine

CANDIDATE = 'cand_a_0'


@pytest.fixture(scope='module')
def graph(aiida_profile, tmp_path_factory):
    return provenance_graph(tmp_path_factory.mktemp('provenance-workdir'))


@pytest.fixture(scope='module')
def exported(graph, tmp_path_factory):
    """`mlmat export` of a screened candidate: its potential, data sets and every step behind them."""
    directory = tmp_path_factory.mktemp('export') / 'candidate'
    args = ['export', str(graph[CANDIDATE].pk), str(directory), '--licence', 'CC0-1.0', '--json']
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return directory, json.loads(result.stdout.strip().splitlines()[-1])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_export_writes_archive_data_models_cards_and_manifest(graph, exported, tmp_path):
    directory, result = exported
    candidate = graph[CANDIDATE]
    manifest = json.loads((directory / 'MANIFEST.json').read_text())
    chain = query.provenance_chain(candidate)
    assert json.loads((directory / 'provenance.json').read_text()) == chain
    assert result['node'] == candidate.uuid and result['licence'] == 'CC0-1.0'
    assert set(manifest['datasets']) == {entry['uuid'] for entry in chain['datasets']}
    assert set(manifest['models']) == {entry['uuid'] for entry in chain['models']}
    assert sorted(manifest['datasets'].values()) == result['datasets']
    assert result['n_files'] == len(manifest['files'])
    for name, entry in manifest['files'].items():
        assert sha256(directory / name) == entry['sha256'], name
    assert manifest['versions']['aiida-core'] and manifest['versions']['ase'] and manifest['versions']['torch']

    for uuid, folder in manifest['datasets'].items():
        node = orm.load_node(uuid)
        extxyz = directory / folder / 'configurations.extxyz'
        assert extxyz.read_bytes() == node.get_content()
        card = json.loads((directory / folder / 'card.json').read_text())
        assert card['licence'] == 'CC0-1.0' and card['uuid'] == uuid
        assert card['calculators'] == ([node.calculator] if node.calculator else [])
        assert card['files'] == {'configurations.extxyz': sha256(extxyz)}
        assert card['creator']['process'] == (
            None if node.creator is None else {**card['creator']['process'], 'uuid': node.creator.uuid}
        )
        assert card['summary']['n_configurations'] == node.count
        assert 'CC0-1.0' in (directory / folder / 'card.md').read_text()
        if node.uuid == graph['set_a'].uuid:  # the labelling jobs' own versions (the worker's Python) are recorded
            import ase

            assert card['recorded_versions']['ase'] == ase.__version__
            assert card['recorded_versions']['aiida_mlmat'] and card['recorded_versions']['numpy']
            assert '## Versions (recorded at labelling)' in (directory / folder / 'card.md').read_text()
        if node.uuid == graph['set_a'].uuid:  # the labelled set reads back in ASE with the stored labels
            frames = read(extxyz, index=':')
            stored = node.get_atoms()
            assert len(frames) == 12
            np.testing.assert_allclose(
                [f.get_potential_energy() for f in frames], [f.calc.results['energy'] for f in stored], atol=0
            )

    from aiida_mlmat.ml.calculator import MLMatCalculator

    atoms = bulk('Cu', 'fcc', a=3.7, cubic=True)
    atoms.symbols[1] = 'Au'
    atoms.rattle(0.05, seed=3)
    pot_a = graph['pot_a']
    folder = directory / manifest['models'][pot_a.uuid]
    card = json.loads((folder / 'card.json').read_text())
    assert card['calculators'] == [EMT] and card['summary']['training_dataset'] == graph['set_a'].uuid
    assert card['summary']['n_members'] == 2 and card['licence'] == 'CC0-1.0'
    assert card['files'] == {
        path.name: sha256(path) for path in folder.iterdir() if path.name not in {'card.json', 'card.md'}
    }
    exported_atoms, stored_atoms = atoms.copy(), atoms.copy()
    exported_atoms.calc = MLMatCalculator.from_directory(folder)
    stored_atoms.calc = pot_a.get_calculator()
    assert exported_atoms.get_potential_energy() == pytest.approx(stored_atoms.get_potential_energy(), abs=1e-10)

    report = verify_export(directory)
    assert report['files'] == len(manifest['files']) and report['node'] == candidate.uuid
    assert report['archive']['n_nodes'] > len(chain['nodes'])  # the chain and the other outputs of its steps
    if shutil.which('sha256sum'):
        check = subprocess.run(['sha256sum', '--quiet', '-c', 'SHA256SUMS'], cwd=directory, capture_output=True)
        assert check.returncode == 0, check.stdout + check.stderr

    # An altered, an added and an escaping file are each refused.
    copy = tmp_path / 'copy'
    shutil.copytree(directory, copy)
    target = copy / manifest['datasets'][graph['set_a'].uuid] / 'configurations.extxyz'
    target.write_bytes(target.read_bytes().replace(b'Cu', b'Au', 1))
    with pytest.raises(ExportVerificationError, match='does not match the sha256'):
        verify_export(copy)
    shutil.rmtree(copy)
    shutil.copytree(directory, copy)
    (copy / 'models' / 'extra.pt').write_bytes(b'not listed')
    with pytest.raises(ExportVerificationError, match='not in the manifest'):
        verify_export(copy)

    # Exporting into a non-empty directory is refused and changes nothing.
    before = sha256(directory / 'MANIFEST.json')
    again = CliRunner().invoke(cli, ['export', str(candidate.pk), str(directory)])
    assert again.exit_code == 2 and 'not an empty directory' in again.output
    assert sha256(directory / 'MANIFEST.json') == before


def _rewrite(source: Path, target: Path, replace: dict[str, bytes]) -> None:
    """Copy a zip, replacing the content of some members (zipfile writes valid CRCs for the new bytes)."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, 'w', zipfile.ZIP_DEFLATED) as new:
        for info in old.infolist():
            new.writestr(info, replace.get(info.filename, old.read(info.filename)))


def _bad_archives(archive: Path, folder: Path) -> dict[str, Path]:
    """Truncated, of an unknown version, tampered (valid CRC, wrong sha256), and with a damaged byte."""
    folder.mkdir()
    content = archive.read_bytes()
    paths = {name: folder / f'{name}.aiida' for name in ('truncated', 'version', 'tampered', 'damaged')}
    paths['truncated'].write_bytes(content[: len(content) // 2])
    with zipfile.ZipFile(archive) as handle:
        metadata = json.loads(handle.read('metadata.json'))
        objects = [info for info in handle.infolist() if info.filename.startswith('repo/') and info.file_size > 200]
        extxyz = next(info for info in objects if b'Lattice=' in handle.read(info.filename))
        original = handle.read(extxyz.filename)
    _rewrite(
        archive, paths['version'], {'metadata.json': json.dumps({**metadata, 'export_version': 'main_9999'}).encode()}
    )
    _rewrite(archive, paths['tampered'], {extxyz.filename: original.replace(b'Cu', b'Au', 1)})
    damaged = bytearray(content)
    offset = extxyz.header_offset + 30 + len(extxyz.filename.encode()) + len(extxyz.extra)
    damaged[offset + extxyz.compress_size // 2] ^= 0xFF
    paths['damaged'].write_bytes(bytes(damaged))
    return paths


FRESH_PROFILE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    from aiida.manage.configuration import create_profile, get_config

    workdir, attempts, ask = Path(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
    config = get_config(create=True)
    create_profile(config, storage_backend='core.sqlite_dos', storage_config={'filepath': str(workdir / 'storage')},
                   name='colleague', email='colleague@example.org')
    config.set_default_profile('colleague', overwrite=True)
    config.store()

    from aiida import load_profile, orm
    load_profile('colleague')
    from aiida_mlmat import query
    from aiida_mlmat.archive import ArchiveRefusedError, import_archive

    def count():
        return orm.QueryBuilder().append(orm.Node).count()

    out = {'attempts': []}
    for name, path in attempts:
        before = count()
        try:
            report = import_archive(path)
            out['attempts'].append({'name': name, 'ok': True, 'before': before, 'after': count(), **report})
        except ArchiveRefusedError as exc:
            out['attempts'].append({'name': name, 'ok': False, 'before': before, 'after': count(), 'message': str(exc)})
    out['chain'] = query.provenance_chain(orm.load_node(ask['node']))
    out['references'] = [r.as_dict() for r in query.reference_calculations(orm.load_node(ask['potential']))]
    out['trained'] = [n.uuid for n in query.potentials_trained_with(ask['calculator'], ask['parameters'])]
    out['stable'] = [hit.as_dict() for hit in query.stable_candidates(ask['threshold'])]
    out['uuids'] = sorted(uuid for (uuid,) in orm.QueryBuilder().append(orm.Node, project='uuid').all())
    print(json.dumps(out))
    """
)


def test_round_trip_into_a_fresh_profile_and_refusals(graph, exported, tmp_path):
    """The imported graph answers every query as here; bad archives add no node, before or after the good one."""
    directory, _ = exported
    archive = directory / 'archive.aiida'
    bad = _bad_archives(archive, tmp_path / 'bad')
    attempts = [[name, str(path)] for name, path in bad.items()]
    attempts += [
        ['good', str(archive)],
        ['tampered-again', str(bad['tampered'])],
        ['damaged-again', str(bad['damaged'])],
    ]
    ask = {
        'node': graph[CANDIDATE].uuid,
        'potential': graph['pot_a'].uuid,
        'calculator': 'emt',
        'parameters': EMT['parameters'],
        'threshold': 0.05,
    }
    env = {**os.environ, 'AIIDA_PATH': str(tmp_path / 'colleague')}
    run = subprocess.run(
        [sys.executable, '-c', FRESH_PROFILE_SCRIPT, str(tmp_path), json.dumps(attempts), json.dumps(ask)],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    fresh = json.loads(run.stdout.strip().splitlines()[-1])
    outcome = {attempt['name']: attempt for attempt in fresh['attempts']}

    messages = {
        'truncated': 'not a readable zip archive',
        'version': "archive version 'main_9999' is not the version this AiiDA reads",
        'tampered': 'its bytes were altered',
        'damaged': 'damaged',
    }
    for name, message in messages.items():
        for key in (name, f'{name}-again'):
            if key not in outcome:
                continue
            attempt = outcome[key]
            assert not attempt['ok'] and message in attempt['message'], attempt
            assert attempt['after'] == attempt['before'], attempt
    assert outcome['truncated']['before'] == 0 and outcome['tampered-again']['before'] > 0
    good = outcome['good']
    assert good['ok'] and good['before'] == 0 and good['nodes_added'] == good['n_nodes'] == good['after'] > 0

    # Same chain (same order, same UUIDs) and the same query answers as in this profile.
    assert fresh['chain'] == query.provenance_chain(graph[CANDIDATE])
    assert fresh['references'] == [r.as_dict() for r in query.reference_calculations(graph['pot_a'])]
    assert fresh['trained'] == [n.uuid for n in query.potentials_trained_with('emt', EMT['parameters'])]
    imported = set(fresh['uuids'])
    here = [hit.as_dict() for hit in query.stable_candidates(0.05) if hit.node.uuid in imported]
    assert fresh['stable'] == here and [hit['name'] for hit in here] == ['CuAu', 'Cu3Au']
    assert graph['pot_b'].uuid not in imported


def test_labels_never_escape_the_export_directory(aiida_profile, tmp_path):
    """A data set and a potential labelled with path escapes and shell syntax export to tame names inside DIR."""
    from aiida_mlmat.data.potential import PotentialData
    from aiida_mlmat.ml.model import build_model, default_config, save_model

    evil = '../../../tmp/evil; rm -rf ~ `id` $(id)\n../'
    dataset = ConfigurationSetData([bulk('Cu', 'fcc', a=3.6)], label=evil).store()
    save_model(build_model(default_config(['Cu'])), str(tmp_path / 'm.pt'))
    potential = PotentialData([(tmp_path / 'm.pt').read_bytes()], config=default_config(['Cu']), label=evil).store()
    for node, kind in ((dataset, 'datasets'), (potential, 'models')):
        target = tmp_path / f'out-{kind}'
        result = CliRunner().invoke(cli, ['export', node.uuid, str(target), '--json'], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        (folder,) = (target / kind).iterdir()
        assert re.fullmatch(r'[A-Za-z0-9][A-Za-z0-9._-]*', folder.name) and folder.name.endswith(node.uuid[:8])
        root = target.resolve()
        assert all(path.resolve().is_relative_to(root) for path in target.rglob('*'))
        assert not (tmp_path / 'tmp').exists() and not Path('/tmp/evil').exists()
        assert verify_export(target)['files'] > 3
    bad_licence = CliRunner().invoke(cli, ['export', dataset.uuid, str(tmp_path / 'x'), '--licence', 'MIT\n#x'])
    assert bad_licence.exit_code == 2 and 'one line' in bad_licence.output and not (tmp_path / 'x').exists()


def test_truncated_extxyz_is_refused_by_dataset_import(aiida_profile, tmp_path):
    """A labelled set cut off mid-frame: exit code 2, a clear message, and no node stored."""
    from tests.unit.test_model import emt_data

    whole = tmp_path / 'whole.extxyz'
    ConfigurationSetData(emt_data(4, 5)).write_extxyz(whole)
    content = whole.read_bytes()
    truncated = tmp_path / 'truncated.extxyz'
    truncated.write_bytes(content[: int(len(content) * 0.6)])
    before = orm.QueryBuilder().append(orm.Node).count()
    result = CliRunner().invoke(cli, ['dataset', 'import', str(truncated), '--json'])
    assert result.exit_code == 2, result.output
    assert 'nothing was stored' in result.output and 'Traceback' not in result.output
    assert orm.QueryBuilder().append(orm.Node).count() == before


def test_import_command_verifies_before_importing(graph, exported, tmp_path):
    """`mlmat import` refuses a bad archive or a changed export directory with exit 2 and adds no node."""
    directory, _ = exported
    bad = _bad_archives(directory / 'archive.aiida', tmp_path / 'bad-cli')
    changed = tmp_path / 'changed'
    shutil.copytree(directory, changed)
    extxyz = sorted(changed.rglob('*.extxyz'))[0]
    extxyz.write_text(extxyz.read_text().replace('Cu', 'Au', 1))
    before = orm.QueryBuilder().append(orm.Node).count()
    for name, path in [*bad.items(), ('changed-directory', changed)]:
        result = CliRunner().invoke(cli, ['import', str(path), '--json'])
        assert result.exit_code == 2, (name, result.output)
        assert 'refused' in result.output, (name, result.output)
        assert orm.QueryBuilder().append(orm.Node).count() == before, name
    result = CliRunner().invoke(cli, ['import', str(directory), '--json'], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    # every node of the export is already in this profile: verified, imported, nothing new
    assert answer['nodes_added'] == 0 and answer['n_nodes'] > 0
    assert orm.QueryBuilder().append(orm.Node).count() == before


def test_an_export_that_fails_leaves_nothing_behind(graph, tmp_path, monkeypatch):
    """A failure while writing (here: the model card) removes what was written; the same target then works."""
    from aiida_mlmat import archive

    def broken(*args, **kwargs):
        raise RuntimeError('card writer broke')

    target = tmp_path / 'out'
    monkeypatch.setattr(archive, '_model_card', broken)
    with pytest.raises(RuntimeError, match='card writer broke'):
        archive.export_node(graph[CANDIDATE], target)
    assert list(tmp_path.iterdir()) == []  # neither the target nor a hidden partial folder
    target.mkdir()  # an existing empty folder is a valid target too
    with pytest.raises(RuntimeError):
        archive.export_node(graph[CANDIDATE], target)
    assert [path.name for path in tmp_path.iterdir()] == ['out'] and not any(target.iterdir())
    monkeypatch.undo()
    manifest = archive.export_node(graph[CANDIDATE], target)
    assert manifest['models'] and verify_export(target)['files'] == len(manifest['files'])
    # a new folder gets the permissions any new folder gets (not the private ones of a temporary folder)
    umask = os.umask(0)
    os.umask(umask)
    fresh = tmp_path / 'fresh'
    archive.export_node(graph[CANDIDATE], fresh)
    assert fresh.stat().st_mode & 0o777 == 0o777 & ~umask
    # the current directory, empty, is a valid target too
    here = tmp_path / 'here'
    here.mkdir()
    monkeypatch.chdir(here)
    archive.export_node(graph[CANDIDATE], '.')
    assert (here / 'MANIFEST.json').is_file() and verify_export(here)['node'] == graph[CANDIDATE].uuid
