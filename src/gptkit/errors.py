"""The exception types for everything a user can cause."""

from collections.abc import Iterable


class GptkitError(Exception):
    """A problem with the user's input or environment.

    The CLI prints the message on one line and exits with `exit_code` (2: bad input), so the
    message must name the offending value and say how to fix it.
    """

    exit_code = 2


class ProcessGroupError(GptkitError):
    """Another process of a multi-process run failed or stopped answering (exit status 1)."""

    exit_code = 1


def check_all(checks: Iterable[tuple[bool, str]]) -> None:
    """Raise GptkitError with the message of the first (ok, message) check that failed."""
    for ok, message in checks:
        if not ok:
            raise GptkitError(message)
