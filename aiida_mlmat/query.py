"""Provenance queries: which reference calculations are behind a potential, and what came out of them.

Every function works on the loaded AiiDA profile and returns nodes (or small records holding nodes) in a
deterministic order. Nothing here names a node by its PK in what it returns as data: PKs differ between
profiles, UUIDs survive an archive round trip (``verdi archive create`` / ``verdi archive import``).

Examples::

    from aiida import load_profile, orm
    from aiida_mlmat import query

    load_profile()
    potential = orm.load_node('c0ffee')                      # a PotentialData, by PK or UUID
    for record in query.reference_calculations(potential):
        print(record.uuid, record.calculator, record.parameters)

    query.potentials_trained_with('gpaw', {'mode': {'name': 'pw', 'ecut': 400}})
    for hit in query.stable_candidates(0.05):                  # eV/atom above the hull
        print(hit.node.name, hit.node.e_above_hull, hit.potential, hit.dataset)

    chain = query.provenance_chain(potential)                 # JSON-serialisable, UUIDs only
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiida import orm
from aiida.common.links import LinkType
from ase import Atoms

from aiida_mlmat.data.configurations import ConfigurationSetData
from aiida_mlmat.data.potential import PotentialData
from aiida_mlmat.data.screening import ScreenedCandidateData

#: Process types of the CalcJobs that compute reference labels.
MLMAT_LABEL = 'aiida.calculations:mlmat.label'
ASE_LABEL = 'aiida.calculations:ase.ase'
LABEL_PROCESS_TYPES = (MLMAT_LABEL, ASE_LABEL)
#: Process type of the sampling CalcJob (its MD calculator sits in its ``parameters``).
MLMAT_SAMPLE = 'aiida.calculations:mlmat.sample'

#: Links followed backwards by :func:`provenance_chain`: data provenance and the workflows around it.
CHAIN_LINK_TYPES = (
    LinkType.CREATE,
    LinkType.INPUT_CALC,
    LinkType.INPUT_WORK,
    LinkType.RETURN,
    LinkType.CALL_CALC,
    LinkType.CALL_WORK,
)

#: Version of the JSON layout returned by :func:`provenance_chain`.
CHAIN_FORMAT = 'aiida-mlmat-provenance/1'


@dataclass(frozen=True)
class ReferenceCalculation:
    """A calculation that computed reference labels, with the calculator that it ran."""

    node: orm.CalcJobNode
    calculator: str
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def uuid(self) -> str:
        """UUID of the calculation."""
        return self.node.uuid

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (UUIDs only)."""
        return {
            'uuid': self.node.uuid,
            'process_type': self.node.process_type,
            'exit_status': self.node.exit_status,
            'calculator': self.calculator,
            'parameters': self.parameters,
        }


@dataclass(frozen=True)
class StableCandidate:
    """A screened candidate below an energy-above-hull threshold and what its verdict rests on.

    ``potential`` is the nearest PotentialData upstream (None when the screening used a reference calculator,
    then named by ``calculator``); ``dataset`` is the labelled set that potential was trained on.
    """

    node: ScreenedCandidateData
    potential: PotentialData | None
    calculator: dict[str, Any] | None
    dataset: ConfigurationSetData | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (UUIDs only)."""
        attributes = self.node.base.attributes
        return {
            'uuid': self.node.uuid,
            'name': attributes.get('name', None),
            'formula': attributes.get('formula', None),
            'e_above_hull': attributes.get('e_above_hull', None),
            'e_above_hull_std': attributes.get('e_above_hull_std', None),
            'p_stable': attributes.get('p_stable', None),
            'potential': self.potential.uuid if self.potential is not None else None,
            'calculator': self.calculator,
            'dataset': self.dataset.uuid if self.dataset is not None else None,
        }


def _sorted_nodes(nodes: Iterable[orm.Node]) -> list[Any]:
    """Nodes in creation order (UUID breaks ties): the same order in every profile holding them."""
    return sorted({node.uuid: node for node in nodes}.values(), key=lambda node: (node.ctime, node.uuid))


def _input(node: orm.ProcessNode, label: str) -> orm.Node | None:
    links = node.base.links.get_incoming(link_label_filter=label).all()
    return links[0].node if links else None


def _ase_calculator(parameters: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Registry name and parameters of an aiida-ase ``ase.ase`` job (inverse of the reference workflow's mapping)."""
    from aiida_mlmat.workflows.reference import ASE_PATH_CALCULATORS

    block = parameters.get('calculator', {}) if isinstance(parameters, dict) else {}
    ase_name = str(block.get('name', ''))
    names = {value: key for key, value in ASE_PATH_CALCULATORS.items()}
    args = dict(block.get('args', {}) or {})
    mode = args.get('mode')
    if isinstance(mode, dict) and mode.get('@function') == 'PW':
        args['mode'] = {'name': 'pw', **mode.get('args', {})}
    return names.get(ase_name, ase_name), args


