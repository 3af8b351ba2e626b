"""One lifecycle for every entry point that records a run.

validate -> open (or adopt) the run -> params -> execute (in named phases) -> metrics, tables,
tags, description, files -> end FINISHED / FAILED / KILLED, the job's log file attached either
way, the phase it stopped in tagged, and whoever asked (a sweep's status file) told how it ended.

Each entry point supplies a ``Task`` (torchtune's recipe protocol and lightning-hydra-template's
task wrapper are the models): what to validate, how the run is named, its params, the work, and
what the work's result logs. The policies live here once. No Hydra, no MLflow, no torch.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import pandas as pd

from ..errors import out_of_space
from ..phases import Phases
from ..tracking import Interrupted, Run, Tracker
from ..tracking.base import Metric, end_status, error_text

log = logging.getLogger(__name__)

R = TypeVar("R")
NOTE_TAG = "mlflow.note.content"  # the run's description (MLflow's name for it)
PHASE_TAG = "error.phase"  # where a FAILED or KILLED run stopped


@dataclass
class RunSpec:
    """How the run is opened: its name, parent, tags and first description."""

    name: str
    parent_id: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    description: str | None = None


@dataclass
class Outputs:
    """What a finished task's result logs, in this order."""

    params: Mapping[str, Any] = field(default_factory=dict)  # known only once it ran
    metrics: list[Metric] = field(default_factory=list)
    tables: Mapping[str, pd.DataFrame] = field(default_factory=dict)  # stem -> .csv + .json
    tags: Mapping[str, str] = field(default_factory=dict)
    description: str | None = None  # replaces the run's description
    files: Mapping[str, Path] = field(default_factory=dict)  # artifact path -> local file


class Task(ABC, Generic[R]):
    """One analysis as a tracked run (override what it needs; the rest has defaults).

    ``validate`` checks every input (raising ``UserError``) without loading a model or writing
    anything; ``spec`` names the run; ``params`` are logged first; ``execute`` does the work in
    named phases, logging what must be there even if it fails (a config file, the data used);
    ``outputs`` says what its result logs; ``workspace`` wraps execute and logging (e.g. a staging
    directory renamed into place only once everything is logged)."""

    def validate(self) -> None:
        return None

    @abstractmethod
    def spec(self) -> RunSpec: ...

    def params(self) -> Mapping[str, Any]:
        return {}

    @abstractmethod
    def execute(self, run: Run, phases: Phases) -> R: ...

    def outputs(self, result: R) -> Outputs:
        return Outputs()

    def workspace(self) -> AbstractContextManager[Any]:
        return nullcontext()


@dataclass
class Ended:
    """How a tracked task ended, for whoever keeps a record (a sweep's job status)."""

    run_id: str | None
    status: str  # FINISHED, FAILED or KILLED
    error: str | None = None  # error.txt's text
    phase: str = ""
    result: Any = None


@dataclass
class Tracked(Generic[R]):
    result: R
    run_id: str | None
    seconds: dict[str, float]


def run_task(task: Task[R], tracker: Tracker, *, validate_in_run: bool = False,
             log_file: Path | None = None, on_end: Callable[[Ended], None] | None = None,
             out_of_space_what: str = "the outputs") -> Tracked[R]:
    """Run ``task`` as one run of ``tracker``.

    Bad input leaves no run: ``validate`` runs before the run opens, except with
    ``validate_in_run`` (a sweep's job: a bad combination is a FAILED child with ``error.txt``,
    its params logged so the sweep's table shows which). ``on_end`` hears how it ended, however
    it ended, once the run is closed.
    """
    phases = Phases()
    ended = Ended(None, "FINISHED")
    try:
        if not validate_in_run:
            task.validate()
        spec = task.spec()
        with tracker.run(spec.name, parent_id=spec.parent_id, tags=spec.tags,
                         description=spec.description) as run:
            ended.run_id = run.run_id
            try:
                run.log_params(task.params())  # before validating: a bad sweep job shows which
                if validate_in_run:
                    phases.current = "validate"
                    task.validate()
                with task.workspace():
                    result = task.execute(run, phases)
                    phases.current = "logging"
                    _log_outputs(run, task.outputs(result))
            except BaseException as e:
                _tag_phase(run, phases.current)
                if isinstance(e, Interrupted) and not e.where:
                    e.where = phases.current
                if isinstance(e, OSError):  # a full disk or read-only target: one paragraph
                    clean = out_of_space(e, out_of_space_what)
                    if clean is not None:
                        raise clean from None
                raise
            finally:
                if log_file is not None and log_file.is_file():
                    with suppress(Exception):  # partial logs of a failed run help; never mask it
                        run.log_files({log_file.name: log_file})
        if run.run_id:
            log.info("run %s (%s) in %s", run.run_id, spec.name, tracker.where)
        ended.result = result
        return Tracked(result, run.run_id, dict(phases.seconds))
    except BaseException as e:
        ended.status, ended.error, ended.phase = end_status(e), error_text(e), phases.current
        raise
    finally:
        if on_end is not None:
            on_end(ended)


def _log_outputs(run: Run, out: Outputs) -> None:
    if out.params:
        run.log_params(out.params)
    if out.metrics:
        run.log_metrics(out.metrics)
    for stem, df in out.tables.items():
        run.log_table(df, stem)
    tags = dict(out.tags) | ({NOTE_TAG: out.description} if out.description else {})
    if tags:
        run.set_tags(tags)
    if out.files:
        run.log_files(out.files)


def _tag_phase(run: Run, phase: str) -> None:
    if phase:
        with suppress(Exception):  # never hide the task's own error behind a logging one
            run.set_tags({PHASE_TAG: phase})


def seconds_metrics(seconds: Mapping[str, float]) -> list[Metric]:
    """``seconds/<phase>``: each phase's wall time."""
    return [(f"seconds/{k}", float(v), None) for k, v in seconds.items()]
