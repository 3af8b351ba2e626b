"""Mixed-format recipes, the scores and the solve: composed from stored single-format states where
that is exact, else one multi-format search; every budget re-solved from the scores."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from .. import autoquant, calibration, recipes, scoring
from ..errors import UserError
from ..groups import GroupStats, format_bits, min_scope_bits
from ..model import placement, scope
from ..reuse import Resources
from .plan import BITS_TOLERANCE, DIRECT, NONE, MixedPlan

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Scores


@dataclass
class MixedScores:
    """The multi-format search state and how it was obtained."""

    state: dict[str, Any]
    dtype: str
    composed: bool
    reason: str  # how the scores were obtained, or why they were not composed
    per_format: dict[str, Any] | None  # pair -> its single-format cache entry {key, hit, path}
    weights_in_scope: int
    weights_frozen: int

    def modelopt_bits(self, target: float) -> float:
        return scope.modelopt_bits(target, self.weights_in_scope, self.weights_frozen)

    @property
    def cache(self) -> dict[str, Any] | None:
        """The manifest's score_cache: hit when every format's scores were stored already."""
        if not self.composed or not self.per_format:
            return None
        hit = all(e is not None and e["hit"] for e in self.per_format.values())
        return {"key": None, "hit": hit, "path": None}


def direct_reason(mp: MixedPlan) -> str | None:
    """Why this plan searches the mix directly; None when it composes stored scores."""
    if mp.strategy == DIRECT:
        return "strategy=direct: one multi-format search"
    if not mp.cfg.autoquant.reuse_scores:
        return "autoquant.reuse_scores=false: no stored scores, one multi-format search"
    version = metadata.version("nvidia-modelopt")
    if not version.startswith(autoquant.COMPOSABLE_MODELOPT):
        return (f"nvidia-modelopt {version}: composition follows ModelOpt "
                f"{autoquant.COMPOSABLE_MODELOPT}x's rules, so the mix is searched directly")
    return None


def search(mp: MixedPlan, batches: list[calibration.Batch], resources: Resources) -> MixedScores:
    """Composed from single-format states (stored, or searched alone and stored), else direct."""
    dtype = str(placement.resolve_dtype(mp.cfg.model.dtype, mp.formats[0].device))
    why = direct_reason(mp)
    if why is None:
        singles = [scoring.scores(p, batches, resources) for p in mp.formats]
        per_format = {pair: s.cache for pair, s in zip(mp.pairs, singles, strict=True)}
        try:
            state = autoquant.compose_states([s.state for s in singles], mp.quant_cfgs)
        except autoquant.NotComposable as e:
            why = f"stored single-format scores are not composable ({e}); one multi-format search"
            log.warning("%s", why)
        else:
            fresh = [pair for pair, c in per_format.items() if c is None or not c["hit"]]
            how = "composed from stored single-format scores" + (
                f" ({', '.join(fresh)} searched alone first and stored)" if fresh else "")
            log.info("%s", how)
            return _scores(state, dtype, True, how, per_format)
    log.info("%s", why)
    return _scores(_direct(mp, batches, resources), dtype, False, why, None)


def _direct(mp: MixedPlan, batches: list[calibration.Batch], resources: Resources
            ) -> dict[str, Any]:
    try:
        return scoring.search(mp.formats[0], mp.quant_cfgs, mp.budgets[0], batches, resources)
    except scoring.Infeasible as e:
        raise UserError(
            f"effective_bits={mp.budgets[0]:g} is infeasible for formats={','.join(mp.requested)} "
            f"on this model: the language model reaches at least {e.lm_min:.4f} bits (ModelOpt "
            f"was given {e.given:.4f} over all its layers, vision at 16). Give a budget of "
            f"{e.fix:g} or more."
        ) from None


def _scores(state: dict[str, Any], dtype: str, composed: bool, reason: str,
            per_format: dict[str, Any] | None) -> MixedScores:
    in_scope, frozen = autoquant.state_weight_counts(state)
    return MixedScores(state, dtype.removeprefix("torch."), composed, reason, per_format,
                       in_scope, frozen)


# --------------------------------------------------------------------------------------------
# Solve


@dataclass
class MixedSolution:
    groups: dict[str, GroupStats]  # catalogue-named labels; the main budget's choice
    autoquant: dict[str, Any]
    frontier: list[dict[str, Any]]  # one point per budget (recipe: handle -> label, mix shares)
    singles: dict[str, list[dict[str, Any]]]  # format -> its own frontier (2+ budgets only)


def label_map(mp: MixedPlan) -> dict[str, str]:
    """ModelOpt's label of each format in this search -> the catalogue's (``CUSTOM_1(...)`` ->
    ``INT4_BLOCKWISE_WEIGHT_ONLY_CFG+fp8_inputs(...)``); presets keep their names."""
    out = {}
    for label, name in zip(autoquant.modelopt_labels(mp.quant_cfgs), mp.names, strict=True):
        out[label] = name + label[label.index("("):]
    return out


def _renamed(groups: dict[str, GroupStats], labels: dict[str, str]) -> dict[str, GroupStats]:
    return {h: dataclasses.replace(g, formats=[labels.get(f, f) for f in g.formats],
                                   chosen=labels.get(g.chosen, g.chosen))
            for h, g in groups.items()}


def mix_shares(groups: dict[str, GroupStats], recipe: dict[str, str]) -> dict[str, dict[str, float]]:
    """Per format name, most compressed first and NONE (16 bits) last: how many in-scope groups
    and which share of their weights a per-group choice gives it."""
    scoped = {h: g for h, g in groups.items() if g.in_scope}
    total = sum(g.uncompressed_cost for g in scoped.values())
    out: dict[str, dict[str, float]] = {}
    bits: dict[str, float] = {}
    for h, g in scoped.items():
        label = recipe.get(h, g.chosen)
        name = recipes.format_name(label)
        bits[name] = format_bits(label)
        entry = out.setdefault(name, {"groups": 0.0, "weights_share": 0.0})
        entry["groups"] += 1
        entry["weights_share"] += g.uncompressed_cost / total
    return {n: out[n] for n in sorted(out, key=lambda n: (n == NONE, bits[n], n))}


def solve(mp: MixedPlan, s: MixedScores) -> MixedSolution:
    """Every budget re-solved by ModelOpt's solver from the one state (stored or fresh alike)."""
    labels = label_map(mp)
    raw = autoquant.group_stats(s.state, mp.frozen_patterns)
    named = _renamed(raw, labels)
    frontier, main = [], None
    for budget in mp.budgets:
        given = s.modelopt_bits(budget)
        point = autoquant.frontier_point(raw, autoquant.resolve(s.state, given), budget, given)
        recipe = {h: labels.get(f, f) for h, f in point.recipe.items()}
        main = main or (point, recipe)
        frontier.append({**point.as_dict(), "recipe": recipe, "mix": mix_shares(named, recipe)})
        if not point.satisfied:
            log.warning("the solver did not meet %.4g LM bits (achieved %.4f)", budget,
                        point.achieved_bits)
    assert main is not None
    point, recipe = main
    groups = autoquant.with_choice(named, recipe)
    singles = single_frontiers(mp, s, raw, labels) if len(mp.budgets) > 1 else {}
    return MixedSolution(groups, {
        "effective_bits_achieved": point.achieved_bits,
        "modelopt_effective_bits_achieved": autoquant.modelopt_achieved_bits(groups),
        "min_effective_bits": min_scope_bits(groups),
        "total_score": point.total_score,
        "satisfied": point.satisfied,
    }, frontier, singles)


