"""``cli/app_state``: whether Hydra got as far as a job (else its exit is a compose error)."""

from __future__ import annotations

from pathlib import Path

from layer_sensitivity import sweep
from layer_sensitivity.cli.app_state import AppState
from layer_sensitivity.tracking import NoopTracker


def _sweep(tmp_path: Path) -> sweep.Sweep:
    return sweep.Sweep(NoopTracker(), tmp_path, "sweep", {"overrides": []}, ["a=1", "a=2"])


def test_nothing_ran_until_a_task_or_a_sweep_job_did(tmp_path: Path) -> None:
    state = AppState()
    assert state.nothing_ran()
    state.sweep = _sweep(tmp_path)
    assert state.nothing_ran()  # a sweep that started no job: its jobs did not compose
    sweep.write_status(tmp_path / "0", num=0, name="a=1", overrides=["a=1"], status="FAILED",
                       run_id=None)  # a job in any process (joblib, submitit) leaves this
    assert state.jobs_started() and not state.nothing_ran()


def test_a_task_in_this_process_is_a_job_that_ran() -> None:
    state = AppState(task_started=True)
    assert not state.nothing_ran()


def test_each_app_state_has_its_own_resources() -> None:
    assert AppState().resources is not AppState().resources
