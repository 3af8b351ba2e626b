"""What a pair and overlay mean, in words and numbers: effective quantizer settings, format names and
bits, the experimental warning, and the README's catalogue tables (what manifests, params and
reports record)."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..groups import GroupStats
from ..schema import Precision, PresetEdit, QuantGranularityConfig, QuantPairConfig, WeightGranularity
from .presets import (
    DEFAULT_FP4,
    EDITS,
    INPUT,
    MX_SCALE_BITS,
    WEIGHT,
    QuantCfg,
    build_quant_config,
    resolve_quantizer,
)
from .registry import Listing

# --------------------------------------------------------------------------------------------
# Effective settings


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


_FLOAT_NAMES = {(4, 3): "fp8_e4m3", (5, 2): "fp8_e5m2", (2, 1): "fp4_e2m1", (3, 2): "fp6_e3m2",
                (2, 3): "fp6_e2m3"}


def dtype_name(num_bits: Any) -> str:
    """``(4, 3)`` -> ``fp8_e4m3``, ``8`` -> ``int8``."""
    if isinstance(num_bits, (list, tuple)):
        e, m = num_bits
        return _FLOAT_NAMES.get((e, m), f"fp{e + m + 1}_e{e}m{m}")
    return f"int{num_bits}"


def _scale_name(bits: Any) -> str:
    if tuple(bits) == MX_SCALE_BITS:
        return "E8M0 (power-of-two) scales"
    return f"{dtype_name(bits).replace('_', ' ').upper()} scales"


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
        "format": dtype_name(full["num_bits"]),
        "num_bits": _jsonable(full["num_bits"]),
        "type": full["type"],
        "axis": _jsonable(full["axis"]),
        "block_sizes": _jsonable(full["block_sizes"]),
        "scaling": _scaling(full),
    }


def quantizer_settings(cfg: QuantCfg, quantizer: str) -> dict[str, Any]:
    """The effective settings ModelOpt applies to one quantizer of a decoder linear layer."""
    enabled, attrs = resolve_quantizer(cfg, quantizer)
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


# --------------------------------------------------------------------------------------------
# Names


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


def experimental_warning(pair: QuantPairConfig) -> str | None:
    if not pair.experimental:
        return None
    return (f"quant_pair={pair.name} is experimental: {pair.weight.value} weights with "
            f"{pair.activation.value} activations is a combination no inference runtime deploys "
            "yet; its sensitivities describe the format, not a deployable model.")


# --------------------------------------------------------------------------------------------
# README tables


def _md(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def _precision_text(p: QuantPairConfig, precision: Precision) -> str:
    flavour = f" ({p.fp4_format.value})" if p.fp4_format and precision == Precision.fp4 else ""
    return precision.value + flavour


def _pair_rows(listing: Listing) -> list[list[str]]:
    rows = [["Pair", "Aliases", "W", "A", "ModelOpt base", "Edits", "Weights (effective)",
             "Activations (effective)", "Bits", "Runs on", "Experimental"]]
    default = QuantGranularityConfig()
    for name, p in listing.pairs.items():
        cfg = build_quant_config(p, default)
        q = effective_quantizers(cfg)
        rows.append([
            f"`{name}`",
            ", ".join(f"`{alias}`" for alias in listing.aliases_of(name)),
            _precision_text(p, p.weight), _precision_text(p, p.activation),
            f"`mtq.{p.modelopt_base}`",
            ", ".join(f"`{PresetEdit(e).value}`" for e in p.edits) or "none",
            q["weight"]["summary"], q["input"]["summary"],
            f"{format_effective_bits(cfg):g}",
            "CUDA only" if p.requires_cuda else "CPU, CUDA",
            "yes" if p.experimental else "",
        ])
    return rows


def _overlay_rows(listing: Listing) -> list[list[str]]:
    rows = [["Overlay", "Weights", "Activations", "What it is"]]
    for name, g in listing.overlays.items():
        w = f"group ({g.group_size})" if g.weight == WeightGranularity.group else g.weight.value
        rows.append([f"`{name}`", w, g.activation.value, g.description])
    return rows


def markdown_tables(listing: Listing) -> str:
    """The README's catalogue section: pairs, edits and overlays, all derived from the catalogue."""
    edit_rows = [["Edit", "What it does to the preset"]]
    edit_rows += [[f"`{e.value}`", EDITS[e].description] for e in PresetEdit]
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
        _md(_pair_rows(listing)),
        "",
        _md(edit_rows),
        "",
        "Granularity overlays edit the pair's quantizer settings. They are checked before the "
        "model loads: an activation overlay on a weight-only pair, or any overlay on an FP4 side, "
        "is rejected, and a weight group size must divide every quantized layer's input features.",
        "",
        _md(_overlay_rows(listing)),
    ])


BEGIN, END = "<!-- quant-pairs:begin -->", "<!-- quant-pairs:end -->"


def readme_section(readme_text: str) -> str | None:
    """The text between the README markers, or None when they are missing."""
    if BEGIN not in readme_text or END not in readme_text:
        return None
    return readme_text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")
