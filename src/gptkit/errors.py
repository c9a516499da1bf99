"""The exception types for everything a user can cause."""


class GptkitError(Exception):
    """A problem with the user's input or environment.

    The CLI prints the message on one line and exits with `exit_code` (2: bad input), so the
    message must name the offending value and say how to fix it.
    """

    exit_code = 2


class ProcessGroupError(GptkitError):
    """Another process of a multi-process run failed or stopped answering (exit status 1)."""

    exit_code = 1
