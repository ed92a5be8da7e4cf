"""Checks of plain JSON-like values shared by both sides (imports no aiida)."""

from __future__ import annotations

import math
from typing import Any


def non_finite_path(value: Any, path: str = '') -> str | None:
    """The dotted path of the first float in ``value`` that is not finite (NaN, inf, or 1e400 read as inf), or None.

    Such numbers cannot be stored in AiiDA's database, which would otherwise refuse them deep inside a submission.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return path or '<value>'
    if isinstance(value, dict):
        for key, item in value.items():
            found = non_finite_path(item, f'{path}.{key}' if path else str(key))
            if found is not None:
                return found
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = non_finite_path(item, f'{path}[{index}]')
            if found is not None:
                return found
    return None
