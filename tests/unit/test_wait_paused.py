"""Unit tier: ``--wait`` on a workflow with a paused process under it stops and says why, instead of hanging.

aiida-core pauses a CalcJob after five failed transport tasks (``sbatch`` refusing the script, a lost connection)
and logs each failure as a full traceback; ``verdi process pause`` pauses any process. The nodes here carry what
aiida-core writes in those cases (the ``paused`` attribute, the process status, the ERROR log of the traceback).
"""

from __future__ import annotations

import traceback
from datetime import UTC, datetime

import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import ProcessState

from aiida_mlmat.cli.utils import EXIT_PAUSED, MlmatCliError, condense_log, new_reports, wait_for
from tests.conftest import finished_process

pytestmark = pytest.mark.unit

SBATCH = 'sbatch: error: Invalid generic resource (gres) specification'
PAUSED_STATUS = 'Pausing after failed transport task: submit_calculation failed 5 times consecutively'


class SchedulerError(Exception):
    """Stands in for ``aiida.schedulers.SchedulerError`` (only its name and message are read)."""


def _traceback() -> str:
    """A traceback as aiida-core's log handler stores it (``traceback.format_exception``), with a multi-line
    message whose last line is the cause, as aiida-core's SLURM plugin raises it."""

    def submit() -> None:
        raise SchedulerError(f'Error during submission, retval=1\nstdout=\nstderr={SBATCH}')

    try:
        submit()
    except SchedulerError as exc:
        return ''.join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    raise AssertionError('unreachable')


def test_condense_log_keeps_the_exception_of_a_traceback():
    text = _traceback()
    assert text.startswith('Traceback (most recent call last):') and text.count('\n') > 4
    line = condense_log(text)
    assert '\n' not in line and 'File "' not in line
    assert line.endswith(f'Error during submission, retval=1 stdout= stderr={SBATCH}')
    assert 'SchedulerError' in line
    assert condense_log(f'iteration 1 of do_submit excepted:\n{text}').startswith('iteration 1 of do_submit excepted: ')
    assert condense_log('a plain report') == 'a plain report'


def _workflow_with_paused_child() -> tuple[orm.WorkflowNode, orm.CalcJobNode]:
    parent = orm.WorkflowNode(process_type='aiida.workflows:mlmat.training')
    parent.set_process_label('TrainingWorkChain')
    parent.set_process_state(ProcessState.WAITING)
    parent.store()
    child = orm.CalcJobNode(process_type='aiida.calculations:mlmat.train')
    child.set_process_label('TrainCalculation')
    child.set_process_state(ProcessState.WAITING)
    child.base.links.add_incoming(parent, LinkType.CALL_CALC, 'member_0')
    child.store()
    for _ in range(2):  # one log per failed attempt
        orm.Log(datetime.now(UTC), 'aiida.engine', 'ERROR', child.pk, _traceback()).store()
    child.pause()
    child.set_process_status(PAUSED_STATUS)
    return parent, child


def test_wait_stops_at_a_paused_process_and_names_the_cause(aiida_profile, capsys):
    parent, child = _workflow_with_paused_child()
    with pytest.raises(MlmatCliError) as raised:
        wait_for(parent, poll=0.01, timeout=30)
    error = raised.value
    assert error.exit_code == EXIT_PAUSED == 6
    message = error.format_message()
    assert message.startswith(f'TrainCalculation<{child.pk}> is paused ({PAUSED_STATUS}); last error: ')
    assert SBATCH in message and f'TrainingWorkChain<{parent.pk}> waits for it' in message
    assert f'`verdi process play {child.pk}`' in message and f'`verdi process kill {parent.pk}`' in message
    assert error.data == {'process': parent.pk, 'paused': child.pk, 'process_status': PAUSED_STATUS}
    # the progress printed the failed attempts, each in one line that ends with sbatch's reason
    lines = [line for line in capsys.readouterr().err.splitlines() if 'TrainCalculation' in line]
    assert len(lines) == 2 and all(line.endswith(SBATCH) and 'ERROR: ' in line for line in lines)
    assert all('\n' not in text for _, text in new_reports(parent, set()))


def test_wait_stops_at_a_paused_workflow_itself(aiida_profile):
    node = orm.WorkflowNode(process_type='aiida.workflows:mlmat.pipeline')
    node.set_process_label('PipelineWorkChain')
    node.set_process_state(ProcessState.WAITING)
    node.store()
    node.pause()
    node.set_process_status('Paused through `verdi process pause`')
    with pytest.raises(MlmatCliError) as raised:
        wait_for(node, quiet=True, poll=0.01, timeout=30)
    message = raised.value.format_message()
    assert raised.value.exit_code == EXIT_PAUSED
    assert message == (
        f'PipelineWorkChain<{node.pk}> is paused (Paused through `verdi process pause`). Fix the cause, then '
        f'`verdi process play {node.pk}` to go on, or `verdi process kill {node.pk}` to stop'
    )


def test_wait_between_checks_grows_with_what_a_check_costs():
    """A check of a workflow with hundreds of processes under it takes tenths of a second; waiting ``poll`` after it
    kept a waiting ``mlmat run --wait`` at a fifth of a core. The wait is now 9 times the check, up to 5 s."""
    from aiida_mlmat.cli.utils import next_wait

    assert next_wait(1.0, 0.01) == 1.0  # a cheap check: the given poll
    assert next_wait(1.0, 0.2) == pytest.approx(1.8)  # waiting stays at a tenth of the time
    assert next_wait(1.0, 3.0) == 5.0  # capped, so the end of a run is seen within seconds
    assert next_wait(10.0, 3.0) == 10.0 and next_wait(0.01, 0.0) == 0.01  # a longer or shorter given poll holds


def test_a_failed_workflow_is_named_once_and_a_failed_step_after_it(aiida_profile):
    """`--wait` on a workflow that failed itself says so once ("X failed (finished, exit status N): reason"), not
    "X failed at X"; one whose step failed names the step."""
    node = finished_process(orm.WorkflowNode, 'aiida.workflows:mlmat.hull', 'HullWorkChain', 302, 'nothing screened')
    with pytest.raises(MlmatCliError) as raised:
        wait_for(node, quiet=True, poll=0.01, timeout=30)
    assert raised.value.format_message() == (
        f'HullWorkChain<{node.pk}> failed (finished, exit status 302): nothing screened; '
        f'see `verdi process report {node.pk}`'
    )
    assert raised.value.data['exit_status'] == 302
    parent = finished_process(orm.WorkflowNode, 'aiida.workflows:mlmat.pipeline', 'PipelineWorkChain', 501)
    child = finished_process(
        orm.CalcJobNode, 'aiida.calculations:mlmat.relax', 'RelaxCalculation', 300, 'no results.json', caller=parent
    )
    with pytest.raises(MlmatCliError) as raised:
        wait_for(parent, quiet=True, poll=0.01, timeout=30)
    assert raised.value.format_message() == (
        f'PipelineWorkChain<{parent.pk}> failed at RelaxCalculation<{child.pk}> (finished, exit status 300): '
        f'no results.json; see `verdi process report {parent.pk}`'
    )
