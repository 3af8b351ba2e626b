"""Reading finished runs back: records, artifacts and manifests for report, publish and compare."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ..errors import UserError
from ..manifest import MANIFEST_SUFFIX
from ..redact import redact_text
from .base import RunRecord
from .mlflow_tracker import PARENT_TAG, upload


class RunStore:
    """One tracking store, read (and annotated) by run id: MLflow behind ``base.RunReader``."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.where = redact_text(uri)
        self.client = MlflowClient(tracking_uri=uri)

    def _get(self, run_id: str) -> mlflow.entities.Run:
        try:
            return self.client.get_run(run_id)
        except MlflowException as e:
            first = e.message.splitlines()[0] if e.message else str(e)
            raise UserError(
                f"Run '{run_id}' was not found in the tracking store {self.where} "
                f"({redact_text(first)}). Check the run id (mlflow ui lists them) and that "
                "MLFLOW_TRACKING_URI points at the store that holds it."
            ) from None

    def get(self, run_id: str) -> RunRecord:
        run = self._get(run_id)
        if run.info.lifecycle_stage == "deleted":
            raise UserError(f"Run '{run_id}' is deleted. Restore it (mlflow runs restore) or pick "
                            "another run.")
        experiment = self.client.get_experiment(run.info.experiment_id)
        return RunRecord(run.info.run_id, run.info.run_name or "", run.info.status,
                         run.info.experiment_id, experiment.name if experiment else "",
                         dict(run.data.params), dict(run.data.tags))

    def finished(self, run_id: str) -> RunRecord:
        """The run, refused unless it FINISHED (a FAILED or KILLED run's outputs are partial)."""
        record = self.get(run_id)
        if record.status != "FINISHED":
            raise UserError(f"Run {run_id} ({record.run_name}) is {record.status}; only FINISHED "
                            "runs hold complete results. Re-run the job, or pick a FINISHED run "
                            "(mlflow ui lists them).")
        return record

    def artifact_files(self, run_id: str) -> list[str]:
        """Every artifact file of the run (relative paths, folders walked), sorted."""
        found: list[str] = []
        pending: list[str | None] = [None]
        while pending:
            folder = pending.pop()
            for info in self.client.list_artifacts(run_id, folder):
                (pending if info.is_dir else found).append(info.path)
        return sorted(found)

    def download(self, run_id: str, artifact_path: str, dst_dir: Path) -> Path:
        """One artifact into ``dst_dir`` (keeping its relative path); returns the local path."""
        dst_dir.mkdir(parents=True, exist_ok=True)
        return Path(mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=artifact_path, dst_path=str(dst_dir),
            tracking_uri=self.uri))

    def manifest_name(self, run_id: str, files: list[str] | None = None) -> str:
        """The run's one top-level ``*_quant_manifest.json`` artifact."""
        names = [p for p in (files if files is not None else self.artifact_files(run_id))
                 if "/" not in p and p.endswith(MANIFEST_SUFFIX)]
        if len(names) != 1:
            raise UserError(
                f"Run {run_id} has {len(names) or 'no'} *{MANIFEST_SUFFIX} artifact"
                f"{'s' if len(names) > 1 else ''} at its top level; only a finished sensitivity "
                "job's run (e.g. a sweep's child run, not the sweep's parent) has one."
            )
        return names[0]

    def fetch_manifest(self, run_id: str, dst_dir: Path | None = None) -> Path:
        """Download the run's manifest: the one way report, publish and compare read a run."""
        name = self.manifest_name(run_id)
        return self.download(run_id, name, dst_dir or Path(tempfile.mkdtemp(prefix="manifest-")))

    def upload(self, run_id: str, files: dict[str, Path]) -> None:
        """Log local files to a run at the given artifact paths, replacing files already there."""
        upload(self.client, run_id, files)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, redact_text(value))

    def children(self, parent_id: str) -> list[RunRecord]:
        parent = self._get(parent_id)
        runs = self.client.search_runs([parent.info.experiment_id],
                                       filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'",
                                       max_results=10000, order_by=["attributes.start_time ASC"])
        return [self.get(r.info.run_id) for r in runs]

    def search(self, experiment: str, filter_string: str = "") -> list[RunRecord]:
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            raise UserError(f"Experiment '{experiment}' does not exist in {self.where}. Check the "
                            "name (mlflow ui lists experiments).")
        try:
            runs = self.client.search_runs([exp.experiment_id], filter_string=filter_string,
                                           max_results=10000,
                                           order_by=["attributes.start_time ASC"])
        except MlflowException as e:
            raise UserError(f"filter={filter_string!r} is not a valid MLflow filter "
                            f"({e.message.splitlines()[0]}). Example: \"params.pair = "
                            "'wint4_afp16' and attributes.status = 'FINISHED'\".") from None
        return [self.get(r.info.run_id) for r in runs]

    def logged_models(self, run_id: str) -> list[dict[str, str]]:
        """The logged models whose source is this run: id, name, status (newest first)."""
        run = self._get(run_id)
        models = self.client.search_logged_models(
            experiment_ids=[run.info.experiment_id],
            filter_string=f"source_run_id = '{run_id}'")
        out = [{"model_id": m.model_id, "name": m.name,
                "status": getattr(m.status, "name", str(m.status)),
                "created": str(m.creation_timestamp)} for m in models]
        return sorted(out, key=lambda m: m["created"], reverse=True)

    def download_model(self, model_id: str, dst_dir: Path) -> Path:
        """A logged model's files into ``dst_dir``."""
        dst_dir.mkdir(parents=True, exist_ok=True)
        location = self.client.get_logged_model(model_id).artifact_location
        return Path(mlflow.artifacts.download_artifacts(
            artifact_uri=location, dst_path=str(dst_dir), tracking_uri=self.uri))
