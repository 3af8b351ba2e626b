"""Manifest build / load (current and legacy) and the report writers, without a model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from layer_sensitivity import manifest, report
from layer_sensitivity.groups import GroupStats, achieved_scope_bits, min_scope_bits
from layer_sensitivity.errors import UserError

FP8, NONE = "FP8_DEFAULT_CFG(effective-bits: 8.0)", "NONE(effective-bits: 16.0)"


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


def _manifest() -> dict[str, Any]:
    groups = _groups()
    return manifest.build(
        scheme={"name": "tiny_autoquant_wfp8_afp8_lm_small", "effective_bits_requested": 10.0,
                "effective_bits_modelopt": 10.2, "method": "gradient", "score_size": 8,
                "coverage": "lm_only", "formats": ["FP8_DEFAULT_CFG"]},
        model={"id": "/m", "name": "tiny"},
        dataset={"name": "caps", "size": "small", "sha256": "ab", "samples_used": 8},
        quantization={"pair": "wfp8_afp8", "weight_dtype": "fp8", "activation_dtype": "fp8"},
        groups=groups,
        autoquant={"effective_bits_achieved": achieved_scope_bits(groups), "total_score": 1.5,
                   "satisfied": True},
        versions={"torch": "x"},
    )


def test_bits_over_scope_ignore_frozen_groups() -> None:
    groups = _groups()
    # chosen costs 50 + 300 + 300 over 1000 uncompressed in scope
    assert achieved_scope_bits(groups) == pytest.approx(16 * 650 / 1000)
    assert min_scope_bits(groups) == pytest.approx(8.0)


def test_build_ranks_in_scope_groups_by_importance() -> None:
    m = _manifest()
    assert m["schema_version"] == manifest.SCHEMA_VERSION
    sens = m["layer_sensitivity"]
    assert "model.visual.blocks.0.attn.qkv.quant_recipe" not in sens
    assert m["frozen_groups"] == ["model.visual.blocks.0.attn.qkv.quant_recipe"]
    ranked = [r["name"] for r in m["sensitivity_ranking"]]
    assert ranked[0] == "model.language_model.layers.0.mlp.down_proj.quant_recipe"
    assert [sens[h]["rank"] for h in ranked] == [1, 2, 3]


def test_write_then_load_roundtrip(tmp_path: Path) -> None:
    m = _manifest()
    path = manifest.write(m, tmp_path)
    assert path.name == "tiny_autoquant_wfp8_afp8_lm_small_quant_manifest.json"
    assert manifest.find(tmp_path) == path
    assert manifest.load(path) == json.loads(json.dumps(m))


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


def test_reports_sorted_descending_and_reproducible(tmp_path: Path) -> None:
    m = _manifest()
    rows = report.layer_rows(m)
    assert list(rows.columns) == ["Layer", "Num Bits", "Sensitivity", "Size Cost"]
    assert rows["Sensitivity"].is_monotonic_decreasing
    assert rows["Layer"].tolist() == ["model.language_model.layers.0.mlp.down_proj", "lm_head",
                                      "model.language_model.layers.0.self_attn.q_proj"]
    assert not rows["Layer"].str.endswith(".quant_recipe").any()
    md, js = report.write_reports(m, tmp_path)
    first = (md.read_bytes(), js.read_bytes())
    report.write_reports(m, tmp_path)
    assert (md.read_bytes(), js.read_bytes()) == first
    text = md.read_text()
    for heading in ("## Summary", "## Dataset", "## Quantization", "## Per-layer sensitivity"):
        assert heading in text
    assert text.index("mlp.down_proj") < text.index("| lm_head") < text.index("q_proj")
    doc = json.loads(js.read_text())
    assert [r["Layer"] for r in doc["layers"]] == rows["Layer"].tolist()
    assert doc["summary"]["Total score"] == 1.5
