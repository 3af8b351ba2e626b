"""The tracking interface the core logs through: a run you log into, and a tracker that starts,
nests and ends runs. MLflow implements it (``tracking.mlflow``); ``NoopTracker`` logs nothing.

No MLflow import here: the tasks and sweep bookkeeping depends on this module only.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from ..errors import ReportedError
from ..redact import redact_text

ERROR_ARTIFACT = "error.txt"  # why a run ended FAILED or KILLED
Metric = tuple[str, float, "int | None"]  # key, value, step


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: the run ends KILLED with what it has; the process exits 128 + signal."""

    def __init__(self, signum: int, where: str = "") -> None:
        super().__init__(signum, where)
        self.signum = signum
        self.where = where


def end_status(error: BaseException | None) -> str:
    """FINISHED, KILLED (interrupted) or FAILED: the one failure policy of every run."""
    if error is None:
        return "FINISHED"
    return "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"


def error_text(e: BaseException, where: str = "") -> str:
    """A user error's own paragraph; an interruption and where it stopped; else the traceback."""
    if isinstance(e, KeyboardInterrupt):
        signum = getattr(e, "signum", 2)
        name = {2: "SIGINT", 15: "SIGTERM"}.get(signum, f"signal {signum}")
        at = where or getattr(e, "where", "")
        return f"Interrupted by {name}{f' during {at}' if at else ''}; the run holds what was " \
               "logged before that.\n"
    if isinstance(e, ReportedError):
        return redact_text(f"{e}\n")
    return redact_text("".join(traceback.format_exception(e)))


class Run(Protocol):
    """One run to log into."""

    @property
    def run_id(self) -> str | None: ...

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Iterable[Metric]) -> None: ...
    def log_files(self, files: Mapping[str, Path]) -> None: ...  # artifact path -> local file
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def log_table(self, df: pd.DataFrame, stem: str) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...
    def log_dataset(self, lines: list[str], source: str, name: str, digest: str) -> None: ...
    # A directory (e.g. an exported checkpoint) as a logged model linked to ``source_run_id``
    # (default: this run; MLflow 3: the experiment's Models tab); registered under
    # ``register_as`` when given. -> model id
    def log_model(self, name: str, directory: Path, *, params: Mapping[str, Any],
                  metrics: Mapping[str, float], tags: Mapping[str, str] | None = None,
                  register_as: str | None = None, source_run_id: str | None = None) -> str | None: ...


@dataclass(frozen=True)
class RunRecord:
    """What report, publish, compare, evaluate and export need of a run, as plain data."""

    run_id: str
    run_name: str
    status: str
    experiment_id: str
    experiment_name: str
    params: dict[str, str]
    tags: dict[str, str]


class RunReader(Protocol):
    """The read side: finished runs of one store, by id (MLflow's ``RunStore`` implements it).
    Bad ids, deleted or unfinished runs are ``UserError`` paragraphs."""

    where: str  # the store, credentials redacted: for messages

    def get(self, run_id: str) -> RunRecord: ...
    def finished(self, run_id: str) -> RunRecord: ...  # refused unless FINISHED
    def children(self, parent_id: str) -> list[RunRecord]: ...
    def search(self, experiment: str, filter_string: str = "") -> list[RunRecord]: ...
    def artifact_files(self, run_id: str) -> list[str]: ...
    def download(self, run_id: str, artifact_path: str, dst_dir: Path) -> Path: ...
    def manifest_name(self, run_id: str, files: list[str] | None = None) -> str: ...
    def fetch_manifest(self, run_id: str, dst_dir: Path | None = None) -> Path: ...
    def logged_models(self, run_id: str) -> list[dict[str, str]]: ...
    def download_model(self, model_id: str, dst_dir: Path) -> Path: ...
    # Annotating a finished run (report's regenerated files, publish's tag): the only writes.
    def upload(self, run_id: str, files: dict[str, Path]) -> None: ...
    def set_tags(self, run_id: str, tags: dict[str, str]) -> None: ...


class Tracker(Protocol):
    """Starts runs; each ends FINISHED, FAILED (with ``error.txt``) or KILLED when its block ends."""

    enabled: bool
    where: str  # the store, credentials redacted: for messages

    def run(self, name: str, *, parent_id: str | None = None, tags: Mapping[str, str] | None = None,
            description: str | None = None) -> AbstractContextManager[Run]: ...


class NoopRun:
    run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None: pass
    def log_metrics(self, metrics: Iterable[Metric]) -> None: pass
    def log_files(self, files: Mapping[str, Path]) -> None: pass
    def log_text(self, text: str, artifact_file: str) -> None: pass
    def log_table(self, df: pd.DataFrame, stem: str) -> None: pass
    def set_tags(self, tags: Mapping[str, str]) -> None: pass
    def log_dataset(self, lines: list[str], source: str, name: str, digest: str) -> None: pass

    def log_model(self, name: str, directory: Path, *, params: Mapping[str, Any],
                  metrics: Mapping[str, float], tags: Mapping[str, str] | None = None,
                  register_as: str | None = None, source_run_id: str | None = None) -> str | None:
        return None


class NoopTracker:
    """``tracking=none``: results stay in the output directory only."""

    enabled = False
    where = "nowhere (tracking=none)"

    @contextmanager
    def run(self, name: str, *, parent_id: str | None = None, tags: Mapping[str, str] | None = None,
            description: str | None = None) -> Iterator[Run]:
        yield NoopRun()
