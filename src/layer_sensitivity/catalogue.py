"""Quant pairs -> ModelOpt configs.

A pair names a ModelOpt preset (``mtq.<NAME>``) and a list of named edits; the effective config is
always derived from the installed preset, never written out by hand, so it follows ModelOpt.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from .errors import UserError
from .schema import QuantGranularityConfig, QuantPairConfig

QuantCfg = dict[str, Any]


def _set_quantizer(cfg: QuantCfg, pattern: str, **entry: Any) -> QuantCfg:
    """Append a ``quant_cfg`` entry; later entries win in ModelOpt's list-form configs."""
    cfg["quant_cfg"].append({"quantizer_name": pattern, **entry})
    return cfg


def _disable_input_quantizers(cfg: QuantCfg) -> QuantCfg:
    return _set_quantizer(cfg, "*input_quantizer", enable=False)


EDITS: dict[str, Callable[[QuantCfg], QuantCfg]] = {
    "disable_input_quantizers": _disable_input_quantizers,
}


def modelopt_preset(name: str) -> QuantCfg:
    """A deep copy of ``mtq.<name>``; a clear error when the installed ModelOpt lacks it."""
    import modelopt.torch.quantization as mtq

    preset = getattr(mtq, name, None)
    if not isinstance(preset, dict):
        import modelopt

        raise UserError(
            f"ModelOpt preset '{name}' is not available in the installed nvidia-modelopt "
            f"{modelopt.__version__}. Install a ModelOpt release that provides mtq.{name}, or "
            "choose another quant_pair."
        )
    return copy.deepcopy(preset)


def _quantizer_entries(cfg: QuantCfg, suffix: str) -> list[dict[str, Any]]:
    return [e for e in cfg["quant_cfg"] if e.get("quantizer_name") == f"*{suffix}"]


def _apply_granularity(cfg: QuantCfg, granularity: QuantGranularityConfig) -> QuantCfg:
    for suffix, attrs in (("weight_quantizer", granularity.weight), ("input_quantizer", granularity.input)):
        if not attrs:
            continue
        entries = [e for e in _quantizer_entries(cfg, suffix) if e.get("cfg")]
        if not entries:
            raise UserError(
                f"quant_granularity '{granularity.name}' edits the {suffix.replace('_', ' ')}s, "
                "but this quant pair leaves them unquantized. Choose a granularity that only "
                "edits quantizers the pair enables, or quant_granularity=default."
            )
        for entry in entries:
            entry["cfg"] = {**entry["cfg"], **copy.deepcopy(dict(attrs))}
    return cfg


def build_quant_config(pair: QuantPairConfig, granularity: QuantGranularityConfig) -> QuantCfg:
    """The exact ModelOpt config for a pair under a granularity overlay."""
    cfg = modelopt_preset(pair.modelopt_base)
    for edit in pair.edits:
        if edit not in EDITS:
            raise UserError(
                f"quant_pair '{pair.name}' names an unknown edit '{edit}'. Known edits: "
                f"{', '.join(sorted(EDITS))}."
            )
        cfg = EDITS[edit](cfg)
    return _apply_granularity(cfg, granularity)


def format_effective_bits(cfg: QuantCfg) -> float:
    """Bits per weight ModelOpt charges for a layer in this format (scales included)."""
    from modelopt.torch.quantization.algorithms import QuantRecipe

    return float(QuantRecipe(cfg).compression) * 16.0


def format_name(pair: QuantPairConfig) -> str:
    """The name ModelOpt shows for the pair's format (custom when edits changed the preset)."""
    return pair.modelopt_base if not pair.edits else f"{pair.modelopt_base}+{'+'.join(pair.edits)}"
