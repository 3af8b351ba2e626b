"""A run's recipes judged at equal bits, a recommended recipe per budget, and ground truth.

:func:`evaluate_equal_bits` measures, at each budget (``budgets.py``): the guided recipe, the
baselines of ``baselines.py`` (random draws, reverse, practitioners' rules), the solver's frontier
recipes and, optionally, each group quantized alone (``ground_truth.py``). Recipes are chosen on
**validation** captions (``kl``) and reported on **test** captions (``kl_test``), disjoint from
each other and from calibration (``held_out.split_validation_test``).

:func:`recommend`: at each budget the candidates are every deterministic recipe that fits it
(guided, ``keep_top_rank``, frontier, each rule; at any budget up to this one, since a cheaper
recipe also fits a larger budget); the one with the lowest validation KL is ``recommended``. So
more bits never recommend a recipe worse on validation; when the best one is cheaper than the
budget (``dominated``), the row says so and names it. Random draws and the reverse ranking are
baselines, never candidates.

Summaries and the recommendation need neither torch nor a model.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from . import baselines, budgets, ground_truth, recipes
from .baselines import EQUAL_BITS_TOLERANCE, GUIDED, GUIDED_RANK, RANDOM, REVERSE, RULES
from .manifest_model import Manifest

log = logging.getLogger(__name__)

CANDIDATES = (GUIDED, GUIDED_RANK, recipes.FRONTIER, *RULES)
RECOMMENDED = "recommended"
DEFAULT_HEADROOM = (0.10, 0.25, 0.50)  # budget 0 is every group quantized: nothing to choose


@dataclass
class EqualBits:
    results: pd.DataFrame  # one row per recipe (evaluate.COLUMNS)
    summary: pd.DataFrame  # per budget and curve (guided, random mean/std, rules, recommended)
    recommended: pd.DataFrame  # per budget: the recommended recipe, validation and test numbers
    truth: pd.DataFrame | None  # per group alone: KL and loss change (test captions)
    correlations: pd.DataFrame | None  # ranking and rules vs truth: Spearman, Kendall
    # The recommended recipes themselves (``recommended_<pct>pct``), when measured here.
    chosen: list[recipes.Recipe] = field(default_factory=list)


def plan_recipes(manifest: Manifest, headroom: Sequence[float], draws: int,
                 quant_cfg: recipes.QuantCfg | None = None, include_frontier: bool = True,
                 truth_subset: int | None = None, truth: bool = True) -> list[recipes.Recipe]:
    """Everything :func:`evaluate_equal_bits` measures, in that order."""
    if quant_cfg is None:
        gs = recipes.manifest_groups(manifest)
        quant_cfg = recipes.format_configs(manifest)[budgets.only_format(gs)]
    todo = baselines.equal_bits_recipes(manifest, headroom, draws, quant_cfg)
    if include_frontier and manifest.frontier:
        fmt = budgets.only_format(recipes.manifest_groups(manifest))
        todo += recipes.from_frontier(manifest, {fmt: quant_cfg})
    if truth:
        todo += ground_truth.alone_recipes(manifest, truth_subset, quant_cfg)
    return todo


def evaluate_equal_bits(manifest: Manifest, *,
                        headroom: Sequence[float] = DEFAULT_HEADROOM,
                        draws: int = baselines.DEFAULT_DRAWS, truth: bool = True,
                        truth_subset: int | None = None,
                        eval_captions_path: str | Path | None = None,
                        max_eval_samples: int | None = None, model_dir: str | Path | None = None,
                        device: str = "auto", progress: bool = True,
                        on_result: Callable[[dict[str, Any]], None] | None = None) -> EqualBits:
    """Measure a single-format sensitivity run's recipes and baselines (see the module doc)."""
    from . import evaluate

    todo = plan_recipes(manifest, headroom, draws, truth=truth, truth_subset=truth_subset)
    alone = sum(r.kind == ground_truth.ALONE for r in todo)
    log.info("equal-bits evaluation: %d recipes at %d budget(s) (%d random draws each), %s",
             len(todo) - alone, len(headroom), draws,
             ground_truth.cost_statement(alone, None) if truth else "no ground truth")
    seconds: list[float] = []

    def measured(row: dict[str, Any]) -> None:
        seconds.append(float(row["seconds"]))
        if alone and len(seconds) == len(todo) - alone:  # the groups alone come next: their cost
            log.info(ground_truth.cost_statement(alone, sum(seconds) / len(seconds)))
        if on_result:
            on_result(row)

    results = evaluate._evaluate_like_the_run(
        manifest, todo, model_dir=model_dir, eval_captions_path=eval_captions_path,
        max_eval_samples=max_eval_samples, device=device,
        eval_batch_size=evaluate.EVAL_BATCH_SIZE, progress=progress, on_result=measured,
        split=True)
    results["group"] = [r.info.get("group") for r in todo]
    ev = analyse(manifest, results)
    ev.chosen = recommended_recipes(ev.recommended, todo)
    return ev


def recommended_recipes(rec: pd.DataFrame, measured: Sequence[recipes.Recipe]
                        ) -> list[recipes.Recipe]:
    """Each budget's recommended recipe, renamed ``recommended_<pct>pct`` (it keeps its kind and
    says what it was, which budget it serves and how it was chosen)."""
    by_name = {r.name: r for r in measured}
    out = []
    for _, row in rec.iterrows():
        r = by_name[row["name"]]
        out.append(replace(
            r, name=budgets.headroom_name(RECOMMENDED, float(row["headroom"])),
            info={**r.info, "recommended_as": r.name, "budget_headroom": float(row["headroom"]),
                  "budget_bits": float(row["target_bits"]),
                  "chosen_on": "lowest validation KL among candidates that fit the budget",
                  "kl_validation": float(row["kl_val"]), "kl_test": float(row["kl_test"])}))
    return out


