"""The quant manifest: everything a sensitivity job measured, as one JSON document.

Reports are derived from a manifest alone. ``load`` reads the current schema and the shape written
by the earlier Hydra runner (no ``schema_version``), normalising both to the current one.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError
from .groups import RECIPE_SUFFIX, GroupStats
from .schema import SensitivityConfig

SCHEMA_VERSION = 1
MANIFEST_SUFFIX = "_quant_manifest.json"


def manifest_filename(scheme_name: str) -> str:
    return f"{scheme_name}{MANIFEST_SUFFIX}"


def layer_sensitivity(groups: dict[str, GroupStats]) -> dict[str, dict[str, Any]]:
    """In-scope groups with their importance and rank (1 = most sensitive)."""
    scoped = {h: g for h, g in groups.items() if g.in_scope}
    order = sorted(scoped, key=lambda h: (-scoped[h].importance, h))
    return {
        h: {
            "formats": scoped[h].formats,
            "scores": scoped[h].scores,
            "costs": scoped[h].costs,
            "importance": scoped[h].importance,
            "rank": order.index(h) + 1,
            "modules": scoped[h].modules,
            "chosen": scoped[h].chosen,
        }
        for h in order
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


def build(cfg: SensitivityConfig, f: JobFacts, groups: dict[str, GroupStats],
          autoquant: dict[str, Any], frontier: list[dict[str, Any]],
          score_cache: dict[str, Any] | None) -> dict[str, Any]:
    """The manifest of one job: config, facts, per-group sensitivity, the solver's outcome."""
    sens = layer_sensitivity(groups)
    q, g, d = cfg.quant_pair, cfg.quant_granularity, cfg.dataset
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "scheme": {
            "name": f.scheme_name,
            "effective_bits_requested": f.target_bits,
            "effective_bits_modelopt": f.modelopt_bits,
            "method": cfg.autoquant.method.value,
            "score_size": f.score_samples,
            "coverage": cfg.autoquant.coverage.value,
            "formats": [f.format_name],
            # AutoQuantize scores are sums over the score batches: compare runs by share or rank,
            # or by the per-sample values (score / score_size).
            "score_semantics": "sum over score batches",
        },
        "model": {
            "id": f.checkpoint,
            "name": cfg.model.name,
            "dtype": f.dtype,
            "device": f.device,
            "fingerprint": f.fingerprint,
            "weights_in_scope": f.weights_in_scope,
            "weights_frozen": f.weights_frozen,
        },
        "dataset": {
            "name": d.name,
            "size": d.size.value,
            "path": f.captions_path,
            "sha256": f.captions_sha256,
            "samples_used": f.samples_used,
            "samples_max": f.samples_max,
            "samples_available": f.samples_available,
            "seq_len": d.calib_seq_len,
            "batch_size": cfg.autoquant.batch_size,
            "batches": f.batches,
            "score_batches": f.score_batches,
            "real_tokens": f.real_tokens,
            "padded_tokens": f.padded_tokens,
        },
        "quantization": {
            "pair": q.name,
            "weight_dtype": q.weight.value,
            "activation_dtype": q.activation.value,
            "activations_quantized": q.activation.value != "fp16",
            "fp4_format": q.fp4_format.value if q.fp4_format else None,
            "modelopt_format": f.format_name,
            "modelopt_base": q.modelopt_base,
            "edits": [str(e) for e in q.edits],
            "granularity": g.name,
            "granularity_weight": g.weight.value,
            "granularity_group_size": g.group_size,
            "granularity_activation": g.activation.value,
            # Exact settings of a decoder linear layer's quantizers (type, num_bits, axis, blocks).
            "weight_quantizer": f.weight_quantizer,
            "input_quantizer": f.input_quantizer,
            "requires_cuda": q.requires_cuda,
            "experimental": q.experimental,
            "modelopt_config": f.modelopt_config,
        },
        "layer_sensitivity": sens,
        "sensitivity_ranking": [{"name": h, "importance": s["importance"]} for h, s in sens.items()],
        "frozen_groups": sorted(h for h, gs in groups.items() if not gs.in_scope),
        "autoquant": autoquant,
        "versions": f.versions,
        "score_cache": score_cache,
    }
    if frontier:
        doc["frontier"] = frontier
    return doc


