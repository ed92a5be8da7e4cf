"""``mlmat.active_learning``: train an ensemble, explore with it, label where its members disagree, retrain.

One iteration: ``mlmat.training`` (from the second iteration on, every member starts from the previous weights)
-> ``mlmat.sample`` (Langevin MD with the ensemble over a ladder of temperatures and isotropic strains) -> score
(committee force disagreement of every snapshot) -> stop? -> select (between the trust bounds, capped, diverse by
farthest-point sampling on the model's own descriptors) -> label with the reference calculator (chunked
``mlmat.label.base`` jobs) -> merge (failed labels are recorded as exclusions; the loop goes on with the rest).

The loop stops when the test force RMSE reaches ``convergence.target_forces_rmse`` (``target_error``), when fewer
than ``convergence.fraction`` of the explored snapshots lie above the lower trust bound (``converged_fraction``),
after ``convergence.max_iterations`` trainings (``max_iterations``), or when nothing lies between the bounds
(``no_candidates``). Hull candidates (``hull_candidates``, e.g. the ``uncertain_candidates`` of ``mlmat.hull``)
join the labelling queue of the first iteration and of every later one until they are labelled; while any is
pending, the loop does not stop as converged.
"""

from __future__ import annotations

from typing import Any

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import ToContext, WorkChain, if_, while_

from aiida_mlmat.calcjobs.label import calculator_error
from aiida_mlmat.calcjobs.sample import SampleCalculation
from aiida_mlmat.data.configurations import ConfigurationSetData
from aiida_mlmat.data.potential import PotentialData
from aiida_mlmat.workflows.active_functions import (
    calibrate_potential,
    merge_labels,
    prepare_hull_candidates,
    score_exploration,
    select_for_labelling,
    summarise_active_learning,
)
from aiida_mlmat.workflows.functions import split_configurations
from aiida_mlmat.workflows.idempotent import IdempotentLaunchMixin
from aiida_mlmat.workflows.label import LabelBaseWorkChain, failure_reason, how_it_ended
from aiida_mlmat.workflows.protocols import calculator_mapping, get_protocol_inputs, port_node_type
from aiida_mlmat.workflows.training import TrainingWorkChain

#: Where the exploration MD runs the ensemble (``auto``: CUDA when the machine has it).
EXPLORATION_DEVICES = ('cpu', 'cuda', 'auto')
#: Stop reason of a loop whose last labelling produced no label at all (it also exits with a non-zero status).
STOP_ALL_LABELS_FAILED = 'all_labels_failed'


def _value(namespace: Any, key: str, default: Any = None) -> Any:
    """The value at ``key`` of a namespace of nodes, or of the plain protocol dictionary it is built from."""
    node = namespace.get(key) if namespace is not None else None
    if node is None:
        return default
    if isinstance(node, orm.List):
        return node.get_list()
    return node.value if isinstance(node, orm.Data) else node


