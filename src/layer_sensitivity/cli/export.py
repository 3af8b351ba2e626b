"""``export``: a run's recipe as a servable, verified, logged quantized checkpoint.

    python -m layer_sensitivity.cli.export --run-id <run> --recipe keep_top_25pct [--out DIR]
        [--force false] [--register-as NAME] [--eval-captions FILE]

Quantizes a fresh copy of the run's model with the recipe, calibrates as the run did, writes a
unified Hugging Face checkpoint (``export_hf_checkpoint``: weights, config.json,
hf_quant_config.json, tokenizer files), checks it against the fake-quantized model, says which
runtimes serve it (refuses one that none serves unless --force true), and logs it as a run nested
under the analysed run plus an MLflow logged model.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from .. import paths, tracking
from .common import install_signal_handlers, setup_plain_logging, user_errors
from .publish import parse_bool


def main(argv: list[str] | None = None) -> None:
    install_signal_handlers()
    parser = argparse.ArgumentParser(prog="python -m layer_sensitivity.cli.export",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--run-id", required=True, help="a finished sensitivity or recipe run")
    parser.add_argument("--recipe", required=True,
                        help="one of the run's recipes (e.g. keep_top_25pct, mixed_..._6bits) or a "
                             "path to a ModelOpt PTQ recipe YAML")
    parser.add_argument("--out", default="",
                        help="a new directory (default: outputs/export/<recipe>/<time>)")
    parser.add_argument("--force", default="false",
                        help="true: export a recipe no runtime serves (default: false)")
    parser.add_argument("--register-as", default="",
                        help="also register the logged model under this name")
    parser.add_argument("--eval-captions", default="",
                        help="held-out captions (default: bundled captions the run did not "
                             "calibrate on)")
    parser.add_argument("--max-eval-samples", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tracking-uri", default=None,
                        help="default: MLFLOW_TRACKING_URI, else <project>/mlflow.db")
    args = parser.parse_args(argv)
    setup_plain_logging()
    from ..tasks.export import export_run  # torch and ModelOpt: after --help (fast)

    with user_errors():
        force = parse_bool(args.force, "force")
        stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
        name = Path(args.recipe).name.removesuffix(".yaml")
        out = Path(args.out) if args.out else (paths.project_root() / "outputs" / "export"
                                               / name / stamp)
        store, tracker = tracking.open_store(args.tracking_uri)
        result, model_id = export_run(store, tracker, args.run_id, args.recipe, out, force=force,
                                      register_as=args.register_as or None,
                                      eval_captions=args.eval_captions or None,
                                      max_eval_samples=args.max_eval_samples, device=args.device)
    p = result.plan
    print(f"exported {p.recipe.name} ({result.quant_algo}, {p.recipe.lm_bits:.4f} LM bits) to "
          f"{result.out_dir}")
    print(f"served by: {', '.join(p.serving.runtimes) or 'no runtime (forced)'}")
    print(f"held-out KL {result.kl_export:.6f} (fake-quantized recipe {result.kl_recipe:.6f}), "
          f"max logit error {result.max_logit_error:.2e} of the largest logit")
    if model_id:
        print(f"logged model {model_id} (source run {args.run_id}) in {store.where}")


if __name__ == "__main__":
    main()
