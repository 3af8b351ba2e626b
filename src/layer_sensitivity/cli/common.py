"""What every entry point shares: one failure policy, signals, logging, config flattening."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from .. import paths, signals
from ..console import quiet_third_party
from ..errors import ReportedError, UserError
from ..redact import RedactingFilter, redact_text

log = logging.getLogger(__name__)


def check_out_dir(path: Path, option: str) -> None:
    """An output directory that can be made: no file on its way, its nearest existing directory
    writable (checked before any run or folder exists)."""
    path = Path(path).absolute()
    blocker = next((p for p in [path, *path.parents] if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UserError(f"{option}={path} cannot be created: '{blocker}' is a file, not a "
                        f"directory. Set {option} to a directory path, or move the file away.")
    existing = paths.nearest_existing(path)
    why = paths.write_failure(existing)
    if why is not None:
        raise UserError(f"{option}={path} cannot be written: nothing can be created in "
                        f"'{existing}' ({why}). Set {option} to a writable directory.")


def check_input_file(path: Path, option: str) -> None:
    """A file the command reads: present, a file, readable."""
    path = Path(path)
    what = ("does not exist" if not path.exists() else "is a directory" if path.is_dir()
            else "is not readable" if not os.access(path, os.R_OK) else "")
    if what:
        raise UserError(f"{option}={path} {what}. Set {option} to a readable UTF-8 text file.")


def check_positive(value: int | None, option: str) -> None:
    if value is not None and value <= 0:
        raise UserError(f"{option}={value} must be a positive integer (or left out for all).")


def fail(message: str, code: int = 2) -> None:
    """One paragraph on stderr, no traceback; under ``mlflow run`` its still-empty run is deleted
    (bad input leaves no run)."""
    print(f"error: {redact_text(message)}", file=sys.stderr, flush=True)
    from ..tracking import discard_launched_run

    discard_launched_run(message)
    sys.exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """A UserError becomes one paragraph on stderr and exit status 2; an interruption exits
    128 + its signal (130 for SIGINT, 143 for SIGTERM) after whatever was running recorded it."""
    try:
        yield
    except UserError as e:
        fail(str(e))
    except ReportedError as e:  # e.g. the tracking server went away: its message says it all
        fail(str(e), 1)
    except KeyboardInterrupt as e:
        if signals.is_main_thread():  # a second Ctrl-C must not cut the exit short (exit -2)
            for sig in signals.STOP_SIGNALS:
                signal.signal(sig, signal.SIG_IGN)
        signum = getattr(e, "signum", signal.SIGINT)
        print(f"interrupted ({signal.Signals(signum).name})", file=sys.stderr, flush=True)
        sys.exit(128 + signum)
    except Exception:  # a bug: the traceback, without credentials (MLflow errors hold URLs)
        print(redact_text(traceback.format_exc()), file=sys.stderr, flush=True)
        sys.exit(1)


def install_signal_handlers() -> None:
    """SIGINT and SIGTERM raise ``Interrupted`` in the main thread, so every open run ends KILLED
    with what it has (Python's default SIGTERM would end the process with runs left RUNNING)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in signals.STOP_SIGNALS:
        signal.signal(sig, signals.raise_interrupted)
    signals.redeliver_swallowed()  # e.g. raised inside a weakref callback, which cannot propagate
    _watch_mlflow_run_launcher()


def _watch_mlflow_run_launcher() -> None:
    """Under ``mlflow run``, stop when the launcher dies: MLflow does not pass SIGTERM on to the
    command it started, which would otherwise run on orphaned."""
    if not os.environ.get("MLFLOW_RUN_ID"):
        return
    try:
        import psutil

        launcher = next((p for p in psutil.Process().parents()
                         if "mlflow" in " ".join(p.cmdline()) and "run" in p.cmdline()), None)
    except Exception:  # noqa: BLE001 - best effort: no psutil, no permission
        return
    if launcher is None:
        return

    def watch() -> None:
        launcher.wait()  # returns when the launcher exits, however it ends
        log.warning("the `mlflow run` launcher (pid %d) exited; stopping this job", launcher.pid)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="mlflow-run-watch", daemon=True).start()


def redact_logging() -> None:
    """Every log handler configured so far (Hydra's console and job file) drops secrets."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


def setup_plain_logging() -> None:
    """For entry points without Hydra: INFO lines on stderr, secrets redacted, known third-party
    noise filtered (``console.quiet_third_party``)."""
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    redact_logging()
    quiet_third_party()


def flatten(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as dotted keys (lists and dicts rendered as text)."""
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    flat = pd.json_normalize(container, sep=".").iloc[0].to_dict()
    return {k: (v if isinstance(v, (str, int, float, bool)) or v is None else str(v))
            for k, v in flat.items()}


def expand_packed_overrides(argv: list[str]) -> list[str]:
    """``--overrides "a=1 b=2"`` (how MLproject passes extra overrides) -> ``a=1 b=2``."""
    out, it = [], iter(argv)
    for arg in it:
        if arg == "--overrides":
            out += shlex.split(next(it, ""))
        elif arg.startswith("--overrides="):
            out += shlex.split(arg.removeprefix("--overrides="))
        else:
            out.append(arg)
    return out
