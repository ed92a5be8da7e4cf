"""``mlmat.configurations``: round trips, summary attributes, refusal of corrupt files, queries."""

from __future__ import annotations

import hashlib
import io
import re

import numpy as np
import pytest
from aiida import orm
from aiida.plugins import DataFactory
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from aiida_mlmat.common.constants import INDEX_KEY, METHOD_KEY, UNITS
from aiida_mlmat.data import configurations
from aiida_mlmat.data.configurations import ConfigurationSetData, CorruptFileError, parse_extxyz_bytes
from aiida_mlmat.worker.structures import extxyz_string, write_extxyz

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures('aiida_profile')]

ATOL = 1e-8


def labelled_frames() -> list[Atoms]:
    """Four EMT-labelled configurations: Cu4, Cu2Au2, Au3 (vacancy) and a non-periodic Cu3 cluster."""
    cu = bulk('Cu', 'fcc', a=3.61, cubic=True)
    cu.rattle(0.04, seed=1)
    alloy = bulk('Cu', 'fcc', a=3.85, cubic=True)
    alloy.set_chemical_symbols(['Cu', 'Cu', 'Au', 'Au'])
    alloy.rattle(0.03, seed=2)
    vacancy = bulk('Au', 'fcc', a=4.08, cubic=True)
    del vacancy[0]
    frames = [cu, alloy, vacancy]
    for position, atoms in enumerate(frames):
        atoms.calc = EMT()
        results = {'energy': atoms.get_potential_energy(), 'forces': atoms.get_forces(), 'stress': atoms.get_stress()}
        atoms.calc = SinglePointCalculator(atoms, **results)
        atoms.info[INDEX_KEY] = position
        atoms.info[METHOD_KEY] = 'rattle'
    return frames


def count_sets() -> int:
    return orm.QueryBuilder().append(ConfigurationSetData).count()


def test_entry_point():
    assert DataFactory('mlmat.configurations') is ConfigurationSetData


def test_round_trip_frames_node_store_atoms():
    frames = labelled_frames()
    node = ConfigurationSetData(frames, calculator={'name': 'emt', 'parameters': {}})
    node.store()
    loaded = orm.load_node(node.pk)
    assert isinstance(loaded, ConfigurationSetData)
    back = loaded.get_atoms()
    assert len(back) == len(frames) == loaded.count == len(loaded)
    for original, atoms in zip(frames, back, strict=True):
        assert atoms.get_chemical_symbols() == original.get_chemical_symbols()
        np.testing.assert_allclose(atoms.positions, original.positions, atol=ATOL, rtol=0)
        np.testing.assert_allclose(atoms.cell.array, original.cell.array, atol=ATOL, rtol=0)
        assert (atoms.pbc == original.pbc).all()
        assert atoms.get_potential_energy() == pytest.approx(original.get_potential_energy(), abs=ATOL, rel=0)
        np.testing.assert_allclose(atoms.get_forces(), original.get_forces(), atol=ATOL, rtol=0)
        np.testing.assert_allclose(atoms.get_stress(), original.get_stress(), atol=ATOL, rtol=0)
        assert atoms.info[INDEX_KEY] == original.info[INDEX_KEY]
        assert atoms.info[METHOD_KEY] == 'rattle'
    assert loaded.calculator == {'name': 'emt', 'parameters': {}}
    assert loaded.label_keys == ['energy', 'forces', 'stress']


def test_get_atoms_info_is_plain_python_and_survives_a_round_trip():
    """ASE's extxyz reader gives numpy scalars in ``info``; a set's frames hold Python numbers instead (arrays stay
    arrays), and the frames make a byte-identical set again."""
    import json

    frames = labelled_frames()
    frames[0].info.update(temperature_K=np.float64(300.5), tags=np.array([1, 2, 3]), flag=True, note='hot')
    node = ConfigurationSetData(frames)
    back = node.get_atoms()
    info = back[0].info
    scalars = {key: value for key, value in info.items() if key != 'tags'}
    assert json.loads(json.dumps(scalars)) == scalars
    assert type(info[INDEX_KEY]) is int and type(info['temperature_K']) is float and info['temperature_K'] == 300.5
    assert info['tags'].tolist() == [1, 2, 3] and info['flag'] is True and info['note'] == 'hot'
    assert ConfigurationSetData(back).sha256 == node.sha256


