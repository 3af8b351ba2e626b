"""Ground truth for a ranking: each layer group quantized alone, measured on held-out captions.

A group's true sensitivity here is what quantizing it, and nothing else, does to the model: the
held-out token KL to the unquantized model and the caption-loss change (``evaluate.py`` measures
them; this module makes the recipes and reads the results). A ranking is then judged by Spearman
and Kendall correlation of its order with that truth; so is each data-free rule
(``baselines.data_free_rankings``), the bar a measured ranking has to clear.

One quantize-and-measure pass per group: on a large model pass ``subset`` (every k-th group in
rank order, so the subset spans the ranking) and read :func:`cost_statement` first. No torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
from scipy import stats

from . import baselines, budgets, groups, recipes
from .errors import UserError
from .manifest_model import Manifest
from .recipes import Group, QuantCfg, Recipe

ALONE = "alone"  # kind of a single-group recipe
RANKING = "ranking"  # the run's own scores, in correlation tables


def chosen_groups(gs: Sequence[Group], subset: int | None) -> list[Group]:
    """All groups, or ``subset`` of them evenly spaced in rank order (first and last included)."""
    if subset is None or subset >= len(gs):
        return list(gs)
    if subset < 3:
        raise UserError(f"A ground-truth subset of {subset} group(s) cannot rank anything; give "
                        "at least 3 (or all).")
    step = (len(gs) - 1) / (subset - 1)
    return [gs[round(i * step)] for i in range(subset)]


def alone_recipes(manifest: Manifest, subset: int | None = None,
                  quant_cfg: QuantCfg | None = None,
                  format_name: str | None = None) -> list[Recipe]:
    """One recipe per chosen group: that group in the run's format, every other one at 16 bits."""
    gs = recipes.manifest_groups(manifest)
    fmt, cfgs = recipes.single_format(manifest, gs, quant_cfg, format_name)
    out = []
    for g in chosen_groups(gs, subset):
        kept = [h.handle for h in gs if h.handle != g.handle]
        name = f"{ALONE}_{groups.module_of(g.handle)}"
        out.append(budgets.recipe_for(manifest, gs, fmt, cfgs, kept, name, ALONE, group=g.handle))
    return out


def cost_statement(n_groups: int, seconds_per_pass: float | None) -> str:
    """What measuring ``n_groups`` alone costs, said before it runs."""
    each = (f", about {seconds_per_pass:.1f} s each, {n_groups * seconds_per_pass / 60:.1f} min in "
            "all" if seconds_per_pass else "")
    return (f"ground truth: {n_groups} quantize-and-measure passes (one per group alone{each}); "
            "pass a subset of groups to measure fewer")


def truth_table(results: pd.DataFrame, metric_suffix: str = "_test") -> pd.DataFrame:
    """Per measured group: KL and loss change when quantized alone (test captions by default)."""
    rows = results[results["kind"] == ALONE]
    return pd.DataFrame({"group": rows["group"].to_numpy(),
                         "kl": rows[f"kl{metric_suffix}"].to_numpy(),
                         "loss_delta": rows[f"loss_delta{metric_suffix}"].to_numpy()})


def _corr(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    if len(a) < 3:
        return math.nan, math.nan
    rho = float(stats.spearmanr(a, b).statistic)
    tau = float(stats.kendalltau(a, b).statistic)
    return rho, tau


def correlations(manifest: Manifest, truth: pd.DataFrame) -> pd.DataFrame:
    """Spearman and Kendall, against the measured KL and loss change, of the run's scores
    (``ranking``) and of each data-free rule (its order read as a ranking)."""
    gs = recipes.manifest_groups(manifest)
    fmt = budgets.only_format(gs)
    measured = list(truth["group"])
    kl = truth.set_index("group")["kl"]
    loss = truth.set_index("group")["loss_delta"]
    candidates: dict[str, dict[str, float]] = {
        RANKING: {g.handle: budgets.score(g, fmt) for g in gs}}
    for rule, order in baselines.data_free_rankings(gs, fmt).items():
        candidates[rule] = {h: float(len(order) - i) for i, h in enumerate(order)}
    rows = []
    for name, priority in candidates.items():
        p = [priority[h] for h in measured]
        rho_kl, tau_kl = _corr(p, [kl[h] for h in measured])
        rho_loss, tau_loss = _corr(p, [loss[h] for h in measured])
        rows.append({"ranking": name, "spearman_kl": rho_kl, "kendall_kl": tau_kl,
                     "spearman_loss": rho_loss, "kendall_loss": tau_loss,
                     "groups": len(measured)})
    return pd.DataFrame(rows)


def best_rule(corr: pd.DataFrame) -> pd.Series:
    """The data-free rule with the highest Spearman against measured KL."""
    rules = corr[corr["ranking"] != RANKING]
    return rules.loc[rules["spearman_kl"].idxmax()]
