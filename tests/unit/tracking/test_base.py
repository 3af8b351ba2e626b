"""The tracking interface's one failure policy: how a run ends and what its error.txt says; the
no-op tracker of ``tracking=none``."""

from __future__ import annotations

import signal
from pathlib import Path

import pandas as pd

from layer_sensitivity.errors import OutOfSpace, UserError
from layer_sensitivity.tracking.base import Interrupted, NoopTracker, end_status, error_text

SECRET_URI = "postgresql://mlflow:hunter2@db.example/mlflow"


def _raised(e: BaseException) -> BaseException:
    try:
        raise e
    except BaseException as caught:  # noqa: BLE001 - a traceback to format
        return caught


def test_end_status_is_finished_killed_or_failed() -> None:
    assert end_status(None) == "FINISHED"
    assert end_status(Interrupted(signal.SIGTERM)) == "KILLED"
    assert end_status(KeyboardInterrupt()) == "KILLED"
    assert end_status(UserError("bad")) == "FAILED" and end_status(ValueError()) == "FAILED"


def test_an_interruption_says_which_signal_and_where() -> None:
    assert error_text(Interrupted(signal.SIGTERM, "autoquant")).startswith(
        "Interrupted by SIGTERM during autoquant; the run holds what was logged before that.")
    assert error_text(Interrupted(signal.SIGINT), where="reports").startswith(
        "Interrupted by SIGINT during reports;")
    assert error_text(KeyboardInterrupt()).startswith("Interrupted by SIGINT;")  # Ctrl-C, no signum


def test_a_reported_error_is_its_own_paragraph_without_credentials() -> None:
    text = error_text(_raised(UserError(f"tracking.uri={SECRET_URI} is unreachable")))
    assert text.startswith("tracking.uri=postgresql://mlflow:***@db.example") and text.endswith("\n")
    assert "Traceback" not in text and "hunter2" not in text
    assert "Traceback" not in error_text(_raised(OutOfSpace("disk full")))


def test_a_bug_keeps_its_traceback_without_credentials() -> None:
    text = error_text(_raised(RuntimeError(f"cannot connect to {SECRET_URI}")))
    assert text.startswith("Traceback") and "RuntimeError: cannot connect to" in text
    assert "hunter2" not in text


def test_noop_tracker_takes_every_call_and_records_nothing(tmp_path: Path) -> None:
    tracker = NoopTracker()
    assert tracker.enabled is False and "tracking=none" in tracker.where
    with tracker.run("job", parent_id="p", tags={"a": "b"}, description="d") as run:
        assert run.run_id is None
        run.log_params({"a": 1})
        run.log_metrics([("loss", 1.0, None)])
        run.log_files({"x.txt": tmp_path / "x.txt"})  # not read: the file need not exist
        run.log_text("t", "t.txt")
        run.log_table(pd.DataFrame({"a": [1]}), "table")
        run.set_tags({"k": "v"})
        run.log_dataset(["a cat"], "captions.txt", "captions", "ab")
        assert run.log_model("m", tmp_path, params={}, metrics={}) is None
    assert list(tmp_path.iterdir()) == []
