"""scripts/gpu_smoke.sh on a CPU machine: help, argument errors, and a clean refusal without CUDA
(bash subprocesses; the report it writes is checked in-process in tests/unit/test_scripts.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_smoke.sh"


def smoke(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_help_names_every_option(tmp_path: Path) -> None:
    done = smoke("--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for option in ("--out", "--skip-4b", "--timeout", "wmxfp4_amxfp4", "model.init=random"):
        assert option in done.stdout
    assert "set -euo" not in done.stdout  # only the comment block is printed


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "unknown argument '--bogus'"),
    (["--timeout", "soon"], "--timeout 'soon' is not a positive number"),
    (["--timeout", "0"], "is not a positive number"),
    (["--out"], "--out needs a directory"),
])
def test_bad_arguments_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    done = smoke(*args, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_it_exits_2_before_doing_anything(tmp_path: Path) -> None:
    out = tmp_path / "smoke-out"
    done = smoke("--out", str(out), "--skip-4b", "--timeout", "60", cwd=tmp_path)
    assert done.returncode == 2
    assert "no CUDA device" in done.stderr
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
