"""Engine tier: provenance queries and ``mlmat provenance`` on a real graph (reference -> training -> screening).

The graph is built once per test session (and reused by ``test_archive.py``) with the engine in this process:
two reference workflows (batched ``mlmat.label`` with EMT; one aiida-ase ``ase.ase`` job per configuration with
Lennard-Jones), a small ensemble trained on each, and screened candidates recorded against each potential and
against a bare calculator. The calculators carry parameters no other test uses, so the queries' answers in the
shared session profile are exactly this graph's nodes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import calcfunction, run_get_node
from click.testing import CliRunner

from aiida_mlmat import query
from aiida_mlmat.cli.main import cli
from aiida_mlmat.data.configurations import ConfigurationSetData
from aiida_mlmat.data.potential import PotentialData
from aiida_mlmat.data.screening import ScreenedCandidateData

pytestmark = pytest.mark.engine

GROUP = 'mlmat-tests/provenance-graph'
#: EMT's default made explicit: the same labels as ``{}``, but parameters that mark this graph's label jobs.
EMT = {'name': 'emt', 'parameters': {'asap_cutoff': False}}
LJ = {'name': 'lj', 'parameters': {'sigma': 2.3, 'epsilon': 0.41, 'rc': 6.0}}
MODEL = {'hidden': [8], 'descriptor': {'kind': 'chebyshev', 'rcut': 4.0, 'n_radial': 4, 'n_angular': 2}}
TRAINING = {'epochs': 2, 'batch_size': 4, 'learning_rate': 0.01, 'forces_weight': 10.0}
ROWS_A = [
    {'name': 'CuAu', 'formula': 'AuCu', 'status': 'ok', 'e_above_hull': 0.0, 'stable': True},
    {'name': 'Cu3Au', 'formula': 'AuCu3', 'status': 'ok', 'e_above_hull': 0.03, 'stable': False},
    {'name': 'CuAu3', 'formula': 'Au3Cu', 'status': 'ok', 'e_above_hull': 0.2, 'stable': False},
    {'name': 'broken', 'formula': 'AuCu', 'status': 'failed', 'reason': 'relaxation diverged', 'e_above_hull': None},
]
ROWS_B = [{'name': 'Cu-lj', 'formula': 'Cu', 'status': 'ok', 'e_above_hull': 0.01, 'stable': False}]
ROWS_CALC = [{'name': 'Cu2Au2', 'formula': 'AuCu', 'status': 'ok', 'e_above_hull': 0.02, 'stable': False}]


@calcfunction
def record_candidates(potential: PotentialData, rows: orm.List) -> dict[str, ScreenedCandidateData]:
    """Screened candidates recorded against the potential that screened them."""
    return {f'candidate_{index}': ScreenedCandidateData(row) for index, row in enumerate(rows.get_list())}


@calcfunction
def record_candidates_with_calculator(calculator: orm.Dict, rows: orm.List) -> dict[str, ScreenedCandidateData]:
    """Screened candidates recorded against a bare reference calculator (no potential)."""
    return {f'candidate_{index}': ScreenedCandidateData(row) for index, row in enumerate(rows.get_list())}


def _localhost(workdir: Path) -> orm.Computer:
    from aiida.common.exceptions import NotExistent

    try:
        return orm.Computer.collection.get(
            label='localhost', hostname='localhost', scheduler_type='core.direct', transport_type='core.local'
        )
    except NotExistent:
        computer = orm.Computer(
            label='localhost',
            hostname='localhost',
            workdir=str(workdir),
            transport_type='core.local',
            scheduler_type='core.direct',
        ).store()
        computer.set_minimum_job_poll_interval(0)
        computer.set_default_mpiprocs_per_machine(1)
        computer.configure()
        return computer


def _code(label: str, computer: orm.Computer, executable: str) -> orm.AbstractCode:
    from aiida.common.exceptions import NotExistent

    try:
        return orm.load_code(f'{label}@{computer.label}')
    except NotExistent:
        return orm.InstalledCode(label=label, computer=computer, filepath_executable=executable).store()


def _seeds() -> ConfigurationSetData:
    from ase.build import bulk

    alloy = bulk('Cu', 'fcc', a=3.85, cubic=True)
    alloy.symbols[[1, 2]] = 'Au'
    return ConfigurationSetData([bulk('Cu', 'fcc', a=3.6, cubic=True), bulk('Au', 'fcc', a=4.08, cubic=True), alloy])


def _run(builder: Any) -> orm.ProcessNode:
    _, node = run_get_node(builder)
    assert node.is_finished_ok, f'{node.process_label}<{node.pk}>: {node.exit_status} {node.exit_message}'
    return node


def build_graph(workdir: Path) -> dict[str, str]:
    """Run the reference, training and screening steps; return role -> UUID."""
    from ase.build import bulk

    from aiida_mlmat.workflows.reference import ReferenceWorkChain
    from aiida_mlmat.workflows.training import TrainingWorkChain
    from tests.conftest import worker_executable

    computer = _localhost(workdir)
    code = _code('mlmat-worker', computer, worker_executable())
    ase_code = _code('ase-python', computer, sys.executable)

    builder = ReferenceWorkChain.get_builder_from_protocol(
        code, calculator=EMT, structures=_seeds(), overrides={'chunk_size': 6}
    )
    builder.sample.parameters = orm.Dict(
        {'supercell': [1, 1, 1], 'include_seeds': True, 'rattle': {'count': 3, 'stdev': 0.05, 'seed': 1}}
    )
    reference_a = _run(builder)

    seeds_b = ConfigurationSetData([bulk('Cu', 'fcc', a=3.6, cubic=True)])
    builder = ReferenceWorkChain.get_builder_from_protocol(
        code, calculator=LJ, structures=seeds_b, labeller='aiida-ase', ase_code=ase_code
    )
    builder.sample.parameters = orm.Dict(
        {'supercell': [1, 1, 1], 'include_seeds': True, 'rattle': {'count': 6, 'stdev': 0.05, 'seed': 2}}
    )
    reference_b = _run(builder)

    training_a = _run(
        TrainingWorkChain.get_builder_from_protocol(
            code,
            reference_a.outputs.configurations,
            overrides={'ensemble_size': 2, 'model': MODEL, 'training': TRAINING},
        )
    )
    training_b = _run(
        TrainingWorkChain.get_builder_from_protocol(
            code,
            reference_b.outputs.configurations,
            overrides={
                'ensemble_size': 1,
                'model': MODEL,
                'training': TRAINING,
                'test_fraction': 0.25,
                'validation_fraction': 0.25,
            },
        )
    )
    pot_a, pot_b = training_a.outputs.potential, training_b.outputs.potential
    candidates_a = record_candidates(pot_a, orm.List(ROWS_A))
    candidates_b = record_candidates(pot_b, orm.List(ROWS_B))
    candidates_c = record_candidates_with_calculator(orm.Dict(EMT), orm.List(ROWS_CALC))
    roles = {
        'reference_a': reference_a.uuid,
        'reference_b': reference_b.uuid,
        'training_a': training_a.uuid,
        'training_b': training_b.uuid,
        'set_a': reference_a.outputs.configurations.uuid,
        'set_b': reference_b.outputs.configurations.uuid,
        'pot_a': pot_a.uuid,
        'pot_b': pot_b.uuid,
    }
    for prefix, nodes in (('cand_a', candidates_a), ('cand_b', candidates_b), ('cand_c', candidates_c)):
        for key, node in nodes.items():
            roles[f'{prefix}_{key.split("_")[1]}'] = node.uuid
    return roles


def provenance_graph(workdir: Path) -> dict[str, orm.Node]:
    """The session's graph: built on first use, then found again through its group."""
    group, created = orm.Group.collection.get_or_create(GROUP)
    roles = group.base.extras.get('roles', None)
    if created or not roles:
        roles = build_graph(workdir)
        group.add_nodes([orm.load_node(uuid) for uuid in roles.values()])
        group.base.extras.set('roles', roles)
    return {role: orm.load_node(uuid) for role, uuid in roles.items()}


