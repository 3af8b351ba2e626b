"""Mixed-format recipes at a bit budget: one AutoQuantize search over several formats.

``plan`` (every format and budget checked, no model) then ``run``: calibration data -> scores ->
solve each budget -> manifest, choice table, figures and ``recipes/mixed_<pairs>_<bits>bits.yaml``
(``recipe_files.load_recipe`` -> ``mtq.quantize``). ``run_and_log`` logs one run through the tracking
interface. No Hydra, no MLflow: callers pass one ``SensitivityConfig`` per format (identical but
for the pair).

Scores. With ``strategy="auto"`` and ``autoquant.reuse_scores`` on, each format's single-format
search state comes from the score cache (the entry a ``sensitivity`` run of that pair with the same
model, data and settings stores) and the multi-format state is composed from them with ModelOpt's
own rule (:func:`autoquant.compose_states`), then re-solved: no model, no calibration, no scoring.
A format with no stored state is searched alone first and stored (rather than searching the mix
directly): that entry is what a later ``sensitivity`` run of the pair, or another mix with it,
reuses. ``strategy="direct"`` (or reuse off) runs one multi-format ``auto_quantize``; so does a
composition that cannot be exact, and the run says why (``mixed.composed=false``,
``mixed.reason``).

In a multi-format search ModelOpt clips scores to be monotone in compression, so a format's own
per-layer ranking cannot be read from it: sensitivity stays one pair per run; this run decides the
mix.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from . import (
    autoquant,
    calibration,
    catalogue,
    figures,
    job,
    manifest,
    model,
    pipeline,
    profiles,
    recipes,
)
from . import recipe_files as recipe_file_io
from .baselines import EQUAL_BITS_TOLERANCE
from .errors import UserError
from .groups import GroupStats, depth_key, format_bits, layer_and_kind, min_scope_bits
from .html_report import write_html
from .lifecycle import Outputs, RunSpec, Task, run_task, seconds_metrics
from .manifest import FormatInfo, FrontierPoint, Manifest, Mixed, Quantization
from .phases import Phases
from .reuse import Resources
from .schema import Coverage, QuantPairConfig, SensitivityConfig
from .tracking import Run, Tracker
from .tracking.base import Metric

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
        return f"{c.model.name}_mixed_{self.tag}_{scope}_{c.dataset.size.value}"

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
    for target in targets:
        if not (low - BITS_TOLERANCE <= target <= 16.0):
            raise UserError(
                f"effective_bits={target:g} is out of reach for {formats}: the language model can "
                f"average between {low:g} bits (every group in {smallest.format_name}) and 16 bits "
                f"(nothing quantized). Give budgets in [{low:g}, 16], e.g. effective_bits="
                f"{(low + high) / 2:g} or a list such as [{low:g},{(low + high) / 2:g},{high:g}]."
            )
    return targets


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
        return model.modelopt_bits(target, self.weights_in_scope, self.weights_frozen)

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
    dtype = str(model.resolve_dtype(mp.cfg.model.dtype, mp.formats[0].device))
    why = direct_reason(mp)
    if why is None:
        singles = [pipeline.scores(p, batches, resources) for p in mp.formats]
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
    import torch

    p, c = mp.formats[0], mp.cfg
    loaded = resources.model(c.model, p.checkpoint, p.device)
    in_scope, frozen = model.weight_counts(loaded.model, mp.frozen_patterns)
    given = model.modelopt_bits(mp.budgets[0], in_scope, frozen)
    on_device = [{k: v.to(p.device) for k, v in b.items()} for b in batches]
    torch.manual_seed(c.autoquant.seed)
    try:
        return autoquant.run_formats(loaded.model, on_device, mp.quant_cfgs,
                                     method=c.autoquant.method, modelopt_bits=given,
                                     frozen_patterns=mp.frozen_patterns,
                                     num_score_steps=p.score_steps)
    except autoquant.InfeasibleTarget as e:
        lm_min = model.scope_bits(e.minimum_bits, in_scope, frozen)
        raise UserError(
            f"effective_bits={mp.budgets[0]:g} is infeasible for formats={','.join(mp.requested)} "
            f"on this model: the language model reaches at least {lm_min:.4f} bits (ModelOpt "
            f"was given {given:.4f} over all its layers, vision at 16). Give a budget of "
            f"{math.ceil(lm_min * 100) / 100:g} or more."
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


# --------------------------------------------------------------------------------------------
# Held-out quality: the mixed recipe against the best single format at equal bits


def heldout_recipes(mp: MixedPlan, s: MixedScores, doc: Manifest
                    ) -> tuple[recipes.Recipe, list[recipes.Recipe]]:
    """The mixed recipe at the main budget, and each format's own recipe (its frontier point
    closest in achieved bits) within ``EQUAL_BITS_TOLERANCE`` of it; a format that cannot get
    that close (e.g. FP8 at 6 bits) is left out."""
    main = doc.frontier[0]
    mixed_recipe = recipes.from_frontier(_at(doc, main))[0]
    singles = []
    for label, name in label_map(mp).items():
        points = [p for p in single_points(mp, s, label) if p.satisfied]
        if not points:
            continue
        p = min(points, key=lambda q: abs(q.achieved_bits - float(main.achieved_bits)))
        if abs(p.achieved_bits - float(main.achieved_bits)) > EQUAL_BITS_TOLERANCE:
            continue
        fmt = recipes.format_name(name)
        r = recipes.from_frontier(_at(doc, FrontierPoint.model_validate(p.as_dict())))[0]
        singles.append(dataclasses.replace(
            r, name=f"single_{profiles.safe_key(fmt)}_{p.target_bits:g}bits", kind=recipes.FRONTIER,
            info={**r.info, "format": fmt}))
    return mixed_recipe, singles


def _at(doc: Manifest, point: FrontierPoint) -> Manifest:
    """The manifest with ``point`` as its only frontier point (one recipe from it)."""
    return doc.model_copy(update={"frontier": [point]})


def _mix(doc: Manifest) -> Mixed:
    """The mix of a mixed-format run's manifest."""
    if doc.mixed is None:
        raise ValueError(f"manifest of run '{doc.scheme.name}' is not a mixed-format search's")
    return doc.mixed


