"""``recipe``: one AutoQuantize search over several formats at an LM bit budget -> mixed recipes.

    python -m layer_sensitivity.cli.recipe --formats fp8,int4 --effective-bits 6
    python -m layer_sensitivity.cli.recipe --formats fp8,int4 --effective-bits [5,6,7] \
        dataset.size=medium autoquant.batch_size=2       # a mixed frontier; extra Hydra overrides
    python -m layer_sensitivity.cli.recipe --autoquant-recipe general/auto_quantize/nvfp4_fp8_at_5p4bits
        # formats, budget, method, score size from a ModelOpt AutoQuantize recipe (name or path)

Each format is composed as the sensitivity job would compose ``quant_pair=<format>`` (aliases
resolve through conf/quant_pair) with the same overrides; ``tasks.recipe.run_and_log`` does the rest.
With both single-format analyses already run on the same data settings, only the solver runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .. import console, paths
from ..console import did_you_mean
from ..errors import UserError
from ..tracking.credentials import scrub_process
from .common import (
    check_out_dir,
    expand_packed_overrides,
    install_signal_handlers,
    setup_plain_logging,
    user_errors,
)

if TYPE_CHECKING:  # Hydra, the configs and mixed (torch, ModelOpt) load after --help: it stays fast
    from .. import autoquant_recipes
    from ..schema import SensitivityConfig

DEFAULT_FORMATS = "fp8,int4"
AUTO, STRATEGIES = "auto", ("auto", "direct")  # mixed.AUTO, mixed.STRATEGIES (a unit test checks)

RUN_DIR = "hydra.run.dir="  # accepted like the other entry points: where outputs go


def parse_budgets(text: str) -> Any:
    """``6`` -> 6, ``[5,6,7]`` or ``5,6,7`` -> a list, ``null`` or empty -> None (the midpoint)."""
    text = text.strip()
    if text in ("", "null", "None"):
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    if isinstance(value, str) and "," in value:
        value = [v.strip() for v in value.strip("[]").split(",") if v.strip()]
    return value  # numbers are checked by mixed.plan


def compose_configs(formats: list[str], overrides: list[str]) -> tuple[list[SensitivityConfig], str]:
    """One typed config per format (``quant_pair=<format>`` plus ``overrides``) and their YAML."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from .config_store import CONF_DIR, PRIMARY_CONFIG, check_known_keys

    cfgs, docs = [], {}
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        pairs = GlobalHydra.instance().config_loader().get_group_options("quant_pair")
        for fmt in formats:
            if fmt not in pairs:
                raise UserError(f"formats: '{fmt}' is not a quant pair.{did_you_mean(fmt, pairs)}"
                                f" Use names or aliases from conf/quant_pair: {', '.join(pairs)}.")
            try:
                cfg = compose(PRIMARY_CONFIG, overrides=[*overrides, f"quant_pair={fmt}"])
                check_known_keys(cfg)
                cfgs.append(OmegaConf.to_object(cfg))
            except (HydraException, OmegaConfBaseException, ValueError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise UserError(f"The overrides {' '.join(overrides)!r} do not compose with "
                                f"quant_pair={fmt}: {first}. Fix or remove the override.") from None
            docs[fmt] = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    return cfgs, yaml.safe_dump(docs, sort_keys=False)  # type: ignore[return-value]


def from_autoquant_recipe(source: str, formats: list[str], budgets: Any,
                          overrides: list[str]) -> autoquant_recipes.AutoQuantizeSpec:
    """A ModelOpt AutoQuantize recipe, validated by ModelOpt, in this project's terms; a
    UserError when the command line contradicts it."""
    from .. import autoquant_recipes, catalogue
    from .config_store import load_listing

    listing = load_listing()
    configs = {name: catalogue.build_quant_config(pair, listing.overlays["default"])
               for name, pair in listing.pairs.items()}
    spec = autoquant_recipes.spec(source, configs)
    if len(spec.pairs) == 1:
        raise UserError(
            f"The AutoQuantize recipe '{source}' has one candidate format ({spec.pairs[0]}); a "
            "mixed search needs two or more. Run the sensitivity job for it: python -m "
            f"layer_sensitivity quant_pair={spec.pairs[0]} "
            f"autoquant.effective_bits={spec.effective_bits:g} " + " ".join(spec.overrides()))
    autoquant_recipes.check_consistent(spec, formats=formats, budgets=budgets,
                                       overrides=overrides, pair_aliases=listing.aliases)
    if spec.ignored_patterns:
        print(f"note: disabled_layers {spec.ignored_patterns} of the recipe match no layer of a "
              "Qwen3-VL decoder; they change nothing", file=sys.stderr)
    return spec


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m layer_sensitivity.cli.recipe",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--formats", default="",
                        help=f"comma-separated pairs or aliases (default: {DEFAULT_FORMATS}, or "
                             "the AutoQuantize recipe's candidate formats)")
    parser.add_argument("--autoquant-recipe", default="",
                        help="a ModelOpt AutoQuantize recipe (built-in name or YAML path): "
                             "candidate formats, effective bits, method, score size")
    parser.add_argument("--effective-bits", default="",
                        help="LM bit budget, or a list [5,6,7]; empty = midpoint of the formats")
    parser.add_argument("--model", default=None, help="conf/model preset (default: tiny_qwen3_vl)")
    parser.add_argument("--dataset-size", default=None, help="small | medium | large")
    parser.add_argument("--method", default=None, help="gradient | kl_div")
    parser.add_argument("--strategy", default=AUTO, choices=STRATEGIES,
                        help="auto: compose stored single-format scores; direct: one search")
    parser.add_argument("--heldout", default="true",
                        help="true: measure held-out KL of the mixed recipe and of the best single "
                             "format at equal bits (a few fresh quantized models); false: skip")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides (key=value)")
    return parser


