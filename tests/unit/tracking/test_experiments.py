"""Experiments by name: created once, a lost create race falls back to the winner's, a deleted
one is a UserError."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from layer_sensitivity.errors import UserError
from layer_sensitivity.tracking.experiments import get_or_create_experiment
from layer_sensitivity.tracking.uris import artifacts_beside_store


def test_get_or_create_experiment_creates_once(store_copy: Path) -> None:
    uri = f"sqlite:///{store_copy}"
    location = artifacts_beside_store(uri, "new-exp")
    first = get_or_create_experiment("new-exp", location, tracking_uri=uri)
    assert get_or_create_experiment("new-exp", tracking_uri=uri) == first
    experiment = mlflow.MlflowClient(uri).get_experiment(first)
    assert experiment.name == "new-exp"
    assert experiment.artifact_location.endswith(f"{store_copy.parent}/mlartifacts/new-exp")


class _LateClient(mlflow.MlflowClient):
    """A real client whose first look-up misses: another process creates the experiment meanwhile."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        self.lookups = 0

    def get_experiment_by_name(self, name: str):  # type: ignore[no-untyped-def]
        self.lookups += 1
        return None if self.lookups == 1 else super().get_experiment_by_name(name)


def test_create_race_falls_back_to_the_existing_experiment(store_copy: Path) -> None:
    uri = f"sqlite:///{store_copy}"
    kept = mlflow.MlflowClient(uri).get_experiment_by_name("kept")
    assert kept is not None
    client = _LateClient(uri)
    assert get_or_create_experiment("kept", client=client) == kept.experiment_id
    assert client.lookups == 2


def test_deleted_experiment_is_a_user_error(store_copy: Path) -> None:
    uri = f"sqlite:///{store_copy}"
    client = mlflow.MlflowClient(uri)
    client.delete_experiment(client.create_experiment("gone"))
    with pytest.raises(UserError, match="deleted"):
        get_or_create_experiment("gone", tracking_uri=uri)
