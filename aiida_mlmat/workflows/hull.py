"""``mlmat.hull``: convex-hull stability screening with uncertainty, verified against the reference method."""

from __future__ import annotations

from typing import Any

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import ToContext, WorkChain, if_

from aiida_mlmat.calcjobs.base import options_error
from aiida_mlmat.calcjobs.label import calculator_error
from aiida_mlmat.calcjobs.relax import PARAMETER_KEYS, RelaxCalculation
from aiida_mlmat.data.configurations import ConfigurationSetData
from aiida_mlmat.data.potential import PotentialData
from aiida_mlmat.data.screening import ScreenedCandidateData
from aiida_mlmat.hull.metrics import describe_verification
from aiida_mlmat.workflows.functions import split_configurations
from aiida_mlmat.workflows.hull_functions import (
    compute_hull,
    generate_candidate_set,
    prepare_screening,
    record_candidates,
    screening_results,
    verification_set,
    verify_screening,
)
from aiida_mlmat.workflows.idempotent import IdempotentLaunchMixin
from aiida_mlmat.workflows.label import LabelBaseWorkChain, failure_reason, how_it_ended

#: Exit statuses of a relaxation job whose outputs are usable (510: some relaxations flagged unconverged).
USABLE_RELAX_STATUSES = (0, 510)


def validate_inputs(value: Any, _: Any = None) -> str | None:
    """Validate the whole namespace before anything runs."""
    if 'candidates' not in value and 'generate' not in value:
        return 'give `candidates` (a configuration set) or `generate` (settings to generate them)'
    if 'candidates' in value and 'generate' in value:
        return 'give either `candidates` or `generate`, not both: `generate` would be ignored'
    if ('potential' in value) == ('calculator' in value):
        return 'give exactly one energy model: `potential` (a trained potential) or `calculator` (a registry name)'
    elements = value['elements'].get_list() if 'elements' in value else []
    if not elements:
        return 'elements: name the chemical system (at least one element)'
    if 'potential' in value:
        missing = sorted(set(elements) - set(value['potential'].species))
        if missing:
            return f'potential: it was not trained on {missing} (its species: {value["potential"].species})'
        from aiida_mlmat.calcjobs.base import without_torch

        if 'code' in value and without_torch(value['code']):
            return (
                f'code: `{value["code"].full_label}` is the GPAW worker Code, whose Python has no torch to run the '
                'potential; give the mlmat-worker Code (and the GPAW one as verify.code)'
            )
    if 'calculator' in value:
        spec = value['calculator'].get_dict()
        if spec.get('name') == 'mlmat':
            return 'calculator: for a trained potential give the input `potential`, not the calculator `mlmat`'
        error = calculator_error(spec, elements, reference=False)
        if error:
            return error
    if 'generate' in value:
        error = generate_error(value['generate'].get_dict())
        if error:
            return error
        if len(set(elements)) < 2:
            return f'generate: decorations need at least two elements, got {elements}; give `candidates` instead'
    if 'relax' in value:
        unknown = set(value['relax'].get_dict()) - set(PARAMETER_KEYS)
        if unknown:
            return f'relax: unknown keys {sorted(unknown)}; known: {", ".join(PARAMETER_KEYS)}'
        try:  # the values, against the worker's schema (any calculator: only the settings are checked here)
            RelaxCalculation.worker_input({'calculator': orm.Dict({'name': 'emt'}), 'parameters': value['relax']})
        except ValueError as exc:
            return f'relax: {exc}'
    if 'options' in value:
        error = options_error(RelaxCalculation, value['options'].get_dict())
        if error:
            return f'options: {error}'
    tolerance = value.get('stability_tolerance')
    if tolerance is not None and not 0 <= tolerance.value < 1:
        return (
            f'stability_tolerance: {tolerance.value} eV/atom; give 0 or a small positive margin above the hull '
            '(below 1 eV/atom): a negative one calls candidates on the hull unstable'
        )
    if 'references' in value:
        references = value['references']
        if 'energy' not in references.label_keys:
            return 'references: the reference entries need energies (eV)'
        missing = sorted(set(elements) - _elemental(references))
        if missing:
            return f'references: no elemental reference for {missing}; give one per element or leave `references` out'
    top = value.get('verify', {}).get('top')
    if top is not None and top.value < 0:
        return f'verify.top: the number of candidates to verify cannot be negative, got {top.value}'
    if top is not None and top.value > 0 and 'calculator' not in value.get('verify', {}):
        return 'verify.calculator: the reference calculator is needed to verify the top candidates'
    if 'verify' in value and 'calculator' in value['verify']:
        error = calculator_error(value['verify']['calculator'].get_dict(), elements)
        if error:
            return f'verify.{error}'
    return None