@pytest.fixture(scope='module')
def graph(aiida_profile, tmp_path_factory) -> dict[str, orm.Node]:
    return provenance_graph(tmp_path_factory.mktemp('provenance-workdir'))


def uuids(nodes) -> set[str]:
    return {node.uuid for node in nodes}


def calcs_of(workflow: orm.WorkflowNode, process_type: str) -> set[str]:
    return {node.uuid for node in workflow.called_descendants if node.process_type == process_type}


def trained_potentials(training: orm.WorkflowNode) -> set[str]:
    """The ensemble and its member potentials, read from the training workflow's own records."""
    members = {
        node.outputs.potential.uuid
        for node in training.called_descendants
        if node.process_type == 'aiida.calculations:mlmat.train' and node.is_finished_ok
    }
    return members | {training.outputs.potential.uuid}


def test_reference_calculations_are_exactly_the_label_jobs(graph):
    records = query.reference_calculations(graph['pot_a'])
    expected = calcs_of(graph['reference_a'], query.MLMAT_LABEL)
    assert len(expected) == 2  # 12 configurations in chunks of 6
    assert {record.uuid for record in records} == expected
    assert {(record.calculator, json.dumps(record.parameters)) for record in records} == {
        ('emt', json.dumps(EMT['parameters']))
    }
    records_b = query.reference_calculations(graph['pot_b'])
    expected_b = calcs_of(graph['reference_b'], query.ASE_LABEL)
    assert len(expected_b) == 7  # seed + 6 rattles, one aiida-ase job each
    assert {record.uuid for record in records_b} == expected_b
    assert all(record.calculator == 'lj' and record.parameters == LJ['parameters'] for record in records_b)
    # oldest first, and the JSON form names nodes by UUID
    assert [record.node.ctime for record in records_b] == sorted(record.node.ctime for record in records_b)
    assert set(records_b[0].as_dict()) == {'uuid', 'process_type', 'exit_status', 'calculator', 'parameters'}
    # a labelled set answers too: the same label jobs as the potential trained on it
    from_set = [record.uuid for record in query.reference_calculations(graph['set_a'])]
    assert from_set == [record.uuid for record in records]
    with pytest.raises(TypeError, match='PotentialData or a ConfigurationSetData'):
        query.reference_calculations(orm.Dict({'not': 'a potential'}).store())


