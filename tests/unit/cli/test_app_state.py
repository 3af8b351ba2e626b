"""``cli/app_state``: a compose error is known by the exception Hydra reported, not by an exit
code (each case runs real Hydra in this process)."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import pytest
from hydra.errors import ConfigCompositionException, OverrideParseException
from omegaconf import DictConfig

from layer_sensitivity.cli import sensitivity
from layer_sensitivity.cli.app_state import AppState, compose_error

QUIET = ["hydra/job_logging=none", "hydra/hydra_logging=none"]


@hydra.main(version_base="1.3", config_path=None)
def _app(cfg: DictConfig) -> None:
    raise RuntimeError("the job itself failed")


def _stop(monkeypatch: pytest.MonkeyPatch, app: object, *args: str) -> SystemExit:
    """Run a Hydra app with these overrides; the ``SystemExit`` it ended with."""
    monkeypatch.setattr(sys, "argv", ["app", *args, *QUIET])
    with pytest.raises(SystemExit) as stop:
        app()  # type: ignore[operator]
    return stop.value


@pytest.mark.parametrize(("override", "kind"), [
    ("missing.key=1", ConfigCompositionException),  # no such key (append needs `+`)
    ("key=[", OverrideParseException),              # not an override
])
def test_hydra_compose_errors_are_recognised(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                             override: str, kind: type) -> None:
    stop = _stop(monkeypatch, _app, override, f"hydra.run.dir={tmp_path}/run")
    assert stop.code == 1 and isinstance(compose_error(stop), kind)
    assert not (tmp_path / "run").exists()  # Hydra stopped before the job


def test_a_failing_job_exits_1_too_but_is_no_compose_error(monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    stop = _stop(monkeypatch, _app, f"hydra.run.dir={tmp_path}/run")
    assert stop.code == 1 and compose_error(stop) is None
    assert isinstance(stop.__context__, RuntimeError)  # what Hydra reported: the job's error


def test_a_value_the_schema_refuses_is_a_compose_error_of_the_app(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    stop = _stop(monkeypatch, sensitivity._hydra_main, "autoquant.batch_size=abc",
                 f"hydra.run.dir={tmp_path}/run")
    assert "autoquant.batch_size=abc" in str(compose_error(stop))
    assert not (tmp_path / "run").exists()


def test_a_plain_exit_is_no_compose_error() -> None:
    assert compose_error(SystemExit(1)) is None
    assert compose_error(SystemExit(2)) is None


def test_each_app_state_has_its_own_resources() -> None:
    assert AppState().resources is not AppState().resources
