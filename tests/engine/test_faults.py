"""Engine tier: bad input and failing calculators end to end, with nothing lost and nothing orphaned."""

from __future__ import annotations

import math

import pytest
from aiida import orm
from ase import Atoms
from ase.build import bulk

from aiida_mlmat.data.configurations import ConfigurationSetData
from aiida_mlmat.workflows.reference import ReferenceWorkChain
from tests.engine.helpers import assert_labels_equal_emt

pytestmark = pytest.mark.engine

SAMPLE = {
    'supercell': [1, 1, 1],
    'include_seeds': True,
    'rattle': {'count': 2, 'stdev': 0.04},
    'vacancies': {'count': 1},
}


def _validate(builder) -> str | None:
    error = ReferenceWorkChain.spec().inputs.validate(dict(builder._inputs(prune=True)))
    return None if error is None else error.message


def _builder(code, calculator, **kwargs):
    builder = ReferenceWorkChain.get_builder_from_protocol(code, calculator=calculator, **kwargs)
    builder.sample.parameters = orm.Dict(SAMPLE)
    return builder


@pytest.mark.parametrize(
    ('kwargs', 'message'),
    [
        ({'elements': ['Cu', 'Xx']}, 'unknown element `Xx`'),
        ({'elements': ['Cu'], 'calculator': {'name': 'nosuch'}}, 'unknown calculator `nosuch`'),
        ({'elements': ['Fe']}, "cannot treat the elements ['Fe']"),
        ({'structures': 'close'}, 'atoms closer than 0.5 Å'),
        ({'structures': 'empty'}, 'the seed set is empty'),
        ({'elements': []}, 'or `elements` to build seeds from'),
        ({'elements': ['Cu'], 'labeller': 'aiida-ase'}, 'labeller aiida-ase needs `ase_code`'),
    ],
)
def test_bad_input_is_refused_before_submission(worker_code, emt, kwargs, message):
    """Each bad input gets a clear message from the spec validator; nothing is submitted or stored."""
    calculator = kwargs.pop('calculator', emt)
    if kwargs.get('structures') == 'close':
        kwargs['structures'] = ConfigurationSetData(
            [Atoms('Cu2', positions=[[0, 0, 0], [0.3, 0, 0]], cell=[5, 5, 5], pbc=True)]
        )
    elif kwargs.get('structures') == 'empty':
        kwargs['structures'] = ConfigurationSetData([])
    before = orm.QueryBuilder().append(orm.ProcessNode).count()
    builder = _builder(worker_code, calculator, **kwargs)
    error = _validate(builder)
    assert error is not None and message in error
    with pytest.raises(ValueError, match=r'closer|unknown|cannot|empty|give seed|needs'):
        from aiida.engine import run

        run(builder)
    assert orm.QueryBuilder().append(orm.ProcessNode).count() == before


def test_bad_sampling_settings_are_refused_before_the_workflow_starts(worker_code, emt):
    """The sampling settings are checked against the worker's schema when the reference workflow is validated,
    not when its sampling job is launched (which excepted the workflow with a traceback)."""
    builder = _builder(worker_code, emt, elements=['Cu'])
    builder.sample.parameters = orm.Dict({**SAMPLE, 'rattle': {'count': 3, 'stdev': 50.0}})
    error = _validate(builder)
    assert error is not None and 'rattle.stdev: 50.0 is greater than the maximum of 1.0' in error, error
    builder.sample.parameters = orm.Dict(SAMPLE)
    assert _validate(builder) is None


def test_failing_configurations_are_excluded_with_reasons(submit_and_await, worker_code):
    """A calculator that raises on one configuration and returns NaN / inf on others does not fail the batch."""
    seed = ConfigurationSetData([bulk('Cu', 'fcc', a=3.6, cubic=True)])  # Cu4; vacancy -> Cu3
    calculator = {'name': 'faulty', 'parameters': {'raise_for': ['Cu3']}}
    builder = _builder(worker_code, calculator, structures=seed)
    builder.sample.parameters = orm.Dict({**SAMPLE, 'vacancies': {'count': 2}})
    node = submit_and_await(builder, timeout=300)
    assert node.is_finished_ok, node.exit_message
    labelled = node.outputs.configurations
    assert labelled.count == 3  # seed + 2 rattles
    assert labelled.base.attributes.get('n_excluded') == 2
    assert {record['index'] for record in labelled.excluded} == {3, 4}
    for record in labelled.excluded:
        assert record['formula'] == 'Cu3'
        assert 'RuntimeError: deliberate failure for Cu3' in record['reason']
    assert_labels_equal_emt(labelled.get_atoms())


