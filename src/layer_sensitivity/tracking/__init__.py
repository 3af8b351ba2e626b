"""Tracking: a small interface (``base``), MLflow behind it (``mlflow_tracker``, ``runs``,
``store``) and a no-op. Importing this package does not import MLflow."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..schema import TrackingConfig
from .base import (
    ERROR_ARTIFACT,
    Interrupted,
    NoopTracker,
    Run,
    RunReader,
    RunRecord,
    Tracker,
    end_status,
    error_text,
)

if TYPE_CHECKING:
    from .runs import RunStore

__all__ = ["ERROR_ARTIFACT", "Interrupted", "NoopTracker", "Run", "RunReader", "RunRecord", "Tracker",
           "create", "discard_launched_run", "open_store", "end_status", "error_text", "run_store"]


def create(cfg: TrackingConfig) -> Tracker:
    """The tracker ``tracking=...`` asks for: MLflow, or nothing at all."""
    if not cfg.enabled:
        return NoopTracker()
    from .mlflow_tracker import MlflowTracker
    from .uris import bound_http_retries, resolve_uri

    bound_http_retries()
    return MlflowTracker(resolve_uri(cfg.uri), cfg.experiment, cfg.system_metrics)


def discard_launched_run(message: str) -> bool:
    """Under ``mlflow run``: its still-empty run is deleted after bad input (nothing to record)."""
    import os

    if not os.environ.get("MLFLOW_RUN_ID"):
        return False
    from .mlflow_tracker import discard_launched_run as discard

    return discard(message)


def open_store(uri: str | None = None, experiment: str | None = None
               ) -> tuple[RunReader, Tracker]:
    """An existing store's runs, and the tracker that records what is done to them (report,
    publish, evaluate, export: runs nested under the run they act on; compare: in
    ``experiment`` unless nested under a sweep's parent). Refuses a store that does not exist."""
    reader = run_store(uri)
    default = TrackingConfig()
    return reader, create(TrackingConfig(uri=reader.uri, system_metrics=False,
                                         experiment=experiment or default.experiment))


def run_store(uri: str | None = None) -> RunStore:
    """Finished runs of a store (``MLFLOW_TRACKING_URI`` or the project's default when None)."""
    from .runs import RunStore
    from .store import check_existing_store
    from .uris import bound_http_retries, resolve_uri

    bound_http_retries()
    resolved = resolve_uri(uri)
    check_existing_store(resolved)  # before MLflow's client, which would create or retry
    return RunStore(resolved)
