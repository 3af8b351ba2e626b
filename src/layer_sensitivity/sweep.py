"""Sweep bookkeeping: one parent run, a status file per job, a summary when the sweep ends.

Hydra's multirun runs the jobs (any launcher); ``cli/sweep_callback.py`` calls in here at the
sweep's start and end. Jobs find their parent through the environment (``SweepContext``), and each
job leaves ``job_status.json`` in its own output directory, so the summary needs neither the
launcher's return values nor a shared process. No Hydra, no MLflow.
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import ReportedError
from .manifest_model import Manifest
from .redact import redact_text
from .tracking import Run, Tracker

log = logging.getLogger(__name__)

# A sweep's state reaches its jobs through these environment variables and nothing else:
# launchers run jobs in other processes (joblib's workers, submitit and SLURM jobs), which inherit
# the environment of the process that started the sweep. ``SweepContext`` reads and writes them.
PARENT_ENV = "LAYER_SENSITIVITY_PARENT_RUN_ID"  # the sweep's parent run, for every job
SWEPT_ENV = "LAYER_SENSITIVITY_SWEPT_KEYS"  # override keys whose value varies across jobs
TOTAL_ENV = "LAYER_SENSITIVITY_SWEEP_JOBS"  # how many jobs the sweep plans (progress)
WORKERS_ENV = "LAYER_SENSITIVITY_SWEEP_WORKERS"  # jobs the launcher runs at once (progress)
STATUS_FILE = "job_status.json"
SUMMARY = "sweep_summary"
DEFINITION = "sweep.json"
SHARED_SCORES = "shared_scores.json"  # the parent's record of the shared-scores pre-pass
NAME_KEYS = ("quant_pair", "quant_granularity", "dataset.size", "autoquant.method",
             "autoquant.effective_bits")  # already in a child's name
COLUMNS = ["job", "name", "overrides", "pair", "granularity", "size", "status", "total_score",
           "effective_bits_achieved", "run_id", "output_dir", "error"]


@dataclass(frozen=True)
class SweepContext:
    """What every job of a sweep needs from the process that started it (see ``*_ENV``)."""

    parent_run_id: str | None = None
    swept_keys: frozenset[str] = frozenset()
    total_jobs: int = 0  # 0: the plan is unknown (e.g. glob sweeps)
    workers: int = 1

    def export(self) -> None:
        """Into this process's environment, which the launcher's jobs inherit."""
        os.environ[SWEPT_ENV] = ",".join(sorted(self.swept_keys))
        os.environ[TOTAL_ENV] = str(self.total_jobs)
        os.environ[WORKERS_ENV] = str(self.workers)
        if self.parent_run_id:
            os.environ[PARENT_ENV] = self.parent_run_id
        else:
            os.environ.pop(PARENT_ENV, None)

    @classmethod
    def current(cls) -> SweepContext:
        """The context a job was started in (empty outside a sweep)."""
        env = os.environ
        return cls(env.get(PARENT_ENV) or None,
                   frozenset(filter(None, env.get(SWEPT_ENV, "").split(","))),
                   int(env.get(TOTAL_ENV, "0") or 0), int(env.get(WORKERS_ENV, "1") or 1))

    @staticmethod
    def clear() -> None:
        for name in (PARENT_ENV, SWEPT_ENV, TOTAL_ENV, WORKERS_ENV):
            os.environ.pop(name, None)


class JobsFailed(ReportedError):
    """Some jobs failed (each one recorded); the parent run ends FAILED."""


def job_name(base: str, task_overrides: list[str], swept: set[str]) -> str:
    """``<pair>/<granularity>/<size>`` plus any other swept override, so names stay distinct."""
    extra = [o for o in task_overrides
             if o.split("=", 1)[0].lstrip("+~") in swept - set(NAME_KEYS)]
    return " ".join([base, *extra])


def overrides_key(overrides: list[str]) -> str:
    """A job's identity across the plan and its status file: its overrides, sorted."""
    return " ".join(sorted(overrides))


