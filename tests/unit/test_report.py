"""The Markdown / JSON reports with their figures: content, score semantics, byte-identical output."""

from __future__ import annotations

import ast
import base64
import importlib.util
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from layer_sensitivity import figures, manifest, profiles, report
from tests.helpers.manifests import typed

FIXTURES = Path(__file__).parent / "fixtures" / "report"
INT4_RUN = FIXTURES / "tiny-qwen3-vl_autoquant_wint4_afp16_lm_small_quant_manifest.json"
FP8_RUN = FIXTURES / "tiny-qwen3-vl_autoquant_wfp8_afp8_lm_small_quant_manifest.json"
INT4, NONE = "INT4_BLOCKWISE_WEIGHT_ONLY_CFG(effective-bits: 4.0)", "NONE(effective-bits: 16.0)"
INNER = ["self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj"]
SECTIONS = ["## Summary", "## Figures", "## How to read these scores", "## Dataset",
            "## Quantization", "## Per-layer sensitivity", "## Score versus bits"]


def synthetic(num_layers: int, *, lm_head: float | None = None, samples: int | None = 16,
              method: str = "gradient") -> manifest.Manifest:
    """A current-schema manifest: 4 groups a decoder layer + lm_head, random importances."""
    rng = np.random.default_rng(num_layers)
    handles = [f"model.language_model.layers.{i}.{m}.quant_recipe" for i in range(num_layers)
               for m in INNER] + ["lm_head.quant_recipe"]
    scores = dict(zip(handles, (10 ** rng.uniform(-7, -3, len(handles))).tolist(), strict=True))
    if lm_head is not None:
        scores["lm_head.quant_recipe"] = lm_head
    order = sorted(scores, key=lambda h: (-scores[h], h))
    sens = {h: {"formats": [INT4, NONE], "scores": [scores[h], 0.0], "costs": [1.0, 4.0],
                "importance": scores[h], "rank": r, "modules": [h.removesuffix(".quant_recipe")],
                "chosen": INT4} for r, h in enumerate(order, start=1)}
    return typed({"schema_version": manifest.SCHEMA_VERSION,
            "scheme": {"name": f"synthetic_{num_layers}", "method": method, "score_size": samples},
            "model": {"name": "m"}, "dataset": {"samples_used": samples, "score_batches": 4},
            "quantization": {"pair": "wint4_afp16"}, "layer_sensitivity": sens,
            "frozen_groups": [],
            "autoquant": {"effective_bits_achieved": 4.0, "total_score": 2e-3, "satisfied": True},
            "versions": {}})


def legacy(tmp_path: Path) -> manifest.Manifest:
    """A manifest of the earlier Hydra runner (no schema_version), loaded through the converter."""
    fp8 = "FP8_DEFAULT_CFG(effective-bits: 8.0)"
    sens = {f"{m}.quant_recipe": {"formats": [fp8, NONE], "scores": [s, 0.0], "costs": [1.0, 2.0],
                                  "importance": s, "rank": 9}
            for m, s in [("model.language_model.layers.0.mlp.down_proj", 0.27),
                         ("model.language_model.layers.1.self_attn.q_proj", 8.0e-6),
                         ("lm_head", 0.0065)]}
    sens["model.visual.blocks.0.attn.qkv.quant_recipe"] = {"formats": [NONE], "scores": [0.0],
                                                           "costs": [3.0]}
    doc = {"scheme": {"name": "legacy_fp8", "auto_quantize_method": "gradient",
                      "auto_quantize_score_size": 128, "quant_formats": ["FP8_DEFAULT_CFG"]},
           "model": {"id": "/m/Qwen3-VL-4B"}, "layer_sensitivity": sens,
           "autoquant_state": {"score": 0.3, "is_satisfied": True,
                               "constraints": {"effective_bits": 8.7}}}
    path = tmp_path / "in" / f"legacy{manifest.MANIFEST_SUFFIX}"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(doc))
    return manifest.load(path)


def contents(paths: list[Path]) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in paths}


