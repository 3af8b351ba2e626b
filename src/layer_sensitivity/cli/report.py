"""``report``: regenerate a finished run's reports and figures from its manifest artifact.

    python -m layer_sensitivity.cli.report --run-id <run id>
    python -m layer_sensitivity runner.report_only=true runner.output_dir=<dir>   # no MLflow
"""

from __future__ import annotations

import argparse

from .. import console, tracking
from ..tasks.report import report_run
from .common import install_signal_handlers, setup_plain_logging, user_errors


def main(argv: list[str] | None = None) -> None:
    install_signal_handlers()  # SIGINT / SIGTERM: the nested run ends KILLED, exit 130 / 143
    parser = argparse.ArgumentParser(
        prog="python -m layer_sensitivity.cli.report",
        description="Regenerate a run's layer-sensitivity reports and figures from its manifest "
                    "artifact and log them back to the run (the manifest is never replaced).")
    parser.add_argument("--run-id", required=True, help="the sensitivity job's MLflow run id")
    parser.add_argument("--tracking-uri", default=None,
                        help="default: MLFLOW_TRACKING_URI, else <project>/mlflow.db")
    args = parser.parse_args(argv)
    setup_plain_logging()
    with user_errors():
        # A record of what was done to the run, nested under it (under `mlflow run`: its own run).
        store, tracker = tracking.open_store(args.tracking_uri)
        done = report_run(store, tracker, args.run_id)
    console.summary([f"regenerated {', '.join(done.result)}", f"into run {args.run_id} (record: "
                     f"run {done.run_id})" if done.run_id else f"into run {args.run_id}",
                     console.ui_hint(store.where)])

if __name__ == "__main__":
    main()
