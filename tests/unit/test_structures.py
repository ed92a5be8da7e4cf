"""Structure helpers: element and configuration checks, seed generation, extxyz round trips."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator

from aiida_mlmat.common.constants import INDEX_KEY, METHOD_KEY, MIN_INTERATOMIC_DISTANCE
from aiida_mlmat.worker.structures import (
    InvalidConfigurationError,
    atomic_volume,
    build_seeds,
    check_configuration,
    check_element,
    extxyz_string,
    index_of,
    lattice_constant,
    read_extxyz,
    shortest_distance,
    write_extxyz,
)

pytestmark = pytest.mark.unit


# --- elements ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(('symbol', 'number'), [('H', 1), ('Cu', 29), ('Au', 79), ('Og', 118)])
def test_check_element_accepts_symbols(symbol, number):
    assert check_element(symbol) == number


@pytest.mark.parametrize('symbol', ['Xx', 'cu', 'CU', '', 'X', ' Cu', 'Cu ', 'Copper', '29'])
def test_check_element_rejects(symbol):
    with pytest.raises(ValueError, match='unknown element') as excinfo:
        check_element(symbol)
    assert f'`{symbol}`' in str(excinfo.value)


# --- configurations --------------------------------------------------------------------------------------------


def copper() -> Atoms:
    return bulk('Cu', 'fcc', a=3.61, cubic=True)


def test_check_configuration_accepts_a_crystal_and_a_molecule():
    check_configuration(copper())
    check_configuration(Atoms('H2', positions=[[0, 0, 0], [0.74, 0, 0]]))  # no cell, not periodic
    check_configuration(Atoms('Cu', cell=[2.5, 2.5, 2.5], pbc=True))  # one atom; images 2.5 Å away


def test_check_configuration_rejects_empty():
    with pytest.raises(InvalidConfigurationError, match='no atoms'):
        check_configuration(Atoms())


def test_check_configuration_rejects_close_atoms():
    atoms = Atoms('Cu2', positions=[[0, 0, 0], [0.3, 0, 0]], cell=[10, 10, 10], pbc=True)
    with pytest.raises(InvalidConfigurationError, match=r'closer than 0\.5 Å \(shortest distance 0\.300 Å\)'):
        check_configuration(atoms)


def test_check_configuration_rejects_close_atoms_across_the_periodic_boundary():
    atoms = Atoms('Cu2', positions=[[0.1, 5, 5], [9.8, 5, 5]], cell=[10, 10, 10], pbc=True)
    assert atoms.get_distance(0, 1) == pytest.approx(9.7)
    assert atoms.get_distance(0, 1, mic=True) == pytest.approx(0.3)
    with pytest.raises(InvalidConfigurationError, match=r'shortest distance 0\.300 Å'):
        check_configuration(atoms)
    # the same positions without periodicity are fine
    atoms.pbc = False
    check_configuration(atoms)


def test_check_configuration_rejects_an_atom_close_to_its_own_image():
    atoms = Atoms('Cu', cell=[0.4, 5, 5], pbc=True)
    with pytest.raises(InvalidConfigurationError, match=r'shortest distance 0\.400 Å'):
        check_configuration(atoms)


def test_min_distance_is_configurable():
    atoms = Atoms('Cu2', positions=[[0, 0, 0], [0.3, 0, 0]], cell=[10, 10, 10], pbc=True)
    check_configuration(atoms, min_distance=0.2)
    check_configuration(atoms, min_distance=0)
    with pytest.raises(InvalidConfigurationError, match=r'closer than 3\.0 Å \(shortest distance 2\.553 Å\)'):
        check_configuration(copper(), min_distance=3.0)


@pytest.mark.parametrize('value', [np.nan, np.inf, -np.inf])
def test_check_configuration_rejects_non_finite_positions(value):
    atoms = copper()
    positions = atoms.positions.copy()
    positions[2, 1] = value
    atoms.positions = positions
    with pytest.raises(InvalidConfigurationError, match='non-finite positions'):
        check_configuration(atoms)


def test_check_configuration_rejects_dummy_atoms():
    atoms = Atoms('X2', positions=[[0, 0, 0], [2, 0, 0]])
    with pytest.raises(InvalidConfigurationError, match='dummy atom'):
        check_configuration(atoms)


def test_check_configuration_rejects_degenerate_periodic_cell():
    atoms = Atoms('Cu2', positions=[[0, 0, 0], [2, 0, 0]], cell=[[3, 0, 0], [6, 0, 0], [0, 0, 3]], pbc=True)
    with pytest.raises(InvalidConfigurationError, match='degenerate'):
        check_configuration(atoms)


def test_shortest_distance():
    assert shortest_distance(copper()) is None  # nearest neighbours 2.55 Å > 0.5 Å
    assert shortest_distance(copper(), cutoff=3.0) == pytest.approx(3.61 / math.sqrt(2))
    assert shortest_distance(Atoms()) is None
    assert MIN_INTERATOMIC_DISTANCE == 0.5


# --- seeds -----------------------------------------------------------------------------------------------------


def volume_per_atom(atoms: Atoms) -> float:
    return atoms.get_volume() / len(atoms)


def fractions(atoms: Atoms) -> dict[str, float]:
    symbols = atoms.get_chemical_symbols()
    return {symbol: symbols.count(symbol) / len(symbols) for symbol in sorted(set(symbols))}


def test_atomic_volume_of_copper_and_gold():
    assert atomic_volume('Cu') == pytest.approx(3.61**3 / 4)
    assert atomic_volume('Cu') == pytest.approx(11.76, abs=0.05)
    assert atomic_volume('Au') == pytest.approx(4.08**3 / 4)
    assert atomic_volume('Fe') == pytest.approx(2.87**3 / 2)  # bcc
    assert atomic_volume('Si') == pytest.approx(5.43**3 / 8)  # diamond


@pytest.mark.parametrize('crystal', ['fcc', 'bcc', 'hcp'])
def test_lattice_constant_gives_the_volume(crystal):
    a = lattice_constant(13.0, crystal)
    atoms = bulk('Cu', crystal, a=a, covera=math.sqrt(8 / 3)) if crystal == 'hcp' else bulk('Cu', crystal, a=a)
    assert volume_per_atom(atoms) == pytest.approx(13.0)


def test_lattice_constant_rejects_unknown_crystal():
    with pytest.raises(ValueError, match='unknown crystal `sc`'):
        lattice_constant(10.0, 'sc')


def test_build_seeds_copper_gold():
    seeds = build_seeds(['Cu', 'Au'])
    assert len(seeds) == 3 * 2 + 4 * 1
    methods = [seed.info[METHOD_KEY] for seed in seeds]
    assert methods == ['seed:fcc', 'seed:bcc', 'seed:hcp'] * 2 + ['seed:L12', 'seed:L12', 'seed:L10', 'seed:B2']
    assert [seed.get_chemical_formula() for seed in seeds] == [
        'Cu4',
        'Cu2',
        'Cu2',
        'Au4',
        'Au2',
        'Au2',
        'Au3Cu',
        'AuCu3',
        'Au2Cu2',
        'AuCu',
    ]
    v_cu, v_au = atomic_volume('Cu'), atomic_volume('Au')
    for seed in seeds[:3]:
        assert volume_per_atom(seed) == pytest.approx(v_cu, rel=1e-9)
        assert volume_per_atom(seed) == pytest.approx(11.76, abs=0.05)
    for seed in seeds[3:6]:
        assert volume_per_atom(seed) == pytest.approx(v_au, rel=1e-9)
        assert volume_per_atom(seed) == pytest.approx(16.98, abs=0.05)
    # Vegard's law: each alloy at the composition-weighted mean volume (Au3Cu 15.67, AuCu3 13.07, AuCu 14.37 Å^3)
    for seed, x_au in zip(seeds[6:], (0.75, 0.25, 0.5, 0.5), strict=True):
        assert volume_per_atom(seed) == pytest.approx(x_au * v_au + (1 - x_au) * v_cu, rel=1e-9)
    assert volume_per_atom(seeds[6]) == pytest.approx(15.68, abs=0.05)
    assert volume_per_atom(seeds[7]) == pytest.approx(13.07, abs=0.05)
    assert fractions(seeds[6]) == {'Au': 0.75, 'Cu': 0.25}
    assert fractions(seeds[7]) == {'Au': 0.25, 'Cu': 0.75}
    assert fractions(seeds[8]) == {'Au': 0.5, 'Cu': 0.5}
    assert fractions(seeds[9]) == {'Au': 0.5, 'Cu': 0.5}
    for seed in seeds:
        assert seed.pbc.all()
        check_configuration(seed)
        # nearest neighbours at a sensible metallic distance
        assert 2.3 < shortest_distance(seed, cutoff=3.5) < 3.1


def test_build_seeds_l10_is_layered_and_b2_is_ordered():
    seeds = build_seeds(['Cu', 'Au'])
    l10, b2 = seeds[8], seeds[9]
    # L1_0: alternating pure (001)-type planes, i.e. along one cell axis each species sits on a single plane
    symbols = np.array(l10.get_chemical_symbols())
    scaled = l10.get_scaled_positions()
    layered_axes = [
        axis
        for axis in range(3)
        if len({round(x, 6) for x in scaled[symbols == 'Cu', axis]}) == 1
        and len({round(x, 6) for x in scaled[symbols == 'Au', axis]}) == 1
    ]
    assert len(layered_axes) == 1
    axis = layered_axes[0]
    assert abs(scaled[symbols == 'Cu', axis][0] - scaled[symbols == 'Au', axis][0]) == pytest.approx(0.5)
    assert np.allclose(b2.get_scaled_positions(), [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_build_seeds_ternary_counts():
    seeds = build_seeds(['Cu', 'Au', 'Ni'])
    assert len(seeds) == 3 * 3 + 4 * 3
    pairs = [seed.get_chemical_formula() for seed in seeds if seed.info[METHOD_KEY] == 'seed:B2']
    assert pairs == ['AuCu', 'CuNi', 'AuNi']


def test_build_seeds_single_element_and_duplicates():
    assert len(build_seeds(['Cu'])) == 3
    assert [s.get_chemical_formula() for s in build_seeds(['Cu', 'Cu'])] == ['Cu4', 'Cu2', 'Cu2']


def test_build_seeds_custom_crystals():
    seeds = build_seeds(['Al'], crystals=('fcc',))
    assert [seed.info[METHOD_KEY] for seed in seeds] == ['seed:fcc']


def test_build_seeds_empty_raises():
    with pytest.raises(ValueError, match='no elements given'):
        build_seeds([])


def test_build_seeds_unknown_element_raises():
    with pytest.raises(ValueError, match='unknown element `Xx`'):
        build_seeds(['Cu', 'Xx'])


@pytest.mark.parametrize('symbol', ['Zn', 'Mg', 'Ti'])
def test_hcp_seed_of_an_hcp_element_is_at_the_ground_state_volume(symbol):
    seeds = {seed.info[METHOD_KEY]: seed for seed in build_seeds([symbol])}
    assert volume_per_atom(seeds['seed:hcp']) == pytest.approx(atomic_volume(symbol), rel=1e-6)


# --- extxyz ---------------------------------------------------------------------------------------------------


def test_extxyz_round_trip_keeps_labels_and_info():
    atoms = copper()
    atoms.rattle(0.02, seed=1)
    atoms.info[INDEX_KEY] = 7
    atoms.info[METHOD_KEY] = 'rattle'
    forces = np.arange(12, dtype=float).reshape(4, 3) / 7
    stress = np.array([0.01, 0.02, 0.03, 0.004, 0.005, 0.006])
    atoms.calc = SinglePointCalculator(atoms, energy=-1.2345678901234, forces=forces, stress=stress)
    text = extxyz_string([atoms, atoms])
    frames = read_extxyz(io.StringIO(text))
    assert len(frames) == 2
    back = frames[1]
    assert back.get_potential_energy() == pytest.approx(-1.2345678901234, abs=1e-12)
    np.testing.assert_allclose(back.get_forces(), forces, atol=1e-8)
    np.testing.assert_allclose(back.get_stress(), stress, atol=1e-12)
    np.testing.assert_allclose(back.positions, atoms.positions, atol=1e-8)
    assert index_of(back, -1) == 7
    assert back.info[METHOD_KEY] == 'rattle'


def test_extxyz_file_round_trip(tmp_path):
    path = tmp_path / 'frames.extxyz'
    frames = [copper(), bulk('Au', 'fcc', a=4.08)]
    write_extxyz(str(path), frames)
    back = read_extxyz(str(path))
    assert [frame.get_chemical_formula() for frame in back] == ['Cu4', 'Au']
    assert index_of(back[0], 5) == 5


def test_read_extxyz_of_a_single_frame_is_a_list():
    frames = read_extxyz(io.StringIO(extxyz_string([copper()])))
    assert isinstance(frames, list)
    assert len(frames) == 1


@pytest.mark.parametrize(
    ('labels', 'message'),
    [
        ({'energy': 1e300}, r'energy of magnitude 2\.5e\+299 eV/atom is beyond any physical value \(1e\+06 eV/atom\)'),
        ({'energy': -4.0, 'forces': np.full((4, 3), 2e4)}, r'forces of magnitude 2e\+04 eV/Å is beyond any physical'),
        ({'energy': -4.0, 'stress': np.full(6, -5e3)}, r'stress of magnitude 5e\+03 eV/Å\^3 is beyond any physical'),
        ({'energy': float('nan')}, r'energy is not finite \(NaN or inf\)'),
        ({'energy': -4.0, 'forces': np.zeros((3, 3))}, r'forces has shape \(3, 3\), expected \(4, 3\)'),
    ],
)
def test_check_labels_refuses_what_cannot_be_trained_on(labels, message):
    """Labels that are not finite, of the wrong shape, or far beyond any physical value (a unit or parsing error,
    which would otherwise end training with a non-finite loss) are refused with the label and its unit named;
    large but physical labels (an all-electron total energy, a hard contact) pass."""
    from aiida_mlmat.worker.structures import InvalidConfigurationError, check_labels

    atoms = bulk('Au', 'fcc', a=4.08, cubic=True)
    atoms.calc = SinglePointCalculator(atoms, **labels)
    with pytest.raises(InvalidConfigurationError, match=message):
        check_labels(atoms)


def test_check_labels_accepts_large_physical_labels():
    from aiida_mlmat.worker.structures import check_labels

    atoms = bulk('Au', 'fcc', a=4.08, cubic=True)
    # Au all-electron total energy is about -5.1e5 eV/atom; a hard contact can give hundreds of eV/Å
    atoms.calc = SinglePointCalculator(atoms, energy=-5.1e5 * 4, forces=np.full((4, 3), 500.0), stress=np.ones(6))
    check_labels(atoms)
