"""Layer groups as plain data: bits of a format string, where a group sits in depth, its importance
and costs, and the scope's average bits."""

from __future__ import annotations

import math
import random

import pytest

from layer_sensitivity import groups
from layer_sensitivity.groups import GroupStats

LM = "model.language_model.layers"
FP8, INT4, NONE = ("FP8_DEFAULT_CFG(effective-bits: 8.0)",
                   "INT4_BLOCKWISE_WEIGHT_ONLY_CFG(effective-bits: 4.25)", "NONE(effective-bits: 16.0)")


def test_format_bits_reads_modelopts_label() -> None:
    assert groups.format_bits(FP8) == 8.0 and groups.format_bits(INT4) == 4.25
    assert math.isnan(groups.format_bits("FP8_DEFAULT_CFG"))


@pytest.mark.parametrize("handle,expected", [
    (f"{LM}.3.mlp.gate_proj.quant_recipe", (3, "mlp.gate_up")),
    (f"{LM}.0.self_attn.q_proj.quant_recipe", (0, "attn.qkv")),
    (f"{LM}.12.self_attn.o_proj.quant_recipe", (12, "attn.o")),
    (f"{LM}.7.mlp.down_proj.quant_recipe", (7, "mlp.down")),
    (f"{LM}.2.mlp.experts.gate_up_proj.quant_recipe", (2, "mlp.experts.gate_up")),  # unknown kind
    ("lm_head.quant_recipe", (None, "lm_head")),
    ("model.language_model.embed_tokens.quant_recipe", (None, "language_model.embed_tokens")),
])
def test_layer_and_kind(handle: str, expected: tuple[int | None, str]) -> None:
    assert groups.layer_and_kind(handle) == expected
    assert groups.module_of(handle) == handle.removesuffix(".quant_recipe")


def test_depth_order_is_embeddings_layers_by_data_flow_then_the_rest() -> None:
    ordered = ["model.language_model.embed_tokens.quant_recipe",
               *(f"{LM}.{i}.{k}.quant_recipe" for i in (0, 1, 10) for k in
                 ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj",
                  "mlp.shared_expert")),  # an unknown kind follows the known ones of its layer
               "lm_head.quant_recipe", "model.norm.quant_recipe"]
    shuffled = ordered[:]
    random.Random(0).shuffle(shuffled)
    assert sorted(shuffled, key=groups.depth_key) == ordered  # layer 10 after 1: numbers, not text


def test_importance_is_the_largest_quantized_score_and_costs_follow_the_choice() -> None:
    g = GroupStats([FP8, INT4, NONE], [0.2, 0.7, 0.0], [50.0, 27.0, 100.0], ["m"], INT4, True)
    assert g.importance == 0.7 and g.uncompressed_cost == 100.0 and g.chosen_cost == 27.0
    only_none = GroupStats([NONE], [5.0], [10.0], ["v"], NONE, False)
    assert only_none.importance == 0.0  # NONE's score never counts


def test_scope_bits_average_over_in_scope_weights_only() -> None:
    gs = {"a": GroupStats([FP8, NONE], [1.0, 0.0], [50.0, 100.0], ["a"], FP8, True),
          "b": GroupStats([INT4, NONE], [1.0, 0.0], [100.0, 300.0], ["b"], NONE, True),
          "v": GroupStats([FP8, NONE], [1.0, 0.0], [1.0, 1000.0], ["v"], FP8, False)}
    assert groups.achieved_scope_bits(gs) == pytest.approx(16 * (50 + 300) / 400)
    assert groups.min_scope_bits(gs) == pytest.approx(16 * (50 + 100) / 400)
