from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = ROOT / "src" / "layer_sensitivity" / "assets" / "tiny-qwen3-vl"
CAPTIONS = ROOT / "src" / "layer_sensitivity" / "assets" / "captions" / "captions.txt"


def tool_env(store: Path) -> dict[str, str]:
    """Environment for a subprocess: this interpreter's bin first on PATH (``mlflow run`` calls
    ``python``), a temporary tracking store, and no run inherited from an outer ``mlflow run``."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}", "HYDRA_FULL_ERROR": "0"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MLFLOW_RUN_ID", None)
    return env


def run_cli(args: list[str], store: Path, cwd: Path | None = None, timeout: int = 600,
            module: str = "layer_sensitivity") -> subprocess.CompletedProcess[str]:
    """``python -m layer_sensitivity ...`` against a temporary tracking store."""
    # cwd next to the store: MLflow puts a new store's artifacts in ./mlruns of the launch dir.
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd or store.parent,
                          env=tool_env(store),
                          capture_output=True, text=True, timeout=timeout)


def finished_runs(store: Path) -> list[str]:
    if not store.exists():
        return []
    with sqlite3.connect(store) as db:
        return [r[0] for r in db.execute("select run_uuid from runs where status='FINISHED'")]


@pytest.fixture(autouse=True, scope="session")
def _private_score_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Stored scores go to a temporary directory (also for subprocesses), not the repo's .cache."""
    os.environ["LAYER_SENSITIVITY_CACHE_DIR"] = str(tmp_path_factory.mktemp("score-cache"))


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "mlflow.db"


@pytest.fixture
def out_args(tmp_path: Path) -> list[str]:
    """Keep Hydra's output directories inside the test's temporary directory."""
    return [f"hydra.run.dir={tmp_path}/out", f"hydra.sweep.dir={tmp_path}/multi"]
