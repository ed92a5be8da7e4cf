"""Base parser: reads ``results.json`` and maps worker error codes to the CalcJob's banded exit codes."""

from __future__ import annotations

import json
import pathlib
from typing import Any

from aiida import orm
from aiida.engine import ExitCode
from aiida.parsers import Parser

from aiida_mlmat.calcjobs.base import WORKER_ERRORS
from aiida_mlmat.common.constants import RESULTS_JSON

#: Exit statuses set by aiida-core's scheduler plugins when a job died (out of memory, walltime, node failure).
SCHEDULER_KILLED = (110, 120, 140)


#: The statuses a worker writes in ``results.json``; anything else is a corrupt result, never taken as a success.
RESULT_STATUSES = ('ok', 'incomplete', 'error')


class MlmatParser(Parser):
    """Shared parsing of the worker protocol."""

    def load_results(self) -> tuple[dict[str, Any] | None, ExitCode | None]:
        """Return the decoded ``results.json``, or an exit code when it is missing or unreadable."""
        if RESULTS_JSON not in self.retrieved.base.repository.list_object_names():
            return None, self.exit_codes.ERROR_MISSING_RESULTS
        try:
            results = json.loads(self.retrieved.base.repository.get_object_content(RESULTS_JSON))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return None, self.exit_codes.ERROR_CORRUPT_RESULTS.format(error=str(exc))
        if not isinstance(results, dict) or 'status' not in results:
            return None, self.exit_codes.ERROR_CORRUPT_RESULTS.format(error='no `status` key')
        if results['status'] not in RESULT_STATUSES:
            expected = ', '.join(RESULT_STATUSES)
            return None, self.exit_codes.ERROR_CORRUPT_RESULTS.format(
                error=f'`status` is {results["status"]!r}, not one of {expected}'
            )
        return results, None

    def scheduler_killed(self) -> bool:
        """Whether the scheduler output parser already flagged the job as killed (walltime, memory, node)."""
        return self.node.exit_status in SCHEDULER_KILLED

    def scheduler_message_exit_code(self) -> ExitCode | None:
        """Read SLURM's own words anywhere in the job's stderr (aiida matches only its first line).

        ``DUE TO TIME LIMIT`` -> the scheduler's walltime code (120); ``CANCELLED AT`` -> ERROR_JOB_CANCELLED.
        """
        names = self.retrieved.base.repository.list_object_names()
        name = '_scheduler-stderr.txt'
        if name not in names:
            return None
        text = self.retrieved.base.repository.get_object_content(name, mode='r')
        if 'DUE TO TIME LIMIT' in text:
            return self.exit_codes.ERROR_SCHEDULER_OUT_OF_WALLTIME
        if 'CANCELLED AT' in text:
            return self.exit_codes.ERROR_JOB_CANCELLED
        return None

    def error_exit_code(self, results: dict[str, Any]) -> ExitCode:
        """Map the worker's ``error`` record to a banded exit code."""
        error = results.get('error') or {}
        label = WORKER_ERRORS.get(error.get('code', 'UNEXPECTED'), 'ERROR_WORKER_EXCEPTION')
        return getattr(self.exit_codes, label).format(message=error.get('message', 'no message'))

    @staticmethod
    def temporary_file(kwargs: dict[str, Any], name: str) -> pathlib.Path | None:
        """Return the path of a file retrieved into the temporary folder, or None."""
        folder = kwargs.get('retrieved_temporary_folder')
        if folder is None:
            return None
        path = pathlib.Path(folder) / name
        return path if path.is_file() else None

    def finished_output(
        self, kwargs: dict[str, Any], name: str
    ) -> tuple[dict[str, Any], pathlib.Path] | ExitCode | None:
        """The common opening of a parse: results read and attached, status ok, output file ``name`` present.

        :return: (results, path of ``name``), or the exit code to return (None keeps the scheduler's).
        """
        results, exit_code = self.load_results()
        if results is None:
            return None if self.scheduler_killed() else (self.scheduler_message_exit_code() or exit_code)
        self.output_results(results)
        if results['status'] != 'ok':
            return self.error_exit_code(results)
        path = self.temporary_file(kwargs, name)
        if path is None:
            return self.exit_codes.ERROR_MISSING_OUTPUT.format(name=name)
        return results, path

    def output_results(self, results: dict[str, Any]) -> None:
        """Attach the worker summary as the ``results`` Dict."""
        self.out('results', orm.Dict(results))
