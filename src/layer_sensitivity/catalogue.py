"""The precision-pair catalogue: quant pairs and granularity overlays -> exact ModelOpt configs.

A pair (``conf/quant_pair/<name>.yaml``) names a ModelOpt preset (``mtq.<NAME>_CFG``) and a list of
named edits; a granularity overlay (``conf/quant_granularity/<name>.yaml``) changes how the pair's
weights or activations are scaled. The effective config is always derived in code from the
installed presets (edits append ``quant_cfg`` entries; later entries win), never written out by
hand, so it follows ModelOpt and can be printed for users to read.

Everything that can be decided without the model's weights is checked here: unknown or missing
presets, overlays that make no sense for a pair, formats that need CUDA, group sizes that do not
divide a layer's input features.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError
from .groups import GroupStats
from .schema import (
    ActivationGranularity,
    FP4Format,
    Precision,
    PresetEdit,
    QuantGranularityConfig,
    QuantPairConfig,
    WeightGranularity,
)

QuantCfg = dict[str, Any]

# conf/ at the repository root (src/layer_sensitivity/catalogue.py -> ../../conf).
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
PAIR_DIR = CONF_DIR / "quant_pair"
GRANULARITY_DIR = CONF_DIR / "quant_granularity"

WEIGHT, INPUT = "weight_quantizer", "input_quantizer"
# The quantizers of an ordinary decoder linear layer: what the effective settings describe.
_PROBE = "model.language_model.layers.0.mlp.down_proj."
_PROBE_PARENT = "nn.Linear"

FP4_E2M1 = (2, 1)
DEFAULT_FP4 = FP4Format.nvfp4  # what the plain wfp4_* names and FP4 messages mean
MX_SCALE_BITS = (8, 0)


# --------------------------------------------------------------------------------------------
# Presets and edits


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


def _resolve(cfg: QuantCfg, quantizer: str) -> tuple[bool, Any]:
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


def _preset_quantizer(preset: str, quantizer: str, pair: str | None) -> Any:
    enabled, attrs = _resolve(modelopt_preset(preset, pair), quantizer)
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


def _is_fp4(stage: dict[str, Any]) -> bool:
    bits = stage.get("num_bits")
    return isinstance(bits, (list, tuple)) and tuple(bits) == FP4_E2M1


def _overlay(cfg: QuantCfg, pair: QuantPairConfig, g: QuantGranularityConfig, quantizer: str,
             attrs: dict[str, Any], side: str, setting: str) -> QuantCfg:
    if not attrs:
        return cfg
    enabled, current = _resolve(cfg, quantizer)
    precision = pair.weight if quantizer == WEIGHT else pair.activation
    why = None
    if not enabled or current is None:
        why = f"quant_pair={pair.name} leaves the {side} unquantized ({precision.value})"
    elif isinstance(current, list):
        why = f"quant_pair={pair.name} quantizes its {side} in several stages"
    elif _is_fp4(current):
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


# --------------------------------------------------------------------------------------------
# Effective settings (what the manifest, params and reports record)


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


_FLOAT_NAMES = {(4, 3): "fp8_e4m3", (5, 2): "fp8_e5m2", (2, 1): "fp4_e2m1", (3, 2): "fp6_e3m2",
                (2, 3): "fp6_e2m3"}


def _dtype_name(num_bits: Any) -> str:
    if isinstance(num_bits, (list, tuple)):
        e, m = num_bits
        return _FLOAT_NAMES.get((e, m), f"fp{e + m + 1}_e{e}m{m}")
    return f"int{num_bits}"


def _scale_name(bits: Any) -> str:
    if tuple(bits) == MX_SCALE_BITS:
        return "E8M0 (power-of-two) scales"
    return f"{_dtype_name(bits).replace('_', ' ').upper()} scales"


def _scaling(stage: dict[str, Any]) -> str:
    blocks = stage.get("block_sizes") or {}
    sizes = {k: v for k, v in blocks.items() if isinstance(k, int)}
    kind = blocks.get("type") or stage.get("type") or "static"
    if sizes == {-1: None}:
        return f"per-token, {kind}"
    if sizes:
        shape = "x".join(str(sizes[k]) for k in sorted(sizes, reverse=True))
        text = f"blocks of {shape}"
        if blocks.get("scale_bits"):
            text += f", {_scale_name(blocks['scale_bits'])}"
        return f"{text}, {kind}"
    axis = stage.get("axis")
    where = {None: "per-tensor", 0: "per-output-channel", 1: "per-input-channel"}.get(
        axis, f"per-axis {axis}")
    return f"{where}, {kind}"


def _stage_settings(stage: dict[str, Any]) -> dict[str, Any]:
    from modelopt.torch.quantization.config import QuantizerAttributeConfig

    full = QuantizerAttributeConfig(**stage).model_dump()
    return {
        "format": _dtype_name(full["num_bits"]),
        "num_bits": _jsonable(full["num_bits"]),
        "type": full["type"],
        "axis": _jsonable(full["axis"]),
        "block_sizes": _jsonable(full["block_sizes"]),
        "scaling": _scaling(full),
    }


def quantizer_settings(cfg: QuantCfg, quantizer: str) -> dict[str, Any]:
    """The effective settings ModelOpt applies to one quantizer of a decoder linear layer."""
    enabled, attrs = _resolve(cfg, quantizer)
    if not enabled or attrs is None:
        return {"enabled": False, "summary": "unquantized (16-bit)"}
    stages = [_stage_settings(a) for a in (attrs if isinstance(attrs, list) else [attrs])]
    summary = " then ".join(f"{s['format']}, {s['scaling']}" for s in stages)
    if len(stages) == 1:
        return {"enabled": True, **stages[0], "summary": summary}
    return {"enabled": True, "stages": stages, "summary": summary}


def effective_quantizers(cfg: QuantCfg) -> dict[str, dict[str, Any]]:
    return {"weight": quantizer_settings(cfg, WEIGHT), "input": quantizer_settings(cfg, INPUT)}


def format_effective_bits(cfg: QuantCfg) -> float:
    """Bits per weight ModelOpt charges for a layer in this format (scales included)."""
    from modelopt.torch.quantization.algorithms import QuantRecipe

    return float(QuantRecipe(cfg, name="custom").compression) * 16.0


MODELOPT_CUSTOM_NAME = "CUSTOM_0"  # how mtq.auto_quantize shows the first non-preset format


def custom_label(fmt: str, name: str) -> str:
    """ModelOpt's ``CUSTOM_0(...)`` label of a derived config, renamed to the catalogue's name."""
    return name + fmt[len(MODELOPT_CUSTOM_NAME):] if fmt.startswith(MODELOPT_CUSTOM_NAME + "(") else fmt


def name_custom_format(groups: dict[str, GroupStats], name: str) -> dict[str, GroupStats]:
    """Per-group stats with ModelOpt's ``CUSTOM_0(...)`` label replaced by the catalogue's name."""
    return {h: dataclasses.replace(g, formats=[custom_label(f, name) for f in g.formats],
                                   chosen=custom_label(g.chosen, name))
            for h, g in groups.items()}


def format_name(pair: QuantPairConfig, granularity: QuantGranularityConfig | None = None) -> str:
    """The name ModelOpt shows for the format: the preset, plus edits and overlay when any."""
    parts = [pair.modelopt_base, *(PresetEdit(e).value for e in pair.edits)]
    if granularity is not None and granularity.name != "default":
        parts.append(granularity.name)
    return "+".join(parts)


# --------------------------------------------------------------------------------------------
# Capability checks


def cuda_requirements(cfg: QuantCfg) -> list[str]:
    """Why ModelOpt 0.47 can run this config only on CUDA (empty: it runs on CPU too).

    Facts measured on CPU (see tests/test_catalogue.py): NVFP4 blocks assert CUDA tensors
    (``amax must be a CUDA tensor for dynamic block quantization``), MX blocks load the CUDA
    extension ``modelopt_cuda_ext_mx``, static FP4 blocks need Triton on a GPU; per-token dynamic
    and static INT/FP8 blocks run on CPU.
    """
    reasons = []
    for quantizer, side in ((WEIGHT, "weights"), (INPUT, "activations")):
        enabled, attrs = _resolve(cfg, quantizer)
        if not enabled or attrs is None:
            continue
        for stage in attrs if isinstance(attrs, list) else [attrs]:
            blocks = stage.get("block_sizes") or {}
            sized = any(isinstance(k, int) and v for k, v in blocks.items())
            fmt = _dtype_name(stage.get("num_bits", 8))
            if tuple(blocks.get("scale_bits") or ()) == MX_SCALE_BITS:
                reasons.append(f"{fmt} {side} in MX blocks (E8M0 scales) need ModelOpt's CUDA "
                               "extension modelopt_cuda_ext_mx")
            elif sized and blocks.get("type") == "dynamic":
                reasons.append(f"{fmt} {side} use dynamic block quantization, which ModelOpt "
                               "runs only on CUDA tensors")
            elif _is_fp4(stage):
                reasons.append(f"{fmt} {side} need ModelOpt's FP4 kernels (CUDA or Triton on a GPU)")
    return reasons


def cpu_alternatives() -> list[str]:
    """Canonical pairs that run on CPU, with their aliases, as users type them."""
    pairs, aliases = load_pairs(), load_aliases()
    out = []
    for name, p in pairs.items():
        if p.requires_cuda:
            continue
        short = [a for a, c in aliases.items() if c == name]
        out.append(f"{name} ({', '.join(short)})" if short else name)
    return out


def check_device(pair: QuantPairConfig, granularity: QuantGranularityConfig, cfg: QuantCfg,
                 device: str) -> None:
    """A clear error, before the model loads, when the pair/overlay needs CUDA and ``device`` is not."""
    if device.startswith("cuda"):
        return
    reasons = cuda_requirements(cfg)
    if not reasons and not pair.requires_cuda:
        return
    if not reasons:
        reasons = ["the pair is marked requires_cuda in conf/quant_pair"]
    who = f"quant_pair={pair.name}"
    if granularity.name != "default" and not pair.requires_cuda:
        who += f" with quant_granularity={granularity.name}"
    alternatives = cpu_alternatives()
    alt = (f" Pairs that run on {device}: {', '.join(alternatives)}." if alternatives else "")
    raise UserError(
        f"{who} ({pair.description or format_name(pair, granularity)}) cannot run on {device}: "
        f"{'; '.join(dict.fromkeys(reasons))}.{alt} Or run this pair on a CUDA host "
        "(model.device=cuda)."
    )


def experimental_warning(pair: QuantPairConfig) -> str | None:
    if not pair.experimental:
        return None
    return (f"quant_pair={pair.name} is experimental: {pair.weight.value} weights with "
            f"{pair.activation.value} activations is a combination no inference runtime deploys "
            "yet; its sensitivities describe the format, not a deployable model.")


def weight_last_dims(checkpoint: Path, frozen_patterns: list[str],
                     trust_remote_code: bool = False) -> dict[str, int]:
    """Last weight dimension (input features of a linear layer) of each quantizable module in scope.

    Built from config.json on the meta device: no weights are read.
    """
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(checkpoint, local_files_only=True,
                                        trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        meta = AutoModelForImageTextToText.from_config(config, trust_remote_code=trust_remote_code)
    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    return {
        name: int(m.weight.shape[-1])
        for name, m in meta.named_modules()
        if isinstance(m, kinds) and not any(fnmatch.fnmatch(name, p) for p in frozen_patterns)
    }


def check_layer_fit(granularity: QuantGranularityConfig, checkpoint: Path,
                    frozen_patterns: list[str], trust_remote_code: bool = False) -> None:
    """A weight group size must divide the input features of every quantized layer."""
    if granularity.weight != WeightGranularity.group or not granularity.group_size:
        return
    size = granularity.group_size
    dims = weight_last_dims(checkpoint, frozen_patterns, trust_remote_code)
    bad = {n: d for n, d in dims.items() if d % size}
    if bad:
        shown = ", ".join(f"{n} ({d})" for n, d in list(bad.items())[:4])
        more = f" and {len(bad) - 4} more" if len(bad) > 4 else ""
        ok = sorted({g for g in (16, 32, 64, 128, 256) if all(d % g == 0 for d in dims.values())})
        raise UserError(
            f"quant_granularity={granularity.name} quantizes weights in groups of {size}, which "
            f"does not divide the input features of {len(bad)} layer(s) of {checkpoint.name}: "
            f"{shown}{more}. Use a group size that divides them all "
            f"({', '.join(map(str, ok)) or 'none of 16..256 does'}), or a per-channel overlay."
        )


# --------------------------------------------------------------------------------------------
# The catalogue as data (read from conf/ with plain YAML: no Hydra in the core)


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a YAML mapping.")
    return data


_ORDER = {v: i for i, v in enumerate(["fp8", "int8", "int4", "fp4"])}
_A_ORDER = {v: i for i, v in enumerate(["fp16", "fp8", "int8", "int4", "fp4"])}


def _pair_order(p: QuantPairConfig) -> tuple[int, int, int]:
    flavour = 0 if p.fp4_format in (None, DEFAULT_FP4) else 1
    return (_ORDER[p.weight.value], flavour, _A_ORDER[p.activation.value])


def load_pairs(conf_dir: Path = PAIR_DIR) -> dict[str, QuantPairConfig]:
    """Canonical pairs (files with a ``name``), by weight then activation precision."""
    out = {}
    for path in sorted(conf_dir.glob("*.yaml")):
        d = _read_yaml(path)
        if "defaults" in d:
            continue
        out[d["name"]] = QuantPairConfig(
            name=d["name"],
            weight=Precision(d["weight"]),
            activation=Precision(d["activation"]),
            fp4_format=FP4Format(d["fp4_format"]) if d.get("fp4_format") else None,
            modelopt_base=d["modelopt_base"],
            edits=[PresetEdit(e) for e in d.get("edits") or []],
            requires_cuda=bool(d.get("requires_cuda", False)),
            experimental=bool(d.get("experimental", False)),
            description=d.get("description", ""),
        )
    return dict(sorted(out.items(), key=lambda kv: _pair_order(kv[1])))


def load_aliases(conf_dir: Path = PAIR_DIR) -> dict[str, str]:
    """Short alias -> canonical pair name (alias files hold only ``defaults: [<canonical>]``)."""
    out = {}
    for path in sorted(conf_dir.glob("*.yaml")):
        d = _read_yaml(path)
        if "defaults" in d:
            (target,) = [x for x in d["defaults"] if x != "_self_"]
            out[path.stem] = target
    return out


_G_ORDER = ["default", "w_per_tensor", "w_per_out_channel", "w_per_in_channel", "w_group64",
            "w_group128", "a_per_tensor_static", "a_per_token_dynamic", "recipe_match_channel_token"]


def load_granularities(conf_dir: Path = GRANULARITY_DIR) -> dict[str, QuantGranularityConfig]:
    """Overlays in the documented order (unlisted ones last, by name)."""
    out = {}
    for path in sorted(conf_dir.glob("*.yaml")):
        d = _read_yaml(path)
        out[d["name"]] = QuantGranularityConfig(
            name=d["name"],
            weight=WeightGranularity(d.get("weight", "keep")),
            group_size=d.get("group_size"),
            activation=ActivationGranularity(d.get("activation", "keep")),
            description=d.get("description", ""),
        )
    rank = {n: i for i, n in enumerate(_G_ORDER)}
    return dict(sorted(out.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))


# --------------------------------------------------------------------------------------------
# README tables


def _md(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def markdown_tables() -> str:
    """The README's catalogue section: pairs, edits and overlays, all derived from this module."""
    pairs, aliases = load_pairs(), load_aliases()
    rows = [["Pair", "Aliases", "W", "A", "ModelOpt base", "Edits", "Weights (effective)",
             "Activations (effective)", "Bits", "Runs on", "Experimental"]]
    default = QuantGranularityConfig()
    for name, p in pairs.items():
        cfg = build_quant_config(p, default)
        q = effective_quantizers(cfg)
        w = p.weight.value + (f" ({p.fp4_format.value})" if p.fp4_format and p.weight == Precision.fp4
                              else "")
        a = p.activation.value + (f" ({p.fp4_format.value})"
                                  if p.fp4_format and p.activation == Precision.fp4 else "")
        rows.append([
            f"`{name}`",
            ", ".join(f"`{a_}`" for a_, c in aliases.items() if c == name),
            w, a, f"`mtq.{p.modelopt_base}`",
            ", ".join(f"`{PresetEdit(e).value}`" for e in p.edits) or "none",
            q["weight"]["summary"], q["input"]["summary"],
            f"{format_effective_bits(cfg):g}",
            "CUDA only" if p.requires_cuda else "CPU, CUDA",
            "yes" if p.experimental else "",
        ])
    edit_rows = [["Edit", "What it does to the preset"]]
    edit_rows += [[f"`{e.value}`", EDITS[e].description] for e in PresetEdit]
    g_rows = [["Overlay", "Weights", "Activations", "What it is"]]
    for name, g in load_granularities().items():
        w = f"group ({g.group_size})" if g.weight == WeightGranularity.group else g.weight.value
        g_rows.append([f"`{name}`", w, g.activation.value, g.description])
    return "\n".join([
        "Pick a pair with `quant_pair=<name>` (or its alias) and an overlay with "
        "`quant_granularity=<name>`; both are part of the run name and the output paths.",
        "",
        f"- FP4 has two flavours: {DEFAULT_FP4.value.upper()} is the default (`wfp4_*`, alias "
        "`nvfp4`), MXFP4 is `wmxfp4_*` (alias `mxfp4`).",
        "- Bases are ModelOpt's own presets (`mtq.<NAME>`). A pair ModelOpt has no preset for is "
        "derived from one in code by the named edits below (appended `quant_cfg` entries, later "
        "entries win). Presets with a calibration algorithm AutoQuantize does not accept (it "
        "takes `max`/`mse` only: AWQ, SmoothQuant, e.g. `W4A8_AWQ_BETA_CFG`) are not used as "
        "bases.",
        "- Runs on: ModelOpt 0.47 quantizes FP4 (NVFP4, MXFP4) only on CUDA. On a CPU-only "
        "machine such a pair stops before the model loads, naming the reason and the pairs that "
        "do run.",
        "- Experimental: combinations no inference runtime deploys yet; the job prints a warning "
        "and the MLflow run is tagged `experimental=true`.",
        "- Bits: effective bits AutoQuantize charges per weight (`QuantRecipe(cfg).compression * "
        "16`). Weights / Activations: the effective ModelOpt settings of a decoder linear layer "
        "with `quant_granularity=default`; every run records them (type, num_bits, axis, "
        "block_sizes) in its manifest, params and reports.",
        "",
        _md(rows),
        "",
        _md(edit_rows),
        "",
        "Granularity overlays edit the pair's quantizer settings. They are checked before the "
        "model loads: an activation overlay on a weight-only pair, or any overlay on an FP4 side, "
        "is rejected, and a weight group size must divide every quantized layer's input features.",
        "",
        _md(g_rows),
    ])


BEGIN, END = "<!-- quant-pairs:begin -->", "<!-- quant-pairs:end -->"


def readme_section(readme_text: str) -> str | None:
    """The text between the README markers, or None when they are missing."""
    if BEGIN not in readme_text or END not in readme_text:
        return None
    return readme_text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")
