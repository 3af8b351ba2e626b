"""The one exception type the CLI turns into a clean message instead of a traceback."""


class UserError(Exception):
    """Bad input from the user: the message names the bad value and the fix, in one paragraph."""
