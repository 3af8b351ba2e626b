"""Directories written whole or not at all, and the leftovers of interrupted writes."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from layer_sensitivity import staging


def test_staged_output_is_renamed_into_place_only_when_complete(tmp_path: Path) -> None:
    dest = tmp_path / "root" / "model" / "layer-analysis" / "scheme"
    with pytest.raises(OSError, match="No space left"), staging.staged(dest) as stage:
        (stage / "manifest.json").write_text("{}")
        assert not dest.exists()  # nothing in the publish tree while the job writes
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert not (tmp_path / "root").exists()  # no half-written analysis, no empty directory chain
    with staging.staged(dest) as stage:
        (stage / "manifest.json").write_text("{}")
    assert (dest / "manifest.json").read_text() == "{}"
    assert [p.name for p in dest.parent.iterdir()] == ["scheme"]  # no staging directory left


def test_a_failed_replacement_keeps_the_previous_version(tmp_path: Path) -> None:
    dest = tmp_path / "scheme"
    with staging.staged(dest) as stage:
        (stage / "report.md").write_text("first\n")
    with pytest.raises(RuntimeError), staging.staged(dest) as stage:
        (stage / "report.md").write_text("second, never finished\n")
        raise RuntimeError("interrupted")
    assert (dest / "report.md").read_text() == "first\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scheme"]


def _leftover(directory: Path, name: str, age_s: float) -> Path:
    path = directory / name
    path.mkdir()
    (path / "f").write_text("x")
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_abandoned_leftovers_go_and_live_ones_stay(tmp_path: Path) -> None:
    dead_pid = 4_194_303  # above the default pid_max: no process has it
    stale = _leftover(tmp_path, ".scheme.staging-12-abcdefgh", staging.STALE_AFTER_S + 60)
    of_the_dead = _leftover(tmp_path, f".other.staging-{dead_pid}-abcdefgh",
                            staging.DEAD_PID_GRACE_S + 60)
    mine = _leftover(tmp_path, f".third.staging-{os.getpid()}-abcdefgh",
                     staging.DEAD_PID_GRACE_S + 60)  # this process is alive: not abandoned
    unrelated = _leftover(tmp_path, ".scheme.backup", staging.STALE_AFTER_S + 60)
    removed = staging.clean_leftovers(tmp_path)
    assert sorted(removed) == sorted([stale, of_the_dead])
    assert mine.is_dir() and unrelated.is_dir() and not stale.exists()


def test_an_old_copy_whose_destination_is_missing_is_put_back(tmp_path: Path) -> None:
    old = _leftover(tmp_path, ".scheme.old-12-0123abcd", staging.STALE_AFTER_S + 60)
    assert staging.clean_leftovers(tmp_path) == [old]
    assert (tmp_path / "scheme" / "f").read_text() == "x"
