"""``publish``: a finished run copied into the analysis tree, recorded as a run nested under it.
The copying (layout, staging, provenance) is ``publish.py``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..phases import Phases
from ..publish import Published, publish_run
from .lifecycle import Outputs, RunSpec, Task, Tracked, run_task

if TYPE_CHECKING:
    from ..tracking import Run, Tracker
    from ..tracking.base import RunReader


class PublishTask(Task[Published]):
    """``publish``: a finished run copied into the analysis tree, recorded as a nested run."""

    def __init__(self, store: RunReader, run_id: str, root: Path, force: bool, models: bool) -> None:
        self.store, self.run_id, self.root = store, run_id, root
        self.force, self.models = force, models

    def validate(self) -> None:
        self.store.finished(self.run_id)

    def spec(self) -> RunSpec:
        return RunSpec("publish", parent_id=self.run_id)

    def execute(self, run: Run, phases: Phases) -> Published:
        with phases("publish"):
            return publish_run(self.store, self.run_id, self.root, self.force, self.models)

    def outputs(self, result: Published) -> Outputs:
        return Outputs(params={"publish.path": str(result.path), "publish.status": result.status,
                               "publish.force": self.force, "publish.models": self.models},
                       description=f"Run {self.run_id} {result.status} at `{result.path}`.")


def publish_tracked(store: RunReader, tracker: Tracker, run_id: str, root: Path, *,
                    force: bool = False, models: bool = False) -> Tracked[Published]:
    """Check the run, publish it, record that as a run nested under it."""
    return run_task(PublishTask(store, run_id, root, force, models), tracker)