def test_attributes():
    frames = labelled_frames()
    node = ConfigurationSetData(frames).store()
    attributes = node.base.attributes
    assert node.count == 3
    assert attributes.get('num_atoms_total') == 4 + 4 + 3
    assert node.species == ['Au', 'Cu']
    assert attributes.get('formulas') == ['Cu4', 'Au2Cu2', 'Au3']
    assert node.label_keys == ['energy', 'forces', 'stress']
    assert attributes.get('composition_range') == {'Au': [0.0, 1.0], 'Cu': [0.0, 1.0]}
    assert attributes.get('units') == UNITS
    assert attributes.get('filename') == ConfigurationSetData.FILENAME
    assert node.calculator is None
    assert node.excluded == []
    assert attributes.get('n_excluded') == 0
    content = node.get_content()
    assert node.sha256 == hashlib.sha256(content).hexdigest()
    assert content.decode() == extxyz_string(frames)
    summary = node.summary()
    assert summary['n_configurations'] == 3
    assert summary['n_atoms_total'] == 11
    assert summary['uuid'] == node.uuid


def test_composition_range_of_an_alloy_series():
    frames = []
    for n_au in (1, 2, 3):
        atoms = bulk('Cu', 'fcc', a=3.8, cubic=True)
        atoms.set_chemical_symbols(['Au'] * n_au + ['Cu'] * (4 - n_au))
        frames.append(atoms)
    node = ConfigurationSetData(frames)
    assert node.base.attributes.get('composition_range') == {'Au': [0.25, 0.75], 'Cu': [0.25, 0.75]}
    assert node.label_keys == []  # no calculator: unlabelled


def test_label_keys_are_those_every_frame_carries():
    frames = labelled_frames()
    cluster = Atoms('Cu3', positions=[[0, 0, 0], [2.5, 0, 0], [1.2, 2.1, 0]], pbc=False)
    cluster.calc = EMT()
    cluster.calc = SinglePointCalculator(cluster, energy=cluster.get_potential_energy(), forces=cluster.get_forces())
    node = ConfigurationSetData([*frames, cluster])
    assert node.label_keys == ['energy', 'forces']
    unlabelled = ConfigurationSetData([*frames, bulk('Cu')])
    assert unlabelled.label_keys == []


def test_excluded_records_are_kept():
    excluded = [
        {'index': 3, 'formula': 'Cu2', 'reason': 'invalid configuration: atoms closer than 0.5 Å'},
        {'index': 7, 'formula': 'Au4', 'reason': 'calculator failed: RuntimeError: SCF did not converge'},
    ]
    node = ConfigurationSetData(labelled_frames(), excluded=excluded).store()
    loaded = orm.load_node(node.pk)
    assert loaded.excluded == excluded
    assert loaded.base.attributes.get('n_excluded') == 2
    assert loaded.summary()['excluded'] == excluded


def test_from_file(tmp_path):
    path = tmp_path / 'train.extxyz'
    frames = labelled_frames()
    write_extxyz(str(path), frames)
    node = ConfigurationSetData.from_file(path, calculator={'name': 'emt'}, excluded=[{'index': 9}]).store()
    raw = path.read_bytes()
    assert node.get_content() == raw
    assert node.sha256 == hashlib.sha256(raw).hexdigest()
    assert node.count == 3
    assert node.species == ['Au', 'Cu']
    assert node.calculator == {'name': 'emt'}
    assert node.excluded == [{'index': 9}]
    back = node.get_atoms()
    for original, atoms in zip(frames, back, strict=True):
        assert atoms.get_potential_energy() == pytest.approx(original.get_potential_energy(), abs=ATOL, rel=0)
    out = tmp_path / 'out.extxyz'
    node.write_extxyz(out)
    assert out.read_bytes() == raw


def test_content_is_stored_byte_for_byte():
    content = extxyz_string(labelled_frames()).encode() + b'\n'  # a trailing blank line is kept as is
    node = ConfigurationSetData(content=content).store()
    assert node.get_content() == content
    assert node.sha256 == hashlib.sha256(content).hexdigest()


def test_empty_set():
    node = ConfigurationSetData([]).store()
    assert node.count == 0
    assert node.get_atoms() == []
    assert node.species == []
    assert node.label_keys == []
    assert node.base.attributes.get('composition_range') == {}
    assert node.get_content() == b''


def test_frames_or_content_required():
    with pytest.raises(ValueError, match='give either `frames` or `content`'):
        ConfigurationSetData()


def good_text() -> str:
    return extxyz_string(labelled_frames())


