"""A team's set-up: `mlflow server` (scripts/tracking_server.sh) serving runs and artifacts, on
SQLite and on PostgreSQL, with 8 jobs logging at once from 4 parallel workers: nothing lost.

PostgreSQL is Debian's `postgresql` package (binaries under /usr/lib/postgresql/*/bin): the test
creates a cluster in a temporary directory and starts it on 127.0.0.1 (as the `postgres` user
when the tests run as root, since postgres refuses root); it skips when the binaries are missing.
"""

from __future__ import annotations

import json
import math
import os
import pwd
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import mlflow
import pytest

from layer_sensitivity import profiles
from layer_sensitivity.manifest import MANIFEST_SUFFIX
from tests.helpers import ROOT, tool_env
from tests.helpers.manifests import typed

pytestmark = pytest.mark.slow

PARENT_TAG = "mlflow.parentRunId"
SERVER_SCRIPT = ROOT / "scripts" / "tracking_server.sh"
SWEEP = ["quant_pair=fp8,int8", "dataset.max_calib_samples=2,3,4,5", "autoquant.batch_size=2"]
JOBS = 8
WORKERS = 4
STARTUP_TIMEOUT_S = 600  # upper bound: a busy CI machine
SWEEP_TIMEOUT_S = 420


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


@contextmanager
def _tracking_server(backend_uri: str, artifacts: Path, log: Path) -> Iterator[str]:
    """scripts/tracking_server.sh on a free loopback port; its URL once it answers /health."""
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with log.open("w") as out:
        proc = subprocess.Popen(["bash", str(SERVER_SCRIPT), "--backend", backend_uri,
                                 "--artifacts", str(artifacts), "--host", "127.0.0.1",
                                 "--port", str(port), "--workers", "2"],
                                stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # its own process group: stop it whole
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited {proc.returncode}:\n{_tail(log)}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer in {STARTUP_TIMEOUT_S} s:\n{_tail(log)}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@contextmanager
def _postgres() -> Iterator[tuple[str, dict[str, Any]]]:
    """A throw-away PostgreSQL cluster on 127.0.0.1 with an empty ``mlflow`` database: its URI
    and psycopg2 connection arguments."""
    psycopg2 = pytest.importorskip("psycopg2")
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql); "
                    "no initdb under /usr/lib/postgresql/*/bin or on PATH")
    as_user: dict[str, Any] = {}
    if os.geteuid() == 0:  # postgres refuses to run as root: run it as the `postgres` user
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
        as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    # Not under pytest's tmp_path: its folders are private to this user, postgres cannot enter.
    work = Path(tempfile.mkdtemp(prefix="layer-sens-pg-"))
    if as_user:
        os.chown(work, as_user["user"], as_user["group"])
    data, port = work / "data", _free_port()

    def pg(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(bindir / cmd[0]), *cmd[1:]], cwd=work, check=check,
                              capture_output=True, text=True, timeout=120, **as_user)

    try:
        pg("initdb", "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        pg("pg_ctl", "-D", str(data), "-l", str(work / "postgres.log"), "-w", "-t", "60", "-o",
           f"-h 127.0.0.1 -p {port} -k {work} -c fsync=off -c full_page_writes=off", "start")
        connect = {"host": "127.0.0.1", "port": port, "user": "postgres"}
        admin = psycopg2.connect(dbname="postgres", **connect)
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("CREATE DATABASE mlflow")
        admin.close()
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow", connect | {"dbname": "mlflow"}
    finally:
        pg("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop", check=False)
        shutil.rmtree(work, ignore_errors=True)


def _finished_in_database(backend: str, db: Any) -> int:
    """FINISHED runs as the backend database itself holds them (not through MLflow)."""
    query = "SELECT count(*) FROM runs WHERE status = 'FINISHED' AND lifecycle_stage = 'active'"
    if backend == "sqlite":
        with sqlite3.connect(db) as con:
            return int(con.execute(query).fetchone()[0])
    import psycopg2

    with psycopg2.connect(**db) as con, con.cursor() as cur:
        cur.execute(query)
        return int(cur.fetchone()[0])


def _artifacts(client: mlflow.MlflowClient, run_id: str, folder: str | None = None) -> set[str]:
    found: set[str] = set()
    for info in client.list_artifacts(run_id, folder):
        found |= _artifacts(client, run_id, info.path) if info.is_dir else {info.path}
    return found


def _assert_complete(uri: str, run: mlflow.entities.Run, dst: Path, served_from: Path) -> None:
    """A FINISHED child holding every file its job wrote (downloaded through the server, equal to
    the job's own) and every metric its manifest implies."""
    assert run.info.status == "FINISHED", run.info.run_name
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
    client = mlflow.MlflowClient(uri)
    out_dir = Path(run.data.tags["output_dir"])
    written = {p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file()}
    written = {p for p in written if not p.startswith(".hydra/") and p != "job_status.json"}
    logged = _artifacts(client, run.info.run_id)
    assert written and written <= logged, sorted(written - logged)
    (name,) = [p for p in logged if "/" not in p and p.endswith(MANIFEST_SUFFIX)]
    local = Path(mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path=name, dst_path=str(dst / run.info.run_id),
        tracking_uri=uri))
    assert local.read_bytes() == (out_dir / name).read_bytes()
    assert list(served_from.rglob(f"{run.info.run_id}/artifacts/{name}"))  # stored by the server
    manifest = json.loads(local.read_text())
    expected = profiles.run_metrics(typed(manifest))
    assert expected and {k for k, _, _ in expected} <= set(run.data.metrics), run.info.run_name
    for key, value, step in expected:
        if step is None:
            assert math.isclose(run.data.metrics[key], value, rel_tol=1e-6), key


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_eight_jobs_at_once_against_a_tracking_server(backend: str, tmp_path: Path) -> None:
    served_from = tmp_path / "server" / "artifacts"
    with ExitStack() as stack:
        if backend == "sqlite":
            db: Any = tmp_path / "server" / "mlflow.db"
            backend_uri = f"sqlite:///{db}"
        else:
            backend_uri, db = stack.enter_context(_postgres())
        uri = stack.enter_context(_tracking_server(backend_uri, served_from,
                                                   tmp_path / "server.log"))
        env = tool_env(tmp_path / "unused.db") | {"MLFLOW_TRACKING_URI": uri,
                                                   "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        proc = subprocess.run(
            [sys.executable, "-m", "layer_sensitivity", "-m", "hydra/launcher=local_parallel",
             f"hydra.launcher.n_jobs={WORKERS}", *SWEEP, f"tracking.uri={uri}",
             f"hydra.sweep.dir={tmp_path / 'multi'}"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=SWEEP_TIMEOUT_S)
        assert proc.returncode == 0, proc.stderr[-4000:]

        client = mlflow.MlflowClient(uri)
        runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
        (parent,) = [r for r in runs if PARENT_TAG not in r.data.tags]
        children = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id]
        assert len(runs) == JOBS + 1 and len(children) == JOBS
        assert len({r.info.run_name for r in children}) == JOBS
        for child in children:
            _assert_complete(uri, child, tmp_path / "downloads", served_from)
        assert parent.info.status == "FINISHED"
        assert (parent.data.metrics["jobs"], parent.data.metrics["jobs_finished"]) == (JOBS, JOBS)
        assert _finished_in_database(backend, db) == JOBS + 1  # 0 lost, in the database itself
        assert not (tmp_path / "unused.db").exists() and not (tmp_path / "mlruns").exists()
