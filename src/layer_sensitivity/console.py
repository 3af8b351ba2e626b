"""A quiet command line: known third-party noise filtered by name, progress bars only on a
terminal, ModelOpt's prints kept out of stdout, and "did you mean" for typos. No Hydra, no MLflow.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import logging
import os
import sys
import warnings
from collections.abc import Iterable, Iterator

# Third-party warnings every job would print, each named (never a blanket filter): what they say
# is either known and handled here, or not actionable for a user of this project.
KNOWN_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # modelopt at import: the transformers release is newer than the ones it was tested with
    (r"transformers .* is not tested with current version of modelopt", UserWarning),
    # modelopt's auto_quantize turns on gradient checkpointing on HF models (we score, not train)
    (r"AutoQuantize: Huggingface model detected - Enabling gradient checkpointing", UserWarning),
    # transformers: modelopt still calls the old name
    (r"`gradient_checkpointing_enable` is deprecated", FutureWarning),
    # mlflow: a local captions path matches two equivalent dataset source types
    (r"The specified dataset source can be interpreted in multiple ways", UserWarning),
)
# MLflow's INFO lines about its own housekeeping (store migration, system-metrics thread).
QUIET_LOGGERS = ("mlflow.store.db.utils", "mlflow.system_metrics", "alembic")
PROGRESS_ENV = "TQDM_DISABLE"  # tqdm (transformers, modelopt) reads its defaults from TQDM_*


def quiet_third_party() -> None:
    """Install the named warning filters, lower MLflow's housekeeping loggers to WARNING, and turn
    progress bars off when stderr is not a terminal (a log file gets no bar redraws; the
    pipeline's phase lines and the sweep's ``N of M jobs done`` lines say how far it is)."""
    for message, category in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    quiet_loggers()
    if not _on_terminal():
        os.environ.setdefault(PROGRESS_ENV, "1")


def quiet_loggers() -> None:
    """MLflow's housekeeping loggers at WARNING. Called again once MLflow is imported: its logging
    set-up resets the levels of its child loggers."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def _on_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def prints_to_log(logger: logging.Logger) -> Iterator[None]:
    """Lines a library ``print``s (ModelOpt: "Inserted 168 quantizers", "Registered <class> ...",
    once per quantized copy) go to ``logger`` at DEBUG instead of stdout."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        for line in buffer.getvalue().splitlines():
            if line.strip():
                logger.debug("%s", line)


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` for the closest choice(s) to a typo, else ``""``. One helper for
    every "unknown name" message (pairs, config keys, overlays)."""
    close = difflib.get_close_matches(value, list(choices), n=2, cutoff=0.6)
    if not close:
        return ""
    ratio = [difflib.SequenceMatcher(None, value, c).ratio() for c in close]
    close = [c for c, r in zip(close, ratio, strict=True) if r >= ratio[0] - 0.05]
    return " Did you mean " + " or ".join(f"'{c}'" for c in close) + "?"


def summary(lines: Iterable[str]) -> None:
    """The last lines of a command: what came out, the run id, where to look (stdout)."""
    lines = [line for line in lines if line]
    width = max((len(line) for line in lines), default=0)
    print("-" * min(width, 100), *lines, sep="\n", flush=True)


def ui_hint(uri: str, run_url: str | None = None) -> str:
    """How to see a run: ``mlflow ui --backend-store-uri <uri>`` for a local store, the server's
    URL for a tracking server (credentials never printed)."""
    from .redact import redact_text

    if uri.startswith(("http://", "https://")):
        return f"open {redact_text(run_url or uri)}"
    return f"see it: mlflow ui --backend-store-uri {redact_text(uri)}"