def calculator_of(process: orm.ProcessNode) -> dict[str, Any] | None:
    """The calculator ``{'name': ..., 'parameters': {...}}`` a process ran with, or None if it takes none.

    Read from the ``calculator`` input (mlmat CalcJobs and workflows); for ``mlmat.sample`` jobs, from the MD
    calculator of their ``parameters`` (``md.calculator``); for aiida-ase ``ase.ase`` jobs, from their
    ``parameters`` input, named as in the mlmat registry (``emt``, ``lj``, ``gpaw``). With the calculator ``mlmat``
    the trained model is the process's ``potential`` input (:func:`potential_of`).
    """
    if process.process_type == ASE_LABEL:
        parameters = _input(process, 'parameters')
        if not isinstance(parameters, orm.Dict):
            return None
        name, args = _ase_calculator(parameters.get_dict())
        return {'name': name, 'parameters': args}
    spec = _input(process, 'calculator')
    if isinstance(spec, orm.Dict):
        value = spec.get_dict()
    elif process.process_type == MLMAT_SAMPLE:
        parameters = _input(process, 'parameters')
        md = parameters.get_dict().get('md') if isinstance(parameters, orm.Dict) else None
        value = md.get('calculator') if isinstance(md, dict) else None
        if not isinstance(value, dict):
            return None
    else:
        return None
    return {'name': value.get('name'), 'parameters': dict(value.get('parameters') or {})}


def potential_of(process: orm.ProcessNode) -> PotentialData | None:
    """The trained potential a process ran with (its ``potential`` input), or None."""
    node = _input(process, 'potential')
    return node if isinstance(node, PotentialData) else None


def _reference_record(node: orm.CalcJobNode) -> ReferenceCalculation:
    spec = calculator_of(node) or {'name': None, 'parameters': {}}
    return ReferenceCalculation(node=node, calculator=spec['name'], parameters=spec['parameters'])


def reference_calculations(node: PotentialData | ConfigurationSetData) -> list[ReferenceCalculation]:
    """The reference labelling calculations behind a potential or a configuration set, oldest first.

    Every ``mlmat.label`` and aiida-ase ``ase.ase`` CalcJob among the node's data-provenance ancestors
    (anywhere upstream: through splits, bootstrap samples, merges and earlier active-learning rounds); for a set
    made by a labelling job, that job too. For a subset (a split, a bootstrap sample) that is every job upstream
    of the set it was taken from, also those whose labels did not end up in it; to follow one configuration, use
    :func:`potentials_trained_on` and :func:`configuration_key`.

    >>> [(r.calculator, r.parameters) for r in reference_calculations(potential)]   # doctest: +SKIP
    [('emt', {}), ('emt', {})]

    :param node: a stored PotentialData or ConfigurationSetData.
    :return: records with the CalcJob node, the calculator name and its parameters.
    """
    if not isinstance(node, PotentialData | ConfigurationSetData):
        raise TypeError(f'expected a PotentialData or a ConfigurationSetData, got {type(node).__name__}')
    builder = orm.QueryBuilder()
    builder.append(type(node), filters={'uuid': node.uuid}, tag='target')
    builder.append(
        orm.CalcJobNode,
        with_descendants='target',
        filters={'process_type': {'in': list(LABEL_PROCESS_TYPES)}},
        project='*',
    )
    nodes = _sorted_nodes(row[0] for row in builder.distinct().iterall())
    return [_reference_record(calc) for calc in nodes]


