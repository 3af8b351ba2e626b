"""Fixtures for both tiers; plain helpers are in tests/helpers.

Tiers: tests/unit (fast, what a plain ``pytest -q`` runs) and tests/e2e (subprocesses,
``mlflow run``, model runs; every test marked ``slow``). A plain ``pytest`` (no paths, no ``-m``)
deselects ``slow``; naming a path or a marker expression runs what was asked for.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Re-exported for test modules not yet moved into a tier (they import these from conftest).
from tests.helpers import (  # noqa: F401
    CAPTIONS,
    ROOT,
    TINY_MODEL,
    SweepRun,
    finished_runs,
    run_cli,
    run_sweep,
    tool_env,
)

SLOW = "slow"


def pytest_configure(config: pytest.Config) -> None:
    """Plain ``pytest`` runs the unit tier: no paths given (testpaths used) and no ``-m``."""
    if config.args_source == pytest.Config.ArgsSource.TESTPATHS and not config.option.markexpr:
        config.option.markexpr = f"not {SLOW}"


@pytest.fixture(autouse=True, scope="session")
def _private_score_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Stored scores and their key go to a temporary directory (also for subprocesses), not the
    repo's .cache nor ~/.config."""
    base = tmp_path_factory.mktemp("score-cache")
    os.environ["LAYER_SENSITIVITY_CACHE_DIR"] = str(base)
    os.environ["LAYER_SENSITIVITY_CACHE_KEY_FILE"] = str(base / "key" / "score-cache.key")


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A SQLite tracking store that does not exist yet."""
    return tmp_path / "mlflow.db"


@pytest.fixture(scope="session")
def pristine_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store created by prepare_store (the slow part), with an experiment and a tagged run;
    tests change copies of it (``store_copy``)."""
    import mlflow

    from layer_sensitivity.tracking.store import prepare_store

    db = tmp_path_factory.mktemp("pristine") / "mlflow.db"
    uri = f"sqlite:///{db}"
    prepare_store(uri)
    client = mlflow.MlflowClient(uri)
    experiment_id = client.create_experiment("kept", artifact_location=str(db.parent / "art"))
    run = client.create_run(experiment_id, tags={"kept": "yes"})
    client.set_terminated(run.info.run_id)
    return db


@pytest.fixture
def store_copy(pristine_store: Path, tmp_path: Path) -> Path:
    import shutil

    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    shutil.copy(pristine_store, db)
    return db


@pytest.fixture
def out_args(tmp_path: Path) -> list[str]:
    """Keep Hydra's output directories inside the test's temporary directory."""
    return [f"hydra.run.dir={tmp_path}/out", f"hydra.sweep.dir={tmp_path}/multi"]


@pytest.fixture(scope="session")
def swept(tmp_path_factory: pytest.TempPathFactory) -> SweepRun:
    """One two-job sweep (fp8, int8; small, 4 samples) through ``mlflow run -e sweep`` per
    session; report, publish and sweep tests read its runs (and may add runs of their own)."""
    return run_sweep(tmp_path_factory.mktemp("shared-sweep"))
