"""``report``: regenerate a finished run's reports and figures from its manifest artifact.

    python -m layer_sensitivity.cli.report --run-id <run id>
    python -m layer_sensitivity runner.report_only=true runner.output_dir=<dir>   # no MLflow
"""

from __future__ import annotations

import argparse

from .. import console, tracking
from ..regenerate import check_run, regenerate_run
from ..schema import TrackingConfig
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
        store = tracking.run_store(args.tracking_uri)
        check_run(store, args.run_id)  # refused before anything is recorded
        # A record of what was done to the run, nested under it (under `mlflow run`: its own run).
        tracker = tracking.create(TrackingConfig(uri=store.uri, system_metrics=False))
        with tracker.run("report", parent_id=args.run_id) as run:
            names = regenerate_run(store, args.run_id)
            run.log_params({"report.files": ", ".join(names)})
            run.set_tags({"mlflow.note.content": f"Regenerated {len(names)} files of run "
                          f"{args.run_id} from its manifest (the manifest is never replaced)."})
    console.summary([f"regenerated {', '.join(names)}", f"into run {args.run_id} (record: run "
                     f"{run.run_id})" if run.run_id else f"into run {args.run_id}",
                     console.ui_hint(store.where)])


if __name__ == "__main__":
    main()