def _number(value: Any) -> Any:
    """A number as a float; anything else unchanged, for the worker schema to refuse (``'300'`` is no temperature)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def exploration_parameters(value: Any, iteration: int = 1, as_given: bool = False) -> dict[str, Any]:
    """The ``mlmat.sample`` parameters of the exploration of an iteration (MD with the ensemble ``mlmat``).

    :param as_given: keep the temperatures (K) and strains as the user wrote them (``-5``, not ``-5.0``), for the
        schema's messages to quote them; the worker's input has them as floats.
    """
    from aiida_mlmat.ml.active import DEFAULT_UPPER

    number = (lambda item: item) if as_given else _number

    exploration = value.get('exploration', {})
    upper = _value(value.get('selection', {}), 'upper', DEFAULT_UPPER)
    md: dict[str, Any] = {
        'calculator': {
            'name': 'mlmat',
            'parameters': {'directory': 'potential', 'device': _value(exploration, 'device', 'cpu')},
        },
        'temperatures': [number(t) for t in _value(exploration, 'temperatures', [300.0, 900.0])],
        'strains': [number(s) for s in _value(exploration, 'strains', [0.0])],
        'steps': _value(exploration, 'steps', 100),
        'interval': _value(exploration, 'interval', 10),
        'timestep': _value(exploration, 'timestep', 2.0),
        'friction': _value(exploration, 'friction', 0.01),
        'seed': _value(exploration, 'seed', 0) + iteration - 1,
        'stop_disagreement': _value(exploration, 'stop_disagreement', None) or float(upper),
    }
    return {'include_seeds': False, 'supercell': _value(exploration, 'supercell', [1, 1, 1]), 'md': md}


def validate_inputs(value: Any, _: Any = None) -> str | None:
    """Validate everything before the first job: data, bounds, counts, the exploration against the worker schema."""

    training_set = value.get('training_set')
    if training_set is not None:
        if training_set.count < 3:
            return f'training_set: {training_set.count} configurations are too few to split (at least 3)'
        missing = [key for key in ('energy', 'forces') if key not in training_set.label_keys]
        if missing:
            return f'training_set: not every configuration carries {missing}; label the set first'
        species = set(training_set.species)
        for name in ('seeds', 'hull_candidates', 'test_set'):
            node = value.get(name)
            if node is None:
                continue
            if node.count == 0:
                return f'{name}: the set is empty'
            extra = sorted(set(node.species) - species)
            if extra:
                return f'{name}: elements {extra} are not in the training set ({sorted(species)}); the potential ' \
                    'cannot treat them'  # fmt: skip
    test_set = value.get('test_set')
    if test_set is not None and not {'energy', 'forces'} <= set(test_set.label_keys):
        return 'test_set: every configuration needs energy and forces labels'
    if test_set is not None and training_set is not None:
        from aiida_mlmat.query import configuration_keys

        held_out = set(configuration_keys(test_set))  # cached in the sets' extras: each file is read once
        shared = sum(key in held_out for key in configuration_keys(training_set))
        if shared:
            return (
                f'test_set: {shared} of its {test_set.count} configurations are in the training set too; a held-out '
                'set must be disjoint from it, or its errors (and the `target_error` rule) read optimistic'
            )
    if 'calculator' in value:
        species = training_set.species if training_set is not None else ()
        error = calculator_error(value['calculator'].get_dict(), species)
        if error:
            return error
    error = _stress_error(value)
    if error:
        return error
    from aiida_mlmat.calcjobs.base import without_torch

    code = value.get('sample', {}).get('code')  # the training's Code: its TrainCalculation port refuses it
    if code is not None and without_torch(code):
        return (
            f'sample.code: `{code.full_label}` is the GPAW worker Code, whose Python has no torch to train or explore; '
            'give the mlmat-worker Code there, and the GPAW one as label.label.code (it labels)'
        )
    return settings_error(value)


def _stress_error(value: Any) -> str | None:
    """A loss that weights stress needs it on the training set and from the reference (GPAW: plane waves only);
    refused here, not in an iteration's training."""
    from aiida_mlmat.ml.training import weighted_labels

    trainer = value.get('training', {}).get('member', {}).get('trainer', {})
    training = trainer['training'].get_dict() if 'training' in trainer else {}
    retrain = value['retrain'].get_dict() if 'retrain' in value else {}
    if not any('stress' in weighted_labels(settings) for settings in (training, retrain)):
        return None
    weight = max(float(settings.get('stress_weight') or 0.0) for settings in (training, retrain))
    in_training = float(training.get('stress_weight') or 0.0) > 0
    where = 'training.training.stress_weight' if in_training else 'retrain.stress_weight'
    training_set = value.get('training_set')
    if training_set is not None and 'stress' not in training_set.label_keys:
        return (
            f'training_set: not every configuration carries stress, which the loss weights (stress_weight {weight}); '
            f'set {where} to 0'
        )
    calculator = value['calculator'].get_dict() if 'calculator' in value else {}
    mode = (calculator.get('parameters') or {}).get('mode')
    name = mode.get('name') if isinstance(mode, dict) else mode
    if calculator.get('name') == 'gpaw' and name != 'pw':
        return (
            f'calculator: GPAW gives stress only in plane-wave mode (`mode` {name or "fd, its default"}), and the '
            f'loss weights stress (stress_weight {weight}); use {{"mode": {{"name": "pw", "ecut": ...}}}} or set '
            f'{where} to 0'
        )
    return None


