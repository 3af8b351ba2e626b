"""Recipes from manifests, without torch: which groups each recipe keeps, its bits, its config."""

from __future__ import annotations

import copy
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from layer_sensitivity import baselines, budgets, recipes
from layer_sensitivity.errors import UserError
from layer_sensitivity.schema import RecipesConfig

LM = "model.language_model.layers"
# Group kind -> (modules inside a layer, uncompressed weight cost), shaped like the tiny model.
KINDS = {
    "self_attn.q_proj": (["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], 32768.0),
    "self_attn.o_proj": (["self_attn.o_proj"], 16384.0),
    "mlp.gate_proj": (["mlp.gate_proj", "mlp.up_proj"], 98304.0),
    "mlp.down_proj": (["mlp.down_proj"], 49152.0),
}
# Configs as the pipeline records them (JSON: lists for tuples, string block-size keys).
INT4 = ("INT4_BLOCKWISE_WEIGHT_ONLY_CFG", 4.0, {"quant_cfg": [
    {"quantizer_name": "*", "enable": False},
    {"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": 4, "block_sizes": {"-1": 128,
                                                                                    "type": "static"}}},
    {"quantizer_name": "*input_quantizer", "enable": False},
    {"quantizer_name": "*lm_head*", "enable": False},
    {"quantizer_name": "*visual*", "enable": False},
    {"quantizer_name": "*", "parent_class": "nn.Embedding", "enable": False},
], "algorithm": "max"})
FP8 = ("FP8_DEFAULT_CFG", 8.0, {"quant_cfg": [
    {"quantizer_name": "*", "enable": False},
    {"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": [4, 3], "axis": None}},
    {"quantizer_name": "*input_quantizer", "cfg": {"num_bits": [4, 3], "axis": None}},
    {"quantizer_name": "*lm_head*", "enable": False},
], "algorithm": "max"})
NONE = "NONE(effective-bits: 16.0)"


def label(fmt: tuple[str, float, dict[str, Any]]) -> str:
    return f"{fmt[0]}(effective-bits: {fmt[1]})"