def single_frontiers(mp: MixedPlan, s: MixedScores, raw: dict[str, GroupStats],
                     labels: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """Each format's own frontier on the same objective: the mixed state restricted to that format
    and 16 bits, solved by ModelOpt at the budgets it can reach, plus every group in the format."""
    return {recipes.format_name(name): [{k: v for k, v in p.as_dict().items() if k != "recipe"}
                                        for p in single_points(mp, s, label)]
            for label, name in labels.items()}


def single_points(mp: MixedPlan, s: MixedScores, label: str) -> list[autoquant.FrontierPoint]:
    """One format's frontier (see :func:`single_frontiers`), each point with its recipe."""
    state = _restricted(s.state, label)
    groups = autoquant.group_stats(state, mp.frozen_patterns)
    every = {h: label if g.in_scope else g.formats[-1] for h, g in groups.items()}
    bits = format_bits(label)
    points = [autoquant.frontier_point(groups, every, bits, s.modelopt_bits(bits))]
    for budget in sorted(b for b in mp.budgets if b > bits + BITS_TOLERANCE):
        given = s.modelopt_bits(budget)
        points.append(autoquant.frontier_point(groups, autoquant.resolve(state, given),
                                               budget, given))
    return points


def _restricted(state: dict[str, Any], label: str) -> dict[str, Any]:
    stats = {}
    for handle, st in state["candidate_stats"].items():
        keep = [i for i, f in enumerate(st["formats"]) if str(f) == label or str(f).startswith(NONE)]
        stats[handle] = {**st, **{k: [st[k][i] for i in keep] for k in ("formats", "scores", "costs")}}
    return {**state, "candidate_stats": stats}
