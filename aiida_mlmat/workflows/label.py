"""``mlmat.label.base``: restart wrapper of ``mlmat.label`` that resubmits only what is missing."""

from __future__ import annotations

from typing import Any

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import BaseRestartWorkChain, ProcessHandlerReport, process_handler, while_

from aiida_mlmat.calcjobs.label import LabelCalculation
from aiida_mlmat.workflows.idempotent import IdempotentLaunchMixin


def report_error_handled(workchain: BaseRestartWorkChain, node: orm.CalcJobNode, action: str) -> None:
    """Report, for any restart wrapper, what went wrong in ``node`` and what its handler does about it."""
    workchain.report(f'{node.process_label}<{node.pk}> failed with exit status {node.exit_status}: {node.exit_message}')
    workchain.report(f'Action taken: {action}')


def how_it_ended(node: orm.ProcessNode) -> str:
    """How a process that did not finish well ended, in words for a message: ``exit status N: message``,
    ``killed: <why>`` (a killed process has neither exit status nor message), ``excepted: <last line of the
    exception>``, or the state it is still in.
    """
    if node.is_killed:
        return f'killed: {node.process_status or "no reason recorded"}'
    if node.is_excepted:
        lines = (node.exception or '').strip().splitlines()
        return f'excepted: {lines[-1].strip() if lines else "no exception recorded"}'
    if node.exit_status is not None:
        return f'exit status {node.exit_status}: {node.exit_message}'
    return f'did not finish ({node.process_state.value if node.process_state else "no state recorded"})'


def failure_reason(node: orm.ProcessNode) -> str:
    """Why a job or its restart wrapper failed, for a record or a report: its exit, the exit message of its last
    calculation (a wrapper's own message is often only "maximum number of iterations exceeded"), and the first
    excluded configuration's reason where the calculation labelled."""
    ended = how_it_ended(node)
    reason = f'{node.process_label}<{node.pk}> ' + (f'failed with {ended}' if ended.startswith('exit') else ended)
    calcs = sorted((child for child in node.called if isinstance(child, orm.CalcJobNode)), key=lambda n: n.ctime)
    last = calcs[-1] if calcs else node if isinstance(node, orm.CalcJobNode) else None
    if last is None:
        return reason
    if last is not node:
        reason += f'; last calculation {last.process_label}<{last.pk}> {how_it_ended(last)}'
    records = last.outputs.results.get('excluded', []) if 'results' in last.outputs else []
    if records:
        reason += f'; first configuration: {records[0]["reason"]}'
    elif cause := stderr_exception(last):
        reason += f'; its stderr ends with {cause}'
    return reason


def stderr_exception(node: orm.CalcJobNode) -> str | None:
    """The exception a job's retrieved scheduler stderr ends with, in one line, or None.

    A code run through a script (aiida-ase's ``ase.ase`` job running GPAW) reports its error only there: the parser
    sees nothing but a missing output file.
    """
    from aiida_mlmat.common.text import TRACEBACK, condense_log

    retrieved = node.outputs.retrieved if 'retrieved' in node.outputs else None
    name = node.get_option('scheduler_stderr') or '_scheduler-stderr.txt'
    if retrieved is None or name not in retrieved.base.repository.list_object_names():
        return None
    try:
        text = retrieved.base.repository.get_object_content(name, mode='r')
    except (OSError, UnicodeDecodeError):
        return None
    return condense_log(text[text.index(TRACEBACK) :]) if TRACEBACK in text else None


class LabelBaseWorkChain(IdempotentLaunchMixin, BaseRestartWorkChain):
    """Run ``mlmat.label`` and restart it after a soft time limit, walltime, memory or node failure.

    Every restart passes the configurations finished so far as ``restart_from``: the worker copies them and
    labels only the missing ones, so no label is computed twice.
    """

    _process_class = LabelCalculation

    @classmethod
    def define(cls, spec: Any) -> None:
        """Define the ports and the outline."""
        super().define(spec)
        spec.expose_inputs(LabelCalculation, namespace='label', exclude=('restart_from',))
        spec.expose_outputs(LabelCalculation, exclude=('partial_configurations',))
        spec.outline(
            cls.setup,
            while_(cls.should_run_process)(cls.run_process, cls.inspect_process),
            cls.results,
        )
        spec.exit_code(
            310, 'ERROR_UNRECOVERABLE_FAILURE', message='The label calculation failed with an unrecoverable error.'
        )

    def setup(self) -> None:
        """Prepare the inputs of the first calculation."""
        super().setup()
        self.ctx.inputs = AttributeDict(self.exposed_inputs(LabelCalculation, 'label'))

    def report_error_handled(self, node: orm.CalcJobNode, action: str) -> None:
        """Report what went wrong and what the handler does about it."""
        report_error_handled(self, node, action)

    @process_handler(
        priority=600,
        exit_codes=[
            LabelCalculation.exit_codes.ERROR_OUT_OF_WALLTIME,
            LabelCalculation.exit_codes.ERROR_SCHEDULER_OUT_OF_WALLTIME,
            LabelCalculation.exit_codes.ERROR_SCHEDULER_NODE_FAILURE,
            LabelCalculation.exit_codes.ERROR_SCHEDULER_OUT_OF_MEMORY,
            LabelCalculation.exit_codes.ERROR_JOB_CANCELLED,
        ],
    )
    def handle_interrupted(self, node: orm.CalcJobNode) -> ProcessHandlerReport:
        """Resubmit from the configurations the interrupted run finished."""
        if 'partial_configurations' in node.outputs:
            partial = node.outputs.partial_configurations
            self.ctx.inputs.restart_from = partial
            action = f'restart from the {partial.count} configurations finished, labelling only the rest'
        else:
            action = 'nothing was finished: restart from scratch'
        self.report_error_handled(node, action)
        return ProcessHandlerReport(True)

    @process_handler(
        priority=500,
        exit_codes=[
            LabelCalculation.exit_codes.ERROR_INVALID_INPUT,
            LabelCalculation.exit_codes.ERROR_UNKNOWN_CALCULATOR,
            LabelCalculation.exit_codes.ERROR_CALCULATOR_UNAVAILABLE,
            LabelCalculation.exit_codes.ERROR_ALL_CONFIGURATIONS_FAILED,
            LabelCalculation.exit_codes.ERROR_CORRUPT_INPUT_FILE,
        ],
    )
    def handle_unrecoverable(self, node: orm.CalcJobNode) -> ProcessHandlerReport:
        """Stop at once: running the same input again would fail the same way."""
        self.report_error_handled(node, 'unrecoverable; not restarting')
        return ProcessHandlerReport(True, self.exit_codes.ERROR_UNRECOVERABLE_FAILURE)