def is_single_format(manifest: Manifest) -> bool:
    gs = recipes.manifest_groups(manifest)
    return len({f for g in gs for f in g.costs if f != recipes.NONE}) == 1


def own_recipes_only(manifest: Manifest, **kwargs: Any) -> EqualBits:
    """A multi-format (mixed) run: its own recipes on validation and test captions; no single
    format to fill budgets with, so no baselines, recommendation or ground truth."""
    from . import evaluate

    results = evaluate.evaluate_manifest(manifest, split=True, **kwargs)
    return EqualBits(results, pd.DataFrame(), pd.DataFrame(), None, None)


def analyse(manifest: Manifest, results: pd.DataFrame) -> EqualBits:
    """Summary, recommendation and ground-truth correlations from measured results."""
    truth = corr = None
    if (results["kind"] == ground_truth.ALONE).any():
        truth = ground_truth.truth_table(results)
        corr = ground_truth.correlations(manifest, truth)
    rec = recommend(results)
    return EqualBits(results, summary(results, rec), rec, truth, corr)


def _budgets(results: pd.DataFrame) -> pd.DataFrame:
    rows = results[results["kind"] == GUIDED].dropna(subset=["headroom"])
    return rows[["headroom", "target_bits"]].drop_duplicates().sort_values("target_bits")


def recommend(results: pd.DataFrame) -> pd.DataFrame:
    """Per budget: the candidate with the lowest validation KL among those that fit it."""
    cands = results[results["kind"].isin(CANDIDATES)]
    out = []
    for _, b in _budgets(results).iterrows():
        fits = cands[cands["lm_bits"] <= b["target_bits"] + budgets.BITS_EPS]
        best = fits.sort_values(["kl", "lm_bits", "name"]).iloc[0]
        dominated = bool(best["lm_bits"] < b["target_bits"] - EQUAL_BITS_TOLERANCE)
        out.append({
            "headroom": b["headroom"], "target_bits": b["target_bits"], "name": best["name"],
            "kind": best["kind"], "lm_bits": best["lm_bits"], "kl_val": best["kl"],
            "kl_test": best["kl_test"], "loss_delta_test": best["loss_delta_test"],
            "dominated": dominated,
            "note": (f"{best['name']} at {best['lm_bits']:.2f} bits is at least as good on "
                     f"validation captions: more bits buy nothing here" if dominated else "")})
    return pd.DataFrame(out)


def summary(results: pd.DataFrame, rec: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per budget and curve: test KL / loss change, bits, and for random draws their mean, std,
    min, max and the share of draws the guided recipe beats on test KL."""
    rec = recommend(results) if rec is None else rec
    rows = []
    for _, b in _budgets(results).iterrows():
        at = results[results["headroom"] == b["headroom"]]
        guided = at[at["kind"] == GUIDED].iloc[0]
        base = {"headroom": b["headroom"], "target_bits": b["target_bits"]}
        for kind in (GUIDED, GUIDED_RANK, REVERSE, *RULES):
            r = at[at["kind"] == kind]
            if not r.empty:
                r0 = r.iloc[0]
                rows.append({**base, "curve": kind, "kl_test": r0["kl_test"],
                             "loss_delta_test": r0["loss_delta_test"], "kl_val": r0["kl"],
                             "lm_bits": r0["lm_bits"]})
        draws = at[at["kind"] == RANDOM]
        if not draws.empty:
            rows.append({**base, "curve": "random_mean", "kl_test": draws["kl_test"].mean(),
                         "loss_delta_test": draws["loss_delta_test"].mean(),
                         "kl_val": draws["kl"].mean(), "lm_bits": draws["lm_bits"].mean(),
                         "kl_test_std": draws["kl_test"].std(ddof=1) if len(draws) > 1 else 0.0,
                         "kl_test_min": draws["kl_test"].min(),
                         "kl_test_max": draws["kl_test"].max(), "draws": len(draws),
                         "guided_beats": float((guided["kl_test"] < draws["kl_test"]).mean()),
                         "lm_bits_min": draws["lm_bits"].min()})
        r = rec[rec["headroom"] == b["headroom"]].iloc[0]
        rows.append({**base, "curve": RECOMMENDED, "kl_test": r["kl_test"],
                     "loss_delta_test": r["loss_delta_test"], "kl_val": r["kl_val"],
                     "lm_bits": r["lm_bits"], "recipe": r["name"]})
    out = pd.DataFrame(rows)
    if not out.empty:  # the largest gap of the curve (random: its lowest draw)
        lowest = out["lm_bits_min"].fillna(out["lm_bits"]) if "lm_bits_min" in out else out[
            "lm_bits"]
        out["bits_gap"] = out["target_bits"] - lowest
        out["within_tolerance"] = (out["curve"] == RECOMMENDED) | (
            out["bits_gap"] <= EQUAL_BITS_TOLERANCE + budgets.BITS_EPS)
    return out


def wide(summary_: pd.DataFrame, column: str = "kl_test") -> pd.DataFrame:
    """One row per budget, one column per curve (plus random std and guided's share beaten)."""
    t = summary_.pivot(index="target_bits", columns="curve", values=column)
    rnd = summary_[summary_["curve"] == "random_mean"].set_index("target_bits")
    if not rnd.empty:
        t["random_std"] = rnd["kl_test_std"] if column == "kl_test" else math.nan
        t["guided_beats"] = rnd["guided_beats"]
    return t
