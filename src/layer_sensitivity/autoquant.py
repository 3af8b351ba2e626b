"""The ``mtq.auto_quantize`` call and the plain per-layer-group data it yields."""

from __future__ import annotations

import copy
import fnmatch
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from .calibration import Batch
from .console import prints_to_log
from .errors import UserError
from .groups import GroupStats
from .schema import Method

log = logging.getLogger(__name__)


def _forward(model: torch.nn.Module, batch: Batch) -> Any:
    return model(**batch, use_cache=False)


def _loss(output: Any, batch: Batch) -> torch.Tensor:
    return output.loss  # labels mask padding with -100


def _logits_of_real_tokens(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    # kl_div compares logits directly: keep only positions that hold a caption token.
    if "pixel_values" in batch:
        return _logits_predicting_captions(model, batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   use_cache=False).logits
    return logits[batch["attention_mask"].bool()]


def _logits_predicting_captions(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """An image-text chat's logits at the positions that predict a caption token (the image,
    prompt and chat markup are context, not scored), as the gradient method's loss counts them."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, use_cache=False).logits
    return logits[:, :-1][batch["labels"][:, 1:] != -100]


def run(model: torch.nn.Module, batches: list[Batch], quant_cfg: dict[str, Any], *,
        method: Method, modelopt_bits: float, frozen_patterns: list[str], num_score_steps: int,
        checkpoint: str | None = None) -> dict[str, Any]:
    """Calibrate on every batch, score on the first ``num_score_steps``, solve; return the state."""
    return run_formats(model, batches, [quant_cfg], method=method, modelopt_bits=modelopt_bits,
                       frozen_patterns=frozen_patterns, num_score_steps=num_score_steps,
                       checkpoint=checkpoint)


def run_formats(model: torch.nn.Module, batches: list[Batch], quant_cfgs: Sequence[dict[str, Any]],
                *, method: Method, modelopt_bits: float, frozen_patterns: list[str],
                num_score_steps: int, checkpoint: str | None = None) -> dict[str, Any]:
    """:func:`run` over several formats in one search (ModelOpt names derived configs
    ``CUSTOM_<index in quant_cfgs>``; see :func:`search_recipes`)."""
    import modelopt.torch.quantization as mtq

    step_kwargs: dict[str, Any] = (
        {"forward_step": _forward, "loss_func": _loss}
        if method == Method.gradient
        else {"forward_step": _logits_of_real_tokens}
    )
    # ModelOpt prints "Inserted N quantizers" and "Registered <class> ...": to the log, not stdout
    with prints_to_log(log):
        try:
            _, state = mtq.auto_quantize(
                model,
                constraints={"effective_bits": modelopt_bits},
                quantization_formats=list(quant_cfgs),
                data_loader=batches,
                disabled_layers=frozen_patterns or None,
                num_calib_steps=len(batches),
                num_score_steps=num_score_steps,
                method=method.value,
                checkpoint=checkpoint,
                **step_kwargs,
            )
        except ValueError as e:
            if "infeasible" in str(e):
                raise InfeasibleTarget(str(e)) from None
            raise
    return state


class InfeasibleTarget(UserError):
    """ModelOpt's feasibility check failed; the caller restates it in language-model bits."""

    @property
    def minimum_bits(self) -> float:
        """ModelOpt's minimum achievable effective bits over every layer it sees."""
        m = re.search(r"minimum achievable effective bits is ([0-9]+(?:\.[0-9]+)?)", str(self))
        return float(m.group(1)) if m else math.nan


def group_stats(state: dict[str, Any], frozen_patterns: list[str]) -> dict[str, GroupStats]:
    """Plain per-group data from ModelOpt's search state, keyed by the recipe handle.

    ``chosen`` is the state's own best choice when it has one; :func:`with_choice` sets another.
    """
    best = (state.get("best") or {}).get("recipe") or {}
    out = {}
    for handle, stats in state["candidate_stats"].items():
        modules = list(stats.get("module_names", []))
        frozen = bool(modules) and all(
            any(fnmatch.fnmatch(m, p) for p in frozen_patterns) for m in modules
        )
        formats = [str(f) for f in stats["formats"]]
        out[handle] = GroupStats(
            formats=formats,
            scores=[float(s) for s in stats["scores"]],
            costs=[float(c) for c in stats["costs"]],
            modules=modules,
            chosen=str(best[handle]) if handle in best else formats[-1],
            in_scope=not frozen,
        )
    return out


def with_choice(groups: dict[str, GroupStats], recipe: dict[str, str]) -> dict[str, GroupStats]:
    """The groups with the solver's choice for one target."""
    return {h: replace(g, chosen=recipe.get(h, g.chosen)) for h, g in groups.items()}


def state_weight_counts(state: dict[str, Any]) -> tuple[int, int]:
    """(weights in scope, weights kept at 16 bits) from the search state alone.

    A group's uncompressed cost is its weight count, and frozen groups are offered only NONE, so
    stored scores need neither the model nor the checkpoint's weights.
    """
    in_scope = frozen = 0.0
    for stats in state["candidate_stats"].values():
        n = float(stats.get("uncompressed_cost") or max(stats["costs"]))
        if all(str(f).startswith("NONE") for f in stats["formats"]):
            frozen += n
        else:
            in_scope += n
    return int(in_scope), int(frozen)


def modelopt_achieved_bits(groups: dict[str, GroupStats]) -> float:
    """The chosen recipe's bits over every group ModelOpt sees (what ModelOpt itself reports)."""
    return 16.0 * sum(g.chosen_cost for g in groups.values()) / sum(
        g.uncompressed_cost for g in groups.values())


def resolve(state: dict[str, Any], modelopt_target: float) -> dict[str, str]:
    """Re-solve the search for another budget from the stored scores alone (no model, no data).

    This is what ``mtq.get_auto_quantize_config(state, constraints)`` does before it flattens the
    result into a config; we keep the per-group choice, which the flat config no longer names.
    """
    from modelopt.torch.quantization.algorithms import _resolve_best_recipe

    recipe = _resolve_best_recipe(state, {"effective_bits": modelopt_target})
    return {handle: str(fmt) for handle, fmt in recipe.items()}


@dataclass(frozen=True)
class FrontierPoint:
    target_bits: float  # requested, over the in-scope weights
    modelopt_bits: float  # what the solver was given
    achieved_bits: float  # over the in-scope weights
    total_score: float
    satisfied: bool
    recipe: dict[str, str]  # group handle -> chosen format

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def frontier_point(groups: dict[str, GroupStats], recipe: dict[str, str], target_bits: float,
                   modelopt_target: float) -> FrontierPoint:
    scoped = {h: g for h, g in groups.items() if g.in_scope}
    cost = sum(g.costs[g.formats.index(recipe[h])] for h, g in scoped.items())
    full = sum(g.uncompressed_cost for g in scoped.values())
    score = sum(g.scores[g.formats.index(recipe[h])] for h, g in groups.items())
    achieved = 16.0 * cost / full
    return FrontierPoint(target_bits, modelopt_target, achieved, score,
                         achieved <= target_bits + 1e-6, {h: recipe[h] for h in scoped})


@dataclass(frozen=True)
class Solved:
    """Every target re-solved from one search state: what a job's solve phase needs of it."""

    groups: dict[str, GroupStats]  # per-group data, ModelOpt's labels, the state's own choice
    points: list[FrontierPoint]  # one per target, in the order given
    chosen: dict[str, GroupStats]  # the groups with the first (main) target's choice
    modelopt_achieved_bits: float  # the main choice over every group ModelOpt sees


def solve(state: dict[str, Any], frozen_patterns: list[str],
          targets: Sequence[tuple[float, float]]) -> Solved:
    """Each (LM target, ModelOpt's all-layer target) re-solved from the scores alone; the first
    is the main target."""
    groups = group_stats(state, frozen_patterns)
    recipes = [resolve(state, given) for _, given in targets]
    points = [frontier_point(groups, recipe, target, given)
              for recipe, (target, given) in zip(recipes, targets, strict=True)]
    chosen = with_choice(groups, recipes[0])
    return Solved(groups, points, chosen, modelopt_achieved_bits(chosen))


# --------------------------------------------------------------------------------------------
# Several formats: ModelOpt's names for them, and one search state composed from single-format ones

CUSTOM_PREFIX = "CUSTOM"  # auto_quantize's name for a format that is no preset: CUSTOM_<index>
# The candidate-stats rule below is ModelOpt 0.47's (algorithms.py, initialize_candidate_stats);
# composition is only attempted where it was verified.
COMPOSABLE_MODELOPT = "0.47."
_STAT_FIELDS = ("module_names", "quantizer_attrs", "cost_weight", "allow_no_quant", "is_fixed",
                "uncompressed_cost")
_SEARCH_FIELDS = ("method", "cost_model", "cost", "active_moe_expert_ratio", "disabled_layers",
                  "cost_denominator", "fixed_quantization_config", "module_search_space_signature")


def search_recipes(quant_cfgs: Sequence[dict[str, Any]]) -> list[Any]:
    """The ``QuantRecipe`` of each format as one ``auto_quantize(quantization_formats=quant_cfgs)``
    call names it: the preset's name, else ``CUSTOM_<index>`` (equality is by config)."""
    from modelopt.torch.quantization.algorithms import QuantRecipe

    return [QuantRecipe(copy.deepcopy(dict(cfg)), name=f"{CUSTOM_PREFIX}_{i}")
            for i, cfg in enumerate(quant_cfgs)]


def modelopt_labels(quant_cfgs: Sequence[dict[str, Any]]) -> list[str]:
    """``str()`` of each format in such a call, e.g. ``CUSTOM_1(effective-bits: 4.0)``."""
    return [str(r) for r in search_recipes(quant_cfgs)]


class NotComposable(Exception):
    """Stored single-format states that cannot be combined exactly; the message says why."""


def compose_states(states: Sequence[dict[str, Any]],
                   quant_cfgs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The search state ``auto_quantize(quantization_formats=quant_cfgs)`` would return, built
    from one completed single-format state per format (same model, data, steps and method).

    Why this is exact in ModelOpt 0.47: each format is calibrated with every group in that format,
    and both methods score a (group, format) against the otherwise unquantized model, so a group's
    raw score for a format does not depend on the other formats searched. A single-format state
    holds those raw scores unchanged (its only other choice, NONE, comes after). What a multi-format
    search adds is ModelOpt's candidate rule, applied here: per group the formats sorted by
    (compression, config signature) and each score clipped to at most the previous one, so scores
    never grow with compression. Costs are weights x compression, as stored. ``quantizer_states``
    (calibration) are left empty: re-solving does not need them.

    Raises :class:`NotComposable` when the states were not searched alike or hold other formats.
    """
    from modelopt.torch.quantization.algorithms import QuantRecipe

    recipes = search_recipes(quant_cfgs)
    if len(states) != len(recipes):
        raise ValueError(f"{len(states)} states for {len(recipes)} formats")
    for key in _SEARCH_FIELDS:
        values = [s.get(key) for s in states]
        if any(v != values[0] for v in values[1:]):
            raise NotComposable(f"the stored searches differ in {key} ({values})")
    handles = [list(s["candidate_stats"]) for s in states]
    if any(h != handles[0] for h in handles[1:]):
        raise NotComposable("the stored searches have different layer groups")
    none = QuantRecipe(quant_cfg=None)
    stats = {handle: _compose_group(handle, [s["candidate_stats"][handle] for s in states],
                                    recipes, none)
             for handle in handles[0]}
    composed = {k: copy.deepcopy(v) for k, v in states[0].items()
                if k not in ("candidate_stats", "quantizer_states", "best")}
    composed.update({
        "candidate_stats": stats,
        "quantizer_states": {},
        "best": {"recipe": {}, "constraints": {}, "score": float("inf"), "is_satisfied": False},
        "quantization_formats_signature": tuple(sorted(r.checkpoint_signature for r in recipes)),
        "resolved_search_setup_signature": _merged_setup_signature(states),
    })
    return composed


def _compose_group(handle: str, per_state: list[dict[str, Any]], recipes: list[Any],
                   none: Any) -> dict[str, Any]:
    first = per_state[0]
    for name in _STAT_FIELDS:
        if any(st.get(name) != first.get(name) for st in per_state[1:]):
            raise NotComposable(f"group {handle} differs in {name} between the stored searches")
    if first.get("is_fixed"):
        raise NotComposable(f"group {handle} has a fixed format")
    if all(list(st["formats"]) == [none] for st in per_state):
        return copy.deepcopy(first)  # frozen (disabled) group: only NONE
    raw: dict[Any, tuple[Any, Any]] = {}
    for recipe, st in zip(recipes, per_state, strict=True):
        for fmt, score, cost in zip(st["formats"], st["scores"], st["costs"], strict=True):
            if fmt == none:
                raw.setdefault(none, (score, cost))
            elif fmt == recipe:
                raw[recipe] = (score, cost)
            else:
                raise NotComposable(f"the stored search for {recipe} holds another format ({fmt}) "
                                    f"for group {handle}")
    if len(raw) != len(recipes) + 1:
        raise NotComposable(f"group {handle} lacks a format or NONE in a stored search")
    # ModelOpt: solver choices sorted by QuantRecipe order (compression, then config signature);
    # score = min(score, previous score) along that order.
    ordered = sorted(raw)
    scores, previous = [], float("inf")
    for recipe in ordered:
        previous = min(raw[recipe][0], previous)
        scores.append(previous)
    return {**copy.deepcopy(first), "formats": ordered, "scores": scores,
            "costs": [raw[r][1] for r in ordered]}


def _merged_setup_signature(states: Sequence[dict[str, Any]]) -> tuple[Any, ...] | None:
    """ModelOpt's per-group setup fingerprint with the formats of every state (None if absent)."""
    signatures = [s.get("resolved_search_setup_signature") for s in states]
    merged: dict[str, list[Any]] = {}
    for signature in signatures:
        if signature is None:
            return None
        for item in signature:  # (name, modules, replay attrs, score modules, choices, ...)
            entry = list(item)
            if entry[0] not in merged:
                merged[entry[0]] = entry
                continue
            known = merged[entry[0]]
            if known[:4] != entry[:4] or known[5:] != entry[5:]:
                raise NotComposable(f"group {entry[0]} was set up differently between searches")
            known[4] = tuple(sorted({*known[4], *entry[4]}))
    return tuple(sorted((tuple(e) for e in merged.values()), key=repr))
