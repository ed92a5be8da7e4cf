"""CalcJob ``mlmat.sample``: configurations from seeds (supercells, rattles, strains, vacancies, MD)."""

from __future__ import annotations

from typing import Any

from aiida import orm
from aiida.common.folders import Folder

from aiida_mlmat.calcjobs.base import MlmatCalculation
from aiida_mlmat.calcjobs.label import calculator_spec_error
from aiida_mlmat.common.constants import SAMPLED_FILE, STRUCTURES_FILE
from aiida_mlmat.data.configurations import ConfigurationSetData


class SampleCalculation(MlmatCalculation):
    """Sample configurations from seed structures with the worker's ``sample`` task.

    ``parameters`` takes the keys of the worker schema: ``supercell`` ([n1, n2, n3]), ``include_seeds``,
    ``rattle`` ({count, stdev Å, seed}), ``strain`` ({count, max_strain, rattle_stdev Å, seed}),
    ``vacancies`` ({count, seed}), ``md`` ({calculator, temperatures K, steps, timestep fs, interval,
    friction 1/fs, seed}).
    """

    TASK = 'sample'
    _RETRIEVE_TEMPORARY = [SAMPLED_FILE]

    @classmethod
    def define(cls, spec: Any) -> None:
        """Define the ports."""
        super().define(spec)
        spec.inputs['metadata']['options']['parser_name'].default = 'mlmat.sample'
        spec.input('structures', valid_type=ConfigurationSetData, help='Seed structures.')
        spec.input(
            'parameters',
            valid_type=orm.Dict,
            default=lambda: orm.Dict({'rattle': {'count': 5, 'stdev': 0.05}}),
            help='Sampling operations (see the class docstring); validated against the worker schema.',
        )
        spec.inputs.validator = cls.validate_inputs
        spec.output('configurations', valid_type=ConfigurationSetData, help='The sampled (unlabelled) configurations.')

    @classmethod
    def validate_inputs(cls, value: Any, _: Any = None) -> str | None:
        """Validate the whole namespace before submission."""
        structures = value.get('structures')
        if structures is not None and structures.count == 0:
            return 'structures: the seed set is empty'
        md = value['parameters'].get_dict().get('md') if 'parameters' in value else None
        if md and 'calculator' in md:
            error = calculator_spec_error(md['calculator'])
            if error:
                return f'parameters.md.{error}'
            error = cls.potential_error(value, md['calculator'].get('name'))
            if error:
                return error
        try:  # the parameters alone: a workflow that exposes this namespace gives the structures later
            cls.worker_input(value)
        except ValueError as exc:
            return str(exc)
        return None

    @classmethod
    def build_worker_input(cls, inputs: Any) -> dict[str, Any]:
        """Return the ``sample`` task input."""
        params = inputs['parameters'].get_dict() if 'parameters' in inputs else {}
        return {**params, 'structures': STRUCTURES_FILE}

    def write_data_files(self, folder: Folder) -> None:
        """Copy the seeds into the sandbox."""
        with folder.open(STRUCTURES_FILE, 'wb') as handle:
            handle.write(self.inputs.structures.get_content())
