"""The ``mtq.auto_quantize`` call and the plain per-layer-group data it yields."""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from .calibration import Batch
from .errors import UserError
from .groups import GroupStats
from .schema import Method


def _forward(model: torch.nn.Module, batch: Batch) -> Any:
    return model(**batch, use_cache=False)


def _loss(output: Any, batch: Batch) -> torch.Tensor:
    return output.loss  # labels mask padding with -100


def _logits_of_real_tokens(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    # kl_div compares logits directly: keep only positions that hold a caption token.
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   use_cache=False).logits
    return logits[batch["attention_mask"].bool()]


def run(model: torch.nn.Module, batches: list[Batch], quant_cfg: dict[str, Any], *,
        method: Method, modelopt_bits: float, frozen_patterns: list[str], num_score_steps: int,
        checkpoint: str | None = None) -> dict[str, Any]:
    """Calibrate on every batch, score on the first ``num_score_steps``, solve; return the state."""
    import modelopt.torch.quantization as mtq

    step_kwargs: dict[str, Any] = (
        {"forward_step": _forward, "loss_func": _loss}
        if method == Method.gradient
        else {"forward_step": _logits_of_real_tokens}
    )
    try:
        _, state = mtq.auto_quantize(
            model,
            constraints={"effective_bits": modelopt_bits},
            quantization_formats=[quant_cfg],
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