def settings_error(value: Any) -> str | None:
    """Why the loop's settings (committee size, trust bounds, counts, convergence, exploration) are invalid, or None.

    ``value`` is the workchain's input namespace or the plain protocol dictionary it is built from, so that
    ``get_protocol_inputs`` refuses bad overrides before any process runs (a pipeline's reference stage included).
    """
    from aiida_mlmat.ml.active import DEFAULT_LOWER, DEFAULT_UPPER, check_bounds, check_quantile
    from aiida_mlmat.worker.schema import SCHEMA_VERSION, input_errors

    ensemble = _value(value.get('training') or {}, 'ensemble_size', 3)
    if ensemble < 2:
        return f'training.ensemble_size: active learning needs a committee of at least 2 members, got {ensemble}'
    selection = value.get('selection') or {}
    lower, upper = _value(selection, 'lower', DEFAULT_LOWER), _value(selection, 'upper', DEFAULT_UPPER)
    error = check_bounds(lower, upper)
    if error:
        return f'selection: {error}'
    quantile = _value(selection, 'lower_quantile', None)
    error = check_quantile(quantile) if quantile is not None else None
    if error:
        return f'selection.lower_quantile: {error}'
    if _value(selection, 'max_per_iteration', 20) < 1:
        return 'selection.max_per_iteration: must be at least 1'
    convergence = value.get('convergence') or {}
    if _value(convergence, 'max_iterations', 5) < 1:
        return 'convergence.max_iterations: must be at least 1'
    fraction = _value(convergence, 'fraction', 0.05)
    if not 0 <= fraction <= 1:
        return f'convergence.fraction: must be in [0, 1], got {fraction}'
    target = _value(convergence, 'target_forces_rmse', None)
    if target is not None and target <= 0:
        return f'convergence.target_forces_rmse: must be positive (eV/Å), got {target}'
    if _value(value, 'chunk_size', 50) < 1:
        return 'chunk_size: must be at least 1'
    exploration = value.get('exploration') or {}
    steps, interval = _value(exploration, 'steps', 100), _value(exploration, 'interval', 10)
    if interval < 1 or steps < interval:
        return f'exploration: need 1 <= interval <= steps, got interval {interval} and steps {steps}'
    stop = _value(exploration, 'stop_disagreement', None)
    if stop is not None and stop < upper:
        return f'exploration.stop_disagreement ({stop} eV/Å) must not be below the upper trust bound ({upper} eV/Å)'
    device = _value(exploration, 'device', 'cpu')
    if device not in EXPLORATION_DEVICES:
        return f'exploration.device: expected one of {", ".join(EXPLORATION_DEVICES)}, got {device!r}'
    data = {'schema_version': SCHEMA_VERSION, 'task': 'sample', 'structures': 'structures.extxyz'}
    errors = input_errors('sample', {**data, **exploration_parameters(value, as_given=True)})
    if errors:
        given = exploration.get('stop_disagreement') is not None
        return '; '.join(f'{exploration_key(path, given)}: {message}' for path, message in errors)
    return None


#: The worker's ``md`` settings that are the loop's ``exploration`` settings of the same name.
_EXPLORATION_MD_KEYS = frozenset(
    {'temperatures', 'strains', 'steps', 'interval', 'timestep', 'friction', 'seed', 'stop_disagreement'}
)


def exploration_key(path: tuple[str | int, ...], stop_given: bool = True) -> str:
    """The loop's setting (``exploration.temperatures[0]``) behind a path of the worker's sample input.

    The exploration is checked against the worker's ``mlmat.sample`` schema, whose keys (``md.temperatures.0``)
    are not what a user wrote in a protocol, a YAML file or the builder.

    :param stop_given: whether ``exploration.stop_disagreement`` was given; if not, the MD stops at
        ``selection.upper``, which is then the setting named.
    """
    parts = list(path)
    if len(parts) > 1 and parts[0] == 'md' and parts[1] in _EXPLORATION_MD_KEYS:
        parts = parts[1:]  # the worker's md.X is the loop's exploration.X
    key = 'exploration'
    if parts[:1] == ['stop_disagreement'] and not stop_given:
        key, parts = 'selection.upper (where exploration.stop_disagreement is not given)', parts[1:]
    return key + ''.join(f'[{part}]' if isinstance(part, int) else f'.{part}' for part in parts)


