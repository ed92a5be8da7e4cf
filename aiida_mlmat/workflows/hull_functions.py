"""Calcfunctions of the convex-hull screening: every step from candidates to verdicts is a node in provenance.

Energies are in eV (totals) and eV/atom (per atom); ``e_above_hull`` is in eV/atom.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from aiida import orm
from aiida.engine import calcfunction
from ase import Atoms

from aiida_mlmat.common.constants import INDEX_KEY, NAME_KEY
from aiida_mlmat.data.configurations import ConfigurationSetData
from aiida_mlmat.data.screening import ScreenedCandidateData

#: Frame info key telling an elemental reference (``reference``) from a candidate (``candidate``).
ROLE_KEY = 'mlmat_role'
#: Frame info key of the ensemble members' energies (eV) written by the relax task.
MEMBERS_KEY = 'mlmat_member_energies'


def link_label(name: str) -> str:
    """A valid link label for a candidate name (the real name stays in the node's attributes)."""
    label = re.sub(r'[^A-Za-z0-9_]', '_', name).strip('_') or 'candidate'
    label = re.sub(r'_+', '_', label)
    return label if label[0].isalpha() else f'c_{label}'


def _plain(atoms: Atoms, name: str, role: str, index: int) -> Atoms:
    frame = Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    frame.info.update({NAME_KEY: name, ROLE_KEY: role, INDEX_KEY: index})
    return frame


def _structure_to_atoms(structure: Any) -> Atoms:
    from pymatgen.io.ase import AseAtomsAdaptor

    return AseAtomsAdaptor.get_atoms(structure)


def candidate_set(structures: Any) -> ConfigurationSetData:
    """A candidate set (unstored) from pymatgen Structures or ASE Atoms.

    :param structures: ``{name: structure}`` or a list of ``(name, structure)`` pairs; a structure is a pymatgen
        ``Structure`` or an ASE ``Atoms``.
    """
    items = structures.items() if isinstance(structures, dict) else structures
    frames = []
    for name, structure in items:
        atoms = structure if isinstance(structure, Atoms) else _structure_to_atoms(structure)
        frames.append(_plain(atoms, str(name), 'candidate', len(frames)))
    if not frames:
        raise ValueError('no candidate structures given')
    return ConfigurationSetData(frames)


@calcfunction
def generate_candidate_set(elements: orm.List, settings: orm.Dict) -> ConfigurationSetData:
    """Generate decorations of small fcc, bcc and hcp supercells (deduplicated) as a candidate set.

    :param settings: keyword arguments of :func:`aiida_mlmat.hull.candidates.generate_candidates`
        (``lattices``, ``max_atoms``, ``max_candidates``).
    """
    from aiida_mlmat.hull.candidates import generate_candidates

    kwargs = settings.get_dict()
    if 'lattices' in kwargs:
        kwargs['lattices'] = tuple(kwargs['lattices'])
    items = generate_candidates(list(elements.get_list()), **kwargs)
    frames = [_plain(_structure_to_atoms(structure), name, 'candidate', i) for i, (name, structure) in enumerate(items)]
    candidates = ConfigurationSetData(frames)
    candidates.label = f'generated screening candidates ({"-".join(elements.get_list())})'
    return candidates


@calcfunction
def candidates_from_files(**files: orm.SinglefileData) -> ConfigurationSetData:
    """Read candidate structures from CIF, POSCAR or extxyz files (named by their file stem)."""
    from aiida_mlmat.hull.candidates import read_candidates

    frames: list[Atoms] = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for key in sorted(files):
            path = Path(tmp) / key / files[key].filename
            path.parent.mkdir()
            path.write_bytes(files[key].get_content(mode='rb'))
            paths.append(str(path))
        for name, structure in read_candidates(paths):
            frames.append(_plain(_structure_to_atoms(structure), name, 'candidate', len(frames)))
    return ConfigurationSetData(frames)


def elemental_reference_frames(elements: list[str], start: int) -> list[Atoms]:
    """fcc, bcc and hcp structures of every element at its ground-state volume, to be relaxed as references."""
    from aiida_mlmat.worker.structures import build_seeds

    frames = []
    for symbol in elements:
        for seed in build_seeds([symbol]):
            crystal = seed.info['mlmat_method'].split(':', 1)[1]
            frames.append(_plain(seed, f'ref-{symbol}-{crystal}', 'reference', start + len(frames)))
    return frames


@calcfunction
def prepare_screening(
    candidates: ConfigurationSetData, elements: orm.List, generate_references: orm.Bool
) -> ConfigurationSetData:
    """The structures to relax: candidates inside the chemical system (+ elemental references when asked).

    A candidate with an element outside ``elements`` is not relaxed: it is recorded in the ``excluded``
    attribute with its reason. Names are made unique (``name``, ``name-1``, ...).
    """
    system = set(elements.get_list())
    frames: list[Atoms] = []
    excluded: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for position, atoms in enumerate(candidates.get_atoms()):
        name = str(atoms.info.get(NAME_KEY) or f'candidate-{position}')
        if name in seen:
            seen[name] += 1
            name = f'{name}-{seen[name]}'
        else:
            seen[name] = 0
        outside = sorted(set(atoms.get_chemical_symbols()) - system)
        if outside:
            excluded.append(
                {
                    'index': position,
                    'name': name,
                    'formula': atoms.get_chemical_formula(),
                    'reason': f'elements {outside} are outside the chemical system {sorted(system)}',
                }
            )
            continue
        frames.append(_plain(atoms, name, 'candidate', position))
    if generate_references.value:
        frames.extend(elemental_reference_frames(sorted(system), candidates.count + 1000))
    return ConfigurationSetData(frames, excluded=excluded)


def _members(frame: Atoms) -> list[float]:
    members = frame.info.get(MEMBERS_KEY)
    if members is None:
        return [float(frame.get_potential_energy())]
    return [float(value) for value in np.atleast_1d(members)]


def _composition(frame: Atoms) -> dict[str, int]:
    symbols = frame.get_chemical_symbols()
    return {symbol: symbols.count(symbol) for symbol in sorted(set(symbols))}


@calcfunction
def compute_hull(
    prepared: ConfigurationSetData, settings: orm.Dict, failures: orm.Dict, **nodes: ConfigurationSetData
) -> dict[str, orm.Data]:
    """One convex hull per ensemble member from the relaxed structures; per-candidate verdicts as a Dict.

    :param prepared: the set that was relaxed (its ``excluded`` records candidates outside the system).
    :param settings: ``stability_tolerance`` (eV/atom), ``elements``.
    :param failures: ``{chunk link label: reason}`` of relaxation jobs that failed as a whole.
    :param nodes: ``relaxed_*`` sets, ``failed_*`` chunks (every structure failed with the job's reason) and an
        optional ``references`` set of labelled reference entries given by the user.
    :return: ``hull`` (Dict: per-candidate results, references used, settings) and, when some candidates have
        0 < P(stable) < 1, ``uncertain_candidates`` (their relaxed structures, unlabelled): every candidate the
        members disagree on, stable by the majority or not, which is more than the summary's ``n_uncertain``
        (some members, not most: :func:`aiida_mlmat.hull.plot.stability_class`).
    """
    from aiida_mlmat.hull.phase import ensemble_hull

    params = settings.get_dict()
    tolerance = float(params.get('stability_tolerance', 1e-6))
    reasons = failures.get_dict()
    failed: dict[str, dict[str, Any]] = {}
    for record in prepared.excluded:
        failed[record['name']] = {'formula': record['formula'], 'reason': record['reason']}
    relaxed: dict[str, Atoms] = {}
    references: dict[str, tuple[dict[str, int], list[float]]] = {}
    names_by_index, roles_by_index = {}, {}
    for frame in prepared.iter_atoms():  # read once, a frame at a time
        names_by_index[int(frame.info[INDEX_KEY])] = frame.info[NAME_KEY]
        roles_by_index[int(frame.info[INDEX_KEY])] = frame.info.get(ROLE_KEY)
    for key in sorted(nodes):
        node = nodes[key]
        if key == 'references':
            for position, frame in enumerate(node.get_atoms()):
                name = str(frame.info.get(NAME_KEY) or f'given-{frame.get_chemical_formula()}-{position}')
                references[name] = (_composition(frame), [float(frame.get_potential_energy())])
            continue
        if key.startswith('failed_'):
            for frame in node.get_atoms():
                if frame.info.get(ROLE_KEY) == 'candidate':
                    failed[frame.info[NAME_KEY]] = {
                        'formula': frame.get_chemical_formula(),
                        'reason': reasons.get(key, 'the relaxation job failed'),
                    }
            continue
        for frame in node.get_atoms():
            index = int(frame.info[INDEX_KEY])
            name = names_by_index[index]
            if roles_by_index[index] == 'reference':
                references[name] = (_composition(frame), _members(frame))
            else:
                relaxed[name] = frame
        for record in node.excluded:
            index = int(record['index'])
            if roles_by_index.get(index) == 'candidate':
                failed[names_by_index[index]] = {'formula': record['formula'], 'reason': record['reason']}
    n_members = max((len(_members(frame)) for frame in relaxed.values()), default=1)
    if 'references' in nodes:  # given entries: one energy each, the same for every member
        references = {
            name: (comp, energies * n_members if len(energies) == 1 else energies)
            for name, (comp, energies) in references.items()
        }
    table = {name: (_composition(frame), _members(frame)) for name, frame in relaxed.items()}
    results = ensemble_hull(table, references, tolerance) if table else {}
    candidates: dict[str, dict[str, Any]] = {}
    for name, frame in relaxed.items():
        entry = {key: value for key, value in results[name].items() if key != 'decomposition'}
        entry.update(
            {
                'formula': frame.get_chemical_formula(empirical=True),
                'composition': _composition(frame),
                'n_atoms': len(frame),
                'converged': bool(frame.info.get('mlmat_converged', True)),
                'index': int(frame.info[INDEX_KEY]),
            }
        )
        entry.setdefault('status', 'ok')
        entry.setdefault('reason', '')
        candidates[name] = entry
    for name, record in failed.items():
        candidates[name] = {'formula': record['formula'], 'status': 'failed', 'reason': record['reason']}
    reference_table = {
        name: {
            'formula': ''.join(f'{el}{n if n > 1 else ""}' for el, n in comp.items()),
            'energy_per_atom': float(np.mean(energies)) / sum(comp.values()),
        }
        for name, (comp, energies) in references.items()
    }
    outputs: dict[str, orm.Data] = {
        'hull': orm.Dict(
            {
                'candidates': _jsonable(candidates),
                'references': reference_table,
                'elements': params.get('elements', []),
                'n_members': n_members,
                'stability_tolerance': tolerance,
                'units': {'energy': 'eV', 'e_above_hull': 'eV/atom', 'e_form_per_atom': 'eV/atom'},
            }
        )
    }
    uncertain = []
    for name, entry in candidates.items():
        if entry.get('status') == 'ok' and 0.0 < entry.get('p_stable', 0.0) < 1.0:
            uncertain.append(_plain(relaxed[name], name, 'candidate', entry['index']))
    if uncertain:
        outputs['uncertain_candidates'] = ConfigurationSetData(uncertain)
    return outputs


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(item) for item in value]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if not np.isfinite(value) else float(value)
    return value


