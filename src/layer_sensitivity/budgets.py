"""Recipes defined by an LM bit budget, and the rule that picks the groups they keep at 16 bits.

**Budgets.** With every in-scope group quantized the language model averages ``floor`` bits
(e.g. about 4.3 for blockwise INT4, 8 for FP8); nothing quantized is 16. A budget is a fraction
``h`` of that headroom: ``floor + h * (16 - floor)`` LM bits (``recipes.keep``, default 0, 10, 25
and 50%). Fractions rather than bits so one list suits every pair.

**The rule (guided keep).** Keeping group ``g`` at 16 bits spends ``b_g`` LM bits (its cost at
16 bits minus its cost in the format, over the LM's total) and avoids the loss increase
AutoQuantize estimated for quantizing it, its score ``s_g``. Groups are taken in decreasing
``s_g / b_g`` (sensitivity per bit spent; ties by rank), each kept if the recipe stays within the
budget and skipped otherwise. This is the greedy answer to "keep the groups whose scores sum
highest within the budget": a big group such as ``lm_head`` is kept only when its score pays for
its bits, and a group too large for what is left never blocks the smaller ones after it.

Every recipe records its budget (``target_bits``, ``headroom``) and the bits it achieved
(``lm_bits``, never above the budget). No torch, no ModelOpt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from . import recipes
from .errors import UserError
from .manifest_model import Manifest
from .recipes import KEEP_TOP, Group, QuantCfg, Recipe

DEFAULT_HEADROOM = (0.0, 0.10, 0.25, 0.50)
BITS_EPS = 1e-9  # float slack when checking a recipe against its budget


def check_headroom(fractions: Sequence[Any], where: str = "recipes.keep") -> list[float]:
    """The fractions as floats, or a UserError naming the bad one."""
    out = []
    for f in fractions:
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 <= float(f) <= 1.0:
            hint = (f" (did you mean {float(f) / 100:g}?)"
                    if isinstance(f, (int, float)) and 1 < float(f) <= 100 else "")
            raise UserError(
                f"{where} value {f!r} is not a fraction of the 16-bit headroom in [0, 1]{hint}. "
                "Each value is a budget: 0 = every group quantized, 1 = nothing quantized, 0.25 = "
                "a quarter of the way from the format's bits to 16 (e.g. [0, 0.1, 0.25, 0.5])."
            )
        out.append(float(f))
    return out


def keep_cost(g: Group, fmt: str, total: float) -> float:
    """LM bits that keeping ``g`` at 16 bits costs over quantizing it in ``fmt``."""
    return 16.0 * (g.uncompressed_cost - g.costs[fmt]) / total


def floor_bits(groups: Sequence[Group], fmt: str) -> float:
    """LM bits with every group in ``fmt``."""
    return recipes.lm_bits(groups, {g.handle: fmt for g in groups})


def budget_bits(groups: Sequence[Group], fmt: str, headroom: float) -> float:
    floor = floor_bits(groups, fmt)
    return floor + headroom * (16.0 - floor)


def only_format(groups: Sequence[Group]) -> str:
    """The one format a single-format run searched (its scores rank the groups)."""
    searched = sorted({f for g in groups for f in g.costs if f != recipes.NONE})
    if len(searched) != 1:
        raise UserError(f"Expected a single-format run, found formats {', '.join(searched)}; "
                        "equal-bits baselines and ground truth read one format's scores.")
    return searched[0]


def score(g: Group, fmt: str) -> float:
    return g.scores.get(fmt, 0.0)


def per_bit_order(groups: Sequence[Group], fmt: str,
                  scores: Mapping[str, float] | None = None) -> list[str]:
    """Handles by decreasing score per bit spent keeping them (the guided rule); ``scores``
    replaces the manifest's (e.g. a data-free prior's pseudo-scores)."""
    total = sum(g.uncompressed_cost for g in groups)

    def per_bit(g: Group) -> float:
        s = scores[g.handle] if scores is not None else score(g, fmt)
        return s / max(keep_cost(g, fmt, total), 1e-30)

    return [g.handle for g in sorted(groups, key=lambda g: (-per_bit(g), g.rank, g.handle))]


def fill(groups: Sequence[Group], fmt: str, order: Sequence[str], bits: float) -> list[str]:
    """Groups kept at 16 bits: ``order`` walked once, each kept while the LM stays within
    ``bits`` (a group that does not fit is skipped, later smaller ones may still fit)."""
    total = sum(g.uncompressed_cost for g in groups)
    by_handle = {g.handle: g for g in groups}
    spent = floor_bits(groups, fmt)
    if spent > bits + BITS_EPS:
        raise UserError(f"{bits:g} LM bits is below what {fmt} reaches with every group "
                        f"quantized ({spent:g} bits). Give a budget of at least that.")
    kept = []
    for h in order:
        cost = keep_cost(by_handle[h], fmt, total)
        if spent + cost <= bits + BITS_EPS:
            kept.append(h)
            spent += cost
    return kept


def recipe_for(manifest: Manifest, groups: list[Group], fmt: str,
               cfgs: Mapping[str, QuantCfg], kept: Sequence[str], name: str, kind: str,
               **info: Any) -> Recipe:
    """A single-format recipe keeping ``kept`` at 16 bits."""
    keep = set(kept)
    assignment = {g.handle: fmt for g in groups if g.handle not in keep}
    return recipes.make_recipe(manifest, groups, name, kind, assignment, cfgs,
                               kept_count=len(keep), **info)


def headroom_name(kind: str, headroom: float) -> str:
    return f"{kind}_{100 * headroom:g}pct"


def keep_top(manifest: Manifest, quant_cfg: QuantCfg | None = None,
             headroom: Sequence[float] = DEFAULT_HEADROOM,
             format_name: str | None = None) -> list[Recipe]:
    """One guided recipe per headroom fraction (``keep_top_<pct>pct``): the most sensitive groups
    per bit kept at 16 bits within the budget, the rest in ``format_name`` (default: the run's
    one format). ``quant_cfg`` None = the manifest's config (:func:`recipes.format_configs`)."""
    groups = recipes.manifest_groups(manifest)
    fmt, cfgs = recipes.single_format(manifest, groups, quant_cfg, format_name)
    order = per_bit_order(groups, fmt)
    out = []
    for h in check_headroom(headroom, "headroom"):
        bits = budget_bits(groups, fmt, h)
        out.append(recipe_for(manifest, groups, fmt, cfgs, fill(groups, fmt, order, bits),
                              headroom_name(KEEP_TOP, h), KEEP_TOP, headroom=h,
                              target_bits=bits, rule="score per bit"))
    return out


def keep_top_for_bits(manifest: Manifest, bits: float, quant_cfg: QuantCfg | None = None,
                      format_name: str | None = None) -> Recipe:
    """The guided recipe at an explicit LM bit budget (e.g. a mixed recipe's achieved bits)."""
    groups = recipes.manifest_groups(manifest)
    fmt, cfgs = recipes.single_format(manifest, groups, quant_cfg, format_name)
    kept = fill(groups, fmt, per_bit_order(groups, fmt), bits)
    return recipe_for(manifest, groups, fmt, cfgs, kept, f"{KEEP_TOP}_{bits:g}bits", KEEP_TOP,
                      target_bits=float(bits), rule="score per bit")