def test_potentials_trained_with_calculator_and_parameters(graph):
    expected_a, expected_b = trained_potentials(graph['training_a']), trained_potentials(graph['training_b'])
    assert len(expected_a) == 3 and len(expected_b) == 2  # ensembles of 2 and 1, plus the ensemble nodes
    assert uuids(query.potentials_trained_with('emt', EMT['parameters'])) == expected_a
    assert uuids(query.potentials_trained_with('lj', LJ['parameters'])) == expected_b
    assert uuids(query.potentials_trained_with('emt', EMT['parameters'], members=False)) == {graph['pot_a'].uuid}
    # by name only: at least this graph's EMT potentials, never the LJ ones
    by_name = uuids(query.potentials_trained_with('emt'))
    assert expected_a <= by_name and not expected_b & by_name
    assert query.potentials_trained_with('lj', {**LJ['parameters'], 'sigma': 2.31}) == []
    assert query.potentials_trained_with('gpaw') == []


def test_stable_candidates_with_their_potential_and_data(graph):
    ours = {key: node for key, node in graph.items() if key.startswith('cand_')}
    hits = [hit for hit in query.stable_candidates(0.05) if hit.node.uuid in uuids(ours.values())]
    assert [hit.node.uuid for hit in hits] == [
        ours[key].uuid for key in ('cand_a_0', 'cand_b_0', 'cand_c_0', 'cand_a_1')
    ]  # 0.0, 0.01, 0.02, 0.03 eV/atom; 0.2 and the failed one are not below 0.05
    assert all(hit.node.e_above_hull < 0.05 for hit in query.stable_candidates(0.05))
    by_name = {hit.node.name: hit for hit in hits}
    assert by_name['CuAu'].potential.uuid == by_name['Cu3Au'].potential.uuid == graph['pot_a'].uuid
    assert by_name['CuAu'].dataset.uuid == graph['set_a'].uuid
    assert by_name['Cu-lj'].potential.uuid == graph['pot_b'].uuid
    assert by_name['Cu-lj'].dataset.uuid == graph['set_b'].uuid
    assert by_name['Cu2Au2'].potential is None and by_name['Cu2Au2'].dataset is None
    assert by_name['Cu2Au2'].calculator == EMT
    strict = [hit.node.uuid for hit in query.stable_candidates(0.03) if hit.node.uuid in uuids(ours.values())]
    assert strict == [ours['cand_a_0'].uuid, ours['cand_b_0'].uuid, ours['cand_c_0'].uuid]
    record = by_name['CuAu'].as_dict()
    assert record['potential'] == graph['pot_a'].uuid and record['dataset'] == graph['set_a'].uuid