@calcfunction
def verification_set(hull: orm.Dict, top: orm.Int, **relaxed: ConfigurationSetData) -> ConfigurationSetData:
    """The top-K candidates (by P(stable), then e_above_hull) and the elemental references, for the reference method.

    Structures are the relaxed geometries without labels; names and roles are kept.
    """
    from aiida_mlmat.hull.metrics import select_top

    data = hull.get_dict()
    chosen = set(select_top(data['candidates'], top.value))
    references = set(data['references'])
    frames = []
    for key in sorted(relaxed):
        for frame in relaxed[key].get_atoms():
            name = frame.info.get(NAME_KEY)
            if name in chosen or name in references:
                role = 'reference' if name in references else 'candidate'
                frames.append(_plain(frame, name, role, int(frame.info[INDEX_KEY])))
    return ConfigurationSetData(frames)


@calcfunction
def verify_screening(hull: orm.Dict, labelled: ConfigurationSetData) -> orm.Dict:
    """Place the verified candidates on a reference hull and score the energy model against it.

    Both hulls are built from the same entries (the verified candidates and the elemental references), one with
    the energy model's energies and one with the reference calculator's, so the comparison is like for like.
    :return: per candidate ``reference_e_above_hull``, ``reference_e_form_per_atom`` and
        ``model_e_above_hull`` (eV/atom), the metrics of :func:`aiida_mlmat.hull.metrics.discovery_metrics`
        and the candidates the reference method could not evaluate, with reasons.
    """
    from aiida_mlmat.hull.metrics import discovery_metrics
    from aiida_mlmat.hull.phase import hull_results

    data = hull.get_dict()
    tolerance = float(data.get('stability_tolerance', 1e-6))
    frames = labelled.get_atoms()
    model_candidates, model_references, ref_candidates, ref_references = {}, {}, {}, {}
    for frame in frames:
        name = frame.info[NAME_KEY]
        composition = _composition(frame)
        energy = float(frame.get_potential_energy())
        if frame.info.get(ROLE_KEY) == 'reference':
            ref_references[name] = (composition, energy)
            model_references[name] = (composition, data['references'][name]['energy_per_atom'] * len(frame))
        else:
            ref_candidates[name] = (composition, energy)
            model_candidates[name] = (composition, data['candidates'][name]['energy_per_atom'] * len(frame))
    reference = hull_results(ref_candidates, ref_references, tolerance)
    model = hull_results(model_candidates, model_references, tolerance)
    names = sorted(name for name in reference if reference[name].get('status', 'ok') == 'ok')
    per_candidate = {
        name: {
            'reference_e_above_hull': reference[name]['e_above_hull'],
            'reference_e_form_per_atom': reference[name]['e_form_per_atom'],
            'reference_stable': bool(reference[name]['stable']),
            'model_e_above_hull': model[name]['e_above_hull'],
        }
        for name in names
    }
    metrics = discovery_metrics(
        np.array([model[name]['e_above_hull'] for name in names]),
        np.array([reference[name]['e_above_hull'] for name in names]),
        threshold=tolerance,
    )
    return orm.Dict(
        _jsonable(
            {
                'candidates': per_candidate,
                'metrics': metrics,
                'not_evaluated': [dict(record) for record in labelled.excluded],
                'units': {'e_above_hull': 'eV/atom', 'mae': 'eV/atom', 'rmse': 'eV/atom'},
            }
        )
    )


