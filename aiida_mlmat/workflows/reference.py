"""``mlmat.reference``: seeds -> sample -> label in chunks -> one labelled configuration set."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import ToContext, WorkChain, calcfunction, if_
from aiida.plugins import CalculationFactory

from aiida_mlmat.calcjobs.base import stored_partition, torch_code_error, validate_scheduler_word, without_torch
from aiida_mlmat.calcjobs.label import calculator_error, code_parameters_error
from aiida_mlmat.calcjobs.sample import SampleCalculation
from aiida_mlmat.data.configurations import ConfigurationSetData
from aiida_mlmat.worker.structures import InvalidConfigurationError, check_configuration, check_element
from aiida_mlmat.workflows.functions import (
    ase_results_to_set,
    build_seed_set,
    collect_labels,
    select_configurations,
    split_configurations,
    structures_to_set,
)
from aiida_mlmat.workflows.idempotent import IdempotentLaunchMixin
from aiida_mlmat.workflows.label import LabelBaseWorkChain, failure_reason, how_it_ended
from aiida_mlmat.workflows.protocols import calculator_mapping, get_protocol_inputs

LABELLERS = ('batch', 'aiida-ase')
#: Calculators that the aiida-ase path can run, with how their JSON parameters translate.
ASE_PATH_CALCULATORS = {'emt': 'emt', 'lj': 'lj.LennardJones', 'gpaw': 'gpaw'}


@calcfunction
def set_to_structures(configurations: ConfigurationSetData) -> dict[str, orm.StructureData]:
    """One StructureData per configuration (``structure_<index>``), for one aiida-ase job each."""
    from aiida_mlmat.common.constants import INDEX_KEY

    return {
        f'structure_{int(frame.info.get(INDEX_KEY, position))}': orm.StructureData(ase=frame)
        for position, frame in enumerate(configurations.get_atoms())
    }


def ase_parameters(calculator: dict[str, Any], properties: list[str]) -> dict[str, Any]:
    """Translate a registry calculator spec into aiida-ase ``parameters``."""
    args = dict(calculator.get('parameters', {}))
    mode = args.get('mode')
    if calculator['name'] == 'gpaw' and isinstance(mode, dict) and mode.get('name') == 'pw':
        args['mode'] = {'@function': 'PW', 'args': {k: v for k, v in mode.items() if k != 'name'}}
    getters = [name for name in ('forces', 'stress') if name in properties]
    return {'calculator': {'name': ASE_PATH_CALCULATORS[calculator['name']], 'args': args}, 'atoms_getters': getters}


SCHEDULER_OPTION_KEYS = (
    'resources',
    'max_wallclock_seconds',
    'queue_name',
    'account',
    'qos',
    'custom_scheduler_commands',
    'max_memory_kb',
    'prepend_text',
    'append_text',
)


def scheduler_options(options: Any) -> dict[str, Any]:
    """The scheduler-facing part of a CalcJob's options (not its parser or file names), to reuse for another."""
    return {key: options[key] for key in SCHEDULER_OPTION_KEYS if options.get(key) is not None}