def heldout_quality(mp: MixedPlan, s: MixedScores, doc: Manifest) -> dict[str, Any]:
    """Held-out KL of the mixed recipe and of the best single-format recipe at equal bits: each
    quantized on a fresh model, calibrated as the run did, measured on captions the run did not
    calibrate on (``evaluate``'s default), split in two: the best single format is chosen on the
    validation half, both are reported on the test half (``kl_test``)."""
    from . import evaluate as evaluation  # quantizes fresh model copies

    mixed_recipe, singles = heldout_recipes(mp, s, doc)
    rows = evaluation.measure_like_the_run(doc, [mixed_recipe, *singles],
                                           device=mp.formats[0].device)
    by_name = {r["name"]: r for r in rows.to_dict("records")}
    pairs = figures.pair_names(doc)

    def row(r: recipes.Recipe) -> dict[str, Any]:
        m = by_name[r.name]
        fmt = r.info.get("format")
        return {"name": r.name, "format": fmt, "pair": pairs.get(fmt, fmt) if fmt else None,
                "lm_bits": r.lm_bits,
                "kl": float(m["kl"]), "kl_test": float(m["kl_test"])}

    measured = [row(r) for r in singles]
    first = rows.iloc[0]
    return {"mixed": row(mixed_recipe), "singles": measured,
            "best_single": min(measured, key=lambda r: r["kl"]) if measured else None,
            "tolerance_bits": EQUAL_BITS_TOLERANCE,
            "eval_tokens": int(first["eval_tokens"]), "test_tokens": int(first["test_tokens"])}


def heldout_metrics(heldout: dict[str, Any] | None) -> list[Metric]:
    if not heldout:
        return []
    out: list[Metric] = [("run/heldout_kl_mixed", heldout["mixed"]["kl_test"], None)]
    best = heldout["best_single"]
    if best:
        out += [("run/heldout_kl_best_single", best["kl_test"], None),
                ("run/heldout_bits_best_single", best["lm_bits"], None)]
    return [(k, float(v), st) for k, v, st in out if math.isfinite(float(v))]