def strict_json(text: str) -> Any:
    def refuse(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def test_every_file_is_written_returned_and_byte_identical_again(tmp_path: Path) -> None:
    m = manifest.load(INT4_RUN)
    files = report.write_reports(m, tmp_path / "a")
    assert [f.name for f in files[:3]] == [report.MARKDOWN_NAME, report.JSON_NAME, report.HTML_NAME]
    assert [f.relative_to(tmp_path / "a").as_posix() for f in files[3:]] == [
        f"{figures.FIGURES_DIR}/{n}" for n in figures.figure_names(m)]
    assert len(files) == 7 and all(f.is_file() for f in files)
    first = contents(files)
    assert contents(report.write_reports(m, tmp_path / "a")) == first
    assert contents(report.write_reports(manifest.load(INT4_RUN), tmp_path / "b")) == first


def test_markdown_embeds_every_figure_with_a_relative_link(tmp_path: Path) -> None:
    files = report.write_reports(manifest.load(INT4_RUN), tmp_path)
    text = files[0].read_text()
    links = re.findall(r"!\[[^\]]+\]\(([^)]+)\)", text)
    assert links == [f.relative_to(tmp_path).as_posix() for f in files[3:]]
    assert all((tmp_path / link).is_file() for link in links)
    assert json.loads(files[1].read_text())["figures"] == links


def test_html_report_inlines_every_figure_and_names_groups_as_the_metrics_do(tmp_path: Path) -> None:
    """MLflow's artifact viewer renders HTML but not a Markdown file's relative images."""
    m = manifest.load(INT4_RUN)
    files = report.write_reports(m, tmp_path)
    page = files[2].read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == len(figures.figure_names(m)) >= 3
    for src, png in zip(sources, files[3:], strict=True):
        assert src == "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    assert "](figures/" not in page and "<table>" in page
    top = profiles.group_profiles(m)[0]
    row = re.search(rf">{re.escape(top.name)}</td>\s*<td[^>]*>([^<]+)</td>", page)
    assert row is not None and row.group(1) == ", ".join(top.modules)


def test_sections_keep_their_order() -> None:
    text = report.render_markdown(manifest.load(INT4_RUN))
    positions = [text.index(s) for s in SECTIONS]
    assert positions == sorted(positions)
    no_frontier = report.render_markdown(manifest.load(FP8_RUN))
    assert "## Score versus bits" not in no_frontier and "frontier.png" not in no_frontier


def test_how_to_read_explains_sums_per_sample_and_methods() -> None:
    m = manifest.load(INT4_RUN)
    section = report.render_markdown(m).split("## How to read these scores")[1].split("## ")[0]
    assert "sums over score batches" in section
    assert "(here 16 samples in 4 batches)" in section
    assert "gradient" in section and "kl_div" in section and "This run used `gradient`" in section
    kl = synthetic(2, method="kl_div", samples=None)
    kl_section = report.render_markdown(kl).split("## How to read")[1].split("## ")[0]
    assert "This run used `kl_div`" in kl_section and "does not record" in kl_section
    assert strict_json(report.render_json(m))["how_to_read"] == report.how_to_read(m)


def test_per_layer_table_has_per_sample_scores_and_shares() -> None:
    m = manifest.load(INT4_RUN)
    doc = strict_json(report.render_json(m))
    rows = doc["layers"]
    assert [r["Group"] for r in rows] == report.layer_rows(m)["Group"].tolist()
    for r in rows:
        assert r["Per-sample score"] == pytest.approx(r["Sensitivity"] / 16)
    assert sum(r["Share (%)"] for r in rows) == pytest.approx(100.0)  # one format per group
    header = report.render_markdown(m).split("## Per-layer sensitivity")[1].splitlines()[1]
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "Group", "Modules", "Num Bits", "Sensitivity", "Per-sample score", "Share (%)", "Size Cost"]
    # the summary gives the per-sample total and the concentration
    summary = doc["summary"]
    assert summary["Score samples"] == 16
    assert summary["Total score per sample"] == pytest.approx((m.autoquant.total_score or 0) / 16)
    top = profiles.group_profiles(m)[0]
    assert summary["Most sensitive group"] == f"{top.name} ({100 * top.share:.1f}%)"
    assert doc["metrics"] == pytest.approx(profiles.summary_values(m))