def validate_inputs(value: Any, _: Any = None) -> str | None:
    """Validate the whole input namespace before anything runs."""
    elements = value['elements'].get_list() if 'elements' in value else []
    structures = value.get('structures')
    structure_data = dict(value.get('structure_data') or {})
    if structures is not None and structure_data:
        return 'give seeds either as `structures` or as `structure_data`, not both'
    if structure_data:
        from aiida_mlmat.data.configurations import ConfigurationSetData as _Set

        structures = _Set([structure_data[key].get_ase() for key in sorted(structure_data)])
    if not elements and structures is None:
        return 'give seed `structures` (or `structure_data`), or `elements` to build seeds from'
    for symbol in elements:
        try:
            check_element(symbol)
        except ValueError as exc:
            return f'elements: {exc}'
    repeated = sorted({symbol for symbol in elements if elements.count(symbol) > 1})
    if repeated:
        return f'elements: {", ".join(repeated)} given more than once'
    species = set(elements)
    if structures is not None:
        if structures.count == 0:
            return 'structures: the seed set is empty'
        for position, frame in enumerate(structures.get_atoms()):
            try:
                check_configuration(frame)
            except InvalidConfigurationError as exc:
                return f'structures: seed {position}: {exc}'
        if elements and not set(structures.species) <= set(elements):
            extra = sorted(set(structures.species) - set(elements))
            return f'structures: elements {extra} are not in the chemical system {elements}'
        species |= set(structures.species)
    calculator = value['calculator'].get_dict()
    error = calculator_error(calculator, species)
    if error:
        return error
    labeller = value['labeller'].value if 'labeller' in value else 'batch'
    if labeller not in LABELLERS:
        return f'labeller: `{labeller}` is not one of {LABELLERS}'
    code = value.get('ase_code') if labeller == 'aiida-ase' else value.get('label', {}).get('label', {}).get('code')
    error = code_parameters_error(code, calculator)
    if error:
        return error
    if labeller == 'aiida-ase':
        if calculator['name'] not in ASE_PATH_CALCULATORS:
            return f'labeller aiida-ase: calculator `{calculator["name"]}` is not supported on that path'
        if 'ase_code' not in value:
            return 'labeller aiida-ase needs `ase_code`: a Code running a Python with ASE (and the calculator)'
    if 'ase_options' in value:  # aiida-ase's CalcJob does not check what goes into its #SBATCH lines
        from aiida_mlmat.calcjobs.base import validate_environment_names

        ase_options = value['ase_options'].get_dict()
        for key in ('queue_name', 'account', 'qos'):
            error = validate_scheduler_word(ase_options.get(key))
            if error:
                return f'ase_options.{key}: {error}'
        error = validate_environment_names(ase_options.get('environment_variables'))
        if error:
            return f'ase_options.environment_variables: {error}'
    if 'chunk_size' in value and value['chunk_size'].value < 1:
        return 'chunk_size: must be at least 1'
    select = value.get('select', {})
    if 'n' in select and select['n'].value < 1:
        return 'select.n: must be at least 1'
    sample_code = value.get('sample', {}).get('code')
    if 'n' in select and 'code' not in select and sample_code is not None and without_torch(sample_code):
        return (
            f'select.code: the descriptors of the selection need torch, which the GPAW worker Code '
            f'`{sample_code.full_label}` (the sampling Code) lacks; give the mlmat-worker Code as select.code'
        )
    if 'n' in select and 'code' in select:
        error = torch_code_error(select['code'], 'select.code', 'the descriptors of the selection')
        if error:
            return error
    plain = {key: node.get_dict() if isinstance(node, orm.Dict) else node.value for key, node in select.items()
             if key in ('method', 'descriptor')}  # fmt: skip
    seeds = set(structures.species) if structures is not None else set(elements)  # what is sampled and selected
    return select_error(plain, seeds)


def select_error(select: dict[str, Any], species: Iterable[str]) -> str | None:
    """Why the selection settings ``method`` and ``descriptor`` (plain values) cannot run on seeds of ``species``,
    or None: checked before anything is submitted, not first by the descriptors job after the sampling."""
    if select.get('method') is not None and select['method'] not in ('fps', 'cur'):
        return f'select.method: `{select["method"]}` is not one of fps, cur'
    if select.get('descriptor') is not None:
        from aiida_mlmat.calcjobs.descriptors import descriptor_definition

        species = set(species)
        if not isinstance(select['descriptor'], dict):
            return (
                f'select.descriptor: expected a mapping such as {{"kind": "chebyshev"}}, got {select["descriptor"]!r}'
            )
        try:
            definition = descriptor_definition(select['descriptor'], sorted(species) or ['H'])
        except (ValueError, TypeError) as exc:
            return f'select.descriptor: {str(exc).removeprefix("descriptor: ")}'
        from aiida_mlmat.calcjobs.descriptors import STRUCTURES_FILE
        from aiida_mlmat.worker.schema import SCHEMA_VERSION, input_errors

        task = {'schema_version': SCHEMA_VERSION, 'task': 'descriptors', 'structures': STRUCTURES_FILE}
        for path, message in input_errors('descriptors', {**task, 'descriptor': definition}):  # as the job checks
            return f'select.{".".join(str(part) for part in path)}: {message}'
        extra = sorted(species - set(definition['species']))
        if extra:
            return (
                f'select.descriptor: the seeds hold {extra}, which the descriptor species {definition["species"]} lack'
            )
    return None


