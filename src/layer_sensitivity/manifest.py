"""The quant manifest: everything a sensitivity job measured, as one JSON document.

Reports are derived from a manifest alone. In memory a manifest is one typed model
(``manifest_model.Manifest``, read by attribute); ``build`` makes it from a job's results, ``write``
writes it, ``load`` reads it back from the current schema or the shape written by the earlier
Hydra runner (no ``schema_version``, converted by ``manifest_read``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError
from .groups import GroupStats
from .manifest_model import (
    SCHEMA_VERSION,
    Autoquant,
    Dataset,
    FormatInfo,
    FrontierPoint,
    Group,
    Manifest,
    Mixed,
    ModelInfo,
    Quantization,
    RankingEntry,
    Scheme,
    ScoreCache,
    Share,
    SolverPoint,
)
from .manifest_read import from_legacy, parse
from .schema import SensitivityConfig

__all__ = ["MANIFEST_SUFFIX", "SCHEMA_VERSION", "Autoquant", "Dataset", "FormatInfo",
           "FrontierPoint", "Group", "JobFacts", "Manifest", "Mixed", "ModelInfo", "Quantization",
           "RankingEntry", "Scheme", "ScoreCache", "Share", "SolverPoint", "build", "find",
           "from_legacy", "layer_sensitivity", "load", "manifest_filename", "parse", "write"]

MANIFEST_SUFFIX = "_quant_manifest.json"


def manifest_filename(scheme_name: str) -> str:
    return f"{scheme_name}{MANIFEST_SUFFIX}"


def layer_sensitivity(groups: dict[str, GroupStats]) -> dict[str, Group]:
    """In-scope groups with their importance and rank (1 = most sensitive)."""
    scoped = {h: g for h, g in groups.items() if g.in_scope}
    order = sorted(scoped, key=lambda h: (-scoped[h].importance, h))
    return {
        h: Group(formats=scoped[h].formats, scores=scoped[h].scores, costs=scoped[h].costs,
                 importance=scoped[h].importance, rank=rank, modules=scoped[h].modules,
                 chosen=scoped[h].chosen)
        for rank, h in enumerate(order, start=1)
    }


@dataclass(frozen=True)
class JobFacts:
    """What a job measured or derived besides the groups, as plain values (no torch objects)."""

    scheme_name: str
    checkpoint: str
    fingerprint: str
    device: str
    dtype: str
    weights_in_scope: int
    weights_frozen: int
    captions_path: str
    captions_sha256: str
    samples_used: int
    samples_max: int
    samples_available: int
    batches: int
    score_batches: int
    score_samples: int
    real_tokens: int
    padded_tokens: int
    target_bits: float
    modelopt_bits: float
    format_name: str
    weight_quantizer: dict[str, Any]
    input_quantizer: dict[str, Any]
    modelopt_config: dict[str, Any]  # the exact ModelOpt config searched (JSON-safe)
    versions: dict[str, str]
    truncated_captions: int = 0  # captions cut at seq_len
    modality: str = "text"  # dataset.modality
    images: dict[str, Any] | None = None  # image_text jobs: data digest, pixels, token counts


def build(cfg: SensitivityConfig, f: JobFacts, groups: dict[str, GroupStats],
          autoquant: dict[str, Any], frontier: list[dict[str, Any]],
          score_cache: dict[str, Any] | None) -> Manifest:
    """The manifest of one job: config, facts, per-group sensitivity, the solver's outcome."""
    sens = layer_sensitivity(groups)
    q, g, d = cfg.quant_pair, cfg.quant_granularity, cfg.dataset
    recorded: dict[str, Any] = {}  # fields left out when empty (an unset field is not written)
    if frontier:
        recorded["frontier"] = [FrontierPoint.model_validate(p) for p in frontier]
    return Manifest(
        schema_version=SCHEMA_VERSION,
        scheme=Scheme(
            name=f.scheme_name,
            effective_bits_requested=f.target_bits,
            effective_bits_modelopt=f.modelopt_bits,
            method=cfg.autoquant.method.value,
            score_size=f.score_samples,
            coverage=cfg.autoquant.coverage.value,
            formats=[f.format_name],
            # AutoQuantize scores are sums over the score batches: compare runs by share or rank,
            # or by the per-sample values (score / score_size).
            score_semantics="sum over score batches",
        ),
        model=ModelInfo(
            id=f.checkpoint, name=cfg.model.name, dtype=f.dtype, device=f.device,
            fingerprint=f.fingerprint, weights_in_scope=f.weights_in_scope,
            weights_frozen=f.weights_frozen,
        ),
        dataset=Dataset(
            name=d.name, size=d.size.value, path=f.captions_path, sha256=f.captions_sha256,
            samples_used=f.samples_used, samples_max=f.samples_max,
            samples_available=f.samples_available, seq_len=d.calib_seq_len,
            batch_size=cfg.autoquant.batch_size, batches=f.batches,
            score_batches=f.score_batches, real_tokens=f.real_tokens,
            padded_tokens=f.padded_tokens, truncated_captions=f.truncated_captions,
            modality=f.modality, **({"images": f.images} if f.images is not None else {}),
        ),
        quantization=Quantization(
            pair=q.name,
            weight_dtype=q.weight.value,
            activation_dtype=q.activation.value,
            activations_quantized=q.activation.value != "fp16",
            fp4_format=q.fp4_format.value if q.fp4_format else None,
            modelopt_format=f.format_name,
            modelopt_base=q.modelopt_base,
            edits=[str(e) for e in q.edits],
            granularity=g.name,
            granularity_weight=g.weight.value,
            granularity_group_size=g.group_size,
            granularity_activation=g.activation.value,
            weight_quantizer=f.weight_quantizer,
            input_quantizer=f.input_quantizer,
            requires_cuda=q.requires_cuda,
            experimental=q.experimental,
            modelopt_config=f.modelopt_config,
        ),
        layer_sensitivity=sens,
        sensitivity_ranking=[RankingEntry(name=h, importance=s.importance) for h, s in sens.items()],
        frozen_groups=sorted(h for h, gs in groups.items() if not gs.in_scope),
        autoquant=Autoquant.model_validate(autoquant),
        versions=f.versions,
        score_cache=None if score_cache is None else ScoreCache.model_validate(score_cache),
        **recorded,
    )


def dumps(manifest: Manifest) -> str:
    """The manifest's JSON text, as ``write`` writes it."""
    return json.dumps(manifest.to_json_dict(), indent=2, sort_keys=False) + "\n"


def write(manifest: Manifest, out_dir: Path) -> Path:
    path = out_dir / manifest_filename(manifest.scheme.name)
    path.write_text(dumps(manifest))
    return path


def find(out_dir: Path) -> Path:
    """The single ``*_quant_manifest.json`` in a directory."""
    found = sorted(Path(out_dir).glob(f"*{MANIFEST_SUFFIX}"))
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise UserError(
            f"Expected one *{MANIFEST_SUFFIX} in '{out_dir}', found {what}. Point at the output "
            "directory of one sensitivity job."
        )
    return found[0]


def load(path: Path) -> Manifest:
    """A manifest in the current schema, converting the legacy shape; clear errors otherwise.

    Either shape is checked strictly first (``manifest_read``), so a wrong type anywhere a
    report, recipe or publish reads is refused here, naming the field.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise UserError(f"Manifest '{path}' {what}. Check the path or the run's artifacts.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"Manifest '{path}' is not valid JSON ({e}). Nothing was changed.") from None
    if not isinstance(data, dict):
        raise UserError(f"Manifest '{path}' is not a JSON object. Nothing was changed.")
    return parse(data, f"Manifest '{path}'")
