"""Base CalcJob of aiida-mlmat: the CalcJob-worker protocol and the banded exit codes shared by all tasks."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, ClassVar

from aiida import orm
from aiida.common import CalcInfo, CodeInfo
from aiida.common.folders import Folder
from aiida.engine import CalcJob

from aiida_mlmat.common.constants import (
    GPAW_WORKER_CODE,
    INPUT_JSON,
    PARTITION_PROPERTY,
    POTENTIAL_DIR,
    RESULTS_JSON,
    TORCH_EXTRA,
)
from aiida_mlmat.data.potential import PotentialData
from aiida_mlmat.worker.schema import SCHEMA_VERSION, validate_input

#: Fraction of the scheduler walltime given to the worker as its soft limit (as aiida-quantumespresso does).
SOFT_WALLTIME_FRACTION = 0.95

#: A partition, account or QoS name: aiida-core writes these verbatim into `#SBATCH` lines, so no spaces, quotes,
#: line breaks or shell syntax.
SCHEDULER_WORD = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.:@+,-]*')
ENVIRONMENT_NAME = re.compile(r'[A-Za-z_][A-Za-z0-9_]*')


def validate_scheduler_word(value: Any, _: Any = None) -> str | None:
    """Refuse a partition, account or QoS that is not a plain name (it would be written into the job script)."""
    if value is None or SCHEDULER_WORD.fullmatch(str(value)):
        return None
    return f'{value!r} is not a plain scheduler name (letters, digits and `_.:@+,-`); it would go into a #SBATCH line'


def stored_partition(computer: orm.Computer | None) -> str | None:
    """The SLURM partition stored on ``computer`` (``PARTITION_PROPERTY``, set by ``mlmat setup --slurm-partition``),
    or None: what every job there given no ``queue_name`` is submitted to.

    :raises ValueError: when the stored value is not a scheduler word; it is written verbatim into ``#SBATCH``
        lines, and a Computer imported from an archive is not trusted.
    """
    partition = computer.get_property(PARTITION_PROPERTY, None) if computer is not None else None
    if partition:
        error = validate_scheduler_word(partition)
        if error:
            raise ValueError(f'the partition stored on the Computer `{computer.label}` ({PARTITION_PROPERTY}): {error}')
    return partition or None


def without_torch(code: orm.AbstractCode) -> bool:
    """Whether ``code`` runs a Python without torch, as the GPAW worker Code of ``mlmat setup`` does: it can sample,
    label and relax with a reference calculator, but not compute descriptors, train or run a potential.

    Read from the Code's extra ``mlmat_torch`` (:data:`~aiida_mlmat.common.constants.TORCH_EXTRA`; ``verdi node
    extras``) where set, else from its label (``mlmat-worker-gpaw``).
    """
    marked = code.base.extras.get(TORCH_EXTRA, None)
    return marked is False if isinstance(marked, bool) else code.label == GPAW_WORKER_CODE


def torch_code_error(code: Any, port: str, what: str) -> str | None:
    """Why ``code`` cannot run ``what`` (a task that needs torch), or None: the GPAW worker Code's Python has GPAW but
    no torch (:func:`without_torch`), and the job would end with ``ModuleNotFoundError`` (exit 350).

    :param port: how the caller names the Code's input in the message (``code``, ``member.trainer.code``).
    """
    if code is None or not without_torch(code):
        return None
    return (
        f'{port}: `{code.full_label}` is the GPAW worker Code, whose Python has no torch to run {what}; '
        'give the mlmat-worker Code (the GPAW one samples, labels and relaxes with GPAW; if its Python has torch, '
        "set the Code's extra `mlmat_torch` to true)"
    )


def validate_environment_names(value: Any, _: Any = None) -> str | None:
    """Refuse environment variable names that are not identifiers (aiida-core quotes values, not names)."""
    for name in value or {}:
        if not ENVIRONMENT_NAME.fullmatch(str(name)):
            return f'{name!r} is not a valid environment variable name (letters, digits, `_`; not first a digit)'
    return None


#: Worker error code -> exit-code label.
WORKER_ERRORS: dict[str, str] = {
    'INVALID_INPUT': 'ERROR_INVALID_INPUT',
    'MISSING_FILE': 'ERROR_MISSING_INPUT_FILE',
    'CORRUPT_FILE': 'ERROR_CORRUPT_INPUT_FILE',
    'UNKNOWN_CALCULATOR': 'ERROR_UNKNOWN_CALCULATOR',
    'CALCULATOR_UNAVAILABLE': 'ERROR_CALCULATOR_UNAVAILABLE',
    'ALL_FAILED': 'ERROR_ALL_CONFIGURATIONS_FAILED',
    'WALLTIME': 'ERROR_OUT_OF_WALLTIME',
    'UNEXPECTED': 'ERROR_WORKER_EXCEPTION',
    'MISSING_LABELS': 'ERROR_MISSING_LABELS',
    'EMPTY_SPLIT': 'ERROR_EMPTY_SPLIT',
    'UNKNOWN_SPECIES': 'ERROR_UNKNOWN_SPECIES',
    'RESUME_MISMATCH': 'ERROR_RESUME_MISMATCH',
    'NAN_LOSS': 'ERROR_NAN_LOSS',
    'OUT_OF_MEMORY': 'ERROR_OUT_OF_MEMORY',
}


def worker_code_error(code: Any) -> str | None:
    """Why ``code`` cannot run the aiida-mlmat worker, or None: a Code registered for another CalcJob plugin (its
    ``default_calc_job_plugin``, e.g. the ``ase-python`` Code ``mlmat setup`` registers for aiida-ase's ``ase.ase``)
    runs something else, and the job would fail without a ``results.json``. A Code with no default plugin is taken."""
    plugin = getattr(code, 'default_calc_job_plugin', None)
    if plugin and not str(plugin).startswith('mlmat.'):
        return (
            f'the Code `{code.full_label}` is registered for the CalcJob plugin `{plugin}`, not for the aiida-mlmat '
            'worker: give the `mlmat-worker` Code `mlmat setup` registers (`verdi code list`)'
        )
    return None


def validate_worker_code(value: Any, _: Any = None) -> str | None:
    """Port validator of ``code``: see :func:`worker_code_error`."""
    error = worker_code_error(value) if value is not None else None
    return f'code: {error}' if error else None


class MlmatCalculation(CalcJob):
    """Base class: writes ``input.json`` for one worker task and retrieves ``results.json``.

    Subclasses set ``TASK`` and implement :meth:`build_worker_input` and :meth:`write_data_files`.
    Exit codes: 3xx unrecoverable, 4xx recoverable (a restart wrapper handles them), 5xx physics warnings.
    """

    TASK: ClassVar[str] = ''
    #: Whether the task honours a soft time limit (``max_seconds`` in its input).
    SOFT_LIMIT: ClassVar[bool] = False
    _RETRIEVE: ClassVar[list[str]] = [RESULTS_JSON, 'worker.out']
    _RETRIEVE_TEMPORARY: ClassVar[list[str]] = []

    @classmethod
    def define(cls, spec: Any) -> None:
        """Define the ports shared by every aiida-mlmat CalcJob."""
        super().define(spec)
        spec.inputs['metadata']['options']['resources'].default = {'num_machines': 1, 'num_mpiprocs_per_machine': 1}
        spec.inputs['metadata']['options']['withmpi'].default = False
        for name in ('queue_name', 'account', 'qos'):
            spec.inputs['metadata']['options'][name].validator = validate_scheduler_word
        spec.inputs['metadata']['options']['environment_variables'].validator = validate_environment_names
        spec.inputs['code'].validator = validate_worker_code
        if cls.SOFT_LIMIT:
            spec.input(
                'soft_time_limit',
                valid_type=orm.Float,
                required=False,
                help='Seconds after which the worker starts no new work, saves what it has and exits cleanly. '
                f'Default: {SOFT_WALLTIME_FRACTION:.0%} of `metadata.options.max_wallclock_seconds` when set.',
            )
        spec.input(
            'potential',
            valid_type=PotentialData,
            required=False,
            help=f'A trained potential, written to `{POTENTIAL_DIR}/` of the job (members sha256-checked on write and '
            'again on load) for the registry calculator `mlmat`.',
        )
        spec.output('results', valid_type=orm.Dict, help='Summary written by the worker: counts, timings, errors.')
        spec.default_output_node = 'results'  # `verdi calcjob res PK` prints it

        spec.exit_code(
            300, 'ERROR_MISSING_RESULTS', message='The worker wrote no `results.json`.', invalidates_cache=True
        )
        spec.exit_code(
            301, 'ERROR_CORRUPT_RESULTS', message='`results.json` cannot be read: {error}', invalidates_cache=True
        )
        spec.exit_code(
            302, 'ERROR_MISSING_OUTPUT', message='An expected output file is missing: {name}', invalidates_cache=True
        )
        spec.exit_code(310, 'ERROR_INVALID_INPUT', message='The worker refused its input: {message}')
        spec.exit_code(311, 'ERROR_MISSING_INPUT_FILE', message='An input file did not reach the worker: {message}')
        spec.exit_code(312, 'ERROR_CORRUPT_INPUT_FILE', message='An input file is corrupt: {message}')
        spec.exit_code(313, 'ERROR_UNKNOWN_CALCULATOR', message='The worker does not know the calculator: {message}')
        spec.exit_code(
            314,
            'ERROR_CALCULATOR_UNAVAILABLE',
            message='The calculator cannot be loaded where the worker runs: {message}',
        )
        spec.exit_code(320, 'ERROR_ALL_CONFIGURATIONS_FAILED', message='No configuration succeeded: {message}')
        spec.exit_code(315, 'ERROR_MISSING_LABELS', message='The data lack labels the loss needs: {message}')
        spec.exit_code(316, 'ERROR_EMPTY_SPLIT', message='A data split is empty: {message}')
        spec.exit_code(317, 'ERROR_UNKNOWN_SPECIES', message='Species outside the model: {message}')
        spec.exit_code(318, 'ERROR_RESUME_MISMATCH', message='The checkpoint does not match: {message}')
        spec.exit_code(350, 'ERROR_WORKER_EXCEPTION', message='The worker raised an unexpected exception: {message}')
        spec.exit_code(
            400,
            'ERROR_OUT_OF_WALLTIME',
            message='The soft time limit was reached before all work was done: {message}',
            invalidates_cache=True,
        )
        spec.exit_code(
            430, 'ERROR_JOB_CANCELLED', message='The scheduler cancelled the job (scancel).', invalidates_cache=True
        )
        spec.exit_code(
            410, 'ERROR_NAN_LOSS', message='The loss became NaN or infinite: {message}', invalidates_cache=True
        )
        spec.exit_code(
            420, 'ERROR_OUT_OF_MEMORY', message='The device ran out of memory: {message}', invalidates_cache=True
        )

    @staticmethod
    def potential_error(value: Any, calculator_name: str | None) -> str | None:
        """Return why the ``potential`` input does not fit the calculator ``calculator_name``, or None."""
        if calculator_name == 'mlmat' and value.get('potential') is None:
            return 'potential: the calculator `mlmat` needs a trained potential as the input `potential`'
        return None

    @classmethod
    def build_worker_input(cls, inputs: Any) -> dict[str, Any]:
        """Return the ``input.json`` dictionary for the given inputs (without the version header)."""
        raise NotImplementedError

    @classmethod
    def worker_input(cls, inputs: Any, max_seconds: float | None = None) -> dict[str, Any]:
        """Return the complete, validated ``input.json`` dictionary.

        :param max_seconds: the worker's soft time limit in s (tasks with ``SOFT_LIMIT`` only).
        :raises ValueError: when the input does not validate against the worker's schema.
        """
        data = {'schema_version': SCHEMA_VERSION, 'task': cls.TASK, **cls.build_worker_input(inputs)}
        if cls.SOFT_LIMIT and max_seconds is not None:
            data['max_seconds'] = max_seconds
        validate_input(cls.TASK, data)
        return data

    def write_data_files(self, folder: Folder) -> None:
        """Write the data files the worker reads (extxyz, weights) into the sandbox."""
        raise NotImplementedError

    def soft_time_limit(self) -> float | None:
        """Return the worker's soft time limit in seconds, or None for none."""
        if not self.SOFT_LIMIT:
            return None
        if 'soft_time_limit' in self.inputs:
            return float(self.inputs.soft_time_limit.value)
        walltime = self.inputs.metadata.options.get('max_wallclock_seconds')
        return SOFT_WALLTIME_FRACTION * walltime if walltime else None

    def _setup_metadata(self, metadata: dict) -> None:
        """Store the metadata on the node; a job given no ``queue_name`` goes to the partition stored on its
        Computer (:func:`stored_partition`) and records it as its option."""
        options = dict(metadata.get('options') or {})
        if options.get('queue_name') is None:
            code = self.inputs.get('code')
            partition = stored_partition(metadata.get('computer') or (code.computer if code is not None else None))
            if partition:
                metadata = {**metadata, 'options': {**options, 'queue_name': partition}}
        super()._setup_metadata(metadata)

    def prepare_for_submission(self, folder: Folder) -> CalcInfo:
        """Write ``input.json`` and the data files; run ``mlmat-worker TASK input.json``."""
        data = self.worker_input(self.inputs, self.soft_time_limit())
        with folder.open(INPUT_JSON, 'w', encoding='utf-8') as handle:
            json.dump(data, handle, indent=1)
        self.write_data_files(folder)
        if 'potential' in self.inputs:
            self.inputs.potential.export(Path(folder.abspath) / POTENTIAL_DIR)

        codeinfo = CodeInfo()
        codeinfo.code_uuid = self.inputs.code.uuid
        codeinfo.cmdline_params = [self.TASK, INPUT_JSON]
        codeinfo.stdout_name = 'worker.out'

        calcinfo = CalcInfo()
        calcinfo.codes_info = [codeinfo]
        calcinfo.retrieve_list = list(self._RETRIEVE)
        calcinfo.retrieve_temporary_list = list(self._RETRIEVE_TEMPORARY)
        return calcinfo


def options_error(process_class: Any, options: dict[str, Any]) -> str | None:
    """Why ``options`` are not valid ``metadata.options`` of ``process_class`` (a CalcJob), or None.

    ``resources`` may be left out (every mlmat CalcJob sets one machine, one process by default).
    """
    if not isinstance(options, dict):
        return f'expected a mapping of metadata options, got {type(options).__name__}'
    namespace = process_class.spec().inputs['metadata']['options']
    error = namespace.validate({'resources': {'num_machines': 1}, **options})
    if error is None:
        return None
    key = str(error.port or '').removeprefix('options').lstrip('.')
    return f'{key}: {error.message}' if key else error.message
