"""``evaluate`` over a tracked run: its recipes at equal bits, logged under the run.

The measurement is ``equal_bits.py`` (guided recipes, random draws, reverse and practitioners'
rules at each LM bit budget, a recommended recipe per budget chosen on validation captions, test
captions for the numbers, each group alone as ground truth). Logged as a run nested under the
analysis run, every metric under ``eval/``:

- series over budgets, step = round(LM bit budget x 100), so every curve overlays in the chart
  view; their names end in ``_by_bits`` because the runs table shows only the value at the largest
  budget: ``eval/<curve>_kl_test_by_bits`` for ``recommended``, ``guided``, ``random_mean``,
  ``random_std``, ``reverse``, ``keep_top_rank`` and each ``rule_*``; ``eval/<curve>_lm_bits_by_bits``
  (achieved bits); ``eval/guided_beats_random_share_by_bits`` (share of draws beaten);
  ``eval/recommended_loss_delta_test_by_bits``; ``eval/frontier_kl_test_by_bits`` (step = target;
  ``eval/mixed_kl_test_by_bits`` for a mixed run, whose own recipes are all it measures);
- scalars: ``eval/truth_spearman_kl_ranking``, ``eval/truth_kendall_kl_ranking``,
  ``eval/truth_spearman_loss_ranking``, ``eval/truth_spearman_kl_best_rule`` and
  ``eval/truth_spearman_kl_<rule>``, ``eval/truth_groups_measured``;
- tables ``evaluation`` (every recipe), ``equal_bits`` (per budget and curve), ``recommended``,
  ``ground_truth`` and ``truth_correlations``; the figure ``figures/quality_vs_bits.png``; the
  recommended recipes, ``recipes/recommended_<pct>pct.yaml`` (ModelOpt PTQ recipes).
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from .. import figures, ground_truth, manifest, recipes
from ..phases import Phases
from ..tracking.base import Metric
from .lifecycle import Outputs, RunSpec, Task, run_task

if TYPE_CHECKING:
    from ..equal_bits import EqualBits
    from ..tracking import Run, Tracker
    from ..tracking.base import RunReader

log = logging.getLogger(__name__)

TABLE = "evaluation"
PREFIX = "eval"


def _step(bits: float) -> int:
    return int(round(float(bits) * 100))


def metrics(ev: EqualBits) -> list[Metric]:
    """The ``eval/*`` metrics described in the module doc."""
    out: list[Metric] = []
    for _, r in ev.summary.iterrows():  # empty for a mixed run
        step, curve = _step(r["target_bits"]), str(r["curve"])
        name = "guided" if curve == recipes.KEEP_TOP else curve
        out += [(f"{PREFIX}/{name}_kl_test_by_bits", float(r["kl_test"]), step),
                (f"{PREFIX}/{name}_lm_bits_by_bits", float(r["lm_bits"]), step)]
        if curve == "random_mean":
            out += [(f"{PREFIX}/random_std_kl_test_by_bits", float(r["kl_test_std"]), step),
                    (f"{PREFIX}/guided_beats_random_share_by_bits", float(r["guided_beats"]), step)]
        if curve in ("recommended", recipes.KEEP_TOP):
            out.append((f"{PREFIX}/{name}_loss_delta_test_by_bits",
                        float(r["loss_delta_test"]), step))
    frontier = ev.results[ev.results["kind"].isin([recipes.FRONTIER, recipes.MIXED])]
    for _, r in frontier.iterrows():
        if r["target_bits"] is not None and not math.isnan(float(r["target_bits"])):
            out.append((f"{PREFIX}/{r['kind']}_kl_test_by_bits", float(r["kl_test"]),
                        _step(r["target_bits"])))
    if ev.correlations is not None:
        c = ev.correlations.set_index("ranking")
        rank = c.loc[ground_truth.RANKING]
        out += [(f"{PREFIX}/truth_spearman_kl_ranking", float(rank["spearman_kl"]), None),
                (f"{PREFIX}/truth_kendall_kl_ranking", float(rank["kendall_kl"]), None),
                (f"{PREFIX}/truth_spearman_loss_ranking", float(rank["spearman_loss"]), None),
                (f"{PREFIX}/truth_groups_measured", float(rank["groups"]), None),
                (f"{PREFIX}/truth_spearman_kl_best_rule",
                 float(ground_truth.best_rule(ev.correlations)["spearman_kl"]), None)]
        out += [(f"{PREFIX}/truth_spearman_kl_{name}", float(r["spearman_kl"]), None)
                for name, r in c.iterrows() if name != ground_truth.RANKING]
    return [m for m in out if not math.isnan(m[1])]


def headline(ev: EqualBits) -> tuple[list[Metric], str]:
    """The evaluation in single values and one line, at the middle budget: held-out (test) KL of
    the recommended recipe, the guided recipe, the random draws' mean and the reverse ranking.
    Single values because a table shows a series' last point only: ``eval/budget_bits``,
    ``eval/recommended_kl_test``, ``eval/guided_kl_test``, ``eval/random_mean_kl_test``,
    ``eval/reverse_kl_test``."""
    s = ev.summary
    if s.empty:  # a mixed run: its own recipes only
        own = ev.results["kl_test"] if "kl_test" in ev.results else ev.results["kl"]
        return [], (f"Held-out KL of the run's own {len(ev.results)} recipe(s): "
                    f"{', '.join(f'{x:.4g}' for x in own)}.")
    budgets = sorted(float(b) for b in s["target_bits"].unique())
    bits = budgets[len(budgets) // 2]
    at = s[s["target_bits"].astype(float) == bits].set_index("curve")

    def kl(curve: str) -> float:
        return float(at.loc[curve, "kl_test"]) if curve in at.index else math.nan

    curves = {"recommended": "recommended", recipes.KEEP_TOP: "guided",
              "random_mean": "random_mean", "reverse": "reverse"}
    values = [(f"{PREFIX}/{name}_kl_test", kl(curve), None) for curve, name in curves.items()]
    out: list[Metric] = [m for m in [(f"{PREFIX}/budget_bits", bits, None), *values]
                         if not math.isnan(m[1])]
    beats = (f"; guided beats {float(at.loc['random_mean', 'guided_beats']):.0%} of the draws"
             if "random_mean" in at.index and "guided_beats" in at.columns else "")
    guided, rnd, rev = kl(recipes.KEEP_TOP), kl("random_mean"), kl("reverse")
    verdict = "lower than both" if guided < min(rnd, rev) else "**not** lower than both"
    line = (f"At **{bits:.2f} LM bits**, held-out KL: guided **{guided:.4g}** vs random "
            f"{rnd:.4g} (mean) vs reverse {rev:.4g}: {verdict}{beats}. Recommended recipe: "
            f"{kl('recommended'):.4g}.")
    return out, line


def equal_bits_outputs(ev: EqualBits, out_dir: Path) -> Outputs:
    """Write the tables and the figure to ``out_dir``; what the evaluation run logs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    frames: dict[str, pd.DataFrame | None] = {
        TABLE: ev.results, "equal_bits": ev.summary, "recommended": ev.recommended,
        "ground_truth": ev.truth, "truth_correlations": ev.correlations}
    tables = {stem: df for stem, df in frames.items() if df is not None and not df.empty}
    files: dict[str, Path] = {}
    for stem, df in tables.items():
        csv = out_dir / f"{stem}.csv"
        df.to_csv(csv, index=False)
        files[csv.name] = csv
    for path in recipes.write_recipes(ev.chosen, out_dir / "recipes"):
        files[f"recipes/{path.name}"] = path
    if not ev.summary.empty:
        files[f"figures/{figures.QUALITY_VS_BITS}"] = figures.write_quality_vs_bits(ev.summary,
                                                                                   out_dir)
    scalars, line = headline(ev)
    return Outputs(
        metrics=[*scalars, *metrics(ev)],  # the headline first: MLflow lists in logged order
        tables=tables,
        description=f"{line}\n\nEqual-bits evaluation: {len(ev.results)} recipes measured "
                    "(guided, random draws, reverse and rules at each LM bit budget), test "
                    "captions held out. Curves `eval/*_by_bits` (step = bits x 100); tables "
                    f"`equal_bits`, `recommended`, `{TABLE}`.\n",
        files=files)


class EvaluateTask(Task["EqualBits"]):
    """``evaluate``: a finished run's recipes at equal bits, logged as a run nested under it."""

    def __init__(self, store: RunReader, run_id: str, out_dir: Path, *,
                 keep: Sequence[float] | None = None, eval_captions: str | None = None,
                 max_eval_samples: int | None = None, draws: int | None = None,
                 truth: bool = True, truth_subset: int | None = None) -> None:
        from .. import baselines, equal_bits

        self.store, self.run_id, self.out_dir = store, run_id, out_dir
        self.headroom = list(keep) if keep is not None else list(equal_bits.DEFAULT_HEADROOM)
        self.draws = baselines.DEFAULT_DRAWS if draws is None else draws
        self.eval_captions, self.max_eval_samples = eval_captions, max_eval_samples
        self.truth, self.truth_subset = truth, truth_subset
        self.run_name = ""
        self.doc: manifest.Manifest  # read by validate

    def validate(self) -> None:
        self.run_name = self.store.finished(self.run_id).run_name
        with tempfile.TemporaryDirectory() as tmp:
            self.doc = manifest.load(self.store.fetch_manifest(self.run_id, Path(tmp)))

    def spec(self) -> RunSpec:
        return RunSpec(f"evaluate {self.run_name}", parent_id=self.run_id,
                       tags={"evaluate.of": self.run_name})

    def params(self) -> dict[str, Any]:
        from ..baselines import EQUAL_BITS_TOLERANCE

        truth = ("off" if not self.truth else f"{self.truth_subset} groups" if self.truth_subset
                 else "all groups")
        return {"evaluate.headroom": ",".join(f"{k:g}" for k in self.headroom),
                "evaluate.random_draws": self.draws, "evaluate.ground_truth": truth,
                "evaluate.bits_tolerance": EQUAL_BITS_TOLERANCE,
                "evaluate.eval_captions": self.eval_captions or (
                    "held-out image-text pairs" if self.doc.dataset.modality == "image_text"
                    else "held-out bundled captions"),
                "evaluate.max_eval_samples": self.max_eval_samples}

    def execute(self, run: Run, phases: Phases) -> EqualBits:
        from .. import equal_bits

        with phases("evaluate"):
            if equal_bits.is_single_format(self.doc):
                return equal_bits.evaluate_equal_bits(
                    self.doc, headroom=self.headroom, draws=self.draws, truth=self.truth,
                    truth_subset=self.truth_subset, eval_captions_path=self.eval_captions,
                    max_eval_samples=self.max_eval_samples)
            return equal_bits.own_recipes_only(self.doc, eval_captions_path=self.eval_captions,
                                               max_eval_samples=self.max_eval_samples)

    def outputs(self, result: EqualBits) -> Outputs:
        return equal_bits_outputs(result, self.out_dir)


def evaluate_run(store: RunReader, tracker: Tracker, run_id: str, out_dir: Path, *,
                 keep: Sequence[float] | None = None, eval_captions: str | None = None,
                 max_eval_samples: int | None = None, draws: int | None = None,
                 truth: bool = True, truth_subset: int | None = None) -> EqualBits:
    """Evaluate a finished sensitivity run at equal bits; log under the run."""
    done = run_task(EvaluateTask(store, run_id, out_dir, keep=keep, eval_captions=eval_captions,
                                 max_eval_samples=max_eval_samples, draws=draws, truth=truth,
                                 truth_subset=truth_subset), tracker)
    log.info("evaluated %d recipes of run %s -> %s", len(done.result.results), run_id, out_dir)
    return done.result
