"""Engine tier: the reference workchain submitted to a real daemon (SQLite + ZeroMQ profile), EMT labels."""

from __future__ import annotations

import pytest
from aiida import orm

from aiida_mlmat.common.constants import INDEX_KEY
from aiida_mlmat.data.configurations import ConfigurationSetData
from aiida_mlmat.parsers.label import LabelParser
from aiida_mlmat.workflows.reference import ReferenceWorkChain
from tests.engine.helpers import SMALL_SAMPLE, assert_labels_equal_emt

pytestmark = pytest.mark.engine


def test_reference_from_elements_labels_equal_direct_emt(submit_and_await, worker_code, emt):
    """Seeds from elements -> sample -> 3 chunks -> one set; labels equal direct EMT; provenance complete."""
    builder = ReferenceWorkChain.get_builder_from_protocol(
        worker_code, calculator=emt, elements=['Cu', 'Au'], overrides={'sample': SMALL_SAMPLE, 'chunk_size': 20}
    )
    builder.sample.parameters = orm.Dict(SMALL_SAMPLE)
    node = submit_and_await(builder, timeout=300)
    assert node.is_finished_ok, node.exit_message

    labelled = node.outputs.configurations
    sampled = node.outputs.sampled
    # 10 seeds (3 Cu, 3 Au, 4 alloys) x (seed + 2 rattles + 1 strain + 1 vacancy) = 50
    assert sampled.count == 50
    assert labelled.count == 50
    assert labelled.base.attributes.get('n_excluded') == 0
    assert labelled.label_keys == ['energy', 'forces', 'stress']
    assert labelled.species == ['Au', 'Cu']
    assert labelled.calculator == emt
    frames = labelled.get_atoms()
    assert [frame.info[INDEX_KEY] for frame in frames] == list(range(50))
    assert assert_labels_equal_emt(frames) == 50

    # Provenance: labelled set <- collect_labels <- labelled chunks <- LabelCalculation <- chunk <- split <- sampled
    collect = labelled.creator
    assert collect.process_label == 'collect_labels'
    chunk_inputs = [
        link.node for link in collect.base.links.get_incoming().all() if link.link_label.startswith('labelled_')
    ]
    assert len(chunk_inputs) == 3  # 50 configurations in chunks of 20
    for chunk in chunk_inputs:
        calc = chunk.creator
        assert calc.process_type == 'aiida.calculations:mlmat.label'
        assert calc.is_finished_ok
        # the parser's version is part of the job's hash: caching never reuses outputs of an older parser
        assert calc.base.attributes.get('cache_version') == {'parser': LabelParser.CACHE_VERSION}
        assert LabelParser.CACHE_VERSION >= 2
        assert calc.inputs.configurations.creator.process_label == 'split_configurations'
        assert calc.inputs.configurations.creator.inputs.configurations.uuid == sampled.uuid
    assert sampled.creator.process_type == 'aiida.calculations:mlmat.sample'
    assert sampled.creator.inputs.structures.creator.process_label == 'build_seed_set'

    # Queryable: find labelled sets by calculator name and species.
    query = orm.QueryBuilder().append(
        ConfigurationSetData,
        filters={'attributes.calculator.name': 'emt', 'attributes.count': 50, 'uuid': labelled.uuid},
    )
    assert query.count() == 1