def describe_heldout(heldout: dict[str, Any] | None) -> str:
    """One line: the mixed recipe's held-out KL against the best single format at equal bits."""
    if not heldout:
        return "Held-out quality not measured (heldout=false); measure it with `evaluate`."
    m, best = heldout["mixed"], heldout["best_single"]
    head = f"Held-out KL (test captions, lower is better): mixed **{m['kl_test']:.4g}** at " \
           f"{m['lm_bits']:.2f} bits"
    if best is None:
        return (f"{head}; no single format gets within {heldout['tolerance_bits']:g} bits of it "
                "(nothing to compare at equal bits).")
    return (f"{head} vs **{best['kl_test']:.4g}** for {best['pair']} alone at {best['lm_bits']:.2f} bits "
            "(the best single format at equal bits, chosen on validation captions).")


def _restricted(state: dict[str, Any], label: str) -> dict[str, Any]:
    stats = {}
    for handle, st in state["candidate_stats"].items():
        keep = [i for i, f in enumerate(st["formats"]) if str(f) == label or str(f).startswith(NONE)]
        stats[handle] = {**st, **{k: [st[k][i] for i in keep] for k in ("formats", "scores", "costs")}}
    return {**state, "candidate_stats": stats}


# --------------------------------------------------------------------------------------------
# Outputs


@dataclass
class MixedResult:
    manifest: Manifest
    files: list[Path]
    recipes: list[Path]
    seconds: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    heldout: dict[str, Any] | None = None  # heldout_quality's, when measured


def build_manifest(mp: MixedPlan, s: MixedScores, sol: MixedSolution,
                   batches: list[calibration.Batch]) -> Manifest:
    """A manifest ``recipes.from_frontier`` and ``evaluate`` read like a sensitivity run's; the
    formats' exact configs under ``quantization.modelopt_configs``, the mix under ``mixed``."""
    p = mp.formats[0]
    doc = manifest.build(mp.cfg, pipeline.job_facts(
        p, s, batches, scheme_name=mp.scheme_name, target_bits=mp.budgets[0],
        format_name="+".join(mp.names), weight_quantizer={}, input_quantizer={},
        modelopt_config={}), sol.groups, sol.autoquant, sol.frontier, s.cache)
    return doc.as_mixed(mp.names, KIND, _quantization(mp), Mixed.model_validate({
        "pairs": mp.pairs, "requested": mp.requested, "budgets": mp.budgets,
        "strategy": mp.strategy, "composed": s.composed, "reason": s.reason,
        "single_format_scores": s.per_format, "single_frontiers": sol.singles}))


def _quantization(mp: MixedPlan) -> Quantization:
    g = mp.cfg.quant_granularity
    return Quantization(
        pair=mp.tag,
        pairs=mp.pairs,
        modelopt_format=None,
        granularity=g.name,
        formats=[FormatInfo(
            name=p.format_name, pair=p.cfg.quant_pair.name, bits=p.format_bits,
            modelopt_base=p.cfg.quant_pair.modelopt_base,
            weight_quantizer=catalogue.quantizer_settings(p.quant_cfg, catalogue.WEIGHT),
            input_quantizer=catalogue.quantizer_settings(p.quant_cfg, catalogue.INPUT),
            experimental=p.cfg.quant_pair.experimental,
        ) for p in mp.formats],
        modelopt_configs={p.format_name: recipes.jsonable(p.quant_cfg) for p in mp.formats},
    )


def choices_frame(doc: Manifest) -> pd.DataFrame:
    """One row per (budget, in-scope group) in depth order: the format chosen, its bits, weights
    and the group's score in it (ModelOpt's clipped score)."""
    sens = doc.layer_sensitivity
    num_layers = doc.num_decoder_layers
    rows = []
    for point in sorted(doc.frontier, key=lambda p: float(p.target_bits)):
        for handle in sorted(sens, key=depth_key):
            s = sens[handle]
            label = point.recipe.get(handle, s.formats[-1])
            i = s.formats.index(label)
            layer, kind = layer_and_kind(handle)
            rows.append({"budget": float(point.target_bits),
                         "achieved": float(point.achieved_bits),
                         "group": profiles.group_name(handle, num_layers), "layer": layer,
                         "kind": kind, "format": recipes.format_name(label),
                         "bits": format_bits(label), "weights": max(s.costs),
                         "score": float(s.scores[i]), "handle": handle})
    return pd.DataFrame(rows).astype({"layer": "Int64"})


