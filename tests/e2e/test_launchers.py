"""Sweeps under Hydra launchers that run jobs in other processes: one parent run, one child per
job (logged by the process that ran it), failures as FAILED children, a summary that sees all.

``hydra/launcher=local_parallel`` (joblib worker processes) and ``submitit_local`` (a process per
job), each with two workers of one torch thread on the embedded tiny model.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from layer_sensitivity import profiles
from layer_sensitivity.manifest import MANIFEST_SUFFIX
from tests.helpers import tool_env
from tests.helpers.manifests import typed

pytestmark = pytest.mark.slow

FAST = ["dataset.max_calib_samples=4", "autoquant.batch_size=2"]
PARENT_TAG = "mlflow.parentRunId"
EXPERIMENT = "qwen3-vl-layer-sensitivity"  # conf/tracking/mlflow.yaml
TIMEOUT_S = 900  # upper bound: CI may share its cores with another heavy process


def _sweep(tmp_path: Path, *args: str, env_extra: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    store = tmp_path / "mlflow.db"
    env = tool_env(store) | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"} | (env_extra or {})
    # tracking.uri as an override (not only the environment): the sweep's plan must match the
    # escaped overrides Hydra gives each job (`sqlite\:///...`), or jobs look NOT_STARTED.
    return subprocess.run(
        [sys.executable, "-m", "layer_sensitivity", "-m", *args, *FAST,
         f"tracking.uri=sqlite:///{store}", f"hydra.sweep.dir={tmp_path / 'multi'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


def _runs(tmp_path: Path) -> tuple[mlflow.entities.Run, list[mlflow.entities.Run]]:
    """The sweep's one top-level run and its children (every run of the store is one of them)."""
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    parents = [r for r in runs if PARENT_TAG not in r.data.tags]
    assert len(parents) == 1, [(r.info.run_name, r.data.tags.get(PARENT_TAG)) for r in runs]
    children = [r for r in runs if r.info.run_id != parents[0].info.run_id]
    assert all(r.data.tags[PARENT_TAG] == parents[0].info.run_id for r in children)
    return parents[0], children


def _artifacts(client: mlflow.MlflowClient, run_id: str, folder: str | None = None) -> set[str]:
    found: set[str] = set()
    for info in client.list_artifacts(run_id, folder):
        found |= _artifacts(client, run_id, info.path) if info.is_dir else {info.path}
    return found


def _assert_complete(uri: str, run: mlflow.entities.Run, dst: Path) -> None:
    """A FINISHED child holding every file its job wrote and every metric its manifest implies."""
    assert run.info.status == "FINISHED", run.info.run_name
    client = mlflow.MlflowClient(uri)
    out_dir = Path(run.data.tags["output_dir"])
    written = {p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file()}
    written = {p for p in written if not p.startswith(".hydra/") and p != "job_status.json"}
    logged = _artifacts(client, run.info.run_id)
    assert written and written <= logged, sorted(written - logged)
    (name,) = [p for p in logged if "/" not in p and p.endswith(MANIFEST_SUFFIX)]
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=name,
                                                dst_path=str(dst / run.info.run_id), tracking_uri=uri)
    assert Path(local).read_bytes() == (out_dir / name).read_bytes()
    manifest = json.loads(Path(local).read_text())
    expected = profiles.run_metrics(typed(manifest))
    assert expected and {k for k, _, _ in expected} <= set(run.data.metrics), run.info.run_name
    for key, value, step in expected:
        if step is None:
            assert math.isclose(run.data.metrics[key], value, rel_tol=1e-6), key
    assert run.data.metrics["run/total_score"] == pytest.approx(manifest["autoquant"]["total_score"])


def _error_text(uri: str, run: mlflow.entities.Run, dst: Path) -> str:
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="error.txt",
                                                dst_path=str(dst / run.info.run_id), tracking_uri=uri)
    return Path(local).read_text()