def test_json_groups_carry_profiles() -> None:
    m = manifest.load(INT4_RUN)
    doc = strict_json(report.render_json(m))
    ranked = profiles.group_profiles(m)
    assert [g["handle"] for g in doc["groups"]] == [p.handle for p in ranked]
    assert [g["rank"] for g in doc["groups"]] == list(range(1, len(ranked) + 1))
    g = doc["groups"][0]
    assert (g["key"], g["layer"], g["kind"]) == (ranked[0].key, ranked[0].layer, ranked[0].kind)
    assert g["per_sample"] == pytest.approx(ranked[0].importance / 16)
    assert sum(x["share"] for x in doc["groups"]) == pytest.approx(1.0)
    assert doc["score_samples"] == 16 and doc["warnings"] == []
    assert len(doc["frontier"]) == 3 and doc["frontier"][0]["Score per sample"] == pytest.approx(
        doc["frontier"][0]["Total score"] / 16)


def test_unknown_sample_count_leaves_per_sample_cells_blank() -> None:
    m = synthetic(2, samples=None)
    doc = strict_json(report.render_json(m))
    assert all(r["Per-sample score"] is None for r in doc["layers"])
    assert all(g["per_sample"] is None for g in doc["groups"])
    table = report.render_markdown(m).split("## Per-layer sensitivity")[1]
    assert "nan" not in table


def test_lm_head_on_top_is_flagged() -> None:
    m = synthetic(4, lm_head=0.5)
    text = report.render_markdown(m)
    note = text.split("## Summary")[0]
    assert "> **Note:** `lm_head` tops the ranking" in note and "16 bits" in note
    inside = next(p for p in profiles.group_profiles(m) if p.layer is not None)
    assert f"`{inside.name}`" in note
    assert strict_json(report.render_json(m))["warnings"] == report.ranking_warnings(
        profiles.group_profiles(m))
    assert report.ranking_warnings(profiles.group_profiles(m))
    assert "> **Note:**" not in report.render_markdown(synthetic(4, lm_head=1e-9))


def test_legacy_manifest_reports_with_figures(tmp_path: Path) -> None:
    m = legacy(tmp_path)
    files = report.write_reports(m, tmp_path / "out")
    first = contents(files)
    assert contents(report.write_reports(legacy(tmp_path / "again"), tmp_path / "out")) == first
    text = files[0].read_text()
    assert "Qwen3-VL-4B" in text and "visual" not in text
    assert "![" in text and len(files) == 6  # md, json, html and three figures (no frontier)
    doc = strict_json(files[1].read_text())
    assert doc["score_samples"] == 128
    assert [g["name"] for g in doc["groups"]] == ["L00.mlp.down", "lm_head", "L01.attn.qkv"]


def test_a_145_group_report_is_fast(tmp_path: Path) -> None:
    m = synthetic(36)
    assert len(m.layer_sensitivity) == 145
    report.write_reports(synthetic(1), tmp_path / "warm")  # first use loads fonts
    # CPU time of this process: wall time on a shared machine measures the neighbours too
    start = time.process_time()
    files = report.write_reports(m, tmp_path / "big")
    seconds = time.process_time() - start
    assert len(files) == 6
    assert seconds < 2.0, f"write_reports of 145 groups took {seconds:.2f} s of CPU"


def _imports(module: str, seen: set[str]) -> set[str]:
    """Top-level packages imported by ``module`` and the package modules it imports (source read
    with ast: nothing is executed, so the check holds whatever other tests imported)."""
    if module in seen:
        return set()
    seen.add(module)
    spec = importlib.util.find_spec(module)
    assert spec and spec.origin
    tree = ast.parse(Path(spec.origin).read_text())
    found: set[str] = set()
    package = module.rpartition(".")[0]
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package if node.level else ""
            target = ".".join(x for x in (base, node.module or "") if x)
            names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
        for name in names:
            found.add(name.split(".")[0])
            if name.startswith("layer_sensitivity.") and importlib.util.find_spec(name):
                found |= _imports(name, seen)
    return found


@pytest.mark.parametrize("module", ["report", "figures", "profiles"])
def test_rendering_modules_import_no_torch_modelopt_or_mlflow(module: str) -> None:
    imported = _imports(f"layer_sensitivity.{module}", set())
    assert {"torch", "modelopt", "transformers", "mlflow", "hydra"}.isdisjoint(imported)
    assert "matplotlib" in imported or module == "profiles"
