"""Hydra's own config commands work on the project's config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest
from omegaconf import OmegaConf

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _mapping(yaml_text: str) -> dict[str, Any]:
    return cast(dict[str, Any], OmegaConf.to_container(OmegaConf.create(yaml_text)))


def _layer_sensitivity(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "layer_sensitivity", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cfg_job_resolve_prints_the_resolved_job(tmp_path: Path) -> None:
    done = _layer_sensitivity("--cfg", "job", "--resolve", "quant_pair=int8", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    job = _mapping(done.stdout)
    assert "${" not in done.stdout
    assert (Path(job["model"]["path"]) / "config.json").is_file()
    assert Path(job["dataset"]["captions_path"]).is_file()
    assert job["quant_pair"]["name"] == "wint8_aint8"
    assert job["autoquant"]["score_cache_dir"].endswith("autoquant-scores")
    assert job["output_layout"]["dir"] is None  # Hydra makes its run directory only for a run
    assert not any(tmp_path.iterdir())  # printing the config runs no job


def test_cfg_job_without_resolve_keeps_the_interpolations(tmp_path: Path) -> None:
    done = _layer_sensitivity("--cfg", "job", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    job = _mapping(done.stdout)
    assert job["output_layout"]["dir"] == "${hydra:runtime.output_dir}"
    assert job["model"]["path"] == "${asset:tiny-qwen3-vl}"
