"""The exception types the CLI turns into clean messages instead of tracebacks."""


class ReportedError(Exception):
    """A failure whose message says everything: recorded as its message, without a traceback."""


class UserError(ReportedError):
    """Bad input from the user: the message names the bad value and the fix, in one paragraph."""
