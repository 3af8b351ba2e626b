"""The one lifecycle: validation before the run, statuses, phases, outputs, the on_end record."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from layer_sensitivity.errors import OutOfSpace, UserError
from layer_sensitivity.phases import Phases
from layer_sensitivity.tasks.lifecycle import (
    PHASE_TAG,
    Ended,
    Outputs,
    RunSpec,
    Task,
    run_task,
)
from layer_sensitivity.tracking import Interrupted, Run
from tests.helpers.tracking import RecordedRun, RecordingTracker


class Toy(Task[int]):
    """A task whose steps can each be told to fail."""

    def __init__(self, fail_in: str = "", error: BaseException | None = None) -> None:
        self.fail_in, self.error = fail_in, error or RuntimeError("boom")
        self.steps: list[str] = []

    def _step(self, name: str) -> None:
        self.steps.append(name)
        if self.fail_in == name:
            raise self.error

    def validate(self) -> None:
        self._step("validate")

    def spec(self) -> RunSpec:
        return RunSpec("toy", parent_id="parent", tags={"kind": "toy"})

    def params(self) -> dict[str, Any]:
        return {"size": 3}

    def execute(self, run: Run, phases: Phases) -> int:
        with phases("work"):
            self._step("work")
        return 42

    def outputs(self, result: int) -> Outputs:
        self._step("outputs")
        return Outputs(params={"late": 1}, metrics=[("answer", float(result), None)],
                       tables={"t": pd.DataFrame({"a": [1]})}, tags={"done": "yes"},
                       description="All good.", files={"f.txt": Path("f.txt")})


def test_a_finished_task_logs_in_order_and_reports_its_run() -> None:
    tracker, ended = RecordingTracker(), []
    done = run_task(Toy(), tracker, on_end=ended.append)
    spec, run = tracker.runs[0]
    assert (done.result, done.run_id, run.status) == (42, "run0", "FINISHED")
    assert (spec.name, spec.parent_id, spec.tags) == ("toy", "parent", {"kind": "toy"})
    assert run.kinds() == ["params", "params", "metrics", "table", "tags", "files"]
    assert run.tags() == {"done": "yes", "mlflow.note.content": "All good."}
    assert [(e.run_id, e.status, e.result) for e in ended] == [("run0", "FINISHED", 42)]
    assert "work" in done.seconds


def test_bad_input_opens_no_run() -> None:
    tracker, ended = RecordingTracker(), []
    task = Toy("validate", UserError("bad value"))
    with pytest.raises(UserError):
        run_task(task, tracker, on_end=ended.append)
    assert tracker.runs == [] and task.steps == ["validate"]
    assert [(e.run_id, e.status) for e in ended] == [(None, "FAILED")]
    assert "bad value" in (ended[0].error or "")


def test_validating_inside_the_run_leaves_a_failed_run_with_its_params() -> None:
    tracker, ended = RecordingTracker(), []
    with pytest.raises(UserError):
        run_task(Toy("validate", UserError("bad combination")), tracker, validate_in_run=True,
                 on_end=ended.append)
    run = tracker.runs[0][1]
    assert run.status == "FAILED" and run.kinds()[0] == "params"
    assert run.tags()[PHASE_TAG] == "validate"
    assert (ended[0].run_id, ended[0].phase) == ("run0", "validate")


def test_an_interruption_ends_killed_and_says_where() -> None:
    tracker, ended = RecordingTracker(), []
    with pytest.raises(Interrupted) as info:
        run_task(Toy("work", Interrupted(15)), tracker, on_end=ended.append)
    assert info.value.where == "work"
    assert tracker.runs[0][1].status == "KILLED"
    assert ended[0].status == "KILLED" and "SIGTERM during work" in (ended[0].error or "")


def test_a_full_disk_is_one_paragraph(tmp_path: Path) -> None:
    tracker = RecordingTracker()
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))
    with pytest.raises(OutOfSpace, match="no space left|full"):
        run_task(Toy("work", full), tracker, out_of_space_what="the toy's outputs")
    assert tracker.runs[0][1].status == "FAILED"


def test_the_log_file_is_attached_even_when_the_task_fails(tmp_path: Path) -> None:
    log_file = tmp_path / "job.log"
    log_file.write_text("partial\n")
    tracker = RecordingTracker()
    with pytest.raises(RuntimeError):
        run_task(Toy("outputs"), tracker, log_file=log_file)
    run = tracker.runs[0][1]
    assert ("files", ["job.log"]) in run.events
    assert run.tags()[PHASE_TAG] == "logging"


def test_the_workspace_closes_after_logging() -> None:
    order: list[str] = []

    class Staged(Toy):
        @contextmanager
        def workspace(self) -> Iterator[None]:
            order.append("open")
            yield
            order.append("commit")

        def outputs(self, result: int) -> Outputs:
            order.append("outputs")
            return Outputs()

    run_task(Staged(), RecordingTracker())
    assert order == ["open", "outputs", "commit"]


def test_on_end_hears_of_a_tracker_that_cannot_open() -> None:
    class Broken(RecordingTracker):
        @contextmanager
        def run(self, name: str, **kwargs: Any) -> Iterator[RecordedRun]:
            raise ConnectionError("store gone")
            yield  # pragma: no cover

    ended: list[Ended] = []
    with pytest.raises(ConnectionError):
        run_task(Toy(), Broken(), on_end=ended.append)
    assert [(e.run_id, e.status) for e in ended] == [(None, "FAILED")]
