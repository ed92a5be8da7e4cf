"""Worker tasks: each takes the validated input dictionary and the working directory and returns a results dict."""

from __future__ import annotations

from pathlib import Path

from ase import Atoms

from aiida_mlmat.worker.errors import ErrorCode, WorkerError
from aiida_mlmat.worker.structures import read_extxyz


def read_input_frames(workdir: Path, name: str) -> list[Atoms]:
    """Read an input extxyz file of a task; a missing or unreadable file is a coded worker error.

    An empty file gives an empty list (each task decides whether that is allowed).
    """
    path = workdir / name
    if not path.is_file():
        raise WorkerError(ErrorCode.MISSING_FILE, f'input file `{name}` is missing')
    if not path.read_bytes().strip():
        return []
    try:
        return read_extxyz(str(path))
    except Exception as exc:
        raise WorkerError(ErrorCode.CORRUPT_FILE, f'cannot read `{name}` as extxyz: {exc}') from exc
