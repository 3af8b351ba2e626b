"""Runs left RUNNING by a process that no longer exists (SIGKILL, out-of-memory kill, power loss).

MLflow cannot tell such a run from a live one. Every run the project starts is tagged with the
host and pid of its process (``process.host``, ``process.pid``, ``process.started``); when a run
starts, RUNNING runs of its experiment tagged with this host whose process is gone (or whose pid
now belongs to a younger process) are ended KILLED, with a note saying why. Runs of other hosts
are left alone: only their own host can tell whether they still run.
"""

from __future__ import annotations

import logging
import os
import socket
import time

from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

HOST_TAG, PID_TAG, STARTED_TAG = "process.host", "process.pid", "process.started"
NOTE_TAG = "mlflow.note.content"
ENDED_BY_TAG = "ended_stale_by"


def _started(pid: int) -> float | None:
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.Error:  # e.g. access denied: it exists
        return 0.0


def process_tags() -> dict[str, str]:
    """Who runs this run: the host, the pid and when the process started (pid reuse)."""
    started = _started(os.getpid()) or time.time()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()),
            STARTED_TAG: f"{started:.3f}"}


def is_stale(tags: dict[str, str]) -> bool:
    """A run of this host whose process is gone (or whose pid a later process now has)."""
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return False
    started = _started(int(tags[PID_TAG]))
    if started is None:
        return True
    try:
        recorded = float(tags.get(STARTED_TAG, ""))
    except ValueError:
        return False
    return started > recorded + 1.0  # the pid was reused by a younger process


def end_stale_runs(client: MlflowClient, experiment_id: str, current: str) -> list[str]:
    """End this host's dead RUNNING runs of the experiment KILLED; their ids."""
    host = socket.gethostname().replace("'", "")
    runs = client.search_runs(
        [experiment_id], max_results=1000,
        filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'")
    ended = []
    for run in runs:
        if run.info.run_id == current or not is_stale(run.data.tags):
            continue
        tags = run.data.tags
        note = (f"Ended KILLED by run {current}: its process (pid {tags.get(PID_TAG)} on "
                f"{tags.get(HOST_TAG)}) was gone while the run was still RUNNING (killed with "
                "SIGKILL, out of memory, or the machine stopped).")
        previous = tags.get(NOTE_TAG, "")
        client.set_tag(run.info.run_id, NOTE_TAG, f"{previous}\n\n{note}" if previous else note)
        client.set_tag(run.info.run_id, ENDED_BY_TAG, current)
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
        log.warning("run %s (%s) was left RUNNING by pid %s, which is gone: ended it KILLED",
                    run.info.run_id, run.info.run_name, tags.get(PID_TAG))
        ended.append(run.info.run_id)
    return ended
