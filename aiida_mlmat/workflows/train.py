"""``mlmat.train.base``: restart wrapper of ``mlmat.train``.

Walltime, node failure or the soft time limit -> resume from the last checkpoint; NaN loss -> halve the learning
rate and resume; out of memory -> halve the batch size (and the budget of stored descriptors) and start again
(bounded by ``max_iterations``).
"""

from __future__ import annotations

from typing import Any

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import BaseRestartWorkChain, ProcessHandlerReport, process_handler, while_

from aiida_mlmat.calcjobs.train import TrainCalculation
from aiida_mlmat.common.constants import DEFAULT_BATCH_SIZE, DEFAULT_JACOBIAN_MEMORY_MB
from aiida_mlmat.workflows.idempotent import IdempotentLaunchMixin
from aiida_mlmat.workflows.label import report_error_handled


class TrainBaseWorkChain(IdempotentLaunchMixin, BaseRestartWorkChain):
    """Run ``mlmat.train`` until it finishes, resuming from checkpoints after recoverable failures."""

    _process_class = TrainCalculation

    @classmethod
    def define(cls, spec: Any) -> None:
        """Define the ports and the outline."""
        super().define(spec)
        spec.expose_inputs(TrainCalculation, namespace='trainer')
        spec.expose_outputs(TrainCalculation)
        spec.outline(
            cls.setup,
            while_(cls.should_run_process)(cls.run_process, cls.inspect_process),
            cls.results,
        )
        spec.exit_code(310, 'ERROR_UNRECOVERABLE_FAILURE', message='The training failed with an unrecoverable error.')

    def setup(self) -> None:
        """Prepare the inputs of the first calculation."""
        super().setup()
        self.ctx.inputs = AttributeDict(self.exposed_inputs(TrainCalculation, 'trainer'))

    def _report(self, node: orm.CalcJobNode, action: str) -> None:
        report_error_handled(self, node, action)

    def _training(self) -> dict[str, Any]:
        return self.ctx.inputs.training.get_dict() if 'training' in self.ctx.inputs else {}

    @process_handler(
        priority=600,
        exit_codes=[
            TrainCalculation.exit_codes.ERROR_OUT_OF_WALLTIME,
            TrainCalculation.exit_codes.ERROR_SCHEDULER_OUT_OF_WALLTIME,
            TrainCalculation.exit_codes.ERROR_SCHEDULER_NODE_FAILURE,
            TrainCalculation.exit_codes.ERROR_JOB_CANCELLED,
        ],
    )
    def handle_interrupted(self, node: orm.CalcJobNode) -> ProcessHandlerReport:
        """Resume from the checkpoint the interrupted run left."""
        if 'checkpoint' in node.outputs:
            self.ctx.inputs.checkpoint = node.outputs.checkpoint
            action = 'resume from the last checkpoint'
        else:
            action = 'no checkpoint was written: start again'
        self._report(node, action)
        return ProcessHandlerReport(True)

    @process_handler(priority=500, exit_codes=[TrainCalculation.exit_codes.ERROR_NAN_LOSS])
    def handle_nan_loss(self, node: orm.CalcJobNode) -> ProcessHandlerReport:
        """Halve the learning rate and resume from the checkpoint saved before the NaN."""
        training = self._training()
        training['lr_scale'] = training.get('lr_scale', 1.0) * 0.5
        self.ctx.inputs.training = orm.Dict(training)
        if 'checkpoint' in node.outputs:
            self.ctx.inputs.checkpoint = node.outputs.checkpoint
        self._report(node, f'resume with the learning rate scaled by {training["lr_scale"]}')
        return ProcessHandlerReport(True)

    @process_handler(
        priority=400,
        exit_codes=[
            TrainCalculation.exit_codes.ERROR_OUT_OF_MEMORY,
            TrainCalculation.exit_codes.ERROR_SCHEDULER_OUT_OF_MEMORY,
        ],
    )
    def handle_out_of_memory(self, node: orm.CalcJobNode) -> ProcessHandlerReport:
        """Halve the batch size and the memory budget of stored descriptor derivatives, and start again (a
        checkpoint of another batch size cannot be resumed). The stored derivatives cover the whole training set,
        whatever the batch size, so a smaller batch alone may not fit; at batch size 1 they are dropped (budget 0),
        and only after that fails too does the wrapper give up.
        """
        training = self._training()
        batch_now = int(training.get('batch_size', DEFAULT_BATCH_SIZE))
        memory_now = float(training.get('jacobian_memory_mb', DEFAULT_JACOBIAN_MEMORY_MB))
        if batch_now <= 1 and memory_now <= 0:
            self._report(node, 'batch size 1 and no stored descriptors: giving up')
            return ProcessHandlerReport(True, self.exit_codes.ERROR_UNRECOVERABLE_FAILURE)
        batch = max(1, batch_now // 2)
        memory = memory_now / 2 if batch_now > 1 else 0.0  # at batch size 1, recompute descriptors at every step
        training['batch_size'] = batch
        training['jacobian_memory_mb'] = memory
        self.ctx.inputs.training = orm.Dict(training)
        self.ctx.inputs.pop('checkpoint', None)
        self._report(node, f'start again with batch size {batch} and stored descriptors up to {memory:g} MiB')
        return ProcessHandlerReport(True)

    @process_handler(
        priority=300,
        exit_codes=[
            TrainCalculation.exit_codes.ERROR_INVALID_INPUT,
            TrainCalculation.exit_codes.ERROR_MISSING_LABELS,
            TrainCalculation.exit_codes.ERROR_EMPTY_SPLIT,
            TrainCalculation.exit_codes.ERROR_UNKNOWN_SPECIES,
            TrainCalculation.exit_codes.ERROR_RESUME_MISMATCH,
            TrainCalculation.exit_codes.ERROR_CORRUPT_INPUT_FILE,
        ],
    )
    def handle_unrecoverable(self, node: orm.CalcJobNode) -> ProcessHandlerReport:
        """Stop: the same input would fail the same way."""
        self._report(node, 'unrecoverable; not restarting')
        return ProcessHandlerReport(True, self.exit_codes.ERROR_UNRECOVERABLE_FAILURE)
