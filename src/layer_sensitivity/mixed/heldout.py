"""Mixed-format recipes, held-out quality: the main budget's mix against each single format at
equal bits, on captions disjoint from calibration (an image-text run: pairs of other images)."""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

from .. import (
    figures,
    profiles,
    recipes,
)
from ..baselines import EQUAL_BITS_TOLERANCE
from ..manifest import FrontierPoint, Manifest, Mixed
from ..tracking.base import Metric
from .plan import MixedPlan
from .search import MixedScores, label_map, single_points

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Held-out quality: the mixed recipe against the best single format at equal bits


def heldout_recipes(mp: MixedPlan, s: MixedScores, doc: Manifest
                    ) -> tuple[recipes.Recipe, list[recipes.Recipe]]:
    """The mixed recipe at the main budget, and each format's own recipe (its frontier point
    closest in achieved bits) within ``EQUAL_BITS_TOLERANCE`` of it; a format that cannot get
    that close (e.g. FP8 at 6 bits) is left out."""
    main = doc.frontier[0]
    mixed_recipe = recipes.from_frontier(_at(doc, main))[0]
    singles = []
    for label, name in label_map(mp).items():
        points = [p for p in single_points(mp, s, label) if p.satisfied]
        if not points:
            continue
        p = min(points, key=lambda q: abs(q.achieved_bits - float(main.achieved_bits)))
        if abs(p.achieved_bits - float(main.achieved_bits)) > EQUAL_BITS_TOLERANCE:
            continue
        fmt = recipes.format_name(name)
        r = recipes.from_frontier(_at(doc, FrontierPoint.model_validate(p.as_dict())))[0]
        singles.append(dataclasses.replace(
            r, name=f"single_{profiles.safe_key(fmt)}_{p.target_bits:g}bits", kind=recipes.FRONTIER,
            info={**r.info, "format": fmt}))
    return mixed_recipe, singles


def _at(doc: Manifest, point: FrontierPoint) -> Manifest:
    """The manifest with ``point`` as its only frontier point (one recipe from it)."""
    return doc.model_copy(update={"frontier": [point]})


def mix_of(doc: Manifest) -> Mixed:
    """The mix of a mixed-format run's manifest."""
    if doc.mixed is None:
        raise ValueError(f"manifest of run '{doc.scheme.name}' is not a mixed-format search's")
    return doc.mixed


def heldout_quality(mp: MixedPlan, s: MixedScores, doc: Manifest) -> dict[str, Any]:
    """Held-out KL of the mixed recipe and of the best single-format recipe at equal bits: each
    quantized on a fresh model, calibrated as the run did, measured on captions the run did not
    calibrate on (``evaluate``'s default), split in two: the best single format is chosen on the
    validation half, both are reported on the test half (``kl_test``)."""
    from .. import evaluate as evaluation  # quantizes fresh model copies

    mixed_recipe, singles = heldout_recipes(mp, s, doc)
    rows = evaluation.measure_like_the_run(doc, [mixed_recipe, *singles],
                                           device=mp.formats[0].device)
    by_name = {r["name"]: r for r in rows.to_dict("records")}
    pairs = figures.pair_names(doc)

    def row(r: recipes.Recipe) -> dict[str, Any]:
        m = by_name[r.name]
        fmt = r.info.get("format")
        return {"name": r.name, "format": fmt, "pair": pairs.get(fmt, fmt) if fmt else None,
                "lm_bits": r.lm_bits,
                "kl": float(m["kl"]), "kl_test": float(m["kl_test"])}

    measured = [row(r) for r in singles]
    first = rows.iloc[0]
    data = "image-text pairs" if doc.dataset.modality == "image_text" else "captions"
    return {"mixed": row(mixed_recipe), "singles": measured, "data": data,
            "best_single": min(measured, key=lambda r: r["kl"]) if measured else None,
            "tolerance_bits": EQUAL_BITS_TOLERANCE,
            "eval_tokens": int(first["eval_tokens"]), "test_tokens": int(first["test_tokens"])}


def heldout_metrics(heldout: dict[str, Any] | None) -> list[Metric]:
    if not heldout:
        return []
    out: list[Metric] = [("run/heldout_kl_mixed", heldout["mixed"]["kl_test"], None)]
    best = heldout["best_single"]
    if best:
        out += [("run/heldout_kl_best_single", best["kl_test"], None),
                ("run/heldout_bits_best_single", best["lm_bits"], None)]
    return [(k, float(v), st) for k, v, st in out if math.isfinite(float(v))]


def describe_heldout(heldout: dict[str, Any] | None) -> str:
    """One line: the mixed recipe's held-out KL against the best single format at equal bits."""
    if not heldout:
        return "Held-out quality not measured (heldout=false); measure it with `evaluate`."
    m, best = heldout["mixed"], heldout["best_single"]
    data = heldout.get("data", "captions")  # image-text runs: held-out image-text pairs
    head = f"Held-out KL (test {data}, lower is better): mixed **{m['kl_test']:.4g}** at " \
           f"{m['lm_bits']:.2f} bits"
    if best is None:
        return (f"{head}; no single format gets within {heldout['tolerance_bits']:g} bits of it "
                "(nothing to compare at equal bits).")
    return (f"{head} vs **{best['kl_test']:.4g}** for {best['pair']} alone at {best['lm_bits']:.2f} bits "
            f"(the best single format at equal bits, chosen on validation {data}).")
