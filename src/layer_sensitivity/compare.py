"""Rankings of several sensitivity runs side by side, from their manifests alone.

No torch, no ModelOpt, no MLflow: a notebook, the ``compare`` entry point and a sweep's parent all
call ``compare`` with plain manifests (label -> manifest) and write what it found with
``write_comparison`` or ``sweep_figures``.

AutoQuantize scores are sums over score batches, so raw values differ by orders of magnitude
between sizes and methods; only ranks and shares (score / run total) compare across runs. Rank
statistics therefore use the groups every run has; shares are shown for all groups.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import matplotlib.style
import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from scipy import stats

from . import manifest as manifest_mod
from .errors import UserError
from .groups import depth_key, layer_and_kind, module_of
from .html_report import write_html
from .manifest import Manifest
from .profiles import group_name

log = logging.getLogger(__name__)

MARKDOWN_NAME = "comparison.md"
HTML_NAME = "comparison.html"  # the Markdown with figures inlined (MLflow renders HTML)
JSON_NAME = "comparison.json"
FIGURES_DIR = "figures"
SHARES_FIGURE = "comparison-shares.png"
SPEARMAN_FIGURE = "comparison-spearman.png"
SWEEP_SHARES_FIGURE = "sweep-shares.png"
SWEEP_SPEARMAN_FIGURE = "sweep-spearman.png"
CSV_NAMES = {  # attribute of Comparison -> file name
    "runs": "comparison-runs.csv",
    "pairs": "comparison-pairs.csv",
    "by_kind": "comparison-by-kind.csv",
    "movers": "comparison-movers.csv",
    "spearman": "comparison-spearman.csv",
    "kendall": "comparison-kendall.csv",
    "shares": "comparison-shares.csv",
    "ranks": "comparison-ranks.csv",
}
TOP_COUNTS = (5, 10)  # top-k overlap for these k ...
TOP_FRACTION = 0.2  # ... and for this fraction of the shared groups (rounded up)
CONCENTRATION_TOP = 10  # concentration = share of a run's total held by its top 10 groups
MOVERS = 10  # groups listed as moving most in rank
MIN_KIND_GROUPS = 3  # fewer shared groups of a kind give no meaningful rank correlation
PAIRS_IN_MARKDOWN = 45  # all pairs of up to 10 runs; more go to the CSV, the worst ones shown
DPI = 100
_PAIR_STATS = ["groups", "spearman", "spearman_p", "kendall", "kendall_p"]


@dataclass(frozen=True)
class Comparison:
    """What ``compare`` found. Groups are manifest handles (``<module>.quant_recipe``); tables list
    groups in depth order and runs in the order given.

    runs: label -> scheme, pair, granularity, size, method, samples, groups, total_importance,
        top10_share (share of the run's total held by its own top 10 groups).
    groups: handle (all groups of any run) -> name (short, e.g. ``L03.mlp.gate_up``), layer, kind,
        runs (how many runs have it), shared (whether every run has it).
    shares: handle (all groups) x label: importance / the run's total; NaN where the run lacks the
        group or its total is zero.
    ranks: handle (shared groups) x label: 1 = most sensitive among the shared groups; tied
        importances share the best rank.
    pairs: one row per pair of runs over the shared groups: run_a, run_b, groups, spearman,
        spearman_p, kendall, kendall_p, and for each stem of ``top_k`` (``top5``, ``top10``,
        ``top20pct``) the overlap count and ``<stem>_fraction`` (count / k).
    by_kind: run_a, run_b, kind, groups, spearman, spearman_p, kendall, kendall_p for each kind
        with at least MIN_KIND_GROUPS shared groups.
    spearman, kendall: label x label matrices over the shared groups.
    movers: up to MOVERS groups whose rank differs across runs, largest range first: group, name,
        kind, min_rank, max_rank, rank_range, most_sensitive_in, least_sensitive_in.
    top_k: stem -> the k used (capped at the number of shared groups).
    excluded: label -> that run's groups left out of rank statistics (not in every run).
    notes: plain sentences about anything that limits the comparison.
    """

    labels: tuple[str, ...]
    runs: pd.DataFrame
    groups: pd.DataFrame
    shares: pd.DataFrame
    ranks: pd.DataFrame
    pairs: pd.DataFrame
    by_kind: pd.DataFrame
    spearman: pd.DataFrame
    kendall: pd.DataFrame
    movers: pd.DataFrame
    top_k: dict[str, int]
    excluded: dict[str, list[str]]
    notes: tuple[str, ...] = field(default=())

    @property
    def shared_groups(self) -> list[str]:
        """The groups every run has, in depth order: the ones rank statistics use."""
        return list(self.ranks.index)


# --- reading manifests -----------------------------------------------------------------------------


def _normalised(label: str, m: Any) -> Manifest:
    """The run's manifest; a parsed JSON document (current or legacy schema) is read first."""
    if isinstance(m, Manifest):
        return m
    if not isinstance(m, Mapping):
        raise UserError(f"Run '{label}' is not a manifest (got {type(m).__name__}). Pass the parsed "
                        "*_quant_manifest.json of each run, e.g. from layer_sensitivity.manifest.load.")
    return manifest_mod.parse(dict(m), f"Manifest of run '{label}'")


def _importances(m: Manifest) -> pd.Series:
    return pd.Series({h: float(s.importance) for h, s in m.layer_sensitivity.items()}, dtype=float)


def _run_fields(m: Manifest) -> dict[str, Any]:
    q, d, s = m.quantization, m.dataset, m.scheme
    return {"scheme": s.name, "pair": q.pair, "granularity": q.granularity,
            "size": d.size, "method": s.method, "samples": d.samples_used}


def run_label(manifest: Manifest) -> str:
    """``<pair>/<granularity>/<size>`` of a run (the parts it records), else its scheme name."""
    f = _run_fields(manifest)
    parts = [str(f[k]) for k in ("pair", "granularity", "size") if f[k] not in (None, "")]
    return "/".join(parts) or str(f["scheme"])


# --- groups ----------------------------------------------------------------------------------------


def _depth_order(handles: Iterable[str]) -> list[str]:
    return sorted(set(handles), key=lambda h: (depth_key(h), h))


def _group_table(handles: list[str], present: pd.DataFrame) -> pd.DataFrame:
    """Short names as in a run's metrics (``L03.mlp.gate_up``), layer, kind and presence."""
    where = [layer_and_kind(h) for h in handles]
    num_layers = max((layer for layer, _ in where if layer is not None), default=-1) + 1
    names = [group_name(h, num_layers) for h in handles]  # the per-run metric names
    if len(set(names)) < len(names):  # unusual module paths: fall back to the module names
        names = [module_of(h) for h in handles]
    counts = present.loc[handles].sum(axis=1).astype(int)
    return pd.DataFrame({"name": names,
                         "layer": pd.array([layer for layer, _ in where], dtype="Int64"),
                         "kind": [kind for _, kind in where],
                         "runs": counts.to_numpy(),
                         "shared": (counts == present.shape[1]).to_numpy()},
                        index=pd.Index(handles, name="group"))


def _kinds(table: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(table["kind"]))  # first appearance in depth order


# --- statistics ------------------------------------------------------------------------------------


def _spearman_matrix(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spearman rho and p between the columns (runs); NaN where a column is constant."""
    n = values.shape[1]
    with warnings.catch_warnings():  # constant rankings give NaN, which we report as undefined
        warnings.simplefilter("ignore")
        res = stats.spearmanr(values, axis=0)
    rho, p = np.asarray(res.statistic, dtype=float), np.asarray(res.pvalue, dtype=float)
    if n == 2:  # scipy returns one number for two columns
        rho = np.array([[1.0, float(rho)], [float(rho), 1.0]])
        p = np.array([[0.0, float(p)], [float(p), 0.0]])
    constant = np.all(values == values[0], axis=0)
    rho[constant, :] = np.nan
    rho[:, constant] = np.nan
    return rho, p


def _kendall(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.kendalltau(a, b)  # tau-b: accounts for ties
    return float(res.statistic), float(res.pvalue)


def _pair_stats(values: np.ndarray) -> dict[tuple[int, int], dict[str, float]]:
    """Per pair of columns: number of groups, Spearman and Kendall with p-values."""
    rho, rho_p = _spearman_matrix(values)
    out = {}
    for i, j in combinations(range(values.shape[1]), 2):
        tau, tau_p = _kendall(values[:, i], values[:, j])
        out[i, j] = {"groups": values.shape[0], "spearman": float(rho[i, j]),
                     "spearman_p": float(rho_p[i, j]) if math.isfinite(rho[i, j]) else math.nan,
                     "kendall": tau, "kendall_p": tau_p}
    return out


def _top_k(n_groups: int) -> dict[str, int]:
    ks = {f"top{k}": min(k, n_groups) for k in TOP_COUNTS}
    ks[f"top{round(TOP_FRACTION * 100)}pct"] = max(1, math.ceil(TOP_FRACTION * n_groups))
    return ks


def _top_sets(importance: pd.DataFrame, k: int) -> list[set[str]]:
    """Each run's k most sensitive shared groups; equal importances in name order, as manifests do."""
    sets = []
    for label in importance.columns:
        col = importance[label]
        order = sorted(col.index, key=lambda h: (-col[h], h))
        sets.append(set(order[:k]))
    return sets


def _matrix(labels: list[str], pairs: pd.DataFrame, column: str, undefined: list[str]) -> pd.DataFrame:
    """Label x label matrix of a pair statistic; 1 on the diagonal except for undefined rankings."""
    where = {label: i for i, label in enumerate(labels)}
    values = np.eye(len(labels))
    for a, b, value in zip(pairs["run_a"], pairs["run_b"], pairs[column], strict=True):
        values[where[a], where[b]] = values[where[b], where[a]] = value
    for label in undefined:
        values[where[label], where[label]] = math.nan
    return pd.DataFrame(values, index=pd.Index(labels, name="run"), columns=labels)


def _movers(ranks: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    lo, hi = ranks.min(axis=1), ranks.max(axis=1)
    movers = pd.DataFrame({
        "group": ranks.index, "name": table.loc[ranks.index, "name"].to_numpy(),
        "kind": table.loc[ranks.index, "kind"].to_numpy(),
        "min_rank": lo.astype(int).to_numpy(), "max_rank": hi.astype(int).to_numpy(),
        "rank_range": (hi - lo).astype(int).to_numpy(),
        "most_sensitive_in": ranks.idxmin(axis=1).to_numpy(),
        "least_sensitive_in": ranks.idxmax(axis=1).to_numpy(),
    })
    movers = movers[movers["rank_range"] > 0]
    # stable sort keeps depth order among equal ranges
    return movers.sort_values("rank_range", ascending=False, kind="stable").head(MOVERS) \
        .reset_index(drop=True)


def compare(manifests: Mapping[str, Manifest | Mapping[str, Any]]) -> Comparison:
    """Compare the rankings of two or more runs (label -> manifest, current or legacy schema)."""
    if len(manifests) < 2:
        got = ", ".join(f"'{k}'" for k in manifests) or "none"
        raise UserError(f"A comparison needs two or more runs; got {len(manifests)} ({got}). Pass "
                        "more run ids, a sweep parent with several children, or a wider filter.")
    labels = [str(k) for k in manifests]
    docs = {label: _normalised(label, m) for label, m in zip(labels, manifests.values(), strict=True)}
    importance = pd.DataFrame({label: _importances(m) for label, m in docs.items()})
    handles = _depth_order(importance.index)
    importance = importance.loc[handles]
    table = _group_table(handles, importance.notna())
    shared = list(table.index[table["shared"]])
    if len(shared) < 2:
        raise UserError(
            f"The runs {', '.join(labels)} share {len(shared)} layer group(s), so their rankings "
            "cannot be compared. Compare runs of the same model and scope (group counts: "
            + ", ".join(f"{k}={importance[k].notna().sum()}" for k in labels) + ")."
        )
    notes: list[str] = []
    excluded = {k: [h for h in handles if h not in shared and pd.notna(importance.at[h, k])]
                for k in labels}
    if any(excluded.values()):
        notes.append(f"The runs share {len(shared)} of {len(handles)} groups; rank statistics use "
                     "the shared ones (" + ", ".join(f"{k} leaves out {len(v)}"
                                                      for k, v in excluded.items() if v) + ").")

    totals = importance.sum(axis=0, min_count=1)
    zero = [k for k in labels if not totals[k] > 0]
    for k in zero:
        notes.append(f"Run '{k}' has a total importance of {totals[k]:g}: its shares and "
                     "concentration are undefined.")
    shares = importance.div(totals.where(totals > 0), axis=1)
    shares.index.name = "group"

    own_top = {k: importance[k].dropna().sort_values(ascending=False).head(CONCENTRATION_TOP).sum()
               for k in labels}
    runs = pd.DataFrame([{**_run_fields(docs[k]), "groups": int(importance[k].notna().sum()),
                          "total_importance": float(totals[k]),
                          "top10_share": own_top[k] / totals[k] if totals[k] > 0 else math.nan}
                         for k in labels], index=pd.Index(labels, name="run"))

    common = importance.loc[shared]
    ranks = common.rank(axis=0, method="min", ascending=False).astype(int)
    constant = [k for k in labels if common[k].nunique() < 2]
    for k in constant:
        if k in zero:
            continue
        notes.append(f"Run '{k}' gives every shared group the same importance: its rank "
                     "correlations are undefined (NaN).")

    top_k = _top_k(len(shared))
    values = common.to_numpy()
    overall = _pair_stats(values)
    top_sets = {stem: _top_sets(common, size) for stem, size in top_k.items()}
    pair_rows = []
    for (i, j), row in overall.items():
        rec: dict[str, Any] = {"run_a": labels[i], "run_b": labels[j], **row}
        for stem, size in top_k.items():
            common_top = len(top_sets[stem][i] & top_sets[stem][j])
            rec[stem], rec[f"{stem}_fraction"] = common_top, common_top / size
        pair_rows.append(rec)
    pairs = pd.DataFrame(pair_rows)

    kind_rows = []
    shared_table = table.loc[shared]
    for kind in _kinds(shared_table):
        members = shared_table.index[shared_table["kind"] == kind]
        if len(members) < MIN_KIND_GROUPS:
            continue
        for (i, j), row in _pair_stats(common.loc[members].to_numpy()).items():
            kind_rows.append({"run_a": labels[i], "run_b": labels[j], "kind": kind, **row})
    by_kind = pd.DataFrame(kind_rows, columns=["run_a", "run_b", "kind", *_PAIR_STATS])

    return Comparison(
        labels=tuple(labels), runs=runs, groups=table, shares=shares, ranks=ranks, pairs=pairs,
        by_kind=by_kind, spearman=_matrix(labels, pairs, "spearman", constant),
        kendall=_matrix(labels, pairs, "kendall", constant), movers=_movers(ranks, table), top_k=top_k,
        excluded=excluded, notes=tuple(notes),
    )


# --- figures ---------------------------------------------------------------------------------------


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # No software/version stamp: the same input gives the same bytes.
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    return path


def _clamp(x: float, lo: float, hi: float) -> float:
    return min(max(x, lo), hi)


def _heatmap(values: np.ndarray, rows: list[str], cols: list[str], path: Path, *, title: str,
             colour_label: str, log_scale: bool, limits: tuple[float, float] | None = None,
             annotate: bool = False) -> Path:
    """A rows x cols heatmap; NaN (and, on a log scale, zero) cells grey."""
    width = _clamp(3.5 + 0.16 * len(cols) + 0.06 * max(map(len, rows)), 5.0, 40.0)
    height = _clamp(1.8 + 0.15 * len(rows) + 0.06 * max(map(len, cols)), 3.0, 40.0)
    with matplotlib.style.context("default"):  # a user's matplotlibrc must not change the bytes
        fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
        _draw_heatmap(fig, values, rows, cols, title=title, colour_label=colour_label,
                      log_scale=log_scale, limits=limits, annotate=annotate)
        return _save(fig, path)


def _draw_heatmap(fig: Figure, values: np.ndarray, rows: list[str], cols: list[str], *, title: str,
                  colour_label: str, log_scale: bool, limits: tuple[float, float] | None,
                  annotate: bool) -> None:
    ax = fig.add_subplot()
    cells = np.ma.masked_invalid(np.where(values > 0, values, np.nan) if log_scale else values)
    finite = cells.compressed()
    if limits is not None:
        norm: Normalize = Normalize(*limits)
    elif log_scale and finite.size and finite.min() < finite.max():
        norm = LogNorm(finite.min(), finite.max())
    else:
        norm = Normalize(0.0, float(finite.max()) if finite.size and finite.max() > 0 else 1.0)
    cmap = colormaps["coolwarm" if limits else "viridis"].with_extremes(bad="#d9d9d9")
    image = ax.imshow(cells, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(cols)), cols, rotation=90, fontsize=6)
    ax.set_yticks(range(len(rows)), rows, fontsize=6)
    ax.set_title(title, fontsize=9)
    if annotate:
        for (r, c), v in np.ndenumerate(values):
            ax.text(c, r, "n/a" if math.isnan(v) else f"{v:.2f}", ha="center", va="center",
                    fontsize=6)
    # a colour bar about 0.3 inch wide, next to the cells whatever the figure's width
    width = fig.get_figwidth()
    bar = fig.colorbar(image, ax=ax, shrink=0.8, fraction=min(0.15, 0.3 / width), pad=0.1 / width)
    bar.set_label(colour_label, fontsize=7)


def shares_figure(cmp: Comparison, path: Path, *, runs_as_rows: bool = False,
                  run_names: list[str] | None = None) -> Path:
    """Heatmap of shares: groups in depth order x runs (or transposed), log colour scale."""
    groups = list(cmp.groups["name"])
    runs = run_names or list(cmp.labels)
    values = cmp.shares.to_numpy(dtype=float)
    if runs_as_rows:
        return _heatmap(values.T, runs, groups, path, log_scale=True, colour_label="share of run total",
                        title="Share of each run's total sensitivity, by group (depth order)")
    return _heatmap(values, groups, runs, path, log_scale=True, colour_label="share of run total",
                    title="Share of each run's total sensitivity")


def spearman_figure(cmp: Comparison, path: Path, *, run_names: list[str] | None = None) -> Path:
    """Spearman matrix between runs over the shared groups, annotated when small enough to read."""
    names = run_names or list(cmp.labels)
    return _heatmap(cmp.spearman.to_numpy(dtype=float), names, names, path, log_scale=False,
                    limits=(-1.0, 1.0), annotate=len(names) <= 12, colour_label="Spearman rho",
                    title=f"Rank agreement (Spearman) over {len(cmp.shared_groups)} shared groups")


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


def sweep_labels(manifests: Mapping[str, Manifest | Mapping[str, Any]]) -> dict[str, str]:
    """Label -> ``pair/granularity/size``; the label is appended where two runs would look alike."""
    names = {str(k): run_label(_normalised(str(k), m)) for k, m in manifests.items()}
    seen = pd.Series(list(names.values())).value_counts()
    return {k: f"{n} ({k})" if seen[n] > 1 else n for k, n in names.items()}


def sweep_figures(manifests: Mapping[str, Manifest | Mapping[str, Any]], out_dir: Path) -> list[Path]:
    """A sweep parent's figures from its children's manifests (label -> manifest), into out_dir:
    shares as runs (``pair/granularity/size``) x groups in depth order, and the Spearman matrix
    between children. One child gives only the shares figure; groups not in every child are grey."""
    out_dir = Path(out_dir)
    if not manifests:
        raise UserError("A sweep's figures need at least one child run with a manifest; none was "
                        "given. Check that the sweep's jobs finished and logged their manifests.")
    names = sweep_labels(manifests)
    if len(manifests) == 1:
        (label, m), = manifests.items()
        cmp = _single_run(label, m)
        return [shares_figure(cmp, out_dir / SWEEP_SHARES_FIGURE, runs_as_rows=True,
                              run_names=[names[str(label)]])]
    cmp = compare(manifests)
    run_names = [names[k] for k in cmp.labels]
    return [shares_figure(cmp, out_dir / SWEEP_SHARES_FIGURE, runs_as_rows=True, run_names=run_names),
            spearman_figure(cmp, out_dir / SWEEP_SPEARMAN_FIGURE, run_names=run_names)]


def _single_run(label: str, m: Manifest | Mapping[str, Any]) -> Comparison:
    """A one-run 'comparison' holding only what the shares figure needs."""
    importance = _importances(_normalised(label, m))
    handles = _depth_order(importance.index)
    total = importance.sum()
    shares = pd.DataFrame({label: importance.loc[handles] / (total if total > 0 else math.nan)})
    table = _group_table(handles, pd.DataFrame({label: True}, index=handles))
    empty = pd.DataFrame()
    return Comparison(labels=(label,), runs=empty, groups=table, shares=shares,
                      ranks=pd.DataFrame(index=handles), pairs=empty, by_kind=empty,
                      spearman=empty, kendall=empty, movers=empty, top_k={}, excluded={})
