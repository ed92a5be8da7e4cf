"""Parser ``mlmat.descriptors``."""

from __future__ import annotations

from typing import Any

import numpy as np
from aiida.engine import ExitCode

from aiida_mlmat.common.constants import DESCRIPTORS_FILE
from aiida_mlmat.data.descriptors import DescriptorsData
from aiida_mlmat.parsers.base import MlmatParser


class DescriptorsParser(MlmatParser):
    """Turn ``descriptors.npz`` into a ``mlmat.descriptors`` node."""

    def parse(self, **kwargs: Any) -> ExitCode | None:
        """Parse the retrieved files."""
        results, exit_code = self.load_results()
        if results is None:
            return None if self.scheduler_killed() else (self.scheduler_message_exit_code() or exit_code)
        self.output_results(results)
        if results['status'] != 'ok':
            return self.error_exit_code(results)
        path = self.temporary_file(kwargs, DESCRIPTORS_FILE)
        if path is None:
            return self.exit_codes.ERROR_MISSING_OUTPUT.format(name=DESCRIPTORS_FILE)
        with np.load(path) as archive:
            arrays = [archive[f'structure_{index}'] for index in range(results['n_structures'])]
        node = DescriptorsData()
        node.set_descriptors(arrays, results['descriptor'], self.node.inputs.configurations.sha256)
        self.out('descriptors', node)
        return ExitCode(0)
