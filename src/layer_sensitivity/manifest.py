"""The quant manifest: everything a sensitivity job measured, as one JSON document.

Reports are derived from a manifest alone. ``load`` reads the current schema and the shape written
by the earlier Hydra runner (no ``schema_version``), normalising both to the current one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .autoquant import RECIPE_SUFFIX, GroupStats
from .errors import UserError

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


def build(*, scheme: dict[str, Any], model: dict[str, Any], dataset: dict[str, Any],
          quantization: dict[str, Any], groups: dict[str, GroupStats],
          autoquant: dict[str, Any], versions: dict[str, str]) -> dict[str, Any]:
    sens = layer_sensitivity(groups)
    return {
        "schema_version": SCHEMA_VERSION,
        "scheme": scheme,
        "model": model,
        "dataset": dataset,
        "quantization": quantization,
        "layer_sensitivity": sens,
        "sensitivity_ranking": [{"name": h, "importance": s["importance"]} for h, s in sens.items()],
        "frozen_groups": sorted(h for h, g in groups.items() if not g.in_scope),
        "autoquant": autoquant,
        "versions": versions,
    }


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
    version = data.get("schema_version")
    if version == SCHEMA_VERSION:
        return data
    if version is None and {"scheme", "layer_sensitivity"} <= data.keys():
        return from_legacy(data)
    raise UserError(
        f"Manifest '{path}' has unknown schema_version {version!r}; this version reads "
        f"schema_version {SCHEMA_VERSION} and legacy (unversioned) manifests. Upgrade "
        "layer_sensitivity or regenerate the manifest. Nothing was changed."
    )


def from_legacy(old: dict[str, Any]) -> dict[str, Any]:
    """Normalise a manifest of the earlier Hydra runner to the current schema."""
    scheme = old["scheme"]
    state = old.get("autoquant_state", {})
    groups = {}
    for handle, s in old["layer_sensitivity"].items():
        formats = [str(f) for f in s.get("formats", [])]
        if all(f.startswith("NONE") for f in formats):
            continue  # frozen (vision) group: only the NONE choice was offered
        groups[handle] = s
    order = sorted(groups, key=lambda h: (-float(groups[h].get("importance", 0.0)), h))
    sens = {
        h: {
            "formats": [str(f) for f in groups[h]["formats"]],
            "scores": [float(x) for x in groups[h].get("scores", [])],
            "costs": [float(x) for x in groups[h].get("costs", [])],
            "importance": float(groups[h].get("importance", 0.0)),
            "rank": order.index(h) + 1,
            "modules": [h.removesuffix(RECIPE_SUFFIX)],
            "chosen": None,
        }
        for h in order
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "legacy": True,
        "scheme": {
            "name": scheme.get("name"),
            "effective_bits_requested": scheme.get("auto_quantize_bits"),
            "effective_bits_modelopt": scheme.get("auto_quantize_bits"),
            "method": scheme.get("auto_quantize_method"),
            "score_size": scheme.get("auto_quantize_score_size"),
            "coverage": scheme.get("coverage_mode"),
            "coverage_fraction": scheme.get("coverage_fraction"),
            "formats": scheme.get("quant_formats", []),
        },
        "model": dict(old.get("model", {})),
        "dataset": dict(old.get("dataset") or {}),
        "quantization": dict(old.get("quantization") or {}),
        "layer_sensitivity": sens,
        "sensitivity_ranking": [{"name": h, "importance": s["importance"]} for h, s in sens.items()],
        "frozen_groups": sorted(set(old["layer_sensitivity"]) - set(groups)),
        "autoquant": {
            "effective_bits_achieved": (state.get("constraints") or {}).get("effective_bits"),
            "total_score": state.get("score"),
            "satisfied": state.get("is_satisfied"),
        },
        "versions": {},
        "run_config": old.get("run_config"),
    }
