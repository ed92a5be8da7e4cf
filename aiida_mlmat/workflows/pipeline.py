"""``mlmat.pipeline``: the whole loop from one YAML file.

reference data (sample, select, label) -> active learning (train the ensemble, explore, select by committee
disagreement, label, retrain; or a single training when switched off) -> convex-hull screening with the final
potential and verification of the top candidates against the reference calculator -> summary.
"""

from __future__ import annotations

import copy
from typing import Any

from aiida import orm
from aiida.engine import ToContext, WorkChain, calcfunction, if_

from aiida_mlmat.data.configurations import ConfigurationSetData
from aiida_mlmat.data.potential import PotentialData
from aiida_mlmat.workflows.idempotent import IdempotentLaunchMixin
from aiida_mlmat.workflows.pipeline_config import ConfigError, validate_config


def validate_config_port(value: orm.Dict | None, _: Any = None) -> str | None:
    """Port validator: the configuration must pass :func:`validate_config`."""
    if value is None:
        return None
    try:
        validate_config(value.get_dict())
    except ConfigError as exc:
        return str(exc)
    return None


@calcfunction
def pipeline_summary(config: orm.Dict, **nodes: orm.Data) -> orm.Dict:
    """The headline figures of a pipeline run (energies in eV/atom, forces in eV/Å), from its stages' outputs."""
    summary: dict[str, Any] = {
        'elements': config['elements'],
        'units': {'energy': 'eV/atom', 'forces': 'eV/Å', 'stress': 'eV/Å^3', 'e_above_hull': 'eV/atom'},
    }
    if 'dataset' in nodes:
        dataset = nodes['dataset']
        summary['reference'] = {
            'n_configurations': dataset.count,
            'n_excluded': dataset.base.attributes.get('n_excluded'),
            'calculator': dataset.base.attributes.get('calculator'),
        }
    if 'training_set' in nodes:
        summary['training_set'] = {'n_configurations': nodes['training_set'].count}
    if 'metrics' in nodes:
        summary['potential_metrics'] = nodes['metrics'].get_dict()
    if 'al_metrics' in nodes:
        al = nodes['al_metrics'].get_dict()
        summary['active_learning'] = {key: al.get(key) for key in ('stop_reason', 'n_iterations', 'labels_added')}
        if al.get('final') and 'metrics' not in nodes:
            summary['potential_metrics'] = al['final']
    if 'screening' in nodes:
        screening = nodes['screening'].get_dict()
        summary['screening'] = {
            key: screening.get(key)
            for key in ('n_candidates', 'n_screened', 'n_failed', 'n_stable', 'n_uncertain', 'verification')
        }
    return orm.Dict(summary)


def validate_inputs(value: Any, _: Any = None) -> str | None:
    """The Codes the jobs need, given before anything runs (not found missing after the sampling): the aiida-ase
    labeller's, and a worker Code with torch for training, descriptors and exploration."""
    from aiida_mlmat.calcjobs.base import without_torch

    config = value.get('config')
    reference = (config.get_dict().get('reference') or {}) if config is not None else {}
    if isinstance(reference, dict) and reference.get('labeller') == 'aiida-ase' and value.get('ase_code') is None:
        return 'ase_code: the reference labeller `aiida-ase` needs the Code of a Python with ASE (ase.ase)'
    code = value.get('code')
    if code is not None and without_torch(code):
        return (
            f'code: `{code.full_label}` is the GPAW worker Code, whose Python has no torch for training and '
            'exploration; give the mlmat-worker Code as `code` and the GPAW one as `reference_code`'
        )
    return None


