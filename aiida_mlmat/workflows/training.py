"""``mlmat.training``: split -> K ensemble members in parallel -> evaluation -> one ensemble potential."""

from __future__ import annotations

from typing import Any

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import ToContext, WorkChain

from aiida_mlmat.data.configurations import ConfigurationSetData
from aiida_mlmat.data.potential import PotentialData
from aiida_mlmat.workflows.idempotent import IdempotentLaunchMixin
from aiida_mlmat.workflows.label import failure_reason
from aiida_mlmat.workflows.protocols import get_protocol_inputs
from aiida_mlmat.workflows.train import TrainBaseWorkChain
from aiida_mlmat.workflows.training_functions import (
    bootstrap_sample,
    evaluate_ensemble,
    make_ensemble,
    plot_learning_curves,
    split_around_test,
    split_dataset,
)


def missing_labels_error(data: Any, training: dict[str, Any]) -> str | None:
    """Why the loss of ``training`` (``forces_weight``, ``stress_weight``) needs labels ``data`` lacks, or None."""
    from aiida_mlmat.ml.training import TrainingConfig, weighted_labels

    for key in weighted_labels(training)[1:]:
        if key not in data.label_keys:
            weight = training.get(f'{key}_weight', getattr(TrainingConfig, f'{key}_weight'))
            return (
                f'configurations: the set has no {key} on every configuration, and the loss weights them '
                f'(training.{key}_weight = {weight}); label them, or set the weight to 0 '
                f'(`--overrides \'{{"training": {{"{key}_weight": 0}}}}\'`)'
            )
    return None


def validate_inputs(value: Any, _: Any = None) -> str | None:
    """Validate before anything runs."""
    data = value.get('configurations')
    if data is not None:
        if data.count < 3:
            return f'configurations: {data.count} configurations cannot be split into train, validation and test'
        if 'energy' not in data.label_keys:
            return 'configurations: the set is not labelled (no energy on every configuration)'

    def number(key: str, default: float) -> float:
        return value[key].value if key in value else default

    from aiida_mlmat.workflows.protocols import training_settings_error

    trainer = value.get('member', {}).get('trainer', {})
    member = value.get('member', {})
    error = training_settings_error({key: value[key].value for key in ('ensemble_size', 'seed') if key in value})
    error = error or training_settings_error(
        {'max_iterations': member['max_iterations'].value} if 'max_iterations' in member else {}, 'member.'
    )
    error = error or training_settings_error(
        {key: trainer[key].get_dict() for key in ('model', 'training') if key in trainer}, 'member.trainer.'
    )
    if error:
        return error
    if data is not None:
        error = missing_labels_error(data, trainer['training'].get_dict() if 'training' in trainer else {})
        if error:
            return error
    test_split = value.get('test_split')
    if test_split is not None and data is not None:
        if 'energy' not in test_split.label_keys:
            return 'test_split: the set is not labelled (no energy on every configuration)'
        extra = sorted(set(test_split.species) - set(data.species))
        if extra:
            return f'test_split: it holds {extra}, which the configurations to train on do not'
        from aiida_mlmat.query import configuration_keys

        if data.is_stored and test_split.is_stored:
            held_out = set(configuration_keys(test_split))
            left = sum(1 for key in configuration_keys(data) if key not in held_out)
            if left < 2:
                return (
                    f'test_split: {left} of the {data.count} configurations lie outside it, too few to split into '
                    'train and validation'
                )
    initial = value.get('initial_potential')
    if initial is not None and data is not None:
        extra = sorted(set(data.species) - set(initial.species))
        if extra:
            return f'initial_potential: it was trained on {initial.species}; the configurations also hold {extra}'
        from aiida_mlmat.calcjobs.train import model_config
        from aiida_mlmat.ml.training import warm_start_mismatch

        trainer = value.get('member', {}).get('trainer', {})
        model = trainer['model'].get_dict() if 'model' in trainer else {}
        mismatch = warm_start_mismatch(
            initial.base.attributes.get('config'), model_config(model, model.get('species', initial.species))
        )
        if mismatch:
            return f'initial_potential: {mismatch}'
    test, validation = number('test_fraction', 0.2), number('validation_fraction', 0.1)
    if not 0 < test < 1 or not 0 < validation < 1 or test + validation >= 1:
        return 'test_fraction and validation_fraction must be in (0, 1) and sum to less than 1'
    return None


def storage_warning(results: dict[str, Any]) -> str | None:
    """What a member's ``results`` say of descriptor derivatives it could not store, or None when there is nothing
    to say (all stored, or not asked for: a budget of 0, a model that cannot use them)."""
    storage = results.get('descriptors_storage')
    if storage not in ('partial', 'over_budget', 'out_of_memory'):
        return None
    stored, total = results.get('descriptors_stored_batches') or (0, None)
    what = f'{stored} of {total} batches' if total else 'none'
    why = 'the device ran out of memory' if storage == 'out_of_memory' else 'training.jacobian_memory_mb held no more'
    return (
        f'descriptor derivatives stored for {what} ({why}); the others recomputed their descriptors every step, '
        'several times slower (docs/howto/training.md, "Speed")'
    )


