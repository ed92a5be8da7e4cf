"""Unit tier: the ``mlmat.train`` CalcJob's job script (GPU directives) and input files, by a dry run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiida import orm
from aiida.engine import run_get_node

from aiida_mlmat.data.configurations import ConfigurationSetData
from aiida_mlmat.workflows.training import TrainingWorkChain
from tests.unit.test_model import emt_data

pytestmark = pytest.mark.unit


def test_gpus_become_slurm_gres_directive_and_cuda_device(aiida_computer, tmp_path, monkeypatch):
    """`gpus=2` on a SLURM Computer writes `#SBATCH --gres=gpu:2` into the job script and trains on cuda."""
    computer = aiida_computer(label='slurm-dry', scheduler_type='core.slurm')
    code = orm.InstalledCode(label='worker-dry', computer=computer, filepath_executable='/usr/bin/mlmat-worker').store()
    dataset = ConfigurationSetData(emt_data(10, 4)).store()
    builder = TrainingWorkChain.get_builder_from_protocol(code, dataset, options={'max_wallclock_seconds': 600}, gpus=2)
    assert '#SBATCH --gres=gpu:2' in builder.member.trainer.metadata.options['custom_scheduler_commands']
    assert builder.member.trainer.training['device'] == 'cuda'

    from aiida_mlmat.calcjobs.train import TrainCalculation

    frames = dataset.get_atoms()
    monkeypatch.chdir(tmp_path)
    inputs = {
        'code': code,
        'train': ConfigurationSetData(frames[:7]),
        'validation': ConfigurationSetData(frames[7:]),
        'training': builder.member.trainer.training,
        'metadata': {
            'dry_run': True,
            'store_provenance': False,
            'options': dict(builder.member.trainer.metadata.options),
        },
    }
    _, node = run_get_node(TrainCalculation, **inputs)
    folder = Path(node.dry_run_info['folder'])
    script = (folder / '_aiidasubmit.sh').read_text()
    assert '#SBATCH --gres=gpu:2' in script and '#SBATCH --time=00:10:00' in script
    assert "'train' 'input.json'" in script or 'train input.json' in script
    data = json.loads((folder / 'input.json').read_text())
    assert data['task'] == 'train' and data['training']['device'] == 'cuda'
    assert data['max_seconds'] == pytest.approx(0.95 * 600)  # the soft limit below the walltime
    assert data['model']['species'] == ['Cu', 'Au'] and (folder / 'train.extxyz').is_file()


def test_every_worker_error_code_has_a_banded_exit_code():
    """Each code the worker can report maps to an exit code of every CalcJob; OOM and NaN are recoverable (4xx).

    (A device out-of-memory cannot be provoked on this GPU-less machine; the handler's trigger is checked here.)
    """
    from aiida_mlmat.calcjobs.base import WORKER_ERRORS
    from aiida_mlmat.calcjobs.descriptors import DescriptorsCalculation
    from aiida_mlmat.calcjobs.label import LabelCalculation
    from aiida_mlmat.calcjobs.sample import SampleCalculation
    from aiida_mlmat.calcjobs.train import TrainCalculation
    from aiida_mlmat.worker.errors import ErrorCode

    assert set(WORKER_ERRORS) == {code.value for code in ErrorCode}
    for process in (LabelCalculation, SampleCalculation, DescriptorsCalculation, TrainCalculation):
        for label in WORKER_ERRORS.values():
            assert label in process.exit_codes, (process.__name__, label)
    assert 400 <= TrainCalculation.exit_codes.ERROR_OUT_OF_MEMORY.status < 500
    assert 400 <= TrainCalculation.exit_codes.ERROR_NAN_LOSS.status < 500


def failed_train_node(computer: orm.Computer, exit_status: int) -> orm.CalcJobNode:
    """A stored, finished ``mlmat.train`` calculation node with ``exit_status`` (what the handlers inspect)."""
    from aiida.engine import ProcessState

    from aiida_mlmat.calcjobs.train import TrainCalculation

    node = orm.CalcJobNode(computer=computer, process_type='aiida.calculations:mlmat.train')
    node.set_process_label(TrainCalculation.__name__)
    node.set_option('resources', {'num_machines': 1})
    node.set_process_state(ProcessState.FINISHED)
    node.set_exit_status(exit_status)
    exit_code = next(code for code in TrainCalculation.exit_codes.values() if code.status == exit_status)
    node.set_exit_message(exit_code.message.format(message='a failed allocation'))
    return node.store()


@pytest.mark.parametrize('exit_code', ['ERROR_OUT_OF_MEMORY', 'ERROR_SCHEDULER_OUT_OF_MEMORY'])
def test_out_of_memory_halves_the_batch_and_the_stored_descriptor_budget(aiida_localhost, exit_code):
    """Out of memory (the device's, or the scheduler killing the job): the next run trains with half the batch
    size and half the memory budget of stored descriptors (they cover the whole training set, so a smaller batch
    alone may not fit), from scratch; at batch size 1 it drops them (budget 0), and only then gives up with its
    unrecoverable exit code.

    The failed runs are calculation nodes made here: a real out-of-memory failure needs a GPU or a job memory limit
    that this CI machine does not have (the worker's mapping of a failed allocation is tested in test_model.py)."""
    from aiida.engine.utils import instantiate_process
    from aiida.manage import get_manager

    from aiida_mlmat.calcjobs.train import TrainCalculation
    from aiida_mlmat.common.constants import DEFAULT_JACOBIAN_MEMORY_MB
    from aiida_mlmat.workflows.train import TrainBaseWorkChain

    code = orm.InstalledCode(
        label='worker-oom', computer=aiida_localhost, filepath_executable='/usr/bin/mlmat-worker'
    ).store()
    frames = emt_data(6, 3)
    builder = TrainBaseWorkChain.get_builder()
    builder.trainer.code = code
    builder.trainer.train = ConfigurationSetData(frames[:4])
    builder.trainer.validation = ConfigurationSetData(frames[4:])
    builder.trainer.training = orm.Dict({'epochs': 5, 'batch_size': 4})
    builder.trainer.metadata.options = {'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': 1}}
    process = instantiate_process(get_manager().get_runner(), builder)
    process.setup()
    status = TrainCalculation.exit_codes[exit_code].status
    process.ctx.children = []  # what run_process's ToContext(children=append_(...)) would hold
    seen = []
    for _ in range(4):
        process.ctx.children.append(failed_train_node(aiida_localhost, status))
        process.ctx.iteration += 1
        result = process.inspect_process()
        training = process.ctx.inputs.training.get_dict()
        seen.append((training['batch_size'], training['jacobian_memory_mb']))
        if result is not None and result.status != 0:  # a handled failure returns exit code 0 and restarts
            break
    budget = DEFAULT_JACOBIAN_MEMORY_MB
    assert seen == [(2, budget / 2), (1, budget / 4), (1, 0.0), (1, 0.0)]
    assert result == TrainBaseWorkChain.exit_codes.ERROR_UNRECOVERABLE_FAILURE
    assert 'checkpoint' not in process.ctx.inputs
    assert process.ctx.inputs.training.get_dict()['epochs'] == 5  # the other settings kept


def test_storage_warning_names_what_was_not_stored():
    from aiida_mlmat.workflows.training import storage_warning

    assert storage_warning({'descriptors_storage': 'stored', 'descriptors_stored_batches': [5, 5]}) is None
    assert storage_warning({'descriptors_storage': 'disabled'}) is None  # asked for: a budget of 0
    line = storage_warning({'descriptors_storage': 'partial', 'descriptors_stored_batches': [3, 8]})
    assert line.startswith('descriptor derivatives stored for 3 of 8 batches (training.jacobian_memory_mb held no')
    assert 'none (the device ran out of memory)' in storage_warning({'descriptors_storage': 'out_of_memory'})
