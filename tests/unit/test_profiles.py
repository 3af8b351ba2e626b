"""Profiles of a manifest: depth-sortable keys, per-sample scores, shares, ranks, metrics, key table."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from layer_sensitivity import manifest, profiles
from layer_sensitivity.groups import KIND_ORDER
from tests.helpers.manifests import typed

FIXTURES = Path(__file__).parent / "fixtures" / "report"
INT4_RUN = FIXTURES / "tiny-qwen3-vl_autoquant_wint4_afp16_lm_small_quant_manifest.json"
FP8_RUN = FIXTURES / "tiny-qwen3-vl_autoquant_wfp8_afp8_lm_small_quant_manifest.json"
INT4, NONE = "INT4_BLOCKWISE_WEIGHT_ONLY_CFG(effective-bits: 4.0)", "NONE(effective-bits: 16.0)"
INNER = {"self_attn.q_proj": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
         "self_attn.o_proj": ["self_attn.o_proj"],
         "mlp.gate_proj": ["mlp.gate_proj", "mlp.up_proj"], "mlp.down_proj": ["mlp.down_proj"]}
MLFLOW_KEY = re.compile(r"^[A-Za-z0-9_\-./: ]{1,250}$")


def synthetic(num_layers: int, seed: int = 0, samples: int | None = 16,
              tmp_path: Path | None = None) -> manifest.Manifest:
    """A current-schema manifest of a Qwen3-VL-shaped LM (4 groups a layer + lm_head), random
    importances spread over four decades, loaded back through ``manifest.load`` when a directory
    is given (so it is checked like a real one)."""
    rng = np.random.default_rng(seed)
    scores = {}
    for i in range(num_layers):
        for first, inner in INNER.items():
            base = f"model.language_model.layers.{i}."
            scores[f"{base}{first}.quant_recipe"] = ([base + m for m in inner],
                                                     float(10 ** rng.uniform(-7, -3)))
    scores["lm_head.quant_recipe"] = (["lm_head"], float(10 ** rng.uniform(-7, -3)))
    order = sorted(scores, key=lambda h: (-scores[h][1], h))
    sens = {h: {"formats": [INT4, NONE], "scores": [scores[h][1], 0.0], "costs": [1.0, 4.0],
                "importance": scores[h][1], "rank": r, "modules": scores[h][0], "chosen": INT4}
            for r, h in enumerate(order, start=1)}
    doc = {
        "schema_version": manifest.SCHEMA_VERSION,
        "scheme": {"name": f"synthetic_{num_layers}", "method": "gradient", "score_size": samples},
        "model": {"name": "synthetic"},
        "dataset": {"samples_used": samples},
        "quantization": {"pair": "wint4_afp16"},
        "layer_sensitivity": sens,
        "sensitivity_ranking": [{"name": h, "importance": s["importance"]} for h, s in sens.items()],
        "frozen_groups": [],
        "autoquant": {"effective_bits_achieved": 4.0, "total_score": 1.5e-3, "satisfied": True},
        "versions": {},
    }
    if tmp_path is None:
        return typed(doc)
    path = tmp_path / f"synthetic_{num_layers}{manifest.MANIFEST_SUFFIX}"
    path.write_text(json.dumps(doc))
    return manifest.load(path)


def legacy(tmp_path: Path) -> manifest.Manifest:
    """A manifest of the earlier Hydra runner (no schema_version, vision groups, ascending ranks)."""
    fp8 = "FP8_DEFAULT_CFG(effective-bits: 8.0)"
    sens: dict[str, Any] = {"model.visual.blocks.0.attn.qkv.quant_recipe": {
        "formats": [NONE], "scores": [0.0], "costs": [3.0], "importance": 0.0, "rank": 1}}
    lm = [("model.language_model.layers.0.mlp.down_proj", 0.27), ("lm_head", 0.0065),
          ("model.language_model.layers.1.self_attn.q_proj", 8.0e-06)]
    for i, (module, score) in enumerate(lm):
        sens[f"{module}.quant_recipe"] = {"formats": [fp8, NONE], "scores": [score, 0.0],
                                          "costs": [1.0, 2.0], "importance": score, "rank": 4 - i}
    doc = {"scheme": {"name": "wfp8_afp8_autoquant_lm", "auto_quantize_bits": 8.7,
                      "auto_quantize_method": "gradient", "auto_quantize_score_size": 128,
                      "quant_formats": ["FP8_DEFAULT_CFG"]},
           "model": {"id": "/ckpt/Qwen3-VL-4B-Instruct"},
           "autoquant_state": {"constraints": {"effective_bits": 8.7}, "score": 0.3,
                               "is_satisfied": True},
           "layer_sensitivity": sens, "dataset": {"samples_used": 128}}
    path = tmp_path / f"legacy{manifest.MANIFEST_SUFFIX}"
    path.write_text(json.dumps(doc))
    return manifest.load(path)


def test_shares_ranks_and_per_sample_scores_of_a_real_run() -> None:
    m = manifest.load(INT4_RUN)
    samples = m.scheme.score_size
    got = profiles.group_profiles(m)
    assert profiles.score_samples(m) == samples == 16
    assert got is profiles.group_profiles(m)  # computed once per manifest
    assert [p.handle for p in got] == list(m.layer_sensitivity)  # the manifest's rank order
    assert [p.rank for p in got] == [m.layer_sensitivity[p.handle].rank for p in got]
    total = sum(s.importance for s in m.layer_sensitivity.values())
    for p in got:
        importance = m.layer_sensitivity[p.handle].importance
        assert p.importance == importance
        assert p.per_sample == pytest.approx(importance / samples)
        assert p.share == pytest.approx(importance / total)
        assert p.modules == tuple(m.layer_sensitivity[p.handle].modules or ())
    assert sum(p.share for p in got) == pytest.approx(1.0)
    assert [p.share for p in got] == sorted((p.share for p in got), reverse=True)
    first = got[0]  # layer 0's q/k/v share one recipe
    assert (first.layer, first.kind, first.name, first.key) == (
        0, "attn.qkv", "L00.attn.qkv", "sensitivity/L00.attn.qkv")
    assert not profiles.top_is_lm_head(got)


@pytest.mark.parametrize("scheme,dataset,expected", [
    ({"score_size": 16}, {"samples_used": 64}, 16),
    ({"score_size": 128}, {"samples_used": 16}, 16),  # cannot score more samples than exist
    ({}, {"samples_used": 32}, 32),
    ({"score_size": 8}, {}, 8),
    ({"score_size": None}, {}, None),
    ({"score_size": 0}, {"samples_used": 0}, None),
])
def test_score_samples(scheme: dict[str, Any], dataset: dict[str, Any],
                       expected: int | None) -> None:
    m = typed({"schema_version": 1, "scheme": {"name": "x", **scheme}, "dataset": dataset,
               "layer_sensitivity": {}})
    assert profiles.score_samples(m) == expected


def test_unknown_sample_count_gives_no_per_sample_values() -> None:
    m = synthetic(2, samples=None)
    assert all(p.per_sample is None for p in profiles.group_profiles(m))
    keys = {k for k, _, _ in profiles.run_metrics(m)}
    assert "run/total_score_per_sample" not in keys and "run/score_samples" not in keys
    assert profiles.key_table(m)["Per-sample score"].isna().all()


@pytest.mark.parametrize("handle,num_layers,key", [
    ("model.language_model.layers.3.mlp.gate_proj.quant_recipe", 36, "sensitivity/L03.mlp.gate_up"),
    ("model.language_model.layers.3.self_attn.q_proj.quant_recipe", 4, "sensitivity/L03.attn.qkv"),
    ("model.language_model.layers.7.mlp.down_proj.quant_recipe", 120, "sensitivity/L007.mlp.down"),
    ("model.language_model.layers.12.self_attn.o_proj.quant_recipe", 36, "sensitivity/L12.attn.o"),
    ("model.language_model.layers.2.mlp.experts.0.up_proj.quant_recipe", 36,
     "sensitivity/L02.mlp.experts.0.up"),
    ("lm_head.quant_recipe", 36, "sensitivity/lm_head"),
    ("model.language_model.embed_tokens.quant_recipe", 36, "sensitivity/language_model.embed_tokens"),
    ("odd[name]+é.quant_recipe", 36, "sensitivity/odd_name___"),
])
def test_metric_keys_are_depth_sortable_and_mlflow_safe(handle: str, num_layers: int,
                                                        key: str) -> None:
    assert profiles.metric_key(handle, num_layers) == key
    assert MLFLOW_KEY.match(key)


def test_very_long_names_are_cut_to_mlflow_key_length() -> None:
    key = profiles.metric_key("x" * 400 + ".quant_recipe", 36)
    assert len(key) == 250 and MLFLOW_KEY.match(key)


def test_keys_sort_as_text_in_depth_order() -> None:
    m = synthetic(36)
    ordered = profiles.depth_order(profiles.group_profiles(m))
    decoder = [p for p in ordered if p.layer is not None]
    layers = [p.layer for p in decoder]
    assert layers == sorted(layers) and layers[0] == 0 and layers[-1] == 35
    # sorting keys as text (as MLflow does) keeps layer 2 before layer 10
    by_text = sorted(p.key for p in decoder)
    assert [int(k.split("/L")[1][:2]) for k in by_text] == sorted(layers)
    assert ordered[-1].kind == "lm_head"
    assert [p.kind for p in ordered[:4]] == list(KIND_ORDER)


@pytest.mark.parametrize("num_layers", [36, 64])
def test_run_metrics_of_large_models(num_layers: int, tmp_path: Path) -> None:
    m = synthetic(num_layers, seed=num_layers, tmp_path=tmp_path)
    metrics = profiles.run_metrics(m)
    groups = 4 * num_layers + 1
    assert len(m.layer_sensitivity) == groups
    assert len({(k, s) for k, _, s in metrics}) == len(metrics)  # no (key, step) twice
    assert all(MLFLOW_KEY.match(k) and math.isfinite(v) for k, v, _ in metrics)
    assert all(s is None or isinstance(s, int) for _, _, s in metrics)
    series: dict[str, dict[int | None, float]] = {}
    for k, v, s in metrics:
        series.setdefault(k, {})[s] = v
    for kind in KIND_ORDER:  # one step per decoder layer for every kind and view
        for view in ("share", "rank"):
            key = f"depth_profile/{view}/{kind}"
            assert sorted(series[key]) == list(range(num_layers)), (view, kind)
    assert not any(k.startswith("depth_profile/") and k.endswith("lm_head") for k in series)
    # a table shows a series' last step: every step series is named as a depth profile
    steps = {k for k, v in series.items() if list(v) != [None]}
    assert all(k.startswith(("depth_profile/", "frontier/")) for k in steps)
    shares = [v for k, steps_ in series.items() if k.startswith("depth_profile/share/")
              for v in steps_.values()] + [series["run/lm_head_share"][None]]
    assert len(shares) == groups and sum(shares) == pytest.approx(100.0)
    ranks = [v for k, steps_ in series.items() if k.startswith("depth_profile/rank/")
             for v in steps_.values()] + [series["run/lm_head_rank"][None]]
    assert sorted(ranks) == [float(r) for r in range(1, groups + 1)]
    per_group = {k: v[None] for k, v in series.items() if k.startswith("sensitivity/")}
    assert len(per_group) == groups
    total = sum(s.importance for s in m.layer_sensitivity.values())
    assert per_group == pytest.approx({profiles.metric_key(h, num_layers): 100 * s.importance / total
                                       for h, s in m.layer_sensitivity.items()})
    assert series["depth_profile/share/mlp.down"][5] == per_group["sensitivity/L05.mlp.down"]
    # per-sample scores are 1e-8-sized: a chart axis would read 0; they stay in the reports
    assert not any(k.startswith("depth_profile/per_sample") for k in series)
    # the headline comes first (MLflow lists metrics in logged order)
    assert [k for k, _, _ in metrics[:2]] == ["run/top1_share", "run/top10_share"]
    # MLflow takes at most 1000 metrics per batch
    chunks = profiles.batches(metrics)
    assert all(0 < len(c) <= profiles.MAX_METRICS_PER_BATCH for c in chunks)
    assert [x for c in chunks for x in c] == metrics
    assert len(chunks) == math.ceil(len(metrics) / 1000)
    if num_layers == 64:
        assert len(chunks) >= 1


def test_summary_and_frontier_metrics_keep_todays_keys() -> None:
    m = manifest.load(INT4_RUN)
    metrics = profiles.run_metrics(m)
    single = {k.removeprefix("run/"): v for k, v, s in metrics if s is None and k.startswith("run/")}
    aq = m.autoquant
    assert aq.total_score is not None and aq.satisfied is not None
    assert single["total_score"] == aq.total_score
    assert single["effective_bits_achieved"] == aq.effective_bits_achieved
    assert single["constraint_satisfied"] == float(aq.satisfied)
    assert single["num_layer_groups"] == len(m.layer_sensitivity)
    assert single["score_samples"] == 16
    assert single["total_score_per_sample"] == pytest.approx(aq.total_score / 16)
    assert "importance_sum" not in single  # it duplicated total_score
    assert single["effective_bits_requested"] == m.scheme.effective_bits_requested
    ranked = profiles.group_profiles(m)
    assert single["top1_share"] == pytest.approx(100 * ranked[0].share)
    assert single["top10_share"] == pytest.approx(100 * sum(p.share for p in ranked[:10]))
    assert profiles.headline_tags(m) == {"top1_group": ranked[0].name}
    frontier: dict[str, dict[int, float]] = {}
    for k, v, s in metrics:
        if k.startswith("frontier/"):
            assert s is not None
            frontier.setdefault(k, {})[s] = v
    points = m.frontier
    steps = [round(p.target_bits * 100) for p in points]
    assert len(points) == 3 and steps == [400, 600, 800]
    for p, step in zip(points, steps, strict=True):
        assert frontier["frontier/effective_bits_achieved"][step] == p.achieved_bits
        assert frontier["frontier/total_score"][step] == p.total_score
        assert frontier["frontier/satisfied"][step] == float(p.satisfied)
        assert frontier["frontier/quantized_groups"][step] == sum(
            not f.startswith("NONE") for f in p.recipe.values())
    no_frontier = {k for k, _, _ in profiles.run_metrics(manifest.load(FP8_RUN))}
    assert not any(k.startswith("frontier/") for k in no_frontier)


def test_missing_solver_values_are_left_out() -> None:
    m = synthetic(2).model_copy(update={"autoquant": manifest.Autoquant(total_score=None)})
    keys = {k for k, _, _ in profiles.run_metrics(m)}
    assert {"total_score", "effective_bits_achieved", "constraint_satisfied"}.isdisjoint(keys)
    assert "run/num_layer_groups" in keys


def test_key_table_maps_keys_to_groups_in_depth_order(tmp_path: Path) -> None:
    m = synthetic(12, tmp_path=tmp_path)
    table = profiles.key_table(m)
    assert list(table.columns) == ["Metric key", "Group", "Layer", "Kind", "Modules", "Importance",
                                   "Per-sample score", "Share", "Rank"]
    assert len(table) == 49 and table["Metric key"].is_unique and table["Group"].is_unique
    logged = {k for k, _, s in profiles.run_metrics(m) if k.startswith("sensitivity/")}
    assert set(table["Metric key"]) == logged
    row = table.set_index("Metric key").loc["sensitivity/L04.attn.qkv"]
    assert row["Group"] == "model.language_model.layers.4.self_attn.q_proj.quant_recipe"
    assert row["Modules"].split(", ") == [f"model.language_model.layers.4.self_attn.{x}_proj"
                                          for x in "qkv"]
    assert row["Layer"] == 4 and row["Kind"] == "attn.qkv"
    assert row["Importance"] == m.layer_sensitivity[row["Group"]].importance
    assert row["Rank"] == m.layer_sensitivity[row["Group"]].rank
    assert table["Layer"].iloc[:-1].is_monotonic_increasing
    assert pd.isna(table["Layer"].iloc[-1]) and table["Kind"].iloc[-1] == "lm_head"
    assert table["Share"].sum() == pytest.approx(1.0)


def test_legacy_manifest_profiles(tmp_path: Path) -> None:
    m = legacy(tmp_path)
    got = profiles.group_profiles(m)
    assert [p.name for p in got] == ["L00.mlp.down", "lm_head", "L01.attn.qkv"]
    assert got[0].modules == ("model.language_model.layers.0.mlp.down_proj",)
    assert got[0].per_sample == pytest.approx(0.27 / 128)
    assert not any("visual" in k for k, _, _ in profiles.run_metrics(m))
    assert profiles.key_table(m)["Metric key"].tolist() == [
        "sensitivity/L00.mlp.down", "sensitivity/L01.attn.qkv", "sensitivity/lm_head"]


def test_lm_head_on_top_is_detected() -> None:
    doc = synthetic(3).to_json_dict()
    doc["layer_sensitivity"]["lm_head.quant_recipe"]["importance"] = 1.0
    got = profiles.group_profiles(typed(doc))
    assert got[0].name == "lm_head" and profiles.top_is_lm_head(got)


def test_all_zero_scores_give_zero_shares() -> None:
    doc = synthetic(2).to_json_dict()
    for s in doc["layer_sensitivity"].values():
        s["importance"] = 0.0
    got = profiles.group_profiles(typed(doc))
    assert all(p.share == 0.0 for p in got)
    assert [p.rank for p in got] == list(range(1, 10))


def test_batches() -> None:
    items = list(range(2500))
    assert [len(c) for c in profiles.batches(items)] == [1000, 1000, 500]
    assert profiles.batches(items, size=999)[-1] == items[1998:]
    assert profiles.batches([]) == []
    with pytest.raises(ValueError, match="at least 1"):
        profiles.batches(items, size=0)
