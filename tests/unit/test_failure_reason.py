"""Unit tier: the reason recorded for a failed job or restart wrapper names the last calculation's own exit.

A wrapper that gave up says only "The maximum number of iterations was exceeded"; the reason a user reads in a
training failure (`mlmat.training` exit 401), an exclusion record or a report must carry the calculation's message.
"""

from __future__ import annotations

import pytest
from aiida import orm
from aiida.common.links import LinkType

from aiida_mlmat.workflows.label import failure_reason, how_it_ended

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
        f'exceeded.; last calculation TrainCalculation<{last.pk}> exit status 410: non-finite loss at epoch 0; '
        'lower the learning rate'
    )


def test_a_calculation_alone_and_its_first_excluded_configuration(aiida_profile):
    """A bare calculation (an aiida-ase job) is named once; a labelling one adds its first exclusion's reason."""
    bare = _calc('AseCalculation', 300, 'results missing')
    assert failure_reason(bare) == f'AseCalculation<{bare.pk}> failed with exit status 300: results missing'
    records = [{'index': 2, 'reason': 'calculator failed: KohnShamConvergenceError'}, {'index': 3, 'reason': 'x'}]
    labelled = _calc('LabelCalculation', 320, 'every configuration failed', excluded=records)
    assert failure_reason(labelled).endswith('; first configuration: calculator failed: KohnShamConvergenceError')


def _ended(node: orm.ProcessNode, state, status: str | None = None, exception: str | None = None) -> orm.ProcessNode:
    node.set_process_state(state)
    if status:
        node.set_process_status(status)
    if exception:
        node.set_exception(exception)
    return node


def test_a_killed_or_excepted_process_says_so_not_exit_none(aiida_profile):
    """A killed process has no exit status or message: its reason is why it was killed (found by an audit: the
    record read "exit None: None"); an excepted one gives its exception's last line; a wrapper names both."""
    from aiida.engine import ProcessState

    wrapper = _wrapper('TrainBaseWorkChain', 302, 'The sub process was killed.')
    killed = orm.CalcJobNode(process_type='aiida.calculations:mlmat.train')
    killed.set_process_label('TrainCalculation')
    _ended(killed, ProcessState.KILLED, 'Killed through `verdi process kill`')
    killed.base.links.add_incoming(wrapper, LinkType.CALL_CALC, 'iteration_01')
    killed.store()
    assert how_it_ended(killed) == 'killed: Killed through `verdi process kill`'
    assert failure_reason(killed) == f'TrainCalculation<{killed.pk}> killed: Killed through `verdi process kill`'
    assert failure_reason(wrapper).endswith(
        f'; last calculation TrainCalculation<{killed.pk}> killed: Killed through `verdi process kill`'
    )
    broken = orm.CalcJobNode(process_type='aiida.calculations:mlmat.sample')
    broken.set_process_label('SampleCalculation')
    _ended(broken, ProcessState.EXCEPTED, exception='Traceback ...\n  File "x"\nOSError: [Errno 28] No space left\n')
    broken.store()
    assert how_it_ended(broken) == 'excepted: OSError: [Errno 28] No space left'
    waiting = _ended(orm.CalcJobNode(process_type='aiida.calculations:mlmat.sample'), ProcessState.WAITING).store()
    assert how_it_ended(waiting) == 'did not finish (waiting)'


def test_the_report_flags_a_workflow_that_waits_for_nothing(aiida_profile):
    """`mlmat report` of a workflow that waits although everything it called has ended (the aiida-core race a
    pause can cause) says it may be stuck; one waiting for a running child, or for none yet, does not."""
    from aiida.engine import ProcessState

    from aiida_mlmat.cli.pipeline import summary_markdown, waits_for_nothing

    def workflow(status: str | None, child_state) -> orm.WorkflowNode:
        node = orm.WorkflowNode(process_type='aiida.workflows:mlmat.active_learning')
        node.set_process_label('ActiveLearningWorkChain')
        _ended(node, ProcessState.WAITING, status)
        node.store()
        if child_state is not None:
            child = orm.WorkflowNode(process_type='aiida.workflows:mlmat.training')
            child.set_process_label('TrainingWorkChain')
            _ended(child, child_state)
            if child_state is ProcessState.FINISHED:
                child.set_exit_status(0)
            child.base.links.add_incoming(node, LinkType.CALL_WORK, 'train_1')
            child.store()
        return node

    stuck = workflow(None, ProcessState.FINISHED)
    assert waits_for_nothing(stuck)
    assert 'it is stuck (see docs/howto/faults.md' in summary_markdown(stuck, [])
    assert '- state: waiting\n' in summary_markdown(stuck, []) + '\n'  # no "exit status None"
    assert not waits_for_nothing(workflow('Waiting for child processes: 12', ProcessState.FINISHED))
    assert not waits_for_nothing(workflow(None, ProcessState.WAITING))
    paused = workflow('Paused through `verdi process pause`', ProcessState.FINISHED)
    paused.pause()
    assert paused.paused and not waits_for_nothing(paused)  # `verdi process play` resumes it: not stuck
    assert (  # aiida-core keeps the state `waiting` of a paused process: the report says it is paused, and why
        f'- state: waiting, paused (Paused through `verdi process pause`; `verdi process play {paused.pk}` goes on)\n'
        in summary_markdown(paused, [])
    )
    killed = workflow('Paused through `verdi process pause`', ProcessState.FINISHED)
    killed.pause()
    killed.set_process_state(ProcessState.KILLED)  # aiida-core leaves the `paused` flag on a killed process
    assert killed.paused and 'paused' not in summary_markdown(killed, []).split('- state: ', 1)[1].splitlines()[0]
    assert not waits_for_nothing(workflow(None, None))