def main(argv: list[str] | None = None) -> None:
    install_signal_handlers()
    args = build_parser().parse_args(scrub_process(expand_packed_overrides(
        sys.argv[1:] if argv is None else argv)))
    setup_plain_logging()
    from .. import mixed, tracking
    from ..tasks import recipe as recipe_task

    with user_errors():
        from .publish import parse_bool

        heldout = parse_bool(args.heldout, "heldout")
        formats = [f.strip() for f in args.formats.split(",") if f.strip()]
        if args.formats.strip() and not formats:  # (empty: the default formats)
            raise UserError(f"--formats={args.formats!r} names no format. Give two or more pairs "
                            "or aliases, comma-separated, e.g. --formats fp8,int4.")
        named = {"model": args.model, "dataset.size": args.dataset_size,
                 "autoquant.method": args.method}
        overrides = [f"{k}={v}" for k, v in named.items() if v] + [
            o for o in args.overrides if not o.startswith(RUN_DIR)]
        budgets = parse_budgets(args.effective_bits)
        if args.autoquant_recipe:
            spec = from_autoquant_recipe(args.autoquant_recipe, formats, budgets, overrides)
            formats, budgets = spec.pairs, spec.effective_bits
            overrides = [*spec.overrides(), *overrides]
        formats = formats or DEFAULT_FORMATS.split(",")
        out = next((o.removeprefix(RUN_DIR) for o in args.overrides if o.startswith(RUN_DIR)),
                   None)
        stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
        out_dir = Path(out) if out else (paths.project_root() / "outputs" / "recipe"
                                         / "+".join(formats) / stamp)
        check_out_dir(out_dir, "hydra.run.dir")
        # No Hydra run here: the output directory the configs interpolate is this one.
        cfgs, config_yaml = compose_configs(formats, [*overrides, f"output_layout.dir={out_dir}"])
        req = recipe_task.MixedRequest(cfgs, budgets, out_dir,
                                       requested=formats, strategy=args.strategy,
                                       config_yaml=config_yaml,
                                       params={"overrides": " ".join(args.overrides)},
                                       heldout=heldout)
        tracker = tracking.create(cfgs[0].tracking)
        result = recipe_task.run_and_log(req, tracker)
    lines = []
    for point in result.manifest.frontier:
        mix = ", ".join(f"{'16 bits' if n == mixed.NONE else n} {v.weights_share:.0%}"
                        for n, v in (point.mix or {}).items())
        lines.append(f"{point.target_bits:g} LM bits -> {point.achieved_bits:.4f} ({mix})")
    lines = lines[:3] + ([f"... {len(lines) - 3} more budgets"] if len(lines) > 3 else [])
    reason = result.manifest.mixed.reason if result.manifest.mixed else None
    lines.append(f"scores: {reason}; {len(result.recipes)} recipe(s) "
                 f"in {out_dir / 'recipes'}")
    if result.heldout:
        m, best = result.heldout["mixed"], result.heldout["best_single"]
        lines.append(f"held-out KL: mixed {m['kl_test']:.4g}" + (
            f" vs {best['pair']} alone {best['kl_test']:.4g} at {best['lm_bits']:.2f} bits"
            if best else " (no single format at equal bits)"))
    if result.run_id:
        lines += [f"run {result.run_id}", console.ui_hint(tracker.where)]
    console.summary(lines)


if __name__ == "__main__":
    main()
