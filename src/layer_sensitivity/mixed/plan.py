"""Mixed-format recipes, the plan: every format and budget checked before the model loads."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import (
    pipeline,
    recipes,
)
from ..errors import UserError
from ..schema import Coverage, QuantPairConfig, SensitivityConfig

log = logging.getLogger(__name__)

AUTO, DIRECT = "auto", "direct"
STRATEGIES = (AUTO, DIRECT)
KIND = recipes.MIXED
CHOICES_TABLE = "mixed_choices"
REPORT_NAME = "mixed-recipe-report.md"
CONFIG_FILE = "composed_configs.yaml"
BITS_TOLERANCE = pipeline.BITS_TOLERANCE
NONE = recipes.NONE


# --------------------------------------------------------------------------------------------
# Plan


@dataclass
class MixedPlan:
    """Everything decided before the model loads: one pipeline plan per format, the budgets."""

    formats: list[pipeline.Plan]  # in the order requested
    budgets: list[float]  # LM-level averages; the first is the main result
    strategy: str
    requested: list[str]  # the formats as the user named them (aliases kept)

    @property
    def cfg(self) -> SensitivityConfig:
        """The settings every format shares (model, data, method, ...)."""
        return self.formats[0].cfg

    @property
    def pairs(self) -> list[str]:
        return [p.cfg.quant_pair.name for p in self.formats]

    @property
    def names(self) -> list[str]:
        """Format names as group labels and ``quantization.modelopt_configs`` carry them."""
        return [p.format_name for p in self.formats]

    @property
    def quant_cfgs(self) -> list[dict[str, Any]]:
        return [p.quant_cfg for p in self.formats]

    @property
    def min_bits(self) -> float:
        return min(p.format_bits for p in self.formats)

    @property
    def tag(self) -> str:
        return "+".join(self.pairs)

    @property
    def frozen_patterns(self) -> list[str]:
        return self.formats[0].frozen_patterns

    @property
    def scheme_name(self) -> str:
        c = self.cfg
        scope = "lm" + ("" if c.autoquant.lm_head else "_nohead")
        images = "_image" if self.formats[0].images is not None else ""
        return f"{c.model.name}_mixed_{self.tag}_{scope}_{c.dataset.size.value}{images}"

    def recipe_name(self, bits: float) -> str:
        return f"{KIND}_{self.tag}_{bits:g}bits"


def plan(cfgs: Sequence[SensitivityConfig], budgets: Any = None, *,
         requested: Sequence[str] | None = None, strategy: str = AUTO) -> MixedPlan:
    """Validate the mix (formats, budgets) and resolve each format as ``sensitivity`` would.

    ``budgets``: one LM bit budget, a list (a mixed frontier) or None (the midpoint between the
    smallest and the largest format's bits, e.g. 6 for fp8,int4).
    """
    cfgs = list(cfgs)
    named = list(requested) if requested is not None else [c.quant_pair.name for c in cfgs]
    formats = f"formats={','.join(named)}"
    if strategy not in STRATEGIES:
        raise UserError(f"strategy={strategy!r} is not one of {', '.join(STRATEGIES)}. Use auto "
                        "(compose stored single-format scores) or direct (one search).")
    if len(cfgs) < 2:
        raise UserError(
            f"{formats} names {len(cfgs)} format; a mixed recipe needs two or more, e.g. "
            "formats=fp8,int4. For one format run the sensitivity entry point (quant_pair=...): "
            "its frontier recipes are that format's solver choice at each bit target."
        )
    _check_repeats(cfgs, named, formats)
    _check_shared_settings(cfgs, formats)
    plans = []
    for cfg, name in zip(cfgs, named, strict=True):
        try:  # each format checked as a sensitivity job checks it: device, overlay, layer fit
            plans.append(pipeline.plan(_natural_target(cfg)))
        except UserError as e:
            raise UserError(f"In {formats}, format {name}: {e}") from None
    _check_distinct(plans, named, formats)
    targets = _budgets(budgets, plans, formats)
    return MixedPlan(plans, targets, strategy, named)


def _natural_target(cfg: SensitivityConfig) -> SensitivityConfig:
    # The budget is the mix's, not one format's: each format is planned at its own bits.
    return dataclasses.replace(cfg, autoquant=dataclasses.replace(cfg.autoquant,
                                                                  effective_bits=None))


def _check_repeats(cfgs: list[SensitivityConfig], named: list[str], formats: str) -> None:
    seen: dict[str, str] = {}
    for cfg, name in zip(cfgs, named, strict=True):
        pair = cfg.quant_pair.name
        if pair in seen:
            same = (f"{seen[pair]} and {name} are both pair {pair}" if seen[pair] != name
                    else f"{name} is listed twice")
            raise UserError(f"{formats} repeats a format: {same}. List each format once, e.g. "
                            "formats=fp8,int4.")
        seen[pair] = name


def _check_shared_settings(cfgs: list[SensitivityConfig], formats: str) -> None:
    def rest(c: SensitivityConfig) -> SensitivityConfig:
        return dataclasses.replace(c, quant_pair=QuantPairConfig())

    if any(rest(c) != rest(cfgs[0]) for c in cfgs[1:]):
        raise UserError(f"The configs for {formats} differ in more than the pair; one search needs "
                        "one model, data set and settings. Compose them from the same overrides.")
    if cfgs[0].autoquant.coverage != Coverage.lm_only:
        raise UserError(
            f"autoquant.coverage={cfgs[0].autoquant.coverage.value} is not supported by mixed "
            "recipes: they quantize the language model only and keep the vision tower at 16 bits. "
            "Remove the override (coverage=lm_only)."
        )


def _check_distinct(plans: list[pipeline.Plan], named: list[str], formats: str) -> None:
    configs: list[tuple[dict[str, Any], str]] = []
    bits: dict[float, str] = {}
    for p, name in zip(plans, named, strict=True):
        same = next((other for cfg, other in configs if cfg == p.quant_cfg), None)
        if same is not None:
            raise UserError(f"{formats} repeats a format: {same} and {name} give the same "
                            "ModelOpt config. List each format once.")
        configs.append((p.quant_cfg, name))
        b = round(p.format_bits, 6)
        if b in bits:
            raise UserError(
                f"{formats} mixes {bits[b]} and {name}, which both cost {p.format_bits:g} bits per "
                "weight. ModelOpt cannot weigh such formats against each other: AutoQuantize's "
                "cost counts weight bits only (activation settings are free) and it clips scores "
                "to be monotone in compression, so of two formats with equal bits the later one "
                "inherits the smaller score (measured on the embedded model with fp8,int8: 7 of "
                "the 14 groups where clipping tied them got the more damaging format). Mix "
                "formats of different weight bits (e.g. fp8,int4), or compare these two with the "
                "sensitivity entry point, one run per pair."
            )
        bits[b] = name


def _budgets(value: Any, plans: list[pipeline.Plan], formats: str) -> list[float]:
    low, high = min(p.format_bits for p in plans), max(p.format_bits for p in plans)
    try:
        targets = pipeline.bit_targets(value, (low + high) / 2)
    except UserError as e:
        raise UserError(str(e).replace("autoquant.effective_bits", "effective_bits")) from None
    smallest = min(plans, key=lambda p: p.format_bits)
    target = pipeline.out_of_reach(targets, low)
    if target is not None:
        raise UserError(
            f"effective_bits={target:g} is out of reach for {formats}: the language model can "
            f"average between {low:g} bits (every group in {smallest.format_name}) and 16 bits "
            f"(nothing quantized). Give budgets in [{low:g}, 16], e.g. effective_bits="
            f"{(low + high) / 2:g} or a list such as [{low:g},{(low + high) / 2:g},{high:g}]."
        )
    return targets
