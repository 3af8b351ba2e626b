"""What the Hydra app learns while it runs, in one place.

``@hydra.main`` and Hydra's callbacks return nothing to the code that called the app, yet its
failure policy needs to know: did a job start (else a non-zero exit is Hydra's compose error,
exit 2), which sweep is open in this process (its parent run must end however the app ends), and
the models and batches the basic launcher's in-process jobs share. Hydra creates the callback and
calls the task itself, so this state lives on one module-level object, ``APP``, and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import sweep
from ..reuse import Resources


@dataclass
class AppState:
    task_started: bool = False  # Hydra called the task function in this process
    sweep: sweep.Sweep | None = None  # the multirun this process started, until it ends
    # Hydra's -m with the basic launcher runs every job in this process: share models, batches.
    resources: Resources = field(default_factory=lambda: Resources(keep=True))

    def jobs_started(self) -> bool:
        """Whether a job of this process's sweep recorded its end, whichever process ran it (the
        basic launcher runs jobs here, joblib and submitit in other processes)."""
        return self.sweep is not None and any(self.sweep.sweep_dir.glob(f"*/{sweep.STATUS_FILE}"))

    def nothing_ran(self) -> bool:
        """Hydra stopped before any job: its configuration did not compose."""
        return not self.task_started and not self.jobs_started()


APP = AppState()