def reference_calculators(node: PotentialData | ConfigurationSetData) -> list[dict[str, Any]]:
    """The distinct calculators ``{'name', 'parameters'}`` of :func:`reference_calculations`, sorted."""
    import json

    specs = {}
    for record in reference_calculations(node):
        spec = {'name': record.calculator, 'parameters': record.parameters}
        specs.setdefault(json.dumps(spec, sort_keys=True), spec)
    return [specs[key] for key in sorted(specs)]


def labelling_versions(node: PotentialData | ConfigurationSetData) -> dict[str, str]:
    """The software versions the labelling jobs behind ``node`` recorded (the worker's ``results.versions``: the
    Python, ASE, numpy and, for DFT, GPAW of the machine that computed the labels); several versions of one package
    are joined with ``, ``. aiida-ase jobs record none.
    """
    found: dict[str, set[str]] = {}
    for record in reference_calculations(node):
        results = record.node.outputs.results if 'results' in record.node.outputs else None
        versions = results.get('versions', {}) if isinstance(results, orm.Dict) else {}
        for name, version in (versions or {}).items():
            found.setdefault(str(name), set()).add(str(version))
    return {name: ', '.join(sorted(values)) for name, values in sorted(found.items())}


def _label_calculations(calculator: str) -> list[orm.CalcJobNode]:
    """Label CalcJobs (both paths) that ran the registry calculator ``calculator``."""
    from aiida_mlmat.workflows.reference import ASE_PATH_CALCULATORS

    found: list[orm.CalcJobNode] = []
    builder = orm.QueryBuilder()
    builder.append(orm.CalcJobNode, filters={'process_type': MLMAT_LABEL}, tag='calc', project='*')
    builder.append(
        orm.Dict, with_outgoing='calc', edge_filters={'label': 'calculator'}, filters={'attributes.name': calculator}
    )
    found.extend(row[0] for row in builder.iterall())
    ase_name = ASE_PATH_CALCULATORS.get(calculator, calculator)
    builder = orm.QueryBuilder()
    builder.append(orm.CalcJobNode, filters={'process_type': ASE_LABEL}, tag='calc', project='*')
    builder.append(
        orm.Dict,
        with_outgoing='calc',
        edge_filters={'label': 'parameters'},
        filters={'attributes.calculator.name': ase_name},
    )
    found.extend(row[0] for row in builder.iterall())
    return found


def is_member(potential: PotentialData) -> bool:
    """Whether the potential went into an ensemble (an input ``member_*`` of ``make_ensemble``)."""
    for link in potential.base.links.get_outgoing(link_type=LinkType.INPUT_CALC).all():
        if link.link_label.startswith('member_') and link.node.process_label == 'make_ensemble':
            return True
    return False


def potentials_trained_with(
    calculator: str, parameters: dict[str, Any] | None = None, *, members: bool = True
) -> list[PotentialData]:
    """Every potential whose training data came, anywhere upstream, from labels of this calculator.

    >>> potentials_trained_with('emt')                                   # doctest: +SKIP
    [<PotentialData: uuid: ...>, ...]
    >>> potentials_trained_with('gpaw', {'mode': {'name': 'pw', 'ecut': 300}}, members=False)  # doctest: +SKIP

    :param calculator: registry name of the reference calculator (``emt``, ``gpaw``, ...).
    :param parameters: if given, only labels computed with exactly these calculator parameters count.
    :param members: include the single-model potentials that were combined into an ensemble (default True);
        with False only potentials that are not an ensemble member are returned.
    :return: PotentialData nodes, oldest first.
    :raises ValueError: for a name that is neither registered nor recorded by any labelling job (a typo).
    """
    found = _label_calculations(calculator)
    if not found:
        from aiida_mlmat.worker.calculators import available_names

        if calculator not in available_names(testing=True):  # a typo, not a calculator that labelled nothing yet
            raise ValueError(f'calculator: `{calculator}` is not a registered name ({", ".join(available_names())})')
    calcs = [node for node in found if parameters is None or _reference_record(node).parameters == dict(parameters)]
    if not calcs:
        return []
    builder = orm.QueryBuilder()
    builder.append(orm.CalcJobNode, filters={'id': {'in': sorted({node.pk for node in calcs})}}, tag='calc')
    builder.append(PotentialData, with_ancestors='calc', project='*')
    potentials = _sorted_nodes(row[0] for row in builder.distinct().iterall())
    return [node for node in potentials if members or not is_member(node)]


