"""``evaluate`` over a tracked run: measure what its recipes cost, log it under the run.

The measurement is ``evaluate.py`` (quantize a fresh copy per recipe, calibrate as the run did,
held-out KL and loss change); this module fetches the run's manifest and logs the result as a run
nested under the analysis run: ``eval/*`` (the ranking's recipes, step = percent of groups kept at
16 bits), ``eval_random/*`` and ``eval_reverse/*`` (baselines at the same fractions),
``eval_frontier/*`` (step = target bits x 100), a table and a quality-versus-bits figure.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from . import figures, manifest, recipes
from .tracking.base import Metric

if TYPE_CHECKING:
    from .tracking import Tracker
    from .tracking.runs import RunStore

log = logging.getLogger(__name__)

TABLE = "evaluation"
PREFIX = {recipes.KEEP_TOP: "eval", recipes.KEEP_RANDOM: "eval_random",
          recipes.KEEP_BOTTOM: "eval_reverse", recipes.FRONTIER: "eval_frontier",
          recipes.MIXED: "eval_mixed"}


def metrics(results: pd.DataFrame) -> list[Metric]:
    """Step series per kind of recipe; random seeds averaged at each fraction."""
    out: list[Metric] = []
    for kind, rows in results.groupby("kind"):
        prefix = PREFIX.get(str(kind), f"eval_{kind}")
        if kind in (recipes.FRONTIER, recipes.MIXED):
            steps = (rows["target_bits"].astype(float) * 100).round().astype(int)
        else:
            steps = (rows["keep_fraction"].astype(float) * 100).round().astype(int)
        table = rows.assign(step=steps).groupby("step")[["kl", "loss_delta", "lm_bits"]].mean()
        for step, r in table.iterrows():
            out += [(f"{prefix}/{k}", float(r[k]), int(step)) for k in ("kl", "loss_delta", "lm_bits")]
    return out


def evaluate_run(store: RunStore, tracker: Tracker, run_id: str, out_dir: Path, *,
                 keep: Sequence[float] = recipes.DEFAULT_KEEP, eval_captions: str | None = None,
                 max_eval_samples: int | None = None) -> pd.DataFrame:
    """Evaluate a finished sensitivity run's recipes and baselines; log under the run."""
    from . import evaluate

    record = store.get(run_id)
    with tempfile.TemporaryDirectory() as tmp:
        doc: dict[str, Any] = manifest.load(store.fetch_manifest(run_id, Path(tmp)))
    with tracker.run("evaluate", parent_id=run_id, tags={"evaluate.of": record.run_name}) as run:
        run.log_params({"evaluate.keep": ",".join(f"{k:g}" for k in keep),
                        "evaluate.eval_captions": eval_captions or "held-out bundled captions",
                        "evaluate.max_eval_samples": max_eval_samples})
        results = evaluate.evaluate_manifest(doc, keep_fractions=keep,
                                             eval_captions_path=eval_captions,
                                             max_eval_samples=max_eval_samples)
        out_dir.mkdir(parents=True, exist_ok=True)
        csv = out_dir / f"{TABLE}.csv"
        results.to_csv(csv, index=False)
        curves = evaluate.curves(results)
        files = {csv.name: csv,
                 f"figures/{figures.QUALITY_VS_BITS}": figures.write_quality_vs_bits(results, out_dir)}
        run.log_metrics(metrics(results))
        run.log_table(results, TABLE)
        if not curves.empty:
            run.log_table(curves.reset_index(), "curves")
        run.log_files(files)
    log.info("evaluated %d recipes of run %s -> %s", len(results), run_id, out_dir)
    return results