CORRUPT = {
    'truncated': lambda: good_text()[: len(good_text()) // 2],
    'truncated-mid-line': lambda: good_text()[:-25],
    'garbage': lambda: 'Lorem ipsum dolor sit amet\nconsectetur adipiscing elit\n',
    'empty': lambda: '',
    'blank': lambda: '\n  \n\t\n',
    'binary': lambda: bytes(range(256)) * 4,
    'png-header': lambda: b'\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR' + bytes(64),
    'bad-count': lambda: '3\nProperties=species:S:1:pos:R:3\nCu 0 0 0\nCu 2 0 0\n',
    'bad-number': lambda: '2\nProperties=species:S:1:pos:R:3\nCu 0 0 0\nCu 2 zero 0\n',
}


@pytest.mark.parametrize('kind', sorted(CORRUPT))
def test_from_file_refuses_corrupt_files(tmp_path, kind):
    content = CORRUPT[kind]()
    path = tmp_path / 'broken.extxyz'
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = count_sets()
    nodes_before = orm.QueryBuilder().append(orm.Node).count()
    with pytest.raises(CorruptFileError) as excinfo:
        ConfigurationSetData.from_file(path)
    message = str(excinfo.value)
    assert message.startswith(('broken.extxyz ', 'broken.extxyz, configuration '))
    assert any(phrase in message for phrase in ('cannot be read as extxyz', 'not a text extxyz', 'no configuration'))
    assert count_sets() == before
    assert orm.QueryBuilder().append(orm.Node).count() == nodes_before


@pytest.mark.parametrize(
    ('content', 'phrase'),
    [
        (b'', 'holds no configuration (empty file)'),
        (b'\xff\xfe\x00garbage', 'is not a text extxyz file'),
        (b'hello\nworld\n', "data.extxyz, configuration 0, line 1 (expected its atom count, got 'hello')"),
    ],
)
def test_corrupt_messages_are_clear(content, phrase):
    with pytest.raises(CorruptFileError, match=re.escape(phrase)) as excinfo:
        parse_extxyz_bytes(content, name='data.extxyz')
    assert str(excinfo.value).startswith(('data.extxyz ', 'data.extxyz, configuration '))


def test_an_unreadable_frame_is_named():
    """A file cut off in its third frame, or with an unknown element there, is refused naming that frame."""
    text = good_text()
    n_frames = len(labelled_frames())
    assert n_frames >= 3
    lines = text.splitlines(keepends=True)
    starts = [0]  # the atom-count line of each frame
    while starts[-1] + int(lines[starts[-1]]) + 2 < len(lines):
        starts.append(starts[-1] + int(lines[starts[-1]]) + 2)
    cut = ''.join(lines[: starts[2] + 3])  # frame 2's count, comment and one atom line
    with pytest.raises(CorruptFileError, match=r'^data\.extxyz, configuration 2 \(cut off: 1 of its \d+ atom lines\)'):
        parse_extxyz_bytes(cut.encode(), name='data.extxyz')
    # ASE checks every count line before it reads a frame: the layout is walked to find the frame all the same
    bad_count = ''.join([*lines[: starts[2]], 'abc\n', *lines[starts[2] + 1 :]])
    with pytest.raises(CorruptFileError, match=rf'^data\.extxyz, configuration 2, line {starts[2] + 1} \(expected its'):
        parse_extxyz_bytes(bad_count.encode(), name='data.extxyz')
    missing_atom = ''.join([*lines[: starts[1] + 2], *lines[starts[1] + 3 :]])  # frame 1 lacks its first atom line
    with pytest.raises(CorruptFileError, match=r'^data\.extxyz, configuration 1, line \d+ \(an atom line with too few'):
        parse_extxyz_bytes(missing_atom.encode(), name='data.extxyz')
    atom = starts[1] + 2  # the first atom line of frame 1
    unknown = ''.join([*lines[:atom], 'Xx' + lines[atom][2:], *lines[atom + 1 :]])
    with pytest.raises(
        CorruptFileError, match=r'^data\.extxyz, configuration 1: cannot be read as extxyz: unknown ele'
    ):
        parse_extxyz_bytes(unknown.encode(), name='data.extxyz')


def test_from_file_refuses_unphysical_configurations(tmp_path):
    frames = labelled_frames()
    close = Atoms('Cu2', positions=[[0, 0, 0], [0.3, 0, 0]], cell=[5, 5, 5], pbc=True)
    path = tmp_path / 'close.extxyz'
    write_extxyz(str(path), [frames[0], close])
    before = count_sets()
    with pytest.raises(CorruptFileError, match=r'close\.extxyz, configuration 1: atoms closer than 0\.5 Å'):
        ConfigurationSetData.from_file(path)
    assert count_sets() == before
    node = ConfigurationSetData.from_file(path, validate=False)
    assert node.count == 2


def test_from_file_refuses_nan_positions(tmp_path):
    path = tmp_path / 'nan.extxyz'
    path.write_text('2\nLattice="5 0 0 0 5 0 0 0 5" Properties=species:S:1:pos:R:3 pbc="T T T"\nCu 0 0 0\nCu nan 1 1\n')
    with pytest.raises(CorruptFileError, match='configuration 0: configuration has non-finite positions'):
        ConfigurationSetData.from_file(path)


def test_from_file_of_a_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        ConfigurationSetData.from_file(tmp_path / 'absent.extxyz')


def test_parse_extxyz_bytes_of_good_content():
    frames = parse_extxyz_bytes(good_text().encode(), name='x')
    assert [frame.get_chemical_formula() for frame in frames] == ['Cu4', 'Au2Cu2', 'Au3']
    assert isinstance(frames[0].calc, SinglePointCalculator)
    assert parse_extxyz_bytes(io.BytesIO(good_text().encode()).getvalue())[2].info[INDEX_KEY] == 2


def test_query_on_attributes():
    marker = 'mlmat-test-query'
    small = ConfigurationSetData(labelled_frames()[:1])
    small.label = marker
    small.store()
    large = ConfigurationSetData(labelled_frames())
    large.label = marker
    large.store()
    gold = ConfigurationSetData([bulk('Au', 'fcc', a=4.08)])
    gold.label = marker
    gold.store()

    def pks(**filters):
        builder = orm.QueryBuilder().append(ConfigurationSetData, filters={'label': marker, **filters}, project='id')
        return sorted(builder.all(flat=True))

    assert pks(**{'attributes.count': 3}) == [large.pk]
    assert pks(**{'attributes.count': {'<': 3}}) == sorted([small.pk, gold.pk])
    assert pks(**{'attributes.count': {'>=': 1}}) == sorted([small.pk, large.pk, gold.pk])
    assert pks(**{'attributes.species': {'contains': ['Cu']}}) == sorted([small.pk, large.pk])
    assert pks(**{'attributes.label_keys': {'contains': ['stress']}}) == sorted([small.pk, large.pk])


@pytest.mark.parametrize(
    ('labels', 'message'),
    [
        ({'energy': -1.0, 'forces': np.full((4, 3), np.nan)}, 'forces is not finite (NaN or inf)'),
        ({'energy': float('inf')}, 'energy is not finite'),
        ({'energy': -1.0, 'forces': np.zeros((3, 3))}, 'forces has shape (3, 3), expected (4, 3)'),
    ],
)
def test_a_set_built_from_frames_refuses_unusable_labels(labels, message):
    """As a file does on import: a NaN label (which training would read as a diverging learning rate) or forces of
    the wrong shape are refused when the set is made, naming the configuration."""
    good, bad = bulk('Cu', 'fcc', a=3.61, cubic=True), bulk('Cu', 'fcc', a=3.65, cubic=True)
    good.calc = SinglePointCalculator(good, energy=-1.0, forces=np.zeros((4, 3)))
    bad.calc = SinglePointCalculator(bad, **labels)
    with pytest.raises(ValueError, match=re.escape(f'configuration 1 (Cu4): {message}')):
        ConfigurationSetData([good, bad])
    big = bulk('Cu', 'fcc', a=3.61, cubic=True)
    big.calc = SinglePointCalculator(big, energy=-1.0, forces=np.full((4, 3), 2e4))  # beyond LABEL_LIMITS
    assert ConfigurationSetData([good, big]).count == 2  # magnitudes are for files to check, not for stored labels


def test_get_frame_is_the_frame_of_get_atoms():
    """``get_frame(i)`` parses one frame only (``dataset used-by`` on a set of 30,000 read all of them)."""
    node = ConfigurationSetData(labelled_frames())
    frames = node.get_atoms()
    for index, expected in enumerate(frames):
        frame = node.get_frame(index)
        assert frame.get_chemical_symbols() == expected.get_chemical_symbols() and frame.info == expected.info
        np.testing.assert_array_equal(frame.positions, expected.positions)
        np.testing.assert_array_equal(frame.get_forces(), expected.get_forces())
        assert frame.get_potential_energy() == expected.get_potential_energy()
    for outside in (-1, len(frames)):
        with pytest.raises(IndexError, match=f'configuration {outside} is outside the set of 3'):
            node.get_frame(outside)


def test_verdi_data_mlmat_list_shows_each_set():
    from click.testing import CliRunner

    from aiida_mlmat.cli.verdi import data_mlmat

    labelled = ConfigurationSetData(labelled_frames(), calculator={'name': 'emt', 'parameters': {}}, label='emt set')
    labelled.store()
    bare = ConfigurationSetData([Atoms('Cu', cell=[3, 3, 3], pbc=True)], label='unlabelled').store()
    result = CliRunner().invoke(data_mlmat, ['list', '--limit', '2'])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines()[1:]]
    assert rows[0] == [str(bare.pk), '1', 'Cu', '-', '-', 'unlabelled']  # newest first
    assert rows[1] == [str(labelled.pk), '3', 'Au-Cu', 'energy,forces,stress', 'emt', 'emt', 'set']


