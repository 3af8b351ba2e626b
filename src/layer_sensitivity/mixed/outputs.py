"""Mixed-format recipes, the outputs: manifest, choice table, report, figures and one ModelOpt PTQ
recipe per budget; ``run`` goes from calibration data to all of them."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .. import (
    calibration,
    figures,
    manifest,
    pipeline,
    profiles,
    recipes,
)
from .. import recipe_files as recipe_file_io
from ..groups import depth_key, format_bits, layer_and_kind
from ..html_report import write_html
from ..manifest import FormatInfo, Manifest, Mixed, Quantization
from ..reuse import Resources
from .heldout import heldout_quality, mix_of
from .plan import CHOICES_TABLE, KIND, NONE, REPORT_NAME, MixedPlan
from .search import MixedScores, MixedSolution, search, solve

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Outputs


@dataclass
class MixedResult:
    manifest: Manifest
    files: list[Path]
    recipes: list[Path]
    seconds: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    heldout: dict[str, Any] | None = None  # heldout_quality's, when measured


def build_manifest(mp: MixedPlan, s: MixedScores, sol: MixedSolution,
                   batches: list[calibration.Batch]) -> Manifest:
    """A manifest ``recipes.from_frontier`` and ``evaluate`` read like a sensitivity run's; the
    formats' exact configs under ``quantization.modelopt_configs``, the mix under ``mixed``."""
    p = mp.formats[0]
    doc = manifest.build(mp.cfg, pipeline.job_facts(
        p, s, batches, scheme_name=mp.scheme_name, target_bits=mp.budgets[0],
        modelopt_bits=s.modelopt_bits(mp.budgets[0]), format_name="+".join(mp.names),
        weight_quantizer={}, input_quantizer={}, modelopt_config={}),
        sol.groups, sol.autoquant, sol.frontier, s.cache)
    return doc.as_mixed(mp.names, KIND, _quantization(mp), Mixed.model_validate({
        "pairs": mp.pairs, "requested": mp.requested, "budgets": mp.budgets,
        "strategy": mp.strategy, "composed": s.composed, "reason": s.reason,
        "single_format_scores": s.per_format, "single_frontiers": sol.singles}))


def _quantization(mp: MixedPlan) -> Quantization:
    g = mp.cfg.quant_granularity
    return Quantization(
        pair=mp.tag,
        pairs=mp.pairs,
        modelopt_format=None,
        granularity=g.name,
        formats=[FormatInfo(
            name=p.format_name, pair=p.cfg.quant_pair.name, bits=p.format_bits,
            modelopt_base=p.cfg.quant_pair.modelopt_base,
            weight_quantizer=p.weight_quantizer, input_quantizer=p.input_quantizer,
            experimental=p.cfg.quant_pair.experimental,
        ) for p in mp.formats],
        modelopt_configs={p.format_name: recipes.jsonable(p.quant_cfg) for p in mp.formats},
    )


def choices_frame(doc: Manifest) -> pd.DataFrame:
    """One row per (budget, in-scope group) in depth order: the format chosen, its bits, weights
    and the group's score in it (ModelOpt's clipped score)."""
    sens = doc.layer_sensitivity
    num_layers = doc.num_decoder_layers
    rows = []
    for point in sorted(doc.frontier, key=lambda p: float(p.target_bits)):
        for handle in sorted(sens, key=depth_key):
            s = sens[handle]
            label = point.recipe.get(handle, s.formats[-1])
            i = s.formats.index(label)
            layer, kind = layer_and_kind(handle)
            rows.append({"budget": float(point.target_bits),
                         "achieved": float(point.achieved_bits),
                         "group": profiles.group_name(handle, num_layers), "layer": layer,
                         "kind": kind, "format": recipes.format_name(label),
                         "bits": format_bits(label), "weights": max(s.costs),
                         "score": float(s.scores[i]), "handle": handle})
    return pd.DataFrame(rows).astype({"layer": "Int64"})


