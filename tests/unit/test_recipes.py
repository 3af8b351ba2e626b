"""Recipes from manifests, without torch: which groups each recipe keeps, its bits, its config."""

from __future__ import annotations

import copy

import pytest

from layer_sensitivity import baselines, budgets, recipes
from layer_sensitivity.errors import UserError
from layer_sensitivity.schema import RecipesConfig
from tests.helpers.manifests import frontier_point, typed
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


def test_config_names_exactly_the_quantized_modules() -> None:
    m = synthetic([INT4])
    r = budgets.keep_top(typed(m), headroom=(0.25,))[0]
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
    m["frontier"] = [frontier_point(6.0, point),
                     frontier_point(4.0, {h: label(INT4) for h in order})]
    rs = recipes.from_frontier(typed(m))
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
    (main,) = recipes.from_frontier(typed(one))
    assert main.name == "frontier_4bits" and main.kind == "frontier" and not main.kept


def test_vision_groups_are_never_in_a_recipe() -> None:
    m = synthetic([INT4], extra_groups={"model.visual.blocks.0.attn.qkv.quant_recipe":
                                        ["model.visual.blocks.0.attn.qkv"]})
    groups = recipes.manifest_groups(typed(m))
    assert len(groups) == 17 and not any("visual" in g.handle for g in groups)
    for r in baselines.equal_bits_recipes(typed(m), (0.25,), draws=2) + recipes.from_frontier(typed(m)):
        assert not any("visual" in e["quantizer_name"] for e in r.config["quant_cfg"])


def test_bad_inputs_are_user_errors() -> None:
    m = synthetic([INT4])
    with pytest.raises(UserError, match="0.25"):
        budgets.keep_top(typed(m), headroom=(25,))
    with pytest.raises(UserError, match="recipes.keep value 25"):
        RecipesConfig(keep=[0.1, 25])
    with pytest.raises(UserError, match="legacy"):
        budgets.keep_top(typed({**m, "legacy": True}))
    with pytest.raises(UserError, match="No ModelOpt config"):
        recipes.from_frontier(typed(m), {"OTHER": INT4[2]})
    with pytest.raises(UserError, match="several formats"):
        budgets.keep_top(typed(synthetic([FP8, INT4])))
    bad = copy.deepcopy(m)
    bad["layer_sensitivity"][ranked(m)[0]]["modules"] = []
    with pytest.raises(UserError, match="no modules"):
        budgets.keep_top(typed(bad))
