"""Engine tier: descriptors as a CalcJob through the daemon, caching, and the selection step of mlmat.reference."""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm
from aiida.manage.caching import enable_caching
from ase.build import bulk

from aiida_mlmat.calcjobs.descriptors import DescriptorsCalculation
from aiida_mlmat.data.configurations import ConfigurationSetData
from aiida_mlmat.ml.descriptors import DescriptorSpec, compute
from aiida_mlmat.workflows.reference import ReferenceWorkChain
from tests.engine.helpers import assert_labels_equal_emt

pytestmark = pytest.mark.engine


def frames():
    out = []
    for k in range(4):
        atoms = bulk('Cu', 'fcc', a=3.6, cubic=True).repeat(2)
        atoms.symbols[[k, k + 5]] = 'Au'
        atoms.rattle(0.05, seed=k)
        out.append(atoms)
    return out


def test_descriptors_calcjob_matches_direct_and_is_cached(submit_and_await, worker_code):
    """The stored arrays equal a direct computation; an identical second run is taken from the cache."""
    configurations = ConfigurationSetData(frames()).store()
    builder = DescriptorsCalculation.get_builder()
    builder.code = worker_code
    builder.configurations = configurations
    builder.descriptor = orm.Dict({'kind': 'chebyshev', 'rcut': 4.5, 'n_radial': 8, 'n_angular': 5})
    node = submit_and_await(builder, timeout=300)
    assert node.is_finished_ok, node.exit_message
    data = node.outputs.descriptors
    spec = DescriptorSpec('chebyshev', ('Cu', 'Au'), rcut=4.5, n_radial=8, n_angular=5)
    direct = compute(configurations.get_atoms(), spec)
    assert data.n_structures == 4 and data.base.attributes.get('n_features') == spec.n_features == 26
    for index, array in enumerate(direct):
        np.testing.assert_allclose(data.get_structure(index), array, rtol=0, atol=1e-12)
    np.testing.assert_allclose(data.get_means(), np.stack([a.mean(axis=0) for a in direct]), atol=1e-12)
    assert data.definition['species'] == ['Cu', 'Au']
    assert data.base.attributes.get('source_sha256') == configurations.sha256

    with enable_caching(identifier='aiida.calculations:mlmat.descriptors'):
        again = submit_and_await(builder, timeout=300)
    assert again.is_finished_ok and again.base.caching.is_created_from_cache
    assert again.base.caching.get_cache_source() == node.uuid
    np.testing.assert_array_equal(again.outputs.descriptors.get_means(), data.get_means())


def test_descriptor_bad_input_refused_before_submission(worker_code):
    configurations = ConfigurationSetData(frames())
    for descriptor, message in (
        ({'kind': 'soap'}, 'unknown descriptor kind `soap`'),
        ({'kind': 'acsf', 'species': ['Cu']}, 'lack'),
        ({'kind': 'chebyshev', 'rcut': -1.0}, 'the cutoff must be positive'),
    ):
        builder = DescriptorsCalculation.get_builder()
        builder.code = worker_code
        builder.configurations = configurations
        builder.descriptor = orm.Dict(descriptor)
        error = DescriptorsCalculation.spec().inputs.validate(dict(builder._inputs(prune=True)))
        assert error is not None and message in error.message, (descriptor, error)


def test_reference_with_selection_labels_only_the_diverse_subset(submit_and_await, worker_code, emt):
    """select.n keeps the N most diverse samples (FPS) and labels only them, all in provenance."""
    builder = ReferenceWorkChain.get_builder_from_protocol(
        worker_code, calculator=emt, elements=['Cu', 'Au'], overrides={'select': {'n': 12}, 'chunk_size': 6}
    )
    builder.sample.parameters = orm.Dict({'supercell': [1, 1, 1], 'rattle': {'count': 3, 'stdev': 0.05}})
    node = submit_and_await(builder, timeout=300)
    assert node.is_finished_ok, node.exit_message
    sampled, labelled = node.outputs.sampled, node.outputs.configurations
    assert sampled.count == 40 and labelled.count == 12
    indices = node.outputs.selection.get_list()
    assert len(indices) == 12 and [f.info['mlmat_index'] for f in labelled.get_atoms()] == indices
    selection = node.outputs.selection.creator
    assert selection.process_label == 'select_configurations'
    assert selection.inputs.descriptors.creator.process_type == 'aiida.calculations:mlmat.descriptors'
    # The subset is diverse: it covers every seed family (the 10 seeds all differ).
    families = {sampled.get_atoms()[i].info['mlmat_seed'] for i in indices}
    assert len(families) >= 8
    assert_labels_equal_emt(labelled.get_atoms())
