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


HELP_ENTRY_POINTS = ["layer_sensitivity", *(f"layer_sensitivity.cli.{name}" for name in (
    "sweep", "report", "publish", "compare", "evaluate", "recipe", "export"))]
HEAVY = ("torch", "modelopt", "mlflow", "transformers")

_HELP_PROBE = """
import json, runpy, sys
module, heavy = sys.argv[1], sys.argv[2].split(",")
sys.argv = [module, "--help"]
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
except SystemExit as e:
    code = e.code
else:
    code = 0
print(json.dumps({"code": code, "loaded": [m for m in heavy if m in sys.modules]}), file=sys.stderr)
"""


@pytest.mark.parametrize("module", HELP_ENTRY_POINTS)
def test_help_describes_the_parameters_without_loading_torch(module: str, tmp_path: Path) -> None:
    """--help stays fast (under 2 s) because it imports no torch, ModelOpt, MLflow or transformers."""
    import json

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _HELP_PROBE, module, ",".join(HEAVY)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    probe = json.loads(done.stderr.strip().splitlines()[-1])
    assert probe["code"] in (0, None), done.stderr[-2000:]
    assert "usage:" in done.stdout
    assert len(done.stdout.splitlines()) < 40  # a few lines per parameter, not a config dump
    assert probe["loaded"] == [], f"{module} --help imports {probe['loaded']}"
    assert not any(tmp_path.iterdir())
