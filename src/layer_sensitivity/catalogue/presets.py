"""Pairs and overlays -> the exact ModelOpt config: presets, named edits, granularity overlays.

A pair names a ModelOpt preset (``mtq.<NAME>_CFG``) and a list of named edits; an overlay changes how
the pair's weights or activations are scaled. The effective config is always derived in code from
the installed presets (edits append ``quant_cfg`` entries; later entries win), never written out by
hand, so it follows ModelOpt.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from ..schema import (
    ActivationGranularity,
    FP4Format,
    PresetEdit,
    QuantGranularityConfig,
    QuantPairConfig,
    WeightGranularity,
)

QuantCfg = dict[str, Any]

WEIGHT, INPUT = "weight_quantizer", "input_quantizer"
# The quantizers of an ordinary decoder linear layer: what the effective settings describe.
_PROBE = "model.language_model.layers.0.mlp.down_proj."
_PROBE_PARENT = "nn.Linear"

FP4_E2M1 = (2, 1)
DEFAULT_FP4 = FP4Format.nvfp4  # what the plain wfp4_* names and FP4 messages mean
MX_SCALE_BITS = (8, 0)


def modelopt_preset(name: str, pair: str | None = None) -> QuantCfg:
    """A deep copy of ``mtq.<name>``; a clear error when the installed ModelOpt lacks it."""
    import modelopt.torch.quantization as mtq

    preset = getattr(mtq, name, None)
    if not isinstance(preset, dict) or "quant_cfg" not in preset:
        import modelopt

        who = f"quant_pair={pair} is unavailable: it needs" if pair else "Needs"
        raise UserError(
            f"{who} the ModelOpt preset mtq.{name}, which the installed nvidia-modelopt "
            f"{modelopt.__version__} does not provide. Install a ModelOpt release that has "
            f"mtq.{name} (this project is tested with 0.47), or choose another quant_pair."
        )
    return copy.deepcopy(preset)


def _entries(cfg: QuantCfg) -> list[dict[str, Any]]:
    """``quant_cfg`` as a list of plain dict entries (ModelOpt 0.47 presets are list-form)."""
    entries = cfg["quant_cfg"]
    if isinstance(entries, list) and all(isinstance(e, dict) for e in entries):
        return entries
    from modelopt.torch.quantization.config import normalize_quant_cfg_list

    return [dict(e) if isinstance(e, dict) else e.model_dump(exclude_unset=True)
            for e in normalize_quant_cfg_list(entries)]


def _attrs(d: Any) -> dict[str, Any]:
    # ``enable`` is an entry field; ModelOpt rejects it inside ``cfg`` (passed twice).
    return {k: v for k, v in dict(d).items() if k != "enable"}


def resolve_quantizer(cfg: QuantCfg, quantizer: str) -> tuple[bool, Any]:
    """(enabled, cfg dict or list of dicts) of one quantizer of a plain linear layer.

    Mirrors ``modelopt.torch.quantization.conversion.set_quantizer_by_cfg``: entries apply in
    order, an entry with ``cfg`` replaces all attributes, one without only toggles ``enable``.
    """
    enabled, attrs = False, None
    for e in _entries(cfg):
        if e.get("parent_class") not in (None, _PROBE_PARENT):
            continue
        if not fnmatch.fnmatch(_PROBE + quantizer, e["quantizer_name"]):
            continue
        c = e.get("cfg")
        if c is not None:
            attrs = copy.deepcopy([_attrs(x) for x in c] if isinstance(c, list) else _attrs(c))
        enabled = bool(e.get("enable", True))
    return enabled, attrs


def is_fp4(stage: dict[str, Any]) -> bool:
    bits = stage.get("num_bits")
    return isinstance(bits, (list, tuple)) and tuple(bits) == FP4_E2M1


# --------------------------------------------------------------------------------------------
# Named edits


def _preset_quantizer(preset: str, quantizer: str, pair: str | None) -> Any:
    enabled, attrs = resolve_quantizer(modelopt_preset(preset, pair), quantizer)
    if not enabled or attrs is None:
        raise UserError(f"mtq.{preset} leaves the {quantizer}s disabled; it cannot seed this edit.")
    return attrs


def _append(cfg: QuantCfg, quantizer: str, attrs: Any = None, enable: bool | None = None) -> QuantCfg:
    entry: dict[str, Any] = {"quantizer_name": f"*{quantizer}"}
    if attrs is not None:
        entry["cfg"] = attrs
    if enable is not None:
        entry["enable"] = enable
    cfg["quant_cfg"].append(entry)
    return cfg


@dataclass(frozen=True)
class Edit:
    description: str
    apply: Callable[[QuantCfg, str | None], QuantCfg]


def _inputs_from(preset: str, **override: Any) -> Callable[[QuantCfg, str | None], QuantCfg]:
    def apply(cfg: QuantCfg, pair: str | None) -> QuantCfg:
        attrs = _preset_quantizer(preset, INPUT, pair)
        return _append(cfg, INPUT, {**attrs, **override})
    return apply


EDITS: dict[PresetEdit, Edit] = {
    PresetEdit.disable_input_quantizers: Edit(
        "activation (input) quantizers disabled: weight-only, activations stay 16-bit",
        lambda cfg, pair: _append(cfg, INPUT, enable=False)),
    PresetEdit.fp8_inputs: Edit(
        "input quantizers replaced by mtq.FP8_DEFAULT_CFG's (FP8 E4M3, per-tensor, static)",
        _inputs_from("FP8_DEFAULT_CFG")),
    PresetEdit.int8_inputs: Edit(
        "input quantizers replaced by mtq.INT8_DEFAULT_CFG's (INT8, per-tensor, static)",
        _inputs_from("INT8_DEFAULT_CFG")),
    PresetEdit.int4_inputs: Edit(
        "input quantizers replaced by mtq.INT8_DEFAULT_CFG's with num_bits=4 (INT4, per-tensor, "
        "static); ModelOpt has no INT4-activation preset",
        _inputs_from("INT8_DEFAULT_CFG", num_bits=4)),
}


# --------------------------------------------------------------------------------------------
# Granularity overlays

# Weight overlays: the attributes they set (on top of the pair's own weight settings).
_WEIGHT_ATTRS: dict[WeightGranularity, dict[str, Any]] = {
    WeightGranularity.per_tensor: {"axis": None, "block_sizes": None},
    WeightGranularity.per_out_channel: {"axis": 0, "block_sizes": None},
    WeightGranularity.per_in_channel: {"axis": 1, "block_sizes": None},
}
# Activation overlays; per-token dynamic is exactly mtq.FP8_PER_CHANNEL_PER_TOKEN_CFG's inputs.
_INPUT_ATTRS: dict[ActivationGranularity, dict[str, Any]] = {
    ActivationGranularity.per_tensor_static: {"axis": None, "type": "static", "block_sizes": None},
    ActivationGranularity.per_token_dynamic: {"axis": None, "type": "dynamic",
                                              "block_sizes": {-1: None}},
}


def _weight_attrs(g: QuantGranularityConfig) -> dict[str, Any]:
    if g.weight == WeightGranularity.group:
        if g.group_size is None or g.group_size <= 0:
            raise UserError(
                f"quant_granularity={g.name} uses weight=group but group_size={g.group_size}. Set "
                "quant_granularity.group_size to a positive integer that divides every quantized "
                "layer's input features (e.g. 64 or 128)."
            )
        return {"axis": None, "block_sizes": {-1: g.group_size, "type": "static"}}
    if g.group_size is not None:
        raise UserError(
            f"quant_granularity={g.name} sets group_size={g.group_size} but weight="
            f"{g.weight.value}; group_size only applies to weight=group. Remove group_size or use "
            "quant_granularity=w_group64 / w_group128."
        )
    return dict(_WEIGHT_ATTRS.get(g.weight, {}))


def _overlay(cfg: QuantCfg, pair: QuantPairConfig, g: QuantGranularityConfig, quantizer: str,
             attrs: dict[str, Any], side: str, setting: str) -> QuantCfg:
    if not attrs:
        return cfg
    enabled, current = resolve_quantizer(cfg, quantizer)
    precision = pair.weight if quantizer == WEIGHT else pair.activation
    why = None
    if not enabled or current is None:
        why = f"quant_pair={pair.name} leaves the {side} unquantized ({precision.value})"
    elif isinstance(current, list):
        why = f"quant_pair={pair.name} quantizes its {side} in several stages"
    elif is_fp4(current):
        why = (f"quant_pair={pair.name} uses {(pair.fp4_format or FP4Format.nvfp4).value.upper()} "
               f"{side}, whose block size and scale format are fixed by the format")
    if why:
        raise UserError(
            f"quant_granularity={g.name} sets the {side} to {setting}, but {why}, so the overlay "
            f"has nothing meaningful to change. Use quant_granularity=default with this pair, or "
            f"pick a pair whose {side} are quantized in INT or FP8."
        )
    return _append(cfg, quantizer, {**current, **copy.deepcopy(attrs)})


def build_quant_config(pair: QuantPairConfig, granularity: QuantGranularityConfig) -> QuantCfg:
    """The exact ModelOpt config for a pair under a granularity overlay."""
    cfg = modelopt_preset(pair.modelopt_base, pair.name)
    for edit in pair.edits:
        cfg = EDITS[PresetEdit(edit)].apply(cfg, pair.name)
    g = granularity
    w_setting = (f"blocks of {g.group_size}" if g.weight == WeightGranularity.group
                 else g.weight.value)
    cfg = _overlay(cfg, pair, g, WEIGHT, _weight_attrs(g), "weights", w_setting)
    cfg = _overlay(cfg, pair, g, INPUT, dict(_INPUT_ATTRS.get(g.activation, {})), "activations",
                   g.activation.value)
    return cfg
