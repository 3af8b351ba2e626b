"""scripts/ui_screenshots.py in a real browser: a sweep, a comparison, an evaluation and a recipe in a
temporary store, ``mlflow ui`` and headless Chromium give README screenshots; what the pages show
(Overview, runs table, Compare, the HTML report) agrees with the runs' descriptions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("chromium") is None or shutil.which("chromedriver") is None,
                       reason="needs Debian's chromium and chromium-driver on PATH"),
]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "ui_screenshots.py"
SHOTS = ("ui-run-overview", "ui-runs-table", "ui-compare", "ui-chart-profiles", "ui-run-report",
         "ui-sweep-heatmap")
CHILDREN = ("wfp8_afp8/default/small", "wint4_afp16/default/small")
DECODER_KINDS = ("attn.qkv", "attn.o", "mlp.gate_up", "mlp.down")
MAX_PNG_BYTES = 400_000


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("selenium", reason="needs selenium (PyPI) to drive Chromium")
    out = tmp_path_factory.mktemp("ui-shots")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--dump-page"],
                          cwd=out, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def _runs(shots: Path) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in json.loads((shots / "runs.json").read_text(encoding="utf-8"))}


def test_chart_view_shows_both_runs_depth_profiles(shots: Path) -> None:
    text = (shots / "ui-chart-profiles.txt").read_text(encoding="utf-8")
    for kind in DECODER_KINDS:
        assert f"depth_profile/share/{kind}" in text, f"no depth_profile/share/{kind} chart"
        for name in CHILDREN:
            # Plotly's legend entry: the run's line is drawn in that kind's chart.
            assert f"{name} (depth_profile/share/{kind})" in text, f"no {name} line for {kind}"
    html = (shots / "ui-chart-profiles.html").read_text(encoding="utf-8")
    assert html.count('class="trace scatter') >= len(DECODER_KINDS) * len(CHILDREN)


def test_overview_shows_the_verdict_and_headline_metrics_that_agree(shots: Path) -> None:
    """The run's Overview: description first line and the first model metrics say the same."""
    run = _runs(shots)[CHILDREN[0]]
    text = (shots / "ui-run-overview.txt").read_text(encoding="utf-8")
    top, share = run["tags"]["top1_group"], run["metrics"]["run/top1_share"]
    assert f"Most sensitive: {top} ({share:.1f}% of the total score)" in text
    lines = text.splitlines()
    # The model metrics follow their section header, or the table header when the run has no
    # system metrics yet (MLflow then shows no sections).
    start = next((i for i, x in enumerate(lines) if x.startswith("Model metrics (")), None)
    if start is None:
        table = next(i for i, x in enumerate(lines) if x.startswith("Metrics ("))
        start = lines.index("Value", table)
    model = lines[start + 1:]
    assert model[:4] == ["run/top1_share", _shown(share), "run/top10_share",
                         _shown(run["metrics"]["run/top10_share"])]
    # no step series under a name that reads like the run's value
    assert not [x for x in lines if x.startswith(("share/", "rank/", "profile/", "eval/"))]


def _shown(value: float) -> str:
    """As MLflow's tables print a metric (JavaScript's shortest round-trip form)."""
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text


def test_runs_table_and_compare_page_agree_with_the_descriptions(shots: Path) -> None:
    runs = _runs(shots)
    table = (shots / "ui-runs-table.txt").read_text(encoding="utf-8")
    assert "Model training" in table and all(name in table for name in CHILDREN)
    assert "depth_profile" not in table  # default columns: no series value shown as a run's value
    compare = (shots / "ui-compare.txt").read_text(encoding="utf-8").splitlines()
    # the metrics table: the key's line, then one value per run in the order of the run ids
    at = max(i for i, line in enumerate(compare) if line == "run/top1_share")
    shown = [float(v) for v in compare[at + 1:at + 1 + len(CHILDREN)]]
    expected = sorted(runs[name]["metrics"]["run/top1_share"] for name in CHILDREN)
    assert sorted(shown) == pytest.approx(expected, abs=1e-4)
    for name in CHILDREN:
        run = runs[name]
        assert f"({run['metrics']['run/top1_share']:.1f}% of the total score)" in run["description"]
    assert "importance_sum" not in compare


def test_descriptions_of_every_kind_of_run(shots: Path) -> None:
    runs = _runs(shots)
    sweep = next(r for r in runs.values() if r["tags"].get("sweep") == "parent")
    assert "2 of 2 jobs finished" in sweep["description"]
    assert "Rankings agree at Spearman" in sweep["description"]
    compare = next(r for n, r in runs.items() if n.startswith("compare "))
    assert "Rankings agree at Spearman" in compare["description"]
    evaluate = next(r for n, r in runs.items() if n.startswith("evaluate "))
    assert evaluate["name"].removeprefix("evaluate ") in CHILDREN
    guided = evaluate["metrics"]["eval/guided_kl_test"]  # the headline, also in the description
    assert f"guided **{guided:.4g}** vs random" in evaluate["description"]
    recipe = next(r for n, r in runs.items() if n.startswith("mixed/"))
    assert "LM bits" in recipe["description"] and "wint4_afp16" in recipe["description"]
    assert all(r["experiment_id"] != "0" and r["name"] for r in runs.values())  # nothing in Default


def test_artifact_views_show_the_figures(shots: Path) -> None:
    report = (shots / "ui-run-report.frame.txt").read_text(encoding="utf-8")
    images = int(report.splitlines()[0].removeprefix("images: "))
    assert images >= 3 and "Figures" in report  # the HTML report's inlined figures all loaded
    assert "](figures/" not in report
    heatmap = (shots / "ui-sweep-heatmap.txt").read_text(encoding="utf-8")
    assert "comparison/sweep-shares.png" in heatmap and "sweep" in heatmap
    html = (shots / "ui-sweep-heatmap.html").read_text(encoding="utf-8")
    assert '<img alt="' in html, "ui-sweep-heatmap: no previewed image"


def test_screenshots_are_small_and_not_blank(shots: Path) -> None:
    from PIL import Image, ImageStat

    for name in SHOTS:
        png = shots / f"{name}.png"
        assert 0 < png.stat().st_size <= MAX_PNG_BYTES, f"{png.name}: {png.stat().st_size} bytes"
        with Image.open(png) as image:
            assert image.width >= 1000 and image.height >= 400, f"{png.name}: {image.size}"
            spread = ImageStat.Stat(image.convert("L")).stddev[0]
        assert spread > 8, f"{png.name} is nearly uniform (grey-level stddev {spread:.1f})"
