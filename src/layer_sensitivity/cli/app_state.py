"""What the Hydra app learns while it runs, in one place.

``@hydra.main`` and Hydra's callbacks return nothing to the code that called the app, yet its
failure policy needs to know: did Hydra stop because the configuration does not compose (exit 2),
which sweep is open in this process (its parent run must end however the app ends), and the
models and batches the basic launcher's in-process jobs share. Hydra creates the callback and
calls the task itself, so this state lives on one module-level object, ``APP``, and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.errors import ConfigCompositionException, OverrideParseException, SearchPathException

from .. import sweep
from ..reuse import Resources

# What Hydra raises when a configuration does not compose: an unknown config group option
# (``MissingConfigException``, a ``ConfigCompositionException``), a value the typed schema
# refuses or a key that is not there (``ConfigCompositionException``), an override it cannot
# parse, a ``--config-dir`` that does not exist.
COMPOSE_ERRORS = (ConfigCompositionException, OverrideParseException, SearchPathException)


@dataclass
class AppState:
    sweep: sweep.Sweep | None = None  # the multirun this process started, until it ends
    # Hydra's -m with the basic launcher runs every job in this process: share models, batches.
    resources: Resources = field(default_factory=lambda: Resources(keep=True))


def compose_error(stop: SystemExit) -> Exception | None:
    """The compose error Hydra reported when it ended the app with ``stop``, else None.

    Hydra's ``run_and_report`` prints the exception that ended the app and calls ``sys.exit(1)``
    inside its ``except`` block, so the ``SystemExit`` carries that exception as its context:
    a compose error (the primary config, or a sweep job's config, which the basic sweeper
    composes in this process before it launches any job, whatever the launcher) versus a job's
    own exception, which Hydra re-raises after the job ran.
    """
    reported = stop.__context__
    return reported if isinstance(reported, COMPOSE_ERRORS) else None


APP = AppState()