class TrainingWorkChain(IdempotentLaunchMixin, WorkChain):
    """Train an ensemble of potentials on a labelled configuration set and evaluate it on a held-out test split.

    The split is deterministic and stratified by composition; member k trains with seed ``seed + k`` on a bootstrap
    resample of the training split (when ``bootstrap``), each in the restart wrapper ``mlmat.train.base``.
    With ``initial_potential``, member k starts from the weights of its member k (retraining, as active learning does).
    """

    @classmethod
    def define(cls, spec: Any) -> None:
        """Define the ports and the outline."""
        super().define(spec)
        spec.input('configurations', valid_type=ConfigurationSetData, help='Labelled configurations.')
        spec.input('ensemble_size', valid_type=orm.Int, default=lambda: orm.Int(3), help='Number of members K.')
        spec.input('test_fraction', valid_type=orm.Float, default=lambda: orm.Float(0.2))
        spec.input('validation_fraction', valid_type=orm.Float, default=lambda: orm.Float(0.1))
        spec.input('seed', valid_type=orm.Int, default=lambda: orm.Int(0), help='Seed of the split and members.')
        spec.input('bootstrap', valid_type=orm.Bool, default=lambda: orm.Bool(True), help='Bootstrap each member.')
        spec.input(
            'initial_potential',
            valid_type=PotentialData,
            required=False,
            help='Retrain from this potential: member k starts from its member k (modulo its size); architecture, '
            'species and descriptor must match; the per-element reference energies are refit on the new data.',
        )
        spec.input(
            'test_split',
            valid_type=ConfigurationSetData,
            required=False,
            help='A fixed test split: the configurations of `configurations` equal to one of it are left out of '
            'training, the rest is split into train and validation only, and the test metrics are measured on it. '
            "Active learning passes its first iteration's test split, so that no iteration trains on a "
            'configuration another one tested on.',
        )
        spec.expose_inputs(
            TrainBaseWorkChain,
            namespace='member',
            exclude=('trainer.train', 'trainer.validation', 'trainer.checkpoint', 'trainer.potential',
                     'trainer.initial_member'),
        )  # fmt: skip
        spec.inputs.validator = validate_inputs
        spec.outline(cls.split, cls.run_members, cls.inspect_members, cls.evaluate)
        spec.output('potential', valid_type=PotentialData, help='The ensemble potential (K members, test metrics).')
        spec.output('metrics', valid_type=orm.Dict, help='Test metrics: eV/atom, eV/Å, eV/Å^3.')
        spec.output(
            'test_errors',
            valid_type=orm.ArrayData,
            required=False,
            help='Per test configuration (the order of `splits.test`): `energy_error_per_atom` (eV/atom), '
            '`forces_rmse` (eV/Å), `energy_std_per_atom` (eV/atom).',
        )
        spec.output_namespace('splits', valid_type=ConfigurationSetData, help='train, validation, test.')
        spec.output_namespace('plots', valid_type=orm.SinglefileData, dynamic=True, help='Parity plots (PNG).')
        spec.output_namespace(
            'member_results', valid_type=orm.Dict, dynamic=True, help="Each member's summary and learning curve."
        )
        spec.exit_code(401, 'ERROR_MEMBER_FAILED', message='Ensemble member {member} failed: {message}')

    @classmethod
    def get_builder_from_protocol(
        cls,
        code: orm.AbstractCode,
        configurations: ConfigurationSetData,
        *,
        protocol: str | None = None,
        overrides: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        gpus: int = 0,
    ) -> Any:
        """A builder from the ``training`` protocols (fast, balanced, precise).

        :param gpus: GPUs per training job; on SLURM this becomes ``#SBATCH --gres=gpu:N`` and the device ``cuda``.
        """
        inputs = get_protocol_inputs('training', protocol, overrides)
        builder = cls.get_builder()
        builder.configurations = configurations
        builder.ensemble_size = orm.Int(inputs['ensemble_size'])
        builder.member.trainer.code = code
        builder.member.trainer.model = orm.Dict(inputs.get('model', {}))
        builder.member.trainer.training = orm.Dict(inputs.get('training', {}))
        builder.member.max_iterations = orm.Int(inputs.get('max_iterations', 5))
        options = dict(options or {})
        if gpus:
            from aiida_mlmat.calcjobs.train import gpu_scheduler_commands

            extra = options.get('custom_scheduler_commands', '')
            options['custom_scheduler_commands'] = '\n'.join(filter(None, [extra, gpu_scheduler_commands(gpus)]))
            builder.member.trainer.training = orm.Dict({**inputs.get('training', {}), 'device': 'cuda'})
        if options:
            resources = {'num_machines': 1, 'num_mpiprocs_per_machine': 1}
            builder.member.trainer.metadata.options = {'resources': resources, **options}
        for key in ('test_fraction', 'validation_fraction'):
            if key in inputs:
                builder[key] = orm.Float(inputs[key])
        if 'seed' in inputs:
            builder.seed = orm.Int(inputs['seed'])
        return builder

    def split(self) -> None:
        """Deterministic, composition-stratified split (with a fixed ``test_split``: train and validation only)."""
        if 'test_split' in self.inputs:
            splits = dict(
                split_around_test(
                    self.inputs.configurations,
                    self.inputs.test_split,
                    self.inputs.test_fraction,
                    self.inputs.validation_fraction,
                    self.inputs.seed,
                )
            )
            splits['test'] = self.inputs.test_split
        else:
            splits = split_dataset(
                self.inputs.configurations, self.inputs.test_fraction, self.inputs.validation_fraction, self.inputs.seed
            )
        self.ctx.splits = splits
        self.out('splits', splits)
        self.report(
            f'split {self.inputs.configurations.count} configurations: '
            + ', '.join(f'{name} {node.count}' for name, node in splits.items())
        )

    def run_members(self) -> Any:
        """Train K members in parallel."""
        futures = {}
        model = dict(self.inputs.member.trainer.model.get_dict()) if 'model' in self.inputs.member.trainer else {}
        if 'species' not in model:  # every member (and a later warm start) gets the same species, whatever it samples
            from ase.data import atomic_numbers

            species = (
                self.inputs.initial_potential.species
                if 'initial_potential' in self.inputs
                else self.inputs.configurations.species
            )
            model['species'] = sorted(species, key=lambda symbol: atomic_numbers[symbol])
        for k in range(self.inputs.ensemble_size.value):
            inputs = AttributeDict(self.exposed_inputs(TrainBaseWorkChain, 'member'))
            inputs.trainer = AttributeDict(inputs.trainer)
            seed = self.inputs.seed.value + k
            training = inputs.trainer.training.get_dict() if 'training' in inputs.trainer else {}
            inputs.trainer.training = orm.Dict({**training, 'seed': seed})
            inputs.trainer.model = orm.Dict(model)
            if 'initial_potential' in self.inputs:
                inputs.trainer.potential = self.inputs.initial_potential
                inputs.trainer.initial_member = orm.Int(k % self.inputs.initial_potential.n_members)
            train = self.ctx.splits['train']
            if self.inputs.bootstrap.value and self.inputs.ensemble_size.value > 1:
                train = self.call_once(f'bootstrap_{k}', bootstrap_sample, train, orm.Int(seed))
            inputs.trainer.train = train
            inputs.trainer.validation = self.ctx.splits['validation']
            inputs.metadata.call_link_label = f'member_{k}'
            futures[f'member_{k}'] = self.submit(TrainBaseWorkChain, **inputs)
        self.report(f'training {len(futures)} ensemble members')
        return ToContext(**futures)

    def inspect_members(self) -> Any:
        """Every member must have finished."""
        for k in range(self.inputs.ensemble_size.value):
            node = self.ctx[f'member_{k}']
            if not node.is_finished_ok:
                return self.exit_codes.ERROR_MEMBER_FAILED.format(member=k, message=failure_reason(node))
        return None

    def evaluate(self) -> None:
        """Evaluate the ensemble on the test split and assemble the ensemble potential."""
        members = {
            f'member_{k}': self.ctx[f'member_{k}'].outputs.potential for k in range(self.inputs.ensemble_size.value)
        }
        evaluation = evaluate_ensemble(self.ctx.splits['test'], **members)
        potential = make_ensemble(evaluation['metrics'], self.inputs.configurations, **members)
        self.out('potential', potential)
        self.out('metrics', evaluation['metrics'])
        self.out('test_errors', evaluation['errors'])
        self.out('plots', {key: evaluation[key] for key in ('parity_energy', 'parity_forces') if key in evaluation})
        member_results = {key: self.ctx[key].outputs.results for key in sorted(members)}
        self.out('member_results', member_results)
        for key, results in member_results.items():
            line = storage_warning(results.get_dict())
            if line:
                self.report(f'{key}: {line}')
        self.out('plots.learning_curves', plot_learning_curves(**member_results))
        metrics = evaluation['metrics'].get_dict()
        self.report(
            f'ensemble potential {potential.uuid}: '
            f'test force RMSE {metrics.get("forces_rmse", float("nan")):.4f} eV/Å, '
            f'energy RMSE {metrics["energy_rmse_per_atom"]:.4f} eV/atom'
        )