#: The screening calculator and the verification calculator of the real hull runs below (LJ marked by parameters).
SCREEN_EMT = {'name': 'emt', 'parameters': {}}
VERIFY_LJ = {'name': 'lj', 'parameters': {'sigma': 2.35, 'epsilon': 0.39, 'rc': 6.0}}


def test_stable_candidates_of_real_hull_runs_name_the_screening_model(graph, worker_code, tmp_path):
    """Candidates of real ``mlmat.hull`` runs, screened by one energy model and verified by another: the query names
    the screening model (the potential and the data set it was trained on, or the calculator), never the
    verification's calculator, which sits as far upstream of a candidate as the screening relaxations do."""
    from aiida.engine import run_get_node

    from aiida_mlmat.workflows.hull import HullWorkChain
    from tests.engine.test_hull_engine import cuau_candidates

    runs = {}
    for key, model in (
        ('calculator', {'calculator': orm.Dict(SCREEN_EMT)}),
        ('potential', {'potential': graph['pot_a']}),  # 2 epochs: some relaxations may fail, and are recorded so
    ):
        _, node = run_get_node(
            HullWorkChain,
            elements=orm.List(['Cu', 'Au']),
            candidates=ConfigurationSetData(cuau_candidates()[:2]),
            code=worker_code,
            relax=orm.Dict({'max_steps': 60}),
            verify={'top': orm.Int(2), 'calculator': orm.Dict(VERIFY_LJ)},
            **model,
        )
        assert node.is_finished_ok, f'{node.exit_status} {node.exit_message}'
        verification = [child for child in node.called_descendants if query.calculator_of(child) == VERIFY_LJ]
        assert verification, 'the top candidates were verified with the LJ calculator'
        # the screening relaxations ran with the potential (none with the calculator), the verification without
        checked = {calc.uuid for calc in verification}
        screening = [
            child
            for child in node.called_descendants
            if child.process_label == 'RelaxCalculation' and child.uuid not in checked
        ]
        expected = model['potential'].uuid if key == 'potential' else None
        assert screening and all(getattr(query.potential_of(calc), 'uuid', None) == expected for calc in screening)
        assert all(query.potential_of(calc) is None for calc in verification)
        runs[key] = {c.uuid for c in node.outputs.candidates.values() if c.e_above_hull is not None}
    assert len(runs['calculator']) == 2 and runs['potential']

    hits = query.stable_candidates(100.0)
    by_run = {key: [hit for hit in hits if hit.node.uuid in uuids] for key, uuids in runs.items()}
    assert {hit.node.uuid for hit in by_run['calculator']} == runs['calculator']
    assert all(hit.potential is None and hit.dataset is None for hit in by_run['calculator'])
    assert [hit.calculator for hit in by_run['calculator']] == [SCREEN_EMT] * len(runs['calculator'])
    assert {hit.node.uuid for hit in by_run['potential']} == runs['potential']
    assert all(hit.calculator is None for hit in by_run['potential'])
    assert {hit.potential.uuid for hit in by_run['potential']} == {graph['pot_a'].uuid}
    assert {hit.dataset.uuid for hit in by_run['potential']} == {graph['set_a'].uuid}

    # a candidate screened by the potential exports, and its relaxed set's card names the potential that relaxed it
    from aiida_mlmat.archive import export_node

    candidate = orm.load_node(sorted(runs['potential'])[0])
    manifest = export_node(candidate, tmp_path / 'candidate')
    relaxed = [
        card
        for folder in manifest['datasets'].values()
        if (card := json.loads((tmp_path / 'candidate' / folder / 'card.json').read_text()))['calculators']
        and card['calculators'][0]['name'] == 'mlmat'
    ]
    assert relaxed and all(
        card['calculators'] == [{'name': 'mlmat', 'potential': graph['pot_a'].uuid}] for card in relaxed
    )
    assert (
        f'- mlmat: `{{}}` (potential {graph["pot_a"].uuid})'
        in (tmp_path / 'candidate' / manifest['datasets'][relaxed[0]['uuid']] / 'card.md').read_text()
    )


