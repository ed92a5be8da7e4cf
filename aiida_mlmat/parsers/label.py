"""Parser ``mlmat.label``."""

from __future__ import annotations

import json
from typing import Any

from aiida.engine import ExitCode

from aiida_mlmat.common.constants import EXCLUDED_FILE, LABELLED_FILE
from aiida_mlmat.data.configurations import ConfigurationSetData
from aiida_mlmat.parsers.base import MlmatParser


class LabelParser(MlmatParser):
    """Turn ``labelled.extxyz`` and the exclusion record into a labelled ``mlmat.configurations`` node."""

    def _excluded(self, kwargs: dict[str, Any]) -> list[dict[str, Any]]:
        path = self.temporary_file(kwargs, EXCLUDED_FILE)
        if path is None:
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def _labelled(self, kwargs: dict[str, Any], excluded: list[dict[str, Any]]) -> ConfigurationSetData | None:
        path = self.temporary_file(kwargs, LABELLED_FILE)
        if path is None:
            return None
        content = path.read_bytes()
        if not content.strip():
            return None
        return ConfigurationSetData(
            content=content, calculator=self.node.inputs.calculator.get_dict(), excluded=excluded
        )

    def parse(self, **kwargs: Any) -> ExitCode | None:
        """Parse the retrieved files; keep partial labels of an interrupted run as ``partial_configurations``."""
        results, exit_code = self.load_results()
        excluded = self._excluded(kwargs)
        if results is None:
            partial = self._labelled(kwargs, excluded)
            if partial is not None:
                self.out('partial_configurations', partial)
            if self.scheduler_killed():
                return None  # keep the scheduler's exit code (110, 120, 140): the restart wrapper handles it
            return exit_code

        self.output_results(results)
        status = results['status']
        if status == 'ok':
            labelled = self._labelled(kwargs, excluded)
            if labelled is None:
                return self.exit_codes.ERROR_MISSING_OUTPUT.format(name=LABELLED_FILE)
            self.out('configurations', labelled)
            return ExitCode(0)
        if status == 'incomplete':
            partial = self._labelled(kwargs, excluded)
            if partial is not None:
                self.out('partial_configurations', partial)
        return self.error_exit_code(results)