def _report(doc: Manifest, recipe_files: list[Path]) -> str:
    scheme, data, aq = doc.scheme, doc.dataset, doc.autoquant
    lines = [f"# Mixed recipe: {' + '.join(scheme.formats)}", "",
             f"Model {doc.model.name}, {scheme.method} scores over "
             f"{data.samples_used} captions ({data.size}). "
             f"Scores: {_mix(doc).reason}.", "",
             f"Main budget {scheme.effective_bits_requested:g} LM bits: achieved "
             f"{aq.effective_bits_achieved:.4f}, total score {aq.total_score:.6g}.", "",
             "| budget | achieved | satisfied | " + " | ".join(
                 f"{'16 bits' if n == NONE else n} (groups, weights)"
                 for n in [*scheme.formats, NONE]) + " |",
             "|---" * (3 + len(scheme.formats) + 1) + "|"]
    for p in doc.frontier:
        mix = p.mix or {}
        cells = [f"{int(mix[n].groups)}, {mix[n].weights_share:.1%}"
                 if n in mix else "0, 0%" for n in [*scheme.formats, NONE]]
        lines.append(f"| {p.target_bits:g} | {p.achieved_bits:.4f} | {p.satisfied} | "
                     + " | ".join(cells) + " |")
    lines += ["", "Recipes (ModelOpt PTQ recipe YAML: `hf_ptq.py --recipe <file>`, or "
              "`cfg = layer_sensitivity.recipe_files.load_recipe(path)`, then "
              "`mtq.quantize(model, cfg, forward_loop)`):", ""]
    lines += [f"- `{pipeline.RECIPES_DIR}/{f.name}`" for f in recipe_files]
    lines += ["", "## Figures", ""]
    lines += [f"![{n}]({figures.FIGURES_DIR}/{n})\n" for n in figures.mixed_figure_names(doc)]
    return "\n".join(lines)


def write_outputs(mp: MixedPlan, doc: Manifest, out_dir: Path) -> tuple[list[Path], list[Path]]:
    """Manifest, choice table, figures, report; one recipe per budget. (all files, recipe files)"""
    exported = [dataclasses.replace(r, name=mp.recipe_name(float(r.info["target_bits"])))
                for r in recipes.from_frontier(doc)]
    recipe_files = recipe_file_io.write_recipes(exported, out_dir / pipeline.RECIPES_DIR, doc)
    table = out_dir / f"{CHOICES_TABLE}.csv"
    choices_frame(doc).to_csv(table, index=False)
    report = out_dir / REPORT_NAME
    report.write_text(_report(doc, recipe_files) + "\n")
    pngs = figures.write_mixed_figures(doc, out_dir)
    page = write_html(report, f"Mixed recipe: {' + '.join(doc.scheme.formats)}")
    files = [manifest.write(doc, out_dir), table, report, page, *pngs, *recipe_files]
    return files, recipe_files


def run(mp: MixedPlan, out_dir: Path, resources: Resources | None = None,
        phases: pipeline.Phases | None = None, heldout: bool = False) -> MixedResult:
    """Calibration data -> scores (composed or direct) -> solve every budget -> outputs
    (-> ``heldout``: the main budget's held-out quality against single formats at equal bits)."""
    # Resources(keep=True) would load the model once for several missing formats, at the price of
    # a pristine copy in memory next to the one being searched: not the default for large models.
    resources = resources or Resources()
    phases = phases or pipeline.Phases()
    out_dir.mkdir(parents=True, exist_ok=True)
    with phases("calibration_data"):
        batches = pipeline.calibration_data(mp.formats[0], resources)
    with phases("autoquant"):
        s = search(mp, batches, resources)
    with phases("solve"):
        sol = solve(mp, s)
    with phases("reports"):
        doc = build_manifest(mp, s, sol, batches)
        files, recipe_files = write_outputs(mp, doc, out_dir)
    quality = None
    if heldout:
        with phases("heldout"):
            quality = heldout_quality(mp, s, doc)
    return MixedResult(doc, files, recipe_files, dict(phases.seconds), heldout=quality)


