"""CalcJob ``mlmat.relax``: batched relaxations (positions and cell) with a potential or a registry calculator."""

from __future__ import annotations

from typing import Any

from aiida import orm
from aiida.common.folders import Folder

from aiida_mlmat.calcjobs.base import MlmatCalculation
from aiida_mlmat.calcjobs.label import calculator_spec_error, validate_calculator
from aiida_mlmat.common.constants import EXCLUDED_FILE, PREVIOUS_FILE, RELAXED_FILE, STRUCTURES_FILE
from aiida_mlmat.data.configurations import ConfigurationSetData

#: Keys of the ``parameters`` input (see :mod:`aiida_mlmat.worker.tasks.relax`).
PARAMETER_KEYS = ('fmax', 'max_steps', 'relax_cell', 'optimizer', 'min_distance', 'max_energy_drop', 'max_volume_ratio')


class RelaxCalculation(MlmatCalculation):
    """Relax many structures in one job: FIRE under a cell filter until ``fmax`` (eV/Å) or ``max_steps``.

    With the calculator ``mlmat`` and a ``potential`` input the energy model is a trained ensemble, and each relaxed
    structure records every member's energy (eV) for one hull per member. A structure whose relaxation explodes
    (collapse, divergence, explosion) is excluded with its reason and the rest go on; relaxations that did not
    converge are kept, flagged ``mlmat_converged = False``, and the job ends with the warning exit code 510.
    """

    TASK = 'relax'
    SOFT_LIMIT = True
    _RETRIEVE_TEMPORARY = [RELAXED_FILE, EXCLUDED_FILE]

    @classmethod
    def define(cls, spec: Any) -> None:
        """Define the ports."""
        super().define(spec)
        spec.inputs['metadata']['options']['parser_name'].default = 'mlmat.relax'
        spec.input('structures', valid_type=ConfigurationSetData, help='Structures to relax (names in `mlmat_name`).')
        spec.input(
            'calculator',
            valid_type=orm.Dict,
            validator=validate_calculator,
            help='Energy model: `{"name": "mlmat"}` with a `potential`, or a registry calculator with parameters.',
        )
        spec.input(
            'parameters',
            valid_type=orm.Dict,
            required=False,
            help=f'Relaxation settings: {", ".join(PARAMETER_KEYS)} (fmax in eV/Å, energies in eV/atom).',
        )
        spec.input(
            'restart_from',
            valid_type=ConfigurationSetData,
            required=False,
            help='Relaxed structures of an interrupted job: copied, not recomputed.',
        )
        spec.inputs.validator = cls.validate_inputs
        spec.output(
            'relaxed',
            valid_type=ConfigurationSetData,
            help='Relaxed structures with energy (eV), forces, '
            'stress and convergence flags; failed ones in its `excluded` attribute with their reasons.',
        )
        spec.output(
            'partial_relaxed',
            valid_type=ConfigurationSetData,
            required=False,
            help='What an interrupted job finished (pass it back as `restart_from`).',
        )
        spec.exit_code(
            510,
            'WARNING_UNCONVERGED',
            message='{count} relaxations did not reach fmax within max_steps; they are flagged, not dropped.',
        )

    @classmethod
    def validate_inputs(cls, value: Any, _: Any = None) -> str | None:
        """Validate the whole namespace before submission (the worker schema included)."""
        structures = value.get('structures')
        if structures is not None and structures.count == 0:
            return 'structures: the set is empty; there is nothing to relax'
        if 'parameters' in value:
            unknown = set(value['parameters'].get_dict()) - set(PARAMETER_KEYS)
            if unknown:
                return f'parameters: unknown keys {sorted(unknown)}; known: {", ".join(PARAMETER_KEYS)}'
        if 'calculator' in value:
            error = calculator_spec_error(value['calculator'].get_dict()) or cls.potential_error(
                value, value['calculator'].get('name')
            )
            if error:
                return error
        if 'calculator' in value and 'structures' in value:
            try:
                cls.worker_input(value)
            except ValueError as exc:
                return str(exc)
        return None

    @classmethod
    def build_worker_input(cls, inputs: Any) -> dict[str, Any]:
        """Return the ``relax`` task input."""
        spec = inputs['calculator'].get_dict()
        data: dict[str, Any] = {
            'calculator': {'name': spec['name'], 'parameters': spec.get('parameters', {})},
            'structures': STRUCTURES_FILE,
            **(inputs['parameters'].get_dict() if 'parameters' in inputs else {}),
        }
        restart_from = inputs.get('restart_from')
        if restart_from is not None and restart_from.count:
            data['previous'] = PREVIOUS_FILE
        return data

    def write_data_files(self, folder: Folder) -> None:
        """Copy the structures (and the finished relaxations to reuse) into the sandbox."""
        with folder.open(STRUCTURES_FILE, 'wb') as handle:
            handle.write(self.inputs.structures.get_content())
        restart_from = self.inputs.get('restart_from')
        if restart_from is not None and restart_from.count:
            with folder.open(PREVIOUS_FILE, 'wb') as handle:
                handle.write(restart_from.get_content())