def _all_keys(data: Any) -> set[str]:
    if isinstance(data, dict):
        return set(data) | {key for item in data.values() for key in _all_keys(item)}
    if isinstance(data, list):
        return {key for item in data for key in _all_keys(item)}
    return set()


def test_provenance_chain_of_a_candidate(graph):
    candidate = graph['cand_a_0']
    chain = query.provenance_chain(candidate)
    assert chain == query.provenance_chain(candidate)  # deterministic
    assert json.loads(json.dumps(chain)) == chain  # plain JSON
    assert chain['node']['uuid'] == candidate.uuid and chain['format'] == query.CHAIN_FORMAT
    # Every process behind it: both workflows, their label and training jobs, the recording step.
    steps = {step['uuid']: step for step in chain['calculations']}
    label_jobs = calcs_of(graph['reference_a'], query.MLMAT_LABEL)
    train_jobs = calcs_of(graph['training_a'], 'aiida.calculations:mlmat.train')
    assert label_jobs | train_jobs | {graph['reference_a'].uuid, graph['training_a'].uuid} <= set(steps)
    assert all(steps[uuid]['calculator'] == EMT for uuid in label_jobs)
    assert all(steps[uuid]['exit_status'] == 0 for uuid in label_jobs | train_jobs)
    assert steps[graph['reference_a'].uuid]['kind'] == 'workflow'
    # Nothing of the LJ branch and nothing downstream of the candidate.
    assert graph['reference_b'].uuid not in steps and graph['training_b'].uuid not in steps
    assert candidate.creator.uuid == chain['calculations'][-1]['uuid']
    datasets = [entry['uuid'] for entry in chain['datasets']]
    assert graph['set_a'].uuid in datasets and graph['set_b'].uuid not in datasets
    set_a = next(entry for entry in chain['datasets'] if entry['uuid'] == graph['set_a'].uuid)
    assert set_a['n_configurations'] == 12 and set_a['calculator'] == EMT and set_a['species'] == ['Au', 'Cu']
    models = chain['models']
    assert {entry['uuid'] for entry in models} == trained_potentials(graph['training_a'])
    assert models[-1]['uuid'] == graph['pot_a'].uuid and models[-1]['members'] == 2
    # Ordered from the sources to the node: every link goes forward, and the typed lists follow that order.
    order = [entry['uuid'] for entry in chain['nodes']]
    assert order[-1] == candidate.uuid and len(set(order)) == len(order)
    position = {uuid: index for index, uuid in enumerate(order)}
    assert {uuid for link in chain['links'] for uuid in link[:2]} == set(order)
    assert all(position[source] < position[target] for source, target, *_ in chain['links'])
    for kind in ('calculations', 'datasets', 'models'):
        ranks = [position[entry['uuid']] for entry in chain[kind]]
        assert ranks == sorted(ranks), kind
    # Named by UUID only, never by PK.
    keys = _all_keys(chain)
    assert not keys & {'pk', 'id', 'pks', 'node_id'}
    uuid_fields = [entry['uuid'] for kind in ('calculations', 'datasets', 'models', 'nodes') for entry in chain[kind]]
    assert all(len(value) == 36 and value.count('-') == 4 for value in uuid_fields)


