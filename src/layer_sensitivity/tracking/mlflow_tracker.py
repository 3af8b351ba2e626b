"""The MLflow implementation of the tracking interface (client API, explicit run ids).

Explicit run ids instead of MLflow's active-run stack: a job can nest under a sweep's parent in
any launcher's worker, and nothing depends on which run happens to be active in the process.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import mlflow
import mlflow.data.pandas_dataset
import pandas as pd
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from .. import signals
from ..console import quiet_loggers
from ..errors import ReportedError
from ..redact import redact_text
from . import experiments, stale, store, uris
from .base import ERROR_ARTIFACT, Interrupted, end_status, error_text

quiet_loggers()  # after MLflow set up its loggers

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
NAME_TAG = "mlflow.runName"
NOTE_TAG = "mlflow.note.content"
MAX_METRICS, MAX_PARAMS, MAX_TAGS = 1000, 100, 100  # MLflow's log_batch limits
PARAM_VALUE_LIMIT = 6000
DATASET_ATTEMPTS = 5


def _lost_insert_race(e: Exception) -> bool:
    """MLflow's wrapping of SQLAlchemy's unique-constraint error (SQLite and PostgreSQL words)."""
    text = str(e)
    return "IntegrityError" in text or "UNIQUE constraint" in text or "duplicate key" in text


def _first_words(e: BaseException) -> str:
    """``API request to <url> failed`` without urllib3's nested exception reprs."""
    text = redact_text(str(e)).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text.split(" with exception")[0][:200]


def upload(client: MlflowClient, run_id: str, files: Mapping[str, Path]) -> None:
    """Local files to a run at the given artifact paths (the one upload path of the project)."""
    for artifact_path, local in files.items():
        folder = Path(artifact_path).parent.as_posix()
        if Path(artifact_path).name != Path(local).name:
            raise ValueError(f"{local} cannot be logged as {artifact_path}: names differ")
        client.log_artifact(run_id, str(local), None if folder == "." else folder)


class TrackingServerGone(ReportedError):
    """The tracking server stopped answering mid-run: one paragraph, exit 1."""


class MlflowRun:
    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client, self.run_id = client, run_id
        # Params `mlflow run` already logged (its -P values): MLflow refuses to change them.
        self.preset = set(client.get_run(run_id).data.params)

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [Param(k, redact_text("" if v is None else str(v))[:PARAM_VALUE_LIMIT])
                 for k, v in params.items() if k not in self.preset]
        for i in range(0, len(items), MAX_PARAMS):
            self.client.log_batch(self.run_id, params=items[i:i + MAX_PARAMS])

    def log_metrics(self, metrics: Iterable[tuple[str, float, int | None]]) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v, step in metrics]
        for i in range(0, len(items), MAX_METRICS):
            self.client.log_batch(self.run_id, metrics=items[i:i + MAX_METRICS])

    def log_files(self, files: Mapping[str, Path]) -> None:
        upload(self.client, self.run_id, files)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, redact_text(text), artifact_file)

    def log_table(self, df: pd.DataFrame, stem: str) -> None:
        """A table as ``<stem>.csv`` and ``<stem>.json`` (MLflow's table view)."""
        self.client.log_text(self.run_id, redact_text(df.to_csv(index=False)), f"{stem}.csv")
        self.client.log_table(self.run_id, df, artifact_file=f"{stem}.json")

    def set_tags(self, tags: Mapping[str, str]) -> None:
        items = [RunTag(k, redact_text(str(v))) for k, v in tags.items()]
        for i in range(0, len(items), MAX_TAGS):
            self.client.log_batch(self.run_id, tags=items[i:i + MAX_TAGS])

    def log_dataset(self, lines: list[str], source: str, name: str, digest: str) -> None:
        """The calibration captions as an MLflow dataset input (digest = sha256 of those used)."""
        ds = mlflow.data.pandas_dataset.from_pandas(pd.DataFrame({"caption": list(lines)}),
                                                    source=source, name=name, digest=digest[:36])
        entry = DatasetInput(ds._to_mlflow_entity(),
                             tags=[InputTag("mlflow.data.context", "calibration")])
        # Two jobs of one experiment logging the same captions at once race in MLflow's
        # get-or-insert of the dataset row: the loser's insert breaks the unique constraint (its
        # transaction rolls back, nothing half-written). Its next try finds the winner's row.
        for attempt in range(DATASET_ATTEMPTS):
            try:
                self.client.log_inputs(self.run_id, datasets=[entry])
                return
            except mlflow.exceptions.MlflowException as e:
                if attempt == DATASET_ATTEMPTS - 1 or not _lost_insert_race(e):
                    raise
                log.debug("Dataset %r inserted by another job meanwhile; retrying", name)
                time.sleep(0.05 * 2**attempt)

    def log_model(self, name: str, directory: Path, *, params: Mapping[str, Any],
                  metrics: Mapping[str, float], tags: Mapping[str, str] | None = None,
                  register_as: str | None = None, source_run_id: str | None = None) -> str | None:
        """An MLflow 3 logged model holding ``directory``, linked to ``source_run_id`` (default:
        this run), with params, and metrics logged by this run for it; READY once its files are
        stored, FAILED otherwise."""
        run = self.client.get_run(self.run_id)
        model = self.client.create_logged_model(
            run.info.experiment_id, name=name, source_run_id=source_run_id or self.run_id,
            params={k: redact_text("" if v is None else str(v))[:PARAM_VALUE_LIMIT]
                    for k, v in params.items()},
            tags={k: redact_text(str(v)) for k, v in (tags or {}).items()},
            model_type="quantized-hf-checkpoint")
        try:
            self.client.log_model_artifacts(model.model_id, str(directory))
            now = int(time.time() * 1000)
            for key, value in metrics.items():
                self.client.log_metric(self.run_id, key, float(value), timestamp=now,
                                       model_id=model.model_id)
        except BaseException:
            with suppress(Exception):
                self.client.finalize_logged_model(model.model_id, "FAILED")
            raise
        self.client.finalize_logged_model(model.model_id, "READY")
        if register_as:
            with suppress(mlflow.exceptions.MlflowException):  # already registered: add a version
                self.client.create_registered_model(register_as)
            self.client.create_model_version(register_as, source=f"models:/{model.model_id}",
                                             run_id=self.run_id, model_id=model.model_id)
        return str(model.model_id)


