"""CalcJob ``mlmat.train``: train one potential (an ensemble member) with torch, on CPU or GPU."""

from __future__ import annotations

from typing import Any

from aiida import orm
from aiida.common.folders import Folder

from aiida_mlmat.calcjobs.base import MlmatCalculation, torch_code_error
from aiida_mlmat.common.constants import POTENTIAL_DIR
from aiida_mlmat.data.configurations import ConfigurationSetData
from aiida_mlmat.data.potential import PotentialData

TRAIN_FILE = 'train.extxyz'
VALIDATION_FILE = 'validation.extxyz'
CHECKPOINT_FILE = 'checkpoint.pt'
MODEL_FILE = 'model.pt'


def model_config(model: dict[str, Any], species: list[str]) -> dict[str, Any]:
    """Complete a (possibly partial) model config with defaults for the data set's species."""
    from aiida_mlmat.ml.model import default_config

    config = {**default_config(species), **model}
    config['descriptor'] = {**default_config(species)['descriptor'], **model.get('descriptor', {})}
    config['descriptor']['species'] = list(config['species'])
    return config


def gpu_scheduler_commands(gpus: int) -> str:
    """Scheduler directives that ask SLURM for ``gpus`` GPUs on the node."""
    return f'#SBATCH --gres=gpu:{int(gpus)}' if gpus > 0 else ''


class TrainCalculation(MlmatCalculation):
    """Train one potential on a training and a validation set; resumable from a checkpoint.

    ``training`` takes the keys of :class:`aiida_mlmat.ml.training.TrainingConfig` (epochs, batch_size,
    learning_rate, energy/forces/stress weights, seed, dtype, device auto|cpu|cuda, amp, ...). The soft time
    limit (95 % of the walltime by default) makes the trainer save and exit cleanly before the scheduler kills it.
    For GPUs on SLURM set ``metadata.options.custom_scheduler_commands`` to ``gpu_scheduler_commands(n)``.
    """

    TASK = 'train'
    SOFT_LIMIT = True
    _RETRIEVE_TEMPORARY = [MODEL_FILE, CHECKPOINT_FILE]

    @classmethod
    def define(cls, spec: Any) -> None:
        """Define the ports."""
        super().define(spec)
        spec.inputs['metadata']['options']['parser_name'].default = 'mlmat.train'
        spec.input('train', valid_type=ConfigurationSetData, help='Training configurations (energy, forces).')
        spec.input('validation', valid_type=ConfigurationSetData, help='Validation configurations (early stopping).')
        spec.input('model', valid_type=orm.Dict, default=lambda: orm.Dict({}), help='Model config (architecture, ...).')
        spec.input('training', valid_type=orm.Dict, default=lambda: orm.Dict({}), help='Training hyperparameters.')
        spec.input('checkpoint', valid_type=orm.SinglefileData, required=False, help='Checkpoint to resume from.')
        spec.input(
            'initial_member',
            valid_type=orm.Int,
            required=False,
            help='With the input `potential`: start from the weights of this member of it (warm start; the same '
            'architecture, species and descriptor are required). Default 0.',
        )
        spec.inputs.validator = cls.validate_inputs
        spec.output('potential', valid_type=PotentialData, required=False, help='The trained potential (1 member).')
        spec.output('checkpoint', valid_type=orm.SinglefileData, required=False, help='Checkpoint, to resume.')

    @classmethod
    def validate_inputs(cls, value: Any, _: Any = None) -> str | None:
        """Validate before submission: a Code with torch, non-empty splits, labels the loss needs, the worker schema."""
        error = torch_code_error(value.get('code'), 'code', 'the training')
        if error:
            return error
        train, validation = value.get('train'), value.get('validation')
        if train is None or validation is None:
            return None
        for name, node in (('train', train), ('validation', validation)):
            if node.count == 0:
                return f'{name}: the split is empty'
        from aiida_mlmat.ml.training import weighted_labels

        needed = weighted_labels(value['training'].get_dict() if 'training' in value else {})
        for name, node in (('train', train), ('validation', validation)):
            missing = [key for key in needed if key not in node.label_keys]
            if missing:
                return f'{name}: the configurations lack {missing}, which the loss weights (set the weight to 0)'
        error = cls.initial_potential_error(value)
        if error:
            return error
        try:
            cls.worker_input(value)
        except ValueError as exc:
            return str(exc)
        return None

    @classmethod
    def initial_potential_error(cls, value: Any) -> str | None:
        """Return why the input ``potential`` cannot initialise this training (None when it can)."""
        potential = value.get('potential')
        member = value['initial_member'].value if 'initial_member' in value else 0
        if potential is None:
            return 'initial_member: given without a `potential` to start from' if 'initial_member' in value else None
        if not 0 <= member < potential.n_members:
            return f'initial_member: {member} is not a member of the potential ({potential.n_members} members)'
        from aiida_mlmat.ml.training import warm_start_mismatch

        config = cls.build_worker_input(value)['model']
        mismatch = warm_start_mismatch(potential.base.attributes.get('config'), config)
        return f'potential: {mismatch}' if mismatch else None

    @classmethod
    def build_worker_input(cls, inputs: Any) -> dict[str, Any]:
        """Return the ``train`` task input."""
        species = sorted(set(inputs['train'].species) | set(inputs['validation'].species))
        model = inputs['model'].get_dict() if 'model' in inputs else {}
        data: dict[str, Any] = {
            'train': TRAIN_FILE,
            'validation': VALIDATION_FILE,
            'model': model_config(model, model.get('species', species)),
            'training': inputs['training'].get_dict() if 'training' in inputs else {},
        }
        if 'checkpoint' in inputs:
            data['checkpoint'] = CHECKPOINT_FILE
        if inputs.get('potential') is not None:
            member = inputs['initial_member'].value if 'initial_member' in inputs else 0
            data['init_model'] = f'{POTENTIAL_DIR}/member_{member}.pt'
        return data

    def write_data_files(self, folder: Folder) -> None:
        """Copy the splits and the checkpoint into the sandbox."""
        with folder.open(TRAIN_FILE, 'wb') as handle:
            handle.write(self.inputs.train.get_content())
        with folder.open(VALIDATION_FILE, 'wb') as handle:
            handle.write(self.inputs.validation.get_content())
        if 'checkpoint' in self.inputs:
            with self.inputs.checkpoint.open(mode='rb') as source, folder.open(CHECKPOINT_FILE, 'wb') as handle:
                handle.write(source.read())
