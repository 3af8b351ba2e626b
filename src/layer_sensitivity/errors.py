"""The exception types the CLI turns into clean messages instead of tracebacks."""


class ReportedError(Exception):
    """A failure whose message says everything: recorded as its message, without a traceback."""


class UserError(ReportedError):
    """Bad input from the user: the message names the bad value and the fix, in one paragraph."""


class OutOfSpace(ReportedError):
    """A write failed for lack of space or permission: where, and what to do (no traceback)."""


_NO_ROOM = {28: "no space left on the device", 122: "the disk quota is exceeded",
            30: "the file system is read-only", 13: "permission denied", 1: "not permitted"}


def out_of_space(e: OSError, what: str) -> OutOfSpace | None:
    """``e`` as one paragraph when it is a full disk, a quota, a read-only file system or a
    permission problem; None for other errors."""
    reason = _NO_ROOM.get(e.errno or 0)
    if reason is None:
        return None
    where = e.filename or "the output location"
    return OutOfSpace(f"Writing {what} failed: {reason} ({where}). Free space or choose another "
                      "location (hydra.run.dir, output_layout.root, tracking.uri, --root, --out), "
                      "then run again; nothing partial was kept where it could be avoided.")