def training_dataset(potential: PotentialData) -> ConfigurationSetData | None:
    """The labelled set a potential was trained on (before its split), or None if it is not in this profile.

    The ``dataset`` input of the step that made the potential when there is one (``make_ensemble``); for a member
    of an ensemble, that of the ``make_ensemble`` it went into (its own training data are a sample of that set's
    split, which has no sha256 of its own); otherwise the nearest upstream set whose sha256 equals the potential's
    ``data_sha256``, else the ``train`` input of the job that trained it (there the training split itself, for want
    of the set before it).
    """
    creator = potential.creator
    if creator is not None:
        dataset = _input(creator, 'dataset')
        if isinstance(dataset, ConfigurationSetData):
            return dataset
    for link in potential.base.links.get_outgoing(link_type=LinkType.INPUT_CALC).all():
        ensemble = link.link_label.startswith('member_') and link.node.process_label == 'make_ensemble'
        dataset = _input(link.node, 'dataset') if ensemble else None
        if isinstance(dataset, ConfigurationSetData):
            return dataset
    digest = potential.base.attributes.get('data_sha256', None)
    if digest:
        for node in _nearest_ancestors(potential, lambda n: isinstance(n, ConfigurationSetData) and n.sha256 == digest):
            return node
    train = _input(creator, 'train') if creator is not None else None
    return train if isinstance(train, ConfigurationSetData) else None


def _ensemble_members(make_ensemble: orm.ProcessNode) -> list[str]:
    """The member potentials (UUIDs) of a ``make_ensemble`` call in the order the ensemble holds them: its
    ``member_*`` inputs sorted by link label, as the calcfunction sorts them."""
    links = make_ensemble.base.links.get_incoming(link_type=LinkType.INPUT_CALC).all()
    return [
        uuid
        for _, uuid in sorted(
            (link.link_label, link.node.uuid) for link in links if link.link_label.startswith('member_')
        )
    ]


#: Process type of the CalcJob that trains one member.
MLMAT_TRAIN = 'aiida.calculations:mlmat.train'


def configuration_key(atoms: Any) -> str:
    """A content key of one configuration: its atomic numbers, positions and cell (rounded to 1e-5 Å) and pbc.

    The same configuration has the same key in every set it was copied into (a split, a bootstrap sample, a merged
    training set, an exported and re-imported file), whatever its labels; two different ones practically never do.
    """
    import hashlib

    import numpy as np

    digest = hashlib.sha256()
    digest.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    for array in (atoms.positions, np.asarray(atoms.cell)):
        digest.update(np.round(np.asarray(array, dtype=float) * 1e5).astype(np.int64).tobytes())
    digest.update(np.asarray(atoms.pbc, dtype=np.int8).tobytes())
    return digest.hexdigest()


#: The extra of a configuration set that caches its configurations' keys (:func:`configuration_keys`), the number of
#: hexadecimal digits kept of each key (80 bits: no two configurations of a profile share them in practice), and the
#: version of :func:`configuration_key` the cache was made with (a change of the key makes every cache stale).
KEY_EXTRA = 'mlmat_configuration_keys'
KEY_EXTRA_LENGTH = 20
KEY_VERSION = 1


