"""Synthetic manifests for recipe tests: 4 decoder layers x 4 groups + lm_head, shaped like the
tiny model, with random scores and the ModelOpt configs a run records. No torch."""

from __future__ import annotations

import random
from typing import Any

from layer_sensitivity import recipes

LM = "model.language_model.layers"
# Group kind -> (modules inside a layer, uncompressed weight cost), shaped like the tiny model.
KINDS = {
    "self_attn.q_proj": (["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], 32768.0),
    "self_attn.o_proj": (["self_attn.o_proj"], 16384.0),
    "mlp.gate_proj": (["mlp.gate_proj", "mlp.up_proj"], 98304.0),
    "mlp.down_proj": (["mlp.down_proj"], 49152.0),
}
# Configs as the pipeline records them (JSON: lists for tuples, string block-size keys).
INT4 = ("INT4_BLOCKWISE_WEIGHT_ONLY_CFG", 4.0, {"quant_cfg": [
    {"quantizer_name": "*", "enable": False},
    {"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": 4, "block_sizes": {"-1": 128,
                                                                                    "type": "static"}}},
    {"quantizer_name": "*input_quantizer", "enable": False},
    {"quantizer_name": "*lm_head*", "enable": False},
    {"quantizer_name": "*visual*", "enable": False},
    {"quantizer_name": "*", "parent_class": "nn.Embedding", "enable": False},
], "algorithm": "max"})
FP8 = ("FP8_DEFAULT_CFG", 8.0, {"quant_cfg": [
    {"quantizer_name": "*", "enable": False},
    {"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": [4, 3], "axis": None}},
    {"quantizer_name": "*input_quantizer", "cfg": {"num_bits": [4, 3], "axis": None}},
    {"quantizer_name": "*lm_head*", "enable": False},
], "algorithm": "max"})
NONE = "NONE(effective-bits: 16.0)"


def label(fmt: tuple[str, float, dict[str, Any]]) -> str:
    return f"{fmt[0]}(effective-bits: {fmt[1]})"


def synthetic(formats: list[tuple[str, float, dict[str, Any]]], seed: int = 0,
              extra_groups: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """A manifest of 4 layers x 4 groups + lm_head with random importances."""
    rng = random.Random(seed)
    raw = {f"{LM}.{i}.{k}.quant_recipe": ([f"{LM}.{i}.{m}" for m in mods], cost)
           for i in range(4) for k, (mods, cost) in KINDS.items()}
    raw["lm_head.quant_recipe"] = (["lm_head"], 262144.0)
    for handle, mods in (extra_groups or {}).items():
        raw[handle] = (mods, 8192.0)
    importance = {h: rng.random() for h in raw}
    order = sorted(raw, key=lambda h: -importance[h])
    sens = {h: {"formats": [label(f) for f in formats] + [NONE],
                "scores": [importance[h] * (16 - f[1]) for f in formats] + [0.0],
                "costs": [raw[h][1] * f[1] / 16 for f in formats] + [raw[h][1]],
                "importance": importance[h] * (16 - formats[-1][1]), "rank": r,
                "modules": raw[h][0], "chosen": label(formats[0])}
            for r, h in enumerate(order, start=1)}
    q: dict[str, Any] = {"pair": "p", "modelopt_format": formats[0][0],
                         "modelopt_config": formats[0][2]}
    if len(formats) > 1:
        q["modelopt_configs"] = {f[0]: f[2] for f in formats}
    return {"schema_version": 1, "scheme": {"name": "synthetic", "method": "gradient",
                                            "effective_bits_requested": formats[0][1]},
            "quantization": q, "layer_sensitivity": sens,
            "sensitivity_ranking": [{"name": h, "importance": sens[h]["importance"]} for h in order]}


def ranked(m: dict[str, Any]) -> list[str]:
    return [r["name"] for r in m["sensitivity_ranking"]]


def bits_by_hand(m: dict[str, Any], quantized: dict[str, str]) -> float:
    total = full = 0.0
    for h, s in m["layer_sensitivity"].items():
        names = [recipes.format_name(f) for f in s["formats"]]
        total += s["costs"][names.index(quantized[h])] if h in quantized else max(s["costs"])
        full += max(s["costs"])
    return 16 * total / full


def enabled_modules(cfg: dict[str, Any], attr: str) -> dict[str, dict[str, Any]]:
    return {e["quantizer_name"].removesuffix(f".{attr}"): e.get("cfg", {})
            for e in cfg["quant_cfg"][1:]
            if e["quantizer_name"].endswith(f".{attr}") and e["enable"]}


def modules_of(m: dict[str, Any], handles: list[str] | dict[str, str]) -> set[str]:
    return {mod for h in handles for mod in m["layer_sensitivity"][h]["modules"]}
