"""A comparison written out: Markdown (and its HTML twin with figures inlined), JSON, CSV tables,
and the headline lines a run's description and the command line show."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..html_report import write_html
from .heatmaps import shares_figure, spearman_figure
from .rankings import (
    CSV_NAMES,
    FIGURES_DIR,
    JSON_NAME,
    MARKDOWN_NAME,
    MIN_KIND_GROUPS,
    PAIRS_IN_MARKDOWN,
    SHARES_FIGURE,
    SPEARMAN_FIGURE,
    TOP_COUNTS,
    TOP_FRACTION,
    Comparison,
)

log = logging.getLogger(__name__)


# --- reports ---------------------------------------------------------------------------------------


def _plain(x: Any) -> Any:
    """JSON-ready: numpy scalars to Python, NaN to null."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if x is pd.NA:
        return None
    return x


def _fmt(x: Any) -> str:
    if isinstance(x, (float, np.floating)):
        return "n/a" if math.isnan(x) else f"{x:.4g}"
    return "" if x is None or x is pd.NA else str(x)


def _table(df: pd.DataFrame) -> str:
    return df.map(_fmt).to_markdown(index=False)


def _overlap_cell(count: int, k: int) -> str:
    return f"{count}/{k} ({count / k:.2f})"


def _pairs_markdown(cmp: Comparison) -> list[str]:
    pairs = cmp.pairs.sort_values(["spearman", "run_a", "run_b"], kind="stable", na_position="first")
    shown = cmp.pairs if len(cmp.pairs) <= PAIRS_IN_MARKDOWN else pairs.head(20)
    view = pd.DataFrame({"Run A": shown["run_a"], "Run B": shown["run_b"],
                         "Spearman": shown["spearman"], "Kendall": shown["kendall"]})
    for stem, k in cmp.top_k.items():
        title = f"Top-{k} overlap" if stem in {f"top{c}" for c in TOP_COUNTS} \
            else f"Top {round(TOP_FRACTION * 100)}% (k={k}) overlap"
        view[title] = [_overlap_cell(int(n), k) for n in shown[stem]]
    lines = []
    if len(shown) < len(cmp.pairs):
        lines.append(f"The {len(shown)} least agreeing of {len(cmp.pairs)} pairs; all are in "
                     f"`{CSV_NAMES['pairs']}`.\n")
    return [*lines, _table(view)]


def _kinds_markdown(cmp: Comparison) -> str:
    if cmp.by_kind.empty:
        return f"No kind of group has {MIN_KIND_GROUPS} or more shared groups."
    summary = cmp.by_kind.groupby("kind", sort=False).agg(**{
        "Groups": ("groups", "first"),
        "Spearman mean": ("spearman", "mean"), "Spearman min": ("spearman", "min"),
        "Kendall mean": ("kendall", "mean"), "Kendall min": ("kendall", "min"),
    })
    return (_table(summary.rename_axis("Kind").reset_index())
            + f"\n\nEvery pair per kind: `{CSV_NAMES['by_kind']}`.")


def _runs_markdown(cmp: Comparison) -> str:
    r = cmp.runs.reset_index()
    view = pd.DataFrame({"Run": r["run"], "Pair": r["pair"], "Granularity": r["granularity"],
                         "Size": r["size"], "Method": r["method"], "Groups": r["groups"],
                         "Total score": r["total_importance"], "Top-10 share": r["top10_share"]})
    return _table(view)


def _movers_markdown(cmp: Comparison) -> str:
    if cmp.movers.empty:
        return "No shared group changes rank between the runs."
    m = cmp.movers
    return _table(pd.DataFrame({"Group": m["name"], "Best rank": m["min_rank"],
                                "Worst rank": m["max_rank"], "Range": m["rank_range"],
                                "Best in": m["most_sensitive_in"], "Worst in": m["least_sensitive_in"]}))