def _same_frames(left: list[Atoms], right: list[Atoms]) -> None:
    assert len(left) == len(right)
    for a, b in zip(left, right, strict=True):
        assert a.get_chemical_symbols() == b.get_chemical_symbols()
        np.testing.assert_allclose(a.positions, b.positions, atol=ATOL)
        np.testing.assert_allclose(a.cell[:], b.cell[:], atol=ATOL)
        assert list(a.pbc) == list(b.pbc)
        assert set(a.calc.results if a.calc else {}) == set(b.calc.results if b.calc else {})
        for key, value in (a.calc.results if a.calc else {}).items():
            np.testing.assert_allclose(value, b.calc.results[key], atol=ATOL)


def _mixed_frames() -> list[Atoms]:
    """The labelled frames, an unlabelled one without an index, and a non-periodic cluster without stress."""
    frames = labelled_frames()
    plain = bulk('Au', 'fcc', a=4.08, cubic=True)
    plain.rattle(0.02, seed=4)
    cluster = Atoms('Cu3', positions=[[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0]], cell=[10, 10, 10], pbc=False)
    cluster.calc = EMT()
    results = {'energy': cluster.get_potential_energy(), 'forces': cluster.get_forces()}
    cluster.calc = SinglePointCalculator(cluster, **results)
    return [*frames, plain, cluster]