def _report(doc: Manifest, recipe_files: list[Path]) -> str:
    scheme, data, aq = doc.scheme, doc.dataset, doc.autoquant
    lines = [f"# Mixed recipe: {' + '.join(scheme.formats)}", "",
             f"Model {doc.model.name}, {scheme.method} scores over "
             f"{data.samples_used} {_samples(doc)} ({data.size}). "
             f"Scores: {mix_of(doc).reason}.", "",
             f"Main budget {scheme.effective_bits_requested:g} LM bits: achieved "
             f"{aq.effective_bits_achieved:.4f}, total score {aq.total_score:.6g}.", "",
             "| budget | achieved | satisfied | " + " | ".join(
                 f"{'16 bits' if n == NONE else n} (groups, weights)"
                 for n in [*scheme.formats, NONE]) + " |",
             "|---" * (3 + len(scheme.formats) + 1) + "|"]
    for p in doc.frontier:
        mix = p.mix or {}
        cells = [f"{int(mix[n].groups)}, {mix[n].weights_share:.1%}"
                 if n in mix else "0, 0%" for n in [*scheme.formats, NONE]]
        lines.append(f"| {p.target_bits:g} | {p.achieved_bits:.4f} | {p.satisfied} | "
                     + " | ".join(cells) + " |")
    lines += ["", "Recipes (ModelOpt PTQ recipe YAML: `hf_ptq.py --recipe <file>`, or "
              "`cfg = layer_sensitivity.recipe_files.load_recipe(path)`, then "
              "`mtq.quantize(model, cfg, forward_loop)`):", ""]
    lines += [f"- `{pipeline.RECIPES_DIR}/{f.name}`" for f in recipe_files]
    lines += ["", "## Figures", ""]
    lines += [f"![{n}]({figures.FIGURES_DIR}/{n})\n" for n in figures.mixed_figure_names(doc)]
    return "\n".join(lines)


def _samples(doc: Manifest) -> str:
    return "image-caption chats" if doc.dataset.modality == "image_text" else "captions"


def write_outputs(mp: MixedPlan, doc: Manifest, out_dir: Path) -> tuple[list[Path], list[Path]]:
    """Manifest, choice table, figures, report; one recipe per budget. (all files, recipe files)"""
    exported = [dataclasses.replace(r, name=mp.recipe_name(float(r.info["target_bits"])))
                for r in recipes.from_frontier(doc)]
    recipe_files = recipe_file_io.write_recipes(exported, out_dir / pipeline.RECIPES_DIR, doc)
    table = out_dir / f"{CHOICES_TABLE}.csv"
    choices_frame(doc).to_csv(table, index=False)
    report = out_dir / REPORT_NAME
    report.write_text(_report(doc, recipe_files) + "\n")
    pngs = figures.write_mixed_figures(doc, out_dir)
    page = write_html(report, f"Mixed recipe: {' + '.join(doc.scheme.formats)}")
    files = [manifest.write(doc, out_dir), table, report, page, *pngs, *recipe_files]
    return files, recipe_files


def run(mp: MixedPlan, out_dir: Path, resources: Resources | None = None,
        phases: pipeline.Phases | None = None, heldout: bool = False) -> MixedResult:
    """Calibration data -> scores (composed or direct) -> solve every budget -> outputs
    (-> ``heldout``: the main budget's held-out quality against single formats at equal bits)."""
    # Resources(keep=True) would load the model once for several missing formats, at the price of
    # a pristine copy in memory next to the one being searched: not the default for large models.
    resources = resources or Resources()
    phases = phases or pipeline.Phases()
    out_dir.mkdir(parents=True, exist_ok=True)
    with phases("calibration_data"):
        batches = pipeline.calibration_data(mp.formats[0], resources)
    with phases("autoquant"):
        s = search(mp, batches, resources)
    with phases("solve"):
        sol = solve(mp, s)
    with phases("reports"):
        doc = build_manifest(mp, s, sol, batches)
        files, recipe_files = write_outputs(mp, doc, out_dir)
    quality = None
    if heldout:
        with phases("heldout"):
            quality = heldout_quality(mp, s, doc)
    return MixedResult(doc, files, recipe_files, dict(phases.seconds), heldout=quality)
