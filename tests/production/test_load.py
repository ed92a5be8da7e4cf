"""Production tier, load test: 200 reference configurations in 20 label jobs and a 3-member ensemble training,
submitted at once to the PostgreSQL + RabbitMQ profile with two daemon workers. Every node is accounted for.

The wall time (submission to the last workflow's end) is printed; run with ``-s`` to see it.
"""

from __future__ import annotations

import time

import pytest
from aiida import orm
from aiida.engine import submit
from ase.build import bulk

from aiida_mlmat.common.constants import INDEX_KEY
from aiida_mlmat.data.configurations import ConfigurationSetData
from aiida_mlmat.workflows.reference import ReferenceWorkChain
from aiida_mlmat.workflows.training import TrainingWorkChain
from tests.engine.helpers import SMALL_SAMPLE, assert_labels_equal_emt
from tests.production.conftest import await_terminated, calcjob_census, last_pk, no_excepted_processes
from tests.unit.test_model import emt_data

pytestmark = [pytest.mark.production, pytest.mark.load]

N_SEEDS = 40  # x (seed + 2 rattles + 1 strain + 1 vacancy) = 200 configurations
CHUNK = 10  # -> 20 label jobs
MEMBERS = 3
MODEL = {'hidden': [8], 'descriptor': {'kind': 'chebyshev', 'rcut': 4.5, 'n_radial': 6, 'n_angular': 3}}
TRAINING = {'epochs': 20, 'batch_size': 4, 'learning_rate': 0.01, 'forces_weight': 10.0}


def seeds() -> ConfigurationSetData:
    """40 four-atom Cu-Au cells: five compositions x eight lattice constants."""
    frames = []
    for index in range(N_SEEDS):
        n_au = index % 5
        atoms = bulk('Cu', 'fcc', a=3.61 + 0.1 * n_au + 0.01 * (index // 5), cubic=True)
        atoms.symbols[:n_au] = 'Au'
        frames.append(atoms)
    return ConfigurationSetData(frames)


@pytest.mark.timeout(1800)
def test_load_200_configurations_and_3_members(started_daemon_client, worker_code, emt):
    client = started_daemon_client
    first_pk = last_pk()
    reference_builder = ReferenceWorkChain.get_builder_from_protocol(
        worker_code, calculator=emt, structures=seeds(), overrides={'chunk_size': CHUNK}
    )
    reference_builder.sample.parameters = orm.Dict(SMALL_SAMPLE)
    dataset = ConfigurationSetData(emt_data(24, 17)).store()
    training_builder = TrainingWorkChain.get_builder_from_protocol(
        worker_code, dataset, overrides={'ensemble_size': MEMBERS, 'model': MODEL, 'training': TRAINING}
    )
    start = time.perf_counter()
    reference = submit(reference_builder)
    training = submit(training_builder)
    for node in (reference, training):
        await_terminated(node, client, timeout=900)
    wall = time.perf_counter() - start
    print(f'\nload test: 200 configurations in {200 // CHUNK} label jobs + {MEMBERS} training members, '
          f'{client.profile.name} with 2 workers: {wall:.1f} s wall time')  # fmt: skip

    assert reference.is_finished_ok, (reference.exit_status, reference.exit_message)
    assert training.is_finished_ok, (training.exit_status, training.exit_message)
    labelled = reference.outputs.configurations
    assert labelled.count == 200 and labelled.base.attributes.get('n_excluded') == 0
    frames = labelled.get_atoms()
    assert [frame.info[INDEX_KEY] for frame in frames] == list(range(200))
    assert assert_labels_equal_emt(frames) == 200
    label_jobs = [n for n in reference.called_descendants if n.process_type == 'aiida.calculations:mlmat.label']
    assert len(label_jobs) == 200 // CHUNK and all(job.is_finished_ok for job in label_jobs)
    assert sum(job.outputs.results['n_labelled'] for job in label_jobs) == 200
    train_jobs = [n for n in training.called_descendants if n.process_type == 'aiida.calculations:mlmat.train']
    assert len(train_jobs) == MEMBERS and all(job.is_finished_ok for job in train_jobs)
    assert training.outputs.potential.n_members == MEMBERS
    for workflow in (reference, training):
        census = calcjob_census(workflow)
        assert max(census.values()) == 1, census
    assert no_excepted_processes(first_pk) == []
    # Every process of this test has terminated (nothing left waiting or stuck).
    live = orm.QueryBuilder().append(
        orm.ProcessNode,
        filters={'id': {'>': first_pk}, 'attributes.process_state': {'in': ['created', 'waiting', 'running']}},
    )
    assert live.count() == 0
