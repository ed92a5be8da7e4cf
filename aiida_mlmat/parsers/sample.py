"""Parser ``mlmat.sample``."""

from __future__ import annotations

from typing import Any

from aiida.engine import ExitCode

from aiida_mlmat.common.constants import SAMPLED_FILE
from aiida_mlmat.data.configurations import ConfigurationSetData
from aiida_mlmat.parsers.base import MlmatParser


class SampleParser(MlmatParser):
    """Turn ``sampled.extxyz`` into an unlabelled ``mlmat.configurations`` node."""

    #: Part of the hash of every job this parser reads: bumped when its outputs change, so that caching never
    #: reuses outputs of an older worker. 1: seeds are repeated along their periodic directions only.
    CACHE_VERSION = 1

    def parse(self, **kwargs: Any) -> ExitCode | None:
        """Parse the retrieved files."""
        finished = self.finished_output(kwargs, SAMPLED_FILE)
        if finished is None or isinstance(finished, ExitCode):
            return finished
        _, path = finished
        self.out('configurations', ConfigurationSetData(content=path.read_bytes()))
        return ExitCode(0)
