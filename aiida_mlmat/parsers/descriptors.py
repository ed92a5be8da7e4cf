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
        finished = self.finished_output(kwargs, DESCRIPTORS_FILE)
        if finished is None or isinstance(finished, ExitCode):
            return finished
        results, path = finished
        with np.load(path) as archive:
            arrays = [archive[f'structure_{index}'] for index in range(results['n_structures'])]
        node = DescriptorsData()
        node.set_descriptors(arrays, results['descriptor'], self.node.inputs.configurations.sha256)
        self.out('descriptors', node)
        return ExitCode(0)
