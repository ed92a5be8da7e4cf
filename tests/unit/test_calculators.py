"""The calculator registry: names, errors, JSON parameters reaching the ASE calculator."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones

from aiida_mlmat.worker import calculators
from aiida_mlmat.worker.calculators import (
    BUILTIN,
    CalculatorUnavailableError,
    UnknownCalculatorError,
    available_names,
    check_name,
    get_factory,
    make_calculator,
    unsupported_elements,
)

pytestmark = pytest.mark.unit

EXPECTED_BUILTIN = {'emt', 'lj', 'gpaw', 'espresso', 'vasp', 'cp2k'}


class FakeEntryPoint:
    """Stand-in for an ``importlib.metadata.EntryPoint`` of the ``mlmat.calculators`` group."""

    def __init__(self, name, factory=None, error=None):
        self.name = name
        self._factory = factory
        self._error = error

    def load(self):
        if self._error is not None:
            raise self._error
        return self._factory


def rattled_copper() -> Atoms:
    atoms = bulk('Cu', 'fcc', a=3.6, cubic=True).repeat((2, 1, 1))
    atoms.rattle(0.05, seed=3)
    return atoms


def argon_dimer(distance: float = 3.6) -> Atoms:
    return Atoms('Ar2', positions=[[0, 0, 0], [distance, 0, 0]], pbc=False)


def test_registry_names():
    names = available_names()
    assert set(names) >= EXPECTED_BUILTIN
    assert names == sorted(names)
    assert set(BUILTIN) >= EXPECTED_BUILTIN
    # the fault-injecting test calculator runs when named but is not offered to users
    assert 'faulty' not in names
    assert 'faulty' in available_names(testing=True)
    assert check_name('faulty') is None
    with pytest.raises(UnknownCalculatorError, match=r'registered: .*emt') as excinfo:
        check_name('nope')
    assert 'faulty' not in str(excinfo.value)


@pytest.mark.parametrize('name', sorted(EXPECTED_BUILTIN))
def test_check_name_accepts_builtin(name):
    assert check_name(name) is None


@pytest.mark.parametrize('name', ['nope', 'EMT', '', 'ase.calculators.emt'])
def test_unknown_name_lists_known_names(name):
    with pytest.raises(UnknownCalculatorError) as excinfo:
        make_calculator(name)
    message = str(excinfo.value)
    assert f'unknown calculator `{name}`' in message
    for known in EXPECTED_BUILTIN:
        assert known in message
    assert isinstance(excinfo.value, KeyError)  # the worker maps KeyError to UNKNOWN_CALCULATOR


def test_unknown_name_fails_before_any_import(monkeypatch):
    imported = []
    monkeypatch.setattr(calculators.importlib, 'import_module', lambda name: imported.append(name))
    with pytest.raises(UnknownCalculatorError):
        get_factory('os')
    assert imported == []


def test_emt_energies_equal_ase_emt():
    atoms = rattled_copper()
    reference = atoms.copy()
    reference.calc = EMT()
    ours = atoms.copy()
    ours.calc = make_calculator('emt')
    assert isinstance(ours.calc, EMT)
    assert ours.get_potential_energy() == pytest.approx(reference.get_potential_energy(), abs=1e-12)
    np.testing.assert_allclose(ours.get_forces(), reference.get_forces(), atol=1e-12)
    np.testing.assert_allclose(ours.get_stress(), reference.get_stress(), atol=1e-12)
    assert abs(reference.get_potential_energy()) > 1e-3  # a rattled cell has a non-trivial energy


def test_factory_builds_fresh_calculators():
    factory = get_factory('emt')
    first, second = factory({}), factory({})
    assert first is not second


def test_lj_parameters_from_json_reach_the_calculator():
    calc = make_calculator('lj', {'sigma': 3.4, 'epsilon': 0.0104, 'rc': 8.0})
    assert isinstance(calc, LennardJones)
    assert calc.parameters['sigma'] == 3.4
    assert calc.parameters['epsilon'] == 0.0104
    assert calc.parameters['rc'] == 8.0


def test_lj_sigma_and_epsilon_change_the_energy():
    def energy(parameters):
        atoms = argon_dimer(3.6)
        atoms.calc = make_calculator('lj', parameters)
        return atoms.get_potential_energy()

    base = {'sigma': 3.4, 'epsilon': 0.0104, 'rc': 10.0, 'smooth': False}
    e_base = energy(base)
    # analytic LJ pair energy, shifted by its value at rc (ASE's convention)
    r, sigma, eps, rc = 3.6, 3.4, 0.0104, 10.0
    analytic = 4 * eps * ((sigma / r) ** 12 - (sigma / r) ** 6) - 4 * eps * ((sigma / rc) ** 12 - (sigma / rc) ** 6)
    assert e_base == pytest.approx(analytic, rel=1e-10)
    assert energy({**base, 'epsilon': 2 * 0.0104}) == pytest.approx(2 * e_base, rel=1e-10)
    assert energy({**base, 'sigma': 3.0}) != pytest.approx(e_base, rel=1e-3)
    assert energy({}) != pytest.approx(e_base, rel=1e-3)  # ASE defaults sigma = epsilon = 1


def test_builtin_defaults_are_merged_and_overridden(monkeypatch):
    monkeypatch.setitem(BUILTIN, 'lj_argon', ('ase.calculators.lj', 'LennardJones', {'sigma': 3.4, 'rc': 9.0}, ''))
    calc = make_calculator('lj_argon', {'rc': 7.0})
    assert calc.parameters['sigma'] == 3.4
    assert calc.parameters['rc'] == 7.0
    assert BUILTIN['lj_argon'][2] == {'sigma': 3.4, 'rc': 9.0}  # defaults are not mutated


def test_make_calculator_does_not_mutate_parameters():
    parameters = {'sigma': 2.0}
    make_calculator('lj', parameters)
    assert parameters == {'sigma': 2.0}


@pytest.mark.parametrize(
    ('species', 'expected'),
    [
        (['Cu', 'Au'], []),
        (['Al', 'Cu', 'Ag', 'Au', 'Ni', 'Pd', 'Pt', 'H', 'C', 'N', 'O'], []),
        (['Cu', 'Fe'], ['Fe']),
        ({'Zr', 'Fe', 'Cu'}, ['Fe', 'Zr']),
        (['Si', 'Si'], ['Si']),
        ([], []),
    ],
)
def test_unsupported_elements_emt(species, expected):
    assert unsupported_elements('emt', species) == expected


@pytest.mark.parametrize('name', ['lj', 'gpaw', 'vasp', 'unknown-name'])
def test_unsupported_elements_without_a_known_set(name):
    assert unsupported_elements(name, ['Fe', 'Zr', 'U']) == []


def test_unavailable_module_gives_calculator_unavailable(monkeypatch):
    monkeypatch.setitem(BUILTIN, 'ghost', ('mlmat_no_such_module_xyz', 'Ghost', {}, 'not installed'))
    assert 'ghost' in available_names()
    with pytest.raises(CalculatorUnavailableError) as excinfo:
        get_factory('ghost')
    message = str(excinfo.value)
    assert 'calculator `ghost`' in message
    assert 'mlmat_no_such_module_xyz' in message
    assert isinstance(excinfo.value, ImportError)  # the worker maps ImportError to CALCULATOR_UNAVAILABLE
    with pytest.raises(CalculatorUnavailableError):
        make_calculator('ghost')


def test_gpaw_is_unavailable_or_builds():
    try:
        import gpaw  # noqa: F401
    except ImportError:
        with pytest.raises(CalculatorUnavailableError, match='`gpaw`'):
            get_factory('gpaw')
    else:
        assert callable(get_factory('gpaw'))


def test_entry_point_calculator_is_registered_and_loaded(monkeypatch):
    def factory(parameters):
        return EMT(**parameters)

    monkeypatch.setattr(calculators, '_entry_points', lambda: {'plugin_emt': FakeEntryPoint('plugin_emt', factory)})
    assert 'plugin_emt' in available_names()
    assert set(available_names()) >= EXPECTED_BUILTIN
    check_name('plugin_emt')
    assert get_factory('plugin_emt') is factory
    assert isinstance(make_calculator('plugin_emt'), EMT)


def test_entry_point_that_cannot_load_is_unavailable(monkeypatch):
    broken = FakeEntryPoint('broken', error=ImportError('No module named mlmat_broken_plugin'))
    monkeypatch.setattr(calculators, '_entry_points', lambda: {'broken': broken})
    with pytest.raises(CalculatorUnavailableError, match='calculator `broken` could not be loaded'):
        get_factory('broken')


def test_builtin_wins_over_an_entry_point_of_the_same_name(monkeypatch):
    monkeypatch.setattr(calculators, '_entry_points', lambda: {'emt': FakeEntryPoint('emt', lambda p: 'plugin')})
    assert isinstance(make_calculator('emt'), EMT)
    assert available_names().count('emt') == 1


def test_gpaw_mode_dict_is_translated(monkeypatch):
    """A JSON ``mode`` dict becomes a GPAW mode object (the GPAW helper is faked, GPAW itself is optional)."""
    import sys
    import types

    created = {}

    def create_wave_function_mode(name, **kwargs):
        created.update(name=name, **kwargs)
        return ('mode', name, kwargs)

    module = types.ModuleType('gpaw.wavefunctions.mode')
    module.create_wave_function_mode = create_wave_function_mode
    for parent in ('gpaw', 'gpaw.wavefunctions'):
        monkeypatch.setitem(sys.modules, parent, sys.modules.get(parent) or types.ModuleType(parent))
    monkeypatch.setitem(sys.modules, 'gpaw.wavefunctions.mode', module)

    params = {'mode': {'name': 'pw', 'ecut': 300}, 'xc': 'PBE'}
    translated = calculators._gpaw_parameters(params)
    assert translated == {'mode': ('mode', 'pw', {'ecut': 300}), 'xc': 'PBE'}
    assert created == {'name': 'pw', 'ecut': 300}
    assert params == {'mode': {'name': 'pw', 'ecut': 300}, 'xc': 'PBE'}
    assert calculators._gpaw_parameters({'mode': 'lcao'}) == {'mode': 'lcao'}
