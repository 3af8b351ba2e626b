"""What the guided recipe is compared with at the same LM bits: random draws, the reverse order and
practitioners' rules, each landing at its budget; the rules' orders by depth."""

from __future__ import annotations

import random

import pytest

from layer_sensitivity import baselines, budgets, groups, recipes
from tests.helpers.manifests import typed
from tests.helpers.recipes import INT4, bits_by_hand, synthetic

HEADROOM = (0.1, 0.25, 0.5)


def _layer(h: str) -> int | None:
    return groups.layer_and_kind(h)[0]



def test_every_baseline_lands_at_its_budget_within_the_tolerance() -> None:
    m = synthetic([INT4], seed=1)
    rs = baselines.equal_bits_recipes(typed(m), HEADROOM, draws=20)
    kinds = {r.kind for r in rs}
    assert kinds == {"keep_top", "keep_top_rank", "reverse", "random", *baselines.RULES}
    assert len(rs) == len(HEADROOM) * (3 + len(baselines.RULES) + 20)
    for r in rs:
        budget = r.info["target_bits"]
        assert r.lm_bits == pytest.approx(bits_by_hand(m, r.quantized))
        assert budget - baselines.EQUAL_BITS_TOLERANCE <= r.lm_bits <= budget + 1e-9, r.name
    for h in HEADROOM:
        draws = [r for r in rs if r.kind == "random" and r.info["headroom"] == h]
        assert sorted(r.info["seed"] for r in draws) == list(range(20))
        assert len({frozenset(r.kept) for r in draws}) > 10  # really different draws
    again = baselines.equal_bits_recipes(typed(m), HEADROOM, draws=20)
    assert [r.kept for r in again] == [r.kept for r in rs]  # seeded



def test_rules_keep_what_practitioners_keep() -> None:
    m = synthetic([INT4], seed=2)
    rs = {r.kind: r for r in baselines.equal_bits_recipes(typed(m), (0.25,), draws=1)}
    # 3 bits to spend; a whole layer costs 2.25: the first (last) layer whole, then what fits
    first = [_layer(h) for h in rs["rule_first_layers"].kept]
    last = [_layer(h) for h in rs["rule_last_layers"].kept]
    assert first.count(0) == 4 and 3 not in first
    assert last.count(3) == 4 and 0 not in last
    assert "lm_head.quant_recipe" in rs["rule_lm_head"].kept  # 3 bits: exactly lm_head's cost
    downs = [h for h in m["layer_sensitivity"] if h.endswith("mlp.down_proj.quant_recipe")]
    assert set(downs) <= set(rs["rule_mlp_down"].kept)
    reverse, guided = rs["reverse"], rs["keep_top"]
    score = {h: s["scores"][0] for h, s in m["layer_sensitivity"].items()}
    assert sum(score[h] for h in reverse.kept) < sum(score[h] for h in guided.kept)


def test_depth_order_and_rule_orders_offer_every_group_once() -> None:
    gs = recipes.manifest_groups(typed(synthetic([INT4], seed=5)))
    shuffled = list(gs)
    random.Random(1).shuffle(shuffled)
    depth = baselines.depth_order(shuffled)
    assert depth[-1] == "lm_head.quant_recipe"
    assert [_layer(h) for h in depth[:-1]] == sorted(_layer(h) for h in depth[:-1])
    assert [groups.layer_and_kind(h)[1] for h in depth[:4]] == list(groups.KIND_ORDER)
    orders = baselines.rule_orders(gs, INT4[0])
    assert set(orders) == set(baselines.RULES)
    for rule, order in orders.items():
        assert sorted(order) == sorted(g.handle for g in gs), rule
    assert [_layer(h) for h in orders["rule_last_layers"][:4]] == [3, 3, 3, 3]
    assert orders["rule_lm_head"][0] == "lm_head.quant_recipe"
    assert baselines.data_free_rankings(gs, INT4[0]) == orders
    # the depth prior ranks earlier layers higher, per bit: the first pick is in layer 0
    assert _layer(orders["rule_depth_prior"][0]) == 0
    assert budgets.per_bit_order(gs, INT4[0]) != orders["rule_depth_prior"]  # scores, not depth
