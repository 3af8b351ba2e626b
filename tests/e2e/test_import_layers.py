"""What importing a layer loads, checked in a fresh interpreter: the manifest-side modules (compare,
recipes and their baselines) stay free of torch, ModelOpt, MLflow and Hydra.

A fresh ``python -c`` is the honest check: in the test process other tests have imported torch
already. (tests/unit/test_report.py checks report, figures and profiles by reading their imports.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.recipes import INT4, synthetic

pytestmark = pytest.mark.slow


def _python(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_compare_imports_neither_torch_nor_tracking() -> None:
    _python("import sys, layer_sensitivity.compare; "
            "bad = [m for m in ('torch', 'modelopt', 'mlflow', 'hydra') if m in sys.modules]; "
            "assert not bad, bad")


def test_building_recipes_imports_neither_torch_nor_modelopt(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text(json.dumps(synthetic([INT4])))
    _python("import json, sys; from layer_sensitivity import recipe_files, recipes; "
            "from layer_sensitivity.manifest import Manifest; "
            f"m = Manifest.model_validate(json.load(open({str(path)!r}))); "
            "from layer_sensitivity import baselines, budgets, equal_bits, ground_truth; "
            "rs = recipes.from_frontier(m) + baselines.equal_bits_recipes(m, (0.1, 0.25), 3); "
            f"recipe_files.write_recipes(rs, {str(tmp_path / 'out')!r}, m); "
            "bad = [x for x in ('torch', 'modelopt') if x in sys.modules]; assert not bad, bad")
    # frontier + per budget: guided, ranking order, reverse, 5 rules, 3 random
    assert len(list((tmp_path / "out").glob("*.yaml"))) == 1 + 2 * (3 + 5 + 3)
