"""Unit tier: the reason recorded for a failed job or restart wrapper names the last calculation's own exit.

A wrapper that gave up says only "The maximum number of iterations was exceeded"; the reason a user reads in a
training failure (`mlmat.training` exit 401), an exclusion record or a report must carry the calculation's message.
"""

from __future__ import annotations

import pytest
from aiida import orm
from aiida.common.links import LinkType

from aiida_mlmat.workflows.label import failure_reason

pytestmark = pytest.mark.unit


def _calc(label: str, status: int, message: str, caller: orm.WorkflowNode | None = None, **results) -> orm.CalcJobNode:
    node = orm.CalcJobNode(process_type=f'aiida.calculations:mlmat.{label.lower()}')
    node.set_process_label(label)
    node.set_exit_status(status)
    node.set_exit_message(message)
    if caller is not None:
        node.base.links.add_incoming(caller, LinkType.CALL_CALC, f'iteration_{status}')
    node.store()
    if results:
        output = orm.Dict(results)
        output.base.links.add_incoming(node, LinkType.CREATE, 'results')
        output.store()
    return node


def _wrapper(label: str, status: int, message: str) -> orm.WorkflowNode:
    node = orm.WorkflowNode(process_type=f'aiida.workflows:mlmat.{label}')
    node.set_process_label(label)
    node.set_exit_status(status)
    node.set_exit_message(message)
    return node.store()


def test_a_wrapper_that_gave_up_names_its_last_calculation(aiida_profile):
    """The wrapper's 401 says nothing of the cause; its last calculation's 410 does, and it is the one named."""
    wrapper = _wrapper('TrainBaseWorkChain', 401, 'The maximum number of iterations was exceeded.')
    _calc('TrainCalculation', 400, 'soft time limit', wrapper)
    last = _calc('TrainCalculation', 410, 'non-finite loss at epoch 0; lower the learning rate', wrapper)
    reason = failure_reason(wrapper)
    assert reason == (
        f'TrainBaseWorkChain<{wrapper.pk}> failed with exit status 401: The maximum number of iterations was '
        f'exceeded.; last calculation TrainCalculation<{last.pk}> exit 410: non-finite loss at epoch 0; lower the '
        'learning rate'
    )


def test_a_calculation_alone_and_its_first_excluded_configuration(aiida_profile):
    """A bare calculation (an aiida-ase job) is named once; a labelling one adds its first exclusion's reason."""
    bare = _calc('AseCalculation', 300, 'results missing')
    assert failure_reason(bare) == f'AseCalculation<{bare.pk}> failed with exit status 300: results missing'
    records = [{'index': 2, 'reason': 'calculator failed: KohnShamConvergenceError'}, {'index': 3, 'reason': 'x'}]
    labelled = _calc('LabelCalculation', 320, 'every configuration failed', excluded=records)
    assert failure_reason(labelled).endswith('; first configuration: calculator failed: KohnShamConvergenceError')
