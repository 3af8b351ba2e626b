"""What the guided recipe is compared with at the same LM bits.

Every recipe here keeps some groups at 16 bits within one budget (``budgets.py``) and differs
from the guided one only in the order it offers groups to the same fill (kept while the budget
allows, skipped otherwise), so all of them land at or just below the budget:

- ``random``: groups in a random order (``draws`` seeds, 0, 1, ...);
- ``reverse``: the guided order reversed (least sensitive per bit first);
- ``keep_top_rank``: the ranking's order, ignoring bits (the project's former rule);
- practitioners' rules of thumb, none of which reads the scores:
  ``rule_first_layers`` (decoder layers from the first, whole layers in data-flow order),
  ``rule_last_layers`` (from the last), ``rule_lm_head`` (``lm_head`` and embeddings first, as
  deploy runtimes keep them; then first layers), ``rule_mlp_down`` (every ``mlp.down`` first; then
  first layers), ``rule_depth_prior`` (the data-free prior "earlier layers first; qkv > o >
  gate_up > down" put through the guided per-bit rule in place of the scores).

Recipes compared at a budget are within :data:`EQUAL_BITS_TOLERANCE` LM bits below it (the fill
cannot overshoot). No torch.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from . import budgets, groups, recipes
from .manifest_model import Manifest
from .recipes import KEEP_TOP, Group, QuantCfg, Recipe

GUIDED, GUIDED_RANK, REVERSE, RANDOM = KEEP_TOP, "keep_top_rank", "reverse", "random"
RULES = ("rule_first_layers", "rule_last_layers", "rule_lm_head", "rule_mlp_down",
         "rule_depth_prior")
DEFAULT_DRAWS = 20
# How far below its budget a recipe may land and still count as "at that budget". The fill stops
# below the budget by less than the smallest group it could not add (never above it); layer groups
# of the models measured here cost 0.1-1.7 bits each, and the summary records every curve's gap
# (``bits_gap``) and whether it is within this tolerance.
EQUAL_BITS_TOLERANCE = 0.5


def _decoder(handle: str) -> tuple[int | None, str]:
    return groups.layer_and_kind(handle)


def depth_order(gs: Sequence[Group]) -> list[str]:
    """Embeddings, decoder layers first to last (qkv, o, gate_up, down), then the rest."""
    return sorted((g.handle for g in gs), key=groups.depth_key)


def rule_orders(gs: Sequence[Group], fmt: str) -> dict[str, list[str]]:
    """Each practitioner rule's order of offering groups to the fill."""
    depth = depth_order(gs)
    layer = {h: _decoder(h)[0] for h in depth}
    last = sorted(depth, key=lambda h: (layer[h] is None, -(layer[h] or 0), depth.index(h)))
    head = [h for h in depth if _decoder(h)[1] == "lm_head" or "embed" in _decoder(h)[1]]
    down = [h for h in depth if _decoder(h)[1] == "mlp.down"]
    prior = {h: float(len(depth) - i) for i, h in enumerate(depth)}
    return {
        "rule_first_layers": depth,
        "rule_last_layers": last,
        "rule_lm_head": head + [h for h in depth if h not in head],
        "rule_mlp_down": down + [h for h in depth if h not in down],
        "rule_depth_prior": budgets.per_bit_order(gs, fmt, prior),
    }


def data_free_rankings(gs: Sequence[Group], fmt: str) -> dict[str, list[str]]:
    """Each rule read as a ranking (first offered = most sensitive), for correlation with truth."""
    return rule_orders(gs, fmt)


def equal_bits_recipes(manifest: Manifest, headroom: Sequence[float],
                       draws: int = DEFAULT_DRAWS, quant_cfg: QuantCfg | None = None,
                       format_name: str | None = None) -> list[Recipe]:
    """At each budget: guided, keep_top_rank, reverse, every rule and ``draws`` random orders."""
    gs = recipes.manifest_groups(manifest)
    fmt, cfgs = recipes.single_format(manifest, gs, quant_cfg, format_name)
    guided = budgets.per_bit_order(gs, fmt)
    orders: list[tuple[str, list[str], int | None]] = [
        (GUIDED, guided, None), (GUIDED_RANK, [g.handle for g in gs], None),
        (REVERSE, guided[::-1], None),
        *((kind, order, None) for kind, order in rule_orders(gs, fmt).items())]
    for draw in range(draws):
        shuffled = [g.handle for g in gs]
        random.Random(draw).shuffle(shuffled)
        orders.append((RANDOM, shuffled, draw))
    out = []
    for h in budgets.check_headroom(headroom, "headroom"):
        bits = budgets.budget_bits(gs, fmt, h)
        for kind, order, seed in orders:
            name = budgets.headroom_name(kind, h) + (f"_seed{seed}" if seed is not None else "")
            out.append(budgets.recipe_for(manifest, gs, fmt, cfgs,
                                          budgets.fill(gs, fmt, order, bits), name, kind,
                                          headroom=h, target_bits=bits, seed=seed))
    return out
