"""Production tier: the daemon and the broker failing under running workflows (PostgreSQL + RabbitMQ, 2 workers).

- The whole daemon (circus and both workers) killed with SIGKILL in the middle of a ``mlmat.reference`` and a
  ``mlmat.training`` workchain, then restarted: both finish with the results of an undisturbed run and no CalcJob
  runs twice. RabbitMQ keeps the tasks the dead workers held (unacknowledged) and hands them to the new workers.
  A kill in the milliseconds between a child's checkpoint and its broker task leaves that child without a task
  (AiiDA's own window, see ``aiida_mlmat.workflows.idempotent``): ``verdi process repair`` must revive exactly it.
- Broker tasks lost (the process queue purged while the daemon is down): the processes stall; ``verdi process
  repair`` revives them and they finish; a second repair finds nothing to do.
- A task delivered twice (a second ``continue`` task for a process that has one): no duplicate CalcJob, no
  duplicate data set; ``verdi process play`` and a task for a finished process change nothing.
"""

from __future__ import annotations

import time

import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import submit

from aiida_mlmat.common.constants import INDEX_KEY
from aiida_mlmat.data.configurations import ConfigurationSetData
from aiida_mlmat.workflows.reference import ReferenceWorkChain
from aiida_mlmat.workflows.training import TrainingWorkChain
from tests.engine.helpers import SMALL_SAMPLE, assert_labels_equal_emt
from tests.production.conftest import (
    await_terminated,
    calcjob_census,
    describe_duplicates,
    kill_daemon_hard,
    last_pk,
    no_excepted_processes,
    process_census,
    purge_tasks,
    queued_tasks,
    repair_processes,
    revive_cut_off_launches,
    start_daemon,
    stop_daemon,
    verdi,
    wait_until,
)
from tests.unit.test_model import emt_data

pytestmark = pytest.mark.production

MODEL = {'hidden': [8], 'descriptor': {'kind': 'chebyshev', 'rcut': 4.5, 'n_radial': 6, 'n_angular': 3}}
TRAINING = {'epochs': 20, 'batch_size': 4, 'learning_rate': 0.01, 'forces_weight': 10.0, 'checkpoint_every_epochs': 5}


@pytest.fixture(scope='module')
def training_set():
    return ConfigurationSetData(emt_data(20, 5)).store()


def reference_builder(code, emt, chunk_size: int = 10):
    """``mlmat.reference`` on Cu-Au seeds: 50 configurations in chunks of ``chunk_size``."""
    builder = ReferenceWorkChain.get_builder_from_protocol(
        code, calculator=emt, elements=['Cu', 'Au'], overrides={'chunk_size': chunk_size}
    )
    builder.sample.parameters = orm.Dict(SMALL_SAMPLE)
    return builder


def training_builder(code, dataset):
    return TrainingWorkChain.get_builder_from_protocol(
        code, dataset, overrides={'ensemble_size': 2, 'model': MODEL, 'training': TRAINING}
    )


def live_calcjobs(workflow: orm.WorkflowNode) -> list[orm.CalcJobNode]:
    """CalcJobs below ``workflow`` that exist and have not terminated."""
    return [n for n in workflow.called_descendants if isinstance(n, orm.CalcJobNode) and not n.is_terminated]


def labels_by_index(node: orm.WorkflowNode) -> dict[int, float]:
    return {frame.info[INDEX_KEY]: frame.calc.results['energy'] for frame in node.outputs.configurations.get_atoms()}


@pytest.mark.timeout(1800)
def test_daemon_sigkill_mid_workflow_loses_nothing(
    started_daemon_client, aiida_profile, worker_code, emt, training_set
):
    """SIGKILL of circus and both workers while label and training jobs are in flight; restart; same results."""
    client = started_daemon_client
    first_pk = last_pk()
    # The undisturbed run, both workflows at once.
    calm = {'training': submit(training_builder(worker_code, training_set))}
    calm['reference'] = submit(reference_builder(worker_code, emt))
    for node in calm.values():
        await_terminated(node, client, timeout=600)
        assert node.is_finished_ok, (node, node.exit_status, node.exit_message)

    # The disturbed run: kill when training members and label chunks are both running.
    training = submit(training_builder(worker_code, training_set))
    reference = submit(reference_builder(worker_code, emt))

    def both_in_flight() -> bool:
        """Label and training jobs running; the workflows may still be launching (a replayed launch step is
        matched by call-link label: see aiida_mlmat.workflows.idempotent)."""
        assert not training.is_terminated and not reference.is_terminated, 'a workflow ended before the kill'
        labelling = any(c.process_type.endswith('mlmat.label') for c in live_calcjobs(reference))
        return labelling and any(c.process_type.endswith('mlmat.train') for c in live_calcjobs(training))

    wait_until(both_in_flight, 300, 'label and training jobs in flight together')
    in_flight = {key: len(live_calcjobs(node)) for key, node in (('training', training), ('reference', reference))}
    assert in_flight['training'] >= 1 and in_flight['reference'] >= 1, in_flight
    killed = kill_daemon_hard(client)
    assert len(killed) >= 3  # circus and two workers (and circus' statistics process)
    assert not training.is_terminated and not reference.is_terminated
    time.sleep(2)
    assert not training.is_terminated and not reference.is_terminated  # nothing runs them while the daemon is dead
    start_daemon(client)
    revived = revive_cut_off_launches([training, reference], client, aiida_profile)
    print(f'children revived by `verdi process repair` (a kill between checkpoint and task): {revived}')
    for node in (training, reference):
        await_terminated(node, client, timeout=300)
        assert node.is_finished_ok, (node, node.exit_status, node.exit_message)

    # Same labels as the undisturbed run (and as direct EMT), same count.
    assert labels_by_index(reference) == labels_by_index(calm['reference'])
    assert reference.outputs.configurations.count == 50
    assert assert_labels_equal_emt(reference.outputs.configurations.get_atoms()) == 50
    # Same training metrics and learning curves (same seeds, same data: deterministic).
    metrics, calm_metrics = training.outputs.metrics.get_dict(), calm['training'].outputs.metrics.get_dict()
    assert metrics.keys() == calm_metrics.keys()
    assert (
        metrics.pop('units') == calm_metrics.pop('units') == {'energy': 'eV/atom', 'forces': 'eV/Å', 'stress': 'eV/Å^3'}
    )
    for key, value in calm_metrics.items():
        assert metrics[key] == pytest.approx(value, rel=1e-6, abs=1e-12), key
    assert training.outputs.potential.n_members == 2
    # Nothing ran twice: every CalcJob once per distinct input, and the same processes as the undisturbed run.
    for disturbed, undisturbed in ((training, calm['training']), (reference, calm['reference'])):
        census = calcjob_census(disturbed)
        assert max(census.values()) == 1, describe_duplicates(disturbed)
        assert census == calcjob_census(undisturbed)
        assert process_census(disturbed) == process_census(undisturbed)
    assert no_excepted_processes(first_pk) == []


