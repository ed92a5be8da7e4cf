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