SUMMARY_KEYS = ('count', 'num_atoms_total', 'species', 'formulas', 'label_keys', 'composition_range')


@pytest.mark.parametrize('groups', [[[0, 2]], [[4, 3, 3, 0]], [[1], [0, 1, 2, 3, 4]]])
def test_subsets_hold_the_frames_and_summaries_of_sets_built_from_them(groups):
    frames = _mixed_frames()
    whole = ConfigurationSetData(frames).store()
    subsets = whole.subsets(groups, calculator={'name': 'emt', 'parameters': {}})
    assert len(subsets) == len(groups)
    for group, subset in zip(groups, subsets, strict=True):
        chosen = [frames[position] for position in group]
        _same_frames(subset.get_atoms(), chosen)
        expected = ConfigurationSetData(chosen)
        for key in SUMMARY_KEYS:
            assert subset.base.attributes.get(key) == expected.base.attributes.get(key), key
        assert subset.calculator == {'name': 'emt', 'parameters': {}}
        assert subset.base.attributes.get('sha256') == hashlib.sha256(subset.get_content()).hexdigest()
        subset.store()
    # the cluster has no stress: a subset without it has the label every one of its frames carries
    assert 'stress' not in whole.label_keys
    assert whole.subsets([[0, 2]])[0].label_keys == ['energy', 'forces', 'stress']


def test_an_empty_subset():
    (empty,) = ConfigurationSetData(labelled_frames()).store().subsets([[]])
    assert (empty.count, empty.get_content(), empty.label_keys) == (0, b'', [])


def unnumbered_text() -> str:
    """The labelled frames' extxyz without their ``mlmat_index``."""
    frames = labelled_frames()
    for frame in frames:
        del frame.info[INDEX_KEY]
    return extxyz_string(frames)


