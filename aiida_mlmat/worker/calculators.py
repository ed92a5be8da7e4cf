"""Registry of ASE calculators by name, with keyword arguments given as JSON.

A name that is not registered is an error before anything is imported: the worker never imports a module
named by the user. Plugins add calculators through the ``mlmat.calculators`` entry-point group, whose values
are factories ``(parameters: dict) -> ase.calculators.calculator.Calculator``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib import metadata
from typing import Any

ENTRY_POINT_GROUP = 'mlmat.calculators'

#: Built-in calculators: name -> (module, class, default keyword arguments, description).
BUILTIN: dict[str, tuple[str, str, dict[str, Any], str]] = {
    'emt': ('ase.calculators.emt', 'EMT', {}, 'effective medium theory (ASE), Al Cu Ag Au Ni Pd Pt, and H C N O'),
    'lj': ('ase.calculators.lj', 'LennardJones', {}, 'Lennard-Jones pair potential (ASE)'),
    'gpaw': ('gpaw', 'GPAW', {'txt': None}, 'GPAW DFT; `mode` may be a dict such as {"name": "pw", "ecut": 300}'),
    'espresso': ('ase.calculators.espresso', 'Espresso', {}, 'Quantum ESPRESSO through ASE'),
    'vasp': ('ase.calculators.vasp', 'Vasp', {}, 'VASP through ASE (licence and binary needed)'),
    'cp2k': ('ase.calculators.cp2k', 'CP2K', {}, 'CP2K through ASE'),
    'mlmat': (
        'aiida_mlmat.ml.calculator',
        'MLMatCalculator',
        {'directory': 'potential', 'device': 'cpu'},
        'a trained aiida-mlmat potential (ensemble mean and spread); the CalcJob input `potential` is written to '
        '`directory`; device cpu, cuda or auto',
    ),
    'faulty': (
        'aiida_mlmat.worker.testing',
        'FaultyCalculator',
        {},
        'EMT that raises / returns NaN or inf on chosen formulas (fault-handling tests)',
    ),
}


#: Elements a calculator can treat at all, where that set is small and known (others: any element).
SUPPORTED_ELEMENTS: dict[str, frozenset[str]] = {
    'emt': frozenset({'Al', 'Cu', 'Ag', 'Au', 'Ni', 'Pd', 'Pt', 'H', 'C', 'N', 'O'}),
    'faulty': frozenset({'Al', 'Cu', 'Ag', 'Au', 'Ni', 'Pd', 'Pt', 'H', 'C', 'N', 'O'}),
}


def unsupported_elements(name: str, species: list[str] | set[str]) -> list[str]:
    """Return the elements of ``species`` that the calculator ``name`` cannot treat (sorted)."""
    supported = SUPPORTED_ELEMENTS.get(name)
    return [] if supported is None else sorted(set(species) - supported)


class UnknownCalculatorError(KeyError):
    """The calculator name is not registered."""

    def __str__(self) -> str:
        return str(self.args[0])


class CalculatorUnavailableError(ImportError):
    """The calculator is registered but its code cannot be imported where the worker runs."""


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


#: Built-in calculators for the project's own fault-handling tests: they run when named, but are not listed.
TESTING = frozenset({'faulty'})


def available_names(testing: bool = False) -> list[str]:
    """Return the registered calculator names (built-in and from entry points), sorted.

    :param testing: also list the calculators of :data:`TESTING`, which exist for fault-handling tests.
    """
    names = set(BUILTIN) | set(_entry_points())
    return sorted(names if testing else names - TESTING)


def check_name(name: str) -> None:
    """Raise :class:`UnknownCalculatorError` with the list of known names when ``name`` is not registered."""
    if name not in BUILTIN and name not in _entry_points():
        raise UnknownCalculatorError(f'unknown calculator `{name}`; registered: {", ".join(available_names())}')


def _gpaw_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """Translate JSON-only GPAW parameters: a mode dict becomes a GPAW mode object."""
    params = dict(parameters)
    mode = params.get('mode')
    if isinstance(mode, dict):
        from gpaw.wavefunctions.mode import create_wave_function_mode

        mode = dict(mode)
        params['mode'] = create_wave_function_mode(mode.pop('name'), **mode)
    return params


def _mlmat_calculator(cls: Any, kwargs: dict[str, Any]) -> Any:
    """Load an exported potential directory (every member checked against its card's sha256)."""
    kwargs = dict(kwargs)
    directory = kwargs.pop('directory')
    device = kwargs.pop('device', 'cpu')
    if device == 'auto':
        import torch

        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if kwargs:
        raise ValueError(f'calculator `mlmat` takes only `directory` and `device`, not {sorted(kwargs)}')
    return cls.from_directory(directory, device=device)


#: Built-in calculators whose keyword arguments are a small, closed set: their ASE class's ``default_parameters``.
CLOSED_PARAMETERS = ('emt', 'lj')


def parameters_error(name: str, parameters: Any) -> str | None:
    """Why ``parameters`` cannot be given to the calculator ``name``, or None.

    Checked only where the set of keyword arguments is closed (:data:`CLOSED_PARAMETERS`): an unknown key would be
    recorded in the provenance but ignored (EMT) or fail every job (LJ), and a string where ASE expects a flag or a
    number would silently change the energies. The message names the parameter, not the calculator.
    """
    if name == 'gpaw' and isinstance(parameters, dict):
        return _gpaw_error(parameters)
    if name not in CLOSED_PARAMETERS or not isinstance(parameters, dict):
        return None
    module_name, class_name = BUILTIN[name][:2]
    defaults = getattr(importlib.import_module(module_name), class_name).default_parameters
    unknown = sorted(set(parameters) - set(defaults))
    if unknown:
        return f'`{name}` takes no parameter(s) {unknown}; it takes {", ".join(sorted(defaults))}'
    for key, value in parameters.items():
        default = defaults[key]
        if isinstance(default, bool):
            if not isinstance(value, bool):
                return f'`{key}` must be true or false, got {_shown(value)}'
        elif (default is None or isinstance(default, int | float)) and (
            value is not None and (isinstance(value, bool) or not isinstance(value, int | float))
        ):
            return f'`{key}` must be a number, got {_shown(value)}'
    return _bounds_error(name, parameters)


#: GPAW's wave-function modes; stress comes only from ``pw``.
GPAW_MODES = ('pw', 'fd', 'lcao', 'tb')


def _positive_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _gpaw_error(parameters: dict[str, Any]) -> str | None:
    """Why GPAW keyword arguments would fail every configuration (checked without importing GPAW), or None.

    The mode (a name or ``{"name": "pw", "ecut": 300}``), a positive cut-off (eV) and grid spacing (Å), and a
    Monkhorst-Pack k-point grid of three positive integers. Which keys GPAW knows at all is checked against the
    Code (:func:`aiida_mlmat.calcjobs.label.code_parameters_error`): it depends on the GPAW version there.
    """
    mode = parameters.get('mode')
    example = '{"name": "pw", "ecut": 300}'
    if isinstance(mode, str) and mode not in GPAW_MODES:
        return f'`mode` must be one of {", ".join(GPAW_MODES)} (or a dict such as {example}), got {_shown(mode)}'
    if isinstance(mode, dict):
        if mode.get('name') not in GPAW_MODES:
            return f'`mode` needs a `name`, one of {", ".join(GPAW_MODES)} (e.g. {example}), got {_shown(mode)}'
        if 'ecut' in mode and not _positive_number(mode['ecut']):
            return f'`mode.ecut` (eV, the plane-wave cut-off) must be a positive number, got {_shown(mode["ecut"])}'
    elif mode is not None and not isinstance(mode, str):
        return f'`mode` must be a name ({", ".join(GPAW_MODES)}) or a dict such as {example}, got {_shown(mode)}'
    if parameters.get('h') is not None and not _positive_number(parameters['h']):
        return f'`h` (Å, the grid spacing) must be a positive number, got {_shown(parameters["h"])}'
    kpts = parameters.get('kpts')
    grid = isinstance(kpts, list) and kpts and not any(isinstance(k, list) for k in kpts)  # not explicit k-points
    if grid and (len(kpts) != 3 or not all(isinstance(k, int) and not isinstance(k, bool) and k > 0 for k in kpts)):
        return f'`kpts` as a grid must be three positive integers such as [3, 3, 3], got {_shown(kpts)}'
    return None


def _shown(value: Any) -> str:
    """A value as it was written in JSON or YAML: null, true, false, numbers and quoted strings."""
    import json

    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


#: Keyword arguments that must be positive numbers (a length in Å or an energy in eV); those in
#: :data:`NULL_MEANS_DEFAULT` may also be null.
POSITIVE_PARAMETERS: dict[str, tuple[str, ...]] = {'lj': ('epsilon', 'sigma', 'rc')}
#: Keyword arguments for which null means "ASE's default" (LJ: rc = 3 sigma, ro = 0.66 rc).
NULL_MEANS_DEFAULT: dict[str, tuple[str, ...]] = {'lj': ('rc', 'ro')}


def _bounds_error(name: str, parameters: dict[str, Any]) -> str | None:
    """Why numbers of the right type are still not physical: LJ with sigma <= 0 gives NaN or a repulsive well."""
    for key in POSITIVE_PARAMETERS.get(name, ()):
        if key not in parameters:
            continue
        value = parameters[key]
        if value is None and key in NULL_MEANS_DEFAULT.get(name, ()):
            continue
        if value is None or not value > 0:
            return f'`{key}` must be a positive number, got {_shown(value)}'
    if name == 'lj':
        ro, rc = parameters.get('ro'), parameters.get('rc')
        if ro is None or not parameters.get('smooth', False):  # ASE uses ro only when smoothing
            return None
        if not ro >= 0:
            return f'`ro` (Å, where the smoothing starts) must be zero or positive, got {ro!r}'
        if rc is None:  # ASE's default cut-off
            rc = 3 * parameters.get('sigma', 1.0)
        if not ro < rc:
            return f'`ro` ({ro} Å) must be smaller than the cut-off `rc` ({rc} Å)'
    return None


def get_factory(name: str) -> Callable[[dict[str, Any]], Any]:
    """Return a factory that builds a fresh calculator from JSON keyword arguments.

    :raises UnknownCalculatorError: when the name is not registered.
    :raises CalculatorUnavailableError: when its code cannot be imported here.
    """
    check_name(name)
    if name in BUILTIN:
        module_name, class_name, defaults, _ = BUILTIN[name]
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except ImportError as exc:
            raise CalculatorUnavailableError(
                f'calculator `{name}` needs the Python module `{module_name}`, which is not importable by '
                f'this worker ({exc}); point the Code at a Python that has it'
            ) from exc

        def factory(parameters: dict[str, Any]) -> Any:
            kwargs = {**defaults, **parameters}
            if name == 'gpaw':
                kwargs = _gpaw_parameters(kwargs)
            if name == 'mlmat':
                return _mlmat_calculator(cls, kwargs)
            return cls(**kwargs)

        return factory
    try:
        return _entry_points()[name].load()
    except ImportError as exc:
        raise CalculatorUnavailableError(f'calculator `{name}` could not be loaded: {exc}') from exc


def resolve_parameters(name: str, parameters: dict[str, Any] | None, workdir: Any) -> dict[str, Any]:
    """Calculator parameters with file paths made absolute against the job's working directory.

    The ``mlmat`` calculator's ``directory`` (default ``potential``) is relative to the job folder, where the
    CalcJob writes its ``potential`` input, whatever the worker's current directory.
    """
    from pathlib import Path

    params = dict(parameters or {})
    if name == 'mlmat':
        directory = Path(params.get('directory', BUILTIN['mlmat'][2]['directory']))
        params['directory'] = str(directory if directory.is_absolute() else Path(workdir) / directory)
    return params


def make_calculator(name: str, parameters: dict[str, Any] | None = None) -> Any:
    """Build a calculator by registry name with keyword arguments."""
    return get_factory(name)(dict(parameters or {}))