def generate_error(settings: dict[str, Any]) -> str | None:
    """Why the ``generate`` settings are invalid, or None: the keys and ranges of a pipeline's
    ``screening.generate`` (``max_atoms`` 2-8: 8 already gives about 1300 Cu-Au candidates)."""
    from aiida_mlmat.workflows.pipeline_config import SCHEMA
    from aiida_mlmat.workflows.protocols import schema_error

    return schema_error('generate', settings, SCHEMA['properties']['screening']['properties']['generate'])


def _elemental(references: ConfigurationSetData) -> set[str]:
    return {frame.get_chemical_symbols()[0] for frame in references.iter_atoms() if len(set(frame.numbers)) == 1}


class HullWorkChain(IdempotentLaunchMixin, WorkChain):
    """Relax candidates with a potential (or a registry calculator), put them on one convex hull per ensemble
    member, and check the top picks against the reference calculator.

    Results: one ``mlmat.candidate`` node per candidate in the ``candidates`` namespace, with queryable attributes
    (``e_form_per_atom``, ``e_above_hull``, ``e_above_hull_std``, ``p_stable``, ``stable``; eV/atom), a CSV table,
    a hull plot (PNG), a summary and, with verification, the agreement metrics (MAE, precision, recall, F1, DAF).
    A candidate that fails (elements outside the system, an exploding relaxation, a failed job) is recorded with
    its reason and the screen goes on.
    """

    @classmethod
    def define(cls, spec: Any) -> None:
        """Define the ports and the outline."""
        super().define(spec)
        spec.input('elements', valid_type=orm.List, help='The chemical system, e.g. ["Cu", "Au"].')
        spec.input('candidates', valid_type=ConfigurationSetData, required=False, help='Candidate structures.')
        spec.input(
            'generate',
            valid_type=orm.Dict,
            required=False,
            help='Generate candidates instead: `{"lattices": ["fcc", "bcc", "hcp"], "max_atoms": 4}`.',
        )
        spec.input('potential', valid_type=PotentialData, required=False, help='Energy model: a trained potential.')
        spec.input('calculator', valid_type=orm.Dict, required=False, help='Energy model: a registry calculator spec.')
        spec.input(
            'references',
            valid_type=ConfigurationSetData,
            required=False,
            help='Reference entries with energies (eV) from the same energy model; default: the elements in fcc, '
            'bcc and hcp relaxed with the energy model.',
        )
        spec.input('code', valid_type=orm.AbstractCode, help='The mlmat-worker Code for the relaxations.')
        spec.input('relax', valid_type=orm.Dict, required=False, help='Relaxation settings (`mlmat.relax`).')
        spec.input('chunk_size', valid_type=orm.Int, default=lambda: orm.Int(100), help='Structures per job.')
        spec.input('options', valid_type=orm.Dict, required=False, help='`metadata.options` of the relaxation jobs.')
        spec.input(
            'stability_tolerance',
            valid_type=orm.Float,
            default=lambda: orm.Float(1e-6),
            help='A model puts a candidate on the hull when its e_above_hull is at most this (eV/atom).',
        )
        spec.input('verify.top', valid_type=orm.Int, default=lambda: orm.Int(0), help='Verify the top K candidates.')
        spec.input('verify.calculator', valid_type=orm.Dict, required=False, help='The reference calculator.')
        spec.input('verify.code', valid_type=orm.AbstractCode, required=False, help='Code (default: `code`).')
        spec.input(
            'verify.relax',
            valid_type=orm.Bool,
            default=lambda: orm.Bool(False),
            help='Relax with the reference calculator (default: a single point at the relaxed geometry).',
        )
        spec.inputs.validator = validate_inputs
        spec.outline(
            cls.setup,
            cls.run_relax,
            cls.inspect_relax,
            cls.run_hull,
            if_(cls.should_verify)(cls.run_verification, cls.inspect_verification),
            cls.results,
        )
        spec.output_namespace(
            'candidates', valid_type=ScreenedCandidateData, dynamic=True, help='One node per candidate.'
        )
        spec.output('hull', valid_type=orm.Dict, help='Per-candidate hull results and the references used.')
        spec.output('summary', valid_type=orm.Dict, help='Counts, references and verification metrics.')
        spec.output('table', valid_type=orm.SinglefileData, help='CSV table of every candidate.')
        spec.output('plot', valid_type=orm.SinglefileData, help='Hull plot (PNG).')
        spec.output(
            'uncertain_candidates',
            valid_type=ConfigurationSetData,
            required=False,
            help='Relaxed candidates the members disagree on, 0 < P(stable) < 1, stable by the majority or not (what '
            "hull-aware active learning labels; the summary's `n_uncertain` counts only 0 < P(stable) <= 0.5).",
        )
        spec.output('verification', valid_type=orm.Dict, required=False, help='Reference hull and agreement metrics.')
        spec.exit_code(301, 'ERROR_NO_CANDIDATES', message='No candidate lies in the chemical system: {message}')
        spec.exit_code(302, 'ERROR_ALL_RELAXATIONS_FAILED', message='Every relaxation job failed: {message}')
        spec.exit_code(303, 'ERROR_MISSING_REFERENCES', message='No relaxed elemental reference for {elements}.')
        spec.exit_code(
            320, 'ERROR_VERIFICATION_FAILED', message='The screen finished but its verification failed: {message}'
        )
        spec.exit_code(
            321, 'ERROR_NOTHING_SCREENED', message='No candidate could be screened (the table records why): {message}'
        )

    def setup(self) -> Any:
        """Gather the candidates and the structures to relax."""
        if 'candidates' in self.inputs:
            candidates = self.inputs.candidates
        else:
            candidates = generate_candidate_set(self.inputs.elements, self.inputs.generate)
        self.ctx.prepared = prepare_screening(
            candidates, self.inputs.elements, orm.Bool('references' not in self.inputs)
        )
        n_candidates = sum(1 for frame in self.ctx.prepared.iter_atoms() if frame.info.get('mlmat_role') == 'candidate')
        self.report(
            f'{n_candidates} candidates to relax, {self.ctx.prepared.base.attributes.get("n_excluded")} outside the '
            'chemical system'
        )
        if n_candidates == 0:
            records = self.ctx.prepared.excluded
            return self.exit_codes.ERROR_NO_CANDIDATES.format(
                message=records[0]['reason'] if records else 'the candidate set is empty'
            )
        return None

    def _energy_model(self) -> dict[str, Any]:
        if 'potential' in self.inputs:
            return {'calculator': orm.Dict({'name': 'mlmat'}), 'potential': self.inputs.potential}
        return {'calculator': self.inputs.calculator}

    def _relax_inputs(self, structures: ConfigurationSetData, label: str, **model: Any) -> AttributeDict:
        inputs = AttributeDict({'code': self.inputs.code, 'structures': structures, **model})
        if 'relax' in self.inputs:
            inputs.parameters = self.inputs.relax
        options = self.inputs.options.get_dict() if 'options' in self.inputs else {}
        inputs.metadata = {'options': options, 'call_link_label': label}
        return inputs

    def run_relax(self) -> Any:
        """Relax candidates and references in chunks, all jobs in parallel."""
        chunks = self.call_once('split_relax', split_configurations, self.ctx.prepared, self.inputs.chunk_size)
        self.ctx.chunks = chunks
        futures = {}
        for key in sorted(chunks):
            inputs = self._relax_inputs(chunks[key], f'relax_{key}', **self._energy_model())
            futures[f'relax_{key}'] = self.submit(RelaxCalculation, **inputs)
        self.report(f'relaxing {self.ctx.prepared.count} structures in {len(chunks)} jobs')
        return ToContext(**futures)

    def inspect_relax(self) -> Any:
        """Keep what every job relaxed; a failed job's structures are recorded as failed with its reason."""
        self.ctx.relaxed = {}
        self.ctx.failed = {}
        self.ctx.failures = {}
        for key, chunk in sorted(self.ctx.chunks.items()):
            node = self.ctx[f'relax_{key}']
            if node.exit_status in USABLE_RELAX_STATUSES and 'relaxed' in node.outputs:
                self.ctx.relaxed[f'relaxed_{key}'] = node.outputs.relaxed
                if node.exit_status:
                    self.report(f'{node.process_label}<{node.pk}>: {node.exit_message}')
            else:
                self.ctx.failed[f'failed_{key}'] = chunk
                self.ctx.failures[f'failed_{key}'] = failure_reason(node)
                self.report(self.ctx.failures[f'failed_{key}'])
        if not self.ctx.relaxed:
            return self.exit_codes.ERROR_ALL_RELAXATIONS_FAILED.format(message=next(iter(self.ctx.failures.values())))
        if 'references' not in self.inputs:
            have = set()
            for node in self.ctx.relaxed.values():
                for frame in node.get_atoms():
                    if frame.info.get('mlmat_role') == 'reference':
                        have.add(frame.get_chemical_symbols()[0])
            missing = sorted(set(self.inputs.elements.get_list()) - have)
            if missing:
                return self.exit_codes.ERROR_MISSING_REFERENCES.format(elements=missing)
        return None

    def run_hull(self) -> None:
        """One hull per ensemble member (provenance: a calcfunction)."""
        settings = orm.Dict(
            {'stability_tolerance': self.inputs.stability_tolerance.value, 'elements': self.inputs.elements.get_list()}
        )
        nodes = {**self.ctx.relaxed, **self.ctx.failed}
        if 'references' in self.inputs:
            nodes['references'] = self.inputs.references
        outputs = compute_hull(self.ctx.prepared, settings, orm.Dict(self.ctx.failures), **nodes)
        self.ctx.hull = outputs['hull']
        self.out('hull', outputs['hull'])
        if 'uncertain_candidates' in outputs:
            self.out('uncertain_candidates', outputs['uncertain_candidates'])

    def should_verify(self) -> bool:
        """Whether the top candidates are to be checked with the reference calculator."""
        return self.inputs.verify.top.value > 0

    def run_verification(self) -> Any:
        """Single points (or relaxations) of the top K and the references with the reference calculator."""
        to_check = self.call_once(
            'verification_set', verification_set, self.ctx.hull, self.inputs.verify.top, **self.ctx.relaxed
        )
        self.ctx.to_check = to_check
        code = self.inputs.verify.get('code', self.inputs.code)
        calculator = self.inputs.verify.calculator
        options = self.inputs.options.get_dict() if 'options' in self.inputs else {}
        self.report(f'verifying {to_check.count} structures with `{calculator["name"]}`')
        if self.inputs.verify.relax.value:
            inputs = self._relax_inputs(to_check, 'verify_relax', calculator=calculator)
            inputs.code = code
            return ToContext(verify=self.submit(RelaxCalculation, **inputs))
        inputs = {
            'label': {
                'code': code,
                'configurations': to_check,
                'calculator': calculator,
                'metadata': {'options': options},
            },
            'metadata': {'call_link_label': 'verify_label'},
        }
        return ToContext(verify=self.submit(LabelBaseWorkChain, **inputs))

    def inspect_verification(self) -> None:
        """Place the verified candidates on the reference hull (a failure is recorded, the screen is kept)."""
        node = self.ctx.verify
        output = 'relaxed' if self.inputs.verify.relax.value else 'configurations'
        if node.exit_status in USABLE_RELAX_STATUSES and output in node.outputs:
            self.ctx.verification = verify_screening(self.ctx.hull, node.outputs[output])
            self.out('verification', self.ctx.verification)
            metrics = self.ctx.verification['metrics']
            self.report(describe_verification(metrics, daf=True))
        else:
            self.ctx.verification_error = f'{node.process_label}<{node.pk}>: {how_it_ended(node)}'
            self.report(f'verification failed: {self.ctx.verification_error}')

    def results(self) -> Any:
        """One node per candidate, the table, the plot and the summary."""
        extra = {'verification': self.ctx.verification} if 'verification' in self.ctx else {}
        outputs = screening_results(self.ctx.hull, **extra)
        names = sorted(self.ctx.hull.get_dict()['candidates'])
        verified = sorted(extra['verification'].get_dict()['candidates']) if extra else []
        unverified = sorted(set(names) - set(verified))
        candidates = {}
        for group, inputs in ((unverified, {}), (verified, extra)):  # the verification only behind the verified
            if group:
                made = record_candidates(self.ctx.hull, orm.List(group), **inputs)
                candidates.update({key[len('candidate_') :]: node for key, node in made.items()})
        self.out('candidates', candidates)
        for key in ('table', 'plot', 'summary'):
            self.out(key, outputs[key])
        summary = outputs['summary']
        self.report(
            f'{summary["n_screened"]} candidates screened, {summary["n_stable"]} stable, {summary["n_uncertain"]} '
            f'uncertain (on the hull for some members, not most), {summary["n_failed"]} failed'
        )
        if summary['n_screened'] == 0:  # every output is attached: the table and candidates say why each failed
            failed = [entry for entry in self.ctx.hull.get_dict()['candidates'].values() if entry.get('status') != 'ok']
            first = failed[0].get('reason', 'no reason recorded') if failed else 'no candidate'
            return self.exit_codes.ERROR_NOTHING_SCREENED.format(
                message=f'{summary["n_failed"]} failed; first: {first}'
            )
        if 'verification_error' in self.ctx:
            return self.exit_codes.ERROR_VERIFICATION_FAILED.format(message=self.ctx.verification_error)
        return None