def test_subsets_copy_frames_byte_for_byte_and_number_them():
    first, second = unnumbered_text().encode(), unnumbered_text().encode().replace(b'Cu', b'Au')
    whole = ConfigurationSetData(content=first + second).store()
    assert whole.count == 6
    (copy,) = whole.subsets([[3, 4, 5, 0, 1, 2]])
    assert copy.get_content() == second + first
    (numbered,) = whole.subsets([[4, 0, 4]], numbered=True)
    assert [frame.info[INDEX_KEY] for frame in numbered.get_atoms()] == [4, 0, 4]
    assert numbered.count == 3
    # a frame that records its index already keeps it
    again = ConfigurationSetData(numbered.get_atoms()).store()
    (renumbered,) = again.subsets([[2, 1]], numbered=True)
    assert [frame.info[INDEX_KEY] for frame in renumbered.get_atoms()] == [4, 0]


@pytest.mark.parametrize('ending', ['crlf', 'no final newline', 'trailing blank lines'])
def test_subsets_of_files_with_other_line_endings(ending):
    text = unnumbered_text() + unnumbered_text().replace('Cu', 'Au')
    if ending == 'crlf':
        text = text.replace('\n', '\r\n')
    elif ending == 'no final newline':
        text = text.rstrip('\n')
    else:
        text = text + '\n\n'
    whole = ConfigurationSetData(content=text.encode()).store()
    (copy,) = whole.subsets([[4, 4, 0]], numbered=True)
    frames = copy.get_atoms()
    assert [frame.get_chemical_symbols()[0] for frame in frames] == ['Au', 'Au', 'Cu']
    assert [frame.info[INDEX_KEY] for frame in frames] == [4, 4, 0]
    _same_frames(frames, [whole.get_atoms()[i] for i in (4, 4, 0)])


def test_subsets_of_a_plain_xyz_file_are_parsed_and_written():
    """A comment line without ``Properties=`` is no key-value line to add an index to: the frames are written anew."""
    text = '2\nsome words\nCu 0 0 0\nCu 0 0 2.5\n1\nmore words\nAu 0 0 0\n'
    whole = ConfigurationSetData(content=text.encode()).store()
    (copy,) = whole.subsets([[1, 0]], numbered=True)
    assert [frame.get_chemical_formula() for frame in copy.get_atoms()] == ['Au', 'Cu2']
    assert [frame.info[INDEX_KEY] for frame in copy.get_atoms()] == [1, 0]


def test_subsets_refuse_a_position_outside_the_set():
    whole = ConfigurationSetData(labelled_frames()).store()
    with pytest.raises(IndexError, match='configuration 3 is outside the set of 3'):
        whole.subsets([[0, 3]])


def test_extended_appends_frames_after_the_bytes_of_the_set():
    frames = _mixed_frames()
    first = ConfigurationSetData(frames[:3]).store()
    merged = first.extended(frames[3:], calculator={'name': 'emt'}, excluded=[{'index': 9, 'reason': 'x'}])
    assert merged.get_content().startswith(first.get_content())
    _same_frames(merged.get_atoms(), frames)
    expected = ConfigurationSetData(frames)
    for key in SUMMARY_KEYS:
        assert merged.base.attributes.get(key) == expected.base.attributes.get(key)
    assert merged.excluded == [{'index': 9, 'reason': 'x'}]
    assert ConfigurationSetData([]).extended(frames[:1]).count == 1
    assert first.extended([]).count == 3
    with pytest.raises(ValueError, match='configuration 0'):
        bad = frames[0].copy()
        bad.calc = SinglePointCalculator(bad, energy=float('nan'))
        first.extended([bad])


@pytest.mark.parametrize('split', [0, 1, 3, 4, 5], ids=lambda split: f'first {split}')
@pytest.mark.parametrize('stored', [True, False], ids=['stored', 'unstored'])
def test_extended_summarises_without_reading_the_set_again(monkeypatch, split, stored):
    """The set's summary attributes are merged with those of the new frames: the set's file is copied, not read, and
    every attribute is what a set built from all the frames has (species only on one side, labels only on one)."""
    frames = _mixed_frames()
    first = ConfigurationSetData(frames[:split])
    first = first.store() if stored else first
    expected = ConfigurationSetData(frames)

    def unread(*args, **kwargs):
        raise AssertionError('the set was read again')

    monkeypatch.setattr(configurations, 'scan_extxyz_bytes', unread)
    monkeypatch.setattr(ConfigurationSetData, 'get_atoms', unread)
    monkeypatch.setattr(ConfigurationSetData, 'iter_atoms', unread)
    merged = first.extended(frames[split:])
    for key in SUMMARY_KEYS:
        assert merged.base.attributes.get(key) == expected.base.attributes.get(key), key
    monkeypatch.undo()
    _same_frames(merged.get_atoms(), frames)
    assert merged.store().count == len(frames)