def _worker_lines(run: mlflow.entities.Run) -> list[tuple[int, int]]:
    """(pid, torch threads) from the job's own log: what the worker set up for it."""
    log = (Path(run.data.tags["output_dir"]) / "sensitivity.log").read_text()
    return [(int(pid), int(threads)) for pid, threads in
            re.findall(r"local_parallel worker pid (\d+): (\d+) torch threads", log)]


def test_local_parallel_runs_each_job_in_its_own_worker_under_the_parent(tmp_path: Path) -> None:
    """Like `mlflow run -e sweep --experiment-name <the project's>`: a run already exists
    (MLFLOW_RUN_ID); the sweep adopts it as its parent, and no worker inherits it: each logs its
    own child under it."""
    import joblib

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment(EXPERIMENT, (tmp_path / "mlartifacts").as_uri())
    launched = client.create_run(experiment).info.run_id  # what `mlflow run` does first
    proc = _sweep(tmp_path, "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2",
                  "quant_pair=fp8,int8",
                  env_extra={"MLFLOW_RUN_ID": launched, "MLFLOW_EXPERIMENT_ID": experiment})
    assert proc.returncode == 0, proc.stderr[-4000:]
    parent, children = _runs(tmp_path)
    assert parent.info.run_id == launched and parent.info.status == "FINISHED"
    assert sorted(r.info.run_name for r in children) == ["wfp8_afp8/default/small",
                                                         "wint8_aint8/default/small"]
    for child in children:
        _assert_complete(uri, child, tmp_path / "downloads")
    workers = [_worker_lines(r) for r in children]
    assert all(len(w) == 1 for w in workers), workers
    pids = {w[0][0] for w in workers}
    assert len(pids) == 2 and os.getpid() not in pids  # two worker processes, not this one
    assert {w[0][1] for w in workers} == {max(1, joblib.cpu_count() // 2)}
    assert parent.data.metrics["jobs_finished"] == 2
    assert parent.data.metrics["jobs"] == 2  # the plan matched the jobs that ran


def test_local_parallel_failed_job_is_a_failed_child(tmp_path: Path) -> None:
    """A job's error crosses the worker boundary: FAILED child with error.txt, parent FAILED,
    exit 1 with the job's own paragraph."""
    proc = _sweep(tmp_path, "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2",
                  "quant_pair=nvfp4", "model.device=cpu")
    assert proc.returncode == 1, proc.stderr[-4000:]
    assert "cannot run on cpu" in proc.stderr
    parent, (child,) = _runs(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert child.info.status == "FAILED" and parent.info.status == "FAILED"
    assert "cannot run on cpu" in _error_text(uri, child, tmp_path / "downloads")
    assert parent.data.metrics["jobs_failed"] == 1 and parent.data.metrics["jobs"] == 1


def test_submitit_local_logs_finished_and_failed_children(tmp_path: Path) -> None:
    proc = _sweep(tmp_path, "hydra/launcher=submitit_local", "quant_pair=fp8,nvfp4",
                  "model.device=cpu")
    assert proc.returncode == 1, proc.stderr[-4000:]
    parent, children = _runs(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    by_name = {r.info.run_name: r for r in children}
    assert sorted(by_name) == ["wfp4_afp4/default/small", "wfp8_afp8/default/small"]
    _assert_complete(uri, by_name["wfp8_afp8/default/small"], tmp_path / "downloads")
    failed = by_name["wfp4_afp4/default/small"]
    assert failed.info.status == "FAILED"
    assert "cannot run on cpu" in _error_text(uri, failed, tmp_path / "downloads")
    assert parent.info.status == "FAILED"
    assert (parent.data.metrics["jobs_finished"], parent.data.metrics["jobs_failed"],
            parent.data.metrics["jobs_not_started"]) == (1, 1, 0)
    summary = (tmp_path / "multi" / "sweep_summary.csv").read_text()
    assert "FINISHED" in summary and "FAILED" in summary


def _runs_in(store: Path) -> int:
    if not store.exists():
        return 0
    with sqlite3.connect(store, timeout=5) as db:
        tables = {r[0] for r in db.execute("select name from sqlite_master where type='table'")}
        return int(db.execute("select count(*) from runs").fetchone()[0]) if "runs" in tables else 0


@pytest.mark.parametrize("launcher", ["basic", "local_parallel", "submitit_local"])
def test_a_job_that_does_not_compose_is_bad_input_under_every_launcher(tmp_path: Path,
                                                                       launcher: str) -> None:
    """Hydra's sweeper composes every job where the sweep starts, whatever the launcher: a job's
    bad value is exit 2, one paragraph, no run (not even the parent), no job folder."""
    proc = _sweep(tmp_path, f"hydra/launcher={launcher}", "autoquant.score_size=2,abc")
    assert proc.returncode == 2, proc.stderr[-4000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "autoquant.score_size=abc" in errors[0], proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    assert _runs_in(tmp_path / "mlflow.db") == 0
    assert not (tmp_path / "multi").exists() or not any((tmp_path / "multi").iterdir())


def test_a_config_that_does_not_compose_is_bad_input(tmp_path: Path) -> None:
    """A value the typed schema refuses stops Hydra before any job: Hydra's message, exit 2."""
    store = tmp_path / "mlflow.db"
    proc = subprocess.run(
        [sys.executable, "-m", "layer_sensitivity", "autoquant.score_size=abc", *FAST,
         f"tracking.uri=sqlite:///{store}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=tool_env(store) | {"OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"},
        capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 2, proc.stderr[-4000:]
    assert "autoquant.score_size=abc" in proc.stderr and "Traceback" not in proc.stderr
    assert _runs_in(store) == 0 and not (tmp_path / "run").exists()


def _running_runs(store: Path) -> int:
    if not store.exists():
        return 0
    try:
        with sqlite3.connect(store, timeout=5) as db:
            return int(db.execute("select count(*) from runs where status='RUNNING'").fetchone()[0])
    except sqlite3.OperationalError:  # tables not created yet
        return 0


def test_local_parallel_sigterm_leaves_no_run_running(tmp_path: Path) -> None:
    """SIGTERM to the sweep's process alone (as `kill` or a scheduler sends it): the workers'
    running jobs end KILLED with error.txt, the job not started stays NOT_STARTED, the parent
    ends KILLED and the exit status is 143. (joblib would SIGKILL the workers mid-way otherwise.)"""
    store = tmp_path / "mlflow.db"
    env = tool_env(store) | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    sweep_dir = tmp_path / "multi"
    proc = subprocess.Popen(
        [sys.executable, "-m", "layer_sensitivity", "-m", "hydra/launcher=local_parallel",
         "hydra.launcher.n_jobs=2", "quant_pair=fp8,int8,int4", "dataset.size=medium",
         # the workers must be interrupted while they score, not after a shared pre-pass did it
         "hydra.callbacks.sweep_runs.share_scores=false", f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + TIMEOUT_S
    while _running_runs(store) < 3:  # the parent and both workers' children
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.2)
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 143, stderr[-3000:]
    parent, children = _runs(tmp_path)
    uri = f"sqlite:///{store}"
    assert parent.info.status == "KILLED"
    statuses = {r.info.run_name: r.info.status for r in children}
    assert len(children) == 2 and set(statuses.values()) <= {"KILLED", "FINISHED"}, statuses
    assert "KILLED" in statuses.values()
    for child in children:
        if child.info.status == "KILLED":
            assert "SIGTERM" in _error_text(uri, child, tmp_path / "downloads")
    summary = (sweep_dir / "sweep_summary.csv").read_text()
    assert summary.count("NOT_STARTED") == 1 and "RUNNING" not in summary
    assert parent.data.metrics["jobs_not_started"] == 1