def test_provenance_cli_json_and_table(graph):
    potential = graph['pot_a']
    result = CliRunner().invoke(cli, ['provenance', str(potential.pk), '--json'], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1]) == query.provenance_chain(potential)
    table = CliRunner().invoke(cli, ['provenance', potential.uuid], catch_exceptions=False)
    assert table.exit_code == 0, table.output
    assert f'provenance of data.mlmat.potential.PotentialData {potential.uuid}' in table.output
    assert '2 member(s), species Cu,Au' in table.output and 'LabelCalculation' in table.output
    assert 'emt {"asap_cutoff": false}' in table.output
    # every set and potential says which step made it and which workflow returned it as what
    chain = query.provenance_chain(potential)
    ensemble = next(entry for entry in chain['models'] if entry['uuid'] == potential.uuid)
    assert ensemble['made_by'] == {'process': potential.creator.uuid, 'link_label': 'result'}
    assert ensemble['returned_as'][0] == {'process': graph['training_a'].uuid, 'link_label': 'potential'}
    training_set = next(entry for entry in chain['datasets'] if entry['uuid'] == graph['set_a'].uuid)
    assert training_set['returned_as'][0]['process'] == graph['reference_a'].uuid
    assert 'returned as potential by #' in table.output and 'TrainingWorkChain' in table.output
    train_steps = [step for step in chain['calculations'] if step['process_label'] == 'TrainBaseWorkChain']
    assert sorted(step['call_link_label'] for step in train_steps) == ['member_0', 'member_1']
    # where every job ran (its Computer and the scheduler's job id); workflows and calcfunctions ran nowhere
    for step in chain['calculations']:
        node = orm.load_node(step['uuid'])
        if isinstance(node, orm.CalcJobNode):
            assert step['computer'] == node.computer.label and step['job_id'] == node.get_job_id()
            assert step['job_id'] and f'@{node.computer.label} job {node.get_job_id()}' in table.output
        else:
            assert step['computer'] is None and step['job_id'] is None
    missing = CliRunner().invoke(cli, ['provenance', '00000000-0000-4000-8000-000000000000'])
    assert missing.exit_code == 4 and 'no unique node' in missing.output


def test_provenance_chain_of_a_workflow_covers_what_it_returned(graph):
    """The PK `mlmat run` prints is a workflow: its chain holds the steps behind its outputs, not just its inputs."""
    training = graph['training_a']
    chain = query.provenance_chain(training)
    assert chain['node']['uuid'] == training.uuid
    steps = {entry['uuid'] for entry in chain['calculations']}
    assert calcs_of(training, 'aiida.calculations:mlmat.train') <= steps
    assert calcs_of(graph['reference_a'], query.MLMAT_LABEL) <= steps  # behind its input, the training set
    assert {entry['uuid'] for entry in chain['models']} == trained_potentials(training)
    assert graph['set_a'].uuid in {entry['uuid'] for entry in chain['datasets']}
    assert graph['training_b'].uuid not in steps  # nothing of the other workflow


def test_potentials_trained_on_a_configuration_follow_splits_and_bootstrap_samples(graph):
    """A configuration of the training set went into a member only if that member's own train (or validation)
    input held it: a test configuration is in none, and the ensemble lists exactly the members that trained on it."""
    training, ensemble = graph['training_a'], graph['pot_a']
    calcs = [orm.load_node(uuid) for uuid in calcs_of(training, 'aiida.calculations:mlmat.train')]
    calcs = [calc for calc in calcs if 'potential' in calc.outputs]
    ours = {calc.outputs.potential.uuid for calc in calcs} | {ensemble.uuid}
    member_links = sorted(
        (link for link in ensemble.creator.base.links.get_incoming(link_type=LinkType.INPUT_CALC).all()),
        key=lambda link: link.link_label,
    )
    members_in_order = [link.node.uuid for link in member_links if link.link_label.startswith('member_')]
    position = {uuid: index for index, uuid in enumerate(members_in_order)}  # as make_ensemble orders its inputs

    def keys(dataset):
        return {query.configuration_key(atoms) for atoms in dataset.get_atoms()}

    splits = training.outputs.splits
    for atoms in splits.test.get_atoms():
        assert not [hit for hit in query.potentials_trained_on(atoms) if hit.potential.uuid in ours]
    checked_roles = set()
    for index, atoms in enumerate(splits.train.get_atoms() + splits.validation.get_atoms()):
        key = query.configuration_key(atoms)
        expected = {}
        for calc in calcs:
            role = (
                'train'
                if key in keys(calc.inputs.train)
                else 'validation'
                if key in keys(calc.inputs.validation)
                else None
            )
            if role:
                expected[calc.outputs.potential.uuid] = role
        hits = {hit.potential.uuid: hit for hit in query.potentials_trained_on(atoms) if hit.potential.uuid in ours}
        assert {uuid: hit.role for uuid, hit in hits.items() if uuid != ensemble.uuid} == expected, index
        strongest = next((role for role in ('train', 'validation') if role in expected.values()), None)
        if strongest is None:
            assert ensemble.uuid not in hits  # left out of every bootstrap sample and of validation
        else:
            members = tuple(sorted(position[uuid] for uuid, role in expected.items() if role == strongest))
            assert (hits[ensemble.uuid].role, hits[ensemble.uuid].members) == (strongest, members)
        checked_roles |= set(expected.values())
    assert 'train' in checked_roles
    first = splits.train.get_atoms()[0]
    assert query.potentials_trained_on((splits.train, 0)) == query.potentials_trained_on(first)
    with pytest.raises(IndexError, match='outside the set'):
        query.potentials_trained_on((splits.train, splits.train.count))

    # Each member's train input now caches its keys in an extra, stamped with the key's version and length and the
    # set's content hash (read once, not at every question); a cache that does not match is computed afresh.
    train_input = calcs[0].inputs.train
    cached = train_input.base.extras.get(query.KEY_EXTRA)
    expected = [query.configuration_key(atoms)[: query.KEY_EXTRA_LENGTH] for atoms in train_input.get_atoms()]
    assert cached['keys'] == expected and cached['sha256'] == train_input.base.attributes.get('sha256')
    answer = query.potentials_trained_on(first)
    zeros = ['0' * query.KEY_EXTRA_LENGTH] * len(expected)
    stale = [
        {**cached, 'keys': cached['keys'][:1]},  # edited: too short
        {**cached, 'version': query.KEY_VERSION + 1, 'keys': zeros},  # made by another key
        {**cached, 'sha256': 'f' * 64, 'keys': zeros},  # made for a set of other content
        {**cached, 'keys': [1] * len(expected)},  # not keys
        expected,  # a bare list, no stamp
    ]
    for value in stale:
        train_input.base.extras.set(query.KEY_EXTRA, value)
        assert query.configuration_keys(train_input) == expected
        assert train_input.base.extras.get(query.KEY_EXTRA) == cached
    assert query.potentials_trained_on(first) == answer


