"""``evaluate``: what a run's recipes cost in quality, against random and reverse baselines.

    python -m layer_sensitivity.cli.evaluate --run-id <sensitivity run> [--keep 0,0.1,0.25,0.5]
        [--eval-captions <file>]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from .. import tracking
from ..errors import UserError
from ..evaluate_runs import evaluate_run
from ..schema import TrackingConfig
from .common import setup_plain_logging, user_errors


def parse_fractions(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or not all(0 <= v < 1 for v in values):
        raise UserError(f"keep={text!r} must be comma-separated fractions in [0, 1), e.g. "
                        "0,0.1,0.25,0.5 (the share of layer groups kept at 16 bits).")
    return values


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m layer_sensitivity.cli.evaluate",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--run-id", required=True, help="a finished sensitivity run")
    parser.add_argument("--keep", default="0,0.1,0.25,0.5",
                        help="fractions of groups kept at 16 bits (comma-separated)")
    parser.add_argument("--eval-captions", default="",
                        help="held-out captions file (default: bundled captions the run did not "
                             "calibrate on and the embedded model never trained on)")
    parser.add_argument("--max-eval-samples", type=int, default=None)
    parser.add_argument("--out", default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--tracking-uri", default=None,
                        help="default: MLFLOW_TRACKING_URI, else <project>/mlflow.db")
    args = parser.parse_args(argv)
    setup_plain_logging()
    with user_errors():
        keep = parse_fractions(args.keep)
        store = tracking.run_store(args.tracking_uri)
        tracker = tracking.create(TrackingConfig(uri=store.uri, system_metrics=False))
        out = Path(args.out or tempfile.mkdtemp(prefix="evaluation-"))
        results = evaluate_run(store, tracker, args.run_id, out, keep=keep,
                               eval_captions=args.eval_captions or None,
                               max_eval_samples=args.max_eval_samples)
    print(results[["name", "lm_bits", "kl", "loss_delta"]].to_string(index=False))
    print(f"evaluation written to {out} and logged under run {args.run_id} in {store.where}")


if __name__ == "__main__":
    main()
