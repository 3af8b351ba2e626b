"""Recipes from manifests, without torch: which groups each recipe keeps, its bits, its config."""

from __future__ import annotations

import copy

import pytest

from layer_sensitivity import baselines, budgets, recipes
from layer_sensitivity.errors import UserError
from layer_sensitivity.schema import RecipesConfig
from tests.helpers.recipes import (
    FP8,
    INT4,
    NONE,
    bits_by_hand,
    enabled_modules,
    label,
    modules_of,
    ranked,
    synthetic,
)


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
