"""Signals become ``Interrupted`` where it cannot be lost: not inside a finalizer, not while a run
ends (the run then ends KILLED before the interruption goes on)."""

from __future__ import annotations

import os
import signal
import sys
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from layer_sensitivity import signals
from layer_sensitivity.tracking import Interrupted
from layer_sensitivity.tracking.mlflow_tracker import MlflowTracker


@pytest.fixture
def handlers() -> Iterator[None]:
    previous = {sig: signal.signal(sig, signals.raise_interrupted) for sig in signals.STOP_SIGNALS}
    yield
    for sig, handler in previous.items():
        signal.signal(sig, handler)


class _SignalsInFinalizer:
    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs here, inside __del__


def test_a_signal_inside_a_finalizer_is_raised_after_it(handlers: None) -> None:
    with pytest.raises(Interrupted) as info:
        _SignalsInFinalizer()  # dropped at once: __del__ runs now
        time.sleep(2)  # without the retry the interruption is "ignored in __del__" and lost
    assert info.value.signum == signal.SIGINT


def test_signals_are_recorded_while_deferred(handlers: None) -> None:
    with signals.deferred() as pending:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
    assert pending == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) is signals.raise_interrupted


class _MonitorStoppedBySigterm:
    def finish(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)


def test_sigterm_while_system_metrics_stop_ends_the_run_killed(
        handlers: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(uri, "signals", system_metrics=False)
    monkeypatch.setattr(tracker, "_monitor", lambda run_id: _MonitorStoppedBySigterm())
    with pytest.raises(Interrupted) as info:
        with tracker.run("job") as run:
            run.log_params({"x": 1})
    assert info.value.signum == signal.SIGTERM
    client = mlflow.MlflowClient(uri)
    ended = client.get_run(run.run_id)
    assert ended.info.status == "KILLED"
    assert "error.txt" in {a.path for a in client.list_artifacts(run.run_id)}


def test_an_interrupt_python_had_to_drop_is_delivered_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Raised inside a weakref callback (seen: ThreadPoolExecutor's, during `import torch`), an
    Interrupted cannot propagate: Python reports it as unraisable and goes on. It comes back."""
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # restored after the test
    previous = signal.signal(signal.SIGTERM, signals.raise_interrupted)
    try:
        signals.redeliver_swallowed()

        class Thing:
            pass

        def callback(_: object) -> None:
            raise Interrupted(signal.SIGTERM)

        thing = Thing()
        ref = weakref.ref(thing, callback)
        with pytest.raises(Interrupted) as info:
            del thing  # the callback runs here; Python drops its exception...
            time.sleep(5)  # ...and the signal is delivered again within RETRY_S
        assert info.value.signum == signal.SIGTERM and ref() is None
    finally:
        signal.signal(signal.SIGTERM, previous)