def configuration_keys(dataset: ConfigurationSetData) -> list[str]:
    """The :func:`configuration_key` of every configuration of a set, in order, shortened to ``KEY_EXTRA_LENGTH``.

    Computed once and cached in the set's extra ``KEY_EXTRA`` (a set's content never changes once stored; extras
    are not part of its hash), so :func:`potentials_trained_on` reads each set's file only the first time it is
    asked. The cache names the key's version and length and the set's content hash (``sha256``); a cache that
    does not match them (an older key, an edited extra, one imported with a set of other content) is computed
    afresh.
    """
    stamp = {'version': KEY_VERSION, 'length': KEY_EXTRA_LENGTH, 'sha256': dataset.base.attributes.get('sha256', None)}
    cached = dataset.base.extras.get(KEY_EXTRA, None)
    if (
        isinstance(cached, dict)
        and all(cached.get(key) == value for key, value in stamp.items())
        and isinstance(keys := cached.get('keys'), list)
        and len(keys) == dataset.count
        and all(isinstance(key, str) and len(key) == KEY_EXTRA_LENGTH for key in keys)
    ):
        return keys
    computed = [configuration_key(frame)[:KEY_EXTRA_LENGTH] for frame in dataset.iter_atoms()]
    import contextlib

    with contextlib.suppress(Exception):  # a cache: a storage that refuses the write only costs a re-read next time
        dataset.base.extras.set(KEY_EXTRA, {**stamp, 'keys': computed})
    return computed


