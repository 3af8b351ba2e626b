"""Manifest build / write / find / load (current and legacy shapes), without a model."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from layer_sensitivity import manifest, report
from layer_sensitivity.errors import UserError
from layer_sensitivity.groups import GroupStats, achieved_scope_bits, min_scope_bits
from layer_sensitivity.schema import DatasetConfig, ModelConfig, SensitivityConfig
from tests.helpers.manifests import (
    FP8,
    LM,
    NONE,
    VISION,
    build,
    legacy_doc,
    new_schema_equivalent,
    write_legacy,
)


def _groups() -> dict[str, GroupStats]:
    def g(score: float, cost: float, chosen: str = FP8, in_scope: bool = True) -> GroupStats:
        return GroupStats([FP8, NONE], [score, 0.0], [cost / 2, cost], ["m"], chosen, in_scope)

    return {
        "model.language_model.layers.0.self_attn.q_proj.quant_recipe": g(0.5, 100.0),
        "model.language_model.layers.0.mlp.down_proj.quant_recipe": g(2.0, 300.0, NONE),
        "lm_head.quant_recipe": g(1.0, 600.0),
        "model.visual.blocks.0.attn.qkv.quant_recipe": GroupStats([NONE], [0.0], [50.0], ["v"],
                                                                  NONE, False),
    }


def _manifest() -> manifest.Manifest:
    groups = _groups()
    cfg = SensitivityConfig(model=ModelConfig(name="tiny"), dataset=DatasetConfig(name="caps"))
    return build(groups, {"effective_bits_achieved": achieved_scope_bits(groups), "total_score": 1.5,
                          "satisfied": True}, cfg,
                 scheme_name="tiny_autoquant_wfp8_afp8_lm_small", target_bits=10.0,
                 modelopt_bits=10.2, score_samples=8, samples_used=8, captions_sha256="ab")


def test_bits_over_scope_ignore_frozen_groups() -> None:
    groups = _groups()
    # chosen costs 50 + 300 + 300 over 1000 uncompressed in scope
    assert achieved_scope_bits(groups) == pytest.approx(16 * 650 / 1000)
    assert min_scope_bits(groups) == pytest.approx(8.0)


def test_build_ranks_in_scope_groups_by_importance() -> None:
    m = _manifest()
    assert m.schema_version == manifest.SCHEMA_VERSION
    sens = m.layer_sensitivity
    assert "model.visual.blocks.0.attn.qkv.quant_recipe" not in sens
    assert m.frozen_groups == ["model.visual.blocks.0.attn.qkv.quant_recipe"]
    ranked = [r.name for r in m.sensitivity_ranking]
    assert ranked[0] == "model.language_model.layers.0.mlp.down_proj.quant_recipe"
    assert [sens[h].rank for h in ranked] == [1, 2, 3]


def test_build_takes_names_from_the_config_and_numbers_from_the_facts() -> None:
    m = _manifest()
    assert m.scheme.name == "tiny_autoquant_wfp8_afp8_lm_small"
    assert (m.scheme.effective_bits_requested, m.scheme.effective_bits_modelopt) == (10.0, 10.2)
    assert m.scheme.formats == ["FP8_DEFAULT_CFG"] and m.scheme.score_size == 8
    assert m.model.name == "tiny" and m.model.id == "/m"
    assert m.dataset.name == "caps" and m.dataset.size == "small"
    assert m.dataset.sha256 == "ab" and m.dataset.samples_used == 8
    assert m.quantization.pair == "wfp8_afp8"
    assert (m.quantization.weight_dtype, m.quantization.activation_dtype) == ("fp8", "fp8")
    assert m.autoquant.total_score == 1.5 and "frontier" not in m.to_json_dict()


def test_write_then_load_roundtrip(tmp_path: Path) -> None:
    m = _manifest()
    path = manifest.write(m, tmp_path)
    assert path.name == "tiny_autoquant_wfp8_afp8_lm_small_quant_manifest.json"
    assert manifest.find(tmp_path) == path
    assert manifest.load(path) == m
    assert path.read_text() == json.dumps(m.to_json_dict(), indent=2) + "\n"


@pytest.mark.parametrize("content,needle", [
    ("{not json", "not valid JSON"),
    ('{"schema_version": 99, "scheme": {}}', "unknown schema_version 99"),
    ("[1, 2]", "not a JSON object"),
])
def test_bad_manifests_are_clear_errors(tmp_path: Path, content: str, needle: str) -> None:
    p = tmp_path / "x_quant_manifest.json"
    p.write_text(content)
    with pytest.raises(UserError, match=needle):
        manifest.load(p)
    with pytest.raises(UserError, match="does not exist"):
        manifest.load(tmp_path / "missing.json")


def test_a_built_manifest_reports_sorted_descending_and_reproducibly(tmp_path: Path) -> None:
    m = _manifest()
    rows = report.layer_rows(m)
    assert list(rows.columns) == ["Group", "Modules", "Num Bits", "Sensitivity", "Size Cost"]
    assert rows["Sensitivity"].is_monotonic_decreasing
    assert rows["Group"].tolist() == ["L00.mlp.down", "lm_head", "L00.attn.qkv"]
    assert rows["Modules"].tolist() == ["m", "m", "m"]  # the modules the manifest lists
    assert not rows["Modules"].str.contains(".quant_recipe").any()
    files = report.write_reports(m, tmp_path)
    md, js = files[:2]
    first = {f: f.read_bytes() for f in files}
    assert report.write_reports(m, tmp_path) == files
    assert {f: f.read_bytes() for f in files} == first
    text = md.read_text()
    for heading in ("## Summary", "## Dataset", "## Quantization", "## Per-layer sensitivity"):
        assert heading in text
    table = text.split("## Per-layer sensitivity")[1]
    assert table.index("L00.mlp.down") < table.index("| lm_head") < table.index("L00.attn.qkv")
    doc = json.loads(js.read_text())
    assert [r["Group"] for r in doc["layers"]] == rows["Group"].tolist()
    assert doc["summary"]["Total score"] == 1.5


# --- Manifests of the earlier Hydra runner (no schema_version) ------------------------------


def test_legacy_converts_to_current_schema(tmp_path: Path) -> None:
    loaded = manifest.load(write_legacy(tmp_path))
    assert loaded.legacy is True
    m = loaded.to_json_dict()
    assert m["schema_version"] == manifest.SCHEMA_VERSION and m["legacy"] is True
    assert m["frozen_groups"] == sorted(f"{v}.quant_recipe" for v in VISION)
    sens = m["layer_sensitivity"]
    assert len(sens) == len(LM) and not any("visual" in h for h in sens)
    first = next(iter(sens))
    assert first == "model.language_model.layers.0.mlp.down_proj.quant_recipe"
    assert sens[first]["rank"] == 1 and sens[first]["importance"] == pytest.approx(0.2727)
    assert [s["rank"] for s in sens.values()] == list(range(1, len(LM) + 1))
    assert [r["name"] for r in m["sensitivity_ranking"]] == list(sens)
    assert m["scheme"] == {
        "name": "wfp8_afp8_autoquant_lm", "effective_bits_requested": 8.74530701482171,
        "effective_bits_modelopt": 8.74530701482171, "method": "gradient", "score_size": 128,
        "coverage": "lm_only", "coverage_fraction": 1.0, "formats": ["FP8_DEFAULT_CFG"]}
    assert m["model"]["name"] == "Qwen3-VL-4B-Instruct"
    assert m["autoquant"]["effective_bits_achieved"] == pytest.approx(8.744307014821711)
    assert m["autoquant"]["total_score"] == pytest.approx(3.9844110984614396)
    assert m["autoquant"]["satisfied"] is True
    assert m["dataset"]["size"] == "medium" and m["quantization"]["pair"] == "wfp8_afp8"
    assert m["run_config"]["quant_pair"]["name"] == "wfp8_afp8"


def test_legacy_report_orders_layers_exactly_like_a_new_manifest(tmp_path: Path) -> None:
    legacy = manifest.load(write_legacy(tmp_path))
    new = new_schema_equivalent()
    rows = report.layer_rows(legacy)
    assert rows.equals(report.layer_rows(new))
    assert rows["Sensitivity"].is_monotonic_decreasing
    # the tie (0.0512) is broken by name, as for a new manifest
    assert rows["Group"].tolist()[:4] == [
        "L00.mlp.down", "L00.mlp.gate_up", "L01.mlp.down", "L01.mlp.gate_up"]
    assert list(legacy.layer_sensitivity) == list(new.layer_sensitivity)
    assert [s.rank for s in legacy.layer_sensitivity.values()] == \
        [s.rank for s in new.layer_sensitivity.values()]
    table = report.render_markdown(legacy).split("## Per-layer sensitivity")[1]
    assert table == report.render_markdown(new).split("## Per-layer sensitivity")[1]


def test_legacy_importance_and_rank_are_recomputed_from_scores(tmp_path: Path) -> None:
    doc = legacy_doc(optional=False)
    for s in doc["layer_sensitivity"].values():  # stale or missing legacy fields are ignored
        s["importance"], s["rank"] = 0.0, 1
    del doc["layer_sensitivity"]["lm_head.quant_recipe"]["importance"]
    m = manifest.load(write_legacy(tmp_path, doc)).to_json_dict()
    assert list(m["layer_sensitivity"]) == list(new_schema_equivalent().layer_sensitivity)
    assert m["dataset"] == {} and m["quantization"] == {} and m["run_config"] is None


def _mutated(change: Any) -> dict[str, Any]:
    doc = copy.deepcopy(legacy_doc())
    change(doc)
    return doc


LM0 = "model.language_model.layers.0.mlp.down_proj.quant_recipe"


@pytest.mark.parametrize("change,needle", [
    (lambda d: d["layer_sensitivity"][LM0].update(scores=[0.1]), "has 2 formats but 1 scores"),
    (lambda d: d["layer_sensitivity"][LM0].update(formats="FP8"), "formats must be a list"),
    (lambda d: d["layer_sensitivity"][LM0].update(costs=[1.0, "x"]), "costs must be a list"),
    (lambda d: d["layer_sensitivity"][LM0].update(scores=[float("nan"), 0.0]), "finite"),
    (lambda d: d.update(layer_sensitivity=[]), "'layer_sensitivity' must map"),
    (lambda d: d.update(scheme={"auto_quantize_bits": 8}), "'scheme' must be an object"),
    (lambda d: d.update(dataset="medium"), "'dataset' must be an object"),
    (lambda d: d.update(layer_sensitivity={k: v for k, v in d["layer_sensitivity"].items()
                                           if "visual" in k}), "no layer group"),
])
def test_malformed_legacy_manifests_are_clear_errors(tmp_path: Path, change: Any,
                                                     needle: str) -> None:
    path = write_legacy(tmp_path, _mutated(change))
    with pytest.raises(UserError, match="cannot be read") as e:
        manifest.load(path)
    assert needle in str(e.value) and str(path) in str(e.value)


@pytest.mark.parametrize("doc,needle", [
    ({"model": {"id": "x"}}, "not a quant manifest"),
    ({"schema_version": 2, "scheme": {"name": "x"}, "layer_sensitivity": {}},
     "unknown schema_version 2"),
    ({"schema_version": "1", "scheme": {}}, "unknown schema_version '1'"),
])
def test_unknown_shapes_are_refused(tmp_path: Path, doc: dict[str, Any], needle: str) -> None:
    path = tmp_path / "x_quant_manifest.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(UserError, match=needle):
        manifest.load(path)


def test_current_schema_is_checked_too(tmp_path: Path) -> None:
    doc = new_schema_equivalent().to_json_dict()
    doc["layer_sensitivity"][LM0]["costs"] = [1.0]
    path = tmp_path / "x_quant_manifest.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(UserError, match="has 2 formats but 1 costs"):
        manifest.load(path)


def test_quant_formats_as_a_single_string(tmp_path: Path) -> None:
    doc = legacy_doc()
    doc["scheme"]["quant_formats"] = "INT8_DEFAULT_CFG"
    assert manifest.load(write_legacy(tmp_path, doc)).scheme.formats == ["INT8_DEFAULT_CFG"]