def write_status(out_dir: Path, *, num: int, name: str, overrides: list[str], status: str,
                 run_id: str | None, manifest: Manifest | None = None,
                 planned: dict[str, Any] | None = None,
                 error: str | None = None, seconds: float | None = None) -> None:
    """What the summary reads back; written last, atomically, by every job however it ends.
    ``planned``: pair, granularity and size as configured, shown when the job left no manifest.
    ``seconds``: the job's own duration (the sweep's time estimate averages them)."""
    shown = dict(planned or {})
    if manifest is not None:
        q, aq = manifest.quantization, manifest.autoquant
        shown = {"pair": q.pair, "granularity": q.granularity, "size": manifest.dataset.size,
                 "total_score": aq.total_score,
                 "effective_bits_achieved": aq.effective_bits_achieved}
    doc = {"job": num, "name": name, "overrides": overrides_key(overrides), "status": status,
           "run_id": run_id,
           "pair": shown.get("pair"), "granularity": shown.get("granularity"),
           "size": shown.get("size"),
           "total_score": shown.get("total_score"),
           "effective_bits_achieved": shown.get("effective_bits_achieved"),
           "output_dir": str(out_dir), "seconds": seconds,
           "error": error.strip().splitlines()[-1] if error and error.strip() else None}
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{STATUS_FILE}.tmp"
    tmp.write_text(redact_text(json.dumps(doc, indent=2) + "\n"))
    os.replace(tmp, out_dir / STATUS_FILE)


