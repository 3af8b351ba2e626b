"""``sweep``: the MLproject entry point over Hydra's multirun (one parent run, a child per job).

    python -m layer_sensitivity.cli.sweep --quant-pairs fp8,int8 --dataset-sizes small [overrides]

is ``python -m layer_sensitivity -m quant_pair=fp8,int8 dataset.size=small [overrides]``; a
``sweep=<preset>`` override (conf/sweep/) replaces the pairs x sizes of the two options.
"""

from __future__ import annotations

import argparse
import sys

from ..tracking.credentials import scrub_process
from .common import expand_packed_overrides


def multirun_argv(quant_pairs: str | None, dataset_sizes: str | None,
                  overrides: list[str]) -> list[str]:
    preset = any(o.split("=", 1)[0] == "sweep" for o in overrides)
    axes = [] if preset else [f"{k}={v}" for k, v in (("quant_pair", quant_pairs),
                                                       ("dataset.size", dataset_sizes)) if v]
    return ["-m", *axes, *(o for o in overrides if o not in ("-m", "--multirun"))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m layer_sensitivity.cli.sweep",
        description="A sweep of sensitivity jobs (Hydra multirun): one parent run, one child "
                    "run per job.")
    parser.add_argument("--quant-pairs", default=None, help="comma-separated, e.g. fp8,int8")
    parser.add_argument("--dataset-sizes", default=None, help="comma-separated, e.g. small,medium")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (sweeps allowed), "
                                                     "e.g. sweep=cpu_all autoquant.batch_size=2")
    args = parser.parse_args(scrub_process(expand_packed_overrides(
        list(sys.argv[1:] if argv is None else argv))))
    sys.argv = [sys.argv[0], *multirun_argv(args.quant_pairs, args.dataset_sizes, args.overrides)]
    from ..console import quiet_third_party

    quiet_third_party()  # before tqdm is imported: it reads TQDM_DISABLE once
    from .sensitivity import main as sensitivity

    sensitivity()


if __name__ == "__main__":
    main()
