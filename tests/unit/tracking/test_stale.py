"""Runs left RUNNING by a dead process of this host end KILLED when the next run starts."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import mlflow
import psutil
import pytest

from layer_sensitivity.tracking import stale
from layer_sensitivity.tracking.mlflow_tracker import MlflowTracker


def _dead_pid() -> int:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text()) if Path(
        "/proc/sys/kernel/pid_max").is_file() else 32768
    pid = next((p for p in range(pid_max - 1, pid_max - 1000, -1) if not psutil.pid_exists(p)),
               None)
    if pid is None:
        pytest.skip("no free pid found")
    return pid


def test_the_next_run_ends_stale_runs_of_this_host_killed(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(uri, "stale", system_metrics=False)
    client = mlflow.MlflowClient(uri)
    exp = tracker._experiment_id()
    here, now = socket.gethostname(), f"{time.time():.3f}"
    dead = client.create_run(exp, run_name="sigkilled", tags={
        stale.HOST_TAG: here, stale.PID_TAG: str(_dead_pid()), stale.STARTED_TAG: now}).info.run_id
    alive = client.create_run(exp, run_name="alive", tags=stale.process_tags()).info.run_id
    elsewhere = client.create_run(exp, run_name="other host", tags={
        stale.HOST_TAG: f"not-{here}", stale.PID_TAG: str(_dead_pid()),
        stale.STARTED_TAG: now}).info.run_id
    with tracker.run("next") as run:
        pass
    assert client.get_run(dead).info.status == "KILLED"
    note = client.get_run(dead).data.tags[stale.NOTE_TAG]
    assert f"Ended KILLED by run {run.run_id}" in note and "was gone" in note
    assert client.get_run(alive).info.status == "RUNNING"
    assert client.get_run(elsewhere).info.status == "RUNNING"
    assert client.get_run(run.run_id).data.tags[stale.PID_TAG] == str(os.getpid())
