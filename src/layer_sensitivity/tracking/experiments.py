"""An MLflow experiment by name, got or created race-free, so a run always lands in the
experiment asked for (``artifacts_beside_store`` gives a SQLite store's experiments their
artifact directory beside the database)."""

from __future__ import annotations

import logging
import time

import mlflow
from mlflow.exceptions import MlflowException

from ..errors import UserError
from ..redact import redact_uri

logger = logging.getLogger(__name__)

_EXPERIMENT_ATTEMPTS = 8


def get_or_create_experiment(name: str, artifact_location: str | None = None, *,
                             client: mlflow.MlflowClient | None = None,
                             tracking_uri: str | None = None) -> str:
    """The id of the active experiment called ``name``, created if missing.

    Race-free: when another process creates it between our look-up and our create, the create
    fails and the next look-up finds theirs. ``artifact_location`` applies only when this call
    creates the experiment (see ``artifacts_beside_store``). Talks to the store through
    ``client``, else a client for ``tracking_uri``, else for the current tracking URI.
    """
    if not name.strip():
        raise UserError("tracking.experiment is empty. Name the MLflow experiment, e.g. "
                        "tracking.experiment=qwen3-vl-layer-sensitivity.")
    client = client or mlflow.MlflowClient(tracking_uri=tracking_uri)
    error: MlflowException | None = None
    for attempt in range(_EXPERIMENT_ATTEMPTS):
        try:
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                return str(client.create_experiment(name, artifact_location=artifact_location))
        except MlflowException as e:  # most often: another process created it since our look-up
            if e.error_code == "INVALID_PARAMETER_VALUE":  # the name or location itself is bad
                raise UserError(f"Cannot create the MLflow experiment '{name}' "
                                f"(artifact location {artifact_location!r}): {_first_line(e)}. Fix "
                                "tracking.experiment or the artifact location.") from None
            error = e
            logger.debug("Get-or-create of experiment %r failed (%s); retrying", name, e.error_code)
            time.sleep(0.05 * 2**attempt)
            continue
        if experiment.lifecycle_stage == "deleted":
            raise UserError(
                f"The MLflow experiment '{name}' is deleted (id {experiment.experiment_id}). "
                f"Restore it (mlflow experiments restore --experiment-id {experiment.experiment_id}) "
                "or choose another tracking.experiment."
            )
        return str(experiment.experiment_id)
    raise UserError(
        f"Could not get or create the MLflow experiment '{name}' in {redact_uri(client.tracking_uri)} "
        f"after {_EXPERIMENT_ATTEMPTS} attempts ({_first_line(error) if error else 'unknown error'}). "
        "Check that the tracking store is reachable and writable."
    )


def _first_line(e: BaseException) -> str:
    text = e.message if isinstance(e, MlflowException) else str(e)
    return redact_uri((text or type(e).__name__).strip().splitlines()[0])
