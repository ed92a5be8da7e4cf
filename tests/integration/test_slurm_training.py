"""Integration tier: a training job killed by SLURM's time limit is resumed from its checkpoint.

Same method as the labelling walltime test in ``test_slurm.py``: once the trainer has written a checkpoint, the
test freezes the job (``scancel --signal=STOP --full``) so that SLURM's own time limit (1 minute) kills it, which
makes the kill deterministic whatever the machine's speed. The restart wrapper must resume from the checkpoint
and finish the remaining epochs.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from aiida import orm
from aiida.engine import submit

from aiida_mlmat.calcjobs.train import CHECKPOINT_FILE
from aiida_mlmat.data.configurations import ConfigurationSetData
from aiida_mlmat.workflows.train import TrainBaseWorkChain
from tests.integration.test_slurm import slurm_computer, slurm_worker, squeue_state  # noqa: F401 (fixtures)
from tests.unit.test_model import emt_data

pytestmark = pytest.mark.integration

EPOCHS = 40


def wait_for_checkpoint(workchain, timeout: float = 150) -> tuple[orm.CalcJobNode, str]:
    """Wait until the first training job runs in SLURM and has written a checkpoint; return it and its job id."""
    deadline = time.monotonic() + timeout
    state = 'no CalcJob yet'
    while time.monotonic() < deadline:
        assert not workchain.is_terminated, f'{workchain} ended before its job could be caught: {state}'
        calcs = [node for node in workchain.called if isinstance(node, orm.CalcJobNode)]
        if calcs:
            calc = calcs[0]
            job_id, workdir = calc.get_job_id(), calc.get_remote_workdir()
            ready = bool(workdir) and (Path(workdir) / CHECKPOINT_FILE).exists()
            state = f'job {job_id}, checkpoint {ready}, calc state {calc.get_state()}'
            if job_id and ready:
                assert not (Path(workdir) / 'results.json').exists(), f'the job finished first ({state})'
                return calc, job_id
        time.sleep(0.2)
    raise AssertionError(f'no checkpoint within {timeout} s: {state}')


def test_training_killed_by_walltime_resumes_from_checkpoint(submit_and_await, slurm_worker):  # noqa: F811
    data = emt_data(24, 21)
    builder = TrainBaseWorkChain.get_builder()
    builder.trainer.code = slurm_worker
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
    workchain = submit(builder)
    calc, job_id = wait_for_checkpoint(workchain)
    subprocess.run(['scancel', '--signal=STOP', '--full', job_id], check=True)
    node = submit_and_await(workchain, timeout=300)

    assert squeue_state(job_id) in ('TIMEOUT', ''), squeue_state(job_id)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    calcs = sorted((n for n in node.called if isinstance(n, orm.CalcJobNode)), key=lambda n: n.ctime)
    assert len(calcs) == 2, [c.exit_status for c in calcs]
    first, second = calcs
    assert first.pk == calc.pk
    assert first.exit_status == 120, (first.exit_status, first.exit_message)  # ERROR_SCHEDULER_OUT_OF_WALLTIME
    assert 'results' not in first.outputs  # killed: the worker never wrote its summary
    assert second.inputs.checkpoint.uuid == first.outputs.checkpoint.uuid
    import io

    import torch

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
