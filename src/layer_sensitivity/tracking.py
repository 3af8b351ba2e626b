"""Everything MLflow: where the store is, starting/resuming runs, and logging one job."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import RunStatus

from .autoquant import RECIPE_SUFFIX

_METRIC_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_\-./: ]")


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
            tags: dict[str, str] | None = None) -> Iterator[mlflow.ActiveRun]:
    """The job's run: the one ``mlflow run`` created (MLFLOW_RUN_ID), or a new one.

    The run ends FAILED if the body raises, FINISHED otherwise.
    """
    mlflow.set_tracking_uri(uri)
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if run_id:
        run = mlflow.start_run(run_id=run_id, tags=tags)
    else:
        mlflow.set_experiment(experiment)
        run = mlflow.start_run(run_name=run_name, tags=tags)
    try:
        yield run
    except BaseException:
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))


def log_params(params: dict[str, Any]) -> None:
    mlflow.log_params({k: "" if v is None else str(v) for k, v in params.items()})


def log_captions(lines: tuple[str, ...] | list[str], path: str, name: str, digest: str) -> None:
    """The calibration captions as an MLflow dataset input (digest = sha256 of those used)."""
    dataset = mlflow.data.from_pandas(pd.DataFrame({"caption": list(lines)}), source=path,
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
    for f in [*files, *([config_file] if config_file else [])]:
        mlflow.log_artifact(str(f))


def version_tags(versions: dict[str, str]) -> dict[str, str]:
    return {f"version.{k}": v for k, v in {**versions, "mlflow": mlflow.__version__}.items()}


def set_tags(tags: dict[str, str]) -> None:
    mlflow.set_tags(tags)
