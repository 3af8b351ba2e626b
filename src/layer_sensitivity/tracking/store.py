"""Where the tracking store is, and getting it ready before any job logs into it."""

from __future__ import annotations

import os
from pathlib import Path

from mlflow.tracking import MlflowClient

from .. import paths

DEFAULT_STORE = "mlflow.db"


def resolve_uri(configured: str | None) -> str:
    """The one store every job uses, whatever directory it runs in.

    Order: the configured URI, ``MLFLOW_TRACKING_URI``, then ``<project root>/mlflow.db``.
    Relative SQLite paths are made absolute against the launch directory.
    """
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or ""
    if not uri:
        return f"sqlite:///{(paths.project_root() / DEFAULT_STORE).resolve()}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite://")) if uri.startswith("sqlite:///") else None


def prepare(uri: str) -> None:
    """Create and migrate the store once, before any job logs (parallel jobs race otherwise)."""
    from ..tracking_store import prepare_store

    prepare_store(uri)


def get_or_create_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """Race-free; a new experiment in a SQLite store keeps its artifacts beside the store."""
    from ..tracking_store import artifacts_beside_store, get_or_create_experiment

    return get_or_create_experiment(name, artifacts_beside_store(uri, name), client=client)
