"""Candidate structures: reading files, enumerating decorations, deduplication, element checks."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.io import write
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure
from pymatgen.core.operations import SymmOp

from aiida_mlmat.hull.candidates import (
    CandidateError,
    _build,
    _hnfs,
    atomic_volume,
    check_elements,
    deduplicate,
    enumerate_decorations,
    generate_candidates,
    read_candidates,
    volume_from_lattice_constant,
)

pytestmark = pytest.mark.unit


def l12() -> Structure:
    return Structure(
        Lattice.cubic(3.75), ['Cu', 'Cu', 'Cu', 'Au'], [[0, 0, 0.5], [0.5, 0.5, 0.5], [0.5, 0, 0], [0, 0, 0]]
    )


# ---------------------------------------------------------------------------------------------------- reading


def test_read_cif_poscar_and_extxyz(tmp_path):
    structure = l12()
    structure.to(filename=str(tmp_path / 'Cu3Au-L12.cif'))
    structure.to(filename=str(tmp_path / 'POSCAR'), fmt='poscar')
    structure.to(filename=str(tmp_path / 'other.vasp'), fmt='poscar')
    write(tmp_path / 'frames.extxyz', [bulk('Cu', 'fcc', 3.6), bulk('Au', 'fcc', 4.08, cubic=True)])
    write(tmp_path / 'one.xyz', bulk('Cu', 'bcc', 2.9))
    paths = [tmp_path / name for name in ('Cu3Au-L12.cif', 'POSCAR', 'other.vasp', 'frames.extxyz', 'one.xyz')]
    candidates = read_candidates([str(p) for p in paths])
    names = [name for name, _ in candidates]
    assert names == ['Cu3Au-L12', 'POSCAR', 'other', 'frames_0', 'frames_1', 'one']
    matcher = StructureMatcher()
    for name, read in candidates[:3]:
        assert matcher.fit(read, structure), name
        assert read.composition.reduced_formula == 'Cu3Au'
    assert len(candidates[4][1]) == 4
    assert candidates[5][1].composition.reduced_formula == 'Cu'


def test_corrupt_file_names_it(tmp_path):
    good = tmp_path / 'good.cif'
    l12().to(filename=str(good))
    bad = tmp_path / 'broken.cif'
    bad.write_text('data_broken\n_cell_length_a nonsense\nthis is not a CIF\n')
    with pytest.raises(CandidateError, match=r'broken\.cif'):
        read_candidates([str(good), str(bad)])
    empty = tmp_path / 'empty.vasp'
    empty.write_text('')
    with pytest.raises(CandidateError, match=r'empty\.vasp'):
        read_candidates([str(empty)])
    with pytest.raises(CandidateError, match=r'missing\.cif'):
        read_candidates([str(tmp_path / 'missing.cif')])
    assert issubclass(CandidateError, ValueError)
    garbage = tmp_path / 'garbage.cif'
    garbage.write_text('garbage\n')  # ASE's CIF reader fails on an assert without a message: no empty detail
    with pytest.raises(CandidateError) as raised:
        read_candidates([str(garbage)])
    assert not str(raised.value).rstrip().endswith(':') and 'ase: content not valid (AssertionError)' in str(
        raised.value
    )


def test_non_finite_positions_are_refused_with_the_file(tmp_path):
    """A candidate with an infinite coordinate is refused on reading (the screen would have relaxed the references
    first and then recorded it as failed)."""
    atoms = bulk('Cu', 'fcc', a=3.6, cubic=True)
    atoms.positions[1, 0] = np.inf
    path = tmp_path / 'infpos.xyz'
    write(str(path), atoms, format='extxyz')
    with pytest.raises(CandidateError, match=r'infpos\.xyz: `infpos` has a cell or positions that are not finite'):
        read_candidates([str(path)])


def test_molecule_without_cell_is_refused(tmp_path):
    path = tmp_path / 'molecule.xyz'
    write(path, Atoms('Cu2', positions=[[0, 0, 0], [0, 0, 2.3]]))
    with pytest.raises(CandidateError, match=r'molecule\.xyz'):
        read_candidates([str(path)])


def test_duplicate_names_are_refused(tmp_path):
    (tmp_path / 'a').mkdir()
    (tmp_path / 'b').mkdir()
    l12().to(filename=str(tmp_path / 'a' / 'x.cif'))
    l12().to(filename=str(tmp_path / 'b' / 'x.vasp'), fmt='poscar')
    with pytest.raises(CandidateError, match='`x`'):
        read_candidates([str(tmp_path / 'a' / 'x.cif'), str(tmp_path / 'b' / 'x.vasp')])


def test_partial_occupancy_is_refused(tmp_path):
    disordered = Structure(Lattice.cubic(3.8), [{'Cu': 0.5, 'Au': 0.5}], [[0, 0, 0]])
    path = tmp_path / 'alloy.cif'
    disordered.to(filename=str(path))
    with pytest.raises(CandidateError, match='partial occupancies'):
        read_candidates([str(path)])


def test_check_elements():
    structure = l12()
    assert check_elements(structure, ['Cu', 'Au']) is None
    assert check_elements(structure, ['Cu', 'Au', 'Ag']) is None
    reason = check_elements(structure, ['Cu', 'Ag'])
    assert reason is not None
    assert 'Au' in reason and 'Ag-Cu' in reason


# ---------------------------------------------------------------------------------------------------- generation


def brute_force(lattice: str, max_atoms: int, elements=('Cu', 'Au')) -> int:
    """Number of distinct structures among every decoration of every supercell, by StructureMatcher alone."""
    from aiida_mlmat.hull.candidates import LATTICES

    n_basis = LATTICES[lattice]
    structures = []
    for n_atoms in range(2, max_atoms + 1):
        if n_atoms % n_basis:
            continue
        for h in _hnfs(n_atoms // n_basis):
            for labels in itertools.product(range(len(elements)), repeat=n_atoms):
                if len(set(labels)) >= 2:
                    structures.append(_build(lattice, h, np.array(labels), list(elements), 12.0 * n_atoms))
    return len(StructureMatcher().group_structures(structures))


@pytest.mark.parametrize(('lattice', 'expected'), [('fcc', 27), ('hcp', 11)])
def test_enumeration_is_complete_and_unique(lattice, expected):
    """Symmetry-reduced enumeration equals brute force (all supercells x all decorations, grouped by matching).

    bcc has the point group of fcc, hence the same counts (checked below).
    """
    enumerated = sum(len(enumerate_decorations(lattice, n, 2)) for n in range(2, 5))
    assert enumerated == expected
    assert brute_force(lattice, 4) == expected


def test_enumeration_counts_per_size():
    # binary fcc decorations with exactly n atoms per primitive cell (n = 2..6); bcc has the same counts
    assert [len(enumerate_decorations('fcc', n, 2)) for n in range(1, 7)] == [0, 2, 6, 19, 28, 80]
    assert [len(enumerate_decorations('bcc', n, 2)) for n in range(1, 7)] == [0, 2, 6, 19, 28, 80]
    assert [len(enumerate_decorations('hcp', n, 2)) for n in range(1, 7)] == [0, 1, 0, 10, 0, 50]


def test_enumeration_matches_hart_forcade():
    """Up to the exchange of the two elements: 2, 3, 12, 14, 50 fcc structures of 2..6 atoms (PRB 77, 224115)."""
    from aiida_mlmat.hull.candidates import _site_permutations, _superlattices

    counts = []
    for n in range(2, 7):
        weights = 2 ** np.arange(n - 1, -1, -1)
        classes = set()
        for h in _superlattices('fcc', n):
            _, group, _ = _site_permutations('fcc', h)
            for labels in (labels for hh, labels in enumerate_decorations('fcc', n, 2) if (hh == h).all()):
                canonical = min(int(labels[p] @ weights) for p in group)
                exchanged = min(int((1 - labels)[p] @ weights) for p in group)
                classes.add((tuple(h.ravel()), min(canonical, exchanged)))
        counts.append(len(classes))
    assert counts == [2, 3, 12, 14, 50]


def test_generate_binary_candidates():
    candidates = generate_candidates(['Cu', 'Au'], max_atoms=4)
    assert len(candidates) == 58
    names = [name for name, _ in candidates]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r'(fcc|bcc|hcp)-Cu\d*Au\d*-\d+', name) for name in names)
    assert 'fcc-CuAu3-0' in names and 'fcc-CuAu-0' in names and 'fcc-CuAu-1' in names
    for name, structure in candidates:
        assert len(structure.composition.elements) >= 2, name
        assert 2 <= len(structure) <= 4
        assert structure.is_ordered
    # no two candidates match
    groups = StructureMatcher().group_structures([structure for _, structure in candidates])
    assert len(groups) == len(candidates)
    # deterministic
    assert [name for name, _ in generate_candidates(['Cu', 'Au'], max_atoms=4)] == names


def test_generate_fcc_counts():
    assert len(generate_candidates(['Cu', 'Au'], lattices=('fcc',), max_atoms=4)) == 27
    assert len(generate_candidates(['Cu', 'Au'], lattices=('fcc',), max_atoms=6)) == 135


def test_vegard_volume():
    candidates = dict(generate_candidates(['Cu', 'Au'], lattices=('fcc',), max_atoms=2))
    assert candidates['fcc-CuAu-0'].volume == pytest.approx(atomic_volume('Cu') + atomic_volume('Au'))
    given = dict(generate_candidates(['Cu', 'Au'], lattices=('fcc',), max_atoms=2, a={'Cu': 3.6, 'Au': 4.1}))
    assert given['fcc-CuAu-0'].volume == pytest.approx((3.6**3 + 4.1**3) / 4)
    hcp = dict(generate_candidates(['Cu', 'Au'], lattices=('hcp',), max_atoms=2, a={'Cu': 2.55, 'Au': 2.9}))
    assert hcp['hcp-CuAu-0'].volume == pytest.approx(
        volume_from_lattice_constant(2.55, 'hcp') + volume_from_lattice_constant(2.9, 'hcp')
    )
    # nearest neighbours at the fcc distance of the mean volume
    structure = candidates['fcc-CuAu-0']
    a = (4 * structure.volume / 2) ** (1 / 3)
    distances = structure.distance_matrix[np.triu_indices(2, 1)]
    assert min(distances.min(), min(structure.lattice.abc)) == pytest.approx(a / np.sqrt(2), rel=1e-6)


def test_include_elements_and_limit():
    candidates = generate_candidates(['Cu', 'Au'], lattices=('fcc', 'hcp'), max_atoms=2, include_elements=True)
    names = [name for name, _ in candidates]
    assert names[:2] == ['fcc-Cu-0', 'fcc-Au-0']
    assert 'hcp-Cu-0' in names and 'hcp-Au-0' in names
    limited = generate_candidates(['Cu', 'Au'], max_atoms=4, max_candidates=10)
    assert [name for name, _ in limited] == [name for name, _ in generate_candidates(['Cu', 'Au'], max_atoms=4)][:10]


def test_ternary_candidates():
    candidates = generate_candidates(['Cu', 'Au', 'Ag'], lattices=('fcc',), max_atoms=3)
    n_elements = [len(structure.composition.elements) for _, structure in candidates]
    assert min(n_elements) == 2 and max(n_elements) == 3
    # per pair of elements: the 8 binary structures of up to 3 atoms; ternaries: the 3-atom cells decorated ABC
    assert n_elements.count(2) == 3 * 8
    assert n_elements.count(3) == len(enumerate_decorations('fcc', 3, 3)) - 3 * 6
    assert 'fcc-CuAuAg-0' in dict(candidates)


def test_generation_errors():
    with pytest.raises(ValueError, match='Xx'):
        generate_candidates(['Cu', 'Xx'])
    with pytest.raises(ValueError, match='lattice'):
        generate_candidates(['Cu', 'Au'], lattices=('diamond',))
    with pytest.raises(ValueError, match='max_atoms'):
        generate_candidates(['Cu', 'Au'], max_atoms=0)


def test_deduplicate_keeps_first():
    structure = l12()
    rotated = structure.copy()
    rotated.apply_operation(SymmOp.from_axis_angle_and_translation([0, 0, 1], 90))
    supercell = structure * (1, 1, 2)
    other = Structure(Lattice.cubic(3.75), ['Cu', 'Au'], [[0, 0, 0], [0.5, 0.5, 0.5]])
    items = [('a', structure), ('b', rotated), ('c', supercell), ('d', other)]
    assert [name for name, _ in deduplicate(items)] == ['a', 'd']


def test_screened_candidate_properties_of_a_failed_candidate(aiida_profile):
    """A failed candidate has no energy above the hull: its property is None (as its docstring says), not an error;
    an ok one gives the value (eV/atom) and its verdict."""
    from aiida_mlmat.data.screening import ScreenedCandidateData

    failed = ScreenedCandidateData({'name': 'B2-CuAu', 'formula': 'AuCu', 'status': 'failed', 'reason': 'diverged'})
    assert failed.e_above_hull is None and failed.stable is False and failed.name == 'B2-CuAu'
    ok = ScreenedCandidateData({'name': 'L10', 'formula': 'AuCu', 'status': 'ok', 'e_above_hull': 0.0, 'stable': True})
    assert ok.e_above_hull == 0.0 and ok.stable is True


def test_hull_inputs_refuse_bad_generate_settings_and_counts(aiida_profile):
    """The hull workchain's validator (the Python builder path) refuses what `mlmat screen` and a pipeline YAML
    refuse: unknown or out-of-range `generate` settings, candidates and generate together, a unary system to
    decorate and a negative number of candidates to verify, each naming the input."""
    from aiida import orm

    from aiida_mlmat.data.configurations import ConfigurationSetData
    from aiida_mlmat.workflows.hull import validate_inputs

    base = {'elements': orm.List(['Cu', 'Au']), 'calculator': orm.Dict({'name': 'emt'})}
    assert validate_inputs({**base, 'generate': orm.Dict({'max_atoms': 4})}) is None
    assert validate_inputs({**base, 'generate': orm.Dict({'max_atomz': 4})}) == (
        "generate: unknown key(s) ['max_atomz']; allowed: lattices, max_atoms, max_candidates"
    )
    assert validate_inputs({**base, 'generate': orm.Dict({'max_atoms': 100})}) == (
        'generate.max_atoms: 100 is greater than the maximum of 8'
    )
    both = {**base, 'generate': orm.Dict({'max_atoms': 4}), 'candidates': ConfigurationSetData([bulk('Cu')])}
    assert validate_inputs(both) == 'give either `candidates` or `generate`, not both: `generate` would be ignored'
    assert validate_inputs(base) == 'give `candidates` (a configuration set) or `generate` (settings to generate them)'
    assert validate_inputs({**base, 'elements': orm.List(['Cu']), 'generate': orm.Dict({})}).startswith(
        "generate: decorations need at least two elements, got ['Cu']"
    )
    verify = {**base, 'generate': orm.Dict({}), 'verify': {'top': orm.Int(-1), 'calculator': orm.Dict({'name': 'emt'})}}
    assert validate_inputs(verify) == 'verify.top: the number of candidates to verify cannot be negative, got -1'


def test_hull_inputs_refuse_bad_relax_values_options_and_tolerance(aiida_profile):
    """Values a relaxation job or the hull would fail on (or silently misread) are refused before anything runs,
    naming the input: relax settings against the worker's schema, job options against a CalcJob's, and a
    negative stability tolerance (it would call candidates on the hull unstable)."""
    from aiida import orm

    from aiida_mlmat.workflows.hull import validate_inputs

    base = {'elements': orm.List(['Cu', 'Au']), 'calculator': orm.Dict({'name': 'emt'}), 'generate': orm.Dict({})}
    assert validate_inputs({**base, 'relax': orm.Dict({'fmax': 0.02, 'max_steps': 50})}) is None
    error = validate_inputs({**base, 'relax': orm.Dict({'fmax': -1.0})})
    assert error.startswith('relax: ') and 'fmax' in error and '-1.0' in error, error
    error = validate_inputs({**base, 'relax': orm.Dict({'max_steps': 'many'})})
    assert error.startswith('relax: ') and "'many' is not of type 'integer'" in error, error
    assert validate_inputs({**base, 'options': orm.Dict({'max_wallclock_seconds': 600})}) is None
    error = validate_inputs({**base, 'options': orm.Dict({'max_wallclock_seconds': 'ten'})})
    assert error.startswith('options: max_wallclock_seconds: ') and 'is not of the right type' in error, error
    error = validate_inputs({**base, 'options': orm.Dict({'queue_name': 'a b'})})
    assert error.startswith("options: queue_name: 'a b' is not a plain scheduler name"), error
    error = validate_inputs({**base, 'options': orm.Dict({'max_wallclock_secs': 600})})
    assert error.startswith('options: ') and 'max_wallclock_secs' in error, error
    assert validate_inputs({**base, 'stability_tolerance': orm.Float(0.025)}) is None
    error = validate_inputs({**base, 'stability_tolerance': orm.Float(-0.01)})
    assert error.startswith('stability_tolerance: -0.01 eV/atom; give 0 or a small positive margin'), error


def test_the_gpaw_worker_code_is_refused_where_torch_is_needed(aiida_profile, aiida_localhost, tmp_path):
    """The GPAW worker Code (a system Python with GPAW, no torch) can sample, label and relax with GPAW, but not run
    a potential: as the screening's `code` beside a potential, or as the pipeline's `code`, it is refused up front,
    saying where it goes instead."""
    from aiida import orm

    from aiida_mlmat.data.potential import PotentialData
    from aiida_mlmat.ml.model import build_model, default_config, save_model
    from aiida_mlmat.workflows.hull import validate_inputs
    from aiida_mlmat.workflows.pipeline import validate_inputs as validate_pipeline
    from aiida_mlmat.workflows.pipeline_config import validate_config

    gpaw = orm.InstalledCode(label='mlmat-worker-gpaw', computer=aiida_localhost, filepath_executable='/bin/true')
    config = default_config(['Cu', 'Au'])
    config['hidden'] = [4]
    save_model(build_model(config), str(tmp_path / 'member.pt'))
    potential = PotentialData([(tmp_path / 'member.pt').read_bytes()], config=config)
    inputs = {'elements': orm.List(['Cu', 'Au']), 'generate': orm.Dict({}), 'potential': potential, 'code': gpaw}
    error = validate_inputs(inputs)
    assert error.startswith('code: `mlmat-worker-gpaw@localhost` is the GPAW worker Code, whose Python has no torch')
    with_calculator = {key: value for key, value in inputs.items() if key != 'potential'}
    assert validate_inputs({**with_calculator, 'calculator': orm.Dict({'name': 'emt'})}) is None  # relaxes with it
    pipeline = {'config': orm.Dict(validate_config({'elements': ['Cu', 'Au']})), 'code': gpaw}
    error = validate_pipeline(pipeline)
    assert 'give the mlmat-worker Code as `code` and the GPAW one as `reference_code`' in error


def test_codes_for_the_reference_method_and_for_torch(aiida_profile, worker_code):
    """Which worker Code runs what: GPAW on the GPAW worker Code of the Computer (the worker itself on a Computer
    other than localhost that has none), anything else on the worker; the selection's descriptors are refused on a
    Code without torch; a Code's ``mlmat_torch`` extra overrides what its label suggests. Two throw-away Computers,
    deleted at the end (the profile's localhost Codes are left as they are)."""
    import uuid

    from aiida import orm

    from aiida_mlmat.calcjobs.base import without_torch
    from aiida_mlmat.cli.pipeline import pipeline_codes
    from aiida_mlmat.cli.utils import reference_worker_code
    from aiida_mlmat.workflows.pipeline_config import validate_config
    from aiida_mlmat.workflows.reference import ReferenceWorkChain

    def computer(label):
        node = orm.Computer(label=label, hostname='localhost', transport_type='core.local',
                            scheduler_type='core.direct', workdir=f'/tmp/{label}').store()  # fmt: skip
        node.configure()
        return node

    tag = uuid.uuid4().hex[:8]
    both, only = computer(f'gpaw-{tag}'), computer(f'cluster-{tag}')
    made = [
        orm.InstalledCode(label=label, computer=where, filepath_executable='/bin/true').store()
        for label, where in (('mlmat-worker', both), ('mlmat-worker-gpaw', both), ('mlmat-worker', only))
    ]
    worker, gpaw, remote = made
    try:
        gpaw_spec = {'name': 'gpaw', 'parameters': {'mode': {'name': 'pw', 'ecut': 200}, 'kpts': [1, 1, 1]}}
        assert reference_worker_code('gpaw', worker).pk == gpaw.pk
        assert reference_worker_code('emt', worker).pk == worker.pk
        assert reference_worker_code('gpaw', remote).pk == remote.pk  # no GPAW Code there: the worker may have GPAW
        assert without_torch(gpaw) and not without_torch(worker)

        text = {'elements': ['Al'], 'computer': both.label, 'reference': {'calculator': gpaw_spec}}
        text['screening'] = {'enabled': False}
        codes = pipeline_codes(validate_config(text))
        assert (codes['code'].pk, codes['reference_code'].pk) == (worker.pk, gpaw.pk)
        named = pipeline_codes(validate_config({**text, 'code': 'mlmat-worker-gpaw'}))
        assert (named['code'].pk, named['reference_code'].pk) == (worker.pk, gpaw.pk)
        emt = {**text, 'reference': {'calculator': {'name': 'emt'}}, 'elements': ['Cu']}
        assert {key: node.pk for key, node in pipeline_codes(validate_config(emt)).items()} == {'code': worker.pk}
        on_cluster = pipeline_codes(validate_config({**text, 'computer': only.label}))
        assert {key: node.pk for key, node in on_cluster.items()} == {'code': remote.pk}

        builder = ReferenceWorkChain.get_builder_from_protocol(
            gpaw, calculator=gpaw_spec, elements=['Al'], overrides={'select': {'n': 3}}
        )
        error = ReferenceWorkChain.spec().inputs.validate(dict(builder._inputs(prune=True)))
        assert 'select.code: the descriptors of the selection need torch' in error.message
        builder.select.code = worker
        assert ReferenceWorkChain.spec().inputs.validate(dict(builder._inputs(prune=True))) is None
        gpaw.base.extras.set('mlmat_torch', True)  # a GPAW worker whose Python has torch too
        assert not without_torch(gpaw)
    finally:
        for node in made:
            orm.Node.collection.delete(node.pk)
        for node in (both, only):
            orm.Computer.collection.delete(node.pk)
