"""``compare``: rank agreement, top-k overlap and share heatmaps across finished runs.

    python -m layer_sensitivity.cli.compare --run-ids <id>,<id>[,...]
    python -m layer_sensitivity.cli.compare --parent-run-id <sweep parent>
    python -m layer_sensitivity.cli.compare --experiment <name> [--filter "params.method = 'gradient'"]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from .. import console, tracking
from ..tasks.compare import compare_runs
from .common import check_out_dir, install_signal_handlers, setup_plain_logging, user_errors


def main(argv: list[str] | None = None) -> None:
    install_signal_handlers()  # SIGINT / SIGTERM: the nested run ends KILLED, exit 130 / 143
    parser = argparse.ArgumentParser(prog="python -m layer_sensitivity.cli.compare",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--run-ids", default="", help="comma-separated run ids")
    parser.add_argument("--parent-run-id", default="", help="a sweep's parent run: its children")
    parser.add_argument("--experiment", default="", help="every run of this experiment ...")
    parser.add_argument("--filter", default="", help="... matching this MLflow filter string")
    parser.add_argument("--out", default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--tracking-uri", default=None,
                        help="default: MLFLOW_TRACKING_URI, else <project>/mlflow.db")
    args = parser.parse_args(argv)
    setup_plain_logging()
    with user_errors(), tempfile.TemporaryDirectory(prefix="comparison-") as tmp:
        if args.out:
            check_out_dir(Path(args.out), "--out")
        store, tracker = tracking.open_store(args.tracking_uri, args.experiment)
        out = Path(args.out or tmp)  # without --out the files live in the logged run only
        done = compare_runs(store, tracker, out,
                             run_ids=[r for r in args.run_ids.split(",") if r.strip()] or None,
                             parent_run_id=args.parent_run_id or None,
                             experiment=args.experiment or None, filter_string=args.filter)
    console.summary([*(line.replace("**", "").replace("`", "") for line in done.headline),
                     f"comparison run {done.run_id}" + (f"; files in {args.out}" if args.out else ""),
                     console.ui_hint(store.where)])


if __name__ == "__main__":
    main()
