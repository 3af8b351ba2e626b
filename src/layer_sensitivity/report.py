"""Markdown and JSON reports and their figures, derived from a manifest alone (no model, no MLflow).

The same manifest gives byte-identical files (Markdown, JSON and every PNG).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, TypeGuard

import pandas as pd

from . import figures
from .groups import RECIPE_SUFFIX, format_bits
from .html_report import write_html
from .manifest_model import Manifest, Section
from .profiles import (
    LM_HEAD,
    TOP_CONCENTRATION,
    GroupProfile,
    summary_values,
    top_is_lm_head,
    top_share,
)

MARKDOWN_NAME = "layer-sensitivity-report.md"
HTML_NAME = "layer-sensitivity-report.html"  # the Markdown with figures inlined: MLflow renders it
JSON_NAME = "layer-sensitivity-report.json"
# Groups are named as in the metrics (``sensitivity/L00.attn.qkv``), their modules beside them.
LAYER_COLUMNS = ["Group", "Modules", "Num Bits", "Sensitivity", "Size Cost"]
PER_SAMPLE_COLUMN, SHARE_COLUMN = "Per-sample score", "Share (%)"
FIGURE_TITLES = {
    figures.DEPTH_PROFILE: "Sensitivity across depth (share of run total per layer, log scale)",
    figures.TOP_GROUPS: "Most sensitive groups and their share of the run total",
    figures.LAYER_KIND_HEATMAP: "Share of run total per decoder layer and kind",
    figures.FRONTIER: "Total score versus achieved bits (one search, re-solved per target)",
}


def layer_rows(manifest: Manifest) -> pd.DataFrame:
    """One row per (layer group, quantized format), most sensitive first; groups by their short
    name (``L00.attn.qkv``, as in the metrics) with their modules beside them."""
    named = {p.handle: p for p in manifest.profiles}
    rows = []
    for handle, s in manifest.layer_sensitivity.items():
        p = named[handle]
        for fmt, score, cost in zip(s.formats, s.scores, s.costs, strict=True):
            if fmt.startswith("NONE"):
                continue
            rows.append([p.name, ", ".join(p.modules) or handle.removesuffix(RECIPE_SUFFIX),
                         format_bits(fmt), float(score), float(cost)])
    df = pd.DataFrame(rows, columns=LAYER_COLUMNS)
    # Stable sort on (sensitivity desc, name) so equal scores keep a reproducible order.
    return df.sort_values(["Sensitivity", "Group"], ascending=[False, True], kind="stable",
                          ignore_index=True)


def layer_table(manifest: Manifest) -> pd.DataFrame:
    """``layer_rows`` with each score per sample and as a share (%) of the run total (the sum of
    the groups' importances), next to the raw score."""
    df = layer_rows(manifest)
    samples = manifest.score_samples
    total = sum(float(s.importance) for s in manifest.layer_sensitivity.values())
    # None (not NaN) when the sample count is unknown: a blank cell, null in JSON
    df.insert(4, PER_SAMPLE_COLUMN, df["Sensitivity"] / samples if samples else None)
    df.insert(5, SHARE_COLUMN, 100.0 * df["Sensitivity"] / total if total > 0 else 0.0)
    return df


def frontier_rows(manifest: Manifest) -> pd.DataFrame:
    """One row per bit target of a frontier run, lowest target first."""
    samples = manifest.score_samples
    rows = [{"Target bits": p.target_bits, "ModelOpt bits": p.modelopt_bits,
             "Achieved bits": p.achieved_bits, "Total score": p.total_score,
             "Score per sample": p.total_score / samples if samples else None,
             "Satisfied": p.satisfied,
             "Quantized groups": sum(not f.startswith("NONE") for f in p.recipe.values())}
            for p in manifest.frontier]
    df = pd.DataFrame(rows)
    return df.sort_values("Target bits", ignore_index=True) if rows else df


def _summary(m: Manifest, profiles: list[GroupProfile]) -> dict[str, Any]:
    scheme, aq = m.scheme, m.autoquant
    samples = m.score_samples
    total = aq.total_score
    top = profiles[0] if profiles else None
    return {
        "Scheme": scheme.name,
        "Model": m.model.name or m.model.id,
        "Method": scheme.method,
        "Coverage": scheme.coverage,
        "Formats": ", ".join(scheme.formats),
        "Effective bits requested (LM)": scheme.effective_bits_requested,
        "Effective bits given to ModelOpt": scheme.effective_bits_modelopt,
        "Effective bits achieved (LM)": aq.effective_bits_achieved,
        "Constraint satisfied": aq.satisfied,
        "Total score": total,
        "Score samples": samples,
        "Total score per sample": total / samples if samples and _finite(total) else None,
        "Most sensitive group": f"{top.name} ({100 * top.share:.1f}%)" if top else None,
        f"Share of the top {TOP_CONCENTRATION}": f"{100 * top_share(profiles):.1f}%" if top else None,
        "Layer groups": len(m.layer_sensitivity),
    }


def _finite(x: Any) -> TypeGuard[float]:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _recorded(section: Section, names: list[str]) -> dict[str, Any]:
    """The fields of ``names`` this manifest records, in that order (a table of name -> value)."""
    return {k: getattr(section, k) for k in names if section.has(k)}


def _dataset(m: Manifest) -> dict[str, Any]:
    return _recorded(m.dataset, ["name", "size", "path", "sha256", "samples_used", "samples_max",
                                 "seq_len", "batch_size", "batches", "score_batches",
                                 "truncated_captions", "modality", "images"])


def _quantization(m: Manifest) -> dict[str, Any]:
    out = _recorded(m.quantization, [
        "pair", "weight_dtype", "activation_dtype", "fp4_format", "modelopt_format",
        "modelopt_base", "edits", "granularity", "granularity_weight", "granularity_group_size",
        "granularity_activation", "weight_quantizer", "input_quantizer", "experimental",
        "requires_cuda"])
    for side in ("weight_quantizer", "input_quantizer"):  # one readable line + exact settings
        s = out.get(side)
        if isinstance(s, dict) and "summary" in s:
            out[side] = s["summary"]
            out[f"{side}_settings"] = {k: v for k, v in s.items() if k not in ("summary", "scaling")}
    return out


def ranking_warnings(profiles: list[GroupProfile]) -> list[str]:
    """Things a reader must know before acting on the ranking (plain Markdown sentences)."""
    if not top_is_lm_head(profiles):
        return []
    inside = next((p for p in profiles if p.layer is not None), None)
    rest = (f" The most sensitive group inside the decoder is `{inside.name}` "
            f"({100 * inside.share:.1f}%)." if inside else "")
    return [f"`{LM_HEAD}` tops the ranking ({100 * profiles[0].share:.1f}% of the run total). "
            f"Deploy runtimes usually keep `{LM_HEAD}` at 16 bits, and gradient scores have "
            f"ranked it first where its measured loss damage was low; read the ranking of the "
            f"decoder groups without it.{rest}"]


def how_to_read(manifest: Manifest) -> list[str]:
    """The meaning of the numbers, for this run (plain Markdown paragraphs)."""
    samples = manifest.score_samples
    batches = manifest.dataset.score_batches
    method = manifest.scheme.method
    here = (f" (here {samples} samples" + (f" in {batches} batches)" if batches else ")")
            if samples else " (this manifest does not record how many samples)")
    return [
        "**Raw scores are sums over score batches.** AutoQuantize adds up a group's score over "
        f"every score batch{here}, so raw scores (Sensitivity, Total score) grow about linearly "
        "with the number of score samples: do not compare them across calibration sizes.",
        "**Per-sample score** = raw score / score samples: comparable between runs of the same "
        "method at different calibration sizes.",
        "**Share** = a group's importance / the sum of all groups' importances (in %), and "
        "**rank** (1 = most sensitive): comparable across calibration sizes and methods. A "
        "group's importance is its largest score among the quantized formats offered.",
        "**gradient vs kl_div.** `gradient` estimates from gradients how much quantizing a "
        "group raises the caption loss; `kl_div` measures how far the output distribution moves "
        "from the unquantized model's. Their scores differ by 10^3-10^4, so compare the two only "
        "by shares and ranks: their rankings mostly agree, but the top group can differ "
        f"(gradient can put `{LM_HEAD}` first). This run used `{method or 'an unrecorded method'}`.",
    ]


def _kv_table(d: dict[str, Any]) -> str:
    df = pd.DataFrame({"Field": list(d), "Value": [_cell(v) for v in d.values()]})
    return df.to_markdown(index=False)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return "" if v is None else str(v)


def _figure_links(manifest: Manifest) -> list[str]:
    return [f"![{FIGURE_TITLES[name]}]({figures.FIGURES_DIR}/{name})"
            for name in figures.figure_names(manifest)]


def render_markdown(manifest: Manifest) -> str:
    profiles = manifest.profiles
    layers = layer_table(manifest)
    parts = [f"# Layer sensitivity: {manifest.scheme.name}", ""]
    parts += [line for w in ranking_warnings(profiles) for line in (f"> **Note:** {w}", "")]
    parts += ["## Summary", _kv_table(_summary(manifest, profiles)), ""]
    if links := _figure_links(manifest):
        parts += ["## Figures", "", *(line for link in links for line in (link, ""))]
    parts += ["## How to read these scores", "",
              *(f"- {paragraph}" for paragraph in how_to_read(manifest)), ""]
    parts += [
        "## Dataset",
        _kv_table(_dataset(manifest)),
        "",
        "## Quantization",
        _kv_table(_quantization(manifest)),
        "",
        "## Per-layer sensitivity (most sensitive first)",
        layers.to_markdown(index=False, floatfmt=".6g", missingval=""),
        "",
    ]
    frontier = frontier_rows(manifest)
    if not frontier.empty:
        parts += ["## Score versus bits (one search, re-solved per target)",
                  frontier.to_markdown(index=False, floatfmt=".6g", missingval=""), ""]
    return "\n".join(parts)


def _json_safe(value: Any) -> Any:
    """NaN (unknown) as null, so the report is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _group_record(p: GroupProfile) -> dict[str, Any]:
    return {"key": p.key, "name": p.name, "handle": p.handle, "layer": p.layer, "kind": p.kind,
            "modules": list(p.modules), "importance": p.importance, "per_sample": p.per_sample,
            "share": p.share, "rank": p.rank}


def render_json(manifest: Manifest) -> str:
    profiles = manifest.profiles
    doc: dict[str, Any] = {
        "summary": _summary(manifest, profiles),
        "warnings": ranking_warnings(profiles),
        "how_to_read": how_to_read(manifest),
        "score_samples": manifest.score_samples,
        "metrics": summary_values(manifest, profiles),
        "dataset": _dataset(manifest),
        "quantization": _quantization(manifest),
        "layers": layer_table(manifest).to_dict(orient="records"),
        "groups": [_group_record(p) for p in profiles],
        "figures": [f"{figures.FIGURES_DIR}/{n}" for n in figures.figure_names(manifest)],
    }
    if manifest.frontier:
        doc["frontier"] = frontier_rows(manifest).to_dict(orient="records")
    return json.dumps(_json_safe(doc), indent=2) + "\n"


def write_reports(manifest: Manifest, out_dir: Path) -> list[Path]:
    """Write the Markdown, HTML (figures inlined) and JSON reports and the figures (under
    ``figures/``) into ``out_dir``; returns every file written. The same manifest gives
    byte-identical files."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / MARKDOWN_NAME, out_dir / JSON_NAME
    md.write_text(render_markdown(manifest), encoding="utf-8")
    js.write_text(render_json(manifest), encoding="utf-8")
    pngs = figures.write_figures(manifest, out_dir)
    page = write_html(md, f"Layer sensitivity: {manifest.scheme.name}")
    return [md, js, page, *pngs]