def test_label_restart_resubmits_only_missing(submit_and_await, worker_code, emt):
    """A soft time limit of 0 s stops each job after one configuration; the wrapper restarts from what exists."""
    from ase.build import bulk

    from aiida_mlmat.workflows.label import LabelBaseWorkChain

    frames = []
    for index, a in enumerate((3.55, 3.60, 3.65)):
        atoms = bulk('Cu', 'fcc', a=a, cubic=True)
        atoms.info[INDEX_KEY] = index
        frames.append(atoms)
    builder = LabelBaseWorkChain.get_builder()
    builder.label.code = worker_code
    builder.label.configurations = ConfigurationSetData(frames)
    builder.label.calculator = orm.Dict(emt)
    builder.label.soft_time_limit = orm.Float(0.0)
    builder.max_iterations = orm.Int(5)
    node = submit_and_await(builder, timeout=300)
    assert node.is_finished_ok, node.exit_message

    calcs = sorted(node.called, key=lambda calc: calc.ctime)
    assert len(calcs) == 3
    assert [calc.exit_status for calc in calcs] == [400, 400, 0]
    assert 'restart_from' not in calcs[0].inputs
    assert calcs[1].inputs.restart_from.count == 1
    assert calcs[2].inputs.restart_from.count == 2
    computed = [calc.outputs.results['n_labelled'] - calc.outputs.results['n_reused'] for calc in calcs]
    assert computed == [1, 1, 1]  # every configuration labelled exactly once
    labelled = node.outputs.configurations
    assert labelled.count == 3
    assert assert_labels_equal_emt(labelled.get_atoms()) == 3


def test_aiida_ase_path_gives_same_labels_as_batch(submit_and_await, worker_code, emt, aiida_localhost):
    """One aiida-ase ``ase.ase`` job per configuration gives the same labels as the batched path."""
    import sys

    from ase.build import bulk

    try:
        ase_code = orm.load_code('ase-python@localhost')
    except Exception:
        ase_code = orm.InstalledCode(
            label='ase-python', computer=aiida_localhost, filepath_executable=sys.executable
        ).store()
    seed = ConfigurationSetData([bulk('Cu', 'fcc', a=3.6, cubic=True)])
    sample = {'supercell': [1, 1, 1], 'include_seeds': False, 'rattle': {'count': 3, 'stdev': 0.05, 'seed': 7}}
    results = {}
    for labeller in ('batch', 'aiida-ase'):
        builder = ReferenceWorkChain.get_builder_from_protocol(
            worker_code, calculator=emt, structures=seed, labeller=labeller, ase_code=ase_code
        )
        builder.sample.parameters = orm.Dict(sample)
        node = submit_and_await(builder, timeout=300)
        assert node.is_finished_ok, node.exit_message
        results[labeller] = node.outputs.configurations.get_atoms()
    assert len(results['batch']) == len(results['aiida-ase']) == 3
    for first, second in zip(results['batch'], results['aiida-ase'], strict=True):
        assert first.info[INDEX_KEY] == second.info[INDEX_KEY]
        assert abs(first.calc.results['energy'] - second.calc.results['energy']) < 1e-8
        assert abs(first.calc.results['forces'] - second.calc.results['forces']).max() < 1e-7
        assert abs(first.calc.results['stress'] - second.calc.results['stress']).max() < 1e-8


def test_structuredata_seeds(submit_and_await, worker_code, emt):
    """Seeds given as StructureData nodes are gathered in provenance and sampled like any other."""
    from ase.build import bulk

    seeds = {
        'cu': orm.StructureData(ase=bulk('Cu', 'fcc', a=3.6)),
        'au': orm.StructureData(ase=bulk('Au', 'fcc', a=4.1)),
    }
    builder = ReferenceWorkChain.get_builder_from_protocol(worker_code, calculator=emt)
    builder.structure_data = seeds
    builder.sample.parameters = orm.Dict({'supercell': [2, 2, 2], 'rattle': {'count': 1, 'stdev': 0.03}})
    node = submit_and_await(builder, timeout=300)
    assert node.is_finished_ok, node.exit_message
    labelled = node.outputs.configurations
    assert labelled.count == 4 and labelled.species == ['Au', 'Cu']
    seed_set = node.outputs.sampled.creator.inputs.structures
    assert seed_set.creator.process_label == 'structures_to_set'
    assert {link.node.uuid for link in seed_set.creator.base.links.get_incoming().all()} >= {
        s.uuid for s in seeds.values()
    }
    assert_labels_equal_emt(labelled.get_atoms())
