"""Markdown and JSON reports, derived from a manifest alone (no model, no MLflow)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from .groups import RECIPE_SUFFIX, format_bits

MARKDOWN_NAME = "layer-sensitivity-report.md"
JSON_NAME = "layer-sensitivity-report.json"
LAYER_COLUMNS = ["Layer", "Num Bits", "Sensitivity", "Size Cost"]


def layer_rows(manifest: dict[str, Any]) -> pd.DataFrame:
    """One row per (layer group, quantized format), most sensitive first."""
    rows = []
    for handle, s in manifest["layer_sensitivity"].items():
        for fmt, score, cost in zip(s["formats"], s["scores"], s["costs"], strict=True):
            if fmt.startswith("NONE"):
                continue
            rows.append([handle.removesuffix(RECIPE_SUFFIX), format_bits(fmt), float(score), float(cost)])
    df = pd.DataFrame(rows, columns=LAYER_COLUMNS)
    # Stable sort on (sensitivity desc, name) so equal scores keep a reproducible order.
    return df.sort_values(["Sensitivity", "Layer"], ascending=[False, True], kind="stable",
                          ignore_index=True)


def frontier_rows(manifest: dict[str, Any]) -> pd.DataFrame:
    """One row per bit target of a frontier run, lowest target first."""
    rows = [{"Target bits": p["target_bits"], "ModelOpt bits": p["modelopt_bits"],
             "Achieved bits": p["achieved_bits"], "Total score": p["total_score"],
             "Satisfied": p["satisfied"],
             "Quantized groups": sum(not f.startswith("NONE") for f in p["recipe"].values())}
            for p in manifest.get("frontier", [])]
    df = pd.DataFrame(rows)
    return df.sort_values("Target bits", ignore_index=True) if rows else df


def _summary(m: dict[str, Any]) -> dict[str, Any]:
    scheme, aq = m["scheme"], m.get("autoquant", {})
    return {
        "Scheme": scheme.get("name"),
        "Model": m.get("model", {}).get("name") or m.get("model", {}).get("id"),
        "Method": scheme.get("method"),
        "Coverage": scheme.get("coverage"),
        "Formats": ", ".join(scheme.get("formats") or []),
        "Effective bits requested (LM)": scheme.get("effective_bits_requested"),
        "Effective bits given to ModelOpt": scheme.get("effective_bits_modelopt"),
        "Effective bits achieved (LM)": aq.get("effective_bits_achieved"),
        "Constraint satisfied": aq.get("satisfied"),
        "Total score": aq.get("total_score"),
        "Layer groups": len(m["layer_sensitivity"]),
    }


def _dataset(m: dict[str, Any]) -> dict[str, Any]:
    d = m.get("dataset") or {}
    keys = ["name", "size", "path", "sha256", "samples_used", "samples_max", "seq_len",
            "batch_size", "batches"]
    return {k: d.get(k) for k in keys if k in d}


def _quantization(m: dict[str, Any]) -> dict[str, Any]:
    q = m.get("quantization") or {}
    keys = ["pair", "weight_dtype", "activation_dtype", "fp4_format", "modelopt_format",
            "modelopt_base", "edits", "granularity", "granularity_weight", "granularity_group_size",
            "granularity_activation", "weight_quantizer", "input_quantizer", "experimental",
            "requires_cuda"]
    out = {k: q.get(k) for k in keys if k in q}
    for side in ("weight_quantizer", "input_quantizer"):  # one readable line + exact settings
        s = out.get(side)
        if isinstance(s, dict) and "summary" in s:
            out[side] = s["summary"]
            out[f"{side}_settings"] = {k: v for k, v in s.items() if k not in ("summary", "scaling")}
    return out


def _kv_table(d: dict[str, Any]) -> str:
    df = pd.DataFrame({"Field": list(d), "Value": [_cell(v) for v in d.values()]})
    return df.to_markdown(index=False)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return "" if v is None else str(v)


def render_markdown(manifest: dict[str, Any]) -> str:
    layers = layer_rows(manifest)
    parts = [
        f"# Layer sensitivity: {manifest['scheme'].get('name')}",
        "",
        "## Summary",
        _kv_table(_summary(manifest)),
        "",
        "## Dataset",
        _kv_table(_dataset(manifest)),
        "",
        "## Quantization",
        _kv_table(_quantization(manifest)),
        "",
        "## Per-layer sensitivity (most sensitive first)",
        layers.to_markdown(index=False, floatfmt=".6g"),
        "",
    ]
    frontier = frontier_rows(manifest)
    if not frontier.empty:
        parts += ["## Score versus bits (one search, re-solved per target)",
                  frontier.to_markdown(index=False, floatfmt=".6g"), ""]
    return "\n".join(parts)


def render_json(manifest: dict[str, Any]) -> str:
    doc = {
        "summary": _summary(manifest),
        "dataset": _dataset(manifest),
        "quantization": _quantization(manifest),
        "layers": layer_rows(manifest).to_dict(orient="records"),
    }
    if manifest.get("frontier"):
        doc["frontier"] = frontier_rows(manifest).to_dict(orient="records")
    return json.dumps(doc, indent=2) + "\n"


def write_reports(manifest: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write both reports next to the manifest; same manifest -> byte-identical files."""
    out_dir = Path(out_dir)
    md, js = out_dir / MARKDOWN_NAME, out_dir / JSON_NAME
    md.write_text(render_markdown(manifest))
    js.write_text(render_json(manifest))
    return [md, js]
