"""Text helpers shared by both sides (imports no aiida): Python tracebacks cut to one line."""

from __future__ import annotations

TRACEBACK = 'Traceback (most recent call last):'


def condense_log(message: str, limit: int = 400) -> str:
    """A log message in one line: a Python traceback in it (aiida-core logs one for every failed transport task,
    a calculation's stderr ends with one) is cut to the exception it ends with, e.g.
    ``aiida.schedulers.scheduler.SchedulerError: Error during submission, retval=1 stdout= stderr=sbatch: error:
    Invalid generic resource (gres) specification``.

    :param limit: the most characters kept of the exception (longer ones end in ``...``).
    """
    head, found, trace = message.partition(TRACEBACK)
    if not found:
        return message
    lines = trace.splitlines()
    frames = [index for index, line in enumerate(lines) if line.startswith('  File ')]
    tail = lines[frames[-1] + 1 :] if frames else lines
    exception = [line.strip() for line in tail if line.strip() and not line.startswith((' ', '\t'))]
    cause = ' '.join(exception).strip()
    if len(cause) > limit:
        cause = cause[: limit - 3] + '...'
    head = head.strip().rstrip(':')
    return f'{head}: {cause}' if head and cause else head or cause
