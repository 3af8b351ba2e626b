"""Recipes at an LM bit budget: budgets as fractions of the headroom, the guided rule (score per bit
kept while it fits) and its fill, checked against the rule worked by hand."""

from __future__ import annotations

import pytest

from layer_sensitivity import budgets, recipes
from layer_sensitivity.errors import UserError
from tests.helpers.manifests import typed
from tests.helpers.recipes import FP8, INT4, LM, bits_by_hand, synthetic


def test_keep_top_keeps_the_most_sensitive_groups_per_bit_within_each_budget() -> None:
    m = synthetic([INT4])
    rs = budgets.keep_top(typed(m))
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
    r = budgets.keep_top(typed(m), headroom=[0.25])[0]  # 3 bits to spend: exactly lm_head's cost
    # ranked first, but the groups kept instead avoid more score for the same bits
    assert "lm_head.quant_recipe" not in r.kept
    assert sum(sens[h]["scores"][0] for h in r.kept) > head["scores"][0]
    head["scores"][0] = sum(s["scores"][0] for s in sens.values()) * 10  # now it pays
    assert "lm_head.quant_recipe" in budgets.keep_top(typed(m), headroom=[0.25])[0].kept



def test_keep_top_for_bits_fits_the_budget() -> None:
    m = synthetic([INT4], seed=3)
    for budget in (4.0, 5.0, 6.5, 9.0):
        r = budgets.keep_top_for_bits(typed(m), budget)
        assert r.lm_bits <= budget + 1e-9 and r.info["target_bits"] == budget
        # every group not kept would break the budget if it were kept too
        for h in r.quantized:
            more = {x: f for x, f in r.quantized.items() if x != h}
            assert bits_by_hand(m, more) > budget
    with pytest.raises(UserError, match="below"):
        budgets.keep_top_for_bits(typed(m), 3.0)


@pytest.mark.parametrize("value,hint", [
    (25, "did you mean 0.25?"), (-0.1, None), (150, None), (True, None), ("half", None)])
def test_a_budget_outside_the_headroom_is_named_with_a_hint(value: object, hint: str | None) -> None:
    with pytest.raises(UserError, match="recipes.keep value") as e:
        budgets.check_headroom([0.1, value])
    assert (hint in str(e.value)) if hint else "did you mean" not in str(e.value)


def test_fill_skips_a_group_that_does_not_fit_and_keeps_smaller_ones_after_it() -> None:
    m = synthetic([INT4])
    gs = recipes.manifest_groups(typed(m))
    fmt = budgets.only_format(gs)
    assert fmt == INT4[0] and budgets.floor_bits(gs, fmt) == pytest.approx(4.0)
    o0, o1 = (f"{LM}.{i}.self_attn.o_proj.quant_recipe" for i in (0, 1))
    head = "lm_head.quant_recipe"
    total = sum(g.uncompressed_cost for g in gs)
    cost = {g.handle: budgets.keep_cost(g, fmt, total) for g in gs}
    assert cost[head] == pytest.approx(3.0) and cost[o0] == pytest.approx(0.1875)
    # 3.1 bits to spend: o0 fits, lm_head (3) then does not, o1 still does
    assert budgets.fill(gs, fmt, [o0, head, o1], 7.1) == [o0, o1]
    assert budgets.fill(gs, fmt, [head, o0, o1], 7.1) == [head]
    with pytest.raises(UserError, match="below what INT4_BLOCKWISE_WEIGHT_ONLY_CFG reaches"):
        budgets.fill(gs, fmt, [o0], 3.9)


def test_a_mixed_run_has_no_single_format_to_budget() -> None:
    with pytest.raises(UserError, match="Expected a single-format run, found formats "
                                        "FP8_DEFAULT_CFG, INT4_BLOCKWISE_WEIGHT_ONLY_CFG"):
        budgets.only_format(recipes.manifest_groups(typed(synthetic([FP8, INT4]))))


def test_budgets_are_fractions_from_nothing_kept_to_everything_kept() -> None:
    assert budgets.check_headroom([0, 0.5, 1]) == [0.0, 0.5, 1.0]
    assert budgets.budget_bits(recipes.manifest_groups(typed(synthetic([INT4]))), INT4[0], 0.25) == 7.0


def test_recipe_names_carry_the_headroom_in_percent() -> None:
    assert budgets.headroom_name("keep_top", 0.1) == "keep_top_10pct"
    assert budgets.headroom_name("random", 0.025) == "random_2.5pct"
    assert budgets.headroom_name("keep_top", 0.0) == "keep_top_0pct"
