"""``report``: a finished run's reports regenerated from its manifest into the run itself,
recorded as a run nested under it. The regeneration is ``regenerate.py``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..phases import Phases
from ..regenerate import check_run, regenerate_run
from .lifecycle import Outputs, RunSpec, Task, Tracked, run_task

if TYPE_CHECKING:
    from ..tracking import Run, Tracker
    from ..tracking.base import RunReader


class ReportTask(Task[list[str]]):
    """``report``: a run's reports regenerated into it, recorded as a run nested under it."""

    def __init__(self, store: RunReader, run_id: str) -> None:
        self.store, self.run_id = store, run_id

    def validate(self) -> None:
        check_run(self.store, self.run_id)

    def spec(self) -> RunSpec:
        return RunSpec("report", parent_id=self.run_id)

    def execute(self, run: Run, phases: Phases) -> list[str]:
        with phases("report"):
            return regenerate_run(self.store, self.run_id)

    def outputs(self, result: list[str]) -> Outputs:
        return Outputs(params={"report.files": ", ".join(result)},
                       description=f"Regenerated {len(result)} files of run {self.run_id} from "
                                   "its manifest (the manifest is never replaced).")


def report_run(store: RunReader, tracker: Tracker, run_id: str) -> Tracked[list[str]]:
    """Check the run, regenerate its reports into it, record that as a nested run."""
    return run_task(ReportTask(store, run_id), tracker)
