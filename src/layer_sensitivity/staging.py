"""Directories written whole or not at all: a staging directory beside the target, renamed into
place once complete (the target's previous version kept until then), and the leftovers of writes
that were interrupted cleaned away (publish, and ``output_layout=publish`` jobs)."""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError

log = logging.getLogger(__name__)


@contextmanager
def staged(dest: Path) -> Iterator[Path]:
    """A hidden staging directory beside ``dest``, renamed to ``dest`` once the block completes
    (:func:`publish_files` writes through it too), so a job writing straight into the publish tree
    (``output_layout=publish``) never leaves a half-written analysis there: on any failure (disk
    full, an interruption) the staging directory and the directory chain made for it go."""
    clean_leftovers(dest.parent)
    created = [p for p in [dest.parent, *dest.parent.parents] if not p.exists()]
    stage: Path | None = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.staging-{os.getpid()}-",
                                      dir=dest.parent))
        yield stage
        _make_readable(stage)
        _commit(stage, dest)
    except BaseException:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        for made in created:  # deepest first, only while empty
            try:
                made.rmdir()
            except OSError:
                break
        raise


def _commit(stage: Path, dest: Path) -> None:
    if not dest.exists():
        try:
            os.rename(stage, dest)
        except OSError as e:
            raise UserError(f"'{dest}' appeared while publishing (another publish?): {e}. "
                            "Nothing was changed; look at it and publish again.") from None
        return
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
    os.rename(dest, old)
    try:
        os.rename(stage, dest)
    except BaseException:
        os.rename(old, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)


# --- Leftovers of interrupted publishes -------------------------------------------------------

# ".<dest>.staging-<pid>-<mkdtemp's 8>" and ".<dest>.old-<pid>-<8 hex>" (earlier versions: no pid)
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>staging|old)-(?:(?P<pid>\d+)-)?[a-z0-9_]{8}$")
STALE_AFTER_S = 3600.0  # no publish takes an hour: whatever it left is abandoned
DEAD_PID_GRACE_S = 60.0  # a dead creator's leftover, once clearly not another host's live one


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else, or the platform cannot tell
        return True
    return True


def clean_leftovers(directory: Path, now: float | None = None) -> list[Path]:
    """Remove the staging and old directories interrupted publishes left in ``directory``.

    Only names ``publish_files`` creates, and only abandoned ones: older than an hour, or made by
    a process that is gone. An ``old`` copy whose destination is missing (the publish stopped
    between its two renames) is the last published state: it is put back, not removed. Returns
    what was removed or restored; each is logged.
    """
    if not directory.is_dir():
        return []
    now = time.time() if now is None else now
    found = []
    for entry in directory.iterdir():
        match = _LEFTOVER.match(entry.name)
        if not match or not entry.is_dir() or entry.is_symlink():
            continue
        age = now - entry.stat().st_mtime
        pid = int(match["pid"]) if match["pid"] else None
        if age > STALE_AFTER_S or (pid is not None and age > DEAD_PID_GRACE_S
                                   and not _pid_alive(pid)):
            found.append((age, entry, match["name"], match["kind"], pid))
    done = []
    for age, entry, name, kind, pid in sorted(found, key=lambda f: f[0]):  # newest first
        origin = f"left by an interrupted publish (pid {pid or 'unknown'}, {age / 60:.0f} min ago)"
        dest = directory / name
        try:
            if kind == "old" and not dest.exists():
                os.rename(entry, dest)
                log.warning("restored %s from %s, %s between replacing and renaming", dest,
                            entry.name, origin)
            else:
                shutil.rmtree(entry)
                log.warning("removed %s, %s", entry, origin)
        except OSError as e:  # another publish got there first, or no permission: not ours to fix
            log.warning("could not clean up %s (%s)", entry, e)
            continue
        done.append(entry)
    return done


def fsync(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


def _make_readable(stage: Path) -> None:
    """mkdtemp makes the directory private; published directories get the usual permissions."""
    umask = os.umask(0)
    os.umask(umask)
    for d in [stage, *(p for p in stage.rglob("*") if p.is_dir())]:
        d.chmod(0o777 & ~umask)
