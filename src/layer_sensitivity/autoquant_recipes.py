"""ModelOpt AutoQuantize recipes as the input of a search.

``modelopt.recipe.load_recipe`` validates a recipe (a built-in name such as
``general/auto_quantize/nvfp4_fp8_at_5p4bits``, or a YAML path) with ModelOpt's own schema
(``ModelOptAutoQuantizeRecipe``). Its parts become this project's settings:

- each candidate format -> the precision pair whose ModelOpt config gives a decoder linear layer
  the same weight and input quantizers and calibration algorithm (no such pair: an error naming
  the format);
- ``constraints.effective_bits`` -> the LM bit budget (the recipe must exclude the vision tower
  from the cost, as ModelOpt's base unit does: then both count language-model weights only);
- ``auto_quantize_method`` -> ``autoquant.method``; ``score_size`` -> ``autoquant.score_size``;
- ``disabled_layers``: vision patterns are what the project always does; an ``lm_head`` pattern
  -> ``autoquant.lm_head=false``; patterns that match no layer of a Qwen3-VL decoder (routers,
  conv1d of other architectures) change nothing; any other pattern is an error (the project does
  not exclude decoder layers from its analysis).

A Hydra override or option saying otherwise (another method, budget, score size) is an error,
not a silent choice. FP4 candidates refuse on CPU exactly as a FP4 pair does (the pairs are
checked like any other before the model loads).
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import UserError

# Module names of one Qwen3-VL decoder layer and the head: what a disabled pattern may not hit.
DECODER_MODULES = tuple(f"model.language_model.layers.0.{m}" for m in (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"))
LM_HEAD = "lm_head"
VISION_MODULES = ("model.visual.blocks.0.attn.qkv", "model.visual.merger.linear_fc1")


@dataclass
class AutoQuantizeSpec:
    """What a ModelOpt AutoQuantize recipe asks for, in this project's terms."""

    source: str
    description: str
    pairs: list[str]  # one per candidate format, in the recipe's order
    effective_bits: float  # LM bits
    method: str
    score_size: int
    lm_head: bool = True
    ignored_patterns: list[str] = field(default_factory=list)  # match no Qwen3-VL decoder layer

    def overrides(self) -> list[str]:
        """Hydra overrides that configure the search as the recipe says."""
        return [f"autoquant.method={self.method}", f"autoquant.score_size={self.score_size}",
                f"autoquant.lm_head={str(self.lm_head).lower()}"]


def load_modelopt_recipe(name_or_path: str) -> Any:
    """ModelOpt's own loader and schema; a UserError naming the recipe when it fails."""
    from modelopt.recipe import ModelOptAutoQuantizeRecipe, load_recipe

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints "[load_recipe] loading: ..."
            recipe = load_recipe(name_or_path)
    except Exception as e:  # noqa: BLE001 - ModelOpt raises ValueError, pydantic, YAML errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"AutoQuantize recipe '{name_or_path}' did not load ({first}). Give a built-in name "
            "(e.g. general/auto_quantize/nvfp4_fp8_at_5p4bits) or a path to a YAML file with "
            "metadata.recipe_type: auto_quantize."
        ) from None
    if not isinstance(recipe, ModelOptAutoQuantizeRecipe):
        raise UserError(f"'{name_or_path}' is a ModelOpt '{recipe.recipe_type.value}' recipe, "
                        "not an AutoQuantize one (metadata.recipe_type: auto_quantize).")
    return recipe


def _signature(cfg: Mapping[str, Any]) -> str:
    """Weight and input quantizer settings of a decoder linear layer, and the algorithm."""
    from . import catalogue

    algo = cfg.get("algorithm", "max")
    algo = algo.get("method") if isinstance(algo, dict) else algo
    parts = [catalogue.quantizer_settings(dict(cfg), side) for side in (catalogue.WEIGHT,
                                                                         catalogue.INPUT)]
    return json.dumps([{k: v for k, v in p.items() if k not in ("summary", "scaling")}
                       for p in parts] + [algo or "max"], sort_keys=True, default=str)