def select_without_n_error(select: dict[str, Any]) -> str | None:
    """Why selection settings without ``n`` are refused (they would be ignored: every sample is labelled), or None."""
    given = ', '.join(sorted(key for key in select if key != 'n'))
    if given and not select.get('n'):  # `n` alone, 0 or null, is no selection, as before
        return (
            f'select: {given} has no effect without select.n, the number of samples to keep (--select N): '
            'give it, or drop select'
        )
    return None


class ReferenceWorkChain(IdempotentLaunchMixin, WorkChain):
    """Generate a labelled reference data set from seed structures (or a chemical system).

    Seeds (given, or built from ``elements``) are sampled by ``mlmat.sample``; the samples are labelled in
    chunks by ``mlmat.label`` jobs in restart wrappers (or one aiida-ase ``ase.ase`` job per configuration),
    and collected into one ``mlmat.configurations`` set whose ``excluded`` attribute records every
    configuration that failed, with its reason.
    """

    @classmethod
    def define(cls, spec: Any) -> None:
        """Define the ports and the outline."""
        super().define(spec)
        spec.input('structures', valid_type=ConfigurationSetData, required=False, help='Seed structures.')
        spec.input_namespace(
            'structure_data',
            valid_type=orm.StructureData,
            dynamic=True,
            required=False,
            help='Seed structures as StructureData nodes (any link labels); gathered into one set in provenance.',
        )
        spec.input(
            'elements',
            valid_type=orm.List,
            required=False,
            help='Chemical system; without `structures`, seeds are built from it (fcc/bcc/hcp, ordered alloys).',
        )
        spec.input(
            'calculator',
            valid_type=orm.Dict,
            help='Reference calculator for the labels: `{"name": "emt", "parameters": {...}}`.',
        )
        spec.input('chunk_size', valid_type=orm.Int, default=lambda: orm.Int(50), help='Configurations per job.')
        spec.input(
            'labeller',
            valid_type=orm.Str,
            default=lambda: orm.Str('batch'),
            help='`batch`: chunked `mlmat.label` jobs; `aiida-ase`: one `ase.ase` job per configuration.',
        )
        spec.input('ase_code', valid_type=orm.AbstractCode, required=False, help='Code for the aiida-ase path.')
        spec.input(
            'ase_options',
            valid_type=orm.Dict,
            required=False,
            help='`metadata.options` for the aiida-ase jobs (resources, walltime).',
        )
        spec.input(
            'select.n',
            valid_type=orm.Int,
            required=False,
            help='Label only the N most diverse samples (descriptor-space selection); default: label all.',
        )
        spec.input('select.method', valid_type=orm.Str, default=lambda: orm.Str('fps'), help='`fps` or `cur`.')
        spec.input(
            'select.code',
            valid_type=orm.AbstractCode,
            required=False,
            help='The mlmat-worker Code (a Python with torch) for the descriptors of the selection; default: '
            '`sample.code`. Needed where that is the GPAW worker Code, whose Python has no torch.',
        )
        spec.input(
            'select.descriptor',
            valid_type=orm.Dict,
            required=False,
            help='Descriptor definition for the selection (default: Chebyshev, 5 Å).',
        )
        spec.expose_inputs(SampleCalculation, namespace='sample', exclude=('structures',))
        spec.expose_inputs(LabelBaseWorkChain, namespace='label', exclude=('label.configurations', 'label.calculator'))
        spec.inputs['label']['label']['code'].required = False
        spec.inputs.validator = validate_inputs
        spec.outline(
            cls.setup,
            cls.run_sample,
            cls.inspect_sample,
            if_(cls.should_select)(cls.run_descriptors, cls.select),
            if_(cls.use_batch_labeller)(cls.run_label_chunks).else_(cls.run_ase_jobs),
            cls.collect,
        )
        spec.output('configurations', valid_type=ConfigurationSetData, help='The labelled reference set.')
        spec.output('sampled', valid_type=ConfigurationSetData, help='Every sampled configuration, unlabelled.')
        spec.exit_code(301, 'ERROR_SAMPLE_FAILED', message='The sampling calculation failed: {message}')
        spec.exit_code(302, 'ERROR_ALL_LABELS_FAILED', message='No configuration could be labelled: {message}')
        spec.exit_code(303, 'ERROR_NO_LABEL_CODE', message='The batch labeller needs `label.label.code`.')
        spec.exit_code(304, 'ERROR_DESCRIPTORS_FAILED', message='The descriptor calculation failed: {message}')
        spec.output('selection', valid_type=orm.List, required=False, help='Indices of the samples kept.')

    @classmethod
    def get_builder_from_protocol(
        cls,
        code: orm.AbstractCode,
        *,
        calculator: dict[str, Any],
        structures: ConfigurationSetData | None = None,
        elements: list[str] | None = None,
        protocol: str | None = None,
        overrides: dict[str, Any] | None = None,
        labeller: str = 'batch',
        ase_code: orm.AbstractCode | None = None,
        options: dict[str, Any] | None = None,
        descriptors_code: orm.AbstractCode | None = None,
    ) -> Any:
        """Return a builder filled from a protocol (``fast``, ``balanced``, ``precise``).

        :param code: the ``mlmat-worker`` Code (sampling and batched labelling); for GPAW, the GPAW worker Code.
        :param descriptors_code: the ``mlmat-worker`` Code (with torch) for the descriptors of a selection
            (``select.n``), where ``code`` is the GPAW worker Code; default ``code``.
        :param calculator: reference calculator spec; also drives MD sampling unless overridden.
        :param overrides: nested dictionary merged into the protocol (keys ``sample``, ``chunk_size``, ...).
        :param options: ``metadata.options`` for every CalcJob (resources, walltime, queue).
        """
        if isinstance(elements, str):  # 'CuAu' would be read letter by letter
            raise ValueError(f'elements: expected a list of element symbols such as ["Cu", "Au"], got {elements!r}')
        given, calculator = calculator, calculator_mapping(calculator)
        inputs = get_protocol_inputs('reference', protocol, overrides)
        builder = cls.get_builder()
        if structures is not None:
            builder.structures = structures
        if elements:
            builder.elements = orm.List(list(elements))
        builder.calculator = given if isinstance(given, orm.Dict) else orm.Dict(calculator)  # a node given is kept
        sample = dict(inputs['sample'])
        if 'md' in sample and 'calculator' not in sample['md']:
            sample['md'] = {**sample['md'], 'calculator': calculator}
        builder.sample.code = code
        builder.sample.parameters = orm.Dict(sample)
        builder.label.label.code = code
        builder.label.max_iterations = orm.Int(inputs.get('max_iterations', 5))
        builder.chunk_size = orm.Int(inputs['chunk_size'])
        select = inputs.get('select') or {}
        error = select_without_n_error(select)
        if error:
            raise ValueError(error)
        if select.get('n'):
            builder.select.n = orm.Int(select['n'])
            builder.select.method = orm.Str(select.get('method', 'fps'))
            if select.get('descriptor'):
                builder.select.descriptor = orm.Dict(select['descriptor'])
            if descriptors_code is not None:
                builder.select.code = descriptors_code
        builder.labeller = orm.Str(labeller)
        if ase_code is not None:
            builder.ase_code = ase_code
        if options:
            resources = {'num_machines': 1, 'num_mpiprocs_per_machine': 1}
            options = {'resources': resources, **options}
            builder.sample.metadata.options = dict(options)
            builder.label.label.metadata.options = dict(options)
            if labeller == 'aiida-ase':
                builder.ase_options = orm.Dict(options)
        return builder

    def setup(self) -> None:
        """Make the seed set."""
        if 'structures' in self.inputs:
            self.ctx.seeds = self.inputs.structures
        elif self.inputs.get('structure_data'):
            self.ctx.seeds = structures_to_set(**self.inputs.structure_data)
        else:
            self.ctx.seeds = build_seed_set(self.inputs.elements)

    def run_sample(self) -> Any:
        """Sample configurations from the seeds."""
        inputs = AttributeDict(self.exposed_inputs(SampleCalculation, 'sample'))
        inputs.structures = self.ctx.seeds
        inputs.metadata.call_link_label = 'sample'
        node = self.submit(SampleCalculation, **inputs)
        self.report(f'sampling {self.ctx.seeds.count} seeds in {node.process_label}<{node.pk}>')
        return ToContext(sample=node)

    def inspect_sample(self) -> Any:
        """Check the sampling and keep its configurations."""
        node = self.ctx.sample
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_SAMPLE_FAILED.format(message=how_it_ended(node))
        self.ctx.sampled = node.outputs.configurations
        self.ctx.to_label = self.ctx.sampled
        self.out('sampled', self.ctx.sampled)
        return None

    def should_select(self) -> bool:
        """Whether to keep only the most diverse samples (when there are more than asked for)."""
        return 'n' in self.inputs.select and self.ctx.sampled.count > self.inputs.select.n.value

    def run_descriptors(self) -> Any:
        """Compute descriptors of the samples, with ``select.code`` (default: the sampling Code) and the sampling
        options."""
        from aiida_mlmat.calcjobs.descriptors import DescriptorsCalculation

        inputs = {
            'code': self.inputs.select.get('code', self.inputs.sample.code),
            'configurations': self.ctx.sampled,
            'metadata': {
                'call_link_label': 'descriptors',
                'options': scheduler_options(self.inputs.sample.metadata.options),
            },
        }
        if 'descriptor' in self.inputs.select:
            inputs['descriptor'] = self.inputs.select.descriptor
        node = self.submit(DescriptorsCalculation, **inputs)
        return ToContext(descriptors=node)

    def select(self) -> Any:
        """Keep the N most diverse samples."""
        node = self.ctx.descriptors
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_DESCRIPTORS_FAILED.format(message=how_it_ended(node))
        result = select_configurations(
            self.ctx.sampled, node.outputs.descriptors, self.inputs.select.n, self.inputs.select.method
        )
        self.ctx.to_label = result['selected']
        self.out('selection', result['indices'])
        self.report(
            f'kept {result["selected"].count} of {self.ctx.sampled.count} samples by {self.inputs.select.method.value}'
        )
        return None

    def use_batch_labeller(self) -> bool:
        """Whether to label in chunks with ``mlmat.label`` (else aiida-ase, one job per configuration)."""
        return self.inputs.labeller.value == 'batch'

    def run_label_chunks(self) -> Any:
        """Label the samples in chunks, each in a restart wrapper, all in parallel."""
        inputs = self.exposed_inputs(LabelBaseWorkChain, 'label')
        if 'code' not in inputs.get('label', {}):
            return self.exit_codes.ERROR_NO_LABEL_CODE
        chunks = self.call_once('split', split_configurations, self.ctx.to_label, self.inputs.chunk_size)
        self.ctx.chunks = chunks
        futures = {}
        for key in sorted(chunks):
            chunk_inputs = AttributeDict(self.exposed_inputs(LabelBaseWorkChain, 'label'))
            chunk_inputs.label = AttributeDict(chunk_inputs.label)
            chunk_inputs.label.configurations = chunks[key]
            chunk_inputs.label.calculator = self.inputs.calculator
            chunk_inputs.metadata.call_link_label = f'label_{key}'
            futures[f'label_{key}'] = self.submit(LabelBaseWorkChain, **chunk_inputs)
        plural = 'chunk' if len(chunks) == 1 else 'chunks'
        self.report(f'labelling {self.ctx.to_label.count} configurations in {len(chunks)} {plural}')
        return ToContext(**futures)

    def run_ase_jobs(self) -> Any:
        """Label the samples with one aiida-ase ``ase.ase`` job per configuration."""
        structures = self.call_once('structures', set_to_structures, self.ctx.to_label)
        self.ctx.structures = structures
        parameters = orm.Dict(ase_parameters(self.inputs.calculator.get_dict(), ['energy', 'forces', 'stress']))
        options = self.inputs.ase_options.get_dict() if 'ase_options' in self.inputs else {}
        options.setdefault('resources', {'num_machines': 1, 'num_mpiprocs_per_machine': 1})
        partition = stored_partition(self.inputs.ase_code.computer)
        if partition and options.get('queue_name') is None:
            options['queue_name'] = partition  # as every mlmat job on that Computer (MlmatCalculation)
        AseCalculation = CalculationFactory('ase.ase')  # noqa: N806
        futures = {}
        for key in sorted(structures):
            futures[f'ase_{key}'] = self.submit(
                AseCalculation,
                code=self.inputs.ase_code,
                structure=structures[key],
                parameters=parameters,
                metadata={'options': options, 'call_link_label': f'ase_{key}'},
            )
        self.report(f'labelling {len(structures)} configurations with one aiida-ase job each')
        return ToContext(**futures)

    def collect(self) -> Any:
        """Merge the labels into one set; a failed job's configurations are excluded with its reason."""
        calculator = self.inputs.calculator
        failures: dict[str, str] = {}
        nodes: dict[str, orm.Data] = {}
        if self.use_batch_labeller():
            for key, chunk in sorted(self.ctx.chunks.items()):
                workchain = self.ctx[f'label_{key}']
                if workchain.is_finished_ok:
                    nodes[f'labelled_{key}'] = workchain.outputs.configurations
                else:
                    nodes[f'failed_{key}'] = chunk
                    failures[f'failed_{key}'] = failure_reason(workchain)
                    self.report(f'chunk {key} failed: {failures[f"failed_{key}"]}')
            n_labelled = sum(node.count for name, node in nodes.items() if name.startswith('labelled_'))
            function = collect_labels
        else:
            for key, structure in sorted(self.ctx.structures.items()):
                index = key.split('_', 1)[1]
                calc = self.ctx[f'ase_{key}']
                nodes[key] = structure
                if calc.is_finished_ok and 'parameters' in calc.outputs:
                    nodes[f'parameters_{index}'] = calc.outputs.parameters
                    if 'array' in calc.outputs:
                        nodes[f'array_{index}'] = calc.outputs.array
                else:
                    failures[key] = failure_reason(calc)
            n_labelled = sum(1 for name in nodes if name.startswith('parameters_'))
            function = ase_results_to_set
        if n_labelled == 0:
            first = next(iter(failures.values()), 'every configuration was excluded')
            if self.use_batch_labeller():
                excluded = [
                    record for name, node in nodes.items() if name.startswith('labelled_') for record in node.excluded
                ]
                first = excluded[0]['reason'] if excluded else first
            return self.exit_codes.ERROR_ALL_LABELS_FAILED.format(message=first)
        labelled = function(calculator, orm.Dict(failures), **nodes)
        self.out('configurations', labelled)
        self.report(
            f'labelled set {labelled.uuid}: {labelled.count} configurations, '
            f'{labelled.base.attributes.get("n_excluded")} excluded'
        )
        lost = sorted(set(self.ctx.to_label.species) - set(labelled.species))
        if lost:  # e.g. an element without a PAW setup: every configuration holding it failed
            self.logger.warning(
                f'no configuration holding {", ".join(lost)} could be labelled: the set has only '
                f'{", ".join(labelled.species)} (the exclusion reasons say why)'
            )
        return None