def test_an_element_whose_every_configuration_failed_is_named(submit_and_await, worker_code):
    """Every Au configuration fails (as an element without a PAW setup would): the set keeps Cu, and the workflow
    warns that Au is gone instead of finishing as if nothing were missing."""
    seeds = ConfigurationSetData([bulk('Cu', 'fcc', a=3.6, cubic=True), bulk('Au', 'fcc', a=4.08, cubic=True)])
    calculator = {'name': 'faulty', 'parameters': {'raise_for': ['Au4', 'Au3']}}
    builder = _builder(worker_code, calculator, structures=seeds)
    node = submit_and_await(builder, timeout=300)
    assert node.is_finished_ok, node.exit_message
    assert node.outputs.configurations.species == ['Cu']
    warnings = [log.message for log in orm.Log.collection.get_logs_for(node) if log.levelname == 'WARNING']
    assert any(message.startswith('no configuration holding Au could be labelled') for message in warnings), warnings


def test_nan_and_inf_labels_are_excluded(submit_and_await, worker_code):
    """Non-finite labels never enter a data set."""
    seeds = ConfigurationSetData([bulk('Cu', 'fcc', a=3.6, cubic=True), bulk('Au', 'fcc', a=4.08, cubic=True)])
    calculator = {'name': 'faulty', 'parameters': {'nan_for': ['Cu4'], 'inf_for': ['Au3']}}
    builder = _builder(worker_code, calculator, structures=seeds)
    node = submit_and_await(builder, timeout=300)
    assert node.is_finished_ok, node.exit_message
    labelled = node.outputs.configurations
    reasons = {record['formula']: record['reason'] for record in labelled.excluded}
    assert 'non-finite energy' in reasons['Cu4']
    assert 'non-finite forces' in reasons['Au3']
    assert labelled.count == 4  # Cu vacancy (Cu3) + Au seed and 2 Au rattles (Au4)
    for frame in labelled.get_atoms():
        assert math.isfinite(frame.calc.results['energy'])
        assert frame.get_chemical_formula() in ('Cu3', 'Au4')
    assert sorted(record['formula'] for record in labelled.excluded) == ['Au3', 'Cu4', 'Cu4', 'Cu4']


def test_all_failing_leaves_no_data_set(submit_and_await, worker_code):
    """When every configuration fails, the workflow fails with the reason and stores no labelled set."""
    seed = ConfigurationSetData([bulk('Cu', 'fcc', a=3.6, cubic=True)])
    calculator = {'name': 'faulty', 'parameters': {'raise_for': ['Cu4', 'Cu3']}}
    builder = _builder(worker_code, calculator, structures=seed)
    node = submit_and_await(builder, timeout=300)
    assert node.is_finished and node.exit_status == ReferenceWorkChain.exit_codes.ERROR_ALL_LABELS_FAILED.status
    assert 'deliberate failure' in node.exit_message
    assert 'configurations' not in node.outputs
    query = orm.QueryBuilder().append(ConfigurationSetData, filters={'attributes.calculator.name': 'faulty'})
    query.append(orm.WorkflowNode, with_outgoing=ConfigurationSetData, filters={'uuid': node.uuid})
    assert query.count() == 0
    # The reasons are recorded on the calculation that tried.
    label_calcs = [n for n in node.called_descendants if n.process_type == 'aiida.calculations:mlmat.label']
    assert label_calcs and all(calc.exit_status == 320 for calc in label_calcs)
    assert len(label_calcs) == 1  # unrecoverable: not retried
    records = label_calcs[0].outputs.results['excluded']
    assert len(records) == 4 and all('deliberate failure' in record['reason'] for record in records)
    # `mlmat provenance` of the failed workflow shows the step that failed, with its exit status.
    from aiida_mlmat import query

    chain = query.provenance_chain(node)
    steps = {entry['uuid']: entry for entry in chain['calculations']}
    assert label_calcs[0].uuid in steps and steps[label_calcs[0].uuid]['exit_status'] == 320
    wrappers = [n for n in node.called if n.process_label == 'LabelBaseWorkChain']
    assert wrappers and all(wrapper.uuid in steps for wrapper in wrappers)
