"""``mlmat.descriptors`` nodes: one array of every atom's features plus offsets, read back per structure; nodes of
the earlier layout (one array per structure) read the same."""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm

from aiida_mlmat.data.descriptors import DescriptorsData

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures('aiida_profile')]

DEFINITION = {'kind': 'chebyshev', 'species': ['Au', 'Cu'], 'rcut': 4.5}


def arrays_of(sizes: list[int], n_features: int = 6) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.normal(size=(size, n_features)) for size in sizes]


def test_round_trip_per_structure_and_all():
    arrays = arrays_of([4, 1, 7, 2])
    node = DescriptorsData()
    node.set_descriptors(arrays, DEFINITION, source_sha256='abc')
    node.store()
    loaded = orm.load_node(node.pk)
    assert sorted(loaded.get_arraynames()) == ['features', 'means', 'offsets']
    assert loaded.get_array('offsets').tolist() == [0, 4, 5, 12, 14]
    for index, array in enumerate(arrays):
        np.testing.assert_array_equal(loaded.get_structure(index), array)
    for back, array in zip(loaded.get_all(), arrays, strict=True):
        np.testing.assert_array_equal(back, array)
    np.testing.assert_allclose(loaded.get_means(), np.stack([array.mean(axis=0) for array in arrays]))
    assert loaded.n_structures == 4 and loaded.base.attributes.get('n_atoms_total') == 14
    with pytest.raises(IndexError, match='structure 4: the node holds 4'):
        loaded.get_structure(4)


def test_earlier_layout_reads_the_same():
    """A node stored before the change: one ``structure_<i>`` array per structure."""
    arrays = arrays_of([3, 2])
    node = DescriptorsData()
    for index, array in enumerate(arrays):
        node.set_array(f'structure_{index}', array)
    node.set_array('means', np.stack([array.mean(axis=0) for array in arrays]))
    node.base.attributes.set_many({'definition': DEFINITION, 'n_structures': 2, 'n_features': 6})
    node.store()
    loaded = orm.load_node(node.pk)
    np.testing.assert_array_equal(loaded.get_structure(1), arrays[1])
    assert [back.shape for back in loaded.get_all()] == [(3, 6), (2, 6)]


def test_many_structures_are_three_arrays():
    """3,000 structures are three arrays, whatever their number: AiiDA lists every array of a node at each read, so
    one array per structure made storing and reading 10,000 take minutes."""
    arrays = arrays_of([8] * 3000, n_features=4)
    node = DescriptorsData()
    node.set_descriptors(arrays, DEFINITION)
    node.store()
    loaded = orm.load_node(node.pk)
    back = loaded.get_all()
    picked = [loaded.get_structure(index) for index in range(0, 3000, 7)]
    assert len(loaded.get_arraynames()) == 3 and len(back) == 3000
    np.testing.assert_array_equal(back[2999], arrays[2999])
    np.testing.assert_array_equal(picked[-1], arrays[2996])
