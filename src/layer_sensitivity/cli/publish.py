"""``publish``: copy a finished run's manifest, reports, config and figures into the analysis tree.

    python -m layer_sensitivity.cli.publish --run-id <run id> [--root models] [--force false]
        [--models false]

Destination: ``<root>/<model>/layer-analysis/weight-<w>-act-<a>/<granularity>/<scheme>/`` with a
``provenance.json``; staged and renamed into place; the same run again is a no-op; another run
onto an existing directory needs ``--force true``. The run is tagged ``published.path``.
``--models true`` adds the checkpoints exported from the run (``export``'s logged models).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import console, publish, tracking
from ..errors import UserError
from ..tasks.publish import publish_tracked
from .common import check_out_dir, install_signal_handlers, setup_plain_logging, user_errors

_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")


def parse_bool(text: str, name: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE or value in _FALSE:
        return value in _TRUE
    raise UserError(f"{name}={text!r} is not a boolean; use true or false.")


def main(argv: list[str] | None = None) -> None:
    install_signal_handlers()  # SIGINT / SIGTERM: the nested run ends KILLED, exit 130 / 143
    parser = argparse.ArgumentParser(
        prog="python -m layer_sensitivity.cli.publish",
        description="Publish a finished sensitivity run into "
                    "<root>/<model>/layer-analysis/weight-<w>-act-<a>/<granularity>/<scheme>/.")
    parser.add_argument("--run-id", required=True, help="the sensitivity job's MLflow run id")
    parser.add_argument("--root", default="models", help="publish root (default: models)")
    parser.add_argument("--force", default="false",
                        help="true: replace a directory that holds another run (default: false)")
    parser.add_argument("--models", default="false",
                        help="true: also copy the checkpoints exported from the run (its logged "
                             "models) into checkpoints/<name>/ (default: false)")
    parser.add_argument("--tracking-uri", default=None,
                        help="default: MLFLOW_TRACKING_URI, else <project>/mlflow.db")
    args = parser.parse_args(argv)
    setup_plain_logging()
    with user_errors():
        force = parse_bool(args.force, "force")
        models = parse_bool(args.models, "models")
        root = Path(args.root)
        if root.absolute() == Path(root.absolute().anchor):
            raise UserError(f"--root={args.root} is the file system's root; publishing writes "
                            "<model>/layer-analysis/... under it. Set --root to a directory of "
                            "its own, e.g. models.")
        check_out_dir(root, "--root")
        # A record of what was done to the run, nested under it (under `mlflow run`: its own run).
        store, tracker = tracking.open_store(args.tracking_uri)
        result = publish_tracked(store, tracker, args.run_id, root, force=force,
                                         models=models).result
    if result.status == "unchanged":
        done = f"run {args.run_id} is already published at {result.path}; nothing to do"
    else:
        done = (f"{result.status} run {args.run_id} at {result.path} "
                f"({len(result.files)} files + {publish.PROVENANCE})")
    console.summary([done, f"report: {result.path}/layer-sensitivity-report.html",
                     console.ui_hint(store.where)])


if __name__ == "__main__":
    main()
