"""Manifests of the earlier Hydra runner (no schema_version) load, and report like new ones."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from layer_sensitivity import manifest, report
from layer_sensitivity.groups import GroupStats
from layer_sensitivity.errors import UserError

FP8, NONE = "FP8_DEFAULT_CFG(effective-bits: 8.0)", "NONE(effective-bits: 16.0)"
VISION = ["model.visual.patch_embed.proj", "model.visual.blocks.0.attn.qkv",
          "model.visual.blocks.0.mlp.linear_fc1", "model.visual.merger.linear_fc2"]
# (module, FP8 score, uncompressed cost): unsorted, with a tie (down_proj 1 / gate_proj 1)
LM = [
    ("model.language_model.layers.0.self_attn.q_proj", 5.6e-05, 15728640.0),
    ("model.language_model.layers.0.self_attn.o_proj", 1.8e-05, 10485760.0),
    ("model.language_model.layers.0.mlp.gate_proj", 0.105, 49807360.0),
    ("model.language_model.layers.0.mlp.down_proj", 0.2727, 24903680.0),
    ("model.language_model.layers.1.self_attn.q_proj", 8.0e-06, 15728640.0),
    ("model.language_model.layers.1.self_attn.o_proj", 6.3e-06, 10485760.0),
    ("model.language_model.layers.1.mlp.gate_proj", 0.0512, 49807360.0),
    ("model.language_model.layers.1.mlp.down_proj", 0.0512, 24903680.0),
    ("lm_head", 0.0065, 311164928.0),
]


def legacy_doc(*, optional: bool = True) -> dict[str, Any]:
    """A manifest exactly as the earlier Hydra runner wrote it (see the issue's shape)."""
    sens: dict[str, Any] = {}
    rank = 0
    for module in VISION:  # vision tower: only NONE offered, score 0, ranked first (ascending)
        rank += 1
        sens[f"{module}.quant_recipe"] = {"formats": [NONE], "scores": [0.0], "costs": [3145728.0],
                                          "importance": 0.0, "rank": rank}
    ascending = sorted(LM, key=lambda m: m[1])
    legacy_rank = {m[0]: len(VISION) + 1 + i for i, m in enumerate(ascending)}
    for module, score, cost in LM:
        sens[f"{module}.quant_recipe"] = {"formats": [FP8, NONE], "scores": [score, 0.0],
                                          "costs": [cost / 2, cost], "importance": score,
                                          "rank": legacy_rank[module]}
    doc: dict[str, Any] = {
        "scheme": {"name": "wfp8_afp8_autoquant_lm", "auto_quantize_bits": 8.74530701482171,
                   "auto_quantize_method": "gradient", "auto_quantize_score_size": 128,
                   "coverage_mode": "lm_only", "coverage_fraction": 1.0,
                   "quant_formats": ["FP8_DEFAULT_CFG"]},
        "model": {"id": "/workspace/models/qwen3_vl_4b_instruct/checkpoints/Qwen3-VL-4B-Instruct"},
        "num_quantized_layers": len(VISION) + len(LM),
        "layers": {m: {"quantized": True, "module_type": "QuantLinear"}
                   for m in [*VISION, *(m[0] for m in LM)]},
        "autoquant_state": {"keys": ["candidate_stats", "best", "constraints"],
                            "constraints": {"effective_bits": 8.744307014821711},
                            "score": 3.9844110984614396, "is_satisfied": True},
        "layer_sensitivity": sens,
        "sensitivity_ranking": [{"name": h, "importance": s["importance"]}
                                for h, s in sorted(sens.items(), key=lambda kv: kv[1]["rank"])],
    }
    if optional:
        doc["dataset"] = {"name": "vlm_coco2017_captions", "size": "medium", "samples_used": 128,
                          "samples_max": 128, "seq_len": 512, "batch_size": 8, "batches": 16}
        doc["quantization"] = {"pair": "wfp8_afp8", "weight_dtype": "fp8",
                               "activation_dtype": "fp8", "granularity": "default"}
        doc["run_config"] = {"quant_pair": {"name": "wfp8_afp8"}, "dataset": {"size": "medium"}}
    return doc


def write_legacy(directory: Path, doc: dict[str, Any] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "wfp8_afp8_autoquant_lm_quant_manifest.json"
    path.write_text(json.dumps(doc or legacy_doc(), indent=2))
    return path


def new_schema_equivalent() -> dict[str, Any]:
    """The same measurements as a manifest this version writes."""
    groups = {f"{m}.quant_recipe": GroupStats([NONE], [0.0], [3145728.0], [m], NONE, False)
              for m in VISION}
    groups |= {f"{m}.quant_recipe": GroupStats([FP8, NONE], [s, 0.0], [c / 2, c], [m], FP8, True)
               for m, s, c in LM}
    return manifest.build(scheme={"name": "wfp8_afp8_autoquant_lm"}, model={"id": "x"},
                          dataset={}, quantization={}, groups=groups,
                          autoquant={"total_score": 1.0}, versions={})


def test_legacy_converts_to_current_schema(tmp_path: Path) -> None:
    m = manifest.load(write_legacy(tmp_path))
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
    assert rows["Layer"].tolist()[:4] == [
        "model.language_model.layers.0.mlp.down_proj", "model.language_model.layers.0.mlp.gate_proj",
        "model.language_model.layers.1.mlp.down_proj", "model.language_model.layers.1.mlp.gate_proj"]
    assert list(legacy["layer_sensitivity"]) == list(new["layer_sensitivity"])
    assert [s["rank"] for s in legacy["layer_sensitivity"].values()] == \
        [s["rank"] for s in new["layer_sensitivity"].values()]
    table = report.render_markdown(legacy).split("## Per-layer sensitivity")[1]
    assert table == report.render_markdown(new).split("## Per-layer sensitivity")[1]


def test_legacy_importance_and_rank_are_recomputed_from_scores(tmp_path: Path) -> None:
    doc = legacy_doc(optional=False)
    for s in doc["layer_sensitivity"].values():  # stale or missing legacy fields are ignored
        s["importance"], s["rank"] = 0.0, 1
    del doc["layer_sensitivity"]["lm_head.quant_recipe"]["importance"]
    m = manifest.load(write_legacy(tmp_path, doc))
    assert list(m["layer_sensitivity"]) == list(new_schema_equivalent()["layer_sensitivity"])
    assert m["dataset"] == {} and m["quantization"] == {} and m["run_config"] is None


def test_legacy_reports_are_byte_identical_when_regenerated(tmp_path: Path) -> None:
    m = manifest.load(write_legacy(tmp_path))
    md, js = report.write_reports(m, tmp_path)
    first = md.read_bytes(), js.read_bytes()
    report.write_reports(manifest.load(write_legacy(tmp_path)), tmp_path)
    assert (md.read_bytes(), js.read_bytes()) == first
    assert "Qwen3-VL-4B-Instruct" in md.read_text()


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
    doc = new_schema_equivalent()
    doc["layer_sensitivity"][LM0]["costs"] = [1.0]
    path = tmp_path / "x_quant_manifest.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(UserError, match="has 2 formats but 1 costs"):
        manifest.load(path)


def test_quant_formats_as_a_single_string(tmp_path: Path) -> None:
    doc = legacy_doc()
    doc["scheme"]["quant_formats"] = "INT8_DEFAULT_CFG"
    assert manifest.load(write_legacy(tmp_path, doc))["scheme"]["formats"] == ["INT8_DEFAULT_CFG"]
