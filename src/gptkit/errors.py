"""The one exception type for everything a user can cause."""


class GptkitError(Exception):
    """A problem with the user's input or environment.

    The CLI prints the message on one line and exits with status 2, so the message must name
    the offending value and say how to fix it.
    """
