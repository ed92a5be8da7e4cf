"""Machine-readable error codes that the worker writes into ``results.json``.

The parser of each CalcJob maps a code to a banded AiiDA exit code (3xx unrecoverable, 4xx recoverable).
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """Error codes reported by the worker."""

    INVALID_INPUT = 'INVALID_INPUT'  # input.json does not validate against the schema
    MISSING_FILE = 'MISSING_FILE'  # an input file named in input.json is absent
    CORRUPT_FILE = 'CORRUPT_FILE'  # an input file cannot be read
    UNKNOWN_CALCULATOR = 'UNKNOWN_CALCULATOR'  # the calculator name is not in the registry
    CALCULATOR_UNAVAILABLE = 'CALCULATOR_UNAVAILABLE'  # known, but its code is not installed where the worker runs
    ALL_FAILED = 'ALL_FAILED'  # every configuration of the batch failed
    WALLTIME = 'WALLTIME'  # the soft time limit was reached before all work was done (recoverable)
    MISSING_LABELS = 'MISSING_LABELS'  # the loss weights labels the data lack
    EMPTY_SPLIT = 'EMPTY_SPLIT'  # a training or validation split without configurations
    UNKNOWN_SPECIES = 'UNKNOWN_SPECIES'  # species outside the model's
    RESUME_MISMATCH = 'RESUME_MISMATCH'  # checkpoint made with other hyperparameters or data
    NAN_LOSS = 'NAN_LOSS'  # non-finite loss (recoverable: lower the learning rate)
    OUT_OF_MEMORY = 'OUT_OF_MEMORY'  # the device ran out of memory (recoverable: smaller batches)
    UNEXPECTED = 'UNEXPECTED'  # anything else


class WorkerError(Exception):
    """An error the worker reports in ``results.json`` with a code and exits non-zero."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message