class MlflowTracker:
    """Runs in one MLflow store and experiment.

    - ``parent_id``: a new child nested under that run, in the parent's experiment.
    - Else the run ``mlflow run`` created (``MLFLOW_RUN_ID``), renamed to ``name``; used once.
      It stays in the experiment ``mlflow run`` chose (``--experiment-name``).
    - Else a new run in the experiment: ``MLFLOW_EXPERIMENT_NAME`` when set, else ``experiment``.
    """

    enabled = True

    def __init__(self, uri: str, experiment: str, system_metrics: bool = True) -> None:
        self.uri = uri
        self.where = redact_text(uri)
        self.experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or experiment
        self.system_metrics = system_metrics
        # MLflow prints "View run ... at <tracking URI>" with any password in it: not here.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        store.prepare_store(uri)
        self.client = MlflowClient(tracking_uri=uri)

    def _experiment_id(self) -> str:
        return experiments.get_or_create_experiment(
            self.experiment, uris.artifacts_beside_store(self.uri, self.experiment),
            client=self.client)

    def _start(self, name: str, parent_id: str | None, tags: dict[str, str]) -> str:
        launched = os.environ.pop("MLFLOW_RUN_ID", None)  # mlflow run's run: used once
        if launched:
            return self._adopt(launched, name, parent_id, tags)
        if parent_id:
            parent = self.client.get_run(parent_id)
            run = self.client.create_run(parent.info.experiment_id, run_name=name,
                                         tags=tags | {PARENT_TAG: parent_id})
            return run.info.run_id
        return self.client.create_run(self._experiment_id(), run_name=name, tags=tags).info.run_id

    def _adopt(self, run_id: str, name: str, parent_id: str | None, tags: dict[str, str]) -> str:
        """The run ``mlflow run`` created, renamed to ``name`` (and nested under ``parent_id``),
        where ``mlflow run`` put it: the run id it prints is the run that holds the work (no
        pointer runs). Without ``--experiment-name`` that is MLflow's "Default" experiment: a
        warning says how to keep runs together.
        """
        run = self.client.get_run(run_id)
        leaked = [k for k, v in run.data.params.items() if redact_text(v) != v]
        if leaked:  # MLflow logged the -P values itself, before this process could move them
            log.warning("`mlflow run` recorded the -P value(s) %s with a credential in it on run "
                        "%s. Pass credentials as MLFLOW_TRACKING_USERNAME / "
                        "MLFLOW_TRACKING_PASSWORD (servers) or PGPASSWORD (PostgreSQL) in the "
                        "environment instead, and delete that run.", ", ".join(leaked), run_id)
        wanted = (self.client.get_run(parent_id).info.experiment_id if parent_id
                  else self._experiment_id())
        if run.info.experiment_id != wanted:
            chosen = self.client.get_experiment(run.info.experiment_id).name
            log.warning("`mlflow run` put this run in experiment '%s', not '%s'%s; pass "
                        "--experiment-name %s to `mlflow run` to keep runs together.", chosen,
                        self.experiment, ", so it cannot nest under its parent" if parent_id else "",
                        self.experiment)
        elif parent_id:
            tags = tags | {PARENT_TAG: parent_id}
        self.client.update_run(run_id, name=name)
        MlflowRun(self.client, run_id).set_tags(tags)
        return run_id

    @contextmanager
    def run(self, name: str, *, parent_id: str | None = None, tags: Mapping[str, str] | None = None,
            description: str | None = None) -> Iterator[MlflowRun]:
        all_tags = (dict(tags or {}) | ({NOTE_TAG: description} if description else {})
                    | stale.process_tags())
        name = redact_text(name)  # names are built from overrides, which may hold a URI
        run = MlflowRun(self.client, self._start(name, parent_id, all_tags))
        self._end_stale_runs(run)
        monitor = self._monitor(run.run_id)
        error: BaseException | None = None
        try:
            yield run
        except BaseException as e:
            error = e
            if uris.server_gone(self.uri, e):
                error = TrackingServerGone(
                    f"The tracking server {self.where} stopped answering while run "
                    f"{run.run_id} was logging ({_first_words(e)}). "
                    "Outputs written so far stay in the job's output directory; the run stays "
                    "RUNNING on the server until the next job in its experiment ends it KILLED. "
                    "Restart the server and run the job again.")
                raise error from None
            raise
        finally:
            # A signal while the run ends is held until it has ended (KILLED if it came before
            # the status was set), then raised: an exception here would leave the run RUNNING.
            with signals.deferred() as pending:
                if monitor is not None:
                    try:
                        monitor.finish()
                    except Exception as e:  # noqa: BLE001 - system metrics are optional
                        log.info("system metrics did not stop cleanly: %s", e)
                stopped = Interrupted(pending[0], "the end of the run") if pending else None
                ending = error if error is not None else stopped
                self._end(run, ending)
            if pending and not isinstance(error, KeyboardInterrupt):
                raise Interrupted(pending[0], "the end of the run")

    def _end(self, run: MlflowRun, error: BaseException | None) -> None:
        status = end_status(error)
        if error is not None and not isinstance(error, SystemExit):
            with suppress(Exception):  # never hide the job's own error behind a logging one
                run.log_text(error_text(error), ERROR_ARTIFACT)
        if error is None:
            self.client.set_terminated(run.run_id, status)
        else:
            with suppress(Exception):
                self.client.set_terminated(run.run_id, status)

    def _end_stale_runs(self, run: MlflowRun) -> None:
        """Runs of this host left RUNNING by a killed process end KILLED (see ``stale``)."""
        try:
            experiment_id = self.client.get_run(run.run_id).info.experiment_id
            stale.end_stale_runs(self.client, experiment_id, run.run_id)
        except Exception as e:  # noqa: BLE001 - housekeeping never fails a job
            log.info("could not look for stale runs: %s", e)

    def _monitor(self, run_id: str) -> Any:
        if not self.system_metrics:
            return None
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(run_id, sampling_interval=2, samples_before_logging=1,
                                           tracking_uri=self.uri)
            monitor.start()
            return monitor
        except Exception as e:  # noqa: BLE001 - system metrics are optional
            log.info("system metrics off: %s", e)
            return None


