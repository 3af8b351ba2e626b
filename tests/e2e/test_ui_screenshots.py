"""scripts/ui_screenshots.py in a real browser: a two-job sweep in a temporary store, ``mlflow ui`` and
headless Chromium give README screenshots that show the runs by name and their depth profiles."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("chromium") is None or shutil.which("chromedriver") is None,
                       reason="needs Debian's chromium and chromium-driver on PATH"),
]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "ui_screenshots.py"
SHOTS = ("ui-chart-profiles", "ui-run-figure", "ui-sweep-heatmap")
CHILDREN = ("wfp8_afp8/default/small", "wint4_afp16/default/small")
DECODER_KINDS = ("attn.qkv", "attn.o", "mlp.gate_up", "mlp.down")
MAX_PNG_BYTES = 400_000


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("selenium", reason="needs selenium (PyPI) to drive Chromium")
    out = tmp_path_factory.mktemp("ui-shots")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--dump-page"],
                          cwd=out, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def test_chart_view_shows_both_runs_depth_profiles(shots: Path) -> None:
    text = (shots / "ui-chart-profiles.txt").read_text(encoding="utf-8")
    for kind in DECODER_KINDS:
        assert f"share/{kind}" in text, f"no share/{kind} chart"
        for name in CHILDREN:
            # Plotly's legend entry: the run's line is drawn in that kind's chart.
            assert f"{name} (share/{kind})" in text, f"no {name} line in the share/{kind} chart"
    html = (shots / "ui-chart-profiles.html").read_text(encoding="utf-8")
    assert html.count('class="trace scatter') >= len(DECODER_KINDS) * len(CHILDREN)


def test_artifact_views_show_the_figures(shots: Path) -> None:
    figure = (shots / "ui-run-figure.txt").read_text(encoding="utf-8")
    assert "figures/depth_profile.png" in figure and any(name in figure for name in CHILDREN)
    heatmap = (shots / "ui-sweep-heatmap.txt").read_text(encoding="utf-8")
    assert "comparison/sweep-shares.png" in heatmap and "sweep" in heatmap
    for page in ("ui-run-figure", "ui-sweep-heatmap"):
        html = (shots / f"{page}.html").read_text(encoding="utf-8")
        assert '<img alt="' in html, f"{page}: no previewed image"


def test_screenshots_are_small_and_not_blank(shots: Path) -> None:
    from PIL import Image, ImageStat

    for name in SHOTS:
        png = shots / f"{name}.png"
        assert 0 < png.stat().st_size <= MAX_PNG_BYTES, f"{png.name}: {png.stat().st_size} bytes"
        with Image.open(png) as image:
            assert image.width >= 1000 and image.height >= 400, f"{png.name}: {image.size}"
            spread = ImageStat.Stat(image.convert("L")).stddev[0]
        assert spread > 8, f"{png.name} is nearly uniform (grey-level stddev {spread:.1f})"