#: The units of a screened candidate's numbers (``ScreenedCandidateData``; every energy is per atom).
CANDIDATE_UNITS = {
    'energy_per_atom': 'eV/atom', 'e_form_per_atom': 'eV/atom', 'e_form_per_atom_std': 'eV/atom',
    'e_above_hull': 'eV/atom', 'e_above_hull_std': 'eV/atom', 'reference_e_above_hull': 'eV/atom',
    'reference_e_form_per_atom': 'eV/atom', 'model_e_above_hull': 'eV/atom',
}  # fmt: skip


def _candidate_rows(hull: orm.Dict, verification: dict[str, orm.Dict]) -> dict[str, dict[str, Any]]:
    """Every candidate's attributes by name: the screening hull's and, for a verified one, the verification's."""
    data = hull.get_dict()
    checked = verification['verification'].get_dict()['candidates'] if 'verification' in verification else {}
    rows: dict[str, dict[str, Any]] = {}
    for name in sorted(data['candidates']):
        entry = {'name': name, **data['candidates'][name], **checked.get(name, {})}
        entry.pop('members', None)
        entry.setdefault('reason', '')
        entry['units'] = CANDIDATE_UNITS
        rows[name] = entry
    return rows


def candidate_link_labels(names: list[str]) -> dict[str, str]:
    """The output link label of every candidate (unique over the whole screening, whichever step makes it)."""
    labels: dict[str, str] = {}
    used: set[str] = set()
    for name in sorted(names):
        label = link_label(name)
        while label in used:
            label += '_'
        used.add(label)
        labels[name] = label
    return labels