def headline(cmp: Comparison, top_groups: int = 6) -> list[str]:
    """The comparison in a few plain lines (Markdown): how well the rankings agree (the best and
    worst agreeing pair of runs) and each run's most sensitive group with its share. Used for the
    comparison's and a sweep parent's description and the command's last lines."""
    lines = []
    pairs = cmp.pairs.dropna(subset=["spearman"]) if not cmp.pairs.empty else cmp.pairs
    if len(pairs) == 1:
        p = pairs.iloc[0]
        lines.append(f"Rankings agree at Spearman **{p['spearman']:.2f}** over "
                     f"{len(cmp.shared_groups)} groups ({p['run_a']} vs {p['run_b']}).")
    elif len(pairs) > 1:
        best, worst = pairs.loc[pairs["spearman"].idxmax()], pairs.loc[pairs["spearman"].idxmin()]
        lines.append(f"Rankings agree at Spearman {pairs['spearman'].mean():.2f} on average over "
                     f"{len(cmp.shared_groups)} groups: most {best['spearman']:.2f} "
                     f"({best['run_a']} vs {best['run_b']}), least **{worst['spearman']:.2f}** "
                     f"({worst['run_a']} vs {worst['run_b']}).")
    tops = []
    for label in cmp.labels[:top_groups]:
        shares = cmp.shares[label].dropna()
        if not shares.empty:
            handle = shares.idxmax()
            tops.append(f"{label}: `{cmp.groups.loc[handle, 'name']}` {shares[handle]:.0%}")
    if tops:
        more = len(cmp.labels) - top_groups
        lines.append("Most sensitive group: " + "; ".join(tops)
                     + (f"; and {more} more runs." if more > 0 else "."))
    return lines


def render_markdown(cmp: Comparison) -> str:
    n_shared, n_all = len(cmp.shared_groups), len(cmp.groups)
    parts = [
        f"# Comparison of {len(cmp.labels)} sensitivity runs",
        "",
        "AutoQuantize scores are sums over score batches: raw totals differ between calibration "
        "sizes and methods, so only ranks and shares (group score / run total) are compared. "
        "Rank 1 is the most sensitive group.",
        "",
        "## Runs",
        _runs_markdown(cmp),
        "",
        "## Groups compared",
        f"Rank statistics use the {n_shared} groups that every run has"
        + (f" (of {n_all} in any run)." if n_all > n_shared else "."),
        "",
        "## Agreement between runs",
        *_pairs_markdown(cmp),
        "",
        f"![Spearman matrix]({FIGURES_DIR}/{SPEARMAN_FIGURE})",
        "",
        "## Agreement per kind of group",
        _kinds_markdown(cmp),
        "",
        "## Groups whose rank moves most",
        _movers_markdown(cmp),
        "",
        "## Shares across runs",
        f"![Shares by group and run]({FIGURES_DIR}/{SHARES_FIGURE})",
        "",
        f"Every share: `{CSV_NAMES['shares']}`; ranks over the shared groups: `{CSV_NAMES['ranks']}`.",
        "",
    ]
    if cmp.notes:
        parts += ["## Notes", *(f"- {n}" for n in cmp.notes), ""]
    return "\n".join(parts)


def render_json(cmp: Comparison) -> str:
    doc = {
        "runs": cmp.runs.reset_index().to_dict(orient="records"),
        "groups_compared": len(cmp.shared_groups),
        "groups_total": len(cmp.groups),
        "excluded": cmp.excluded,
        "top_k": cmp.top_k,
        "pairs": cmp.pairs.to_dict(orient="records"),
        "by_kind": cmp.by_kind.to_dict(orient="records"),
        "movers": cmp.movers.to_dict(orient="records"),
        "spearman": cmp.spearman.to_dict(orient="index"),
        "kendall": cmp.kendall.to_dict(orient="index"),
        "shares": cmp.shares.to_dict(orient="index"),
        "notes": list(cmp.notes),
    }
    return json.dumps(_plain(doc), indent=2, allow_nan=False) + "\n"


def _write_csv(df: pd.DataFrame, path: Path, index: bool) -> Path:
    df.to_csv(path, index=index, lineterminator="\n")
    return path


def write_comparison(cmp: Comparison, out_dir: Path) -> list[Path]:
    """Markdown, JSON, CSV tables and figures (under ``figures/``); same input -> same bytes."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / MARKDOWN_NAME, out_dir / JSON_NAME
    md.write_text(render_markdown(cmp), encoding="utf-8")
    js.write_text(render_json(cmp), encoding="utf-8")
    written = [md, js]
    for attr, name in CSV_NAMES.items():
        df = getattr(cmp, attr)
        keyed = attr in {"runs", "spearman", "kendall", "shares", "ranks"}
        if attr in {"shares", "ranks"}:  # readable names beside the handles
            df = df.join(cmp.groups[["name", "layer", "kind"]]).reset_index()
            df = df[["group", "name", "layer", "kind", *cmp.labels]]
            keyed = False
        written.append(_write_csv(df, out_dir / name, index=keyed))
    figures = out_dir / FIGURES_DIR
    written.append(shares_figure(cmp, figures / SHARES_FIGURE))
    written.append(spearman_figure(cmp, figures / SPEARMAN_FIGURE))
    written.insert(1, write_html(md, f"Comparison of {len(cmp.labels)} runs"))
    log.info("Comparison of %d runs over %d shared groups written to %s", len(cmp.labels),
             len(cmp.shared_groups), out_dir)
    return written