def test_dataset_used_by_command(graph):
    dataset = graph['set_a']
    result = CliRunner().invoke(cli, ['dataset', 'used-by', dataset.uuid, '3', '--json'], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data['index'] == 3 and data['configurations'] == dataset.uuid
    assert data['potentials'] == [hit.as_dict() for hit in query.potentials_trained_on((dataset, 3))]
    table = CliRunner().invoke(cli, ['dataset', 'used-by', str(dataset.pk), '3'], catch_exceptions=False)
    assert table.exit_code == 0 and f'configuration 3 of {dataset.uuid}' in table.output
    outside = CliRunner().invoke(cli, ['dataset', 'used-by', dataset.uuid, str(dataset.count), '--json'])
    assert outside.exit_code == 2 and 'is outside the set of' in outside.output


def test_potential_show_reads_the_graph(graph):
    potential = graph['pot_a']
    result = CliRunner().invoke(cli, ['potential', 'show', potential.uuid, '--json'], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data['potential'] == potential.uuid and data['n_members'] == 2
    assert data['training_set'] == {
        'uuid': graph['set_a'].uuid, 'pk': graph['set_a'].pk, 'n_configurations': graph['set_a'].count
    }  # fmt: skip
    assert data['reference_calculators'] == [EMT]
    assert data['metrics']['forces_rmse'] == potential.metrics['forces_rmse']
    assert data['made_by']['process_label'] == 'make_ensemble'
    assert data['made_by']['caller']['uuid'] == graph['training_a'].uuid
    table = CliRunner().invoke(cli, ['potential', 'show', str(potential.pk)], catch_exceptions=False)
    assert f'training set: pk {graph["set_a"].pk} {graph["set_a"].uuid}' in table.output
    assert 'eV/Å' in table.output and f'in TrainingWorkChain<{graph["training_a"].pk}>' in table.output
    wrong = CliRunner().invoke(cli, ['potential', 'show', graph['set_a'].uuid])
    assert wrong.exit_code == 2 and 'not a PotentialData' in wrong.output
    # a member was trained on a sample of the same set's split: it names the set of the ensemble it went into
    members = trained_potentials(graph['training_a']) - {potential.uuid}
    assert len(members) == 2
    for member in members:
        shown = CliRunner().invoke(cli, ['potential', 'show', member, '--json'], catch_exceptions=False)
        assert json.loads(shown.stdout.strip().splitlines()[-1])['training_set']['uuid'] == graph['set_a'].uuid
        assert query.training_dataset(orm.load_node(member)) == graph['set_a']