# Run by a detached interpreter: wait for the `mlflow run` launcher to exit (it ends its run
# FAILED first), then delete that run. Deleting it earlier makes the launcher fail with a
# traceback (MLflow 3.17 re-terminates a run it finds terminated, and a deleted run refuses that).
_DELETE_AFTER_LAUNCHER = """
import sys, psutil, mlflow
pid, run_id = int(sys.argv[1]), sys.argv[2]
try:
    psutil.Process(pid).wait(timeout=120)
except psutil.NoSuchProcess:
    pass
mlflow.MlflowClient().delete_run(run_id)
"""


def discard_launched_run(message: str) -> bool:
    """The run ``mlflow run`` created for a command that refused its input before logging
    anything: named and described by the refusal (never an empty run), then deleted once the
    launcher has exited, so bad input leaves no run. True when a deletion was arranged; only an
    untouched run (RUNNING, no metrics, no artifacts) is touched."""
    import subprocess
    import sys

    run_id = os.environ.pop("MLFLOW_RUN_ID", None)
    if not run_id:
        return False
    try:
        client = MlflowClient()
        run = client.get_run(run_id)
        if run.data.metrics or run.info.status != "RUNNING" or client.list_artifacts(run_id):
            return False
        client.update_run(run_id, name="refused: bad input")
        client.set_tag(run_id, NOTE_TAG, redact_text(message))
        import psutil

        launcher = next((p for p in psutil.Process().parents()
                         if "mlflow" in " ".join(p.cmdline()) and "run" in p.cmdline()), None)
        if launcher is None:
            return False
        subprocess.Popen([sys.executable, "-c", _DELETE_AFTER_LAUNCHER, str(launcher.pid), run_id],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
        return True
    except Exception as e:  # noqa: BLE001 - the user's error message matters more than cleanup
        log.debug("could not discard the launched run %s: %s", run_id, e)
        return False