class PipelineWorkChain(IdempotentLaunchMixin, WorkChain):
    """Reference data -> (active learning | training) -> hull screening with verification, from one configuration."""

    @classmethod
    def define(cls, spec: Any) -> None:
        """Define the ports and the outline."""
        super().define(spec)
        spec.input(
            'config',
            valid_type=orm.Dict,
            validator=validate_config_port,
            help='The pipeline configuration (the YAML of `mlmat run`, see `pipeline_config.SCHEMA`).',
        )
        spec.input(
            'code',
            valid_type=orm.AbstractCode,
            help='The mlmat-worker Code: every job but those of `reference_code`.',
        )
        spec.input(
            'reference_code',
            valid_type=orm.AbstractCode,
            required=False,
            help='The worker Code for the reference calculator (sampling and labelling in the reference stage, the '
            "loop's labelling, the screening's verification), e.g. the GPAW worker Code; default: `code`.",
        )
        spec.input('ase_code', valid_type=orm.AbstractCode, required=False, help='Code for the aiida-ase labeller.')
        spec.inputs.validator = validate_inputs
        spec.outline(
            cls.setup,
            cls.run_reference,
            cls.inspect_reference,
            if_(cls.hull_aware)(cls.run_training, cls.inspect_training, cls.run_screening, cls.inspect_prescreening),
            if_(cls.do_active_learning)(cls.run_active_learning, cls.inspect_active_learning).elif_(cls.not_trained)(
                cls.run_training, cls.inspect_training
            ),
            if_(cls.do_screening)(cls.run_screening, cls.inspect_screening),
            cls.results,
        )
        spec.output('dataset', valid_type=ConfigurationSetData, help='The labelled reference set.')
        spec.output('training_set', valid_type=ConfigurationSetData, help='The final training set.')
        spec.output('potential', valid_type=PotentialData, help='The final ensemble potential.')
        spec.output('screening', valid_type=orm.Dict, required=False, help='Summary of the hull screening.')
        spec.output('summary', valid_type=orm.Dict, help='Headline figures of every stage.')
        spec.exit_code(401, 'ERROR_REFERENCE_FAILED', message='The reference-data stage failed: {message}')
        spec.exit_code(402, 'ERROR_TRAINING_FAILED', message='The training stage failed: {message}')
        spec.exit_code(403, 'ERROR_ACTIVE_LEARNING_FAILED', message='The active-learning stage failed: {message}')
        spec.exit_code(404, 'ERROR_SCREENING_FAILED', message='The screening stage failed: {message}')

    def setup(self) -> None:
        """Fill in the configuration's defaults."""
        self.ctx.config = validate_config(self.inputs.config.get_dict())
        self.ctx.nodes = {}

    @staticmethod
    def _failure(node: orm.ProcessNode) -> str:
        from aiida_mlmat.workflows.label import failure_reason

        return failure_reason(node)

    def run_reference(self) -> Any:
        """Stage 1: sample, (select), label."""
        from aiida_mlmat.workflows.reference import ReferenceWorkChain

        section = self.ctx.config['reference']
        overrides = dict(section.get('overrides', {}))
        if section.get('select'):
            overrides.setdefault('select', {})['n'] = section['select']
        builder = ReferenceWorkChain.get_builder_from_protocol(
            self.inputs.get('reference_code', self.inputs.code),
            calculator=section['calculator'],
            elements=self.ctx.config['elements'],
            protocol=section['protocol'],
            overrides=overrides,
            labeller=section['labeller'],
            ase_code=self.inputs.get('ase_code'),
            descriptors_code=self.inputs.code,
        )
        builder.metadata.call_link_label = 'reference'
        return ToContext(reference=self.submit(builder))

    def inspect_reference(self) -> Any:
        """Keep the labelled set."""
        node = self.ctx.reference
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_REFERENCE_FAILED.format(message=self._failure(node))
        self.ctx.dataset = node.outputs.configurations
        self.out('dataset', self.ctx.dataset)
        self.ctx.nodes['dataset'] = self.ctx.dataset
        self.report(f'reference set: {self.ctx.dataset.count} labelled configurations')
        return None

    def hull_aware(self) -> bool:
        """Whether a first potential screens candidates whose uncertain verdicts join the labelling queue."""
        section = self.ctx.config['active_learning']
        return bool(section['enabled'] and section.get('hull_aware') and self.ctx.config['screening']['enabled'])

    def not_trained(self) -> bool:
        """Whether no potential was trained yet."""
        return 'potential' not in self.ctx

    def inspect_prescreening(self) -> Any:
        """Keep the candidates whose P(stable) is strictly between 0 and 1 for active learning."""
        node = self.ctx.screening
        if 'summary' not in node.outputs or node.exit_status == 321:  # 321: no candidate could be screened
            return self.exit_codes.ERROR_SCREENING_FAILED.format(message=self._failure(node))
        if 'uncertain_candidates' in node.outputs:
            self.ctx.hull_candidates = node.outputs.uncertain_candidates
            self.report(f'{self.ctx.hull_candidates.count} candidates with uncertain verdicts join the labelling queue')
        else:
            self.report('no candidate has an uncertain verdict: active learning explores as usual')
        return None

    def do_active_learning(self) -> bool:
        """Whether the training set grows by active learning (else one training)."""
        return bool(self.ctx.config['active_learning']['enabled'])

    def _training_overrides(self) -> dict[str, Any]:
        section = self.ctx.config['training']
        return {**section.get('overrides', {}), 'ensemble_size': section['ensemble']}

    def run_training(self) -> Any:
        """Stage 2 (without active learning): one ensemble training."""
        from aiida_mlmat.workflows.training import TrainingWorkChain

        section = self.ctx.config['training']
        builder = TrainingWorkChain.get_builder_from_protocol(
            self.inputs.code,
            self.ctx.dataset,
            protocol=section['protocol'],
            overrides=self._training_overrides(),
            gpus=section['gpus'],
        )
        builder.metadata.call_link_label = 'training'
        return ToContext(training=self.submit(builder))

    def inspect_training(self) -> Any:
        """Keep the potential."""
        node = self.ctx.training
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_TRAINING_FAILED.format(message=self._failure(node))
        self.ctx.potential = node.outputs.potential
        self.ctx.training_set = self.ctx.dataset
        self.ctx.nodes['metrics'] = node.outputs.metrics
        return None

    def run_active_learning(self) -> Any:
        """Stage 2: active learning from the reference set, exploring from the chemical system's seeds."""
        from aiida_mlmat.workflows.active_learning import ActiveLearningWorkChain
        from aiida_mlmat.workflows.functions import build_seed_set

        section = self.ctx.config['active_learning']
        overrides = copy.deepcopy(dict(section.get('overrides', {})))  # with the reconciled settings of the YAML
        overrides.setdefault('convergence', {})['max_iterations'] = section['max_iterations']
        overrides.setdefault('training', {})['ensemble_size'] = self.ctx.config['training']['ensemble']
        seeds = self.call_once('seeds', build_seed_set, orm.List(self.ctx.config['elements']))
        builder = ActiveLearningWorkChain.get_builder_from_protocol(
            self.inputs.code,
            self.ctx.dataset,
            seeds,
            calculator=self.ctx.config['reference']['calculator'],
            protocol=section['protocol'],
            overrides=overrides,
            hull_candidates=self.ctx.get('hull_candidates'),
        )
        if 'reference_code' in self.inputs:
            builder.label.label.code = self.inputs.reference_code
        builder.metadata.call_link_label = 'active_learning'
        return ToContext(active_learning=self.submit(builder))

    def inspect_active_learning(self) -> Any:
        """Keep the final potential and training set."""
        node = self.ctx.active_learning
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_ACTIVE_LEARNING_FAILED.format(message=self._failure(node))
        self.ctx.potential = node.outputs.potential
        self.ctx.training_set = node.outputs.training_set
        self.ctx.nodes['al_metrics'] = node.outputs.metrics
        return None

    def do_screening(self) -> bool:
        """Whether to screen candidates on the hull."""
        return bool(self.ctx.config['screening']['enabled'])

    def run_screening(self) -> Any:
        """Stage 3: relax generated candidates with the potential, one hull per member, verify the top K."""
        from aiida_mlmat.workflows.hull import HullWorkChain

        section = self.ctx.config['screening']
        prescreen = self.hull_aware() and 'active_learning' not in self.ctx
        inputs: dict[str, Any] = {
            'elements': orm.List(self.ctx.config['elements']),
            'generate': orm.Dict(section['generate']),
            'potential': self.ctx.potential,
            'code': self.inputs.code,
            'metadata': {'call_link_label': 'prescreening' if prescreen else 'screening'},
        }
        if section.get('relax'):
            inputs['relax'] = orm.Dict(section['relax'])
        if section.get('chunk_size'):
            inputs['chunk_size'] = orm.Int(section['chunk_size'])
        if section['verify_top'] and not prescreen:
            inputs['verify'] = {
                'top': orm.Int(section['verify_top']),
                'calculator': orm.Dict(self.ctx.config['reference']['calculator']),
                'relax': orm.Bool(section['verify_relax']),
            }
            if 'reference_code' in self.inputs:
                inputs['verify']['code'] = self.inputs.reference_code
        return ToContext(screening=self.submit(HullWorkChain, **inputs))

    def inspect_screening(self) -> Any:
        """Keep the screening summary (a failed verification is recorded in it, the screen is kept)."""
        node = self.ctx.screening
        if 'summary' not in node.outputs or node.exit_status == 321:  # 321: no candidate could be screened
            return self.exit_codes.ERROR_SCREENING_FAILED.format(message=self._failure(node))
        self.ctx.nodes['screening'] = node.outputs.summary
        self.out('screening', node.outputs.summary)
        if not node.is_finished_ok:
            self.report(f'screening finished with a warning: {self._failure(node)}')
        return None

    def results(self) -> None:
        """Outputs and the summary of every stage."""
        self.out('potential', self.ctx.potential)
        self.out('training_set', self.ctx.training_set)
        if self.ctx.training_set.uuid != self.ctx.dataset.uuid:
            self.ctx.nodes['training_set'] = self.ctx.training_set
        summary = pipeline_summary(self.inputs.config, **self.ctx.nodes)
        self.out('summary', summary)
        self.report('pipeline finished: ' + ', '.join(f'{key}' for key in summary.get_dict()))
