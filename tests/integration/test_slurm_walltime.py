"""Integration tier: jobs ended by SLURM's time limit on a real SLURM reached over ssh are restarted, a labelling job
from its partial labels and a training job from its last checkpoint.

The kill is made deterministic: once a job has made some progress (a few configurations labelled, a checkpoint
written), the test freezes it (``scancel --signal=STOP --full``), so the job is still running but makes no progress
when SLURM's time limit (1 minute, the smallest SLURM has; slurmctld checks limits every 30 s, so the kill comes
60-90 s after the start) ends it with SIGCONT + SIGTERM. A job sized to outrun the limit on its own would depend on
this machine's speed and load; the freeze does not, and the restarted jobs are short.

One module fixture submits both workflows, catches and freezes both jobs, so that their waits for the time limit
overlap instead of adding up (the one-node cluster has a CPU for each); each test then awaits its own workflow.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import time
from pathlib import Path

import pytest
from aiida import orm
from aiida.engine import submit
from aiida.engine.processes import control

from aiida_mlmat.calcjobs.train import CHECKPOINT_FILE
from aiida_mlmat.common.constants import INDEX_KEY
from aiida_mlmat.data.configurations import ConfigurationSetData
from aiida_mlmat.workflows.train import TrainBaseWorkChain
from tests.conftest import DAEMON_WORKERS
from tests.engine.helpers import assert_labels_equal_emt
from tests.integration.test_slurm import (  # noqa: F401 (fixtures)
    MIN_PROGRESS,
    N_LARGE,
    first_job,
    label_progress,
    label_restart_builder,
    large_cu_set,
    slurm_computer,
    slurm_worker,
    squeue_state,
)
from tests.unit.test_model import emt_data

pytestmark = pytest.mark.integration

#: Epochs of the training job (one checkpoint each).
EPOCHS = 40
EMT = {'name': 'emt', 'parameters': {}}
#: Seconds to catch both jobs running with some progress (each took up to 150 s alone; a one-CPU node runs the
#: second only once the first is killed, 60-90 s in).
CATCH_TIMEOUT_S = 240


def checkpoint_written(workchain) -> tuple[tuple[orm.CalcJobNode, str] | None, str]:
    """Whether the first training job of ``workchain`` runs in SLURM and has written a checkpoint.

    Return ``(calc, job_id)`` or None, and a description of the state for a message.
    """
    job = first_job(workchain)
    if job is None:
        return None, 'no CalcJob yet'
    calc, job_id, workdir = job
    ready = bool(workdir) and (Path(workdir) / CHECKPOINT_FILE).exists()
    state = f'job {job_id}, checkpoint {ready}, calc state {calc.get_state()}'
    if job_id and ready:
        assert not (Path(workdir) / 'results.json').exists(), f'the job finished first ({state})'
        return (calc, job_id), state
    return None, state


def training_builder(code):
    """A ``mlmat.train.base`` builder whose job would run far past one minute only if frozen."""
    data = emt_data(24, 21)
    builder = TrainBaseWorkChain.get_builder()
    builder.trainer.code = code
    builder.trainer.train = ConfigurationSetData(data[:18])
    builder.trainer.validation = ConfigurationSetData(data[18:])
    builder.trainer.model = orm.Dict(
        {'hidden': [16], 'descriptor': {'kind': 'chebyshev', 'rcut': 4.5, 'n_radial': 6, 'n_angular': 3}}
    )
    builder.trainer.training = orm.Dict(
        {'epochs': EPOCHS, 'batch_size': 6, 'learning_rate': 0.01, 'checkpoint_every_epochs': 1, 'patience': 1000}
    )
    builder.trainer.metadata.options.max_wallclock_seconds = 60
    builder.trainer.soft_time_limit = orm.Float(3600.0)  # the trainer must not stop itself before SLURM does
    builder.max_iterations = orm.Int(3)
    return builder


@pytest.fixture(scope='module')
def frozen_jobs(daemon_client, slurm_worker):  # noqa: F811
    """Submit the labelling and the training workflow, freeze each one's first job once it has made progress.

    Return ``{'label': (workchain, calc, job_id), 'training': (...)}``.
    """
    if not daemon_client.is_daemon_running:
        daemon_client.start_daemon(number_workers=DAEMON_WORKERS)
    label = label_restart_builder(slurm_worker, large_cu_set(), EMT, max_wallclock_seconds=60)
    label.label.soft_time_limit = orm.Float(3600.0)  # the worker must not stop itself before SLURM does
    workchains = {'label': submit(label), 'training': submit(training_builder(slurm_worker))}
    probes = {
        'label': lambda: label_progress(workchains['label'], MIN_PROGRESS),
        'training': lambda: checkpoint_written(workchains['training']),
    }
    frozen, states = {}, {}
    deadline = time.monotonic() + CATCH_TIMEOUT_S
    try:
        while len(frozen) < len(probes):
            for name, probe in probes.items():
                if name in frozen:
                    continue
                found, states[name] = probe()
                if found:
                    calc, job_id = found
                    subprocess.run(['scancel', '--signal=STOP', '--full', job_id], check=True)
                    frozen[name] = (workchains[name], calc, job_id)
            if len(frozen) < len(probes):
                assert time.monotonic() < deadline, f'not every job made progress within {CATCH_TIMEOUT_S} s: {states}'
                time.sleep(0.2)
    except BaseException:
        # Neither workflow is awaited now: end both, so that no frozen job holds a CPU of the node until its limit.
        for workchain in workchains.values():
            with contextlib.suppress(Exception):
                control.kill_processes([workchain], timeout=10)
        for _, _, job_id in frozen.values():
            subprocess.run(['scancel', job_id], check=False)
        raise
    return frozen


def killed_and_restarted(submit_and_await, workchain, calc, job_id, timeout):
    """Await ``workchain``; check that its frozen job ``calc`` was ended by the time limit (SLURM's ``TIMEOUT``, exit
    120) and that one restarted job finished it. Return the workflow, the killed job and the restarted one."""
    node = submit_and_await(workchain, timeout=timeout)
    assert squeue_state(job_id) in ('TIMEOUT', ''), squeue_state(job_id)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    calcs = sorted((n for n in node.called if isinstance(n, orm.CalcJobNode)), key=lambda n: n.ctime)
    assert len(calcs) == 2, [c.exit_status for c in calcs]
    first, second = calcs
    assert first.pk == calc.pk
    assert first.exit_status == 120, (first.exit_status, first.exit_message)  # ERROR_SCHEDULER_OUT_OF_WALLTIME
    assert second.is_finished_ok, (second.exit_status, second.exit_message)
    return node, first, second


def test_walltime_kill_is_restarted_from_partial(submit_and_await, frozen_jobs):
    """A job ended by SLURM's time limit (exit 120) is restarted from its partial labels; the final set is complete."""
    node, first, second = killed_and_restarted(submit_and_await, *frozen_jobs['label'], timeout=240)
    stderr = first.outputs.retrieved.base.repository.get_object_content('_scheduler-stderr.txt')
    assert 'DUE TO TIME LIMIT' in stderr, stderr
    partial = first.outputs.partial_configurations
    assert MIN_PROGRESS <= partial.count < N_LARGE
    assert second.inputs.restart_from.uuid == partial.uuid
    assert second.outputs.results['n_reused'] == partial.count
    assert second.outputs.results['n_labelled'] == N_LARGE
    labelled = node.outputs.configurations
    frames = labelled.get_atoms()
    assert [frame.info[INDEX_KEY] for frame in frames] == list(range(N_LARGE))
    assert assert_labels_equal_emt(frames) == N_LARGE


def test_training_killed_by_walltime_resumes_from_checkpoint(submit_and_await, frozen_jobs):
    """A training job ended by SLURM's time limit resumes from its checkpoint; the learning curve is continuous."""
    import torch

    node, first, second = killed_and_restarted(submit_and_await, *frozen_jobs['training'], timeout=300)
    assert 'results' not in first.outputs  # killed: the worker never wrote its summary
    assert second.inputs.checkpoint.uuid == first.outputs.checkpoint.uuid
    with first.outputs.checkpoint.open(mode='rb') as handle:
        checkpoint = torch.load(io.BytesIO(handle.read()), map_location='cpu', weights_only=True)
    done = checkpoint['state']['epoch']
    assert 1 <= done < EPOCHS  # the killed job had checkpointed some, not all, epochs
    curve = second.outputs.results['learning_curve']
    assert [row['epoch'] for row in curve] == list(range(1, EPOCHS + 1))  # one continuous curve
    # The resumed job continued the killed one's curve (AiiDA stores floats to 14 significant digits).
    for stored, original in zip(curve[:done], checkpoint['state']['curve'], strict=True):
        assert stored == pytest.approx(original, rel=1e-12)
    assert node.outputs.potential.base.attributes.get('training')['epochs'] == EPOCHS