def match_pairs(formats: Sequence[Mapping[str, Any]],
                pair_configs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The pair of each candidate format (same quantizers and algorithm); UserError otherwise."""
    from . import catalogue

    by_signature: dict[str, str] = {}
    for name, cfg in pair_configs.items():
        by_signature.setdefault(_signature(cfg), name)
    out = []
    for i, fmt in enumerate(formats, start=1):
        pair = by_signature.get(_signature(fmt))
        if pair is None:
            w = catalogue.quantizer_settings(dict(fmt), catalogue.WEIGHT)["summary"]
            a = catalogue.quantizer_settings(dict(fmt), catalogue.INPUT)["summary"]
            algo = fmt.get("algorithm", "max")
            raise UserError(
                f"Candidate format {i} of the AutoQuantize recipe (weights {w}; activations {a}; "
                f"algorithm {json.dumps(algo, default=str)}) is no precision pair of this "
                "project, so its scores could not be read per pair (AutoQuantize here takes "
                "max/mse calibration only: no AWQ or SmoothQuant presets). Use candidate formats "
                "such as configs/ptq/presets/model/fp8, int8, int4_blockwise_weight_only, nvfp4.")
        out.append(pair)
    return out


def _matches(patterns: Iterable[str], names: Iterable[str]) -> bool:
    return any(fnmatch.fnmatch(n, p) for p in patterns for n in names)


def spec(name_or_path: str, pair_configs: Mapping[str, Mapping[str, Any]]) -> AutoQuantizeSpec:
    """Validate with ModelOpt and translate; ``pair_configs``: pair name -> its ModelOpt config."""
    recipe = load_modelopt_recipe(name_or_path)
    aq = recipe.auto_quantize
    where = f"AutoQuantize recipe '{name_or_path}'"
    if recipe.quantize is not None or aq.module_search_spaces:
        raise UserError(f"The {where} uses module_search_spaces or a fixed quantize baseline; "
                        "this project searches every decoder layer over the same candidate "
                        "formats. Use a recipe with top-level candidate_formats only.")
    if aq.constraints.cost_model != "weight":
        raise UserError(f"The {where} uses cost model '{aq.constraints.cost_model}'; the "
                        "project's budgets count weights (cost_model: weight).")
    if aq.kv_cache is not None:
        raise UserError(f"The {where} quantizes the KV cache; the project analyses linear "
                        "layers only. Remove auto_quantize.kv_cache.")
    if not _matches(aq.cost_excluded_layers, VISION_MODULES):
        raise UserError(
            f"The {where} counts the vision tower in its bit budget (no cost_excluded_layers "
            "pattern matches it); this project's budgets are language-model bits. Add '*visual*' "
            "to auto_quantize.cost_excluded_layers.")
    lm_excluded = [p for p in aq.cost_excluded_layers
                   if _matches([p], (*DECODER_MODULES, LM_HEAD))]
    if lm_excluded:
        raise UserError(f"The {where} leaves {lm_excluded} of the language model out of the bit "
                        "budget; this project counts every language-model weight. Remove them.")
    lm_head, ignored = True, []
    for p in aq.disabled_layers:
        if _matches([p], DECODER_MODULES):
            raise UserError(f"The {where} disables decoder layers ('{p}'); this project analyses "
                            "every decoder layer. Remove the pattern.")
        if _matches([p], [LM_HEAD]):
            lm_head = False
        elif not _matches([p], VISION_MODULES):
            ignored.append(p)
    formats = [f.model_dump(exclude_unset=True) for f in aq.candidate_formats]
    pairs = match_pairs(formats, pair_configs)
    if len(set(pairs)) != len(pairs):
        raise UserError(f"The {where} lists the same format twice ({', '.join(pairs)}).")
    return AutoQuantizeSpec(str(name_or_path), recipe.description, pairs,
                            float(aq.constraints.effective_bits), aq.auto_quantize_method,
                            int(aq.score_size), lm_head, ignored)


def check_consistent(s: AutoQuantizeSpec, *, formats: Sequence[str], budgets: Any,
                     overrides: Sequence[str], pair_aliases: Mapping[str, str]) -> None:
    """A UserError when the command line says something else than the recipe."""
    where = f"the AutoQuantize recipe '{s.source}'"
    named = [pair_aliases.get(f, f) for f in formats]
    if named and sorted(named) != sorted(s.pairs):
        raise UserError(f"formats={','.join(formats)} contradicts {where} (candidate formats "
                        f"{', '.join(s.pairs)}). Drop formats= or the recipe.")
    if budgets not in (None, "", []):
        given = [float(b) for b in (budgets if isinstance(budgets, list) else [budgets])]
        if given != [s.effective_bits]:
            raise UserError(f"effective_bits={budgets} contradicts {where} "
                            f"(effective_bits {s.effective_bits:g}). Drop one of them.")
    wanted = dict(o.split("=", 1) for o in s.overrides())
    for o in overrides:
        key, _, value = o.partition("=")
        key = key.lstrip("+~")
        if key in wanted and value.strip().lower() != wanted[key].lower():
            raise UserError(f"{o} contradicts {where} ({key}={wanted[key]}). Drop the override "
                            "or change the recipe.")
