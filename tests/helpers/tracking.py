"""A tracker that keeps what was logged, in memory: for unit tests of the lifecycle and of each
task (the tracking interface is a protocol; MLflow itself is exercised in tests/e2e)."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from tempfile import mkdtemp
from typing import Any

import pandas as pd

from layer_sensitivity.errors import UserError
from layer_sensitivity.tasks.lifecycle import RunSpec
from layer_sensitivity.tracking.base import RunRecord, end_status


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


class MemoryReader:
    """Finished runs held in memory, each with a manifest file: the read side of the tracking
    interface (``tracking.base.RunReader``) for unit tests of report, compare, evaluate, export."""

    where = "memory"

    def __init__(self) -> None:
        self.records: dict[str, RunRecord] = {}
        self.manifests: dict[str, Path] = {}
        self.uploads: list[tuple[str, list[str]]] = []

    def add(self, run_id: str, name: str, manifest: Path | None, status: str = "FINISHED",
            tags: dict[str, str] | None = None) -> None:
        self.records[run_id] = RunRecord(run_id, name, status, "1", "exp", {}, dict(tags or {}))
        if manifest is not None:
            self.manifests[run_id] = manifest

    def get(self, run_id: str) -> RunRecord:
        if run_id not in self.records:
            raise UserError(f"Run '{run_id}' was not found in the tracking store memory.")
        return self.records[run_id]

    def finished(self, run_id: str) -> RunRecord:
        record = self.get(run_id)
        if record.status != "FINISHED":
            raise UserError(f"Run {run_id} is {record.status}.")
        return record

    def children(self, parent_id: str) -> list[RunRecord]:
        return [r for r in self.records.values() if r.tags.get("mlflow.parentRunId") == parent_id]

    def search(self, experiment: str, filter_string: str = "") -> list[RunRecord]:
        return list(self.records.values())

    def artifact_files(self, run_id: str) -> list[str]:
        return [self.manifests[run_id].name] if run_id in self.manifests else []

    def download(self, run_id: str, artifact_path: str, dst_dir: Path) -> Path:
        dst_dir.mkdir(parents=True, exist_ok=True)
        target = dst_dir / artifact_path
        shutil.copy(self.manifests[run_id], target)
        return target

    def manifest_name(self, run_id: str, files: list[str] | None = None) -> str:
        if run_id not in self.manifests:
            raise UserError(f"Run {run_id} has no manifest.")
        return self.manifests[run_id].name

    def fetch_manifest(self, run_id: str, dst_dir: Path | None = None) -> Path:
        return self.download(run_id, self.manifest_name(run_id), dst_dir or Path(mkdtemp()))

    def logged_models(self, run_id: str) -> list[dict[str, str]]:
        return []

    def download_model(self, model_id: str, dst_dir: Path) -> Path:
        raise UserError(f"No logged model {model_id}.")

    def upload(self, run_id: str, files: dict[str, Path]) -> None:
        self.uploads.append((run_id, sorted(files)))

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        record = self.records[run_id]
        self.records[run_id] = dataclasses.replace(record, tags=record.tags | tags)