@pytest.mark.timeout(1200)
def test_lost_broker_tasks_are_revived_by_repair(started_daemon_client, aiida_profile, worker_code, emt):
    """Tasks purged from RabbitMQ while the daemon is down: processes stall; `verdi process repair` revives them."""
    client = started_daemon_client
    first_pk = last_pk()
    node = submit(reference_builder(worker_code, emt, chunk_size=25))
    wait_until(lambda: live_calcjobs(node), 300, 'a CalcJob of the workflow')
    stop_daemon(client)  # graceful: the workers hand their tasks back to RabbitMQ
    stuck = [n for n in [node, *node.called_descendants] if not n.is_terminated]
    assert node in stuck and len(stuck) >= 2
    assert purge_tasks(aiida_profile) == len(stuck)  # exactly one task per live process was queued, now lost
    assert queued_tasks(aiida_profile) == 0

    start_daemon(client)
    time.sleep(8)
    assert not node.is_terminated and all(not n.is_terminated for n in stuck)  # stuck: nobody has their tasks
    stop_daemon(client)  # `verdi process repair` requires the daemon to be stopped

    output = repair_processes(aiida_profile)
    assert 'active processes without process task' in output
    for process in stuck:
        assert f'Revived process `{process.pk}`' in output
    assert queued_tasks(aiida_profile) == len(stuck)

    start_daemon(client)
    await_terminated(node, client, timeout=300)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    assert node.outputs.configurations.count == 50
    assert assert_labels_equal_emt(node.outputs.configurations.get_atoms()) == 50
    census = calcjob_census(node)
    assert max(census.values()) == 1, census

    # A second repair changes nothing.
    stop_daemon(client)
    n_nodes = last_pk()
    output = repair_processes(aiida_profile)
    assert 'No inconsistencies detected' in output and 'Revived' not in output
    assert queued_tasks(aiida_profile) == 0 and last_pk() == n_nodes
    start_daemon(client)
    assert no_excepted_processes(first_pk) == []


@pytest.mark.timeout(1200)
def test_duplicate_tasks_create_no_duplicates(started_daemon_client, aiida_profile, worker_code, emt):
    """A second task for the same process, `verdi process play`, and a task for a finished process: no duplicate
    CalcJob, no duplicate data set."""
    from aiida.manage import get_manager

    client = started_daemon_client
    first_pk = last_pk()
    stop_daemon(client)
    node = submit(reference_builder(worker_code, emt, chunk_size=25))
    controller = get_manager().get_process_controller()
    controller.continue_process(node.pk, nowait=True, no_reply=True)  # the same task, delivered twice
    assert queued_tasks(aiida_profile) == 2
    start_daemon(client)
    wait_until(lambda: live_calcjobs(node), 300, 'a CalcJob of the workflow')
    played = verdi(aiida_profile, 'process', 'play', str(node.pk))
    assert played.returncode == 0, played.stdout + played.stderr
    await_terminated(node, client, timeout=300)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)

    census = calcjob_census(node)
    assert max(census.values()) == 1, census
    assert sum(census.values()) == 3  # one sample job, two label chunks of 25
    labelled = node.outputs.configurations
    assert labelled.count == 50 and assert_labels_equal_emt(labelled.get_atoms()) == 50
    sets = [
        link.node
        for process in node.called_descendants
        for link in process.base.links.get_outgoing(link_type=LinkType.CREATE).all()
        if isinstance(link.node, ConfigurationSetData)
    ]
    assert len(sets) >= 6  # seeds, sample, 2 chunks, 2 labelled chunks, the collected set
    assert len({s.sha256 for s in sets}) == len(sets)  # no two data sets with the same content

    # A task for a process that has finished is acknowledged and dropped: no new node.
    n_nodes = last_pk()
    controller.continue_process(node.pk, nowait=True, no_reply=True)
    wait_until(lambda: queued_tasks(aiida_profile) == 0, 60, 'the task for the finished process to be consumed')
    time.sleep(2)
    assert last_pk() == n_nodes and node.is_finished_ok
    assert no_excepted_processes(first_pk) == []
