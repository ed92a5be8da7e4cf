"""Calcfunctions of the reference workflow: seeds, splitting into chunks and collecting the labels."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from aiida import orm
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from aiida_mlmat.common.constants import INDEX_KEY, METHOD_KEY
from aiida_mlmat.data.configurations import ConfigurationSetData
from aiida_mlmat.workflows.functions import (
    ase_results_to_set,
    build_seed_set,
    collect_labels,
    split_configurations,
    structures_to_set,
)
from aiida_mlmat.workflows.training_functions import stratified_split

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures('aiida_profile')]

EMT_SPEC = {'name': 'emt', 'parameters': {}}


def rattled(n: int, start_index: int | None = None) -> list[Atoms]:
    frames = []
    for position in range(n):
        atoms = bulk('Cu', 'fcc', a=3.61, cubic=True)
        atoms.rattle(0.03, seed=position)
        if start_index is not None:
            atoms.info[INDEX_KEY] = start_index + position
        frames.append(atoms)
    return frames


def labelled(frames: list[Atoms]) -> list[Atoms]:
    out = []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = EMT()
        results = {'energy': atoms.get_potential_energy(), 'forces': atoms.get_forces(), 'stress': atoms.get_stress()}
        atoms.calc = SinglePointCalculator(atoms, **results)
        out.append(atoms)
    return out


def test_build_seed_set():
    node = build_seed_set(orm.List(['Cu', 'Au']))
    assert isinstance(node, ConfigurationSetData)
    assert node.count == 10
    assert node.species == ['Au', 'Cu']
    methods = [atoms.info[METHOD_KEY] for atoms in node.get_atoms()]
    assert methods.count('seed:fcc') == 2
    assert methods.count('seed:B2') == 1


def test_structures_to_set_is_sorted_by_link_label():
    structures = {
        'b': orm.StructureData(ase=bulk('Au', 'fcc', a=4.08)),
        'a': orm.StructureData(ase=bulk('Cu', 'fcc', a=3.61)),
    }
    node = structures_to_set(**structures)
    assert node.base.attributes.get('formulas') == ['Cu', 'Au']


@pytest.mark.parametrize(('n', 'size', 'sizes'), [(7, 3, [3, 3, 1]), (6, 3, [3, 3]), (2, 50, [2]), (3, 1, [1, 1, 1])])
def test_split_configurations(n, size, sizes):
    chunks = split_configurations(ConfigurationSetData(rattled(n)), orm.Int(size))
    assert sorted(chunks) == [f'chunk_{number:04d}' for number in range(len(sizes))]
    assert [chunks[key].count for key in sorted(chunks)] == sizes
    indices = [atoms.info[INDEX_KEY] for key in sorted(chunks) for atoms in chunks[key].get_atoms()]
    assert indices == list(range(n))


def test_split_keeps_existing_indices_and_positions():
    frames = rattled(4, start_index=10)
    chunks = split_configurations(ConfigurationSetData(frames), orm.Int(3))
    back = [atoms for key in sorted(chunks) for atoms in chunks[key].get_atoms()]
    assert [atoms.info[INDEX_KEY] for atoms in back] == [10, 11, 12, 13]
    for original, atoms in zip(frames, back, strict=True):
        np.testing.assert_allclose(atoms.positions, original.positions, atol=1e-8)


def test_collect_labels_merges_sorts_and_records_exclusions():
    frames = labelled(rattled(7, start_index=0))
    first = ConfigurationSetData(
        [frames[0], frames[1]], excluded=[{'index': 2, 'formula': 'Cu4', 'reason': 'calculator failed: boom'}]
    )
    second = ConfigurationSetData([frames[5], frames[3], frames[4]])
    failed = ConfigurationSetData(rattled(1, start_index=6))
    result = collect_labels(
        orm.Dict(EMT_SPEC),
        orm.Dict({'failed_chunk_0002': 'LabelBaseWorkChain<1> failed with exit status 320'}),
        labelled_chunk_0000=first,
        labelled_chunk_0001=second,
        failed_chunk_0002=failed,
    )
    assert result.count == 5
    back = result.get_atoms()
    assert [atoms.info[INDEX_KEY] for atoms in back] == [0, 1, 3, 4, 5]
    for atoms in back:
        original = frames[atoms.info[INDEX_KEY]]
        assert atoms.get_potential_energy() == pytest.approx(original.get_potential_energy(), abs=1e-8)
    assert result.excluded == [
        {'index': 2, 'formula': 'Cu4', 'reason': 'calculator failed: boom'},
        {'index': 6, 'formula': 'Cu4', 'reason': 'LabelBaseWorkChain<1> failed with exit status 320'},
    ]
    assert result.calculator == EMT_SPEC
    assert result.label_keys == ['energy', 'forces', 'stress']


def test_collected_set_is_the_set_of_the_sorted_frames_copied_not_parsed(monkeypatch):
    """The collected set has the bytes and every summary attribute of a set built from the sorted frames; the
    chunks are never parsed whole into ASE objects."""
    frames = labelled(rattled(9, start_index=0))
    frames[4].symbols[0] = 'Au'  # a second species and a composition range
    frames[4].calc = SinglePointCalculator(frames[4], **frames[4].calc.results)
    chunks = {
        'labelled_chunk_0000': ConfigurationSetData([frames[6], frames[2], frames[0]]),
        'labelled_chunk_0001': ConfigurationSetData([frames[1], frames[8]]),
        'labelled_chunk_0002': ConfigurationSetData([frames[7], frames[4], frames[3], frames[5]]),
    }
    for node in chunks.values():
        node.store()  # as in the workflow: attribute reads and content come from stored nodes

    def refuse(self):
        raise AssertionError('a chunk was parsed whole')

    monkeypatch.setattr(ConfigurationSetData, 'get_atoms', refuse)
    result = collect_labels(orm.Dict(EMT_SPEC), orm.Dict({}), **chunks)
    monkeypatch.undo()
    expected = ConfigurationSetData(frames, calculator=EMT_SPEC)
    assert result.get_content() == expected.get_content()
    for key in ('count', 'num_atoms_total', 'species', 'formulas', 'label_keys', 'composition_range', 'sha256'):
        assert result.base.attributes.get(key) == expected.base.attributes.get(key), key
    assert result.species == ['Au', 'Cu'] and result.label_keys == ['energy', 'forces', 'stress']


def test_joined_refuses_a_non_finite_label_naming_the_part_and_configuration():
    frames = labelled(rattled(3, start_index=0))
    good = ConfigurationSetData(frames[:1])
    text = ConfigurationSetData(frames[1:]).get_content().decode()
    energy = f'energy={float(frames[2].get_potential_energy())!r}'
    assert energy in text
    bad = ConfigurationSetData(content=text.replace(energy, 'energy=nan').encode())
    with pytest.raises(ValueError, match=r'part 1, configuration 1 \(Cu4\): .*energy'):
        ConfigurationSetData.joined([good, bad])


def test_joined_refuses_an_index_that_is_no_integer_and_a_part_ase_reads_nothing_of():
    frames = labelled(rattled(2, start_index=0))
    text = ConfigurationSetData(frames).get_content()
    assert text.count(b'mlmat_index=1 ') == 1
    odd = ConfigurationSetData(content=text.replace(b'mlmat_index=1 ', b'mlmat_index=abc '))
    with pytest.raises(ValueError, match="part 1, configuration 1: mlmat_index='abc' is not an integer"):
        ConfigurationSetData.joined([ConfigurationSetData(frames[:1]), odd])
    unread = ConfigurationSetData(content=b'\n' + text)  # ASE stops at a blank first line
    with pytest.raises(ValueError, match=r'part 0 holds \d+ bytes but no configuration ASE can read'):
        ConfigurationSetData.joined([unread])


def test_joined_orders_by_recorded_index_and_keeps_ties_in_part_order():
    frames = labelled(rattled(4))
    frames[0].info[INDEX_KEY] = 3
    frames[1].info[INDEX_KEY] = 1
    # frames 2 and 3 record no index: they sort as 0, in the order of the parts
    parts = [ConfigurationSetData([frames[0], frames[2]]), ConfigurationSetData([frames[1], frames[3]])]
    result = ConfigurationSetData.joined(parts)
    back = result.get_atoms()
    assert [atoms.info.get(INDEX_KEY) for atoms in back] == [None, None, 1, 3]
    np.testing.assert_allclose(back[0].positions, frames[2].positions, atol=1e-8)
    np.testing.assert_allclose(back[1].positions, frames[3].positions, atol=1e-8)
    assert ConfigurationSetData.joined([]).count == 0


def test_collect_labels_default_reason():
    result = collect_labels(
        orm.Dict(EMT_SPEC),
        orm.Dict({}),
        labelled_chunk_0000=ConfigurationSetData(labelled(rattled(1, start_index=0))),
        failed_chunk_0001=ConfigurationSetData(rattled(2, start_index=1)),
    )
    assert [record['index'] for record in result.excluded] == [1, 2]
    assert {record['reason'] for record in result.excluded} == {'the label job failed'}


def test_ase_results_to_set():
    frames = rattled(3)
    reference = labelled(frames)
    nodes = {}
    for index, atoms in enumerate(frames):
        nodes[f'structure_{index}'] = orm.StructureData(ase=atoms)
    for index in (0, 2):
        nodes[f'parameters_{index}'] = orm.Dict(
            {'total_energy': reference[index].get_potential_energy(), 'stress': reference[index].get_stress().tolist()}
        )
        array = orm.ArrayData()
        array.set_array('forces', reference[index].get_forces())
        nodes[f'array_{index}'] = array
    result = ase_results_to_set(
        orm.Dict(EMT_SPEC), orm.Dict({'structure_1': 'CalcJob<5> failed with exit status 300'}), **nodes
    )
    assert result.count == 2
    back = result.get_atoms()
    assert [atoms.info[INDEX_KEY] for atoms in back] == [0, 2]
    for atoms, index in zip(back, (0, 2), strict=True):
        assert atoms.get_potential_energy() == pytest.approx(reference[index].get_potential_energy(), abs=1e-8)
        np.testing.assert_allclose(atoms.get_forces(), reference[index].get_forces(), atol=1e-8)
        np.testing.assert_allclose(atoms.get_stress(), reference[index].get_stress(), atol=1e-8)
    assert result.excluded == [{'index': 1, 'formula': 'Cu4', 'reason': 'CalcJob<5> failed with exit status 300'}]
    assert result.label_keys == ['energy', 'forces', 'stress']


def test_ase_results_with_unusable_labels_are_excluded_not_stored():
    """An aiida-ase job that finished but gave NaN forces or forces of the wrong shape (its energy Dict cannot
    hold a NaN): that configuration is excluded with the reason, the others are kept."""
    frames = rattled(3)
    reference = labelled(frames)
    nodes = {f'structure_{index}': orm.StructureData(ase=atoms) for index, atoms in enumerate(frames)}
    energies = [atoms.get_potential_energy() for atoms in reference]
    forces = [reference[0].get_forces(), reference[1].get_forces() * np.nan, reference[2].get_forces()[:3]]
    for index in range(3):
        nodes[f'parameters_{index}'] = orm.Dict({'total_energy': energies[index]})
        array = orm.ArrayData()
        array.set_array('forces', forces[index])
        nodes[f'array_{index}'] = array
    result = ase_results_to_set(orm.Dict(EMT_SPEC), orm.Dict({}), **nodes)
    assert [atoms.info[INDEX_KEY] for atoms in result.get_atoms()] == [0]
    assert result.excluded == [
        {
            'index': 1,
            'formula': 'Cu4',
            'reason': 'the aiida-ase job gave unusable labels: forces is not finite (NaN or inf)',
        },
        {
            'index': 2,
            'formula': 'Cu4',
            'reason': 'the aiida-ase job gave unusable labels: forces has shape (3, 3), expected (4, 3)',
        },
    ]


def test_subsets_of_a_labelled_set_keep_its_calculator():
    """The splits, bootstrap samples and selections that a potential is trained on say which calculator made their
    labels (their cards and `mlmat provenance` read it), as the whole set does."""
    from aiida_mlmat.workflows.functions import select_configurations
    from aiida_mlmat.workflows.training_functions import bootstrap_sample, split_dataset

    whole = ConfigurationSetData(labelled(rattled(12)), calculator=EMT_SPEC).store()
    splits = split_dataset(whole, orm.Float(0.25), orm.Float(0.25), orm.Int(0))
    assert sorted(splits) == ['test', 'train', 'validation']
    assert sum(split.count for split in splits.values()) == 12
    assert all(split.calculator == EMT_SPEC for split in splits.values())
    sample = bootstrap_sample(splits['train'], orm.Int(1))
    assert sample.count == splits['train'].count and sample.calculator == EMT_SPEC
    descriptors = orm.ArrayData()
    descriptors.set_array('means', np.random.default_rng(0).normal(size=(12, 4)))
    descriptors.base.attributes.set('n_structures', 12)
    selected = select_configurations(whole, descriptors, orm.Int(5), orm.Str('fps'))['selected']
    assert selected.count == 5 and selected.calculator == EMT_SPEC
    # an unlabelled set's subsets stay without one
    assert (
        split_dataset(ConfigurationSetData(rattled(8)), orm.Float(0.25), orm.Float(0.25), orm.Int(0))['test'].calculator
        is None
    )


#: 40 items of five compositions in a scrambled order: 20 Cu, 10 Au, 5 AuCu, 4 AuCu3 and a single Au3Cu.
COMPOSITIONS = [['Cu', 'Au', 'AuCu', 'AuCu3', 'Au3Cu'][k] for k in np.random.default_rng(3).permutation(
    [0] * 20 + [1] * 10 + [2] * 5 + [3] * 4 + [4])]  # fmt: skip


def test_stratified_split_gives_every_composition_its_share_of_each_split():
    """``stratified_split`` of 40 items (20 Cu, 10 Au, 5 AuCu, 4 AuCu3, 1 Au3Cu) with test 0.2 and validation 0.1.

    Totals: round(0.2 * 40) = 8 test, round(0.1 * 40) = 4 validation, 28 train. Within a composition of n members
    the k-th of its shuffled members ranks at k / n, and the lowest ranks go to test, the next to validation (ties
    by composition name). So the rank-0 member of each of the five compositions goes to test, then Cu 1/20, Au and
    Cu at 0.1: test = {Au 2, Au3Cu 1, AuCu 1, AuCu3 1, Cu 3}; then Cu 0.15, Au, AuCu and Cu at 0.2: validation =
    {Au 1, AuCu 1, Cu 2}. Each composition's count in each split is within one of fraction * n, the compositions
    with at least 1 / 0.1 = 10 members (Cu, Au) are in all three splits, these counts are the same for every seed,
    and a seed always gives the same labels while another seed picks other members.
    """
    fractions = {'test': 0.2, 'validation': 0.1, 'train': 0.7}
    labels = stratified_split(COMPOSITIONS, (fractions['test'], fractions['validation']), seed=7)
    assert len(labels) == 40
    assert Counter(labels) == {'train': 28, 'test': 8, 'validation': 4}
    counts = Counter(zip(COMPOSITIONS, labels, strict=True))
    expected = {
        'test': {'Au': 2, 'Au3Cu': 1, 'AuCu': 1, 'AuCu3': 1, 'Cu': 3},
        'validation': {'Au': 1, 'Au3Cu': 0, 'AuCu': 1, 'AuCu3': 0, 'Cu': 2},
        'train': {'Au': 7, 'Au3Cu': 0, 'AuCu': 3, 'AuCu3': 3, 'Cu': 15},
    }
    sizes = Counter(COMPOSITIONS)
    for split, shares in expected.items():
        assert {key: counts[key, split] for key in sizes} == shares, split
        for key, size in sizes.items():
            assert abs(counts[key, split] - fractions[split] * size) <= 1, (key, split)
    for key in ('Cu', 'Au'):
        assert all(counts[key, split] > 0 for split in fractions), key

    assert stratified_split(COMPOSITIONS, (0.2, 0.1), seed=7) == labels
    others = [stratified_split(COMPOSITIONS, (0.2, 0.1), seed=seed) for seed in (8, 9)]
    for other in others:
        assert other != labels
        assert Counter(zip(COMPOSITIONS, other, strict=True)) == counts
    test_members = {frozenset(i for i, label in enumerate(run) if label == 'test') for run in [labels, *others]}
    assert len(test_members) == 3


def test_stratified_split_sizes_at_the_edges():
    """A positive fraction gives at least one item (0.01 of 10 items: 1 test, 1 validation) and a zero fraction
    none (no test, round(0.25 * 12) = 3 validation); labels are one per item, in input order."""
    labels = stratified_split(['Cu'] * 6 + ['Au'] * 4, (0.01, 0.01), seed=0)
    assert Counter(labels) == {'train': 8, 'test': 1, 'validation': 1}
    labels = stratified_split(['Cu'] * 8 + ['Au'] * 4, (0.0, 0.25), seed=0)
    assert Counter(labels) == {'train': 9, 'validation': 3}
    assert Counter(zip(['Cu'] * 8 + ['Au'] * 4, labels, strict=True))['Au', 'validation'] == 1


def test_query_helpers_refuse_arguments_of_the_wrong_kind():
    """A whole set or a PK where a configuration is meant, and a calculator name that is not registered (a typo
    such as ``EMT``), are refused naming the argument, instead of an AttributeError or a silent empty answer."""
    from aiida_mlmat import query

    dataset = ConfigurationSetData(labelled(rattled(2))).store()
    with pytest.raises(TypeError, match=r'configuration: expected an ase.Atoms or \(ConfigurationSetData, index\)'):
        query.potentials_trained_on(dataset)
    with pytest.raises(TypeError, match='got int'):
        query.potentials_trained_on(dataset.pk)
    assert query.potentials_trained_on((dataset, 0)) == []
    with pytest.raises(ValueError, match=r'calculator: `EMT` is not a registered name \(.*emt'):
        query.potentials_trained_with('EMT')
    assert query.potentials_trained_with('emt', {'no': 'such parameters'}) == []
