"""MlflowRun against a real SQLite store: a dataset insert lost to another job's identical insert
is retried once; other errors are not."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import mlflow
import pytest
import sqlalchemy.exc
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_STATE

from layer_sensitivity.tracking.mlflow_tracker import MlflowRun

# --- the dataset race: two jobs of one experiment log the same captions at once ------------------

class _RaceLosingClient(mlflow.MlflowClient):
    """Its first log_inputs fails as MLflow's SQL store does when another job inserted the same
    dataset row between its look-up and its insert (seen in CI: 1 of 8 parallel jobs)."""

    def __init__(self, uri: str, error: Exception) -> None:
        super().__init__(uri)
        self.error, self.calls = error, 0

    def log_inputs(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls == 1:
            raise self.error
        return super().log_inputs(*args, **kwargs)


def _unique_violation() -> MlflowException:
    cause = sqlite3.IntegrityError("UNIQUE constraint failed: datasets.experiment_id, datasets.name, "
                                   "datasets.digest")
    return MlflowException(sqlalchemy.exc.IntegrityError("INSERT INTO datasets", {}, cause),
                           INTERNAL_ERROR)


def _dataset_run(store_copy: Path, error: Exception) -> tuple[MlflowRun, _RaceLosingClient]:
    uri = f"sqlite:///{store_copy}"
    client = _RaceLosingClient(uri, error)
    experiment = client.get_experiment_by_name("kept")
    assert experiment is not None
    run = client.create_run(experiment.experiment_id)
    return MlflowRun(client, run.info.run_id), client


def test_a_lost_dataset_insert_race_is_retried_and_logs_once(store_copy: Path) -> None:
    run, client = _dataset_run(store_copy, _unique_violation())
    run.log_dataset(["a red square", "two blue circles"], source="captions.txt", name="captions",
                    digest="ab" * 32)
    assert client.calls == 2
    inputs = client.get_run(run.run_id).inputs.dataset_inputs
    assert [i.dataset.name for i in inputs] == ["captions"]


def test_other_dataset_errors_are_not_retried(store_copy: Path) -> None:
    run, client = _dataset_run(store_copy, MlflowException("Run is not active", INVALID_STATE))
    with pytest.raises(MlflowException, match="not active"):
        run.log_dataset(["a red square"], source="captions.txt", name="captions", digest="cd" * 32)
    assert client.calls == 1
