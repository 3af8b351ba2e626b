"""A tracker that keeps what was logged, in memory: for unit tests of the lifecycle and of each
task (the tracking interface is a protocol; MLflow itself is exercised in tests/e2e)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from layer_sensitivity.lifecycle import RunSpec
from layer_sensitivity.tracking.base import end_status


class RecordedRun:
    """A run that keeps what was logged into it, in order."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.events: list[tuple[str, Any]] = []
        self.status = "RUNNING"

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.events.append(("params", dict(params)))

    def log_metrics(self, metrics: Any) -> None:
        self.events.append(("metrics", list(metrics)))

    def log_files(self, files: Mapping[str, Path]) -> None:
        self.events.append(("files", sorted(files)))

    def log_text(self, text: str, artifact_file: str) -> None:
        self.events.append(("text", artifact_file))

    def log_table(self, df: pd.DataFrame, stem: str) -> None:
        self.events.append(("table", stem))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.events.append(("tags", dict(tags)))

    def log_dataset(self, lines: list[str], source: str, name: str, digest: str) -> None:
        self.events.append(("dataset", name))

    def log_model(self, *args: Any, **kwargs: Any) -> str | None:
        return None

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]

    def tags(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for kind, value in self.events:
            if kind == "tags":
                out |= value
        return out


class RecordingTracker:
    """Opens RecordedRuns and ends them as the real trackers do (FINISHED / FAILED / KILLED)."""

    enabled, where = True, "memory"

    def __init__(self) -> None:
        self.runs: list[tuple[RunSpec, RecordedRun]] = []

    @contextmanager
    def run(self, name: str, *, parent_id: str | None = None,
            tags: Mapping[str, str] | None = None, description: str | None = None
            ) -> Iterator[RecordedRun]:
        run = RecordedRun(f"run{len(self.runs)}")
        self.runs.append((RunSpec(name, parent_id, dict(tags or {}), description), run))
        try:
            yield run
        except BaseException as e:
            run.status = end_status(e)
            raise
        run.status = "FINISHED"
