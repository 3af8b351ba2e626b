"""Helpers shared by both test tiers: paths, subprocess runners and tracking-store queries.

Import them as ``from tests.helpers import ...``; fixtures built on them live in tests/conftest.py.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # mlflow is imported where used: unit tests that never touch it start faster
    import mlflow

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "src" / "layer_sensitivity" / "assets"
TINY_MODEL = ASSETS / "tiny-qwen3-vl"
CAPTIONS = ASSETS / "captions" / "captions.txt"
VISION_MODEL = ASSETS / "tiny-qwen3-vl-vision"  # trained on image-caption chats; has a processor
SHAPES = ASSETS / "shapes-captions"  # the bundled image-caption set (COCO captions format)
# Tiny jobs: four captions in batches of two (Hydra overrides, space-separated).
FAST = "dataset.max_calib_samples=4 autoquant.batch_size=2"
SUBPROCESS_TIMEOUT = 600
EXPERIMENT = "qwen3-vl-layer-sensitivity"  # tracking.experiment; what the README passes to `mlflow run`


def tool_env(store: Path) -> dict[str, str]:
    """Environment for a subprocess: this interpreter's bin first on PATH (``mlflow run`` calls
    ``python``), a temporary tracking store, and no run or experiment inherited from an outer
    ``mlflow run``. The score-cache variables set by conftest are inherited."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}", "HYDRA_FULL_ERROR": "0"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MLFLOW_RUN_ID", None)
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    return env


def run_cli(args: list[str], store: Path, cwd: Path | None = None, timeout: int = SUBPROCESS_TIMEOUT,
            module: str = "layer_sensitivity") -> subprocess.CompletedProcess[str]:
    """``python -m <module> ...`` against a temporary tracking store, run next to the store."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd or store.parent,
                          env=tool_env(store), capture_output=True, text=True, timeout=timeout)


def mlflow_run(entry: str, params: dict[str, str], store: Path,
               cwd: Path) -> subprocess.CompletedProcess[str]:
    """``mlflow run <repo> -e <entry> --env-manager local --experiment-name <the project's> -P k=v
    ...`` against ``store``, as the README runs it."""
    args = [sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", entry, "--env-manager", "local",
            "--experiment-name", EXPERIMENT]
    for k, v in params.items():
        args += ["-P", f"{k}={v}"]
    return subprocess.run(args, env=tool_env(store), capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT, cwd=cwd)


def finished_runs(store: Path) -> list[str]:
    """Ids of the FINISHED runs in a SQLite store (none when the store was never created)."""
    if not store.exists():
        return []
    with sqlite3.connect(store) as db:
        return [r[0] for r in db.execute("select run_uuid from runs where status='FINISHED'")]


def all_runs(uri: str) -> list[mlflow.entities.Run]:
    """Every run of every experiment in the store."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def top_level_runs(uri: str) -> list[mlflow.entities.Run]:
    """Runs without a parent."""
    return [r for r in all_runs(uri) if "mlflow.parentRunId" not in r.data.tags]


def artifact_text(uri: str, run_id: str, path: str, dst: Path) -> str:
    import mlflow

    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path,
                                                dst_path=str(dst), tracking_uri=uri)
    return Path(local).read_text()


@dataclass
class SweepRun:
    """The result of ``mlflow run -e sweep -P quant_pairs=fp8,int8 -P dataset_sizes=small``."""

    base: Path  # the launch directory; Hydra's sweep directory is base / "multi"
    store: Path
    uri: str
    proc: subprocess.CompletedProcess[str]
    parent: mlflow.entities.Run
    children: dict[str, mlflow.entities.Run]  # by run name, e.g. "wfp8_afp8/default/small"


def run_sweep(base: Path) -> SweepRun:
    """The issue's two-job sweep (fp8 and int8, small, tiny samples) through ``mlflow run``."""
    base.mkdir(parents=True, exist_ok=True)
    store = base / "mlflow.db"
    proc = mlflow_run("sweep", {"quant_pairs": "fp8,int8", "dataset_sizes": "small",
                                "overrides": f"{FAST} hydra.sweep.dir={base}/multi"}, store, base)
    assert proc.returncode == 0, proc.stderr[-4000:]
    uri = f"sqlite:///{store}"
    runs = all_runs(uri)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    children = {r.info.run_name: r for r in runs if r.info.run_id != parents[0].info.run_id}
    return SweepRun(base, store, uri, proc, parents[0], children)


def read_only_dir(path: Path) -> bool:
    """Make ``path`` (an empty directory) one in which no file can be created, even by root: a
    read-only tmpfs mounted there where this user may mount (root in CI), else mode 0555 for a
    non-root user. False where neither works (the caller skips); undo with
    :func:`release_read_only`."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)],
                             capture_output=True, check=False).returncode == 0
    if not mounted and os.geteuid() != 0:
        path.chmod(0o555)
    try:
        (path / ".probe").touch()
    except OSError:
        return True
    (path / ".probe").unlink()
    release_read_only(path)
    return False


def release_read_only(path: Path) -> None:
    if os.path.ismount(path):
        subprocess.run(["umount", str(path)], capture_output=True, check=False)
    if path.exists():
        path.chmod(0o755)


def mount_tmpfs(path: Path, options: str) -> bool:
    """Mount a tmpfs with ``options`` (e.g. ``size=200k``) on ``path``; False where this user may
    not mount (the caller skips). Undo with :func:`release_read_only`."""
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True, check=False).returncode == 0
