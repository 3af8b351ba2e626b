"""A non-editable install (a wheel built from the working tree) runs a job from any directory: conf/
and the embedded assets travel as package data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# What a source tree holds besides the project (see .gitignore).
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "outputs", "multirun", "mlruns", "mlartifacts",
                                    ".cache", "build", "dist", "*.egg-info", "__pycache__", "mlflow.db",
                                    ".*_cache")


def _env(target: Path, tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "LAYER_SENSITIVITY_CACHE_DIR": str(tmp_path / "cache"), "HYDRA_FULL_ERROR": "0"}
    env.pop("MLFLOW_RUN_ID", None)
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip install --no-deps --target`` of a copy of the tree (pip builds in the source folder)."""
    pytest.importorskip("setuptools")  # the build backend, used without network (no build isolation)
    tmp = tmp_path_factory.mktemp("install")
    source, target = tmp / "source", tmp / "target"
    shutil.copytree(ROOT, source, symlinks=True, ignore=NOT_SOURCE)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(source)],
                   check=True, capture_output=True, text=True, timeout=300)
    return target


def test_install_carries_conf_and_assets(installed: Path) -> None:
    package = installed / "layer_sensitivity"
    conf = package / "conf"
    assert conf.is_dir() and not conf.is_symlink()
    shipped = {p.relative_to(conf) for p in conf.rglob("*.yaml")}
    assert shipped == {p.relative_to(ROOT / "conf") for p in (ROOT / "conf").rglob("*.yaml")}
    assert (package / "assets" / "tiny-qwen3-vl" / "config.json").is_file()
    assert (package / "assets" / "captions" / "captions.txt").is_file()


def test_installed_package_runs_a_job_from_another_directory(installed: Path, tmp_path: Path) -> None:
    elsewhere, out = tmp_path / "elsewhere", tmp_path / "out"
    elsewhere.mkdir()
    env = _env(installed, tmp_path)
    where = subprocess.run([sys.executable, "-c", "import layer_sensitivity as m; print(m.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True)
    assert Path(where.stdout.strip()).is_relative_to(installed)
    job = subprocess.run([sys.executable, "-m", "layer_sensitivity", "tracking=none",
                          "dataset.max_calib_samples=4", "autoquant.reuse_scores=false",
                          f"hydra.run.dir={out}"],
                         cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert job.returncode == 0, job.stderr[-3000:]
    assert list(out.glob("*_quant_manifest.json")), sorted(p.name for p in out.iterdir())
    assert str(installed) in (out / ".hydra" / "hydra.yaml").read_text()  # conf/ from the install
    assert not any(elsewhere.iterdir())  # nothing written into the working directory