# --------------------------------------------------------------------------------------------
# One run


@dataclass
class MixedRequest:
    """A ``recipe`` job as the entry point hands it over."""

    cfgs: list[SensitivityConfig]  # one per format, identical but for the pair
    budgets: Any  # one LM budget, a list, or None (midpoint of the formats' bits)
    out_dir: Path
    requested: list[str] | None = None  # formats as typed (aliases), for messages and params
    strategy: str = AUTO
    config_yaml: str | None = None  # the composed configs, written next to the outputs
    params: dict[str, Any] = field(default_factory=dict)  # extra params (e.g. the overrides)
    run_name: str | None = None
    heldout: bool = True  # measure held-out quality (a few fresh quantized models; see run())


def default_run_name(mp: MixedPlan) -> str:
    return f"mixed/{'+'.join(mp.requested)}/{','.join(f'{b:g}' for b in mp.budgets)}bits"


def params(req: MixedRequest, mp: MixedPlan) -> dict[str, Any]:
    """The MLproject's parameter names first (``mlflow run`` logs those itself), then resolved."""
    c = mp.cfg
    return {
        "formats": ",".join(mp.requested),
        "effective_bits": ",".join(f"{b:g}" for b in mp.budgets),
        "model": c.model.name, "dataset_size": c.dataset.size.value,
        "method": c.autoquant.method.value, **req.params,
        "resolved.pairs": mp.tag,
        "resolved.formats": ", ".join(f"{n} ({p.format_bits:g} bits)"
                                      for n, p in zip(mp.names, mp.formats, strict=True)),
        "resolved.budgets": json.dumps(mp.budgets),
        "resolved.strategy": mp.strategy,
        "resolved.device": mp.formats[0].device,
        "resolved.samples": len(mp.formats[0].captions.lines),
        "resolved.score_samples": mp.formats[0].score_samples,
        "resolved.batch_size": c.autoquant.batch_size,
        "resolved.seq_len": c.dataset.calib_seq_len,
        "resolved.lm_head": c.autoquant.lm_head,
        "resolved.granularity": c.quant_granularity.name,
        "heldout": str(req.heldout).lower(),
    }


def run_metrics(doc: Manifest) -> list[Metric]:
    """Main budget as single values; per budget (step = bits x 100) achieved bits, score and each
    format's share of the weights and groups; each format's own frontier under ``single/``."""
    aq = doc.autoquant
    out: list[Metric] = [("effective_bits_requested", _value(doc.scheme.effective_bits_requested), None),
                         ("effective_bits_achieved", _value(aq.effective_bits_achieved), None),
                         ("total_score", _value(aq.total_score), None),
                         ("constraint_satisfied", float(_value(aq.satisfied)), None),
                         ("num_layer_groups", float(len(doc.layer_sensitivity)), None)]
    for p in doc.frontier:
        step = profiles.frontier_step(p.target_bits)
        out += [("mixed/effective_bits_achieved", p.achieved_bits, step),
                ("mixed/total_score", p.total_score, step),
                ("mixed/satisfied", float(p.satisfied), step)]
        for name, mix in (p.mix or {}).items():
            key = profiles.safe_key(name)[:180]
            out += [(f"mixed/weights_share/{key}", mix.weights_share, step),
                    (f"mixed/groups/{key}", mix.groups, step)]
    for name, points in _mix(doc).single_frontiers.items():
        key = profiles.safe_key(name)[:180]
        for q in points:
            step = profiles.frontier_step(q.target_bits)
            out += [(f"single/{key}/effective_bits_achieved", q.achieved_bits, step),
                    (f"single/{key}/total_score", q.total_score, step)]
    return [(k, float(v), s) for k, v, s in out if math.isfinite(float(v))]


def _value(x: float | None) -> float:
    """A value a mixed run always records (the solver's outcome at the main budget)."""
    if x is None:
        raise ValueError("a mixed run's manifest records the solver's outcome")
    return x


