"""Everything MLflow: where the store is, starting/resuming/nesting runs, logging one job, and
reading a finished run back (report regeneration, publishing)."""

from __future__ import annotations

import os
import re
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import mlflow.data.pandas_dataset
import pandas as pd
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException

from .errors import UserError
from .groups import RECIPE_SUFFIX

_METRIC_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_\-./: ]")
ERROR_ARTIFACT = "error.txt"  # a failed child run's error message
PARENT_TAG = "mlflow.parentRunId"
_FINISHED, _FAILED = RunStatus.to_string(RunStatus.FINISHED), RunStatus.to_string(RunStatus.FAILED)
# Run ids that job_run started inside ``recording_runs()`` (None outside).
_STARTED: ContextVar[list[str] | None] = ContextVar("layer_sensitivity_started", default=None)


def resolve_uri(configured: str | None, project_root: Path) -> str:
    """The one store every job uses, whatever directory a job runs in.

    Order: the configured URI, ``MLFLOW_TRACKING_URI``, then ``<project root>/mlflow.db``.
    Relative SQLite and file paths are made absolute against the launch directory so a job that
    changes directory still writes to the same store.
    """
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if not uri:
        return f"sqlite:///{(project_root / 'mlflow.db').resolve()}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    if "://" not in uri:  # a bare directory: MLflow's file store
        return Path(uri).resolve().as_uri()
    return uri


def metric_key(text: str) -> str:
    return _METRIC_KEY_UNSAFE.sub("_", text)[:250]


