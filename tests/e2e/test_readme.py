"""The README's notebook example runs as written (no Hydra, no MLflow, real default paths)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, tool_env

pytestmark = pytest.mark.slow


def _notebook_block() -> str:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- notebook:begin -->", 1)[1].split("<!-- notebook:end -->", 1)[0]
    match = re.search(r"```python\n(.*?)```", block, re.S)
    assert match, "the README's notebook example is not a python block"
    return match.group(1)


def test_readme_notebook_example_runs(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", _notebook_block()], cwd=tmp_path,
                          env=tool_env(tmp_path / "unused.db"), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    top = eval(proc.stdout.strip().splitlines()[-1])  # the printed top-3 group names
    assert len(top) == 3 and all(name.endswith(".quant_recipe") for name in top)
    out = tmp_path / "notebook-out"
    assert len(list(out.glob("*_quant_manifest.json"))) == 1
    assert (out / "layer-sensitivity-report.md").is_file() and list(out.glob("recipes/*.yaml"))
    assert not (tmp_path / "unused.db").exists()  # the core logs nothing anywhere