def write(manifest: dict[str, Any], out_dir: Path) -> Path:
    path = out_dir / manifest_filename(manifest["scheme"]["name"])
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
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


def load(path: Path) -> dict[str, Any]:
    """A manifest in the current schema, converting the legacy shape; clear errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Manifest '{path}' does not exist. Check the path or the run's artifacts.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"Manifest '{path}' is not valid JSON ({e}). Nothing was changed.") from None
    if not isinstance(data, dict):
        raise UserError(f"Manifest '{path}' is not a JSON object. Nothing was changed.")
    source = f"Manifest '{path}'"
    version = data.get("schema_version")
    if version == SCHEMA_VERSION:
        _check_scheme(data, source)
        for handle, s in _groups(data, source).items():
            _group_lists(handle, s, source)
        return data
    if version is None and "scheme" in data and "layer_sensitivity" in data:
        return from_legacy(data, source)
    if version is None:
        missing = [k for k in ("scheme", "layer_sensitivity") if k not in data]
        raise UserError(
            f"{source} is not a quant manifest: it has no schema_version and lacks "
            f"{', '.join(repr(k) for k in missing)}, so it is neither the current schema nor the "
            "legacy (unversioned) shape. Point at a *_quant_manifest.json written by a sensitivity "
            "job. Nothing was changed."
        )
    raise UserError(
        f"{source} has unknown schema_version {version!r}; this version reads "
        f"schema_version {SCHEMA_VERSION} and legacy (unversioned) manifests. Upgrade "
        "layer_sensitivity or regenerate the manifest. Nothing was changed."
    )


def _bad(source: str, what: str) -> UserError:
    return UserError(f"{source} cannot be read: {what}. Fix or regenerate the manifest; nothing "
                     "was changed.")


def _check_scheme(data: dict[str, Any], source: str) -> dict[str, Any]:
    scheme = data.get("scheme")
    if not isinstance(scheme, dict) or not isinstance(scheme.get("name"), str):
        raise _bad(source, "'scheme' must be an object with a string 'name'")
    return scheme


def _groups(data: dict[str, Any], source: str) -> dict[str, Any]:
    groups = data.get("layer_sensitivity")
    if not isinstance(groups, dict) or not all(isinstance(s, dict) for s in groups.values()):
        raise _bad(source, "'layer_sensitivity' must map each '<module>.quant_recipe' to an object")
    return groups


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _group_lists(handle: str, s: dict[str, Any],
                 source: str) -> tuple[list[str], list[float], list[float]]:
    """A group's formats, scores and costs, checked to be parallel lists of the right types."""
    formats, scores, costs = s.get("formats"), s.get("scores"), s.get("costs")
    if not (isinstance(formats, list) and all(isinstance(f, str) for f in formats)):
        raise _bad(source, f"layer_sensitivity['{handle}'].formats must be a list of strings")
    for name, values in (("scores", scores), ("costs", costs)):
        if not (isinstance(values, list) and all(_number(v) for v in values)):
            raise _bad(source, f"layer_sensitivity['{handle}'].{name} must be a list of finite "
                               "numbers")
        if len(values) != len(formats):
            raise _bad(source, f"layer_sensitivity['{handle}'] has {len(formats)} formats but "
                               f"{len(values)} {name}")
    return formats, [float(x) for x in scores], [float(x) for x in costs]  # type: ignore[union-attr]


def _section(old: dict[str, Any], key: str, source: str) -> dict[str, Any]:
    value = old.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(source, f"'{key}' must be an object")
    return dict(value)


def _model_name(model_id: Any) -> str | None:
    """``/ckpts/Qwen3-VL-4B`` or ``Qwen/Qwen3-VL-4B`` -> ``Qwen3-VL-4B``."""
    if not isinstance(model_id, str) or not model_id.strip("/\\"):
        return None
    return re.split(r"[/\\]", model_id.rstrip("/\\"))[-1]


