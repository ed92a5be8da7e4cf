"""Parser ``mlmat.label``."""

from __future__ import annotations

import io
import json
from typing import Any

from aiida.engine import ExitCode
from ase import Atoms

from aiida_mlmat.common.constants import EXCLUDED_FILE, LABELLED_FILE
from aiida_mlmat.data.configurations import ConfigurationSetData
from aiida_mlmat.parsers.base import MlmatParser


def complete_frames(content: bytes) -> list[Atoms]:
    """Read the frames of an extxyz file that a killed job may have cut short, dropping an incomplete last one."""
    from ase.io import iread

    frames: list[Atoms] = []
    try:
        for atoms in iread(io.StringIO(content.decode('utf-8', errors='replace')), index=':', format='extxyz'):
            frames.append(atoms)
    except Exception:  # the frame being written when the job died
        pass
    return frames


class LabelParser(MlmatParser):
    """Turn ``labelled.extxyz`` and the exclusion record into a labelled ``mlmat.configurations`` node."""

    #: Part of the hash of every job this parser reads: bumped when its outputs change, so that caching never
    #: reuses outputs of an older parser. 2: a set labelled by a potential records it (``calculator.potential``).
    #: 3: a restart names the earlier job in the exclusion reasons it copies, and counts its labels without stress.
    CACHE_VERSION = 3

    #: The worker's output file, and the CalcJob's outputs for a complete and an interrupted run.
    OUTPUT_FILE = LABELLED_FILE
    OUTPUT = 'configurations'
    PARTIAL_OUTPUT = 'partial_configurations'

    def _excluded(self, kwargs: dict[str, Any]) -> list[dict[str, Any]]:
        path = self.temporary_file(kwargs, EXCLUDED_FILE)
        if path is None:
            return []
        records = []
        for line in path.read_text(errors='replace').splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a killed job
        return records

    def _labelled(
        self, kwargs: dict[str, Any], excluded: list[dict[str, Any]], partial: bool = False
    ) -> ConfigurationSetData | None:
        """The labelled frames as a node; for a partial run, the complete frames before any cut-off one."""
        path = self.temporary_file(kwargs, self.OUTPUT_FILE)
        content = path.read_bytes() if path is not None else b''
        calculator = self.node.inputs.calculator.get_dict()
        if calculator.get('name') == 'mlmat' and 'potential' in self.node.inputs:
            calculator['potential'] = self.node.inputs.potential.uuid  # which model gave the energies
        if not partial:
            return (
                ConfigurationSetData(content=content, calculator=calculator, excluded=excluded)
                if content.strip()
                else None
            )
        frames = complete_frames(content)
        if not frames and not excluded:
            return None
        return ConfigurationSetData(frames, calculator=calculator, excluded=excluded)

    def finished(self, results: dict[str, Any]) -> ExitCode:
        """The exit code of a complete run whose outputs are attached (subclasses add warnings)."""
        if results.get('n_without_stress'):
            name = self.node.inputs.calculator.get_dict().get('name')
            self.logger.warning(
                f'{results["n_without_stress"]} periodic configuration(s) labelled without stress: the calculator '
                f'`{name}` does not give it' + (' (GPAW only in its plane-wave mode)' if name == 'gpaw' else '')
            )
        return ExitCode(0)

    def parse(self, **kwargs: Any) -> ExitCode | None:
        """Parse the retrieved files; keep partial labels of an interrupted run as ``partial_configurations``."""
        results, exit_code = self.load_results()
        excluded = self._excluded(kwargs)
        if results is None:
            partial = self._labelled(kwargs, excluded, partial=True)
            if partial is not None:
                self.out(self.PARTIAL_OUTPUT, partial)
            if self.scheduler_killed():
                return None  # keep the scheduler's exit code (110, 120, 140): the restart wrapper handles it
            return self.scheduler_message_exit_code() or exit_code

        self.output_results(results)
        status = results['status']
        if status == 'ok':
            labelled = self._labelled(kwargs, excluded)
            if labelled is None:
                return self.exit_codes.ERROR_MISSING_OUTPUT.format(name=self.OUTPUT_FILE)
            self.out(self.OUTPUT, labelled)
            return self.finished(results)
        if status == 'incomplete':
            partial = self._labelled(kwargs, excluded, partial=True)
            if partial is not None:
                self.out(self.PARTIAL_OUTPUT, partial)
        return self.error_exit_code(results)
