"""Jobs started together on a brand-new SQLite store all land, and a raced store is repaired.

Without ``prepare_store``, 8 processes opening a new SQLite file at the same instant race in
MLflow's alembic migration: 1 of 8 finished here, and a leftover ``_alembic_tmp_*`` table can make
the store unusable for every later open.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

JOBS = 8
METRICS = 50
EXPERIMENT = "concurrency-exp"
ARTIFACT = "note.txt"
# What one job does, as the tracking layer will: prepare, get-or-create, start_run(experiment_id).
# All jobs import first, then wait for a "go" file, so they open the new store at the same instant.
WORKER = """
import sys, time
from pathlib import Path
import mlflow
from layer_sensitivity.tracking.experiments import get_or_create_experiment
from layer_sensitivity.tracking.store import prepare_store
from layer_sensitivity.tracking.uris import artifacts_beside_store

uri, experiment, index, work, artifact, metrics = sys.argv[1:]
index, work = int(index), Path(work)
(work / f"ready-{index}").touch()
while not (work / "go").exists():
    time.sleep(0.01)
prepare_store(uri)
mlflow.set_tracking_uri(uri)
experiment_id = get_or_create_experiment(experiment, artifacts_beside_store(uri, experiment))
with mlflow.start_run(experiment_id=experiment_id, run_name=f"job{index}"):
    mlflow.log_metrics({f"m{k}": float(k * index) for k in range(int(metrics))})
    mlflow.log_artifact(artifact)
"""


@dataclass(frozen=True)
class Raced:
    db: Path
    returncodes: list[int]
    stderr: list[str]


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    return env


def _runs_seen_by_plain_mlflow(db: Path) -> int:
    """Open the store as the UI, a reader or the next job would (plain MLflow, no prepare_store)."""
    import mlflow
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    uri = f"sqlite:///{db}"
    SqlAlchemyStore(uri, str(db.parent / "mlartifacts"))  # what every MLflow open runs first
    client = mlflow.MlflowClient(uri)
    return len(client.search_runs([e.experiment_id for e in client.search_experiments()]))


@pytest.fixture(scope="module")
def raced(tmp_path_factory: pytest.TempPathFactory) -> Raced:
    work = tmp_path_factory.mktemp("race")
    db = work / "store" / "mlflow.db"  # neither the file nor its directory exists yet
    (work / ARTIFACT).write_text("hello from a job\n")
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, f"sqlite:///{db}", EXPERIMENT, str(i),
                               str(work), str(work / ARTIFACT), str(METRICS)], cwd=work, env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i in range(JOBS)]
    deadline = time.monotonic() + 600  # imports of 8 processes on a busy 2-core machine
    while (len(list(work.glob("ready-*"))) < JOBS and time.monotonic() < deadline
           and all(p.poll() is None for p in procs)):
        time.sleep(0.05)
    (work / "go").touch()
    stderr = [p.communicate(timeout=600)[1] for p in procs]
    return Raced(db, [p.returncode for p in procs], stderr)


def test_every_job_finishes_in_the_right_experiment(raced: Raced) -> None:
    assert raced.returncodes == [0] * JOBS, "\n".join(e for e in raced.stderr if e)
    with sqlite3.connect(raced.db) as con:
        runs = con.execute(
            "select r.run_uuid, r.status, e.name, r.artifact_uri, "
            "(select count(*) from latest_metrics m where m.run_uuid = r.run_uuid) "
            "from runs r join experiments e on e.experiment_id = r.experiment_id").fetchall()
        leftovers = con.execute("select name from sqlite_master where name like '\\_alembic\\_tmp\\_%' "
                                "escape '\\'").fetchall()
    assert len(runs) == JOBS
    assert {(status, experiment, metrics) for _, status, experiment, _, metrics in runs} == {
        ("FINISHED", EXPERIMENT, METRICS)}
    artifact_dir = raced.db.parent / "mlartifacts" / EXPERIMENT  # beside the store, not in the cwd
    for run_id, _, _, artifact_uri, _ in runs:
        assert artifact_uri.startswith(artifact_dir.as_uri()) or artifact_uri.startswith(str(artifact_dir))
        assert (artifact_dir / run_id / "artifacts" / ARTIFACT).read_text() == "hello from a job\n"
    assert leftovers == []
    assert _runs_seen_by_plain_mlflow(raced.db) == JOBS


def test_store_broken_by_a_raced_migration_is_repaired(raced: Raced, tmp_path: Path) -> None:
    """The state a race left behind (schema mid-way, a stale ``_alembic_tmp_experiments``) breaks
    every plain MLflow open; prepare_store repairs it and keeps the runs."""
    from alembic import command
    from mlflow.store.db.utils import _get_alembic_config, create_sqlalchemy_engine_with_retry

    from layer_sensitivity.tracking.store import prepare_store

    db = tmp_path / "mlflow.db"
    shutil.copy(raced.db, db)
    uri = f"sqlite:///{db}"
    # The revision a raced store was left at here (MLflow 3.17); the next migration rebuilds tables.
    config = _get_alembic_config(uri)
    engine = create_sqlalchemy_engine_with_retry(uri)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "c8d9e0f1a2b3")
    engine.dispose()
    with sqlite3.connect(db) as con:
        con.execute("create table _alembic_tmp_experiments as select * from experiments")

    with pytest.raises(Exception, match="_alembic_tmp_experiments already exists"):
        _runs_seen_by_plain_mlflow(db)

    prepare_store(uri)
    assert _runs_seen_by_plain_mlflow(db) == JOBS
    with sqlite3.connect(db) as con:
        statuses = con.execute("select status, count(*) from runs group by status").fetchall()
    assert statuses == [("FINISHED", JOBS)]
