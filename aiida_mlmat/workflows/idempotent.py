"""Steps that can run twice without doing the work twice.

A WorkChain step that launches children is recorded (checkpointed) only after it returns. When the daemon dies
between the launch and the checkpoint (a SIGKILL, a node failure, a broker that delivers the task again), the
restarted workchain runs the step again from the previous checkpoint, and AiiDA launches every child a second
time: two CalcJobs labelling the same chunk, two bootstrap samples, two identical data sets.

Every child that an mlmat workflow submits, and every calcfunction called in a step that also submits (the
chunks of a labelling, the bootstrap samples of the members, the seeds and the verification set beside the jobs
that take them), carries a call-link label unique within its caller (``label_0003``, ``member_1``,
``iteration_02``). :class:`IdempotentLaunchMixin` looks the label up among the processes the workchain has already
called before it launches anything: a child launched before the restart is awaited again instead of launched anew,
and a calcfunction that already finished gives back its outputs. Calcfunctions in steps that submit nothing
(splits, evaluations, summaries; link label ``CALL``) are cheap: a replayed step runs them again, which repeats a
small node, never a job.

A child cut off inside its own launch (its node stored, but no checkpoint written: the daemon died while AiiDA
was creating it) can never run. It is closed as killed, with :data:`ORPHAN_STATUS` as its status, and launched
anew under the same label. Left to AiiDA: a child whose checkpoint was written but whose broker task was never
sent (the milliseconds between the two) stays ``created`` and waits for ``verdi process repair``, which revives
exactly such processes (the production tier's SIGKILL test does so when its kill lands in that window).
"""

from __future__ import annotations

from typing import Any

from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import ProcessState
from aiida.engine.processes.builder import ProcessBuilder

#: The call-link label AiiDA gives when none is set: not unique, never reused.
DEFAULT_CALL_LABEL = 'CALL'
#: Process status of a child closed because its launch was cut off before it could ever run.
ORPHAN_STATUS = 'never started: its launch was cut off by a daemon restart; launched again'


def is_orphan(node: orm.ProcessNode) -> bool:
    """Whether ``node`` is a child closed by :class:`IdempotentLaunchMixin` because it could never run."""
    return node.process_state == ProcessState.KILLED and node.process_status == ORPHAN_STATUS


def _launched(node: orm.ProcessNode) -> bool:
    """A process that runs or ran: terminated, or with a checkpoint to continue from."""
    return node.is_terminated or node.checkpoint is not None


def _call_link_label(process: Any, inputs: dict[str, Any] | None, kwargs: dict[str, Any]) -> str | None:
    if isinstance(process, ProcessBuilder):
        metadata = dict(process._inputs(prune=True)).get('metadata') or {}
    else:
        metadata = {**(inputs or {}), **kwargs}.get('metadata') or {}
    label = metadata.get('call_link_label')
    return None if label in (None, DEFAULT_CALL_LABEL) else str(label)


#: The longest node label the database column takes.
MAX_LABEL = 255


def _with_label(
    process: Any, inputs: dict[str, Any] | None, kwargs: dict[str, Any], text: str
) -> tuple[Any, dict[str, Any] | None, dict[str, Any]]:
    """The launch arguments with ``metadata.label`` set to ``text`` where the caller gave none."""
    if isinstance(process, ProcessBuilder):
        if not process.metadata.get('label'):
            process.metadata.label = text
        return process, inputs, kwargs
    if 'metadata' in kwargs or inputs is None:
        metadata = dict(kwargs.get('metadata') or {})
        if not metadata.get('label'):
            kwargs = {**kwargs, 'metadata': {**metadata, 'label': text}}
        return process, inputs, kwargs
    metadata = dict(inputs.get('metadata') or {})
    if not metadata.get('label'):
        inputs = type(inputs)({**inputs, 'metadata': {**metadata, 'label': text}})
    return process, inputs, kwargs


class IdempotentLaunchMixin:
    """Make ``submit`` and calcfunction calls of a WorkChain step safe to run again after a restart."""

    def called_as(self, label: str) -> orm.ProcessNode | None:
        """The latest process this workchain called with the call-link label ``label`` (orphans aside), or None."""
        links = self.node.base.links.get_outgoing(  # type: ignore[attr-defined]
            link_type=(LinkType.CALL_CALC, LinkType.CALL_WORK), link_label_filter=label
        ).all()
        nodes = sorted((link.node for link in links if not is_orphan(link.node)), key=lambda node: node.pk)
        return nodes[-1] if nodes else None

    def _close_orphan(self, node: orm.ProcessNode, label: str) -> None:
        node.set_process_state(ProcessState.KILLED)
        node.set_process_status(ORPHAN_STATUS)
        node.seal()
        self.report(
            f'`{label}`: {node.process_label}<{node.pk}> was cut off while being launched: closed, launching anew'
        )  # type: ignore[attr-defined]

    def child_label(self, step: str) -> str:
        """The node label of a child launched as ``step``: this workflow's label and the step, as a path
        (``pipeline-cuau-emt/active_learning/training_2``), so that ``verdi process list -P pk process_label label``
        tells the children of different steps and iterations apart."""
        own = self.node.label  # type: ignore[attr-defined]
        text = f'{own}/{step}' if own else step
        return text if len(text) <= MAX_LABEL else '…' + text[-(MAX_LABEL - 1) :]  # keep the telling end

    def submit(self, process: Any, inputs: dict[str, Any] | None = None, **kwargs: Any) -> orm.ProcessNode:
        """Submit a child, or return the one this workchain already submitted under the same call-link label.

        A child launched under a call-link label gets the node label :meth:`child_label` unless one was given.
        """
        label = _call_link_label(process, inputs, kwargs)
        if label:
            process, inputs, kwargs = _with_label(process, inputs, kwargs, self.child_label(label))
        existing = self.called_as(label) if label else None
        if existing is not None and not _launched(existing):
            self._close_orphan(existing, label)
            existing = None
        if existing is not None:
            self.report(  # type: ignore[attr-defined]
                f'`{label}` was launched before a restart as {existing.process_label}<{existing.pk}>: awaiting it '
                'instead of launching it again'
            )
            return existing
        return super().submit(process, inputs, **kwargs)  # type: ignore[misc]

    def call_once(self, label: str, function: Any, *args: Any, **kwargs: Any) -> Any:
        """Call a calcfunction with the call-link label ``label``, or return the outputs of the finished call
        that this workchain already made under that label (one node, or a dictionary of nodes by link label)."""
        existing = self.called_as(label)
        if existing is not None and not existing.is_terminated:  # it ran in this worker, which died under it
            self._close_orphan(existing, label)
            existing = None
        if existing is not None and existing.is_finished_ok:
            outputs = {
                link.link_label: link.node for link in existing.base.links.get_outgoing(link_type=LinkType.CREATE).all()
            }
            reused = f'{existing.process_label}<{existing.pk}>'
            self.report(f'`{label}` ran before a restart as {reused}: reusing its outputs')  # type: ignore[attr-defined]
            return outputs['result'] if set(outputs) == {'result'} else outputs
        return function(*args, metadata={'call_link_label': label, 'label': self.child_label(label)}, **kwargs)
