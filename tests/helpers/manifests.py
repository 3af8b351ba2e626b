"""Manifests without a model: built through ``manifest.build``, or in the legacy (unversioned) shape.

No torch: ``manifest.build`` takes plain groups and facts.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from layer_sensitivity import manifest
from layer_sensitivity.groups import GroupStats
from layer_sensitivity.schema import SensitivityConfig

FP8, NONE = "FP8_DEFAULT_CFG(effective-bits: 8.0)", "NONE(effective-bits: 16.0)"
LEGACY_FILE = "wfp8_afp8_autoquant_lm_quant_manifest.json"


def job_facts(**changes: Any) -> manifest.JobFacts:
    """Plausible facts of a small fp8 job; ``changes`` replace any field."""
    facts = manifest.JobFacts(
        scheme_name="tiny_autoquant_wfp8_afp8_lm_small", checkpoint="/m", fingerprint="f" * 16,
        device="cpu", dtype="float32", weights_in_scope=1000, weights_frozen=50,
        captions_path="/caps.txt", captions_sha256="ab", samples_used=8, samples_max=8,
        samples_available=600, batches=2, score_batches=2, score_samples=8, real_tokens=40,
        padded_tokens=48, target_bits=10.0, modelopt_bits=10.2, format_name="FP8_DEFAULT_CFG",
        weight_quantizer={}, input_quantizer={}, modelopt_config={}, versions={"torch": "x"})
    return dataclasses.replace(facts, **changes)


def build(groups: dict[str, GroupStats], autoquant: dict[str, Any],
          cfg: SensitivityConfig | None = None, **facts: Any) -> manifest.Manifest:
    """``manifest.build`` of ``groups`` with default config and facts (no frontier, no cache)."""
    return manifest.build(cfg or SensitivityConfig(), job_facts(**facts), groups, autoquant, [],
                          None)


# --- The earlier Hydra runner's manifests ---------------------------------------------------

VISION = ["model.visual.patch_embed.proj", "model.visual.blocks.0.attn.qkv",
          "model.visual.blocks.0.mlp.linear_fc1", "model.visual.merger.linear_fc2"]
# (module, FP8 score, uncompressed cost): unsorted, with a tie (down_proj 1 / gate_proj 1)
LM = [
    ("model.language_model.layers.0.self_attn.q_proj", 5.6e-05, 15728640.0),
    ("model.language_model.layers.0.self_attn.o_proj", 1.8e-05, 10485760.0),
    ("model.language_model.layers.0.mlp.gate_proj", 0.105, 49807360.0),
    ("model.language_model.layers.0.mlp.down_proj", 0.2727, 24903680.0),
    ("model.language_model.layers.1.self_attn.q_proj", 8.0e-06, 15728640.0),
    ("model.language_model.layers.1.self_attn.o_proj", 6.3e-06, 10485760.0),
    ("model.language_model.layers.1.mlp.gate_proj", 0.0512, 49807360.0),
    ("model.language_model.layers.1.mlp.down_proj", 0.0512, 24903680.0),
    ("lm_head", 0.0065, 311164928.0),
]
LEGACY_SCORE_SIZE = 128


def legacy_doc(*, optional: bool = True) -> dict[str, Any]:
    """A manifest exactly as the earlier Hydra runner wrote it."""
    sens: dict[str, Any] = {}
    rank = 0
    for module in VISION:  # vision tower: only NONE offered, score 0, ranked first (ascending)
        rank += 1
        sens[f"{module}.quant_recipe"] = {"formats": [NONE], "scores": [0.0], "costs": [3145728.0],
                                          "importance": 0.0, "rank": rank}
    ascending = sorted(LM, key=lambda m: m[1])
    legacy_rank = {m[0]: len(VISION) + 1 + i for i, m in enumerate(ascending)}
    for module, score, cost in LM:
        sens[f"{module}.quant_recipe"] = {"formats": [FP8, NONE], "scores": [score, 0.0],
                                          "costs": [cost / 2, cost], "importance": score,
                                          "rank": legacy_rank[module]}
    doc: dict[str, Any] = {
        "scheme": {"name": "wfp8_afp8_autoquant_lm", "auto_quantize_bits": 8.74530701482171,
                   "auto_quantize_method": "gradient", "auto_quantize_score_size": LEGACY_SCORE_SIZE,
                   "coverage_mode": "lm_only", "coverage_fraction": 1.0,
                   "quant_formats": ["FP8_DEFAULT_CFG"]},
        "model": {"id": "/workspace/models/qwen3_vl_4b_instruct/checkpoints/Qwen3-VL-4B-Instruct"},
        "num_quantized_layers": len(VISION) + len(LM),
        "layers": {m: {"quantized": True, "module_type": "QuantLinear"}
                   for m in [*VISION, *(m[0] for m in LM)]},
        "autoquant_state": {"keys": ["candidate_stats", "best", "constraints"],
                            "constraints": {"effective_bits": 8.744307014821711},
                            "score": 3.9844110984614396, "is_satisfied": True},
        "layer_sensitivity": sens,
        "sensitivity_ranking": [{"name": h, "importance": s["importance"]}
                                for h, s in sorted(sens.items(), key=lambda kv: kv[1]["rank"])],
    }
    if optional:
        doc["dataset"] = {"name": "vlm_coco2017_captions", "size": "medium",
                          "samples_used": LEGACY_SCORE_SIZE, "samples_max": LEGACY_SCORE_SIZE,
                          "seq_len": 512, "batch_size": 8, "batches": 16}
        doc["quantization"] = {"pair": "wfp8_afp8", "weight_dtype": "fp8",
                               "activation_dtype": "fp8", "granularity": "default"}
        doc["run_config"] = {"quant_pair": {"name": "wfp8_afp8"}, "dataset": {"size": "medium"}}
    return doc


def write_legacy(directory: Path, doc: dict[str, Any] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LEGACY_FILE
    path.write_text(json.dumps(doc or legacy_doc(), indent=2))
    return path


def new_schema_equivalent() -> manifest.Manifest:
    """The legacy manifest's measurements as a manifest this version writes (same score samples)."""
    groups = {f"{m}.quant_recipe": GroupStats([NONE], [0.0], [3145728.0], [m], NONE, False)
              for m in VISION}
    groups |= {f"{m}.quant_recipe": GroupStats([FP8, NONE], [s, 0.0], [c / 2, c], [m], FP8, True)
               for m, s, c in LM}
    return build(groups, {"total_score": 1.0}, scheme_name="wfp8_afp8_autoquant_lm",
                 checkpoint="x", samples_used=LEGACY_SCORE_SIZE, score_samples=LEGACY_SCORE_SIZE)


def typed(doc: dict[str, Any]) -> manifest.Manifest:
    """A manifest document (as a test builds or edits it) as the typed in-memory manifest."""
    return manifest.Manifest.model_validate(doc)


def frontier_point(target_bits: float, recipe: dict[str, str]) -> dict[str, Any]:
    """A frontier point of ``recipe`` at ``target_bits`` (the solver's numbers as placeholders)."""
    return {"target_bits": target_bits, "modelopt_bits": target_bits, "achieved_bits": target_bits,
            "total_score": 0.0, "satisfied": True, "recipe": recipe}
