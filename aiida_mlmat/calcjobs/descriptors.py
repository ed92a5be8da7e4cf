"""CalcJob ``mlmat.descriptors``: per-atom descriptors of a configuration set (torch, CPU or CUDA)."""

from __future__ import annotations

from typing import Any

from aiida import orm
from aiida.common.folders import Folder

from aiida_mlmat.calcjobs.base import MlmatCalculation, torch_code_error
from aiida_mlmat.common.constants import DESCRIPTORS_FILE, STRUCTURES_FILE
from aiida_mlmat.data.configurations import ConfigurationSetData
from aiida_mlmat.data.descriptors import DescriptorsData

DEFAULT_DESCRIPTOR = {'kind': 'chebyshev', 'rcut': 5.0, 'n_radial': 10, 'n_angular': 6}


def descriptor_definition(spec: dict[str, Any], species: list[str]) -> dict[str, Any]:
    """Complete a user's descriptor dict (species default to the data set's) and normalise it.

    :raises ValueError: with a clear message for an invalid definition.
    """
    from aiida_mlmat.ml.descriptors import DescriptorSpec

    data = {**DEFAULT_DESCRIPTOR, **spec}
    data.setdefault('species', species)
    if not data.get('species'):
        data['species'] = species
    try:
        return DescriptorSpec.from_dict(data).as_dict()
    except TypeError as exc:
        raise ValueError(f'descriptor: {exc}') from exc


class DescriptorsCalculation(MlmatCalculation):
    """Compute descriptors of every configuration of a set with the worker's ``descriptors`` task."""

    TASK = 'descriptors'
    _RETRIEVE_TEMPORARY = [DESCRIPTORS_FILE]

    @classmethod
    def define(cls, spec: Any) -> None:
        """Define the ports."""
        super().define(spec)
        spec.inputs['metadata']['options']['parser_name'].default = 'mlmat.descriptors'
        spec.input('configurations', valid_type=ConfigurationSetData, help='Configurations to describe.')
        spec.input(
            'descriptor',
            valid_type=orm.Dict,
            default=lambda: orm.Dict(DEFAULT_DESCRIPTOR),
            help="Definition: kind (chebyshev|acsf), species (default: the set's), rcut Å, rcut_angular Å, "
            'n_radial, n_angular, g2 [[eta, Rs]], g4 [[eta, zeta, lambda]].',
        )
        spec.input(
            'settings',
            valid_type=orm.Dict,
            default=lambda: orm.Dict({'dtype': 'float64', 'device': 'auto'}),
            help='`dtype` (float32|float64) and `device` (auto|cpu|cuda).',
        )
        spec.inputs.validator = cls.validate_inputs
        spec.output('descriptors', valid_type=DescriptorsData, help='Per-atom and per-structure descriptors.')

    @classmethod
    def validate_inputs(cls, value: Any, _: Any = None) -> str | None:
        """Validate before submission: a Code with torch, the definition, species coverage, the worker schema."""
        error = torch_code_error(value.get('code'), 'code', 'the descriptors')
        if error:
            return error
        configurations = value.get('configurations')
        if configurations is None:
            return None
        if configurations.count == 0:
            return 'configurations: the set is empty'
        try:
            cls.worker_input(value)
        except ValueError as exc:
            return str(exc)
        definition = cls.build_worker_input(value)['descriptor']
        extra = sorted(set(configurations.species) - set(definition['species']))
        if extra:
            return f'descriptor: the set holds {extra}, which the descriptor species {definition["species"]} lack'
        return None

    @classmethod
    def build_worker_input(cls, inputs: Any) -> dict[str, Any]:
        """Return the ``descriptors`` task input."""
        species = inputs['configurations'].species
        spec = inputs['descriptor'].get_dict() if 'descriptor' in inputs else {}
        settings = inputs['settings'].get_dict() if 'settings' in inputs else {}
        return {
            'structures': STRUCTURES_FILE,
            'descriptor': descriptor_definition(spec, species),
            'dtype': settings.get('dtype', 'float64'),
            'device': settings.get('device', 'auto'),
        }

    def write_data_files(self, folder: Folder) -> None:
        """Copy the configurations into the sandbox."""
        with folder.open(STRUCTURES_FILE, 'wb') as handle:
            handle.write(self.inputs.configurations.get_content())