@dataclass(frozen=True)
class TrainedOn:
    """A potential that one configuration went into, and how.

    ``role``: ``train`` (its weights were fitted to it), ``validation`` (it only steered early stopping and the
    learning-rate schedule), or ``warm start`` (it was fitted into the weights this potential started from). For an
    ensemble, ``members`` are the positions (from 0) of the members with that role, in the order the ensemble holds
    them (``make_ensemble``'s ``member_*`` inputs sorted by name).
    """

    potential: PotentialData
    role: str
    members: tuple[int, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable (UUIDs only)."""
        return {'potential': self.potential.uuid, 'role': self.role, 'members': list(self.members)}


_ROLE_ORDER = ('train', 'warm start', 'validation')


def potentials_trained_on(configuration: Any) -> list[TrainedOn]:
    """Every potential of the profile that a configuration went into: the members whose training (or validation)
    split held it, the members warm-started from one of those, and the ensembles made of them.

    A configuration in a training *set* need not be in a member's training data: the set is split into train,
    validation and test, and each member trains on a bootstrap sample of the train split. This follows each
    member's own inputs (``mlmat.train``'s ``train`` and ``validation``), matching configurations by
    :func:`configuration_key`, so a test configuration or one left out of every bootstrap sample is in none.

    >>> dataset = orm.load_node(SET_PK)                                  # doctest: +SKIP
    >>> [(hit.potential.uuid, hit.role, hit.members) for hit in potentials_trained_on((dataset, 0))]

    :param configuration: an ``ase.Atoms``, or ``(ConfigurationSetData, index)``.
    :return: oldest potential first; a potential appears once, with its strongest role (train, warm start,
        validation).
    :raises TypeError: for anything but an ``ase.Atoms`` or a ``(set, index)`` pair (a whole set, a PK).
    """
    if isinstance(configuration, tuple):
        dataset, index = configuration
        configuration = dataset.get_frame(int(index))  # raises IndexError outside the set
    if not isinstance(configuration, Atoms):
        raise TypeError(
            f'configuration: expected an ase.Atoms or (ConfigurationSetData, index), got {type(configuration).__name__}'
        )
    key = configuration_key(configuration)
    formula = configuration.get_chemical_formula()
    keys: dict[str, set[str]] = {}

    def holds(dataset: Any) -> bool:
        if formula not in (dataset.base.attributes.get('formulas', None) or [formula]):
            return False  # the stored formulas answer without reading the file
        if dataset.uuid not in keys:
            keys[dataset.uuid] = set(configuration_keys(dataset))
        return key[:KEY_EXTRA_LENGTH] in keys[dataset.uuid]

    def started_from(calc: orm.CalcJobNode) -> str | None:
        """The member potential a warm-started job took its weights from (the ensemble's ``initial_member``)."""
        start = _input(calc, 'potential')
        if start is None:
            return None
        creator = start.creator
        if creator is None or creator.process_label != 'make_ensemble':
            return start.uuid
        members = _ensemble_members(creator)
        chosen = _input(calc, 'initial_member')
        position = chosen.value if isinstance(chosen, orm.Int) else 0
        return members[position] if 0 <= position < len(members) else None

    calcs = (
        orm.QueryBuilder().append(orm.CalcJobNode, filters={'process_type': MLMAT_TRAIN}, project='*').all(flat=True)
    )
    roles: dict[str, tuple[str, PotentialData]] = {}  # member potential uuid -> role
    for calc in sorted(calcs, key=lambda node: (node.ctime, node.uuid)):  # oldest first: warm starts follow roles
        outputs = calc.base.links.get_outgoing(link_type=LinkType.CREATE, link_label_filter='potential').all()
        if not outputs:
            continue
        member = outputs[0].node
        train, validation = _input(calc, 'train'), _input(calc, 'validation')
        start = started_from(calc)
        if train is not None and holds(train):
            roles[member.uuid] = ('train', member)
        elif start is not None and start in roles and roles[start][0] in ('train', 'warm start'):
            roles[member.uuid] = ('warm start', member)
        elif validation is not None and holds(validation):
            roles[member.uuid] = ('validation', member)
    found = [TrainedOn(member, role) for role, member in roles.values()]
    ensembles: dict[str, dict[str, Any]] = {}
    for role, member in roles.values():
        for link in member.base.links.get_outgoing(link_type=LinkType.INPUT_CALC).all():
            if link.node.process_label != 'make_ensemble' or not link.link_label.startswith('member_'):
                continue
            made = link.node.base.links.get_outgoing(link_type=LinkType.CREATE).all()
            position = _ensemble_members(link.node).index(member.uuid)
            for output in made:
                record = ensembles.setdefault(output.node.uuid, {'node': output.node, 'roles': {}})
                record['roles'].setdefault(role, []).append(position)
    for record in ensembles.values():
        role = next(name for name in _ROLE_ORDER if name in record['roles'])
        found.append(TrainedOn(record['node'], role, tuple(sorted(record['roles'][role]))))
    return sorted(found, key=lambda hit: (hit.potential.ctime, hit.potential.uuid))


def _nearest_ancestors(node: orm.Node, predicate: Any) -> list[Any]:
    """Data-provenance ancestors matching ``predicate`` at the smallest distance (UUID order among them)."""
    frontier, seen = [node], {node.uuid}
    while frontier:
        hits: list[orm.Node] = []
        next_frontier: list[orm.Node] = []
        for current in frontier:
            for link in current.base.links.get_incoming(link_type=(LinkType.CREATE, LinkType.INPUT_CALC)).all():
                if link.node.uuid in seen:
                    continue
                seen.add(link.node.uuid)
                next_frontier.append(link.node)
                if predicate(link.node):
                    hits.append(link.node)
        if hits:
            return sorted(hits, key=lambda n: n.uuid)
        frontier = next_frontier
    return []


def _candidate_energy_model(candidate: ScreenedCandidateData) -> tuple[PotentialData | None, dict[str, Any] | None]:
    """The potential that screened a candidate, or else the calculator its screening relaxations ran with.

    A candidate of ``mlmat.hull`` is made from the screening hull (input ``hull`` of its creator) and from the
    verification of the top candidates, which ran with another calculator at the same distance upstream. The search
    starts from the hull so that the verification's calculator is never taken for the screening's energy model;
    a candidate made otherwise is searched from itself: the nearest potential, else the nearest calculator.
    """
    creator = candidate.creator
    hull = _input(creator, 'hull') if creator is not None else None
    start = hull if hull is not None else candidate
    potentials = _nearest_ancestors(start, lambda n: isinstance(n, PotentialData))
    if potentials:
        return potentials[0], None
    processes = _nearest_ancestors(start, lambda n: isinstance(n, orm.ProcessNode) and calculator_of(n))
    return None, (calculator_of(processes[0]) if processes else None)


def stable_candidates(max_e_above_hull: float) -> list[StableCandidate]:
    """Screened candidates with an energy above the hull below ``max_e_above_hull`` (eV/atom).

    Each comes with the potential that screened it (or the calculator, when screened without a potential) and
    the labelled data set that potential was trained on. Lowest energy above the hull first.

    >>> for hit in stable_candidates(0.05):                              # doctest: +SKIP
    ...     print(hit.node.name, hit.node.e_above_hull, hit.potential.uuid, hit.dataset.uuid)

    :param max_e_above_hull: threshold in eV/atom (strict: a candidate exactly at it is not returned).
    """
    builder = orm.QueryBuilder()
    builder.append(
        ScreenedCandidateData, filters={'attributes.e_above_hull': {'<': float(max_e_above_hull)}}, project='*'
    )
    nodes = sorted((row[0] for row in builder.iterall()), key=lambda node: (node.e_above_hull, node.ctime, node.uuid))
    results = []
    for node in nodes:
        potential, calculator = _candidate_energy_model(node)
        dataset = training_dataset(potential) if potential is not None else None
        results.append(StableCandidate(node=node, potential=potential, calculator=calculator, dataset=dataset))
    return results


def _node_kind(node: orm.Node) -> str:
    if isinstance(node, orm.WorkflowNode):
        return 'workflow'
    if isinstance(node, orm.ProcessNode):
        return 'calculation'
    return 'data'


def _topological(nodes: dict[str, orm.Node], edges: set[tuple[str, str]]) -> list[str]:
    """UUIDs ordered from the sources to the sinks; ties by creation time, then UUID (profile-independent)."""
    indegree = dict.fromkeys(nodes, 0)
    children: dict[str, list[str]] = {uuid: [] for uuid in nodes}
    for source, target in sorted(edges):
        indegree[target] += 1
        children[source].append(target)

    def key(uuid: str) -> tuple[float, str]:
        return (nodes[uuid].ctime.timestamp(), uuid)

    ready = [key(uuid) for uuid, degree in indegree.items() if degree == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, uuid = heapq.heappop(ready)
        order.append(uuid)
        for child in children[uuid]:
            indegree[child] -= 1
            if indegree[child] == 0:
                heapq.heappush(ready, key(child))
    if len(order) < len(nodes):  # a cycle cannot occur in AiiDA provenance; keep every node regardless
        order += sorted(set(nodes) - set(order), key=key)
    return order


def provenance_chain(node: orm.Node) -> dict[str, Any]:
    """The chain behind a node: calculations, workflows, data sets and models, from the sources to the node.

    Follows links backwards (CREATE, INPUT_CALC, INPUT_WORK, RETURN, CALL_CALC, CALL_WORK), so it includes the
    workflows that called each step but never anything downstream. For a workflow (the PK that ``mlmat run``
    prints) the chain starts from the workflow, every process it called (directly or through sub-workflows, also
    those that failed) and what it returned (its potential, training set, screening results), so it holds every
    step of the run and everything behind its results. The result names nodes by UUID only and is
    ordered deterministically (topologically; creation time and UUID break ties), so the chain computed in
    another profile after an archive round trip compares equal.

    >>> chain = provenance_chain(orm.load_node(potential_pk))            # doctest: +SKIP
    >>> chain['calculations'][0]['process_label']   # the outermost workflow comes first: it called the rest
    'PipelineWorkChain'

    :return: ``{'format', 'node', 'calculations', 'datasets', 'models', 'nodes', 'links'}``; ``calculations``
        holds processes (``kind`` ``calculation`` or ``workflow``) with process type and label, node label,
        ``call_link_label`` (the step of its caller that launched it: ``training_2``), state, exit status and
        calculator; ``datasets`` configuration sets with their size; ``models`` potentials with their members;
        a set or potential's ``made_by`` names the process that made it (UUID) and the output's link label
        (``train``, ``test``, ``result``), or is None for one stored directly, and ``returned_as`` the workflows
        that returned it with their output labels (``training_set``, ``potential``), the innermost first;
        ``nodes`` every node of the chain (also parameters and codes) in the one order the three lists follow;
        ``links`` ``[source, target, link type, link label]`` between the chain's nodes, sorted.
    """
    from aiida.tools.graph.graph_traversers import traverse_graph

    if not node.is_stored:
        raise ValueError('the node is not stored, so it has no provenance yet')
    starts = [node.pk]
    if isinstance(node, orm.WorkflowNode):
        starts += [link.node.pk for link in node.base.links.get_outgoing(link_type=LinkType.RETURN).all()]
        called = traverse_graph([node.pk], links_forward=[LinkType.CALL_CALC, LinkType.CALL_WORK])['nodes']
        starts += sorted(called)  # every step it ran, also those that failed or made nothing it returned
    traversed = traverse_graph(sorted(set(starts)), get_links=True, links_backward=list(CHAIN_LINK_TYPES))
    pks = sorted(traversed['nodes'])
    builder = orm.QueryBuilder().append(orm.Node, filters={'id': {'in': pks}}, project=['id', '*'])
    by_pk: dict[int, orm.Node] = dict(builder.all())
    nodes = {item.uuid: item for item in by_pk.values()}
    links = sorted(
        [
            by_pk[link.source_id].uuid,
            by_pk[link.target_id].uuid,
            str(getattr(link.link_type, 'value', link.link_type)),
            link.link_label,
        ]
        for link in traversed['links'] or ()
        if link.source_id in by_pk and link.target_id in by_pk
    )
    order = _topological(nodes, {(source, target) for source, target, *_ in links})

    created: dict[str, dict[str, str]] = {}  # data node -> the process that made it and the output's link label
    called: dict[str, str] = {}  # process -> the label of the CALL link its caller launched it with
    returned: dict[str, list[dict[str, str]]] = {}  # data node -> the workflows that returned it, with their labels
    for source, target, link_type, label in links:
        if link_type == LinkType.CREATE.value:
            created[target] = {'process': source, 'link_label': label}
        elif link_type == LinkType.RETURN.value:
            returned.setdefault(target, []).append({'process': source, 'link_label': label})
        elif link_type in (LinkType.CALL_CALC.value, LinkType.CALL_WORK.value):
            called[target] = label
    rank = {uuid: index for index, uuid in enumerate(order)}
    for entries in returned.values():
        entries.sort(key=lambda entry: rank[entry['process']], reverse=True)  # the innermost workflow first
    calculations, datasets, models = [], [], []
    for uuid in order:
        item = nodes[uuid]
        if isinstance(item, orm.ProcessNode):
            calculations.append(
                {
                    'uuid': uuid,
                    'kind': _node_kind(item),
                    'process_type': item.process_type,
                    'process_label': item.process_label,
                    'label': item.label,
                    'call_link_label': called.get(uuid),
                    'process_state': item.process_state.value if item.process_state else None,
                    'exit_status': item.exit_status,
                    'calculator': calculator_of(item),
                    'potential': potential.uuid if (potential := potential_of(item)) is not None else None,
                    'computer': item.computer.label if isinstance(item, orm.CalcJobNode) and item.computer else None,
                    'job_id': item.get_job_id() if isinstance(item, orm.CalcJobNode) else None,
                }
            )
        elif isinstance(item, ConfigurationSetData):
            attributes = item.base.attributes
            datasets.append(
                {
                    'uuid': uuid,
                    'label': item.label,
                    'n_configurations': attributes.get('count'),
                    'species': attributes.get('species'),
                    'label_keys': attributes.get('label_keys'),
                    'calculator': attributes.get('calculator', None),
                    'n_excluded': attributes.get('n_excluded', 0),
                    'sha256': attributes.get('sha256'),
                    'made_by': created.get(uuid),
                    'returned_as': returned.get(uuid, []),
                }
            )
        elif isinstance(item, PotentialData):
            attributes = item.base.attributes
            models.append(
                {
                    'uuid': uuid,
                    'label': item.label,
                    'members': attributes.get('n_members'),
                    'member_sha256': list(attributes.get('sha256', [])),
                    'species': attributes.get('species'),
                    'data_sha256': attributes.get('data_sha256', None),
                    'metrics': attributes.get('metrics', {}),
                    'made_by': created.get(uuid),
                    'returned_as': returned.get(uuid, []),
                }
            )
    return {
        'format': CHAIN_FORMAT,
        'node': {'uuid': node.uuid, 'node_type': node.node_type, 'kind': _node_kind(node), 'label': node.label},
        'calculations': calculations,
        'datasets': datasets,
        'models': models,
        'nodes': [{'uuid': uuid, 'node_type': nodes[uuid].node_type} for uuid in order],
        'links': links,
    }