class ActiveLearningWorkChain(IdempotentLaunchMixin, WorkChain):
    """Grow a training set where an ensemble potential is uncertain, until it is accurate or confident enough.

    See the module docstring for the loop and its stop reasons. Outputs: the final ``potential`` and the
    ``training_set`` it was trained on (whose ``excluded`` attribute lists every configuration whose label failed,
    with its iteration and reason), ``metrics`` (per iteration: test errors eV/atom and eV/Å, disagreement
    statistics eV/Å, counts, calibration), ``stop_reason`` and the ``learning_curve`` PNG.
    """

    @classmethod
    def define(cls, spec: Any) -> None:
        """Define the ports and the outline."""
        super().define(spec)
        spec.input('training_set', valid_type=ConfigurationSetData, help='Initial labelled set (energy, forces).')
        spec.input('seeds', valid_type=ConfigurationSetData, help='Seed structures the exploration MD starts from.')
        spec.input(
            'calculator',
            valid_type=orm.Dict,
            help='Reference calculator for the labels: `{"name": "emt", "parameters": {...}}`.',
        )
        spec.input(
            'test_set',
            valid_type=ConfigurationSetData,
            required=False,
            help='Held-out labelled set for the test errors and `target_error` (default: the test split of each '
            'training).',
        )
        spec.input(
            'hull_candidates',
            valid_type=ConfigurationSetData,
            required=False,
            help='Structures to label whatever their disagreement (e.g. `uncertain_candidates` of `mlmat.hull`): '
            'queued in the first iteration and in every later one until labelled.',
        )
        spec.input('chunk_size', valid_type=orm.Int, default=lambda: orm.Int(50), help='Configurations per label job.')
        spec.input(
            'retrain',
            valid_type=orm.Dict,
            required=False,
            help='Training hyperparameters that replace those of `training.member.trainer.training` from the second '
            'iteration on, when members start from the previous weights (e.g. fewer epochs, a lower learning rate).',
        )
        spec.input_namespace('exploration', help='Langevin MD with the ensemble, from every seed.')
        spec.input(
            'exploration.temperatures',
            valid_type=orm.List,
            default=lambda: orm.List([300.0, 900.0]),
            help='Temperature ladder (K).',
        )
        spec.input(
            'exploration.strains',
            valid_type=orm.List,
            default=lambda: orm.List([0.0]),
            help='Isotropic linear strains applied to the seeds before MD (fractions: -0.02 is -2 %).',
        )
        spec.input('exploration.steps', valid_type=orm.Int, default=lambda: orm.Int(100), help='MD steps per run.')
        spec.input(
            'exploration.interval', valid_type=orm.Int, default=lambda: orm.Int(10), help='Keep a snapshot every n.'
        )
        spec.input('exploration.timestep', valid_type=orm.Float, default=lambda: orm.Float(2.0), help='fs.')
        spec.input('exploration.friction', valid_type=orm.Float, default=lambda: orm.Float(0.01), help='1/fs.')
        spec.input(
            'exploration.supercell', valid_type=orm.List, default=lambda: orm.List([1, 1, 1]), help='Seed repeats.'
        )
        spec.input('exploration.seed', valid_type=orm.Int, default=lambda: orm.Int(0), help='MD seed (+ iteration).')
        spec.input(
            'exploration.stop_disagreement',
            valid_type=orm.Float,
            required=False,
            help='End a trajectory once its disagreement exceeds this (eV/Å; default: the upper trust bound); the '
            'snapshots it skips count as above both bounds.',
        )
        spec.input('exploration.device', valid_type=orm.Str, default=lambda: orm.Str('cpu'), help='cpu, cuda or auto.')
        spec.input_namespace('selection', help='Which explored snapshots to label.')
        spec.input(
            'selection.lower',
            valid_type=orm.Float,
            default=lambda: orm.Float(0.05),
            help='Lower trust bound on the committee force disagreement (eV/Å): below it the ensemble is trusted.',
        )
        spec.input(
            'selection.upper',
            valid_type=orm.Float,
            default=lambda: orm.Float(0.5),
            help='Upper trust bound (eV/Å): above it a snapshot is taken as unphysical and not labelled.',
        )
        spec.input(
            'selection.lower_quantile',
            valid_type=orm.Float,
            required=False,
            help='Adaptive lower bound: candidates lie above the larger of `lower` and this quantile (0 to 1) of the '
            "explored disagreement, so FPS picks among the most uncertain 1 - q (DP-GEN's adapted trust level), "
            'but never fewer than `max_per_iteration` when that many lie above `lower`; convergence is still judged '
            'against `lower`.',
        )
        spec.input(
            'selection.max_per_iteration',
            valid_type=orm.Int,
            default=lambda: orm.Int(20),
            help='At most this many explored snapshots are labelled per iteration.',
        )
        spec.input(
            'selection.fps',
            valid_type=orm.Bool,
            default=lambda: orm.Bool(True),
            help='With more candidates than the cap: farthest-point sampling on the descriptors of the model '
            '(else the most uncertain ones).',
        )
        spec.input_namespace('convergence', help='When to stop.')
        spec.input(
            'convergence.fraction',
            valid_type=orm.Float,
            default=lambda: orm.Float(0.05),
            help='Stop when fewer than this fraction of explored snapshots lie above the lower bound.',
        )
        spec.input(
            'convergence.target_forces_rmse',
            valid_type=orm.Float,
            required=False,
            help='Stop when the test force RMSE (eV/Å) is at most this.',
        )
        spec.input(
            'convergence.max_iterations', valid_type=orm.Int, default=lambda: orm.Int(5), help='Trainings at most.'
        )
        spec.expose_inputs(
            TrainingWorkChain, namespace='training', exclude=('configurations', 'initial_potential', 'test_split')
        )
        spec.expose_inputs(SampleCalculation, namespace='sample', exclude=('structures', 'parameters', 'potential'))
        spec.expose_inputs(LabelBaseWorkChain, namespace='label', exclude=('label.configurations', 'label.calculator'))
        spec.inputs.validator = validate_inputs
        spec.outline(
            cls.setup,
            while_(cls.should_iterate)(
                cls.run_training,
                cls.inspect_training,
                cls.run_exploration,
                cls.inspect_exploration,
                cls.score,
                if_(cls.should_label)(
                    if_(cls.needs_descriptors)(cls.run_descriptors, cls.inspect_descriptors),
                    cls.select,
                    cls.run_labelling,
                    cls.merge,
                ),
            ),
            cls.finalise,
        )
        spec.output('potential', valid_type=PotentialData, help='The last ensemble potential trained.')
        spec.output('training_set', valid_type=ConfigurationSetData, help='The set the last potential was trained on.')
        spec.output('metrics', valid_type=orm.Dict, help='Per-iteration errors (eV/atom, eV/Å), disagreement, counts.')
        spec.output('stop_reason', valid_type=orm.Str, help='target_error, converged_fraction, max_iterations, ...')
        spec.output('learning_curve', valid_type=orm.SinglefileData, help='PNG: test errors and fraction above lower.')
        spec.exit_code(401, 'ERROR_TRAINING_FAILED', message='Training of iteration {iteration} failed: {message}')
        spec.exit_code(
            402, 'ERROR_EXPLORATION_FAILED', message='Exploration of iteration {iteration} failed: {message}'
        )
        spec.exit_code(
            403, 'ERROR_DESCRIPTORS_FAILED', message='Descriptors of iteration {iteration} failed: {message}'
        )
        spec.exit_code(
            404,
            'ERROR_ALL_LABELS_FAILED',
            message='No configuration of iteration {iteration} could be labelled; outputs hold the loop so far.',
        )

    @classmethod
    def get_builder_from_protocol(
        cls,
        code: orm.AbstractCode,
        training_set: ConfigurationSetData,
        seeds: ConfigurationSetData,
        *,
        calculator: dict[str, Any],
        protocol: str | None = None,
        overrides: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        test_set: ConfigurationSetData | None = None,
        hull_candidates: ConfigurationSetData | None = None,
    ) -> Any:
        """A builder from the ``active_learning`` protocols (fast, balanced, precise).

        :param code: the ``mlmat-worker`` Code (training, exploration, descriptors and labelling).
        :param calculator: the reference calculator spec, e.g. ``{'name': 'emt'}``.
        :param overrides: nested dictionary merged into the protocol (keys ``training``, ``retrain``,
            ``exploration``, ``selection``, ``convergence``, ``chunk_size``).
        :param options: ``metadata.options`` of every CalcJob (resources, walltime, queue).
        """
        inputs = get_protocol_inputs('active_learning', protocol, overrides)
        training = inputs['training']
        builder = cls.get_builder()
        builder.training_set = training_set
        builder.seeds = seeds
        spec = calculator_mapping(calculator)  # a mapping or an orm.Dict; anything else refused naming the form
        builder.calculator = calculator if isinstance(calculator, orm.Dict) else orm.Dict(spec)
        if test_set is not None:
            builder.test_set = test_set
        if hull_candidates is not None:
            builder.hull_candidates = hull_candidates
        builder.chunk_size = orm.Int(inputs['chunk_size'])
        if inputs.get('retrain'):
            builder.retrain = orm.Dict(inputs['retrain'])
        builder.training.ensemble_size = orm.Int(training['ensemble_size'])
        for key in ('test_fraction', 'validation_fraction'):
            if key in training:
                builder.training[key] = orm.Float(training[key])
        if 'seed' in training:
            builder.training.seed = orm.Int(training['seed'])
        builder.training.member.trainer.code = code
        builder.training.member.trainer.model = orm.Dict(training.get('model', {}))
        builder.training.member.trainer.training = orm.Dict(training.get('training', {}))
        builder.training.member.max_iterations = orm.Int(training.get('max_iterations', 5))
        ports = cls.spec().inputs  # the settings' node types come from the ports (keys checked by the protocol)
        for namespace in ('exploration', 'selection', 'convergence'):
            for key, value in (inputs.get(namespace) or {}).items():
                if value is None or key not in ports[namespace]:  # null: the default; `description`: a comment
                    continue
                node_type = port_node_type(ports[namespace][key])
                builder[namespace][key] = node_type(list(value)) if node_type is orm.List else node_type(value)
        builder.sample.code = code
        builder.label.label.code = code
        builder.label.max_iterations = orm.Int(inputs.get('label_max_iterations', 3))
        if options:
            options = {'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': 1}, **options}
            builder.sample.metadata.options = dict(options)
            builder.label.label.metadata.options = dict(options)
            builder.training.member.trainer.metadata.options = dict(options)
        return builder

    # ------------------------------------------------------------------ loop

    def setup(self) -> None:
        """Start from the given training set; queue the hull candidates."""
        self.ctx.iteration = 0
        self.ctx.training_set = self.inputs.training_set
        self.ctx.potential = None
        self.ctx.stop_reason = None
        self.ctx.failed = False
        self.ctx.records = []
        self.ctx.pending = (
            prepare_hull_candidates(self.inputs.hull_candidates) if 'hull_candidates' in self.inputs else None
        )

    def should_iterate(self) -> bool:
        """Go on until a stop reason is set."""
        return self.ctx.stop_reason is None

    def _record(self, kind: str, node: orm.Data) -> None:
        self.ctx.records[-1][kind] = node.uuid

    def run_training(self) -> Any:
        """Train the ensemble on the current set, from the previous weights after the first iteration."""
        self.ctx.iteration += 1
        self.ctx.records.append({'dataset': self.ctx.training_set.uuid})
        inputs = AttributeDict(self.exposed_inputs(TrainingWorkChain, 'training'))
        inputs.configurations = self.ctx.training_set
        if self.ctx.get('test_split') is not None:  # the first iteration's: no later one trains on what it tested on
            inputs.test_split = self.ctx.test_split
        if self.ctx.potential is not None:
            inputs.initial_potential = self.ctx.potential
            if 'retrain' in self.inputs:
                inputs.member = AttributeDict(inputs.member)
                inputs.member.trainer = AttributeDict(inputs.member.trainer)
                training = inputs.member.trainer.training.get_dict() if 'training' in inputs.member.trainer else {}
                inputs.member.trainer.training = orm.Dict({**training, **self.inputs.retrain.get_dict()})
        inputs.metadata = {'call_link_label': f'training_{self.ctx.iteration}'}
        node = self.submit(TrainingWorkChain, **inputs)
        start = 'from the previous weights' if self.ctx.potential is not None else 'from scratch'
        self.report(
            f'iteration {self.ctx.iteration}: training {inputs.ensemble_size.value} members {start} on '
            f'{self.ctx.training_set.count} configurations in {node.process_label}<{node.pk}>'
        )
        return ToContext(training=node)

    def inspect_training(self) -> Any:
        """The ensemble must exist."""
        node = self.ctx.training
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_TRAINING_FAILED.format(
                iteration=self.ctx.iteration, message=failure_reason(node)
            )
        self.ctx.potential = node.outputs.potential
        if self.ctx.get('test_split') is None:
            self.ctx.test_split = node.outputs.splits.test
        self._record('potential', node.outputs.potential)
        self._record('training', node.outputs.metrics)
        return None

    def run_exploration(self) -> Any:
        """MD with the ensemble from every seed over the temperature and strain ladders."""
        inputs = AttributeDict(self.exposed_inputs(SampleCalculation, 'sample'))
        inputs.structures = self.inputs.seeds
        inputs.parameters = orm.Dict(exploration_parameters(self.inputs, self.ctx.iteration))
        inputs.potential = self.ctx.potential
        inputs.metadata = AttributeDict(inputs.get('metadata', {}))
        inputs.metadata.call_link_label = f'explore_{self.ctx.iteration}'
        node = self.submit(SampleCalculation, **inputs)
        return ToContext(exploration=node)

    def inspect_exploration(self) -> Any:
        """The exploration must have finished."""
        node = self.ctx.exploration
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_EXPLORATION_FAILED.format(
                iteration=self.ctx.iteration, message=how_it_ended(node)
            )
        return None

    def score(self) -> None:
        """Disagreement statistics, test errors and the decision to stop."""
        from aiida_mlmat.ml.active import stop_reason
        from aiida_mlmat.workflows.training_functions import evaluate_ensemble

        selection = self.inputs.selection
        quantile = {}
        if 'lower_quantile' in selection:  # the adaptive bound never leaves fewer candidates than the label cap
            quantile = {'lower_quantile': selection.lower_quantile, 'min_candidates': selection.max_per_iteration}
        scored = score_exploration(
            self.ctx.exploration.outputs.configurations, selection.lower, selection.upper, **quantile
        )
        self.ctx.candidates = scored['candidates']
        statistics = scored['statistics'].get_dict()
        self._record('exploration', scored['statistics'])
        if 'test_set' in self.inputs:
            test = evaluate_ensemble(self.inputs.test_set, member_0=self.ctx.potential)['metrics']
            self._record('test', test)
        else:
            test = self.ctx.training.outputs.metrics
        rmse = test.get('forces_rmse', float('nan'))
        n_pending = self.ctx.pending.count if self.ctx.pending is not None else 0
        n_selected = min(self.ctx.candidates.count, self.inputs.selection.max_per_iteration.value)
        target = self.inputs.convergence.get('target_forces_rmse')
        self.ctx.stop_reason = stop_reason(
            iteration=self.ctx.iteration,
            max_iterations=self.inputs.convergence.max_iterations.value,
            fraction_above_lower=statistics['fraction_above_lower'],
            fraction_threshold=self.inputs.convergence.fraction.value,
            test_forces_rmse=rmse,
            target_forces_rmse=target.value if target is not None else None,
            n_to_label=n_selected + n_pending,
            n_pending=n_pending,
        )
        fraction = statistics['fraction_above_lower']
        self.report(
            f'iteration {self.ctx.iteration}: test force RMSE {rmse:.4f} eV/Å; explored {statistics["n_explored"]} '
            f'(+{statistics["n_skipped"]} skipped), fraction above lower bound {fraction:.3f}, '
            f'{statistics["n_candidates"]} candidates, {n_pending} hull candidates pending'
            + (f'; stop: {self.ctx.stop_reason}' if self.ctx.stop_reason else '')
        )

    def should_label(self) -> bool:
        """Label unless the loop stops here."""
        return self.ctx.stop_reason is None

    def needs_descriptors(self) -> bool:
        """Descriptors only for a diversity choice among more candidates than the cap."""
        cap = self.inputs.selection.max_per_iteration.value
        return self.inputs.selection.fps.value and self.ctx.candidates.count > cap

    def run_descriptors(self) -> Any:
        """Descriptors of the candidates with the potential's own descriptor definition."""
        from aiida_mlmat.calcjobs.descriptors import DescriptorsCalculation
        from aiida_mlmat.workflows.reference import scheduler_options

        definition = dict(self.ctx.potential.base.attributes.get('config')['descriptor'])
        inputs = {
            'code': self.inputs.sample.code,
            'configurations': self.ctx.candidates,
            'descriptor': orm.Dict(definition),
            'settings': orm.Dict({'dtype': 'float64', 'device': 'cpu'}),
            'metadata': {
                'call_link_label': f'descriptors_{self.ctx.iteration}',
                'options': scheduler_options(self.inputs.sample.metadata.options),
            },
        }
        return ToContext(descriptors=self.submit(DescriptorsCalculation, **inputs))

    def inspect_descriptors(self) -> Any:
        """The descriptors must exist."""
        node = self.ctx.descriptors
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_DESCRIPTORS_FAILED.format(
                iteration=self.ctx.iteration, message=how_it_ended(node)
            )
        return None

    def select(self) -> None:
        """The labelling queue: capped, diverse candidates plus pending hull candidates."""
        kwargs: dict[str, Any] = {}
        if self.needs_descriptors():
            kwargs['descriptors'] = self.ctx.descriptors.outputs.descriptors
        if self.ctx.pending is not None:
            kwargs['pending'] = self.ctx.pending
        self.ctx.queue = select_for_labelling(
            self.ctx.candidates,
            self.inputs.selection.lower,
            self.inputs.selection.upper,
            self.inputs.selection.max_per_iteration,
            orm.Int(self.ctx.iteration),
            **kwargs,
        )

    def run_labelling(self) -> Any:
        """Label the queue with the reference in chunks, each in the restart wrapper."""
        self.ctx.chunks = self.call_once(
            f'split_{self.ctx.iteration}', split_configurations, self.ctx.queue, self.inputs.chunk_size
        )
        futures = {}
        for key, chunk in sorted(self.ctx.chunks.items()):
            inputs = AttributeDict(self.exposed_inputs(LabelBaseWorkChain, 'label'))
            inputs.label = AttributeDict(inputs.label)
            inputs.label.configurations = chunk
            inputs.label.calculator = self.inputs.calculator
            inputs.metadata = {'call_link_label': f'label_{self.ctx.iteration}_{key}'}
            futures[f'label_{key}'] = self.submit(LabelBaseWorkChain, **inputs)
        self.report(
            f'iteration {self.ctx.iteration}: labelling {self.ctx.queue.count} configurations in {len(futures)} jobs'
        )
        return ToContext(**futures)

    def merge(self) -> Any:
        """Merge what was labelled; failed labels become exclusions; calibrate on the new labels."""
        failures: dict[str, str] = {}
        nodes: dict[str, ConfigurationSetData] = {}
        for key, chunk in sorted(self.ctx.chunks.items()):
            workchain = self.ctx[f'label_{key}']
            if workchain.is_finished_ok:
                nodes[f'labelled_{key}'] = workchain.outputs.configurations
            else:
                nodes[f'failed_{key}'] = chunk
                failures[f'failed_{key}'] = failure_reason(workchain)
                self.report(f'chunk {key} failed: {failures[f"failed_{key}"]}')
        merged = merge_labels(
            self.ctx.training_set,
            self.ctx.queue,
            self.inputs.calculator,
            orm.Dict(failures),
            orm.Int(self.ctx.iteration),
            **nodes,
        )
        self._record('merge', merged['counts'])
        counts = merged['counts'].get_dict()
        self.ctx.pending = merged.get('pending')
        self.report(
            f'iteration {self.ctx.iteration}: {counts["labelled"]} labelled, {counts["failed"]} failed '
            f'(recorded as exclusions), {counts["pending_hull"]} hull candidates still pending'
        )
        if 'labelled' not in merged:
            self.ctx.stop_reason = STOP_ALL_LABELS_FAILED
            self.ctx.failed = True
            self.ctx.final_training_set = merged['training_set']
            return None
        self._record('calibration', calibrate_potential(self.ctx.potential, merged['labelled']))
        self.ctx.training_set = merged['training_set']
        return None

    def finalise(self) -> Any:
        """Outputs: the last potential, its training set, the metrics, the stop reason and the learning curve."""
        records = {
            f'{kind}_{number}': orm.load_node(uuid)
            for number, record in enumerate(self.ctx.records, start=1)
            for kind, uuid in record.items()
        }
        settings = {
            'ensemble_size': self.inputs.training.ensemble_size.value,
            'selection': {
                'lower': self.inputs.selection.lower.value,
                'upper': self.inputs.selection.upper.value,
                'max_per_iteration': self.inputs.selection.max_per_iteration.value,
                'fps': self.inputs.selection.fps.value,
                'lower_quantile': (
                    self.inputs.selection.lower_quantile.value if 'lower_quantile' in self.inputs.selection else None
                ),
            },
            'convergence': {
                'fraction': self.inputs.convergence.fraction.value,
                'max_iterations': self.inputs.convergence.max_iterations.value,
                'target_forces_rmse': (
                    self.inputs.convergence.target_forces_rmse.value
                    if 'target_forces_rmse' in self.inputs.convergence
                    else None
                ),
            },
            'exploration': exploration_parameters(self.inputs)['md'] | {'calculator': 'mlmat'},
            'test_errors_from': 'test_set' if 'test_set' in self.inputs else 'training_split',
        }
        summary = summarise_active_learning(orm.Str(self.ctx.stop_reason), orm.Dict(settings), **records)
        self.out('potential', self.ctx.potential)
        training_set = self.ctx.final_training_set if self.ctx.failed else self.ctx.training_set
        self.out('training_set', training_set)
        self.out('metrics', summary['metrics'])
        self.out('stop_reason', summary['stop_reason'])
        self.out('learning_curve', summary['learning_curve'])
        metrics = summary['metrics'].get_dict()
        first, last = metrics['iterations'][0]['test'], metrics['iterations'][-1]['test']
        self.report(
            f'stopped after {metrics["n_iterations"]} iterations: {self.ctx.stop_reason}; test force RMSE '
            f'{first["forces_rmse"]:.4f} -> {last["forces_rmse"]:.4f} eV/Å; {metrics["labels_added"]} labels added, '
            f'{metrics["labels_failed"]} failed'
        )
        if self.ctx.failed:
            return self.exit_codes.ERROR_ALL_LABELS_FAILED.format(iteration=self.ctx.iteration)
        return None
