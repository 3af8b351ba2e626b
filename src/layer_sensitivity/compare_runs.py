"""``compare`` over tracked runs: pick runs, read their manifests, write and log a comparison.

Reads manifests only (no torch, no model). The comparison itself is ``compare.py``; this module
chooses the runs (ids, a sweep's children, or an experiment and filter) and logs the result as a
run, nested under the sweep's parent when one is given.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import compare, manifest
from .errors import UserError

if TYPE_CHECKING:
    from .tracking import Tracker
    from .tracking.runs import RunRecord, RunStore

log = logging.getLogger(__name__)


def select_runs(store: RunStore, *, run_ids: list[str] | None = None,
                parent_run_id: str | None = None, experiment: str | None = None,
                filter_string: str = "") -> list[RunRecord]:
    """The runs to compare: FINISHED sensitivity jobs only (sweep parents and failures skipped)."""
    given = [bool(run_ids), bool(parent_run_id), bool(experiment)]
    if sum(given) != 1:
        raise UserError("compare needs exactly one of run_ids=<id,id,...>, parent_run_id=<sweep "
                        "parent> or experiment=<name> (with an optional filter).")
    if run_ids:
        records = [store.get(r) for r in run_ids]
    elif parent_run_id:
        store.get(parent_run_id)
        records = store.children(parent_run_id)
    else:
        records = store.search(str(experiment), filter_string)
    usable = [r for r in records if r.status == "FINISHED" and r.tags.get("sweep") != "parent"
              and r.run_name not in ("report", "publish") and not r.run_name.startswith("compare")]
    for r in records:
        if r not in usable and run_ids:
            raise UserError(f"Run {r.run_id} ({r.run_name}) is {r.status} or not a sensitivity "
                            "job; compare FINISHED sensitivity runs only.")
    if len(usable) < 2:
        raise UserError(f"compare needs two or more FINISHED sensitivity runs; found "
                        f"{len(usable)} ({len(records)} selected). Widen the selection.")
    return usable


def _labels(records: list[RunRecord]) -> list[str]:
    """Run names, with the run id's head added where two names are alike."""
    names = [r.run_name or r.run_id for r in records]
    return [f"{n} [{r.run_id[:6]}]" if names.count(n) > 1 else n
            for n, r in zip(names, records, strict=True)]


def load_manifests(store: RunStore, records: list[RunRecord], tmp: Path) -> dict[str, Any]:
    docs = {}
    for label, r in zip(_labels(records), records, strict=True):
        docs[label] = manifest.load(store.fetch_manifest(r.run_id, tmp / r.run_id))
    return docs


@dataclass(frozen=True)
class Compared:
    """What ``compare_runs`` wrote and logged: its files, its headline lines, the run id."""

    files: list[Path]
    headline: list[str]
    run_id: str | None


def compare_runs(store: RunStore, tracker: Tracker, out_dir: Path, *,
                 run_ids: list[str] | None = None, parent_run_id: str | None = None,
                 experiment: str | None = None, filter_string: str = "") -> Compared:
    """Compare the selected runs into ``out_dir`` and log it (nested under ``parent_run_id``)."""
    records = select_runs(store, run_ids=run_ids, parent_run_id=parent_run_id,
                          experiment=experiment, filter_string=filter_string)
    with tempfile.TemporaryDirectory() as tmp:
        docs = load_manifests(store, records, Path(tmp))
    result = compare.compare(docs)
    files = compare.write_comparison(result, out_dir)
    headline = compare.headline(result)
    name = f"compare {len(records)} runs"
    description = (f"Comparison of {len(records)} runs ({', '.join(result.labels[:6])}"
                   f"{', ...' if len(records) > 6 else ''}).\n\n" + "\n\n".join(headline)
                   + f"\n\nReport: `{compare.HTML_NAME}`.\n")
    with tracker.run(name, parent_id=parent_run_id, description=description, tags={
            "compare.runs": ",".join(r.run_id for r in records)[:5000]}) as run:
        run.log_params({"compare.num_runs": len(records), "compare.experiment": experiment,
                        "compare.filter": filter_string, "compare.parent_run_id": parent_run_id})
        pairs = result.pairs
        run.log_metrics([(k, float(v), None) for k, v in {
            "spearman_min": pairs["spearman"].min(), "spearman_mean": pairs["spearman"].mean(),
            "kendall_min": pairs["kendall"].min(), "shared_groups": len(result.shared_groups),
        }.items() if v == v])  # NaN when undefined: not logged
        run.log_files({f.relative_to(out_dir).as_posix(): f for f in files})
    log.info("compared %d runs -> %s", len(records), out_dir)
    return Compared(files, headline, run.run_id)
