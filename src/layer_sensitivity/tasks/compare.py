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

from .. import compare, manifest
from ..errors import UserError
from ..phases import Phases
from .lifecycle import Outputs, RunSpec, Task, run_task

if TYPE_CHECKING:
    from ..tracking import Run, Tracker
    from ..tracking.base import RunReader, RunRecord

log = logging.getLogger(__name__)


def select_runs(store: RunReader, *, run_ids: list[str] | None = None,
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


def load_manifests(store: RunReader, records: list[RunRecord], tmp: Path
                   ) -> dict[str, manifest.Manifest]:
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


@dataclass
class _Selection:
    run_ids: list[str] | None = None
    parent_run_id: str | None = None
    experiment: str | None = None
    filter_string: str = ""


class CompareTask(Task[tuple[compare.Comparison, list[Path]]]):
    """``compare``: the selected runs' manifests compared, logged as a run (nested under the
    sweep's parent when one is given)."""

    def __init__(self, store: RunReader, out_dir: Path, which: _Selection) -> None:
        self.store, self.out_dir, self.which = store, out_dir, which
        self.records: list[RunRecord] = []
        self.docs: dict[str, manifest.Manifest] = {}

    def validate(self) -> None:
        w = self.which
        self.records = select_runs(self.store, run_ids=w.run_ids, parent_run_id=w.parent_run_id,
                                   experiment=w.experiment, filter_string=w.filter_string)
        with tempfile.TemporaryDirectory() as tmp:
            self.docs = load_manifests(self.store, self.records, Path(tmp))
        self.comparison = compare.compare(self.docs)  # refuses manifests it cannot compare

    def spec(self) -> RunSpec:
        return RunSpec(f"compare {len(self.records)} runs", parent_id=self.which.parent_run_id,
                       tags={"compare.runs": ",".join(r.run_id for r in self.records)[:5000]})

    def params(self) -> dict[str, Any]:
        w = self.which
        return {"compare.num_runs": len(self.records), "compare.experiment": w.experiment,
                "compare.filter": w.filter_string, "compare.parent_run_id": w.parent_run_id}

    def execute(self, run: Run, phases: Phases) -> tuple[compare.Comparison, list[Path]]:
        with phases("compare"):
            return self.comparison, compare.write_comparison(self.comparison, self.out_dir)

    def outputs(self, result: tuple[compare.Comparison, list[Path]]) -> Outputs:
        comparison, files = result
        n, pairs = len(self.records), comparison.pairs
        description = (f"Comparison of {n} runs ({', '.join(comparison.labels[:6])}"
                       f"{', ...' if n > 6 else ''}).\n\n" + "\n\n".join(compare.headline(comparison))
                       + f"\n\nReport: `{compare.HTML_NAME}`.\n")
        return Outputs(
            metrics=[(k, float(v), None) for k, v in {
                "spearman_min": pairs["spearman"].min(), "spearman_mean": pairs["spearman"].mean(),
                "kendall_min": pairs["kendall"].min(),
                "shared_groups": len(comparison.shared_groups)}.items()
                if v == v],  # NaN when undefined: not logged
            description=description,
            files={f.relative_to(self.out_dir).as_posix(): f for f in files})


def compare_runs(store: RunReader, tracker: Tracker, out_dir: Path, *,
                 run_ids: list[str] | None = None, parent_run_id: str | None = None,
                 experiment: str | None = None, filter_string: str = "") -> Compared:
    """Compare the selected runs into ``out_dir`` and log it (nested under ``parent_run_id``)."""
    task = CompareTask(store, out_dir, _Selection(run_ids, parent_run_id, experiment,
                                                  filter_string))
    done = run_task(task, tracker)
    comparison, files = done.result
    log.info("compared %d runs -> %s", len(task.records), out_dir)
    return Compared(files, compare.headline(comparison), done.run_id)
