"""Parser ``mlmat.relax``."""

from __future__ import annotations

from typing import Any

from aiida.engine import ExitCode

from aiida_mlmat.common.constants import RELAXED_FILE
from aiida_mlmat.parsers.label import LabelParser


class RelaxParser(LabelParser):
    """Turn ``relaxed.extxyz`` and the exclusion record into the ``relaxed`` set; flag unconverged relaxations."""

    OUTPUT_FILE = RELAXED_FILE
    OUTPUT = 'relaxed'
    PARTIAL_OUTPUT = 'partial_relaxed'

    def finished(self, results: dict[str, Any]) -> ExitCode:
        """Exit 510 (a warning: every output is attached) when some relaxations did not converge."""
        count = int(results.get('n_unconverged', 0))
        if count:
            return self.exit_codes.WARNING_UNCONVERGED.format(count=count)
        return ExitCode(0)