@contextmanager
def job_run(uri: str, experiment: str, run_name: str | None = None,
            tags: dict[str, str] | None = None,
            parent_run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """The job's run.

    - A child of ``parent_run_id``, or of the active run when one is active (a sweep's parent):
      a new run nested under it (``mlflow.parentRunId``) in the parent's experiment.
    - Otherwise the run ``mlflow run`` created (MLFLOW_RUN_ID), or a new one in ``experiment``.

    The run ends FAILED if the body raises, FINISHED otherwise; a failed child also gets the
    error as its ``error.txt`` artifact.
    """
    mlflow.set_tracking_uri(uri)
    active = mlflow.active_run()
    parent = parent_run_id or (active.info.run_id if active else None)
    if parent:
        run = _start_child(parent, run_name, tags)
    elif run_id := os.environ.get("MLFLOW_RUN_ID"):
        run = mlflow.start_run(run_id=run_id, tags=tags)
    else:
        mlflow.set_experiment(experiment)
        run = mlflow.start_run(run_name=run_name, tags=tags)
    started = _STARTED.get()
    if started is not None:
        started.append(run.info.run_id)
    try:
        yield run
    except BaseException as e:
        if parent and isinstance(e, Exception):
            with suppress(Exception):  # never hide the job's own error behind a logging one
                mlflow.log_text(error_text(e), ERROR_ARTIFACT)
        mlflow.end_run(_FAILED)
        raise
    mlflow.end_run(_FINISHED)


def _start_child(parent_run_id: str, run_name: str | None,
                 tags: dict[str, str] | None) -> mlflow.ActiveRun:
    # The process's MLFLOW_RUN_ID (if any) is the parent's or unrelated: start_run would resume
    # it instead of creating the child, so it is consumed here, as start_run itself does.
    os.environ.pop("MLFLOW_RUN_ID", None)
    parent = _get_run(mlflow.MlflowClient(), parent_run_id)
    return mlflow.start_run(run_name=run_name, tags=tags, nested=True,
                            parent_run_id=parent_run_id, experiment_id=parent.info.experiment_id)


def error_text(e: BaseException) -> str:
    """A user error's own paragraph; anything else with its traceback."""
    if isinstance(e, UserError):
        return f"{e}\n"
    return "".join(traceback.format_exception(e))


@contextmanager
def recording_runs() -> Iterator[list[str]]:
    """The ids of the runs ``job_run`` starts inside the block, in order."""
    ids: list[str] = []
    token = _STARTED.set(ids)
    try:
        yield ids
    finally:
        _STARTED.reset(token)


def record_failed_child(uri: str, parent_run_id: str, run_name: str, params: dict[str, Any],
                        error: str, tags: dict[str, str] | None = None) -> str:
    """A FAILED child run for a job that failed before its own run started; returns its id."""
    mlflow.set_tracking_uri(uri)
    run = _start_child(parent_run_id, run_name, tags)
    try:
        log_params(params)
        mlflow.log_text(error, ERROR_ARTIFACT)
    finally:
        mlflow.end_run(_FAILED)
    return run.info.run_id


def log_params(params: dict[str, Any]) -> None:
    mlflow.log_params({k: "" if v is None else str(v) for k, v in params.items()})


def log_captions(lines: tuple[str, ...] | list[str], path: str, name: str, digest: str) -> None:
    """The calibration captions as an MLflow dataset input (digest = sha256 of those used)."""
    dataset = mlflow.data.pandas_dataset.from_pandas(pd.DataFrame({"caption": list(lines)}), source=path,
                                      name=name, digest=digest[:36])
    mlflow.log_input(dataset, context="calibration")


def log_job(manifest: dict[str, Any], files: list[Path], seconds: dict[str, float],
            config_file: Path | None = None) -> None:
    """Per-layer sensitivity metrics, summary metrics, phase timings and artifacts of one job."""
    aq = manifest["autoquant"]
    metrics = {
        metric_key(f"sensitivity/{h.removesuffix(RECIPE_SUFFIX)}"): float(s["importance"])
        for h, s in manifest["layer_sensitivity"].items()
    }
    metrics |= {
        "total_score": float(aq["total_score"]),
        "effective_bits_achieved": float(aq["effective_bits_achieved"]),
        "constraint_satisfied": float(bool(aq["satisfied"])),
        "num_layer_groups": float(len(manifest["layer_sensitivity"])),
    }
    metrics |= {f"seconds/{phase}": s for phase, s in seconds.items()}
    mlflow.log_metrics(metrics)
    for point in manifest.get("frontier", []):
        step = frontier_step(point["target_bits"])
        for key in ("effective_bits_achieved", "total_score", "satisfied"):
            value = point["achieved_bits" if key == "effective_bits_achieved" else key]
            mlflow.log_metric(f"frontier/{key}", float(value), step=step)
    root = files[0].parent  # the job's output directory (the manifest lives there)
    for f in [*files, *([config_file] if config_file else [])]:
        sub = f.parent.relative_to(root).as_posix()  # e.g. frontier/ for per-target recipes
        mlflow.log_artifact(str(f), artifact_path=None if sub == "." else sub)


def frontier_step(target_bits: float) -> int:
    """MLflow steps are integers: a frontier point's step is its target in hundredths of a bit."""
    return round(target_bits * 100)


def version_tags(versions: dict[str, str]) -> dict[str, str]:
    return {f"version.{k}": v for k, v in {**versions, "mlflow": mlflow.__version__}.items()}


def set_tags(tags: dict[str, str]) -> None:
    mlflow.set_tags(tags)


def log_text(text: str, artifact_file: str) -> None:
    mlflow.log_text(text, artifact_file)


def log_metrics(metrics: dict[str, float]) -> None:
    mlflow.log_metrics(metrics)


def log_table(df: pd.DataFrame, stem: str) -> None:
    """A table as ``<stem>.csv`` (pandas) and ``<stem>.json`` (MLflow's table view)."""
    mlflow.log_text(df.to_csv(index=False), f"{stem}.csv")
    mlflow.log_table(df, artifact_file=f"{stem}.json")


def set_run_tags(uri: str, run_id: str, tags: dict[str, str]) -> None:
    client = mlflow.MlflowClient(tracking_uri=uri)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


# --- Reading a finished run back -------------------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    """What report and publish need from a run, as plain data."""

    run_id: str
    run_name: str
    status: str
    experiment_id: str
    experiment_name: str
    params: dict[str, str]
    tags: dict[str, str]


def _get_run(client: mlflow.MlflowClient, run_id: str) -> mlflow.entities.Run:
    try:
        return client.get_run(run_id)
    except MlflowException as e:
        raise UserError(
            f"Run '{run_id}' was not found in the tracking store {client.tracking_uri} "
            f"({e.message.splitlines()[0] if e.message else e}). Check the run id (mlflow ui "
            "lists them) and that MLFLOW_TRACKING_URI points at the store that holds it."
        ) from None


def get_run(uri: str, run_id: str) -> RunRecord:
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = _get_run(client, run_id)
    if run.info.lifecycle_stage == "deleted":
        raise UserError(f"Run '{run_id}' is deleted. Restore it (mlflow runs restore) or pick "
                        "another run.")
    experiment = client.get_experiment(run.info.experiment_id)
    return RunRecord(
        run_id=run.info.run_id,
        run_name=run.info.run_name or "",
        status=run.info.status,
        experiment_id=run.info.experiment_id,
        experiment_name=experiment.name if experiment else "",
        params=dict(run.data.params),
        tags=dict(run.data.tags),
    )


def artifact_files(uri: str, run_id: str) -> list[str]:
    """Every artifact file of the run (relative paths, folders walked), sorted."""
    client = mlflow.MlflowClient(tracking_uri=uri)
    found: list[str] = []
    pending: list[str | None] = [None]
    while pending:
        folder = pending.pop()
        for info in client.list_artifacts(run_id, folder):
            (pending if info.is_dir else found).append(info.path)
    return sorted(found)


def download_artifact(uri: str, run_id: str, artifact_path: str, dst_dir: Path) -> Path:
    """One artifact file into ``dst_dir`` (keeping its relative path); returns the local path."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path,
                                                dst_path=str(dst_dir), tracking_uri=uri)
    return Path(local)


def upload_artifacts(uri: str, run_id: str, files: dict[str, Path]) -> None:
    """Log local files to a run at the given artifact paths, replacing files already there."""
    client = mlflow.MlflowClient(tracking_uri=uri)
    for artifact_path, local in files.items():
        folder = str(Path(artifact_path).parent)
        if Path(artifact_path).name != local.name:
            raise ValueError(f"{local} cannot be logged as {artifact_path}: names differ")
        client.log_artifact(run_id, str(local), None if folder == "." else folder)