def read_statuses(sweep_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for f in sorted(sweep_dir.glob(f"*/{STATUS_FILE}")):
        try:
            rows.append(json.loads(f.read_text()))
        except (OSError, json.JSONDecodeError):
            log.warning("unreadable job status %s", f)
    return sorted(rows, key=lambda r: r.get("job", 0))


def summary(statuses: list[dict[str, Any]], planned: list[str]) -> pd.DataFrame:
    """One row per job; planned jobs (override keys) that never started are NOT_STARTED."""
    seen = {r.get("overrides") for r in statuses}
    rows = list(statuses) + [{"job": None, "name": n, "overrides": n, "status": "NOT_STARTED"}
                             for n in planned if n not in seen]
    return pd.DataFrame(rows, columns=COLUMNS)


def counts(table: pd.DataFrame) -> dict[str, float]:
    status = table["status"]
    return {"jobs": float(len(table)), "jobs_finished": float((status == "FINISHED").sum()),
            "jobs_failed": float((status == "FAILED").sum()),
            "jobs_killed": float((status == "KILLED").sum()),
            "jobs_not_started": float((status == "NOT_STARTED").sum())}


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def progress(sweep_dir: Path, context: SweepContext | None = None) -> str:
    """``3 of 8 jobs done; estimate: about 5.0 min left (100 s per job, 2 at a time)``.

    From the status files, whatever the launcher: the finished jobs' mean duration times the
    rounds of jobs left (jobs left / parallel workers, rounded up). No estimate before a job
    has finished: the first one also loads the model and data, the sweep's start says nothing.
    """
    context = context or SweepContext.current()
    total = context.total_jobs
    statuses = read_statuses(sweep_dir)
    done = len(statuses)
    if not total:
        return f"{done} jobs done"
    head = f"{done} of {total} jobs done"
    durations = [float(r["seconds"]) for r in statuses
                 if r.get("status") == "FINISHED" and isinstance(r.get("seconds"), (int, float))]
    left = total - done
    if not durations or left <= 0:
        return head
    workers = max(1, min(context.workers, left))
    mean = sum(durations) / len(durations)
    rounds = -(-left // workers)  # ceil: the last round runs as long as a whole job
    return (f"{head}; estimate: about {_minutes(mean * rounds)} left ({_minutes(mean)} per job, "
            f"{workers} at a time)")


def launcher_workers(launcher: Any, cpu_count: int | None = None) -> int:
    """How many jobs a Hydra launcher config runs at once: joblib's ``n_jobs`` (-1 = all
    cores), submitit's ``array_parallelism``, else 1 (the basic launcher runs them in turn)."""
    for key in ("n_jobs", "array_parallelism"):
        try:
            value = int(launcher.get(key))
        except Exception:  # noqa: BLE001 - absent or unresolvable: the estimate assumes 1 at a time
            continue
        if value:
            return max(1, value if value > 0 else (cpu_count or os.cpu_count() or 1) + 1 + value)
    return 1


@dataclass
class Sweep:
    """The parent run of one multirun, from its start to its end."""

    tracker: Tracker
    sweep_dir: Path
    name: str
    definition: dict[str, Any]
    planned: list[str] = field(default_factory=list)
    swept: frozenset[str] = frozenset()  # override keys that vary across jobs
    workers: int = 1  # jobs the launcher runs at once
    started: float = field(default_factory=time.time)
    run: Run | None = None
    verdict: list[str] = field(default_factory=list)  # the parent's description, in lines
    _stack: ExitStack = field(default_factory=ExitStack)
    _done: bool = False

    def start(self) -> None:
        self.run = self._stack.enter_context(self.tracker.run(self.name, tags={"sweep": "parent"}))
        self.run.log_params({"sweep.overrides": " ".join(self.definition.get("overrides", [])),
                             "sweep.num_jobs": len(self.planned) or "unknown"})
        self.run.log_text(json.dumps(self.definition, indent=2) + "\n", DEFINITION)
        SweepContext(self.run.run_id, self.swept, len(self.planned), self.workers).export()
        log.info("sweep of %s jobs -> %s", len(self.planned) or "?", self.sweep_dir)

    def record_shared_scores(self, report: dict[str, Any]) -> None:
        """What the shared-scores pre-pass did (searches, per job stored or why not), on the parent."""
        assert self.run is not None
        text = json.dumps(report, indent=2) + "\n"
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        (self.sweep_dir / SHARED_SCORES).write_text(redact_text(text))
        self.run.log_text(text, SHARED_SCORES)
        self.run.log_metrics([("seconds/shared_scores", float(report["seconds"]), None),
                              ("shared_scores/searches", float(report["searches"]), None)])

    def finish(self, error: BaseException | None = None) -> pd.DataFrame | None:
        """Summary table, counts and figures on the parent; ends it FINISHED, FAILED or KILLED.

        Idempotent: the multirun's end and the entry point's safety net may both call it.
        """
        if self._done:
            return None
        self._done = True
        SweepContext.clear()
        table = summary(read_statuses(self.sweep_dir), self.planned)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        (self.sweep_dir / f"{SUMMARY}.csv").write_text(redact_text(table.to_csv(index=False)))
        (self.sweep_dir / DEFINITION).write_text(
            redact_text(json.dumps(self.definition, indent=2) + "\n"))
        n = counts(table)
        if error is None and n["jobs_failed"]:
            error = JobsFailed(f"{int(n['jobs_failed'])} of {int(n['jobs'])} jobs failed")
        assert self.run is not None
        try:
            self.run.log_table(table, SUMMARY)
            self.run.log_metrics([(k, v, None) for k, v in n.items()])
            headline = self._log_comparison(table)
            self.verdict = verdict(n, headline)
            self.run.set_tags({"mlflow.note.content": "\n\n".join(self.verdict) + "\n"})
        finally:
            exc = error if isinstance(error, BaseException) else None
            self._stack.__exit__(type(exc) if exc else None, exc, exc.__traceback__ if exc else None)
        for row in table.itertuples():
            if row.status != "FINISHED":
                log.warning("job %s %s: %s", row.name, row.status, row.error or "")
        log.info("sweep: %d finished, %d failed, %d killed, %d not started; summary in %s",
                 n["jobs_finished"], n["jobs_failed"], n["jobs_killed"], n["jobs_not_started"],
                 self.sweep_dir / f"{SUMMARY}.csv")
        return table

    def _log_comparison(self, table: pd.DataFrame) -> list[str]:
        """The finished children compared (ranks, overlaps, share heatmaps), on the parent; returns
        the comparison's headline lines."""
        from . import compare, manifest

        docs = {}
        for row in table.itertuples():
            if row.status == "FINISHED" and isinstance(row.output_dir, str):
                try:
                    docs[str(row.name)] = manifest.load(manifest.find(Path(row.output_dir)))
                except Exception as e:  # noqa: BLE001 - a comparison is not worth failing a sweep
                    log.warning("%s is left out of the comparison: %s", row.name, e)
        if not docs or self.run is None:
            return []
        out = self.sweep_dir / "comparison"
        files = compare.sweep_figures(docs, out)
        headline = []
        if len(docs) > 1:  # the comparison has its own Spearman figure: keep one copy
            files = [f for f in files if f.name != compare.SWEEP_SPEARMAN_FIGURE]
            result = compare.compare(docs)
            files += compare.write_comparison(result, out)
            headline = compare.headline(result)
        self.run.log_files({f"comparison/{f.relative_to(out).as_posix()}": f for f in files})
        return headline


def verdict(n: dict[str, float], headline: list[str]) -> list[str]:
    """A sweep parent's description: how many jobs finished, then the comparison's headline."""
    jobs = (f"**{int(n['jobs_finished'])} of {int(n['jobs'])} jobs finished**"
            + "".join(f", {int(n[k])} {k.removeprefix('jobs_').replace('_', ' ')}"
                      for k in ("jobs_failed", "jobs_killed", "jobs_not_started") if n[k]) + ".")
    where = ("Children compared in `comparison/comparison.html`; per-job table `"
             f"{SUMMARY}.json`.")
    return [jobs, *headline, where]
