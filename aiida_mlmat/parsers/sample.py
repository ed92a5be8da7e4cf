"""Parser ``mlmat.sample``."""

from __future__ import annotations

from typing import Any

from aiida.engine import ExitCode

from aiida_mlmat.common.constants import SAMPLED_FILE
from aiida_mlmat.data.configurations import ConfigurationSetData
from aiida_mlmat.parsers.base import MlmatParser


class SampleParser(MlmatParser):
    """Turn ``sampled.extxyz`` into an unlabelled ``mlmat.configurations`` node."""

    def parse(self, **kwargs: Any) -> ExitCode | None:
        """Parse the retrieved files."""
        results, exit_code = self.load_results()
        if results is None:
            return None if self.scheduler_killed() else (self.scheduler_message_exit_code() or exit_code)
        self.output_results(results)
        if results['status'] != 'ok':
            return self.error_exit_code(results)
        path = self.temporary_file(kwargs, SAMPLED_FILE)
        if path is None:
            return self.exit_codes.ERROR_MISSING_OUTPUT.format(name=SAMPLED_FILE)
        self.out('configurations', ConfigurationSetData(content=path.read_bytes()))
        return ExitCode(0)