@calcfunction
def record_candidates(hull: orm.Dict, names: orm.List, **verification: orm.Dict) -> dict[str, ScreenedCandidateData]:
    """One queryable node per named candidate (output ``candidate_<label>``).

    Called once for the candidates that were not verified (the hull alone is their provenance) and once, with the
    ``verification`` input, for those that were: a candidate's provenance holds the reference verification only
    when it was verified.
    """
    rows = _candidate_rows(hull, verification)
    labels = candidate_link_labels(list(rows))
    checked = verification['verification'].get_dict()['candidates'] if 'verification' in verification else {}
    outputs = {}
    for name in names.get_list():
        if bool(checked) != (name in checked):
            raise ValueError(f'candidate {name}: give the verification exactly for the verified candidates')
        outputs[f'candidate_{labels[name]}'] = ScreenedCandidateData(_jsonable(rows[name]))
    return outputs


@calcfunction
def screening_results(hull: orm.Dict, **verification: orm.Dict) -> dict[str, orm.Data]:
    """The CSV table, the hull plot (PNG) and the summary of a screening (the candidate nodes:
    :func:`record_candidates`)."""
    from aiida_mlmat.hull.plot import plot_hull, stability_class, write_table

    data = hull.get_dict()
    rows = _candidate_rows(hull, verification)
    outputs: dict[str, orm.Data] = {}
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / 'screening.csv'
        write_table(rows, str(table))
        outputs['table'] = orm.SinglefileData(str(table))
        plot = Path(tmp) / 'hull.png'
        plot_hull(rows, data['references'], str(plot), data['elements'])
        outputs['plot'] = orm.SinglefileData(str(plot))
    ok = [row for row in rows.values() if row.get('status') == 'ok']
    summary: dict[str, Any] = {
        'n_candidates': len(rows),
        'n_screened': len(ok),
        'n_failed': len(rows) - len(ok),
        'n_stable': sum(bool(row.get('stable')) for row in ok),
        'n_uncertain': sum(stability_class(row) == 'uncertain' for row in ok),  # some members, not most
        'n_unconverged': sum(not row.get('converged', True) for row in ok),
        'n_members': data['n_members'],
        'references': data['references'],
        'units': {
            'references.energy_per_atom': 'eV/atom',
            'verification.mae': 'eV/atom',
            'verification.rmse': 'eV/atom',
        },
    }
    if 'verification' in verification:
        summary['verification'] = verification['verification'].get_dict()['metrics']
    outputs['summary'] = orm.Dict(_jsonable(summary))
    return outputs
