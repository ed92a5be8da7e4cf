"""CalcJob ``mlmat.label``: batched single points (energy, forces, stress) with a registry calculator."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from aiida import orm
from aiida.common.folders import Folder

from aiida_mlmat.calcjobs.base import MlmatCalculation
from aiida_mlmat.common.constants import (
    CALCULATOR_LOGS,
    EXCLUDED_FILE,
    LABELLED_FILE,
    PREVIOUS_EXCLUDED_FILE,
    PREVIOUS_FILE,
    STRUCTURES_FILE,
)
from aiida_mlmat.data.configurations import ConfigurationSetData
from aiida_mlmat.worker.calculators import UnknownCalculatorError, check_name, parameters_error, unsupported_elements


def calculator_spec_error(spec: Any) -> str | None:
    """Return why a calculator spec ``{'name': ..., 'parameters': {...}}`` is invalid, or None."""
    if not isinstance(spec, dict):
        return 'calculator: expected a dictionary `{"name": ..., "parameters": {...}}`'
    unknown = set(spec) - {'name', 'parameters'}
    if unknown:
        return f'calculator: unknown keys {sorted(unknown)}; expected `name` and optional `parameters`'
    if 'name' not in spec:
        return 'calculator: `name` is required'
    try:
        check_name(spec['name'])
    except UnknownCalculatorError as exc:
        return f'calculator: {exc}'
    if not isinstance(spec.get('parameters', {}), dict):
        return 'calculator.parameters: must be a dictionary of keyword arguments'
    error = parameters_error(spec['name'], spec.get('parameters', {}))
    return f'calculator.parameters: {error}' if error else None


def calculator_error(spec: Any, species: Iterable[str] = (), reference: bool = True) -> str | None:
    """Return why ``spec`` cannot compute energies for the elements ``species``, or None.

    On top of :func:`calculator_spec_error`: a calculator with a known set of elements (EMT) must treat all of
    ``species``, and with ``reference`` (labelling, verification) a trained potential (``mlmat``) is refused: it is a
    model, not a reference method. Messages start with ``calculator:`` or, for a bad keyword argument,
    ``calculator.parameters:``; :func:`aiida_mlmat.cli.utils.calculator_option_error` names the CLI options instead.
    """
    if isinstance(species, str):
        raise TypeError(f'species: expected element symbols, got the string {species!r}')
    error = calculator_spec_error(spec)
    if error:
        return error
    if reference and spec['name'] == 'mlmat':
        return 'calculator: `mlmat` is a trained potential, not a reference method; use emt, gpaw, ...'
    missing = unsupported_elements(spec['name'], list(species))
    if missing:
        return f'calculator: `{spec["name"]}` cannot treat the elements {missing}'
    return None


#: Extra of a Code: ``{calculator name: {'version': ..., 'parameters': [keyword arguments it takes]}}``, as
#: ``mlmat setup`` read them from the Code's Python (GPAW's keywords depend on its version).
CALCULATORS_EXTRA = 'mlmat_calculators'


def code_parameters_error(code: Any, spec: Any) -> str | None:
    """Why the calculator keyword arguments of ``spec`` are unknown to the calculator on ``code``, or None.

    Checked only where the Code records the keywords (:data:`CALCULATORS_EXTRA`); the message suggests the closest
    known keyword (``kpt``: did you mean ``kpts``?).
    """
    import difflib

    if code is None or not isinstance(spec, dict) or not isinstance(spec.get('parameters') or {}, dict):
        return None
    record = (code.base.extras.get(CALCULATORS_EXTRA, None) or {}).get(spec.get('name'))
    if not isinstance(record, dict) or not record.get('parameters'):
        return None
    known = list(record['parameters'])
    unknown = sorted(set(spec.get('parameters') or {}) - set(known))
    if not unknown:
        return None
    close = difflib.get_close_matches(unknown[0], known, n=1)
    hint = f' (did you mean `{close[0]}`?)' if close else ''
    return (
        f'calculator.parameters: {spec["name"]} {record.get("version", "")} on the Code `{code.full_label}` takes no '
        f'parameter(s) {unknown}{hint}; it takes {", ".join(known)}'
    )


def validate_calculator(value: orm.Dict | None, _: Any = None) -> str | None:
    """Port validator for a calculator spec."""
    return None if value is None else calculator_spec_error(value.get_dict())


class LabelCalculation(MlmatCalculation):
    """Label a configuration set with an ASE calculator picked by name, in one job.

    A configuration that fails is excluded with its reason; the batch fails only when all do. When the job
    stops early (soft time limit, walltime, node failure) the configurations finished so far come out as
    ``partial_configurations``; pass them back as ``restart_from`` and only the missing ones are computed.
    """

    TASK = 'label'
    SOFT_LIMIT = True
    _RETRIEVE_TEMPORARY = [LABELLED_FILE, EXCLUDED_FILE]
    #: ``calculator-logs/<index>.txt``: the text log of each configuration the calculator failed on (GPAW).
    _RETRIEVE = [*MlmatCalculation._RETRIEVE, (f'{CALCULATOR_LOGS}/*', '.', 2)]

    @classmethod
    def define(cls, spec: Any) -> None:
        """Define the ports."""
        super().define(spec)
        spec.inputs['metadata']['options']['parser_name'].default = 'mlmat.label'
        spec.input(
            'configurations',
            valid_type=ConfigurationSetData,
            help='Configurations to label (positions, cell, pbc; existing labels are ignored).',
        )
        spec.input(
            'calculator',
            valid_type=orm.Dict,
            validator=validate_calculator,
            help='Registry calculator: `{"name": "emt", "parameters": {...}}` (see `mlmat-worker` registry).',
        )
        spec.input(
            'properties',
            valid_type=orm.List,
            default=lambda: orm.List(['energy', 'forces', 'stress']),
            help='Labels to compute: `energy` (eV), `forces` (eV/Å), `stress` (eV/Å^3, periodic cells only).',
        )
        spec.input(
            'restart_from',
            valid_type=ConfigurationSetData,
            required=False,
            help='Configurations already labelled by an interrupted run; they are copied, not recomputed.',
        )
        spec.inputs.validator = cls.validate_inputs
        spec.output('configurations', valid_type=ConfigurationSetData, required=False, help='The labelled set.')
        spec.output(
            'partial_configurations',
            valid_type=ConfigurationSetData,
            required=False,
            help='What an interrupted run finished (input for `restart_from`).',
        )

    @classmethod
    def validate_inputs(cls, value: Any, _: Any = None) -> str | None:
        """Validate the whole namespace before submission (the worker schema included)."""
        configurations = value.get('configurations')
        limit = value.get('soft_time_limit')
        if limit is not None and limit.value < 0:
            return f'soft_time_limit: must be zero or positive, got {limit.value} s'
        if configurations is not None and configurations.count == 0:
            return 'configurations: the set is empty; there is nothing to label'
        if 'calculator' in value:
            error = cls.potential_error(value, value['calculator'].get('name'))
            error = error or code_parameters_error(value.get('code'), value['calculator'].get_dict())
            if error:
                return error
        if 'calculator' in value and 'configurations' in value:
            try:
                cls.worker_input(value)
            except ValueError as exc:
                return str(exc)
        return None

    @classmethod
    def build_worker_input(cls, inputs: Any) -> dict[str, Any]:
        """Return the ``label`` task input."""
        spec = inputs['calculator'].get_dict()
        properties = inputs['properties'].get_list() if 'properties' in inputs else ['energy', 'forces', 'stress']
        data: dict[str, Any] = {
            'calculator': {'name': spec['name'], 'parameters': spec.get('parameters', {})},
            'structures': STRUCTURES_FILE,
            'properties': properties,
        }
        restart_from = inputs.get('restart_from')
        if restart_from is not None:
            if restart_from.count:
                data['previous'] = PREVIOUS_FILE
            if restart_from.excluded:
                data['previous_excluded'] = PREVIOUS_EXCLUDED_FILE
        return data

    def write_data_files(self, folder: Folder) -> None:
        """Copy the configurations (and the partial labels to reuse) into the sandbox."""
        with folder.open(STRUCTURES_FILE, 'wb') as handle:
            handle.write(self.inputs.configurations.get_content())
        restart_from = self.inputs.get('restart_from')
        if restart_from is not None and restart_from.count:
            with folder.open(PREVIOUS_FILE, 'wb') as handle:
                handle.write(restart_from.get_content())
        if restart_from is not None and restart_from.excluded:
            with folder.open(PREVIOUS_EXCLUDED_FILE, 'w', encoding='utf-8') as handle:
                json.dump(earlier_exclusions(restart_from), handle)


def earlier_exclusions(restart_from: Any) -> list[dict[str, Any]]:
    """The exclusion records of the interrupted job that made ``restart_from``, to be kept as they are.

    A reason that points at a calculator log retrieved with that job (``(its log: calculator-logs/5.txt,
    retrieved)``) is made to name the job, since the log is not retrieved again by the one that restarts.
    """
    creator = restart_from.creator
    where = f'retrieved with {creator.process_label or "the job"}<{creator.pk}>' if creator is not None else None
    records = []
    for record in restart_from.excluded:
        reason = str(record.get('reason', ''))
        if where is not None and reason.endswith(', retrieved)'):
            record = {**record, 'reason': reason[: -len('retrieved)')] + where + ')'}
        records.append(record)
    return records