def synthetic(formats: list[tuple[str, float, dict[str, Any]]], seed: int = 0,
              extra_groups: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """A manifest of 4 layers x 4 groups + lm_head with random importances."""
    rng = random.Random(seed)
    raw = {f"{LM}.{i}.{k}.quant_recipe": ([f"{LM}.{i}.{m}" for m in mods], cost)
           for i in range(4) for k, (mods, cost) in KINDS.items()}
    raw["lm_head.quant_recipe"] = (["lm_head"], 262144.0)
    for handle, mods in (extra_groups or {}).items():
        raw[handle] = (mods, 8192.0)
    importance = {h: rng.random() for h in raw}
    order = sorted(raw, key=lambda h: -importance[h])
    sens = {h: {"formats": [label(f) for f in formats] + [NONE],
                "scores": [importance[h] * (16 - f[1]) for f in formats] + [0.0],
                "costs": [raw[h][1] * f[1] / 16 for f in formats] + [raw[h][1]],
                "importance": importance[h] * (16 - formats[-1][1]), "rank": r,
                "modules": raw[h][0], "chosen": label(formats[0])}
            for r, h in enumerate(order, start=1)}
    q: dict[str, Any] = {"pair": "p", "modelopt_format": formats[0][0],
                         "modelopt_config": formats[0][2]}
    if len(formats) > 1:
        q["modelopt_configs"] = {f[0]: f[2] for f in formats}
    return {"schema_version": 1, "scheme": {"name": "synthetic", "method": "gradient",
                                            "effective_bits_requested": formats[0][1]},
            "quantization": q, "layer_sensitivity": sens,
            "sensitivity_ranking": [{"name": h, "importance": sens[h]["importance"]} for h in order]}


def ranked(m: dict[str, Any]) -> list[str]:
    return [r["name"] for r in m["sensitivity_ranking"]]


def bits_by_hand(m: dict[str, Any], quantized: dict[str, str]) -> float:
    total = full = 0.0
    for h, s in m["layer_sensitivity"].items():
        names = [recipes.format_name(f) for f in s["formats"]]
        total += s["costs"][names.index(quantized[h])] if h in quantized else max(s["costs"])
        full += max(s["costs"])
    return 16 * total / full


def enabled_modules(cfg: dict[str, Any], attr: str) -> dict[str, dict[str, Any]]:
    return {e["quantizer_name"].removesuffix(f".{attr}"): e.get("cfg", {})
            for e in cfg["quant_cfg"][1:]
            if e["quantizer_name"].endswith(f".{attr}") and e["enable"]}


def modules_of(m: dict[str, Any], handles: list[str] | dict[str, str]) -> set[str]:
    return {mod for h in handles for mod in m["layer_sensitivity"][h]["modules"]}


def test_keep_top_keeps_the_most_sensitive_groups_per_bit_within_each_budget() -> None:
    m = synthetic([INT4])
    rs = budgets.keep_top(m)
    assert [r.name for r in rs] == ["keep_top_0pct", "keep_top_10pct", "keep_top_25pct",
                                    "keep_top_50pct"]
    full = sum(max(s["costs"]) for s in m["layer_sensitivity"].values())

    def per_bit(h: str) -> float:
        s = m["layer_sensitivity"][h]
        return s["scores"][0] / (16 * (s["costs"][1] - s["costs"][0]) / full)

    by_ratio = sorted(m["layer_sensitivity"], key=per_bit, reverse=True)
    for r, h in zip(rs, budgets.DEFAULT_HEADROOM, strict=True):
        budget = 4.0 + h * 12.0
        assert r.info["target_bits"] == pytest.approx(budget) and r.info["headroom"] == h
        assert r.lm_bits == pytest.approx(bits_by_hand(m, r.quantized))
        assert r.lm_bits <= budget + 1e-9 and r.metadata["lm_bits"] == r.lm_bits
        spent, kept = 4.0, set()  # the rule by hand: by score per bit, kept while it fits
        for x in by_ratio:
            s = m["layer_sensitivity"][x]
            cost = 16 * (s["costs"][1] - s["costs"][0]) / full
            if spent + cost <= budget + 1e-9:
                kept.add(x)
                spent += cost
        assert set(r.kept) == kept
        for x in r.quantized:
            assert bits_by_hand(m, {y: f for y, f in r.quantized.items() if y != x}) > budget
        assert set(r.quantized.values()) <= {INT4[0]}
    assert rs[0].lm_bits == pytest.approx(4.0) and not rs[0].kept
    assert [r.lm_bits for r in rs] == sorted(r.lm_bits for r in rs)


def test_a_big_group_is_kept_only_when_its_score_pays_for_its_bits() -> None:
    m = synthetic([INT4])
    sens = m["layer_sensitivity"]
    head = sens["lm_head.quant_recipe"]
    top_small = max((h for h in sens if h != "lm_head.quant_recipe"),
                    key=lambda h: sens[h]["scores"][0])
    head["scores"][0] = sens[top_small]["scores"][0] * 1.5  # most sensitive, 16x the bits
    r = budgets.keep_top(m, headroom=[0.25])[0]  # 3 bits to spend: exactly lm_head's cost
    # ranked first, but the groups kept instead avoid more score for the same bits
    assert "lm_head.quant_recipe" not in r.kept
    assert sum(sens[h]["scores"][0] for h in r.kept) > head["scores"][0]
    head["scores"][0] = sum(s["scores"][0] for s in sens.values()) * 10  # now it pays
    assert "lm_head.quant_recipe" in budgets.keep_top(m, headroom=[0.25])[0].kept


def test_config_names_exactly_the_quantized_modules() -> None:
    m = synthetic([INT4])
    r = budgets.keep_top(m, headroom=(0.25,))[0]
    entries = r.config["quant_cfg"]
    assert entries[0] == {"quantizer_name": "*", "enable": False}
    assert all("*" not in e["quantizer_name"] for e in entries[1:])
    weights = enabled_modules(r.config, "weight_quantizer")
    assert set(weights) == modules_of(m, r.quantized)
    assert not modules_of(m, list(r.kept)) & set(weights)
    assert ("lm_head" in weights) == ("lm_head.quant_recipe" in r.quantized)  # no preset exclusion
    assert all(c == {"num_bits": 4, "block_sizes": {-1: 128, "type": "static"}}
               for c in weights.values())
    assert not enabled_modules(r.config, "input_quantizer")  # weight-only pair
    assert r.config["algorithm"] == "max"


def test_frontier_recipes_follow_the_solver_and_can_mix_formats() -> None:
    m = synthetic([FP8, INT4])
    order = ranked(m)
    point = {h: label(FP8) if i < 3 else NONE if i < 6 else label(INT4) for i, h in enumerate(order)}
    m["frontier"] = [{"target_bits": 6.0, "recipe": point},
                     {"target_bits": 4.0, "recipe": {h: label(INT4) for h in order}}]
    rs = recipes.from_frontier(m)
    assert [r.name for r in rs] == ["mixed_6bits", "mixed_4bits"]
    mixed = rs[0]
    assert mixed.kind == "mixed" and list(mixed.kept) == order[3:6]
    assert mixed.metadata["formats"] == sorted([FP8[0], INT4[0]])
    assert mixed.lm_bits == pytest.approx(bits_by_hand(m, mixed.quantized))
    weights = enabled_modules(mixed.config, "weight_quantizer")
    fp8_modules, int4_modules = modules_of(m, order[:3]), modules_of(m, order[6:])
    assert set(weights) == fp8_modules | int4_modules
    assert all(weights[mod]["num_bits"] == (4, 3) for mod in fp8_modules)
    assert all(weights[mod]["num_bits"] == 4 for mod in int4_modules)
    assert set(enabled_modules(mixed.config, "input_quantizer")) == fp8_modules
    assert rs[1].lm_bits == pytest.approx(4.0) and not rs[1].kept
    one = synthetic([INT4])  # no frontier: the run's own choice, one recipe
    (main,) = recipes.from_frontier(one)
    assert main.name == "frontier_4bits" and main.kind == "frontier" and not main.kept


def test_keep_top_for_bits_fits_the_budget() -> None:
    m = synthetic([INT4], seed=3)
    for budget in (4.0, 5.0, 6.5, 9.0):
        r = budgets.keep_top_for_bits(m, budget)
        assert r.lm_bits <= budget + 1e-9 and r.info["target_bits"] == budget
        # every group not kept would break the budget if it were kept too
        for h in r.quantized:
            more = {x: f for x, f in r.quantized.items() if x != h}
            assert bits_by_hand(m, more) > budget
    with pytest.raises(UserError, match="below"):
        budgets.keep_top_for_bits(m, 3.0)


def test_vision_groups_are_never_in_a_recipe() -> None:
    m = synthetic([INT4], extra_groups={"model.visual.blocks.0.attn.qkv.quant_recipe":
                                        ["model.visual.blocks.0.attn.qkv"]})
    groups = recipes.manifest_groups(m)
    assert len(groups) == 17 and not any("visual" in g.handle for g in groups)
    for r in baselines.equal_bits_recipes(m, (0.25,), draws=2) + recipes.from_frontier(m):
        assert not any("visual" in e["quantizer_name"] for e in r.config["quant_cfg"])


def test_bad_inputs_are_user_errors() -> None:
    m = synthetic([INT4])
    with pytest.raises(UserError, match="0.25"):
        budgets.keep_top(m, headroom=(25,))
    with pytest.raises(UserError, match="recipes.keep value 25"):
        RecipesConfig(keep=[0.1, 25])
    with pytest.raises(UserError, match="legacy"):
        budgets.keep_top({**m, "legacy": True})
    with pytest.raises(UserError, match="No ModelOpt config"):
        recipes.from_frontier(m, {"OTHER": INT4[2]})
    with pytest.raises(UserError, match="several formats"):
        budgets.keep_top(synthetic([FP8, INT4]))
    bad = copy.deepcopy(m)
    bad["layer_sensitivity"][ranked(m)[0]]["modules"] = []
    with pytest.raises(UserError, match="no modules"):
        budgets.keep_top(bad)


def test_building_recipes_imports_neither_torch_nor_modelopt(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text(json.dumps(synthetic([INT4])))
    code = ("import json, sys; from layer_sensitivity import recipe_files, recipes; "
            f"m = json.load(open({str(path)!r})); "
            "from layer_sensitivity import baselines, budgets, equal_bits, ground_truth; "
            "rs = recipes.from_frontier(m) + baselines.equal_bits_recipes(m, (0.1, 0.25), 3); "
            f"recipe_files.write_recipes(rs, {str(tmp_path / 'out')!r}, m); "
            "bad = [x for x in ('torch', 'modelopt') if x in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    # frontier + per budget: guided, ranking order, reverse, 5 rules, 3 random
    assert len(list((tmp_path / "out").glob("*.yaml"))) == 1 + 2 * (3 + 5 + 3)