def test_extended_after_frames_without_atoms_summarises_as_a_scan():
    """A frame without atoms has no composition: merged, it widens no element's range (a scan leaves it out)."""
    cu = bulk('Cu', 'fcc', a=3.61, cubic=True)
    for first, then in (([Atoms()], [cu]), ([cu], [Atoms()]), ([Atoms(), cu], [bulk('Au', 'fcc', a=4.08)])):
        merged = ConfigurationSetData(first).extended(then)
        scanned = ConfigurationSetData(content=merged.get_content())
        for key in SUMMARY_KEYS:
            assert merged.base.attributes.get(key) == scanned.base.attributes.get(key), key


def test_labels_outside_the_calculator_are_counted_and_checked():
    """Frames with ``info['energy']`` or ``arrays['forces']`` (older readers, frames made by hand) are written with
    those labels, and ASE reads them back as labels: the set summarises and checks them as such."""
    frame = bulk('Cu', 'fcc', a=3.61, cubic=True)
    frame.info['energy'] = -3.5
    frame.arrays['forces'] = np.zeros((len(frame), 3))
    made = ConfigurationSetData([frame])
    assert made.label_keys == ['energy', 'forces']
    scanned = ConfigurationSetData(content=made.get_content())
    assert all(made.base.attributes.get(key) == scanned.base.attributes.get(key) for key in SUMMARY_KEYS)
    assert made.get_atoms()[0].get_potential_energy() == -3.5
    broken = bulk('Cu', 'fcc', a=3.61, cubic=True)
    broken.info['energy'] = float('nan')
    with pytest.raises(ValueError, match=r'configuration 1 \(Cu4\): .*energy'):
        ConfigurationSetData([frame, broken])
    twice = bulk('Cu', 'fcc', a=3.61, cubic=True)  # ASE's writer refuses a label given twice with a bare KeyError
    twice.calc = SinglePointCalculator(twice, energy=-3.0)
    twice.info['energy'] = -3.0
    with pytest.raises(ValueError, match=r'configuration 1 \(Cu4\): a label both in its calculator results and in'):
        ConfigurationSetData([frame, twice])


def test_subsets_read_only_the_chosen_frames(monkeypatch):
    """A small selection from a large set reads (parses) its own frames, not the set's others."""
    whole = ConfigurationSetData(_mixed_frames()).store()
    read = []
    iread_bytes = configurations._iread_bytes

    def counting(content):
        for frame in iread_bytes(content):
            read.append(frame.get_chemical_formula())
            yield frame

    monkeypatch.setattr(configurations, '_iread_bytes', counting)
    (one, two) = whole.subsets([[3], [1, 3]], numbered=True)
    assert read == [_mixed_frames()[1].get_chemical_formula(), 'Au4']  # each chosen frame once, in set order
    monkeypatch.undo()
    assert [frame.info[INDEX_KEY] for frame in two.get_atoms()] == [1, 3]
    assert one.base.attributes.get('formulas') == ['Au4'] and one.label_keys == []


def test_iter_atoms_gives_what_get_atoms_gives():
    whole = ConfigurationSetData(_mixed_frames()).store()
    streamed = list(whole.iter_atoms())
    _same_frames(streamed, whole.get_atoms())
    assert [frame.info for frame in streamed] == [frame.info for frame in whole.get_atoms()]
    assert list(ConfigurationSetData([]).iter_atoms()) == []


def _with_comment_suffix(text: str, suffix: str) -> str:
    """``text`` with ``suffix`` at the end of its first frame's comment line (as another code may write it)."""
    lines = text.splitlines(keepends=True)
    lines[1] = lines[1].rstrip('\n') + suffix + '\n'
    return ''.join(lines)


