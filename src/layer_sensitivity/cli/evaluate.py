"""``evaluate``: a run's recipes at equal bits against random, reverse and practitioners' rules.

    python -m layer_sensitivity.cli.evaluate --run-id <sensitivity run> [--keep 0.1,0.25,0.5]
        [--draws 20] [--ground-truth all|none|<N groups>] [--eval-captions <file>]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from .. import console, tracking
from ..equal_bits import wide
from ..errors import UserError
from ..tasks.evaluate import evaluate_run, headline
from .common import (
    check_input_file,
    check_out_dir,
    check_positive,
    install_signal_handlers,
    setup_plain_logging,
    user_errors,
)


def parse_fractions(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or not all(0 < v < 1 for v in values):
        raise UserError(f"keep={text!r} must be comma-separated fractions in (0, 1), e.g. "
                        "0.1,0.25,0.5: LM bit budgets as fractions of the headroom from the "
                        "format's bits (0) to 16 bits (1).")
    return values


def parse_truth(text: str) -> tuple[bool, int | None]:
    """``all`` -> every group alone; ``none`` -> no ground truth; ``N`` -> N groups."""
    if text in ("all", "none"):
        return text == "all", None
    if text.isdigit() and int(text) >= 3:
        return True, int(text)
    raise UserError(f"ground-truth={text!r} must be 'all', 'none' or a number of groups >= 3 "
                    "(spread over the ranking) to measure alone.")


def main(argv: list[str] | None = None) -> None:
    install_signal_handlers()  # SIGINT / SIGTERM: the nested run ends KILLED, exit 130 / 143
    parser = argparse.ArgumentParser(prog="python -m layer_sensitivity.cli.evaluate",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--run-id", required=True, help="a finished sensitivity run")
    parser.add_argument("--keep", default="0.1,0.25,0.5",
                        help="LM bit budgets as fractions of the headroom to 16 bits")
    parser.add_argument("--draws", type=int, default=20, help="random draws per budget")
    parser.add_argument("--ground-truth", default="all",
                        help="groups measured alone: all, none, or a number spread over the ranking")
    parser.add_argument("--eval-captions", default="",
                        help="held-out captions file (default: bundled captions the run did not "
                             "calibrate on and the embedded model never trained on)")
    parser.add_argument("--max-eval-samples", type=int, default=None)
    parser.add_argument("--out", default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--tracking-uri", default=None,
                        help="default: MLFLOW_TRACKING_URI, else <project>/mlflow.db")
    args = parser.parse_args(argv)
    setup_plain_logging()
    with user_errors(), tempfile.TemporaryDirectory(prefix="evaluation-") as tmp:
        keep = parse_fractions(args.keep)
        truth, subset = parse_truth(args.ground_truth)
        if args.draws < 1:
            raise UserError(f"--draws {args.draws} must be at least 1 (20 or more to trust).")
        check_positive(args.max_eval_samples, "--max-eval-samples")
        if args.eval_captions:
            check_input_file(Path(args.eval_captions), "--eval-captions")
        if args.out:
            check_out_dir(Path(args.out), "--out")
        store, tracker = tracking.open_store(args.tracking_uri)
        out = Path(args.out or tmp)  # without --out the files live in the logged run only
        ev = evaluate_run(store, tracker, args.run_id, out, keep=keep,
                          eval_captions=args.eval_captions or None,
                          max_eval_samples=args.max_eval_samples, draws=args.draws,
                          truth=truth, truth_subset=subset)
    if ev.summary.empty:  # a mixed run: its own recipes only
        print(ev.results[["name", "lm_bits", "kl", "kl_test"]].to_string(index=False))
    else:
        print(wide(ev.summary).to_string(float_format="%.5f"))
        print(ev.recommended[["target_bits", "name", "lm_bits", "kl_val", "kl_test", "note"]]
              .to_string(index=False))
    if ev.correlations is not None:
        print(ev.correlations.to_string(index=False, float_format="%.3f"))
    console.summary([headline(ev)[1].replace("**", ""),
                     f"{len(ev.results)} recipes evaluated, logged under run {args.run_id}"
                     + (f"; files in {args.out}" if args.out else ""), console.ui_hint(store.where)])


if __name__ == "__main__":
    main()