def describe(doc: Manifest, heldout: dict[str, Any] | None = None) -> str:
    """The run's description: the verdict at the main budget (the mix's estimated damage against
    each single format at the same bits), its held-out quality against the best single format at
    equal bits, then the mix and where the scores came from."""
    p, mixed = doc.frontier[0], _mix(doc)
    names = figures.pair_names(doc)
    mix = ", ".join(f"{names.get(n, n)} {int(v.groups)} groups "
                    f"({v.weights_share:.0%} of weights)" for n, v in (p.mix or {}).items())
    singles = []
    for name, points in mixed.single_frontiers.items():
        same = [q for q in points if math.isclose(float(q.target_bits), float(p.target_bits))]
        if same and same[0].satisfied:
            singles.append(f"{names.get(name, name)} alone {float(same[0].total_score):.4g}")
        elif same:
            singles.append(f"{names.get(name, name)} alone cannot reach it")
    versus = f" vs {'; '.join(singles)}" if singles else ""
    return (f"**{p.target_bits:g} LM bits** ({p.achieved_bits:.3f} achieved) mixing "
            f"{' + '.join(mixed.pairs)}: total score **{float(p.total_score):.4g}**"
            f"{versus} (AutoQuantize's estimate of the damage, lower is better).\n\n"
            f"{describe_heldout(heldout)}\n\n{mix}.\n\nModel {doc.model.name}; scores: "
            f"{mixed.reason}. Report: `{REPORT_NAME.replace('.md', '.html')}`.\n")


class RecipeTask(Task[MixedResult]):
    """A ``recipe`` job: the mixed search's plan, run and outputs as one run's lifecycle."""

    def __init__(self, req: MixedRequest, resources: Resources | None = None) -> None:
        self.req, self.resources = req, resources
        self.mp: MixedPlan | None = None

    def validate(self) -> None:
        req = self.req
        self.mp = plan(req.cfgs, req.budgets, requested=req.requested, strategy=req.strategy)

    def _plan(self) -> MixedPlan:
        assert self.mp is not None, "validate() first"
        return self.mp

    def spec(self) -> RunSpec:
        mp = self._plan()
        tags = {"entry_point": "recipe", "mixed.formats": mp.tag, "mixed.strategy": mp.strategy,
                "experimental": str(any(p.cfg.quant_pair.experimental for p in mp.formats)).lower(),
                "host.platform": platform.platform()}
        return RunSpec(self.req.run_name or mp.cfg.tracking.run_name or default_run_name(mp),
                       tags=tags)

    def params(self) -> dict[str, Any]:
        return params(self.req, self._plan())

    def execute(self, tracked: Run, phases: Phases) -> MixedResult:
        mp, req = self._plan(), self.req
        for warning in filter(None, (catalogue.experimental_warning(p.cfg.quant_pair)
                                     for p in mp.formats)):
            log.warning(warning)
        req.out_dir.mkdir(parents=True, exist_ok=True)
        config = (None if req.config_yaml is None
                  else job.write_config(req.out_dir / CONFIG_FILE, req.config_yaml))
        job.log_inputs(tracked, mp.formats[0], req.out_dir, config)
        return run(mp, req.out_dir, self.resources, phases, heldout=req.heldout)

    def outputs(self, result: MixedResult) -> Outputs:
        doc, out_dir = result.manifest, self.req.out_dir
        return Outputs(
            metrics=[*heldout_metrics(result.heldout), *run_metrics(doc),
                     *seconds_metrics(result.seconds)],
            tables={CHOICES_TABLE: choices_frame(doc)},
            tags=job.provenance_tags(doc) | {
                "mixed.composed": str(_mix(doc).composed).lower(),
                "mixed.reason": str(_mix(doc).reason)},
            description=describe(doc, result.heldout),
            files={f.relative_to(out_dir).as_posix(): f for f in result.files
                   if f.name != f"{CHOICES_TABLE}.csv"})  # the table is logged as a table


def run_and_log(req: MixedRequest, tracker: Tracker, resources: Resources | None = None,
                log_file: Path | None = None) -> MixedResult:
    """Validate (bad input: no run, no model), then run and log one run."""
    done = run_task(RecipeTask(req, resources), tracker, log_file=log_file,
                    out_of_space_what="the recipe's outputs")
    done.result.run_id = done.run_id
    return done.result