@pytest.mark.parametrize(
    ('suffix', 'value'),
    [(' note="unterminated', 'unterminated'), (' note="a\rb"', 'a\rb')],
    ids=['open quote at the end', 'carriage return inside a value'],
)
def test_subsets_of_comment_lines_from_other_codes_read_as_the_set_does(suffix, value):
    """A frame's index goes first on its comment line, where no quote can be open; a lone carriage return inside a
    value ends no line (as for ``get_atoms``)."""
    whole = ConfigurationSetData(content=_with_comment_suffix(unnumbered_text(), suffix).encode()).store()
    assert whole.get_atoms()[0].info['note'] == value
    (copy,) = whole.subsets([[0, 1]], numbered=True)
    expected = [{**frame.info, INDEX_KEY: position} for position, frame in enumerate(whole.get_atoms()[:2])]
    assert [frame.info for frame in copy.get_atoms()] == expected
    assert expected[0]['note'] == value and 'note' not in expected[1]
    assert [frame.info for frame in whole.iter_atoms()] == [frame.info for frame in whole.get_atoms()]


def test_extended_after_a_file_with_a_blank_line_between_frames():
    """ASE stops at a blank line: such a stored file is written anew, not glued to, so every frame stays readable."""
    content = (extxyz_string(labelled_frames()[:2]) + '\n' + extxyz_string(labelled_frames()[2:])).encode()
    first = ConfigurationSetData(content=content).store()
    assert first.count == 2
    merged = first.extended(_mixed_frames()[3:])
    assert merged.count == len(merged.get_atoms()) == len(merged.base.attributes.get('formulas')) == 4


def test_from_file_refuses_a_file_ase_reads_only_in_part(tmp_path):
    """ASE stops at a blank line between frames and returns those before it: the import is refused, naming where."""
    path = tmp_path / 'gap.extxyz'
    path.write_text(extxyz_string(labelled_frames()[:2]) + '\n' + extxyz_string(labelled_frames()[2:]))
    before = count_sets()
    with pytest.raises(
        CorruptFileError, match=r'gap.extxyz, configuration 2, line \d+ \(blank.*reads only the first 2'
    ):
        ConfigurationSetData.from_file(path)
    assert count_sets() == before
    trailing = tmp_path / 'trailing.extxyz'
    trailing.write_text(extxyz_string(labelled_frames()) + '\n\n')
    assert ConfigurationSetData.from_file(trailing).count == 3


def test_a_file_with_vec_lines_is_read_whole_and_copied_by_its_bytes(tmp_path):
    """``VEC1``-``VEC3`` lines after a frame's atoms (another way to give the cell) belong to that frame."""
    cell = 'VEC1 3.6 0 0\nVEC2 0 3.6 0\nVEC3 0 0 3.6\n'
    frame = '2\nProperties=species:S:1:pos:R:3 pbc="T T T"\nCu 0 0 0\nCu 1.8 1.8 0\n' + cell
    path = tmp_path / 'vec.extxyz'
    path.write_text(frame + frame.replace('1.8 1.8 0', '0 1.8 1.8'))
    whole = ConfigurationSetData.from_file(path).store()
    assert whole.count == 2
    np.testing.assert_allclose(whole.get_atoms()[1].cell[:], np.eye(3) * 3.6)
    (copy,) = whole.subsets([[1, 0]], numbered=True)
    frames = copy.get_atoms()
    assert [frame.info[INDEX_KEY] for frame in frames] == [1, 0]
    np.testing.assert_allclose(frames[0].positions[1], [0, 1.8, 1.8])
    np.testing.assert_allclose(frames[0].cell[:], np.eye(3) * 3.6)


def test_messages_count_lines_as_ase_does(tmp_path):
    """A carriage return inside a value ends no line (the fault is named in the frame that has it); a blank first
    line is named."""
    text = unnumbered_text()
    broken = _with_comment_suffix(text, ' note="a\rb"').replace('\nAu ', '\nQq ', 1)
    path = tmp_path / 'x.extxyz'
    path.write_text(broken, newline='')
    with pytest.raises(CorruptFileError) as refused:
        ConfigurationSetData.from_file(path)
    assert str(refused.value) == "x.extxyz, configuration 1: cannot be read as extxyz: unknown element 'Qq'"
    path.write_text('\n' + text)
    with pytest.raises(CorruptFileError, match=r'configuration 0, line 1 \(blank.*holds no configuration'):
        ConfigurationSetData.from_file(path)


def test_a_file_that_is_not_utf8_is_refused_naming_the_byte(tmp_path):
    path = tmp_path / 'latin.extxyz'
    content = unnumbered_text().encode()
    path.write_bytes(content[:100] + b'\xe9' + content[100:])
    with pytest.raises(CorruptFileError, match=r'latin\.extxyz is not a text extxyz file: .* at byte 100$'):
        ConfigurationSetData.from_file(path)