def from_legacy(old: dict[str, Any], source: str = "Legacy manifest") -> dict[str, Any]:
    """Normalise a manifest of the earlier Hydra runner to the current schema.

    Legacy shape: ``scheme`` {name, auto_quantize_bits, auto_quantize_method,
    auto_quantize_score_size, coverage_mode, coverage_fraction, quant_formats}, ``model`` {id},
    ``num_quantized_layers``, ``layers``, ``autoquant_state`` {keys, constraints: {effective_bits},
    score, is_satisfied}, ``layer_sensitivity`` {handle: {formats, scores, costs, importance,
    rank}}, ``sensitivity_ranking``, optional ``dataset``, ``quantization``, ``run_config``.

    Its ``rank`` and ``sensitivity_ranking`` run the other way (rank 1 = least sensitive, vision
    groups first) and are not used: importance and rank are recomputed exactly as ``build`` does
    (importance = the largest score among quantized formats; rank 1 = most sensitive; ties by
    name), so a legacy manifest orders its layers like a current one. Groups offered only the
    NONE format (the vision tower) become ``frozen_groups``. Legacy runners passed the bits
    target straight to ModelOpt, so requested and given bits are the same number there.
    """
    scheme = _check_scheme(old, source)
    raw = _groups(old, source)
    state = _section(old, "autoquant_state", source)
    constraints = state.get("constraints")
    if not isinstance(constraints, dict):
        constraints = {}
    sens_in: dict[str, tuple[list[str], list[float], list[float], float]] = {}
    frozen = []
    for handle, s in raw.items():
        formats, scores, costs = _group_lists(handle, s, source)
        quantized = [sc for f, sc in zip(formats, scores, strict=True) if not f.startswith("NONE")]
        if not quantized:
            frozen.append(handle)  # only NONE was offered: outside the analysed scope
            continue
        sens_in[handle] = (formats, scores, costs, max(quantized))
    if not sens_in:
        raise _bad(source, "no layer group in 'layer_sensitivity' has a quantized format")
    order = sorted(sens_in, key=lambda h: (-sens_in[h][3], h))
    sens = {
        h: {
            "formats": sens_in[h][0],
            "scores": sens_in[h][1],
            "costs": sens_in[h][2],
            "importance": sens_in[h][3],
            "rank": rank,
            "modules": [h.removesuffix(RECIPE_SUFFIX)],
            "chosen": None,
        }
        for rank, h in enumerate(order, start=1)
    }
    raw_formats = scheme.get("quant_formats")
    formats = ([raw_formats] if isinstance(raw_formats, str)
               else [str(f) for f in raw_formats or []])
    model = _section(old, "model", source)
    model.setdefault("name", _model_name(model.get("id")))
    bits = scheme.get("auto_quantize_bits")
    achieved = constraints.get("effective_bits")
    return {
        "schema_version": SCHEMA_VERSION,
        "legacy": True,
        "scheme": {
            "name": scheme["name"],
            "effective_bits_requested": bits,
            "effective_bits_modelopt": bits,
            "method": scheme.get("auto_quantize_method"),
            "score_size": scheme.get("auto_quantize_score_size"),
            "coverage": scheme.get("coverage_mode"),
            "coverage_fraction": scheme.get("coverage_fraction"),
            "formats": formats,
        },
        "model": model,
        "dataset": _section(old, "dataset", source),
        "quantization": _section(old, "quantization", source),
        "layer_sensitivity": sens,
        "sensitivity_ranking": [{"name": h, "importance": s["importance"]} for h, s in sens.items()],
        "frozen_groups": sorted(frozen),
        "autoquant": {
            "effective_bits_achieved": achieved,
            "modelopt_effective_bits_achieved": achieved,
            "total_score": state.get("score"),
            "satisfied": state.get("is_satisfied"),
        },
        "versions": {},
        "run_config": old.get("run_config"),
    }
